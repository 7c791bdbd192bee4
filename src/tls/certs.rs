//! Certificates: a CA and a serving certificate made with rcgen, for `serve` without TLS flags and for
//! `nodewright certs`, plus writing the CA into webhook configurations as their `caBundle`.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// A CA certificate and a serving certificate + key it signed, all PEM.
#[derive(Debug, Clone)]
pub struct CertBundle {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// The DNS names by which the apiserver reaches a Service.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Names a local self-signed run answers to.
pub fn local_names() -> Vec<String> {
    vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ]
}

/// How far back certificates are dated, so that a clock a little behind still accepts them.
pub const BACKDATE: Duration = Duration::minutes(5);
/// Validity of a CA made by [`generate`].
pub const CA_VALIDITY: Duration = Duration::days(3650);

/// A CA certificate and its private key, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy)]
pub enum Leaf<'a> {
    /// A serving certificate for these DNS names or IP addresses.
    Server(&'a [String]),
    /// A client certificate (TLS client authentication) with this common name.
    Client(&'a str),
}

/// Make a fresh CA valid for `validity`.
pub fn generate_ca(validity: Duration) -> Result<CaPair> {
    let now = OffsetDateTime::now_utc();
    let key = KeyPair::generate().context("generating the CA key")?;
    let mut params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "nodewright CA");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "nodewright");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    let cert = params.self_signed(&key).context("self-signing the CA")?;
    Ok(CaPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issue a leaf certificate from `ca`, valid for `validity`; returns (certificate PEM, key PEM).
pub fn issue(ca: &CaPair, leaf: Leaf<'_>, validity: Duration) -> Result<(String, String)> {
    let now = OffsetDateTime::now_utc();
    let ca_key = KeyPair::from_pem(&ca.key_pem).context("the CA key is not a valid PEM key")?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)
        .context("the CA certificate is not valid PEM X.509")?;
    let key = KeyPair::generate().context("generating the key")?;
    let (names, common_name, usage) = match leaf {
        Leaf::Server(names) => {
            if names.is_empty() {
                bail!("a serving certificate needs at least one DNS name or IP address");
            }
            (
                names.to_vec(),
                names[0].clone(),
                ExtendedKeyUsagePurpose::ServerAuth,
            )
        }
        Leaf::Client(name) => (
            Vec::new(),
            name.to_owned(),
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
    };
    let mut params = CertificateParams::new(names).context("certificate names")?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Make a fresh CA ([`CA_VALIDITY`]) and a serving certificate for `names` (IP literals become IP
/// SANs) valid for `validity`.
pub fn generate(names: &[String], validity: Duration) -> Result<CertBundle> {
    let ca = generate_ca(CA_VALIDITY)?;
    let (cert_pem, key_pem) = issue(&ca, Leaf::Server(names), validity)?;
    Ok(CertBundle {
        ca_pem: ca.cert_pem,
        cert_pem,
        key_pem,
    })
}

/// What rotation needs to know of a certificate (the first of a PEM text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// DNS names and IP addresses (as text) of the subject alternative names.
    pub names: Vec<String>,
    pub is_ca: bool,
}

impl CertFacts {
    /// True once less than a third of the certificate's lifetime is left (or it has expired), the
    /// point at which cert-manager renews too. The lifetime leaves out the [`BACKDATE`].
    pub fn renewal_due(&self, now: i64) -> bool {
        let lifetime = (self.not_after - self.not_before - BACKDATE.whole_seconds()).max(0);
        self.not_after - now < lifetime / 3
    }
}

/// Parse the first certificate of a PEM text.
pub fn facts(pem: &str) -> Result<CertFacts> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("not valid X.509: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => names.push(dns.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).map(std::net::IpAddr::from).ok(),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .map(std::net::IpAddr::from)
                            .ok(),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Ok(CertFacts {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        names,
        is_ca: cert.is_ca(),
    })
}

/// True when the first certificate of `cert_pem` carries a valid signature of the first certificate
/// of `ca_pem`.
pub fn issued_by(cert_pem: &str, ca_pem: &str) -> bool {
    let parse = |text: &str| x509_parser::pem::parse_x509_pem(text.as_bytes()).map(|(_, p)| p);
    let (Ok(cert), Ok(ca)) = (parse(cert_pem), parse(ca_pem)) else {
        return false;
    };
    let (Ok(cert), Ok(ca)) = (cert.parse_x509(), ca.parse_x509()) else {
        return false;
    };
    cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// The certificates of a PEM bundle, one PEM text each, in order.
pub fn split_pem(bundle: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    bundle
        .split_inclusive(END)
        .filter_map(|chunk| {
            let start = chunk.find("-----BEGIN CERTIFICATE-----")?;
            chunk
                .ends_with(END)
                .then(|| format!("{}\n", &chunk[start..]))
        })
        .collect()
}

/// A CA bundle: `current` first, then the certificates of `previous` that are other CAs still
/// valid at `now` (so clients keep trusting certificates issued before a CA rotation).
pub fn ca_bundle(current: &str, previous: &str, now: i64) -> String {
    let mut bundle = current.trim_end().to_owned();
    bundle.push('\n');
    for cert in split_pem(previous) {
        let still_valid = facts(&cert).is_ok_and(|f| f.not_after > now);
        if still_valid && cert.trim() != current.trim() && !bundle.contains(cert.trim()) {
            bundle.push_str(&cert);
        }
    }
    bundle
}

/// Write `ca.crt`, `tls.crt` and `tls.key` (mode 0600) into `dir`, creating it.
pub fn write_bundle(dir: &Path, bundle: &CertBundle) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_file(&dir.join("ca.crt"), bundle.ca_pem.as_bytes(), false)?;
    write_file(&dir.join("tls.crt"), bundle.cert_pem.as_bytes(), false)?;
    write_file(&dir.join("tls.key"), bundle.key_pem.as_bytes(), true)?;
    Ok(())
}

/// Write a file atomically (temp file + rename), private when it holds a key.
pub fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut f = options
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(contents)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all().ok();
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// Set `clientConfig.caBundle` of every webhook in every Mutating/ValidatingWebhookConfiguration of a
/// multi-document YAML text. Other documents pass through unchanged (comments are not kept).
/// Returns the new text and how many webhooks were updated.
pub fn set_ca_bundle(yaml: &str, ca_pem: &str) -> Result<(String, usize)> {
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let mut out = Vec::new();
    let mut updated = 0;
    for (i, document) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let mut value: serde_yaml::Value = serde::Deserialize::deserialize(document)
            .with_context(|| format!("document {} is not valid YAML", i + 1))?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default();
        let is_webhook_config = matches!(
            kind,
            "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration"
        );
        let webhooks = value.get_mut("webhooks").and_then(|w| w.as_sequence_mut());
        if let (true, Some(webhooks)) = (is_webhook_config, webhooks) {
            for hook in webhooks {
                let Some(client) = hook
                    .get_mut("clientConfig")
                    .and_then(|c| c.as_mapping_mut())
                else {
                    bail!("document {}: a webhook has no clientConfig", i + 1);
                };
                client.insert("caBundle".into(), ca_bundle.clone().into());
                updated += 1;
            }
        }
        out.push(serde_yaml::to_string(&value)?);
    }
    Ok((out.join("---\n"), updated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_bundle_has_names_and_parses() {
        let names = service_dns_names("nodewright", "nodewright");
        let bundle = generate(&names, Duration::days(365)).unwrap();
        let (_, ca) = x509_parser::pem::parse_x509_pem(bundle.ca_pem.as_bytes()).unwrap();
        let ca = ca.parse_x509().unwrap();
        assert!(ca.is_ca());
        let (_, leaf) = x509_parser::pem::parse_x509_pem(bundle.cert_pem.as_bytes()).unwrap();
        let leaf = leaf.parse_x509().unwrap();
        assert!(!leaf.is_ca());
        assert_eq!(leaf.issuer(), ca.subject());
        let sans = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .len();
        assert_eq!(sans, 4);
        assert!(bundle.key_pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn ca_bundle_is_written_into_every_webhook() {
        let yaml = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata: {name: n}\nwebhooks:\n- name: a.x.io\n  clientConfig: {service: {name: s, namespace: n}}\n- name: b.x.io\n  clientConfig: {service: {name: s, namespace: n}, caBundle: old}\n";
        let (text, n) = set_ca_bundle(yaml, "PEM").unwrap();
        assert_eq!(n, 2);
        assert_eq!(text.matches("caBundle: UEVN").count(), 2, "{text}");
        assert!(text.contains("kind: Namespace"));
    }

    #[test]
    fn leaves_chain_to_their_ca_only() {
        let ca = generate_ca(Duration::days(10)).unwrap();
        let other = generate_ca(Duration::days(10)).unwrap();
        let names = service_dns_names("nw", "ns");
        let (cert, key) = issue(&ca, Leaf::Server(&names), Duration::days(1)).unwrap();
        assert!(issued_by(&cert, &ca.cert_pem));
        assert!(
            !issued_by(&cert, &other.cert_pem),
            "same subject, other key"
        );
        assert!(!issued_by("junk", &ca.cert_pem));
        assert!(key.contains("PRIVATE KEY"));
        let f = facts(&cert).unwrap();
        assert_eq!(f.names, names);
        assert!(!f.is_ca);
        assert!(facts(&ca.cert_pem).unwrap().is_ca);
        let (client, _) = issue(&ca, Leaf::Client("kube-scheduler"), Duration::days(1)).unwrap();
        assert!(issued_by(&client, &ca.cert_pem));
        let (_, parsed) = x509_parser::pem::parse_x509_pem(client.as_bytes()).unwrap();
        let parsed = parsed.parse_x509().unwrap();
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
    }

    #[test]
    fn ip_names_are_read_back_as_text() {
        let bundle = generate(&local_names(), Duration::days(1)).unwrap();
        assert_eq!(facts(&bundle.cert_pem).unwrap().names, local_names());
    }

    #[test]
    fn renewal_is_due_in_the_last_third_of_the_lifetime() {
        let backdate = BACKDATE.whole_seconds();
        // Issued at 1,000 for 900 s: due from 1,600 on.
        let f = CertFacts {
            not_before: 1_000 - backdate,
            not_after: 1_900,
            names: vec![],
            is_ca: false,
        };
        assert!(!f.renewal_due(1_000));
        assert!(!f.renewal_due(1_600));
        assert!(f.renewal_due(1_601));
        assert!(f.renewal_due(5_000), "expired");
        let (cert, _) = issue(
            &generate_ca(Duration::days(1)).unwrap(),
            Leaf::Client("c"),
            Duration::seconds(30),
        )
        .unwrap();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let f = facts(&cert).unwrap();
        assert!(!f.renewal_due(now), "a fresh 30 s certificate is not due");
        assert!(f.renewal_due(now + 21));
    }

    #[test]
    fn bundles_keep_other_unexpired_cas_after_the_current_one() {
        let old = generate_ca(Duration::days(1)).unwrap().cert_pem;
        let new = generate_ca(Duration::days(2)).unwrap().cert_pem;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let bundle = ca_bundle(&new, &old, now);
        assert_eq!(split_pem(&bundle), vec![new.clone(), old.clone()]);
        // Rotating again keeps both, once each.
        assert_eq!(ca_bundle(&new, &bundle, now), bundle);
        // Once the old one has expired it is dropped.
        assert_eq!(
            split_pem(&ca_bundle(&new, &bundle, now + 86_400 + 600)),
            vec![new]
        );
        assert!(split_pem("no certificates").is_empty());
    }
}
