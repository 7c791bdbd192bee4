//! One `nodewright serve` on the shared control plane with its peers: moto behind it (the
//! workshop's network), the kubelet stand-in on kwok, and the real kube-scheduler calling its
//! extender. The end-to-end tests of single provisioner features (DaemonSets, volumes) start it
//! with their own config and drive it through the API.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject};
use kube::{Api, Client};
use serde_json::Value;

use super::Server;
use super::aws::{self, REGION};
use super::controlplane::{ControlPlane, ExtenderSetup, Install, Process};
use super::kubelet::{KubeletConfig, Kubelets, ec2_client};
use super::moto::Moto;

/// nodewright's NodeClaim, for dynamic API calls.
pub fn nodeclaim_resource() -> ApiResource {
    ApiResource {
        group: "nodewright.io".into(),
        version: "v1alpha1".into(),
        api_version: "nodewright.io/v1alpha1".into(),
        kind: "NodeClaim".into(),
        plural: "nodeclaims".into(),
    }
}

pub struct World {
    pub server: Server,
    pub scheduler: Process,
    pub kubelets: Kubelets,
    pub moto: Moto,
    pub ec2: aws_sdk_ec2::Client,
    pub client: Client,
    pub namespace: String,
    _dir: tempfile::TempDir,
}

impl World {
    /// Starts moto, nodewright (release `install`, config `config_text`, cluster `cluster`),
    /// kwok, the kubelet stand-in and an extender-calling kube-scheduler.
    pub async fn start(
        plane: &ControlPlane,
        install: &Install,
        client: Client,
        namespace: String,
        config_text: &str,
        cluster: &str,
    ) -> World {
        let moto = Moto::start();
        let ec2 = ec2_client(&moto.endpoint, REGION);
        aws::workshop_network(&ec2, cluster).await;
        let dir = tempfile::tempdir().unwrap();
        let bundle = nodewright::tls::certs::generate(
            &nodewright::tls::certs::local_names(),
            time::Duration::days(1),
        )
        .unwrap();
        let (cert, key, config): (PathBuf, PathBuf, PathBuf) = (
            dir.path().join("tls.crt"),
            dir.path().join("tls.key"),
            dir.path().join("config.yaml"),
        );
        std::fs::write(&cert, &bundle.cert_pem).unwrap();
        std::fs::write(&key, &bundle.key_pem).unwrap();
        std::fs::write(&config, config_text).unwrap();
        let server = Server::start_with_env(
            &[
                "--config",
                config.to_str().unwrap(),
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
                "--namespace",
                &install.namespace,
            ],
            Some(&install.kubeconfig),
            &[
                ("AWS_ENDPOINT_URL_EC2", moto.endpoint.as_str()),
                ("AWS_ENDPOINT_URL_SQS", moto.endpoint.as_str()),
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_REGION", REGION),
                ("AWS_EC2_METADATA_DISABLED", "true"),
                ("POD_NAME", "replica-0"),
            ],
        );
        plane.kwok();
        let mut kubelet = KubeletConfig::new(cluster);
        kubelet.kwok = true;
        let kubelets = Kubelets::start_with(client.clone(), ec2.clone(), kubelet);
        let (scheduler, _) = plane
            .start_extender_scheduler(
                &format!("kube-scheduler-{namespace}"),
                &ExtenderSetup {
                    https: &server.https,
                    ca_pem: &bundle.ca_pem,
                    client: None,
                    node_cache_capable: true,
                },
            )
            .await;
        World {
            server,
            scheduler,
            kubelets,
            moto,
            ec2,
            client,
            namespace,
            _dir: dir,
        }
    }

    /// The config file nodewright serves with; it reloads it when it changes.
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("config.yaml")
    }

    pub fn logs(&self) -> String {
        format!(
            "--- nodewright\n{}\n--- kube-scheduler\n{}\n--- kubelet stand-in errors\n{:?}",
            self.server.logs(),
            self.scheduler.logs(),
            self.kubelets.errors()
        )
    }

    pub async fn wait_until<F, Fut>(&self, what: &str, within: Duration, mut cond: F)
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
        panic!("timed out waiting for {what}\n{}", self.logs());
    }

    /// The NodeClaims in the cluster, as JSON.
    pub async fn claims(&self) -> Vec<Value> {
        list_claims(&self.client).await
    }
}

