//! Pure scheduling decisions: the capacity planner (pods → new nodes) and its LP bound.

pub mod batcher;
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
