//! Consolidation decisions from Node and Pod objects, through [`snapshot::world`] and [`plan`],
//! on the embedded us-east-1 catalog (m5.large $0.096/h, m5a.large $0.086/h, m5.xlarge
//! $0.192/h on demand).

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use serde_json::json;

use super::snapshot::{Context, Snapshot, decide};
use super::*;
use crate::config::Config;

fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        crate::cloud::catalog::embedded("us-east-1", &Default::default()).expect("catalog")
    })
}

fn config(types: &[&str], capacity: &str, extra: &str) -> Config {
    let text = format!(
        r#"apiVersion: karpenter.sh/v1
kind: NodePool
metadata: {{name: default}}
spec:
  disruption:
    consolidationPolicy: WhenEmptyOrUnderutilized
    consolidateAfter: 1m
{extra}
  template:
    spec:
      nodeClassRef: {{group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}}
      requirements:
        - {{key: karpenter.sh/capacity-type, operator: In, values: [{capacity}]}}
        - {{key: node.kubernetes.io/instance-type, operator: In, values: [{}]}}
        - {{key: topology.kubernetes.io/zone, operator: In, values: [us-east-1a]}}
---
apiVersion: karpenter.k8s.aws/v1
kind: EC2NodeClass
metadata: {{name: default}}
spec:
  amiSelectorTerms: [{{alias: al2023@latest}}]
  role: R
  subnetSelectorTerms: [{{tags: {{a: b}}}}]
  securityGroupSelectorTerms: [{{tags: {{a: b}}}}]
"#,
        types.join(", ")
    );
    Config::parse(&text, "t.yaml").expect("config")
}

fn on_demand(types: &[&str]) -> Config {
    config(types, "on-demand", "")
}

const OLD: &str = "2026-01-01T00:00:00Z";

fn node(name: &str, instance_type: &str, capacity: &str) -> serde_json::Value {
    let it = catalog().get(instance_type).expect("type");
    let alloc = it.allocatable(&Default::default());
    json!({
        "kind": "Node",
        "metadata": {"name": name, "creationTimestamp": OLD, "labels": {
            "karpenter.sh/nodepool": "default",
            "node.kubernetes.io/instance-type": instance_type,
            "topology.kubernetes.io/zone": "us-east-1a",
            "karpenter.sh/capacity-type": capacity,
            "kubernetes.io/arch": "amd64",
            "kubernetes.io/os": "linux",
            "nodewright.io/nodeclaim": format!("claim-{name}"),
        }},
        "status": {"allocatable": {
            "cpu": format!("{}m", alloc.0[crate::model::resources::CPU]),
            "memory": format!("{}", alloc.0[crate::model::resources::MEMORY]),
            "pods": format!("{}", alloc.0[crate::model::resources::PODS]),
        }}
    })
}

fn pod(name: &str, node: Option<&str>, cpu: &str) -> serde_json::Value {
    json!({
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "app", "creationTimestamp": OLD,
            "labels": {"app": "web"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1",
                "uid": "u1", "controller": true}]},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i",
            "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}}}]},
        "status": {"phase": if node.is_some() { "Running" } else { "Pending" }}
    })
}

fn snapshot(objects: Vec<serde_json::Value>) -> Snapshot {
    let list = json!({"kind": "List", "items": objects});
    Snapshot::from_json(&list.to_string()).expect("snapshot")
}

fn run(config: &Config, snap: &Snapshot, settings: &Settings) -> Report {
    run_rounds(config, snap, settings, usize::MAX)
}

/// The plan through [`decide`], as the CLI and the live controller get it.
fn run_rounds(config: &Config, snap: &Snapshot, settings: &Settings, rounds: usize) -> Report {
    let ctx = Context {
        config,
        catalog: catalog(),
        now: "2026-06-01T00:00:00Z".parse().unwrap(),
        busy: HashSet::new(),
        idle: HashMap::new(),
        skip: HashSet::new(),
        reserve: Default::default(),
    };
    decide(snap, &ctx, settings, rounds)
}

fn kept<'a>(r: &'a Report, node: &str) -> &'a Kept {
    r.kept
        .iter()
        .find(|k| k.node == node)
        .unwrap_or_else(|| panic!("{node} not kept: {r:#?}"))
}

fn three_half_empty() -> Snapshot {
    snapshot(vec![
        node("a", "m5.xlarge", "on-demand"),
        node("b", "m5.xlarge", "on-demand"),
        node("c", "m5.xlarge", "on-demand"),
        pod("p1", Some("a"), "1"),
        pod("p2", Some("b"), "1"),
        pod("p3", Some("c"), "1"),
    ])
}

