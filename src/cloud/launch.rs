//! Launching EC2 instances for NodeClaims with `CreateFleet` (type `instant`), the way Karpenter's
//! AWS provider does (`pkg/providers/instance`, `launchtemplate`, `subnet`, `securitygroup`,
//! `amifamily`).
//!
//! # A launch, step by step ([`Launcher::launch`])
//! 1. **Idempotence.** An instance tagged `nodewright.io/nodeclaim=<claim>` and
//!    `kubernetes.io/cluster/<cluster>=owned`, pending or running, is returned with `reused: true`.
//!    The first CreateFleet of a launch carries the claim's UID as its `ClientToken`, so a retry of
//!    the same request (timeout, restart before the instance is visible) cannot launch twice.
//!    Later CreateFleets of the same launch (other offerings, other capacity type) must differ from
//!    the first, and EC2 refuses a token reused with other parameters
//!    (`IdempotentParameterMismatch`): they carry `<uid>-<16 hex of their parameters>`. When EC2
//!    answers `IdempotentParameterMismatch` to the first one, an earlier incarnation used the token:
//!    the claim's instance is looked for again (a few seconds, for DescribeInstances' eventual
//!    consistency) before launching with a derived token.
//! 2. **The EC2NodeClass is resolved** (cached per content hash for [`RESOLVE_TTL`]): subnets
//!    (`DescribeSubnets`, terms ORed; per zone the subnet with the most free addresses, as
//!    Karpenter), security groups (`DescribeSecurityGroups` by id / name / tags), AMIs
//!    (`DescribeImages`, newest `CreationDate` per architecture) and the instance profile.
//!    - `alias` terms (`al2023@latest`, `al2@v20240807`): Karpenter reads SSM parameters; there is
//!      no SSM client here, so the alias is resolved by image name, owned by `amazon` or by this
//!      account (mirrored EKS AMIs): `amazon-eks-node-al2023-{x86_64,arm64}-standard-*` (AL2023),
//!      `amazon-eks-node-1.*` / `amazon-eks-arm64-node-1.*` (AL2), `…-<version>` for a pinned
//!      version. Without the cluster's Kubernetes version the newest image of any Kubernetes
//!      version wins. Nothing found is a [`LaunchError::Config`] that says so.
//!    - `name` terms without `owner` look in this account and `amazon` (Karpenter's default).
//!    - `role` without `instanceProfile`: Karpenter creates an instance profile for the role
//!      through IAM; nodewright has no IAM client, so it uses the instance profile **named like the
//!      role** (what the IAM console and eksctl create for a role). Neither set is a config error.
//! 3. **Architectures**: DescribeInstanceTypes (cached for the process) tells each offered type's
//!    architectures; an offering whose architectures have no resolved AMI, or whose zone has no
//!    selected subnet, is left out.
//! 4. **User data** ([`super::userdata`]) for the family (`amiFamily`, else the alias', else
//!    AL2023), with the request's labels (`karpenter.sh/capacity-type` set to the capacity type
//!    being launched, so a spot→on-demand fallback registers the right label) and taints.
//! 5. **Launch template** per AMI, named `nodewright-<16 hex of FNV-1a 64 of its canonical
//!    content>` (AMI, security groups, user data, instance profile, IMDS options — IMDSv2 required
//!    and hop limit 1 by default like Karpenter —, block devices — the node class's, else 20 GiB
//!    encrypted gp3 on `/dev/xvda` —, monitoring, public IP, tags). Created once
//!    (`CreateLaunchTemplate`; `AlreadyExists` → confirmed with `DescribeLaunchTemplates`) and
//!    cached. Templates unused for [`LAUNCH_TEMPLATE_IDLE_TTL`] are deleted at the start of a later
//!    launch (Karpenter deletes its templates when they leave its cache); those of earlier
//!    processes are found by their cluster tag on the first launch. A CreateFleet that reports the
//!    template missing (deleted meanwhile) drops it from the cache and is retried once.
//! 6. **CreateFleet** `instant`, total target capacity 1, one call per capacity type (spot first
//!    when offered, then on-demand): up to [`MAX_OVERRIDES`] overrides (instance type × the zone's
//!    subnet, with the AMI and zone), cheapest first as ranked by the planner; spot uses
//!    `price-capacity-optimized`, on-demand `lowest-price` (and `Priority` = rank, which EC2 only
//!    reads under `prioritized`). Instance, volume and fleet are tagged with the node class `tags`,
//!    then `karpenter.sh/nodepool`, `nodewright.io/nodeclaim`, `nodewright.io/ec2nodeclass`,
//!    `kubernetes.io/cluster/<cluster>=owned` and `Name=<claim>` (these win).
//! 7. **Outcomes.** An instance → done (extra instances, if EC2 ever returned several, are
//!    terminated). Per-override errors with a capacity code ([`ICE_CODES`]: Karpenter's
//!    unfulfillable-capacity codes, plus `SpotMaxPriceTooLow`) mark that offering in the shared
//!    [`Unavailable`] cache and the launch goes on with the remaining offerings of the same
//!    capacity type, then the next capacity type, in the same call. Any other per-override error
//!    without an instance is a [`LaunchError::Ec2`] naming its code. Nothing left to try is
//!    [`LaunchError::InsufficientCapacity`].
//!
//! # Rate limits and retries
//! EC2 throttles per account and region with token buckets (the "Request throttling for the
//! Amazon EC2 API" page: non-mutating actions 100 tokens refilled at 20/s, mutating actions 50 at
//! 5/s, TerminateInstances' resource bucket 1000 instances at 20/s). The launcher paces itself
//! with the same buckets ([`RateLimits`]), one per call class, before every request — these are
//! shared with every other client of the account, so they are an upper bound, not a reservation.
//!
//! The SDK's own retries are **disabled** for the launcher's calls (its client is rebuilt from the
//! given client's configuration with `RetryConfig::disabled()`), so retries do not multiply (the
//! SDK's standard mode would make 3 attempts under each of ours). The launcher retries throttling
//! (`RequestLimitExceeded`, `Throttling`, …) and transient failures (5xx codes, dispatch failures,
//! timeouts) itself with exponential backoff and full jitter ([`Backoff`]: base 100 ms, cap 5 s,
//! 6 attempts), each attempt taking a token from its bucket. Every call is safe to repeat:
//! CreateFleet through its ClientToken, CreateLaunchTemplate through `AlreadyExists`,
//! Terminate/Delete through `NotFound`.
//!
//! Every [`LaunchError::Ec2`] names the EC2 call and EC2's error code (or `DispatchFailure`,
//! `Timeout`, … when no answer came back).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::operation::create_fleet::CreateFleetOutput;
use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, Filter, FleetLaunchTemplateConfigRequest,
    FleetLaunchTemplateOverridesRequest, FleetLaunchTemplateSpecificationRequest,
    FleetOnDemandAllocationStrategy, FleetType, Instance, InstanceLifecycle, InstanceLifecycleType,
    InstanceType, LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateEbsBlockDeviceRequest,
    LaunchTemplateHttpTokensState, LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataEndpointState, LaunchTemplateInstanceMetadataOptionsRequest,
    LaunchTemplateInstanceMetadataProtocolIpv6,
    LaunchTemplateInstanceNetworkInterfaceSpecificationRequest, LaunchTemplatesMonitoringRequest,
    OnDemandOptionsRequest, RequestLaunchTemplateData, ResourceType, SpotAllocationStrategy,
    SpotOptionsRequest, Tag, TagSpecification, TargetCapacitySpecificationRequest,
};
use base64::Engine as _;
use serde::Serialize;
use tracing::{debug, info, warn};

