//! Criterion benchmarks of the steering decision (pure) and of one whole AdmissionReview round trip
//! through decode -> decide -> encode, without sockets. Run: `cargo bench --bench mutate`.

use criterion::{Criterion, criterion_group, criterion_main};
use kube::core::admission::AdmissionResponse;
use nodewright::config::Config;
use nodewright::http::admission::{Incoming, decode_review, encode_response};
use nodewright::policy::mutate::{Decision, Operation, PodAdmission, Steering};
use nodewright::policy::pod::PodView;
use serde_json::Value;
use std::hint::black_box;

const REVIEW: &str = include_str!(
    "../tests/data/fixtures/admissionreview_v1_pod_create_replicaset__salesforce_generic-sidecar-injector.json"
);

fn steering() -> Steering {
    let config =
        Config::parse(include_str!("../tests/data/steering.yaml"), "steering.yaml").unwrap();
    Steering::new(&config, Some("nodewright"))
}

fn bench(c: &mut Criterion) {
    let s = steering();
    let review: Value = serde_json::from_str(REVIEW).unwrap();
    let pod: PodView = serde_json::from_value(review["request"]["object"].clone()).unwrap();
    let admission = |pod| PodAdmission {
        operation: Operation::Create,
        group: "",
        kind: "Pod",
        namespace: "keymaker",
        pod: Some(pod),
        namespace_labels: None,
    };
    assert!(matches!(s.decide(&admission(&pod)), Decision::Patch { .. }));
    c.bench_function("decide/typical_pod_steered", |b| {
        b.iter(|| black_box(s.decide(black_box(&admission(&pod)))))
    });

    let unsteered = PodAdmission {
        namespace: "elsewhere",
        ..admission(&pod)
    };
    c.bench_function("decide/typical_pod_no_rule", |b| {
        b.iter(|| black_box(s.decide(black_box(&unsteered))))
    });

    let load_body = std::fs::read("benches/load/pod-create.json").unwrap();
    c.bench_function("review/decode_only_fixture", |b| {
        b.iter(|| black_box(decode_review(black_box(REVIEW.as_bytes())).is_ok()))
    });
    c.bench_function("review/decode_only_load_body", |b| {
        b.iter(|| black_box(decode_review(black_box(&load_body)).is_ok()))
    });
    c.bench_function("review/decode_to_value_load_body", |b| {
        b.iter(|| black_box(serde_json::from_slice::<Value>(black_box(&load_body)).is_ok()))
    });
    c.bench_function("review/skip_only_load_body", |b| {
        b.iter(|| {
            black_box(
                serde_json::from_slice::<serde::de::IgnoredAny>(black_box(&load_body)).is_ok(),
            )
        })
    });
    c.bench_function("review/decode_decide_encode", |b| {
        b.iter(|| {
            let Ok(Incoming::Pod(req)) = decode_review(black_box(REVIEW.as_bytes())) else {
                panic!()
            };
            let decision = s.decide(&PodAdmission {
                operation: Operation::Create,
                group: &req.kind.group,
                kind: &req.kind.kind,
                namespace: req.namespace.as_deref().unwrap_or_default(),
                pod: req.object.as_ref(),
                namespace_labels: None,
            });
            let Decision::Patch { patch, .. } = decision else {
                panic!()
            };
            let response = AdmissionResponse::from(&*req).with_patch(patch).unwrap();
            black_box(encode_response(&response))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
