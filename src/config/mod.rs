//! Typed configuration: Karpenter v1 `NodePool` / `EC2NodeClass` documents and nodewright's `Policy`,
//! read from one multi-document YAML file.
//!
//! Every mistake is reported as a [`ConfigError`] naming the file, the document, the field path and
//! the line: deserialization errors through `serde_path_to_error` and serde_yaml's own positions,
//! checks made after deserializing (validation) through a position index of the text built with
//! yaml-rust2's event parser.
//!
//! Karpenter documents load as the apiserver would take them: a field Karpenter's v1 CRD does not
//! have is pruned there, so here it is ignored with a [`ConfigWarning`]; so are valid fields
//! nodewright does not act on yet. nodewright's own Policy document refuses unknown fields.

mod duration;
mod error;
mod meta;
mod nodeclass;
mod nodepool;
pub mod policy;
mod validate;
mod warning;
mod yaml;

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;

pub use duration::{DurationOrNever, GoDuration, format_go_duration, parse_go_duration};
pub use error::{ConfigError, ErrorCategory, ErrorDetails};
pub use meta::ObjectMeta;
pub use nodeclass::*;
pub use nodepool::*;
pub use policy::*;
pub use warning::{ConfigWarning, WarningReason};

use meta::{KarpenterManifest, Manifest};
use validate::Severity;
use yaml::{Document, FieldPath, Head};

/// `apiVersion` of NodePool documents.
pub const NODE_POOL_API_VERSION: &str = "karpenter.sh/v1";
/// `apiVersion` of EC2NodeClass documents; also the `group` a nodeClassRef names.
pub const NODE_CLASS_API_VERSION: &str = "karpenter.k8s.aws/v1";
/// `apiVersion` of the Policy document.
pub const POLICY_API_VERSION: &str = "nodewright.io/v1alpha1";

/// The workshop config (examples/workshop.yaml), used when no `--config` is given.
pub const EMBEDDED_EXAMPLE: &str = include_str!("../../examples/workshop.yaml");

/// The parsed [`EMBEDDED_EXAMPLE`]. Its validity is checked by the unit tests.
pub fn embedded_example() -> Config {
    Config::parse(EMBEDDED_EXAMPLE, "examples/workshop.yaml")
        .expect("the embedded example config is valid")
}

/// A whole, validated config file. Two configs are equal when their settings are: the warnings,
/// which name the file they came from, are not compared.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// NodePools by `metadata.name`.
    pub node_pools: BTreeMap<String, NodePool>,
    /// EC2NodeClasses by `metadata.name`.
    pub node_classes: BTreeMap<String, EC2NodeClass>,
    /// The Policy document's spec; the defaults when the file has none.
    pub policy: PolicySpec,
    /// The Policy document's `metadata.name`, if there is one.
    pub policy_name: Option<String>,
    /// What loads but does not take effect (pruned fields, fields not acted on), in file order:
    /// for the caller to log once per load.
    pub warnings: Vec<ConfigWarning>,
}

impl PartialEq for Config {
    fn eq(&self, other: &Self) -> bool {
        self.node_pools == other.node_pools
            && self.node_classes == other.node_classes
            && self.policy == other.policy
            && self.policy_name == other.policy_name
    }
}

/// The document types nodewright reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DocumentType {
    NodePool,
    EC2NodeClass,
    Policy,
}

const KNOWN_TYPES: [(&str, &str, DocumentType); 3] = [
    (NODE_POOL_API_VERSION, "NodePool", DocumentType::NodePool),
    (
        NODE_CLASS_API_VERSION,
        "EC2NodeClass",
        DocumentType::EC2NodeClass,
    ),
    (POLICY_API_VERSION, "Policy", DocumentType::Policy),
];

