//! A kube-scheduler stand-in for end-to-end tests: `schedule_one` for the pods of one scheduler
//! name, against the kube-standin API, with one HTTP extender spoken to exactly as
//! kube-scheduler speaks to it (`pkg/scheduler/extender.go`, `schedule_one.go`; see
//! `/work/shared/WIRE.md`).
//!
//! Every `poll_interval` (100 ms) it lists nodes and pods and tries each pending pod that is due,
//! highest priority first, then oldest:
//!
//! 1. No nodes at all: `PodScheduled=False` / `Unschedulable`, "no nodes available to schedule
//!    pods" (as kube-scheduler since the NoNodesAvailable status became UnschedulableAndUnresolvable).
//! 2. In-tree filters, in the default profile's order, first failure per node:
//!    NodeUnschedulable, the Ready condition (as the node lifecycle controller's
//!    `node.kubernetes.io/not-ready` / `unreachable` NoSchedule taint), TaintToleration (NoSchedule,
//!    NoExecute), NodeAffinity (nodeSelector + required node affinity, `matchFields` on
//!    `metadata.name`), NodeResourcesFit (pods, cpu, memory, ephemeral-storage and any extended
//!    resource, requests defaulted from limits, init containers, sidecars and overhead), and
//!    PodTopologySpread `DoNotSchedule` (any topology key; nodeAffinityPolicy Honor,
//!    nodeTaintsPolicy Ignore unless set to Honor, minDomains, matchLabelKeys).
//! 3. No feasible node: the extender is NOT called (WIRE.md §3); the pod's `pods/status` gets
//!    `PodScheduled=False`, reason `Unschedulable`, message `0/N nodes are available: <sorted
//!    histogram>.` (written only when it changes, like `podutil.UpdatePodCondition`). The pod is
//!    tried again when any node or pod changes, or after `unschedulable_retry` (1 s).
//! 4. The extender's filter (`POST <urlPrefix>/<filterVerb>`): `{"Pod":…,"Nodes":…,"NodeNames":…}`
//!    in Go's field order, Pod and Nodes without apiVersion/kind; the reply is read with keys
//!    matched case-insensitively. Non-200, undecodable, non-empty `Error`, a timeout, or (with
//!    `node_cache_capable`) a `NodeNames` outside the input = an error: the pod gets
//!    `PodScheduled=False` reason `SchedulerError` and is retried after a backoff (1 s doubling to
//!    10 s, as kube-scheduler's podInitialBackoff/podMaxBackoff). No node left after the extender:
//!    Unschedulable, the extender's `FailedNodes`/`FailedAndUnresolvableNodes` messages counted in.
//! 5. One node left: it is taken. Two or more: the extender's prioritize (errors ignored, hosts that
//!    are not candidates ignored), final score = in-tree least-allocated (0..100, cpu and memory,
//!    non-zero request defaults 100m / 200Mi) + extender score × weight × 10; the best wins, ties
//!    by node name.
//! 6. Bind: `POST pods/{name}/binding` with the pod's uid as precondition.
//!
//! Not modelled: preemption, events, inter-pod affinity, node ports, volumes, ScheduleAnyway
//! scoring, `managedResources`, `ignorable`, bind/preempt verbs, nominated nodes.
#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// The `extenders` stanza of a KubeSchedulerConfiguration.
#[derive(Clone, Debug)]
pub struct ExtenderConfig {
    /// e.g. `https://127.0.0.1:8443/scheduler` (trailing `/` trimmed, as upstream).
    pub url_prefix: String,
    /// Empty: no filter phase.
    pub filter_verb: String,
    /// Empty: no prioritize phase.
    pub prioritize_verb: String,
    pub weight: i64,
    pub node_cache_capable: bool,
    /// PEM CA bundle that signs the extender's certificate. `None` with an https URL is
    /// `tlsConfig.insecure` (what `enableHTTPS` without a CA means upstream).
    pub ca_pem: Option<String>,
    /// Covers the whole exchange (upstream default 5 s).
    pub http_timeout: Duration,
}

