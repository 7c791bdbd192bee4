//! Checks made after deserializing: what the types alone cannot say (operator arity, references
//! between documents, label key syntax, ...). Each problem names its document and field path; the
//! caller turns the path into a line.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::Parsed;
use super::duration::parse_go_duration;
use super::nodeclass::{AmiFamily, EC2NodeClass, KubeletConfiguration, Tags};
use super::nodepool::NodePool;
use super::policy::{PolicySpec, PricingSpec, ProvisioningSpec, SpreadSpec};
use super::yaml::FieldPath;
use crate::model::{Operator, Requirement, Taint};

/// The group a nodeClassRef must name (the EC2NodeClass apiVersion without its version).
const NODE_CLASS_GROUP: &str = "karpenter.k8s.aws";

/// One problem: the document (1-based), the field and what is wrong.
#[derive(Debug)]
pub(crate) struct Issue {
    pub document: usize,
    pub path: FieldPath,
    pub message: String,
}

/// Collects the issues of one document.
struct Issues<'a> {
    document: usize,
    all: &'a mut Vec<Issue>,
}

impl Issues<'_> {
    fn add(&mut self, path: FieldPath, message: impl Into<String>) {
        self.all.push(Issue {
            document: self.document,
            path,
            message: message.into(),
        });
    }

    fn check(&mut self, path: FieldPath, result: Result<(), String>) {
        if let Err(message) = result {
            self.add(path, message);
        }
    }
}

/// Every issue of the parsed documents.
pub(crate) fn validate(parsed: &Parsed) -> Vec<Issue> {
    let mut all = Vec::new();
    let mut pools: BTreeMap<&str, usize> = BTreeMap::new();
    for (document, pool) in &parsed.node_pools {
        let mut issues = Issues {
            document: *document,
            all: &mut all,
        };
        if let Some(&first) = pools.get(pool.name()) {
            issues.add(
                FieldPath::of("metadata.name"),
                format!(
                    "duplicate NodePool {:?}; document {first} defines it already",
                    pool.name()
                ),
            );
        } else {
            pools.insert(pool.name(), *document);
        }
        node_pool(pool, parsed, &mut issues);
    }
    let mut classes: BTreeMap<&str, usize> = BTreeMap::new();
    for (document, class) in &parsed.node_classes {
        let mut issues = Issues {
            document: *document,
            all: &mut all,
        };
        if let Some(&first) = classes.get(class.name()) {
            issues.add(
                FieldPath::of("metadata.name"),
                format!(
                    "duplicate EC2NodeClass {:?}; document {first} defines it already",
                    class.name()
                ),
            );
        } else {
            classes.insert(class.name(), *document);
        }
        node_class(class, &mut issues);
    }
    if let Some((document, manifest)) = &parsed.policy {
        let mut issues = Issues {
            document: *document,
            all: &mut all,
        };
        policy(&manifest.spec, parsed, &mut issues);
    }
    all
}

fn node_pool(pool: &NodePool, parsed: &Parsed, issues: &mut Issues<'_>) {
    let spec = &pool.spec;
    let template = FieldPath::of("spec.template");
    if let Some(metadata) = &spec.template.metadata {
        labels(
            &metadata.labels,
            &template.key("metadata").key("labels"),
            issues,
        );
    }
    let template_spec = template.key("spec");
    let reference = &spec.template.spec.node_class_ref;
    let ref_path = template_spec.key("nodeClassRef");
    if reference.group != NODE_CLASS_GROUP {
        issues.add(
            ref_path.key("group"),
            format!(
                "nodeClassRef group must be {NODE_CLASS_GROUP}, not {:?}",
                reference.group
            ),
        );
    } else if reference.kind != "EC2NodeClass" {
        issues.add(
            ref_path.key("kind"),
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
            ref_path.key("name"),
            format!(
                "EC2NodeClass {:?} is not defined in this file (defined: {})",
                reference.name,
                listed(parsed.node_classes.iter().map(|(_, c)| c.name()))
            ),
        );
    }
    for (field, taints) in [
        ("taints", &spec.template.spec.taints),
        ("startupTaints", &spec.template.spec.startup_taints),
    ] {
        for (i, taint) in taints.iter().enumerate() {
            self::taint(taint, &template_spec.key(field).index(i), issues);
        }
    }
    for (i, requirement) in spec.template.spec.requirements.iter().enumerate() {
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
    quantities(&spec.limits, &FieldPath::of("spec.limits"), issues);
    for (i, budget) in spec.disruption.budgets.iter().enumerate() {
        let path = FieldPath::of("spec.disruption.budgets").index(i);
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
            (Some(_), None) => issues.add(
                path.key("schedule"),
                "a budget with a schedule needs a duration",
            ),
            (None, Some(_)) => issues.add(
                path.key("duration"),
                "a budget with a duration needs a schedule",
            ),
            _ => {}
        }
    }
}

