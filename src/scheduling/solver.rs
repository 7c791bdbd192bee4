//! The capacity planner: which pending pods go on existing or in-flight nodes, and which new
//! nodes (pool, instance type, zone, capacity type) to launch for the rest, at the least price.
//!
//! # How it decides
//! 1. **Groups.** Pods with equal constraints (replicas of one workload) form a group. Labels count
//!    only as far as some selector in the batch reads them.
//! 2. **Pools.** A group may use the pools whose taints it tolerates and whose requirements, with
//!    its own node selector and required node affinity, leave an instance type with an available
//!    offering; the highest `weight` first. For each such (group, pool) the compatible offerings are
//!    computed once.
//! 3. **Existing and in-flight nodes** take what they can, first fit, with every constraint checked.
//! 4. **Zones.** Pods with zone constraints (spread, pod affinity or anti-affinity on
//!    `topology.kubernetes.io/zone`), or selected by one, get a zone pod by pod: the allowed zone
//!    with the lowest count, as the scheduler's skew rule allows. `ScheduleAnyway` is treated as
//!    required and relaxed only for a pod that would otherwise have no zone.
//! 5. **Packing**, per (pool, zone) bucket. The LP bound of the bucket's demand gives a price per
//!    core, per GiB and per pod slot (see [`super::lp`]). The instance types closest to the bound
//!    are each filled greedily (the pod class worth most per share of the scarcest remaining
//!    resource first, which balances cpu-heavy with memory-heavy pods), the fill worth most per
//!    dollar wins, and it is repeated as often as the remaining pods allow. Hostname spread and
//!    anti-affinity cap what one node holds; hostname self-affinity packs its group as one unit.
//! 6. **Tails.** The least efficient new nodes are emptied into the spare room of others where
//!    possible, and every new node is re-priced to the cheapest type that still holds its pods;
//!    the other types that would (up to 60, cheapest first) are kept as launch-time alternatives.
//!
//! The solver is pure and deterministic: the same input gives the same plan.

// Index loops run over parallel per-dimension and per-node arrays; keyed caches are spelled out.
#![allow(clippy::needless_range_loop, clippy::type_complexity)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::Serialize;

use super::lp::{self, Duals};
use super::pod::{Constraints, PendingPod, Selector, Topology};
use crate::model::catalog::{CapacityType, Catalog, InstanceType, KubeletSettings, labels};
use crate::model::resources::{CPU, DIMS, MEMORY, Resources};
use crate::model::{Requirement, Taint, TaintEffect};

/// Alternatives kept per new node for launch-time fallback.
pub const MAX_ALTERNATIVES: usize = 60;
/// Instance types whose fills are tried at each packing step.
const CANDIDATES: usize = 16;
/// Sizes of one instance family among the candidates.
const PER_FAMILY: usize = 3;

/// A NodePool as the planner uses it.
#[derive(Clone, Debug, Default)]
pub struct Pool {
    pub name: String,
    pub weight: i32,
    pub requirements: Vec<Requirement>,
    /// Template labels every node of the pool carries.
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub kubelet: KubeletSettings,
    /// Requests of the DaemonSet pods every node of the pool runs.
    pub daemon_overhead: Resources,
    pub limits: Limits,
    /// Capacity the pool's existing nodes already count against its limits.
    pub in_use: Usage,
}

/// `spec.limits` of a NodePool.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    pub cpu_millis: Option<i64>,
    pub memory_bytes: Option<i64>,
    pub nodes: Option<i64>,
}

/// What counts against [`Limits`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub nodes: i64,
}

impl Usage {
    fn add(&mut self, capacity: &Resources, nodes: i64) {
        self.cpu_millis += capacity.0[CPU] * nodes;
        self.memory_bytes += capacity.0[MEMORY] * nodes;
        self.nodes += nodes;
    }

    fn remove(&mut self, capacity: &Resources) {
        self.cpu_millis -= capacity.0[CPU];
        self.memory_bytes -= capacity.0[MEMORY];
        self.nodes -= 1;
    }

    /// How many more nodes of `capacity` fit under `limits`.
    fn room(&self, limits: &Limits, capacity: &Resources) -> i64 {
        let mut room = i64::MAX;
        if let Some(cpu) = limits.cpu_millis
            && capacity.0[CPU] > 0
        {
            room = room.min((cpu - self.cpu_millis).max(0) / capacity.0[CPU]);
        }
        if let Some(mem) = limits.memory_bytes
            && capacity.0[MEMORY] > 0
        {
            room = room.min((mem - self.memory_bytes).max(0) / capacity.0[MEMORY]);
        }
        if let Some(nodes) = limits.nodes {
            room = room.min((nodes - self.nodes).max(0));
        }
        room
    }
}

/// A pod already on a node (or promised to an in-flight one): what selectors can see of it.
#[derive(Clone, Debug, PartialEq)]
pub struct BoundPod {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// A node that exists or is being launched, with its free capacity.
#[derive(Clone, Debug, PartialEq)]
pub struct ExistingNode {
    pub name: String,
    /// Includes `topology.kubernetes.io/zone` and, for pool nodes, `karpenter.sh/nodepool`.
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub allocatable: Resources,
    /// Requests of the pods already on it (or promised to it).
    pub requested: Resources,
    pub pods: Vec<BoundPod>,
    /// Launched but not registered yet.
    pub in_flight: bool,
}

/// Everything the planner decides from.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    pub pods: &'a [PendingPod],
    pub pools: &'a [Pool],
    pub catalog: &'a Catalog,
    pub nodes: &'a [ExistingNode],
}

/// The decision.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub nodes: Vec<PlannedNode>,
    /// USD per hour of the new nodes.
    pub total_price_per_hour: f64,
    pub unschedulable: Vec<Unschedulable>,
    /// Pods placed on existing or in-flight nodes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub placements: Vec<Placement>,
}

/// A new node to launch.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedNode {
    pub node_pool: String,
    pub instance_type: String,
    pub zone: String,
    pub capacity_type: CapacityType,
    pub price_per_hour: f64,
    /// The price (or a price it depends on) is an estimate.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub price_estimated: bool,
    /// `namespace/name` of the pods it is for.
    pub pods: Vec<String>,
    /// Other instance types that hold the same pods in the same zone and capacity type, cheapest
    /// first, for launch-time fallback.
    pub alternatives: Vec<String>,
    /// Requests of its pods plus DaemonSet overhead.
    #[serde(skip)]
    pub requests: Resources,
    #[serde(skip)]
    pub allocatable: Resources,
    /// Indices into the input pods.
    #[serde(skip)]
    pub pod_indices: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unschedulable {
    pub pod: String,
    pub reason: String,
    #[serde(skip)]
    pub pod_index: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    pub pod: String,
    pub node: String,
    #[serde(skip)]
    pub pod_index: usize,
    /// Index of the node in [`Input::nodes`].
    #[serde(skip)]
    pub node_index: usize,
}

/// Plans `input`. Deterministic.
pub fn solve(input: &Input<'_>) -> Plan {
    Solver::new(input).run()
}

// ---------------------------------------------------------------------------------------------
// Internals

/// Offerings a (group, pool) may use: per type index, a bit mask over that type's offerings.
#[derive(Debug)]
struct Compat {
    masks: Vec<u64>,
    /// Zones (indices) with at least one allowed offering, with how many types offer there.
    zone_types: Vec<usize>,
    any: bool,
}

struct Group {
    c: Constraints,
    pods: Vec<usize>,
    /// (pool index, compat) in preference order.
    pools: Vec<(usize, std::rc::Rc<Compat>)>,
    /// Why pools were not usable (for messages when none is).
    pool_problems: Vec<String>,
    zone_bound: bool,
    /// Hostname counters this group's pods increment.
    h_inc: Vec<usize>,
    /// Hostname spread: (counter, max skew, self-matching).
    h_spread: Vec<(usize, i64, bool)>,
    /// Hostname anti-affinity: (counter, self-matching).
    h_anti: Vec<(usize, bool)>,
    /// Hostname affinity to other pods: counters that must be present on the node.
    h_aff: Vec<usize>,
    /// Hostname self-affinity: the group travels as one unit.
    bundled: bool,
    /// The group's own requirements on offering labels (zone, capacity type), as a key.
    offer_key: String,
}

/// Pods of one group and one request vector, in one bucket.
#[derive(Clone, Debug)]
struct Class {
    group: usize,
    req: Resources,
    /// Pod indices not yet placed (popped from the back).
    pods: Vec<usize>,
    /// For a bundle: the pods travelling together.
    bundle: Vec<usize>,
}

/// A node being filled (or planned): the type and offering, what is on it, hostname counters.
#[derive(Clone, Debug)]
struct Draft {
    pool: usize,
    type_idx: usize,
    offering: usize,
    /// Allocatable minus DaemonSet overhead.
    room: Resources,
    used: Resources,
    pods: Vec<usize>,
    groups: Vec<usize>,
    counters: Vec<(usize, i64)>,
    zone_bound: bool,
}

impl Draft {
    fn bump(&mut self, counter: usize, n: i64) {
        match self.counters.iter_mut().find(|(c, _)| *c == counter) {
            Some((_, v)) => *v += n,
            None => self.counters.push((counter, n)),
        }
    }
}

struct Solver<'a> {
    input: &'a Input<'a>,
    groups: Vec<Group>,
    zones: Vec<String>,
    /// Hostname-topology selectors.
    h_counters: Vec<Selector>,
    /// Zone-topology selectors and their counts per zone.
    z_counters: Vec<Selector>,
    z_counts: Vec<Vec<i64>>,
    /// Zones where a pod with a zone anti-affinity term (counter) runs.
    z_anti: Vec<Vec<i64>>,
    /// Per pool: allocatable-minus-overhead and capacity of each type (None: does not fit overhead).
    type_room: Vec<Vec<Option<(Resources, Resources)>>>,
    usage: Vec<Usage>,
    existing: Vec<ExistingState>,
    placements: Vec<Placement>,
    unschedulable: Vec<Unschedulable>,
    drafts: Vec<Draft>,
    /// Group of each input pod (`usize::MAX`: none).
    pod_group: Vec<usize>,
}

