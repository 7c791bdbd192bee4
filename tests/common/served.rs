//! One `nodewright serve` on the shared control plane with its peers: moto behind it (the
//! workshop's network), the kubelet stand-in on kwok, and the real kube-scheduler calling its
//! extender. The end-to-end tests of single provisioner features (DaemonSets, volumes) start it
//! with their own config and drive it through the API.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kube::api::ListParams;
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
        let bundle =
            nodewright::certs::generate(&nodewright::certs::local_names(), time::Duration::days(1))
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
        Api::<DynamicObject>::all_with(self.client.clone(), &nodeclaim_resource())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect()
    }
}

/// Remove the Nodes and NodeClaims earlier tests of this binary left, finalizers and all (the
/// nodewright that would have released them is gone with its test).
pub async fn clear_nodes_and_claims(client: &Client) {
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{DeleteParams, Patch, PatchParams};
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
