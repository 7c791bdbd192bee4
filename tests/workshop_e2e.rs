//! The workshop, replayed end to end on the real Kubernetes control plane:
//!
//! - kube-apiserver, etcd, kube-controller-manager and kube-scheduler: the real ones, built from
//!   the Go module proxy (tests/common/controlplane.rs); the apiserver calls nodewright's
//!   webhooks, the real ReplicaSet controller makes the 2048 pods, the real scheduler calls the
//!   extender (the stanza of webhook-config/kube-scheduler-config.yaml);
//! - EC2: a real `moto_server`, behind a fault-injecting proxy (tests/common/ec2proxy.rs);
//! - kubelet: the stand-in (tests/common/kubelet.rs) creates the Node of each running instance
//!   as the kubelet and the AWS cloud provider would (labels and taints from the user data), and
//!   kwok keeps those Nodes Ready and runs their pods: no real kubelet can join a moto instance;
//! - nodewright: the real `nodewright serve` binary under the ServiceAccount and RBAC the Helm
//!   chart renders, configured through KUBECONFIG and `AWS_ENDPOINT_URL_EC2` only.
//!
//! NodeClaims and Nodes are cluster-wide and each nodewright plans for every unschedulable pod, so
//! the tests of this file take turns on the shared control plane ([`SERIAL`]) and each starts
//! from a cluster without nodes, claims or pods of earlier tests.

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::Server;
use common::aws::{self, REGION};
use common::controlplane::{self, ExtenderSetup, Install, Process};
use common::ec2proxy::Ec2Proxy;
use common::kubelet::{KubeletConfig, Kubelets, ec2_client};
use common::moto::Moto;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject};
use kube::{Api, Client};
use serde_json::{Value, json};

const CLUSTER: &str = "workshop";

/// One test at a time on this binary's control plane.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The embedded workshop config with provisioning switched on for cluster `workshop`, its
/// `team-riker` namespace renamed `namespace`.
fn config_text(namespace: &str) -> String {
    config_with(namespace, "")
}

/// The same with more `spec.provisioning` fields (indented by four spaces).
fn config_with(namespace: &str, provisioning: &str) -> String {
    let mut text = include_str!("../examples/workshop.yaml").replace("team-riker", namespace);
    text.push_str(
        "  provisioning:\n    clusterName: workshop\n    clusterEndpoint: https://workshop.eks.example.com\n",
    );
    text.push_str(provisioning);
    text
}

fn nodeclaim_resource() -> ApiResource {
    ApiResource {
        group: "nodewright.io".into(),
        version: "v1alpha1".into(),
        api_version: "nodewright.io/v1alpha1".into(),
        kind: "NodeClaim".into(),
        plural: "nodeclaims".into(),
    }
}

struct World {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    _moto: Moto,
    proxy: Ec2Proxy,
    ec2: aws_sdk_ec2::Client,
    client: Client,
    install: Install,
    /// This test's application namespace (the workshop's `team-riker`).
    namespace: String,
    dir: tempfile::TempDir,
    ca: String,
    cert: PathBuf,
    key: PathBuf,
    config: PathBuf,
    servers: Vec<Server>,
    kubelets: Option<Kubelets>,
    scheduler: Option<Process>,
}

/// Remove what earlier tests of this binary left cluster-wide: their pods, Nodes and NodeClaims.
async fn clear_cluster(client: &Client) {
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    let pods: Api<Pod> = Api::all(client.clone());
    for pod in pods.list(&ListParams::default()).await.unwrap().items {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        if ns.starts_with("team-riker") {
            let _ = Api::<Pod>::namespaced(client.clone(), &ns)
                .delete(&pod.metadata.name.unwrap(), &now)
                .await;
        }
    }
    common::served::clear_nodes_and_claims(client).await;
}

impl World {
    async fn new() -> World {
        Self::with_config(config_text).await
    }

