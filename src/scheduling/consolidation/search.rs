//! Finding moves: simulate a set of candidates away, judge the result, apply it, go on.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::*;
use crate::model::labels;
use crate::scheduling::solve;
use crate::scheduling::solver::{BoundPod, Input, Plan};

/// The consolidation plan for `world`: moves in order, each simulated on the cluster the
/// previous ones leave, and why every other candidate stays. Round 1 is what the budgets allow
/// now; each further round (up to `rounds`) starts once the one before is done, with the
/// budgets' full allowance. The live controller asks for one round.
pub fn plan(world: &World<'_>, settings: &Settings, rounds: usize) -> Report {
    let nodes = world.nodes.clone();
    let mut search = Search {
        world,
        settings,
        nodes,
        budgets: world.budgets.clone(),
        baseline: 0.0,
        simulations: 0,
        new_nodes: 0,
    };
    search.baseline = search.pending_price();
    let mut report = Report {
        price_before: world.candidates.iter().map(|c| c.price_per_hour).sum(),
        candidates: world.candidates.len(),
        ..Report::default()
    };
    let mut kept: BTreeMap<&str, Blocker> = BTreeMap::new();
    let mut done: HashSet<String> = HashSet::new();
    for c in &world.candidates {
        if let Some(b) = &c.blocked {
            kept.insert(&c.node, b.clone());
        }
    }
    let mut round = 1;
    loop {
        let mut open: Vec<&Candidate> = world
            .candidates
            .iter()
            .filter(|c| !kept.contains_key(c.node.as_str()) && !done.contains(c.node.as_str()))
            .collect();
        // Cheapest to disrupt first: fewest evictions, then the dearest node.
        open.sort_by(|a, b| {
            a.pods
                .len()
                .cmp(&b.pods.len())
                .then(b.price_per_hour.total_cmp(&a.price_per_hour))
                .then(a.node.cmp(&b.node))
        });
        // The pools' budgets decide before any simulation.
        let (open, over): (Vec<&Candidate>, Vec<&Candidate>) = {
            let mut taken: HashMap<&str, usize> = HashMap::new();
            open.into_iter().partition(|c| {
                let room = search.budget(&c.pool);
                let t = taken.entry(c.pool.as_str()).or_default();
                *t += 1;
                *t <= room
            })
        };
        if open.is_empty() {
            if over.is_empty() {
                break;
            }
            // The next round starts once this round's moves are done.
            let later = |c: &&Candidate| world.budget_limits.get(&c.pool).is_none_or(|&n| n > 0);
            if round < rounds && over.iter().any(later) {
                round += 1;
                search.budgets = world.budget_limits.clone();
                continue;
            }
            for c in &over {
                let why = if world.budget_limits.get(&c.pool) == Some(&0) {
                    format!(
                        "NodePool {}'s disruption budget allows no Underutilized disruptions now",
                        c.pool
                    )
                } else {
                    format!(
                        "NodePool {}'s disruption budget allows no more Underutilized disruptions until those in progress are done",
                        c.pool
                    )
                };
                kept.insert(&c.node, Blocker::new(BlockKind::Budget, why));
            }
            break;
        }
        let multi = search.multi(&open);
        let mut single = None;
        for c in &open {
            if let Some(b) = search.cannot_move(c) {
                kept.insert(&c.node, b);
                continue;
            }
            match search.simulate(&[c]) {
                Ok(m) => {
                    single = Some(m);
                    break;
                }
                Err(b) => {
                    kept.insert(&c.node, b);
                }
            }
        }
        // The bigger move only if what it adds is itself worth a move.
        let found = match (multi, single) {
            (Some(m), Some(s)) => {
                let margin = settings.min_saving.max(1e-9);
                if m.0.net_saving_per_hour >= s.0.net_saving_per_hour + margin {
                    Some(m)
                } else {
                    Some(s)
                }
            }
            (m, s) => m.or(s),
        };
        let Some((mut mv, sim)) = found else {
            continue;
        };
        mv.round = round;
        for n in &mv.nodes {
            done.insert(n.node.clone());
            if let Some(b) = search.budgets.get_mut(&n.node_pool) {
                *b = b.saturating_sub(1);
            }
        }
        search.apply(&mv, sim);
        report.saving_per_hour += mv.saving_per_hour;
        report.moves.push(mv);
    }
    for c in &world.candidates {
        if done.contains(c.node.as_str()) {
            continue;
        }
        let b = kept
            .remove(c.node.as_str())
            .unwrap_or_else(|| Blocker::new(BlockKind::NoCheaper, "not looked at"));
        report.kept.push(Kept {
            node: c.node.clone(),
            claim: c.claim.clone(),
            node_pool: c.pool.clone(),
            price_per_hour: c.price_per_hour,
            kind: b.kind,
            reason: b.reason,
        });
    }
    report.simulations = search.simulations;
    report
}