#[test]
fn three_half_empty_nodes_become_one_in_one_move_when_the_budget_allows() {
    let all = "    budgets: [{nodes: \"100%\"}]";
    let config = config(&["m5.xlarge"], "on-demand", all);
    let r = run(&config, &three_half_empty(), &Settings::default());
    assert_eq!(r.moves.len(), 1, "{r:#?}");
    let m = &r.moves[0];
    // Deleting two beats replacing all three with one node: the same saving, one eviction less.
    assert_eq!(m.method, Method::Delete, "{m:#?}");
    assert_eq!((m.round, m.nodes.len(), m.evicted.len()), (1, 2, 2));
    assert!((r.saving_per_hour - 0.384).abs() < 1e-6, "{r:#?}");
    let stays = ["a", "b", "c"]
        .into_iter()
        .find(|n| !m.nodes.iter().any(|r| r.node == *n))
        .unwrap();
    assert!(m.destinations.values().all(|d| d == stays), "{m:#?}");
}

#[test]
fn with_the_default_budget_the_nodes_go_one_round_at_a_time_and_no_pod_moves_twice() {
    // 10 % of three nodes rounds up to one at a time.
    let config = on_demand(&["m5.xlarge"]);
    let r = run(&config, &three_half_empty(), &Settings::default());
    let rounds: Vec<usize> = r.moves.iter().map(|m| m.round).collect();
    assert_eq!(rounds, [1, 2], "{r:#?}");
    assert_eq!(
        r.evictions(),
        2,
        "each evicted pod lands on the node that stays: {r:#?}"
    );
    let mut evicted: Vec<&String> = r.moves.iter().flat_map(|m| &m.evicted).collect();
    evicted.dedup();
    assert_eq!(evicted.len(), 2);
    // The live controller asks for one round: one move, the other node held by the budget.
    let one = run_rounds(&config, &three_half_empty(), &Settings::default(), 1);
    assert_eq!(one.moves.len(), 1);
    assert!(
        one.kept.iter().any(|k| k.kind == BlockKind::Budget),
        "{one:#?}"
    );
}

#[test]
fn a_node_whose_pods_need_a_cheaper_type_is_replaced() {
    let config = on_demand(&["m5.large", "m5.xlarge"]);
    let snap = snapshot(vec![
        node("big", "m5.xlarge", "on-demand"),
        pod("p1", Some("big"), "500m"),
        pod("p2", Some("big"), "500m"),
    ]);
    let r = run(&config, &snap, &Settings::default());
    assert_eq!(r.moves.len(), 1, "{r:#?}");
    let m = &r.moves[0];
    assert_eq!(m.method, Method::Replace);
    assert_eq!(m.replacement.as_ref().unwrap().instance_type, "m5.large");
    assert!((m.saving_per_hour - 0.096).abs() < 1e-6);
    assert!((m.net_saving_per_hour - (0.096 - 2.0 * 0.002)).abs() < 1e-6);
    assert_eq!(m.destinations["app/p1"], "(new m5.large)");
}

#[test]
fn a_tiny_saving_is_not_taken_but_would_be_without_thresholds() {
    // m5.large → m5a.large saves $0.010/h: less than the minimum after two evictions.
    let config = on_demand(&["m5.large", "m5a.large"]);
    let snap = snapshot(vec![
        node("n", "m5.large", "on-demand"),
        pod("p1", Some("n"), "500m"),
        pod("p2", Some("n"), "500m"),
    ]);
    let r = run(&config, &snap, &Settings::default());
    assert!(r.moves.is_empty(), "{r:#?}");
    let k = kept(&r, "n");
    assert_eq!(k.kind, BlockKind::SmallSaving, "{k:?}");
    assert!(k.reason.contains("$0.0100/h"), "{}", k.reason);
    let loose = run(&config, &snap, &Settings::no_threshold());
    assert_eq!(loose.moves.len(), 1, "{loose:#?}");
    assert_eq!(
        loose.moves[0].replacement.as_ref().unwrap().instance_type,
        "m5a.large"
    );
}

