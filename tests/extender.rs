//! The scheduler extender (`/scheduler/filter`, `/scheduler/prioritize`) through the real axum
//! router, fed with kube-scheduler's wire format (WIRE.md §2) and upstream's golden JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Pod;
use nodewright::config::Config;
use nodewright::http::extender::ExtenderState;
use nodewright::http::extender::wire::{
    ExtenderArgs, ExtenderCall, ExtenderFilterResult, HostPriority, NodesIn,
};
use nodewright::http::{AppState, Limits, webhook_router};
use nodewright::model::resources::{CPU, MEMORY, PODS, Resources};
use nodewright::scheduling::view::{NodeFacts, NodeState};
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tower::ServiceExt;

const GOLDEN: &str =
    include_str!("data/fixtures/extender_v1_golden_wire__kube-scheduler_types_test.jsonl");
const SIMULATOR: &str = include_str!(
    "data/fixtures/extender_filter_result_by_url__kube-scheduler-simulator_docs_extender_md.json"
);

/// Line `n` (1-based) of upstream's TestCompatibility golden JSON.
fn golden(n: usize) -> &'static str {
    GOLDEN.lines().nth(n - 1).unwrap()
}

const GI: i64 = 1 << 30;

fn res(cpu_millis: i64, mem_gi: i64, pods: i64) -> Resources {
    let mut r = Resources::ZERO;
    r.0[CPU] = cpu_millis;
    r.0[MEMORY] = mem_gi * GI;
    r.0[PODS] = pods;
    r
}

fn facts(allocatable: Resources, requested: Resources, price: Option<f64>) -> NodeFacts {
    NodeFacts {
        allocatable,
        requested,
        price_per_hour: price,
        ..NodeFacts::default()
    }
}

fn state_with(max_body_bytes: usize, extender: ExtenderState) -> AppState {
    let config = Config::parse(
        include_str!("data/steering.yaml"),
        "tests/data/steering.yaml",
    )
    .unwrap();
    AppState::builder(&config, Some("nodewright"))
        .limits(Limits {
            max_body_bytes,
            ..Limits::default()
        })
        .extender(extender)
        .build()
}

fn state() -> AppState {
    state_with(
        Limits::default().max_body_bytes,
        ExtenderState::standalone(),
    )
}

/// A state whose view holds `nodes`, edited further by `edit`.
fn state_with_view(
    nodes: &[(&str, NodeFacts)],
    edit: impl FnOnce(&mut nodewright::scheduling::view::ClusterView),
) -> AppState {
    let s = state();
    {
        let mut view = s.extender.view.write().unwrap();
        for (name, f) in nodes {
            view.nodes.insert(Arc::from(*name), f.clone());
        }
        edit(&mut view);
    }
    s
}

struct Reply {
    status: StatusCode,
    text: String,
    json: Value,
}

async fn post_raw(state: &AppState, uri: &str, content_type: &str, body: impl Into<Body>) -> Reply {
    let request = Request::post(uri)
        .header(header::CONTENT_TYPE, content_type)
        .body(body.into())
        .unwrap();
    let response = webhook_router(state.clone(), false)
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    assert_eq!(
        response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap()),
        Some("application/json"),
        "every answer is JSON"
    );
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let json = serde_json::from_str(&text).expect("body is JSON");
    Reply { status, text, json }
}

async fn post(state: &AppState, verb: &str, args: &Value) -> Reply {
    post_raw(
        state,
        &format!("/scheduler/{verb}"),
        "application/json",
        args.to_string(),
    )
    .await
}

/// A pod as kube-scheduler sends it: no apiVersion/kind, Go nulls.
fn pod(name: &str, cpu: &str, memory: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "shop", "uid": "u-1", "creationTimestamp": null,
                     "labels": {"app": "web"}},
        "spec": {
            "containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}],
                            "resources": {"requests": {"cpu": cpu, "memory": memory}}}],
            "initContainers": null,
            "nodeSelector": {"karpenter.sh/nodepool": "default"},
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                             "effect": "NoExecute", "tolerationSeconds": 300}]
        },
        "status": {"phase": "Pending"}
    })
}

fn names_args(pod: Value, nodes: &[&str]) -> Value {
    json!({"Pod": pod, "Nodes": null, "NodeNames": nodes})
}

