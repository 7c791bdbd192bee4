//! AdmissionReview v1 at the HTTP edge: read and check the body, decode with kube-rs's types, call the
//! pure decision, and write the response exactly as the apiserver verifies it (WIRE.md §1).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http_body_util::{BodyExt, Limited};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation as KubeOperation};
use kube::core::{DynamicObject, Resource, Status, TypeMeta};
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::cluster::quota::QuotaError;
use crate::config::{FailurePolicy, parse_go_duration};
use crate::metrics::{BodyError, Endpoint, Metrics, Outcome, QuotaOutcome};
use crate::policy::mutate::{Decision, Operation, PodAdmission, SkipReason, audit_annotations};
use crate::policy::pod::PodView;
use crate::policy::quota::{Quotas, SlotRequest, Verdict};

const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";
const REVIEW_KIND: &str = "AdmissionReview";

/// The query the apiserver appends (`?timeout=10s`): how long it waits for the answer. It bounds the
/// only wait a steering decision may have, a namespace-label lookup on a cache miss.
#[derive(Debug, Default, Deserialize)]
pub struct AdmissionQuery {
    pub timeout: Option<String>,
}

impl AdmissionQuery {
    /// Half the apiserver's timeout, leaving the other half for the answer to travel; `None` when
    /// absent or unreadable (a malformed query never fails the request).
    pub fn budget(&self) -> Option<Duration> {
        self.timeout
            .as_deref()
            .and_then(|t| parse_go_duration(t).ok())
            .map(|t| t / 2)
    }
}

/// An error answered with a 4xx/5xx status and a JSON body `{"error": reason, "message": text}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            reason: "BadRequest",
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
            message: &'a str,
        }
        let body = serde_json::to_vec(&Body {
            error: self.reason,
            message: &self.message,
        })
        .unwrap_or_default();
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

/// Check the content type and read the body, refusing early (from Content-Length) or as soon as it
/// passes `limit` bytes; `metrics` counts the bodies refused as too large or too slow.
pub async fn read_json_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    metrics: &Metrics,
) -> Result<Bytes, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return Err(ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            reason: "UnsupportedMediaType",
            message: format!("expected Content-Type application/json, got {content_type:?}"),
        });
    }
    let too_large = || {
        metrics.body_error(BodyError::TooLarge);
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            reason: "RequestEntityTooLarge",
            message: format!("request body is larger than the limit of {limit} bytes"),
        }
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) if is_timeout(&*e) => {
            metrics.body_error(BodyError::Timeout);
            Err(ApiError {
                status: StatusCode::REQUEST_TIMEOUT,
                reason: "RequestTimeout",
                message: "the request body did not arrive in time (--body-read-timeout)".into(),
            })
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}

/// Whether the body read failed because its deadline passed (anywhere in the error's chain).
fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        current = err.source();
    }
    false
}

/// A decoded admission request. `Pod` holds the steering view of the object (the decision itself
/// checks that the kind is a core Pod); `Other` is an object that does not even read as one.
pub enum Incoming {
    Pod(Box<AdmissionRequest<PodView>>),
    Other(Box<AdmissionRequest<DynamicObject>>),
}

impl Incoming {
    /// The admission operation, as the `operation` metrics label.
    pub fn operation(&self) -> &'static str {
        let op = match self {
            Self::Pod(r) => &r.operation,
            Self::Other(r) => &r.operation,
        };
        match op {
            KubeOperation::Create => "CREATE",
            KubeOperation::Update => "UPDATE",
            KubeOperation::Delete => "DELETE",
            KubeOperation::Connect => "CONNECT",
        }
    }
}

// kube-rs's `AdmissionRequest` needs its object type to be a `Resource`.
crate::cluster::core_pod_resource!(PodView);

/// The top level of an AdmissionReview, around kube-rs's `AdmissionRequest`. kube's own
/// `AdmissionReview<T>` flattens its `TypeMeta`, which makes serde buffer the whole review (object
/// included) before decoding it; reading the two type fields here avoids that copy.
#[derive(Deserialize)]
struct Envelope<T: Resource> {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<AdmissionRequest<T>>,
}

