//! A leader that dies in the middle of a drain, end to end on the real control plane (the pieces
//! are those of `disruption_cluster.rs` and `workshop_e2e.rs`): two `nodewright serve` replicas
//! (distinct `POD_NAME`s) share the release's Lease `nodewright-provisioner`, both reach EC2
//! through the logging proxy in front of moto (tests/common/ec2proxy.rs), the kubelet stand-in
//! with kwok runs the Nodes and pods, and the real kube-scheduler calls the standby's extender.
//!
//! The leader is SIGKILLed (`Child::kill`: no graceful Lease release, as in a crash) while a
//! PodDisruptionBudget holds the drain of a deleted NodeClaim; the standby takes the Lease once
//! it expires, finds the claim Terminating, keeps both finalizers and the instance while the
//! budget holds, and finishes the termination once the budget is relaxed, calling
//! TerminateInstances for the instance exactly once across both replicas.

mod common;

use std::time::{Duration, Instant};

use common::failover::{
    Failover, claim_has_finalizer, claim_instance, claim_name, claim_node, condition, log_lines,
    node_has_finalizer, terminate_requests,
};
use common::served::{ended, instance_state, metric_sum, nodeclaim_resource};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use serde_json::{Value, json};

/// The claim is Terminating and its drain is held by a PodDisruptionBudget.
fn pdb_blocked(claim: &Value) -> bool {
    claim["metadata"]["deletionTimestamp"].is_string()
        && claim["status"]["phase"] == "Terminating"
        && condition(claim, "Drained").is_some_and(|d| {
            d["status"] == "False"
                && d["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("PodDisruptionBudget"))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_drain_resumes_without_a_second_terminate_or_a_lost_finalizer() {
    let began = Instant::now();
    let mut w = Failover::new(None).await;

    let (first, second) = w.start_leader_and_standby().await;

    let ns = w.namespace.clone();
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(w.client.clone(), &ns);
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
    const PODS: usize = 4;
    w.deploy_app(PODS, "200m", Duration::from_secs(120)).await;
    let claims = w.registered_claims().await;
    assert_eq!(claims.len(), 1, "{claims:#?}\n{}", w.logs());
    let (claim, node, instance) = (
        claim_name(&claims[0]),
        claim_node(&claims[0]),
        claim_instance(&claims[0]),
    );
    eprintln!("claim {claim}, node {node}, instance {instance}");
    w.wait_until("both finalizers", Duration::from_secs(30), || async {
        w.node(&node).await.is_some_and(|n| node_has_finalizer(&n))
            && w.claim(&claim)
                .await
                .is_some_and(|c| claim_has_finalizer(&c))
    })
    .await;
    w.wait_until("the PDB observed", Duration::from_secs(30), || async {
        pdbs.get("app")
            .await
            .ok()
            .and_then(|p| p.status)
            .is_some_and(|s| {
                s.expected_pods == Some(PODS as i32)
                    && s.current_healthy == Some(PODS as i32)
                    && s.disruptions_allowed == Some(0)
            })
    })
    .await;

    // Delete the claim; the leader drains and the PDB holds it.
    Api::<DynamicObject>::all_with(w.client.clone(), &nodeclaim_resource())
        .delete(&claim, &DeleteParams::default())
        .await
        .unwrap();
    let blocked_after = w
        .wait_until(
            "the drain blocked by the PDB",
            Duration::from_secs(30),
            || async { w.claim(&claim).await.is_some_and(|c| pdb_blocked(&c)) },
        )
        .await;
    eprintln!(
        "claim deleted → drain blocked by the PDB: {:.1} s",
        blocked_after.as_secs_f64()
    );
    let blocked_by_leader = metric_sum(
        &w.metrics(first).await,
        "nodewright_evictions_total",
        &["outcome=\"pdb_blocked\""],
    );
    assert!(blocked_by_leader >= 1.0, "{}", w.logs());
    assert_eq!(instance_state(&w.ec2, &instance).await, "running");
    assert!(terminate_requests(&w.proxy, &instance).is_empty());

    // Crash the leader.
    w.kill(first);
    let killed = Instant::now();
    let failover = w
        .wait_until(
            "replica-1 leading after the kill",
            Duration::from_secs(60),
            || async { w.leading(second).await },
        )
        .await;
    let holder = w.lease_holder().await;
    eprintln!(
        "leader killed → replica-1 leads: {:.1} s (Lease holder now {holder:?})",
        failover.as_secs_f64()
    );
    assert_eq!(holder.as_deref(), Some("replica-1"), "{}", w.logs());
    // The leader metric is set before the claims are listed: the log line follows.
    w.wait_until(
        "replica-1 resuming from the stored NodeClaims",
        Duration::from_secs(10),
        || async {
            log_lines(
                &w.replica_logs(second),
                "leading: resuming from existing NodeClaims",
                &[],
            )
            .iter()
            .any(|l| l["claims"].as_u64() >= Some(1))
        },
    )
    .await;

    // The new leader resumes the drain: still held, nothing released, the instance runs.
    w.wait_until(
        "replica-1 refused an eviction by the PDB",
        Duration::from_secs(30),
        || async {
            metric_sum(
                &w.metrics(second).await,
                "nodewright_evictions_total",
                &["outcome=\"pdb_blocked\""],
            ) >= 1.0
        },
    )
    .await;
    let held_since = Instant::now();
    while held_since.elapsed() < Duration::from_secs(5) {
        let c = w
            .claim(&claim)
            .await
            .unwrap_or_else(|| panic!("the claim went while the PDB held\n{}", w.logs()));
        assert!(pdb_blocked(&c), "{c}\n{}", w.logs());
        assert!(claim_has_finalizer(&c), "claim lost its finalizer: {c}");
        assert!(
            c["status"]["instanceTerminatedAt"].is_null(),
            "{c}\n{}",
            w.logs()
        );
        let n = w
            .node(&node)
            .await
            .unwrap_or_else(|| panic!("the Node went while the PDB held\n{}", w.logs()));
        assert!(node_has_finalizer(&n), "Node lost its finalizer: {n:?}");
        assert_eq!(instance_state(&w.ec2, &instance).await, "running");
        let on_node = w
            .pods_of("app")
            .await
            .iter()
            .filter(|(_, n, _)| n.as_deref() == Some(node.as_str()))
            .count();
        assert_eq!(on_node, PODS, "{}", w.logs());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(terminate_requests(&w.proxy, &instance).is_empty());
    eprintln!(
        "replica-1 metrics while held: {:?}",
        w.metrics(second)
            .await
            .lines()
            .filter(|l| l.starts_with("nodewright_evictions_total")
                || l.starts_with("nodewright_draining_nodes")
                || l.starts_with("nodewright_provisioner_leader"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    );

    // Relax the PDB: the new leader finishes the termination.
    pdbs.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"maxUnavailable": "100%"}})),
    )
    .await
    .unwrap();
    let relaxed = Instant::now();
    let mut terminated = None;
    while relaxed.elapsed() < Duration::from_secs(120) {
        let state = instance_state(&w.ec2, &instance).await;
        let on_node: Vec<String> = w
            .pods_of("app")
            .await
            .into_iter()
            .filter(|(_, n, _)| n.as_deref() == Some(node.as_str()))
            .map(|(p, ..)| p)
            .collect();
        assert!(
            state == "running" || on_node.is_empty(),
            "instance {state} while pods were still on the node: {on_node:?}\n{}",
            w.logs()
        );
        if ended(&state) {
            terminated = Some(relaxed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let Some(terminated) = terminated else {
        panic!("instance {instance} never terminated\n{}", w.logs());
    };
    let gone = w
        .wait_until(
            "the claim and the Node gone",
            Duration::from_secs(60),
            || async { w.claim(&claim).await.is_none() && w.node(&node).await.is_none() },
        )
        .await;
    let relax_to_gone = relaxed.elapsed();
    eprintln!(
        "PDB relaxed → instance terminated: {:.1} s; → claim and Node gone: {:.1} s (waited {:.1} s after the instance ended); kill → claim gone: {:.1} s",
        terminated.as_secs_f64(),
        relax_to_gone.as_secs_f64(),
        gone.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    // Let any late (second) call show up.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let calls = terminate_requests(&w.proxy, &instance);
    let all_terminates: Vec<Vec<(String, String)>> = w
        .proxy
        .requests("TerminateInstances")
        .into_iter()
        .map(|r| {
            r.params
                .into_iter()
                .filter(|(k, _)| k.starts_with("InstanceId"))
                .collect()
        })
        .collect();
    eprintln!(
        "TerminateInstances naming {instance}: {} (statuses {calls:?}); all TerminateInstances: {all_terminates:?}",
        calls.len()
    );
    assert_eq!(
        calls.len(),
        1,
        "exactly one TerminateInstances for {instance}: {all_terminates:?}\n{}",
        w.logs()
    );
    assert_eq!(calls[0], 200, "{}", w.logs());

    // replica-1 finished it; replica-0 never got that far.
    let new_logs = w.replica_logs(second);
    let old_logs = w.replica_logs(first);
    let new_terminated = log_lines(
        &new_logs,
        "instance terminated",
        &[("claim", &claim), ("instance", &instance)],
    );
    let new_done = log_lines(&new_logs, "claim terminated", &[("claim", &claim)]);
    assert_eq!(new_terminated.len(), 1, "{}", w.logs());
    assert_eq!(new_done.len(), 1, "{}", w.logs());
    assert!(
        log_lines(&old_logs, "instance terminated", &[("instance", &instance)]).is_empty()
            && log_lines(&old_logs, "claim terminated", &[("claim", &claim)]).is_empty(),
        "{}",
        w.logs()
    );
    eprintln!(
        "replica-1: {}\nreplica-1: {}",
        new_terminated[0], new_done[0]
    );
    let m = w.metrics(second).await;
    eprintln!(
        "replica-1 after: {:?}",
        m.lines()
            .filter(|l| l.starts_with("nodewright_evictions_total")
                || l.starts_with("nodewright_nodes_terminated_total")
                || l.starts_with("nodewright_terminations_total"))
            .collect::<Vec<_>>()
    );
    assert!(
        metric_sum(
            &m,
            "nodewright_nodes_terminated_total",
            &["reason=\"deleted\""]
        ) >= 1.0,
        "{m}"
    );
    let warnings: Vec<String> = new_logs
        .lines()
        .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
        .map(str::to_owned)
        .collect();
    eprintln!("replica-1 warnings/errors: {}", warnings.len());
    for l in warnings.iter().take(20) {
        eprintln!("  {l}");
    }
    eprintln!(
        "timings: kill → new leader {:.1} s; relax → instance terminated {:.1} s; test {:.1} s",
        failover.as_secs_f64(),
        terminated.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
    w.finish().await;
}
