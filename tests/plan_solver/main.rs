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
//!
//! This file holds the harness (pod and pool builders, [`check_plan`], the case runner); the
//! tables are in [`constraints`] (one per Kubernetes constraint family), [`limits`] (pool limits),
//! [`karpenter`] (what Karpenter users write: preferences, minValues, devices, static pools) and
//! the random workloads in [`properties`].

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

mod constraints;
mod karpenter;
mod limits;
mod properties;
mod topology;