fn node_names(reply: &Reply) -> Vec<String> {
    serde_json::from_value(reply.json["NodeNames"].clone()).expect("NodeNames is a list")
}

/// Top-level keys of a JSON object in the order written.
fn keys_in_order(text: &str) -> Vec<String> {
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Vec<String>, M::Error> {
            let mut keys = Vec::new();
            while let Some((k, _)) = map.next_entry::<String, IgnoredAny>()? {
                keys.push(k);
            }
            Ok(keys)
        }
    }
    use serde::Deserializer;
    serde_json::Deserializer::from_str(text)
        .deserialize_map(Keys)
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Golden wire
// ---------------------------------------------------------------------------------------------

#[test]
fn golden_extender_args_decode_as_upstream_writes_them() {
    let line = golden(3);
    let args: ExtenderArgs<'_> = serde_json::from_str(line).unwrap();
    assert_eq!(
        args.pod.unwrap().get(),
        r#"{"metadata":{"name":"podname"},"spec":{"containers":null},"status":{}}"#
    );
    let names: Vec<&str> = args
        .node_names
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| &**n)
        .collect();
    assert_eq!(names, ["node1"]);
    let items = args.nodes.as_ref().unwrap().items.as_ref().unwrap();
    assert_eq!(items.len(), 1);
    assert!(
        items[0]
            .get()
            .starts_with(r#"{"metadata":{"name":"nodename"}"#)
    );

    let call = ExtenderCall::decode(line.as_bytes()).unwrap();
    assert_eq!(call.pod.key, "default/podname");
    assert_eq!(call.pod.requests, res(0, 0, 1));
    assert!(
        matches!(&call.nodes, NodesIn::Names(n) if n.len() == 1),
        "NodeNames wins when both are sent"
    );
}

