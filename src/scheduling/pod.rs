//! What the planner needs of a pending Pod: its effective requests and its scheduling constraints,
//! in hashable form so identical pods (replicas of one workload) are planned as one group.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, Pod, PodAffinityTerm, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::preferences::{self, Preference};
use super::volumes::normalized_key;
use crate::model::catalog::labels;
use crate::model::resources::{PODS, ResourceError, Resources};
use crate::model::{Operator, Requirement};

/// A topology the planner understands: zones and single nodes. Spread and affinity on other keys
/// are ignored, as Karpenter does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topology {
    Zone,
    Hostname,
}

impl Topology {
    pub fn from_key(key: &str) -> Option<Self> {
        match key {
            labels::ZONE | labels::ZONE_BETA => Some(Self::Zone),
            labels::HOSTNAME => Some(Self::Hostname),
            _ => None,
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Self::Zone => labels::ZONE,
            Self::Hostname => labels::HOSTNAME,
        }
    }
}

/// One `matchExpressions` entry of a label selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SelectorExpr {
    pub key: String,
    pub operator: String,
    pub values: Vec<String>,
}

/// A label selector plus the namespaces it looks in (`None`: every namespace).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    pub match_labels: Vec<(String, String)>,
    pub exprs: Vec<SelectorExpr>,
    pub namespaces: Option<BTreeSet<String>>,
}

impl Selector {
    fn from_label_selector(selector: &LabelSelector, namespaces: Option<BTreeSet<String>>) -> Self {
        let mut match_labels: Vec<(String, String)> = selector
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        match_labels.sort();
        let mut exprs: Vec<SelectorExpr> = selector
            .match_expressions
            .iter()
            .flatten()
            .map(|e| SelectorExpr {
                key: e.key.clone(),
                operator: e.operator.clone(),
                values: e.values.clone().unwrap_or_default(),
            })
            .collect();
        exprs.sort();
        Self {
            match_labels,
            exprs,
            namespaces,
        }
    }

    /// Whether a pod in `namespace` with `labels` is selected.
    pub fn matches(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        if let Some(namespaces) = &self.namespaces
            && !namespaces.contains(namespace)
        {
            return false;
        }
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.exprs.iter().all(|e| {
                let value = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => value.is_some_and(|v| e.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !e.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }

    /// Label keys this selector reads.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.match_labels
            .iter()
            .map(|(k, _)| k.as_str())
            .chain(self.exprs.iter().map(|e| e.key.as_str()))
    }

    /// `app=web, tier In (a,b)` for messages.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.extend(self.exprs.iter().map(|e| {
            if e.values.is_empty() {
                format!("{} {}", e.key, e.operator)
            } else {
                format!("{} {} ({})", e.key, e.operator, e.values.join(","))
            }
        }));
        if parts.is_empty() {
            "every pod".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// A topology spread constraint on a known topology.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Spread {
    pub topology: Topology,
    pub max_skew: i64,
    /// `DoNotSchedule`. `ScheduleAnyway` is honoured first and relaxed only when it would leave
    /// the pod unplaced.
    pub required: bool,
    pub selector: Selector,
    /// `minDomains` (with `DoNotSchedule`): with fewer eligible domains, the global minimum
    /// counts as 0, so each domain holds at most `max_skew` matching pods.
    pub min_domains: i64,
}

/// A required pod (anti-)affinity term on a known topology.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodTerm {
    pub topology: Topology,
    pub selector: Selector,
}

/// A simplified toleration, hashable.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tol {
    pub key: Option<String>,
    pub operator: Option<String>,
    pub value: Option<String>,
    pub effect: Option<String>,
}

impl Tol {
    pub fn to_toleration(&self) -> Toleration {
        Toleration {
            key: self.key.clone(),
            operator: self.operator.clone(),
            value: self.value.clone(),
            effect: self.effect.clone(),
            toleration_seconds: None,
        }
    }
}

