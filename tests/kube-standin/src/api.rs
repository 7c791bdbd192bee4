//! The HTTP surface: path routing, verbs, watches, discovery and the control endpoints.

use crate::App;
use crate::admission;
use crate::faults::Faults;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{
    Change, ChangeType, DeleteOpts, Deleted, ResourceDef, Store, object_key, str_at,
};
use crate::util::{ApiError, hex_decode, hex_encode, json_response};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

const MAX_BODY: usize = 64 << 20;

/// `control_port`: this router serves the separate control listener.
pub(crate) fn router(app: Arc<App>, control_port: bool) -> Router {
    Router::new()
        .fallback(handle)
        .with_state((app, control_port))
}

type Params = HashMap<String, String>;

async fn handle(State((app, control_port)): State<(Arc<App>, bool)>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                413,
                "RequestEntityTooLarge",
                "the request body is too large or unreadable",
            )
            .into_response();
        }
    };
    if let Some(rest) = path.strip_prefix("/_standin/") {
        return control(&app, control_port, &parts.method, rest, &body).await;
    }
    let is_write = !matches!(parts.method, Method::GET | Method::HEAD);
    if let Some(d) = app.faults.latency(is_write) {
        tokio::time::sleep(d).await;
    }
    let health = matches!(path.as_str(), "/healthz" | "/livez" | "/readyz");
    if !health && let Some(code) = app.faults.roll_error() {
        let reason = match code {
            503 => "ServiceUnavailable",
            429 => "TooManyRequests",
            504 => "Timeout",
            _ => "InternalError",
        };
        return ApiError::new(
            code,
            reason,
            "Internal error occurred: injected fault (kube-standin)",
        )
        .into_response();
    }
    let params = match Query::<Params>::try_from_uri(&parts.uri) {
        Ok(Query(p)) => p,
        Err(e) => return ApiError::bad_request(format!("invalid query: {e}")).into_response(),
    };
    if let Some(access) = crate::access::attributes(&parts.method, &path, &params) {
        let token = crate::access::token(&parts.headers);
        app.access
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((token, access));
    }
    match route(&app, &parts, &path, &params, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn ok(v: &Value) -> Response {
    json_response(StatusCode::OK, v)
}

async fn route(
    app: &Arc<App>,
    parts: &Parts,
    path: &str,
    params: &Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let get_only = || {
        if parts.method == Method::GET {
            Ok(())
        } else {
            Err(ApiError::method_not_allowed())
        }
    };
    match segs.as_slice() {
        ["healthz"] | ["livez"] | ["readyz"] => {
            let mut r = Response::new(Body::from("ok"));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            Ok(r)
        }
        ["version"] => {
            get_only()?;
            Ok(ok(&json!({
                "major": "1", "minor": "34", "gitVersion": "v1.34.0-kube-standin", "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean", "buildDate": "2025-08-27T00:00:00Z", "goVersion": "go1.24.6", "compiler": "gc", "platform": "linux/amd64"
            })))
        }
        ["api"] => {
            get_only()?;
            let host = parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("127.0.0.1");
            Ok(ok(&json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]
            })))
        }
        ["api", "v1"] => {
            get_only()?;
            resource_list(&app.store(), "", "v1")
        }
        ["apis"] => {
            get_only()?;
            let groups = api_groups(&app.store());
            Ok(ok(
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            ))
        }
        ["apis", g] => {
            get_only()?;
            let groups = api_groups(&app.store());
            let mut group = groups
                .into_iter()
                .find(|x| x["name"] == *g)
                .ok_or_else(ApiError::no_route)?;
            if let Value::Object(o) = &mut group {
                o.insert("kind".into(), json!("APIGroup"));
                o.insert("apiVersion".into(), json!("v1"));
            }
            Ok(ok(&group))
        }
        ["apis", g, v] => {
            get_only()?;
            resource_list(&app.store(), g, v)
        }
        ["api", "v1", "namespaces", ns, "pods", name, "binding"] => {
            binding(app, parts, ns, Some(name), params, &body)
        }
        ["api", "v1", "namespaces", ns, "bindings"] => binding(app, parts, ns, None, params, &body),
        ["api", "v1", rest @ ..] => resource(app, parts, "", "v1", rest, params, body).await,
        ["apis", g, v, rest @ ..] => resource(app, parts, g, v, rest, params, body).await,
        _ => Err(ApiError::no_route()),
    }
}

