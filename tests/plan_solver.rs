//! Tests of the capacity planner (`nodewright::scheduling::solver`): one table of cases per
//! constraint family, each case asserting concrete outcomes, and property tests on random
//! workloads against the embedded us-east-1 catalog.
//!
//! Every plan, in the tables and in the properties, also goes through [`check_plan`], which
//! checks what must hold of any plan: each pod accounted for once, nodes not over allocatable,
//! node labels and taints compatible with their pods, topology rules, prices, alternatives and
//! pool limits.
//!
//! Pods are built as Kubernetes JSON and read with `PendingPod::from_pod`, the planner's real
//! reading path.
//!
//! Cases commented "Found by the properties" are minimal reproductions of planner bugs the
//! property tests found; they fail until the planner is fixed.
//!
//! Run with `cargo test --release --test plan_solver` (the solver is slow unoptimised).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Pod;
use proptest::prelude::*;
use serde_json::{Value, json};

use nodewright::cloud::catalog::embedded;
use nodewright::config::PricingSpec;
use nodewright::model::catalog::{Arch, KubeletSettings, labels};
use nodewright::model::resources::{AMD_GPU, CPU, EPHEMERAL, MEMORY, NVIDIA_GPU, PODS};
use nodewright::model::{
    CapacityType, Catalog, InstanceType, Operator, Requirement, Resources, Taint, TaintEffect,
};
use nodewright::scheduling::pod::{Constraints, PendingPod, Topology};
use nodewright::scheduling::solver::{
    BoundPod, ExistingNode, Input, Limits, MAX_ALTERNATIVES, Plan, PlannedNode, Pool, Usage, solve,
};

const GIB: i64 = 1 << 30;
const MIB: i64 = 1 << 20;

fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG
        .get_or_init(|| embedded("us-east-1", &PricingSpec::default()).expect("embedded catalog"))
}

// ---------------------------------------------------------------------------------------------
// Building pods (as Kubernetes JSON, read through PendingPod::from_pod)

#[derive(Clone, Debug)]
struct PodB {
    name: String,
    v: Value,
}

/// A pod in namespace `default` with one container requesting `cpu` and `memory`.
fn pod(name: &str, cpu: &str, memory: &str) -> PodB {
    PodB {
        name: name.to_owned(),
        v: json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "main", "image": "example",
                "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}
        }),
    }
}

fn push(slot: &mut Value, item: Value) {
    if slot.is_null() {
        *slot = json!([]);
    }
    slot.as_array_mut().expect("an array").push(item);
}

impl PodB {
    fn namespace(mut self, ns: &str) -> Self {
        self.v["metadata"]["namespace"] = json!(ns);
        self
    }

    fn label(mut self, key: &str, value: &str) -> Self {
        self.v["metadata"]["labels"][key] = json!(value);
        self
    }

    /// Adds a request (or replaces one) on the main container.
    fn request(mut self, name: &str, quantity: &str) -> Self {
        self.v["spec"]["containers"][0]["resources"]["requests"][name] = json!(quantity);
        self
    }

    fn limit(mut self, name: &str, quantity: &str) -> Self {
        self.v["spec"]["containers"][0]["resources"]["limits"][name] = json!(quantity);
        self
    }

    fn init_container(mut self, cpu: &str, memory: &str) -> Self {
        push(
            &mut self.v["spec"]["initContainers"],
            json!({"name": "init", "image": "example",
                "resources": {"requests": {"cpu": cpu, "memory": memory}}}),
        );
        self
    }

    fn node_selector(mut self, key: &str, value: &str) -> Self {
        self.v["spec"]["nodeSelector"][key] = json!(value);
        self
    }

    /// Adds a required node affinity term (ORed with the other terms).
    fn node_affinity(mut self, exprs: &[(&str, &str, &[&str])]) -> Self {
        let exprs: Vec<Value> = exprs
            .iter()
            .map(|(key, op, values)| {
                if values.is_empty() {
                    json!({"key": key, "operator": op})
                } else {
                    json!({"key": key, "operator": op, "values": values})
                }
            })
            .collect();
        push(
            &mut self.v["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"],
            json!({"matchExpressions": exprs}),
        );
        self
    }

    fn toleration(mut self, toleration: Value) -> Self {
        push(&mut self.v["spec"]["tolerations"], toleration);
        self
    }

    fn spread(mut self, topology_key: &str, max_skew: i32, when: &str, app: &str) -> Self {
        push(
            &mut self.v["spec"]["topologySpreadConstraints"],
            json!({"maxSkew": max_skew, "topologyKey": topology_key, "whenUnsatisfiable": when,
                "labelSelector": {"matchLabels": {"app": app}}}),
        );
        self
    }

    fn prefer_node(mut self, weight: i32, key: &str, values: &[&str]) -> Self {
        push(
            &mut self.v["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"],
            json!({"weight": weight, "preference": {"matchExpressions": [
                {"key": key, "operator": "In", "values": values}]}}),
        );
        self
    }

    fn prefer_anti_affinity(mut self, weight: i32, topology_key: &str, app: &str) -> Self {
        push(
            &mut self.v["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"],
            json!({"weight": weight, "podAffinityTerm": {"topologyKey": topology_key,
                "labelSelector": {"matchLabels": {"app": app}}}}),
        );
        self
    }

    fn spread_raw(mut self, constraint: Value) -> Self {
        push(&mut self.v["spec"]["topologySpreadConstraints"], constraint);
        self
    }

    fn affinity(mut self, topology_key: &str, app: &str) -> Self {
        push(
            &mut self.v["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"],
            json!({"topologyKey": topology_key, "labelSelector": {"matchLabels": {"app": app}}}),
        );
        self
    }

    fn anti_affinity(mut self, topology_key: &str, app: &str) -> Self {
        push(
            &mut self.v["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"],
            json!({"topologyKey": topology_key, "labelSelector": {"matchLabels": {"app": app}}}),
        );
        self
    }

    fn build(&self) -> PendingPod {
        let pod: Pod = serde_json::from_value(self.v.clone()).expect("a valid Pod");
        PendingPod::from_pod(&pod)
    }

    /// `n` replicas named `{name}-0` ...
    fn replicas(&self, n: usize) -> Vec<PendingPod> {
        (0..n)
            .map(|i| {
                let mut p = self.clone();
                p.v["metadata"]["name"] = json!(format!("{}-{i}", self.name));
                p.build()
            })
            .collect()
    }
}

fn one(p: PodB) -> Vec<PendingPod> {
    vec![p.build()]
}

const ZONE: &str = labels::ZONE;
const HOST: &str = labels::HOSTNAME;

// ---------------------------------------------------------------------------------------------
// Pools and existing nodes

fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
    Requirement {
        key: key.into(),
        operator,
        values: values.iter().map(|v| v.to_string()).collect(),
        min_values: None,
    }
}

fn pool(name: &str, requirements: Vec<Requirement>) -> Pool {
    Pool {
        name: name.into(),
        requirements,
        ..Default::default()
    }
}

fn both_capacity_types() -> Requirement {
    req(labels::CAPACITY_TYPE, Operator::In, &["spot", "on-demand"])
}

/// Categories c, m and r, spot and on-demand.
fn general() -> Pool {
    pool(
        "general",
        vec![
            both_capacity_types(),
            req(labels::INSTANCE_CATEGORY, Operator::In, &["c", "m", "r"]),
        ],
    )
}

/// Every instance type, spot and on-demand.
fn anything() -> Pool {
    pool("anything", vec![both_capacity_types()])
}

fn with_weight(mut p: Pool, weight: i32) -> Pool {
    p.weight = weight;
    p
}

fn taint(key: &str, value: Option<&str>, effect: TaintEffect) -> Taint {
    Taint {
        key: key.into(),
        value: value.map(str::to_owned),
        effect,
    }
}

fn res(cpu_millis: i64, memory: i64, pods: i64) -> Resources {
    let mut r = Resources::ZERO;
    r.0[CPU] = cpu_millis;
    r.0[MEMORY] = memory;
    r.0[PODS] = pods;
    r
}

fn bound(app: &str) -> BoundPod {
    BoundPod {
        namespace: "default".into(),
        labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
        anti_affinity: Vec::new(),
    }
}

/// A running pod of `app` with required anti-affinity to pods of `against` on `topology`.
fn bound_repelling(app: &str, topology: &str, against: &str) -> BoundPod {
    BoundPod {
        anti_affinity: pod(app, "100m", "64Mi")
            .anti_affinity(topology, against)
            .build()
            .constraints
            .anti_affinity,
        ..bound(app)
    }
}

/// A registered node of pool `general` in `zone`, the size of an m5.2xlarge, with `requested`
/// already taken by `pods`.
fn existing(name: &str, zone: &str, requested: Resources, pods: Vec<BoundPod>) -> ExistingNode {
    let it = catalog().get("m5.2xlarge").expect("m5.2xlarge");
    ExistingNode {
        name: name.into(),
        labels: BTreeMap::from([
            (labels::ZONE.to_owned(), zone.to_owned()),
            (labels::NODEPOOL.to_owned(), "general".to_owned()),
            (labels::INSTANCE_TYPE.to_owned(), "m5.2xlarge".to_owned()),
            (labels::ARCH.to_owned(), "amd64".to_owned()),
            (labels::CAPACITY_TYPE.to_owned(), "on-demand".to_owned()),
            (labels::HOSTNAME.to_owned(), name.to_owned()),
        ]),
        taints: Vec::new(),
        allocatable: it.allocatable(&KubeletSettings::default()),
        requested,
        pods,
        in_flight: false,
    }
}

// ---------------------------------------------------------------------------------------------
// What holds of every plan

/// The value a new node of `pool`, type `it`, in `zone` with `capacity_type` carries for `key`.
fn node_label(
    pool: &Pool,
    it: &InstanceType,
    zone: &str,
    capacity_type: CapacityType,
    region: &str,
    key: &str,
) -> Option<String> {
    if labels::is_instance_label(key) {
        return it.label(key);
    }
    match key {
        labels::ZONE | labels::ZONE_BETA => Some(zone.to_owned()),
        labels::CAPACITY_TYPE => Some(capacity_type.as_str().to_owned()),
        labels::NODEPOOL => Some(pool.name.clone()),
        labels::REGION => Some(region.to_owned()),
        _ => pool.labels.get(key).cloned(),
    }
}

/// Whether node labels (as a lookup) satisfy a pod's node selector and required node affinity.
fn selects(c: &Constraints, label: &dyn Fn(&str) -> Option<String>) -> bool {
    let ok = |r: &Requirement| r.allows(label(&r.key).as_deref());
    c.node_selector.iter().all(ok)
        && (c.node_affinity.is_empty() || c.node_affinity.iter().any(|t| t.iter().all(ok)))
}

fn tolerates(taints: &[Taint], c: &Constraints) -> bool {
    taints.iter().all(|t| {
        t.effect == TaintEffect::PreferNoSchedule
            || c.tolerations
                .iter()
                .any(|tol| t.is_tolerated_by(&tol.to_toleration()))
    })
}

/// Zones where a pod could get a new node: some pool whose taints it tolerates has an instance
/// type the pool and the pod allow with an available offering there (the spread domains).
fn pod_zones(c: &Constraints, pools: &[Pool], catalog: &Catalog) -> BTreeSet<String> {
    let mut zones = BTreeSet::new();
    for pool in pools.iter().filter(|p| tolerates(&p.taints, c)) {
        for it in &catalog.types {
            for o in it.offerings.iter().filter(|o| o.available) {
                if zones.contains(&o.zone) {
                    continue;
                }
                let label = |key: &str| {
                    node_label(pool, it, &o.zone, o.capacity_type, &catalog.region, key)
                };
                if pool
                    .requirements
                    .iter()
                    .all(|r| r.allows(label(&r.key).as_deref()))
                    && selects(c, &label)
                {
                    zones.insert(o.zone.clone());
                }
            }
        }
    }
    zones
}

/// Zones a pool (with no pod constraints) can launch in.
fn pool_zones(pool: &Pool) -> BTreeSet<String> {
    pod_zones(
        &Constraints::default(),
        std::slice::from_ref(pool),
        catalog(),
    )
}

/// Where a pod runs (or will), for topology checks.
#[derive(Debug)]
struct Located<'a> {
    host: String,
    zone: Option<String>,
    namespace: &'a str,
    labels: &'a BTreeMap<String, String>,
    pending: Option<usize>,
}

