//! Termination, as the provisioner's loop drives it: a claim enters the flow
//! ([`Run::begin_termination`]: phase Terminating, its reason, the start time, the claim deleted
//! behind its finalizer) and [`Run::step_terminations`] advances every claim in it through the
//! [`super::terminator::Terminator`] state machine. Claims deleted by someone else (a user's
//! `kubectl delete nodeclaim`, or their Node's deletion) enter the same flow.

use super::terminator::{Context, Step};
use super::*;
use crate::cluster::nodes::{TERMINATION_FINALIZER, has_finalizer};

impl Run {
    /// A Node gone without nodewright's finalizer (or deleted while not leading): its claim
    /// goes too (there is nothing left to drain).
    pub(super) async fn on_node_deleted(&mut self, node_name: &str) {
        let Some(claim) = self.claim_of_node(node_name) else {
            return;
        };
        tracing::info!(claim = claim.name(), node = %node_name, "node deleted: terminating its instance");
        self.begin_termination(claim, "Deleted").await;
    }

    /// A Node being deleted (its `deletionTimestamp` set; nodewright's finalizer holds it) is
    /// drained and its claim terminated.
    pub(super) async fn on_node_deleting(&mut self, node_name: &str) {
        if let Some(claim) = self.claim_of_node(node_name)
            && claim.phase() != Phase::Terminating
        {
            tracing::info!(claim = claim.name(), node = %node_name, "node being deleted: draining it and terminating its claim");
            self.begin_termination(claim, "Deleted").await;
        }
    }

    fn claim_of_node(&self, node_name: &str) -> Option<NodeClaim> {
        self.claims
            .values()
            .find(|c| {
                c.status.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node_name)
                    && matches!(c.phase(), Phase::Registered | Phase::Launched)
            })
            .cloned()
    }

    /// Put a claim into the termination flow (idempotent) and take its first step.
    pub(super) async fn begin_termination(&mut self, mut claim: NodeClaim, reason: &str) {
        let name = claim.name().to_owned();
        self.release_reservations(&claim);
        if let Some(node) = claim.status.as_ref().and_then(|s| s.node_name.clone()) {
            self.p
                .state
                .set_node_state(&node, crate::scheduling::view::NodeState::Terminating);
        }
        let starting = claim
            .status
            .as_ref()
            .is_none_or(|s| s.termination_started_at.is_none());
        if starting {
            let s = claim.status_mut();
            s.phase = Phase::Terminating;
            s.disruption_reason.get_or_insert_with(|| reason.to_owned());
            s.termination_started_at = Some(time_now());
            let reason = claim
                .status
                .as_ref()
                .and_then(|s| s.disruption_reason.clone())
                .unwrap_or_default();
            tracing::info!(claim = %name, reason, "terminating claim");
            self.p.events.claim(
                &claim,
                Kind::Normal,
                "Terminating",
                "Terminate",
                format!(
                    "Terminating ({reason}){}",
                    match claim.status.as_ref().and_then(|s| s.node_name.as_deref()) {
                        Some(node) => format!(": draining node {node}"),
                        None => String::new(),
                    }
                ),
            );
            self.store_status(claim.clone()).await;
            if let Some(stored) = self.claims.get(&name) {
                claim = stored.clone();
            }
        }
        // Claims written before finalizers get one, so the deletion below waits for the flow.
        if let Ok(Some(stored)) = self.p.claims.get(&name).await
            && !has_finalizer(&stored.metadata)
            && stored.metadata.deletion_timestamp.is_none()
        {
            let mut finalizers = stored.metadata.finalizers.clone().unwrap_or_default();
            finalizers.push(TERMINATION_FINALIZER.to_owned());
            if let Err(e) = self.p.claims.set_finalizers(&stored, finalizers).await {
                tracing::warn!(claim = %name, error = %e, "adding the termination finalizer failed");
            }
        }
        if claim.metadata.deletion_timestamp.is_none() {
            match self.p.claims.delete(&name).await {
                Ok(()) => {
                    claim.metadata.deletion_timestamp = Some(time_now());
                }
                Err(e) => {
                    tracing::warn!(claim = %name, error = %e, "deleting NodeClaim failed; will retry")
                }
            }
        }
        self.claims.insert(name.clone(), claim);
        self.step_termination(&name).await;
        self.update_gauges();
    }

    /// Advance every claim in the termination flow; claims someone else deleted join it.
    pub(super) async fn step_terminations(&mut self) {
        let deleted: Vec<NodeClaim> = self
            .claims
            .values()
            .filter(|c| c.metadata.deletion_timestamp.is_some() && c.phase() != Phase::Terminating)
            .cloned()
            .collect();
        for claim in deleted {
            self.requeue_pods(&claim);
            self.begin_termination(claim, "Deleted").await;
        }
        let names: Vec<String> = self
            .claims
            .values()
            .filter(|c| c.phase() == Phase::Terminating)
            .map(|c| c.name().to_owned())
            .collect();
        for name in names {
            self.step_termination(&name).await;
        }
        let draining = self
            .claims
            .values()
            .filter(|c| c.phase() == Phase::Terminating)
            .count();
        self.terminator
            .metrics
            .draining
            .set(i64::try_from(draining).unwrap_or(i64::MAX));
    }

    async fn step_termination(&mut self, name: &str) {
        let Some(mut claim) = self.claims.get(name).cloned() else {
            return;
        };
        let config = self.p.config.load_full();
        let cluster = config.policy.provisioning.cluster_name.clone();
        let grace = config
            .node_pools
            .get(&claim.spec.node_pool)
            .and_then(|p| p.spec.template.spec.termination_grace_period)
            .map(|g| g.0);
        let had_instance = claim
            .status
            .as_ref()
            .is_some_and(|s| s.instance_terminated_at.is_none());
        let cx = Context {
            cluster_name: cluster.as_deref(),
            grace,
            now: crate::cluster::nodeclaims::now(),
        };
        let step = self.terminator.step(&mut claim, &cx).await;
        match step {
            Step::Done => {
                if had_instance
                    && claim
                        .status
                        .as_ref()
                        .is_some_and(|s| s.instance_id.is_some())
                {
                    let reason = claim
                        .status
                        .as_ref()
                        .and_then(|s| s.disruption_reason.as_deref())
                        .map(super::terminator::metric_reason)
                        .unwrap_or_else(|| "deleted".to_owned());
                    self.p
                        .metrics
                        .terminations
                        .with_label_values(&[&reason])
                        .inc();
                }
                self.claims.remove(name);
                self.next_attempt.remove(name);
            }
            Step::Retry(why) => {
                tracing::warn!(claim = %name, error = %why, "termination step failed; will retry");
                self.claims.insert(name.to_owned(), claim);
            }
            Step::Draining(_) | Step::AwaitingInstance => {
                self.claims.insert(name.to_owned(), claim);
            }
        }
    }
}
