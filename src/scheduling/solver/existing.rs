//! Phase 3: existing and in-flight nodes take what they can, first fit, every constraint checked.

use super::*;

impl Solver<'_> {
    pub(super) fn place_on_existing(&mut self) {
        if self.input.nodes.is_empty() {
            return;
        }
        for g in 0..self.groups.len() {
            // A hostname self-affinity group travels together: onto the node already running
            // pods it selects, if there is one, else onto one new node.
            if self.groups[g].bundled {
                self.place_bundle_on_existing(g);
                continue;
            }
            let mut pods = std::mem::take(&mut self.groups[g].pods);
            sort_by_size(&mut pods, self.input.pods);
            let mut left = Vec::new();
            for p in pods {
                match self.existing_fit(g, p) {
                    Some(n) => self.place_existing(g, p, n),
                    None => left.push(p),
                }
            }
            if self.groups[g].pools.is_empty() {
                let reason = format!(
                    "no existing node has room for it and {}",
                    no_pool_reason(&self.groups[g], self.input.pools)
                );
                for p in left {
                    self.unschedulable(p, reason.clone());
                }
            } else {
                self.groups[g].pods = left;
            }
        }
    }

    pub(super) fn place_bundle_on_existing(&mut self, g: usize) {
        let group = &self.groups[g];
        let terms: Vec<&Selector> = group
            .c
            .affinity
            .iter()
            .filter(|t| t.topology == Topology::Hostname)
            .map(|t| &t.selector)
            .collect();
        let holders: Vec<usize> = (0..self.input.nodes.len())
            .filter(|n| {
                self.input.nodes[*n]
                    .pods
                    .iter()
                    .any(|p| terms.iter().all(|s| s.matches(&p.namespace, &p.labels)))
            })
            .collect();
        if holders.is_empty() {
            if group.pools.is_empty() {
                let reason = no_pool_reason(group, self.input.pools);
                for p in std::mem::take(&mut self.groups[g].pods) {
                    self.unschedulable(p, reason.clone());
                }
            }
            return;
        }
        let pods = std::mem::take(&mut self.groups[g].pods);
        let total = pods
            .iter()
            .fold(Resources::ZERO, |acc, p| acc + self.input.pods[*p].requests);
        let group = &self.groups[g];
        let target = holders.iter().copied().find(|&n| {
            let node = &self.input.nodes[n];
            let state = &self.existing[n];
            total.fits_in(&state.free)
                && !repelled(state, &group.c)
                && untolerated(&node.taints, &group.c).is_none()
                && node_labels_satisfy(&node.labels, &group.c)
        });
        match target {
            Some(n) => {
                for p in pods {
                    self.place_existing(g, p, n);
                }
            }
            None => {
                let names: Vec<&str> = holders
                    .iter()
                    .map(|n| self.input.nodes[*n].name.as_str())
                    .collect();
                let reason = format!(
                    "pod affinity on {} requires the node already running pods it selects ({}), and it cannot take the group ({})",
                    labels::HOSTNAME,
                    names.join(", "),
                    total
                );
                for p in pods {
                    self.unschedulable(p, reason.clone());
                }
            }
        }
    }

    pub(super) fn existing_fit(&self, g: usize, p: usize) -> Option<usize> {
        let group = &self.groups[g];
        let req = self.input.pods[p].requests;
        (0..self.input.nodes.len()).find(|&n| {
            let node = &self.input.nodes[n];
            let state = &self.existing[n];
            req.fits_in(&state.free)
                && untolerated(&node.taints, &group.c).is_none()
                && node_labels_satisfy(&node.labels, &group.c)
                && self.hostname_room(g, &state.counters) > 0
                && !repelled(state, &group.c)
                && state
                    .zone
                    .is_none_or(|z| self.zone_allows(g, z, true).is_ok())
                && (state.zone.is_some() || !group.zone_bound)
        })
    }

    pub(super) fn place_existing(&mut self, g: usize, p: usize, n: usize) {
        let req = self.input.pods[p].requests;
        let state = &mut self.existing[n];
        state.free -= req;
        for &c in &self.groups[g].h_inc {
            match state.counters.iter_mut().find(|(x, _)| *x == c) {
                Some((_, v)) => *v += 1,
                None => state.counters.push((c, 1)),
            }
        }
        if let Some(z) = state.zone {
            self.count_zone(g, z);
        }
        self.placements.push(Placement {
            pod: self.input.pods[p].key.clone(),
            node: self.input.nodes[n].name.clone(),
            pod_index: p,
            node_index: n,
        });
    }

    /// How many pods of group `g` a node with these hostname counters can still take.
    pub(super) fn hostname_room(&self, g: usize, counters: &[(usize, i64)]) -> i64 {
        let count = |c: usize| {
            counters
                .iter()
                .find(|(x, _)| *x == c)
                .map_or(0, |(_, n)| *n)
        };
        let group = &self.groups[g];
        let mut room = i64::MAX;
        for &(c, skew, own) in &group.h_spread {
            if own {
                room = room.min(skew - count(c));
            } else if count(c) > skew {
                room = 0;
            }
        }
        for &(c, own) in &group.h_anti {
            if count(c) > 0 {
                room = 0;
            } else if own {
                room = room.min(1);
            }
        }
        for &c in &group.h_aff {
            if count(c) == 0 {
                room = 0;
            }
        }
        room.max(0)
    }

    // --- 4. zones ----------------------------------------------------------------------------
}

/// Whether a pod running on the node has hostname anti-affinity to pods like these.
fn repelled(state: &ExistingState, c: &Constraints) -> bool {
    state
        .repels
        .iter()
        .any(|s| s.matches(&c.namespace, &c.labels))
}
