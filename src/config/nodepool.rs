//! Karpenter v1 `NodePool` (`karpenter.sh/v1`): the nodes a pool may launch and how they are tainted,
//! labelled, limited and disrupted.
//!
//! Unknown fields are not refused here: the apiserver prunes what Karpenter's CRD does not have,
//! so the parser reports them as warnings (see `config::pruned`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Serialize};

use super::duration::{DurationOrNever, GoDuration, crd};
use super::meta::ObjectMeta;
use crate::model::{Operator, Requirement, Taint, TaintEffect};

/// A Karpenter v1 NodePool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodePool {
    pub metadata: ObjectMeta,
    pub spec: NodePoolSpec,
}

impl NodePool {
    /// `metadata.name`, the value nodes of the pool carry in `karpenter.sh/nodepool`.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// Labels every node of the pool carries (`spec.template.metadata.labels`).
    pub fn template_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.spec.template.metadata.as_ref().map(|m| &m.labels)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolSpec {
    pub template: NodeClaimTemplate,
    /// The CRD's default when `disruption` is absent is `consolidateAfter: 0s`; when it is written,
    /// `consolidateAfter` is required.
    #[serde(default = "Disruption::crd_default")]
    pub disruption: Disruption,
    /// Upper bounds on the resources of all nodes of the pool together, e.g. `cpu: 1000`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Quantity>,
    /// Priority among pools that fit a pod: higher first (1..=100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    /// Static capacity (alpha in Karpenter): keep exactly this many nodes instead of following
    /// pod demand. Only `limits.nodes` and no `weight` may go with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeClaimTemplate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    pub spec: NodeClaimTemplateSpec,
}

/// Labels and annotations put on every node of the pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeClaimTemplateSpec {
    /// The EC2NodeClass holding the AWS settings of the pool's nodes.
    pub node_class_ref: NodeClassRef,
    /// Taints on every node; pods need tolerations for them.
    #[serde(
        default,
        deserialize_with = "taints",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub taints: Vec<Taint>,
    /// Taints that a node daemon removes once the node is ready; pods need no toleration for them.
    #[serde(
        default,
        deserialize_with = "taints",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub startup_taints: Vec<Taint>,
    /// Which instance types, zones, capacity types, ... nodes may have; all must hold. Required by
    /// the CRD (it may be empty); when it is missing the parser warns and reads it as empty.
    #[serde(default, deserialize_with = "requirements")]
    pub requirements: Vec<Requirement>,
    /// Node lifetime after which it is replaced (Karpenter's default: 720h); `Never` keeps nodes.
    #[serde(
        default,
        deserialize_with = "crd::duration_or_never",
        skip_serializing_if = "Option::is_none"
    )]
    pub expire_after: Option<DurationOrNever>,
    /// How long a draining node waits for its pods before it is terminated anyway.
    #[serde(
        default,
        deserialize_with = "crd::duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub termination_grace_period: Option<GoDuration>,
}

/// The wire form of a requirement. The model's [`Requirement`] refuses unknown fields; in a NodePool
/// they are pruned (and warned about) like any other.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequirementFields {
    key: String,
    operator: Operator,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    min_values: Option<i32>,
}

fn requirements<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Requirement>, D::Error> {
    let fields = Vec::<RequirementFields>::deserialize(d)?;
    Ok(fields
        .into_iter()
        .map(|r| Requirement {
            key: r.key,
            operator: r.operator,
            values: r.values,
            min_values: r.min_values,
        })
        .collect())
}

/// The wire form of a taint (core v1 `Taint`); `timeAdded` means nothing in a template.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaintFields {
    key: String,
    #[serde(default)]
    value: Option<String>,
    effect: TaintEffect,
    #[serde(default, rename = "timeAdded")]
    _time_added: Option<String>,
}

fn taints<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Taint>, D::Error> {
    let fields = Vec::<TaintFields>::deserialize(d)?;
    Ok(fields
        .into_iter()
        .map(|t| Taint {
            key: t.key,
            value: t.value,
            effect: t.effect,
        })
        .collect())
}

/// Reference to the node class (`group: karpenter.k8s.aws`, `kind: EC2NodeClass`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeClassRef {
    pub group: String,
    pub kind: String,
    pub name: String,
}

/// When Karpenter may remove or replace the pool's nodes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Disruption {
    #[serde(default, deserialize_with = "consolidation_policy")]
    pub consolidation_policy: ConsolidationPolicy,
    /// How long a node must be consolidatable before it is consolidated; `Never` disables it.
    /// Required by the CRD when `disruption` is written.
    #[serde(
        default,
        deserialize_with = "crd::duration_or_never",
        skip_serializing_if = "Option::is_none"
    )]
    pub consolidate_after: Option<DurationOrNever>,
    /// Limits on how many nodes may be disrupted at once; empty means Karpenter's default (10%).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<Budget>,
}

impl Disruption {
    /// What the apiserver fills in when a NodePool has no `disruption`.
    pub fn crd_default() -> Self {
        Self {
            consolidate_after: Some(DurationOrNever::After(std::time::Duration::ZERO)),
            ..Self::default()
        }
    }
}

/// The policy by name; v1beta1's `WhenUnderutilized` is refused (Karpenter v1's enum does not have
/// it) with the name v1 gives it.
fn consolidation_policy<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<ConsolidationPolicy, D::Error> {
    let name = String::deserialize(d)?;
    match name.as_str() {
        "WhenEmpty" => Ok(ConsolidationPolicy::WhenEmpty),
        "WhenEmptyOrUnderutilized" => Ok(ConsolidationPolicy::WhenEmptyOrUnderutilized),
        "Balanced" => Ok(ConsolidationPolicy::Balanced),
        "WhenUnderutilized" => Err(serde::de::Error::custom(
            "consolidationPolicy WhenUnderutilized is v1beta1's; Karpenter v1 calls it WhenEmptyOrUnderutilized",
        )),
        other => Err(serde::de::Error::custom(format!(
            "unknown consolidationPolicy {other:?}, expected one of WhenEmpty, WhenEmptyOrUnderutilized, Balanced"
        ))),
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConsolidationPolicy {
    WhenEmpty,
    #[default]
    WhenEmptyOrUnderutilized,
    /// Consolidates only when the saving outweighs the disruption (new in Karpenter v1.14).
    Balanced,
}

/// A disruption budget: at most `nodes` (a count or a percentage) during the `schedule` window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    #[serde(default = "default_budget_nodes")]
    pub nodes: String,
    /// Cron schedule at which the budget window opens; needs `duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(
        default,
        deserialize_with = "crd::budget_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub duration: Option<GoDuration>,
    /// Disruption reasons the budget applies to; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<DisruptionReason>,
}

fn default_budget_nodes() -> String {
    "10%".to_owned()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DisruptionReason {
    Underutilized,
    Empty,
    Drifted,
}
