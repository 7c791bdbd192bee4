//! One Prometheus registry, built at start and passed down. Label values come from enums only.

pub mod disruption;
pub mod split;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Which HTTP endpoint served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Mutate,
    Validate,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mutate => "mutate",
            Self::Validate => "validate",
        }
    }
}

/// What happened to a quota decision (namespace-independent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaOutcome {
    Allowed,
    Denied,
    DryRun,
    /// The quota could not be checked and the request was refused (failure policy Fail).
    ErrorDenied,
    /// The quota could not be checked and the request was let through (failure policy Ignore).
    ErrorAllowed,
}

impl QuotaOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::DryRun => "dry_run",
            Self::ErrorDenied => "error_denied",
            Self::ErrorAllowed => "error_allowed",
        }
    }
}

/// Ledger traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaEvent {
    LedgerWrite,
    LedgerConflict,
    ApiError,
}

/// How an admission request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed as sent.
    Allowed,
    /// Allowed with a patch.
    Patched,
    /// `allowed: false`.
    Denied,
    /// The request could not be answered with a review (4xx/5xx).
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Patched => "patched",
            Self::Denied => "denied",
            Self::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadKind {
    Config,
    Certificate,
}

impl ReloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Certificate => "certificate",
        }
    }
}

/// What a self-managed certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateKind {
    Ca,
    Serving,
    Client,
}

impl CertificateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ca => "ca",
            Self::Serving => "serving",
            Self::Client => "client",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Success,
    Failure,
}

impl ReloadResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// What became of an accepted HTTPS connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionResult {
    /// TLS handshake done; HTTP served on it.
    Served,
    TlsError,
    HandshakeTimeout,
    /// Closed at once: `--max-connections` were already open.
    RejectedFull,
}

impl ConnectionResult {
    pub const ALL: [Self; 4] = [
        Self::Served,
        Self::TlsError,
        Self::HandshakeTimeout,
        Self::RejectedFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Served => "served",
            Self::TlsError => "tls_error",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::RejectedFull => "rejected_full",
        }
    }
}

/// Why a served HTTPS connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionClose {
    /// The client closed it.
    Client,
    /// No request in flight for `--idle-timeout`; closed gracefully.
    Idle,
    /// Closed gracefully on SIGTERM.
    Shutdown,
    /// Still open when `--shutdown-timeout` ran out; dropped.
    DrainTimeout,
    /// An HTTP/1.1 request head did not arrive within `--header-read-timeout`.
    HeaderTimeout,
    /// A protocol or I/O error.
    Error,
}

impl ConnectionClose {
    pub const ALL: [Self; 6] = [
        Self::Client,
        Self::Idle,
        Self::Shutdown,
        Self::DrainTimeout,
        Self::HeaderTimeout,
        Self::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Idle => "idle",
            Self::Shutdown => "shutdown",
            Self::DrainTimeout => "drain_timeout",
            Self::HeaderTimeout => "header_timeout",
            Self::Error => "error",
        }
    }
}

/// Why a request body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Larger than `--max-body-bytes` (413).
    TooLarge,
    /// Not in full within `--body-read-timeout` (408).
    Timeout,
}

impl BodyError {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Timeout => "timeout",
        }
    }
}