use super::userdata::{self, Bootstrap};
use crate::config::{
    AmiFamily, AmiSelectorTerm, EC2NodeClass, EnabledOrDisabled, HttpTokens, Tags, VolumeType,
};
use crate::model::catalog::CapacityType;
use crate::model::resources::parse_quantity;
use crate::model::taints::Taint;

/// Instance tag (and node label) naming the NodeClaim.
pub const CLAIM_TAG: &str = "nodewright.io/nodeclaim";
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
/// How long a resolved EC2NodeClass (subnets, security groups, AMIs) is reused.
pub const RESOLVE_TTL: Duration = Duration::from_secs(300);
/// Launch templates unused this long are deleted.
pub const LAUNCH_TEMPLATE_IDLE_TTL: Duration = Duration::from_secs(600);
/// EC2's limit on user data, before base64.
const USER_DATA_LIMIT: usize = 16 * 1024;
/// Launch templates deleted per sweep, to bound the calls one launch makes.
const SWEEP_BATCH: usize = 10;
/// IDs per TerminateInstances call.
const TERMINATE_BATCH: usize = 1000;

/// CreateFleet error codes that mean "this offering cannot be launched now": Karpenter's
/// `unfulfillableCapacityErrorCodes`, plus `SpotMaxPriceTooLow` (nodewright sets no maximum
/// price, so it only comes from an account-level setting; retrying the offering cannot help).
pub const ICE_CODES: &[&str] = &[
    "InsufficientInstanceCapacity",
    "MaxSpotInstanceCountExceeded",
    "VcpuLimitExceeded",
    "UnfulfillableCapacity",
    "Unsupported",
    "InsufficientFreeAddressesInSubnet",
    "ReservationCapacityExceeded",
    "SpotMaxPriceTooLow",
];
/// Error codes of throttling.
const THROTTLE_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "SlowDown",
];
/// Error codes worth another attempt: EC2's 5xx codes and failures without an answer.
const TRANSIENT_CODES: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    "DispatchFailure",
    "Timeout",
    "ResponseError",
];
const LAUNCH_TEMPLATE_NOT_FOUND: &[&str] = &[
    "InvalidLaunchTemplateName.NotFoundException",
    "InvalidLaunchTemplateId.NotFound",
    "InvalidLaunchTemplateId.NotFoundException",
];

