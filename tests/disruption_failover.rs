//! A leader that dies in the middle of a drain, end to end on the real control plane (the pieces
//! are those of `disruption_cluster.rs` and `workshop_e2e.rs`): two `nodewright serve` replicas
//! (distinct `POD_NAME`s) share the release's Lease `nodewright-provisioner`, both reach EC2
//! through the logging proxy in front of moto (tests/common/ec2proxy.rs), the kubelet stand-in
//! with kwok runs the Nodes and pods, and the real kube-scheduler calls the standby's extender.
//!
//! The leader is SIGKILLed (`Child::kill`: no graceful Lease release, as in a crash) while a
//! PodDisruptionBudget holds the drain of a deleted NodeClaim; the standby takes the Lease once
//! it expires, finds the claim Terminating, keeps both finalizers and the instance while the
//! budget holds, and finishes the termination once the budget is relaxed, calling
//! TerminateInstances for the instance exactly once across both replicas.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::Server;
use common::aws::{self, REGION};
use common::controlplane::{self, ExtenderSetup, Install, Process};
use common::ec2proxy::Ec2Proxy;
use common::kubelet::{KubeletConfig, Kubelets, ec2_client};
use common::moto::Moto;
use common::served::{
    clear_nodes_and_claims, ended, instance_state, metric_sum, nodeclaim_resource,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::{Api, Client};
use serde_json::{Value, json};

const CLUSTER: &str = "workshop";
const FINALIZER: &str = "nodewright.io/termination";
const LEASE: &str = "nodewright-provisioner";
const POOL: &str = "failover";

/// One tainted on-demand pool of c5.xlarge that never consolidates, for namespace `namespace`.
fn config_text(namespace: &str) -> String {
    format!(
        r#"apiVersion: karpenter.sh/v1
kind: NodePool
metadata:
  name: {POOL}
spec:
  disruption: {{consolidationPolicy: WhenEmpty, consolidateAfter: Never}}
  template:
    spec:
      nodeClassRef: {{group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}}
      taints:
        - {{key: nodewright.io/pool, value: {POOL}, effect: NoSchedule}}
      requirements:
        - {{key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}}
        - {{key: node.kubernetes.io/instance-type, operator: In, values: [c5.xlarge]}}
---
apiVersion: karpenter.k8s.aws/v1
kind: EC2NodeClass
metadata:
  name: default
spec:
  amiSelectorTerms: [{{alias: al2023@latest}}]
  role: KarpenterNodeRole-workshop
  subnetSelectorTerms: [{{tags: {{karpenter.sh/discovery: workshop}}}}]
  securityGroupSelectorTerms: [{{tags: {{karpenter.sh/discovery: workshop}}}}]
---
apiVersion: nodewright.io/v1alpha1
kind: Policy
metadata:
  name: default
spec:
  nodeSelectorKey: karpenter.sh/nodepool
  rules:
    - {{name: app, nodePool: {POOL}, namespaces: [{namespace}]}}
  batching: {{idleDuration: 1s, maxDuration: 10s}}
  provisioning:
    clusterName: workshop
    clusterEndpoint: https://workshop.eks.example.com
"#
    )
}

/// A Deployment of `replicas` pause pods as the steering webhook leaves them (the pool's
/// selector and toleration), `cpu` and 64Mi each.
fn deployment(name: &str, replicas: i32, cpu: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"karpenter.sh/nodepool": POOL},
                    "tolerations": [{"key": "nodewright.io/pool", "operator": "Equal", "value": POOL, "effect": "NoSchedule"}],
                    "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                                    "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}],
                },
            },
        }
    }))
    .unwrap()
}

