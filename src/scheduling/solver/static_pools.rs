//! Static NodePools (`spec.replicas`, as Karpenter has them since v1.7): the pool keeps that many
//! nodes whatever the pods. The planner adds the missing ones (the replicas less the pool's nodes
//! and claims in flight, `in_use.nodes`, and no more than `limits.nodes` allows), each the
//! cheapest available offering the pool's requirements allow with room for its DaemonSets; it
//! plans no pending pod onto new nodes of a static pool (pods go to its nodes once they exist, as
//! to any node).

use super::*;

/// Appends the nodes static pools are missing to `plan`.
pub(super) fn add_missing_nodes(input: &Input<'_>, plan: &mut Plan) {
    let zones = input.catalog.zones();
    let mut added = false;
    for pool in input.pools {
        let Some(replicas) = pool.replicas else {
            continue;
        };
        let mut missing = replicas - pool.in_use.nodes;
        if let Some(limit) = pool.limits.nodes {
            missing = missing.min(limit - pool.in_use.nodes);
        }
        if missing <= 0 {
            continue;
        }
        let Some(node) = cheapest_node(input, pool, &zones) else {
            continue;
        };
        for _ in 0..missing {
            plan.nodes.push(node.clone());
        }
        added = true;
    }
    if added {
        let total: f64 = plan.nodes.iter().map(|n| n.price_per_hour).sum();
        plan.total_price_per_hour = (total * 1e6).round() / 1e6;
    }
}

/// An empty node of `pool`: its cheapest allowed offering, with the next cheapest types in that
/// zone and capacity type as alternatives.
fn cheapest_node(input: &Input<'_>, pool: &Pool, zones: &[String]) -> Option<PlannedNode> {
    let catalog = input.catalog;
    let allowed = compat(catalog, pool, zones, &Constraints::default());
    let fits = |t: &InstanceType| pool.daemon_overhead.fits_in(&t.allocatable(&pool.kubelet));
    let mut best: Option<(f64, usize, usize)> = None;
    for (t, it) in catalog.types.iter().enumerate() {
        if allowed.masks[t] == 0 || !fits(it) {
            continue;
        }
        for (o, off) in it.offerings.iter().enumerate() {
            if allowed.masks[t] & (1 << o) != 0
                && best.is_none_or(|(price, _, _)| off.price < price)
            {
                best = Some((off.price, t, o));
            }
        }
    }
    let (price, t, o) = best?;
    let it = &catalog.types[t];
    let chosen = &it.offerings[o];
    let mut alternatives: Vec<(f64, &str)> = catalog
        .types
        .iter()
        .enumerate()
        .filter(|(x, other)| *x != t && allowed.masks[*x] != 0 && fits(other))
        .filter_map(|(x, other)| {
            other
                .offerings
                .iter()
                .enumerate()
                .find(|(oo, off)| {
                    allowed.masks[x] & (1 << oo) != 0
                        && off.zone == chosen.zone
                        && off.capacity_type == chosen.capacity_type
                })
                .map(|(_, off)| (off.price, other.name.as_str()))
        })
        .collect();
    alternatives.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
    Some(PlannedNode {
        node_pool: pool.name.clone(),
        instance_type: it.name.clone(),
        zone: chosen.zone.clone(),
        capacity_type: chosen.capacity_type,
        price_per_hour: price,
        price_estimated: chosen.price_estimated,
        pods: Vec::new(),
        alternatives: alternatives
            .into_iter()
            .take(MAX_ALTERNATIVES)
            .map(|(_, name)| name.to_owned())
            .collect(),
        requests: pool.daemon_overhead,
        allocatable: it.allocatable(&pool.kubelet),
        pod_indices: Vec::new(),
    })
}
