//! The kube-scheduler extender's wire types (`k8s.io/kube-scheduler/extender/v1`) and its two
//! decisions, filter and prioritize, over the [`ClusterView`]. Pure: no I/O, no locks; the HTTP
//! adapter in `crate::http::extender` decodes with [`ExtenderCall::decode`], takes the view's read
//! lock around [`filter`] / [`prioritize`] only, and encodes with [`encode_filter`] /
//! [`encode_priorities`].
//!
//! Wire rules (WIRE.md §2): PascalCase field names, Go `null` for every nil slice or map, a Pod and
//! NodeList items without apiVersion/kind. Keys of the request are matched case-insensitively as
//! Go's decoder does, so the old lowercase API (`pod`, `nodes`, `nodenames`) is read too. Node
//! objects are kept as raw JSON and returned byte for byte: decoding them into typed structs would
//! drop fields the scheduler later relies on.
//!
//! The request is decoded leanly for speed: the pod's name, namespace and resources only, node
//! names borrowed from the request body.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::model::resources::{self, CPU, MEMORY, Resources};
use crate::scheduling::pod::effective_requests;
use crate::scheduling::view::{ClusterView, NodeFacts, NodeState, Promise};

/// `MaxExtenderPriority`: kube-scheduler multiplies extender scores by weight × 10 without
/// clamping, so a score above this would swamp the in-tree plugins.
pub const MAX_SCORE: i64 = 10;
/// `MinExtenderPriority`.
pub const MIN_SCORE: i64 = 0;

// ---------------------------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------------------------

/// A JSON string, borrowed from the request body unless it contains escapes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Str<'a>(pub Cow<'a, str>);

impl<'a> Str<'a> {
    pub fn borrowed(s: &'a str) -> Self {
        Self(Cow::Borrowed(s))
    }
}

impl Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Serialize for Str<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(PhantomData))
    }
}

/// `v1.NodeList` with its list metadata and items kept as raw JSON.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct NodeList<'a> {
    #[serde(borrow, default)]
    pub metadata: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub items: Option<Vec<&'a RawValue>>,
}

/// `ExtenderArgs`: what kube-scheduler sends to `filter` and `prioritize`. `Pod` is kept raw (it is
/// read leanly, and decoded in full only when it is handed to the provisioner). Keys are matched
/// case-insensitively; unknown keys are ignored.
#[derive(Debug, Default)]
pub struct ExtenderArgs<'a> {
    pub pod: Option<&'a RawValue>,
    pub nodes: Option<NodeList<'a>>,
    pub node_names: Option<Vec<Str<'a>>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for ExtenderArgs<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = ExtenderArgs<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an ExtenderArgs object {\"Pod\", \"Nodes\", \"NodeNames\"}")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut args = ExtenderArgs::default();
                while let Some(key) = map.next_key::<Str<'de>>()? {
                    if key.eq_ignore_ascii_case("pod") {
                        args.pod = map.next_value()?;
                    } else if key.eq_ignore_ascii_case("nodes") {
                        args.nodes = map.next_value()?;
                    } else if key.eq_ignore_ascii_case("nodenames") {
                        args.node_names = map.next_value()?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(args)
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// A `map[string]string` of node name → message, written in the order held (sorted by name when
/// built by [`encode_filter`], as Go writes maps).
#[derive(Debug, Default, PartialEq)]
pub struct NodeMessages<'a>(pub Vec<(Str<'a>, Str<'a>)>);

impl Serialize for NodeMessages<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for NodeMessages<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = NodeMessages<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of node name to message")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(NodeMessages(out))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// `ExtenderFilterResult`. Every field is always written (Go has no `omitempty` here), nil as
/// `null`; `Error` is `""` when there is none.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ExtenderFilterResult<'a> {
    #[serde(rename = "Nodes", alias = "nodes", borrow, default)]
    pub nodes: Option<NodeList<'a>>,
    #[serde(
        rename = "NodeNames",
        alias = "nodenames",
        alias = "nodeNames",
        borrow,
        default
    )]
    pub node_names: Option<Vec<Str<'a>>>,
    #[serde(
        rename = "FailedNodes",
        alias = "failedNodes",
        alias = "failednodes",
        borrow,
        default
    )]
    pub failed_nodes: Option<NodeMessages<'a>>,
    #[serde(
        rename = "FailedAndUnresolvableNodes",
        alias = "failedAndUnresolvableNodes",
        alias = "failedandunresolvablenodes",
        borrow,
        default
    )]
    pub failed_and_unresolvable_nodes: Option<NodeMessages<'a>>,
    #[serde(rename = "Error", alias = "error", default)]
    pub error: String,
}

/// One entry of `HostPriorityList` (a bare JSON array of these).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostPriority<'a> {
    #[serde(rename = "Host", alias = "host", borrow)]
    pub host: Str<'a>,
    #[serde(rename = "Score", alias = "score")]
    pub score: i64,
}

