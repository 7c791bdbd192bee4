//! Scale benchmark (not a timed test): nodewright's scheduler extender behind the real
//! kube-scheduler, on kwok Nodes in the real kube-apiserver (tests/common/controlplane.rs: etcd,
//! kube-apiserver, kube-controller-manager built by scripts/k8s-binaries.sh; all on 127.0.0.1).
//!
//! NODES kwok Nodes (cpu 32, memory 128Gi, pods 110, spread over three zones) are created once;
//! then, for each extender mode in MODES (`names-only`: `nodeCacheCapable: true`, kube-scheduler
//! sends node names and nodewright decides from its own node cache; `full-nodes`: `false`, every
//! call carries the full Node objects), a fresh `nodewright serve` (the chart's RBAC, its
//! ServiceAccount), a fresh kube-scheduler with nodewright's extender stanza
//! (webhook-config/kube-scheduler-config.yaml) and a profile of its own, and PODS pending pods for
//! that profile, created CONCURRENCY at a time in a fresh namespace. It measures the time from the
//! first create to the last pod bound (from a watch), then prints per mode:
//! - time to bind and pods/s, and each pod's create→bound time as the watch saw it;
//! - kube-scheduler's own view, from its /metrics: `scheduler_scheduling_algorithm_duration_seconds`
//!   (one scheduling attempt's filter + extender calls + score; kube-scheduler has no metric for
//!   the extender call alone), `scheduler_scheduling_attempt_duration_seconds{result="scheduled"}`
//!   (the algorithm plus binding, the API call), `scheduler_pod_scheduling_sli_duration_seconds`
//!   (queue entry to scheduled) and the attempts by result; percentiles are interpolated linearly
//!   inside the histogram buckets, as Prometheus' histogram_quantile does;
//! - nodewright's side: `nodewright_extender_request_duration_seconds` p50/p99 per verb (server
//!   side: request received to response ready) and the calls by verb and outcome, RSS after start
//!   and after the run (VmRSS) and its peak (VmHWM), CPU seconds over the run (utime + stime of
//!   /proc/PID/stat, which keeps the time of threads that have exited);
//! - the CPU seconds and RSS of kube-scheduler, kube-apiserver, etcd and kwok over the same window.
//!
//! The pods tolerate every taint, so a kwok lease that lapses under load (the node lifecycle
//! controller then taints the node) does not change where they can go; they request 100m and
//! 128Mi, so capacity never runs out (10,000 pods on 5,000 nodes is two a node).
//!
//! Run it with benches/kwok/run.sh (the release build, output kept in target/kwok-scale.txt), or
//! `cargo bench --bench kwok_scale` with these variables (defaults in brackets):
//!   NODES [5000]  PODS [10000]  MODES [names-only,full-nodes]  CONCURRENCY [32]
//!   KWOK_LEASE_SECONDS [40]   kwok's node lease duration; kwok renews every quarter of it (the
//!                             kubelet's default 40 s: 5,000 nodes renew 500 leases a second)
//!   BIND_TIMEOUT [120 + PODS/2] seconds per mode before it gives up and reports what bound
//!   NODEWRIGHT_LOG [warn]     nodewright's log level (its log: <control plane dir>/nodewright-*.log)
//! Without `--bench` (`cargo test --all-targets` runs it so) it is a smoke run of the same path:
//! 20 nodes, 40 pods, names-only, the variables ignored; it fails if a pod is not bound or an
//! extender call fails.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;

#[path = "../tests/common/controlplane.rs"]
#[allow(dead_code)]
mod controlplane;

use controlplane::{ControlPlane, ExtenderSetup, Install};

/// The label on this benchmark's Nodes and Pods.
const LABEL: &str = "nodewright-bench";
const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    NamesOnly,
    FullNodes,
}

impl Mode {
    fn node_cache_capable(self) -> bool {
        self == Mode::NamesOnly
    }
    fn name(self) -> &'static str {
        match self {
            Mode::NamesOnly => "names-only",
            Mode::FullNodes => "full-nodes",
        }
    }
    fn parse(text: &str) -> Mode {
        match text.trim() {
            "names-only" | "names" | "true" => Mode::NamesOnly,
            "full-nodes" | "full" | "false" => Mode::FullNodes,
            other => {
                panic!("MODES: unknown mode {other:?} (names-only or full-nodes, comma-separated)")
            }
        }
    }
}

struct Knobs {
    measuring: bool,
    nodes: usize,
    pods: usize,
    modes: Vec<Mode>,
    concurrency: usize,
    lease_seconds: u64,
    bind_timeout: Duration,
    log_level: String,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a valid value")),
        _ => default,
    }
}

