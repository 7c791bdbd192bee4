//! Metrics of the node's end: disruption decisions, budgets, evictions and terminations.

use prometheus::{
    CounterVec, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

use super::Metrics;

/// What the termination and disruption controllers count.
#[derive(Clone)]
pub struct DisruptionMetrics {
    /// `node_pool`, `reason` (empty, expired), `outcome` (disrupted, budget_blocked,
    /// revalidation_failed).
    pub decisions: IntCounterVec,
    /// Disruptions the budgets allow right now, per pool and reason (capped at the pool's nodes).
    pub budget_allowed: IntGaugeVec,
    /// `outcome`: evicted, pdb_blocked, not_found, forced, error.
    pub evictions: IntCounterVec,
    /// From the start of a claim's termination to its finalizer's removal.
    pub termination_duration: Histogram,
    /// `node_pool`, `reason` (empty, expired, deleted, registration_timeout, launch_failed,
    /// instance_gone).
    pub nodes_terminated: IntCounterVec,
    /// Claims in the termination flow.
    pub draining: IntGauge,
    /// Interruption queue messages, by `kind` (spot_interruption, rebalance_recommendation,
    /// scheduled_change, state_change, noop, malformed).
    pub interruption_messages: IntCounterVec,
    /// What was done for an interrupted claim: `action` (replace_and_drain, event_only),
    /// `node_pool`.
    pub interruption_actions: IntCounterVec,
    /// From the event's time to the message acted on.
    pub interruption_latency: Histogram,
    /// Registered claims found drifted (not yet being replaced).
    pub drifted: IntGauge,
    /// Consolidation moves by `method` (delete, replace) and `outcome` (started,
    /// revalidation_failed, replacement_failed).
    pub consolidation_moves: IntCounterVec,
    /// USD per hour saved by the consolidation moves started, by `method`.
    pub consolidation_savings: CounterVec,
    /// Candidates consolidation keeps, by `reason` (the kinds of `BlockKind`), last pass.
    pub unconsolidatable: IntGaugeVec,
    /// One consolidation decision (snapshot to plan, listing excluded).
    pub consolidation_decision: Histogram,
}

impl DisruptionMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        let m = Self {
            decisions: IntCounterVec::new(
                Opts::new(
                    "disruption_decisions_total",
                    "Voluntary and expiry disruption decisions, by node pool, reason (empty, expired, drifted) and outcome (disrupted, budget_blocked, revalidation_failed).",
                ),
                &["node_pool", "reason", "outcome"],
            )
            .expect("static metric"),
            budget_allowed: IntGaugeVec::new(
                Opts::new(
                    "disruption_budget_allowed",
                    "Nodes the disruption budgets let start disrupting now, by node pool and reason (capped at the pool's node count).",
                ),
                &["node_pool", "reason"],
            )
            .expect("static metric"),
            evictions: IntCounterVec::new(
                Opts::new(
                    "evictions_total",
                    "Pod evictions by draining nodes, by outcome: evicted, pdb_blocked (429), not_found, forced (deleted past terminationGracePeriod), error.",
                ),
                &["outcome"],
            )
            .expect("static metric"),
            termination_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "termination_duration_seconds",
                    "From the start of a NodeClaim's termination (drain) to its finalizer's removal (instance gone).",
                )
                .buckets(vec![
                    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                ]),
            )
            .expect("static metric"),
            nodes_terminated: IntCounterVec::new(
                Opts::new(
                    "nodes_terminated_total",
                    "Nodes whose termination finished, by node pool and reason (empty, expired, deleted, registration_timeout, launch_failed, instance_gone).",
                ),
                &["node_pool", "reason"],
            )
            .expect("static metric"),
            draining: IntGauge::new(
                "draining_nodes",
                "NodeClaims in the termination flow (draining, terminating their instance, or waiting for it to go).",
            )
            .expect("static metric"),
            interruption_messages: IntCounterVec::new(
                Opts::new(
                    "interruption_messages_total",
                    "Interruption queue messages received, by kind: spot_interruption, rebalance_recommendation, scheduled_change, state_change, noop (other events), malformed (deleted unread).",
                ),
                &["kind"],
            )
            .expect("static metric"),
            interruption_actions: IntCounterVec::new(
                Opts::new(
                    "interruption_actions_total",
                    "Claims acted on for interruption messages, by action (replace_and_drain, event_only) and node pool.",
                ),
                &["action", "node_pool"],
            )
            .expect("static metric"),
            interruption_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "interruption_message_latency_seconds",
                    "From an interruption event's time (EventBridge) to nodewright acting on it.",
                )
                .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0]),
            )
            .expect("static metric"),
            drifted: IntGauge::new(
                "drifted_nodeclaims",
                "Registered NodeClaims whose NodePool template or EC2NodeClass changed since launch, or whose offering no longer meets the pool's requirements, not yet being replaced.",
            )
            .expect("static metric"),
            consolidation_moves: IntCounterVec::new(
                Opts::new(
                    "consolidation_moves_total",
                    "Consolidation moves of underused nodes, by method (delete, replace) and outcome: started, revalidation_failed (not found again by the confirming pass), replacement_failed (called off: the new node did not come up).",
                ),
                &["method", "outcome"],
            )
            .expect("static metric"),
            consolidation_savings: CounterVec::new(
                Opts::new(
                    "consolidation_savings_usd_per_hour_total",
                    "Sum of the hourly savings (USD per hour, before eviction costs) of the consolidation moves started, by method.",
                ),
                &["method"],
            )
            .expect("static metric"),
            unconsolidatable: IntGaugeVec::new(
                Opts::new(
                    "unconsolidatable_nodes",
                    "Nodes of consolidating pools that consolidation keeps, by reason (policy, not_yet, do_not_disrupt, pdb, unowned, busy, budget, no_cheaper, small_saving, spot_to_spot, unstable, stabilizing), at the last pass.",
                ),
                &["reason"],
            )
            .expect("static metric"),
            consolidation_decision: Histogram::with_opts(
                HistogramOpts::new(
                    "consolidation_decision_seconds",
                    "Time to decide one consolidation pass (the cluster's objects to the moves), listing excluded.",
                )
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )
            .expect("static metric"),
        };
        let registry = metrics.registry();
        for c in [
            Box::new(m.decisions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.budget_allowed.clone()),
            Box::new(m.evictions.clone()),
            Box::new(m.termination_duration.clone()),
            Box::new(m.nodes_terminated.clone()),
            Box::new(m.draining.clone()),
            Box::new(m.interruption_messages.clone()),
            Box::new(m.interruption_actions.clone()),
            Box::new(m.interruption_latency.clone()),
            Box::new(m.drifted.clone()),
            Box::new(m.consolidation_moves.clone()),
            Box::new(m.consolidation_savings.clone()),
            Box::new(m.unconsolidatable.clone()),
            Box::new(m.consolidation_decision.clone()),
        ] {
            // Registering twice (two provisioners on one registry in tests) keeps the first.
            let _ = registry.register(c);
        }
        for outcome in ["evicted", "pdb_blocked", "not_found", "forced", "error"] {
            m.evictions.with_label_values(&[outcome]);
        }
        m
    }

    /// Unregistered metrics, for unit tests.
    pub fn detached() -> Self {
        Self::new(&Metrics::new())
    }
}
