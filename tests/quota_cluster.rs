//! Quotas across replicas on the real control plane: three `nodewright serve` processes run under
//! the ServiceAccount and RBAC the Helm chart gives them, sit behind one webhook URL (a
//! round-robin TCP proxy, as a Service spreads connections), and pods are created through the real
//! kube-apiserver, which calls the validating webhook. The ledger's compare-and-swap writes go to
//! etcd through the real apiserver.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

#[macro_use]
mod common;
use common::controlplane::{self, Install};
use common::tcpproxy::{ProxyHandle, RoundRobin};
use common::{ServeFiles, Server, metric_value};

const LIMIT: usize = 10;

struct Cluster {
    client: Client,
    install: Install,
    /// The quota'd namespace of this test (the config's `team-riker`).
    namespace: String,
    replicas: Vec<Server>,
    proxy: ProxyHandle,
    /// Between nodewright and kube-apiserver: shut down to make the API unreachable (a TCP fault
    /// proxy in front of the real apiserver, not a stand-in).
    api_proxy: Option<ProxyHandle>,
    /// Where that proxy listens (nodewright's kubeconfig points there).
    api_listen: std::net::SocketAddr,
    /// The real apiserver.
    api_addr: std::net::SocketAddr,
    ca: String,
    _dir: tempfile::TempDir,
    _files: ServeFiles,
}

fn config_text(failure_policy: &str, namespace: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/steering.yaml"))
        .unwrap()
        .replace(
            "  quotas:\n",
            &format!("  quotaFailurePolicy: {failure_policy}\n  quotas:\n"),
        )
        .replace("team-riker", namespace)
}

impl Cluster {
    async fn start(replicas: usize, failure_policy: &str) -> Cluster {
        let plane = controlplane::shared();
        let dir = tempfile::tempdir().unwrap();
        let client = plane.client().await;
        let install = plane.install_nodewright().await;
        let namespace = plane.namespace("team-riker").await;

        // nodewright reaches the apiserver through a TCP proxy the test can cut.
        let api_addr: std::net::SocketAddr =
            plane.server.trim_start_matches("https://").parse().unwrap();
        let api_proxy = RoundRobin::start(vec![api_addr]).await.unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            std::fs::read_to_string(&install.kubeconfig)
                .unwrap()
                .replace(&plane.server, &format!("https://{}", api_proxy.addr())),
        )
        .unwrap();

        let files = ServeFiles::write(&config_text(failure_policy, &namespace));
        let args = files.args(&install.namespace);
        let replicas: Vec<Server> = (0..replicas)
            .map(|_| Server::start_with(&args, Some(&kubeconfig)))
            .collect();
        let backends = replicas
            .iter()
            .map(|s| s.https.trim_start_matches("https://").parse().unwrap())
            .collect();
        let proxy = RoundRobin::start(backends).await.unwrap();

