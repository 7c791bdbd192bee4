use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn split(base: u32, percent: u32) -> Split {
    Split {
        on_demand_base: base,
        spot_percent: percent,
        spot_fallback: false,
    }
}

fn counts(on_demand: u32, spot: u32) -> Counts {
    Counts { on_demand, spot }
}

#[test]
fn desired_fills_the_base_then_rounds_the_on_demand_share_up() {
    let s = split(3, 80);
    let desired: Vec<u32> = (0..=10).map(|n| s.desired_on_demand(n)).collect();
    // 4 pods: base 3 + ceil(1 * 20 %) = 4; 8 pods: 3 + ceil(5 * 20 %) = 4; 9 pods: 3 + ceil(1.2) = 5.
    assert_eq!(desired, [0, 1, 2, 3, 4, 4, 4, 4, 4, 5, 5]);
    assert_eq!(split(0, 100).desired_on_demand(7), 0);
    assert_eq!(split(0, 0).desired_on_demand(7), 7);
    assert_eq!(split(1, 100).desired(20), counts(1, 19));
    assert_eq!(split(2, 50).desired(5), counts(4, 1));
}

#[test]
fn choices_from_nothing_follow_the_desired_split_exactly() {
    let s = split(1, 100);
    let mut c = Counts::default();
    let mut chosen = Vec::new();
    for _ in 0..4 {
        let ct = s.choose(c);
        c.add(ct);
        chosen.push(ct.as_str());
    }
    assert_eq!(chosen, ["on-demand", "spot", "spot", "spot"]);
}

#[test]
fn a_drifted_workload_is_brought_back_by_its_next_pods() {
    // Scale-down took the on-demand base away: the next pods refill it first.
    let s = split(3, 80);
    assert_eq!(s.choose(counts(0, 5)), CapacityType::OnDemand);
    assert_eq!(s.choose(counts(4, 5)), CapacityType::OnDemand);
    // 10 pods want 3 + ceil(7 * 20 %) = 5 on-demand; the 11th pod wants no more.
    assert_eq!(s.choose(counts(5, 5)), CapacityType::Spot);
    // Too much on-demand: every new pod goes to spot until the share holds.
    assert_eq!(s.choose(counts(9, 0)), CapacityType::Spot);
}

proptest! {
    /// From no pods, every prefix of the choices is exactly the desired split.
    #[test]
    fn prefix_of_choices_is_the_desired_split(base in 0u32..20, percent in 0u32..=100, n in 1u32..200) {
        let s = split(base, percent);
        let mut c = Counts::default();
        for _ in 0..n {
            c.add(s.choose(c));
            prop_assert_eq!(c, s.desired(c.total()));
        }
    }

    /// From any counts, the on-demand error never grows and, once zero, stays zero; a shortfall
    /// of on-demand shrinks whenever the share above the base leaves room for it.
    #[test]
    fn choices_converge_from_any_counts(
        base in 0u32..20, percent in 0u32..=100, od in 0u32..50, spot in 0u32..50, n in 1u32..100,
    ) {
        let s = split(base, percent);
        let mut c = counts(od, spot);
        let error = |c: Counts| i64::from(c.on_demand) - i64::from(s.desired_on_demand(c.total()));
        for _ in 0..n {
            let before = error(c);
            c.add(s.choose(c));
            let after = error(c);
            prop_assert!(after.abs() <= before.abs(), "{before} -> {after}");
            if before == 0 {
                prop_assert_eq!(after, 0);
            }
        }
        // Some spot share: a shortfall is made up within the pods it takes.
        if percent > 0 && percent < 100 && error(c) < 0 {
            let mut more = 0;
            while error(c) < 0 {
                c.add(s.choose(c));
                more += 1;
                prop_assert!(more <= 100 * (od + spot + n + 1), "no convergence");
            }
        }
    }
}

#[test]
fn places_follow_the_order_the_split_fills() {
    let s = split(3, 80);
    // Order from nothing: od od od od spot spot spot spot od(9th pod) ...
    let ods: Vec<_> = (1..=5)
        .map(|r| s.place(CapacityType::OnDemand, r))
        .collect();
    assert_eq!(ods, [Some(0), Some(1), Some(2), Some(3), Some(8)]);
    let spots: Vec<_> = (1..=4).map(|r| s.place(CapacityType::Spot, r)).collect();
    assert_eq!(spots, [Some(4), Some(5), Some(6), Some(7)]);
    // What the split never wants: spot at 0 %, on-demand beyond the base at 100 %.
    assert_eq!(split(2, 0).place(CapacityType::Spot, 1), None);
    assert_eq!(split(2, 100).place(CapacityType::OnDemand, 3), None);
    assert_eq!(
        split(2, 100).deletion_cost(counts(2, 0), CapacityType::OnDemand),
        -2_000_000_000
    );
    assert_eq!(s.deletion_cost(counts(0, 0), CapacityType::OnDemand), 0);
    assert_eq!(s.deletion_cost(counts(4, 3), CapacityType::Spot), -7);
}

