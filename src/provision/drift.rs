//! Drift: claims whose NodePool template or EC2NodeClass changed since they were written, whose
//! offering no longer meets the pool's requirements, or whose AMI, subnet or security groups are
//! no longer what the node class selects in EC2 now, are marked (condition `Drifted`, an Event)
//! and replaced as the pool's budgets for the reason `Drifted` allow: replacement capacity
//! first, then the drain (`Run::await_replacements`). A claim whose pool and class change back
//! before it is acted on is unmarked.
//!
//! What the node class selects comes from the cloud ([`CloudProvider::node_class_view`]), which
//! reads the launcher's cache of resolutions: the view is at most the launcher's resolve TTL old
//! (`spec.provisioning.nodeClassResolveTtl`), and a replacement launches with what the check saw.

use super::*;
use crate::cloud::launch::NodeClassView;
use crate::config::DisruptionReason;
use crate::scheduling::disruption::allowed_disruptions;
use crate::scheduling::disruption::drift::{
    Drift, Launched, LaunchedWith, Selected, dynamic_drift, static_drift,
};

/// How long the drift check leaves a node class alone after resolving it failed (launches of
/// the class still try at once, and say why they fail).
const RESOLVE_RETRY: Duration = Duration::from_secs(30);

/// What the check finds for one claim.
enum Verdict {
    Drifted(Drift),
    Clean,
    /// Its node class could not be resolved now: its condition stays as it is.
    Unknown,
}

/// What a claim records of its launch.
fn launched_with(claim: &NodeClaim) -> Option<LaunchedWith<'_>> {
    let s = claim.status.as_ref()?;
    let with = LaunchedWith {
        image_id: s.image_id.as_deref(),
        subnet_id: s.subnet_id.as_deref(),
        security_group_ids: &s.security_group_ids,
    };
    let recorded =
        with.image_id.is_some() || with.subnet_id.is_some() || !with.security_group_ids.is_empty();
    recorded.then_some(with)
}

impl Run {
    /// The claim's drift now: static first, then against `views` (by node class name).
    fn drift_of(
        &self,
        claim: &NodeClaim,
        config: &Config,
        views: &HashMap<String, NodeClassView>,
    ) -> Verdict {
        let Some(pool) = config.node_pools.get(&claim.spec.node_pool) else {
            return Verdict::Clean;
        };
        let class = config.node_classes.get(&claim.spec.node_class);
        let Some(s) = claim.status.as_ref() else {
            return Verdict::Clean;
        };
        let (Some(instance_type), Some(zone), Some(capacity_type)) = (
            s.instance_type.as_deref(),
            s.zone.as_deref(),
            s.capacity_type.as_deref(),
        ) else {
            return Verdict::Clean;
        };
        let empty = BTreeMap::new();
        let fixed = static_drift(
            &Launched {
                annotations: claim.metadata.annotations.as_ref().unwrap_or(&empty),
                instance_type,
                zone,
                capacity_type,
                labels: &claim.spec.labels,
            },
            pool,
            class,
        );
        if let Some(d) = fixed {
            return Verdict::Drifted(d);
        }
        let Some(with) = launched_with(claim) else {
            // Launched before nodewright recorded what with.
            return Verdict::Clean;
        };
        if class.is_none() {
            return Verdict::Clean;
        }
        let Some(view) = views.get(&claim.spec.node_class) else {
            return Verdict::Unknown;
        };
        let images = view.amis_for(instance_type);
        match dynamic_drift(
            &with,
            &Selected {
                images: &images,
                subnets: &view.subnets,
                security_groups: &view.security_groups,
            },
        ) {
            Some(d) => Verdict::Drifted(d),
            None => Verdict::Clean,
        }
    }

    /// What the node classes of `claims` (those that recorded their launch) select now, by node
    /// class name; a class that fails to resolve is left out, and not tried again for
    /// [`RESOLVE_RETRY`].
    async fn node_class_views(
        &mut self,
        claims: &[NodeClaim],
        config: &Config,
    ) -> HashMap<String, NodeClassView> {
        let mut views = HashMap::new();
        let Some(cloud) = self.p.cloud.clone() else {
            return views;
        };
        // node class → the instance types of its claims
        let mut types: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for claim in claims.iter().filter(|c| launched_with(c).is_some()) {
            let entry = types.entry(claim.spec.node_class.as_str()).or_default();
            if let Some(t) = claim.status.as_ref().and_then(|s| s.instance_type.clone())
                && !entry.contains(&t)
            {
                entry.push(t);
            }
        }
        let now = Instant::now();
        for (name, instance_types) in types {
            let Some(class) = config.node_classes.get(name) else {
                continue;
            };
            if self
                .class_resolve_failed
                .get(name)
                .is_some_and(|t| now.duration_since(*t) < RESOLVE_RETRY)
            {
                continue;
            }
            match cloud.node_class_view(class, &instance_types).await {
                Ok(view) => {
                    self.class_resolve_failed.remove(name);
                    views.insert(name.to_owned(), view);
                }
                Err(e) => {
                    tracing::warn!(node_class = name, error = %e, retry_in_s = RESOLVE_RETRY.as_secs(), "resolving the EC2NodeClass for the drift check failed; its nodes' AMI, subnet and security groups are not checked for now");
                    self.p
                        .metrics
                        .ec2_errors
                        .with_label_values(&[e.code()])
                        .inc();
                    self.class_resolve_failed.insert(name.to_owned(), now);
                }
            }
        }
        views
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
        let views = self.node_class_views(&candidates, config).await;
        let mut drifted_count = 0i64;
        for mut claim in candidates {
            let marked = claim.condition_is("Drifted") == Some(true);
            let drift = match self.drift_of(&claim, config, &views) {
                Verdict::Drifted(d) => Some(d),
                Verdict::Clean => None,
                Verdict::Unknown => {
                    drifted_count += i64::from(marked);
                    continue;
                }
            };
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
