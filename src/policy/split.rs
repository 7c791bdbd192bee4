//! Spot and on-demand per workload, pure: which split a pod's workload asks for, which capacity
//! type keeps that split when one more pod arrives, and the ledger of recent choices that makes
//! the count exact across replicas.
//!
//! A workload is the controller of a pod (a ReplicaSet's Deployment, a StatefulSet, a Job, ...).
//! Its pods count by the capacity type they chose: the `karpenter.sh/capacity-type` in their
//! nodeSelector, whether nodewright wrote it or the pod asked for it. The count is
//! `|ledger ∪ live pods the watch sees|`, as for quotas (see `policy::quota`): a choice counts from
//! the moment it is made, whichever replica made it and however far behind this replica's watch
//! is, because the mutating webhook stamps each steered pod with the id of its choice
//! ([`SPLIT_ID`]) and the ledger keeps each id until every watch has seen the pod or it expired.
//!
//! Scale-down keeps the split too: each steered pod also gets a
//! `controller.kubernetes.io/pod-deletion-cost` from its place in the workload's ideal order
//! (the r-th on-demand pod sits where the split first needs r on-demand pods), so a ReplicaSet
//! removes the pods of the highest places first and what stays is again the split of a smaller
//! workload.

use std::collections::{BTreeMap, HashMap};

use json_patch::PatchOperation;
use k8s_openapi::api::core::v1::{
    NodeSelectorRequirement, NodeSelectorTerm, PreferredSchedulingTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::CapacitySplitSpec;
use crate::model::catalog::CapacityType;
use crate::policy::patch::{add, add_entries};
use crate::policy::pod::PodView;

/// Pod (template) annotation: pods of the workload always on on-demand, before any goes to spot.
pub const ON_DEMAND_BASE: &str = "nodewright.io/on-demand-base";
/// Pod (template) annotation: percent of the workload's pods above the base that go to spot.
pub const SPOT_PERCENT: &str = "nodewright.io/spot-percent";
/// Pod (template) annotation, `"true"` or `"false"`: a pod chosen for spot may run on on-demand
/// when no spot capacity is there for it (spot preferred rather than required).
pub const SPOT_FALLBACK: &str = "nodewright.io/spot-fallback";
/// Annotation nodewright writes on a pod whose capacity type it chose: that type. The count reads
/// it where the nodeSelector does not say (a spot choice that may fall back).
pub const CHOSEN_CAPACITY_TYPE: &str = "nodewright.io/capacity-type";
/// Annotation nodewright writes on a pod whose capacity type it chose: the id of that choice in
/// the ledger (the admission request's uid; the pod has no name or uid yet when it is mutated).
pub const SPLIT_ID: &str = "nodewright.io/split-id";
/// The label Karpenter (and nodewright) puts on every node with its capacity type.
pub const CAPACITY_TYPE_KEY: &str = crate::model::labels::CAPACITY_TYPE;
/// The annotation by which the ReplicaSet controller picks the pods to remove on scale-down: lower
/// first (Kubernetes 1.22+, on by default).
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// The label the Deployment controller gives a ReplicaSet's pods: the suffix of the ReplicaSet's name.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// A workload's split: the first `on_demand_base` pods on on-demand, then `spot_percent` of the
/// rest on spot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Split {
    pub on_demand_base: u32,
    /// 0 to 100.
    pub spot_percent: u32,
    /// Pods chosen for spot prefer spot (preferred node affinity) instead of requiring it
    /// (nodeSelector), so they run on on-demand when no spot capacity is there for them; they
    /// still count as spot, and the monitor reports them and moves them back when spot has room.
    pub spot_fallback: bool,
}

impl From<CapacitySplitSpec> for Split {
    fn from(spec: CapacitySplitSpec) -> Self {
        Self {
            on_demand_base: spec.on_demand_base,
            spot_percent: spec.spot_percent.min(100),
            spot_fallback: spec.spot_fallback,
        }
    }
}

/// A workload's pods by capacity type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub on_demand: u32,
    pub spot: u32,
}

impl Counts {
    pub fn total(&self) -> u32 {
        self.on_demand.saturating_add(self.spot)
    }