/// Two (or more) replicas of nodewright on one release and config, EC2 through the proxy.
struct Failover {
    _moto: Moto,
    proxy: Ec2Proxy,
    /// Straight to moto (the test's own look-ups stay out of the proxy's log).
    ec2: aws_sdk_ec2::Client,
    client: Client,
    install: Install,
    namespace: String,
    _dir: tempfile::TempDir,
    ca: String,
    cert: PathBuf,
    key: PathBuf,
    config: PathBuf,
    /// `None` once killed.
    servers: Vec<Option<Server>>,
    /// Logs of killed replicas, kept.
    dead_logs: Vec<(usize, String)>,
    kubelets: Option<Kubelets>,
    scheduler: Option<Process>,
}

impl Failover {
    async fn new() -> Failover {
        let plane = controlplane::shared();
        plane.ensure_nodeclaim_crd().await;
        let client = plane.client().await;
        clear_nodes_and_claims(&client).await;
        let install = plane.install_nodewright().await;
        let namespace = plane.namespace("failover").await;
        let moto = Moto::start();
        let proxy = Ec2Proxy::start(&moto.endpoint).await;
        let ec2 = ec2_client(&moto.endpoint, REGION);
        aws::workshop_network(&ec2, CLUSTER).await;
        let dir = tempfile::tempdir().unwrap();
        let bundle =
            nodewright::certs::generate(&nodewright::certs::local_names(), time::Duration::days(1))
                .unwrap();
        let (cert, key, config) = (
            dir.path().join("tls.crt"),
            dir.path().join("tls.key"),
            dir.path().join("config.yaml"),
        );
        std::fs::write(&cert, &bundle.cert_pem).unwrap();
        std::fs::write(&key, &bundle.key_pem).unwrap();
        std::fs::write(&config, config_text(&namespace)).unwrap();
        Failover {
            _moto: moto,
            proxy,
            ec2,
            client,
            install,
            namespace,
            _dir: dir,
            ca: bundle.ca_pem,
            cert,
            key,
            config,
            servers: Vec::new(),
            dead_logs: Vec::new(),
            kubelets: None,
            scheduler: None,
        }
    }

