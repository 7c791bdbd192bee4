//! The real `nodewright serve` binary over TLS + HTTP/2: certificates from files (rotated the way the
//! kubelet updates a mounted Secret), self-signed mode, config reload, body limits, promtool, SIGTERM drain.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::Value;

#[macro_use]
mod common;
use common::{Server, metric_value, probe};

const REPLICASET_POD: &str = include_str!(
    "data/fixtures/admissionreview_v1_pod_create_replicaset__salesforce_generic-sidecar-injector.json"
);

/// A CA that can issue several serving certificates (a rotation keeps the CA).
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (chain PEM, key PEM, leaf DER)
    fn issue(&self, cn: &str) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    /// An intermediate CA signed by this one, and a leaf signed by the intermediate: (chain PEM leaf+intermediate, key PEM).
    fn issue_via_intermediate(&self) -> (String, String) {
        let mid_key = KeyPair::generate().unwrap();
        let mut mid = CertificateParams::new(Vec::<String>::new()).unwrap();
        mid.distinguished_name
            .push(DnType::CommonName, "intermediate");
        mid.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let mid_cert = mid.signed_by(&mid_key, &self.issuer).unwrap();
        let mid_issuer = Issuer::new(mid, mid_key);
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let leaf = params.signed_by(&key, &mid_issuer).unwrap();
        (
            format!("{}{}", leaf.pem(), mid_cert.pem()),
            key.serialize_pem(),
        )
    }
}

/// A directory laid out like a kubelet-mounted Secret: `tls.crt -> ..data/tls.crt`, `..data -> ..<version>`.
struct SecretDir {
    dir: tempfile::TempDir,
    version: usize,
}

