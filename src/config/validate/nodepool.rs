//! NodePool checks: Karpenter v1's CRD validation rules (`karpenter.sh_nodepools.yaml`, its
//! patterns and CEL `x-kubernetes-validations`) and its runtime validation (`RuntimeValidate`,
//! which keeps a NodePool from going ready), plus the reference to an EC2NodeClass of this file.

use std::collections::{BTreeMap, BTreeSet};

use super::super::Parsed;
use super::super::nodepool::{Budget, NodePool};
use super::super::warning::WarningReason;
use super::super::yaml::FieldPath;
use super::syntax::{is_budget_nodes, label_key, label_value, quantity};
use super::{Issues, listed};
use crate::model::{Requirement, Taint, labels};
use crate::scheduling::disruption::Schedule;

/// The group a nodeClassRef must name (the EC2NodeClass apiVersion without its version).
const NODE_CLASS_GROUP: &str = "karpenter.k8s.aws";

/// Labels whose requirement values Karpenter knows; an `In` naming none of them is refused.
const KNOWN_VALUES: &[(&str, &[&str])] = &[
    (
        "karpenter.sh/capacity-type",
        &["on-demand", "spot", "reserved"],
    ),
    (
        "karpenter.k8s.aws/instance-tenancy",
        &["default", "dedicated"],
    ),
];

pub(super) fn node_pool(pool: &NodePool, parsed: &Parsed, issues: &mut Issues<'_>) {
    let spec = &pool.spec;
    let template = FieldPath::of("spec.template");
    if let Some(metadata) = &spec.template.metadata {
        let path = template.key("metadata").key("labels");
        if metadata.labels.len() > 100 {
            issues.add(
                path.clone(),
                format!(
                    "at most 100 labels are allowed, not {}",
                    metadata.labels.len()
                ),
            );
        }
        for (key, value) in &metadata.labels {
            issues.check(
                path.key(key),
                label_key(key)
                    .and_then(|()| label_value(value))
                    .and_then(|()| unrestricted(key)),
            );
        }
    }
    let template_spec = template.key("spec");
    node_class_ref(pool, parsed, &template_spec.key("nodeClassRef"), issues);
    taints(pool, &template_spec, issues);
    let requirements = &spec.template.spec.requirements;
    if requirements.len() > 100 {
        issues.add(
            template_spec.key("requirements"),
            format!(
                "at most 100 requirements are allowed, not {}",
                requirements.len()
            ),
        );
    }
    for (i, requirement) in requirements.iter().enumerate() {
        self::requirement(
            requirement,
            &template_spec.key("requirements").index(i),
            issues,
        );
    }
    if let Some(weight) = spec.weight.filter(|w| !(1..=100).contains(w)) {
        issues.add(
            FieldPath::of("spec.weight"),
            format!("weight must be between 1 and 100, not {weight}"),
        );
    }
    let limits = FieldPath::of("spec.limits");
    for (name, value) in &spec.limits {
        issues.check(limits.key(name), quantity(value));
    }
    if let Some(replicas) = spec.replicas {
        static_pool(pool, replicas, issues);
    }
    let disruption = FieldPath::of("spec.disruption");
    if spec.disruption.consolidate_after.is_none() {
        issues.add(
            disruption.key("consolidateAfter"),
            "consolidateAfter is required when disruption is set (e.g. consolidateAfter: 1m, or Never)",
        );
    }
    let budgets = &spec.disruption.budgets;
    if budgets.len() > 50 {
        issues.add(
            disruption.key("budgets"),
            format!("at most 50 budgets are allowed, not {}", budgets.len()),
        );
    }
    for (i, budget) in budgets.iter().enumerate() {
        self::budget(budget, &disruption.key("budgets").index(i), issues);
    }
}

fn node_class_ref(pool: &NodePool, parsed: &Parsed, path: &FieldPath, issues: &mut Issues<'_>) {
    let reference = &pool.spec.template.spec.node_class_ref;
    for (field, value) in [
        ("group", &reference.group),
        ("kind", &reference.kind),
        ("name", &reference.name),
    ] {
        if value.is_empty() {
            issues.add(path.key(field), format!("{field} may not be empty"));
            return;
        }
    }
    if reference.group != NODE_CLASS_GROUP {
        issues.add(
            path.key("group"),
            format!(
                "nodeClassRef group must be {NODE_CLASS_GROUP}, not {:?}",
                reference.group
            ),
        );
    } else if reference.kind != "EC2NodeClass" {
        issues.add(
            path.key("kind"),
            format!(
                "nodeClassRef kind must be EC2NodeClass, not {:?}",
                reference.kind
            ),
        );
    } else if !parsed
        .node_classes
        .iter()
        .any(|(_, class)| class.name() == reference.name)
    {
        issues.add(
            path.key("name"),
            format!(
                "EC2NodeClass {:?} is not defined in this file (defined: {})",
                reference.name,
                listed(parsed.node_classes.iter().map(|(_, c)| c.name()))
            ),
        );
    }
}

