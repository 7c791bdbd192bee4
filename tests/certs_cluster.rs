//! Certificates managed by nodewright itself and its webhook configurations' caBundle, with real
//! `nodewright serve` processes on the real control plane (tests/common/controlplane.rs), running
//! under the chart's ServiceAccount and RBAC: replicas sharing one CA from a Secret, the caBundle
//! written and repaired, rotation of the serving certificate and of the CA without a restart,
//! `--ca-bundle-file`, and mTLS on the scheduler extender paths.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

#[macro_use]
mod common;
use common::controlplane::{self, Install};
use common::{Server, metric_value};

struct Cluster {
    client: Client,
    install: Install,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// nodewright's namespace, ServiceAccount and RBAC as the chart makes them, and the
    /// repository's webhook configurations (caBundle empty) under the chart's name for them, as
    /// `kubectl apply -k webhook-config` leaves them. The control plane is shared by the tests of
    /// this file, so each configuration also selects only namespaces labelled for this test
    /// (none): no other test's pod goes to it.
    async fn start() -> Cluster {
        let plane = controlplane::shared();
        let dir = tempfile::tempdir().unwrap();
        let client = plane.client().await;
        let install = plane.install_nodewright().await;
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("webhook-config");
        for file in ["mutating-webhook.yaml", "validating-webhook.yaml"] {
            let mut doc: serde_json::Value =
                serde_yaml::from_str(&std::fs::read_to_string(repo.join(file)).unwrap()).unwrap();
            doc["metadata"]["name"] = json!(install.webhook_name);
            for hook in doc["webhooks"].as_array_mut().unwrap() {
                hook["clientConfig"]["service"]["namespace"] = json!(install.namespace);
                hook["clientConfig"]["service"]["name"] = json!(install.release);
                hook["namespaceSelector"]["matchExpressions"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"key": "nodewright-test/release", "operator": "In", "values": [install.release]}));
            }
            controlplane::apply(&client, &doc).await;
        }
        Cluster {
            client,
            install,
            dir,
        }
    }

    fn serve(&self, extra: &[&str]) -> Server {
        let mut args = vec![
            "--namespace",
            &self.install.namespace,
            "--tls-secret",
            &self.install.tls_secret,
            "--service",
            &self.install.release,
            "--webhook-configuration",
            &self.install.webhook_name,
        ];
        args.extend_from_slice(extra);
        Server::start_with(&args, Some(&self.install.kubeconfig))
    }

    fn ca_secret(&self) -> String {
        format!("{}-ca", self.install.tls_secret)
    }

    /// The name the apiserver uses for the chart's Service.
    fn service_host(&self) -> String {
        format!("{}.{}.svc", self.install.release, self.install.namespace)
    }

    fn service_names(&self) -> Vec<String> {
        nodewright::tls::certs::service_dns_names(&self.install.release, &self.install.namespace)
    }

    async fn secret(&self, name: &str) -> Option<Secret> {
        Api::<Secret>::namespaced(self.client.clone(), &self.install.namespace)
            .get_opt(name)
            .await
            .unwrap()
    }

    async fn secret_text(&self, name: &str, key: &str) -> String {
        let secret = self
            .secret(name)
            .await
            .unwrap_or_else(|| panic!("no Secret {name}"));
        String::from_utf8(secret.data.unwrap()[key].0.clone()).unwrap()
    }

    /// True when every webhook of both configurations carries `bundle` as its caBundle.
    async fn bundles_are(&self, bundle: &str) -> bool {
        self.ca_bundles().await.iter().all(|b| b == bundle)
    }

    /// The caBundle (decoded PEM) of every webhook of both configurations.
    async fn ca_bundles(&self) -> Vec<String> {
        let mutating = Api::<MutatingWebhookConfiguration>::all(self.client.clone())
            .get(&self.install.webhook_name)
            .await
            .unwrap();
        let validating = Api::<ValidatingWebhookConfiguration>::all(self.client.clone())
            .get(&self.install.webhook_name)
            .await
            .unwrap();
        let text = |b: Option<k8s_openapi::ByteString>| {
            String::from_utf8(b.map(|b| b.0).unwrap_or_default()).unwrap()
        };
        mutating
            .webhooks
            .unwrap()
            .into_iter()
            .map(|w| text(w.client_config.ca_bundle))
            .chain(
                validating
                    .webhooks
                    .unwrap()
                    .into_iter()
                    .map(|w| text(w.client_config.ca_bundle)),
            )
            .collect()
    }

    /// An HTTPS client that trusts exactly `ca_pem` and reaches `server` by the Service's DNS name.
    fn client_for(&self, server: &Server, ca_pem: &str, identity: Option<&str>) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .tls_info(true)
            .resolve(&self.service_host(), ([127, 0, 0, 1], port(server)).into())
            .timeout(Duration::from_secs(5));
        for cert in reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes()).unwrap() {
            builder = builder.add_root_certificate(cert);
        }
        if let Some(pem) = identity {
            builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        builder.build().unwrap()
    }

    fn url(&self, server: &Server, path: &str) -> String {
        format!("https://{}:{}{path}", self.service_host(), port(server))
    }

    /// POST `body` to `path`; the status, or the connection error.
    async fn post(
        &self,
        client: &reqwest::Client,
        server: &Server,
        path: &str,
        body: &str,
    ) -> Result<u16, String> {
        client
            .post(self.url(server, path))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| format!("{e:?}"))
    }

    /// The DER of the leaf certificate `server` presents, verified against `ca_pem`.
    async fn served_leaf(&self, server: &Server, ca_pem: &str) -> Result<Vec<u8>, String> {
        let response = self
            .client_for(server, ca_pem, None)
            .get(self.url(server, "/nowhere"))
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        Ok(response
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|i| i.peer_certificate())
            .expect("TLS info")
            .to_vec())
    }
}

