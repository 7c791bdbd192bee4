//! Preferences (see [`crate::scheduling::preferences`]): the batch is planned with every pod's
//! preferences held as required; the pods that could not be placed and still have a preference
//! are planned again, one preference relaxed, beside what the rounds before planned, until every
//! pod is placed or has nothing left to relax.
//!
//! A later round sees the new nodes of the earlier ones as full in-flight nodes: their pods count
//! for topology (spreads, affinity, anti-affinity), but they take no more pods, so a node's type,
//! alternatives and price stay those its own round chose.

use super::*;

/// Rounds at most; each relaxes one preference of every pod still unplaced.
const MAX_ROUNDS: usize = 16;

/// Plans `input`, relaxing preferences as Karpenter does.
pub(super) fn solve_relaxing(input: &Input<'_>) -> Plan {
    // Per input pod: the constraints it is planned with in the next round.
    let mut current: Vec<Constraints> = input.pods.iter().map(|p| p.constraints.clone()).collect();
    let strict = |pods: &[usize], current: &[Constraints]| -> Vec<PendingPod> {
        pods.iter()
            .map(|&i| PendingPod {
                constraints: current[i].with_preferences_required(),
                ..input.pods[i].clone()
            })
            .collect()
    };
    let all: Vec<usize> = (0..input.pods.len()).collect();
    let pods = strict(&all, &current);
    let mut plan = Solver::new(&Input {
        pods: &pods,
        ..*input
    })
    .run();
    for _ in 0..MAX_ROUNDS {
        // Pods left out that still have something to relax.
        let mut retry = Vec::new();
        for u in &plan.unschedulable {
            let i = u.pod_index;
            if input.pods[i].invalid.is_some() {
                continue;
            }
            if let Some(relaxed) = current[i].relaxed() {
                current[i] = relaxed;
                retry.push(i);
            }
        }
        if retry.is_empty() {
            break;
        }
        // What this plan holds, as nodes the next round plans beside, and charged to the pools'
        // limits.
        let nodes = with_plan(input, &plan);
        let pools = charged(input, &plan);
        let pods = strict(&retry, &current);
        let next = Solver::new(&Input {
            pods: &pods,
            pools: &pools,
            catalog: input.catalog,
            nodes: &nodes,
        })
        .run();
        merge(&mut plan, next, &retry, input.nodes.len());
    }
    plan
}

/// The cluster's nodes with the placements of `plan` on them, and its new nodes after them as
/// full in-flight nodes (named so no Node can have the name).
fn with_plan(input: &Input<'_>, plan: &Plan) -> Vec<ExistingNode> {
    let bound = |i: usize| BoundPod {
        namespace: input.pods[i].constraints.namespace.clone(),
        labels: input.pods[i].constraints.labels.clone(),
        anti_affinity: input.pods[i].constraints.anti_affinity.clone(),
    };
    let mut out = input.nodes.to_vec();
    for p in &plan.placements {
        let node = &mut out[p.node_index];
        node.requested += input.pods[p.pod_index].requests;
        node.pods.push(bound(p.pod_index));
    }
    for (k, n) in plan.nodes.iter().enumerate() {
        let name = format!("planned/{k}");
        let pool = input.pools.iter().find(|p| p.name == n.node_pool);
        let mut labels = pool.map(|p| p.labels.clone()).unwrap_or_default();
        labels.insert(labels::ZONE.to_owned(), n.zone.clone());
        labels.insert(labels::HOSTNAME.to_owned(), name.clone());
        labels.insert(labels::NODEPOOL.to_owned(), n.node_pool.clone());
        labels.insert(
            labels::CAPACITY_TYPE.to_owned(),
            n.capacity_type.to_string(),
        );
        labels.insert(labels::INSTANCE_TYPE.to_owned(), n.instance_type.clone());
        out.push(ExistingNode {
            name,
            labels,
            taints: pool.map(|p| p.taints.clone()).unwrap_or_default(),
            // Full: it takes no pod of a later round.
            allocatable: n.requests,
            requested: n.requests,
            pods: n.pod_indices.iter().map(|&i| bound(i)).collect(),
            in_flight: true,
        });
    }
    out
}

/// The pools with the new nodes of `plan` counted against their limits, each at the largest of
/// its type and alternatives per resource (a launch may end as any of them), so the rounds
/// together stay within every limit.
fn charged(input: &Input<'_>, plan: &Plan) -> Vec<Pool> {
    let mut pools = input.pools.to_vec();
    for n in &plan.nodes {
        let Some(pool) = pools.iter_mut().find(|p| p.name == n.node_pool) else {
            continue;
        };
        let largest = std::iter::once(&n.instance_type)
            .chain(&n.alternatives)
            .filter_map(|t| input.catalog.get(t))
            .fold(Resources::ZERO, |l, it| {
                l.slot_max(&it.capacity(&pool.kubelet))
            });
        pool.in_use.add_node(&largest);
    }
    pools
}

/// Folds the plan of a relaxed round (over the input pods `retry`, in that order) into `plan`.
fn merge(plan: &mut Plan, next: Plan, retry: &[usize], input_nodes: usize) {
    let retried: std::collections::HashSet<usize> = retry.iter().copied().collect();
    plan.unschedulable
        .retain(|u| !retried.contains(&u.pod_index));
    plan.unschedulable
        .extend(next.unschedulable.into_iter().map(|mut u| {
            u.pod_index = retry[u.pod_index];
            u
        }));
    plan.unschedulable.sort_by_key(|u| u.pod_index);
    for mut p in next.placements {
        // Later rounds' nodes are full; only the cluster's own nodes take pods.
        debug_assert!(p.node_index < input_nodes);
        p.pod_index = retry[p.pod_index];
        plan.placements.push(p);
    }
    plan.placements.sort_by_key(|p| p.pod_index);
    for mut n in next.nodes {
        for i in &mut n.pod_indices {
            *i = retry[*i];
        }
        plan.nodes.push(n);
    }
    let total: f64 = plan.nodes.iter().map(|n| n.price_per_hour).sum();
    plan.total_price_per_hour = (total * 1e6).round() / 1e6;
}
