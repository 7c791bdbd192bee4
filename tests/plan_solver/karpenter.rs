//! What Karpenter users write beyond the core constraints: preferences and their relaxation,
//! minValues, limits on devices, running pods' anti-affinity, minDomains, static pools.

use super::*;

// --- preferences --------------------------------------------------------------------------------

/// Issue 11, item 7: preferences are planned as required first and relaxed one at a time, in
/// Karpenter's order, for the pods that cannot be placed with them.
#[test]
fn preferences_are_held_then_relaxed() {
    let spot_only = || {
        pool(
            "spot",
            vec![req(labels::CAPACITY_TYPE, Operator::In, &["spot"])],
        )
    };
    let two_zones = || {
        let mut p = general();
        p.requirements.push(req(
            labels::ZONE,
            Operator::In,
            &["us-east-1a", "us-east-1b"],
        ));
        p
    };
    run(vec![
        case(
            "a preferred zone a pool offers is kept",
            one(pod("a", "500m", "512Mi").prefer_node(10, ZONE, &["us-east-1c"])),
            vec![general()],
            |o| assert_eq!(o.zone_of("a").as_deref(), Some("us-east-1c")),
        ),
        case(
            "a preference no pool can meet is relaxed, and the pod is placed",
            one(pod("a", "500m", "512Mi").prefer_node(10, labels::INSTANCE_CATEGORY, &["zz"])),
            vec![general()],
            |o| o.all_placed(),
        ),
        case(
            "the heaviest preferred term goes first, then a lighter one is kept",
            one(pod("a", "500m", "512Mi")
                .prefer_node(1, ZONE, &["us-east-1d"])
                .prefer_node(50, labels::CAPACITY_TYPE, &["on-demand"])),
            vec![spot_only()],
            |o| {
                assert_eq!(o.zone_of("a").as_deref(), Some("us-east-1d"));
                assert_eq!(o.node("a").capacity_type.to_string(), "spot");
            },
        ),
        case(
            "preferred hostname anti-affinity puts replicas on nodes of their own",
            pod("web", "250m", "256Mi")
                .label("app", "web")
                .prefer_anti_affinity(100, HOST, "web")
                .replicas(3),
            vec![general()],
            |o| {
                o.all_placed();
                let hosts = o.host_counts("web");
                assert_eq!(hosts.len(), 3, "{hosts:?}");
            },
        ),
        case(
            "relaxed rounds stay within the pool's limits",
            pod("web", "250m", "256Mi")
                .label("app", "web")
                .prefer_anti_affinity(100, HOST, "web")
                .replicas(4),
            vec![{
                let mut p = general();
                p.limits.nodes = Some(2);
                p
            }],
            |o| {
                assert_eq!(o.plan.nodes.len(), 2);
                assert_eq!(o.count_placed("web"), 2);
            },
        ),
        case(
            "preferred zone anti-affinity beyond the zones there are is relaxed for the rest",
            pod("web", "250m", "256Mi")
                .label("app", "web")
                .prefer_anti_affinity(100, ZONE, "web")
                .replicas(4),
            vec![two_zones()],
            |o| {
                o.all_placed();
                let zones = o.zone_counts("web");
                assert_eq!(zones.len(), 2, "{zones:?}");
            },
        ),
    ]);
}

// --- minValues -----------------------------------------------------------------------------------

