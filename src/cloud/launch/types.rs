//! The launcher's vocabulary: what a launch is asked ([`LaunchRequest`], [`LaunchOffering`],
//! [`ClusterInfo`]), what it answers ([`Launched`], [`LaunchError`], [`InstanceInfo`]), the tags
//! nodewright puts on what it creates, and the module's public constants.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::EC2NodeClass;
use crate::model::catalog::CapacityType;
use crate::model::taints::Taint;

/// Instance tag (and node label) naming the NodeClaim.
pub use crate::model::labels::NODECLAIM as CLAIM_TAG;
/// Instance tag naming the NodePool.
pub const NODEPOOL_TAG: &str = "karpenter.sh/nodepool";
/// Instance and launch template tag naming the EC2NodeClass. Not Karpenter's
/// `karpenter.k8s.aws/ec2nodeclass`: a Karpenter in the same account would garbage-collect
/// instances carrying its tags.
pub const NODECLASS_TAG: &str = "nodewright.io/ec2nodeclass";
/// The node label of the capacity type, set to the capacity type actually launched.
pub const CAPACITY_TYPE_LABEL: &str = "karpenter.sh/capacity-type";
/// Prefix of the launch templates nodewright creates.
pub const LAUNCH_TEMPLATE_PREFIX: &str = "nodewright-";
/// Overrides per CreateFleet.
pub const MAX_OVERRIDES: usize = 60;
/// How long a resolved EC2NodeClass (subnets, security groups, AMIs) is reused, by launches
/// and by the drift check alike, unless the launcher is given another
/// ([`Launcher::with_resolve_ttl`](super::Launcher::with_resolve_ttl), from the Policy's
/// `spec.provisioning.nodeClassResolveTtl`).
pub const RESOLVE_TTL: Duration = Duration::from_secs(60);
/// Launch templates unused this long are deleted.
pub const LAUNCH_TEMPLATE_IDLE_TTL: Duration = Duration::from_secs(600);

/// An offering as the unavailable cache keys it: (instance type, zone, capacity type).
pub type OfferingKey = (String, String, CapacityType);

/// `kubernetes.io/cluster/<cluster>`, tagged `owned` on everything nodewright creates.
pub fn cluster_tag(cluster: &str) -> String {
    format!("kubernetes.io/cluster/{cluster}")
}

/// The Kubernetes provider ID of an instance: `aws:///<zone>/<instance id>`.
pub fn provider_id(zone: &str, instance_id: &str) -> String {
    format!("aws:///{zone}/{instance_id}")
}

/// The cluster nodes join.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterInfo {
    pub name: String,
    /// `https://…` of the API server.
    pub endpoint: Option<String>,
    /// The cluster CA as EKS gives it (base64 of the PEM).
    pub ca_bundle: Option<String>,
    /// The service CIDR.
    pub service_cidr: Option<String>,
}

/// One thing that may be launched.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchOffering {
    pub instance_type: String,
    pub zone: String,
    pub capacity_type: CapacityType,
    pub price_per_hour: f64,
}

/// What to launch for one NodeClaim.
#[derive(Clone, Debug)]
pub struct LaunchRequest {
    pub claim_name: String,
    /// The NodeClaim's UID: the CreateFleet `ClientToken`.
    pub client_token: String,
    pub node_pool: String,
    pub node_class: Arc<EC2NodeClass>,
    pub cluster: ClusterInfo,
    /// Ranked cheapest first; at most [`MAX_OVERRIDES`] per capacity type are tried at once.
    pub offerings: Vec<LaunchOffering>,
    /// Labels the node registers with.
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// `maxPods` for the kubelet; leave unset unless the node class fixes it (one launch template
    /// serves every offered instance type, and nodeadm / bootstrap.sh compute the ENI limit of
    /// the type actually launched).
    pub max_pods: Option<i64>,
}

/// The instance of a NodeClaim.
#[derive(Clone, Debug, PartialEq)]
pub struct Launched {
    pub instance_id: String,
    pub instance_type: String,
    pub zone: String,
    pub capacity_type: CapacityType,
    /// `aws:///<zone>/<id>`
    pub provider_id: String,
    /// An existing instance of the claim was found instead of launching.
    pub reused: bool,
    /// Offerings found out of capacity on the way (type, zone, capacity type).
    pub unavailable: Vec<OfferingKey>,
    /// The AMI, subnet and security groups it launched with (what the drift check compares
    /// with the node class later); `None` / empty when not known.
    pub image_id: Option<String>,
    pub subnet_id: Option<String>,
    pub security_group_ids: Vec<String>,
}