/// Decode an AdmissionReview v1. The object is read as a [`PodView`] (the common, fast path); an
/// object that does not read as one falls back to a `DynamicObject`, so other kinds still get an answer.
pub fn decode_review(bytes: &[u8]) -> Result<Incoming, ApiError> {
    match serde_json::from_slice::<Envelope<PodView>>(bytes) {
        Ok(envelope) => into_request(envelope).map(|r| Incoming::Pod(Box::new(r))),
        Err(pod_error) => {
            let envelope = serde_json::from_slice::<Envelope<DynamicObject>>(bytes)
                .map_err(|e| ApiError::bad_request(format!("malformed AdmissionReview: {e}")))?;
            let request = into_request(envelope)?;
            if request.kind.group.is_empty() && request.kind.kind == "Pod" {
                return Err(ApiError::bad_request(format!(
                    "request.object is not a valid Pod: {pod_error}"
                )));
            }
            Ok(Incoming::Other(Box::new(request)))
        }
    }
}

fn into_request<T: Resource>(envelope: Envelope<T>) -> Result<AdmissionRequest<T>, ApiError> {
    if envelope.api_version != REVIEW_API_VERSION || envelope.kind != REVIEW_KIND {
        return Err(ApiError::bad_request(format!(
            "expected apiVersion {REVIEW_API_VERSION} kind {REVIEW_KIND}, got apiVersion {:?} kind {:?}; register the webhook with admissionReviewVersions: [v1]",
            envelope.api_version, envelope.kind
        )));
    }
    let mut request = envelope
        .request
        .ok_or_else(|| ApiError::bad_request("AdmissionReview has no request"))?;
    request.types = TypeMeta {
        api_version: envelope.api_version,
        kind: envelope.kind,
    };
    Ok(request)
}

/// The response, serialized as the apiserver expects it: top-level apiVersion/kind, the request's uid,
/// `patch` as standard padded base64 and only together with `patchType`, `status` only on denial.
pub fn encode_response(response: &AdmissionResponse) -> Vec<u8> {
    #[derive(Serialize)]
    struct Review<'a> {
        #[serde(rename = "apiVersion")]
        api_version: &'static str,
        kind: &'static str,
        response: Wire<'a>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Wire<'a> {
        uid: &'a str,
        allowed: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<&'a Status>,
        #[serde(skip_serializing_if = "Option::is_none")]
        patch: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        patch_type: Option<&'static str>,
        #[serde(skip_serializing_if = "HashMap::is_empty")]
        audit_annotations: &'a HashMap<String, String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        warnings: Option<&'a Vec<String>>,
    }
    let patch = response
        .patch
        .as_ref()
        .map(|p| base64::engine::general_purpose::STANDARD.encode(p));
    let review = Review {
        api_version: REVIEW_API_VERSION,
        kind: REVIEW_KIND,
        response: Wire {
            uid: &response.uid,
            allowed: response.allowed,
            status: (!response.allowed).then_some(&response.result),
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            audit_annotations: &response.audit_annotations,
            warnings: response.warnings.as_ref().filter(|w| !w.is_empty()),
        },
    };
    serde_json::to_vec(&review).unwrap_or_default()
}

