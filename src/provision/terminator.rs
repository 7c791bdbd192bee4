//! The termination flow, one claim at a time (Karpenter's `node/termination` and
//! `nodeclaim/lifecycle` finalizers, in one state machine): taint the node
//! `karpenter.sh/disrupted:NoSchedule`, evict its pods through the Eviction API (a 429 from a
//! PodDisruptionBudget is retried with backoff; DaemonSet, mirror and finished pods stay;
//! do-not-disrupt pods wait for the grace period), delete what is left when the pool's
//! `terminationGracePeriod` runs out, terminate the instance once, wait until the cloud says it
//! is gone, then remove the Node's and the claim's finalizers.
//!
//! Every step reads the world again and is safe to repeat, so a new leader resumes where the
//! last one stopped: the instance's termination is recorded in the claim's status
//! (`instanceTerminatedAt`) and checked against the cloud before any second call.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use tokio::time::Instant;

use crate::cloud::provider::{CloudProvider, is_gone};
use crate::cluster::events::{EventSink, Kind};
use crate::cluster::nodeclaims::{ClaimStore, NodeClaim, since_at, time_at};
use crate::cluster::nodes::{
    ClusterError, ClusterOps, Eviction, TERMINATION_FINALIZER, has_finalizer, with_taint,
};
use crate::metrics::disruption::DisruptionMetrics;
use crate::model::backoff::Backoff;
use crate::model::taints::{Taint, TaintEffect};
use crate::scheduling::disruption::pods::{DISRUPTED_TAINT, PodDrain, classify, grace_seconds};

/// The wait after a pod's n-th refused eviction: 1 s doubling to 30 s.
const EVICTION_RETRY: Backoff = Backoff {
    base: Duration::from_secs(1),
    cap: Duration::from_secs(30),
    max_attempts: u32::MAX,
    jitter: false,
};
/// The longest wait for a drained node's volumes to detach (without a grace period to bound it).
const VOLUME_DETACH_WAIT: Duration = Duration::from_secs(300);
/// How often a blocked drain says so again (an Event).
const BLOCKED_EVENT_EVERY: Duration = Duration::from_secs(120);

/// The taint every node being disrupted carries.
pub fn disrupted_taint() -> Taint {
    Taint {
        key: DISRUPTED_TAINT.to_owned(),
        value: None,
        effect: TaintEffect::NoSchedule,
    }
}

/// Where a claim's termination stands after a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Pods are still on the node; why.
    Draining(String),
    /// The instance is being terminated.
    AwaitingInstance,
    /// A read or write failed; tried again next step.
    Retry(String),
    /// Finalizers removed: the claim (and its Node) are gone or going.
    Done,
}

/// What a step needs to know besides the claim.
pub struct Context<'a> {
    pub cluster_name: Option<&'a str>,
    /// The pool's `terminationGracePeriod`.
    pub grace: Option<Duration>,
    /// Wall-clock now (deadlines are kept in the claim's status, in wall-clock time).
    pub now: jiff::Timestamp,
}

/// Per-claim memory of a drain in progress (lost on a leader change, which only resets
/// backoffs and event pacing).
#[derive(Default)]
struct Drain {
    /// Pod UID → (refusals so far, next attempt).
    backoff: HashMap<String, (u32, Instant)>,
    /// Pods deleted past the grace period (UIDs), not deleted twice.
    forced: HashSet<String>,
    /// Pods evicted (UIDs), one Event each.
    evicted: HashSet<String>,
    last_blocked_event: Option<Instant>,
    /// When no pod held the node any more (the volume wait counts from it).
    drained_at: Option<Instant>,
}

pub struct Terminator {
    pub cluster: Arc<dyn ClusterOps>,
    pub cloud: Option<Arc<dyn CloudProvider>>,
    pub claims: ClaimStore,
    pub events: EventSink,
    pub metrics: DisruptionMetrics,
    drains: HashMap<String, Drain>,
}

