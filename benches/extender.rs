//! The scheduler extender at 5,000 nodes, names only (`nodeCacheCapable: true`): one whole call
//! through the axum router in-process (decode, decide under the read lock, encode), no sockets.
//! Criterion reports means; a plain loop afterwards prints p50/p99/max per verb, which criterion
//! does not. Run: `cargo bench --bench extender` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bytes::Bytes;
use criterion::Criterion;
use http_body_util::BodyExt;
use nodewright::config::Config;
use nodewright::http::extender::ExtenderState;
use nodewright::http::extender::wire::ExtenderCall;
use nodewright::http::{AppState, webhook_router};
use nodewright::metrics::Metrics;
use nodewright::model::resources::{CPU, EPHEMERAL, MEMORY, PODS, Resources};
use nodewright::scheduling::view::{ClusterView, NodeFacts, NodeState};
use serde_json::{Value, json};
use tower::ServiceExt;

const NODES: usize = 5_000;
const REVIEW: &str = include_str!(
    "../tests/data/fixtures/admissionreview_v1_pod_create_replicaset__salesforce_generic-sidecar-injector.json"
);

fn node_name(i: usize) -> String {
    format!(
        "ip-10-{}-{}-{}.eu-west-1.compute.internal",
        i / 65_536,
        (i / 256) % 256,
        i % 256
    )
}

fn res(cpu_millis: i64, memory_gi: i64, pods: i64) -> Resources {
    let mut r = Resources::ZERO;
    r.0[CPU] = cpu_millis;
    r.0[MEMORY] = memory_gi << 30;
    r.0[EPHEMERAL] = 20 << 30;
    r.0[PODS] = pods;
    r
}

/// 5,000 nodes of four sizes, partly filled; one in 50 terminating, one in 100 draining, one in 20
/// holding a promise of three pods for its NodeClaim, prices on most.
fn cluster() -> ClusterView {
    let mut view = ClusterView::default();
    let sizes = [
        (2_000, 8, 29, 0.096),
        (4_000, 16, 58, 0.192),
        (8_000, 32, 58, 0.384),
        (16_000, 64, 234, 0.768),
    ];
    for i in 0..NODES {
        let (cpu, mem, pods, price) = sizes[i % sizes.len()];
        let fill = (i * 37 % 100) as i64;
        let state = match i {
            i if i % 50 == 7 => NodeState::Terminating,
            i if i % 100 == 13 => NodeState::Draining,
            _ => NodeState::Ready,
        };
        let facts = NodeFacts {
            allocatable: res(cpu, mem, pods),
            requested: res(cpu * fill / 100, mem * fill / 100, pods * fill / 200),
            price_per_hour: (i % 10 != 0).then_some(price * if i % 3 == 0 { 0.35 } else { 1.0 }),
            state,
            claim: (i % 20 == 0).then(|| Arc::from(format!("default-{i:05}"))),
            ..NodeFacts::default()
        };
        view.nodes.insert(Arc::from(node_name(i)), facts);
    }
    for i in (0..NODES).step_by(20) {
        let name = node_name(i);
        let claim: Option<Arc<str>> = Some(Arc::from(format!("default-{i:05}")));
        for p in 0..3 {
            view.promise(
                &name,
                &format!("game-2048/deployment-2048-{i}-{p}"),
                res(500, 1, 1),
                claim.clone(),
                Some(Instant::now() + Duration::from_secs(3_600)),
            );
        }
    }
    view
}

/// The fixture's real pod as kube-scheduler sends it (no apiVersion/kind), given requests and the
/// 2048 workshop's steering: nodeSelector, a NodePool toleration and a zone spread.
fn pod() -> Value {
    let review: Value = serde_json::from_str(REVIEW).unwrap();
    let mut pod = review["request"]["object"].clone();
    let object = pod.as_object_mut().unwrap();
    object.remove("apiVersion");
    object.remove("kind");
    pod["metadata"]["name"] = json!("keymaker-keymaker-769579fd65-x2v9q");
    pod["metadata"]["namespace"] = json!("keymaker");
    pod["spec"]["containers"][0]["resources"] =
        json!({"requests": {"cpu": "1500m", "memory": "3Gi"}, "limits": {"memory": "3Gi"}});
    pod["spec"]["nodeSelector"] = json!({"karpenter.sh/nodepool": "default"});
    pod["spec"]["tolerations"]
        .as_array_mut()
        .unwrap()
        .push(json!({"key": "aws.amazon.com/neuron", "operator": "Equal", "value": "true", "effect": "NoSchedule"}));
    pod["spec"]["topologySpreadConstraints"] = json!([{
        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "keymaker"}}
    }]);
    pod
}

