//! Pure domain types shared by the decisions: requirements, taints and tolerations.

pub mod requirements;
pub mod taints;

pub use requirements::{Operator, Requirement};
pub use taints::{Taint, TaintEffect};
