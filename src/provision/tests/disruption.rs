//! Empty nodes, budgets and the termination flow, against the fakes.

use super::*;

#[tokio::test(start_paused = true)]
async fn an_empty_node_is_terminated_through_the_flow() {
    let h = start(when_empty());
    let (claim, node) = h.occupied_node().await;
    let instance = instance_of(&claim);
    // Its pod keeps it, as the pod watch counts it: the node is not even looked at again.
    h.run_for(Duration::from_secs(10)).await;
    assert!(h.deletes().is_empty(), "{:?}", h.cloud.calls());
    assert_eq!(h.stored().await[0].phase(), Phase::Registered);
    assert!(h.cluster.taints(&node).is_empty());
    assert_eq!(h.decisions("empty", "revalidation_failed"), 0);

    h.pod_gone("web");
    h.until("the claim gone", <[NodeClaim]>::is_empty).await;
    assert_eq!(h.deletes(), [vec![instance.clone()]]);
    assert_eq!(h.cloud.instance(&instance).unwrap().state, "terminated");
    assert_eq!(
        h.cluster.finalizers(&node),
        None,
        "the Node deleted and its finalizer removed"
    );
    assert_eq!(h.decisions("empty", "disrupted"), 1);
    assert_eq!(h.nodes_terminated("empty"), 1);
    assert_eq!(
        h.metrics.terminations.with_label_values(&["empty"]).get(),
        1
    );
    // Nothing is launched again for the gone pod.
    h.run_for(Duration::from_secs(10)).await;
    assert_eq!(h.creates().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_empty_node_whose_pods_cannot_be_listed_is_kept() {
    let h = start(when_empty());
    let (claim, node) = h.occupied_node().await;
    h.cluster.world().fail_pods_on = true;
    h.pod_gone("web");
    h.run_for(Duration::from_secs(10)).await;
    assert!(h.deletes().is_empty(), "{:?}", h.cloud.calls());
    assert_eq!(h.stored().await[0].phase(), Phase::Registered);
    assert!(h.decisions("empty", "revalidation_failed") >= 1);
    assert!(
        h.cluster.taints(&node).is_empty(),
        "the disruption taint comes off again"
    );
    // Once the pods can be read, it goes.
    h.cluster.world().fail_pods_on = false;
    h.until("the claim gone", <[NodeClaim]>::is_empty).await;
    assert_eq!(h.deletes(), [vec![instance_of(&claim)]]);
}

#[tokio::test(start_paused = true)]
async fn consolidate_after_never_keeps_an_empty_node() {
    let h = start(never_consolidate());
    let (_, node) = h.occupied_node().await;
    h.pod_gone("web");
    h.run_for(Duration::from_secs(60)).await;
    assert!(h.deletes().is_empty(), "{:?}", h.cloud.calls());
    let claims = h.stored().await;
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].phase(), Phase::Registered);
    assert!(h.cluster.taints(&node).is_empty(), "not even tainted");
    assert_eq!(h.decisions("empty", "disrupted"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_budget_of_zero_blocks_empty_removal() {
    let h = start(config(
        r#"{consolidationPolicy: WhenEmpty, consolidateAfter: 0s, budgets: [{nodes: "0"}]}"#,
        "15m",
    ));
    let (_, node) = h.occupied_node().await;
    h.pod_gone("web");
    h.run_for(Duration::from_secs(20)).await;
    assert!(h.deletes().is_empty(), "{:?}", h.cloud.calls());
    assert_eq!(h.stored().await[0].phase(), Phase::Registered);
    assert!(h.cluster.taints(&node).is_empty());
    assert!(h.decisions("empty", "budget_blocked") >= 5);
    assert_eq!(h.decisions("empty", "disrupted"), 0);
    assert_eq!(
        h.disruption
            .budget_allowed
            .with_label_values(&[POOL, "empty"])
            .get(),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn a_claim_deleted_by_someone_else_is_terminated() {
    let h = start(never_consolidate());
    let (claim, node) = h.occupied_node().await;
    let instance = instance_of(&claim);
    // A PodDisruptionBudget holds the pod at first.
    h.cluster.world().pdb.insert("web".into());
    h.claims.delete(claim.name()).await.unwrap();
    let claims = h
        .until("the claim in the flow", |cs| {
            cs.len() == 1 && cs[0].phase() == Phase::Terminating
        })
        .await;
    let status = claims[0].status.as_ref().unwrap();
    assert_eq!(status.disruption_reason.as_deref(), Some("Deleted"));
    assert!(claims[0].metadata.deletion_timestamp.is_some());
    h.run_for(Duration::from_secs(5)).await;
    assert!(
        h.deletes().is_empty(),
        "the instance stays while the pod does"
    );
    assert_eq!(
        h.cluster.taints(&node),
        ["karpenter.sh/disrupted:NoSchedule"]
    );
    assert!(
        h.cluster.world().evictions.len() >= 2,
        "retried with backoff"
    );

    h.cluster.world().pdb.clear();
    h.until("the claim gone", <[NodeClaim]>::is_empty).await;
    assert_eq!(h.deletes(), [vec![instance]]);
    assert_eq!(h.cluster.finalizers(&node), None);
    assert!(h.cluster.world().pods.is_empty(), "the pod was evicted");
    assert_eq!(h.nodes_terminated("deleted"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_node_that_never_registers_times_out() {
    // The smallest timeout the config takes; the claim's launch time is wall-clock (whole
    // seconds, rounded down), so it has passed by the first reconcile after the launch.
    let h = start(config(
        "{consolidationPolicy: WhenEmpty, consolidateAfter: Never}",
        "1ms",
    ));
    h.pod_seen(pending_pod("web"));
    let first = loop {
        if let Some(name) = h.creates().first() {
            break name.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    std::thread::sleep(Duration::from_millis(5));
    h.until("the first claim gone", |cs| {
        cs.iter().all(|c| c.name() != first)
    })
    .await;
    let deletes = h.deletes();
    assert_eq!(deletes.len(), 1, "{:?}", h.cloud.calls());
    let instance = &deletes[0][0];
    assert_eq!(
        h.cloud.instance(instance).unwrap().claim.as_deref(),
        Some(first.as_str())
    );
    assert_eq!(h.nodes_terminated("registration_timeout"), 1);
    assert_eq!(
        h.metrics
            .terminations
            .with_label_values(&["registration_timeout"])
            .get(),
        1
    );
    // Its pod is planned again: a new claim, a new launch.
    h.until("a second claim", |cs| cs.iter().any(|c| c.name() != first))
        .await;
    assert!(h.creates().len() >= 2);
    assert_ne!(h.creates()[1], first);
}
