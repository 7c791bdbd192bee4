//! Reading manifests: files and directories, YAML or JSON, several documents each, `List`s
//! flattened; every object's origin (file, document, list item) for messages.

use super::*;

/// Where an object was read: file, document (1-based, counting empty documents) and, inside
/// lists, the item path (`items[3]`, `items[0].items[2]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub source: Arc<str>,
    pub document: usize,
    pub item: Option<String>,
}

impl Origin {
    fn within(&self, step: &str) -> Origin {
        let item = match &self.item {
            Some(item) if step.starts_with('[') => format!("{item}{step}"),
            Some(item) => format!("{item}.{step}"),
            None => step.to_owned(),
        };
        Origin {
            item: Some(item),
            ..self.clone()
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.source, self.document)?;
        if let Some(item) = &self.item {
            write!(f, ", {item}")?;
        }
        Ok(())
    }
}

/// One Kubernetes object read from a manifest, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub origin: Origin,
    pub object: Value,
}

/// An object from elsewhere than a file: its origin is `input`, and [`expand`] numbers it by its
/// position in the list it is given.
impl From<Value> for Manifest {
    fn from(object: Value) -> Self {
        Manifest {
            origin: Origin {
                source: Arc::from("input"),
                document: 0,
                item: None,
            },
            object,
        }
    }
}

/// What is wrong with the manifests, and where. `Display` is one line for the user, e.g.
/// `app.yaml: document 2 (Deployment shop/web): spec.template.spec.containers[0].resources.requests.cpu: invalid type: sequence, expected Quantity`.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Not valid YAML (or JSON); the message has the line and column within the file.
    #[error("{origin}: invalid {format}: {message}")]
    Syntax {
        origin: Box<Origin>,
        format: &'static str,
        message: String,
    },
    /// The document is not a Kubernetes object: not a mapping, no `kind` or `apiVersion`.
    #[error("{origin}: {message}")]
    NotAnObject {
        origin: Box<Origin>,
        message: String,
    },
    /// A field of an object is missing, of the wrong type or out of range.
    #[error("{origin} ({object}): {path}: {message}")]
    Field {
        origin: Box<Origin>,
        /// `Kind namespace/name`.
        object: String,
        /// Path of the field within the object, e.g. `spec.template.spec.containers[0].image`.
        path: String,
        message: String,
    },
}

/// Read manifest files (`-` is standard input; a directory contributes its `.yaml`, `.yml` and
/// `.json` files, in name order) into objects.
pub fn read_paths(paths: &[PathBuf]) -> Result<Vec<Manifest>, ManifestError> {
    let mut out = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|source| ManifestError::Read {
                    path: "<stdin>".to_owned(),
                    source,
                })?;
            out.extend(parse_documents(&text, "<stdin>")?);
        } else if path.is_dir() {
            for file in manifest_files(path)? {
                out.extend(read_file(&file)?);
            }
        } else {
            out.extend(read_file(path)?);
        }
    }
    Ok(out)
}

pub(super) fn read_file(path: &Path) -> Result<Vec<Manifest>, ManifestError> {
    let source = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse_documents(&text, &source),
        Err(e) => Err(ManifestError::Read {
            path: source,
            source: e,
        }),
    }
}

