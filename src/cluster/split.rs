//! Spot and on-demand per workload, exact across replicas: the capacity type of each pod a split
//! applies to is chosen in batches per namespace against the pod watch and the shared ledger
//! (`cluster::batched`), so concurrent creates through any replica keep the split.

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::batched::{BatchError, Batched, Decide, LedgerEvent};
use crate::cluster::ledger::LedgerStore;
use crate::cluster::pods::PodIndex;
use crate::metrics::split::SplitMetrics;
use crate::policy::split::{Choice, Counts, SplitLedger, SplitRequest, WorkloadWatchView};

/// How long a choice the watch never saw keeps counting. Must exceed the apiserver's request
/// timeout (60 s), the longest a pod can take to be stored after admission, and any replica's
/// watch lag.
pub const CHOICE_EXPIRY: Duration = Duration::from_secs(90);

/// Why a request was not decided.
pub type SplitError = BatchError;

/// Shared by all request handlers. Cheap to clone.
#[derive(Clone)]
pub struct SplitService {
    batched: Batched<SplitDecider>,
}

struct SplitDecider {
    /// `None` standalone: only the choices made since start count, and they never expire.
    pods: Option<Arc<PodIndex>>,
    metrics: SplitMetrics,
}

/// Standalone: the ledger alone is the count.
struct NoWatch;

impl WorkloadWatchView for NoWatch {
    fn counts(&self, _: &str) -> Counts {
        Counts::default()
    }
    fn is_seen(&self, _: &str) -> bool {
        false
    }
    fn is_gone(&self, _: &str) -> bool {
        false
    }
}

impl SplitService {
    pub fn new(
        store: LedgerStore<SplitLedger>,
        pods: Option<Arc<PodIndex>>,
        metrics: SplitMetrics,
    ) -> Self {
        Self {
            batched: Batched::new(store, SplitDecider { pods, metrics }),
        }
    }

    /// Standalone: an in-memory ledger, no watch.
    pub fn standalone(metrics: SplitMetrics) -> Self {
        Self::new(LedgerStore::memory(), None, metrics)
    }

    pub fn metrics(&self) -> &SplitMetrics {
        &self.batched.decider().metrics
    }

    /// True when choices can be made (the pod watch, if any, has listed once).
    pub fn is_ready(&self) -> bool {
        self.batched
            .decider()
            .pods
            .as_ref()
            .is_none_or(|p| p.is_synced())
    }

    /// The capacity type for one pod in `namespace`. Concurrent calls for one namespace are decided
    /// together and cost one ledger write.
    pub async fn choose(
        &self,
        namespace: &str,
        request: SplitRequest,
    ) -> Result<Choice, SplitError> {
        if !self.is_ready() {
            return Err(BatchError::NotSynced);
        }
        self.batched.submit(namespace, request).await
    }
}

impl Decide for SplitDecider {
    type Ledger = SplitLedger;
    type Request = SplitRequest;
    type Verdict = Choice;

    fn decide(
        &self,
        namespace: &str,
        ledger: &mut SplitLedger,
        batch: &[SplitRequest],
        now: i64,
    ) -> Vec<Choice> {
        match &self.pods {
            Some(pods) => {
                let expiry = i64::try_from(CHOICE_EXPIRY.as_secs()).unwrap_or(i64::MAX);
                pods.with_workloads(namespace, now, |view| {
                    ledger.reconcile(view, now, expiry);
                    ledger.choose(batch, view, now)
                })
            }
            None => ledger.choose(batch, &NoWatch, now),
        }
    }

    fn ledger_event(&self, event: LedgerEvent) {
        let event = match event {
            LedgerEvent::Write => "write",
            LedgerEvent::Conflict => "conflict",
            LedgerEvent::ApiError => "api_error",
        };
        self.metrics.ledger.with_label_values(&[event]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::model::catalog::CapacityType;
    use crate::policy::split::Split;

    fn request(id: &str, dry_run: bool) -> SplitRequest {
        SplitRequest {
            id: id.into(),
            workload: "Deployment/web".into(),
            split: Split {
                on_demand_base: 2,
                spot_percent: 50,
                spot_fallback: false,
            },
            dry_run,
        }
    }

    #[tokio::test]
    async fn concurrent_choices_in_one_namespace_keep_the_split() {
        let service = SplitService::standalone(SplitMetrics::new(&Metrics::new()));
        let chosen = futures::future::join_all(
            (0..40).map(|i| service.choose("shop", request(&format!("r{i}"), false))),
        )
        .await;
        let mut counts = Counts::default();
        for ct in chosen {
            counts.add(ct.unwrap().capacity_type);
        }
        // 2 on-demand, then half of the other 38.
        assert_eq!(
            counts,
            Counts {
                on_demand: 21,
                spot: 19
            }
        );
        // Dry runs are answered as the next pod would be, and change nothing.
        let dry = service
            .choose("shop", request("d", true))
            .await
            .unwrap()
            .capacity_type;
        assert_eq!(dry, CapacityType::OnDemand);
        let next = service
            .choose("shop", request("n", false))
            .await
            .unwrap()
            .capacity_type;
        assert_eq!(next, CapacityType::OnDemand);
        // Another namespace's workload of the same name is another workload.
        let other = service
            .choose("blog", request("o", false))
            .await
            .unwrap()
            .capacity_type;
        assert_eq!(other, CapacityType::OnDemand);
    }
}