/// An offering as the unavailable cache keys it: (instance type, zone, capacity type).
pub type OfferingKey = (String, String, CapacityType);
/// zone → chosen subnet id, and subnet id → zone for every selected subnet.
type Subnets = (BTreeMap<String, String>, HashMap<String, String>);
/// One DescribeImages query: (owners, filters).
type ImageQuery = (Vec<String>, Vec<Filter>);

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
}

/// Why a launch failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    /// Every offering was out of capacity (now, or recently: see [`Unavailable`]).
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

    fn ec2_code(&self) -> Option<&str> {
        match self {
            Self::Ec2 { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Offerings recently found out of capacity, shared by the launcher and the planner: an entry
/// lives `ttl` after its last mark (Karpenter: 3 minutes).
#[derive(Clone, Debug)]
pub struct Unavailable {
    ttl: Duration,
    entries: Arc<Mutex<HashMap<OfferingKey, Instant>>>,
}

impl Unavailable {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Arc::default(),
        }
    }

    /// Marks the offering unavailable for the TTL from now (again: the TTL restarts).
    pub fn mark(&self, instance_type: &str, zone: &str, ct: CapacityType) {
        let until = Instant::now() + self.ttl;
        self.entries
            .lock()
            .unwrap()
            .insert((instance_type.to_owned(), zone.to_owned(), ct), until);
    }

    pub fn is_unavailable(&self, instance_type: &str, zone: &str, ct: CapacityType) -> bool {
        let key = (instance_type.to_owned(), zone.to_owned(), ct);
        self.entries
            .lock()
            .unwrap()
            .get(&key)
            .is_some_and(|until| *until > Instant::now())
    }

    /// The offerings unavailable now, sorted; expired entries are dropped.
    pub fn current(&self) -> Vec<OfferingKey> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap();
        entries.retain(|_, until| *until > now);
        let mut out: Vec<_> = entries.keys().cloned().collect();
        out.sort();
        out
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
}

/// Retry schedule: attempt `n + 1` waits up to `min(cap, base × 2^(n−1))` after attempt `n`,
/// uniformly at random in `[0, that]` with full jitter, exactly that without.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
            max_attempts: 6,
            jitter: true,
        }
    }
}

impl Backoff {
    /// The longest wait after the `retry`-th failed attempt (1-based).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait after the `retry`-th failed attempt (1-based).
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        if self.jitter {
            ceiling.mul_f64(random_unit())
        } else {
            ceiling
        }
    }
}

/// One token bucket: `capacity` tokens, refilled at `refill_per_second`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub capacity: f64,
    pub refill_per_second: f64,
}

/// The client-side buckets, by default EC2's published request-rate buckets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimits {
    /// Describe* calls.
    pub non_mutating: Bucket,
    /// CreateFleet, CreateLaunchTemplate, DeleteLaunchTemplate, TerminateInstances.
    pub mutating: Bucket,
    /// Instances terminated (TerminateInstances' resource bucket).
    pub terminations: Bucket,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            non_mutating: Bucket {
                capacity: 100.0,
                refill_per_second: 20.0,
            },
            mutating: Bucket {
                capacity: 50.0,
                refill_per_second: 5.0,
            },
            terminations: Bucket {
                capacity: 1000.0,
                refill_per_second: 20.0,
            },
        }
    }
}

