//! A watch-fed index of the pods that count against quotas and capacity splits, per namespace,
//! with tombstones for pods seen to go away. Only the few fields those read are decoded.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::model::catalog::CapacityType;
use crate::model::resources::Resources;
use crate::policy::pod::lean_meta;
use crate::policy::quota::{PodCountFacts, PodWatchView, pod_counts};
use crate::policy::split;

mod workloads;
pub use workloads::{SpotNodes, WorkloadState, WorkloadsView};

/// A pod as the quota and the capacity split see it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct WatchedPod {
    #[serde(default, deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<WatchedPodSpec>,
    #[serde(default)]
    pub status: Option<WatchedPodStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchedPodSpec {
    #[serde(default)]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Where it runs: a spot choice that may fall back is watched for landing on on-demand.
    #[serde(default)]
    pub node_name: Option<String>,
    /// Only their requests are read: what a spot node needs free to take such a pod back.
    #[serde(default)]
    pub containers: Vec<WatchedContainer>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct WatchedContainer {
    #[serde(default)]
    pub resources: Option<WatchedResources>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct WatchedResources {
    #[serde(default)]
    pub requests: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct WatchedPodStatus {
    #[serde(default)]
    pub phase: Option<String>,
}

crate::cluster::core_pod_resource!(WatchedPod);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Facts {
    terminal: bool,
    deletion_timestamp: Option<i64>,
    deletion_grace_seconds: Option<i64>,
    /// For pods with a controller: what the capacity split counts.
    split: Option<SplitFacts>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SplitFacts {
    /// `Kind/name` (see [`split::workload_of`]).
    workload: Box<str>,
    /// The pod's name, to evict it.
    name: Box<str>,
    /// Its `controller.kubernetes.io/pod-deletion-cost` (0 when it has none).
    deletion_cost: i32,
    /// The pod's [`split::SPLIT_ID`], when nodewright chose its capacity type.
    id: Option<Box<str>>,
    /// The capacity type it counts as (see [`split::chosen_capacity_type`]).
    capacity_type: Option<CapacityType>,
    /// The split its annotations ask for (nodewright writes the rule's on every pod it steers).
    split: Option<split::Split>,
    /// For a pod chosen for spot that does not require it: where it runs and what it needs.
    fallback: Option<Box<FallbackFacts>>,
}

/// A pod that chose spot but may run on on-demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FallbackFacts {
    /// The node it is bound to.
    pub node: Option<Box<str>>,
    /// Its nodeSelector: a spot node that takes it back must hold these labels.
    pub node_selector: BTreeMap<String, String>,
    /// Its containers' requests.
    pub requests: Resources,
}

impl FallbackFacts {
    fn of(spec: Option<&WatchedPodSpec>) -> Box<Self> {
        let mut requests = Resources::default();
        for (name, quantity) in spec
            .iter()
            .flat_map(|s| &s.containers)
            .filter_map(|c| c.resources.as_ref()?.requests.as_ref())
            .flatten()
        {
            // A quantity nodewright cannot read is left out (the node check is a hint).
            let _ = requests.add_named(name, quantity);
        }
        Box::new(Self {
            node: spec
                .and_then(|s| s.node_name.as_deref())
                .filter(|n| !n.is_empty())
                .map(Into::into),
            node_selector: spec
                .and_then(|s| s.node_selector.clone())
                .unwrap_or_default(),
            requests,
        })
    }
}

impl SplitFacts {
    fn of(pod: &WatchedPod) -> Option<Self> {
        let workload = split::workload_of(&pod.metadata)?;
        let annotations = pod.metadata.annotations.as_ref();
        let node_selector = pod.spec.as_ref().and_then(|s| s.node_selector.as_ref());
        let capacity_type = split::chosen_capacity_type(node_selector, annotations);
        let may_fall_back = capacity_type == Some(CapacityType::Spot)
            && split::selected_capacity_type(node_selector).is_none();
        Some(Self {
            workload: workload.into(),
            name: pod.metadata.name.as_deref().unwrap_or_default().into(),
            deletion_cost: annotations
                .and_then(|a| a.get(split::POD_DELETION_COST))
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
            id: pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(split::SPLIT_ID))
                .map(|id| id.as_str().into()),
            capacity_type,
            split: split::Split::for_pod(None, pod.metadata.annotations.as_ref())
                .ok()
                .flatten(),
            fallback: may_fall_back.then(|| FallbackFacts::of(pod.spec.as_ref())),
        })
    }
}

impl Facts {
    fn of(pod: &WatchedPod) -> Self {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        Self {
            terminal: matches!(phase, Some("Succeeded" | "Failed")),
            deletion_timestamp: pod
                .metadata
                .deletion_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
            deletion_grace_seconds: pod.metadata.deletion_grace_period_seconds,
            split: SplitFacts::of(pod),
        }
    }

    fn counts(&self, now: i64) -> bool {
        pod_counts(
            PodCountFacts {
                phase: self.terminal.then_some("Succeeded"),
                deletion_timestamp: self.deletion_timestamp,
                deletion_grace_seconds: self.deletion_grace_seconds,
            },
            now,
        )
    }
}

#[derive(Debug, Default)]
struct Index {
    /// namespace -> uid -> facts, for pods not yet seen gone.
    pods: HashMap<String, HashMap<String, Facts>>,
    /// uid -> unix seconds when the watch saw the pod go away (deleted or terminal).
    gone: HashMap<String, i64>,
    /// split id -> unix seconds when the watch saw the pod carrying it go away.
    gone_split_ids: HashMap<Box<str>, i64>,
}

impl Index {
    fn apply(&mut self, pod: &WatchedPod, now: i64) {
        let (Some(ns), Some(uid)) = (pod.metadata.namespace.as_ref(), pod.metadata.uid.as_ref())
        else {
            return;
        };
        let facts = Facts::of(pod);
        if facts.terminal {
            self.remove(ns, uid, now);
        } else {
            self.pods
                .entry(ns.clone())
                .or_default()
                .insert(uid.clone(), facts);
        }
    }

    fn remove(&mut self, ns: &str, uid: &str, now: i64) {
        if let Some(pods) = self.pods.get_mut(ns) {
            if let Some(id) = pods.remove(uid).and_then(|f| f.split).and_then(|s| s.id) {
                self.gone_split_ids.insert(id, now);
            }
            if pods.is_empty() {
                self.pods.remove(ns);
            }
        }
        self.gone.insert(uid.to_owned(), now);
    }
}

/// The pod index, shared by the watch task and the quota.
#[derive(Debug, Default)]
pub struct PodIndex {
    index: std::sync::RwLock<Index>,
    synced: AtomicBool,
}

/// One namespace's pods at one instant, as [`PodWatchView`].
pub struct NamespaceView<'a> {
    pods: Option<&'a HashMap<String, Facts>>,
    gone: &'a HashMap<String, i64>,
    now: i64,
}

impl PodWatchView for NamespaceView<'_> {
    fn is_counted(&self, uid: &str) -> bool {
        self.pods
            .and_then(|p| p.get(uid))
            .is_some_and(|f| f.counts(self.now))
    }
    fn is_gone(&self, uid: &str) -> bool {
        self.gone.contains_key(uid)
            || self
                .pods
                .and_then(|p| p.get(uid))
                .is_some_and(|f| !f.counts(self.now))
    }
    fn counted(&self) -> usize {
        self.pods
            .map_or(0, |p| p.values().filter(|f| f.counts(self.now)).count())
    }
}