    async fn with_config(config_text: impl FnOnce(&str) -> String) -> World {
        let serial = SERIAL.lock().await;
        let plane = controlplane::shared();
        plane.ensure_nodeclaim_crd().await;
        let client = plane.client().await;
        clear_cluster(&client).await;
        let install = plane.install_nodewright().await;
        let namespace = plane.namespace("team-riker").await;

        let moto = Moto::start();
        let proxy = Ec2Proxy::start(&moto.endpoint).await;
        let ec2 = ec2_client(&moto.endpoint, REGION);
        aws::workshop_network(&ec2, CLUSTER).await;

        let dir = tempfile::tempdir().unwrap();
        let bundle = nodewright::tls::certs::generate(
            &nodewright::tls::certs::local_names(),
            time::Duration::days(1),
        )
        .unwrap();
        let (cert, key, config) = (
            dir.path().join("tls.crt"),
            dir.path().join("tls.key"),
            dir.path().join("config.yaml"),
        );
        std::fs::write(&cert, &bundle.cert_pem).unwrap();
        std::fs::write(&key, &bundle.key_pem).unwrap();
        std::fs::write(&config, config_text(&namespace)).unwrap();
        World {
            _serial: serial,
            _moto: moto,
            proxy,
            ec2,
            client,
            install,
            namespace,
            dir,
            ca: bundle.ca_pem,
            cert,
            key,
            config,
            servers: Vec::new(),
            kubelets: None,
            scheduler: None,
        }
    }

    /// Start one more `nodewright serve` replica.
    fn start_replica(&mut self) -> usize {
        let args = [
            "--config",
            self.config.to_str().unwrap(),
            "--tls-cert",
            self.cert.to_str().unwrap(),
            "--tls-key",
            self.key.to_str().unwrap(),
            "--namespace",
            &self.install.namespace,
        ];
        let identity = format!("replica-{}", self.servers.len());
        let env = [
            ("AWS_ENDPOINT_URL_EC2", self.proxy.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", REGION),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("POD_NAME", identity.as_str()),
        ];
        let _ = self.dir.path();
        self.servers.push(Server::start_with_env(
            &args,
            Some(&self.install.kubeconfig),
            &env,
        ));
        self.servers.len() - 1
    }

    async fn register_webhooks(&self, replica: usize) {
        let port = self.servers[replica]
            .https
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned();
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca);
        let rules = json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}]);
        for (kind, path, name) in [
            (
                "MutatingWebhookConfiguration",
                "mutate",
                "steer.nodewright.io",
            ),
            (
                "ValidatingWebhookConfiguration",
                "validate",
                "quota.nodewright.io",
            ),
        ] {
            let hook = json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": kind,
                "metadata": {"name": self.install.webhook_name},
                "webhooks": [{
                    "name": name,
                    "admissionReviewVersions": ["v1"],
                    "clientConfig": {"url": format!("https://127.0.0.1:{port}/{path}"), "caBundle": ca},
                    "rules": rules,
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.namespace}},
                    "sideEffects": "NoneOnDryRun",
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 10,
                }]
            });
            let plural = format!("{}s", kind.to_ascii_lowercase());
            let ar = ApiResource {
                group: "admissionregistration.k8s.io".into(),
                version: "v1".into(),
                api_version: "admissionregistration.k8s.io/v1".into(),
                kind: kind.into(),
                plural,
            };
            Api::<DynamicObject>::all_with(self.client.clone(), &ar)
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(hook).unwrap(),
                )
                .await
                .unwrap();
        }
    }

    /// The kubelet stand-in (with kwok running the Nodes it registers) and the real
    /// kube-scheduler, which calls `replica`'s extender.
    async fn start_peers(&mut self, replica: usize) {
        let plane = controlplane::shared();
        plane.kwok();
        let mut kubelet = KubeletConfig::new(CLUSTER);
        kubelet.kwok = true;
        self.kubelets = Some(Kubelets::start_with(
            self.client.clone(),
            self.ec2.clone(),
            kubelet,
        ));
        let (scheduler, _) = plane
            .start_extender_scheduler(
                &format!("kube-scheduler-{}", self.namespace),
                &ExtenderSetup {
                    https: &self.servers[replica].https,
                    ca_pem: &self.ca,
                    client: None,
                    node_cache_capable: true,
                },
            )
            .await;
        self.scheduler = Some(scheduler);
    }

    /// Names of this namespace's pods the real scheduler reported FailedScheduling for.
    async fn failed_scheduling(&self) -> BTreeSet<String> {
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("FailedScheduling"))
            .filter_map(|e| e.regarding.and_then(|r| r.name))
            .collect()
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn nodeclaims(&self) -> Vec<Value> {
        Api::<DynamicObject>::all_with(self.client.clone(), &nodeclaim_resource())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect()
    }

    async fn metrics(&self, replica: usize) -> String {
        reqwest::get(format!("{}/metrics", self.servers[replica].ops))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    fn logs(&self) -> String {
        let scheduler = self
            .scheduler
            .as_ref()
            .map(|s| format!("--- kube-scheduler ({})\n{}", s.log.display(), s.logs()))
            .unwrap_or_default();
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| format!("--- replica {i}\n{}", s.logs()))
            .chain([scheduler])
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn shutdown(self) {
        drop(self.scheduler);
        drop(self.kubelets);
        drop(self.servers);
        clear_cluster(&self.client).await;
    }
}

