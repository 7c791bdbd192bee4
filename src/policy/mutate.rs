//! The steering decision: pod + policy -> skip, allow unchanged, patch, or deny. Pure: no I/O.
//!
//! The patch is built for the object exactly as the apiserver sent it and applied by the apiserver with
//! RFC 6902 semantics, so every `add` targets either a parent that exists or the missing map/list itself
//! (never a key under an absent parent, which would fail the whole request with a 500), and a second pass
//! over the patched pod yields no patch (the webhook is registered with `reinvocationPolicy: IfNeeded`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use json_patch::Patch;
use k8s_openapi::api::core::v1::{NodeSelectorRequirement, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Value, json};

use crate::config::{Config, SpreadSpec};
use crate::model::catalog::CapacityType;
use crate::model::requirements::allows_capacity_type;
use crate::model::{Requirement, Taint};
use crate::policy::patch::{add, add_entries, append};
use crate::policy::pod::{PodSpecView, PodView};
use crate::policy::selector;
use crate::policy::split::{self, Split};

/// Namespaces a steering webhook must never touch.
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];
/// Annotation (or label) by which a pod opts out of steering.
pub const SKIP_KEY: &str = "nodewright.io/skip";
/// Pod labels that differ between revisions of one workload; a spread must not select on them.
const REVISION_LABELS: [&str; 2] = ["pod-template-hash", "controller-revision-hash"];
/// Labels the controllers give each pod its own value of (StatefulSet ordinals, Indexed Job
/// indexes); a spread selecting on them would select the pod alone.
const PER_POD_LABELS: [&str; 3] = [
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/job-completion-index",
];
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// The scheduler the apiserver's defaulting names when a pod names none.
const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// What the admission request is about, already decoded. Built by the HTTP adapter.
#[derive(Debug, Clone, Copy)]
pub struct PodAdmission<'a> {
    pub operation: Operation,
    /// `request.kind`: `(group, kind)`; core pods are `("", "Pod")`.
    pub group: &'a str,
    pub kind: &'a str,
    /// `request.namespace` (the pod's own may be empty on CREATE).
    pub namespace: &'a str,
    pub pod: Option<&'a PodView>,
    /// Labels of the pod's namespace when a cluster is reachable; `None` when unknown.
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
}

impl Operation {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "CREATE" => Some(Self::Create),
            "UPDATE" => Some(Self::Update),
            "DELETE" => Some(Self::Delete),
            "CONNECT" => Some(Self::Connect),
            _ => None,
        }
    }
}

/// Why a pod is left untouched. Label values for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    NotCreate,
    NotPod,
    NoSpec,
    HasNodeName,
    DaemonSet,
    Mirror,
    ExcludedNamespace,
    OptedOut,
    NoRule,
    /// No rule selected the pod, but a rule that selects namespaces by label could not be evaluated
    /// because the namespace's labels are unknown (no cluster, or the API did not answer).
    NamespaceLabelsUnknown,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotCreate => "not_create",
            Self::NotPod => "not_pod",
            Self::NoSpec => "no_spec",
            Self::HasNodeName => "has_node_name",
            Self::DaemonSet => "daemonset",
            Self::Mirror => "mirror",
            Self::ExcludedNamespace => "excluded_namespace",
            Self::OptedOut => "opted_out",
            Self::NoRule => "no_rule",
            Self::NamespaceLabelsUnknown => "namespace_labels_unknown",
        }
    }
}

/// What was added to a steered pod, for the warning and the audit annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Additions {
    pub node_selector: Option<(String, String)>,
    pub tolerations: usize,
    pub spread_topology_key: Option<String>,
    pub scheduler_name: Option<String>,
    /// The capacity type chosen for the pod's workload split, with that split.
    pub capacity_type: Option<(CapacityType, Split)>,
    /// A note for the user when something was deliberately not added.
    pub notes: Vec<String>,
}

