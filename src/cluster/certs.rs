//! Self-managed certificates, as Kyverno and Linkerd do it: nodewright makes its own CA, keeps it
//! and the serving pair in Secrets of its namespace (so every replica serves the same chain and a
//! restart keeps it), renews both before they expire, and keeps the `caBundle` of its own webhook
//! configurations equal to the CA bundle.
//!
//! Every replica runs the same loop; Secrets are created and replaced with the resourceVersion they
//! were read at, so when two replicas race one write wins (the other gets 409 and re-reads). A CA
//! rotation keeps the old CA in the bundle until it expires, and the bundle is written into the
//! webhook configurations before a pair from the new CA is issued, so the apiserver trusts the new
//! pair before any replica serves it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use base64::Engine;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::{CertificateKind, Metrics, ReloadKind, ReloadResult};
use crate::tls::certs::{self, CaPair, Leaf};
use crate::tls::server::{CertResolver, ClientRoots, load_pem};

/// Common name of the client certificate issued for kube-scheduler.
pub const CLIENT_COMMON_NAME: &str = "nodewright-extender-client";
const CA_SUFFIX: &str = "-ca";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "nodewright");
/// Read-decide-write rounds per Secret before giving up until the next check.
const WRITE_ATTEMPTS: usize = 5;

/// What the self-managed mode keeps.
#[derive(Debug, Clone)]
pub struct SelfManagedSettings {
    /// nodewright's namespace, where the Secrets live.
    pub namespace: String,
    /// The serving pair's Secret; the CA's is this name plus `-ca`.
    pub secret: String,
    /// A Secret for kube-scheduler's client certificate (mTLS on the extender), if any.
    pub client_secret: Option<String>,
    /// DNS names (and IPs) of the serving certificate.
    pub names: Vec<String>,
    pub validity: Duration,
    pub ca_validity: Duration,
    /// How often the Secrets are read again (renewal, or a pair another replica renewed).
    pub check_every: Duration,
}

/// Where the certificates go once read or issued.
pub struct Sinks {
    pub resolver: Arc<CertResolver>,
    /// Set to the CA bundle when a client Secret is kept (mTLS on the extender).
    pub client_roots: Option<Arc<ClientRoots>>,
    /// The CA bundle, for the webhook configurations' caBundle.
    pub bundle: watch::Sender<Option<String>>,
    /// Writes the bundle into the webhook configurations before a new CA's pair is issued.
    pub keeper: Option<CaBundleKeeper>,
}

/// Run the self-managed loop until `shutdown`.
pub fn spawn_self_managed(
    client: Client,
    settings: SelfManagedSettings,
    sinks: Sinks,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let secrets: Api<Secret> = Api::namespaced(client, &settings.namespace);
        let mut state = Applied::default();
        let mut failures = 0u32;
        loop {
            match reconcile(&secrets, &settings, &sinks, &metrics, &mut state).await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!("self-managed certificates are in order again");
                        metrics.reload(ReloadKind::Certificate, ReloadResult::Success);
                    }
                    failures = 0;
                }
                Err(e) => {
                    failures += 1;
                    metrics.reload(ReloadKind::Certificate, ReloadResult::Failure);
                    tracing::error!(
                        secret = %settings.secret,
                        namespace = %settings.namespace,
                        error = format!("{e:#}"),
                        "self-managed certificates: could not read or renew the Secrets; retrying"
                    );
                }
            }
            // Retry failures sooner (1 s, 2 s, 4 s, ... up to the check interval).
            let wait = if failures == 0 {
                settings.check_every
            } else {
                Duration::from_secs(1 << failures.min(6)).min(settings.check_every)
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
    });
}

/// What the loop has put in place so far, so that a round with nothing new does no more than
/// read the Secrets.
#[derive(Default)]
struct Applied {
    /// The serving certificate handed to the resolver.
    serving: Option<String>,
    /// The bundle last written into the webhook configurations (and trusted for client
    /// certificates).
    bundle: Option<String>,
}