    pub fn add(&mut self, ct: CapacityType) {
        match ct {
            CapacityType::OnDemand => self.on_demand = self.on_demand.saturating_add(1),
            CapacityType::Spot => self.spot = self.spot.saturating_add(1),
        }
    }
}

impl std::ops::Add for Counts {
    type Output = Counts;
    fn add(self, other: Counts) -> Counts {
        Counts {
            on_demand: self.on_demand.saturating_add(other.on_demand),
            spot: self.spot.saturating_add(other.spot),
        }
    }
}

impl Split {
    /// How many of `total` pods belong on on-demand: the base, then the on-demand share of the
    /// rest rounded up (so a workload of 1 + 3 at 80 % spot has 2 on-demand, not 1).
    pub fn desired_on_demand(&self, total: u32) -> u32 {
        let base = total.min(self.on_demand_base);
        let above = u64::from(total - base);
        let on_demand_share = (above * u64::from(100 - self.spot_percent.min(100))).div_ceil(100);
        base + u32::try_from(on_demand_share).unwrap_or(u32::MAX)
    }

    /// The desired counts for `total` pods.
    pub fn desired(&self, total: u32) -> Counts {
        let on_demand = self.desired_on_demand(total);
        Counts {
            on_demand,
            spot: total - on_demand,
        }
    }

    /// The capacity type for one more pod of a workload that has `counts`: on-demand while it has
    /// fewer than its size after this pod asks for, else spot. From any counts, successive choices
    /// reach the desired split and then hold it exactly.
    pub fn choose(&self, counts: Counts) -> CapacityType {
        if counts.on_demand < self.desired_on_demand(counts.total().saturating_add(1)) {
            CapacityType::OnDemand
        } else {
            CapacityType::Spot
        }
    }

    /// The 0-based place in the workload's ideal order of its `rank`-th pod (1-based) of
    /// capacity type `ct`: the smallest workload that holds that many of `ct`, less one. `None`
    /// when no workload size ever wants that many (spot at 0 %, on-demand above the base at
    /// 100 % spot).
    pub fn place(&self, ct: CapacityType, rank: u32) -> Option<u32> {
        let wanted = |total: u32| match ct {
            CapacityType::OnDemand => self.desired_on_demand(total),
            CapacityType::Spot => total - self.desired_on_demand(total),
        };
        // Far beyond any workload: rank / share, with the share at least 1 %.
        let limit = rank.saturating_mul(100).saturating_add(self.on_demand_base);
        if wanted(limit) < rank {
            return None;
        }
        let (mut low, mut high) = (rank, limit);
        while low < high {
            let mid = low + (high - low) / 2;
            if wanted(mid) >= rank {
                high = mid;
            } else {
                low = mid + 1;
            }
        }
        Some(low - 1)
    }

    /// The pod-deletion-cost of a pod of `ct` chosen when its workload had `counts`: minus its
    /// place, so that the ReplicaSet controller removes the highest places first; pods the split
    /// never wants go before all others.
    pub fn deletion_cost(&self, counts: Counts, ct: CapacityType) -> i32 {
        let rank = match ct {
            CapacityType::OnDemand => counts.on_demand,
            CapacityType::Spot => counts.spot,
        }
        .saturating_add(1);
        match self.place(ct, rank) {
            Some(place) => -i32::try_from(place)
                .unwrap_or(i32::MAX - 1)
                .min(1_000_000_000),
            None => -2_000_000_000,
        }
    }

