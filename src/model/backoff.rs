//! Retry schedules: exponential backoff with an optional full jitter, the one every retrying
//! part of nodewright uses (EC2 calls, claim launches, evictions). Pure.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Retry schedule: attempt `n + 1` waits up to `min(cap, base × 2^(n−1))` after attempt `n`,
/// uniformly at random in `[0, that]` with full jitter, exactly that without.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
            max_attempts: 6,
            jitter: true,
        }
    }
}

impl Backoff {
    /// The longest wait after the `retry`-th failed attempt (1-based).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait after the `retry`-th failed attempt (1-based).
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        if self.jitter {
            ceiling.mul_f64(random_unit())
        } else {
            ceiling
        }
    }
}

/// A uniform number in `[0, 1)` for jitter: SipHash with the process's random keys over a
/// counter (no RNG dependency; not for anything but spreading retries).
fn random_unit() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_jitter_stays_below_the_ceiling() {
        let backoff = Backoff::default();
        let ceilings: Vec<u128> = (1..=8).map(|n| backoff.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff.ceiling(100), Duration::from_secs(5));
        let mut distinct = HashSet::new();
        for retry in 1..=5 {
            for _ in 0..50 {
                let d = backoff.delay(retry);
                assert!(d <= backoff.ceiling(retry));
                distinct.insert(d);
            }
        }
        assert!(distinct.len() > 200, "jitter is random: {}", distinct.len());
        let fixed = Backoff {
            jitter: false,
            ..backoff
        };
        assert_eq!(fixed.delay(3), Duration::from_millis(400));
    }
}
