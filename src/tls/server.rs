//! rustls server configuration with a serving certificate that can be swapped while connections stay open.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use arc_swap::ArcSwapOption;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
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
/// Until a first certificate is set (self-managed mode, before the Secret is read) handshakes fail.
#[derive(Debug, Default)]
pub struct CertResolver {
    current: ArcSwapOption<CertifiedKey>,
}

impl CertResolver {
    pub fn new(key: CertifiedKey) -> Self {
        Self {
            current: ArcSwapOption::from_pointee(key),
        }
    }

    /// No certificate yet.
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn set(&self, key: CertifiedKey) {
        self.current.store(Some(Arc::new(key)));
    }

    /// True once a certificate is there to serve.
    pub fn is_set(&self) -> bool {
        self.current.load().is_some()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

/// The CAs client certificates must chain to (`--extender-client-ca`, or the self-managed CA),
/// swapped whole when they change. Handshakes ask for a certificate but do not demand one: the
/// apiserver calls the admission webhooks without one, and the extender paths check for it
/// (`VerifiedClient`). A certificate that is presented must verify, or the handshake fails.
#[derive(Debug)]
pub struct ClientRoots {
    verifier: ArcSwapOption<Arc<dyn ClientCertVerifier>>,
    /// ring's signature algorithms, copied once rather than per handshake.
    algorithms: WebPkiSupportedAlgorithms,
}

impl Default for ClientRoots {
    fn default() -> Self {
        Self {
            verifier: ArcSwapOption::empty(),
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }
}

impl ClientRoots {
    /// Trust the CA certificates of a PEM bundle from now on.
    pub fn set_pem(&self, pem: &[u8]) -> Result<usize> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| anyhow!("CA PEM: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| anyhow!("CA certificate not usable as a trust anchor: {e}"))?;
        }
        let count = roots.len();
        if count == 0 {
            bail!("the CA PEM holds no CERTIFICATE block");
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| anyhow!("client certificate verifier: {e}"))?;
        self.verifier.store(Some(Arc::new(verifier)));
        Ok(count)
    }

    fn current(&self) -> Option<Arc<Arc<dyn ClientCertVerifier>>> {
        self.verifier.load_full()
    }
}

impl ClientCertVerifier for ClientRoots {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints would borrow from a verifier that may be swapped; clients (Go's among them)
        // send their one configured certificate without them.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.current() {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::General("no client CA loaded yet".to_owned())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A request extension: the connection presented a client certificate that verified against
/// [`ClientRoots`].
#[derive(Debug, Clone, Copy)]
pub struct VerifiedClient;

/// TLS 1.2 and 1.3, ALPN `h2` then `http/1.1` (kube-apiserver speaks HTTP/2 to webhooks). With
/// `client_roots`, handshakes ask for (but do not demand) a client certificate.
pub fn server_config(
    resolver: Arc<CertResolver>,
    client_roots: Option<Arc<ClientRoots>>,
) -> Result<ServerConfig> {
    let builder =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS versions")?;
    let builder = match client_roots {
        Some(roots) => builder.with_client_cert_verifier(roots),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
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
    use crate::tls::certs;

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
