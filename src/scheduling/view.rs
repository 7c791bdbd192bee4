//! What nodewright knows about the cluster's nodes that kube-scheduler does not: which nodes it is
//! draining or terminating, which new nodes are reserved for the pods they were launched for, and
//! which free capacity is promised to pending pods. The extender reads it; the node and pod
//! watches and the provisioner write it. Pure data, no I/O.
//!
//! Keys: nodes by name; pods by `namespace/name` (the key the planner and NodeClaims use).

use std::collections::{BTreeMap, HashSet};

/// Maps keyed by node and pod names, looked up thousands of times per extender call: foldhash
/// (randomly seeded) instead of SipHash.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Node;

use crate::model::catalog::{CapacityType, Catalog, labels};
use crate::model::resources::Resources;
use crate::model::taints::{Taint, TaintEffect};
use crate::scheduling::pod::{PendingPod, PodTerm, Spread, Topology};

/// Where nodewright stands with a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Usable.
    #[default]
    Ready,
    /// Being emptied: no new pods.
    Draining,
    /// Its instance is being (or has been) terminated, or the Node is being deleted.
    Terminating,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::Draining => "Draining",
            Self::Terminating => "Terminating",
        }
    }
}

/// One node as the node cache holds it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeFacts {
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub allocatable: Resources,
    /// Sum of the requests of the non-terminal pods bound to it (the `pods` slot counts them).
    pub requested: Resources,
    /// Price per hour of its offering (instance type × zone × capacity type), when known.
    pub price_per_hour: Option<f64>,
    pub state: NodeState,
    /// The NodeClaim it was launched for, if nodewright launched it.
    pub claim: Option<Arc<str>>,
}

impl NodeFacts {
    /// Allocatable minus what bound pods request.
    pub fn free(&self) -> Resources {
        self.allocatable.saturating_sub(&self.requested)
    }
}

/// A pod a promise is held for: what it needs of the node, and what another pod placed on the node
/// first must not break for it (kube-scheduler would then keep it off the node it was promised).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PromisedPod {
    pub requests: Resources,
    pub namespace: String,
    /// Its labels, for other pods' anti-affinity.
    pub labels: BTreeMap<String, String>,
    /// Its required pod anti-affinity (hostname or zone; the node lies in both domains).
    pub anti_affinity: Vec<PodTerm>,
    /// Its `DoNotSchedule` spreads on `kubernetes.io/hostname`. Zone spreads are left out: whether
    /// one more pod in the zone breaks them depends on every other zone's count.
    pub hostname_spreads: Vec<Spread>,
}

impl PromisedPod {
    /// Whether it has rules a pod sharing its node could break.
    pub fn has_rules(&self) -> bool {
        !self.anti_affinity.is_empty() || !self.hostname_spreads.is_empty()
    }
}

/// A pod known by its requests alone: no labels, no rules.
impl From<Resources> for PromisedPod {
    fn from(requests: Resources) -> Self {
        Self {
            requests,
            ..Self::default()
        }
    }
}

impl From<&PendingPod> for PromisedPod {
    fn from(pod: &PendingPod) -> Self {
        let c = &pod.constraints;
        Self {
            requests: pod.requests,
            namespace: c.namespace.clone(),
            labels: c.labels.clone(),
            anti_affinity: c.anti_affinity.clone(),
            hostname_spreads: c
                .spreads
                .iter()
                .filter(|s| s.required && s.topology == Topology::Hostname)
                .cloned()
                .collect(),
        }
    }
}

/// Capacity on one node held for pods that are not bound yet (planned onto an existing node, or
/// the pods a new node was launched for).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Promise {
    /// `namespace/name` → the pod, for the pods still unbound.
    pub pods: HashMap<String, Arc<PromisedPod>>,
    /// The NodeClaim the promise comes from, for messages.
    pub claim: Option<Arc<str>>,
    /// After this instant the promise no longer holds (pods that never came lose their place).
    pub expires: Option<Instant>,
}

impl Promise {
    pub fn total(&self) -> Resources {
        self.pods
            .values()
            .fold(Resources::default(), |a, p| a + p.requests)
    }
}

/// The whole view. Cheap lookups by node name for the extender's hot path.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub nodes: HashMap<Arc<str>, NodeFacts>,
    /// node name → promise held on it.
    pub promises: HashMap<Arc<str>, Promise>,
    /// pod key → the node promised to it (the inverse of `promises`).
    pub promised_node: HashMap<String, Arc<str>>,
    /// pod key → the NodeClaim launching its node, while that node has not registered yet.
    pub awaiting_claim: HashMap<String, Arc<str>>,
}

