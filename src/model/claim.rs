//! A NodeClaim's phase, the one piece of its status the pure core and the metrics name.

use serde::{Deserialize, Serialize};

/// Where a claim is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Written; no instance yet.
    #[default]
    Pending,
    /// An instance exists.
    Launched,
    /// Its Node registered.
    Registered,
    /// Launching failed for good (see the `Launched` condition).
    Failed,
    /// Its instance is being terminated; the claim is deleted once it is.
    Terminating,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Self::Pending,
        Self::Launched,
        Self::Registered,
        Self::Failed,
        Self::Terminating,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Launched => "Launched",
            Self::Registered => "Registered",
            Self::Failed => "Failed",
            Self::Terminating => "Terminating",
        }
    }

    /// Claims that hold or will hold capacity for their pods.
    pub fn in_flight(self) -> bool {
        matches!(self, Self::Pending | Self::Launched | Self::Registered)
    }
}
