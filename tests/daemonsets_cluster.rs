//! DaemonSet overhead and startup taints end to end on the real control plane (see
//! `workshop_e2e.rs` for the pieces: the real apiserver, controller-manager and kube-scheduler
//! with nodewright's extender, moto for EC2, the kubelet stand-in with kwok for Nodes, and the
//! `nodewright serve` binary under the chart's RBAC).
//!
//! DaemonSets already in the cluster make every new node of a pool run their pods: nodewright
//! must launch a node big enough for the pending pods plus the DaemonSets whose pod would run
//! there, and only those. The pool also has a startup taint: the node registers with it, the
//! pods (which do not tolerate it) wait for it, a pod arriving meanwhile is planned onto that
//! node rather than a second one, nodewright does not remove the taint, and the pods bind once
//! it is removed (as the daemon owning it would).

mod common;

use std::time::Duration;

use common::aws;
use common::controlplane;
use common::served::World;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use nodewright::model::resources::parse_quantity_millis;
use serde_json::{Value, json};

const CLUSTER: &str = "workshop";
const STARTUP_TAINT: &str = "example.com/agent-not-ready";

/// One test at a time on this binary's control plane (Nodes and NodeClaims are cluster-wide).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One pool of four c5 sizes, on-demand only (prices grow with size, so the cheapest type that
/// holds a node's requests is the one launched), tainted, with a startup taint.
fn config_text(namespace: &str) -> String {
    format!(
        r#"apiVersion: karpenter.sh/v1
kind: NodePool
metadata:
  name: default
spec:
  template:
    spec:
      nodeClassRef: {{group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}}
      taints:
        - {{key: nodewright.io/pool, value: default, effect: NoSchedule}}
      startupTaints:
        - {{key: {STARTUP_TAINT}, effect: NoExecute}}
      requirements:
        - {{key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}}
        - {{key: node.kubernetes.io/instance-type, operator: In, values: [c5.large, c5.xlarge, c5.2xlarge, c5.4xlarge]}}
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
    - {{name: app, nodePool: default, namespaces: [{namespace}]}}
  batching: {{idleDuration: 1s, maxDuration: 10s}}
  provisioning:
    clusterName: workshop
    clusterEndpoint: https://workshop.eks.example.com
"#
    )
}

/// A DaemonSet of one container requesting `cpu` and `memory`, with extra template fields.
fn daemonset(namespace: &str, name: &str, cpu: &str, memory: &str, extra: Value) -> DaemonSet {
    let mut spec = json!({
        "containers": [{"name": "agent", "image": "registry.example.com/agent:1",
                        "resources": {"requests": {"cpu": cpu, "memory": memory}}}],
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        }
    }))
    .unwrap()
}

/// An application pod as the steering webhook leaves it: the pool's selector and toleration
/// (not the startup taint's); 1Gi and `cpu`.
fn app_pod(name: &str, cpu: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"karpenter.sh/nodepool": "default"},
            "tolerations": [{"key": "nodewright.io/pool", "operator": "Equal", "value": "default", "effect": "NoSchedule"}],
            "containers": [{"name": "app", "image": "registry.example.com/app:1",
                            "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}}}],
        }
    }))
    .unwrap()
}

/// What this test asks of the world beyond the shared harness.
trait Queries {
    async fn pod(&self, name: &str) -> Pod;
    async fn pods_on(&self, node: &str) -> Vec<String>;
}

impl Queries for World {
    async fn pod(&self, name: &str) -> Pod {
        Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .get(name)
            .await
            .unwrap()
    }

    /// The pods of this namespace bound to `node`, by name.
    async fn pods_on(&self, node: &str) -> Vec<String> {
        let mut names: Vec<String> = Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
            .filter_map(|p| p.metadata.name)
            .collect();
        names.sort();
        names
    }
}

/// Remove what an earlier test of this binary left cluster-wide: Nodes and NodeClaims.
async fn clear_cluster(client: &Client) {
    common::served::clear_nodes_and_claims(client).await;
}