/// Panics (with the reason) unless `plan` is a valid plan for the input.
fn check_plan(
    pods: &[PendingPod],
    pools: &[Pool],
    catalog: &Catalog,
    nodes: &[ExistingNode],
    plan: &Plan,
) {
    // Every pod exactly once.
    let mut seen = vec![0usize; pods.len()];
    for node in &plan.nodes {
        assert_eq!(node.pods.len(), node.pod_indices.len());
        // Only a static pool's missing replicas are planned empty.
        let static_pool = pools
            .iter()
            .any(|p| p.name == node.node_pool && p.replicas.is_some());
        assert!(
            !node.pods.is_empty() || static_pool,
            "an empty new node: {node:?}"
        );
        assert!(
            node.pods.is_empty() || !static_pool,
            "pods planned onto a static pool's new node: {node:?}"
        );
        for (k, &i) in node.pod_indices.iter().enumerate() {
            assert_eq!(node.pods[k], pods[i].key);
            seen[i] += 1;
        }
    }
    for p in &plan.placements {
        assert_eq!(p.pod, pods[p.pod_index].key);
        assert!(
            nodes.iter().any(|n| n.name == p.node),
            "placement on unknown node {p:?}"
        );
        seen[p.pod_index] += 1;
    }
    for u in &plan.unschedulable {
        assert_eq!(u.pod, pods[u.pod_index].key);
        assert!(
            !u.reason.is_empty(),
            "an unschedulable pod without reason: {u:?}"
        );
        seen[u.pod_index] += 1;
    }
    for (i, n) in seen.iter().enumerate() {
        assert_eq!(*n, 1, "pod {} appears {n} times in the plan", pods[i].key);
    }
    for (i, p) in pods.iter().enumerate() {
        if let Some(reason) = &p.invalid {
            let u = plan.unschedulable.iter().find(|u| u.pod_index == i);
            assert_eq!(
                u.map(|u| u.reason.as_str()),
                Some(reason.as_str()),
                "invalid pod {} must be unschedulable with its reason",
                p.key
            );
        }
    }

    // Price.
    let sum: f64 = plan.nodes.iter().map(|n| n.price_per_hour).sum();
    assert!(
        (plan.total_price_per_hour - sum).abs() < 1e-6,
        "total {} != sum of node prices {sum}",
        plan.total_price_per_hour
    );

    // New nodes.
    let mut usage: Vec<Usage> = pools.iter().map(|p| p.in_use).collect();
    for node in &plan.nodes {
        let pi = pools
            .iter()
            .position(|p| p.name == node.node_pool)
            .unwrap_or_else(|| panic!("node of unknown pool {}", node.node_pool));
        let pool = &pools[pi];
        let it = catalog
            .get(&node.instance_type)
            .unwrap_or_else(|| panic!("unknown instance type {}", node.instance_type));
        let offering = it
            .offerings
            .iter()
            .find(|o| o.zone == node.zone && o.capacity_type == node.capacity_type)
            .unwrap_or_else(|| {
                panic!(
                    "{} not offered in {} {}",
                    it.name, node.zone, node.capacity_type
                )
            });
        assert!(
            offering.available,
            "{} in {} {} is unavailable",
            it.name, node.zone, node.capacity_type
        );
        assert_eq!(offering.price, node.price_per_hour, "price of {}", it.name);
        assert_eq!(offering.price_estimated, node.price_estimated);
        let allocatable = it.allocatable(&pool.kubelet);
        assert_eq!(node.allocatable, allocatable);
        let requests = node
            .pod_indices
            .iter()
            .fold(pool.daemon_overhead, |acc, i| acc + pods[*i].requests);
        assert_eq!(node.requests, requests, "node requests of {}", it.name);
        assert!(
            requests.fits_in(&allocatable),
            "{} in {}: requests {requests} (with DaemonSets {}) exceed allocatable {allocatable}",
            it.name,
            node.zone,
            pool.daemon_overhead
        );
        let fits_type = |t: &InstanceType| {
            let label = |key: &str| {
                node_label(
                    pool,
                    t,
                    &node.zone,
                    node.capacity_type,
                    &catalog.region,
                    key,
                )
            };
            let pool_ok = pool
                .requirements
                .iter()
                .all(|r| r.allows(label(&r.key).as_deref()));
            let pods_ok = node
                .pod_indices
                .iter()
                .all(|i| selects(&pods[*i].constraints, &label));
            (pool_ok, pods_ok)
        };
        let (pool_ok, pods_ok) = fits_type(it);
        assert!(
            pool_ok,
            "{} in {} breaks the requirements of pool {}",
            it.name, node.zone, pool.name
        );
        assert!(
            pods_ok,
            "{} in {} breaks a node selector or affinity of its pods",
            it.name, node.zone
        );
        for &i in &node.pod_indices {
            assert!(
                tolerates(&pool.taints, &pods[i].constraints),
                "{} does not tolerate the taints of pool {}",
                pods[i].key,
                pool.name
            );
        }
        // Alternatives.
        // More only to keep a pool's minValues.
        assert!(
            node.alternatives.len() <= MAX_ALTERNATIVES
                || pool.requirements.iter().any(|r| r.min_values.is_some())
        );
        let mut names = BTreeSet::new();
        let mut previous = node.price_per_hour;
        for alt in &node.alternatives {
            assert!(names.insert(alt.as_str()), "alternative {alt} listed twice");
            assert_ne!(
                alt, &node.instance_type,
                "the chosen type among its alternatives"
            );
            let at = catalog
                .get(alt)
                .unwrap_or_else(|| panic!("unknown alternative {alt}"));
            let o = at
                .offerings
                .iter()
                .find(|o| {
                    o.zone == node.zone && o.capacity_type == node.capacity_type && o.available
                })
                .unwrap_or_else(|| {
                    panic!(
                        "alternative {alt} not available in {} {}",
                        node.zone, node.capacity_type
                    )
                });
            assert!(
                o.price >= previous,
                "alternatives of {} not cheapest first: {alt} at {} after {previous}",
                it.name,
                o.price
            );
            previous = o.price;
            let room = at.allocatable(&pool.kubelet);
            assert!(
                requests.fits_in(&room),
                "alternative {alt} (allocatable {room}) cannot hold {requests}"
            );
            let (pool_ok, pods_ok) = fits_type(at);
            assert!(
                pool_ok && pods_ok,
                "alternative {alt} breaks the pool's or the pods' requirements"
            );
        }
        // Limits hold whichever of its types a launch ends with: charge each node with the
        // largest of its chosen type and alternatives.
        let options = std::iter::once(it).chain(
            node.alternatives
                .iter()
                .map(|a| catalog.get(a).expect("checked above")),
        );
        let (mut cpu, mut memory) = (0, 0);
        for t in options {
            let capacity = t.capacity(&pool.kubelet);
            cpu = cpu.max(capacity.0[CPU]);
            memory = memory.max(capacity.0[MEMORY]);
        }
        usage[pi].cpu_millis += cpu;
        usage[pi].memory_bytes += memory;
        usage[pi].nodes += 1;
    }
    for (pi, (pool, used)) in pools.iter().zip(&usage).enumerate() {
        // Limits bind new nodes only: a pool already over them just gets none.
        if !plan.nodes.iter().any(|n| n.node_pool == pools[pi].name) {
            continue;
        }
        let limits = pool.limits;
        if let Some(cpu) = limits.cpu_millis {
            assert!(
                used.cpu_millis <= cpu,
                "pool {} over its cpu limit: {} > {cpu}",
                pool.name,
                used.cpu_millis
            );
        }
        if let Some(mem) = limits.memory_bytes {
            assert!(
                used.memory_bytes <= mem,
                "pool {} over its memory limit: {} > {mem}",
                pool.name,
                used.memory_bytes
            );
        }
        if let Some(n) = limits.nodes {
            assert!(
                used.nodes <= n,
                "pool {} over its node limit: {} > {n}",
                pool.name,
                used.nodes
            );
        }
    }

    // Existing nodes.
    let mut used: Vec<Resources> = nodes.iter().map(|n| n.requested).collect();
    let mut received = vec![false; nodes.len()];
    for p in &plan.placements {
        let ni = nodes
            .iter()
            .position(|n| n.name == p.node)
            .expect("known node");
        let node = &nodes[ni];
        let c = &pods[p.pod_index].constraints;
        used[ni] += pods[p.pod_index].requests;
        received[ni] = true;
        assert!(
            tolerates(&node.taints, c),
            "{} placed on {} whose taints it does not tolerate",
            p.pod,
            p.node
        );
        assert!(
            selects(c, &|key: &str| node.labels.get(key).cloned()),
            "{} placed on {} whose labels it does not select",
            p.pod,
            p.node
        );
    }
    for (ni, node) in nodes.iter().enumerate() {
        if received[ni] {
            assert!(
                used[ni].fits_in(&node.allocatable),
                "existing node {} over allocatable: {} > {}",
                node.name,
                used[ni],
                node.allocatable
            );
        }
    }

    // Topology.
    let mut located: Vec<Located> = Vec::new();
    for node in nodes {
        for p in &node.pods {
            located.push(Located {
                host: node.name.clone(),
                zone: node.labels.get(labels::ZONE).cloned(),
                namespace: &p.namespace,
                labels: &p.labels,
                pending: None,
            });
        }
    }
    for p in &plan.placements {
        let node = nodes.iter().find(|n| n.name == p.node).expect("known node");
        let c = &pods[p.pod_index].constraints;
        located.push(Located {
            host: node.name.clone(),
            zone: node.labels.get(labels::ZONE).cloned(),
            namespace: &c.namespace,
            labels: &c.labels,
            pending: Some(p.pod_index),
        });
    }
    for (k, node) in plan.nodes.iter().enumerate() {
        for &i in &node.pod_indices {
            let c = &pods[i].constraints;
            located.push(Located {
                host: format!("new-node-{k}"),
                zone: Some(node.zone.clone()),
                namespace: &c.namespace,
                labels: &c.labels,
                pending: Some(i),
            });
        }
    }
    let mut domain_cache: HashMap<&Constraints, BTreeSet<String>> = HashMap::new();
    let same = |a: &Located, b: &Located, t: Topology| match t {
        Topology::Hostname => a.host == b.host,
        Topology::Zone => a.zone.is_some() && a.zone == b.zone,
    };
    for me in located.iter().filter(|l| l.pending.is_some()) {
        let i = me.pending.unwrap();
        let c = &pods[i].constraints;
        let others = || located.iter().filter(move |l| l.pending != Some(i));
        for t in &c.anti_affinity {
            if let Some(other) = others()
                .find(|o| same(me, o, t.topology) && t.selector.matches(o.namespace, o.labels))
            {
                panic!(
                    "{} has {:?} anti-affinity to {} but shares {} with {:?}",
                    pods[i].key,
                    t.topology,
                    t.selector.describe(),
                    if t.topology == Topology::Zone {
                        me.zone.clone().unwrap_or_default()
                    } else {
                        me.host.clone()
                    },
                    other.pending.map_or_else(
                        || format!("existing pod on {}", other.host),
                        |j| pods[j].key.clone()
                    )
                );
            }
        }
        for t in &c.affinity {
            let own = t.selector.matches(&c.namespace, &c.labels);
            let any_other = others().any(|o| t.selector.matches(o.namespace, o.labels));
            if !own || any_other {
                assert!(
                    others()
                        .any(|o| same(me, o, t.topology)
                            && t.selector.matches(o.namespace, o.labels)),
                    "{} has {:?} affinity to {} but no such pod shares its {:?}",
                    pods[i].key,
                    t.topology,
                    t.selector.describe(),
                    t.topology
                );
            }
        }
        for s in c.spreads.iter().filter(|s| s.required) {
            // Final-state skew is only implied when every pending pod the spread counts carries
            // the same spread and the pod counts itself.
            let consistent = s.selector.matches(&c.namespace, &c.labels)
                && pods.iter().all(|p| {
                    !s.selector
                        .matches(&p.constraints.namespace, &p.constraints.labels)
                        || p.constraints.spreads.contains(s)
                });
            if !consistent {
                continue;
            }
            let matching = || {
                located
                    .iter()
                    .filter(|o| s.selector.matches(o.namespace, o.labels))
            };
            match s.topology {
                Topology::Hostname => {
                    let n = matching().filter(|o| o.host == me.host).count() as i64;
                    assert!(
                        n <= s.max_skew,
                        "{}: {n} pods selected by {} on one node, hostname maxSkew {}",
                        pods[i].key,
                        s.selector.describe(),
                        s.max_skew
                    );
                }
                Topology::Zone => {
                    let zone = me.zone.clone().expect("a zoned node");
                    // Zones a new node could be in, and those of existing nodes it selects.
                    let domains = domain_cache.entry(c).or_insert_with(|| {
                        let mut domains = pod_zones(c, pools, catalog);
                        domains.extend(
                            nodes
                                .iter()
                                .filter(|n| selects(c, &|key: &str| n.labels.get(key).cloned()))
                                .filter_map(|n| n.labels.get(labels::ZONE).cloned()),
                        );
                        domains
                    });
                    assert!(
                        domains.contains(&zone),
                        "{} in zone {zone} outside its domains {domains:?}",
                        pods[i].key
                    );
                    let count = |z: &str| {
                        matching().filter(|o| o.zone.as_deref() == Some(z)).count() as i64
                    };
                    let min = domains.iter().map(|z| count(z)).min().unwrap_or(0);
                    let counts: BTreeMap<&str, i64> =
                        domains.iter().map(|z| (z.as_str(), count(z))).collect();
                    assert!(
                        count(&zone) - min <= s.max_skew,
                        "{} in zone {zone}: zone spread of {} over maxSkew {}: {counts:?}",
                        pods[i].key,
                        s.selector.describe(),
                        s.max_skew
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Table-driven cases

struct Outcome<'a> {
    plan: &'a Plan,
    pods: &'a [PendingPod],
    pools: &'a [Pool],
    catalog: &'a Catalog,
    nodes: &'a [ExistingNode],
}

fn key(name: &str) -> String {
    if name.contains('/') {
        name.to_owned()
    } else {
        format!("default/{name}")
    }
}

impl Outcome<'_> {
    fn node_of(&self, name: &str) -> Option<&PlannedNode> {
        let key = key(name);
        self.plan.nodes.iter().find(|n| n.pods.contains(&key))
    }

    fn node_index(&self, name: &str) -> Option<usize> {
        let key = key(name);
        self.plan.nodes.iter().position(|n| n.pods.contains(&key))
    }

    fn placed_on(&self, name: &str) -> Option<&str> {
        let key = key(name);
        self.plan
            .placements
            .iter()
            .find(|p| p.pod == key)
            .map(|p| p.node.as_str())
    }

    fn reason(&self, name: &str) -> Option<&str> {
        let key = key(name);
        self.plan
            .unschedulable
            .iter()
            .find(|u| u.pod == key)
            .map(|u| u.reason.as_str())
    }

    /// The reason a pod is unschedulable; panics if it was placed.
    fn unschedulable(&self, name: &str) -> &str {
        self.reason(name)
            .unwrap_or_else(|| panic!("{name} should be unschedulable"))
    }

    /// The new node a pod goes on; panics if there is none.
    fn node(&self, name: &str) -> &PlannedNode {
        self.node_of(name).unwrap_or_else(|| {
            panic!(
                "{name} should be on a new node (reason: {:?}, placed on {:?})",
                self.reason(name),
                self.placed_on(name)
            )
        })
    }

    fn it(&self, node: &PlannedNode) -> &InstanceType {
        self.catalog.get(&node.instance_type).expect("known type")
    }

    /// The instance type of the new node a pod goes on.
    fn type_of(&self, name: &str) -> &InstanceType {
        self.it(self.node(name))
    }

    fn all_placed(&self) {
        assert!(
            self.plan.unschedulable.is_empty(),
            "unschedulable: {:?}",
            self.plan.unschedulable
        );
    }

    /// Zone of a pod on a new or existing node.
    fn zone_of(&self, name: &str) -> Option<String> {
        if let Some(n) = self.node_of(name) {
            return Some(n.zone.clone());
        }
        let node = self.placed_on(name)?;
        self.nodes
            .iter()
            .find(|n| n.name == node)
            .and_then(|n| n.labels.get(labels::ZONE).cloned())
    }

    /// Node of a pod: `new-K` or the existing node's name.
    fn host_of(&self, name: &str) -> Option<String> {
        if let Some(k) = self.node_index(name) {
            return Some(format!("new-{k}"));
        }
        self.placed_on(name).map(str::to_owned)
    }

    /// Placed pods whose name starts with `prefix`, per zone.
    fn zone_counts(&self, prefix: &str) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for p in self.pods.iter().filter(|p| p.key.starts_with(&key(prefix))) {
            if let Some(z) = self.zone_of(&p.key) {
                *counts.entry(z).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Placed pods whose name starts with `prefix`, per node.
    fn host_counts(&self, prefix: &str) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for p in self.pods.iter().filter(|p| p.key.starts_with(&key(prefix))) {
            if let Some(h) = self.host_of(&p.key) {
                *counts.entry(h).or_insert(0) += 1;
            }
        }
        counts
    }

    fn count_placed(&self, prefix: &str) -> usize {
        self.pods
            .iter()
            .filter(|p| p.key.starts_with(&key(prefix)) && self.reason(&p.key).is_none())
            .count()
    }

    fn pool_nodes(&self, pool: &str) -> Vec<&PlannedNode> {
        self.plan
            .nodes
            .iter()
            .filter(|n| n.node_pool == pool)
            .collect()
    }
}

type Check = Box<dyn Fn(&Outcome)>;

struct Case {
    name: &'static str,
    pods: Vec<PendingPod>,
    pools: Vec<Pool>,
    nodes: Vec<ExistingNode>,
    catalog: Option<Catalog>,
    check: Check,
}

fn case(
    name: &'static str,
    pods: Vec<PendingPod>,
    pools: Vec<Pool>,
    check: impl Fn(&Outcome) + 'static,
) -> Case {
    Case {
        name,
        pods,
        pools,
        nodes: Vec::new(),
        catalog: None,
        check: Box::new(check),
    }
}

impl Case {
    fn nodes(mut self, nodes: Vec<ExistingNode>) -> Self {
        self.nodes = nodes;
        self
    }

    fn catalog(mut self, catalog: Catalog) -> Self {
        self.catalog = Some(catalog);
        self
    }
}

fn describe_plan(plan: &Plan) -> String {
    let mut s = String::new();
    for (k, n) in plan.nodes.iter().enumerate() {
        s += &format!(
            "  new-{k}: {} {} {} {} ${:.4} pods {:?} requests {} allocatable {}\n",
            n.node_pool,
            n.instance_type,
            n.zone,
            n.capacity_type,
            n.price_per_hour,
            n.pods,
            n.requests,
            n.allocatable
        );
    }
    for p in &plan.placements {
        s += &format!("  placed {} on {}\n", p.pod, p.node);
    }
    for u in &plan.unschedulable {
        s += &format!("  unschedulable {}: {}\n", u.pod, u.reason);
    }
    s
}

fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".to_owned())
}

/// Solves every case, checks the plan's invariants and the case's expectations, and reports all
/// failing cases at once.
fn run(cases: Vec<Case>) {
    let mut failures = Vec::new();
    let total = cases.len();
    for c in cases {
        let catalog = c.catalog.as_ref().unwrap_or_else(|| catalog());
        let plan = solve(&Input {
            pods: &c.pods,
            pools: &c.pools,
            catalog,
            nodes: &c.nodes,
        });
        let outcome = Outcome {
            plan: &plan,
            pods: &c.pods,
            pools: &c.pools,
            catalog,
            nodes: &c.nodes,
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            check_plan(&c.pods, &c.pools, catalog, &c.nodes, &plan);
            (c.check)(&outcome);
        }));
        if let Err(e) = result {
            failures.push(format!(
                "case {:?}: {}\n{}",
                c.name,
                panic_message(&*e),
                describe_plan(&plan)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// --- requests ---------------------------------------------------------------------------------

#[test]
fn requests() {
    let mut small_pods = general();
    small_pods.name = "five-pods".into();
    small_pods.kubelet.max_pods = Some(5);
    let mut big_disk = general();
    big_disk.kubelet.root_volume_bytes = Some(100 * GIB);
    run(vec![
        case("cpu", one(pod("a", "7", "1Gi")), vec![general()], |o| {
            let n = o.node("a");
            assert!(n.allocatable.0[CPU] >= 7000);
            assert!(o.type_of("a").vcpus >= 8);
            assert_eq!(o.plan.nodes.len(), 1);
        }),
        case(
            "memory",
            one(pod("a", "100m", "60Gi")),
            vec![general()],
            |o| {
                assert!(o.node("a").allocatable.0[MEMORY] >= 60 * GIB);
                assert_eq!(o.plan.nodes.len(), 1);
            },
        ),
        case(
            "cpu and memory of several pods add up",
            pod("a", "1500m", "3Gi").replicas(6),
            vec![general()],
            |o| {
                o.all_placed();
                let cpu: i64 = o.plan.nodes.iter().map(|n| n.allocatable.0[CPU]).sum();
                let mem: i64 = o.plan.nodes.iter().map(|n| n.allocatable.0[MEMORY]).sum();
                assert!(cpu >= 9000 && mem >= 18 * GIB);
            },
        ),
        case(
            "ephemeral-storage splits pods across nodes",
            pod("a", "100m", "128Mi")
                .request("ephemeral-storage", "8Gi")
                .replicas(4),
            vec![general()],
            |o| {
                // 20Gi root volume: 17Gi allocatable, two such pods per node.
                o.all_placed();
                assert!(o.plan.nodes.len() >= 2);
                for n in &o.plan.nodes {
                    assert!(n.pods.len() <= 2);
                    assert_eq!(n.allocatable.0[EPHEMERAL], 17 * GIB);
                }
            },
        ),
        case(
            "ephemeral-storage over the root volume is unschedulable",
            one(pod("a", "100m", "128Mi").request("ephemeral-storage", "30Gi")),
            vec![general()],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains("ephemeral-storage 30Gi"), "{r}");
            },
        ),
        case(
            "a bigger root volume takes more ephemeral-storage",
            one(pod("a", "100m", "128Mi").request("ephemeral-storage", "30Gi")),
            vec![big_disk],
            |o| assert!(o.node("a").allocatable.0[EPHEMERAL] >= 30 * GIB),
        ),
        case(
            "kubelet maxPods 5 forces more nodes",
            pod("a", "10m", "16Mi").replicas(12),
            vec![small_pods],
            |o| {
                o.all_placed();
                assert!(o.plan.nodes.len() >= 3, "{} nodes", o.plan.nodes.len());
                for n in &o.plan.nodes {
                    assert_eq!(n.allocatable.0[PODS], 5);
                    assert!(n.pods.len() <= 5);
                }
            },
        ),
        case(
            "pod slots of the ENI limit",
            pod("a", "1m", "1Mi").replicas(40),
            vec![pool(
                "small",
                vec![
                    both_capacity_types(),
                    req(labels::INSTANCE_TYPE, Operator::In, &["m5.large"]),
                ],
            )],
            |o| {
                // m5.large: 29 pods.
                o.all_placed();
                assert_eq!(o.plan.nodes.len(), 2);
                assert!(o.plan.nodes.iter().all(|n| n.pods.len() <= 29));
            },
        ),
        case(
            "nvidia.com/gpu lands on an NVIDIA GPU type",
            one(pod("a", "1", "4Gi").limit("nvidia.com/gpu", "1")),
            vec![anything()],
            |o| {
                let it = o.type_of("a");
                assert!(it.gpus > 0, "{}", it.name);
                assert_eq!(it.gpu_slot, Some(NVIDIA_GPU), "{}", it.name);
                assert_eq!(o.node("a").requests.0[NVIDIA_GPU], 1);
            },
        ),
        case(
            "two nvidia GPUs need a type with two",
            one(pod("a", "1", "4Gi").request("nvidia.com/gpu", "2")),
            vec![anything()],
            |o| {
                let it = o.type_of("a");
                assert!(
                    it.gpus >= 2 && it.gpu_slot == Some(NVIDIA_GPU),
                    "{}",
                    it.name
                );
            },
        ),
        case(
            "amd.com/gpu lands on an AMD GPU type, if the catalog has one",
            one(pod("a", "1", "4Gi").request("amd.com/gpu", "1")),
            vec![anything()],
            |o| {
                let offered = o.catalog.types.iter().any(|t| {
                    t.gpu_slot == Some(AMD_GPU) && t.offerings.iter().any(|x| x.available)
                });
                if offered {
                    let it = o.type_of("a");
                    assert!(it.gpus > 0 && it.gpu_slot == Some(AMD_GPU), "{}", it.name);
                } else {
                    let r = o.unschedulable("a");
                    assert!(r.contains("amd.com/gpu 1"), "{r}");
                }
            },
        ),
        case(
            "a gpu pod in a pool without GPU types is unschedulable",
            one(pod("a", "1", "4Gi").request("nvidia.com/gpu", "1")),
            vec![general()],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains("nvidia.com/gpu"), "{r}");
            },
        ),
        case(
            "a big init container forces a bigger node",
            one(pod("a", "500m", "512Mi").init_container("6", "1Gi")),
            vec![general()],
            |o| {
                assert_eq!(o.pods[0].requests.0[CPU], 6000);
                assert!(o.node("a").allocatable.0[CPU] >= 6000);
                assert!(o.type_of("a").vcpus >= 8);
            },
        ),
        case(
            "an unknown extended resource is unschedulable, named",
            vec![
                pod("fpga", "1", "1Gi")
                    .request("example.com/fpga", "1")
                    .build(),
                pod("plain", "1", "1Gi").build(),
            ],
            vec![general()],
            |o| {
                let r = o.unschedulable("fpga");
                assert!(r.contains("example.com/fpga"), "{r}");
                o.node("plain");
            },
        ),
        case(
            "larger than any instance type",
            one(pod("a", "1000", "1Gi")),
            vec![general()],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains("more than any instance type"), "{r}");
                assert!(o.plan.nodes.is_empty());
            },
        ),
        case("no pool at all", one(pod("a", "1", "1Gi")), vec![], |o| {
            let r = o.unschedulable("a");
            assert!(r.contains("no NodePool"), "{r}");
        }),
    ]);
}

// --- node selection ---------------------------------------------------------------------------

#[test]
fn node_selection() {
    let amd64_only = pool(
        "amd64",
        vec![
            both_capacity_types(),
            req(labels::ARCH, Operator::In, &["amd64"]),
        ],
    );
    let mut team = general();
    team.labels.insert("example.com/team".into(), "ml".into());
    run(vec![
        case(
            "instance-type",
            one(pod("a", "1", "1Gi").node_selector(labels::INSTANCE_TYPE, "m5.2xlarge")),
            vec![anything()],
            |o| {
                assert_eq!(o.node("a").instance_type, "m5.2xlarge");
                assert!(o.node("a").alternatives.is_empty());
            },
        ),
        case(
            "instance-family",
            one(pod("a", "1", "1Gi").node_selector(labels::INSTANCE_FAMILY, "r6i")),
            vec![anything()],
            |o| {
                let n = o.node("a");
                assert_eq!(o.it(n).family, "r6i");
                assert!(!n.alternatives.is_empty());
                for alt in &n.alternatives {
                    assert!(alt.starts_with("r6i."), "{alt}");
                }
            },
        ),
        case(
            "arch arm64",
            one(pod("a", "1", "1Gi").node_selector(labels::ARCH, "arm64")),
            vec![anything()],
            |o| assert_eq!(o.type_of("a").arch, Arch::Arm64),
        ),
        case(
            "capacity-type on-demand",
            one(pod("a", "1", "1Gi").node_selector(labels::CAPACITY_TYPE, "on-demand")),
            vec![general()],
            |o| assert_eq!(o.node("a").capacity_type, CapacityType::OnDemand),
        ),
        case(
            "zone",
            pod("a", "1", "1Gi")
                .node_selector(labels::ZONE, "us-east-1c")
                .replicas(3),
            vec![general()],
            |o| {
                o.all_placed();
                for n in &o.plan.nodes {
                    assert_eq!(n.zone, "us-east-1c");
                }
            },
        ),
        case(
            "zone through the beta label",
            one(pod("a", "1", "1Gi").node_selector(labels::ZONE_BETA, "us-east-1d")),
            vec![general()],
            |o| assert_eq!(o.node("a").zone, "us-east-1d"),
        ),
        case(
            "nodepool name",
            one(pod("a", "1", "1Gi").node_selector(labels::NODEPOOL, "general")),
            vec![with_weight(anything(), 10), general()],
            |o| assert_eq!(o.node("a").node_pool, "general"),
        ),
        case(
            "affinity NotIn on instance-cpu",
            one(pod("a", "100m", "256Mi").node_affinity(&[(
                labels::INSTANCE_CPU,
                "NotIn",
                &["1", "2"],
            )])),
            vec![general()],
            |o| {
                let n = o.node("a");
                assert!(![1, 2].contains(&o.it(n).vcpus), "{}", n.instance_type);
                for alt in &n.alternatives {
                    assert!(
                        ![1, 2].contains(&o.catalog.get(alt).unwrap().vcpus),
                        "{alt}"
                    );
                }
            },
        ),
        case(
            "affinity Gt on instance-cpu",
            one(pod("a", "100m", "256Mi").node_affinity(&[(labels::INSTANCE_CPU, "Gt", &["15"])])),
            vec![general()],
            |o| assert!(o.type_of("a").vcpus > 15),
        ),
        case(
            "affinity Lt on instance-cpu",
            one(pod("a", "100m", "256Mi").node_affinity(&[(labels::INSTANCE_CPU, "Lt", &["3"])])),
            vec![general()],
            |o| {
                let n = o.node("a");
                assert!(o.it(n).vcpus < 3);
                assert!(
                    n.alternatives
                        .iter()
                        .all(|a| o.catalog.get(a).unwrap().vcpus < 3)
                );
            },
        ),
        case(
            "affinity Gt and Lt together",
            one(pod("a", "100m", "256Mi").node_affinity(&[
                (labels::INSTANCE_CPU, "Gt", &["4"]),
                (labels::INSTANCE_CPU, "Lt", &["16"]),
            ])),
            vec![general()],
            |o| {
                let v = o.type_of("a").vcpus;
                assert!(v > 4 && v < 16, "{v}");
            },
        ),
        case(
            "affinity DoesNotExist on local NVMe",
            one(pod("a", "1", "2Gi")
                .node_selector(labels::INSTANCE_FAMILY, "m5d")
                .node_affinity(&[(labels::INSTANCE_LOCAL_NVME, "DoesNotExist", &[])])),
            vec![general()],
            |o| {
                // m5d always has local NVMe.
                let r = o.unschedulable("a");
                assert!(
                    r.contains(labels::INSTANCE_LOCAL_NVME) || r.contains("together"),
                    "{r}"
                );
            },
        ),
        case(
            "affinity DoesNotExist keeps local NVMe types out",
            one(pod("a", "1", "2Gi")
                .node_selector(labels::INSTANCE_CATEGORY, "m")
                .node_affinity(&[(labels::INSTANCE_LOCAL_NVME, "DoesNotExist", &[])])),
            vec![general()],
            |o| {
                let n = o.node("a");
                // Instance storage that is not NVMe (m3's SSD) has no label, as in Karpenter.
                let nvme = |name: &str| {
                    o.catalog
                        .get(name)
                        .unwrap()
                        .label(labels::INSTANCE_LOCAL_NVME)
                };
                assert_eq!(nvme(&n.instance_type), None);
                assert!(n.alternatives.iter().all(|a| nvme(a).is_none()));
            },
        ),
        case(
            "affinity terms are ORed",
            one(pod("a", "1", "1Gi")
                .node_affinity(&[(labels::INSTANCE_TYPE, "In", &["nonexistent.large"])])
                .node_affinity(&[(labels::INSTANCE_FAMILY, "In", &["c6i"])])),
            vec![general()],
            |o| assert_eq!(o.type_of("a").family, "c6i"),
        ),
        case(
            "a selector the pool rules out names the key",
            one(pod("a", "1", "1Gi").node_selector(labels::ARCH, "arm64")),
            vec![amd64_only],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains(labels::ARCH) && r.contains("arm64"), "{r}");
            },
        ),
        case(
            "an unknown instance type names the key",
            one(pod("a", "1", "1Gi").node_selector(labels::INSTANCE_TYPE, "nonexistent.large")),
            vec![general()],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains(labels::INSTANCE_TYPE), "{r}");
            },
        ),
        case(
            "selector and affinity that conflict",
            one(pod("a", "1", "1Gi")
                .node_selector(labels::ARCH, "arm64")
                .node_affinity(&[(labels::INSTANCE_FAMILY, "In", &["m5"])])),
            vec![general()],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains("together"), "{r}");
            },
        ),
        case(
            "a pool label selected",
            one(pod("a", "1", "1Gi").node_selector("example.com/team", "ml")),
            vec![team.clone()],
            |o| assert_eq!(o.node("a").node_pool, "general"),
        ),
        case(
            "a pool label with another value",
            one(pod("a", "1", "1Gi").node_selector("example.com/team", "web")),
            vec![team.clone()],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains("example.com/team"), "{r}");
            },
        ),
        case(
            "DoesNotExist on a pool label",
            one(pod("a", "1", "1Gi").node_affinity(&[("example.com/team", "DoesNotExist", &[])])),
            vec![team],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains("example.com/team"), "{r}");
            },
        ),
        // Found by the properties: the packer picks one offering per instance type for a whole
        // (pool, zone) bucket, the cheapest any of its pods may use, so a pod whose selector
        // rules that offering out (another zone) gets no instance type at all.
        case(
            "a zone-pinned pod next to an unpinned pod",
            vec![
                pod("pinned", "10m", "16Mi")
                    .node_selector(ZONE, "us-east-1b")
                    .build(),
                pod("any", "10m", "16Mi").build(),
            ],
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.node("pinned").zone, "us-east-1b");
            },
        ),
        case(
            "pods pinned to two zones",
            vec![
                pod("b", "10m", "16Mi")
                    .node_selector(ZONE, "us-east-1b")
                    .build(),
                pod("c", "10m", "16Mi")
                    .node_selector(ZONE, "us-east-1c")
                    .build(),
            ],
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.node("b").zone, "us-east-1b");
                assert_eq!(o.node("c").zone, "us-east-1c");
            },
        ),
        case(
            "a label no node has",
            one(pod("a", "1", "1Gi").node_selector("example.com/gpu-kind", "a100")),
            vec![general()],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains("example.com/gpu-kind"), "{r}");
            },
        ),
    ]);
}

