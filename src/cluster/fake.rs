//! An in-memory [`ClusterOps`] for the node controllers' unit tests: Nodes and the pods bound to
//! them, evictions a PodDisruptionBudget may refuse, forced deletions, taints and finalizers with
//! `resourceVersion` preconditions. Its kubelet removes evicted (or deleted) pods by the next read.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;

use super::nodes::{ClusterError, ClusterOps, Eviction, TERMINATION_FINALIZER};

/// What the fake cluster holds, and what was done to it.
#[derive(Default)]
pub struct World {
    pub nodes: BTreeMap<String, Node>,
    /// Pods by name (one namespace is enough for the tests).
    pub pods: BTreeMap<String, Pod>,
    /// Pods whose eviction a PDB refuses.
    pub pdb: HashSet<String>,
    /// Evictions asked for, by pod name, in order.
    pub evictions: Vec<String>,
    /// Forced deletions: pod name and grace seconds.
    pub deletions: Vec<(String, i64)>,
    /// `pods_on` fails (the API server cannot be reached) while set.
    pub fail_pods_on: bool,
    /// VolumeAttachments: (node, persistent volume).
    pub attachments: Vec<(String, String)>,
    pub rv: u64,
}

/// A cluster whose kubelet removes evicted pods by the next read. Clones share the world.
#[derive(Default, Clone)]
pub struct FakeCluster(Arc<Mutex<World>>);

impl FakeCluster {
    pub fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Node `name` on instance `i-1`, with nodewright's finalizer.
    pub fn add_node(&self, name: &str) {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "finalizers": [TERMINATION_FINALIZER], "resourceVersion": "1"},
            "spec": {"providerID": "aws:///us-east-1a/i-1"},
        }))
        .expect("a valid Node");
        self.put_node(node);
    }

    /// A Node as given (e.g. the one a test also sends through the node watch).
    pub fn put_node(&self, node: Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        self.world().nodes.insert(name, node);
    }

    /// The Node as the cluster holds it now.
    pub fn node_now(&self, name: &str) -> Option<Node> {
        self.world().nodes.get(name).cloned()
    }

    /// A running pod `app/<name>` bound to `node`, with `extra` merged into it.
    pub fn add_pod(&self, name: &str, node: &str, extra: serde_json::Value) {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "app", "uid": format!("uid-{name}")},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": "Running"},
        });
        json_patch::merge(&mut v, &extra);
        self.world()
            .pods
            .insert(name.into(), serde_json::from_value(v).expect("a valid Pod"));
    }

    /// The pod is gone (deleted and finished).
    pub fn remove_pod(&self, name: &str) {
        self.world().pods.remove(name);
    }

    /// The node's taints as `key:effect`.
    pub fn taints(&self, node: &str) -> Vec<String> {
        self.world().nodes[node]
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|t| format!("{}:{}", t.key, t.effect))
            .collect()
    }

    /// The node's finalizers (`None` if the node is gone).
    pub fn finalizers(&self, node: &str) -> Option<Vec<String>> {
        self.world()
            .nodes
            .get(node)
            .map(|n| n.metadata.finalizers.clone().unwrap_or_default())
    }
}

fn pod_name(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

impl ClusterOps for FakeCluster {
    fn node<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Node>, ClusterError>> {
        Box::pin(async move { Ok(self.world().nodes.get(name).cloned()) })
    }
    fn pods_on<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<Pod>, ClusterError>> {
        Box::pin(async move {
            let mut w = self.world();
            if w.fail_pods_on {
                return Err(ClusterError::Api("injected: pods cannot be listed".into()));
            }
            // The kubelet finishes terminating pods.
            w.pods
                .retain(|_, p| p.metadata.deletion_timestamp.is_none());
            Ok(w.pods
                .values()
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
                .cloned()
                .collect())
        })
    }
    fn evict<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Eviction> {
        Box::pin(async move {
            let mut w = self.world();
            let name = pod_name(pod);
            w.evictions.push(name.clone());
            if w.pdb.contains(&name) {
                return Eviction::Blocked(format!(
                    "Cannot evict pod as it would violate the pod's disruption budget ({name})"
                ));
            }
            match w.pods.get_mut(&name) {
                Some(p) => {
                    p.metadata.deletion_timestamp = Some(super::nodeclaims::time_now());
                    Eviction::Evicted
                }
                None => Eviction::NotFound,
            }
        })
    }
    fn delete_pod<'a>(
        &'a self,
        pod: &'a Pod,
        grace: i64,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        Box::pin(async move {
            let mut w = self.world();
            let name = pod_name(pod);
            w.deletions.push((name.clone(), grace));
            if let Some(p) = w.pods.get_mut(&name) {
                p.metadata.deletion_timestamp = Some(super::nodeclaims::time_now());
            }
            Ok(())
        })
    }
    fn set_taints<'a>(
        &'a self,
        node: &'a Node,
        taints: Vec<k8s_openapi::api::core::v1::Taint>,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        Box::pin(async move {
            let mut w = self.world();
            w.rv += 1;
            let rv = w.rv.to_string();
            let stored = w
                .nodes
                .get_mut(node.metadata.name.as_deref().unwrap_or_default())
                .ok_or(ClusterError::NotFound)?;
            stored.spec.get_or_insert_default().taints = Some(taints);
            stored.metadata.resource_version = Some(rv);
            Ok(())
        })
    }
    fn set_finalizers<'a>(
        &'a self,
        node: &'a Node,
        finalizers: Vec<String>,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        Box::pin(async move {
            let mut w = self.world();
            let name = node.metadata.name.clone().unwrap_or_default();
            let Some(stored) = w.nodes.get_mut(&name) else {
                return Err(ClusterError::NotFound);
            };
            if stored.metadata.resource_version != node.metadata.resource_version {
                return Err(ClusterError::Conflict);
            }
            if finalizers.is_empty() && stored.metadata.deletion_timestamp.is_some() {
                w.nodes.remove(&name);
            } else {
                stored.metadata.finalizers = Some(finalizers);
            }
            Ok(())
        })
    }
    fn volume_attachments<'a>(
        &'a self,
        node: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, ClusterError>> {
        Box::pin(async move {
            Ok(self
                .world()
                .attachments
                .iter()
                .filter(|(n, _)| n == node)
                .map(|(_, pv)| pv.clone())
                .collect())
        })
    }
    fn snapshot(
        &self,
    ) -> BoxFuture<'_, Result<crate::scheduling::consolidation::snapshot::Snapshot, ClusterError>>
    {
        Box::pin(async move {
            let w = self.world();
            if w.fail_pods_on {
                return Err(ClusterError::Api("injected: pods cannot be listed".into()));
            }
            Ok(crate::scheduling::consolidation::snapshot::Snapshot {
                nodes: w.nodes.values().cloned().collect(),
                pods: w.pods.values().cloned().collect(),
                pdbs: Vec::new(),
            })
        })
    }
    fn delete_node<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), ClusterError>> {
        Box::pin(async move {
            let mut w = self.world();
            if let Some(n) = w.nodes.get_mut(name) {
                n.metadata.deletion_timestamp = Some(super::nodeclaims::time_now());
                n.metadata.resource_version = Some("deleted".into());
            }
            Ok(())
        })
    }
}
