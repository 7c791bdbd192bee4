//! A real Prometheus server (Debian's `prometheus`, installed by scripts/setup-test-deps.sh)
//! scrapes a running `nodewright serve`, and PromQL over Prometheus's HTTP API sees the admission
//! counter move with the traffic sent, the target healthy and the build info exported.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[macro_use]
mod common;
use common::Server;

/// The Prometheus server, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    log: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrape `target` (host:port of nodewright's metrics port) every second.
    fn start(dir: &Path, target: &str) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: nodewright\n    metrics_path: /metrics\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect(
                "prometheus is installed (scripts/setup-test-deps.sh: Debian package prometheus)",
            );
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An instant PromQL query: the result vector, or None while Prometheus is not answering.
    async fn query(&self, promql: &str) -> Option<Vec<Value>> {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql)])
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        assert_eq!(body["status"], "success", "{promql}: {body}");
        body["data"]["result"].as_array().cloned()
    }

    /// The single value of a query, once there is one.
    async fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).await?;
        let first = result.first()?;
        first["value"][1].as_str()?.parse().ok()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_admission_counter_after_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    let server = Server::start(&["--ca-out", ca.to_str().unwrap()]);
    let target = server.ops.trim_start_matches("http://").to_owned();
    let prometheus = Prometheus::start(dir.path(), &target);

    // Traffic: 5 pods steered (team-riker), 2 reviews of an unsteered namespace.
    let review =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(
            "tests/data/fixtures/admissionreview_v1_pod_create_kubectl__kubewarden_kwctl.json",
        ))
        .unwrap();
    let steered = review.replace(
        "\"namespace\": \"default\"",
        "\"namespace\": \"team-riker\"",
    );
    assert_ne!(steered, review, "the fixture names its namespace");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .build()
        .unwrap();
    for body in std::iter::repeat_n(&steered, 5).chain(std::iter::repeat_n(&review, 2)) {
        let response = client
            .post(server.https_url("/mutate?timeout=10s"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    let query = r#"sum by (outcome) (nodewright_admission_requests_total{job="nodewright",endpoint="mutate"})"#;
    loop {
        let by_outcome = prometheus.query(query).await.unwrap_or_default();
        let outcome = |name: &str| {
            by_outcome
                .iter()
                .find(|s| s["metric"]["outcome"] == name)
                .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
        };
        if outcome("patched") == Some(5.0) && outcome("allowed") == Some(2.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw the admissions: {by_outcome:?}\nprometheus log:\n{}\nnodewright log:\n{}",
            prometheus.log(),
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The target is healthy, and every series carries the job's labels.
    assert_eq!(prometheus.value(r#"up{job="nodewright"}"#).await, Some(1.0));
    assert_eq!(
        prometheus
            .value(r#"nodewright_build_info{job="nodewright"}"#)
            .await,
        Some(1.0)
    );
    // Latency histograms are usable in PromQL: a quantile over the scraped buckets.
    let p99 = prometheus
        .value(r#"histogram_quantile(0.99, sum by (le) (nodewright_admission_request_duration_seconds_bucket{endpoint="mutate"}))"#)
        .await
        .expect("a p99 from the buckets");
    assert!(p99 > 0.0 && p99 <= 1.0, "p99 {p99}");
    assert!(common::assert_structured_logs(&server.logs()) >= 5);
}
