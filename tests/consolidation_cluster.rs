//! Consolidation of underused nodes, end to end on the real control plane (see
//! `disruption_cluster.rs` for the pieces: apiserver, controller-manager, kube-scheduler with
//! nodewright's extender, moto for EC2, kwok, `nodewright serve` under the chart's RBAC).
//!
//! - three nodes each a third used become one: two are deleted, their pods move to the third,
//!   and a PodDisruptionBudget holds throughout;
//! - a replacement saving less than the Policy's thresholds is not taken (and said so in an
//!   `Unconsolidatable` Event); with the thresholds at zero it is, new node first;
//! - `nodewright consolidate --from-cluster` names the move the cluster offers and the nodes
//!   that stay, and `--from-file` on a `kubectl get nodes,pods,pdb -A -o json` dump agrees.

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::controlplane;
use common::served::{
    World, claim_instance, claim_name, claim_node, deleting, deployment, ended, finish,
    instance_state, metric_sum, pool_config, start_clean,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};

/// One test at a time on this binary's control plane (Nodes and NodeClaims are cluster-wide).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Pool `pool` of `types` consolidating underused nodes `after` their pods last changed, with
/// no budget limit, no stabilization window, and the Policy's `consolidation` thresholds (YAML
/// flow text; empty: the defaults).
fn config(namespace: &str, pool: &str, types: &str, after: &str, thresholds: &str) -> String {
    let disruption = format!(
        r#"{{consolidationPolicy: WhenEmptyOrUnderutilized, consolidateAfter: {after}, budgets: [{{nodes: "100%"}}]}}"#
    );
    let mut text = pool_config(namespace, pool, types, &disruption, "");
    // No stabilization window: the tests remove room holders and want the move at once.
    let consolidation = if thresholds.is_empty() {
        "{stabilizationWindow: 0s}".to_owned()
    } else {
        thresholds.replacen('{', "{stabilizationWindow: 0s, ", 1)
    };
    text.push_str(&format!("  consolidation: {consolidation}\n"));
    text
}

/// Room holders: `n` pods of 2500m, one per c5.xlarge (3920m allocatable), so that the 1000m
/// pods created next land one per node. Returns the claims.
async fn fill(world: &World, pool: &str, n: usize) -> Vec<Value> {
    create(world, deployment("filler", n as i32, pool, "2500m")).await;
    let claims = world.wait_running("filler", n).await;
    assert_eq!(claims.len(), n, "{claims:?}\n{}", world.logs());
    claims
}

/// Removes the room holders; returns when their last pod is gone.
async fn unfill(world: &World) -> Instant {
    world.scale("filler", 0).await;
    world
        .wait_until("the filler pods gone", Duration::from_secs(60), || async {
            world.pods_of("filler").await.is_empty()
        })
        .await;
    Instant::now()
}

async fn create(world: &World, d: Deployment) {
    Api::<Deployment>::namespaced(world.client.clone(), &world.namespace)
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
}

async fn create_pdb(world: &World, app: &str, spec: Value) {
    let mut spec = spec;
    spec["selector"] = json!({"matchLabels": {"app": app}});
    Api::<PodDisruptionBudget>::namespaced(world.client.clone(), &world.namespace)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": app}, "spec": spec,
            }))
            .unwrap(),
        )
        .await
        .unwrap();
}

/// Waits until the PodDisruptionBudget `name` allows `allowed` disruptions.
async fn wait_pdb(world: &World, name: &str, allowed: i32) {
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(world.client.clone(), &world.namespace);
    world
        .wait_until("the PDB observed", Duration::from_secs(30), || async {
            pdbs.get(name)
                .await
                .ok()
                .and_then(|p| p.status)
                .is_some_and(|s| s.disruptions_allowed == Some(allowed))
        })
        .await;
}

/// The nodes of `app`'s pods that are running, ready and not terminating.
async fn ready_on(world: &World, app: &str) -> Vec<String> {
    Api::<Pod>::namespaced(world.client.clone(), &world.namespace)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(ready)
        .filter_map(|p| p.spec?.node_name)
        .collect()
}

