//! Drift end to end on the real control plane (see `workshop_e2e.rs` for the pieces): a change
//! of the NodePool's template, or a newer AMI behind the EC2NodeClass's alias, marks its nodes
//! Drifted, and they are replaced (new capacity first, then the drain) no faster than the pool's
//! budget for the reason `Drifted` allows.

mod common;

use std::time::{Duration, Instant};

use common::aws::{EKS_AMI_NAME, REGION, workshop_network_ami};
use common::controlplane::{self, ControlPlane};
use common::served::{World, clear_nodes_and_claims, metric_sum};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};

const CLUSTER: &str = "workshop";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config_text(namespace: &str, generation: &str) -> String {
    format!(
        r#"apiVersion: karpenter.sh/v1
kind: NodePool
metadata:
  name: drifting
spec:
  disruption:
    consolidationPolicy: WhenEmpty
    consolidateAfter: Never
    budgets:
      - {{nodes: "1", reasons: [Drifted]}}
  template:
    metadata:
      labels: {{generation: {generation}}}
    spec:
      nodeClassRef: {{group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}}
      taints:
        - {{key: nodewright.io/pool, value: drifting, effect: NoSchedule}}
      requirements:
        - {{key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}}
        - {{key: node.kubernetes.io/instance-type, operator: In, values: [c5.large]}}
---
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
    - {{name: app, nodePool: drifting, namespaces: [{namespace}]}}
  batching: {{idleDuration: 1s, maxDuration: 10s}}
  provisioning:
    clusterName: workshop
    clusterEndpoint: https://workshop.eks.example.com
    nodeClassResolveTtl: 2s
"#
    )
}

/// Three pods of 1200m: one per c5.large.
fn deployment() -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "app"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "app"}},
            "template": {"metadata": {"labels": {"app": "app"}}, "spec": {
                "nodeSelector": {"karpenter.sh/nodepool": "drifting"},
                "tolerations": [{"key": "nodewright.io/pool", "operator": "Equal", "value": "drifting", "effect": "NoSchedule"}],
                "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                                "resources": {"requests": {"cpu": "1200m", "memory": "64Mi"}}}],
            }},
        }
    }))
    .unwrap()
}