struct ExistingState {
    free: Resources,
    zone: Option<usize>,
    counters: Vec<(usize, i64)>,
}

impl<'a> Solver<'a> {
    fn new(input: &'a Input<'a>) -> Self {
        let zones = input.catalog.zones();
        let type_room = input
            .pools
            .iter()
            .map(|pool| {
                input
                    .catalog
                    .types
                    .iter()
                    .map(|t| {
                        let alloc = t.allocatable(&pool.kubelet);
                        pool.daemon_overhead
                            .fits_in(&alloc)
                            .then(|| (alloc - pool.daemon_overhead, t.capacity(&pool.kubelet)))
                    })
                    .collect()
            })
            .collect();
        Solver {
            input,
            groups: Vec::new(),
            zones,
            h_counters: Vec::new(),
            z_counters: Vec::new(),
            z_counts: Vec::new(),
            z_anti: Vec::new(),
            type_room,
            usage: input.pools.iter().map(|p| p.in_use).collect(),
            existing: Vec::new(),
            placements: Vec::new(),
            unschedulable: Vec::new(),
            drafts: Vec::new(),
            pod_group: vec![usize::MAX; input.pods.len()],
        }
    }

    fn run(mut self) -> Plan {
        self.build_groups();
        // What running pods alone count for zone topology, before this batch adds any.
        let base = (self.z_counts.clone(), self.z_anti.clone());
        self.place_on_existing();
        let bucketed = self.assign_zones();
        self.pack(bucketed);
        self.enforce_zone_rules(&base.0, &base.1);
        self.consolidate_tails();
        self.finish()
    }

    fn unschedulable(&mut self, pod: usize, reason: String) {
        self.unschedulable.push(Unschedulable {
            pod: self.input.pods[pod].key.clone(),
            reason,
            pod_index: pod,
        });
    }

    // --- 1. groups and pools ------------------------------------------------------------------

    fn build_groups(&mut self) {
        let pods = self.input.pods;
        // Label keys any selector reads: only these distinguish pods for grouping.
        let mut read_keys: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
        for p in pods {
            let c = &p.constraints;
            for s in c
                .spreads
                .iter()
                .map(|s| &s.selector)
                .chain(c.affinity.iter().map(|t| &t.selector))
                .chain(c.anti_affinity.iter().map(|t| &t.selector))
            {
                read_keys.extend(s.keys());
            }
        }
        let mut index: HashMap<Constraints, usize> = HashMap::new();
        for (i, p) in pods.iter().enumerate() {
            if let Some(reason) = &p.invalid {
                self.unschedulable(i, reason.clone());
                continue;
            }
            let mut c = p.constraints.clone();
            c.labels.retain(|k, _| read_keys.contains(k.as_str()));
            let next = self.groups.len();
            let g = *index.entry(c.clone()).or_insert(next);
            if g == next {
                self.groups.push(Group {
                    c,
                    pods: Vec::new(),
                    pools: Vec::new(),
                    pool_problems: Vec::new(),
                    zone_bound: false,
                    h_inc: Vec::new(),
                    h_spread: Vec::new(),
                    h_anti: Vec::new(),
                    h_aff: Vec::new(),
                    bundled: false,
                    offer_key: String::new(),
                });
            }
            self.groups[g].pods.push(i);
            self.pod_group[i] = g;
        }
        // Pools, in weight order.
        let mut pool_order: Vec<usize> = (0..self.input.pools.len()).collect();
        pool_order.sort_by(|a, b| {
            let (pa, pb) = (&self.input.pools[*a], &self.input.pools[*b]);
            pb.weight
                .cmp(&pa.weight)
                .then_with(|| pa.name.cmp(&pb.name))
        });
        let mut compat_cache: HashMap<
            (usize, Vec<Requirement>, Vec<Vec<Requirement>>),
            std::rc::Rc<Compat>,
        > = HashMap::new();
        for g in 0..self.groups.len() {
            let mut problems = Vec::new();
            let mut usable = Vec::new();
            for &p in &pool_order {
                let pool = &self.input.pools[p];
                let group = &self.groups[g];
                if let Some(taint) = untolerated(&pool.taints, &group.c) {
                    problems.push(format!(
                        "nodepool {}: taint {} not tolerated",
                        pool.name,
                        describe_taint(taint)
                    ));
                    continue;
                }
                let key = (
                    p,
                    group.c.node_selector.clone(),
                    group.c.node_affinity.clone(),
                );
                let compat = compat_cache
                    .entry(key)
                    .or_insert_with(|| {
                        std::rc::Rc::new(compat(self.input.catalog, pool, &self.zones, &group.c))
                    })
                    .clone();
                if compat.any {
                    usable.push((p, compat));
                } else {
                    problems.push(explain_incompatible(self.input.catalog, pool, &group.c));
                }
            }
            self.groups[g].pools = usable;
            self.groups[g].pool_problems = problems;
            let c = &self.groups[g].c;
            let offer_reqs: Vec<&Requirement> = c
                .node_selector
                .iter()
                .chain(c.node_affinity.iter().flatten())
                .filter(|r| labels::is_offering_label(&r.key))
                .collect();
            if !offer_reqs.is_empty() {
                self.groups[g].offer_key = format!("{offer_reqs:?}");
            }
        }
        // Topology counters.
        for g in 0..self.groups.len() {
            let c = self.groups[g].c.clone();
            for s in &c.spreads {
                let own = s.selector.matches(&c.namespace, &c.labels);
                match s.topology {
                    Topology::Hostname => {
                        let id = intern(&mut self.h_counters, &s.selector);
                        self.groups[g].h_spread.push((id, s.max_skew, own));
                    }
                    Topology::Zone => {
                        intern(&mut self.z_counters, &s.selector);
                        self.groups[g].zone_bound = true;
                    }
                }
            }
            for t in &c.anti_affinity {
                let own = t.selector.matches(&c.namespace, &c.labels);
                match t.topology {
                    Topology::Hostname => {
                        let id = intern(&mut self.h_counters, &t.selector);
                        self.groups[g].h_anti.push((id, own));
                    }
                    Topology::Zone => {
                        intern(&mut self.z_counters, &t.selector);
                        self.groups[g].zone_bound = true;
                    }
                }
            }
            for t in &c.affinity {
                let own = t.selector.matches(&c.namespace, &c.labels);
                match t.topology {
                    Topology::Hostname if own => self.groups[g].bundled = true,
                    Topology::Hostname => {
                        let id = intern(&mut self.h_counters, &t.selector);
                        self.groups[g].h_aff.push(id);
                    }
                    Topology::Zone => {
                        intern(&mut self.z_counters, &t.selector);
                        self.groups[g].zone_bound = true;
                    }
                }
            }
        }
        for g in 0..self.groups.len() {
            let c = &self.groups[g].c;
            let h_inc: Vec<usize> = (0..self.h_counters.len())
                .filter(|i| self.h_counters[*i].matches(&c.namespace, &c.labels))
                .collect();
            let selected_by_zone = self
                .z_counters
                .iter()
                .any(|s| s.matches(&c.namespace, &c.labels));
            self.groups[g].h_inc = h_inc;
            self.groups[g].zone_bound |= selected_by_zone;
        }
        self.z_counts = vec![vec![0; self.zones.len()]; self.z_counters.len()];
        self.z_anti = vec![vec![0; self.zones.len()]; self.z_counters.len()];
        // Existing pods count for topology.
        for node in self.input.nodes {
            let zone = node
                .labels
                .get(labels::ZONE)
                .and_then(|z| self.zones.iter().position(|x| x == z));
            let mut counters = Vec::new();
            for pod in &node.pods {
                for (i, s) in self.h_counters.iter().enumerate() {
                    if s.matches(&pod.namespace, &pod.labels) {
                        match counters.iter_mut().find(|(c, _)| *c == i) {
                            Some((_, n)) => *n += 1,
                            None => counters.push((i, 1)),
                        }
                    }
                }
                if let Some(z) = zone {
                    for (i, s) in self.z_counters.iter().enumerate() {
                        if s.matches(&pod.namespace, &pod.labels) {
                            self.z_counts[i][z] += 1;
                        }
                    }
                }
            }
            self.existing.push(ExistingState {
                free: node.allocatable.saturating_sub(&node.requested),
                zone,
                counters,
            });
        }
        // Groups without any usable pool are unschedulable now.
        for g in 0..self.groups.len() {
            if self.groups[g].pools.is_empty() && self.input.nodes.is_empty() {
                let reason = no_pool_reason(&self.groups[g], self.input.pools);
                for p in self.groups[g].pods.clone() {
                    self.unschedulable(p, reason.clone());
                }
                self.groups[g].pods.clear();
            }
        }
    }

    // --- 3. existing nodes -------------------------------------------------------------------

    fn place_on_existing(&mut self) {
        if self.input.nodes.is_empty() {
            return;
        }
        for g in 0..self.groups.len() {
            // A hostname self-affinity group travels together: onto the node already running
            // pods it selects, if there is one, else onto one new node.
            if self.groups[g].bundled {
                self.place_bundle_on_existing(g);
                continue;
            }
            let mut pods = std::mem::take(&mut self.groups[g].pods);
            sort_by_size(&mut pods, self.input.pods);
            let mut left = Vec::new();
            for p in pods {
                match self.existing_fit(g, p) {
                    Some(n) => self.place_existing(g, p, n),
                    None => left.push(p),
                }
            }
            if self.groups[g].pools.is_empty() {
                let reason = format!(
                    "no existing node has room for it and {}",
                    no_pool_reason(&self.groups[g], self.input.pools)
                );
                for p in left {
                    self.unschedulable(p, reason.clone());
                }
            } else {
                self.groups[g].pods = left;
            }
        }
    }

