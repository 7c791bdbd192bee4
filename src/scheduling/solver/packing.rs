//! Phase 5: packing per (pool, zone) bucket, LP-guided fills of the instance types closest to the
//! bound, within pool limits.

use super::*;

impl Solver<'_> {
    pub(super) fn pack(&mut self, bucketed: Vec<(usize, Option<usize>, Vec<usize>)>) {
        // Current pool choice per group: index into group.pools.
        let mut attempt: Vec<usize> = vec![0; self.groups.len()];
        let mut work = bucketed;
        let mut last_reason: HashMap<usize, String> = HashMap::new();
        loop {
            // bucket key: (pool, zone) → classes
            // Groups with their own zone or capacity-type requirements get buckets of their own,
            // so every class of a bucket can use the offering chosen per type.
            let mut buckets: BTreeMap<(usize, Option<usize>, String), Vec<Class>> = BTreeMap::new();
            for (g, zone, pods) in work.drain(..) {
                let Some((pool, _)) = self.groups[g].pools.get(attempt[g]) else {
                    let limited = last_reason.contains_key(&g);
                    let reason = last_reason
                        .get(&g)
                        .cloned()
                        .unwrap_or_else(|| no_pool_reason(&self.groups[g], self.input.pools));
                    for p in pods {
                        self.unschedulable(p, reason.clone());
                        if limited {
                            self.limited_out.push(p);
                        }
                    }
                    continue;
                };
                let classes = buckets
                    .entry((*pool, zone, self.groups[g].offer_key.clone()))
                    .or_default();
                if self.groups[g].bundled {
                    classes.push(Class {
                        group: g,
                        req: pods
                            .iter()
                            .map(|p| self.input.pods[*p].requests)
                            .fold(Resources::ZERO, |a, b| a + b),
                        pods: vec![pods[0]],
                        bundle: pods,
                    });
                    continue;
                }
                let mut by_req: BTreeMap<Resources, Vec<usize>> = BTreeMap::new();
                for p in pods {
                    by_req
                        .entry(self.input.pods[p].requests)
                        .or_default()
                        .push(p);
                }
                for (req, mut pods) in by_req {
                    pods.reverse();
                    classes.push(Class {
                        group: g,
                        req,
                        pods,
                        bundle: Vec::new(),
                    });
                }
            }
            let mut spill: Vec<(usize, Option<usize>, Vec<usize>)> = Vec::new();
            let mut buckets_left: HashMap<usize, usize> = HashMap::new();
            for (pool, _, _) in buckets.keys() {
                *buckets_left.entry(*pool).or_default() += 1;
            }
            for ((pool, zone, _), classes) in buckets {
                let left_here = buckets_left.get_mut(&pool).expect("counted above");
                // In a fair round, each bucket of a limited pool gets an even share of its room.
                self.ceiling = self
                    .fair_share
                    .then(|| (pool, self.fair_ceiling(pool, *left_here)));
                *left_here -= 1;
                let left = self.pack_bucket(pool, zone, classes);
                self.ceiling = None;
                for (class, reason) in left {
                    let g = class.group;
                    let pods = if class.bundle.is_empty() {
                        class.pods
                    } else {
                        class.bundle
                    };
                    match reason {
                        Leftover::Limits(reason) => {
                            last_reason.insert(g, reason);
                            spill.push((g, zone, pods));
                        }
                        Leftover::NoFit(reason) => {
                            for p in pods {
                                self.unschedulable(p, reason.clone());
                            }
                        }
                    }
                }
            }
            if spill.is_empty() {
                break;
            }
            let mut bumped = std::collections::BTreeSet::new();
            for (g, _, _) in &spill {
                if bumped.insert(*g) {
                    attempt[*g] += 1;
                }
            }
            // Zone-bound pods keep their zone in the next pool only if it offers it.
            work = spill
                .into_iter()
                .map(|(g, zone, pods)| {
                    let zone = zone.filter(|z| {
                        self.groups[g]
                            .pools
                            .get(attempt[g])
                            .is_some_and(|(_, c)| c.zone_types[*z] > 0)
                    });
                    (g, zone.or(None), pods)
                })
                .collect();
        }
    }

    /// Packs one bucket twice, with and without the LP-guided first phase, and keeps the plan
    /// that places more pods, then the cheaper one (the LP split wins on large batches, the plain
    /// greedy on some small ones). Returns what could not be placed and why.
    pub(super) fn pack_bucket(
        &mut self,
        pool: usize,
        zone: Option<usize>,
        classes: Vec<Class>,
    ) -> Vec<(Class, Leftover)> {
        let start = self.drafts.len();
        let usage = self.usage[pool];
        let left_a = self.pack_bucket_with(pool, zone, classes.clone(), true);
        let drafts_a = self.drafts.split_off(start);
        let usage_a = self.usage[pool];
        self.usage[pool] = usage;
        let left_b = self.pack_bucket_with(pool, zone, classes, false);
        let unplaced = |left: &[(Class, Leftover)]| -> usize {
            left.iter()
                .map(|(c, _)| c.pods.len().max(c.bundle.len()))
                .sum()
        };
        let cost = |solver: &Self, drafts: &[Draft]| -> f64 {
            // Nodes committed together are copies: re-price each distinct one once.
            let mut memo: HashMap<(usize, usize, Resources, &[usize]), f64> = HashMap::new();
            drafts
                .iter()
                .map(|d| {
                    *memo
                        .entry((d.type_idx, d.offering, d.used, d.groups.as_slice()))
                        .or_insert_with(|| solver.repriced(d))
                })
                .sum()
        };
        let a = (unplaced(&left_a), cost(self, &drafts_a));
        let b = (unplaced(&left_b), cost(self, &self.drafts[start..]));
        if a.0 < b.0 || (a.0 == b.0 && a.1 <= b.1 + 1e-9) {
            self.drafts.truncate(start);
            self.drafts.extend(drafts_a);
            self.usage[pool] = usage_a;
            left_a
        } else {
            left_b
        }
    }

    /// The price a draft will have after [`Self::finish`] re-prices it: the cheapest type that
    /// holds its pods in its zone and capacity type (only looked for when the node is less than
    /// 90 % used; a full node keeps its type).
    pub(super) fn repriced(&self, d: &Draft) -> f64 {
        let catalog = self.input.catalog;
        let chosen = &catalog.types[d.type_idx].offerings[d.offering];
        let full = (0..DIMS).any(|k| d.room.0[k] > 0 && d.used.0[k] * 10 >= d.room.0[k] * 9);
        if full {
            return chosen.price;
        }
        let mut best = chosen.price;
        for (t, it) in catalog.types.iter().enumerate() {
            let Some((room, _)) = self.type_room[d.pool][t] else {
                continue;
            };
            if !d.used.fits_in(&room)
                || !d
                    .groups
                    .iter()
                    .all(|g| self.group_can_use_type(*g, d.pool, t))
            {
                continue;
            }
            for off in &it.offerings {
                if off.available
                    && off.price < best
                    && off.zone == chosen.zone
                    && off.capacity_type == chosen.capacity_type
                {
                    best = off.price;
                }
            }
        }
        best
    }

    pub(super) fn group_can_use_type(&self, g: usize, pool: usize, t: usize) -> bool {
        self.groups[g]
            .pools
            .iter()
            .find(|(p, _)| *p == pool)
            .is_some_and(|(_, c)| c.masks[t] != 0)
    }

    pub(super) fn pack_bucket_with(
        &mut self,
        pool: usize,
        zone: Option<usize>,
        mut classes: Vec<Class>,
        lp_split: bool,
    ) -> Vec<(Class, Leftover)> {
        let catalog = self.input.catalog;
        let compat_of = |solver: &Self, g: usize| -> std::rc::Rc<Compat> {
            solver.groups[g]
                .pools
                .iter()
                .find(|(p, _)| *p == pool)
                .map(|(_, c)| c.clone())
                .expect("bucketed groups use the pool")
        };
        let compats: Vec<std::rc::Rc<Compat>> =
            classes.iter().map(|c| compat_of(self, c.group)).collect();
        // The offering per type for this bucket: the cheapest one any class may use.
        let mut offer: Vec<Option<(usize, f64)>> = vec![None; catalog.types.len()];
        for (t, it) in catalog.types.iter().enumerate() {
            if self.type_room[pool][t].is_none() {
                continue;
            }
            let mask = compats.iter().fold(0u64, |m, c| m | c.masks[t]);
            if mask == 0 {
                continue;
            }
            offer[t] = cheapest(it, mask, zone, &self.zones);
        }
        let mut leftovers = Vec::new();
        if lp_split {
            self.split_by_lp(pool, zone, &mut classes, &offer);
        }
        let mut duals: Option<Duals> = None;
        let mut demand_at_duals = 0i64;
        let mut order: Vec<usize> = Vec::new();
        loop {
            classes.retain(|c| !c.pods.is_empty());
            if classes.is_empty() {
                break;
            }
            let compats: Vec<std::rc::Rc<Compat>> =
                classes.iter().map(|c| compat_of(self, c.group)).collect();
            let demand = classes.iter().fold(Resources::ZERO, |acc, c| {
                let mut r = c.req;
                for v in &mut r.0 {
                    *v *= c.pods.len() as i64;
                }
                acc + r
            });
            // Re-price when the demand has shrunk by a quarter.
            if duals.is_none() || demand.0[CPU] * 4 < demand_at_duals * 3 {
                let offers: Vec<(Resources, f64)> = (0..catalog.types.len())
                    .filter_map(|t| {
                        let (o, price) = offer[t]?;
                        let _ = o;
                        Some((self.type_room[pool][t]?.0, price))
                    })
                    .collect();
                duals =
                    Some(lp::solve(&demand, &offers).unwrap_or_else(|| fallback_duals(&offers)));
                demand_at_duals = demand.0[CPU];
                let d = duals.as_ref().unwrap();
                order = (0..catalog.types.len())
                    .filter(|t| offer[*t].is_some())
                    .collect();
                let eff: Vec<f64> = order
                    .iter()
                    .map(|&t| {
                        let (room, _) = self.type_room[pool][t].unwrap();
                        d.value(&room) / offer[t].unwrap().1.max(1e-9)
                    })
                    .collect();
                // Sorted by key computed once per type, not twice per comparison.
                let mut keyed: Vec<(f64, usize)> = eff.into_iter().zip(order).collect();
                keyed.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                order = keyed.into_iter().map(|(_, t)| t).collect();
            }
            let d = duals.unwrap();
            // Candidates: the most efficient types that can hold at least one remaining class,
            // within the pool's limits.
            let mut best: Option<(f64, f64, Draft, Vec<(usize, usize)>)> = None;
            let mut tried = 0;
            let mut over_tried = 0;
            let mut limited = false;
            // At most PER_FAMILY sizes of one family, so the candidates span the families the
            // bound mixes (e.g. c and r for cpu-heavy plus memory-heavy pods).
            let mut families: Vec<(&str, usize)> = Vec::new();
            for &t in &order {
                if tried >= CANDIDATES {
                    break;
                }
                let family = catalog.types[t].family.as_str();
                let seen = families.iter().position(|(f, _)| *f == family);
                if seen.is_some_and(|i| families[i].1 >= PER_FAMILY) {
                    continue;
                }
                let (room, capacity) = self.type_room[pool][t].unwrap();
                let (o, price) = offer[t].unwrap();
                let fits_some = classes
                    .iter()
                    .zip(&compats)
                    .any(|(c, compat)| compat.masks[t] & (1 << o) != 0 && c.req.fits_in(&room));
                if !fits_some {
                    continue;
                }
                // Over the limit at this size, the fill may still launch as a smaller type; such a
                // type counts as a candidate only if it does (at most CANDIDATES are filled).
                let over = self.usage[pool].room(&self.limits_of(pool), &capacity) < 1;
                if over {
                    if over_tried >= CANDIDATES {
                        limited = true;
                        continue;
                    }
                    over_tried += 1;
                } else {
                    count_candidate(&mut families, seen, family, &mut tried);
                }
                let (draft, taken) = self.fill(pool, t, o, room, &classes, &compats, &d);
                if taken.is_empty() {
                    continue;
                }
                if over {
                    let sized = self.sized_for_limits(&draft);
                    let (_, capacity) = self.type_room[pool][sized.type_idx].unwrap();
                    if self.usage[pool].room(&self.limits_of(pool), &capacity) < 1 {
                        limited = true;
                        continue;
                    }
                    count_candidate(&mut families, seen, family, &mut tried);
                }
                let value = d.value(&draft.used);
                let eff = value / price.max(1e-9);
                let better = match &best {
                    None => true,
                    Some((be, bv, _, _)) => eff > be * 1.005 || (eff > be * 0.995 && value > *bv),
                };
                if better {
                    best = Some((eff, value, draft, taken));
                }
            }
            let Some((_, _, draft, taken)) = best else {
                // Nothing fits: explain per class, and stop.
                for class in classes.drain(..) {
                    let reason = if limited {
                        Leftover::Limits(self.limits_reason(pool))
                    } else {
                        Leftover::NoFit(self.no_fit_reason(pool, zone, &class))
                    };
                    leftovers.push((class, reason));
                }
                break;
            };
            if self.commit(pool, zone, &draft, &taken, &mut classes, i64::MAX) == 0 {
                // Not one more node under the pool's limits.
                for class in classes.drain(..) {
                    leftovers.push((class, Leftover::Limits(self.limits_reason(pool))));
                }
                break;
            }
        }
        leftovers
    }

    /// Creates nodes like `draft` holding `taken` pods of `classes`, as many times as every class
    /// it uses has pods left (at most `max`), within the pool's limits. Returns how many.
    pub(super) fn commit(
        &mut self,
        pool: usize,
        zone: Option<usize>,
        draft: &Draft,
        taken: &[(usize, usize)],
        classes: &mut [Class],
        max: i64,
    ) -> i64 {
        // A limited pool is charged with the type each node will launch as.
        let sized;
        let draft = if self.input.pools[pool].limits.any() {
            sized = self.sized_for_limits(draft);
            &sized
        } else {
            draft
        };
        let (_, capacity) = self.type_room[pool][draft.type_idx].unwrap();
        let limits = self.limits_of(pool);
        let reps = taken
            .iter()
            .map(|(ci, n)| classes[*ci].pods.len() / n)
            .min()
            .unwrap_or(0) as i64;
        let reps = reps.min(self.usage[pool].room(&limits, &capacity)).min(max);
        for _ in 0..reps {
            let mut node = draft.clone();
            node.pods.clear();
            for (ci, n) in taken {
                let class = &mut classes[*ci];
                for _ in 0..*n {
                    let p = class.pods.pop().expect("reps bounded by pods left");
                    if class.bundle.is_empty() {
                        node.pods.push(p);
                    } else {
                        node.pods.extend(class.bundle.iter().copied());
                    }
                }
            }
            node.zone_bound = zone.is_some();
            self.usage[pool].add(&capacity, 1);
            self.drafts.push(node);
        }
        reps
    }

    /// The LP-guided first phase of packing a bucket: decides which share of each pod shape
    /// (cpu-to-memory ratio) goes to which instance type by the LP over shapes × types, then fills
    /// whole nodes of each type from its share. Pods of partly filled nodes stay in `classes`
    /// for the greedy phase. Without it, the greedy phase gives the first nodes the pods that
    /// fit them best and leaves a lopsided remainder (e.g. only cpu-heavy pods) for the last.
    pub(super) fn split_by_lp(
        &mut self,
        pool: usize,
        zone: Option<usize>,
        classes: &mut [Class],
        offer: &[Option<(usize, f64)>],
    ) {
        let catalog = self.input.catalog;
        let total_pods: usize = classes.iter().map(|c| c.pods.len()).sum();
        if total_pods < 8 {
            return;
        }
        // Shapes: log2 of GiB per core, in half steps.
        let shape = |r: &Resources| -> i32 {
            let cpu = r.0[CPU] as f64 / 1000.0;
            let mem = r.0[MEMORY] as f64 / (1u64 << 30) as f64;
            if cpu <= 0.0 || mem <= 0.0 {
                return if cpu <= 0.0 { 100 } else { -100 };
            }
            ((mem / cpu).log2() * 2.0).round().clamp(-40.0, 40.0) as i32
        };
        let mut shapes: BTreeMap<i32, Resources> = BTreeMap::new();
        let mut class_shape = Vec::with_capacity(classes.len());
        for c in classes.iter() {
            let k = shape(&c.req);
            class_shape.push(k);
            let mut r = c.req;
            for v in &mut r.0 {
                *v *= c.pods.len() as i64;
            }
            *shapes.entry(k).or_default() += r;
        }
        let shape_keys: Vec<i32> = shapes.keys().copied().collect();
        // Candidate types: for each shape, the 3 cheapest at hosting it alone (fractionally).
        let offered: Vec<usize> = (0..catalog.types.len())
            .filter(|t| offer[*t].is_some() && self.type_room[pool][*t].is_some())
            .collect();
        let mut types: Vec<usize> = Vec::new();
        for r in shapes.values() {
            let cost = |t: usize| {
                let (room, _) = self.type_room[pool][t].unwrap();
                let mut frac: f64 = 0.0;
                for d in 0..DIMS {
                    if r.0[d] > 0 {
                        if room.0[d] == 0 {
                            return f64::INFINITY;
                        }
                        frac = frac.max(r.0[d] as f64 / room.0[d] as f64);
                    }
                }
                frac * offer[t].unwrap().1
            };
            let mut ranked: Vec<(f64, usize)> = offered
                .iter()
                .map(|t| (cost(*t), *t))
                .filter(|(c, _)| c.is_finite())
                .collect();
            ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            best_per_family(catalog, ranked, 3, &mut types);
        }
        // ... plus the types the bound of the whole bucket prices best (one per family).
        let offers_all: Vec<(Resources, f64)> = offered
            .iter()
            .map(|t| (self.type_room[pool][*t].unwrap().0, offer[*t].unwrap().1))
            .collect();
        let total_demand = shapes.values().fold(Resources::ZERO, |a, b| a + *b);
        if let Some(d) = lp::solve(&total_demand, &offers_all) {
            let mut ranked: Vec<(f64, usize)> = offered
                .iter()
                .map(|t| {
                    (
                        d.value(&self.type_room[pool][*t].unwrap().0) / offer[*t].unwrap().1,
                        *t,
                    )
                })
                .collect();
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            best_per_family(catalog, ranked, 6, &mut types);
        }
        if types.len() < 2 {
            return;
        }
        // LP: minimise Σ price_t n_t with Σ_s f_st R_s ≤ n_t A_t, Σ_t f_st = 1.
        use super::super::lp::SCALE;
        use microlp::{ComparisonOp, OptimizationDirection, Problem};
        let mut problem = Problem::new(OptimizationDirection::Minimize);
        let n: Vec<_> = types
            .iter()
            .map(|t| problem.add_var(offer[*t].unwrap().1, (0.0, f64::INFINITY)))
            .collect();
        let f: Vec<Vec<_>> = shape_keys
            .iter()
            .map(|_| {
                types
                    .iter()
                    .map(|_| problem.add_var(0.0, (0.0, 1.0)))
                    .collect()
            })
            .collect();
        for fs in &f {
            let expr: Vec<_> = fs.iter().map(|v| (*v, 1.0)).collect();
            problem.add_constraint(expr.as_slice(), ComparisonOp::Eq, 1.0);
        }
        for (ti, &t) in types.iter().enumerate() {
            let (room, _) = self.type_room[pool][t].unwrap();
            for d in 0..DIMS {
                let mut expr: Vec<_> = Vec::new();
                for (si, k) in shape_keys.iter().enumerate() {
                    let r = shapes[k].0[d];
                    if r > 0 {
                        expr.push((f[si][ti], r as f64 / SCALE[d]));
                    }
                }
                if expr.is_empty() {
                    continue;
                }
                expr.push((n[ti], -(room.0[d] as f64) / SCALE[d]));
                problem.add_constraint(expr.as_slice(), ComparisonOp::Le, 0.0);
            }
        }
        let Some(solution) = problem.solve().ok().and_then(|o| o.into_solution().ok()) else {
            return;
        };
        let offers: Vec<(Resources, f64)> = offered
            .iter()
            .map(|t| (self.type_room[pool][*t].unwrap().0, offer[*t].unwrap().1))
            .collect();
        let total = classes.iter().fold(Resources::ZERO, |acc, c| {
            let mut r = c.req;
            for v in &mut r.0 {
                *v *= c.pods.len() as i64;
            }
            acc + r
        });
        let Some(duals) = lp::solve(&total, &offers) else {
            return;
        };
        // Share each class's pods out by its shape's fractions.
        let compats: Vec<std::rc::Rc<Compat>> = classes
            .iter()
            .map(|c| {
                self.groups[c.group]
                    .pools
                    .iter()
                    .find(|(p, _)| *p == pool)
                    .map(|(_, x)| x.clone())
                    .expect("bucketed groups use the pool")
            })
            .collect();
        for (ti, &t) in types.iter().enumerate() {
            let (o, _) = offer[t].unwrap();
            let mut share: Vec<Class> = Vec::new();
            let mut share_of: Vec<usize> = Vec::new();
            for (ci, c) in classes.iter_mut().enumerate() {
                if compats[ci].masks[t] & (1 << o) == 0 || c.pods.is_empty() {
                    continue;
                }
                let si = shape_keys
                    .iter()
                    .position(|k| *k == class_shape[ci])
                    .unwrap();
                let frac = solution.var_value(f[si][ti]).clamp(0.0, 1.0);
                let want = (frac * c.pods.len() as f64).round() as usize;
                if want == 0 {
                    continue;
                }
                let keep = c.pods.len() - want.min(c.pods.len());
                let moved = c.pods.split_off(keep);
                share.push(Class {
                    group: c.group,
                    req: c.req,
                    pods: moved,
                    bundle: c.bundle.clone(),
                });
                share_of.push(ci);
            }
            if share.is_empty() {
                continue;
            }
            let share_compats: Vec<std::rc::Rc<Compat>> =
                share_of.iter().map(|ci| compats[*ci].clone()).collect();
            let (room, _) = self.type_room[pool][t].unwrap();
            let price = offer[t].unwrap().1;
            // Whole, well-filled nodes only; the rest goes back.
            // Within the pool's limits: commit charges the type each fill launches as.
            loop {
                let (draft, taken) = self.fill(pool, t, o, room, &share, &share_compats, &duals);
                if taken.is_empty() || duals.value(&draft.used) < 0.95 * price {
                    break;
                }
                if self.commit(pool, zone, &draft, &taken, &mut share, i64::MAX) == 0 {
                    break;
                }
            }
            for (class, ci) in share.into_iter().zip(share_of) {
                classes[ci].pods.extend(class.pods);
            }
        }
    }

    /// Greedily fills one node of type `t` (offering `o`) from `classes`; returns the draft and
    /// (class index, pods taken).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fill(
        &self,
        pool: usize,
        t: usize,
        o: usize,
        room: Resources,
        classes: &[Class],
        compats: &[std::rc::Rc<Compat>],
        d: &Duals,
    ) -> (Draft, Vec<(usize, usize)>) {
        let mut draft = Draft {
            pool,
            type_idx: t,
            offering: o,
            room,
            used: Resources::ZERO,
            pods: Vec::new(),
            groups: Vec::new(),
            counters: Vec::new(),
            zone_bound: false,
        };
        let mut taken: Vec<(usize, usize)> = Vec::new();
        let mut left: Vec<usize> = classes.iter().map(|c| c.pods.len()).collect();
        loop {
            let rem = room - draft.used;
            let mut best: Option<(f64, usize, i64)> = None;
            for (ci, class) in classes.iter().enumerate() {
                if left[ci] == 0 || compats[ci].masks[t] & (1 << o) == 0 || !class.req.fits_in(&rem)
                {
                    continue;
                }
                let cap = self.draft_room(class.group, &draft);
                if cap < 1 {
                    continue;
                }
                // share of the scarcest remaining resource one pod takes
                let mut share: f64 = 0.0;
                let mut fit = i64::MAX;
                for k in 0..DIMS {
                    if class.req.0[k] > 0 {
                        share = share.max(class.req.0[k] as f64 / rem.0[k] as f64);
                        fit = fit.min(rem.0[k] / class.req.0[k]);
                    }
                }
                let score = (d.value(&class.req) + 1e-9) / share.max(1e-12);
                let fit = fit.min(cap).min(left[ci] as i64);
                let better = match best {
                    None => true,
                    Some((s, bci, _)) => {
                        score > s * (1.0 + 1e-9)
                            || (score >= s * (1.0 - 1e-9) && classes[bci].req < class.req)
                    }
                };
                if better {
                    best = Some((score, ci, fit));
                }
            }
            let Some((_, ci, fit)) = best else { break };
            let n = if fit as usize >= left[ci] {
                left[ci] as i64
            } else {
                (fit / 2).max(1)
            };
            let class = &classes[ci];
            for _ in 0..n {
                draft.used += class.req;
            }
            left[ci] -= n as usize;
            let g = class.group;
            if !draft.groups.contains(&g) {
                draft.groups.push(g);
            }
            for &c in &self.groups[g].h_inc {
                draft.bump(c, n);
            }
            match taken.iter_mut().find(|(x, _)| *x == ci) {
                Some((_, k)) => *k += n as usize,
                None => taken.push((ci, n as usize)),
            }
        }
        (draft, taken)
    }

    /// How many pods of group `g` the draft node can still take by hostname rules.
    pub(super) fn draft_room(&self, g: usize, draft: &Draft) -> i64 {
        let group = &self.groups[g];
        // Anti-affinity of pods already on the node that selects this group.
        for &other in &draft.groups {
            for &(c, _) in &self.groups[other].h_anti {
                if group.h_inc.contains(&c) {
                    return 0;
                }
            }
        }
        self.hostname_room(g, &draft.counters)
    }
}

