//! Where each workload's spot/on-demand split stands: gauges of its desired and actual pods by
//! capacity type on every replica, and, from the leader, an Event on the workload when it drifts
//! more than one pod from its split (and when it is back). When the Policy opts in
//! (`capacitySplitRestore`), the leader also evicts one surplus pod of a drifted workload at a
//! time (Eviction API: PodDisruptionBudgets hold), so that its replacement is steered right. A
//! split drifts when pods go without their controller replacing them other than by scale-down
//! (deleted by hand, a StatefulSet's scale-down of pods chosen out of order); pods that are
//! replaced are chosen afresh by the counts, and scale-down follows the pod-deletion-cost, so both
//! keep the split.
//!
//! A split with `spotFallback` lets its spot pods run on on-demand when spot has no room for them
//! (they prefer spot rather than require it). They still count as spot; the monitor exports how
//! many run on on-demand, puts an Event on the workload when some do and when none do any more,
//! and, with `capacitySplitRestore`, evicts one at a time once a ready spot node has room for it,
//! so that its replacement (chosen for spot again) lands there: spot has come back.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ObjectMeta;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::events::{EventSink, Kind};
use crate::cluster::nodes::{ClusterOps, Eviction};
use crate::cluster::pods::{PodIndex, SpotNodes, WorkloadState, unix_now};
use crate::config::Config;
use crate::metrics::split::SplitMetrics;
use crate::model::catalog::CapacityType;
use crate::model::labels;
use crate::model::resources::Resources;
use crate::policy::split::drift;
use crate::scheduling::view::{ClusterView, NodeState};

/// Passes in a row a workload must be drifted at the same size before one of its pods is
/// evicted: a workload being scaled or rolled out settles first.
const SETTLED_PASSES: u32 = 3;

/// How often the pod index is read.
pub const PERIOD: Duration = Duration::from_secs(5);

/// What changed for a workload, worth an Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// More than one pod off its split.
    Drifted,
    /// Back within one pod.
    Restored,
    /// Pods chosen for spot run on on-demand.
    FellBack,
    /// None does any more.
    BackOnSpot,
}

impl Change {
    /// The Event's type and reason.
    fn event(self) -> (Kind, &'static str) {
        match self {
            Self::Drifted => (Kind::Warning, "CapacitySplitDrift"),
            Self::Restored => (Kind::Normal, "CapacitySplitRestored"),
            Self::FellBack => (Kind::Warning, "CapacitySplitSpotFallback"),
            Self::BackOnSpot => (Kind::Normal, "CapacitySplitBackOnSpot"),
        }
    }
}

/// A change of a workload's split worth an Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftChange {
    pub change: Change,
    pub namespace: String,
    pub workload: String,
    pub note: String,
}

/// One surplus pod to evict to restore a workload's split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restore {
    pub namespace: String,
    pub workload: String,
    /// The capacity type it has too many pods of (on-demand for a fallback).
    pub surplus: CapacityType,
    /// A pod chosen for spot that runs on on-demand, for which spot has room now.
    pub fallback: bool,
    pub note: String,
}

/// What the monitor remembers of a workload between passes.
#[derive(Debug, Clone, Copy, Default)]
struct Tracking {
    drifting: bool,
    /// Passes in a row it has been drifting with `total` pods.
    passes: u32,
    total: u32,
    last_eviction: Option<Instant>,
    fallen_back: u32,
}

/// What the monitor remembers between passes.
#[derive(Debug, Default)]
pub struct Monitor {
    /// Workloads exported last pass.
    seen: BTreeMap<(String, String), Tracking>,
}

impl Monitor {
    /// Export `states` and return the drift changes since the last pass. Workloads gone since
    /// then lose their series.
    pub fn pass(&mut self, states: &[WorkloadState], metrics: &SplitMetrics) -> Vec<DriftChange> {
        self.pass_at(states, metrics, Instant::now(), None).0
    }

