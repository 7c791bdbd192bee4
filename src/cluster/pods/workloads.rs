//! The capacity split's reading of the pod index: a namespace's workloads by the capacity types
//! their pods chose (for choosing), every split workload and where it stands (for the monitor),
//! and the pod that restoring a split evicts first.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::PodIndex;
use crate::model::catalog::CapacityType;
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadState {
    pub namespace: String,
    /// `Kind/name`.
    pub workload: String,
    /// The split most of its pods were steered under.
    pub split: split::Split,
    /// Its live pods by the capacity type they chose.
    pub counts: Counts,
}

impl PodIndex {
    /// Every workload whose pods ask for a split, with its live pods by capacity type, sorted.
    pub fn workload_splits(&self, now: i64) -> Vec<WorkloadState> {
        type Key<'a> = (&'a str, &'a str);
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let mut counts: BTreeMap<Key<'_>, Counts> = BTreeMap::new();
        let mut splits: BTreeMap<Key<'_>, BTreeMap<(u32, u32), u32>> = BTreeMap::new();
        for (namespace, pods) in &index.pods {
            for facts in pods.values().filter(|f| f.counts(now)) {
                let Some(split) = &facts.split else { continue };
                let key = (namespace.as_str(), &*split.workload);
                if let Some(s) = split.split {
                    *splits
                        .entry(key)
                        .or_default()
                        .entry((s.on_demand_base, s.spot_percent))
                        .or_default() += 1;
                }
                if let Some(ct) = split.capacity_type {
                    counts.entry(key).or_default().add(ct);
                }
            }
        }
        splits
            .into_iter()
            .filter_map(|((namespace, workload), seen)| {
                let ((base, percent), _) = seen.into_iter().max_by_key(|(s, n)| (*n, *s))?;
                Some(WorkloadState {
                    namespace: namespace.to_owned(),
                    workload: workload.to_owned(),
                    split: split::Split {
                        on_demand_base: base,
                        spot_percent: percent,
                    },
                    counts: counts
                        .get(&(namespace, workload))
                        .copied()
                        .unwrap_or_default(),
                })
            })
            .collect()
    }
}

impl PodIndex {
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
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index
            .pods
            .get(namespace)?
            .iter()
            .filter(|(_, f)| f.counts(now))
            .filter_map(|(uid, f)| Some((uid, f.split.as_ref()?)))
            .filter(|(_, s)| &*s.workload == workload && s.capacity_type == Some(ct))
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
        let index = PodIndex::default();
        let mut relist = None;
        let now = 1_700_000_000;
        index.handle(watcher::Event::Init, &mut relist, now);
        for p in [
            pod("1", "on-demand", 0, "a"),
            pod("2", "on-demand", -3, "b"),
            pod("3", "spot", -1, "c"),
        ] {
            index.handle(watcher::Event::InitApply(p), &mut relist, now);
        }
        index.handle(watcher::Event::InitDone, &mut relist, now);
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
        let states = index.workload_splits(now);
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
            &mut relist,
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