    fn place_bundle_on_existing(&mut self, g: usize) {
        let group = &self.groups[g];
        let terms: Vec<&Selector> = group
            .c
            .affinity
            .iter()
            .filter(|t| t.topology == Topology::Hostname)
            .map(|t| &t.selector)
            .collect();
        let holders: Vec<usize> = (0..self.input.nodes.len())
            .filter(|n| {
                self.input.nodes[*n]
                    .pods
                    .iter()
                    .any(|p| terms.iter().all(|s| s.matches(&p.namespace, &p.labels)))
            })
            .collect();
        if holders.is_empty() {
            if group.pools.is_empty() {
                let reason = no_pool_reason(group, self.input.pools);
                for p in std::mem::take(&mut self.groups[g].pods) {
                    self.unschedulable(p, reason.clone());
                }
            }
            return;
        }
        let pods = std::mem::take(&mut self.groups[g].pods);
        let total = pods
            .iter()
            .fold(Resources::ZERO, |acc, p| acc + self.input.pods[*p].requests);
        let group = &self.groups[g];
        let target = holders.iter().copied().find(|&n| {
            let node = &self.input.nodes[n];
            let state = &self.existing[n];
            total.fits_in(&state.free)
                && untolerated(&node.taints, &group.c).is_none()
                && node_labels_satisfy(&node.labels, &group.c)
        });
        match target {
            Some(n) => {
                for p in pods {
                    self.place_existing(g, p, n);
                }
            }
            None => {
                let names: Vec<&str> = holders
                    .iter()
                    .map(|n| self.input.nodes[*n].name.as_str())
                    .collect();
                let reason = format!(
                    "pod affinity on {} requires the node already running pods it selects ({}), and it cannot take the group ({})",
                    labels::HOSTNAME,
                    names.join(", "),
                    total
                );
                for p in pods {
                    self.unschedulable(p, reason.clone());
                }
            }
        }
    }

    fn existing_fit(&self, g: usize, p: usize) -> Option<usize> {
        let group = &self.groups[g];
        let req = self.input.pods[p].requests;
        (0..self.input.nodes.len()).find(|&n| {
            let node = &self.input.nodes[n];
            let state = &self.existing[n];
            req.fits_in(&state.free)
                && untolerated(&node.taints, &group.c).is_none()
                && node_labels_satisfy(&node.labels, &group.c)
                && self.hostname_room(g, &state.counters) > 0
                && state
                    .zone
                    .is_none_or(|z| self.zone_allows(g, z, true).is_ok())
                && (state.zone.is_some() || !group.zone_bound)
        })
    }

    fn place_existing(&mut self, g: usize, p: usize, n: usize) {
        let req = self.input.pods[p].requests;
        let state = &mut self.existing[n];
        state.free -= req;
        for &c in &self.groups[g].h_inc {
            match state.counters.iter_mut().find(|(x, _)| *x == c) {
                Some((_, v)) => *v += 1,
                None => state.counters.push((c, 1)),
            }
        }
        if let Some(z) = state.zone {
            self.count_zone(g, z);
        }
        self.placements.push(Placement {
            pod: self.input.pods[p].key.clone(),
            node: self.input.nodes[n].name.clone(),
            pod_index: p,
            node_index: n,
        });
    }

    /// How many pods of group `g` a node with these hostname counters can still take.
    fn hostname_room(&self, g: usize, counters: &[(usize, i64)]) -> i64 {
        let count = |c: usize| {
            counters
                .iter()
                .find(|(x, _)| *x == c)
                .map_or(0, |(_, n)| *n)
        };
        let group = &self.groups[g];
        let mut room = i64::MAX;
        for &(c, skew, own) in &group.h_spread {
            if own {
                room = room.min(skew - count(c));
            } else if count(c) > skew {
                room = 0;
            }
        }
        for &(c, own) in &group.h_anti {
            if count(c) > 0 {
                room = 0;
            } else if own {
                room = room.min(1);
            }
        }
        for &c in &group.h_aff {
            if count(c) == 0 {
                room = 0;
            }
        }
        room.max(0)
    }

    // --- 4. zones ----------------------------------------------------------------------------

    /// Whether a pod of group `g` may go to zone `z` (`strict`: ScheduleAnyway counts as required).
    fn zone_allows(&self, g: usize, z: usize, strict: bool) -> Result<(), String> {
        let group = &self.groups[g];
        let c = &group.c;
        let domains: Vec<usize> = if group.pools.is_empty() {
            (0..self.zones.len()).collect()
        } else {
            (0..self.zones.len())
                .filter(|z| group.pools.iter().any(|(_, c)| c.zone_types[*z] > 0))
                .collect()
        };
        for s in c.spreads.iter().filter(|s| s.topology == Topology::Zone) {
            if !s.required && !strict {
                continue;
            }
            let id = self
                .z_counters
                .iter()
                .position(|x| *x == s.selector)
                .unwrap_or(0);
            let counts = &self.z_counts[id];
            let min = domains.iter().map(|d| counts[*d]).min().unwrap_or(0);
            let own = i64::from(s.selector.matches(&c.namespace, &c.labels));
            if counts[z] + own - min > s.max_skew {
                return Err(format!(
                    "topology spread on {} (maxSkew {}, selecting {}): zone {} would be {} pods ahead",
                    labels::ZONE,
                    s.max_skew,
                    s.selector.describe(),
                    self.zones[z],
                    counts[z] + own - min
                ));
            }
        }
        for t in c
            .anti_affinity
            .iter()
            .filter(|t| t.topology == Topology::Zone)
        {
            let id = self
                .z_counters
                .iter()
                .position(|x| *x == t.selector)
                .unwrap_or(0);
            if self.z_counts[id][z] > 0 {
                return Err(format!(
                    "pod anti-affinity on {} with pods selected by {}: every allowed zone already runs one",
                    labels::ZONE,
                    t.selector.describe()
                ));
            }
        }
        // Symmetry: pods in the zone whose zone anti-affinity selects this group.
        for (id, s) in self.z_counters.iter().enumerate() {
            if self.z_anti[id][z] > 0 && s.matches(&c.namespace, &c.labels) {
                return Err(format!(
                    "pods in zone {} have anti-affinity to pods selected by {}",
                    self.zones[z],
                    s.describe()
                ));
            }
        }
        for t in c.affinity.iter().filter(|t| t.topology == Topology::Zone) {
            let id = self
                .z_counters
                .iter()
                .position(|x| *x == t.selector)
                .unwrap_or(0);
            let anywhere = self.z_counts[id].iter().any(|n| *n > 0);
            let own = t.selector.matches(&c.namespace, &c.labels);
            if self.z_counts[id][z] == 0 && (anywhere || !own) {
                return Err(format!(
                    "pod affinity on {} requires a pod selected by {} in the same zone, and none is planned or running there",
                    labels::ZONE,
                    t.selector.describe()
                ));
            }
        }
        Ok(())
    }

    fn count_zone(&mut self, g: usize, z: usize) {
        self.add_to_zone(g, z, 1);
    }

    /// Count a pod of group `g` in zone `z` (`n` = 1), or take it out again (`n` = -1).
    fn add_to_zone(&mut self, g: usize, z: usize, n: i64) {
        let c = &self.groups[g].c;
        for (id, s) in self.z_counters.iter().enumerate() {
            if s.matches(&c.namespace, &c.labels) {
                self.z_counts[id][z] += n;
            }
        }
        for t in c
            .anti_affinity
            .iter()
            .filter(|t| t.topology == Topology::Zone)
        {
            if let Some(id) = self.z_counters.iter().position(|x| *x == t.selector) {
                self.z_anti[id][z] += n;
            }
        }
    }

    /// Zones are chosen pod by pod before packing; packing can then leave some of those pods out
    /// (a pool's limits, no type that fits) or move them to another pool in another zone, and the
    /// pods that are placed may no longer keep a required zone rule (a spread's maxSkew,
    /// anti-affinity, affinity) among themselves. Recount the zones from what is placed, on
    /// existing and new nodes, and take pods off, last placed first, until every placed pod keeps
    /// its required zone rules; the pods taken off wait for a later batch, with the reason.
    fn enforce_zone_rules(&mut self, base_counts: &[Vec<i64>], base_anti: &[Vec<i64>]) {
        if !self.groups.iter().any(|g| g.zone_bound) {
            return;
        }
        let zone_of = |zone: &str, zones: &[String]| zones.iter().position(|z| z == zone);
        self.z_counts = base_counts.to_vec();
        self.z_anti = base_anti.to_vec();
        // (where, pod, group, zone): where = Ok(draft) or Err(placement index).
        let mut placed: Vec<(Result<usize, usize>, usize, usize, usize)> = Vec::new();
        for (i, placement) in self.placements.iter().enumerate() {
            let p = placement.pod_index;
            let zone = self.existing[placement.node_index].zone;
            if let (Some(g), Some(z)) = (self.group_of(p), zone) {
                placed.push((Err(i), p, g, z));
            }
        }
        for (d, draft) in self.drafts.iter().enumerate() {
            let it = &self.input.catalog.types[draft.type_idx];
            let Some(z) = zone_of(&it.offerings[draft.offering].zone, &self.zones) else {
                continue;
            };
            for &p in &draft.pods {
                if let Some(g) = self.group_of(p) {
                    placed.push((Ok(d), p, g, z));
                }
            }
        }
        for &(_, _, g, z) in &placed {
            self.count_zone(g, z);
        }
        let mut removed: Vec<(Result<usize, usize>, usize, usize, String)> = Vec::new();
        let mut gone = vec![false; placed.len()];
        // Taking a pod off can break another's rule (the zone it left was the emptiest): repeat
        // until a pass takes none.
        loop {
            let before = removed.len();
            for i in (0..placed.len()).rev() {
                let (at, p, g, z) = placed[i];
                if gone[i] || !self.groups[g].zone_bound {
                    continue;
                }
                self.add_to_zone(g, z, -1);
                match self.zone_allows(g, z, false) {
                    Ok(()) => self.add_to_zone(g, z, 1),
                    Err(reason) => {
                        gone[i] = true;
                        removed.push((at, p, g, reason));
                    }
                }
            }
            if removed.len() == before {
                break;
            }
        }
        if removed.is_empty() {
            return;
        }
        let mut dropped_placements = vec![false; self.placements.len()];
        for (at, p, g, reason) in removed {
            let req = self.input.pods[p].requests;
            match at {
                Ok(d) => {
                    let group_of = &self.pod_group;
                    let draft = &mut self.drafts[d];
                    draft.pods.retain(|x| *x != p);
                    draft.used -= req;
                    for &c in &self.groups[g].h_inc {
                        draft.bump(c, -1);
                    }
                    if !draft.pods.iter().any(|x| group_of.get(*x) == Some(&g)) {
                        draft.groups.retain(|x| *x != g);
                    }
                }
                Err(i) => {
                    let state = &mut self.existing[self.placements[i].node_index];
                    state.free += req;
                    for &c in &self.groups[g].h_inc {
                        if let Some((_, v)) = state.counters.iter_mut().find(|(x, _)| *x == c) {
                            *v -= 1;
                        }
                    }
                    dropped_placements[i] = true;
                }
            }
            self.unschedulable(
                p,
                format!("other pods of this batch could not be placed, and planning this one without them would break its zone rule: {reason}"),
            );
        }
        let mut i = 0;
        self.placements.retain(|_| {
            let keep = !dropped_placements[i];
            i += 1;
            keep
        });
        let (drafts, usage) = (&mut self.drafts, &mut self.usage);
        drafts.retain(|d| {
            if d.pods.is_empty() {
                if let Some((_, capacity)) = self.type_room[d.pool][d.type_idx] {
                    usage[d.pool].remove(&capacity);
                }
                false
            } else {
                true
            }
        });
    }

