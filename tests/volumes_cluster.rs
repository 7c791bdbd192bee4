//! Volume topology end to end on the real control plane (see `workshop_e2e.rs` for the pieces:
//! the real apiserver, controller-manager and kube-scheduler with nodewright's extender, moto for
//! EC2, the kubelet stand-in with kwok for Nodes, and the `nodewright serve` binary under the
//! chart's RBAC).
//!
//! Two EBS volumes, one in us-east-1b and one in us-east-1c, each bound by the real
//! PersistentVolume controller to its claim, and one small pod per claim: both pods would share
//! one node in the cheapest zone were their volumes ignored. nodewright must launch one node in
//! each volume's zone, with each claim offering that zone only, and each pod must be bound by the
//! real kube-scheduler (whose volume binding checks the volume's node affinity) to the node in
//! its volume's zone.

mod common;

use std::time::{Duration, Instant};

use common::aws;
use common::controlplane;
use common::served::World;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const CLUSTER: &str = "workshop";

/// One test at a time on this binary's control plane (Nodes, NodeClaims and PersistentVolumes
/// are cluster-wide).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One pool of c5 sizes, on-demand only, in every zone.
fn config_text() -> String {
    r#"apiVersion: karpenter.sh/v1
kind: NodePool
metadata:
  name: default
spec:
  template:
    spec:
      nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}
      requirements:
        - {key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}
        - {key: node.kubernetes.io/instance-type, operator: In, values: [c5.large, c5.xlarge, c5.2xlarge]}
---
apiVersion: karpenter.k8s.aws/v1
kind: EC2NodeClass
metadata:
  name: default
spec:
  amiSelectorTerms: [{alias: al2023@latest}]
  role: KarpenterNodeRole-workshop
  subnetSelectorTerms: [{tags: {karpenter.sh/discovery: workshop}}]
  securityGroupSelectorTerms: [{tags: {karpenter.sh/discovery: workshop}}]
---
apiVersion: nodewright.io/v1alpha1
kind: Policy
metadata:
  name: default
spec:
  nodeSelectorKey: karpenter.sh/nodepool
  batching: {idleDuration: 1s, maxDuration: 10s}
  provisioning:
    clusterName: workshop
    clusterEndpoint: https://workshop.eks.example.com
"#
    .to_owned()
}

/// An EBS volume in `zone` (the driver's own zone key, as the EBS CSI driver writes it), reserved
/// for the claim `namespace/claim`.
fn volume(name: &str, zone: &str, namespace: &str, claim: &str) -> PersistentVolume {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "persistentVolumeReclaimPolicy": "Retain",
            "claimRef": {"namespace": namespace, "name": claim},
            "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": format!("vol-{name}")},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "topology.kubernetes.io/zone", "operator": "In", "values": [zone]}]}]}}
        }
    }))
    .unwrap()
}

fn claim(name: &str, volume: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "volumeName": volume,
            "resources": {"requests": {"storage": "1Gi"}}
        }
    }))
    .unwrap()
}

/// A pod of 500m and 512Mi using the claim `claim`.
fn pod(name: &str, claim: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "app", "image": "registry.example.com/app:1",
                            "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
        }
    }))
    .unwrap()
}

/// What this test asks of the world beyond the shared harness.
trait Queries {
    async fn node_of(&self, pod: &str) -> Option<String>;
}

impl Queries for World {
    async fn node_of(&self, pod: &str) -> Option<String> {
        Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .get(pod)
            .await
            .unwrap()
            .spec
            .and_then(|s| s.node_name)
    }
}

/// Remove what an earlier test of this binary left cluster-wide.
async fn clear_cluster(client: &Client) {
    common::served::clear_nodes_and_claims(client).await;
    let _ = Api::<PersistentVolume>::all(client.clone())
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_nodes_in_their_volumes_zones() {
    let _serial = SERIAL.lock().await;
    let plane = controlplane::shared();
    plane.ensure_nodeclaim_crd().await;
    let client = plane.client().await;
    clear_cluster(&client).await;
    let install = plane.install_nodewright().await;
    let namespace = plane.namespace("app").await;

    // The volumes and their claims; the PersistentVolume controller binds each pair.
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    let pv_b = format!("{namespace}-b");
    let pv_c = format!("{namespace}-c");
    for (pv, zone, pvc) in [
        (&pv_b, "us-east-1b", "data-b"),
        (&pv_c, "us-east-1c", "data-c"),
    ] {
        volumes
            .create(&PostParams::default(), &volume(pv, zone, &namespace, pvc))
            .await
            .unwrap();
        claims
            .create(&PostParams::default(), &claim(pvc, pv))
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let bound = claims
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|c| {
                c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
                    && c.metadata
                        .annotations
                        .as_ref()
                        .is_some_and(|a| a.contains_key("pv.kubernetes.io/bind-completed"))
            })
            .count();
        if bound == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the PersistentVolume controller did not bind the claims"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let world = World::start(plane, &install, client, namespace, &config_text(), CLUSTER).await;
    world
        .wait_until(
            "nodewright's volume watches",
            Duration::from_secs(30),
            || async { world.server.logs().contains("volume watches synced") },
        )
        .await;

    let pods: Api<Pod> = Api::namespaced(world.client.clone(), &world.namespace);
    for (name, pvc) in [("app-b", "data-b"), ("app-c", "data-c")] {
        pods.create(&PostParams::default(), &pod(name, pvc))
            .await
            .unwrap();
    }
    world
        .wait_until("two nodes registered", Duration::from_secs(90), || async {
            world.kubelets.registrations().len() >= 2
        })
        .await;

    // One instance per volume zone; the two pods would have shared one node otherwise.
    let instances = aws::cluster_instances(&world.ec2, CLUSTER).await;
    let mut zones: Vec<&str> = instances.iter().map(|i| i.2.as_str()).collect();
    zones.sort();
    assert_eq!(zones, ["us-east-1b", "us-east-1c"], "{}", world.logs());
    // Each claim is for its pod and offers its volume's zone only.
    let claims = world.claims().await;
    assert_eq!(claims.len(), 2, "{claims:?}");
    for claim in &claims {
        let pods = claim["spec"]["pods"].as_array().unwrap();
        assert_eq!(pods.len(), 1, "{claim}");
        let want = if pods[0].as_str().unwrap().ends_with("/app-b") {
            "us-east-1b"
        } else {
            "us-east-1c"
        };
        let offerings = claim["spec"]["offerings"].as_array().unwrap();
        assert!(!offerings.is_empty(), "{claim}");
        for o in offerings {
            assert_eq!(o["zone"], want, "{claim}");
        }
    }
    // The real scheduler binds each pod to the node in its volume's zone.
    let registrations = world.kubelets.registrations();
    for (pod, zone) in [("app-b", "us-east-1b"), ("app-c", "us-east-1c")] {
        let node = registrations
            .iter()
            .find(|r| r.zone == zone)
            .unwrap()
            .node
            .clone();
        world
            .wait_until(
                &format!("{pod} bound to {node}"),
                Duration::from_secs(60),
                || async { world.node_of(pod).await.as_deref() == Some(node.as_str()) },
            )
            .await;
    }
    drop(world);
    clear_cluster(&plane.client().await).await;
}