// --- taints and tolerations, pool weights -----------------------------------------------------

#[test]
fn taints_and_weights() {
    let mut tainted = general();
    tainted.name = "gpu-only".into();
    tainted.taints = vec![taint("dedicated", Some("gpu"), TaintEffect::NoSchedule)];
    let mut prefer = general();
    prefer.taints = vec![taint("soft", None, TaintEffect::PreferNoSchedule)];
    let mut no_execute = general();
    no_execute.taints = vec![taint("maintenance", None, TaintEffect::NoExecute)];
    let high = || {
        let mut p = with_weight(general(), 10);
        p.name = "high".into();
        p
    };
    let low = || {
        let mut p = with_weight(general(), 1);
        p.name = "low".into();
        p
    };
    let tainted_high = || {
        let mut p = high();
        p.taints = vec![taint("team", Some("a"), TaintEffect::NoSchedule)];
        p
    };
    let arm_high = || {
        let mut p = high();
        p.requirements
            .push(req(labels::ARCH, Operator::In, &["arm64"]));
        p
    };
    run(vec![
        case("taint not tolerated", one(pod("a", "1", "1Gi")), vec![tainted.clone()], |o| {
            let r = o.unschedulable("a");
            assert!(r.contains("dedicated=gpu:NoSchedule") && r.contains("gpu-only"), "{r}");
        }),
        case(
            "taint tolerated by Equal",
            one(pod("a", "1", "1Gi").toleration(
                json!({"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}),
            )),
            vec![tainted.clone()],
            |o| assert_eq!(o.node("a").node_pool, "gpu-only"),
        ),
        case(
            "taint tolerated by Exists on the key",
            one(pod("a", "1", "1Gi").toleration(json!({"key": "dedicated", "operator": "Exists"}))),
            vec![tainted.clone()],
            |o| assert_eq!(o.node("a").node_pool, "gpu-only"),
        ),
        case(
            "taint tolerated by a bare Exists",
            one(pod("a", "1", "1Gi").toleration(json!({"operator": "Exists"}))),
            vec![tainted.clone()],
            |o| assert_eq!(o.node("a").node_pool, "gpu-only"),
        ),
        case(
            "toleration with another value",
            one(pod("a", "1", "1Gi").toleration(
                json!({"key": "dedicated", "operator": "Equal", "value": "cpu"}),
            )),
            vec![tainted.clone()],
            |o| {
                o.unschedulable("a");
            },
        ),
        case(
            "toleration for another effect",
            one(pod("a", "1", "1Gi").toleration(
                json!({"key": "maintenance", "operator": "Exists", "effect": "NoSchedule"}),
            )),
            vec![no_execute],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains("maintenance:NoExecute"), "{r}");
            },
        ),
        case("PreferNoSchedule does not block", one(pod("a", "1", "1Gi")), vec![prefer], |o| {
            o.node("a");
        }),
        case(
            "tolerating and not tolerating pods side by side",
            vec![
                pod("tol", "1", "1Gi")
                    .toleration(json!({"key": "dedicated", "operator": "Exists"}))
                    .build(),
                pod("plain", "1", "1Gi").build(),
            ],
            vec![tainted.clone(), general()],
            |o| {
                assert_eq!(o.node("plain").node_pool, "general");
                o.node("tol");
            },
        ),
        case(
            "the higher weight pool wins",
            pod("a", "1", "1Gi").replicas(3),
            vec![low(), high()],
            |o| {
                o.all_placed();
                assert!(o.plan.nodes.iter().all(|n| n.node_pool == "high"));
            },
        ),
        case(
            "a tainted high-weight pool is skipped",
            one(pod("a", "1", "1Gi")),
            vec![tainted_high(), low()],
            |o| assert_eq!(o.node("a").node_pool, "low"),
        ),
        case(
            "a tainted high-weight pool is used when tolerated",
            one(pod("a", "1", "1Gi").toleration(json!({"key": "team", "operator": "Equal", "value": "a"}))),
            vec![tainted_high(), low()],
            |o| assert_eq!(o.node("a").node_pool, "high"),
        ),
        case(
            "an incompatible high-weight pool is skipped",
            one(pod("a", "1", "1Gi").node_selector(labels::ARCH, "amd64")),
            vec![arm_high(), low()],
            |o| assert_eq!(o.node("a").node_pool, "low"),
        ),
        case(
            "with no compatible pool, every pool's problem is reported",
            one(pod("a", "1", "1Gi").node_selector(labels::ARCH, "amd64")),
            vec![arm_high(), tainted_high()],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains("team=a:NoSchedule") && r.contains(labels::ARCH), "{r}");
            },
        ),
    ]);
}

