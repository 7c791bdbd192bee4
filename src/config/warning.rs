//! [`ConfigWarning`]: something in a Karpenter document that loads but does not do what it says,
//! with its location, for the caller to log once.

use std::fmt;

use super::error::write_located;

/// Why a [`ConfigWarning`] was raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WarningReason {
    /// The field is not in Karpenter's v1 CRD (a v1beta1 leftover or a typo): the apiserver would
    /// prune it, and nodewright ignores it.
    Pruned,
    /// A valid Karpenter field nodewright reads but does not act on yet.
    NotActedOn,
    /// A value Karpenter accepts but that has no effect (values on an `Exists` requirement, ...).
    NoEffect,
    /// Something Karpenter's CRD refuses that nodewright still loads, with the same meaning it
    /// would have if written out (a NodePool without `requirements` has none).
    RefusedByKarpenter,
}

impl WarningReason {
    /// Stable lower-case name, for log fields.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pruned => "pruned",
            Self::NotActedOn => "not-acted-on",
            Self::NoEffect => "no-effect",
            Self::RefusedByKarpenter => "refused-by-karpenter",
        }
    }
}

/// A warning about a loaded config. `Display` is one line in the format of
/// [`ConfigError`](super::ConfigError), e.g.
/// `nodewright.yaml: document 1 (NodePool "default"), line 12 column 7: spec.template.spec.kubelet: not a field of ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    pub reason: WarningReason,
    /// The file (or other source) name given to the parser.
    pub file: String,
    /// 1-based index of the YAML document within the file.
    pub document: usize,
    /// The document's `kind`.
    pub kind: Option<String>,
    /// The document's `metadata.name`.
    pub name: Option<String>,
    /// Path of the field within its document, e.g. `spec.template.spec.kubelet`.
    pub path: String,
    /// 1-based line within the whole file.
    pub line: Option<usize>,
    /// 1-based column.
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_located(
            f,
            &self.file,
            Some(self.document),
            self.kind.as_deref(),
            self.name.as_deref(),
            self.line,
            self.column,
            Some(&self.path),
            &self.message,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_an_error() {
        let warning = ConfigWarning {
            reason: WarningReason::Pruned,
            file: "nodewright.yaml".into(),
            document: 1,
            kind: Some("NodePool".into()),
            name: Some("default".into()),
            path: "spec.template.spec.kubelet".into(),
            line: Some(12),
            column: Some(7),
            message: "not a field of Karpenter v1".into(),
        };
        assert_eq!(
            warning.to_string(),
            "nodewright.yaml: document 1 (NodePool \"default\"), line 12 column 7: \
             spec.template.spec.kubelet: not a field of Karpenter v1"
        );
    }
}