fn api_groups(store: &Store) -> Vec<Value> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in store.resources().filter(|r| !r.group.is_empty()) {
        let vs = groups.entry(r.group.clone()).or_default();
        for v in &r.versions {
            if !vs.contains(v) {
                vs.push(v.clone());
            }
        }
    }
    groups
        .into_iter()
        .filter(|(_, vs)| !vs.is_empty())
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect()
}

fn resource_list(store: &Store, group: &str, version: &str) -> Result<Response, ApiError> {
    let mut resources = Vec::new();
    for r in store
        .resources()
        .filter(|r| r.group == group && r.versions.iter().any(|v| v == version))
    {
        let mut entry = json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        });
        if !r.short_names.is_empty()
            && let Value::Object(o) = &mut entry
        {
            o.insert("shortNames".into(), json!(r.short_names));
        }
        resources.push(entry);
        if r.status {
            resources.push(json!({
                "name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
                "kind": r.kind, "verbs": ["get", "patch", "update"],
            }));
        }
        if r.is("", "pods") && version == "v1" {
            resources.push(json!({
                "name": "pods/binding", "singularName": "", "namespaced": true,
                "kind": "Binding", "verbs": ["create"],
            }));
        }
    }
    if group.is_empty() && version == "v1" {
        resources.push(json!({
            "name": "bindings", "singularName": "binding", "namespaced": true,
            "kind": "Binding", "verbs": ["create"],
        }));
    }
    if resources.is_empty() {
        return Err(ApiError::no_route());
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Ok(ok(
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    ))
}

/// What a resource path names.
struct Target {
    res: ResourceDef,
    version: String,
    ns: Option<String>,
    name: Option<String>,
    status: bool,
}

fn target(store: &Store, group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let (res, ns, tail) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if store
                .lookup(group, version, plural)
                .is_some_and(|r| r.namespaced) =>
        {
            (
                store.lookup(group, version, plural).cloned(),
                Some(ns.to_string()),
                tail,
            )
        }
        [plural, tail @ ..] => (store.lookup(group, version, plural).cloned(), None, tail),
        [] => (None, None, rest),
    };
    let res = res.ok_or_else(ApiError::no_route)?;
    let (name, sub) = match tail {
        [] => (None, None),
        [name] => (Some(name.to_string()), None),
        [name, sub] => (Some(name.to_string()), Some(*sub)),
        _ => return Err(ApiError::no_route()),
    };
    if res.namespaced && ns.is_none() && name.is_some() {
        return Err(ApiError::no_route());
    }
    let status = match sub {
        None => false,
        Some("status") if res.status => true,
        Some(_) => return Err(ApiError::no_route()),
    };
    Ok(Target {
        res,
        version: version.to_string(),
        ns,
        name,
        status,
    })
}

/// How objects are written back: whole, or as `PartialObjectMetadata` when the client's
/// Accept header asks for it (kube-rs's `*_metadata` calls and `metadata_watcher`).
#[derive(Clone)]
struct Render {
    meta_only: bool,
    api_version: String,
}

impl Render {
    fn new(headers: &HeaderMap, t: &Target) -> Self {
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        Self {
            meta_only: accept.contains("as=PartialObjectMetadata"),
            api_version: t.res.api_version(&t.version),
        }
    }

    fn object(&self, obj: &Value) -> Value {
        if self.meta_only {
            return json!({
                "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
            });
        }
        let mut v = obj.clone();
        if let Value::Object(o) = &mut v
            && o.get("apiVersion").and_then(Value::as_str) != Some(self.api_version.as_str())
        {
            o.insert("apiVersion".into(), json!(self.api_version));
        }
        v
    }

