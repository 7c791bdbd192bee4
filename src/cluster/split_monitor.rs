//! Where each workload's spot/on-demand split stands: gauges of its desired and actual pods by
//! capacity type on every replica, and, from the leader, an Event on the workload when it drifts
//! more than one pod from its split (and when it is back). When the Policy opts in
//! (`capacitySplitRestore`), the leader also evicts one surplus pod of a drifted workload at a
//! time (Eviction API: PodDisruptionBudgets hold), so that its replacement is steered right. A split drifts when pods go without
//! their controller replacing them other than by scale-down (deleted by hand, a StatefulSet's
//! scale-down of pods chosen out of order); pods that are replaced are chosen afresh by the
//! counts, and scale-down follows the pod-deletion-cost, so both keep the split.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ObjectMeta;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::events::{EventSink, Kind};
use crate::cluster::nodes::{ClusterOps, Eviction};
use crate::cluster::pods::{PodIndex, WorkloadState, unix_now};
use crate::config::Config;
use crate::metrics::split::SplitMetrics;
use crate::model::catalog::CapacityType;
use crate::policy::split::drift;

/// Passes in a row a workload must be drifted at the same size before one of its pods is
/// evicted: a workload being scaled or rolled out settles first.
const SETTLED_PASSES: u32 = 3;

/// How often the pod index is read.
pub const PERIOD: Duration = Duration::from_secs(5);

/// A change of a workload's drift worth an Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriftChange {
    /// More than one pod off its split.
    Drifted {
        namespace: String,
        workload: String,
        note: String,
    },
    /// Back within one pod.
    Restored {
        namespace: String,
        workload: String,
        note: String,
    },
}

/// One surplus pod to evict to restore a workload's split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restore {
    pub namespace: String,
    pub workload: String,
    /// The capacity type it has too many pods of.
    pub surplus: CapacityType,
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
            };
            let note = format!(
                "{} on-demand + {} spot; its split ({}) wants {} + {}",
                s.counts.on_demand, s.counts.spot, s.split, desired.on_demand, desired.spot
            );
            if drifting && !was {
                changes.push(DriftChange::Drifted {
                    namespace: s.namespace.clone(),
                    workload: s.workload.clone(),
                    note,
                });
            } else if !drifting && was {
                changes.push(DriftChange::Restored {
                    namespace: s.namespace.clone(),
                    workload: s.workload.clone(),
                    note,
                });
            }
            if let Some(interval) = restore
                && tracking.passes >= SETTLED_PASSES
                && tracking
                    .last_eviction
                    .is_none_or(|t| now.duration_since(t) >= interval)
            {
                tracking.last_eviction = Some(now);
                restores.push(Restore {
                    namespace: s.namespace.clone(),
                    workload: s.workload.clone(),
                    surplus: if off > 0 {
                        CapacityType::OnDemand
                    } else {
                        CapacityType::Spot
                    },
                    note: format!(
                        "{} on-demand + {} spot; its split ({}) wants {} + {}",
                        s.counts.on_demand, s.counts.spot, s.split, desired.on_demand, desired.spot
                    ),
                });
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
            let states = deps.pods.workload_splits(unix_now());
            let (changes, restores) =
                monitor.pass_at(&states, &deps.metrics, Instant::now(), restore);
            if !leading {
                continue;
            }
            for change in changes {
                match change {
                    DriftChange::Drifted {
                        namespace,
                        workload,
                        note,
                    } => {
                        tracing::warn!(namespace, workload, note, "capacity split drifted");
                        deps.events.workload(
                            &namespace,
                            &workload,
                            Kind::Warning,
                            "CapacitySplitDrift",
                            "Steer",
                            note,
                        );
                    }
                    DriftChange::Restored {
                        namespace,
                        workload,
                        note,
                    } => {
                        deps.events.workload(
                            &namespace,
                            &workload,
                            Kind::Normal,
                            "CapacitySplitRestored",
                            "Steer",
                            note,
                        );
                    }
                }
            }
            for r in restores {
                evict_one(&deps, &r).await;
            }
        }
    });
}

