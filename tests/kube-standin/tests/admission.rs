//! Admission webhooks through the real kube-rs client: the stand-in calls an in-test HTTPS
//! (HTTP/2) webhook server as kube-apiserver would, and the round-robin proxy.

mod common;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use common::{bounded, env, pod};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the test webhook server received: (path, AdmissionReview request, ALPN protocol).
#[derive(Default)]
struct Seen {
    calls: Mutex<Vec<(String, Value)>>,
    alpn: Mutex<Vec<Option<Vec<u8>>>>,
}

impl Seen {
    fn calls(&self, path: &str) -> Vec<Value> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

struct Webhook {
    addr: SocketAddr,
    ca_b64: String,
    seen: Arc<Seen>,
    _task: tokio::task::JoinHandle<()>,
}

impl Webhook {
    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }
}

fn allow(uid: &str) -> Value {
    json!({"uid": uid, "allowed": true})
}

fn label_patch(req: &Value, key: &str, value: String) -> Value {
    let has_labels = req
        .pointer("/object/metadata/labels")
        .is_some_and(Value::is_object);
    let mut ops = Vec::new();
    if !has_labels {
        ops.push(json!({"op": "add", "path": "/metadata/labels", "value": {}}));
    }
    ops.push(json!({"op": "add", "path": format!("/metadata/labels/{key}"), "value": value}));
    Value::Array(ops)
}

fn with_patch(uid: &str, patch: &Value) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
    json!({"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": b64})
}

/// The test webhook: behaviour by path.
async fn hook(State(seen): State<Arc<Seen>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let body: Bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let request = review["request"].clone();
    let mut recorded = request.clone();
    recorded["_query"] = json!(query);
    seen.calls.lock().unwrap().push((path.clone(), recorded));
    let uid = request["uid"].as_str().unwrap_or("").to_string();
    let name = request
        .pointer("/object/metadata/name")
        .or_else(|| request.pointer("/oldObject/metadata/name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let response = match path.as_str() {
        // Adds `mutated: yes`.
        "/mutate" => with_patch(&uid, &label_patch(&request, "mutated", "yes".into())),
        // Appends its letter to the `order` label.
        p if p.starts_with("/order/") => {
            let letter = p.trim_start_matches("/order/");
            let before = request
                .pointer("/object/metadata/labels/order")
                .and_then(Value::as_str)
                .unwrap_or("");
            with_patch(
                &uid,
                &label_patch(&request, "order", format!("{before}{letter}")),
            )
        }
        "/validate" if name == "deny-me" => json!({
            "uid": uid, "allowed": false,
            "status": {"message": "no deny-me pods here"},
            "warnings": ["deny-me seen"],
        }),
        "/validate" => {
            let mut r = allow(&uid);
            r["warnings"] = json!(["checked by the test webhook"]);
            r
        }
        "/validate-422" => json!({
            "uid": uid, "allowed": false,
            "status": {"code": 422, "reason": "Invalid", "message": "not like that"},
        }),
        // A validating webhook may not patch: the call counts as failed.
        "/validate-patch" => with_patch(&uid, &json!([])),
        // A patch that cannot apply (no annotations to replace).
        "/bad-patch" => with_patch(
            &uid,
            &json!([{"op": "replace", "path": "/metadata/annotations/x", "value": "y"}]),
        ),
        "/wrong-uid" => allow("not-the-uid"),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            allow(&uid)
        }
        "/error" => {
            return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response();
        }
        _ => allow(&uid),
    };
    axum::Json(json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}))
        .into_response()
}

/// A CA, and a server certificate for localhost / 127.0.0.1 signed by it.
fn certificates() -> (String, Vec<u8>, Vec<u8>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), cert.der().to_vec(), key.serialize_der())
}