/// Remove the Nodes and NodeClaims earlier tests of this binary left, finalizers and all (the
/// nodewright that would have released them is gone with its test).
pub async fn clear_nodes_and_claims(client: &Client) {
    let unfinalize = serde_json::json!({"metadata": {"finalizers": null}});
    let nodes: Api<Node> = Api::all(client.clone());
    for node in nodes.list(&ListParams::default()).await.unwrap().items {
        if node
            .metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| !f.is_empty())
        {
            let _ = nodes
                .patch(
                    node.metadata.name.as_deref().unwrap_or_default(),
                    &PatchParams::default(),
                    &Patch::Merge(&unfinalize),
                )
                .await;
        }
    }
    let _ = nodes
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    let claims: Api<DynamicObject> = Api::all_with(client.clone(), &nodeclaim_resource());
    if let Ok(list) = claims.list(&ListParams::default()).await {
        for claim in list.items {
            let _ = claims
                .patch(
                    claim.metadata.name.as_deref().unwrap_or_default(),
                    &PatchParams::default(),
                    &Patch::Merge(&unfinalize),
                )
                .await;
        }
    }
    let _ = claims
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
}

/// EC2's state of instance `id`: `pending`, `running`, `shutting-down`, `terminated`, or
/// `gone` when EC2 no longer knows it.
pub async fn instance_state(ec2: &aws_sdk_ec2::Client, id: &str) -> String {
    match ec2.describe_instances().instance_ids(id).send().await {
        Ok(out) => out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find_map(|i| {
                i.state()
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_owned())
            })
            .unwrap_or_else(|| "gone".into()),
        Err(e) => {
            let text = format!("{e:?}");
            if text.contains("NotFound") {
                "gone".into()
            } else {
                format!("error: {text}")
            }
        }
    }
}

pub fn ended(state: &str) -> bool {
    matches!(state, "shutting-down" | "terminated" | "gone")
}

/// The sum of the samples of `name` whose labels contain every one of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// What the disruption tests (empty nodes, drains, expiry, consolidation) share: one tainted
// on-demand pool, Deployments steered to it, and queries on its claims, nodes and pods.

/// One tainted on-demand pool `pool` of `types`, with `disruption` (YAML flow text) and extra
/// template spec lines `template_extra` (each starting with a newline and 6 spaces). The Policy
/// document comes last, so `spec` fields can be appended as lines indented by two spaces.
pub fn pool_config(
    namespace: &str,
    pool: &str,
    types: &str,
    disruption: &str,
    template_extra: &str,
) -> String {
    format!(
        r#"apiVersion: karpenter.sh/v1
kind: NodePool
metadata:
  name: {pool}
spec:
  disruption: {disruption}
  template:
    spec:
      nodeClassRef: {{group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}}{template_extra}
      taints:
        - {{key: nodewright.io/pool, value: {pool}, effect: NoSchedule}}
      requirements:
        - {{key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}}
        - {{key: node.kubernetes.io/instance-type, operator: In, values: [{types}]}}
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
    - {{name: app, nodePool: {pool}, namespaces: [{namespace}]}}
  batching: {{idleDuration: 1s, maxDuration: 10s}}
  provisioning:
    clusterName: workshop
    clusterEndpoint: https://workshop.eks.example.com
"#
    )
}

/// A pod spec as the steering webhook leaves it (the pool's selector and toleration), one
/// pause-like container requesting `cpu` and 64Mi, with extra spec fields.
pub fn pod_spec(pool: &str, cpu: &str, extra: Value) -> Value {
    let mut spec = serde_json::json!({
        "nodeSelector": {"karpenter.sh/nodepool": pool},
        "tolerations": [{"key": "nodewright.io/pool", "operator": "Equal", "value": pool, "effect": "NoSchedule"}],
        "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                        "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}],
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    spec
}

/// A Deployment of `replicas` pods labelled `app=<name>` (see [`pod_spec`]).
pub fn deployment(name: &str, replicas: i32, pool: &str, cpu: &str) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec(pool, cpu, serde_json::json!({}))},
        }
    }))
    .unwrap()
}

