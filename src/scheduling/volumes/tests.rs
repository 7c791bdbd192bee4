use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::views::{ClaimView, StorageClassView, VolumeView};
use super::*;
use crate::model::catalog::{CapacityType, CatalogSource, InstanceType, Offering};

const ZONE: &str = labels::ZONE;

fn req(key: &str, op: Operator, values: &[&str]) -> Requirement {
    Requirement {
        key: key.to_owned(),
        operator: op,
        values: values.iter().map(|v| v.to_string()).collect(),
        min_values: None,
    }
}

fn zone(values: &[&str]) -> Requirement {
    req(ZONE, Operator::In, values)
}

/// A pod `web-0` in namespace `app` with these volumes.
fn pod(volumes: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web-0", "namespace": "app"},
        "spec": {"containers": [{"name": "c", "image": "x"}], "volumes": volumes}
    }))
    .unwrap()
}

fn pvc_volume(claim: &str) -> Value {
    json!({"name": claim, "persistentVolumeClaim": {"claimName": claim}})
}

fn claim(name: &str, spec: Value, bound: bool) -> Claim {
    let annotations = if bound {
        json!({BIND_COMPLETED: "yes"})
    } else {
        json!({})
    };
    serde_json::from_value::<ClaimView>(json!({
        "metadata": {"name": name, "namespace": "app", "annotations": annotations},
        "spec": spec
    }))
    .unwrap()
    .to_claim()
}

fn pv(name: &str, spec: Value) -> Volume {
    serde_json::from_value::<VolumeView>(json!({"metadata": {"name": name}, "spec": spec}))
        .unwrap()
        .to_volume()
        .unwrap()
}

fn zonal_pv(name: &str, key: &str, zones: &[&str]) -> Volume {
    pv(
        name,
        json!({"csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-1"},
               "nodeAffinity": {"required": {"nodeSelectorTerms": [
                   {"matchExpressions": [{"key": key, "operator": "In", "values": zones}]}]}}}),
    )
}

fn class(name: &str, doc: Value) -> StorageClass {
    let mut doc = doc;
    doc["metadata"]["name"] = json!(name);
    serde_json::from_value::<StorageClassView>(doc)
        .unwrap()
        .to_class()
        .unwrap()
}