fn state(view: ClusterView) -> AppState {
    let config =
        Config::parse(include_str!("../tests/data/steering.yaml"), "steering.yaml").unwrap();
    let _metrics = Metrics::new();
    let mut extender = ExtenderState::standalone();
    extender.view = Arc::new(std::sync::RwLock::new(view));
    AppState::builder(&config, Some("nodewright"))
        .extender(extender)
        .build()
}

struct Setup {
    rt: tokio::runtime::Runtime,
    router: Router,
    body: Bytes,
    view: Arc<std::sync::RwLock<ClusterView>>,
}

impl Setup {
    fn new() -> Self {
        let names: Vec<String> = (0..NODES).map(node_name).collect();
        let body = json!({"Pod": pod(), "Nodes": null, "NodeNames": names}).to_string();
        let state = state(cluster());
        let view = state.extender.view.clone();
        Self {
            // The webhook router's body deadline needs the runtime's timer.
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            router: webhook_router(state, false),
            body: Bytes::from(body),
            view,
        }
    }

    /// One whole call; returns the response body.
    fn call(&self, verb: &str) -> Bytes {
        let request = Request::post(format!("/scheduler/{verb}?timeout=5s"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(self.body.clone()))
            .unwrap();
        self.rt.block_on(async {
            let response = self.router.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.into_body().collect().await.unwrap().to_bytes()
        })
    }
}

fn check(setup: &Setup) {
    let filtered: Value = serde_json::from_slice(&setup.call("filter")).unwrap();
    let passing = filtered["NodeNames"].as_array().unwrap().len();
    let failed = filtered["FailedNodes"].as_object().unwrap().len();
    assert_eq!(passing + failed, NODES);
    assert!(
        failed > 150,
        "terminating, draining and reserved nodes refused: {failed}"
    );
    let scored: Value = serde_json::from_slice(&setup.call("prioritize")).unwrap();
    let scores = scored.as_array().unwrap();
    assert_eq!(scores.len(), NODES);
    assert!(
        scores
            .iter()
            .all(|h| (0..=10).contains(&h["Score"].as_i64().unwrap()))
    );
    println!(
        "extender bench: request {} bytes, filter passes {passing} of {NODES} nodes",
        setup.body.len()
    );
}

fn bench(c: &mut Criterion, setup: &Setup) {
    let mut group = c.benchmark_group("extender");
    group.bench_function("filter_5000", |b| {
        b.iter(|| black_box(setup.call("filter")))
    });
    group.bench_function("prioritize_5000", |b| {
        b.iter(|| black_box(setup.call("prioritize")))
    });
    // The parts, to see where the time goes.
    group.bench_function("decode_only_5000", |b| {
        b.iter(|| black_box(ExtenderCall::decode(black_box(&setup.body)).unwrap().len()))
    });
    let call = ExtenderCall::decode(&setup.body).unwrap();
    let view = setup.view.read().unwrap();
    group.bench_function("filter_decide_only_5000", |b| {
        b.iter(|| black_box(call.filter(&view, Instant::now())))
    });
    group.bench_function("prioritize_decide_only_5000", |b| {
        b.iter(|| black_box(call.prioritize(&view, Instant::now())))
    });
    group.finish();
}

/// Latency percentiles of `n` sequential whole calls, in microseconds.
fn percentiles(setup: &Setup, verb: &str, n: usize) {
    for _ in 0..200 {
        black_box(setup.call(verb));
    }
    let mut micros: Vec<f64> = (0..n)
        .map(|_| {
            let started = Instant::now();
            black_box(setup.call(verb));
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((n as f64 * q).ceil() as usize).clamp(1, n) - 1];
    println!(
        "extender/{verb}_5000 latency over {n} calls: p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        at(0.50),
        at(0.99),
        micros[n - 1]
    );
}

fn main() {
    let setup = Setup::new();
    check(&setup);
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &setup);
    c.final_summary();
    // `cargo bench` passes --bench; `cargo test --benches` does not and only smoke-runs the above.
    if std::env::args().any(|a| a == "--bench") {
        for verb in ["filter", "prioritize"] {
            percentiles(&setup, verb, 5_000);
        }
    }
}
