//! Topology: spread on zones and hostnames, pod anti-affinity and pod affinity.

use super::*;

// --- topology spread --------------------------------------------------------------------------

fn skew(counts: &BTreeMap<String, usize>, domains: &BTreeSet<String>) -> usize {
    let max = domains
        .iter()
        .map(|z| counts.get(z).copied().unwrap_or(0))
        .max()
        .unwrap_or(0);
    let min = domains
        .iter()
        .map(|z| counts.get(z).copied().unwrap_or(0))
        .min()
        .unwrap_or(0);
    max - min
}

#[test]
fn topology_spread() {
    let zones = pool_zones(&general());
    assert_eq!(zones.len(), 6, "{zones:?}");
    let spread = |n: usize, skew: i32, when: &str| {
        pod("web", "500m", "1Gi")
            .label("app", "web")
            .spread(ZONE, skew, when, "web")
            .replicas(n)
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
    let mut cases = Vec::new();
    for n in [1usize, 4, 6, 7, 14, 20] {
        let zones = zones.clone();
        cases.push(case(
            "zone maxSkew 1",
            spread(n, 1, "DoNotSchedule"),
            vec![general()],
            move |o| {
                o.all_placed();
                let counts = o.zone_counts("web");
                assert!(skew(&counts, &zones) <= 1, "{counts:?}");
                assert_eq!(counts.len(), n.min(6), "{counts:?}");
            },
        ));
    }
    let z = zones.clone();
    cases.push(case(
        "zone maxSkew 2",
        spread(10, 2, "DoNotSchedule"),
        vec![general()],
        move |o| {
            o.all_placed();
            let counts = o.zone_counts("web");
            assert!(skew(&counts, &z) <= 2, "{counts:?}");
        },
    ));
    let z = zones.clone();
    cases.push(case(
        "zone maxSkew 2, few pods",
        spread(4, 2, "DoNotSchedule"),
        vec![general()],
        move |o| {
            o.all_placed();
            let counts = o.zone_counts("web");
            assert!(skew(&counts, &z) <= 2, "{counts:?}");
            assert!(counts.values().all(|c| *c <= 2), "{counts:?}");
        },
    ));
    let z = zones.clone();
    cases.push(case(
        "ScheduleAnyway is honoured when possible",
        spread(12, 1, "ScheduleAnyway"),
        vec![general()],
        move |o| {
            o.all_placed();
            let counts = o.zone_counts("web");
            assert_eq!(counts.len(), 6);
            assert!(skew(&counts, &z) <= 1, "{counts:?}");
        },
    ));
    cases.push(case(
        "ScheduleAnyway relaxed when a zone is pinned",
        pod("web", "500m", "1Gi")
            .label("app", "web")
            .spread(ZONE, 1, "ScheduleAnyway", "web")
            .node_selector(labels::ZONE, "us-east-1b")
            .replicas(3),
        vec![general()],
        |o| {
            o.all_placed();
            assert_eq!(o.zone_counts("web").get("us-east-1b"), Some(&3));
        },
    ));
    cases.push(case(
        "ScheduleAnyway gives way to zone self-affinity",
        pod("web", "500m", "1Gi")
            .label("app", "web")
            .spread(ZONE, 1, "ScheduleAnyway", "web")
            .affinity(ZONE, "web")
            .replicas(4),
        vec![general()],
        |o| {
            o.all_placed();
            assert_eq!(o.zone_counts("web").len(), 1);
        },
    ));
    cases.push(case(
        "DoNotSchedule does not give way to zone self-affinity",
        pod("web", "500m", "1Gi")
            .label("app", "web")
            .spread(ZONE, 1, "DoNotSchedule", "web")
            .affinity(ZONE, "web")
            .replicas(4),
        vec![general()],
        |o| {
            assert_eq!(o.count_placed("web"), 1);
            assert_eq!(o.plan.unschedulable.len(), 3);
        },
    ));
    cases.push(case(
        "spread over the zones the pool allows",
        spread(5, 1, "DoNotSchedule"),
        vec![two_zones()],
        |o| {
            o.all_placed();
            let counts = o.zone_counts("web");
            assert_eq!(counts.len(), 2);
            assert!(counts.values().all(|c| *c == 2 || *c == 3), "{counts:?}");
        },
    ));
    let arm_zones = pod_zones(
        &pod("x", "1", "1Gi")
            .node_selector(labels::ARCH, "arm64")
            .build()
            .constraints,
        &[general()],
        catalog(),
    );
    cases.push(case(
        "spread over the zones offering the selected types",
        pod("web", "500m", "1Gi")
            .label("app", "web")
            .spread(ZONE, 1, "DoNotSchedule", "web")
            .node_selector(labels::ARCH, "arm64")
            .replicas(2 * arm_zones.len()),
        vec![general()],
        move |o| {
            o.all_placed();
            let counts = o.zone_counts("web");
            assert!(
                arm_zones.len() < 6 && !arm_zones.contains("us-east-1e"),
                "{arm_zones:?}"
            );
            assert_eq!(counts.keys().cloned().collect::<BTreeSet<_>>(), arm_zones);
            assert!(counts.values().all(|c| *c == 2), "{counts:?}");
        },
    ));
    cases.push(case(
        "matchLabelKeys spreads each revision on its own",
        ["a", "b"]
            .iter()
            .flat_map(|rev| {
                pod(&format!("web-{rev}"), "500m", "1Gi")
                    .label("app", "web")
                    .label("pod-template-hash", rev)
                    .spread_raw(json!({"maxSkew": 1, "topologyKey": ZONE, "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchLabels": {"app": "web"}}, "matchLabelKeys": ["pod-template-hash"]}))
                    .replicas(3)
            })
            .collect(),
        vec![general()],
        |o| {
            o.all_placed();
            assert_eq!(o.zone_counts("web-a").len(), 3);
            assert_eq!(o.zone_counts("web-b").len(), 3);
        },
    ));
    cases.push(case(
        "spreads in another namespace do not count",
        pod("web", "500m", "1Gi")
            .label("app", "web")
            .spread(ZONE, 1, "DoNotSchedule", "web")
            .replicas(3)
            .into_iter()
            .chain(
                pod("web", "500m", "1Gi")
                    .namespace("other")
                    .label("app", "web")
                    .spread(ZONE, 1, "DoNotSchedule", "web")
                    .replicas(3),
            )
            .collect(),
        vec![general()],
        |o| {
            o.all_placed();
            assert_eq!(o.zone_counts("default/web").len(), 3);
            assert_eq!(o.zone_counts("other/web").len(), 3);
        },
    ));
    // Found by the properties (see pod_anti_affinity: tail consolidation across zones).
    cases.push(case(
        "zone spread survives packing with other pods",
        [(10, 14702), (10, 14702), (941, 16), (941, 16)]
            .iter()
            .enumerate()
            .map(|(i, (cpu, mem))| {
                pod(&format!("web-{i}"), &format!("{cpu}m"), &format!("{mem}Mi"))
                    .label("app", "web")
                    .spread(ZONE, 1, "DoNotSchedule", "web")
                    .build()
            })
            .chain(one(pod("other", "10m", "7124Mi")))
            .collect(),
        vec![{
            let mut p = general();
            p.kubelet.max_pods = Some(9);
            p
        }],
        |o| {
            o.all_placed();
            assert_eq!(o.zone_counts("web").len(), 4);
        },
    ));
    for (n, max_skew) in [(5usize, 1i32), (5, 2), (7, 3)] {
        cases.push(case(
            "hostname spread",
            pod("web", "100m", "128Mi")
                .label("app", "web")
                .spread(HOST, max_skew, "DoNotSchedule", "web")
                .replicas(n),
            vec![general()],
            move |o| {
                o.all_placed();
                let counts = o.host_counts("web");
                assert!(
                    counts.values().all(|c| *c <= max_skew as usize),
                    "{counts:?}"
                );
                assert!(counts.len() >= n.div_ceil(max_skew as usize));
            },
        ));
    }
    cases.push(case(
        "zone and hostname spread together",
        pod("web", "100m", "128Mi")
            .label("app", "web")
            .spread(HOST, 1, "DoNotSchedule", "web")
            .spread(ZONE, 1, "DoNotSchedule", "web")
            .replicas(9),
        vec![general()],
        move |o| {
            o.all_placed();
            assert!(o.host_counts("web").values().all(|c| *c == 1));
            assert!(skew(&o.zone_counts("web"), &zones) <= 1);
        },
    ));
    run(cases);
}

