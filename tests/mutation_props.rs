//! Property tests over generated pods: the patch applies to the raw object with the json-patch crate
//! (RFC 6902, as the apiserver applies it), the result is a valid k8s-openapi Pod, a second pass adds
//! nothing, and nothing the user wrote is lost or changed.

use k8s_openapi::api::core::v1::Pod;
use nodewright::config::Config;
use nodewright::policy::mutate::{Decision, Operation, PodAdmission, Steering};
use nodewright::policy::pod::PodView;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn steering() -> Steering {
    let config = Config::parse(include_str!("data/steering.yaml"), "steering.yaml").unwrap();
    Steering::new(&config, Some("nodewright"))
}

/// A map field in one of the shapes the apiserver may send: absent, null, empty, or with entries.
fn map_field(
    entries: impl Strategy<Value = Vec<(String, String)>>,
) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        entries.prop_map(|e| Some(Value::Object(
            e.into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect::<Map<_, _>>()
        ))),
    ]
}

fn list_field(
    items: impl Strategy<Value = Value> + 'static,
) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        prop::collection::vec(items, 0..4).prop_map(|v| Some(Value::Array(v)))
    ]
}

fn label_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("app".to_owned()),
        Just("app.kubernetes.io/name".to_owned()),
        Just("pod-template-hash".to_owned()),
        Just("controller-revision-hash".to_owned()),
        Just("workload".to_owned()),
        "[a-z]{1,8}(/[a-z]{1,6})?",
    ]
}

fn node_selector_entry() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        Just(("karpenter.sh/nodepool".to_owned(), "default".to_owned())),
        Just(("disktype".to_owned(), "ssd".to_owned())),
        Just(("karpenter.sh/capacity-type".to_owned(), "spot".to_owned())),
        Just(("a~b/c".to_owned(), "x".to_owned())),
        ("[a-z]{1,6}", "[a-z0-9]{0,6}"),
    ]
}

fn toleration() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(
            json!({"key": "nodewright.io/pool", "operator": "Equal", "value": "default", "effect": "NoSchedule"})
        ),
        Just(json!({"key": "nodewright.io/pool", "operator": "Exists"})),
        Just(json!({"operator": "Exists"})),
        Just(
            json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300})
        ),
        Just(json!({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})),
        "[a-z]{1,6}".prop_map(|k| json!({"key": k, "operator": "Exists"})),
    ]
}

fn spread() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(
            json!({"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"})
        ),
        Just(
            json!({"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule"})
        ),
    ]
}

prop_compose! {
    fn raw_pod()(
        labels in map_field(prop::collection::vec((label_key(), "[a-z0-9]{1,6}"), 0..5)),
        annotations in map_field(prop::collection::vec(("[a-z]{1,6}", "[a-z]{0,4}"), 0..3)),
        node_selector in map_field(prop::collection::vec(node_selector_entry(), 0..3)),
        tolerations in list_field(toleration()),
        spreads in list_field(spread()),
        extra in prop::option::of("[a-z]{1,8}"),
        namespace in prop_oneof![Just("team-riker"), Just("keymaker"), Just("elsewhere"), Just("kube-system")],
    ) -> (Value, &'static str) {
        let mut metadata = json!({"generateName": "web-"});
        if let Some(l) = labels { metadata["labels"] = l; }
        if let Some(a) = annotations { metadata["annotations"] = a; }
        let mut spec = json!({"containers": [{"name": "c", "image": "nginx", "resources": {}}], "restartPolicy": "Always"});
        if let Some(v) = node_selector { spec["nodeSelector"] = v; }
        if let Some(v) = tolerations { spec["tolerations"] = v; }
        if let Some(v) = spreads { spec["topologySpreadConstraints"] = v; }
        // A field this k8s-openapi version does not know must survive the patch untouched.
        if let Some(name) = extra { spec[format!("future{name}")] = json!({"keep": [1, 2]}); }
        (json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}), namespace)
    }
}

fn decide(s: &Steering, raw: &Value, namespace: &str) -> Decision {
    let pod: PodView = serde_json::from_value(raw.clone()).expect("generated pods are valid");
    s.decide(&PodAdmission {
        operation: Operation::Create,
        group: "",
        kind: "Pod",
        namespace,
        pod: Some(&pod),
        namespace_labels: None,
    })
}

/// Every value in `before` is in `after` at the same place; lists may only grow at the end; a null may
/// become a map or list (the field was set). Returns a description of the first loss.
fn lost(before: &Value, after: &Value, path: &str) -> Option<String> {
    match (before, after) {
        (Value::Null, Value::Object(_) | Value::Array(_)) => None,
        (Value::Object(b), Value::Object(a)) => b.iter().find_map(|(k, v)| match a.get(k) {
            None => Some(format!("{path}/{k} removed")),
            Some(av) => lost(v, av, &format!("{path}/{k}")),
        }),
        (Value::Array(b), Value::Array(a)) => {
            if a.len() < b.len() {
                return Some(format!("{path} shrank"));
            }
            b.iter()
                .zip(a)
                .enumerate()
                .find_map(|(i, (bv, av))| lost(bv, av, &format!("{path}/{i}")))
        }
        (b, a) if b == a => None,
        (b, a) => Some(format!("{path}: {b} became {a}")),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn patch_applies_keeps_user_fields_and_is_idempotent((raw, namespace) in raw_pod()) {
        let s = steering();
        let first = decide(&s, &raw, namespace);
        prop_assert_eq!(&first, &decide(&s, &raw, namespace), "deterministic");
        match first {
            Decision::Patch { patch, pool, .. } => {
                // Through the wire form, as the apiserver receives it.
                let wire = serde_json::to_vec(&patch).unwrap();
                let patch: json_patch::Patch = serde_json::from_slice(&wire).unwrap();
                let mut patched = raw.clone();
                json_patch::patch(&mut patched, &patch).map_err(|e| TestCaseError::fail(format!("patch failed: {e}\n{raw}\n{}", String::from_utf8_lossy(&wire))))?;
                let pod: Pod = serde_json::from_value(patched.clone()).map_err(|e| TestCaseError::fail(format!("not a Pod: {e}")))?;
                if let Some(loss) = lost(&raw, &patched, "") {
                    return Err(TestCaseError::fail(format!("user field lost: {loss}")));
                }
                let selector = pod.spec.as_ref().and_then(|s| s.node_selector.as_ref()).and_then(|m| m.get("karpenter.sh/nodepool"));
                prop_assert_eq!(selector, Some(&pool));
                let again = decide(&s, &patched, namespace);
                prop_assert!(matches!(again, Decision::Unchanged { .. }), "second pass: {:?}", again);
            }
            Decision::Deny { .. } => {
                let selects_other = raw["spec"]["nodeSelector"].as_object().is_some_and(|m| {
                    m.iter().any(|(k, v)| (k == "type" && v != "karpenter") || k == "karpenter.sh/nodepool" && v != "default")
                });
                prop_assert!(selects_other || raw["metadata"]["labels"]["workload"] == "batch", "unexpected deny for {}", raw);
            }
            Decision::Unchanged { .. } | Decision::Skip(_) => {}
        }
    }
}
