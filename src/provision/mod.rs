//! The provisioner: unschedulable pods (from the pod watch and from the extender's filter) are
//! batched, planned with [`crate::scheduling::solve`], written down as NodeClaims, and only then
//! launched; claims are tracked until their Node registers, and cleaned up when it never does.
//!
//! One task owns all provisioning state, so there are no locks beyond the shared node view.
//! Every replica runs it and follows the watches; only the Lease holder plans, writes claims and
//! calls EC2. A new leader lists the claims and carries on: pending claims are launched (the
//! launcher first looks for an instance tagged with the claim, and passes the claim's UID as the
//! CreateFleet ClientToken, so nothing launches twice), launched claims wait for their Node.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

mod capacity;
mod claims;
mod consolidation;
mod coverage;
mod disruption;
mod drift;
mod gc;
pub mod interruption;
mod launch;
mod registration;
mod replacement;
mod startup;
mod termination;
pub mod terminator;
#[cfg(test)]
mod tests;

use claims::{claim_for, launch_request};

use crate::cloud::launch::{ClusterInfo, LaunchError, LaunchOffering, LaunchRequest, Launched};
use crate::cloud::provider::CloudProvider;
use crate::cluster::daemonsets::DaemonSets;
use crate::cluster::events::{EventSink, Kind};
use crate::cluster::nodeclaims::{
    CLAIM_TAG, ClaimOffering, ClaimStore, NodeClaim, NodeClaimSpec, Phase, time_now,
};
use crate::cluster::nodes::ClusterOps;
use crate::cluster::state::{ClusterEvent, ClusterState, pod_key};
use crate::config::Config;
use crate::metrics::ProvisionMetrics;
use crate::model::catalog::{CapacityType, Catalog, labels};
use crate::model::requirements::{Operator, Requirement};
use crate::model::resources::{NAMES, Resources, format_slot};
use crate::model::taints::Taint;
use crate::scheduling::batcher::Batcher;
use crate::scheduling::solver::{ExistingNode, Input, PlannedNode, Pool, Usage};
use crate::scheduling::view::PromisedPod;
use crate::scheduling::{PendingPod, solve, volumes};

/// Nodes register with this taint (NoExecute, as Karpenter's `karpenter.sh/unregistered`), so
/// nothing is scheduled onto them before nodewright has put its reservation and the pool's
/// labels and taints in place; registration removes it.
pub const UNREGISTERED_TAINT: &str = "nodewright.io/unregistered";

/// How many times a claim's launch is tried before it is marked Failed.
const MAX_LAUNCH_ATTEMPTS: u32 = 5;
/// The wait after the n-th failed launch of a claim: 2 s doubling to 60 s.
const LAUNCH_RETRY: crate::model::backoff::Backoff = crate::model::backoff::Backoff {
    base: Duration::from_secs(2),
    cap: Duration::from_secs(60),
    max_attempts: MAX_LAUNCH_ATTEMPTS,
    jitter: false,
};
/// How long Failed claims stay visible before they are deleted.
const FAILED_CLAIM_TTL: Duration = Duration::from_secs(600);
/// How long free capacity stays promised to planned pods that have not been bound yet.
const PROMISE_TTL: Duration = Duration::from_secs(180);
/// How often claims are reconciled (registration timeouts, retries).
const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// How often instances without a claim are looked for.
const ORPHAN_SCAN_EVERY: Duration = Duration::from_secs(60);
/// How often claims being terminated are stepped (evictions, the instance) between reconciles.
const DRAIN_EVERY: Duration = Duration::from_millis(500);

