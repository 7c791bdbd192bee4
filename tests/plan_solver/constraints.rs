//! Tables per Kubernetes constraint family: requests, node selection, taints and pool weights,
//! capacity types, existing nodes, alternatives and DaemonSet overhead.

use super::*;

// --- requests ---------------------------------------------------------------------------------

#[test]
fn requests() {
    let mut small_pods = general();
    small_pods.name = "five-pods".into();
    small_pods.kubelet.max_pods = Some(5);
    let mut big_disk = general();
    big_disk.kubelet.root_volume_bytes = Some(100 * GIB);
    run(vec![
        case("cpu", one(pod("a", "7", "1Gi")), vec![general()], |o| {
            let n = o.node("a");
            assert!(n.allocatable.0[CPU] >= 7000);
            assert!(o.type_of("a").vcpus >= 8);
            assert_eq!(o.plan.nodes.len(), 1);
        }),
        case(
            "memory",
            one(pod("a", "100m", "60Gi")),
            vec![general()],
            |o| {
                assert!(o.node("a").allocatable.0[MEMORY] >= 60 * GIB);
                assert_eq!(o.plan.nodes.len(), 1);
            },
        ),
        case(
            "cpu and memory of several pods add up",
            pod("a", "1500m", "3Gi").replicas(6),
            vec![general()],
            |o| {
                o.all_placed();
                let cpu: i64 = o.plan.nodes.iter().map(|n| n.allocatable.0[CPU]).sum();
                let mem: i64 = o.plan.nodes.iter().map(|n| n.allocatable.0[MEMORY]).sum();
                assert!(cpu >= 9000 && mem >= 18 * GIB);
            },
        ),
        case(
            "ephemeral-storage splits pods across nodes",
            pod("a", "100m", "128Mi")
                .request("ephemeral-storage", "8Gi")
                .replicas(4),
            vec![general()],
            |o| {
                // 20Gi root volume: 17Gi allocatable, two such pods per node.
                o.all_placed();
                assert!(o.plan.nodes.len() >= 2);
                for n in &o.plan.nodes {
                    assert!(n.pods.len() <= 2);
                    assert_eq!(n.allocatable.0[EPHEMERAL], 17 * GIB);
                }
            },
        ),
        case(
            "ephemeral-storage over the root volume is unschedulable",
            one(pod("a", "100m", "128Mi").request("ephemeral-storage", "30Gi")),
            vec![general()],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains("ephemeral-storage 30Gi"), "{r}");
            },
        ),
        case(
            "a bigger root volume takes more ephemeral-storage",
            one(pod("a", "100m", "128Mi").request("ephemeral-storage", "30Gi")),
            vec![big_disk],
            |o| assert!(o.node("a").allocatable.0[EPHEMERAL] >= 30 * GIB),
        ),
        case(
            "kubelet maxPods 5 forces more nodes",
            pod("a", "10m", "16Mi").replicas(12),
            vec![small_pods],
            |o| {
                o.all_placed();
                assert!(o.plan.nodes.len() >= 3, "{} nodes", o.plan.nodes.len());
                for n in &o.plan.nodes {
                    assert_eq!(n.allocatable.0[PODS], 5);
                    assert!(n.pods.len() <= 5);
                }
            },
        ),
        case(
            "pod slots of the ENI limit",
            pod("a", "1m", "1Mi").replicas(40),
            vec![pool(
                "small",
                vec![
                    both_capacity_types(),
                    req(labels::INSTANCE_TYPE, Operator::In, &["m5.large"]),
                ],
            )],
            |o| {
                // m5.large: 29 pods.
                o.all_placed();
                assert_eq!(o.plan.nodes.len(), 2);
                assert!(o.plan.nodes.iter().all(|n| n.pods.len() <= 29));
            },
        ),
        case(
            "nvidia.com/gpu lands on an NVIDIA GPU type",
            one(pod("a", "1", "4Gi").limit("nvidia.com/gpu", "1")),
            vec![anything()],
            |o| {
                let it = o.type_of("a");
                assert!(it.gpus > 0, "{}", it.name);
                assert_eq!(it.gpu_slot, Some(NVIDIA_GPU), "{}", it.name);
                assert_eq!(o.node("a").requests.0[NVIDIA_GPU], 1);
            },
        ),
        case(
            "two nvidia GPUs need a type with two",
            one(pod("a", "1", "4Gi").request("nvidia.com/gpu", "2")),
            vec![anything()],
            |o| {
                let it = o.type_of("a");
                assert!(
                    it.gpus >= 2 && it.gpu_slot == Some(NVIDIA_GPU),
                    "{}",
                    it.name
                );
            },
        ),
        case(
            "amd.com/gpu lands on an AMD GPU type, if the catalog has one",
            one(pod("a", "1", "4Gi").request("amd.com/gpu", "1")),
            vec![anything()],
            |o| {
                let offered = o.catalog.types.iter().any(|t| {
                    t.gpu_slot == Some(AMD_GPU) && t.offerings.iter().any(|x| x.available)
                });
                if offered {
                    let it = o.type_of("a");
                    assert!(it.gpus > 0 && it.gpu_slot == Some(AMD_GPU), "{}", it.name);
                } else {
                    let r = o.unschedulable("a");
                    assert!(r.contains("amd.com/gpu 1"), "{r}");
                }
            },
        ),
        case(
            "a gpu pod in a pool without GPU types is unschedulable",
            one(pod("a", "1", "4Gi").request("nvidia.com/gpu", "1")),
            vec![general()],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains("nvidia.com/gpu"), "{r}");
            },
        ),
        case(
            "a big init container forces a bigger node",
            one(pod("a", "500m", "512Mi").init_container("6", "1Gi")),
            vec![general()],
            |o| {
                assert_eq!(o.pods[0].requests.0[CPU], 6000);
                assert!(o.node("a").allocatable.0[CPU] >= 6000);
                assert!(o.type_of("a").vcpus >= 8);
            },
        ),
        case(
            "an unknown extended resource is unschedulable, named",
            vec![
                pod("fpga", "1", "1Gi")
                    .request("example.com/fpga", "1")
                    .build(),
                pod("plain", "1", "1Gi").build(),
            ],
            vec![general()],
            |o| {
                let r = o.unschedulable("fpga");
                assert!(r.contains("example.com/fpga"), "{r}");
                o.node("plain");
            },
        ),
        case(
            "larger than any instance type",
            one(pod("a", "1000", "1Gi")),
            vec![general()],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains("more than any instance type"), "{r}");
                assert!(o.plan.nodes.is_empty());
            },
        ),
        case("no pool at all", one(pod("a", "1", "1Gi")), vec![], |o| {
            let r = o.unschedulable("a");
            assert!(r.contains("no NodePool"), "{r}");
        }),
    ]);
}

