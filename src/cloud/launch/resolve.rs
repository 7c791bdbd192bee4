//! Resolving an EC2NodeClass to what EC2 has (Karpenter's `subnet`, `securitygroup` and
//! `amifamily` providers): subnets, security groups, AMIs (`DescribeImages`, alias terms by image
//! name), the instance types' architectures, and the cache of resolutions.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_ec2::types::{Filter, InstanceType};
use tracing::debug;

use super::retry::Class;
use super::types::{LaunchError, NodeClassView};
use super::{Launcher, filter, fnv1a64};
use crate::config::{AmiFamily, AmiSelectorTerm, EC2NodeClass, Tags};

/// zone → chosen subnet id, and subnet id → zone for every selected subnet.
type Subnets = (BTreeMap<String, String>, HashMap<String, String>);
/// One DescribeImages query: (owners, filters).
type ImageQuery = (Vec<String>, Vec<Filter>);

/// What an EC2NodeClass resolves to in EC2.
#[derive(Clone, Debug)]
pub(super) struct Resolved {
    pub(super) family: AmiFamily,
    /// zone → subnet id
    pub(super) zonal_subnets: BTreeMap<String, String>,
    /// subnet id → zone (every selected subnet)
    pub(super) subnet_zones: HashMap<String, String>,
    pub(super) security_groups: Vec<String>,
    /// architecture (`x86_64`, `arm64`) → AMI id
    pub(super) amis: BTreeMap<String, String>,
    pub(super) instance_profile: String,
}

impl Launcher {
    /// Subnets, security groups, AMIs and instance profile of the node class (cached).
    pub(super) async fn resolve(
        &self,
        node_class: &EC2NodeClass,
    ) -> Result<Arc<Resolved>, LaunchError> {
        let key = fnv1a64(&serde_json::to_vec(node_class).unwrap_or_default());
        if let Some((at, hit)) = self.inner.resolved.lock().unwrap().get(&key)
            && at.elapsed() < self.inner.resolve_ttl
        {
            return Ok(Arc::clone(hit));
        }
        let name = node_class.name();
        let spec = &node_class.spec;
        let instance_profile = spec
            .instance_profile
            .clone()
            .or_else(|| spec.role.clone())
            .ok_or_else(|| {
                LaunchError::Config(format!(
                    "EC2NodeClass {name} sets neither instanceProfile nor role"
                ))
            })?;
        let (zonal_subnets, subnet_zones) = self.resolve_subnets(node_class).await?;
        let security_groups = self.resolve_security_groups(node_class).await?;
        let (family, amis) = self.resolve_amis(node_class).await?;
        let resolved = Arc::new(Resolved {
            family,
            zonal_subnets,
            subnet_zones,
            security_groups,
            amis,
            instance_profile,
        });
        debug!(node_class = name, ?resolved, "resolved EC2NodeClass");
        let mut cache = self.inner.resolved.lock().unwrap();
        let ttl = self.inner.resolve_ttl;
        cache.retain(|_, (at, _)| at.elapsed() < ttl);
        cache.insert(key, (Instant::now(), Arc::clone(&resolved)));
        Ok(resolved)
    }

    /// What the node class selects now, from the cache launches use, and the architectures of
    /// `instance_types`: what the drift check compares launched claims with.
    pub async fn node_class_view(
        &self,
        node_class: &EC2NodeClass,
        instance_types: &[String],
    ) -> Result<NodeClassView, LaunchError> {
        let resolved = self.resolve(node_class).await?;
        let types: Vec<&str> = instance_types.iter().map(String::as_str).collect();
        let architectures = self.architectures(&types).await?;
        let mut subnets: Vec<String> = resolved.subnet_zones.keys().cloned().collect();
        subnets.sort();
        Ok(NodeClassView {
            amis: resolved.amis.clone(),
            subnets,
            security_groups: resolved.security_groups.clone(),
            architectures: architectures.into_iter().collect(),
        })
    }

