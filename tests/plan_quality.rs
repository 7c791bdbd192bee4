//! How close the planner's fleets come to the cheapest possible: the price per hour of each plan
//! against the LP lower bound (the cheapest fractional mix of instance types whose allocatable
//! covers the total cpu, memory and pod-slot demand), on generated workloads.
//!
//! Print the ratios with `cargo test --release --test plan_quality -- --nocapture`.

use nodewright::cloud::catalog::embedded;
use nodewright::config::PricingSpec;
use nodewright::model::resources::{CPU, MEMORY, PODS};
use nodewright::model::{Catalog, Operator, Requirement, Resources};
use nodewright::scheduling::lp;
use nodewright::scheduling::pod::{Constraints, PendingPod};
use nodewright::scheduling::solver::{Input, Pool, solve};

/// SplitMix64: deterministic workloads without a rand dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
}

fn pod(i: usize, cpu_millis: i64, mem_mib: i64) -> PendingPod {
    let mut requests = Resources::ZERO;
    requests.0[CPU] = cpu_millis;
    requests.0[MEMORY] = mem_mib << 20;
    requests.0[PODS] = 1;
    PendingPod {
        key: format!("default/pod-{i}"),
        requests,
        constraints: Constraints {
            namespace: "default".into(),
            ..Default::default()
        },
        invalid: None,
    }
}

/// Many small pods of every shape: 50m-1000m cpu, 64Mi-2Gi memory.
fn small_heterogeneous(n: usize, seed: u64) -> Vec<PendingPod> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| pod(i, rng.range(50, 1000), rng.range(64, 2048)))
        .collect()
}

/// Half cpu-heavy (1-2 cores, 256-512Mi), half memory-heavy (100-250m, 4-8Gi).
fn mixed_heavy(n: usize, seed: u64) -> Vec<PendingPod> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                pod(i, rng.range(1000, 2000), rng.range(256, 512))
            } else {
                pod(i, rng.range(100, 250), rng.range(4096, 8192))
            }
        })
        .collect()
}

/// Karpenter's benchmark sizes without constraints: cpu from {100,250,500,1000,1500}m, memory
/// from {100,256,512,1024,2048,4096}Mi.
fn karpenter_sizes(n: usize, seed: u64) -> Vec<PendingPod> {
    let mut rng = Rng(seed);
    let cpus = [100, 250, 500, 1000, 1500];
    let mems = [100, 256, 512, 1024, 2048, 4096];
    (0..n)
        .map(|i| {
            let c = cpus[(rng.next() % 5) as usize];
            let m = mems[(rng.next() % 6) as usize];
            pod(i, c, m)
        })
        .collect()
}

fn pool(name: &str, requirements: Vec<Requirement>) -> Pool {
    Pool {
        name: name.into(),
        requirements,
        ..Default::default()
    }
}

fn req(key: &str, op: Operator, values: &[&str]) -> Requirement {
    Requirement {
        key: key.into(),
        operator: op,
        values: values.iter().map(|v| v.to_string()).collect(),
        min_values: None,
    }
}

/// Cost of the plan over the LP bound for the same pods, pool and catalog.
fn ratio(pods: &[PendingPod], pool: &Pool, catalog: &Catalog) -> (f64, f64, usize) {
    let plan = solve(&Input {
        pods,
        pools: std::slice::from_ref(pool),
        catalog,
        nodes: &[],
    });
    assert!(
        plan.unschedulable.is_empty(),
        "{:?}",
        &plan.unschedulable[..1]
    );
    let placed: usize = plan.nodes.iter().map(|n| n.pods.len()).sum();
    assert_eq!(placed, pods.len());
    for n in &plan.nodes {
        assert!(
            n.requests.fits_in(&n.allocatable),
            "node over allocatable: {n:?}"
        );
    }
    // Bound: every offering the pool allows, cheapest per type.
    let offers: Vec<(Resources, f64)> = catalog
        .types
        .iter()
        .filter(|t| {
            pool.requirements.iter().all(|r| match r.key.as_str() {
                "karpenter.sh/capacity-type" | "topology.kubernetes.io/zone" => true,
                key => r.allows(t.label(key).as_deref()),
            })
        })
        .filter_map(|t| {
            let price = t
                .cheapest_offering(|o| {
                    pool.requirements
                        .iter()
                        .filter(|r| r.key == "karpenter.sh/capacity-type")
                        .all(|r| r.allows(Some(o.capacity_type.as_str())))
                })?
                .price;
            Some((t.allocatable(&pool.kubelet) - pool.daemon_overhead, price))
        })
        .collect();
    let demand = pods.iter().fold(Resources::ZERO, |acc, p| acc + p.requests);
    let bound = lp::solve(&demand, &offers).expect("bound").bound;
    (plan.total_price_per_hour / bound, bound, plan.nodes.len())
}

