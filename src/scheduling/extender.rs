//! The kube-scheduler extender's two decisions, filter and prioritize, over the [`ClusterView`].
//! Pure: no I/O, no locks, no wire format. The HTTP adapter (`crate::http::extender`) decodes the
//! call, takes the view's read lock around [`filter`] / [`prioritize`] only, and encodes the answer.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use crate::model::resources::{self, CPU, MEMORY, Resources};
use crate::scheduling::pod::PodTerm;
use crate::scheduling::view::{ClusterView, NodeFacts, NodeState, Promise};

/// `MaxExtenderPriority`: kube-scheduler multiplies extender scores by weight × 10 without
/// clamping, so a score above this would swamp the in-tree plugins.
pub const MAX_SCORE: i64 = 10;
/// `MinExtenderPriority`.
pub const MIN_SCORE: i64 = 0;

/// The pod being scheduled, as far as the extender needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodRequest {
    /// `namespace/name`, the key promises are held under.
    pub key: String,
    /// Effective requests the Kubernetes way (init containers, sidecars, overhead; `pods` = 1).
    pub requests: Resources,
    /// Its labels, for promised pods' anti-affinity and spread.
    pub labels: BTreeMap<String, String>,
    /// Its required pod anti-affinity on known topologies, for the promised pods it may select.
    pub anti_affinity: Vec<PodTerm>,
}

impl PodRequest {
    pub fn namespace(&self) -> &str {
        self.key.split_once('/').map_or("default", |(ns, _)| ns)
    }
}

/// A node the scheduler asks about: a bare name, or a full Node object.
pub trait Candidate {
    fn name(&self) -> &str;
    /// Allocatable from the object itself, when one was sent.
    fn allocatable(&self) -> Option<Resources>;
}

