//! Admission webhooks, as kube-apiserver's admission chain calls them: the stored
//! `MutatingWebhookConfiguration`s and `ValidatingWebhookConfiguration`s
//! (admissionregistration.k8s.io/v1) are matched against every CREATE, UPDATE and DELETE,
//! their `clientConfig.url` is POSTed an AdmissionReview v1 over HTTPS (HTTP/2 when offered),
//! mutating patches are applied in order, validating webhooks run in parallel, and failures
//! follow `failurePolicy`, worded as the apiserver words them.
//!
//! Webhooks are called outside the store's lock; the object is re-checked when it is stored.

use crate::App;
use crate::store::{DeleteOpts, Deleted, ResourceDef, Store, str_at};
use crate::util::{ApiError, Rng};
use base64::Engine;
use serde_json::{Map, Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const GROUP: &str = "admissionregistration.k8s.io";
const MUTATING: &str = "mutatingwebhookconfigurations";
const VALIDATING: &str = "validatingwebhookconfigurations";

/// The user every request is made as.
fn user_info() -> Value {
    json!({
        "username": "kube-standin-test",
        "uid": "00000000-0000-4000-8000-000000000000",
        "groups": ["system:masters", "system:authenticated"],
    })
}

/// Webhook-calling state: one HTTP client per CA bundle (connections are pooled).
pub(crate) struct Admission {
    clients: Mutex<HashMap<String, reqwest::Client>>,
    reuse_connections: bool,
    rng: Mutex<Rng>,
}

impl Admission {
    pub fn new(reuse_connections: bool) -> Self {
        Self {
            clients: Mutex::new(HashMap::new()),
            reuse_connections,
            rng: Mutex::new(Rng::from_time()),
        }
    }

    fn uid(&self) -> String {
        self.rng.lock().unwrap_or_else(|e| e.into_inner()).uuid()
    }

    fn client(&self, ca_bundle: &str) -> Result<reqwest::Client, String> {
        if self.reuse_connections
            && let Some(c) = self
                .clients
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(ca_bundle)
        {
            return Ok(c.clone());
        }
        let pem = base64::engine::general_purpose::STANDARD
            .decode(ca_bundle.trim())
            .map_err(|e| format!("could not get REST client: invalid caBundle: {e}"))?;
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(90));
        if !self.reuse_connections {
            b = b.pool_max_idle_per_host(0);
        }
        if !pem.is_empty() {
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("could not get REST client: invalid caBundle: {e}"))?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let client = b
            .build()
            .map_err(|e| format!("could not get REST client: {e}"))?;
        if self.reuse_connections {
            self.clients
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(ca_bundle.to_string(), client.clone());
        }
        Ok(client)
    }
}

/// Whether any webhook configuration exists (the fast path skips admission otherwise).
pub(crate) fn active(app: &App) -> bool {
    let store = app.store();
    store.has_any(GROUP, MUTATING) || store.has_any(GROUP, VALIDATING)
}

/// Webhooks are never called for admission configuration objects.
pub(crate) fn exempt(res: &ResourceDef) -> bool {
    res.group == GROUP
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Create,
    Update,
    Delete,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Create => "CREATE",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
        }
    }
}

/// What the request is about (admission.Attributes).
pub(crate) struct Attrs<'a> {
    pub res: &'a ResourceDef,
    pub version: &'a str,
    /// The request's namespace; for namespace objects named in the path, their name.
    pub namespace: String,
    pub name: String,
    pub status: bool,
    pub op: Op,
    pub dry_run: bool,
    pub options: Value,
}

impl Attrs<'_> {
    fn is_namespaces(&self) -> bool {
        self.res.plural == "namespaces"
    }
}

#[derive(Debug, Clone)]
struct Rule {
    operations: Vec<String>,
    groups: Vec<String>,
    versions: Vec<String>,
    resources: Vec<String>,
    scope: String,
}

