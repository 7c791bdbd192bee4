//! Launch templates (Karpenter's `launchtemplate` provider): their content (user data, IMDS
//! options, block devices, tags), named by its hash, created once and reused, and deleted once
//! idle.

use std::collections::BTreeMap;
use std::time::Instant;

use aws_sdk_ec2::types::{
    LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateEbsBlockDeviceRequest,
    LaunchTemplateHttpTokensState, LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataEndpointState, LaunchTemplateInstanceMetadataOptionsRequest,
    LaunchTemplateInstanceMetadataProtocolIpv6,
    LaunchTemplateInstanceNetworkInterfaceSpecificationRequest, LaunchTemplatesMonitoringRequest,
    RequestLaunchTemplateData, ResourceType, TagSpecification,
};
use base64::Engine as _;
use serde::Serialize;
use tracing::{debug, info, warn};

use super::resolve::Resolved;
use super::retry::Class;
use super::types::{
    CAPACITY_TYPE_LABEL, LAUNCH_TEMPLATE_PREFIX, LaunchError, LaunchRequest, NODECLASS_TAG,
    cluster_tag,
};
use super::{Launcher, ec2_tags, filter, fnv1a64};
use crate::cloud::userdata::{self, Bootstrap};
use crate::config::{EnabledOrDisabled, HttpTokens, VolumeType};
use crate::model::catalog::CapacityType;
use crate::model::resources::parse_quantity;

/// EC2's limit on user data, before base64.
const USER_DATA_LIMIT: usize = 16 * 1024;
/// Launch templates deleted per sweep, to bound the calls one launch makes.
const SWEEP_BATCH: usize = 10;

pub(super) const LAUNCH_TEMPLATE_NOT_FOUND: &[&str] = &[
    "InvalidLaunchTemplateName.NotFoundException",
    "InvalidLaunchTemplateId.NotFound",
    "InvalidLaunchTemplateId.NotFoundException",
];

/// A launch template's content; its name is the hash of this.
#[derive(Clone, Debug, Serialize)]
pub(super) struct TemplateContent {
    image_id: String,
    security_group_ids: Vec<String>,
    user_data: String,
    instance_profile: String,
    http_endpoint: &'static str,
    http_protocol_ipv6: &'static str,
    http_put_response_hop_limit: i64,
    http_tokens: &'static str,
    block_devices: Vec<BlockDeviceContent>,
    detailed_monitoring: bool,
    associate_public_ip_address: Option<bool>,
    tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize)]
struct BlockDeviceContent {
    device_name: String,
    delete_on_termination: Option<bool>,
    encrypted: Option<bool>,
    iops: Option<i64>,
    kms_key_id: Option<String>,
    snapshot_id: Option<String>,
    throughput: Option<i64>,
    volume_size_gib: Option<i64>,
    volume_type: Option<&'static str>,
}

impl TemplateContent {
    fn name(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("template content serializes");
        format!("{LAUNCH_TEMPLATE_PREFIX}{:016x}", fnv1a64(&canonical))
    }