#[test]
fn golden_filter_result_and_host_priority_round_trip_byte_for_byte() {
    for n in [4, 7] {
        let line = golden(n);
        let encoded = if n == 4 {
            let r: ExtenderFilterResult<'_> = serde_json::from_str(line).unwrap();
            assert_eq!(r.error, "myerror");
            serde_json::to_string(&r).unwrap()
        } else {
            let h: HostPriority<'_> = serde_json::from_str(line).unwrap();
            assert_eq!((&*h.host, h.score), ("myhost", 1));
            serde_json::to_string(&h).unwrap()
        };
        assert_eq!(encoded, line, "golden line {n}");
    }
    // The old API's lowercase spelling decodes too.
    let r: ExtenderFilterResult<'_> =
        serde_json::from_str(r#"{"nodenames":["a"],"failedNodes":{"b":"why"},"error":"e"}"#)
            .unwrap();
    assert_eq!(r.node_names.unwrap()[0].0, "a");
    assert_eq!(r.failed_nodes.unwrap().0[0].1.0, "why");
    assert_eq!(r.error, "e");
    let h: HostPriority<'_> = serde_json::from_str(r#"{"host":"h","score":3}"#).unwrap();
    assert_eq!(h.score, 3);
}

#[tokio::test]
async fn filter_reply_has_upstream_keys_order_and_nulls() {
    let s = state();
    let reply = post(&s, "filter", &names_args(pod("p", "1", "1Gi"), &["a", "b"])).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(keys_in_order(&reply.text), keys_in_order(golden(4)));
    assert_eq!(
        reply.text,
        r#"{"Nodes":null,"NodeNames":["a","b"],"FailedNodes":{},"FailedAndUnresolvableNodes":null,"Error":""}"#
    );
}

#[tokio::test]
async fn prioritize_reply_is_a_bare_host_priority_list_like_upstream() {
    let s = state();
    let reply = post(&s, "prioritize", &names_args(pod("p", "1", "1Gi"), &["a"])).await;
    assert_eq!(reply.status, StatusCode::OK);
    let list = reply.json.as_array().expect("a bare array");
    assert_eq!(list.len(), 1);
    assert_eq!(
        keys_in_order(&serde_json::to_string(&list[0]).unwrap()),
        keys_in_order(golden(7))
    );
    assert_eq!(reply.text, r#"[{"Host":"a","Score":0}]"#);
}

#[tokio::test]
async fn full_nodes_reply_matches_the_simulators_capture_byte_for_byte() {
    // The simulator recorded what an extender answered for one full node (re-marshalled by Go);
    // sent that node, we answer exactly the same bytes.
    let by_url: BTreeMap<String, &RawValue> = serde_json::from_str(SIMULATOR).unwrap();
    let expected = by_url.values().next().unwrap().get();
    let captured: ExtenderFilterResult<'_> = serde_json::from_str(expected).unwrap();
    let item = captured.nodes.unwrap().items.unwrap()[0].get();
    assert!(item.contains("managedFields"));
    let body = format!(
        r#"{{"Pod":{},"Nodes":{{"metadata":{{}},"items":[{item}]}},"NodeNames":null}}"#,
        pod("p", "1", "1Gi")
    );
    let reply = post_raw(&state(), "/scheduler/filter", "application/json", body).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text, expected);
}

// ---------------------------------------------------------------------------------------------
// Both nodeCacheCapable modes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn names_mode_returns_a_subset_in_input_order() {
    let s = state_with_view(
        &[
            (
                "gone",
                NodeFacts {
                    state: NodeState::Terminating,
                    ..NodeFacts::default()
                },
            ),
            ("ok", facts(res(4000, 16, 110), Resources::ZERO, None)),
        ],
        |_| {},
    );
    let reply = post(
        &s,
        "filter",
        &names_args(pod("p", "1", "1Gi"), &["z-new", "gone", "ok", "a-new"]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json["Nodes"], Value::Null);
    assert_eq!(node_names(&reply), ["z-new", "ok", "a-new"]);
}

#[tokio::test]
async fn nodes_mode_returns_passing_objects_exactly_as_sent() {
    let s = state_with_view(
        &[(
            "n2",
            NodeFacts {
                state: NodeState::Draining,
                ..NodeFacts::default()
            },
        )],
        |_| {},
    );
    // Unusual key order, unknown fields and odd spacing-free numbers must all survive.
    let n1 = r#"{"status":{"allocatable":{"cpu":"4","memory":"16Gi","pods":"110"},"x-future":{"keep":[1,2.50,null]}},"metadata":{"name":"n1","labels":{"zone":"a"},"annotations":{"k":"v"}},"spec":{"providerID":"aws:///eu-west-1a/i-1"},"unknownTopLevel":true}"#;
    let n2 = r#"{"metadata":{"name":"n2"},"spec":{},"status":{}}"#;
    let n3 = r#"{"metadata":{"name":"n3","resourceVersion":"7"},"spec":{"unschedulable":false},"status":{"nodeInfo":{"kubeletVersion":"v1.31.0"}}}"#;
    let body = format!(
        r#"{{"Pod":{},"Nodes":{{"metadata":{{"resourceVersion":"42"}},"items":[{n1},{n2},{n3}]}}}}"#,
        pod("p", "1", "1Gi")
    );
    let reply = post_raw(&s, "/scheduler/filter", "application/json", body).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json["NodeNames"], Value::Null);
    let expected_nodes = format!(
        r#"{{"Nodes":{{"metadata":{{"resourceVersion":"42"}},"items":[{n1},{n3}]}},"NodeNames":null,"#
    );
    assert!(reply.text.starts_with(&expected_nodes), "{}", reply.text);
    assert_eq!(
        reply.json["FailedNodes"]["n2"],
        "node is being drained by nodewright"
    );
}

#[tokio::test]
async fn uncached_full_node_is_judged_on_its_own_allocatable() {
    // n1 is not in the view yet, but a promise on it is; its object says 2 cpu.
    let s = state_with_view(&[], |view| {
        view.promise(
            "n1",
            "shop/waiting",
            res(1500, 1, 1),
            Some(Arc::from("claim-9")),
            None,
        );
    });
    let item = r#"{"metadata":{"name":"n1"},"status":{"allocatable":{"cpu":"2","memory":"8Gi","pods":"110","hugepages-2Mi":"0"}}}"#;
    let body = |cpu: &str| {
        format!(
            r#"{{"Pod":{},"Nodes":{{"metadata":{{}},"items":[{item}]}}}}"#,
            pod("p", cpu, "1Gi")
        )
    };
    let refused = post_raw(&s, "/scheduler/filter", "application/json", body("1")).await;
    assert_eq!(refused.json["Nodes"]["items"], json!([]));
    let m = refused.json["FailedNodes"]["n1"].as_str().unwrap();
    assert!(m.contains("nodeclaim claim-9"), "{m}");
    let fits = post_raw(&s, "/scheduler/filter", "application/json", body("500m")).await;
    assert_eq!(fits.json["Nodes"]["items"][0]["metadata"]["name"], "n1");
    // By name only, nodewright knows nothing of n1's size: it passes.
    let by_name = post(&s, "filter", &names_args(pod("p", "1", "1Gi"), &["n1"])).await;
    assert_eq!(node_names(&by_name), ["n1"]);
}