impl Config {
    /// Read and parse a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::from(ErrorDetails::new(
                &source,
                ErrorCategory::Io,
                format!("cannot read the config file: {e}"),
            ))
        })?;
        Self::parse(&text, &source)
    }

    /// Parse and validate the text of a config file; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
        let documents = yaml::parse_documents(text).map_err(|e| {
            let marker = e.error.marker();
            ConfigError::from(ErrorDetails {
                document: Some(e.document),
                kind: e.head.kind,
                name: e.head.name,
                line: Some(marker.line()),
                column: Some(marker.col() + 1),
                ..ErrorDetails::new(
                    source,
                    ErrorCategory::Syntax,
                    format!("invalid YAML: {}", e.error.info()),
                )
            })
        })?;
        let located = Located { source };

        // serde_yaml reads the same documents again, in the same order, for typed deserialization
        // with whole-file positions. It is bounded by the documents yaml-rust2 found: on some inputs
        // it repeats its last error forever, and it yields one null document for an empty file.
        let mut typed = serde_yaml::Deserializer::from_str(text).take(documents.len());
        let mut parsed = Parsed::default();
        for document in &documents {
            let deserializer = typed.next();
            if document.is_empty() {
                continue;
            }
            let head = document.head();
            let document_type = located.document_type(document, &head)?;
            let Some(deserializer) = deserializer else {
                return Err(located.error(
                    document,
                    ErrorCategory::Syntax,
                    &FieldPath::default(),
                    "document could not be read",
                ));
            };
            match document_type {
                DocumentType::NodePool => {
                    let manifest: KarpenterManifest<NodePoolSpec> =
                        located.deserialize_pruned(document, deserializer, &mut parsed.pruned)?;
                    let pool = NodePool {
                        metadata: manifest.metadata,
                        spec: manifest.spec,
                    };
                    let requirements = FieldPath::of("spec.template.spec.requirements");
                    if document.locate_exactly(&requirements).is_none() {
                        parsed.missing.push((document.index, requirements));
                    }
                    parsed.node_pools.push((document.index, pool));
                }
                DocumentType::EC2NodeClass => {
                    let manifest: KarpenterManifest<EC2NodeClassSpec> =
                        located.deserialize_pruned(document, deserializer, &mut parsed.pruned)?;
                    let class = EC2NodeClass {
                        metadata: manifest.metadata,
                        spec: manifest.spec,
                    };
                    parsed.node_classes.push((document.index, class));
                }
                DocumentType::Policy => {
                    if let Some((first, _)) = &parsed.policy {
                        let message = format!(
                            "a second Policy document (the first is document {first}); a config holds at most one"
                        );
                        return Err(located.error(
                            document,
                            ErrorCategory::Document,
                            &FieldPath::of("kind"),
                            message,
                        ));
                    }
                    let manifest: Manifest<PolicySpec> =
                        located.deserialize(document, deserializer)?;
                    parsed.policy = Some((document.index, manifest));
                }
            }
        }

        let mut warnings = Vec::new();
        let mut first_error: Option<(validate::Issue, Option<(usize, usize)>)> = None;
        for issue in validate::validate(&parsed) {
            let document = &documents[issue.document - 1];
            let position = document.locate(&issue.path);
            match issue.severity {
                Severity::Error => {
                    let key = (issue.document, position);
                    if first_error
                        .as_ref()
                        .is_none_or(|(first, at)| key < (first.document, *at))
                    {
                        first_error = Some((issue, position));
                    }
                }
                Severity::Warning(reason) => {
                    warnings.push(located.warning(document, reason, &issue.path, issue.message));
                }
            }
        }
        if let Some((issue, _)) = first_error {
            let document = &documents[issue.document - 1];
            return Err(located.error(
                document,
                ErrorCategory::Invalid,
                &issue.path,
                issue.message,
            ));
        }
        for (index, path) in std::mem::take(&mut parsed.pruned) {
            let document = &documents[index - 1];
            let kind = document.head().kind.unwrap_or_default();
            let message = validate::pruned::message(&kind, &path);
            let mut warning = located.warning(document, WarningReason::Pruned, &path, message);
            if let Some((line, column)) = document.locate_key(&path) {
                (warning.line, warning.column) = (Some(line), Some(column));
            }
            warnings.push(warning);
        }
        for (index, path) in std::mem::take(&mut parsed.missing) {
            let message = format!(
                "{} is required by Karpenter's CRD (an empty list will do), so the apiserver refuses this NodePool; nodewright reads it as empty",
                path.last_key().unwrap_or_default()
            );
            let document = &documents[index - 1];
            warnings.push(located.warning(
                document,
                WarningReason::RefusedByKarpenter,
                &path,
                message,
            ));
        }
        warnings.sort_by_key(|w| (w.document, w.line, w.column));
        let mut config = parsed.into_config();
        config.warnings = warnings;
        Ok(config)
    }

    /// The NodePool named `name`.
    pub fn node_pool(&self, name: &str) -> Option<&NodePool> {
        self.node_pools.get(name)
    }

    /// The EC2NodeClass a NodePool's `nodeClassRef` names.
    pub fn node_class_of(&self, pool: &NodePool) -> Option<&EC2NodeClass> {
        self.node_classes
            .get(&pool.spec.template.spec.node_class_ref.name)
    }
}

