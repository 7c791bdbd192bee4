//! nodewright's scheduler extender as the real kube-scheduler calls it, in both
//! `nodeCacheCapable` modes, with the stanza of `webhook-config/kube-scheduler-config.yaml`: on
//! kwok Nodes, pods that tolerate everything are never bound to a node nodewright is draining
//! (`karpenter.sh/disrupted`), which the in-tree plugins alone would allow (the draining node is
//! the emptiest, so they would prefer it); kube-scheduler calls filter and prioritize for every
//! pod; and with mTLS required, kube-scheduler's client certificate (from the stanza) gets it
//! through.
//!
//! Each test has its own scheduler name and node label, so the tests share the control plane
//! without seeing each other's pods or nodes.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::controlplane::{self, ExtenderSetup};
use common::{Server, metric_value};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;

struct Setup {
    client: kube::Client,
    namespace: String,
    server: Server,
    ca: String,
    _dir: tempfile::TempDir,
}

async fn setup(extra: &[&str]) -> Setup {
    let plane = controlplane::shared();
    plane.kwok();
    let client = plane.client().await;
    let install = plane.install_nodewright().await;
    let namespace = plane.namespace("extender").await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = nodewright::tls::certs::generate(
        &nodewright::tls::certs::local_names(),
        time::Duration::days(1),
    )
    .unwrap();
    nodewright::tls::certs::write_bundle(dir.path(), &bundle).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/steering.yaml"),
        &config,
    )
    .unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let mut args = vec![
        "--config",
        config.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--namespace",
        &install.namespace,
    ];
    args.extend_from_slice(extra);
    let server = Server::start_with(&args, Some(&install.kubeconfig));
    Setup {
        client,
        namespace,
        server,
        ca: bundle.ca_pem,
        _dir: dir,
    }
}

impl Setup {
    /// A kwok Node labelled for this test, optionally with the drain taint nodewright sets.
    async fn node(&self, name: &str, draining: bool) -> String {
        let name = format!("{}-{name}", self.namespace);
        let mut node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/hostname": name, "nodewright-test": self.namespace,
                           "topology.kubernetes.io/zone": "us-east-1a"},
                "annotations": {"kwok.x-k8s.io/node": "fake"},
            },
            "spec": {},
            "status": {
                "allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110"},
                "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110"},
            },
        });
        if draining {
            node["spec"]["taints"] =
                json!([{"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}]);
        }
        Api::<Node>::all(self.client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(node).unwrap(),
            )
            .await
            .unwrap();
        name
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// `n` pods for scheduler `scheduler`, tolerating every taint, selecting this test's nodes.
    async fn pods_for(&self, scheduler: &str, n: usize) {
        for i in 0..n {
            let pod = json!({
                "metadata": {"name": format!("web-{i}")},
                "spec": {
                    "schedulerName": scheduler,
                    "nodeSelector": {"nodewright-test": self.namespace},
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "app", "image": "nginx",
                        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}],
                },
            });
            self.pods()
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(pod).unwrap(),
                )
                .await
                .unwrap();
        }
    }

    /// pod → node, for the bound pods.
    async fn bound(&self) -> BTreeMap<String, String> {
        self.pods()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|p| Some((p.metadata.name?, p.spec?.node_name?)))
            .collect()
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.server.ops))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Wait until nodewright's node cache (from its watch) sees `node` as draining: its filter
    /// refuses it.
    async fn until_seen_draining(&self, node: &str, identity: Option<String>) {
        let mut builder = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca.as_bytes()).unwrap());
        if let Some(pem) = identity {
            builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        let client = builder.build().unwrap();
        let call = json!({
            "Pod": {"metadata": {"name": "probe", "namespace": self.namespace},
                    "spec": {"containers": [{"name": "c", "image": "x"}]}},
            "Nodes": null, "NodeNames": [node],
        });
        let server = &self.server;
        eventually!(server, "nodewright sees the draining node", {
            let answer: serde_json::Value = client
                .post(server.https_url("/scheduler/filter"))
                .json(&call)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            answer["FailedNodes"].get(node).is_some()
        });
    }
}

