//! Disruption decisions, pure: which pods a drain evicts ([`pods`]), which nodes are empty
//! ([`empty`]), and how many of a NodePool's nodes may be disrupted at once, for which reason,
//! and when (`spec.disruption.budgets`), with Karpenter v1's semantics. The caller brings the
//! time, the pool's node count and how many of its nodes are already being disrupted.
//!
//! - [`allowed_disruptions`] is Karpenter's `GetAllowedDisruptionsByReason`: the least `nodes` of
//!   the active budgets that apply to the reason (a percentage of the pool rounded up), the
//!   default `10%` for a pool without budgets, [`UNBOUNDED`] when no budget applies.
//! - [`remaining`] takes the nodes in flight off it, as Karpenter's disruption controller does.
//! - [`binding_budget`] names the budget that decides, for Events.
//! - [`Schedule`] is the budgets' cron (robfig/cron's standard syntax, in UTC).

mod budget;
mod cron;
pub mod drift;
pub mod empty;
pub mod pods;

pub use budget::{
    UNBOUNDED, allowed_disruptions, applies_to, binding_budget, budget_active, budget_allowed,
    budget_nodes, default_budget, remaining,
};
pub use cron::Schedule;