    fn list(&self, res: &ResourceDef, metadata: Value, items: Vec<Value>) -> Value {
        if self.meta_only {
            json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "items": items})
        } else {
            json!({"kind": res.list_kind, "apiVersion": self.api_version, "metadata": metadata, "items": items})
        }
    }
}

fn dry_run(params: &Params) -> Result<bool, ApiError> {
    match params.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "Invalid dry run value: {other:?}: supported values: \"All\""
        ))),
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the body of the request could not be decoded: {e}"))
    })
}

struct Selectors {
    labels: LabelSelector,
    fields: FieldSelector,
    ns: Option<String>,
    group: String,
    plural: String,
}

impl Selectors {
    fn new(t: &Target, params: &Params) -> Result<Self, ApiError> {
        Ok(Self {
            labels: LabelSelector::parse(
                params
                    .get("labelSelector")
                    .map(String::as_str)
                    .unwrap_or(""),
            )?,
            fields: FieldSelector::parse(
                params
                    .get("fieldSelector")
                    .map(String::as_str)
                    .unwrap_or(""),
                &t.res.group,
                &t.res.plural,
            )?,
            ns: t.ns.clone(),
            group: t.res.group.clone(),
            plural: t.res.plural.clone(),
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        self.ns
            .as_deref()
            .is_none_or(|ns| str_at(obj, "/metadata/namespace") == Some(ns))
            && self.labels.matches(obj)
            && self.fields.matches(&self.group, &self.plural, obj)
    }
}

async fn resource(
    app: &Arc<App>,
    parts: &Parts,
    group: &str,
    version: &str,
    rest: &[&str],
    params: &Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    let t = target(&app.store(), group, version, rest)?;
    let render = Render::new(&parts.headers, &t);
    let watch = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
    let res = &t.res;
    let ns = t.ns.as_deref();
    let admit = !matches!(parts.method, Method::GET | Method::HEAD)
        && !admission::exempt(res)
        && admission::active(app);
    let mut warnings = Vec::new();
    if admit {
        let r = admitted(app, parts, &t, params, body, &render, &mut warnings).await;
        return Ok(with_warnings(r, &warnings));
    }
    match (&parts.method, t.name.as_deref()) {
        (&Method::GET, None) if watch => start_watch(app, &t, params, render),
        (&Method::GET, None) => list(app, &t, params, &render),
        (&Method::GET, Some(name)) => {
            let obj = app.store().current(res, ns, name)?;
            Ok(ok(&render.object(&obj)))
        }
        (&Method::POST, None) => {
            let obj = parse_body(&body)?;
            let created = app
                .store()
                .create(res, version, ns, obj, dry_run(params)?)?;
            Ok(json_response(StatusCode::CREATED, &render.object(&created)))
        }
        (&Method::PUT, Some(name)) => {
            let obj = parse_body(&body)?;
            if app.faults.roll_conflict() {
                return Err(ApiError::conflict(&res.group, &res.plural, name));
            }
            let updated =
                app.store()
                    .update(res, version, ns, name, obj, t.status, dry_run(params)?)?;
            Ok(ok(&render.object(&updated)))
        }
        (&Method::PATCH, Some(name)) => {
            patch(app, parts, &t, name, params, &body, &render, None).await
        }
        (&Method::DELETE, Some(name)) => {
            let opts = delete_opts(params, &body)?;
            let outcome = app.store().delete(res, ns, name, &opts)?;
            Ok(delete_response(app, res, ns, outcome, &render))
        }
        (&Method::DELETE, None) => {
            let opts = delete_opts(params, &body)?;
            let sel = Selectors::new(&t, params)?;
            let names: Vec<(Option<String>, String)> = {
                let store = app.store();
                store
                    .objects_at(res, None)?
                    .values()
                    .filter(|o| sel.matches(o))
                    .map(|o| {
                        (
                            str_at(o, "/metadata/namespace")
                                .map(str::to_string)
                                .filter(|_| res.namespaced),
                            str_at(o, "/metadata/name").unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            };
            let mut items = Vec::new();
            for (ns, name) in names {
                let outcome = app.store().delete(res, ns.as_deref(), &name, &opts);
                if let Ok(outcome) = outcome {
                    let obj = match &outcome {
                        Deleted::Now(o)
                        | Deleted::Pending(o)
                        | Deleted::Graceful { object: o, .. } => render.object(o),
                    };
                    delete_response(app, res, ns.as_deref(), outcome, &render);
                    items.push(obj);
                }
            }
            let rv = app.store().rv.to_string();
            Ok(ok(&render.list(res, json!({"resourceVersion": rv}), items)))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// `POST /api/v1/namespaces/{ns}/pods/{name}/binding` (and the legacy
/// `POST /api/v1/namespaces/{ns}/bindings`, which takes the pod's name from the body): bind a
/// pod to a node as kube-apiserver's BindingREST does, answering `201` with a `Status`
/// Success. Admission webhooks are not called for bindings (a `pods` rule never matches
/// `pods/binding`; `pods/*` and `*/*` rules are not honoured here).
fn binding(
    app: &Arc<App>,
    parts: &Parts,
    ns: &str,
    url_name: Option<&str>,
    params: &Params,
    body: &Bytes,
) -> Result<Response, ApiError> {
    if parts.method != Method::POST {
        return Err(ApiError::method_not_allowed());
    }
    let b = parse_body(body)?;
    if !b.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    if let Some(kind) = str_at(&b, "/kind").filter(|k| !k.is_empty() && *k != "Binding") {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind (Binding)"
        )));
    }
    if let Some(av) = str_at(&b, "/apiVersion").filter(|v| !v.is_empty() && *v != "v1") {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version (v1)"
        )));
    }
    if str_at(&b, "/metadata/namespace").is_some_and(|n| !n.is_empty() && n != ns) {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let body_name = str_at(&b, "/metadata/name").unwrap_or("");
    let name = url_name.unwrap_or(body_name);
    if name != body_name {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Binding object",
        ));
    }
    if name.is_empty() {
        return Err(ApiError::bad_request("Name parameter required."));
    }
    // ValidatePodBinding. Its field errors are not a StatusError, so kube-apiserver answers
    // them as a 500 with no reason; so does this.
    let mut errs = Vec::new();
    let target_kind = str_at(&b, "/target/kind").unwrap_or("");
    if !target_kind.is_empty() && target_kind != "Node" {
        errs.push(format!(
            "target.kind: Unsupported value: \"{target_kind}\": supported values: \"Node\", \"<empty>\""
        ));
    }
    let node = str_at(&b, "/target/name").unwrap_or("");
    if node.is_empty() {
        errs.push("target.name: Required value".to_string());
    }
    if !errs.is_empty() {
        let message = if errs.len() == 1 {
            errs.remove(0)
        } else {
            format!("[{}]", errs.join(", "))
        };
        return Err(ApiError::new(500, "", message));
    }
    app.store().bind(ns, name, &b, node, dry_run(params)?)?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// Writes when admission webhooks are configured: every write goes through them.
async fn admitted(
    app: &Arc<App>,
    parts: &Parts,
    t: &Target,
    params: &Params,
    body: Bytes,
    render: &Render,
    warnings: &mut Vec<String>,
) -> Result<Response, ApiError> {
    let res = &t.res;
    let ns = t.ns.as_deref();
    let version = t.version.as_str();
    match (&parts.method, t.name.as_deref()) {
        (&Method::POST, None) => {
            let obj = parse_body(&body)?;
            let dry = dry_run(params)?;
            let created =
                admission::create(app, res, version, ns, obj, dry, params, warnings).await?;
            Ok(json_response(StatusCode::CREATED, &render.object(&created)))
        }
        (&Method::PUT, Some(name)) => {
            let obj = parse_body(&body)?;
            let dry = dry_run(params)?;
            if app.faults.roll_conflict() {
                return Err(ApiError::conflict(&res.group, &res.plural, name));
            }
            let updated = admission::update(
                app,
                res,
                version,
                ns,
                name,
                t.status,
                admission::Change::Put(obj),
                dry,
                params,
                warnings,
            )
            .await?;
            Ok(ok(&render.object(&updated)))
        }
        (&Method::PATCH, Some(name)) => {
            patch(app, parts, t, name, params, &body, render, Some(warnings)).await
        }
        (&Method::DELETE, Some(name)) => {
            let opts = delete_opts(params, &body)?;
            let outcome = admission::delete(app, res, version, ns, name, &opts, warnings).await?;
            Ok(delete_response(app, res, ns, outcome, render))
        }
        (&Method::DELETE, None) => {
            let opts = delete_opts(params, &body)?;
            let sel = Selectors::new(t, params)?;
            let names: Vec<(Option<String>, String)> = {
                let store = app.store();
                store
                    .objects_at(res, None)?
                    .values()
                    .filter(|o| sel.matches(o))
                    .map(|o| {
                        (
                            str_at(o, "/metadata/namespace")
                                .map(str::to_string)
                                .filter(|_| res.namespaced),
                            str_at(o, "/metadata/name").unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            };
            let mut items = Vec::new();
            for (ns, name) in names {
                let outcome =
                    admission::delete(app, res, version, ns.as_deref(), &name, &opts, warnings)
                        .await;
                match outcome {
                    Ok(outcome) => {
                        let obj = match &outcome {
                            Deleted::Now(o)
                            | Deleted::Pending(o)
                            | Deleted::Graceful { object: o, .. } => render.object(o),
                        };
                        delete_response(app, res, ns.as_deref(), outcome, render);
                        items.push(obj);
                    }
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            let rv = app.store().rv.to_string();
            Ok(ok(&render.list(res, json!({"resourceVersion": rv}), items)))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// The response (or error) with the webhooks' warnings as `Warning` headers.
fn with_warnings(r: Result<Response, ApiError>, warnings: &[String]) -> Response {
    let mut resp = match r {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    for v in admission::warning_headers(warnings) {
        resp.headers_mut().append(header::WARNING, v);
    }
    resp
}

fn list(
    app: &Arc<App>,
    t: &Target,
    params: &Params,
    render: &Render,
) -> Result<Response, ApiError> {
    let sel = Selectors::new(t, params)?;
    let limit = match params.get("limit").map(String::as_str) {
        None | Some("") => 0usize,
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit: {l:?}")))?,
    };
    let rv_param = params
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let rvm = params
        .get("resourceVersionMatch")
        .map(String::as_str)
        .unwrap_or("");
    let parse_rv = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}")))
    };
    let store = app.store();
    let (at, start_after) = match params
        .get("continue")
        .map(String::as_str)
        .filter(|c| !c.is_empty())
    {
        Some(token) => {
            let bad = || {
                ApiError::bad_request(
                    "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
                )
            };
            let (rv, key) = token.split_once('-').ok_or_else(bad)?;
            let rv = rv.parse::<u64>().map_err(|_| bad())?;
            let key = hex_decode(key).ok_or_else(bad)?;
            if rv < store.compacted_rv {
                return Err(ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ));
            }
            (rv, Some(key))
        }
        None => {
            let at = match (rvm, rv_param) {
                ("", _) | ("NotOlderThan", _) if rv_param.is_empty() || rv_param == "0" => store.rv,
                ("", r) | ("NotOlderThan", r) => {
                    let r = parse_rv(r)?;
                    if r > store.rv {
                        return Err(ApiError::new(
                            504,
                            "Timeout",
                            format!(
                                "Too large resource version: {r}, current resource version: {}",
                                store.rv
                            ),
                        ));
                    }
                    store.rv
                }
                ("Exact", r) if !r.is_empty() && r != "0" => {
                    let r = parse_rv(r)?;
                    if r > store.rv {
                        return Err(ApiError::new(
                            504,
                            "Timeout",
                            format!(
                                "Too large resource version: {r}, current resource version: {}",
                                store.rv
                            ),
                        ));
                    }
                    r
                }
                ("Exact", _) => {
                    return Err(ApiError::invalid(
                        "",
                        "ListOptions",
                        "",
                        "resourceVersionMatch",
                        "Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\" or unset",
                    ));
                }
                (other, _) => {
                    return Err(ApiError::invalid(
                        "",
                        "ListOptions",
                        "",
                        "resourceVersionMatch",
                        &format!(
                            "Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                        ),
                    ));
                }
            };
            (at, None)
        }
    };
    let objects = store.objects_at(&t.res, Some(at))?;
    drop(store);
    let range = match &start_after {
        Some(k) => {
            objects.range::<String, _>((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded))
        }
        None => objects.range::<String, _>(..),
    };
    let mut items = Vec::new();
    let mut last_key = None;
    let mut remaining = 0u64;
    for (k, o) in range {
        if !sel.matches(o) {
            continue;
        }
        if limit > 0 && items.len() >= limit {
            remaining += 1;
            continue;
        }
        items.push(render.object(o));
        last_key = Some(k.clone());
    }
    let mut metadata = json!({"resourceVersion": at.to_string()});
    if remaining > 0
        && let (Some(k), Value::Object(m)) = (last_key, &mut metadata)
    {
        m.insert("continue".into(), json!(format!("{at}-{}", hex_encode(&k))));
        m.insert("remainingItemCount".into(), json!(remaining));
    }
    Ok(ok(&render.list(&t.res, metadata, items)))
}

#[allow(clippy::too_many_arguments)]
async fn patch(
    app: &Arc<App>,
    parts: &Parts,
    t: &Target,
    name: &str,
    params: &Params,
    body: &Bytes,
    render: &Render,
    warnings: Option<&mut Vec<String>>,
) -> Result<Response, ApiError> {
    let ct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let ct = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let dry = dry_run(params)?;
    let res = &t.res;
    let unsupported = |msg: &str| ApiError::new(415, "UnsupportedMediaType", msg.to_string());
    enum P {
        Merge(Value),
        Json(json_patch::Patch),
    }
    let p = match ct.as_str() {
        // Strategic merge patch is applied as a JSON merge patch: lists are replaced, not
        // merged by key, and `$patch` directives are not interpreted.
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            P::Merge(parse_body(body)?)
        }
        "application/json-patch+json" => P::Json(
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?,
        ),
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
            return Err(unsupported(
                "server-side apply is not supported by kube-standin",
            ));
        }
        _ => {
            return Err(unsupported(&format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {ct:?})"
            )));
        }
    };
    if app.faults.roll_conflict() {
        return Err(ApiError::conflict(&res.group, &res.plural, name));
    }
    let apply = |old: &Value| -> Result<Value, ApiError> {
        let mut doc = old.clone();
        match &p {
            P::Merge(m) => json_patch::merge(&mut doc, m),
            P::Json(j) => json_patch::patch(&mut doc, j)
                .map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?,
        }
        Ok(doc)
    };
    let updated = match warnings {
        Some(w) => {
            admission::update(
                app,
                res,
                &t.version,
                t.ns.as_deref(),
                name,
                t.status,
                admission::Change::Patch(&apply),
                dry,
                params,
                w,
            )
            .await?
        }
        None => app
            .store()
            .patch(res, &t.version, t.ns.as_deref(), name, apply, t.status, dry)?,
    };
    Ok(ok(&render.object(&updated)))
}

fn delete_opts(params: &Params, body: &Bytes) -> Result<DeleteOpts, ApiError> {
    let mut opts = DeleteOpts {
        dry_run: dry_run(params)?,
        ..Default::default()
    };
    if let Some(g) = params.get("gracePeriodSeconds").filter(|g| !g.is_empty()) {
        opts.grace =
            Some(g.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid gracePeriodSeconds: {g:?}"))
            })?);
    }
    if !body.iter().all(u8::is_ascii_whitespace) {
        let b = parse_body(body)?;
        if let Some(g) = b.get("gracePeriodSeconds").and_then(Value::as_i64) {
            opts.grace = Some(g);
        }
        if let Some(rv) = str_at(&b, "/preconditions/resourceVersion") {
            opts.precondition_rv = Some(rv.to_string());
        }
        if let Some(uid) = str_at(&b, "/preconditions/uid") {
            opts.precondition_uid = Some(uid.to_string());
        }
        if let Some(d) = b.get("dryRun").and_then(Value::as_array) {
            for v in d {
                match v.as_str() {
                    Some("All") => opts.dry_run = true,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "Invalid dry run value: {other:?}: supported values: \"All\""
                        )));
                    }
                }
            }
        }
    }
    Ok(opts)
}

