//! The planner's view of the configured NodePools ([`Pool`]), shared by `nodewright plan` and the
//! provisioner: requirements, template labels, taints, kubelet settings, limits, and the requests
//! of the DaemonSet pods every node of the pool will run.
//!
//! A DaemonSet counts against a pool when its pod would run on the pool's nodes, as Karpenter
//! decides it (`isDaemonPodCompatible`): the pod tolerates the pool's `taints` (never its
//! `startupTaints`, which a node daemon removes; `PreferNoSchedule` is never binding), and its
//! `nodeSelector` and one of its required node affinity terms can hold together with the pool's
//! requirements and template labels. A label the pool does not pin (the instance type, the zone)
//! could take any value on some node, so it never rules a DaemonSet out; a label no node of the
//! pool carries fails every requirement that needs one.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::config::{Config, EC2NodeClass, NodePool};
use crate::model::catalog::{KubeletSettings, labels, reservation_slot};
use crate::model::resources::{
    CPU, PODS, parse_quantity, parse_quantity_millis, parse_slot_quantity, slot_of,
};
use crate::model::{Operator, Requirement, Resources};
use crate::scheduling::pod::PendingPod;
use crate::scheduling::solver::{Limits, Pool, untolerated};

/// Tolerations the DaemonSet controller adds to every daemon pod
/// (`util.AddOrUpdateDaemonPodTolerations`): `(key, effect)`, operator `Exists`.
pub const DAEMON_TOLERATIONS: [(&str, &str); 6] = [
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
];

/// Added as well for daemon pods on the host network.
pub const DAEMON_HOST_NETWORK_TOLERATION: (&str, &str) =
    ("node.kubernetes.io/network-unavailable", "NoSchedule");

/// Add the DaemonSet controller's tolerations to a daemon pod's, each unless it is there already.
pub fn add_daemon_tolerations(tolerations: &mut Vec<Toleration>, host_network: bool) {
    let extra = host_network.then_some(DAEMON_HOST_NETWORK_TOLERATION);
    for (key, effect) in DAEMON_TOLERATIONS.into_iter().chain(extra) {
        let toleration = Toleration {
            key: Some(key.to_owned()),
            operator: Some("Exists".to_owned()),
            effect: Some(effect.to_owned()),
            ..Toleration::default()
        };
        if !tolerations.contains(&toleration) {
            tolerations.push(toleration);
        }
    }
}

/// The solver's view of every NodePool in `config`. `daemonsets` holds one pod per DaemonSet
/// (its template, with the DaemonSet controller's tolerations); those that would run on a pool's
/// nodes add their requests, and one pod each, to its per-node overhead.
pub fn pools_from_config(config: &Config, daemonsets: &[Pod]) -> Vec<Pool> {
    let daemons: Vec<PendingPod> = daemonsets.iter().map(PendingPod::from_pod).collect();
    config
        .node_pools
        .values()
        .map(|pool| pool_from(pool, config.node_class_of(pool), &daemons))
        .collect()
}

fn pool_from(pool: &NodePool, class: Option<&EC2NodeClass>, daemons: &[PendingPod]) -> Pool {
    let spec = &pool.spec;
    let mut limits = Limits::default();
    for (name, q) in &spec.limits {
        match name.as_str() {
            "cpu" => limits.cpu_millis = parse_quantity_millis(&q.0),
            "memory" => limits.memory_bytes = parse_quantity(&q.0),
            "nodes" => limits.nodes = parse_quantity(&q.0),
            // GPUs, Neuron devices, EFA, ephemeral storage, pods: any resource a node provides.
            other => {
                if let Some(slot) = slot_of(other) {
                    limits.others[slot] = parse_slot_quantity(slot, &q.0);
                }
            }
        }
    }
    let mut out = Pool {
        name: pool.name().to_owned(),
        weight: spec.weight.unwrap_or(0),
        requirements: spec.template.spec.requirements.clone(),
        labels: pool.template_labels().cloned().unwrap_or_default(),
        // Only `taints`: `startupTaints` never need a toleration.
        taints: spec.template.spec.taints.clone(),
        kubelet: class.map(kubelet_settings).unwrap_or_default(),
        daemon_overhead: Resources::ZERO,
        limits,
        in_use: Default::default(),
        replicas: spec.replicas,
    };
    let mut overhead = Resources::ZERO;
    for d in daemons.iter().filter(|d| daemon_runs_on(&out, d)) {
        let mut r = d.requests;
        r.0[PODS] = 1;
        overhead += r;
    }
    out.daemon_overhead = overhead;
    out
}