/// Issue 11, item 5: a pool's `minValues` holds over each new node's types (chosen type and
/// alternatives), widened past the usual 60 alternatives where needed; a node that cannot keep it
/// is not planned, and its pods get Karpenter's reason.
#[test]
fn min_values_hold_over_each_nodes_types() {
    let with_min = |key: &str, op: Operator, values: &[&str], min: i32| {
        let mut r = req(key, op, values);
        r.min_values = Some(min);
        r
    };
    let distinct = |o: &Outcome, node: &PlannedNode, key: &str| -> usize {
        std::iter::once(&node.instance_type)
            .chain(&node.alternatives)
            .filter_map(|t| o.catalog.get(t).and_then(|it| it.label(key)))
            .collect::<BTreeSet<_>>()
            .len()
    };
    let families = |min| {
        pool(
            "families",
            vec![
                both_capacity_types(),
                with_min(labels::INSTANCE_FAMILY, Operator::Exists, &[], min),
            ],
        )
    };
    let types = |min| {
        pool(
            "types",
            vec![
                both_capacity_types(),
                with_min(labels::INSTANCE_TYPE, Operator::Exists, &[], min),
            ],
        )
    };
    let two_families = pool(
        "two",
        vec![
            both_capacity_types(),
            with_min(labels::INSTANCE_FAMILY, Operator::In, &["c5", "m5"], 3),
        ],
    );
    run(vec![
        case(
            "five instance families among a node's types",
            pod("a", "1", "2Gi").replicas(3),
            vec![families(5)],
            move |o| {
                o.all_placed();
                for n in &o.plan.nodes {
                    assert!(distinct(o, n, labels::INSTANCE_FAMILY) >= 5);
                }
            },
        ),
        case(
            "more types than the usual alternatives",
            one(pod("a", "1", "2Gi")),
            vec![types(90)],
            move |o| {
                let n = o.node("a");
                assert!(n.alternatives.len() + 1 >= 90, "{}", n.alternatives.len());
                assert!(distinct(o, n, labels::INSTANCE_TYPE) >= 90);
            },
        ),
        case(
            "a minValues no types can meet leaves the pod with Karpenter's reason",
            one(pod("a", "1", "2Gi")),
            vec![two_families],
            |o| {
                let r = o.unschedulable("a");
                assert!(
                    r.contains("minValues requirement is not met")
                        && r.contains(labels::INSTANCE_FAMILY)
                        && r.contains("minValues: 3"),
                    "{r}"
                );
            },
        ),
    ]);
}

/// Issue 11, item 6: a NodePool limit on any resource a node provides, GPUs here.
#[test]
fn pool_limits_on_devices() {
    let gpus = |n: i64| {
        let mut p = anything();
        p.name = "gpus".into();
        p.limits.others[NVIDIA_GPU] = Some(n);
        p
    };
    run(vec![
        case(
            "a GPU limit caps the GPUs launched, whatever the types",
            pod("train", "2", "8Gi")
                .label("app", "train")
                .limit("nvidia.com/gpu", "1")
                .anti_affinity(HOST, "train")
                .replicas(4),
            vec![gpus(2)],
            |o| {
                let gpus: u32 = o.plan.nodes.iter().map(|n| o.it(n).gpus).sum();
                assert!(gpus <= 2, "{gpus} GPUs launched under a limit of 2");
                assert_eq!(o.count_placed("train"), 2);
                for u in &o.plan.unschedulable {
                    assert!(u.reason.contains("nvidia.com/gpu 2 of 2"), "{}", u.reason);
                }
            },
        ),
        case(
            "pods without GPUs are not bound by a GPU limit",
            pod("web", "1", "1Gi").replicas(10),
            vec![gpus(0)],
            |o| o.all_placed(),
        ),
    ]);
}

/// Issue 11, item 7: a running pod's required anti-affinity keeps the pods it selects off its
/// node (hostname) or out of its zone, as the scheduler checks it from both sides.
#[test]
fn running_pods_anti_affinity_counts_against_new_pods() {
    let small = res(500, 512 * MIB, 1);
    run(vec![
        case(
            "zone anti-affinity of a running pod keeps the pods it selects out of its zone",
            pod("web", "500m", "512Mi").label("app", "web").replicas(6),
            vec![general()],
            |o| {
                let zones = o.zone_counts("web");
                assert!(!zones.contains_key("us-east-1a"), "{zones:?}");
                assert_eq!(zones.values().sum::<usize>(), 6);
            },
        )
        .nodes(vec![existing(
            "guard-node",
            "us-east-1a",
            small,
            vec![bound_repelling("guard", ZONE, "web")],
        )]),
        case(
            "hostname anti-affinity of a running pod keeps the pods it selects off its node",
            one(pod("web", "500m", "512Mi").label("app", "web")),
            vec![general()],
            |o| assert_ne!(o.placed_on("web"), Some("guard-node")),
        )
        .nodes(vec![existing(
            "guard-node",
            "us-east-1a",
            small,
            vec![bound_repelling("guard", HOST, "web")],
        )]),
        case(
            "anti-affinity selecting other pods does not bind these",
            one(pod("web", "500m", "512Mi").label("app", "web")),
            vec![general()],
            |o| assert_eq!(o.placed_on("web"), Some("guard-node")),
        )
        .nodes(vec![existing(
            "guard-node",
            "us-east-1a",
            small,
            vec![bound_repelling("guard", HOST, "db")],
        )]),
    ]);
}