/// Evict the surplus pod that goes first (the lowest pod-deletion-cost of the surplus type).
async fn evict_one(deps: &Deps, r: &Restore) {
    let Some((name, uid)) =
        deps.pods
            .eviction_candidate(&r.namespace, &r.workload, r.surplus, unix_now())
    else {
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
                format!(
                    "evicted {} pod {name} so that its replacement restores the split: {}",
                    r.surplus, r.note
                ),
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
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::policy::split::{Counts, Split};

    fn state(workload: &str, on_demand: u32, spot: u32) -> WorkloadState {
        WorkloadState {
            namespace: "shop".into(),
            workload: workload.into(),
            split: Split {
                on_demand_base: 1,
                spot_percent: 100,
            },
            counts: Counts { on_demand, spot },
        }
    }

    #[test]
    fn drift_beyond_one_pod_is_reported_once_and_its_end_too() {
        let registry = Metrics::new();
        let metrics = SplitMetrics::new(&registry);
        let mut monitor = Monitor::default();
        // Within one pod: no event.
        assert!(
            monitor
                .pass(&[state("Deployment/web", 2, 3)], &metrics)
                .is_empty()
        );
        assert_eq!(
            metrics
                .drift
                .with_label_values(&["shop", "Deployment/web"])
                .get(),
            1
        );
        // Three on-demand where one is wanted: one event, not repeated.
        let changes = monitor.pass(&[state("Deployment/web", 3, 2)], &metrics);
        assert!(
            matches!(&changes[..], [DriftChange::Drifted { note, .. }] if note == "3 on-demand + 2 spot; its split (1 on-demand, then 100% spot) wants 1 + 4"),
            "{changes:?}"
        );
        assert!(
            monitor
                .pass(&[state("Deployment/web", 3, 3)], &metrics)
                .is_empty()
        );
        let wanted = |ct: &str, kind: &str| {
            metrics
                .pods
                .with_label_values(&["shop", "Deployment/web", ct, kind])
                .get()
        };
        assert_eq!(
            (wanted("on-demand", "actual"), wanted("spot", "actual")),
            (3, 3)
        );
        assert_eq!(
            (wanted("on-demand", "desired"), wanted("spot", "desired")),
            (1, 5)
        );
        // Back within one pod.
        let changes = monitor.pass(&[state("Deployment/web", 1, 3)], &metrics);
        assert!(
            matches!(&changes[..], [DriftChange::Restored { .. }]),
            "{changes:?}"
        );
        // A workload that is gone loses its series.
        monitor.pass(&[], &metrics);
        let text = registry.render();
        assert!(!text.contains("Deployment/web"), "{text}");
    }

    #[test]
    fn a_settled_drift_gets_one_eviction_per_interval_of_the_surplus_type() {
        let metrics = SplitMetrics::new(&Metrics::new());
        let mut monitor = Monitor::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let interval = Some(Duration::from_secs(60));
        let drifted = [state("Deployment/web", 3, 2)];
        // Not before the drift has held for three passes at one size.
        assert!(
            monitor
                .pass_at(&drifted, &metrics, at(0), interval)
                .1
                .is_empty()
        );
        assert!(
            monitor
                .pass_at(&drifted, &metrics, at(5), interval)
                .1
                .is_empty()
        );
        let (_, restores) = monitor.pass_at(&drifted, &metrics, at(10), interval);
        assert_eq!(restores.len(), 1);
        assert_eq!(restores[0].surplus, CapacityType::OnDemand);
        // One per interval.
        assert!(
            monitor
                .pass_at(&drifted, &metrics, at(15), interval)
                .1
                .is_empty()
        );
        assert_eq!(
            monitor
                .pass_at(&drifted, &metrics, at(70), interval)
                .1
                .len(),
            1
        );
        // A workload changing size starts counting again; too few on-demand evicts spot.
        let mut short = state("Deployment/web", 0, 6);
        short.split.on_demand_base = 3;
        let short = [short];
        for s in [80, 85] {
            assert!(
                monitor
                    .pass_at(&short, &metrics, at(s), interval)
                    .1
                    .is_empty()
            );
        }
        let (_, restores) = monitor.pass_at(&short, &metrics, at(140), interval);
        assert_eq!(restores[0].surplus, CapacityType::Spot);
        // Without restore (off, or not the leader) nothing is evicted.
        let mut monitor = Monitor::default();
        for s in 0..10 {
            assert!(
                monitor
                    .pass_at(&drifted, &metrics, at(s * 5), None)
                    .1
                    .is_empty()
            );
        }
    }
}
