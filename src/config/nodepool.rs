//! Karpenter v1 `NodePool` (`karpenter.sh/v1`): the nodes a pool may launch and how they are tainted,
//! labelled, limited and disrupted.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Serialize};

use super::duration::{DurationOrNever, GoDuration};
use super::meta::ObjectMeta;
use crate::model::{Requirement, Taint};

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
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodePoolSpec {
    pub template: NodeClaimTemplate,
    #[serde(default)]
    pub disruption: Disruption,
    /// Upper bounds on the resources of all nodes of the pool together, e.g. `cpu: 1000`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Quantity>,
    /// Priority among pools that fit a pod: higher first (1..=100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeClaimTemplate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    pub spec: NodeClaimTemplateSpec,
}

/// Labels and annotations put on every node of the pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeClaimTemplateSpec {
    /// The EC2NodeClass holding the AWS settings of the pool's nodes.
    pub node_class_ref: NodeClassRef,
    /// Taints on every node; pods need tolerations for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    /// Taints that a node daemon removes once the node is ready; pods need no toleration for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub startup_taints: Vec<Taint>,
    /// Which instance types, zones, capacity types, ... nodes may have; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<Requirement>,
    /// Node lifetime after which it is replaced (Karpenter's default: 720h); `Never` keeps nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_after: Option<DurationOrNever>,
    /// How long a draining node waits for its pods before it is terminated anyway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period: Option<GoDuration>,
}

/// Reference to the node class (`group: karpenter.k8s.aws`, `kind: EC2NodeClass`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeClassRef {
    pub group: String,
    pub kind: String,
    pub name: String,
}

/// When Karpenter may remove or replace the pool's nodes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Disruption {
    #[serde(default)]
    pub consolidation_policy: ConsolidationPolicy,
    /// How long a node must be consolidatable before it is consolidated; `Never` disables it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consolidate_after: Option<DurationOrNever>,
    /// Limits on how many nodes may be disrupted at once; empty means Karpenter's default (10%).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<Budget>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConsolidationPolicy {
    WhenEmpty,
    #[default]
    WhenEmptyOrUnderutilized,
}

/// A disruption budget: at most `nodes` (a count or a percentage) during the `schedule` window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Budget {
    #[serde(default = "default_budget_nodes")]
    pub nodes: String,
    /// Cron schedule at which the budget window opens; needs `duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<GoDuration>,
    /// Disruption reasons the budget applies to; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<DisruptionReason>,
}

fn default_budget_nodes() -> String {
    "10%".to_owned()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DisruptionReason {
    Underutilized,
    Empty,
    Drifted,
}