fn taint(taint: &Taint, path: &FieldPath, issues: &mut Issues<'_>) {
    issues.check(path.key("key"), label_key(&taint.key));
    if let Some(value) = &taint.value {
        issues.check(path.key("value"), label_value(value));
    }
}

fn requirement(requirement: &Requirement, path: &FieldPath, issues: &mut Issues<'_>) {
    issues.check(path.key("key"), label_key(&requirement.key));
    let values = &requirement.values;
    let operator = requirement.operator;
    match operator {
        Operator::In | Operator::NotIn if values.is_empty() => {
            issues.add(
                path.key("values"),
                format!("operator {operator} needs at least one value"),
            );
        }
        Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
            issues.add(
                path.key("values"),
                format!("operator {operator} takes no values, got {}", values.len()),
            );
        }
        Operator::Gt | Operator::Lt => match values.as_slice() {
            [value] if value.parse::<i64>().is_ok() => {}
            [value] => issues.add(
                path.key("values").index(0),
                format!("operator {operator} needs an integer value, not {value:?}"),
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
        if min_values < 1 {
            issues.add(
                path.key("minValues"),
                format!("minValues must be at least 1, not {min_values}"),
            );
        } else if operator == Operator::In && min_values as usize > values.len() {
            issues.add(
                path.key("minValues"),
                format!(
                    "minValues {min_values} is more than the {} values listed",
                    values.len()
                ),
            );
        }
    }
}

fn node_class(class: &EC2NodeClass, issues: &mut Issues<'_>) {
    let spec = &class.spec;
    match (&spec.role, &spec.instance_profile) {
        (Some(_), Some(_)) => issues.add(
            FieldPath::of("spec.instanceProfile"),
            "set either role or instanceProfile, not both",
        ),
        (None, None) => issues.add(
            FieldPath::of("spec"),
            "one of role or instanceProfile is required",
        ),
        _ => {}
    }

    let terms = FieldPath::of("spec.amiSelectorTerms");
    let aliases: Vec<&str> = spec
        .ami_selector_terms
        .iter()
        .filter_map(|t| t.alias.as_deref())
        .collect();
    if spec.ami_selector_terms.is_empty() {
        issues.add(
            terms.clone(),
            "at least one amiSelectorTerm is required (e.g. alias: al2023@latest)",
        );
    }
    for (i, term) in spec.ami_selector_terms.iter().enumerate() {
        let path = terms.index(i);
        let others = [
            term.id.is_some(),
            term.name.is_some(),
            term.owner.is_some(),
            !term.tags.is_empty(),
            term.ssm_parameter.is_some(),
        ];
        if let Some(alias) = &term.alias {
            if others.contains(&true) || spec.ami_selector_terms.len() > 1 {
                issues.add(
                    path.key("alias"),
                    "an alias term must be the only amiSelectorTerm, with no other field",
                );
            } else if AmiFamily::from_alias(alias).is_none()
                || alias
                    .split_once('@')
                    .is_none_or(|(_, version)| version.is_empty())
            {
                issues.add(
                    path.key("alias"),
                    format!("alias must be family@version with family al2, al2023, bottlerocket, windows2019 or windows2022, not {alias:?}"),
                );
            }
        } else if term.id.is_some() && others[1..].contains(&true) {
            issues.add(
                path.key("id"),
                "id cannot be combined with other fields of the term",
            );
        } else if !(term.id.is_some()
            || term.name.is_some()
            || !term.tags.is_empty()
            || term.ssm_parameter.is_some())
        {
            issues.add(
                path.clone(),
                "a term needs one of alias, id, name, tags or ssmParameter",
            );
        }
        tags(&term.tags, &path.key("tags"), issues);
    }
    match (
        spec.ami_family,
        aliases.first().and_then(|a| AmiFamily::from_alias(a)),
    ) {
        (None, None) if aliases.is_empty() && !spec.ami_selector_terms.is_empty() => issues.add(
            FieldPath::of("spec"),
            "amiFamily is required unless an amiSelectorTerm uses an alias",
        ),
        (Some(family), Some(from_alias)) if family != from_alias => issues.add(
            FieldPath::of("spec.amiFamily"),
            format!(
                "amiFamily {family:?} contradicts the alias {:?}",
                aliases[0]
            ),
        ),
        _ => {}
    }

    let subnets = FieldPath::of("spec.subnetSelectorTerms");
    if spec.subnet_selector_terms.is_empty() {
        issues.add(
            subnets.clone(),
            "at least one subnetSelectorTerm is required",
        );
    }
    for (i, term) in spec.subnet_selector_terms.iter().enumerate() {
        id_or_tags(
            term.id.is_some(),
            &[],
            &term.tags,
            &subnets.index(i),
            issues,
        );
    }
    let groups = FieldPath::of("spec.securityGroupSelectorTerms");
    if spec.security_group_selector_terms.is_empty() {
        issues.add(
            groups.clone(),
            "at least one securityGroupSelectorTerm is required",
        );
    }
    for (i, term) in spec.security_group_selector_terms.iter().enumerate() {
        id_or_tags(
            term.id.is_some(),
            &[term.name.is_some()],
            &term.tags,
            &groups.index(i),
            issues,
        );
    }
    let reservations = FieldPath::of("spec.capacityReservationSelectorTerms");
    for (i, term) in spec.capacity_reservation_selector_terms.iter().enumerate() {
        id_or_tags(
            term.id.is_some(),
            &[term.owner_id.is_some()],
            &term.tags,
            &reservations.index(i),
            issues,
        );
    }

    tags(&spec.tags, &FieldPath::of("spec.tags"), issues);
    for key in spec.tags.keys() {
        let restricted = [
            "karpenter.sh/nodepool",
            "karpenter.sh/nodeclaim",
            "karpenter.k8s.aws/ec2nodeclass",
            "eks:eks-cluster-name",
        ];
        if restricted.contains(&key.as_str()) || key.starts_with("kubernetes.io/cluster/") {
            issues.add(
                FieldPath::of("spec.tags").key(key),
                format!("tag {key:?} is set by Karpenter and cannot be overridden"),
            );
        }
    }
    if let Some(kubelet) = &spec.kubelet {
        self::kubelet(kubelet, &FieldPath::of("spec.kubelet"), issues);
    }
    let mappings = FieldPath::of("spec.blockDeviceMappings");
    let roots = spec
        .block_device_mappings
        .iter()
        .filter(|m| m.root_volume)
        .count();
    for (i, mapping) in spec.block_device_mappings.iter().enumerate() {
        if mapping.root_volume && roots > 1 {
            issues.add(
                mappings.index(i).key("rootVolume"),
                "at most one blockDeviceMapping can be the rootVolume",
            );
        }
        if let Some(size) = mapping
            .ebs
            .as_ref()
            .and_then(|ebs| ebs.volume_size.as_ref())
        {
            issues.check(
                mappings.index(i).key("ebs").key("volumeSize"),
                quantity(size),
            );
        }
    }
    if let Some(limit) = spec
        .metadata_options
        .as_ref()
        .and_then(|m| m.http_put_response_hop_limit)
        .filter(|l| !(1..=64).contains(l))
    {
        issues.add(
            FieldPath::of("spec.metadataOptions.httpPutResponseHopLimit"),
            format!("httpPutResponseHopLimit must be between 1 and 64, not {limit}"),
        );
    }
}

/// A selector term: `id` alone, or at least one of the other fields.
fn id_or_tags(
    has_id: bool,
    others: &[bool],
    term_tags: &Tags,
    path: &FieldPath,
    issues: &mut Issues<'_>,
) {
    let has_other = others.contains(&true) || !term_tags.is_empty();
    if has_id && has_other {
        issues.add(
            path.key("id"),
            "id cannot be combined with other fields of the term",
        );
    } else if !has_id && !has_other {
        issues.add(
            path.clone(),
            "a term needs an id, or tags (or another selecting field)",
        );
    }
    tags(term_tags, &path.key("tags"), issues);
}

fn tags(tags: &Tags, path: &FieldPath, issues: &mut Issues<'_>) {
    for (key, value) in tags {
        if key.is_empty() || value.is_empty() {
            issues.add(
                path.key(key),
                "tag keys and values must not be empty (use \"*\" to match any value)",
            );
        }
    }
}

fn kubelet(kubelet: &KubeletConfiguration, path: &FieldPath, issues: &mut Issues<'_>) {
    quantities(
        &kubelet.system_reserved,
        &path.key("systemReserved"),
        issues,
    );
    quantities(&kubelet.kube_reserved, &path.key("kubeReserved"), issues);
    let (high, low) = (
        kubelet.image_gc_high_threshold_percent,
        kubelet.image_gc_low_threshold_percent,
    );
    for (field, percent) in [
        ("imageGCHighThresholdPercent", high),
        ("imageGCLowThresholdPercent", low),
    ] {
        if let Some(percent) = percent.filter(|p| !(0..=100).contains(p)) {
            issues.add(
                path.key(field),
                format!("{field} must be between 0 and 100, not {percent}"),
            );
        }
    }
    if let (Some(high), Some(low)) = (high, low)
        && low > high
    {
        issues.add(
            path.key("imageGCLowThresholdPercent"),
            format!("imageGCLowThresholdPercent {low} must not exceed imageGCHighThresholdPercent {high}"),
        );
    }
    for signal in kubelet
        .eviction_soft
        .keys()
        .filter(|s| !kubelet.eviction_soft_grace_period.contains_key(*s))
    {
        issues.add(
            path.key("evictionSoft").key(signal),
            format!("evictionSoft {signal} needs an evictionSoftGracePeriod entry"),
        );
    }
    for signal in kubelet
        .eviction_soft_grace_period
        .keys()
        .filter(|s| !kubelet.eviction_soft.contains_key(*s))
    {
        issues.add(
            path.key("evictionSoftGracePeriod").key(signal),
            format!("evictionSoftGracePeriod {signal} has no evictionSoft threshold"),
        );
    }
}

fn policy(spec: &PolicySpec, parsed: &Parsed, issues: &mut Issues<'_>) {
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

fn labels(labels: &BTreeMap<String, String>, path: &FieldPath, issues: &mut Issues<'_>) {
    for (key, value) in labels {
        issues.check(
            path.key(key),
            label_key(key).and_then(|()| label_value(value)),
        );
    }
}

fn quantities(quantities: &BTreeMap<String, Quantity>, path: &FieldPath, issues: &mut Issues<'_>) {
    for (name, value) in quantities {
        issues.check(path.key(name), quantity(value));
    }
}

fn listed<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// A Kubernetes label key: a name of at most 63 characters with an optional DNS subdomain prefix
/// (`example.com/name`).
pub(crate) fn label_key(key: &str) -> Result<(), String> {
    let invalid = |why: &str| Err(format!("invalid label key {key:?}: {why}"));
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && (prefix.is_empty() || prefix.len() > 253 || !prefix.split('.').all(is_dns_label))
    {
        return invalid("the prefix must be a lowercase DNS subdomain");
    }
    if name.is_empty() || name.len() > 63 || !is_label_name(name) {
        return invalid(
            "the name must be 1 to 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric (at most one '/')",
        );
    }
    Ok(())
}

/// A Kubernetes label value: empty, or a name of at most 63 characters.
pub(crate) fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || (value.len() <= 63 && is_label_name(value)) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value {value:?}: at most 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
        ))
    }
}

