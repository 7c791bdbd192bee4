//! Composition root: builds every part from settings and runs the service. Used by `main` and by tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cluster::ledger::LedgerStore;
use crate::cluster::pods::PodIndex;
use crate::cluster::quota::{QuotaService, QuotaSettings};
use crate::cluster::split::{CHOICE_EXPIRY, SplitService};
use crate::cluster::{self, namespaces::NamespaceLabels};
use crate::config::Config;
use crate::http::{self, AppState, Limits, Readiness};
use crate::metrics::split::SplitMetrics;
use crate::metrics::{Metrics, ReloadKind, ReloadResult};
use crate::policy::mutate::Steering;
use crate::policy::quota::Quotas;
use crate::tls;
pub use crate::tls::{CaBundleSettings, TlsSource};
use crate::watch;

#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// `None`: the embedded example config.
    pub config: Option<PathBuf>,
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub tls: TlsSource,
    pub limits: Limits,
    pub shutdown_timeout: Duration,
    /// How often watched files are polled in case no filesystem event arrives.
    pub reload_poll: Duration,
    /// nodewright's own namespace, never steered.
    pub own_namespace: Option<String>,
    /// Serve `/bench/fixed` for the load benchmark.
    pub bench_endpoints: bool,
    pub ca_bundle: CaBundleSettings,
    /// mTLS on the extender paths: client certificates must chain to these CAs (PEM, watched).
    pub extender_client_ca: Option<PathBuf>,
}

/// Load the config named by `path`, or the embedded example, and log its warnings.
pub fn load_config(path: Option<&PathBuf>) -> Result<Config> {
    let config = match path {
        Some(path) => Config::load(path)?,
        None => {
            tracing::info!(
                "no --config given: using the embedded example config (examples/workshop.yaml)"
            );
            crate::config::embedded_example()
        }
    };
    log_config_warnings(&config);
    Ok(config)
}

/// Log each warning of a freshly loaded config once (fields pruned, fields not acted on).
pub fn log_config_warnings(config: &Config) {
    for warning in &config.warnings {
        tracing::warn!(reason = warning.reason.as_str(), "{warning}");
    }
}

