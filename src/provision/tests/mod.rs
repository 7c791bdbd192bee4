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

mod consolidation;
mod disruption;
mod drift;
mod launch;
mod replacement;