async fn webhook_server() -> Webhook {
    let (ca_pem, cert, key) = certificates();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.into());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.into()], key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let router = Router::new().fallback(hook).with_state(seen.clone());
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let router = router.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                seen.alpn
                    .lock()
                    .unwrap()
                    .push(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec));
                let svc = TowerToHyperService::new(router);
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Webhook {
        addr,
        ca_b64: base64::engine::general_purpose::STANDARD.encode(ca_pem),
        seen,
        _task: task,
    }
}

fn webhook(name: &str, url: &str, ca: &str, extra: Value) -> Value {
    let mut h = json!({
        "name": name,
        "admissionReviewVersions": ["v1"],
        "clientConfig": {"url": url, "caBundle": ca},
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
        "sideEffects": "None",
        "timeoutSeconds": 5,
    });
    if let (Value::Object(h), Value::Object(extra)) = (&mut h, extra) {
        h.extend(extra);
    }
    h
}

async fn register(client: &kube::Client, kind: &str, name: &str, hooks: Vec<Value>) {
    let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
    let plural = format!("{}s", kind.to_lowercase());
    let ar = ApiResource::from_gvk_with_plural(&gvk, &plural);
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let obj = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": kind,
        "metadata": {"name": name}, "webhooks": hooks,
    });
    api.create(
        &PostParams::default(),
        &serde_json::from_value(obj).unwrap(),
    )
    .await
    .unwrap();
}

async fn unregister(client: &kube::Client, kind: &str, name: &str) {
    let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
    let plural = format!("{}s", kind.to_lowercase());
    let ar = ApiResource::from_gvk_with_plural(&gvk, &plural);
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    api.delete(name, &DeleteParams::default()).await.unwrap();
}