/// A pod of the 2048 Deployment's template, created on its own (no owner: the real garbage
/// collector would delete a pod whose owner does not exist). No scheduling fields at all.
fn pod_2048(i: usize) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("deployment-2048-7d9c8b6f4-{i:05}"),
            "labels": {"app.kubernetes.io/name": "app-2048", "pod-template-hash": "7d9c8b6f4"},
        },
        "spec": {"containers": [{
            "name": "app-2048",
            "image": "public.ecr.aws/l6m2t8p7/docker-2048:latest",
            "ports": [{"containerPort": 80}]
        }]}
    }))
    .unwrap()
}

/// The same pod as the steering webhook leaves it (for tests that run without webhooks).
fn steered_pod_2048(i: usize) -> Pod {
    let mut v = serde_json::to_value(pod_2048(i)).unwrap();
    v["spec"]["nodeSelector"] = json!({"karpenter.sh/nodepool": "default"});
    v["spec"]["tolerations"] = json!([{"key": "nodewright.io/pool", "operator": "Equal", "value": "default", "effect": "NoSchedule"}]);
    v["spec"]["topologySpreadConstraints"] = json!([{
        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "app-2048", "pod-template-hash": "7d9c8b6f4"}}
    }]);
    serde_json::from_value(v).unwrap()
}

async fn wait_until<F, Fut>(what: &str, within: Duration, world: &World, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}\n{}", world.logs());
}

/// pod → (node, zone) for the bound pods.
async fn placements(world: &World) -> BTreeMap<String, (String, String)> {
    let nodes: Api<Node> = Api::all(world.client.clone());
    let zones: BTreeMap<String, String> = nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|n| {
            let zone = n
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("topology.kubernetes.io/zone").cloned())
                .unwrap_or_default();
            (n.metadata.name.unwrap_or_default(), zone)
        })
        .collect();
    world
        .pods()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| {
            let node = p.spec.as_ref()?.node_name.clone()?;
            let zone = zones.get(&node).cloned().unwrap_or_default();
            Some((p.metadata.name.unwrap_or_default(), (node, zone)))
        })
        .collect()
}

