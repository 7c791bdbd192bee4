//! Phase 6: tails: the least efficient new nodes are emptied into the spare room of others.

use super::*;

impl Solver<'_> {
    /// Empties the least efficient new nodes into spare room on others, where every rule allows.
    pub(super) fn consolidate_tails(&mut self) {
        if self.drafts.len() < 2 {
            return;
        }
        let price = |s: &Self, d: &Draft| {
            let it = &s.input.catalog.types[d.type_idx];
            it.offerings[d.offering].price
        };
        // Least utilised first (by the scarcer of cpu and memory).
        let util = |d: &Draft| -> f64 {
            let c = d.used.0[CPU] as f64 / d.room.0[CPU].max(1) as f64;
            let m = d.used.0[MEMORY] as f64 / d.room.0[MEMORY].max(1) as f64;
            c.max(m)
        };
        let mut order: Vec<usize> = (0..self.drafts.len()).collect();
        order.sort_by(|a, b| {
            util(&self.drafts[*a])
                .total_cmp(&util(&self.drafts[*b]))
                .then(a.cmp(b))
        });
        let attempts = order.len().min(32);
        let mut removed = vec![false; self.drafts.len()];
        for &victim in order.iter().take(attempts) {
            if util(&self.drafts[victim]) > 0.6 {
                break;
            }
            let pods = self.drafts[victim].pods.clone();
            let mut moves: Vec<(usize, usize)> = Vec::new();
            let mut trial: Vec<Draft> = Vec::new();
            let mut trial_idx: Vec<usize> = Vec::new();
            let mut ok = true;
            'pods: for &p in &pods {
                let req = self.input.pods[p].requests;
                let g = self.group_of(p);
                let Some(g) = g else {
                    ok = false;
                    break;
                };
                for target in 0..self.drafts.len() {
                    if target == victim || removed[target] {
                        continue;
                    }
                    let pos = trial_idx.iter().position(|x| *x == target);
                    let d = pos.map_or(&self.drafts[target], |i| &trial[i]);
                    if d.pool != self.drafts[victim].pool
                        || ((self.groups[g].zone_bound || self.drafts[victim].zone_bound)
                            && !self.same_zone(d, &self.drafts[victim]))
                        || !(d.used + req).fits_in(&d.room)
                        || !self.group_can_use(g, d)
                        || self.draft_room(g, d) < 1
                        || self.groups[g].bundled
                    {
                        continue;
                    }
                    let mut d = d.clone();
                    d.zone_bound |= self.groups[g].zone_bound;
                    d.used += req;
                    d.pods.push(p);
                    if !d.groups.contains(&g) {
                        d.groups.push(g);
                    }
                    for &c in &self.groups[g].h_inc {
                        d.bump(c, 1);
                    }
                    match pos {
                        Some(i) => trial[i] = d,
                        None => {
                            trial.push(d);
                            trial_idx.push(target);
                        }
                    }
                    moves.push((p, target));
                    continue 'pods;
                }
                ok = false;
                break;
            }
            if ok && !pods.is_empty() {
                let _ = price(self, &self.drafts[victim]);
                for (i, target) in trial_idx.into_iter().enumerate() {
                    self.drafts[target] = trial[i].clone();
                }
                let victim_draft = &self.drafts[victim];
                let (_, capacity) =
                    self.type_room[victim_draft.pool][victim_draft.type_idx].unwrap();
                let pool = victim_draft.pool;
                self.usage[pool].remove(&capacity);
                removed[victim] = true;
            }
        }
        let mut i = 0;
        self.drafts.retain(|_| {
            let keep = !removed[i];
            i += 1;
            keep
        });
    }

    pub(super) fn same_zone(&self, a: &Draft, b: &Draft) -> bool {
        let ta = &self.input.catalog.types[a.type_idx];
        let tb = &self.input.catalog.types[b.type_idx];
        ta.offerings[a.offering].zone == tb.offerings[b.offering].zone
    }

    pub(super) fn group_can_use(&self, g: usize, d: &Draft) -> bool {
        self.groups[g]
            .pools
            .iter()
            .find(|(p, _)| *p == d.pool)
            .is_some_and(|(_, c)| c.masks[d.type_idx] & (1 << d.offering) != 0)
    }
}
