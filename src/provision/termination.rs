//! Termination and garbage collection: a deleted Node ends its claim, a claim is terminated with
//! its instance, and instances tagged for the cluster with no claim are collected.

use super::*;

impl Run {
    pub(super) async fn on_node_deleted(&mut self, node_name: &str) {
        let Some(claim) = self
            .claims
            .values()
            .find(|c| {
                c.status.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node_name)
                    && c.phase() == Phase::Registered
            })
            .cloned()
        else {
            return;
        };
        tracing::info!(claim = claim.name(), node = %node_name, "node deleted: terminating its instance");
        self.terminate_claim(claim, "node_deleted").await;
    }

    /// Terminate a claim's instance (if any) and delete the claim.
    pub(super) async fn terminate_claim(&mut self, mut claim: NodeClaim, reason: &str) {
        let name = claim.name().to_owned();
        self.release_reservations(&claim);
        if let Some(node) = claim.status.as_ref().and_then(|s| s.node_name.clone()) {
            self.p
                .state
                .set_node_state(&node, crate::scheduling::view::NodeState::Terminating);
        }
        claim.status_mut().phase = Phase::Terminating;
        self.claims.insert(name.clone(), claim.clone());
        if let Some(launcher) = self.p.launcher.clone() {
            let mut ids: Vec<String> = claim
                .status
                .as_ref()
                .and_then(|s| s.instance_id.clone())
                .into_iter()
                .collect();
            // An instance launched for the claim but never recorded (lost answer) is found by tag.
            if ids.is_empty()
                && let Some(cluster) = cluster_info(&self.p.config.load())
            {
                match launcher.find_by_claim(&cluster.name, &name).await {
                    Ok(Some(found)) => ids.push(found.instance_id),
                    Ok(None) => {}
                    Err(e) => {
                        self.p
                            .metrics
                            .ec2_errors
                            .with_label_values(&[e.code()])
                            .inc();
                        tracing::warn!(claim = %name, error = %e, "looking for the claim's instance failed; will retry");
                        self.store_status(claim).await;
                        return;
                    }
                }
            }
            if !ids.is_empty() {
                if let Err(e) = launcher.terminate(&ids).await {
                    self.p
                        .metrics
                        .ec2_errors
                        .with_label_values(&[e.code()])
                        .inc();
                    tracing::warn!(claim = %name, error = %e, "terminating failed; will retry");
                    self.store_status(claim).await;
                    return;
                }
                self.p
                    .metrics
                    .terminations
                    .with_label_values(&[reason])
                    .inc();
                tracing::info!(claim = %name, instances = ?ids, reason, "instance terminated");
            }
        }
        match self.p.claims.delete(&name).await {
            Ok(()) => {
                self.claims.remove(&name);
                self.next_attempt.remove(&name);
            }
            Err(e) => {
                tracing::warn!(claim = %name, error = %e, "deleting NodeClaim failed; will retry")
            }
        }
        self.update_gauges();
    }

    /// Terminate instances nodewright launched for this cluster whose NodeClaim is gone, once older
    /// than the grace period. Instances without nodewright's claim tag are not nodewright's to
    /// terminate, whatever cluster tag they carry.
    pub(super) async fn collect_orphans(&mut self, config: &Config) {
        let (Some(launcher), Some(cluster)) = (self.p.launcher.clone(), cluster_info(config))
        else {
            return;
        };
        let grace = config.policy.provisioning.orphan_grace_period();
        let instances = match launcher.cluster_instances(&cluster.name).await {
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
        let known: HashSet<String> = match self.p.claims.list().await {
            Ok(list) => list.into_iter().map(|c| c.name().to_owned()).collect(),
            Err(_) => return,
        };
        let orphans: Vec<String> = instances
            .into_iter()
            .filter(|i| i.claim.as_ref().is_some_and(|c| !known.contains(c)))
            .filter(|i| {
                i.launch_time
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > grace)
            })
            .map(|i| i.instance_id)
            .collect();
        if orphans.is_empty() {
            return;
        }
        match launcher.terminate(&orphans).await {
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
}