struct Search<'a, 'w> {
    world: &'a World<'w>,
    settings: &'a Settings,
    /// The cluster as the moves so far leave it.
    nodes: Vec<ExistingNode>,
    budgets: BTreeMap<String, usize>,
    /// USD per hour of the new nodes the pending pods need without any further move.
    baseline: f64,
    simulations: usize,
    new_nodes: usize,
}

/// What a simulation placed: pods of the candidates (indices below their count) on existing
/// nodes by name, and the new node that holds the rest.
struct Sim {
    destinations: Vec<(usize, String)>,
    replacement: Option<PlannedNode>,
    pods: Vec<PendingPod>,
}

impl Search<'_, '_> {
    fn budget(&self, pool: &str) -> usize {
        self.budgets.get(pool).copied().unwrap_or(usize::MAX)
    }

    fn solve(&mut self, pods: &[PendingPod], nodes: &[ExistingNode]) -> Plan {
        self.simulations += 1;
        solve(&Input {
            pods,
            pools: self.world.pools,
            catalog: self.world.catalog,
            nodes,
        })
    }

    fn pending_price(&mut self) -> f64 {
        if self.world.pending.is_empty() {
            return 0.0;
        }
        let mut nodes = std::mem::take(&mut self.nodes);
        order(&mut nodes, &HashSet::new());
        let plan = self.solve(&self.world.pending, &nodes);
        self.nodes = nodes;
        plan.total_price_per_hour
    }

    /// Several candidates at once: the longest prefix (at least two) that makes a valid move.
    fn multi(&mut self, open: &[&Candidate]) -> Option<(Move, Sim)> {
        let max = open.len().min(self.settings.max_multi);
        let (mut lo, mut hi) = (2, max);
        let mut best = None;
        while lo <= hi {
            let mid = (lo + hi) / 2;
            match self.simulate(&open[..mid]) {
                Ok(found) => {
                    // The best net saving; a delete over a replace that saves no more.
                    let better = best.as_ref().is_none_or(|(b, _): &(Move, Sim)| {
                        found.0.net_saving_per_hour > b.net_saving_per_hour + 1e-9
                    });
                    if better {
                        best = Some(found);
                    }
                    lo = mid + 1;
                }
                Err(_) => hi = mid - 1,
            }
        }
        best
    }

    /// Simulates `set` away and judges the move.
    fn simulate(&mut self, set: &[&Candidate]) -> Result<(Move, Sim), Blocker> {
        let names: HashSet<&str> = set.iter().map(|c| c.node.as_str()).collect();
        let mut pods: Vec<PendingPod> = set.iter().flat_map(|c| c.pods.iter().cloned()).collect();
        let own = pods.len();
        pods.extend(self.world.pending.iter().cloned());
        let mut nodes = std::mem::take(&mut self.nodes);
        let usable = order(&mut nodes, &names);
        let plan = self.solve(&pods, &nodes[..usable]);
        let destinations: Vec<(usize, String)> = plan
            .placements
            .iter()
            .filter(|p| p.pod_index < own)
            .map(|p| (p.pod_index, nodes[p.node_index].name.clone()))
            .collect();
        self.nodes = nodes;
        let verdict = self.judge(set, &pods, own, &plan);
        let mv = verdict?;
        let replacement = mv.replacement.clone();
        let sim = Sim {
            destinations,
            replacement,
            pods: pods[..own].to_vec(),
        };
        if self.settings.stable_only
            && let Some(r) = &sim.replacement
            && self.undone(&mv, &sim, r)
        {
            return Err(Blocker::new(
                BlockKind::Unstable,
                format!(
                    "the {} it would launch would be consolidated again by the next pass",
                    r.instance_type
                ),
            ));
        }
        Ok((mv, sim))
    }

