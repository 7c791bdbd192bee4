//! Checks of nodewright's own Policy document: references to NodePools, selectors, durations.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::super::Parsed;
use super::super::duration::parse_go_duration;
use super::super::policy::{PolicySpec, PricingSpec, ProvisioningSpec, SpreadSpec};
use super::super::yaml::FieldPath;
use super::syntax::{label_key, label_value, scheduler_name};
use super::{Issues, listed};
use crate::model::catalog::CapacityType;
use crate::model::labels::CAPACITY_TYPE;
use crate::model::requirements::allows_capacity_type;

pub(super) fn policy(spec: &PolicySpec, parsed: &Parsed, issues: &mut Issues<'_>) {
    let path = FieldPath::of("spec");
    issues.check(
        path.key("nodeSelectorKey"),
        label_key(&spec.node_selector_key),
    );
    if let Some(spread) = &spec.spread {
        self::spread(spread, &path.key("spread"), issues);
    }
    if let Some(name) = &spec.scheduler_name {
        issues.check(path.key("schedulerName"), scheduler_name(name));
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let rule_path = path.key("rules").index(i);
        if !parsed
            .node_pools
            .iter()
            .any(|(_, pool)| pool.name() == rule.node_pool)
        {
            issues.add(
                rule_path.key("nodePool"),
                format!(
                    "NodePool {:?} is not defined in this file (defined: {})",
                    rule.node_pool,
                    listed(parsed.node_pools.iter().map(|(_, p)| p.name()))
                ),
            );
        }
        if let Some(selector) = &rule.namespace_selector {
            label_selector(selector, &rule_path.key("namespaceSelector"), issues);
        }
        if let Some(selector) = &rule.pod_selector {
            label_selector(selector, &rule_path.key("podSelector"), issues);
        }
        if let Some(spread) = &rule.spread {
            self::spread(spread, &rule_path.key("spread"), issues);
        }
        if let Some(name) = &rule.scheduler_name {
            issues.check(rule_path.key("schedulerName"), scheduler_name(name));
        }
        if let Some(split) = &rule.capacity_split {
            let at = rule_path.key("capacitySplit");
            if split.spot_percent > 100 {
                issues.add(
                    at.key("spotPercent"),
                    format!("{} is out of range: 0 to 100", split.spot_percent),
                );
            }
            let pool = parsed
                .node_pools
                .iter()
                .find(|(_, pool)| pool.name() == rule.node_pool);
            if let Some((_, pool)) = pool
                && let Some(missing) = CapacityType::ALL
                    .into_iter()
                    .find(|ct| !allows_capacity_type(&pool.spec.template.spec.requirements, *ct))
            {
                issues.add(
                    at,
                    format!(
                        "NodePool {:?} does not launch {missing} nodes, so it cannot hold a split \
                         between spot and on-demand: allow both in its requirements \
                         ({{key: {CAPACITY_TYPE}, operator: In, values: [spot, on-demand]}}; \
                         without that requirement a NodePool launches on-demand only)",
                        rule.node_pool
                    ),
                );
            }
        }
    }
    let c = &spec.consolidation;
    let at = path.key("consolidation");
    for (field, value, max) in [
        ("minSavingsPerHour", c.min_savings_per_hour, f64::MAX),
        ("minSavingsPercent", c.min_savings_percent, 100.0),
        (
            "podEvictionCostPerHour",
            c.pod_eviction_cost_per_hour,
            f64::MAX,
        ),
    ] {
        if !value.is_finite() || value < 0.0 || value > max {
            let range = if max == 100.0 {
                "0 to 100"
            } else {
                "0 or more"
            };
            issues.add(at.key(field), format!("{value} is out of range: {range}"));
        }
    }
    if let Err(e) = parse_go_duration(&c.stabilization_window) {
        issues.add(at.key("stabilizationWindow"), e.to_string());
    }
    if let Err(e) = parse_go_duration(&spec.capacity_split_restore.interval) {
        issues.add(
            path.key("capacitySplitRestore").key("interval"),
            e.to_string(),
        );
    }
    if let Some(interruption) = &spec.interruption {
        let at = path.key("interruption");
        if interruption.queue.trim().is_empty() {
            issues.add(
                at.key("queue"),
                "the queue's name or URL is empty".to_owned(),
            );
        }
        for (i, pool) in interruption.rebalance_node_pools.iter().enumerate() {
            if !parsed.node_pools.iter().any(|(_, p)| p.name() == pool) {
                issues.add(
                    at.key("rebalanceNodePools").index(i),
                    format!(
                        "NodePool {pool:?} is not defined in this file (defined: {})",
                        listed(parsed.node_pools.iter().map(|(_, p)| p.name()))
                    ),
                );
            }
        }
    }
    for (i, quota) in spec.quotas.iter().enumerate() {
        let quota_path = path.key("quotas").index(i);
        match &quota.namespace_selector {
            Some(selector) => {
                label_selector(selector, &quota_path.key("namespaceSelector"), issues)
            }
            None if quota.namespaces.is_empty() => issues.add(
                quota_path,
                "a quota needs namespaces or a namespaceSelector",
            ),
            None => {}
        }
    }
    let batching = path.key("batching");
    let idle = parse_go_duration(&spec.batching.idle_duration);
    let max = parse_go_duration(&spec.batching.max_duration);
    if let Err(message) = &idle {
        issues.add(batching.key("idleDuration"), message.clone());
    }
    if let Err(message) = &max {
        issues.add(batching.key("maxDuration"), message.clone());
    }
    if let (Ok(idle), Ok(max)) = (idle, max)
        && idle > max
    {
        issues.add(
            batching.key("idleDuration"),
            format!(
                "idleDuration {} must not exceed maxDuration {}",
                spec.batching.idle_duration, spec.batching.max_duration
            ),
        );
    }
    pricing(&spec.pricing, &path.key("pricing"), issues);
    provisioning(&spec.provisioning, &path.key("provisioning"), issues);
}

