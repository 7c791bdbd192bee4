//! The HTTP edge: routers for the HTTPS (webhooks) and plain-HTTP (health, metrics) ports, TLS, serving.

pub mod admission;
pub mod extender;
pub mod server;
pub mod tls;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::cluster::namespaces::NamespaceLabels;
use crate::cluster::quota::QuotaService;
use crate::metrics::Metrics;
use crate::policy::mutate::Steering;
use crate::policy::quota::Quotas;

/// Request limits at the edge.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 3 * 1024 * 1024,
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
    certificate: OnceLock<Arc<tls::CertResolver>>,
}

impl Readiness {
    pub fn set_tls_bound(&self) {
        self.tls_bound.store(true, Ordering::SeqCst);
    }
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
    /// Not ready until `resolver` holds a certificate.
    pub fn wait_for_certificate(&self, resolver: Arc<tls::CertResolver>) {
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
    pub namespaces: NamespaceLabels,
    pub metrics: Metrics,
    pub limits: Limits,
    pub readiness: Arc<Readiness>,
    /// The scheduler extender's node view and its hand-off to the provisioner.
    pub extender: extender::ExtenderState,
}

/// The HTTPS router: admission webhooks (and later the scheduler extender).
pub fn webhook_router(state: AppState, bench_endpoints: bool) -> Router {
    let mut router = Router::new()
        .route("/mutate", post(admission::mutate))
        .route("/validate", post(admission::validate))
        .route("/scheduler/filter", post(extender::filter))
        .route("/scheduler/prioritize", post(extender::prioritize));
    if bench_endpoints {
        router = router.route("/bench/fixed", post(bench_fixed));
    }
    router.fallback(not_found).with_state(state)
}

/// The plain-HTTP router: `/healthz`, `/readyz`, `/metrics`.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    admission::ApiError {
        status: StatusCode::NOT_FOUND,
        reason: "NotFound",
        message: "no such endpoint".into(),
    }
    .into_response()
}

/// A fixed AdmissionReview answer after reading the body like `/mutate` does: the TLS + HTTP/2 stack's
/// own limit, for the load benchmark to compare `/mutate` against. Only served with `--bench-endpoints`.
async fn bench_fixed(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    const FIXED: &[u8] = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"00000000-0000-0000-0000-000000000000","allowed":true}}"#;
    match admission::read_json_body(&headers, body, state.limits.max_body_bytes).await {
        Ok(_) => ([(header::CONTENT_TYPE, "application/json")], FIXED).into_response(),
        Err(e) => e.into_response(),
    }
}