impl Additions {
    pub fn is_empty(&self) -> bool {
        self.node_selector.is_none()
            && self.tolerations == 0
            && self.spread_topology_key.is_none()
            && self.scheduler_name.is_none()
            && self.capacity_type.is_none()
    }

    /// One short line (WIRE.md: warnings of 120 characters or fewer).
    pub fn warning(&self, pool: &str) -> String {
        let mut parts = Vec::new();
        if let Some((k, _)) = &self.node_selector {
            parts.push(format!("nodeSelector {k}"));
        }
        if let Some((ct, split)) = &self.capacity_type {
            let preferred = if self.prefers_spot() {
                " preferred"
            } else {
                ""
            };
            parts.push(format!(
                "capacity-type {ct}{preferred} ({}+{}% spot)",
                split.on_demand_base, split.spot_percent
            ));
        }
        match self.tolerations {
            0 => {}
            1 => parts.push("1 toleration".to_owned()),
            n => parts.push(format!("{n} tolerations")),
        }
        if let Some(key) = &self.spread_topology_key {
            parts.push(format!(
                "spread on {}",
                key.rsplit('/').next().unwrap_or(key)
            ));
        }
        if let Some(name) = &self.scheduler_name {
            parts.push(format!("schedulerName {name}"));
        }
        let mut line = format!(
            "nodewright: steered to NodePool {pool}: added {}",
            parts.join(", ")
        );
        if line.len() > 120 {
            line.truncate(117);
            line.push_str("...");
        }
        line
    }

    /// The capacity type chosen is spot, preferred by node affinity (the split may fall back).
    fn prefers_spot(&self) -> bool {
        matches!(self.capacity_type, Some((CapacityType::Spot, split)) if split.spot_fallback)
    }

    /// Comma-separated field names, for the `added` audit annotation.
    pub fn fields(&self) -> String {
        let mut fields = Vec::new();
        if self.node_selector.is_some() || (self.capacity_type.is_some() && !self.prefers_spot()) {
            fields.push("nodeSelector");
        }
        if self.prefers_spot() {
            fields.push("affinity");
        }
        if self.tolerations > 0 {
            fields.push("tolerations");
        }
        if self.spread_topology_key.is_some() {
            fields.push("topologySpreadConstraints");
        }
        if self.scheduler_name.is_some() {
            fields.push("schedulerName");
        }
        fields.join(",")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Out of scope: allowed as sent.
    Skip(SkipReason),
    /// Selected by a rule, but already carries everything the pool needs.
    Unchanged { pool: String, rule: String },
    /// Selected by a rule: allowed with this patch.
    Patch {
        pool: String,
        rule: String,
        patch: Patch,
        additions: Additions,
    },
    /// Selected by a rule, but the pod asks for something the pool cannot give.
    Deny {
        pool: String,
        rule: String,
        message: String,
    },
}

/// The steering part of the config, compiled once per config load.
#[derive(Debug, Clone)]
pub struct Steering {
    node_selector_key: String,
    excluded_namespaces: BTreeSet<String>,
    rules: Vec<CompiledRule>,
}

#[derive(Debug, Clone)]
struct CompiledRule {
    name: String,
    namespaces: BTreeSet<String>,
    namespace_selector: Option<LabelSelector>,
    pod_selector: Option<LabelSelector>,
    spread: Option<SpreadSpec>,
    scheduler_name: Option<String>,
    /// The rule's spot/on-demand split, if it sets one (pod annotations may set or override it).
    split: Option<Split>,
    pool: PoolTarget,
}

/// What a pod needs to know of a NodePool to land on it.
#[derive(Debug, Clone)]
struct PoolTarget {
    name: String,
    taints: Vec<Taint>,
    requirements: Vec<Requirement>,
    labels: BTreeMap<String, String>,
}

/// What a steered pod's workload asks of its capacity types (see [`Steering::split_for`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitAsk {
    /// No split asked for, or the pod already chose its capacity type.
    None,
    /// Choose the pod's capacity type so that `workload` keeps `split`.
    Choose { workload: String, split: Split },
    /// A split is asked for but cannot apply to this pod (it has no controller): steered without.
    NotApplicable(String),
    /// The pod's split annotations are invalid, or its pool cannot hold a split: refuse it.
    Invalid(String),
}