/// Everything the provisioner needs.
pub struct Provisioner {
    pub config: Arc<ArcSwap<Config>>,
    pub catalog: Arc<dyn Fn() -> Arc<Catalog> + Send + Sync>,
    pub claims: ClaimStore,
    /// `None`: no EC2 access could be set up; claims are written but fail to launch.
    pub cloud: Option<Arc<dyn CloudProvider>>,
    /// Nodes and pods as the termination flow changes them ([`crate::cluster::nodes::NoCluster`]
    /// when standalone).
    pub nodes: Arc<dyn ClusterOps>,
    pub state: ClusterState,
    /// `None` when there is no cluster (standalone).
    pub client: Option<Client>,
    pub metrics: ProvisionMetrics,
    pub disruption_metrics: crate::metrics::disruption::DisruptionMetrics,
    pub leader: watch::Receiver<bool>,
    /// Kubernetes Events about pods and claims.
    pub events: EventSink,
    /// The cluster's DaemonSets, for the per-node overhead of new nodes (empty when standalone).
    pub daemonsets: Arc<DaemonSets>,
    /// The cluster's PersistentVolumeClaims, PersistentVolumes and StorageClasses, for where
    /// pods with volumes may run (empty when standalone).
    pub volumes: Arc<crate::cluster::volumes::Volumes>,
}

/// A plan and what it was made from.
struct Planned {
    catalog: Catalog,
    pools: Vec<Pool>,
    pending: Vec<PendingPod>,
    plan: crate::scheduling::solver::Plan,
}

/// Per-pod bookkeeping.
struct Waiting {
    pod: Arc<Pod>,
}

struct Run {
    p: Provisioner,
    batcher: Batcher<()>,
    /// Unschedulable pods not yet settled, by key.
    waiting: HashMap<String, Waiting>,
    /// Claims by name, as last written.
    claims: BTreeMap<String, NodeClaim>,
    /// When each claim was last tried, for retry back-off.
    next_attempt: HashMap<String, Instant>,
    /// Nodes by instance id (from providerID), from the node watch.
    nodes_by_instance: HashMap<String, Arc<Node>>,
    /// Pods' first-seen instants survive their leaving `waiting` until their node registers.
    first_seen: HashMap<String, Instant>,
    last_orphan_scan: Option<Instant>,
    leading: bool,
    /// Which nodes are past their startup taints.
    startup: startup::Initialization,
    /// The termination flow's state machine.
    terminator: terminator::Terminator,
    /// When each claim last got a `DisruptionBlocked` Event from the budgets.
    blocked_events: HashMap<String, Instant>,
    /// When resolving each EC2NodeClass for the drift check last failed.
    class_resolve_failed: HashMap<String, Instant>,
    /// Consolidation's memory between passes.
    consolidation: consolidation::Consolidation,
    /// Pods a registered claim stopped covering (its node turned them away, or their promise ran
    /// out): pod key to that claim's name.
    released: HashMap<String, String>,
}