/// One round: the CA, the bundle in the webhook configurations, the serving pair, the client pair.
async fn reconcile(
    secrets: &Api<Secret>,
    settings: &SelfManagedSettings,
    sinks: &Sinks,
    metrics: &Metrics,
    applied: &mut Applied,
) -> Result<()> {
    let ca_secret = format!("{}{CA_SUFFIX}", settings.secret);
    let (ca, bundle) = ensure_ca(secrets, &ca_secret, settings.ca_validity, metrics).await?;
    sinks.bundle.send_if_modified(|current| {
        let changed = current.as_deref() != Some(bundle.as_str());
        if changed {
            *current = Some(bundle.clone());
        }
        changed
    });
    if applied.bundle.as_deref() != Some(bundle.as_str()) {
        // Before any pair from a new CA is issued (the keeper's watch repairs later drift).
        if let Some(keeper) = &sinks.keeper {
            keeper.sync(&bundle).await?;
        }
        if let Some(roots) = &sinks.client_roots {
            roots
                .set_pem(bundle.as_bytes())
                .context("trusting the CA bundle for client certificates")?;
        }
        applied.bundle = Some(bundle.clone());
    }
    let serving = &mut applied.serving;
    let (cert, key) = ensure_leaf(
        secrets,
        &settings.secret,
        Leaf::Server(&settings.names),
        &ca,
        &bundle,
        settings.validity,
        metrics,
    )
    .await?;
    if serving.as_deref() != Some(cert.as_str()) {
        let loaded = load_pem(cert.as_bytes(), key.as_bytes())
            .with_context(|| format!("Secret {} does not hold a usable pair", settings.secret))?;
        sinks.resolver.set(loaded.key);
        metrics.set_certificate_not_after(loaded.not_after);
        metrics.reload(ReloadKind::Certificate, ReloadResult::Success);
        tracing::info!(secret = %settings.secret, not_after = loaded.not_after, "serving the self-managed certificate");
        *serving = Some(cert);
    }
    if let Some(name) = &settings.client_secret {
        ensure_leaf(
            secrets,
            name,
            Leaf::Client(CLIENT_COMMON_NAME),
            &ca,
            &bundle,
            settings.validity,
            metrics,
        )
        .await?;
    }
    Ok(())
}

/// Read the CA Secret, creating it or rotating the CA when due. Returns the CA and the bundle.
async fn ensure_ca(
    secrets: &Api<Secret>,
    name: &str,
    validity: Duration,
    metrics: &Metrics,
) -> Result<(CaPair, String)> {
    for _ in 0..WRITE_ATTEMPTS {
        let now = jiff::Timestamp::now().as_second();
        let existing = secrets
            .get_opt(name)
            .await
            .with_context(|| format!("reading Secret {name}"))?;
        let Some(existing) = existing else {
            let ca = new_ca(validity)?;
            let bundle = certs::ca_bundle(&ca.cert_pem, "", now);
            let secret = tls_secret(name, &ca.cert_pem, &ca.key_pem, &bundle, None);
            if !write_secret(secrets, name, &secret).await? {
                continue;
            }
            // Counted once written: a replica that lost the race issued nothing.
            metrics.certificate_issued(CertificateKind::Ca);
            tracing::info!(secret = name, "created the nodewright CA");
            return Ok((ca, bundle));
        };
        let version = existing.metadata.resource_version.clone();
        let held = CaPair {
            cert_pem: data(&existing, "tls.crt").unwrap_or_default(),
            key_pem: data(&existing, "tls.key").unwrap_or_default(),
        };
        let previous = data(&existing, "ca.crt").unwrap_or_default();
        let usable = certs::facts(&held.cert_pem).ok().filter(|f| {
            f.is_ca && load_pem(held.cert_pem.as_bytes(), held.key_pem.as_bytes()).is_ok()
        });
        let (ca, bundle, why) = match usable {
            None => {
                let ca = new_ca(validity)?;
                let bundle = certs::ca_bundle(&ca.cert_pem, "", now);
                (ca, bundle, Some("it held no usable CA"))
            }
            Some(f) if f.renewal_due(now) => {
                let ca = new_ca(validity)?;
                // The old CA stays trusted until it expires.
                let bundle = certs::ca_bundle(&ca.cert_pem, &previous, now);
                (ca, bundle, Some("the CA is due for renewal"))
            }
            Some(_) => {
                // Drop CAs that expired since the last rotation.
                let bundle = certs::ca_bundle(&held.cert_pem, &previous, now);
                if bundle == previous {
                    return Ok((held, bundle));
                }
                (held, bundle, None)
            }
        };
        let secret = tls_secret(name, &ca.cert_pem, &ca.key_pem, &bundle, version);
        if !write_secret(secrets, name, &secret).await? {
            continue;
        }
        match why {
            Some(why) => {
                metrics.certificate_issued(CertificateKind::Ca);
                tracing::warn!(secret = name, reason = why, "rotated the nodewright CA");
            }
            None => tracing::info!(secret = name, "dropped expired CAs from the CA bundle"),
        }
        return Ok((ca, bundle));
    }
    Err(contended(name))
}