    /// Returns, per group, (zone or None, pods) lists for packing.
    fn assign_zones(&mut self) -> Vec<(usize, Option<usize>, Vec<usize>)> {
        let mut out = Vec::new();
        // Anti-affinity first (scarce), then spreads, then the rest, then affinity (follows).
        let mut order: Vec<usize> = (0..self.groups.len()).collect();
        let rank = |g: &Group| -> u8 {
            let zone_affinity = g.c.affinity.iter().any(|t| t.topology == Topology::Zone);
            let zone_anti =
                g.c.anti_affinity
                    .iter()
                    .any(|t| t.topology == Topology::Zone);
            if zone_anti {
                0
            } else if zone_affinity {
                3
            } else if g.c.spreads.iter().any(|s| s.topology == Topology::Zone) {
                1
            } else {
                2
            }
        };
        order.sort_by_key(|g| (rank(&self.groups[*g]), *g));
        for g in order {
            let mut pods = std::mem::take(&mut self.groups[g].pods);
            if pods.is_empty() {
                continue;
            }
            if !self.groups[g].zone_bound {
                out.push((g, None, pods));
                continue;
            }
            sort_by_size(&mut pods, self.input.pods);
            let mut zone_types = vec![0usize; self.zones.len()];
            for (_, compat) in &self.groups[g].pools {
                for (z, n) in compat.zone_types.iter().enumerate() {
                    zone_types[z] = zone_types[z].max(*n);
                }
            }
            let mut zone_order: Vec<usize> = (0..self.zones.len())
                .filter(|z| zone_types[*z] > 0)
                .collect();
            zone_order.sort_by_key(|z| (std::cmp::Reverse(zone_types[*z]), *z));
            let mut per_zone: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            let bundled = self.groups[g].bundled;
            let mut bundle_zone: Option<Result<usize, String>> = None;
            for p in pods {
                if let Some(decided) = &bundle_zone {
                    // the rest of a hostname self-affinity group follows its first pod
                    let allowed = decided.clone().and_then(|z| {
                        self.zone_allows(g, z, true)
                            .or_else(|_| self.zone_allows(g, z, false))
                            .map(|()| z)
                    });
                    match allowed {
                        Ok(z) => {
                            self.count_zone(g, z);
                            per_zone.entry(z).or_default().push(p);
                        }
                        Err(reason) => self.unschedulable(
                            p,
                            format!(
                                "it must share a node with the other pods of its {} affinity, and {reason}",
                                labels::HOSTNAME
                            ),
                        ),
                    }
                    continue;
                }
                let choose = |solver: &Self, strict: bool| -> Result<usize, String> {
                    let mut best: Option<(i64, usize, usize)> = None;
                    let mut first_err = None;
                    for (rank, &z) in zone_order.iter().enumerate() {
                        match solver.zone_allows(g, z, strict) {
                            Ok(()) => {
                                let load = solver.zone_load(g, z);
                                if best.is_none_or(|(l, r, _)| (load, rank) < (l, r)) {
                                    best = Some((load, rank, z));
                                }
                            }
                            Err(e) => {
                                first_err.get_or_insert(e);
                            }
                        }
                    }
                    best.map(|(_, _, z)| z).ok_or_else(|| {
                        first_err
                            .unwrap_or_else(|| "no zone offers an allowed instance type".into())
                    })
                };
                let chosen = choose(self, true).or_else(|e| choose(self, false).map_err(|_| e));
                if bundled {
                    bundle_zone = Some(chosen.clone());
                }
                match chosen {
                    Ok(z) => {
                        self.count_zone(g, z);
                        per_zone.entry(z).or_default().push(p);
                    }
                    Err(reason) => self.unschedulable(p, reason),
                }
            }
            for (z, pods) in per_zone {
                out.push((g, Some(z), pods));
            }
        }
        out
    }

    /// Ordering key among allowed zones: follow affinity (more matching pods first), else fewest
    /// pods selected by the group's spreads and by selectors that select the group.
    fn zone_load(&self, g: usize, z: usize) -> i64 {
        let c = &self.groups[g].c;
        let mut load = 0;
        for t in c.affinity.iter().filter(|t| t.topology == Topology::Zone) {
            if let Some(id) = self.z_counters.iter().position(|x| *x == t.selector) {
                load -= self.z_counts[id][z] * 1_000_000;
            }
        }
        for (id, s) in self.z_counters.iter().enumerate() {
            if s.matches(&c.namespace, &c.labels)
                || c.spreads
                    .iter()
                    .any(|sp| sp.topology == Topology::Zone && sp.selector == *s)
            {
                load += self.z_counts[id][z];
            }
        }
        load
    }

    // --- 5. packing --------------------------------------------------------------------------

    fn pack(&mut self, bucketed: Vec<(usize, Option<usize>, Vec<usize>)>) {
        // Current pool choice per group: index into group.pools.
        let mut attempt: Vec<usize> = vec![0; self.groups.len()];
        let mut work = bucketed;
        let mut last_reason: HashMap<usize, String> = HashMap::new();
        loop {
            // bucket key: (pool, zone) → classes
            // Groups with their own zone or capacity-type requirements get buckets of their own,
            // so every class of a bucket can use the offering chosen per type.
            let mut buckets: BTreeMap<(usize, Option<usize>, String), Vec<Class>> = BTreeMap::new();
            for (g, zone, pods) in work.drain(..) {
                let Some((pool, _)) = self.groups[g].pools.get(attempt[g]) else {
                    let reason = last_reason
                        .get(&g)
                        .cloned()
                        .unwrap_or_else(|| no_pool_reason(&self.groups[g], self.input.pools));
                    for p in pods {
                        self.unschedulable(p, reason.clone());
                    }
                    continue;
                };
                let classes = buckets
                    .entry((*pool, zone, self.groups[g].offer_key.clone()))
                    .or_default();
                if self.groups[g].bundled {
                    classes.push(Class {
                        group: g,
                        req: pods
                            .iter()
                            .map(|p| self.input.pods[*p].requests)
                            .fold(Resources::ZERO, |a, b| a + b),
                        pods: vec![pods[0]],
                        bundle: pods,
                    });
                    continue;
                }
                let mut by_req: BTreeMap<Resources, Vec<usize>> = BTreeMap::new();
                for p in pods {
                    by_req
                        .entry(self.input.pods[p].requests)
                        .or_default()
                        .push(p);
                }
                for (req, mut pods) in by_req {
                    pods.reverse();
                    classes.push(Class {
                        group: g,
                        req,
                        pods,
                        bundle: Vec::new(),
                    });
                }
            }
            let mut spill: Vec<(usize, Option<usize>, Vec<usize>)> = Vec::new();
            for ((pool, zone, _), classes) in buckets {
                let left = self.pack_bucket(pool, zone, classes);
                for (class, reason) in left {
                    let g = class.group;
                    let pods = if class.bundle.is_empty() {
                        class.pods
                    } else {
                        class.bundle
                    };
                    match reason {
                        Leftover::Limits(reason) => {
                            last_reason.insert(g, reason);
                            spill.push((g, zone, pods));
                        }
                        Leftover::NoFit(reason) => {
                            for p in pods {
                                self.unschedulable(p, reason.clone());
                            }
                        }
                    }
                }
            }
            if spill.is_empty() {
                break;
            }
            let mut bumped = std::collections::BTreeSet::new();
            for (g, _, _) in &spill {
                if bumped.insert(*g) {
                    attempt[*g] += 1;
                }
            }
            // Zone-bound pods keep their zone in the next pool only if it offers it.
            work = spill
                .into_iter()
                .map(|(g, zone, pods)| {
                    let zone = zone.filter(|z| {
                        self.groups[g]
                            .pools
                            .get(attempt[g])
                            .is_some_and(|(_, c)| c.zone_types[*z] > 0)
                    });
                    (g, zone.or(None), pods)
                })
                .collect();
        }
    }