    fn request_data(&self) -> RequestLaunchTemplateData {
        let metadata = LaunchTemplateInstanceMetadataOptionsRequest::builder()
            .http_endpoint(LaunchTemplateInstanceMetadataEndpointState::from(
                self.http_endpoint,
            ))
            .http_protocol_ipv6(LaunchTemplateInstanceMetadataProtocolIpv6::from(
                self.http_protocol_ipv6,
            ))
            .http_put_response_hop_limit(
                i32::try_from(self.http_put_response_hop_limit).unwrap_or(1),
            )
            .http_tokens(LaunchTemplateHttpTokensState::from(self.http_tokens))
            .build();
        let mut data = RequestLaunchTemplateData::builder()
            .image_id(&self.image_id)
            .user_data(base64::engine::general_purpose::STANDARD.encode(&self.user_data))
            .iam_instance_profile(
                LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                    .name(&self.instance_profile)
                    .build(),
            )
            .metadata_options(metadata);
        match self.associate_public_ip_address {
            // A network interface carries the groups when it has to carry the public IP choice.
            Some(public) => {
                data = data.network_interfaces(
                    LaunchTemplateInstanceNetworkInterfaceSpecificationRequest::builder()
                        .device_index(0)
                        .associate_public_ip_address(public)
                        .set_groups(Some(self.security_group_ids.clone()))
                        .build(),
                );
            }
            None => data = data.set_security_group_ids(Some(self.security_group_ids.clone())),
        }
        for device in &self.block_devices {
            let ebs = LaunchTemplateEbsBlockDeviceRequest::builder()
                .set_delete_on_termination(device.delete_on_termination)
                .set_encrypted(device.encrypted)
                .set_iops(device.iops.and_then(|v| i32::try_from(v).ok()))
                .set_kms_key_id(device.kms_key_id.clone())
                .set_snapshot_id(device.snapshot_id.clone())
                .set_throughput(device.throughput.and_then(|v| i32::try_from(v).ok()))
                .set_volume_size(device.volume_size_gib.and_then(|v| i32::try_from(v).ok()))
                .set_volume_type(device.volume_type.map(aws_sdk_ec2::types::VolumeType::from))
                .build();
            data = data.block_device_mappings(
                LaunchTemplateBlockDeviceMappingRequest::builder()
                    .device_name(&device.device_name)
                    .ebs(ebs)
                    .build(),
            );
        }
        if self.detailed_monitoring {
            data = data.monitoring(
                LaunchTemplatesMonitoringRequest::builder()
                    .enabled(true)
                    .build(),
            );
        }
        data.build()
    }
}

impl Launcher {
    /// The launch template content for `ami` and capacity type `ct`.
    pub(super) fn template_content(
        &self,
        req: &LaunchRequest,
        resolved: &Resolved,
        ami: &str,
        ct: CapacityType,
    ) -> Result<TemplateContent, LaunchError> {
        let nc = &req.node_class;
        let spec = &nc.spec;
        let mut labels = req.labels.clone();
        labels.insert(CAPACITY_TYPE_LABEL.to_owned(), ct.as_str().to_owned());
        let user_data = userdata::render(&Bootstrap {
            family: resolved.family,
            cluster_name: &req.cluster.name,
            endpoint: req.cluster.endpoint.as_deref(),
            ca_bundle: req.cluster.ca_bundle.as_deref(),
            service_cidr: req.cluster.service_cidr.as_deref(),
            labels: &labels,
            taints: &req.taints,
            max_pods: req.max_pods,
            kubelet: spec.kubelet.as_ref(),
            custom: spec.user_data.as_deref(),
        })
        .map_err(|e| LaunchError::Config(format!("EC2NodeClass {}: {e}", nc.name())))?;
        if user_data.len() > USER_DATA_LIMIT {
            return Err(LaunchError::Config(format!(
                "EC2NodeClass {}: the user data is {} bytes, over EC2's {USER_DATA_LIMIT}",
                nc.name(),
                user_data.len()
            )));
        }
        let metadata = spec.metadata_options.clone().unwrap_or_default();
        let block_devices = if spec.block_device_mappings.is_empty() {
            vec![BlockDeviceContent {
                device_name: "/dev/xvda".into(),
                delete_on_termination: Some(true),
                encrypted: Some(true),
                iops: None,
                kms_key_id: None,
                snapshot_id: None,
                throughput: None,
                volume_size_gib: Some(20),
                volume_type: Some("gp3"),
            }]
        } else {
            let mut out = Vec::new();
            for (i, m) in spec.block_device_mappings.iter().enumerate() {
                let device_name = m.device_name.clone().ok_or_else(|| {
                    LaunchError::Config(format!(
                        "EC2NodeClass {}: blockDeviceMappings[{i}].deviceName is required",
                        nc.name()
                    ))
                })?;
                let ebs = m.ebs.clone().unwrap_or_default();
                let volume_size_gib = match &ebs.volume_size {
                    Some(q) => Some(
                        parse_quantity(&q.0)
                            .filter(|b| *b > 0)
                            .map(|bytes| (bytes + (1 << 30) - 1) >> 30)
                            .ok_or_else(|| {
                                LaunchError::Config(format!(
                                    "EC2NodeClass {}: blockDeviceMappings[{i}].ebs.volumeSize {:?} is not a size",
                                    nc.name(),
                                    q.0
                                ))
                            })?,
                    ),
                    None => None,
                };
                out.push(BlockDeviceContent {
                    device_name,
                    delete_on_termination: ebs.delete_on_termination,
                    encrypted: ebs.encrypted,
                    iops: ebs.iops,
                    kms_key_id: ebs.kms_key_id,
                    snapshot_id: ebs.snapshot_id,
                    throughput: ebs.throughput,
                    volume_size_gib,
                    volume_type: ebs.volume_type.map(volume_type),
                });
            }
            out
        };
        let mut tags = spec.tags.clone();
        tags.insert(cluster_tag(&req.cluster.name), "owned".into());
        tags.insert(NODECLASS_TAG.into(), nc.name().to_owned());
        Ok(TemplateContent {
            image_id: ami.to_owned(),
            security_group_ids: resolved.security_groups.clone(),
            user_data,
            instance_profile: resolved.instance_profile.clone(),
            http_endpoint: match metadata.http_endpoint {
                Some(EnabledOrDisabled::Disabled) => "disabled",
                _ => "enabled",
            },
            http_protocol_ipv6: match metadata.http_protocol_ipv6 {
                Some(EnabledOrDisabled::Enabled) => "enabled",
                _ => "disabled",
            },
            http_put_response_hop_limit: metadata.http_put_response_hop_limit.unwrap_or(1),
            http_tokens: match metadata.http_tokens {
                Some(HttpTokens::Optional) => "optional",
                _ => "required",
            },
            block_devices,
            detailed_monitoring: spec.detailed_monitoring.unwrap_or(false),
            associate_public_ip_address: spec.associate_public_ip_address,
            tags,
        })
    }

