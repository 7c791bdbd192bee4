//! Pure scheduling decisions: the capacity planner (pods → new nodes) and its LP bound, and the
//! disruption decisions (drains, empty nodes, budgets) that bound how nodes are removed.

pub mod batcher;
pub mod consolidation;
pub mod disruption;
pub mod extender;
pub mod lp;
pub mod pod;
pub mod pools;
pub mod preferences;
pub mod solver;
pub mod view;
pub mod volumes;

pub use pod::PendingPod;
pub use solver::{ExistingNode, Input, Limits, Plan, PlannedNode, Pool, solve};
