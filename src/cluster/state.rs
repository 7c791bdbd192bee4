//! Watches of Nodes and Pods feeding the extender's [`ClusterView`] (allocatable, requests of
//! bound pods, taints, prices) and the provisioner (pods that became unschedulable, pods that
//! were bound or went away, nodes that registered).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::model::catalog::Catalog;
use crate::model::resources::Resources;
use crate::scheduling::PendingPod;
use crate::scheduling::pod::PodTerm;
use crate::scheduling::solver::{BoundPod, ExistingNode};
use crate::scheduling::view::{ClusterView, NodeState};

/// What the watches tell the provisioner.
#[derive(Debug)]
pub enum ClusterEvent {
    /// A pod with `PodScheduled=False`, reason `Unschedulable`.
    Unschedulable(Arc<Pod>),
    /// A pod that no longer needs capacity from the provisioner (bound, deleted or finished).
    PodSettled(String),
    /// A Node was added or changed.
    NodeApplied(Arc<Node>),
    /// A Node was deleted.
    NodeDeleted(String),
    /// A message from the interruption queue; `done` is answered once it was acted on (the
    /// queue then deletes it).
    Interruption {
        message: crate::cloud::interruption::message::Message,
        done: tokio::sync::oneshot::Sender<()>,
    },
}

/// A bound pod as the node view counts it.
#[derive(Clone, Debug)]
struct BoundEntry {
    node: String,
    requests: Resources,
    namespace: String,
    labels: BTreeMap<String, String>,
    /// Its required pod anti-affinity (the planner keeps the pods it selects away).
    anti_affinity: Vec<PodTerm>,
    /// It keeps its node from being empty (not a DaemonSet or mirror pod).
    holds: bool,
    /// Annotated `karpenter.sh/do-not-disrupt: "true"`.
    do_not_disrupt: bool,
}

#[derive(Default)]
struct Inner {
    /// pod key → where it is bound.
    bound: HashMap<String, BoundEntry>,
    /// node → when a pod that holds it last arrived or left.
    last_change: HashMap<String, Instant>,
}

/// What is on a node, for the emptiness check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// Pods that keep it from being empty.
    pub pods: usize,
    /// Pods annotated do-not-disrupt.
    pub do_not_disrupt: usize,
    /// When such a pod last arrived or left (since this process watches).
    pub last_change: Option<Instant>,
}

/// The watch-fed state. Cheap to clone.
#[derive(Clone)]
pub struct ClusterState {
    view: Arc<RwLock<ClusterView>>,
    inner: Arc<Mutex<Inner>>,
    catalog: Arc<dyn Fn() -> Arc<Catalog> + Send + Sync>,
}

impl ClusterState {
    pub fn new(
        view: Arc<RwLock<ClusterView>>,
        catalog: Arc<dyn Fn() -> Arc<Catalog> + Send + Sync>,
    ) -> Self {
        Self {
            view,
            inner: Arc::default(),
            catalog,
        }
    }

    pub fn view(&self) -> &Arc<RwLock<ClusterView>> {
        &self.view
    }

