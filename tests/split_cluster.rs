//! Spot and on-demand per workload on the real control plane: three `nodewright serve` processes
//! under the chart's ServiceAccount and RBAC sit behind one webhook URL (a round-robin TCP proxy,
//! as a Service spreads connections); the real kube-apiserver calls the mutating webhook for the
//! pods kube-controller-manager's ReplicaSet controller creates for a Deployment. The split's
//! ledger is written to etcd through the real apiserver with compare-and-swap.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

#[macro_use]
mod common;
use common::controlplane::{self, Install};
use common::tcpproxy::{ProxyHandle, RoundRobin};
use common::{ServeFiles, Server};

/// Held by the tests whose nodewright evicts (`capacitySplitRestore`): each watches every
/// namespace, as one install per cluster does, so two at once would act on each other's workloads.
static RESTORING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The Deployment's split: `nodewright.io/on-demand-base: "3"`, `nodewright.io/spot-percent: "80"`.
const BASE: u32 = 3;
const SPOT_PERCENT: u32 = 80;

struct Cluster {
    client: Client,
    install: Install,
    namespace: String,
    replicas: Vec<Server>,
    proxy: ProxyHandle,
    ca: String,
    _files: ServeFiles,
}

impl Cluster {
    async fn start(replicas: usize) -> Cluster {
        Self::start_with(replicas, "").await
    }