/// Documents as deserialized, with their 1-based document index, before validation.
#[derive(Default)]
pub(crate) struct Parsed {
    pub node_pools: Vec<(usize, NodePool)>,
    pub node_classes: Vec<(usize, EC2NodeClass)>,
    pub policy: Option<(usize, Manifest<PolicySpec>)>,
    /// Fields of Karpenter documents no type took, by document: pruned by the apiserver.
    pub pruned: Vec<(usize, FieldPath)>,
    /// Fields Karpenter's CRD requires that are missing but read as empty, by document.
    pub missing: Vec<(usize, FieldPath)>,
}

impl Parsed {
    fn into_config(self) -> Config {
        // Validation rejected duplicate names, so nothing is overwritten here.
        let (policy_name, policy) = match self.policy {
            Some((_, manifest)) => (Some(manifest.metadata.name), manifest.spec),
            None => (None, PolicySpec::default()),
        };
        Config {
            node_pools: self
                .node_pools
                .into_iter()
                .map(|(_, p)| (p.metadata.name.clone(), p))
                .collect(),
            node_classes: self
                .node_classes
                .into_iter()
                .map(|(_, c)| (c.metadata.name.clone(), c))
                .collect(),
            policy,
            policy_name,
            warnings: Vec::new(),
        }
    }
}

/// The parsed documents of one source, to turn problems into located [`ConfigError`]s.
struct Located<'a> {
    source: &'a str,
}

