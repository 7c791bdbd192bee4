//! The test-side peers of the end-to-end tests, tested on their own so that they can fail:
//! the kube-scheduler stand-in (`common::scheduler`) against a tiny in-test extender that
//! records what it gets and answers fixed replies, and the kubelet stand-in (`common::kubelet`)
//! turning moto EC2 instances into Nodes.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{
    InstanceType, Placement, RequestLaunchTemplateData, ResourceType, Tag, TagSpecification,
};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use common::kubelet::{KubeletConfig, Kubelets, ec2_client, parse_kubelet_flags};
use common::moto::Moto;
use common::scheduler::{Decision, ExtenderConfig, Scheduler, SchedulerConfig, parse_milli};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use kube_standin::{Handle, StandIn};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Fixtures

struct Cluster {
    _standin: Handle,
    client: kube::Client,
}

async fn cluster() -> Cluster {
    let standin = StandIn::start("127.0.0.1:0").await.unwrap();
    let client = standin.client().await.unwrap();
    Cluster {
        _standin: standin,
        client,
    }
}

impl Cluster {
    async fn node(&self, name: &str, zone: &str, cpu: &str, extra: Value) {
        let mut n = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone,
            }},
            "spec": {},
            "status": {
                "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
                "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        });
        json_patch::merge(&mut n, &extra);
        let n: Node = serde_json::from_value(n).unwrap();
        Api::<Node>::all(self.client.clone())
            .create(&PostParams::default(), &n)
            .await
            .unwrap();
    }

    async fn pod(&self, name: &str, extra: Value) {
        let mut p = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "nginx",
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
        });
        json_patch::merge(&mut p, &extra);
        let p: Pod = serde_json::from_value(p).unwrap();
        self.pods()
            .create(&PostParams::default(), &p)
            .await
            .unwrap();
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    async fn get_pod(&self, name: &str) -> Value {
        serde_json::to_value(self.pods().get(name).await.unwrap()).unwrap()
    }

    async fn node_of(&self, pod: &str) -> Option<String> {
        self.pods().get(pod).await.unwrap().spec?.node_name
    }
}

fn condition(pod: &Value, ty: &str) -> Option<Value> {
    pod.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .cloned()
}

/// Poll `check` every 50 ms for up to `secs`.
async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type Reply = Box<dyn Fn(&Value) -> (u16, Value) + Send + Sync>;

/// The in-test extender: records `(path, raw body)` and answers with the reply set per verb.
#[derive(Clone)]
struct Extender {
    addr: SocketAddr,
    tls: bool,
    ca_pem: String,
    seen: Arc<Mutex<Vec<(String, String)>>>,
    replies: Arc<Mutex<BTreeMap<String, Reply>>>,
}

impl Extender {
    /// Default replies: filter keeps every node it is given (PascalCase, NodeNames or Nodes
    /// as it was sent), prioritize scores every node 0.
    async fn start(tls: bool) -> Extender {
        let (ca_pem, cert, key) = certificates();
        let ext = Extender {
            addr: "127.0.0.1:0".parse().unwrap(),
            tls,
            ca_pem,
            seen: Arc::default(),
            replies: Arc::default(),
        };
        ext.reply("filter", |args| {
            (
                200,
                json!({"Nodes": args["Nodes"], "NodeNames": args["NodeNames"],
                       "FailedNodes": {}, "FailedAndUnresolvableNodes": null, "Error": ""}),
            )
        });
        ext.reply("prioritize", |args| {
            let names = names_in(args);
            (
                200,
                Value::Array(
                    names
                        .iter()
                        .map(|n| json!({"Host": n, "Score": 0}))
                        .collect(),
                ),
            )
        });
        let router = Router::new().fallback(handle).with_state(ext.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        if tls {
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
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let (acceptor, router) = (acceptor.clone(), router.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let svc = hyper_util::service::TowerToHyperService::new(router);
                        let _ = hyper_util::server::conn::auto::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                    });
                }
            });
        } else {
            tokio::spawn(async move {
                let _ = axum::serve(listener, router).await;
            });
        }
        Extender { addr, ..ext }
    }

    fn url_prefix(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/scheduler/", self.addr.port())
    }

    fn reply(&self, verb: &str, f: impl Fn(&Value) -> (u16, Value) + Send + Sync + 'static) {
        self.replies
            .lock()
            .unwrap()
            .insert(verb.to_string(), Box::new(f));
    }

    /// Raw bodies received on `/scheduler/<verb>`.
    fn bodies(&self, verb: &str) -> Vec<String> {
        let path = format!("/scheduler/{verb}");
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| *p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

async fn handle(State(ext): State<Extender>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let body: Bytes = axum::body::to_bytes(req.into_body(), 1 << 24)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).into_owned();
    ext.seen.lock().unwrap().push((path.clone(), text.clone()));
    let args: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let verb = path.rsplit('/').next().unwrap_or("");
    let (code, reply) = match ext.replies.lock().unwrap().get(verb) {
        Some(f) => f(&args),
        None => (404, json!({})),
    };
    (StatusCode::from_u16(code).unwrap(), axum::Json(reply)).into_response()
}