fn json_response(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// Read, decode and answer one AdmissionReview, timing and counting it for `endpoint`. Objects that
/// do not read as pods are allowed as sent; `decide` answers the rest.
async fn serve_review<Fut>(
    state: &AppState,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Body,
    decide: impl FnOnce(AdmissionRequest<PodView>) -> Fut,
) -> Response
where
    Fut: Future<Output = Result<(Outcome, AdmissionResponse), ApiError>>,
{
    let started = Instant::now();
    let answered = async {
        let bytes =
            read_json_body(headers, body, state.limits.max_body_bytes, &state.metrics).await?;
        let incoming = decode_review(&bytes)?;
        let operation = incoming.operation();
        let (outcome, response) = match incoming {
            Incoming::Other(request) => (Outcome::Allowed, AdmissionResponse::from(&*request)),
            Incoming::Pod(request) => decide(*request).await?,
        };
        Ok::<_, ApiError>((operation, outcome, response))
    };
    let (operation, outcome, response) = match answered.await {
        Ok((operation, outcome, response)) => (
            operation,
            outcome,
            json_response(encode_response(&response)),
        ),
        Err(e) => {
            tracing::warn!(status = e.status.as_u16(), error = %e.message, "rejected admission request");
            ("unknown", Outcome::Error, e.into_response())
        }
    };
    state.metrics.admission(
        endpoint,
        operation,
        outcome,
        started.elapsed().as_secs_f64(),
    );
    response
}

/// `POST /mutate`: steer pods onto their NodePool.
pub async fn mutate(
    State(state): State<AppState>,
    Query(query): Query<AdmissionQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    serve_review(&state, Endpoint::Mutate, &headers, body, |request| {
        mutate_pod(&state, &query, request)
    })
    .await
}

async fn mutate_pod(
    state: &AppState,
    query: &AdmissionQuery,
    request: AdmissionRequest<PodView>,
) -> Result<(Outcome, AdmissionResponse), ApiError> {
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let steering = state.steering.load();
    let is_create = matches!(request.operation, KubeOperation::Create);
    let namespace_labels = if is_create && steering.needs_namespace_labels() {
        state.namespaces.labels(namespace, query.budget()).await
    } else {
        None
    };
    let admission = PodAdmission {
        operation: match request.operation {
            KubeOperation::Create => Operation::Create,
            KubeOperation::Update => Operation::Update,
            KubeOperation::Delete => Operation::Delete,
            KubeOperation::Connect => Operation::Connect,
        },
        group: &request.kind.group,
        kind: &request.kind.kind,
        namespace,
        pod: request.object.as_ref(),
        namespace_labels: namespace_labels.as_ref(),
    };
    let decision = super::split::with_split(
        state,
        &steering,
        &request,
        namespace,
        query.budget(),
        steering.decide(&admission),
    )
    .await;
    let pod_name = request
        .object
        .as_ref()
        .and_then(|p| {
            p.metadata
                .name
                .clone()
                .or_else(|| p.metadata.generate_name.clone())
        })
        .unwrap_or_default();
    let (outcome, response) = match decision {
        Decision::Skip(SkipReason::NamespaceLabelsUnknown) => {
            tracing::warn!(uid = %request.uid, namespace, pod = %pod_name, "namespace labels unknown; rules selecting namespaces by label skipped");
            let mut response = AdmissionResponse::from(&request);
            response.warnings = Some(vec![format!(
                "nodewright: labels of namespace {namespace} unknown; pod not steered by label rules"
            )]);
            (Outcome::Allowed, response)
        }
        Decision::Skip(reason) => {
            tracing::debug!(uid = %request.uid, namespace, pod = %pod_name, reason = reason.as_str(), "not steered");
            (Outcome::Allowed, AdmissionResponse::from(&request))
        }
        Decision::Unchanged { pool, rule } => {
            tracing::debug!(uid = %request.uid, namespace, pod = %pod_name, pool, rule, "already steered");
            (Outcome::Allowed, AdmissionResponse::from(&request))
        }
        Decision::Patch {
            pool,
            rule,
            patch,
            additions,
        } => {
            tracing::debug!(uid = %request.uid, namespace, pod = %pod_name, pool, rule, added = %additions.fields(), dry_run = request.dry_run, "steered");
            let mut response = AdmissionResponse::from(&request)
                .with_patch(patch)
                .map_err(|e| ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    reason: "InternalError",
                    message: e.to_string(),
                })?;
            let mut warnings = vec![additions.warning(&pool)];
            warnings.extend(additions.notes.iter().map(|n| format!("nodewright: {n}")));
            response.warnings = Some(warnings);
            response.audit_annotations = audit_annotations(&pool, &rule, &additions);
            (Outcome::Patched, response)
        }
        Decision::Deny {
            pool,
            rule,
            message,
        } => {
            tracing::info!(uid = %request.uid, namespace, pod = %pod_name, pool, rule, %message, "denied");
            let mut response = AdmissionResponse::from(&request).deny(&message);
            response.result = Status::failure(&message, "Forbidden").with_code(403);
            (Outcome::Denied, response)
        }
    };
    Ok((outcome, response))
}

/// `POST /validate`: enforce namespace pod quotas.
pub async fn validate(
    State(state): State<AppState>,
    Query(query): Query<AdmissionQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    serve_review(&state, Endpoint::Validate, &headers, body, |request| {
        validate_pod(&state, &query, request)
    })
    .await
}