    fn judge(
        &self,
        set: &[&Candidate],
        pods: &[PendingPod],
        own: usize,
        plan: &Plan,
    ) -> Result<Move, Blocker> {
        if let Some(u) = plan.unschedulable.iter().find(|u| u.pod_index < own) {
            return Err(Blocker::new(
                BlockKind::NoCheaper,
                format!("pod {} fits on no other node: {}", u.pod, u.reason),
            ));
        }
        let holding: Vec<&PlannedNode> = plan
            .nodes
            .iter()
            .filter(|n| n.pod_indices.iter().any(|&i| i < own))
            .collect();
        if holding.len() > 1 {
            return Err(Blocker::new(
                BlockKind::NoCheaper,
                format!("its pods need {} new nodes", holding.len()),
            ));
        }
        let price: f64 = set.iter().map(|c| c.price_per_hour).sum();
        let extra = plan.total_price_per_hour - self.baseline;
        let saving = price - extra;
        let evicted = own;
        if saving <= 1e-9 {
            let why = match holding.first() {
                Some(n) => format!(
                    "the cheapest node that holds its pods ({} {} at ${:.4}/h) is not cheaper than ${price:.4}/h",
                    n.instance_type,
                    n.capacity_type.as_str(),
                    n.price_per_hour
                ),
                None => format!(
                    "its pods fit on the other nodes only in room the pending pods need (${extra:.4}/h of new nodes)"
                ),
            };
            return Err(Blocker::new(BlockKind::NoCheaper, why));
        }
        let replacement = holding.first().map(|n| (*n).clone());
        if let Some(r) = &replacement
            && r.capacity_type == CapacityType::Spot
            && set.iter().all(|c| c.capacity_type == CapacityType::Spot)
        {
            if set.len() > 1 {
                return Err(Blocker::new(
                    BlockKind::SpotToSpot,
                    "spot nodes are replaced by spot one node at a time",
                ));
            }
            let cheaper = self.cheaper_types(r, price);
            if cheaper < self.settings.spot_alternatives {
                return Err(Blocker::new(
                    BlockKind::SpotToSpot,
                    format!(
                        "only {cheaper} cheaper spot instance types hold its pods; a spot-to-spot replacement needs {}",
                        self.settings.spot_alternatives
                    ),
                ));
            }
        }
        if let Some(b) = self.stabilizing(set, replacement.as_ref()) {
            return Err(b);
        }
        let net = saving - evicted as f64 * self.settings.eviction_cost;
        let min_share = price * self.settings.min_saving_percent / 100.0;
        if net + 1e-12 < self.settings.min_saving || saving + 1e-12 < min_share {
            return Err(Blocker::new(
                BlockKind::SmallSaving,
                format!(
                    "{} would save ${saving:.4}/h (${net:.4}/h after evicting {evicted} pods); the minimum is ${:.4}/h and {}% of ${price:.4}/h",
                    describe(set, replacement.as_ref()),
                    self.settings.min_saving,
                    self.settings.min_saving_percent
                ),
            ));
        }
        Ok(Move {
            round: 0,
            method: if replacement.is_some() {
                Method::Replace
            } else {
                Method::Delete
            },
            nodes: set
                .iter()
                .map(|c| Removed {
                    node: c.node.clone(),
                    claim: c.claim.clone(),
                    node_pool: c.pool.clone(),
                    instance_type: c.instance_type.clone(),
                    zone: c.zone.clone(),
                    capacity_type: c.capacity_type,
                    price_per_hour: c.price_per_hour,
                })
                .collect(),
            replacement,
            saving_per_hour: saving,
            net_saving_per_hour: net,
            evicted: pods[..own].iter().map(|p| p.key.clone()).collect(),
            destinations: {
                let mut d = BTreeMap::new();
                for p in plan.placements.iter().filter(|p| p.pod_index < own) {
                    d.insert(p.pod.clone(), p.node.clone());
                }
                for n in &holding {
                    for &i in n.pod_indices.iter().filter(|&&i| i < own) {
                        d.insert(pods[i].key.clone(), format!("(new {})", n.instance_type));
                    }
                }
                d
            },
        })
    }

    /// A cheap necessary condition before a simulation: the candidate's pods fit in the other
    /// nodes' free room added up, or an instance type cheaper than the node holds them. A
    /// packed cluster (where most candidates fail both) costs one pass over the nodes and the
    /// catalog per candidate instead of a plan.
    fn cannot_move(&self, c: &Candidate) -> Option<Blocker> {
        use crate::model::resources::{CPU, MEMORY};
        let need = c
            .pods
            .iter()
            .fold(crate::model::Resources::ZERO, |acc, p| acc + p.requests);
        let free = self
            .nodes
            .iter()
            .filter(|n| n.name != c.node)
            .fold(crate::model::Resources::ZERO, |acc, n| {
                acc + n.allocatable.saturating_sub(&n.requested)
            });
        if need.fits_in(&free) {
            return None;
        }
        let pool = self.world.pools.iter().find(|p| p.name == c.pool)?;
        let with_overhead = need + pool.daemon_overhead;
        let cheaper = self.world.catalog.types.iter().any(|it| {
            it.offerings
                .iter()
                .any(|o| o.available && o.price < c.price_per_hour)
                && with_overhead.fits_in(&it.allocatable(&pool.kubelet))
        });
        if cheaper {
            return None;
        }
        Some(Blocker::new(
            BlockKind::NoCheaper,
            format!(
                "its pods ({} CPU, {:.1} GiB) fit neither in the other nodes' free room nor on any instance type cheaper than ${:.4}/h",
                millis(need.0[CPU]),
                gib(need.0[MEMORY]),
                c.price_per_hour
            ),
        ))
    }