// ---------------------------------------------------------------------------------------------
// Filter rules
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn terminating_and_draining_nodes_are_failed_and_unresolvable() {
    let closing = |state| NodeFacts {
        state,
        ..facts(res(4000, 16, 110), Resources::ZERO, None)
    };
    let s = state_with_view(
        &[
            ("t", closing(NodeState::Terminating)),
            ("d", closing(NodeState::Draining)),
            ("r", closing(NodeState::Ready)),
        ],
        |_| {},
    );
    let reply = post(
        &s,
        "filter",
        &names_args(pod("p", "1", "1Gi"), &["t", "d", "r"]),
    )
    .await;
    assert_eq!(node_names(&reply), ["r"]);
    for (node, message) in [
        ("t", "node is being terminated by nodewright"),
        ("d", "node is being drained by nodewright"),
    ] {
        assert_eq!(reply.json["FailedNodes"][node], message);
        assert_eq!(reply.json["FailedAndUnresolvableNodes"][node], message);
    }
    assert_eq!(reply.json["FailedNodes"].as_object().unwrap().len(), 2);
    assert_eq!(reply.json["Error"], "");
}

#[tokio::test]
async fn promise_to_other_pods_refuses_only_pods_that_no_longer_fit() {
    let s = state_with_view(
        &[("new", facts(res(4000, 16, 110), res(500, 1, 2), None))],
        |view| {
            view.promise(
                "new",
                "shop/a",
                res(1500, 4, 1),
                Some(Arc::from("default-x7k2p")),
                None,
            );
            view.promise(
                "new",
                "shop/b",
                res(1000, 4, 1),
                Some(Arc::from("default-x7k2p")),
                None,
            );
        },
    );
    // 4 - 0.5 bound - 2.5 promised = 1 cpu left.
    let fits = post(&s, "filter", &names_args(pod("p", "1", "1Gi"), &["new"])).await;
    assert_eq!(node_names(&fits), ["new"]);
    assert_eq!(fits.json["FailedNodes"], json!({}));
    let refused = post(
        &s,
        "filter",
        &names_args(pod("p", "1100m", "1Gi"), &["new"]),
    )
    .await;
    assert_eq!(node_names(&refused), Vec::<String>::new());
    let m = refused.json["FailedNodes"]["new"].as_str().unwrap();
    assert_eq!(
        m,
        "capacity reserved by nodewright for 2 pending pod(s) of nodeclaim default-x7k2p: 1 cpu left after the reservation, the pod requests 1100m"
    );
    assert_eq!(
        refused.json["FailedAndUnresolvableNodes"],
        Value::Null,
        "a reservation is resolvable"
    );
}

#[tokio::test]
async fn a_pods_own_promise_lets_it_through_and_other_nodes_stay_open() {
    let s = state_with_view(
        &[
            ("mine", facts(res(2000, 4, 110), Resources::ZERO, None)),
            ("other", facts(res(8000, 32, 110), Resources::ZERO, None)),
        ],
        |view| {
            view.promise("mine", "shop/p", res(2000, 4, 1), None, None);
            view.promise("mine", "shop/q", res(0, 0, 1), None, None);
        },
    );
    let reply = post(
        &s,
        "filter",
        &names_args(pod("p", "2", "4Gi"), &["mine", "other"]),
    )
    .await;
    assert_eq!(node_names(&reply), ["mine", "other"]);
    // Another pod finds "mine" full of promises.
    let reply = post(
        &s,
        "filter",
        &names_args(pod("r", "100m", "1Gi"), &["mine", "other"]),
    )
    .await;
    assert_eq!(node_names(&reply), ["other"]);
    assert!(reply.json["FailedNodes"]["mine"].is_string());
}

