//! From a plan to a launch: the NodeClaim written for each planned node (the chosen offering,
//! its alternatives in the zone, then on-demand where a spot pool allows it; the pods, requests
//! and labels), and the launch request made from a claim (the pool's node class, registration
//! labels and taints, kubelet settings).

use super::*;

/// Whether every pod planned onto `node` (`pods`: what its `pod_indices` index) may also run on a
/// node of capacity type `ct`. A pod whose nodeSelector or required node affinity pins the other
/// type (as a spot/on-demand split does) would be stranded on a fallback node of this type.
pub(super) fn pods_allow(node: &PlannedNode, pods: &[PendingPod], ct: CapacityType) -> bool {
    let value = Some(ct.as_str());
    let allows = |reqs: &[Requirement]| {
        reqs.iter()
            .filter(|r| r.key == labels::CAPACITY_TYPE)
            .all(|r| r.allows(value))
    };
    node.pod_indices
        .iter()
        .filter_map(|&i| pods.get(i))
        .all(|p| {
            let c = &p.constraints;
            allows(&c.node_selector)
                && (c.node_affinity.is_empty() || c.node_affinity.iter().any(|t| allows(t)))
        })
}

/// The claim for one planned node: the chosen offering and its alternatives in the same zone,
/// then (for spot) the same types on-demand if the pool allows it and its pods (`pods`: what
/// `node.pod_indices` index; empty when unknown) may run there.
pub(super) fn claim_for(
    node: &PlannedNode,
    pool_cfg: &crate::config::NodePool,
    pools: &[Pool],
    catalog: &Catalog,
    pods: &[PendingPod],
) -> NodeClaim {
    let pool = pools.iter().find(|p| p.name == node.node_pool);
    let mut offerings = Vec::new();
    let mut capacity_types = vec![node.capacity_type];
    if node.capacity_type == CapacityType::Spot
        && pool.is_some_and(|p| {
            crate::model::requirements::allows_capacity_type(
                &p.requirements,
                CapacityType::OnDemand,
            )
        })
        && pods_allow(node, pods, CapacityType::OnDemand)
    {
        capacity_types.push(CapacityType::OnDemand);
    }
    for ct in &capacity_types {
        let mut these: Vec<ClaimOffering> = std::iter::once(&node.instance_type)
            .chain(node.alternatives.iter())
            .filter_map(|t| {
                let it = catalog.get(t)?;
                let o = it
                    .offerings
                    .iter()
                    .find(|o| o.zone == node.zone && o.capacity_type == *ct && o.available)?;
                Some(ClaimOffering {
                    instance_type: t.clone(),
                    zone: node.zone.clone(),
                    capacity_type: ct.as_str().to_owned(),
                    price_per_hour: o.price,
                })
            })
            .collect();
        if *ct != node.capacity_type {
            these.sort_by(|a, b| a.price_per_hour.total_cmp(&b.price_per_hour));
        }
        offerings.extend(these);
    }
    let mut requirements: Vec<Requirement> = pool
        .map(|p| p.requirements.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.key != labels::ZONE && r.key != labels::CAPACITY_TYPE)
        .collect();
    requirements.push(Requirement {
        key: labels::ZONE.to_owned(),
        operator: Operator::In,
        values: vec![node.zone.clone()],
        min_values: None,
    });
    requirements.push(Requirement {
        key: labels::CAPACITY_TYPE.to_owned(),
        operator: Operator::In,
        values: capacity_types
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect(),
        min_values: None,
    });
    let mut node_labels = pool.map(|p| p.labels.clone()).unwrap_or_default();
    node_labels.insert(labels::NODEPOOL.to_owned(), node.node_pool.clone());
    let taints: Vec<Taint> = pool.map(|p| p.taints.clone()).unwrap_or_default();
    NodeClaim {
        metadata: ObjectMeta {
            labels: Some(BTreeMap::from([(
                labels::NODEPOOL.to_owned(),
                node.node_pool.clone(),
            )])),
            ..Default::default()
        },
        spec: NodeClaimSpec {
            node_pool: node.node_pool.clone(),
            node_class: pool_cfg.spec.template.spec.node_class_ref.name.clone(),
            requirements,
            offerings,
            pods: node.pods.clone(),
            resources: quantities(node.requests),
            labels: node_labels,
            taints,
        },
        ..Default::default()
    }
}