fn taint_keys(node: &Node) -> Vec<String> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .map(|t| t.key.clone())
        .collect()
}

fn cpu_millis(node: &Node, field: &str) -> i64 {
    let status = node.status.as_ref().unwrap();
    let map = match field {
        "allocatable" => status.allocatable.as_ref(),
        _ => status.capacity.as_ref(),
    };
    parse_quantity_millis(&map.unwrap()["cpu"].0).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_nodes_hold_the_daemonsets_that_run_there_and_wait_out_startup_taints() {
    let _serial = SERIAL.lock().await;
    let plane = controlplane::shared();
    plane.ensure_nodeclaim_crd().await;
    let client = plane.client().await;
    clear_cluster(&client).await;
    let install = plane.install_nodewright().await;
    let namespace = plane.namespace("app").await;

    // The DaemonSets exist before nodewright starts, as in a cluster that already runs them.
    // - counted: tolerates the pool's taint and the startup taint (it is the daemon that removes
    //   it), 1 cpu / 1Gi;
    // - other-pool: selects another pool's nodes, 4 cpu;
    // - untolerated: does not tolerate the pool's taint, 4 cpu.
    // Either 4-cpu one, if counted, would push the node from c5.xlarge to c5.2xlarge.
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &namespace);
    for ds in [
        daemonset(
            &namespace,
            "counted",
            "1",
            "1Gi",
            json!({"tolerations": [
                {"key": "nodewright.io/pool", "operator": "Exists"},
                {"key": STARTUP_TAINT, "operator": "Exists"}]}),
        ),
        daemonset(
            &namespace,
            "other-pool",
            "4",
            "1Gi",
            json!({"nodeSelector": {"karpenter.sh/nodepool": "gpu"},
                   "tolerations": [{"operator": "Exists"}]}),
        ),
        daemonset(&namespace, "untolerated", "4", "1Gi", json!({})),
    ] {
        daemonsets
            .create(&PostParams::default(), &ds)
            .await
            .unwrap();
    }

    let world = World::start(
        plane,
        &install,
        client,
        namespace.clone(),
        &config_text(&namespace),
        CLUSTER,
    )
    .await;
    world
        .wait_until(
            "nodewright's DaemonSet watch",
            Duration::from_secs(30),
            || async { world.server.logs().contains("daemonset watch synced") },
        )
        .await;

    Api::<Pod>::namespaced(world.client.clone(), &world.namespace)
        .create(&PostParams::default(), &app_pod("app", "1"))
        .await
        .unwrap();
    world
        .wait_until("a node registered", Duration::from_secs(60), || async {
            !world.kubelets.registrations().is_empty()
        })
        .await;

    // One instance: c5.large (2 vCPU) holds the pod alone but not the pod and `counted`;
    // c5.xlarge holds both, and not the 4 cpu of either DaemonSet that does not run there.
    let instances = aws::cluster_instances(&world.ec2, CLUSTER).await;
    assert_eq!(instances.len(), 1, "{instances:?}\n{}", world.logs());
    assert_eq!(instances[0].1, "c5.xlarge", "{}", world.logs());
    let registration = world.kubelets.registrations()[0].clone();
    let nodes: Api<Node> = Api::all(world.client.clone());
    let node = nodes.get(&registration.node).await.unwrap();
    let allocatable = cpu_millis(&node, "allocatable");
    assert!(allocatable - 1000 >= 1000, "allocatable {allocatable}m");
    assert!(
        allocatable - 1000 - 4000 < 1000,
        "allocatable {allocatable}m"
    );
    let claims = world.claims().await;
    assert_eq!(claims.len(), 1, "{claims:?}");
    // The claim asks for the pod and `counted`: 2 cpu, 2Gi, 2 pods.
    let resources = &claims[0]["spec"]["resources"];
    assert_eq!(resources["cpu"], "2", "{resources}");
    assert_eq!(resources["memory"], "2Gi", "{resources}");
    assert_eq!(resources["pods"], "2", "{resources}");

    // Registered with the startup taint (from the user data), and nodewright leaves it there
    // once it has registered the node (its own unregistered taint gone).
    assert!(
        registration
            .user_data
            .contains(&format!("{STARTUP_TAINT}:NoExecute")),
        "{}",
        registration.user_data
    );
    world
        .wait_until("the claim registered", Duration::from_secs(30), || async {
            let claims = world.claims().await;
            claims.len() == 1 && claims[0]["status"]["phase"] == "Registered"
        })
        .await;
    // A second pod arrives while the node still has its startup taint. It fits beside the
    // first and `counted`: the planner reads the uninitialized node without its startup taint
    // and places it there, instead of launching a second node.
    Api::<Pod>::namespaced(world.client.clone(), &world.namespace)
        .create(&PostParams::default(), &app_pod("app-2", "500m"))
        .await
        .unwrap();
    world
        .wait_until("the second batch", Duration::from_secs(30), || async {
            world.server.logs().matches("batch planned").count() >= 2
        })
        .await;
    let logs = world.server.logs();
    let second = logs
        .lines()
        .filter(|l| l.contains("batch planned"))
        .nth(1)
        .unwrap();
    assert!(
        second.contains(r#""new_nodes":0"#) && second.contains(r#""existing":1"#),
        "{second}"
    );
    assert_eq!(world.claims().await.len(), 1, "{}", world.logs());
    assert_eq!(
        aws::cluster_instances(&world.ec2, CLUSTER).await.len(),
        1,
        "{}",
        world.logs()
    );
    // nodewright left the startup taint alone; the pods wait for it.
    let node = nodes.get(&registration.node).await.unwrap();
    // Registration labelled the Node with its type's karpenter.k8s.aws labels, as Karpenter does,
    // so pods selecting them bind where they were planned.
    let node_labels = node.metadata.labels.clone().unwrap_or_default();
    for (key, value) in [
        ("karpenter.k8s.aws/instance-family", "c5"),
        ("karpenter.k8s.aws/instance-category", "c"),
        ("karpenter.k8s.aws/instance-size", "xlarge"),
        ("karpenter.k8s.aws/instance-cpu", "4"),
        ("karpenter.k8s.aws/instance-memory", "8192"),
        ("karpenter.k8s.aws/instance-hypervisor", "nitro"),
    ] {
        assert_eq!(
            node_labels.get(key).map(String::as_str),
            Some(value),
            "{key} on the Node: {node_labels:?}"
        );
    }
    let keys = taint_keys(&node);
    assert!(keys.iter().any(|k| k == STARTUP_TAINT), "{keys:?}");
    assert!(
        !keys.iter().any(|k| k == "nodewright.io/unregistered"),
        "{keys:?}"
    );
    for name in ["app", "app-2"] {
        let pod = world.pod(name).await;
        assert!(
            pod.spec.as_ref().unwrap().node_name.is_none(),
            "{name} bound despite the startup taint"
        );
    }

    // The daemon removes its taint; the pod and `counted`'s pod share the node.
    let taints: Vec<Value> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.key != STARTUP_TAINT)
        .map(|t| serde_json::to_value(t).unwrap())
        .collect();
    nodes
        .patch(
            &registration.node,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": taints}})),
        )
        .await
        .unwrap();
    world
        .wait_until(
            "both pods and the counted DaemonSet's pod on the node",
            Duration::from_secs(60),
            || async {
                let on = world.pods_on(&registration.node).await;
                on.iter().any(|p| p == "app")
                    && on.iter().any(|p| p == "app-2")
                    && on.iter().any(|p| p.starts_with("counted-"))
            },
        )
        .await;
    let on = world.pods_on(&registration.node).await;
    assert!(
        !on.iter()
            .any(|p| p.starts_with("other-pool-") || p.starts_with("untolerated-")),
        "{on:?}"
    );
    assert_eq!(world.claims().await.len(), 1);
    drop(world);
    clear_cluster(&plane.client().await).await;
}