    /// `policy`: more Policy `spec` fields, as YAML lines indented by two spaces.
    async fn start_with(replicas: usize, policy: &str) -> Cluster {
        let plane = controlplane::shared();
        let client = plane.client().await;
        let install = plane.install_nodewright().await;
        let namespace = plane.namespace("shop").await;
        // The steering test config; its `teams` rule (pool `default`, spot and on-demand) selects
        // this test's namespace. The split comes from the pod template's annotations.
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/steering.yaml"),
        )
        .unwrap()
        .replace("team-riker", &namespace)
        .replace("spec:\n  spread:", &format!("spec:\n{policy}  spread:"));
        let files = ServeFiles::write(&text);
        let args = files.args(&install.namespace);
        let replicas: Vec<Server> = (0..replicas)
            .map(|_| Server::start_with(&args, Some(&install.kubeconfig)))
            .collect();
        let backends = replicas
            .iter()
            .map(|s| s.https.trim_start_matches("https://").parse().unwrap())
            .collect();
        let proxy = RoundRobin::start(backends).await.unwrap();
        let cluster = Cluster {
            client,
            install,
            namespace,
            replicas,
            proxy,
            ca: files.ca_pem.clone(),
            _files: files,
        };
        cluster.wait_until_split_ready().await;
        cluster.register_webhook().await;
        cluster
    }

    async fn register_webhook(&self) {
        let hook = common::pod_webhook(
            "MutatingWebhookConfiguration",
            &format!("{}-split", self.install.release),
            &format!("https://127.0.0.1:{}/mutate", self.proxy.addr().port()),
            &self.ca,
            &self.namespace,
        );
        controlplane::apply(&self.client, &hook).await;
    }

    /// Each replica chooses capacity types only once its pod watch has listed: dry-run reviews
    /// sent to each directly tell.
    async fn wait_until_split_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for (i, replica) in self.replicas.iter().enumerate() {
            loop {
                let answer = review(
                    replica,
                    &self.ca,
                    &self.namespace,
                    &format!("probe-{i}"),
                    "probe",
                    true,
                )
                .await;
                if chosen_in(&answer).is_some() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "split never ready: {answer}\n{}",
                    replica.logs()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn create_deployment(&self, name: &str, replicas: i32) {
        let annotations = json!({
            "nodewright.io/on-demand-base": BASE.to_string(),
            "nodewright.io/spot-percent": SPOT_PERCENT.to_string(),
        });
        let spec = json!({"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]});
        self.create_deployment_with(name, replicas, annotations, spec)
            .await;
    }

    async fn create_deployment_with(
        &self,
        name: &str,
        replicas: i32,
        annotations: Value,
        pod_spec: Value,
    ) {
        let deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}, "annotations": annotations},
                    "spec": pod_spec
                }
            }
        });
        self.deployments()
            .create(
                &PostParams::default(),
                &serde_json::from_value(deployment).unwrap(),
            )
            .await
            .unwrap();
    }

    async fn patch_deployment(&self, name: &str, patch: Value) {
        self.deployments()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    /// The pods labelled `app=<app>` that are not being deleted.
    async fn live_pods(&self, app: &str) -> Vec<Pod> {
        let mut pods = self
            .pods()
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .unwrap()
            .items;
        pods.retain(|p| p.metadata.deletion_timestamp.is_none());
        pods
    }

    /// The live pods of Deployment `name` by the capacity type their nodeSelector asks for, once
    /// there are `expected` of them; panics after 60 s. Every one must have been given one.
    async fn settled(&self, name: &str, expected: usize) -> (u32, u32) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let live = self.live_pods(name).await;
            if live.len() == expected {
                let mut counts = (0, 0);
                for pod in &live {
                    match selected_type(pod) {
                        Some("on-demand") => counts.0 += 1,
                        Some("spot") => counts.1 += 1,
                        other => panic!(
                            "pod {:?} has capacity type {other:?}; logs:\n{}",
                            pod.metadata.name,
                            self.replicas[0].logs()
                        ),
                    }
                    // Steering's own additions are there too, and the choice's id.
                    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
                    assert!(
                        annotations.contains_key("nodewright.io/split-id"),
                        "{annotations:?}"
                    );
                }
                return counts;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {} live pods, expected {expected}",
                live.len()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn ledger_entries(&self) -> usize {
        let Some(cm) = Api::<ConfigMap>::namespaced(self.client.clone(), &self.install.namespace)
            .get_opt(&format!("nodewright-split-{}", self.namespace))
            .await
            .unwrap()
        else {
            return 0;
        };
        let ledger: Value = serde_json::from_str(&cm.data.unwrap()["ledger.json"]).unwrap();
        ledger["entries"].as_object().map_or(0, |e| e.len())
    }
}

/// The capacity type a pod's nodeSelector asks for.
fn selected_type(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()?
        .node_selector
        .as_ref()?
        .get("karpenter.sh/capacity-type")
        .map(String::as_str)
}

/// Desired on-demand pods of a workload of `total` (the product's rule, written out again).
fn desired_on_demand(total: u32) -> u32 {
    let base = total.min(BASE);
    base + ((total - base) * (100 - SPOT_PERCENT)).div_ceil(100)
}

/// A pod CREATE review of a pod of ReplicaSet `<workload>-abc` (Deployment `<workload>`), asking
/// for the split by annotation (not for workload `plain`), sent to one replica.
async fn review(
    server: &Server,
    ca: &str,
    namespace: &str,
    uid: impl std::fmt::Display,
    workload: &str,
    dry_run: bool,
) -> Value {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": format!("{workload}-abc-"), "namespace": namespace,
            "labels": {"app": workload, "pod-template-hash": "abc"},
            "annotations": if workload == "plain" { json!({}) } else { json!({
                "nodewright.io/on-demand-base": BASE.to_string(),
                "nodewright.io/spot-percent": SPOT_PERCENT.to_string(),
            }) },
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{workload}-abc"),
                                 "uid": "00000000-0000-0000-0000-000000000001", "controller": true}]
        },
        "spec": {"containers": [{"name": "c", "image": "pause"}]}
    });
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("req-{uid}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod, "oldObject": null, "dryRun": dry_run
        }
    });
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    client
        .post(server.https_url("/mutate?timeout=10s"))
        .header("content-type", "application/json")
        .body(review.to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The capacity type a /mutate answer's patch chose, if any.
fn chosen_in(answer: &Value) -> Option<String> {
    let patch = answer["response"]["patch"].as_str()?;
    let patch: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(patch)
            .unwrap(),
    )
    .unwrap();
    patch.as_array()?.iter().find_map(|op| {
        let path = op["path"].as_str()?;
        if path == "/spec/nodeSelector/karpenter.sh~1capacity-type" {
            op["value"].as_str().map(str::to_owned)
        } else if path == "/spec/nodeSelector" {
            op["value"]["karpenter.sh/capacity-type"]
                .as_str()
                .map(str::to_owned)
        } else {
            None
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_scaled_1_10_4_20_keeps_its_base_and_share() {
    let cluster = Cluster::start(3).await;
    cluster.create_deployment("web", 1).await;
    let mut report = Vec::new();
    for replicas in [1u32, 10, 4, 20] {
        cluster
            .patch_deployment("web", json!({"spec": {"replicas": replicas}}))
            .await;
        let (on_demand, spot) = cluster.settled("web", replicas as usize).await;
        let error = i64::from(on_demand) - i64::from(desired_on_demand(replicas));
        report.push(format!(
            "{replicas} replicas: {on_demand} on-demand + {spot} spot (desired {} + {}; error {error:+})",
            desired_on_demand(replicas),
            replicas - desired_on_demand(replicas)
        ));
        assert!(error.abs() <= 1, "{}", report.join("\n"));
        assert!(
            on_demand >= BASE.min(replicas),
            "base not kept: {}",
            report.join("\n")
        );
    }
    // Every replica exports where the workload stands (its monitor reads the pod watch every 5 s).
    for replica in &cluster.replicas {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = reqwest::get(format!("{}/metrics", replica.ops))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let value = |ct: &str, kind: &str| {
                text.lines()
                    .find(|l| {
                        l.starts_with("nodewright_capacity_split_pods{")
                            && l.contains(&format!("capacity_type=\"{ct}\""))
                            && l.contains(&format!("kind=\"{kind}\""))
                            && l.contains(&format!("namespace=\"{}\"", cluster.namespace))
                            && l.contains("workload=\"Deployment/web\"")
                    })
                    .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            };
            let seen = [
                value("on-demand", "actual"),
                value("spot", "actual"),
                value("on-demand", "desired"),
                value("spot", "desired"),
            ];
            if seen == [Some(7.0), Some(13.0), Some(7.0), Some(13.0)] {
                break;
            }
            assert!(Instant::now() < deadline, "split gauges: {seen:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    eprintln!(
        "split of Deployment web (base {BASE}, {SPOT_PERCENT}% spot):\n{}",
        report.join("\n")
    );

    // A rollout (a new ReplicaSet) is the same workload: its pods keep the split across both.
    cluster
        .patch_deployment(
            "web",
            json!({"spec": {"template": {"metadata": {"labels": {"revision": "2"}}}}}),
        )
        .await;
    // Wait for the rollout's pods to stop changing (no pod becomes ready without nodes, so old
    // and new pods may stay side by side).
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = Vec::new();
    let mut unchanged = 0;
    let total = loop {
        let mut names: Vec<(String, bool)> = cluster
            .live_pods("web")
            .await
            .iter()
            .map(|p| {
                let new = p
                    .metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key("revision"));
                (p.metadata.name.clone().unwrap_or_default(), new)
            })
            .collect();
        names.sort();
        unchanged = if names == last { unchanged + 1 } else { 0 };
        if unchanged >= 3 && names.iter().any(|(_, new)| *new) {
            break names.len();
        }
        last = names;
        assert!(
            Instant::now() < deadline,
            "the rollout never settled: {last:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let (on_demand, spot) = cluster.settled("web", total).await;
    let error = i64::from(on_demand) - i64::from(desired_on_demand(total as u32));
    eprintln!("mid-rollout: {on_demand} on-demand + {spot} spot of {total} (error {error:+})");
    assert!(
        error.abs() <= 1,
        "mid-rollout: {on_demand} on-demand + {spot} spot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reviews_over_three_replicas_choose_exactly_and_dry_runs_never_count() {
    let cluster = Cluster::start(3).await;
    let before = cluster.ledger_entries().await;
    // 90 reviews at once, 30 to each replica directly, for one workload: the split of 90 exactly.
    let answers = futures::future::join_all((0..90).map(|i| {
        let server = &cluster.replicas[i % 3];
        review(
            server,
            &cluster.ca,
            &cluster.namespace,
            format!("c{i}"),
            "api",
            false,
        )
    }))
    .await;
    let on_demand = answers
        .iter()
        .filter(|a| chosen_in(a).as_deref() == Some("on-demand"))
        .count() as u32;
    let spot = answers
        .iter()
        .filter(|a| chosen_in(a).as_deref() == Some("spot"))
        .count() as u32;
    assert_eq!(on_demand + spot, 90, "every review got a capacity type");
    assert_eq!(
        on_demand,
        desired_on_demand(90),
        "{on_demand} on-demand + {spot} spot"
    );
    assert_eq!(cluster.ledger_entries().await, before + 90);
    // A retried review (same request uid) gets its first answer and is not counted again.
    let first = chosen_in(&answers[7]);
    let again = review(
        &cluster.replicas[1],
        &cluster.ca,
        &cluster.namespace,
        "c7",
        "api",
        false,
    )
    .await;
    assert_eq!(chosen_in(&again), first);
    // Dry runs are answered as the next pod would be, and never recorded or counted.
    let next = if on_demand < desired_on_demand(91) {
        "on-demand"
    } else {
        "spot"
    };
    for i in 0..10 {
        let dry = review(
            &cluster.replicas[i % 3],
            &cluster.ca,
            &cluster.namespace,
            &format!("d{i}"),
            "api",
            true,
        )
        .await;
        assert_eq!(chosen_in(&dry).as_deref(), Some(next));
    }
    assert_eq!(cluster.ledger_entries().await, before + 90);
    let real = review(
        &cluster.replicas[2],
        &cluster.ca,
        &cluster.namespace,
        "after",
        "api",
        false,
    )
    .await;
    assert_eq!(chosen_in(&real).as_deref(), Some(next));
}

/// What the split adds to a review's latency (one replica, sequential reviews, the API round trip
/// of the ledger write included): printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_added_by_the_split() {
    let cluster = Cluster::start(1).await;
    let server = &cluster.replicas[0];
    let mut report = Vec::new();
    for workload in ["plain", "timed", "plain", "timed"] {
        let mut times = Vec::new();
        for i in 0..100 {
            let started = Instant::now();
            let answer = review(
                server,
                &cluster.ca,
                &cluster.namespace,
                format!("{workload}-{i}-{}", report.len()),
                workload,
                false,
            )
            .await;
            times.push(started.elapsed().as_secs_f64() * 1e3);
            assert_eq!(answer["response"]["allowed"], true, "{answer}");
            assert_eq!(
                chosen_in(&answer).is_some(),
                workload == "timed",
                "{answer}"
            );
        }
        times.sort_by(f64::total_cmp);
        report.push(format!(
            "{workload}: p50 {:.2} ms, p99 {:.2} ms",
            times[49], times[98]
        ));
    }
    eprintln!(
        "/mutate latency, 100 sequential reviews each (client included):\n{}",
        report.join("\n")
    );
}

/// A workload left off its split (pods its ReplicaSet adopted pushed out its own on-demand pods)
/// is brought back by evicting its surplus pods one at a time when the Policy opts in; their
/// replacements are steered right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drifted_split_is_restored_by_evicting_its_surplus() {
    let _alone = RESTORING.lock().await;
    let cluster =
        Cluster::start_with(1, "  capacitySplitRestore: {enabled: true, interval: 2s}\n").await;
    cluster.create_deployment("web", 5).await;
    assert_eq!(
        cluster.settled("web", 5).await,
        (4, 1),
        "base 3, then 80 % spot"
    );
    let hash = cluster
        .pods()
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items[0]
        .metadata
        .labels
        .as_ref()
        .unwrap()["pod-template-hash"]
        .clone();
    // Four pods of the ReplicaSet's own labels that chose spot: it adopts them, has 9 pods, and
    // removes the 4 of lowest deletion cost, the last places of its split (3 of them on-demand).
    for i in 0..4 {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("adopted-{i}"), "labels": {"app": "web", "pod-template-hash": hash}},
            "spec": {"nodeSelector": {"karpenter.sh/capacity-type": "spot"},
                     "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}
        });
        cluster
            .pods()
            .create(
                &PostParams::default(),
                &serde_json::from_value(pod).unwrap(),
            )
            .await
            .unwrap();
    }
    // Then the leader evicts spot pods until the split is within one pod again.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    loop {
        let live = cluster.live_pods("web").await;
        let on_demand = live
            .iter()
            .filter(|p| selected_type(p) == Some("on-demand"))
            .count();
        let state = (live.len(), on_demand);
        if seen.last() != Some(&state) {
            seen.push(state);
        }
        let evicted = common::metric_sum(
            &cluster.replicas,
            "nodewright_capacity_split_evictions_total{outcome=\"evicted\"}",
        )
        .await;
        if live.len() == 5 && on_demand >= 3 && evicted >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not restored: (pods, on-demand) seen {seen:?}, evicted {evicted}; logs:\n{}",
            cluster.replicas[0].logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("restore: (pods, on-demand) over time {seen:?}");
    assert!(
        seen.iter().any(|&(n, od)| n == 5 && od <= 1),
        "the drift was never there to restore: {seen:?}"
    );
}

/// A split whose spot pods may fall back: with only an on-demand node, kube-scheduler puts its
/// spot pods there (they prefer spot, they do not require it); the monitor reports them, and
/// once a spot node with room appears, the leader evicts them one at a time and their
/// replacements, chosen for spot again, land on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_pods_fall_back_to_on_demand_and_move_back_when_spot_has_room() {
    let _alone = RESTORING.lock().await;
    let cluster =
        Cluster::start_with(1, "  capacitySplitRestore: {enabled: true, interval: 2s}\n").await;
    let plane = controlplane::shared();
    let (_scheduler, _) = plane
        .start_scheduler(
            &format!("scheduler-{}", cluster.namespace),
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n",
        )
        .await;
    let _kwok = plane.start_kwok(&format!("kwok-{}", cluster.namespace));
    // This test's nodes carry a taint only its pods tolerate: other tests' pods stay off them.
    let node = |ct: &str| {
        let name = format!("{}-{ct}", cluster.namespace);
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/hostname": name, "karpenter.sh/nodepool": "default",
                           "karpenter.sh/capacity-type": ct, "kubernetes.io/arch": "amd64",
                           "topology.kubernetes.io/zone": "us-east-1a"},
                "annotations": {"kwok.x-k8s.io/node": "fake"},
            },
            "spec": {"taints": [
                {"key": "nodewright.io/pool", "value": "default", "effect": "NoSchedule"},
                {"key": "nodewright-test", "value": cluster.namespace, "effect": "NoSchedule"}]},
            "status": {
                "allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110"},
                "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110"},
            },
        })
    };
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(cluster.client.clone());
    let on_demand_node = format!("{}-on-demand", cluster.namespace);
    let spot_node = format!("{}-spot", cluster.namespace);
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(node("on-demand")).unwrap(),
        )
        .await
        .unwrap();
    // One pod on on-demand, the rest spot, falling back.
    cluster
        .create_deployment_with(
            "web",
            4,
            json!({"nodewright.io/on-demand-base": "1", "nodewright.io/spot-percent": "100",
                   "nodewright.io/spot-fallback": "true"}),
            json!({
                "tolerations": [{"key": "nodewright-test", "operator": "Equal",
                                 "value": cluster.namespace, "effect": "NoSchedule"}],
                "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                                "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}}}]
            }),
        )
        .await;
    let fallback_series = format!(
        "nodewright_capacity_split_fallback_pods{{namespace=\"{}\",workload=\"Deployment/web\"}}",
        cluster.namespace
    );
    // (chosen type, node) of the live pods.
    let placements = || async {
        let mut out: Vec<(String, String)> = cluster
            .live_pods("web")
            .await
            .iter()
            .map(|p| {
                let chosen = p
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("nodewright.io/capacity-type"))
                    .cloned()
                    .unwrap_or_default();
                let node = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default();
                (chosen, node)
            })
            .collect();
        out.sort();
        out
    };
    type Done = Box<dyn Fn(&[(String, String)], f64) -> bool>;
    let wait = |what: &'static str, done: Done| {
        let placements = &placements;
        let cluster = &cluster;
        let fallback_series = &fallback_series;
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let now = placements().await;
                let fallback = common::metric_sum(&cluster.replicas, fallback_series).await;
                if done(&now, fallback) {
                    return now;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: placements {now:?}, fallback gauge {fallback}; logs:\n{}",
                    cluster.replicas[0].logs()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let od = on_demand_node.clone();
    let fell_back = wait(
        "spot pods on the on-demand node",
        Box::new(move |p, fallback| {
            p.len() == 4 && p.iter().all(|(_, n)| *n == od) && fallback == 3.0
        }),
    )
    .await;
    let chosen: Vec<&str> = fell_back.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(chosen, ["on-demand", "spot", "spot", "spot"]);
    // The spot pods say so in their spec: spot preferred, not required.
    let pod = cluster
        .pods()
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|p| p.metadata.annotations.as_ref().unwrap()["nodewright.io/capacity-type"] == "spot")
        .unwrap();
    let spec = serde_json::to_value(pod.spec.unwrap()).unwrap();
    assert!(
        spec["nodeSelector"]
            .get("karpenter.sh/capacity-type")
            .is_none(),
        "{spec}"
    );
    assert_eq!(
        spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["preference"]
            ["matchExpressions"][0]["values"],
        json!(["spot"])
    );
    let evicted_series = "nodewright_capacity_split_evictions_total{outcome=\"evicted\"}";
    let before = common::metric_sum(&cluster.replicas, evicted_series).await;
    // Spot comes back: the fallen-back pods move, the on-demand pod stays.
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(node("spot")).unwrap(),
        )
        .await
        .unwrap();
    let (od, spot) = (on_demand_node.clone(), spot_node.clone());
    let started = Instant::now();
    let back = wait(
        "spot pods back on the spot node",
        Box::new(move |p, fallback| {
            p.len() == 4
                && p.iter()
                    .all(|(c, n)| (c == "on-demand" && *n == od) || (c == "spot" && *n == spot))
                && fallback == 0.0
        }),
    )
    .await;
    let evicted = common::metric_sum(&cluster.replicas, evicted_series).await - before;
    let mut outcomes = Vec::new();
    for outcome in ["pdb_blocked", "not_found", "error"] {
        let series = format!("nodewright_capacity_split_evictions_total{{outcome=\"{outcome}\"}}");
        outcomes.push((
            outcome,
            common::metric_sum(&cluster.replicas, &series).await,
        ));
    }
    eprintln!(
        "fallback: {fell_back:?}; back on spot after {:.1} s by {evicted} evictions (others {outcomes:?}): {back:?}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        evicted,
        3.0,
        "one eviction per pod that fell back; others {outcomes:?}; logs:\n{}",
        cluster.replicas[0].logs()
    );
    // The leader said so on the Deployment.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reasons: Vec<String> = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web"))
            .filter_map(|e| e.reason)
            .collect();
        if ["CapacitySplitSpotFallback", "CapacitySplitBackOnSpot"]
            .iter()
            .all(|r| reasons.iter().any(|x| x == r))
        {
            break;
        }
        assert!(Instant::now() < deadline, "events: {reasons:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for name in [on_demand_node, spot_node] {
        let _ = nodes.delete(&name, &Default::default()).await;
    }
}