    /// Packs one bucket twice, with and without the LP-guided first phase, and keeps the plan
    /// that places more pods, then the cheaper one (the LP split wins on large batches, the plain
    /// greedy on some small ones). Returns what could not be placed and why.
    fn pack_bucket(
        &mut self,
        pool: usize,
        zone: Option<usize>,
        classes: Vec<Class>,
    ) -> Vec<(Class, Leftover)> {
        let start = self.drafts.len();
        let usage = self.usage[pool];
        let left_a = self.pack_bucket_with(pool, zone, classes.clone(), true);
        let drafts_a = self.drafts.split_off(start);
        let usage_a = self.usage[pool];
        self.usage[pool] = usage;
        let left_b = self.pack_bucket_with(pool, zone, classes, false);
        let unplaced = |left: &[(Class, Leftover)]| -> usize {
            left.iter()
                .map(|(c, _)| c.pods.len().max(c.bundle.len()))
                .sum()
        };
        let cost = |solver: &Self, drafts: &[Draft]| -> f64 {
            drafts.iter().map(|d| solver.repriced(d)).sum()
        };
        let a = (unplaced(&left_a), cost(self, &drafts_a));
        let b = (unplaced(&left_b), cost(self, &self.drafts[start..]));
        if a.0 < b.0 || (a.0 == b.0 && a.1 <= b.1 + 1e-9) {
            self.drafts.truncate(start);
            self.drafts.extend(drafts_a);
            self.usage[pool] = usage_a;
            left_a
        } else {
            left_b
        }
    }

    /// The price a draft will have after [`Self::finish`] re-prices it: the cheapest type that
    /// holds its pods in its zone and capacity type (only looked for when the node is less than
    /// 90 % used; a full node keeps its type).
    fn repriced(&self, d: &Draft) -> f64 {
        let catalog = self.input.catalog;
        let chosen = &catalog.types[d.type_idx].offerings[d.offering];
        let full = (0..DIMS).any(|k| d.room.0[k] > 0 && d.used.0[k] * 10 >= d.room.0[k] * 9);
        if full {
            return chosen.price;
        }
        let mut best = chosen.price;
        for (t, it) in catalog.types.iter().enumerate() {
            let Some((room, _)) = self.type_room[d.pool][t] else {
                continue;
            };
            if !d.used.fits_in(&room)
                || !d
                    .groups
                    .iter()
                    .all(|g| self.group_can_use_type(*g, d.pool, t))
            {
                continue;
            }
            for off in &it.offerings {
                if off.available
                    && off.price < best
                    && off.zone == chosen.zone
                    && off.capacity_type == chosen.capacity_type
                {
                    best = off.price;
                }
            }
        }
        best
    }

    fn group_can_use_type(&self, g: usize, pool: usize, t: usize) -> bool {
        self.groups[g]
            .pools
            .iter()
            .find(|(p, _)| *p == pool)
            .is_some_and(|(_, c)| c.masks[t] != 0)
    }

    fn pack_bucket_with(
        &mut self,
        pool: usize,
        zone: Option<usize>,
        mut classes: Vec<Class>,
        lp_split: bool,
    ) -> Vec<(Class, Leftover)> {
        let catalog = self.input.catalog;
        let pool_spec = &self.input.pools[pool];
        let compat_of = |solver: &Self, g: usize| -> std::rc::Rc<Compat> {
            solver.groups[g]
                .pools
                .iter()
                .find(|(p, _)| *p == pool)
                .map(|(_, c)| c.clone())
                .expect("bucketed groups use the pool")
        };
        let compats: Vec<std::rc::Rc<Compat>> =
            classes.iter().map(|c| compat_of(self, c.group)).collect();
        // The offering per type for this bucket: the cheapest one any class may use.
        let mut offer: Vec<Option<(usize, f64)>> = vec![None; catalog.types.len()];
        for (t, it) in catalog.types.iter().enumerate() {
            if self.type_room[pool][t].is_none() {
                continue;
            }
            let mask = compats.iter().fold(0u64, |m, c| m | c.masks[t]);
            if mask == 0 {
                continue;
            }
            offer[t] = cheapest(it, mask, zone, &self.zones);
        }
        let mut leftovers = Vec::new();
        if lp_split {
            self.split_by_lp(pool, zone, &mut classes, &offer);
        }
        let mut duals: Option<Duals> = None;
        let mut demand_at_duals = 0i64;
        let mut order: Vec<usize> = Vec::new();
        loop {
            classes.retain(|c| !c.pods.is_empty());
            if classes.is_empty() {
                break;
            }
            let compats: Vec<std::rc::Rc<Compat>> =
                classes.iter().map(|c| compat_of(self, c.group)).collect();
            let demand = classes.iter().fold(Resources::ZERO, |acc, c| {
                let mut r = c.req;
                for v in &mut r.0 {
                    *v *= c.pods.len() as i64;
                }
                acc + r
            });
            // Re-price when the demand has shrunk by a quarter.
            if duals.is_none() || demand.0[CPU] * 4 < demand_at_duals * 3 {
                let offers: Vec<(Resources, f64)> = (0..catalog.types.len())
                    .filter_map(|t| {
                        let (o, price) = offer[t]?;
                        let _ = o;
                        Some((self.type_room[pool][t]?.0, price))
                    })
                    .collect();
                duals =
                    Some(lp::solve(&demand, &offers).unwrap_or_else(|| fallback_duals(&offers)));
                demand_at_duals = demand.0[CPU];
                let d = duals.as_ref().unwrap();
                order = (0..catalog.types.len())
                    .filter(|t| offer[*t].is_some())
                    .collect();
                let eff = |t: usize| {
                    let (room, _) = self.type_room[pool][t].unwrap();
                    d.value(&room) / offer[t].unwrap().1.max(1e-9)
                };
                order.sort_by(|a, b| eff(*b).total_cmp(&eff(*a)).then(a.cmp(b)));
            }
            let d = duals.unwrap();
            // Candidates: the most efficient types that can hold at least one remaining class,
            // within the pool's limits.
            let mut best: Option<(f64, f64, Draft, Vec<(usize, usize)>)> = None;
            let mut tried = 0;
            let mut limited = false;
            // At most PER_FAMILY sizes of one family, so the candidates span the families the
            // bound mixes (e.g. c and r for cpu-heavy plus memory-heavy pods).
            let mut families: Vec<(&str, usize)> = Vec::new();
            for &t in &order {
                if tried >= CANDIDATES {
                    break;
                }
                let family = catalog.types[t].family.as_str();
                let seen = families.iter().position(|(f, _)| *f == family);
                if seen.is_some_and(|i| families[i].1 >= PER_FAMILY) {
                    continue;
                }
                let (room, capacity) = self.type_room[pool][t].unwrap();
                let (o, price) = offer[t].unwrap();
                let fits_some = classes
                    .iter()
                    .zip(&compats)
                    .any(|(c, compat)| compat.masks[t] & (1 << o) != 0 && c.req.fits_in(&room));
                if !fits_some {
                    continue;
                }
                if self.usage[pool].room(&pool_spec.limits, &capacity) < 1 {
                    limited = true;
                    continue;
                }
                tried += 1;
                match seen {
                    Some(i) => families[i].1 += 1,
                    None => families.push((family, 1)),
                }
                let (draft, taken) = self.fill(pool, t, o, room, &classes, &compats, &d);
                if taken.is_empty() {
                    continue;
                }
                let value = d.value(&draft.used);
                let eff = value / price.max(1e-9);
                let better = match &best {
                    None => true,
                    Some((be, bv, _, _)) => eff > be * 1.005 || (eff > be * 0.995 && value > *bv),
                };
                if better {
                    best = Some((eff, value, draft, taken));
                }
            }
            let Some((_, _, draft, taken)) = best else {
                // Nothing fits: explain per class, and stop.
                for class in classes.drain(..) {
                    let reason = if limited {
                        Leftover::Limits(self.limits_reason(pool))
                    } else {
                        Leftover::NoFit(self.no_fit_reason(pool, zone, &class))
                    };
                    leftovers.push((class, reason));
                }
                break;
            };
            self.commit(pool, zone, &draft, &taken, &mut classes, i64::MAX);
        }
        leftovers
    }

    /// Creates nodes like `draft` holding `taken` pods of `classes`, as many times as every class
    /// it uses has pods left (at most `max`), within the pool's limits. Returns how many.
    fn commit(
        &mut self,
        pool: usize,
        zone: Option<usize>,
        draft: &Draft,
        taken: &[(usize, usize)],
        classes: &mut [Class],
        max: i64,
    ) -> i64 {
        let (_, capacity) = self.type_room[pool][draft.type_idx].unwrap();
        let limits = self.input.pools[pool].limits;
        let reps = taken
            .iter()
            .map(|(ci, n)| classes[*ci].pods.len() / n)
            .min()
            .unwrap_or(0) as i64;
        let reps = reps.min(self.usage[pool].room(&limits, &capacity)).min(max);
        for _ in 0..reps {
            let mut node = draft.clone();
            node.pods.clear();
            for (ci, n) in taken {
                let class = &mut classes[*ci];
                for _ in 0..*n {
                    let p = class.pods.pop().expect("reps bounded by pods left");
                    if class.bundle.is_empty() {
                        node.pods.push(p);
                    } else {
                        node.pods.extend(class.bundle.iter().copied());
                    }
                }
            }
            node.zone_bound = zone.is_some();
            self.usage[pool].add(&capacity, 1);
            self.drafts.push(node);
        }
        reps
    }

