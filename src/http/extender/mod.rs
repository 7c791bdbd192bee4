//! kube-scheduler extender endpoints `POST /scheduler/filter` and `POST /scheduler/prioritize`
//! (wire format: ../shared/WIRE.md §2): [`wire`] decodes a call, the decisions in
//! `crate::scheduling::extender` judge it, [`encode`] writes the answer.
//!
//! Any `?timeout=` query is accepted and ignored: answers take microseconds.

pub mod encode;
pub mod wire;

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
use crate::http::extender::encode::{encode_filter, encode_filter_error, encode_priorities};
use crate::http::extender::wire::ExtenderCall;
use crate::scheduling::view::ClusterView;
use crate::tls::server::VerifiedClient;

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

/// The extender's two verbs. They share one handler, as `/mutate` and `/validate` share
/// `serve_review`; only the answer and the shape of an error differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Filter,
    Prioritize,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Filter => "filter",
            Self::Prioritize => "prioritize",
        }
    }

    /// Decides on a decoded call under the view's read lock, and encodes the answer.
    fn answer(self, extender: &ExtenderState, call: &ExtenderCall<'_>) -> Vec<u8> {
        let now = Instant::now();
        match self {
            Self::Filter => {
                let decision = extender.with_view(|view| call.filter(view, now));
                let encoded = encode_filter(call, &decision);
                if decision.passing.is_empty() {
                    extender.hand_off(call);
                }
                encoded
            }
            Self::Prioritize => {
                let scores = extender.with_view(|view| call.prioritize(view, now));
                encode_priorities(call, &scores)
            }
        }
    }

    /// An error as this verb answers it: the filter has an `Error` field in its result; a bare
    /// `HostPriorityList` has no room for one, so prioritize answers `{"error", "message"}`.
    fn error(self, e: ApiError) -> Response {
        match self {
            Self::Filter => json(e.status, encode_filter_error(&e.message)),
            Self::Prioritize => e.into_response(),
        }
    }
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `POST /scheduler/filter`: drop the nodes nodewright is closing or has promised to other pods.
pub async fn filter(
    State(state): State<AppState>,
    client: Option<Extension<VerifiedClient>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    serve_call(&state, Verb::Filter, client.is_some(), &headers, body).await
}

/// `POST /scheduler/prioritize`: a `HostPriorityList` scoring every node asked about, 0..=10.
pub async fn prioritize(
    State(state): State<AppState>,
    client: Option<Extension<VerifiedClient>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    serve_call(&state, Verb::Prioritize, client.is_some(), &headers, body).await
}

/// Read, decode and answer one extender call, timing and counting it under `verb`.
async fn serve_call(
    state: &AppState,
    verb: Verb,
    verified_client: bool,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let answer = async {
        let bytes = authorized_body(state, verified_client, headers, body).await?;
        let call = ExtenderCall::decode(&bytes).map_err(ApiError::bad_request)?;
        Ok::<_, ApiError>(verb.answer(&state.extender, &call))
    };
    let (outcome, response) = match answer.await {
        Ok(body) => ("ok", json(StatusCode::OK, body)),
        Err(e) => {
            tracing::warn!(verb = verb.as_str(), status = e.status.as_u16(), error = %e.message, "rejected extender call");
            ("error", verb.error(e))
        }
    };
    state
        .metrics
        .extender(verb.as_str(), outcome, started.elapsed().as_secs_f64());
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
    read_json_body(headers, body, state.limits.max_body_bytes, &state.metrics).await
}
