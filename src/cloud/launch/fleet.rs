//! CreateFleet: the offerings a request can launch ([`Candidate`]s), one `instant` fleet per
//! capacity type and batch of overrides, the reading of its answer, and the ClientTokens of the
//! fleets after the first.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use aws_sdk_ec2::operation::create_fleet::CreateFleetOutput;
use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, FleetLaunchTemplateConfigRequest,
    FleetLaunchTemplateOverridesRequest, FleetLaunchTemplateSpecificationRequest,
    FleetOnDemandAllocationStrategy, FleetType, InstanceLifecycle, InstanceType,
    OnDemandOptionsRequest, ResourceType, SpotAllocationStrategy, SpotOptionsRequest,
    TagSpecification, TargetCapacitySpecificationRequest,
};
use tracing::{debug, warn};

use super::resolve::Resolved;
use super::retry::{Class, ICE_CODES};
use super::templates::LAUNCH_TEMPLATE_NOT_FOUND;
use super::types::{
    CLAIM_TAG, InstanceInfo, LaunchError, LaunchRequest, Launched, NODECLASS_TAG, NODEPOOL_TAG,
    OfferingKey, cluster_tag, provider_id,
};
use super::{Launcher, ec2_tags, fnv1a64};
use crate::model::catalog::CapacityType;

/// One offering with where and with what it would launch.
#[derive(Clone, Debug)]
pub(super) struct Candidate {
    pub(super) instance_type: String,
    pub(super) zone: String,
    pub(super) ct: CapacityType,
    subnet: String,
    ami: String,
}

/// The outcome of one CreateFleet.
pub(super) enum FleetResult {
    Launched(Launched),
    Reused(InstanceInfo),
    /// No instance: these offerings were out of capacity (possibly none, then give up on the
    /// capacity type).
    OutOfCapacity {
        marked: Vec<OfferingKey>,
        messages: Vec<String>,
    },
}

