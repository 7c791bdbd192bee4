//! Metrics of the capacity split: the capacity types chosen at admission and the shared ledger.

use prometheus::{IntCounterVec, IntGaugeVec, Opts};

use super::Metrics;

/// What the capacity split counts.
#[derive(Clone)]
pub struct SplitMetrics {
    /// `capacity_type` (on-demand, spot, none), `outcome` (steered, dry_run, unchecked).
    pub choices: IntCounterVec,
    /// `event`: write, conflict, api_error.
    pub ledger: IntCounterVec,
    /// `namespace`, `workload`, `capacity_type`, `kind` (desired, actual).
    pub pods: IntGaugeVec,
    /// `namespace`, `workload`: on-demand pods minus those the split wants.
    pub drift: IntGaugeVec,
    /// `outcome`: evicted, pdb_blocked, not_found, error.
    pub evictions: IntCounterVec,
    /// `namespace`, `workload`: pods chosen for spot that run on on-demand (spot fallback).
    pub fallback: IntGaugeVec,
}

impl SplitMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        let m = Self {
            choices: IntCounterVec::new(
                Opts::new(
                    "capacity_split_choices_total",
                    "Capacity types chosen at admission for pods whose workload asks for a spot/on-demand split, by capacity type and outcome: steered, dry_run (answered, not counted), unchecked (no choice could be made: the pod was steered without a capacity type, capacity_type=\"none\").",
                ),
                &["capacity_type", "outcome"],
            )
            .expect("static metric"),
            ledger: IntCounterVec::new(
                Opts::new(
                    "capacity_split_ledger_events_total",
                    "Capacity split ledger events: write (one per decided batch that changed the ledger), conflict (another replica wrote first; re-read and decided again), api_error.",
                ),
                &["event"],
            )
            .expect("static metric"),
            pods: IntGaugeVec::new(
                Opts::new(
                    "capacity_split_pods",
                    "Pods of each workload that asks for a spot/on-demand split, by capacity type: kind=actual (its live pods, by the capacity type they chose) and kind=desired (what its split wants for that many pods), as this replica's pod watch sees them.",
                ),
                &["namespace", "workload", "capacity_type", "kind"],
            )
            .expect("static metric"),
            drift: IntGaugeVec::new(
                Opts::new(
                    "capacity_split_drift_pods",
                    "On-demand pods of a workload minus those its split wants (positive: too many on-demand, negative: too few); within one pod is kept.",
                ),
                &["namespace", "workload"],
            )
            .expect("static metric"),
            evictions: IntCounterVec::new(
                Opts::new(
                    "capacity_split_evictions_total",
                    "Pods the leader evicted to restore a drifted split or to move a pod that fell back to on-demand back to spot (capacitySplitRestore), by outcome: evicted, pdb_blocked (429, retried after the interval), not_found, error.",
                ),
                &["outcome"],
            )
            .expect("static metric"),
            fallback: IntGaugeVec::new(
                Opts::new(
                    "capacity_split_fallback_pods",
                    "Pods of a workload with spotFallback that chose spot but run on on-demand nodes, as this replica's pod and node watches see them; they count as spot in the split.",
                ),
                &["namespace", "workload"],
            )
            .expect("static metric"),
        };
        let registry = metrics.registry();
        for c in [
            Box::new(m.choices.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.ledger.clone()),
            Box::new(m.pods.clone()),
            Box::new(m.drift.clone()),
            Box::new(m.evictions.clone()),
            Box::new(m.fallback.clone()),
        ] {
            // Registering twice (two services on one registry in tests) keeps the first.
            let _ = registry.register(c);
        }
        for (ct, outcome) in [
            ("on-demand", "steered"),
            ("spot", "steered"),
            ("none", "unchecked"),
        ] {
            m.choices.with_label_values(&[ct, outcome]);
        }
        for event in ["write", "conflict", "api_error"] {
            m.ledger.with_label_values(&[event]);
        }
        m
    }
}