/// Node names in ExtenderArgs, either form.
fn names_in(args: &Value) -> Vec<String> {
    match args["NodeNames"].as_array() {
        Some(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        None => args["Nodes"]["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
            .collect(),
    }
}

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

fn fast(extender: Option<ExtenderConfig>) -> SchedulerConfig {
    SchedulerConfig {
        extender,
        initial_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_millis(400),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The scheduler stand-in

#[tokio::test]
async fn infeasible_pods_never_reach_the_extender_and_are_marked_unschedulable() {
    let c = cluster().await;
    let ext = Extender::start(false).await;
    let sched = Scheduler::start_with(
        c.client.clone(),
        fast(Some(ExtenderConfig::new(ext.url_prefix()))),
    );

    // No nodes at all.
    c.pod(
        "lonely",
        json!({"spec": {"nodeSelector": {"role": "plain"}}}),
    )
    .await;
    eventually(5, "no-nodes condition", || async {
        condition(&c.get_pod("lonely").await, "PodScheduled")
            .is_some_and(|cd| cd["message"] == "no nodes available to schedule pods")
    })
    .await;
    let cd = condition(&c.get_pod("lonely").await, "PodScheduled").unwrap();
    assert_eq!(
        (cd["status"].as_str(), cd["reason"].as_str()),
        (Some("False"), Some("Unschedulable"))
    );

    // One node, wrong label, tainted, too small, unschedulable, not ready: every pod fits none.
    c.node(
        "plain",
        "us-east-1a",
        "2",
        json!({"metadata": {"labels": {"role": "plain"}}}),
    )
    .await;
    c.node(
        "tainted",
        "us-east-1a",
        "2",
        json!({
            "metadata": {"labels": {"type": "karpenter"}},
            "spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]},
        }),
    )
    .await;
    c.node(
        "small",
        "us-east-1a",
        "500m",
        json!({"metadata": {"labels": {"type": "karpenter"}}}),
    )
    .await;
    c.node(
        "cordoned",
        "us-east-1a",
        "2",
        json!({
            "metadata": {"labels": {"type": "karpenter"}}, "spec": {"unschedulable": true},
        }),
    )
    .await;
    c.node(
        "booting",
        "us-east-1a",
        "2",
        json!({
            "metadata": {"labels": {"type": "karpenter"}},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]},
        }),
    )
    .await;
    c.pod("picky", json!({"spec": {"nodeSelector": {"type": "karpenter"},
        "containers": [{"name": "app", "image": "nginx", "resources": {"requests": {"cpu": "1"}}}]}}))
    .await;
    let want = "0/5 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match Pod's node affinity/selector, \
                1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, \
                1 node(s) were unschedulable.";
    eventually(5, "unschedulable message", || async {
        condition(&c.get_pod("picky").await, "PodScheduled").is_some_and(|cd| cd["message"] == want)
    })
    .await;
    // "lonely" fits only "plain": bound, after the extender saw only that node.
    assert_eq!(
        sched
            .wait_bound("default/lonely", Duration::from_secs(15))
            .await
            .as_deref(),
        Some("plain"),
        "{}",
        sched.report()
    );

    // Retried on changes and every second, but never sent to the extender.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let picky_calls = sched
        .filter_calls()
        .iter()
        .filter(|c| c.pod == "default/picky")
        .count();
    assert_eq!(picky_calls, 0, "{}", sched.report());
    let marks = sched
        .unschedulable_marks()
        .iter()
        .filter(|(p, _)| p == "default/picky")
        .count();
    assert!(marks >= 2, "retried: {}", sched.report());
    let written = sched
        .decisions()
        .iter()
        .filter(|d| matches!(d, Decision::Unschedulable { pod, written: true, .. } if pod == "default/picky"))
        .count();
    assert_eq!(
        written,
        1,
        "an unchanged condition is not written again: {}",
        sched.report()
    );
    let filters = ext.bodies("filter");
    assert_eq!(
        filters.len(),
        1,
        "only lonely's attempt, with 1 node: {filters:?}"
    );
    assert!(
        filters[0].contains(r#""NodeNames":["plain"]"#),
        "{}",
        filters[0]
    );
    assert!(
        ext.bodies("prioritize").is_empty(),
        "one node left: no prioritize"
    );

    // A node that fits appears: picky is bound to it on the next change.
    c.node(
        "fits",
        "us-east-1a",
        "4",
        json!({"metadata": {"labels": {"type": "karpenter"}}}),
    )
    .await;
    assert_eq!(
        sched
            .wait_bound("default/picky", Duration::from_secs(15))
            .await
            .as_deref(),
        Some("fits")
    );
    let pod = c.get_pod("picky").await;
    assert_eq!(pod["spec"]["nodeName"], "fits");
    assert_eq!(condition(&pod, "PodScheduled").unwrap()["status"], "True");
}

#[tokio::test]
async fn filter_and_prioritize_speak_the_extender_wire_format() {
    let c = cluster().await;
    for (n, z) in [
        ("node-a", "us-east-1a"),
        ("node-b", "us-east-1b"),
        ("node-c", "us-east-1c"),
    ] {
        c.node(n, z, "4", json!({})).await;
    }
    let ext = Extender::start(true).await;
    // The filter drops node-a, answering in lowercase as old Go extenders do.
    ext.reply("filter", |args| {
        let keep: Vec<String> = names_in(args).into_iter().filter(|n| n != "node-a").collect();
        (200, json!({"nodenames": keep, "failedNodes": {"node-a": "nodewright: not this one"}, "error": ""}))
    });
    ext.reply("prioritize", |args| {
        let scores: Vec<Value> = names_in(args)
            .into_iter()
            .map(|n| json!({"host": n, "score": if n == "node-c" { 7 } else { 1 }}))
            .collect();
        (200, Value::Array(scores))
    });
    let mut cfg = ExtenderConfig::new(ext.url_prefix());
    cfg.ca_pem = Some(ext.ca_pem.clone());
    cfg.weight = 2;
    let sched = Scheduler::start_with(c.client.clone(), fast(Some(cfg)));
    c.pod("web", json!({})).await;
    assert_eq!(
        sched
            .wait_bound("default/web", Duration::from_secs(15))
            .await
            .as_deref(),
        Some("node-c"),
        "{}",
        sched.report()
    );

    let filter = ext.bodies("filter");
    assert_eq!(filter.len(), 1);
    let body = &filter[0];
    assert!(body.starts_with(r#"{"Pod":{"#), "Go's field order: {body}");
    assert!(
        body.ends_with(r#","Nodes":null,"NodeNames":["node-a","node-b","node-c"]}"#),
        "{body}"
    );
    let args: Value = serde_json::from_str(body).unwrap();
    assert!(
        args["Pod"].get("apiVersion").is_none() && args["Pod"].get("kind").is_none(),
        "no TypeMeta"
    );
    assert_eq!(args["Pod"]["metadata"]["name"], "web");
    assert!(args["Pod"]["metadata"]["uid"].is_string());

    let prio = ext.bodies("prioritize");
    assert_eq!(prio.len(), 1);
    assert!(
        prio[0].ends_with(r#","Nodes":null,"NodeNames":["node-b","node-c"]}"#),
        "{}",
        prio[0]
    );

    let calls = sched.extender_calls();
    assert_eq!(calls.len(), 2);
    assert!(
        calls
            .iter()
            .all(|c| c.error.is_none() && c.status == Some(200)),
        "{calls:?}"
    );
    assert_eq!(calls[0].verb, "filter");
    assert_eq!(calls[1].reply.as_ref().unwrap()[1]["score"], 7);
    assert_eq!(
        sched.bindings(),
        vec![("default/web".to_string(), "node-c".to_string())]
    );

    // A pod only node-a's zone can take: after the extender drops node-a it fits nothing, and
    // the extender's reason is in the message.
    c.pod(
        "zonal",
        json!({"spec": {"nodeSelector": {"topology.kubernetes.io/zone": "us-east-1a"}}}),
    )
    .await;
    eventually(5, "extender-filtered message", || async {
        condition(&c.get_pod("zonal").await, "PodScheduled").is_some_and(|cd| {
            cd["message"]
                == "0/3 nodes are available: 1 nodewright: not this one, 2 node(s) didn't match Pod's node affinity/selector."
        })
    })
    .await;
    assert_eq!(
        ext.bodies("prioritize").len(),
        1,
        "nothing left to prioritize"
    );
}

#[tokio::test]
async fn without_node_cache_the_extender_gets_and_returns_node_objects() {
    let c = cluster().await;
    c.node("node-a", "us-east-1a", "4", json!({})).await;
    c.node("node-b", "us-east-1b", "4", json!({})).await;
    let ext = Extender::start(false).await;
    ext.reply("filter", |args| {
        // Keep only node-b, as a Nodes list.
        let items: Vec<Value> = args["Nodes"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["metadata"]["name"] == "node-b")
            .cloned()
            .collect();
        (
            200,
            json!({"Nodes": {"metadata": {}, "items": items}, "NodeNames": null, "Error": ""}),
        )
    });
    let mut cfg = ExtenderConfig::new(ext.url_prefix());
    cfg.node_cache_capable = false;
    let sched = Scheduler::start_with(c.client.clone(), fast(Some(cfg)));
    c.pod("web", json!({})).await;
    assert_eq!(
        sched
            .wait_bound("default/web", Duration::from_secs(15))
            .await
            .as_deref(),
        Some("node-b"),
        "{}",
        sched.report()
    );
    let args: Value = serde_json::from_str(&ext.bodies("filter")[0]).unwrap();
    assert!(args["NodeNames"].is_null());
    let items = args["Nodes"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(
        items
            .iter()
            .all(|n| n.get("apiVersion").is_none() && n.get("kind").is_none())
    );
    assert_eq!(items[0]["status"]["allocatable"]["cpu"], "4");
    assert_eq!(args["Nodes"]["metadata"], json!({}));
    assert!(ext.bodies("prioritize").is_empty(), "one node left");
}

#[tokio::test]
async fn extender_errors_leave_the_pod_unbound_and_it_is_retried() {
    let c = cluster().await;
    c.node("node-a", "us-east-1a", "4", json!({})).await;
    c.node("node-b", "us-east-1b", "4", json!({})).await;
    // HTTPS without a CA configured: insecure, as enableHTTPS without caData is upstream.
    let ext = Extender::start(true).await;
    ext.reply("filter", |_| (500, json!({"Error": "down"})));
    let sched = Scheduler::start_with(
        c.client.clone(),
        fast(Some(ExtenderConfig::new(ext.url_prefix()))),
    );
    c.pod("web", json!({})).await;
    eventually(5, "two failed filter calls", || async {
        sched.extender_errors() >= 2
    })
    .await;
    assert!(sched.bindings().is_empty());
    assert!(c.node_of("web").await.is_none());
    let cd = condition(&c.get_pod("web").await, "PodScheduled").unwrap();
    assert_eq!(
        (cd["status"].as_str(), cd["reason"].as_str()),
        (Some("False"), Some("SchedulerError")),
        "{cd}"
    );
    assert!(
        sched
            .errors()
            .iter()
            .all(|(p, m)| p == "default/web" && m.contains("code 500")),
        "{:?}",
        sched.errors()
    );

    // An Error in a 200 answer is an error too.
    ext.reply("filter", |_| {
        (
            200,
            json!({"NodeNames": ["node-a"], "Error": "quota backend unavailable"}),
        )
    });
    eventually(5, "Error field counted", || async {
        sched
            .errors()
            .iter()
            .any(|(_, m)| m == "quota backend unavailable")
    })
    .await;
    // So is a NodeNames answer that names a node it was not given.
    ext.reply("filter", |_| (200, json!({"NodeNames": ["node-z"]})));
    eventually(5, "not-a-subset counted", || async {
        sched
            .errors()
            .iter()
            .any(|(_, m)| m.contains("node-z") && m.contains("not found in the input node list"))
    })
    .await;
    // Recovery: a good answer binds it.
    assert!(sched.bindings().is_empty());
    ext.reply("filter", |args| {
        (200, json!({"NodeNames": args["NodeNames"]}))
    });
    // A failing prioritize is ignored: in-tree scores decide (equal: the first name).
    ext.reply("prioritize", |_| (503, json!({})));
    assert_eq!(
        sched
            .wait_bound("default/web", Duration::from_secs(15))
            .await
            .as_deref(),
        Some("node-a"),
        "{}",
        sched.report()
    );
    assert!(sched.prioritize_calls().iter().all(|c| c.error.is_some()));
}

#[tokio::test]
async fn zone_spread_do_not_schedule_is_respected() {
    let c = cluster().await;
    c.node("a1", "us-east-1a", "4", json!({})).await;
    c.node("a2", "us-east-1a", "4", json!({})).await;
    c.node("b1", "us-east-1b", "4", json!({})).await;
    c.node(
        "nozone",
        "",
        "4",
        json!({"metadata": {"labels": {"topology.kubernetes.io/zone": null}}}),
    )
    .await;
    // Two matching pods already run in zone a, one of another app in zone b.
    c.pod("old-1", json!({"spec": {"nodeName": "a1"}})).await;
    c.pod("old-2", json!({"spec": {"nodeName": "a2"}})).await;
    c.pod(
        "other",
        json!({"metadata": {"labels": {"app": "db"}}, "spec": {"nodeName": "b1"}}),
    )
    .await;
    let spread = json!({"spec": {"topologySpreadConstraints": [{
        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "web"}},
    }]}});
    let sched = Scheduler::start_with(c.client.clone(), fast(None));
    // Zone a has 2, zone b 0: a new pod may only go to b (skew 2+1-0 > 1 in a).
    c.pod("new-1", spread.clone()).await;
    assert_eq!(
        sched
            .wait_bound("default/new-1", Duration::from_secs(15))
            .await
            .as_deref(),
        Some("b1"),
        "{}",
        sched.report()
    );
    // Now 2/1: zone a would be 2+1-1 = 2 > 1, zone b 1+1-1 = 1: b again.
    c.pod("new-2", spread.clone()).await;
    assert_eq!(
        sched
            .wait_bound("default/new-2", Duration::from_secs(15))
            .await
            .as_deref(),
        Some("b1")
    );
    // 2/2: either zone; nozone never (missing required label).
    c.pod("new-3", spread.clone()).await;
    let n3 = sched
        .wait_bound("default/new-3", Duration::from_secs(15))
        .await
        .unwrap();
    assert_ne!(n3, "nozone");

    // A spread pod pinned to zone a by its nodeSelector: the domains are the zones of the nodes
    // that pass its nodeSelector (nodeAffinityPolicy Honor), so only a counts: skew 0, it fits.
    let mut pinned = spread.clone();
    pinned["spec"]["nodeSelector"] = json!({"topology.kubernetes.io/zone": "us-east-1a"});
    c.pod("pinned", pinned).await;
    let p = sched
        .wait_bound("default/pinned", Duration::from_secs(15))
        .await
        .unwrap();
    assert!(p == "a1" || p == "a2", "{p}");
    // Hostname spread: one per node among a1, a2, b1 (nozone has a hostname too).
    let by_host = json!({"metadata": {"labels": {"app": "api"}}, "spec": {"topologySpreadConstraints": [{
        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "api"}},
    }]}});
    for i in 0..4 {
        c.pod(&format!("api-{i}"), by_host.clone()).await;
    }
    let mut hosts = Vec::new();
    for i in 0..4 {
        hosts.push(
            sched
                .wait_bound(&format!("default/api-{i}"), Duration::from_secs(15))
                .await
                .unwrap(),
        );
    }
    hosts.sort();
    assert_eq!(hosts, ["a1", "a2", "b1", "nozone"], "one per host");
    // A spread pod that only the node without a zone label may take: missing required label.
    let msg_pod = json!({"spec": {"topologySpreadConstraints": [{
        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "web"}},
    }], "nodeSelector": {"kubernetes.io/hostname": "nozone"}}});
    c.pod("needs-zone", msg_pod).await;
    eventually(5, "missing label message", || async {
        condition(&c.get_pod("needs-zone").await, "PodScheduled").is_some_and(|cd| {
            cd["message"].as_str().unwrap_or("").contains(
                "1 node(s) didn't match pod topology spread constraints (missing required label)",
            )
        })
    })
    .await;
}

#[tokio::test]
async fn zone_spread_blocks_the_crowded_zone() {
    let c = cluster().await;
    c.node("a1", "us-east-1a", "4", json!({})).await;
    c.node(
        "b1",
        "us-east-1b",
        "4",
        json!({"spec": {"taints": [{"key": "full", "effect": "NoSchedule"}]}}),
    )
    .await;
    c.pod("old-1", json!({"spec": {"nodeName": "a1"}})).await;
    c.pod("old-2", json!({"spec": {"nodeName": "a1"}})).await;
    let sched = Scheduler::start_with(c.client.clone(), fast(None));
    // Zone b counts as a domain (taints are ignored by default), with 0 pods: a is at skew 3.
    c.pod("web", json!({"spec": {"topologySpreadConstraints": [{
        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "web"}},
    }]}}))
    .await;
    let want = "0/2 nodes are available: 1 node(s) didn't match pod topology spread constraints, 1 node(s) had untolerated taint {full: }.";
    eventually(5, "spread blocks zone a", || async {
        condition(&c.get_pod("web").await, "PodScheduled").is_some_and(|cd| cd["message"] == want)
    })
    .await;
    // ScheduleAnyway does not filter.
    c.pod("relaxed", json!({"spec": {"topologySpreadConstraints": [{
        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": {"app": "web"}},
    }]}}))
    .await;
    assert_eq!(
        sched
            .wait_bound("default/relaxed", Duration::from_secs(15))
            .await
            .as_deref(),
        Some("a1")
    );
    assert!(c.node_of("web").await.is_none());
}