async fn validate_pod(
    state: &AppState,
    query: &AdmissionQuery,
    request: AdmissionRequest<PodView>,
) -> Result<(Outcome, AdmissionResponse), ApiError> {
    let is_pod_create = matches!(request.operation, KubeOperation::Create)
        && request.kind.group.is_empty()
        && request.kind.kind == "Pod";
    let Some(pod) = request.object.as_ref().filter(|_| is_pod_create) else {
        return Ok((Outcome::Allowed, AdmissionResponse::from(&request)));
    };
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let quotas = state.quotas.load_full();
    let budget = query.budget();
    let labels = state.namespaces.labels(namespace, budget).await;
    let limit = match quotas.limit_for(namespace, labels.as_ref()) {
        Ok(Some(limit)) => limit,
        Ok(None) => {
            return Ok((Outcome::Allowed, AdmissionResponse::from(&request)));
        }
        Err(bad) => {
            let (outcome, response) = quota_unchecked(
                &state.metrics,
                &quotas,
                &request,
                namespace,
                &bad.to_string(),
            );
            return Ok((outcome, response));
        }
    };
    let name = pod
        .metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.as_ref().map(|g| format!("{g}*")))
        .unwrap_or_default();
    let slot = SlotRequest {
        // Set by the apiserver before validating webhooks run; the request uid is a unique fallback.
        uid: pod
            .metadata
            .uid
            .clone()
            .unwrap_or_else(|| request.uid.clone()),
        pod: format!("{namespace}/{name}"),
        dry_run: request.dry_run,
    };
    let max_pods = limit.max_pods;
    let admitted = state.quota.admit(namespace, limit, slot);
    let verdict = match budget {
        Some(budget) => tokio::time::timeout(budget, admitted)
            .await
            .unwrap_or(Err(QuotaError::Timeout)),
        None => admitted.await,
    };
    let (outcome, response) = match verdict {
        Ok(Verdict::Allow { in_use }) => {
            state.metrics.quota_decision(if request.dry_run {
                QuotaOutcome::DryRun
            } else {
                QuotaOutcome::Allowed
            });
            if quotas.names(namespace) && !request.dry_run {
                state.metrics.quota_usage(namespace, in_use, max_pods);
            }
            let mut response = AdmissionResponse::from(&request);
            if in_use >= max_pods {
                response.warnings = Some(vec![format!(
                    "nodewright: namespace {namespace} now uses all {max_pods} of its pods"
                )]);
            }
            (Outcome::Allowed, response)
        }
        Ok(Verdict::Deny { in_use, message }) => {
            state.metrics.quota_decision(QuotaOutcome::Denied);
            if quotas.names(namespace) {
                state.metrics.quota_usage(namespace, in_use, max_pods);
            }
            tracing::info!(uid = %request.uid, namespace, pod = %name, in_use, limit = max_pods, "over quota");
            let mut response = AdmissionResponse::from(&request).deny(&message);
            response.result = Status::failure(&message, "Forbidden").with_code(403);
            (Outcome::Denied, response)
        }
        Err(e) => quota_unchecked(&state.metrics, &quotas, &request, namespace, &e.to_string()),
    };
    Ok((outcome, response))
}

/// The quota could not be checked: refuse (failure policy Fail, the default) or let the pod through
/// with a warning (Ignore), logging and counting either way.
fn quota_unchecked(
    metrics: &crate::metrics::Metrics,
    quotas: &Quotas,
    request: &AdmissionRequest<PodView>,
    namespace: &str,
    error: &str,
) -> (Outcome, AdmissionResponse) {
    match quotas.failure_policy() {
        FailurePolicy::Fail => {
            metrics.quota_decision(QuotaOutcome::ErrorDenied);
            tracing::error!(uid = %request.uid, namespace, error, "pod quota not checked; refusing the pod (quotaFailurePolicy: Fail)");
            let message = format!(
                "nodewright could not check the pod quota of namespace {namespace} ({error}); the pod was refused, try again"
            );
            let mut response = AdmissionResponse::from(request).deny(&message);
            response.result = Status::failure(&message, "ServiceUnavailable").with_code(503);
            (Outcome::Denied, response)
        }
        FailurePolicy::Ignore => {
            metrics.quota_decision(QuotaOutcome::ErrorAllowed);
            tracing::warn!(uid = %request.uid, namespace, error, "pod quota not checked; admitting the pod (quotaFailurePolicy: Ignore)");
            let mut response = AdmissionResponse::from(request);
            response.warnings = Some(vec![format!(
                "nodewright: pod quota of namespace {namespace} not checked; admitted anyway"
            )]);
            (Outcome::Allowed, response)
        }
    }
}