// --- node selection ---------------------------------------------------------------------------

#[test]
fn node_selection() {
    let amd64_only = pool(
        "amd64",
        vec![
            both_capacity_types(),
            req(labels::ARCH, Operator::In, &["amd64"]),
        ],
    );
    let mut team = general();
    team.labels.insert("example.com/team".into(), "ml".into());
    run(vec![
        case(
            "instance-type",
            one(pod("a", "1", "1Gi").node_selector(labels::INSTANCE_TYPE, "m5.2xlarge")),
            vec![anything()],
            |o| {
                assert_eq!(o.node("a").instance_type, "m5.2xlarge");
                assert!(o.node("a").alternatives.is_empty());
            },
        ),
        case(
            "instance-family",
            one(pod("a", "1", "1Gi").node_selector(labels::INSTANCE_FAMILY, "r6i")),
            vec![anything()],
            |o| {
                let n = o.node("a");
                assert_eq!(o.it(n).family, "r6i");
                assert!(!n.alternatives.is_empty());
                for alt in &n.alternatives {
                    assert!(alt.starts_with("r6i."), "{alt}");
                }
            },
        ),
        case(
            "arch arm64",
            one(pod("a", "1", "1Gi").node_selector(labels::ARCH, "arm64")),
            vec![anything()],
            |o| assert_eq!(o.type_of("a").arch, Arch::Arm64),
        ),
        case(
            "capacity-type on-demand",
            one(pod("a", "1", "1Gi").node_selector(labels::CAPACITY_TYPE, "on-demand")),
            vec![general()],
            |o| assert_eq!(o.node("a").capacity_type, CapacityType::OnDemand),
        ),
        case(
            "zone",
            pod("a", "1", "1Gi")
                .node_selector(labels::ZONE, "us-east-1c")
                .replicas(3),
            vec![general()],
            |o| {
                o.all_placed();
                for n in &o.plan.nodes {
                    assert_eq!(n.zone, "us-east-1c");
                }
            },
        ),
        case(
            "zone through the beta label",
            one(pod("a", "1", "1Gi").node_selector(labels::ZONE_BETA, "us-east-1d")),
            vec![general()],
            |o| assert_eq!(o.node("a").zone, "us-east-1d"),
        ),
        case(
            "nodepool name",
            one(pod("a", "1", "1Gi").node_selector(labels::NODEPOOL, "general")),
            vec![with_weight(anything(), 10), general()],
            |o| assert_eq!(o.node("a").node_pool, "general"),
        ),
        case(
            "affinity NotIn on instance-cpu",
            one(pod("a", "100m", "256Mi").node_affinity(&[(
                labels::INSTANCE_CPU,
                "NotIn",
                &["1", "2"],
            )])),
            vec![general()],
            |o| {
                let n = o.node("a");
                assert!(![1, 2].contains(&o.it(n).vcpus), "{}", n.instance_type);
                for alt in &n.alternatives {
                    assert!(
                        ![1, 2].contains(&o.catalog.get(alt).unwrap().vcpus),
                        "{alt}"
                    );
                }
            },
        ),
        case(
            "affinity Gt on instance-cpu",
            one(pod("a", "100m", "256Mi").node_affinity(&[(labels::INSTANCE_CPU, "Gt", &["15"])])),
            vec![general()],
            |o| assert!(o.type_of("a").vcpus > 15),
        ),
        case(
            "affinity Lt on instance-cpu",
            one(pod("a", "100m", "256Mi").node_affinity(&[(labels::INSTANCE_CPU, "Lt", &["3"])])),
            vec![general()],
            |o| {
                let n = o.node("a");
                assert!(o.it(n).vcpus < 3);
                assert!(
                    n.alternatives
                        .iter()
                        .all(|a| o.catalog.get(a).unwrap().vcpus < 3)
                );
            },
        ),
        case(
            "affinity Gt and Lt together",
            one(pod("a", "100m", "256Mi").node_affinity(&[
                (labels::INSTANCE_CPU, "Gt", &["4"]),
                (labels::INSTANCE_CPU, "Lt", &["16"]),
            ])),
            vec![general()],
            |o| {
                let v = o.type_of("a").vcpus;
                assert!(v > 4 && v < 16, "{v}");
            },
        ),
        case(
            "affinity DoesNotExist on local NVMe",
            one(pod("a", "1", "2Gi")
                .node_selector(labels::INSTANCE_FAMILY, "m5d")
                .node_affinity(&[(labels::INSTANCE_LOCAL_NVME, "DoesNotExist", &[])])),
            vec![general()],
            |o| {
                // m5d always has local NVMe.
                let r = o.unschedulable("a");
                assert!(
                    r.contains(labels::INSTANCE_LOCAL_NVME) || r.contains("together"),
                    "{r}"
                );
            },
        ),
        case(
            "affinity DoesNotExist keeps local NVMe types out",
            one(pod("a", "1", "2Gi")
                .node_selector(labels::INSTANCE_CATEGORY, "m")
                .node_affinity(&[(labels::INSTANCE_LOCAL_NVME, "DoesNotExist", &[])])),
            vec![general()],
            |o| {
                let n = o.node("a");
                // Instance storage that is not NVMe (m3's SSD) has no label, as in Karpenter.
                let nvme = |name: &str| {
                    o.catalog
                        .get(name)
                        .unwrap()
                        .label(labels::INSTANCE_LOCAL_NVME)
                };
                assert_eq!(nvme(&n.instance_type), None);
                assert!(n.alternatives.iter().all(|a| nvme(a).is_none()));
            },
        ),
        case(
            "affinity terms are ORed",
            one(pod("a", "1", "1Gi")
                .node_affinity(&[(labels::INSTANCE_TYPE, "In", &["nonexistent.large"])])
                .node_affinity(&[(labels::INSTANCE_FAMILY, "In", &["c6i"])])),
            vec![general()],
            |o| assert_eq!(o.type_of("a").family, "c6i"),
        ),
        case(
            "a selector the pool rules out names the key",
            one(pod("a", "1", "1Gi").node_selector(labels::ARCH, "arm64")),
            vec![amd64_only],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains(labels::ARCH) && r.contains("arm64"), "{r}");
            },
        ),
        case(
            "an unknown instance type names the key",
            one(pod("a", "1", "1Gi").node_selector(labels::INSTANCE_TYPE, "nonexistent.large")),
            vec![general()],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains(labels::INSTANCE_TYPE), "{r}");
            },
        ),
        case(
            "selector and affinity that conflict",
            one(pod("a", "1", "1Gi")
                .node_selector(labels::ARCH, "arm64")
                .node_affinity(&[(labels::INSTANCE_FAMILY, "In", &["m5"])])),
            vec![general()],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains("together"), "{r}");
            },
        ),
        case(
            "a pool label selected",
            one(pod("a", "1", "1Gi").node_selector("example.com/team", "ml")),
            vec![team.clone()],
            |o| assert_eq!(o.node("a").node_pool, "general"),
        ),
        case(
            "a pool label with another value",
            one(pod("a", "1", "1Gi").node_selector("example.com/team", "web")),
            vec![team.clone()],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains("example.com/team"), "{r}");
            },
        ),
        case(
            "DoesNotExist on a pool label",
            one(pod("a", "1", "1Gi").node_affinity(&[("example.com/team", "DoesNotExist", &[])])),
            vec![team],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains("example.com/team"), "{r}");
            },
        ),
        // Found by the properties: the packer picks one offering per instance type for a whole
        // (pool, zone) bucket, the cheapest any of its pods may use, so a pod whose selector
        // rules that offering out (another zone) gets no instance type at all.
        case(
            "a zone-pinned pod next to an unpinned pod",
            vec![
                pod("pinned", "10m", "16Mi")
                    .node_selector(ZONE, "us-east-1b")
                    .build(),
                pod("any", "10m", "16Mi").build(),
            ],
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.node("pinned").zone, "us-east-1b");
            },
        ),
        case(
            "pods pinned to two zones",
            vec![
                pod("b", "10m", "16Mi")
                    .node_selector(ZONE, "us-east-1b")
                    .build(),
                pod("c", "10m", "16Mi")
                    .node_selector(ZONE, "us-east-1c")
                    .build(),
            ],
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.node("b").zone, "us-east-1b");
                assert_eq!(o.node("c").zone, "us-east-1c");
            },
        ),
        case(
            "a label no node has",
            one(pod("a", "1", "1Gi").node_selector("example.com/gpu-kind", "a100")),
            vec![general()],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains("example.com/gpu-kind"), "{r}");
            },
        ),
    ]);
}

