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

mod cluster;
#[path = "../../tests/common/controlplane.rs"]
#[allow(dead_code)]
mod controlplane;
mod procstat;
mod promtext;

use cluster::*;
use procstat::*;
use promtext::*;

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
    let bundle = nodewright::tls::certs::generate(
        &nodewright::tls::certs::local_names(),
        time::Duration::days(1),
    )
    .unwrap();
    nodewright::tls::certs::write_bundle(certs.path(), &bundle).unwrap();
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