// --- pool limits ------------------------------------------------------------------------------

#[test]
fn pool_limits() {
    let limited = |limits: Limits| {
        let mut p = with_weight(general(), 10);
        p.name = "limited".into();
        p.limits = limits;
        p
    };
    let overflow = || {
        let mut p = general();
        p.name = "overflow".into();
        p
    };
    let two_nodes = Limits {
        nodes: Some(2),
        ..Default::default()
    };
    let eight_cores = Limits {
        cpu_millis: Some(8000),
        ..Default::default()
    };
    let spread_pods = pod("a", "1", "1Gi")
        .label("app", "a")
        .anti_affinity(HOST, "a")
        .replicas(5);
    let mut in_use = limited(eight_cores);
    in_use.in_use = Usage {
        cpu_millis: 7500,
        memory_bytes: 30 * GIB,
        nodes: 3,
        ..Default::default()
    };
    run(vec![
        case(
            "a node limit spills to the next pool",
            spread_pods.clone(),
            vec![limited(two_nodes), overflow()],
            |o| {
                o.all_placed();
                assert_eq!(o.pool_nodes("limited").len(), 2);
                assert_eq!(o.pool_nodes("overflow").len(), 3);
            },
        ),
        case(
            "a node limit without another pool",
            spread_pods.clone(),
            vec![limited(two_nodes)],
            |o| {
                assert_eq!(o.plan.nodes.len(), 2);
                assert_eq!(o.plan.unschedulable.len(), 3);
                for u in &o.plan.unschedulable {
                    assert!(
                        u.reason.contains("limits") && u.reason.contains("limited"),
                        "{}",
                        u.reason
                    );
                }
            },
        ),
        case(
            "a cpu limit spills to the next pool",
            pod("a", "3", "2Gi").replicas(6),
            vec![limited(eight_cores), overflow()],
            |o| {
                o.all_placed();
                let cores: u32 = o.pool_nodes("limited").iter().map(|n| o.it(n).vcpus).sum();
                assert!(cores > 0 && cores <= 8, "{cores}");
                assert!(!o.pool_nodes("overflow").is_empty());
            },
        ),
        case(
            "a cpu limit without another pool",
            pod("a", "3", "2Gi").replicas(6),
            vec![limited(eight_cores)],
            |o| {
                let placed = o.count_placed("a");
                assert!((1..=2).contains(&placed), "{placed} placed under 8 cores");
                for u in &o.plan.unschedulable {
                    assert!(u.reason.contains("limits"), "{}", u.reason);
                }
            },
        ),
        case(
            "a memory limit",
            pod("a", "100m", "6Gi")
                .label("app", "a")
                .anti_affinity(HOST, "a")
                .replicas(4),
            vec![limited(Limits {
                memory_bytes: Some(16 * GIB),
                ..Default::default()
            })],
            |o| {
                assert!(o.count_placed("a") >= 1);
                assert!(!o.plan.unschedulable.is_empty());
                for u in &o.plan.unschedulable {
                    assert!(
                        u.reason.contains("limits") && u.reason.contains("memory"),
                        "{}",
                        u.reason
                    );
                }
            },
        ),
        case(
            "capacity in use counts against the limits",
            one(pod("a", "500m", "512Mi")),
            vec![in_use],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains("limits"), "{r}");
            },
        ),
        // Found by the properties: the packer counts the limits with the type it packed
        // (m2.xlarge: 2 vCPUs, 17.1 GiB), then the plan is re-priced to the cheapest type that
        // holds the pods (r6g.xlarge: 4 vCPUs), past the limit.
        case(
            "re-pricing stays within the cpu limit",
            one(pod("a", "100m", "14500Mi")),
            vec![limited(Limits {
                cpu_millis: Some(2000),
                ..Default::default()
            })],
            |o| assert!(o.type_of("a").vcpus <= 2, "{}", o.node("a").instance_type),
        ),
    ]);
}

// --- preferences --------------------------------------------------------------------------------

/// Issue 11, item 7: preferences are planned as required first and relaxed one at a time, in
/// Karpenter's order, for the pods that cannot be placed with them.
#[test]
fn preferences_are_held_then_relaxed() {
    let spot_only = || {
        pool(
            "spot",
            vec![req(labels::CAPACITY_TYPE, Operator::In, &["spot"])],
        )
    };
    let two_zones = || {
        let mut p = general();
        p.requirements.push(req(
            labels::ZONE,
            Operator::In,
            &["us-east-1a", "us-east-1b"],
        ));
        p
    };
    run(vec![
        case(
            "a preferred zone a pool offers is kept",
            one(pod("a", "500m", "512Mi").prefer_node(10, ZONE, &["us-east-1c"])),
            vec![general()],
            |o| assert_eq!(o.zone_of("a").as_deref(), Some("us-east-1c")),
        ),
        case(
            "a preference no pool can meet is relaxed, and the pod is placed",
            one(pod("a", "500m", "512Mi").prefer_node(10, labels::INSTANCE_CATEGORY, &["zz"])),
            vec![general()],
            |o| o.all_placed(),
        ),
        case(
            "the heaviest preferred term goes first, then a lighter one is kept",
            one(pod("a", "500m", "512Mi")
                .prefer_node(1, ZONE, &["us-east-1d"])
                .prefer_node(50, labels::CAPACITY_TYPE, &["on-demand"])),
            vec![spot_only()],
            |o| {
                assert_eq!(o.zone_of("a").as_deref(), Some("us-east-1d"));
                assert_eq!(o.node("a").capacity_type.to_string(), "spot");
            },
        ),
        case(
            "preferred hostname anti-affinity puts replicas on nodes of their own",
            pod("web", "250m", "256Mi")
                .label("app", "web")
                .prefer_anti_affinity(100, HOST, "web")
                .replicas(3),
            vec![general()],
            |o| {
                o.all_placed();
                let hosts = o.host_counts("web");
                assert_eq!(hosts.len(), 3, "{hosts:?}");
            },
        ),
        case(
            "relaxed rounds stay within the pool's limits",
            pod("web", "250m", "256Mi")
                .label("app", "web")
                .prefer_anti_affinity(100, HOST, "web")
                .replicas(4),
            vec![{
                let mut p = general();
                p.limits.nodes = Some(2);
                p
            }],
            |o| {
                assert_eq!(o.plan.nodes.len(), 2);
                assert_eq!(o.count_placed("web"), 2);
            },
        ),
        case(
            "preferred zone anti-affinity beyond the zones there are is relaxed for the rest",
            pod("web", "250m", "256Mi")
                .label("app", "web")
                .prefer_anti_affinity(100, ZONE, "web")
                .replicas(4),
            vec![two_zones()],
            |o| {
                o.all_placed();
                let zones = o.zone_counts("web");
                assert_eq!(zones.len(), 2, "{zones:?}");
            },
        ),
    ]);
}

// --- minValues -----------------------------------------------------------------------------------