impl Terminator {
    pub fn new(
        cluster: Arc<dyn ClusterOps>,
        cloud: Option<Arc<dyn CloudProvider>>,
        claims: ClaimStore,
        events: EventSink,
        metrics: DisruptionMetrics,
    ) -> Self {
        Self {
            cluster,
            cloud,
            claims,
            events,
            metrics,
            drains: HashMap::new(),
        }
    }

    /// Claims with a drain in progress in this process.
    pub fn in_progress(&self) -> usize {
        self.drains.len()
    }

    /// Forget a claim (it went away by other means).
    pub fn forget(&mut self, claim: &str) {
        self.drains.remove(claim);
    }

    /// Advance one claim's termination as far as it goes now. `claim` must already be in the
    /// flow (phase Terminating, `terminationStartedAt` set: see `Run::begin_termination`); the
    /// updated claim is written back into it.
    pub async fn step(&mut self, claim: &mut NodeClaim, cx: &Context<'_>) -> Step {
        let name = claim.name().to_owned();
        self.drains.entry(name.clone()).or_default();
        let node_name = claim.status.as_ref().and_then(|s| s.node_name.clone());
        let instance_done = claim
            .status
            .as_ref()
            .is_some_and(|s| s.instance_terminated_at.is_some());
        // 1. Drain, while the instance runs.
        if let Some(node_name) = &node_name
            && !instance_done
        {
            let node = match self.cluster.node(node_name).await {
                Ok(node) => node,
                Err(e) => return Step::Retry(format!("reading node {node_name}: {e}")),
            };
            if let Some(node) = node {
                match self.drain(claim, &node, cx).await {
                    Ok(None) => {}
                    Ok(Some(left)) => return Step::Draining(left),
                    Err(e) => return Step::Retry(format!("draining node {node_name}: {e}")),
                }
                // Volumes detach before the instance goes, so their next pods can attach them
                // elsewhere at once (an instance terminated with attached EBS volumes keeps
                // them attached until EC2 has shut it down).
                match self.volumes_left(claim, node_name, cx).await {
                    Ok(None) => {}
                    Ok(Some(left)) => return Step::Draining(left),
                    Err(e) => {
                        return Step::Retry(format!(
                            "listing the volumes of node {node_name}: {e}"
                        ));
                    }
                }
            }
        }
        // 2. The instance, once.
        if !instance_done {
            match self.terminate_instance(claim, cx).await {
                Ok(()) => {}
                Err(e) => return Step::Retry(e),
            }
        }
        // 3. Until the cloud says it is gone.
        if let (Some(cloud), Some(id)) = (
            &self.cloud,
            claim.status.as_ref().and_then(|s| s.instance_id.clone()),
        ) {
            match cloud.get(&id).await {
                Ok(Some(i)) if !is_gone(&i.state) => return Step::AwaitingInstance,
                Ok(_) => {}
                Err(e) => return Step::Retry(format!("describing instance {id}: {e}")),
            }
        }
        // 4. The Node object: deleted, then its finalizer removed.
        if let Some(node_name) = &node_name
            && let Err(e) = self.release_node(node_name).await
        {
            return Step::Retry(format!("releasing node {node_name}: {e}"));
        }
        // 5. The claim.
        if let Err(e) = self.release_claim(&name).await {
            return Step::Retry(format!("removing the finalizer of claim {name}: {e}"));
        }
        let reason = claim
            .status
            .as_ref()
            .and_then(|s| s.disruption_reason.clone())
            .unwrap_or_else(|| "Deleted".to_owned());
        if let Some(started) = claim
            .status
            .as_ref()
            .and_then(|s| s.termination_started_at.as_ref())
        {
            self.metrics
                .termination_duration
                .observe(since_at(&started.0, cx.now).as_secs_f64());
        }
        self.metrics
            .nodes_terminated
            .with_label_values(&[&claim.spec.node_pool, &metric_reason(&reason)])
            .inc();
        self.events.claim(
            claim,
            Kind::Normal,
            "Terminated",
            "Terminate",
            format!(
                "Instance {} gone and finalizers removed ({reason})",
                claim
                    .status
                    .as_ref()
                    .and_then(|s| s.instance_id.as_deref())
                    .unwrap_or("(none)")
            ),
        );
        tracing::info!(claim = %name, reason, "claim terminated");
        self.drains.remove(&name);
        Step::Done
    }

