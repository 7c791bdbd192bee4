//! The provisioner's loop ([`Provisioner::run`]) against fakes only: the recording
//! [`FakeCloud`], the in-memory claim store, the fake cluster and a watch-less [`ClusterState`]
//! fed by the test as the watches would feed it. Time is tokio's paused clock; the loop's own
//! deadlines (batch window, retry backoff) are `std::time::Instant`s, and claim ages and
//! registration times are wall-clock, so the configs use windows of one second and 0s
//! thresholds.

use std::sync::{OnceLock, RwLock};

use serde_json::json;

use super::*;
use crate::cloud::fake::{Call, FakeCloud};
use crate::cluster::fake::FakeCluster;
use crate::cluster::nodes::TERMINATION_FINALIZER;
use crate::metrics::Metrics;
use crate::metrics::disruption::DisruptionMetrics;
use crate::scheduling::view::ClusterView;

// ---- builders ---------------------------------------------------------------------------------

const POOL: &str = "pool";
const ZONE: &str = "us-east-1a";
const TYPES: [&str; 3] = ["m5.large", "m5a.large", "m6i.large"];

/// One on-demand pool of [`TYPES`] in [`ZONE`] with `disruption` (YAML flow text), its
/// EC2NodeClass, and a Policy that provisions for cluster `workshop`.
fn config(disruption: &str, registration_timeout: &str) -> Config {
    config_with(disruption, registration_timeout, "")
}

/// As [`config`], with `template` (lines indented for the pool's `template.spec`) added.
fn config_with(disruption: &str, registration_timeout: &str, template: &str) -> Config {
    config_full(disruption, registration_timeout, template, "")
}

/// As [`config_with`], with `policy` (lines indented for the Policy's `spec`) added.
fn config_full(
    disruption: &str,
    registration_timeout: &str,
    template: &str,
    policy: &str,
) -> Config {
    let types = TYPES.join(", ");
    let text = format!(
        r#"apiVersion: karpenter.sh/v1
kind: NodePool
metadata: {{name: {POOL}}}
spec:
  disruption: {disruption}
  template:
    spec:
      nodeClassRef: {{group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}}
      requirements:
        - {{key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}}
        - {{key: topology.kubernetes.io/zone, operator: In, values: [{ZONE}]}}
        - {{key: node.kubernetes.io/instance-type, operator: In, values: [{types}]}}
{template}---
apiVersion: karpenter.k8s.aws/v1
kind: EC2NodeClass
metadata: {{name: default}}
spec:
  amiSelectorTerms: [{{alias: al2023@latest}}]
  role: KarpenterNodeRole-workshop
  subnetSelectorTerms: [{{tags: {{karpenter.sh/discovery: workshop}}}}]
  securityGroupSelectorTerms: [{{tags: {{karpenter.sh/discovery: workshop}}}}]
---
apiVersion: nodewright.io/v1alpha1
kind: Policy
metadata: {{name: default}}
spec:
  nodeSelectorKey: karpenter.sh/nodepool
  rules:
    - {{name: app, nodePool: {POOL}, namespaces: [app]}}
  batching: {{idleDuration: 1s, maxDuration: 10s}}
  provisioning:
    clusterName: workshop
    clusterEndpoint: https://workshop.eks.example.com
    registrationTimeout: {registration_timeout}
{policy}"#
    );
    Config::parse(&text, "provision-test.yaml").expect("a valid config")
}

/// Empty nodes go at once; nothing else disrupts.
fn when_empty() -> Config {
    config(
        "{consolidationPolicy: WhenEmpty, consolidateAfter: 0s}",
        "15m",
    )
}

fn never_consolidate() -> Config {
    config(
        "{consolidationPolicy: WhenEmpty, consolidateAfter: Never}",
        "15m",
    )
}

/// The embedded us-east-1 catalog, read once for all tests.
fn catalog() -> Arc<Catalog> {
    static CATALOG: OnceLock<Arc<Catalog>> = OnceLock::new();
    CATALOG
        .get_or_init(|| {
            Arc::new(
                crate::cloud::catalog::embedded("us-east-1", &Default::default())
                    .expect("embedded catalog"),
            )
        })
        .clone()
}

/// `app/<name>`, unschedulable, asking for half a CPU.
fn pending_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "app", "uid": format!("uid-{name}")},
        "spec": {"containers": [{"name": "app", "image": "pause",
                 "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}}}]},
        "status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]},
    }))
    .expect("a valid Pod")
}

/// The same pod, bound to `node` and running.
fn bound_pod(name: &str, node: &str) -> Pod {
    let mut pod = pending_pod(name);
    pod.spec.as_mut().expect("spec").node_name = Some(node.to_owned());
    pod.status = Some(serde_json::from_value(json!({"phase": "Running"})).expect("status"));
    pod
}

