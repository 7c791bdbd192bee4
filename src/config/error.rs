//! [`ConfigError`]: what is wrong in a config file, and exactly where.

use std::fmt;

/// What kind of mistake a [`ConfigError`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCategory {
    /// The file could not be read.
    Io,
    /// The file is not valid YAML.
    Syntax,
    /// A document is not one nodewright reads (unknown `apiVersion`/`kind`, not a mapping, a second Policy).
    Document,
    /// A field is unknown, missing or of the wrong type or value.
    Schema,
    /// Fields parse but do not make sense together (a rule naming an unknown NodePool, a bad operator arity, ...).
    Invalid,
}

/// A config error. `Display` is the one-line message for users, e.g.
/// `examples/bad.yaml: document 2 (NodePool "default"), line 14 column 19: spec.template.spec.taints[0].effect: unknown variant ...`;
/// the fields of [`ErrorDetails`] (reached through `Deref`: `err.line`, `err.path`) let tests and
/// tools check each part. Boxed, so `Result<_, ConfigError>` stays small.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(Box<ErrorDetails>);

/// The parts of a [`ConfigError`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorDetails {
    /// The file (or other source) name given to the parser.
    pub file: String,
    pub category: ErrorCategory,
    /// 1-based index of the YAML document within the file, counting empty documents.
    pub document: Option<usize>,
    /// The document's `kind`, when it could be read.
    pub kind: Option<String>,
    /// The document's `metadata.name`, when it could be read.
    pub name: Option<String>,
    /// Path of the offending field within its document, e.g. `spec.template.spec.taints[0].effect`.
    pub path: Option<String>,
    /// 1-based line within the whole file.
    pub line: Option<usize>,
    /// 1-based column.
    pub column: Option<usize>,
    pub message: String,
}

impl ErrorDetails {
    /// Details with no location yet.
    pub(crate) fn new(file: &str, category: ErrorCategory, message: impl Into<String>) -> Self {
        let message: String = message.into();
        Self {
            file: file.to_owned(),
            category,
            document: None,
            kind: None,
            name: None,
            path: None,
            line: None,
            column: None,
            // Display promises one line.
            message: message.lines().map(str::trim).collect::<Vec<_>>().join(" "),
        }
    }
}

impl ConfigError {
    pub fn details(&self) -> &ErrorDetails {
        &self.0
    }
}

impl From<ErrorDetails> for ConfigError {
    fn from(details: ErrorDetails) -> Self {
        Self(Box::new(details))
    }
}

impl std::ops::Deref for ConfigError {
    type Target = ErrorDetails;

    fn deref(&self) -> &ErrorDetails {
        &self.0
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.0;
        write_located(
            f,
            &e.file,
            e.document,
            e.kind.as_deref(),
            e.name.as_deref(),
            e.line,
            e.column,
            e.path.as_deref(),
            &e.message,
        )
    }
}

/// `file: document N (Kind "name"), line L column C: path: message`, leaving out unknown parts;
/// shared by errors and warnings so both read the same.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_located(
    f: &mut fmt::Formatter<'_>,
    file: &str,
    document: Option<usize>,
    kind: Option<&str>,
    name: Option<&str>,
    line: Option<usize>,
    column: Option<usize>,
    path: Option<&str>,
    message: &str,
) -> fmt::Result {
    write!(f, "{file}")?;
    let mut separator = ": ";
    if let Some(document) = document {
        write!(f, "{separator}document {document}")?;
        match (kind, name) {
            (Some(kind), Some(name)) => write!(f, " ({kind} {name:?})")?,
            (Some(kind), None) => write!(f, " ({kind})")?,
            (None, Some(name)) => write!(f, " ({name:?})")?,
            (None, None) => {}
        }
        separator = ", ";
    }
    if let Some(line) = line {
        write!(f, "{separator}line {line}")?;
        if let Some(column) = column {
            write!(f, " column {column}")?;
        }
    }
    f.write_str(": ")?;
    if let Some(path) = path.filter(|p| !p.is_empty()) {
        write!(f, "{path}: ")?;
    }
    f.write_str(message)
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_every_known_part_on_one_line() {
        let full = ConfigError::from(ErrorDetails {
            document: Some(2),
            kind: Some("NodePool".into()),
            name: Some("default".into()),
            path: Some("spec.template.spec.taints[0].effect".into()),
            line: Some(14),
            column: Some(19),
            ..ErrorDetails::new(
                "examples/bad.yaml",
                ErrorCategory::Schema,
                "unknown variant `NoSchedul`",
            )
        });
        assert_eq!(
            full.to_string(),
            "examples/bad.yaml: document 2 (NodePool \"default\"), line 14 column 19: spec.template.spec.taints[0].effect: unknown variant `NoSchedul`"
        );
        assert_eq!(full.line, Some(14), "fields are reachable through Deref");
        let bare = ErrorDetails::new(
            "c.yaml",
            ErrorCategory::Io,
            "No such file or directory\n(os error 2)",
        );
        assert_eq!(
            ConfigError::from(bare.clone()).to_string(),
            "c.yaml: No such file or directory (os error 2)"
        );
        let no_name = ErrorDetails {
            document: Some(1),
            kind: Some("Policy".into()),
            line: Some(3),
            ..bare
        };
        assert_eq!(
            ConfigError::from(no_name).to_string(),
            "c.yaml: document 1 (Policy), line 3: No such file or directory (os error 2)"
        );
    }
}
