//! A live race (a benchmark, not a test): the same Deployments given once to Karpenter (v1.14.1,
//! its kwok cloud provider) and once to nodewright (moto behind it), each on a fresh real control
//! plane (tests/common/controlplane.rs: etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler v1.37.2, kwok), with the same instance types, zones and prices. It reports, per
//! side, each pod's time from creation until it is bound to a node (p50, p99, max), the nodes
//! launched and their price per hour, then one table with both rows and the ratios.
//!
//! Run it with benches/race/run.sh (builds Karpenter's kwok binary and the release build, keeps the
//! output in target/race.txt). Without `--bench` it refuses to run (`cargo test` does not build it:
//! `test = false`).
//!
//! # The workload
//! Karpenter's scheduling benchmark mix (`makeDiversePods`, also examples/benchmix.rs) as
//! Deployments: five constraint kinds, each a group of DEPLOYMENTS_PER_KIND Deployments sharing a
//! `group` label that the constraint selects: no constraint; topology spread over zones, maxSkew 1;
//! topology spread over hostnames, maxSkew 1; required pod affinity to its group within a zone;
//! required pod anti-affinity to its group per hostname. PODS pods split evenly over the kinds and
//! their Deployments; each Deployment's cpu and memory requests are drawn (seeded, so both sides get
//! the same) from {100,250,500,1000,1500}m and {100,256,512,1024,2048,4096}Mi. Every pod selects
//! the pool by `karpenter.sh/nodepool: race` and nothing else.
//!
//! # What each side runs
//! Common: a fresh control plane (this binary runs itself once per side: `RACE_SIDE`), kwok managing
//! the Nodes annotated `kwok.x-k8s.io/node: fake` (keeps them Ready, runs their pods), a NodePool
//! `race` with the same requirements (amd64, linux, on-demand, the TYPES below, zones
//! us-east-1a/b/c), `consolidateAfter: Never` and `expireAfter: Never` (no disruption during the
//! race), batch windows idle 1 s / max 10 s (both sides' defaults).
//! - karpenter: Karpenter's CRDs from its module, a `KWOKNodeClass` (status set Ready: nothing in the
//!   kwok provider sets it), the kwok provider binary (admin kubeconfig, leader election off) with an
//!   instance-types file generated from nodewright's embedded catalog: per type the allocatable
//!   nodewright's kubelet stand-in gives a Node (EKS formulas) plus the kwok provider's fixed
//!   100m/10Mi overhead as capacity (so the Nodes' allocatable are the same on both sides), and the
//!   on-demand price per zone; the stock kube-scheduler. Karpenter creates the Nodes itself.
//! - nodewright: `tests/common/served.rs` `World` (the chart's RBAC, moto for EC2 with the workshop
//!   network, the release `nodewright serve`, the kube-scheduler calling its extender, and the
//!   kubelet stand-in that registers a Node, annotated for kwok, for each running moto instance,
//!   polling every 200 ms).
//!
//! # What is measured
//! A pod watch started before the Deployments: a pod's creation is the first time the watch sees
//! it, its binding the first time it sees `spec.nodeName`. The run ends when PODS pods are bound
//! (or after TIMEOUT); 3 s later the NodeClaims and Nodes are counted and priced at the shared table.
//! Each side's control-plane files (every process's log, nodewright's, the instance-types file)
//! are copied to target/tmp/race-logs/<side>/.
//!
//! Environment (defaults in brackets): PODS [1000], DEPLOYMENTS_PER_KIND [4], SEED [1],
//! SIDES [karpenter,nodewright], TIMEOUT [600] seconds per side, TYPES [the list below],
//! KARPENTER_BIN and KARPENTER_SRC [$NODEWRIGHT_BENCH_CACHE/karpenter-v1.14.1/{karpenter-kwok,src}].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::{Value, json};

#[path = "../../tests/common/mod.rs"]
mod common;

use common::controlplane::{self, ControlPlane};