    /// The subnet of each zone (zone → subnet id) and the zone of every selected subnet.
    async fn resolve_subnets(&self, node_class: &EC2NodeClass) -> Result<Subnets, LaunchError> {
        let name = node_class.name();
        let terms = &node_class.spec.subnet_selector_terms;
        if terms.is_empty() {
            return Err(LaunchError::Config(format!(
                "EC2NodeClass {name} has no subnetSelectorTerms"
            )));
        }
        let client = &self.inner.client;
        // subnet id → (zone, free addresses)
        let mut found: BTreeMap<String, (String, i32)> = BTreeMap::new();
        for (i, term) in terms.iter().enumerate() {
            let mut filters = Vec::new();
            if let Some(id) = &term.id {
                filters.push(filter("subnet-id", [id.as_str()]));
            }
            filters.extend(tag_filters(&term.tags));
            if filters.is_empty() {
                return Err(LaunchError::Config(format!(
                    "EC2NodeClass {name}: subnetSelectorTerms[{i}] selects nothing (set id or tags)"
                )));
            }
            let mut token: Option<String> = None;
            loop {
                let page = self
                    .call("DescribeSubnets", Class::NonMutating, || {
                        client
                            .describe_subnets()
                            .set_filters(Some(filters.clone()))
                            .set_next_token(token.clone())
                            .send()
                    })
                    .await?;
                for subnet in page.subnets() {
                    if let (Some(id), Some(zone)) = (subnet.subnet_id(), subnet.availability_zone())
                    {
                        found.insert(
                            id.to_owned(),
                            (
                                zone.to_owned(),
                                subnet.available_ip_address_count().unwrap_or(0),
                            ),
                        );
                    }
                }
                match page.next_token() {
                    Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                    _ => break,
                }
            }
        }
        if found.is_empty() {
            return Err(LaunchError::Config(format!(
                "no subnet matches the subnetSelectorTerms of EC2NodeClass {name}: {}",
                serde_json::to_string(terms).unwrap_or_default()
            )));
        }
        // Per zone, the subnet with the most free addresses (ties: the lowest id).
        let mut best: BTreeMap<String, (String, i32)> = BTreeMap::new();
        for (id, (zone, free)) in &found {
            match best.get(zone) {
                Some((_, have)) if *have >= *free => {}
                _ => {
                    best.insert(zone.clone(), (id.clone(), *free));
                }
            }
        }
        let zonal = best.into_iter().map(|(z, (id, _))| (z, id)).collect();
        let zones = found.into_iter().map(|(id, (z, _))| (id, z)).collect();
        Ok((zonal, zones))
    }

    async fn resolve_security_groups(
        &self,
        node_class: &EC2NodeClass,
    ) -> Result<Vec<String>, LaunchError> {
        let name = node_class.name();
        let terms = &node_class.spec.security_group_selector_terms;
        if terms.is_empty() {
            return Err(LaunchError::Config(format!(
                "EC2NodeClass {name} has no securityGroupSelectorTerms"
            )));
        }
        let client = &self.inner.client;
        let mut found: Vec<String> = Vec::new();
        for (i, term) in terms.iter().enumerate() {
            let mut filters = Vec::new();
            if let Some(id) = &term.id {
                filters.push(filter("group-id", [id.as_str()]));
            }
            if let Some(group_name) = &term.name {
                filters.push(filter("group-name", [group_name.as_str()]));
            }
            filters.extend(tag_filters(&term.tags));
            if filters.is_empty() {
                return Err(LaunchError::Config(format!(
                    "EC2NodeClass {name}: securityGroupSelectorTerms[{i}] selects nothing (set id, name or tags)"
                )));
            }
            let mut token: Option<String> = None;
            loop {
                let page = self
                    .call("DescribeSecurityGroups", Class::NonMutating, || {
                        client
                            .describe_security_groups()
                            .set_filters(Some(filters.clone()))
                            .set_next_token(token.clone())
                            .send()
                    })
                    .await?;
                for group in page.security_groups() {
                    if let Some(id) = group.group_id()
                        && !found.iter().any(|f| f == id)
                    {
                        found.push(id.to_owned());
                    }
                }
                match page.next_token() {
                    Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                    _ => break,
                }
            }
        }
        if found.is_empty() {
            return Err(LaunchError::Config(format!(
                "no security group matches the securityGroupSelectorTerms of EC2NodeClass {name}: {}",
                serde_json::to_string(terms).unwrap_or_default()
            )));
        }
        found.sort();
        Ok(found)
    }