// --- taints and tolerations, pool weights -----------------------------------------------------

#[test]
fn taints_and_weights() {
    let mut tainted = general();
    tainted.name = "gpu-only".into();
    tainted.taints = vec![taint("dedicated", Some("gpu"), TaintEffect::NoSchedule)];
    let mut prefer = general();
    prefer.taints = vec![taint("soft", None, TaintEffect::PreferNoSchedule)];
    let mut no_execute = general();
    no_execute.taints = vec![taint("maintenance", None, TaintEffect::NoExecute)];
    let high = || {
        let mut p = with_weight(general(), 10);
        p.name = "high".into();
        p
    };
    let low = || {
        let mut p = with_weight(general(), 1);
        p.name = "low".into();
        p
    };
    let tainted_high = || {
        let mut p = high();
        p.taints = vec![taint("team", Some("a"), TaintEffect::NoSchedule)];
        p
    };
    let arm_high = || {
        let mut p = high();
        p.requirements
            .push(req(labels::ARCH, Operator::In, &["arm64"]));
        p
    };
    run(vec![
        case("taint not tolerated", one(pod("a", "1", "1Gi")), vec![tainted.clone()], |o| {
            let r = o.unschedulable("a");
            assert!(r.contains("dedicated=gpu:NoSchedule") && r.contains("gpu-only"), "{r}");
        }),
        case(
            "taint tolerated by Equal",
            one(pod("a", "1", "1Gi").toleration(
                json!({"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}),
            )),
            vec![tainted.clone()],
            |o| assert_eq!(o.node("a").node_pool, "gpu-only"),
        ),
        case(
            "taint tolerated by Exists on the key",
            one(pod("a", "1", "1Gi").toleration(json!({"key": "dedicated", "operator": "Exists"}))),
            vec![tainted.clone()],
            |o| assert_eq!(o.node("a").node_pool, "gpu-only"),
        ),
        case(
            "taint tolerated by a bare Exists",
            one(pod("a", "1", "1Gi").toleration(json!({"operator": "Exists"}))),
            vec![tainted.clone()],
            |o| assert_eq!(o.node("a").node_pool, "gpu-only"),
        ),
        case(
            "toleration with another value",
            one(pod("a", "1", "1Gi").toleration(
                json!({"key": "dedicated", "operator": "Equal", "value": "cpu"}),
            )),
            vec![tainted.clone()],
            |o| {
                o.unschedulable("a");
            },
        ),
        case(
            "toleration for another effect",
            one(pod("a", "1", "1Gi").toleration(
                json!({"key": "maintenance", "operator": "Exists", "effect": "NoSchedule"}),
            )),
            vec![no_execute],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains("maintenance:NoExecute"), "{r}");
            },
        ),
        case("PreferNoSchedule does not block", one(pod("a", "1", "1Gi")), vec![prefer], |o| {
            o.node("a");
        }),
        case(
            "tolerating and not tolerating pods side by side",
            vec![
                pod("tol", "1", "1Gi")
                    .toleration(json!({"key": "dedicated", "operator": "Exists"}))
                    .build(),
                pod("plain", "1", "1Gi").build(),
            ],
            vec![tainted.clone(), general()],
            |o| {
                assert_eq!(o.node("plain").node_pool, "general");
                o.node("tol");
            },
        ),
        case(
            "the higher weight pool wins",
            pod("a", "1", "1Gi").replicas(3),
            vec![low(), high()],
            |o| {
                o.all_placed();
                assert!(o.plan.nodes.iter().all(|n| n.node_pool == "high"));
            },
        ),
        case(
            "a tainted high-weight pool is skipped",
            one(pod("a", "1", "1Gi")),
            vec![tainted_high(), low()],
            |o| assert_eq!(o.node("a").node_pool, "low"),
        ),
        case(
            "a tainted high-weight pool is used when tolerated",
            one(pod("a", "1", "1Gi").toleration(json!({"key": "team", "operator": "Equal", "value": "a"}))),
            vec![tainted_high(), low()],
            |o| assert_eq!(o.node("a").node_pool, "high"),
        ),
        case(
            "an incompatible high-weight pool is skipped",
            one(pod("a", "1", "1Gi").node_selector(labels::ARCH, "amd64")),
            vec![arm_high(), low()],
            |o| assert_eq!(o.node("a").node_pool, "low"),
        ),
        case(
            "with no compatible pool, every pool's problem is reported",
            one(pod("a", "1", "1Gi").node_selector(labels::ARCH, "amd64")),
            vec![arm_high(), tainted_high()],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains("team=a:NoSchedule") && r.contains(labels::ARCH), "{r}");
            },
        ),
    ]);
}

