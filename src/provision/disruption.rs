//! Disruption: which nodes leave on their own. Empty nodes (the pool consolidates them, they
//! have been empty for `consolidateAfter`) go as the disruption budgets allow, after a last look
//! at their pods; expired nodes (`expireAfter`) get capacity for their pods first, then go,
//! whatever the budgets say (expiry is not voluntary, as in Karpenter v1). Both go through the
//! termination flow ([`Run::begin_termination`]).

use super::*;
use crate::cluster::nodes::{do_not_disrupt, without_taint};
use crate::config::{DisruptionReason, DurationOrNever};
use crate::scheduling::disruption::empty::{NodeUse, empty_after, empty_nodes};
use crate::scheduling::disruption::pods::classify;
use crate::scheduling::disruption::{allowed_disruptions, binding_budget};

/// Karpenter's default `expireAfter`.
const DEFAULT_EXPIRE_AFTER: Duration = Duration::from_secs(720 * 3600);
/// How long an interrupted node waits for its replacements before it is drained anyway.
const INTERRUPTED_WAIT: Duration = Duration::from_secs(60);
/// How often a node kept by a budget says so again.
const BLOCKED_EVENT_EVERY: Duration = Duration::from_secs(300);

/// Where a pool's budget stands for a reason, for [`Run::budget_blocked`].
pub(super) struct Blocked<'a> {
    pub pool: &'a str,
    pub reason: DisruptionReason,
    pub pool_nodes: usize,
    pub disrupting: usize,
    pub now_ts: jiff::Timestamp,
}

impl Run {
    /// One pass of the disruption controller (leader only).
    pub(super) async fn disrupt(&mut self) {
        let config = self.p.config.load_full();
        self.await_replacements(&config).await;
        self.expire(&config).await;
        self.replace_drifted(&config).await;
        self.remove_empty(&config).await;
        self.consolidate(&config).await;
    }

    /// A pool's registered claims that are not being disrupted, and how many of its nodes are
    /// (in the termination flow, or waiting for their replacements): what budgets count.
    pub(super) fn pool_nodes(&self, pool: &str) -> (Vec<&NodeClaim>, usize) {
        let with_node = |c: &&NodeClaim| {
            c.spec.node_pool == pool
                && c.status
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_some()
        };
        let replacing = |c: &NodeClaim| {
            c.status
                .as_ref()
                .is_some_and(|s| !s.replacements.is_empty())
        };
        let registered: Vec<&NodeClaim> = self
            .claims
            .values()
            .filter(with_node)
            .filter(|c| c.phase() == Phase::Registered && !replacing(c))
            .collect();
        let disrupting = self
            .claims
            .values()
            .filter(with_node)
            .filter(|c| {
                c.phase() == Phase::Terminating || (c.phase() == Phase::Registered && replacing(c))
            })
            .count();
        (registered, disrupting)
    }

    /// A node the pool's budget keeps: counted, and said (an Event at most every
    /// [`BLOCKED_EVENT_EVERY`] per claim).
    pub(super) fn budget_blocked(&mut self, claim: &str, b: &Blocked<'_>, what: &str) {
        let label = match b.reason {
            DisruptionReason::Empty => "empty",
            DisruptionReason::Drifted => "drifted",
            DisruptionReason::Underutilized => "underutilized",
        };
        self.terminator
            .metrics
            .decisions
            .with_label_values(&[b.pool, label, "budget_blocked"])
            .inc();
        let now = Instant::now();
        if self
            .blocked_events
            .get(claim)
            .is_some_and(|t| now.duration_since(*t) < BLOCKED_EVENT_EVERY)
        {
            return;
        }
        let Some(claim) = self.claims.get(claim) else {
            return;
        };
        self.blocked_events.insert(claim.name().to_owned(), now);
        let budgets = self
            .p
            .config
            .load()
            .node_pools
            .get(b.pool)
            .map(|p| p.spec.disruption.budgets.clone())
            .unwrap_or_default();
        let why = binding_budget(&budgets, b.reason, b.pool_nodes, b.now_ts)
            .map(|(_, why)| why)
            .unwrap_or_else(|| "the disruption budget".to_owned());
        self.p.events.claim(
            claim,
            Kind::Normal,
            "DisruptionBlocked",
            "Disrupt",
            format!(
                "{what} but stays for now: {why} ({} already disrupting in NodePool {})",
                b.disrupting, b.pool
            ),
        );
    }

    /// Nodes by name, from the node watch.
    fn node_objects(&self) -> HashMap<String, Arc<Node>> {
        self.nodes_by_instance
            .values()
            .filter_map(|n| Some((n.metadata.name.clone()?, n.clone())))
            .collect()
    }