impl ClusterView {
    /// Promise room on `node` to pod `pod_key` (its requests, and its labels and rules when known),
    /// replacing an earlier promise for that pod.
    pub fn promise(
        &mut self,
        node: &str,
        pod_key: &str,
        pod: impl Into<PromisedPod>,
        claim: Option<Arc<str>>,
        expires: Option<Instant>,
    ) {
        self.release(pod_key);
        let node: Arc<str> = self
            .nodes
            .get_key_value(node)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| Arc::from(node));
        let entry = self.promises.entry(node.clone()).or_default();
        entry.pods.insert(pod_key.to_owned(), Arc::new(pod.into()));
        if claim.is_some() {
            entry.claim = claim;
        }
        entry.expires = match (entry.expires, expires) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (_, e) => e,
        };
        self.promised_node.insert(pod_key.to_owned(), node);
    }

    /// Record that `pod_key` waits for the node of `claim` (launched, not registered yet).
    pub fn await_claim(&mut self, pod_key: &str, claim: Arc<str>) {
        self.awaiting_claim.insert(pod_key.to_owned(), claim);
    }

    /// What a pod waits for, if anything: the node promised to it, or the claim launching it.
    pub fn reserved_for(&self, pod_key: &str) -> Option<&str> {
        self.promised_node
            .get(pod_key)
            .or_else(|| self.awaiting_claim.get(pod_key))
            .map(|s| &**s)
    }

    /// Drop the promise held for a pod (it was bound, deleted, or replanned).
    pub fn release(&mut self, pod_key: &str) {
        self.awaiting_claim.remove(pod_key);
        if let Some(node) = self.promised_node.remove(pod_key)
            && let Some(p) = self.promises.get_mut(&node)
        {
            p.pods.remove(pod_key);
            if p.pods.is_empty() {
                self.promises.remove(&node);
            }
        }
    }

    /// Drop promises whose time is up.
    pub fn expire(&mut self, now: Instant) -> usize {
        let expired: Vec<Arc<str>> = self
            .promises
            .iter()
            .filter(|(_, p)| p.expires.is_some_and(|e| e <= now))
            .map(|(n, _)| n.clone())
            .collect();
        let mut dropped = 0;
        for node in expired {
            if let Some(p) = self.promises.remove(&node) {
                for pod in p.pods.keys() {
                    self.promised_node.remove(pod);
                    dropped += 1;
                }
            }
        }
        dropped
    }

    /// Pods with a promise anywhere.
    pub fn promised_pods(&self) -> HashSet<&str> {
        self.promised_node.keys().map(String::as_str).collect()
    }
}

/// The facts the extender needs from a Node object.
pub fn node_facts(node: &Node, catalog: &Catalog) -> NodeFacts {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let mut allocatable = Resources::default();
    if let Some(alloc) = node.status.as_ref().and_then(|s| s.allocatable.as_ref()) {
        for (name, q) in alloc {
            // Resources without a slot (hugepages, other extended resources) are not tracked.
            let _ = allocatable.add_named(name, &q.0);
        }
    }
    let taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|ts| {
            ts.iter()
                .filter_map(|t| {
                    let effect = match t.effect.as_str() {
                        "NoSchedule" => TaintEffect::NoSchedule,
                        "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
                        "NoExecute" => TaintEffect::NoExecute,
                        _ => return None,
                    };
                    Some(Taint {
                        key: t.key.clone(),
                        value: t.value.clone(),
                        effect,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let disrupted = taints
        .iter()
        .any(|t| t.key == "karpenter.sh/disrupted" || t.key == "nodewright.io/disrupted");
    let state = if node.metadata.deletion_timestamp.is_some() {
        NodeState::Terminating
    } else if disrupted {
        NodeState::Draining
    } else {
        NodeState::Ready
    };
    let price_per_hour = price_of(&labels, catalog);
    let claim = labels
        .get(crate::model::labels::NODECLAIM)
        .map(|c| Arc::from(c.as_str()));
    NodeFacts {
        labels,
        taints,
        allocatable,
        requested: Resources::default(),
        price_per_hour,
        state,
        claim,
    }
}

/// The price of the node's offering from its well-known labels.
pub fn price_of(node_labels: &BTreeMap<String, String>, catalog: &Catalog) -> Option<f64> {
    let it = catalog.get(node_labels.get(labels::INSTANCE_TYPE)?)?;
    let zone = node_labels.get(labels::ZONE)?;
    let ct = node_labels
        .get(labels::CAPACITY_TYPE)
        .and_then(|c| CapacityType::parse(c))
        .unwrap_or(CapacityType::OnDemand);
    it.offerings
        .iter()
        .find(|o| &o.zone == zone && o.capacity_type == ct)
        .map(|o| o.price)
}