fn workloads() -> Vec<(&'static str, Vec<PendingPod>)> {
    vec![
        ("small heterogeneous x2000", small_heterogeneous(2000, 1)),
        ("small heterogeneous x300", small_heterogeneous(300, 2)),
        ("mixed cpu/memory heavy x1000", mixed_heavy(1000, 3)),
        ("mixed cpu/memory heavy x200", mixed_heavy(200, 4)),
        ("karpenter sizes x2000", karpenter_sizes(2000, 5)),
    ]
}

fn pools() -> Vec<Pool> {
    vec![
        // The workshop's pool: c, m and r families of generation 5 and later, amd64.
        pool(
            "workshop",
            vec![
                req(
                    "karpenter.sh/capacity-type",
                    Operator::In,
                    &["spot", "on-demand"],
                ),
                req("kubernetes.io/arch", Operator::In, &["amd64"]),
                req(
                    "karpenter.k8s.aws/instance-category",
                    Operator::In,
                    &["c", "m", "r"],
                ),
                req(
                    "karpenter.k8s.aws/instance-generation",
                    Operator::Gt,
                    &["4"],
                ),
            ],
        ),
        pool(
            "on-demand",
            vec![
                req("karpenter.sh/capacity-type", Operator::In, &["on-demand"]),
                req(
                    "karpenter.k8s.aws/instance-category",
                    Operator::In,
                    &["c", "m", "r"],
                ),
            ],
        ),
        pool(
            "no-t-types",
            vec![
                req(
                    "karpenter.sh/capacity-type",
                    Operator::In,
                    &["spot", "on-demand"],
                ),
                req(
                    "karpenter.k8s.aws/instance-category",
                    Operator::NotIn,
                    &["t"],
                ),
            ],
        ),
        pool(
            "general",
            vec![req(
                "karpenter.sh/capacity-type",
                Operator::In,
                &["spot", "on-demand"],
            )],
        ),
    ]
}

fn report(pool_names: &[&str]) -> f64 {
    let catalog = embedded("us-east-1", &PricingSpec::default()).unwrap();
    let mut worst: f64 = 0.0;
    for (name, pods) in &workloads() {
        for p in pools()
            .iter()
            .filter(|p| pool_names.contains(&p.name.as_str()))
        {
            let (r, bound, nodes) = ratio(pods, p, &catalog);
            println!(
                "{name:<30} pool {:<10} plan/bound {r:.4}  (bound {bound:.4} $/h, {nodes} nodes)",
                p.name
            );
            assert!(r >= 1.0 - 1e-9, "a plan cannot beat the LP bound: {r}");
            if pods.len() >= 1000 {
                worst = worst.max(r);
            }
        }
    }
    worst
}

/// The target (within 5 % of the bound) on pools of general-purpose, compute and memory
/// families, for batches of 1,000 pods and more. Smaller batches pay for their last, partly
/// filled node (3 to 5 nodes in all) and are printed, not asserted.
#[test]
fn plans_cost_within_five_percent_of_the_lp_bound() {
    let worst = report(&["workshop", "on-demand"]);
    println!("worst ratio, batches of 1,000+ pods: {worst:.4}");
    assert!(
        worst <= 1.05,
        "worst plan/bound ratio {worst:.4} exceeds 1.05"
    );
}

/// Every pool, printed only. On the whole catalog the bound is far below any placement: the LP
/// buys cpu from t4g.nano-like types (2 vCPUs with ~74Mi allocatable memory for a fraction of a
/// cent) and memory from x2gd, but a pod needs both on one node.
#[test]
#[ignore = "report: cargo test --release --test plan_quality -- --include-ignored --nocapture"]
fn report_every_pool() {
    let worst = report(&["workshop", "on-demand", "no-t-types", "general"]);
    println!("worst ratio, batches of 1,000+ pods, every pool: {worst:.4}");
}
