//! Pool limits (`spec.limits` of a NodePool): what counts against them, how a limited pool's new
//! nodes are charged, and which launch-time alternatives a limited pool's nodes may keep.
//!
//! A limit is charged with what the plan launches, never with a guess: while a limited pool is
//! packed, each new node is charged at the capacity of the cheapest type that holds its pods (the
//! type it will be re-priced to), not the larger type the packing step happened to fill, so the
//! limit is not spent on room no node will have. When the plan is written, each node keeps only
//! the alternatives whose extra capacity over its chosen type fits its share of the pool's
//! remaining room, so the launched nodes stay within the limit whichever alternatives a launch
//! falls back to (Karpenter charges every claim at its largest option instead, which strands pods
//! far below the limit).

use super::*;

/// `spec.limits` of a NodePool.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    pub cpu_millis: Option<i64>,
    pub memory_bytes: Option<i64>,
    pub nodes: Option<i64>,
    /// Limits on the other resources (GPUs, Neuron devices, EFA, ephemeral storage, pods), by
    /// slot of [`Resources`]; the cpu and memory slots are unused here.
    pub others: [Option<i64>; DIMS],
}

impl Limits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.cpu_millis.is_some()
            || self.memory_bytes.is_some()
            || self.nodes.is_some()
            || self.others.iter().any(Option::is_some)
    }

    /// The limit on slot `k` of [`Resources`].
    fn of(&self, k: usize) -> Option<i64> {
        match k {
            CPU => self.cpu_millis,
            MEMORY => self.memory_bytes,
            _ => self.others[k],
        }
    }
}

/// What counts against [`Limits`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub nodes: i64,
    /// The other resources, by slot of [`Resources`]; the cpu and memory slots are unused here.
    pub others: [i64; DIMS],
}

impl Usage {
    /// Counts one more node of `capacity`.
    pub fn add_node(&mut self, capacity: &Resources) {
        self.add(capacity, 1);
    }

    pub(super) fn add(&mut self, capacity: &Resources, nodes: i64) {
        for k in 0..DIMS {
            *self.slot(k) += capacity.0[k] * nodes;
        }
        self.nodes += nodes;
    }

    pub(super) fn remove(&mut self, capacity: &Resources) {
        for k in 0..DIMS {
            *self.slot(k) -= capacity.0[k];
        }
        self.nodes -= 1;
    }

    fn slot(&mut self, k: usize) -> &mut i64 {
        match k {
            CPU => &mut self.cpu_millis,
            MEMORY => &mut self.memory_bytes,
            _ => &mut self.others[k],
        }
    }

    fn get(&self, k: usize) -> i64 {
        match k {
            CPU => self.cpu_millis,
            MEMORY => self.memory_bytes,
            _ => self.others[k],
        }
    }

    /// How many more nodes of `capacity` fit under `limits`.
    pub(super) fn room(&self, limits: &Limits, capacity: &Resources) -> i64 {
        let mut room = i64::MAX;
        for k in 0..DIMS {
            if let Some(limit) = limits.of(k)
                && capacity.0[k] > 0
            {
                room = room.min((limit - self.get(k)).max(0) / capacity.0[k]);
            }
        }
        if let Some(nodes) = limits.nodes {
            room = room.min((nodes - self.nodes).max(0));
        }
        room
    }

    /// What is left under `limits`, shared evenly by `nodes` nodes: the extra capacity each may
    /// take over its chosen type (`i64::MAX` where there is no limit).
    pub(super) fn share_of_rest(&self, limits: &Limits, nodes: usize) -> Resources {
        let mut share = Resources([i64::MAX; DIMS]);
        let n = nodes.max(1) as i64;
        for k in 0..DIMS {
            if let Some(limit) = limits.of(k) {
                share.0[k] = (limit - self.get(k)).max(0) / n;
            }
        }
        share
    }
}

/// Whether `alternative` adds no more than `share` to `chosen` in the limited dimensions.
pub(super) fn within_share(chosen: &Resources, alternative: &Resources, share: &Resources) -> bool {
    (0..DIMS).all(|k| alternative.0[k] - chosen.0[k] <= share.0[k])
}

