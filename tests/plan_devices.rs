//! `nodewright plan` with the device resources and the `karpenter.k8s.aws/*` labels Karpenter's AWS
//! provider publishes: a pod requesting Neuron cores, EFA interfaces or a GPU model lands only on
//! types that provide them (alternatives included), a pool bounded with `Gte`/`Lte` and bandwidth
//! and CPU-maker labels keeps only types inside the bounds, and an unknown extended resource is
//! still reported unschedulable. Checked against the embedded catalog the plan is made from.

use std::process::Command;

use nodewright::cloud::catalog::embedded;
use nodewright::config::PricingSpec;
use nodewright::model::catalog::{Catalog, InstanceType, KubeletSettings, labels};
use nodewright::model::resources::{EFA, NEURONCORE, NVIDIA_GPU};
use serde_json::Value;

fn plan() -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_nodewright"))
        .args([
            "plan",
            "--config",
            "tests/data/plan/devices/config.yaml",
            "--output",
            "json",
            "tests/data/plan/devices/pods.yaml",
        ])
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

/// The node holding `pod`, and every type it may launch as (chosen type and alternatives).
fn types_for<'c>(plan: &Value, catalog: &'c Catalog, pod: &str) -> Vec<&'c InstanceType> {
    let node = plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["pods"].as_array().unwrap().iter().any(|p| p == pod))
        .unwrap_or_else(|| panic!("{pod} is planned: {plan:#}"));
    std::iter::once(&node["instanceType"])
        .chain(node["alternatives"].as_array().unwrap())
        .map(|name| {
            let name = name.as_str().unwrap();
            catalog.get(name).unwrap_or_else(|| panic!("{name}"))
        })
        .collect()
}

#[test]
fn devices_and_karpenter_labels_choose_the_types() {
    let plan = plan();
    let catalog = embedded("us-east-1", &PricingSpec::default()).unwrap();
    let kubelet = KubeletSettings::default();
    let label = |it: &InstanceType, key: &str| it.label(key);
    let number = |it: &InstanceType, key: &str| label(it, key).and_then(|v| v.parse::<i64>().ok());

    // (pod, what every type of its node must have)
    type Check = fn(&InstanceType, &KubeletSettings) -> bool;
    let checks: [(&str, &str, Check); 3] = [
        ("ml/neuron", "2 NeuronCores", |it, k| {
            it.allocatable(k).0[NEURONCORE] >= 2
        }),
        ("ml/efa", "an EFA interface", |it, k| {
            it.allocatable(k).0[EFA] >= 1
        }),
        ("ml/a100", "an A100", |it, k| {
            it.allocatable(k).0[NVIDIA_GPU] >= 1
                && it.label(labels::INSTANCE_GPU_NAME).as_deref() == Some("a100")
        }),
    ];
    for (pod, needs, check) in checks {
        let types = types_for(&plan, &catalog, pod);
        for it in &types {
            assert!(check(it, &kubelet), "{pod} needs {needs}: {}", it.name);
        }
    }
    let neuron_types: Vec<&str> = types_for(&plan, &catalog, "ml/neuron")
        .iter()
        .map(|t| t.family.as_str())
        .collect();
    assert!(
        neuron_types
            .iter()
            .all(|f| f.starts_with("inf") || f.starts_with("trn")),
        "{neuron_types:?}"
    );

    let web = types_for(&plan, &catalog, "web/web");
    assert!(web.len() > 1, "the bounds leave alternatives");
    for it in web {
        let cpu = number(it, labels::INSTANCE_CPU).unwrap();
        assert!((4..=8).contains(&cpu), "{}: {cpu} vCPUs", it.name);
        let bandwidth = number(it, labels::INSTANCE_NETWORK_BANDWIDTH).unwrap();
        assert!(bandwidth >= 12_500, "{}: {bandwidth} Mbps", it.name);
        assert_eq!(
            label(it, labels::INSTANCE_CPU_MANUFACTURER).as_deref(),
            Some("aws"),
            "{}",
            it.name
        );
    }

    let unschedulable = plan["unschedulable"].as_array().unwrap();
    assert_eq!(unschedulable.len(), 1, "{plan:#}");
    assert_eq!(unschedulable[0]["pod"], "ml/fpga");
    let reason = unschedulable[0]["reason"].as_str().unwrap();
    assert!(reason.contains("example.com/fpga"), "{reason}");
}
