//! The consolidation [`World`] from Node, Pod and PodDisruptionBudget objects: a
//! `kubectl get nodes,pods,pdb -A -o json` dump for `nodewright consolidate --from-file`, the
//! API's lists for `--from-cluster` and for the live controller. Pure.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde::Deserialize;

use super::{BlockKind, Blocker, Candidate, World};
use crate::config::{Config, ConsolidationPolicy, DisruptionReason};
use crate::model::catalog::{CapacityType, Catalog, labels};
use crate::scheduling::disruption::allowed_disruptions;
use crate::scheduling::disruption::empty::empty_after;
use crate::scheduling::disruption::pods::{PodDrain, classify};
use crate::scheduling::pod::PendingPod;
use crate::scheduling::solver::{BoundPod, ExistingNode, Pool};
use crate::scheduling::view::{NodeState, node_facts};

/// The node and pod annotation that keeps a node (Karpenter's).
pub const DO_NOT_DISRUPT: &str = "karpenter.sh/do-not-disrupt";

/// The cluster objects consolidation reads.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub pdbs: Vec<PodDisruptionBudget>,
}

/// What else the caller knows.
#[derive(Clone, Debug)]
pub struct Context<'a> {
    pub config: &'a Config,
    pub catalog: &'a Catalog,
    pub now: jiff::Timestamp,
    /// Nodes already being disrupted (terminating, waiting for their replacements): neither
    /// candidates nor destinations, but counted by the budgets.
    pub busy: HashSet<String>,
    /// Time since pods last arrived on or left each node, where the caller knows it (the live
    /// controller's pod watch sees pods leave; a snapshot only shows the pods still there).
    pub idle: HashMap<String, Duration>,
    /// Nodes the caller leaves to others (the empty-node controller): not candidates.
    pub skip: HashSet<String>,
    /// Per pool, room to keep free for demand seen within the stabilization window
    /// ([`World::reserve`]).
    pub reserve: BTreeMap<String, crate::model::Resources>,
}

#[derive(Deserialize)]
struct AnyObject {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    items: Vec<serde_json::Value>,
}

impl Snapshot {
    /// Reads a JSON `List` (what `kubectl get nodes,pods,pdb -A -o json` prints), a single
    /// object, or several concatenated. Other kinds are skipped; objects that do not read as
    /// their kind are an error naming them.
    pub fn from_json(text: &str) -> Result<Snapshot, String> {
        let mut snap = Snapshot::default();
        let stream = serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>();
        for (i, doc) in stream.enumerate() {
            let doc = doc.map_err(|e| format!("document {}: not JSON: {e}", i + 1))?;
            snap.add(doc)?;
        }
        Ok(snap)
    }

    fn add(&mut self, value: serde_json::Value) -> Result<(), String> {
        let head: AnyObject = serde_json::from_value(value.clone())
            .map_err(|e| format!("not a Kubernetes object: {e}"))?;
        let name = || {
            let meta = value.get("metadata");
            let ns = meta
                .and_then(|m| m.get("namespace"))
                .and_then(|v| v.as_str());
            let n = meta
                .and_then(|m| m.get("name"))
                .and_then(|v| v.as_str())
                .unwrap_or("?");
            match ns {
                Some(ns) => format!("{} {ns}/{n}", head.kind),
                None => format!("{} {n}", head.kind),
            }
        };
        match head.kind.as_str() {
            "List" | "NodeList" | "PodList" | "PodDisruptionBudgetList" => {
                for item in head.items.iter().cloned() {
                    self.add(item)?;
                }
            }
            "Node" => self.nodes.push(
                serde_json::from_value(value.clone()).map_err(|e| format!("{}: {e}", name()))?,
            ),
            "Pod" => self.pods.push(
                serde_json::from_value(value.clone()).map_err(|e| format!("{}: {e}", name()))?,
            ),
            "PodDisruptionBudget" => self.pdbs.push(
                serde_json::from_value(value.clone()).map_err(|e| format!("{}: {e}", name()))?,
            ),
            _ => {}
        }
        Ok(())
    }

    /// One pod per DaemonSet, for the pools' overhead.
    pub fn daemon_pods(&self) -> Vec<Pod> {
        let mut seen = HashSet::new();
        self.pods
            .iter()
            .filter(|p| {
                p.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .find(|o| o.kind == "DaemonSet" && o.controller == Some(true))
                    .is_some_and(|o| seen.insert(o.uid.clone()))
            })
            .cloned()
            .collect()
    }
}

/// The pools as the planner sees them, with the snapshot's DaemonSets as overhead and its nodes
/// counted against the limits.
pub fn pools(config: &Config, snap: &Snapshot, catalog: &Catalog) -> Vec<Pool> {
    let mut pools = crate::scheduling::pools::pools_from_config(config, &snap.daemon_pods());
    for pool in &mut pools {
        for node in &snap.nodes {
            let l = node.metadata.labels.as_ref();
            if l.and_then(|l| l.get(labels::NODEPOOL)) == Some(&pool.name) {
                pool.in_use.add_node(&node_facts(node, catalog).allocatable);
            }
        }
    }
    pools
}

