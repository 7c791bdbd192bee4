//! Explanations: the reasons given for pods the plan cannot place.

use super::*;

impl Solver<'_> {
    pub(super) fn limits_reason(&self, pool: usize) -> String {
        let p = &self.input.pools[pool];
        let u = &self.usage[pool];
        let mut parts = Vec::new();
        if let Some(cpu) = p.limits.cpu_millis {
            parts.push(format!("cpu {} of {}", fmt_cpu(u.cpu_millis), fmt_cpu(cpu)));
        }
        if let Some(mem) = p.limits.memory_bytes {
            parts.push(format!(
                "memory {}Gi of {}Gi",
                u.memory_bytes >> 30,
                mem >> 30
            ));
        }
        if let Some(nodes) = p.limits.nodes {
            parts.push(format!("nodes {} of {}", u.nodes, nodes));
        }
        for (k, limit) in p.limits.others.iter().enumerate() {
            if let Some(limit) = limit {
                let name = crate::model::resources::NAMES[k];
                parts.push(format!("{name} {} of {limit}", u.others[k]));
            }
        }
        format!(
            "nodepool {} has reached its limits ({} in use); no other pool can take the pod",
            p.name,
            parts.join(", ")
        )
    }

    pub(super) fn no_fit_reason(&self, pool: usize, zone: Option<usize>, class: &Class) -> String {
        let p = &self.input.pools[pool];
        let where_ = zone.map_or(String::new(), |z| format!(" in zone {}", self.zones[z]));
        let what = if class.bundle.is_empty() {
            format!("requests {}", class.req)
        } else {
            format!(
                "must share one node with the {} other pods of its kubernetes.io/hostname affinity (together {})",
                class.bundle.len() - 1,
                class.req
            )
        };
        // the allowed type with the most of the first resource that does not fit
        let compat = self.groups[class.group]
            .pools
            .iter()
            .find(|(x, _)| *x == pool)
            .map(|(_, c)| c.clone());
        let mut largest: Option<(i64, &InstanceType, Resources)> = None;
        let mut blocking = None;
        if let Some(compat) = compat {
            for (t, it) in self.input.catalog.types.iter().enumerate() {
                if compat.masks[t] == 0 {
                    continue;
                }
                let Some((room, _)) = self.type_room[pool][t] else {
                    continue;
                };
                let slot = class.req.first_excess(&room).unwrap_or(CPU);
                blocking.get_or_insert(slot);
                let v = room.0[blocking.unwrap_or(CPU)];
                if largest.is_none_or(|(b, _, _)| v > b) {
                    largest = Some((v, it, room));
                }
            }
        }
        match largest {
            Some((_, it, room)) => format!(
                "it {what}, more than any instance type nodepool {}{where_} allows can give it (largest: {} with {} allocatable after DaemonSets)",
                p.name, it.name, room
            ),
            None => format!(
                "it {what}, and nodepool {}{where_} offers no instance type for it",
                p.name
            ),
        }
    }

    // --- 6. tails ----------------------------------------------------------------------------
}

pub(super) fn fmt_cpu(millis: i64) -> String {
    if millis % 1000 == 0 {
        format!("{}", millis / 1000)
    } else {
        format!("{millis}m")
    }
}

/// Why a pool offers nothing to a group: the first pod requirement that rules out every type
/// the pool allows, else a conflict with the pool's own requirements.
pub(super) fn explain_incompatible(catalog: &Catalog, pool: &Pool, c: &Constraints) -> String {
    let pool_only = Constraints::default();
    let pool_compat = compat(catalog, pool, &catalog.zones(), &pool_only);
    if !pool_compat.any {
        return format!(
            "nodepool {}: its requirements leave no instance type with an available offering",
            pool.name
        );
    }
    for r in c
        .node_selector
        .iter()
        .chain(c.node_affinity.iter().flatten())
    {
        let single = Constraints {
            node_selector: vec![r.clone()],
            ..Default::default()
        };
        if !compat(catalog, pool, &catalog.zones(), &single).any {
            let mut s = String::new();
            let _ = write!(
                s,
                "nodepool {}: no instance type it allows satisfies {} {}",
                pool.name, r.key, r.operator
            );
            if !r.values.is_empty() {
                let _ = write!(s, " [{}]", r.values.join(", "));
            }
            return s;
        }
    }
    format!(
        "nodepool {}: no instance type it allows satisfies the pod's node selector and affinity together",
        pool.name
    )
}

pub(super) fn no_pool_reason(group: &Group, pools: &[Pool]) -> String {
    if pools.is_empty() {
        return "no NodePool is configured".to_owned();
    }
    if group.pool_problems.is_empty() {
        return "no NodePool can take it".to_owned();
    }
    format!(
        "no NodePool can take it: {}",
        group.pool_problems.join("; ")
    )
}