proptest! {
    /// Pods chosen from nothing and removed lowest deletion cost first (as a ReplicaSet scales
    /// down) leave the split of the smaller workload at every size.
    #[test]
    fn scale_down_by_deletion_cost_keeps_the_split(base in 0u32..10, percent in 0u32..=100, n in 1u32..120) {
        let s = split(base, percent);
        let mut c = Counts::default();
        let mut pods = Vec::new();
        for _ in 0..n {
            let ct = s.choose(c);
            pods.push((s.deletion_cost(c, ct), ct));
            c.add(ct);
        }
        pods.sort_by_key(|(cost, _)| std::cmp::Reverse(*cost));
        for keep in 0..=n as usize {
            let mut left = Counts::default();
            for (_, ct) in &pods[..keep] {
                left.add(*ct);
            }
            prop_assert_eq!(left, s.desired(keep as u32));
        }
    }
}

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn annotations_override_the_rule_field_by_field() {
    let rule = Some(split(2, 50));
    assert_eq!(Split::for_pod(rule, None), Ok(rule));
    assert_eq!(Split::for_pod(None, None), Ok(None));
    let a = annotations(&[(ON_DEMAND_BASE, "3")]);
    assert_eq!(Split::for_pod(rule, Some(&a)), Ok(Some(split(3, 50))));
    assert_eq!(Split::for_pod(None, Some(&a)), Ok(Some(split(3, 100))));
    let a = annotations(&[(SPOT_PERCENT, " 80 ")]);
    assert_eq!(Split::for_pod(None, Some(&a)), Ok(Some(split(0, 80))));
    let a = annotations(&[("other", "1")]);
    assert_eq!(Split::for_pod(None, Some(&a)), Ok(None));
}

#[test]
fn bad_annotations_are_named_with_their_range() {
    for (key, value) in [
        (SPOT_PERCENT, "101"),
        (SPOT_PERCENT, "80%"),
        (ON_DEMAND_BASE, "-1"),
        (ON_DEMAND_BASE, "three"),
    ] {
        let a = annotations(&[(key, value)]);
        let err = Split::for_pod(None, Some(&a)).unwrap_err();
        assert!(
            err.starts_with(&format!(
                "annotation {key}={value:?} is not a whole number from 0 to"
            )),
            "{err}"
        );
    }
}

fn meta(value: serde_json::Value) -> ObjectMeta {
    serde_json::from_value(value).unwrap()
}

#[test]
fn workload_is_the_deployment_behind_its_replicaset() {
    let owned = |kind: &str, api: &str, name: &str, labels: serde_json::Value| {
        meta(json!({
            "labels": labels,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Other", "name": "x", "uid": "0"},
                {"apiVersion": api, "kind": kind, "name": name, "uid": "1", "controller": true},
            ]
        }))
    };
    let hash = json!({"pod-template-hash": "5d8f9c7b6", "app": "web"});
    assert_eq!(
        workload_of(&owned(
            "ReplicaSet",
            "apps/v1",
            "web-5d8f9c7b6",
            hash.clone()
        ))
        .as_deref(),
        Some("Deployment/web")
    );
    // A ReplicaSet of its own (no hash label, or a name the hash does not end).
    assert_eq!(
        workload_of(&owned("ReplicaSet", "apps/v1", "web", json!({}))).as_deref(),
        Some("ReplicaSet/web")
    );
    assert_eq!(
        workload_of(&owned("ReplicaSet", "apps/v1", "web-other", hash)).as_deref(),
        Some("ReplicaSet/web-other")
    );
    assert_eq!(
        workload_of(&owned("StatefulSet", "apps/v1", "db", json!({}))).as_deref(),
        Some("StatefulSet/db")
    );
    // Owners that are not the controller do not make a workload.
    let orphan = meta(
        json!({"ownerReferences": [{"apiVersion": "v1", "kind": "Other", "name": "x", "uid": "0"}]}),
    );
    assert_eq!(workload_of(&orphan), None);
    assert_eq!(workload_of(&ObjectMeta::default()), None);
}

