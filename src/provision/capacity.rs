//! What the planner is given of the pools: their DaemonSet overhead, what nodes and claims in
//! flight count against their limits, and which static pools are short of their replicas.

use super::*;

impl Run {
    /// Claims of `pool` that are or will be a node, and those that failed until they are
    /// collected ([`FAILED_CLAIM_TTL`]): a static pool retries a failed launch after that, not
    /// at every tick.
    pub(super) fn live_claims(&self, pool: &str) -> usize {
        self.claims
            .values()
            .filter(|c| {
                c.spec.node_pool == pool
                    && matches!(
                        c.phase(),
                        Phase::Pending | Phase::Launched | Phase::Registered | Phase::Failed
                    )
            })
            .count()
    }

    /// Whether a static NodePool (`spec.replicas`) has fewer live claims than replicas.
    pub(super) fn static_missing(&self, config: &Config) -> bool {
        config.node_pools.values().any(|p| {
            p.spec
                .replicas
                .is_some_and(|r| (self.live_claims(p.name()) as i64) < r)
        })
    }

    /// Pools for the planner, with what existing pool nodes and claims in flight count against
    /// their limits: a node its allocatable; a launched claim its instance type; a claim not yet
    /// launched the largest of its offerings, per resource, since the launch may end as any of them
    /// (the planner keeps those within the limits).
    pub(super) fn pools(
        &self,
        config: &Config,
        catalog: &Catalog,
        nodes: &[ExistingNode],
    ) -> Vec<Pool> {
        let daemonsets = self.p.daemonsets.pods();
        let mut pools = crate::scheduling::pools::pools_from_config(config, &daemonsets);
        for pool in &mut pools {
            let mut usage = Usage::default();
            for n in nodes {
                if n.labels.get(labels::NODEPOOL) == Some(&pool.name) {
                    usage.add_node(&n.allocatable);
                }
            }
            for c in self.claims.values() {
                if c.spec.node_pool != pool.name
                    || !matches!(c.phase(), Phase::Pending | Phase::Launched)
                {
                    continue;
                }
                let launched = c.status.as_ref().and_then(|s| s.instance_type.clone());
                let options: Vec<&str> = match &launched {
                    Some(t) => vec![t.as_str()],
                    None => c
                        .spec
                        .offerings
                        .iter()
                        .map(|o| o.instance_type.as_str())
                        .collect(),
                };
                let largest = options
                    .into_iter()
                    .filter_map(|t| catalog.get(t))
                    .fold(Resources::ZERO, |l, it| {
                        l.slot_max(&it.capacity(&pool.kubelet))
                    });
                usage.add_node(&largest);
            }
            // A static pool's nodes are all claim-backed: count its live claims, so a node that
            // registered but is not Ready yet is not launched again.
            if pool.replicas.is_some() {
                usage.nodes = usage.nodes.max(self.live_claims(&pool.name) as i64);
            }
            pool.in_use = usage;
        }
        pools
    }
}
