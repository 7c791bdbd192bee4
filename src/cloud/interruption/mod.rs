//! Spot interruptions and other instance events: the SQS queue EventBridge feeds ([`queue`]) and
//! the messages on it ([`message`]). The provisioner acts on them
//! (`crate::provision::interruption`).

pub mod message;
pub mod queue;
