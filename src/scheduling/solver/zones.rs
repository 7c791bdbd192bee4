//! Phase 4: zones for pods with zone constraints (spread, pod (anti-)affinity on the zone key),
//! pod by pod, and the repair after packing that keeps every placed pod's zone rules.

use super::*;

impl Solver<'_> {
    /// Whether a pod of group `g` may go to zone `z` (`strict`: ScheduleAnyway counts as required).
    pub(super) fn zone_allows(&self, g: usize, z: usize, strict: bool) -> Result<(), String> {
        let group = &self.groups[g];
        let c = &group.c;
        let domains: Vec<usize> = if group.pools.is_empty() {
            (0..self.zones.len()).collect()
        } else {
            (0..self.zones.len())
                .filter(|z| group.pools.iter().any(|(_, c)| c.zone_types[*z] > 0))
                .collect()
        };
        for s in c.spreads.iter().filter(|s| s.topology == Topology::Zone) {
            if !s.required && !strict {
                continue;
            }
            let id = self
                .z_counters
                .iter()
                .position(|x| *x == s.selector)
                .unwrap_or(0);
            let counts = &self.z_counts[id];
            let min = if s.required && (domains.len() as i64) < s.min_domains {
                0
            } else {
                domains.iter().map(|d| counts[*d]).min().unwrap_or(0)
            };
            let own = i64::from(s.selector.matches(&c.namespace, &c.labels));
            if counts[z] + own - min > s.max_skew {
                return Err(format!(
                    "topology spread on {} (maxSkew {}, selecting {}): zone {} would be {} pods ahead",
                    labels::ZONE,
                    s.max_skew,
                    s.selector.describe(),
                    self.zones[z],
                    counts[z] + own - min
                ));
            }
        }
        for t in c
            .anti_affinity
            .iter()
            .filter(|t| t.topology == Topology::Zone)
        {
            let id = self
                .z_counters
                .iter()
                .position(|x| *x == t.selector)
                .unwrap_or(0);
            if self.z_counts[id][z] > 0 {
                return Err(format!(
                    "pod anti-affinity on {} with pods selected by {}: every allowed zone already runs one",
                    labels::ZONE,
                    t.selector.describe()
                ));
            }
        }
        // Symmetry: pods in the zone whose zone anti-affinity selects this group.
        for (id, s) in self.z_counters.iter().enumerate() {
            if self.z_anti[id][z] > 0 && s.matches(&c.namespace, &c.labels) {
                return Err(format!(
                    "pods in zone {} have anti-affinity to pods selected by {}",
                    self.zones[z],
                    s.describe()
                ));
            }
        }
        for t in c.affinity.iter().filter(|t| t.topology == Topology::Zone) {
            let id = self
                .z_counters
                .iter()
                .position(|x| *x == t.selector)
                .unwrap_or(0);
            let anywhere = self.z_counts[id].iter().any(|n| *n > 0);
            let own = t.selector.matches(&c.namespace, &c.labels);
            if self.z_counts[id][z] == 0 && (anywhere || !own) {
                return Err(format!(
                    "pod affinity on {} requires a pod selected by {} in the same zone, and none is planned or running there",
                    labels::ZONE,
                    t.selector.describe()
                ));
            }
        }
        Ok(())
    }

    pub(super) fn count_zone(&mut self, g: usize, z: usize) {
        self.add_to_zone(g, z, 1);
    }

    /// Count a pod of group `g` in zone `z` (`n` = 1), or take it out again (`n` = -1).
    pub(super) fn add_to_zone(&mut self, g: usize, z: usize, n: i64) {
        let c = &self.groups[g].c;
        for (id, s) in self.z_counters.iter().enumerate() {
            if s.matches(&c.namespace, &c.labels) {
                self.z_counts[id][z] += n;
            }
        }
        for t in c
            .anti_affinity
            .iter()
            .filter(|t| t.topology == Topology::Zone)
        {
            if let Some(id) = self.z_counters.iter().position(|x| *x == t.selector) {
                self.z_anti[id][z] += n;
            }
        }
    }

    /// Zones are chosen pod by pod before packing; packing can then leave some of those pods out
    /// (a pool's limits, no type that fits) or move them to another pool in another zone, and the
    /// pods that are placed may no longer keep a required zone rule (a spread's maxSkew,
    /// anti-affinity, affinity) among themselves. Recount the zones from what is placed, on
    /// existing and new nodes, and take pods off, last placed first, until every placed pod keeps
    /// its required zone rules; the pods taken off wait for a later batch, with the reason.
    pub(super) fn enforce_zone_rules(&mut self, base_counts: &[Vec<i64>], base_anti: &[Vec<i64>]) {
        if !self.groups.iter().any(|g| g.zone_bound) {
            return;
        }
        let zone_of = |zone: &str, zones: &[String]| zones.iter().position(|z| z == zone);
        self.z_counts = base_counts.to_vec();
        self.z_anti = base_anti.to_vec();
        // (where, pod, group, zone): where = Ok(draft) or Err(placement index).
        let mut placed: Vec<(Result<usize, usize>, usize, usize, usize)> = Vec::new();
        for (i, placement) in self.placements.iter().enumerate() {
            let p = placement.pod_index;
            let zone = self.existing[placement.node_index].zone;
            if let (Some(g), Some(z)) = (self.group_of(p), zone) {
                placed.push((Err(i), p, g, z));
            }
        }
        for (d, draft) in self.drafts.iter().enumerate() {
            let it = &self.input.catalog.types[draft.type_idx];
            let Some(z) = zone_of(&it.offerings[draft.offering].zone, &self.zones) else {
                continue;
            };
            for &p in &draft.pods {
                if let Some(g) = self.group_of(p) {
                    placed.push((Ok(d), p, g, z));
                }
            }
        }
        for &(_, _, g, z) in &placed {
            self.count_zone(g, z);
        }
        let mut removed: Vec<(Result<usize, usize>, usize, usize, String)> = Vec::new();
        let mut gone = vec![false; placed.len()];
        // Taking a pod off can break another's rule (the zone it left was the emptiest): repeat
        // until a pass takes none.
        loop {
            let before = removed.len();
            for i in (0..placed.len()).rev() {
                let (at, p, g, z) = placed[i];
                if gone[i] || !self.groups[g].zone_bound {
                    continue;
                }
                self.add_to_zone(g, z, -1);
                match self.zone_allows(g, z, false) {
                    Ok(()) => self.add_to_zone(g, z, 1),
                    Err(reason) => {
                        gone[i] = true;
                        removed.push((at, p, g, reason));
                    }
                }
            }
            if removed.len() == before {
                break;
            }
        }
        if removed.is_empty() {
            return;
        }
        let mut dropped_placements = vec![false; self.placements.len()];
        for (at, p, g, reason) in removed {
            let req = self.input.pods[p].requests;
            match at {
                Ok(d) => {
                    let group_of = &self.pod_group;
                    let draft = &mut self.drafts[d];
                    draft.pods.retain(|x| *x != p);
                    draft.used -= req;
                    for &c in &self.groups[g].h_inc {
                        draft.bump(c, -1);
                    }
                    if !draft.pods.iter().any(|x| group_of.get(*x) == Some(&g)) {
                        draft.groups.retain(|x| *x != g);
                    }
                }
                Err(i) => {
                    let state = &mut self.existing[self.placements[i].node_index];
                    state.free += req;
                    for &c in &self.groups[g].h_inc {
                        if let Some((_, v)) = state.counters.iter_mut().find(|(x, _)| *x == c) {
                            *v -= 1;
                        }
                    }
                    dropped_placements[i] = true;
                }
            }
            self.unschedulable(
                p,
                format!("other pods of this batch could not be placed, and planning this one without them would break its zone rule: {reason}"),
            );
            self.limited_out.push(p);
        }
        let mut i = 0;
        self.placements.retain(|_| {
            let keep = !dropped_placements[i];
            i += 1;
            keep
        });
        let (drafts, usage) = (&mut self.drafts, &mut self.usage);
        drafts.retain(|d| {
            if d.pods.is_empty() {
                if let Some((_, capacity)) = self.type_room[d.pool][d.type_idx] {
                    usage[d.pool].remove(&capacity);
                }
                false
            } else {
                true
            }
        });
    }

    /// Returns, per group, (zone or None, pods) lists for packing.
    pub(super) fn assign_zones(&mut self) -> Vec<(usize, Option<usize>, Vec<usize>)> {
        let mut out = Vec::new();
        // Anti-affinity first (scarce), then spreads, then the rest, then affinity (follows).
        let mut order: Vec<usize> = (0..self.groups.len()).collect();
        let rank = |g: &Group| -> u8 {
            let zone_affinity = g.c.affinity.iter().any(|t| t.topology == Topology::Zone);
            let zone_anti =
                g.c.anti_affinity
                    .iter()
                    .any(|t| t.topology == Topology::Zone);
            if zone_anti {
                0
            } else if zone_affinity {
                3
            } else if g.c.spreads.iter().any(|s| s.topology == Topology::Zone) {
                1
            } else {
                2
            }
        };
        order.sort_by_key(|g| (rank(&self.groups[*g]), *g));
        for g in order {
            let mut pods = std::mem::take(&mut self.groups[g].pods);
            if pods.is_empty() {
                continue;
            }
            if !self.groups[g].zone_bound {
                out.push((g, None, pods));
                continue;
            }
            sort_by_size(&mut pods, self.input.pods);
            let mut zone_types = vec![0usize; self.zones.len()];
            for (_, compat) in &self.groups[g].pools {
                for (z, n) in compat.zone_types.iter().enumerate() {
                    zone_types[z] = zone_types[z].max(*n);
                }
            }
            let mut zone_order: Vec<usize> = (0..self.zones.len())
                .filter(|z| zone_types[*z] > 0)
                .collect();
            zone_order.sort_by_key(|z| (std::cmp::Reverse(zone_types[*z]), *z));
            let mut per_zone: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            let bundled = self.groups[g].bundled;
            let mut bundle_zone: Option<Result<usize, String>> = None;
            for p in pods {
                if let Some(decided) = &bundle_zone {
                    // the rest of a hostname self-affinity group follows its first pod
                    let allowed = decided.clone().and_then(|z| {
                        self.zone_allows(g, z, true)
                            .or_else(|_| self.zone_allows(g, z, false))
                            .map(|()| z)
                    });
                    match allowed {
                        Ok(z) => {
                            self.count_zone(g, z);
                            per_zone.entry(z).or_default().push(p);
                        }
                        Err(reason) => self.unschedulable(
                            p,
                            format!(
                                "it must share a node with the other pods of its {} affinity, and {reason}",
                                labels::HOSTNAME
                            ),
                        ),
                    }
                    continue;
                }
                let choose = |solver: &Self, strict: bool| -> Result<usize, String> {
                    let mut best: Option<(i64, usize, usize)> = None;
                    let mut first_err = None;
                    for (rank, &z) in zone_order.iter().enumerate() {
                        match solver.zone_allows(g, z, strict) {
                            Ok(()) => {
                                let load = solver.zone_load(g, z);
                                if best.is_none_or(|(l, r, _)| (load, rank) < (l, r)) {
                                    best = Some((load, rank, z));
                                }
                            }
                            Err(e) => {
                                first_err.get_or_insert(e);
                            }
                        }
                    }
                    best.map(|(_, _, z)| z).ok_or_else(|| {
                        first_err
                            .unwrap_or_else(|| "no zone offers an allowed instance type".into())
                    })
                };
                let chosen = choose(self, true).or_else(|e| choose(self, false).map_err(|_| e));
                if bundled {
                    bundle_zone = Some(chosen.clone());
                }
                match chosen {
                    Ok(z) => {
                        self.count_zone(g, z);
                        per_zone.entry(z).or_default().push(p);
                    }
                    Err(reason) => self.unschedulable(p, reason),
                }
            }
            for (z, pods) in per_zone {
                out.push((g, Some(z), pods));
            }
        }
        out
    }

    /// Ordering key among allowed zones: follow affinity (more matching pods first), else fewest
    /// pods selected by the group's spreads and by selectors that select the group.
    pub(super) fn zone_load(&self, g: usize, z: usize) -> i64 {
        let c = &self.groups[g].c;
        let mut load = 0;
        for t in c.affinity.iter().filter(|t| t.topology == Topology::Zone) {
            if let Some(id) = self.z_counters.iter().position(|x| *x == t.selector) {
                load -= self.z_counts[id][z] * 1_000_000;
            }
        }
        for (id, s) in self.z_counters.iter().enumerate() {
            if s.matches(&c.namespace, &c.labels)
                || c.spreads
                    .iter()
                    .any(|sp| sp.topology == Topology::Zone && sp.selector == *s)
            {
                load += self.z_counts[id][z];
            }
        }
        load
    }

    // --- 5. packing --------------------------------------------------------------------------
}
