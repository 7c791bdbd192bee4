//! Garbage collection: instances nodewright launched whose NodeClaim is gone are terminated
//! (after a grace period), and claims whose instance vanished are terminated (the flow deletes
//! them; there is nothing left to drain but the Node object).

use super::*;
use crate::cloud::provider::is_gone;

/// A launched claim's instance may take this long to show in DescribeInstances.
const INSTANCE_VISIBLE_WITHIN: Duration = Duration::from_secs(120);

impl Run {
    /// Terminate instances nodewright launched for this cluster whose NodeClaim is gone, once older
    /// than the grace period. Instances without nodewright's claim tag are not nodewright's to
    /// terminate, whatever cluster tag they carry. Claims whose instance is gone are terminated.
    pub(super) async fn collect_garbage(&mut self, config: &Config) {
        let (Some(cloud), Some(cluster)) = (self.p.cloud.clone(), cluster_info(config)) else {
            return;
        };
        let grace = config.policy.provisioning.orphan_grace_period();
        let instances = match cloud.list(&cluster.name).await {
            Ok(i) => i,
            Err(e) => {
                self.p
                    .metrics
                    .ec2_errors
                    .with_label_values(&[e.code()])
                    .inc();
                tracing::warn!(error = %e, "listing the cluster's instances failed");
                return;
            }
        };
        // Re-read claims from the store: another leader may have written some.
        let stored: Vec<NodeClaim> = match self.p.claims.list().await {
            Ok(list) => list,
            Err(_) => return,
        };
        let known: HashSet<&str> = stored.iter().map(NodeClaim::name).collect();
        let orphans: Vec<String> = instances
            .iter()
            .filter(|i| {
                i.claim
                    .as_ref()
                    .is_some_and(|c| !known.contains(c.as_str()))
            })
            .filter(|i| {
                i.launch_time
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > grace)
            })
            .map(|i| i.instance_id.clone())
            .collect();
        if !orphans.is_empty() {
            match cloud.delete(&orphans).await {
                Ok(()) => {
                    self.p
                        .metrics
                        .terminations
                        .with_label_values(&["orphaned"])
                        .inc_by(orphans.len() as u64);
                    tracing::warn!(instances = ?orphans, "terminated instances nodewright launched whose NodeClaim is gone");
                }
                Err(e) => {
                    self.p
                        .metrics
                        .ec2_errors
                        .with_label_values(&[e.code()])
                        .inc();
                    tracing::warn!(error = %e, "terminating orphaned instances failed");
                }
            }
        }
        // Claims whose instance is gone (terminated outside nodewright, or reclaimed).
        let live: HashSet<&str> = instances.iter().map(|i| i.instance_id.as_str()).collect();
        let suspects: Vec<(NodeClaim, String)> = self
            .claims
            .values()
            .filter(|c| matches!(c.phase(), Phase::Launched | Phase::Registered))
            .filter_map(|c| {
                let s = c.status.as_ref()?;
                let id = s.instance_id.clone()?;
                let launched = s.launched_at.as_ref()?;
                (!live.contains(id.as_str())
                    && crate::cluster::nodeclaims::since(&launched.0) > INSTANCE_VISIBLE_WITHIN)
                    .then(|| (c.clone(), id))
            })
            .collect();
        for (claim, id) in suspects {
            // The list may lag; ask for the instance itself before giving the claim up.
            match cloud.get(&id).await {
                Ok(Some(i)) if !is_gone(&i.state) => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(claim = claim.name(), instance = %id, error = %e, "describing a claim's instance failed");
                    continue;
                }
            }
            tracing::warn!(claim = claim.name(), instance = %id, "the claim's instance is gone: terminating the claim");
            self.p.events.claim(
                &claim,
                Kind::Warning,
                "InstanceGone",
                "Terminate",
                format!(
                    "Instance {id} is terminated or unknown to EC2: removing the claim and its node"
                ),
            );
            self.requeue_pods(&claim);
            self.begin_termination(claim, "InstanceGone").await;
        }
    }
}
