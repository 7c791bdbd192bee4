//! `nodewright plan` as a user runs it: the real binary, real manifests, both outputs, the
//! embedded and the live (moto) catalog, and bad input.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Output};

use common::moto::Moto;
use serde_json::Value;

fn plan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nodewright"))
        .arg("plan")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("NODEWRIGHT_CONFIG")
        .env_remove("NODEWRIGHT_LOG")
        .output()
        .expect("run nodewright plan")
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "plan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("plan prints JSON")
}

/// The workshop: team-riker's 2048 Deployment with 3 replicas, steered by examples/workshop.yaml,
/// needs 3 spot nodes of the default pool, one per zone.
fn assert_workshop_plan(plan: &Value) {
    let nodes = plan["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{plan:#}");
    let zones: BTreeSet<&str> = nodes.iter().map(|n| n["zone"].as_str().unwrap()).collect();
    assert_eq!(zones.len(), 3, "one node per zone: {plan:#}");
    let mut total = 0.0;
    for n in nodes {
        assert_eq!(n["nodePool"], "default");
        assert_eq!(n["capacityType"], "spot");
        let pods = n["pods"].as_array().unwrap();
        assert_eq!(pods.len(), 1);
        let pod = pods[0].as_str().unwrap();
        assert!(
            pod.starts_with("team-riker/deployment-2048-"),
            "named like the controller names it: {pod}"
        );
        let it = n["instanceType"].as_str().unwrap();
        let family = it.split('.').next().unwrap();
        assert!(
            ["c", "m", "r"].contains(&&family[..1]) && family[1..2].parse::<u32>().unwrap() > 4,
            "{it} satisfies the pool's requirements"
        );
        let alternatives = n["alternatives"].as_array().unwrap();
        assert!(!alternatives.is_empty() && alternatives.len() <= 60);
        assert!(!alternatives.iter().any(|a| a == it));
        total += n["pricePerHour"].as_f64().unwrap();
    }
    assert!((plan["totalPricePerHour"].as_f64().unwrap() - total).abs() < 1e-5);
    assert_eq!(plan["unschedulable"], Value::Array(vec![]));
}

#[test]
fn workshop_2048_gives_three_spot_nodes_one_per_zone() {
    let embedded = json(&plan(&[
        "--output",
        "json",
        "tests/data/plan/workshop-2048.yaml",
    ]));
    assert_workshop_plan(&embedded);
    let explicit = json(&plan(&[
        "--config",
        "examples/workshop.yaml",
        "--output",
        "json",
        "tests/data/plan/workshop-2048.yaml",
    ]));
    assert_eq!(embedded, explicit, "same input, same plan");
    // The contract's field names, and nothing else at the top level.
    let keys: BTreeSet<&str> = embedded
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["nodes", "totalPricePerHour", "unschedulable"])
    );
}