fn quantities(r: Resources) -> BTreeMap<String, String> {
    NAMES
        .iter()
        .enumerate()
        .filter(|(slot, _)| r.0[*slot] != 0)
        .map(|(slot, name)| ((*name).to_owned(), format_slot(slot, r.0[slot])))
        .collect()
}

pub(super) fn launch_request(
    claim: &NodeClaim,
    config: &Config,
    cluster: &ClusterInfo,
) -> Option<LaunchRequest> {
    let pool = config.node_pools.get(&claim.spec.node_pool)?;
    let class = config.node_class_of(pool)?;
    // Registration puts the claim's own label on the Node; leaving it out of the user data lets
    // every claim of a pool share one launch template (their content, and name, are equal).
    let mut labels = claim.spec.labels.clone();
    labels.remove(CLAIM_TAG);
    let offerings: Vec<LaunchOffering> = claim
        .spec
        .offerings
        .iter()
        .filter_map(|o| {
            Some(LaunchOffering {
                instance_type: o.instance_type.clone(),
                zone: o.zone.clone(),
                capacity_type: CapacityType::parse(&o.capacity_type)?,
                price_per_hour: o.price_per_hour,
            })
        })
        .collect();
    Some(LaunchRequest {
        claim_name: claim.name().to_owned(),
        client_token: claim.uid().to_owned(),
        node_pool: claim.spec.node_pool.clone(),
        node_class: Arc::new(class.clone()),
        cluster: cluster.clone(),
        offerings,
        labels,
        taints: crate::cloud::userdata::registration_taints(&[
            &claim.spec.taints,
            &pool.spec.template.spec.startup_taints,
            &[Taint {
                key: UNREGISTERED_TAINT.to_owned(),
                value: None,
                effect: crate::model::taints::TaintEffect::NoExecute,
            }],
        ]),
        max_pods: class
            .spec
            .kubelet
            .as_ref()
            .and_then(|k| k.max_pods)
            .map(i64::from),
    })
}

#[cfg(test)]
mod fallback_tests {
    use super::*;

    fn pod(spec_extra: serde_json::Value) -> PendingPod {
        let mut spec = serde_json::json!({"containers": [{"name": "c", "image": "x"}]});
        spec.as_object_mut()
            .unwrap()
            .extend(spec_extra.as_object().unwrap().clone());
        PendingPod::from_pod(
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": "ns"}, "spec": spec
            }))
            .unwrap(),
        )
    }

    fn node(pod_indices: Vec<usize>) -> PlannedNode {
        PlannedNode {
            node_pool: "default".into(),
            instance_type: "m5.large".into(),
            zone: "us-east-1a".into(),
            capacity_type: CapacityType::Spot,
            price_per_hour: 0.03,
            price_estimated: false,
            pods: Vec::new(),
            alternatives: Vec::new(),
            requests: Resources::ZERO,
            allocatable: Resources::ZERO,
            pod_indices,
        }
    }

    #[test]
    fn pods_pinned_to_spot_get_no_on_demand_fallback() {
        let free = pod(serde_json::json!({}));
        let pinned =
            pod(serde_json::json!({"nodeSelector": {"karpenter.sh/capacity-type": "spot"}}));
        let either = pod(
            serde_json::json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]}]},
                {"matchExpressions": [{"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]}]}]}}}}),
        );
        // A capacity split's spot choice that may fall back: spot preferred, not required.
        let prefers = pod(
            serde_json::json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "preference": {"matchExpressions": [{"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]}]}}]}}}),
        );
        let pods = [free, pinned, either, prefers];
        let od = CapacityType::OnDemand;
        assert!(pods_allow(&node(vec![0, 2]), &pods, od));
        assert!(pods_allow(&node(vec![3]), &pods, od));
        assert!(!pods_allow(&node(vec![0, 1]), &pods, od));
        assert!(pods_allow(&node(vec![1]), &pods, CapacityType::Spot));
        // Pods not at hand: nothing to check.
        assert!(pods_allow(&node(vec![0, 1]), &[], od));
    }
}
