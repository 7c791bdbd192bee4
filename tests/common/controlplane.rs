//! The real Kubernetes control plane for the cluster tests: etcd, kube-apiserver and
//! kube-controller-manager built by `scripts/k8s-binaries.sh` from the Go module proxy, plus, on a
//! test's request, kube-scheduler (with nodewright's extender) and kwok.
//!
//! One control plane per test binary ([`shared`]), started on first use on free loopback ports in
//! `$CARGO_TARGET_TMPDIR/controlplane/<binary>-<pid>`, where each process logs to `<name>.log`.
//! Tests keep apart by namespace ([`ControlPlane::namespace`]) and by naming their cluster-scoped
//! objects after it. The processes get SIGKILL when the test binary exits (`PR_SET_PDEATHSIG` on
//! the thread that keeps them); the directory stays for the logs, and the next run of the same
//! binary removes directories whose process is gone.
//!
//! Security as a cluster has it: client-certificate authentication on the secure port, an admin
//! kubeconfig (`system:masters`), `--authorization-mode=Node,RBAC`, service-account tokens signed
//! by a key of the control plane, the default admission plugins.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use serde_json::json;

/// The control plane of this test binary, started on first use.
pub fn shared() -> &'static ControlPlane {
    static SHARED: OnceLock<ControlPlane> = OnceLock::new();
    // Started on a thread of its own: the start-up blocks on runtimes of its own, which cannot
    // run inside a test's runtime.
    SHARED.get_or_init(|| {
        std::thread::spawn(ControlPlane::start)
            .join()
            .expect("the control plane did not start (its panic is printed above)")
    })
}

/// The directory holding the built binaries (`scripts/k8s-binaries.sh`, which builds them on first
/// use and prints the directory last).
pub fn binaries() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/k8s-binaries.sh");
        let output = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/k8s-binaries.sh");
        assert!(
            output.status.success(),
            "scripts/k8s-binaries.sh failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let text = String::from_utf8(output.stdout).unwrap();
        PathBuf::from(text.lines().last().expect("a directory").trim())
    })
    .clone()
}

/// A certificate and key, PEM.
#[derive(Clone)]
pub struct Pair {
    pub cert: String,
    pub key: String,
}

pub struct ControlPlane {
    /// Where the processes run and log.
    pub dir: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// The cluster CA (serving and client certificates), PEM.
    pub ca_pem: String,
    ca: Pair,
    /// kubeconfig of a `system:masters` user.
    pub admin_kubeconfig: PathBuf,
    /// How long etcd, kube-apiserver and kube-controller-manager took to be ready.
    pub started_in: Duration,
    keeper: std::sync::mpsc::Sender<Request>,
}

/// What the keeper thread (the parent of every process) is asked to do.
enum Request {
    Spawn(Box<Command>, std::sync::mpsc::Sender<std::io::Result<u32>>),
    Kill(u32),
}

/// A process started for one test, killed when dropped.
pub struct Process {
    pub name: String,
    pub log: PathBuf,
    pid: u32,
    keeper: std::sync::mpsc::Sender<Request>,
}

