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

/// Make a fresh CA (10 years) and a serving certificate for `names` (IP literals become IP SANs) valid for `validity`.
pub fn generate(names: &[String], validity: Duration) -> Result<CertBundle> {
    if names.is_empty() {
        bail!("a serving certificate needs at least one DNS name or IP address");
    }
    let now = OffsetDateTime::now_utc();

    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "nodewright CA");
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, "nodewright");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = now - Duration::minutes(5);
    ca_params.not_after = now + Duration::days(3650);
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("self-signing the CA")?;
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().context("generating the serving key")?;
    let mut params = CertificateParams::new(names.to_vec()).context("serving certificate names")?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].clone());
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + validity;
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the serving certificate")?;

    Ok(CertBundle {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
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
}