impl Located<'_> {
    fn error(
        &self,
        document: &Document,
        category: ErrorCategory,
        path: &FieldPath,
        message: impl Into<String>,
    ) -> ConfigError {
        self.details(document, category, path, message).into()
    }

    fn details(
        &self,
        document: &Document,
        category: ErrorCategory,
        path: &FieldPath,
        message: impl Into<String>,
    ) -> ErrorDetails {
        let head = document.head();
        let position = document.locate(path);
        let path = path.to_string();
        ErrorDetails {
            document: Some(document.index),
            kind: head.kind,
            name: head.name,
            path: (!path.is_empty()).then_some(path),
            line: position.map(|(line, _)| line),
            column: position.map(|(_, column)| column),
            ..ErrorDetails::new(self.source, category, message)
        }
    }

    fn warning(
        &self,
        document: &Document,
        reason: WarningReason,
        path: &FieldPath,
        message: String,
    ) -> ConfigWarning {
        let details = self.details(document, ErrorCategory::Invalid, path, message);
        ConfigWarning {
            reason,
            file: details.file,
            document: document.index,
            kind: details.kind,
            name: details.name,
            path: details.path.unwrap_or_default(),
            line: details.line,
            column: details.column,
            message: details.message,
        }
    }

    /// [`Located::deserialize`] for a Karpenter document: keys no field takes are collected in
    /// `pruned` instead of refused.
    fn deserialize_pruned<T: DeserializeOwned>(
        &self,
        document: &Document,
        deserializer: serde_yaml::Deserializer<'_>,
        pruned: &mut Vec<(usize, FieldPath)>,
    ) -> Result<T, ConfigError> {
        let mut ignored = Vec::new();
        let mut record = |path: serde_ignored::Path<'_>| {
            let path = FieldPath::from_ignored(&path);
            if !validate::pruned::is_silent(&path) {
                ignored.push(path);
            }
        };
        let value = self.deserialize(
            document,
            serde_ignored::Deserializer::new(deserializer, &mut record),
        )?;
        pruned.extend(ignored.into_iter().map(|path| (document.index, path)));
        Ok(value)
    }

    fn document_type(&self, document: &Document, head: &Head) -> Result<DocumentType, ConfigError> {
        let err = |path: &str, message: String| {
            Err(self.error(
                document,
                ErrorCategory::Document,
                &FieldPath::of(path),
                message,
            ))
        };
        if !matches!(
            document.root.as_ref().map(|r| &r.value),
            Some(yaml::Value::Mapping(_))
        ) {
            return err(
                "",
                "a document must be a mapping with apiVersion, kind, metadata and spec".to_owned(),
            );
        }
        let (Some(api_version), Some(kind)) = (head.api_version.as_deref(), head.kind.as_deref())
        else {
            let missing = if head.api_version.is_none() {
                "apiVersion"
            } else {
                "kind"
            };
            return err(
                missing,
                format!("missing {missing}; expected one of {}", known_types()),
            );
        };
        if let Some((_, _, document_type)) = KNOWN_TYPES
            .iter()
            .find(|(v, k, _)| *v == api_version && *k == kind)
        {
            return Ok(*document_type);
        }
        if let Some((expected, _, _)) = KNOWN_TYPES.iter().find(|(_, k, _)| *k == kind) {
            return err(
                "apiVersion",
                format!(
                    "unsupported apiVersion {api_version:?} for kind {kind}; nodewright reads {expected} (convert older Karpenter manifests to v1)"
                ),
            );
        }
        let hint = if kind == "Provisioner" || kind == "AWSNodeTemplate" {
            " (pre-v1beta1 Karpenter kinds: write them as a karpenter.sh/v1 NodePool and a karpenter.k8s.aws/v1 EC2NodeClass)"
        } else {
            ""
        };
        err(
            "kind",
            format!(
                "unknown document type: apiVersion {api_version:?}, kind {kind:?}; expected one of {}{hint}",
                known_types()
            ),
        )
    }

    fn deserialize<'de, T: DeserializeOwned, D>(
        &self,
        document: &Document,
        deserializer: D,
    ) -> Result<T, ConfigError>
    where
        D: serde::Deserializer<'de, Error = serde_yaml::Error>,
    {
        serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let path = FieldPath::from_serde(err.path());
            let inner = err.into_inner();
            let mut message = inner.to_string();
            // serde_yaml appends the position and prefixes the path; both have their own fields.
            if let Some(location) = inner.location() {
                message = message.replacen(
                    &format!(" at line {} column {}", location.line(), location.column()),
                    "",
                    1,
                );
            }
            // serde_yaml's own path stops at the map holding an unknown key; ours names the key.
            let shown = path.to_string();
            if let Some((prefix, rest)) = message.split_once(": ")
                && !prefix.is_empty()
                && (shown == prefix
                    || shown.starts_with(&format!("{prefix}."))
                    || shown.starts_with(&format!("{prefix}[")))
            {
                message = rest.to_owned();
            }
            // serde_yaml points exactly at unknown, missing and duplicate keys, but places errors
            // raised while reading a value (a bad duration) at the enclosing mapping: for those the
            // value's own position is better.
            let about_keys = ["unknown field", "missing field", "duplicate field"]
                .iter()
                .any(|start| message.starts_with(start));
            let position = document
                .locate_exactly(&path)
                .filter(|_| !about_keys)
                .or(inner.location().map(|l| (l.line(), l.column())));
            let mut error = self.details(document, ErrorCategory::Schema, &path, message);
            if let Some((line, column)) = position {
                error.line = Some(line);
                error.column = Some(column);
            }
            error.into()
        })
    }
}

