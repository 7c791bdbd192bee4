//! The HTTP edge: routers for the HTTPS (webhooks, extender) and plain-HTTP (health, metrics) ports,
//! and serving them (the TLS pieces are `crate::tls`).

pub mod admission;
mod drain;
pub mod extender;
pub mod server;
mod split;
pub mod state;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use state::{AppState, AppStateBuilder, Limits, Readiness};

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
    // A body that trickles or stalls is cut off this long after its head, whatever `?timeout=`.
    let deadline = state.limits.body_read_timeout;
    router
        .fallback(not_found)
        .with_state(state)
        .layer(tower_http::timeout::RequestBodyDeadlineLayer::new(deadline))
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
    match admission::read_json_body(&headers, body, state.limits.max_body_bytes, &state.metrics)
        .await
    {
        Ok(_) => ([(header::CONTENT_TYPE, "application/json")], FIXED).into_response(),
        Err(e) => e.into_response(),
    }
}
