//! Two or more `nodewright serve` replicas sharing the release's Lease `nodewright-provisioner`
//! on the shared control plane, for the failover tests (`disruption_failover.rs`,
//! `replacement_failover.rs`): both reach EC2 through the logging proxy in front of moto
//! ([`super::ec2proxy`]), the kubelet stand-in with kwok runs the Nodes and pods, and the real
//! kube-scheduler calls one replica's extender. A replica is killed with SIGKILL
//! ([`Failover::kill`]: no graceful Lease release, as in a crash).
#![allow(dead_code)] // each test binary uses its own part of the harness

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use super::Server;
use super::aws::{self, REGION};
use super::controlplane::{self, ExtenderSetup, Install, Process};
use super::ec2proxy::Ec2Proxy;
use super::kubelet::{KubeletConfig, Kubelets, ec2_client};
use super::moto::Moto;
use super::served::{
    clear_nodes_and_claims, get_claim, get_node, list_claims, metric_sum, pool_config,
    registered_claims_of,
};

pub const CLUSTER: &str = "workshop";
pub const FINALIZER: &str = "nodewright.io/termination";
pub const LEASE: &str = "nodewright-provisioner";
pub const POOL: &str = "failover";

/// One tainted on-demand pool of c5.xlarge that never consolidates, for namespace `namespace`;
/// its nodes expire after `expire_after` (Go duration or `Never`; `None`: Karpenter's default).
pub fn config_text(namespace: &str, expire_after: Option<&str>) -> String {
    let expire_after = expire_after
        .map(|d| format!("\n      expireAfter: {d}"))
        .unwrap_or_default();
    pool_config(
        namespace,
        POOL,
        "c5.xlarge",
        "{consolidationPolicy: WhenEmpty, consolidateAfter: Never}",
        &expire_after,
    )
}