/// The objects every case reads from (the cluster's view: strict).
fn objects() -> VolumeObjects {
    let mut o = VolumeObjects::default();
    let mut add_claim = |c: Claim| {
        o.claims.insert((c.namespace.clone(), c.name.clone()), c);
    };
    for (name, volume) in [
        ("bound-b", "pv-b"),
        ("bound-ebs", "pv-ebs"),
        ("bound-beta", "pv-beta"),
        ("bound-a-or-c", "pv-a-or-c"),
        ("bound-local-host", "pv-local-host"),
        ("bound-local-zone", "pv-local-zone"),
        ("bound-host", "pv-host"),
        ("bound-anywhere", "pv-anywhere"),
        ("bound-gone", "pv-gone"),
        ("bound-c", "pv-c"),
        ("bound-a-or-b", "pv-a-or-b"),
        ("bound-b-or-c", "pv-b-or-c"),
    ] {
        add_claim(claim(
            name,
            json!({"volumeName": volume, "storageClassName": ""}),
            true,
        ));
    }
    add_claim(claim(
        "binding",
        json!({"volumeName": "pv-b", "storageClassName": ""}),
        false,
    ));
    add_claim(claim(
        "wffc-c",
        json!({"storageClassName": "wffc-c"}),
        false,
    ));
    add_claim(claim(
        "wffc-ebs",
        json!({"storageClassName": "wffc-ebs"}),
        false,
    ));
    add_claim(claim(
        "wffc-any",
        json!({"storageClassName": "wffc-any"}),
        false,
    ));
    add_claim(claim(
        "immediate",
        json!({"storageClassName": "immediate-a"}),
        false,
    ));
    add_claim(claim("no-class", json!({"storageClassName": ""}), false));
    add_claim(claim("default-class", json!({}), false));
    add_claim(claim(
        "missing-class",
        json!({"storageClassName": "nope"}),
        false,
    ));
    add_claim(claim(
        "web-0-ephemeral-bound",
        json!({"volumeName": "pv-c"}),
        true,
    ));
    let mut deleting = claim("deleting", json!({"storageClassName": "wffc-c"}), false);
    deleting.deleting = true;
    add_claim(deleting);
    let lost: ClaimView = serde_json::from_value(json!({
        "metadata": {"name": "lost", "namespace": "app"},
        "spec": {"volumeName": "pv-gone"}, "status": {"phase": "Lost"}
    }))
    .unwrap();
    add_claim(lost.to_claim());

    let volumes = [
        zonal_pv("pv-b", ZONE, &["us-east-1b"]),
        zonal_pv("pv-c", ZONE, &["us-east-1c"]),
        zonal_pv("pv-ebs", EBS_CSI_ZONE, &["us-east-1b"]),
        zonal_pv("pv-beta", labels::ZONE_BETA, &["us-east-1b"]),
        zonal_pv("pv-a-or-b", ZONE, &["us-east-1a", "us-east-1b"]),
        zonal_pv("pv-b-or-c", ZONE, &["us-east-1b", "us-east-1c"]),
        pv(
            "pv-a-or-c",
            json!({"nodeAffinity": {"required": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": ZONE, "operator": "In", "values": ["us-east-1a"]}]},
                {"matchExpressions": [{"key": ZONE, "operator": "In", "values": ["us-east-1c"]}]}]}}}),
        ),
        pv(
            "pv-local-host",
            json!({"local": {"path": "/mnt/disks/1"},
                   "nodeAffinity": {"required": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": labels::HOSTNAME, "operator": "In", "values": ["ip-10-0-0-1"]}]}]}}}),
        ),
        pv(
            "pv-local-zone",
            json!({"hostPath": {"path": "/data"},
                   "nodeAffinity": {"required": {"nodeSelectorTerms": [
                {"matchExpressions": [
                    {"key": labels::HOSTNAME, "operator": "In", "values": ["ip-10-0-0-1"]},
                    {"key": ZONE, "operator": "In", "values": ["us-east-1a"]}]}]}}}),
        ),
        pv(
            "pv-host",
            json!({"csi": {"driver": "example.com/node-disk", "volumeHandle": "d"},
                   "nodeAffinity": {"required": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": labels::HOSTNAME, "operator": "In", "values": ["ip-10-0-0-1"]}]}]}}}),
        ),
        pv(
            "pv-anywhere",
            json!({"nfs": {"server": "nfs.example.com", "path": "/"}}),
        ),
    ];
    for v in volumes {
        o.volumes.insert(v.name.clone(), v);
    }
    let wffc = json!({"volumeBindingMode": "WaitForFirstConsumer"});
    let with_topology = |key: &str, zones: &[&str], mode: &str| {
        json!({"volumeBindingMode": mode, "allowedTopologies": [
            {"matchLabelExpressions": [{"key": key, "values": zones}]}]})
    };
    for c in [
        class(
            "wffc-c",
            with_topology(ZONE, &["us-east-1c"], "WaitForFirstConsumer"),
        ),
        class(
            "wffc-ebs",
            with_topology(EBS_CSI_ZONE, &["us-east-1c"], "WaitForFirstConsumer"),
        ),
        class("wffc-any", wffc.clone()),
        class(
            "immediate-a",
            with_topology(ZONE, &["us-east-1a"], "Immediate"),
        ),
        class(
            "gp3",
            json!({"metadata": {"annotations": {DEFAULT_CLASS: "true"}},
                   "volumeBindingMode": "WaitForFirstConsumer",
                   "allowedTopologies": [{"matchLabelExpressions": [
                       {"key": EBS_CSI_ZONE, "values": ["us-east-1a", "us-east-1b"]}]}]}),
        ),
    ] {
        o.classes.insert(c.name.clone(), c);
    }
    o
}

#[test]
fn requirements_of_each_kind_of_volume() {
    let b = || vec![vec![zone(&["us-east-1b"])]];
    let c = || vec![vec![zone(&["us-east-1c"])]];
    let none = Vec::<Vec<Requirement>>::new;
    // (case, the pod's volumes, expected alternatives)
    let cases: Vec<(&str, Value, Vec<Vec<Requirement>>)> = vec![
        ("no volumes", json!([]), none()),
        (
            "emptyDir and configMap have no claim",
            json!([{"name": "tmp", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "c"}}]),
            none(),
        ),
        (
            "bound to a zonal volume",
            json!([pvc_volume("bound-b")]),
            b(),
        ),
        (
            "the EBS CSI key is the zone",
            json!([pvc_volume("bound-ebs")]),
            b(),
        ),
        (
            "the beta key is the zone",
            json!([pvc_volume("bound-beta")]),
            b(),
        ),
        (
            "a volume's terms are alternatives",
            json!([pvc_volume("bound-a-or-c")]),
            vec![vec![zone(&["us-east-1a"])], vec![zone(&["us-east-1c"])]],
        ),
        (
            "a local volume's hostname is dropped; nothing is left",
            json!([pvc_volume("bound-local-host")]),
            none(),
        ),
        (
            "a hostPath volume's hostname is dropped, its zone kept",
            json!([pvc_volume("bound-local-zone")]),
            vec![vec![zone(&["us-east-1a"])]],
        ),
        (
            "another volume's hostname is kept",
            json!([pvc_volume("bound-host")]),
            vec![vec![req(labels::HOSTNAME, Operator::In, &["ip-10-0-0-1"])]],
        ),
        (
            "a volume without node affinity",
            json!([pvc_volume("bound-anywhere")]),
            none(),
        ),
        (
            "WaitForFirstConsumer: the class's topologies",
            json!([pvc_volume("wffc-c")]),
            c(),
        ),
        (
            "WaitForFirstConsumer with the EBS CSI key",
            json!([pvc_volume("wffc-ebs")]),
            c(),
        ),
        (
            "WaitForFirstConsumer without topologies",
            json!([pvc_volume("wffc-any")]),
            none(),
        ),
        (
            "a claim naming no class gets the default class",
            json!([pvc_volume("default-class")]),
            vec![vec![zone(&["us-east-1a", "us-east-1b"])]],
        ),
        (
            "an ephemeral volume's claim is made from its template",
            json!([{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {
                "storageClassName": "wffc-c", "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}}}}}]),
            c(),
        ),
        (
            "an ephemeral volume's claim, once made, is read",
            json!([{"name": "ephemeral-bound", "ephemeral": {"volumeClaimTemplate": {"spec": {
                "storageClassName": "wffc-any"}}}}]),
            c(),
        ),
        (
            "two volumes: only the combinations that agree",
            json!([pvc_volume("bound-a-or-c"), pvc_volume("bound-b-or-c")]),
            vec![vec![
                zone(&["us-east-1c"]),
                zone(&["us-east-1b", "us-east-1c"]),
            ]],
        ),
        (
            "two volumes in one zone",
            json!([pvc_volume("bound-b"), pvc_volume("bound-a-or-b")]),
            vec![vec![
                zone(&["us-east-1b"]),
                zone(&["us-east-1a", "us-east-1b"]),
            ]],
        ),
    ];
    let o = objects();
    for (case, volumes, want) in cases {
        let got = o.requirements(&pod(volumes));
        assert_eq!(got.map(|r| r.alternatives), Ok(want), "{case}");
    }
}

#[test]
fn pods_that_must_wait_get_the_reason() {
    // (case, the pod's volumes, what the reason says)
    let cases = [
        (
            "a claim that does not exist",
            json!([pvc_volume("data")]),
            "its PersistentVolumeClaim app/data does not exist",
        ),
        (
            "a claim being deleted",
            json!([pvc_volume("deleting")]),
            "app/deleting is being deleted",
        ),
        (
            "a Lost claim",
            json!([pvc_volume("lost")]),
            "app/lost is Lost",
        ),
        (
            "a binding not yet complete",
            json!([pvc_volume("binding")]),
            "waits for the PersistentVolume controller to complete its binding to pv-b",
        ),
        (
            "bound to a volume that does not exist",
            json!([pvc_volume("bound-gone")]),
            "bound to PersistentVolume pv-gone, which does not exist",
        ),
        (
            "unbound, of an Immediate class",
            json!([pvc_volume("immediate")]),
            "StorageClass immediate-a binds immediately",
        ),
        (
            "unbound, of no class",
            json!([pvc_volume("no-class")]),
            "is unbound and has no StorageClass",
        ),
        (
            "unbound, of a class that does not exist",
            json!([pvc_volume("missing-class")]),
            "names StorageClass nope, which does not exist",
        ),
        (
            "volumes in different zones",
            json!([pvc_volume("bound-b"), pvc_volume("bound-c")]),
            "its volumes allow no node in common (pvc/bound-b: topology.kubernetes.io/zone In [us-east-1b]; pvc/bound-c: topology.kubernetes.io/zone In [us-east-1c])",
        ),
    ];
    let o = objects();
    for (case, volumes, want) in cases {
        match o.requirements(&pod(volumes)) {
            Err(reason) => assert!(reason.contains(want), "{case}: {reason}"),
            Ok(r) => panic!("{case}: planned with {r:?}"),
        }
    }
}

#[test]
fn manifests_are_read_leniently() {
    let mut o = objects();
    o.lenient = true;
    // (case, the pod's volumes, expected alternatives)
    let cases = [
        (
            "a claim not in the manifests",
            json!([pvc_volume("data")]),
            vec![],
        ),
        (
            "a claim naming its volume is taken as bound",
            json!([pvc_volume("binding")]),
            vec![vec![zone(&["us-east-1b"])]],
        ),
        (
            "a volume not in the manifests",
            json!([pvc_volume("bound-gone")]),
            vec![],
        ),
        (
            "an Immediate class: the volume it provisions honours its topologies",
            json!([pvc_volume("immediate")]),
            vec![vec![zone(&["us-east-1a"])]],
        ),
        (
            "a class not in the manifests",
            json!([pvc_volume("missing-class")]),
            vec![],
        ),
        ("no class", json!([pvc_volume("no-class")]), vec![]),
    ];
    for (case, volumes, want) in cases {
        let got = o.requirements(&pod(volumes));
        assert_eq!(got.map(|r| r.alternatives), Ok(want), "{case}");
    }
    // What would still never run is still refused.
    assert!(o.requirements(&pod(json!([pvc_volume("lost")]))).is_err());
}

fn pending(spec: Value) -> PendingPod {
    let mut doc = json!({
        "metadata": {"name": "web-0", "namespace": "app"},
        "spec": {"containers": [{"name": "c", "image": "x"}]}
    });
    for (k, v) in spec.as_object().unwrap() {
        doc["spec"][k] = v.clone();
    }
    PendingPod::from_pod(&serde_json::from_value(doc).unwrap())
}

fn affinity(terms: Value) -> Value {
    json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}})
}

fn volumes(terms: &[(&str, Vec<Vec<Requirement>>)]) -> VolumeRequirements {
    let volumes: Vec<VolumeTerms> = terms
        .iter()
        .map(|(name, alternatives)| VolumeTerms {
            volume: format!("pvc/{name}"),
            alternatives: alternatives.clone(),
        })
        .collect();
    VolumeRequirements {
        alternatives: combine(&volumes).unwrap(),
        volumes,
    }
}

fn all_zones() -> BTreeSet<String> {
    ["us-east-1a", "us-east-1b", "us-east-1c"]
        .map(String::from)
        .into()
}

/// (case, pod spec fields, volume requirements, expected node affinity, expected reason)
type AffinityCase = (
    &'static str,
    Value,
    VolumeRequirements,
    Vec<Vec<Requirement>>,
    Option<&'static str>,
);

#[test]
fn volume_requirements_are_anded_into_every_affinity_term() {
    let arch = |a: &str| req(labels::ARCH, Operator::In, &[a]);
    let b_or_c = || {
        volumes(&[(
            "data",
            vec![vec![zone(&["us-east-1b"])], vec![zone(&["us-east-1c"])]],
        )])
    };
    let cases: Vec<AffinityCase> = vec![
        (
            "no affinity: the volume's terms",
            json!({}),
            b_or_c(),
            vec![vec![zone(&["us-east-1b"])], vec![zone(&["us-east-1c"])]],
            None,
        ),
        (
            "every affinity term with every volume term",
            json!({"affinity": affinity(json!([
                {"matchExpressions": [{"key": labels::ARCH, "operator": "In", "values": ["amd64"]}]},
                {"matchExpressions": [{"key": labels::ARCH, "operator": "In", "values": ["arm64"]}]}]))}),
            b_or_c(),
            vec![
                vec![arch("amd64"), zone(&["us-east-1b"])],
                vec![arch("amd64"), zone(&["us-east-1c"])],
                vec![arch("arm64"), zone(&["us-east-1b"])],
                vec![arch("arm64"), zone(&["us-east-1c"])],
            ],
            None,
        ),
        (
            "terms the volume contradicts are dropped",
            json!({"affinity": affinity(json!([
                {"matchExpressions": [{"key": ZONE, "operator": "In", "values": ["us-east-1a", "us-east-1b"]}]},
                {"matchExpressions": [{"key": ZONE, "operator": "NotIn", "values": ["us-east-1b", "us-east-1c"]}]}]))}),
            volumes(&[("data", vec![vec![zone(&["us-east-1b"])]])]),
            vec![vec![
                zone(&["us-east-1a", "us-east-1b"]),
                zone(&["us-east-1b"]),
            ]],
            None,
        ),
        (
            "a node selector that rules out the volume's zone",
            json!({"nodeSelector": {ZONE: "us-east-1a"}}),
            volumes(&[("data", vec![vec![zone(&["us-east-1b"])]])]),
            vec![vec![zone(&["us-east-1b"])]],
            Some(
                "its node selector and affinity rule out every node its volumes allow (pvc/data: topology.kubernetes.io/zone In [us-east-1b])",
            ),
        ),
        (
            "no requirements: nothing changes",
            json!({"nodeSelector": {ZONE: "us-east-1a"}}),
            VolumeRequirements::default(),
            vec![],
            None,
        ),
    ];
    for (case, spec, vols, want, reason) in cases {
        let mut p = pending(spec);
        apply(&mut p, &vols, &all_zones());
        assert_eq!(p.constraints.node_affinity, want, "{case}");
        assert_eq!(p.invalid.as_deref(), reason, "{case}");
    }
}

#[test]
fn a_volume_where_no_capacity_can_be_had_is_the_reason() {
    let usable: BTreeSet<String> = ["us-east-1a".to_owned()].into();
    // (case, volume requirements, expected reason)
    let cases = [
        (
            "one zone",
            volumes(&[("data", vec![vec![zone(&["us-east-1z"])]])]),
            Some(
                "its volume pvc/data is in zone us-east-1z, where no instance type the pools allow is offered",
            ),
        ),
        (
            "several zones, none usable",
            volumes(&[(
                "data",
                vec![vec![zone(&["us-east-1y"])], vec![zone(&["us-east-1z"])]],
            )]),
            Some(
                "its volume pvc/data is limited to zones us-east-1y, us-east-1z, where no instance type the pools allow is offered",
            ),
        ),
        (
            "one of its zones usable",
            volumes(&[("data", vec![vec![zone(&["us-east-1a", "us-east-1z"])]])]),
            None,
        ),
        (
            "the second volume's zone",
            volumes(&[
                (
                    "logs",
                    vec![vec![req("example.com/rack", Operator::In, &["r1"])]],
                ),
                ("data", vec![vec![zone(&["us-east-1z"])]]),
            ]),
            Some(
                "its volume pvc/data is in zone us-east-1z, where no instance type the pools allow is offered",
            ),
        ),
        (
            "a volume that does not limit the zone",
            volumes(&[(
                "logs",
                vec![vec![req("example.com/rack", Operator::In, &["r1"])]],
            )]),
            None,
        ),
    ];
    for (case, vols, reason) in cases {
        let mut p = pending(json!({}));
        apply(&mut p, &vols, &usable);
        assert_eq!(p.invalid.as_deref(), reason, "{case}");
        assert!(!p.constraints.node_affinity.is_empty(), "{case}");
    }
    // A reason found while reading the pod comes first.
    let mut p = pending(json!({}));
    p.invalid = Some("earlier".into());
    apply(
        &mut p,
        &volumes(&[("data", vec![vec![zone(&["us-east-1z"])]])]),
        &usable,
    );
    assert_eq!(p.invalid.as_deref(), Some("earlier"));
}

#[test]
fn satisfiable_compares_values_per_key() {
    let cases = [
        (vec![zone(&["a", "b"]), zone(&["b", "c"])], true),
        (vec![zone(&["a"]), zone(&["b"])], false),
        (
            vec![zone(&["a", "b"]), req(ZONE, Operator::NotIn, &["a", "b"])],
            false,
        ),
        (
            vec![zone(&["a", "b"]), req(ZONE, Operator::NotIn, &["a"])],
            true,
        ),
        (
            vec![zone(&["a"]), req(ZONE, Operator::DoesNotExist, &[])],
            false,
        ),
        (
            vec![
                req("k", Operator::Exists, &[]),
                req("k", Operator::DoesNotExist, &[]),
            ],
            false,
        ),
        (
            vec![
                req("k", Operator::Gt, &["3"]),
                req("j", Operator::DoesNotExist, &[]),
            ],
            true,
        ),
        (vec![zone(&["a"]), req("other", Operator::In, &["x"])], true),
    ];
    for (reqs, want) in cases {
        assert_eq!(satisfiable(reqs.iter()), want, "{reqs:?}");
    }
}

#[test]
fn usable_zones_are_those_a_pool_offers_or_a_node_runs_in() {
    let offering = |zone: &str, ct: CapacityType| Offering {
        zone: zone.into(),
        capacity_type: ct,
        price: 0.1,
        price_estimated: false,
        available: true,
    };
    let mut m5 = InstanceType::example("m5.large");
    m5.offerings = vec![
        offering("us-east-1a", CapacityType::OnDemand),
        offering("us-east-1b", CapacityType::Spot),
    ];
    let mut c5 = InstanceType::example("c5.large");
    c5.offerings = vec![offering("us-east-1c", CapacityType::OnDemand)];
    c5.offerings.push(Offering {
        available: false,
        ..offering("us-east-1d", CapacityType::OnDemand)
    });
    let catalog = Catalog {
        region: "us-east-1".into(),
        source: CatalogSource::Embedded,
        types: vec![c5, m5],
    };
    let pool = |reqs: Vec<Requirement>| Pool {
        name: "p".into(),
        requirements: reqs,
        ..Pool::default()
    };
    let zones = |z: &[&str]| -> BTreeSet<String> { z.iter().map(|s| s.to_string()).collect() };
    let node = ExistingNode {
        name: "n".into(),
        labels: [(ZONE.to_owned(), "us-east-1e".to_owned())].into(),
        taints: vec![],
        allocatable: Default::default(),
        requested: Default::default(),
        pods: vec![],
        in_flight: false,
    };
    // (case, pools, nodes, expected zones)
    let cases = [
        (
            "any type, any offering (the unavailable one aside)",
            vec![pool(vec![])],
            vec![],
            zones(&["us-east-1a", "us-east-1b", "us-east-1c"]),
        ),
        (
            "on-demand only",
            vec![pool(vec![req(
                labels::CAPACITY_TYPE,
                Operator::In,
                &["on-demand"],
            )])],
            vec![],
            zones(&["us-east-1a", "us-east-1c"]),
        ),
        (
            "one family",
            vec![pool(vec![req(
                labels::INSTANCE_FAMILY,
                Operator::In,
                &["c5"],
            )])],
            vec![],
            zones(&["us-east-1c"]),
        ),
        (
            "a zone requirement, and a node elsewhere",
            vec![pool(vec![req(
                ZONE,
                Operator::NotIn,
                &["us-east-1a", "us-east-1c"],
            )])],
            vec![node.clone()],
            zones(&["us-east-1b", "us-east-1e"]),
        ),
        ("no pools", vec![], vec![], zones(&[])),
    ];
    for (case, pools, nodes, want) in cases {
        assert_eq!(usable_zones(&pools, &catalog, &nodes), want, "{case}");
    }
}

#[test]
fn pending_pod_reads_volumes_only_when_there_are_some() {
    let o = objects();
    let p = pending_pod(&pod(json!([pvc_volume("bound-ebs")])), &o, &all_zones());
    assert_eq!(
        p.constraints.node_affinity,
        vec![vec![zone(&["us-east-1b"])]]
    );
    assert!(p.invalid.is_none());
    let p = pending_pod(&pod(json!([pvc_volume("data")])), &o, &all_zones());
    assert_eq!(
        p.invalid.as_deref(),
        Some("its PersistentVolumeClaim app/data does not exist")
    );
    let p = pending_pod(&pod(json!([])), &o, &BTreeSet::new());
    assert!(p.invalid.is_none() && p.constraints.node_affinity.is_empty());
}

#[test]
fn views_read_what_topology_needs() {
    let c = claim(
        "x",
        json!({"storageClassName": "gp3", "volumeName": ""}),
        false,
    );
    assert_eq!(c.storage_class.as_deref(), Some("gp3"));
    assert_eq!(c.volume_name, None, "an empty volumeName is unbound");
    assert!(!c.bound);
    let bad: VolumeView = serde_json::from_value(json!({
        "metadata": {"name": "v"},
        "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": ZONE, "operator": "Near", "values": ["a"]}]}]}}}
    }))
    .unwrap();
    let e = bad.to_volume().unwrap_err();
    assert_eq!(
        e.path,
        "spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].operator"
    );
    assert!(e.message.contains("\"Near\""), "{e}");
    let bad: StorageClassView =
        serde_json::from_value(json!({"metadata": {"name": "s"}, "volumeBindingMode": "Later"}))
            .unwrap();
    assert_eq!(bad.to_class().unwrap_err().path, "volumeBindingMode");
    let beta_default = class(
        "old",
        json!({"metadata": {"annotations": {"storageclass.beta.kubernetes.io/is-default-class": "true"}}}),
    );
    assert!(beta_default.is_default && !beta_default.wait_for_first_consumer);
}