pub(super) fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let read_error = |source| ManifestError::Read {
        path: dir.display().to_string(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        let manifest = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if manifest && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Parse the text of a manifest file: YAML or JSON, one or more documents. Empty documents are
/// skipped; `List`s are flattened into their items. Every object has a string `apiVersion` and
/// `kind`. `source` names the file in errors.
pub fn parse_documents(text: &str, source: &str) -> Result<Vec<Manifest>, ManifestError> {
    let source: Arc<str> = Arc::from(source);
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let documents = if text.trim_start().starts_with(['{', '[']) {
        // JSON is YAML, but serde_json reads it several times faster. A flow-style YAML document
        // may also start with a brace: fall back to YAML, and report the JSON error if that fails too.
        json_documents(text, &source)
            .or_else(|json_error| yaml_documents(text, &source).map_err(|_| json_error))?
    } else {
        let pieces = (text.len() / MIN_PIECE).min(threads());
        yaml_documents_in_pieces(text, &source, pieces)?
    };
    let mut out = Vec::with_capacity(documents.len());
    for (number, value) in documents {
        if value.is_null() {
            continue;
        }
        let origin = Origin {
            source: source.clone(),
            document: number,
            item: None,
        };
        flatten(value, origin, &mut out)?;
    }
    Ok(out)
}

pub(super) fn json_documents(
    text: &str,
    source: &Arc<str>,
) -> Result<Vec<(usize, Value)>, ManifestError> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .enumerate()
        .map(|(i, document)| {
            document
                .map(|value| (i + 1, value))
                .map_err(|e| syntax_error(source, i + 1, "JSON", e.to_string()))
        })
        .collect()
}

pub(super) fn yaml_documents(
    text: &str,
    source: &Arc<str>,
) -> Result<Vec<(usize, Value)>, ManifestError> {
    // Merge keys (`<<: *defaults`) are applied only through serde_yaml's own Value, which costs a
    // second conversion; most files have none.
    let merges = text.contains("<<");
    let mut documents = Vec::new();
    // Stop at the first error: on some inputs serde_yaml repeats its last error forever.
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let number = i + 1;
        let value = if merges {
            serde_yaml::Value::deserialize(document)
                .and_then(|mut v| v.apply_merge().map(|()| v))
                .map_err(|e| syntax_error(source, number, "YAML", e.to_string()))
                .and_then(|v| {
                    serde_json::to_value(v)
                        .map_err(|e| syntax_error(source, number, "YAML", e.to_string()))
                })
        } else {
            Value::deserialize(document)
                .map_err(|e| syntax_error(source, number, "YAML", e.to_string()))
        }?;
        documents.push((number, value));
    }
    Ok(documents)
}

/// YAML streams at least twice this long are parsed in pieces, in parallel.
pub(super) const MIN_PIECE: usize = 256 * 1024;

pub(super) fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// Parse a YAML stream cut into `pieces` at document markers, in parallel. Anchors, tags and
/// directives never reach across a `---`, so the pieces read as the whole stream does, except
/// that comments before the first marker make no document of their own: no piece starts at the
/// first marker. An error is reported from a parse of the whole text, for its exact line.
pub(super) fn yaml_documents_in_pieces(
    text: &str,
    source: &Arc<str>,
    pieces: usize,
) -> Result<Vec<(usize, Value)>, ManifestError> {
    let pieces = split_at_markers(text, pieces);
    if pieces.len() < 2 {
        return yaml_documents(text, source);
    }
    let mut documents = Vec::new();
    for piece in parallel_map(pieces, 1, |piece| yaml_documents(piece, source)) {
        let Ok(piece) = piece else {
            return yaml_documents(text, source);
        };
        // Pieces number their documents from 1, empty ones included.
        let before = documents.len();
        documents.extend(piece.into_iter().map(|(n, v)| (before + n, v)));
    }
    Ok(documents)
}

/// Cut `text` into about `parts` pieces of similar length, each after the first starting at a
/// `---` line other than the text's first.
pub(super) fn split_at_markers(text: &str, parts: usize) -> Vec<&str> {
    let bytes = text.as_bytes();
    let is_marker = |at: usize| {
        bytes[at..].starts_with(b"---") && bytes.get(at + 3).is_none_or(u8::is_ascii_whitespace)
    };
    // The start of the next marker line after `from`.
    let next_marker = |from: usize| {
        let mut i = from;
        while let Some(newline) = bytes.get(i..)?.iter().position(|&b| b == b'\n') {
            i += newline + 1;
            if is_marker(i) {
                return Some(i);
            }
        }
        None
    };
    let first = if is_marker(0) {
        Some(0)
    } else {
        next_marker(0)
    };
    let mut pieces = Vec::new();
    let mut start = 0;
    if let Some(first) = first {
        for k in 1..parts {
            let from = (bytes.len() * k / parts).max(first);
            match next_marker(from) {
                Some(cut) if cut > start => {
                    pieces.push(&text[start..cut]);
                    start = cut;
                }
                Some(_) => {}
                None => break,
            }
        }
    }
    pieces.push(&text[start..]);
    pieces
}