/// Issue 11, item 5: a pool's `minValues` holds over each new node's types (chosen type and
/// alternatives), widened past the usual 60 alternatives where needed; a node that cannot keep it
/// is not planned, and its pods get Karpenter's reason.
#[test]
fn min_values_hold_over_each_nodes_types() {
    let with_min = |key: &str, op: Operator, values: &[&str], min: i32| {
        let mut r = req(key, op, values);
        r.min_values = Some(min);
        r
    };
    let distinct = |o: &Outcome, node: &PlannedNode, key: &str| -> usize {
        std::iter::once(&node.instance_type)
            .chain(&node.alternatives)
            .filter_map(|t| o.catalog.get(t).and_then(|it| it.label(key)))
            .collect::<BTreeSet<_>>()
            .len()
    };
    let families = |min| {
        pool(
            "families",
            vec![
                both_capacity_types(),
                with_min(labels::INSTANCE_FAMILY, Operator::Exists, &[], min),
            ],
        )
    };
    let types = |min| {
        pool(
            "types",
            vec![
                both_capacity_types(),
                with_min(labels::INSTANCE_TYPE, Operator::Exists, &[], min),
            ],
        )
    };
    let two_families = pool(
        "two",
        vec![
            both_capacity_types(),
            with_min(labels::INSTANCE_FAMILY, Operator::In, &["c5", "m5"], 3),
        ],
    );
    run(vec![
        case(
            "five instance families among a node's types",
            pod("a", "1", "2Gi").replicas(3),
            vec![families(5)],
            move |o| {
                o.all_placed();
                for n in &o.plan.nodes {
                    assert!(distinct(o, n, labels::INSTANCE_FAMILY) >= 5);
                }
            },
        ),
        case(
            "more types than the usual alternatives",
            one(pod("a", "1", "2Gi")),
            vec![types(90)],
            move |o| {
                let n = o.node("a");
                assert!(n.alternatives.len() + 1 >= 90, "{}", n.alternatives.len());
                assert!(distinct(o, n, labels::INSTANCE_TYPE) >= 90);
            },
        ),
        case(
            "a minValues no types can meet leaves the pod with Karpenter's reason",
            one(pod("a", "1", "2Gi")),
            vec![two_families],
            |o| {
                let r = o.unschedulable("a");
                assert!(
                    r.contains("minValues requirement is not met")
                        && r.contains(labels::INSTANCE_FAMILY)
                        && r.contains("minValues: 3"),
                    "{r}"
                );
            },
        ),
    ]);
}

/// Issue 11, item 6: a NodePool limit on any resource a node provides, GPUs here.
#[test]
fn pool_limits_on_devices() {
    let gpus = |n: i64| {
        let mut p = anything();
        p.name = "gpus".into();
        p.limits.others[NVIDIA_GPU] = Some(n);
        p
    };
    run(vec![
        case(
            "a GPU limit caps the GPUs launched, whatever the types",
            pod("train", "2", "8Gi")
                .label("app", "train")
                .limit("nvidia.com/gpu", "1")
                .anti_affinity(HOST, "train")
                .replicas(4),
            vec![gpus(2)],
            |o| {
                let gpus: u32 = o.plan.nodes.iter().map(|n| o.it(n).gpus).sum();
                assert!(gpus <= 2, "{gpus} GPUs launched under a limit of 2");
                assert_eq!(o.count_placed("train"), 2);
                for u in &o.plan.unschedulable {
                    assert!(u.reason.contains("nvidia.com/gpu 2 of 2"), "{}", u.reason);
                }
            },
        ),
        case(
            "pods without GPUs are not bound by a GPU limit",
            pod("web", "1", "1Gi").replicas(10),
            vec![gpus(0)],
            |o| o.all_placed(),
        ),
    ]);
}

/// Issue 11, item 7: a running pod's required anti-affinity keeps the pods it selects off its
/// node (hostname) or out of its zone, as the scheduler checks it from both sides.
#[test]
fn running_pods_anti_affinity_counts_against_new_pods() {
    let small = res(500, 512 * MIB, 1);
    run(vec![
        case(
            "zone anti-affinity of a running pod keeps the pods it selects out of its zone",
            pod("web", "500m", "512Mi").label("app", "web").replicas(6),
            vec![general()],
            |o| {
                let zones = o.zone_counts("web");
                assert!(!zones.contains_key("us-east-1a"), "{zones:?}");
                assert_eq!(zones.values().sum::<usize>(), 6);
            },
        )
        .nodes(vec![existing(
            "guard-node",
            "us-east-1a",
            small,
            vec![bound_repelling("guard", ZONE, "web")],
        )]),
        case(
            "hostname anti-affinity of a running pod keeps the pods it selects off its node",
            one(pod("web", "500m", "512Mi").label("app", "web")),
            vec![general()],
            |o| assert_ne!(o.placed_on("web"), Some("guard-node")),
        )
        .nodes(vec![existing(
            "guard-node",
            "us-east-1a",
            small,
            vec![bound_repelling("guard", HOST, "web")],
        )]),
        case(
            "anti-affinity selecting other pods does not bind these",
            one(pod("web", "500m", "512Mi").label("app", "web")),
            vec![general()],
            |o| assert_eq!(o.placed_on("web"), Some("guard-node")),
        )
        .nodes(vec![existing(
            "guard-node",
            "us-east-1a",
            small,
            vec![bound_repelling("guard", HOST, "db")],
        )]),
    ]);
}

/// Issue 11, item 7: `minDomains` on a zone spread: with fewer zones than minDomains, the global
/// minimum counts as 0, so each zone holds at most maxSkew matching pods.
#[test]
fn min_domains_caps_each_zone() {
    let three_zones = || {
        let mut p = general();
        p.requirements.push(req(
            ZONE,
            Operator::In,
            &["us-east-1a", "us-east-1b", "us-east-1c"],
        ));
        p
    };
    let spread = |min_domains: Option<i32>| {
        let mut c = json!({"maxSkew": 1, "topologyKey": ZONE, "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "web"}}});
        if let Some(m) = min_domains {
            c["minDomains"] = json!(m);
        }
        pod("web", "500m", "512Mi")
            .label("app", "web")
            .spread_raw(c)
    };
    run(vec![
        case(
            "minDomains above the zones there are: one pod per zone",
            spread(Some(4)).replicas(5),
            vec![three_zones()],
            |o| {
                assert_eq!(o.count_placed("web"), 3);
                assert!(o.zone_counts("web").values().all(|n| *n == 1));
            },
        ),
        case(
            "minDomains the zones meet changes nothing",
            spread(Some(3)).replicas(5),
            vec![three_zones()],
            |o| o.all_placed(),
        ),
        case(
            "without minDomains every pod is placed",
            spread(None).replicas(5),
            vec![three_zones()],
            |o| o.all_placed(),
        ),
    ]);
}

/// Issue 11, item 8: static NodePools (`spec.replicas`) get the nodes they are missing, the
/// cheapest offering they allow, within `limits.nodes`; pods are not planned onto their new nodes.
#[test]
fn static_pools_keep_their_replicas() {
    let fixed = |replicas: i64, have: i64| {
        let mut p = general();
        p.name = "fixed".into();
        p.replicas = Some(replicas);
        p.in_use.nodes = have;
        p
    };
    let capped = {
        let mut p = fixed(5, 0);
        p.limits.nodes = Some(3);
        p
    };
    run(vec![
        case(
            "the missing replicas, empty",
            Vec::new(),
            vec![fixed(3, 1)],
            |o| {
                assert_eq!(o.plan.nodes.len(), 2);
                let cheapest = o.plan.nodes[0].price_per_hour;
                for n in &o.plan.nodes {
                    assert_eq!(n.node_pool, "fixed");
                    assert!(n.pods.is_empty());
                    assert_eq!(n.price_per_hour, cheapest);
                    assert!(!n.alternatives.is_empty());
                }
                // The cheapest offering the pool allows: no c/m/r offering is cheaper.
                let cheaper = o.catalog.types.iter().any(|t| {
                    ["c", "m", "r"].contains(&t.category.as_str())
                        && t.offerings
                            .iter()
                            .any(|x| x.available && x.price < cheapest)
                });
                assert!(!cheaper);
            },
        ),
        case(
            "a full static pool gets none",
            Vec::new(),
            vec![fixed(2, 2)],
            |o| assert!(o.plan.nodes.is_empty()),
        ),
        case(
            "limits.nodes caps the replicas",
            Vec::new(),
            vec![capped],
            |o| assert_eq!(o.plan.nodes.len(), 3),
        ),
        case(
            "pods are not planned onto a static pool's new nodes",
            one(pod("a", "500m", "512Mi")),
            vec![fixed(1, 1)],
            |o| {
                assert!(o.plan.nodes.is_empty());
                assert!(
                    o.unschedulable("a").contains("static"),
                    "{}",
                    o.unschedulable("a")
                );
            },
        ),
        case(
            "pods go to the dynamic pool beside a static one",
            one(pod("a", "500m", "512Mi")),
            vec![fixed(1, 0), anything()],
            |o| {
                assert_eq!(o.node("a").node_pool, "anything");
                assert_eq!(o.plan.nodes.len(), 2);
            },
        ),
    ]);
}

/// Karpenter's scheduling-benchmark mix in small: five groups (no constraint, zone spread,
/// hostname spread, zone self-affinity, hostname anti-affinity) of `per_group` pods, with cpu and
/// memory requests cycling through the benchmark's lists.
fn benchmark_mix(per_group: usize) -> Vec<PendingPod> {
    const CPU_LIST: [&str; 5] = ["100m", "250m", "500m", "1000m", "1500m"];
    const MEMORY_LIST: [&str; 6] = ["100Mi", "256Mi", "512Mi", "1024Mi", "2048Mi", "4096Mi"];
    let mut pods = Vec::new();
    for (g, group) in [
        "generic",
        "zone-spread",
        "host-spread",
        "zone-affinity",
        "host-anti",
    ]
    .into_iter()
    .enumerate()
    {
        for i in 0..per_group {
            let b = pod(
                &format!("{group}-{i}"),
                CPU_LIST[(i + g) % CPU_LIST.len()],
                MEMORY_LIST[(i * 7 + g) % MEMORY_LIST.len()],
            )
            .label("app", group);
            let b = match g {
                1 => b.spread(ZONE, 1, "DoNotSchedule", group),
                2 => b.spread(HOST, 1, "DoNotSchedule", group),
                3 => b.affinity(ZONE, group),
                4 => b.anti_affinity(HOST, group),
                _ => b,
            };
            pods.push(b.build());
        }
    }
    pods
}

/// Issue 11, item 1: a limited pool is charged with the types its nodes launch as. The packer
/// fills larger types than it launches (the plan re-prices each node to the cheapest type that
/// holds its pods); charging the packed types spent the limit on room no node would have, and
/// left pods "at the limit" with the planned nodes far below it.
#[test]
fn pool_limits_are_charged_with_what_is_launched() {
    let pods = benchmark_mix(120);
    let plan = solve(&Input {
        pods: &pods,
        pools: &[anything()],
        catalog: catalog(),
        nodes: &[],
    });
    assert!(plan.unschedulable.is_empty(), "{}", describe_plan(&plan));
    let vcpus = |plan: &Plan| -> i64 {
        plan.nodes
            .iter()
            .map(|n| i64::from(catalog().get(&n.instance_type).unwrap().vcpus))
            .sum()
    };
    let needed = vcpus(&plan) * 1000;
    let limited = |cpu_millis: i64| {
        let mut p = anything();
        p.limits = Limits {
            cpu_millis: Some(cpu_millis),
            ..Default::default()
        };
        p
    };
    // Re-pricing can only shrink a node and tails only remove nodes, so a limit 5 % above the
    // unlimited plan's capacity is never reached while packing.
    let roomy = needed * 105 / 100;
    // Below the unlimited plan: pods are left out, and the limit is spent on them, not on room.
    let binding = needed * 80 / 100;
    run(vec![
        case(
            "a limit above what the plan launches strands no pod",
            pods.clone(),
            vec![limited(roomy)],
            |o| o.all_placed(),
        ),
        case(
            "a binding limit is used, not stranded",
            pods.clone(),
            vec![limited(binding)],
            move |o| {
                assert!(!o.plan.unschedulable.is_empty());
                for u in &o.plan.unschedulable {
                    assert!(
                        u.reason.contains("limits") || u.reason.contains("zone rule"),
                        "{}",
                        u.reason
                    );
                }
                let planned = o
                    .plan
                    .nodes
                    .iter()
                    .map(|n| i64::from(o.it(n).vcpus) * 1000)
                    .sum::<i64>();
                assert!(
                    planned * 100 >= binding * 90,
                    "{planned} of {binding} millicores planned"
                );
            },
        ),
    ]);
}

/// Found by the properties: zones are assigned before packing, and pods a bucket cannot take for
/// the pool's limits are dropped or spilled to the next pool; the pods that are placed must
/// still keep their zone spread or zone anti-affinity (the planner takes pods off until they do).
#[test]
fn zone_rules_survive_pool_limits() {
    let limited = |limits: Limits| {
        let mut p = with_weight(general(), 10);
        p.name = "limited".into();
        p.limits = limits;
        p
    };
    let overflow = || {
        let mut p = general();
        p.name = "overflow".into();
        p
    };
    let in_zones = |mut p: Pool, zones: &[&str]| {
        p.requirements.push(req(labels::ZONE, Operator::In, zones));
        p
    };
    let two_cores = Limits {
        cpu_millis: Some(2000),
        ..Default::default()
    };
    let four_cores = Limits {
        cpu_millis: Some(4000),
        ..Default::default()
    };
    run(vec![
        case(
            "zone spread under a cpu limit",
            pod("web", "1500m", "16Mi")
                .label("app", "web")
                .spread(ZONE, 1, "DoNotSchedule", "web")
                .replicas(3),
            vec![in_zones(limited(four_cores), &["us-east-1a", "us-east-1b"])],
            |o| {
                let counts = o.zone_counts("web");
                let (a, b) = (counts.get("us-east-1a"), counts.get("us-east-1b"));
                assert!(
                    a.unwrap_or(&0).abs_diff(*b.unwrap_or(&0)) <= 1,
                    "{counts:?}"
                );
            },
        ),
        case(
            "zone spread spilling to a pool in another zone",
            pod("web", "1500m", "16Mi")
                .label("app", "web")
                .spread(ZONE, 1, "DoNotSchedule", "web")
                .replicas(4),
            vec![
                in_zones(limited(two_cores), &["us-east-1a", "us-east-1b"]),
                in_zones(overflow(), &["us-east-1c"]),
            ],
            |o| {
                let counts = o.zone_counts("web");
                assert!(counts.values().all(|c| *c <= 2), "{counts:?}");
            },
        ),
        case(
            "zone anti-affinity spilling to a pool in another zone",
            pod("web", "1500m", "16Mi")
                .label("app", "web")
                .anti_affinity(ZONE, "web")
                .replicas(3),
            vec![
                in_zones(limited(two_cores), &["us-east-1a", "us-east-1b"]),
                in_zones(overflow(), &["us-east-1a", "us-east-1c"]),
            ],
            |o| {
                let counts = o.zone_counts("web");
                assert!(counts.values().all(|c| *c == 1), "{counts:?}");
            },
        ),
    ]);
}

// --- spot and on-demand -----------------------------------------------------------------------

fn offering_price(it: &InstanceType, zone: &str, ct: CapacityType) -> Option<f64> {
    it.offerings
        .iter()
        .find(|o| o.zone == zone && o.capacity_type == ct)
        .map(|o| o.price)
}

#[test]
fn capacity_types() {
    let on_demand = pool(
        "on-demand",
        vec![
            req(labels::CAPACITY_TYPE, Operator::In, &["on-demand"]),
            req(labels::INSTANCE_CATEGORY, Operator::In, &["c", "m", "r"]),
        ],
    );
    let spot_only = pool(
        "spot",
        vec![
            req(labels::CAPACITY_TYPE, Operator::In, &["spot"]),
            req(labels::INSTANCE_CATEGORY, Operator::In, &["c", "m", "r"]),
        ],
    );
    // The type the planner picks for a small pod, then that type's spot offerings taken away.
    let small = || one(pod("a", "1", "2Gi"));
    let pods = small();
    let baseline = solve(&Input {
        pods: &pods,
        pools: &[general()],
        catalog: catalog(),
        nodes: &[],
    });
    let chosen = baseline.nodes[0].clone();
    assert_eq!(chosen.capacity_type, CapacityType::Spot);
    let mut no_spot = catalog().clone();
    for z in catalog().zones() {
        no_spot.set_available(&chosen.instance_type, &z, CapacityType::Spot, false);
    }
    let mut no_spot_in_zone = catalog().clone();
    no_spot_in_zone.set_available(
        &chosen.instance_type,
        &chosen.zone,
        CapacityType::Spot,
        false,
    );
    let chosen_type = chosen.instance_type.clone();
    let chosen_type2 = chosen.instance_type.clone();
    let chosen_zone = chosen.zone.clone();
    // Everything of the pool unavailable.
    let mut nothing = catalog().clone();
    for t in catalog().types.iter().filter(|t| t.family == "m5") {
        for z in catalog().zones() {
            for ct in CapacityType::ALL {
                nothing.set_available(&t.name, &z, ct, false);
            }
        }
    }
    run(vec![
        case("spot when allowed", small(), vec![general()], |o| {
            let n = o.node("a");
            assert_eq!(n.capacity_type, CapacityType::Spot);
            let od = offering_price(o.it(n), &n.zone, CapacityType::OnDemand).unwrap();
            assert!(n.price_per_hour < od);
        }),
        case(
            "on-demand when only on-demand",
            small(),
            vec![on_demand],
            |o| {
                assert_eq!(o.node("a").capacity_type, CapacityType::OnDemand);
            },
        ),
        case(
            "on-demand selected in a spot-only pool",
            one(pod("a", "1", "2Gi").node_selector(labels::CAPACITY_TYPE, "on-demand")),
            vec![spot_only],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains(labels::CAPACITY_TYPE), "{r}");
            },
        ),
        // Found by the properties: one offering per type per bucket (see node_selection).
        case(
            "an on-demand pod next to a pod that may use spot",
            vec![
                pod("od", "10m", "16Mi")
                    .node_selector(labels::CAPACITY_TYPE, "on-demand")
                    .build(),
                pod("any", "10m", "16Mi").build(),
            ],
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.node("od").capacity_type, CapacityType::OnDemand);
            },
        ),
        case(
            "an on-demand pod next to a pod that may use spot, in us-east-1e",
            vec![
                pod("od", "10m", "16Mi")
                    .node_selector(labels::CAPACITY_TYPE, "on-demand")
                    .node_selector(ZONE, "us-east-1e")
                    .build(),
                pod("any", "10m", "16Mi")
                    .node_selector(ZONE, "us-east-1e")
                    .build(),
            ],
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.node("od").capacity_type, CapacityType::OnDemand);
            },
        ),
        case(
            "unavailable spot everywhere is avoided",
            small(),
            vec![general()],
            move |o| {
                let n = o.node("a");
                assert!(
                    n.instance_type != chosen_type || n.capacity_type != CapacityType::Spot,
                    "{} spot is unavailable",
                    n.instance_type
                );
                assert!(
                    !n.alternatives.contains(&chosen_type) || n.capacity_type != CapacityType::Spot
                );
            },
        )
        .catalog(no_spot),
        case(
            "unavailable spot in one zone is avoided",
            small(),
            vec![general()],
            move |o| {
                let n = o.node("a");
                assert!(
                    !(n.instance_type == chosen_type2
                        && n.zone == chosen_zone
                        && n.capacity_type == CapacityType::Spot),
                    "{} spot in {} is unavailable",
                    n.instance_type,
                    n.zone
                );
            },
        )
        .catalog(no_spot_in_zone),
        case(
            "a family with no available offering",
            one(pod("a", "1", "2Gi").node_selector(labels::INSTANCE_FAMILY, "m5")),
            vec![general()],
            |o| {
                o.unschedulable("a");
            },
        )
        .catalog(nothing),
    ]);
}