fn ready(p: &Pod) -> bool {
    let status = p.status.as_ref();
    p.metadata.deletion_timestamp.is_none()
        && status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Watches `app`'s pods: the fewest ready at once since the watch began (every change seen,
/// not samples).
fn fewest_ready(world: &World, app: &str) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    use futures::StreamExt;
    use kube::runtime::watcher::{self, Event as Change};
    let fewest = Arc::new(AtomicUsize::new(usize::MAX));
    let api = Api::<Pod>::namespaced(world.client.clone(), &world.namespace);
    let config = watcher::Config::default().labels(&format!("app={app}"));
    let task = tokio::spawn({
        let fewest = fewest.clone();
        async move {
            let mut pods: HashMap<String, bool> = HashMap::new();
            let mut synced = false;
            let mut changes = watcher::watcher(api, config).boxed();
            while let Some(Ok(change)) = changes.next().await {
                match change {
                    Change::Apply(p) | Change::InitApply(p) => {
                        pods.insert(p.metadata.name.clone().unwrap_or_default(), ready(&p));
                    }
                    Change::Delete(p) => {
                        pods.remove(&p.metadata.name.unwrap_or_default());
                    }
                    Change::Init => pods.clear(),
                    Change::InitDone => synced = true,
                }
                if synced {
                    let now = pods.values().filter(|r| **r).count();
                    fewest.fetch_min(now, Ordering::SeqCst);
                }
            }
        }
    });
    (fewest, task)
}

/// The notes of the Events with `reason` about NodeClaim `claim`.
async fn claim_events(world: &World, claim: &str, reason: &str) -> Vec<String> {
    Api::<Event>::all(world.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(claim)
        })
        .filter_map(|e| e.note)
        .collect()
}