    /// The AMI family and, per architecture, the newest matching AMI.
    async fn resolve_amis(
        &self,
        node_class: &EC2NodeClass,
    ) -> Result<(AmiFamily, BTreeMap<String, String>), LaunchError> {
        let name = node_class.name();
        let terms = &node_class.spec.ami_selector_terms;
        if terms.is_empty() {
            return Err(LaunchError::Config(format!(
                "EC2NodeClass {name} has no amiSelectorTerms"
            )));
        }
        let alias_family = terms
            .iter()
            .filter_map(|t| t.alias.as_deref())
            .find_map(AmiFamily::from_alias);
        let family = node_class
            .spec
            .ami_family
            .or(alias_family)
            .unwrap_or(AmiFamily::AL2023);
        if !matches!(
            family,
            AmiFamily::AL2023 | AmiFamily::AL2 | AmiFamily::Custom
        ) {
            return Err(LaunchError::Config(format!(
                "EC2NodeClass {name}: amiFamily {family:?} is not supported by nodewright (AL2023, AL2 and Custom are)"
            )));
        }
        // arch → (creation date, id)
        let mut newest: BTreeMap<String, (String, String)> = BTreeMap::new();
        let mut alias_misses = Vec::new();
        for (i, term) in terms.iter().enumerate() {
            let queries = ami_queries(name, i, term)?;
            let mut any = false;
            for (owners, filters) in &queries {
                for image in self.describe_images(owners, filters).await? {
                    let (Some(id), Some(arch)) = (image.image_id(), image.architecture()) else {
                        continue;
                    };
                    any = true;
                    let created = image.creation_date().unwrap_or_default().to_owned();
                    let arch = arch.as_str().to_owned();
                    let newer = newest
                        .get(&arch)
                        .is_none_or(|(date, have)| (&created, id) > (date, have));
                    if newer {
                        newest.insert(arch, (created, id.to_owned()));
                    }
                }
            }
            if let (false, Some(alias)) = (any, &term.alias) {
                let patterns: Vec<String> = queries
                    .iter()
                    .flat_map(|(_, fs)| fs.iter())
                    .filter(|f| f.name() == Some("name"))
                    .flat_map(|f| f.values().iter().cloned())
                    .collect();
                alias_misses.push(format!(
                    "alias {alias}: no available image named {} owned by amazon or this account \
                     (nodewright resolves aliases with DescribeImages by name, not SSM: copy or register \
                     the EKS AMI under that name, or select it by id or name)",
                    patterns.join(" or ")
                ));
            }
        }
        if newest.is_empty() {
            let detail = if alias_misses.is_empty() {
                serde_json::to_string(terms).unwrap_or_default()
            } else {
                alias_misses.join("; ")
            };
            return Err(LaunchError::Config(format!(
                "no AMI matches the amiSelectorTerms of EC2NodeClass {name}: {detail}"
            )));
        }
        Ok((
            family,
            newest
                .into_iter()
                .map(|(arch, (_, id))| (arch, id))
                .collect(),
        ))
    }

