//! EC2NodeClass checks: the validation rules of Karpenter's `karpenter.k8s.aws_ec2nodeclasses.yaml`
//! (field patterns, ranges and CEL `x-kubernetes-validations`), each with the same meaning.

use std::collections::BTreeSet;

use super::super::nodeclass::{
    AmiFamily, AmiSelectorTerm, BlockDeviceMapping, EC2NodeClass, EC2NodeClassSpec, InterfaceType,
    SecurityGroupSelectorTerm, Tags,
};
use super::super::warning::WarningReason;
use super::super::yaml::FieldPath;
use super::Issues;
use super::kubelet::kubelet;

/// Tags Karpenter sets on what it launches; a node class may not set them.
const RESTRICTED_TAGS: [&str; 4] = [
    "karpenter.sh/nodepool",
    "karpenter.sh/nodeclaim",
    "karpenter.k8s.aws/ec2nodeclass",
    "eks:eks-cluster-name",
];

pub(super) fn node_class(class: &EC2NodeClass, issues: &mut Issues<'_>) {
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
        (Some(role), None) if role.is_empty() => {
            issues.add(FieldPath::of("spec.role"), "role cannot be empty")
        }
        (None, Some(profile)) if profile.is_empty() => issues.add(
            FieldPath::of("spec.instanceProfile"),
            "instanceProfile cannot be empty",
        ),
        _ => {}
    }
    ami_terms(spec, issues);
    selector_terms(spec, issues);
    tags(spec, issues);
    if let Some(settings) = &spec.kubelet {
        kubelet(settings, &FieldPath::of("spec.kubelet"), issues);
    }
    block_devices(&spec.block_device_mappings, issues);
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
    network(spec, issues);
}

fn ami_terms(spec: &EC2NodeClassSpec, issues: &mut Issues<'_>) {
    let terms = FieldPath::of("spec.amiSelectorTerms");
    let all = &spec.ami_selector_terms;
    if all.is_empty() {
        issues.add(
            terms.clone(),
            "at least one amiSelectorTerm is required (e.g. alias: al2023@latest)",
        );
    } else if all.len() > 30 {
        issues.add(
            terms.clone(),
            format!("at most 30 amiSelectorTerms are allowed, not {}", all.len()),
        );
    }
    for (i, term) in all.iter().enumerate() {
        ami_term(term, all.len(), &terms.index(i), issues);
    }
    let alias = all.iter().find_map(|t| t.alias.as_deref());
    match (spec.ami_family, alias) {
        (None, None) if !all.is_empty() => issues.add(
            FieldPath::of("spec"),
            "amiFamily is required unless an amiSelectorTerm uses an alias",
        ),
        (Some(family), Some(alias)) => {
            let from_alias = alias_family(alias);
            if family != AmiFamily::Custom && from_alias.is_some_and(|f| f != family) {
                issues.add(
                    FieldPath::of("spec.amiFamily"),
                    format!(
                        "amiFamily {family:?} contradicts the alias {alias:?}; if set, amiFamily must be {:?} or Custom",
                        from_alias.unwrap_or(family)
                    ),
                );
            }
        }
        _ => {}
    }
}

/// The family of an alias as the CRD spells it (lower case only).
fn alias_family(alias: &str) -> Option<AmiFamily> {
    let family = alias.split_once('@').map_or(alias, |(family, _)| family);
    let lower = family.bytes().all(|b| !b.is_ascii_uppercase());
    AmiFamily::from_alias(family).filter(|_| lower)
}