/// An open HTTPS connection in `nodewright_https_connections_open`; dropping it counts it closed.
pub struct OpenConnection(IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    admission_requests: IntCounterVec,
    admission_duration: HistogramVec,
    reloads: IntCounterVec,
    last_reload_ok: IntGaugeVec,
    certificate_not_after: IntGauge,
    quota_decisions: IntCounterVec,
    quota_ledger_writes: IntCounter,
    quota_ledger_conflicts: IntCounter,
    quota_api_errors: IntCounter,
    quota_batch_size: Histogram,
    quota_pods: IntGaugeVec,
    extender_requests: IntCounterVec,
    extender_duration: HistogramVec,
    certificates_issued: IntCounterVec,
    ca_bundle_updates: IntCounterVec,
    connections_open: IntGauge,
    connections_accepted: IntCounterVec,
    connections_closed: IntCounterVec,
    body_errors: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("nodewright".to_owned()), None)
            .expect("static prefix is valid");
        let admission_requests = IntCounterVec::new(
            Opts::new(
                "admission_requests_total",
                "Admission requests answered, by endpoint, operation and outcome.",
            ),
            &["endpoint", "operation", "outcome"],
        )
        .expect("static metric");
        let admission_duration = HistogramVec::new(
            HistogramOpts::new(
                "admission_request_duration_seconds",
                "Time from request received to response ready, by endpoint.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["endpoint"],
        )
        .expect("static metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "reloads_total",
                "Config and certificate reloads, by kind and result.",
            ),
            &["kind", "result"],
        )
        .expect("static metric");
        let last_reload_ok = IntGaugeVec::new(
            Opts::new(
                "last_reload_successful",
                "1 if the last reload of this kind succeeded (or none was needed), 0 if the last good one is still in use.",
            ),
            &["kind"],
        )
        .expect("static metric");
        let certificate_not_after = IntGauge::new(
            "serving_certificate_expiry_timestamp_seconds",
            "Unix time at which the serving certificate in use expires.",
        )
        .expect("static metric");
        let quota_decisions = IntCounterVec::new(
            Opts::new("quota_decisions_total", "Pod quota decisions, by outcome."),
            &["outcome"],
        )
        .expect("static metric");
        let quota_ledger_writes = IntCounter::new(
            "quota_ledger_writes_total",
            "Successful quota ledger writes (one per decided batch that changed the ledger).",
        )
        .expect("static metric");
        let quota_ledger_conflicts = IntCounter::new(
            "quota_ledger_conflicts_total",
            "Quota ledger writes refused with 409 Conflict and retried.",
        )
        .expect("static metric");
        let quota_api_errors = IntCounter::new(
            "quota_api_errors_total",
            "Kubernetes API calls of the quota that failed (other than conflicts).",
        )
        .expect("static metric");
        let quota_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "quota_batch_size",
                "Admission requests decided together per namespace batch.",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
            ]),
        )
        .expect("static metric");
        let quota_pods = IntGaugeVec::new(
            Opts::new(
                "quota_pods",
                "Pods in use and the limit, for namespaces the Policy names (label-selected ones are not exported).",
            ),
            &["namespace", "kind"],
        )
        .expect("static metric");
        let extender_requests = IntCounterVec::new(
            Opts::new(
                "extender_requests_total",
                "Scheduler extender calls answered, by verb (filter, prioritize) and outcome (ok, error).",
            ),
            &["verb", "outcome"],
        )
        .expect("static metric");
        let extender_duration = HistogramVec::new(
            HistogramOpts::new(
                "extender_request_duration_seconds",
                "Time from request received to response ready, by extender verb.",
            )
            .buckets(vec![
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1.0, 2.5,
            ]),
            &["verb"],
        )
        .expect("static metric");
        let certificates_issued = IntCounterVec::new(
            Opts::new(
                "certificates_issued_total",
                "Certificates nodewright issued itself (self-managed mode), by kind (ca, serving, client).",
            ),
            &["kind"],
        )
        .expect("static metric");
        let ca_bundle_updates = IntCounterVec::new(
            Opts::new(
                "ca_bundle_updates_total",
                "Webhook configurations whose caBundle nodewright set, by result (success, failure).",
            ),
            &["result"],
        )
        .expect("static metric");
        let connections_open = IntGauge::new(
            "https_connections_open",
            "HTTPS connections open now (handshaking or served).",
        )
        .expect("static metric");
        let connections_accepted = IntCounterVec::new(
            Opts::new(
                "https_connections_accepted_total",
                "HTTPS connections accepted, by result (served, tls_error, handshake_timeout, rejected_full).",
            ),
            &["result"],
        )
        .expect("static metric");
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "https_connections_closed_total",
                "Served HTTPS connections that ended, by reason (client, idle, shutdown, drain_timeout, header_timeout, error).",
            ),
            &["reason"],
        )
        .expect("static metric");
        let body_errors = IntCounterVec::new(
            Opts::new(
                "request_body_errors_total",
                "Request bodies refused, by kind (too_large: 413, timeout: 408).",
            ),
            &["kind"],
        )
        .expect("static metric");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "build_info",
                "Always 1; the version label says which nodewright is running.",
            ),
            &["version"],
        )
        .expect("static metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for c in [
            Box::new(build_info) as Box<dyn prometheus::core::Collector>,
            Box::new(admission_requests.clone()),
            Box::new(admission_duration.clone()),
            Box::new(reloads.clone()),
            Box::new(last_reload_ok.clone()),
            Box::new(certificate_not_after.clone()),
            Box::new(quota_decisions.clone()),
            Box::new(quota_ledger_writes.clone()),
            Box::new(quota_ledger_conflicts.clone()),
            Box::new(quota_api_errors.clone()),
            Box::new(quota_batch_size.clone()),
            Box::new(quota_pods.clone()),
            Box::new(extender_requests.clone()),
            Box::new(extender_duration.clone()),
            Box::new(certificates_issued.clone()),
            Box::new(ca_bundle_updates.clone()),
            Box::new(connections_open.clone()),
            Box::new(connections_accepted.clone()),
            Box::new(connections_closed.clone()),
            Box::new(body_errors.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        for kind in [
            CertificateKind::Ca,
            CertificateKind::Serving,
            CertificateKind::Client,
        ] {
            certificates_issued.with_label_values(&[kind.as_str()]);
        }
        for result in [ReloadResult::Success, ReloadResult::Failure] {
            ca_bundle_updates.with_label_values(&[result.as_str()]);
        }
        for result in ConnectionResult::ALL {
            connections_accepted.with_label_values(&[result.as_str()]);
        }
        for reason in ConnectionClose::ALL {
            connections_closed.with_label_values(&[reason.as_str()]);
        }
        for kind in [BodyError::TooLarge, BodyError::Timeout] {
            body_errors.with_label_values(&[kind.as_str()]);
        }
        for kind in [ReloadKind::Config, ReloadKind::Certificate] {
            last_reload_ok.with_label_values(&[kind.as_str()]).set(1);
            for result in [ReloadResult::Success, ReloadResult::Failure] {
                reloads.with_label_values(&[kind.as_str(), result.as_str()]);
            }
        }
        Self {
            registry,
            admission_requests,
            admission_duration,
            reloads,
            last_reload_ok,
            certificate_not_after,
            quota_decisions,
            quota_ledger_writes,
            quota_ledger_conflicts,
            quota_api_errors,
            quota_batch_size,
            quota_pods,
            extender_requests,
            extender_duration,
            certificates_issued,
            ca_bundle_updates,
            connections_open,
            connections_accepted,
            connections_closed,
            body_errors,
        }
    }

    /// An accepted HTTPS connection got past the handshake, or not.
    pub fn connection_accepted(&self, result: ConnectionResult) {
        self.connections_accepted
            .with_label_values(&[result.as_str()])
            .inc();
    }

    /// One more open HTTPS connection, counted until the guard is dropped.
    pub fn connection_opened(&self) -> OpenConnection {
        self.connections_open.inc();
        OpenConnection(self.connections_open.clone())
    }

    /// A served HTTPS connection ended.
    pub fn connection_closed(&self, reason: ConnectionClose) {
        self.connections_closed
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// A request body refused with 413 or 408.
    pub fn body_error(&self, kind: BodyError) {
        self.body_errors.with_label_values(&[kind.as_str()]).inc();
    }

    /// A certificate issued in self-managed mode.
    pub fn certificate_issued(&self, kind: CertificateKind) {
        self.certificates_issued
            .with_label_values(&[kind.as_str()])
            .inc();
    }

    /// One attempt to set the caBundle of a webhook configuration.
    pub fn ca_bundle_update(&self, result: ReloadResult) {
        self.ca_bundle_updates
            .with_label_values(&[result.as_str()])
            .inc();
    }

    /// One scheduler extender call: `verb` is `filter` or `prioritize`, `outcome` `ok` or `error`.
    pub fn extender(&self, verb: &'static str, outcome: &'static str, seconds: f64) {
        self.extender_requests
            .with_label_values(&[verb, outcome])
            .inc();
        self.extender_duration
            .with_label_values(&[verb])
            .observe(seconds);
    }

    pub fn quota_decision(&self, outcome: QuotaOutcome) {
        self.quota_decisions
            .with_label_values(&[outcome.as_str()])
            .inc();
    }

    pub fn quota_event(&self, event: QuotaEvent) {
        match event {
            QuotaEvent::LedgerWrite => self.quota_ledger_writes.inc(),
            QuotaEvent::LedgerConflict => self.quota_ledger_conflicts.inc(),
            QuotaEvent::ApiError => self.quota_api_errors.inc(),
        }
    }

    pub fn quota_batch(&self, size: usize) {
        self.quota_batch_size.observe(size as f64);
    }

    /// Usage and limit of a namespace the config names (bounded cardinality).
    pub fn quota_usage(&self, namespace: &str, in_use: u32, limit: u32) {
        self.quota_pods
            .with_label_values(&[namespace, "in_use"])
            .set(i64::from(in_use));
        self.quota_pods
            .with_label_values(&[namespace, "limit"])
            .set(i64::from(limit));
    }

    pub fn admission(
        &self,
        endpoint: Endpoint,
        operation: &'static str,
        outcome: Outcome,
        seconds: f64,
    ) {
        self.admission_requests
            .with_label_values(&[endpoint.as_str(), operation, outcome.as_str()])
            .inc();
        self.admission_duration
            .with_label_values(&[endpoint.as_str()])
            .observe(seconds);
    }

    pub fn reload(&self, kind: ReloadKind, result: ReloadResult) {
        self.reloads
            .with_label_values(&[kind.as_str(), result.as_str()])
            .inc();
        self.last_reload_ok
            .with_label_values(&[kind.as_str()])
            .set(i64::from(result == ReloadResult::Success));
    }

    pub fn set_certificate_not_after(&self, unix_seconds: i64) {
        self.certificate_not_after.set(unix_seconds);
    }

    /// The registry, for adapters that add their own collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Provisioning metrics (registered in the same registry as [`Metrics`]).
#[derive(Clone)]
pub struct ProvisionMetrics {
    pub pending_pods: IntGauge,
    pub leader: IntGauge,
    pub batch_size: Histogram,
    pub batch_window: Histogram,
    pub plan_duration: Histogram,
    pub plan_decisions: IntCounterVec,
    pub claims: IntGaugeVec,
    pub launches: IntCounterVec,
    pub ec2_errors: IntCounterVec,
    pub unschedulable_to_launch: Histogram,
    pub unschedulable_to_registered: Histogram,
    pub terminations: IntCounterVec,
    pub replanned: IntCounterVec,
}

impl ProvisionMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        let latency_buckets = vec![
            0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0,
        ];
        let m = Self {
            pending_pods: IntGauge::new(
                "pending_pods",
                "Unschedulable pods waiting for capacity (in the batch or not yet covered by a NodeClaim).",
            )
            .expect("static metric"),
            leader: IntGauge::new(
                "provisioner_leader",
                "1 while this replica holds the provisioning Lease (plans and launches), else 0.",
            )
            .expect("static metric"),
            batch_size: Histogram::with_opts(
                HistogramOpts::new("batch_size", "Pods per provisioning batch.").buckets(vec![
                    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0,
                ]),
            )
            .expect("static metric"),
            batch_window: Histogram::with_opts(
                HistogramOpts::new(
                    "batch_window_seconds",
                    "How long each provisioning batch window stayed open.",
                )
                .buckets(vec![0.1, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0]),
            )
            .expect("static metric"),
            plan_duration: Histogram::with_opts(
                HistogramOpts::new("plan_duration_seconds", "Time to plan one batch.").buckets(
                    vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
                ),
            )
            .expect("static metric"),
            plan_decisions: IntCounterVec::new(
                Opts::new(
                    "plan_decisions_total",
                    "Pods planned, by decision: new_node, existing_node (placed on free capacity), unschedulable.",
                ),
                &["decision"],
            )
            .expect("static metric"),
            claims: IntGaugeVec::new(
                Opts::new("nodeclaims", "NodeClaims by phase."),
                &["phase"],
            )
            .expect("static metric"),
            launches: IntCounterVec::new(
                Opts::new(
                    "launches_total",
                    "Instances launched, by node pool, instance type, zone and capacity type.",
                ),
                &["node_pool", "instance_type", "zone", "capacity_type"],
            )
            .expect("static metric"),
            ec2_errors: IntCounterVec::new(
                Opts::new(
                    "ec2_errors_total",
                    "EC2 errors seen while launching, cleaning up or checking drift, by error code.",
                ),
                &["code"],
            )
            .expect("static metric"),
            unschedulable_to_launch: Histogram::with_opts(
                HistogramOpts::new(
                    "pod_unschedulable_to_launch_seconds",
                    "Per pod: from first seen unschedulable to the CreateFleet that launched its node.",
                )
                .buckets(latency_buckets.clone()),
            )
            .expect("static metric"),
            unschedulable_to_registered: Histogram::with_opts(
                HistogramOpts::new(
                    "pod_unschedulable_to_registered_seconds",
                    "Per pod: from first seen unschedulable to its node's registration.",
                )
                .buckets(latency_buckets),
            )
            .expect("static metric"),
            terminations: IntCounterVec::new(
                Opts::new(
                    "terminations_total",
                    "Instances terminated, by reason: registration_timeout, orphaned, node_deleted, claim_failed.",
                ),
                &["reason"],
            )
            .expect("static metric"),
            replanned: IntCounterVec::new(
                Opts::new(
                    "pods_replanned_total",
                    "Pods planned again after their claim's node registered without them: turned_away (the scheduler kept them off the node), promise_expired (still unbound when the promise ran out).",
                ),
                &["reason"],
            )
            .expect("static metric"),
        };
        let registry = metrics.registry();
        for c in [
            Box::new(m.pending_pods.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.leader.clone()),
            Box::new(m.batch_size.clone()),
            Box::new(m.batch_window.clone()),
            Box::new(m.plan_duration.clone()),
            Box::new(m.plan_decisions.clone()),
            Box::new(m.claims.clone()),
            Box::new(m.launches.clone()),
            Box::new(m.ec2_errors.clone()),
            Box::new(m.unschedulable_to_launch.clone()),
            Box::new(m.unschedulable_to_registered.clone()),
            Box::new(m.terminations.clone()),
            Box::new(m.replanned.clone()),
        ] {
            // Registering twice (two provisioners on one registry in tests) keeps the first.
            let _ = registry.register(c);
        }
        for d in ["new_node", "existing_node", "unschedulable"] {
            m.plan_decisions.with_label_values(&[d]);
        }
        for r in ["turned_away", "promise_expired"] {
            m.replanned.with_label_values(&[r]);
        }
        for p in crate::model::claim::Phase::ALL {
            m.claims.with_label_values(&[p.as_str()]);
        }
        m
    }
}
