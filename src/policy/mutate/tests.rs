use json_patch::PatchOperation;

use super::*;

const CONFIG: &str = include_str!("../../../tests/data/steering.yaml");

fn steering(text: &str) -> Steering {
    Steering::new(
        &Config::parse(text, "test.yaml").unwrap(),
        Some("nodewright"),
    )
}

fn pod(v: Value) -> PodView {
    serde_json::from_value(v).unwrap()
}

fn base_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-5d4f-", "labels": {"app": "web", "pod-template-hash": "5d4f"}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}
    })
}

fn decide_in(
    s: &Steering,
    namespace: &str,
    p: &PodView,
    ns_labels: Option<&BTreeMap<String, String>>,
) -> Decision {
    s.decide(&PodAdmission {
        operation: Operation::Create,
        group: "",
        kind: "Pod",
        namespace,
        pod: Some(p),
        namespace_labels: ns_labels,
    })
}

fn ops(decision: &Decision) -> Vec<(String, Value)> {
    match decision {
        Decision::Patch { patch, .. } => patch
            .0
            .iter()
            .map(|op| match op {
                PatchOperation::Add(a) => (a.path.to_string(), a.value.clone()),
                other => panic!("only adds expected, got {other:?}"),
            })
            .collect(),
        other => panic!("expected a patch, got {other:?}"),
    }
}

fn edit(f: impl FnOnce(&mut Value)) -> PodView {
    let mut v = base_pod();
    f(&mut v);
    pod(v)
}

#[test]
fn bare_pod_gets_whole_maps_and_lists() {
    let d = decide_in(&steering(CONFIG), "team-riker", &pod(base_pod()), None);
    let ops = ops(&d);
    assert_eq!(ops.len(), 3, "{ops:?}");
    assert_eq!(
        ops[0],
        (
            "/spec/nodeSelector".into(),
            json!({"karpenter.sh/nodepool": "default"})
        )
    );
    assert_eq!(
        ops[1],
        (
            "/spec/tolerations".into(),
            json!([{"key": "nodewright.io/pool", "operator": "Equal", "value": "default", "effect": "NoSchedule"}])
        )
    );
    assert_eq!(ops[2].0, "/spec/topologySpreadConstraints");
    assert_eq!(
        ops[2].1,
        json!([{
            "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "web"}}, "matchLabelKeys": ["pod-template-hash"]
        }])
    );
}

#[test]
fn existing_maps_and_lists_get_keys_and_items_appended() {
    let p = edit(|v| {
        v["spec"]["nodeSelector"] = json!({"disktype": "ssd"});
        v["spec"]["tolerations"] = json!([{"key": "x", "operator": "Exists"}]);
        v["spec"]["topologySpreadConstraints"] = json!([{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}]);
    });
    let d = decide_in(&steering(CONFIG), "team-riker", &p, None);
    let paths: Vec<String> = ops(&d).into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        paths,
        [
            "/spec/nodeSelector/karpenter.sh~1nodepool",
            "/spec/tolerations/-",
            "/spec/topologySpreadConstraints/-"
        ]
    );
}

