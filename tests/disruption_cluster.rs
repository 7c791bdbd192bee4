//! How nodes leave, end to end on the real control plane (see `workshop_e2e.rs` for the pieces:
//! the real apiserver, controller-manager with the disruption and garbage-collector
//! controllers, kube-scheduler with nodewright's extender, moto for EC2, the kubelet stand-in
//! with kwok for Nodes and their pods, and the `nodewright serve` binary under the chart's RBAC).
//!
//! - an empty node of a `WhenEmpty` pool goes once it has been empty for `consolidateAfter`;
//! - deleting a NodeClaim drains its node through the Eviction API before the instance is
//!   terminated, and a PodDisruptionBudget holds the drain until it is relaxed;
//! - the pool's `terminationGracePeriod` ends a drain held by a do-not-disrupt pod;
//! - a do-not-disrupt node is never removed as empty, and a budget of one removes one empty
//!   node at a time;
//! - deleting the Node drains it (30 pods) and removes its claim and instance.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::controlplane;
use common::served::{
    claim_instance, claim_name, claim_node, deleting, deployment, ended, finish, instance_state,
    metric_sum, nodeclaim_resource, pod_spec, pool_config, start_clean,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use serde_json::{Value, json};

const FINALIZER: &str = "nodewright.io/termination";
const DISRUPTED: &str = "karpenter.sh/disrupted";
const DO_NOT_DISRUPT: &str = "karpenter.sh/do-not-disrupt";

/// One test at a time on this binary's control plane (Nodes and NodeClaims are cluster-wide).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn condition(claim: &Value, type_: &str) -> Option<Value> {
    claim["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

fn has_finalizer(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.finalizers.iter().flatten().any(|f| f == FINALIZER)
}

fn tainted_disrupted(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .any(|t| t.key == DISRUPTED && t.effect == "NoSchedule")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_node_goes_after_consolidate_after() {
    let _serial = SERIAL.lock().await;
    let plane = controlplane::shared();
    let world = start_clean(plane, "disrupt", |ns| {
        pool_config(
            ns,
            "emptied",
            "c5.large, c5.xlarge",
            "{consolidationPolicy: WhenEmpty, consolidateAfter: 10s}",
            "",
        )
    })
    .await;
    Api::<Deployment>::namespaced(world.client.clone(), &world.namespace)
        .create(
            &PostParams::default(),
            &deployment("app", 2, "emptied", "200m"),
        )
        .await
        .unwrap();
    let claims = world.wait_running("app", 2).await;
    assert_eq!(claims.len(), 1, "{claims:?}");
    let (claim, node, instance) = (
        claim_name(&claims[0]),
        claim_node(&claims[0]),
        claim_instance(&claims[0]),
    );
    world
        .wait_until("the Node's finalizer", Duration::from_secs(30), || async {
            world
                .node(&node)
                .await
                .is_some_and(|n| has_finalizer(&n.metadata))
        })
        .await;
    let c = world.claim(&claim).await.unwrap();
    assert!(
        c["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == FINALIZER)),
        "{c}"
    );

    world.scale("app", 0).await;
    world
        .wait_until("the pods gone", Duration::from_secs(60), || async {
            world.pods_of("app").await.is_empty()
        })
        .await;
    let emptied = Instant::now();
    // Not before consolidateAfter: the claim is not even deleted in the first 9 s.
    let mut terminated = None;
    let deadline = emptied + Duration::from_secs(120);
    while Instant::now() < deadline {
        let state = instance_state(&world.ec2, &instance).await;
        if ended(&state) {
            terminated = Some(emptied.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let Some(after) = terminated else {
        let metrics = world.metrics().await;
        let disruption: Vec<&str> = metrics
            .lines()
            .filter(|l| l.contains("disrupt") || l.contains("budget") || l.contains("terminat"))
            .collect();
        panic!(
            "instance {instance} never terminated\n{}\n--- metrics\n{}\n--- claims\n{:#?}",
            world.logs(),
            disruption.join("\n"),
            world.claims().await
        );
    };
    eprintln!("emptied → terminated: {:.1} s", after.as_secs_f64());
    assert!(
        after >= Duration::from_secs(10),
        "terminated {after:?} after the node emptied, before consolidateAfter\n{}",
        world.logs()
    );
    assert!(
        after < Duration::from_secs(40),
        "terminated only {after:?} after the node emptied\n{}",
        world.logs()
    );
    world
        .wait_until("the claim gone", Duration::from_secs(60), || async {
            world.claim(&claim).await.is_none()
        })
        .await;
    world
        .wait_until("the Node gone", Duration::from_secs(60), || async {
            world.node(&node).await.is_none()
        })
        .await;
    let metrics = world.metrics().await;
    let removed = metric_sum(
        &metrics,
        "nodewright_nodes_terminated_total",
        &["reason=\"empty\""],
    ) + metric_sum(
        &metrics,
        "nodewright_nodes_terminated_total",
        &["reason=\"Empty\""],
    );
    eprintln!(
        "nodes_terminated_total lines: {:?}",
        metrics
            .lines()
            .filter(|l| l.starts_with("nodewright_nodes_terminated_total"))
            .collect::<Vec<_>>()
    );
    assert!(removed >= 1.0, "{metrics}");
    finish(world, plane).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_nodeclaim_drains_before_terminating_and_a_pdb_blocks_until_relaxed() {
    let _serial = SERIAL.lock().await;
    let plane = controlplane::shared();
    let world = start_clean(plane, "disrupt", |ns| {
        pool_config(
            ns,
            "drained",
            "c5.4xlarge",
            "{consolidationPolicy: WhenEmpty, consolidateAfter: Never}",
            "",
        )
    })
    .await;
    let ns = world.namespace.clone();
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(world.client.clone(), &ns);
    pdbs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "app"},
            "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "app"}}},
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    Api::<Deployment>::namespaced(world.client.clone(), &ns)
        .create(
            &PostParams::default(),
            &deployment("app", 30, "drained", "100m"),
        )
        .await
        .unwrap();
    let claims = world.wait_running("app", 30).await;
    assert_eq!(claims.len(), 1, "{claims:?}\n{}", world.logs());
    let (claim, node, instance) = (
        claim_name(&claims[0]),
        claim_node(&claims[0]),
        claim_instance(&claims[0]),
    );
    // The PDB's status is current (else evictions are refused for that reason).
    world
        .wait_until("the PDB observed", Duration::from_secs(30), || async {
            pdbs.get("app")
                .await
                .ok()
                .and_then(|p| p.status)
                .is_some_and(|s| {
                    s.expected_pods == Some(30)
                        && s.current_healthy == Some(30)
                        && s.disruptions_allowed == Some(0)
                })
        })
        .await;

    Api::<DynamicObject>::all_with(world.client.clone(), &nodeclaim_resource())
        .delete(&claim, &DeleteParams::default())
        .await
        .unwrap();
    let deleted = Instant::now();
    world
        .wait_until(
            "the node tainted disrupted",
            Duration::from_secs(15),
            || async {
                world
                    .node(&node)
                    .await
                    .is_some_and(|n| tainted_disrupted(&n))
            },
        )
        .await;
    // For 8 s the PDB holds every pod: the instance runs, the claim stays.
    while deleted.elapsed() < Duration::from_secs(8) {
        let c = world.claim(&claim).await.expect("the claim is still there");
        assert!(deleting(&c), "{c}");
        let state = instance_state(&world.ec2, &instance).await;
        assert_eq!(state, "running", "{}", world.logs());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let on_node = world
        .pods_of("app")
        .await
        .into_iter()
        .filter(|(_, n, _, terminating)| n.as_deref() == Some(node.as_str()) && !terminating)
        .count();
    assert_eq!(on_node, 30, "{}", world.logs());
    let metrics = world.metrics().await;
    eprintln!(
        "8 s into the PDB-blocked drain: {:?}",
        metrics
            .lines()
            .filter(|l| l.starts_with("nodewright_evictions_total")
                || l.starts_with("nodewright_draining_nodes"))
            .collect::<Vec<_>>()
    );
    let c = world.claim(&claim).await.unwrap();
    assert_eq!(c["status"]["phase"], "Terminating", "{c}");
    assert_eq!(c["status"]["disruptionReason"], "Deleted", "{c}");
    let drained = condition(&c, "Drained")
        .unwrap_or_else(|| panic!("no Drained condition: {c}\n{}", world.logs()));
    assert_eq!(drained["status"], "False", "{drained}");
    assert!(
        drained["message"]
            .as_str()
            .is_some_and(|m| m.contains("PodDisruptionBudget")),
        "{drained}"
    );
    let blocked = metric_sum(&world.metrics().await, "nodewright_evictions_total", &[]);
    eprintln!("evictions_total (all outcomes) while blocked: {blocked}");

    pdbs.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"maxUnavailable": "100%"}})),
    )
    .await
    .unwrap();
    let relaxed = Instant::now();
    // Until the instance ends, whenever pods are on the node, it was running before we looked.
    let mut terminated = None;
    let mut samples = 0;
    while relaxed.elapsed() < Duration::from_secs(120) {
        let state = instance_state(&world.ec2, &instance).await;
        let on_node: Vec<String> = world
            .pods_of("app")
            .await
            .into_iter()
            .filter(|(_, n, _, _)| n.as_deref() == Some(node.as_str()))
            .map(|(p, ..)| p)
            .collect();
        samples += 1;
        assert!(
            state == "running" || on_node.is_empty(),
            "instance {state} while {} pods were still on the node: {on_node:?}\n{}",
            on_node.len(),
            world.logs()
        );
        if ended(&state) {
            terminated = Some(relaxed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let Some(drain) = terminated else {
        panic!("instance {instance} never terminated\n{}", world.logs());
    };
    eprintln!(
        "PDB relaxed → instance terminated (30-pod node): {:.1} s ({samples} samples; {:.1} s after the claim was deleted)",
        drain.as_secs_f64(),
        deleted.elapsed().as_secs_f64()
    );
    world
        .wait_until("the claim gone", Duration::from_secs(60), || async {
            world.claim(&claim).await.is_none()
        })
        .await;
    world
        .wait_until("the Node gone", Duration::from_secs(60), || async {
            world.node(&node).await.is_none()
        })
        .await;
    let metrics = world.metrics().await;
    eprintln!(
        "evictions: {:?}",
        metrics
            .lines()
            .filter(|l| l.starts_with("nodewright_evictions_total"))
            .collect::<Vec<_>>()
    );
    assert!(
        metric_sum(&metrics, "nodewright_evictions_total", &[]) >= 30.0,
        "{metrics}"
    );
    finish(world, plane).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn termination_grace_period_forces_a_do_not_disrupt_pod() {
    let _serial = SERIAL.lock().await;
    let plane = controlplane::shared();
    let world = start_clean(plane, "disrupt", |ns| {
        pool_config(
            ns,
            "graceful",
            "c5.large",
            "{consolidationPolicy: WhenEmpty, consolidateAfter: Never}",
            "\n      terminationGracePeriod: 20s",
        )
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(world.client.clone(), &world.namespace);
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "stuck", "labels": {"app": "stuck"},
                         "annotations": {DO_NOT_DISRUPT: "true"}},
            "spec": pod_spec("graceful", "200m", json!({"terminationGracePeriodSeconds": 5})),
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    let claims = world.wait_running("stuck", 1).await;
    assert_eq!(claims.len(), 1, "{claims:?}");
    let (claim, node, instance) = (
        claim_name(&claims[0]),
        claim_node(&claims[0]),
        claim_instance(&claims[0]),
    );
    Api::<DynamicObject>::all_with(world.client.clone(), &nodeclaim_resource())
        .delete(&claim, &DeleteParams::default())
        .await
        .unwrap();
    let deleted = Instant::now();
    let mut checked_pod = false;
    let mut terminated = None;
    while deleted.elapsed() < Duration::from_secs(60) {
        let state = instance_state(&world.ec2, &instance).await;
        if ended(&state) {
            terminated = Some(deleted.elapsed());
            break;
        }
        if !checked_pod && deleted.elapsed() >= Duration::from_secs(8) {
            let pod = pods.get_opt("stuck").await.unwrap();
            let pod = pod.unwrap_or_else(|| panic!("the pod is gone at 8 s\n{}", world.logs()));
            assert!(
                pod.metadata.deletion_timestamp.is_none(),
                "the pod was deleted before the deadline\n{}",
                world.logs()
            );
            let c = world.claim(&claim).await.unwrap();
            let drained = condition(&c, "Drained");
            eprintln!("Drained at 8 s: {drained:?}");
            checked_pod = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let Some(after) = terminated else {
        panic!("instance {instance} never terminated\n{}", world.logs());
    };
    eprintln!(
        "claim deleted → instance terminated (terminationGracePeriod 20s, pod grace 5s): {:.1} s",
        after.as_secs_f64()
    );
    assert!(
        checked_pod,
        "terminated at {after:?}, before 8 s\n{}",
        world.logs()
    );
    assert!(
        after >= Duration::from_secs(13),
        "{after:?}\n{}",
        world.logs()
    );
    assert!(
        after < Duration::from_secs(35),
        "{after:?}\n{}",
        world.logs()
    );
    world
        .wait_until("the claim gone", Duration::from_secs(60), || async {
            world.claim(&claim).await.is_none()
        })
        .await;
    world
        .wait_until("the Node gone", Duration::from_secs(60), || async {
            world.node(&node).await.is_none()
        })
        .await;
    let metrics = world.metrics().await;
    assert!(
        metric_sum(
            &metrics,
            "nodewright_evictions_total",
            &["outcome=\"forced\""]
        ) >= 1.0,
        "{metrics}"
    );
    finish(world, plane).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_not_disrupt_holds_an_empty_node_and_a_budget_of_one_disrupts_one_at_a_time() {
    let _serial = SERIAL.lock().await;
    let plane = controlplane::shared();
    let world = start_clean(plane, "disrupt", |ns| {
        pool_config(
            ns,
            "budgeted",
            "c5.large",
            r#"{consolidationPolicy: WhenEmpty, consolidateAfter: 5s, budgets: [{nodes: "1"}]}"#,
            "",
        )
    })
    .await;
    // 1200m each: one per c5.large.
    Api::<Deployment>::namespaced(world.client.clone(), &world.namespace)
        .create(
            &PostParams::default(),
            &deployment("app", 3, "budgeted", "1200m"),
        )
        .await
        .unwrap();
    let claims = world.wait_running("app", 3).await;
    assert_eq!(claims.len(), 3, "{claims:?}\n{}", world.logs());
    let kept = claims[0].clone();
    let (kept_claim, kept_node) = (claim_name(&kept), claim_node(&kept));
    let others: Vec<(String, String)> = claims[1..]
        .iter()
        .map(|c| (claim_name(c), claim_instance(c)))
        .collect();
    let nodes: Api<Node> = Api::all(world.client.clone());
    nodes
        .patch(
            &kept_node,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {DO_NOT_DISRUPT: "true"}}})),
        )
        .await
        .unwrap();

    world.scale("app", 0).await;
    let scaled = Instant::now();
    let mut max_deleting = 0;
    let mut others_gone = None;
    while scaled.elapsed() < Duration::from_secs(120) {
        let claims = world.claims().await;
        let now_deleting = claims.iter().filter(|c| deleting(c)).count();
        max_deleting = max_deleting.max(now_deleting);
        assert!(
            now_deleting <= 1,
            "{now_deleting} claims deleting at once: {claims:#?}\n{}",
            world.logs()
        );
        let names: HashSet<String> = claims.iter().map(claim_name).collect();
        assert!(
            names.contains(&kept_claim),
            "the do-not-disrupt node's claim went\n{}",
            world.logs()
        );
        if others.iter().all(|(c, _)| !names.contains(c)) {
            others_gone = Some(scaled.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let Some(gone) = others_gone else {
        panic!("the two empty claims never went\n{}", world.logs());
    };
    eprintln!(
        "scaled to 0 → both un-annotated claims gone (budget 1): {:.1} s",
        gone.as_secs_f64()
    );
    assert_eq!(max_deleting, 1);
    for (_, instance) in &others {
        let state = instance_state(&world.ec2, instance).await;
        assert!(ended(&state), "{instance}: {state}");
    }
    // The annotated node stays, however long it is empty.
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(15) {
        let c = world
            .claim(&kept_claim)
            .await
            .expect("the kept claim is there");
        assert!(!deleting(&c), "{c}\n{}", world.logs());
        assert_eq!(c["status"]["phase"], "Registered", "{c}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let metrics = world.metrics().await;
    let blocked = metric_sum(
        &metrics,
        "nodewright_disruption_decisions_total",
        &["outcome=\"budget_blocked\""],
    );
    eprintln!(
        "disruption decisions: {:?}",
        metrics
            .lines()
            .filter(|l| l.starts_with("nodewright_disruption_decisions_total"))
            .collect::<Vec<_>>()
    );
    assert!(blocked > 0.0, "no budget_blocked decision\n{metrics}");

    // Without the annotation it goes.
    nodes
        .patch(
            &kept_node,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {DO_NOT_DISRUPT: null}}})),
        )
        .await
        .unwrap();
    let released = Instant::now();
    world
        .wait_until(
            "the released claim gone",
            Duration::from_secs(60),
            || async { world.claim(&kept_claim).await.is_none() },
        )
        .await;
    eprintln!(
        "annotation removed → claim gone: {:.1} s",
        released.elapsed().as_secs_f64()
    );
    finish(world, plane).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_node_drains_it_and_terminates_its_claim() {
    let _serial = SERIAL.lock().await;
    let plane = controlplane::shared();
    let world = start_clean(plane, "disrupt", |ns| {
        pool_config(
            ns,
            "nodedel",
            "c5.xlarge, c5.2xlarge",
            "{consolidationPolicy: WhenEmpty, consolidateAfter: Never}",
            "",
        )
    })
    .await;
    Api::<Deployment>::namespaced(world.client.clone(), &world.namespace)
        .create(
            &PostParams::default(),
            &deployment("app", 30, "nodedel", "100m"),
        )
        .await
        .unwrap();
    let claims = world.wait_running("app", 30).await;
    assert_eq!(claims.len(), 1, "{claims:?}");
    let (claim, node, instance) = (
        claim_name(&claims[0]),
        claim_node(&claims[0]),
        claim_instance(&claims[0]),
    );
    world
        .wait_until("the Node's finalizer", Duration::from_secs(30), || async {
            world
                .node(&node)
                .await
                .is_some_and(|n| has_finalizer(&n.metadata))
        })
        .await;
    Api::<Node>::all(world.client.clone())
        .delete(&node, &DeleteParams::default())
        .await
        .unwrap();
    let deleted = Instant::now();
    world
        .wait_until(
            "the claim Terminating (Deleted)",
            Duration::from_secs(30),
            || async {
                world.claim(&claim).await.is_some_and(|c| {
                    c["status"]["phase"] == "Terminating"
                        && c["status"]["disruptionReason"] == "Deleted"
                })
            },
        )
        .await;
    let mut terminated = None;
    while deleted.elapsed() < Duration::from_secs(120) {
        let state = instance_state(&world.ec2, &instance).await;
        let on_node = world
            .pods_of("app")
            .await
            .into_iter()
            .filter(|(_, n, _, _)| n.as_deref() == Some(node.as_str()))
            .count();
        assert!(
            state == "running" || on_node == 0,
            "instance {state} with {on_node} pods on the node\n{}",
            world.logs()
        );
        if ended(&state) {
            terminated = Some(deleted.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let Some(after) = terminated else {
        panic!("instance {instance} never terminated\n{}", world.logs());
    };
    eprintln!(
        "Node deleted → instance terminated (30-pod node, no PDB): {:.1} s",
        after.as_secs_f64()
    );
    // Drained through the Eviction API, not left to go with the instance.
    let metrics = world.metrics().await;
    assert!(
        metric_sum(
            &metrics,
            "nodewright_evictions_total",
            &["outcome=\"evicted\""]
        ) >= 30.0,
        "{metrics}"
    );
    world
        .wait_until("the claim gone", Duration::from_secs(60), || async {
            world.claim(&claim).await.is_none()
        })
        .await;
    world
        .wait_until("the Node gone", Duration::from_secs(60), || async {
            world.node(&node).await.is_none()
        })
        .await;
    finish(world, plane).await;
}

/// An expired node gets its replacement first: the new claim registers while the old node
/// still runs its pods untouched, then the old node is drained and terminated, and the pods run
/// on the new node. The pool removes empty nodes at once (`consolidateAfter: 0s`): the
/// replacement, empty until the pods arrive, must not be taken for an empty node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_node_is_replaced_before_it_is_drained() {
    let _serial = SERIAL.lock().await;
    let plane = controlplane::shared();
    let world = start_clean(plane, "disrupt", |ns| {
        pool_config(
            ns,
            "expiring",
            "c5.large, c5.xlarge",
            r#"{consolidationPolicy: WhenEmpty, consolidateAfter: 0s, budgets: [{nodes: "100%"}]}"#,
            "\n      expireAfter: 30s",
        )
    })
    .await;
    Api::<Deployment>::namespaced(world.client.clone(), &world.namespace)
        .create(
            &PostParams::default(),
            &deployment("app", 2, "expiring", "200m"),
        )
        .await
        .unwrap();
    let claims = world.wait_running("app", 2).await;
    assert_eq!(claims.len(), 1, "{claims:?}");
    let (old, old_node, old_instance) = (
        claim_name(&claims[0]),
        claim_node(&claims[0]),
        claim_instance(&claims[0]),
    );
    // Until the replacement registers, the old node keeps its pods and its instance.
    let deadline = Instant::now() + Duration::from_secs(90);
    let replacement = loop {
        assert!(
            Instant::now() < deadline,
            "no replacement\n{}",
            world.logs()
        );
        let old_claim = world
            .claim(&old)
            .await
            .expect("the old claim is still there");
        let replacements: Vec<String> = old_claim["status"]["replacements"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect();
        let registered = world.registered_claims().await;
        if let Some(r) = replacements
            .iter()
            .find(|r| registered.iter().any(|c| claim_name(c) == **r))
        {
            break r.clone();
        }
        assert!(
            !deleting(&old_claim),
            "drained before its replacement: {old_claim}"
        );
        assert_eq!(instance_state(&world.ec2, &old_instance).await, "running");
        let on_old = world
            .pods_of("app")
            .await
            .iter()
            .filter(|(_, n, running, terminating)| {
                n.as_deref() == Some(old_node.as_str()) && *running && !*terminating
            })
            .count();
        assert_eq!(on_old, 2, "the old node's pods were touched early");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let expired_at = Instant::now();
    let new_node = claim_node(&world.claim(&replacement).await.unwrap());
    world
        .wait_until(
            "the expired claim gone",
            Duration::from_secs(60),
            || async { world.claim(&old).await.is_none() },
        )
        .await;
    assert!(ended(&instance_state(&world.ec2, &old_instance).await));
    world
        .wait_until(
            "both pods running on the replacement",
            Duration::from_secs(60),
            || async {
                let pods = world.pods_of("app").await;
                pods.len() == 2
                    && pods.iter().all(|(_, n, running, _)| {
                        *running && n.as_deref() == Some(new_node.as_str())
                    })
            },
        )
        .await;
    eprintln!(
        "replacement registered → expired node gone and pods moved: {:.1} s",
        expired_at.elapsed().as_secs_f64()
    );
    let metrics = world.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "nodewright_nodes_terminated_total",
            &["node_pool=\"expiring\"", "reason=\"expired\""]
        ),
        1.0,
        "{metrics}"
    );
    finish(world, plane).await;
}