#[tokio::test]
async fn taints_tolerations_affinity_and_resources_are_respected() {
    let c = cluster().await;
    c.node("gpu", "us-east-1a", "8", json!({
        "metadata": {"labels": {"type": "karpenter", "gen": "5"}},
        "spec": {"taints": [{"key": "aws.amazon.com/neuron", "value": "true", "effect": "NoSchedule"}]},
    }))
    .await;
    c.node(
        "general",
        "us-east-1b",
        "2",
        json!({"metadata": {"labels": {"type": "karpenter", "gen": "3"}}}),
    )
    .await;
    let sched = Scheduler::start_with(c.client.clone(), fast(None));
    // No toleration: only "general".
    c.pod("plain", json!({})).await;
    assert_eq!(
        sched
            .wait_bound("default/plain", Duration::from_secs(15))
            .await
            .as_deref(),
        Some("general")
    );
    // Tolerating (Equal) and requiring gen > 4 via affinity: "gpu".
    c.pod("tolerant", json!({"spec": {
        "tolerations": [{"key": "aws.amazon.com/neuron", "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["4"]}]}]}}},
    }}))
    .await;
    assert_eq!(
        sched
            .wait_bound("default/tolerant", Duration::from_secs(15))
            .await
            .as_deref(),
        Some("gpu")
    );
    // Exists with an empty key tolerates everything; NotIn keeps it off "gpu"; 2 cpus don't fit
    // on "general" (1.9 left): unschedulable.
    c.pod("big", json!({"spec": {
        "tolerations": [{"operator": "Exists"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "gen", "operator": "NotIn", "values": ["5"]}]}]}}},
        "containers": [{"name": "app", "image": "nginx", "resources": {"limits": {"cpu": "2"}}}],
    }}))
    .await;
    eventually(5, "insufficient cpu", || async {
        condition(&c.get_pod("big").await, "PodScheduled").is_some_and(|cd| {
            cd["message"]
                == "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match Pod's node affinity/selector."
        })
    })
    .await;
    // The in-tree score prefers the emptier node: with both allowed, "gpu" (8 cpus, little used).
    c.pod(
        "anywhere",
        json!({"spec": {"tolerations": [{"operator": "Exists"}]}}),
    )
    .await;
    assert_eq!(
        sched
            .wait_bound("default/anywhere", Duration::from_secs(15))
            .await
            .as_deref(),
        Some("gpu")
    );
    // Pods of another scheduler, or already bound, are left alone.
    c.pod("theirs", json!({"spec": {"schedulerName": "other"}}))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        sched
            .decisions()
            .iter()
            .all(|d| !format!("{d:?}").contains("theirs"))
    );
}

