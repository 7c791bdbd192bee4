//! Consolidation of underused nodes, pure: which nodes can go because their pods fit on the
//! others (**delete**), or can be swapped, one or several at once, for one cheaper node
//! (**replace**), and why the others stay. The live controller and `nodewright consolidate`
//! both call [`plan`] on a [`World`] built by [`snapshot`] from Node, Pod and
//! PodDisruptionBudget objects.
//!
//! # How a move is found (Karpenter's method, with nodewright's planner)
//! Candidates are the nodes of pools that consolidate underused nodes, not blocked (see
//! [`Kept`]), cheapest to disrupt first (fewest evicted pods, then dearest). A set of candidates
//! is *simulated*: their pods (DaemonSet pods aside) become pending pods, next to the pods
//! already waiting for capacity, and the planner ([`crate::scheduling::solve`]) places them on
//! the other nodes and, if needed, new ones. The set can go if every one of its pods finds a
//! place and at most one new node holds them. Several nodes at once (the longest prefix of the
//! candidates, up to [`Settings::max_multi`], found by binary search) and the first single node
//! that can go are both looked for; the bigger move is taken only if it nets at least
//! [`Settings::min_saving`] more than the single one (so two nodes are not replaced by one new
//! node when deleting one of them saves nearly as much with fewer evictions and no launch).
//!
//! # Against churn
//! A move is taken only if
//! - its saving, less [`Settings::eviction_cost`] per evicted pod, is at least
//!   [`Settings::min_saving`] per hour and [`Settings::min_saving_percent`] of the price of the
//!   nodes it removes (Karpenter takes any saving, which replaces nodes for pennies);
//! - pods already waiting for capacity keep what they would get without the move: the room the
//!   move uses on other nodes is charged at the price of the new nodes the pending pods then
//!   need (otherwise the next provisioning pass would launch back what the move removed);
//! - it leaves each pool at least the free room the pool's pods asked for, at their peak within
//!   the stabilization window, beyond what they ask for now ([`World::reserve`]; the scale-down
//!   stabilization of the HorizontalPodAutoscaler, applied to nodes): a workload that shrank
//!   for a few minutes does not lose nodes it will need again;
//! - the node it launches would not itself be consolidated by the next pass (that would be two
//!   moves and two rounds of evictions for what one move does);
//! - spot is replaced by spot only node by node, and only when at least
//!   [`Settings::spot_alternatives`] cheaper instance types could hold the pods (Karpenter's 15),
//!   so the replacement is not a rarely available, soon interrupted type.

mod search;
pub mod snapshot;

use std::collections::BTreeMap;

use serde::Serialize;

use super::pod::PendingPod;
use super::solver::{ExistingNode, PlannedNode, Pool};
use crate::model::catalog::{CapacityType, Catalog};

pub use search::plan;

/// Thresholds. [`Settings::default`] is nodewright's; [`Settings::no_threshold`] is Karpenter's
/// behaviour (any saving, no eviction cost, no stability check), for comparisons.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    /// USD per hour a move must save, after eviction costs.
    pub min_saving: f64,
    /// Percent of the removed nodes' price a move must save.
    pub min_saving_percent: f64,
    /// USD per hour charged against a move for each pod it evicts.
    pub eviction_cost: f64,
    /// Cheaper instance types a spot-to-spot replacement needs.
    pub spot_alternatives: usize,
    /// Most candidates tried in one multi-node move.
    pub max_multi: usize,
    /// Whether a move whose new node the next pass would consolidate again is refused.
    pub stable_only: bool,
}

impl Default for Settings {
    /// The Policy's defaults.
    fn default() -> Self {
        Self::from_spec(&crate::config::ConsolidationSpec::default())
    }
}

impl Settings {
    /// The Policy's `spec.consolidation`.
    pub fn from_spec(spec: &crate::config::ConsolidationSpec) -> Self {
        Self {
            min_saving: spec.min_savings_per_hour,
            min_saving_percent: spec.min_savings_percent,
            eviction_cost: spec.pod_eviction_cost_per_hour,
            spot_alternatives: 15,
            max_multi: 100,
            stable_only: true,
        }
    }

    /// Karpenter's behaviour: any saving is taken.
    pub fn no_threshold() -> Self {
        Self {
            min_saving: 0.0,
            min_saving_percent: 0.0,
            eviction_cost: 0.0,
            stable_only: false,
            ..Self::default()
        }
    }
}

/// A node that consolidation may remove.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub node: String,
    /// The NodeClaim it was launched for, if known.
    pub claim: Option<String>,
    pub pool: String,
    pub instance_type: String,
    pub zone: String,
    pub capacity_type: CapacityType,
    pub price_per_hour: f64,
    /// The pods a drain evicts, as the pending pods they become.
    pub pods: Vec<PendingPod>,
    /// Why it may not move now; `None`: it may.
    pub blocked: Option<Blocker>,
}

/// Why a node stays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Blocker {
    pub kind: BlockKind,
    pub reason: String,
}

impl Blocker {
    pub fn new(kind: BlockKind, reason: impl Into<String>) -> Self {
        Self {
            kind,
            reason: reason.into(),
        }
    }
}