    /// Taint, evict, force past the deadline. `Ok(None)` once nothing holds the node, else what
    /// is left.
    async fn drain(
        &mut self,
        claim: &mut NodeClaim,
        node: &Node,
        cx: &Context<'_>,
    ) -> Result<Option<String>, ClusterError> {
        let name = claim.name().to_owned();
        if let Some(taints) = with_taint(node, &disrupted_taint()) {
            self.cluster.set_taints(node, taints).await?;
        }
        let node_name = node.metadata.name.as_deref().unwrap_or_default();
        let pods = self.cluster.pods_on(node_name).await?;
        let holding: Vec<(&Pod, PodDrain)> = pods
            .iter()
            .map(|p| (p, classify(p)))
            .filter(|(_, c)| c.holds())
            .collect();
        if holding.is_empty() {
            if claim.condition_is("Drained") != Some(true) {
                claim.set_condition("Drained", true, "Drained", "no pods left to evict");
                self.write_status(claim).await;
            }
            return Ok(None);
        }
        // Seconds left before the pool's terminationGracePeriod runs out.
        let remaining: Option<i64> = cx.grace.map(|grace| {
            let started = claim
                .status
                .as_ref()
                .and_then(|s| s.termination_started_at.as_ref())
                .map(|t| t.0)
                .unwrap_or(cx.now);
            let deadline = started.as_second() + i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
            deadline - cx.now.as_second()
        });
        let noncritical_left = holding
            .iter()
            .any(|(_, c)| *c == PodDrain::Evict { critical: false });
        let now = Instant::now();
        let reason = claim
            .status
            .as_ref()
            .and_then(|s| s.disruption_reason.clone())
            .unwrap_or_else(|| "Deleted".to_owned());
        let (mut pdb_blocked, mut do_not_disrupt, mut terminating, mut waiting) = (0, 0, 0, 0);
        let mut blocked_messages: Vec<String> = Vec::new();
        let drain = self.drains.entry(name.clone()).or_default();
        for (pod, class) in &holding {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            // Past the deadline (less the pod's own grace): delete, PDBs or not.
            if let Some(remaining) = remaining
                && remaining <= grace_seconds(pod)
            {
                if drain.forced.insert(uid.clone()) {
                    match self.cluster.delete_pod(pod, remaining.max(0)).await {
                        Ok(()) => {
                            self.metrics.evictions.with_label_values(&["forced"]).inc();
                            self.events.pod(
                                pod,
                                Kind::Warning,
                                "Evicted",
                                "Delete",
                                format!(
                                    "Deleted pod: node {node_name} reached its terminationGracePeriod ({reason})"
                                ),
                            );
                        }
                        Err(e) => {
                            drain.forced.remove(&uid);
                            self.metrics.evictions.with_label_values(&["error"]).inc();
                            tracing::warn!(claim = %name, pod = ?pod.metadata.name, error = %e, "deleting a pod past the grace period failed; will retry");
                        }
                    }
                }
                terminating += 1;
                continue;
            }
            match class {
                PodDrain::Terminating => terminating += 1,
                PodDrain::DoNotDisrupt => do_not_disrupt += 1,
                PodDrain::Evict { critical } => {
                    if *critical && noncritical_left {
                        waiting += 1;
                        continue;
                    }
                    if drain.backoff.get(&uid).is_some_and(|(_, next)| *next > now) {
                        pdb_blocked += 1;
                        continue;
                    }
                    match self.cluster.evict(pod).await {
                        Eviction::Evicted => {
                            drain.backoff.remove(&uid);
                            self.metrics.evictions.with_label_values(&["evicted"]).inc();
                            if drain.evicted.insert(uid) {
                                self.events.pod(
                                    pod,
                                    Kind::Normal,
                                    "Evicted",
                                    "Evict",
                                    format!("Evicted pod: node {node_name} is being disrupted ({reason})"),
                                );
                            }
                            terminating += 1;
                        }
                        Eviction::NotFound => {
                            self.metrics
                                .evictions
                                .with_label_values(&["not_found"])
                                .inc();
                        }
                        Eviction::Blocked(message) => {
                            self.metrics
                                .evictions
                                .with_label_values(&["pdb_blocked"])
                                .inc();
                            backoff(&mut drain.backoff, uid, now);
                            pdb_blocked += 1;
                            if !blocked_messages.contains(&message) {
                                blocked_messages.push(message);
                            }
                        }
                        Eviction::Failed(message) => {
                            self.metrics.evictions.with_label_values(&["error"]).inc();
                            backoff(&mut drain.backoff, uid, now);
                            tracing::warn!(claim = %name, pod = ?pod.metadata.name, error = %message, "eviction failed; will retry");
                            waiting += 1;
                        }
                    }
                }
                PodDrain::Left(_) => {}
            }
        }
        let mut parts = Vec::new();
        if pdb_blocked > 0 {
            parts.push(format!("{pdb_blocked} blocked by PodDisruptionBudgets"));
        }
        if do_not_disrupt > 0 {
            parts.push(format!("{do_not_disrupt} do-not-disrupt"));
        }
        if terminating > 0 {
            parts.push(format!("{terminating} terminating"));
        }
        if waiting > 0 {
            parts.push(format!("{waiting} waiting"));
        }
        let left = format!("{} pods left: {}", holding.len(), parts.join(", "));
        let blocked = pdb_blocked > 0 || do_not_disrupt > 0;
        if blocked
            && drain
                .last_blocked_event
                .is_none_or(|t| now.duration_since(t) >= BLOCKED_EVENT_EVERY)
        {
            drain.last_blocked_event = Some(now);
            let mut note = format!("Draining node {node_name} is blocked: {left}");
            if !blocked_messages.is_empty() {
                note.push_str(&format!(" ({})", blocked_messages.join("; ")));
            }
            if cx.grace.is_none() {
                note.push_str("; the pool sets no terminationGracePeriod, so it waits for them");
            }
            self.events
                .claim(claim, Kind::Warning, "DisruptionBlocked", "Drain", note);
        }
        if claim.condition("Drained").map(|c| c.message.as_str()) != Some(left.as_str()) {
            claim.set_condition("Drained", false, "Draining", &left);
            self.write_status(claim).await;
        }
        Ok(Some(left))
    }

