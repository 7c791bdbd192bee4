//! Compatibility: which offerings of a pool's instance types a group's constraints allow.

use super::*;

/// Whether a node with these labels satisfies the pod's node selector and required affinity.
pub(super) fn node_labels_satisfy(node: &BTreeMap<String, String>, c: &Constraints) -> bool {
    let ok = |r: &Requirement| r.allows(node.get(&r.key).map(String::as_str));
    c.node_selector.iter().all(ok)
        && (c.node_affinity.is_empty() || c.node_affinity.iter().any(|term| term.iter().all(ok)))
}

/// The value a new node of `pool`, type `it` and offering would carry for `key`; `Many` when the
/// pool leaves it open (a requirement on a custom key).
pub(super) enum NodeValue<'v> {
    One(std::borrow::Cow<'v, str>),
    Many(&'v Requirement),
    Absent,
}

pub(super) fn node_value<'v>(
    pool: &'v Pool,
    it: &InstanceType,
    key: &str,
    region: &str,
) -> NodeValue<'v> {
    if labels::is_instance_label(key) {
        return match it.label(key) {
            Some(v) => NodeValue::One(std::borrow::Cow::Owned(v)),
            None => NodeValue::Absent,
        };
    }
    match key {
        labels::NODEPOOL => return NodeValue::One(std::borrow::Cow::Borrowed(pool.name.as_str())),
        labels::REGION => return NodeValue::One(std::borrow::Cow::Owned(region.to_owned())),
        _ => {}
    }
    if let Some(v) = pool.labels.get(key) {
        return NodeValue::One(std::borrow::Cow::Borrowed(v.as_str()));
    }
    match pool.requirements.iter().find(|r| r.key == key) {
        Some(r) => NodeValue::Many(r),
        None => NodeValue::Absent,
    }
}

/// Whether a pod requirement can hold on a node whose value for the key is `value`.
pub(super) fn allows(req: &Requirement, value: &NodeValue<'_>) -> bool {
    match value {
        NodeValue::One(v) => req.allows(Some(v)),
        NodeValue::Absent => req.allows(None),
        NodeValue::Many(pool_req) => match pool_req.operator {
            crate::model::Operator::In => pool_req.values.iter().any(|v| req.allows(Some(v))),
            crate::model::Operator::Exists | crate::model::Operator::NotIn => {
                // the node gets some value the pool allows; the pod can pick it if its own
                // requirement admits any value the pool does not rule out
                match req.operator {
                    crate::model::Operator::In => {
                        req.values.iter().any(|v| pool_req.allows(Some(v)))
                    }
                    crate::model::Operator::DoesNotExist => false,
                    _ => true,
                }
            }
            crate::model::Operator::DoesNotExist => req.allows(None),
            _ => true,
        },
    }
}

/// Offerings a group may use in a pool.
pub(super) fn compat(catalog: &Catalog, pool: &Pool, zones: &[String], c: &Constraints) -> Compat {
    let mut masks = vec![0u64; catalog.types.len()];
    let mut zone_types = vec![0usize; zones.len()];
    let mut any = false;
    let terms: Vec<Vec<&Requirement>> = if c.node_affinity.is_empty() {
        vec![c.node_selector.iter().collect()]
    } else {
        c.node_affinity
            .iter()
            .map(|t| c.node_selector.iter().chain(t.iter()).collect())
            .collect()
    };
    for (t, it) in catalog.types.iter().enumerate() {
        if it.offerings.len() > 64 {
            continue;
        }
        // pool requirements on type labels
        let pool_ok = pool.requirements.iter().all(|r| {
            labels::is_offering_label(&r.key)
                || match node_value(pool, it, &r.key, &catalog.region) {
                    NodeValue::One(v) => r.allows(Some(&v)),
                    NodeValue::Absent => r.allows(None),
                    NodeValue::Many(_) => true,
                }
        });
        if !pool_ok {
            continue;
        }
        let mut mask = 0u64;
        for term in &terms {
            let type_ok = term.iter().all(|r| {
                labels::is_offering_label(&r.key)
                    || allows(r, &node_value(pool, it, &r.key, &catalog.region))
            });
            if !type_ok {
                continue;
            }
            for (o, off) in it.offerings.iter().enumerate() {
                if !off.available {
                    continue;
                }
                let value = |key: &str| -> Option<&str> {
                    match key {
                        labels::ZONE | labels::ZONE_BETA => Some(off.zone.as_str()),
                        labels::CAPACITY_TYPE => Some(off.capacity_type.as_str()),
                        _ => None,
                    }
                };
                let ok = pool
                    .requirements
                    .iter()
                    .chain(term.iter().copied())
                    .filter(|r| labels::is_offering_label(&r.key))
                    .all(|r| r.allows(value(&r.key)));
                if ok {
                    mask |= 1 << o;
                }
            }
        }
        if mask != 0 {
            any = true;
            masks[t] = mask;
            let mut seen = 0u64;
            for (o, off) in it.offerings.iter().enumerate() {
                if mask & (1 << o) != 0
                    && let Some(z) = zones.iter().position(|x| *x == off.zone)
                    && seen & (1 << z) == 0
                {
                    seen |= 1 << z;
                    zone_types[z] += 1;
                }
            }
        }
    }
    Compat {
        masks,
        zone_types,
        any,
    }
}

pub(crate) fn untolerated<'t>(taints: &'t [Taint], c: &Constraints) -> Option<&'t Taint> {
    taints.iter().find(|taint| {
        taint.effect != TaintEffect::PreferNoSchedule
            && !c
                .tolerations
                .iter()
                .any(|t| taint.is_tolerated_by(&t.to_toleration()))
    })
}
