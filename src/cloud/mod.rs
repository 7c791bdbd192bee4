//! Cloud adapters: where the instance catalog comes from (embedded snapshot or live EC2).

pub mod catalog;
pub mod ec2;
pub mod launch;
pub mod userdata;