impl Solver<'_> {
    /// The limits packing holds `pool` to: its own, or a fair round's share of them.
    pub(super) fn limits_of(&self, pool: usize) -> Limits {
        match self.ceiling {
            Some((p, ceiling)) if p == pool => ceiling,
            _ => self.input.pools[pool].limits,
        }
    }

    /// `pool`'s limits lowered to what it uses now plus an even share (one of `buckets`) of
    /// what is left under each.
    pub(super) fn fair_ceiling(&self, pool: usize, buckets: usize) -> Limits {
        let limits = self.input.pools[pool].limits;
        let used = self.usage[pool];
        let n = buckets.max(1) as i64;
        let share = |limit: Option<i64>, used: i64| limit.map(|l| used + (l - used).max(0) / n);
        let mut others = [None; DIMS];
        for k in 0..DIMS {
            others[k] = share(limits.others[k], used.others[k]);
        }
        Limits {
            cpu_millis: share(limits.cpu_millis, used.cpu_millis),
            memory_bytes: share(limits.memory_bytes, used.memory_bytes),
            nodes: share(limits.nodes, used.nodes),
            others,
        }
    }

    /// The cheapest type and offering (same zone and capacity type) that holds `d`'s pods, that
    /// every group on it may use and that one more node of fits under the pool's limits; `None`
    /// when only its own type does, or none.
    pub(super) fn right_size(&self, d: &Draft) -> Option<(usize, usize)> {
        let catalog = self.input.catalog;
        let chosen = &catalog.types[d.type_idx].offerings[d.offering];
        let limits = &self.limits_of(d.pool);
        let mut best: Option<(f64, i64, usize, usize)> = None;
        for (t, it) in catalog.types.iter().enumerate() {
            let Some((room, capacity)) = self.type_room[d.pool][t] else {
                continue;
            };
            if !d.used.fits_in(&room) || self.usage[d.pool].room(limits, &capacity) < 1 {
                continue;
            }
            let mask = d.groups.iter().fold(u64::MAX, |m, g| {
                m & self.groups[*g]
                    .pools
                    .iter()
                    .find(|(p, _)| *p == d.pool)
                    .map_or(0, |(_, c)| c.masks[t])
            });
            for (o, off) in it.offerings.iter().enumerate() {
                if mask & (1 << o) == 0
                    || !off.available
                    || off.zone != chosen.zone
                    || off.capacity_type != chosen.capacity_type
                {
                    continue;
                }
                let key = (off.price, capacity.0[CPU]);
                if best.is_none_or(|(p, c, _, _)| key.0 < p || (key.0 == p && key.1 < c)) {
                    best = Some((key.0, key.1, t, o));
                }
            }
        }
        best.map(|(_, _, t, o)| (t, o))
            .filter(|&(t, o)| (t, o) != (d.type_idx, d.offering))
    }

    /// `draft` as a limited pool charges it: moved to its [`Self::right_size`] type, so the
    /// limit counts what will be launched. Unlimited pools keep the packed type (and its spare
    /// room for the tails phase).
    pub(super) fn sized_for_limits(&self, draft: &Draft) -> Draft {
        if !self.input.pools[draft.pool].limits.any() {
            return draft.clone();
        }
        let mut d = draft.clone();
        if let Some((t, o)) = self.right_size(draft) {
            d.type_idx = t;
            d.offering = o;
            d.room = self.type_room[d.pool][t]
                .expect("right_size uses fitting types")
                .0;
        }
        d
    }
}

/// Rounds of [`Solver::retry_limited`] at most.
const RETRY_ROUNDS: usize = 4;