/// Everything about a pod that decides where it may go. Pods with equal constraints (and equal
/// labels, as far as any selector in the batch reads them) are planned as one group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Constraints {
    pub namespace: String,
    /// All labels of the pod (the planner narrows them to the keys selectors read when grouping).
    pub labels: BTreeMap<String, String>,
    /// `spec.nodeSelector` as `In [value]` requirements, ANDed with `node_affinity`.
    pub node_selector: Vec<Requirement>,
    /// Required node affinity terms, ORed; each term's requirements ANDed. Empty: no affinity.
    pub node_affinity: Vec<Vec<Requirement>>,
    pub tolerations: Vec<Tol>,
    pub spreads: Vec<Spread>,
    pub affinity: Vec<PodTerm>,
    pub anti_affinity: Vec<PodTerm>,
    /// Preferred terms and `ScheduleAnyway` spreads, in the order they are relaxed (see
    /// [`super::preferences`]); the planner holds them as required until a pod cannot be placed.
    pub preferences: Vec<Preference>,
}

/// A pending pod as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingPod {
    /// `namespace/name`.
    pub key: String,
    pub requests: Resources,
    pub constraints: Constraints,
    /// Why the pod can never be placed on a new node, found while reading it.
    pub invalid: Option<String>,
}

impl PendingPod {
    /// Reads a pod. Never fails: what cannot be understood is recorded in `invalid`.
    pub fn from_pod(pod: &Pod) -> PendingPod {
        let meta = &pod.metadata;
        let namespace = meta
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let name = meta
            .name
            .clone()
            .or_else(|| meta.generate_name.clone())
            .unwrap_or_default();
        let labels = meta.labels.clone().unwrap_or_default();
        let mut invalid = None;
        let mut constraints = Constraints {
            namespace: namespace.clone(),
            labels,
            ..Default::default()
        };
        let mut requests = Resources::ZERO;
        if let Some(spec) = &pod.spec {
            match effective_requests(
                &spec.containers,
                spec.init_containers.as_deref().unwrap_or_default(),
                spec.overhead.as_ref(),
            ) {
                Ok(r) => requests = r,
                Err(e) => invalid = Some(e.to_string()),
            }
            for (key, value) in spec.node_selector.iter().flatten() {
                constraints.node_selector.push(Requirement {
                    key: normalized_key(key).to_owned(),
                    operator: Operator::In,
                    values: vec![value.clone()],
                    min_values: None,
                });
            }
            constraints.tolerations = spec
                .tolerations
                .iter()
                .flatten()
                .map(|t| Tol {
                    key: t.key.clone(),
                    operator: t.operator.clone(),
                    value: t.value.clone(),
                    effect: t.effect.clone(),
                })
                .collect();
            if let Some(affinity) = &spec.affinity {
                if let Some(required) = affinity.node_affinity.as_ref().and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                }) {
                    for term in &required.node_selector_terms {
                        let mut reqs = Vec::new();
                        for e in term.match_expressions.iter().flatten() {
                            match operator(&e.operator) {
                                Some(op) => reqs.push(Requirement {
                                    key: normalized_key(&e.key).to_owned(),
                                    operator: op,
                                    values: e.values.clone().unwrap_or_default(),
                                    min_values: None,
                                }),
                                None => {
                                    invalid = Some(format!(
                                        "node affinity operator {:?} is not a Kubernetes operator",
                                        e.operator
                                    ))
                                }
                            }
                        }
                        constraints.node_affinity.push(reqs);
                    }
                }
                let terms = |terms: Option<&Vec<PodAffinityTerm>>| -> Vec<PodTerm> {
                    terms
                        .into_iter()
                        .flatten()
                        .filter_map(|t| pod_term(t, &namespace))
                        .collect()
                };
                if let Some(a) = &affinity.pod_affinity {
                    constraints.affinity = terms(
                        a.required_during_scheduling_ignored_during_execution
                            .as_ref(),
                    );
                }
                if let Some(a) = &affinity.pod_anti_affinity {
                    constraints.anti_affinity = terms(
                        a.required_during_scheduling_ignored_during_execution
                            .as_ref(),
                    );
                }
            }
            for c in spec.topology_spread_constraints.iter().flatten() {
                let Some(topology) = Topology::from_key(&c.topology_key) else {
                    continue;
                };
                let mut selector = c.label_selector.clone().unwrap_or_default();
                // matchLabelKeys: the pod's own values, ANDed into the selector.
                for key in c.match_label_keys.iter().flatten() {
                    if let Some(value) = constraints.labels.get(key) {
                        selector
                            .match_labels
                            .get_or_insert_with(Default::default)
                            .insert(key.clone(), value.clone());
                    }
                }
                constraints.spreads.push(Spread {
                    topology,
                    max_skew: i64::from(c.max_skew.max(1)),
                    required: c.when_unsatisfiable != "ScheduleAnyway",
                    min_domains: c.min_domains.map_or(1, i64::from),
                    selector: Selector::from_label_selector(
                        &selector,
                        Some(BTreeSet::from([namespace.clone()])),
                    ),
                });
            }
            if spec.node_name.as_deref().is_some_and(|n| !n.is_empty()) {
                invalid = Some("the pod is already bound to a node (spec.nodeName)".to_owned());
            }
        }
        constraints.spreads.sort();
        if let Some(spec) = &pod.spec {
            constraints.preferences = preferences::read(spec.affinity.as_ref(), &namespace);
        }
        if constraints.spreads.iter().any(|s| !s.required) {
            constraints
                .preferences
                .push(Preference::ScheduleAnywaySpreads);
        }
        PendingPod {
            key: format!("{namespace}/{name}"),
            requests,
            constraints,
            invalid,
        }
    }
}

