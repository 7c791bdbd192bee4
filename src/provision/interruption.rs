//! Interruptions: messages from the SQS queue EventBridge feeds (spot interruption warnings,
//! rebalance recommendations, scheduled maintenance, instance state changes) end the claims of
//! the instances they name, as Karpenter's interruption controller does, with one difference:
//! the pods' new capacity is planned and launched at once, before the drain starts, so a spot
//! node's pods have somewhere to go within its two minutes.
//!
//! The poller ([`spawn`]) long-polls the queue while this replica leads, hands each message to
//! the provisioner's loop and deletes it once the loop has acted on it. Malformed messages and
//! events nodewright does not act on are counted and deleted; nothing crashes the loop.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::cloud::interruption::message::{self, Kind as MessageKind, Message};
use crate::cloud::interruption::queue::Queue;
use crate::metrics::disruption::DisruptionMetrics;

/// How long the poller waits for the loop to act on a message before leaving it to the queue
/// (it becomes visible again and is received anew).
const HANDLE_WITHIN: Duration = Duration::from_secs(25);

/// What to do with an interrupted claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Launch capacity for its pods, then drain and terminate it.
    ReplaceAndDrain,
    /// Tell (an Event), nothing more.
    EventOnly,
}

/// Karpenter's `actionForMessage`, with rebalance recommendations acted on for the pools that
/// opt in.
pub fn action_for(kind: &MessageKind, rebalance_opted_in: bool) -> Action {
    match kind {
        MessageKind::SpotInterruption
        | MessageKind::ScheduledChange
        | MessageKind::StateChange(_) => Action::ReplaceAndDrain,
        MessageKind::RebalanceRecommendation if rebalance_opted_in => Action::ReplaceAndDrain,
        MessageKind::RebalanceRecommendation | MessageKind::NoOp => Action::EventOnly,
    }
}

/// The claim's `disruptionReason` for a message.
pub fn reason_for(kind: &MessageKind) -> &'static str {
    match kind {
        MessageKind::SpotInterruption => "SpotInterrupted",
        MessageKind::RebalanceRecommendation => "RebalanceRecommendation",
        MessageKind::ScheduledChange => "ScheduledChange",
        MessageKind::StateChange(s) if s == "stopping" || s == "stopped" => "InstanceStopped",
        MessageKind::StateChange(_) => "InstanceTerminated",
        MessageKind::NoOp => "Deleted",
    }
}

impl Run {
    pub(super) async fn on_interruption(&mut self, message: &Message) {
        let config = self.p.config.load_full();
        let metrics = self.terminator.metrics.clone();
        if let Some(t) = message.time {
            let latency = crate::cluster::nodeclaims::since(&t);
            metrics.interruption_latency.observe(latency.as_secs_f64());
        }
        let rebalance_pools: Vec<String> = config
            .policy
            .interruption
            .as_ref()
            .map(|i| i.rebalance_node_pools.clone())
            .unwrap_or_default();
        for id in &message.instance_ids {
            let Some(claim) = self
                .claims
                .values()
                .find(|c| c.status.as_ref().and_then(|s| s.instance_id.as_deref()) == Some(id))
                .cloned()
            else {
                tracing::debug!(instance = %id, kind = message.kind.as_str(), "interruption for an instance without a claim");
                continue;
            };
            let pool = claim.spec.node_pool.clone();
            let action = action_for(&message.kind, rebalance_pools.contains(&pool));
            let reason = reason_for(&message.kind);
            metrics
                .interruption_actions
                .with_label_values(&[
                    match action {
                        Action::ReplaceAndDrain => "replace_and_drain",
                        Action::EventOnly => "event_only",
                    },
                    &pool,
                ])
                .inc();
            // The offering is short: plan elsewhere for a while.
            if message.kind == MessageKind::SpotInterruption
                && let (Some(cloud), Some(s)) = (&self.p.cloud, claim.status.as_ref())
                && let (Some(it), Some(zone)) = (&s.instance_type, &s.zone)
            {
                cloud.mark_unavailable(it, zone, crate::model::catalog::CapacityType::Spot);
            }
            let (event, kind) = match &message.kind {
                MessageKind::SpotInterruption => ("SpotInterrupted", Kind::Warning),
                MessageKind::RebalanceRecommendation => ("RebalanceRecommendation", Kind::Normal),
                MessageKind::ScheduledChange => ("Unhealthy", Kind::Warning),
                MessageKind::StateChange(_) => ("InstanceStateChanged", Kind::Warning),
                MessageKind::NoOp => continue,
            };
            if action == Action::EventOnly || claim.phase() == Phase::Terminating {
                self.p.events.claim(
                    &claim,
                    kind,
                    event,
                    "Interrupt",
                    format!("{} for instance {id}", message.detail_type),
                );
                continue;
            }
            let keeps_running = !matches!(message.kind, MessageKind::StateChange(_));
            let replacing = claim
                .status
                .as_ref()
                .is_some_and(|s| !s.replacements.is_empty());
            if replacing {
                // Replacements were launched for an earlier message: none twice. A node that
                // stopped meanwhile goes now.
                self.p.events.claim(
                    &claim,
                    kind,
                    event,
                    "Interrupt",
                    format!(
                        "{} for instance {id} (already being replaced)",
                        message.detail_type
                    ),
                );
                if !keeps_running {
                    self.begin_termination(claim, reason).await;
                }
                continue;
            }
            tracing::info!(claim = claim.name(), instance = %id, kind = message.kind.as_str(), "interruption: replacing and draining");
            let replaced = self.launch_replacements(&claim, &config).await;
            let mut claim = self.claims.get(claim.name()).cloned().unwrap_or(claim);
            let summary = replaced.as_ref().map(|r| r.summary()).unwrap_or_else(|| {
                "its pods could not be listed; they are planned when evicted".to_owned()
            });
            self.p.events.claim(
                &claim,
                kind,
                event,
                "Interrupt",
                format!("{} for instance {id}: {summary}", message.detail_type),
            );
            claim.status_mut().disruption_reason = Some(reason.to_owned());
            // A node still running keeps its pods until the new capacity is up (at most a
            // minute: see `Run::await_replacements`); a stopped or terminated one has none left
            // to keep.
            match replaced {
                Some(r) if keeps_running && !r.claims.is_empty() => {
                    claim.status_mut().replacements = r.claims;
                    claim.set_condition("Interrupted", true, reason, &message.detail_type);
                    self.store_status(claim).await;
                }
                _ => self.begin_termination(claim, reason).await,
            }
        }
    }
}