#[test]
fn a_pdb_a_do_not_disrupt_pod_and_an_unowned_pod_keep_their_nodes() {
    let config = on_demand(&["m5.xlarge"]);
    let mut guarded = pod("p2", Some("b"), "100m");
    guarded["metadata"]["labels"]["tier"] = json!("db");
    let mut held = pod("p3", Some("c"), "100m");
    held["metadata"]["annotations"] = json!({"karpenter.sh/do-not-disrupt": "true"});
    let mut bare = pod("p4", Some("d"), "100m");
    bare["metadata"]["ownerReferences"] = json!([]);
    let snap = snapshot(vec![
        node("a", "m5.xlarge", "on-demand"),
        node("b", "m5.xlarge", "on-demand"),
        node("c", "m5.xlarge", "on-demand"),
        node("d", "m5.xlarge", "on-demand"),
        pod("p1", Some("a"), "3900m"),
        guarded,
        held,
        bare,
        json!({"kind": "PodDisruptionBudget", "apiVersion": "policy/v1",
            "metadata": {"name": "db", "namespace": "app"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"tier": "db"}}},
            "status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1,
                "expectedPods": 1, "observedGeneration": 1}}),
    ]);
    let r = run(&config, &snap, &Settings::default());
    assert!(r.moves.is_empty(), "{r:#?}");
    assert_eq!(kept(&r, "b").kind, BlockKind::Pdb);
    assert!(kept(&r, "b").reason.contains("app/db"));
    assert_eq!(kept(&r, "c").kind, BlockKind::DoNotDisrupt);
    assert_eq!(kept(&r, "d").kind, BlockKind::Unowned);
    // Node a's 3.9 CPU fit nowhere else and no cheaper type is allowed.
    assert_eq!(
        kept(&r, "a").kind,
        BlockKind::NoCheaper,
        "{:?}",
        kept(&r, "a")
    );
}

#[test]
fn budgets_and_consolidate_after_hold_nodes() {
    let budget = "    budgets: [{nodes: \"0\", reasons: [Underutilized]}]";
    let config = config(&["m5.xlarge"], "on-demand", budget);
    let snap = snapshot(vec![
        node("a", "m5.xlarge", "on-demand"),
        node("b", "m5.xlarge", "on-demand"),
        pod("p1", Some("a"), "1"),
        pod("p2", Some("b"), "1"),
    ]);
    let r = run(&config, &snap, &Settings::default());
    assert!(r.moves.is_empty());
    assert_eq!(kept(&r, "a").kind, BlockKind::Budget);
    // A pod that arrived 10 s ago: consolidateAfter 1m has not passed.
    let config = on_demand(&["m5.xlarge"]);
    let mut fresh = pod("p2", Some("b"), "1");
    fresh["metadata"]["creationTimestamp"] = json!("2026-05-31T23:59:50Z");
    let snap = snapshot(vec![
        node("a", "m5.xlarge", "on-demand"),
        node("b", "m5.xlarge", "on-demand"),
        pod("p1", Some("a"), "1"),
        fresh,
    ]);
    let r = run(&config, &snap, &Settings::default());
    assert_eq!(kept(&r, "b").kind, BlockKind::NotYet, "{r:#?}");
    // Node a may still go: its pod fits on b.
    assert_eq!(r.moves.len(), 1, "{r:#?}");
    assert_eq!(r.moves[0].nodes[0].node, "a");
}

#[test]
fn pending_pods_keep_the_room_they_need() {
    // Node a's pod fits on b only in the room the pending pod needs; moving it there would make
    // the next provisioning pass launch a node for the pending pod.
    let config = on_demand(&["m5.xlarge"]);
    let snap = snapshot(vec![
        node("a", "m5.xlarge", "on-demand"),
        node("b", "m5.xlarge", "on-demand"),
        pod("p1", Some("a"), "2"),
        pod("p2", Some("b"), "1500m"),
        pod("waiting", None, "2"),
    ]);
    let r = run(&config, &snap, &Settings::default());
    assert!(r.moves.is_empty(), "{r:#?}");
    assert_eq!(kept(&r, "a").kind, BlockKind::NoCheaper, "{r:#?}");
}

#[test]
fn spot_is_replaced_by_spot_only_with_enough_cheaper_types() {
    let config = config(&["m5.xlarge", "m5.large"], "spot", "");
    let snap = snapshot(vec![
        node("s", "m5.xlarge", "spot"),
        pod("p1", Some("s"), "500m"),
    ]);
    let r = run(&config, &snap, &Settings::default());
    assert!(r.moves.is_empty(), "{r:#?}");
    let k = kept(&r, "s");
    assert_eq!(k.kind, BlockKind::SpotToSpot, "{k:?}");
    assert!(k.reason.contains("needs 15"), "{}", k.reason);
}

#[test]
fn a_kubectl_list_reads_and_bad_objects_are_named() {
    let snap = snapshot(vec![
        node("a", "m5.xlarge", "on-demand"),
        pod("p1", Some("a"), "1"),
        json!({"kind": "Service", "metadata": {"name": "x"}}),
    ]);
    assert_eq!((snap.nodes.len(), snap.pods.len()), (1, 1));
    let err = Snapshot::from_json(r#"{"kind": "Pod", "metadata": {"name": "x", "namespace": "n"}, "spec": {"containers": 3}}"#)
        .unwrap_err();
    assert!(err.contains("Pod n/x"), "{err}");
    assert!(Snapshot::from_json("{").unwrap_err().contains("not JSON"));
}