fn delete_response(
    app: &Arc<App>,
    res: &ResourceDef,
    ns: Option<&str>,
    outcome: Deleted,
    render: &Render,
) -> Response {
    match outcome {
        Deleted::Now(obj) if !(res.is("", "pods") || res.custom) => {
            let name = str_at(&obj, "/metadata/name").unwrap_or("");
            let uid = str_at(&obj, "/metadata/uid").unwrap_or("");
            let mut details = json!({"name": name, "kind": res.plural, "uid": uid});
            if !res.group.is_empty()
                && let Value::Object(d) = &mut details
            {
                d.insert("group".into(), json!(res.group));
            }
            ok(
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
            )
        }
        Deleted::Now(obj) | Deleted::Pending(obj) => ok(&render.object(&obj)),
        Deleted::Graceful { object, grace, uid } => {
            let name = str_at(&object, "/metadata/name").unwrap_or("").to_string();
            let key = object_key(ns, &name);
            let app2 = app.clone();
            let res2 = res.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(grace)).await;
                app2.store().finish_graceful(&res2, &key, &uid);
            });
            ok(&render.object(&object))
        }
    }
}

fn frame(ty: &str, obj: Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// What a change looks like through this watch's filters: the apiserver turns a MODIFIED
/// that moves an object into (out of) the selection into ADDED (DELETED).
fn filter_change<'a>(
    ch: &'a Change,
    res: &ResourceDef,
    sel: &Selectors,
) -> Option<(&'static str, &'a Value)> {
    if ch.res.0 != res.group || ch.res.1 != res.plural {
        return None;
    }
    if let Some(ns) = &sel.ns
        && ch.namespace.as_deref() != Some(ns.as_str())
    {
        return None;
    }
    let now = sel.matches(&ch.object);
    match ch.ty {
        ChangeType::Added | ChangeType::Deleted => now.then_some((ch.ty.as_str(), &ch.object)),
        ChangeType::Modified => {
            let before = ch.prev.as_ref().is_some_and(|p| sel.matches(p));
            match (before, now) {
                (true, true) => Some(("MODIFIED", &ch.object)),
                (false, true) => Some(("ADDED", &ch.object)),
                (true, false) => Some(("DELETED", &ch.object)),
                (false, false) => None,
            }
        }
    }
}

