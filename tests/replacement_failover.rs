//! A leader that dies in the middle of replacing an expired node, end to end on the real control
//! plane with two replicas (tests/common/failover.rs, as `disruption_failover.rs`): the pool's
//! nodes expire after [`EXPIRE_AFTER`], a Deployment runs on one node, and when it expires the
//! leader writes a replacement claim (annotated `nodewright.io/replaces`), launches it, and
//! records it in the old claim's `status.replacements`; the old node is drained once the
//! replacement registered. The kubelet stand-in registers nothing from just before the expiry
//! until the new leader has been watched for a while, so the old node cannot be drained before
//! the kill, and the new leader has time to make the mistake of deciding the expiry again.
//!
//! The leader is SIGKILLed at one of three points ([`KillAt`]); in every case exactly one
//! replacement instance is launched across both leaders, no second replacement claim is
//! written, the old instance is terminated exactly once, the pods end on the replacement, and
//! every running instance has a claim and every claim a running instance.

mod common;

use std::time::{Duration, Instant};

use common::aws;
use common::ec2proxy::Ec2Proxy;
use common::failover::{
    CLUSTER, Failover, claim_instance, claim_name, claim_node, log_lines, terminate_requests,
};
use common::served::{ended, instance_state};
use serde_json::Value;

/// The tests share the control plane's nodes and claims: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Long enough for the first node to register and run the pods before it expires.
const EXPIRE_AFTER: &str = "45s";
const PODS: usize = 3;
const CLAIM_TAG: &str = "nodewright.io/nodeclaim";

/// Where the leader dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KillAt {
    /// The replacement is launched (its CreateFleet answered) and recorded in the old claim's
    /// `status.replacements`; the old node is not drained yet.
    Recorded,
    /// The replacement claim is written and its CreateFleet waits at the proxy; after the kill
    /// the request is dropped without reaching EC2 (the leader died before launching).
    WrittenNotLaunched,
    /// As `WrittenNotLaunched`, but after the kill the request reaches EC2 (the instance is
    /// launched and tagged; the answer is lost with the leader).
    LaunchedUnanswered,
}

/// The claim a replacement claim was launched for.
fn replaces(claim: &Value) -> Option<&str> {
    claim["metadata"]["annotations"]["nodewright.io/replaces"].as_str()
}

