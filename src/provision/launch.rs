//! Launch: the claims written for a batch are launched (CreateFleet through the launcher), and
//! each result is recorded on its claim: the instance, or the failure with its retry or its pods
//! handed back.

use super::*;

impl Run {
    /// Launch the named claims concurrently.
    pub(super) async fn launch_claims(&mut self, names: &[String], cluster: &ClusterInfo) {
        let Some(cloud) = self.p.cloud.clone() else {
            for name in names {
                if let Some(mut claim) = self.claims.get(name).cloned() {
                    claim.set_condition(
                        "Launched",
                        false,
                        "NoCloudAccess",
                        "no EC2 client could be set up (region and credentials chain)",
                    );
                    self.store_status(claim).await;
                }
            }
            return;
        };
        let config = self.p.config.load_full();
        let mut tasks = Vec::new();
        for name in names {
            let Some(claim) = self.claims.get(name).cloned() else {
                continue;
            };
            let Some(req) = launch_request(&claim, &config, cluster) else {
                let mut claim = claim;
                claim.status_mut().phase = Phase::Failed;
                claim.set_condition(
                    "Launched",
                    false,
                    "InvalidNodeClass",
                    &format!(
                        "node pool {:?} or its EC2NodeClass {:?} is no longer in the config",
                        claim.spec.node_pool, claim.spec.node_class
                    ),
                );
                self.store_status(claim).await;
                continue;
            };
            let cloud = cloud.clone();
            tasks.push(async move {
                let result = cloud.create(&req).await;
                (claim, result)
            });
        }
        for (claim, result) in futures::future::join_all(tasks).await {
            self.after_launch(claim, result).await;
        }
        self.update_gauges();
    }

    pub(super) async fn after_launch(
        &mut self,
        mut claim: NodeClaim,
        result: Result<Launched, LaunchError>,
    ) {
        let name = claim.name().to_owned();
        claim.status_mut().launch_attempts += 1;
        match result {
            Ok(l) => {
                for (it, zone, ct) in &l.unavailable {
                    tracing::info!(instance_type = %it, zone = %zone, capacity_type = ct.as_str(), "offering out of capacity; left out for a while");
                }
                let price = claim
                    .spec
                    .offerings
                    .iter()
                    .find(|o| {
                        o.instance_type == l.instance_type
                            && o.zone == l.zone
                            && o.capacity_type == l.capacity_type.as_str()
                    })
                    .map(|o| o.price_per_hour);
                let s = claim.status_mut();
                s.phase = Phase::Launched;
                s.instance_id = Some(l.instance_id.clone());
                s.provider_id = Some(l.provider_id.clone());
                s.instance_type = Some(l.instance_type.clone());
                s.zone = Some(l.zone.clone());
                s.capacity_type = Some(l.capacity_type.as_str().to_owned());
                s.price_per_hour = price;
                s.image_id = l.image_id.clone();
                s.subnet_id = l.subnet_id.clone();
                s.security_group_ids = l.security_group_ids.clone();
                claim.status_mut().launched_at = Some(time_now());
                claim.set_condition(
                    "Launched",
                    true,
                    if l.reused { "Found" } else { "Launched" },
                    &format!(
                        "{} {} in {} ({})",
                        if l.reused {
                            "found instance"
                        } else {
                            "launched instance"
                        },
                        l.instance_id,
                        l.zone,
                        l.instance_type
                    ),
                );
                if !l.reused {
                    self.p
                        .metrics
                        .launches
                        .with_label_values(&[
                            &claim.spec.node_pool,
                            &l.instance_type,
                            &l.zone,
                            l.capacity_type.as_str(),
                        ])
                        .inc();
                    let now = Instant::now();
                    for pod in &claim.spec.pods {
                        if let Some(t) = self.first_seen.get(pod) {
                            self.p
                                .metrics
                                .unschedulable_to_launch
                                .observe((now - *t).as_secs_f64());
                        }
                    }
                }
                tracing::info!(
                    claim = %name,
                    instance_id = %l.instance_id,
                    instance_type = %l.instance_type,
                    zone = %l.zone,
                    capacity_type = l.capacity_type.as_str(),
                    reused = l.reused,
                    "instance launched"
                );
                self.p.events.claim(
                    &claim,
                    Kind::Normal,
                    "Launched",
                    "Launch",
                    format!(
                        "Launched instance {} ({} {} in {})",
                        l.instance_id,
                        l.instance_type,
                        l.capacity_type.as_str(),
                        l.zone
                    ),
                );
                self.next_attempt.remove(&name);
            }
            Err(e) => {
                let code = e.code().to_owned();
                self.p.metrics.ec2_errors.with_label_values(&[&code]).inc();
                let attempts = claim.status_mut().launch_attempts;
                let failed = attempts >= MAX_LAUNCH_ATTEMPTS || matches!(e, LaunchError::Config(_));
                claim.set_condition("Launched", false, &code, &e.to_string());
                self.p.events.claim(
                    &claim,
                    Kind::Warning,
                    "LaunchFailed",
                    "Launch",
                    // Repeats become one event with a count (and the first note), so the note
                    // carries no attempt number.
                    format!("launch failed with {code}: {e}"),
                );
                if failed {
                    claim.status_mut().phase = Phase::Failed;
                    tracing::error!(claim = %name, code = %code, error = %e, attempts, "launch failed for good; its pods will be planned again");
                    self.requeue_pods(&claim);
                } else {
                    let backoff = LAUNCH_RETRY.ceiling(attempts);
                    self.next_attempt
                        .insert(name.clone(), Instant::now() + backoff);
                    tracing::warn!(claim = %name, code = %code, error = %e, attempts, retry_in_s = backoff.as_secs(), "launch failed; will retry");
                }
            }
        }
        self.store_status(claim).await;
    }

    /// Put a claim's still-waiting pods back into the batch.
    pub(super) fn requeue_pods(&mut self, claim: &NodeClaim) {
        let now = Instant::now();
        self.release_reservations(claim);
        for pod in &claim.spec.pods {
            if self.waiting.contains_key(pod) && !self.p.state.is_bound(pod) {
                self.batcher.add(pod.clone(), (), now);
            }
        }
    }

    /// The claim's pods no longer wait for its node (it failed, timed out or went away).
    pub(super) fn release_reservations(&self, claim: &NodeClaim) {
        let node = claim.status.as_ref().and_then(|s| s.node_name.as_deref());
        let mut view = self
            .p
            .state
            .view()
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for pod in &claim.spec.pods {
            let theirs = view.reserved_for(pod).map(str::to_owned);
            if theirs.as_deref() == Some(claim.name())
                || (theirs.is_some() && theirs.as_deref() == node)
            {
                view.release(pod);
            }
        }
    }

    pub(super) async fn store_status(&mut self, claim: NodeClaim) {
        let name = claim.name().to_owned();
        match self.p.claims.write_status(&claim).await {
            Ok(stored) => {
                self.claims.insert(name, stored);
            }
            Err(e) => {
                tracing::warn!(claim = %name, error = %e, "writing NodeClaim status failed");
                self.claims.insert(name, claim);
            }
        }
    }
}