/// The Node the kubelet of the claim's instance registers.
fn node_of(claim: &NodeClaim) -> Node {
    let s = claim.status.as_ref().expect("a launched claim");
    let id = s.instance_id.as_deref().expect("an instance");
    let zone = s.zone.as_deref().expect("a zone");
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("ip-{id}"),
            "resourceVersion": "1",
            "labels": {
                "karpenter.sh/nodepool": claim.spec.node_pool,
                "node.kubernetes.io/instance-type": s.instance_type,
                "topology.kubernetes.io/zone": zone,
            },
        },
        "spec": {"providerID": format!("aws:///{zone}/{id}")},
        "status": {"allocatable": {"cpu": "1930m", "memory": "7Gi", "pods": "29"}},
    }))
    .expect("a valid Node")
}

/// A running provisioner and the fakes around it. Dropping it stops the loop.
struct Harness {
    cloud: FakeCloud,
    cluster: FakeCluster,
    claims: ClaimStore,
    state: ClusterState,
    metrics: ProvisionMetrics,
    disruption: DisruptionMetrics,
    events: mpsc::UnboundedSender<ClusterEvent>,
    _unplaced: mpsc::Sender<Arc<Pod>>,
    leader: watch::Sender<bool>,
    config: Arc<ArcSwap<Config>>,
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn start(config: Config) -> Harness {
    start_with(config, FakeCloud::new())
}

/// Spawn [`Provisioner::run`] as the leader, with no cluster and no EC2.
fn start_with(config: Config, cloud: FakeCloud) -> Harness {
    let catalog_fn: Arc<dyn Fn() -> Arc<Catalog> + Send + Sync> = Arc::new(catalog);
    let state = ClusterState::new(
        Arc::new(RwLock::new(ClusterView::default())),
        catalog_fn.clone(),
    );
    let cluster = FakeCluster::default();
    let claims = ClaimStore::memory();
    let registry = Metrics::new();
    let metrics = ProvisionMetrics::new(&registry);
    let disruption = DisruptionMetrics::new(&registry);
    let (leader_tx, leader) = watch::channel(true);
    let (events, events_rx) = mpsc::unbounded_channel();
    let (unplaced, unplaced_rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let config = Arc::new(ArcSwap::from_pointee(config));
    let provisioner = Provisioner {
        config: config.clone(),
        catalog: catalog_fn,
        claims: claims.clone(),
        cloud: Some(Arc::new(cloud.clone())),
        nodes: Arc::new(cluster.clone()),
        state: state.clone(),
        client: None,
        metrics: metrics.clone(),
        disruption_metrics: disruption.clone(),
        leader,
        events: EventSink::disabled(),
        daemonsets: Arc::default(),
        volumes: crate::cluster::volumes::Volumes::unwatched(),
    };
    tokio::spawn(provisioner.run(events_rx, unplaced_rx, shutdown.clone()));
    Harness {
        cloud,
        cluster,
        claims,
        state,
        metrics,
        disruption,
        events,
        _unplaced: unplaced,
        leader: leader_tx,
        config,
        shutdown,
    }
}

impl Harness {
    /// A pod as the pod watch reports it: into the state, and its event to the provisioner.
    fn pod_seen(&self, pod: Pod) {
        if let Some(event) = self.state.apply_pod(pod) {
            self.events.send(event).expect("provisioner running");
        }
    }

    /// The pod `app/<name>` is deleted.
    fn pod_gone(&self, name: &str) {
        let key = format!("app/{name}");
        self.cluster.remove_pod(name);
        self.state.unbind(&key);
        self.events
            .send(ClusterEvent::PodSettled(key))
            .expect("provisioner running");
    }

    /// The claim's Node registers (in the cluster, the state and the node watch); its name.
    fn node_registers(&self, claim: &NodeClaim) -> String {
        let node = node_of(claim);
        self.cluster.put_node(node.clone());
        self.state.apply_node(&node);
        self.events
            .send(ClusterEvent::NodeApplied(Arc::new(node.clone())))
            .expect("provisioner running");
        node.metadata.name.expect("a name")
    }

    async fn stored(&self) -> Vec<NodeClaim> {
        self.claims.list().await.expect("memory store")
    }

    /// Claims named by Create calls, in order.
    fn creates(&self) -> Vec<String> {
        self.cloud
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Create { claim } => Some(claim),
                _ => None,
            })
            .collect()
    }