// --- pod anti-affinity ------------------------------------------------------------------------

#[test]
fn pod_anti_affinity() {
    let zones = pool_zones(&general());
    let three_zones = || {
        let mut p = general();
        p.requirements.push(req(
            labels::ZONE,
            Operator::In,
            &["us-east-1a", "us-east-1b", "us-east-1c"],
        ));
        p
    };
    let n_zones = zones.len();
    run(vec![
        case(
            "hostname anti-affinity",
            pod("web", "100m", "128Mi")
                .label("app", "web")
                .anti_affinity(HOST, "web")
                .replicas(4),
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.plan.nodes.len(), 4);
                assert!(o.host_counts("web").values().all(|c| *c == 1));
            },
        ),
        case(
            "zone anti-affinity beyond the zone count",
            pod("web", "100m", "128Mi")
                .label("app", "web")
                .anti_affinity(ZONE, "web")
                .replicas(8),
            vec![general()],
            move |o| {
                let counts = o.zone_counts("web");
                assert_eq!(counts.len(), n_zones);
                assert!(counts.values().all(|c| *c == 1));
                assert_eq!(o.plan.unschedulable.len(), 8 - n_zones);
                for u in &o.plan.unschedulable {
                    assert!(u.reason.contains("anti-affinity"), "{}", u.reason);
                }
            },
        ),
        case(
            "zone anti-affinity within the pool's zones",
            pod("web", "100m", "128Mi")
                .label("app", "web")
                .anti_affinity(ZONE, "web")
                .replicas(4),
            vec![three_zones()],
            |o| {
                assert_eq!(o.zone_counts("web").len(), 3);
                assert_eq!(o.plan.unschedulable.len(), 1);
            },
        ),
        case(
            "hostname anti-affinity to another workload",
            pod("web", "100m", "128Mi")
                .label("app", "web")
                .anti_affinity(HOST, "db")
                .replicas(3)
                .into_iter()
                .chain(pod("db", "100m", "128Mi").label("app", "db").replicas(2))
                .collect(),
            vec![general()],
            |o| {
                o.all_placed();
                let db: BTreeSet<String> = o.host_counts("db").into_keys().collect();
                for h in o.host_counts("web").keys() {
                    assert!(!db.contains(h), "web shares {h} with db");
                }
            },
        ),
        case(
            "zone anti-affinity to another workload is symmetric",
            pod("web", "100m", "128Mi")
                .label("app", "web")
                .anti_affinity(ZONE, "db")
                .replicas(3)
                .into_iter()
                .chain(pod("db", "100m", "128Mi").label("app", "db").replicas(3))
                .collect(),
            vec![general()],
            |o| {
                o.all_placed();
                let db: BTreeSet<String> = o.zone_counts("db").into_keys().collect();
                for z in o.zone_counts("web").keys() {
                    assert!(!db.contains(z), "web shares {z} with db");
                }
            },
        ),
        // Found by the properties: tail consolidation moves zone-bound pods into a node that is
        // not zone-bound, which a later step then empties into another zone.
        case(
            "zone anti-affinity survives packing with other pods",
            pod("web", "1500m", "16Mi")
                .label("app", "web")
                .anti_affinity(ZONE, "web")
                .replicas(2)
                .into_iter()
                .chain(one(pod("other", "10m", "3000Mi")))
                .collect(),
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.zone_counts("web").len(), 2);
            },
        ),
        case(
            "anti-affinity to pods in another namespace is not to ours",
            pod("web", "100m", "128Mi")
                .namespace("team-a")
                .label("app", "web")
                .anti_affinity(HOST, "web")
                .replicas(2)
                .into_iter()
                .chain(pod("web", "100m", "128Mi").label("app", "web").replicas(4))
                .collect(),
            vec![general()],
            |o| {
                o.all_placed();
                let counts = o.host_counts("team-a/web");
                assert_eq!(counts.len(), 2);
            },
        ),
    ]);
}