/// Issue 11, item 7: `minDomains` on a zone spread: with fewer zones than minDomains, the global
/// minimum counts as 0, so each zone holds at most maxSkew matching pods.
#[test]
fn min_domains_caps_each_zone() {
    let three_zones = || {
        let mut p = general();
        p.requirements.push(req(
            ZONE,
            Operator::In,
            &["us-east-1a", "us-east-1b", "us-east-1c"],
        ));
        p
    };
    let spread = |min_domains: Option<i32>| {
        let mut c = json!({"maxSkew": 1, "topologyKey": ZONE, "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "web"}}});
        if let Some(m) = min_domains {
            c["minDomains"] = json!(m);
        }
        pod("web", "500m", "512Mi")
            .label("app", "web")
            .spread_raw(c)
    };
    run(vec![
        case(
            "minDomains above the zones there are: one pod per zone",
            spread(Some(4)).replicas(5),
            vec![three_zones()],
            |o| {
                assert_eq!(o.count_placed("web"), 3);
                assert!(o.zone_counts("web").values().all(|n| *n == 1));
            },
        ),
        case(
            "minDomains the zones meet changes nothing",
            spread(Some(3)).replicas(5),
            vec![three_zones()],
            |o| o.all_placed(),
        ),
        case(
            "without minDomains every pod is placed",
            spread(None).replicas(5),
            vec![three_zones()],
            |o| o.all_placed(),
        ),
    ]);
}

/// Issue 11, item 8: static NodePools (`spec.replicas`) get the nodes they are missing, the
/// cheapest offering they allow, within `limits.nodes`; pods are not planned onto their new nodes.
#[test]
fn static_pools_keep_their_replicas() {
    let fixed = |replicas: i64, have: i64| {
        let mut p = general();
        p.name = "fixed".into();
        p.replicas = Some(replicas);
        p.in_use.nodes = have;
        p
    };
    let capped = {
        let mut p = fixed(5, 0);
        p.limits.nodes = Some(3);
        p
    };
    run(vec![
        case(
            "the missing replicas, empty",
            Vec::new(),
            vec![fixed(3, 1)],
            |o| {
                assert_eq!(o.plan.nodes.len(), 2);
                let cheapest = o.plan.nodes[0].price_per_hour;
                for n in &o.plan.nodes {
                    assert_eq!(n.node_pool, "fixed");
                    assert!(n.pods.is_empty());
                    assert_eq!(n.price_per_hour, cheapest);
                    assert!(!n.alternatives.is_empty());
                }
                // The cheapest offering the pool allows: no c/m/r offering is cheaper.
                let cheaper = o.catalog.types.iter().any(|t| {
                    ["c", "m", "r"].contains(&t.category.as_str())
                        && t.offerings
                            .iter()
                            .any(|x| x.available && x.price < cheapest)
                });
                assert!(!cheaper);
            },
        ),
        case(
            "a full static pool gets none",
            Vec::new(),
            vec![fixed(2, 2)],
            |o| assert!(o.plan.nodes.is_empty()),
        ),
        case(
            "limits.nodes caps the replicas",
            Vec::new(),
            vec![capped],
            |o| assert_eq!(o.plan.nodes.len(), 3),
        ),
        case(
            "pods are not planned onto a static pool's new nodes",
            one(pod("a", "500m", "512Mi")),
            vec![fixed(1, 1)],
            |o| {
                assert!(o.plan.nodes.is_empty());
                assert!(
                    o.unschedulable("a").contains("static"),
                    "{}",
                    o.unschedulable("a")
                );
            },
        ),
        case(
            "pods go to the dynamic pool beside a static one",
            one(pod("a", "500m", "512Mi")),
            vec![fixed(1, 0), anything()],
            |o| {
                assert_eq!(o.node("a").node_pool, "anything");
                assert_eq!(o.plan.nodes.len(), 2);
            },
        ),
    ]);
}
