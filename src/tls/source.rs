//! From `serve`'s TLS settings to a running rustls configuration: the serving certificate (PEM
//! files reloaded when they change, a self-signed pair made at start, or the self-managed Secrets
//! handed to the caller's issuer), the extender's client-certificate roots, and the CA bundle the
//! webhook configurations should carry.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rustls::ServerConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::certs;
use super::server::{self, CertResolver, ClientRoots};
use crate::metrics::Metrics;

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// PEM files, reloaded when they change.
    Files { cert: PathBuf, key: PathBuf },
    /// A CA and certificate made at start for `names`; the CA PEM is written to `ca_out` if given.
    SelfSigned {
        names: Vec<String>,
        ca_out: Option<PathBuf>,
    },
    /// Self-managed (needs a cluster): made and renewed by nodewright in Secrets
    /// (`crate::cluster::certs`).
    Secret(SecretSource),
}

/// The self-managed mode's settings: the CA in Secret `<secret>-ca`, the serving pair for the
/// Service's DNS names in Secret `secret`, both in nodewright's namespace.
#[derive(Debug, Clone)]
pub struct SecretSource {
    pub secret: String,
    pub service: String,
    /// A Secret to issue kube-scheduler's client certificate into (mTLS on the extender).
    pub client_secret: Option<String>,
    pub validity: Duration,
    pub ca_validity: Duration,
}

/// Which webhook configurations nodewright keeps the caBundle of, and from what.
#[derive(Debug, Clone, Default)]
pub struct CaBundleSettings {
    /// Names of Mutating/ValidatingWebhookConfigurations (`--webhook-configuration`).
    pub webhook_configurations: Vec<String>,
    /// With [`TlsSource::Files`]: the CA PEM to write (`--ca-bundle-file`), watched.
    pub file: Option<PathBuf>,
}

/// What [`start`] needs besides the certificate's source.
pub struct Options<'a> {
    pub source: &'a TlsSource,
    /// mTLS on the extender paths: client certificates must chain to these CAs (PEM, watched).
    pub extender_client_ca: Option<&'a Path>,
    pub ca_bundle: &'a CaBundleSettings,
    /// How often watched files are polled in case no filesystem event arrives.
    pub poll: Duration,
}

/// Where the self-managed issuer delivers: the serving certificate, the client CA, the CA bundle.
pub struct Sinks {
    pub resolver: Arc<CertResolver>,
    pub client_roots: Option<Arc<ClientRoots>>,
    pub bundle: watch::Sender<Option<String>>,
}

/// The running TLS side.
pub struct Tls {
    /// Holds the serving certificate; empty until the self-managed issuer sets one.
    pub resolver: Arc<CertResolver>,
    /// Set when the extender requires client certificates.
    pub client_roots: Option<Arc<ClientRoots>>,
    pub config: Arc<ServerConfig>,
}