/// Kinds of [`Blocker`], for metrics and filtering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum BlockKind {
    /// The pool does not consolidate underused nodes (`WhenEmpty`, `consolidateAfter: Never`).
    Policy,
    /// Pods arrived or left within `consolidateAfter`.
    NotYet,
    /// The node or a pod is annotated `karpenter.sh/do-not-disrupt`.
    DoNotDisrupt,
    /// A PodDisruptionBudget allows fewer disruptions than the node's pods need.
    Pdb,
    /// A pod without a controller would be lost.
    Unowned,
    /// The node is being disrupted already, or not registered yet.
    Busy,
    /// The pool's disruption budget for `Underutilized` is used up.
    Budget,
    /// Its pods fit nowhere else and no cheaper node holds them.
    NoCheaper,
    /// A move exists but saves less than the thresholds.
    SmallSaving,
    /// Spot replaced by spot without enough cheaper types.
    SpotToSpot,
    /// The move's new node would be consolidated again by the next pass.
    Unstable,
    /// The pool needed the room within the stabilization window.
    Stabilizing,
}

impl BlockKind {
    /// Every kind, for metrics.
    pub const ALL: &[BlockKind] = &[
        Self::Policy,
        Self::NotYet,
        Self::DoNotDisrupt,
        Self::Pdb,
        Self::Unowned,
        Self::Busy,
        Self::Budget,
        Self::NoCheaper,
        Self::SmallSaving,
        Self::SpotToSpot,
        Self::Unstable,
        Self::Stabilizing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Policy => "policy",
            Self::NotYet => "not_yet",
            Self::DoNotDisrupt => "do_not_disrupt",
            Self::Pdb => "pdb",
            Self::Unowned => "unowned",
            Self::Busy => "busy",
            Self::Budget => "budget",
            Self::NoCheaper => "no_cheaper",
            Self::SmallSaving => "small_saving",
            Self::SpotToSpot => "spot_to_spot",
            Self::Unstable => "unstable",
            Self::Stabilizing => "stabilizing",
        }
    }
}

/// What consolidation decides from.
#[derive(Clone, Debug)]
pub struct World<'a> {
    /// Every node pods can go to (candidates included), with their pods; nodes being disrupted
    /// are left out.
    pub nodes: Vec<ExistingNode>,
    /// Nodes consolidation may remove, blocked ones included (they are reported).
    pub candidates: Vec<Candidate>,
    /// Pods waiting for capacity now.
    pub pending: Vec<PendingPod>,
    pub pools: &'a [Pool],
    pub catalog: &'a Catalog,
    /// Disruptions each pool's budgets allow now for `Underutilized`, less those in progress.
    /// A pool not listed: unlimited.
    pub budgets: BTreeMap<String, usize>,
    /// What the budgets allow once the disruptions in progress are done (later rounds).
    pub budget_limits: BTreeMap<String, usize>,
    /// Per pool, the room (CPU and memory) its pods asked for at their peak within the
    /// stabilization window beyond what they ask for now: a move must leave at least that free,
    /// or the next scale-up launches back what it removed. A pool not listed: none.
    pub reserve: BTreeMap<String, crate::model::Resources>,
}

/// Delete or replace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Method {
    Delete,
    Replace,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Replace => "replace",
        }
    }
}

/// A node a move removes.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Removed {
    pub node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    pub node_pool: String,
    pub instance_type: String,
    pub zone: String,
    pub capacity_type: CapacityType,
    pub price_per_hour: f64,
}

/// One consolidation step.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Move {
    /// 1: allowed now; n: once the moves of round n − 1 are done (disruption budgets).
    pub round: usize,
    pub method: Method,
    pub nodes: Vec<Removed>,
    /// The node launched first, for `Replace`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replacement: Option<PlannedNode>,
    /// USD per hour: the removed nodes' price less the replacement's (and less the new room
    /// pending pods need because of the move).
    pub saving_per_hour: f64,
    /// The saving less the eviction cost.
    pub net_saving_per_hour: f64,
    /// `namespace/name` of the pods it evicts.
    pub evicted: Vec<String>,
    /// Where the evicted pods go: pod → node (existing node, or the replacement's
    /// `(new)` name).
    pub destinations: BTreeMap<String, String>,
}

/// A candidate that stays, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Kept {
    pub node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    pub node_pool: String,
    pub price_per_hour: f64,
    pub kind: BlockKind,
    pub reason: String,
}

/// The consolidation plan: moves in the order they would be carried out, and what stays.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub moves: Vec<Move>,
    pub kept: Vec<Kept>,
    /// USD per hour of the candidates' nodes before the moves.
    pub price_before: f64,
    /// Sum of the moves' savings.
    pub saving_per_hour: f64,
    /// Candidates looked at and simulations run, for the decision-time figures.
    pub candidates: usize,
    pub simulations: usize,
}

impl Report {
    /// Pods evicted by all moves.
    pub fn evictions(&self) -> usize {
        self.moves.iter().map(|m| m.evicted.len()).sum()
    }
}

#[cfg(test)]
mod tests;