#[test]
fn quantities() {
    assert_eq!(parse_milli("100m"), Some(100));
    assert_eq!(parse_milli("2"), Some(2000));
    assert_eq!(parse_milli("0.1"), Some(100));
    assert_eq!(parse_milli("1.5"), Some(1500));
    assert_eq!(parse_milli("1Ki"), Some(1_024_000));
    assert_eq!(parse_milli("8Gi"), Some(8 * (1i128 << 30) * 1000));
    assert_eq!(parse_milli("1e3"), Some(1_000_000));
    assert_eq!(parse_milli("1M"), Some(1_000_000_000));
    assert_eq!(parse_milli("1n"), Some(1), "rounded up");
    assert_eq!(parse_milli("x"), None);
}

// ---------------------------------------------------------------------------------------------
// The kubelet stand-in

const CLUSTER: &str = "workshop";

#[test]
fn kubelet_flags_from_user_data() {
    let text = "#!/bin/bash\n/etc/eks/bootstrap.sh workshop --kubelet-extra-args '--node-labels=karpenter.sh/nodepool=default,type=karpenter --register-with-taints=aws.amazon.com/neuron=true:NoSchedule,dedicated:NoExecute --max-pods=58'\n";
    let f = parse_kubelet_flags(text);
    assert_eq!(
        f.node_labels,
        BTreeMap::from([
            ("karpenter.sh/nodepool".to_string(), "default".to_string()),
            ("type".to_string(), "karpenter".to_string()),
        ])
    );
    assert_eq!(
        f.taints,
        vec![
            json!({"key": "aws.amazon.com/neuron", "value": "true", "effect": "NoSchedule"}),
            json!({"key": "dedicated", "effect": "NoExecute"}),
        ]
    );
    assert_eq!(f.max_pods, Some(58));
    let quoted = parse_kubelet_flags(
        r#"KUBELET_ARGS="--node-labels=a=b" "--register-with-taints=k=v:NoSchedule""#,
    );
    assert_eq!(quoted.node_labels["a"], "b");
    assert_eq!(quoted.taints.len(), 1);
    assert_eq!(parse_kubelet_flags("nothing here"), Default::default());
}