    /// The split a pod asks for: the rule's, with the pod's own annotations overriding each field.
    /// A pod that only annotates one field gets the other from the rule, or the default (base 0,
    /// 100 % spot). `Ok(None)`: no split asked for.
    pub fn for_pod(
        rule: Option<Split>,
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Result<Option<Split>, String> {
        let read = |key: &str, max: u32| -> Result<Option<u32>, String> {
            let Some(text) = annotations.and_then(|a| a.get(key)) else {
                return Ok(None);
            };
            match text.trim().parse::<u32>() {
                Ok(n) if n <= max => Ok(Some(n)),
                _ => Err(format!(
                    "annotation {key}={text:?} is not a whole number from 0 to {max}"
                )),
            }
        };
        let base = read(ON_DEMAND_BASE, 100_000)?;
        let percent = read(SPOT_PERCENT, 100)?;
        let fallback = match annotations.and_then(|a| a.get(SPOT_FALLBACK)) {
            None => None,
            Some(text) => match text.trim() {
                "true" => Some(true),
                "false" => Some(false),
                _ => {
                    return Err(format!(
                        "annotation {SPOT_FALLBACK}={text:?} is neither \"true\" nor \"false\""
                    ));
                }
            },
        };
        if base.is_none() && percent.is_none() && fallback.is_none() {
            return Ok(rule);
        }
        let default = rule.unwrap_or(Split {
            on_demand_base: 0,
            spot_percent: 100,
            spot_fallback: false,
        });
        Ok(Some(Split {
            on_demand_base: base.unwrap_or(default.on_demand_base),
            spot_percent: percent.unwrap_or(default.spot_percent),
            spot_fallback: fallback.unwrap_or(default.spot_fallback),
        }))
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} on-demand, then {}% spot",
            self.on_demand_base, self.spot_percent
        )?;
        if self.spot_fallback {
            f.write_str(", falling back to on-demand")?;
        }
        Ok(())
    }
}

/// The workload a pod belongs to, as `Kind/name` in the pod's namespace: its controller, except
/// that a ReplicaSet the Deployment controller made (named `<deployment>-<pod-template-hash>`)
/// stands for its Deployment, so that a rollout's two ReplicaSets are one workload. `None` for a
/// pod without a controller.
pub fn workload_of(meta: &ObjectMeta) -> Option<String> {
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    if owner.kind == "ReplicaSet"
        && owner.api_version == "apps/v1"
        && let Some(hash) = meta.labels.as_ref().and_then(|l| l.get(POD_TEMPLATE_HASH))
        && let Some(deployment) = owner
            .name
            .strip_suffix(hash.as_str())
            .and_then(|n| n.strip_suffix('-'))
            .filter(|n| !n.is_empty())
    {
        return Some(format!("Deployment/{deployment}"));
    }
    Some(format!("{}/{}", owner.kind, owner.name))
}

/// The capacity type a pod's nodeSelector asks for, if one it names.
pub fn selected_capacity_type(node_selector: Option<&BTreeMap<String, String>>) -> Option<&str> {
    node_selector
        .and_then(|m| m.get(CAPACITY_TYPE_KEY))
        .map(String::as_str)
}

/// The capacity type a pod counts as: the one its nodeSelector asks for, else the one nodewright
/// chose for it ([`CHOSEN_CAPACITY_TYPE`], a spot choice that may fall back).
pub fn chosen_capacity_type(
    node_selector: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
) -> Option<CapacityType> {
    selected_capacity_type(node_selector)
        .or_else(|| {
            annotations
                .and_then(|a| a.get(CHOSEN_CAPACITY_TYPE))
                .map(String::as_str)
        })
        .and_then(CapacityType::parse)
}

/// The node affinity term by which a spot choice that may fall back prefers spot: the heaviest
/// weight, so the scheduler's node affinity score puts it on a spot node whenever one fits it.
pub fn prefer_spot_term() -> PreferredSchedulingTerm {
    PreferredSchedulingTerm {
        weight: 100,
        preference: NodeSelectorTerm {
            match_expressions: Some(vec![NodeSelectorRequirement {
                key: CAPACITY_TYPE_KEY.to_owned(),
                operator: "In".to_owned(),
                values: Some(vec![CapacityType::Spot.as_str().to_owned()]),
            }]),
            match_fields: None,
        },
    }
}

fn prefer_spot() -> serde_json::Value {
    serde_json::to_value(prefer_spot_term()).unwrap_or_default()
}

