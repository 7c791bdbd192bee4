//! A cluster in memory for consolidation figures: workloads that scale with the time of day,
//! the planner launching for pending pods, empty nodes removed, and consolidation (the pure
//! core, as the live controller runs it: first round, budgets of 10 %) moving pods. No API, no
//! EC2: only decisions, and the dollars, moves and evictions they lead to.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::Pod;
use nodewright::config::Config;
use nodewright::model::Catalog;
use nodewright::model::labels;
use nodewright::model::resources::{CPU, MEMORY};
use nodewright::scheduling::consolidation::{Candidate, Method, Settings, World, plan};
use nodewright::scheduling::solver::BoundPod;
use nodewright::scheduling::{ExistingNode, Input, PendingPod, Pool, solve};

pub const POOL: &str = "general";
const ZONE: &str = "us-east-1a";

/// One on-demand pool over general, compute and memory families, large to 4xlarge.
pub fn config() -> Config {
    let text = format!(
        r#"apiVersion: karpenter.sh/v1
kind: NodePool
metadata: {{name: {POOL}}}
spec:
  disruption: {{consolidationPolicy: WhenEmptyOrUnderutilized, consolidateAfter: 10m}}
  template:
    spec:
      nodeClassRef: {{group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}}
      requirements:
        - {{key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}}
        - {{key: topology.kubernetes.io/zone, operator: In, values: [{ZONE}]}}
        - {{key: karpenter.k8s.aws/instance-family, operator: In, values: [m5, m5a, m6i, m6a, m7i, c5, c6i, c6a, r5, r6i]}}
        - {{key: karpenter.k8s.aws/instance-size, operator: In, values: [large, xlarge, 2xlarge, 4xlarge]}}
---
apiVersion: karpenter.k8s.aws/v1
kind: EC2NodeClass
metadata: {{name: default}}
spec:
  amiSelectorTerms: [{{alias: al2023@latest}}]
  role: R
  subnetSelectorTerms: [{{tags: {{a: b}}}}]
  securityGroupSelectorTerms: [{{tags: {{a: b}}}}]
"#
    );
    Config::parse(&text, "consolidate-bench.yaml").expect("bench config")
}

/// splitmix64: a small deterministic generator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A Deployment: its pod template and how its replicas follow the day.
pub struct Workload {
    pub name: String,
    pub template: PendingPod,
    pub base: f64,
    /// Share of `base` the daily swing adds or takes.
    pub swing: f64,
    /// Hours by which its peak is shifted.
    pub phase: f64,
}

pub fn workloads(rng: &mut Rng, count: usize) -> Vec<Workload> {
    // Requests from small web pods to large memory-heavy ones.
    let shapes = [
        ("250m", "512Mi"),
        ("500m", "1Gi"),
        ("1", "2Gi"),
        ("1", "6Gi"),
        ("2", "4Gi"),
        ("750m", "3Gi"),
        ("1500m", "2Gi"),
        ("300m", "4Gi"),
    ];
    (0..count)
        .map(|i| {
            let (cpu, memory) = shapes[i % shapes.len()];
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("w{i}"), "namespace": "app", "labels": {"app": format!("w{i}")}},
                "spec": {"containers": [{"name": "c", "image": "i",
                    "resources": {"requests": {"cpu": cpu, "memory": memory}}}]},
            }))
            .expect("pod");
            Workload {
                name: format!("w{i}"),
                template: PendingPod::from_pod(&pod),
                base: 6.0 + rng.below(30) as f64,
                swing: 0.3 + 0.5 * rng.unit(),
                phase: rng.unit() * 6.0,
            }
        })
        .collect()
}

struct SimNode {
    name: String,
    instance_type: String,
    price: f64,
    node: ExistingNode,
    /// Keys of its pods.
    pods: Vec<String>,
    last_change: usize,
}

/// What a policy cost over the run.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub dollars: f64,
    pub moves: usize,
    pub deletes: usize,
    pub replaces: usize,
    pub evictions: usize,
    pub launched: usize,
    pub node_steps: usize,
    pub decide_secs: f64,
    pub decisions: usize,
}

