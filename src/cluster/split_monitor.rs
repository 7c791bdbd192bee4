//! Where each workload's spot/on-demand split stands: gauges of its desired and actual pods by
//! capacity type on every replica, and, from the leader, an Event on the workload when it drifts
//! more than one pod from its split (and when it is back). A split drifts when pods go without
//! their controller replacing them other than by scale-down (deleted by hand, a StatefulSet's
//! scale-down of pods chosen out of order); pods that are replaced are chosen afresh by the
//! counts, and scale-down follows the pod-deletion-cost, so both keep the split.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::events::{EventSink, Kind};
use crate::cluster::pods::{PodIndex, WorkloadState, unix_now};
use crate::metrics::split::SplitMetrics;
use crate::policy::split::drift;

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

/// What the monitor remembers between passes.
#[derive(Debug, Default)]
pub struct Monitor {
    /// Workloads exported last pass, and whether they were drifting.
    seen: BTreeMap<(String, String), bool>,
}

impl Monitor {
    /// Export `states` and return the drift changes since the last pass. Workloads gone since
    /// then lose their series.
    pub fn pass(&mut self, states: &[WorkloadState], metrics: &SplitMetrics) -> Vec<DriftChange> {
        let mut changes = Vec::new();
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
            let was = self.seen.get(&key).copied().unwrap_or(false);
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
            seen.insert(key, drifting);
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
        changes
    }
}

/// Run the monitor until `shutdown`: gauges on every replica, Events from the leader only.
pub fn spawn(
    pods: Arc<PodIndex>,
    metrics: SplitMetrics,
    leader: watch::Receiver<bool>,
    events: EventSink,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut monitor = Monitor::default();
        let mut tick = tokio::time::interval(PERIOD);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !pods.is_synced() {
                continue;
            }
            let states = pods.workload_splits(unix_now());
            let changes = monitor.pass(&states, &metrics);
            if !*leader.borrow() {
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
                        events.workload(
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
                        events.workload(
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
        }
    });
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
}