impl Steering {
    /// Compile the Policy's rules against the NodePools they name. `own_namespace` is nodewright's
    /// namespace, never steered. Rules naming an unknown pool were rejected by config validation.
    pub fn new(config: &Config, own_namespace: Option<&str>) -> Self {
        let policy = &config.policy;
        let mut excluded_namespaces: BTreeSet<String> =
            SYSTEM_NAMESPACES.iter().map(|s| s.to_string()).collect();
        excluded_namespaces.extend(policy.excluded_namespaces.iter().cloned());
        excluded_namespaces.extend(own_namespace.map(str::to_owned));
        let rules = policy
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| {
                let pool = config.node_pools.get(&rule.node_pool)?;
                let template = &pool.spec.template;
                Some(CompiledRule {
                    name: rule.name.clone().unwrap_or_else(|| format!("rule-{i}")),
                    namespaces: rule.namespaces.iter().cloned().collect(),
                    namespace_selector: rule.namespace_selector.clone(),
                    pod_selector: rule.pod_selector.clone(),
                    spread: rule.spread.clone().or_else(|| policy.spread.clone()),
                    scheduler_name: rule
                        .scheduler_name
                        .clone()
                        .or_else(|| policy.scheduler_name.clone()),
                    split: rule.capacity_split.map(Split::from),
                    pool: PoolTarget {
                        name: rule.node_pool.clone(),
                        taints: template.spec.taints.clone(),
                        requirements: template.spec.requirements.clone(),
                        labels: template
                            .metadata
                            .as_ref()
                            .map(|m| m.labels.clone())
                            .unwrap_or_default(),
                    },
                })
            })
            .collect();
        Self {
            node_selector_key: policy.node_selector_key.clone(),
            excluded_namespaces,
            rules,
        }
    }

    /// True when some rule selects namespaces by label, so namespace labels must be looked up.
    pub fn needs_namespace_labels(&self) -> bool {
        self.rules.iter().any(|r| r.namespace_selector.is_some())
    }

    pub fn node_selector_key(&self) -> &str {
        &self.node_selector_key
    }

    /// Decide what to do with one admission request.
    pub fn decide(&self, req: &PodAdmission<'_>) -> Decision {
        if req.operation != Operation::Create {
            return Decision::Skip(SkipReason::NotCreate);
        }
        if !req.group.is_empty() || req.kind != "Pod" {
            return Decision::Skip(SkipReason::NotPod);
        }
        let Some(pod) = req.pod else {
            return Decision::Skip(SkipReason::NotPod);
        };
        let Some(spec) = pod.spec.as_ref() else {
            return Decision::Skip(SkipReason::NoSpec);
        };
        if let Some(reason) = self.out_of_scope(req.namespace, pod, spec) {
            return Decision::Skip(reason);
        }
        let empty = BTreeMap::new();
        let pod_labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        let Some(rule) = self
            .rules
            .iter()
            .find(|r| r.selects(req.namespace, req.namespace_labels, pod_labels))
        else {
            let unknown = req.namespace_labels.is_none() && self.needs_namespace_labels();
            return Decision::Skip(if unknown {
                SkipReason::NamespaceLabelsUnknown
            } else {
                SkipReason::NoRule
            });
        };
        let pool = &rule.pool;
        if let Some(message) = self.conflict(req.namespace, rule, spec) {
            return Decision::Deny {
                pool: pool.name.clone(),
                rule: rule.name.clone(),
                message,
            };
        }

        let mut ops = Vec::new();
        let mut additions = Additions::default();

        // nodeSelector: add the key into the existing map, or add the whole map when absent or null.
        let key = &self.node_selector_key;
        if !spec
            .node_selector
            .as_ref()
            .is_some_and(|m| m.contains_key(key))
        {
            ops.extend(add_entries(
                &["spec", "nodeSelector"],
                spec.node_selector.is_some(),
                vec![(key, json!(pool.name))],
            ));
        }
        if !spec
            .node_selector
            .as_ref()
            .is_some_and(|m| m.contains_key(key))
        {
            additions.node_selector = Some((key.clone(), pool.name.clone()));
        }

        // Tolerations for the pool's taints (not its startupTaints), unless one already tolerates it.
        let existing = spec.tolerations.as_deref().unwrap_or_default();
        let missing: Vec<Toleration> = pool
            .taints
            .iter()
            .filter(|taint| !existing.iter().any(|t| taint.is_tolerated_by(t)))
            .map(Taint::to_toleration)
            .collect();
        additions.tolerations = missing.len();
        append(&mut ops, "tolerations", spec.tolerations.is_some(), missing);

        // Topology spread on the rule's key, unless the pod already spreads on that key.
        if let Some(spread) = &rule.spread {
            let has_one = spec
                .topology_spread_constraints
                .iter()
                .flatten()
                .any(|c| c.topology_key == spread.topology_key);
            if !has_one {
                match spread_constraint(spread, pod_labels) {
                    Some(constraint) => {
                        additions.spread_topology_key = Some(spread.topology_key.clone());
                        append(
                            &mut ops,
                            "topologySpreadConstraints",
                            spec.topology_spread_constraints.is_some(),
                            vec![constraint],
                        );
                    }
                    None => additions.notes.push(
                        "no spread added: the pod has no labels to select its peers".to_owned(),
                    ),
                }
            }
        }

        // schedulerName: only for pods that name no scheduler of their own (the apiserver's defaulting
        // has already written `default-scheduler` by the time a mutating webhook sees the pod).
        if let Some(name) = &rule.scheduler_name {
            match spec.scheduler_name.as_deref() {
                None | Some("") | Some(DEFAULT_SCHEDULER) => {
                    ops.push(add(&["spec", "schedulerName"], json!(name)));
                    additions.scheduler_name = Some(name.clone());
                }
                Some(own) if own == name => {}
                Some(own) => additions.notes.push(format!(
                    "schedulerName {own} kept: the pod names its own scheduler, not {name}"
                )),
            }
        }

        if ops.is_empty() {
            Decision::Unchanged {
                pool: pool.name.clone(),
                rule: rule.name.clone(),
            }
        } else {
            Decision::Patch {
                pool: pool.name.clone(),
                rule: rule.name.clone(),
                patch: Patch(ops),
                additions,
            }
        }
    }

    /// The split a pod steered by `rule` (the rule [`Steering::decide`] named) asks for: the
    /// rule's, overridden by the pod's [`split::ON_DEMAND_BASE`] / [`split::SPOT_PERCENT`] /
    /// [`split::SPOT_FALLBACK`] annotations. A pod that already selects a capacity type (nodeSelector or required node
    /// affinity) is left alone.
    pub fn split_for(&self, rule: &str, pod: &PodView) -> SplitAsk {
        let Some(rule) = self.rules.iter().find(|r| r.name == rule) else {
            return SplitAsk::None;
        };
        let split = match Split::for_pod(rule.split, pod.metadata.annotations.as_ref()) {
            Ok(Some(split)) => split,
            Ok(None) => return SplitAsk::None,
            Err(message) => {
                return SplitAsk::Invalid(format!(
                    "{message}; fix the pod template's annotation (rule {})",
                    rule.name
                ));
            }
        };
        let spec = pod.spec.as_ref();
        // A pod chose already when it names a capacity type, or nodewright chose one for it (a
        // reinvocation, or a spot choice that may fall back, which names none).
        let selects = split::selected_capacity_type(spec.and_then(|s| s.node_selector.as_ref()))
            .is_some()
            || pod
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(split::CHOSEN_CAPACITY_TYPE))
            || spec
                .and_then(|s| s.affinity.as_ref())
                .and_then(|a| a.node_affinity.as_ref())
                .and_then(|n| {
                    n.required_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .is_some_and(|r| {
                    r.node_selector_terms.iter().any(|t| {
                        t.match_expressions
                            .iter()
                            .flatten()
                            .any(|e| e.key == split::CAPACITY_TYPE_KEY)
                    })
                });
        if selects {
            return SplitAsk::None;
        }
        if let Some(missing) = CapacityType::ALL
            .into_iter()
            .find(|ct| !allows_capacity_type(&rule.pool.requirements, *ct))
        {
            return SplitAsk::Invalid(format!(
                "the pod asks for a split between spot and on-demand ({split}) but NodePool {} (rule {}) \
                 does not launch {missing} nodes; remove the annotations {}, {} and {}, or ask the platform \
                 team to allow both capacity types in that NodePool",
                rule.pool.name,
                rule.name,
                split::ON_DEMAND_BASE,
                split::SPOT_PERCENT,
                split::SPOT_FALLBACK
            ));
        }
        match split::workload_of(&pod.metadata) {
            Some(workload) => SplitAsk::Choose { workload, split },
            None => SplitAsk::NotApplicable(
                "no capacity split: the pod has no controller (Deployment, StatefulSet, ...) to split"
                    .to_owned(),
            ),
        }
    }

    fn out_of_scope(
        &self,
        namespace: &str,
        pod: &PodView,
        spec: &PodSpecView,
    ) -> Option<SkipReason> {
        let meta = &pod.metadata;
        if spec.node_name.as_deref().is_some_and(|n| !n.is_empty()) {
            return Some(SkipReason::HasNodeName);
        }
        if meta
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
        {
            return Some(SkipReason::Mirror);
        }
        if meta
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "DaemonSet")
        {
            return Some(SkipReason::DaemonSet);
        }
        if self.excluded_namespaces.contains(namespace) {
            return Some(SkipReason::ExcludedNamespace);
        }
        let opted_out = |m: &Option<BTreeMap<String, String>>| {
            m.as_ref()
                .and_then(|m| m.get(SKIP_KEY))
                .is_some_and(|v| v == "true")
        };
        if opted_out(&meta.annotations) || opted_out(&meta.labels) {
            return Some(SkipReason::OptedOut);
        }
        None
    }

    /// A message when the pod already asks for a node this rule's pool cannot be.
    fn conflict(&self, namespace: &str, rule: &CompiledRule, spec: &PodSpecView) -> Option<String> {
        let pool = &rule.pool;
        let key = &self.node_selector_key;
        let steered = || {
            format!(
                "namespace {namespace} is steered to NodePool {} (rule {})",
                pool.name, rule.name
            )
        };
        for (k, v) in spec.node_selector.iter().flatten() {
            if k == key && v != &pool.name {
                return Some(format!(
                    "pod selects {k}={v} but {}; remove that nodeSelector or ask the platform team to change the nodewright Policy",
                    steered()
                ));
            }
            if let Some(own) = pool.labels.get(k).filter(|own| *own != v) {
                return Some(format!(
                    "pod selects {k}={v} but {}, whose nodes carry {k}={own}; remove that nodeSelector",
                    steered()
                ));
            }
            if let Some(req) = pool
                .requirements
                .iter()
                .find(|r| &r.key == k && !r.allows(Some(v)))
            {
                return Some(format!(
                    "pod selects {k}={v} but {}, which allows {k} {}; remove that nodeSelector",
                    steered(),
                    req.describe_allowed()
                ));
            }
        }
        // Required node affinity: terms are ORed; the pod is incompatible only if every term rejects the pool.
        let terms = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| {
                n.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|r| r.node_selector_terms.as_slice())
            .unwrap_or_default();
        let rejects =
            |e: &NodeSelectorRequirement| e.key == *key && !node_expression_allows(e, &pool.name);
        let rejecting: Vec<&NodeSelectorRequirement> = terms
            .iter()
            .filter_map(|t| t.match_expressions.iter().flatten().find(|e| rejects(e)))
            .collect();
        if !terms.is_empty() && rejecting.len() == terms.len() {
            let e = rejecting[0];
            return Some(format!(
                "pod's required node affinity needs {key} {} [{}] but {}; remove that affinity term",
                e.operator,
                e.values.as_deref().unwrap_or_default().join(", "),
                steered()
            ));
        }
        None
    }
}