/// The run: `steps` of `step_minutes`, consolidation with `settings` (`None`: empty nodes only).
pub struct Sim<'a> {
    pub catalog: &'a Catalog,
    pub pools: &'a [Pool],
    pub workloads: &'a [Workload],
    pub step_minutes: f64,
    pub seed: u64,
}

/// A policy: the thresholds and the stabilization window (in steps).
pub struct Policy {
    pub settings: Settings,
    pub window: usize,
}

impl Sim<'_> {
    pub fn run(&self, steps: usize, policy: Option<&Policy>) -> Outcome {
        let mut history: std::collections::VecDeque<nodewright::model::Resources> =
            std::collections::VecDeque::new();
        let mut rng = Rng::new(self.seed);
        let mut nodes: Vec<SimNode> = Vec::new();
        let mut replicas: Vec<Vec<String>> = vec![Vec::new(); self.workloads.len()];
        let mut serial = 0usize;
        let mut node_serial = 0usize;
        let mut out = Outcome::default();
        let consolidate_after = 1usize;
        for t in 0..steps {
            let hour = t as f64 * self.step_minutes / 60.0;
            // 1. Scale each workload; the ReplicaSet picks the pods that go (here at random).
            let mut pending: Vec<PendingPod> = Vec::new();
            for (w, wl) in self.workloads.iter().enumerate() {
                let day = (std::f64::consts::TAU * (hour + wl.phase) / 24.0).sin();
                let noise = (rng.unit() - 0.5) * 0.1;
                let want = (wl.base * (1.0 + wl.swing * day + noise)).round().max(1.0) as usize;
                while replicas[w].len() > want {
                    let i = rng.below(replicas[w].len());
                    let key = replicas[w].swap_remove(i);
                    if let Some(n) = nodes.iter_mut().find(|n| n.pods.contains(&key)) {
                        n.pods.retain(|p| p != &key);
                        rebuild(n, self.workloads);
                        n.last_change = t;
                    }
                }
                while replicas[w].len() < want {
                    serial += 1;
                    let key = format!("app/{}-{serial}", wl.name);
                    replicas[w].push(key.clone());
                    let mut p = wl.template.clone();
                    p.key = key;
                    pending.push(p);
                }
            }
            // 2. Provision for the pending pods.
            if !pending.is_empty() {
                let existing: Vec<ExistingNode> = nodes.iter().map(|n| n.node.clone()).collect();
                let plan = solve(&Input {
                    pods: &pending,
                    pools: self.pools,
                    catalog: self.catalog,
                    nodes: &existing,
                });
                assert!(
                    plan.unschedulable.is_empty(),
                    "the pool holds every pod: {:?}",
                    plan.unschedulable.first()
                );
                for p in &plan.placements {
                    let n = &mut nodes[p.node_index];
                    n.pods.push(pending[p.pod_index].key.clone());
                    rebuild(n, self.workloads);
                    n.last_change = t;
                }
                for planned in &plan.nodes {
                    node_serial += 1;
                    out.launched += 1;
                    let mut n = self.new_node(
                        format!("n{node_serial}"),
                        &planned.instance_type,
                        planned.price_per_hour,
                        t,
                    );
                    n.pods = planned
                        .pod_indices
                        .iter()
                        .map(|&i| pending[i].key.clone())
                        .collect();
                    rebuild(&mut n, self.workloads);
                    nodes.push(n);
                }
            }
            // 3. Empty nodes go.
            nodes.retain(|n| !n.pods.is_empty());
            // 4. Consolidation.
            let now = nodes
                .iter()
                .fold(nodewright::model::Resources::ZERO, |acc, n| {
                    acc + n.node.requested
                });
            history.push_back(now);
            if let Some(policy) = policy {
                while history.len() > policy.window + 1 {
                    history.pop_front();
                }
                let mut peak = now;
                for h in &history {
                    for d in [CPU, MEMORY] {
                        peak.0[d] = peak.0[d].max(h.0[d]);
                    }
                }
                let started = std::time::Instant::now();
                let mut world = self.world(&nodes, t, consolidate_after);
                if policy.window > 0 {
                    world
                        .reserve
                        .insert(POOL.to_owned(), peak.saturating_sub(&now));
                }
                let report = plan(&world, &policy.settings, 1);
                out.decide_secs += started.elapsed().as_secs_f64();
                out.decisions += 1;
                for mv in &report.moves {
                    out.moves += 1;
                    out.evictions += mv.evicted.len();
                    let gone: HashSet<&str> = mv.nodes.iter().map(|n| n.node.as_str()).collect();
                    let mut new_node = match (&mv.method, &mv.replacement) {
                        (Method::Replace, Some(r)) => {
                            out.replaces += 1;
                            node_serial += 1;
                            Some(self.new_node(
                                format!("n{node_serial}"),
                                &r.instance_type,
                                r.price_per_hour,
                                t,
                            ))
                        }
                        _ => {
                            out.deletes += 1;
                            None
                        }
                    };
                    nodes.retain(|n| !gone.contains(n.name.as_str()));
                    for (pod, dest) in &mv.destinations {
                        match nodes.iter_mut().find(|n| &n.name == dest) {
                            Some(n) => {
                                n.pods.push(pod.clone());
                                rebuild(n, self.workloads);
                                n.last_change = t;
                            }
                            None => {
                                if let Some(n) = new_node.as_mut() {
                                    n.pods.push(pod.clone());
                                }
                            }
                        }
                    }
                    if let Some(mut n) = new_node {
                        out.launched += 1;
                        rebuild(&mut n, self.workloads);
                        nodes.push(n);
                    }
                }
            }
            // 5. The bill.
            out.node_steps += nodes.len();
            out.dollars += nodes.iter().map(|n| n.price).sum::<f64>() * self.step_minutes / 60.0;
        }
        out
    }

    fn new_node(&self, name: String, instance_type: &str, price: f64, t: usize) -> SimNode {
        let it = self.catalog.get(instance_type).expect("planned type");
        let pool = &self.pools[0];
        let mut node_labels: BTreeMap<String, String> = pool.labels.clone();
        for (k, v) in it.aws_labels() {
            node_labels.insert(k.to_owned(), v);
        }
        for k in [labels::ARCH, labels::OS] {
            if let Some(v) = it.label(k) {
                node_labels.insert(k.to_owned(), v);
            }
        }
        node_labels.insert(labels::NODEPOOL.into(), POOL.into());
        node_labels.insert(labels::ZONE.into(), ZONE.into());
        node_labels.insert(labels::INSTANCE_TYPE.into(), instance_type.into());
        node_labels.insert(labels::CAPACITY_TYPE.into(), "on-demand".into());
        SimNode {
            node: ExistingNode {
                name: name.clone(),
                labels: node_labels,
                taints: pool.taints.clone(),
                allocatable: it.allocatable(&pool.kubelet),
                requested: pool.daemon_overhead,
                pods: Vec::new(),
                in_flight: false,
            },
            name,
            instance_type: instance_type.to_owned(),
            price,
            pods: Vec::new(),
            last_change: t,
        }
    }

    fn world(&self, nodes: &[SimNode], t: usize, after: usize) -> World<'_> {
        let candidates = nodes
            .iter()
            .filter(|n| t >= n.last_change + after)
            .map(|n| Candidate {
                node: n.name.clone(),
                claim: None,
                pool: POOL.into(),
                instance_type: n.instance_type.clone(),
                zone: ZONE.into(),
                capacity_type: nodewright::model::CapacityType::OnDemand,
                price_per_hour: n.price,
                pods: n
                    .pods
                    .iter()
                    .map(|k| {
                        let mut p = template_of(k, self.workloads).clone();
                        p.key = k.clone();
                        p
                    })
                    .collect(),
                blocked: None,
            })
            .collect();
        // Karpenter's default budget: 10 % of the pool's nodes, rounded up.
        let budget = nodes.len().div_ceil(10);
        let budgets: BTreeMap<String, usize> = [(POOL.to_owned(), budget)].into();
        World {
            nodes: nodes.iter().map(|n| n.node.clone()).collect(),
            candidates,
            pending: Vec::new(),
            pools: self.pools,
            catalog: self.catalog,
            budget_limits: budgets.clone(),
            budgets,
            reserve: BTreeMap::new(),
        }
    }
}