impl Process {
    pub fn logs(&self) -> String {
        tail(&self.log, 200)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.keeper.send(Request::Kill(self.pid));
    }
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run_dir() -> PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("controlplane");
    std::fs::create_dir_all(&base).unwrap();
    // Directories of earlier runs whose test binary is gone: their logs have been seen.
    if let Ok(entries) = std::fs::read_dir(&base) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let exe = std::env::current_exe().unwrap();
    let binary = exe
        .file_name()
        .unwrap()
        .to_string_lossy()
        .split('-')
        .next()
        .unwrap()
        .to_owned();
    let dir = base.join(format!("{binary}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ca() -> Pair {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "nodewright-test-cluster-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(30);
    let cert = params.self_signed(&key).unwrap();
    Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// A leaf from `ca`: a serving certificate for `names`, or (no names) a client certificate for
/// user `common_name` in `groups`.
pub fn issue(ca: &Pair, common_name: &str, groups: &[&str], names: &[&str]) -> Pair {
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, KeyPair::from_pem(&ca.key).unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    for group in groups {
        params
            .distinguished_name
            .push(DnType::OrganizationName, *group);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![if names.is_empty() {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(30);
    let cert = params.signed_by(&key, &issuer).unwrap();
    Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A kubeconfig for `server` trusting `ca_pem`, authenticating with a client certificate or a
/// bearer token.
pub fn kubeconfig(server: &str, ca_pem: &str, user: serde_json::Value) -> String {
    serde_json::to_string_pretty(&json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {
            "server": server,
            "certificate-authority-data": b64(ca_pem),
        }}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
        "current-context": "test",
    }))
    .unwrap()
}

pub fn certificate_user(pair: &Pair) -> serde_json::Value {
    json!({
        "client-certificate-data": b64(&pair.cert),
        "client-key-data": b64(&pair.key),
    })
}

/// The keeper: a thread that never ends while the test binary runs, parent of every process, so
/// that `PR_SET_PDEATHSIG` (which fires when the parent *thread* exits) kills them only when the
/// binary exits.
fn keeper() -> std::sync::mpsc::Sender<Request> {
    let (tx, rx) = std::sync::mpsc::channel::<Request>();
    std::thread::Builder::new()
        .name("controlplane-keeper".into())
        .spawn(move || {
            let mut children: Vec<Child> = Vec::new();
            for request in rx {
                match request {
                    Request::Spawn(mut command, answer) => {
                        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
                        unsafe {
                            command.pre_exec(|| {
                                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                                Ok(())
                            });
                        }
                        let spawned = command.spawn();
                        let _ = answer.send(
                            spawned
                                .as_ref()
                                .map(|c| c.id())
                                .map_err(|e| std::io::Error::new(e.kind(), e.to_string())),
                        );
                        if let Ok(child) = spawned {
                            children.push(child);
                        }
                    }
                    Request::Kill(pid) => {
                        if let Some(i) = children.iter().position(|c| c.id() == pid) {
                            let mut child = children.swap_remove(i);
                            let _ = child.kill();
                            let _ = child.wait();
                        }
                    }
                }
                children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
            }
            // The sender lives in a static: never reached before exit; park to be sure.
            loop {
                std::thread::park();
            }
        })
        .unwrap();
    tx
}

fn spawn(
    keeper: &std::sync::mpsc::Sender<Request>,
    dir: &Path,
    name: &str,
    program: &Path,
    args: &[String],
) -> Process {
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    let (tx, rx) = std::sync::mpsc::channel();
    keeper
        .send(Request::Spawn(Box::new(command), tx))
        .expect("keeper alive");
    let pid = rx
        .recv()
        .unwrap()
        .unwrap_or_else(|e| panic!("start {name} ({}): {e}", program.display()));
    Process {
        name: name.into(),
        log,
        pid,
        keeper: keeper.clone(),
    }
}

fn wait_until(what: &str, within: Duration, log: &Path, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} not ready within {within:?}; log {}:\n{}",
            log.display(),
            tail(log, 60)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl ControlPlane {
    fn start() -> ControlPlane {
        let started = Instant::now();
        let bin = binaries();
        let dir = run_dir();
        let keeper = keeper();
        let ca = ca();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.to_string_lossy().into_owned()
        };
        let ca_file = write("ca.crt", &ca.cert);
        let ca_key_file = write("ca.key", &ca.key);
        let serving = issue(
            &ca,
            "kube-apiserver",
            &[],
            &[
                "localhost",
                "127.0.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
            ],
        );
        let serving_cert = write("apiserver.crt", &serving.cert);
        let serving_key = write("apiserver.key", &serving.key);
        let sa = KeyPair::generate().unwrap();
        let sa_key = write("sa.key", &sa.serialize_pem());
        let sa_public = write("sa.pub", &sa.public_key_pem());
        let admin = issue(&ca, "nodewright-test-admin", &["system:masters"], &[]);
        // One runtime and one client each for all the polling below (this runs on a thread of
        // its own, outside any test's runtime).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _in_runtime = rt.enter();
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.cert.as_bytes()).unwrap())
            .identity(
                reqwest::Identity::from_pem(format!("{}{}", admin.cert, admin.key).as_bytes())
                    .unwrap(),
            )
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();

        // etcd: one member on loopback, no fsync (a test cluster; nothing to keep).
        let (etcd_client, etcd_peer) = (free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let etcd = spawn(
            &keeper,
            &dir,
            "etcd",
            &bin.join("etcd"),
            &[
                format!("--data-dir={}", dir.join("etcd-data").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                "--unsafe-no-fsync=true".into(),
                "--quota-backend-bytes=8589934592".into(),
                "--log-level=warn".into(),
            ],
        );
        wait_until("etcd", Duration::from_secs(30), &etcd.log, || {
            std::net::TcpStream::connect(("127.0.0.1", etcd_client)).is_ok()
        });

        let port = free_port();
        let server = format!("https://127.0.0.1:{port}");
        let apiserver = spawn(
            &keeper,
            &dir,
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            &[
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                // The `kubernetes` Service's endpoints cannot be a loopback address.
                "--endpoint-reconciler-type=none".into(),
                format!("--secure-port={port}"),
                format!("--cert-dir={}", dir.join("apiserver-certs").display()),
                format!("--tls-cert-file={serving_cert}"),
                format!("--tls-private-key-file={serving_key}"),
                format!("--client-ca-file={ca_file}"),
                "--authorization-mode=Node,RBAC".into(),
                format!("--service-account-key-file={sa_public}"),
                format!("--service-account-signing-key-file={sa_key}"),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                "--api-audiences=https://kubernetes.default.svc.cluster.local".into(),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                "--allow-privileged=true".into(),
                // Webhooks are called by URL on loopback; nothing to resolve through Services.
                "--enable-aggregator-routing=false".into(),
                "--profiling=false".into(),
                "--v=1".into(),
            ],
        );
        wait_until(
            "kube-apiserver",
            Duration::from_secs(120),
            &apiserver.log,
            || {
                let answer = rt.block_on(http.get(format!("{server}/readyz")).send());
                answer.is_ok_and(|r| r.status().as_u16() == 200)
            },
        );
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        std::fs::write(
            &admin_kubeconfig,
            kubeconfig(&server, &ca.cert, certificate_user(&admin)),
        )
        .unwrap();
        let admin_kubeconfig_text = admin_kubeconfig.to_string_lossy().into_owned();
        let admin_client = rt.block_on(client_from(&admin_kubeconfig));

        let controller_manager = spawn(
            &keeper,
            &dir,
            "kube-controller-manager",
            &bin.join("kube-controller-manager"),
            &[
                format!("--kubeconfig={admin_kubeconfig_text}"),
                format!("--authentication-kubeconfig={admin_kubeconfig_text}"),
                format!("--authorization-kubeconfig={admin_kubeconfig_text}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()),
                "--leader-elect=false".into(),
                format!("--service-account-private-key-file={sa_key}"),
                format!("--root-ca-file={ca_file}"),
                format!("--cluster-signing-cert-file={ca_file}"),
                format!("--cluster-signing-key-file={ca_key_file}"),
                "--use-service-account-credentials=false".into(),
                "--v=1".into(),
            ],
        );
        // Ready once it has made the `default` ServiceAccount of a namespace.
        wait_until(
            "kube-controller-manager",
            Duration::from_secs(60),
            &controller_manager.log,
            || rt.block_on(has_default_account(&admin_client, "default")),
        );
        // Never stopped: they go with the test binary (PR_SET_PDEATHSIG).
        std::mem::forget(etcd);
        std::mem::forget(apiserver);
        std::mem::forget(controller_manager);
        let plane = ControlPlane {
            dir,
            server,
            ca_pem: ca.cert.clone(),
            ca,
            admin_kubeconfig,
            started_in: started.elapsed(),
            keeper,
        };
        eprintln!(
            "control plane (etcd, kube-apiserver, kube-controller-manager) ready in {} ms: {}",
            plane.started_in.as_millis(),
            plane.dir.display()
        );
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(plane.dir.join("startup-ms"))
            .and_then(|mut f| writeln!(f, "{}", plane.started_in.as_millis()));
        plane
    }

    /// An admin (`system:masters`) client.
    pub async fn client(&self) -> Client {
        client_from(&self.admin_kubeconfig).await
    }

    /// Create a fresh namespace `<prefix>-<n>` (unique in this binary) with `labels`, and wait for
    /// its `default` ServiceAccount (pods cannot be created before it exists).
    pub async fn namespace(&self, prefix: &str) -> String {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{prefix}-{n}");
        self.create_namespace(&name).await;
        name
    }

    /// Create namespace `name` (if it does not exist) and wait for its `default` ServiceAccount.
    pub async fn create_namespace(&self, name: &str) {
        let client = self.client().await;
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        match Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("create namespace {name}: {e}"),
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !has_default_account(&client, name).await {
            assert!(
                Instant::now() < deadline,
                "no default ServiceAccount in {name}: {}",
                tail(&self.dir.join("kube-controller-manager.log"), 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A kubeconfig at `path` for ServiceAccount `namespace/name` (created if missing), with a
    /// bound token from the TokenRequest API: requests made with it are authorized by RBAC as the
    /// ServiceAccount's.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str, path: &Path) {
        let client = self.client().await;
        let accounts: Api<ServiceAccount> = Api::namespaced(client, namespace);
        let account: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        match accounts.create(&PostParams::default(), &account).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("create ServiceAccount {namespace}/{name}: {e}"),
        }
        let request = k8s_openapi::api::authentication::v1::TokenRequest {
            spec: Some(k8s_openapi::api::authentication::v1::TokenRequestSpec {
                expiration_seconds: Some(24 * 3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let token = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap()
            .status
            .expect("token status")
            .token;
        std::fs::write(
            path,
            kubeconfig(&self.server, &self.ca_pem, json!({"token": token})),
        )
        .unwrap();
    }

    /// A client certificate kubeconfig at `path` for user `name` in `groups`.
    pub fn user_kubeconfig(&self, name: &str, groups: &[&str], path: &Path) {
        let pair = issue(&self.ca, name, groups, &[]);
        std::fs::write(
            path,
            kubeconfig(&self.server, &self.ca_pem, certificate_user(&pair)),
        )
        .unwrap();
    }

    /// Start `program` (one of the built binaries, or any path) with `args`, logging to
    /// `<dir>/<name>.log`; killed when the returned [`Process`] is dropped.
    pub fn spawn(&self, name: &str, program: &Path, args: &[String]) -> Process {
        spawn(&self.keeper, &self.dir, name, program, args)
    }

    /// Write `text` to `<dir>/<name>` and return the path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A kube-scheduler for this control plane, from `config` (a KubeSchedulerConfiguration as YAML,
    /// whose `clientConnection` this fills in): ready when its /readyz answers. Its metrics are on
    /// the returned port (`https://127.0.0.1:PORT/metrics`, no authentication needed).
    pub async fn start_scheduler(&self, name: &str, config: &str) -> (Process, u16) {
        let mut doc: serde_json::Value = serde_yaml::from_str(config).unwrap();
        doc["clientConnection"] = json!({
            "kubeconfig": self.admin_kubeconfig.to_string_lossy(),
            "qps": 500, "burst": 1000,
        });
        doc["leaderElection"] = json!({"leaderElect": false});
        let config_path = self.write(
            &format!("{name}.yaml"),
            &serde_yaml::to_string(&doc).unwrap(),
        );
        let port = free_port();
        let admin = self.admin_kubeconfig.to_string_lossy().into_owned();
        let process = self.spawn(
            name,
            &binaries().join("kube-scheduler"),
            &[
                format!("--config={}", config_path.display()),
                format!("--authentication-kubeconfig={admin}"),
                format!("--authorization-kubeconfig={admin}"),
                "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                "--v=2".into(),
            ],
        );
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = http
                .get(format!("https://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .ok();
            if status == Some(200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kube-scheduler not ready within 60 s; log {}:\n{}",
                process.log.display(),
                process.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (process, port)
    }

    /// kwok managing the Nodes annotated `kwok.x-k8s.io/node: fake` (and their pods): it keeps
    /// them Ready and runs the pods bound to them, as kubelets would.
    pub fn start_kwok(&self, name: &str) -> Process {
        let admin = self.admin_kubeconfig.to_string_lossy().into_owned();
        self.spawn(
            name,
            &binaries().join("kwok"),
            &[
                format!("--kubeconfig={admin}"),
                format!("--config={}", binaries().join("kwok-stages.yaml").display()),
                "--manage-all-nodes=false".into(),
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
                format!("--server-address=127.0.0.1:{}", free_port()),
                "--node-lease-duration-seconds=40".into(),
            ],
        )
    }
}

pub async fn client_from(path: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(path).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

async fn has_default_account(client: &Client, namespace: &str) -> bool {
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .get_opt("default")
        .await
        .ok()
        .flatten()
        .is_some()
}

/// nodewright installed, as far as the API is concerned, the way the chart installs it: its
/// namespace, its ServiceAccount, and the chart's controller ClusterRole and Role (rendered by
/// `scripts/chart-rbac.py` for this release) bound to it.
pub struct Install {
    /// The Helm release name, which is also nodewright's namespace.
    pub release: String,
    pub namespace: String,
    /// kubeconfig of the ServiceAccount: run nodewright with it and RBAC decides as in a cluster.
    pub kubeconfig: PathBuf,
    /// The webhook configurations' name the chart grants nodewright (resourceNames).
    pub webhook_name: String,
    /// The serving certificate Secret the chart grants (self-managed mode).
    pub tls_secret: String,
    /// The extender client Secret the chart grants.
    pub client_secret: String,
}

impl ControlPlane {
    /// Install nodewright's RBAC as release `nodewright-<n>` (unique in this binary) in a namespace
    /// of the same name.
    pub async fn install_nodewright(&self) -> Install {
        let release = self.namespace("nodewright").await;
        let namespace = release.clone();
        // The test virtualenv's Python has Helm's library (scripts/setup-test-deps.sh).
        let venv = std::env::var_os("NODEWRIGHT_TEST_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-test"));
        let output = Command::new(venv.join("bin/python"))
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/chart-rbac.py"))
            .args([&release, &namespace])
            .output()
            .expect("run scripts/chart-rbac.py with the test virtualenv's python (scripts/setup-test-deps.sh makes it)");
        assert!(
            output.status.success(),
            "scripts/chart-rbac.py: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let objects: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
        let client = self.client().await;
        let account = release.clone();
        let mut names: std::collections::BTreeMap<&str, String> = Default::default();
        for object in &objects {
            let name = object["metadata"]["name"].as_str().unwrap().to_owned();
            let namespaced = object["kind"] == "Role";
            for rule in object["rules"].as_array().unwrap() {
                let resources: Vec<&str> = rule["resources"]
                    .as_array()
                    .map(|r| r.iter().filter_map(|x| x.as_str()).collect())
                    .unwrap_or_default();
                for resource_name in rule["resourceNames"].as_array().into_iter().flatten() {
                    let n = resource_name.as_str().unwrap().to_owned();
                    if resources.contains(&"mutatingwebhookconfigurations") {
                        names.insert("webhook", n.clone());
                    }
                    if resources.contains(&"secrets") {
                        if n.ends_with("-tls") {
                            names.insert("tls", n.clone());
                        } else if n.ends_with("-extender-client") {
                            names.insert("client", n.clone());
                        }
                    }
                }
            }
            let (role_kind, binding_kind, scope) = if namespaced {
                ("Role", "RoleBinding", Some(namespace.as_str()))
            } else {
                ("ClusterRole", "ClusterRoleBinding", None)
            };
            let mut role = object.clone();
            if let Some(ns) = scope {
                role["metadata"]["namespace"] = json!(ns);
            }
            let binding = json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": binding_kind,
                "metadata": {"name": name, "namespace": scope},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
            });
            for doc in [role, binding] {
                apply(&client, &doc).await;
            }
        }
        let kubeconfig = self.dir.join(format!("{release}.kubeconfig"));
        self.service_account_kubeconfig(&namespace, &account, &kubeconfig)
            .await;
        Install {
            webhook_name: names.get("webhook").cloned().unwrap_or_default(),
            tls_secret: names.get("tls").cloned().unwrap_or_default(),
            client_secret: names.get("client").cloned().unwrap_or_default(),
            release,
            namespace,
            kubeconfig,
        }
    }
}

/// Create `doc` (any kind the API discovers) as the admin; it must not exist yet.
pub async fn apply(client: &Client, doc: &serde_json::Value) {
    create(client, doc, false).await
}

/// Create `doc`; with `tolerate_existing`, an object of that name already there is fine.
pub async fn create(client: &Client, doc: &serde_json::Value, tolerate_existing: bool) {
    let object: kube::core::DynamicObject = serde_json::from_value(doc.clone()).unwrap();
    let types = object.types.clone().expect("apiVersion and kind");
    let gvk = kube::core::GroupVersionKind::try_from(&types).unwrap();
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .unwrap_or_else(|e| panic!("discover {gvk:?}: {e}"));
    let api: Api<kube::core::DynamicObject> =
        match (&caps.scope, object.metadata.namespace.as_deref()) {
            (kube::discovery::Scope::Namespaced, Some(ns)) => {
                Api::namespaced_with(client.clone(), ns, &resource)
            }
            _ => Api::all_with(client.clone(), &resource),
        };
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 && tolerate_existing => {}
        Err(e) => panic!("create {} {:?}: {e}", types.kind, object.metadata.name),
    }
}

impl ControlPlane {
    /// The NodeClaim CRD from `webhook-config/crds`, installed once per control plane and
    /// established (served) before this returns.
    pub async fn ensure_nodeclaim_crd(&self) {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/webhook-config/crds/nodeclaims.nodewright.io.yaml"
        ))
        .unwrap();
        let doc: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        let client = self.client().await;
        create(&client, &doc, true).await;
        let name = doc["metadata"]["name"].as_str().unwrap();
        let crds: Api<CustomResourceDefinition> = Api::all(client);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let crd = crds.get(name).await.unwrap();
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                return;
            }
            assert!(Instant::now() < deadline, "CRD {name} never established");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// How kube-scheduler calls nodewright's extender in a test.
pub struct ExtenderSetup<'a> {
    /// `https://127.0.0.1:PORT` of the nodewright replica to call.
    pub https: &'a str,
    /// The CA of its serving certificate (the stanza's `tlsConfig.caFile`).
    pub ca_pem: &'a str,
    /// A client certificate and key (PEM) for mTLS (`certFile`/`keyFile`).
    pub client: Option<(&'a str, &'a str)>,
    pub node_cache_capable: bool,
}

impl ControlPlane {
    /// kwok for this control plane (one per test binary), started on first use.
    pub fn kwok(&self) {
        static KWOK: OnceLock<()> = OnceLock::new();
        KWOK.get_or_init(|| std::mem::forget(self.start_kwok("kwok")));
    }

    /// The real kube-scheduler with nodewright's extender stanza from
    /// `webhook-config/kube-scheduler-config.yaml`, pointed at `extender`. Returns the process and
    /// its metrics port.
    pub async fn start_extender_scheduler(
        &self,
        name: &str,
        extender: &ExtenderSetup<'_>,
    ) -> (Process, u16) {
        self.start_extender_scheduler_with(name, extender, "{}")
            .await
    }

    /// The same, with the fields of `base` (a KubeSchedulerConfiguration as YAML: profiles, say)
    /// added to the repository's file.
    pub async fn start_extender_scheduler_with(
        &self,
        name: &str,
        extender: &ExtenderSetup<'_>,
        base: &str,
    ) -> (Process, u16) {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("webhook-config/kube-scheduler-config.yaml");
        let mut doc: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let base: serde_json::Value = serde_yaml::from_str(base).unwrap();
        json_patch::merge(&mut doc, &base);
        let ca = self.write(&format!("{name}-extender-ca.crt"), extender.ca_pem);
        let stanza = &mut doc["extenders"][0];
        stanza["urlPrefix"] = json!(format!("{}/scheduler", extender.https));
        stanza["tlsConfig"] = json!({"caFile": ca});
        if let Some((cert, key)) = extender.client {
            stanza["tlsConfig"]["certFile"] =
                json!(self.write(&format!("{name}-client.crt"), cert));
            stanza["tlsConfig"]["keyFile"] = json!(self.write(&format!("{name}-client.key"), key));
        }
        stanza["nodeCacheCapable"] = json!(extender.node_cache_capable);
        self.start_scheduler(name, &serde_yaml::to_string(&doc).unwrap())
            .await
    }
}