impl Launcher {
    /// The request's offerings that can be launched: zone with a subnet, architecture with an
    /// AMI; in the request's order, without duplicates.
    pub(super) async fn candidates(
        &self,
        req: &LaunchRequest,
        resolved: &Resolved,
    ) -> Result<Vec<Candidate>, LaunchError> {
        let types: Vec<&str> = req
            .offerings
            .iter()
            .map(|o| o.instance_type.as_str())
            .collect();
        let archs = self.architectures(&types).await?;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut no_subnet = Vec::new();
        let mut no_ami = Vec::new();
        for o in &req.offerings {
            if !seen.insert((o.instance_type.as_str(), o.zone.as_str(), o.capacity_type)) {
                continue;
            }
            let Some(subnet) = resolved.zonal_subnets.get(&o.zone) else {
                no_subnet.push(o.zone.clone());
                continue;
            };
            let type_archs = archs.get(&o.instance_type).cloned().unwrap_or_default();
            let Some(ami) = type_archs.iter().find_map(|a| resolved.amis.get(a)) else {
                no_ami.push(format!("{} ({})", o.instance_type, type_archs.join("/")));
                continue;
            };
            out.push(Candidate {
                instance_type: o.instance_type.clone(),
                zone: o.zone.clone(),
                ct: o.capacity_type,
                subnet: subnet.clone(),
                ami: ami.clone(),
            });
        }
        if out.is_empty() {
            no_subnet.sort();
            no_subnet.dedup();
            no_ami.sort();
            no_ami.dedup();
            let mut why = Vec::new();
            if !no_subnet.is_empty() {
                why.push(format!(
                    "no selected subnet in zone(s) {} (subnets are in {})",
                    no_subnet.join(", "),
                    resolved
                        .zonal_subnets
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if !no_ami.is_empty() {
                why.push(format!(
                    "no AMI for the architecture of {} (AMIs for {})",
                    no_ami.join(", "),
                    resolved.amis.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            return Err(LaunchError::Config(format!(
                "EC2NodeClass {} cannot launch any offering of claim {}: {}",
                req.node_class.name(),
                req.claim_name,
                why.join("; ")
            )));
        }
        Ok(out)
    }

    /// One CreateFleet for `batch` (one capacity type), and the offerings it found out of
    /// capacity.
    pub(super) async fn fleet(
        &self,
        req: &LaunchRequest,
        resolved: &Resolved,
        ct: CapacityType,
        batch: &[&Candidate],
        first_fleet: &mut bool,
    ) -> Result<(FleetResult, Vec<OfferingKey>), LaunchError> {
        let client = &self.inner.client;
        let mut template_retry = true;
        loop {
            // One launch template per AMI, in the order of the batch.
            let mut amis: Vec<&str> = Vec::new();
            for c in batch {
                if !amis.contains(&c.ami.as_str()) {
                    amis.push(&c.ami);
                }
            }
            let mut configs = Vec::new();
            let mut names = Vec::new();
            for ami in amis {
                let content = self.template_content(req, resolved, ami, ct)?;
                let name = self.ensure_template(&content).await?;
                let overrides: Vec<FleetLaunchTemplateOverridesRequest> = batch
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.ami == ami)
                    .map(|(rank, c)| {
                        let mut o = FleetLaunchTemplateOverridesRequest::builder()
                            .instance_type(InstanceType::from(c.instance_type.as_str()))
                            .subnet_id(&c.subnet)
                            .availability_zone(&c.zone)
                            .image_id(&c.ami);
                        if ct == CapacityType::OnDemand {
                            o = o.priority(rank as f64);
                        }
                        o.build()
                    })
                    .collect();
                configs.push(
                    FleetLaunchTemplateConfigRequest::builder()
                        .launch_template_specification(
                            FleetLaunchTemplateSpecificationRequest::builder()
                                .launch_template_name(&name)
                                .version("$Latest")
                                .build(),
                        )
                        .set_overrides(Some(overrides))
                        .build(),
                );
                names.push(name);
            }
            let token = if *first_fleet {
                req.client_token.clone()
            } else {
                derived_token(&req.client_token, ct, batch, &names)
            };
            let tags = ec2_tags(&instance_tags(req));
            let tag_specs: Vec<TagSpecification> = [
                ResourceType::Instance,
                ResourceType::Volume,
                ResourceType::Fleet,
            ]
            .into_iter()
            .map(|rt| {
                TagSpecification::builder()
                    .resource_type(rt)
                    .set_tags(Some(tags.clone()))
                    .build()
            })
            .collect();
            let target = TargetCapacitySpecificationRequest::builder()
                .total_target_capacity(1)
                .default_target_capacity_type(match ct {
                    CapacityType::Spot => DefaultTargetCapacityType::Spot,
                    CapacityType::OnDemand => DefaultTargetCapacityType::OnDemand,
                })
                .build();
            let context = req.node_class.spec.context.clone();
            debug!(claim = %req.claim_name, %ct, overrides = batch.len(), %token, "CreateFleet");
            let sent = self
                .call("CreateFleet", Class::Mutating, || {
                    let mut call = client
                        .create_fleet()
                        .r#type(FleetType::Instant)
                        .client_token(&token)
                        .target_capacity_specification(target.clone())
                        .set_launch_template_configs(Some(configs.clone()))
                        .set_tag_specifications(Some(tag_specs.clone()))
                        .set_context(context.clone());
                    call = match ct {
                        CapacityType::Spot => call.spot_options(
                            SpotOptionsRequest::builder()
                                .allocation_strategy(SpotAllocationStrategy::PriceCapacityOptimized)
                                .build(),
                        ),
                        CapacityType::OnDemand => call.on_demand_options(
                            OnDemandOptionsRequest::builder()
                                .allocation_strategy(FleetOnDemandAllocationStrategy::LowestPrice)
                                .build(),
                        ),
                    };
                    call.send()
                })
                .await;
            let out = match sent {
                Ok(out) => out,
                Err(err)
                    if *first_fleet && err.ec2_code() == Some("IdempotentParameterMismatch") =>
                {
                    *first_fleet = false;
                    warn!(claim = %req.claim_name, "the claim's ClientToken was used with other parameters; looking for its instance");
                    for wait in [0u64, 1, 2] {
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                        if let Some(found) = self
                            .find_by_claim(&req.cluster.name, &req.claim_name)
                            .await?
                        {
                            return Ok((FleetResult::Reused(found), Vec::new()));
                        }
                    }
                    continue;
                }
                Err(err)
                    if template_retry
                        && err
                            .ec2_code()
                            .is_some_and(|c| LAUNCH_TEMPLATE_NOT_FOUND.contains(&c)) =>
                {
                    template_retry = false;
                    warn!(launch_templates = ?names, "launch template gone; recreating it");
                    let mut templates = self.inner.templates.lock().unwrap();
                    for name in &names {
                        templates.remove(name);
                    }
                    continue;
                }
                Err(err) => return Err(err),
            };
            *first_fleet = false;
            return self.fleet_outcome(req, resolved, ct, batch, out).await;
        }
    }

    /// Reads a CreateFleet answer.
    async fn fleet_outcome(
        &self,
        req: &LaunchRequest,
        resolved: &Resolved,
        ct: CapacityType,
        batch: &[&Candidate],
        out: CreateFleetOutput,
    ) -> Result<(FleetResult, Vec<OfferingKey>), LaunchError> {
        let zone_of = |az: Option<&str>, subnet: Option<&str>| -> Option<String> {
            az.map(str::to_owned)
                .or_else(|| subnet.and_then(|s| resolved.subnet_zones.get(s).cloned()))
        };
        let mut marked = Vec::new();
        let mut messages = Vec::new();
        let mut other = Vec::new();
        for e in out.errors() {
            let code = e.error_code().unwrap_or("Unknown");
            let message = e.error_message().unwrap_or_default();
            let overrides = e
                .launch_template_and_overrides()
                .and_then(|l| l.overrides());
            let instance_type = overrides
                .and_then(|o| o.instance_type())
                .map(|t| t.as_str().to_owned());
            let zone = overrides.and_then(|o| zone_of(o.availability_zone(), o.subnet_id()));
            let lifecycle = match e.lifecycle() {
                Some(InstanceLifecycle::Spot) => CapacityType::Spot,
                Some(InstanceLifecycle::OnDemand) => CapacityType::OnDemand,
                _ => ct,
            };
            if ICE_CODES.contains(&code) {
                let what = match (&instance_type, &zone) {
                    (Some(t), Some(z)) => {
                        let offering = (t.clone(), z.clone(), lifecycle);
                        if !marked.contains(&offering) {
                            marked.push(offering);
                        }
                        format!("{t} in {z} ({lifecycle})")
                    }
                    _ => format!("an unnamed {lifecycle} offering"),
                };
                debug!(claim = %req.claim_name, %code, %what, "offering out of capacity");
                messages.push(format!("{what}: {code}: {message}"));
            } else {
                other.push((code.to_owned(), message.to_owned(), instance_type, zone));
            }
        }
        // (id, type, zone, capacity type, (AMI, subnet) as the override says)
        type Instance = (
            String,
            String,
            Option<String>,
            CapacityType,
            (Option<String>, Option<String>),
        );
        let mut launched: Vec<Instance> = Vec::new();
        for i in out.instances() {
            let overrides = i
                .launch_template_and_overrides()
                .and_then(|l| l.overrides());
            let zone = overrides.and_then(|o| zone_of(o.availability_zone(), o.subnet_id()));
            let instance_type = i
                .instance_type()
                .map(|t| t.as_str().to_owned())
                .or_else(|| {
                    overrides
                        .and_then(|o| o.instance_type())
                        .map(|t| t.as_str().to_owned())
                })
                .unwrap_or_default();
            let lifecycle = match i.lifecycle() {
                Some(InstanceLifecycle::Spot) => CapacityType::Spot,
                Some(InstanceLifecycle::OnDemand) => CapacityType::OnDemand,
                _ => ct,
            };
            let from = (
                overrides.and_then(|o| o.image_id()).map(str::to_owned),
                overrides.and_then(|o| o.subnet_id()).map(str::to_owned),
            );
            for id in i.instance_ids() {
                launched.push((
                    id.clone(),
                    instance_type.clone(),
                    zone.clone(),
                    lifecycle,
                    from.clone(),
                ));
            }
        }
        if let Some((id, instance_type, zone, capacity_type, (image_id, subnet_id))) =
            launched.first().cloned()
        {
            if launched.len() > 1 {
                let extras: Vec<String> = launched[1..].iter().map(|l| l.0.clone()).collect();
                warn!(claim = %req.claim_name, kept = %id, ?extras, "CreateFleet returned more than one instance; terminating the extras");
                if let Err(err) = self.terminate(&extras).await {
                    warn!(error = %err, ?extras, "terminating extra instances failed");
                }
            }
            let zone = match zone {
                Some(zone) => zone,
                None => self.instance_zone(&id).await?,
            };
            // What the answer leaves out, the override it was launched from says.
            let candidate = batch
                .iter()
                .find(|c| c.instance_type == instance_type && c.zone == zone);
            let launched = Launched {
                provider_id: provider_id(&zone, &id),
                instance_id: id,
                instance_type,
                zone,
                capacity_type,
                reused: false,
                unavailable: Vec::new(),
                image_id: image_id.or_else(|| candidate.map(|c| c.ami.clone())),
                subnet_id: subnet_id.or_else(|| candidate.map(|c| c.subnet.clone())),
                security_group_ids: resolved.security_groups.clone(),
            };
            return Ok((FleetResult::Launched(launched), marked));
        }
        if let Some((code, message, instance_type, zone)) = other.into_iter().next() {
            let what = match (instance_type, zone) {
                (Some(t), Some(z)) => format!(" ({t} in {z})"),
                _ => String::new(),
            };
            return Err(LaunchError::Ec2 {
                call: "CreateFleet",
                code,
                message: format!("{message}{what}"),
            });
        }
        if out.errors().is_empty() {
            messages.push(format!(
                "CreateFleet ({ct}) returned neither an instance nor an error"
            ));
        }
        Ok((
            FleetResult::OutOfCapacity {
                marked: marked.clone(),
                messages,
            },
            marked,
        ))
    }
}

/// Tags of the instance, its volumes and the fleet: the node class's, then nodewright's (which
/// win).
fn instance_tags(req: &LaunchRequest) -> BTreeMap<String, String> {
    let mut tags = req.node_class.spec.tags.clone();
    tags.insert(NODEPOOL_TAG.into(), req.node_pool.clone());
    tags.insert(CLAIM_TAG.into(), req.claim_name.clone());
    tags.insert(NODECLASS_TAG.into(), req.node_class.name().to_owned());
    tags.insert(cluster_tag(&req.cluster.name), "owned".into());
    tags.insert("Name".into(), req.claim_name.clone());
    tags
}

/// The ClientToken of a CreateFleet after the first of a launch: the claim's UID and a hash of
/// the request's parameters (at most 64 characters, as EC2 allows).
fn derived_token(
    base: &str,
    ct: CapacityType,
    batch: &[&Candidate],
    templates: &[String],
) -> String {
    let mut text = format!("{ct}|{}", templates.join(","));
    for c in batch {
        text.push_str(&format!(
            "|{}@{}/{}/{}",
            c.instance_type, c.zone, c.subnet, c.ami
        ));
    }
    let base = if base.len() <= 47 {
        base.to_owned()
    } else {
        format!("{:016x}", fnv1a64(base.as_bytes()))
    };
    format!("{base}-{:016x}", fnv1a64(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_client_tokens_fit_ec2s_limit_and_follow_the_parameters() {
        let c = Candidate {
            instance_type: "c7a.medium".into(),
            zone: "us-east-1a".into(),
            ct: CapacityType::Spot,
            subnet: "subnet-1".into(),
            ami: "ami-1".into(),
        };
        let uid = "0f8e2c0e-6d7a-4c55-9c1f-3b1f2a9e8d71";
        let a = derived_token(uid, CapacityType::Spot, &[&c], &["lt".into()]);
        assert!(a.starts_with(uid) && a.len() <= 64, "{a}");
        assert_eq!(
            a,
            derived_token(uid, CapacityType::Spot, &[&c], &["lt".into()])
        );
        assert_ne!(
            a,
            derived_token(uid, CapacityType::OnDemand, &[&c], &["lt".into()])
        );
        let long = "x".repeat(100);
        assert!(derived_token(&long, CapacityType::Spot, &[&c], &[]).len() <= 64);
    }
}
