//! Exact namespace pod quotas: one worker per namespace batches concurrent admission requests, decides
//! them with the pure ledger logic against the pod watch, writes the ledger once per batch with
//! compare-and-swap (re-reading and re-deciding on conflict), and only then answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::cluster::ledger::{LedgerStore, StoreError, Versioned};
use crate::cluster::pods::{PodIndex, unix_now};
use crate::metrics::{Metrics, QuotaEvent};
use crate::policy::quota::{Ledger, Limit, PodWatchView, SlotRequest, Verdict};

/// Largest batch decided with one ledger write.
const MAX_BATCH: usize = 512;
/// Compare-and-swap attempts per batch before giving up (each re-reads the ledger).
const MAX_ATTEMPTS: u32 = 20;
/// A namespace worker with nothing to do for this long exits.
const WORKER_IDLE: Duration = Duration::from_secs(60);

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

#[derive(Debug, thiserror::Error, Clone)]
pub enum QuotaError {
    #[error("cannot reach the Kubernetes API: {0}")]
    Unavailable(String),
    #[error("the pod watch has not finished its first list yet")]
    NotSynced,
    #[error("gave up after {MAX_ATTEMPTS} conflicting ledger writes")]
    TooManyConflicts,
    #[error("the quota worker stopped")]
    Stopped,
    #[error("no answer within the apiserver's timeout")]
    Timeout,
}

struct Pending {
    limit: Limit,
    request: SlotRequest,
    reply: oneshot::Sender<Result<Verdict, QuotaError>>,
}

/// Shared by all request handlers. Cheap to clone.
#[derive(Clone)]
pub struct QuotaService {
    inner: Arc<Inner>,
}

struct Inner {
    store: LedgerStore,
    /// `None` standalone: only the pods admitted since start count, and they never expire.
    pods: Option<Arc<PodIndex>>,
    settings: QuotaSettings,
    metrics: Metrics,
    workers: Mutex<HashMap<String, mpsc::UnboundedSender<Pending>>>,
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
        store: LedgerStore,
        pods: Option<Arc<PodIndex>>,
        settings: QuotaSettings,
        metrics: Metrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                pods,
                settings,
                metrics,
                workers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// True when decisions can be made (the pod watch, if any, has listed once).
    pub fn is_ready(&self) -> bool {
        self.inner.pods.as_ref().is_none_or(|p| p.is_synced())
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
            return Err(QuotaError::NotSynced);
        }
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            limit,
            request,
            reply,
        };
        {
            let mut workers = self.inner.workers.lock().unwrap_or_else(|e| e.into_inner());
            // A worker that exited leaves a closed channel: the request comes back and a new worker takes it.
            let unsent = match workers.get(namespace) {
                Some(tx) => tx.send(pending).err().map(|mpsc::error::SendError(p)| p),
                None => Some(pending),
            };
            if let Some(pending) = unsent {
                let (tx, rx) = mpsc::unbounded_channel();
                // Cannot fail: `rx` is alive.
                let _ = tx.send(pending);
                workers.insert(namespace.to_owned(), tx);
                tokio::spawn(run_worker(self.inner.clone(), namespace.to_owned(), rx));
            }
        }
        answer.await.map_err(|_| QuotaError::Stopped)?
    }
}

async fn run_worker(
    inner: Arc<Inner>,
    namespace: String,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    let mut cached: Option<Versioned> = None;
    loop {
        let first = match tokio::time::timeout(WORKER_IDLE, rx.recv()).await {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(_) => {
                // Senders send while holding the map lock, so checking and leaving under it loses nothing.
                let mut workers = inner.workers.lock().unwrap_or_else(|e| e.into_inner());
                match rx.try_recv() {
                    Ok(p) => p,
                    Err(_) => {
                        workers.remove(&namespace);
                        return;
                    }
                }
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let result = inner.decide_batch(&namespace, &batch, &mut cached).await;
        for (i, p) in batch.into_iter().enumerate() {
            let _ = p
                .reply
                .send(result.as_ref().map(|v| v[i].clone()).map_err(Clone::clone));
        }
    }
}

impl Inner {
    async fn decide_batch(
        &self,
        namespace: &str,
        batch: &[Pending],
        cached: &mut Option<Versioned>,
    ) -> Result<Vec<Verdict>, QuotaError> {
        self.metrics.quota_batch(batch.len());
        for attempt in 0..MAX_ATTEMPTS {
            let (current, from_cache) = match cached.take() {
                Some(c) => (c, true),
                None => (self.read(namespace).await?, false),
            };
            let mut ledger = current.ledger.clone();
            let verdicts = self.decide(namespace, &mut ledger, batch, unix_now());
            // Never deny on a cached copy: another replica may have freed slots since.
            if from_cache && verdicts.iter().any(|v| matches!(v, Verdict::Deny { .. })) {
                continue;
            }
            if ledger == current.ledger {
                *cached = Some(current);
                return Ok(verdicts);
            }
            match self
                .store
                .put(namespace, &ledger, current.version.as_deref())
                .await
            {
                Ok(version) => {
                    self.metrics.quota_event(QuotaEvent::LedgerWrite);
                    *cached = Some(Versioned {
                        ledger,
                        version: Some(version),
                    });
                    return Ok(verdicts);
                }
                Err(StoreError::Conflict) => {
                    self.metrics.quota_event(QuotaEvent::LedgerConflict);
                    tokio::time::sleep(jitter(attempt)).await;
                }
                Err(e) => {
                    self.metrics.quota_event(QuotaEvent::ApiError);
                    return Err(QuotaError::Unavailable(e.to_string()));
                }
            }
        }
        Err(QuotaError::TooManyConflicts)
    }

    async fn read(&self, namespace: &str) -> Result<Versioned, QuotaError> {
        self.store.get(namespace).await.map_err(|e| {
            self.metrics.quota_event(QuotaEvent::ApiError);
            QuotaError::Unavailable(e.to_string())
        })
    }

    fn decide(
        &self,
        namespace: &str,
        ledger: &mut Ledger,
        batch: &[Pending],
        now: i64,
    ) -> Vec<Verdict> {
        let requests = batch.iter().map(|p| (&p.limit, &p.request));
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
}

/// Up to 2^attempt ms (capped at 64 ms), spread so that replicas that collided do not collide again.
fn jitter(attempt: u32) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let cap_ms = 1u64 << attempt.min(6);
    Duration::from_micros(u64::from(nanos) % (cap_ms * 1000))
}
