//! The `nodewright.io/v1alpha1` `Policy` document: what Karpenter has no field for.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Serialize};

/// Default nodeSelector key written onto steered pods (Karpenter v1).
pub const DEFAULT_NODE_SELECTOR_KEY: &str = "karpenter.sh/nodepool";
/// Default topology key of the added spread constraint.
pub const ZONE_TOPOLOGY_KEY: &str = "topology.kubernetes.io/zone";

/// The `spec` of the `nodewright.io/v1alpha1` `Policy` document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// Label key written into `spec.nodeSelector`; `karpenter.sh/provisioner-name` for pre-v1 Karpenter.
    #[serde(default = "default_node_selector_key")]
    pub node_selector_key: String,
    /// Spread added by rules that do not set their own; `None` adds no spread.
    #[serde(default)]
    pub spread: Option<SpreadSpec>,
    /// Ordered steering rules: the first rule that selects a pod decides its pool.
    #[serde(default)]
    pub rules: Vec<SteeringRule>,
    /// Namespaces never steered, on top of kube-system, kube-public, kube-node-lease and nodewright's own.
    #[serde(default)]
    pub excluded_namespaces: Vec<String>,
    /// Per-namespace pod quotas (enforced by `/validate`).
    #[serde(default)]
    pub quotas: Vec<QuotaRule>,
    /// What `/validate` does when the Kubernetes API cannot be reached.
    #[serde(default)]
    pub quota_failure_policy: FailurePolicy,
    /// Provisioning batch windows (Karpenter's defaults: idle 1s, max 10s).
    #[serde(default)]
    pub batching: BatchingSpec,
    /// Price adjustments for planning (savings plans, negotiated discounts, spot estimates).
    #[serde(default)]
    pub pricing: PricingSpec,
    /// Just-in-time launches: the cluster nodes join, timeouts. Without `clusterName` nodewright
    /// serves the webhooks and the extender but launches nothing.
    #[serde(default)]
    pub provisioning: ProvisioningSpec,
    /// `spec.schedulerName` given to steered pods that name no scheduler (absent or
    /// `default-scheduler`), so that a second kube-scheduler that calls nodewright's extender places
    /// them (managed control planes such as EKS do not let users configure the default one).
    #[serde(default)]
    pub scheduler_name: Option<String>,
    /// Spot interruptions and instance events, from an SQS queue EventBridge rules feed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interruption: Option<InterruptionSpec>,
    /// Thresholds for consolidating underused nodes (pools with `WhenEmptyOrUnderutilized` or
    /// `Balanced`): a move is taken only if it saves enough for the pods it restarts.
    #[serde(default)]
    pub consolidation: ConsolidationSpec,
    /// What is done when a workload drifts more than one pod from its spot/on-demand split.
    #[serde(default)]
    pub capacity_split_restore: SplitRestoreSpec,
}

/// Restoring drifted capacity splits: off by default (drift is then only reported).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SplitRestoreSpec {
    /// Evict the surplus pods of a drifted workload, one at a time and within its
    /// PodDisruptionBudgets, so that their replacements are steered right.
    #[serde(default)]
    pub enabled: bool,
    /// At most one eviction per workload per this long (Go duration).
    #[serde(default = "default_restore_interval")]
    pub interval: String,
}

impl SplitRestoreSpec {
    /// The interval; the default if it does not parse (validation reports it).
    pub fn interval(&self) -> std::time::Duration {
        super::parse_go_duration(&self.interval).unwrap_or(std::time::Duration::from_secs(60))
    }
}

impl Default for SplitRestoreSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            interval: default_restore_interval(),
        }
    }
}

fn default_restore_interval() -> String {
    "1m".to_owned()
}