    /// [`Monitor::pass`] at `now`; with `restore` (the interval between evictions of one
    /// workload), also the evictions due: a workload drifted for [`SETTLED_PASSES`] passes at one
    /// size, and no eviction of it within the interval.
    pub fn pass_at(
        &mut self,
        states: &[WorkloadState],
        metrics: &SplitMetrics,
        now: Instant,
        restore: Option<Duration>,
    ) -> (Vec<DriftChange>, Vec<Restore>) {
        let mut changes = Vec::new();
        let mut restores = Vec::new();
        let mut seen = BTreeMap::new();
        for s in states {
            let desired = s.split.desired(s.counts.total());
            for (ct, kind, n) in [
                ("on-demand", "actual", s.counts.on_demand),
                ("spot", "actual", s.counts.spot),
                ("on-demand", "desired", desired.on_demand),
                ("spot", "desired", desired.spot),
            ] {
                metrics
                    .pods
                    .with_label_values(&[&s.namespace, &s.workload, ct, kind])
                    .set(i64::from(n));
            }
            let off = drift(s.split, s.counts);
            metrics
                .drift
                .with_label_values(&[&s.namespace, &s.workload])
                .set(off);
            let drifting = off.abs() > 1;
            let key = (s.namespace.clone(), s.workload.clone());
            let before = self.seen.get(&key).copied().unwrap_or_default();
            let was = before.drifting;
            let total = s.counts.total();
            let mut tracking = Tracking {
                drifting,
                passes: match (drifting, before.drifting && before.total == total) {
                    (false, _) => 0,
                    (true, true) => before.passes + 1,
                    (true, false) => 1,
                },
                total,
                last_eviction: before.last_eviction,
                fallen_back: s.fallen_back,
            };
            let note = format!(
                "{} on-demand + {} spot; its split ({}) wants {} + {}",
                s.counts.on_demand, s.counts.spot, s.split, desired.on_demand, desired.spot
            );
            if drifting && !was {
                changes.push(DriftChange {
                    change: Change::Drifted,
                    namespace: s.namespace.clone(),
                    workload: s.workload.clone(),
                    note,
                });
            } else if !drifting && was {
                changes.push(DriftChange {
                    change: Change::Restored,
                    namespace: s.namespace.clone(),
                    workload: s.workload.clone(),
                    note,
                });
            }
            metrics
                .fallback
                .with_label_values(&[&s.namespace, &s.workload])
                .set(i64::from(s.fallen_back));
            let fallback_note = format!(
                "{} of its {} spot pods run on on-demand nodes (spot fallback)",
                s.fallen_back, s.counts.spot
            );
            if s.fallen_back > 0 && before.fallen_back == 0 {
                changes.push(DriftChange {
                    change: Change::FellBack,
                    namespace: s.namespace.clone(),
                    workload: s.workload.clone(),
                    note: format!(
                        "{fallback_note}: no spot node had room for them when they were scheduled"
                    ),
                });
            } else if s.fallen_back == 0 && before.fallen_back > 0 {
                changes.push(DriftChange {
                    change: Change::BackOnSpot,
                    namespace: s.namespace.clone(),
                    workload: s.workload.clone(),
                    note: format!(
                        "none of its {} spot pods runs on an on-demand node any more",
                        s.counts.spot
                    ),
                });
            }
            if let Some(interval) = restore
                && tracking
                    .last_eviction
                    .is_none_or(|t| now.duration_since(t) >= interval)
            {
                let due = if tracking.passes >= SETTLED_PASSES {
                    Some(Restore {
                        namespace: s.namespace.clone(),
                        workload: s.workload.clone(),
                        surplus: if off > 0 {
                            CapacityType::OnDemand
                        } else {
                            CapacityType::Spot
                        },
                        fallback: false,
                        note: format!(
                            "{} on-demand + {} spot; its split ({}) wants {} + {}",
                            s.counts.on_demand,
                            s.counts.spot,
                            s.split,
                            desired.on_demand,
                            desired.spot
                        ),
                    })
                } else if s.movable > 0 {
                    Some(Restore {
                        namespace: s.namespace.clone(),
                        workload: s.workload.clone(),
                        surplus: CapacityType::OnDemand,
                        fallback: true,
                        note: format!("{fallback_note}, and a spot node has room"),
                    })
                } else {
                    None
                };
                if let Some(due) = due {
                    tracking.last_eviction = Some(now);
                    restores.push(due);
                }
            }
            seen.insert(key, tracking);
        }
        for (namespace, workload) in self.seen.keys().filter(|k| !seen.contains_key(*k)) {
            for ct in ["on-demand", "spot"] {
                for kind in ["actual", "desired"] {
                    let _ = metrics
                        .pods
                        .remove_label_values(&[namespace, workload, ct, kind]);
                }
            }
            let _ = metrics.drift.remove_label_values(&[namespace, workload]);
            let _ = metrics.fallback.remove_label_values(&[namespace, workload]);
        }
        self.seen = seen;
        (changes, restores)
    }
}

/// What the monitor acts through.
pub struct Deps {
    pub pods: Arc<PodIndex>,
    pub metrics: SplitMetrics,
    pub leader: watch::Receiver<bool>,
    pub events: EventSink,
    /// For `capacitySplitRestore`.
    pub config: Arc<ArcSwap<Config>>,
    /// Evictions.
    pub cluster: Arc<dyn ClusterOps>,
    /// The node watch's view: where pods that may fall back from spot run, and spot's room.
    pub nodes: Arc<RwLock<ClusterView>>,
}