impl Knobs {
    fn read() -> Knobs {
        // `cargo bench` passes --bench; `cargo test --all-targets` runs this without it.
        let measuring = std::env::args().any(|a| a == "--bench");
        if !measuring {
            return Knobs {
                measuring,
                nodes: 20,
                pods: 40,
                modes: vec![Mode::NamesOnly],
                concurrency: 8,
                lease_seconds: 40,
                bind_timeout: Duration::from_secs(60),
                log_level: "warn".into(),
            };
        }
        let nodes: usize = env_or("NODES", 5000);
        let pods: usize = env_or("PODS", 10_000);
        let modes = env_or("MODES", "names-only,full-nodes".to_owned())
            .split(',')
            .filter(|m| !m.trim().is_empty())
            .map(Mode::parse)
            .collect::<Vec<_>>();
        assert!(nodes > 0 && pods > 0 && !modes.is_empty(), "nothing to run");
        Knobs {
            measuring,
            nodes,
            pods,
            modes,
            concurrency: env_or("CONCURRENCY", 32usize).max(1),
            lease_seconds: env_or("KWOK_LEASE_SECONDS", 40u64),
            bind_timeout: Duration::from_secs(env_or("BIND_TIMEOUT", 120 + pods as u64 / 2)),
            log_level: env_or("NODEWRIGHT_LOG", "warn".to_owned()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes: RSS and CPU from /proc.

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// utime + stime of the whole process (threads that have exited included), in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// A `/proc/PID/status` field in kB (VmRSS, VmHWM).
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(key)?
            .strip_prefix(':')?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// The pid of a running `program` (by its file name) one of whose arguments contains `needle`.
fn find_pid(program: &str, needle: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let named = args
            .first()
            .is_some_and(|a| Path::new(a).file_name().is_some_and(|f| f == program));
        if named && args.iter().skip(1).any(|a| a.contains(needle)) {
            return Some(pid);
        }
    }
    None
}

/// A process watched over a window: CPU seconds at the start, RSS and peak at the end.
struct Watched {
    name: String,
    pid: Option<u32>,
    cpu_start: f64,
}

impl Watched {
    fn new(name: &str, pid: Option<u32>) -> Watched {
        Watched {
            name: name.into(),
            pid,
            cpu_start: pid.and_then(cpu_seconds).unwrap_or(0.0),
        }
    }

    /// "name: CPU s over the window, RSS MiB now, peak MiB".
    fn line(&self, window: Duration) -> String {
        let Some(pid) = self.pid else {
            return format!("{:<23} (process not found)", self.name);
        };
        let cpu = cpu_seconds(pid).unwrap_or(self.cpu_start) - self.cpu_start;
        format!(
            "{:<23} cpu {:>8.1} s ({:>5.1} % of one core)   rss {:>8} now, {:>8} peak",
            self.name,
            cpu,
            100.0 * cpu / window.as_secs_f64().max(1e-9),
            mib(status_kib(pid, "VmRSS")),
            mib(status_kib(pid, "VmHWM")),
        )
    }
}

fn mib(kib: Option<u64>) -> String {
    match kib {
        Some(k) => format!("{:.1} MiB", k as f64 / 1024.0),
        None => "-".into(),
    }
}

/// `nodewright serve`, killed when dropped (and, by PR_SET_PDEATHSIG, when this binary dies).
struct Nodewright {
    child: Child,
    metrics: String,
    https: String,
    log: PathBuf,
}

impl Drop for Nodewright {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nodewright {
    async fn start(
        plane: &ControlPlane,
        install: &Install,
        certs: &Path,
        label: &str,
        log_level: &str,
    ) -> Nodewright {
        let (port, metrics_port) = (controlplane::free_port(), controlplane::free_port());
        let log = plane.dir.join(format!("nodewright-{label}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_nodewright"));
        command
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .arg("--config")
            .arg(certs.join("config.yaml"))
            .arg("--tls-cert")
            .arg(certs.join("tls.crt"))
            .arg("--tls-key")
            .arg(certs.join("tls.key"))
            .args(["--namespace", &install.namespace])
            .env("KUBECONFIG", &install.kubeconfig)
            .env("NODEWRIGHT_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().expect("start nodewright");
        let server = Nodewright {
            child,
            metrics: format!("http://127.0.0.1:{metrics_port}"),
            https: format!("https://127.0.0.1:{port}"),
            log,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let status = http
                .get(format!("{}/readyz", server.metrics))
                .send()
                .await
                .map(|r| r.status().as_u16());
            if matches!(status, Ok(200)) {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "nodewright not ready within 120 s; log {}:\n{}",
                server.log.display(),
                controlplane::tail(&server.log, 60)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus text: just enough to read counters and histograms.

struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, mut rest) = match line.find(['{', ' ']) {
            Some(i) => (&line[..i], &line[i..]),
            None => continue,
        };
        let mut labels = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices().peekable();
            let mut end = None;
            while let Some(&(start, c)) = chars.peek() {
                // key
                if c == '}' {
                    end = Some(start + 1);
                    break;
                }
                if c == ',' || c == ' ' {
                    chars.next();
                    continue;
                }
                let mut key = String::new();
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                // value, quoted, with \" \\ \n escapes
                if chars.next().map(|(_, c)| c) != Some('"') {
                    break;
                }
                let mut value = String::new();
                let mut escaped = false;
                for (_, c) in chars.by_ref() {
                    match (escaped, c) {
                        (true, 'n') => {
                            value.push('\n');
                            escaped = false;
                        }
                        (true, c) => {
                            value.push(c);
                            escaped = false;
                        }
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        (false, c) => value.push(c),
                    }
                }
                labels.push((key.trim().to_owned(), value));
            }
            let Some(end) = end else { continue };
            rest = &inner[end..];
        }
        let Some(value) = rest.split_whitespace().next().and_then(parse_number) else {
            continue;
        };
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

fn parse_number(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        other => other.parse().ok(),
    }
}

fn matches(sample: &Sample, name: &str, filter: &[(&str, &str)]) -> bool {
    sample.name == name
        && filter
            .iter()
            .all(|(k, v)| sample.labels.iter().any(|(lk, lv)| lk == k && lv == v))
}

/// The sum of the series of `name` whose labels include `filter`.
fn counter(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| matches(s, name, filter))
        .map(|s| s.value)
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0
}

/// The values of label `label` among the series of `name`.
fn label_values(samples: &[Sample], name: &str, label: &str) -> Vec<String> {
    let mut values: Vec<String> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter_map(|s| {
            s.labels
                .iter()
                .find(|(k, _)| k == label)
                .map(|(_, v)| v.clone())
        })
        .collect();
    values.sort();
    values.dedup();
    values
}

/// A histogram: cumulative counts by upper bound, summed over the series matching `filter`.
struct Histogram(Vec<(f64, f64)>);

impl Histogram {
    fn of(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> Histogram {
        let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        let bucket = format!("{name}_bucket");
        for s in samples.iter().filter(|s| matches(s, &bucket, filter)) {
            let Some(le) = s
                .labels
                .iter()
                .find(|(k, _)| k == "le")
                .and_then(|(_, v)| parse_number(v))
            else {
                continue;
            };
            // Order by the bound (all bounds are non-negative, so the bits order as the values).
            by_le.entry(le.to_bits()).or_insert((le, 0.0)).1 += s.value;
        }
        Histogram(by_le.into_values().collect())
    }

    fn count(&self) -> f64 {
        self.0.last().map(|b| b.1).unwrap_or(0.0)
    }

    /// The q-quantile, interpolated linearly inside its bucket (Prometheus' histogram_quantile).
    /// In the +Inf bucket it is the largest finite bound, marked as a lower bound.
    fn quantile(&self, q: f64) -> Option<(f64, bool)> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut previous = (0.0, 0.0);
        for &(le, cumulative) in &self.0 {
            if cumulative >= rank {
                if le.is_infinite() {
                    return Some((previous.0, true));
                }
                let in_bucket = cumulative - previous.1;
                let fraction = if in_bucket > 0.0 {
                    (rank - previous.1) / in_bucket
                } else {
                    1.0
                };
                return Some((previous.0 + (le - previous.0) * fraction, false));
            }
            previous = (le, cumulative);
        }
        Some((previous.0, true))
    }

    /// "p50 1.2 ms  p99 4.5 ms  (n 10000)".
    fn summary(&self) -> String {
        let show = |q: f64| match self.quantile(q) {
            Some((v, true)) => format!(">{}", seconds(v)),
            Some((v, false)) => seconds(v),
            None => "-".into(),
        };
        format!(
            "p50 {:>9}  p99 {:>9}  (n {})",
            show(0.50),
            show(0.99),
            self.count()
        )
    }
}

fn seconds(v: f64) -> String {
    if v < 0.001 {
        format!("{:.0} µs", v * 1e6)
    } else if v < 1.0 {
        format!("{:.2} ms", v * 1e3)
    } else {
        format!("{v:.2} s")
    }
}

async fn scrape(http: &reqwest::Client, url: &str) -> Vec<Sample> {
    match http.get(url).send().await {
        Ok(r) => parse_metrics(&r.text().await.unwrap_or_default()),
        Err(e) => {
            eprintln!("scrape {url}: {e}");
            Vec::new()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster: kwok, Nodes, Pods.

fn node_name(i: usize) -> String {
    format!("kwok-scale-{i:05}")
}

fn node(i: usize) -> Node {
    let name = node_name(i);
    let resources =
        json!({"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    // Each node its own /24 for the pod IPs kwok hands out (its default pool is one /24).
    let cidr = format!("10.{}.{}.0/24", 64 + i / 256, i % 256);
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": {
                LABEL: "kwok-scale",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "m6i.8xlarge",
                "topology.kubernetes.io/zone": ZONES[i % ZONES.len()],
                "topology.kubernetes.io/region": "us-east-1",
                "type": "kwok",
            },
            "annotations": {"kwok.x-k8s.io/node": "fake"},
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"allocatable": resources, "capacity": resources},
    }))
    .unwrap()
}

fn pod(i: usize, scheduler: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("p-{i:05}"), "labels": {LABEL: "kwok-scale", "app": "web"}},
        "spec": {
            "schedulerName": scheduler,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": "app", "image": "registry.k8s.io/pause:3.10",
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            }],
        },
    }))
    .unwrap()
}