// ---------------------------------------------------------------------------------------------
// Lean reading of the pod and the nodes
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default)]
struct LeanPod<'a> {
    #[serde(borrow)]
    metadata: Option<LeanPodMeta<'a>>,
    spec: Option<LeanPodSpec>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct LeanPodMeta<'a> {
    #[serde(borrow)]
    name: Option<Str<'a>>,
    #[serde(borrow)]
    generate_name: Option<Str<'a>>,
    #[serde(borrow)]
    namespace: Option<Str<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct LeanPodSpec {
    containers: Option<Vec<LeanContainer>>,
    init_containers: Option<Vec<LeanContainer>>,
    overhead: Option<BTreeMap<String, Quantity>>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct LeanContainer {
    resources: Option<LeanResources>,
    restart_policy: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LeanResources {
    requests: Option<BTreeMap<String, Quantity>>,
    limits: Option<BTreeMap<String, Quantity>>,
}

/// Only the slots nodewright tracks: other extended resources and hugepages are the in-tree
/// NodeResourcesFit plugin's business, not a reason to fail the call.
fn tracked(list: Option<BTreeMap<String, Quantity>>) -> Option<BTreeMap<String, Quantity>> {
    list.map(|mut m| {
        m.retain(|name, _| resources::NAMES.contains(&name.as_str()));
        m
    })
}

impl LeanContainer {
    fn into_container(self) -> Container {
        let resources = self.resources.map(|r| ResourceRequirements {
            requests: tracked(r.requests),
            limits: tracked(r.limits),
            claims: None,
        });
        Container {
            resources,
            restart_policy: self.restart_policy,
            ..Container::default()
        }
    }
}

/// The pod being scheduled, as far as the extender needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodRequest {
    /// `namespace/name`, the key promises are held under.
    pub key: String,
    /// Effective requests the Kubernetes way (init containers, sidecars, overhead; `pods` = 1).
    pub requests: Resources,
}

impl PodRequest {
    /// Reads a pod's name, namespace and requests from its JSON, skipping everything else.
    pub fn from_json(json: &str) -> Result<Self, String> {
        let pod: LeanPod<'_> =
            serde_json::from_str(json).map_err(|e| format!("Pod cannot be read: {e}"))?;
        let meta = pod.metadata.unwrap_or_default();
        let namespace = meta.namespace.as_deref().unwrap_or("default");
        let name = meta
            .name
            .as_deref()
            .or(meta.generate_name.as_deref())
            .unwrap_or_default();
        let key = format!("{namespace}/{name}");
        let spec = pod.spec.unwrap_or_default();
        let containers: Vec<Container> = spec
            .containers
            .unwrap_or_default()
            .into_iter()
            .map(LeanContainer::into_container)
            .collect();
        let init: Vec<Container> = spec
            .init_containers
            .unwrap_or_default()
            .into_iter()
            .map(LeanContainer::into_container)
            .collect();
        let overhead = tracked(spec.overhead);
        let requests = effective_requests(&containers, &init, overhead.as_ref())
            .map_err(|e| format!("requests of pod {key}: {e}"))?;
        Ok(Self { key, requests })
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LeanNode<'a> {
    #[serde(borrow)]
    metadata: Option<LeanNodeMeta<'a>>,
    #[serde(borrow)]
    status: Option<LeanNodeStatus<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LeanNodeMeta<'a> {
    #[serde(borrow)]
    name: Option<Str<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LeanNodeStatus<'a> {
    #[serde(borrow)]
    allocatable: Option<&'a RawValue>,
}

/// One item of the request's NodeList: the raw object (returned as is), its name, and its
/// `status.allocatable`, read only when the node is not in the view.
#[derive(Debug)]
pub struct NodeItem<'a> {
    pub raw: &'a RawValue,
    pub name: Str<'a>,
    pub allocatable: Option<&'a RawValue>,
}

/// A node the scheduler asks about: a bare name, or a full Node object.
pub trait Candidate {
    fn name(&self) -> &str;
    /// Allocatable from the object itself, when one was sent.
    fn allocatable(&self) -> Option<Resources>;
}

impl Candidate for Str<'_> {
    fn name(&self) -> &str {
        self
    }
    fn allocatable(&self) -> Option<Resources> {
        None
    }
}

impl Candidate for NodeItem<'_> {
    fn name(&self) -> &str {
        &self.name
    }
    fn allocatable(&self) -> Option<Resources> {
        let list: BTreeMap<Str<'_>, Str<'_>> =
            serde_json::from_str(self.allocatable?.get()).ok()?;
        let mut r = Resources::ZERO;
        for (name, quantity) in &list {
            // Resources nodewright does not track (hugepages, other devices) are not compared.
            let _ = r.add_named(name, quantity);
        }
        Some(r)
    }
}

/// How the nodes came: names only (`nodeCacheCapable: true`) or full objects.
#[derive(Debug)]
pub enum NodesIn<'a> {
    Names(Vec<Str<'a>>),
    Objects {
        metadata: Option<&'a RawValue>,
        items: Vec<NodeItem<'a>>,
    },
}

/// A decoded extender call, borrowing from the request body.
#[derive(Debug)]
pub struct ExtenderCall<'a> {
    pub pod: PodRequest,
    /// The pod's JSON as sent, for [`ExtenderCall::full_pod`].
    pub pod_json: &'a RawValue,
    pub nodes: NodesIn<'a>,
}

impl<'a> ExtenderCall<'a> {
    /// Decodes `ExtenderArgs`. `NodeNames` wins when both lists are sent (kube-scheduler sends one).
    /// The error is a message for the caller.
    pub fn decode(body: &'a [u8]) -> Result<Self, String> {
        let args: ExtenderArgs<'a> = serde_json::from_slice(body)
            .map_err(|e| format!("request body is not ExtenderArgs JSON: {e}"))?;
        let pod_json = args
            .pod
            .ok_or_else(|| "ExtenderArgs has no Pod".to_owned())?;
        let pod = PodRequest::from_json(pod_json.get())?;
        let nodes = match (args.node_names, args.nodes) {
            (Some(names), _) => NodesIn::Names(names),
            (None, Some(list)) => {
                let raws = list.items.unwrap_or_default();
                let mut items = Vec::with_capacity(raws.len());
                for (i, raw) in raws.into_iter().enumerate() {
                    let node: LeanNode<'a> = serde_json::from_str(raw.get())
                        .map_err(|e| format!("Nodes.items[{i}] cannot be read: {e}"))?;
                    items.push(NodeItem {
                        raw,
                        name: node
                            .metadata
                            .and_then(|m| m.name)
                            .unwrap_or(Str::borrowed("")),
                        allocatable: node.status.and_then(|s| s.allocatable),
                    });
                }
                NodesIn::Objects {
                    metadata: list.metadata,
                    items,
                }
            }
            (None, None) => {
                return Err("ExtenderArgs has neither NodeNames nor Nodes".to_owned());
            }
        };
        Ok(Self {
            pod,
            pod_json,
            nodes,
        })
    }