/// Nodes as the node watch sees them; promised room counts as taken.
impl SpotNodes for ClusterView {
    fn capacity_type(&self, node: &str) -> Option<CapacityType> {
        self.nodes
            .get(node)?
            .labels
            .get(labels::CAPACITY_TYPE)
            .and_then(|ct| CapacityType::parse(ct))
    }

    fn spot_room(&self, selector: &BTreeMap<String, String>, requests: &Resources) -> bool {
        self.nodes.iter().any(|(name, node)| {
            node.state == NodeState::Ready
                && node.labels.get(labels::CAPACITY_TYPE).map(String::as_str)
                    == Some(CapacityType::Spot.as_str())
                && selector.iter().all(|(k, v)| node.labels.get(k) == Some(v))
                && requests.fits_in(
                    &node.free().saturating_sub(
                        &self
                            .promises
                            .get(name)
                            .map(|p| p.total())
                            .unwrap_or_default(),
                    ),
                )
        })
    }
}

/// Run the monitor until `shutdown`: gauges on every replica; Events and evictions from the
/// leader only.
pub fn spawn(deps: Deps, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut monitor = Monitor::default();
        let mut tick = tokio::time::interval(PERIOD);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !deps.pods.is_synced() {
                continue;
            }
            let leading = *deps.leader.borrow();
            let restore = {
                let config = deps.config.load();
                let r = &config.policy.capacity_split_restore;
                (leading && r.enabled).then(|| r.interval())
            };
            let states = {
                let nodes = deps.nodes.read().unwrap_or_else(PoisonError::into_inner);
                deps.pods.workload_splits(unix_now(), &*nodes)
            };
            let (changes, restores) =
                monitor.pass_at(&states, &deps.metrics, Instant::now(), restore);
            if !leading {
                continue;
            }
            for DriftChange {
                change,
                namespace,
                workload,
                note,
            } in changes
            {
                let (kind, reason) = change.event();
                match kind {
                    Kind::Warning => {
                        tracing::warn!(namespace, workload, note, reason, "capacity split")
                    }
                    Kind::Normal => {
                        tracing::info!(namespace, workload, note, reason, "capacity split")
                    }
                }
                deps.events
                    .workload(&namespace, &workload, kind, reason, "Steer", note);
            }
            for r in restores {
                evict_one(&deps, &r).await;
            }
        }
    });
}

/// Evict the surplus pod that goes first (the lowest pod-deletion-cost of the surplus type), or
/// for a fallback the first pod that fell back and has spot room.
async fn evict_one(deps: &Deps, r: &Restore) {
    let candidate = if r.fallback {
        let nodes = deps.nodes.read().unwrap_or_else(PoisonError::into_inner);
        deps.pods
            .fallback_candidate(&r.namespace, &r.workload, unix_now(), &*nodes)
    } else {
        deps.pods
            .eviction_candidate(&r.namespace, &r.workload, r.surplus, unix_now())
    };
    let Some((name, uid)) = candidate else {
        return;
    };
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(r.namespace.clone()),
            uid: Some(uid),
            ..ObjectMeta::default()
        },
        ..Pod::default()
    };
    let outcome = deps.cluster.evict(&pod).await;
    let label = match &outcome {
        Eviction::Evicted => "evicted",
        Eviction::Blocked(_) => "pdb_blocked",
        Eviction::NotFound => "not_found",
        Eviction::Failed(_) => "error",
    };
    deps.metrics.evictions.with_label_values(&[label]).inc();
    match outcome {
        Eviction::Evicted => {
            tracing::info!(
                namespace = r.namespace,
                workload = r.workload,
                pod = name,
                surplus = r.surplus.as_str(),
                "evicted a pod to restore the capacity split"
            );
            deps.events.workload(
                &r.namespace,
                &r.workload,
                Kind::Normal,
                "CapacitySplitRestoring",
                "Evict",
                if r.fallback {
                    format!(
                        "evicted pod {name}, chosen for spot and running on on-demand, so that its replacement runs on spot: {}",
                        r.note
                    )
                } else {
                    format!(
                        "evicted {} pod {name} so that its replacement restores the split: {}",
                        r.surplus, r.note
                    )
                },
            );
        }
        Eviction::Blocked(message) => {
            tracing::info!(
                namespace = r.namespace,
                workload = r.workload,
                pod = name,
                message,
                "capacity split restore blocked by a PodDisruptionBudget; retried later"
            );
        }
        Eviction::NotFound => {}
        Eviction::Failed(error) => {
            tracing::warn!(
                namespace = r.namespace,
                workload = r.workload,
                pod = name,
                error,
                "capacity split restore: eviction failed"
            );
        }
    }
}

#[cfg(test)]
mod tests;
