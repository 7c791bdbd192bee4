//! Pure domain types shared by the decisions: requirements, taints and tolerations, resources and
//! the instance catalog.

pub mod backoff;
pub mod catalog;
pub mod claim;
pub mod labels;
pub mod requirements;
pub mod resources;
pub mod taints;

pub use catalog::{CapacityType, Catalog, InstanceType, Offering};
pub use requirements::{Operator, Requirement};
pub use resources::Resources;
pub use taints::{Taint, TaintEffect};