fn ami_term(term: &AmiSelectorTerm, count: usize, path: &FieldPath, issues: &mut Issues<'_>) {
    let selecting = [
        term.alias.is_some(),
        term.id.is_some(),
        term.name.is_some(),
        !term.tags.is_empty(),
        term.ssm_parameter.is_some(),
    ];
    // What the CRD's exclusivity rules count as "other fields" of an id or alias term.
    let (name, owner, tags) = (
        term.name.is_some(),
        term.owner.is_some(),
        !term.tags.is_empty(),
    );
    if !selecting.contains(&true) {
        issues.add(
            path.clone(),
            "a term needs one of alias, id, name, tags or ssmParameter",
        );
    } else if let Some(alias) = &term.alias {
        if term.id.is_some() || name || owner || tags {
            issues.add(
                path.key("alias"),
                "'alias' is mutually exclusive, cannot be set with a combination of other fields in amiSelectorTerms",
            );
        } else if count > 1 {
            issues.add(
                path.key("alias"),
                "'alias' is mutually exclusive, cannot be set with a combination of other amiSelectorTerms",
            );
        } else {
            issues.check(path.key("alias"), alias_syntax(alias));
        }
    } else if let Some(id) = &term.id {
        if name || owner || tags {
            issues.add(
                path.key("id"),
                "'id' is mutually exclusive, cannot be set with a combination of other fields in amiSelectorTerms",
            );
        } else if !has_prefixed_id(id, "ami-") {
            issues.add(
                path.key("id"),
                format!("id must look like ami-0123abcd, not {id:?}"),
            );
        }
    }
    selector_tags(&term.tags, &path.key("tags"), issues);
}

fn alias_syntax(alias: &str) -> Result<(), String> {
    let families = "al2, al2023, bottlerocket, windows2019, windows2022 or windows2025";
    let Some((family, version)) = alias.split_once('@') else {
        return Err(format!(
            "alias must be family@version (e.g. al2023@latest), not {alias:?}"
        ));
    };
    if alias.len() > 30 {
        return Err(format!(
            "alias must be at most 30 characters, not {alias:?}"
        ));
    }
    if family.is_empty() || version.is_empty() || !family.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(format!(
            "alias must be family@version (e.g. al2023@latest), not {alias:?}"
        ));
    }
    match alias_family(alias) {
        None => Err(format!(
            "alias must be family@version with family {families}, not {alias:?}"
        )),
        Some(AmiFamily::Windows2019 | AmiFamily::Windows2022 | AmiFamily::Windows2025)
            if version != "latest" =>
        {
            Err(format!(
                "windows families may only specify version 'latest', not {alias:?}"
            ))
        }
        Some(_) => Ok(()),
    }
}