fn metric(text: &str, series: &str) -> f64 {
    common::metric_value(text, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workshop_replay_three_pods_three_spot_nodes_three_zones_then_quota() {
    let mut world = World::new().await;
    let r = world.start_replica();
    world.register_webhooks(r).await;
    world.start_peers(r).await;
    let started = Instant::now();

    // The 2048 Deployment from the AWS Load Balancer Controller's manifest, as published (in
    // this test's namespace, at the workshop's 3 replicas): the real ReplicaSet makes the pods.
    let manifest = include_str!("data/fixtures/2048_full__aws-load-balancer-controller.yaml");
    let mut deployment: Value = serde_yaml::Deserializer::from_str(manifest)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|d: &Value| d["kind"] == "Deployment")
        .unwrap();
    deployment["metadata"]["namespace"] = json!(world.namespace);
    deployment["spec"]["replicas"] = json!(3);
    let deployments: Api<Deployment> = Api::namespaced(world.client.clone(), &world.namespace);
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(deployment).unwrap(),
        )
        .await
        .unwrap();

    wait_until("3 pods bound", Duration::from_secs(90), &world, || async {
        placements(&world).await.len() == 3
    })
    .await;
    let elapsed = started.elapsed();
    // The webhook steered them; their names and template hash are the ReplicaSet's own.
    for pod in world.pods().list(&ListParams::default()).await.unwrap() {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(
            spec.node_selector.as_ref().unwrap()["karpenter.sh/nodepool"],
            "default"
        );
        let hash = &pod.metadata.labels.as_ref().unwrap()["pod-template-hash"];
        assert!(
            pod.metadata
                .name
                .as_ref()
                .unwrap()
                .starts_with(&format!("deployment-2048-{hash}-")),
            "{:?}",
            pod.metadata.name
        );
    }

    // No node existed: the real scheduler reported each pod unschedulable first.
    let failed = world.failed_scheduling().await;
    assert!(failed.len() >= 3, "FailedScheduling for {failed:?}");

    // 3 spot instances, one per zone, launched in one batch, each with its claim.
    let instances = aws::cluster_instances(&world.ec2, CLUSTER).await;
    assert_eq!(instances.len(), 3, "{instances:?}");
    let zones: BTreeSet<&str> = instances.iter().map(|i| i.2.as_str()).collect();
    assert_eq!(zones.len(), 3, "one per zone: {instances:?}");
    assert!(instances.iter().all(|i| i.3 == "spot"), "{instances:?}");
    wait_until(
        "3 claims registered",
        Duration::from_secs(20),
        &world,
        || async {
            let claims = world.nodeclaims().await;
            claims.len() == 3 && claims.iter().all(|c| c["status"]["phase"] == "Registered")
        },
    )
    .await;
    let claims = world.nodeclaims().await;
    let claim_names: BTreeSet<&str> = claims
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap())
        .collect();
    for i in &instances {
        assert!(
            claim_names.contains(i.4.as_str()),
            "instance {i:?} has a claim tag"
        );
    }
    for c in &claims {
        assert_eq!(c["status"]["phase"], "Registered", "{c}");
        assert_eq!(c["spec"]["nodePool"], "default");
        assert_eq!(c["spec"]["pods"].as_array().unwrap().len(), 1);
    }
    assert_eq!(world.proxy.count("CreateFleet"), 3);

    // Each pod on its own zone's node; the nodes carry the pool's label and taint.
    let placed = placements(&world).await;
    let placed_zones: BTreeSet<&str> = placed.values().map(|(_, z)| z.as_str()).collect();
    assert_eq!(placed_zones.len(), 3, "{placed:?}");
    let nodes: Api<Node> = Api::all(world.client.clone());
    for (node, _) in placed.values() {
        let n = nodes.get(node).await.unwrap();
        let labels = n.metadata.labels.unwrap();
        assert_eq!(labels["karpenter.sh/nodepool"], "default");
        assert_eq!(labels["type"], "karpenter");
        let taints = n.spec.unwrap().taints.unwrap_or_default();
        assert!(
            taints
                .iter()
                .any(|t| t.key == "nodewright.io/pool" && t.effect == "NoSchedule"),
            "{taints:?}"
        );
    }

    // What `kubectl describe` shows: each pod nominated for its claim, each claim launched and
    // registered (events.k8s.io/v1, from nodewright's provisioner).
    let events_of = |namespace: &str| {
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(world.client.clone(), namespace)
    };
    wait_until(
        "events published",
        Duration::from_secs(10),
        &world,
        || async {
            let pod_events = events_of(&world.namespace)
                .list(&Default::default())
                .await
                .unwrap();
            let mut claim_events = events_of("default")
                .list(&Default::default())
                .await
                .unwrap();
            // Claims of earlier tests of this binary have their events in `default` too.
            claim_events.items.retain(|e| {
                e.regarding
                    .as_ref()
                    .and_then(|r| r.name.as_deref())
                    .is_some_and(|n| claim_names.contains(n))
            });
            let count = |list: &kube::api::ObjectList<k8s_openapi::api::events::v1::Event>,
                         reason: &str| {
                list.items
                    .iter()
                    .filter(|e| {
                        e.reason.as_deref() == Some(reason)
                            && e.reporting_controller.as_deref()
                                == Some("nodewright.io/provisioner")
                    })
                    .count()
            };
            count(&pod_events, "Nominated") == 3
                && count(&claim_events, "Launched") == 3
                && count(&claim_events, "Registered") == 3
        },
    )
    .await;
    for e in events_of(&world.namespace)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("nodewright.io/provisioner"))
    {
        let regarding = e.regarding.unwrap();
        assert_eq!(regarding.kind.as_deref(), Some("Pod"));
        assert!(
            e.note
                .unwrap()
                .starts_with("Pod should schedule on: nodeclaim/"),
            "note names the claim"
        );
    }

    let m = world.metrics(r).await;
    assert_eq!(metric(&m, "nodewright_batch_size_count"), 1.0, "one batch");
    let to_launch_sum = metric(&m, "nodewright_pod_unschedulable_to_launch_seconds_sum");
    let to_launch_count = metric(&m, "nodewright_pod_unschedulable_to_launch_seconds_count");
    let to_reg_sum = metric(&m, "nodewright_pod_unschedulable_to_registered_seconds_sum");
    let to_reg_count = metric(
        &m,
        "nodewright_pod_unschedulable_to_registered_seconds_count",
    );
    assert_eq!(to_launch_count, 3.0);
    assert_eq!(to_reg_count, 3.0);
    println!(
        "workshop replay: pods bound after {:.2} s; unschedulable→CreateFleet mean {:.2} s, unschedulable→registered mean {:.2} s",
        elapsed.as_secs_f64(),
        to_launch_sum / to_launch_count,
        to_reg_sum / to_reg_count
    );
    // The batch closes 1 s after the last pod (idle window); the launch follows within seconds
    // (a loose bound: CI runs these tests side by side on two cores).
    assert!(to_launch_sum / to_launch_count < 15.0);

    // Scale to 11: the ReplicaSet gets seven more pods admitted (10 in all); the 11th is
    // refused by the quota, which the ReplicaSet reports as its ReplicaFailure condition.
    deployments
        .patch(
            "deployment-2048",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 11}})),
        )
        .await
        .unwrap();
    let replica_sets: Api<ReplicaSet> = Api::namespaced(world.client.clone(), &world.namespace);
    let replica_failure = async || {
        let pods = world.pods().list(&ListParams::default()).await.unwrap();
        let rs = replica_sets.list(&ListParams::default()).await.unwrap();
        let message = rs
            .items
            .iter()
            .flat_map(|r| r.status.iter().flat_map(|s| s.conditions.iter().flatten()))
            .find(|c| c.type_.as_deref() == Some("ReplicaFailure"))
            .and_then(|c| c.message.clone());
        message.filter(|_| pods.items.len() == 10)
    };
    wait_until(
        "10 pods and the 11th refused",
        Duration::from_secs(30),
        &world,
        || async { replica_failure().await.is_some() },
    )
    .await;
    let failure = replica_failure().await.unwrap();
    assert!(failure.contains(&world.namespace), "{failure}");
    assert!(failure.contains("at most 10 pods"), "{failure}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        world
            .pods()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        10,
        "never more than the quota"
    );
    world.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_capacity_on_the_cheapest_spot_type_falls_back_in_the_same_batch() {
    let mut world = World::new().await;
    let r = world.start_replica();
    world.start_peers(r).await;
    // What the planner picks for the 2048 pods (tests/plan_cli.rs) has no spot capacity.
    world.proxy.out_of_capacity("c7a.medium", "spot");
    for i in 0..3 {
        world
            .pods()
            .create(&PostParams::default(), &steered_pod_2048(i))
            .await
            .unwrap();
    }
    wait_until("3 pods bound", Duration::from_secs(60), &world, || async {
        placements(&world).await.len() == 3
    })
    .await;
    let instances = aws::cluster_instances(&world.ec2, CLUSTER).await;
    assert_eq!(instances.len(), 3, "{instances:?}");
    assert!(
        instances.iter().all(|i| i.1 != "c7a.medium"),
        "no instance of the type without capacity: {instances:?}"
    );
    assert!(instances.iter().all(|i| i.3 == "spot"), "{instances:?}");
    let m = world.metrics(r).await;
    assert_eq!(metric(&m, "nodewright_batch_size_count"), 1.0, "one batch");
    for c in world.nodeclaims().await {
        assert_eq!(
            c["status"]["launchAttempts"], 1,
            "fallback within one launch: {c}"
        );
    }
    world.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_create_fleet_backs_off_without_a_storm() {
    let mut world = World::new().await;
    let r = world.start_replica();
    world.start_peers(r).await;
    world.proxy.throttle("CreateFleet", 4);
    for i in 0..3 {
        world
            .pods()
            .create(&PostParams::default(), &steered_pod_2048(i))
            .await
            .unwrap();
    }
    wait_until("3 pods bound", Duration::from_secs(90), &world, || async {
        placements(&world).await.len() == 3
    })
    .await;
    let fleets = world.proxy.requests("CreateFleet");
    // 3 launches + 4 throttled answers; a retry storm would show many more.
    assert!(
        fleets.len() <= 3 + 4 + 2,
        "{} CreateFleet calls",
        fleets.len()
    );
    assert_eq!(aws::cluster_instances(&world.ec2, CLUSTER).await.len(), 3);
    world.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_between_claim_and_launch_gives_exactly_one_instance_per_claim() {
    let mut world = World::new().await;
    let a = world.start_replica();
    let b = world.start_replica();
    // Which replica leads?
    let mut leader = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while leader.is_none() && Instant::now() < deadline {
        for i in [a, b] {
            if metric(&world.metrics(i).await, "nodewright_provisioner_leader") == 1.0 {
                leader = Some(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leader = leader.expect("a leader within 20 s");
    let follower = if leader == a { b } else { a };
    world.start_peers(follower).await;
    // CreateFleet fails (throttled) long enough for the leader to write its claims and be
    // killed before any launch gets through.
    world.proxy.throttle("CreateFleet", 1000);
    for i in 0..3 {
        world
            .pods()
            .create(&PostParams::default(), &steered_pod_2048(i))
            .await
            .unwrap();
    }
    wait_until(
        "3 claims written",
        Duration::from_secs(30),
        &world,
        || async { world.nodeclaims().await.len() == 3 },
    )
    .await;
    assert!(aws::cluster_instances(&world.ec2, CLUSTER).await.is_empty());
    let claims_before: BTreeSet<String> = world
        .nodeclaims()
        .await
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    world.servers[leader].child.kill().unwrap();
    world.proxy.throttle("CreateFleet", 0);

    wait_until(
        "3 pods bound after failover",
        Duration::from_secs(90),
        &world,
        || async { placements(&world).await.len() == 3 },
    )
    .await;
    let instances = aws::cluster_instances(&world.ec2, CLUSTER).await;
    assert_eq!(instances.len(), 3, "{instances:?}");
    let claims_after: BTreeSet<String> = world
        .nodeclaims()
        .await
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        claims_before, claims_after,
        "the new leader resumed the same claims"
    );
    let per_claim: BTreeSet<&str> = instances.iter().map(|i| i.4.as_str()).collect();
    assert_eq!(
        per_claim.len(),
        3,
        "exactly one instance per claim: {instances:?}"
    );
    assert_eq!(
        metric(
            &world.metrics(follower).await,
            "nodewright_provisioner_leader"
        ),
        1.0
    );
    world.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_nodes_time_out_and_unowned_instances_are_terminated() {
    let mut world = World::with_config(|namespace| {
        config_with(
            namespace,
            "    registrationTimeout: 4s\n    orphanGracePeriod: 1s\n",
        )
    })
    .await;
    // An instance nodewright launched for a NodeClaim that is gone (a leak from an earlier run),
    // and one of the cluster's nodes that nodewright did not launch (a managed node group's).
    let ami = aws::workshop_network_ami(&world.ec2)
        .await
        .expect("the workshop AMI");
    let launch = |tags: &[(&str, &str)]| {
        let mut spec = aws_sdk_ec2::types::TagSpecification::builder()
            .resource_type(aws_sdk_ec2::types::ResourceType::Instance);
        for (key, value) in tags {
            spec = spec.tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key(*key)
                    .value(*value)
                    .build(),
            );
        }
        world
            .ec2
            .run_instances()
            .image_id(&ami)
            .instance_type(aws_sdk_ec2::types::InstanceType::M5Large)
            .min_count(1)
            .max_count(1)
            .tag_specifications(spec.build())
            .send()
    };
    let id = |out: aws_sdk_ec2::operation::run_instances::RunInstancesOutput| {
        out.instances()[0].instance_id().unwrap().to_owned()
    };
    let orphan = id(launch(&[
        ("kubernetes.io/cluster/workshop", "owned"),
        ("nodewright.io/nodeclaim", "default-gone"),
    ])
    .await
    .unwrap());
    let foreign = id(launch(&[
        ("kubernetes.io/cluster/workshop", "owned"),
        ("eks:nodegroup-name", "system"),
    ])
    .await
    .unwrap());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = world.start_replica();
    world.start_peers(r).await;
    world.kubelets.as_ref().unwrap().set_paused(true);
    world
        .pods()
        .create(&PostParams::default(), &steered_pod_2048(0))
        .await
        .unwrap();
    // The orphan goes at the first scan.
    wait_until(
        "orphan terminated",
        Duration::from_secs(20),
        &world,
        || async {
            !aws::cluster_instances(&world.ec2, CLUSTER)
                .await
                .iter()
                .any(|i| i.0 == orphan)
        },
    )
    .await;
    wait_until(
        "a claim launched",
        Duration::from_secs(20),
        &world,
        || async {
            world
                .nodeclaims()
                .await
                .iter()
                .any(|c| c["status"]["phase"] == "Launched")
        },
    )
    .await;
    let first: Vec<_> = aws::cluster_instances(&world.ec2, CLUSTER)
        .await
        .into_iter()
        .filter(|i| i.0 != foreign)
        .collect();
    assert_eq!(first.len(), 1, "{first:?}");
    let first_claim = first[0].4.clone();
    // No Node registers: after 4 s the instance is terminated and its claim deleted; the pod is
    // planned again (a new claim).
    wait_until(
        "timed-out claim replaced",
        Duration::from_secs(30),
        &world,
        || async {
            let claims = world.nodeclaims().await;
            !claims.is_empty()
                && claims
                    .iter()
                    .all(|c| c["metadata"]["name"].as_str() != Some(first_claim.as_str()))
        },
    )
    .await;
    let now = aws::cluster_instances(&world.ec2, CLUSTER).await;
    assert!(
        now.iter().all(|i| i.0 != first[0].0),
        "the timed-out instance is gone: {now:?}"
    );
    let m = world.metrics(r).await;
    assert!(
        metric(
            &m,
            "nodewright_terminations_total{reason=\"registration_timeout\"}"
        ) >= 1.0
    );
    assert_eq!(
        metric(&m, "nodewright_terminations_total{reason=\"orphaned\"}"),
        1.0
    );
    assert!(
        aws::cluster_instances(&world.ec2, CLUSTER)
            .await
            .iter()
            .any(|i| i.0 == foreign),
        "an instance of the cluster without nodewright's claim tag is left alone"
    );
    // Once nodes register again, the pod runs.
    world.kubelets.as_ref().unwrap().set_paused(false);
    wait_until("pod bound", Duration::from_secs(40), &world, || async {
        placements(&world).await.len() == 1
    })
    .await;
    world.shutdown().await;
}
