//! Consolidation of underused nodes (pools with `WhenEmptyOrUnderutilized` or `Balanced`), the
//! live side of [`crate::scheduling::consolidation`]: every [`PASS_EVERY`] the leader lists
//! nodes, pods and PodDisruptionBudgets, and decides as `nodewright consolidate` does (first
//! round only: what the budgets allow now). A decision is carried out only if the next pass, at
//! least [`VALIDATE_AFTER`] later, decides the same move again (Karpenter waits 15 s the same
//! way), so a pod arriving meanwhile cancels it. A delete starts the termination flow at once; a
//! replace launches the new node first and drains the old ones once it registered
//! ([`Run::await_replacements`]). Nodes that stay get an `Unconsolidatable` Event saying why,
//! once per reason.

use tokio::time::Instant as TokioInstant;

use super::*;
use crate::config::ConsolidationPolicy;
use crate::scheduling::consolidation::snapshot::{self, Context};
use crate::scheduling::consolidation::{BlockKind, Method, Move, Settings};

/// How often consolidation looks (each look lists nodes, pods and PodDisruptionBudgets).
pub(super) const PASS_EVERY: Duration = Duration::from_secs(15);
/// How long a decision waits to be confirmed by a second pass.
pub(super) const VALIDATE_AFTER: Duration = Duration::from_secs(10);
/// How often a node that stays for the same reason says so again.
const UNCONSOLIDATABLE_EVERY: Duration = Duration::from_secs(1800);
/// Condition on a claim removed for being underused, and the disruption reason.
pub(super) const UNDERUTILIZED: &str = "Underutilized";

/// What consolidation remembers between passes.
#[derive(Default)]
pub(super) struct Consolidation {
    /// Tokio's clock, so that tests can run passes on a paused clock.
    last_pass: Option<TokioInstant>,
    /// Moves decided and waiting for confirmation: their keys, since when.
    pending: Option<(TokioInstant, Vec<String>)>,
    /// Per claim: the last `Unconsolidatable` reason said, and when.
    said: HashMap<String, (String, TokioInstant)>,
    /// What each pool's pods asked for at each pass within the stabilization window.
    demand: std::collections::VecDeque<(TokioInstant, BTreeMap<String, Resources>)>,
}

impl Consolidation {
    /// Records the pools' demand now and returns, per pool, how much more it was at its peak
    /// within `window` (CPU and memory).
    fn reserve(
        &mut self,
        now: TokioInstant,
        demand: BTreeMap<String, Resources>,
        window: Duration,
    ) -> BTreeMap<String, Resources> {
        use crate::model::resources::{CPU, MEMORY};
        while self
            .demand
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > window)
        {
            self.demand.pop_front();
        }
        let mut reserve = BTreeMap::new();
        for (pool, current) in &demand {
            let mut peak = *current;
            for (_, past) in &self.demand {
                if let Some(p) = past.get(pool) {
                    for d in [CPU, MEMORY] {
                        peak.0[d] = peak.0[d].max(p.0[d]);
                    }
                }
            }
            reserve.insert(pool.clone(), peak.saturating_sub(current));
        }
        self.demand.push_back((now, demand));
        reserve
    }
}

/// A move's identity across passes: method and nodes.
fn key(m: &Move) -> String {
    let mut nodes: Vec<&str> = m.nodes.iter().map(|n| n.node.as_str()).collect();
    nodes.sort_unstable();
    format!("{}:{}", m.method.as_str(), nodes.join(","))
}

