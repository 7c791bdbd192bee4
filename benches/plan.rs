//! Criterion benchmark of the capacity planner on Karpenter's scheduling-benchmark mix
//! (examples/benchmix.rs) at 1,000, 5,000 and 20,000 pods against the full embedded us-east-1
//! catalog, with every instance type allowed (benches/plan/benchmix-config.yaml):
//! - `plan/solve/N`: the solver alone (pods already read);
//! - `plan/prepare/N`: reading the YAML, expanding and mutating as `nodewright plan` does, and
//!   turning the pods into the solver's view.
//!
//! The whole `nodewright plan` process (with its memory) is measured by benches/plan/run.sh.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nodewright::cloud::catalog::embedded;
use nodewright::config::Config;
use nodewright::plan::{manifests, pools_from_config};
use nodewright::policy::mutate::Steering;
use nodewright::scheduling::{Input, PendingPod, solve};

#[allow(dead_code)]
#[path = "../examples/benchmix.rs"]
mod benchmix;

fn mix_yaml(pods: usize) -> String {
    let mut out = Vec::new();
    benchmix::write_mix(
        &mut out,
        &benchmix::Args {
            pods,
            seed: 42,
            namespace: "default".into(),
        },
    )
    .expect("in memory");
    String::from_utf8(out).expect("utf-8")
}

fn bench(c: &mut Criterion) {
    let config = Config::parse(
        include_str!("plan/benchmix-config.yaml"),
        "benches/plan/benchmix-config.yaml",
    )
    .expect("bench config");
    let steering = Steering::new(&config, None);
    let catalog = embedded("us-east-1", &config.policy.pricing).expect("catalog");
    let pools = pools_from_config(&config, &[]);
    let mut group = c.benchmark_group("plan");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for n in [1_000usize, 5_000, 20_000] {
        let yaml = mix_yaml(n);
        let prepare = || {
            let docs = manifests::parse_documents(&yaml, "benchmix.yaml").expect("parse");
            let workloads = manifests::expand(docs, &steering).expect("expand");
            workloads
                .pods
                .iter()
                .map(PendingPod::from_pod)
                .collect::<Vec<_>>()
        };
        let pods = prepare();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("prepare", n), &n, |b, _| b.iter(prepare));
        group.bench_with_input(BenchmarkId::new("solve", n), &n, |b, _| {
            b.iter(|| {
                solve(&Input {
                    pods: &pods,
                    pools: &pools,
                    catalog: &catalog,
                    nodes: &[],
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