    /// The launch template of `content`, created if need be; its name.
    pub(super) async fn ensure_template(
        &self,
        content: &TemplateContent,
    ) -> Result<String, LaunchError> {
        let name = content.name();
        if let Some(last_used) = self.inner.templates.lock().unwrap().get_mut(&name) {
            *last_used = Instant::now();
            return Ok(name);
        }
        let client = &self.inner.client;
        let data = content.request_data();
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::LaunchTemplate)
            .set_tags(Some(ec2_tags(&content.tags)))
            .build();
        let created = self
            .call("CreateLaunchTemplate", Class::Mutating, || {
                client
                    .create_launch_template()
                    .launch_template_name(&name)
                    .launch_template_data(data.clone())
                    .tag_specifications(tags.clone())
                    .send()
            })
            .await;
        match created {
            Ok(_) => {
                info!(launch_template = %name, image = %content.image_id, "created launch template")
            }
            Err(err)
                if err.ec2_code() == Some("InvalidLaunchTemplateName.AlreadyExistsException") =>
            {
                let described = self
                    .call("DescribeLaunchTemplates", Class::NonMutating, || {
                        client
                            .describe_launch_templates()
                            .launch_template_names(&name)
                            .send()
                    })
                    .await?;
                if described.launch_templates().is_empty() {
                    return Err(LaunchError::Ec2 {
                        call: "DescribeLaunchTemplates",
                        code: "InvalidLaunchTemplateName.NotFoundException".into(),
                        message: format!(
                            "launch template {name} already exists for CreateLaunchTemplate but DescribeLaunchTemplates does not find it"
                        ),
                    });
                }
                debug!(launch_template = %name, "reusing existing launch template");
            }
            Err(err) => return Err(err),
        }
        self.inner
            .templates
            .lock()
            .unwrap()
            .insert(name.clone(), Instant::now());
        Ok(name)
    }

    /// Deletes launch templates idle longer than the TTL (best effort, logged). The first sweep
    /// for a cluster adopts the templates earlier processes left, by their cluster tag.
    pub(super) async fn sweep_templates(&self, cluster: &str) {
        let client = &self.inner.client;
        let first = self
            .inner
            .hydrated
            .lock()
            .unwrap()
            .insert(cluster.to_owned());
        if first {
            let filters = vec![
                filter(&format!("tag:{}", cluster_tag(cluster)), ["owned"]),
                filter("tag-key", [NODECLASS_TAG]),
            ];
            let mut names = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let page = self
                    .call("DescribeLaunchTemplates", Class::NonMutating, || {
                        client
                            .describe_launch_templates()
                            .set_filters(Some(filters.clone()))
                            .set_next_token(token.clone())
                            .send()
                    })
                    .await;
                match page {
                    Ok(page) => {
                        names.extend(
                            page.launch_templates()
                                .iter()
                                .filter_map(|t| t.launch_template_name())
                                .filter(|n| n.starts_with(LAUNCH_TEMPLATE_PREFIX))
                                .map(str::to_owned),
                        );
                        match page.next_token() {
                            Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                            _ => break,
                        }
                    }
                    Err(err) => {
                        warn!(cluster, error = %err, "listing existing launch templates failed; will retry on the next launch");
                        self.inner.hydrated.lock().unwrap().remove(cluster);
                        break;
                    }
                }
            }
            let mut templates = self.inner.templates.lock().unwrap();
            let now = Instant::now();
            for name in names {
                templates.entry(name).or_insert(now);
            }
        }
        let idle: Vec<String> = {
            let mut templates = self.inner.templates.lock().unwrap();
            let ttl = self.inner.template_idle_ttl;
            let mut idle: Vec<String> = templates
                .iter()
                .filter(|(_, used)| used.elapsed() >= ttl)
                .map(|(name, _)| name.clone())
                .collect();
            idle.sort();
            idle.truncate(SWEEP_BATCH);
            for name in &idle {
                templates.remove(name);
            }
            idle
        };
        for name in idle {
            let deleted = self
                .call("DeleteLaunchTemplate", Class::Mutating, || {
                    client
                        .delete_launch_template()
                        .launch_template_name(&name)
                        .send()
                })
                .await;
            match deleted {
                Ok(_) => info!(launch_template = %name, "deleted idle launch template"),
                Err(err)
                    if err
                        .ec2_code()
                        .is_some_and(|c| LAUNCH_TEMPLATE_NOT_FOUND.contains(&c)) => {}
                Err(err) => {
                    warn!(launch_template = %name, error = %err, "deleting an idle launch template failed")
                }
            }
        }
    }
}