/// Run the service until `shutdown` is cancelled, then drain and return.
/// Errors before serving (bad config, unreadable certificate, port in use) are returned at once.
pub async fn serve(settings: ServeSettings, shutdown: CancellationToken) -> Result<()> {
    let metrics = Metrics::new();
    let config = load_config(settings.config.as_ref())?;
    tracing::info!(
        node_pools = config.node_pools.len(),
        node_classes = config.node_classes.len(),
        rules = config.policy.rules.len(),
        "config loaded"
    );
    let own_namespace = settings.own_namespace.clone();
    let decisions = Decisions::new(&config, own_namespace.as_deref());

    let kube_client = cluster::client_from_env().await;
    let own_ns = own_namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let keeper = match (
        &kube_client,
        settings.ca_bundle.webhook_configurations.is_empty(),
    ) {
        (_, true) => None,
        (Some(client), false) => Some(crate::cluster::certs::CaBundleKeeper::new(
            client.clone(),
            settings.ca_bundle.webhook_configurations.clone(),
            metrics.clone(),
        )),
        (None, false) => anyhow::bail!(
            "--webhook-configuration needs a Kubernetes cluster, and no kubeconfig or in-cluster configuration was found"
        ),
    };
    let (bundle_tx, bundle_rx) = tokio::sync::watch::channel(None::<String>);
    let tls = tls::source::start(
        tls::source::Options {
            source: &settings.tls,
            extender_client_ca: settings.extender_client_ca.as_deref(),
            ca_bundle: &settings.ca_bundle,
            poll: settings.reload_poll,
        },
        bundle_tx,
        &metrics,
        &shutdown,
        |secret, sinks| {
            let Some(client) = &kube_client else {
                anyhow::bail!(
                    "--tls-secret needs a Kubernetes cluster, and no kubeconfig or in-cluster configuration was found"
                );
            };
            crate::cluster::certs::spawn_self_managed(
                client.clone(),
                crate::cluster::certs::SelfManagedSettings {
                    namespace: own_ns.to_owned(),
                    secret: secret.secret.clone(),
                    client_secret: secret.client_secret.clone(),
                    names: tls::certs::service_dns_names(&secret.service, own_ns),
                    validity: secret.validity,
                    ca_validity: secret.ca_validity,
                    check_every: settings.reload_poll,
                },
                crate::cluster::certs::Sinks {
                    resolver: sinks.resolver,
                    client_roots: sinks.client_roots,
                    bundle: sinks.bundle,
                    keeper: keeper.clone(),
                },
                metrics.clone(),
                shutdown.clone(),
            );
            tracing::info!(secret = %secret.secret, namespace = own_ns, "self-managed certificates: serving once the Secret is read or made");
            Ok(())
        },
    )?;
    if let Some(keeper) = keeper {
        keeper.spawn(
            bundle_rx,
            settings.reload_poll.max(Duration::from_secs(30)),
            shutdown.clone(),
        );
    }

    if let Some(path) = settings.config.clone() {
        spawn_config_reloader(
            path,
            own_namespace.clone(),
            decisions.clone(),
            metrics.clone(),
            settings.reload_poll,
            shutdown.clone(),
        );
    }

    let quota_settings = QuotaSettings::default();
    let (mut extender, leader, events, cluster_ops) = start_provisioning(
        &config,
        &decisions,
        kube_client.clone(),
        own_namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
        &metrics,
        shutdown.clone(),
    )
    .await;
    extender.client_certificate_required = tls.client_roots.is_some();
    let (namespaces, quota, split) = match kube_client {
        Some(client) => {
            let ledger_namespace = own_namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
            tracing::info!(
                ledger_namespace,
                "quota and capacity split ledgers are ConfigMaps nodewright-quota-<namespace> and nodewright-split-<namespace>"
            );
            let pods = PodIndex::watch(
                client.clone(),
                quota_settings.reservation_expiry.max(CHOICE_EXPIRY) * 2,
                shutdown.clone(),
            );
            let split_metrics = SplitMetrics::new(&metrics);
            crate::cluster::split_monitor::spawn(
                crate::cluster::split_monitor::Deps {
                    pods: pods.clone(),
                    metrics: split_metrics.clone(),
                    leader,
                    events,
                    config: decisions.config.clone(),
                    cluster: cluster_ops,
                    nodes: extender.view.clone(),
                },
                shutdown.clone(),
            );
            (
                NamespaceLabels::watch(client.clone(), shutdown.clone()),
                QuotaService::new(
                    LedgerStore::configmaps(client.clone(), ledger_namespace),
                    Some(pods.clone()),
                    quota_settings,
                    metrics.clone(),
                ),
                SplitService::new(
                    LedgerStore::configmaps(client, ledger_namespace),
                    Some(pods),
                    split_metrics,
                ),
            )
        }
        None => {
            tracing::warn!(
                "standalone: quotas count only the pods this process admitted since it started, in memory"
            );
            (
                NamespaceLabels::Standalone,
                QuotaService::new(LedgerStore::memory(), None, quota_settings, metrics.clone()),
                SplitService::standalone(SplitMetrics::new(&metrics)),
            )
        }
    };

    let readiness = Arc::new(Readiness::default());
    readiness.wait_for_certificate(tls.resolver);
    let state = AppState::builder(&config, own_namespace.as_deref())
        .decisions(decisions.steering, decisions.quotas)
        .quota(quota)
        .split(split)
        .namespaces(namespaces)
        .metrics(metrics)
        .limits(settings.limits)
        .readiness(readiness.clone())
        .extender(extender)
        .build();

    let ops_listener = TcpListener::bind(settings.metrics_listen)
        .await
        .with_context(|| format!("binding --metrics-listen {}", settings.metrics_listen))?;
    let tls_listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding --listen {}", settings.listen))?;
    tracing::info!(
        listen = %tls_listener.local_addr()?,
        metrics_listen = %ops_listener.local_addr()?,
        "serving"
    );

    let ops_stop = CancellationToken::new();
    let ops = {
        let stop = ops_stop.clone();
        let router = http::ops_router(state.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(ops_listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "metrics server failed");
            }
        })
    };

    readiness.set_tls_bound();
    let draining = {
        let readiness = readiness.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            readiness.set_draining();
        }
    };
    let edge_metrics = state.metrics.clone();
    let webhooks = http::webhook_router(state, settings.bench_endpoints);
    tokio::join!(
        http::server::serve_tls(
            tls_listener,
            tls.config,
            webhooks,
            shutdown.clone(),
            settings.shutdown_timeout,
            settings.limits,
            edge_metrics,
        ),
        draining
    );
    ops_stop.cancel();
    let _ = ops.await;
    tracing::info!("stopped");
    Ok(())
}

