//! The capacity split's reading of the pod index: a namespace's workloads by the capacity types
//! their pods chose (for choosing), every split workload and where it stands (for the monitor),
//! and the pod that restoring a split evicts first.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{FallbackFacts, PodIndex, SplitFacts};
use crate::model::catalog::CapacityType;
use crate::model::resources::Resources;
use crate::policy::split::{self, Counts, WorkloadWatchView};

/// One namespace's workloads at one instant, as [`WorkloadWatchView`]: counted once per batch.
pub struct WorkloadsView<'a> {
    counts: HashMap<&'a str, Counts>,
    seen: HashSet<&'a str>,
    /// Ids of pods still listed but no longer counting (past their deletion grace).
    ending: HashSet<&'a str>,
    gone: &'a HashMap<Box<str>, i64>,
}

impl WorkloadWatchView for WorkloadsView<'_> {
    fn counts(&self, workload: &str) -> Counts {
        self.counts.get(workload).copied().unwrap_or_default()
    }
    fn is_seen(&self, id: &str) -> bool {
        self.seen.contains(id)
    }
    fn is_gone(&self, id: &str) -> bool {
        self.gone.contains_key(id) || self.ending.contains(id)
    }
}

impl PodIndex {
    /// Run `f` on the workloads of `namespace` at `now`: the pods that count (as for quotas), by
    /// workload and the capacity type their nodeSelector asks for.
    pub fn with_workloads<R>(
        &self,
        namespace: &str,
        now: i64,
        f: impl FnOnce(&WorkloadsView<'_>) -> R,
    ) -> R {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let mut view = WorkloadsView {
            counts: HashMap::new(),
            seen: HashSet::new(),
            ending: HashSet::new(),
            gone: &index.gone_split_ids,
        };
        for facts in index
            .pods
            .get(namespace)
            .into_iter()
            .flat_map(HashMap::values)
        {
            let Some(split) = facts.split.as_ref() else {
                continue;
            };
            if !facts.counts(now) {
                view.ending.extend(split.id.as_deref());
                continue;
            }
            if let Some(id) = &split.id {
                view.seen.insert(id);
            }
            if let Some(ct) = split.capacity_type {
                view.counts.entry(&split.workload).or_default().add(ct);
            }
        }
        f(&view)
    }
}

/// One workload with a split, as the watch sees it now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadState {
    pub namespace: String,
    /// `Kind/name`.
    pub workload: String,
    /// The split most of its pods were steered under.
    pub split: split::Split,
    /// Its live pods by the capacity type they chose.
    pub counts: Counts,
    /// Pods that chose spot and run on on-demand nodes (the split's spot fallback).
    pub fallen_back: u32,
    /// Of those, the ones a ready spot node has room for now.
    pub movable: u32,
}

/// The nodes, as far as a pod that fell back from spot cares.
pub trait SpotNodes {
    /// The capacity type of the node, when the node is known and labelled.
    fn capacity_type(&self, node: &str) -> Option<CapacityType>;
    /// Some ready spot node holding every label of `selector` has `requests` free.
    fn spot_room(&self, selector: &BTreeMap<String, String>, requests: &Resources) -> bool;
}

impl FallbackFacts {
    /// Runs on an on-demand node.
    fn fell_back(&self, nodes: &impl SpotNodes) -> bool {
        self.node
            .as_deref()
            .is_some_and(|n| nodes.capacity_type(n) == Some(CapacityType::OnDemand))
    }
}

impl PodIndex {
    /// Every workload whose pods ask for a split, with its live pods by capacity type and those
    /// that fell back to on-demand (`nodes`: where they run), sorted.
    pub fn workload_splits(&self, now: i64, nodes: &impl SpotNodes) -> Vec<WorkloadState> {
        type Key<'a> = (&'a str, &'a str);
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let mut states: BTreeMap<Key<'_>, WorkloadState> = BTreeMap::new();
        let mut splits: BTreeMap<Key<'_>, BTreeMap<split::Split, u32>> = BTreeMap::new();
        for (namespace, pods) in &index.pods {
            for facts in pods.values().filter(|f| f.counts(now)) {
                let Some(split) = &facts.split else { continue };
                let key = (namespace.as_str(), &*split.workload);
                if let Some(s) = split.split {
                    *splits.entry(key).or_default().entry(s).or_default() += 1;
                }
                let state = states.entry(key).or_default();
                if let Some(ct) = split.capacity_type {
                    state.counts.add(ct);
                }
                if let Some(f) = split.fallback.as_deref()
                    && f.fell_back(nodes)
                {
                    state.fallen_back += 1;
                    if nodes.spot_room(&f.node_selector, &f.requests) {
                        state.movable += 1;
                    }
                }
            }
        }
        splits
            .into_iter()
            .filter_map(|((namespace, workload), seen)| {
                let (split, _) = seen.into_iter().max_by_key(|(s, n)| (*n, *s))?;
                let state = states.remove(&(namespace, workload)).unwrap_or_default();
                Some(WorkloadState {
                    namespace: namespace.to_owned(),
                    workload: workload.to_owned(),
                    split,
                    ..state
                })
            })
            .collect()
    }