// --- spot and on-demand -----------------------------------------------------------------------

fn offering_price(it: &InstanceType, zone: &str, ct: CapacityType) -> Option<f64> {
    it.offerings
        .iter()
        .find(|o| o.zone == zone && o.capacity_type == ct)
        .map(|o| o.price)
}

#[test]
fn capacity_types() {
    let on_demand = pool(
        "on-demand",
        vec![
            req(labels::CAPACITY_TYPE, Operator::In, &["on-demand"]),
            req(labels::INSTANCE_CATEGORY, Operator::In, &["c", "m", "r"]),
        ],
    );
    let spot_only = pool(
        "spot",
        vec![
            req(labels::CAPACITY_TYPE, Operator::In, &["spot"]),
            req(labels::INSTANCE_CATEGORY, Operator::In, &["c", "m", "r"]),
        ],
    );
    // The type the planner picks for a small pod, then that type's spot offerings taken away.
    let small = || one(pod("a", "1", "2Gi"));
    let pods = small();
    let baseline = solve(&Input {
        pods: &pods,
        pools: &[general()],
        catalog: catalog(),
        nodes: &[],
    });
    let chosen = baseline.nodes[0].clone();
    assert_eq!(chosen.capacity_type, CapacityType::Spot);
    let mut no_spot = catalog().clone();
    for z in catalog().zones() {
        no_spot.set_available(&chosen.instance_type, &z, CapacityType::Spot, false);
    }
    let mut no_spot_in_zone = catalog().clone();
    no_spot_in_zone.set_available(
        &chosen.instance_type,
        &chosen.zone,
        CapacityType::Spot,
        false,
    );
    let chosen_type = chosen.instance_type.clone();
    let chosen_type2 = chosen.instance_type.clone();
    let chosen_zone = chosen.zone.clone();
    // Everything of the pool unavailable.
    let mut nothing = catalog().clone();
    for t in catalog().types.iter().filter(|t| t.family == "m5") {
        for z in catalog().zones() {
            for ct in CapacityType::ALL {
                nothing.set_available(&t.name, &z, ct, false);
            }
        }
    }
    run(vec![
        case("spot when allowed", small(), vec![general()], |o| {
            let n = o.node("a");
            assert_eq!(n.capacity_type, CapacityType::Spot);
            let od = offering_price(o.it(n), &n.zone, CapacityType::OnDemand).unwrap();
            assert!(n.price_per_hour < od);
        }),
        case(
            "on-demand when only on-demand",
            small(),
            vec![on_demand],
            |o| {
                assert_eq!(o.node("a").capacity_type, CapacityType::OnDemand);
            },
        ),
        case(
            "on-demand selected in a spot-only pool",
            one(pod("a", "1", "2Gi").node_selector(labels::CAPACITY_TYPE, "on-demand")),
            vec![spot_only],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains(labels::CAPACITY_TYPE), "{r}");
            },
        ),
        // Found by the properties: one offering per type per bucket (see node_selection).
        case(
            "an on-demand pod next to a pod that may use spot",
            vec![
                pod("od", "10m", "16Mi")
                    .node_selector(labels::CAPACITY_TYPE, "on-demand")
                    .build(),
                pod("any", "10m", "16Mi").build(),
            ],
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.node("od").capacity_type, CapacityType::OnDemand);
            },
        ),
        case(
            "an on-demand pod next to a pod that may use spot, in us-east-1e",
            vec![
                pod("od", "10m", "16Mi")
                    .node_selector(labels::CAPACITY_TYPE, "on-demand")
                    .node_selector(ZONE, "us-east-1e")
                    .build(),
                pod("any", "10m", "16Mi")
                    .node_selector(ZONE, "us-east-1e")
                    .build(),
            ],
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.node("od").capacity_type, CapacityType::OnDemand);
            },
        ),
        case(
            "unavailable spot everywhere is avoided",
            small(),
            vec![general()],
            move |o| {
                let n = o.node("a");
                assert!(
                    n.instance_type != chosen_type || n.capacity_type != CapacityType::Spot,
                    "{} spot is unavailable",
                    n.instance_type
                );
                assert!(
                    !n.alternatives.contains(&chosen_type) || n.capacity_type != CapacityType::Spot
                );
            },
        )
        .catalog(no_spot),
        case(
            "unavailable spot in one zone is avoided",
            small(),
            vec![general()],
            move |o| {
                let n = o.node("a");
                assert!(
                    !(n.instance_type == chosen_type2
                        && n.zone == chosen_zone
                        && n.capacity_type == CapacityType::Spot),
                    "{} spot in {} is unavailable",
                    n.instance_type,
                    n.zone
                );
            },
        )
        .catalog(no_spot_in_zone),
        case(
            "a family with no available offering",
            one(pod("a", "1", "2Gi").node_selector(labels::INSTANCE_FAMILY, "m5")),
            vec![general()],
            |o| {
                o.unschedulable("a");
            },
        )
        .catalog(nothing),
    ]);
}