#[derive(Debug, Clone)]
struct Hook {
    name: String,
    url: Option<String>,
    has_service: bool,
    ca_bundle: String,
    rules: Vec<Rule>,
    fail_open: bool,
    side_effects: Option<String>,
    timeout: u64,
    namespace_selector: Value,
    object_selector: Value,
    reinvoke: bool,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn parse_hook(h: &Value) -> Hook {
    let rules = h
        .get("rules")
        .and_then(Value::as_array)
        .map(|rs| {
            rs.iter()
                .map(|r| Rule {
                    operations: strings(r.get("operations")),
                    groups: strings(r.get("apiGroups")),
                    versions: strings(r.get("apiVersions")),
                    resources: strings(r.get("resources")),
                    scope: str_at(r, "/scope").unwrap_or("*").to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    Hook {
        name: str_at(h, "/name").unwrap_or("").to_string(),
        url: str_at(h, "/clientConfig/url").map(str::to_string),
        has_service: h.pointer("/clientConfig/service").is_some(),
        ca_bundle: str_at(h, "/clientConfig/caBundle")
            .unwrap_or("")
            .to_string(),
        rules,
        fail_open: str_at(h, "/failurePolicy") == Some("Ignore"),
        side_effects: str_at(h, "/sideEffects").map(str::to_string),
        timeout: h
            .get("timeoutSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(10)
            .clamp(1, 30),
        namespace_selector: h.get("namespaceSelector").cloned().unwrap_or(json!({})),
        object_selector: h.get("objectSelector").cloned().unwrap_or(json!({})),
        reinvoke: str_at(h, "/reinvocationPolicy") == Some("IfNeeded"),
    }
}

/// The webhooks of every configuration of `plural`, by configuration name, then list order.
fn hooks(store: &Store, plural: &str) -> Vec<Hook> {
    let mut configs = store.all_of(GROUP, plural);
    configs.sort_by(|a, b| str_at(a, "/metadata/name").cmp(&str_at(b, "/metadata/name")));
    configs
        .iter()
        .flat_map(|c| {
            c.get("webhooks")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .map(|h| parse_hook(&h))
        .collect()
}

fn any_or(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

fn rule_matches(r: &Rule, a: &Attrs) -> bool {
    let scope = match r.scope.as_str() {
        "*" | "" => true,
        "Namespaced" => !a.is_namespaces() && !a.namespace.is_empty(),
        "Cluster" => a.is_namespaces() || a.namespace.is_empty(),
        _ => false,
    };
    let sub = if a.status { "status" } else { "" };
    scope
        && any_or(&r.operations, a.op.as_str())
        && any_or(&r.groups, &a.res.group)
        && any_or(&r.versions, a.version)
        && r.resources.iter().any(|rr| {
            let (res, rsub) = rr.split_once('/').unwrap_or((rr.as_str(), ""));
            (res == "*" || res == a.res.plural) && (rsub == "*" || rsub == sub)
        })
}

fn selector_is_empty(sel: &Value) -> bool {
    let empty = |k: &str| {
        sel.get(k).is_none_or(|v| {
            v.is_null()
                || v.as_object().is_some_and(Map::is_empty)
                || v.as_array().is_some_and(Vec::is_empty)
        })
    };
    empty("matchLabels") && empty("matchExpressions")
}

/// A metav1.LabelSelector against a label map.
fn selector_matches(sel: &Value, labels: Option<&Map<String, Value>>) -> Result<bool, String> {
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    if let Some(ml) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in ml {
            if get(k) != v.as_str() {
                return Ok(false);
            }
        }
    }
    if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
        for e in exprs {
            let key = str_at(e, "/key").unwrap_or("");
            let values = strings(e.get("values"));
            let have = get(key);
            let ok = match str_at(e, "/operator").unwrap_or("") {
                "In" => have.is_some_and(|h| values.iter().any(|v| v == h)),
                "NotIn" => have.is_none_or(|h| !values.iter().any(|v| v == h)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                other => return Err(format!("{other:?} is not a valid label selector operator")),
            };
            if !ok {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

fn labels_of(obj: Option<&Value>) -> Option<&Map<String, Value>> {
    obj.and_then(|o| o.pointer("/metadata/labels"))
        .and_then(Value::as_object)
}

fn internal(message: impl std::fmt::Display) -> ApiError {
    let message = message.to_string();
    let mut e = ApiError::new(
        500,
        "InternalError",
        format!("Internal error occurred: {message}"),
    );
    e.details = Some(json!({"causes": [{"message": message}]}));
    e
}

/// Should `h` be called for this request (rules, namespaceSelector, objectSelector)?
/// `matchConditions` (CEL) are not evaluated: a webhook that has them is called.
fn should_call(
    app: &App,
    h: &Hook,
    a: &Attrs,
    obj: Option<&Value>,
    old: Option<&Value>,
) -> Result<bool, ApiError> {
    if !h.rules.iter().any(|r| rule_matches(r, a)) {
        return Ok(false);
    }
    let cluster_scoped = a.namespace.is_empty() && !a.is_namespaces();
    if !cluster_scoped && !selector_is_empty(&h.namespace_selector) {
        let labels: Option<Map<String, Value>> =
            if a.is_namespaces() && !a.status && matches!(a.op, Op::Create | Op::Update) {
                labels_of(obj).cloned()
            } else {
                let ns = app
                    .store()
                    .get(&namespaces_def(), &a.namespace)
                    .ok_or_else(|| ApiError::not_found("", "namespaces", &a.namespace))?;
                labels_of(Some(&ns)).cloned()
            };
        if !selector_matches(&h.namespace_selector, labels.as_ref()).map_err(internal)? {
            return Ok(false);
        }
    }
    if !selector_is_empty(&h.object_selector) {
        let new = obj.is_some()
            && selector_matches(&h.object_selector, labels_of(obj)).map_err(internal)?;
        let old = old.is_some()
            && selector_matches(&h.object_selector, labels_of(old)).map_err(internal)?;
        if !new && !old {
            return Ok(false);
        }
    }
    Ok(true)
}

fn namespaces_def() -> ResourceDef {
    ResourceDef {
        group: String::new(),
        versions: vec!["v1".into()],
        plural: "namespaces".into(),
        singular: "namespace".into(),
        kind: "Namespace".into(),
        list_kind: "NamespaceList".into(),
        namespaced: false,
        status: true,
        short_names: vec![],
        custom: false,
    }
}

fn review(uid: &str, a: &Attrs, obj: Option<&Value>, old: Option<&Value>) -> Value {
    let kind = json!({"group": a.res.group, "version": a.version, "kind": a.res.kind});
    let resource = json!({"group": a.res.group, "version": a.version, "resource": a.res.plural});
    let mut req = json!({
        "uid": uid,
        "kind": kind,
        "resource": resource,
        "requestKind": kind,
        "requestResource": resource,
        "operation": a.op.as_str(),
        "userInfo": user_info(),
        "object": obj.cloned().unwrap_or(Value::Null),
        "oldObject": old.cloned().unwrap_or(Value::Null),
        "dryRun": a.dry_run,
        "options": a.options,
    });
    if let Value::Object(m) = &mut req {
        if a.status {
            m.insert("subResource".into(), json!("status"));
            m.insert("requestSubResource".into(), json!("status"));
        }
        if !a.name.is_empty() {
            m.insert("name".into(), json!(a.name));
        }
        if !a.namespace.is_empty() {
            m.insert("namespace".into(), json!(a.namespace));
        }
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req})
}

/// A verified webhook answer.
struct Answer {
    allowed: bool,
    status: Option<Value>,
    patch: Option<Vec<u8>>,
    warnings: Vec<String>,
}

/// Call a webhook; `Err` is the reason of a failed call (failurePolicy applies).
async fn call(
    app: &App,
    h: &Hook,
    body: Vec<u8>,
    uid: &str,
    mutating: bool,
) -> Result<Answer, String> {
    let Some(url) = h.url.as_deref() else {
        return Err(if h.has_service {
            "could not get REST client: kube-standin cannot resolve clientConfig.service; use clientConfig.url".to_string()
        } else {
            "could not get REST client: clientConfig has neither url nor service".to_string()
        });
    };
    if !url.starts_with("https://") {
        return Err(format!(
            "could not get REST client: webhook url {url:?} must use the https scheme"
        ));
    }
    let client = app.admission.client(&h.ca_bundle)?;
    let sep = if url.contains('?') { '&' } else { '?' };
    let full = format!("{url}{sep}timeout={}s", h.timeout);
    let send = client
        .post(&full)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::ACCEPT, "application/json, */*")
        .timeout(Duration::from_secs(h.timeout))
        .body(body)
        .send();
    let describe = |e: reqwest::Error| {
        if e.is_timeout() {
            return format!("failed to call webhook: Post \"{full}\": context deadline exceeded");
        }
        let mut parts = Vec::new();
        let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(s) = src {
            parts.push(s.to_string());
            src = s.source();
        }
        let detail = if parts.is_empty() {
            e.to_string()
        } else {
            parts.join(": ")
        };
        format!("failed to call webhook: Post \"{full}\": {detail}")
    };
    let resp = send.await.map_err(describe)?;
    let code = resp.status();
    let bytes = resp.bytes().await.map_err(describe)?;
    if !code.is_success() {
        let msg = serde_json::from_slice::<Value>(&bytes).ok().and_then(|v| {
            (v.get("kind").and_then(Value::as_str) == Some("Status"))
                .then(|| str_at(&v, "/message").map(str::to_string))
                .flatten()
        });
        let text = String::from_utf8_lossy(&bytes);
        let detail = match msg {
            Some(m) => m,
            None if text.trim().is_empty() => format!(
                "the server responded with the status code {} but did not return more information",
                code.as_u16()
            ),
            None => format!(
                "an error on the server ({:?}) has prevented the request from succeeding",
                text.trim()
            ),
        };
        return Err(format!("failed to call webhook: {detail}"));
    }
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("failed to call webhook: could not decode the response: {e}"))?;
    let invalid = |m: String| format!("received invalid webhook response: {m}");
    let (av, kind) = (str_at(&v, "/apiVersion"), str_at(&v, "/kind"));
    let Some(r) = v.get("response").filter(|r| r.is_object()) else {
        return Err(invalid("webhook response was absent".into()));
    };
    let got_uid = str_at(r, "/uid").unwrap_or("");
    if got_uid != uid {
        return Err(invalid(format!(
            "expected response.uid={uid:?}, got {got_uid:?}"
        )));
    }
    if av != Some("admission.k8s.io/v1") || kind != Some("AdmissionReview") {
        return Err(invalid(format!(
            "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got {}, Kind={}",
            av.unwrap_or(""),
            kind.unwrap_or("")
        )));
    }
    let patch = str_at(r, "/patch").filter(|p| !p.is_empty());
    let patch_type = str_at(r, "/patchType").filter(|p| !p.is_empty());
    match (patch, patch_type) {
        (Some(_), None) => {
            return Err(invalid(
                "webhook returned response.patch but not response.patchType".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                "webhook returned response.patchType but not response.patch".into(),
            ));
        }
        (Some(_), Some(_)) if !mutating => {
            return Err(invalid("validating webhooks may not return patches".into()));
        }
        (Some(_), Some(t)) if t != "JSONPatch" => {
            return Err(invalid(format!(
                "webhook returned invalid response.patchType of {t:?}"
            )));
        }
        _ => {}
    }
    let patch = match patch {
        Some(p) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(p)
                .map_err(|e| invalid(format!("invalid base64 in response.patch: {e}")))?,
        ),
        None => None,
    };
    Ok(Answer {
        allowed: r.get("allowed").and_then(Value::as_bool).unwrap_or(false),
        status: r.get("status").filter(|s| s.is_object()).cloned(),
        patch,
        warnings: strings(r.get("warnings")),
    })
}

/// `reason` strings are `&'static` in [`ApiError`]: intern a webhook's own reasons.
fn intern(s: &str) -> &'static str {
    static SEEN: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(|| Mutex::new(HashSet::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(s) = seen.get(s) {
        return s;
    }
    let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
    seen.insert(leaked);
    leaked
}

/// The denial, as webhookerrors.ToStatusErr words it.
fn denied(a: &Attrs, hook: &str, status: Option<&Value>) -> ApiError {
    let status = status.cloned().unwrap_or(json!({}));
    let code = status
        .get("code")
        .and_then(Value::as_u64)
        .filter(|c| *c != 0)
        .unwrap_or(403) as u16;
    let message = str_at(&status, "/message").unwrap_or("");
    let reason = str_at(&status, "/reason").unwrap_or("");
    let denied_by = format!("admission webhook {hook:?} denied the request");
    let text = if !message.is_empty() {
        format!("{denied_by}: {message}")
    } else if !reason.is_empty() {
        format!("{denied_by}: {reason}")
    } else {
        format!("{denied_by} without explanation")
    };
    let name = if a.name.is_empty() {
        "Unknown"
    } else {
        a.name.as_str()
    };
    let details = match status.get("details").filter(|d| d.is_object()) {
        Some(d) => d.clone(),
        None if code == 500 => json!({"causes": [{"message": text}]}),
        None => {
            let mut d = Map::new();
            d.insert("name".into(), json!(name));
            if !a.res.group.is_empty() {
                d.insert("group".into(), json!(a.res.group));
            }
            d.insert("kind".into(), json!(a.res.plural));
            Value::Object(d)
        }
    };
    let gr = if a.res.group.is_empty() {
        a.res.plural.clone()
    } else {
        format!("{}.{}", a.res.plural, a.res.group)
    };
    let prefix = if code == 500 {
        "Internal error occurred".to_string()
    } else {
        format!("{gr} {name:?} is forbidden")
    };
    let reason = if !reason.is_empty() {
        intern(reason)
    } else if code == 500 {
        "InternalError"
    } else {
        "Forbidden"
    };
    let mut e = ApiError::new(code, reason, format!("{prefix}: {text}"));
    e.details = Some(details);
    e
}

/// The dry-run check made before calling a webhook.
fn dry_run_check(a: &Attrs, h: &Hook) -> Result<Option<String>, ApiError> {
    if !a.dry_run {
        return Ok(None);
    }
    match h.side_effects.as_deref() {
        None => Ok(Some("Webhook SideEffects is nil".into())),
        Some("None" | "NoneOnDryRun") => Ok(None),
        Some(_) => Err(ApiError::bad_request(format!(
            "admission webhook {:?} does not support dry run",
            h.name
        ))),
    }
}

/// Run the mutating webhooks; returns the (possibly patched) object.
async fn mutate(
    app: &App,
    hooks: &[Hook],
    a: &Attrs<'_>,
    mut obj: Option<Value>,
    old: Option<&Value>,
    warnings: &mut Vec<String>,
) -> Result<Option<Value>, ApiError> {
    // Hooks with reinvocationPolicy IfNeeded already called, and those to call again
    // because a later webhook changed the object.
    let mut invoked: Vec<usize> = Vec::new();
    let mut again: Vec<usize> = Vec::new();
    for round in 0..2 {
        let order: Vec<usize> = if round == 0 {
            (0..hooks.len()).collect()
        } else {
            let mut a = std::mem::take(&mut again);
            a.sort_unstable();
            a.dedup();
            a
        };
        for i in order {
            let h = &hooks[i];
            if !should_call(app, h, a, obj.as_ref(), old)? {
                continue;
            }
            let changed = call_mutating(app, h, a, &mut obj, old, warnings).await?;
            if round == 0 {
                if changed {
                    again.extend(invoked.iter().copied());
                }
                if h.reinvoke {
                    invoked.push(i);
                }
            }
        }
        if again.is_empty() {
            break;
        }
    }
    Ok(obj)
}

/// One mutating call: Ok(changed).
async fn call_mutating(
    app: &App,
    h: &Hook,
    a: &Attrs<'_>,
    obj: &mut Option<Value>,
    old: Option<&Value>,
    warnings: &mut Vec<String>,
) -> Result<bool, ApiError> {
    let failed = |reason: String| -> Result<bool, ApiError> {
        if h.fail_open {
            tracing::warn!(webhook = %h.name, %reason, "failed calling webhook, failing open");
            Ok(false)
        } else {
            Err(internal(format!(
                "failed calling webhook {:?}: {reason}",
                h.name
            )))
        }
    };
    if let Some(reason) = dry_run_check(a, h)? {
        return failed(reason);
    }
    let uid = app.admission.uid();
    let body = serde_json::to_vec(&review(&uid, a, obj.as_ref(), old)).unwrap_or_default();
    let answer = match call(app, h, body, &uid, true).await {
        Ok(ans) => ans,
        Err(reason) => return failed(reason),
    };
    warnings.extend(answer.warnings);
    if !answer.allowed {
        return Err(denied(a, &h.name, answer.status.as_ref()));
    }
    let Some(bytes) = answer.patch else {
        return Ok(false);
    };
    let patch: json_patch::Patch = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => {
            return failed(format!(
                "received undecodable patch in webhook response: {e}"
            ));
        }
    };
    if patch.0.is_empty() {
        return Ok(false);
    }
    let Some(current) = obj.as_mut() else {
        return Err(internal(format!(
            "admission webhook {:?} attempted to modify the object, which is not supported for this operation",
            h.name
        )));
    };
    let mut patched = current.clone();
    json_patch::patch(&mut patched, &patch).map_err(internal)?;
    if !patched.is_object() {
        return Err(internal("the patched object is not a JSON object"));
    }
    let changed = patched != *current;
    *current = patched;
    Ok(changed)
}

/// Run the validating webhooks in parallel; the first refusal or failed call (in list
/// order) refuses the request.
async fn validate(
    app: &App,
    hooks: &[Hook],
    a: &Attrs<'_>,
    obj: Option<&Value>,
    old: Option<&Value>,
    warnings: &mut Vec<String>,
) -> Result<(), ApiError> {
    let mut calls = Vec::new();
    for h in hooks {
        if should_call(app, h, a, obj, old)? {
            calls.push(h);
        }
    }
    let results = futures::future::join_all(calls.into_iter().map(|h| async move {
        let failed = |reason: String| -> Result<Vec<String>, ApiError> {
            if h.fail_open {
                tracing::warn!(webhook = %h.name, %reason, "failed calling webhook, failing open");
                Ok(Vec::new())
            } else {
                Err(internal(format!(
                    "failed calling webhook {:?}: {reason}",
                    h.name
                )))
            }
        };
        if let Some(reason) = dry_run_check(a, h)? {
            return failed(reason);
        }
        let uid = app.admission.uid();
        let body = serde_json::to_vec(&review(&uid, a, obj, old)).unwrap_or_default();
        match call(app, h, body, &uid, false).await {
            Ok(ans) if ans.allowed => Ok(ans.warnings),
            Ok(ans) => Err(denied(a, &h.name, ans.status.as_ref())),
            Err(reason) => failed(reason),
        }
    }))
    .await;
    let mut first_err = None;
    for r in results {
        match r {
            Ok(w) => warnings.extend(w),
            Err(e) => {
                if first_err.is_none() {
                    first_err = Some(e);
                }
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn snapshot(app: &App) -> (Vec<Hook>, Vec<Hook>) {
    let store = app.store();
    (hooks(&store, MUTATING), hooks(&store, VALIDATING))
}

fn options(kind: &str, dry_run: bool, params: &HashMap<String, String>) -> Value {
    let mut o = json!({"kind": kind, "apiVersion": "meta.k8s.io/v1"});
    if let Value::Object(m) = &mut o {
        if dry_run {
            m.insert("dryRun".into(), json!(["All"]));
        }
        if let Some(f) = params.get("fieldManager").filter(|f| !f.is_empty()) {
            m.insert("fieldManager".into(), json!(f));
        }
    }
    o
}

/// CREATE through admission: mutate the body, prepare it as it will be stored (name, uid,
/// timestamps), validate, store.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn create(
    app: &Arc<App>,
    res: &ResourceDef,
    version: &str,
    ns: Option<&str>,
    body: Value,
    dry_run: bool,
    params: &HashMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<Arc<Value>, ApiError> {
    let obj = Store::normalize_new(res, version, ns, body)?;
    let ns = ns.filter(|_| res.namespaced);
    if let Some(ns) = ns
        && !app.store().namespace_exists(ns)
    {
        return Err(ApiError::not_found("", "namespaces", ns));
    }
    let (mutating, validating) = snapshot(app);
    let mut a = Attrs {
        res,
        version,
        namespace: ns.unwrap_or("").to_string(),
        name: str_at(&obj, "/metadata/name").unwrap_or("").to_string(),
        status: false,
        op: Op::Create,
        dry_run,
        options: options("CreateOptions", dry_run, params),
    };
    let obj = mutate(app, &mutating, &a, Some(obj), None, warnings)
        .await?
        .unwrap_or(Value::Null);
    let prepared = app.store().prepare_new(res, version, ns, obj, false)?;
    a.name = str_at(&prepared, "/metadata/name")
        .unwrap_or("")
        .to_string();
    validate(app, &validating, &a, Some(&prepared), None, warnings).await?;
    if dry_run {
        return Ok(Arc::new(prepared));
    }
    app.store().commit_new(res, prepared)
}

/// How an UPDATE's new object is made from the current one.
pub(crate) enum Change<'a> {
    Put(Value),
    Patch(&'a (dyn Fn(&Value) -> Result<Value, ApiError> + Send + Sync)),
}

/// UPDATE (PUT or PATCH) through admission. If the object changes while the webhooks are
/// called, the update starts over from the new object (as GuaranteedUpdate retries).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn update(
    app: &Arc<App>,
    res: &ResourceDef,
    version: &str,
    ns: Option<&str>,
    name: &str,
    status: bool,
    change: Change<'_>,
    dry_run: bool,
    params: &HashMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<Arc<Value>, ApiError> {
    let (mutating, validating) = snapshot(app);
    let a = Attrs {
        res,
        version,
        namespace: if res.is("", "namespaces") {
            name.to_string()
        } else {
            ns.unwrap_or("").to_string()
        },
        name: name.to_string(),
        status,
        op: Op::Update,
        dry_run,
        options: options("UpdateOptions", dry_run, params),
    };
    for _ in 0..8 {
        let old = app.store().current(res, ns, name)?;
        let candidate = match &change {
            Change::Put(body) => Store::put_candidate(res, version, ns, name, body.clone())?,
            Change::Patch(apply) => Store::patch_candidate(res, version, name, &old, apply)?,
        };
        let mut w = Vec::new();
        let mutated = mutate(app, &mutating, &a, Some(candidate), Some(&old), &mut w)
            .await?
            .unwrap_or(Value::Null);
        let Some(prepared) =
            app.store()
                .update_from(res, ns, name, &old, mutated.clone(), status, true)?
        else {
            continue;
        };
        validate(app, &validating, &a, Some(&prepared), Some(&old), &mut w).await?;
        warnings.extend(w);
        if dry_run {
            return Ok(prepared);
        }
        if let Some(stored) = app
            .store()
            .update_from(res, ns, name, &old, mutated, status, false)?
        {
            return Ok(stored);
        }
    }
    Err(ApiError::conflict(&res.group, &res.plural, name))
}

/// DELETE through admission: the webhooks see the current object as `oldObject`.
pub(crate) async fn delete(
    app: &Arc<App>,
    res: &ResourceDef,
    version: &str,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOpts,
    warnings: &mut Vec<String>,
) -> Result<Deleted, ApiError> {
    let old = app.store().current(res, ns, name)?;
    let (mutating, validating) = snapshot(app);
    let mut options = json!({"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1"});
    if let Value::Object(m) = &mut options {
        if opts.dry_run {
            m.insert("dryRun".into(), json!(["All"]));
        }
        if let Some(g) = opts.grace {
            m.insert("gracePeriodSeconds".into(), json!(g));
        }
        let mut pre = Map::new();
        if let Some(uid) = &opts.precondition_uid {
            pre.insert("uid".into(), json!(uid));
        }
        if let Some(rv) = &opts.precondition_rv {
            pre.insert("resourceVersion".into(), json!(rv));
        }
        if !pre.is_empty() {
            m.insert("preconditions".into(), Value::Object(pre));
        }
    }
    let a = Attrs {
        res,
        version,
        namespace: if res.is("", "namespaces") {
            name.to_string()
        } else {
            ns.unwrap_or("").to_string()
        },
        name: name.to_string(),
        status: false,
        op: Op::Delete,
        dry_run: opts.dry_run,
        options,
    };
    mutate(app, &mutating, &a, None, Some(&old), warnings).await?;
    validate(app, &validating, &a, None, Some(&old), warnings).await?;
    app.store().delete(res, ns, name, opts)
}

/// `Warning` header values (`299 - "<text>"`) for the client.
pub(crate) fn warning_headers(warnings: &[String]) -> Vec<axum::http::HeaderValue> {
    let mut seen = HashSet::new();
    warnings
        .iter()
        .filter(|w| seen.insert(w.as_str()))
        .filter_map(|w| {
            let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
            axum::http::HeaderValue::from_str(&format!("299 - \"{escaped}\"")).ok()
        })
        .collect()
}