impl SecretDir {
    fn new(cert: &str, key: &str) -> SecretDir {
        let mut s = SecretDir {
            dir: tempfile::tempdir().unwrap(),
            version: 0,
        };
        s.update(cert, key);
        std::os::unix::fs::symlink("..data/tls.crt", s.path("tls.crt")).unwrap();
        std::os::unix::fs::symlink("..data/tls.key", s.path("tls.key")).unwrap();
        s
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// What the kubelet's AtomicWriter does: write a new version directory, then rename a new symlink over `..data`.
    fn update(&mut self, cert: &str, key: &str) {
        self.version += 1;
        let version = format!(
            "..2026_11_25_00_00_0{}.{}",
            self.version,
            1000 + self.version
        );
        std::fs::create_dir(self.path(&version)).unwrap();
        std::fs::write(self.path(&version).join("tls.crt"), cert).unwrap();
        std::fs::write(self.path(&version).join("tls.key"), key).unwrap();
        let tmp = self.path("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.path("..data")).unwrap();
    }
}

fn client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .tls_info(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn mutate(
    client: &reqwest::Client,
    url: &str,
) -> (u16, reqwest::Version, Value, Option<Vec<u8>>) {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(REPLICASET_POD)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let version = response.version();
    let peer = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate().map(<[u8]>::to_vec));
    let body: Value = response.json().await.unwrap();
    (status, version, body, peer)
}

/// `nodewright_reloads_total{kind, result="failure"}` as the server reports it now.
async fn failed_reloads(server: &Server, kind: &str) -> f64 {
    let series = format!(r#"nodewright_reloads_total{{kind="{kind}",result="failure"}}"#);
    metric_value(&server.metrics().await, &series)
}

fn config_path() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/steering.yaml")
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_and_certificate_rotation_by_symlink_swap() {
    let ca = TestCa::new("rotation CA");
    let (cert1, key1, der1) = ca.issue("leaf-one");
    let mut secret = SecretDir::new(&cert1, &key1);
    let cert_path = secret.path("tls.crt").display().to_string();
    let key_path = secret.path("tls.key").display().to_string();
    let server = Server::start(&[
        "--config",
        &config_path(),
        "--tls-cert",
        &cert_path,
        "--tls-key",
        &key_path,
    ]);
    let url = server.https_url("/mutate?timeout=10s");

    let (status, version, body, peer) = mutate(&client(&ca.pem), &url).await;
    assert_eq!(status, 200);
    assert_eq!(version, reqwest::Version::HTTP_2, "ALPN must pick h2");
    assert_eq!(body["response"]["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(body["response"]["patch"].as_str().unwrap())
        .unwrap();
    assert!(serde_json::from_slice::<json_patch::Patch>(&patch).is_ok());
    assert_eq!(peer.as_deref(), Some(&der1[..]));

    // Requests keep flowing on one long-lived HTTP/2 connection while the Secret is rotated.
    let steady = client(&ca.pem);
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flow = {
        let (failures, done, url, stop) =
            (failures.clone(), done.clone(), url.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match steady
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(REPLICASET_POD)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => done.fetch_add(1, Ordering::SeqCst),
                    _ => failures.fetch_add(1, Ordering::SeqCst),
                };
            }
        })
    };

    let (cert2, key2, der2) = ca.issue("leaf-two");
    secret.update(&cert2, &key2);
    // A new client makes a new connection, hence a new handshake.
    eventually!(server, "rotated certificate never served", {
        let (status, _, _, peer) = mutate(&client(&ca.pem), &url).await;
        assert_eq!(status, 200);
        peer.as_deref() == Some(&der2[..])
    });

    // A broken update (key of another certificate) is refused; the good certificate stays.
    let (_, other_key, _) = ca.issue("leaf-three");
    secret.update(&cert2, &other_key);
    eventually!(
        server,
        "bad certificate not noticed",
        failed_reloads(&server, "certificate").await >= 1.0
    );
    let (status, _, _, peer) = mutate(&client(&ca.pem), &url).await;
    assert_eq!((status, peer.as_deref()), (200, Some(&der2[..])));

    // A chain (leaf + intermediate) is served whole, so clients trusting only the root verify it.
    let (chain, chain_key) = ca.issue_via_intermediate();
    secret.update(&chain, &chain_key);
    eventually!(server, "chain never served", {
        let (status, _, _, peer) = mutate(&client(&ca.pem), &url).await;
        assert_eq!(status, 200);
        peer.as_deref() != Some(&der2[..])
    });

    stop.store(true, Ordering::SeqCst);
    flow.await.unwrap();
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "requests failed during rotation"
    );
    assert!(
        done.load(Ordering::SeqCst) > 10,
        "requests flowed during rotation"
    );
    let text = server.metrics().await;
    assert!(
        metric_value(
            &text,
            r#"nodewright_reloads_total{kind="certificate",result="success"}"#
        ) >= 2.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_mode_writes_its_ca_and_serves_http1_too() {
    let (server, ca, _dir) = Server::self_signed(&[]);
    let (status, _, body, _) = mutate(&client(&ca), &server.https_url("/mutate")).await;
    assert_eq!(status, 200);
    assert_eq!(body["response"]["allowed"], true);
    let http1 = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .http1_only()
        .build()
        .unwrap();
    let response = http1
        .post(server.https_url("/mutate"))
        .header("content-type", "application/json")
        .body(REPLICASET_POD)
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_body_is_refused_early_and_service_continues() {
    let (server, ca, _dir) = Server::self_signed(&[]);
    let client = client(&ca);
    let started = Instant::now();
    let response = client
        .post(server.https_url("/mutate"))
        .header("content-type", "application/json")
        .body(vec![b' '; 32 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("limit"));
    assert!(started.elapsed() < Duration::from_secs(5));
    let (status, _, _, _) = mutate(&client, &server.https_url("/mutate")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    let (server, ca, _dir) = Server::self_signed(&[]);
    mutate(&client(&ca), &server.https_url("/mutate")).await;
    let text = server.metrics().await;
    assert!(text.contains("nodewright_admission_requests_total"));
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed: scripts/setup-test-deps.sh does it");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_keeps_last_good_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    let original = std::fs::read_to_string(config_path()).unwrap();
    std::fs::write(&config, &original).unwrap();
    let ca_out = dir.path().join("ca.crt");
    let server = Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--ca-out",
        ca_out.to_str().unwrap(),
    ]);
    let client = client(&std::fs::read_to_string(&ca_out).unwrap());
    let url = server.https_url("/mutate");
    let steered = |body: &Value| body["response"].get("patch").is_some();
    assert!(steered(&mutate(&client, &url).await.2));

    // A broken file: the error is logged and counted, and the old config keeps steering.
    std::fs::write(&config, original.replace("kind: Policy", "kind: Polcy")).unwrap();
    eventually!(
        server,
        "bad config not noticed",
        failed_reloads(&server, "config").await >= 1.0
    );
    assert!(
        server.logs().contains("keeping the last good config"),
        "{}",
        server.logs()
    );
    assert!(
        server.logs().contains("Polcy"),
        "the log names the problem: {}",
        server.logs()
    );
    assert_eq!(
        metric_value(
            &server.metrics().await,
            r#"nodewright_last_reload_successful{kind="config"}"#
        ),
        0.0
    );
    assert!(steered(&mutate(&client, &url).await.2));

    // A good file that no longer steers keymaker takes effect.
    std::fs::write(
        &config,
        original.replace(
            r#"namespaces: ["keymaker", "team-riker"]"#,
            r#"namespaces: ["team-riker"]"#,
        ),
    )
    .unwrap();
    eventually!(
        server,
        "good config not applied",
        !steered(&mutate(&client, &url).await.2)
    );
    assert_eq!(
        metric_value(
            &server.metrics().await,
            r#"nodewright_last_reload_successful{kind="config"}"#
        ),
        1.0
    );
}

#[test]
fn bad_config_stops_startup_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(config_path()).unwrap().replace(
        "effect: NoSchedule\n      startupTaints",
        "effect: NoSchedul\n      startupTaints",
    );
    std::fs::write(&config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nodewright"))
        .args([
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .env_remove("KUBECONFIG")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for part in [
        "bad.yaml",
        "document 1",
        "line 19",
        "taints[0].effect",
        "NoSchedul",
    ] {
        assert!(stderr.contains(part), "{part:?} missing from: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let (mut server, ca, _dir) = Server::self_signed(&["--config", &config_path()]);
    let client = client(&ca);
    // A request whose body is still arriving when SIGTERM comes.
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let (first, rest) = REPLICASET_POD.split_at(100);
    let (first, rest) = (first.to_owned(), rest.to_owned());
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(
        futures::stream::once(async move {
            let _ = release_rx.await;
            Ok(rest)
        }),
    );
    use futures::StreamExt;
    let in_flight = {
        let url = server.https_url("/mutate");
        let client = client.clone();
        tokio::spawn(async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        probe::get_status(&format!("{}/readyz", server.ops)).unwrap_or(503),
        503,
        "not ready while draining"
    );
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "must wait for the in-flight request"
    );
    release_tx.send(()).unwrap();
    let response = in_flight
        .await
        .unwrap()
        .expect("in-flight request completes");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["response"]["patch"].is_string());
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(
        status.success(),
        "exit status {status:?}: {}",
        server.logs()
    );
}

/// A request still in flight when `--shutdown-timeout` runs out does not hold the process: its
/// connection is closed and the process exits, with the drain's timeout logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_what_is_still_in_flight_after_the_shutdown_timeout() {
    let (mut server, ca, _dir) = Server::self_signed(&[
        "--config",
        &config_path(),
        "--shutdown-timeout",
        "1s",
        // Longer than the test: only the drain's timeout can end this request.
        "--body-read-timeout",
        "120s",
    ]);
    let client = client(&ca);
    let (first, _) = REPLICASET_POD.split_at(100);
    let first = first.to_owned();
    // The rest of the body never comes.
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(first) })
        .chain(futures::stream::pending());
    use futures::StreamExt;
    let in_flight = {
        let url = server.https_url("/mutate");
        tokio::spawn(async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = std::time::Instant::now();
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(10));
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}, before the drain's timeout"
    );
    assert!(
        status.success(),
        "exit status {status:?}: {}",
        server.logs()
    );
    let answer = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("the client is not left hanging")
        .unwrap();
    assert!(answer.is_err(), "the connection was closed: {answer:?}");
    assert!(
        server
            .logs()
            .contains("drain timed out; closing remaining connections"),
        "{}",
        server.logs()
    );
    eprintln!("forced close: exited {took:?} after SIGTERM with --shutdown-timeout 1s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_subcommand_makes_a_bundle_the_apiserver_can_use() {
    let dir = tempfile::tempdir().unwrap();
    let hook = dir.path().join("mutating-webhook.yaml");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("webhook-config/mutating-webhook.yaml"),
        &hook,
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let out = Command::new(env!("CARGO_BIN_EXE_nodewright"))
        .args([
            "certs",
            "--service",
            "nodewright",
            "--namespace",
            "nodewright",
            "--out",
        ])
        .arg(&out_dir)
        .arg("--webhook-config")
        .arg(&hook)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca = std::fs::read_to_string(out_dir.join("ca.crt")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out_dir.join("tls.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the key is private");

    // The webhook configuration now carries the CA as its caBundle.
    let config: Value = serde_yaml::from_str(&std::fs::read_to_string(&hook).unwrap()).unwrap();
    let bundle = config["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(bundle)
            .unwrap(),
        ca.as_bytes()
    );

    // The apiserver reaches the webhook by the Service's DNS name and verifies it against that CA.
    let cert = out_dir.join("tls.crt").display().to_string();
    let key = out_dir.join("tls.key").display().to_string();
    let server = Server::start(&["--tls-cert", &cert, "--tls-key", &key]);
    let addr: std::net::SocketAddr = server.https.trim_start_matches("https://").parse().unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .resolve("nodewright.nodewright.svc", addr)
        .build()
        .unwrap();
    let url = format!(
        "https://nodewright.nodewright.svc:{}/mutate?timeout=5s",
        addr.port()
    );
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(REPLICASET_POD)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
}