fn user_data(labels: &str, taints: &str) -> String {
    let script = format!(
        "#!/bin/bash\nset -ex\n/etc/eks/bootstrap.sh {CLUSTER} --kubelet-extra-args \"--node-labels={labels} --register-with-taints={taints}\"\n"
    );
    base64::engine::general_purpose::STANDARD.encode(script)
}

fn cluster_tags() -> TagSpecification {
    TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .tags(
            Tag::builder()
                .key(format!("kubernetes.io/cluster/{CLUSTER}"))
                .value("owned")
                .build(),
        )
        .build()
}

async fn node_json(client: &kube::Client, name: &str) -> Option<Value> {
    Api::<Node>::all(client.clone())
        .get_opt(name)
        .await
        .unwrap()
        .map(|n| serde_json::to_value(n).unwrap())
}

#[tokio::test]
async fn instances_join_as_nodes_and_leave_when_terminated() {
    let moto = Moto::start();
    let ec2 = ec2_client(&moto.endpoint, "us-east-1");
    let c = cluster().await;
    let kubelets = Kubelets::start(c.client.clone(), ec2.clone(), CLUSTER);

    let run = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(InstanceType::M5Large)
        .min_count(1)
        .max_count(1)
        .placement(Placement::builder().availability_zone("us-east-1b").build())
        .user_data(user_data(
            "karpenter.sh/nodepool=default,type=karpenter",
            "aws.amazon.com/neuron=true:NoSchedule",
        ))
        .tag_specifications(cluster_tags())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", moto.logs()));
    let id = run.instances()[0].instance_id().unwrap().to_string();
    // Not ours: no cluster tag.
    let stranger = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap();
    let stranger = stranger.instances()[0].instance_id().unwrap().to_string();

    let name = kubelets
        .wait_registered(&id, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("not registered: {:?}", kubelets.errors()));
    assert!(
        name.starts_with("ip-") && name.ends_with(".ec2.internal"),
        "{name}"
    );
    let node = node_json(&c.client, &name).await.expect("Node created");
    assert_eq!(
        node["spec"]["providerID"],
        format!("aws:///us-east-1b/{id}")
    );
    let labels = &node["metadata"]["labels"];
    for (k, v) in [
        ("kubernetes.io/hostname", name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("node.kubernetes.io/instance-type", "m5.large"),
        ("topology.kubernetes.io/zone", "us-east-1b"),
        ("topology.kubernetes.io/region", "us-east-1"),
        ("karpenter.sh/nodepool", "default"),
        ("type", "karpenter"),
    ] {
        assert_eq!(labels[k], v, "label {k}: {labels}");
    }
    assert_eq!(
        node["spec"]["taints"],
        json!([{"key": "aws.amazon.com/neuron", "value": "true", "effect": "NoSchedule"}])
    );
    // m5.large: 2 vCPU, 8 GiB, 29 pods (ENI); allocatable by the EKS AMI formulas.
    let alloc = &node["status"]["allocatable"];
    assert_eq!(alloc["cpu"], "1930m");
    assert_eq!(alloc["pods"], "29");
    assert_eq!(node["status"]["capacity"]["cpu"], "2");
    let mem = parse_milli(alloc["memory"].as_str().unwrap()).unwrap() / 1000;
    let expected = (8192.0 * (1.0 - 0.075)) as i128 * (1 << 20) - (11 * 29 + 255 + 100) * (1 << 20);
    assert_eq!(mem, expected, "{alloc}");
    assert!(alloc["ephemeral-storage"].is_string());
    let ready = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "True");
    let regs = kubelets.registrations();
    assert_eq!(regs.len(), 1, "the untagged instance is not registered");
    assert_ne!(regs[0].instance_id, stranger);
    assert!(regs[0].user_data.contains("--node-labels="));

    // Terminated: the Node goes.
    ec2.terminate_instances()
        .instance_ids(&id)
        .send()
        .await
        .unwrap();
    eventually(10, "node deleted", || async {
        node_json(&c.client, &name).await.is_none()
    })
    .await;
    assert_eq!(kubelets.deletions(), vec![(id.clone(), name.clone())]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(kubelets.registrations().len(), 1, "never registered again");
}

#[tokio::test]
async fn launch_template_user_data_delay_and_pause() {
    let moto = Moto::start();
    let ec2 = ec2_client(&moto.endpoint, "us-east-1");
    let c = cluster().await;
    let mut config = KubeletConfig::new(CLUSTER);
    config.paused = true;
    let kubelets = Kubelets::start_with(c.client.clone(), ec2.clone(), config);

    let lt = ec2
        .create_launch_template()
        .launch_template_name("nodewright-default")
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id("ami-12c6146b")
                .instance_type(InstanceType::C6gLarge)
                .user_data(user_data(
                    "karpenter.sh/nodepool=arm",
                    "dedicated=arm:NoSchedule",
                ))
                .tag_specifications(
                    aws_sdk_ec2::types::LaunchTemplateTagSpecificationRequest::builder()
                        .resource_type(ResourceType::Instance)
                        .tags(
                            Tag::builder()
                                .key(format!("kubernetes.io/cluster/{CLUSTER}"))
                                .value("owned")
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", moto.logs()));
    let lt_id = lt
        .launch_template()
        .unwrap()
        .launch_template_id()
        .unwrap()
        .to_string();
    let run = ec2
        .run_instances()
        .launch_template(
            aws_sdk_ec2::types::LaunchTemplateSpecification::builder()
                .launch_template_id(&lt_id)
                .version("$Latest")
                .build(),
        )
        .min_count(1)
        .max_count(1)
        .placement(Placement::builder().availability_zone("us-east-1c").build())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", moto.logs()));
    let id = run.instances()[0].instance_id().unwrap().to_string();

    // Paused: nothing registers.
    assert!(
        kubelets
            .wait_registered(&id, Duration::from_millis(800))
            .await
            .is_none()
    );
    // Resumed with a delay: registers, but not before the delay.
    kubelets.set_registration_delay(Duration::from_secs(1));
    let resumed = Instant::now();
    kubelets.set_paused(false);
    let name = kubelets
        .wait_registered(&id, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("not registered: {:?}", kubelets.errors()));
    let reg = &kubelets.registrations()[0];
    assert!(reg.registered_at >= reg.seen_at + Duration::from_secs(1));
    assert!(reg.registered_at >= resumed, "not while paused");
    let node = node_json(&c.client, &name).await.unwrap();
    assert_eq!(
        node["metadata"]["labels"]["karpenter.sh/nodepool"], "arm",
        "{}",
        reg.user_data
    );
    assert_eq!(node["metadata"]["labels"]["kubernetes.io/arch"], "arm64");
    assert_eq!(
        node["spec"]["taints"],
        json!([{"key": "dedicated", "value": "arm", "effect": "NoSchedule"}])
    );

    // Unpaused, a new instance waits out the registration delay.
    let launched = Instant::now();
    let run = ec2
        .run_instances()
        .launch_template(
            aws_sdk_ec2::types::LaunchTemplateSpecification::builder()
                .launch_template_id(&lt_id)
                .build(),
        )
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap();
    let second = run.instances()[0].instance_id().unwrap().to_string();
    kubelets
        .wait_registered(&second, Duration::from_secs(10))
        .await
        .expect("second registered");
    assert!(
        launched.elapsed() >= Duration::from_secs(1),
        "{:?}",
        launched.elapsed()
    );
}

#[tokio::test]
async fn a_pending_pod_binds_once_its_node_joins() {
    let moto = Moto::start();
    let ec2 = ec2_client(&moto.endpoint, "us-east-1");
    let c = cluster().await;
    let mut config = KubeletConfig::new(CLUSTER);
    config.run_pods = true;
    let kubelets = Kubelets::start_with(c.client.clone(), ec2.clone(), config);
    let sched = Scheduler::start_with(c.client.clone(), fast(None));
    c.pod("web", json!({"spec": {
        "nodeSelector": {"type": "karpenter"},
        "tolerations": [{"key": "aws.amazon.com/neuron", "operator": "Exists", "effect": "NoSchedule"}],
    }}))
    .await;
    eventually(5, "unschedulable", || async {
        condition(&c.get_pod("web").await, "PodScheduled")
            .is_some_and(|cd| cd["reason"] == "Unschedulable")
    })
    .await;
    ec2.run_instances()
        .image_id("ami-12c6146b")
        .instance_type(InstanceType::M5Large)
        .min_count(1)
        .max_count(1)
        .placement(Placement::builder().availability_zone("us-east-1a").build())
        .user_data(user_data(
            "type=karpenter",
            "aws.amazon.com/neuron=true:NoSchedule",
        ))
        .tag_specifications(cluster_tags())
        .send()
        .await
        .unwrap();
    let node = sched
        .wait_bound("default/web", Duration::from_secs(10))
        .await
        .unwrap_or_else(|| {
            panic!(
                "{}\nkubelet: {:?} {:?}",
                sched.report(),
                kubelets.registrations(),
                kubelets.errors()
            )
        });
    assert_eq!(kubelets.registrations()[0].node, node);
    eventually(5, "running", || async {
        c.get_pod("web").await["status"]["phase"] == "Running"
    })
    .await;
}