impl CompiledRule {
    fn selects(
        &self,
        namespace: &str,
        namespace_labels: Option<&BTreeMap<String, String>>,
        pod_labels: &BTreeMap<String, String>,
    ) -> bool {
        let by_name = self.namespaces.contains(namespace);
        let by_labels = match (&self.namespace_selector, namespace_labels) {
            (Some(sel), Some(labels)) => selector::matches(sel, labels),
            _ => false,
        };
        let any_namespace = self.namespaces.is_empty() && self.namespace_selector.is_none();
        let namespace_ok = any_namespace || by_name || by_labels;
        namespace_ok
            && self
                .pod_selector
                .as_ref()
                .is_none_or(|sel| selector::matches(sel, pod_labels))
    }
}

/// Core `NodeSelectorRequirement` semantics for one label value that a node of the pool carries.
fn node_expression_allows(e: &NodeSelectorRequirement, value: &str) -> bool {
    let values = e.values.as_deref().unwrap_or_default();
    let int = |s: &str| s.parse::<i64>().ok();
    match e.operator.as_str() {
        "In" => values.iter().any(|v| v == value),
        "NotIn" => !values.iter().any(|v| v == value),
        "Exists" => true,
        "DoesNotExist" => false,
        "Gt" => {
            matches!((int(value), values.first().and_then(|v| int(v))), (Some(a), Some(b)) if a > b)
        }
        "Lt" => {
            matches!((int(value), values.first().and_then(|v| int(v))), (Some(a), Some(b)) if a < b)
        }
        _ => false,
    }
}

