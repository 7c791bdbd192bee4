//! The termination state machine against a fake cluster and the recording fake cloud, with
//! tokio's paused clock for the eviction backoff.

use serde_json::json;

use super::*;
use crate::cloud::fake::{Call, FakeCloud};
use crate::cloud::launch::InstanceInfo;
use crate::cluster::fake::FakeCluster;
use crate::cluster::nodeclaims::{NodeClaimSpec, Phase};
use crate::model::catalog::CapacityType;

struct Setup {
    cluster: FakeCluster,
    cloud: FakeCloud,
    claims: ClaimStore,
    terminator: Terminator,
    claim: NodeClaim,
}

fn instance(id: &str) -> InstanceInfo {
    InstanceInfo {
        instance_id: id.into(),
        instance_type: "m5.large".into(),
        zone: "us-east-1a".into(),
        state: "running".into(),
        claim: Some("pool-abc".into()),
        node_pool: Some("pool".into()),
        launch_time: None,
        provider_id: format!("aws:///us-east-1a/{id}"),
        capacity_type: CapacityType::OnDemand,
        image_id: None,
        subnet_id: None,
        security_group_ids: Vec::new(),
    }
}

fn terminator(cluster: &FakeCluster, cloud: &FakeCloud, claims: &ClaimStore) -> Terminator {
    Terminator::new(
        Arc::new(cluster.clone()),
        Some(Arc::new(cloud.clone())),
        claims.clone(),
        EventSink::disabled(),
        DisruptionMetrics::detached(),
    )
}

/// A registered claim on node `n1` (instance `i-1`), already in the flow, stored with its
/// finalizer and deleted.
async fn setup() -> Setup {
    let cluster = FakeCluster::default();
    cluster.add_node("n1");
    let cloud = FakeCloud::new();
    cloud.add_instance(instance("i-1"));
    let claims = ClaimStore::memory();
    let mut claim = NodeClaim {
        spec: NodeClaimSpec {
            node_pool: "pool".into(),
            node_class: "default".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    claim.metadata.name = Some("pool-abc".into());
    claim.metadata.finalizers = Some(vec![TERMINATION_FINALIZER.into()]);
    let mut claim = claims.create(&claim).await.unwrap();
    let s = claim.status_mut();
    s.phase = Phase::Terminating;
    s.instance_id = Some("i-1".into());
    s.node_name = Some("n1".into());
    s.disruption_reason = Some("Empty".into());
    s.termination_started_at = Some(time_at(start()));
    claims.write_status(&claim).await.unwrap();
    claims.delete("pool-abc").await.unwrap();
    let terminator = terminator(&cluster, &cloud, &claims);
    Setup {
        cluster,
        cloud,
        claims,
        terminator,
        claim,
    }
}

fn start() -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_800_000_000).unwrap()
}

fn cx(after_secs: i64, grace: Option<u64>) -> Context<'static> {
    Context {
        cluster_name: Some("c"),
        grace: grace.map(Duration::from_secs),
        now: jiff::Timestamp::from_second(1_800_000_000 + after_secs).unwrap(),
    }
}