    /// Start both watches; events go to `events`.
    pub fn spawn(
        &self,
        client: Client,
        events: mpsc::UnboundedSender<ClusterEvent>,
        shutdown: CancellationToken,
    ) {
        let nodes: Api<Node> = Api::all(client.clone());
        let pods: Api<Pod> = Api::all(client);
        let state = self.clone();
        let tx = events.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let stream = watcher(nodes, watcher::Config::default())
                .default_backoff()
                .take_until(stop.cancelled_owned());
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) => {
                        state.apply_node(&node);
                        let _ = tx.send(ClusterEvent::NodeApplied(Arc::new(node)));
                    }
                    Ok(watcher::Event::Delete(node)) => {
                        let name = node.metadata.name.clone().unwrap_or_default();
                        state.delete_node(&name);
                        let _ = tx.send(ClusterEvent::NodeDeleted(name));
                    }
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                    Err(e) => tracing::warn!(error = %e, "node watch error; retrying"),
                }
            }
        });
        let state = self.clone();
        tokio::spawn(async move {
            let stream = watcher(pods, watcher::Config::default())
                .default_backoff()
                .take_until(shutdown.cancelled_owned());
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                        if let Some(event) = state.apply_pod(pod) {
                            let _ = events.send(event);
                        }
                    }
                    Ok(watcher::Event::Delete(pod)) => {
                        let key = pod_key(&pod);
                        state.unbind(&key);
                        let _ = events.send(ClusterEvent::PodSettled(key));
                    }
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                    Err(e) => tracing::warn!(error = %e, "pod watch error; retrying"),
                }
            }
        });
    }

    /// Record a node (also used by tests and standalone runs).
    pub fn apply_node(&self, node: &Node) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        let catalog = (self.catalog)();
        let mut facts = node_facts(node, &catalog);
        let mut view = write(&self.view);
        let key: Arc<str> = view
            .nodes
            .get_key_value(name.as_str())
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| Arc::from(name.as_str()));
        if let Some(old) = view.nodes.get(&key) {
            facts.requested = old.requested;
            // A state nodewright set (terminating its claim) outlives node updates.
            if old.state != NodeState::Ready && facts.state == NodeState::Ready {
                facts.state = old.state;
            }
        }
        view.nodes.insert(key, facts);
    }

    pub fn delete_node(&self, name: &str) {
        lock(&self.inner).last_change.remove(name);
        write(&self.view).nodes.remove(name);
    }

    /// Mark a node as nodewright is treating it (draining, terminating).
    pub fn set_node_state(&self, name: &str, state: NodeState) {
        if let Some(n) = write(&self.view).nodes.get_mut(name) {
            n.state = state;
        }
    }

    /// Record a pod as the pod watch sees it; what to tell the provisioner (also used by tests).
    pub(crate) fn apply_pod(&self, pod: Pod) -> Option<ClusterEvent> {
        let key = pod_key(&pod);
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let finished = matches!(phase, Some("Succeeded" | "Failed"));
        let deleting = pod.metadata.deletion_timestamp.is_some();
        match node {
            Some(node) if !finished => {
                let read = PendingPod::from_pod(&pod);
                let drain = crate::scheduling::disruption::pods::classify(&pod);
                use crate::scheduling::disruption::pods::{Left, PodDrain};
                self.bind(
                    &key,
                    BoundEntry {
                        node,
                        requests: read.requests,
                        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                        labels: pod.metadata.labels.clone().unwrap_or_default(),
                        anti_affinity: read.constraints.anti_affinity,
                        holds: !matches!(
                            drain,
                            PodDrain::Left(Left::DaemonSet | Left::Mirror | Left::Finished)
                        ),
                        do_not_disrupt: drain == PodDrain::DoNotDisrupt,
                    },
                );
                Some(ClusterEvent::PodSettled(key))
            }
            _ if finished || deleting => {
                self.unbind(&key);
                Some(ClusterEvent::PodSettled(key))
            }
            // A DaemonSet pod belongs to its node; new capacity counts it as overhead instead.
            _ if is_unschedulable(&pod) && !is_daemon_pod(&pod) => {
                Some(ClusterEvent::Unschedulable(Arc::new(pod)))
            }
            _ => None,
        }
    }

    fn bind(&self, key: &str, entry: BoundEntry) {
        let mut inner = lock(&self.inner);
        let old = inner.bound.insert(key.to_owned(), entry.clone());
        if entry.holds && old.as_ref().is_none_or(|o| o.node != entry.node) {
            inner.last_change.insert(entry.node.clone(), Instant::now());
        }
        let mut view = write(&self.view);
        if let Some(old) = old
            && let Some(n) = view.nodes.get_mut(old.node.as_str())
        {
            n.requested = n.requested.saturating_sub(&old.requests);
        }
        if let Some(n) = view.nodes.get_mut(entry.node.as_str()) {
            n.requested += entry.requests;
        }
        view.release(key);
    }

    /// A pod gone (the pod watch's delete; also used by tests).
    pub(crate) fn unbind(&self, key: &str) {
        let mut inner = lock(&self.inner);
        let old = inner.bound.remove(key);
        if let Some(old) = &old
            && old.holds
        {
            inner.last_change.insert(old.node.clone(), Instant::now());
        }
        let mut view = write(&self.view);
        if let Some(old) = old
            && let Some(n) = view.nodes.get_mut(old.node.as_str())
        {
            n.requested = n.requested.saturating_sub(&old.requests);
        }
        view.release(key);
    }

    /// What is on each node that has pods or had some (for the emptiness check).
    pub fn occupancy(&self) -> HashMap<String, Occupancy> {
        let inner = lock(&self.inner);
        let mut out: HashMap<String, Occupancy> = inner
            .last_change
            .iter()
            .map(|(node, t)| {
                (
                    node.clone(),
                    Occupancy {
                        last_change: Some(*t),
                        ..Occupancy::default()
                    },
                )
            })
            .collect();
        for b in inner.bound.values().filter(|b| b.holds) {
            let o = out.entry(b.node.clone()).or_default();
            o.pods += 1;
            o.do_not_disrupt += usize::from(b.do_not_disrupt);
        }
        out
    }

    /// Is this pod bound (as far as the watch knows)?
    pub fn is_bound(&self, key: &str) -> bool {
        lock(&self.inner).bound.contains_key(key)
    }

    /// Nodes as the planner sees them: free capacity, labels, taints, the pods on them. Nodes
    /// being terminated or drained are left out.
    pub fn existing_nodes(&self) -> Vec<ExistingNode> {
        let inner = lock(&self.inner);
        let view = read(&self.view);
        let mut pods_by_node: HashMap<&str, Vec<BoundPod>> = HashMap::new();
        for b in inner.bound.values() {
            pods_by_node
                .entry(b.node.as_str())
                .or_default()
                .push(BoundPod {
                    namespace: b.namespace.clone(),
                    labels: b.labels.clone(),
                    anti_affinity: b.anti_affinity.clone(),
                });
        }
        // Pods promised a node count as on it: the planner must not put a pod beside them that
        // their anti-affinity or hostname spread would then keep them off.
        for (node, promise) in &view.promises {
            let on = pods_by_node.entry(&**node).or_default();
            on.extend(promise.pods.values().map(|p| BoundPod {
                namespace: p.namespace.clone(),
                labels: p.labels.clone(),
                anti_affinity: p.anti_affinity.clone(),
            }));
        }
        let mut nodes: Vec<ExistingNode> = view
            .nodes
            .iter()
            .filter(|(_, f)| f.state == NodeState::Ready)
            .map(|(name, f)| {
                let promised = view
                    .promises
                    .get(name)
                    .map(|p| p.total())
                    .unwrap_or_default();
                ExistingNode {
                    name: name.to_string(),
                    labels: f.labels.clone(),
                    taints: f.taints.clone(),
                    allocatable: f.allocatable,
                    requested: f.requested + promised,
                    pods: pods_by_node.remove(&**name).unwrap_or_default(),
                    in_flight: false,
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes
    }
}

/// `namespace/name`.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// `PodScheduled=False` with reason `Unschedulable`, not bound, not being deleted.
pub fn is_unschedulable(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some()
        || pod.spec.as_ref().is_some_and(|s| s.node_name.is_some())
    {
        return false;
    }
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        })
}

/// Is the pod owned by a DaemonSet?
pub fn is_daemon_pod(pod: &Pod) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet" && o.controller == Some(true))
}

pub use crate::scheduling::view::node_facts;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}