    /// The LP-guided first phase of packing a bucket: decides which share of each pod shape
    /// (cpu-to-memory ratio) goes to which instance type by the LP over shapes × types, then fills
    /// whole nodes of each type from its share. Pods of partly filled nodes stay in `classes`
    /// for the greedy phase. Without it, the greedy phase gives the first nodes the pods that
    /// fit them best and leaves a lopsided remainder (e.g. only cpu-heavy pods) for the last.
    fn split_by_lp(
        &mut self,
        pool: usize,
        zone: Option<usize>,
        classes: &mut [Class],
        offer: &[Option<(usize, f64)>],
    ) {
        let catalog = self.input.catalog;
        let total_pods: usize = classes.iter().map(|c| c.pods.len()).sum();
        if total_pods < 8 {
            return;
        }
        // Shapes: log2 of GiB per core, in half steps.
        let shape = |r: &Resources| -> i32 {
            let cpu = r.0[CPU] as f64 / 1000.0;
            let mem = r.0[MEMORY] as f64 / (1u64 << 30) as f64;
            if cpu <= 0.0 || mem <= 0.0 {
                return if cpu <= 0.0 { 100 } else { -100 };
            }
            ((mem / cpu).log2() * 2.0).round().clamp(-40.0, 40.0) as i32
        };
        let mut shapes: BTreeMap<i32, Resources> = BTreeMap::new();
        let mut class_shape = Vec::with_capacity(classes.len());
        for c in classes.iter() {
            let k = shape(&c.req);
            class_shape.push(k);
            let mut r = c.req;
            for v in &mut r.0 {
                *v *= c.pods.len() as i64;
            }
            *shapes.entry(k).or_default() += r;
        }
        let shape_keys: Vec<i32> = shapes.keys().copied().collect();
        // Candidate types: for each shape, the 3 cheapest at hosting it alone (fractionally).
        let offered: Vec<usize> = (0..catalog.types.len())
            .filter(|t| offer[*t].is_some() && self.type_room[pool][*t].is_some())
            .collect();
        let mut types: Vec<usize> = Vec::new();
        for r in shapes.values() {
            let cost = |t: usize| {
                let (room, _) = self.type_room[pool][t].unwrap();
                let mut frac: f64 = 0.0;
                for d in 0..DIMS {
                    if r.0[d] > 0 {
                        if room.0[d] == 0 {
                            return f64::INFINITY;
                        }
                        frac = frac.max(r.0[d] as f64 / room.0[d] as f64);
                    }
                }
                frac * offer[t].unwrap().1
            };
            let mut ranked: Vec<(f64, usize)> = offered
                .iter()
                .map(|t| (cost(*t), *t))
                .filter(|(c, _)| c.is_finite())
                .collect();
            ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let mut families: Vec<&str> = Vec::new();
            for (_, t) in ranked {
                let f = catalog.types[t].family.as_str();
                if families.contains(&f) {
                    continue;
                }
                families.push(f);
                if !types.contains(&t) {
                    types.push(t);
                }
                if families.len() >= 3 {
                    break;
                }
            }
        }
        // ... plus the types the bound of the whole bucket prices best (one per family).
        let offers_all: Vec<(Resources, f64)> = offered
            .iter()
            .map(|t| (self.type_room[pool][*t].unwrap().0, offer[*t].unwrap().1))
            .collect();
        let total_demand = shapes.values().fold(Resources::ZERO, |a, b| a + *b);
        if let Some(d) = lp::solve(&total_demand, &offers_all) {
            let mut ranked: Vec<(f64, usize)> = offered
                .iter()
                .map(|t| {
                    (
                        d.value(&self.type_room[pool][*t].unwrap().0) / offer[*t].unwrap().1,
                        *t,
                    )
                })
                .collect();
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut families: Vec<&str> = Vec::new();
            for (_, t) in ranked {
                let f = catalog.types[t].family.as_str();
                if families.contains(&f) {
                    continue;
                }
                families.push(f);
                if !types.contains(&t) {
                    types.push(t);
                }
                if families.len() >= 6 {
                    break;
                }
            }
        }
        if types.len() < 2 {
            return;
        }
        // LP: minimise Σ price_t n_t with Σ_s f_st R_s ≤ n_t A_t, Σ_t f_st = 1.
        use microlp::{ComparisonOp, OptimizationDirection, Problem};
        const SCALE: [f64; DIMS] = [1000.0, 1073741824.0, 1073741824.0, 1.0, 1.0, 1.0];
        let mut problem = Problem::new(OptimizationDirection::Minimize);
        let n: Vec<_> = types
            .iter()
            .map(|t| problem.add_var(offer[*t].unwrap().1, (0.0, f64::INFINITY)))
            .collect();
        let f: Vec<Vec<_>> = shape_keys
            .iter()
            .map(|_| {
                types
                    .iter()
                    .map(|_| problem.add_var(0.0, (0.0, 1.0)))
                    .collect()
            })
            .collect();
        for fs in &f {
            let expr: Vec<_> = fs.iter().map(|v| (*v, 1.0)).collect();
            problem.add_constraint(expr.as_slice(), ComparisonOp::Eq, 1.0);
        }
        for (ti, &t) in types.iter().enumerate() {
            let (room, _) = self.type_room[pool][t].unwrap();
            for d in 0..DIMS {
                let mut expr: Vec<_> = Vec::new();
                for (si, k) in shape_keys.iter().enumerate() {
                    let r = shapes[k].0[d];
                    if r > 0 {
                        expr.push((f[si][ti], r as f64 / SCALE[d]));
                    }
                }
                if expr.is_empty() {
                    continue;
                }
                expr.push((n[ti], -(room.0[d] as f64) / SCALE[d]));
                problem.add_constraint(expr.as_slice(), ComparisonOp::Le, 0.0);
            }
        }
        let Some(solution) = problem.solve().ok().and_then(|o| o.into_solution().ok()) else {
            return;
        };
        let offers: Vec<(Resources, f64)> = offered
            .iter()
            .map(|t| (self.type_room[pool][*t].unwrap().0, offer[*t].unwrap().1))
            .collect();
        let total = classes.iter().fold(Resources::ZERO, |acc, c| {
            let mut r = c.req;
            for v in &mut r.0 {
                *v *= c.pods.len() as i64;
            }
            acc + r
        });
        let Some(duals) = lp::solve(&total, &offers) else {
            return;
        };
        // Share each class's pods out by its shape's fractions.
        let compats: Vec<std::rc::Rc<Compat>> = classes
            .iter()
            .map(|c| {
                self.groups[c.group]
                    .pools
                    .iter()
                    .find(|(p, _)| *p == pool)
                    .map(|(_, x)| x.clone())
                    .expect("bucketed groups use the pool")
            })
            .collect();
        for (ti, &t) in types.iter().enumerate() {
            let (o, _) = offer[t].unwrap();
            let mut share: Vec<Class> = Vec::new();
            let mut share_of: Vec<usize> = Vec::new();
            for (ci, c) in classes.iter_mut().enumerate() {
                if compats[ci].masks[t] & (1 << o) == 0 || c.pods.is_empty() {
                    continue;
                }
                let si = shape_keys
                    .iter()
                    .position(|k| *k == class_shape[ci])
                    .unwrap();
                let frac = solution.var_value(f[si][ti]).clamp(0.0, 1.0);
                let want = (frac * c.pods.len() as f64).round() as usize;
                if want == 0 {
                    continue;
                }
                let keep = c.pods.len() - want.min(c.pods.len());
                let moved = c.pods.split_off(keep);
                share.push(Class {
                    group: c.group,
                    req: c.req,
                    pods: moved,
                    bundle: c.bundle.clone(),
                });
                share_of.push(ci);
            }
            if share.is_empty() {
                continue;
            }
            let share_compats: Vec<std::rc::Rc<Compat>> =
                share_of.iter().map(|ci| compats[*ci].clone()).collect();
            let (room, capacity) = self.type_room[pool][t].unwrap();
            let price = offer[t].unwrap().1;
            // Whole, well-filled nodes only; the rest goes back.
            loop {
                if self.usage[pool].room(&self.input.pools[pool].limits, &capacity) < 1 {
                    break;
                }
                let (draft, taken) = self.fill(pool, t, o, room, &share, &share_compats, &duals);
                if taken.is_empty() || duals.value(&draft.used) < 0.95 * price {
                    break;
                }
                if self.commit(pool, zone, &draft, &taken, &mut share, i64::MAX) == 0 {
                    break;
                }
            }
            for (class, ci) in share.into_iter().zip(share_of) {
                classes[ci].pods.extend(class.pods);
            }
        }
    }