fn volume_type(v: VolumeType) -> &'static str {
    match v {
        VolumeType::Standard => "standard",
        VolumeType::Io1 => "io1",
        VolumeType::Io2 => "io2",
        VolumeType::Gp2 => "gp2",
        VolumeType::Sc1 => "sc1",
        VolumeType::St1 => "st1",
        VolumeType::Gp3 => "gp3",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content() -> TemplateContent {
        TemplateContent {
            image_id: "ami-1".into(),
            security_group_ids: vec!["sg-1".into()],
            user_data: "#!/bin/bash\n".into(),
            instance_profile: "KarpenterNodeRole".into(),
            http_endpoint: "enabled",
            http_protocol_ipv6: "disabled",
            http_put_response_hop_limit: 1,
            http_tokens: "required",
            block_devices: Vec::new(),
            detailed_monitoring: false,
            associate_public_ip_address: None,
            tags: BTreeMap::new(),
        }
    }

    #[test]
    fn launch_template_name_is_a_stable_hash_of_the_content() {
        let a = content();
        let name = a.name();
        assert!(name.starts_with(LAUNCH_TEMPLATE_PREFIX));
        assert_eq!(name.len(), LAUNCH_TEMPLATE_PREFIX.len() + 16);
        assert_eq!(name, content().name());
        let mut b = content();
        b.user_data.push_str("echo\n");
        assert_ne!(b.name(), name);
        // FNV-1a 64 reference values.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
