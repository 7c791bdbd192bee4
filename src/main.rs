//! `nodewright`: parse the command line, build, serve, wait for a signal, drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use nodewright::app::{self, ServeSettings, TlsSource};
use nodewright::config::parse_go_duration;
use nodewright::http::Limits;
use nodewright::tls::certs;
use nodewright::tls::source::SecretSource;
use tokio_util::sync::CancellationToken;

/// Admission decoding allocates many small strings on every worker thread; mimalloc's per-thread
/// heaps cut the allocator's share of a request (measured with benches/load/run.sh, see README).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "nodewright",
    version,
    about = "Just-in-time capacity for Kubernetes: pod steering, quotas, scheduler extender"
)]
struct Cli {
    /// Log format: `json` (one object per line, for clusters) or `text` (for people).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "json",
        env = "NODEWRIGHT_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: admission webhooks over HTTPS, health and metrics over plain HTTP.
    Serve(Box<ServeArgs>),
    /// Make a CA and a serving certificate for a Service, and optionally write the CA into webhook configurations.
    Certs(CertsArgs),
    /// Offline: which nodes would be launched for these manifests, and at what price.
    Plan(PlanArgs),
    /// Which nodes consolidation would remove or replace, move by move, and what keeps the
    /// others; changes nothing.
    Consolidate(ConsolidateArgs),
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["from_file", "from_cluster"])))]
struct ConsolidateArgs {
    /// Config file (NodePools, EC2NodeClasses, a Policy). Default: the embedded example.
    #[arg(long, env = "NODEWRIGHT_CONFIG")]
    config: Option<PathBuf>,
    /// A `kubectl get nodes,pods,pdb -A -o json` dump (`-` reads stdin).
    #[arg(long, value_name = "SNAPSHOT")]
    from_file: Option<PathBuf>,
    /// Read nodes, pods and PodDisruptionBudgets from the cluster (KUBECONFIG, in-cluster).
    #[arg(long)]
    from_cluster: bool,
    /// `table` for people, `json` for programs.
    #[arg(long, value_enum, default_value = "table")]
    output: PlanOutput,
    #[command(flatten)]
    catalog: CatalogArgs,
    /// The time the snapshot is judged at (RFC 3339): budgets' schedules, consolidateAfter.
    /// Default: now.
    #[arg(long)]
    now: Option<String>,
    /// Take any saving, as Karpenter does: no minimum saving, no eviction cost, no stability
    /// check. For comparison.
    #[arg(long)]
    no_thresholds: bool,
}

#[derive(Args)]
struct CatalogArgs {
    /// AWS region of the catalog. Embedded data covers us-east-1 (default) and eu-west-1.
    #[arg(long)]
    region: Option<String>,
    /// Where instance types and prices come from: the data compiled in, or live EC2 calls
    /// (standard AWS credential and endpoint chain, e.g. AWS_ENDPOINT_URL_EC2).
    #[arg(long, value_enum, default_value = "embedded")]
    catalog: CatalogChoice,
}