fn status_of(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A port nothing listens on.
async fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn create_is_mutated_validated_and_stored() {
    bounded(30, async {
        let e = env().await;
        let wh = webhook_server().await;
        register(&e.client, "MutatingWebhookConfiguration", "mutator",
            vec![webhook("mutate.test.io", &wh.url("/mutate"), &wh.ca_b64, json!({}))]).await;
        register(&e.client, "ValidatingWebhookConfiguration", "validator",
            vec![webhook("validate.test.io", &wh.url("/validate"), &wh.ca_b64, json!({}))]).await;
        let pods: Api<Pod> = Api::namespaced(e.client.clone(), "default");

        let created = pods.create(&PostParams::default(), &pod("ok-pod", &[("app", "x")], None)).await.unwrap();
        let labels = created.metadata.labels.clone().unwrap();
        assert_eq!(labels["mutated"], "yes");
        assert_eq!(labels["app"], "x");
        let stored = pods.get("ok-pod").await.unwrap();
        assert_eq!(stored.metadata.labels.unwrap()["mutated"], "yes");

        // The mutating webhook saw the body before the system fields; the validating one saw
        // the object as it is stored (mutated, uid and creationTimestamp set).
        let m = &wh.seen.calls("/mutate")[0];
        let v = &wh.seen.calls("/validate")[0];
        assert_eq!(m["_query"], "timeout=5s");
        assert_eq!(m["operation"], "CREATE");
        assert_eq!(m["kind"], json!({"group": "", "version": "v1", "kind": "Pod"}));
        assert_eq!(m["resource"], json!({"group": "", "version": "v1", "resource": "pods"}));
        assert_eq!(m["requestResource"], m["resource"]);
        assert_eq!(m["namespace"], "default");
        assert_eq!(m["name"], "ok-pod");
        assert_eq!(m["dryRun"], false);
        assert_eq!(m["options"]["kind"], "CreateOptions");
        assert!(m["oldObject"].is_null());
        assert!(m["object"]["metadata"].get("uid").is_none());
        assert_eq!(v["object"]["metadata"]["labels"]["mutated"], "yes");
        assert_eq!(v["object"]["metadata"]["uid"].as_str(), created.metadata.uid.as_deref());
        assert!(v["object"]["metadata"]["creationTimestamp"].is_string());
        assert_eq!(v["object"]["status"]["phase"], "Pending");
        assert_ne!(m["uid"], v["uid"], "every call has a fresh uid");
        assert!(wh.seen.alpn.lock().unwrap().iter().all(|p| p.as_deref() == Some(b"h2")), "HTTP/2");

        // generateName: the mutating webhook sees no name, the validating one the generated name.
        let mut gen_pod = pod("", &[], None);
        gen_pod.metadata.name = None;
        gen_pod.metadata.generate_name = Some("gen-".into());
        let g = pods.create(&PostParams::default(), &gen_pod).await.unwrap();
        let gname = g.metadata.name.unwrap();
        assert!(gname.starts_with("gen-"));
        assert!(wh.seen.calls("/mutate")[1].get("name").is_none());
        assert_eq!(wh.seen.calls("/validate")[1]["name"], gname.as_str());

        // Denied: 403 Forbidden, worded as the apiserver words it, and nothing is stored.
        let err = status_of(pods.create(&PostParams::default(), &pod("deny-me", &[], None)).await.unwrap_err());
        assert_eq!(err.code, 403);
        assert_eq!(err.reason, "Forbidden");
        assert_eq!(
            err.message,
            "pods \"deny-me\" is forbidden: admission webhook \"validate.test.io\" denied the request: no deny-me pods here"
        );
        assert!(pods.get_opt("deny-me").await.unwrap().is_none());

        // Warnings become Warning headers.
        let resp = reqwest::Client::new()
            .post(format!("{}/api/v1/namespaces/default/pods", e.standin.url()))
            .json(&json!({"metadata": {"name": "warned"}, "spec": {"containers": [{"name": "a", "image": "b"}]}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let warnings: Vec<String> = resp.headers().get_all("warning").iter().map(|h| h.to_str().unwrap().to_string()).collect();
        assert_eq!(warnings, vec!["299 - \"checked by the test webhook\"".to_string()]);

        // A webhook's own code and reason are kept.
        register(&e.client, "ValidatingWebhookConfiguration", "limiter",
            vec![webhook("limit.test.io", &wh.url("/validate-422"), &wh.ca_b64, json!({}))]).await;
        let err = status_of(pods.create(&PostParams::default(), &pod("p422", &[], None)).await.unwrap_err());
        assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
        assert!(err.message.ends_with("admission webhook \"limit.test.io\" denied the request: not like that"), "{}", err.message);
    })
    .await;
}

#[tokio::test]
async fn failure_policy_fail_and_ignore() {
    bounded(40, async {
        let e = env().await;
        let wh = webhook_server().await;
        let pods: Api<Pod> = Api::namespaced(e.client.clone(), "default");
        let port = dead_port().await;
        let down = format!("https://127.0.0.1:{port}/validate");
        register(&e.client, "ValidatingWebhookConfiguration", "down",
            vec![webhook("down.test.io", &down, &wh.ca_b64, json!({}))]).await;
        let err = status_of(pods.create(&PostParams::default(), &pod("a", &[], None)).await.unwrap_err());
        assert_eq!((err.code, err.reason.as_str()), (500, "InternalError"));
        let prefix = format!(
            "Internal error occurred: failed calling webhook \"down.test.io\": failed to call webhook: Post \"{down}?timeout=5s\": "
        );
        assert!(err.message.starts_with(&prefix), "{}", err.message);
        assert!(pods.get_opt("a").await.unwrap().is_none());
        unregister(&e.client, "ValidatingWebhookConfiguration", "down").await;

        // Ignore: admitted anyway.
        register(&e.client, "ValidatingWebhookConfiguration", "down-ignored",
            vec![webhook("down.test.io", &down, &wh.ca_b64, json!({"failurePolicy": "Ignore"}))]).await;
        pods.create(&PostParams::default(), &pod("b", &[], None)).await.unwrap();
        unregister(&e.client, "ValidatingWebhookConfiguration", "down-ignored").await;

        // Other failed calls: a timeout, a 500, a wrong uid, a certificate not signed by the
        // caBundle, a service reference.
        let other_ca = webhook_server().await.ca_b64;
        let cases = [
            ("slow.test.io", wh.url("/slow"), wh.ca_b64.clone(), json!({"timeoutSeconds": 1}), "context deadline exceeded"),
            ("error.test.io", wh.url("/error"), wh.ca_b64.clone(), json!({}), "an error on the server (\"boom\")"),
            ("uid.test.io", wh.url("/wrong-uid"), wh.ca_b64.clone(), json!({}), "received invalid webhook response: expected response.uid="),
            ("tls.test.io", wh.url("/validate"), other_ca, json!({}), "failed to call webhook: Post"),
        ];
        for (name, url, ca, extra, want) in cases {
            register(&e.client, "ValidatingWebhookConfiguration", name, vec![webhook(name, &url, &ca, extra)]).await;
            let started = Instant::now();
            let err = status_of(pods.create(&PostParams::default(), &pod("c", &[], None)).await.unwrap_err());
            assert!(started.elapsed() < Duration::from_secs(3), "{name} took {:?}", started.elapsed());
            assert_eq!(err.code, 500, "{name}");
            assert!(err.message.contains(&format!("failed calling webhook \"{name}\"")), "{}", err.message);
            assert!(err.message.contains(want), "{name}: {}", err.message);
            unregister(&e.client, "ValidatingWebhookConfiguration", name).await;
        }
        let mut svc = webhook("svc.test.io", "", "", json!({"failurePolicy": "Fail"}));
        svc["clientConfig"] = json!({"service": {"name": "x", "namespace": "default"}});
        register(&e.client, "ValidatingWebhookConfiguration", "svc", vec![svc]).await;
        let err = status_of(pods.create(&PostParams::default(), &pod("d", &[], None)).await.unwrap_err());
        assert!(err.message.contains("use clientConfig.url"), "{}", err.message);
    })
    .await;
}

#[tokio::test]
async fn patches_validating_patch_and_unappliable_patch() {
    bounded(30, async {
        let e = env().await;
        let wh = webhook_server().await;
        let pods: Api<Pod> = Api::namespaced(e.client.clone(), "default");
        register(&e.client, "ValidatingWebhookConfiguration", "patcher",
            vec![webhook("vpatch.test.io", &wh.url("/validate-patch"), &wh.ca_b64, json!({}))]).await;
        let err = status_of(pods.create(&PostParams::default(), &pod("a", &[], None)).await.unwrap_err());
        assert_eq!(err.code, 500);
        assert_eq!(
            err.message,
            "Internal error occurred: failed calling webhook \"vpatch.test.io\": received invalid webhook response: validating webhooks may not return patches"
        );
        unregister(&e.client, "ValidatingWebhookConfiguration", "patcher").await;

        // A patch that does not apply is a 500 even with failurePolicy Ignore.
        register(&e.client, "MutatingWebhookConfiguration", "bad",
            vec![webhook("bad.test.io", &wh.url("/bad-patch"), &wh.ca_b64, json!({"failurePolicy": "Ignore"}))]).await;
        let err = status_of(pods.create(&PostParams::default(), &pod("b", &[], None)).await.unwrap_err());
        assert_eq!((err.code, err.reason.as_str()), (500, "InternalError"));
        assert!(err.message.starts_with("Internal error occurred: "), "{}", err.message);
        assert!(pods.get_opt("b").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn dry_run_calls_webhooks_and_stores_nothing() {
    bounded(30, async {
        let e = env().await;
        let wh = webhook_server().await;
        let pods: Api<Pod> = Api::namespaced(e.client.clone(), "default");
        register(
            &e.client,
            "MutatingWebhookConfiguration",
            "mutator",
            vec![webhook(
                "mutate.test.io",
                &wh.url("/mutate"),
                &wh.ca_b64,
                json!({"sideEffects": "NoneOnDryRun"}),
            )],
        )
        .await;
        register(
            &e.client,
            "ValidatingWebhookConfiguration",
            "validator",
            vec![webhook(
                "validate.test.io",
                &wh.url("/validate"),
                &wh.ca_b64,
                json!({}),
            )],
        )
        .await;
        let dry = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let rv = e.standin.resource_version();
        let p = pods.create(&dry, &pod("dry", &[], None)).await.unwrap();
        assert_eq!(p.metadata.labels.unwrap()["mutated"], "yes");
        assert!(pods.get_opt("dry").await.unwrap().is_none());
        assert_eq!(e.standin.resource_version(), rv, "nothing written");
        for path in ["/mutate", "/validate"] {
            let c = &wh.seen.calls(path)[0];
            assert_eq!(c["dryRun"], true);
            assert_eq!(c["options"]["dryRun"], json!(["All"]));
        }
        // Denials still apply to dry runs.
        assert_eq!(
            status_of(
                pods.create(&dry, &pod("deny-me", &[], None))
                    .await
                    .unwrap_err()
            )
            .code,
            403
        );

        // A webhook with side effects refuses dry runs (400) without being called.
        register(
            &e.client,
            "ValidatingWebhookConfiguration",
            "effects",
            vec![webhook(
                "effects.test.io",
                &wh.url("/effects"),
                &wh.ca_b64,
                json!({"sideEffects": "Some"}),
            )],
        )
        .await;
        let err = status_of(
            pods.create(&dry, &pod("dry2", &[], None))
                .await
                .unwrap_err(),
        );
        assert_eq!((err.code, err.reason.as_str()), (400, "BadRequest"));
        assert_eq!(
            err.message,
            "admission webhook \"effects.test.io\" does not support dry run"
        );
        assert!(wh.seen.calls("/effects").is_empty());
        // Not a dry run: it is called.
        pods.create(&PostParams::default(), &pod("real", &[], None))
            .await
            .unwrap();
        assert_eq!(wh.seen.calls("/effects").len(), 1);
    })
    .await;
}

#[tokio::test]
async fn namespace_and_object_selectors_exclude() {
    bounded(30, async {
        let e = env().await;
        let wh = webhook_server().await;
        let nss: Api<Namespace> = Api::all(e.client.clone());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "watched", "labels": {"webhooks": "on"}}})).unwrap();
        nss.create(&PostParams::default(), &ns).await.unwrap();
        register(&e.client, "ValidatingWebhookConfiguration", "selective", vec![
            webhook("ns.test.io", &wh.url("/ns"), &wh.ca_b64, json!({"namespaceSelector": {"matchLabels": {"webhooks": "on"}}})),
            webhook("obj.test.io", &wh.url("/obj"), &wh.ca_b64, json!({"objectSelector": {"matchExpressions": [{"key": "skip", "operator": "DoesNotExist"}]}})),
            webhook("meta-ns.test.io", &wh.url("/meta-ns"), &wh.ca_b64, json!({"namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["default"]}]}})),
        ]).await;
        let default: Api<Pod> = Api::namespaced(e.client.clone(), "default");
        let watched: Api<Pod> = Api::namespaced(e.client.clone(), "watched");
        default.create(&PostParams::default(), &pod("a", &[], None)).await.unwrap();
        watched.create(&PostParams::default(), &pod("b", &[("skip", "yes")], None)).await.unwrap();
        let names = |path: &str| -> Vec<String> {
            wh.seen.calls(path).iter().map(|c| c["name"].as_str().unwrap_or("").to_string()).collect()
        };
        assert_eq!(names("/ns"), vec!["b"]);
        assert_eq!(names("/obj"), vec!["a"]);
        assert_eq!(names("/meta-ns"), vec!["a"]);
    })
    .await;
}

#[tokio::test]
async fn mutating_order_and_reinvocation() {
    bounded(30, async {
        let e = env().await;
        let wh = webhook_server().await;
        // Registered out of order: configurations run by name, then by list order.
        register(
            &e.client,
            "MutatingWebhookConfiguration",
            "zz-last",
            vec![webhook(
                "z.test.io",
                &wh.url("/order/z"),
                &wh.ca_b64,
                json!({}),
            )],
        )
        .await;
        register(
            &e.client,
            "MutatingWebhookConfiguration",
            "aa-first",
            vec![
                webhook("a.test.io", &wh.url("/order/a"), &wh.ca_b64, json!({})),
                webhook("b.test.io", &wh.url("/order/b"), &wh.ca_b64, json!({})),
            ],
        )
        .await;
        let pods: Api<Pod> = Api::namespaced(e.client.clone(), "default");
        let p = pods
            .create(&PostParams::default(), &pod("p", &[], None))
            .await
            .unwrap();
        assert_eq!(p.metadata.labels.unwrap()["order"], "abz");

        // IfNeeded: `r` runs first; later webhooks change the object, so it is called again.
        register(
            &e.client,
            "MutatingWebhookConfiguration",
            "a0-reinvoked",
            vec![webhook(
                "r.test.io",
                &wh.url("/order/r"),
                &wh.ca_b64,
                json!({"reinvocationPolicy": "IfNeeded"}),
            )],
        )
        .await;
        let p = pods
            .create(&PostParams::default(), &pod("q", &[], None))
            .await
            .unwrap();
        assert_eq!(p.metadata.labels.unwrap()["order"], "rabzr");
    })
    .await;
}

#[tokio::test]
async fn update_and_delete_go_through_webhooks() {
    bounded(30, async {
        let e = env().await;
        let wh = webhook_server().await;
        let pods: Api<Pod> = Api::namespaced(e.client.clone(), "default");
        pods.create(&PostParams::default(), &pod("deny-me", &[], None)).await.unwrap();
        pods.create(&PostParams::default(), &pod("other", &[], None)).await.unwrap();
        let rules = json!({"rules": [{"operations": ["UPDATE", "DELETE"], "apiGroups": [""], "apiVersions": ["*"], "resources": ["pods"], "scope": "Namespaced"}]});
        register(&e.client, "ValidatingWebhookConfiguration", "guard",
            vec![webhook("validate.test.io", &wh.url("/validate"), &wh.ca_b64, rules)]).await;
        let status_rules = json!({"rules": [{"operations": ["UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods/status"]}]});
        register(&e.client, "MutatingWebhookConfiguration", "status",
            vec![webhook("status.test.io", &wh.url("/status"), &wh.ca_b64, status_rules)]).await;

        // PATCH is an UPDATE with the old object.
        let patch = Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}}));
        pods.patch("other", &PatchParams::default(), &patch).await.unwrap();
        let c = &wh.seen.calls("/validate")[0];
        assert_eq!(c["operation"], "UPDATE");
        assert_eq!(c["object"]["metadata"]["labels"]["x"], "1");
        assert!(c["oldObject"]["metadata"].get("labels").is_none_or(|l| l.get("x").is_none()));
        assert_eq!(c["options"]["kind"], "UpdateOptions");
        let err = status_of(pods.patch("deny-me", &PatchParams::default(), &patch).await.unwrap_err());
        assert_eq!(err.code, 403);

        // DELETE: oldObject only; denied → still there.
        let err = status_of(pods.delete("deny-me", &DeleteParams::default()).await.unwrap_err());
        assert_eq!(err.code, 403);
        assert!(pods.get_opt("deny-me").await.unwrap().is_some());
        pods.delete("other", &DeleteParams::default()).await.unwrap();
        let d = wh.seen.calls("/validate").into_iter().find(|c| c["operation"] == "DELETE" && c["name"] == "other").unwrap();
        assert!(d["object"].is_null());
        assert_eq!(d["oldObject"]["metadata"]["name"], "other");
        assert_eq!(d["options"]["kind"], "DeleteOptions");

        // `pods` does not match pods/status, and pods/status does not match pods.
        let before = wh.seen.calls("/validate").len();
        let st = Patch::Merge(json!({"status": {"phase": "Running"}}));
        pods.patch_status("deny-me", &PatchParams::default(), &st).await.unwrap();
        assert_eq!(wh.seen.calls("/validate").len(), before);
        let s = &wh.seen.calls("/status")[0];
        assert_eq!(s["subResource"], "status");
        assert_eq!(s["operation"], "UPDATE");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_concurrent_creates() {
    bounded(60, async {
        let e = env().await;
        let wh = webhook_server().await;
        register(
            &e.client,
            "MutatingWebhookConfiguration",
            "mutator",
            vec![webhook(
                "mutate.test.io",
                &wh.url("/mutate"),
                &wh.ca_b64,
                json!({}),
            )],
        )
        .await;
        register(
            &e.client,
            "ValidatingWebhookConfiguration",
            "validator",
            vec![webhook(
                "validate.test.io",
                &wh.url("/validate"),
                &wh.ca_b64,
                json!({}),
            )],
        )
        .await;
        let pods: Api<Pod> = Api::namespaced(e.client.clone(), "default");
        let results = futures::future::join_all((0..300).map(|i| {
            let pods = pods.clone();
            async move {
                pods.create(&PostParams::default(), &pod(&format!("p-{i}"), &[], None))
                    .await
            }
        }))
        .await;
        assert!(
            results.iter().all(Result::is_ok),
            "{:?}",
            results.iter().find(|r| r.is_err())
        );
        let listed = pods
            .list(&ListParams::default().labels("mutated=yes"))
            .await
            .unwrap();
        assert_eq!(listed.items.len(), 300);
        assert_eq!(wh.seen.calls("/validate").len(), 300);
    })
    .await;
}

/// A TCP server that writes `id` to every connection and closes it.
async fn tagged_server(id: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(id.as_bytes()).await;
        }
    });
    addr
}

async fn read_through(addr: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

#[tokio::test]
async fn proxy_round_robins_and_skips_dead_backends() {
    use kube_standin::proxy::RoundRobin;
    bounded(20, async {
        let a = tagged_server("a").await;
        let b = tagged_server("b").await;
        let proxy = RoundRobin::start(vec![a, b]).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(read_through(proxy.addr()).await);
        }
        got.sort();
        assert_eq!(got, vec!["a", "a", "b", "b"]);
        assert_eq!(proxy.connections()[&a], 2);

        // A dead backend is skipped for the next one.
        let dead: SocketAddr = format!("127.0.0.1:{}", dead_port().await).parse().unwrap();
        proxy.set_backends(vec![dead, b]);
        for _ in 0..3 {
            assert_eq!(read_through(proxy.addr()).await, "b");
        }
        proxy.set_backends(vec![a]);
        assert_eq!(read_through(proxy.addr()).await, "a");

        // TLS passes through: the webhook behind the proxy is reached by its own name.
        let e = env().await;
        let wh = webhook_server().await;
        proxy.set_backends(vec![wh.addr]);
        let url = format!("https://localhost:{}/validate", proxy.addr().port());
        register(
            &e.client,
            "ValidatingWebhookConfiguration",
            "proxied",
            vec![webhook("validate.test.io", &url, &wh.ca_b64, json!({}))],
        )
        .await;
        let pods: Api<Pod> = Api::namespaced(e.client.clone(), "default");
        pods.create(&PostParams::default(), &pod("through-proxy", &[], None))
            .await
            .unwrap();
        assert_eq!(
            status_of(
                pods.create(&PostParams::default(), &pod("deny-me", &[], None))
                    .await
                    .unwrap_err()
            )
            .code,
            403
        );
        assert_eq!(wh.seen.calls("/validate").len(), 2);
        proxy.shutdown().await;
    })
    .await;
}
