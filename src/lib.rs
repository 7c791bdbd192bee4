//! nodewright: just-in-time capacity for Kubernetes.
//!
//! Pure decisions live in [`policy`] and [`model`]; adapters around them in [`http`] (webhooks, extender), [`tls`],
//! [`cluster`] (Kubernetes) and [`metrics`]; [`app`] composes them for `main` and the tests.

pub mod app;
pub mod cloud;
pub mod cluster;
pub mod config;
pub mod http;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod policy;
pub mod provision;
pub mod scheduling;
pub mod tls;
pub mod watch;