/// Loads or makes the serving certificate, starts the file reloaders, and publishes the CA bundle
/// on `bundle` (`None` until known). [`TlsSource::Secret`] is handed to `self_managed` with the
/// sinks it must fill (the cluster adapter lives above this module).
pub fn start(
    options: Options<'_>,
    bundle: watch::Sender<Option<String>>,
    metrics: &Metrics,
    shutdown: &CancellationToken,
    self_managed: impl FnOnce(&SecretSource, Sinks) -> Result<()>,
) -> Result<Tls> {
    // mTLS on the extender: client CAs from a file, or the self-managed CA when it issues
    // kube-scheduler's client certificate.
    let client_roots = (options.extender_client_ca.is_some()
        || matches!(
            options.source,
            TlsSource::Secret(SecretSource {
                client_secret: Some(_),
                ..
            })
        ))
    .then(|| Arc::new(ClientRoots::default()));
    if let Some(path) = options.extender_client_ca {
        let roots = client_roots.clone().expect("made above");
        let count = roots
            .set_pem(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
            .with_context(|| format!("loading --extender-client-ca {}", path.display()))?;
        tracing::info!(ca = %path.display(), certificates = count, "extender requires client certificates");
        spawn_client_ca_reloader(path.to_owned(), roots, options.poll, shutdown.clone());
    }
    let keeps_bundle = !options.ca_bundle.webhook_configurations.is_empty();
    let resolver = match options.source {
        TlsSource::Files { cert, key } => {
            let cert_pem =
                std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
            let key_pem =
                std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
            let loaded = server::load_pem(&cert_pem, &key_pem)
                .with_context(|| format!("loading {} and {}", cert.display(), key.display()))?;
            metrics.set_certificate_not_after(loaded.not_after);
            let resolver = Arc::new(CertResolver::new(loaded.key));
            server::spawn_reloader(
                cert.clone(),
                key.clone(),
                resolver.clone(),
                metrics.clone(),
                options.poll,
                shutdown.clone(),
            );
            match &options.ca_bundle.file {
                Some(path) => spawn_ca_bundle_file_watch(
                    path.clone(),
                    bundle,
                    options.poll,
                    shutdown.clone(),
                )?,
                None if keeps_bundle => anyhow::bail!(
                    "--webhook-configuration with --tls-cert needs --ca-bundle-file (the CA that signed the certificate)"
                ),
                None => {}
            }
            resolver
        }
        TlsSource::SelfSigned { names, ca_out } => {
            let made = certs::generate(names, time::Duration::days(365))?;
            if let Some(path) = ca_out {
                certs::write_file(path, made.ca_pem.as_bytes(), false)?;
                tracing::info!(ca = %path.display(), names = ?names, "self-signed CA written");
            } else {
                tracing::info!(names = ?names, "self-signed certificate made; pass --ca-out FILE to save its CA");
            }
            let loaded = server::load_pem(made.cert_pem.as_bytes(), made.key_pem.as_bytes())?;
            metrics.set_certificate_not_after(loaded.not_after);
            let _ = bundle.send(Some(made.ca_pem.clone()));
            Arc::new(CertResolver::new(loaded.key))
        }
        TlsSource::Secret(secret) => {
            let resolver = Arc::new(CertResolver::empty());
            self_managed(
                secret,
                Sinks {
                    resolver: resolver.clone(),
                    client_roots: client_roots.clone(),
                    bundle,
                },
            )?;
            resolver
        }
    };
    let config = Arc::new(server::server_config(
        resolver.clone(),
        client_roots.clone(),
    )?);
    Ok(Tls {
        resolver,
        client_roots,
        config,
    })
}

/// Trust the client CAs of `path` anew whenever it changes; a file that does not load is logged and
/// the CAs trusted before stay.
fn spawn_client_ca_reloader(
    path: PathBuf,
    roots: Arc<ClientRoots>,
    poll: Duration,
    shutdown: CancellationToken,
) {
    let mut changes = crate::watch::watch_files(vec![path.clone()], poll, shutdown);
    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            match std::fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|pem| roots.set_pem(&pem))
            {
                Ok(count) => {
                    tracing::info!(ca = %path.display(), certificates = count, "extender client CA reloaded")
                }
                Err(e) => {
                    tracing::error!(ca = %path.display(), error = format!("{e:#}"), "extender client CA reload failed; keeping the previous one")
                }
            }
        }
    });
}

/// Read `--ca-bundle-file` now (it must hold a certificate) and again whenever it changes.
fn spawn_ca_bundle_file_watch(
    path: PathBuf,
    bundle: watch::Sender<Option<String>>,
    poll: Duration,
    shutdown: CancellationToken,
) -> Result<()> {
    let read = |path: &PathBuf| -> Result<String> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --ca-bundle-file {}", path.display()))?;
        if certs::split_pem(&text).is_empty() {
            anyhow::bail!(
                "--ca-bundle-file {} holds no CERTIFICATE block",
                path.display()
            );
        }
        Ok(text)
    };
    let _ = bundle.send(Some(read(&path)?));
    let mut changes = crate::watch::watch_files(vec![path.clone()], poll, shutdown);
    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            match read(&path) {
                Ok(text) => {
                    bundle.send_if_modified(|current| {
                        let changed = current.as_deref() != Some(text.as_str());
                        *current = Some(text);
                        changed
                    });
                }
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "keeping the previous CA bundle")
                }
            }
        }
    });
    Ok(())
}
