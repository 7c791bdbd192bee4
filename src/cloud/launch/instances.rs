//! The instances of NodeClaims (Karpenter's `instance` provider): finding them by claim, id or
//! cluster, describing and terminating them.

use std::time::SystemTime;

use aws_sdk_ec2::types::{Filter, Instance, InstanceLifecycleType};
use tracing::{debug, info, warn};

use super::retry::Class;
use super::types::{
    CLAIM_TAG, InstanceInfo, LaunchError, Launched, NODEPOOL_TAG, cluster_tag, provider_id,
};
use super::{Launcher, filter};
use crate::model::catalog::CapacityType;

/// IDs per TerminateInstances call.
const TERMINATE_BATCH: usize = 1000;

impl Launcher {
    /// The pending or running instance tagged for `claim_name` in `cluster` (the oldest if
    /// several).
    pub async fn find_by_claim(
        &self,
        cluster: &str,
        claim_name: &str,
    ) -> Result<Option<InstanceInfo>, LaunchError> {
        let instances = self
            .describe_instances(vec![
                filter(&format!("tag:{CLAIM_TAG}"), [claim_name]),
                filter(&format!("tag:{}", cluster_tag(cluster)), ["owned"]),
                filter("instance-state-name", ["pending", "running"]),
            ])
            .await?;
        let mut infos: Vec<InstanceInfo> = instances.iter().filter_map(instance_info).collect();
        infos.sort_by(|a, b| (a.launch_time, &a.instance_id).cmp(&(b.launch_time, &b.instance_id)));
        if infos.len() > 1 {
            warn!(
                claim = claim_name,
                instances = ?infos.iter().map(|i| &i.instance_id).collect::<Vec<_>>(),
                "several instances carry the claim's tag; using the oldest"
            );
        }
        Ok(infos.into_iter().next())
    }

    /// The instance by id in any state, or `None` when EC2 does not know it.
    pub async fn instance(&self, instance_id: &str) -> Result<Option<InstanceInfo>, LaunchError> {
        let instances = self
            .describe_instances(vec![filter("instance-id", [instance_id])])
            .await?;
        Ok(instances.iter().filter_map(instance_info).next())
    }

    /// Every instance nodewright launched for `cluster` (tagged `kubernetes.io/cluster/<cluster>=owned`
    /// and carrying a `nodewright.io/nodeclaim` tag) that is not terminated or shutting down, sorted
    /// by id. Instances of the cluster without the claim tag (managed node groups, self-managed
    /// nodes, Karpenter's) are never listed, so orphan clean-up cannot touch them.
    pub async fn cluster_instances(&self, cluster: &str) -> Result<Vec<InstanceInfo>, LaunchError> {
        let instances = self
            .describe_instances(vec![
                filter(&format!("tag:{}", cluster_tag(cluster)), ["owned"]),
                filter("tag-key", [CLAIM_TAG]),
                filter(
                    "instance-state-name",
                    ["pending", "running", "stopping", "stopped"],
                ),
            ])
            .await?;
        let mut infos: Vec<InstanceInfo> = instances.iter().filter_map(instance_info).collect();
        infos.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        infos.dedup_by(|a, b| a.instance_id == b.instance_id);
        Ok(infos)
    }

