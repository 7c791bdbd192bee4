//! The `kube-standin` binary, reached the way `nodewright serve` reaches a cluster:
//! KUBECONFIG and kube-rs's `Config::infer()`.

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, PostParams};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test]
async fn binary_with_kubeconfig_and_infer() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kube-standin"))
        .args(["--listen", "127.0.0.1:0", "--kubeconfig-out"])
        .arg(&kubeconfig)
        .args(["--control-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take(2)
            .collect::<Vec<_>>()
    });
    let lines = tokio::time::timeout(Duration::from_secs(20), lines)
        .await
        .unwrap()
        .unwrap();
    let url = lines
        .iter()
        .find_map(|l| l.strip_prefix("kube-standin listening on "))
        .expect("url line")
        .to_string();
    let control = lines
        .iter()
        .find_map(|l| l.strip_prefix("kube-standin control "))
        .expect("control line")
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"));
    assert!(std::fs::read_to_string(&kubeconfig).unwrap().contains(&url));

    // SAFETY: this test binary holds this one test, so no other thread reads the environment.
    unsafe { std::env::set_var("KUBECONFIG", &kubeconfig) };
    let result = tokio::time::timeout(Duration::from_secs(20), async {
        let config = kube::Config::infer().await.unwrap();
        assert_eq!(config.cluster_url.to_string().trim_end_matches('/'), url);
        let client = kube::Client::try_from(config).unwrap();
        let nss: Api<Namespace> = Api::all(client.clone());
        assert!(nss.list(&ListParams::default()).await.unwrap().items.len() >= 4);
        let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("hello".into());
        cms.create(&PostParams::default(), &cm).await.unwrap();
        assert_eq!(cms.get("hello").await.unwrap().metadata.namespace.as_deref(), Some("default"));
        // The control listener keeps answering while the API refuses connections.
        let addr = control.trim_start_matches("http://").to_string();
        let req = "POST /_standin/faults HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 29\r\nconnection: close\r\n\r\n{\"refuse_connections\": true }";
        let answer = raw_http(&addr, req).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(std::net::TcpStream::connect(url.trim_start_matches("http://")).is_err());
        let req = "POST /_standin/faults HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
        assert!(raw_http(&addr, req).await.starts_with("HTTP/1.1 200"));
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result.unwrap();
}

async fn raw_http(addr: &str, req: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
