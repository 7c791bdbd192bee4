//! A watch-fed set of the cluster's DaemonSets, each as the pod its controller would stamp on a
//! new node, for the per-node overhead the planner reserves
//! ([`crate::scheduling::pools::pools_from_config`]). Only the fields that decide where a daemon
//! pod runs and what it requests are decoded.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Affinity, Container, NodeAffinity, Pod, PodSpec, ResourceRequirements, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::policy::pod::lean_meta;
use crate::scheduling::pools::add_daemon_tolerations;

/// A DaemonSet as the planner sees it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct DaemonSetView {
    #[serde(default, deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<DaemonSetSpecView>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct DaemonSetSpecView {
    #[serde(default)]
    pub template: Option<TemplateView>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct TemplateView {
    #[serde(default)]
    pub spec: Option<DaemonPodSpecView>,
}

/// The pod template fields that decide where the pod runs and what it requests.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonPodSpecView {
    #[serde(default)]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub affinity: Option<AffinityView>,
    #[serde(default)]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(default)]
    pub host_network: Option<bool>,
    #[serde(default)]
    pub containers: Option<Vec<ContainerView>>,
    #[serde(default)]
    pub init_containers: Option<Vec<ContainerView>>,
    #[serde(default)]
    pub overhead: Option<BTreeMap<String, Quantity>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AffinityView {
    #[serde(default)]
    pub node_affinity: Option<NodeAffinity>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerView {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub resources: Option<ResourceRequirements>,
    /// `Always` on an init container makes it a sidecar that runs beside the containers.
    #[serde(default)]
    pub restart_policy: Option<String>,
}

impl kube::Resource for DaemonSetView {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed("DaemonSet")
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed("apps")
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed("v1")
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed("daemonsets")
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The pod the DaemonSet controller would create on a new node (its template, with the
/// controller's tolerations), or `None` for a DaemonSet being deleted.
pub fn daemon_pod(ds: &DaemonSetView) -> Option<Pod> {
    if ds.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let template = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.spec.clone())
        .unwrap_or_default();
    let containers = |list: Option<Vec<ContainerView>>| -> Vec<Container> {
        list.into_iter()
            .flatten()
            .map(|c| Container {
                name: c.name.unwrap_or_default(),
                resources: c.resources,
                restart_policy: c.restart_policy,
                ..Container::default()
            })
            .collect()
    };
    let mut tolerations = template.tolerations.unwrap_or_default();
    add_daemon_tolerations(&mut tolerations, template.host_network == Some(true));
    Some(Pod {
        metadata: ObjectMeta {
            name: ds.metadata.name.clone(),
            namespace: ds.metadata.namespace.clone(),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: containers(template.containers),
            init_containers: Some(containers(template.init_containers)),
            node_selector: template.node_selector,
            affinity: template.affinity.map(|a| Affinity {
                node_affinity: a.node_affinity,
                ..Affinity::default()
            }),
            tolerations: Some(tolerations),
            host_network: template.host_network,
            overhead: template.overhead,
            ..PodSpec::default()
        }),
        status: None,
    })
}

/// The DaemonSets' pods by `namespace/name`, shared by the watch task and the provisioner.
#[derive(Debug, Default)]
pub struct DaemonSets {
    pods: RwLock<BTreeMap<String, Pod>>,
    synced: AtomicBool,
}

impl DaemonSets {
    /// Watch every DaemonSet until `shutdown`.
    pub fn watch(client: Client, shutdown: CancellationToken) -> Arc<Self> {
        let set = Arc::new(Self::default());
        let api: Api<DaemonSetView> = Api::all(client);
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        let task_set = set.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut relist = None;
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    event = stream.next() => event,
                };
                match event {
                    Some(Ok(event)) => task_set.handle(event, &mut relist),
                    Some(Err(e)) => tracing::warn!(error = %e, "daemonset watch error; retrying"),
                    None => return,
                }
            }
        });
        set
    }

    fn handle(
        &self,
        event: watcher::Event<DaemonSetView>,
        relist: &mut Option<BTreeMap<String, Pod>>,
    ) {
        match event {
            watcher::Event::Init => *relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(ds) => {
                if let (Some(fresh), Some(pod)) = (relist.as_mut(), daemon_pod(&ds)) {
                    fresh.insert(key(&ds), pod);
                }
            }
            watcher::Event::InitDone => {
                if let Some(fresh) = relist.take() {
                    *self.pods.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                    if !self.synced.swap(true, Ordering::SeqCst) {
                        tracing::info!("daemonset watch synced");
                    }
                }
            }
            watcher::Event::Apply(ds) => {
                let mut pods = self.pods.write().unwrap_or_else(|e| e.into_inner());
                match daemon_pod(&ds) {
                    Some(pod) => pods.insert(key(&ds), pod),
                    None => pods.remove(&key(&ds)),
                };
            }
            watcher::Event::Delete(ds) => {
                self.pods
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key(&ds));
            }
        }
    }

    /// One pod per DaemonSet, sorted by `namespace/name`.
    pub fn pods(&self) -> Vec<Pod> {
        self.pods
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// True once the first full list has been read.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }
}

