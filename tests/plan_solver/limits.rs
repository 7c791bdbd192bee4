//! Pool limits: spilling and reasons, charging what is launched under the benchmark mix, and
//! zone rules kept when a limit leaves pods out.

use super::*;

// --- pool limits ------------------------------------------------------------------------------

#[test]
fn pool_limits() {
    let limited = |limits: Limits| {
        let mut p = with_weight(general(), 10);
        p.name = "limited".into();
        p.limits = limits;
        p
    };
    let overflow = || {
        let mut p = general();
        p.name = "overflow".into();
        p
    };
    let two_nodes = Limits {
        nodes: Some(2),
        ..Default::default()
    };
    let eight_cores = Limits {
        cpu_millis: Some(8000),
        ..Default::default()
    };
    let spread_pods = pod("a", "1", "1Gi")
        .label("app", "a")
        .anti_affinity(HOST, "a")
        .replicas(5);
    let mut in_use = limited(eight_cores);
    in_use.in_use = Usage {
        cpu_millis: 7500,
        memory_bytes: 30 * GIB,
        nodes: 3,
        ..Default::default()
    };
    run(vec![
        case(
            "a node limit spills to the next pool",
            spread_pods.clone(),
            vec![limited(two_nodes), overflow()],
            |o| {
                o.all_placed();
                assert_eq!(o.pool_nodes("limited").len(), 2);
                assert_eq!(o.pool_nodes("overflow").len(), 3);
            },
        ),
        case(
            "a node limit without another pool",
            spread_pods.clone(),
            vec![limited(two_nodes)],
            |o| {
                assert_eq!(o.plan.nodes.len(), 2);
                assert_eq!(o.plan.unschedulable.len(), 3);
                for u in &o.plan.unschedulable {
                    assert!(
                        u.reason.contains("limits") && u.reason.contains("limited"),
                        "{}",
                        u.reason
                    );
                }
            },
        ),
        case(
            "a cpu limit spills to the next pool",
            pod("a", "3", "2Gi").replicas(6),
            vec![limited(eight_cores), overflow()],
            |o| {
                o.all_placed();
                let cores: u32 = o.pool_nodes("limited").iter().map(|n| o.it(n).vcpus).sum();
                assert!(cores > 0 && cores <= 8, "{cores}");
                assert!(!o.pool_nodes("overflow").is_empty());
            },
        ),
        case(
            "a cpu limit without another pool",
            pod("a", "3", "2Gi").replicas(6),
            vec![limited(eight_cores)],
            |o| {
                let placed = o.count_placed("a");
                assert!((1..=2).contains(&placed), "{placed} placed under 8 cores");
                for u in &o.plan.unschedulable {
                    assert!(u.reason.contains("limits"), "{}", u.reason);
                }
            },
        ),
        case(
            "a memory limit",
            pod("a", "100m", "6Gi")
                .label("app", "a")
                .anti_affinity(HOST, "a")
                .replicas(4),
            vec![limited(Limits {
                memory_bytes: Some(16 * GIB),
                ..Default::default()
            })],
            |o| {
                assert!(o.count_placed("a") >= 1);
                assert!(!o.plan.unschedulable.is_empty());
                for u in &o.plan.unschedulable {
                    assert!(
                        u.reason.contains("limits") && u.reason.contains("memory"),
                        "{}",
                        u.reason
                    );
                }
            },
        ),
        case(
            "capacity in use counts against the limits",
            one(pod("a", "500m", "512Mi")),
            vec![in_use],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains("limits"), "{r}");
            },
        ),
        // Found by the properties: the packer counts the limits with the type it packed
        // (m2.xlarge: 2 vCPUs, 17.1 GiB), then the plan is re-priced to the cheapest type that
        // holds the pods (r6g.xlarge: 4 vCPUs), past the limit.
        case(
            "re-pricing stays within the cpu limit",
            one(pod("a", "100m", "14500Mi")),
            vec![limited(Limits {
                cpu_millis: Some(2000),
                ..Default::default()
            })],
            |o| assert!(o.type_of("a").vcpus <= 2, "{}", o.node("a").instance_type),
        ),
    ]);
}

/// Karpenter's scheduling-benchmark mix in small: five groups (no constraint, zone spread,
/// hostname spread, zone self-affinity, hostname anti-affinity) of `per_group` pods, with cpu and
/// memory requests cycling through the benchmark's lists.
fn benchmark_mix(per_group: usize) -> Vec<PendingPod> {
    const CPU_LIST: [&str; 5] = ["100m", "250m", "500m", "1000m", "1500m"];
    const MEMORY_LIST: [&str; 6] = ["100Mi", "256Mi", "512Mi", "1024Mi", "2048Mi", "4096Mi"];
    let mut pods = Vec::new();
    for (g, group) in [
        "generic",
        "zone-spread",
        "host-spread",
        "zone-affinity",
        "host-anti",
    ]
    .into_iter()
    .enumerate()
    {
        for i in 0..per_group {
            let b = pod(
                &format!("{group}-{i}"),
                CPU_LIST[(i + g) % CPU_LIST.len()],
                MEMORY_LIST[(i * 7 + g) % MEMORY_LIST.len()],
            )
            .label("app", group);
            let b = match g {
                1 => b.spread(ZONE, 1, "DoNotSchedule", group),
                2 => b.spread(HOST, 1, "DoNotSchedule", group),
                3 => b.affinity(ZONE, group),
                4 => b.anti_affinity(HOST, group),
                _ => b,
            };
            pods.push(b.build());
        }
    }
    pods
}