pub(crate) fn operator(op: &str) -> Option<Operator> {
    Some(match op {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        "Gt" => Operator::Gt,
        "Lt" => Operator::Lt,
        _ => return None,
    })
}

pub(crate) fn pod_term(term: &PodAffinityTerm, own_namespace: &str) -> Option<PodTerm> {
    let topology = Topology::from_key(&term.topology_key)?;
    let listed: BTreeSet<String> = term.namespaces.iter().flatten().cloned().collect();
    // An empty namespaceSelector ({}) means every namespace; a non-empty one needs namespace
    // labels the planner does not have, so it is read as the listed namespaces plus the pod's own.
    let namespaces = match &term.namespace_selector {
        Some(s)
            if s.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && s.match_expressions.as_ref().is_none_or(|e| e.is_empty()) =>
        {
            None
        }
        _ if listed.is_empty() => Some(BTreeSet::from([own_namespace.to_owned()])),
        _ => Some(listed),
    };
    Some(PodTerm {
        topology,
        selector: Selector::from_label_selector(
            term.label_selector
                .as_ref()
                .unwrap_or(&LabelSelector::default()),
            namespaces,
        ),
    })
}

/// Requests of one container; limits stand in for missing requests, as the API server defaults them.
fn container_requests(container: &Container) -> Result<Resources, ResourceError> {
    let mut r = Resources::ZERO;
    let Some(resources) = &container.resources else {
        return Ok(r);
    };
    let requests = resources.requests.as_ref();
    for (name, quantity) in requests.into_iter().flatten() {
        add(&mut r, name, &quantity.0)?;
    }
    for (name, quantity) in resources.limits.iter().flatten() {
        if requests.is_none_or(|req| !req.contains_key(name)) {
            add(&mut r, name, &quantity.0)?;
        }
    }
    Ok(r)
}