        let cluster = Cluster {
            client,
            install,
            namespace,
            replicas,
            proxy,
            api_listen: api_proxy.addr(),
            api_proxy: Some(api_proxy),
            api_addr,
            ca: files.ca_pem.clone(),
            _dir: dir,
            _files: files,
        };
        cluster.register_webhook().await;
        cluster.wait_until_quota_ready().await;
        cluster
    }

    /// The API becomes unreachable for nodewright: its proxy stops and cuts every connection.
    async fn cut_api(&mut self) {
        if let Some(proxy) = self.api_proxy.take() {
            proxy.shutdown().await;
        }
    }

    /// The API is reachable again, on the same address.
    async fn restore_api(&mut self) {
        if self.api_proxy.is_none() {
            self.api_proxy = Some(
                RoundRobin::start_on(self.api_listen, vec![self.api_addr])
                    .await
                    .unwrap(),
            );
        }
    }

    async fn register_webhook(&self) {
        let hook = common::pod_webhook(
            "ValidatingWebhookConfiguration",
            &format!("{}-quota", self.install.release),
            &format!("https://127.0.0.1:{}/validate", self.proxy.addr().port()),
            &self.ca,
            &self.namespace,
        );
        controlplane::apply(&self.client, &hook).await;
    }

    /// The replicas answer quota questions only once their pod watch has listed; a dry run tells.
    async fn wait_until_quota_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let dry = PostParams {
                dry_run: true,
                ..PostParams::default()
            };
            let ready = futures::future::join_all((0..self.replicas.len() * 2).map(|i| {
                let pods = self.pods(&self.namespace);
                let dry = dry.clone();
                async move { pods.create(&dry, &pod(&format!("probe-{i}"))).await.is_ok() }
            }))
            .await;
            if ready.iter().all(|ok| *ok) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "quota never ready: {}",
                self.replicas[0].logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The quota ledger of this test's namespace, as nodewright stored it.
    async fn ledger(&self) -> Value {
        let ledger = Api::<ConfigMap>::namespaced(self.client.clone(), &self.install.namespace)
            .get(&format!("nodewright-quota-{}", self.namespace))
            .await
            .unwrap();
        serde_json::from_str(&ledger.data.unwrap()["ledger.json"]).unwrap()
    }

    fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Create `n` pods at once; returns (created names, error messages).
    async fn burst(&self, prefix: &str, n: usize) -> (Vec<String>, Vec<String>) {
        let results = futures::future::join_all((0..n).map(|i| {
            let pods = self.pods(&self.namespace);
            let name = format!("{prefix}-{i}");
            async move {
                pods.create(&PostParams::default(), &pod(&name))
                    .await
                    .map(|_| name)
            }
        }))
        .await;
        let mut created = Vec::new();
        let mut errors = Vec::new();
        for r in results {
            match r {
                Ok(name) => created.push(name),
                Err(e) => errors.push(e.to_string()),
            }
        }
        (created, errors)
    }

    async fn stored(&self) -> usize {
        self.pods(&self.namespace)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len()
    }

    async fn metric_sum(&self, series: &str) -> f64 {
        common::metric_sum(&self.replicas, series).await
    }
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "app-2048"}},
        "spec": {"containers": [{"name": "app", "image": "public.ecr.aws/l6m2t8p7/docker-2048:latest"}]}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_300_creates_through_the_apiserver_admits_exactly_the_limit() {
    let cluster = Cluster::start(3, "Fail").await;
    let (created, errors) = cluster.burst("burst", 300).await;
    assert_eq!(
        created.len(),
        LIMIT,
        "errors: {:?}",
        &errors[..3.min(errors.len())]
    );
    assert_eq!(cluster.stored().await, LIMIT);
    let denial = &errors[0];
    for part in [
        "denied the request",
        cluster.namespace.as_str(),
        "at most 10 pods",
        "nodewright.io/max-pods",
    ] {
        assert!(denial.contains(part), "{denial:?} lacks {part:?}");
    }
    // Every admitted pod holds a slot in the shared ledger.
    let entries = cluster.ledger().await;
    assert_eq!(entries["entries"].as_object().unwrap().len(), LIMIT);
    // kube-apiserver keeps its webhook connections open and multiplexes calls on them, so, as
    // behind a Service, a few connections carry the burst and which replicas they reach is the
    // proxy's round robin (the stand-in opened one connection per call). Contention between
    // replicas for one ledger is what the next test forces.
    let connections = cluster.proxy.connections();
    println!("webhook connections per replica: {connections:?}");
    assert!(!connections.is_empty());
    // Batching: at most one ledger write per admitted pod, whatever the number of requests.
    let writes = cluster
        .metric_sum("nodewright_quota_ledger_writes_total")
        .await;
    assert!(
        writes <= LIMIT as f64,
        "{writes} ledger writes for {LIMIT} admitted pods"
    );
}

