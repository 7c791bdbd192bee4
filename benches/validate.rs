//! `/validate` latency with the Kubernetes API round trip, on loopback: the release `nodewright serve`
//! binary against the real kube-apiserver and etcd (tests/common/controlplane.rs, built by
//! scripts/k8s-binaries.sh), C concurrent clients each sending one AdmissionReview after another
//! for a few seconds, at C = 1, 16 and 64. Prints latency percentiles, throughput, and ledger writes per
//! admitted pod (batching should bring it well under 1 at high concurrency).
//!
//! Run: `cargo bench --bench validate` (BENCH_SECONDS=5 by default per level; 1 under `cargo test`).
//! Every request gets a fresh pod uid and no pod is ever created, so each level's ledger grows for the
//! whole run (no entry is older than the 90 s expiry): the writes get larger as the level goes on.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

#[path = "../tests/common/controlplane.rs"]
#[allow(dead_code)]
mod controlplane;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn review(namespace: &str, uid: &str) -> String {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace, "name": format!("p-{uid}"), "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": format!("p-{uid}"), "namespace": namespace, "uid": uid, "labels": {"app": "bench"}},
                       "spec": {"containers": [{"name": "c", "image": "nginx"}]}},
            "oldObject": null, "dryRun": false
        }
    })
    .to_string()
}

/// POST one AdmissionReview and decode the answer.
async fn post_review(client: &reqwest::Client, url: &str, body: String) -> Value {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    response.json().await.unwrap()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this without it, as a one-second
    // smoke test of the same path.
    let measuring = std::env::args().any(|a| a == "--bench");
    let default_seconds = if measuring { 5 } else { 1 };
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_seconds);
    let dir = tempfile::tempdir().unwrap();
    let plane = controlplane::shared();
    let kubeconfig = plane.admin_kubeconfig.clone();
    let client = plane.client().await;
    let namespaces: Api<Namespace> = Api::all(client);
    let levels = [1usize, 16, 64];
    for name in
        std::iter::once("nodewright".to_owned()).chain(levels.iter().map(|c| format!("bench-{c}")))
    {
        let ns: Namespace = serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"nodewright.io/max-pods": "100000000"}}}),
        )
        .unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }

    let ca = dir.path().join("ca.crt");
    let _server = Killed(
        Command::new(env!("CARGO_BIN_EXE_nodewright"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:18543",
                "--metrics-listen",
                "127.0.0.1:18180",
                "--namespace",
                "nodewright",
            ])
            .arg("--ca-out")
            .arg(&ca)
            .env("KUBECONFIG", &kubeconfig)
            .env("NODEWRIGHT_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nodewright"),
    );
    let metrics_url = "http://127.0.0.1:18180/metrics";
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get("http://127.0.0.1:18180/readyz")
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        assert!(Instant::now() < deadline, "nodewright not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .build()
        .unwrap();
    let url = "https://localhost:18543/validate?timeout=10s";
    // Wait for the pod watch's first list (the quota answers with an error until then).
    loop {
        let answer: Value = post_review(&client, url, review("bench-1", "warm-up")).await;
        if answer["response"]["allowed"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "quota never ready: {answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    println!(
        "/validate with the API round trip (loopback, the real kube-apiserver and etcd), {seconds} s per level, 2 cores shared by all"
    );
    println!(
        "{:>8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>16}",
        "clients", "req/s", "p50_ms", "p90_ms", "p99_ms", "max_ms", "writes/admitted"
    );
    for clients in levels {
        let namespace = format!("bench-{clients}");
        let before: String = reqwest::get(metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let started = Instant::now();
        let until = started + Duration::from_secs(seconds);
        let tasks = (0..clients).map(|c| {
            let client = client.clone();
            let namespace = namespace.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut allowed = 0u64;
                let mut i = 0u64;
                while Instant::now() < until {
                    let body = review(&namespace, &format!("c{c}-{i}"));
                    i += 1;
                    let t = Instant::now();
                    let answer: Value = post_review(&client, url, body).await;
                    latencies.push(t.elapsed());
                    allowed += u64::from(answer["response"]["allowed"] == true);
                }
                (latencies, allowed)
            })
        });
        let mut latencies = Vec::new();
        let mut allowed = 0;
        for t in futures::future::join_all(tasks).await {
            let (l, a) = t.unwrap();
            latencies.extend(l);
            allowed += a;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let after: String = reqwest::get(metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let writes = metric(&after, "nodewright_quota_ledger_writes_total")
            - metric(&before, "nodewright_quota_ledger_writes_total");
        latencies.sort();
        let pct = |p: f64| {
            latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)]
                .as_secs_f64()
                * 1000.0
        };
        assert_eq!(
            allowed as usize,
            latencies.len(),
            "every request fits the bench quota"
        );
        println!(
            "{:>8} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>16.3}",
            clients,
            latencies.len() as f64 / elapsed,
            pct(0.50),
            pct(0.90),
            pct(0.99),
            latencies.last().unwrap().as_secs_f64() * 1000.0,
            writes / allowed as f64
        );
    }
}