// --- topology spread --------------------------------------------------------------------------

fn skew(counts: &BTreeMap<String, usize>, domains: &BTreeSet<String>) -> usize {
    let max = domains
        .iter()
        .map(|z| counts.get(z).copied().unwrap_or(0))
        .max()
        .unwrap_or(0);
    let min = domains
        .iter()
        .map(|z| counts.get(z).copied().unwrap_or(0))
        .min()
        .unwrap_or(0);
    max - min
}

#[test]
fn topology_spread() {
    let zones = pool_zones(&general());
    assert_eq!(zones.len(), 6, "{zones:?}");
    let spread = |n: usize, skew: i32, when: &str| {
        pod("web", "500m", "1Gi")
            .label("app", "web")
            .spread(ZONE, skew, when, "web")
            .replicas(n)
    };
    let two_zones = || {
        let mut p = general();
        p.requirements.push(req(
            labels::ZONE,
            Operator::In,
            &["us-east-1a", "us-east-1b"],
        ));
        p
    };
    let mut cases = Vec::new();
    for n in [1usize, 4, 6, 7, 14, 20] {
        let zones = zones.clone();
        cases.push(case(
            "zone maxSkew 1",
            spread(n, 1, "DoNotSchedule"),
            vec![general()],
            move |o| {
                o.all_placed();
                let counts = o.zone_counts("web");
                assert!(skew(&counts, &zones) <= 1, "{counts:?}");
                assert_eq!(counts.len(), n.min(6), "{counts:?}");
            },
        ));
    }
    let z = zones.clone();
    cases.push(case(
        "zone maxSkew 2",
        spread(10, 2, "DoNotSchedule"),
        vec![general()],
        move |o| {
            o.all_placed();
            let counts = o.zone_counts("web");
            assert!(skew(&counts, &z) <= 2, "{counts:?}");
        },
    ));
    let z = zones.clone();
    cases.push(case(
        "zone maxSkew 2, few pods",
        spread(4, 2, "DoNotSchedule"),
        vec![general()],
        move |o| {
            o.all_placed();
            let counts = o.zone_counts("web");
            assert!(skew(&counts, &z) <= 2, "{counts:?}");
            assert!(counts.values().all(|c| *c <= 2), "{counts:?}");
        },
    ));
    let z = zones.clone();
    cases.push(case(
        "ScheduleAnyway is honoured when possible",
        spread(12, 1, "ScheduleAnyway"),
        vec![general()],
        move |o| {
            o.all_placed();
            let counts = o.zone_counts("web");
            assert_eq!(counts.len(), 6);
            assert!(skew(&counts, &z) <= 1, "{counts:?}");
        },
    ));
    cases.push(case(
        "ScheduleAnyway relaxed when a zone is pinned",
        pod("web", "500m", "1Gi")
            .label("app", "web")
            .spread(ZONE, 1, "ScheduleAnyway", "web")
            .node_selector(labels::ZONE, "us-east-1b")
            .replicas(3),
        vec![general()],
        |o| {
            o.all_placed();
            assert_eq!(o.zone_counts("web").get("us-east-1b"), Some(&3));
        },
    ));
    cases.push(case(
        "ScheduleAnyway gives way to zone self-affinity",
        pod("web", "500m", "1Gi")
            .label("app", "web")
            .spread(ZONE, 1, "ScheduleAnyway", "web")
            .affinity(ZONE, "web")
            .replicas(4),
        vec![general()],
        |o| {
            o.all_placed();
            assert_eq!(o.zone_counts("web").len(), 1);
        },
    ));
    cases.push(case(
        "DoNotSchedule does not give way to zone self-affinity",
        pod("web", "500m", "1Gi")
            .label("app", "web")
            .spread(ZONE, 1, "DoNotSchedule", "web")
            .affinity(ZONE, "web")
            .replicas(4),
        vec![general()],
        |o| {
            assert_eq!(o.count_placed("web"), 1);
            assert_eq!(o.plan.unschedulable.len(), 3);
        },
    ));
    cases.push(case(
        "spread over the zones the pool allows",
        spread(5, 1, "DoNotSchedule"),
        vec![two_zones()],
        |o| {
            o.all_placed();
            let counts = o.zone_counts("web");
            assert_eq!(counts.len(), 2);
            assert!(counts.values().all(|c| *c == 2 || *c == 3), "{counts:?}");
        },
    ));
    let arm_zones = pod_zones(
        &pod("x", "1", "1Gi")
            .node_selector(labels::ARCH, "arm64")
            .build()
            .constraints,
        &[general()],
        catalog(),
    );
    cases.push(case(
        "spread over the zones offering the selected types",
        pod("web", "500m", "1Gi")
            .label("app", "web")
            .spread(ZONE, 1, "DoNotSchedule", "web")
            .node_selector(labels::ARCH, "arm64")
            .replicas(2 * arm_zones.len()),
        vec![general()],
        move |o| {
            o.all_placed();
            let counts = o.zone_counts("web");
            assert!(
                arm_zones.len() < 6 && !arm_zones.contains("us-east-1e"),
                "{arm_zones:?}"
            );
            assert_eq!(counts.keys().cloned().collect::<BTreeSet<_>>(), arm_zones);
            assert!(counts.values().all(|c| *c == 2), "{counts:?}");
        },
    ));
    cases.push(case(
        "matchLabelKeys spreads each revision on its own",
        ["a", "b"]
            .iter()
            .flat_map(|rev| {
                pod(&format!("web-{rev}"), "500m", "1Gi")
                    .label("app", "web")
                    .label("pod-template-hash", rev)
                    .spread_raw(json!({"maxSkew": 1, "topologyKey": ZONE, "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchLabels": {"app": "web"}}, "matchLabelKeys": ["pod-template-hash"]}))
                    .replicas(3)
            })
            .collect(),
        vec![general()],
        |o| {
            o.all_placed();
            assert_eq!(o.zone_counts("web-a").len(), 3);
            assert_eq!(o.zone_counts("web-b").len(), 3);
        },
    ));
    cases.push(case(
        "spreads in another namespace do not count",
        pod("web", "500m", "1Gi")
            .label("app", "web")
            .spread(ZONE, 1, "DoNotSchedule", "web")
            .replicas(3)
            .into_iter()
            .chain(
                pod("web", "500m", "1Gi")
                    .namespace("other")
                    .label("app", "web")
                    .spread(ZONE, 1, "DoNotSchedule", "web")
                    .replicas(3),
            )
            .collect(),
        vec![general()],
        |o| {
            o.all_placed();
            assert_eq!(o.zone_counts("default/web").len(), 3);
            assert_eq!(o.zone_counts("other/web").len(), 3);
        },
    ));
    // Found by the properties (see pod_anti_affinity: tail consolidation across zones).
    cases.push(case(
        "zone spread survives packing with other pods",
        [(10, 14702), (10, 14702), (941, 16), (941, 16)]
            .iter()
            .enumerate()
            .map(|(i, (cpu, mem))| {
                pod(&format!("web-{i}"), &format!("{cpu}m"), &format!("{mem}Mi"))
                    .label("app", "web")
                    .spread(ZONE, 1, "DoNotSchedule", "web")
                    .build()
            })
            .chain(one(pod("other", "10m", "7124Mi")))
            .collect(),
        vec![{
            let mut p = general();
            p.kubelet.max_pods = Some(9);
            p
        }],
        |o| {
            o.all_placed();
            assert_eq!(o.zone_counts("web").len(), 4);
        },
    ));
    for (n, max_skew) in [(5usize, 1i32), (5, 2), (7, 3)] {
        cases.push(case(
            "hostname spread",
            pod("web", "100m", "128Mi")
                .label("app", "web")
                .spread(HOST, max_skew, "DoNotSchedule", "web")
                .replicas(n),
            vec![general()],
            move |o| {
                o.all_placed();
                let counts = o.host_counts("web");
                assert!(
                    counts.values().all(|c| *c <= max_skew as usize),
                    "{counts:?}"
                );
                assert!(counts.len() >= n.div_ceil(max_skew as usize));
            },
        ));
    }
    cases.push(case(
        "zone and hostname spread together",
        pod("web", "100m", "128Mi")
            .label("app", "web")
            .spread(HOST, 1, "DoNotSchedule", "web")
            .spread(ZONE, 1, "DoNotSchedule", "web")
            .replicas(9),
        vec![general()],
        move |o| {
            o.all_placed();
            assert!(o.host_counts("web").values().all(|c| *c == 1));
            assert!(skew(&o.zone_counts("web"), &zones) <= 1);
        },
    ));
    run(cases);
}

// --- pod anti-affinity ------------------------------------------------------------------------