    /// The pod of `workload` in `namespace` that moving back to spot evicts first: one that chose
    /// spot, runs on on-demand and a ready spot node has room for, of the lowest
    /// pod-deletion-cost; `(name, uid)`.
    pub fn fallback_candidate(
        &self,
        namespace: &str,
        workload: &str,
        now: i64,
        nodes: &impl SpotNodes,
    ) -> Option<(String, String)> {
        self.first_to_evict(namespace, workload, now, |s| {
            s.fallback.as_deref().is_some_and(|f| {
                f.fell_back(nodes) && nodes.spot_room(&f.node_selector, &f.requests)
            })
        })
    }

    /// The pod of `workload` in `namespace` that restoring its split evicts first: one of
    /// capacity type `ct` that counts, with the lowest pod-deletion-cost (the highest place in the
    /// split's order); `(name, uid)`.
    pub fn eviction_candidate(
        &self,
        namespace: &str,
        workload: &str,
        ct: CapacityType,
        now: i64,
    ) -> Option<(String, String)> {
        self.first_to_evict(namespace, workload, now, |s| s.capacity_type == Some(ct))
    }

    /// Of the pods of `workload` in `namespace` that count and are `wanted`, the one of the lowest
    /// pod-deletion-cost (ties: the highest uid); `(name, uid)`.
    fn first_to_evict(
        &self,
        namespace: &str,
        workload: &str,
        now: i64,
        wanted: impl Fn(&SplitFacts) -> bool,
    ) -> Option<(String, String)> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index
            .pods
            .get(namespace)?
            .iter()
            .filter(|(_, f)| f.counts(now))
            .filter_map(|(uid, f)| Some((uid, f.split.as_ref()?)))
            .filter(|(_, s)| &*s.workload == workload && wanted(s))
            .min_by_key(|(uid, s)| (s.deletion_cost, std::cmp::Reverse(uid.as_str())))
            .map(|(uid, s)| (s.name.to_string(), uid.clone()))
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::watcher;
    use serde_json::json;

    use super::super::WatchedPod;
    use super::*;

    /// Node name → capacity type; spot room: the spot nodes' free CPU (millicores), any labels.
    #[derive(Default)]
    struct Nodes {
        types: BTreeMap<&'static str, CapacityType>,
        spot_free_millis: i64,
    }

    impl SpotNodes for Nodes {
        fn capacity_type(&self, node: &str) -> Option<CapacityType> {
            self.types.get(node).copied()
        }
        fn spot_room(&self, selector: &BTreeMap<String, String>, requests: &Resources) -> bool {
            selector.get("karpenter.sh/nodepool").map(String::as_str) == Some("default")
                && requests.cpu_millis() <= self.spot_free_millis
        }
    }