impl Run {
    /// One consolidation pass (leader only), if one is due.
    pub(super) async fn consolidate(&mut self, config: &Config) {
        let now = TokioInstant::now();
        let due = match &self.consolidation.pending {
            // A decision waits for its confirming pass.
            Some((since, _)) => now.duration_since(*since) >= VALIDATE_AFTER,
            None => self
                .consolidation
                .last_pass
                .is_none_or(|t| now.duration_since(t) >= PASS_EVERY),
        };
        if !due || !consolidates(config) || cluster_info(config).is_none() {
            return;
        }
        // One move at a time: none while a replacement (for consolidation, expiry, drift or an
        // interruption) is still coming up, recorded on its origin or not yet (a leader that
        // died between writing the replacement and recording it).
        let coming_up = |c: &NodeClaim| {
            c.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(super::replacement::REPLACES))
                && !matches!(
                    c.phase(),
                    Phase::Registered | Phase::Failed | Phase::Terminating
                )
        };
        if self.claims.values().any(|c| {
            coming_up(c)
                || c.status.as_ref().is_some_and(|s| {
                    !s.replacements.is_empty()
                        && s.disruption_reason.as_deref() == Some(UNDERUTILIZED)
                })
        }) {
            return;
        }
        self.consolidation.last_pass = Some(now);
        let mut snap = match self.p.nodes.snapshot().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "listing nodes, pods and PodDisruptionBudgets for consolidation failed; next pass");
                return;
            }
        };
        // Which claim each node is (the label is on nodes nodewright launched; older nodes are
        // matched by name).
        let by_node: HashMap<&str, &str> = self
            .claims
            .values()
            .filter_map(|c| Some((c.status.as_ref()?.node_name.as_deref()?, c.name())))
            .collect();
        for node in &mut snap.nodes {
            if let Some(claim) = node.metadata.name.as_deref().and_then(|n| by_node.get(n)) {
                node.metadata
                    .labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert(CLAIM_TAG.to_owned(), (*claim).to_owned());
            }
        }
        let started = Instant::now();
        let mut catalog = (*(self.p.catalog)()).clone();
        if let Some(cloud) = &self.p.cloud {
            for (it, zone, ct) in cloud.unavailable() {
                catalog.set_available(&it, &zone, ct, false);
            }
        }
        let mut ctx = self.consolidation_context(config, &catalog);
        let mut demand: BTreeMap<String, Resources> = BTreeMap::new();
        for n in self.p.state.existing_nodes() {
            if let Some(pool) = n.labels.get(crate::model::labels::NODEPOOL) {
                *demand.entry(pool.clone()).or_default() += n.requested;
            }
        }
        ctx.reserve = self.consolidation.reserve(
            now,
            demand,
            config.policy.consolidation.stabilization_window(),
        );
        let pools = snapshot::pools(config, &snap, &catalog);
        let world = snapshot::world(&snap, &ctx, &pools);
        let settings = Settings::from_spec(&config.policy.consolidation);
        let report = crate::scheduling::consolidation::plan(&world, &settings, 1);
        let m = &self.terminator.metrics;
        m.consolidation_decision
            .observe(started.elapsed().as_secs_f64());
        for kind in BlockKind::ALL {
            let n = report.kept.iter().filter(|k| k.kind == *kind).count();
            m.unconsolidatable
                .with_label_values(&[kind.as_str()])
                .set(n as i64);
        }
        self.say_unconsolidatable(&report.kept);
        let keys: Vec<String> = report.moves.iter().map(key).collect();
        let confirmed: Vec<&Move> = match self.consolidation.pending.take() {
            Some((since, pending)) if now.duration_since(since) >= VALIDATE_AFTER => {
                for gone in pending.iter().filter(|k| !keys.contains(k)) {
                    let method = gone.split(':').next().unwrap_or_default();
                    tracing::info!(decision = %gone, "consolidation: the move no longer holds; not taken");
                    self.terminator
                        .metrics
                        .consolidation_moves
                        .with_label_values(&[method, "revalidation_failed"])
                        .inc();
                }
                report
                    .moves
                    .iter()
                    .filter(|m| pending.contains(&key(m)))
                    .collect()
            }
            Some(p) => {
                // Too early to confirm: keep waiting.
                self.consolidation.pending = Some(p);
                return;
            }
            None => Vec::new(),
        };
        if confirmed.is_empty() {
            if !keys.is_empty() {
                tracing::info!(moves = ?keys, "consolidation: moves found; confirming them in {}s", VALIDATE_AFTER.as_secs());
                self.consolidation.pending = Some((now, keys));
            }
            return;
        }
        let confirmed: Vec<Move> = confirmed.into_iter().cloned().collect();
        for mv in confirmed {
            self.carry_out(mv, config, &pools, &catalog).await;
        }
    }

    fn consolidation_context<'a>(&self, config: &'a Config, catalog: &'a Catalog) -> Context<'a> {
        let now = Instant::now();
        let occupancy = self.p.state.occupancy();
        let mut busy = HashSet::new();
        let mut skip = HashSet::new();
        let mut idle = HashMap::new();
        let ours: HashSet<String> = self
            .claims
            .values()
            .filter_map(|c| c.status.as_ref()?.node_name.clone())
            .collect();
        for c in self.claims.values() {
            let Some(node) = c.status.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            let replacing = c
                .status
                .as_ref()
                .is_some_and(|s| !s.replacements.is_empty());
            if c.phase() != Phase::Registered
                || replacing
                || c.metadata.deletion_timestamp.is_some()
            {
                busy.insert(node.clone());
            }
            if self.is_fresh_replacement(c) || !self.startup.is_initialized(&node) {
                skip.insert(node.clone());
            }
            let o = occupancy.get(&node).copied().unwrap_or_default();
            // Empty nodes are the empty-node controller's.
            if o.pods == 0 {
                skip.insert(node.clone());
            }
            if let Some(t) = o.last_change {
                idle.insert(node, now.duration_since(t).min(c.age()));
            }
        }
        // Nodes nodewright did not launch are destinations only.
        for n in self.nodes_by_instance.values() {
            if let Some(name) = &n.metadata.name
                && !ours.contains(name)
            {
                skip.insert(name.clone());
            }
        }
        {
            let view = self
                .p
                .state
                .view()
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (node, p) in &view.promises {
                if !p.pods.is_empty() {
                    skip.insert(node.to_string());
                }
            }
        }
        Context {
            config,
            catalog,
            now: crate::cluster::nodeclaims::now(),
            busy,
            idle,
            skip,
            reserve: Default::default(),
        }
    }

    /// A confirmed move: delete now, or launch the replacement and drain once it is up.
    async fn carry_out(&mut self, mv: Move, config: &Config, pools: &[Pool], catalog: &Catalog) {
        let claims: Vec<NodeClaim> = mv
            .nodes
            .iter()
            .filter_map(|n| self.claims.get(n.claim.as_deref()?).cloned())
            .collect();
        if claims.len() != mv.nodes.len() {
            return;
        }
        let m = &self.terminator.metrics;
        let method = mv.method.as_str();
        m.consolidation_moves
            .with_label_values(&[method, "started"])
            .inc();
        m.consolidation_savings
            .with_label_values(&[method])
            .inc_by(mv.saving_per_hour.max(0.0));
        for claim in &claims {
            m.decisions
                .with_label_values(&[&claim.spec.node_pool, "underutilized", "disrupted"])
                .inc();
        }
        let what = describe(&mv);
        tracing::info!(claims = ?claims.iter().map(|c| c.name()).collect::<Vec<_>>(), method, saving_per_hour = mv.saving_per_hour, evicted = mv.evicted.len(), "consolidating");
        match (&mv.method, &mv.replacement) {
            (Method::Replace, Some(node)) => {
                let Some(pool) = config.node_pools.get(&node.node_pool) else {
                    return;
                };
                let Some(cluster) = cluster_info(config) else {
                    return;
                };
                for n in &mv.nodes {
                    self.p
                        .state
                        .set_node_state(&n.node, crate::scheduling::view::NodeState::Draining);
                }
                // The moved pods are not at hand here: their capacity types are not checked.
                let mut replacement = claim_for(node, pool, pools, catalog, &[]);
                replacement
                    .metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(
                        super::replacement::REPLACES.to_owned(),
                        claims[0].name().to_owned(),
                    );
                let created = match self.create_claim(replacement).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "writing the consolidation replacement failed; next pass");
                        for n in &mv.nodes {
                            self.p
                                .state
                                .set_node_state(&n.node, crate::scheduling::view::NodeState::Ready);
                        }
                        return;
                    }
                };
                let name = created.name().to_owned();
                self.claims.insert(name.clone(), created);
                for mut claim in claims {
                    claim.status_mut().replacements = vec![name.clone()];
                    claim.status_mut().disruption_reason = Some(UNDERUTILIZED.to_owned());
                    claim.set_condition(UNDERUTILIZED, true, UNDERUTILIZED, &what);
                    self.p.events.claim(
                        &claim,
                        Kind::Normal,
                        UNDERUTILIZED,
                        "Disrupt",
                        what.clone(),
                    );
                    self.store_status(claim).await;
                }
                self.update_gauges();
                self.launch_claims(&[name], &cluster).await;
            }
            _ => {
                for claim in claims {
                    self.p.events.claim(
                        &claim,
                        Kind::Normal,
                        UNDERUTILIZED,
                        "Disrupt",
                        what.clone(),
                    );
                    self.consolidation.said.remove(claim.name());
                    self.begin_termination(claim, UNDERUTILIZED).await;
                }
            }
        }
    }

    /// A node replaced for consolidation goes once its replacement registered; if the
    /// replacement failed, vanished or did not register in time, the move is called off and the
    /// node stays (a consolidation never drains pods toward capacity that is not there).
    pub(super) async fn settle_consolidation(
        &mut self,
        mut claim: NodeClaim,
        replacements: &[String],
        timeout: Duration,
    ) {
        let states: Vec<Option<(Phase, Duration)>> = replacements
            .iter()
            .map(|r| self.claims.get(r).map(|c| (c.phase(), c.age())))
            .collect();
        if states
            .iter()
            .all(|s| matches!(s, Some((Phase::Registered, _))))
        {
            self.say_replaced(&claim, replacements);
            self.begin_termination(claim, UNDERUTILIZED).await;
            return;
        }
        let failed = states.iter().any(|s| match s {
            None => true,
            Some((Phase::Failed | Phase::Terminating, _)) => true,
            Some((_, age)) => *age > timeout,
        });
        if !failed {
            return;
        }
        tracing::warn!(claim = claim.name(), replacements = ?replacements, "the consolidation replacement did not come up; the node stays");
        self.terminator
            .metrics
            .consolidation_moves
            .with_label_values(&["replace", "replacement_failed"])
            .inc();
        if let Some(node) = claim.status.as_ref().and_then(|s| s.node_name.clone()) {
            self.p
                .state
                .set_node_state(&node, crate::scheduling::view::NodeState::Ready);
        }
        let status = claim.status_mut();
        status.replacements.clear();
        status.disruption_reason = None;
        claim.set_condition(
            UNDERUTILIZED,
            false,
            "ReplacementFailed",
            &format!(
                "the replacement ({}) did not come up",
                replacements.join(", ")
            ),
        );
        self.p.events.claim(
            &claim,
            Kind::Warning,
            "Unconsolidatable",
            "Consolidate",
            format!(
                "Consolidation called off: the replacement ({}) did not come up; the node stays",
                replacements.join(", ")
            ),
        );
        self.store_status(claim).await;
    }

    /// `Unconsolidatable` Events: once per claim and reason, again after
    /// [`UNCONSOLIDATABLE_EVERY`]. Reasons that only say "not yet" stay quiet.
    fn say_unconsolidatable(&mut self, kept: &[crate::scheduling::consolidation::Kept]) {
        let now = TokioInstant::now();
        for k in kept {
            if matches!(
                k.kind,
                BlockKind::NotYet | BlockKind::Policy | BlockKind::Busy
            ) {
                continue;
            }
            let Some(claim) = k.claim.as_deref().and_then(|c| self.claims.get(c)) else {
                continue;
            };
            let fresh = self
                .consolidation
                .said
                .get(claim.name())
                .is_none_or(|(reason, at)| {
                    reason != &k.reason || now.duration_since(*at) >= UNCONSOLIDATABLE_EVERY
                });
            if !fresh {
                continue;
            }
            self.p.events.claim(
                claim,
                Kind::Normal,
                "Unconsolidatable",
                "Consolidate",
                format!("Node {} stays: {}", k.node, k.reason),
            );
            self.consolidation
                .said
                .insert(claim.name().to_owned(), (k.reason.clone(), now));
        }
        self.consolidation
            .said
            .retain(|c, _| self.claims.contains_key(c));
    }
}

/// Does any pool consolidate underused nodes?
fn consolidates(config: &Config) -> bool {
    config.node_pools.values().any(|p| {
        p.spec.disruption.consolidation_policy != ConsolidationPolicy::WhenEmpty
            && crate::scheduling::disruption::empty::empty_after(&p.spec.disruption).is_some()
    })
}

fn describe(mv: &Move) -> String {
    let nodes: Vec<String> = mv
        .nodes
        .iter()
        .map(|n| {
            format!(
                "{} ({} {})",
                n.node,
                n.instance_type,
                n.capacity_type.as_str()
            )
        })
        .collect();
    let how = match &mv.replacement {
        Some(r) => format!(
            "replacing {} with one {} {} in {}",
            nodes.join(", "),
            r.instance_type,
            r.capacity_type.as_str(),
            r.zone
        ),
        None => format!("deleting {}", nodes.join(", ")),
    };
    format!(
        "Underutilized: {how}; saves ${:.4}/h, evicts {} pods",
        mv.saving_per_hour,
        mv.evicted.len()
    )
}