/// The scheduler profile: one name per test.
fn scheduler_config(name: &str) -> String {
    format!(
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nprofiles:\n  - schedulerName: {name}\n"
    )
}

/// A client certificate for kube-scheduler (PEM pair) and the args that make nodewright require
/// one from its CA on `/scheduler/*`, kept alive by the returned directory.
fn mutual_tls() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let ca = nodewright::tls::certs::generate_ca(time::Duration::days(1)).unwrap();
    let (cert, key) = nodewright::tls::certs::issue(
        &ca,
        nodewright::tls::certs::Leaf::Client("kube-scheduler"),
        time::Duration::days(1),
    )
    .unwrap();
    std::fs::write(dir.path().join("client-ca.crt"), &ca.cert_pem).unwrap();
    (dir, cert, key)
}

async fn never_on_a_draining_node(node_cache_capable: bool, mtls: bool) {
    let (client_dir, client_cert, client_key) = mutual_tls();
    let client_ca = client_dir.path().join("client-ca.crt");
    let extra: Vec<&str> = if mtls {
        vec!["--extender-client-ca", client_ca.to_str().unwrap()]
    } else {
        Vec::new()
    };
    let s = setup(&extra).await;
    let open = [s.node("open-a", false).await, s.node("open-b", false).await];
    let draining = s.node("draining", true).await;
    s.until_seen_draining(
        &draining,
        mtls.then(|| format!("{client_cert}{client_key}")),
    )
    .await;

    let plane = controlplane::shared();
    let scheduler_name = format!("scheduler-{}", s.namespace);
    let (scheduler, _port) = plane
        .start_extender_scheduler_with(
            &scheduler_name,
            &ExtenderSetup {
                https: &s.server.https,
                ca_pem: &s.ca,
                client: mtls.then_some((client_cert.as_str(), client_key.as_str())),
                node_cache_capable,
            },
            &scheduler_config(&scheduler_name),
        )
        .await;
    let pods = 6;
    s.pods_for(&scheduler_name, pods).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let bound = loop {
        let bound = s.bound().await;
        if bound.len() == pods {
            break bound;
        }
        assert!(
            Instant::now() < deadline,
            "bound {bound:?}\nkube-scheduler:\n{}\nnodewright:\n{}",
            scheduler.logs(),
            s.server.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        bound.values().all(|n| open.contains(n)),
        "a pod on the draining node: {bound:?}"
    );
    let m = s.metrics().await;
    let filters = metric_value(
        &m,
        r#"nodewright_extender_requests_total{outcome="ok",verb="filter"}"#,
    );
    let priorities = metric_value(
        &m,
        r#"nodewright_extender_requests_total{outcome="ok",verb="prioritize"}"#,
    );
    // The probe calls above are filters too. Two nodes pass the filter, so kube-scheduler asks
    // for priorities as well (it skips prioritize when one node is left).
    assert!(filters >= pods as f64, "{filters} filter calls\n{m}");
    assert!(
        priorities >= pods as f64,
        "{priorities} prioritize calls\n{m}"
    );
    println!(
        "nodeCacheCapable={node_cache_capable} mTLS={mtls}: {pods} pods bound, {filters} filter and {priorities} prioritize calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_names_mode_never_binds_to_a_draining_node() {
    never_on_a_draining_node(true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_nodes_mode_never_binds_to_a_draining_node() {
    never_on_a_draining_node(false, false).await;
}

/// nodewright requires a client certificate on `/scheduler/*` (`--extender-client-ca`); the real
/// kube-scheduler presents the one its stanza names (`tlsConfig.certFile`/`keyFile`) and gets
/// through: every call is answered, none refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_scheduler_with_its_client_certificate_gets_through_mutual_tls() {
    never_on_a_draining_node(true, true).await;
}