    /// Greedily fills one node of type `t` (offering `o`) from `classes`; returns the draft and
    /// (class index, pods taken).
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &self,
        pool: usize,
        t: usize,
        o: usize,
        room: Resources,
        classes: &[Class],
        compats: &[std::rc::Rc<Compat>],
        d: &Duals,
    ) -> (Draft, Vec<(usize, usize)>) {
        let mut draft = Draft {
            pool,
            type_idx: t,
            offering: o,
            room,
            used: Resources::ZERO,
            pods: Vec::new(),
            groups: Vec::new(),
            counters: Vec::new(),
            zone_bound: false,
        };
        let mut taken: Vec<(usize, usize)> = Vec::new();
        let mut left: Vec<usize> = classes.iter().map(|c| c.pods.len()).collect();
        loop {
            let rem = room - draft.used;
            let mut best: Option<(f64, usize, i64)> = None;
            for (ci, class) in classes.iter().enumerate() {
                if left[ci] == 0 || compats[ci].masks[t] & (1 << o) == 0 || !class.req.fits_in(&rem)
                {
                    continue;
                }
                let cap = self.draft_room(class.group, &draft);
                if cap < 1 {
                    continue;
                }
                // share of the scarcest remaining resource one pod takes
                let mut share: f64 = 0.0;
                let mut fit = i64::MAX;
                for k in 0..DIMS {
                    if class.req.0[k] > 0 {
                        share = share.max(class.req.0[k] as f64 / rem.0[k] as f64);
                        fit = fit.min(rem.0[k] / class.req.0[k]);
                    }
                }
                let score = (d.value(&class.req) + 1e-9) / share.max(1e-12);
                let fit = fit.min(cap).min(left[ci] as i64);
                let better = match best {
                    None => true,
                    Some((s, bci, _)) => {
                        score > s * (1.0 + 1e-9)
                            || (score >= s * (1.0 - 1e-9) && classes[bci].req < class.req)
                    }
                };
                if better {
                    best = Some((score, ci, fit));
                }
            }
            let Some((_, ci, fit)) = best else { break };
            let n = if fit as usize >= left[ci] {
                left[ci] as i64
            } else {
                (fit / 2).max(1)
            };
            let class = &classes[ci];
            for _ in 0..n {
                draft.used += class.req;
            }
            left[ci] -= n as usize;
            let g = class.group;
            if !draft.groups.contains(&g) {
                draft.groups.push(g);
            }
            for &c in &self.groups[g].h_inc {
                draft.bump(c, n);
            }
            match taken.iter_mut().find(|(x, _)| *x == ci) {
                Some((_, k)) => *k += n as usize,
                None => taken.push((ci, n as usize)),
            }
        }
        (draft, taken)
    }

    /// How many pods of group `g` the draft node can still take by hostname rules.
    fn draft_room(&self, g: usize, draft: &Draft) -> i64 {
        let group = &self.groups[g];
        // Anti-affinity of pods already on the node that selects this group.
        for &other in &draft.groups {
            for &(c, _) in &self.groups[other].h_anti {
                if group.h_inc.contains(&c) {
                    return 0;
                }
            }
        }
        self.hostname_room(g, &draft.counters)
    }

    fn limits_reason(&self, pool: usize) -> String {
        let p = &self.input.pools[pool];
        let u = &self.usage[pool];
        let mut parts = Vec::new();
        if let Some(cpu) = p.limits.cpu_millis {
            parts.push(format!("cpu {} of {}", fmt_cpu(u.cpu_millis), fmt_cpu(cpu)));
        }
        if let Some(mem) = p.limits.memory_bytes {
            parts.push(format!(
                "memory {}Gi of {}Gi",
                u.memory_bytes >> 30,
                mem >> 30
            ));
        }
        if let Some(nodes) = p.limits.nodes {
            parts.push(format!("nodes {} of {}", u.nodes, nodes));
        }
        format!(
            "nodepool {} has reached its limits ({} in use); no other pool can take the pod",
            p.name,
            parts.join(", ")
        )
    }

    fn no_fit_reason(&self, pool: usize, zone: Option<usize>, class: &Class) -> String {
        let p = &self.input.pools[pool];
        let where_ = zone.map_or(String::new(), |z| format!(" in zone {}", self.zones[z]));
        let what = if class.bundle.is_empty() {
            format!("requests {}", class.req)
        } else {
            format!(
                "must share one node with the {} other pods of its kubernetes.io/hostname affinity (together {})",
                class.bundle.len() - 1,
                class.req
            )
        };
        // the allowed type with the most of the first resource that does not fit
        let compat = self.groups[class.group]
            .pools
            .iter()
            .find(|(x, _)| *x == pool)
            .map(|(_, c)| c.clone());
        let mut largest: Option<(i64, &InstanceType, Resources)> = None;
        let mut blocking = None;
        if let Some(compat) = compat {
            for (t, it) in self.input.catalog.types.iter().enumerate() {
                if compat.masks[t] == 0 {
                    continue;
                }
                let Some((room, _)) = self.type_room[pool][t] else {
                    continue;
                };
                let slot = class.req.first_excess(&room).unwrap_or(CPU);
                blocking.get_or_insert(slot);
                let v = room.0[blocking.unwrap_or(CPU)];
                if largest.is_none_or(|(b, _, _)| v > b) {
                    largest = Some((v, it, room));
                }
            }
        }
        match largest {
            Some((_, it, room)) => format!(
                "it {what}, more than any instance type nodepool {}{where_} allows can give it (largest: {} with {} allocatable after DaemonSets)",
                p.name, it.name, room
            ),
            None => format!(
                "it {what}, and nodepool {}{where_} offers no instance type for it",
                p.name
            ),
        }
    }

    // --- 6. tails ----------------------------------------------------------------------------

    /// Empties the least efficient new nodes into spare room on others, where every rule allows.
    fn consolidate_tails(&mut self) {
        if self.drafts.len() < 2 {
            return;
        }
        let price = |s: &Self, d: &Draft| {
            let it = &s.input.catalog.types[d.type_idx];
            it.offerings[d.offering].price
        };
        // Least utilised first (by the scarcer of cpu and memory).
        let util = |d: &Draft| -> f64 {
            let c = d.used.0[CPU] as f64 / d.room.0[CPU].max(1) as f64;
            let m = d.used.0[MEMORY] as f64 / d.room.0[MEMORY].max(1) as f64;
            c.max(m)
        };
        let mut order: Vec<usize> = (0..self.drafts.len()).collect();
        order.sort_by(|a, b| {
            util(&self.drafts[*a])
                .total_cmp(&util(&self.drafts[*b]))
                .then(a.cmp(b))
        });
        let attempts = order.len().min(32);
        let mut removed = vec![false; self.drafts.len()];
        for &victim in order.iter().take(attempts) {
            if util(&self.drafts[victim]) > 0.6 {
                break;
            }
            let pods = self.drafts[victim].pods.clone();
            let mut moves: Vec<(usize, usize)> = Vec::new();
            let mut trial: Vec<Draft> = Vec::new();
            let mut trial_idx: Vec<usize> = Vec::new();
            let mut ok = true;
            'pods: for &p in &pods {
                let req = self.input.pods[p].requests;
                let g = self.group_of(p);
                let Some(g) = g else {
                    ok = false;
                    break;
                };
                for target in 0..self.drafts.len() {
                    if target == victim || removed[target] {
                        continue;
                    }
                    let pos = trial_idx.iter().position(|x| *x == target);
                    let d = pos.map_or(&self.drafts[target], |i| &trial[i]);
                    if d.pool != self.drafts[victim].pool
                        || ((self.groups[g].zone_bound || self.drafts[victim].zone_bound)
                            && !self.same_zone(d, &self.drafts[victim]))
                        || !(d.used + req).fits_in(&d.room)
                        || !self.group_can_use(g, d)
                        || self.draft_room(g, d) < 1
                        || self.groups[g].bundled
                    {
                        continue;
                    }
                    let mut d = d.clone();
                    d.zone_bound |= self.groups[g].zone_bound;
                    d.used += req;
                    d.pods.push(p);
                    if !d.groups.contains(&g) {
                        d.groups.push(g);
                    }
                    for &c in &self.groups[g].h_inc {
                        d.bump(c, 1);
                    }
                    match pos {
                        Some(i) => trial[i] = d,
                        None => {
                            trial.push(d);
                            trial_idx.push(target);
                        }
                    }
                    moves.push((p, target));
                    continue 'pods;
                }
                ok = false;
                break;
            }
            if ok && !pods.is_empty() {
                let _ = price(self, &self.drafts[victim]);
                for (i, target) in trial_idx.into_iter().enumerate() {
                    self.drafts[target] = trial[i].clone();
                }
                let victim_draft = &self.drafts[victim];
                let (_, capacity) =
                    self.type_room[victim_draft.pool][victim_draft.type_idx].unwrap();
                let pool = victim_draft.pool;
                self.usage[pool].remove(&capacity);
                removed[victim] = true;
            }
        }
        let mut i = 0;
        self.drafts.retain(|_| {
            let keep = !removed[i];
            i += 1;
            keep
        });
    }

    fn group_of(&self, p: usize) -> Option<usize> {
        self.pod_group.get(p).copied().filter(|g| *g != usize::MAX)
    }

    fn same_zone(&self, a: &Draft, b: &Draft) -> bool {
        let ta = &self.input.catalog.types[a.type_idx];
        let tb = &self.input.catalog.types[b.type_idx];
        ta.offerings[a.offering].zone == tb.offerings[b.offering].zone
    }

    fn group_can_use(&self, g: usize, d: &Draft) -> bool {
        self.groups[g]
            .pools
            .iter()
            .find(|(p, _)| *p == d.pool)
            .is_some_and(|(_, c)| c.masks[d.type_idx] & (1 << d.offering) != 0)
    }

    /// Re-prices each new node to the cheapest type that holds its pods, lists the alternatives,
    /// and writes the plan.
    fn finish(mut self) -> Plan {
        let catalog = self.input.catalog;
        let drafts = std::mem::take(&mut self.drafts);
        let mut nodes = Vec::with_capacity(drafts.len());
        // Cache of candidates by (pool, zone, capacity type, groups) → sorted (price, type, offering)
        let mut cache: HashMap<
            (usize, String, CapacityType, Vec<usize>),
            Vec<(f64, usize, usize)>,
        > = HashMap::new();
        for d in drafts {
            let chosen = &catalog.types[d.type_idx].offerings[d.offering];
            let zone = chosen.zone.clone();
            let ct = chosen.capacity_type;
            let mut groups = d.groups.clone();
            groups.sort_unstable();
            let key = (d.pool, zone.clone(), ct, groups.clone());
            let list = cache.entry(key).or_insert_with(|| {
                let mut list = Vec::new();
                for (t, it) in catalog.types.iter().enumerate() {
                    if self.type_room[d.pool][t].is_none() {
                        continue;
                    }
                    let mask = groups.iter().fold(u64::MAX, |m, g| {
                        m & self.groups[*g]
                            .pools
                            .iter()
                            .find(|(p, _)| *p == d.pool)
                            .map_or(0, |(_, c)| c.masks[t])
                    });
                    if let Some((o, off)) = it.offerings.iter().enumerate().find(|(o, off)| {
                        mask & (1 << o) != 0
                            && off.zone == zone
                            && off.capacity_type == ct
                            && off.available
                    }) {
                        list.push((off.price, t, o));
                    }
                }
                list.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                list
            });
            // Re-pricing (and every alternative) must stay within the pool's limits.
            let (_, current_capacity) = self.type_room[d.pool][d.type_idx].unwrap();
            let limits = self.input.pools[d.pool].limits;
            let mut others = self.usage[d.pool];
            others.remove(&current_capacity);
            let fitting: Vec<(f64, usize, usize)> = list
                .iter()
                .filter(|(_, t, _)| {
                    self.type_room[d.pool][*t].is_some_and(|(room, capacity)| {
                        d.used.fits_in(&room) && others.room(&limits, &capacity) >= 1
                    })
                })
                .copied()
                .collect();
            let (price, t, o) =
                fitting
                    .first()
                    .copied()
                    .unwrap_or((chosen.price, d.type_idx, d.offering));
            let (_, new_capacity) = self.type_room[d.pool][t].unwrap();
            others.add(&new_capacity, 1);
            self.usage[d.pool] = others;
            let it = &catalog.types[t];
            let pool = &self.input.pools[d.pool];
            let mut pods = d.pods.clone();
            pods.sort_unstable();
            nodes.push(PlannedNode {
                node_pool: pool.name.clone(),
                instance_type: it.name.clone(),
                zone: it.offerings[o].zone.clone(),
                capacity_type: it.offerings[o].capacity_type,
                price_per_hour: price,
                price_estimated: it.offerings[o].price_estimated,
                pods: pods
                    .iter()
                    .map(|p| self.input.pods[*p].key.clone())
                    .collect(),
                alternatives: fitting
                    .iter()
                    .filter(|(_, x, _)| *x != t)
                    .take(MAX_ALTERNATIVES)
                    .map(|(_, x, _)| catalog.types[*x].name.clone())
                    .collect(),
                requests: d.used + pool.daemon_overhead,
                allocatable: it.allocatable(&pool.kubelet),
                pod_indices: pods,
            });
        }
        let total = nodes.iter().map(|n| n.price_per_hour).sum::<f64>();
        let mut unschedulable = self.unschedulable;
        unschedulable.sort_by_key(|u| u.pod_index);
        let mut placements = self.placements;
        placements.sort_by_key(|p| p.pod_index);
        Plan {
            nodes,
            total_price_per_hour: (total * 1e6).round() / 1e6,
            unschedulable,
            placements,
        }
    }
}