/// Issue 11, item 1: a limited pool is charged with the types its nodes launch as. The packer
/// fills larger types than it launches (the plan re-prices each node to the cheapest type that
/// holds its pods); charging the packed types spent the limit on room no node would have, and
/// left pods "at the limit" with the planned nodes far below it.
#[test]
fn pool_limits_are_charged_with_what_is_launched() {
    let pods = benchmark_mix(120);
    let plan = solve(&Input {
        pods: &pods,
        pools: &[anything()],
        catalog: catalog(),
        nodes: &[],
    });
    assert!(plan.unschedulable.is_empty(), "{}", describe_plan(&plan));
    let vcpus = |plan: &Plan| -> i64 {
        plan.nodes
            .iter()
            .map(|n| i64::from(catalog().get(&n.instance_type).unwrap().vcpus))
            .sum()
    };
    let needed = vcpus(&plan) * 1000;
    let limited = |cpu_millis: i64| {
        let mut p = anything();
        p.limits = Limits {
            cpu_millis: Some(cpu_millis),
            ..Default::default()
        };
        p
    };
    // Re-pricing can only shrink a node and tails only remove nodes, so a limit 5 % above the
    // unlimited plan's capacity is never reached while packing.
    let roomy = needed * 105 / 100;
    // Below the unlimited plan: pods are left out, and the limit is spent on them, not on room.
    let binding = needed * 80 / 100;
    run(vec![
        case(
            "a limit above what the plan launches strands no pod",
            pods.clone(),
            vec![limited(roomy)],
            |o| o.all_placed(),
        ),
        case(
            "a binding limit is used, not stranded",
            pods.clone(),
            vec![limited(binding)],
            move |o| {
                assert!(!o.plan.unschedulable.is_empty());
                for u in &o.plan.unschedulable {
                    assert!(
                        u.reason.contains("limits") || u.reason.contains("zone rule"),
                        "{}",
                        u.reason
                    );
                }
                let planned = o
                    .plan
                    .nodes
                    .iter()
                    .map(|n| i64::from(o.it(n).vcpus) * 1000)
                    .sum::<i64>();
                assert!(
                    planned * 100 >= binding * 90,
                    "{planned} of {binding} millicores planned"
                );
            },
        ),
    ]);
}

/// Found by the properties: zones are assigned before packing, and pods a bucket cannot take for
/// the pool's limits are dropped or spilled to the next pool; the pods that are placed must
/// still keep their zone spread or zone anti-affinity (the planner takes pods off until they do).
#[test]
fn zone_rules_survive_pool_limits() {
    let limited = |limits: Limits| {
        let mut p = with_weight(general(), 10);
        p.name = "limited".into();
        p.limits = limits;
        p
    };
    let overflow = || {
        let mut p = general();
        p.name = "overflow".into();
        p
    };
    let in_zones = |mut p: Pool, zones: &[&str]| {
        p.requirements.push(req(labels::ZONE, Operator::In, zones));
        p
    };
    let two_cores = Limits {
        cpu_millis: Some(2000),
        ..Default::default()
    };
    let four_cores = Limits {
        cpu_millis: Some(4000),
        ..Default::default()
    };
    run(vec![
        case(
            "zone spread under a cpu limit",
            pod("web", "1500m", "16Mi")
                .label("app", "web")
                .spread(ZONE, 1, "DoNotSchedule", "web")
                .replicas(3),
            vec![in_zones(limited(four_cores), &["us-east-1a", "us-east-1b"])],
            |o| {
                let counts = o.zone_counts("web");
                let (a, b) = (counts.get("us-east-1a"), counts.get("us-east-1b"));
                assert!(
                    a.unwrap_or(&0).abs_diff(*b.unwrap_or(&0)) <= 1,
                    "{counts:?}"
                );
            },
        ),
        case(
            "zone spread spilling to a pool in another zone",
            pod("web", "1500m", "16Mi")
                .label("app", "web")
                .spread(ZONE, 1, "DoNotSchedule", "web")
                .replicas(4),
            vec![
                in_zones(limited(two_cores), &["us-east-1a", "us-east-1b"]),
                in_zones(overflow(), &["us-east-1c"]),
            ],
            |o| {
                let counts = o.zone_counts("web");
                assert!(counts.values().all(|c| *c <= 2), "{counts:?}");
            },
        ),
        case(
            "zone anti-affinity spilling to a pool in another zone",
            pod("web", "1500m", "16Mi")
                .label("app", "web")
                .anti_affinity(ZONE, "web")
                .replicas(3),
            vec![
                in_zones(limited(two_cores), &["us-east-1a", "us-east-1b"]),
                in_zones(overflow(), &["us-east-1a", "us-east-1c"]),
            ],
            |o| {
                let counts = o.zone_counts("web");
                assert!(counts.values().all(|c| *c == 1), "{counts:?}");
            },
        ),
    ]);
}
