//! Exact decisions shared across replicas, for any ledger: one worker per namespace batches the
//! concurrent admission requests, decides them with the pure ledger logic against the pod watch,
//! writes the ledger once per batch with compare-and-swap (re-reading and re-deciding on
//! conflict), and only then answers. Pod quotas and capacity splits are both decided this way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::cluster::ledger::{LedgerStore, StoreError, StoredLedger, Versioned};
use crate::cluster::pods::unix_now;

/// Largest batch decided with one ledger write.
const MAX_BATCH: usize = 512;
/// Compare-and-swap attempts per batch before giving up (each re-reads the ledger).
pub const MAX_ATTEMPTS: u32 = 20;
/// A namespace worker with nothing to do for this long exits.
const WORKER_IDLE: Duration = Duration::from_secs(60);

/// What happened to a ledger, for the caller's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerEvent {
    Write,
    Conflict,
    ApiError,
}

/// Why a request was not decided (quota and capacity split alike).
#[derive(Debug, thiserror::Error, Clone)]
pub enum BatchError {
    #[error("cannot reach the Kubernetes API: {0}")]
    Unavailable(String),
    #[error("gave up after {MAX_ATTEMPTS} conflicting ledger writes")]
    TooManyConflicts,
    #[error("the ledger worker stopped")]
    Stopped,
    #[error("the pod watch has not finished its first list yet")]
    NotSynced,
    #[error("no answer within the apiserver's timeout")]
    Timeout,
}

/// One kind of batched decision.
pub trait Decide: Send + Sync + 'static {
    type Ledger: StoredLedger;
    type Request: Send + Sync + 'static;
    type Verdict: Clone + Send + 'static;

    /// Decide a batch in order against `ledger`, recording in it what must be written, at `now`
    /// (Unix seconds).
    fn decide(
        &self,
        namespace: &str,
        ledger: &mut Self::Ledger,
        batch: &[Self::Request],
        now: i64,
    ) -> Vec<Self::Verdict>;

    /// A batch of `size` requests is being decided.
    fn batch(&self, _size: usize) {}

    /// Something happened to the ledger.
    fn ledger_event(&self, _event: LedgerEvent) {}
}

struct Pending<D: Decide> {
    request: D::Request,
    reply: oneshot::Sender<Result<D::Verdict, BatchError>>,
}

/// Shared by all request handlers. Cheap to clone.
pub struct Batched<D: Decide> {
    inner: Arc<Inner<D>>,
}

impl<D: Decide> Clone for Batched<D> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<D: Decide> {
    store: LedgerStore<D::Ledger>,
    decider: D,
    workers: Mutex<HashMap<String, mpsc::UnboundedSender<Pending<D>>>>,
}

impl<D: Decide> Batched<D> {
    pub fn new(store: LedgerStore<D::Ledger>, decider: D) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                decider,
                workers: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn decider(&self) -> &D {
        &self.inner.decider
    }

    /// Decide one request in `namespace`. Concurrent calls for one namespace are decided together
    /// and cost one ledger write.
    pub async fn submit(
        &self,
        namespace: &str,
        request: D::Request,
    ) -> Result<D::Verdict, BatchError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending { request, reply };
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
        answer.await.map_err(|_| BatchError::Stopped)?
    }
}

async fn run_worker<D: Decide>(
    inner: Arc<Inner<D>>,
    namespace: String,
    mut rx: mpsc::UnboundedReceiver<Pending<D>>,
) {
    let mut cached: Option<Versioned<D::Ledger>> = None;
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
        let (requests, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.request, p.reply)).unzip();
        let result = inner.decide_batch(&namespace, &requests, &mut cached).await;
        for (i, reply) in replies.into_iter().enumerate() {
            let _ = reply.send(result.as_ref().map(|v| v[i].clone()).map_err(Clone::clone));
        }
    }
}

impl<D: Decide> Inner<D> {
    async fn decide_batch(
        &self,
        namespace: &str,
        batch: &[D::Request],
        cached: &mut Option<Versioned<D::Ledger>>,
    ) -> Result<Vec<D::Verdict>, BatchError> {
        self.decider.batch(batch.len());
        for attempt in 0..MAX_ATTEMPTS {
            let (current, from_cache) = match cached.take() {
                Some(c) => (c, true),
                None => (self.read(namespace).await?, false),
            };
            let mut ledger = current.ledger.clone();
            let verdicts = self
                .decider
                .decide(namespace, &mut ledger, batch, unix_now());
            // Nothing to write means nothing the compare-and-swap would check: an answer from a
            // cached copy (a denial, a dry run, a retry) may miss another replica's writes, so it
            // is decided again on a fresh read.
            if ledger == current.ledger {
                if from_cache {
                    continue;
                }
                *cached = Some(current);
                return Ok(verdicts);
            }
            match self
                .store
                .put(namespace, &ledger, current.version.as_deref())
                .await
            {
                Ok(version) => {
                    self.decider.ledger_event(LedgerEvent::Write);
                    *cached = Some(Versioned {
                        ledger,
                        version: Some(version),
                    });
                    return Ok(verdicts);
                }
                Err(StoreError::Conflict) => {
                    self.decider.ledger_event(LedgerEvent::Conflict);
                    tokio::time::sleep(jitter(attempt)).await;
                }
                Err(e) => {
                    self.decider.ledger_event(LedgerEvent::ApiError);
                    return Err(BatchError::Unavailable(e.to_string()));
                }
            }
        }
        Err(BatchError::TooManyConflicts)
    }

    async fn read(&self, namespace: &str) -> Result<Versioned<D::Ledger>, BatchError> {
        self.store.get(namespace).await.map_err(|e| {
            self.decider.ledger_event(LedgerEvent::ApiError);
            BatchError::Unavailable(e.to_string())
        })
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