    async fn describe_images(
        &self,
        owners: &[String],
        filters: &[Filter],
    ) -> Result<Vec<aws_sdk_ec2::types::Image>, LaunchError> {
        let client = &self.inner.client;
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .call("DescribeImages", Class::NonMutating, || {
                    client
                        .describe_images()
                        .set_owners((!owners.is_empty()).then(|| owners.to_vec()))
                        .set_filters(Some(filters.to_vec()))
                        .set_next_token(token.clone())
                        .send()
                })
                .await?;
            out.extend(page.images().iter().cloned());
            match page.next_token() {
                Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// Architectures of the instance types (DescribeInstanceTypes, cached for good).
    pub(super) async fn architectures(
        &self,
        types: &[&str],
    ) -> Result<HashMap<String, Vec<String>>, LaunchError> {
        let missing: Vec<String> = {
            let known = self.inner.architectures.lock().unwrap();
            let mut missing: Vec<String> = types
                .iter()
                .filter(|t| !known.contains_key(**t))
                .map(|t| (*t).to_owned())
                .collect();
            missing.sort();
            missing.dedup();
            missing
        };
        let client = &self.inner.client;
        for chunk in missing.chunks(100) {
            let wanted: Vec<InstanceType> = chunk
                .iter()
                .map(|t| InstanceType::from(t.as_str()))
                .collect();
            let mut token: Option<String> = None;
            loop {
                let page = self
                    .call("DescribeInstanceTypes", Class::NonMutating, || {
                        client
                            .describe_instance_types()
                            .set_instance_types(Some(wanted.clone()))
                            .set_next_token(token.clone())
                            .send()
                    })
                    .await?;
                let mut known = self.inner.architectures.lock().unwrap();
                for info in page.instance_types() {
                    if let Some(t) = info.instance_type() {
                        let archs = info
                            .processor_info()
                            .map(|p| {
                                p.supported_architectures()
                                    .iter()
                                    .map(|a| a.as_str().to_owned())
                                    .collect()
                            })
                            .unwrap_or_default();
                        known.insert(t.as_str().to_owned(), archs);
                    }
                }
                drop(known);
                match page.next_token() {
                    Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                    _ => break,
                }
            }
        }
        let known = self.inner.architectures.lock().unwrap();
        Ok(types
            .iter()
            .filter_map(|t| known.get(*t).map(|a| ((*t).to_owned(), a.clone())))
            .collect())
    }
}

/// The DescribeImages queries of one AMI term: (owners, filters).
fn ami_queries(
    node_class: &str,
    index: usize,
    term: &AmiSelectorTerm,
) -> Result<Vec<ImageQuery>, LaunchError> {
    let available = filter("state", ["available"]);
    if let Some(alias) = &term.alias {
        let family = AmiFamily::from_alias(alias).ok_or_else(|| {
            LaunchError::Config(format!(
                "EC2NodeClass {node_class}: amiSelectorTerms[{index}].alias {alias:?} names no known AMI family"
            ))
        })?;
        let version = alias.split_once('@').map_or("latest", |(_, v)| v);
        let suffix = if version == "latest" {
            String::new()
        } else {
            format!("-{version}")
        };
        let patterns: Vec<(&str, String)> = match family {
            AmiFamily::AL2023 => ["x86_64", "arm64"]
                .into_iter()
                .map(|arch| {
                    (
                        arch,
                        format!("amazon-eks-node-al2023-{arch}-standard-*{suffix}"),
                    )
                })
                .collect(),
            AmiFamily::AL2 => vec![
                ("x86_64", format!("amazon-eks-node-1.*{suffix}")),
                ("arm64", format!("amazon-eks-arm64-node-1.*{suffix}")),
            ],
            other => {
                return Err(LaunchError::Config(format!(
                    "EC2NodeClass {node_class}: alias {alias}: {other:?} is not supported by nodewright"
                )));
            }
        };
        return Ok(patterns
            .into_iter()
            .map(|(arch, pattern)| {
                (
                    vec!["amazon".to_owned(), "self".to_owned()],
                    vec![
                        filter("name", [pattern.as_str()]),
                        filter("architecture", [arch]),
                        available.clone(),
                    ],
                )
            })
            .collect());
    }
    if let Some(id) = &term.id {
        return Ok(vec![(
            Vec::new(),
            vec![filter("image-id", [id.as_str()]), available],
        )]);
    }
    if term.ssm_parameter.is_some() {
        return Err(LaunchError::Config(format!(
            "EC2NodeClass {node_class}: amiSelectorTerms[{index}].ssmParameter is not supported by nodewright (no SSM client); select the AMI by id or name"
        )));
    }
    let mut filters = vec![available];
    if let Some(name) = &term.name {
        filters.push(filter("name", [name.as_str()]));
    }
    filters.extend(tag_filters(&term.tags));
    let owners = match (&term.owner, &term.name) {
        (Some(owner), _) => vec![owner.clone()],
        (None, Some(_)) => vec!["self".to_owned(), "amazon".to_owned()],
        (None, None) => Vec::new(),
    };
    if term.name.is_none() && term.tags.is_empty() && term.owner.is_none() {
        return Err(LaunchError::Config(format!(
            "EC2NodeClass {node_class}: amiSelectorTerms[{index}] selects nothing (set alias, id, name, owner or tags)"
        )));
    }
    Ok(vec![(owners, filters)])
}

/// Selector tags as filters: `tag:<key>=<value>`, or `tag-key=<key>` for the value `*`.
fn tag_filters(tags: &Tags) -> Vec<Filter> {
    tags.iter()
        .map(|(k, v)| {
            if v == "*" {
                filter("tag-key", [k.as_str()])
            } else {
                filter(&format!("tag:{k}"), [v.as_str()])
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ami_terms_become_describe_images_queries() {
        let alias = AmiSelectorTerm {
            alias: Some("al2023@latest".into()),
            ..Default::default()
        };
        let queries = ami_queries("default", 0, &alias).unwrap();
        assert_eq!(queries.len(), 2);
        assert_eq!(queries[0].0, ["amazon", "self"]);
        assert_eq!(
            queries[0].1[0].values(),
            ["amazon-eks-node-al2023-x86_64-standard-*"]
        );
        let pinned = AmiSelectorTerm {
            alias: Some("al2@v20240807".into()),
            ..Default::default()
        };
        let queries = ami_queries("default", 0, &pinned).unwrap();
        assert_eq!(
            queries[1].1[0].values(),
            ["amazon-eks-arm64-node-1.*-v20240807"]
        );
        let named = AmiSelectorTerm {
            name: Some("my-ami-*".into()),
            ..Default::default()
        };
        assert_eq!(
            ami_queries("default", 0, &named).unwrap()[0].0,
            ["self", "amazon"]
        );
        let err = ami_queries("default", 2, &AmiSelectorTerm::default()).unwrap_err();
        assert!(err.to_string().contains("amiSelectorTerms[2]"), "{err}");
        let bottlerocket = AmiSelectorTerm {
            alias: Some("bottlerocket@latest".into()),
            ..Default::default()
        };
        assert!(ami_queries("default", 0, &bottlerocket).is_err());
    }
}
