//! A position-keeping view of the YAML text: documents, where each starts, and the line and column
//! of every node, so errors found after deserializing can still point at the offending field.

use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, ScanError, TScalarStyle};

/// A field path within a document: `spec.rules[0].nodePool`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldPath(Vec<Segment>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

impl FieldPath {
    /// A path of plain keys written with dots, e.g. `spec.template.spec`.
    pub(crate) fn of(dotted: &str) -> Self {
        Self(
            dotted
                .split('.')
                .filter(|k| !k.is_empty())
                .map(|k| Segment::Key(k.to_owned()))
                .collect(),
        )
    }

    pub(crate) fn key(&self, key: &str) -> Self {
        let mut path = self.clone();
        path.0.push(Segment::Key(key.to_owned()));
        path
    }

    pub(crate) fn index(&self, index: usize) -> Self {
        let mut path = self.clone();
        path.0.push(Segment::Index(index));
        path
    }

    /// The path serde_path_to_error recorded for a deserialization error.
    pub(crate) fn from_serde(path: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment as S;
        Self(
            path.iter()
                .filter_map(|segment| match segment {
                    S::Seq { index } => Some(Segment::Index(*index)),
                    S::Map { key } => Some(Segment::Key(key.clone())),
                    S::Enum { .. } | S::Unknown => None,
                })
                .collect(),
        )
    }
}

impl FieldPath {
    /// The path serde_ignored reports for a key no field took.
    pub(crate) fn from_ignored(path: &serde_ignored::Path<'_>) -> Self {
        use serde_ignored::Path as P;
        let mut segments = Vec::new();
        let mut at = path;
        loop {
            at = match at {
                P::Root => break,
                P::Seq { parent, index } => {
                    segments.push(Segment::Index(*index));
                    parent
                }
                P::Map { parent, key } => {
                    segments.push(Segment::Key(key.clone()));
                    parent
                }
                P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
                    parent
                }
            };
        }
        segments.reverse();
        Self(segments)
    }

    /// The keys of the path with every index written `[]`: `spec.amiSelectorTerms[].foo`, for
    /// matching paths whatever their indices.
    pub(crate) fn pattern(&self) -> String {
        let mut out = String::new();
        for segment in &self.0 {
            match segment {
                Segment::Key(key) if out.is_empty() => out.push_str(key),
                Segment::Key(key) => {
                    out.push('.');
                    out.push_str(key);
                }
                Segment::Index(_) => out.push_str("[]"),
            }
        }
        out
    }

    /// The last key, if the path ends with one.
    pub(crate) fn last_key(&self) -> Option<&str> {
        match self.0.last() {
            Some(Segment::Key(key)) => Some(key),
            _ => None,
        }
    }

    /// The first key, if the path starts with one.
    pub(crate) fn first_key(&self) -> Option<&str> {
        match self.0.first() {
            Some(Segment::Key(key)) => Some(key),
            _ => None,
        }
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => f.write_str(key)?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// A YAML node with its 1-based line and column.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub line: usize,
    pub column: usize,
    pub value: Value,
}

#[derive(Clone, Debug)]
pub(crate) enum Value {
    /// A scalar and whether it was plain (unquoted), which decides whether it can mean null.
    Scalar(String, bool),
    Sequence(Vec<Node>),
    Mapping(Vec<(Node, Node)>),
    Alias,
}

impl Node {
    fn at(mark: Marker, value: Value) -> Self {
        // yaml-rust2 reports 1-based lines and 0-based columns.
        Self {
            line: mark.line(),
            column: mark.col() + 1,
            value,
        }
    }

    /// Where the node starts for a reader: a mapping at its first key.
    fn position(&self) -> (usize, usize) {
        match &self.value {
            Value::Mapping(entries) if !entries.is_empty() => entries[0].0.position(),
            _ => (self.line, self.column),
        }
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar(s, true) if matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|(_, value)| value)
    }

    fn entry(&self, key: &str) -> Option<(&Node, &Node)> {
        match &self.value {
            Value::Mapping(entries) => entries
                .iter()
                .find(|(k, _)| matches!(&k.value, Value::Scalar(s, _) if s == key))
                .map(|(k, v)| (k, v)),
            _ => None,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s, _) => Some(s),
            _ => None,
        }
    }
}