impl ExtenderConfig {
    /// `filter` / `prioritize`, weight 1, nodeCacheCapable, insecure TLS, 5 s.
    pub fn new(url_prefix: impl Into<String>) -> Self {
        Self {
            url_prefix: url_prefix.into(),
            filter_verb: "filter".into(),
            prioritize_verb: "prioritize".into(),
            weight: 1,
            node_cache_capable: true,
            ca_pem: None,
            http_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub extender: Option<ExtenderConfig>,
    /// Pods whose `spec.schedulerName` is this (unset counts as `default-scheduler`).
    pub scheduler_name: String,
    pub poll_interval: Duration,
    /// An unschedulable pod is tried again after this even if nothing changed.
    pub unschedulable_retry: Duration,
    /// Backoff after a scheduling error (extender failure, failed bind): initial, doubled per
    /// consecutive error, capped at `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            extender: None,
            scheduler_name: DEFAULT_SCHEDULER.into(),
            poll_interval: Duration::from_millis(100),
            unschedulable_retry: Duration::from_secs(1),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// One HTTP exchange with the extender.
#[derive(Clone, Debug)]
pub struct ExtenderCall {
    /// `filter` or `prioritize` (the configured verb).
    pub verb: String,
    /// `namespace/name` of the pod being scheduled.
    pub pod: String,
    pub url: String,
    /// The exact body sent.
    pub body: String,
    /// The body, parsed.
    pub request: Value,
    /// HTTP status, if an answer came.
    pub status: Option<u16>,
    /// The answer body, parsed (`Value::Null` if it was not JSON), if an answer came.
    pub reply: Option<Value>,
    /// Why the call counts as failed (transport, timeout, non-200, undecodable, `Error`, a
    /// NodeNames result outside the input), `None` if it succeeded.
    pub error: Option<String>,
    pub latency: Duration,
    pub at: Instant,
}

/// What one scheduling attempt decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Bound {
        pod: String,
        node: String,
    },
    /// `written`: the PodScheduled condition changed and was patched.
    Unschedulable {
        pod: String,
        message: String,
        written: bool,
    },
    /// Extender failure or failed bind: the pod was backed off.
    Error {
        pod: String,
        message: String,
    },
}

#[derive(Default)]
struct Records {
    calls: Vec<ExtenderCall>,
    decisions: Vec<(Instant, Decision)>,
    /// Failures of the scheduler's own API calls (list, patch).
    api_errors: Vec<String>,
}

struct Inner {
    client: kube::Client,
    config: SchedulerConfig,
    http: Option<reqwest::Client>,
    records: Mutex<Records>,
}

/// A running kube-scheduler stand-in; dropping it stops it.
pub struct Scheduler {
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scheduler {
    /// The default profile with `extender` (or none). Must be called inside a tokio runtime.
    pub fn start(client: kube::Client, extender: Option<ExtenderConfig>) -> Scheduler {
        Self::start_with(
            client,
            SchedulerConfig {
                extender,
                ..Default::default()
            },
        )
    }

    pub fn start_with(client: kube::Client, config: SchedulerConfig) -> Scheduler {
        let http = config.extender.as_ref().map(|e| {
            let mut b = reqwest::Client::builder()
                .use_rustls_tls()
                .tls_built_in_root_certs(false)
                .no_proxy()
                .timeout(e.http_timeout);
            match &e.ca_pem {
                Some(pem) => {
                    for cert in reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                        .expect("extender CA bundle is PEM")
                    {
                        b = b.add_root_certificate(cert);
                    }
                }
                None => b = b.danger_accept_invalid_certs(true),
            }
            b.build().expect("extender HTTP client")
        });
        let inner = Arc::new(Inner {
            client,
            config,
            http,
            records: Mutex::new(Records::default()),
        });
        let task = tokio::spawn(run(inner.clone()));
        Scheduler { inner, task }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        self.inner.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every extender exchange, in order.
    pub fn extender_calls(&self) -> Vec<ExtenderCall> {
        self.records().calls.clone()
    }

    pub fn filter_calls(&self) -> Vec<ExtenderCall> {
        self.calls_of(|e| &e.filter_verb)
    }

    pub fn prioritize_calls(&self) -> Vec<ExtenderCall> {
        self.calls_of(|e| &e.prioritize_verb)
    }

    fn calls_of(&self, verb: impl Fn(&ExtenderConfig) -> &String) -> Vec<ExtenderCall> {
        let Some(e) = &self.inner.config.extender else {
            return Vec::new();
        };
        let verb = verb(e).clone();
        self.records()
            .calls
            .iter()
            .filter(|c| c.verb == verb)
            .cloned()
            .collect()
    }

    /// Extender calls that failed (filter and prioritize).
    pub fn extender_errors(&self) -> usize {
        self.records()
            .calls
            .iter()
            .filter(|c| c.error.is_some())
            .count()
    }

    /// Every decision, in order.
    pub fn decisions(&self) -> Vec<Decision> {
        self.records()
            .decisions
            .iter()
            .map(|(_, d)| d.clone())
            .collect()
    }

    /// Every decision with when it was made.
    pub fn timed_decisions(&self) -> Vec<(Instant, Decision)> {
        self.records().decisions.clone()
    }

    /// `(namespace/name, node)` of every successful bind, in order.
    pub fn bindings(&self) -> Vec<(String, String)> {
        self.records()
            .decisions
            .iter()
            .filter_map(|(_, d)| match d {
                Decision::Bound { pod, node } => Some((pod.clone(), node.clone())),
                _ => None,
            })
            .collect()
    }

    /// `(namespace/name, message)` of every Unschedulable decision (one per attempt, written or
    /// not), in order.
    pub fn unschedulable_marks(&self) -> Vec<(String, String)> {
        self.records()
            .decisions
            .iter()
            .filter_map(|(_, d)| match d {
                Decision::Unschedulable { pod, message, .. } => {
                    Some((pod.clone(), message.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// `(namespace/name, message)` of every scheduling error (extender failure, failed bind).
    pub fn errors(&self) -> Vec<(String, String)> {
        self.records()
            .decisions
            .iter()
            .filter_map(|(_, d)| match d {
                Decision::Error { pod, message } => Some((pod.clone(), message.clone())),
                _ => None,
            })
            .collect()
    }

    /// Failures of the stand-in's own API calls (listing, status patches).
    pub fn api_errors(&self) -> Vec<String> {
        self.records().api_errors.clone()
    }

    /// The node `namespace/name` was bound to, waiting up to `within`.
    pub async fn wait_bound(&self, pod: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some((_, n)) = self.bindings().into_iter().find(|(p, _)| p == pod) {
                return Some(n);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A one-line summary of what happened, for assertion messages.
    pub fn report(&self) -> String {
        let r = self.records();
        let calls: Vec<String> = r
            .calls
            .iter()
            .map(|c| {
                format!(
                    "{} {} -> {:?} {}",
                    c.verb,
                    c.pod,
                    c.status,
                    c.error.as_deref().unwrap_or("ok")
                )
            })
            .collect();
        format!(
            "decisions: {:?}\nextender calls: {calls:?}\napi errors: {:?}",
            r.decisions.iter().map(|(_, d)| d).collect::<Vec<_>>(),
            r.api_errors
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The loop

#[derive(Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Unschedulable,
    Error,
}

struct Queued {
    why: Waiting,
    /// Cluster fingerprint when it failed.
    fingerprint: u64,
    at: Instant,
    /// Consecutive errors.
    errors: u32,
}

async fn run(inner: Arc<Inner>) {
    let mut queue: HashMap<String, Queued> = HashMap::new();
    loop {
        if let Err(e) = cycle(&inner, &mut queue).await {
            let mut r = inner.records.lock().unwrap_or_else(|e| e.into_inner());
            if r.api_errors.len() < 1000 {
                r.api_errors.push(e);
            }
        }
        tokio::time::sleep(inner.config.poll_interval).await;
    }
}

fn key_of(o: &Value) -> String {
    format!("{}/{}", s(o, "/metadata/namespace"), s(o, "/metadata/name"))
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn fingerprint(nodes: &[Value], pods: &[Value]) -> u64 {
    let mut h = DefaultHasher::new();
    for o in nodes.iter().chain(pods) {
        key_of(o).hash(&mut h);
        s(o, "/metadata/uid").hash(&mut h);
        s(o, "/metadata/resourceVersion").hash(&mut h);
    }
    h.finish()
}

fn is_terminal(pod: &Value) -> bool {
    matches!(s(pod, "/status/phase"), "Succeeded" | "Failed")
}

fn wants_us(pod: &Value, name: &str) -> bool {
    let scheduler = match s(pod, "/spec/schedulerName") {
        "" => DEFAULT_SCHEDULER,
        n => n,
    };
    scheduler == name
        && s(pod, "/spec/nodeName").is_empty()
        && pod.pointer("/metadata/deletionTimestamp").is_none()
        && !is_terminal(pod)
        && pod
            .pointer("/spec/schedulingGates")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
}

async fn list(client: &kube::Client, path: &str) -> Result<Vec<Value>, String> {
    let req = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let v: Value = client
        .request(req)
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    Ok(v.get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default())
}

async fn cycle(inner: &Inner, queue: &mut HashMap<String, Queued>) -> Result<(), String> {
    let cfg = &inner.config;
    let mut nodes = list(&inner.client, "/api/v1/nodes").await?;
    nodes.sort_by(|a, b| s(a, "/metadata/name").cmp(s(b, "/metadata/name")));
    let mut pods = list(&inner.client, "/api/v1/pods").await?;
    let fp = fingerprint(&nodes, &pods);
    let mut pending: Vec<usize> = (0..pods.len())
        .filter(|&i| wants_us(&pods[i], &cfg.scheduler_name))
        .collect();
    pending.sort_by(|&a, &b| {
        let prio = |p: &Value| {
            p.pointer("/spec/priority")
                .and_then(Value::as_i64)
                .unwrap_or(0)
        };
        prio(&pods[b])
            .cmp(&prio(&pods[a]))
            .then_with(|| {
                s(&pods[a], "/metadata/creationTimestamp")
                    .cmp(s(&pods[b], "/metadata/creationTimestamp"))
            })
            .then_with(|| key_of(&pods[a]).cmp(&key_of(&pods[b])))
    });
    let live: std::collections::HashSet<String> = pending
        .iter()
        .map(|&i| s(&pods[i], "/metadata/uid").to_string())
        .collect();
    queue.retain(|uid, _| live.contains(uid));
    for i in pending {
        let uid = s(&pods[i], "/metadata/uid").to_string();
        let now = Instant::now();
        if let Some(q) = queue.get(&uid) {
            let due = match q.why {
                Waiting::Unschedulable => {
                    q.fingerprint != fp || now >= q.at + cfg.unschedulable_retry
                }
                Waiting::Error => {
                    let backoff = cfg
                        .initial_backoff
                        .saturating_mul(1u32 << q.errors.saturating_sub(1).min(16))
                        .min(cfg.max_backoff);
                    now >= q.at + backoff
                }
            };
            if !due {
                continue;
            }
        }
        let pod = pods[i].clone();
        let pod_key = key_of(&pod);
        let outcome = schedule_one(inner, &pod, &nodes, &pods).await;
        let decision = match outcome {
            Outcome::Fits(node) => match bind(&inner.client, &pod, &node).await {
                Ok(()) => {
                    queue.remove(&uid);
                    // Assume it, as the scheduler cache does, for the pods after it.
                    pods[i]["spec"]["nodeName"] = json!(node);
                    Decision::Bound { pod: pod_key, node }
                }
                Err(message) => {
                    let _ = mark(inner, &pod, "SchedulerError", &message).await;
                    queue_error(queue, uid, fp, now);
                    Decision::Error {
                        pod: pod_key,
                        message,
                    }
                }
            },
            Outcome::Unschedulable(message) => {
                let written = mark(inner, &pod, "Unschedulable", &message).await;
                queue.insert(
                    uid,
                    Queued {
                        why: Waiting::Unschedulable,
                        fingerprint: fp,
                        at: now,
                        errors: 0,
                    },
                );
                Decision::Unschedulable {
                    pod: pod_key,
                    message,
                    written,
                }
            }
            Outcome::Error(message) => {
                let _ = mark(inner, &pod, "SchedulerError", &message).await;
                queue_error(queue, uid, fp, now);
                Decision::Error {
                    pod: pod_key,
                    message,
                }
            }
        };
        inner
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .decisions
            .push((Instant::now(), decision));
    }
    Ok(())
}

fn queue_error(queue: &mut HashMap<String, Queued>, uid: String, fp: u64, now: Instant) {
    let errors = queue
        .get(&uid)
        .filter(|q| q.why == Waiting::Error)
        .map_or(1, |q| q.errors + 1);
    queue.insert(
        uid,
        Queued {
            why: Waiting::Error,
            fingerprint: fp,
            at: now,
            errors,
        },
    );
}

/// `PodScheduled=False` with `reason`/`message`, by merge patch on `pods/status`, only if it
/// changes the condition (podutil.UpdatePodCondition). Returns whether it wrote.
async fn mark(inner: &Inner, pod: &Value, reason: &str, message: &str) -> bool {
    let mut conditions: Vec<Value> = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let existing = conditions
        .iter()
        .position(|c| c.get("type").and_then(Value::as_str) == Some("PodScheduled"));
    if let Some(i) = existing {
        let c = &conditions[i];
        if s(c, "/status") == "False" && s(c, "/reason") == reason && s(c, "/message") == message {
            return false;
        }
    }
    let transition = match existing.map(|i| &conditions[i]) {
        Some(c) if s(c, "/status") == "False" => c
            .get("lastTransitionTime")
            .cloned()
            .unwrap_or_else(|| json!(now_rfc3339())),
        _ => json!(now_rfc3339()),
    };
    let condition = json!({
        "type": "PodScheduled", "status": "False", "lastProbeTime": null,
        "lastTransitionTime": transition, "reason": reason, "message": message,
    });
    match existing {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}/status",
        s(pod, "/metadata/namespace"),
        s(pod, "/metadata/name")
    );
    let body = json!({"status": {"conditions": conditions}});
    let req = http::Request::patch(&path)
        .header("content-type", "application/merge-patch+json")
        .body(serde_json::to_vec(&body).unwrap_or_default());
    let result = match req {
        Ok(req) => inner
            .client
            .request::<Value>(req)
            .await
            .map_err(|e| format!("PATCH {path}: {e}")),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(_) => true,
        Err(e) => {
            inner
                .records
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .api_errors
                .push(e);
            false
        }
    }
}

/// kube-scheduler's DefaultBinder.
async fn bind(client: &kube::Client, pod: &Value, node: &str) -> Result<(), String> {
    let (ns, name) = (s(pod, "/metadata/namespace"), s(pod, "/metadata/name"));
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": s(pod, "/metadata/uid")},
        "target": {"kind": "Node", "name": node},
    });
    let path = format!("/api/v1/namespaces/{ns}/pods/{name}/binding");
    let req = http::Request::post(&path)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&binding).unwrap_or_default())
        .map_err(|e| e.to_string())?;
    client
        .request::<Value>(req)
        .await
        .map(|_| ())
        .map_err(|e| format!("binding rejected: {e}"))
}

fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------------------------
// schedule_one

enum Outcome {
    Fits(String),
    Unschedulable(String),
    Error(String),
}

async fn schedule_one(inner: &Inner, pod: &Value, nodes: &[Value], pods: &[Value]) -> Outcome {
    if nodes.is_empty() {
        return Outcome::Unschedulable("no nodes available to schedule pods".into());
    }
    let snapshot = Snapshot::new(nodes, pods);
    let spread = Spread::new(pod, &snapshot);
    let mut failed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut feasible: Vec<String> = Vec::new();
    for node in nodes {
        let name = s(node, "/metadata/name").to_string();
        match filter(pod, node, &snapshot, &spread) {
            Ok(()) => feasible.push(name),
            Err(reasons) => {
                failed.insert(name, reasons);
            }
        }
    }
    let fit_error = |failed: &BTreeMap<String, Vec<String>>| {
        let mut histogram: BTreeMap<&str, usize> = BTreeMap::new();
        for reasons in failed.values() {
            for r in reasons {
                *histogram.entry(r.as_str()).or_default() += 1;
            }
        }
        let mut parts: Vec<String> = histogram.iter().map(|(r, n)| format!("{n} {r}")).collect();
        parts.sort();
        let mut msg = format!("0/{} nodes are available:", nodes.len());
        if !parts.is_empty() {
            msg.push_str(&format!(" {}.", parts.join(", ")));
        }
        msg
    };
    if feasible.is_empty() {
        return Outcome::Unschedulable(fit_error(&failed));
    }
    let key = key_of(pod);
    if let (Some(ext), Some(http)) = (&inner.config.extender, &inner.http)
        && !ext.filter_verb.is_empty()
    {
        match extender_filter(inner, ext, http, &key, pod, &feasible, &snapshot).await {
            Ok((kept, ext_failed)) => {
                for (node, msg) in ext_failed {
                    failed.insert(node, vec![msg]);
                }
                feasible = kept;
            }
            Err(e) => return Outcome::Error(e),
        }
        if feasible.is_empty() {
            return Outcome::Unschedulable(fit_error(&failed));
        }
    }
    if feasible.len() == 1 {
        return Outcome::Fits(feasible.remove(0));
    }
    let mut scores: BTreeMap<String, i64> = feasible
        .iter()
        .map(|n| (n.clone(), snapshot.least_allocated(pod, n)))
        .collect();
    if let (Some(ext), Some(http)) = (&inner.config.extender, &inner.http)
        && !ext.prioritize_verb.is_empty()
        && let Some(list) =
            extender_prioritize(inner, ext, http, &key, pod, &feasible, &snapshot).await
    {
        for (host, score) in list {
            if let Some(total) = scores.get_mut(&host) {
                *total += score * ext.weight * 10;
            }
        }
    }
    // Highest score; BTreeMap order makes the first of equal scores the smallest name.
    let mut best: Option<(&String, i64)> = None;
    for (n, sc) in &scores {
        if best.is_none_or(|(_, b)| *sc > b) {
            best = Some((n, *sc));
        }
    }
    match best {
        Some((n, _)) => Outcome::Fits(n.clone()),
        None => Outcome::Unschedulable(fit_error(&failed)),
    }
}

// ---------------------------------------------------------------------------------------------
// The extender

/// The object as the scheduler's informer holds it: no TypeMeta.
fn without_type_meta(v: &Value) -> Value {
    let mut v = v.clone();
    if let Value::Object(o) = &mut v {
        o.remove("apiVersion");
        o.remove("kind");
    }
    v
}

/// ExtenderArgs, written as Go's encoding/json writes it (field order Pod, Nodes, NodeNames).
fn extender_args(
    ext: &ExtenderConfig,
    pod: &Value,
    names: &[String],
    snapshot: &Snapshot<'_>,
) -> String {
    let pod = serde_json::to_string(&without_type_meta(pod)).unwrap_or_default();
    if ext.node_cache_capable {
        let names = serde_json::to_string(names).unwrap_or_default();
        format!(r#"{{"Pod":{pod},"Nodes":null,"NodeNames":{names}}}"#)
    } else {
        let items: Vec<Value> = names
            .iter()
            .filter_map(|n| snapshot.node(n))
            .map(without_type_meta)
            .collect();
        let items = serde_json::to_string(&items).unwrap_or_default();
        format!(r#"{{"Pod":{pod},"Nodes":{{"metadata":{{}},"items":{items}}},"NodeNames":null}}"#)
    }
}

/// A key of a JSON object, matched as Go's decoder does: exact first, then ignoring case.
fn get_ci<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let o = v.as_object()?;
    o.get(key).or_else(|| {
        o.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// POST the args; the parsed 200 reply, or why the call failed. Records the call.
async fn call_extender(
    inner: &Inner,
    ext: &ExtenderConfig,
    http: &reqwest::Client,
    verb: &str,
    pod_key: &str,
    body: String,
    check: impl FnOnce(&Value) -> Result<(), String>,
) -> Result<Value, String> {
    let url = format!("{}/{verb}", ext.url_prefix.trim_end_matches('/'));
    let start = Instant::now();
    let sent = http
        .post(&url)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await;
    let (status, reply, error) = match sent {
        Err(e) => (None, None, Some(format!("Post \"{url}\": {e}"))),
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.bytes().await {
                Err(e) => (Some(status), None, Some(format!("reading the answer: {e}"))),
                Ok(bytes) => {
                    let parsed: Result<Value, _> = serde_json::from_slice(&bytes);
                    let reply = parsed.as_ref().ok().cloned().unwrap_or(Value::Null);
                    let error = if status != 200 {
                        Some(format!(
                            "failed {verb} with extender at URL {url}, code {status}"
                        ))
                    } else {
                        match &parsed {
                            Err(e) => Some(format!("decoding the answer: {e}")),
                            Ok(v) => check(v).err(),
                        }
                    };
                    (Some(status), Some(reply), error)
                }
            }
        }
    };
    let latency = start.elapsed();
    let call = ExtenderCall {
        verb: verb.to_string(),
        pod: pod_key.to_string(),
        url,
        request: serde_json::from_str(&body).unwrap_or(Value::Null),
        body,
        status,
        reply: reply.clone(),
        error: error.clone(),
        latency,
        at: start,
    };
    inner
        .records
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .calls
        .push(call);
    match error {
        Some(e) => Err(e),
        None => Ok(reply.unwrap_or(Value::Null)),
    }
}

type FilterResult = (Vec<String>, Vec<(String, String)>);

/// HTTPExtender.Filter: the nodes kept, and the failed nodes' messages
/// (FailedAndUnresolvableNodes winning over FailedNodes).
async fn extender_filter(
    inner: &Inner,
    ext: &ExtenderConfig,
    http: &reqwest::Client,
    pod_key: &str,
    pod: &Value,
    feasible: &[String],
    snapshot: &Snapshot<'_>,
) -> Result<FilterResult, String> {
    let body = extender_args(ext, pod, feasible, snapshot);
    let check = |v: &Value| -> Result<(), String> {
        if !v.is_object() {
            return Err("the answer is not an ExtenderFilterResult object".into());
        }
        if let Some(e) = get_ci(v, "Error").and_then(Value::as_str)
            && !e.is_empty()
        {
            return Err(e.to_string());
        }
        if ext.node_cache_capable
            && let Some(names) = get_ci(v, "NodeNames").filter(|n| !n.is_null())
        {
            let names = names
                .as_array()
                .ok_or("NodeNames is not a list of strings")?;
            for n in names {
                let n = n.as_str().ok_or("NodeNames is not a list of strings")?;
                if !feasible.iter().any(|f| f == n) {
                    return Err(format!(
                        "extender {:?} claims a filtered node {n:?} which is not found in the input node list",
                        ext.url_prefix
                    ));
                }
            }
        }
        Ok(())
    };
    let reply = call_extender(inner, ext, http, &ext.filter_verb, pod_key, body, check).await?;
    let node_names = get_ci(&reply, "NodeNames").filter(|n| !n.is_null());
    let nodes = get_ci(&reply, "Nodes").filter(|n| !n.is_null());
    let kept: Vec<String> = match (ext.node_cache_capable, node_names, nodes) {
        (true, Some(names), _) => names
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        (_, _, Some(list)) => get_ci(list, "items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|n| get_ci(n, "metadata").and_then(|m| get_ci(m, "name")))
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    for key in ["FailedNodes", "FailedAndUnresolvableNodes"] {
        if let Some(m) = get_ci(&reply, key).and_then(Value::as_object) {
            for (node, msg) in m {
                failed.insert(node.clone(), msg.as_str().unwrap_or("").to_string());
            }
        }
    }
    Ok((kept, failed.into_iter().collect()))
}

/// HTTPExtender.Prioritize: `(host, score)`; `None` if the call failed (ignored upstream).
async fn extender_prioritize(
    inner: &Inner,
    ext: &ExtenderConfig,
    http: &reqwest::Client,
    pod_key: &str,
    pod: &Value,
    feasible: &[String],
    snapshot: &Snapshot<'_>,
) -> Option<Vec<(String, i64)>> {
    let body = extender_args(ext, pod, feasible, snapshot);
    let check = |v: &Value| -> Result<(), String> {
        let list = v.as_array().ok_or("the answer is not a HostPriorityList")?;
        for h in list {
            if get_ci(h, "Score").is_some_and(|sc| !sc.is_null() && sc.as_i64().is_none()) {
                return Err(format!("Score is not an int64 in {h}"));
            }
        }
        Ok(())
    };
    let reply = call_extender(inner, ext, http, &ext.prioritize_verb, pod_key, body, check)
        .await
        .ok()?;
    Some(
        reply
            .as_array()?
            .iter()
            .map(|h| {
                (
                    get_ci(h, "Host")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    get_ci(h, "Score").and_then(Value::as_i64).unwrap_or(0),
                )
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// In-tree filters

/// Nodes by name and the pods bound to each.
struct Snapshot<'a> {
    nodes: BTreeMap<&'a str, &'a Value>,
    pods_on: HashMap<&'a str, Vec<&'a Value>>,
}

impl<'a> Snapshot<'a> {
    fn new(nodes: &'a [Value], pods: &'a [Value]) -> Self {
        let mut pods_on: HashMap<&str, Vec<&Value>> = HashMap::new();
        for p in pods {
            let n = s(p, "/spec/nodeName");
            if !n.is_empty() && !is_terminal(p) {
                pods_on.entry(n).or_default().push(p);
            }
        }
        Self {
            nodes: nodes.iter().map(|n| (s(n, "/metadata/name"), n)).collect(),
            pods_on,
        }
    }

    fn node(&self, name: &str) -> Option<&'a Value> {
        self.nodes.get(name).copied()
    }

    fn pods_on(&self, node: &str) -> &[&'a Value] {
        self.pods_on.get(node).map(Vec::as_slice).unwrap_or(&[])
    }

    /// NodeResourcesFit's LeastAllocated score (cpu and memory, weight 1 each), 0..=100.
    fn least_allocated(&self, pod: &Value, node: &str) -> i64 {
        let Some(n) = self.node(node) else { return 0 };
        let alloc = allocatable(n);
        let mut total = 0i128;
        for r in ["cpu", "memory"] {
            let cap = alloc.get(r).copied().unwrap_or(0);
            let mut used: i128 = self
                .pods_on(node)
                .iter()
                .map(|p| non_zero_request(p, r))
                .sum();
            used += non_zero_request(pod, r);
            total += if cap <= 0 || used > cap {
                0
            } else {
                (cap - used) * 100 / cap
            };
        }
        (total / 2) as i64
    }
}

fn labels(o: &Value) -> BTreeMap<String, String> {
    o.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn array<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The first in-tree filter that rejects `node`, as its reasons; Ok if all pass.
fn filter(
    pod: &Value,
    node: &Value,
    snap: &Snapshot<'_>,
    spread: &Spread,
) -> Result<(), Vec<String>> {
    let tolerations = array(pod, "/spec/tolerations");
    // NodeUnschedulable
    if node
        .pointer("/spec/unschedulable")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        let taint = json!({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"});
        if !tolerations.iter().any(|t| tolerates(t, &taint)) {
            return Err(vec!["node(s) were unschedulable".into()]);
        }
    }
    // TaintToleration, with the node lifecycle controller's taint for a node that is not Ready.
    let mut taints: Vec<Value> = Vec::new();
    match ready_status(node) {
        "True" => {}
        "Unknown" => {
            taints.push(json!({"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}))
        }
        _ => taints.push(json!({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"})),
    }
    taints.extend(array(node, "/spec/taints").iter().cloned());
    if let Some(t) = first_untolerated(&taints, tolerations) {
        return Err(vec![format!(
            "node(s) had untolerated taint {{{}: {}}}",
            s(t, "/key"),
            s(t, "/value")
        )]);
    }
    // NodeAffinity
    if !matches_node_selector_and_affinity(pod, node) {
        return Err(vec![
            "node(s) didn't match Pod's node affinity/selector".into(),
        ]);
    }
    // NodeResourcesFit
    let name = s(node, "/metadata/name");
    let reasons = insufficient(pod, node, snap.pods_on(name));
    if !reasons.is_empty() {
        return Err(reasons);
    }
    // PodTopologySpread
    spread.check(node)
}

fn ready_status(node: &Value) -> &str {
    array(node, "/status/conditions")
        .iter()
        .find(|c| s(c, "/type") == "Ready")
        .map(|c| s(c, "/status"))
        .unwrap_or("Unknown")
}

/// v1.Toleration.ToleratesTaint.
fn tolerates(t: &Value, taint: &Value) -> bool {
    let effect = s(t, "/effect");
    if !effect.is_empty() && effect != s(taint, "/effect") {
        return false;
    }
    let key = s(t, "/key");
    if !key.is_empty() && key != s(taint, "/key") {
        return false;
    }
    match s(t, "/operator") {
        "Exists" => true,
        "" | "Equal" => s(t, "/value") == s(taint, "/value"),
        _ => false,
    }
}

/// The first NoSchedule/NoExecute taint no toleration tolerates.
fn first_untolerated<'a>(taints: &'a [Value], tolerations: &[Value]) -> Option<&'a Value> {
    taints.iter().find(|taint| {
        matches!(s(taint, "/effect"), "NoSchedule" | "NoExecute")
            && !tolerations.iter().any(|t| tolerates(t, taint))
    })
}

fn requirement_matches(req: &Value, value: Option<&str>) -> bool {
    let values: Vec<&str> = array(req, "/values")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    match s(req, "/operator") {
        "In" => value.is_some_and(|v| values.contains(&v)),
        "NotIn" => value.is_none_or(|v| !values.contains(&v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(v), [bound]) = (value, values.as_slice()) else {
                return false;
            };
            match (v.parse::<i64>(), bound.parse::<i64>()) {
                (Ok(v), Ok(b)) => {
                    if op == "Gt" {
                        v > b
                    } else {
                        v < b
                    }
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// A NodeSelectorTerm: all matchExpressions (labels) and matchFields (metadata.name); an
/// empty term matches nothing.
fn term_matches(term: &Value, node: &Value) -> bool {
    let exprs = array(term, "/matchExpressions");
    let fields = array(term, "/matchFields");
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let node_labels = labels(node);
    exprs
        .iter()
        .all(|e| requirement_matches(e, node_labels.get(s(e, "/key")).map(String::as_str)))
        && fields.iter().all(|f| {
            s(f, "/key") == "metadata.name"
                && requirement_matches(f, Some(s(node, "/metadata/name")))
        })
}

/// NodeAffinity's filter: spec.nodeSelector and
/// requiredDuringSchedulingIgnoredDuringExecution (any term).
fn matches_node_selector_and_affinity(pod: &Value, node: &Value) -> bool {
    let node_labels = labels(node);
    if let Some(sel) = pod.pointer("/spec/nodeSelector").and_then(Value::as_object) {
        for (k, v) in sel {
            if node_labels.get(k).map(String::as_str) != v.as_str() {
                return false;
            }
        }
    }
    match pod.pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution")
    {
        None | Some(Value::Null) => true,
        Some(required) => array(required, "/nodeSelectorTerms")
            .iter()
            .any(|t| term_matches(t, node)),
    }
}

/// A metav1.LabelSelector; `None` (null) matches nothing, `{}` everything.
fn label_selector_matches(sel: Option<&Value>, l: &BTreeMap<String, String>) -> bool {
    let Some(sel) = sel.filter(|s| s.is_object()) else {
        return false;
    };
    if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in m {
            if l.get(k).map(String::as_str) != v.as_str() {
                return false;
            }
        }
    }
    array(sel, "/matchExpressions")
        .iter()
        .all(|e| requirement_matches(e, l.get(s(e, "/key")).map(String::as_str)))
}

// ---------------------------------------------------------------------------------------------
// Resources

/// A Kubernetes quantity in thousandths of its unit, rounded up (cpu `500m` → 500, memory
/// `1Ki` → 1_024_000).
pub fn parse_milli(q: &str) -> Option<i128> {
    let q = q.trim();
    let split = q
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || *c == '.' || ((*c == '+' || *c == '-') && *i == 0)))
        .map_or(q.len(), |(i, _)| i);
    let (num, suffix) = q.split_at(split);
    let (neg, num) = match num.strip_prefix('-') {
        Some(n) => (true, n),
        None => (false, num.strip_prefix('+').unwrap_or(num)),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let digits = format!("{int}{frac}");
    let mantissa: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    let (mul, exp10): (i128, i32) = match suffix {
        "" => (1, 0),
        "n" => (1, -9),
        "u" => (1, -6),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        e if e.starts_with(['e', 'E']) => (1, e[1..].parse().ok()?),
        _ => return None,
    };
    let exp = exp10 - frac.len() as i32 + 3;
    let v = mantissa.checked_mul(mul)?;
    let v = if exp >= 0 {
        v.checked_mul(10i128.checked_pow(exp as u32)?)?
    } else {
        let d = 10i128.checked_pow((-exp) as u32)?;
        (v + d - 1) / d
    };
    Some(if neg { -v } else { v })
}

fn resource_map(v: Option<&Value>) -> BTreeMap<String, i128> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, q)| {
                    let q = match q {
                        Value::String(s) => parse_milli(s),
                        Value::Number(n) => parse_milli(&n.to_string()),
                        _ => None,
                    }?;
                    Some((k.clone(), q))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A container's requests, defaulted from its limits as the apiserver defaults them.
fn container_requests(c: &Value) -> BTreeMap<String, i128> {
    let mut r = resource_map(c.pointer("/resources/requests"));
    for (k, v) in resource_map(c.pointer("/resources/limits")) {
        r.entry(k).or_insert(v);
    }
    r
}

fn add(into: &mut BTreeMap<String, i128>, from: &BTreeMap<String, i128>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// The pod's effective requests (resourcehelper.PodRequests): containers and sidecars summed,
/// at least each init container (plus the sidecars started before it), plus overhead.
pub fn pod_requests(pod: &Value) -> BTreeMap<String, i128> {
    let mut sum = BTreeMap::new();
    for c in array(pod, "/spec/containers") {
        add(&mut sum, &container_requests(c));
    }
    let mut sidecars = BTreeMap::new();
    let mut init_max: BTreeMap<String, i128> = BTreeMap::new();
    for c in array(pod, "/spec/initContainers") {
        let r = container_requests(c);
        if s(c, "/restartPolicy") == "Always" {
            add(&mut sidecars, &r);
            for (k, v) in &sidecars {
                let e = init_max.entry(k.clone()).or_default();
                *e = (*e).max(*v);
            }
        } else {
            let mut with = sidecars.clone();
            add(&mut with, &r);
            for (k, v) in with {
                let e = init_max.entry(k).or_default();
                *e = (*e).max(v);
            }
        }
    }
    add(&mut sum, &sidecars);
    for (k, v) in init_max {
        let e = sum.entry(k).or_default();
        *e = (*e).max(v);
    }
    add(&mut sum, &resource_map(pod.pointer("/spec/overhead")));
    sum
}

/// The request used for scoring: 100m cpu / 200Mi memory when none is set.
fn non_zero_request(pod: &Value, r: &str) -> i128 {
    let v = pod_requests(pod).get(r).copied().unwrap_or(0);
    match r {
        "cpu" if v == 0 => 100,
        "memory" if v == 0 => 200 * (1 << 20) * 1000,
        _ => v,
    }
}

fn allocatable(node: &Value) -> BTreeMap<String, i128> {
    resource_map(node.pointer("/status/allocatable"))
}

/// NodeResourcesFit's reasons: `Too many pods`, then `Insufficient <resource>`.
fn insufficient(pod: &Value, node: &Value, on_node: &[&Value]) -> Vec<String> {
    let alloc = allocatable(node);
    let mut reasons = Vec::new();
    let pod_slots = alloc.get("pods").copied().unwrap_or(0) / 1000;
    if on_node.len() as i128 + 1 > pod_slots {
        reasons.push("Too many pods".to_string());
    }
    let want = pod_requests(pod);
    let mut used = BTreeMap::new();
    for p in on_node {
        add(&mut used, &pod_requests(p));
    }
    let order = ["cpu", "memory", "ephemeral-storage"];
    let mut names: Vec<&String> = want.keys().collect();
    names.sort_by_key(|n| {
        (
            order.iter().position(|o| o == n).unwrap_or(order.len()),
            (*n).clone(),
        )
    });
    for name in names {
        let w = want[name];
        if w <= 0 || name == "pods" {
            continue;
        }
        let have = alloc.get(name).copied().unwrap_or(0);
        let u = used.get(name).copied().unwrap_or(0);
        if u + w > have {
            reasons.push(format!("Insufficient {name}"));
        }
    }
    reasons
}

// ---------------------------------------------------------------------------------------------
// PodTopologySpread (DoNotSchedule)

struct Constraint {
    key: String,
    max_skew: i128,
    selector: Value,
    self_match: bool,
    /// Matching pods per domain value, over the eligible nodes (domains with none included).
    counts: BTreeMap<String, i128>,
    min_domains: Option<usize>,
}

struct Spread {
    constraints: Vec<Constraint>,
}

impl Spread {
    fn new(pod: &Value, snap: &Snapshot<'_>) -> Self {
        let ns = s(pod, "/metadata/namespace");
        let pod_labels = labels(pod);
        let raw: Vec<&Value> = array(pod, "/spec/topologySpreadConstraints")
            .iter()
            .filter(|c| s(c, "/whenUnsatisfiable") == "DoNotSchedule")
            .collect();
        let keys: Vec<&str> = raw.iter().map(|c| s(c, "/topologyKey")).collect();
        let tolerations = array(pod, "/spec/tolerations");
        let mut constraints = Vec::new();
        for c in &raw {
            // matchLabelKeys: the pod's own values join the selector.
            let mut selector = c.get("labelSelector").cloned().unwrap_or(Value::Null);
            for k in array(c, "/matchLabelKeys").iter().filter_map(Value::as_str) {
                if let (Some(v), Value::Object(sel)) = (pod_labels.get(k), &mut selector) {
                    let exprs = sel.entry("matchExpressions").or_insert_with(|| json!([]));
                    if let Value::Array(a) = exprs {
                        a.push(json!({"key": k, "operator": "In", "values": [v]}));
                    }
                }
            }
            let honor_affinity = s(c, "/nodeAffinityPolicy") != "Ignore";
            let honor_taints = s(c, "/nodeTaintsPolicy") == "Honor";
            let key = s(c, "/topologyKey").to_string();
            let mut counts: BTreeMap<String, i128> = BTreeMap::new();
            for (name, node) in &snap.nodes {
                let nl = labels(node);
                if !keys.iter().all(|k| nl.contains_key(*k)) {
                    continue;
                }
                if honor_affinity && !matches_node_selector_and_affinity(pod, node) {
                    continue;
                }
                if honor_taints
                    && first_untolerated(array(node, "/spec/taints"), tolerations).is_some()
                {
                    continue;
                }
                let n = snap
                    .pods_on(name)
                    .iter()
                    .filter(|p| {
                        s(p, "/metadata/namespace") == ns
                            && p.pointer("/metadata/deletionTimestamp").is_none()
                            && label_selector_matches(Some(&selector), &labels(p))
                    })
                    .count() as i128;
                *counts.entry(nl[&key].clone()).or_default() += n;
            }
            constraints.push(Constraint {
                self_match: label_selector_matches(Some(&selector), &pod_labels),
                key,
                max_skew: c.get("maxSkew").and_then(Value::as_i64).unwrap_or(1) as i128,
                selector,
                counts,
                min_domains: c
                    .get("minDomains")
                    .and_then(Value::as_u64)
                    .map(|m| m as usize),
            });
        }
        Spread { constraints }
    }

    fn check(&self, node: &Value) -> Result<(), Vec<String>> {
        let nl = labels(node);
        if self.constraints.iter().any(|c| !nl.contains_key(&c.key)) {
            return Err(vec![
                "node(s) didn't match pod topology spread constraints (missing required label)"
                    .into(),
            ]);
        }
        for c in &self.constraints {
            let mut min = c.counts.values().copied().min().unwrap_or(0);
            if c.min_domains.is_some_and(|m| c.counts.len() < m) {
                min = 0;
            }
            let here = c.counts.get(&nl[&c.key]).copied().unwrap_or(0);
            if here + i128::from(c.self_match) - min > c.max_skew {
                return Err(vec![
                    "node(s) didn't match pod topology spread constraints".into(),
                ]);
            }
        }
        Ok(())
    }
}