    /// The whole Pod, for the provisioner. Slower than the lean read; only for the rare hand-off.
    pub fn full_pod(&self) -> Result<Pod, serde_json::Error> {
        serde_json::from_str(self.pod_json.get())
    }

    /// Number of nodes asked about.
    pub fn len(&self) -> usize {
        match &self.nodes {
            NodesIn::Names(n) => n.len(),
            NodesIn::Objects { items, .. } => items.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs [`filter`] over the nodes, however they came.
    pub fn filter(&self, view: &ClusterView, now: Instant) -> FilterDecision {
        match &self.nodes {
            NodesIn::Names(n) => filter(view, &self.pod, n, now),
            NodesIn::Objects { items, .. } => filter(view, &self.pod, items, now),
        }
    }

    /// Runs [`prioritize`] over the nodes, however they came.
    pub fn prioritize(&self, view: &ClusterView, now: Instant) -> Vec<i64> {
        match &self.nodes {
            NodesIn::Names(n) => prioritize(view, &self.pod, n, now),
            NodesIn::Objects { items, .. } => prioritize(view, &self.pod, items, now),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------------------------

/// Why a node is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Capacity on the node is promised to other pods: resolvable (`FailedNodes`), since the
    /// promise may be released or expire, and preemption may help.
    Reserved(String),
    /// nodewright is draining or terminating the node. Listed in BOTH `FailedNodes` and
    /// `FailedAndUnresolvableNodes`: kube-scheduler lets the unresolvable map win, so preemption
    /// never evicts pods to make room on a node that is going away, while `FailedNodes` keeps the
    /// reason visible to tools that only read that map.
    Closing(&'static str),
}

/// The filter's answer, by index into the nodes asked about (in their order).
#[derive(Debug, Default, PartialEq)]
pub struct FilterDecision {
    pub passing: Vec<usize>,
    pub refused: Vec<(usize, Refusal)>,
}

/// The promises in force at `now`, looked up by node name. When a call asks about many more
/// nodes than hold promises (the usual case), the live ones are first copied into a small
/// index (lookups in it miss fast, and expired promises are skipped once, not per node).
enum LivePromises<'v> {
    View(&'v ClusterView, Instant),
    Index(HashMap<&'v str, &'v Promise, foldhash::fast::RandomState>),
}

impl<'v> LivePromises<'v> {
    fn new(view: &'v ClusterView, now: Instant, asked: usize) -> Self {
        if view.promises.len().saturating_mul(4) > asked {
            return Self::View(view, now);
        }
        let mut index = HashMap::with_capacity_and_hasher(view.promises.len(), Default::default());
        for (node, promise) in &view.promises {
            if is_live(promise, now) {
                index.insert(&**node, promise);
            }
        }
        Self::Index(index)
    }

    #[inline]
    fn get(&self, node: &str) -> Option<&'v Promise> {
        match self {
            Self::View(view, now) => view.promises.get(node).filter(|p| is_live(p, *now)),
            Self::Index(index) if index.is_empty() => None,
            Self::Index(index) => index.get(node).copied(),
        }
    }
}

fn is_live(promise: &Promise, now: Instant) -> bool {
    promise.expires.is_none_or(|e| e > now)
}

fn closing_message(state: NodeState) -> Option<&'static str> {
    match state {
        NodeState::Ready => None,
        NodeState::Draining => Some("node is being drained by nodewright"),
        NodeState::Terminating => Some("node is being terminated by nodewright"),
    }
}

/// Allocatable and requested of a node: from the view, else from the object sent (nothing
/// requested), else unknown.
fn capacity(
    facts: Option<&NodeFacts>,
    node: &impl Candidate,
) -> Option<(Resources, Resources, Option<f64>)> {
    match facts {
        Some(f) => Some((f.allocatable, f.requested, f.price_per_hour)),
        None => node.allocatable().map(|a| (a, Resources::ZERO, None)),
    }
}

/// The filter verdict on one node for `pod`:
/// 1. a node nodewright drains or terminates is refused as [`Refusal::Closing`];
/// 2. a node holding a live promise for other pods passes only if its free capacity minus the
///    promise still holds the pod, else [`Refusal::Reserved`]; a node launched for a NodeClaim's
///    pods is refused outright to a pod that waits for a node of its own;
/// 3. the node promised to the pod itself passes (other nodes are judged as usual).
///
/// Nodes nodewright knows nothing about (not in the view and sent by name only) pass: the
/// scheduler has already checked them, and a promise on such a node cannot be weighed without
/// its capacity.
pub fn judge(
    view: &ClusterView,
    pod: &PodRequest,
    node: &impl Candidate,
    now: Instant,
) -> Result<(), Refusal> {
    judge_with(view, &LivePromises::View(view, now), pod, node)
}

fn judge_with(
    view: &ClusterView,
    promises: &LivePromises<'_>,
    pod: &PodRequest,
    node: &impl Candidate,
) -> Result<(), Refusal> {
    let name = node.name();
    let facts = view.nodes.get(name);
    if let Some(message) = facts.and_then(|f| closing_message(f.state)) {
        return Err(Refusal::Closing(message));
    }
    // A pod with a node of its own coming (or promised) stays off the nodes nodewright launched
    // for other claims, even once their own pods are bound: otherwise, with the batch's nodes
    // registering one by one, zone spread sees only the zones registered so far and piles pods
    // onto the first node.
    if let (Some(node_claim), Some(theirs)) = (
        facts.and_then(|f| f.claim.as_deref()),
        view.reserved_for(&pod.key),
    ) && theirs != node_claim
        && theirs != name
    {
        return Err(Refusal::Reserved(format!(
            "node launched by nodewright for nodeclaim {node_claim}; this pod waits for its own ({theirs})"
        )));
    }
    let Some(promise) = promises.get(name) else {
        return Ok(());
    };
    if promise.pods.contains_key(&pod.key) {
        return Ok(());
    }
    // A new node launched for a claim's pods is not for pods that have their own node coming
    // (or promised elsewhere): without this, the first node of a batch to register would take
    // every pod of the batch, whatever zone spread the plan was made for.
    if let Some(claim) = &promise.claim
        && let Some(theirs) = view.reserved_for(&pod.key)
    {
        return Err(Refusal::Reserved(format!(
            "node launched by nodewright for {} pending pod(s) of nodeclaim {claim}; this pod waits for its own ({theirs})",
            promise.pods.len()
        )));
    }
    let Some((allocatable, requested, _)) = capacity(facts, node) else {
        return Ok(());
    };
    let left = allocatable
        .saturating_sub(&requested)
        .saturating_sub(&promise.total());
    match pod.requests.first_excess(&left) {
        None => Ok(()),
        Some(slot) => Err(Refusal::Reserved(reserved_message(
            promise,
            slot,
            &left,
            &pod.requests,
        ))),
    }
}

fn reserved_message(
    promise: &Promise,
    slot: usize,
    left: &Resources,
    wanted: &Resources,
) -> String {
    let n = promise.pods.len();
    let whose = match &promise.claim {
        Some(claim) => format!("{n} pending pod(s) of nodeclaim {claim}"),
        None => format!("{n} pending pod(s)"),
    };
    format!(
        "capacity reserved by nodewright for {whose}: {} {} left after the reservation, the pod requests {}",
        resources::format_slot(slot, left.get(slot)),
        resources::NAMES[slot],
        resources::format_slot(slot, wanted.get(slot)),
    )
}

/// The filter over all nodes asked about, in their order.
pub fn filter<C: Candidate>(
    view: &ClusterView,
    pod: &PodRequest,
    nodes: &[C],
    now: Instant,
) -> FilterDecision {
    let mut decision = FilterDecision {
        passing: Vec::with_capacity(nodes.len()),
        refused: Vec::new(),
    };
    let promises = LivePromises::new(view, now, nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        match judge_with(view, &promises, pod, node) {
            Ok(()) => decision.passing.push(i),
            Err(refusal) => decision.refused.push((i, refusal)),
        }
    }
    decision
}

/// Normalised size of a node for price comparison: cores + GiB / 4.
fn units(allocatable: &Resources) -> f64 {
    allocatable.cpu_millis() as f64 / 1000.0
        + allocatable.memory_bytes() as f64 / (4u64 << 30) as f64
}

/// Dominant share of cpu and memory that `used` takes of `allocatable`, in 0..=1.
fn dominant_share(used: &Resources, allocatable: &Resources) -> f64 {
    [CPU, MEMORY]
        .into_iter()
        .filter(|&s| allocatable.get(s) > 0)
        .map(|s| used.get(s) as f64 / allocatable.get(s) as f64)
        .fold(0.0, f64::max)
        .clamp(0.0, 1.0)
}

/// Scores 0..=10 for every node asked about, in their order:
/// - [`MAX_SCORE`] for the node promised to the pod (if it is not being drained or terminated);
/// - 0 for nodes that are unknown, closing, or where the pod does not fit beside what is bound
///   and what is promised to other pods;
/// - 1..=9 for the others: `1 + round(8 × c)` where `c` is the tightest fit (dominant cpu/memory
///   share once the pod is placed) averaged half and half with the price per normalised unit
///   (cores + GiB/4) relative to the cheapest fitting node of this call; nodes without a price
///   use the fit alone. The 1 keeps any fitting node above those that do not fit, and 9 keeps
///   the promised node strictly first.
pub fn prioritize<C: Candidate>(
    view: &ClusterView,
    pod: &PodRequest,
    nodes: &[C],
    now: Instant,
) -> Vec<i64> {
    let mut scores = vec![MIN_SCORE; nodes.len()];
    // (index, fit share, price per unit)
    let mut fitting: Vec<(usize, f64, Option<f64>)> = Vec::with_capacity(nodes.len());
    let promises = LivePromises::new(view, now, nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let name = node.name();
        let facts = view.nodes.get(name);
        if facts.is_some_and(|f| f.state != NodeState::Ready) {
            continue;
        }
        let promise = promises.get(name);
        if promise.is_some_and(|p| p.pods.contains_key(&pod.key)) {
            scores[i] = MAX_SCORE;
            continue;
        }
        let Some((allocatable, requested, price)) = capacity(facts, node) else {
            continue;
        };
        let reserved = promise.map(Promise::total).unwrap_or_default();
        let left = allocatable
            .saturating_sub(&requested)
            .saturating_sub(&reserved);
        if !pod.requests.fits_in(&left) {
            continue;
        }
        let used = requested + reserved + pod.requests;
        let size = units(&allocatable);
        let per_unit = price
            .filter(|p| p.is_finite() && *p >= 0.0 && size > 0.0)
            .map(|p| p / size);
        fitting.push((i, dominant_share(&used, &allocatable), per_unit));
    }
    let cheapest = fitting
        .iter()
        .filter_map(|f| f.2)
        .fold(f64::INFINITY, f64::min);
    for (i, fit, per_unit) in fitting {
        let c = match per_unit {
            Some(p) if p > 0.0 => 0.5 * fit + 0.5 * (cheapest / p),
            Some(_) => 0.5 * fit + 0.5,
            None => fit,
        };
        scores[i] = 1 + (8.0 * c.clamp(0.0, 1.0)).round() as i64;
    }
    scores
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

fn empty_object() -> &'static RawValue {
    serde_json::from_str("{}").expect("{} is JSON")
}

/// Appends `s` as a JSON string, exactly as serde_json writes it. Node names and messages almost
/// never need escaping and are copied as they are: a byte-by-byte escaping pass over 5,000 names
/// costs more than deciding on them.
fn push_str(out: &mut Vec<u8>, s: &str) {
    let plain = s
        .bytes()
        .fold(true, |ok, b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("a string serialises to a Vec");
    }
}

fn push_i64(out: &mut Vec<u8>, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut v = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

fn push_raw(out: &mut Vec<u8>, raw: Option<&RawValue>) {
    out.extend_from_slice(raw.map_or("null", RawValue::get).as_bytes());
}

fn push_messages(out: &mut Vec<u8>, messages: Option<&NodeMessages<'_>>) {
    let Some(NodeMessages(entries)) = messages else {
        out.extend_from_slice(b"null");
        return;
    };
    out.push(b'{');
    for (i, (node, message)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_str(out, node);
        out.push(b':');
        push_str(out, message);
    }
    out.push(b'}');
}

impl ExtenderFilterResult<'_> {
    /// The same bytes as `serde_json::to_vec(self)`, written without serde's per-byte escaping.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"Nodes\":");
        match &self.nodes {
            None => out.extend_from_slice(b"null"),
            Some(list) => {
                out.extend_from_slice(b"{\"metadata\":");
                push_raw(out, list.metadata);
                out.extend_from_slice(b",\"items\":");
                match &list.items {
                    None => out.extend_from_slice(b"null"),
                    Some(items) => {
                        out.push(b'[');
                        for (i, item) in items.iter().enumerate() {
                            if i > 0 {
                                out.push(b',');
                            }
                            push_raw(out, Some(item));
                        }
                        out.push(b']');
                    }
                }
                out.push(b'}');
            }
        }
        out.extend_from_slice(b",\"NodeNames\":");
        match &self.node_names {
            None => out.extend_from_slice(b"null"),
            Some(names) => {
                out.push(b'[');
                for (i, name) in names.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    push_str(out, name);
                }
                out.push(b']');
            }
        }
        out.extend_from_slice(b",\"FailedNodes\":");
        push_messages(out, self.failed_nodes.as_ref());
        out.extend_from_slice(b",\"FailedAndUnresolvableNodes\":");
        push_messages(out, self.failed_and_unresolvable_nodes.as_ref());
        out.extend_from_slice(b",\"Error\":");
        push_str(out, &self.error);
        out.push(b'}');
    }

    /// [`ExtenderFilterResult::write_json`] into a new buffer.
    pub fn to_json(&self) -> Vec<u8> {
        let names: usize = self.node_names.iter().flatten().map(|n| n.len() + 3).sum();
        let items: usize = self
            .nodes
            .iter()
            .flat_map(|l| l.items.iter().flatten())
            .map(|i| i.get().len() + 1)
            .sum();
        let messages: usize = [&self.failed_nodes, &self.failed_and_unresolvable_nodes]
            .into_iter()
            .flatten()
            .flat_map(|m| &m.0)
            .map(|(n, m)| n.len() + m.len() + 6)
            .sum();
        let mut out = Vec::with_capacity(128 + names + items + messages + self.error.len());
        self.write_json(&mut out);
        out
    }
}

/// The filter's `ExtenderFilterResult`, answering in the form the nodes came in: `NodeNames` (a
/// subset of the input, in its order) with `Nodes: null`, or `Nodes` holding the passing objects
/// exactly as sent with `NodeNames: null`. `FailedNodes` is always an object,
/// `FailedAndUnresolvableNodes` `null` when empty.
pub fn filter_result<'c>(
    call: &'c ExtenderCall<'_>,
    decision: &'c FilterDecision,
) -> ExtenderFilterResult<'c> {
    let name_of = |i: usize| -> &'c str {
        match &call.nodes {
            NodesIn::Names(n) => &n[i],
            NodesIn::Objects { items, .. } => &items[i].name,
        }
    };
    let mut failed = Vec::with_capacity(decision.refused.len());
    let mut unresolvable = Vec::new();
    for (i, refusal) in &decision.refused {
        let name = Str::borrowed(name_of(*i));
        match refusal {
            Refusal::Reserved(m) => failed.push((name, Str::borrowed(m))),
            Refusal::Closing(m) => {
                failed.push((name.clone(), Str::borrowed(m)));
                unresolvable.push((name, Str::borrowed(m)));
            }
        }
    }
    failed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    unresolvable.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let (nodes, node_names) = match &call.nodes {
        NodesIn::Names(n) => (
            None,
            Some(
                decision
                    .passing
                    .iter()
                    .map(|&i| Str::borrowed(&n[i]))
                    .collect(),
            ),
        ),
        NodesIn::Objects { metadata, items } => (
            Some(NodeList {
                metadata: Some(match metadata {
                    Some(m) => m,
                    None => empty_object(),
                }),
                items: Some(decision.passing.iter().map(|&i| items[i].raw).collect()),
            }),
            None,
        ),
    };
    ExtenderFilterResult {
        nodes,
        node_names,
        failed_nodes: Some(NodeMessages(failed)),
        failed_and_unresolvable_nodes: (!unresolvable.is_empty())
            .then_some(NodeMessages(unresolvable)),
        error: String::new(),
    }
}