/// One YAML document of the file.
#[derive(Debug)]
pub(crate) struct Document {
    /// 1-based, counting empty documents.
    pub index: usize,
    pub root: Option<Node>,
}

/// What identifies a document in messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Head {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
}

impl Document {
    /// True for a document with no content (`---` followed by nothing or comments).
    pub(crate) fn is_empty(&self) -> bool {
        self.root.as_ref().is_none_or(Node::is_null)
    }

    pub(crate) fn head(&self) -> Head {
        self.root.as_ref().map(head_of).unwrap_or_default()
    }

    /// Line and column of the field at `path`: the value's position for a scalar, else the key's.
    /// A path that does not exist (a missing field) resolves to its deepest existing ancestor, and
    /// finally to the document's first line.
    pub(crate) fn locate(&self, path: &FieldPath) -> Option<(usize, usize)> {
        self.resolve(path).map(|(position, _)| position)
    }

    /// Like [`Document::locate`], but only when the whole path exists.
    pub(crate) fn locate_exactly(&self, path: &FieldPath) -> Option<(usize, usize)> {
        self.resolve(path)
            .filter(|(_, exact)| *exact)
            .map(|(position, _)| position)
    }

    /// Where the key of the field at `path` is written (for a field that is ignored, the key is
    /// what the reader must find); the value's position for an index.
    pub(crate) fn locate_key(&self, path: &FieldPath) -> Option<(usize, usize)> {
        let Some((Segment::Key(key), parent)) = path.0.split_last() else {
            return self.locate(path);
        };
        let parent = FieldPath(parent.to_vec());
        match self.resolve_node(&parent).and_then(|node| node.entry(key)) {
            Some((key_node, _)) => Some((key_node.line, key_node.column)),
            None => self.locate(path),
        }
    }

    /// The node at `path`, if the whole path exists.
    fn resolve_node(&self, path: &FieldPath) -> Option<&Node> {
        let mut node = self.root.as_ref()?;
        for segment in &path.0 {
            node = match segment {
                Segment::Key(key) => node.get(key)?,
                Segment::Index(index) => match &node.value {
                    Value::Sequence(items) => items.get(*index)?,
                    _ => return None,
                },
            };
        }
        Some(node)
    }

    /// The position of the deepest node along `path`, and whether that is the whole path.
    fn resolve(&self, path: &FieldPath) -> Option<((usize, usize), bool)> {
        let root = self.root.as_ref()?;
        let mut node = root;
        let mut position = root.position();
        for segment in &path.0 {
            let (at, next) = match segment {
                Segment::Key(key) => match node.entry(key) {
                    Some((_, value)) if matches!(value.value, Value::Scalar(..) | Value::Alias) => {
                        (value.position(), value)
                    }
                    Some((key_node, value)) => ((key_node.line, key_node.column), value),
                    None => return Some((position, false)),
                },
                Segment::Index(index) => match &node.value {
                    Value::Sequence(items) if *index < items.len() => {
                        (items[*index].position(), &items[*index])
                    }
                    _ => return Some((position, false)),
                },
            };
            position = at;
            node = next;
        }
        Some((position, true))
    }
}