fn provisioning(spec: &ProvisioningSpec, path: &FieldPath, issues: &mut Issues<'_>) {
    for (field, value) in [
        ("registrationTimeout", &spec.registration_timeout),
        ("orphanGracePeriod", &spec.orphan_grace_period),
        ("unavailableOfferingTtl", &spec.unavailable_offering_ttl),
        ("nodeClassResolveTtl", &spec.node_class_resolve_ttl),
    ] {
        match parse_go_duration(value) {
            Ok(d) if d.is_zero() => issues.add(path.key(field), "must be longer than 0s"),
            Ok(_) => {}
            Err(message) => issues.add(path.key(field), message),
        }
    }
    if let Some(name) = &spec.cluster_name {
        let valid = !name.is_empty()
            && name.len() <= 100
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            issues.add(
                path.key("clusterName"),
                format!("{name:?} is not an EKS cluster name (1-100 letters, digits, '-' or '_')"),
            );
        }
    }
    if let Some(endpoint) = &spec.cluster_endpoint
        && !endpoint.starts_with("https://")
    {
        issues.add(
            path.key("clusterEndpoint"),
            format!("{endpoint:?} must be an https:// URL"),
        );
    }
}

fn pricing(pricing: &PricingSpec, path: &FieldPath, issues: &mut Issues<'_>) {
    if let Some(ratio) = pricing.spot_estimate_ratio
        && !(ratio > 0.0 && ratio <= 1.0)
    {
        issues.add(
            path.key("spotEstimateRatio"),
            format!("spotEstimateRatio must be in (0, 1], not {ratio}"),
        );
    }
    for (i, o) in pricing.overrides.iter().enumerate() {
        let o_path = path.key("overrides").index(i);
        match (o.discount_percent, o.price_per_hour) {
            (Some(_), Some(_)) | (None, None) => issues.add(
                o_path.clone(),
                "an override needs exactly one of discountPercent and pricePerHour",
            ),
            (Some(d), None) if !(0.0..=100.0).contains(&d) => issues.add(
                o_path.key("discountPercent"),
                format!("discountPercent must be between 0 and 100, not {d}"),
            ),
            (None, Some(p)) if !(p.is_finite() && p >= 0.0) => issues.add(
                o_path.key("pricePerHour"),
                format!("pricePerHour must be a non-negative number, not {p}"),
            ),
            _ => {}
        }
        if let Some(c) = &o.capacity_type
            && c != "spot"
            && c != "on-demand"
        {
            issues.add(
                o_path.key("capacityType"),
                format!("capacityType must be spot or on-demand, not {c:?}"),
            );
        }
    }
}

fn spread(spread: &SpreadSpec, path: &FieldPath, issues: &mut Issues<'_>) {
    if spread.max_skew < 1 {
        issues.add(
            path.key("maxSkew"),
            format!("maxSkew must be at least 1, not {}", spread.max_skew),
        );
    }
    if spread.topology_key.is_empty() {
        issues.add(path.key("topologyKey"), "topologyKey must not be empty");
    } else {
        issues.check(path.key("topologyKey"), label_key(&spread.topology_key));
    }
}

fn label_selector(selector: &LabelSelector, path: &FieldPath, issues: &mut Issues<'_>) {
    for (key, value) in selector.match_labels.iter().flatten() {
        issues.check(
            path.key("matchLabels").key(key),
            label_key(key).and_then(|()| label_value(value)),
        );
    }
    for (i, expression) in selector.match_expressions.iter().flatten().enumerate() {
        let path = path.key("matchExpressions").index(i);
        issues.check(path.key("key"), label_key(&expression.key));
        let values = expression.values.as_deref().unwrap_or_default();
        match expression.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                issues.add(
                    path.key("values"),
                    format!("operator {} needs at least one value", expression.operator),
                );
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                issues.add(
                    path.key("values"),
                    format!(
                        "operator {} takes no values, got {}",
                        expression.operator,
                        values.len()
                    ),
                );
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => issues.add(
                path.key("operator"),
                format!("unknown operator {other:?}; expected In, NotIn, Exists or DoesNotExist"),
            ),
        }
    }
}
