//! kube-scheduler extender endpoints `POST /scheduler/filter` and `POST /scheduler/prioritize`
//! (wire format: ../shared/WIRE.md §2). The decisions themselves live in
//! `crate::scheduling::extender`; this module decodes, calls them and encodes.
//!
//! Any `?timeout=` query is accepted and ignored: answers take microseconds.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;

use super::AppState;
use super::admission::{ApiError, read_json_body};
use super::tls::VerifiedClient;
use crate::scheduling::extender::{
    ExtenderCall, encode_filter, encode_filter_error, encode_priorities,
};
use crate::scheduling::view::ClusterView;

/// What the extender shares with the node/pod watches and the provisioner.
#[derive(Clone)]
pub struct ExtenderState {
    /// Written by the watches and the provisioner, read by every extender call.
    pub view: Arc<RwLock<ClusterView>>,
    /// Pods the filter left with no node, handed to the provisioner's batcher. `try_send`: when the
    /// provisioner is behind (or not running on this replica) the pod is dropped here and reaches
    /// the provisioner through its watch of unschedulable pods instead.
    pub unplaced: Option<mpsc::Sender<Arc<Pod>>>,
    /// mTLS: answer only connections that presented a verified client certificate
    /// (`--extender-client-ca` / `--extender-client-secret`).
    pub client_certificate_required: bool,
}

impl ExtenderState {
    /// A view with no nodes and no provisioner.
    pub fn standalone() -> Self {
        Self {
            view: Arc::new(RwLock::new(ClusterView::default())),
            unplaced: None,
            client_certificate_required: false,
        }
    }

    /// Runs `decide` under the view's read lock. A writer that panicked leaves the view as it was
    /// last written, which is still the best knowledge there is: read it rather than fail.
    fn with_view<T>(&self, decide: impl FnOnce(&ClusterView) -> T) -> T {
        let view = self.view.read().unwrap_or_else(PoisonError::into_inner);
        decide(&view)
    }

    /// Hands a pod that fits no node to the provisioner, never waiting: a full or closed channel
    /// drops it (the provisioner's watch of unschedulable pods finds it anyway).
    fn hand_off(&self, call: &ExtenderCall<'_>) {
        let Some(sender) = &self.unplaced else {
            return;
        };
        match call.full_pod() {
            Ok(pod) => {
                if let Err(e) = sender.try_send(Arc::new(pod)) {
                    tracing::debug!(pod = %call.pod.key, error = %e, "unplaced pod not handed to the provisioner");
                }
            }
            Err(e) => {
                tracing::warn!(pod = %call.pod.key, error = %e, "unplaced pod cannot be decoded as a Pod");
            }
        }
    }
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `POST /scheduler/filter`: drop the nodes nodewright is closing or has promised to other pods.
/// Errors are answered as an `ExtenderFilterResult` with `Error` set.
pub async fn filter(
    State(state): State<AppState>,
    client: Option<Extension<VerifiedClient>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let answer = match authorized_body(&state, client.is_some(), &headers, body).await {
        Ok(bytes) => answer_filter(&state.extender, &bytes),
        Err(e) => Err(e),
    };
    let (outcome, response) = match answer {
        Ok(body) => ("ok", json(StatusCode::OK, body)),
        Err(e) => {
            tracing::warn!(status = e.status.as_u16(), error = %e.message, "rejected extender filter call");
            ("error", json(e.status, encode_filter_error(&e.message)))
        }
    };
    state
        .metrics
        .extender("filter", outcome, started.elapsed().as_secs_f64());
    response
}

/// The call's JSON body, once the caller is allowed: with mTLS on, a call over a connection without
/// a verified client certificate is refused before its body is read.
async fn authorized_body(
    state: &AppState,
    verified_client: bool,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    if state.extender.client_certificate_required && !verified_client {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            reason: "Forbidden",
            message: "the scheduler extender requires a client certificate signed by the extender client CA (tlsConfig certFile/keyFile in the extender stanza)".into(),
        });
    }
    read_json_body(headers, body, state.limits.max_body_bytes).await
}

fn answer_filter(extender: &ExtenderState, body: &Bytes) -> Result<Vec<u8>, ApiError> {
    let call = ExtenderCall::decode(body).map_err(ApiError::bad_request)?;
    let now = Instant::now();
    let decision = extender.with_view(|view| call.filter(view, now));
    let encoded = encode_filter(&call, &decision);
    if decision.passing.is_empty() {
        extender.hand_off(&call);
    }
    Ok(encoded)
}

/// `POST /scheduler/prioritize`: a `HostPriorityList` scoring every node asked about, 0..=10.
/// Errors are answered as `{"error", "message"}` (a bare list has no room for one).
pub async fn prioritize(
    State(state): State<AppState>,
    client: Option<Extension<VerifiedClient>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let answer = match authorized_body(&state, client.is_some(), &headers, body).await {
        Ok(bytes) => answer_prioritize(&state.extender, &bytes),
        Err(e) => Err(e),
    };
    let (outcome, response) = match answer {
        Ok(body) => ("ok", json(StatusCode::OK, body)),
        Err(e) => {
            tracing::warn!(status = e.status.as_u16(), error = %e.message, "rejected extender prioritize call");
            ("error", e.into_response())
        }
    };
    state
        .metrics
        .extender("prioritize", outcome, started.elapsed().as_secs_f64());
    response
}

fn answer_prioritize(extender: &ExtenderState, body: &Bytes) -> Result<Vec<u8>, ApiError> {
    let call = ExtenderCall::decode(body).map_err(ApiError::bad_request)?;
    let now = Instant::now();
    let scores = extender.with_view(|view| call.prioritize(view, now));
    Ok(encode_priorities(&call, &scores))
}
