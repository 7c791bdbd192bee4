//! The cluster as the node controllers change it: Nodes (taints, finalizers, deletion), the pods
//! bound to a node, evictions through the Eviction API (PodDisruptionBudgets are the API
//! server's to enforce: a 429 means "not now") and forced deletion. [`ClusterOps`] is the seam;
//! [`KubeCluster`] the Kubernetes implementation; the controllers' unit tests use a fake.
//!
//! Writes that replace a list (taints, finalizers) carry the object's `resourceVersion` as a
//! precondition, so a concurrent change makes them fail with a conflict instead of losing it;
//! the caller reads again and retries.

use crate::scheduling::consolidation::snapshot::Snapshot;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};

use crate::model::taints::Taint;

/// The finalizer nodewright puts on the NodeClaims it writes and the Nodes it launched: they go
/// only after their instance is terminated.
pub const TERMINATION_FINALIZER: &str = "nodewright.io/termination";
pub use crate::scheduling::disruption::pods::{DISRUPTED_TAINT, DO_NOT_DISRUPT};

/// What an eviction came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Eviction {
    /// The API server accepted it; the pod is terminating.
    Evicted,
    /// Refused for now (429: a PodDisruptionBudget allows no disruption); the message says which.
    Blocked(String),
    /// The pod is gone already.
    NotFound,
    /// Any other failure.
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("not found")]
    NotFound,
    #[error("conflict: the object changed; read it again")]
    Conflict,
    #[error("Kubernetes API: {0}")]
    Api(String),
}

impl From<kube::Error> for ClusterError {
    fn from(e: kube::Error) -> Self {
        match &e {
            kube::Error::Api(s) if s.code == 404 => Self::NotFound,
            kube::Error::Api(s) if s.code == 409 => Self::Conflict,
            _ => Self::Api(e.to_string()),
        }
    }
}

/// What the node controllers need from the cluster.
pub trait ClusterOps: Send + Sync {
    fn node<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Node>, ClusterError>>;
    /// Every pod bound to the node, in any phase.
    fn pods_on<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<Pod>, ClusterError>>;
    fn evict<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Eviction>;
    /// Delete the pod with this grace period (past PodDisruptionBudgets).
    fn delete_pod<'a>(
        &'a self,
        pod: &'a Pod,
        grace_seconds: i64,
    ) -> BoxFuture<'a, Result<(), ClusterError>>;
    /// Replace the node's taints (`resourceVersion` precondition).
    fn set_taints<'a>(
        &'a self,
        node: &'a Node,
        taints: Vec<k8s_openapi::api::core::v1::Taint>,
    ) -> BoxFuture<'a, Result<(), ClusterError>>;
    /// Replace the node's finalizers (`resourceVersion` precondition).
    fn set_finalizers<'a>(
        &'a self,
        node: &'a Node,
        finalizers: Vec<String>,
    ) -> BoxFuture<'a, Result<(), ClusterError>>;
    fn delete_node<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), ClusterError>>;
    /// The VolumeAttachments still naming the node (their persistent volumes' names).
    fn volume_attachments<'a>(
        &'a self,
        node: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, ClusterError>>;
    /// Nodes, unfinished pods and PodDisruptionBudgets, for consolidation.
    fn snapshot(&self) -> BoxFuture<'_, Result<Snapshot, ClusterError>>;
}

/// The node's taints with `taint` added (if missing); `None` when it is there already.
pub fn with_taint(node: &Node, taint: &Taint) -> Option<Vec<k8s_openapi::api::core::v1::Taint>> {
    let mut taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    if taints
        .iter()
        .any(|t| t.key == taint.key && t.effect == taint.effect.as_str())
    {
        return None;
    }
    taints.push(k8s_openapi::api::core::v1::Taint {
        key: taint.key.clone(),
        value: taint.value.clone(),
        effect: taint.effect.as_str().to_owned(),
        time_added: None,
    });
    Some(taints)
}

/// The node's taints without those keyed `key`; `None` when there is none.
pub fn without_taint(node: &Node, key: &str) -> Option<Vec<k8s_openapi::api::core::v1::Taint>> {
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let kept: Vec<_> = taints.iter().filter(|t| t.key != key).cloned().collect();
    (kept.len() != taints.len()).then_some(kept)
}

/// Whether the object carries the finalizer.
pub fn has_finalizer(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.finalizers
        .iter()
        .flatten()
        .any(|f| f == TERMINATION_FINALIZER)
}

/// `karpenter.sh/do-not-disrupt: "true"` on the object.
pub fn do_not_disrupt(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(DO_NOT_DISRUPT))
        .is_some_and(|v| v == "true")
}

/// The Kubernetes implementation.
#[derive(Clone)]
pub struct KubeCluster {
    client: Client,
}

impl KubeCluster {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    async fn patch_node(&self, node: &Node, patch: serde_json::Value) -> Result<(), ClusterError> {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        self.nodes()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }
}

impl ClusterOps for KubeCluster {
    fn node<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Node>, ClusterError>> {
        Box::pin(async move { Ok(self.nodes().get_opt(name).await?) })
    }