/// Start the node/pod watches, leader election and the provisioner; returns what the extender
/// endpoints share with them.
async fn start_provisioning(
    config: &Config,
    decisions: &Decisions,
    client: Option<kube::Client>,
    namespace: &str,
    metrics: &Metrics,
    shutdown: CancellationToken,
) -> (
    http::extender::ExtenderState,
    tokio::sync::watch::Receiver<bool>,
    crate::cluster::events::EventSink,
    Arc<dyn crate::cluster::nodes::ClusterOps>,
) {
    use crate::cloud::ec2::CatalogCache;
    use crate::cloud::launch::{Launcher, Unavailable};
    use crate::cluster::nodeclaims::ClaimStore;
    use crate::cluster::state::ClusterState;
    use crate::scheduling::view::ClusterView;
    use std::sync::RwLock;

    let provisioning = &config.policy.provisioning;
    // With provisioning on, the region is the AWS SDK's (AWS_REGION, the profile, instance
    // metadata); without it, only the environment is read and the catalog defaults to us-east-1.
    let ec2 = match &provisioning.cluster_name {
        Some(_) => Some(crate::cloud::ec2::client_from_env(None).await),
        None => None,
    };
    let region = ec2
        .as_ref()
        .and_then(|c| c.config().region().map(|r| r.to_string()))
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .unwrap_or_else(|| {
            if ec2.is_some() {
                tracing::warn!("no AWS region configured (AWS_REGION, profile or instance metadata): using us-east-1");
            }
            "us-east-1".to_owned()
        });
    let catalog = Arc::new(CatalogCache::new(&region, config.policy.pricing.clone()));
    let launcher = match (&provisioning.cluster_name, ec2) {
        (Some(cluster), Some(ec2)) => {
            let ec2 = match ec2.config().region() {
                Some(_) => ec2,
                None => crate::cloud::ec2::client_from_env(Some(&region)).await,
            };
            catalog.spawn_refresh(ec2.clone(), Duration::from_secs(3600), shutdown.clone());
            tracing::info!(cluster = %cluster, region = %region, "provisioning enabled: launching through EC2");
            let missing: Vec<&str> = [
                ("clusterEndpoint", provisioning.cluster_endpoint.is_none()),
                ("clusterCaBundle", provisioning.cluster_ca_bundle.is_none()),
                ("serviceCidr", provisioning.service_cidr.is_none()),
            ]
            .into_iter()
            .filter_map(|(field, absent)| absent.then_some(field))
            .collect();
            if !missing.is_empty() {
                tracing::warn!(
                    missing = ?missing,
                    "spec.provisioning lacks bootstrap fields: AL2023 nodes (nodeadm) cannot join without clusterEndpoint, clusterCaBundle and serviceCidr (AL2's bootstrap.sh looks them up with eks:DescribeCluster)"
                );
            }
            Some(Arc::new(
                Launcher::new(
                    ec2,
                    Unavailable::new(provisioning.unavailable_offering_ttl()),
                )
                .with_resolve_ttl(provisioning.node_class_resolve_ttl()),
            )
                as Arc<dyn crate::cloud::provider::CloudProvider>)
        }
        _ => {
            tracing::info!(
                "spec.provisioning.clusterName is not set: the extender runs, nothing is launched"
            );
            None
        }
    };
    let catalog_fn: Arc<dyn Fn() -> Arc<crate::model::catalog::Catalog> + Send + Sync> = {
        let catalog = catalog.clone();
        Arc::new(move || catalog.current())
    };
    let view = Arc::new(RwLock::new(ClusterView::default()));
    let state = ClusterState::new(view.clone(), catalog_fn.clone());
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let (unplaced_tx, unplaced_rx) = tokio::sync::mpsc::channel(4096);
    // This replica, for the Lease and as the events' reportingInstance.
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
        format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "nodewright".to_owned()),
            std::process::id()
        )
    });
    let daemonsets = match &client {
        Some(client) => cluster::daemonsets::DaemonSets::watch(client.clone(), shutdown.clone()),
        None => Default::default(),
    };
    let volumes = match &client {
        Some(client) => cluster::volumes::Volumes::watch(client.clone(), shutdown.clone()),
        None => cluster::volumes::Volumes::unwatched(),
    };
    let (claims, leader) = match &client {
        Some(client) => {
            state.spawn(client.clone(), events_tx.clone(), shutdown.clone());
            let lease = cluster::leader::LeaseSettings::new(namespace, &identity);
            (
                ClaimStore::kube(client.clone()),
                cluster::leader::spawn(client.clone(), lease, shutdown.clone()),
            )
        }
        None => {
            // Standalone: this process is the only one, and always leads.
            let (_, rx) = tokio::sync::watch::channel(true);
            (ClaimStore::memory(), rx)
        }
    };
    let events = match &client {
        Some(client) => crate::cluster::events::EventSink::spawn(
            client.clone(),
            identity.clone(),
            shutdown.clone(),
        ),
        None => crate::cluster::events::EventSink::disabled(),
    };
    let provisioner = crate::provision::Provisioner {
        config: decisions.config.clone(),
        catalog: catalog_fn,
        claims,
        cloud: launcher,
        nodes: match &client {
            Some(client) => Arc::new(crate::cluster::nodes::KubeCluster::new(
                crate::cluster::client_without_retry_from_env()
                    .await
                    .unwrap_or_else(|| client.clone()),
            )),
            None => Arc::new(crate::cluster::nodes::NoCluster),
        },
        state,
        client,
        metrics: crate::metrics::ProvisionMetrics::new(metrics),
        disruption_metrics: crate::metrics::disruption::DisruptionMetrics::new(metrics),
        leader,
        events,
        daemonsets,
        volumes,
    };
    if let (Some(interruption), Some(_)) = (&config.policy.interruption, &provisioning.cluster_name)
    {
        let sqs = crate::cloud::interruption::queue::client_from_env(Some(&region)).await;
        crate::provision::interruption::spawn(
            sqs,
            interruption.queue.clone(),
            events_tx.clone(),
            provisioner.leader.clone(),
            provisioner.disruption_metrics.clone(),
            shutdown.clone(),
        );
    }
    let (leader, events, cluster_ops) = (
        provisioner.leader.clone(),
        provisioner.events.clone(),
        provisioner.nodes.clone(),
    );
    tokio::spawn(async move {
        // Keep a sender alive so the event stream only ends with the process.
        let _events = events_tx;
        provisioner.run(events_rx, unplaced_rx, shutdown).await;
    });
    let extender = http::extender::ExtenderState {
        view,
        unplaced: Some(unplaced_tx),
        client_certificate_required: false,
    };
    (extender, leader, events, cluster_ops)
}