/// Would this DaemonSet pod run on the pool's nodes?
pub fn daemon_runs_on(pool: &Pool, daemon: &PendingPod) -> bool {
    if daemon.invalid.is_some() || untolerated(&pool.taints, &daemon.constraints).is_some() {
        return false;
    }
    let c = &daemon.constraints;
    let fits = |term: &[Requirement]| {
        let reqs: Vec<&Requirement> = c.node_selector.iter().chain(term).collect();
        let mut keys: Vec<&str> = reqs.iter().map(|r| r.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.into_iter().all(|key| {
            let daemon: Vec<&Requirement> = reqs.iter().copied().filter(|r| r.key == key).collect();
            key_compatible(pool, key, &daemon)
        })
    };
    if c.node_affinity.is_empty() {
        fits(&[])
    } else {
        c.node_affinity.iter().any(|term| fits(term))
    }
}

/// Can a node of `pool` carry a value (or no value) of label `key` that meets every one of
/// `daemon`'s requirements on it?
fn key_compatible(pool: &Pool, key: &str, daemon: &[&Requirement]) -> bool {
    let mut pinned: Vec<Requirement> = Vec::new();
    let implicit = match key {
        labels::NODEPOOL => Some(pool.name.as_str()),
        labels::OS => Some("linux"),
        _ => None,
    };
    if let Some(value) = pool.labels.get(key).map(String::as_str).or(implicit) {
        pinned.push(Requirement {
            key: key.to_owned(),
            operator: Operator::In,
            values: vec![value.to_owned()],
            min_values: None,
        });
    }
    let pool_reqs: Vec<&Requirement> = pool
        .requirements
        .iter()
        .filter(|r| r.key == key)
        .chain(&pinned)
        .collect();
    if pool_reqs.is_empty() {
        // A label the launch sets (instance type, zone, ...) can have any value on some node;
        // any other label no node of the pool carries.
        return well_known(key) || daemon.iter().all(|r| r.allows(None));
    }
    let all: Vec<&Requirement> = pool_reqs
        .into_iter()
        .chain(daemon.iter().copied())
        .collect();
    candidates(&all)
        .iter()
        .any(|v| all.iter().all(|r| r.allows(v.as_deref())))
}

/// Labels whose value a node of the pool gets from what is launched, not from the pool.
fn well_known(key: &str) -> bool {
    labels::is_instance_label(key)
        || labels::is_offering_label(key)
        || key == labels::REGION
        || key.starts_with("karpenter.k8s.aws/")
}

/// Values that between them meet every satisfiable combination of `reqs` on one key: no label,
/// every listed value, integers around every single-valued bound (stepping past as many listed
/// values as there are), and a value no requirement lists.
fn candidates(reqs: &[&Requirement]) -> Vec<Option<String>> {
    let listed: Vec<&String> = reqs.iter().flat_map(|r| &r.values).collect();
    let mut out: Vec<Option<String>> = vec![None];
    out.extend(listed.iter().map(|v| Some((*v).clone())));
    let reach = i64::try_from(listed.len())
        .unwrap_or(i64::MAX)
        .saturating_add(1);
    for r in reqs {
        if let [bound] = r.values.as_slice()
            && let Ok(b) = bound.parse::<i64>()
        {
            for step in 1..=reach {
                out.push(Some(b.saturating_add(step).to_string()));
                out.push(Some(b.saturating_sub(step).to_string()));
            }
        }
    }
    let mut fresh = String::from("nodewright-unlisted");
    while listed.iter().any(|v| **v == fresh) {
        fresh.push('-');
    }
    out.push(Some(fresh));
    out
}

/// Allocatable-relevant settings of an EC2NodeClass.
pub fn kubelet_settings(class: &EC2NodeClass) -> KubeletSettings {
    let mut k = KubeletSettings::default();
    if let Some(kubelet) = &class.spec.kubelet {
        k.max_pods = kubelet.max_pods.and_then(|v| u32::try_from(v).ok());
        k.pods_per_core = kubelet.pods_per_core.and_then(|v| u32::try_from(v).ok());
        let read = |map: &BTreeMap<String, Quantity>| {
            map.iter()
                .filter_map(|(name, q)| {
                    let slot = reservation_slot(name)?;
                    let v = if slot == CPU {
                        parse_quantity_millis(&q.0)
                    } else {
                        parse_quantity(&q.0)
                    }?;
                    Some((slot, v))
                })
                .collect()
        };
        k.kube_reserved = read(&kubelet.kube_reserved);
        k.system_reserved = read(&kubelet.system_reserved);
        k.eviction_memory = kubelet
            .eviction_hard
            .get("memory.available")
            .and_then(|v| parse_quantity(v));
    }
    let root = class
        .spec
        .block_device_mappings
        .iter()
        .find(|m| m.root_volume)
        .or(class.spec.block_device_mappings.first());
    k.root_volume_bytes = root
        .and_then(|m| m.ebs.as_ref())
        .and_then(|e| e.volume_size.as_ref())
        .and_then(|q| parse_quantity(&q.0));
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resources::MEMORY;
    use serde_json::{Value, json};

    const CONFIG: &str = r#"
apiVersion: karpenter.sh/v1
kind: NodePool
metadata: {name: general}
spec:
  template:
    metadata:
      labels: {team: web}
    spec:
      nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}
      taints:
        - {key: dedicated, value: general, effect: NoSchedule}
      startupTaints:
        - {key: example.com/agent-not-ready, effect: NoExecute}
      requirements:
        - {key: kubernetes.io/arch, operator: In, values: [amd64]}
        - {key: example.com/tier, operator: In, values: [gold, silver]}
        - {key: karpenter.k8s.aws/instance-generation, operator: Gt, values: ["4"]}
---
apiVersion: karpenter.sh/v1
kind: NodePool
metadata: {name: plain}
spec:
  template:
    spec:
      nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}
      requirements:
        - {key: kubernetes.io/arch, operator: In, values: [arm64]}
