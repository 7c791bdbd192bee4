//! Property tests: random workloads, pools and existing nodes, every plan checked by
//! [`check_plan`](super::check_plan).

use super::*;

// ---------------------------------------------------------------------------------------------
// Properties

#[derive(Clone, Debug)]
enum ZoneRule {
    None,
    Spread { max_skew: i32, required: bool },
    SelfAffinity,
    AntiAffinity,
}

#[derive(Clone, Debug)]
enum HostRule {
    None,
    Spread(i32),
    AntiAffinity,
    SelfAffinity,
}

#[derive(Clone, Debug)]
enum NodeRule {
    None,
    Arch(&'static str),
    CapacityType(&'static str),
    Zone(&'static str),
}

#[derive(Clone, Debug)]
struct Workload {
    zone: ZoneRule,
    host: HostRule,
    node: NodeRule,
    tolerates: bool,
    /// (cpu millis, memory MiB) per pod.
    pods: Vec<(i64, i64)>,
}

#[derive(Clone, Debug)]
struct ExistingSpec {
    zone: usize,
    used_cpu: i64,
    used_mem_gib: i64,
    /// Workload indices of the pods on it.
    pods: Vec<usize>,
    tainted: bool,
}

#[derive(Clone, Debug)]
struct Scenario {
    workloads: Vec<Workload>,
    overhead: bool,
    pool_taint: bool,
    max_pods: Option<u32>,
    existing: Vec<ExistingSpec>,
    /// cpu limit of the pool and cores already in use, in cores.
    cpu_limit: Option<(i64, i64)>,
    /// An on-demand pool of lower weight after the first.
    fallback: bool,
}

const ZONES: [&str; 6] = [
    "us-east-1a",
    "us-east-1b",
    "us-east-1c",
    "us-east-1d",
    "us-east-1e",
    "us-east-1f",
];

fn zone_rule() -> impl Strategy<Value = ZoneRule> {
    prop_oneof![
        4 => Just(ZoneRule::None),
        3 => (1i32..=2, prop::bool::weighted(0.8))
            .prop_map(|(max_skew, required)| ZoneRule::Spread { max_skew, required }),
        1 => Just(ZoneRule::SelfAffinity),
        1 => Just(ZoneRule::AntiAffinity),
    ]
}

fn host_rule() -> impl Strategy<Value = HostRule> {
    prop_oneof![
        4 => Just(HostRule::None),
        2 => (1i32..=3).prop_map(HostRule::Spread),
        2 => Just(HostRule::AntiAffinity),
        1 => Just(HostRule::SelfAffinity),
    ]
}

fn node_rule() -> impl Strategy<Value = NodeRule> {
    prop_oneof![
        4 => Just(NodeRule::None),
        1 => Just(NodeRule::Arch("arm64")),
        1 => Just(NodeRule::Arch("amd64")),
        1 => Just(NodeRule::CapacityType("on-demand")),
        1 => Just(NodeRule::CapacityType("spot")),
        1 => prop::sample::select(&ZONES[..]).prop_map(NodeRule::Zone),
    ]
}

fn workload(max_pods: usize) -> impl Strategy<Value = Workload> {
    (
        zone_rule(),
        host_rule(),
        node_rule(),
        prop::bool::weighted(0.9),
        prop::collection::vec((10i64..=4000, 16i64..=16384), 1..=max_pods),
    )
        .prop_map(|(zone, host, node, tolerates, pods)| Workload {
            zone,
            host,
            node,
            tolerates,
            pods,
        })
}

fn existing_spec() -> impl Strategy<Value = ExistingSpec> {
    (
        0usize..6,
        0i64..=7000,
        0i64..=24,
        prop::collection::vec(0usize..3, 0..=3),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(zone, used_cpu, used_mem_gib, pods, tainted)| ExistingSpec {
                zone,
                used_cpu,
                used_mem_gib,
                pods,
                tainted,
            },
        )
}

/// `max_existing` existing nodes at most; `limited`: the pool gets a cpu limit (4-64 cores,
/// sometimes partly in use) and an on-demand fallback pool of lower weight.
fn scenario(max_existing: usize, limited: bool) -> impl Strategy<Value = Scenario> {
    let limit = if limited {
        prop::option::of((4i64..=64, 0i64..=8)).boxed()
    } else {
        Just(None).boxed()
    };
    (
        prop::collection::vec(workload(20), 1..=3),
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.2),
        prop::option::weighted(0.2, 4u32..=20),
        prop::collection::vec(existing_spec(), 0..=max_existing),
        limit,
    )
        .prop_map(
            move |(workloads, overhead, pool_taint, max_pods, existing, limit)| Scenario {
                workloads,
                overhead,
                pool_taint,
                max_pods,
                existing,
                cpu_limit: limit,
                fallback: limited,
            },
        )
}

/// The pods, the pool and the existing nodes of a scenario.
fn materialise(s: &Scenario) -> (Vec<PendingPod>, Vec<Pool>, Vec<ExistingNode>) {
    let mut pods = Vec::new();
    for (w, workload) in s.workloads.iter().enumerate() {
        let app = format!("w{w}");
        for (i, (cpu, mem)) in workload.pods.iter().enumerate() {
            let mut p = pod(
                &format!("w{w}-{i}"),
                &format!("{cpu}m"),
                &format!("{mem}Mi"),
            )
            .label("app", &app)
            .label("replica", &i.to_string());
            p = match workload.zone {
                ZoneRule::None => p,
                ZoneRule::Spread { max_skew, required } => p.spread(
                    ZONE,
                    max_skew,
                    if required {
                        "DoNotSchedule"
                    } else {
                        "ScheduleAnyway"
                    },
                    &app,
                ),
                ZoneRule::SelfAffinity => p.affinity(ZONE, &app),
                ZoneRule::AntiAffinity => p.anti_affinity(ZONE, &app),
            };
            p = match workload.host {
                HostRule::None => p,
                HostRule::Spread(max_skew) => p.spread(HOST, max_skew, "DoNotSchedule", &app),
                HostRule::AntiAffinity => p.anti_affinity(HOST, &app),
                HostRule::SelfAffinity => p.affinity(HOST, &app),
            };
            p = match workload.node {
                NodeRule::None => p,
                NodeRule::Arch(a) => p.node_selector(labels::ARCH, a),
                NodeRule::CapacityType(c) => p.node_selector(labels::CAPACITY_TYPE, c),
                NodeRule::Zone(z) => p.node_selector(ZONE, z),
            };
            if workload.tolerates {
                p = p.toleration(json!({"key": "dedicated", "operator": "Exists"}));
            }
            pods.push(p.build());
        }
    }
    let mut first = general();
    if s.overhead {
        first.daemon_overhead = res(200, 256 * MIB, 2);
    }
    if s.pool_taint {
        first.taints = vec![taint("dedicated", Some("batch"), TaintEffect::NoSchedule)];
    }
    first.kubelet.max_pods = s.max_pods;
    first.weight = 10;
    if let Some((limit, in_use)) = s.cpu_limit {
        first.limits.cpu_millis = Some(limit * 1000);
        first.in_use.cpu_millis = in_use * 1000;
    }
    let mut pools = vec![first];
    if s.fallback {
        pools.push(pool(
            "fallback",
            vec![
                req(labels::CAPACITY_TYPE, Operator::In, &["on-demand"]),
                req(labels::INSTANCE_CATEGORY, Operator::In, &["c", "m", "r"]),
            ],
        ));
    }
    let nodes = s
        .existing
        .iter()
        .enumerate()
        .map(|(k, e)| {
            let bound_pods: Vec<BoundPod> = e
                .pods
                .iter()
                .filter(|w| **w < s.workloads.len())
                .map(|w| bound(&format!("w{w}")))
                .collect();
            let mut n = existing(
                &format!("node-{k}"),
                ZONES[e.zone],
                res(e.used_cpu, e.used_mem_gib * GIB, bound_pods.len() as i64),
                bound_pods,
            );
            if e.tainted {
                n.taints = vec![taint("maintenance", None, TaintEffect::NoSchedule)];
            }
            n
        })
        .collect();
    (pods, pools, nodes)
}

/// Properties beyond [`check_plan`] for scenarios whose pods are grouped by workload.
fn check_workloads(s: &Scenario, pods: &[PendingPod], nodes: &[ExistingNode], plan: &Plan) {
    let mut host: Vec<Option<String>> = vec![None; pods.len()];
    let mut zone: Vec<Option<String>> = vec![None; pods.len()];
    for (k, n) in plan.nodes.iter().enumerate() {
        for &i in &n.pod_indices {
            host[i] = Some(format!("new-{k}"));
            zone[i] = Some(n.zone.clone());
        }
    }
    for p in &plan.placements {
        host[p.pod_index] = Some(p.node.clone());
        zone[p.pod_index] = nodes
            .iter()
            .find(|n| n.name == p.node)
            .and_then(|n| n.labels.get(labels::ZONE).cloned());
    }
    let mut first = 0;
    for (w, workload) in s.workloads.iter().enumerate() {
        let range = first..first + workload.pods.len();
        first = range.end;
        let app = format!("w{w}");
        let on_existing = nodes
            .iter()
            .any(|n| n.pods.iter().any(|p| p.labels["app"] == app));
        let hosts: Vec<&String> = range.clone().filter_map(|i| host[i].as_ref()).collect();
        let zones: BTreeSet<&String> = range.clone().filter_map(|i| zone[i].as_ref()).collect();
        match workload.host {
            HostRule::AntiAffinity => {
                let distinct: BTreeSet<_> = hosts.iter().collect();
                assert_eq!(
                    distinct.len(),
                    hosts.len(),
                    "{app}: hostname anti-affinity broken"
                );
            }
            HostRule::Spread(max_skew) => {
                for h in &hosts {
                    let n = hosts.iter().filter(|x| *x == h).count();
                    assert!(
                        n as i32 <= max_skew,
                        "{app}: {n} pods on {h}, maxSkew {max_skew}"
                    );
                }
            }
            HostRule::SelfAffinity if !on_existing => {
                let distinct: BTreeSet<_> = hosts.iter().collect();
                assert!(
                    distinct.len() <= 1,
                    "{app}: hostname self-affinity on {distinct:?}"
                );
            }
            _ => {}
        }
        match workload.zone {
            ZoneRule::SelfAffinity if !on_existing => {
                assert!(
                    zones.len() <= 1,
                    "{app}: zone self-affinity across {zones:?}"
                );
            }
            ZoneRule::AntiAffinity => {
                let placed = range.clone().filter(|i| zone[*i].is_some()).count();
                assert_eq!(placed, zones.len(), "{app}: zone anti-affinity broken");
            }
            _ => {}
        }
    }
}

fn check_scenario(s: &Scenario) {
    let (pods, pools, nodes) = materialise(s);
    let input = Input {
        pods: &pods,
        pools: &pools,
        catalog: catalog(),
        nodes: &nodes,
    };
    let plan = solve(&input);
    let result = catch_unwind(AssertUnwindSafe(|| {
        check_plan(&pods, &pools, catalog(), &nodes, &plan);
        check_workloads(s, &pods, &nodes, &plan);
        let again = solve(&input);
        assert!(again == plan, "solving twice gave different plans");
    }));
    if let Err(e) = result {
        panic!("{}\nplan:\n{}", panic_message(&*e), describe_plan(&plan));
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        // no regression file next to the tests: report the minimal case instead
        failure_persistence: None,
        ..ProptestConfig::with_cases(32)
    })]