fn known_types() -> String {
    KNOWN_TYPES
        .iter()
        .map(|(v, k, _)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod karpenter_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_example_parses() {
        let config = embedded_example();
        assert_eq!(config.node_pools.keys().collect::<Vec<_>>(), ["default"]);
        assert_eq!(config.node_classes.keys().collect::<Vec<_>>(), ["default"]);
        assert_eq!(config.policy_name.as_deref(), Some("default"));
        let pool = config.node_pool("default").unwrap();
        assert_eq!(config.node_class_of(pool).unwrap().name(), "default");
    }

    /// One edit of the embedded example each, and the field the error must name.
    #[test]
    fn edits_of_the_example_are_reported_at_their_field() {
        let cases = [
            (
                "alias: al2023@latest",
                "alias: al2024@latest",
                "spec.amiSelectorTerms[0].alias",
                "alias must be family@version",
            ),
            (
                "alias: al2023@latest",
                "alias: al2023@latest\n      id: ami-123",
                "spec.amiSelectorTerms[0].alias",
                "'alias' is mutually exclusive",
            ),
            (
                "alias: al2023@latest",
                "name: my-ami",
                "spec",
                "amiFamily is required unless",
            ),
            (
                "role: KarpenterNodeRole-workshop",
                "userData: echo",
                "spec",
                "one of role or instanceProfile is required",
            ),
            (
                "  tags:\n    app.kubernetes.io/created-by: eks-workshop",
                "  tags:\n    karpenter.sh/nodepool: x",
                "spec.tags.karpenter.sh/nodepool",
                "tag \"karpenter.sh/nodepool\" is set by Karpenter",
            ),
            (
                "kind: EC2NodeClass\n        name: default",
                "kind: NodeClass\n        name: default",
                "spec.template.spec.nodeClassRef.kind",
                "nodeClassRef kind must be EC2NodeClass",
            ),
            (
                "memory: 1000Gi",
                "memory: 1000GB",
                "spec.limits.memory",
                "invalid quantity \"1000GB\"",
            ),
            (
                "expireAfter: 720h",
                "expireAfter: 30d",
                "spec.template.spec.expireAfter",
                "invalid duration \"30d\"",
            ),
            (
                "values: [\"4\"]",
                "values: [four]",
                "spec.template.spec.requirements[4].values[0]",
                "operator Gt needs a non-negative integer value",
            ),
            (
                "- key: nodewright.io/pool",
                "- key: nodewright.io/pool/x",
                "spec.template.spec.taints[0].key",
                "invalid label key",
            ),
            (
                "namespaces: [team-riker]\n      maxPods",
                "namespaceSelector: {matchExpressions: [{key: team, operator: Equals}]}\n      maxPods",
                "spec.quotas[0].namespaceSelector.matchExpressions[0].operator",
                "unknown operator \"Equals\"",
            ),
        ];
        for (from, to, path, message) in cases {
            assert!(
                EMBEDDED_EXAMPLE.contains(from),
                "{from:?} is not in the example"
            );
            let text = EMBEDDED_EXAMPLE.replacen(from, to, 1);
            let err = Config::parse(&text, "edited.yaml").expect_err(to);
            assert_eq!(err.path.as_deref(), Some(path), "{err}");
            assert!(err.message.starts_with(message), "{err}");
            // The reported line is the edited one holding the offending field.
            let offending = to
                .lines()
                .find(|l| path.ends_with(l.trim().split(':').next().unwrap()));
            let offending = offending.unwrap_or(to.lines().next().unwrap());
            let line = text.lines().position(|l| l.contains(offending)).unwrap() + 1;
            if path != "spec" {
                assert_eq!(err.line, Some(line), "{err}");
            }
        }
    }

    #[test]
    fn no_policy_document_means_default_policy() {
        let config = Config::parse("# nothing yet\n", "empty.yaml").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.policy.node_selector_key, DEFAULT_NODE_SELECTOR_KEY);
        assert_eq!(config.policy_name, None);
    }

    #[test]
    fn load_names_the_file_it_cannot_read() {
        let err = Config::load(Path::new("/nonexistent/nodewright.yaml")).unwrap_err();
        assert_eq!(err.category, ErrorCategory::Io);
        assert!(
            err.to_string()
                .starts_with("/nonexistent/nodewright.yaml: cannot read the config file: "),
            "{err}"
        );
    }
}