impl PodIndex {
    /// Watch all pods until `shutdown`, keeping tombstones for `tombstone_ttl`.
    pub fn watch(
        client: Client,
        tombstone_ttl: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let index = Arc::new(Self::default());
        let api: Api<WatchedPod> = Api::all(client);
        // Terminal pods never count; the apiserver sends DELETED when a pod leaves the selection.
        let config =
            watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed");
        let stream = watcher(api, config).default_backoff();
        let task_index = index.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut relist: Option<Index> = None;
            let mut prune = tokio::time::interval(tombstone_ttl.max(Duration::from_secs(1)) / 2);
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = prune.tick() => {
                        task_index.prune(unix_now(), tombstone_ttl);
                        continue;
                    }
                    event = stream.next() => event,
                };
                match event {
                    Some(Ok(event)) => task_index.handle(event, &mut relist, unix_now()),
                    Some(Err(e)) => tracing::warn!(error = %e, "pod watch error; retrying"),
                    None => return,
                }
            }
        });
        index
    }

    fn handle(&self, event: watcher::Event<WatchedPod>, relist: &mut Option<Index>, now: i64) {
        match event {
            watcher::Event::Init => *relist = Some(Index::default()),
            watcher::Event::InitApply(pod) => {
                if let Some(fresh) = relist.as_mut() {
                    fresh.apply(&pod, now);
                }
            }
            watcher::Event::InitDone => {
                let Some(mut fresh) = relist.take() else {
                    return;
                };
                let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
                // Pods that vanished while the watch was down are gone too.
                for (ns, pods) in &index.pods {
                    for (uid, facts) in pods {
                        if !fresh.pods.get(ns).is_some_and(|p| p.contains_key(uid)) {
                            fresh.gone.insert(uid.clone(), now);
                            if let Some(id) = facts.split.as_ref().and_then(|s| s.id.clone()) {
                                fresh.gone_split_ids.insert(id, now);
                            }
                        }
                    }
                }
                fresh.gone.extend(index.gone.drain());
                fresh.gone_split_ids.extend(index.gone_split_ids.drain());
                *index = fresh;
                drop(index);
                if !self.synced.swap(true, Ordering::SeqCst) {
                    tracing::info!("pod watch synced");
                }
            }
            watcher::Event::Apply(pod) => self
                .index
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .apply(&pod, now),
            watcher::Event::Delete(pod) => {
                if let (Some(ns), Some(uid)) =
                    (pod.metadata.namespace.as_ref(), pod.metadata.uid.as_ref())
                {
                    self.index
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(ns, uid, now);
                }
            }
        }
    }

    fn prune(&self, now: i64, ttl: Duration) {
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        index.gone.retain(|_, at| now - *at <= ttl);
        index.gone_split_ids.retain(|_, at| now - *at <= ttl);
    }

    /// An index whose watch has listed `pods` at `now`.
    #[cfg(test)]
    pub(crate) fn listed(pods: impl IntoIterator<Item = WatchedPod>, now: i64) -> Self {
        let index = Self::default();
        let mut relist = None;
        index.handle(watcher::Event::Init, &mut relist, now);
        for pod in pods {
            index.handle(watcher::Event::InitApply(pod), &mut relist, now);
        }
        index.handle(watcher::Event::InitDone, &mut relist, now);
        index
    }

    /// True once the first full list has been read.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    /// Run `f` on a consistent view of `namespace` at `now`.
    pub fn with_view<R>(
        &self,
        namespace: &str,
        now: i64,
        f: impl FnOnce(&NamespaceView<'_>) -> R,
    ) -> R {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        f(&NamespaceView {
            pods: index.pods.get(namespace),
            gone: &index.gone,
            now,
        })
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(
        ns: &str,
        uid: &str,
        phase: &str,
        deletion: Option<&str>,
        grace: Option<i64>,
    ) -> WatchedPod {
        serde_json::from_value(json!({
            "metadata": {"name": uid, "namespace": ns, "uid": uid, "resourceVersion": "1",
                         "deletionTimestamp": deletion, "deletionGracePeriodSeconds": grace,
                         "managedFields": [{"manager": "x"}]},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": phase}
        }))
        .unwrap()
    }

    #[test]
    fn index_counts_live_pods_and_remembers_gone_ones() {
        let idx = PodIndex::default();
        let mut relist = None;
        let now = 1_700_000_000;
        idx.handle(watcher::Event::Init, &mut relist, now);
        idx.handle(
            watcher::Event::InitApply(pod("a", "1", "Running", None, None)),
            &mut relist,
            now,
        );
        idx.handle(
            watcher::Event::InitApply(pod("a", "2", "Pending", None, None)),
            &mut relist,
            now,
        );
        idx.handle(
            watcher::Event::InitApply(pod("b", "3", "Running", None, None)),
            &mut relist,
            now,
        );
        assert!(!idx.is_synced());
        idx.handle(watcher::Event::InitDone, &mut relist, now);
        assert!(idx.is_synced());
        idx.with_view("a", now, |v| {
            assert_eq!(v.counted(), 2);
            assert!(v.is_counted("1") && !v.is_gone("1"));
        });
        // Terminal and deleted pods are gone at once; a pod in its grace period still counts until it ends.
        idx.handle(
            watcher::Event::Apply(pod("a", "1", "Succeeded", None, None)),
            &mut relist,
            now,
        );
        idx.handle(
            watcher::Event::Apply(pod(
                "a",
                "2",
                "Running",
                Some("2023-11-14T22:13:20Z"),
                Some(30),
            )),
            &mut relist,
            now,
        );
        idx.with_view("a", now, |v| {
            assert!(v.is_gone("1") && !v.is_counted("1"));
            assert!(v.is_counted("2"));
            assert_eq!(v.counted(), 1);
        });
        idx.with_view("a", now + 31, |v| {
            assert!(v.is_gone("2") && v.counted() == 0)
        });
        idx.handle(
            watcher::Event::Delete(pod("b", "3", "Running", None, None)),
            &mut relist,
            now,
        );
        idx.with_view("b", now, |v| assert!(v.is_gone("3") && v.counted() == 0));
        // A relist that no longer has a pod marks it gone; tombstones expire.
        idx.handle(
            watcher::Event::Apply(pod("c", "4", "Running", None, None)),
            &mut relist,
            now,
        );
        idx.handle(watcher::Event::Init, &mut relist, now + 1);
        idx.handle(watcher::Event::InitDone, &mut relist, now + 1);
        idx.with_view("c", now + 1, |v| assert!(v.is_gone("4")));
        idx.prune(now + 100, Duration::from_secs(60));
        idx.with_view("c", now + 100, |v| assert!(!v.is_gone("4")));
    }
}