fn name(c: &Value) -> String {
    c["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Claims disrupting now: in the termination flow, or waiting for their replacements.
fn disrupting(c: &Value) -> bool {
    c["status"]["phase"] == "Terminating"
        || c["status"]["replacements"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
}

async fn running_pods(world: &World) -> Vec<String> {
    Api::<Pod>::namespaced(world.client.clone(), &world.namespace)
        .list(&ListParams::default().labels("app=app"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .filter_map(|p| p.spec?.node_name)
        .collect()
}

async fn start(plane: &'static ControlPlane) -> World {
    plane.ensure_nodeclaim_crd().await;
    let client = plane.client().await;
    clear_nodes_and_claims(&client).await;
    let install = plane.install_nodewright().await;
    let namespace = plane.namespace("drift").await;
    let text = config_text(&namespace, "one");
    World::start(plane, &install, client, namespace, &text, CLUSTER).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_template_replaces_drifted_nodes_one_budget_at_a_time() {
    let _serial = SERIAL.lock().await;
    let plane = controlplane::shared();
    let world = start(plane).await;
    Api::<Deployment>::namespaced(world.client.clone(), &world.namespace)
        .create(&PostParams::default(), &deployment())
        .await
        .unwrap();
    world
        .wait_until(
            "3 pods running on 3 registered nodes",
            Duration::from_secs(120),
            || async {
                let registered = world
                    .claims()
                    .await
                    .iter()
                    .filter(|c| c["status"]["phase"] == "Registered")
                    .count();
                registered == 3 && running_pods(&world).await.len() == 3
            },
        )
        .await;
    let first: Vec<String> = world.claims().await.iter().map(name).collect();

    // The template's labels change: every node has drifted.
    std::fs::write(world.config_path(), config_text(&world.namespace, "two")).unwrap();
    let changed = Instant::now();
    let mut most = 0;
    loop {
        assert!(
            changed.elapsed() < Duration::from_secs(180),
            "drifted nodes not all replaced\n{}",
            world.logs()
        );
        let claims = world.claims().await;
        let now = claims.iter().filter(|c| disrupting(c)).count();
        most = most.max(now);
        assert!(
            now <= 1,
            "{now} nodes disrupted at once with a Drifted budget of 1: {claims:?}"
        );
        let old_left = claims.iter().any(|c| first.contains(&name(c)));
        if !old_left && running_pods(&world).await.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "template changed → 3 drifted nodes replaced one at a time: {:.1} s",
        changed.elapsed().as_secs_f64()
    );
    assert_eq!(most, 1, "a drifted node was replaced\n{}", world.logs());
    // The new nodes carry the new label.
    let nodes: Vec<Node> = Api::<Node>::all(world.client.clone())
        .list(&ListParams::default().labels("karpenter.sh/nodepool=drifting"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    for n in &nodes {
        assert_eq!(
            n.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("generation"))
                .map(String::as_str),
            Some("two"),
            "{:?}",
            n.metadata.name
        );
    }
    let m = reqwest::get(format!("{}/metrics", world.server.ops))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let blocked = m
        .lines()
        .find(|l| {
            l.starts_with("nodewright_disruption_decisions_total{")
                && l.contains("reason=\"drifted\"")
                && l.contains("outcome=\"budget_blocked\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(blocked >= 1.0, "the budget held some back: {m}");
    let _ = Api::<Deployment>::namespaced(world.client.clone(), &world.namespace)
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    drop(world);
    clear_nodes_and_claims(&plane.client().await).await;
}

/// The claim's `Drifted` condition: (status, reason).
fn drifted(c: &Value) -> Option<(String, String)> {
    c["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|x| x["type"] == "Drifted")
        .map(|x| {
            (
                x["status"].as_str().unwrap_or_default().to_owned(),
                x["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

/// The AMI EC2 says the instance runs.
async fn instance_image(ec2: &aws_sdk_ec2::Client, id: &str) -> Option<String> {
    ec2.describe_instances()
        .instance_ids(id)
        .send()
        .await
        .ok()?
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find_map(|i| i.image_id().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drifted_ami_replaces_nodes_one_budget_at_a_time() {
    let _serial = SERIAL.lock().await;
    let plane = controlplane::shared();
    let world = start(plane).await;
    Api::<Deployment>::namespaced(world.client.clone(), &world.namespace)
        .create(&PostParams::default(), &deployment())
        .await
        .unwrap();
    world
        .wait_until(
            "3 pods running on 3 registered nodes",
            Duration::from_secs(120),
            || async {
                let registered = world
                    .claims()
                    .await
                    .iter()
                    .filter(|c| c["status"]["phase"] == "Registered")
                    .count();
                registered == 3 && running_pods(&world).await.len() == 3
            },
        )
        .await;
    let old_ami = workshop_network_ami(&world.ec2).await.unwrap();
    let claims = world.claims().await;
    let first: Vec<String> = claims.iter().map(name).collect();
    for c in &claims {
        assert_eq!(c["status"]["imageID"], old_ami.as_str(), "{c}");
        assert!(c["status"]["subnetID"].is_string(), "{c}");
        assert_eq!(
            c["status"]["securityGroupIDs"].as_array().map(Vec::len),
            Some(1),
            "{c}"
        );
    }
    // Nothing drifts while the AMI stays (a few resolve TTLs).
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        world.claims().await.iter().all(|c| drifted(c).is_none()),
        "{:?}",
        world.claims().await
    );

    // A newer EKS AMI is published: `al2023@latest` now selects it.
    let new_ami = world
        .ec2
        .copy_image()
        .name(EKS_AMI_NAME.replace("v20250101", "v20250201"))
        .source_image_id(&old_ami)
        .source_region(REGION)
        .send()
        .await
        .unwrap()
        .image_id
        .unwrap();
    let published = Instant::now();
    let mut most = 0;
    let mut seen_reasons = std::collections::BTreeSet::new();
    loop {
        assert!(
            published.elapsed() < Duration::from_secs(180),
            "drifted nodes not all replaced\n{}",
            world.logs()
        );
        let claims = world.claims().await;
        let now = claims.iter().filter(|c| disrupting(c)).count();
        most = most.max(now);
        assert!(
            now <= 1,
            "{now} nodes disrupted at once with a Drifted budget of 1: {claims:?}"
        );
        for c in claims.iter().filter(|c| first.contains(&name(c))) {
            if let Some((status, reason)) = drifted(c) {
                seen_reasons.insert(format!("{status}/{reason}"));
            }
            if disrupting(c) {
                assert_eq!(c["status"]["disruptionReason"], "Drifted", "{c}");
            }
        }
        let old_left = claims.iter().any(|c| first.contains(&name(c)));
        if !old_left && running_pods(&world).await.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "newer AMI published → 3 drifted nodes replaced one at a time: {:.1} s",
        published.elapsed().as_secs_f64()
    );
    assert_eq!(most, 1, "a drifted node was replaced\n{}", world.logs());
    assert_eq!(
        seen_reasons.into_iter().collect::<Vec<_>>(),
        ["True/AMIDrift"],
        "the old nodes drifted for their AMI"
    );
    let claims = world.claims().await;
    assert_eq!(claims.len(), 3, "{claims:?}");
    for c in &claims {
        assert_eq!(c["status"]["imageID"], new_ami.as_str(), "{c}");
        assert_ne!(drifted(c).map(|d| d.0).as_deref(), Some("True"), "{c}");
        let instance = c["status"]["instanceID"].as_str().unwrap();
        assert_eq!(
            instance_image(&world.ec2, instance).await.as_deref(),
            Some(new_ami.as_str()),
            "EC2 runs {instance} on the new AMI"
        );
    }
    let m = reqwest::get(format!("{}/metrics", world.server.ops))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let blocked = metric_sum(
        &m,
        "nodewright_disruption_decisions_total",
        &["reason=\"drifted\"", "outcome=\"budget_blocked\""],
    );
    assert!(blocked >= 1.0, "the budget held some back: {m}");
    let _ = Api::<Deployment>::namespaced(world.client.clone(), &world.namespace)
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    drop(world);
    clear_nodes_and_claims(&plane.client().await).await;
}