/// A node named only: nothing is known of it but what the view holds.
impl Candidate for &str {
    fn name(&self) -> &str {
        self
    }
    fn allocatable(&self) -> Option<Resources> {
        None
    }
}

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
///    promise still holds the pod and the pod breaks no promised pod's anti-affinity or hostname
///    spread (nor selects one by its own anti-affinity), else [`Refusal::Reserved`]; a node
///    launched for a NodeClaim's pods is refused outright to a pod that waits for a node of its
///    own;
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
    if let Some(conflict) = breaks_promise(promise, pod) {
        return Err(Refusal::Reserved(conflict));
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

/// Whether `pod`, placed first on a node promised to other pods, would keep one of them off it
/// (kube-scheduler checks required anti-affinity both ways, and a pod's own spreads):
/// - a promised pod's required anti-affinity selects `pod` (a zone term too: the node is in the
///   zone);
/// - `pod`'s own required anti-affinity selects a promised pod;
/// - `pod` counts towards a promised pod's `DoNotSchedule` hostname spread, and the promised pods
///   it selects plus `pod` would exceed its maxSkew. The global minimum is taken as 0 (some node
///   the promised pod may use has no matching pod), which holds whenever the group is smaller
///   than the cluster; otherwise this refuses a node the pod could in fact have shared.
///
/// Pods promised by their requests alone have no labels and no rules, and never conflict.
fn breaks_promise(promise: &Promise, pod: &PodRequest) -> Option<String> {
    let namespace = pod.namespace();
    for (key, promised) in &promise.pods {
        if !promised.has_rules() && pod.anti_affinity.is_empty() {
            continue;
        }
        if let Some(term) = promised
            .anti_affinity
            .iter()
            .find(|t| t.selector.matches(namespace, &pod.labels))
        {
            return Some(format!(
                "node promised by nodewright to pending pod {key}, whose required anti-affinity ({}) selects this pod ({})",
                term.topology.key(),
                term.selector.describe()
            ));
        }
        if let Some(term) = pod
            .anti_affinity
            .iter()
            .find(|t| t.selector.matches(&promised.namespace, &promised.labels))
        {
            return Some(format!(
                "node promised by nodewright to pending pod {key}, which this pod's required anti-affinity ({}) selects ({})",
                term.topology.key(),
                term.selector.describe()
            ));
        }
        for spread in &promised.hostname_spreads {
            if !spread.selector.matches(namespace, &pod.labels) {
                continue;
            }
            let promised_matching = promise
                .pods
                .values()
                .filter(|p| spread.selector.matches(&p.namespace, &p.labels))
                .count() as i64;
            if promised_matching + 1 > spread.max_skew {
                return Some(format!(
                    "node promised by nodewright to pending pod {key}, whose topology spread ({}, maxSkew {}, DoNotSchedule) this pod would fill ({})",
                    spread.topology.key(),
                    spread.max_skew,
                    spread.selector.describe()
                ));
            }
        }
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resources::PODS;
    use crate::scheduling::PendingPod;
    use crate::scheduling::view::PromisedPod;
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
            ..PodRequest::default()
        }
    }

    fn names(list: &[&'static str]) -> Vec<&'static str> {
        list.to_vec()
    }

    /// A pod of `group` in namespace `ns` (1 cpu, 1 GiB) with the spec fields in `rules`, read
    /// as the planner reads it.
    fn grouped(ns: &str, name: &str, group: &str, rules: serde_json::Value) -> PendingPod {
        let mut spec = serde_json::json!({"containers": [{"name": "c", "image": "x",
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]});
        spec.as_object_mut()
            .unwrap()
            .extend(rules.as_object().unwrap().clone());
        PendingPod::from_pod(
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": ns, "labels": {"group": group}},
                "spec": spec,
            }))
            .unwrap(),
        )
    }

    /// Required anti-affinity to the pod's own group on `key`.
    fn anti_affinity(group: &str, key: &str) -> serde_json::Value {
        serde_json::json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": key, "labelSelector": {"matchLabels": {"group": group}}}]}}})
    }

    /// The extender's view of a pending pod.
    fn request(p: &PendingPod) -> PodRequest {
        PodRequest {
            key: p.key.clone(),
            requests: p.requests,
            labels: p.constraints.labels.clone(),
            anti_affinity: p.constraints.anti_affinity.clone(),
        }
    }

    /// One roomy node "n1" (8 cpu, 32 GiB) with `promised` promised on it, expiring at `expires`.
    fn promised_view(promised: &[&PendingPod], expires: Option<Instant>) -> ClusterView {
        let mut view = ClusterView::default();
        view.nodes.insert(
            Arc::from("n1"),
            node(res(8000, 32, 110), Resources::ZERO, None),
        );
        for p in promised {
            view.promise("n1", &p.key, PromisedPod::from(*p), None, expires);
        }
        view
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
        let nodes: Vec<&str> = names.iter().map(String::as_str).collect();
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

    #[test]
    fn a_pod_of_a_promised_pods_anti_affinity_group_stays_off_its_node() {
        let hostname = "kubernetes.io/hostname";
        let promised = grouped("ns", "a-0", "a", anti_affinity("a", hostname));
        let view = promised_view(&[&promised], None);
        let nodes = names(&["n1"]);
        let now = Instant::now();
        // Same group: kube-scheduler would then keep a-0 off n1, whatever room is left.
        let sibling = grouped("ns", "a-1", "a", anti_affinity("a", hostname));
        let d = filter(&view, &request(&sibling), &nodes, now);
        let [(0, Refusal::Reserved(m))] = d.refused.as_slice() else {
            panic!("{d:?}")
        };
        assert!(m.contains("pending pod ns/a-0"), "{m}");
        assert!(m.contains("anti-affinity (kubernetes.io/hostname)"), "{m}");
        assert!(m.contains("group=a"), "{m}");
        // A plain pod of the group, without rules of its own, is selected all the same.
        let plain = grouped("ns", "a-2", "a", serde_json::json!({}));
        assert!(
            filter(&view, &request(&plain), &nodes, now)
                .passing
                .is_empty()
        );
        // The same labels in another namespace are not selected (the term's own namespace).
        let elsewhere = grouped("other", "a-3", "a", serde_json::json!({}));
        assert_eq!(
            filter(&view, &request(&elsewhere), &nodes, now).passing,
            vec![0]
        );
        // An unrelated pod passes while the room allows, and is refused for room alone.
        let unrelated = grouped("ns", "b-0", "b", anti_affinity("b", hostname));
        assert_eq!(
            filter(&view, &request(&unrelated), &nodes, now).passing,
            vec![0]
        );
        let big = PodRequest {
            requests: res(7500, 1, 1),
            ..request(&unrelated)
        };
        let d = filter(&view, &big, &nodes, now);
        assert!(
            matches!(d.refused.as_slice(), [(0, Refusal::Reserved(m))] if m.contains("cpu left")),
            "{d:?}"
        );
        // The promised pod itself passes.
        assert_eq!(
            filter(&view, &request(&promised), &nodes, now).passing,
            vec![0]
        );
        // A zone term is broken on the node too: the node is in the zone.
        let zonal = grouped(
            "ns",
            "z-0",
            "z",
            anti_affinity("z", "topology.kubernetes.io/zone"),
        );
        let view = promised_view(&[&zonal], None);
        let d = filter(
            &view,
            &request(&grouped("ns", "z-1", "z", serde_json::json!({}))),
            &nodes,
            now,
        );
        assert!(d.passing.is_empty(), "{d:?}");
    }

    #[test]
    fn a_pod_whose_anti_affinity_selects_a_promised_pod_stays_off_its_node() {
        // The promised pod has no rules; the newcomer's own anti-affinity selects it, and
        // kube-scheduler checks anti-affinity of pods already on a node against a newcomer.
        let promised = grouped("ns", "web-0", "web", serde_json::json!({}));
        let view = promised_view(&[&promised], None);
        let nodes = names(&["n1"]);
        let now = Instant::now();
        let shy = grouped(
            "ns",
            "shy-0",
            "shy",
            anti_affinity("web", "kubernetes.io/hostname"),
        );
        let d = filter(&view, &request(&shy), &nodes, now);
        let [(0, Refusal::Reserved(m))] = d.refused.as_slice() else {
            panic!("{d:?}")
        };
        assert!(
            m.contains("pending pod ns/web-0, which this pod's required anti-affinity"),
            "{m}"
        );
        // Pods promised by their requests alone (no labels known) are never selected.
        let mut view = promised_view(&[], None);
        view.promise("n1", "ns/web-1", res(1000, 1, 1), None, None);
        assert_eq!(filter(&view, &request(&shy), &nodes, now).passing, vec![0]);
    }

    #[test]
    fn an_expired_promise_keeps_no_anti_affinity_group_off_the_node() {
        let hostname = "kubernetes.io/hostname";
        let promised = grouped("ns", "a-0", "a", anti_affinity("a", hostname));
        let now = Instant::now();
        let sibling = request(&grouped("ns", "a-1", "a", anti_affinity("a", hostname)));
        let nodes = names(&["n1"]);
        let expired = promised_view(&[&promised], Some(now));
        assert_eq!(filter(&expired, &sibling, &nodes, now).passing, vec![0]);
        let live = promised_view(&[&promised], Some(now + Duration::from_secs(60)));
        assert!(filter(&live, &sibling, &nodes, now).passing.is_empty());
    }

    #[test]
    fn a_pod_that_would_fill_a_promised_pods_hostname_spread_stays_off_its_node() {
        let spread = |max_skew: i64, unsatisfiable: &str| {
            serde_json::json!({"topologySpreadConstraints": [{
                "maxSkew": max_skew, "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": unsatisfiable,
                "labelSelector": {"matchLabels": {"group": "s"}}}]})
        };
        let now = Instant::now();
        let nodes = names(&["n1"]);
        let newcomer = request(&grouped("ns", "s-9", "s", spread(1, "DoNotSchedule")));
        let strict = grouped("ns", "s-0", "s", spread(1, "DoNotSchedule"));
        let d = filter(&promised_view(&[&strict], None), &newcomer, &nodes, now);
        let [(0, Refusal::Reserved(m))] = d.refused.as_slice() else {
            panic!("{d:?}")
        };
        assert!(
            m.contains("topology spread (kubernetes.io/hostname, maxSkew 1"),
            "{m}"
        );
        // maxSkew 2 leaves room for one more pod of the group beside the promised one, not two.
        let loose = grouped("ns", "s-1", "s", spread(2, "DoNotSchedule"));
        let view = promised_view(&[&loose], None);
        assert_eq!(filter(&view, &newcomer, &nodes, now).passing, vec![0]);
        let other = grouped("ns", "s-2", "s", spread(2, "DoNotSchedule"));
        let view = promised_view(&[&loose, &other], None);
        assert!(filter(&view, &newcomer, &nodes, now).passing.is_empty());
        // ScheduleAnyway is a preference: the newcomer passes.
        let soft = grouped("ns", "s-3", "s", spread(1, "ScheduleAnyway"));
        let view = promised_view(&[&soft], None);
        assert_eq!(filter(&view, &newcomer, &nodes, now).passing, vec![0]);
    }
}