/// nodewright's namespace when `--namespace` / `POD_NAMESPACE` is not given.
pub const DEFAULT_NAMESPACE: &str = "nodewright";

/// The decision parts compiled from the config, swapped whole on reload.
#[derive(Clone)]
struct Decisions {
    steering: Arc<ArcSwap<Steering>>,
    quotas: Arc<ArcSwap<Quotas>>,
    /// The whole config, for the provisioner.
    config: Arc<ArcSwap<Config>>,
}

impl Decisions {
    fn new(config: &Config, own_namespace: Option<&str>) -> Self {
        Self {
            steering: Arc::new(ArcSwap::from_pointee(Steering::new(config, own_namespace))),
            quotas: Arc::new(ArcSwap::from_pointee(Quotas::new(&config.policy))),
            config: Arc::new(ArcSwap::from_pointee(config.clone())),
        }
    }

    fn store(&self, config: &Config, own_namespace: Option<&str>) {
        self.steering
            .store(Arc::new(Steering::new(config, own_namespace)));
        self.quotas.store(Arc::new(Quotas::new(&config.policy)));
        self.config.store(Arc::new(config.clone()));
    }
}

/// Reload the config file when it changes; a bad file keeps the last good config.
fn spawn_config_reloader(
    path: PathBuf,
    own_namespace: Option<String>,
    decisions: Decisions,
    metrics: Metrics,
    poll: Duration,
    shutdown: CancellationToken,
) {
    let mut changes = watch::watch_files(vec![path.clone()], poll, shutdown);
    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            match Config::load(&path) {
                Ok(config) => {
                    log_config_warnings(&config);
                    decisions.store(&config, own_namespace.as_deref());
                    metrics.reload(ReloadKind::Config, ReloadResult::Success);
                    tracing::info!(config = %path.display(), rules = config.policy.rules.len(), "config reloaded");
                }
                Err(e) => {
                    metrics.reload(ReloadKind::Config, ReloadResult::Failure);
                    tracing::error!(config = %path.display(), error = %e, "config reload failed; keeping the last good config");
                }
            }
        }
    });
}