/// Poll the queue `name_or_url` while leading; hand messages to the loop through `events`.
pub fn spawn(
    client: aws_sdk_sqs::Client,
    name_or_url: String,
    events: mpsc::UnboundedSender<ClusterEvent>,
    mut leader: watch::Receiver<bool>,
    metrics: DisruptionMetrics,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let queue = loop {
            match Queue::new(client.clone(), &name_or_url).await {
                Ok(q) => break q,
                Err(e) => {
                    tracing::error!(queue = %name_or_url, error = %e, "cannot find the interruption queue; retrying in 10 s");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(10)) => {}
                    }
                }
            }
        };
        tracing::info!(queue = %queue.url(), "watching the interruption queue");
        loop {
            // Only the leader takes messages off the queue.
            while !*leader.borrow_and_update() {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = leader.changed() => if changed.is_err() { return },
                }
            }
            let received = tokio::select! {
                () = shutdown.cancelled() => return,
                r = queue.receive() => r,
            };
            let messages = match received {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "receiving from the interruption queue failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Queue::retry_after()) => {}
                    }
                    continue;
                }
            };
            for received in messages {
                let handled = match message::parse(&received.body) {
                    Err(e) => {
                        metrics
                            .interruption_messages
                            .with_label_values(&["malformed"])
                            .inc();
                        tracing::warn!(error = %e, "malformed interruption message: deleting it");
                        true
                    }
                    Ok(m) => {
                        metrics
                            .interruption_messages
                            .with_label_values(&[m.kind.as_str()])
                            .inc();
                        if m.kind == MessageKind::NoOp {
                            true
                        } else {
                            let (done, acted) = oneshot::channel();
                            if events
                                .send(ClusterEvent::Interruption { message: m, done })
                                .is_err()
                            {
                                return;
                            }
                            matches!(tokio::time::timeout(HANDLE_WITHIN, acted).await, Ok(Ok(())))
                        }
                    }
                };
                if handled && let Err(e) = queue.delete(&received.receipt_handle).await {
                    tracing::warn!(error = %e, "deleting an interruption message failed; it will be received again");
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_follow_karpenter_with_rebalance_opt_in() {
        use MessageKind::*;
        assert_eq!(
            action_for(&SpotInterruption, false),
            Action::ReplaceAndDrain
        );
        assert_eq!(action_for(&ScheduledChange, false), Action::ReplaceAndDrain);
        assert_eq!(
            action_for(&StateChange("stopping".into()), false),
            Action::ReplaceAndDrain
        );
        assert_eq!(
            action_for(&RebalanceRecommendation, false),
            Action::EventOnly
        );
        assert_eq!(
            action_for(&RebalanceRecommendation, true),
            Action::ReplaceAndDrain
        );
        assert_eq!(action_for(&NoOp, true), Action::EventOnly);
        assert_eq!(
            reason_for(&StateChange("stopped".into())),
            "InstanceStopped"
        );
        assert_eq!(
            reason_for(&StateChange("terminated".into())),
            "InstanceTerminated"
        );
        assert_eq!(reason_for(&SpotInterruption), "SpotInterrupted");
    }
}