// --- pod affinity -----------------------------------------------------------------------------

#[test]
fn pod_affinity() {
    let cache_node = existing(
        "cache-1",
        "us-east-1b",
        res(7500, 20 * GIB, 10),
        vec![bound("cache")],
    );
    run(vec![
        case(
            "zone self-affinity",
            pod("web", "1", "2Gi")
                .label("app", "web")
                .affinity(ZONE, "web")
                .replicas(10),
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.zone_counts("web").len(), 1);
            },
        ),
        case(
            "hostname self-affinity",
            pod("web", "500m", "1Gi")
                .label("app", "web")
                .affinity(HOST, "web")
                .replicas(6),
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.plan.nodes.len(), 1);
                assert!(o.it(&o.plan.nodes[0]).vcpus >= 4);
            },
        ),
        case(
            "hostname self-affinity too big for any node",
            pod("web", "40", "1Gi")
                .label("app", "web")
                .affinity(HOST, "web")
                .replicas(10),
            vec![general()],
            |o| {
                assert_eq!(o.plan.unschedulable.len(), 10);
                assert!(
                    o.plan.unschedulable[0].reason.contains("share one node"),
                    "{}",
                    o.plan.unschedulable[0].reason
                );
            },
        ),
        case(
            "zone affinity to another workload",
            pod("web", "1", "2Gi")
                .label("app", "web")
                .affinity(ZONE, "db")
                .replicas(4)
                .into_iter()
                .chain(one(pod("db", "1", "2Gi")
                    .label("app", "db")
                    .node_selector(ZONE, "us-east-1d")))
                .collect(),
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.zone_of("db").as_deref(), Some("us-east-1d"));
                let counts = o.zone_counts("web");
                assert_eq!(counts.keys().collect::<Vec<_>>(), ["us-east-1d"]);
            },
        ),
        case(
            "zone affinity to a workload on an existing node",
            pod("web", "2", "4Gi")
                .label("app", "web")
                .affinity(ZONE, "cache")
                .replicas(3),
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(
                    o.zone_counts("web").keys().collect::<Vec<_>>(),
                    ["us-east-1b"]
                );
            },
        )
        .nodes(vec![cache_node]),
        case(
            "hostname affinity to another workload",
            pod("web", "200m", "256Mi")
                .label("app", "web")
                .affinity(HOST, "db")
                .replicas(2)
                .into_iter()
                .chain(one(pod("db", "1", "2Gi").label("app", "db")))
                .collect(),
            vec![general()],
            |o| {
                o.all_placed();
                let db = o.host_of("db").unwrap();
                assert_eq!(o.host_of("web-0").as_ref(), Some(&db));
                assert_eq!(o.host_of("web-1").as_ref(), Some(&db));
            },
        ),
        // Found by the properties: zones are chosen pod by pod, so a hostname self-affinity group
        // with a zone spread or zone anti-affinity is cut into one "bundle" per zone.
        case(
            "hostname self-affinity with a ScheduleAnyway zone spread",
            pod("web", "10m", "16Mi")
                .label("app", "web")
                .affinity(HOST, "web")
                .spread(ZONE, 1, "ScheduleAnyway", "web")
                .replicas(2),
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.host_counts("web").len(), 1);
            },
        ),
        case(
            "hostname self-affinity with a DoNotSchedule zone spread",
            pod("web", "10m", "16Mi")
                .label("app", "web")
                .affinity(HOST, "web")
                .spread(ZONE, 1, "DoNotSchedule", "web")
                .replicas(2),
            vec![general()],
            |o| assert!(o.host_counts("web").len() <= 1),
        ),
        case(
            "hostname self-affinity with zone anti-affinity",
            pod("web", "10m", "16Mi")
                .label("app", "web")
                .affinity(HOST, "web")
                .anti_affinity(ZONE, "web")
                .replicas(2),
            vec![general()],
            |o| assert!(o.host_counts("web").len() <= 1),
        ),
        case(
            "affinity to pods that do not exist",
            pod("web", "1", "2Gi")
                .label("app", "web")
                .affinity(ZONE, "nothing")
                .replicas(2),
            vec![general()],
            |o| {
                assert_eq!(o.plan.unschedulable.len(), 2);
                assert!(
                    o.plan.unschedulable[0].reason.contains("affinity"),
                    "{}",
                    o.plan.unschedulable[0].reason
                );
            },
        ),
    ]);
}