/// What a consolidation move must save.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsolidationSpec {
    /// USD per hour a move must save after eviction costs.
    #[serde(default = "default_min_savings_per_hour")]
    pub min_savings_per_hour: f64,
    /// Percent of the removed nodes' price a move must save.
    #[serde(default = "default_min_savings_percent")]
    pub min_savings_percent: f64,
    /// USD per hour charged against a move for each pod it evicts (the cost of a restart).
    #[serde(default = "default_pod_eviction_cost")]
    pub pod_eviction_cost_per_hour: f64,
    /// A move must leave each pool the free room its pods asked for at their peak within this
    /// window (Go duration), beyond what they ask for now: scale-down stabilization.
    #[serde(default = "default_stabilization_window")]
    pub stabilization_window: String,
}

impl ConsolidationSpec {
    /// The window; the default if it does not parse (validation reports it).
    pub fn stabilization_window(&self) -> std::time::Duration {
        super::parse_go_duration(&self.stabilization_window)
            .unwrap_or(std::time::Duration::from_secs(30 * 60))
    }
}

impl Default for ConsolidationSpec {
    fn default() -> Self {
        Self {
            min_savings_per_hour: default_min_savings_per_hour(),
            min_savings_percent: default_min_savings_percent(),
            pod_eviction_cost_per_hour: default_pod_eviction_cost(),
            stabilization_window: default_stabilization_window(),
        }
    }
}

fn default_min_savings_per_hour() -> f64 {
    0.01
}

fn default_min_savings_percent() -> f64 {
    10.0
}

fn default_pod_eviction_cost() -> f64 {
    0.002
}

fn default_stabilization_window() -> String {
    "30m".to_owned()
}

/// Where instance events come from, and which pools act on rebalance recommendations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InterruptionSpec {
    /// The SQS queue's name (in nodewright's region and account) or URL.
    pub queue: String,
    /// NodePools whose nodes are replaced on an EC2 rebalance recommendation (new capacity
    /// first, then the drain); other pools get a `RebalanceRecommendation` Event only.
    #[serde(default)]
    pub rebalance_node_pools: Vec<String>,
}

/// No rules, no quotas, Karpenter v1's nodeSelector key and Karpenter's batching windows: what a
/// config without a Policy document means.
impl Default for PolicySpec {
    fn default() -> Self {
        Self {
            node_selector_key: default_node_selector_key(),
            spread: None,
            rules: Vec::new(),
            excluded_namespaces: Vec::new(),
            quotas: Vec::new(),
            quota_failure_policy: FailurePolicy::default(),
            batching: BatchingSpec::default(),
            pricing: PricingSpec::default(),
            provisioning: ProvisioningSpec::default(),
            scheduler_name: None,
            interruption: None,
            consolidation: ConsolidationSpec::default(),
            capacity_split_restore: SplitRestoreSpec::default(),
        }
    }
}

fn default_node_selector_key() -> String {
    DEFAULT_NODE_SELECTOR_KEY.to_owned()
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SteeringRule {
    /// A name for logs, metrics and audit annotations; defaults to `rule-<index>`.
    #[serde(default)]
    pub name: Option<String>,
    /// The NodePool (by `metadata.name`) the selected pods are steered to.
    pub node_pool: String,
    /// Namespaces selected by name. A rule with neither `namespaces` nor `namespaceSelector` selects every namespace.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Namespaces selected by their labels (needs a reachable cluster). Either match (name or labels) suffices.
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    /// Pods selected by their own labels; combined with the namespace match by AND.
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
    /// Spread for this rule; overrides `spec.spread`.
    #[serde(default)]
    pub spread: Option<SpreadSpec>,
    /// Scheduler for the pods this rule selects; overrides `spec.schedulerName`.
    #[serde(default)]
    pub scheduler_name: Option<String>,
    /// Spot and on-demand per workload: each selected pod's capacity type is chosen at admission
    /// so that its workload keeps this split. The pod template's annotations
    /// `nodewright.io/on-demand-base`, `nodewright.io/spot-percent` and
    /// `nodewright.io/spot-fallback` override it per workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_split: Option<CapacitySplitSpec>,
}

/// A workload's split between on-demand and spot capacity, as EC2 Auto Scaling's mixed instances
/// policy words it: the first `onDemandBase` pods on on-demand, then `spotPercent` of the rest on
/// spot (rounded so that the on-demand share is never short).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CapacitySplitSpec {
    /// Pods always on on-demand, before any goes to spot.
    #[serde(default)]
    pub on_demand_base: u32,
    /// Percent (0 to 100) of the pods above the base that go to spot.
    #[serde(default = "default_spot_percent")]
    pub spot_percent: u32,
    /// Pods chosen for spot prefer spot instead of requiring it: when no spot capacity is there
    /// for them they run on on-demand (and are moved back once spot has room, with
    /// `capacitySplitRestore`). Off: they wait for spot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spot_fallback: bool,
}