#[test]
fn what_the_pod_already_has_is_not_added_again() {
    let cases: Vec<(&str, Value, Value)> = vec![
        (
            "exact toleration",
            json!([{"key": "nodewright.io/pool", "operator": "Equal", "value": "default", "effect": "NoSchedule"}]),
            json!(null),
        ),
        (
            "exists on key",
            json!([{"key": "nodewright.io/pool", "operator": "Exists"}]),
            json!(null),
        ),
        ("wildcard", json!([{"operator": "Exists"}]), json!(null)),
        (
            "zone spread",
            json!(null),
            json!([{"maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}]),
        ),
    ];
    for (name, tolerations, spread) in cases {
        let p = edit(|v| {
            v["spec"]["tolerations"] = tolerations.clone();
            v["spec"]["topologySpreadConstraints"] = spread.clone();
        });
        let d = decide_in(&steering(CONFIG), "team-riker", &p, None);
        let ops = ops(&d);
        assert_eq!(ops.len(), 2, "{name}: {ops:?}");
        let Decision::Patch { additions, .. } = &d else {
            unreachable!()
        };
        if !tolerations.is_null() {
            assert_eq!(additions.tolerations, 0, "{name}");
        }
        if !spread.is_null() {
            assert!(additions.spread_topology_key.is_none(), "{name}");
        }
    }
    // A toleration for another value or effect does not count.
    let p = edit(|v| {
        v["spec"]["tolerations"] =
            json!([{"key": "nodewright.io/pool", "value": "gpu", "effect": "NoSchedule"}])
    });
    let Decision::Patch { additions, .. } = decide_in(&steering(CONFIG), "team-riker", &p, None)
    else {
        panic!()
    };
    assert_eq!(additions.tolerations, 1);
}

#[test]
fn fully_steered_pod_is_unchanged() {
    let p = edit(|v| {
        v["spec"]["nodeSelector"] = json!({"karpenter.sh/nodepool": "default"});
        v["spec"]["tolerations"] =
            json!([{"key": "nodewright.io/pool", "value": "default", "effect": "NoSchedule"}]);
        v["spec"]["topologySpreadConstraints"] = json!([{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}]);
    });
    assert!(matches!(
        decide_in(&steering(CONFIG), "team-riker", &p, None),
        Decision::Unchanged { .. }
    ));
}

#[test]
fn pod_without_peer_labels_gets_no_spread_and_a_note() {
    let p = edit(|v| v["metadata"]["labels"] = json!({"pod-template-hash": "5d4f"}));
    let d = decide_in(&steering(CONFIG), "team-riker", &p, None);
    let Decision::Patch { additions, .. } = &d else {
        panic!("{d:?}")
    };
    assert!(additions.spread_topology_key.is_none());
    assert_eq!(additions.notes.len(), 1);
    assert_eq!(ops(&d).len(), 2);
}

#[test]
fn conflicting_requests_are_denied_naming_key_and_values() {
    let cases: Vec<(&str, Value, &[&str])> = vec![
        (
            "other pool",
            json!({"nodeSelector": {"karpenter.sh/nodepool": "gpu"}}),
            &["karpenter.sh/nodepool=gpu", "NodePool default"],
        ),
        (
            "template label",
            json!({"nodeSelector": {"type": "fargate"}}),
            &["type=fargate", "type=karpenter"],
        ),
        (
            "requirement",
            json!({"nodeSelector": {"karpenter.sh/capacity-type": "reserved"}}),
            &[
                "karpenter.sh/capacity-type=reserved",
                "In [spot, on-demand]",
            ],
        ),
        (
            "affinity",
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "karpenter.sh/nodepool", "operator": "In", "values": ["gpu"]}]}
            ]}}}}),
            &["karpenter.sh/nodepool In [gpu]", "NodePool default"],
        ),
    ];
    for (name, spec, parts) in cases {
        let p = edit(|v| {
            for (k, val) in spec.as_object().unwrap() {
                v["spec"][k] = val.clone();
            }
        });
        match decide_in(&steering(CONFIG), "team-riker", &p, None) {
            Decision::Deny { message, .. } => {
                for part in parts {
                    assert!(message.contains(part), "{name}: {message:?} lacks {part:?}");
                }
            }
            other => panic!("{name}: expected deny, got {other:?}"),
        }
    }
}

#[test]
fn compatible_requests_are_kept() {
    let p = edit(|v| {
        v["spec"]["nodeSelector"] =
            json!({"karpenter.sh/capacity-type": "spot", "type": "karpenter", "disktype": "ssd"});
        v["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "karpenter.sh/nodepool", "operator": "In", "values": ["gpu"]}]},
            {"matchExpressions": [{"key": "karpenter.sh/nodepool", "operator": "NotIn", "values": ["gpu"]}]}
        ]}}});
    });
    let d = decide_in(&steering(CONFIG), "team-riker", &p, None);
    assert_eq!(ops(&d)[0].0, "/spec/nodeSelector/karpenter.sh~1nodepool");
}