#[derive(Args)]
struct PlanArgs {
    /// Config file (NodePools, EC2NodeClasses, a Policy). Default: the embedded example.
    #[arg(long, env = "NODEWRIGHT_CONFIG")]
    config: Option<PathBuf>,
    /// `table` for people, `json` for programs.
    #[arg(long, value_enum, default_value = "table")]
    output: PlanOutput,
    #[command(flatten)]
    catalog: CatalogArgs,
    /// Manifests: YAML or JSON files, multi-document, `v1 List`s; `-` reads stdin.
    #[arg(required = true)]
    manifests: Vec<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum PlanOutput {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum CatalogChoice {
    Embedded,
    Ec2,
}

#[derive(Args)]
struct ServeArgs {
    /// Config file (multi-document YAML: NodePools, EC2NodeClasses, a Policy). Default: the embedded example.
    #[arg(long, env = "NODEWRIGHT_CONFIG")]
    config: Option<PathBuf>,
    /// HTTPS address for the webhooks.
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Plain-HTTP address for /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_listen: SocketAddr,
    /// Serving certificate (PEM, chain allowed), reloaded when it changes.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Serving key (PEM), reloaded when it changes.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Without --tls-cert/--tls-key: where to write the PEM of the self-signed CA made at start.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_secret"])]
    ca_out: Option<PathBuf>,
    /// Without --tls-cert/--tls-key: extra DNS names or IPs for the self-signed certificate (repeatable).
    #[arg(long = "tls-san", conflicts_with_all = ["tls_cert", "tls_secret"])]
    tls_sans: Vec<String>,
    /// Self-managed certificates (needs a cluster): nodewright keeps its CA in Secret NAME-ca and
    /// the serving pair in Secret NAME (kubernetes.io/tls: tls.crt, tls.key, ca.crt) in --namespace,
    /// makes them on first start and renews them when a third of their validity is left.
    #[arg(long, value_name = "NAME", conflicts_with = "tls_cert")]
    tls_secret: Option<String>,
    /// With --tls-secret: the Service whose DNS names the serving certificate carries.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "nodewright",
        requires = "tls_secret"
    )]
    service: String,
    /// With --tls-secret: validity of the serving (and client) certificates (Go duration).
    #[arg(long, default_value = "8760h", value_parser = parse_go_duration, requires = "tls_secret")]
    cert_validity: Duration,
    /// With --tls-secret: validity of the CA (Go duration).
    #[arg(long, default_value = "87600h", value_parser = parse_go_duration, requires = "tls_secret")]
    ca_validity: Duration,
    /// Keep clientConfig.caBundle of every webhook in the Mutating and Validating webhook
    /// configurations of this name (whichever exist) equal to the CA bundle: the self-managed CA,
    /// the CA made at start, or --ca-bundle-file (repeatable).
    #[arg(long = "webhook-configuration", value_name = "NAME")]
    webhook_configurations: Vec<String>,
    /// With --tls-cert/--tls-key and --webhook-configuration: the CA PEM that signed the serving
    /// certificate (e.g. ca.crt of the Secret), written into the webhook configurations; watched.
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "webhook_configurations"])]
    ca_bundle_file: Option<PathBuf>,
    /// mTLS for the scheduler extender: /scheduler/* answers only clients whose certificate chains
    /// to a CA in FILE (PEM; watched). The admission paths do not ask for one.
    #[arg(long, value_name = "FILE")]
    extender_client_ca: Option<PathBuf>,
    /// With --tls-secret: issue a client certificate for kube-scheduler into Secret NAME (tls.crt,
    /// tls.key, ca.crt) and require client certificates from the self-managed CA on /scheduler/*.
    #[arg(
        long,
        value_name = "NAME",
        requires = "tls_secret",
        conflicts_with = "extender_client_ca"
    )]
    extender_client_secret: Option<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = Limits::default().max_body_bytes)]
    max_body_bytes: usize,
    /// An HTTP/1.1 request head must arrive within this (Go duration; slow headers are cut off).
    #[arg(long, default_value = "5s", value_parser = parse_go_duration)]
    header_read_timeout: Duration,
    /// A request body must arrive in full within this of its head, whatever `?timeout=` says; a
    /// trickling or stalled body is answered 408 (Go duration).
    #[arg(long, default_value = "5s", value_parser = parse_go_duration)]
    body_read_timeout: Duration,
    /// HTTP/2 streams in flight per connection.
    #[arg(long, default_value_t = Limits::default().max_concurrent_streams)]
    max_concurrent_streams: u32,
    /// Close a connection with no request in flight for this long (Go duration; HTTP/2 gets GOAWAY).
    #[arg(long, default_value = "90s", value_parser = parse_go_duration)]
    idle_timeout: Duration,
    /// HTTPS connections open at once; one more is closed as soon as it is accepted.
    #[arg(long, default_value_t = Limits::default().max_connections, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_connections: usize,
    /// How long SIGTERM waits for in-flight requests (Go duration).
    #[arg(long, default_value = "30s", value_parser = parse_go_duration)]
    shutdown_timeout: Duration,
    /// How often watched files (config, certificate) are polled besides filesystem events.
    #[arg(long, default_value = "10s", value_parser = parse_go_duration)]
    reload_poll_interval: Duration,
    /// nodewright's own namespace, never steered.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// Serve POST /bench/fixed (a fixed answer) for the load benchmark.
    #[arg(long, hide = true)]
    bench_endpoints: bool,
}