fn default_spot_percent() -> u32 {
    100
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpreadSpec {
    #[serde(default = "default_topology_key")]
    pub topology_key: String,
    #[serde(default = "default_max_skew")]
    pub max_skew: i32,
    #[serde(default)]
    pub when_unsatisfiable: WhenUnsatisfiable,
}

fn default_topology_key() -> String {
    ZONE_TOPOLOGY_KEY.to_owned()
}

fn default_max_skew() -> i32 {
    1
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WhenUnsatisfiable {
    #[default]
    DoNotSchedule,
    ScheduleAnyway,
}

impl WhenUnsatisfiable {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DoNotSchedule => "DoNotSchedule",
            Self::ScheduleAnyway => "ScheduleAnyway",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    pub max_pods: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailurePolicy {
    #[default]
    Fail,
    Ignore,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchingSpec {
    /// Go duration, e.g. `1s`, `500ms`.
    #[serde(default = "default_idle")]
    pub idle_duration: String,
    #[serde(default = "default_max")]
    pub max_duration: String,
}

impl BatchingSpec {
    /// `idleDuration` as a duration (validated when the config is parsed).
    pub fn idle(&self) -> Result<std::time::Duration, String> {
        super::parse_go_duration(&self.idle_duration)
    }

    /// `maxDuration` as a duration (validated when the config is parsed).
    pub fn max(&self) -> Result<std::time::Duration, String> {
        super::parse_go_duration(&self.max_duration)
    }
}

impl Default for BatchingSpec {
    fn default() -> Self {
        Self {
            idle_duration: default_idle(),
            max_duration: default_max(),
        }
    }
}

fn default_idle() -> String {
    "1s".to_owned()
}

fn default_max() -> String {
    "10s".to_owned()
}

/// Labels keyed by name, as carried in selectors.
pub type Labels = BTreeMap<String, String>;

/// Spot price used when the source reports none, as a fraction of on-demand.
pub const DEFAULT_SPOT_ESTIMATE_RATIO: f64 = 0.35;

/// `spec.pricing`: how the planner prices offerings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PricingSpec {
    /// Spot price assumed where the catalog has none, as a fraction of on-demand (default 0.35).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_estimate_ratio: Option<f64>,
    /// Adjustments, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<PriceOverride>,
}

/// One price adjustment: which offerings, and either a discount or a fixed price.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PriceOverride {
    /// Instance families (`m5`, `c7g`); empty with `instanceTypes` empty means every type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instance_families: Vec<String>,
    /// Instance types (`m5.large`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instance_types: Vec<String>,
    /// `spot` or `on-demand`; absent means both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_type: Option<String>,
    /// Percent taken off the price (0-100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discount_percent: Option<f64>,
    /// Fixed USD per hour instead of the catalog's price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_per_hour: Option<f64>,
}

impl PricingSpec {
    pub fn spot_estimate_ratio(&self) -> f64 {
        self.spot_estimate_ratio
            .unwrap_or(DEFAULT_SPOT_ESTIMATE_RATIO)
    }

    /// The price of an offering after the first matching override; an override with a fixed
    /// price makes the price no longer an estimate.
    pub fn apply(
        &self,
        instance_type: &str,
        family: &str,
        capacity_type: crate::model::catalog::CapacityType,
        price: f64,
        estimated: bool,
    ) -> (f64, bool) {
        for o in &self.overrides {
            let type_match = (o.instance_families.is_empty() && o.instance_types.is_empty())
                || o.instance_families.iter().any(|f| f == family)
                || o.instance_types.iter().any(|t| t == instance_type);
            let capacity_match = o
                .capacity_type
                .as_deref()
                .is_none_or(|c| c == capacity_type.as_str());
            if type_match && capacity_match {
                if let Some(fixed) = o.price_per_hour {
                    return (fixed, false);
                }
                let discount = o.discount_percent.unwrap_or(0.0).clamp(0.0, 100.0);
                return (price * (1.0 - discount / 100.0), estimated);
            }
        }
        (price, estimated)
    }
}

/// `spec.provisioning`: what launching nodes needs that Karpenter keeps in its own settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProvisioningSpec {
    /// The EKS cluster's name: instances are tagged `kubernetes.io/cluster/<name>: owned` and
    /// bootstrap into it. Unset: nothing is launched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    /// The API server endpoint written into node bootstrap (AL2023 nodeadm needs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_endpoint: Option<String>,
    /// The cluster CA (base64 PEM) written into node bootstrap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ca_bundle: Option<String>,
    /// The service CIDR written into node bootstrap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_cidr: Option<String>,
    /// A NodeClaim whose Node has not registered after this long is terminated and deleted.
    #[serde(default = "default_registration_timeout")]
    pub registration_timeout: String,
    /// Instances nodewright launched whose NodeClaim is gone are terminated once this old.
    #[serde(default = "default_orphan_grace_period")]
    pub orphan_grace_period: String,
    /// How long an offering that reported insufficient capacity is left out (Karpenter: 3m).
    #[serde(default = "default_unavailable_ttl")]
    pub unavailable_offering_ttl: String,
    /// How long what an EC2NodeClass selects (AMIs, subnets, security groups) is reused by
    /// launches and the drift check before it is resolved again: how late a new AMI or a
    /// re-tagged subnet is seen.
    #[serde(default = "default_node_class_resolve_ttl")]
    pub node_class_resolve_ttl: String,
}

impl Default for ProvisioningSpec {
    fn default() -> Self {
        Self {
            cluster_name: None,
            cluster_endpoint: None,
            cluster_ca_bundle: None,
            service_cidr: None,
            registration_timeout: default_registration_timeout(),
            orphan_grace_period: default_orphan_grace_period(),
            unavailable_offering_ttl: default_unavailable_ttl(),
            node_class_resolve_ttl: default_node_class_resolve_ttl(),
        }
    }
}

impl ProvisioningSpec {
    /// `registrationTimeout` (validated when the config is parsed).
    pub fn registration_timeout(&self) -> std::time::Duration {
        super::parse_go_duration(&self.registration_timeout)
            .unwrap_or(std::time::Duration::from_secs(15 * 60))
    }
    /// `orphanGracePeriod` (validated when the config is parsed).
    pub fn orphan_grace_period(&self) -> std::time::Duration {
        super::parse_go_duration(&self.orphan_grace_period)
            .unwrap_or(std::time::Duration::from_secs(10 * 60))
    }
    /// `unavailableOfferingTtl` (validated when the config is parsed).
    pub fn unavailable_offering_ttl(&self) -> std::time::Duration {
        super::parse_go_duration(&self.unavailable_offering_ttl)
            .unwrap_or(std::time::Duration::from_secs(180))
    }
    /// `nodeClassResolveTtl` (validated when the config is parsed).
    pub fn node_class_resolve_ttl(&self) -> std::time::Duration {
        super::parse_go_duration(&self.node_class_resolve_ttl)
            .unwrap_or(std::time::Duration::from_secs(60))
    }
}

fn default_registration_timeout() -> String {
    "15m".to_owned()
}

fn default_orphan_grace_period() -> String {
    "10m".to_owned()
}

fn default_unavailable_ttl() -> String {
    "3m".to_owned()
}

fn default_node_class_resolve_ttl() -> String {
    "1m".to_owned()
}