impl Solver<'_> {
    /// Another round for the pods a pool's limits left out (and those the zone repair then took
    /// off): the repair gives back the room of the pods it removed, and a new zone choice from
    /// what is now placed keeps spreads level, so more of them fit. A round that places no more
    /// pods is undone, and the rounds stop.
    pub(super) fn retry_limited(&mut self, base_counts: &[Vec<i64>], base_anti: &[Vec<i64>]) {
        if !self.input.pools.iter().any(|p| p.limits.any()) {
            return;
        }
        for _ in 0..RETRY_ROUNDS {
            if self.limited_out.is_empty() {
                return;
            }
            let saved = (
                self.drafts.clone(),
                self.usage.clone(),
                self.placements.clone(),
                self.existing.clone(),
                self.unschedulable.clone(),
                self.z_counts.clone(),
                self.z_anti.clone(),
                self.limited_out.clone(),
            );
            let mut retry = std::mem::take(&mut self.limited_out);
            retry.sort_unstable();
            retry.dedup();
            self.unschedulable
                .retain(|u| retry.binary_search(&u.pod_index).is_err());
            for p in retry {
                let g = self.group_of(p).expect("only grouped pods are packed");
                self.groups[g].pods.push(p);
            }
            let bucketed = self.assign_zones();
            // Zone by zone, each bucket gets an even share of the room left, so the last zones
            // are not the ones left short (which the zone repair would then even out by taking
            // pods off the others).
            self.fair_share = true;
            self.pack(bucketed);
            self.fair_share = false;
            self.enforce_zone_rules(base_counts, base_anti);
            if self.unschedulable.len() >= saved.4.len() {
                (
                    self.drafts,
                    self.usage,
                    self.placements,
                    self.existing,
                    self.unschedulable,
                    self.z_counts,
                    self.z_anti,
                    self.limited_out,
                ) = saved;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(cpu: i64, mem: i64) -> Resources {
        let mut r = Resources::ZERO;
        r.0[CPU] = cpu;
        r.0[MEMORY] = mem;
        r
    }

    #[test]
    fn room_counts_whole_nodes_under_every_limit() {
        let limits = Limits {
            cpu_millis: Some(10_000),
            memory_bytes: Some(64),
            nodes: Some(4),
            ..Default::default()
        };
        let used = Usage {
            cpu_millis: 2_000,
            memory_bytes: 16,
            nodes: 1,
            ..Default::default()
        };
        // cpu: 8000 / 2000 = 4, memory: 48 / 8 = 6, nodes: 3.
        assert_eq!(used.room(&limits, &res(2_000, 8)), 3);
        // cpu: 8000 / 3000 = 2.
        assert_eq!(used.room(&limits, &res(3_000, 8)), 2);
        // memory: 48 / 64 = 0.
        assert_eq!(used.room(&limits, &res(1_000, 64)), 0);
        assert_eq!(
            Usage::default().room(&Limits::default(), &res(1, 1)),
            i64::MAX
        );
    }

    #[test]
    fn limits_on_devices_count_like_cpu() {
        use crate::model::resources::NVIDIA_GPU;
        let mut limits = Limits::default();
        limits.others[NVIDIA_GPU] = Some(4);
        let mut used = Usage::default();
        let mut eight_gpus = res(96_000, 1 << 40);
        eight_gpus.0[NVIDIA_GPU] = 8;
        let mut one_gpu = res(4_000, 16 << 30);
        one_gpu.0[NVIDIA_GPU] = 1;
        assert!(limits.any());
        assert_eq!(used.room(&limits, &eight_gpus), 0);
        assert_eq!(used.room(&limits, &one_gpu), 4);
        // A type without the device is not bound by its limit.
        assert_eq!(used.room(&limits, &res(2_000, 1 << 30)), i64::MAX);
        used.add_node(&one_gpu);
        used.add_node(&one_gpu);
        assert_eq!(used.room(&limits, &one_gpu), 2);
        assert_eq!(used.share_of_rest(&limits, 2).0[NVIDIA_GPU], 1);
        used.remove(&one_gpu);
        assert_eq!(used.others[NVIDIA_GPU], 1);
    }

    #[test]
    fn the_rest_is_shared_evenly_and_never_negative() {
        let limits = Limits {
            cpu_millis: Some(10_000),
            ..Default::default()
        };
        let used = Usage {
            cpu_millis: 7_000,
            nodes: 3,
            ..Default::default()
        };
        let share = used.share_of_rest(&limits, 3);
        assert_eq!(share.0[CPU], 1_000);
        assert_eq!(share.0[MEMORY], i64::MAX);
        assert!(within_share(&res(2_000, 8), &res(3_000, 1 << 40), &share));
        assert!(!within_share(&res(2_000, 8), &res(4_000, 8), &share));
        let over = Usage {
            cpu_millis: 12_000,
            ..used
        };
        let share = over.share_of_rest(&limits, 3);
        assert_eq!(share.0[CPU], 0);
        assert!(within_share(&res(2_000, 8), &res(1_000, 8), &share));
        assert!(!within_share(&res(2_000, 8), &res(2_001, 8), &share));
    }
}