/// Read a leaf Secret, issuing (or re-issuing) its certificate when it is missing, unusable, due,
/// not from the current CA or not for the right names. Returns (certificate, key).
async fn ensure_leaf(
    secrets: &Api<Secret>,
    name: &str,
    leaf: Leaf<'_>,
    ca: &CaPair,
    bundle: &str,
    validity: Duration,
    metrics: &Metrics,
) -> Result<(String, String)> {
    let kind = match leaf {
        Leaf::Server(_) => CertificateKind::Serving,
        Leaf::Client(_) => CertificateKind::Client,
    };
    for _ in 0..WRITE_ATTEMPTS {
        let now = jiff::Timestamp::now().as_second();
        let existing = secrets
            .get_opt(name)
            .await
            .with_context(|| format!("reading Secret {name}"))?;
        let held = existing.as_ref().and_then(|s| {
            let cert = data(s, "tls.crt")?;
            let key = data(s, "tls.key")?;
            let facts = certs::facts(&cert).ok()?;
            Some((cert, key, facts))
        });
        let reissue = match &held {
            None => Some("it holds no certificate"),
            Some((cert, key, facts)) => {
                if load_pem(cert.as_bytes(), key.as_bytes()).is_err() {
                    Some("its certificate and key do not match")
                } else if facts.renewal_due(now) {
                    Some("the certificate is due for renewal")
                } else if !certs::issued_by(cert, &ca.cert_pem) {
                    Some("the certificate is not from the current CA")
                } else if matches!(leaf, Leaf::Server(names) if !same_names(names, &facts.names)) {
                    Some("the certificate is for other names")
                } else {
                    None
                }
            }
        };
        let current_bundle = existing.as_ref().and_then(|s| data(s, "ca.crt"));
        let (cert, key) = match (reissue, held) {
            (None, Some((cert, key, _))) if current_bundle.as_deref() == Some(bundle) => {
                return Ok((cert, key));
            }
            (None, Some((cert, key, _))) => (cert, key),
            (Some(_), _) | (None, None) => certs::issue(ca, leaf, to_time(validity))?,
        };
        let version = existing
            .as_ref()
            .and_then(|s| s.metadata.resource_version.clone());
        let secret = tls_secret(name, &cert, &key, bundle, version);
        if !write_secret(secrets, name, &secret).await? {
            continue;
        }
        match reissue {
            Some(reason) => {
                metrics.certificate_issued(kind);
                tracing::info!(
                    secret = name,
                    kind = kind.as_str(),
                    reason,
                    "issued a certificate"
                );
            }
            None => tracing::info!(secret = name, "updated the CA bundle of the Secret"),
        }
        return Ok((cert, key));
    }
    Err(contended(name))
}

/// Create (no resourceVersion) or replace (with the resourceVersion read) a Secret. `Ok(false)`:
/// another replica wrote it first (409); read it again.
async fn write_secret(secrets: &Api<Secret>, name: &str, secret: &Secret) -> Result<bool> {
    let written = match secret.metadata.resource_version {
        None => secrets.create(&PostParams::default(), secret).await,
        Some(_) => secrets.replace(name, &PostParams::default(), secret).await,
    };
    match written {
        Ok(_) => Ok(true),
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("writing Secret {name}")),
    }
}

fn contended(name: &str) -> anyhow::Error {
    anyhow!("Secret {name} kept changing under concurrent writers; will retry")
}

fn new_ca(validity: Duration) -> Result<CaPair> {
    certs::generate_ca(to_time(validity))
}