/// [`filter_result`] as JSON bytes.
pub fn encode_filter(call: &ExtenderCall<'_>, decision: &FilterDecision) -> Vec<u8> {
    filter_result(call, decision).to_json()
}

/// An `ExtenderFilterResult` carrying only an error (every other field `null`).
pub fn encode_filter_error(message: &str) -> Vec<u8> {
    ExtenderFilterResult {
        error: message.to_owned(),
        ..ExtenderFilterResult::default()
    }
    .to_json()
}

/// Writes a `HostPriorityList`: the same bytes as serde_json gives for `[HostPriority]`.
pub fn write_priorities<'h>(out: &mut Vec<u8>, list: impl IntoIterator<Item = (&'h str, i64)>) {
    out.push(b'[');
    for (i, (host, score)) in list.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"Host\":");
        push_str(out, host);
        out.extend_from_slice(b",\"Score\":");
        push_i64(out, score);
        out.push(b'}');
    }
    out.push(b']');
}

/// The `HostPriorityList` for `scores` (one per node asked about, in order).
pub fn encode_priorities(call: &ExtenderCall<'_>, scores: &[i64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + scores.len() * 24);
    match &call.nodes {
        NodesIn::Names(n) => {
            out.reserve(n.iter().map(|h| h.len()).sum());
            write_priorities(&mut out, n.iter().map(|h| &**h).zip(scores.iter().copied()));
        }
        NodesIn::Objects { items, .. } => write_priorities(
            &mut out,
            items.iter().map(|i| &*i.name).zip(scores.iter().copied()),
        ),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resources::PODS;
    use std::sync::Arc;
    use std::time::Duration;

    const GI: i64 = 1 << 30;

    fn res(cpu_millis: i64, mem_gi: i64, pods: i64) -> Resources {
        let mut r = Resources::ZERO;
        r.0[CPU] = cpu_millis;
        r.0[MEMORY] = mem_gi * GI;
        r.0[PODS] = pods;
        r
    }

    fn node(alloc: Resources, requested: Resources, price: Option<f64>) -> NodeFacts {
        NodeFacts {
            allocatable: alloc,
            requested,
            price_per_hour: price,
            ..NodeFacts::default()
        }
    }

    fn pod(key: &str, cpu: i64, mem_gi: i64) -> PodRequest {
        PodRequest {
            key: key.into(),
            requests: res(cpu, mem_gi, 1),
        }
    }

    fn names(list: &[&'static str]) -> Vec<Str<'static>> {
        list.iter().map(|n| Str::borrowed(n)).collect()
    }

    #[test]
    fn pod_requests_are_read_leanly_the_kubernetes_way() {
        let json = r#"{"metadata":{"name":"web-1","namespace":"shop","labels":{"a":"b"}},
            "spec":{"containers":[{"name":"a","image":"x","env":[{"name":"E","value":"v"}],
              "resources":{"requests":{"cpu":"250m","memory":"256Mi","example.com/fpga":"1"}}},
              {"name":"b","resources":{"limits":{"cpu":"1"}}}],
            "initContainers":[{"name":"i","resources":{"requests":{"cpu":"2"}}}],
            "overhead":{"cpu":"10m"}},"status":{}}"#;
        let p = PodRequest::from_json(json).unwrap();
        assert_eq!(p.key, "shop/web-1");
        assert_eq!(p.requests.0[CPU], 2000 + 10);
        assert_eq!(p.requests.0[MEMORY], 256 << 20);
        assert_eq!(p.requests.0[PODS], 1);
        let bare = PodRequest::from_json(r#"{"metadata":{"name":"p"},"spec":{"containers":null}}"#)
            .unwrap();
        assert_eq!(bare.key, "default/p");
        assert_eq!(bare.requests, res(0, 0, 1));
    }

    #[test]
    fn args_keys_are_matched_case_insensitively_and_unknown_ones_ignored() {
        let body =
            br#"{"pod":{"metadata":{"name":"p","namespace":"n"}},"NODENAMES":["a","b"],"Extra":1}"#;
        let call = ExtenderCall::decode(body).unwrap();
        assert_eq!(call.pod.key, "n/p");
        assert!(matches!(&call.nodes, NodesIn::Names(n) if n.len() == 2 && &*n[1] == "b"));
        assert!(matches!(&call.nodes, NodesIn::Names(n) if matches!(n[0].0, Cow::Borrowed(_))));
    }

    #[test]
    fn promise_for_other_pods_refuses_only_when_the_rest_does_not_fit() {
        let mut view = ClusterView::default();
        view.nodes.insert(
            Arc::from("n1"),
            node(res(4000, 16, 110), res(1000, 2, 3), None),
        );
        view.promise(
            "n1",
            "ns/other",
            res(2000, 4, 1),
            Some(Arc::from("claim-a")),
            None,
        );
        let now = Instant::now();
        let nodes = names(&["n1"]);
        let small = filter(&view, &pod("ns/p", 1000, 1), &nodes, now);
        assert_eq!(small.passing, vec![0]);
        let big = filter(&view, &pod("ns/p", 1500, 1), &nodes, now);
        let [(0, Refusal::Reserved(m))] = big.refused.as_slice() else {
            panic!("{big:?}")
        };
        assert!(m.contains("1 pending pod(s) of nodeclaim claim-a"), "{m}");
        assert!(m.contains("1 cpu left"), "{m}");
        // The promised pod itself passes even when it would not fit beside its own promise.
        let own = filter(&view, &pod("ns/other", 2000, 4), &nodes, now);
        assert_eq!(own.passing, vec![0]);
    }

    #[test]
    fn expired_promises_are_ignored() {
        let mut view = ClusterView::default();
        view.nodes.insert(
            Arc::from("n1"),
            node(res(2000, 4, 110), Resources::ZERO, None),
        );
        let now = Instant::now();
        view.promise("n1", "ns/x", res(2000, 4, 1), None, Some(now));
        let d = filter(&view, &pod("ns/p", 1000, 1), &names(&["n1"]), now);
        assert_eq!(d.passing, vec![0]);
        view.promise(
            "n1",
            "ns/x",
            res(2000, 4, 1),
            None,
            Some(now + Duration::from_secs(60)),
        );
        let d = filter(&view, &pod("ns/p", 1000, 1), &names(&["n1"]), now);
        assert!(d.passing.is_empty());
    }

    #[test]
    fn closing_nodes_are_refused_even_for_their_own_pods() {
        let mut view = ClusterView::default();
        for (name, state) in [("d", NodeState::Draining), ("t", NodeState::Terminating)] {
            view.nodes.insert(
                Arc::from(name),
                NodeFacts {
                    state,
                    ..node(res(4000, 8, 110), Resources::ZERO, None)
                },
            );
        }
        view.promise("t", "ns/p", res(100, 1, 1), None, None);
        let d = filter(
            &view,
            &pod("ns/p", 100, 1),
            &names(&["d", "t", "unknown"]),
            Instant::now(),
        );
        assert_eq!(d.passing, vec![2]);
        assert_eq!(
            d.refused,
            vec![
                (0, Refusal::Closing("node is being drained by nodewright")),
                (
                    1,
                    Refusal::Closing("node is being terminated by nodewright")
                ),
            ]
        );
    }

    #[test]
    fn scores_prefer_promise_then_tight_and_cheap_fits() {
        let mut view = ClusterView::default();
        // Equal size and price; "tight" is fuller.
        view.nodes.insert(
            Arc::from("loose"),
            node(res(8000, 32, 110), res(0, 0, 0), None),
        );
        view.nodes.insert(
            Arc::from("tight"),
            node(res(8000, 32, 110), res(6000, 8, 5), None),
        );
        view.nodes.insert(
            Arc::from("full"),
            node(res(8000, 32, 110), res(7800, 8, 5), None),
        );
        view.nodes.insert(
            Arc::from("mine"),
            node(res(8000, 32, 110), res(7900, 31, 5), None),
        );
        view.promise("mine", "ns/p", res(1000, 1, 1), None, None);
        let scores = prioritize(
            &view,
            &pod("ns/p", 1000, 1),
            &names(&["loose", "tight", "full", "mine", "nobody"]),
            Instant::now(),
        );
        assert_eq!(scores[3], MAX_SCORE);
        assert_eq!(scores[2], 0);
        assert_eq!(scores[4], 0);
        assert!(scores[1] > scores[0], "{scores:?}");
        assert!(scores.iter().all(|s| (MIN_SCORE..=MAX_SCORE).contains(s)));

        let mut view = ClusterView::default();
        view.nodes.insert(
            Arc::from("cheap"),
            node(res(4000, 16, 110), Resources::ZERO, Some(0.10)),
        );
        view.nodes.insert(
            Arc::from("dear"),
            node(res(4000, 16, 110), Resources::ZERO, Some(0.40)),
        );
        let scores = prioritize(
            &view,
            &pod("ns/p", 500, 1),
            &names(&["cheap", "dear"]),
            Instant::now(),
        );
        assert!(scores[0] > scores[1], "{scores:?}");
    }

    #[test]
    fn filter_result_keeps_order_and_lists_closing_nodes_in_both_maps() {
        let mut view = ClusterView::default();
        view.nodes.insert(
            Arc::from("b"),
            NodeFacts {
                state: NodeState::Terminating,
                ..NodeFacts::default()
            },
        );
        let body = br#"{"Pod":{"metadata":{"name":"p"}},"NodeNames":["c","b","a"]}"#;
        let call = ExtenderCall::decode(body).unwrap();
        let decision = call.filter(&view, Instant::now());
        let json = String::from_utf8(encode_filter(&call, &decision)).unwrap();
        assert_eq!(
            json,
            r#"{"Nodes":null,"NodeNames":["c","a"],"FailedNodes":{"b":"node is being terminated by nodewright"},"FailedAndUnresolvableNodes":{"b":"node is being terminated by nodewright"},"Error":""}"#
        );
    }

    #[test]
    fn hand_written_json_matches_serde_json_byte_for_byte() {
        let golden = r#"{"Nodes":{"metadata":{},"items":[{"metadata":{"name":"nodename"},"spec":{}}]},"NodeNames":["node1"],"FailedNodes":{"foo":"bar"},"FailedAndUnresolvableNodes":{"baz":"qux"},"Error":"myerror"}"#;
        let tricky = "quote \" backslash \\ tab \t nul \u{0} del \u{7f} é ✓";
        let results = [
            serde_json::from_str::<ExtenderFilterResult<'_>>(golden).unwrap(),
            ExtenderFilterResult::default(),
            ExtenderFilterResult {
                nodes: Some(NodeList::default()),
                node_names: Some(vec![Str::borrowed(tricky), Str::borrowed("")]),
                failed_nodes: Some(NodeMessages(vec![(
                    Str::borrowed("a\nb"),
                    Str::borrowed(tricky),
                )])),
                failed_and_unresolvable_nodes: Some(NodeMessages::default()),
                error: tricky.to_owned(),
            },
        ];
        for r in &results {
            assert_eq!(
                String::from_utf8(r.to_json()).unwrap(),
                serde_json::to_string(r).unwrap()
            );
        }
        let list = [(tricky, 0), ("n", 10), ("m", -7), ("big", i64::MIN)];
        let mut ours = Vec::new();
        write_priorities(&mut ours, list.iter().copied());
        let theirs: Vec<HostPriority<'_>> = list
            .iter()
            .map(|&(h, score)| HostPriority {
                host: Str::borrowed(h),
                score,
            })
            .collect();
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            serde_json::to_string(&theirs).unwrap()
        );
    }

    #[test]
    fn the_promise_index_agrees_with_the_view() {
        // Many nodes, few promises: the filter takes the indexed path; judge() reads the view.
        let mut view = ClusterView::default();
        let now = Instant::now();
        let names: Vec<String> = (0..64).map(|i| format!("node-{i}")).collect();
        for (i, n) in names.iter().enumerate() {
            view.nodes.insert(
                Arc::from(n.as_str()),
                node(res(2000, 8, 110), res(500 * (i as i64 % 4), 1, 1), None),
            );
        }
        view.promise("node-3", "ns/a", res(1000, 1, 1), None, None);
        view.promise("node-9", "ns/b", res(100, 1, 1), None, Some(now));
        view.promise("node-12", "ns/p", res(1000, 1, 1), None, None);
        let nodes: Vec<Str<'_>> = names.iter().map(|n| Str::borrowed(n)).collect();
        let p = pod("ns/p", 1000, 1);
        assert!(matches!(
            LivePromises::new(&view, now, nodes.len()),
            LivePromises::Index(_)
        ));
        let d = filter(&view, &p, &nodes, now);
        let expected: Vec<usize> = (0..nodes.len())
            .filter(|&i| judge(&view, &p, &nodes[i], now).is_ok())
            .collect();
        assert_eq!(d.passing, expected);
        assert!(
            !d.passing.contains(&3),
            "node-3: 1.5 cpu bound + 1 promised leaves too little"
        );
        assert!(d.passing.contains(&9), "expired promise ignored");
        let scores = prioritize(&view, &p, &nodes, now);
        assert_eq!(scores[12], MAX_SCORE);
        assert_eq!(scores[3], 0);
    }

    #[test]
    fn a_pod_waiting_for_its_own_node_stays_off_another_claims_node() {
        let mut view = ClusterView::default();
        view.nodes.insert(
            Arc::from("new-a"),
            node(res(8000, 32, 110), Resources::ZERO, None),
        );
        view.promise(
            "new-a",
            "ns/a",
            res(1000, 1, 1),
            Some(Arc::from("claim-a")),
            None,
        );
        view.await_claim("ns/b", Arc::from("claim-b"));
        let nodes = names(&["new-a"]);
        let now = Instant::now();
        let d = filter(&view, &pod("ns/b", 1000, 1), &nodes, now);
        let [(0, Refusal::Reserved(m))] = d.refused.as_slice() else {
            panic!("{d:?}")
        };
        assert!(m.contains("waits for its own (claim-b)"), "{m}");
        // A pod with nothing of its own coming may use the room left.
        assert_eq!(
            filter(&view, &pod("ns/c", 1000, 1), &nodes, now).passing,
            vec![0]
        );
    }

    #[test]
    fn a_launched_node_stays_closed_to_other_claims_pods_after_its_own_are_bound() {
        let mut view = ClusterView::default();
        let mut launched = node(res(8000, 32, 110), Resources::ZERO, None);
        launched.claim = Some(Arc::from("claim-a"));
        view.nodes.insert(Arc::from("new-a"), launched);
        view.nodes.insert(
            Arc::from("old"),
            node(res(8000, 32, 110), Resources::ZERO, None),
        );
        // claim-a's pod is bound: no promise is left on new-a.
        view.await_claim("ns/b", Arc::from("claim-b"));
        let nodes = names(&["new-a", "old"]);
        let now = Instant::now();
        let d = filter(&view, &pod("ns/b", 1000, 1), &nodes, now);
        assert_eq!(d.passing, vec![1], "{d:?}");
        let [(0, Refusal::Reserved(m))] = d.refused.as_slice() else {
            panic!("{d:?}")
        };
        assert!(
            m.contains("nodeclaim claim-a") && m.contains("claim-b"),
            "{m}"
        );
        // Its own claim's node, once promised, is open to it.
        view.promise(
            "new-a",
            "ns/b",
            res(1000, 1, 1),
            Some(Arc::from("claim-a")),
            None,
        );
        assert_eq!(
            filter(&view, &pod("ns/b", 1000, 1), &nodes, now).passing,
            vec![0, 1]
        );
        // Pods with nothing coming are not affected.
        assert_eq!(
            filter(&view, &pod("ns/c", 1000, 1), &nodes, now).passing,
            vec![0, 1]
        );
    }
}