/// Karpenter refuses a label key in its own domains unless it is one it publishes, and
/// `kubernetes.io/hostname`; `karpenter.sh/nodepool` is Karpenter's to set. The CRD has the same
/// rules for template labels and requirement keys.
fn unrestricted(key: &str) -> Result<(), String> {
    match labels::restricted_requirement_key(key) {
        Some(why) => Err(format!("{why}; Karpenter refuses it")),
        None => Ok(()),
    }
}

fn taints(pool: &NodePool, template_spec: &FieldPath, issues: &mut Issues<'_>) {
    let spec = &pool.spec.template.spec;
    let mut seen: BTreeSet<(&str, &str)> = BTreeSet::new();
    for (field, taints) in [
        ("taints", &spec.taints),
        ("startupTaints", &spec.startup_taints),
    ] {
        for (i, taint) in taints.iter().enumerate() {
            let path = template_spec.key(field).index(i);
            self::taint(taint, &path, issues);
            let effect = taint.effect.as_str();
            if !seen.insert((&taint.key, effect)) {
                issues.add(
                    path.key("key"),
                    format!(
                        "duplicate taint {}:{effect} (taints and startupTaints together may hold a key and effect once)",
                        taint.key
                    ),
                );
            }
        }
    }
}

fn taint(taint: &Taint, path: &FieldPath, issues: &mut Issues<'_>) {
    issues.check(path.key("key"), label_key(&taint.key));
    if let Some(value) = &taint.value {
        // The CRD gives taint values the pattern of a qualified name (`example.com/gpu` is valid).
        issues.check(
            path.key("value"),
            label_key(value).map_err(|_| {
                format!("invalid taint value {value:?}: a name of alphanumerics, '-', '_' or '.' with an optional DNS prefix")
            }),
        );
    }
}

fn requirement(requirement: &Requirement, path: &FieldPath, issues: &mut Issues<'_>) {
    issues.check(
        path.key("key"),
        label_key(&requirement.key).and_then(|()| unrestricted(&requirement.key)),
    );
    let values = &requirement.values;
    let operator = requirement.operator.as_str();
    let bound = matches!(operator, "Gt" | "Lt" | "Gte" | "Lte");
    // A bound's single value is checked as an integer below, with a clearer message.
    for (i, value) in values.iter().enumerate().filter(|_| !bound) {
        issues.check(path.key("values").index(i), label_value(value));
    }
    match operator {
        "In" if values.is_empty() => {
            issues.add(path.key("values"), "operator In needs at least one value");
        }
        "NotIn" if values.is_empty() => issues.warn(
            path.key("values"),
            WarningReason::NoEffect,
            "operator NotIn with no values excludes nothing",
        ),
        "Exists" | "DoesNotExist" if !values.is_empty() => issues.warn(
            path.key("values"),
            WarningReason::NoEffect,
            format!(
                "operator {operator} takes no values; the {} listed are ignored",
                values.len()
            ),
        ),
        "Gt" | "Lt" | "Gte" | "Lte" => match values.as_slice() {
            [value] if value.parse::<i64>().is_ok_and(|v| v >= 0) => {}
            [value] => issues.add(
                path.key("values").index(0),
                format!("operator {operator} needs a non-negative integer value, not {value:?}"),
            ),
            _ => issues.add(
                path.key("values"),
                format!(
                    "operator {operator} needs exactly one integer value, got {}",
                    values.len()
                ),
            ),
        },
        _ => {}
    }
    if let Some(min_values) = requirement.min_values {
        if !(1..=50).contains(&min_values) {
            issues.add(
                path.key("minValues"),
                format!("minValues must be between 1 and 50, not {min_values}"),
            );
        } else if operator == "In" && min_values as usize > values.len() {
            issues.add(
                path.key("minValues"),
                format!(
                    "minValues {min_values} is more than the {} values listed",
                    values.len()
                ),
            );
        }
    }
    known_values(requirement, path, issues);
}

/// For labels with a fixed set of values, Karpenter refuses an `In` that names none of them (the
/// pool could launch nothing) and ignores the unknown ones beside a known one.
fn known_values(requirement: &Requirement, path: &FieldPath, issues: &mut Issues<'_>) {
    let Some((_, known)) = KNOWN_VALUES.iter().find(|(k, _)| *k == requirement.key) else {
        return;
    };
    if requirement.operator.as_str() != "In" || requirement.values.is_empty() {
        return;
    }
    let unknown: Vec<&str> = requirement
        .values
        .iter()
        .map(String::as_str)
        .filter(|v| !known.contains(v))
        .collect();
    let valid = requirement.values.len() - unknown.len();
    let expected = known.join(", ");
    if valid == 0 {
        issues.add(
            path.key("values"),
            format!(
                "no valid value for {}: expected one of {expected}",
                requirement.key
            ),
        );
    } else if let Some(min) = requirement.min_values.filter(|m| (*m as usize) > valid) {
        issues.add(
            path.key("minValues"),
            format!(
                "minValues {min} is more than the {valid} valid values for {} ({expected})",
                requirement.key
            ),
        );
    } else if !unknown.is_empty() {
        issues.warn(
            path.key("values"),
            WarningReason::NoEffect,
            format!(
                "{} is not a value of {} ({expected}); it is ignored",
                unknown.join(", "),
                requirement.key
            ),
        );
    }
}