fn to_time(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

fn same_names(want: &[String], have: &[String]) -> bool {
    let mut want = want.to_vec();
    let mut have = have.to_vec();
    want.sort();
    have.sort();
    want == have
}

fn data(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn tls_secret(name: &str, cert: &str, key: &str, bundle: &str, version: Option<String>) -> Secret {
    let data = BTreeMap::from([
        ("tls.crt".to_owned(), ByteString(cert.as_bytes().to_vec())),
        ("tls.key".to_owned(), ByteString(key.as_bytes().to_vec())),
        ("ca.crt".to_owned(), ByteString(bundle.as_bytes().to_vec())),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            resource_version: version,
            labels: Some(BTreeMap::from([(
                MANAGED_BY.0.to_owned(),
                MANAGED_BY.1.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_conflict() || s.is_already_exists())
}

/// Keeps `clientConfig.caBundle` of every webhook in the Mutating and Validating webhook
/// configurations of the given names equal to a CA bundle.
#[derive(Clone)]
pub struct CaBundleKeeper {
    client: Client,
    names: Vec<String>,
    metrics: Metrics,
}

impl CaBundleKeeper {
    pub fn new(client: Client, names: Vec<String>, metrics: Metrics) -> Self {
        Self {
            client,
            names,
            metrics,
        }
    }

    /// Write `bundle` (PEM) into every webhook of the configurations that differ from it. A
    /// configuration that does not exist (yet) is skipped; one that exists under neither kind is
    /// reported once per call at debug level.
    pub async fn sync(&self, bundle: &str) -> Result<()> {
        let encoded = base64::engine::general_purpose::STANDARD.encode(bundle);
        let mut found = false;
        for name in &self.names {
            let mutating = self
                .sync_one::<MutatingWebhookConfiguration>(name, bundle, &encoded, |c| {
                    c.webhooks
                        .iter()
                        .flatten()
                        .map(|w| (w.name.clone(), w.client_config.ca_bundle.clone()))
                        .collect()
                })
                .await?;
            let validating = self
                .sync_one::<ValidatingWebhookConfiguration>(name, bundle, &encoded, |c| {
                    c.webhooks
                        .iter()
                        .flatten()
                        .map(|w| (w.name.clone(), w.client_config.ca_bundle.clone()))
                        .collect()
                })
                .await?;
            if !mutating && !validating {
                tracing::debug!(
                    name = %name,
                    "no webhook configuration of this name (yet); its caBundle will be set when it appears"
                );
            }
            found |= mutating || validating;
        }
        if !found && !self.names.is_empty() {
            tracing::warn!(names = ?self.names, "none of the webhook configurations to keep the caBundle of exists");
        }
        Ok(())
    }

    /// `Ok(false)` when there is no configuration of this kind and name.
    async fn sync_one<K>(
        &self,
        name: &str,
        bundle: &str,
        encoded: &str,
        hooks: impl Fn(&K) -> Vec<(String, Option<ByteString>)>,
    ) -> Result<bool>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::all(self.client.clone());
        let kind = K::kind(&());
        let Some(config) = api
            .get_opt(name)
            .await
            .with_context(|| format!("reading {kind} {name}"))?
        else {
            return Ok(false);
        };
        // One `test` per webhook guards against a concurrent edit that reorders the list.
        let mut ops = Vec::new();
        for (i, (hook, current)) in hooks(&config).into_iter().enumerate() {
            if current.as_ref().map(|b| b.0.as_slice()) == Some(bundle.as_bytes()) {
                continue;
            }
            let index = i.to_string();
            ops.push(serde_json::json!({"op": "test", "path": format!("/webhooks/{index}/name"), "value": hook}));
            ops.push(serde_json::json!({"op": "add", "path": format!("/webhooks/{index}/clientConfig/caBundle"), "value": encoded}));
        }
        if ops.is_empty() {
            return Ok(true);
        }
        let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
            .context("building the caBundle patch")?;
        let webhooks = patch.0.len() / 2;
        match api
            .patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
        {
            Ok(_) => {
                self.metrics.ca_bundle_update(ReloadResult::Success);
                tracing::info!(kind = %kind, name, webhooks, "set the caBundle");
                Ok(true)
            }
            Err(e) => {
                self.metrics.ca_bundle_update(ReloadResult::Failure);
                Err(e).with_context(|| format!("patching the caBundle of {kind} {name}"))
            }
        }
    }

    /// Keep the configurations in line with `bundle` until `shutdown`: whenever the bundle changes,
    /// whenever a configuration changes (a `helm upgrade` or a `kubectl apply` resetting caBundle),
    /// and every `resync` besides.
    pub fn spawn(
        self,
        mut bundle: watch::Receiver<Option<String>>,
        resync: Duration,
        shutdown: CancellationToken,
    ) {
        tokio::spawn(async move {
            let mut changes = futures::stream::select_all(self.names.iter().flat_map(|name| {
                let selector = watcher::Config::default().fields(&format!("metadata.name={name}"));
                let mutating: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
                let validating: Api<ValidatingWebhookConfiguration> = Api::all(self.client.clone());
                [
                    watcher(mutating, selector.clone())
                        .default_backoff()
                        .applied_objects()
                        .map(|_| ())
                        .boxed(),
                    watcher(validating, selector)
                        .default_backoff()
                        .applied_objects()
                        .map(|_| ())
                        .boxed(),
                ]
            }));
            loop {
                let current = bundle.borrow_and_update().clone();
                if let Some(current) = current
                    && let Err(e) = self.sync(&current).await
                {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "could not set the caBundle of the webhook configurations; retrying"
                    );
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    changed = bundle.changed() => if changed.is_err() { break },
                    Some(()) = changes.next() => {}
                    () = tokio::time::sleep(resync) => {}
                }
            }
        });
    }
}
