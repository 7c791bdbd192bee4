//! Retries and client-side rate limits of the launcher's EC2 calls (Karpenter's `pkg/batcher` and
//! retry handling): the [`Backoff`] schedule, the token [`Bucket`]s of [`RateLimits`], the error
//! code tables (capacity, throttling, transient) and `Launcher::call`, which
//! every EC2 request goes through.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use tracing::debug;

use super::Launcher;
use super::types::LaunchError;

/// CreateFleet error codes that mean "this offering cannot be launched now": Karpenter's
/// `unfulfillableCapacityErrorCodes`, plus `SpotMaxPriceTooLow` (nodewright sets no maximum
/// price, so it only comes from an account-level setting; retrying the offering cannot help).
pub const ICE_CODES: &[&str] = &[
    "InsufficientInstanceCapacity",
    "MaxSpotInstanceCountExceeded",
    "VcpuLimitExceeded",
    "UnfulfillableCapacity",
    "Unsupported",
    "InsufficientFreeAddressesInSubnet",
    "ReservationCapacityExceeded",
    "SpotMaxPriceTooLow",
];
/// Error codes of throttling.
const THROTTLE_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "SlowDown",
];
/// Error codes worth another attempt: EC2's 5xx codes and failures without an answer.
const TRANSIENT_CODES: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    "DispatchFailure",
    "Timeout",
    "ResponseError",
];

pub use crate::model::backoff::Backoff;

/// One token bucket: `capacity` tokens, refilled at `refill_per_second`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub capacity: f64,
    pub refill_per_second: f64,
}

/// The client-side buckets, by default EC2's published request-rate buckets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimits {
    /// Describe* calls.
    pub non_mutating: Bucket,
    /// CreateFleet, CreateLaunchTemplate, DeleteLaunchTemplate, TerminateInstances.
    pub mutating: Bucket,
    /// Instances terminated (TerminateInstances' resource bucket).
    pub terminations: Bucket,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            non_mutating: Bucket {
                capacity: 100.0,
                refill_per_second: 20.0,
            },
            mutating: Bucket {
                capacity: 50.0,
                refill_per_second: 5.0,
            },
            terminations: Bucket {
                capacity: 1000.0,
                refill_per_second: 20.0,
            },
        }
    }
}

/// A token bucket that hands out reservations: a caller takes its tokens at once (the count may
/// go negative) and waits until they would have been there, so callers are served in order.
#[derive(Debug)]
pub(super) struct TokenBucket {
    pub(super) spec: Bucket,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub(super) fn new(spec: Bucket) -> Self {
        Self {
            spec,
            state: Mutex::new((spec.capacity, Instant::now())),
        }
    }

    /// Takes `cost` tokens; how long to wait before using them.
    fn reserve(&self, cost: f64) -> Duration {
        let cost = cost.clamp(0.0, self.spec.capacity);
        let mut state = self.state.lock().unwrap();
        let now = Instant::now();
        let refilled = now.duration_since(state.1).as_secs_f64() * self.spec.refill_per_second;
        state.0 = (state.0 + refilled).min(self.spec.capacity) - cost;
        state.1 = now;
        if state.0 >= 0.0 || self.spec.refill_per_second <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-state.0 / self.spec.refill_per_second)
        }
    }

    pub(super) async fn acquire(&self, cost: f64) {
        let wait = self.reserve(cost);
        if !wait.is_zero() {
            debug!(?wait, "EC2 client-side rate limit: waiting");
            tokio::time::sleep(wait).await;
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Class {
    NonMutating,
    Mutating,
}

impl Launcher {
    /// Runs `op` with the client-side rate limit and the retry policy.
    pub(super) async fn call<T, E, R, Fut>(
        &self,
        call: &'static str,
        class: Class,
        mut op: impl FnMut() -> Fut,
    ) -> Result<T, LaunchError>
    where
        Fut: Future<Output = Result<T, SdkError<E, R>>>,
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let bucket = match class {
            Class::NonMutating => &self.inner.non_mutating,
            Class::Mutating => &self.inner.mutating,
        };
        let backoff = self.inner.backoff;
        let mut attempt = 1;
        loop {
            bucket.acquire(1.0).await;
            match op().await {
                Ok(out) => return Ok(out),
                Err(err) => {
                    let (code, message) = error_parts(&err);
                    let retryable = THROTTLE_CODES.contains(&code.as_str())
                        || TRANSIENT_CODES.contains(&code.as_str());
                    if !retryable {
                        return Err(LaunchError::Ec2 {
                            call,
                            code,
                            message,
                        });
                    }
                    if attempt >= backoff.max_attempts {
                        return Err(LaunchError::Ec2 {
                            call,
                            code,
                            message: format!("{message} (gave up after {attempt} attempts)"),
                        });
                    }
                    let delay = backoff.delay(attempt);
                    debug!(call, %code, attempt, ?delay, "EC2 call failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// EC2's error code and message of an SDK error (the kind of failure when there is no answer).
fn error_parts<E, R>(err: &SdkError<E, R>) -> (String, String)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let code = match err {
        SdkError::ServiceError(_) => err.code().unwrap_or("Unknown"),
        SdkError::TimeoutError(_) => "Timeout",
        SdkError::DispatchFailure(_) => "DispatchFailure",
        SdkError::ResponseError(_) => "ResponseError",
        SdkError::ConstructionFailure(_) => "ConstructionFailure",
        _ => "Unknown",
    }
    .to_owned();
    let message = match err.message() {
        Some(message) => message.to_owned(),
        None => DisplayErrorContext(err).to_string(),
    };
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_serves_the_burst_then_paces_at_the_refill_rate() {
        let bucket = TokenBucket::new(Bucket {
            capacity: 2.0,
            refill_per_second: 10.0,
        });
        assert_eq!(bucket.reserve(1.0), Duration::ZERO);
        assert_eq!(bucket.reserve(1.0), Duration::ZERO);
        let third = bucket.reserve(1.0);
        let fourth = bucket.reserve(1.0);
        assert!(
            third > Duration::from_millis(80) && third <= Duration::from_millis(100),
            "{third:?}"
        );
        assert!(
            fourth > Duration::from_millis(180) && fourth <= Duration::from_millis(200),
            "{fourth:?}"
        );
        // A cost above the capacity waits for a full bucket, not forever.
        let big = TokenBucket::new(Bucket {
            capacity: 5.0,
            refill_per_second: 1.0,
        });
        assert_eq!(big.reserve(50.0), Duration::ZERO);
        assert!(big.reserve(5.0) <= Duration::from_secs(5));
    }

    #[test]
    fn default_rate_limits_are_ec2s_published_buckets() {
        let limits = RateLimits::default();
        assert_eq!(
            (
                limits.non_mutating.capacity,
                limits.non_mutating.refill_per_second
            ),
            (100.0, 20.0)
        );
        assert_eq!(
            (limits.mutating.capacity, limits.mutating.refill_per_second),
            (50.0, 5.0)
        );
        assert_eq!(
            (
                limits.terminations.capacity,
                limits.terminations.refill_per_second
            ),
            (1000.0, 20.0)
        );
    }
}