fn port(server: &Server) -> u16 {
    server.https.rsplit(':').next().unwrap().parse().unwrap()
}

const FILTER_CALL: &str = r#"{"Pod":{"metadata":{"name":"p","namespace":"team-riker"},"spec":{"containers":[{"name":"c","image":"x"}]}},"Nodes":null,"NodeNames":["n1"]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_self_managed_ca_written_into_the_webhooks() {
    let cluster = Cluster::start().await;
    // Two replicas start at once and race to create the CA.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| cluster.serve(&[]));
        let b = s.spawn(|| cluster.serve(&[]));
        (a.join().unwrap(), b.join().unwrap())
    });
    let ca = cluster.secret_text(&cluster.ca_secret(), "tls.crt").await;
    let bundle = cluster.secret_text(&cluster.ca_secret(), "ca.crt").await;
    assert_eq!(nodewright::tls::certs::split_pem(&bundle), vec![ca.clone()]);
    let pair = cluster.secret(&cluster.install.tls_secret).await.unwrap();
    assert_eq!(pair.type_.as_deref(), Some("kubernetes.io/tls"));
    let serving = cluster
        .secret_text(&cluster.install.tls_secret, "tls.crt")
        .await;
    assert!(nodewright::tls::certs::issued_by(&serving, &ca));
    let facts = nodewright::tls::certs::facts(&serving).unwrap();
    assert_eq!(facts.names, cluster.service_names());

    // Both configurations, every webhook: the CA bundle.
    eventually!(a, "caBundle written", cluster.bundles_are(&bundle).await);
    assert_eq!(cluster.ca_bundles().await.len(), 2);

    // The apiserver's view: trusting the caBundle, both replicas serve the same certificate by
    // the Service's name, and answer the webhooks.
    let leaf_a = cluster.served_leaf(&a, &bundle).await.unwrap();
    let leaf_b = cluster.served_leaf(&b, &bundle).await.unwrap();
    assert_eq!(leaf_a, leaf_b);
    let review =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(
            "tests/data/fixtures/admissionreview_v1_pod_create_kubectl__kubewarden_kwctl.json",
        ))
        .unwrap();
    assert_eq!(
        cluster
            .post(
                &cluster.client_for(&a, &bundle, None),
                &a,
                "/mutate?timeout=10s",
                &review
            )
            .await,
        Ok(200)
    );

    // One CA and one serving certificate were issued between them.
    let issued = async |kind: &str| {
        let mut total = 0.0;
        for server in [&a, &b] {
            let text = reqwest::get(format!("{}/metrics", server.ops))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            total += metric_value(
                &text,
                &format!("nodewright_certificates_issued_total{{kind=\"{kind}\"}}"),
            );
        }
        total
    };
    assert_eq!(issued("ca").await, 1.0);
    assert_eq!(issued("serving").await, 1.0);

    // A reset caBundle (a `kubectl apply` or `helm upgrade` of the configuration) is repaired
    // from the watch, well before the 30 s resync.
    Api::<MutatingWebhookConfiguration>::all(cluster.client.clone())
        .patch(
            &cluster.install.webhook_name,
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([
                    {"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": ""}
                ]))
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    let reset = Instant::now();
    eventually!(a, "caBundle repaired", cluster.bundles_are(&bundle).await);
    let repaired = reset.elapsed();
    println!("caBundle reset repaired after {} ms", repaired.as_millis());
    assert!(repaired < Duration::from_secs(10));

    // Logs stay structured through certificate work and watches.
    assert!(common::assert_structured_logs(&a.logs()) >= 5);
    // A restarted replica keeps the CA.
    drop(a);
    let c = cluster.serve(&[]);
    assert_eq!(
        cluster.secret_text(&cluster.ca_secret(), "tls.crt").await,
        ca
    );
    assert_eq!(cluster.served_leaf(&c, &bundle).await.unwrap(), leaf_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_certificate_and_ca_rotate_without_a_restart() {
    let cluster = Cluster::start().await;
    // Renewal when a third of the validity is left: the pair every ~4 s, the CA after ~16 s.
    let server = cluster.serve(&["--cert-validity", "6s", "--ca-validity", "24s"]);
    let first_ca = cluster.secret_text(&cluster.ca_secret(), "tls.crt").await;
    let first_leaf = cluster.served_leaf(&server, &first_ca).await.unwrap();

    // Whatever happens, a client trusting what the webhook configuration says is never refused.
    let mut seen_leaves = vec![first_leaf.clone()];
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut rotated_ca = None;
    while Instant::now() < deadline {
        // Read the caBundle after the handshake too: a rotation between reading it and
        // connecting is what an apiserver sees as an update of the configuration.
        let before = cluster.ca_bundles().await[0].clone();
        let leaf = match cluster.served_leaf(&server, &before).await {
            Ok(leaf) => leaf,
            Err(_) => {
                let after = cluster.ca_bundles().await[0].clone();
                cluster
                    .served_leaf(&server, &after)
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "handshake against the caBundle failed: {e}\n{}",
                            server.logs()
                        )
                    })
            }
        };
        if !seen_leaves.contains(&leaf) {
            seen_leaves.push(leaf);
        }
        let ca = cluster.secret_text(&cluster.ca_secret(), "tls.crt").await;
        if ca != first_ca && rotated_ca.is_none() {
            rotated_ca = Some(ca);
        }
        if let Some(new_ca) = &rotated_ca {
            let serving = cluster
                .secret_text(&cluster.install.tls_secret, "tls.crt")
                .await;
            if nodewright::tls::certs::issued_by(&serving, new_ca) && seen_leaves.len() >= 3 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let new_ca = rotated_ca.unwrap_or_else(|| panic!("the CA never rotated: {}", server.logs()));
    assert!(
        seen_leaves.len() >= 3,
        "the serving certificate rotated ({} seen): {}",
        seen_leaves.len(),
        server.logs()
    );
    // Right after the CA rotation the bundle trusts both CAs, the new one first.
    let bundle = cluster.secret_text(&cluster.ca_secret(), "ca.crt").await;
    let cas = nodewright::tls::certs::split_pem(&bundle);
    assert_eq!(cas.first(), Some(&new_ca));
    assert!(cas.contains(&first_ca), "old CA kept until it expires");
    eventually!(
        server,
        "bundle in the webhooks",
        cluster.bundles_are(&bundle).await
    );
    let text = reqwest::get(format!("{}/metrics", server.ops))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metric_value(&text, "nodewright_certificates_issued_total{kind=\"ca\"}") >= 2.0);
    assert_eq!(
        metric_value(
            &text,
            "nodewright_last_reload_successful{kind=\"certificate\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extender_requires_the_client_certificate_issued_for_kube_scheduler() {
    let cluster = Cluster::start().await;
    let server = cluster.serve(&["--extender-client-secret", &cluster.install.client_secret]);
    let bundle = cluster.secret_text(&cluster.ca_secret(), "ca.crt").await;
    eventually!(server, "client Secret", {
        cluster
            .secret(&cluster.install.client_secret)
            .await
            .is_some()
    });
    let identity = format!(
        "{}{}",
        cluster
            .secret_text(&cluster.install.client_secret, "tls.crt")
            .await,
        cluster
            .secret_text(&cluster.install.client_secret, "tls.key")
            .await
    );
    assert_eq!(
        cluster
            .secret_text(&cluster.install.client_secret, "ca.crt")
            .await,
        bundle
    );

    let anonymous = cluster.client_for(&server, &bundle, None);
    assert_eq!(
        cluster
            .post(&anonymous, &server, "/scheduler/filter", FILTER_CALL)
            .await,
        Ok(403)
    );
    assert_eq!(
        cluster
            .post(&anonymous, &server, "/scheduler/prioritize", FILTER_CALL)
            .await,
        Ok(403)
    );
    // The admission paths ask for no certificate: the apiserver sends none.
    let review =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(
            "tests/data/fixtures/admissionreview_v1_pod_create_kubectl__kubewarden_kwctl.json",
        ))
        .unwrap();
    assert_eq!(
        cluster.post(&anonymous, &server, "/mutate", &review).await,
        Ok(200)
    );

    let scheduler = cluster.client_for(&server, &bundle, Some(&identity));
    assert_eq!(
        cluster
            .post(&scheduler, &server, "/scheduler/filter", FILTER_CALL)
            .await,
        Ok(200)
    );
    assert_eq!(
        cluster
            .post(&scheduler, &server, "/scheduler/prioritize", FILTER_CALL)
            .await,
        Ok(200)
    );

    // A certificate from another CA does not get through the handshake.
    let other = nodewright::tls::certs::generate_ca(time::Duration::days(1)).unwrap();
    let (cert, key) = nodewright::tls::certs::issue(
        &other,
        nodewright::tls::certs::Leaf::Client("intruder"),
        time::Duration::days(1),
    )
    .unwrap();
    let intruder = cluster.client_for(&server, &bundle, Some(&format!("{cert}{key}")));
    let refused = cluster
        .post(&intruder, &server, "/scheduler/filter", FILTER_CALL)
        .await;
    assert!(refused.is_err(), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provided_certificates_get_their_ca_file_written_into_the_webhooks() {
    let cluster = Cluster::start().await;
    let dir = cluster.dir.path();
    let first = nodewright::tls::certs::generate(&cluster.service_names(), time::Duration::days(1))
        .unwrap();
    nodewright::tls::certs::write_bundle(dir, &first).unwrap();
    let (cert, key, ca) = (dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.crt"));
    let server = Server::start_with(
        &[
            "--namespace",
            &cluster.install.namespace,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--ca-bundle-file",
            ca.to_str().unwrap(),
            "--webhook-configuration",
            &cluster.install.webhook_name,
        ],
        Some(&cluster.install.kubeconfig),
    );
    eventually!(
        server,
        "caBundle from the file",
        cluster.bundles_are(&first.ca_pem).await
    );
    assert!(cluster.served_leaf(&server, &first.ca_pem).await.is_ok());

    // cert-manager or an operator replaces the Secret: the new CA reaches the webhooks.
    let second =
        nodewright::tls::certs::generate(&cluster.service_names(), time::Duration::days(1))
            .unwrap();
    let both = format!("{}{}", second.ca_pem, first.ca_pem);
    std::fs::write(&ca, &both).unwrap();
    std::fs::write(&key, &second.key_pem).unwrap();
    std::fs::write(&cert, &second.cert_pem).unwrap();
    eventually!(server, "caBundle updated", cluster.bundles_are(&both).await);
    eventually!(server, "new certificate served", {
        cluster.served_leaf(&server, &second.ca_pem).await.is_ok()
    });
    let encoded = base64::engine::general_purpose::STANDARD.encode(&both);
    let raw = Api::<MutatingWebhookConfiguration>::all(cluster.client.clone())
        .get(&cluster.install.webhook_name)
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&raw).unwrap()["webhooks"][0]["clientConfig"]["caBundle"],
        json!(encoded),
        "caBundle is the base64 of the PEM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extender_client_ca_file_is_enforced_and_reloaded_standalone() {
    let dir = tempfile::tempdir().unwrap();
    let serving = nodewright::tls::certs::generate(
        &nodewright::tls::certs::local_names(),
        time::Duration::days(1),
    )
    .unwrap();
    let ca_a = nodewright::tls::certs::generate_ca(time::Duration::days(1)).unwrap();
    let ca_b = nodewright::tls::certs::generate_ca(time::Duration::days(1)).unwrap();
    let identity = |ca: &nodewright::tls::certs::CaPair| {
        let (cert, key) = nodewright::tls::certs::issue(
            ca,
            nodewright::tls::certs::Leaf::Client("kube-scheduler"),
            time::Duration::days(1),
        )
        .unwrap();
        format!("{cert}{key}")
    };
    nodewright::tls::certs::write_bundle(dir.path(), &serving).unwrap();
    let (cert, key, client_ca) = (
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("client-ca.crt"),
    );
    std::fs::write(&client_ca, &ca_a.cert_pem).unwrap();
    let server = Server::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--extender-client-ca",
        client_ca.to_str().unwrap(),
    ]);
    let call = |identity: Option<String>| {
        let mut builder = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(serving.ca_pem.as_bytes()).unwrap(),
            )
            .timeout(Duration::from_secs(5));
        if let Some(pem) = identity {
            builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        let client = builder.build().unwrap();
        let url = server.https_url("/scheduler/filter");
        async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(FILTER_CALL)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| format!("{e:?}"))
        }
    };
    assert_eq!(call(None).await, Ok(403));
    assert_eq!(call(Some(identity(&ca_a))).await, Ok(200));
    assert!(call(Some(identity(&ca_b))).await.is_err());
    // The CA file is replaced (a Secret update): CA B's clients get in, CA A's no longer.
    std::fs::write(&client_ca, &ca_b.cert_pem).unwrap();
    eventually!(
        server,
        "client CA reloaded",
        call(Some(identity(&ca_b))).await == Ok(200)
    );
    assert!(call(Some(identity(&ca_a))).await.is_err());
}