/// Each of the three replicas gets exactly a third of the burst at once: they contend for one ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_300_reviews_spread_over_three_replicas_admits_exactly_the_limit() {
    let cluster = Cluster::start(3, "Fail").await;
    let answers = futures::future::join_all((0..300).map(|i| {
        let server = &cluster.replicas[i % 3];
        let ca = &cluster.ca;
        let namespace = &cluster.namespace;
        async move { direct_review(server, ca, namespace, &format!("spread-{i}")).await }
    }))
    .await;
    let allowed = answers
        .iter()
        .filter(|a| a["response"]["allowed"] == true)
        .count();
    assert_eq!(allowed, LIMIT);
    let codes: Vec<i64> = answers
        .iter()
        .filter(|a| a["response"]["allowed"] == false)
        .map(|a| a["response"]["status"]["code"].as_i64().unwrap_or(0))
        .collect();
    assert!(
        codes.iter().all(|c| *c == 403),
        "every refusal is the quota's: {codes:?}"
    );
    for r in &cluster.replicas {
        let text = reqwest::get(format!("{}/metrics", r.ops))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let decided = metric_value(
            &text,
            r#"nodewright_admission_requests_total{endpoint="validate",operation="CREATE",outcome="denied"}"#,
        ) + metric_value(
            &text,
            r#"nodewright_admission_requests_total{endpoint="validate",operation="CREATE",outcome="allowed"}"#,
        );
        assert!(
            decided >= 100.0,
            "each replica answered its share: {decided}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_pods_free_their_slots_and_dry_runs_never_count() {
    let cluster = Cluster::start(3, "Fail").await;
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    for i in 0..(2 * LIMIT) {
        cluster
            .pods(&cluster.namespace)
            .create(&dry, &pod(&format!("dry-{i}")))
            .await
            .expect("dry runs fit");
    }
    let (created, _) = cluster.burst("first", LIMIT).await;
    assert_eq!(created.len(), LIMIT, "dry runs reserved nothing");
    assert!(
        cluster
            .pods(&cluster.namespace)
            .create(&dry, &pod("dry-over"))
            .await
            .is_err(),
        "a dry run over quota is refused"
    );

    for name in &created[..3] {
        cluster
            .pods(&cluster.namespace)
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    // As soon as the replicas' watches see the deletes, three slots are free, and no more.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut admitted = Vec::new();
    while admitted.len() < 3 {
        let name = format!("second-{}", admitted.len());
        if cluster
            .pods(&cluster.namespace)
            .create(&PostParams::default(), &pod(&name))
            .await
            .is_ok()
        {
            admitted.push(name);
        } else {
            assert!(Instant::now() < deadline, "freed slots never reused");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (more, _) = cluster.burst("third", 20).await;
    assert!(more.is_empty(), "admitted over quota: {more:?}");
    assert_eq!(cluster.stored().await, LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_mid_burst_admits_no_extra_pod() {
    let mut cluster = Cluster::start(3, "Fail").await;
    let burst = {
        let pods = cluster.pods(&cluster.namespace);
        tokio::spawn(async move {
            futures::future::join_all((0..300).map(|i| {
                let pods = pods.clone();
                async move {
                    pods.create(&PostParams::default(), &pod(&format!("k-{i}")))
                        .await
                        .is_ok()
                }
            }))
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let victim = cluster.replicas.remove(1);
    drop(victim); // SIGKILL, mid-burst
    let admitted = burst.await.unwrap().into_iter().filter(|ok| *ok).count();
    let stored = cluster.stored().await;
    assert!(
        admitted <= LIMIT && stored <= LIMIT,
        "admitted {admitted}, stored {stored}"
    );
    // Reservations the dead replica wrote are still in the ledger: nothing admitted is lost.
    let entries = cluster.ledger().await;
    let reserved: Vec<&str> = entries["entries"]
        .as_object()
        .unwrap()
        .values()
        .map(|e| e["pod"].as_str().unwrap())
        .collect();
    for p in cluster
        .pods(&cluster.namespace)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
    {
        let name = format!("{}/{}", cluster.namespace, p.metadata.name.unwrap());
        assert!(
            reserved.contains(&name.as_str()),
            "{name} stored without a reservation"
        );
    }
    // The survivors keep enforcing: nothing more fits until reservations expire or pods go.
    let (more, _) = cluster.burst("after", 20).await;
    assert_eq!(stored + more.len(), cluster.stored().await);
    assert!(cluster.stored().await <= LIMIT);
}

async fn direct_review(server: &Server, ca: &str, namespace: &str, uid: &str) -> Value {
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("req-{uid}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace, "name": format!("pod-{uid}"), "operation": "CREATE",
            "userInfo": {"username": "test"},
            "object": serde_json::to_value(pod(&format!("pod-{uid}"))).unwrap(),
            "oldObject": null, "dryRun": false
        }
    });
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    client
        .post(server.https_url("/validate?timeout=4s"))
        .header("content-type", "application/json")
        .body(review.to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_unreachable_fails_closed_by_default_and_open_when_configured() {
    for (policy, allowed, outcome) in [
        ("Fail", false, "error_denied"),
        ("Ignore", true, "error_allowed"),
    ] {
        let mut cluster = Cluster::start(1, policy).await;
        cluster.cut_api().await;
        let answer = direct_review(
            &cluster.replicas[0],
            &cluster.ca,
            &cluster.namespace,
            "while-down",
        )
        .await;
        assert_eq!(answer["response"]["allowed"], allowed, "{policy}: {answer}");
        if !allowed {
            let message = answer["response"]["status"]["message"].as_str().unwrap();
            assert!(
                message.contains(&format!(
                    "could not check the pod quota of namespace {}",
                    cluster.namespace
                )),
                "{message}"
            );
        }
        let series = format!(r#"nodewright_quota_decisions_total{{outcome="{outcome}"}}"#);
        assert!(
            cluster.metric_sum(&series).await >= 1.0,
            "{policy}: {series} not counted"
        );
        cluster.restore_api().await;
    }
}