pub(super) enum Leftover {
    Limits(String),
    NoFit(String),
}

/// The cheapest available offering of `it` within `mask` (and `zone` when given).
/// Counts a candidate type of `family` (at `seen` in `families`, if there) as tried.
fn count_candidate<'c>(
    families: &mut Vec<(&'c str, usize)>,
    seen: Option<usize>,
    family: &'c str,
    tried: &mut usize,
) {
    *tried += 1;
    match seen {
        Some(i) => families[i].1 += 1,
        None => families.push((family, 1)),
    }
}

/// Adds to `types` the first type of each family in `ranked` (best first), until `families`
/// families are in.
fn best_per_family(
    catalog: &Catalog,
    ranked: Vec<(f64, usize)>,
    families: usize,
    types: &mut Vec<usize>,
) {
    let mut seen: Vec<&str> = Vec::new();
    for (_, t) in ranked {
        let f = catalog.types[t].family.as_str();
        if seen.contains(&f) {
            continue;
        }
        seen.push(f);
        if !types.contains(&t) {
            types.push(t);
        }
        if seen.len() >= families {
            break;
        }
    }
}

pub(super) fn cheapest(
    it: &InstanceType,
    mask: u64,
    zone: Option<usize>,
    zones: &[String],
) -> Option<(usize, f64)> {
    it.offerings
        .iter()
        .enumerate()
        .filter(|(o, off)| {
            mask & (1 << o) != 0 && off.available && zone.is_none_or(|z| off.zone == zones[z])
        })
        .min_by(|(_, a), (_, b)| {
            a.price
                .total_cmp(&b.price)
                .then(a.capacity_type.cmp(&b.capacity_type))
                .then(a.zone.cmp(&b.zone))
        })
        .map(|(o, off)| (o, off.price))
}

/// Resource prices when the LP cannot be solved: each resource at its cheapest price per unit,
/// split evenly.
pub(super) fn fallback_duals(offers: &[(Resources, f64)]) -> Duals {
    let mut y = [0.0; DIMS];
    for (d, slot) in y.iter_mut().enumerate() {
        *slot = offers
            .iter()
            .filter(|(a, _)| a.0[d] > 0)
            .map(|(a, p)| p / a.0[d] as f64)
            .fold(f64::INFINITY, f64::min);
        if !slot.is_finite() {
            *slot = 0.0;
        }
        *slot /= 2.0;
    }
    Duals { y, bound: 0.0 }
}