    /// Would the move leave a pool less free room than its demand needed within the
    /// stabilization window ([`World::reserve`])? Only CPU and memory are weighed.
    fn stabilizing(
        &self,
        set: &[&Candidate],
        replacement: Option<&PlannedNode>,
    ) -> Option<Blocker> {
        use crate::model::resources::{CPU, MEMORY};
        let mut pools: Vec<&str> = set.iter().map(|c| c.pool.as_str()).collect();
        pools.sort_unstable();
        pools.dedup();
        for pool in pools {
            let Some(reserve) = self.world.reserve.get(pool) else {
                continue;
            };
            // The pods move, their requests stay in the pool; the removed nodes' room goes.
            let (mut alloc, mut requested) = ([0i64; 2], [0i64; 2]);
            for n in &self.nodes {
                if n.labels.get(labels::NODEPOOL).map(String::as_str) != Some(pool) {
                    continue;
                }
                requested[0] += n.requested.0[CPU];
                requested[1] += n.requested.0[MEMORY];
                if !set.iter().any(|c| c.node == n.name) {
                    alloc[0] += n.allocatable.0[CPU];
                    alloc[1] += n.allocatable.0[MEMORY];
                }
            }
            if let Some(r) = replacement.filter(|r| r.node_pool == pool) {
                alloc[0] += r.allocatable.0[CPU];
                alloc[1] += r.allocatable.0[MEMORY];
            }
            let free = [alloc[0] - requested[0], alloc[1] - requested[1]];
            if free[0] < reserve.0[CPU] || free[1] < reserve.0[MEMORY] {
                return Some(Blocker::new(
                    BlockKind::Stabilizing,
                    format!(
                        "NodePool {pool} needed {} more CPU and {:.1} GiB more memory within the stabilization window than it uses now; the move would leave {} CPU and {:.1} GiB free",
                        millis(reserve.0[CPU]),
                        gib(reserve.0[MEMORY]),
                        millis(free[0]),
                        gib(free[1]),
                    ),
                ));
            }
        }
        None
    }

    /// Instance types in the replacement's zone and capacity type, cheaper than `price`, that
    /// hold its pods (the plan's alternatives are exactly the types that hold them).
    fn cheaper_types(&self, r: &PlannedNode, price: f64) -> usize {
        std::iter::once(&r.instance_type)
            .chain(r.alternatives.iter())
            .filter(|t| {
                self.world.catalog.get(t).is_some_and(|it| {
                    it.offerings.iter().any(|o| {
                        o.zone == r.zone
                            && o.capacity_type == r.capacity_type
                            && o.available
                            && o.price < price
                    })
                })
            })
            .count()
    }

    /// Would the next pass consolidate the node this move launches?
    fn undone(&mut self, mv: &Move, sim: &Sim, r: &PlannedNode) -> bool {
        let saved = (self.nodes.clone(), self.new_nodes, self.baseline);
        self.apply(
            mv,
            Sim {
                destinations: sim.destinations.clone(),
                replacement: Some(r.clone()),
                pods: sim.pods.clone(),
            },
        );
        let name = self.new_node_name();
        let on_it: Vec<PendingPod> = sim
            .pods
            .iter()
            .enumerate()
            .filter(|(i, _)| !sim.destinations.iter().any(|(d, _)| d == i))
            .map(|(_, p)| p.clone())
            .collect();
        let again = Candidate {
            node: name,
            claim: None,
            pool: r.node_pool.clone(),
            instance_type: r.instance_type.clone(),
            zone: r.zone.clone(),
            capacity_type: r.capacity_type,
            price_per_hour: r.price_per_hour,
            pods: on_it,
            blocked: None,
        };
        // The check itself does not recurse.
        let relaxed = Settings {
            stable_only: false,
            ..self.settings.clone()
        };
        let mut inner = Search {
            world: self.world,
            settings: &relaxed,
            nodes: std::mem::take(&mut self.nodes),
            budgets: BTreeMap::new(),
            baseline: self.baseline,
            simulations: 0,
            new_nodes: self.new_nodes,
        };
        let undone = inner.simulate(&[&again]).is_ok();
        self.simulations += inner.simulations;
        (self.nodes, self.new_nodes, self.baseline) = saved;
        undone
    }