fn key(ds: &DaemonSetView) -> String {
    format!(
        "{}/{}",
        ds.metadata.namespace.as_deref().unwrap_or_default(),
        ds.metadata.name.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resources::{CPU, MEMORY};
    use crate::scheduling::PendingPod;
    use crate::scheduling::pools::DAEMON_TOLERATIONS;
    use serde_json::{Value, json};

    fn ds(name: &str, template_spec: Value) -> DaemonSetView {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": name, "namespace": "kube-system", "uid": name,
                         "managedFields": [{"manager": "x"}]},
            "spec": {"selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": template_spec}},
            "status": {"desiredNumberScheduled": 3}
        }))
        .unwrap()
    }

    #[test]
    fn the_stamped_pod_keeps_what_placement_and_requests_read() {
        let view = ds(
            "agent",
            json!({
                "hostNetwork": true,
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                    {"nodeSelectorTerms": [{"matchExpressions": [{"key": "team", "operator": "Exists"}]}]}},
                    "podAntiAffinity": {}},
                "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                "initContainers": [{"name": "proxy", "image": "x", "restartPolicy": "Always",
                                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}],
                "containers": [{"name": "agent", "image": "x", "env": [{"name": "A", "value": "1"}],
                                "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}}],
                "overhead": {"cpu": "10m"},
                "volumes": [{"name": "v", "hostPath": {"path": "/"}}]
            }),
        );
        assert!(view.metadata.managed_fields.is_none());
        let pod = daemon_pod(&view).unwrap();
        let pending = PendingPod::from_pod(&pod);
        assert_eq!(pending.key, "kube-system/agent");
        // A sidecar init container runs beside the agent: 100m + 1 cpu, plus the overhead.
        assert_eq!(pending.requests.0[CPU], 100 + 1000 + 10);
        assert_eq!(pending.requests.0[MEMORY], (64 << 20) + (1 << 30));
        assert_eq!(pending.constraints.node_selector.len(), 1);
        assert_eq!(pending.constraints.node_affinity.len(), 1);
        // Its own toleration, the controller's six, and network-unavailable for the host network.
        assert_eq!(
            pending.constraints.tolerations.len(),
            1 + DAEMON_TOLERATIONS.len() + 1
        );
    }

    #[test]
    fn the_set_follows_relists_applies_and_deletes() {
        let set = DaemonSets::default();
        let mut relist = None;
        set.handle(watcher::Event::Init, &mut relist);
        set.handle(watcher::Event::InitApply(ds("a", json!({}))), &mut relist);
        set.handle(watcher::Event::InitApply(ds("b", json!({}))), &mut relist);
        assert!(set.pods().is_empty() && !set.is_synced());
        set.handle(watcher::Event::InitDone, &mut relist);
        assert!(set.is_synced());
        let names = |set: &DaemonSets| -> Vec<String> {
            set.pods()
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect()
        };
        assert_eq!(names(&set), ["a", "b"]);
        set.handle(watcher::Event::Apply(ds("c", json!({}))), &mut relist);
        set.handle(watcher::Event::Delete(ds("a", json!({}))), &mut relist);
        assert_eq!(names(&set), ["b", "c"]);
        // A DaemonSet being deleted no longer counts.
        let mut going = ds("b", json!({}));
        going.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        );
        set.handle(watcher::Event::Apply(going), &mut relist);
        assert_eq!(names(&set), ["c"]);
        // A relist replaces everything: what vanished while the watch was down is gone.
        set.handle(watcher::Event::Init, &mut relist);
        set.handle(watcher::Event::InitApply(ds("d", json!({}))), &mut relist);
        set.handle(watcher::Event::InitDone, &mut relist);
        assert_eq!(names(&set), ["d"]);
    }
}
