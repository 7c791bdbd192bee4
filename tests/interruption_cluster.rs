//! Spot interruptions end to end on the real control plane (see `workshop_e2e.rs` for the
//! pieces), with moto serving both EC2 and the SQS interruption queue: a spot interruption
//! warning for a node's instance gets the node's pods new capacity on another offering first,
//! then drains the node and terminates its instance; malformed messages are counted and
//! deleted; every message leaves the queue once handled.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::aws::REGION;
use common::controlplane::{self, ControlPlane};
use common::served::{World, clear_nodes_and_claims, instance_state, nodeclaim_resource};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::core::DynamicObject;
use serde_json::{Value, json};

const CLUSTER: &str = "workshop";
const QUEUE: &str = "nodewright-interruption";

/// One test at a time on this binary's control plane.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config_text(namespace: &str) -> String {
    format!(
        r#"apiVersion: karpenter.sh/v1
kind: NodePool
metadata:
  name: spotty
spec:
  disruption: {{consolidationPolicy: WhenEmpty, consolidateAfter: Never}}
  template:
    spec:
      nodeClassRef: {{group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}}
      taints:
        - {{key: nodewright.io/pool, value: spotty, effect: NoSchedule}}
      requirements:
        - {{key: karpenter.sh/capacity-type, operator: In, values: [spot]}}
        - {{key: node.kubernetes.io/instance-type, operator: In, values: [c5.large, c5.xlarge]}}
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
    - {{name: app, nodePool: spotty, namespaces: [{namespace}]}}
  batching: {{idleDuration: 1s, maxDuration: 10s}}
  provisioning:
    clusterName: workshop
    clusterEndpoint: https://workshop.eks.example.com
  interruption:
    queue: {QUEUE}
"#
    )
}

fn deployment(replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "app"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "app"}},
            "template": {"metadata": {"labels": {"app": "app"}}, "spec": {
                "nodeSelector": {"karpenter.sh/nodepool": "spotty"},
                "tolerations": [{"key": "nodewright.io/pool", "operator": "Equal", "value": "spotty", "effect": "NoSchedule"}],
                "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                                "resources": {"requests": {"cpu": "200m", "memory": "64Mi"}}}],
            }},
        }
    }))
    .unwrap()
}

fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    use aws_sdk_sqs::config::retry::RetryConfig;
    use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .http_client(nodewright::cloud::ec2::http_client())
        .retry_config(RetryConfig::disabled())
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// The body EC2 sends through EventBridge two minutes before it reclaims a spot instance.
fn spot_warning(instance: &str) -> String {
    json!({
        "version": "0",
        "id": "1e5527d7-bb36-4607-3370-4164db56a40e",
        "detail-type": "EC2 Spot Instance Interruption Warning",
        "source": "aws.ec2",
        "account": "123456789012",
        "time": jiff::Timestamp::now().to_string(),
        "region": REGION,
        "resources": [format!("arn:aws:ec2:us-east-1b:instance/{instance}")],
        "detail": {"instance-id": instance, "instance-action": "terminate"}
    })
    .to_string()
}

async fn claims(world: &World) -> Vec<Value> {
    world.claims().await
}

async fn claim(world: &World, name: &str) -> Option<Value> {
    Api::<DynamicObject>::all_with(world.client.clone(), &nodeclaim_resource())
        .get_opt(name)
        .await
        .unwrap()
        .map(|o| serde_json::to_value(o).unwrap())
}

/// The app's pods as (node, running).
async fn pods(world: &World) -> Vec<(Option<String>, bool)> {
    Api::<Pod>::namespaced(world.client.clone(), &world.namespace)
        .list(&ListParams::default().labels("app=app"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            (
                p.spec.and_then(|s| s.node_name),
                p.status.and_then(|s| s.phase).as_deref() == Some("Running"),
            )
        })
        .collect()
}