// --- existing and in-flight nodes -------------------------------------------------------------

#[test]
fn existing_nodes() {
    let free = || existing("node-1", "us-east-1a", res(1000, 4 * GIB, 5), vec![]);
    let tainted = || {
        let mut n = free();
        n.taints = vec![taint("maintenance", None, TaintEffect::NoSchedule)];
        n
    };
    let in_flight = || {
        let mut n = free();
        n.name = "launching-1".into();
        n.in_flight = true;
        n
    };
    let full = || existing("node-1", "us-east-1a", res(7800, 28 * GIB, 5), vec![]);
    let with_web = || {
        existing(
            "node-1",
            "us-east-1a",
            res(1000, 2 * GIB, 2),
            vec![bound("web"), bound("web")],
        )
    };
    run(vec![
        case(
            "a pod fits an existing node",
            one(pod("a", "1", "2Gi")),
            vec![general()],
            |o| {
                assert_eq!(o.placed_on("a"), Some("node-1"));
                assert!(o.plan.nodes.is_empty());
                assert_eq!(o.plan.total_price_per_hour, 0.0);
            },
        )
        .nodes(vec![free()]),
        case(
            "several pods share the room",
            pod("a", "2", "4Gi").replicas(4),
            vec![general()],
            |o| {
                // 6.9 cores free: three pods fit, the fourth needs a new node.
                let placed = o.plan.placements.len();
                assert_eq!(placed, 3);
                assert_eq!(o.plan.nodes.len(), 1);
                assert_eq!(o.plan.nodes[0].pods.len(), 1);
            },
        )
        .nodes(vec![free()]),
        case(
            "an in-flight node takes pods",
            one(pod("a", "1", "2Gi")),
            vec![general()],
            |o| {
                assert_eq!(o.placed_on("a"), Some("launching-1"));
            },
        )
        .nodes(vec![in_flight()]),
        case(
            "no pool, but an existing node",
            one(pod("a", "1", "2Gi")),
            vec![],
            |o| {
                assert_eq!(o.placed_on("a"), Some("node-1"));
            },
        )
        .nodes(vec![free()]),
        case(
            "no pool, and a full node",
            one(pod("a", "1", "2Gi")),
            vec![],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains("no existing node has room"), "{r}");
            },
        )
        .nodes(vec![full()]),
        case(
            "a tainted node is not used",
            one(pod("a", "1", "2Gi")),
            vec![general()],
            |o| {
                assert!(o.placed_on("a").is_none());
                o.node("a");
            },
        )
        .nodes(vec![tainted()]),
        case(
            "a tainted node is used when tolerated",
            one(pod("a", "1", "2Gi")
                .toleration(json!({"key": "maintenance", "operator": "Exists"}))),
            vec![general()],
            |o| assert_eq!(o.placed_on("a"), Some("node-1")),
        )
        .nodes(vec![tainted()]),
        case(
            "a full node is not used",
            one(pod("a", "1", "2Gi")),
            vec![general()],
            |o| {
                o.node("a");
            },
        )
        .nodes(vec![full()]),
        case(
            "a node in another zone than selected is not used",
            one(pod("a", "1", "2Gi").node_selector(ZONE, "us-east-1b")),
            vec![general()],
            |o| assert_eq!(o.node("a").zone, "us-east-1b"),
        )
        .nodes(vec![free()]),
        case(
            "a node of the selected type is used",
            one(pod("a", "1", "2Gi").node_selector(labels::INSTANCE_TYPE, "m5.2xlarge")),
            vec![general()],
            |o| assert_eq!(o.placed_on("a"), Some("node-1")),
        )
        .nodes(vec![free()]),
        // Found by the properties: existing nodes take the pods of a hostname self-affinity
        // group one by one, first fit, so the group is split.
        case(
            "hostname self-affinity is not split between an existing and a new node",
            vec![
                pod("web-0", "1500m", "16Mi")
                    .label("app", "web")
                    .affinity(HOST, "web")
                    .build(),
                pod("web-1", "1", "16Mi")
                    .label("app", "web")
                    .affinity(HOST, "web")
                    .build(),
            ],
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.host_counts("web").len(), 1);
            },
        )
        .nodes(vec![existing(
            "node-1",
            "us-east-1a",
            res(6000, 4 * GIB, 5),
            vec![],
        )]),
        case(
            "hostname self-affinity is not split between two existing nodes",
            vec![
                pod("web-0", "1500m", "16Mi")
                    .label("app", "web")
                    .affinity(HOST, "web")
                    .build(),
                pod("web-1", "1", "16Mi")
                    .label("app", "web")
                    .affinity(HOST, "web")
                    .build(),
            ],
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.host_counts("web").len(), 1);
            },
        )
        .nodes(vec![
            existing("node-1", "us-east-1a", res(6000, 4 * GIB, 5), vec![]),
            existing("node-2", "us-east-1a", res(6000, 4 * GIB, 5), vec![]),
        ]),
        case(
            "existing pods count for zone spread",
            pod("web", "500m", "512Mi")
                .label("app", "web")
                .spread(ZONE, 1, "DoNotSchedule", "web")
                .replicas(4),
            vec![general()],
            |o| {
                o.all_placed();
                let counts = o.zone_counts("web");
                assert!(!counts.contains_key("us-east-1a"), "{counts:?}");
                assert_eq!(counts.len(), 4);
                assert!(o.plan.placements.is_empty());
            },
        )
        .nodes(vec![with_web()]),
        case(
            "existing pods count for hostname anti-affinity",
            one(pod("web", "500m", "512Mi")
                .label("app", "web")
                .anti_affinity(HOST, "web")),
            vec![general()],
            |o| {
                assert!(o.placed_on("web").is_none());
                o.node("web");
            },
        )
        .nodes(vec![with_web()]),
        case(
            "existing pods count for zone anti-affinity",
            one(pod("web", "500m", "512Mi")
                .label("app", "web")
                .anti_affinity(ZONE, "web")),
            vec![general()],
            |o| assert_ne!(o.node("web").zone, "us-east-1a"),
        )
        .nodes(vec![with_web()]),
        case(
            "existing pods attract hostname affinity",
            one(pod("api", "500m", "512Mi")
                .label("app", "api")
                .affinity(HOST, "web")),
            vec![general()],
            |o| assert_eq!(o.placed_on("api"), Some("node-1")),
        )
        .nodes(vec![with_web()]),
        case(
            "existing pods count for hostname spread",
            pod("web", "100m", "128Mi")
                .label("app", "web")
                .spread(HOST, 3, "DoNotSchedule", "web")
                .replicas(3),
            vec![general()],
            |o| {
                // node-1 runs two: one more fits under maxSkew 3.
                assert_eq!(o.plan.placements.len(), 1);
                o.all_placed();
            },
        )
        .nodes(vec![with_web()]),
    ]);
}