fn spread_constraint(spread: &SpreadSpec, pod_labels: &BTreeMap<String, String>) -> Option<Value> {
    let match_labels: serde_json::Map<String, Value> = pod_labels
        .iter()
        .filter(|(k, _)| {
            !REVISION_LABELS.contains(&k.as_str()) && !PER_POD_LABELS.contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    if match_labels.is_empty() {
        return None;
    }
    let mut constraint = json!({
        "maxSkew": spread.max_skew,
        "topologyKey": spread.topology_key,
        "whenUnsatisfiable": spread.when_unsatisfiable.as_str(),
        "labelSelector": {"matchLabels": match_labels},
    });
    if pod_labels.contains_key("pod-template-hash") {
        constraint["matchLabelKeys"] = json!(["pod-template-hash"]);
    }
    Some(constraint)
}

/// Audit annotations for a steered pod (the apiserver prefixes each key with the webhook name).
pub fn audit_annotations(pool: &str, rule: &str, additions: &Additions) -> HashMap<String, String> {
    let mut annotations = HashMap::from([
        ("nodepool".to_owned(), pool.to_owned()),
        ("rule".to_owned(), rule.to_owned()),
        ("added".to_owned(), additions.fields()),
    ]);
    if let Some((ct, _)) = &additions.capacity_type {
        annotations.insert("capacity-type".to_owned(), ct.as_str().to_owned());
    }
    annotations
}

#[cfg(test)]
mod tests;
