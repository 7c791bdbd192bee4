//! `NodeClaim` (`nodewright.io/v1alpha1`, cluster-scoped): the intent to launch one node, written
//! before any EC2 call. Its UID is the CreateFleet `ClientToken` and it is tagged on the
//! instance, so a retry, a restart or a new leader finds what was already launched instead of
//! launching again. The CRD is `webhook-config/crds/nodeclaims.nodewright.io.yaml`.
//!
//! [`ClaimStore`] keeps claims in the cluster, or in memory when there is no cluster (then they
//! are not durable: a restart forgets them, and only the instance tags remain).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};

use crate::model::requirements::Requirement;
use crate::model::taints::Taint;

pub const GROUP: &str = "nodewright.io";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "NodeClaim";
pub const PLURAL: &str = "nodeclaims";
/// Label on every claim: the pool it belongs to.
pub const POOL_LABEL: &str = "karpenter.sh/nodepool";
/// Instance tag and node label naming the claim (defined once, with the other instance tags).
pub use crate::cloud::launch::CLAIM_TAG;

/// One node nodewright intends to launch, is launching, or launched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeClaim {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "kind")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: NodeClaimSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<NodeClaimStatus>,
}

/// An empty claim with its `apiVersion` and `kind` set (the API server refuses objects without).
impl Default for NodeClaim {
    fn default() -> Self {
        Self {
            api_version: api_version(),
            kind: kind(),
            metadata: ObjectMeta::default(),
            spec: NodeClaimSpec::default(),
            status: None,
        }
    }
}

fn api_version() -> String {
    format!("{GROUP}/{VERSION}")
}

fn kind() -> String {
    KIND.to_owned()
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeClaimSpec {
    pub node_pool: String,
    pub node_class: String,
    /// Every requirement the node must meet: the pool's, narrowed to the planned zone and
    /// capacity types.
    #[serde(default)]
    pub requirements: Vec<Requirement>,
    /// What may be launched, in the order to try (cheapest first; spot before on-demand).
    #[serde(default)]
    pub offerings: Vec<ClaimOffering>,
    /// `namespace/name` of the pods the node is for.
    #[serde(default)]
    pub pods: Vec<String>,
    /// Requests of those pods plus DaemonSet overhead, as Kubernetes quantities.
    #[serde(default)]
    pub resources: BTreeMap<String, String>,
    /// Labels the node registers with.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub taints: Vec<Taint>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimOffering {
    pub instance_type: String,
    pub zone: String,
    pub capacity_type: String,
    pub price_per_hour: f64,
}

pub use crate::model::claim::Phase;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeClaimStatus {
    #[serde(default)]
    pub phase: Phase,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "instanceID"
    )]
    pub instance_id: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "providerID"
    )]
    pub provider_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_per_hour: Option<f64>,
    /// The AMI the instance launched with (Karpenter's `status.imageID`); with the subnet and
    /// security groups, what the drift check compares with the EC2NodeClass as it resolves now.
    /// Unset on claims launched before nodewright recorded it: they are not checked.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "imageID")]
    pub image_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "subnetID")]
    pub subnet_id: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        rename = "securityGroupIDs"
    )]
    pub security_group_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launched_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_at: Option<Time>,
    /// Launch attempts so far (each may try many offerings).
    #[serde(default)]
    pub launch_attempts: u32,
    /// Why the claim is being (or was) terminated: `Empty`, `Expired`, `Deleted`, ….
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption_reason: Option<String>,
    /// When the termination flow started (drain deadlines count from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_started_at: Option<Time>,
    /// When TerminateInstances was called for it: a new leader does not call it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_terminated_at: Option<Time>,
    /// Claims launched to take this (expiring) node's pods before it is drained.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replacements: Vec<String>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A standard Kubernetes condition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