fn deletes(cloud: &FakeCloud) -> usize {
    cloud
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::Delete { .. }))
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_node_is_drained_before_its_instance_is_terminated_once() {
    let mut s = setup().await;
    s.cluster.add_pod("web", "n1", json!({}));
    s.cluster.add_pod(
        "agent",
        "n1",
        json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "a", "uid": "d", "controller": true}]}}),
    );
    s.cluster
        .add_pod("done", "n1", json!({"status": {"phase": "Succeeded"}}));
    let step = s.terminator.step(&mut s.claim, &cx(1, None)).await;
    assert_eq!(step, Step::Draining("1 pods left: 1 terminating".into()));
    assert_eq!(
        s.cluster.taints("n1"),
        ["karpenter.sh/disrupted:NoSchedule"]
    );
    assert_eq!(s.cluster.world().evictions, ["web"]);
    assert_eq!(deletes(&s.cloud), 0, "nothing terminated while pods remain");
    assert_eq!(
        s.claims
            .get("pool-abc")
            .await
            .unwrap()
            .unwrap()
            .condition_is("Drained"),
        Some(false)
    );
    // The pod is gone by the next step: the instance goes, then the Node and the claim.
    let step = s.terminator.step(&mut s.claim, &cx(2, None)).await;
    assert_eq!(step, Step::Done);
    assert_eq!(s.cloud.deletes_of("i-1"), 1);
    assert_eq!(s.cloud.instance("i-1").unwrap().state, "terminated");
    assert!(
        s.cluster.world().nodes.is_empty(),
        "Node deleted and released"
    );
    assert!(
        s.claims.get("pool-abc").await.unwrap().is_none(),
        "claim released"
    );
    assert_eq!(
        s.cluster.world().evictions,
        ["web"],
        "DaemonSet and finished pods stay"
    );
    assert_eq!(s.terminator.in_progress(), 0);
    assert_eq!(
        s.terminator
            .metrics
            .nodes_terminated
            .with_label_values(&["pool", "empty"])
            .get(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_pdb_blocks_the_drain_with_backoff_until_it_is_relaxed() {
    let mut s = setup().await;
    s.cluster.add_pod("db", "n1", json!({}));
    s.cluster.world().pdb.insert("db".into());
    let step = s.terminator.step(&mut s.claim, &cx(1, None)).await;
    assert_eq!(
        step,
        Step::Draining("1 pods left: 1 blocked by PodDisruptionBudgets".into())
    );
    // Within the backoff nothing is tried again.
    s.terminator.step(&mut s.claim, &cx(1, None)).await;
    assert_eq!(s.cluster.world().evictions.len(), 1);
    tokio::time::advance(Duration::from_millis(1001)).await;
    s.terminator.step(&mut s.claim, &cx(2, None)).await;
    assert_eq!(s.cluster.world().evictions.len(), 2);
    // The second refusal waits twice as long.
    tokio::time::advance(Duration::from_millis(1500)).await;
    s.terminator.step(&mut s.claim, &cx(3, None)).await;
    assert_eq!(s.cluster.world().evictions.len(), 2);
    tokio::time::advance(Duration::from_millis(600)).await;
    s.cluster.world().pdb.clear();
    let step = s.terminator.step(&mut s.claim, &cx(4, None)).await;
    assert_eq!(step, Step::Draining("1 pods left: 1 terminating".into()));
    assert_eq!(deletes(&s.cloud), 0);
    assert_eq!(
        s.terminator.step(&mut s.claim, &cx(5, None)).await,
        Step::Done
    );
    assert_eq!(
        s.terminator
            .metrics
            .evictions
            .with_label_values(&["pdb_blocked"])
            .get(),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn the_grace_period_forces_what_pdbs_and_do_not_disrupt_hold() {
    let mut s = setup().await;
    s.cluster.add_pod(
        "db",
        "n1",
        json!({"spec": {"terminationGracePeriodSeconds": 10}}),
    );
    s.cluster.world().pdb.insert("db".into());
    s.cluster.add_pod(
        "batch",
        "n1",
        json!({"metadata": {"annotations": {"karpenter.sh/do-not-disrupt": "true"}}}),
    );
    // terminationGracePeriod 60s: at 20s nothing is forced yet.
    let step = s.terminator.step(&mut s.claim, &cx(20, Some(60))).await;
    assert_eq!(
        step,
        Step::Draining("2 pods left: 1 blocked by PodDisruptionBudgets, 1 do-not-disrupt".into())
    );
    assert!(s.cluster.world().deletions.is_empty());
    // At 31s the do-not-disrupt pod (30s of its own) must start going: 29s left.
    tokio::time::advance(Duration::from_secs(11)).await;
    s.terminator.step(&mut s.claim, &cx(31, Some(60))).await;
    assert_eq!(s.cluster.world().deletions, [("batch".to_owned(), 29)]);
    // At 50s the PDB-held pod (10s) is deleted with the 10s left, past its budget.
    tokio::time::advance(Duration::from_secs(19)).await;
    s.terminator.step(&mut s.claim, &cx(50, Some(60))).await;
    assert_eq!(
        s.cluster.world().deletions,
        [("batch".to_owned(), 29), ("db".to_owned(), 10)]
    );
    assert_eq!(
        s.terminator.step(&mut s.claim, &cx(51, Some(60))).await,
        Step::Done
    );
    assert_eq!(s.cloud.deletes_of("i-1"), 1);
}

#[tokio::test(start_paused = true)]
async fn do_not_disrupt_holds_without_a_grace_period() {
    let mut s = setup().await;
    s.cluster.add_pod(
        "batch",
        "n1",
        json!({"metadata": {"annotations": {"karpenter.sh/do-not-disrupt": "true"}}}),
    );
    for i in 1..20 {
        tokio::time::advance(Duration::from_secs(60)).await;
        let step = s.terminator.step(&mut s.claim, &cx(i * 60, None)).await;
        assert_eq!(step, Step::Draining("1 pods left: 1 do-not-disrupt".into()));
    }
    assert!(s.cluster.world().evictions.is_empty());
    assert!(s.cluster.world().deletions.is_empty());
    assert_eq!(deletes(&s.cloud), 0);
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_resumes_without_a_second_terminate_or_a_lost_finalizer() {
    let mut s = setup().await;
    // The old leader terminated the instance and recorded it, then stopped (the instance takes
    // a while to go: a Get still shows it running once).
    s.cloud.fail_next(
        crate::cloud::fake::Op::Get,
        crate::cloud::fake::ec2_error("DescribeInstances", "RequestLimitExceeded"),
    );
    let step = s.terminator.step(&mut s.claim, &cx(1, None)).await;
    assert!(matches!(step, Step::Retry(_)), "{step:?}");
    assert_eq!(
        deletes(&s.cloud),
        0,
        "no terminate without knowing the instance's state"
    );
    let step = s.terminator.step(&mut s.claim, &cx(2, None)).await;
    assert_eq!(step, Step::Done);
    assert_eq!(s.cloud.deletes_of("i-1"), 1);
    // A second run on a fresh leader from the stored claim does nothing more.
    let again = setup().await;
    again.cloud.add_instance(instance("i-1"));
    let mut stored = again.claims.get("pool-abc").await.unwrap().unwrap();
    stored.status_mut().instance_terminated_at = Some(time_at(start()));
    again.claims.write_status(&stored).await.unwrap();
    let mut new_leader = terminator(&again.cluster, &again.cloud, &again.claims);
    // Still running as far as EC2 says: wait, do not terminate again.
    assert_eq!(
        new_leader.step(&mut stored, &cx(3, None)).await,
        Step::AwaitingInstance
    );
    assert_eq!(deletes(&again.cloud), 0);
    assert!(
        again.claims.get("pool-abc").await.unwrap().is_some(),
        "finalizer kept"
    );
    again.cloud.forget("i-1");
    assert_eq!(new_leader.step(&mut stored, &cx(4, None)).await, Step::Done);
    assert_eq!(deletes(&again.cloud), 0);
    assert!(again.claims.get("pool-abc").await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn an_instance_whose_launch_answer_was_lost_is_found_by_its_tag() {
    let mut s = setup().await;
    s.claim.status_mut().instance_id = None;
    s.claim.status_mut().node_name = None;
    assert_eq!(
        s.terminator.step(&mut s.claim, &cx(1, None)).await,
        Step::Done
    );
    assert!(s.cloud.calls().contains(&Call::FindByClaim {
        claim: "pool-abc".into()
    }));
    assert_eq!(s.cloud.deletes_of("i-1"), 1);
}

#[test]
fn reasons_become_metric_labels() {
    assert_eq!(metric_reason("Empty"), "empty");
    assert_eq!(metric_reason("RegistrationTimeout"), "registration_timeout");
    assert_eq!(metric_reason("InstanceGone"), "instance_gone");
}

#[tokio::test(start_paused = true)]
async fn attached_volumes_hold_the_instance_until_they_detach_or_the_wait_runs_out() {
    let mut s = setup().await;
    s.cluster
        .world()
        .attachments
        .push(("n1".into(), "pv-data".into()));
    let step = s.terminator.step(&mut s.claim, &cx(1, None)).await;
    assert_eq!(
        step,
        Step::Draining("drained; waiting for 1 volumes to detach: pv-data".into())
    );
    assert_eq!(
        deletes(&s.cloud),
        0,
        "no terminate while a volume is attached"
    );
    s.cluster.world().attachments.clear();
    assert_eq!(
        s.terminator.step(&mut s.claim, &cx(2, None)).await,
        Step::Done
    );
    assert_eq!(s.cloud.deletes_of("i-1"), 1);

    // A volume that never detaches (a pod the drain leaves holds it) is waited for 5 minutes.
    let mut stuck = setup().await;
    stuck
        .cluster
        .world()
        .attachments
        .push(("n1".into(), "pv-agent".into()));
    assert!(matches!(
        stuck.terminator.step(&mut stuck.claim, &cx(1, None)).await,
        Step::Draining(_)
    ));
    tokio::time::advance(Duration::from_secs(299)).await;
    assert!(matches!(
        stuck
            .terminator
            .step(&mut stuck.claim, &cx(300, None))
            .await,
        Step::Draining(_)
    ));
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(
        stuck
            .terminator
            .step(&mut stuck.claim, &cx(302, None))
            .await,
        Step::Done
    );
}