fn add(r: &mut Resources, name: &str, quantity: &str) -> Result<(), ResourceError> {
    match r.add_named(name, quantity) {
        // A zero request of a resource we cannot provide asks for nothing.
        Err(ResourceError::Unsupported(_))
            if crate::model::resources::parse_quantity(quantity) == Some(0) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Effective pod requests as the scheduler computes them (with sidecars, KEP-753):
/// `max(Σ containers + Σ sidecars, max over init containers i of (init_i + sidecars started
/// before i)) + overhead`, slot by slot, plus one pod slot.
pub fn effective_requests(
    containers: &[Container],
    init_containers: &[Container],
    overhead: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> Result<Resources, ResourceError> {
    let mut sum = Resources::ZERO;
    for c in containers {
        sum += container_requests(c)?;
    }
    let mut sidecars = Resources::ZERO;
    let mut init_peak = Resources::ZERO;
    for c in init_containers {
        let r = container_requests(c)?;
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars += r;
            init_peak = init_peak.slot_max(&sidecars);
        } else {
            init_peak = init_peak.slot_max(&(r + sidecars));
        }
    }
    let mut total = (sum + sidecars).slot_max(&init_peak);
    for (name, quantity) in overhead.into_iter().flatten() {
        add(&mut total, name, &quantity.0)?;
    }
    total.0[PODS] = 1;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resources::{CPU, MEMORY};

    fn pod(json: serde_json::Value) -> PendingPod {
        PendingPod::from_pod(&serde_json::from_value(json).unwrap())
    }

    fn container(name: &str, cpu: &str, mem: &str) -> serde_json::Value {
        serde_json::json!({"name": name, "image": "x", "resources": {"requests": {"cpu": cpu, "memory": mem}}})
    }

    /// Node selector and affinity keys are read as Karpenter normalizes them: the EBS CSI
    /// driver's zone key and the beta keys are the zone, arch and instance-type labels.
    #[test]
    fn node_label_aliases_are_normalized() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {
                "containers": [container("a", "1", "1Gi")],
                "nodeSelector": {"topology.ebs.csi.aws.com/zone": "us-east-1b",
                                 "beta.kubernetes.io/arch": "arm64"},
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "failure-domain.beta.kubernetes.io/zone", "operator": "In",
                         "values": ["us-east-1b"]},
                        {"key": "beta.kubernetes.io/instance-type", "operator": "In",
                         "values": ["m5.large"]}]}]}}}
            }
        }));
        let keys: Vec<&str> = p
            .constraints
            .node_selector
            .iter()
            .map(|r| r.key.as_str())
            .collect();
        assert_eq!(keys, [labels::ARCH, labels::ZONE]);
        let keys: Vec<&str> = p.constraints.node_affinity[0]
            .iter()
            .map(|r| r.key.as_str())
            .collect();
        assert_eq!(keys, [labels::ZONE, labels::INSTANCE_TYPE]);
    }

    #[test]
    fn init_containers_count_as_kubernetes_counts_them() {
        // containers 300m/300Mi; a plain init container of 1 cpu dominates cpu;
        // a sidecar of 100m/100Mi adds to the running total.
        let p = pod(serde_json::json!({
            "metadata": {"name": "a", "namespace": "n"},
            "spec": {
                "containers": [container("a", "100m", "100Mi"), container("b", "200m", "200Mi")],
                "initContainers": [
                    {"name": "side", "image": "x", "restartPolicy": "Always",
                     "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}}},
                    container("init", "1", "50Mi")
                ],
                "overhead": {"cpu": "10m"}
            }
        }));
        assert_eq!(p.requests.0[CPU], 1100 + 10);
        assert_eq!(p.requests.0[MEMORY], 400 << 20);
        assert_eq!(p.requests.0[PODS], 1);
        assert_eq!(p.key, "n/a");
    }

    #[test]
    fn limits_stand_in_for_requests_and_unknown_resources_are_reported() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "a"},
            "spec": {"containers": [{"name": "a", "image": "x", "resources": {"limits": {"cpu": "2", "nvidia.com/gpu": "1"}}}]}
        }));
        assert_eq!(p.requests.0[CPU], 2000);
        assert_eq!(p.requests.0[4], 1);
        assert!(p.invalid.is_none());
        let p = pod(serde_json::json!({
            "metadata": {"name": "a"},
            "spec": {"containers": [{"name": "a", "image": "x", "resources": {"requests": {"example.com/fpga": "1", "hugepages-2Mi": "0"}}}]}
        }));
        assert!(p.invalid.unwrap().contains("example.com/fpga"));
    }

    #[test]
    fn constraints_are_read() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "a", "namespace": "n", "labels": {"app": "web", "pod-template-hash": "abc"}},
            "spec": {
                "containers": [container("a", "1", "1Gi")],
                "nodeSelector": {"karpenter.sh/nodepool": "default"},
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "topologySpreadConstraints": [{
                    "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
                    "labelSelector": {"matchLabels": {"app": "web"}}, "matchLabelKeys": ["pod-template-hash"]
                }, {
                    "maxSkew": 1, "topologyKey": "example.com/rack", "whenUnsatisfiable": "DoNotSchedule",
                    "labelSelector": {"matchLabels": {"app": "web"}}
                }],
                "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "web"}}}
                ]}}
            }
        }));
        let c = &p.constraints;
        assert_eq!(c.node_selector.len(), 1);
        assert_eq!(c.tolerations.len(), 1);
        assert_eq!(c.spreads.len(), 1, "unknown topology keys are ignored");
        assert_eq!(
            c.spreads[0].selector.match_labels.len(),
            2,
            "matchLabelKeys folded in"
        );
        assert!(c.spreads[0].selector.matches("n", &c.labels));
        assert!(!c.spreads[0].selector.matches("other", &c.labels));
        assert_eq!(c.anti_affinity[0].topology, Topology::Hostname);
    }
}