// --- alternatives and daemon overhead ---------------------------------------------------------

#[test]
fn alternatives() {
    run(vec![
        case(
            "a small pod has the full list",
            one(pod("a", "100m", "128Mi")),
            vec![anything()],
            |o| {
                let n = o.node("a");
                assert_eq!(n.alternatives.len(), MAX_ALTERNATIVES);
            },
        ),
        case(
            "a big pod",
            one(pod("a", "30", "200Gi")),
            vec![general()],
            |o| {
                let n = o.node("a");
                assert!(!n.alternatives.is_empty());
                for alt in &n.alternatives {
                    let it = o.catalog.get(alt).unwrap();
                    assert!(it.vcpus >= 32, "{alt}");
                }
            },
        ),
        case(
            "many mixed pods",
            (0..40)
                .map(|i| {
                    pod(
                        &format!("p{i}"),
                        &format!("{}m", 100 + 97 * i),
                        &format!("{}Mi", 256 + 311 * i),
                    )
                    .build()
                })
                .collect(),
            vec![general()],
            |o| {
                o.all_placed();
                assert!(o.plan.nodes.iter().any(|n| !n.alternatives.is_empty()));
            },
        ),
        case(
            "alternatives hold a node's pods with a kubelet override",
            pod("a", "700m", "1Gi").replicas(9),
            vec![{
                let mut p = general();
                p.kubelet.max_pods = Some(3);
                p
            }],
            |o| {
                o.all_placed();
                for n in &o.plan.nodes {
                    for alt in &n.alternatives {
                        let room = o.catalog.get(alt).unwrap().allocatable(&o.pools[0].kubelet);
                        assert!(n.requests.fits_in(&room), "{alt}");
                    }
                }
            },
        ),
    ]);
}