/// Builds the world consolidation decides on.
pub fn world<'a>(snap: &Snapshot, ctx: &Context<'a>, pools: &'a [Pool]) -> World<'a> {
    let mut by_node: HashMap<&str, Vec<&Pod>> = HashMap::new();
    let mut pending = Vec::new();
    for pod in &snap.pods {
        let finished = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        if finished {
            continue;
        }
        match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            Some(node) => by_node.entry(node).or_default().push(pod),
            None if pod.metadata.deletion_timestamp.is_none()
                && !matches!(classify(pod), PodDrain::Left(_)) =>
            {
                pending.push(PendingPod::from_pod(pod))
            }
            None => {}
        }
    }
    let mut nodes = Vec::new();
    let mut candidates = Vec::new();
    let mut pool_nodes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut disrupting: BTreeMap<&str, usize> = BTreeMap::new();
    for node in &snap.nodes {
        let Some(name) = node.metadata.name.as_deref() else {
            continue;
        };
        let facts = node_facts(node, ctx.catalog);
        let pool = facts.labels.get(labels::NODEPOOL).cloned();
        let busy = ctx.busy.contains(name) || facts.state != NodeState::Ready;
        if let Some(p) = pool
            .as_deref()
            .and_then(|p| ctx.config.node_pools.get_key_value(p))
        {
            *pool_nodes.entry(p.0.as_str()).or_default() += 1;
            if busy {
                *disrupting.entry(p.0.as_str()).or_default() += 1;
            }
        }
        if busy {
            continue;
        }
        let pods = by_node.get(name).map(Vec::as_slice).unwrap_or_default();
        let mut requested = crate::model::Resources::ZERO;
        let mut bound = Vec::with_capacity(pods.len());
        for pod in pods {
            let read = PendingPod::from_pod(pod);
            requested += read.requests;
            bound.push(BoundPod {
                namespace: read.constraints.namespace,
                labels: read.constraints.labels,
                anti_affinity: read.constraints.anti_affinity,
            });
        }
        nodes.push(ExistingNode {
            name: name.to_owned(),
            labels: facts.labels.clone(),
            taints: facts.taints.clone(),
            allocatable: facts.allocatable,
            requested,
            pods: bound,
            in_flight: false,
        });
        let Some(pool) = pool else {
            continue;
        };
        if ctx.skip.contains(name) {
            continue;
        }
        let Some(config_pool) = ctx.config.node_pools.get(&pool) else {
            continue;
        };
        let label = |k: &str| facts.labels.get(k).cloned().unwrap_or_default();
        let mut candidate = Candidate {
            node: name.to_owned(),
            claim: facts.claim.as_deref().map(str::to_owned),
            pool: pool.clone(),
            instance_type: label(labels::INSTANCE_TYPE),
            zone: label(labels::ZONE),
            capacity_type: facts
                .labels
                .get(labels::CAPACITY_TYPE)
                .and_then(|c| CapacityType::parse(c))
                .unwrap_or(CapacityType::OnDemand),
            price_per_hour: facts.price_per_hour.unwrap_or(0.0),
            pods: Vec::new(),
            blocked: None,
        };
        let mut blocked = blocker_of_pool(config_pool, &pool);
        if blocked.is_none() && facts.price_per_hour.is_none() {
            blocked = Some(Blocker::new(
                BlockKind::NoCheaper,
                format!(
                    "no price known for {} {} in {}",
                    candidate.instance_type,
                    candidate.capacity_type.as_str(),
                    candidate.zone
                ),
            ));
        }
        if blocked.is_none()
            && node
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DO_NOT_DISRUPT))
                .is_some_and(|v| v == "true")
        {
            blocked = Some(Blocker::new(
                BlockKind::DoNotDisrupt,
                format!("the node is annotated {DO_NOT_DISRUPT}"),
            ));
        }
        let mut pdb_use: BTreeMap<(String, String), i32> = BTreeMap::new();
        let mut newest: Option<jiff::Timestamp> = None;
        for pod in pods {
            let key = format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                pod.metadata.name.as_deref().unwrap_or("")
            );
            let drain = classify(pod);
            if drain.holds()
                && let Some(t) = pod.metadata.creation_timestamp.as_ref()
            {
                newest = Some(newest.map_or(t.0, |n| n.max(t.0)));
            }
            match drain {
                PodDrain::Left(_) | PodDrain::Terminating => continue,
                PodDrain::DoNotDisrupt => {
                    blocked.get_or_insert_with(|| {
                        Blocker::new(
                            BlockKind::DoNotDisrupt,
                            format!("pod {key} is annotated {DO_NOT_DISRUPT}"),
                        )
                    });
                    continue;
                }
                PodDrain::Evict { .. } => {}
            }
            if !pod
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true))
            {
                blocked.get_or_insert_with(|| {
                    Blocker::new(
                        BlockKind::Unowned,
                        format!("pod {key} has no controller: evicted, it would not come back"),
                    )
                });
            }
            for pdb in matching_pdbs(&snap.pdbs, pod) {
                *pdb_use.entry(pdb).or_default() += 1;
            }
            let mut moved = (*pod).clone();
            if let Some(spec) = moved.spec.as_mut() {
                spec.node_name = None;
            }
            moved.status = None;
            candidate.pods.push(PendingPod::from_pod(&moved));
        }
        for ((ns, pdb_name), used) in &pdb_use {
            let allowed = snap
                .pdbs
                .iter()
                .find(|p| {
                    p.metadata.namespace.as_deref() == Some(ns)
                        && p.metadata.name.as_deref() == Some(pdb_name)
                })
                .and_then(|p| p.status.as_ref())
                .and_then(|s| s.disruptions_allowed)
                .unwrap_or(0);
            if *used > allowed {
                blocked.get_or_insert_with(|| {
                    Blocker::new(
                        BlockKind::Pdb,
                        format!(
                            "PodDisruptionBudget {ns}/{pdb_name} allows {allowed} disruptions and the node has {used} of its pods"
                        ),
                    )
                });
            }
        }
        if blocked.is_none()
            && let Some(after) = empty_after(&config_pool.spec.disruption)
        {
            let idle = ctx.idle.get(name).copied().unwrap_or_else(|| {
                let since = |t: jiff::Timestamp| {
                    ctx.now
                        .duration_since(t)
                        .try_into()
                        .unwrap_or(Duration::ZERO)
                };
                let created = node
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| since(t.0))
                    .unwrap_or(Duration::MAX);
                newest.map(since).unwrap_or(Duration::MAX).min(created)
            });
            if idle < after {
                blocked = Some(Blocker::new(
                    BlockKind::NotYet,
                    format!(
                        "its pods changed {} ago; consolidateAfter is {}",
                        crate::config::format_go_duration(Duration::from_secs(idle.as_secs())),
                        crate::config::format_go_duration(after)
                    ),
                ));
            }
        }
        candidate.blocked = blocked;
        candidates.push(candidate);
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut budgets = BTreeMap::new();
    let mut budget_limits = BTreeMap::new();
    for (name, pool) in &ctx.config.node_pools {
        let count = pool_nodes.get(name.as_str()).copied().unwrap_or(0);
        let allowed = allowed_disruptions(
            &pool.spec.disruption.budgets,
            DisruptionReason::Underutilized,
            count,
            ctx.now,
        );
        let busy = disrupting.get(name.as_str()).copied().unwrap_or(0);
        budgets.insert(name.clone(), allowed.saturating_sub(busy));
        budget_limits.insert(name.clone(), allowed);
    }
    World {
        nodes,
        candidates,
        pending,
        pools,
        catalog: ctx.catalog,
        budgets,
        budget_limits,
        reserve: ctx.reserve.clone(),
    }
}