#[tokio::test]
async fn expired_promises_no_longer_hold_capacity() {
    let now = Instant::now();
    let s = state_with_view(
        &[("n", facts(res(2000, 4, 110), Resources::ZERO, None))],
        |view| {
            view.promise("n", "shop/late", res(2000, 4, 1), None, Some(now));
        },
    );
    let reply = post(&s, "filter", &names_args(pod("p", "1", "1Gi"), &["n"])).await;
    assert_eq!(node_names(&reply), ["n"]);
    s.extender.view.write().unwrap().promise(
        "n",
        "shop/late",
        res(2000, 4, 1),
        None,
        Some(Instant::now() + Duration::from_secs(300)),
    );
    let reply = post(&s, "filter", &names_args(pod("p", "1", "1Gi"), &["n"])).await;
    assert_eq!(node_names(&reply), Vec::<String>::new());
}

#[tokio::test]
async fn unknown_nodes_pass() {
    let s = state_with_view(
        &[(
            "known-gone",
            NodeFacts {
                state: NodeState::Terminating,
                ..NodeFacts::default()
            },
        )],
        |_| {},
    );
    let reply = post(
        &s,
        "filter",
        &names_args(pod("p", "64", "512Gi"), &["never-seen", "known-gone"]),
    )
    .await;
    assert_eq!(node_names(&reply), ["never-seen"]);
}

// ---------------------------------------------------------------------------------------------
// Hand-off to the provisioner
// ---------------------------------------------------------------------------------------------

fn handing_off(capacity: usize) -> (AppState, mpsc::Receiver<Arc<Pod>>) {
    let (tx, rx) = mpsc::channel(capacity);
    let mut extender = ExtenderState::standalone();
    extender.unplaced = Some(tx);
    extender.view.write().unwrap().nodes.insert(
        Arc::from("gone"),
        NodeFacts {
            state: NodeState::Terminating,
            ..NodeFacts::default()
        },
    );
    (state_with(Limits::default().max_body_bytes, extender), rx)
}

