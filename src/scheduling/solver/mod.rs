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
//!
//! One file per phase: [`groups`] (1, 2), [`existing`] (3), [`zones`] (4 and the zone repair after
//! packing), [`packing`] (5, with pool limits), [`tails`] (6), [`explain`] (the reasons for pods
//! left unplaced), [`compat`] (which offerings a group's constraints allow); this file holds the
//! types, the order of the phases and the final plan.

// Index loops run over parallel per-dimension and per-node arrays; keyed caches are spelled out.
#![allow(clippy::needless_range_loop, clippy::type_complexity)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::Serialize;

use super::lp::{self, Duals};
use super::pod::{Constraints, PendingPod, PodTerm, Selector, Topology};
use crate::model::catalog::{CapacityType, Catalog, InstanceType, KubeletSettings, labels};
use crate::model::resources::{CPU, DIMS, MEMORY, Resources};
use crate::model::{Requirement, Taint, TaintEffect};

mod compat;
mod existing;
mod explain;
mod groups;
mod limits;
mod min_values;
mod packing;
mod relax;
mod static_pools;
mod tails;
mod zones;

pub(crate) use compat::untolerated;
use compat::*;
use explain::*;
use groups::*;
use limits::within_share;
pub use limits::{Limits, Usage};

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
    /// `spec.replicas`: a static pool keeps this many nodes (its nodes and claims in flight are
    /// `in_use.nodes`) and takes no part in planning pods onto new nodes.
    pub replicas: Option<i64>,
}

/// A pod already on a node (or promised to an in-flight one): what selectors can see of it, and
/// its required pod anti-affinity, which keeps the pods it selects out of its node or zone (the
/// scheduler checks it both ways).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BoundPod {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub anti_affinity: Vec<PodTerm>,
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
    /// The spot/on-demand split of each workload that asks for one (`nodewright plan` only: the
    /// pods' capacity types were chosen before solving).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capacity_splits: Vec<crate::policy::split::WorkloadSplit>,
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
    let mut plan = if input
        .pods
        .iter()
        .any(|p| !p.constraints.preferences.is_empty())
    {
        relax::solve_relaxing(input)
    } else {
        Solver::new(input).run()
    };
    static_pools::add_missing_nodes(input, &mut plan);
    plan
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
    /// Pods left out by a pool's limits, or by the zone repair after others were: another
    /// round may place them once the repair has given room back.
    limited_out: Vec<usize>,
    /// In a fair round ([`Solver::retry_limited`]), each (pool, zone) bucket of a limited pool
    /// is packed under `ceiling`, an even share of the pool's room.
    fair_share: bool,
    ceiling: Option<(usize, Limits)>,
}

#[derive(Clone)]
struct ExistingState {
    free: Resources,
    zone: Option<usize>,
    counters: Vec<(usize, i64)>,
    /// Hostname anti-affinity of the pods running there: pods these select may not join them.
    repels: Vec<Selector>,
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
            limited_out: Vec::new(),
            fair_share: false,
            ceiling: None,
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
        self.retry_limited(&base.0, &base.1);
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

    fn group_of(&self, p: usize) -> Option<usize> {
        self.pod_group.get(p).copied().filter(|g| *g != usize::MAX)
    }