    fn pods_on<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<Pod>, ClusterError>> {
        Box::pin(async move {
            let api: Api<Pod> = Api::all(self.client.clone());
            let params = ListParams::default().fields(&format!("spec.nodeName={node}"));
            Ok(api.list(&params).await?.items)
        })
    }

    fn evict<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Eviction> {
        Box::pin(async move {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            let mut params = EvictParams::default();
            // Only this incarnation of the pod: a pod recreated under the same name (a
            // StatefulSet's) is not evicted by mistake.
            if let Some(uid) = &pod.metadata.uid {
                params.delete_options = Some(DeleteParams {
                    preconditions: Some(kube::api::Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                });
            }
            match self.pods(namespace).evict(name, &params).await {
                Ok(_) => Eviction::Evicted,
                Err(kube::Error::Api(s)) if s.code == 429 => Eviction::Blocked(s.message),
                Err(kube::Error::Api(s)) if s.code == 404 => Eviction::NotFound,
                // A UID precondition that fails: the pod we meant is gone.
                Err(kube::Error::Api(s)) if s.code == 409 => Eviction::NotFound,
                Err(e) => Eviction::Failed(e.to_string()),
            }
        })
    }

    fn delete_pod<'a>(
        &'a self,
        pod: &'a Pod,
        grace_seconds: i64,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        Box::pin(async move {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            let params = DeleteParams {
                grace_period_seconds: Some(u32::try_from(grace_seconds.max(0)).unwrap_or(0)),
                preconditions: pod
                    .metadata
                    .uid
                    .as_ref()
                    .map(|uid| kube::api::Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                ..DeleteParams::default()
            };
            match self.pods(namespace).delete(name, &params).await {
                Ok(_) => Ok(()),
                Err(e) => match ClusterError::from(e) {
                    ClusterError::NotFound | ClusterError::Conflict => Ok(()),
                    other => Err(other),
                },
            }
        })
    }

    fn set_taints<'a>(
        &'a self,
        node: &'a Node,
        taints: Vec<k8s_openapi::api::core::v1::Taint>,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        Box::pin(async move {
            let patch = serde_json::json!({
                "metadata": { "resourceVersion": node.metadata.resource_version },
                "spec": { "taints": taints },
            });
            self.patch_node(node, patch).await
        })
    }

    fn set_finalizers<'a>(
        &'a self,
        node: &'a Node,
        finalizers: Vec<String>,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        Box::pin(async move {
            let patch = serde_json::json!({
                "metadata": {
                    "resourceVersion": node.metadata.resource_version,
                    "finalizers": finalizers,
                },
            });
            self.patch_node(node, patch).await
        })
    }

    fn volume_attachments<'a>(
        &'a self,
        node: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, ClusterError>> {
        Box::pin(async move {
            // VolumeAttachments have no field selector on the node: list and filter.
            let api: Api<k8s_openapi::api::storage::v1::VolumeAttachment> =
                Api::all(self.client.clone());
            Ok(api
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|va| va.spec.node_name == node)
                .map(|va| {
                    va.spec
                        .source
                        .persistent_volume_name
                        .or(va.metadata.name)
                        .unwrap_or_default()
                })
                .collect())
        })
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<Snapshot, ClusterError>> {
        Box::pin(async move { Ok(super::snapshot::list(&self.client).await?) })
    }

    fn delete_node<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), ClusterError>> {
        Box::pin(async move {
            match self.nodes().delete(name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(e) => match ClusterError::from(e) {
                    ClusterError::NotFound => Ok(()),
                    other => Err(other),
                },
            }
        })
    }
}

/// No cluster (standalone runs): no nodes, no pods, nothing to change.
pub struct NoCluster;

impl ClusterOps for NoCluster {
    fn node<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<Node>, ClusterError>> {
        Box::pin(async { Ok(None) })
    }
    fn pods_on<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Vec<Pod>, ClusterError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn evict<'a>(&'a self, _: &'a Pod) -> BoxFuture<'a, Eviction> {
        Box::pin(async { Eviction::NotFound })
    }
    fn delete_pod<'a>(&'a self, _: &'a Pod, _: i64) -> BoxFuture<'a, Result<(), ClusterError>> {
        Box::pin(async { Ok(()) })
    }
    fn set_taints<'a>(
        &'a self,
        _: &'a Node,
        _: Vec<k8s_openapi::api::core::v1::Taint>,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        Box::pin(async { Ok(()) })
    }
    fn set_finalizers<'a>(
        &'a self,
        _: &'a Node,
        _: Vec<String>,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        Box::pin(async { Ok(()) })
    }
    fn delete_node<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), ClusterError>> {
        Box::pin(async { Ok(()) })
    }
    fn volume_attachments<'a>(
        &'a self,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, ClusterError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn snapshot(&self) -> BoxFuture<'_, Result<Snapshot, ClusterError>> {
        Box::pin(async { Ok(Snapshot::default()) })
    }
}
