//! Valid Karpenter fields that nodewright reads but does not act on yet: each one set in a document
//! is reported once, as a warning naming the field, so that nobody believes it took effect.
//!
//! Keep this list true: when code outside `config` starts acting on a field, remove it here.

use super::super::nodeclass::{AmiFamily, EC2NodeClass};
use super::super::nodepool::NodePool;
use super::super::warning::WarningReason;
use super::super::yaml::FieldPath;
use super::Issues;

/// Requirement keys whose values come from capacity nodewright never launches.
const UNLAUNCHED_LABELS: [&str; 5] = [
    "karpenter.k8s.aws/capacity-reservation-id",
    "karpenter.k8s.aws/capacity-reservation-type",
    "karpenter.k8s.aws/capacity-reservation-interruptible",
    "karpenter.k8s.aws/placement-group-id",
    "karpenter.k8s.aws/placement-group-partition",
];

fn not_acted_on(issues: &mut Issues<'_>, path: FieldPath, why: &str) {
    issues.warn(
        path,
        WarningReason::NotActedOn,
        format!("parsed, not acted on: {why}"),
    );
}

pub(super) fn node_pool(pool: &NodePool, issues: &mut Issues<'_>) {
    let spec = &pool.spec;
    let template = FieldPath::of("spec.template.spec");
    if spec.replicas.is_some() {
        issues.warn(
            FieldPath::of("spec.replicas"),
            WarningReason::NotActedOn,
            "parsed, not acted on: replicas going down (nodewright launches the nodes a static pool is missing, but removes none; it does not disrupt nodes yet)",
        );
    }
    if spec
        .template
        .metadata
        .as_ref()
        .is_some_and(|m| !m.annotations.is_empty())
    {
        not_acted_on(
            issues,
            FieldPath::of("spec.template.metadata.annotations"),
            "nodewright does not annotate the nodes it launches",
        );
    }
    let template_spec = &spec.template.spec;
    for (i, requirement) in template_spec.requirements.iter().enumerate() {
        let path = template.key("requirements").index(i);
        if UNLAUNCHED_LABELS.contains(&requirement.key.as_str()) {
            not_acted_on(
                issues,
                path.key("key"),
                "nodewright launches no capacity reservations or placement groups, so no offering has this label",
            );
        }
        if requirement.key == "karpenter.sh/capacity-type"
            && requirement.operator.as_str() == "In"
            && requirement.values.iter().any(|v| v == "reserved")
        {
            not_acted_on(
                issues,
                path.key("values"),
                "capacity type \"reserved\": nodewright launches spot and on-demand capacity only",
            );
        }
    }
}

pub(super) fn node_class(class: &EC2NodeClass, issues: &mut Issues<'_>) {
    let spec = &class.spec;
    let path = FieldPath::of("spec");
    let alias = spec
        .ami_selector_terms
        .iter()
        .find_map(|t| t.alias.as_deref().and_then(AmiFamily::from_alias));
    if let Some(family) = spec
        .ami_family
        .or(alias)
        .filter(|f| !matches!(f, AmiFamily::AL2023 | AmiFamily::AL2 | AmiFamily::Custom))
    {
        let at = if spec.ami_family.is_some() {
            path.key("amiFamily")
        } else {
            path.key("amiSelectorTerms").index(0).key("alias")
        };
        not_acted_on(
            issues,
            at,
            &format!(
                "nodewright generates user data for AL2023 and AL2 only (and passes Custom through); launches with the {family:?} family fail"
            ),
        );
    }
    for (i, term) in spec.ami_selector_terms.iter().enumerate() {
        if term.ssm_parameter.is_some() {
            not_acted_on(
                issues,
                path.key("amiSelectorTerms").index(i).key("ssmParameter"),
                "nodewright does not read SSM parameters; launches from this class fail (select the AMI by alias, id or name)",
            );
        }
    }
    let unused: [(&str, bool, &str); 7] = [
        (
            "capacityReservationSelectorTerms",
            !spec.capacity_reservation_selector_terms.is_empty(),
            "nodewright launches no reserved capacity",
        ),
        (
            "networkInterfaces",
            !spec.network_interfaces.is_empty(),
            "instances get EC2's default network interface",
        ),
        (
            "ipPrefixCount",
            spec.ip_prefix_count.is_some(),
            "no IPv4 prefixes are assigned",
        ),
        (
            "connectionTracking",
            spec.connection_tracking.is_some(),
            "EC2's default connection-tracking timeouts apply",
        ),
        (
            "cpuOptions",
            spec.cpu_options.is_some(),
            "instance types are not filtered for nested virtualization",
        ),
        (
            "placementGroupSelector",
            spec.placement_group_selector.is_some(),
            "instances are not launched into a placement group",
        ),
        (
            "instanceStorePolicy",
            spec.instance_store_policy.is_some(),
            "instance-store disks are not striped into ephemeral storage",
        ),
    ];
    for (field, set, why) in unused {
        if set {
            not_acted_on(issues, path.key(field), why);
        }
    }
    for (i, mapping) in spec.block_device_mappings.iter().enumerate() {
        if mapping
            .ebs
            .as_ref()
            .is_some_and(|ebs| ebs.volume_initialization_rate.is_some())
        {
            not_acted_on(
                issues,
                path.key("blockDeviceMappings")
                    .index(i)
                    .key("ebs")
                    .key("volumeInitializationRate"),
                "volumes restored from a snapshot initialize at EBS's default rate",
            );
        }
    }
}
