//! Shared set-up for the stand-in's tests: a fresh stand-in and a real kube-rs client.
#![allow(dead_code)]

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use kube_standin::{Handle, StandIn};
use std::future::Future;
use std::time::Duration;

pub struct Env {
    pub standin: Handle,
    pub client: Client,
    pub dir: tempfile::TempDir,
}

/// A client built the way nodewright builds one: from a kubeconfig file.
pub async fn client_for(standin: &Handle, dir: &tempfile::TempDir) -> Client {
    let path = dir.path().join("kubeconfig");
    standin.kubeconfig(&path).expect("write kubeconfig");
    let kc = Kubeconfig::read_from(&path).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig accepted");
    Client::try_from(config).expect("client")
}

pub async fn env_with(builder: StandIn) -> Env {
    let standin = builder.serve("127.0.0.1:0").await.expect("start stand-in");
    let dir = tempfile::tempdir().expect("tempdir");
    let client = client_for(&standin, &dir).await;
    Env {
        standin,
        client,
        dir,
    }
}

pub async fn env() -> Env {
    env_with(StandIn::builder()).await
}

/// Run a test body with a time limit.
pub async fn bounded<F: Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test timed out");
}

/// Poll `check` until it holds or `secs` pass.
pub async fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn pod(
    name: &str,
    labels: &[(&str, &str)],
    node: Option<&str>,
) -> k8s_openapi::api::core::v1::Pod {
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    let mut spec = serde_json::json!({"containers": [{"name": "app", "image": "nginx"}]});
    if let Some(n) = node {
        spec["nodeName"] = serde_json::json!(n);
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }))
    .expect("pod")
}
