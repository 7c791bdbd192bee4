//! Launch and registration, against the fakes.

use super::*;

#[tokio::test(start_paused = true)]
async fn an_unschedulable_pod_gets_a_claim_launched_and_registered() {
    let h = start(never_consolidate());
    h.pod_seen(pending_pod("web"));
    // Nothing before the batch window (1s idle) closes.
    h.run_for(Duration::from_millis(500)).await;
    assert!(h.stored().await.is_empty(), "no claim inside the window");
    assert!(h.creates().is_empty());

    let claims = h
        .until("one launched claim", |cs| {
            cs.len() == 1 && cs[0].phase() == Phase::Launched
        })
        .await;
    let claim = &claims[0];
    assert_eq!(claim.spec.node_pool, POOL);
    assert_eq!(claim.spec.pods, ["app/web"]);
    assert_eq!(
        claim.metadata.finalizers.as_deref(),
        Some(&[TERMINATION_FINALIZER.to_owned()][..])
    );
    assert_eq!(
        claim.spec.labels.get(CLAIM_TAG).map(String::as_str),
        Some(claim.name())
    );
    assert_eq!(h.creates(), [claim.name()]);
    let status = claim.status.as_ref().unwrap();
    assert_eq!(status.launch_attempts, 1);
    assert_eq!(status.zone.as_deref(), Some(ZONE));
    assert!(TYPES.contains(&status.instance_type.as_deref().unwrap()));
    assert!(h.cloud.instance(&instance_of(claim)).is_some());

    let node = h.node_registers(claim);
    let claims = h
        .until("the claim registered", |cs| {
            cs.len() == 1 && cs[0].phase() == Phase::Registered
        })
        .await;
    let status = claims[0].status.as_ref().unwrap();
    assert_eq!(status.node_name.as_deref(), Some(node.as_str()));
    assert!(status.registered_at.is_some());
    assert_eq!(claims[0].condition("Registered").unwrap().status, "True");
    // Without a kube client the labels and taints are not patched; the termination finalizer
    // goes on through ClusterOps.
    assert_eq!(
        h.cluster.finalizers(&node),
        Some(vec![TERMINATION_FINALIZER.to_owned()])
    );
    assert_eq!(h.metrics.unschedulable_to_registered.get_sample_count(), 1);
    // The pod is covered: later batches and reconciles launch nothing more, and the
    // scheduler's report right after the registration does not plan it again.
    h.pod_seen(pending_pod("web"));
    h.run_for(Duration::from_secs(20)).await;
    assert_eq!(
        h.metrics
            .replanned
            .with_label_values(&["turned_away"])
            .get(),
        0
    );
    assert_eq!(h.creates().len(), 1);
    assert!(h.deletes().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_launch_failure_on_one_offering_falls_back_to_the_next() {
    let cloud = FakeCloud::new();
    let cat = catalog();
    let price = |t: &str| {
        cat.get(t)
            .unwrap()
            .offerings
            .iter()
            .find(|o| o.zone == ZONE && o.capacity_type == CapacityType::OnDemand)
            .unwrap()
            .price
    };
    let cheapest = TYPES
        .into_iter()
        .min_by(|a, b| price(a).total_cmp(&price(b)))
        .unwrap();
    cloud.fail_offering(
        cheapest,
        ZONE,
        CapacityType::OnDemand,
        crate::cloud::fake::ec2_error("CreateFleet", "InsufficientInstanceCapacity"),
    );
    let h = start_with(never_consolidate(), cloud);
    h.pod_seen(pending_pod("web"));
    let claims = h
        .until("one launched claim", |cs| {
            cs.len() == 1 && cs[0].phase() == Phase::Launched
        })
        .await;
    let claim = &claims[0];
    let offerings: Vec<&str> = claim
        .spec
        .offerings
        .iter()
        .map(|o| o.instance_type.as_str())
        .collect();
    assert_eq!(
        offerings[0], cheapest,
        "planned on the cheapest: {offerings:?}"
    );
    let status = claim.status.as_ref().unwrap();
    assert_eq!(status.instance_type.as_deref(), Some(offerings[1]));
    assert_eq!(status.launch_attempts, 1, "one attempt tried two offerings");
    assert_eq!(h.creates(), [claim.name()]);
    assert_eq!(
        h.cloud.unavailable(),
        [(cheapest.to_owned(), ZONE.to_owned(), CapacityType::OnDemand)]
    );
}

/// Every offering failing is one failed attempt: the claim stays Pending for a retry after a
/// backoff. (The backoff is kept in `std::time::Instant`, which tokio's paused clock does not
/// move, so the retries up to [`MAX_LAUNCH_ATTEMPTS`] are not driven here.)
#[tokio::test(start_paused = true)]
async fn a_launch_failing_on_every_offering_leaves_the_claim_pending_for_a_retry() {
    let cloud = FakeCloud::new();
    for t in TYPES {
        cloud.fail_offering(
            t,
            ZONE,
            CapacityType::OnDemand,
            crate::cloud::fake::ec2_error("CreateFleet", "InsufficientInstanceCapacity"),
        );
    }
    let h = start_with(never_consolidate(), cloud);
    h.pod_seen(pending_pod("web"));
    let claims = h
        .until("a failed attempt", |cs| {
            cs.len() == 1
                && cs[0]
                    .status
                    .as_ref()
                    .is_some_and(|s| s.launch_attempts == 1)
        })
        .await;
    let claim = &claims[0];
    assert_eq!(claim.phase(), Phase::Pending);
    const { assert!(MAX_LAUNCH_ATTEMPTS > 1) };
    let launched = claim.condition("Launched").unwrap();
    assert_eq!(
        (launched.status.as_str(), launched.reason.as_str()),
        ("False", "InsufficientInstanceCapacity")
    );
    assert_eq!(h.creates(), [claim.name()]);
    assert_eq!(
        h.metrics
            .ec2_errors
            .with_label_values(&["InsufficientInstanceCapacity"])
            .get(),
        1
    );
}

/// `app/web` waits for a claim whose node registered `ago`, as a new leader resumes it: the
/// harness and the node's name.
async fn registered_long_ago(ago: Duration) -> (Harness, String) {
    let h = start(never_consolidate());
    let (mut claim, node) = h.registered_node().await;
    // Another replica takes the lead with the registration that long ago (registration times
    // are wall-clock; the loop's own clock is paused).
    h.leader.send(false).unwrap();
    h.run_for(Duration::from_secs(3)).await;
    let at = crate::cluster::nodeclaims::now() - ago;
    claim.status_mut().registered_at = Some(crate::cluster::nodeclaims::time_at(at));
    h.claims.write_status(&claim).await.unwrap();
    h.leader.send(true).unwrap();
    h.run_for(Duration::from_secs(1)).await;
    (h, node)
}

/// Pods the planner placed on free room of existing nodes.
fn placed(h: &Harness) -> u64 {
    h.metrics
        .plan_decisions
        .with_label_values(&["existing_node"])
        .get()
}

fn replanned(h: &Harness, reason: &str) -> u64 {
    h.metrics.replanned.with_label_values(&[reason]).get()
}

#[tokio::test(start_paused = true)]
async fn a_pod_its_registered_node_turned_away_is_planned_again() {
    let (h, node) = registered_long_ago(Duration::from_secs(30)).await;
    let placed_before = placed(&h);
    assert_eq!(replanned(&h, "turned_away"), 0);
    // The scheduler still reports the pod unschedulable, 30 s after its node registered.
    h.pod_seen(pending_pod("web"));
    h.run_for(Duration::from_secs(5)).await;
    assert_eq!(replanned(&h, "turned_away"), 1);
    // Planned afresh: the node (empty here, as the fake cluster binds nothing) has room, so the
    // planner promises it again instead of launching.
    assert_eq!(placed(&h), placed_before + 1);
    assert_eq!(h.creates().len(), 1);
    assert_eq!(
        h.state.view().read().unwrap().reserved_for("app/web"),
        Some(node.as_str())
    );
    // Once per claim: a second report is the pod's own business with the scheduler now.
    h.pod_seen(pending_pod("web"));
    h.run_for(Duration::from_secs(5)).await;
    assert_eq!(replanned(&h, "turned_away"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_report_soon_after_registration_does_not_replan() {
    let (h, _) = registered_long_ago(Duration::from_secs(2)).await;
    h.pod_seen(pending_pod("web"));
    h.run_for(Duration::from_secs(10)).await;
    assert_eq!(replanned(&h, "turned_away"), 0);
    assert_eq!(replanned(&h, "promise_expired"), 0);
    assert_eq!(placed(&h), 0);
}

#[tokio::test(start_paused = true)]
async fn a_pod_whose_promise_ran_out_unbound_is_planned_again_once() {
    let (h, _) = registered_long_ago(Duration::from_secs(200)).await;
    // No new report from the scheduler: the reconcile finds the pod uncovered.
    h.run_for(Duration::from_secs(10)).await;
    assert_eq!(replanned(&h, "promise_expired"), 1);
    assert_eq!(replanned(&h, "turned_away"), 0);
    assert_eq!(placed(&h), 1);
    h.run_for(Duration::from_secs(20)).await;
    assert_eq!(replanned(&h, "promise_expired"), 1);
    assert_eq!(h.creates().len(), 1);
}

/// `app/<name>` as [`pending_pod`], labelled `group: <group>`, with required hostname
/// anti-affinity to its own group.
fn anti_affine_pod(name: &str, group: &str) -> Pod {
    let mut pod = pending_pod(name);
    pod.metadata.labels = Some(BTreeMap::from([("group".to_owned(), group.to_owned())]));
    pod.spec.as_mut().expect("spec").affinity = Some(
        serde_json::from_value(json!({"podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [{
                "topologyKey": "kubernetes.io/hostname",
                "labelSelector": {"matchLabels": {"group": group}}}]}}))
        .expect("an Affinity"),
    );
    pod
}

/// Would the extender's filter let a pod of `group` (no node of its own coming) onto `node`?
fn lets_group_on(h: &Harness, group: &str, node: &str) -> bool {
    use crate::scheduling::extender::{PodRequest, judge};
    let newcomer = PodRequest {
        key: format!("app/{group}-newcomer"),
        requests: PendingPod::from_pod(&pending_pod("x")).requests,
        labels: BTreeMap::from([("group".to_owned(), group.to_owned())]),
        ..PodRequest::default()
    };
    judge(
        &h.state.view().read().unwrap(),
        &newcomer,
        &node,
        Instant::now(),
    )
    .is_ok()
}

#[tokio::test(start_paused = true)]
async fn promises_carry_the_pods_anti_affinity_to_the_extender() {
    let h = start(never_consolidate());
    // A new node launched for `a-0`: promised to it on registration.
    h.pod_seen(anti_affine_pod("a-0", "a"));
    let claims = h
        .until("one launched claim", |cs| {
            cs.len() == 1 && cs[0].phase() == Phase::Launched
        })
        .await;
    let node = h.node_registers(&claims[0]);
    h.until("the claim registered", |cs| {
        cs[0].phase() == Phase::Registered
    })
    .await;
    {
        let view = h.state.view().read().unwrap();
        let promised = &view.promises[node.as_str()].pods["app/a-0"];
        assert_eq!(promised.namespace, "app");
        assert_eq!(promised.labels["group"], "a");
        assert_eq!(promised.anti_affinity.len(), 1);
    }
    assert!(!lets_group_on(&h, "a", &node), "a-0's group is kept off");
    assert!(lets_group_on(&h, "b", &node), "room is left for others");
    // `b-0` is planned onto the room left on that node: its promise carries its rules too.
    h.pod_seen(anti_affine_pod("b-0", "b"));
    h.run_for(Duration::from_secs(5)).await;
    assert_eq!(placed(&h), 1);
    assert_eq!(h.creates().len(), 1);
    assert!(!lets_group_on(&h, "b", &node), "b-0's group is kept off");
    assert!(lets_group_on(&h, "c", &node));
}

#[tokio::test(start_paused = true)]
async fn the_planner_keeps_a_promised_pods_anti_affinity_group_off_its_node() {
    let h = start(never_consolidate());
    h.pod_seen(anti_affine_pod("a-0", "a"));
    let claims = h
        .until("one launched claim", |cs| {
            cs.len() == 1 && cs[0].phase() == Phase::Launched
        })
        .await;
    let node = h.node_registers(&claims[0]);
    h.until("the claim registered", |cs| {
        cs[0].phase() == Phase::Registered
    })
    .await;
    // a-1 would fit in the room left beside a-0's promise, but kube-scheduler would then keep
    // a-0 off the node: a node of its own.
    h.pod_seen(anti_affine_pod("a-1", "a"));
    let claims = h
        .until("a second claim", |cs| {
            cs.len() == 2 && cs.iter().all(|c| c.phase() != Phase::Pending)
        })
        .await;
    assert_eq!(placed(&h), 0);
    assert!(
        claims.iter().any(|c| c.spec.pods == ["app/a-1"]),
        "{claims:#?}"
    );
    // A pod of another group takes the room.
    h.pod_seen(anti_affine_pod("b-0", "b"));
    h.run_for(Duration::from_secs(5)).await;
    assert_eq!(placed(&h), 1);
    assert_eq!(
        h.state.view().read().unwrap().reserved_for("app/b-0"),
        Some(node.as_str())
    );
}