fn template_of<'a>(key: &str, workloads: &'a [Workload]) -> &'a PendingPod {
    let name = key
        .strip_prefix("app/")
        .and_then(|k| k.rsplit_once('-'))
        .map(|(w, _)| w)
        .unwrap_or_default();
    &workloads
        .iter()
        .find(|w| w.name == name)
        .expect("a workload's pod")
        .template
}

/// The node's requests and pods from its pod keys.
fn rebuild(n: &mut SimNode, workloads: &[Workload]) {
    // The pool runs no DaemonSets here: requests are the pods' alone.
    let mut requested = nodewright::model::Resources::ZERO;
    let mut pods = Vec::with_capacity(n.pods.len());
    for k in &n.pods {
        let t = template_of(k, workloads);
        requested += t.requests;
        pods.push(BoundPod {
            namespace: t.constraints.namespace.clone(),
            labels: t.constraints.labels.clone(),
            anti_affinity: t.constraints.anti_affinity.clone(),
        });
    }
    n.node.requested = requested;
    n.node.pods = pods;
}

/// A cluster of `count` nodes each filled to a share of its CPU and memory drawn from `use_`,
/// for decision-time figures.
pub fn cluster(
    sim: &Sim<'_>,
    rng: &mut Rng,
    count: usize,
    use_: (f64, f64),
) -> (Vec<ExistingNode>, Vec<Candidate>) {
    let types = [
        "m5.xlarge",
        "m5.2xlarge",
        "c6i.2xlarge",
        "r5.xlarge",
        "m6a.4xlarge",
    ];
    let mut nodes = Vec::new();
    let mut candidates = Vec::new();
    let mut serial = 0;
    for i in 0..count {
        let it = types[i % types.len()];
        let price = sim
            .catalog
            .get(it)
            .and_then(|t| {
                t.offerings.iter().find(|o| {
                    o.zone == ZONE && o.capacity_type == nodewright::model::CapacityType::OnDemand
                })
            })
            .map(|o| o.price)
            .expect("priced");
        let mut n = sim.new_node(format!("n{i:05}"), it, price, 0);
        let target = use_.0 + (use_.1 - use_.0) * rng.unit();
        loop {
            let w = &sim.workloads[rng.below(sim.workloads.len())];
            let r = w.template.requests;
            let cpu_after = (n.node.requested.0[CPU] + r.0[CPU]) as f64;
            let mem_after = (n.node.requested.0[MEMORY] + r.0[MEMORY]) as f64;
            if cpu_after > target * n.node.allocatable.0[CPU] as f64
                || mem_after > target * n.node.allocatable.0[MEMORY] as f64
            {
                break;
            }
            serial += 1;
            n.pods.push(format!("app/{}-{serial}", w.name));
            rebuild(&mut n, sim.workloads);
        }
        candidates.push(Candidate {
            node: n.name.clone(),
            claim: None,
            pool: POOL.into(),
            instance_type: it.into(),
            zone: ZONE.into(),
            capacity_type: nodewright::model::CapacityType::OnDemand,
            price_per_hour: price,
            pods: n
                .pods
                .iter()
                .map(|k| {
                    let mut p = template_of(k, sim.workloads).clone();
                    p.key = k.clone();
                    p
                })
                .collect(),
            blocked: None,
        });
        nodes.push(n.node);
    }
    (nodes, candidates)
}
