//! `nodewright plan`: what would be launched for these manifests, and at what price.

pub mod manifests;