#[test]
fn table_output_is_for_people() {
    let out = plan(&["tests/data/plan/workshop-2048.yaml"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("NODE  POOL"), "{text}");
    assert!(text.contains("Total: 3 new nodes for 3 pods"), "{text}");
    assert_eq!(text.matches(" spot ").count(), 3, "{text}");
}

#[test]
fn pods_nobody_can_take_are_listed_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.yaml");
    std::fs::write(
        &manifest,
        r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: huge, namespace: team-riker}
  spec:
    containers: [{name: a, image: x, resources: {requests: {cpu: "5000"}}}]
- apiVersion: v1
  kind: Pod
  metadata: {name: untolerated, namespace: default}
  spec:
    containers: [{name: a, image: x}]
"#,
    )
    .unwrap();
    let out = json(&plan(&["--output", "json", manifest.to_str().unwrap()]));
    let reasons: Vec<(String, String)> = out["unschedulable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["pod"].as_str().unwrap().to_owned(),
                u["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!(reasons[0].0, "team-riker/huge");
    assert!(reasons[0].1.contains("cpu"), "{}", reasons[0].1);
    assert_eq!(reasons[1].0, "default/untolerated");
    assert!(
        reasons[1]
            .1
            .contains("nodewright.io/pool=default:NoSchedule"),
        "{}",
        reasons[1].1
    );
    assert_eq!(out["nodes"], Value::Array(vec![]));
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: v1\nkind: Pod\nmetadata: [not, a, map]\n").unwrap();
    for args in [
        vec![bad.to_str().unwrap()],
        vec!["/nonexistent/manifest.yaml"],
        vec!["--region", "mars-1", "tests/data/plan/workshop-2048.yaml"],
    ] {
        let out = plan(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error:"), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
    let out = plan(&[bad.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.yaml"),
        "the error names the file"
    );
}

/// `--catalog ec2` through the standard AWS chain, against moto: same plan shape, prices from
/// EC2 (moto reports its own spot prices).
#[test]
fn live_catalog_from_an_ec2_endpoint() {
    let moto = Moto::start();
    let out = Command::new(env!("CARGO_BIN_EXE_nodewright"))
        .args([
            "plan",
            "--catalog",
            "ec2",
            "--region",
            "us-east-1",
            "--output",
            "json",
            "tests/data/plan/workshop-2048.yaml",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("AWS_ENDPOINT_URL_EC2", &moto.endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let plan = json(&out);
    assert_workshop_plan(&plan);
    // moto's spot prices are reported, not estimated
    assert!(
        plan["nodes"][0].get("priceEstimated").is_none(),
        "{plan:#}\n{}",
        moto.logs()
    );
}

/// A static NodePool (`spec.replicas`) as Karpenter's docs write it: `plan` shows the nodes it
/// keeps, empty, beside the nodes the pods need from the dynamic pool, and warns that nodewright
/// does not remove nodes when replicas go down.
#[test]
fn static_node_pools_show_their_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    let base = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/plan/benchmix-config.yaml"),
    )
    .unwrap();
    std::fs::write(
        &config,
        format!(
            "{base}---
apiVersion: karpenter.sh/v1
kind: NodePool
metadata:
  name: static
spec:
  replicas: 3
  limits:
    nodes: 5
  template:
    spec:
      nodeClassRef: {{group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}}
      requirements:
        - {{key: node.kubernetes.io/instance-type, operator: In, values: [m5.large, m6i.large]}}
        - {{key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}}
"
        ),
    )
    .unwrap();
    let manifest = dir.path().join("m.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default}
spec:
  containers: [{name: a, image: x, resources: {requests: {cpu: 500m, memory: 512Mi}}}]
",
    )
    .unwrap();
    let out = plan(&[
        "--config",
        config.to_str().unwrap(),
        "--output",
        "json",
        manifest.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let plan = json(&out);
    let nodes = plan["nodes"].as_array().unwrap();
    let fixed: Vec<&Value> = nodes.iter().filter(|n| n["nodePool"] == "static").collect();
    assert_eq!(fixed.len(), 3, "{plan}");
    for n in &fixed {
        assert_eq!(n["pods"], Value::Array(vec![]));
        assert_eq!(n["capacityType"], "on-demand");
        assert!(["m5.large", "m6i.large"].contains(&n["instanceType"].as_str().unwrap()));
    }
    let web: Vec<&Value> = nodes
        .iter()
        .filter(|n| n["nodePool"] == "general")
        .collect();
    assert_eq!(web.len(), 1, "{plan}");
    assert_eq!(web[0]["pods"][0], "default/web");
    assert!(stderr.contains("spec.replicas"), "{stderr}");
}

/// A Deployment asking for "1 on-demand, the rest spot": the plan gives each pod the capacity
/// type the webhook would, packs each onto a node of that type, and reports the split.
#[test]
fn a_workload_split_is_planned_onto_both_capacity_types_and_reported() {
    let out = plan(&[
        "--config",
        "tests/data/steering.yaml",
        "--output",
        "json",
        "tests/data/manifests/split-2048.yaml",
    ]);
    let plan = json(&out);
    assert_eq!(
        plan["capacitySplits"],
        serde_json::json!([{"workload": "team-riker/Deployment/deployment-2048",
            "onDemandBase": 1, "spotPercent": 100, "onDemand": 1, "spot": 4}])
    );
    let mut by_type = std::collections::BTreeMap::<String, usize>::new();
    for n in plan["nodes"].as_array().unwrap() {
        *by_type
            .entry(n["capacityType"].as_str().unwrap().to_owned())
            .or_default() += n["pods"].as_array().unwrap().len();
    }
    assert_eq!(by_type["on-demand"], 1, "{plan:#}");
    assert_eq!(by_type["spot"], 4, "{plan:#}");
    let table = plan_table(&[
        "--config",
        "tests/data/steering.yaml",
        "tests/data/manifests/split-2048.yaml",
    ]);
    assert!(
        table.contains(
            "team-riker/Deployment/deployment-2048: 1 on-demand + 4 spot (base 1, then 100% spot)"
        ),
        "{table}"
    );
}

/// The same with spot falling back to on-demand: its spot pods prefer spot, so the plan still
/// packs them onto spot nodes (a preference is planned as required first), and says so.
#[test]
fn a_split_whose_spot_may_fall_back_still_plans_spot() {
    let args = [
        "--config",
        "tests/data/steering.yaml",
        "--output",
        "json",
        "tests/data/manifests/split-2048-fallback.yaml",
    ];
    let plan = json(&plan(&args));
    assert_eq!(
        plan["capacitySplits"],
        serde_json::json!([{"workload": "team-riker/Deployment/deployment-2048",
            "onDemandBase": 1, "spotPercent": 100, "spotFallback": true, "onDemand": 1, "spot": 4}])
    );
    let mut by_type = std::collections::BTreeMap::<String, usize>::new();
    for n in plan["nodes"].as_array().unwrap() {
        *by_type
            .entry(n["capacityType"].as_str().unwrap().to_owned())
            .or_default() += n["pods"].as_array().unwrap().len();
    }
    assert_eq!((by_type["on-demand"], by_type["spot"]), (1, 4), "{plan:#}");
    let table = plan_table(&[args[0], args[1], args[4]]);
    assert!(
        table.contains("(base 1, then 100% spot, falling back to on-demand)"),
        "{table}"
    );
}

fn plan_table(args: &[&str]) -> String {
    let out = plan(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