fn instance_type(claim: &Value) -> String {
    claim["status"]["instanceType"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_third_used_nodes_become_one() {
    let _serial = SERIAL.lock().await;
    let plane = controlplane::shared();
    let world = start_clean(plane, "consol", |ns| {
        config(ns, "packed", "c5.xlarge", "10s", "")
    })
    .await;
    create_pdb(&world, "app", json!({"minAvailable": 2})).await;
    let claims = fill(&world, "packed", 3).await;
    create(&world, deployment("app", 3, "packed", "1000m")).await;
    world.wait_running("app", 3).await;
    let nodes: HashSet<String> = ready_on(&world, "app").await.into_iter().collect();
    assert_eq!(nodes.len(), 3, "one app pod per node: {nodes:?}");
    wait_pdb(&world, "app", 1).await;
    let (fewest, watch) = fewest_ready(&world, "app");
    let changed = unfill(&world).await;

    // Two of the three go; the app never has fewer ready pods than its PDB allows.
    let instances: Vec<(String, String)> = claims
        .iter()
        .map(|c| (claim_name(c), claim_instance(c)))
        .collect();
    let mut first_deleted = None;
    let mut reasons = BTreeSet::new();
    let terminated = loop {
        assert!(
            changed.elapsed() < Duration::from_secs(150),
            "not consolidated\n{}\n--- claims\n{:#?}",
            world.logs(),
            world.claims().await
        );
        for c in world.claims().await.iter().filter(|c| deleting(c)) {
            first_deleted.get_or_insert_with(|| changed.elapsed());
            if let Some(r) = c["status"]["disruptionReason"].as_str() {
                reasons.insert(r.to_owned());
            }
        }
        let mut ended_now = Vec::new();
        for (claim, instance) in &instances {
            if ended(&instance_state(&world.ec2, instance).await) {
                ended_now.push(claim.clone());
            }
        }
        assert!(ended_now.len() <= 2, "all three terminated");
        if ended_now.len() == 2 {
            break changed.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let first_deleted = first_deleted.expect("claims deleted before their instances ended");
    eprintln!(
        "last pod change → first claim deleted: {:.1} s; → both instances terminated: {:.1} s",
        first_deleted.as_secs_f64(),
        terminated.as_secs_f64()
    );
    // consolidateAfter (10 s), then a second pass 10 s later confirms the move.
    assert!(
        first_deleted >= Duration::from_secs(15),
        "{first_deleted:?}\n{}",
        world.logs()
    );
    assert_eq!(
        reasons.into_iter().collect::<Vec<_>>(),
        ["Underutilized"],
        "disruption reasons"
    );
    world
        .wait_until(
            "one claim left, all app pods on its node",
            Duration::from_secs(60),
            || async {
                let claims = world.claims().await;
                let ready = ready_on(&world, "app").await;
                claims.len() == 1
                    && ready.len() == 3
                    && ready.iter().all(|n| *n == claim_node(&claims[0]))
            },
        )
        .await;
    watch.abort();
    let fewest = fewest.load(Ordering::SeqCst);
    eprintln!("fewest ready app pods at once (PDB minAvailable 2): {fewest}");
    assert_eq!(fewest, 2, "{}", world.logs());
    let kept = claim_name(&world.claims().await[0]);
    assert!(
        instances.iter().any(|(c, _)| *c == kept),
        "the node left is one of the three, not a new one"
    );
    let metrics = world.metrics().await;
    eprintln!(
        "{:?}",
        metrics
            .lines()
            .filter(|l| l.starts_with("nodewright_consolidation_moves")
                || l.starts_with("nodewright_consolidation_savings")
                || l.starts_with("nodewright_evictions_total")
                || l.starts_with("nodewright_nodes_terminated_total"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "nodewright_consolidation_moves_total",
            &["method=\"delete\"", "outcome=\"started\""]
        ),
        1.0,
        "one move deleting two nodes\n{metrics}"
    );
    assert!(
        metric_sum(
            &metrics,
            "nodewright_consolidation_savings_usd_per_hour_total",
            &[]
        ) > 0.3,
        "two c5.xlarge saved\n{metrics}"
    );
    finish(world, plane).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_saving_is_not_taken_until_the_thresholds_allow_it() {
    let _serial = SERIAL.lock().await;
    let plane = controlplane::shared();
    // m5.large ($0.096/h) first; m5a.large ($0.086/h) is allowed later.
    let world = start_clean(plane, "consol", |ns| {
        config(ns, "thrifty", "m5.large", "10s", "")
    })
    .await;
    create(&world, deployment("app", 1, "thrifty", "500m")).await;
    let claims = world.wait_running("app", 1).await;
    assert_eq!(claims.len(), 1, "{claims:?}");
    let (old, old_node, old_instance) = (
        claim_name(&claims[0]),
        claim_node(&claims[0]),
        claim_instance(&claims[0]),
    );
    assert_eq!(instance_type(&claims[0]), "m5.large", "{:?}", claims[0]);

    let wider = "m5.large, m5a.large";
    std::fs::write(
        world.config_path(),
        config(&world.namespace, "thrifty", wider, "10s", ""),
    )
    .unwrap();
    // $0.010/h saved, $0.008/h after one eviction: under the default $0.01/h.
    let widened = Instant::now();
    let mut said = None;
    while widened.elapsed() < Duration::from_secs(35) || said.is_none() {
        assert!(
            widened.elapsed() < Duration::from_secs(90),
            "no Unconsolidatable Event\n{}",
            world.logs()
        );
        let claims = world.claims().await;
        assert_eq!(claims.len(), 1, "{claims:#?}\n{}", world.logs());
        assert!(!deleting(&claims[0]), "{:?}", claims[0]);
        assert!(
            claims[0]["status"]["replacements"]
                .as_array()
                .is_none_or(Vec::is_empty),
            "{:?}",
            claims[0]
        );
        if said.is_none() {
            said = claim_events(&world, &old, "Unconsolidatable")
                .await
                .into_iter()
                .find(|n| n.contains("would save"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let said = said.unwrap();
    eprintln!("Unconsolidatable: {said}");
    assert!(
        said.contains("m5a.large") && said.contains("$0.0100/h"),
        "{said}"
    );
    let metrics = world.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "nodewright_consolidation_moves_total",
            &["outcome=\"started\""]
        ),
        0.0,
        "{metrics}"
    );
    assert!(
        metric_sum(
            &metrics,
            "nodewright_unconsolidatable_nodes",
            &["reason=\"small_saving\""]
        ) >= 1.0,
        "{metrics}"
    );

    let zero = "{minSavingsPerHour: 0, minSavingsPercent: 0, podEvictionCostPerHour: 0}";
    std::fs::write(
        world.config_path(),
        config(&world.namespace, "thrifty", wider, "10s", zero),
    )
    .unwrap();
    let lowered = Instant::now();
    // New capacity first: until the replacement registered, the old node keeps its pod.
    let replacement = loop {
        assert!(
            lowered.elapsed() < Duration::from_secs(90),
            "no replacement\n{}",
            world.logs()
        );
        let old_claim = world.claim(&old).await.expect("the old claim is there");
        let registered = world.registered_claims().await;
        let replacement = old_claim["status"]["replacements"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find_map(|r| registered.iter().find(|c| claim_name(c) == r).cloned());
        if let Some(r) = replacement {
            break r;
        }
        assert!(!deleting(&old_claim), "drained first: {old_claim}");
        assert_eq!(
            ready_on(&world, "app").await,
            std::slice::from_ref(&old_node)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let registered = lowered.elapsed();
    assert_eq!(instance_type(&replacement), "m5a.large", "{replacement}");
    let new_node = claim_node(&replacement);
    world
        .wait_until(
            "the old claim gone and the pod on the new node",
            Duration::from_secs(90),
            || async {
                world.claim(&old).await.is_none()
                    && ready_on(&world, "app").await == [new_node.clone()]
            },
        )
        .await;
    assert!(ended(&instance_state(&world.ec2, &old_instance).await));
    eprintln!(
        "thresholds lowered → replacement registered: {:.1} s; → old node gone, pod moved: {:.1} s",
        registered.as_secs_f64(),
        lowered.elapsed().as_secs_f64()
    );
    let metrics = world.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "nodewright_consolidation_moves_total",
            &["method=\"replace\"", "outcome=\"started\""]
        ),
        1.0,
        "{metrics}"
    );
    finish(world, plane).await;
}

/// `nodewright consolidate` with `args`, KUBECONFIG `kubeconfig`; its stdout as JSON.
fn consolidate(kubeconfig: &std::path::Path, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_nodewright"))
        .arg("consolidate")
        .args(args)
        .args(["--output", "json"])
        .env("KUBECONFIG", kubeconfig)
        .env("NODEWRIGHT_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_names_the_move_the_cluster_offers() {
    let _serial = SERIAL.lock().await;
    let plane = controlplane::shared();
    // An hour before the live controller would act; the CLI judges two hours later.
    let world = start_clean(plane, "consol", |ns| {
        config(ns, "offered", "c5.xlarge", "1h", "")
    })
    .await;
    create_pdb(&world, "app", json!({"maxUnavailable": 1})).await;
    fill(&world, "offered", 3).await;
    create(&world, deployment("app", 2, "offered", "1000m")).await;
    let mut pinned = serde_json::to_value(deployment("pinned", 1, "offered", "1000m")).unwrap();
    pinned["spec"]["template"]["metadata"]["annotations"] =
        json!({"karpenter.sh/do-not-disrupt": "true"});
    create(&world, serde_json::from_value(pinned).unwrap()).await;
    world.wait_running("app", 2).await;
    world.wait_running("pinned", 1).await;
    let app_nodes: BTreeSet<String> = ready_on(&world, "app").await.into_iter().collect();
    let pinned_node = ready_on(&world, "pinned").await.remove(0);
    assert_eq!(app_nodes.len(), 2, "{app_nodes:?}");
    assert!(!app_nodes.contains(&pinned_node));
    unfill(&world).await;
    wait_pdb(&world, "app", 1).await;

    let config = world.config_path();
    let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(2)).to_string();
    let common = ["--config", config.to_str().unwrap(), "--now", &later];
    let kubeconfig = &plane.admin_kubeconfig;
    let live = consolidate(kubeconfig, &[&common[..], &["--from-cluster"]].concat());
    eprintln!("--from-cluster: {}", serde_json::to_string(&live).unwrap());
    let moves = live["moves"].as_array().unwrap();
    assert_eq!(moves.len(), 1, "{live:#}");
    assert_eq!(moves[0]["method"], "delete", "{live:#}");
    let moved: BTreeSet<String> = moves[0]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(moved, app_nodes, "{live:#}");
    let destinations = moves[0]["destinations"].as_object().unwrap();
    assert_eq!(destinations.len(), 2, "{live:#}");
    assert!(
        destinations.values().all(|d| *d == pinned_node.as_str()),
        "{live:#}"
    );
    let kept = live["kept"].as_array().unwrap();
    assert_eq!(kept.len(), 1, "{live:#}");
    assert_eq!(kept[0]["node"], pinned_node.as_str());
    assert_eq!(kept[0]["kind"], "doNotDisrupt", "{live:#}");

    // The same objects from a dump.
    let dump = tempfile::NamedTempFile::new().unwrap();
    let kubectl = Command::new("kubectl")
        .args(["get", "nodes,pods,pdb", "-A", "-o", "json"])
        .env("KUBECONFIG", kubeconfig)
        .stdout(dump.reopen().unwrap())
        .status()
        .unwrap();
    assert!(kubectl.success());
    let from_file = consolidate(
        kubeconfig,
        &[&common[..], &["--from-file", dump.path().to_str().unwrap()]].concat(),
    );
    assert_eq!(from_file["moves"], live["moves"], "{from_file:#}");
    assert_eq!(from_file["kept"], live["kept"], "{from_file:#}");
    // And the live controller, an hour short of consolidateAfter, did nothing.
    assert_eq!(world.claims().await.len(), 3);
    assert!(world.claims().await.iter().all(|c| !deleting(c)));
    finish(world, plane).await;
}
