//! Phase 1 and 2 of the planner: pods with equal constraints form groups, and each group gets the
//! pools (and their compatible offerings) it may use.

use super::*;

impl Solver<'_> {
    pub(super) fn build_groups(&mut self) {
        let pods = self.input.pods;
        // Label keys any selector reads: only these distinguish pods for grouping.
        let mut read_keys: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
        for p in pods {
            let c = &p.constraints;
            for s in c
                .spreads
                .iter()
                .map(|s| &s.selector)
                .chain(c.affinity.iter().map(|t| &t.selector))
                .chain(c.anti_affinity.iter().map(|t| &t.selector))
            {
                read_keys.extend(s.keys());
            }
        }
        // Running pods' anti-affinity selects pods of the batch too.
        for node in self.input.nodes {
            for t in node.pods.iter().flat_map(|p| &p.anti_affinity) {
                read_keys.extend(t.selector.keys());
            }
        }
        let mut index: HashMap<Constraints, usize> = HashMap::new();
        for (i, p) in pods.iter().enumerate() {
            if let Some(reason) = &p.invalid {
                self.unschedulable(i, reason.clone());
                continue;
            }
            let mut c = p.constraints.clone();
            c.labels.retain(|k, _| read_keys.contains(k.as_str()));
            let next = self.groups.len();
            let g = *index.entry(c.clone()).or_insert(next);
            if g == next {
                self.groups.push(Group {
                    c,
                    pods: Vec::new(),
                    pools: Vec::new(),
                    pool_problems: Vec::new(),
                    zone_bound: false,
                    h_inc: Vec::new(),
                    h_spread: Vec::new(),
                    h_anti: Vec::new(),
                    h_aff: Vec::new(),
                    bundled: false,
                    offer_key: String::new(),
                });
            }
            self.groups[g].pods.push(i);
            self.pod_group[i] = g;
        }
        // Pools, in weight order.
        let mut pool_order: Vec<usize> = (0..self.input.pools.len()).collect();
        pool_order.sort_by(|a, b| {
            let (pa, pb) = (&self.input.pools[*a], &self.input.pools[*b]);
            pb.weight
                .cmp(&pa.weight)
                .then_with(|| pa.name.cmp(&pb.name))
        });
        let mut compat_cache: HashMap<
            (usize, Vec<Requirement>, Vec<Vec<Requirement>>),
            std::rc::Rc<Compat>,
        > = HashMap::new();
        for g in 0..self.groups.len() {
            let mut problems = Vec::new();
            let mut usable = Vec::new();
            for &p in &pool_order {
                let pool = &self.input.pools[p];
                let group = &self.groups[g];
                if pool.replicas.is_some() {
                    problems.push(format!(
                        "nodepool {} is static (spec.replicas): it keeps its node count, and pods go to its nodes once they exist",
                        pool.name
                    ));
                    continue;
                }
                if let Some(taint) = untolerated(&pool.taints, &group.c) {
                    problems.push(format!(
                        "nodepool {}: taint {} not tolerated",
                        pool.name,
                        describe_taint(taint)
                    ));
                    continue;
                }
                let key = (
                    p,
                    group.c.node_selector.clone(),
                    group.c.node_affinity.clone(),
                );
                let compat = compat_cache
                    .entry(key)
                    .or_insert_with(|| {
                        std::rc::Rc::new(compat(self.input.catalog, pool, &self.zones, &group.c))
                    })
                    .clone();
                if compat.any {
                    usable.push((p, compat));
                } else {
                    problems.push(explain_incompatible(self.input.catalog, pool, &group.c));
                }
            }
            self.groups[g].pools = usable;
            self.groups[g].pool_problems = problems;
            let c = &self.groups[g].c;
            let offer_reqs: Vec<&Requirement> = c
                .node_selector
                .iter()
                .chain(c.node_affinity.iter().flatten())
                .filter(|r| labels::is_offering_label(&r.key))
                .collect();
            if !offer_reqs.is_empty() {
                self.groups[g].offer_key = format!("{offer_reqs:?}");
            }
        }
        // Topology counters.
        for g in 0..self.groups.len() {
            let c = self.groups[g].c.clone();
            for s in &c.spreads {
                let own = s.selector.matches(&c.namespace, &c.labels);
                match s.topology {
                    Topology::Hostname => {
                        let id = intern(&mut self.h_counters, &s.selector);
                        self.groups[g].h_spread.push((id, s.max_skew, own));
                    }
                    Topology::Zone => {
                        intern(&mut self.z_counters, &s.selector);
                        self.groups[g].zone_bound = true;
                    }
                }
            }
            for t in &c.anti_affinity {
                let own = t.selector.matches(&c.namespace, &c.labels);
                match t.topology {
                    Topology::Hostname => {
                        let id = intern(&mut self.h_counters, &t.selector);
                        self.groups[g].h_anti.push((id, own));
                    }
                    Topology::Zone => {
                        intern(&mut self.z_counters, &t.selector);
                        self.groups[g].zone_bound = true;
                    }
                }
            }
            for t in &c.affinity {
                let own = t.selector.matches(&c.namespace, &c.labels);
                match t.topology {
                    Topology::Hostname if own => self.groups[g].bundled = true,
                    Topology::Hostname => {
                        let id = intern(&mut self.h_counters, &t.selector);
                        self.groups[g].h_aff.push(id);
                    }
                    Topology::Zone => {
                        intern(&mut self.z_counters, &t.selector);
                        self.groups[g].zone_bound = true;
                    }
                }
            }
        }
        // Zone anti-affinity of running pods binds the pods it selects to the other zones.
        for node in self.input.nodes {
            for t in node.pods.iter().flat_map(|p| &p.anti_affinity) {
                if t.topology == Topology::Zone {
                    intern(&mut self.z_counters, &t.selector);
                }
            }
        }
        for g in 0..self.groups.len() {
            let c = &self.groups[g].c;
            let h_inc: Vec<usize> = (0..self.h_counters.len())
                .filter(|i| self.h_counters[*i].matches(&c.namespace, &c.labels))
                .collect();
            let selected_by_zone = self
                .z_counters
                .iter()
                .any(|s| s.matches(&c.namespace, &c.labels));
            self.groups[g].h_inc = h_inc;
            self.groups[g].zone_bound |= selected_by_zone;
        }
        self.z_counts = vec![vec![0; self.zones.len()]; self.z_counters.len()];
        self.z_anti = vec![vec![0; self.zones.len()]; self.z_counters.len()];
        // Existing pods count for topology.
        for node in self.input.nodes {
            let zone = node
                .labels
                .get(labels::ZONE)
                .and_then(|z| self.zones.iter().position(|x| x == z));
            let mut counters = Vec::new();
            let mut repels = Vec::new();
            for pod in &node.pods {
                for t in &pod.anti_affinity {
                    match (t.topology, zone) {
                        (Topology::Hostname, _) => repels.push(t.selector.clone()),
                        (Topology::Zone, Some(z)) => {
                            let id = intern(&mut self.z_counters, &t.selector);
                            self.z_anti[id][z] += 1;
                        }
                        (Topology::Zone, None) => {}
                    }
                }
                for (i, s) in self.h_counters.iter().enumerate() {
                    if s.matches(&pod.namespace, &pod.labels) {
                        match counters.iter_mut().find(|(c, _)| *c == i) {
                            Some((_, n)) => *n += 1,
                            None => counters.push((i, 1)),
                        }
                    }
                }
                if let Some(z) = zone {
                    for (i, s) in self.z_counters.iter().enumerate() {
                        if s.matches(&pod.namespace, &pod.labels) {
                            self.z_counts[i][z] += 1;
                        }
                    }
                }
            }
            self.existing.push(ExistingState {
                free: node.allocatable.saturating_sub(&node.requested),
                zone,
                counters,
                repels,
            });
        }
        // Groups without any usable pool are unschedulable now.
        for g in 0..self.groups.len() {
            if self.groups[g].pools.is_empty() && self.input.nodes.is_empty() {
                let reason = no_pool_reason(&self.groups[g], self.input.pools);
                for p in self.groups[g].pods.clone() {
                    self.unschedulable(p, reason.clone());
                }
                self.groups[g].pods.clear();
            }
        }
    }

    // --- 3. existing nodes -------------------------------------------------------------------
}

pub(super) fn intern(list: &mut Vec<Selector>, s: &Selector) -> usize {
    match list.iter().position(|x| x == s) {
        Some(i) => i,
        None => {
            list.push(s.clone());
            list.len() - 1
        }
    }
}

pub(super) fn sort_by_size(pods: &mut [usize], all: &[PendingPod]) {
    pods.sort_by(|a, b| all[*b].requests.cmp(&all[*a].requests).then(a.cmp(b)));
}

pub(super) fn describe_taint(t: &Taint) -> String {
    match &t.value {
        Some(v) => format!("{}={}:{}", t.key, v, t.effect.as_str()),
        None => format!("{}:{}", t.key, t.effect.as_str()),
    }
}