enum Leftover {
    Limits(String),
    NoFit(String),
}

fn intern(list: &mut Vec<Selector>, s: &Selector) -> usize {
    match list.iter().position(|x| x == s) {
        Some(i) => i,
        None => {
            list.push(s.clone());
            list.len() - 1
        }
    }
}

fn sort_by_size(pods: &mut [usize], all: &[PendingPod]) {
    pods.sort_by(|a, b| all[*b].requests.cmp(&all[*a].requests).then(a.cmp(b)));
}

fn fmt_cpu(millis: i64) -> String {
    if millis % 1000 == 0 {
        format!("{}", millis / 1000)
    } else {
        format!("{millis}m")
    }
}

/// The cheapest available offering of `it` within `mask` (and `zone` when given).
fn cheapest(
    it: &InstanceType,
    mask: u64,
    zone: Option<usize>,
    zones: &[String],
) -> Option<(usize, f64)> {
    it.offerings
        .iter()
        .enumerate()
        .filter(|(o, off)| {
            mask & (1 << o) != 0 && off.available && zone.is_none_or(|z| off.zone == zones[z])
        })
        .min_by(|(_, a), (_, b)| {
            a.price
                .total_cmp(&b.price)
                .then(a.capacity_type.cmp(&b.capacity_type))
                .then(a.zone.cmp(&b.zone))
        })
        .map(|(o, off)| (o, off.price))
}

/// Resource prices when the LP cannot be solved: each resource at its cheapest price per unit,
/// split evenly.
fn fallback_duals(offers: &[(Resources, f64)]) -> Duals {
    let mut y = [0.0; DIMS];
    for (d, slot) in y.iter_mut().enumerate() {
        *slot = offers
            .iter()
            .filter(|(a, _)| a.0[d] > 0)
            .map(|(a, p)| p / a.0[d] as f64)
            .fold(f64::INFINITY, f64::min);
        if !slot.is_finite() {
            *slot = 0.0;
        }
        *slot /= 2.0;
    }
    Duals { y, bound: 0.0 }
}

pub(crate) fn untolerated<'t>(taints: &'t [Taint], c: &Constraints) -> Option<&'t Taint> {
    taints.iter().find(|taint| {
        taint.effect != TaintEffect::PreferNoSchedule
            && !c
                .tolerations
                .iter()
                .any(|t| taint.is_tolerated_by(&t.to_toleration()))
    })
}

fn describe_taint(t: &Taint) -> String {
    match &t.value {
        Some(v) => format!("{}={}:{}", t.key, v, t.effect.as_str()),
        None => format!("{}:{}", t.key, t.effect.as_str()),
    }
}

/// Whether a node with these labels satisfies the pod's node selector and required affinity.
fn node_labels_satisfy(node: &BTreeMap<String, String>, c: &Constraints) -> bool {
    let ok = |r: &Requirement| r.allows(node.get(&r.key).map(String::as_str));
    c.node_selector.iter().all(ok)
        && (c.node_affinity.is_empty() || c.node_affinity.iter().any(|term| term.iter().all(ok)))
}

/// The value a new node of `pool`, type `it` and offering would carry for `key`; `Many` when the
/// pool leaves it open (a requirement on a custom key).
enum NodeValue<'v> {
    One(std::borrow::Cow<'v, str>),
    Many(&'v Requirement),
    Absent,
}

fn node_value<'v>(pool: &'v Pool, it: &InstanceType, key: &str, region: &str) -> NodeValue<'v> {
    if labels::is_instance_label(key) {
        return match it.label(key) {
            Some(v) => NodeValue::One(std::borrow::Cow::Owned(v)),
            None => NodeValue::Absent,
        };
    }
    match key {
        labels::NODEPOOL => return NodeValue::One(std::borrow::Cow::Borrowed(pool.name.as_str())),
        labels::REGION => return NodeValue::One(std::borrow::Cow::Owned(region.to_owned())),
        _ => {}
    }
    if let Some(v) = pool.labels.get(key) {
        return NodeValue::One(std::borrow::Cow::Borrowed(v.as_str()));
    }
    match pool.requirements.iter().find(|r| r.key == key) {
        Some(r) => NodeValue::Many(r),
        None => NodeValue::Absent,
    }
}

/// Whether a pod requirement can hold on a node whose value for the key is `value`.
fn allows(req: &Requirement, value: &NodeValue<'_>) -> bool {
    match value {
        NodeValue::One(v) => req.allows(Some(v)),
        NodeValue::Absent => req.allows(None),
        NodeValue::Many(pool_req) => match pool_req.operator {
            crate::model::Operator::In => pool_req.values.iter().any(|v| req.allows(Some(v))),
            crate::model::Operator::Exists | crate::model::Operator::NotIn => {
                // the node gets some value the pool allows; the pod can pick it if its own
                // requirement admits any value the pool does not rule out
                match req.operator {
                    crate::model::Operator::In => {
                        req.values.iter().any(|v| pool_req.allows(Some(v)))
                    }
                    crate::model::Operator::DoesNotExist => false,
                    _ => true,
                }
            }
            crate::model::Operator::DoesNotExist => req.allows(None),
            _ => true,
        },
    }
}

/// Offerings a group may use in a pool.
fn compat(catalog: &Catalog, pool: &Pool, zones: &[String], c: &Constraints) -> Compat {
    let mut masks = vec![0u64; catalog.types.len()];
    let mut zone_types = vec![0usize; zones.len()];
    let mut any = false;
    let terms: Vec<Vec<&Requirement>> = if c.node_affinity.is_empty() {
        vec![c.node_selector.iter().collect()]
    } else {
        c.node_affinity
            .iter()
            .map(|t| c.node_selector.iter().chain(t.iter()).collect())
            .collect()
    };
    for (t, it) in catalog.types.iter().enumerate() {
        if it.offerings.len() > 64 {
            continue;
        }
        // pool requirements on type labels
        let pool_ok = pool.requirements.iter().all(|r| {
            labels::is_offering_label(&r.key)
                || match node_value(pool, it, &r.key, &catalog.region) {
                    NodeValue::One(v) => r.allows(Some(&v)),
                    NodeValue::Absent => r.allows(None),
                    NodeValue::Many(_) => true,
                }
        });
        if !pool_ok {
            continue;
        }
        let mut mask = 0u64;
        for term in &terms {
            let type_ok = term.iter().all(|r| {
                labels::is_offering_label(&r.key)
                    || allows(r, &node_value(pool, it, &r.key, &catalog.region))
            });
            if !type_ok {
                continue;
            }
            for (o, off) in it.offerings.iter().enumerate() {
                if !off.available {
                    continue;
                }
                let value = |key: &str| -> Option<&str> {
                    match key {
                        labels::ZONE | labels::ZONE_BETA => Some(off.zone.as_str()),
                        labels::CAPACITY_TYPE => Some(off.capacity_type.as_str()),
                        _ => None,
                    }
                };
                let ok = pool
                    .requirements
                    .iter()
                    .chain(term.iter().copied())
                    .filter(|r| labels::is_offering_label(&r.key))
                    .all(|r| r.allows(value(&r.key)));
                if ok {
                    mask |= 1 << o;
                }
            }
        }
        if mask != 0 {
            any = true;
            masks[t] = mask;
            let mut seen = 0u64;
            for (o, off) in it.offerings.iter().enumerate() {
                if mask & (1 << o) != 0
                    && let Some(z) = zones.iter().position(|x| *x == off.zone)
                    && seen & (1 << z) == 0
                {
                    seen |= 1 << z;
                    zone_types[z] += 1;
                }
            }
        }
    }
    Compat {
        masks,
        zone_types,
        any,
    }
}

/// Why a pool offers nothing to a group: the first pod requirement that rules out every type
/// the pool allows, else a conflict with the pool's own requirements.
fn explain_incompatible(catalog: &Catalog, pool: &Pool, c: &Constraints) -> String {
    let pool_only = Constraints::default();
    let pool_compat = compat(catalog, pool, &catalog.zones(), &pool_only);
    if !pool_compat.any {
        return format!(
            "nodepool {}: its requirements leave no instance type with an available offering",
            pool.name
        );
    }
    for r in c
        .node_selector
        .iter()
        .chain(c.node_affinity.iter().flatten())
    {
        let single = Constraints {
            node_selector: vec![r.clone()],
            ..Default::default()
        };
        if !compat(catalog, pool, &catalog.zones(), &single).any {
            let mut s = String::new();
            let _ = write!(
                s,
                "nodepool {}: no instance type it allows satisfies {} {}",
                pool.name, r.key, r.operator
            );
            if !r.values.is_empty() {
                let _ = write!(s, " [{}]", r.values.join(", "));
            }
            return s;
        }
    }
    format!(
        "nodepool {}: no instance type it allows satisfies the pod's node selector and affinity together",
        pool.name
    )
}

fn no_pool_reason(group: &Group, pools: &[Pool]) -> String {
    if pools.is_empty() {
        return "no NodePool is configured".to_owned();
    }
    if group.pool_problems.is_empty() {
        return "no NodePool can take it".to_owned();
    }
    format!(
        "no NodePool can take it: {}",
        group.pool_problems.join("; ")
    )
}
