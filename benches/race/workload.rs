//! The race's workload: Karpenter's benchmark mix as Deployments, and the NodePool both sides get.

use super::*;

#[derive(Clone, Copy)]
pub(super) enum Kind {
    Generic,
    ZoneSpread,
    HostnameSpread,
    ZoneAffinity,
    HostnameAntiAffinity,
}

impl Kind {
    pub(super) const ALL: [Kind; 5] = [
        Kind::Generic,
        Kind::ZoneSpread,
        Kind::HostnameSpread,
        Kind::ZoneAffinity,
        Kind::HostnameAntiAffinity,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Generic => "generic",
            Kind::ZoneSpread => "zone-spread",
            Kind::HostnameSpread => "hostname-spread",
            Kind::ZoneAffinity => "zone-affinity",
            Kind::HostnameAntiAffinity => "hostname-anti-affinity",
        }
    }

    /// The constraint's fields of the pod spec.
    pub(super) fn constraint(self) -> Value {
        let selector = json!({"matchLabels": {"group": self.name()}});
        let spread = |key: &str| {
            json!({"topologySpreadConstraints": [{
                "maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": selector,
            }]})
        };
        let affinity = |kind: &str, key: &str| {
            json!({"affinity": {kind: {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": key, "labelSelector": selector}
            ]}}})
        };
        match self {
            Kind::Generic => json!({}),
            Kind::ZoneSpread => spread("topology.kubernetes.io/zone"),
            Kind::HostnameSpread => spread("kubernetes.io/hostname"),
            Kind::ZoneAffinity => affinity("podAffinity", "topology.kubernetes.io/zone"),
            Kind::HostnameAntiAffinity => affinity("podAntiAffinity", "kubernetes.io/hostname"),
        }
    }
}

/// splitmix64, as examples/benchmix.rs.
pub(super) struct SplitMix(u64);

impl SplitMix {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(super) fn pick<'a>(&mut self, choices: &[&'a str]) -> &'a str {
        choices[(self.next() % choices.len() as u64) as usize]
    }
}

/// The race's Deployments: (name, replicas, cpu, memory, kind).
pub(super) fn workload(knobs: &Knobs) -> Vec<(String, usize, &'static str, &'static str, Kind)> {
    let mut rng = SplitMix(knobs.seed);
    let mut out = Vec::new();
    let per_kind = knobs.pods / Kind::ALL.len();
    for (k, kind) in Kind::ALL.into_iter().enumerate() {
        let count = per_kind
            + if k == 0 {
                knobs.pods % Kind::ALL.len()
            } else {
                0
            };
        for d in 0..knobs.per_kind {
            let replicas = count / knobs.per_kind + usize::from(d < count % knobs.per_kind);
            let (cpu, memory) = (rng.pick(&CPU), rng.pick(&MEMORY));
            if replicas > 0 {
                out.push((format!("{}-{d}", kind.name()), replicas, cpu, memory, kind));
            }
        }
    }
    out
}

pub(super) fn deployment(
    name: &str,
    replicas: usize,
    cpu: &str,
    memory: &str,
    kind: Kind,
) -> Deployment {
    let mut spec = json!({
        "nodeSelector": {"karpenter.sh/nodepool": POOL},
        "automountServiceAccountToken": false,
        "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                        "resources": {"requests": {"cpu": cpu, "memory": memory}}}],
    });
    for (k, v) in kind.constraint().as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name, "group": kind.name()}}, "spec": spec},
        }
    }))
    .unwrap()
}

/// The NodePool's requirements and disruption, shared by both sides (YAML flow lines).
pub(super) fn pool_spec(types: &[String], node_class_ref: &str) -> String {
    format!(
        r#"apiVersion: karpenter.sh/v1
kind: NodePool
metadata:
  name: {POOL}
spec:
  disruption: {{consolidationPolicy: WhenEmpty, consolidateAfter: Never}}
  template:
    spec:
      expireAfter: Never
      nodeClassRef: {node_class_ref}
      requirements:
        - {{key: kubernetes.io/arch, operator: In, values: [amd64]}}
        - {{key: kubernetes.io/os, operator: In, values: [linux]}}
        - {{key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}}
        - {{key: topology.kubernetes.io/zone, operator: In, values: [{zones}]}}
        - {{key: node.kubernetes.io/instance-type, operator: In, values: [{types}]}}
"#,
        zones = ZONES.join(", "),
        types = types.join(", "),
    )
}