/// Start a world for one test: a clean cluster (what an earlier failed test of this binary left
/// in namespaces starting with `prefix` deleted too), its own namespace `<prefix>-…`, nodewright
/// with `config(namespace)`.
pub async fn start_clean(
    plane: &'static ControlPlane,
    prefix: &str,
    config: impl Fn(&str) -> String,
) -> World {
    plane.ensure_nodeclaim_crd().await;
    let client = plane.client().await;
    clear_nodes_and_claims(&client).await;
    let namespaces = Api::<Namespace>::all(client.clone());
    for ns in namespaces.list(&ListParams::default()).await.unwrap().items {
        let name = ns.metadata.name.unwrap_or_default();
        if name.starts_with(prefix) {
            let _ = Api::<Deployment>::namespaced(client.clone(), &name)
                .delete_collection(&DeleteParams::default(), &ListParams::default())
                .await;
            let _ = Api::<Pod>::namespaced(client.clone(), &name)
                .delete_collection(&DeleteParams::default(), &ListParams::default())
                .await;
        }
    }
    let install = plane.install_nodewright().await;
    let namespace = plane.namespace(prefix).await;
    let text = config(&namespace);
    World::start(plane, &install, client, namespace, &text, "workshop").await
}

/// Delete the test's Deployments and pods, stop nodewright, clear the cluster.
pub async fn finish(world: World, plane: &'static ControlPlane) {
    let _ = Api::<Deployment>::namespaced(world.client.clone(), &world.namespace)
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    let _ = Api::<Pod>::namespaced(world.client.clone(), &world.namespace)
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    drop(world);
    clear_nodes_and_claims(&plane.client().await).await;
}

impl World {
    pub async fn claim(&self, name: &str) -> Option<Value> {
        get_claim(&self.client, name).await
    }

    /// Claims whose node registered.
    pub async fn registered_claims(&self) -> Vec<Value> {
        registered_claims_of(&self.client).await
    }

    pub async fn node(&self, name: &str) -> Option<Node> {
        get_node(&self.client, name).await
    }

    /// The pods of this namespace labelled `app=<app>`, as (name, node, running, terminating).
    pub async fn pods_of(&self, app: &str) -> Vec<(String, Option<String>, bool, bool)> {
        Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|p| {
                (
                    p.metadata.name.clone().unwrap_or_default(),
                    p.spec.as_ref().and_then(|s| s.node_name.clone()),
                    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"),
                    p.metadata.deletion_timestamp.is_some(),
                )
            })
            .collect()
    }

    pub async fn scale(&self, deployment: &str, replicas: i32) {
        Api::<Deployment>::namespaced(self.client.clone(), &self.namespace)
            .patch(
                deployment,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}})),
            )
            .await
            .unwrap();
    }

    /// nodewright's /metrics text; empty if it does not answer.
    pub async fn metrics(&self) -> String {
        match reqwest::get(format!("{}/metrics", self.server.ops)).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits until `n` pods of `app` run, on nodes of registered claims; returns the claims.
    pub async fn wait_running(&self, app: &str, n: usize) -> Vec<Value> {
        self.wait_until(
            &format!("{n} pods of {app} running on registered nodes"),
            Duration::from_secs(120),
            || async {
                let pods = self.pods_of(app).await;
                let nodes: HashSet<String> = self
                    .registered_claims()
                    .await
                    .iter()
                    .map(claim_node)
                    .collect();
                pods.len() == n
                    && pods.iter().all(|(_, node, running, _)| {
                        *running && node.as_ref().is_some_and(|x| nodes.contains(x))
                    })
            },
        )
        .await;
        self.registered_claims().await
    }
}

pub fn claim_name(claim: &Value) -> String {
    claim["metadata"]["name"].as_str().unwrap().to_owned()
}

pub fn claim_node(claim: &Value) -> String {
    claim["status"]["nodeName"].as_str().unwrap().to_owned()
}

pub fn claim_instance(claim: &Value) -> String {
    claim["status"]["instanceID"].as_str().unwrap().to_owned()
}

pub fn deleting(claim: &Value) -> bool {
    claim["metadata"]["deletionTimestamp"].is_string()
}

/// Every NodeClaim, as JSON.
pub async fn list_claims(client: &Client) -> Vec<Value> {
    Api::<DynamicObject>::all_with(client.clone(), &nodeclaim_resource())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .collect()
}

pub async fn get_claim(client: &Client, name: &str) -> Option<Value> {
    Api::<DynamicObject>::all_with(client.clone(), &nodeclaim_resource())
        .get_opt(name)
        .await
        .unwrap()
        .map(|o| serde_json::to_value(o).unwrap())
}

/// Claims whose node registered.
pub async fn registered_claims_of(client: &Client) -> Vec<Value> {
    list_claims(client)
        .await
        .into_iter()
        .filter(|c| c["status"]["phase"] == "Registered" && c["status"]["nodeName"].is_string())
        .collect()
}

pub async fn get_node(client: &Client, name: &str) -> Option<Node> {
    Api::<Node>::all(client.clone())
        .get_opt(name)
        .await
        .unwrap()
}
