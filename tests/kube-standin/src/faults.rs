//! Fault knobs: latency, 5xx answers, forced conflicts, dropped watches, refused connections.

use crate::util::Rng;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The fault settings. Every field has a default (no fault), so a JSON body may name only
/// the knobs it sets: `{"error_rate": 0.2, "seed": 7}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added latency for every API request, in milliseconds.
    pub latency_ms: u64,
    /// Only delay writes (POST, PUT, PATCH, DELETE).
    pub latency_writes_only: bool,
    /// Fraction (0..=1) of API requests answered `error_code` with a `Status` body.
    pub error_rate: f64,
    /// 500 (InternalError) or 503 (ServiceUnavailable); other codes are used as given.
    pub error_code: u16,
    /// Fraction (0..=1) of UPDATEs and PATCHes answered 409 Conflict without writing.
    pub conflict_rate: f64,
    /// Close every watch stream after it has sent this many events.
    pub drop_watches_after_events: Option<u64>,
    /// Refuse connections: the listening socket is closed and open connections are cut,
    /// until this is set back to false.
    pub refuse_connections: bool,
    /// Refuse connections for this many milliseconds from when the faults are set, then
    /// accept again (usable over HTTP, where nothing could switch it back on).
    pub refuse_connections_for_ms: Option<u64>,
    /// Seed for the random draws (`error_rate`, `conflict_rate`): the same seed and the same
    /// request sequence give the same faults. Without it the draws are seeded from the clock.
    pub seed: Option<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            latency_writes_only: false,
            error_rate: 0.0,
            error_code: 500,
            conflict_rate: 0.0,
            drop_watches_after_events: None,
            refuse_connections: false,
            refuse_connections_for_ms: None,
            seed: None,
        }
    }
}

struct Inner {
    faults: Faults,
    rng: Rng,
    refuse_until: Option<Instant>,
}

/// Shared control of the fault knobs (cheap to clone).
#[derive(Clone)]
pub struct FaultControl {
    inner: Arc<Mutex<Inner>>,
    /// Bumped to close every open watch stream.
    drop_watches: Arc<watch::Sender<u64>>,
    /// Bumped whenever the connection settings change.
    conn: Arc<watch::Sender<u64>>,
    /// Whether the main listener is bound (set by the accept loop).
    listening: Arc<watch::Sender<bool>>,
}

impl FaultControl {
    pub(crate) fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                faults: Faults::default(),
                rng: Rng::from_time(),
                refuse_until: None,
            })),
            drop_watches: Arc::new(watch::channel(0).0),
            conn: Arc::new(watch::channel(0).0),
            listening: Arc::new(watch::channel(true).0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replace all settings (re-seeding the draws when `seed` is set).
    pub fn set(&self, faults: Faults) {
        {
            let mut g = self.lock();
            g.rng = faults.seed.map(Rng::seeded).unwrap_or_else(Rng::from_time);
            g.refuse_until = faults
                .refuse_connections_for_ms
                .map(|ms| Instant::now() + Duration::from_millis(ms));
            g.faults = faults;
        }
        self.conn.send_modify(|v| *v += 1);
    }

    /// Change some settings in place.
    pub fn update(&self, f: impl FnOnce(&mut Faults)) {
        let mut faults = self.get();
        f(&mut faults);
        self.set(faults);
    }

    pub fn get(&self) -> Faults {
        self.lock().faults.clone()
    }

    /// Back to no faults (and accept connections again).
    pub fn clear(&self) {
        self.set(Faults::default());
    }

    /// Close every open watch stream now (clients see the stream end and re-watch).
    pub fn drop_watches(&self) {
        self.drop_watches.send_modify(|v| *v += 1);
    }

    /// Refuse (true) or accept (false) connections.
    pub fn refuse_connections(&self, refuse: bool) {
        self.update(|f| {
            f.refuse_connections = refuse;
            f.refuse_connections_for_ms = None;
        });
    }

    /// Wait until the listener has caught up with the connection knobs: closed (and open
    /// connections cut) while refusing, bound again when not. Waits at most 5 s.
    pub async fn settled(&self) {
        let mut rx = self.listening.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let want = !self.refusing().0;
                if *rx.borrow_and_update() == want {
                    return;
                }
                let until = self.refusing().1;
                tokio::select! {
                    _ = rx.changed() => {}
                    _ = tokio::time::sleep(until.map(|u| u.saturating_duration_since(Instant::now())).unwrap_or(Duration::from_millis(50))) => {}
                }
            }
        })
        .await;
    }

    pub(crate) fn set_listening(&self, on: bool) {
        self.listening.send_replace(on);
    }

    pub(crate) fn watch_drops(&self) -> watch::Receiver<u64> {
        self.drop_watches.subscribe()
    }

    pub(crate) fn conn_changes(&self) -> watch::Receiver<u64> {
        self.conn.subscribe()
    }

    /// Whether connections are refused now, and until when if it is timed.
    pub(crate) fn refusing(&self) -> (bool, Option<Instant>) {
        let g = self.lock();
        let until = g.refuse_until.filter(|u| *u > Instant::now());
        (g.faults.refuse_connections || until.is_some(), until)
    }

    pub(crate) fn latency(&self, is_write: bool) -> Option<Duration> {
        let g = self.lock();
        (g.faults.latency_ms > 0 && (is_write || !g.faults.latency_writes_only))
            .then(|| Duration::from_millis(g.faults.latency_ms))
    }

    /// Draw for an injected error: the code to answer with.
    pub(crate) fn roll_error(&self) -> Option<u16> {
        let mut g = self.lock();
        let rate = g.faults.error_rate;
        (rate > 0.0 && g.rng.next_f64() < rate).then_some(g.faults.error_code)
    }

    pub(crate) fn roll_conflict(&self) -> bool {
        let mut g = self.lock();
        let rate = g.faults.conflict_rate;
        rate > 0.0 && g.rng.next_f64() < rate
    }

    pub(crate) fn drop_after(&self) -> Option<u64> {
        self.lock().faults.drop_watches_after_events
    }
}