async fn metrics(world: &World) -> String {
    match reqwest::get(format!("{}/metrics", world.server.ops)).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn queued(sqs: &aws_sdk_sqs::Client, url: &str) -> (u64, u64) {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    let get = |a: A| {
        out.attributes()
            .and_then(|m| m.get(&a))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        get(A::ApproximateNumberOfMessages),
        get(A::ApproximateNumberOfMessagesNotVisible),
    )
}

async fn start(plane: &'static ControlPlane) -> World {
    plane.ensure_nodeclaim_crd().await;
    let client = plane.client().await;
    clear_nodes_and_claims(&client).await;
    let install = plane.install_nodewright().await;
    let namespace = plane.namespace("interrupt").await;
    let text = config_text(&namespace);
    World::start(plane, &install, client, namespace, &text, CLUSTER).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_interruption_gets_new_capacity_then_drains_and_terminates_the_node() {
    let _serial = SERIAL.lock().await;
    let plane = controlplane::shared();
    let world = start(plane).await;
    let sqs = sqs_client(&world.moto.endpoint);
    let url = sqs
        .create_queue()
        .queue_name(QUEUE)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    Api::<Deployment>::namespaced(world.client.clone(), &world.namespace)
        .create(&PostParams::default(), &deployment(2))
        .await
        .unwrap();
    // One spot node with both pods running.
    world
        .wait_until(
            "2 pods running on a registered spot node",
            Duration::from_secs(120),
            || async {
                let registered: Vec<Value> = claims(&world)
                    .await
                    .into_iter()
                    .filter(|c| c["status"]["phase"] == "Registered")
                    .collect();
                let p = pods(&world).await;
                registered.len() == 1
                    && p.len() == 2
                    && p.iter().all(|(n, running)| {
                        *running && n.as_deref() == registered[0]["status"]["nodeName"].as_str()
                    })
            },
        )
        .await;
    let old = claims(&world)
        .await
        .into_iter()
        .find(|c| c["status"]["phase"] == "Registered")
        .unwrap();
    assert_eq!(old["status"]["capacityType"], "spot", "{old}");
    let name = old["metadata"]["name"].as_str().unwrap().to_owned();
    let instance = old["status"]["instanceID"].as_str().unwrap().to_owned();
    let old_node = old["status"]["nodeName"].as_str().unwrap().to_owned();
    let old_offering = (
        old["status"]["instanceType"].clone(),
        old["status"]["zone"].clone(),
    );

    // A malformed message first: counted and deleted, nothing else happens.
    sqs.send_message()
        .queue_url(&url)
        .message_body("{not json")
        .send()
        .await
        .unwrap();
    sqs.send_message()
        .queue_url(&url)
        .message_body(spot_warning(&instance))
        .send()
        .await
        .unwrap();
    let sent = Instant::now();

    // New capacity first: a replacement claim on another offering, while the node keeps its
    // pods and its instance.
    let deadline = Instant::now() + Duration::from_secs(60);
    let replacement = loop {
        assert!(
            Instant::now() < deadline,
            "no replacement registered\n{}",
            world.logs()
        );
        let c = claim(&world, &name)
            .await
            .expect("the interrupted claim is there until drained");
        let replacements: Vec<String> = c["status"]["replacements"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        if let Some(r) = replacements.first() {
            assert_eq!(c["status"]["disruptionReason"], "SpotInterrupted", "{c}");
            let rc = claim(&world, r).await;
            if rc
                .as_ref()
                .is_some_and(|rc| rc["status"]["phase"] == "Registered")
            {
                break r.clone();
            }
        }
        if c["status"]["phase"] != "Terminating" {
            assert_eq!(instance_state(&world.ec2, &instance).await, "running");
            let on_old = pods(&world)
                .await
                .iter()
                .filter(|(n, running)| *running && n.as_deref() == Some(old_node.as_str()))
                .count();
            assert_eq!(
                on_old, 2,
                "pods left the node before its replacement was up"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let new = claim(&world, &replacement).await.unwrap();
    let new_offering = (
        new["status"]["instanceType"].clone(),
        new["status"]["zone"].clone(),
    );
    assert_ne!(
        new_offering, old_offering,
        "the interrupted spot offering is left out for a while"
    );
    let new_node = new["status"]["nodeName"].as_str().unwrap().to_owned();
    // Then the drain and the instance.
    world
        .wait_until(
            "the interrupted claim gone",
            Duration::from_secs(60),
            || async { claim(&world, &name).await.is_none() },
        )
        .await;
    let drained = sent.elapsed();
    let state = instance_state(&world.ec2, &instance).await;
    assert!(
        matches!(state.as_str(), "shutting-down" | "terminated" | "gone"),
        "{state}"
    );
    world
        .wait_until(
            "both pods running on the replacement",
            Duration::from_secs(60),
            || async {
                let p = pods(&world).await;
                p.len() == 2
                    && p.iter()
                        .all(|(n, running)| *running && n.as_deref() == Some(new_node.as_str()))
            },
        )
        .await;
    eprintln!(
        "spot interruption message → node drained and instance terminated: {:.1} s",
        drained.as_secs_f64()
    );
    // Both messages left the queue; each counted by kind.
    world
        .wait_until("the queue empty", Duration::from_secs(30), || async {
            queued(&sqs, &url).await == (0, 0)
        })
        .await;
    let m = metrics(&world).await;
    assert_eq!(
        metric(
            &m,
            "nodewright_interruption_messages_total{kind=\"spot_interruption\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "nodewright_interruption_messages_total{kind=\"malformed\"}"
        ),
        1.0,
        "{m}"
    );
    let nodes: HashSet<String> = claims(&world)
        .await
        .iter()
        .filter_map(|c| c["status"]["nodeName"].as_str().map(str::to_owned))
        .collect();
    assert!(!nodes.contains(&old_node));
    let _ = Api::<Deployment>::namespaced(world.client.clone(), &world.namespace)
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    drop(world);
    clear_nodes_and_claims(&plane.client().await).await;
}
