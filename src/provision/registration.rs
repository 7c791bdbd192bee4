//! Registration: a Node whose instance belongs to a claim is matched to it, labelled (the claim's
//! labels and its type's karpenter.k8s.aws labels) and freed of the unregistered taint.

use super::*;

impl Run {
    /// Nodes registered before finalizers were put on them get one.
    pub(super) async fn ensure_node_finalizer(&mut self, node: &Node) {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        if crate::cluster::nodes::has_finalizer(&node.metadata)
            || node.metadata.deletion_timestamp.is_some()
            || !self.claims.values().any(|c| {
                c.phase() == Phase::Registered
                    && c.status.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name)
            })
        {
            return;
        }
        let mut finalizers = node.metadata.finalizers.clone().unwrap_or_default();
        finalizers.push(crate::cluster::nodes::TERMINATION_FINALIZER.to_owned());
        if let Err(e) = self.p.nodes.set_finalizers(node, finalizers).await {
            tracing::debug!(node = %name, error = %e, "adding the termination finalizer failed; will retry");
        }
    }

    /// Match a Node to its claim by providerID, put the pool's labels and taints on it, and
    /// mark the claim registered.
    pub(super) async fn try_register(&mut self, node: &Node) {
        let Some(id) = instance_id(node) else {
            return;
        };
        let Some(claim) = self
            .claims
            .values()
            .find(|c| {
                c.phase() == Phase::Launched
                    && c.status.as_ref().and_then(|s| s.instance_id.as_deref()) == Some(&id)
            })
            .cloned()
        else {
            return;
        };
        let node_name = node.metadata.name.clone().unwrap_or_default();
        let now = Instant::now();
        // The new node is reserved for the pods it was launched for, before its
        // `nodewright.io/unregistered` taint comes off and the scheduler may use it.
        {
            // Which pods still wait is read before the view's write lock: the pod watch takes
            // the state's lock, then the view's; the other order here would deadlock.
            let waiting: Vec<(&String, _)> = claim
                .spec
                .pods
                .iter()
                .filter_map(|pod| {
                    let w = self.waiting.get(pod)?;
                    (!self.p.state.is_bound(pod))
                        .then(|| (pod, PromisedPod::from(&PendingPod::from_pod(&w.pod))))
                })
                .collect();
            let mut view = self
                .p
                .state
                .view()
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let claim_name: Arc<str> = Arc::from(claim.name());
            for (pod, promised) in waiting {
                view.promise(
                    &node_name,
                    pod,
                    promised,
                    Some(claim_name.clone()),
                    Some(now + PROMISE_TTL),
                );
            }
        }
        if let Err(e) = self.ensure_labels_and_taints(node, &claim).await {
            tracing::warn!(claim = claim.name(), node = %node_name, error = %e, "could not put the pool's labels and taints on the node; will retry");
            return;
        }
        let mut claim = claim;
        claim.status_mut().phase = Phase::Registered;
        claim.status_mut().node_name = Some(node_name.clone());
        claim.status_mut().registered_at = Some(time_now());
        claim.set_condition(
            "Registered",
            true,
            "Registered",
            &format!("node {node_name} registered"),
        );
        for pod in &claim.spec.pods {
            if let Some(t) = self.first_seen.remove(pod) {
                self.p
                    .metrics
                    .unschedulable_to_registered
                    .observe((now - t).as_secs_f64());
            }
        }
        tracing::info!(claim = claim.name(), node = %node_name, "node registered");
        self.p.events.claim(
            &claim,
            Kind::Normal,
            "Registered",
            "Register",
            format!("Node {node_name} registered"),
        );
        self.store_status(claim).await;
        self.update_gauges();
    }

    pub(super) async fn ensure_labels_and_taints(
        &self,
        node: &Node,
        claim: &NodeClaim,
    ) -> Result<(), String> {
        let Some(client) = &self.p.client else {
            return Ok(());
        };
        let have = node.metadata.labels.clone().unwrap_or_default();
        // The claim's labels, and the karpenter.k8s.aws labels of the type it launched as (as
        // Karpenter labels its Nodes), so pods selecting e.g. a GPU name bind where they were planned.
        let mut wanted = claim.spec.labels.clone();
        let launched = have
            .get(labels::INSTANCE_TYPE)
            .cloned()
            .or_else(|| claim.status.as_ref().and_then(|s| s.instance_type.clone()));
        if let Some(it) = launched.and_then(|t| (self.p.catalog)().get(&t).cloned()) {
            for (key, value) in it.aws_labels() {
                wanted.entry(key.to_owned()).or_insert(value);
            }
        }
        let missing_labels: BTreeMap<&String, &String> = wanted
            .iter()
            .filter(|(k, v)| have.get(*k) != Some(*v))
            .collect();
        let mut taints: Vec<serde_json::Value> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .map(|ts| {
                ts.iter()
                    .filter_map(|t| serde_json::to_value(t).ok())
                    .collect()
            })
            .unwrap_or_default();
        let had = taints.len();
        taints.retain(|v| v["key"] != UNREGISTERED_TAINT);
        let removed = taints.len() != had;
        let before = taints.len();
        for t in &claim.spec.taints {
            let present = taints.iter().any(|v| {
                v["key"] == t.key.as_str()
                    && v["effect"] == t.effect.as_str()
                    && v.get("value").and_then(|x| x.as_str()) == t.value.as_deref()
            });
            if !present {
                taints.push(serde_json::to_value(t).map_err(|e| e.to_string())?);
            }
        }
        let finalized = crate::cluster::nodes::has_finalizer(&node.metadata);
        if missing_labels.is_empty() && taints.len() == before && !removed && finalized {
            return Ok(());
        }
        // A strategic merge patch: labels and finalizers are merged into what the node has
        // (the termination finalizer keeps the Node until its instance is gone), taints replaced.
        let mut patch = serde_json::json!({ "metadata": { "labels": missing_labels } });
        if !finalized {
            patch["metadata"]["finalizers"] =
                serde_json::json!([crate::cluster::nodes::TERMINATION_FINALIZER]);
        }
        if taints.len() != before || removed {
            patch["spec"] = serde_json::json!({ "taints": taints });
        }
        let api: Api<Node> = Api::all(client.clone());
        api.patch(
            node.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
    }
}