#[tokio::test]
async fn a_pod_left_with_no_node_goes_to_the_provisioner() {
    let (s, mut rx) = handing_off(8);
    let reply = post(
        &s,
        "filter",
        &names_args(pod("stuck", "1", "1Gi"), &["gone"]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(node_names(&reply), Vec::<String>::new());
    let handed = rx.try_recv().expect("pod handed off");
    assert_eq!(handed.metadata.name.as_deref(), Some("stuck"));
    assert_eq!(handed.metadata.namespace.as_deref(), Some("shop"));
    let spec = handed.spec.as_ref().unwrap();
    assert_eq!(
        spec.node_selector.as_ref().unwrap()["karpenter.sh/nodepool"],
        "default",
        "the whole pod is handed over, not the lean view"
    );
    // A pod that keeps a node is not handed off.
    let reply = post(
        &s,
        "filter",
        &names_args(pod("fine", "1", "1Gi"), &["gone", "elsewhere"]),
    )
    .await;
    assert_eq!(node_names(&reply), ["elsewhere"]);
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn a_full_or_closed_hand_off_channel_never_blocks_the_answer() {
    let (s, mut rx) = handing_off(1);
    for name in ["first", "second", "third"] {
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            post(&s, "filter", &names_args(pod(name, "1", "1Gi"), &["gone"])),
        )
        .await
        .expect("answered without waiting for the channel");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json["Error"], "");
    }
    assert_eq!(
        rx.try_recv().unwrap().metadata.name.as_deref(),
        Some("first")
    );
    assert!(
        rx.try_recv().is_err(),
        "the others were dropped, not queued"
    );
    drop(rx);
    let reply = post(
        &s,
        "filter",
        &names_args(pod("late", "1", "1Gi"), &["gone"]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// Prioritize
// ---------------------------------------------------------------------------------------------

fn scores(reply: &Reply) -> Vec<(String, i64)> {
    reply
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["Host"].as_str().unwrap().to_owned(),
                h["Score"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn prioritize_prefers_promised_then_tight_then_cheap_nodes() {
    let big = res(8000, 32, 110);
    let s = state_with_view(
        &[
            ("loose", facts(big, Resources::ZERO, None)),
            ("tight", facts(big, res(6000, 20, 10), None)),
            ("full", facts(big, res(7500, 4, 10), None)),
            ("mine", facts(big, res(7900, 31, 10), None)),
            (
                "cheap",
                facts(res(4000, 16, 110), Resources::ZERO, Some(0.1)),
            ),
            (
                "dear",
                facts(res(4000, 16, 110), Resources::ZERO, Some(0.4)),
            ),
            (
                "closing",
                NodeFacts {
                    state: NodeState::Draining,
                    ..facts(big, Resources::ZERO, None)
                },
            ),
        ],
        |view| view.promise("mine", "shop/p", res(1000, 1, 1), None, None),
    );
    let order = [
        "loose", "tight", "full", "mine", "cheap", "dear", "closing", "unknown",
    ];
    let reply = post(&s, "prioritize", &names_args(pod("p", "1", "1Gi"), &order)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let got = scores(&reply);
    let hosts: Vec<&str> = got.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(hosts, order, "one entry per node, in order");
    let score: BTreeMap<&str, i64> = got.iter().map(|(h, s)| (h.as_str(), *s)).collect();
    assert!(score.values().all(|s| (0..=10).contains(s)), "{score:?}");
    assert_eq!(score["mine"], 10);
    assert_eq!(score["full"], 0, "does not fit");
    assert_eq!(score["closing"], 0);
    assert_eq!(score["unknown"], 0);
    assert!(score["tight"] > score["loose"], "{score:?}");
    assert!(score["cheap"] > score["dear"], "{score:?}");
    assert!(
        score["loose"] >= 1,
        "a fitting node outranks nodes that do not fit"
    );
    assert!(
        score
            .iter()
            .filter(|(h, _)| **h != "mine")
            .all(|(_, s)| *s < 10),
        "the promised node is strictly first: {score:?}"
    );
}

#[tokio::test]
async fn prioritize_in_nodes_mode_scores_hosts_by_object_name() {
    let s = state_with_view(
        &[("n1", facts(res(4000, 16, 110), Resources::ZERO, None))],
        |_| {},
    );
    let body = json!({"Pod": pod("p", "1", "1Gi"), "Nodes": {"metadata": {}, "items": [
        {"metadata": {"name": "n1"}},
        {"metadata": {"name": "n2"}, "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "10"}}},
        {"metadata": {"name": "n3"}, "status": {"allocatable": {"cpu": "500m", "memory": "4Gi", "pods": "10"}}}
    ]}});
    let got = scores(&post(&s, "prioritize", &body).await);
    assert_eq!(got[0].0, "n1");
    assert!(got[0].1 >= 1);
    assert!(
        got[1].1 > got[0].1,
        "n2 is half full after the pod: {got:?}"
    );
    assert_eq!(got[2], ("n3".to_owned(), 0));
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

fn assert_filter_error(reply: &Reply, status: StatusCode, needle: &str) {
    assert_eq!(reply.status, status, "{}", reply.text);
    for key in [
        "Nodes",
        "NodeNames",
        "FailedNodes",
        "FailedAndUnresolvableNodes",
    ] {
        assert_eq!(reply.json[key], Value::Null, "{key} in {}", reply.text);
    }
    let error = reply.json["Error"].as_str().unwrap();
    assert!(
        error.contains(needle),
        "{error:?} should mention {needle:?}"
    );
}

#[tokio::test]
async fn malformed_json_is_a_400_filter_result_with_an_error() {
    let s = state();
    let reply = post_raw(&s, "/scheduler/filter", "application/json", "{\"Pod\": {").await;
    assert_filter_error(&reply, StatusCode::BAD_REQUEST, "not ExtenderArgs JSON");
    let reply = post_raw(&s, "/scheduler/filter", "application/json", "[1,2]").await;
    assert_filter_error(&reply, StatusCode::BAD_REQUEST, "not ExtenderArgs JSON");
    let reply = post(
        &s,
        "filter",
        &json!({"Pod": pod("p", "1", "1Gi"), "NodeNames": "a"}),
    )
    .await;
    assert_filter_error(&reply, StatusCode::BAD_REQUEST, "not ExtenderArgs JSON");
    let reply = post(&s, "filter", &json!({"Pod": {"spec": {"containers": [{"resources": {"requests": {"cpu": "lots"}}}]}}, "NodeNames": []})).await;
    assert_filter_error(&reply, StatusCode::BAD_REQUEST, "invalid quantity");
    let reply = post_raw(&s, "/scheduler/prioritize", "application/json", "nope").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.json["message"]
            .as_str()
            .unwrap()
            .contains("not ExtenderArgs JSON")
    );
}

#[tokio::test]
async fn missing_pod_or_nodes_is_a_400() {
    let s = state();
    let reply = post(&s, "filter", &json!({"NodeNames": ["a"]})).await;
    assert_filter_error(&reply, StatusCode::BAD_REQUEST, "no Pod");
    let reply = post(&s, "filter", &json!({"Pod": null, "NodeNames": ["a"]})).await;
    assert_filter_error(&reply, StatusCode::BAD_REQUEST, "no Pod");
    let reply = post(&s, "filter", &json!({"Pod": pod("p", "1", "1Gi")})).await;
    assert_filter_error(
        &reply,
        StatusCode::BAD_REQUEST,
        "neither NodeNames nor Nodes",
    );
    let reply = post(&s, "prioritize", &json!({"NodeNames": ["a"]})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json["message"], "ExtenderArgs has no Pod");
}

#[tokio::test]
async fn wrong_content_type_is_refused() {
    let s = state();
    let body = names_args(pod("p", "1", "1Gi"), &["a"]).to_string();
    let reply = post_raw(&s, "/scheduler/filter", "text/plain", body.clone()).await;
    assert_filter_error(&reply, StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type");
    let reply = post_raw(&s, "/scheduler/prioritize", "text/plain", body).await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn timeout_query_is_accepted() {
    let s = state();
    let body = names_args(pod("p", "1", "1Gi"), &["a"]).to_string();
    for verb in ["filter", "prioritize"] {
        let reply = post_raw(
            &s,
            &format!("/scheduler/{verb}?timeout=5s"),
            "application/json; charset=utf-8",
            body.clone(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{verb}: {}", reply.text);
    }
}

#[tokio::test]
async fn huge_bodies_are_refused_with_413() {
    let s = state_with(4096, ExtenderState::standalone());
    let names: Vec<String> = (0..1000).map(|i| format!("node-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let body = names_args(pod("p", "1", "1Gi"), &names).to_string();
    let reply = post_raw(&s, "/scheduler/filter", "application/json", body.clone()).await;
    assert_filter_error(
        &reply,
        StatusCode::PAYLOAD_TOO_LARGE,
        "larger than the limit",
    );
    let reply = post_raw(&s, "/scheduler/prioritize", "application/json", body).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn lowercase_keys_of_the_old_api_are_accepted() {
    let s = state_with_view(
        &[(
            "b",
            NodeFacts {
                state: NodeState::Terminating,
                ..NodeFacts::default()
            },
        )],
        |_| {},
    );
    let args =
        json!({"pod": pod("p", "1", "1Gi"), "nodenames": ["a", "b"], "futureField": {"x": 1}});
    let reply = post(&s, "filter", &args).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(node_names(&reply), ["a"]);
    let args =
        json!({"pod": pod("p", "1", "1Gi"), "nodes": {"items": [{"metadata": {"name": "a"}}]}});
    let reply = post(&s, "filter", &args).await;
    assert_eq!(reply.json["Nodes"]["items"][0]["metadata"]["name"], "a");
    assert_eq!(
        reply.json["Nodes"]["metadata"],
        json!({}),
        "Go writes ListMeta as {{}}"
    );
}

#[tokio::test]
async fn calls_are_counted_by_verb_and_outcome() {
    let s = state();
    post(&s, "filter", &names_args(pod("p", "1", "1Gi"), &["a"])).await;
    post(&s, "prioritize", &names_args(pod("p", "1", "1Gi"), &["a"])).await;
    post_raw(&s, "/scheduler/filter", "application/json", "{").await;
    let text = s.metrics.render();
    for series in [
        r#"nodewright_extender_requests_total{outcome="ok",verb="filter"} 1"#,
        r#"nodewright_extender_requests_total{outcome="ok",verb="prioritize"} 1"#,
        r#"nodewright_extender_requests_total{outcome="error",verb="filter"} 1"#,
    ] {
        assert!(text.contains(series), "{series} missing from\n{text}");
    }
}