    /// Re-prices each new node to the cheapest type that holds its pods, lists the alternatives,
    /// and writes the plan.
    fn finish(mut self) -> Plan {
        let catalog = self.input.catalog;
        let drafts = std::mem::take(&mut self.drafts);
        let mut nodes = Vec::with_capacity(drafts.len());
        // Candidates by (pool, zone, capacity type, groups) → sorted (price, type, offering).
        let mut lists: Vec<Vec<(f64, usize, usize)>> = Vec::new();
        let mut list_of: HashMap<(usize, String, CapacityType, Vec<usize>), usize> = HashMap::new();
        // Per node: its candidate list, what its pods use and its chosen capacity.
        let mut chosen_of: Vec<(usize, Resources, Resources)> = Vec::with_capacity(drafts.len());
        for d in drafts {
            let chosen = &catalog.types[d.type_idx].offerings[d.offering];
            let zone = chosen.zone.clone();
            let ct = chosen.capacity_type;
            let mut groups = d.groups.clone();
            groups.sort_unstable();
            let key = (d.pool, zone.clone(), ct, groups.clone());
            let li = *list_of.entry(key).or_insert_with(|| {
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
                lists.push(list);
                lists.len() - 1
            });
            // Re-pricing must stay within the pool's limits.
            let (_, current_capacity) = self.type_room[d.pool][d.type_idx].unwrap();
            let limits = self.input.pools[d.pool].limits;
            let mut others = self.usage[d.pool];
            others.remove(&current_capacity);
            let (price, t, o) = lists[li]
                .iter()
                .find(|(_, t, _)| {
                    self.type_room[d.pool][*t].is_some_and(|(room, capacity)| {
                        d.used.fits_in(&room) && others.room(&limits, &capacity) >= 1
                    })
                })
                .copied()
                .unwrap_or((chosen.price, d.type_idx, d.offering));
            let (_, new_capacity) = self.type_room[d.pool][t].unwrap();
            others.add(&new_capacity, 1);
            self.usage[d.pool] = others;
            chosen_of.push((li, d.used, new_capacity));
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
                alternatives: Vec::new(),
                requests: d.used + pool.daemon_overhead,
                allocatable: it.allocatable(&pool.kubelet),
                pod_indices: pods,
            });
        }
        // Alternatives: the other types that hold the same pods, each within its node's share of
        // what the pool's limits leave, so no mix of fallbacks at launch exceeds a limit.
        let pool_of: HashMap<&str, usize> = self
            .input
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();
        let mut count = vec![0usize; self.input.pools.len()];
        for n in &nodes {
            count[pool_of[n.node_pool.as_str()]] += 1;
        }
        let share: Vec<Resources> = self
            .input
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| self.usage[i].share_of_rest(&p.limits, count[i]))
            .collect();
        let mut short: Vec<(usize, String)> = Vec::new();
        for (k, (n, (li, used, capacity))) in nodes.iter_mut().zip(chosen_of).enumerate() {
            let pool = pool_of[n.node_pool.as_str()];
            let mut fitting = lists[li].iter().filter(|(_, t, _)| {
                catalog.types[*t].name != n.instance_type
                    && self.type_room[pool][*t].is_some_and(|(room, alternative)| {
                        used.fits_in(&room) && within_share(&capacity, &alternative, &share[pool])
                    })
            });
            let mut alternatives: Vec<usize> = fitting
                .by_ref()
                .take(MAX_ALTERNATIVES)
                .map(|(_, t, _)| *t)
                .collect();
            let requirements = &self.input.pools[pool].requirements;
            if requirements.iter().any(|r| r.min_values.is_some()) {
                match min_values::widen(
                    catalog,
                    requirements,
                    &n.instance_type,
                    &mut alternatives,
                    fitting.map(|(_, t, _)| *t),
                ) {
                    Ok(()) => {}
                    Err(reason) => short.push((k, reason)),
                }
            }
            n.alternatives = alternatives
                .into_iter()
                .map(|t| catalog.types[t].name.clone())
                .collect();
        }
        // Nodes whose types cannot keep a pool's minValues are not launched; their pods wait.
        for (k, reason) in short.iter().rev() {
            let node = nodes.remove(*k);
            for (key, &p) in node.pods.into_iter().zip(&node.pod_indices) {
                self.unschedulable.push(Unschedulable {
                    pod: key,
                    reason: format!("nodepool {}: {reason}", node.node_pool),
                    pod_index: p,
                });
            }
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
            capacity_splits: Vec::new(),
        }
    }
}