#[test]
fn out_of_scope_pods_are_skipped() {
    let s = steering(CONFIG);
    let cases: Vec<(&str, &str, PodView, SkipReason)> = vec![
        (
            "nodeName",
            "team-riker",
            edit(|v| v["spec"]["nodeName"] = json!("n1")),
            SkipReason::HasNodeName,
        ),
        (
            "mirror",
            "team-riker",
            edit(|v| v["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "abc"})),
            SkipReason::Mirror,
        ),
        (
            "daemonset",
            "team-riker",
            edit(|v| {
                v["metadata"]["ownerReferences"] =
                    json!([{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "d", "uid": "u"}])
            }),
            SkipReason::DaemonSet,
        ),
        (
            "kube-system",
            "kube-system",
            pod(base_pod()),
            SkipReason::ExcludedNamespace,
        ),
        (
            "own namespace",
            "nodewright",
            pod(base_pod()),
            SkipReason::ExcludedNamespace,
        ),
        (
            "annotation",
            "team-riker",
            edit(|v| v["metadata"]["annotations"] = json!({"nodewright.io/skip": "true"})),
            SkipReason::OptedOut,
        ),
        (
            "label",
            "team-riker",
            edit(|v| v["metadata"]["labels"]["nodewright.io/skip"] = json!("true")),
            SkipReason::OptedOut,
        ),
        (
            "no rule, labels unknown",
            "elsewhere",
            pod(base_pod()),
            SkipReason::NamespaceLabelsUnknown,
        ),
    ];
    for (name, ns, p, want) in cases {
        assert_eq!(decide_in(&s, ns, &p, None), Decision::Skip(want), "{name}");
    }
    let p = pod(base_pod());
    for (op, kind, want) in [
        (Operation::Update, "Pod", SkipReason::NotCreate),
        (Operation::Delete, "Pod", SkipReason::NotCreate),
        (Operation::Create, "Deployment", SkipReason::NotPod),
    ] {
        let req = PodAdmission {
            operation: op,
            group: "",
            kind,
            namespace: "team-riker",
            pod: Some(&p),
            namespace_labels: None,
        };
        assert_eq!(s.decide(&req), Decision::Skip(want));
    }
}

#[test]
fn rules_select_by_namespace_labels_and_pod_labels_first_match_wins() {
    let s = steering(CONFIG);
    assert!(s.needs_namespace_labels());
    let labelled: BTreeMap<String, String> =
        [("nodewright.io/pool".to_owned(), "default".to_owned())].into();
    let other: BTreeMap<String, String> = [("team".to_owned(), "x".to_owned())].into();
    let p = pod(base_pod());
    assert!(
        matches!(decide_in(&s, "ns1", &p, Some(&labelled)), Decision::Patch { ref rule, .. } if rule == "labelled")
    );
    assert_eq!(
        decide_in(&s, "ns1", &p, Some(&other)),
        Decision::Skip(SkipReason::NoRule)
    );
    assert_eq!(
        decide_in(&s, "ns1", &p, None),
        Decision::Skip(SkipReason::NamespaceLabelsUnknown),
        "unknown labels select nothing"
    );
    // The pod-label rule comes first, in any namespace.
    let batch = edit(|v| v["metadata"]["labels"]["workload"] = json!("batch"));
    assert!(
        matches!(decide_in(&s, "team-riker", &batch, None), Decision::Patch { ref pool, .. } if pool == "gpu")
    );
}

#[test]
fn provisioner_name_key_works() {
    let text = CONFIG.replace(
        "spec:\n  spread:",
        "spec:\n  nodeSelectorKey: karpenter.sh/provisioner-name\n  spread:",
    );
    let s = steering(&text);
    assert_eq!(s.node_selector_key(), "karpenter.sh/provisioner-name");
    let d = decide_in(&s, "team-riker", &pod(base_pod()), None);
    assert_eq!(
        ops(&d)[0].1,
        json!({"karpenter.sh/provisioner-name": "default"})
    );
}

#[test]
fn warning_is_short() {
    let a = Additions {
        node_selector: Some(("karpenter.sh/nodepool".into(), "default".into())),
        tolerations: 2,
        spread_topology_key: Some("topology.kubernetes.io/zone".into()),
        scheduler_name: None,
        capacity_type: None,
        notes: vec![],
    };
    let w = a.warning(&"p".repeat(200));
    assert!(w.len() <= 120, "{w}");
    assert_eq!(
        a.warning("default"),
        "nodewright: steered to NodePool default: added nodeSelector karpenter.sh/nodepool, 2 tolerations, spread on zone"
    );
    let scheduler_only = Additions {
        scheduler_name: Some("nodewright-scheduler".into()),
        ..Additions::default()
    };
    assert_eq!(
        scheduler_only.warning("default"),
        "nodewright: steered to NodePool default: added schedulerName nodewright-scheduler"
    );
}

fn with_scheduler(policy_level: &str, rule_level: &str) -> Steering {
    let mut text = CONFIG.replace(
        "spec:\n  spread:",
        &format!("spec:\n{policy_level}  spread:"),
    );
    if !rule_level.is_empty() {
        text = text.replacen(
            "nodePool: default",
            &format!("nodePool: default\n{rule_level}"),
            1,
        );
    }
    steering(&text)
}

#[test]
fn scheduler_name_is_set_on_pods_that_name_none_or_the_default() {
    let s = with_scheduler("  schedulerName: nodewright-scheduler\n", "");
    for before in [None, Some("default-scheduler"), Some("")] {
        let p = edit(|v| {
            if let Some(name) = before {
                v["spec"]["schedulerName"] = json!(name);
            }
        });
        let d = decide_in(&s, "team-riker", &p, None);
        let set: Vec<_> = ops(&d)
            .into_iter()
            .filter(|(path, _)| path == "/spec/schedulerName")
            .collect();
        assert_eq!(
            set,
            vec![(
                "/spec/schedulerName".to_owned(),
                json!("nodewright-scheduler")
            )],
            "{before:?}"
        );
        let Decision::Patch { additions, .. } = &d else {
            unreachable!()
        };
        assert!(additions.fields().ends_with(",schedulerName"));
        assert_eq!(
            additions.scheduler_name.as_deref(),
            Some("nodewright-scheduler")
        );
    }
}

#[test]
fn scheduler_name_of_the_pods_own_is_kept_with_a_note() {
    let s = with_scheduler("  schedulerName: nodewright-scheduler\n", "");
    let p = edit(|v| v["spec"]["schedulerName"] = json!("volcano"));
    let d = decide_in(&s, "team-riker", &p, None);
    assert!(
        ops(&d)
            .iter()
            .all(|(path, _)| path != "/spec/schedulerName")
    );
    let Decision::Patch { additions, .. } = &d else {
        unreachable!()
    };
    assert_eq!(additions.scheduler_name, None);
    assert!(
        additions.notes.iter().any(|n| n.contains("volcano")),
        "{:?}",
        additions.notes
    );
}

#[test]
fn scheduler_name_of_a_rule_overrides_the_policy_and_a_second_pass_adds_nothing() {
    let s = with_scheduler(
        "  schedulerName: nodewright-scheduler\n",
        "      schedulerName: gpu-scheduler",
    );
    let p = edit(|v| v["spec"]["schedulerName"] = json!("default-scheduler"));
    let d = decide_in(&s, "team-riker", &p, None);
    assert!(ops(&d).contains(&("/spec/schedulerName".to_owned(), json!("gpu-scheduler"))));
    let Decision::Patch { patch, .. } = d else {
        unreachable!()
    };
    let mut patched = base_pod();
    patched["spec"]["schedulerName"] = json!("default-scheduler");
    json_patch::patch(&mut patched, &patch).unwrap();
    assert!(matches!(
        decide_in(&s, "team-riker", &pod(patched), None),
        Decision::Unchanged { .. }
    ));
}

#[test]
fn no_scheduler_name_without_one_in_the_policy() {
    let p = edit(|v| v["spec"]["schedulerName"] = json!("default-scheduler"));
    let d = decide_in(&steering(CONFIG), "team-riker", &p, None);
    assert!(
        ops(&d)
            .iter()
            .all(|(path, _)| path != "/spec/schedulerName")
    );
}