/// A static NodePool (`replicas` set) may limit only `nodes` and has no `weight`.
fn static_pool(pool: &NodePool, replicas: i64, issues: &mut Issues<'_>) {
    let spec = &pool.spec;
    if replicas < 0 {
        issues.add(
            FieldPath::of("spec.replicas"),
            format!("replicas must be at least 0, not {replicas}"),
        );
    }
    if let Some(other) = spec.limits.keys().find(|k| *k != "nodes") {
        issues.add(
            FieldPath::of("spec.limits").key(other),
            format!("only 'limits.nodes' is supported on static NodePools (replicas is set), not {other:?}"),
        );
    }
    if spec.weight.is_some() {
        issues.add(
            FieldPath::of("spec.weight"),
            "'weight' is not supported on static NodePools (replicas is set)",
        );
    }
}

fn budget(budget: &Budget, path: &FieldPath, issues: &mut Issues<'_>) {
    if !is_budget_nodes(&budget.nodes) {
        issues.add(
            path.key("nodes"),
            format!(
                "nodes must be a count or a percentage such as 10%, not {:?}",
                budget.nodes
            ),
        );
    }
    match (&budget.schedule, &budget.duration) {
        (Some(schedule), Some(_)) => issues.check(path.key("schedule"), self::schedule(schedule)),
        (Some(_), None) => issues.add(
            path.key("schedule"),
            "'schedule' must be set with 'duration'",
        ),
        (None, Some(_)) => issues.add(
            path.key("duration"),
            "'duration' must be set with 'schedule'",
        ),
        _ => {}
    }
    let mut reasons: BTreeMap<_, usize> = BTreeMap::new();
    for (i, reason) in budget.reasons.iter().enumerate() {
        if let Some(first) = reasons.insert(*reason, i) {
            issues.add(
                path.key("reasons").index(i),
                format!("duplicate reason {reason:?} (also reasons[{first}])"),
            );
        }
    }
}

/// A budget schedule as Karpenter's cron reads it (`Schedule::parse`). One that never fires is
/// refused too: Karpenter would take its budget as always active.
fn schedule(schedule: &str) -> Result<(), String> {
    match Schedule::parse(schedule) {
        Err(why) => Err(format!("invalid schedule {schedule:?}: {why}")),
        Ok(parsed) if !parsed.fires() => Err(format!(
            "schedule {schedule:?} never fires (no day matches); Karpenter would keep the budget always active"
        )),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restricted_label_keys() {
        for key in [
            "karpenter.sh/capacity-type",
            "karpenter.k8s.aws/instance-family",
            "karpenter.k8s.aws/capacity-reservation-id",
            "topology.kubernetes.io/zone",
            "node.kubernetes.io/instance-type",
            "team",
            "example.com/karpenter.sh",
        ] {
            assert_eq!(unrestricted(key), Ok(()), "{key}");
        }
        for key in [
            "karpenter.sh/nodepool",
            "kubernetes.io/hostname",
            "karpenter.sh/registered",
            "sub.karpenter.sh/x",
            "karpenter.k8s.aws/instance-pods",
            "karpenter.k8s.aws/ec2nodeclass",
            "team.karpenter.k8s.aws/instance-family",
        ] {
            assert!(unrestricted(key).is_err(), "{key}");
        }
    }

    #[test]
    fn budget_schedules() {
        for s in ["0 9 * * mon-fri", "@daily", "@midnight", "*/5 * * * *"] {
            assert_eq!(schedule(s), Ok(()), "{s}");
        }
        for (s, message) in [
            ("", "invalid schedule \"\": the schedule is empty"),
            (
                "@sometimes",
                "invalid schedule \"@sometimes\": unknown macro",
            ),
            ("0 9 * *", "invalid schedule \"0 9 * *\": expected 5 fields"),
            ("daily", "invalid schedule \"daily\": expected 5 fields"),
            (
                "0 9 * * 1-7",
                "invalid schedule \"0 9 * * 1-7\": day-of-week field",
            ),
            ("0 0 31 2 *", "schedule \"0 0 31 2 *\" never fires"),
        ] {
            let err = schedule(s).unwrap_err();
            assert!(err.starts_with(message), "{s:?}: {err}");
        }
    }
}
