//! Cloud adapters: where the instance catalog comes from (embedded snapshot or live EC2), and
//! the [`provider::CloudProvider`] seam the node controllers launch and terminate through.

pub mod catalog;
pub mod ec2;
pub mod fake;
pub mod interruption;
pub mod launch;
pub mod provider;
pub mod userdata;