fn start_watch(
    app: &Arc<App>,
    t: &Target,
    params: &Params,
    render: Render,
) -> Result<Response, ApiError> {
    let sel = Selectors::new(t, params)?;
    let bookmarks = params
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let send_initial = params.get("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = match params.get("timeoutSeconds").filter(|s| !s.is_empty()) {
        Some(s) => s
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {s:?}")))?,
        None => 1800,
    };
    let rv_param = params
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let from = match rv_param {
        "" | "0" => None,
        r => Some(
            r.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {r:?}")))?,
        ),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let (bm_kind, bm_av) = (t.res.kind.clone(), render.api_version.clone());
    let bookmark = move |rv: u64, initial_end: bool| {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end && let Value::Object(m) = &mut meta {
            m.insert(
                "annotations".into(),
                json!({"k8s.io/initial-events-end": "true"}),
            );
        }
        frame(
            "BOOKMARK",
            json!({"kind": bm_kind, "apiVersion": bm_av, "metadata": meta}),
        )
    };
    let render2 = render.clone();
    // Everything a watch needs from the store is taken under one lock, with the broadcast
    // subscription, so no event falls between the replay and the live stream.
    let (initial, backlog, start_rv, live) = {
        let store = app.store();
        let live = store.tx.subscribe();
        match from {
            Some(r) if !send_initial => {
                if r < store.compacted_rv {
                    app.watches_expired.fetch_add(1, Ordering::Relaxed);
                    let err = ApiError::gone(format!(
                        "too old resource version: {r} ({})",
                        store.compacted_rv
                    ));
                    drop(store);
                    let body = frame("ERROR", err.status_body());
                    let _ = tx.try_send(body);
                    drop(tx);
                    return Ok(stream_response(rx));
                }
                (Vec::new(), store.history_after(r), r, live)
            }
            _ => {
                let objs: Vec<Value> = store
                    .objects_at(&t.res, None)?
                    .values()
                    .filter(|o| sel.matches(o))
                    .map(|o| render2.object(o))
                    .collect();
                (objs, Vec::new(), store.rv, live)
            }
        }
    };
    app.watches_started.fetch_add(1, Ordering::Relaxed);
    let drop_after = app.faults.drop_after();
    let mut drops = app.faults.watch_drops();
    drops.mark_unchanged();
    let interval = app.bookmark_interval;
    let res = t.res.clone();
    tokio::spawn(async move {
        let mut sent = 0u64;
        let mut last_rv = start_rv;
        let mut live = live;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        macro_rules! send {
            ($b:expr, $counts:expr) => {{
                if tx.send($b).await.is_err() {
                    return;
                }
                if $counts {
                    sent += 1;
                    if drop_after.is_some_and(|n| sent >= n) {
                        return;
                    }
                }
            }};
        }
        for obj in initial {
            send!(frame("ADDED", obj), true);
        }
        if send_initial {
            send!(bookmark(start_rv, true), false);
        }
        for ch in backlog {
            last_rv = ch.rv;
            if let Some((ty, obj)) = filter_change(&ch, &res, &sel) {
                send!(frame(ty, render.object(obj)), true);
            }
        }
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = drops.changed() => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if bookmarks => send!(bookmark(last_rv, false), false),
                msg = live.recv() => match msg {
                    Ok(ch) => {
                        if ch.rv <= last_rv {
                            continue;
                        }
                        last_rv = ch.rv;
                        if let Some((ty, obj)) = filter_change(&ch, &res, &sel) {
                            send!(frame(ty, render.object(obj)), true);
                        }
                    }
                    // Fell behind or the store is gone: end the stream; the client re-watches.
                    Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    Ok(stream_response(rx))
}

async fn control(
    app: &Arc<App>,
    control_port: bool,
    method: &Method,
    rest: &str,
    body: &Bytes,
) -> Response {
    match (method, rest) {
        (&Method::GET, "faults") => ok(&serde_json::to_value(app.faults.get()).unwrap_or_default()),
        (&Method::POST | &Method::PUT, "faults") => {
            let mut v: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => {
                    return ApiError::bad_request(format!("invalid JSON: {e}")).into_response();
                }
            };
            let drop_now = match &mut v {
                Value::Object(o) => o
                    .remove("drop_watches_now")
                    .and_then(|d| d.as_bool())
                    .unwrap_or(false),
                _ => false,
            };
            let faults: Faults = match serde_json::from_value(v) {
                Ok(f) => f,
                Err(e) => {
                    return ApiError::bad_request(format!("invalid faults: {e}")).into_response();
                }
            };
            app.faults.set(faults.clone());
            if drop_now {
                app.faults.drop_watches();
            }
            // Answer once the listener has caught up, unless this very connection is about
            // to be cut by it (refusing, asked on the main port).
            if control_port || !app.faults.refusing().0 {
                app.faults.settled().await;
            }
            ok(&serde_json::to_value(faults).unwrap_or_default())
        }
        (&Method::POST, "drop-watches") => {
            app.faults.drop_watches();
            ok(&json!({"dropped": true}))
        }
        (&Method::POST, "compact") => {
            let mut store = app.store();
            store.compact();
            ok(&json!({"compactedResourceVersion": store.compacted_rv.to_string()}))
        }
        (&Method::GET, "state") => {
            let store = app.store();
            ok(
                &json!({"resourceVersion": store.rv.to_string(), "compactedResourceVersion": store.compacted_rv.to_string()}),
            )
        }
        _ => ApiError::no_route().into_response(),
    }
}