/// Operations that add [`prefer_spot`] to the pod's preferred node affinity, creating what the
/// pod lacks of `affinity.nodeAffinity.preferredDuringScheduling...`.
fn prefer_spot_patch(pod: &PodView) -> PatchOperation {
    const PREFERRED: &str = "preferredDuringSchedulingIgnoredDuringExecution";
    let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let node_affinity = affinity.and_then(|a| a.node_affinity.as_ref());
    let term = prefer_spot();
    match (affinity, node_affinity) {
        (None, _) => add(
            &["spec", "affinity"],
            json!({"nodeAffinity": {PREFERRED: [term]}}),
        ),
        (Some(_), None) => add(
            &["spec", "affinity", "nodeAffinity"],
            json!({PREFERRED: [term]}),
        ),
        (Some(_), Some(n))
            if n.preferred_during_scheduling_ignored_during_execution
                .is_some() =>
        {
            add(&["spec", "affinity", "nodeAffinity", PREFERRED, "-"], term)
        }
        (Some(_), Some(_)) => add(
            &["spec", "affinity", "nodeAffinity", PREFERRED],
            json!([term]),
        ),
    }
}

/// The patch operations that record a choice on a pod: `karpenter.sh/capacity-type` in its
/// nodeSelector (a spot choice that may fall back: a preferred node affinity term for spot
/// instead); in its annotations the choice ([`CHOSEN_CAPACITY_TYPE`]) and its id ([`SPLIT_ID`]),
/// its [`POD_DELETION_COST`] (unless the pod sets its own) and the split it was chosen for
/// ([`ON_DEMAND_BASE`], [`SPOT_PERCENT`], [`SPOT_FALLBACK`], where a rule set it), so that every
/// steered pod says what its workload asks.
/// `node_selector_exists`: the pod has a nodeSelector map, or an earlier operation of the same
/// patch adds one.
pub fn choice_patch(
    pod: &PodView,
    node_selector_exists: bool,
    split: Split,
    choice: Choice,
    id: &str,
) -> Vec<PatchOperation> {
    let mut ops = if choice.capacity_type == CapacityType::Spot && split.spot_fallback {
        vec![prefer_spot_patch(pod)]
    } else {
        add_entries(
            &["spec", "nodeSelector"],
            node_selector_exists,
            vec![(CAPACITY_TYPE_KEY, json!(choice.capacity_type.as_str()))],
        )
    };
    let annotations = pod.metadata.annotations.as_ref();
    let has = |key: &str| annotations.is_some_and(|a| a.contains_key(key));
    // The choice and its id are always this choice's; the others are kept when the pod has them.
    let entries = [
        (
            CHOSEN_CAPACITY_TYPE,
            choice.capacity_type.as_str().to_owned(),
        ),
        (SPLIT_ID, id.to_owned()),
        (POD_DELETION_COST, choice.deletion_cost.to_string()),
        (ON_DEMAND_BASE, split.on_demand_base.to_string()),
        (SPOT_PERCENT, split.spot_percent.to_string()),
        (SPOT_FALLBACK, split.spot_fallback.to_string()),
    ]
    .into_iter()
    .enumerate()
    .filter(|(i, (key, _))| *i < 2 || !has(key))
    .map(|(_, (key, value))| (key, json!(value)))
    .collect();
    ops.extend(add_entries(
        &["metadata", "annotations"],
        annotations.is_some(),
        entries,
    ));
    ops
}

/// How far a workload is from its split: on-demand pods it has minus those it should have for
/// its size (positive: too many on-demand, negative: too few). Within one pod is kept.
pub fn drift(split: Split, counts: Counts) -> i64 {
    i64::from(counts.on_demand) - i64::from(split.desired_on_demand(counts.total()))
}

/// A workload's split and where it stands, for reports (`nodewright plan`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSplit {
    /// `namespace/Kind/name`.
    pub workload: String,
    pub on_demand_base: u32,
    pub spot_percent: u32,
    /// Spot pods may run on on-demand when spot has no capacity for them.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub spot_fallback: bool,
    /// Pods by capacity type.
    pub on_demand: u32,
    pub spot: u32,
}

impl WorkloadSplit {
    pub fn new(workload: String, split: Split, counts: Counts) -> Self {
        Self {
            workload,
            on_demand_base: split.on_demand_base,
            spot_percent: split.spot_percent,
            spot_fallback: split.spot_fallback,
            on_demand: counts.on_demand,
            spot: counts.spot,
        }
    }
}