/// The CRD's id patterns (`subnet-[0-9a-z]+`, ...) are unanchored: the id must contain the prefix
/// followed by at least one lower-case alphanumeric.
fn has_prefixed_id(id: &str, prefix: &str) -> bool {
    id.match_indices(prefix).any(|(at, _)| {
        id[at + prefix.len()..]
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

/// Subnet, security group and capacity reservation terms.
fn selector_terms(spec: &EC2NodeClassSpec, issues: &mut Issues<'_>) {
    let subnets: Vec<Term<'_>> = spec
        .subnet_selector_terms
        .iter()
        .map(|t| Term {
            id: t.id.as_deref(),
            others: vec![("tags", !t.tags.is_empty())],
            selecting: vec![!t.tags.is_empty()],
            tags: &t.tags,
        })
        .collect();
    terms(
        "subnetSelectorTerms",
        "subnet-",
        "tags or id",
        &subnets,
        true,
        issues,
    );
    let groups: Vec<Term<'_>> = spec
        .security_group_selector_terms
        .iter()
        .map(|t| Term {
            id: t.id.as_deref(),
            others: vec![("tags", !t.tags.is_empty()), ("name", t.name.is_some())],
            selecting: vec![!t.tags.is_empty(), t.name.is_some()],
            tags: &t.tags,
        })
        .collect();
    terms(
        "securityGroupSelectorTerms",
        "sg-",
        "tags, id or name",
        &groups,
        true,
        issues,
    );
    // The CRD's second rule for security groups, with the same all-terms reading as for `id`.
    let named_mix =
        |t: &&SecurityGroupSelectorTerm| t.name.is_some() && t.id.is_none() && !t.tags.is_empty();
    let sg_path = FieldPath::of("spec.securityGroupSelectorTerms");
    let sg_terms = &spec.security_group_selector_terms;
    let message = "'name' is mutually exclusive, cannot be set with tags in the same security group selector term";
    for (i, _) in sg_terms.iter().enumerate().filter(|(_, t)| named_mix(t)) {
        if sg_terms
            .iter()
            .all(|t| t.name.is_some() && (t.id.is_some() || !t.tags.is_empty()))
        {
            issues.add(sg_path.index(i).key("name"), message);
        } else {
            issues.warn(
                sg_path.index(i).key("name"),
                WarningReason::NoEffect,
                format!("{message}; Karpenter's CRD lets it through beside other terms, but the term is ambiguous"),
            );
        }
    }
    let reservations: Vec<Term<'_>> = spec
        .capacity_reservation_selector_terms
        .iter()
        .map(|t| Term {
            id: t.id.as_deref(),
            others: vec![
                ("tags", !t.tags.is_empty()),
                ("ownerID", t.owner_id.is_some()),
                ("instanceMatchCriteria", t.instance_match_criteria.is_some()),
            ],
            selecting: vec![!t.tags.is_empty(), t.instance_match_criteria.is_some()],
            tags: &t.tags,
        })
        .collect();
    terms(
        "capacityReservationSelectorTerms",
        "cr-",
        "tags, id or instanceMatchCriteria",
        &reservations,
        false,
        issues,
    );
    let path = FieldPath::of("spec.capacityReservationSelectorTerms");
    for (i, term) in spec.capacity_reservation_selector_terms.iter().enumerate() {
        if let Some(owner) = term
            .owner_id
            .as_ref()
            .filter(|o| o.len() != 12 || !o.bytes().all(|b| b.is_ascii_digit()))
        {
            issues.add(
                path.index(i).key("ownerID"),
                format!("ownerID must be a 12-digit AWS account id, not {owner:?}"),
            );
        }
    }
}

/// A selector term, as the shared rules see it.
struct Term<'a> {
    id: Option<&'a str>,
    /// The fields the CRD makes exclusive with `id`, and whether each is set.
    others: Vec<(&'static str, bool)>,
    /// Whether each selecting field besides `id` is set.
    selecting: Vec<bool>,
    tags: &'a Tags,
}

fn terms(
    field: &str,
    id_prefix: &str,
    needs: &str,
    terms: &[Term<'_>],
    required: bool,
    issues: &mut Issues<'_>,
) {
    let path = FieldPath::of("spec").key(field);
    if required && terms.is_empty() {
        issues.add(
            path.clone(),
            format!("at least one {} is required", singular(field)),
        );
    } else if terms.len() > 30 {
        issues.add(
            path.clone(),
            format!("at most 30 {field} are allowed, not {}", terms.len()),
        );
    }
    let mixed = |t: &Term<'_>| t.id.is_some() && t.others.iter().any(|(_, set)| *set);
    // The CRD's rule is `!self.all(x, has(x.id) && ...)`: it refuses the mix only when every term
    // has it. One such term among others loads in Karpenter, so it is a warning here.
    let all_mixed = !terms.is_empty() && terms.iter().all(mixed);
    for (i, term) in terms.iter().enumerate() {
        let path = path.index(i);
        if term.id.is_none() && !term.selecting.contains(&true) {
            issues.add(path.clone(), format!("a term needs one of {needs}"));
        }
        if mixed(term) {
            let with: Vec<&str> = term
                .others
                .iter()
                .filter(|(_, set)| *set)
                .map(|(name, _)| *name)
                .collect();
            let message = format!(
                "'id' is mutually exclusive, cannot be set with {} in the same term",
                with.join(" or ")
            );
            if all_mixed {
                issues.add(path.key("id"), message);
            } else {
                issues.warn(
                    path.key("id"),
                    WarningReason::NoEffect,
                    format!("{message}; Karpenter's CRD lets it through beside terms without the mix, but the term is ambiguous"),
                );
            }
        }
        if let Some(id) = term.id {
            let valid = if id_prefix == "cr-" {
                id.strip_prefix("cr-").is_some_and(|rest| {
                    !rest.is_empty()
                        && rest
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                })
            } else {
                has_prefixed_id(id, id_prefix)
            };
            if !valid {
                issues.add(
                    path.key("id"),
                    format!("id must look like {id_prefix}0123abcd, not {id:?}"),
                );
            }
        }
        selector_tags(term.tags, &path.key("tags"), issues);
    }
}

fn singular(field: &str) -> &str {
    field.strip_suffix('s').unwrap_or(field)
}

/// Tags of a selector term: at most 20, no empty key or value (`*` matches any value).
fn selector_tags(tags: &Tags, path: &FieldPath, issues: &mut Issues<'_>) {
    if tags.len() > 20 {
        issues.add(
            path.clone(),
            format!("at most 20 tags are allowed in a term, not {}", tags.len()),
        );
    }
    for (key, value) in tags {
        if key.is_empty() || value.is_empty() {
            issues.add(
                path.key(key),
                "empty tag keys or values aren't supported (use \"*\" to match any value)",
            );
        }
    }
}

/// `spec.tags`: no empty key, none of the tags Karpenter sets itself.
fn tags(spec: &EC2NodeClassSpec, issues: &mut Issues<'_>) {
    let path = FieldPath::of("spec.tags");
    for key in spec.tags.keys() {
        if key.is_empty() {
            issues.add(path.key(key), "empty tag keys aren't supported");
        } else if RESTRICTED_TAGS.contains(&key.as_str())
            || key.starts_with("kubernetes.io/cluster")
        {
            issues.add(
                path.key(key),
                format!("tag {key:?} is set by Karpenter and cannot be overridden"),
            );
        }
    }
}

fn block_devices(mappings: &[BlockDeviceMapping], issues: &mut Issues<'_>) {
    let path = FieldPath::of("spec.blockDeviceMappings");
    if mappings.len() > 50 {
        issues.add(
            path.clone(),
            format!(
                "at most 50 blockDeviceMappings are allowed, not {}",
                mappings.len()
            ),
        );
    }
    let roots = mappings.iter().filter(|m| m.root_volume).count();
    for (i, mapping) in mappings.iter().enumerate() {
        let path = path.index(i);
        if mapping.root_volume && roots > 1 {
            issues.add(
                path.key("rootVolume"),
                "must have only one blockDeviceMappings with rootVolume",
            );
        }
        let Some(ebs) = &mapping.ebs else { continue };
        let ebs_path = path.key("ebs");
        if ebs.snapshot_id.is_none() && ebs.volume_size.is_none() {
            issues.add(ebs_path.clone(), "snapshotID or volumeSize must be defined");
        }
        if let Some(size) = &ebs.volume_size
            && !is_volume_size(&size.0)
        {
            issues.add(
                ebs_path.key("volumeSize"),
                format!(
                    "volumeSize must be 1-59000Gi, 1-64000G, 1-58Ti or 1-64T, not {:?}",
                    size.0
                ),
            );
        }
        if let Some(rate) = ebs.volume_initialization_rate {
            if !(100..=300).contains(&rate) {
                issues.add(
                    ebs_path.key("volumeInitializationRate"),
                    format!(
                        "volumeInitializationRate must be between 100 and 300 MiB/s, not {rate}"
                    ),
                );
            } else if ebs.snapshot_id.as_deref().is_none_or(str::is_empty) {
                issues.add(
                    ebs_path.key("volumeInitializationRate"),
                    "snapshotID must be set when volumeInitializationRate is set",
                );
            }
        }
    }
}

/// EBS volume sizes as the CRD's pattern allows them: a whole number without leading zero and one of
/// four units, within EBS's limits.
fn is_volume_size(text: &str) -> bool {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let max = match unit {
        "Gi" => 59_000,
        "G" => 64_000,
        "Ti" => 58,
        "T" => 64,
        _ => return false,
    };
    !number.starts_with('0') && number.parse::<u32>().is_ok_and(|n| (1..=max).contains(&n))
}

/// Network interfaces, IP prefixes, connection tracking and the placement group.
fn network(spec: &EC2NodeClassSpec, issues: &mut Issues<'_>) {
    let path = FieldPath::of("spec.networkInterfaces");
    let interfaces = &spec.network_interfaces;
    if interfaces.len() > 150 {
        issues.add(
            path.clone(),
            format!(
                "at most 150 networkInterfaces are allowed, not {}",
                interfaces.len()
            ),
        );
    }
    let mut slots = BTreeSet::new();
    let mut efa_cards = BTreeSet::new();
    for (i, interface) in interfaces.iter().enumerate() {
        let item = path.index(i);
        for (field, value) in [
            ("networkCardIndex", interface.network_card_index),
            ("deviceIndex", interface.device_index),
        ] {
            if value < 0 {
                issues.add(
                    item.key(field),
                    format!("{field} must be at least 0, not {value}"),
                );
            }
        }
        if !slots.insert((interface.network_card_index, interface.device_index))
            || (interface.interface_type == InterfaceType::EfaOnly
                && !efa_cards.insert(interface.network_card_index))
        {
            issues.add(
                item,
                "networkInterfaces must not have duplicate networkCardIndex and deviceIndex pairs, and can have at most one efa device per network card",
            );
        }
    }
    if !interfaces.is_empty()
        && !interfaces.iter().any(|n| {
            n.network_card_index == 0
                && n.device_index == 0
                && n.interface_type == InterfaceType::Interface
        })
    {
        issues.add(
            path,
            "networkInterfaces must include a primary interface with interfaceType='interface' (networkCardIndex 0, deviceIndex 0)",
        );
    }
    if let Some(count) = spec.ip_prefix_count.filter(|c| *c < 0) {
        issues.add(
            FieldPath::of("spec.ipPrefixCount"),
            format!("ipPrefixCount must be at least 0, not {count}"),
        );
    }
    if let Some(tracking) = &spec.connection_tracking {
        let path = FieldPath::of("spec.connectionTracking");
        let fields = [
            (
                "tcpEstablishedTimeout",
                tracking.tcp_established_timeout,
                60,
                432_000,
            ),
            ("udpStreamTimeout", tracking.udp_stream_timeout, 60, 180),
            ("udpTimeout", tracking.udp_timeout, 30, 60),
        ];
        if fields.iter().all(|(_, value, _, _)| value.is_none()) {
            issues.add(
                path.clone(),
                "at least one of tcpEstablishedTimeout, udpStreamTimeout, or udpTimeout must be set",
            );
        }
        for (field, value, min, max) in fields {
            if let Some(value) = value.filter(|v| !(min..=max).contains(v)) {
                issues.add(
                    path.key(field),
                    format!("{field} must be between {min} and {max} seconds, not {value}"),
                );
            }
        }
    }
    if let Some(group) = &spec.placement_group_selector {
        let path = FieldPath::of("spec.placementGroupSelector");
        match (&group.id, &group.name) {
            (None, None) => issues.add(path, "expected at least one, got none, ['name', 'id']"),
            (Some(_), Some(_)) => {
                issues.add(path.key("id"), "'name' and 'id' are mutually exclusive")
            }
            (Some(id), None) => {
                let valid = id.strip_prefix("pg-").is_some_and(|rest| {
                    !rest.is_empty()
                        && rest
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                });
                if !valid {
                    issues.add(
                        path.key("id"),
                        format!("id must look like pg-0123abcd, not {id:?}"),
                    );
                }
            }
            (None, Some(name)) if name.is_empty() => {
                issues.add(path.key("name"), "name may not be empty")
            }
            (None, Some(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases() {
        for alias in [
            "al2023@latest",
            "al2023@v20240807",
            "bottlerocket@1.20.0",
            "windows2022@latest",
            "al2@latest",
        ] {
            assert_eq!(alias_syntax(alias), Ok(()), "{alias}");
        }
        for alias in [
            "al2023",
            "al2023@",
            "@latest",
            "AL2023@latest",
            "ubuntu@latest",
            "windows2019@2024.01",
            "al2023@latest-and-a-very-long-suffix",
        ] {
            assert!(alias_syntax(alias).is_err(), "{alias:?}");
        }
    }

    #[test]
    fn volume_sizes() {
        for size in ["20Gi", "59000Gi", "100G", "64000G", "1Ti", "58Ti", "64T"] {
            assert!(is_volume_size(size), "{size}");
        }
        for size in [
            "0Gi", "59001Gi", "020Gi", "100Mi", "100", "59Ti", "65T", "1.5Ti", "Gi",
        ] {
            assert!(!is_volume_size(size), "{size:?}");
        }
    }

    #[test]
    fn prefixed_ids() {
        assert!(has_prefixed_id("subnet-0a1b", "subnet-"));
        assert!(!has_prefixed_id("subnet-", "subnet-"));
        assert!(!has_prefixed_id("subnet-ABC", "subnet-"));
        assert!(!has_prefixed_id("sg-1", "subnet-"));
    }
}
