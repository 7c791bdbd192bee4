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
//! 2. **The EC2NodeClass is resolved** (cached per content hash for [`RESOLVE_TTL`], or the
//!    launcher's [`Launcher::with_resolve_ttl`]; the drift check reads the same cache through
//!    [`Launcher::node_class_view`], so a drifted node's replacement launches with what the check
//!    saw): subnets
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
//!
//! # Layout
//! This file holds the [`Launcher`] and [`Launcher::launch`], which runs the steps above in order;
//! the rest is in submodules, each adding its part of `impl Launcher`: `types` (requests,
//! results, errors, tags), `resolve` (steps 2 and 3), `templates` (step 5), `fleet` (steps 6 and
//! 7), `instances` (finding and terminating instances), `retry` (rate limits and retries) and
//! `unavailable` (the cache of offerings out of capacity).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::types::{Filter, Tag};
use tracing::{info, warn};

use crate::model::catalog::CapacityType;

mod fleet;
mod instances;
mod resolve;
mod retry;
mod templates;
mod types;
mod unavailable;

pub use retry::{Backoff, Bucket, ICE_CODES, RateLimits};
pub use types::{
    CAPACITY_TYPE_LABEL, CLAIM_TAG, ClusterInfo, InstanceInfo, LAUNCH_TEMPLATE_IDLE_TTL,
    LAUNCH_TEMPLATE_PREFIX, LaunchError, LaunchOffering, LaunchRequest, Launched, MAX_OVERRIDES,
    NODECLASS_TAG, NODEPOOL_TAG, NodeClassView, OfferingKey, RESOLVE_TTL, cluster_tag, provider_id,
};
pub use unavailable::Unavailable;

use fleet::{Candidate, FleetResult};
use instances::reused;
use resolve::Resolved;
use retry::TokenBucket;

#[derive(Debug)]
struct Inner {
    client: Client,
    backoff: Backoff,
    non_mutating: TokenBucket,
    mutating: TokenBucket,
    terminations: TokenBucket,
    template_idle_ttl: Duration,
    /// How long a resolved node class is reused.
    resolve_ttl: Duration,
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
            RESOLVE_TTL,
        )
    }

    fn build(
        client: Client,
        unavailable: Unavailable,
        backoff: Backoff,
        limits: RateLimits,
        template_idle_ttl: Duration,
        resolve_ttl: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                backoff,
                non_mutating: TokenBucket::new(limits.non_mutating),
                mutating: TokenBucket::new(limits.mutating),
                terminations: TokenBucket::new(limits.terminations),
                template_idle_ttl,
                resolve_ttl,
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
            self.inner.resolve_ttl,
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
            self.inner.resolve_ttl,
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
            self.inner.resolve_ttl,
        )
    }

    /// The same launcher reusing a resolved EC2NodeClass for `ttl` (fresh caches): how stale
    /// the AMIs, subnets and security groups that launches use and the drift check compares
    /// with may be.
    pub fn with_resolve_ttl(self, ttl: Duration) -> Self {
        let limits = self.limits();
        Self::build(
            self.inner.client.clone(),
            self.unavailable,
            self.inner.backoff,
            limits,
            self.inner.template_idle_ttl,
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
}

// Helpers shared by the submodules (private items of this module are visible to them).

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

/// FNV-1a, 64 bits.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