/// Recent choices, shared by the replicas: split id → the choice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitLedger {
    #[serde(default)]
    pub entries: BTreeMap<String, SplitEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SplitEntry {
    /// `Kind/name` in the ledger's namespace.
    pub workload: String,
    pub capacity_type: CapacityType,
    /// The pod-deletion-cost given with it.
    #[serde(default)]
    pub deletion_cost: i32,
    /// Unix seconds.
    pub steered_at: i64,
}

/// What one pod is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub capacity_type: CapacityType,
    /// Its [`POD_DELETION_COST`].
    pub deletion_cost: i32,
}

/// One pod CREATE asking for its capacity type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitRequest {
    /// The id the pod will carry in [`SPLIT_ID`]: the admission request's uid.
    pub id: String,
    pub workload: String,
    pub split: Split,
    /// Answered, but never recorded.
    pub dry_run: bool,
}

/// Where a namespace's workloads stand, as this replica's pod watch sees them.
pub trait WorkloadWatchView {
    /// The live pods of `workload` by the capacity type they chose.
    fn counts(&self, workload: &str) -> Counts;
    /// A live pod carries this split id: the watch counts it already.
    fn is_seen(&self, id: &str) -> bool;
    /// A pod that carried this split id was seen to go away.
    fn is_gone(&self, id: &str) -> bool;
}

impl SplitLedger {
    /// The workload's pods: those the watch counts, plus choices it has not seen (yet) and has
    /// not seen go away.
    pub fn counts(&self, workload: &str, watch: &impl WorkloadWatchView) -> Counts {
        let mut counts = watch.counts(workload);
        for (id, entry) in &self.entries {
            if entry.workload == workload && !watch.is_seen(id) && !watch.is_gone(id) {
                counts.add(entry.capacity_type);
            }
        }
        counts
    }

    /// Choose for a batch in order. Non-dry-run choices are recorded, so the caller writes the
    /// ledger once for the whole batch and answers only after that write succeeded. A request whose
    /// id is already recorded (a retried call) gets the same answer without counting twice.
    pub fn choose<'a>(
        &mut self,
        requests: impl IntoIterator<Item = &'a SplitRequest>,
        watch: &impl WorkloadWatchView,
        now: i64,
    ) -> Vec<Choice> {
        let mut counts: HashMap<String, Counts> = HashMap::new();
        requests
            .into_iter()
            .map(|r| {
                if let Some(entry) = self.entries.get(&r.id) {
                    return Choice {
                        capacity_type: entry.capacity_type,
                        deletion_cost: entry.deletion_cost,
                    };
                }
                let current = match counts.get_mut(&r.workload) {
                    Some(c) => c,
                    None => {
                        let c = self.counts(&r.workload, watch);
                        counts.entry(r.workload.clone()).or_insert(c)
                    }
                };
                let capacity_type = r.split.choose(*current);
                let choice = Choice {
                    capacity_type,
                    deletion_cost: r.split.deletion_cost(*current, capacity_type),
                };
                current.add(capacity_type);
                if !r.dry_run {
                    self.entries.insert(
                        r.id.clone(),
                        SplitEntry {
                            workload: r.workload.clone(),
                            capacity_type,
                            deletion_cost: choice.deletion_cost,
                            steered_at: now,
                        },
                    );
                }
                choice
            })
            .collect()
    }

    /// Drop entries whose pod the watch saw go away, and entries older than `expiry_seconds`: by
    /// then the pod never appeared, or every replica's watch counts it by itself. Returns whether
    /// anything changed.
    pub fn reconcile(
        &mut self,
        watch: &impl WorkloadWatchView,
        now: i64,
        expiry_seconds: i64,
    ) -> bool {
        let before = self.entries.len();
        self.entries
            .retain(|id, e| !(watch.is_gone(id) || now - e.steered_at > expiry_seconds));
        self.entries.len() != before
    }
}

#[cfg(test)]
mod tests;