const NAMESPACE: &str = "race";
const POOL: &str = "race";
const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];
const KARPENTER_VERSION: &str = "v1.14.1";
/// The instance types both sides may launch: general purpose, compute and memory optimised, two
/// generations, large to 4xlarge.
const DEFAULT_TYPES: &str = "m5.large,m5.xlarge,m5.2xlarge,m5.4xlarge,c5.large,c5.xlarge,c5.2xlarge,c5.4xlarge,r5.large,r5.xlarge,r5.2xlarge,r5.4xlarge,m6i.large,m6i.xlarge,m6i.2xlarge,m6i.4xlarge,c6i.large,c6i.xlarge,c6i.2xlarge,c6i.4xlarge,r6i.large,r6i.xlarge,r6i.2xlarge,r6i.4xlarge";
const CPU: [&str; 5] = ["100m", "250m", "500m", "1000m", "1500m"];
const MEMORY: [&str; 6] = ["100Mi", "256Mi", "512Mi", "1024Mi", "2048Mi", "4096Mi"];
/// The kwok provider's fixed kube-reserved (kwok/cloudprovider/helpers.go, newInstanceType).
const KWOK_RESERVED_CPU_MILLIS: i64 = 100;
const KWOK_RESERVED_MEMORY: i64 = 10 << 20;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a valid value")),
        _ => default,
    }
}

fn cache_dir() -> PathBuf {
    std::env::var_os("NODEWRIGHT_BENCH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/nodewright-bench")
        })
        .join(format!("karpenter-{KARPENTER_VERSION}"))
}

struct Knobs {
    pods: usize,
    per_kind: usize,
    seed: u64,
    timeout: Duration,
    types: Vec<String>,
}