---
apiVersion: karpenter.sh/v1
kind: NodePool
metadata: {name: gpu}
spec:
  template:
    spec:
      nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}
      taints:
        - {key: nvidia.com/gpu, effect: NoSchedule}
      requirements:
        - {key: kubernetes.io/arch, operator: In, values: [amd64, arm64]}
---
apiVersion: karpenter.sh/v1
kind: NodePool
metadata: {name: network}
spec:
  template:
    spec:
      nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}
      taints:
        - {key: node.kubernetes.io/network-unavailable, effect: NoSchedule}
---
apiVersion: karpenter.k8s.aws/v1
kind: EC2NodeClass
metadata: {name: default}
spec:
  amiSelectorTerms: [{alias: al2023@latest}]
  role: NodeRole
  subnetSelectorTerms: [{tags: {karpenter.sh/discovery: c}}]
  securityGroupSelectorTerms: [{tags: {karpenter.sh/discovery: c}}]
"#;

    fn config() -> Config {
        Config::parse(CONFIG, "test.yaml").unwrap()
    }

    /// A DaemonSet's pod as the watch and `plan` make it: the template's spec with the DaemonSet
    /// controller's tolerations.
    fn daemon(name: &str, mut spec: Value) -> Pod {
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "agent",
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]);
        }
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "kube-system"},
            "spec": spec,
        }))
        .unwrap();
        let spec = pod.spec.as_mut().unwrap();
        let host_network = spec.host_network == Some(true);
        add_daemon_tolerations(spec.tolerations.get_or_insert_with(Vec::new), host_network);
        pod
    }

    fn term(expressions: Value) -> Value {
        json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": expressions}]}}})
    }

    #[test]
    fn which_daemonsets_count_for_which_pool() {
        let everything = json!([{"operator": "Exists"}]);
        let cases: Vec<(&str, Value, &[&str])> = vec![
            // Tolerating every taint, no selector: every pool.
            (
                "tolerates-all",
                json!({"tolerations": everything}),
                &["general", "gpu", "network", "plain"],
            ),
            // Only the controller's tolerations: pools without taints (general's startup taint
            // does not matter, its `dedicated` taint does).
            ("tolerates-nothing", json!({}), &["plain"]),
            (
                "tolerates-dedicated",
                json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "general", "effect": "NoSchedule"}]}),
                &["general", "plain"],
            ),
            (
                "tolerates-wrong-value",
                json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "batch"}]}),
                &["plain"],
            ),
            // On the host network the controller tolerates network-unavailable as well.
            (
                "host-network",
                json!({"hostNetwork": true}),
                &["network", "plain"],
            ),
            (
                "pool-selector",
                json!({"tolerations": everything, "nodeSelector": {"karpenter.sh/nodepool": "gpu"}}),
                &["gpu"],
            ),
            // arm64: plain pins it, gpu allows it, general allows only amd64.
            (
                "arm64",
                json!({"tolerations": everything, "nodeSelector": {"kubernetes.io/arch": "arm64"}}),
                &["gpu", "network", "plain"],
            ),
            (
                "template-label",
                json!({"tolerations": everything, "nodeSelector": {"team": "web"}}),
                &["general"],
            ),
            (
                "other-label-value",
                json!({"tolerations": everything, "nodeSelector": {"team": "api"}}),
                &[],
            ),
            // A custom label only general's requirements give its nodes.
            (
                "tier-gold",
                json!({"tolerations": everything, "affinity": term(json!([{"key": "example.com/tier", "operator": "In", "values": ["gold"]}]))}),
                &["general"],
            ),
            (
                "tier-not-gold",
                json!({"tolerations": everything, "affinity": term(json!([{"key": "example.com/tier", "operator": "NotIn", "values": ["gold"]}]))}),
                &["general", "gpu", "network", "plain"],
            ),
            (
                "no-team",
                json!({"tolerations": everything, "affinity": term(json!([{"key": "team", "operator": "DoesNotExist"}]))}),
                &["gpu", "network", "plain"],
            ),
            // Terms are ORed: bronze matches no pool, the second term matches plain.
            (
                "two-terms",
                json!({"tolerations": everything, "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "example.com/tier", "operator": "In", "values": ["bronze"]}]},
                {"matchExpressions": [{"key": "karpenter.sh/nodepool", "operator": "In", "values": ["plain"]}]}]}}}}),
                &["plain"],
            ),
            // Instance labels the pool leaves open can take any value; general needs generation > 4.
            (
                "generation-3",
                json!({"tolerations": everything, "nodeSelector": {"karpenter.k8s.aws/instance-generation": "3"}}),
                &["gpu", "network", "plain"],
            ),
            (
                "generation-6",
                json!({"tolerations": everything, "affinity": term(json!([
                {"key": "karpenter.k8s.aws/instance-generation", "operator": "Gt", "values": ["5"]},
                {"key": "karpenter.k8s.aws/instance-generation", "operator": "Lt", "values": ["7"]}]))}),
                &["general", "gpu", "network", "plain"],
            ),
            // Only 4 lies in (3, 5), and general needs more than 4.
            (
                "generation-4",
                json!({"tolerations": everything, "affinity": term(json!([
                {"key": "karpenter.k8s.aws/instance-generation", "operator": "Gt", "values": ["3"]},
                {"key": "karpenter.k8s.aws/instance-generation", "operator": "Lt", "values": ["5"]}]))}),
                &["gpu", "network", "plain"],
            ),
            (
                "zone",
                json!({"tolerations": everything, "nodeSelector": {"topology.kubernetes.io/zone": "eu-west-1a"}}),
                &["general", "gpu", "network", "plain"],
            ),
            (
                "windows",
                json!({"tolerations": everything, "nodeSelector": {"kubernetes.io/os": "windows"}}),
                &[],
            ),
            (
                "hostname",
                json!({"tolerations": everything, "nodeSelector": {"kubernetes.io/hostname": "ip-10-0-0-1"}}),
                &[],
            ),
            (
                "bad-operator",
                json!({"tolerations": everything, "affinity": term(json!([{"key": "team", "operator": "Like", "values": ["w"]}]))}),
                &[],
            ),
        ];
        let config = config();
        for (name, spec, expected) in cases {
            let pools = pools_from_config(&config, &[daemon(name, spec)]);
            let counted: Vec<&str> = pools
                .iter()
                .filter(|p| p.daemon_overhead != Resources::ZERO)
                .map(|p| p.name.as_str())
                .collect();
            assert_eq!(counted, expected, "{name}");
        }
    }

    #[test]
    fn overhead_sums_the_requests_of_counted_daemons_and_one_pod_each() {
        let sidecar_init = json!({
            "initContainers": [{"name": "setup", "resources": {"requests": {"cpu": "2"}}}],
            "containers": [{"name": "agent", "resources": {"requests": {"cpu": "250m", "memory": "1Gi"}}}],
        });
        let daemons = [
            daemon("a", json!({})),
            daemon("b", sidecar_init),
            daemon(
                "tainted-only",
                json!({"nodeSelector": {"karpenter.sh/nodepool": "gpu"}}),
            ),
        ];
        let pools = pools_from_config(&config(), &daemons);
        let plain = pools.iter().find(|p| p.name == "plain").unwrap();
        // a: 100m + 128Mi; b: an init container of 2 cpu runs before the 250m agent, so 2 cpu.
        assert_eq!(plain.daemon_overhead.0[CPU], 100 + 2000);
        assert_eq!(plain.daemon_overhead.0[MEMORY], (128 << 20) + (1 << 30));
        assert_eq!(plain.daemon_overhead.0[PODS], 2);
        let gpu = pools.iter().find(|p| p.name == "gpu").unwrap();
        assert_eq!(gpu.daemon_overhead, Resources::ZERO);
    }

    #[test]
    fn startup_taints_are_not_pool_taints() {
        let pools = pools_from_config(&config(), &[]);
        let general = pools.iter().find(|p| p.name == "general").unwrap();
        let keys: Vec<&str> = general.taints.iter().map(|t| t.key.as_str()).collect();
        assert_eq!(keys, ["dedicated"]);
    }

    #[test]
    fn daemon_tolerations_are_added_once() {
        let mut tolerations = Vec::new();
        add_daemon_tolerations(&mut tolerations, false);
        assert_eq!(tolerations.len(), DAEMON_TOLERATIONS.len());
        add_daemon_tolerations(&mut tolerations, true);
        assert_eq!(tolerations.len(), DAEMON_TOLERATIONS.len() + 1);
        add_daemon_tolerations(&mut tolerations, true);
        assert_eq!(tolerations.len(), DAEMON_TOLERATIONS.len() + 1);
    }
}