    /// A pod chosen for spot that may fall back (no capacity type in its nodeSelector), bound to
    /// `node`, asking 500m.
    fn soft_spot(uid: &str, node: &str, cost: i32) -> WatchedPod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("web-{uid}"), "namespace": "shop", "uid": uid,
                "labels": {"pod-template-hash": "abc"},
                "annotations": {"nodewright.io/split-id": format!("id-{uid}"),
                    "nodewright.io/capacity-type": "spot", "nodewright.io/spot-fallback": "true",
                    "nodewright.io/on-demand-base": "1", "nodewright.io/spot-percent": "100",
                    "controller.kubernetes.io/pod-deletion-cost": cost.to_string()},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc",
                    "uid": "rs", "controller": true}]},
            "spec": {"nodeSelector": {"karpenter.sh/nodepool": "default"}, "nodeName": node,
                "containers": [{"name": "c", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}]},
            "status": {"phase": "Running"}
        }))
        .unwrap()
    }

    #[test]
    fn spot_pods_on_on_demand_nodes_count_as_spot_and_fell_back_and_move_when_spot_has_room() {
        let now = 1_700_000_000;
        let index = PodIndex::listed(
            [
                pod("1", "on-demand", 0, "a"),
                soft_spot("2", "od-node", -2),
                soft_spot("3", "od-node", -4),
                soft_spot("4", "spot-node", -3),
            ],
            now,
        );
        let mut nodes = Nodes {
            types: [
                ("od-node", CapacityType::OnDemand),
                ("spot-node", CapacityType::Spot),
            ]
            .into(),
            spot_free_millis: 400,
        };
        // They count by their chosen type, whatever node they run on.
        index.with_workloads("shop", now, |v| {
            assert_eq!(
                v.counts("Deployment/web"),
                Counts {
                    on_demand: 1,
                    spot: 3
                }
            );
        });
        let states = index.workload_splits(now, &nodes);
        assert!(states[0].split.spot_fallback);
        assert_eq!((states[0].fallen_back, states[0].movable), (2, 0));
        assert_eq!(
            index.fallback_candidate("shop", "Deployment/web", now, &nodes),
            None,
            "no spot room for 500m"
        );
        nodes.spot_free_millis = 500;
        let states = index.workload_splits(now, &nodes);
        assert_eq!((states[0].fallen_back, states[0].movable), (2, 2));
        // The one of the lowest deletion cost goes first, never the pod already on spot.
        assert_eq!(
            index.fallback_candidate("shop", "Deployment/web", now, &nodes),
            Some(("web-3".to_owned(), "3".to_owned()))
        );
        // A node the watch does not know is not counted as on-demand.
        nodes.types.remove("od-node");
        assert_eq!(index.workload_splits(now, &nodes)[0].fallen_back, 0);
    }

    fn pod(uid: &str, ct: &str, cost: i32, id: &str) -> WatchedPod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("web-{uid}"), "namespace": "shop", "uid": uid,
                "labels": {"pod-template-hash": "abc"},
                "annotations": {"nodewright.io/split-id": id, "nodewright.io/on-demand-base": "1",
                    "nodewright.io/spot-percent": "100",
                    "controller.kubernetes.io/pod-deletion-cost": cost.to_string()},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc",
                    "uid": "rs", "controller": true}]},
            "spec": {"nodeSelector": {"karpenter.sh/capacity-type": ct}},
            "status": {"phase": "Pending"}
        }))
        .unwrap()
    }

    #[test]
    fn workloads_count_by_chosen_capacity_type_and_name_the_pod_to_evict() {
        let now = 1_700_000_000;
        let index = PodIndex::listed(
            [
                pod("1", "on-demand", 0, "a"),
                pod("2", "on-demand", -3, "b"),
                pod("3", "spot", -1, "c"),
            ],
            now,
        );
        index.with_workloads("shop", now, |v| {
            assert_eq!(
                v.counts("Deployment/web"),
                Counts {
                    on_demand: 2,
                    spot: 1
                }
            );
            assert!(v.is_seen("a") && !v.is_gone("a"));
        });
        let states = index.workload_splits(now, &Nodes::default());
        assert_eq!(states.len(), 1);
        assert_eq!(states[0].workload, "Deployment/web");
        assert_eq!(states[0].split.on_demand_base, 1);
        // The on-demand pod of the lowest deletion cost goes first.
        assert_eq!(
            index.eviction_candidate("shop", "Deployment/web", CapacityType::OnDemand, now),
            Some(("web-2".to_owned(), "2".to_owned()))
        );
        // A deleted pod's split id is gone, so a ledger entry for it stops counting.
        index.handle(
            watcher::Event::Delete(pod("2", "on-demand", -3, "b")),
            &mut None,
            now,
        );
        index.with_workloads("shop", now, |v| {
            assert!(v.is_gone("b") && !v.is_seen("b"));
            assert_eq!(
                v.counts("Deployment/web"),
                Counts {
                    on_demand: 1,
                    spot: 1
                }
            );
        });
    }
}