#[test]
fn daemon_overhead() {
    let with_overhead = |overhead: Resources| {
        let mut p = general();
        p.daemon_overhead = overhead;
        p
    };
    let overhead = res(1000, GIB, 3);
    run(vec![
        case(
            "one pod",
            one(pod("a", "1", "1Gi")),
            vec![with_overhead(overhead)],
            move |o| {
                let n = o.node("a");
                assert_eq!(n.requests, o.pods[0].requests + overhead);
                assert!(n.requests.fits_in(&n.allocatable));
                assert!(n.allocatable.0[CPU] >= 2000);
                for alt in &n.alternatives {
                    let room = o.catalog.get(alt).unwrap().allocatable(&o.pools[0].kubelet);
                    assert!(room.0[CPU] >= 2000, "{alt}");
                }
            },
        ),
        case(
            "overhead larger than small types",
            one(pod("a", "100m", "128Mi")),
            vec![with_overhead(res(3000, 2 * GIB, 1))],
            |o| assert!(o.type_of("a").vcpus >= 4),
        ),
        case(
            "many pods, overhead on every node",
            pod("a", "900m", "1500Mi").replicas(30),
            vec![with_overhead(overhead)],
            move |o| {
                o.all_placed();
                for n in &o.plan.nodes {
                    let pods: Resources = n
                        .pod_indices
                        .iter()
                        .fold(Resources::ZERO, |acc, i| acc + o.pods[*i].requests);
                    assert_eq!(n.requests, pods + overhead);
                }
            },
        ),
        case(
            "overhead taking pod slots",
            pod("a", "10m", "16Mi").replicas(10),
            vec![{
                let mut p = with_overhead(res(100, 100 * MIB, 3));
                p.kubelet.max_pods = Some(5);
                p
            }],
            |o| {
                o.all_placed();
                assert!(o.plan.nodes.len() >= 5);
                assert!(o.plan.nodes.iter().all(|n| n.pods.len() <= 2));
            },
        ),
    ]);
}