/// A watch view from explicit facts.
#[derive(Default)]
struct Watch {
    counts: BTreeMap<String, Counts>,
    seen: BTreeSet<String>,
    gone: BTreeSet<String>,
}

impl WorkloadWatchView for Watch {
    fn counts(&self, workload: &str) -> Counts {
        self.counts.get(workload).copied().unwrap_or_default()
    }
    fn is_seen(&self, id: &str) -> bool {
        self.seen.contains(id)
    }
    fn is_gone(&self, id: &str) -> bool {
        self.gone.contains(id)
    }
}

fn types(choices: Vec<Choice>) -> Vec<CapacityType> {
    choices.into_iter().map(|c| c.capacity_type).collect()
}

fn request(id: &str, workload: &str, s: Split) -> SplitRequest {
    SplitRequest {
        id: id.into(),
        workload: workload.into(),
        split: s,
        dry_run: false,
    }
}

#[test]
fn a_batch_is_chosen_in_order_per_workload_and_recorded() {
    let mut ledger = SplitLedger::default();
    let watch = Watch::default();
    let s = split(1, 100);
    let batch = [
        request("a", "Deployment/web", s),
        request("b", "Deployment/web", s),
        request("c", "Deployment/api", s),
        request("d", "Deployment/web", s),
    ];
    let chosen = types(ledger.choose(&batch, &watch, 100));
    assert_eq!(
        chosen,
        [
            CapacityType::OnDemand,
            CapacityType::Spot,
            CapacityType::OnDemand,
            CapacityType::Spot
        ]
    );
    assert_eq!(ledger.entries.len(), 4);
    assert_eq!(ledger.counts("Deployment/web", &watch), counts(1, 2));
    // A retried request gets its first answer and counts once.
    let again = types(ledger.choose(&[request("b", "Deployment/web", s)], &watch, 101));
    assert_eq!(again, [CapacityType::Spot]);
    assert_eq!(ledger.counts("Deployment/web", &watch), counts(1, 2));
}

#[test]
fn dry_runs_are_answered_but_never_counted() {
    let mut ledger = SplitLedger::default();
    let watch = Watch::default();
    let s = split(1, 100);
    let mut dry = request("x", "Deployment/web", s);
    dry.dry_run = true;
    assert_eq!(
        types(ledger.choose(&[dry], &watch, 1)),
        [CapacityType::OnDemand]
    );
    assert!(ledger.entries.is_empty());
    assert_eq!(
        types(ledger.choose(&[request("y", "Deployment/web", s)], &watch, 1)),
        [CapacityType::OnDemand]
    );
}

#[test]
fn pods_the_watch_sees_count_once_and_gone_or_old_choices_are_dropped() {
    let mut ledger = SplitLedger::default();
    let s = split(0, 50);
    let mut watch = Watch::default();
    ledger.choose(
        &[
            request("a", "Deployment/web", s),
            request("b", "Deployment/web", s),
        ],
        &watch,
        100,
    );
    // The watch now sees pod a (on-demand): it counts once, from the watch.
    watch.counts.insert("Deployment/web".into(), counts(1, 0));
    watch.seen.insert("a".into());
    assert_eq!(ledger.counts("Deployment/web", &watch), counts(1, 1));
    // Pod b was created and deleted again: its choice no longer counts and leaves the ledger.
    watch.gone.insert("b".into());
    assert_eq!(ledger.counts("Deployment/web", &watch), counts(1, 0));
    assert!(ledger.reconcile(&watch, 101, 90));
    assert_eq!(ledger.entries.keys().collect::<Vec<_>>(), ["a"]);
    assert!(!ledger.reconcile(&watch, 190, 90));
    assert!(ledger.reconcile(&watch, 191, 90));
    assert!(ledger.entries.is_empty());
}

#[test]
fn ledger_reads_as_json_with_kebab_case_capacity_types() {
    let mut ledger = SplitLedger::default();
    ledger.choose(
        &[request("a", "Deployment/web", split(1, 100))],
        &Watch::default(),
        7,
    );
    let text = serde_json::to_string(&ledger).unwrap();
    assert_eq!(
        text,
        r#"{"entries":{"a":{"workload":"Deployment/web","capacityType":"on-demand","deletionCost":0,"steeredAt":7}}}"#
    );
    assert_eq!(serde_json::from_str::<SplitLedger>(&text).unwrap(), ledger);
}