/// A Deployment of `replicas` pause pods as the steering webhook leaves them (the pool's
/// selector and toleration), `cpu` and 64Mi each.
pub fn deployment(name: &str, replicas: i32, cpu: &str) -> Deployment {
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
pub struct Failover {
    _moto: Moto,
    pub proxy: Ec2Proxy,
    /// Straight to moto (the test's own look-ups stay out of the proxy's log).
    pub ec2: aws_sdk_ec2::Client,
    pub client: Client,
    pub install: Install,
    pub namespace: String,
    _dir: tempfile::TempDir,
    ca: String,
    cert: PathBuf,
    key: PathBuf,
    config: PathBuf,
    /// `None` once killed.
    servers: Vec<Option<Server>>,
    /// Logs of killed replicas, kept.
    dead_logs: Vec<(usize, String)>,
    pub kubelets: Option<Kubelets>,
    scheduler: Option<Process>,
}

impl Failover {
    /// Moto behind the proxy, the workshop's network, a new release and namespace, and the
    /// config file ([`config_text`] with `expire_after`); no replica yet.
    pub async fn new(expire_after: Option<&str>) -> Failover {
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
        let bundle = nodewright::tls::certs::generate(
            &nodewright::tls::certs::local_names(),
            time::Duration::days(1),
        )
        .unwrap();
        let (cert, key, config) = (
            dir.path().join("tls.crt"),
            dir.path().join("tls.key"),
            dir.path().join("config.yaml"),
        );
        std::fs::write(&cert, &bundle.cert_pem).unwrap();
        std::fs::write(&key, &bundle.key_pem).unwrap();
        std::fs::write(&config, config_text(&namespace, expire_after)).unwrap();
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

    /// Rewrite the config file (the replicas reload it) with another `expireAfter`.
    pub fn set_expire_after(&self, expire_after: Option<&str>) {
        std::fs::write(&self.config, config_text(&self.namespace, expire_after)).unwrap();
    }

    /// Start replica `replica-<n>`; returns n.
    pub fn start_replica(&mut self) -> usize {
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
    pub fn kill(&mut self, i: usize) {
        let mut server = self.servers[i].take().expect("a live replica");
        server.child.kill().unwrap();
        let status = server.child.wait().unwrap();
        eprintln!("replica-{i} killed: {status:?}");
        self.dead_logs.push((i, server.logs()));
    }

    pub fn server(&self, i: usize) -> &Server {
        self.servers[i].as_ref().expect("a live replica")
    }

    /// replica-0 first, so it leads; once it does, replica-1 as the standby, whose extender the
    /// scheduler calls (every replica serves it), so scheduling outlives the leader; and the
    /// peers. Their indices.
    pub async fn start_leader_and_standby(&mut self) -> (usize, usize) {
        let first = self.start_replica();
        self.wait_until("replica-0 leading", Duration::from_secs(30), || async {
            self.leading(first).await
        })
        .await;
        let second = self.start_replica();
        self.start_peers(second).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(self.leading(first).await, "{}", self.logs());
        assert!(!self.leading(second).await, "{}", self.logs());
        assert_eq!(
            self.lease_holder().await.as_deref(),
            Some("replica-0"),
            "{}",
            self.logs()
        );
        (first, second)
    }

    /// Create the Deployment `app` ([`deployment`]) and wait until its `pods` pods run on
    /// registered nodes.
    pub async fn deploy_app(&self, pods: usize, cpu: &str, within: Duration) {
        Api::<Deployment>::namespaced(self.client.clone(), &self.namespace)
            .create(&PostParams::default(), &deployment("app", pods as i32, cpu))
            .await
            .unwrap();
        self.wait_until(
            &format!("{pods} pods running on registered nodes"),
            within,
            || async {
                let running = self.pods_of("app").await;
                let nodes: HashSet<String> = self
                    .registered_claims()
                    .await
                    .iter()
                    .map(claim_node)
                    .collect();
                running.len() == pods
                    && running.iter().all(|(_, node, running)| {
                        *running && node.as_ref().is_some_and(|n| nodes.contains(n))
                    })
            },
        )
        .await;
    }

    /// The kubelet stand-in (kwok running its Nodes) and the real kube-scheduler calling
    /// replica `i`'s extender.
    pub async fn start_peers(&mut self, i: usize) {
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

    pub async fn metrics(&self, i: usize) -> String {
        let Some(server) = &self.servers[i] else {
            return String::new();
        };
        match reqwest::get(format!("{}/metrics", server.ops)).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    pub async fn leading(&self, i: usize) -> bool {
        metric_sum(&self.metrics(i).await, "nodewright_provisioner_leader", &[]) == 1.0
    }

    /// The Lease's holder identity.
    pub async fn lease_holder(&self) -> Option<String> {
        Api::<Lease>::namespaced(self.client.clone(), &self.install.namespace)
            .get_opt(LEASE)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
    }

    pub fn replica_logs(&self, i: usize) -> String {
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

    pub fn logs(&self) -> String {
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

    pub async fn wait_until<F, Fut>(&self, what: &str, within: Duration, mut cond: F) -> Duration
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

    pub async fn claims(&self) -> Vec<Value> {
        list_claims(&self.client).await
    }

    pub async fn claim(&self, name: &str) -> Option<Value> {
        get_claim(&self.client, name).await
    }

    pub async fn registered_claims(&self) -> Vec<Value> {
        registered_claims_of(&self.client).await
    }

    pub async fn node(&self, name: &str) -> Option<Node> {
        get_node(&self.client, name).await
    }

    /// The pods of this namespace labelled `app=<app>`, as (name, node, running).
    pub async fn pods_of(&self, app: &str) -> Vec<(String, Option<String>, bool)> {
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
    pub async fn finish(mut self) {
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

pub fn claim_name(claim: &Value) -> String {
    claim["metadata"]["name"].as_str().unwrap().to_owned()
}

pub fn claim_node(claim: &Value) -> String {
    claim["status"]["nodeName"].as_str().unwrap().to_owned()
}

pub fn claim_instance(claim: &Value) -> String {
    claim["status"]["instanceID"].as_str().unwrap().to_owned()
}

pub fn claim_has_finalizer(claim: &Value) -> bool {
    claim["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

pub fn node_has_finalizer(node: &Node) -> bool {
    node.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == FINALIZER)
}

pub fn condition(claim: &Value, type_: &str) -> Option<Value> {
    claim["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// The JSON log lines of `logs` whose message is `message` and whose every (field, value) of
/// `fields` matches.
pub fn log_lines(logs: &str, message: &str, fields: &[(&str, &str)]) -> Vec<Value> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == message)
        .filter(|v| fields.iter().all(|(k, x)| v[*k].as_str() == Some(*x)))
        .collect()
}

/// TerminateInstances requests (any answer) that name `instance`, with their answer status.
pub fn terminate_requests(proxy: &Ec2Proxy, instance: &str) -> Vec<u16> {
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
