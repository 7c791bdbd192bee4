//! Test harness shared by the integration tests: the real `nodewright serve` binary on ephemeral
//! ports, a plain-HTTP probe, and a polling helper.
#![allow(dead_code)] // each test binary uses its own part of the harness

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod aws;
pub mod controlplane;
pub mod ec2proxy;
pub mod failover;
pub mod kubelet;
pub mod moto;
pub mod served;
pub mod tcpproxy;

/// Re-check the async condition `$cond` every 100 ms until it holds; fail after 15 s naming `$what`
/// and showing the server's log.
#[macro_export]
macro_rules! eventually {
    ($server:expr, $what:expr, $cond:expr) => {{
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if $cond {
                break;
            }
            assert!(Instant::now() < deadline, "{}: {}", $what, $server.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }};
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Every log line is one JSON object with the same envelope: `timestamp` (RFC 3339, UTC),
/// `level`, `message`, `target`, then the event's own fields at the top level; an `error` field
/// is always text. Returns how many lines were checked.
pub fn assert_structured_logs(logs: &str) -> usize {
    let mut lines = 0;
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        let object = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        let timestamp = object["timestamp"].as_str().unwrap_or_default();
        assert!(
            timestamp.ends_with('Z') && timestamp.parse::<jiff::Timestamp>().is_ok(),
            "timestamp: {line}"
        );
        assert!(
            matches!(
                object["level"].as_str(),
                Some("TRACE" | "DEBUG" | "INFO" | "WARN" | "ERROR")
            ),
            "level: {line}"
        );
        assert!(object["message"].is_string(), "message: {line}");
        assert!(
            object["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("nodewright")),
            "target: {line}"
        );
        if let Some(error) = object.get("error") {
            assert!(error.is_string(), "error field: {line}");
        }
        lines += 1;
    }
    lines
}

/// A running `nodewright serve`, killed on drop.
pub struct Server {
    pub child: Child,
    pub https: String,
    pub ops: String,
    stderr: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    /// A self-signed server (`--ca-out`) with `args`, its CA (PEM), and the directory that holds
    /// the CA file (kept for as long as the server runs).
    pub fn self_signed(args: &[&str]) -> (Server, String, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let ca_out = dir.path().join("ca.crt");
        let mut all = vec!["--ca-out", ca_out.to_str().unwrap()];
        all.extend_from_slice(args);
        let server = Server::start(&all);
        let ca = std::fs::read_to_string(&ca_out).expect("CA written");
        (server, ca, dir)
    }

    /// Start with `args` after `serve`, on ephemeral ports, and wait until /readyz answers 200.
    pub fn start(args: &[&str]) -> Server {
        Self::start_with(args, None)
    }

    /// Like [`Server::start`], with `KUBECONFIG` set to `kubeconfig` (else no cluster: standalone).
    pub fn start_with(args: &[&str], kubeconfig: Option<&Path>) -> Server {
        Self::start_with_env(args, kubeconfig, &[])
    }

    /// Like [`Server::start_with`], with extra environment variables (AWS endpoint, region).
    pub fn start_with_env(
        args: &[&str],
        kubeconfig: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_nodewright"));
        command.envs(env.iter().copied());
        match kubeconfig {
            Some(path) => command.env("KUBECONFIG", path),
            None => command.env_remove("KUBECONFIG").env("HOME", "/nonexistent"),
        };
        let mut child = command
            .arg("serve")
            .args([
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--reload-poll-interval",
                "1s",
            ])
            .args(args)
            .env("NODEWRIGHT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nodewright");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<Value>(&line)
                        && v["message"] == "serving"
                    {
                        let _ = tx.send((
                            v["listen"].as_str().unwrap().to_owned(),
                            v["metrics_listen"].as_str().unwrap().to_owned(),
                        ));
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let (https, ops) = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!("server did not start: {:?}", lines.lock().unwrap());
            });
        let server = Server {
            child,
            https: format!("https://{https}"),
            ops: format!("http://{ops}"),
            stderr: lines,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if probe::get_status(&format!("{}/readyz", server.ops)) == Some(200) {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("never ready");
    }

    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn https_url(&self, path: &str) -> String {
        // The certificate is for localhost; connect by name.
        format!("{}{path}", self.https.replace("127.0.0.1", "localhost"))
    }

    /// The ops port's `/metrics` text as it is now.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.ops))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "did not exit in {within:?}: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tiny blocking plain-HTTP probe (reqwest's blocking client is not enabled).
pub mod probe {
    pub fn get_status(url: &str) -> Option<u16> {
        let url = url.strip_prefix("http://")?;
        let (host, path) = url.split_once('/').unwrap_or((url, ""));
        let mut stream = std::net::TcpStream::connect(host).ok()?;
        use std::io::{Read, Write};
        write!(
            stream,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut buf = String::new();
        stream.read_to_string(&mut buf).ok()?;
        buf.split_whitespace().nth(1)?.parse().ok()
    }
}

/// What `nodewright serve` reads from disk in the cluster tests: a serving certificate for
/// localhost (and its CA, for clients and caBundles) and the config, in a temporary directory.
pub struct ServeFiles {
    pub dir: tempfile::TempDir,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub config: std::path::PathBuf,
    pub ca_pem: String,
}

impl ServeFiles {
    pub fn write(config_text: &str) -> ServeFiles {
        let dir = tempfile::tempdir().unwrap();
        let bundle = nodewright::tls::certs::generate(
            &nodewright::tls::certs::local_names(),
            time::Duration::days(1),
        )
        .unwrap();
        let (cert, key, config) = (
            dir.path().join("tls.crt"),
            dir.path().join("tls.key"),
            dir.path().join("config.yaml"),
        );
        std::fs::write(&cert, &bundle.cert_pem).unwrap();
        std::fs::write(&key, &bundle.key_pem).unwrap();
        std::fs::write(&config, config_text).unwrap();
        ServeFiles {
            dir,
            cert,
            key,
            config,
            ca_pem: bundle.ca_pem,
        }
    }

    /// `--config`, `--tls-cert`, `--tls-key` and `--namespace <namespace>`.
    pub fn args<'a>(&'a self, namespace: &'a str) -> [&'a str; 8] {
        [
            "--config",
            self.config.to_str().unwrap(),
            "--tls-cert",
            self.cert.to_str().unwrap(),
            "--tls-key",
            self.key.to_str().unwrap(),
            "--namespace",
            namespace,
        ]
    }
}

/// A webhook configuration calling `url` for pod CREATEs in `namespace` only (the control plane
/// is shared by the tests of a binary): `kind` is `MutatingWebhookConfiguration` (with
/// `reinvocationPolicy: IfNeeded`) or `ValidatingWebhookConfiguration`.
pub fn pod_webhook(kind: &str, name: &str, url: &str, ca_pem: &str, namespace: &str) -> Value {
    use base64::Engine;
    let mutating = kind == "MutatingWebhookConfiguration";
    let mut hook = serde_json::json!({
        "name": if mutating { "mutate.nodewright.io" } else { "validate.nodewright.io" },
        "admissionReviewVersions": ["v1"],
        "clientConfig": {
            "url": url,
            "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
        },
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "sideEffects": "NoneOnDryRun",
        "failurePolicy": "Fail",
        "timeoutSeconds": 10,
    });
    if mutating {
        hook["reinvocationPolicy"] = "IfNeeded".into();
    }
    serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name},
        "webhooks": [hook],
    })
}

/// The sum of `series` over the servers' `/metrics` (0 for a server that does not answer).
pub async fn metric_sum(servers: &[Server], series: &str) -> f64 {
    let mut sum = 0.0;
    for s in servers {
        if let Ok(response) = reqwest::get(format!("{}/metrics", s.ops)).await {
            sum += metric_value(&response.text().await.unwrap_or_default(), series);
        }
    }
    sum
}
