//! The workshop, replayed end to end with real peers where they exist and wire-exact stand-ins
//! where they don't:
//!
//! - EC2: a real `moto_server`, behind a fault-injecting proxy (tests/common/ec2proxy.rs);
//! - kube-apiserver: the stand-in (tests/kube-standin), calling nodewright's webhooks;
//! - kube-scheduler: the stand-in (tests/common/scheduler.rs), calling nodewright's extender;
//! - kubelet: the stand-in (tests/common/kubelet.rs) registering a Node per running instance;
//! - nodewright: the real `nodewright serve` binary, configured through KUBECONFIG and
//!   `AWS_ENDPOINT_URL_EC2` only.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::Server;
use common::aws::{self, REGION};
use common::ec2proxy::Ec2Proxy;
use common::kubelet::{KubeletConfig, Kubelets, ec2_client};
use common::moto::Moto;
use common::scheduler::{ExtenderConfig, Scheduler};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, PostParams};
use kube::core::{ApiResource, DynamicObject};
use kube::{Api, Client};
use kube_standin::StandIn;
use serde_json::{Value, json};

const CLUSTER: &str = "workshop";
const NAMESPACE: &str = "team-riker";

/// The embedded workshop config with provisioning switched on for cluster `workshop`.
fn config_text() -> String {
    config_with("")
}

/// The same with more `spec.provisioning` fields (indented by four spaces).
fn config_with(provisioning: &str) -> String {
    let mut text = include_str!("../examples/workshop.yaml").to_owned();
    text.push_str(
        "  provisioning:\n    clusterName: workshop\n    clusterEndpoint: https://workshop.eks.example.com\n",
    );
    text.push_str(provisioning);
    text
}

struct World {
    _moto: Moto,
    proxy: Ec2Proxy,
    ec2: aws_sdk_ec2::Client,
    standin: kube_standin::Handle,
    client: Client,
    dir: tempfile::TempDir,
    ca: String,
    cert: PathBuf,
    key: PathBuf,
    config: PathBuf,
    kubeconfig: PathBuf,
    servers: Vec<Server>,
    kubelets: Option<Kubelets>,
    scheduler: Option<Scheduler>,
}

impl World {
    async fn new() -> World {
        Self::with_config(config_text()).await
    }