    async fn remove_empty(&mut self, config: &Config) {
        let now_ts = crate::cluster::nodeclaims::now();
        let now = Instant::now();
        let occupancy = self.p.state.occupancy();
        let nodes = self.node_objects();
        let promised: HashSet<String> = {
            let view = self
                .p
                .state
                .view()
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            view.promises
                .iter()
                .filter(|(_, p)| !p.pods.is_empty())
                .map(|(n, _)| n.to_string())
                .collect()
        };
        for (pool_name, pool) in &config.node_pools {
            let Some(after) = empty_after(&pool.spec.disruption) else {
                continue;
            };
            let (registered, disrupting) = self.pool_nodes(pool_name);
            let pool_nodes = registered.len() + disrupting;
            let uses: Vec<NodeUse> = registered
                .iter()
                .filter_map(|c| {
                    let s = c.status.as_ref()?;
                    let node_name = s.node_name.clone()?;
                    let node = nodes.get(&node_name)?;
                    let o = occupancy.get(&node_name).copied().unwrap_or_default();
                    let registered_for = s
                        .registered_at
                        .as_ref()
                        .map(|t| crate::cluster::nodeclaims::since_at(&t.0, now_ts))
                        .unwrap_or_default();
                    let idle_for = match o.last_change {
                        Some(t) => registered_for.min(now.duration_since(t)),
                        None => registered_for,
                    };
                    Some(NodeUse {
                        name: node_name.clone(),
                        claim: c.name().to_owned(),
                        price_per_hour: s.price_per_hour.unwrap_or(0.0),
                        pods: o.pods,
                        do_not_disrupt: do_not_disrupt(&node.metadata) || o.do_not_disrupt > 0,
                        promised: promised.contains(&node_name)
                            || c.spec
                                .pods
                                .iter()
                                .any(|p| self.waiting.contains_key(p) && !self.p.state.is_bound(p)),
                        idle_for,
                        initializing: !self.startup.is_initialized(&node_name),
                        // Launched for the pods of a node being drained: kept until that node
                        // is gone and a grace after, or consolidateAfter 0s would remove it
                        // before the pods arrive.
                        replacing: self.is_fresh_replacement(c),
                    })
                })
                .collect();
            let budgets = &pool.spec.disruption.budgets;
            let allowed = allowed_disruptions(budgets, DisruptionReason::Empty, pool_nodes, now_ts);
            self.terminator
                .metrics
                .budget_allowed
                .with_label_values(&[pool_name, "empty"])
                .set(i64::try_from(allowed.min(pool_nodes)).unwrap_or(i64::MAX));
            let mut room = allowed.saturating_sub(disrupting);
            let empties: Vec<NodeUse> = empty_nodes(&uses, after).into_iter().cloned().collect();
            for node in empties {
                let decisions = &self.terminator.metrics.decisions;
                if room == 0 {
                    let blocked = Blocked {
                        pool: pool_name,
                        reason: DisruptionReason::Empty,
                        pool_nodes,
                        disrupting,
                        now_ts,
                    };
                    let what = format!("Node {} is empty", node.name);
                    self.budget_blocked(&node.claim, &blocked, &what);
                    continue;
                }
                if !self.still_empty(&node.name).await {
                    decisions
                        .with_label_values(&[pool_name, "empty", "revalidation_failed"])
                        .inc();
                    continue;
                }
                decisions
                    .with_label_values(&[pool_name, "empty", "disrupted"])
                    .inc();
                room -= 1;
                let Some(claim) = self.claims.get(&node.claim).cloned() else {
                    continue;
                };
                self.p.events.claim(
                    &claim,
                    Kind::Normal,
                    "Empty",
                    "Disrupt",
                    format!(
                        "Node {} has been empty for {} (consolidateAfter {}); removing it",
                        node.name,
                        crate::config::format_go_duration(Duration::from_secs(
                            node.idle_for.as_secs()
                        )),
                        crate::config::format_go_duration(after)
                    ),
                );
                tracing::info!(claim = claim.name(), node = %node.name, node_pool = %pool_name, "empty node: removing it");
                self.blocked_events.remove(claim.name());
                self.begin_termination(claim, "Empty").await;
            }
        }
    }

    /// Taint the node, then look at its pods once more: a pod that arrived since the watch last
    /// said keeps it (and the taint comes off again).
    async fn still_empty(&self, node_name: &str) -> bool {
        let nodes = &self.p.nodes;
        let node = match nodes.node(node_name).await {
            Ok(Some(node)) => node,
            _ => return false,
        };
        if do_not_disrupt(&node.metadata) || node.metadata.deletion_timestamp.is_some() {
            return false;
        }
        if let Some(taints) =
            crate::cluster::nodes::with_taint(&node, &terminator::disrupted_taint())
            && nodes.set_taints(&node, taints).await.is_err()
        {
            return false;
        }
        // A failed read keeps the node: only a node seen empty goes.
        let empty = match nodes.pods_on(node_name).await {
            Ok(pods) => pods.iter().all(|p| !classify(p).holds()),
            Err(e) => {
                tracing::warn!(node = %node_name, error = %e, "listing the empty node's pods failed; keeping it for now");
                false
            }
        };
        if !empty {
            tracing::info!(node = %node_name, "the node is not empty after all: keeping it");
            if let Ok(Some(node)) = nodes.node(node_name).await
                && let Some(taints) =
                    without_taint(&node, crate::scheduling::disruption::pods::DISRUPTED_TAINT)
                && let Err(e) = nodes.set_taints(&node, taints).await
            {
                tracing::warn!(node = %node_name, error = %e, "removing the disruption taint failed");
            }
        }
        empty
    }