/// A token bucket that hands out reservations: a caller takes its tokens at once (the count may
/// go negative) and waits until they would have been there, so callers are served in order.
#[derive(Debug)]
struct TokenBucket {
    spec: Bucket,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    fn new(spec: Bucket) -> Self {
        Self {
            spec,
            state: Mutex::new((spec.capacity, Instant::now())),
        }
    }

    /// Takes `cost` tokens; how long to wait before using them.
    fn reserve(&self, cost: f64) -> Duration {
        let cost = cost.clamp(0.0, self.spec.capacity);
        let mut state = self.state.lock().unwrap();
        let now = Instant::now();
        let refilled = now.duration_since(state.1).as_secs_f64() * self.spec.refill_per_second;
        state.0 = (state.0 + refilled).min(self.spec.capacity) - cost;
        state.1 = now;
        if state.0 >= 0.0 || self.spec.refill_per_second <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-state.0 / self.spec.refill_per_second)
        }
    }

    async fn acquire(&self, cost: f64) {
        let wait = self.reserve(cost);
        if !wait.is_zero() {
            debug!(?wait, "EC2 client-side rate limit: waiting");
            tokio::time::sleep(wait).await;
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Class {
    NonMutating,
    Mutating,
}

/// What an EC2NodeClass resolves to in EC2.
#[derive(Clone, Debug)]
struct Resolved {
    family: AmiFamily,
    /// zone → subnet id
    zonal_subnets: BTreeMap<String, String>,
    /// subnet id → zone (every selected subnet)
    subnet_zones: HashMap<String, String>,
    security_groups: Vec<String>,
    /// architecture (`x86_64`, `arm64`) → AMI id
    amis: BTreeMap<String, String>,
    instance_profile: String,
}

/// One offering with where and with what it would launch.
#[derive(Clone, Debug)]
struct Candidate {
    instance_type: String,
    zone: String,
    ct: CapacityType,
    subnet: String,
    ami: String,
}

/// A launch template's content; its name is the hash of this.
#[derive(Clone, Debug, Serialize)]
struct TemplateContent {
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

/// The outcome of one CreateFleet.
enum FleetResult {
    Launched(Launched),
    Reused(InstanceInfo),
    /// No instance: these offerings were out of capacity (possibly none, then give up on the
    /// capacity type).
    OutOfCapacity {
        marked: Vec<OfferingKey>,
        messages: Vec<String>,
    },
}

#[derive(Debug)]
struct Inner {
    client: Client,
    backoff: Backoff,
    non_mutating: TokenBucket,
    mutating: TokenBucket,
    terminations: TokenBucket,
    template_idle_ttl: Duration,
    /// node class content hash → (resolved at, resolution)
    resolved: Mutex<HashMap<u64, (Instant, Arc<Resolved>)>>,
    /// instance type → architectures
    architectures: Mutex<HashMap<String, Vec<String>>>,
    /// launch template name → last used
    templates: Mutex<HashMap<String, Instant>>,
    /// clusters whose existing launch templates were looked up
    hydrated: Mutex<HashSet<String>>,
}

/// Launches, finds and terminates the instances of NodeClaims. Cheap to clone (shared state).
#[derive(Clone, Debug)]
pub struct Launcher {
    inner: Arc<Inner>,
    unavailable: Unavailable,
}

impl Launcher {
    /// A launcher calling EC2 through `client`'s configuration (region, credentials, endpoint,
    /// HTTP client) with the SDK's retries disabled: the launcher retries itself.
    pub fn new(client: aws_sdk_ec2::Client, unavailable: Unavailable) -> Self {
        let config = client
            .config()
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .build();
        Self::build(
            Client::from_conf(config),
            unavailable,
            Backoff::default(),
            RateLimits::default(),
            LAUNCH_TEMPLATE_IDLE_TTL,
        )
    }

    fn build(
        client: Client,
        unavailable: Unavailable,
        backoff: Backoff,
        limits: RateLimits,
        template_idle_ttl: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                backoff,
                non_mutating: TokenBucket::new(limits.non_mutating),
                mutating: TokenBucket::new(limits.mutating),
                terminations: TokenBucket::new(limits.terminations),
                template_idle_ttl,
                resolved: Mutex::default(),
                architectures: Mutex::default(),
                templates: Mutex::default(),
                hydrated: Mutex::default(),
            }),
            unavailable,
        }
    }

    /// The same launcher with another retry schedule (fresh caches).
    pub fn with_backoff(self, backoff: Backoff) -> Self {
        let limits = self.limits();
        Self::build(
            self.inner.client.clone(),
            self.unavailable,
            backoff,
            limits,
            self.inner.template_idle_ttl,
        )
    }

    /// The same launcher with other client-side rate limits (fresh caches).
    pub fn with_rate_limits(self, limits: RateLimits) -> Self {
        Self::build(
            self.inner.client.clone(),
            self.unavailable,
            self.inner.backoff,
            limits,
            self.inner.template_idle_ttl,
        )
    }

    /// The same launcher deleting launch templates idle for `ttl` (fresh caches).
    pub fn with_template_idle_ttl(self, ttl: Duration) -> Self {
        let limits = self.limits();
        Self::build(
            self.inner.client.clone(),
            self.unavailable,
            self.inner.backoff,
            limits,
            ttl,
        )
    }

    fn limits(&self) -> RateLimits {
        RateLimits {
            non_mutating: self.inner.non_mutating.spec,
            mutating: self.inner.mutating.spec,
            terminations: self.inner.terminations.spec,
        }
    }

    /// The shared cache of offerings out of capacity.
    pub fn unavailable(&self) -> &Unavailable {
        &self.unavailable
    }

    /// Launches (or finds) the instance of `req.claim_name`; see the module documentation.
    pub async fn launch(&self, req: &LaunchRequest) -> Result<Launched, LaunchError> {
        let cluster = req.cluster.name.as_str();
        if let Some(found) = self.find_by_claim(cluster, &req.claim_name).await? {
            info!(claim = %req.claim_name, instance = %found.instance_id, "instance of the claim already exists");
            return Ok(reused(found));
        }
        let node_class = req.node_class.name();
        if req.offerings.is_empty() {
            return Err(LaunchError::Config(format!(
                "claim {}: no offerings to launch",
                req.claim_name
            )));
        }
        let resolved = self.resolve(&req.node_class).await?;
        self.sweep_templates(cluster).await;
        let candidates = self.candidates(req, &resolved).await?;

        let mut order = Vec::new();
        for ct in [CapacityType::Spot, CapacityType::OnDemand] {
            if candidates.iter().any(|c| c.ct == ct) {
                order.push(ct);
            }
        }
        let mut tried: HashSet<OfferingKey> = HashSet::new();
        let mut found_unavailable: Vec<OfferingKey> = Vec::new();
        let mut messages: Vec<String> = Vec::new();
        let mut first_fleet = true;
        for ct in order {
            loop {
                let batch: Vec<&Candidate> = candidates
                    .iter()
                    .filter(|c| {
                        c.ct == ct
                            && !tried.contains(&(c.instance_type.clone(), c.zone.clone(), c.ct))
                            && !self
                                .unavailable
                                .is_unavailable(&c.instance_type, &c.zone, c.ct)
                    })
                    .take(MAX_OVERRIDES)
                    .collect();
                if batch.is_empty() {
                    break;
                }
                let (result, marked) = self
                    .fleet(req, &resolved, ct, &batch, &mut first_fleet)
                    .await?;
                for offering in marked {
                    self.unavailable.mark(&offering.0, &offering.1, offering.2);
                    tried.insert(offering.clone());
                    if !found_unavailable.contains(&offering) {
                        found_unavailable.push(offering);
                    }
                }
                match result {
                    FleetResult::Launched(mut launched) => {
                        launched.unavailable = found_unavailable;
                        info!(
                            claim = %req.claim_name,
                            node_class,
                            instance = %launched.instance_id,
                            instance_type = %launched.instance_type,
                            zone = %launched.zone,
                            capacity_type = %launched.capacity_type,
                            out_of_capacity = launched.unavailable.len(),
                            "launched"
                        );
                        return Ok(launched);
                    }
                    FleetResult::Reused(found) => return Ok(reused(found)),
                    FleetResult::OutOfCapacity {
                        marked,
                        messages: more,
                    } => {
                        messages.extend(more);
                        if marked.is_empty() {
                            // No offering could be named: nothing would change on another try.
                            break;
                        }
                    }
                }
            }
        }
        let message = if messages.is_empty() {
            format!(
                "claim {}: every offering ({}) is marked unavailable after recent insufficient-capacity errors",
                req.claim_name,
                candidates.len()
            )
        } else {
            format!("claim {}: {}", req.claim_name, messages.join("; "))
        };
        warn!(claim = %req.claim_name, %message, "no capacity for the claim");
        Err(LaunchError::InsufficientCapacity { message })
    }

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

    /// Runs `op` with the client-side rate limit and the retry policy.
    async fn call<T, E, R, Fut>(
        &self,
        call: &'static str,
        class: Class,
        mut op: impl FnMut() -> Fut,
    ) -> Result<T, LaunchError>
    where
        Fut: Future<Output = Result<T, SdkError<E, R>>>,
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let bucket = match class {
            Class::NonMutating => &self.inner.non_mutating,
            Class::Mutating => &self.inner.mutating,
        };
        let backoff = self.inner.backoff;
        let mut attempt = 1;
        loop {
            bucket.acquire(1.0).await;
            match op().await {
                Ok(out) => return Ok(out),
                Err(err) => {
                    let (code, message) = error_parts(&err);
                    let retryable = THROTTLE_CODES.contains(&code.as_str())
                        || TRANSIENT_CODES.contains(&code.as_str());
                    if !retryable {
                        return Err(LaunchError::Ec2 {
                            call,
                            code,
                            message,
                        });
                    }
                    if attempt >= backoff.max_attempts {
                        return Err(LaunchError::Ec2 {
                            call,
                            code,
                            message: format!("{message} (gave up after {attempt} attempts)"),
                        });
                    }
                    let delay = backoff.delay(attempt);
                    debug!(call, %code, attempt, ?delay, "EC2 call failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
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

    /// Subnets, security groups, AMIs and instance profile of the node class (cached).
    async fn resolve(&self, node_class: &EC2NodeClass) -> Result<Arc<Resolved>, LaunchError> {
        let key = fnv1a64(&serde_json::to_vec(node_class).unwrap_or_default());
        if let Some((at, hit)) = self.inner.resolved.lock().unwrap().get(&key)
            && at.elapsed() < RESOLVE_TTL
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
        cache.retain(|_, (at, _)| at.elapsed() < RESOLVE_TTL);
        cache.insert(key, (Instant::now(), Arc::clone(&resolved)));
        Ok(resolved)
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
    async fn architectures(
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

    /// The request's offerings that can be launched: zone with a subnet, architecture with an
    /// AMI; in the request's order, without duplicates.
    async fn candidates(
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

    /// The launch template content for `ami` and capacity type `ct`.
    fn template_content(
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
    async fn ensure_template(&self, content: &TemplateContent) -> Result<String, LaunchError> {
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
    async fn sweep_templates(&self, cluster: &str) {
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

    /// One CreateFleet for `batch` (one capacity type), and the offerings it found out of
    /// capacity.
    async fn fleet(
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
            return self.fleet_outcome(req, resolved, ct, out).await;
        }
    }

    /// Reads a CreateFleet answer.
    async fn fleet_outcome(
        &self,
        req: &LaunchRequest,
        resolved: &Resolved,
        ct: CapacityType,
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
        let mut launched: Vec<(String, String, Option<String>, CapacityType)> = Vec::new();
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
            for id in i.instance_ids() {
                launched.push((id.clone(), instance_type.clone(), zone.clone(), lifecycle));
            }
        }
        if let Some((id, instance_type, zone, capacity_type)) = launched.first().cloned() {
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
            let launched = Launched {
                provider_id: provider_id(&zone, &id),
                instance_id: id,
                instance_type,
                zone,
                capacity_type,
                reused: false,
                unavailable: Vec::new(),
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

    /// The zone of an instance, when CreateFleet's answer did not say.
    async fn instance_zone(&self, id: &str) -> Result<String, LaunchError> {
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

fn reused(found: InstanceInfo) -> Launched {
    Launched {
        instance_id: found.instance_id,
        instance_type: found.instance_type,
        zone: found.zone,
        capacity_type: found.capacity_type,
        provider_id: found.provider_id,
        reused: true,
        unavailable: Vec::new(),
    }
}

fn is_not_found(err: &LaunchError) -> bool {
    err.ec2_code() == Some("InvalidInstanceID.NotFound")
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

fn ec2_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

fn filter<'a>(name: &str, values: impl IntoIterator<Item = &'a str>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().map(str::to_owned).collect()))
        .build()
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
        instance_id,
    })
}

/// EC2's error code and message of an SDK error (the kind of failure when there is no answer).
fn error_parts<E, R>(err: &SdkError<E, R>) -> (String, String)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let code = match err {
        SdkError::ServiceError(_) => err.code().unwrap_or("Unknown"),
        SdkError::TimeoutError(_) => "Timeout",
        SdkError::DispatchFailure(_) => "DispatchFailure",
        SdkError::ResponseError(_) => "ResponseError",
        SdkError::ConstructionFailure(_) => "ConstructionFailure",
        _ => "Unknown",
    }
    .to_owned();
    let message = match err.message() {
        Some(message) => message.to_owned(),
        None => DisplayErrorContext(err).to_string(),
    };
    (code, message)
}

/// FNV-1a, 64 bits.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A uniform number in `[0, 1)` for jitter: SipHash with the process's random keys over a
/// counter (no RNG dependency; not for anything but spreading retries).
fn random_unit() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_serves_the_burst_then_paces_at_the_refill_rate() {
        let bucket = TokenBucket::new(Bucket {
            capacity: 2.0,
            refill_per_second: 10.0,
        });
        assert_eq!(bucket.reserve(1.0), Duration::ZERO);
        assert_eq!(bucket.reserve(1.0), Duration::ZERO);
        let third = bucket.reserve(1.0);
        let fourth = bucket.reserve(1.0);
        assert!(
            third > Duration::from_millis(80) && third <= Duration::from_millis(100),
            "{third:?}"
        );
        assert!(
            fourth > Duration::from_millis(180) && fourth <= Duration::from_millis(200),
            "{fourth:?}"
        );
        // A cost above the capacity waits for a full bucket, not forever.
        let big = TokenBucket::new(Bucket {
            capacity: 5.0,
            refill_per_second: 1.0,
        });
        assert_eq!(big.reserve(50.0), Duration::ZERO);
        assert!(big.reserve(5.0) <= Duration::from_secs(5));
    }

    #[test]
    fn default_rate_limits_are_ec2s_published_buckets() {
        let limits = RateLimits::default();
        assert_eq!(
            (
                limits.non_mutating.capacity,
                limits.non_mutating.refill_per_second
            ),
            (100.0, 20.0)
        );
        assert_eq!(
            (limits.mutating.capacity, limits.mutating.refill_per_second),
            (50.0, 5.0)
        );
        assert_eq!(
            (
                limits.terminations.capacity,
                limits.terminations.refill_per_second
            ),
            (1000.0, 20.0)
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_jitter_stays_below_the_ceiling() {
        let backoff = Backoff::default();
        let ceilings: Vec<u128> = (1..=8).map(|n| backoff.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff.ceiling(100), Duration::from_secs(5));
        let mut distinct = HashSet::new();
        for retry in 1..=5 {
            for _ in 0..50 {
                let d = backoff.delay(retry);
                assert!(d <= backoff.ceiling(retry));
                distinct.insert(d);
            }
        }
        assert!(distinct.len() > 200, "jitter is random: {}", distinct.len());
        let fixed = Backoff {
            jitter: false,
            ..backoff
        };
        assert_eq!(fixed.delay(3), Duration::from_millis(400));
    }

    #[test]
    fn unavailable_offerings_expire() {
        let u = Unavailable::new(Duration::from_millis(50));
        u.mark("c7a.medium", "us-east-1a", CapacityType::Spot);
        assert!(u.is_unavailable("c7a.medium", "us-east-1a", CapacityType::Spot));
        assert!(!u.is_unavailable("c7a.medium", "us-east-1a", CapacityType::OnDemand));
        assert!(!u.is_unavailable("c7a.medium", "us-east-1b", CapacityType::Spot));
        assert_eq!(
            u.current(),
            [(
                "c7a.medium".to_owned(),
                "us-east-1a".to_owned(),
                CapacityType::Spot
            )]
        );
        let clone = u.clone();
        std::thread::sleep(Duration::from_millis(60));
        assert!(!clone.is_unavailable("c7a.medium", "us-east-1a", CapacityType::Spot));
        assert!(u.current().is_empty());
    }

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