fn head_of(root: &Node) -> Head {
    let text = |node: Option<&Node>| {
        node.and_then(Node::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    Head {
        api_version: text(root.get("apiVersion")),
        kind: text(root.get("kind")),
        name: text(root.get("metadata").and_then(|m| m.get("name"))),
    }
}

/// A YAML syntax error, with the document it occurred in.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub document: usize,
    pub head: Head,
    pub error: ScanError,
}

/// Parse the whole file into documents with positions.
pub(crate) fn parse_documents(text: &str) -> Result<Vec<Document>, Box<SyntaxError>> {
    let mut builder = Builder::default();
    match Parser::new_from_str(text).load(&mut builder, true) {
        Ok(()) => Ok(builder.documents),
        Err(error) => Err(Box::new(SyntaxError {
            document: builder.documents.len().max(1),
            // The document being parsed is still open: its root is the bottom of the stack.
            head: builder
                .stack
                .first()
                .map(|(node, _)| head_of(node))
                .unwrap_or_default(),
            error,
        })),
    }
}

#[derive(Default)]
struct Builder {
    documents: Vec<Document>,
    /// Open collections, each with the key waiting for its value when it is a mapping.
    stack: Vec<(Node, Option<Node>)>,
}

impl Builder {
    fn insert(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => {
                if let Some(document) = self.documents.last_mut() {
                    document.root = Some(node);
                }
            }
            Some((
                Node {
                    value: Value::Sequence(items),
                    ..
                },
                _,
            )) => items.push(node),
            Some((
                Node {
                    value: Value::Mapping(entries),
                    ..
                },
                pending,
            )) => match pending.take() {
                Some(key) => entries.push((key, node)),
                None => *pending = Some(node),
            },
            Some(_) => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::DocumentStart => {
                self.documents.push(Document {
                    index: self.documents.len() + 1,
                    root: None,
                });
            }
            Event::Scalar(value, style, ..) => {
                self.insert(Node::at(
                    mark,
                    Value::Scalar(value, style == TScalarStyle::Plain),
                ));
            }
            Event::Alias(_) => self.insert(Node::at(mark, Value::Alias)),
            Event::SequenceStart(..) => self
                .stack
                .push((Node::at(mark, Value::Sequence(Vec::new())), None)),
            Event::MappingStart(..) => self
                .stack
                .push((Node::at(mark, Value::Mapping(Vec::new())), None)),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, _)) = self.stack.pop() {
                    self.insert(node);
                }
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# leading comment
apiVersion: karpenter.sh/v1
kind: NodePool
metadata:
  name: default
spec:
  template:
    spec:
      taints:
        - key: a
          effect: NoSchedule
---
---
# comment only
---
kind: Policy
spec:
  rules: [{nodePool: default}, {nodePool: other}]
";

    #[test]
    fn splits_documents_and_reads_heads() {
        let documents = parse_documents(TEXT).unwrap();
        assert_eq!(documents.len(), 4);
        assert_eq!(
            documents[0].head(),
            Head {
                api_version: Some("karpenter.sh/v1".into()),
                kind: Some("NodePool".into()),
                name: Some("default".into())
            }
        );
        assert!(documents[1].is_empty() && documents[2].is_empty());
        assert_eq!(documents[3].index, 4);
        assert_eq!(documents[3].head().kind.as_deref(), Some("Policy"));
    }

    #[test]
    fn locates_fields_in_whole_file_lines() {
        let documents = parse_documents(TEXT).unwrap();
        let taint = FieldPath::of("spec.template.spec.taints").index(0);
        let cases = [
            (&documents[0], taint.key("effect"), (11, 19)),
            (&documents[0], taint.clone(), (10, 11)),
            (&documents[0], FieldPath::of("spec.template"), (7, 3)),
            (&documents[0], FieldPath::of("metadata.name"), (5, 9)),
            // Missing fields resolve to their deepest existing ancestor, then to the first line.
            (&documents[0], taint.key("value"), (10, 11)),
            (&documents[0], FieldPath::of("nothing.here"), (2, 1)),
            (
                &documents[3],
                FieldPath::of("spec.rules").index(1).key("nodePool"),
                (18, 43),
            ),
        ];
        for (document, path, expected) in cases {
            assert_eq!(document.locate(&path), Some(expected), "{path}");
        }
        assert_eq!(
            documents[0].locate_exactly(&taint.key("effect")),
            Some((11, 19))
        );
        assert_eq!(documents[0].locate_exactly(&taint.key("value")), None);
        // A key's own position, for fields reported as ignored.
        assert_eq!(
            documents[0].locate_key(&taint.key("effect")),
            Some((11, 11))
        );
        assert_eq!(
            documents[0].locate_key(&FieldPath::of("spec.template")),
            Some((7, 3))
        );
    }

    #[test]
    fn reports_syntax_errors_with_their_document() {
        let err = parse_documents("a: 1\n---\nkind: NodePool\nb: [\n").unwrap_err();
        assert_eq!(err.document, 2);
        assert_eq!(err.head.kind.as_deref(), Some("NodePool"));
        assert_eq!(err.error.marker().line(), 5);
    }

    #[test]
    fn an_empty_file_has_no_documents() {
        assert!(parse_documents("").unwrap().is_empty());
        assert!(parse_documents("# nothing\n").unwrap().is_empty());
    }
}