    /// Start replica `replica-<n>`; returns n.
    fn start_replica(&mut self) -> usize {
        let identity = format!("replica-{}", self.servers.len());
        let args = [
            "--config",
            self.config.to_str().unwrap(),
            "--tls-cert",
            self.cert.to_str().unwrap(),
            "--tls-key",
            self.key.to_str().unwrap(),
            "--namespace",
            &self.install.namespace,
        ];
        let env = [
            ("AWS_ENDPOINT_URL_EC2", self.proxy.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", REGION),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("POD_NAME", identity.as_str()),
        ];
        self.servers.push(Some(Server::start_with_env(
            &args,
            Some(&self.install.kubeconfig),
            &env,
        )));
        self.servers.len() - 1
    }

    /// SIGKILL replica `i` (no graceful shutdown: the Lease is not given up).
    fn kill(&mut self, i: usize) {
        let mut server = self.servers[i].take().expect("a live replica");
        server.child.kill().unwrap();
        let status = server.child.wait().unwrap();
        eprintln!("replica-{i} killed: {status:?}");
        self.dead_logs.push((i, server.logs()));
    }

    fn server(&self, i: usize) -> &Server {
        self.servers[i].as_ref().expect("a live replica")
    }

    /// The kubelet stand-in (kwok running its Nodes) and the real kube-scheduler calling
    /// replica `i`'s extender.
    async fn start_peers(&mut self, i: usize) {
        let plane = controlplane::shared();
        plane.kwok();
        let mut kubelet = KubeletConfig::new(CLUSTER);
        kubelet.kwok = true;
        self.kubelets = Some(Kubelets::start_with(
            self.client.clone(),
            self.ec2.clone(),
            kubelet,
        ));
        let https = self.server(i).https.clone();
        let (scheduler, _) = plane
            .start_extender_scheduler(
                &format!("kube-scheduler-{}", self.namespace),
                &ExtenderSetup {
                    https: &https,
                    ca_pem: &self.ca,
                    client: None,
                    node_cache_capable: true,
                },
            )
            .await;
        self.scheduler = Some(scheduler);
    }

    async fn metrics(&self, i: usize) -> String {
        let Some(server) = &self.servers[i] else {
            return String::new();
        };
        match reqwest::get(format!("{}/metrics", server.ops)).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    async fn leading(&self, i: usize) -> bool {
        metric_sum(&self.metrics(i).await, "nodewright_provisioner_leader", &[]) == 1.0
    }

    /// The Lease's holder identity.
    async fn lease_holder(&self) -> Option<String> {
        Api::<Lease>::namespaced(self.client.clone(), &self.install.namespace)
            .get_opt(LEASE)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
    }

    fn replica_logs(&self, i: usize) -> String {
        match &self.servers[i] {
            Some(s) => s.logs(),
            None => self
                .dead_logs
                .iter()
                .find(|(j, _)| *j == i)
                .map(|(_, l)| l.clone())
                .unwrap_or_default(),
        }
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..self.servers.len() {
            let state = if self.servers[i].is_some() {
                "live"
            } else {
                "killed"
            };
            out.push_str(&format!(
                "--- replica-{i} ({state})\n{}\n",
                self.replica_logs(i)
            ));
        }
        if let Some(s) = &self.scheduler {
            out.push_str(&format!("--- kube-scheduler\n{}\n", s.logs()));
        }
        if let Some(k) = &self.kubelets {
            out.push_str(&format!("--- kubelet stand-in errors\n{:?}\n", k.errors()));
        }
        out.push_str(&format!("--- EC2 actions\n{:?}\n", self.proxy.actions()));
        out
    }

    async fn wait_until<F, Fut>(&self, what: &str, within: Duration, mut cond: F) -> Duration
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        while start.elapsed() < within {
            if cond().await {
                return start.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("timed out waiting for {what}\n{}", self.logs());
    }

    async fn claims(&self) -> Vec<Value> {
        Api::<DynamicObject>::all_with(self.client.clone(), &nodeclaim_resource())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect()
    }

    async fn claim(&self, name: &str) -> Option<Value> {
        Api::<DynamicObject>::all_with(self.client.clone(), &nodeclaim_resource())
            .get_opt(name)
            .await
            .unwrap()
            .map(|o| serde_json::to_value(o).unwrap())
    }

    async fn registered_claims(&self) -> Vec<Value> {
        self.claims()
            .await
            .into_iter()
            .filter(|c| c["status"]["phase"] == "Registered" && c["status"]["nodeName"].is_string())
            .collect()
    }

    async fn node(&self, name: &str) -> Option<Node> {
        Api::<Node>::all(self.client.clone())
            .get_opt(name)
            .await
            .unwrap()
    }

    /// The pods of this namespace labelled `app=<app>`, as (name, node, running).
    async fn pods_of(&self, app: &str) -> Vec<(String, Option<String>, bool)> {
        Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|p| {
                (
                    p.metadata.name.clone().unwrap_or_default(),
                    p.spec.as_ref().and_then(|s| s.node_name.clone()),
                    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"),
                )
            })
            .collect()
    }

    /// Delete the test's Deployments and pods, stop everything, clear the cluster.
    async fn finish(mut self) {
        let _ = Api::<Deployment>::namespaced(self.client.clone(), &self.namespace)
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
        let _ = Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
        drop(self.scheduler.take());
        drop(self.kubelets.take());
        self.servers.clear();
        clear_nodes_and_claims(&self.client).await;
    }
}

fn claim_name(claim: &Value) -> String {
    claim["metadata"]["name"].as_str().unwrap().to_owned()
}

fn claim_node(claim: &Value) -> String {
    claim["status"]["nodeName"].as_str().unwrap().to_owned()
}

fn claim_instance(claim: &Value) -> String {
    claim["status"]["instanceID"].as_str().unwrap().to_owned()
}

fn claim_has_finalizer(claim: &Value) -> bool {
    claim["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

fn node_has_finalizer(node: &Node) -> bool {
    node.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == FINALIZER)
}

fn condition(claim: &Value, type_: &str) -> Option<Value> {
    claim["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// The claim is Terminating and its drain is held by a PodDisruptionBudget.
fn pdb_blocked(claim: &Value) -> bool {
    claim["metadata"]["deletionTimestamp"].is_string()
        && claim["status"]["phase"] == "Terminating"
        && condition(claim, "Drained").is_some_and(|d| {
            d["status"] == "False"
                && d["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("PodDisruptionBudget"))
        })
}

/// The JSON log lines of `logs` whose message is `message` and whose every (field, value) of
/// `fields` matches.
fn log_lines(logs: &str, message: &str, fields: &[(&str, &str)]) -> Vec<Value> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == message)
        .filter(|v| fields.iter().all(|(k, x)| v[*k].as_str() == Some(*x)))
        .collect()
}

/// TerminateInstances requests (any answer) that name `instance`, with their answer status.
fn terminate_requests(proxy: &Ec2Proxy, instance: &str) -> Vec<u16> {
    proxy
        .requests("TerminateInstances")
        .into_iter()
        .filter(|r| {
            r.params
                .iter()
                .any(|(k, v)| k.starts_with("InstanceId") && v == instance)
        })
        .map(|r| r.status)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_drain_resumes_without_a_second_terminate_or_a_lost_finalizer() {
    let began = Instant::now();
    let mut w = Failover::new().await;

    // replica-0 first, so it leads; replica-1 stands by and serves the scheduler's extender
    // (every replica serves it), so scheduling outlives the leader.
    let first = w.start_replica();
    w.wait_until("replica-0 leading", Duration::from_secs(30), || async {
        w.leading(first).await
    })
    .await;
    let second = w.start_replica();
    w.start_peers(second).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(w.leading(first).await, "{}", w.logs());
    assert!(!w.leading(second).await, "{}", w.logs());
    assert_eq!(
        w.lease_holder().await.as_deref(),
        Some("replica-0"),
        "{}",
        w.logs()
    );

    let ns = w.namespace.clone();
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(w.client.clone(), &ns);
    pdbs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "app"},
            "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "app"}}},
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    const PODS: usize = 4;
    Api::<Deployment>::namespaced(w.client.clone(), &ns)
        .create(
            &PostParams::default(),
            &deployment("app", PODS as i32, "200m"),
        )
        .await
        .unwrap();

    // Running on one registered node.
    w.wait_until(
        "4 pods running on a registered node",
        Duration::from_secs(120),
        || async {
            let pods = w.pods_of("app").await;
            let nodes: HashSet<String> =
                w.registered_claims().await.iter().map(claim_node).collect();
            pods.len() == PODS
                && pods.iter().all(|(_, node, running)| {
                    *running && node.as_ref().is_some_and(|n| nodes.contains(n))
                })
        },
    )
    .await;
    let claims = w.registered_claims().await;
    assert_eq!(claims.len(), 1, "{claims:#?}\n{}", w.logs());
    let (claim, node, instance) = (
        claim_name(&claims[0]),
        claim_node(&claims[0]),
        claim_instance(&claims[0]),
    );
    eprintln!("claim {claim}, node {node}, instance {instance}");
    w.wait_until("both finalizers", Duration::from_secs(30), || async {
        w.node(&node).await.is_some_and(|n| node_has_finalizer(&n))
            && w.claim(&claim)
                .await
                .is_some_and(|c| claim_has_finalizer(&c))
    })
    .await;
    w.wait_until("the PDB observed", Duration::from_secs(30), || async {
        pdbs.get("app")
            .await
            .ok()
            .and_then(|p| p.status)
            .is_some_and(|s| {
                s.expected_pods == Some(PODS as i32)
                    && s.current_healthy == Some(PODS as i32)
                    && s.disruptions_allowed == Some(0)
            })
    })
    .await;

    // Delete the claim; the leader drains and the PDB holds it.
    Api::<DynamicObject>::all_with(w.client.clone(), &nodeclaim_resource())
        .delete(&claim, &DeleteParams::default())
        .await
        .unwrap();
    let blocked_after = w
        .wait_until(
            "the drain blocked by the PDB",
            Duration::from_secs(30),
            || async { w.claim(&claim).await.is_some_and(|c| pdb_blocked(&c)) },
        )
        .await;
    eprintln!(
        "claim deleted → drain blocked by the PDB: {:.1} s",
        blocked_after.as_secs_f64()
    );
    let blocked_by_leader = metric_sum(
        &w.metrics(first).await,
        "nodewright_evictions_total",
        &["outcome=\"pdb_blocked\""],
    );
    assert!(blocked_by_leader >= 1.0, "{}", w.logs());
    assert_eq!(instance_state(&w.ec2, &instance).await, "running");
    assert!(terminate_requests(&w.proxy, &instance).is_empty());

    // Crash the leader.
    w.kill(first);
    let killed = Instant::now();
    let failover = w
        .wait_until(
            "replica-1 leading after the kill",
            Duration::from_secs(60),
            || async { w.leading(second).await },
        )
        .await;
    let holder = w.lease_holder().await;
    eprintln!(
        "leader killed → replica-1 leads: {:.1} s (Lease holder now {holder:?})",
        failover.as_secs_f64()
    );
    assert_eq!(holder.as_deref(), Some("replica-1"), "{}", w.logs());
    // The leader metric is set before the claims are listed: the log line follows.
    w.wait_until(
        "replica-1 resuming from the stored NodeClaims",
        Duration::from_secs(10),
        || async {
            log_lines(
                &w.replica_logs(second),
                "leading: resuming from existing NodeClaims",
                &[],
            )
            .iter()
            .any(|l| l["claims"].as_u64() >= Some(1))
        },
    )
    .await;

    // The new leader resumes the drain: still held, nothing released, the instance runs.
    w.wait_until(
        "replica-1 refused an eviction by the PDB",
        Duration::from_secs(30),
        || async {
            metric_sum(
                &w.metrics(second).await,
                "nodewright_evictions_total",
                &["outcome=\"pdb_blocked\""],
            ) >= 1.0
        },
    )
    .await;
    let held_since = Instant::now();
    while held_since.elapsed() < Duration::from_secs(5) {
        let c = w
            .claim(&claim)
            .await
            .unwrap_or_else(|| panic!("the claim went while the PDB held\n{}", w.logs()));
        assert!(pdb_blocked(&c), "{c}\n{}", w.logs());
        assert!(claim_has_finalizer(&c), "claim lost its finalizer: {c}");
        assert!(
            c["status"]["instanceTerminatedAt"].is_null(),
            "{c}\n{}",
            w.logs()
        );
        let n = w
            .node(&node)
            .await
            .unwrap_or_else(|| panic!("the Node went while the PDB held\n{}", w.logs()));
        assert!(node_has_finalizer(&n), "Node lost its finalizer: {n:?}");
        assert_eq!(instance_state(&w.ec2, &instance).await, "running");
        let on_node = w
            .pods_of("app")
            .await
            .iter()
            .filter(|(_, n, _)| n.as_deref() == Some(node.as_str()))
            .count();
        assert_eq!(on_node, PODS, "{}", w.logs());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(terminate_requests(&w.proxy, &instance).is_empty());
    eprintln!(
        "replica-1 metrics while held: {:?}",
        w.metrics(second)
            .await
            .lines()
            .filter(|l| l.starts_with("nodewright_evictions_total")
                || l.starts_with("nodewright_draining_nodes")
                || l.starts_with("nodewright_provisioner_leader"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    );

    // Relax the PDB: the new leader finishes the termination.
    pdbs.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"maxUnavailable": "100%"}})),
    )
    .await
    .unwrap();
    let relaxed = Instant::now();
    let mut terminated = None;
    while relaxed.elapsed() < Duration::from_secs(120) {
        let state = instance_state(&w.ec2, &instance).await;
        let on_node: Vec<String> = w
            .pods_of("app")
            .await
            .into_iter()
            .filter(|(_, n, _)| n.as_deref() == Some(node.as_str()))
            .map(|(p, ..)| p)
            .collect();
        assert!(
            state == "running" || on_node.is_empty(),
            "instance {state} while pods were still on the node: {on_node:?}\n{}",
            w.logs()
        );
        if ended(&state) {
            terminated = Some(relaxed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let Some(terminated) = terminated else {
        panic!("instance {instance} never terminated\n{}", w.logs());
    };
    let gone = w
        .wait_until(
            "the claim and the Node gone",
            Duration::from_secs(60),
            || async { w.claim(&claim).await.is_none() && w.node(&node).await.is_none() },
        )
        .await;
    let relax_to_gone = relaxed.elapsed();
    eprintln!(
        "PDB relaxed → instance terminated: {:.1} s; → claim and Node gone: {:.1} s (waited {:.1} s after the instance ended); kill → claim gone: {:.1} s",
        terminated.as_secs_f64(),
        relax_to_gone.as_secs_f64(),
        gone.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    // Let any late (second) call show up.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let calls = terminate_requests(&w.proxy, &instance);
    let all_terminates: Vec<Vec<(String, String)>> = w
        .proxy
        .requests("TerminateInstances")
        .into_iter()
        .map(|r| {
            r.params
                .into_iter()
                .filter(|(k, _)| k.starts_with("InstanceId"))
                .collect()
        })
        .collect();
    eprintln!(
        "TerminateInstances naming {instance}: {} (statuses {calls:?}); all TerminateInstances: {all_terminates:?}",
        calls.len()
    );
    assert_eq!(
        calls.len(),
        1,
        "exactly one TerminateInstances for {instance}: {all_terminates:?}\n{}",
        w.logs()
    );
    assert_eq!(calls[0], 200, "{}", w.logs());

    // replica-1 finished it; replica-0 never got that far.
    let new_logs = w.replica_logs(second);
    let old_logs = w.replica_logs(first);
    let new_terminated = log_lines(
        &new_logs,
        "instance terminated",
        &[("claim", &claim), ("instance", &instance)],
    );
    let new_done = log_lines(&new_logs, "claim terminated", &[("claim", &claim)]);
    assert_eq!(new_terminated.len(), 1, "{}", w.logs());
    assert_eq!(new_done.len(), 1, "{}", w.logs());
    assert!(
        log_lines(&old_logs, "instance terminated", &[("instance", &instance)]).is_empty()
            && log_lines(&old_logs, "claim terminated", &[("claim", &claim)]).is_empty(),
        "{}",
        w.logs()
    );
    eprintln!(
        "replica-1: {}\nreplica-1: {}",
        new_terminated[0], new_done[0]
    );
    let m = w.metrics(second).await;
    eprintln!(
        "replica-1 after: {:?}",
        m.lines()
            .filter(|l| l.starts_with("nodewright_evictions_total")
                || l.starts_with("nodewright_nodes_terminated_total")
                || l.starts_with("nodewright_terminations_total"))
            .collect::<Vec<_>>()
    );
    assert!(
        metric_sum(
            &m,
            "nodewright_nodes_terminated_total",
            &["reason=\"deleted\""]
        ) >= 1.0,
        "{m}"
    );
    let warnings: Vec<String> = new_logs
        .lines()
        .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
        .map(str::to_owned)
        .collect();
    eprintln!("replica-1 warnings/errors: {}", warnings.len());
    for l in warnings.iter().take(20) {
        eprintln!("  {l}");
    }
    eprintln!(
        "timings: kill → new leader {:.1} s; relax → instance terminated {:.1} s; test {:.1} s",
        failover.as_secs_f64(),
        terminated.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
    w.finish().await;
}