#[derive(Args)]
struct CertsArgs {
    /// Service name the apiserver calls.
    #[arg(long)]
    service: String,
    /// Namespace of the Service.
    #[arg(long)]
    namespace: String,
    /// Directory for ca.crt, tls.crt and tls.key.
    #[arg(long)]
    out: PathBuf,
    /// Webhook configuration YAML files whose clientConfig.caBundle is set to the new CA (rewritten in place).
    #[arg(long = "webhook-config")]
    webhook_configs: Vec<PathBuf>,
    /// Validity of the serving certificate, in days.
    #[arg(long, default_value_t = 365)]
    validity_days: i64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `plan` is a command-line tool: its output is the answer, so only warnings are logged unless
    // NODEWRIGHT_LOG asks for more.
    let default_level = match cli.command {
        Command::Plan(_) | Command::Consolidate(_) => "warn",
        _ => "info",
    };
    init_tracing(cli.log_format, default_level);
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Certs(args) => make_certs(args),
        Command::Plan(args) => plan(args),
        Command::Consolidate(args) => consolidate(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NODEWRIGHT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let tls = match (args.tls_cert, args.tls_key, args.tls_secret) {
        (Some(cert), Some(key), _) => TlsSource::Files { cert, key },
        (_, _, Some(secret)) => TlsSource::Secret(SecretSource {
            secret,
            service: args.service,
            client_secret: args.extender_client_secret,
            validity: args.cert_validity,
            ca_validity: args.ca_validity,
        }),
        _ => {
            let mut names = certs::local_names();
            names.extend(args.tls_sans);
            TlsSource::SelfSigned {
                names,
                ca_out: args.ca_out,
            }
        }
    };
    let settings = ServeSettings {
        config: args.config,
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        tls,
        limits: Limits {
            max_body_bytes: args.max_body_bytes,
            header_read_timeout: args.header_read_timeout,
            body_read_timeout: args.body_read_timeout,
            max_concurrent_streams: args.max_concurrent_streams,
            idle_timeout: args.idle_timeout,
            max_connections: args.max_connections,
        },
        shutdown_timeout: args.shutdown_timeout,
        reload_poll: args.reload_poll_interval,
        own_namespace: args.namespace,
        bench_endpoints: args.bench_endpoints,
        ca_bundle: app::CaBundleSettings {
            webhook_configurations: args.webhook_configurations,
            file: args.ca_bundle_file,
        },
        extender_client_ca: args.extender_client_ca,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        app::serve(settings, shutdown).await
    })
}

/// SIGTERM (the kubelet) or SIGINT (a terminal) starts the drain.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutting down");
    shutdown.cancel();
}

fn make_certs(args: CertsArgs) -> anyhow::Result<()> {
    let names = certs::service_dns_names(&args.service, &args.namespace);
    let bundle = certs::generate(&names, time::Duration::days(args.validity_days))?;
    certs::write_bundle(&args.out, &bundle)?;
    println!(
        "wrote {0}/ca.crt, {0}/tls.crt and {0}/tls.key for {1}",
        args.out.display(),
        names.join(", ")
    );
    for path in &args.webhook_configs {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let (updated, count) = certs::set_ca_bundle(&text, &bundle.ca_pem)?;
        certs::write_file(path, updated.as_bytes(), false)?;
        println!("set caBundle on {count} webhook(s) in {}", path.display());
    }
    Ok(())
}