fn replacements(claim: &Value) -> Vec<String> {
    claim["status"]["replacements"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect()
}

/// Every CreateFleet the proxy received, as (the claim tagged, answer status), in order.
fn fleets(proxy: &Ec2Proxy) -> Vec<(String, u16)> {
    proxy
        .requests("CreateFleet")
        .into_iter()
        .map(|r| {
            let claim = r
                .params
                .iter()
                .find(|(k, v)| {
                    k.starts_with("TagSpecification.") && k.ends_with(".Key") && v == CLAIM_TAG
                })
                .and_then(|(k, _)| r.param(&format!("{}.Value", k.strip_suffix(".Key")?)))
                .unwrap_or_default()
                .to_owned();
            (claim, r.status)
        })
        .collect()
}

async fn a_leader_killed_mid_replacement(at: KillAt) {
    let _serial = SERIAL.lock().await;
    let began = Instant::now();
    let mut w = Failover::new(Some(EXPIRE_AFTER)).await;
    let (first, second) = w.start_leader_and_standby().await;
    w.deploy_app(PODS, "200m", Duration::from_secs(40)).await;
    let claims = w.claims().await;
    assert_eq!(claims.len(), 1, "expired too early? {claims:#?}");
    assert!(replacements(&claims[0]).is_empty(), "{claims:#?}");
    let (old, node, instance) = (
        claim_name(&claims[0]),
        claim_node(&claims[0]),
        claim_instance(&claims[0]),
    );
    eprintln!("{at:?}: old claim {old}, node {node}, instance {instance}");

    // From now on no node registers: the old node stays undrained, whatever the leaders do.
    w.kubelets.as_ref().unwrap().set_paused(true);
    if at != KillAt::Recorded {
        w.proxy.hold("CreateFleet");
    }
    let reached = w
        .wait_until(
            "the kill point (the expiry's replacement)",
            Duration::from_secs(90),
            || async {
                match at {
                    KillAt::Recorded => w
                        .claim(&old)
                        .await
                        .is_some_and(|c| !replacements(&c).is_empty()),
                    _ => {
                        w.proxy.holding("CreateFleet") == 1
                            && w.claims()
                                .await
                                .iter()
                                .any(|c| replaces(c) == Some(old.as_str()))
                    }
                }
            },
        )
        .await;
    let claims = w.claims().await;
    let old_claim = claims.iter().find(|c| claim_name(c) == old).unwrap();
    let written: Vec<&Value> = claims
        .iter()
        .filter(|c| replaces(c) == Some(old.as_str()))
        .collect();
    assert_eq!(written.len(), 1, "{claims:#?}");
    let replacement = claim_name(written[0]);
    assert_eq!(old_claim["status"]["phase"], "Registered", "{old_claim}");
    assert!(old_claim["metadata"]["deletionTimestamp"].is_null());
    match at {
        KillAt::Recorded => {
            assert_eq!(replacements(old_claim), [replacement.as_str()]);
            assert!(
                written[0]["status"]["instanceID"].is_string(),
                "{claims:#?}"
            );
        }
        _ => {
            assert!(replacements(old_claim).is_empty(), "{old_claim}");
            assert!(written[0]["status"]["instanceID"].is_null(), "{claims:#?}");
        }
    }
    eprintln!(
        "{at:?}: replacement {replacement} written {:.1} s after the node was paused; killing replica-0",
        reached.as_secs_f64()
    );

    w.kill(first);
    let killed = Instant::now();
    match at {
        KillAt::Recorded => {}
        KillAt::WrittenNotLaunched => w.proxy.release("CreateFleet", false),
        KillAt::LaunchedUnanswered => w.proxy.release("CreateFleet", true),
    }
    let failover = w
        .wait_until(
            "replica-1 leading after the kill",
            Duration::from_secs(60),
            || async { w.leading(second).await },
        )
        .await;
    eprintln!(
        "{at:?}: leader killed → replica-1 leads: {:.1} s",
        failover.as_secs_f64()
    );

    // The new leader, four reconciles in: the one replacement, the old node not drained.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(8) {
        let claims = w.claims().await;
        let replacing: Vec<String> = claims
            .iter()
            .filter(|c| replaces(c) == Some(old.as_str()))
            .map(claim_name)
            .collect();
        assert_eq!(
            replacing,
            [replacement.as_str()],
            "a second replacement claim\n{}",
            w.logs()
        );
        let o = claims.iter().find(|c| claim_name(c) == old).unwrap();
        assert!(
            o["status"]["phase"] == "Registered" && o["metadata"]["deletionTimestamp"].is_null(),
            "the old node went before its replacement registered: {o}\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    w.wait_until(
        "the old claim naming its replacement, launched",
        Duration::from_secs(30),
        || async {
            w.claim(&old)
                .await
                .is_some_and(|c| replacements(&c) == [replacement.as_str()])
                && w.claim(&replacement)
                    .await
                    .is_some_and(|c| c["status"]["instanceID"].is_string())
        },
    )
    .await;

    // The replacement's age counts from its creation: expiry off before it comes due (the new
    // leader has had its chance to decide the old node's expiry again), then nodes register.
    w.set_expire_after(Some("Never"));
    w.wait_until(
        "replica-1 reloading the config",
        Duration::from_secs(30),
        || async { !log_lines(&w.replica_logs(second), "config reloaded", &[]).is_empty() },
    )
    .await;
    w.kubelets.as_ref().unwrap().set_paused(false);
    let gone = w
        .wait_until(
            "the old claim, Node and instance gone",
            Duration::from_secs(120),
            || async {
                w.claim(&old).await.is_none()
                    && w.node(&node).await.is_none()
                    && ended(&instance_state(&w.ec2, &instance).await)
            },
        )
        .await;
    let kill_to_gone = killed.elapsed();
    let new = w.claim(&replacement).await.unwrap();
    let new_node = claim_node(&new);
    let new_instance = claim_instance(&new);
    w.wait_until(
        "the pods running on the replacement",
        Duration::from_secs(60),
        || async {
            let pods = w.pods_of("app").await;
            pods.len() == PODS
                && pods
                    .iter()
                    .all(|(_, n, running)| *running && n.as_deref() == Some(new_node.as_str()))
        },
    )
    .await;
    // Let any late (second) call show up.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let fleets = fleets(&w.proxy);
    eprintln!("{at:?}: CreateFleet (claim, status): {fleets:?}");
    let launched: Vec<&str> = fleets
        .iter()
        .filter(|(_, status)| *status == 200)
        .map(|(claim, _)| claim.as_str())
        .collect();
    assert_eq!(
        launched,
        [old.as_str(), replacement.as_str()],
        "one launch reaching EC2 per claim: {fleets:?}\n{}",
        w.logs()
    );
    assert_eq!(w.proxy.count("RunInstances"), 0);
    let instances = aws::cluster_instances(&w.ec2, CLUSTER).await;
    let running: Vec<(&str, &str)> = instances
        .iter()
        .map(|(id, .., claim)| (id.as_str(), claim.as_str()))
        .collect();
    assert_eq!(
        running,
        [(new_instance.as_str(), replacement.as_str())],
        "{}",
        w.logs()
    );
    let claims = w.claims().await;
    let names: Vec<String> = claims.iter().map(claim_name).collect();
    assert_eq!(names, [replacement.as_str()], "{claims:#?}");
    let terminates = terminate_requests(&w.proxy, &instance);
    assert_eq!(terminates, [200], "{}", w.logs());
    assert!(terminate_requests(&w.proxy, &new_instance).is_empty());

    let adopted = log_lines(
        &w.replica_logs(second),
        "replacements found, written by an earlier leader; none launched again",
        &[("claim", &old)],
    );
    match at {
        KillAt::Recorded => assert!(adopted.is_empty(), "{adopted:?}"),
        _ => assert!(!adopted.is_empty(), "{}", w.logs()),
    }
    // Who launched the replacement: the old leader, or the new one (after an unanswered
    // CreateFleet, by finding the instance tagged with the claim).
    let launched_by = |i: usize| {
        log_lines(
            &w.replica_logs(i),
            "instance launched",
            &[("claim", &replacement)],
        )
    };
    let (by_old, by_new) = (launched_by(first), launched_by(second));
    match at {
        KillAt::Recorded => assert!(by_old.len() == 1 && by_new.is_empty()),
        KillAt::WrittenNotLaunched => {
            assert!(by_old.is_empty() && by_new.len() == 1 && by_new[0]["reused"] == false)
        }
        KillAt::LaunchedUnanswered => {
            assert!(by_old.is_empty() && by_new.len() == 1 && by_new[0]["reused"] == true)
        }
    }
    eprintln!(
        "{at:?}: timings: kill → new leader {:.1} s; kill → old node gone {:.1} s (nodes registering again → gone {:.1} s); test {:.1} s",
        failover.as_secs_f64(),
        kill_to_gone.as_secs_f64(),
        gone.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_after_recording_the_replacement_neither_leaks_nor_doubles_a_node() {
    a_leader_killed_mid_replacement(KillAt::Recorded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_between_writing_and_launching_the_replacement_neither_leaks_nor_doubles_a_node()
 {
    a_leader_killed_mid_replacement(KillAt::WrittenNotLaunched).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_with_the_replacements_launch_unanswered_neither_leaks_nor_doubles_a_node()
{
    a_leader_killed_mid_replacement(KillAt::LaunchedUnanswered).await;
}
