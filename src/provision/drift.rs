//! Drift: claims whose NodePool template or EC2NodeClass changed since they were written, or
//! whose offering no longer meets the pool's requirements, are marked (condition `Drifted`, an
//! Event) and replaced as the pool's budgets for the reason `Drifted` allow: replacement
//! capacity first, then the drain (`Run::await_replacements`). A claim whose pool and class
//! change back before it is acted on is unmarked.

use super::*;
use crate::config::DisruptionReason;
use crate::scheduling::disruption::allowed_disruptions;
use crate::scheduling::disruption::drift::{Drift, Launched, static_drift};

impl Run {
    /// The claim's drift now, if any.
    fn drift_of(&self, claim: &NodeClaim, config: &Config) -> Option<Drift> {
        let pool = config.node_pools.get(&claim.spec.node_pool)?;
        let class = config.node_classes.get(&claim.spec.node_class);
        let s = claim.status.as_ref()?;
        let empty = BTreeMap::new();
        static_drift(
            &Launched {
                annotations: claim.metadata.annotations.as_ref().unwrap_or(&empty),
                instance_type: s.instance_type.as_deref()?,
                zone: s.zone.as_deref()?,
                capacity_type: s.capacity_type.as_deref()?,
                labels: &claim.spec.labels,
            },
            pool,
            class,
        )
    }

    pub(super) async fn replace_drifted(&mut self, config: &Config) {
        // Mark and unmark.
        let candidates: Vec<NodeClaim> = self
            .claims
            .values()
            .filter(|c| c.phase() == Phase::Registered && c.metadata.deletion_timestamp.is_none())
            .filter(|c| c.status.as_ref().is_some_and(|s| s.replacements.is_empty()))
            .cloned()
            .collect();
        let mut drifted_count = 0i64;
        for mut claim in candidates {
            let drift = self.drift_of(&claim, config);
            let marked = claim.condition_is("Drifted") == Some(true);
            match (&drift, marked) {
                (Some(d), false) => {
                    tracing::info!(claim = claim.name(), reason = d.reason(), "claim drifted");
                    claim.set_condition("Drifted", true, d.reason(), &d.message());
                    self.p.events.claim(
                        &claim,
                        Kind::Normal,
                        "Drifted",
                        "Disrupt",
                        format!("Drifted: {}", d.message()),
                    );
                    self.store_status(claim).await;
                }
                (None, true) => {
                    claim.set_condition(
                        "Drifted",
                        false,
                        "NotDrifted",
                        "the node matches its NodePool and EC2NodeClass again",
                    );
                    self.store_status(claim).await;
                }
                _ => {}
            }
            drifted_count += i64::from(drift.is_some());
        }
        self.terminator.metrics.drifted.set(drifted_count);
        // Replace, as budgets allow.
        let now_ts = crate::cluster::nodeclaims::now();
        for (pool_name, pool) in &config.node_pools {
            let (registered, disrupting) = self.pool_nodes(pool_name);
            let pool_nodes = registered.len() + disrupting;
            let mut drifted: Vec<NodeClaim> = registered
                .into_iter()
                .filter(|c| c.condition_is("Drifted") == Some(true))
                .cloned()
                .collect();
            if drifted.is_empty() {
                continue;
            }
            // The oldest first.
            drifted.sort_by_key(|c| std::cmp::Reverse(c.age()));
            let budgets = &pool.spec.disruption.budgets;
            let allowed =
                allowed_disruptions(budgets, DisruptionReason::Drifted, pool_nodes, now_ts);
            self.terminator
                .metrics
                .budget_allowed
                .with_label_values(&[pool_name, "drifted"])
                .set(i64::try_from(allowed.min(pool_nodes)).unwrap_or(i64::MAX));
            let mut room = allowed.saturating_sub(disrupting);
            for mut claim in drifted {
                let decisions = self.terminator.metrics.decisions.clone();
                if room == 0 {
                    let blocked = super::disruption::Blocked {
                        pool: pool_name,
                        reason: DisruptionReason::Drifted,
                        pool_nodes,
                        disrupting,
                        now_ts,
                    };
                    self.budget_blocked(claim.name(), &blocked, "Drifted");
                    continue;
                }
                let Some(replaced) = self.launch_replacements(&claim, config).await else {
                    continue;
                };
                room -= 1;
                decisions
                    .with_label_values(&[pool_name, "drifted", "disrupted"])
                    .inc();
                self.blocked_events.remove(claim.name());
                self.p.events.claim(
                    &claim,
                    Kind::Normal,
                    "Replacing",
                    "Disrupt",
                    format!("Replacing the drifted node: {}", replaced.summary()),
                );
                if replaced.claims.is_empty() {
                    self.begin_termination(claim, "Drifted").await;
                    continue;
                }
                let mut fresh = self.claims.get(claim.name()).cloned().unwrap_or(claim);
                fresh.status_mut().replacements = replaced.claims;
                fresh.status_mut().disruption_reason = Some("Drifted".to_owned());
                claim = fresh;
                self.store_status(claim).await;
            }
        }
    }
}
