//! The cache of offerings recently found out of capacity (Karpenter's
//! `pkg/cache/unavailableofferings`), shared by the launcher and the planner.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::types::OfferingKey;
use crate::model::catalog::CapacityType;

/// Offerings recently found out of capacity, shared by the launcher and the planner: an entry
/// lives `ttl` after its last mark (Karpenter: 3 minutes).
#[derive(Clone, Debug)]
pub struct Unavailable {
    ttl: Duration,
    entries: Arc<Mutex<HashMap<OfferingKey, Instant>>>,
}

impl Unavailable {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Arc::default(),
        }
    }

    /// Marks the offering unavailable for the TTL from now (again: the TTL restarts).
    pub fn mark(&self, instance_type: &str, zone: &str, ct: CapacityType) {
        let until = Instant::now() + self.ttl;
        self.entries
            .lock()
            .unwrap()
            .insert((instance_type.to_owned(), zone.to_owned(), ct), until);
    }

    pub fn is_unavailable(&self, instance_type: &str, zone: &str, ct: CapacityType) -> bool {
        let key = (instance_type.to_owned(), zone.to_owned(), ct);
        self.entries
            .lock()
            .unwrap()
            .get(&key)
            .is_some_and(|until| *until > Instant::now())
    }

    /// The offerings unavailable now, sorted; expired entries are dropped.
    pub fn current(&self) -> Vec<OfferingKey> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap();
        entries.retain(|_, until| *until > now);
        let mut out: Vec<_> = entries.keys().cloned().collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_offerings_expire() {
        let u = Unavailable::new(Duration::from_millis(50));
        u.mark("c7a.medium", "us-east-1a", CapacityType::Spot);
        assert!(u.is_unavailable("c7a.medium", "us-east-1a", CapacityType::Spot));
        assert!(!u.is_unavailable("c7a.medium", "us-east-1a", CapacityType::OnDemand));
        assert!(!u.is_unavailable("c7a.medium", "us-east-1b", CapacityType::Spot));
        assert_eq!(
            u.current(),
            [(
                "c7a.medium".to_owned(),
                "us-east-1a".to_owned(),
                CapacityType::Spot
            )]
        );
        let clone = u.clone();
        std::thread::sleep(Duration::from_millis(60));
        assert!(!clone.is_unavailable("c7a.medium", "us-east-1a", CapacityType::Spot));
        assert!(u.current().is_empty());
    }
}
