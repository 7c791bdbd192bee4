//! Replacement capacity for a node about to go (expired, interrupted, scheduled for
//! maintenance): its pods, but DaemonSet ones, are planned as the pending pods they become once
//! evicted, with the node left out, and the new nodes the plan asks for are written as claims
//! and launched at once, before the node is drained.

use super::*;
use crate::scheduling::disruption::pods::{PodDrain, classify};

/// Annotation on a replacement claim: the claim whose pods it was launched for.
pub(super) const REPLACES: &str = "nodewright.io/replaces";
/// A replacement stays out of empty-node removal this long after it registered, even once the
/// node it replaces is gone (the evicted pods' successors may still be on their way).
pub(super) const REPLACEMENT_GRACE: Duration = Duration::from_secs(60);

/// What was launched for a node's pods.
pub(super) struct Replaced {
    /// The claims written and launched.
    pub claims: Vec<String>,
    pub pods: usize,
    /// Pods that fit on existing nodes.
    pub placed: usize,
    /// Pods that fit nowhere.
    pub unschedulable: usize,
    /// The claims were found in the store, written by an earlier leader, not launched now.
    pub earlier: bool,
}

impl Replaced {
    pub fn summary(&self) -> String {
        if self.earlier {
            return format!(
                "{} pods; replacements written earlier, by a leader that stopped before recording them: {}",
                self.pods,
                self.claims.join(", ")
            );
        }
        if self.pods == 0 {
            return "no pods to move".to_owned();
        }
        format!(
            "{} pods; {} new nodes launched for them ({}), {} fit on existing nodes, {} fit nowhere",
            self.pods,
            self.claims.len(),
            self.claims.join(", "),
            self.placed,
            self.unschedulable
        )
    }
}

impl Run {
    /// Plan and launch capacity for the pods of `claim`'s node. `None` when its pods could not
    /// be listed (try again later). The node is marked draining, so no new pod is planned or
    /// scheduled onto it.
    pub(super) async fn launch_replacements(
        &mut self,
        claim: &NodeClaim,
        config: &Config,
    ) -> Option<Replaced> {
        let name = claim.name().to_owned();
        let node_name = claim.status.as_ref().and_then(|s| s.node_name.clone());
        let pods: Vec<Arc<Pod>> = match &node_name {
            Some(node) => match self.p.nodes.pods_on(node).await {
                Ok(pods) => pods
                    .into_iter()
                    .filter(|p| {
                        matches!(classify(p), PodDrain::Evict { .. } | PodDrain::DoNotDisrupt)
                    })
                    // Planned as the pending pods they become once evicted.
                    .map(|mut p| {
                        if let Some(spec) = p.spec.as_mut() {
                            spec.node_name = None;
                        }
                        p.status = None;
                        Arc::new(p)
                    })
                    .collect(),
                Err(e) => {
                    tracing::warn!(claim = %name, error = %e, "listing the node's pods failed; will retry");
                    return None;
                }
            },
            None => Vec::new(),
        };
        let mut replaced = Replaced {
            claims: Vec::new(),
            pods: pods.len(),
            placed: 0,
            unschedulable: 0,
            earlier: false,
        };
        // A leader that stopped between writing the replacements and recording them on this
        // claim left them in the store: they are this claim's replacements (a Pending one is
        // launched by the reconcile's retry), and none are planned again.
        let earlier: Vec<String> = self
            .claims
            .values()
            .filter(|c| {
                c.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(REPLACES))
                    .is_some_and(|origin| *origin == name)
            })
            .map(|c| c.name().to_owned())
            .collect();
        if !earlier.is_empty() {
            tracing::info!(claim = %name, replacements = ?earlier, "replacements found, written by an earlier leader; none launched again");
            if let Some(node) = &node_name {
                self.p
                    .state
                    .set_node_state(node, crate::scheduling::view::NodeState::Draining);
            }
            replaced.claims = earlier;
            replaced.earlier = true;
            return Some(replaced);
        }
        if pods.is_empty() {
            return Some(replaced);
        }
        if let Some(node) = &node_name {
            self.p
                .state
                .set_node_state(node, crate::scheduling::view::NodeState::Draining);
        }
        let Some(cluster) = cluster_info(config) else {
            return Some(replaced);
        };
        let Planned {
            catalog,
            pools,
            plan,
            pending,
        } = self.plan_pods(&pods, config);
        replaced.placed = plan.placements.len();
        replaced.unschedulable = plan.unschedulable.len();
        for node in &plan.nodes {
            let Some(pool) = config.node_pools.get(&node.node_pool) else {
                continue;
            };
            let mut replacement = claim_for(node, pool, &pools, &catalog, &pending);
            replacement
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(REPLACES.to_owned(), name.clone());
            match self.create_claim(replacement).await {
                Ok(created) => {
                    self.claims
                        .insert(created.name().to_owned(), created.clone());
                    replaced.claims.push(created.name().to_owned());
                }
                Err(e) => {
                    tracing::warn!(claim = %name, error = %e, "writing a replacement claim failed");
                }
            }
        }
        if !replaced.claims.is_empty() {
            self.update_gauges();
            self.launch_claims(&replaced.claims, &cluster).await;
        }
        Some(replaced)
    }

    /// A replacement whose origin is still there, or registered less than
    /// [`REPLACEMENT_GRACE`] ago: not disrupted yet (the evicted pods may still be on their way).
    pub(super) fn is_fresh_replacement(&self, c: &NodeClaim) -> bool {
        let registered_for = c
            .status
            .as_ref()
            .and_then(|s| s.registered_at.as_ref())
            .map(|t| crate::cluster::nodeclaims::since_at(&t.0, crate::cluster::nodeclaims::now()))
            .unwrap_or_default();
        c.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REPLACES))
            .is_some_and(|origin| {
                self.claims.contains_key(origin) || registered_for < REPLACEMENT_GRACE
            })
    }
}