impl Provisioner {
    /// Run until `shutdown`. `events` come from the watches, `unplaced` from the extender.
    pub async fn run(
        self,
        mut events: mpsc::UnboundedReceiver<ClusterEvent>,
        mut unplaced: mpsc::Receiver<Arc<Pod>>,
        shutdown: CancellationToken,
    ) {
        let batching = self.config.load().policy.batching.clone();
        let terminator = terminator::Terminator::new(
            self.nodes.clone(),
            self.cloud.clone(),
            self.claims.clone(),
            self.events.clone(),
            self.disruption_metrics.clone(),
        );
        let mut run = Run {
            batcher: Batcher::new(
                batching.idle().unwrap_or(Duration::from_secs(1)),
                batching.max().unwrap_or(Duration::from_secs(10)),
            ),
            p: self,
            waiting: HashMap::new(),
            claims: BTreeMap::new(),
            next_attempt: HashMap::new(),
            nodes_by_instance: HashMap::new(),
            first_seen: HashMap::new(),
            last_orphan_scan: None,
            leading: false,
            startup: startup::Initialization::default(),
            terminator,
            blocked_events: HashMap::new(),
            class_resolve_failed: HashMap::new(),
            consolidation: consolidation::Consolidation::default(),
            released: HashMap::new(),
        };
        if !run.p.claims.is_durable() {
            tracing::warn!(
                "standalone: NodeClaims are kept in memory only and are not durable; a restart forgets them (instances stay tagged with their claim)"
            );
        }
        let mut leader = run.p.leader.clone();
        let initially = *leader.borrow_and_update();
        run.set_leading(initially).await;
        // The sender goes away only in standalone runs (always leading) and at shutdown.
        let mut leader_open = true;
        let mut tick = tokio::time::interval(RECONCILE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain_tick = tokio::time::interval(DRAIN_EVERY);
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = run.batcher.deadline();
            tokio::select! {
                () = shutdown.cancelled() => break,
                changed = leader.changed(), if leader_open => {
                    if changed.is_err() {
                        leader_open = false;
                        continue;
                    }
                    let now_leading = *leader.borrow_and_update();
                    run.set_leading(now_leading).await;
                }
                Some(event) = events.recv() => run.on_event(event).await,
                Some(pod) = unplaced.recv() => run.on_unschedulable(pod),
                () = sleep_until(deadline) => {
                    if run.leading {
                        run.provision().await;
                    } else {
                        // Followers keep no batch: the leader sees the same pods through its
                        // own watch (or the scheduler's next filter call).
                        run.batcher.take();
                    }
                }
                _ = tick.tick() => {
                    if run.leading {
                        run.reconcile().await;
                    } else {
                        run.follow().await;
                    }
                }
                _ = drain_tick.tick(), if run.leading && run.terminating() => {
                    run.step_terminations().await;
                }
            }
        }
        tracing::info!("provisioner stopped");
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

impl Run {
    async fn set_leading(&mut self, leading: bool) {
        if leading == self.leading {
            return;
        }
        self.leading = leading;
        if !leading {
            self.p.metrics.leader.set(0);
        }
        if leading {
            match self.p.claims.list().await {
                Ok(list) => {
                    self.claims = list.into_iter().map(|c| (c.name().to_owned(), c)).collect();
                    tracing::info!(
                        claims = self.claims.len(),
                        "leading: resuming from existing NodeClaims"
                    );
                }
                Err(e) => tracing::error!(error = %e, "listing NodeClaims failed; will retry"),
            }
            let claims: Vec<NodeClaim> = self.claims.values().cloned().collect();
            self.sync_reservations(&claims);
            // Pods of claims in flight are not planned again.
            let covered = self.covered_pods();
            for key in covered {
                self.batcher.remove(&key);
            }
            // Nodes that registered while we were not leading.
            let nodes: Vec<Arc<Node>> = self.nodes_by_instance.values().cloned().collect();
            for node in nodes {
                self.try_register(&node).await;
            }
            self.reconcile().await;
            // Leading for the metric once the claims are resumed and reconciled.
            self.p.metrics.leader.set(1);
        }
        self.update_gauges();
    }

    async fn on_event(&mut self, event: ClusterEvent) {
        match event {
            ClusterEvent::Unschedulable(pod) => self.on_unschedulable(pod),
            ClusterEvent::PodSettled(key) => {
                self.waiting.remove(&key);
                self.released.remove(&key);
                self.batcher.remove(&key);
                self.update_gauges();
            }
            ClusterEvent::NodeApplied(node) => {
                self.startup.observe(&node, &self.p.config.load());
                if let Some(id) = instance_id(&node) {
                    self.nodes_by_instance.insert(id, node.clone());
                }
                if self.leading {
                    if node.metadata.deletion_timestamp.is_some() {
                        let name = node.metadata.name.clone().unwrap_or_default();
                        self.on_node_deleting(&name).await;
                    } else {
                        self.try_register(&node).await;
                        self.ensure_node_finalizer(&node).await;
                    }
                }
            }
            ClusterEvent::NodeDeleted(name) => {
                self.startup.forget(&name);
                self.nodes_by_instance
                    .retain(|_, n| n.metadata.name.as_deref() != Some(name.as_str()));
                if self.leading {
                    self.on_node_deleted(&name).await;
                }
            }
            ClusterEvent::Interruption { message, done } => {
                // Only a leader that acted answers; otherwise the poller leaves the message on
                // the queue (it is received again, by whoever leads then).
                if self.leading {
                    self.on_interruption(&message).await;
                    let _ = done.send(());
                }
            }
        }
    }

    fn on_unschedulable(&mut self, pod: Arc<Pod>) {
        let key = pod_key(&pod);
        if self.p.state.is_bound(&key) {
            return;
        }
        let now = Instant::now();
        self.first_seen.entry(key.clone()).or_insert(now);
        self.waiting
            .insert(key.clone(), Waiting { pod: pod.clone() });
        if self.note_turned_away(&key) || !self.covered_pods().contains(&key) {
            self.batcher.add(key, (), now);
        }
        self.update_gauges();
    }

    fn update_gauges(&self) {
        self.p
            .metrics
            .pending_pods
            .set(i64::try_from(self.waiting.len()).unwrap_or(i64::MAX));
        let mut by_phase: HashMap<Phase, i64> = HashMap::new();
        for c in self.claims.values() {
            *by_phase.entry(c.phase()).or_default() += 1;
        }
        for phase in Phase::ALL {
            self.p
                .metrics
                .claims
                .with_label_values(&[phase.as_str()])
                .set(by_phase.get(&phase).copied().unwrap_or(0));
        }
    }

    /// Close the batch: plan, write claims, launch.
    async fn provision(&mut self) {
        let now = Instant::now();
        let window = self.batcher.open_for(now);
        let keys: Vec<String> = self.batcher.take().into_iter().map(|(k, ())| k).collect();
        let covered = self.covered_pods();
        let pods: Vec<Arc<Pod>> = keys
            .iter()
            .filter(|k| !covered.contains(*k) && !self.p.state.is_bound(k))
            .filter_map(|k| self.waiting.get(k).map(|w| w.pod.clone()))
            .collect();
        let config = self.p.config.load_full();
        if pods.is_empty() && !self.static_missing(&config) {
            return;
        }
        if !pods.is_empty() {
            self.p.metrics.batch_size.observe(pods.len() as f64);
            self.p.metrics.batch_window.observe(window.as_secs_f64());
        }
        let Some(cluster) = cluster_info(&config) else {
            tracing::warn!(
                pods = pods.len(),
                "pods need new nodes, but spec.provisioning.clusterName is not set: nothing is launched"
            );
            return;
        };
        let started = Instant::now();
        let Planned {
            catalog,
            pools,
            pending,
            plan,
        } = self.plan_pods(&pods, &config);
        let plan_secs = started.elapsed().as_secs_f64();
        self.p.metrics.plan_duration.observe(plan_secs);
        let m = &self.p.metrics.plan_decisions;
        m.with_label_values(&["new_node"])
            .inc_by(plan.nodes.iter().map(|n| n.pods.len() as u64).sum::<u64>());
        m.with_label_values(&["existing_node"])
            .inc_by(plan.placements.len() as u64);
        m.with_label_values(&["unschedulable"])
            .inc_by(plan.unschedulable.len() as u64);
        tracing::info!(
            pods = pending.len(),
            new_nodes = plan.nodes.len(),
            existing = plan.placements.len(),
            unschedulable = plan.unschedulable.len(),
            price_per_hour = plan.total_price_per_hour,
            window_ms = window.as_millis() as u64,
            plan_ms = (plan_secs * 1000.0) as u64,
            "batch planned"
        );
        for u in &plan.unschedulable {
            tracing::info!(pod = %u.pod, reason = %u.reason, "pod cannot be placed on any new node");
            if let Some(w) = self.waiting.get(&u.pod) {
                self.p.events.pod(
                    &w.pod,
                    Kind::Warning,
                    "FailedProvisioning",
                    "Plan",
                    format!("nodewright cannot launch a node for this pod: {}", u.reason),
                );
            }
        }
        // Free capacity on existing nodes is promised to the pods planned onto it.
        {
            let mut view = self
                .p
                .state
                .view()
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for placement in &plan.placements {
                view.promise(
                    &placement.node,
                    &placement.pod,
                    PromisedPod::from(&pending[placement.pod_index]),
                    None,
                    Some(Instant::now() + PROMISE_TTL),
                );
            }
        }
        // Intent first: every claim is written before any launch.
        let mut written = Vec::new();
        for node in &plan.nodes {
            let Some(pool) = config.node_pools.get(&node.node_pool) else {
                continue;
            };
            let claim = claim_for(node, pool, &pools, &catalog, &pending);
            match self.create_claim(claim).await {
                Ok(claim) => {
                    tracing::info!(
                        claim = claim.name(),
                        node_pool = %node.node_pool,
                        instance_type = %node.instance_type,
                        zone = %node.zone,
                        capacity_type = node.capacity_type.as_str(),
                        pods = node.pods.len(),
                        "NodeClaim written"
                    );
                    {
                        let mut view = self
                            .p
                            .state
                            .view()
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        let name: Arc<str> = Arc::from(claim.name());
                        for pod in &claim.spec.pods {
                            view.await_claim(pod, name.clone());
                        }
                    }
                    for pod in &claim.spec.pods {
                        if let Some(w) = self.waiting.get(pod) {
                            self.p.events.pod(
                                &w.pod,
                                Kind::Normal,
                                "Nominated",
                                "Plan",
                                format!(
                                    "Pod should schedule on: nodeclaim/{} ({} {} in {}, NodePool {})",
                                    claim.name(),
                                    node.instance_type,
                                    node.capacity_type.as_str(),
                                    node.zone,
                                    node.node_pool
                                ),
                            );
                        }
                    }
                    self.claims.insert(claim.name().to_owned(), claim.clone());
                    written.push(claim.name().to_owned());
                }
                Err(e) => {
                    tracing::error!(error = %e, node_pool = %node.node_pool, "writing a NodeClaim failed; its pods wait for the next batch");
                    for pod in &node.pods {
                        if self.waiting.contains_key(pod) {
                            self.batcher.add(pod.clone(), (), Instant::now());
                        }
                    }
                }
            }
        }
        self.update_gauges();
        self.launch_claims(&written, &cluster).await;
    }

    /// Plan `pods` onto the cluster's nodes and new nodes of the pools, with the offerings the
    /// cloud found short left out: the batch's plan, and a drained node's replacements.
    fn plan_pods(&self, pods: &[Arc<Pod>], config: &Config) -> Planned {
        let mut catalog = (*(self.p.catalog)()).clone();
        if let Some(cloud) = &self.p.cloud {
            for (it, zone, ct) in cloud.unavailable() {
                catalog.set_available(&it, &zone, ct, false);
            }
        }
        let mut nodes = self.p.state.existing_nodes();
        self.startup.relax(&mut nodes, config);
        let pools = self.pools(config, &catalog, &nodes);
        let usable_zones = volumes::usable_zones(&pools, &catalog, &nodes);
        let pending: Vec<PendingPod> = self.p.volumes.read(|objects| {
            pods.iter()
                .map(|p| volumes::pending_pod(p, objects, &usable_zones))
                .collect()
        });
        let plan = solve(&Input {
            pods: &pending,
            pools: &pools,
            catalog: &catalog,
            nodes: &nodes,
        });
        Planned {
            catalog,
            pools,
            pending,
            plan,
        }
    }

    async fn create_claim(&self, mut claim: NodeClaim) -> Result<NodeClaim, String> {
        // What the node is launched from, for the drift check.
        {
            use crate::scheduling::disruption::drift::{
                NODECLASS_HASH, NODEPOOL_HASH, class_hash, pool_hash,
            };
            let config = self.p.config.load();
            let annotations = claim.metadata.annotations.get_or_insert_with(BTreeMap::new);
            if let Some(pool) = config.node_pools.get(&claim.spec.node_pool) {
                annotations.insert(NODEPOOL_HASH.to_owned(), pool_hash(pool));
            }
            if let Some(class) = config.node_classes.get(&claim.spec.node_class) {
                annotations.insert(NODECLASS_HASH.to_owned(), class_hash(class));
            }
        }
        // A name collision (409) gets a new suffix.
        for _ in 0..3 {
            let mut attempt = claim.clone();
            attempt.metadata.finalizers = Some(vec![
                crate::cluster::nodes::TERMINATION_FINALIZER.to_owned(),
            ]);
            attempt.metadata.name = Some(format!("{}-{}", claim.spec.node_pool, random_suffix()));
            if let Some(name) = attempt.metadata.name.clone() {
                attempt.spec.labels.insert(CLAIM_TAG.to_owned(), name);
            }
            match self.p.claims.create(&attempt).await {
                Ok(c) => return Ok(c),
                Err(crate::cluster::nodeclaims::ClaimError::Api(kube::Error::Api(e)))
                    if e.code == 409 => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("three name collisions in a row".to_owned())
    }

    /// Retries, registration timeouts, failed-claim clean-up, orphans, promise expiry.
    async fn reconcile(&mut self) {
        self.refresh_claims().await;
        let config = self.p.config.load_full();
        let provisioning = &config.policy.provisioning;
        let timeout = provisioning.registration_timeout();
        let now = Instant::now();
        self.p
            .state
            .view()
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .expire(now);
        let claims: Vec<NodeClaim> = self.claims.values().cloned().collect();
        let mut retry = Vec::new();
        for claim in claims {
            let name = claim.name().to_owned();
            let since_launch = claim
                .status
                .as_ref()
                .and_then(|s| s.launched_at.as_ref())
                .map(|t| crate::cluster::nodeclaims::since(&t.0));
            match claim.phase() {
                Phase::Pending if claim.age() > timeout => {
                    tracing::warn!(claim = %name, "claim never launched within the registration timeout");
                    self.requeue_pods(&claim);
                    self.begin_termination(claim, "RegistrationTimeout").await;
                }
                Phase::Pending if self.next_attempt.get(&name).is_none_or(|t| *t <= now) => {
                    retry.push(name);
                }
                Phase::Launched if since_launch.is_some_and(|d| d > timeout) => {
                    tracing::warn!(claim = %name, timeout_s = timeout.as_secs(), "node did not register in time: terminating");
                    self.p.events.claim(
                        &claim,
                        Kind::Warning,
                        "RegistrationTimeout",
                        "Terminate",
                        format!(
                            "No node registered within {} s of the launch: terminating the instance; its pods are planned again",
                            timeout.as_secs()
                        ),
                    );
                    self.requeue_pods(&claim);
                    self.begin_termination(claim, "RegistrationTimeout").await;
                }
                Phase::Failed if claim.age() > FAILED_CLAIM_TTL => {
                    self.begin_termination(claim, "LaunchFailed").await;
                }
                _ => {}
            }
        }
        if !retry.is_empty()
            && let Some(cluster) = cluster_info(&config)
        {
            // Claims written but not launched (a failed attempt, or a leader that stopped
            // between writing and launching).
            for name in &retry {
                self.next_attempt
                    .insert(name.clone(), now + Duration::from_secs(60));
            }
            self.launch_claims(&retry, &cluster).await;
        }
        // Launched claims whose node is already known.
        let launched: Vec<Arc<Node>> = self
            .claims
            .values()
            .filter(|c| c.phase() == Phase::Launched)
            .filter_map(|c| c.status.as_ref()?.instance_id.as_ref())
            .filter_map(|id| self.nodes_by_instance.get(id).cloned())
            .collect();
        for node in launched {
            self.try_register(&node).await;
        }
        if self
            .last_orphan_scan
            .is_none_or(|t| now - t >= ORPHAN_SCAN_EVERY)
        {
            self.last_orphan_scan = Some(now);
            self.collect_garbage(&config).await;
        }
        self.step_terminations().await;
        self.disrupt().await;
        let claims: Vec<NodeClaim> = self.claims.values().cloned().collect();
        self.sync_reservations(&claims);
        self.rebatch_uncovered();
        self.update_gauges();
        // Static pools are kept at their replicas without waiting for pods.
        if self.static_missing(&config) {
            self.provision().await;
        }
    }

    /// Whether any claim is in the termination flow.
    fn terminating(&self) -> bool {
        self.claims
            .values()
            .any(|c| c.phase() == Phase::Terminating)
    }

    /// Take what others changed in the store: claims deleted by a user (their deletion
    /// timestamp), claims gone, claims written by another leader.
    async fn refresh_claims(&mut self) {
        let stored = match self.p.claims.list().await {
            Ok(list) => list,
            Err(e) => {
                tracing::debug!(error = %e, "listing NodeClaims failed");
                return;
            }
        };
        let names: HashSet<String> = stored.iter().map(|c| c.name().to_owned()).collect();
        for claim in stored {
            match self.claims.get_mut(claim.name()) {
                Some(local) => {
                    if local.metadata.deletion_timestamp.is_none() {
                        local.metadata.deletion_timestamp = claim.metadata.deletion_timestamp;
                    }
                    local.metadata.finalizers = claim.metadata.finalizers;
                }
                None => {
                    self.claims.insert(claim.name().to_owned(), claim);
                }
            }
        }
        // Gone from the store (deleted without a finalizer): forget them, freeing their pods.
        let gone: Vec<NodeClaim> = self
            .claims
            .values()
            .filter(|c| !names.contains(c.name()))
            .cloned()
            .collect();
        for claim in gone {
            tracing::info!(claim = claim.name(), "NodeClaim gone from the store");
            self.release_reservations(&claim);
            self.claims.remove(claim.name());
            self.terminator.forget(claim.name());
        }
    }

    /// A follower serves the extender too: it keeps the claims' reservations in its view from
    /// the claims the leader writes.
    async fn follow(&mut self) {
        match self.p.claims.list().await {
            Ok(list) => {
                self.sync_reservations(&list);
                self.claims = list.into_iter().map(|c| (c.name().to_owned(), c)).collect();
            }
            Err(e) => tracing::debug!(error = %e, "listing NodeClaims failed (follower)"),
        }
    }

    /// Rebuild the view's reservations from the claims: pods of claims in flight wait for their
    /// claim's node; pods of registered claims hold a promise on it until bound or
    /// [`PROMISE_TTL`] after registration.
    fn sync_reservations(&self, claims: &[NodeClaim]) {
        let now = Instant::now();
        // Read before the view's write lock: the pod watch takes the state's lock, then the
        // view's (`ClusterState::bind`); asking the state under the view lock would invert that
        // order and deadlock (seen in the race benchmark).
        let bound: std::collections::HashSet<&str> = claims
            .iter()
            .flat_map(|c| c.spec.pods.iter())
            .filter(|pod| self.p.state.is_bound(pod))
            .map(|pod| pod.as_str())
            .collect();
        let mut view = self
            .p
            .state
            .view()
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        view.awaiting_claim.clear();
        for claim in claims {
            let name: Arc<str> = Arc::from(claim.name());
            let status = claim.status.as_ref();
            match claim.phase() {
                Phase::Pending | Phase::Launched => {
                    for pod in &claim.spec.pods {
                        if !bound.contains(pod.as_str()) && !view.promised_node.contains_key(pod) {
                            view.await_claim(pod, name.clone());
                        }
                    }
                }
                Phase::Registered => {
                    let (Some(node), Some(at)) = (
                        status.and_then(|s| s.node_name.as_deref()),
                        status.and_then(|s| s.registered_at.as_ref()),
                    ) else {
                        continue;
                    };
                    let Some(left) =
                        PROMISE_TTL.checked_sub(crate::cluster::nodeclaims::since(&at.0))
                    else {
                        continue;
                    };
                    for pod in &claim.spec.pods {
                        if bound.contains(pod.as_str())
                            || !self.waiting.contains_key(pod)
                            || self.released.get(pod).map(String::as_str) == Some(claim.name())
                            || view.reserved_for(pod) == Some(node)
                        {
                            continue;
                        }
                        let promised = self
                            .waiting
                            .get(pod)
                            .map(|w| PromisedPod::from(&PendingPod::from_pod(&w.pod)))
                            .unwrap_or_default();
                        view.promise(node, pod, promised, Some(name.clone()), Some(now + left));
                    }
                }
                Phase::Failed | Phase::Terminating => {}
            }
        }
    }
}

fn instance_id(node: &Node) -> Option<String> {
    let provider = node.spec.as_ref()?.provider_id.as_deref()?;
    let id = provider.strip_prefix("aws:///")?.rsplit('/').next()?;
    (id.starts_with("i-")).then(|| id.to_owned())
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

fn cluster_info(config: &Config) -> Option<ClusterInfo> {
    let p = &config.policy.provisioning;
    Some(ClusterInfo {
        name: p.cluster_name.clone()?,
        endpoint: p.cluster_endpoint.clone(),
        ca_bundle: p.cluster_ca_bundle.clone(),
        service_cidr: p.service_cidr.clone(),
    })
}