impl Knobs {
    fn read() -> Knobs {
        let types: Vec<String> = env_or("TYPES", DEFAULT_TYPES.to_owned())
            .split(',')
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        Knobs {
            pods: env_or("PODS", 1000usize),
            per_kind: env_or("DEPLOYMENTS_PER_KIND", 4usize).max(1),
            seed: env_or("SEED", 1u64),
            timeout: Duration::from_secs(env_or("TIMEOUT", 600u64)),
            types,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The workload.
mod report;
mod workload;

use report::{fmt_s, machine, percentile, print_table};
use workload::{deployment, pool_spec, workload};

fn nodewright_config(types: &[String]) -> String {
    format!(
        r#"{pool}---
apiVersion: karpenter.k8s.aws/v1
kind: EC2NodeClass
metadata:
  name: default
spec:
  amiSelectorTerms: [{{alias: al2023@latest}}]
  role: KarpenterNodeRole-workshop
  subnetSelectorTerms: [{{tags: {{karpenter.sh/discovery: workshop}}}}]
  securityGroupSelectorTerms: [{{tags: {{karpenter.sh/discovery: workshop}}}}]
---
apiVersion: nodewright.io/v1alpha1
kind: Policy
metadata:
  name: default
spec:
  nodeSelectorKey: karpenter.sh/nodepool
  rules:
    - {{name: race, nodePool: {POOL}, namespaces: [{NAMESPACE}]}}
  batching: {{idleDuration: 1s, maxDuration: 10s}}
  provisioning:
    clusterName: workshop
    clusterEndpoint: https://workshop.eks.example.com
"#,
        pool = pool_spec(
            types,
            "{group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}"
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// The shared catalog: nodewright's embedded us-east-1 data.

struct TypeRow {
    name: String,
    /// What a Node of this type has allocatable (nodewright's kubelet stand-in writes the same).
    cpu_millis: i64,
    memory_bytes: i64,
    pods: i64,
    ephemeral_bytes: i64,
    /// On-demand USD/h per zone.
    prices: BTreeMap<String, f64>,
}

fn catalog_rows(types: &[String]) -> Vec<TypeRow> {
    use nodewright::model::catalog::{CapacityType, KubeletSettings};
    use nodewright::model::resources::{CPU as R_CPU, EPHEMERAL, MEMORY as R_MEMORY, PODS};
    let catalog = nodewright::cloud::catalog::embedded(
        "us-east-1",
        &nodewright::config::PricingSpec::default(),
    )
    .expect("the embedded us-east-1 catalog");
    types
        .iter()
        .map(|name| {
            let t = catalog
                .get(name)
                .unwrap_or_else(|| panic!("{name} is not in nodewright's us-east-1 catalog"));
            let a = t.allocatable(&KubeletSettings::default());
            let prices: BTreeMap<String, f64> = t
                .offerings
                .iter()
                .filter(|o| o.capacity_type == CapacityType::OnDemand)
                .filter(|o| ZONES.contains(&o.zone.as_str()))
                .map(|o| (o.zone.clone(), o.price))
                .collect();
            assert_eq!(
                prices.len(),
                ZONES.len(),
                "{name} is not offered on demand in every zone of {ZONES:?}"
            );
            TypeRow {
                name: name.clone(),
                cpu_millis: a.get(R_CPU),
                memory_bytes: a.get(R_MEMORY),
                pods: a.get(PODS),
                ephemeral_bytes: a.get(EPHEMERAL),
                prices,
            }
        })
        .collect()
}

/// Karpenter kwok's instance-types file (kwok/cloudprovider/helpers.go `InstanceTypeOptions`).
fn kwok_instance_types(rows: &[TypeRow]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| {
                let offerings: Vec<Value> = r
                    .prices
                    .iter()
                    .map(|(zone, price)| {
                        json!({"Price": price, "Available": true, "Requirements": [
                            {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]},
                            {"key": "topology.kubernetes.io/zone", "operator": "In", "values": [zone]},
                        ]})
                    })
                    .collect();
                json!({
                    "name": r.name,
                    "architecture": "amd64",
                    "operatingSystems": ["linux"],
                    "offerings": offerings,
                    "resources": {
                        "cpu": format!("{}m", r.cpu_millis + KWOK_RESERVED_CPU_MILLIS),
                        "memory": format!("{}Ki", (r.memory_bytes + KWOK_RESERVED_MEMORY) / 1024),
                        "pods": r.pods.to_string(),
                        "ephemeral-storage": r.ephemeral_bytes.to_string(),
                    },
                })
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// One side.

#[derive(Clone, Copy, PartialEq, Debug)]
enum Side {
    Karpenter,
    Nodewright,
}

impl Side {
    fn parse(text: &str) -> Side {
        match text.trim() {
            "karpenter" => Side::Karpenter,
            "nodewright" => Side::Nodewright,
            other => panic!("unknown side {other:?} (karpenter or nodewright)"),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Side::Karpenter => "karpenter",
            Side::Nodewright => "nodewright",
        }
    }
}

fn karpenter_claims() -> ApiResource {
    ApiResource {
        group: "karpenter.sh".into(),
        version: "v1".into(),
        api_version: "karpenter.sh/v1".into(),
        kind: "NodeClaim".into(),
        plural: "nodeclaims".into(),
    }
}

async fn wait_established(client: &Client, name: &str) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let established = crds
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|c| c.status)
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return;
        }
        assert!(Instant::now() < deadline, "CRD {name} never established");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What runs one side; dropped at the end.
enum Running {
    Karpenter {
        _karpenter: controlplane::Process,
        _scheduler: controlplane::Process,
        log: PathBuf,
        /// `http://127.0.0.1:PORT/healthz`
        health: String,
    },
    Nodewright(Box<common::served::World>),
}

async fn start_karpenter(plane: &ControlPlane, client: &Client, knobs: &Knobs) -> Running {
    let dir = cache_dir();
    let bin = std::env::var_os("KARPENTER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("karpenter-kwok"));
    let src = std::env::var_os("KARPENTER_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("src"));
    assert!(
        bin.is_file(),
        "{} not found: benches/race/run.sh builds it",
        bin.display()
    );
    // The kwok chart's copies of the karpenter.sh CRDs (they allow the karpenter.kwok.sh labels),
    // and the KWOKNodeClass CRD.
    for file in [
        "kwok/charts/crds/karpenter.sh_nodepools.yaml",
        "kwok/charts/crds/karpenter.sh_nodeclaims.yaml",
        "kwok/charts/crds/karpenter.sh_nodeoverlays.yaml",
        "kwok/charts/crds/autoscaling.x-k8s.io_capacitybuffers.yaml",
        "kwok/apis/crds/karpenter.kwok.sh_kwoknodeclasses.yaml",
    ] {
        let text = std::fs::read_to_string(src.join(file))
            .unwrap_or_else(|e| panic!("{}: {e}", src.join(file).display()));
        let doc: Value = serde_yaml::from_str(&text).unwrap();
        controlplane::create(client, &doc, true).await;
        wait_established(client, doc["metadata"]["name"].as_str().unwrap()).await;
    }
    let class = json!({"apiVersion": "karpenter.kwok.sh/v1alpha1", "kind": "KWOKNodeClass",
                       "metadata": {"name": "default"}});
    controlplane::create(client, &class, true).await;
    let classes: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource {
            group: "karpenter.kwok.sh".into(),
            version: "v1alpha1".into(),
            api_version: "karpenter.kwok.sh/v1alpha1".into(),
            kind: "KWOKNodeClass".into(),
            plural: "kwoknodeclasses".into(),
        },
    );
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    classes
        .patch_status(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{
                "type": "Ready", "status": "True", "reason": "Ready", "message": "",
                "lastTransitionTime": now, "observedGeneration": 1,
            }]}})),
        )
        .await
        .expect("set the KWOKNodeClass Ready");
    let pool: Value = serde_yaml::from_str(&pool_spec(
        &knobs.types,
        "{group: karpenter.kwok.sh, kind: KWOKNodeClass, name: default}",
    ))
    .unwrap();
    controlplane::create(client, &pool, false).await;

    let types_file = plane.write(
        "karpenter-instance-types.json",
        &serde_json::to_string_pretty(&kwok_instance_types(&catalog_rows(&knobs.types))).unwrap(),
    );
    let (scheduler, _) = plane
        .start_scheduler(
            "kube-scheduler",
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n",
        )
        .await;
    let (metrics, health) = (controlplane::free_port(), controlplane::free_port());
    let karpenter = plane.spawn(
        "karpenter",
        Path::new("/usr/bin/env"),
        &[
            format!("KUBECONFIG={}", plane.admin_kubeconfig.display()),
            "DISABLE_LEADER_ELECTION=true".into(),
            format!("METRICS_PORT={metrics}"),
            format!("HEALTH_PROBE_PORT={health}"),
            format!("INSTANCE_TYPES_FILE_PATH={}", types_file.display()),
            "LOG_LEVEL=info".into(),
            "BATCH_IDLE_DURATION=1s".into(),
            "BATCH_MAX_DURATION=10s".into(),
            bin.display().to_string(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = reqwest::get(format!("http://127.0.0.1:{health}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Karpenter not ready within 120 s:\n{}",
            karpenter.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("race: Karpenter {KARPENTER_VERSION} (kwok provider) ready");
    Running::Karpenter {
        health: format!("http://127.0.0.1:{health}/healthz"),
        log: karpenter.log.clone(),
        _karpenter: karpenter,
        _scheduler: scheduler,
    }
}

async fn start_nodewright(plane: &'static ControlPlane, client: &Client, knobs: &Knobs) -> Running {
    plane.ensure_nodeclaim_crd().await;
    let install = plane.install_nodewright().await;
    let world = common::served::World::start(
        plane,
        &install,
        client.clone(),
        NAMESPACE.into(),
        &nodewright_config(&knobs.types),
        "workshop",
    )
    .await;
    eprintln!("race: nodewright ready");
    Running::Nodewright(Box::new(world))
}

/// Per pod: first seen (created), first seen on a node (bound).
#[derive(Default)]
struct Seen {
    created: HashMap<String, Instant>,
    bound: HashMap<String, Instant>,
}

async fn watch_pods(
    client: &Client,
) -> (
    Arc<Mutex<Seen>>,
    tokio::sync::watch::Receiver<usize>,
    tokio::task::JoinHandle<()>,
) {
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let (count_tx, count_rx) = tokio::sync::watch::channel(0usize);
    let (listed_tx, listed_rx) = tokio::sync::oneshot::channel();
    let task = {
        let seen = seen.clone();
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
                        let now = Instant::now();
                        let Some(name) = pod.metadata.name.clone() else {
                            continue;
                        };
                        let mut seen = seen.lock().unwrap();
                        seen.created.entry(name.clone()).or_insert(now);
                        if pod
                            .spec
                            .as_ref()
                            .and_then(|s| s.node_name.as_ref())
                            .is_some()
                        {
                            seen.bound.entry(name).or_insert(now);
                            let _ = count_tx.send(seen.bound.len());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => eprintln!("race: pod watch: {e}"),
                }
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(60), listed_rx)
        .await
        .expect("the pod watch did not list within 60 s")
        .expect("the pod watch ended");
    (seen, count_rx, task)
}

/// When each object of `api` was first seen (a watch started now), by name.
fn first_seen<K>(
    api: Api<K>,
) -> (
    Arc<Mutex<HashMap<String, Instant>>>,
    tokio::task::JoinHandle<()>,
)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let task = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(event) = events.next().await {
                if let Ok(object) = event
                    && let Some(name) = object.meta().name.clone()
                {
                    seen.lock()
                        .unwrap()
                        .entry(name)
                        .or_insert_with(Instant::now);
                }
            }
        })
    };
    (seen, task)
}

/// (first, last) of `seen`, in seconds after `start`.
fn span(seen: &Mutex<HashMap<String, Instant>>, start: Instant) -> (f64, f64) {
    let seen = seen.lock().unwrap();
    let at = |t: Option<&Instant>| {
        t.map(|t| t.saturating_duration_since(start).as_secs_f64())
            .unwrap_or(f64::NAN)
    };
    (at(seen.values().min()), at(seen.values().max()))
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
struct Outcome {
    side: String,
    pods: usize,
    bound: usize,
    timed_out: bool,
    /// Seconds, each pod's creation → bound, sorted.
    latencies: Vec<f64>,
    /// First Deployment create → last pod bound.
    wall_s: f64,
    /// First Deployment create → last pod created (kube-controller-manager's pace).
    created_s: f64,
    claims: usize,
    nodes: usize,
    /// Node counts by instance type.
    types: BTreeMap<String, usize>,
    usd_per_hour: f64,
    /// First and last NodeClaim, first and last Node seen, seconds after the first Deployment.
    claims_seen: (f64, f64),
    nodes_seen: (f64, f64),
    /// Distinct pods the watch saw (more than `pods` if some were replaced).
    pods_seen: usize,
    /// The provisioner's process (karpenter or nodewright serve): CPU seconds from the first
    /// Deployment to the end, and its peak RSS in MiB.
    provisioner_cpu_s: f64,
    provisioner_peak_mib: f64,
    /// Whether the provisioner answered its /healthz (within 5 s) at the end.
    answering: bool,
    /// NodeClaims by phase (nodewright's; Karpenter's by whether a Node was found for them).
    phases: BTreeMap<String, usize>,
    /// Claims whose instance type was not known (not launched), not priced.
    unpriced: usize,
}

async fn run_side(side: Side, knobs: &Knobs) -> Outcome {
    let plane = controlplane::shared();
    let client = plane.client().await;
    plane.kwok();
    plane.create_namespace(NAMESPACE).await;
    let running = match side {
        Side::Karpenter => start_karpenter(plane, &client, knobs).await,
        Side::Nodewright => start_nodewright(plane, &client, knobs).await,
    };
    let deployments = workload(knobs);
    let (seen, mut bound_count, watch_task) = watch_pods(&client).await;
    let (claims_seen, claims_task) = match side {
        Side::Karpenter => first_seen(Api::<DynamicObject>::all_with(
            client.clone(),
            &karpenter_claims(),
        )),
        Side::Nodewright => first_seen(Api::<DynamicObject>::all_with(
            client.clone(),
            &common::served::nodeclaim_resource(),
        )),
    };
    let (nodes_seen, nodes_task) = first_seen(Api::<Node>::all(client.clone()));

    let provisioner = match &running {
        Running::Karpenter { .. } => child_pid("karpenter-kwok"),
        Running::Nodewright(world) => Some(world.server.child.id()),
    };
    let cpu_before = provisioner.and_then(cpu_and_peak).map(|c| c.0);
    let api: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let started = Instant::now();
    futures::future::join_all(deployments.iter().map(|(name, n, cpu, mem, kind)| {
        let api = api.clone();
        let d = deployment(name, *n, cpu, mem, *kind);
        async move {
            api.create(&PostParams::default(), &d)
                .await
                .unwrap_or_else(|e| panic!("create Deployment {name}: {e}"));
        }
    }))
    .await;
    eprintln!(
        "race: {}: {} Deployments created ({} pods): {}",
        side.name(),
        deployments.len(),
        knobs.pods,
        deployments
            .iter()
            .map(|(name, n, cpu, mem, _)| format!("{name}={n}x{cpu}/{mem}"))
            .collect::<Vec<_>>()
            .join(" ")
    );

    let deadline = started + knobs.timeout;
    let mut last_report = Instant::now();
    let mut timed_out = false;
    loop {
        let done = *bound_count.borrow();
        if done >= knobs.pods {
            break;
        }
        if Instant::now() > deadline {
            timed_out = true;
            eprintln!(
                "race: {}: WARNING gave up after {:.0} s (TIMEOUT): {done} of {} bound",
                side.name(),
                started.elapsed().as_secs_f64(),
                knobs.pods
            );
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            let created = seen.lock().unwrap().created.len();
            eprintln!(
                "race: {}: {:>5.0} s  {created} created, {done} bound",
                side.name(),
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), bound_count.changed()).await;
    }
    let (provisioner_cpu_s, provisioner_peak_mib) =
        match (provisioner.and_then(cpu_and_peak), cpu_before) {
            (Some((cpu, peak)), Some(before)) => (cpu - before, peak),
            _ => (f64::NAN, f64::NAN),
        };
    let (latencies, wall_s, created_s, bound, pods_seen) = {
        let seen = seen.lock().unwrap();
        let mut l: Vec<f64> = seen
            .bound
            .iter()
            .filter_map(|(name, at)| {
                Some(
                    at.saturating_duration_since(*seen.created.get(name)?)
                        .as_secs_f64(),
                )
            })
            .collect();
        l.sort_by(f64::total_cmp);
        let last = |m: &HashMap<String, Instant>| {
            m.values()
                .max()
                .map(|t| t.duration_since(started).as_secs_f64())
                .unwrap_or(f64::NAN)
        };
        (
            l,
            last(&seen.bound),
            last(&seen.created),
            seen.bound.len(),
            seen.created.len(),
        )
    };
    // Claims launched a moment after the last binding are the provisioner's too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    watch_task.abort();
    claims_task.abort();
    nodes_task.abort();
    let (claims_seen, nodes_seen) = (span(&claims_seen, started), span(&nodes_seen, started));

    let prices: HashMap<String, BTreeMap<String, f64>> = catalog_rows(&knobs.types)
        .into_iter()
        .map(|r| (r.name, r.prices))
        .collect();
    let price = |ty: &str, zone: &str| prices.get(ty).and_then(|p| p.get(zone)).copied();
    // Every claim counts, with its instance type and zone once launched.
    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    let claims: Vec<(Option<String>, Option<String>)> = match side {
        Side::Karpenter => Api::<DynamicObject>::all_with(client.clone(), &karpenter_claims())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|c| {
                let phase = if c.data["status"]["nodeName"].is_string() {
                    "with a Node"
                } else {
                    "without a Node"
                };
                *phases.entry(phase.into()).or_insert(0) += 1;
                let l = c.metadata.labels.unwrap_or_default();
                (
                    l.get("node.kubernetes.io/instance-type").cloned(),
                    l.get("topology.kubernetes.io/zone").cloned(),
                )
            })
            .collect(),
        Side::Nodewright => common::served::list_claims(&client)
            .await
            .into_iter()
            .map(|c| {
                let s = &c["status"];
                let phase = s["phase"].as_str().unwrap_or("-").to_owned();
                *phases.entry(phase).or_insert(0) += 1;
                (
                    s["instanceType"].as_str().map(str::to_owned),
                    s["zone"].as_str().map(str::to_owned),
                )
            })
            .collect(),
    };
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let mut types = BTreeMap::new();
    for n in &nodes {
        let ty = n
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("node.kubernetes.io/instance-type"))
            .cloned()
            .unwrap_or_else(|| "?".into());
        *types.entry(ty).or_insert(0) += 1;
    }
    let mut usd_per_hour = 0.0;
    let mut unpriced = 0;
    for (ty, zone) in &claims {
        match (ty, zone) {
            (Some(ty), Some(zone)) if price(ty, zone).is_some() => {
                usd_per_hour += price(ty, zone).unwrap()
            }
            _ => unpriced += 1,
        }
    }
    let health = match &running {
        Running::Karpenter { health, .. } => health.clone(),
        Running::Nodewright(world) => format!("{}/healthz", world.server.ops),
    };
    let answering = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(&health)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    let log = match &running {
        Running::Karpenter { log, .. } => log.display().to_string(),
        Running::Nodewright(world) => {
            let path = plane.dir.join("nodewright.log");
            let _ = std::fs::write(&path, world.server.logs());
            path.display().to_string()
        }
    };
    drop(running);
    let outcome = Outcome {
        side: side.name().into(),
        pods: knobs.pods,
        bound,
        timed_out,
        latencies,
        wall_s,
        created_s,
        claims: claims.len(),
        nodes: nodes.len(),
        types,
        usd_per_hour,
        claims_seen,
        nodes_seen,
        pods_seen,
        provisioner_cpu_s,
        provisioner_peak_mib,
        answering,
        phases,
        unpriced,
    };
    println!();
    println!(
        "== {}: {} of {} pods bound ({} pods seen){}",
        side.name(),
        outcome.bound,
        outcome.pods,
        outcome.pods_seen,
        if timed_out { "  ** TIMED OUT **" } else { "" }
    );
    println!(
        "  create -> bound  p50 {}  p99 {}  max {}; last pod created {:.1} s and last bound {:.1} s after the first Deployment",
        fmt_s(percentile(&outcome.latencies, 0.5)),
        fmt_s(percentile(&outcome.latencies, 0.99)),
        fmt_s(outcome.latencies.last().copied()),
        created_s,
        wall_s
    );
    println!(
        "  launched         {} claims, {} Nodes, ${:.3}/h{}",
        outcome.claims,
        outcome.nodes,
        outcome.usd_per_hour,
        if unpriced > 0 {
            format!(" ({unpriced} claims without a launched type, not priced)")
        } else {
            String::new()
        }
    );
    println!(
        "  timeline         NodeClaims first/last seen {:.1}/{:.1} s, Nodes first/last {:.1}/{:.1} s after the first Deployment",
        claims_seen.0, claims_seen.1, nodes_seen.0, nodes_seen.1
    );
    println!(
        "  provisioner      {:.1} s of CPU from the first Deployment to the end, peak RSS {:.0} MiB; {} its /healthz at the end",
        provisioner_cpu_s,
        provisioner_peak_mib,
        if answering {
            "answered"
        } else {
            "did NOT answer (hung?)"
        }
    );
    println!(
        "  claims by phase  {}",
        outcome
            .phases
            .iter()
            .map(|(p, n)| format!("{p} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  node types       {}",
        outcome
            .types
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // The control plane's directory is removed by the next side's start (its process is gone):
    // keep its files (logs, configs, the instance-types file) where the next run replaces them.
    let kept = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("race-logs")
        .join(side.name());
    let _ = std::fs::remove_dir_all(&kept);
    std::fs::create_dir_all(&kept).unwrap();
    for entry in std::fs::read_dir(&plane.dir).unwrap().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::copy(entry.path(), kept.join(entry.file_name()));
        }
    }
    println!(
        "  logs             {} (copied to {})",
        log.replace(&plane.dir.display().to_string(), "<control plane dir>"),
        kept.display()
    );
    outcome
}

/// utime + stime of process `pid` (its exited threads included), in seconds, and its peak RSS
/// (VmHWM) in MiB.
fn cpu_and_peak(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = (fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let peak_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some((cpu, peak_kib / 1024.0))
}

/// The pid of this process's child running `program` (a path ending so).
fn child_pid(program: &str) -> Option<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let argv0 = String::from_utf8_lossy(cmdline.split(|b| *b == 0).next()?).into_owned();
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let ppid = stat[stat.rfind(')')? + 1..]
                .split_whitespace()
                .nth(1)?
                .to_owned();
            (argv0.ends_with(program) && ppid == me).then_some(pid)
        })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; anything else (cargo test, by hand) is refused.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("race: a benchmark: run benches/race/run.sh (or cargo bench --bench race)");
        return;
    }
    let knobs = Knobs::read();
    if let Ok(side) = std::env::var("RACE_SIDE") {
        let outcome = run_side(Side::parse(&side), &knobs).await;
        let out = std::env::var("RACE_OUT").expect("RACE_OUT");
        std::fs::write(out, serde_json::to_string(&outcome).unwrap()).unwrap();
        // The control plane's processes die with this process (PR_SET_PDEATHSIG).
        std::process::exit(0);
    }
    let machine = machine();
    let sides: Vec<Side> = env_or("SIDES", "karpenter,nodewright".to_owned())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(Side::parse)
        .collect();
    // Fail early on a type outside the shared catalog.
    catalog_rows(&knobs.types);
    let results = tempfile::tempdir().unwrap();
    let mut outcomes = Vec::new();
    for side in sides {
        eprintln!("race: === {} (a fresh control plane)", side.name());
        let out = results.path().join(format!("{}.json", side.name()));
        let status = Command::new(std::env::current_exe().unwrap())
            .args(std::env::args().skip(1))
            .env("RACE_SIDE", side.name())
            .env("RACE_OUT", &out)
            .status()
            .expect("run one side");
        match std::fs::read_to_string(&out) {
            Ok(text) if status.success() => outcomes.push(serde_json::from_str(&text).unwrap()),
            _ => {
                eprintln!("race: {} failed ({status})", side.name());
                outcomes.push(Outcome {
                    side: format!("{} FAILED", side.name()),
                    ..Outcome::default()
                });
            }
        }
    }
    print_table(&knobs, &outcomes, &machine);
}