    async fn with_config(config_text: String) -> World {
        let moto = Moto::start();
        let proxy = Ec2Proxy::start(&moto.endpoint).await;
        let ec2 = ec2_client(&moto.endpoint, REGION);
        aws::workshop_network(&ec2, CLUSTER).await;

        let dir = tempfile::tempdir().unwrap();
        let standin = StandIn::start("127.0.0.1:0").await.unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        common::rbac::kubeconfig(&standin, &kubeconfig);
        let client = standin.client().await.unwrap();
        for name in ["nodewright", NAMESPACE] {
            let ns: Namespace =
                serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
            Api::<Namespace>::all(client.clone())
                .create(&PostParams::default(), &ns)
                .await
                .unwrap();
        }
        let crd: CustomResourceDefinition = serde_yaml::from_str(include_str!(
            "../webhook-config/crds/nodeclaims.nodewright.io.yaml"
        ))
        .unwrap();
        Api::<CustomResourceDefinition>::all(client.clone())
            .create(&PostParams::default(), &crd)
            .await
            .unwrap();

        let bundle =
            nodewright::certs::generate(&nodewright::certs::local_names(), time::Duration::days(1))
                .unwrap();
        let (cert, key, config) = (
            dir.path().join("tls.crt"),
            dir.path().join("tls.key"),
            dir.path().join("config.yaml"),
        );
        std::fs::write(&cert, &bundle.cert_pem).unwrap();
        std::fs::write(&key, &bundle.key_pem).unwrap();
        std::fs::write(&config, config_text).unwrap();
        World {
            _moto: moto,
            proxy,
            ec2,
            standin,
            client,
            dir,
            ca: bundle.ca_pem,
            cert,
            key,
            config,
            kubeconfig,
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
            "nodewright",
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
        self.servers
            .push(Server::start_with_env(&args, Some(&self.kubeconfig), &env));
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
                "metadata": {"name": "nodewright"},
                "webhooks": [{
                    "name": name,
                    "admissionReviewVersions": ["v1"],
                    "clientConfig": {"url": format!("https://localhost:{port}/{path}"), "caBundle": ca},
                    "rules": rules,
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

    /// The kubelet and kube-scheduler stand-ins; the scheduler calls `replica`'s extender.
    fn start_peers(&mut self, replica: usize) {
        let mut kubelet = KubeletConfig::new(CLUSTER);
        kubelet.run_pods = true;
        self.kubelets = Some(Kubelets::start_with(
            self.client.clone(),
            self.ec2.clone(),
            kubelet,
        ));
        let mut extender =
            ExtenderConfig::new(format!("{}/scheduler", self.servers[replica].https));
        extender.ca_pem = Some(self.ca.clone());
        self.scheduler = Some(Scheduler::start(self.client.clone(), Some(extender)));
    }

    fn scheduler(&self) -> &Scheduler {
        self.scheduler.as_ref().unwrap()
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    async fn nodeclaims(&self) -> Vec<Value> {
        let ar = ApiResource {
            group: "nodewright.io".into(),
            version: "v1alpha1".into(),
            api_version: "nodewright.io/v1alpha1".into(),
            kind: "NodeClaim".into(),
            plural: "nodeclaims".into(),
        };
        Api::<DynamicObject>::all_with(self.client.clone(), &ar)
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
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| format!("--- replica {i}\n{}", s.logs()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn shutdown(self) {
        drop(self.scheduler);
        drop(self.kubelets);
        drop(self.servers);
        common::rbac::record(&self.standin, "workshop_e2e");
        self.standin.shutdown().await;
    }
}

/// A pod of the 2048 Deployment as its ReplicaSet creates it: no scheduling fields at all.
fn pod_2048(i: usize) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("deployment-2048-7d9c8b6f4-{i:05}"),
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/name": "app-2048", "pod-template-hash": "7d9c8b6f4"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "deployment-2048-7d9c8b6f4", "uid": "6f1b5c4e-0000-4000-8000-000000002048",
                "controller": true, "blockOwnerDeletion": true}]
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
    panic!(
        "timed out waiting for {what}\nscheduler: {}\n{}",
        world
            .scheduler
            .as_ref()
            .map(|s| s.report())
            .unwrap_or_default(),
        world.logs()
    );
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
    world.start_peers(r);
    let started = Instant::now();

    for i in 0..3 {
        world
            .pods()
            .create(&PostParams::default(), &pod_2048(i))
            .await
            .unwrap();
    }
    // The webhook steered them.
    let created = world
        .pods()
        .get("deployment-2048-7d9c8b6f4-00000")
        .await
        .unwrap();
    let spec = created.spec.as_ref().unwrap();
    assert_eq!(
        spec.node_selector.as_ref().unwrap()["karpenter.sh/nodepool"],
        "default"
    );

    wait_until("3 pods bound", Duration::from_secs(60), &world, || async {
        placements(&world).await.len() == 3
    })
    .await;
    let elapsed = started.elapsed();

    // No node existed: the scheduler marked them Unschedulable without calling the extender.
    let marks = world.scheduler().unschedulable_marks();
    assert!(marks.len() >= 3, "{marks:?}");

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
            let pod_events = events_of(NAMESPACE)
                .list(&Default::default())
                .await
                .unwrap();
            let claim_events = events_of("default")
                .list(&Default::default())
                .await
                .unwrap();
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
    for e in events_of(NAMESPACE)
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

    // Scale to 11: seven more are admitted (10 in all), the 11th is refused by the quota.
    for i in 3..10 {
        world
            .pods()
            .create(&PostParams::default(), &pod_2048(i))
            .await
            .unwrap();
    }
    let denied = world
        .pods()
        .create(&PostParams::default(), &pod_2048(10))
        .await
        .expect_err("the 11th pod is over the quota");
    let message = denied.to_string();
    assert!(message.contains("team-riker"), "{message}");
    assert!(message.contains("10"), "{message}");
    world.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_capacity_on_the_cheapest_spot_type_falls_back_in_the_same_batch() {
    let mut world = World::new().await;
    let r = world.start_replica();
    world.start_peers(r);
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
    world.start_peers(r);
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
    world.start_peers(follower);
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
    let mut world = World::with_config(config_with(
        "    registrationTimeout: 4s\n    orphanGracePeriod: 1s\n",
    ))
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
    world.start_peers(r);
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
