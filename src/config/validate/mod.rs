//! Checks made after deserializing: what the types alone cannot say (operator arity, references
//! between documents, label key syntax, Karpenter's CRD validation rules, ...). Each problem names
//! its document and field path; the caller turns the path into a line.
//!
//! Problems are errors, except where Karpenter itself would accept the document: those are
//! warnings ([`Severity::Warning`]), as are the fields nodewright reads but does not act on
//! ([`support`]).

mod kubelet;
mod nodeclass;
mod nodepool;
mod policy;
pub(crate) mod pruned;
mod support;
pub(crate) mod syntax;

use std::collections::BTreeMap;

use super::Parsed;
use super::warning::WarningReason;
use super::yaml::FieldPath;

/// How bad an [`Issue`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Severity {
    /// The config is refused.
    Error,
    /// The config loads; the caller logs this once.
    Warning(WarningReason),
}

/// One problem: the document (1-based), the field and what is wrong.
#[derive(Debug)]
pub(crate) struct Issue {
    pub document: usize,
    pub path: FieldPath,
    pub message: String,
    pub severity: Severity,
}

/// Collects the issues of one document.
pub(super) struct Issues<'a> {
    document: usize,
    all: &'a mut Vec<Issue>,
}

impl Issues<'_> {
    /// An error: the config is refused.
    fn add(&mut self, path: FieldPath, message: impl Into<String>) {
        self.push(path, message, Severity::Error);
    }

    /// A warning: the config loads.
    fn warn(&mut self, path: FieldPath, reason: WarningReason, message: impl Into<String>) {
        self.push(path, message, Severity::Warning(reason));
    }

    fn push(&mut self, path: FieldPath, message: impl Into<String>, severity: Severity) {
        self.all.push(Issue {
            document: self.document,
            path,
            message: message.into(),
            severity,
        });
    }

    fn check(&mut self, path: FieldPath, result: Result<(), String>) {
        if let Err(message) = result {
            self.add(path, message);
        }
    }
}

/// Every issue of the parsed documents, errors and warnings.
pub(crate) fn validate(parsed: &Parsed) -> Vec<Issue> {
    let mut all = Vec::new();
    let mut pools: BTreeMap<&str, usize> = BTreeMap::new();
    for (document, pool) in &parsed.node_pools {
        let mut issues = Issues {
            document: *document,
            all: &mut all,
        };
        if let Some(&first) = pools.get(pool.name()) {
            issues.add(
                FieldPath::of("metadata.name"),
                format!(
                    "duplicate NodePool {:?}; document {first} defines it already",
                    pool.name()
                ),
            );
        } else {
            pools.insert(pool.name(), *document);
        }
        nodepool::node_pool(pool, parsed, &mut issues);
        support::node_pool(pool, &mut issues);
    }
    let mut classes: BTreeMap<&str, usize> = BTreeMap::new();
    for (document, class) in &parsed.node_classes {
        let mut issues = Issues {
            document: *document,
            all: &mut all,
        };
        if let Some(&first) = classes.get(class.name()) {
            issues.add(
                FieldPath::of("metadata.name"),
                format!(
                    "duplicate EC2NodeClass {:?}; document {first} defines it already",
                    class.name()
                ),
            );
        } else {
            classes.insert(class.name(), *document);
        }
        nodeclass::node_class(class, &mut issues);
        support::node_class(class, &mut issues);
    }
    if let Some((document, manifest)) = &parsed.policy {
        let mut issues = Issues {
            document: *document,
            all: &mut all,
        };
        policy::policy(&manifest.spec, parsed, &mut issues);
    }
    all
}

fn listed<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}