#[test]
fn pod_anti_affinity() {
    let zones = pool_zones(&general());
    let three_zones = || {
        let mut p = general();
        p.requirements.push(req(
            labels::ZONE,
            Operator::In,
            &["us-east-1a", "us-east-1b", "us-east-1c"],
        ));
        p
    };
    let n_zones = zones.len();
    run(vec![
        case(
            "hostname anti-affinity",
            pod("web", "100m", "128Mi")
                .label("app", "web")
                .anti_affinity(HOST, "web")
                .replicas(4),
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.plan.nodes.len(), 4);
                assert!(o.host_counts("web").values().all(|c| *c == 1));
            },
        ),
        case(
            "zone anti-affinity beyond the zone count",
            pod("web", "100m", "128Mi")
                .label("app", "web")
                .anti_affinity(ZONE, "web")
                .replicas(8),
            vec![general()],
            move |o| {
                let counts = o.zone_counts("web");
                assert_eq!(counts.len(), n_zones);
                assert!(counts.values().all(|c| *c == 1));
                assert_eq!(o.plan.unschedulable.len(), 8 - n_zones);
                for u in &o.plan.unschedulable {
                    assert!(u.reason.contains("anti-affinity"), "{}", u.reason);
                }
            },
        ),
        case(
            "zone anti-affinity within the pool's zones",
            pod("web", "100m", "128Mi")
                .label("app", "web")
                .anti_affinity(ZONE, "web")
                .replicas(4),
            vec![three_zones()],
            |o| {
                assert_eq!(o.zone_counts("web").len(), 3);
                assert_eq!(o.plan.unschedulable.len(), 1);
            },
        ),
        case(
            "hostname anti-affinity to another workload",
            pod("web", "100m", "128Mi")
                .label("app", "web")
                .anti_affinity(HOST, "db")
                .replicas(3)
                .into_iter()
                .chain(pod("db", "100m", "128Mi").label("app", "db").replicas(2))
                .collect(),
            vec![general()],
            |o| {
                o.all_placed();
                let db: BTreeSet<String> = o.host_counts("db").into_keys().collect();
                for h in o.host_counts("web").keys() {
                    assert!(!db.contains(h), "web shares {h} with db");
                }
            },
        ),
        case(
            "zone anti-affinity to another workload is symmetric",
            pod("web", "100m", "128Mi")
                .label("app", "web")
                .anti_affinity(ZONE, "db")
                .replicas(3)
                .into_iter()
                .chain(pod("db", "100m", "128Mi").label("app", "db").replicas(3))
                .collect(),
            vec![general()],
            |o| {
                o.all_placed();
                let db: BTreeSet<String> = o.zone_counts("db").into_keys().collect();
                for z in o.zone_counts("web").keys() {
                    assert!(!db.contains(z), "web shares {z} with db");
                }
            },
        ),
        // Found by the properties: tail consolidation moves zone-bound pods into a node that is
        // not zone-bound, which a later step then empties into another zone.
        case(
            "zone anti-affinity survives packing with other pods",
            pod("web", "1500m", "16Mi")
                .label("app", "web")
                .anti_affinity(ZONE, "web")
                .replicas(2)
                .into_iter()
                .chain(one(pod("other", "10m", "3000Mi")))
                .collect(),
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.zone_counts("web").len(), 2);
            },
        ),
        case(
            "anti-affinity to pods in another namespace is not to ours",
            pod("web", "100m", "128Mi")
                .namespace("team-a")
                .label("app", "web")
                .anti_affinity(HOST, "web")
                .replicas(2)
                .into_iter()
                .chain(pod("web", "100m", "128Mi").label("app", "web").replicas(4))
                .collect(),
            vec![general()],
            |o| {
                o.all_placed();
                let counts = o.host_counts("team-a/web");
                assert_eq!(counts.len(), 2);
            },
        ),
    ]);
}

// --- pod affinity -----------------------------------------------------------------------------

#[test]
fn pod_affinity() {
    let cache_node = existing(
        "cache-1",
        "us-east-1b",
        res(7500, 20 * GIB, 10),
        vec![bound("cache")],
    );
    run(vec![
        case(
            "zone self-affinity",
            pod("web", "1", "2Gi")
                .label("app", "web")
                .affinity(ZONE, "web")
                .replicas(10),
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.zone_counts("web").len(), 1);
            },
        ),
        case(
            "hostname self-affinity",
            pod("web", "500m", "1Gi")
                .label("app", "web")
                .affinity(HOST, "web")
                .replicas(6),
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.plan.nodes.len(), 1);
                assert!(o.it(&o.plan.nodes[0]).vcpus >= 4);
            },
        ),
        case(
            "hostname self-affinity too big for any node",
            pod("web", "40", "1Gi")
                .label("app", "web")
                .affinity(HOST, "web")
                .replicas(10),
            vec![general()],
            |o| {
                assert_eq!(o.plan.unschedulable.len(), 10);
                assert!(
                    o.plan.unschedulable[0].reason.contains("share one node"),
                    "{}",
                    o.plan.unschedulable[0].reason
                );
            },
        ),
        case(
            "zone affinity to another workload",
            pod("web", "1", "2Gi")
                .label("app", "web")
                .affinity(ZONE, "db")
                .replicas(4)
                .into_iter()
                .chain(one(pod("db", "1", "2Gi")
                    .label("app", "db")
                    .node_selector(ZONE, "us-east-1d")))
                .collect(),
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.zone_of("db").as_deref(), Some("us-east-1d"));
                let counts = o.zone_counts("web");
                assert_eq!(counts.keys().collect::<Vec<_>>(), ["us-east-1d"]);
            },
        ),
        case(
            "zone affinity to a workload on an existing node",
            pod("web", "2", "4Gi")
                .label("app", "web")
                .affinity(ZONE, "cache")
                .replicas(3),
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(
                    o.zone_counts("web").keys().collect::<Vec<_>>(),
                    ["us-east-1b"]
                );
            },
        )
        .nodes(vec![cache_node]),
        case(
            "hostname affinity to another workload",
            pod("web", "200m", "256Mi")
                .label("app", "web")
                .affinity(HOST, "db")
                .replicas(2)
                .into_iter()
                .chain(one(pod("db", "1", "2Gi").label("app", "db")))
                .collect(),
            vec![general()],
            |o| {
                o.all_placed();
                let db = o.host_of("db").unwrap();
                assert_eq!(o.host_of("web-0").as_ref(), Some(&db));
                assert_eq!(o.host_of("web-1").as_ref(), Some(&db));
            },
        ),
        // Found by the properties: zones are chosen pod by pod, so a hostname self-affinity group
        // with a zone spread or zone anti-affinity is cut into one "bundle" per zone.
        case(
            "hostname self-affinity with a ScheduleAnyway zone spread",
            pod("web", "10m", "16Mi")
                .label("app", "web")
                .affinity(HOST, "web")
                .spread(ZONE, 1, "ScheduleAnyway", "web")
                .replicas(2),
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.host_counts("web").len(), 1);
            },
        ),
        case(
            "hostname self-affinity with a DoNotSchedule zone spread",
            pod("web", "10m", "16Mi")
                .label("app", "web")
                .affinity(HOST, "web")
                .spread(ZONE, 1, "DoNotSchedule", "web")
                .replicas(2),
            vec![general()],
            |o| assert!(o.host_counts("web").len() <= 1),
        ),
        case(
            "hostname self-affinity with zone anti-affinity",
            pod("web", "10m", "16Mi")
                .label("app", "web")
                .affinity(HOST, "web")
                .anti_affinity(ZONE, "web")
                .replicas(2),
            vec![general()],
            |o| assert!(o.host_counts("web").len() <= 1),
        ),
        case(
            "affinity to pods that do not exist",
            pod("web", "1", "2Gi")
                .label("app", "web")
                .affinity(ZONE, "nothing")
                .replicas(2),
            vec![general()],
            |o| {
                assert_eq!(o.plan.unschedulable.len(), 2);
                assert!(
                    o.plan.unschedulable[0].reason.contains("affinity"),
                    "{}",
                    o.plan.unschedulable[0].reason
                );
            },
        ),
    ]);
}

// --- existing and in-flight nodes -------------------------------------------------------------

#[test]
fn existing_nodes() {
    let free = || existing("node-1", "us-east-1a", res(1000, 4 * GIB, 5), vec![]);
    let tainted = || {
        let mut n = free();
        n.taints = vec![taint("maintenance", None, TaintEffect::NoSchedule)];
        n
    };
    let in_flight = || {
        let mut n = free();
        n.name = "launching-1".into();
        n.in_flight = true;
        n
    };
    let full = || existing("node-1", "us-east-1a", res(7800, 28 * GIB, 5), vec![]);
    let with_web = || {
        existing(
            "node-1",
            "us-east-1a",
            res(1000, 2 * GIB, 2),
            vec![bound("web"), bound("web")],
        )
    };
    run(vec![
        case(
            "a pod fits an existing node",
            one(pod("a", "1", "2Gi")),
            vec![general()],
            |o| {
                assert_eq!(o.placed_on("a"), Some("node-1"));
                assert!(o.plan.nodes.is_empty());
                assert_eq!(o.plan.total_price_per_hour, 0.0);
            },
        )
        .nodes(vec![free()]),
        case(
            "several pods share the room",
            pod("a", "2", "4Gi").replicas(4),
            vec![general()],
            |o| {
                // 6.9 cores free: three pods fit, the fourth needs a new node.
                let placed = o.plan.placements.len();
                assert_eq!(placed, 3);
                assert_eq!(o.plan.nodes.len(), 1);
                assert_eq!(o.plan.nodes[0].pods.len(), 1);
            },
        )
        .nodes(vec![free()]),
        case(
            "an in-flight node takes pods",
            one(pod("a", "1", "2Gi")),
            vec![general()],
            |o| {
                assert_eq!(o.placed_on("a"), Some("launching-1"));
            },
        )
        .nodes(vec![in_flight()]),
        case(
            "no pool, but an existing node",
            one(pod("a", "1", "2Gi")),
            vec![],
            |o| {
                assert_eq!(o.placed_on("a"), Some("node-1"));
            },
        )
        .nodes(vec![free()]),
        case(
            "no pool, and a full node",
            one(pod("a", "1", "2Gi")),
            vec![],
            |o| {
                let r = o.unschedulable("a");
                assert!(r.contains("no existing node has room"), "{r}");
            },
        )
        .nodes(vec![full()]),
        case(
            "a tainted node is not used",
            one(pod("a", "1", "2Gi")),
            vec![general()],
            |o| {
                assert!(o.placed_on("a").is_none());
                o.node("a");
            },
        )
        .nodes(vec![tainted()]),
        case(
            "a tainted node is used when tolerated",
            one(pod("a", "1", "2Gi")
                .toleration(json!({"key": "maintenance", "operator": "Exists"}))),
            vec![general()],
            |o| assert_eq!(o.placed_on("a"), Some("node-1")),
        )
        .nodes(vec![tainted()]),
        case(
            "a full node is not used",
            one(pod("a", "1", "2Gi")),
            vec![general()],
            |o| {
                o.node("a");
            },
        )
        .nodes(vec![full()]),
        case(
            "a node in another zone than selected is not used",
            one(pod("a", "1", "2Gi").node_selector(ZONE, "us-east-1b")),
            vec![general()],
            |o| assert_eq!(o.node("a").zone, "us-east-1b"),
        )
        .nodes(vec![free()]),
        case(
            "a node of the selected type is used",
            one(pod("a", "1", "2Gi").node_selector(labels::INSTANCE_TYPE, "m5.2xlarge")),
            vec![general()],
            |o| assert_eq!(o.placed_on("a"), Some("node-1")),
        )
        .nodes(vec![free()]),
        // Found by the properties: existing nodes take the pods of a hostname self-affinity
        // group one by one, first fit, so the group is split.
        case(
            "hostname self-affinity is not split between an existing and a new node",
            vec![
                pod("web-0", "1500m", "16Mi")
                    .label("app", "web")
                    .affinity(HOST, "web")
                    .build(),
                pod("web-1", "1", "16Mi")
                    .label("app", "web")
                    .affinity(HOST, "web")
                    .build(),
            ],
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.host_counts("web").len(), 1);
            },
        )
        .nodes(vec![existing(
            "node-1",
            "us-east-1a",
            res(6000, 4 * GIB, 5),
            vec![],
        )]),
        case(
            "hostname self-affinity is not split between two existing nodes",
            vec![
                pod("web-0", "1500m", "16Mi")
                    .label("app", "web")
                    .affinity(HOST, "web")
                    .build(),
                pod("web-1", "1", "16Mi")
                    .label("app", "web")
                    .affinity(HOST, "web")
                    .build(),
            ],
            vec![general()],
            |o| {
                o.all_placed();
                assert_eq!(o.host_counts("web").len(), 1);
            },
        )
        .nodes(vec![
            existing("node-1", "us-east-1a", res(6000, 4 * GIB, 5), vec![]),
            existing("node-2", "us-east-1a", res(6000, 4 * GIB, 5), vec![]),
        ]),
        case(
            "existing pods count for zone spread",
            pod("web", "500m", "512Mi")
                .label("app", "web")
                .spread(ZONE, 1, "DoNotSchedule", "web")
                .replicas(4),
            vec![general()],
            |o| {
                o.all_placed();
                let counts = o.zone_counts("web");
                assert!(!counts.contains_key("us-east-1a"), "{counts:?}");
                assert_eq!(counts.len(), 4);
                assert!(o.plan.placements.is_empty());
            },
        )
        .nodes(vec![with_web()]),
        case(
            "existing pods count for hostname anti-affinity",
            one(pod("web", "500m", "512Mi")
                .label("app", "web")
                .anti_affinity(HOST, "web")),
            vec![general()],
            |o| {
                assert!(o.placed_on("web").is_none());
                o.node("web");
            },
        )
        .nodes(vec![with_web()]),
        case(
            "existing pods count for zone anti-affinity",
            one(pod("web", "500m", "512Mi")
                .label("app", "web")
                .anti_affinity(ZONE, "web")),
            vec![general()],
            |o| assert_ne!(o.node("web").zone, "us-east-1a"),
        )
        .nodes(vec![with_web()]),
        case(
            "existing pods attract hostname affinity",
            one(pod("api", "500m", "512Mi")
                .label("app", "api")
                .affinity(HOST, "web")),
            vec![general()],
            |o| assert_eq!(o.placed_on("api"), Some("node-1")),
        )
        .nodes(vec![with_web()]),
        case(
            "existing pods count for hostname spread",
            pod("web", "100m", "128Mi")
                .label("app", "web")
                .spread(HOST, 3, "DoNotSchedule", "web")
                .replicas(3),
            vec![general()],
            |o| {
                // node-1 runs two: one more fits under maxSkew 3.
                assert_eq!(o.plan.placements.len(), 1);
                o.all_placed();
            },
        )
        .nodes(vec![with_web()]),
    ]);
}

// --- alternatives and daemon overhead ---------------------------------------------------------

#[test]
fn alternatives() {
    run(vec![
        case(
            "a small pod has the full list",
            one(pod("a", "100m", "128Mi")),
            vec![anything()],
            |o| {
                let n = o.node("a");
                assert_eq!(n.alternatives.len(), MAX_ALTERNATIVES);
            },
        ),
        case(
            "a big pod",
            one(pod("a", "30", "200Gi")),
            vec![general()],
            |o| {
                let n = o.node("a");
                assert!(!n.alternatives.is_empty());
                for alt in &n.alternatives {
                    let it = o.catalog.get(alt).unwrap();
                    assert!(it.vcpus >= 32, "{alt}");
                }
            },
        ),
        case(
            "many mixed pods",
            (0..40)
                .map(|i| {
                    pod(
                        &format!("p{i}"),
                        &format!("{}m", 100 + 97 * i),
                        &format!("{}Mi", 256 + 311 * i),
                    )
                    .build()
                })
                .collect(),
            vec![general()],
            |o| {
                o.all_placed();
                assert!(o.plan.nodes.iter().any(|n| !n.alternatives.is_empty()));
            },
        ),
        case(
            "alternatives hold a node's pods with a kubelet override",
            pod("a", "700m", "1Gi").replicas(9),
            vec![{
                let mut p = general();
                p.kubelet.max_pods = Some(3);
                p
            }],
            |o| {
                o.all_placed();
                for n in &o.plan.nodes {
                    for alt in &n.alternatives {
                        let room = o.catalog.get(alt).unwrap().allocatable(&o.pools[0].kubelet);
                        assert!(n.requests.fits_in(&room), "{alt}");
                    }
                }
            },
        ),
    ]);
}