/// Create `object` through `api`, retrying a few times on conflicts of load (429, 5xx, transport
/// errors); an object already there counts as created. Returns whether it was.
async fn create_with_retries<K>(api: &Api<K>, object: &K, what: &str) -> bool
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    for attempt in 0..6u32 {
        match api.create(&PostParams::default(), object).await {
            Ok(_) => return true,
            Err(kube::Error::Api(e)) if e.code == 409 => return true,
            Err(kube::Error::Api(e)) if e.code != 429 && e.code < 500 => {
                eprintln!("create {what}: {e}");
                return false;
            }
            Err(e) => {
                if attempt == 5 {
                    eprintln!("create {what}: {e} (gave up after 6 attempts)");
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
    false
}

/// The state of this benchmark's Nodes.
#[derive(Default)]
struct Readiness {
    total: usize,
    ready: usize,
    tainted: usize,
    /// Ready, yet still carrying only `node.kubernetes.io/not-ready` or `unreachable` taints: the
    /// one admission (TaintNodesByCondition) puts on every new Node, or one the node lifecycle
    /// controller put on when a lease renewal came late, which it lifts in its own time.
    stale_taint: Vec<String>,
}

async fn node_readiness(client: &Client) -> Readiness {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut lp = ListParams::default()
        .labels(&format!("{LABEL}=kwok-scale"))
        .limit(1000);
    let mut r = Readiness::default();
    loop {
        let page = match nodes.list(&lp).await {
            Ok(page) => page,
            Err(e) => {
                eprintln!("kwok-scale: list nodes: {e}");
                return r;
            }
        };
        for node in &page.items {
            r.total += 1;
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let taints = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            r.ready += usize::from(ready);
            r.tainted += usize::from(!taints.is_empty());
            if ready
                && !taints.is_empty()
                && taints.iter().all(|t| {
                    matches!(
                        t.key.as_str(),
                        "node.kubernetes.io/not-ready" | "node.kubernetes.io/unreachable"
                    )
                })
            {
                r.stale_taint.extend(node.metadata.name.clone());
            }
        }
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => lp = lp.continue_token(&token),
            _ => return r,
        }
    }
}

async fn create_nodes(client: &Client, knobs: &Knobs) {
    let nodes: Api<Node> = Api::all(client.clone());
    let started = Instant::now();
    let created = futures::stream::iter(0..knobs.nodes)
        .map(|i| {
            let nodes = nodes.clone();
            async move { create_with_retries(&nodes, &node(i), &node_name(i)).await }
        })
        .buffer_unordered(knobs.concurrency)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    assert_eq!(created, knobs.nodes, "not every Node was created");
    eprintln!(
        "kwok-scale: {} Nodes created in {:.1} s",
        knobs.nodes,
        started.elapsed().as_secs_f64()
    );
    // kwok makes them Ready. The node lifecycle controller would then lift the not-ready taint
    // that admission put on each, but at its client's 20 requests/s that takes minutes for
    // thousands of nodes, and the Node updates would land in the measured window: once a node is
    // Ready, lift its not-ready/unreachable taints here, CONCURRENCY at a time (the controller
    // does not put them back on a Ready node).
    let deadline = Instant::now() + Duration::from_secs(60 + knobs.nodes as u64 / 10);
    let mut last_report = Instant::now();
    let mut lifted = 0;
    loop {
        let r = node_readiness(client).await;
        if r.ready == knobs.nodes && r.tainted == 0 {
            eprintln!(
                "kwok-scale: {} Nodes Ready and untainted {:.1} s after the first create ({lifted} not-ready taints lifted by this benchmark)",
                r.ready,
                started.elapsed().as_secs_f64()
            );
            return;
        }
        if Instant::now() > deadline {
            eprintln!(
                "kwok-scale: WARNING after {:.0} s only {} of {} Nodes Ready and {} untainted; going on (the pods tolerate every taint)",
                started.elapsed().as_secs_f64(),
                r.ready,
                r.total,
                r.total - r.tainted
            );
            return;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "kwok-scale: {}/{} Nodes Ready, {} tainted",
                r.ready, r.total, r.tainted
            );
            last_report = Instant::now();
        }
        if !r.stale_taint.is_empty() {
            let patch = kube::api::Patch::Merge(json!({"spec": {"taints": null}}));
            lifted += futures::stream::iter(r.stale_taint)
                .map(|name| {
                    let nodes = nodes.clone();
                    let patch = &patch;
                    async move {
                        nodes
                            .patch(&name, &kube::api::PatchParams::default(), patch)
                            .await
                            .is_ok()
                    }
                })
                .buffer_unordered(knobs.concurrency)
                .filter(|ok| futures::future::ready(*ok))
                .count()
                .await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Pod name → when the watch first saw it bound, filled by a watch of `namespace`.
type Bound = Arc<Mutex<HashMap<String, Instant>>>;

/// Watch the pods of `namespace`; returns once the watch has listed (so no bind is missed).
async fn watch_bindings(
    client: &Client,
    namespace: &str,
) -> (
    Bound,
    tokio::sync::watch::Receiver<usize>,
    tokio::task::JoinHandle<()>,
) {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let bound: Bound = Arc::default();
    let (count_tx, count_rx) = tokio::sync::watch::channel(0usize);
    let (listed_tx, listed_rx) = tokio::sync::oneshot::channel();
    let task = {
        let bound = bound.clone();
        tokio::spawn(async move {
            let mut listed = Some(listed_tx);
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = listed.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                        let on_node = pod.spec.as_ref().and_then(|s| s.node_name.as_ref());
                        if let (Some(_), Some(name)) = (on_node, pod.metadata.name) {
                            let mut bound = bound.lock().unwrap();
                            bound.entry(name).or_insert_with(Instant::now);
                            let _ = count_tx.send(bound.len());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => eprintln!("kwok-scale: pod watch: {e}"),
                }
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(60), listed_rx)
        .await
        .expect("the pod watch did not list within 60 s")
        .expect("the pod watch ended");
    (bound, count_rx, task)
}

/// Delete every pod of `namespace` (grace period 0), CONCURRENCY at a time, and wait until they
/// are gone. (One DELETE of the collection does the same in one request, but for thousands of
/// pods that request outlasts the client's patience.)
async fn delete_pods(client: &Client, namespace: &str, concurrency: usize) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(1000);
    loop {
        match pods.list_metadata(&lp).await {
            Ok(page) => {
                names.extend(page.items.into_iter().filter_map(|p| p.metadata.name));
                match page.metadata.continue_ {
                    Some(token) if !token.is_empty() => lp = lp.continue_token(&token),
                    _ => break,
                }
            }
            Err(e) => {
                eprintln!("kwok-scale: list pods of {namespace}: {e}");
                break;
            }
        }
    }
    let delete = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    let failed = futures::stream::iter(names)
        .map(|name| {
            let (pods, delete) = (pods.clone(), &delete);
            async move {
                for attempt in 0..4u32 {
                    match pods.delete(&name, delete).await {
                        Ok(_) => return true,
                        Err(kube::Error::Api(e)) if e.code == 404 => return true,
                        Err(_) if attempt < 3 => {
                            tokio::time::sleep(Duration::from_millis(200 << attempt)).await
                        }
                        Err(e) => {
                            eprintln!("kwok-scale: delete pod {name}: {e}");
                            return false;
                        }
                    }
                }
                false
            }
        })
        .buffer_unordered(concurrency)
        .filter(|ok| futures::future::ready(!*ok))
        .count()
        .await;
    if failed > 0 {
        eprintln!("kwok-scale: WARNING {failed} pods of {namespace} could not be deleted");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = pods
            .list_metadata(&ListParams::default().limit(1))
            .await
            .map(|l| l.items.len() + l.metadata.remaining_item_count.unwrap_or(0) as usize)
            .unwrap_or(usize::MAX);
        if left == 0 {
            eprintln!(
                "kwok-scale: pods of {namespace} deleted in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            return;
        }
        if Instant::now() > deadline {
            eprintln!("kwok-scale: WARNING {left} pods of {namespace} still there");
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// One mode.

struct Outcome {
    mode: Mode,
    created: usize,
    bound: usize,
    create_s: f64,
    bind_s: f64,
    algorithm: Histogram,
    filter: Histogram,
    prioritize: Histogram,
    rss_after_kib: Option<u64>,
    hwm_kib: Option<u64>,
    nodewright_cpu_s: f64,
    extender_errors: f64,
    skipped_by_scheduler: usize,
}

fn percentile(sorted: &[Duration], q: f64) -> String {
    if sorted.is_empty() {
        return "-".into();
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    seconds(sorted[i].as_secs_f64())
}

async fn run_mode(
    plane: &ControlPlane,
    client: &Client,
    install: &Install,
    certs: &Path,
    ca_pem: &str,
    knobs: &Knobs,
    mode: Mode,
) -> Outcome {
    let namespace = plane.namespace("scale").await;
    let label = format!("{}-{namespace}", mode.name());
    eprintln!("kwok-scale: === {} in namespace {namespace}", mode.name());
    let nodewright = Nodewright::start(plane, install, certs, &label, &knobs.log_level).await;
    let nodewright_pid = nodewright.pid();
    let rss_started = status_kib(nodewright_pid, "VmRSS");

    let scheduler_name = format!("scheduler-{label}");
    let (scheduler, scheduler_port) = plane
        .start_extender_scheduler_with(
            &scheduler_name,
            &ExtenderSetup {
                https: &nodewright.https,
                ca_pem,
                client: None,
                node_cache_capable: mode.node_cache_capable(),
            },
            &format!(
                "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nprofiles:\n  - schedulerName: {scheduler_name}\n"
            ),
        )
        .await;
    let scheduler_config = plane.dir.join(format!("{scheduler_name}.yaml"));
    let scheduler_pid = find_pid(
        "kube-scheduler",
        &format!("--config={}", scheduler_config.display()),
    );
    let dir = plane.dir.display().to_string();
    let (bound, mut bound_count, watch_task) = watch_bindings(client, &namespace).await;

    let processes = [
        Watched::new("nodewright", Some(nodewright_pid)),
        Watched::new("kube-scheduler", scheduler_pid),
        Watched::new("kube-apiserver", find_pid("kube-apiserver", &dir)),
        Watched::new("etcd", find_pid("etcd", &dir)),
        Watched::new("kwok", find_pid("kwok", &dir)),
        Watched::new(
            "kube-controller-manager",
            find_pid("kube-controller-manager", &dir),
        ),
    ];

    // Create the pods, CONCURRENCY in flight, while the scheduler binds them.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let created_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let started = Instant::now();
    let creating = {
        let pods = pods.clone();
        let created_at = created_at.clone();
        let scheduler_name = scheduler_name.clone();
        let (n, concurrency) = (knobs.pods, knobs.concurrency);
        tokio::spawn(async move {
            futures::stream::iter(0..n)
                .map(|i| {
                    let (pods, created_at) = (pods.clone(), created_at.clone());
                    let pod = pod(i, &scheduler_name);
                    async move {
                        let name = pod.metadata.name.clone().unwrap();
                        let ok = create_with_retries(&pods, &pod, &name).await;
                        if ok {
                            created_at.lock().unwrap().insert(name, Instant::now());
                        }
                        ok
                    }
                })
                .buffer_unordered(concurrency)
                .filter(|ok| futures::future::ready(*ok))
                .count()
                .await
        })
    };
    let mut creating = Some(creating);
    let mut created = None;
    let mut create_s = f64::NAN;
    let deadline = started + knobs.bind_timeout;
    let mut last_report = Instant::now();
    let mut timed_out = false;
    loop {
        if let Some(task) = creating.as_mut().filter(|t| t.is_finished()) {
            let n = task.await.expect("pod creation panicked");
            creating = None;
            created = Some(n);
            create_s = started.elapsed().as_secs_f64();
            eprintln!(
                "kwok-scale: {n} pods created in {create_s:.1} s ({:.0}/s)",
                n as f64 / create_s
            );
        }
        let done = *bound_count.borrow();
        if created.is_some_and(|n| done >= n) {
            break;
        }
        if Instant::now() > deadline {
            timed_out = true;
            eprintln!(
                "kwok-scale: WARNING gave up after {:.0} s (BIND_TIMEOUT): {done} pods bound",
                started.elapsed().as_secs_f64()
            );
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "kwok-scale: {:>6.0} s  {} created, {done} bound",
                started.elapsed().as_secs_f64(),
                created_at.lock().unwrap().len()
            );
            last_report = Instant::now();
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), bound_count.changed()).await;
    }
    if let Some(task) = creating.take() {
        task.abort();
    }
    let window = started.elapsed();
    let (bound_n, last_bound) = {
        let bound = bound.lock().unwrap();
        (bound.len(), bound.values().max().copied())
    };
    let bind_s = last_bound
        .map(|t| t.duration_since(started).as_secs_f64())
        .unwrap_or(f64::NAN);
    let mut latencies: Vec<Duration> = {
        let bound = bound.lock().unwrap();
        let created_at = created_at.lock().unwrap();
        bound
            .iter()
            .filter_map(|(name, at)| Some(at.saturating_duration_since(*created_at.get(name)?)))
            .collect()
    };
    latencies.sort();
    watch_task.abort();

    // Figures, before anything is stopped.
    let process_lines: Vec<String> = processes.iter().map(|p| p.line(window)).collect();
    let nodewright_cpu_s = cpu_seconds(nodewright_pid).unwrap_or(0.0) - processes[0].cpu_start;
    let rss_after_kib = status_kib(nodewright_pid, "VmRSS");
    let hwm_kib = status_kib(nodewright_pid, "VmHWM");
    // kube-scheduler observes a pod's attempt once its binding returns, a moment after the watch
    // may have seen the pod bound.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let sched = scrape(
        &http,
        &format!("https://127.0.0.1:{scheduler_port}/metrics"),
    )
    .await;
    let nw = scrape(&http, &format!("{}/metrics", nodewright.metrics)).await;
    let algorithm = Histogram::of(
        &sched,
        "scheduler_scheduling_algorithm_duration_seconds",
        &[],
    );
    let attempt = Histogram::of(
        &sched,
        "scheduler_scheduling_attempt_duration_seconds",
        &[("result", "scheduled"), ("profile", &scheduler_name)],
    );
    let sli = Histogram::of(&sched, "scheduler_pod_scheduling_sli_duration_seconds", &[]);
    let attempts: Vec<String> = label_values(&sched, "scheduler_schedule_attempts_total", "result")
        .into_iter()
        .map(|r| {
            let n = counter(
                &sched,
                "scheduler_schedule_attempts_total",
                &[("result", &r), ("profile", &scheduler_name)],
            );
            format!("{r} {n}")
        })
        .collect();
    let verb = |v: &str| {
        Histogram::of(
            &nw,
            "nodewright_extender_request_duration_seconds",
            &[("verb", v)],
        )
    };
    let (filter, prioritize) = (verb("filter"), verb("prioritize"));
    let calls = |v: &str, o: &str| {
        counter(
            &nw,
            "nodewright_extender_requests_total",
            &[("verb", v), ("outcome", o)],
        )
    };
    let extender_errors = calls("filter", "error") + calls("prioritize", "error");
    let scheduler_log = std::fs::read_to_string(&scheduler.log).unwrap_or_default();
    let skipped_by_scheduler = scheduler_log
        .lines()
        .filter(|l| l.contains("Skipping extender"))
        .count();
    // The nodes each bound pod was checked against, from kube-scheduler's log (--v=2): with the
    // extender refusing none, the number of nodes it was sent.
    let feasible: Vec<f64> = scheduler_log
        .lines()
        .filter(|l| l.contains("Successfully bound pod to node"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("feasibleNodes="))?
                .parse()
                .ok()
        })
        .collect();
    let per_call = if feasible.is_empty() {
        format!(
            "up to {} (default percentageOfNodesToScore)",
            nodes_per_call(knobs.nodes)
        )
    } else {
        format!(
            "{:.0} on average (feasibleNodes in its log)",
            feasible.iter().sum::<f64>() / feasible.len() as f64
        )
    };
    let created_n = created.unwrap_or_else(|| created_at.lock().unwrap().len());

    println!();
    println!(
        "== {} (nodeCacheCapable: {}): {} kwok nodes, {} pods{}",
        mode.name(),
        mode.node_cache_capable(),
        knobs.nodes,
        knobs.pods,
        if timed_out { "  ** TIMED OUT **" } else { "" }
    );
    println!(
        "  pods created         {created_n} in {create_s:.1} s ({:.0}/s, {} in flight)",
        created_n as f64 / create_s,
        knobs.concurrency
    );
    println!(
        "  time to bind         {bind_s:.1} s from the first create to the last pod bound: {bound_n} bound, {:.0} pods/s",
        bound_n as f64 / bind_s
    );
    println!(
        "  create -> bound      p50 {}  p99 {}  max {}   (each pod, as this benchmark's watch saw it)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies
            .last()
            .map(|d| seconds(d.as_secs_f64()))
            .unwrap_or_else(|| "-".into()),
    );
    println!("  kube-scheduler (its /metrics; nodes sent to the extender per pod: {per_call}):");
    println!(
        "    scheduling_algorithm_duration_seconds          {}   filter + extender filter/prioritize + score, per attempt",
        algorithm.summary()
    );
    println!(
        "    scheduling_attempt_duration_seconds{{scheduled}} {}   algorithm + binding (its API call), per attempt",
        attempt.summary()
    );
    println!(
        "    pod_scheduling_sli_duration_seconds            {}   queue entry to scheduled, per pod",
        sli.summary()
    );
    println!(
        "    schedule_attempts_total                        {}; extender errors skipped (ignorable): {skipped_by_scheduler}",
        if attempts.is_empty() {
            "-".into()
        } else {
            attempts.join(", ")
        }
    );
    println!("  nodewright extender, server side (nodewright_extender_request_duration_seconds):");
    println!(
        "    filter                                         {}   ok {} error {}",
        filter.summary(),
        calls("filter", "ok"),
        calls("filter", "error")
    );
    println!(
        "    prioritize                                     {}   ok {} error {}",
        prioritize.summary(),
        calls("prioritize", "ok"),
        calls("prioritize", "error")
    );
    println!(
        "  nodewright memory    VmRSS {} after start, {} after the run; VmHWM (peak) {}",
        mib(rss_started),
        mib(rss_after_kib),
        mib(hwm_kib)
    );
    println!(
        "  processes over the {:.1} s from the first create to the last bind:",
        window.as_secs_f64()
    );
    for line in &process_lines {
        println!("    {line}");
    }
    println!(
        "  logs: {} and {}",
        nodewright.log.display(),
        scheduler.log.display()
    );

    drop(scheduler);
    drop(nodewright);
    delete_pods(client, &namespace, knobs.concurrency).await;
    Outcome {
        mode,
        created: created_n,
        bound: bound_n,
        create_s,
        bind_s,
        algorithm,
        filter,
        prioritize,
        rss_after_kib,
        hwm_kib,
        nodewright_cpu_s,
        extender_errors,
        skipped_by_scheduler,
    }
}

/// How many feasible nodes kube-scheduler looks for before it stops filtering (and sends them to
/// the extender), with the default percentageOfNodesToScore (numFeasibleNodesToFind).
fn nodes_per_call(nodes: usize) -> usize {
    if nodes < 100 {
        return nodes;
    }
    let percentage = (50 - nodes as i64 / 125).max(5) as usize;
    (nodes * percentage / 100).max(100)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let knobs = Knobs::read();
    let plane = controlplane::shared();
    let client = plane.client().await;

    // kwok for this benchmark's Nodes, with the lease duration asked for, and kwok's stock Stages
    // (which the binary does not embed; scripts/k8s-binaries.sh writes them beside it).
    let stages = controlplane::binaries().join("kwok-stages.yaml");
    let _kwok = plane.spawn(
        "kwok",
        &controlplane::binaries().join("kwok"),
        &[
            format!("--config={}", stages.display()),
            format!("--kubeconfig={}", plane.admin_kubeconfig.display()),
            "--manage-all-nodes=false".into(),
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
            format!("--server-address=127.0.0.1:{}", controlplane::free_port()),
            format!("--node-lease-duration-seconds={}", knobs.lease_seconds),
        ],
    );
    create_nodes(&client, &knobs).await;

    let install = plane.install_nodewright().await;
    let certs = tempfile::tempdir().unwrap();
    let bundle =
        nodewright::certs::generate(&nodewright::certs::local_names(), time::Duration::days(1))
            .unwrap();
    nodewright::certs::write_bundle(certs.path(), &bundle).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/steering.yaml"),
        certs.path().join("config.yaml"),
    )
    .unwrap();

    let mut outcomes = Vec::new();
    for &mode in &knobs.modes {
        outcomes.push(
            run_mode(
                plane,
                &client,
                &install,
                certs.path(),
                &bundle.ca_pem,
                &knobs,
                mode,
            )
            .await,
        );
    }

    let Readiness {
        total,
        ready,
        tainted,
        ..
    } = node_readiness(&client).await;
    println!();
    println!(
        "kwok scale benchmark: {} cores, {} nodewright build, kwok lease {} s; at the end {ready} of {total} Nodes Ready, {tainted} tainted",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        knobs.lease_seconds,
    );
    println!(
        "{:<11} {:>6} {:>6} {:>6} {:>8} {:>8} {:>7} {:>20} {:>20} {:>20} {:>9} {:>9} {:>7} {:>6}",
        "mode",
        "nodes",
        "pods",
        "bound",
        "create_s",
        "bind_s",
        "pods/s",
        "sched_algo p50/p99",
        "nw_filter p50/p99",
        "nw_prio p50/p99",
        "rss_MiB",
        "peak_MiB",
        "nw_cpu_s",
        "errors"
    );
    let pair = |h: &Histogram| {
        let show = |q| match h.quantile(q) {
            Some((v, lower)) => format!("{}{}", if lower { ">" } else { "" }, seconds(v)),
            None => "-".into(),
        };
        format!("{}/{}", show(0.5), show(0.99))
    };
    for o in &outcomes {
        println!(
            "{:<11} {:>6} {:>6} {:>6} {:>8.1} {:>8.1} {:>7.0} {:>20} {:>20} {:>20} {:>9.1} {:>9.1} {:>7.1} {:>6}",
            o.mode.name(),
            knobs.nodes,
            o.created,
            o.bound,
            o.create_s,
            o.bind_s,
            o.bound as f64 / o.bind_s,
            pair(&o.algorithm),
            pair(&o.filter),
            pair(&o.prioritize),
            o.rss_after_kib.unwrap_or(0) as f64 / 1024.0,
            o.hwm_kib.unwrap_or(0) as f64 / 1024.0,
            o.nodewright_cpu_s,
            o.extender_errors as usize + o.skipped_by_scheduler,
        );
    }
    println!(
        "(sched_algo: kube-scheduler's scheduling_algorithm_duration_seconds, which includes the extender calls; nw_*: nodewright's server-side extender latency; errors: extender calls that failed, by nodewright's count plus kube-scheduler's skips)"
    );

    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| o.bound < knobs.pods || o.extender_errors > 0.0 || o.skipped_by_scheduler > 0)
        .map(|o| o.mode.name().to_owned())
        .collect();
    if !knobs.measuring {
        // The smoke run: the same path, small; it must work end to end.
        for o in &outcomes {
            assert!(
                o.filter.count() >= knobs.pods as f64,
                "{}: {} filter calls for {} pods",
                o.mode.name(),
                o.filter.count(),
                knobs.pods
            );
        }
    }
    if !failed.is_empty() {
        eprintln!(
            "kwok-scale: FAILED for {}: not every pod bound, or extender calls failed (see above)",
            failed.join(", ")
        );
        std::process::exit(1);
    }
}