/// Why a pool's nodes are not consolidated at all.
fn blocker_of_pool(pool: &crate::config::NodePool, name: &str) -> Option<Blocker> {
    let d = &pool.spec.disruption;
    if d.consolidation_policy == ConsolidationPolicy::WhenEmpty {
        return Some(Blocker::new(
            BlockKind::Policy,
            format!(
                "NodePool {name} consolidates only empty nodes (consolidationPolicy WhenEmpty)"
            ),
        ));
    }
    if empty_after(d).is_none() {
        return Some(Blocker::new(
            BlockKind::Policy,
            format!("NodePool {name} has consolidateAfter: Never"),
        ));
    }
    None
}

/// The PDBs (namespace, name) whose selector matches the pod.
fn matching_pdbs(pdbs: &[PodDisruptionBudget], pod: &Pod) -> Vec<(String, String)> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let empty = BTreeMap::new();
    let pod_labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    pdbs.iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_some_and(|s| crate::policy::selector::matches(s, pod_labels))
        })
        .map(|p| (ns.to_owned(), p.metadata.name.clone().unwrap_or_default()))
        .collect()
}

/// The consolidation plan for a snapshot: what `nodewright consolidate` prints and what the live
/// controller carries out (its first round).
pub fn decide(
    snap: &Snapshot,
    ctx: &Context<'_>,
    settings: &super::Settings,
    rounds: usize,
) -> super::Report {
    let pools = pools(ctx.config, snap, ctx.catalog);
    let world = world(snap, ctx, &pools);
    super::plan(&world, settings, rounds)
}