#[test]
fn daemon_overhead() {
    let with_overhead = |overhead: Resources| {
        let mut p = general();
        p.daemon_overhead = overhead;
        p
    };
    let overhead = res(1000, GIB, 3);
    run(vec![
        case(
            "one pod",
            one(pod("a", "1", "1Gi")),
            vec![with_overhead(overhead)],
            move |o| {
                let n = o.node("a");
                assert_eq!(n.requests, o.pods[0].requests + overhead);
                assert!(n.requests.fits_in(&n.allocatable));
                assert!(n.allocatable.0[CPU] >= 2000);
                for alt in &n.alternatives {
                    let room = o.catalog.get(alt).unwrap().allocatable(&o.pools[0].kubelet);
                    assert!(room.0[CPU] >= 2000, "{alt}");
                }
            },
        ),
        case(
            "overhead larger than small types",
            one(pod("a", "100m", "128Mi")),
            vec![with_overhead(res(3000, 2 * GIB, 1))],
            |o| assert!(o.type_of("a").vcpus >= 4),
        ),
        case(
            "many pods, overhead on every node",
            pod("a", "900m", "1500Mi").replicas(30),
            vec![with_overhead(overhead)],
            move |o| {
                o.all_placed();
                for n in &o.plan.nodes {
                    let pods: Resources = n
                        .pod_indices
                        .iter()
                        .fold(Resources::ZERO, |acc, i| acc + o.pods[*i].requests);
                    assert_eq!(n.requests, pods + overhead);
                }
            },
        ),
        case(
            "overhead taking pod slots",
            pod("a", "10m", "16Mi").replicas(10),
            vec![{
                let mut p = with_overhead(res(100, 100 * MIB, 3));
                p.kubelet.max_pods = Some(5);
                p
            }],
            |o| {
                o.all_placed();
                assert!(o.plan.nodes.len() >= 5);
                assert!(o.plan.nodes.iter().all(|n| n.pods.len() <= 2));
            },
        ),
    ]);
}

// ---------------------------------------------------------------------------------------------
// Properties

#[derive(Clone, Debug)]
enum ZoneRule {
    None,
    Spread { max_skew: i32, required: bool },
    SelfAffinity,
    AntiAffinity,
}

#[derive(Clone, Debug)]
enum HostRule {
    None,
    Spread(i32),
    AntiAffinity,
    SelfAffinity,
}

#[derive(Clone, Debug)]
enum NodeRule {
    None,
    Arch(&'static str),
    CapacityType(&'static str),
    Zone(&'static str),
}

#[derive(Clone, Debug)]
struct Workload {
    zone: ZoneRule,
    host: HostRule,
    node: NodeRule,
    tolerates: bool,
    /// (cpu millis, memory MiB) per pod.
    pods: Vec<(i64, i64)>,
}

#[derive(Clone, Debug)]
struct ExistingSpec {
    zone: usize,
    used_cpu: i64,
    used_mem_gib: i64,
    /// Workload indices of the pods on it.
    pods: Vec<usize>,
    tainted: bool,
}

#[derive(Clone, Debug)]
struct Scenario {
    workloads: Vec<Workload>,
    overhead: bool,
    pool_taint: bool,
    max_pods: Option<u32>,
    existing: Vec<ExistingSpec>,
    /// cpu limit of the pool and cores already in use, in cores.
    cpu_limit: Option<(i64, i64)>,
    /// An on-demand pool of lower weight after the first.
    fallback: bool,
}

const ZONES: [&str; 6] = [
    "us-east-1a",
    "us-east-1b",
    "us-east-1c",
    "us-east-1d",
    "us-east-1e",
    "us-east-1f",
];

fn zone_rule() -> impl Strategy<Value = ZoneRule> {
    prop_oneof![
        4 => Just(ZoneRule::None),
        3 => (1i32..=2, prop::bool::weighted(0.8))
            .prop_map(|(max_skew, required)| ZoneRule::Spread { max_skew, required }),
        1 => Just(ZoneRule::SelfAffinity),
        1 => Just(ZoneRule::AntiAffinity),
    ]
}

fn host_rule() -> impl Strategy<Value = HostRule> {
    prop_oneof![
        4 => Just(HostRule::None),
        2 => (1i32..=3).prop_map(HostRule::Spread),
        2 => Just(HostRule::AntiAffinity),
        1 => Just(HostRule::SelfAffinity),
    ]
}

fn node_rule() -> impl Strategy<Value = NodeRule> {
    prop_oneof![
        4 => Just(NodeRule::None),
        1 => Just(NodeRule::Arch("arm64")),
        1 => Just(NodeRule::Arch("amd64")),
        1 => Just(NodeRule::CapacityType("on-demand")),
        1 => Just(NodeRule::CapacityType("spot")),
        1 => prop::sample::select(&ZONES[..]).prop_map(NodeRule::Zone),
    ]
}

fn workload(max_pods: usize) -> impl Strategy<Value = Workload> {
    (
        zone_rule(),
        host_rule(),
        node_rule(),
        prop::bool::weighted(0.9),
        prop::collection::vec((10i64..=4000, 16i64..=16384), 1..=max_pods),
    )
        .prop_map(|(zone, host, node, tolerates, pods)| Workload {
            zone,
            host,
            node,
            tolerates,
            pods,
        })
}

fn existing_spec() -> impl Strategy<Value = ExistingSpec> {
    (
        0usize..6,
        0i64..=7000,
        0i64..=24,
        prop::collection::vec(0usize..3, 0..=3),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(zone, used_cpu, used_mem_gib, pods, tainted)| ExistingSpec {
                zone,
                used_cpu,
                used_mem_gib,
                pods,
                tainted,
            },
        )
}

/// `max_existing` existing nodes at most; `limited`: the pool gets a cpu limit (4-64 cores,
/// sometimes partly in use) and an on-demand fallback pool of lower weight.
fn scenario(max_existing: usize, limited: bool) -> impl Strategy<Value = Scenario> {
    let limit = if limited {
        prop::option::of((4i64..=64, 0i64..=8)).boxed()
    } else {
        Just(None).boxed()
    };
    (
        prop::collection::vec(workload(20), 1..=3),
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.2),
        prop::option::weighted(0.2, 4u32..=20),
        prop::collection::vec(existing_spec(), 0..=max_existing),
        limit,
    )
        .prop_map(
            move |(workloads, overhead, pool_taint, max_pods, existing, limit)| Scenario {
                workloads,
                overhead,
                pool_taint,
                max_pods,
                existing,
                cpu_limit: limit,
                fallback: limited,
            },
        )
}

/// The pods, the pool and the existing nodes of a scenario.
fn materialise(s: &Scenario) -> (Vec<PendingPod>, Vec<Pool>, Vec<ExistingNode>) {
    let mut pods = Vec::new();
    for (w, workload) in s.workloads.iter().enumerate() {
        let app = format!("w{w}");
        for (i, (cpu, mem)) in workload.pods.iter().enumerate() {
            let mut p = pod(
                &format!("w{w}-{i}"),
                &format!("{cpu}m"),
                &format!("{mem}Mi"),
            )
            .label("app", &app)
            .label("replica", &i.to_string());
            p = match workload.zone {
                ZoneRule::None => p,
                ZoneRule::Spread { max_skew, required } => p.spread(
                    ZONE,
                    max_skew,
                    if required {
                        "DoNotSchedule"
                    } else {
                        "ScheduleAnyway"
                    },
                    &app,
                ),
                ZoneRule::SelfAffinity => p.affinity(ZONE, &app),
                ZoneRule::AntiAffinity => p.anti_affinity(ZONE, &app),
            };
            p = match workload.host {
                HostRule::None => p,
                HostRule::Spread(max_skew) => p.spread(HOST, max_skew, "DoNotSchedule", &app),
                HostRule::AntiAffinity => p.anti_affinity(HOST, &app),
                HostRule::SelfAffinity => p.affinity(HOST, &app),
            };
            p = match workload.node {
                NodeRule::None => p,
                NodeRule::Arch(a) => p.node_selector(labels::ARCH, a),
                NodeRule::CapacityType(c) => p.node_selector(labels::CAPACITY_TYPE, c),
                NodeRule::Zone(z) => p.node_selector(ZONE, z),
            };
            if workload.tolerates {
                p = p.toleration(json!({"key": "dedicated", "operator": "Exists"}));
            }
            pods.push(p.build());
        }
    }
    let mut first = general();
    if s.overhead {
        first.daemon_overhead = res(200, 256 * MIB, 2);
    }
    if s.pool_taint {
        first.taints = vec![taint("dedicated", Some("batch"), TaintEffect::NoSchedule)];
    }
    first.kubelet.max_pods = s.max_pods;
    first.weight = 10;
    if let Some((limit, in_use)) = s.cpu_limit {
        first.limits.cpu_millis = Some(limit * 1000);
        first.in_use.cpu_millis = in_use * 1000;
    }
    let mut pools = vec![first];
    if s.fallback {
        pools.push(pool(
            "fallback",
            vec![
                req(labels::CAPACITY_TYPE, Operator::In, &["on-demand"]),
                req(labels::INSTANCE_CATEGORY, Operator::In, &["c", "m", "r"]),
            ],
        ));
    }
    let nodes = s
        .existing
        .iter()
        .enumerate()
        .map(|(k, e)| {
            let bound_pods: Vec<BoundPod> = e
                .pods
                .iter()
                .filter(|w| **w < s.workloads.len())
                .map(|w| bound(&format!("w{w}")))
                .collect();
            let mut n = existing(
                &format!("node-{k}"),
                ZONES[e.zone],
                res(e.used_cpu, e.used_mem_gib * GIB, bound_pods.len() as i64),
                bound_pods,
            );
            if e.tainted {
                n.taints = vec![taint("maintenance", None, TaintEffect::NoSchedule)];
            }
            n
        })
        .collect();
    (pods, pools, nodes)
}

/// Properties beyond [`check_plan`] for scenarios whose pods are grouped by workload.
fn check_workloads(s: &Scenario, pods: &[PendingPod], nodes: &[ExistingNode], plan: &Plan) {
    let mut host: Vec<Option<String>> = vec![None; pods.len()];
    let mut zone: Vec<Option<String>> = vec![None; pods.len()];
    for (k, n) in plan.nodes.iter().enumerate() {
        for &i in &n.pod_indices {
            host[i] = Some(format!("new-{k}"));
            zone[i] = Some(n.zone.clone());
        }
    }
    for p in &plan.placements {
        host[p.pod_index] = Some(p.node.clone());
        zone[p.pod_index] = nodes
            .iter()
            .find(|n| n.name == p.node)
            .and_then(|n| n.labels.get(labels::ZONE).cloned());
    }
    let mut first = 0;
    for (w, workload) in s.workloads.iter().enumerate() {
        let range = first..first + workload.pods.len();
        first = range.end;
        let app = format!("w{w}");
        let on_existing = nodes
            .iter()
            .any(|n| n.pods.iter().any(|p| p.labels["app"] == app));
        let hosts: Vec<&String> = range.clone().filter_map(|i| host[i].as_ref()).collect();
        let zones: BTreeSet<&String> = range.clone().filter_map(|i| zone[i].as_ref()).collect();
        match workload.host {
            HostRule::AntiAffinity => {
                let distinct: BTreeSet<_> = hosts.iter().collect();
                assert_eq!(
                    distinct.len(),
                    hosts.len(),
                    "{app}: hostname anti-affinity broken"
                );
            }
            HostRule::Spread(max_skew) => {
                for h in &hosts {
                    let n = hosts.iter().filter(|x| *x == h).count();
                    assert!(
                        n as i32 <= max_skew,
                        "{app}: {n} pods on {h}, maxSkew {max_skew}"
                    );
                }
            }
            HostRule::SelfAffinity if !on_existing => {
                let distinct: BTreeSet<_> = hosts.iter().collect();
                assert!(
                    distinct.len() <= 1,
                    "{app}: hostname self-affinity on {distinct:?}"
                );
            }
            _ => {}
        }
        match workload.zone {
            ZoneRule::SelfAffinity if !on_existing => {
                assert!(
                    zones.len() <= 1,
                    "{app}: zone self-affinity across {zones:?}"
                );
            }
            ZoneRule::AntiAffinity => {
                let placed = range.clone().filter(|i| zone[*i].is_some()).count();
                assert_eq!(placed, zones.len(), "{app}: zone anti-affinity broken");
            }
            _ => {}
        }
    }
}

fn check_scenario(s: &Scenario) {
    let (pods, pools, nodes) = materialise(s);
    let input = Input {
        pods: &pods,
        pools: &pools,
        catalog: catalog(),
        nodes: &nodes,
    };
    let plan = solve(&input);
    let result = catch_unwind(AssertUnwindSafe(|| {
        check_plan(&pods, &pools, catalog(), &nodes, &plan);
        check_workloads(s, &pods, &nodes, &plan);
        let again = solve(&input);
        assert!(again == plan, "solving twice gave different plans");
    }));
    if let Err(e) = result {
        panic!("{}\nplan:\n{}", panic_message(&*e), describe_plan(&plan));
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        // no regression file next to the tests: report the minimal case instead
        failure_persistence: None,
        ..ProptestConfig::with_cases(32)
    })]

    #[test]
    fn random_workloads_get_valid_plans(s in scenario(0, false)) {
        check_scenario(&s);
    }

    #[test]
    fn random_workloads_with_existing_nodes_get_valid_plans(s in scenario(3, false)) {
        check_scenario(&s);
    }

    #[test]
    fn random_workloads_over_limited_pools_get_valid_plans(s in scenario(0, true)) {
        check_scenario(&s);
    }
}

/// The pure properties on larger unconstrained mixes: nothing but requests.
#[test]
fn unconstrained_mixes_pack_within_allocatable() {
    let mut rng = 0x5eed_u64;
    let mut next = |lo: i64, hi: i64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + ((rng >> 33) as i64) % (hi - lo + 1)
    };
    for round in 0..4 {
        let pods: Vec<PendingPod> = (0..150)
            .map(|i| {
                pod(
                    &format!("p{round}-{i}"),
                    &format!("{}m", next(10, 4000)),
                    &format!("{}Mi", next(16, 16384)),
                )
                .build()
            })
            .collect();
        let pools = [general()];
        let plan = solve(&Input {
            pods: &pods,
            pools: &pools,
            catalog: catalog(),
            nodes: &[],
        });
        check_plan(&pods, &pools, catalog(), &[], &plan);
        assert!(plan.unschedulable.is_empty());
    }
}