    fn new_node_name(&self) -> String {
        format!("(new node {})", self.new_nodes)
    }

    /// The cluster after the move: its nodes gone, its pods on their destinations, its new node
    /// added (a destination for later moves, never a candidate).
    fn apply(&mut self, mv: &Move, sim: Sim) {
        let gone: HashSet<&str> = mv.nodes.iter().map(|n| n.node.as_str()).collect();
        self.nodes.retain(|n| !gone.contains(n.name.as_str()));
        let mut placed = vec![false; sim.pods.len()];
        for (i, node) in &sim.destinations {
            placed[*i] = true;
            if let Some(n) = self.nodes.iter_mut().find(|n| &n.name == node) {
                let p = &sim.pods[*i];
                n.requested += p.requests;
                n.pods.push(bound(p));
            }
        }
        if let Some(r) = &sim.replacement {
            self.new_nodes += 1;
            let pool = self.world.pools.iter().find(|p| p.name == r.node_pool);
            let mut node_labels = pool.map(|p| p.labels.clone()).unwrap_or_default();
            if let Some(it) = self.world.catalog.get(&r.instance_type) {
                for (k, v) in it.aws_labels() {
                    node_labels.insert(k.to_owned(), v);
                }
                for k in [labels::ARCH, labels::OS] {
                    if let Some(v) = it.label(k) {
                        node_labels.insert(k.to_owned(), v);
                    }
                }
            }
            node_labels.insert(labels::NODEPOOL.to_owned(), r.node_pool.clone());
            node_labels.insert(labels::ZONE.to_owned(), r.zone.clone());
            node_labels.insert(labels::INSTANCE_TYPE.to_owned(), r.instance_type.clone());
            node_labels.insert(
                labels::CAPACITY_TYPE.to_owned(),
                r.capacity_type.as_str().to_owned(),
            );
            let overhead = pool.map(|p| p.daemon_overhead).unwrap_or_default();
            let mut new = ExistingNode {
                name: self.new_node_name(),
                labels: node_labels,
                taints: pool.map(|p| p.taints.clone()).unwrap_or_default(),
                allocatable: r.allocatable,
                requested: overhead,
                pods: Vec::new(),
                in_flight: false,
            };
            for (i, p) in sim.pods.iter().enumerate() {
                if !placed[i] {
                    new.requested += p.requests;
                    new.pods.push(bound(p));
                }
            }
            self.nodes.push(new);
        }
        self.baseline = self.pending_price();
    }
}

fn bound(p: &PendingPod) -> BoundPod {
    BoundPod {
        namespace: p.constraints.namespace.clone(),
        labels: p.constraints.labels.clone(),
        anti_affinity: p.constraints.anti_affinity.clone(),
    }
}

/// Orders the nodes for a simulation: the fullest first (the planner fills existing nodes first
/// fit, so pods go where they leave the least room stranded, not onto the next candidate), the
/// nodes left out at the end. Returns how many are usable.
fn order(nodes: &mut [ExistingNode], left_out: &HashSet<&str>) -> usize {
    use crate::model::resources::{CPU, MEMORY};
    nodes.sort_by_cached_key(|n| {
        let free = n.allocatable.saturating_sub(&n.requested);
        (
            left_out.contains(n.name.as_str()),
            free.0[CPU],
            free.0[MEMORY],
            n.name.clone(),
        )
    });
    nodes.len()
        - nodes
            .iter()
            .filter(|n| left_out.contains(n.name.as_str()))
            .count()
}

fn millis(m: i64) -> String {
    format!("{:.2}", m as f64 / 1000.0)
}

fn gib(b: i64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

fn describe(set: &[&Candidate], replacement: Option<&PlannedNode>) -> String {
    let names: Vec<&str> = set.iter().map(|c| c.node.as_str()).collect();
    match replacement {
        Some(r) => format!(
            "replacing {} with one {} {}",
            names.join(", "),
            r.instance_type,
            r.capacity_type.as_str()
        ),
        None => format!("deleting {}", names.join(", ")),
    }
}