    /// The volumes still attached to the drained node, while they are waited for: until the
    /// pool's terminationGracePeriod runs out, and at most [`VOLUME_DETACH_WAIT`] after the
    /// drain (a volume of a pod the drain leaves, a DaemonSet's, never detaches by itself).
    async fn volumes_left(
        &mut self,
        claim: &mut NodeClaim,
        node_name: &str,
        cx: &Context<'_>,
    ) -> Result<Option<String>, ClusterError> {
        let attached = self.cluster.volume_attachments(node_name).await?;
        let drain = self.drains.entry(claim.name().to_owned()).or_default();
        let drained_at = *drain.drained_at.get_or_insert_with(Instant::now);
        let past_deadline = cx.grace.is_some_and(|grace| {
            claim
                .status
                .as_ref()
                .and_then(|s| s.termination_started_at.as_ref())
                .is_some_and(|t| crate::cluster::nodeclaims::since_at(&t.0, cx.now) >= grace)
        });
        if attached.is_empty() || past_deadline || drained_at.elapsed() >= VOLUME_DETACH_WAIT {
            if !attached.is_empty() {
                tracing::warn!(claim = claim.name(), node = %node_name, volumes = ?attached, "terminating with volumes still attached");
            }
            return Ok(None);
        }
        let left = format!(
            "drained; waiting for {} volumes to detach: {}",
            attached.len(),
            attached.join(", ")
        );
        if claim.condition("Drained").map(|c| c.message.as_str()) != Some(left.as_str()) {
            claim.set_condition("Drained", true, "VolumesAttached", &left);
            self.write_status(claim).await;
        }
        Ok(Some(left))
    }