fn is_label_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A pod's `spec.schedulerName`, which Kubernetes validates as a DNS subdomain.
fn scheduler_name(name: &str) -> Result<(), String> {
    if name.len() <= 253 && name.split('.').all(is_dns_label) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid scheduler name: a lowercase DNS subdomain (a-z, 0-9, '-', '.') of at most 253 characters"
        ))
    }
}

fn is_dns_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || *b == b'-')
}

/// A Kubernetes quantity: `1000`, `1.5`, `100m`, `1000Gi`, `1e3`.
fn quantity(quantity: &Quantity) -> Result<(), String> {
    let text = quantity.0.as_str();
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let number_len = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_len);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    let number_ok = digits > 0 && number.matches('.').count() <= 1;
    let suffix_ok = matches!(
        suffix,
        "" | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
    ) || suffix.strip_prefix(['e', 'E']).is_some_and(|exponent| {
        let exponent = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
        !exponent.is_empty() && exponent.chars().all(|c| c.is_ascii_digit())
    });
    if number_ok && suffix_ok {
        Ok(())
    } else {
        Err(format!(
            "invalid quantity {text:?} (expected e.g. 1000, 500m, 1000Gi)"
        ))
    }
}

fn is_budget_nodes(nodes: &str) -> bool {
    match nodes.strip_suffix('%') {
        Some(percent) => {
            percent.parse::<u8>().is_ok_and(|p| p <= 100)
                && percent.chars().all(|c| c.is_ascii_digit())
        }
        None => !nodes.is_empty() && nodes.chars().all(|c| c.is_ascii_digit()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys() {
        for key in [
            "karpenter.sh/nodepool",
            "karpenter.sh/provisioner-name",
            "topology.kubernetes.io/zone",
            "type",
            "a.b_c-d",
            "x/Y",
        ] {
            assert_eq!(label_key(key), Ok(()), "{key}");
        }
        for key in [
            "",
            "/name",
            "Example.com/name",
            "example.com/",
            "a/b/c",
            "-a",
            "a-",
            "has space",
            &"n".repeat(64),
            "ex_ample.com/a",
        ] {
            assert!(label_key(key).is_err(), "{key:?} should be rejected");
        }
    }

    #[test]
    fn label_values() {
        for value in ["", "default", "team-riker", "1.2_3"] {
            assert_eq!(label_value(value), Ok(()), "{value}");
        }
        for value in ["-a", "a b", "a/b", &"v".repeat(64)] {
            assert!(label_value(value).is_err(), "{value:?} should be rejected");
        }
    }

    #[test]
    fn quantities() {
        for text in [
            "1000", "1000Gi", "100m", "1.5", "+1", "1e3", "1E", "2Ki", ".5",
        ] {
            assert_eq!(quantity(&Quantity(text.to_owned())), Ok(()), "{text}");
        }
        for text in ["", "Gi", "1000GB", "1.2.3", "1e", "ten", "1 Gi"] {
            assert!(
                quantity(&Quantity(text.to_owned())).is_err(),
                "{text:?} should be rejected"
            );
        }
    }

    #[test]
    fn budget_nodes() {
        for nodes in ["10%", "0", "100%", "5"] {
            assert!(is_budget_nodes(nodes), "{nodes}");
        }
        for nodes in ["", "101%", "-1", "ten", "5.5%", "%"] {
            assert!(!is_budget_nodes(nodes), "{nodes:?}");
        }
    }
}
