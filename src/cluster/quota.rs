//! Exact namespace pod quotas: concurrent admission requests of one namespace are batched,
//! decided with the pure ledger logic against the pod watch, and written to the shared ledger
//! once per batch with compare-and-swap before they are answered (`cluster::batched`).

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::batched::{BatchError, Batched, Decide, LedgerEvent};
use crate::cluster::ledger::LedgerStore;
use crate::cluster::pods::PodIndex;
use crate::metrics::{Metrics, QuotaEvent};
use crate::policy::quota::{Ledger, Limit, PodWatchView, SlotRequest, Verdict};

#[derive(Debug, Clone, Copy)]
pub struct QuotaSettings {
    /// How long an admitted pod that the watch never saw keeps its slot. Must exceed the apiserver's
    /// request timeout (60 s), the longest a pod can take to be stored after admission.
    pub reservation_expiry: Duration,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        Self {
            reservation_expiry: Duration::from_secs(90),
        }
    }
}

/// Why a request was not decided.
pub type QuotaError = BatchError;

/// Shared by all request handlers. Cheap to clone.
#[derive(Clone)]
pub struct QuotaService {
    batched: Batched<QuotaDecider>,
}

struct QuotaDecider {
    /// `None` standalone: only the pods admitted since start count, and they never expire.
    pods: Option<Arc<PodIndex>>,
    settings: QuotaSettings,
    metrics: Metrics,
}

/// A watch view that sees nothing: standalone, the ledger alone is the count.
struct NoWatch;

impl PodWatchView for NoWatch {
    fn is_counted(&self, _: &str) -> bool {
        false
    }
    fn is_gone(&self, _: &str) -> bool {
        false
    }
    fn counted(&self) -> usize {
        0
    }
}

impl QuotaService {
    pub fn new(
        store: LedgerStore<Ledger>,
        pods: Option<Arc<PodIndex>>,
        settings: QuotaSettings,
        metrics: Metrics,
    ) -> Self {
        Self {
            batched: Batched::new(
                store,
                QuotaDecider {
                    pods,
                    settings,
                    metrics,
                },
            ),
        }
    }

    /// True when decisions can be made (the pod watch, if any, has listed once).
    pub fn is_ready(&self) -> bool {
        self.batched
            .decider()
            .pods
            .as_ref()
            .is_none_or(|p| p.is_synced())
    }

    /// Ask for a slot for one pod in `namespace` under `limit`. Concurrent calls for one namespace are
    /// decided together and cost one ledger write.
    pub async fn admit(
        &self,
        namespace: &str,
        limit: Limit,
        request: SlotRequest,
    ) -> Result<Verdict, QuotaError> {
        if !self.is_ready() {
            return Err(BatchError::NotSynced);
        }
        self.batched.submit(namespace, (limit, request)).await
    }
}

impl Decide for QuotaDecider {
    type Ledger = Ledger;
    type Request = (Limit, SlotRequest);
    type Verdict = Verdict;

    fn decide(
        &self,
        namespace: &str,
        ledger: &mut Ledger,
        batch: &[(Limit, SlotRequest)],
        now: i64,
    ) -> Vec<Verdict> {
        let requests = batch.iter().map(|(limit, request)| (limit, request));
        match &self.pods {
            Some(pods) => {
                let expiry =
                    i64::try_from(self.settings.reservation_expiry.as_secs()).unwrap_or(i64::MAX);
                pods.with_view(namespace, now, |view| {
                    ledger.reconcile(view, now, expiry);
                    ledger.admit(namespace, requests, view, now)
                })
            }
            None => ledger.admit(namespace, requests, &NoWatch, now),
        }
    }

    fn batch(&self, size: usize) {
        self.metrics.quota_batch(size);
    }

    fn ledger_event(&self, event: LedgerEvent) {
        self.metrics.quota_event(match event {
            LedgerEvent::Write => QuotaEvent::LedgerWrite,
            LedgerEvent::Conflict => QuotaEvent::LedgerConflict,
            LedgerEvent::ApiError => QuotaEvent::ApiError,
        });
    }
}