impl NodeClaim {
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }

    pub fn uid(&self) -> &str {
        self.metadata.uid.as_deref().unwrap_or("")
    }

    pub fn phase(&self) -> Phase {
        self.status.as_ref().map(|s| s.phase).unwrap_or_default()
    }

    pub fn status_mut(&mut self) -> &mut NodeClaimStatus {
        self.status.get_or_insert_with(NodeClaimStatus::default)
    }

    /// The condition of this type, if set.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
    }

    /// Whether the condition of this type is `True` (`None`: not set).
    pub fn condition_is(&self, type_: &str) -> Option<bool> {
        self.condition(type_).map(|c| c.status == "True")
    }

    /// Set (or replace) a condition; the transition time moves only when the status changes.
    pub fn set_condition(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        let status = if status { "True" } else { "False" };
        let now = time_now();
        let conditions = &mut self.status_mut().conditions;
        match conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(c) => {
                if c.status != status {
                    c.last_transition_time = Some(now);
                }
                c.status = status.to_owned();
                c.reason = reason.to_owned();
                c.message = message.to_owned();
            }
            None => conditions.push(Condition {
                type_: type_.to_owned(),
                status: status.to_owned(),
                reason: reason.to_owned(),
                message: message.to_owned(),
                last_transition_time: Some(now),
            }),
        }
    }

    /// Seconds since the claim was created (0 when unknown).
    pub fn age(&self) -> std::time::Duration {
        self.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| since(&t.0))
            .unwrap_or_default()
    }
}

/// The current time as Kubernetes timestamps carry it.
pub fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