/// What an EC2NodeClass selects in EC2 now, resolved as a launch resolves it (and from the
/// same cache): what the drift check compares launched claims with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeClassView {
    /// Architecture (`x86_64`, `arm64`) → the AMI a launch uses for it.
    pub amis: BTreeMap<String, String>,
    /// Every selected subnet, sorted.
    pub subnets: Vec<String>,
    /// The selected security groups, sorted.
    pub security_groups: Vec<String>,
    /// Instance type → its architectures, for the types asked about that EC2 knows.
    pub architectures: BTreeMap<String, Vec<String>>,
}

impl NodeClassView {
    /// The AMIs an instance of this type launches with now (one per architecture it supports
    /// that has an AMI); empty when its architectures are unknown.
    pub fn amis_for(&self, instance_type: &str) -> Vec<String> {
        let mut amis: Vec<String> = self
            .architectures
            .get(instance_type)
            .into_iter()
            .flatten()
            .filter_map(|arch| self.amis.get(arch).cloned())
            .collect();
        amis.sort();
        amis.dedup();
        amis
    }
}

/// Why a launch failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    /// Every offering was out of capacity (now, or recently: see [`Unavailable`](super::Unavailable)).
    #[error("insufficient capacity: {message}")]
    InsufficientCapacity { message: String },
    /// An EC2 call failed: EC2's error code, or `DispatchFailure`/`Timeout`/… without an answer.
    #[error("EC2 {call} failed: {code}: {message}")]
    Ec2 {
        call: &'static str,
        code: String,
        message: String,
    },
    /// The EC2NodeClass cannot be launched as written (no subnet matches, no AMI, …).
    #[error("invalid EC2NodeClass: {0}")]
    Config(String),
}

impl LaunchError {
    /// EC2's error code, or `InsufficientCapacity` / `InvalidNodeClass`; bounded, for metrics.
    pub fn code(&self) -> &str {
        match self {
            Self::InsufficientCapacity { .. } => "InsufficientCapacity",
            Self::Ec2 { code, .. } => code,
            Self::Config(_) => "InvalidNodeClass",
        }
    }

    pub(super) fn ec2_code(&self) -> Option<&str> {
        match self {
            Self::Ec2 { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// An instance of the cluster as EC2 describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceInfo {
    pub instance_id: String,
    pub instance_type: String,
    pub zone: String,
    /// `pending`, `running`, `stopping`, `stopped`, …
    pub state: String,
    /// The `nodewright.io/nodeclaim` tag.
    pub claim: Option<String>,
    /// The `karpenter.sh/nodepool` tag.
    pub node_pool: Option<String>,
    pub launch_time: Option<SystemTime>,
    pub provider_id: String,
    /// Spot when EC2 says the instance's lifecycle is spot.
    pub capacity_type: CapacityType,
    pub image_id: Option<String>,
    pub subnet_id: Option<String>,
    /// Sorted.
    pub security_group_ids: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_named() {
        assert_eq!(LaunchError::Config("x".into()).code(), "InvalidNodeClass");
        assert_eq!(
            LaunchError::InsufficientCapacity {
                message: "x".into()
            }
            .code(),
            "InsufficientCapacity"
        );
        let ec2 = LaunchError::Ec2 {
            call: "CreateFleet",
            code: "UnauthorizedOperation".into(),
            message: "no".into(),
        };
        assert_eq!(ec2.code(), "UnauthorizedOperation");
        assert_eq!(
            ec2.to_string(),
            "EC2 CreateFleet failed: UnauthorizedOperation: no"
        );
    }

    #[test]
    fn an_instance_type_launches_with_the_amis_of_its_architectures() {
        let view = NodeClassView {
            amis: BTreeMap::from([
                ("x86_64".to_owned(), "ami-x".to_owned()),
                ("arm64".to_owned(), "ami-a".to_owned()),
            ]),
            architectures: BTreeMap::from([
                ("c5.large".to_owned(), vec!["x86_64".to_owned()]),
                ("c7g.large".to_owned(), vec!["arm64".to_owned()]),
                (
                    "t1.micro".to_owned(),
                    vec!["i386".to_owned(), "x86_64".to_owned()],
                ),
            ]),
            ..Default::default()
        };
        assert_eq!(view.amis_for("c5.large"), ["ami-x"]);
        assert_eq!(view.amis_for("c7g.large"), ["ami-a"]);
        assert_eq!(view.amis_for("t1.micro"), ["ami-x"]);
        assert!(view.amis_for("m5.large").is_empty(), "unknown type");
    }
}