    /// Call the cloud to terminate the claim's instance unless it is gone already; record it.
    async fn terminate_instance(
        &mut self,
        claim: &mut NodeClaim,
        cx: &Context<'_>,
    ) -> Result<(), String> {
        let name = claim.name().to_owned();
        let Some(cloud) = self.cloud.clone() else {
            return Ok(());
        };
        let mut id = claim.status.as_ref().and_then(|s| s.instance_id.clone());
        // An instance launched for the claim but never recorded (a lost answer) is found by tag.
        if id.is_none()
            && let Some(cluster) = cx.cluster_name
        {
            match cloud.find_by_claim(cluster, &name).await {
                Ok(found) => id = found.map(|i| i.instance_id),
                Err(e) => return Err(format!("looking for the claim's instance: {e}")),
            }
        }
        if let Some(id) = &id {
            let running = match cloud.get(id).await {
                Ok(found) => found.is_some_and(|i| !is_gone(&i.state)),
                Err(e) => return Err(format!("describing instance {id}: {e}")),
            };
            if running {
                if let Err(e) = cloud.delete(std::slice::from_ref(id)).await {
                    return Err(format!("terminating instance {id}: {e}"));
                }
                tracing::info!(claim = %name, instance = %id, "instance terminated");
            }
        }
        let s = claim.status_mut();
        if s.instance_id.is_none() {
            s.instance_id = id;
        }
        s.instance_terminated_at = Some(time_at(cx.now));
        self.write_status(claim).await;
        Ok(())
    }

    /// Delete the Node (if nothing else has) and take nodewright's finalizer off it.
    async fn release_node(&self, node_name: &str) -> Result<(), ClusterError> {
        let Some(node) = self.cluster.node(node_name).await? else {
            return Ok(());
        };
        if node.metadata.deletion_timestamp.is_none() {
            self.cluster.delete_node(node_name).await?;
        }
        // Read again: the deletion changed it.
        let Some(node) = self.cluster.node(node_name).await? else {
            return Ok(());
        };
        if has_finalizer(&node.metadata) {
            let kept: Vec<String> = node
                .metadata
                .finalizers
                .iter()
                .flatten()
                .filter(|f| *f != TERMINATION_FINALIZER)
                .cloned()
                .collect();
            self.cluster.set_finalizers(&node, kept).await?;
        }
        Ok(())
    }

    /// Delete the claim (if nothing else has) and take nodewright's finalizer off it.
    async fn release_claim(&self, name: &str) -> Result<(), String> {
        self.claims.delete(name).await.map_err(|e| e.to_string())?;
        let Some(stored) = self.claims.get(name).await.map_err(|e| e.to_string())? else {
            return Ok(());
        };
        if has_finalizer(&stored.metadata) {
            let kept: Vec<String> = stored
                .metadata
                .finalizers
                .iter()
                .flatten()
                .filter(|f| *f != TERMINATION_FINALIZER)
                .cloned()
                .collect();
            self.claims
                .set_finalizers(&stored, kept)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn write_status(&self, claim: &mut NodeClaim) {
        match self.claims.write_status(claim).await {
            Ok(stored) => {
                // Keep what the store says (resourceVersion), with our status.
                claim.metadata = stored.metadata;
            }
            Err(e) => {
                tracing::warn!(claim = claim.name(), error = %e, "writing NodeClaim status failed")
            }
        }
    }
}

fn backoff(map: &mut HashMap<String, (u32, Instant)>, uid: String, now: Instant) {
    let entry = map.entry(uid).or_insert((0, now));
    entry.0 += 1;
    entry.1 = now + EVICTION_RETRY.ceiling(entry.0);
}

/// `Empty` → `empty`, `RegistrationTimeout` → `registration_timeout`: the metric's label.
pub fn metric_reason(reason: &str) -> String {
    let mut out = String::new();
    for (i, ch) in reason.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests;