    #[test]
    fn random_workloads_get_valid_plans(s in scenario(0, false)) {
        check_scenario(&s);
    }

    #[test]
    fn random_workloads_with_existing_nodes_get_valid_plans(s in scenario(3, false)) {
        check_scenario(&s);
    }

    #[test]
    fn random_workloads_over_limited_pools_get_valid_plans(s in scenario(0, true)) {
        check_scenario(&s);
    }
}

/// The pure properties on larger unconstrained mixes: nothing but requests.
#[test]
fn unconstrained_mixes_pack_within_allocatable() {
    let mut rng = 0x5eed_u64;
    let mut next = |lo: i64, hi: i64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + ((rng >> 33) as i64) % (hi - lo + 1)
    };
    for round in 0..4 {
        let pods: Vec<PendingPod> = (0..150)
            .map(|i| {
                pod(
                    &format!("p{round}-{i}"),
                    &format!("{}m", next(10, 4000)),
                    &format!("{}Mi", next(16, 16384)),
                )
                .build()
            })
            .collect();
        let pools = [general()];
        let plan = solve(&Input {
            pods: &pods,
            pools: &pools,
            catalog: catalog(),
            nodes: &[],
        });
        check_plan(&pods, &pools, catalog(), &[], &plan);
        assert!(plan.unschedulable.is_empty());
    }
}
