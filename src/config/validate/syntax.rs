//! The syntax of Kubernetes names and values: label keys and values, quantities, scheduler names.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A Kubernetes label key: a name of at most 63 characters with an optional DNS subdomain prefix
/// (`example.com/name`).
pub(crate) fn label_key(key: &str) -> Result<(), String> {
    let invalid = |why: &str| Err(format!("invalid label key {key:?}: {why}"));
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && (prefix.is_empty() || prefix.len() > 253 || !prefix.split('.').all(is_dns_label))
    {
        return invalid("the prefix must be a lowercase DNS subdomain");
    }
    if name.is_empty() || name.len() > 63 || !is_label_name(name) {
        return invalid(
            "the name must be 1 to 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric (at most one '/')",
        );
    }
    Ok(())
}

/// A Kubernetes label value: empty, or a name of at most 63 characters.
pub(crate) fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || (value.len() <= 63 && is_label_name(value)) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value {value:?}: at most 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
        ))
    }
}

fn is_label_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A pod's `spec.schedulerName`, which Kubernetes validates as a DNS subdomain.
pub(crate) fn scheduler_name(name: &str) -> Result<(), String> {
    if name.len() <= 253 && name.split('.').all(is_dns_label) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid scheduler name: a lowercase DNS subdomain (a-z, 0-9, '-', '.') of at most 253 characters"
        ))
    }
}

fn is_dns_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || *b == b'-')
}

/// A Kubernetes quantity: `1000`, `1.5`, `100m`, `1000Gi`, `1e3`.
pub(crate) fn quantity(quantity: &Quantity) -> Result<(), String> {
    let text = quantity.0.as_str();
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let number_len = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_len);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    let number_ok = digits > 0 && number.matches('.').count() <= 1;
    let suffix_ok = matches!(
        suffix,
        "" | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
    ) || suffix.strip_prefix(['e', 'E']).is_some_and(|exponent| {
        let exponent = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
        !exponent.is_empty() && exponent.chars().all(|c| c.is_ascii_digit())
    });
    if number_ok && suffix_ok {
        Ok(())
    } else {
        Err(format!(
            "invalid quantity {text:?} (expected e.g. 1000, 500m, 1000Gi)"
        ))
    }
}

pub(crate) fn is_budget_nodes(nodes: &str) -> bool {
    match nodes.strip_suffix('%') {
        Some(percent) => {
            percent.parse::<u8>().is_ok_and(|p| p <= 100)
                && percent.chars().all(|c| c.is_ascii_digit())
        }
        None => !nodes.is_empty() && nodes.chars().all(|c| c.is_ascii_digit()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys() {
        for key in [
            "karpenter.sh/nodepool",
            "karpenter.sh/provisioner-name",
            "topology.kubernetes.io/zone",
            "type",
            "a.b_c-d",
            "x/Y",
        ] {
            assert_eq!(label_key(key), Ok(()), "{key}");
        }
        for key in [
            "",
            "/name",
            "Example.com/name",
            "example.com/",
            "a/b/c",
            "-a",
            "a-",
            "has space",
            &"n".repeat(64),
            "ex_ample.com/a",
        ] {
            assert!(label_key(key).is_err(), "{key:?} should be rejected");
        }
    }

    #[test]
    fn label_values() {
        for value in ["", "default", "team-riker", "1.2_3"] {
            assert_eq!(label_value(value), Ok(()), "{value}");
        }
        for value in ["-a", "a b", "a/b", &"v".repeat(64)] {
            assert!(label_value(value).is_err(), "{value:?} should be rejected");
        }
    }

    #[test]
    fn quantities() {
        for text in [
            "1000", "1000Gi", "100m", "1.5", "+1", "1e3", "1E", "2Ki", ".5",
        ] {
            assert_eq!(quantity(&Quantity(text.to_owned())), Ok(()), "{text}");
        }
        for text in ["", "Gi", "1000GB", "1.2.3", "1e", "ten", "1 Gi"] {
            assert!(
                quantity(&Quantity(text.to_owned())).is_err(),
                "{text:?} should be rejected"
            );
        }
    }

    #[test]
    fn budget_nodes() {
        for nodes in ["10%", "0", "100%", "5"] {
            assert!(is_budget_nodes(nodes), "{nodes}");
        }
        for nodes in ["", "101%", "-1", "ten", "5.5%", "%"] {
            assert!(!is_budget_nodes(nodes), "{nodes:?}");
        }
    }
}
