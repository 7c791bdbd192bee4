//! The kubelet stand-in (`common::kubelet`), tested on its own so that it can fail: moto EC2
//! instances join the real control plane (tests/common/controlplane.rs) as the Nodes a kubelet
//! and the AWS cloud provider would register, leave when terminated, and (with kwok running the
//! Nodes) a pending pod is bound by the real kube-scheduler once its node joins and runs.
//!
//! Nodes are cluster-wide, so the tests of this file take turns ([`SERIAL`]) and remove the Nodes
//! they made.
//!
//! The kube-scheduler stand-in that used to be tested here is gone: the workshop replay and
//! tests/scheduler_extender.rs run the real kube-scheduler.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{
    InstanceType, Placement, RequestLaunchTemplateData, ResourceType, Tag, TagSpecification,
};
use base64::Engine;
use common::controlplane;
use common::kubelet::{KubeletConfig, Kubelets, ec2_client, parse_kubelet_flags};
use common::moto::Moto;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

/// One test at a time: Nodes are cluster-wide.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Cluster {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    client: kube::Client,
    namespace: String,
}

async fn cluster() -> Cluster {
    let serial = SERIAL.lock().await;
    let plane = controlplane::shared();
    let client = plane.client().await;
    common::served::clear_nodes_and_claims(&client).await;
    let namespace = plane.namespace("peers").await;
    Cluster {
        _serial: serial,
        client,
        namespace,
    }
}

impl Cluster {
    async fn pod(&self, name: &str, extra: Value) {
        let mut p = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "nginx",
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
        });
        json_patch::merge(&mut p, &extra);
        let p: Pod = serde_json::from_value(p).unwrap();
        self.pods()
            .create(&PostParams::default(), &p)
            .await
            .unwrap();
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn get_pod(&self, name: &str) -> Value {
        serde_json::to_value(self.pods().get(name).await.unwrap()).unwrap()
    }
}

/// A quantity in thousandths of its unit ("1930m" → 1930, "8Gi" → 8·2³⁰·1000).
fn parse_milli(q: &str) -> Option<i128> {
    nodewright::model::resources::parse_quantity_millis(q).map(i128::from)
}

fn condition(pod: &Value, ty: &str) -> Option<Value> {
    pod.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .cloned()
}

/// Poll `check` every 50 ms for up to `secs`.
async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The kubelet stand-in

const CLUSTER: &str = "workshop";

#[test]
fn kubelet_flags_from_user_data() {
    let text = "#!/bin/bash\n/etc/eks/bootstrap.sh workshop --kubelet-extra-args '--node-labels=karpenter.sh/nodepool=default,type=karpenter --register-with-taints=aws.amazon.com/neuron=true:NoSchedule,dedicated:NoExecute --max-pods=58'\n";
    let f = parse_kubelet_flags(text);
    assert_eq!(
        f.node_labels,
        BTreeMap::from([
            ("karpenter.sh/nodepool".to_string(), "default".to_string()),
            ("type".to_string(), "karpenter".to_string()),
        ])
    );
    assert_eq!(
        f.taints,
        vec![
            json!({"key": "aws.amazon.com/neuron", "value": "true", "effect": "NoSchedule"}),
            json!({"key": "dedicated", "effect": "NoExecute"}),
        ]
    );
    assert_eq!(f.max_pods, Some(58));
    let quoted = parse_kubelet_flags(
        r#"KUBELET_ARGS="--node-labels=a=b" "--register-with-taints=k=v:NoSchedule""#,
    );
    assert_eq!(quoted.node_labels["a"], "b");
    assert_eq!(quoted.taints.len(), 1);
    assert_eq!(parse_kubelet_flags("nothing here"), Default::default());
}

fn user_data(labels: &str, taints: &str) -> String {
    let script = format!(
        "#!/bin/bash\nset -ex\n/etc/eks/bootstrap.sh {CLUSTER} --kubelet-extra-args \"--node-labels={labels} --register-with-taints={taints}\"\n"
    );
    base64::engine::general_purpose::STANDARD.encode(script)
}

fn cluster_tags() -> TagSpecification {
    TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .tags(
            Tag::builder()
                .key(format!("kubernetes.io/cluster/{CLUSTER}"))
                .value("owned")
                .build(),
        )
        .build()
}