    fn deletes(&self) -> Vec<Vec<String>> {
        self.cloud
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Delete { instance_ids } => Some(instance_ids),
                _ => None,
            })
            .collect()
    }

    /// Let the loop run for `d` of tokio's (paused, auto-advancing) time.
    async fn run_for(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Run until the stored claims satisfy `done` (at most a minute of tokio time); them.
    async fn until(&self, what: &str, done: impl Fn(&[NodeClaim]) -> bool) -> Vec<NodeClaim> {
        for _ in 0..600 {
            let claims = self.stored().await;
            if done(&claims) {
                return claims;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "never: {what}; claims {:#?}, calls {:?}",
            self.stored().await,
            self.cloud.calls()
        );
    }

    /// One pending pod `app/web`, its claim launched and its Node registered.
    async fn registered_node(&self) -> (NodeClaim, String) {
        self.pod_seen(pending_pod("web"));
        let claims = self
            .until("one launched claim", |cs| {
                cs.len() == 1 && cs[0].phase() == Phase::Launched
            })
            .await;
        let node = self.node_registers(&claims[0]);
        let claims = self
            .until("the claim registered", |cs| {
                cs.len() == 1 && cs[0].phase() == Phase::Registered
            })
            .await;
        (claims[0].clone(), node)
    }

    /// As [`Self::registered_node`], then `app/web` binds to the node (in the cluster too).
    async fn occupied_node(&self) -> (NodeClaim, String) {
        let (claim, node) = self.registered_node().await;
        self.cluster.add_pod("web", &node, json!({}));
        self.pod_seen(bound_pod("web", &node));
        (claim, node)
    }

    fn decisions(&self, reason: &str, outcome: &str) -> u64 {
        self.disruption
            .decisions
            .with_label_values(&[POOL, reason, outcome])
            .get()
    }

    fn nodes_terminated(&self, reason: &str) -> u64 {
        self.disruption
            .nodes_terminated
            .with_label_values(&[POOL, reason])
            .get()
    }
}

fn instance_of(claim: &NodeClaim) -> String {
    claim
        .status
        .as_ref()
        .and_then(|s| s.instance_id.clone())
        .expect("a launched claim")
}

// ---- launch and registration ------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_unschedulable_pod_gets_a_claim_launched_and_registered() {
    let h = start(never_consolidate());
    h.pod_seen(pending_pod("web"));
    // Nothing before the batch window (1s idle) closes.
    h.run_for(Duration::from_millis(500)).await;
    assert!(h.stored().await.is_empty(), "no claim inside the window");
    assert!(h.creates().is_empty());

    let claims = h
        .until("one launched claim", |cs| {
            cs.len() == 1 && cs[0].phase() == Phase::Launched
        })
        .await;
    let claim = &claims[0];
    assert_eq!(claim.spec.node_pool, POOL);
    assert_eq!(claim.spec.pods, ["app/web"]);
    assert_eq!(
        claim.metadata.finalizers.as_deref(),
        Some(&[TERMINATION_FINALIZER.to_owned()][..])
    );
    assert_eq!(
        claim.spec.labels.get(CLAIM_TAG).map(String::as_str),
        Some(claim.name())
    );
    assert_eq!(h.creates(), [claim.name()]);
    let status = claim.status.as_ref().unwrap();
    assert_eq!(status.launch_attempts, 1);
    assert_eq!(status.zone.as_deref(), Some(ZONE));
    assert!(TYPES.contains(&status.instance_type.as_deref().unwrap()));
    assert!(h.cloud.instance(&instance_of(claim)).is_some());

    let node = h.node_registers(claim);
    let claims = h
        .until("the claim registered", |cs| {
            cs.len() == 1 && cs[0].phase() == Phase::Registered
        })
        .await;
    let status = claims[0].status.as_ref().unwrap();
    assert_eq!(status.node_name.as_deref(), Some(node.as_str()));
    assert!(status.registered_at.is_some());
    assert_eq!(claims[0].condition("Registered").unwrap().status, "True");
    // Without a kube client the labels and taints are not patched; the termination finalizer
    // goes on through ClusterOps.
    assert_eq!(
        h.cluster.finalizers(&node),
        Some(vec![TERMINATION_FINALIZER.to_owned()])
    );
    assert_eq!(h.metrics.unschedulable_to_registered.get_sample_count(), 1);
    // The pod is covered: later batches and reconciles launch nothing more.
    h.run_for(Duration::from_secs(20)).await;
    assert_eq!(h.creates().len(), 1);
    assert!(h.deletes().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_launch_failure_on_one_offering_falls_back_to_the_next() {
    let cloud = FakeCloud::new();
    let cat = catalog();
    let price = |t: &str| {
        cat.get(t)
            .unwrap()
            .offerings
            .iter()
            .find(|o| o.zone == ZONE && o.capacity_type == CapacityType::OnDemand)
            .unwrap()
            .price
    };
    let cheapest = TYPES
        .into_iter()
        .min_by(|a, b| price(a).total_cmp(&price(b)))
        .unwrap();
    cloud.fail_offering(
        cheapest,
        ZONE,
        CapacityType::OnDemand,
        crate::cloud::fake::ec2_error("CreateFleet", "InsufficientInstanceCapacity"),
    );
    let h = start_with(never_consolidate(), cloud);
    h.pod_seen(pending_pod("web"));
    let claims = h
        .until("one launched claim", |cs| {
            cs.len() == 1 && cs[0].phase() == Phase::Launched
        })
        .await;
    let claim = &claims[0];
    let offerings: Vec<&str> = claim
        .spec
        .offerings
        .iter()
        .map(|o| o.instance_type.as_str())
        .collect();
    assert_eq!(
        offerings[0], cheapest,
        "planned on the cheapest: {offerings:?}"
    );
    let status = claim.status.as_ref().unwrap();
    assert_eq!(status.instance_type.as_deref(), Some(offerings[1]));
    assert_eq!(status.launch_attempts, 1, "one attempt tried two offerings");
    assert_eq!(h.creates(), [claim.name()]);
    assert_eq!(
        h.cloud.unavailable(),
        [(cheapest.to_owned(), ZONE.to_owned(), CapacityType::OnDemand)]
    );
}

/// Every offering failing is one failed attempt: the claim stays Pending for a retry after a
/// backoff. (The backoff is kept in `std::time::Instant`, which tokio's paused clock does not
/// move, so the retries up to [`MAX_LAUNCH_ATTEMPTS`] are not driven here.)
#[tokio::test(start_paused = true)]
async fn a_launch_failing_on_every_offering_leaves_the_claim_pending_for_a_retry() {
    let cloud = FakeCloud::new();
    for t in TYPES {
        cloud.fail_offering(
            t,
            ZONE,
            CapacityType::OnDemand,
            crate::cloud::fake::ec2_error("CreateFleet", "InsufficientInstanceCapacity"),
        );
    }
    let h = start_with(never_consolidate(), cloud);
    h.pod_seen(pending_pod("web"));
    let claims = h
        .until("a failed attempt", |cs| {
            cs.len() == 1
                && cs[0]
                    .status
                    .as_ref()
                    .is_some_and(|s| s.launch_attempts == 1)
        })
        .await;
    let claim = &claims[0];
    assert_eq!(claim.phase(), Phase::Pending);
    const { assert!(MAX_LAUNCH_ATTEMPTS > 1) };
    let launched = claim.condition("Launched").unwrap();
    assert_eq!(
        (launched.status.as_str(), launched.reason.as_str()),
        ("False", "InsufficientInstanceCapacity")
    );
    assert_eq!(h.creates(), [claim.name()]);
    assert_eq!(
        h.metrics
            .ec2_errors
            .with_label_values(&["InsufficientInstanceCapacity"])
            .get(),
        1
    );
}

// ---- disruption and termination ---------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_empty_node_is_terminated_through_the_flow() {
    let h = start(when_empty());
    let (claim, node) = h.occupied_node().await;
    let instance = instance_of(&claim);
    // Its pod keeps it, as the pod watch counts it: the node is not even looked at again.
    h.run_for(Duration::from_secs(10)).await;
    assert!(h.deletes().is_empty(), "{:?}", h.cloud.calls());
    assert_eq!(h.stored().await[0].phase(), Phase::Registered);
    assert!(h.cluster.taints(&node).is_empty());
    assert_eq!(h.decisions("empty", "revalidation_failed"), 0);

    h.pod_gone("web");
    h.until("the claim gone", <[NodeClaim]>::is_empty).await;
    assert_eq!(h.deletes(), [vec![instance.clone()]]);
    assert_eq!(h.cloud.instance(&instance).unwrap().state, "terminated");
    assert_eq!(
        h.cluster.finalizers(&node),
        None,
        "the Node deleted and its finalizer removed"
    );
    assert_eq!(h.decisions("empty", "disrupted"), 1);
    assert_eq!(h.nodes_terminated("empty"), 1);
    assert_eq!(
        h.metrics.terminations.with_label_values(&["empty"]).get(),
        1
    );
    // Nothing is launched again for the gone pod.
    h.run_for(Duration::from_secs(10)).await;
    assert_eq!(h.creates().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_empty_node_whose_pods_cannot_be_listed_is_kept() {
    let h = start(when_empty());
    let (claim, node) = h.occupied_node().await;
    h.cluster.world().fail_pods_on = true;
    h.pod_gone("web");
    h.run_for(Duration::from_secs(10)).await;
    assert!(h.deletes().is_empty(), "{:?}", h.cloud.calls());
    assert_eq!(h.stored().await[0].phase(), Phase::Registered);
    assert!(h.decisions("empty", "revalidation_failed") >= 1);
    assert!(
        h.cluster.taints(&node).is_empty(),
        "the disruption taint comes off again"
    );
    // Once the pods can be read, it goes.
    h.cluster.world().fail_pods_on = false;
    h.until("the claim gone", <[NodeClaim]>::is_empty).await;
    assert_eq!(h.deletes(), [vec![instance_of(&claim)]]);
}

#[tokio::test(start_paused = true)]
async fn consolidate_after_never_keeps_an_empty_node() {
    let h = start(never_consolidate());
    let (_, node) = h.occupied_node().await;
    h.pod_gone("web");
    h.run_for(Duration::from_secs(60)).await;
    assert!(h.deletes().is_empty(), "{:?}", h.cloud.calls());
    let claims = h.stored().await;
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].phase(), Phase::Registered);
    assert!(h.cluster.taints(&node).is_empty(), "not even tainted");
    assert_eq!(h.decisions("empty", "disrupted"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_budget_of_zero_blocks_empty_removal() {
    let h = start(config(
        r#"{consolidationPolicy: WhenEmpty, consolidateAfter: 0s, budgets: [{nodes: "0"}]}"#,
        "15m",
    ));
    let (_, node) = h.occupied_node().await;
    h.pod_gone("web");
    h.run_for(Duration::from_secs(20)).await;
    assert!(h.deletes().is_empty(), "{:?}", h.cloud.calls());
    assert_eq!(h.stored().await[0].phase(), Phase::Registered);
    assert!(h.cluster.taints(&node).is_empty());
    assert!(h.decisions("empty", "budget_blocked") >= 5);
    assert_eq!(h.decisions("empty", "disrupted"), 0);
    assert_eq!(
        h.disruption
            .budget_allowed
            .with_label_values(&[POOL, "empty"])
            .get(),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn a_claim_deleted_by_someone_else_is_terminated() {
    let h = start(never_consolidate());
    let (claim, node) = h.occupied_node().await;
    let instance = instance_of(&claim);
    // A PodDisruptionBudget holds the pod at first.
    h.cluster.world().pdb.insert("web".into());
    h.claims.delete(claim.name()).await.unwrap();
    let claims = h
        .until("the claim in the flow", |cs| {
            cs.len() == 1 && cs[0].phase() == Phase::Terminating
        })
        .await;
    let status = claims[0].status.as_ref().unwrap();
    assert_eq!(status.disruption_reason.as_deref(), Some("Deleted"));
    assert!(claims[0].metadata.deletion_timestamp.is_some());
    h.run_for(Duration::from_secs(5)).await;
    assert!(
        h.deletes().is_empty(),
        "the instance stays while the pod does"
    );
    assert_eq!(
        h.cluster.taints(&node),
        ["karpenter.sh/disrupted:NoSchedule"]
    );
    assert!(
        h.cluster.world().evictions.len() >= 2,
        "retried with backoff"
    );

    h.cluster.world().pdb.clear();
    h.until("the claim gone", <[NodeClaim]>::is_empty).await;
    assert_eq!(h.deletes(), [vec![instance]]);
    assert_eq!(h.cluster.finalizers(&node), None);
    assert!(h.cluster.world().pods.is_empty(), "the pod was evicted");
    assert_eq!(h.nodes_terminated("deleted"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_node_that_never_registers_times_out() {
    // The smallest timeout the config takes; the claim's launch time is wall-clock (whole
    // seconds, rounded down), so it has passed by the first reconcile after the launch.
    let h = start(config(
        "{consolidationPolicy: WhenEmpty, consolidateAfter: Never}",
        "1ms",
    ));
    h.pod_seen(pending_pod("web"));
    let first = loop {
        if let Some(name) = h.creates().first() {
            break name.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    std::thread::sleep(Duration::from_millis(5));
    h.until("the first claim gone", |cs| {
        cs.iter().all(|c| c.name() != first)
    })
    .await;
    let deletes = h.deletes();
    assert_eq!(deletes.len(), 1, "{:?}", h.cloud.calls());
    let instance = &deletes[0][0];
    assert_eq!(
        h.cloud.instance(instance).unwrap().claim.as_deref(),
        Some(first.as_str())
    );
    assert_eq!(h.nodes_terminated("registration_timeout"), 1);
    assert_eq!(
        h.metrics
            .terminations
            .with_label_values(&["registration_timeout"])
            .get(),
        1
    );
    // Its pod is planned again: a new claim, a new launch.
    h.until("a second claim", |cs| cs.iter().any(|c| c.name() != first))
        .await;
    assert!(h.creates().len() >= 2);
    assert_ne!(h.creates()[1], first);
}

// ---- drift ------------------------------------------------------------------------------------

/// The fake's default view with another AMI for x86_64.
fn view_with_ami(ami: &str) -> crate::cloud::launch::NodeClassView {
    let mut view = FakeCloud::new().node_class_view();
    view.amis.insert("x86_64".to_owned(), ami.to_owned());
    view
}

#[tokio::test(start_paused = true)]
async fn a_node_whose_ami_is_no_longer_selected_is_replaced_as_drifted() {
    let h = start(never_consolidate());
    let (old, _) = h.occupied_node().await;
    let status = old.status.as_ref().unwrap();
    assert_eq!(status.image_id.as_deref(), Some("ami-1"));
    assert_eq!(status.subnet_id.as_deref(), Some("subnet-1"));
    assert_eq!(status.security_group_ids, ["sg-1"]);
    h.run_for(Duration::from_secs(10)).await;
    assert!(
        h.creates().len() == 1 && h.deletes().is_empty(),
        "nothing drifted yet"
    );
    assert!(h.cloud.calls().contains(&Call::NodeClassView {
        node_class: "default".into()
    }));

    // A newer AMI is selected: the node has drifted and a replacement launches with the new one.
    h.cloud.set_node_class_view(view_with_ami("ami-2"));
    let claims = h
        .until("a replacement launched", |cs| {
            cs.iter()
                .any(|c| c.name() != old.name() && c.phase() == Phase::Launched)
        })
        .await;
    let drifted = claims.iter().find(|c| c.name() == old.name()).unwrap();
    let condition = drifted.condition("Drifted").unwrap();
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("True", "AMIDrift")
    );
    assert!(condition.message.contains("ami-2"), "{condition:?}");
    let s = drifted.status.as_ref().unwrap();
    assert_eq!(s.disruption_reason.as_deref(), Some("Drifted"));
    let new = claims
        .iter()
        .find(|c| c.name() != old.name())
        .unwrap()
        .clone();
    assert_eq!(s.replacements, [new.name().to_owned()]);
    assert_eq!(
        new.status.as_ref().unwrap().image_id.as_deref(),
        Some("ami-2")
    );

    // Once the replacement registers, the drifted node goes; the replacement has not drifted.
    h.node_registers(&new);
    let claims = h
        .until("the drifted claim gone", |cs| {
            cs.len() == 1 && cs[0].name() == new.name() && cs[0].phase() == Phase::Registered
        })
        .await;
    assert_eq!(h.deletes(), [vec![instance_of(&old)]]);
    assert_eq!(h.decisions("drifted", "disrupted"), 1);
    h.run_for(Duration::from_secs(10)).await;
    assert_ne!(claims[0].condition_is("Drifted"), Some(true));
    assert_eq!(h.stored().await.len(), 1, "the replacement stays");
    assert_eq!(h.disruption.drifted.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_node_that_recorded_nothing_of_its_launch_is_not_judged_by_the_cloud() {
    let cloud = FakeCloud::new();
    // Launched as a nodewright before this check recorded AMI, subnet and groups.
    cloud.set_node_class_view(Default::default());
    let h = start_with(never_consolidate(), cloud);
    let (old, _) = h.occupied_node().await;
    assert_eq!(old.status.as_ref().unwrap().image_id, None);
    h.cloud.set_node_class_view(view_with_ami("ami-2"));
    h.run_for(Duration::from_secs(20)).await;
    let claims = h.stored().await;
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].condition("Drifted"), None);
    assert_eq!(h.creates().len(), 1);
    assert!(h.deletes().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_node_class_that_fails_to_resolve_keeps_its_nodes_as_they_are() {
    let h = start(never_consolidate());
    let (_, _) = h.occupied_node().await;
    for _ in 0..3 {
        h.cloud.fail_next(
            crate::cloud::fake::Op::NodeClassView,
            crate::cloud::fake::ec2_error("DescribeSubnets", "RequestLimitExceeded"),
        );
    }
    h.cloud.set_node_class_view(view_with_ami("ami-2"));
    h.run_for(Duration::from_secs(20)).await;
    let claims = h.stored().await;
    assert_eq!(claims[0].condition("Drifted"), None, "not judged");
    assert_eq!(
        h.metrics
            .ec2_errors
            .with_label_values(&["RequestLimitExceeded"])
            .get(),
        1,
        "tried once, then left alone for a while"
    );
    assert_eq!(h.creates().len(), 1);
}

// ---- replacement ------------------------------------------------------------------------------

/// The claim a replacement claim was launched for.
fn replaces(claim: &NodeClaim) -> Option<&str> {
    claim
        .metadata
        .annotations
        .as_ref()?
        .get(replacement::REPLACES)
        .map(String::as_str)
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_takes_over_the_replacement_an_earlier_leader_wrote_but_did_not_record() {
    let h = start(never_consolidate());
    let (old, node) = h.occupied_node().await;
    // The leader stops right after writing the replacement claim of the expired node: the
    // replacement is stored (Pending, not launched) and the old claim does not name it yet.
    h.leader.send(false).unwrap();
    h.run_for(Duration::from_secs(3)).await;
    // The old claim outlives expireAfter, its replacement will not before the test ends (claim
    // ages are wall-clock, in whole seconds).
    std::thread::sleep(Duration::from_millis(3100));
    let name = format!("{POOL}-earlier");
    let mut spec = old.spec.clone();
    spec.labels.insert(CLAIM_TAG.to_owned(), name.clone());
    let earlier = h
        .claims
        .create(&NodeClaim {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: old.metadata.labels.clone(),
                annotations: Some(BTreeMap::from([(
                    replacement::REPLACES.to_owned(),
                    old.name().to_owned(),
                )])),
                finalizers: Some(vec![TERMINATION_FINALIZER.to_owned()]),
                ..Default::default()
            },
            spec,
            ..Default::default()
        })
        .await
        .unwrap();
    h.config.store(Arc::new(config_with(
        "{consolidationPolicy: WhenEmpty, consolidateAfter: Never}",
        "15m",
        "      expireAfter: 3s\n",
    )));

    // Another replica (here the same loop, which forgets what it knew) takes the lead.
    h.leader.send(true).unwrap();
    let claims = h
        .until("the old claim waiting for the earlier replacement", |cs| {
            cs.iter().any(|c| {
                c.name() == old.name()
                    && c.status
                        .as_ref()
                        .is_some_and(|s| s.replacements == [name.clone()])
            }) && cs
                .iter()
                .any(|c| c.name() == name && c.phase() == Phase::Launched)
        })
        .await;
    h.run_for(Duration::from_secs(5)).await;
    let replacing: Vec<&str> = claims
        .iter()
        .filter(|c| replaces(c) == Some(old.name()))
        .map(NodeClaim::name)
        .collect();
    assert_eq!(replacing, [name.as_str()], "{claims:#?}");
    assert_eq!(h.stored().await.len(), 2, "{:#?}", h.stored().await);
    assert_eq!(h.creates(), [old.name(), earlier.name()]);
    assert_eq!(h.decisions("expired", "disrupted"), 1);

    // The replacement registers: the old node goes, once.
    let launched = h
        .stored()
        .await
        .into_iter()
        .find(|c| c.name() == name)
        .unwrap();
    h.node_registers(&launched);
    h.until("the old claim gone", |cs| {
        cs.len() == 1 && cs[0].name() == name
    })
    .await;
    assert_eq!(h.deletes(), [vec![instance_of(&old)]]);
    assert_eq!(h.cluster.finalizers(&node), None);
    assert_eq!(h.creates().len(), 2);
}

// ---- consolidation ----------------------------------------------------------------------------

/// A running pod of a ReplicaSet on `node`, in the cluster and the state, asking for `cpu`.
fn owned_pod_on(h: &Harness, name: &str, node: &str, cpu: &str) {
    let extra = json!({
        "metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "name": "web", "uid": "rs", "controller": true}]},
        "spec": {"containers": [{"name": "app", "image": "pause",
            "resources": {"requests": {"cpu": cpu, "memory": "256Mi"}}}]},
    });
    h.cluster.add_pod(name, node, extra.clone());
    let pod = bound_pod(name, node);
    let mut v = serde_json::to_value(&pod).unwrap();
    json_patch::merge(&mut v, &extra);
    h.pod_seen(serde_json::from_value(v).unwrap());
}

/// Two registered nodes with one small pod each (a filler pod made the second one necessary,
/// and left `filler_for` after both nodes were up).
async fn two_half_used_nodes(h: &Harness, filler_for: Duration) -> [(NodeClaim, String); 2] {
    let (a, node_a) = h.registered_node().await;
    owned_pod_on(h, "web", &node_a, "500m");
    owned_pod_on(h, "filler", &node_a, "1400m");
    h.pod_seen(pending_pod("web2"));
    let claims = h
        .until("a second claim launched", |cs| {
            cs.len() == 2 && cs.iter().all(|c| c.phase() != Phase::Pending)
        })
        .await;
    let b = claims.into_iter().find(|c| c.name() != a.name()).unwrap();
    let node_b = h.node_registers(&b);
    h.until("both registered", |cs| {
        cs.iter().all(|c| c.phase() == Phase::Registered)
    })
    .await;
    owned_pod_on(h, "web2", &node_b, "500m");
    h.run_for(filler_for).await;
    h.pod_gone("filler");
    let stored = h.stored().await;
    let find = |n: &str| stored.iter().find(|c| c.name() == n).unwrap().clone();
    [(find(a.name()), node_a), (find(b.name()), node_b)]
}

/// Consolidation at once, every node at a time, no stabilization window.
fn underutilized() -> Config {
    config_full(
        "{consolidationPolicy: WhenEmptyOrUnderutilized, consolidateAfter: 0s, budgets: [{nodes: '100%'}]}",
        "15m",
        "",
        "  consolidation: {stabilizationWindow: 0s}\n",
    )
}

#[tokio::test(start_paused = true)]
async fn the_stabilization_window_keeps_room_the_pool_needed_a_moment_ago() {
    let mut config = underutilized();
    config.policy.consolidation.stabilization_window = "10m".into();
    let h = start(config);
    let _ = two_half_used_nodes(&h, consolidation::PASS_EVERY * 2).await;
    // The filler's 1.4 CPU were asked for a moment ago: removing a node would leave less.
    h.run_for(consolidation::VALIDATE_AFTER * 4).await;
    assert_eq!(h.stored().await.len(), 2);
    assert!(h.deletes().is_empty());
    let kept = |kind: &str| {
        h.disruption
            .unconsolidatable
            .with_label_values(&[kind])
            .get()
    };
    assert_eq!(
        kept("stabilizing"),
        2,
        "{:?}",
        [
            "no_cheaper",
            "small_saving",
            "not_yet",
            "unstable",
            "budget"
        ]
        .map(kept)
    );
    // Once the window has passed, the move is taken.
    h.run_for(Duration::from_secs(600)).await;
    h.until("one claim left", |cs| cs.len() == 1).await;
}

#[tokio::test(start_paused = true)]
async fn two_half_used_nodes_become_one_after_the_decision_is_confirmed() {
    let h = start(underutilized());
    let [(a, node_a), (b, node_b)] = two_half_used_nodes(&h, Duration::ZERO).await;
    // Found on one pass, carried out on a later one (VALIDATE_AFTER): nothing before that.
    h.run_for(consolidation::VALIDATE_AFTER / 2).await;
    assert!(h.cluster.world().evictions.is_empty());
    let claims = h.until("one claim left", |cs| cs.len() == 1).await;
    let (gone, gone_node, kept_node) = if claims[0].name() == a.name() {
        (&b, &node_b, &node_a)
    } else {
        (&a, &node_a, &node_b)
    };
    assert_eq!(h.deletes(), [vec![instance_of(gone)]]);
    let moved = if gone_node == &node_a { "web" } else { "web2" };
    assert_eq!(h.cluster.world().evictions, [moved.to_owned()]);
    assert_ne!(gone_node, kept_node);
    assert_eq!(h.nodes_terminated("underutilized"), 1);
    assert_eq!(
        h.disruption
            .consolidation_moves
            .with_label_values(&["delete", "started"])
            .get(),
        1
    );
    assert_eq!(h.creates().len(), 2, "nothing launched for the move");
}

#[tokio::test(start_paused = true)]
async fn a_pod_arriving_before_the_confirmation_cancels_the_move() {
    let h = start(underutilized());
    let [(_, node_a), (_, node_b)] = two_half_used_nodes(&h, Duration::ZERO).await;
    // The move is found (a pass after the filler left); then both nodes fill up before the
    // confirming pass.
    let passes = || h.disruption.consolidation_decision.get_sample_count();
    let before = passes();
    while passes() == before {
        h.run_for(Duration::from_millis(100)).await;
    }
    owned_pod_on(&h, "big-a", &node_a, "1400m");
    owned_pod_on(&h, "big-b", &node_b, "1400m");
    h.run_for(consolidation::VALIDATE_AFTER * 3).await;
    let moves = |outcome: &str| {
        h.disruption
            .consolidation_moves
            .with_label_values(&["delete", outcome])
            .get()
    };
    assert_eq!((moves("revalidation_failed"), moves("started")), (1, 0));
    assert_eq!(h.stored().await.len(), 2);
    assert!(h.cluster.world().evictions.is_empty());
    assert!(h.deletes().is_empty());
}
