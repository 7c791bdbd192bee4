//! rustls server configuration with a serving certificate that can be swapped while connections stay open.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, ReloadKind, ReloadResult};
use crate::watch;

/// A certificate chain and key ready to serve, with the leaf's expiry.
pub struct LoadedCert {
    pub key: CertifiedKey,
    /// Unix seconds of the leaf certificate's notAfter.
    pub not_after: i64,
}

/// Parse a PEM chain (leaf first, intermediates after) and its private key (PKCS#8, PKCS#1 or SEC1),
/// checking that the key belongs to the leaf.
pub fn load_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<LoadedCert> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("certificate PEM: {e}"))?;
    if chain.is_empty() {
        bail!("certificate PEM holds no CERTIFICATE block");
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| anyhow!("private key PEM: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider)
        .context("certificate and key do not match")?;
    let (_, leaf) = x509_parser::parse_x509_certificate(certified.cert[0].as_ref())
        .map_err(|e| anyhow!("leaf certificate is not valid X.509: {e}"))?;
    Ok(LoadedCert {
        not_after: leaf.validity().not_after.timestamp(),
        key: certified,
    })
}

/// Hands every new TLS handshake the current certificate; existing connections keep theirs.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    pub fn new(key: CertifiedKey) -> Self {
        Self {
            current: ArcSwap::from_pointee(key),
        }
    }

    pub fn set(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// TLS 1.2 and 1.3, ALPN `h2` then `http/1.1` (kube-apiserver speaks HTTP/2 to webhooks).
pub fn server_config(resolver: Arc<CertResolver>) -> Result<ServerConfig> {
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS versions")?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Reload the certificate and key files whenever they change. A pair that does not load (half-written,
/// mismatched) is logged and counted, and the previous certificate stays in use.
pub fn spawn_reloader(
    cert: PathBuf,
    key: PathBuf,
    resolver: Arc<CertResolver>,
    metrics: Metrics,
    poll_every: Duration,
    shutdown: CancellationToken,
) {
    let mut changes = watch::watch_files(vec![cert.clone(), key.clone()], poll_every, shutdown);
    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            let loaded = std::fs::read(&cert)
                .and_then(|c| std::fs::read(&key).map(|k| (c, k)))
                .map_err(anyhow::Error::from)
                .and_then(|(c, k)| load_pem(&c, &k));
            match loaded {
                Ok(loaded) => {
                    resolver.set(loaded.key);
                    metrics.set_certificate_not_after(loaded.not_after);
                    metrics.reload(ReloadKind::Certificate, ReloadResult::Success);
                    tracing::info!(cert = %cert.display(), not_after = loaded.not_after, "serving certificate reloaded");
                }
                Err(e) => {
                    metrics.reload(ReloadKind::Certificate, ReloadResult::Failure);
                    tracing::error!(cert = %cert.display(), error = format!("{e:#}"), "serving certificate reload failed; keeping the previous one");
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs;

    #[test]
    fn loads_generated_pair_and_rejects_mismatch() {
        let a = certs::generate(&certs::local_names(), time::Duration::days(1)).unwrap();
        let b = certs::generate(&certs::local_names(), time::Duration::days(1)).unwrap();
        let loaded = load_pem(a.cert_pem.as_bytes(), a.key_pem.as_bytes()).unwrap();
        assert!(loaded.not_after > time::OffsetDateTime::now_utc().unix_timestamp());
        let err = load_pem(a.cert_pem.as_bytes(), b.key_pem.as_bytes())
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("do not match"), "{err:#}");
        assert!(load_pem(b"", a.key_pem.as_bytes()).is_err());
    }

    #[test]
    fn accepts_a_chain() {
        let a = certs::generate(&certs::local_names(), time::Duration::days(1)).unwrap();
        let chain = format!("{}{}", a.cert_pem, a.ca_pem);
        let loaded = load_pem(chain.as_bytes(), a.key_pem.as_bytes()).unwrap();
        assert_eq!(loaded.key.cert.len(), 2);
    }
}