    /// Terminates the instances; ones EC2 does not know are taken as gone.
    pub async fn terminate(&self, instance_ids: &[String]) -> Result<(), LaunchError> {
        let mut ids: Vec<&String> = instance_ids.iter().collect();
        ids.sort();
        ids.dedup();
        for chunk in ids.chunks(TERMINATE_BATCH) {
            let chunk: Vec<String> = chunk.iter().map(|s| (*s).clone()).collect();
            match self.terminate_batch(&chunk).await {
                Ok(()) => {}
                Err(err) if is_not_found(&err) && chunk.len() > 1 => {
                    // One unknown id fails the whole call: go one by one.
                    for id in &chunk {
                        match self.terminate_batch(std::slice::from_ref(id)).await {
                            Ok(()) => {}
                            Err(err) if is_not_found(&err) => {
                                debug!(instance = %id, "terminate: instance not found, taken as gone");
                            }
                            Err(err) => return Err(err),
                        }
                    }
                }
                Err(err) if is_not_found(&err) => {
                    debug!(instance = %chunk[0], "terminate: instance not found, taken as gone");
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    async fn terminate_batch(&self, ids: &[String]) -> Result<(), LaunchError> {
        self.inner.terminations.acquire(ids.len() as f64).await;
        let client = &self.inner.client;
        self.call("TerminateInstances", Class::Mutating, || {
            client
                .terminate_instances()
                .set_instance_ids(Some(ids.to_vec()))
                .send()
        })
        .await?;
        info!(instances = ?ids, "terminated");
        Ok(())
    }

    async fn describe_instances(&self, filters: Vec<Filter>) -> Result<Vec<Instance>, LaunchError> {
        let client = &self.inner.client;
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .call("DescribeInstances", Class::NonMutating, || {
                    client
                        .describe_instances()
                        .set_filters(Some(filters.clone()))
                        .set_next_token(token.clone())
                        .send()
                })
                .await?;
            for reservation in page.reservations() {
                out.extend(reservation.instances().iter().cloned());
            }
            match page.next_token() {
                Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// The zone of an instance, when CreateFleet's answer did not say.
    pub(super) async fn instance_zone(&self, id: &str) -> Result<String, LaunchError> {
        let instances = self
            .describe_instances(vec![filter("instance-id", [id])])
            .await?;
        instances
            .iter()
            .find_map(|i| i.placement().and_then(|p| p.availability_zone()))
            .map(str::to_owned)
            .ok_or_else(|| LaunchError::Ec2 {
                call: "DescribeInstances",
                code: "InvalidInstanceID.NotFound".into(),
                message: format!("launched instance {id} is not described"),
            })
    }
}

pub(super) fn reused(found: InstanceInfo) -> Launched {
    Launched {
        instance_id: found.instance_id,
        instance_type: found.instance_type,
        zone: found.zone,
        capacity_type: found.capacity_type,
        provider_id: found.provider_id,
        reused: true,
        unavailable: Vec::new(),
        image_id: found.image_id,
        subnet_id: found.subnet_id,
        security_group_ids: found.security_group_ids,
    }
}

fn is_not_found(err: &LaunchError) -> bool {
    err.ec2_code() == Some("InvalidInstanceID.NotFound")
}

fn instance_info(i: &Instance) -> Option<InstanceInfo> {
    let instance_id = i.instance_id()?.to_owned();
    let zone = i
        .placement()
        .and_then(|p| p.availability_zone())
        .unwrap_or_default()
        .to_owned();
    let tag = |key: &str| {
        i.tags()
            .iter()
            .find(|t| t.key() == Some(key))
            .and_then(|t| t.value())
            .map(str::to_owned)
    };
    Some(InstanceInfo {
        provider_id: provider_id(&zone, &instance_id),
        instance_type: i
            .instance_type()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        zone,
        state: i
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default(),
        claim: tag(CLAIM_TAG),
        node_pool: tag(NODEPOOL_TAG),
        launch_time: i.launch_time().and_then(|t| SystemTime::try_from(*t).ok()),
        capacity_type: match i.instance_lifecycle() {
            Some(InstanceLifecycleType::Spot) => CapacityType::Spot,
            _ => CapacityType::OnDemand,
        },
        image_id: i.image_id().map(str::to_owned),
        subnet_id: i.subnet_id().map(str::to_owned),
        security_group_ids: {
            let mut groups: Vec<String> = i
                .security_groups()
                .iter()
                .filter_map(|g| g.group_id().map(str::to_owned))
                .collect();
            groups.sort();
            groups.dedup();
            groups
        },
        instance_id,
    })
}
