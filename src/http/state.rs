//! What every handler shares ([`AppState`]), built one way ([`AppState::builder`]) by the
//! composition root, the tests and the benchmarks; the edge's limits; readiness.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::extender::ExtenderState;
use crate::cluster::ledger::LedgerStore;
use crate::cluster::namespaces::NamespaceLabels;
use crate::cluster::quota::{QuotaService, QuotaSettings};
use crate::cluster::split::SplitService;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::metrics::split::SplitMetrics;
use crate::policy::mutate::Steering;
use crate::policy::quota::Quotas;
use crate::tls::CertResolver;

/// Limits at the HTTPS edge: what one request and one connection may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A larger body is refused with 413 (from Content-Length, or once that many bytes arrived).
    pub max_body_bytes: usize,
    /// An HTTP/1.1 request head must arrive in full within this of the first byte (slow headers).
    pub header_read_timeout: Duration,
    /// A request body must arrive in full within this of the request head (a trickling or
    /// stalled body gets 408), whatever the apiserver's `?timeout=` says.
    pub body_read_timeout: Duration,
    /// HTTP/2 streams in flight per connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// A connection with no request in flight for this long is closed gracefully (HTTP/2: GOAWAY).
    pub idle_timeout: Duration,
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 3 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(5),
            max_concurrent_streams: 250,
            idle_timeout: Duration::from_secs(90),
            max_connections: 1024,
        }
    }
}

/// Ready once the TLS listener is bound (config is loaded before anything is bound) and a serving
/// certificate is there (self-managed mode reads it from a Secret after start); not ready while
/// draining.
#[derive(Debug, Default)]
pub struct Readiness {
    tls_bound: AtomicBool,
    draining: AtomicBool,
    certificate: OnceLock<Arc<CertResolver>>,
}

impl Readiness {
    pub fn set_tls_bound(&self) {
        self.tls_bound.store(true, Ordering::SeqCst);
    }
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
    /// Not ready until `resolver` holds a certificate.
    pub fn wait_for_certificate(&self, resolver: Arc<CertResolver>) {
        let _ = self.certificate.set(resolver);
    }
    pub fn is_ready(&self) -> bool {
        self.tls_bound.load(Ordering::SeqCst)
            && !self.draining.load(Ordering::SeqCst)
            && self.certificate.get().is_none_or(|r| r.is_set())
    }
}

/// Everything handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub steering: Arc<ArcSwap<Steering>>,
    pub quotas: Arc<ArcSwap<Quotas>>,
    pub quota: QuotaService,
    /// Capacity types chosen for workloads that ask for a spot/on-demand split.
    pub split: SplitService,
    pub namespaces: NamespaceLabels,
    pub metrics: Metrics,
    pub limits: Limits,
    pub readiness: Arc<Readiness>,
    /// The scheduler extender's node view and its hand-off to the provisioner.
    pub extender: ExtenderState,
}

impl AppState {
    /// A state with the defaults of a standalone process: an in-memory quota ledger, namespace
    /// labels unknown, no node view, default limits. The builder's setters replace each part.
    /// `own_namespace`: nodewright's namespace, never steered.
    pub fn builder(config: &Config, own_namespace: Option<&str>) -> AppStateBuilder {
        let metrics = Metrics::new();
        AppStateBuilder {
            steering: Arc::new(ArcSwap::from_pointee(Steering::new(config, own_namespace))),
            quotas: Arc::new(ArcSwap::from_pointee(Quotas::new(&config.policy))),
            quota: None,
            split: None,
            namespaces: NamespaceLabels::Standalone,
            metrics,
            limits: Limits::default(),
            readiness: Arc::new(Readiness::default()),
            extender: ExtenderState::standalone(),
        }
    }
}

/// Builds an [`AppState`]; see [`AppState::builder`].
pub struct AppStateBuilder {
    steering: Arc<ArcSwap<Steering>>,
    quotas: Arc<ArcSwap<Quotas>>,
    quota: Option<QuotaService>,
    split: Option<SplitService>,
    namespaces: NamespaceLabels,
    metrics: Metrics,
    limits: Limits,
    readiness: Arc<Readiness>,
    extender: ExtenderState,
}

impl AppStateBuilder {
    /// Decisions shared with a config reloader, which swaps them whole.
    pub fn decisions(
        mut self,
        steering: Arc<ArcSwap<Steering>>,
        quotas: Arc<ArcSwap<Quotas>>,
    ) -> Self {
        self.steering = steering;
        self.quotas = quotas;
        self
    }

    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn quota(mut self, quota: QuotaService) -> Self {
        self.quota = Some(quota);
        self
    }

    pub fn split(mut self, split: SplitService) -> Self {
        self.split = Some(split);
        self
    }

    pub fn namespaces(mut self, namespaces: NamespaceLabels) -> Self {
        self.namespaces = namespaces;
        self
    }

    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn readiness(mut self, readiness: Arc<Readiness>) -> Self {
        self.readiness = readiness;
        self
    }

    pub fn extender(mut self, extender: ExtenderState) -> Self {
        self.extender = extender;
        self
    }

    pub fn build(self) -> AppState {
        let quota = self.quota.unwrap_or_else(|| {
            QuotaService::new(
                LedgerStore::memory(),
                None,
                QuotaSettings::default(),
                self.metrics.clone(),
            )
        });
        let split = self
            .split
            .unwrap_or_else(|| SplitService::standalone(SplitMetrics::new(&self.metrics)));
        AppState {
            steering: self.steering,
            quotas: self.quotas,
            quota,
            split,
            namespaces: self.namespaces,
            metrics: self.metrics,
            limits: self.limits,
            readiness: self.readiness,
            extender: self.extender,
        }
    }
}
