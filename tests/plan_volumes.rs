//! `nodewright plan` with volumes (tests/data/plan/volumes.yaml): pods go where their volumes
//! are, and a volume in a zone no pool offers is the reason a pod is left out.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

fn plan(manifest: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_nodewright"))
        .args(["plan", "--output", "json", manifest])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("NODEWRIGHT_CONFIG")
        .env_remove("NODEWRIGHT_LOG")
        .output()
        .expect("run nodewright plan");
    assert!(
        out.status.success(),
        "plan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("plan prints JSON")
}

/// The zones of the planned nodes holding pods whose name starts with `prefix`, and how many
/// such pods they hold.
fn zones_of(plan: &Value, prefix: &str) -> (BTreeSet<String>, usize) {
    let mut zones = BTreeSet::new();
    let mut pods = 0;
    for node in plan["nodes"].as_array().unwrap() {
        let mine = node["pods"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p.as_str().unwrap().starts_with(prefix))
            .count();
        if mine > 0 {
            zones.insert(node["zone"].as_str().unwrap().to_owned());
            pods += mine;
        }
    }
    (zones, pods)
}

#[test]
fn pods_are_planned_in_their_volumes_zones() {
    let plan = plan("tests/data/plan/volumes.yaml");
    // Without its volume the Deployment's spread would put one replica in each of three zones.
    let (zones, pods) = zones_of(&plan, "team-riker/web-");
    assert_eq!(pods, 3, "{plan:#}");
    assert_eq!(zones, BTreeSet::from(["us-east-1b".to_owned()]), "{plan:#}");
    // Each replica's claim from the template is provisioned where it first runs: us-east-1c.
    let (zones, pods) = zones_of(&plan, "team-riker/db-");
    assert_eq!(pods, 2, "{plan:#}");
    assert_eq!(zones, BTreeSet::from(["us-east-1c".to_owned()]), "{plan:#}");
    assert_eq!(
        plan["unschedulable"],
        serde_json::json!([{
            "pod": "team-riker/stranded",
            "reason": "its volume pvc/far is in zone us-east-1z, where no instance type the pools allow is offered"
        }]),
        "{plan:#}"
    );
}

#[test]
fn without_the_storage_objects_nothing_is_constrained() {
    // The same workloads with the volumes, claims and classes left out of the manifests: `plan`
    // reads partial manifests, so the pods are planned as if they had no volumes.
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/plan/volumes.yaml"),
    )
    .unwrap();
    let kept: Vec<&str> = text
        .split("\n---\n")
        .filter(|doc| {
            !["kind: PersistentVolume", "kind: StorageClass"]
                .iter()
                .any(|k| doc.lines().any(|l| l.starts_with(k)))
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("workloads.yaml");
    std::fs::write(&manifest, kept.join("\n---\n")).unwrap();
    let plan = plan(manifest.to_str().unwrap());
    let (zones, pods) = zones_of(&plan, "team-riker/web-");
    assert_eq!(pods, 3, "{plan:#}");
    assert_eq!(zones.len(), 3, "spread over three zones: {plan:#}");
    let (_, pods) = zones_of(&plan, "team-riker/db-");
    assert_eq!(pods, 2, "{plan:#}");
    assert_eq!(zones_of(&plan, "team-riker/stranded").1, 1, "{plan:#}");
    assert_eq!(plan["unschedulable"], serde_json::json!([]), "{plan:#}");
}