    /// Expired claims: capacity for their pods first (replacement claims), then the flow.
    /// Expired claims (and none replaced yet): capacity for their pods first.
    async fn expire(&mut self, config: &Config) {
        let expired: Vec<NodeClaim> = self
            .claims
            .values()
            .filter(|c| matches!(c.phase(), Phase::Registered | Phase::Launched))
            .filter(|c| c.metadata.deletion_timestamp.is_none())
            .filter(|c| c.status.as_ref().is_none_or(|s| s.replacements.is_empty()))
            .filter(|c| {
                let after = config
                    .node_pools
                    .get(&c.spec.node_pool)
                    .and_then(|p| p.spec.template.spec.expire_after)
                    .unwrap_or(DurationOrNever::After(DEFAULT_EXPIRE_AFTER));
                matches!(after, DurationOrNever::After(d) if c.age() >= d)
            })
            .cloned()
            .collect();
        for claim in expired {
            self.start_expiry(claim, config).await;
        }
    }

    /// Claims whose replacements were launched (expired, interrupted): once those registered,
    /// or were given up on (failed, gone), or were waited for long enough, the node goes.
    async fn await_replacements(&mut self, config: &Config) {
        let waiting: Vec<NodeClaim> = self
            .claims
            .values()
            .filter(|c| matches!(c.phase(), Phase::Registered | Phase::Launched))
            .filter(|c| {
                c.status
                    .as_ref()
                    .is_some_and(|s| !s.replacements.is_empty())
            })
            .cloned()
            .collect();
        for claim in waiting {
            let reason = claim
                .status
                .as_ref()
                .and_then(|s| s.disruption_reason.clone())
                .unwrap_or_else(|| "Expired".to_owned());
            // An interrupted node has two minutes: its pods move once the new capacity is up,
            // or after a minute whatever happens.
            let timeout = if matches!(
                reason.as_str(),
                "SpotInterrupted" | "RebalanceRecommendation" | "ScheduledChange"
            ) {
                INTERRUPTED_WAIT
            } else {
                config.policy.provisioning.registration_timeout()
            };
            let replacements = claim
                .status
                .as_ref()
                .map(|s| s.replacements.clone())
                .unwrap_or_default();
            if reason == super::consolidation::UNDERUTILIZED
                && claim.metadata.deletion_timestamp.is_none()
            {
                self.settle_consolidation(claim, &replacements, timeout)
                    .await;
                continue;
            }
            let ready = replacements.iter().all(|r| match self.claims.get(r) {
                None => true,
                Some(c) => {
                    matches!(
                        c.phase(),
                        Phase::Registered | Phase::Failed | Phase::Terminating
                    ) || c.age() > timeout
                }
            });
            if ready || claim.metadata.deletion_timestamp.is_some() {
                self.say_replaced(&claim, &replacements);
                self.begin_termination(claim, &reason).await;
            }
        }
    }

    /// The `Replaced` Event: the node goes now, and what took its pods.
    pub(super) fn say_replaced(&self, claim: &NodeClaim, replacements: &[String]) {
        let states: Vec<String> = replacements
            .iter()
            .map(|r| match self.claims.get(r) {
                Some(c) => format!("{r} ({})", c.phase().as_str()),
                None => format!("{r} (gone)"),
            })
            .collect();
        self.p.events.claim(
            claim,
            Kind::Normal,
            "Replaced",
            "Disrupt",
            format!("Replaced by {}; draining the node", states.join(", ")),
        );
    }

    async fn start_expiry(&mut self, mut claim: NodeClaim, config: &Config) {
        let pool = claim.spec.node_pool.clone();
        self.terminator
            .metrics
            .decisions
            .with_label_values(&[&pool, "expired", "disrupted"])
            .inc();
        let age = crate::config::format_go_duration(Duration::from_secs(claim.age().as_secs()));
        let Some(replaced) = self.launch_replacements(&claim, config).await else {
            return;
        };
        self.p.events.claim(
            &claim,
            Kind::Normal,
            "Expired",
            "Disrupt",
            format!("Expired after {age} (expireAfter): {}", replaced.summary()),
        );
        if replaced.claims.is_empty() {
            self.begin_termination(claim, "Expired").await;
            return;
        }
        claim.status_mut().replacements = replaced.claims.clone();
        claim.status_mut().disruption_reason = Some("Expired".to_owned());
        claim.set_condition(
            "Expired",
            true,
            "Expired",
            &format!("replacements: {}", replaced.claims.join(", ")),
        );
        self.store_status(claim).await;
        self.update_gauges();
    }
}
