//! Consolidation of underused nodes, against the fakes.

use super::*;

/// A running pod of a ReplicaSet on `node`, in the cluster and the state, asking for `cpu`.
fn owned_pod_on(h: &Harness, name: &str, node: &str, cpu: &str) {
    let extra = json!({
        "metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "name": "web", "uid": "rs", "controller": true}]},
        "spec": {"containers": [{"name": "app", "image": "pause",
            "resources": {"requests": {"cpu": cpu, "memory": "256Mi"}}}]},
    });
    h.cluster.add_pod(name, node, extra.clone());
    let pod = bound_pod(name, node);
    let mut v = serde_json::to_value(&pod).unwrap();
    json_patch::merge(&mut v, &extra);
    h.pod_seen(serde_json::from_value(v).unwrap());
}

/// Two registered nodes with one small pod each (a filler pod made the second one necessary,
/// and left `filler_for` after both nodes were up).
async fn two_half_used_nodes(h: &Harness, filler_for: Duration) -> [(NodeClaim, String); 2] {
    let (a, node_a) = h.registered_node().await;
    owned_pod_on(h, "web", &node_a, "500m");
    owned_pod_on(h, "filler", &node_a, "1400m");
    h.pod_seen(pending_pod("web2"));
    let claims = h
        .until("a second claim launched", |cs| {
            cs.len() == 2 && cs.iter().all(|c| c.phase() != Phase::Pending)
        })
        .await;
    let b = claims.into_iter().find(|c| c.name() != a.name()).unwrap();
    let node_b = h.node_registers(&b);
    h.until("both registered", |cs| {
        cs.iter().all(|c| c.phase() == Phase::Registered)
    })
    .await;
    owned_pod_on(h, "web2", &node_b, "500m");
    h.run_for(filler_for).await;
    h.pod_gone("filler");
    let stored = h.stored().await;
    let find = |n: &str| stored.iter().find(|c| c.name() == n).unwrap().clone();
    [(find(a.name()), node_a), (find(b.name()), node_b)]
}

/// Consolidation at once, every node at a time, no stabilization window.
fn underutilized() -> Config {
    config_full(
        "{consolidationPolicy: WhenEmptyOrUnderutilized, consolidateAfter: 0s, budgets: [{nodes: '100%'}]}",
        "15m",
        "",
        "  consolidation: {stabilizationWindow: 0s}\n",
    )
}

#[tokio::test(start_paused = true)]
async fn the_stabilization_window_keeps_room_the_pool_needed_a_moment_ago() {
    let mut config = underutilized();
    config.policy.consolidation.stabilization_window = "10m".into();
    let h = start(config);
    let _ = two_half_used_nodes(&h, super::super::consolidation::PASS_EVERY * 2).await;
    // The filler's 1.4 CPU were asked for a moment ago: removing a node would leave less.
    h.run_for(super::super::consolidation::VALIDATE_AFTER * 4)
        .await;
    assert_eq!(h.stored().await.len(), 2);
    assert!(h.deletes().is_empty());
    let kept = |kind: &str| {
        h.disruption
            .unconsolidatable
            .with_label_values(&[kind])
            .get()
    };
    assert_eq!(
        kept("stabilizing"),
        2,
        "{:?}",
        [
            "no_cheaper",
            "small_saving",
            "not_yet",
            "unstable",
            "budget"
        ]
        .map(kept)
    );
    // Once the window has passed, the move is taken.
    h.run_for(Duration::from_secs(600)).await;
    h.until("one claim left", |cs| cs.len() == 1).await;
}

#[tokio::test(start_paused = true)]
async fn two_half_used_nodes_become_one_after_the_decision_is_confirmed() {
    let h = start(underutilized());
    let [(a, node_a), (b, node_b)] = two_half_used_nodes(&h, Duration::ZERO).await;
    // Found on one pass, carried out on a later one (VALIDATE_AFTER): nothing before that.
    h.run_for(super::super::consolidation::VALIDATE_AFTER / 2)
        .await;
    assert!(h.cluster.world().evictions.is_empty());
    let claims = h.until("one claim left", |cs| cs.len() == 1).await;
    let (gone, gone_node, kept_node) = if claims[0].name() == a.name() {
        (&b, &node_b, &node_a)
    } else {
        (&a, &node_a, &node_b)
    };
    assert_eq!(h.deletes(), [vec![instance_of(gone)]]);
    let moved = if gone_node == &node_a { "web" } else { "web2" };
    assert_eq!(h.cluster.world().evictions, [moved.to_owned()]);
    assert_ne!(gone_node, kept_node);
    assert_eq!(h.nodes_terminated("underutilized"), 1);
    assert_eq!(
        h.disruption
            .consolidation_moves
            .with_label_values(&["delete", "started"])
            .get(),
        1
    );
    assert_eq!(h.creates().len(), 2, "nothing launched for the move");
}

#[tokio::test(start_paused = true)]
async fn a_pod_arriving_before_the_confirmation_cancels_the_move() {
    let h = start(underutilized());
    let [(_, node_a), (_, node_b)] = two_half_used_nodes(&h, Duration::ZERO).await;
    // The move is found (a pass after the filler left); then both nodes fill up before the
    // confirming pass.
    let passes = || h.disruption.consolidation_decision.get_sample_count();
    let before = passes();
    while passes() == before {
        h.run_for(Duration::from_millis(100)).await;
    }
    owned_pod_on(&h, "big-a", &node_a, "1400m");
    owned_pod_on(&h, "big-b", &node_b, "1400m");
    h.run_for(super::super::consolidation::VALIDATE_AFTER * 3)
        .await;
    let moves = |outcome: &str| {
        h.disruption
            .consolidation_moves
            .with_label_values(&["delete", outcome])
            .get()
    };
    assert_eq!((moves("revalidation_failed"), moves("started")), (1, 0));
    assert_eq!(h.stored().await.len(), 2);
    assert!(h.cluster.world().evictions.is_empty());
    assert!(h.deletes().is_empty());
}