/// The Node's taints less the control plane's own: kube-apiserver's TaintNodesByCondition
/// admission adds `node.kubernetes.io/not-ready:NoSchedule` to every new Node, and the node
/// lifecycle controller removes it once the Node reports Ready.
fn registered_taints(node: &Value) -> Value {
    let taints = node["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Value::Array(
        taints
            .into_iter()
            .filter(|t| {
                !t["key"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("node.kubernetes.io/")
            })
            .collect(),
    )
}

async fn node_json(client: &kube::Client, name: &str) -> Option<Value> {
    Api::<Node>::all(client.clone())
        .get_opt(name)
        .await
        .unwrap()
        .map(|n| serde_json::to_value(n).unwrap())
}

#[tokio::test]
async fn instances_join_as_nodes_and_leave_when_terminated() {
    let moto = Moto::start();
    let ec2 = ec2_client(&moto.endpoint, "us-east-1");
    let c = cluster().await;
    let kubelets = Kubelets::start(c.client.clone(), ec2.clone(), CLUSTER);

    let run = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(InstanceType::M5Large)
        .min_count(1)
        .max_count(1)
        .placement(Placement::builder().availability_zone("us-east-1b").build())
        .user_data(user_data(
            "karpenter.sh/nodepool=default,type=karpenter",
            "aws.amazon.com/neuron=true:NoSchedule",
        ))
        .tag_specifications(cluster_tags())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", moto.logs()));
    let id = run.instances()[0].instance_id().unwrap().to_string();
    // Not ours: no cluster tag.
    let stranger = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap();
    let stranger = stranger.instances()[0].instance_id().unwrap().to_string();

    let name = kubelets
        .wait_registered(&id, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("not registered: {:?}", kubelets.errors()));
    assert!(
        name.starts_with("ip-") && name.ends_with(".ec2.internal"),
        "{name}"
    );
    let node = node_json(&c.client, &name).await.expect("Node created");
    assert_eq!(
        node["spec"]["providerID"],
        format!("aws:///us-east-1b/{id}")
    );
    let labels = &node["metadata"]["labels"];
    for (k, v) in [
        ("kubernetes.io/hostname", name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("node.kubernetes.io/instance-type", "m5.large"),
        ("topology.kubernetes.io/zone", "us-east-1b"),
        ("topology.kubernetes.io/region", "us-east-1"),
        ("karpenter.sh/nodepool", "default"),
        ("type", "karpenter"),
    ] {
        assert_eq!(labels[k], v, "label {k}: {labels}");
    }
    assert_eq!(
        registered_taints(&node),
        json!([{"key": "aws.amazon.com/neuron", "value": "true", "effect": "NoSchedule"}])
    );
    // m5.large: 2 vCPU, 8 GiB, 29 pods (ENI); allocatable by the EKS AMI formulas.
    let alloc = &node["status"]["allocatable"];
    assert_eq!(alloc["cpu"], "1930m");
    assert_eq!(alloc["pods"], "29");
    assert_eq!(node["status"]["capacity"]["cpu"], "2");
    let mem = parse_milli(alloc["memory"].as_str().unwrap()).unwrap() / 1000;
    let expected = (8192.0 * (1.0 - 0.075)) as i128 * (1 << 20) - (11 * 29 + 255 + 100) * (1 << 20);
    assert_eq!(mem, expected, "{alloc}");
    assert!(alloc["ephemeral-storage"].is_string());
    let ready = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "True");
    let regs = kubelets.registrations();
    assert_eq!(regs.len(), 1, "the untagged instance is not registered");
    assert_ne!(regs[0].instance_id, stranger);
    assert!(regs[0].user_data.contains("--node-labels="));

    // Terminated: the Node goes.
    ec2.terminate_instances()
        .instance_ids(&id)
        .send()
        .await
        .unwrap();
    eventually(10, "node deleted", || async {
        node_json(&c.client, &name).await.is_none()
    })
    .await;
    assert_eq!(kubelets.deletions(), vec![(id.clone(), name.clone())]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(kubelets.registrations().len(), 1, "never registered again");
}

#[tokio::test]
async fn launch_template_user_data_delay_and_pause() {
    let moto = Moto::start();
    let ec2 = ec2_client(&moto.endpoint, "us-east-1");
    let c = cluster().await;
    let mut config = KubeletConfig::new(CLUSTER);
    config.paused = true;
    let kubelets = Kubelets::start_with(c.client.clone(), ec2.clone(), config);

    let lt = ec2
        .create_launch_template()
        .launch_template_name("nodewright-default")
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id("ami-12c6146b")
                .instance_type(InstanceType::C6gLarge)
                .user_data(user_data(
                    "karpenter.sh/nodepool=arm",
                    "dedicated=arm:NoSchedule",
                ))
                .tag_specifications(
                    aws_sdk_ec2::types::LaunchTemplateTagSpecificationRequest::builder()
                        .resource_type(ResourceType::Instance)
                        .tags(
                            Tag::builder()
                                .key(format!("kubernetes.io/cluster/{CLUSTER}"))
                                .value("owned")
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", moto.logs()));
    let lt_id = lt
        .launch_template()
        .unwrap()
        .launch_template_id()
        .unwrap()
        .to_string();
    let run = ec2
        .run_instances()
        .launch_template(
            aws_sdk_ec2::types::LaunchTemplateSpecification::builder()
                .launch_template_id(&lt_id)
                .version("$Latest")
                .build(),
        )
        .min_count(1)
        .max_count(1)
        .placement(Placement::builder().availability_zone("us-east-1c").build())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", moto.logs()));
    let id = run.instances()[0].instance_id().unwrap().to_string();

    // Paused: nothing registers.
    assert!(
        kubelets
            .wait_registered(&id, Duration::from_millis(800))
            .await
            .is_none()
    );
    // Resumed with a delay: registers, but not before the delay.
    kubelets.set_registration_delay(Duration::from_secs(1));
    let resumed = Instant::now();
    kubelets.set_paused(false);
    let name = kubelets
        .wait_registered(&id, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("not registered: {:?}", kubelets.errors()));
    let reg = &kubelets.registrations()[0];
    assert!(reg.registered_at >= reg.seen_at + Duration::from_secs(1));
    assert!(reg.registered_at >= resumed, "not while paused");
    let node = node_json(&c.client, &name).await.unwrap();
    assert_eq!(
        node["metadata"]["labels"]["karpenter.sh/nodepool"], "arm",
        "{}",
        reg.user_data
    );
    assert_eq!(node["metadata"]["labels"]["kubernetes.io/arch"], "arm64");
    assert_eq!(
        registered_taints(&node),
        json!([{"key": "dedicated", "value": "arm", "effect": "NoSchedule"}])
    );

    // Unpaused, a new instance waits out the registration delay.
    let launched = Instant::now();
    let run = ec2
        .run_instances()
        .launch_template(
            aws_sdk_ec2::types::LaunchTemplateSpecification::builder()
                .launch_template_id(&lt_id)
                .build(),
        )
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap();
    let second = run.instances()[0].instance_id().unwrap().to_string();
    kubelets
        .wait_registered(&second, Duration::from_secs(10))
        .await
        .expect("second registered");
    assert!(
        launched.elapsed() >= Duration::from_secs(1),
        "{:?}",
        launched.elapsed()
    );
}

#[tokio::test]
async fn a_pending_pod_binds_once_its_node_joins() {
    let moto = Moto::start();
    let ec2 = ec2_client(&moto.endpoint, "us-east-1");
    let c = cluster().await;
    let plane = controlplane::shared();
    plane.kwok();
    let mut config = KubeletConfig::new(CLUSTER);
    config.kwok = true;
    let kubelets = Kubelets::start_with(c.client.clone(), ec2.clone(), config);
    // The real kube-scheduler, without an extender.
    let (scheduler, _) = plane
        .start_scheduler(
            &format!("kube-scheduler-{}", c.namespace),
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n",
        )
        .await;
    c.pod("web", json!({"spec": {
        "nodeSelector": {"type": "karpenter"},
        "tolerations": [{"key": "aws.amazon.com/neuron", "operator": "Exists", "effect": "NoSchedule"}],
    }}))
    .await;
    eventually(20, "unschedulable", || async {
        condition(&c.get_pod("web").await, "PodScheduled")
            .is_some_and(|cd| cd["reason"] == "Unschedulable")
    })
    .await;
    ec2.run_instances()
        .image_id("ami-12c6146b")
        .instance_type(InstanceType::M5Large)
        .min_count(1)
        .max_count(1)
        .placement(Placement::builder().availability_zone("us-east-1a").build())
        .user_data(user_data(
            "type=karpenter",
            "aws.amazon.com/neuron=true:NoSchedule",
        ))
        .tag_specifications(cluster_tags())
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let node = loop {
        let pod = c.get_pod("web").await;
        if let Some(node) = pod["spec"]["nodeName"].as_str() {
            break node.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "not bound: {pod}\nkubelet: {:?} {:?}\nkube-scheduler:\n{}",
            kubelets.registrations(),
            kubelets.errors(),
            scheduler.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(kubelets.registrations()[0].node, node);
    // kwok plays the kubelet for the Node the stand-in registered.
    eventually(20, "running", || async {
        c.get_pod("web").await["status"]["phase"] == "Running"
    })
    .await;
}