pub(super) fn syntax_error(
    source: &Arc<str>,
    document: usize,
    format: &'static str,
    message: String,
) -> ManifestError {
    ManifestError::Syntax {
        origin: Box::new(Origin {
            source: source.clone(),
            document,
            item: None,
        }),
        format,
        message,
    }
}

/// Push `value` as one object, or the items of a list (a `List`, a `FooList` with `items`, or a
/// bare sequence).
pub(super) fn flatten(
    value: Value,
    origin: Origin,
    out: &mut Vec<Manifest>,
) -> Result<(), ManifestError> {
    let mut object = match value {
        Value::Object(object) => object,
        Value::Array(items) => {
            for (i, item) in items.into_iter().enumerate() {
                flatten(item, origin.within(&format!("[{i}]")), out)?;
            }
            return Ok(());
        }
        other => {
            return Err(ManifestError::NotAnObject {
                origin: Box::new(origin),
                message: format!(
                    "not a mapping but {}: expected a Kubernetes object with apiVersion and kind",
                    describe(&other)
                ),
            });
        }
    };
    let is_list = match head(&object) {
        Ok((_, kind)) => {
            kind == "List"
                || (kind.ends_with("List") && object.get("items").is_some_and(Value::is_array))
        }
        Err(message) => {
            return Err(ManifestError::NotAnObject {
                origin: Box::new(origin),
                message,
            });
        }
    };
    if !is_list {
        out.push(Manifest {
            origin,
            object: Value::Object(object),
        });
        return Ok(());
    }
    let (api_version, kind) = head(&object)
        .map(|(a, k)| (a.to_owned(), k.to_owned()))
        .unwrap_or_default();
    // Items of a typed list read from the API (`PodList`) carry no kind or apiVersion of their own.
    let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
    let items = match object.remove("items") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(ManifestError::NotAnObject {
                origin: Box::new(origin),
                message: format!("{kind}: items is {}, expected a sequence", describe(&other)),
            });
        }
    };
    for (i, mut item) in items.into_iter().enumerate() {
        let item_origin = origin.within(&format!("items[{i}]"));
        if let (Some(item_kind), Value::Object(fields)) = (item_kind, &mut item) {
            if !fields.contains_key("kind") {
                fields.insert("kind".to_owned(), Value::String(item_kind.to_owned()));
            }
            if !fields.contains_key("apiVersion") {
                fields.insert("apiVersion".to_owned(), Value::String(api_version.clone()));
            }
        }
        if item.is_null() {
            return Err(ManifestError::NotAnObject {
                origin: Box::new(item_origin),
                message: "empty list item: expected a Kubernetes object".to_owned(),
            });
        }
        flatten(item, item_origin, out)?;
    }
    Ok(())
}

/// `(apiVersion, kind)` of an object, or what is wrong with them.
pub(super) fn head(object: &Map<String, Value>) -> Result<(&str, &str), String> {
    let field = |name: &str| match object.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.as_str()),
        None | Some(Value::Null) => Err(format!("missing {name}: not a Kubernetes object")),
        Some(Value::String(_)) => Err(format!("{name} is empty")),
        Some(other) => Err(format!("{name} is {}, expected a string", describe(other))),
    };
    let kind = field("kind")?;
    let api_version = field("apiVersion").map_err(|e| format!("{kind}: {e}"))?;
    Ok((api_version, kind))
}

pub(super) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) if s.len() > 40 => format!("a string ({:?}...)", truncate(s, 40)),
        Value::String(s) => format!("a string ({s:?})"),
        Value::Array(_) => "a sequence".to_owned(),
        Value::Object(_) => "a mapping".to_owned(),
    }
}

pub(super) fn truncate(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