fn plan(args: PlanArgs) -> anyhow::Result<()> {
    use nodewright::plan;
    use nodewright::scheduling::{self, PendingPod};
    let started = std::time::Instant::now();
    let config = match &args.config {
        Some(path) => nodewright::config::Config::load(path)?,
        None => nodewright::config::embedded_example(),
    };
    app::log_config_warnings(&config);
    let steering = nodewright::policy::mutate::Steering::new(&config, None);
    let objects = plan::manifests::read_paths(&args.manifests)?;
    let read = started.elapsed();
    let workloads = plan::manifests::expand(objects, &steering)?;
    let expanded = started.elapsed();
    let catalog = load_catalog(&args.catalog, &config)?;
    let catalog_ready = started.elapsed();
    let pools = plan::pools_from_config(&config, &workloads.daemonsets);
    let usable_zones = scheduling::volumes::usable_zones(&pools, &catalog, &[]);
    let pods: Vec<PendingPod> = workloads
        .pods
        .iter()
        .map(|p| scheduling::volumes::pending_pod(p, &workloads.volumes, &usable_zones))
        .collect();
    let solve_started = std::time::Instant::now();
    let mut result = scheduling::solve(&scheduling::Input {
        pods: &pods,
        pools: &pools,
        catalog: &catalog,
        nodes: &[],
    });
    let solved = solve_started.elapsed();
    for (pod, message) in workloads.denied {
        result
            .unschedulable
            .push(scheduling::solver::Unschedulable {
                pod,
                reason: format!("denied by the steering webhook: {message}"),
                pod_index: usize::MAX,
            });
    }
    tracing::info!(
        pods = pods.len(),
        nodes = result.nodes.len(),
        read_ms = read.as_secs_f64() * 1e3,
        expand_ms = (expanded - read).as_secs_f64() * 1e3,
        catalog_ms = (catalog_ready - expanded).as_secs_f64() * 1e3,
        solve_ms = solved.as_secs_f64() * 1e3,
        "planned"
    );
    result.capacity_splits = workloads.splits;
    for note in &workloads.skipped {
        tracing::info!(note = note.as_str(), "not planned");
    }
    let text = match args.output {
        PlanOutput::Table => plan::to_table(&result),
        PlanOutput::Json => plan::to_json(&result),
    };
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// The catalog `plan` and `consolidate` price with.
fn load_catalog(
    args: &CatalogArgs,
    config: &nodewright::config::Config,
) -> anyhow::Result<nodewright::model::Catalog> {
    let region = args.region.clone();
    Ok(match args.catalog {
        CatalogChoice::Embedded => nodewright::cloud::catalog::embedded(
            region.as_deref().unwrap_or("us-east-1"),
            &config.policy.pricing,
        )?,
        CatalogChoice::Ec2 => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let client = nodewright::cloud::ec2::client_from_env(region.as_deref()).await;
                let region = client
                    .config()
                    .region()
                    .map(|r| r.to_string())
                    .ok_or_else(|| {
                        anyhow::anyhow!("no AWS region: pass --region or set AWS_REGION")
                    })?;
                anyhow::Ok(
                    nodewright::cloud::ec2::load_catalog(&client, &region, &config.policy.pricing)
                        .await?,
                )
            })?
        }
    })
}

fn consolidate(args: ConsolidateArgs) -> anyhow::Result<()> {
    use nodewright::scheduling::consolidation::{Settings, snapshot};
    let config = match &args.config {
        Some(path) => nodewright::config::Config::load(path)?,
        None => nodewright::config::embedded_example(),
    };
    app::log_config_warnings(&config);
    let now: jiff::Timestamp = match &args.now {
        Some(text) => text
            .parse()
            .map_err(|e| anyhow::anyhow!("--now {text:?}: not an RFC 3339 time: {e}"))?,
        None => jiff::Timestamp::now(),
    };
    let snap = if let Some(path) = &args.from_file {
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())?
        } else {
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?
        };
        snapshot::Snapshot::from_json(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
    } else {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let client = nodewright::cluster::client_from_env()
                .await
                .ok_or_else(|| anyhow::anyhow!("--from-cluster: no Kubernetes configuration found (KUBECONFIG, ~/.kube/config, in-cluster)"))?;
            anyhow::Ok(nodewright::cluster::snapshot::list(&client).await?)
        })?
    };
    let catalog = load_catalog(&args.catalog, &config)?;
    let settings = if args.no_thresholds {
        Settings::no_threshold()
    } else {
        Settings::from_spec(&config.policy.consolidation)
    };
    let ctx = snapshot::Context {
        config: &config,
        catalog: &catalog,
        now,
        busy: Default::default(),
        idle: Default::default(),
        skip: Default::default(),
        reserve: Default::default(),
    };
    let started = std::time::Instant::now();
    let report = snapshot::decide(&snap, &ctx, &settings, usize::MAX);
    tracing::info!(
        nodes = snap.nodes.len(),
        pods = snap.pods.len(),
        candidates = report.candidates,
        simulations = report.simulations,
        decide_ms = started.elapsed().as_secs_f64() * 1e3,
        "consolidation planned"
    );
    let text = match args.output {
        PlanOutput::Table => nodewright::plan::consolidate::to_table(&report),
        PlanOutput::Json => nodewright::plan::consolidate::to_json(&report, &settings),
    };
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}