/// Now as a Kubernetes `Time`, which has whole seconds on the wire.
pub fn time_now() -> Time {
    let t = now();
    Time(jiff::Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// How long ago `t` was (zero if in the future).
pub fn since(t: &jiff::Timestamp) -> std::time::Duration {
    since_at(t, now())
}

/// How long before `now` `t` was (zero if after it).
pub fn since_at(t: &jiff::Timestamp, now: jiff::Timestamp) -> std::time::Duration {
    let nanos = now.as_nanosecond() - t.as_nanosecond();
    std::time::Duration::from_nanos(u64::try_from(nanos.max(0)).unwrap_or(u64::MAX))
}

/// `t` as a Kubernetes `Time` (whole seconds).
pub fn time_at(t: jiff::Timestamp) -> Time {
    Time(jiff::Timestamp::from_second(t.as_second()).unwrap_or(t))
}

impl kube::Resource for NodeClaim {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(KIND)
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(GROUP)
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(VERSION)
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(PLURAL)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Errors from the claim store.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("NodeClaim {0} not found")]
    NotFound(String),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

/// Where claims live.
#[derive(Clone)]
pub enum ClaimStore {
    Kube(Box<Api<NodeClaim>>),
    /// No cluster: claims live in this process only.
    Memory(Arc<Mutex<BTreeMap<String, NodeClaim>>>),
}

impl ClaimStore {
    pub fn kube(client: Client) -> Self {
        Self::Kube(Box::new(Api::all(client)))
    }

    pub fn memory() -> Self {
        Self::Memory(Arc::default())
    }

    pub fn is_durable(&self) -> bool {
        matches!(self, Self::Kube(_))
    }

    /// Create the claim; the store assigns its UID (and, with `generateName`, its name).
    pub async fn create(&self, claim: &NodeClaim) -> Result<NodeClaim, ClaimError> {
        match self {
            Self::Kube(api) => {
                let mut created = api.create(&PostParams::default(), claim).await?;
                // The CRD has a status subresource: status sent on create is dropped.
                if claim.status.is_some() {
                    created.status = claim.status.clone();
                    created = self.write_status(&created).await?;
                }
                Ok(created)
            }
            Self::Memory(map) => {
                let mut claim = claim.clone();
                let uid = new_uid();
                if claim.metadata.name.is_none() {
                    let prefix = claim.metadata.generate_name.clone().unwrap_or_default();
                    claim.metadata.name = Some(format!("{prefix}{}", &uid[..5]));
                }
                claim.metadata.uid = Some(uid);
                claim.metadata.creation_timestamp = Some(time_now());
                let mut map = lock(map);
                map.insert(claim.name().to_owned(), claim.clone());
                Ok(claim)
            }
        }
    }

    pub async fn list(&self) -> Result<Vec<NodeClaim>, ClaimError> {
        match self {
            Self::Kube(api) => Ok(api.list(&ListParams::default()).await?.items),
            Self::Memory(map) => Ok(lock(map).values().cloned().collect()),
        }
    }

    /// Write the claim's status (the leader is the only writer).
    pub async fn write_status(&self, claim: &NodeClaim) -> Result<NodeClaim, ClaimError> {
        match self {
            Self::Kube(api) => {
                let patch = serde_json::json!({ "status": claim.status });
                Ok(api
                    .patch_status(claim.name(), &PatchParams::default(), &Patch::Merge(&patch))
                    .await?)
            }
            Self::Memory(map) => {
                let mut map = lock(map);
                match map.get_mut(claim.name()) {
                    Some(stored) => {
                        stored.status = claim.status.clone();
                        Ok(stored.clone())
                    }
                    None => Err(ClaimError::NotFound(claim.name().to_owned())),
                }
            }
        }
    }

    /// Delete the claim. With finalizers it only gets its `deletionTimestamp` and stays until
    /// they are removed ([`Self::set_finalizers`]).
    pub async fn delete(&self, name: &str) -> Result<(), ClaimError> {
        match self {
            Self::Kube(api) => match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(e) => Err(e.into()),
            },
            Self::Memory(map) => {
                let mut map = lock(map);
                let finalized = map.get(name).is_some_and(|c| {
                    c.metadata
                        .finalizers
                        .as_ref()
                        .is_some_and(|f| !f.is_empty())
                });
                if finalized {
                    if let Some(c) = map.get_mut(name) {
                        c.metadata.deletion_timestamp.get_or_insert_with(time_now);
                    }
                } else {
                    map.remove(name);
                }
                Ok(())
            }
        }
    }

    /// The claim as stored now, `None` if it is gone.
    pub async fn get(&self, name: &str) -> Result<Option<NodeClaim>, ClaimError> {
        match self {
            Self::Kube(api) => Ok(api.get_opt(name).await?),
            Self::Memory(map) => Ok(lock(map).get(name).cloned()),
        }
    }

    /// Replace the claim's finalizers, on the condition that it has not changed since `claim`
    /// was read (its `resourceVersion`). A deleted claim whose last finalizer goes is gone.
    pub async fn set_finalizers(
        &self,
        claim: &NodeClaim,
        finalizers: Vec<String>,
    ) -> Result<(), ClaimError> {
        match self {
            Self::Kube(api) => {
                let patch = serde_json::json!({
                    "metadata": {
                        "resourceVersion": claim.metadata.resource_version,
                        "finalizers": finalizers,
                    }
                });
                match api
                    .patch(claim.name(), &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            Self::Memory(map) => {
                let mut map = lock(map);
                let Some(stored) = map.get_mut(claim.name()) else {
                    return Ok(());
                };
                if finalizers.is_empty() && stored.metadata.deletion_timestamp.is_some() {
                    map.remove(claim.name());
                } else {
                    stored.metadata.finalizers = Some(finalizers);
                }
                Ok(())
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A random RFC 4122 version-4 UUID, for in-memory claims.
fn new_uid() -> String {
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(8) {
        let r = fastrand::u64(..).to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_is_a_v4_uuid() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, new_uid());
    }

    #[test]
    fn claim_round_trips_with_kube_spelling() {
        let mut c = NodeClaim {
            spec: NodeClaimSpec {
                node_pool: "default".into(),
                node_class: "default".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        c.status_mut().instance_id = Some("i-1".into());
        c.status_mut().image_id = Some("ami-1".into());
        c.status_mut().subnet_id = Some("subnet-1".into());
        c.status_mut().security_group_ids = vec!["sg-1".into()];
        c.set_condition("Launched", true, "Launched", "ok");
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["apiVersion"], "nodewright.io/v1alpha1");
        assert_eq!(v["kind"], "NodeClaim");
        assert_eq!(v["status"]["instanceID"], "i-1");
        assert_eq!(v["status"]["imageID"], "ami-1");
        assert_eq!(v["status"]["subnetID"], "subnet-1");
        assert_eq!(v["status"]["securityGroupIDs"][0], "sg-1");
        assert_eq!(v["status"]["phase"], "Pending");
        assert_eq!(v["status"]["conditions"][0]["type"], "Launched");
        let back: NodeClaim = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }
}