#[test]
fn spot_fallback_comes_from_the_rule_or_the_annotation() {
    let mut rule = split(1, 80);
    rule.spot_fallback = true;
    let off = annotations(&[(SPOT_FALLBACK, "false")]);
    assert_eq!(
        Split::for_pod(Some(rule), Some(&off)),
        Ok(Some(split(1, 80)))
    );
    // Alone it asks for a split: base 0, all spot, falling back.
    let on = annotations(&[(SPOT_FALLBACK, "true")]);
    let mut all_spot = split(0, 100);
    all_spot.spot_fallback = true;
    assert_eq!(Split::for_pod(None, Some(&on)), Ok(Some(all_spot)));
    assert_eq!(
        all_spot.to_string(),
        "0 on-demand, then 100% spot, falling back to on-demand"
    );
    let bad = annotations(&[(SPOT_FALLBACK, "yes")]);
    assert_eq!(
        Split::for_pod(None, Some(&bad)),
        Err(
            "annotation nodewright.io/spot-fallback=\"yes\" is neither \"true\" nor \"false\""
                .to_owned()
        )
    );
}

#[test]
fn a_pod_counts_by_its_nodeselector_else_by_the_choice_nodewright_wrote() {
    let selector = annotations(&[(CAPACITY_TYPE_KEY, "on-demand")]);
    let chosen = annotations(&[(CHOSEN_CAPACITY_TYPE, "spot")]);
    assert_eq!(
        chosen_capacity_type(Some(&selector), Some(&chosen)),
        Some(CapacityType::OnDemand)
    );
    assert_eq!(
        chosen_capacity_type(None, Some(&chosen)),
        Some(CapacityType::Spot)
    );
    assert_eq!(chosen_capacity_type(None, None), None);
}

/// The patch applied to `pod` as the apiserver would.
fn patched(pod: serde_json::Value, split: Split, ct: CapacityType) -> serde_json::Value {
    let view: PodView = serde_json::from_value(pod.clone()).unwrap();
    let exists = view
        .spec
        .as_ref()
        .is_some_and(|s| s.node_selector.is_some());
    let ops = choice_patch(
        &view,
        exists,
        split,
        Choice {
            capacity_type: ct,
            deletion_cost: -1,
        },
        "uid-1",
    );
    let mut doc = pod;
    json_patch::patch(&mut doc, &ops).unwrap();
    doc
}

#[test]
fn a_spot_choice_that_may_fall_back_prefers_spot_instead_of_requiring_it() {
    let mut soft = split(0, 100);
    soft.spot_fallback = true;
    let term = json!({"weight": 100, "preference": {"matchExpressions": [
        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]}]}});
    let own = json!({"weight": 5, "preference": {"matchExpressions": [
        {"key": "zone", "operator": "In", "values": ["a"]}]}});
    // Every shape of the pod's affinity: absent, without nodeAffinity, without the preferred
    // list, with a list of its own (kept, ours appended).
    for (affinity, expected) in [
        (None, json!([term])),
        (Some(json!({"podAntiAffinity": {}})), json!([term])),
        (Some(json!({"nodeAffinity": {}})), json!([term])),
        (
            Some(
                json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [own]}}),
            ),
            json!([own, term]),
        ),
    ] {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"nodeSelector": {"pool": "a"}}});
        if let Some(a) = &affinity {
            pod["spec"]["affinity"] = a.clone();
        }
        let doc = patched(pod, soft, CapacityType::Spot);
        assert_eq!(
            doc["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"],
            expected,
            "{affinity:?}"
        );
        assert_eq!(
            doc["spec"]["nodeSelector"],
            json!({"pool": "a"}),
            "no capacity type required"
        );
        let a = &doc["metadata"]["annotations"];
        assert_eq!(a[CHOSEN_CAPACITY_TYPE], "spot");
        assert_eq!(a[SPOT_FALLBACK], "true");
        assert_eq!(a[SPLIT_ID], "uid-1");
    }
    // On-demand choices, and spot without fallback, are required by the nodeSelector.
    for (s, ct) in [
        (soft, CapacityType::OnDemand),
        (split(0, 100), CapacityType::Spot),
    ] {
        let doc = patched(json!({"metadata": {"name": "p"}, "spec": {}}), s, ct);
        assert_eq!(doc["spec"]["nodeSelector"][CAPACITY_TYPE_KEY], ct.as_str());
        assert!(doc["spec"].get("affinity").is_none());
        assert_eq!(
            doc["metadata"]["annotations"][CHOSEN_CAPACITY_TYPE],
            ct.as_str()
        );
    }
}
