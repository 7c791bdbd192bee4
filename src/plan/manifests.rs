//! Reading Kubernetes manifests for `nodewright plan`, and expanding them into the pods their
//! controllers would create, mutated as the steering webhook would mutate them.
//!
//! Reading: YAML or JSON, several documents per file, `List`s flattened (nested ones too, and
//! `PodList`-style lists whose items omit `kind`). Expanding: Pods as written; Deployments,
//! ReplicaSets, StatefulSets and Jobs into their replicas, named and labelled as their controllers
//! do it; each DaemonSet into one pod, for per-node overhead. Every pod then goes through
//! [`Steering::decide`] exactly as its admission request would, and the patch is applied or the
//! denial recorded.
//!
//! Speed: the replicas of a workload differ only in their names (StatefulSet and Indexed Job pods
//! also in labels carrying their ordinal, so those are decided one by one), so the decision is made
//! once on the first replica and the mutated, typed pod is cloned for the others. Large YAML
//! streams are parsed in pieces, and pod sets admitted, on all cores (`std::thread::scope`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::policy::mutate::{Decision, Operation, PodAdmission, Steering};
use crate::policy::pod::PodView;
use crate::scheduling::pools::{DAEMON_HOST_NETWORK_TOLERATION, DAEMON_TOLERATIONS};

/// A workload asking for more pods than this is refused rather than expanded (memory).
pub const MAX_PODS_PER_WORKLOAD: u64 = 100_000;

/// Kubernetes' alphabet for generated names and hashes (`k8s.io/apimachinery/pkg/util/rand`): no vowels,
/// no look-alike characters.
const ALPHABET: &[u8; 27] = b"bcdfghjklmnpqrstvwxz2456789";
/// `generateName` prefixes are cut to this length so that prefix and suffix fit in 63 characters.
const MAX_GENERATED_PREFIX: usize = 58;

const POD_TEMPLATE_HASH: &str = "pod-template-hash";
const REVISION_HASH: &str = "controller-revision-hash";
const STS_POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
const STS_POD_INDEX: &str = "apps.kubernetes.io/pod-index";
const DS_TEMPLATE_GENERATION: &str = "pod-template-generation";
const JOB_NAME: &str = "batch.kubernetes.io/job-name";
const JOB_NAME_LEGACY: &str = "job-name";
const JOB_UID: &str = "batch.kubernetes.io/controller-uid";
const JOB_UID_LEGACY: &str = "controller-uid";
const JOB_INDEX: &str = "batch.kubernetes.io/job-completion-index";
const NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";

/// The pods a set of manifests asks for, as the cluster would admit them.
#[derive(Debug, Clone, Default)]
pub struct Workloads {
    /// Every pod the manifests create, mutated as the webhook would, named and namespaced.
    pub pods: Vec<Pod>,
    /// One pod per DaemonSet (its template, as the controller stamps it), for per-node overhead.
    pub daemonsets: Vec<Pod>,
    /// `("namespace/name", message)` of each pod the webhook denies; those pods are not in `pods`.
    pub denied: Vec<(String, String)>,
    /// Notes on objects not expanded, counted by kind, e.g. `2 Service objects ignored`.
    pub skipped: Vec<String>,
    /// PersistentVolumeClaims (with those of StatefulSets' claim templates), PersistentVolumes
    /// and StorageClasses, for the pods' volume topology.
    pub volumes: crate::scheduling::volumes::VolumeObjects,
}

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

fn read_file(path: &Path) -> Result<Vec<Manifest>, ManifestError> {
    let source = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse_documents(&text, &source),
        Err(e) => Err(ManifestError::Read {
            path: source,
            source: e,
        }),
    }
}

fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
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

fn json_documents(text: &str, source: &Arc<str>) -> Result<Vec<(usize, Value)>, ManifestError> {
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

fn yaml_documents(text: &str, source: &Arc<str>) -> Result<Vec<(usize, Value)>, ManifestError> {
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
const MIN_PIECE: usize = 256 * 1024;

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// Parse a YAML stream cut into `pieces` at document markers, in parallel. Anchors, tags and
/// directives never reach across a `---`, so the pieces read as the whole stream does, except
/// that comments before the first marker make no document of their own: no piece starts at the
/// first marker. An error is reported from a parse of the whole text, for its exact line.
fn yaml_documents_in_pieces(
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
fn split_at_markers(text: &str, parts: usize) -> Vec<&str> {
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

fn syntax_error(
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
fn flatten(value: Value, origin: Origin, out: &mut Vec<Manifest>) -> Result<(), ManifestError> {
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
fn head(object: &Map<String, Value>) -> Result<(&str, &str), String> {
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

fn describe(value: &Value) -> String {
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

fn truncate(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The kinds that are expanded into pods, and Namespaces, whose labels steering may select on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pod,
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
    Namespace,
}

impl Kind {
    const ALL: [(Kind, &'static str, &'static str); 7] = [
        (Kind::Pod, "v1", "Pod"),
        (Kind::Deployment, "apps/v1", "Deployment"),
        (Kind::ReplicaSet, "apps/v1", "ReplicaSet"),
        (Kind::StatefulSet, "apps/v1", "StatefulSet"),
        (Kind::DaemonSet, "apps/v1", "DaemonSet"),
        (Kind::Job, "batch/v1", "Job"),
        (Kind::Namespace, "v1", "Namespace"),
    ];

    fn of(api_version: &str, kind: &str) -> Option<Kind> {
        Self::ALL
            .iter()
            .find(|(_, a, k)| *a == api_version && *k == kind)
            .map(|(kind, _, _)| *kind)
    }

    fn api_version(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(k, _, _)| *k == self)
            .map_or("", |e| e.1)
    }

    fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(k, _, _)| *k == self)
            .map_or("", |e| e.2)
    }
}

/// Expand objects into the pods their controllers would create, each admitted by `steering` as
/// the mutating webhook would admit it (namespace labels from the `Namespace` objects among them,
/// unknown for other namespaces). Accepts what [`read_paths`] and [`parse_documents`] return, or
/// bare `serde_json::Value`s (numbered by position).
pub fn expand<M: Into<Manifest>>(
    objects: Vec<M>,
    steering: &Steering,
) -> Result<Workloads, ManifestError> {
    let mut manifests = Vec::with_capacity(objects.len());
    for (i, object) in objects.into_iter().enumerate() {
        let mut manifest: Manifest = object.into();
        if manifest.origin.document == 0 {
            manifest.origin.document = i + 1;
        }
        // Objects that did not come through parse_documents are checked and flattened here.
        flatten(manifest.object, manifest.origin, &mut manifests)?;
    }

    // Namespaces first: a Namespace may come after the pods it holds.
    let mut namespace_labels = HashMap::new();
    for manifest in &manifests {
        if let Value::Object(object) = &manifest.object
            && head(object).is_ok_and(|(a, k)| Kind::of(a, k) == Some(Kind::Namespace))
        {
            let (name, labels) = namespace(object, &manifest.origin)?;
            namespace_labels.insert(name, labels);
        }
    }

    // Building the pod sets names the pods, in order, so that generated names are unique and
    // reproducible. Admitting them is independent from one set to the next, so it runs in
    // parallel. The first error of a pod set in document order is the one reported.
    let mut names = NameGenerator::default();
    let mut sets: Vec<Result<PodSet, ManifestError>> = Vec::new();
    let mut ignored: BTreeMap<String, usize> = BTreeMap::new();
    let mut volumes = super::volumes::VolumeReader::default();
    for Manifest { origin, object } in manifests {
        let Value::Object(object) = object else {
            continue;
        };
        let (api_version, kind) = head(&object).unwrap_or_default();
        if volumes.read(api_version, kind, &object, &origin)? {
            continue;
        }
        let set = match Kind::of(api_version, kind) {
            Some(Kind::Namespace) => continue,
            Some(Kind::Pod) => pod_set(object, origin, &mut names),
            Some(kind) => workload_set(kind, object, origin, &mut names),
            None => {
                let known = Kind::ALL.iter().any(|(_, _, k)| *k == kind);
                let key = if known {
                    format!("{kind} ({api_version})")
                } else {
                    kind.to_owned()
                };
                *ignored.entry(key).or_default() += 1;
                continue;
            }
        };
        let failed = set.is_err();
        sets.push(set);
        if failed {
            break;
        }
    }
    let admission = Admission {
        steering,
        namespace_labels: &namespace_labels,
    };
    let admitted = parallel_map(sets, 256, |set| set.and_then(|set| admission.admit(set)));
    let mut out = Workloads::default();
    for admitted in admitted {
        let Admitted {
            pods,
            daemon,
            denied,
        } = admitted?;
        if daemon {
            out.daemonsets.extend(pods);
        } else {
            out.pods.extend(pods);
        }
        out.denied.extend(denied);
    }
    out.volumes = volumes.finish(&mut out.pods);
    out.skipped = ignored
        .into_iter()
        .map(|(kind, n)| {
            let s = if n == 1 { "" } else { "s" };
            format!("{n} {kind} object{s} ignored")
        })
        .collect();
    Ok(out)
}

/// Names the controllers would generate: a `generateName` prefix and five characters derived from
/// a seed and a counter, unique among all names generated in one expansion.
#[derive(Default)]
struct NameGenerator {
    used: HashSet<String>,
    next: HashMap<String, u64>,
}

impl NameGenerator {
    fn generate(&mut self, prefix: &str, seed: &str) -> String {
        let prefix = truncate(prefix, MAX_GENERATED_PREFIX);
        let next = self.next.entry(seed.to_owned()).or_default();
        loop {
            let name = format!("{prefix}{}", suffix(seed, *next));
            *next += 1;
            if self.used.insert(name.clone()) {
                return name;
            }
        }
    }
}

/// Five characters of [`ALPHABET`] from `(seed, n)`: what `utilrand.String(5)` gives the apiserver,
/// but reproducible.
fn suffix(seed: &str, n: u64) -> String {
    let mut x = splitmix64(fnv64a(seed.as_bytes()) ^ splitmix64(n));
    (0..5)
        .map(|_| {
            let c = ALPHABET[(x % 27) as usize] as char;
            x /= 27;
            c
        })
        .collect()
}

/// A template hash as the controllers write it: fnv-1a (32 bits) of the template, its decimal
/// digits mapped onto [`ALPHABET`] (`rand.SafeEncodeString(fmt.Sprint(hash))`), 8 to 10 characters.
/// Kubernetes hashes the Go struct dump; this hashes the canonical JSON (keys sorted), which is as stable.
fn template_hash(template: &Map<String, Value>) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    fnv32a(&bytes)
        .to_string()
        .bytes()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}

/// A uid shaped like the apiserver's (UUID v4), derived from the object's identity.
fn fake_uid(kind: &str, namespace: &str, name: &str) -> String {
    let a = splitmix64(fnv64a(format!("{kind}/{namespace}/{name}").as_bytes()));
    let b = splitmix64(a);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

fn fnv64a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The object an error is about, for messages.
struct At {
    origin: Origin,
    object: String,
}

impl At {
    fn field(&self, path: impl Into<String>, message: impl Into<String>) -> ManifestError {
        ManifestError::Field {
            origin: Box::new(self.origin.clone()),
            object: self.object.clone(),
            path: path.into(),
            message: message.into(),
        }
    }

    /// A serde_path_to_error error, its path prefixed with where the pod came from in the object.
    fn decode(
        &self,
        prefix: &str,
        e: serde_path_to_error::Error<serde_json::Error>,
    ) -> ManifestError {
        let path = e.path().to_string();
        let path = match (path.as_str(), prefix) {
            (".", "") => path,
            (".", prefix) => prefix.trim_end_matches('.').to_owned(),
            (path, prefix) => format!("{prefix}{path}"),
        };
        self.field(path, e.inner().to_string())
    }
}

/// Pods to admit: one pod object and the replicas stamped from it.
struct PodSet {
    at: At,
    namespace: String,
    /// The pod as its controller builds it, before its name and per-replica labels.
    base: Value,
    /// Where the pod's fields are in the object, for error paths (`spec.template.` for workloads).
    prefix: &'static str,
    replicas: Vec<Replica>,
    daemon: bool,
}

struct Replica {
    name: String,
    labels: Vec<(&'static str, String)>,
    annotations: Vec<(&'static str, String)>,
}

impl Replica {
    fn named(name: String) -> Self {
        Replica {
            name,
            labels: Vec::new(),
            annotations: Vec::new(),
        }
    }
}

/// A pod set's pods (or DaemonSet pod) as admitted, and its denials.
struct Admitted {
    pods: Vec<Pod>,
    daemon: bool,
    denied: Vec<(String, String)>,
}

/// A Namespace object's name and labels, as the apiserver would have them.
fn namespace(
    object: &Map<String, Value>,
    origin: &Origin,
) -> Result<(String, BTreeMap<String, String>), ManifestError> {
    let at = At {
        origin: origin.clone(),
        object: "Namespace".to_owned(),
    };
    let meta = mapping(object.get("metadata"), "metadata", &at)?;
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| at.field("metadata.name", "missing"))?;
    let at = At {
        origin: origin.clone(),
        object: format!("Namespace {name}"),
    };
    let mut labels: BTreeMap<String, String> = match meta.and_then(|m| m.get("labels")) {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(labels) => serde_path_to_error::deserialize(labels)
            .map_err(|e| at.decode("metadata.labels.", e))?,
    };
    // The apiserver labels every namespace with its own name.
    labels.insert(NAMESPACE_NAME.to_owned(), name.to_owned());
    Ok((name.to_owned(), labels))
}

/// A Pod as written: named (from its generateName if need be) and namespaced.
fn pod_set(
    mut object: Map<String, Value>,
    origin: Origin,
    names: &mut NameGenerator,
) -> Result<PodSet, ManifestError> {
    let mut at = At {
        origin,
        object: "Pod".to_owned(),
    };
    let meta = object
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if meta.is_null() {
        *meta = Value::Object(Map::new());
    }
    let Value::Object(meta) = meta else {
        return Err(at.field(
            "metadata",
            format!("{}, expected a mapping", describe(meta)),
        ));
    };
    let namespace = string(meta.get("namespace"), "metadata.namespace", &at)?
        .unwrap_or("default")
        .to_owned();
    let name = match string(meta.get("name"), "metadata.name", &at)? {
        Some(name) => name.to_owned(),
        None => match string(meta.get("generateName"), "metadata.generateName", &at)? {
            Some(prefix) => names.generate(prefix, prefix),
            None => {
                return Err(at.field(
                    "metadata.name",
                    "missing: a Pod needs metadata.name or metadata.generateName",
                ));
            }
        },
    };
    meta.insert("namespace".to_owned(), Value::String(namespace.clone()));
    meta.insert("name".to_owned(), Value::String(name.clone()));
    at.object = format!("Pod {namespace}/{name}");
    Ok(PodSet {
        at,
        namespace,
        base: Value::Object(object),
        prefix: "",
        replicas: vec![Replica::named(name)],
        daemon: false,
    })
}

/// A workload's pods as its controller would create them, all from one pod object.
fn workload_set(
    kind: Kind,
    mut object: Map<String, Value>,
    origin: Origin,
    names: &mut NameGenerator,
) -> Result<PodSet, ManifestError> {
    let mut at = At {
        origin,
        object: kind.as_str().to_owned(),
    };
    let meta = mapping(object.get("metadata"), "metadata", &at)?;
    let get = |key: &str| meta.and_then(|m| m.get(key));
    let namespace = string(get("namespace"), "metadata.namespace", &at)?
        .unwrap_or("default")
        .to_owned();
    let name = match string(get("name"), "metadata.name", &at)? {
        Some(name) => name.to_owned(),
        None => match string(get("generateName"), "metadata.generateName", &at)? {
            Some(prefix) => names.generate(prefix, prefix),
            None => {
                return Err(at.field(
                    "metadata.name",
                    format!("missing: a {} needs a name", kind.as_str()),
                ));
            }
        },
    };
    at.object = format!("{} {namespace}/{name}", kind.as_str());

    let mut spec = match object.remove("spec") {
        Some(Value::Object(spec)) => spec,
        None | Some(Value::Null) => return Err(at.field("spec", "missing")),
        Some(other) => {
            return Err(at.field("spec", format!("{}, expected a mapping", describe(&other))));
        }
    };
    let mut template = match spec.remove("template") {
        Some(Value::Object(template)) => template,
        None | Some(Value::Null) => return Err(at.field("spec.template", "missing")),
        Some(other) => {
            return Err(at.field(
                "spec.template",
                format!("{}, expected a mapping", describe(&other)),
            ));
        }
    };
    let hash = template_hash(&template);
    let mut template_meta = match template.remove("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(at.field(
                "spec.template.metadata",
                format!("{}, expected a mapping", describe(&other)),
            ));
        }
    };
    let mut pod_spec = match template.remove("spec") {
        Some(Value::Object(s)) => s,
        None | Some(Value::Null) => return Err(at.field("spec.template.spec", "missing")),
        Some(other) => {
            return Err(at.field(
                "spec.template.spec",
                format!("{}, expected a mapping", describe(&other)),
            ));
        }
    };
    let mut labels = match template_meta.remove("labels") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(l)) => l,
        Some(other) => {
            return Err(at.field(
                "spec.template.metadata.labels",
                format!("{}, expected a mapping", describe(&other)),
            ));
        }
    };
    let annotations = match template_meta.remove("annotations") {
        None | Some(Value::Null) => None,
        Some(a @ Value::Object(_)) => Some(a),
        Some(other) => {
            return Err(at.field(
                "spec.template.metadata.annotations",
                format!("{}, expected a mapping", describe(&other)),
            ));
        }
    };
    let mut label = |key: &str, value: String| {
        labels.insert(key.to_owned(), Value::String(value));
    };

    // What each controller names its pods, which labels it adds, and who owns them.
    let (owner, generate_name, replicas) = match kind {
        Kind::Deployment | Kind::ReplicaSet => {
            let n = count(&spec, "spec.replicas", &at)?.unwrap_or(1);
            let replica_set = if kind == Kind::Deployment {
                label(POD_TEMPLATE_HASH, hash.clone());
                format!("{name}-{hash}")
            } else {
                name.clone()
            };
            let prefix = format!("{replica_set}-");
            let replicas = (0..n)
                .map(|_| Replica::named(names.generate(&prefix, &replica_set)))
                .collect();
            let owner = owner_reference(Kind::ReplicaSet, &namespace, &replica_set);
            (owner, Some(prefix), replicas)
        }
        Kind::StatefulSet => {
            let n = count(&spec, "spec.replicas", &at)?.unwrap_or(1);
            let start = match mapping(spec.get("ordinals"), "spec.ordinals", &at)? {
                Some(ordinals) => count(ordinals, "spec.ordinals.start", &at)?.unwrap_or(0),
                None => 0,
            };
            label(REVISION_HASH, format!("{name}-{hash}"));
            let replicas = (start..start + n)
                .map(|ordinal| Replica {
                    name: format!("{name}-{ordinal}"),
                    labels: vec![
                        (STS_POD_NAME, format!("{name}-{ordinal}")),
                        (STS_POD_INDEX, ordinal.to_string()),
                    ],
                    annotations: Vec::new(),
                })
                .collect();
            (owner_reference(kind, &namespace, &name), None, replicas)
        }
        Kind::DaemonSet => {
            label(REVISION_HASH, hash.clone());
            label(DS_TEMPLATE_GENERATION, "1".to_owned());
            add_daemon_tolerations(&mut pod_spec);
            let prefix = format!("{name}-");
            let replicas = vec![Replica::named(names.generate(&prefix, &name))];
            (
                owner_reference(kind, &namespace, &name),
                Some(prefix),
                replicas,
            )
        }
        Kind::Job => {
            let suspended = spec.get("suspend").and_then(Value::as_bool) == Some(true);
            let parallelism = count(&spec, "spec.parallelism", &at)?.unwrap_or(1);
            let completions = count(&spec, "spec.completions", &at)?;
            let pods = if suspended {
                0
            } else {
                completions.map_or(parallelism, |c| c.min(parallelism))
            };
            let owner = owner_reference(kind, &namespace, &name);
            let uid = fake_uid(kind.as_str(), &namespace, &name);
            label(JOB_UID, uid.clone());
            label(JOB_UID_LEGACY, uid);
            label(JOB_NAME, name.clone());
            label(JOB_NAME_LEGACY, name.clone());
            let indexed = spec.get("completionMode").and_then(Value::as_str) == Some("Indexed");
            let replicas = if indexed {
                (0..pods)
                    .map(|index| {
                        let prefix = format!("{name}-{index}-");
                        Replica {
                            name: names.generate(&prefix, &prefix),
                            labels: vec![(JOB_INDEX, index.to_string())],
                            annotations: vec![(JOB_INDEX, index.to_string())],
                        }
                    })
                    .collect()
            } else {
                let prefix = format!("{name}-");
                (0..pods)
                    .map(|_| Replica::named(names.generate(&prefix, &name)))
                    .collect()
            };
            (owner, (!indexed).then(|| format!("{name}-")), replicas)
        }
        Kind::Pod | Kind::Namespace => {
            return Err(at.field("kind", "not a workload"));
        }
    };
    let mut metadata = Map::new();
    metadata.insert("namespace".to_owned(), Value::String(namespace.clone()));
    if let Some(prefix) = generate_name {
        metadata.insert("generateName".to_owned(), Value::String(prefix));
    }
    metadata.insert("labels".to_owned(), Value::Object(labels));
    if let Some(annotations) = annotations {
        metadata.insert("annotations".to_owned(), annotations);
    }
    if let Some(finalizers) = template_meta.remove("finalizers") {
        metadata.insert("finalizers".to_owned(), finalizers);
    }
    metadata.insert("ownerReferences".to_owned(), Value::Array(vec![owner]));
    let base = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": pod_spec,
    });
    Ok(PodSet {
        at,
        namespace,
        base,
        prefix: "spec.template.",
        replicas,
        daemon: kind == Kind::DaemonSet,
    })
}

/// What admission needs besides the pod: shared, read-only, by all threads.
struct Admission<'a> {
    steering: &'a Steering,
    namespace_labels: &'a HashMap<String, BTreeMap<String, String>>,
}

impl Admission<'_> {
    /// Admit every replica of `set` as the webhook would.
    fn admit(&self, set: PodSet) -> Result<Admitted, ManifestError> {
        let PodSet {
            at,
            namespace,
            mut base,
            prefix,
            replicas,
            daemon,
        } = set;
        let per_replica = replicas
            .iter()
            .any(|r| !r.labels.is_empty() || !r.annotations.is_empty());
        let mut out = Admitted {
            pods: Vec::with_capacity(replicas.len()),
            daemon,
            denied: Vec::new(),
        };
        if per_replica {
            for replica in replicas {
                let mut pod = base.clone();
                stamp(&mut pod, &replica);
                match self.mutate(&mut pod, &namespace, &at, prefix)? {
                    Some(message) => out
                        .denied
                        .push((format!("{namespace}/{}", replica.name), message)),
                    None => out.pods.push(decode(&pod, &at, prefix)?),
                }
            }
            return Ok(out);
        }
        // Replicas differ only in name: decide once, on the first one as it would arrive.
        if let Some(first) = replicas.first() {
            stamp(&mut base, first);
        }
        if let Some(message) = self.mutate(&mut base, &namespace, &at, prefix)? {
            out.denied = replicas
                .into_iter()
                .map(|replica| (format!("{namespace}/{}", replica.name), message.clone()))
                .collect();
            return Ok(out);
        }
        // Typed even with no replicas, so that a bad template is reported whatever the count.
        let pod: Pod = decode(&base, &at, prefix)?;
        if let Some((last, rest)) = replicas.split_last() {
            for replica in rest {
                let mut copy = pod.clone();
                copy.metadata.name = Some(replica.name.clone());
                out.pods.push(copy);
            }
            let mut pod = pod;
            pod.metadata.name = Some(last.name.clone());
            out.pods.push(pod);
        }
        Ok(out)
    }

    /// Decide as the webhook would and apply the patch; `Some(message)` when the pod is denied.
    fn mutate(
        &self,
        pod: &mut Value,
        namespace: &str,
        at: &At,
        prefix: &str,
    ) -> Result<Option<String>, ManifestError> {
        let view: PodView = decode(pod, at, prefix)?;
        let decision = self.steering.decide(&PodAdmission {
            operation: Operation::Create,
            group: "",
            kind: "Pod",
            namespace,
            pod: Some(&view),
            namespace_labels: self.namespace_labels.get(namespace),
        });
        match decision {
            // On failure the pod is dropped with the error: no need for patch's undo log.
            Decision::Patch { patch, .. } => {
                json_patch::patch_unsafe(pod, &patch).map_err(|e| {
                    at.field(
                        format!("{prefix}spec"),
                        format!("the webhook's patch does not apply: {e}"),
                    )
                })?
            }
            Decision::Deny { message, .. } => return Ok(Some(message)),
            Decision::Skip(_) | Decision::Unchanged { .. } => {}
        }
        Ok(None)
    }
}

/// Give a pod object a replica's name and labels.
fn stamp(pod: &mut Value, replica: &Replica) {
    let Some(meta) = pod.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    meta.insert("name".to_owned(), Value::String(replica.name.clone()));
    for (field, pairs) in [
        ("labels", &replica.labels),
        ("annotations", &replica.annotations),
    ] {
        if pairs.is_empty() {
            continue;
        }
        let map = meta
            .entry(field)
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(map) = map.as_object_mut() {
            for (k, v) in pairs {
                map.insert((*k).to_owned(), Value::String(v.clone()));
            }
        }
    }
}

/// Deserialize from a borrowed value (faster than from an owned one, and than tracking the path
/// on every field); on failure, again with the path, for the message.
fn decode<T: serde::de::DeserializeOwned>(
    value: &Value,
    at: &At,
    prefix: &str,
) -> Result<T, ManifestError> {
    T::deserialize(value)
        .or_else(|_| serde_path_to_error::deserialize(value).map_err(|e| at.decode(prefix, e)))
}

/// `f` over `items`, in order, on up to `available_parallelism` threads, each taking a contiguous
/// run of at least `min_run` items (fewer items run on this thread alone).
fn parallel_map<T: Send, R: Send>(
    mut items: Vec<T>,
    min_run: usize,
    f: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    let run = items.len().div_ceil(threads()).max(min_run.max(1));
    if items.len() <= run {
        return items.into_iter().map(f).collect();
    }
    let mut runs = Vec::new();
    while items.len() > run {
        let rest = items.split_off(run);
        runs.push(std::mem::replace(&mut items, rest));
    }
    runs.push(items);
    let f = &f;
    std::thread::scope(|scope| {
        let mut runs = runs.into_iter();
        let first = runs.next().unwrap_or_default();
        let handles: Vec<_> = runs
            .map(|run| scope.spawn(move || run.into_iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut out: Vec<R> = first.into_iter().map(f).collect();
        for handle in handles {
            match handle.join() {
                Ok(results) => out.extend(results),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

fn owner_reference(kind: Kind, namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": kind.api_version(),
        "kind": kind.as_str(),
        "name": name,
        "uid": fake_uid(kind.as_str(), namespace, name),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// The DaemonSet controller's tolerations, each added unless the template has it already.
fn add_daemon_tolerations(spec: &mut Map<String, Value>) {
    let host_network = spec.get("hostNetwork").and_then(Value::as_bool) == Some(true);
    let tolerations = spec
        .entry("tolerations")
        .or_insert_with(|| Value::Array(Vec::new()));
    if tolerations.is_null() {
        *tolerations = Value::Array(Vec::new());
    }
    let Some(tolerations) = tolerations.as_array_mut() else {
        return;
    };
    let extra = host_network.then_some(DAEMON_HOST_NETWORK_TOLERATION);
    for (key, effect) in DAEMON_TOLERATIONS.into_iter().chain(extra) {
        let toleration = json!({"key": key, "operator": "Exists", "effect": effect});
        if !tolerations.contains(&toleration) {
            tolerations.push(toleration);
        }
    }
}

/// A mapping field; absent or null is `None`.
fn mapping<'v>(
    value: Option<&'v Value>,
    path: &str,
    at: &At,
) -> Result<Option<&'v Map<String, Value>>, ManifestError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(at.field(path, format!("{}, expected a mapping", describe(other)))),
    }
}

/// A string field; absent, null or empty is `None`.
fn string<'v>(
    value: Option<&'v Value>,
    path: &str,
    at: &At,
) -> Result<Option<&'v str>, ManifestError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str()).filter(|s| !s.is_empty())),
        Some(other) => Err(at.field(path, format!("{}, expected a string", describe(other)))),
    }
}

/// A count (`spec.replicas`, `spec.parallelism`, ...): the last key of `path` in `map`; absent or
/// null is `None`.
fn count(map: &Map<String, Value>, path: &str, at: &At) -> Result<Option<u64>, ManifestError> {
    let key = path.rsplit('.').next().unwrap_or(path);
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_u64() {
            Some(n) if n > MAX_PODS_PER_WORKLOAD => Err(at.field(
                path,
                format!("{n} is more than nodewright plan expands per workload ({MAX_PODS_PER_WORKLOAD})"),
            )),
            Some(n) => Ok(Some(n)),
            None => Err(at.field(
                path,
                format!("{}, expected a non-negative integer", describe(value)),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const STEERING: &str = include_str!("../../tests/data/steering.yaml");
    const GAME_2048: &str =
        include_str!("../../tests/data/fixtures/2048_full__aws-load-balancer-controller.yaml");

    fn steering(text: &str) -> Steering {
        Steering::new(&Config::parse(text, "steering.yaml").unwrap(), None)
    }

    /// steering.yaml's pools without its Policy: no rule, so pods come out as their controllers make them.
    fn no_rules() -> Steering {
        let pools = STEERING
            .split("---\napiVersion: nodewright.io/v1alpha1")
            .next()
            .unwrap();
        steering(pools)
    }

    fn workshop() -> Steering {
        Steering::new(&crate::config::embedded_example(), None)
    }

    fn expand_text(text: &str, steering: &Steering) -> Workloads {
        expand(parse_documents(text, "test.yaml").unwrap(), steering).unwrap()
    }

    fn names(pods: &[Pod]) -> Vec<&str> {
        pods.iter()
            .map(|p| p.metadata.name.as_deref().unwrap())
            .collect()
    }

    fn label<'p>(pod: &'p Pod, key: &str) -> Option<&'p str> {
        pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
    }

    fn in_alphabet(s: &str) -> bool {
        s.bytes().all(|b| ALPHABET.contains(&b))
    }

    const POD: &str = "spec: {containers: [{name: c, image: nginx}]}";

    #[test]
    fn yaml_json_documents_and_lists_are_flattened() {
        let yaml = format!(
            "# comment\n---\n---\napiVersion: v1\nkind: List\nitems:\n\
             - {{apiVersion: v1, kind: Pod, metadata: {{name: a}}, {POD}}}\n\
             - apiVersion: v1\n  kind: List\n  items:\n  - {{apiVersion: v1, kind: Pod, metadata: {{name: b}}, {POD}}}\n\
             ---\napiVersion: v1\nkind: PodList\nitems:\n- metadata: {{name: c}}\n  {POD}\n---\n"
        );
        let objects = parse_documents(&yaml, "a.yaml").unwrap();
        let origins: Vec<(usize, Option<&str>)> = objects
            .iter()
            .map(|m| (m.origin.document, m.origin.item.as_deref()))
            .collect();
        assert_eq!(
            origins,
            [
                (2, Some("items[0]")),
                (2, Some("items[1].items[0]")),
                (3, Some("items[0]"))
            ]
        );
        assert_eq!(
            objects[2].object["kind"], "Pod",
            "PodList items get their kind"
        );
        assert_eq!(objects[2].object["apiVersion"], "v1");
        let w = expand(objects, &no_rules()).unwrap();
        assert_eq!(names(&w.pods), ["a", "b", "c"]);

        let pod = |name: &str| {
            format!(
                r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}}, "spec": {{"containers": [{{"name": "c", "image": "x"}}]}}}}"#
            )
        };
        let concatenated = format!("{}\n{}", pod("j1"), pod("j2"));
        let array = format!("[{}, {}]", pod("j3"), pod("j4"));
        let list = format!(
            r#"{{"apiVersion": "v1", "kind": "List", "items": [{}]}}"#,
            pod("j5")
        );
        let flow = "{apiVersion: v1, kind: Pod, metadata: {name: j6}, spec: {containers: []}}";
        let mut all = Vec::new();
        for (i, text) in [concatenated, array, list, flow.to_owned()]
            .iter()
            .enumerate()
        {
            all.extend(parse_documents(text, &format!("{i}.json")).unwrap());
        }
        let w = expand(all, &no_rules()).unwrap();
        assert_eq!(names(&w.pods), ["j1", "j2", "j3", "j4", "j5", "j6"]);

        for empty in ["", "---\n", "# nothing\n", "---\n---\n", "null", "[]"] {
            assert!(
                parse_documents(empty, "e.yaml").unwrap().is_empty(),
                "{empty:?}"
            );
        }
    }

    #[test]
    fn yaml_in_pieces_reads_as_one_stream() {
        let mut text = String::from("# leading comment\n\n");
        for i in 0..400 {
            match i % 4 {
                0 => text.push_str("---\n"),
                1 => text.push_str("--- # marker with a comment\n# only a comment\n"),
                2 => text.push_str("---\n...\n"),
                _ => {}
            }
            text.push_str(&format!(
                "--- &a{i}\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}\n  annotations:\n    text: |\n      ---not a marker\n      line {i}\n{POD}\n"
            ));
        }
        let source: Arc<str> = Arc::from("big.yaml");
        let whole = yaml_documents(&text, &source).unwrap();
        for parts in [2, 3, 7, 50] {
            assert!(split_at_markers(&text, parts).len() > 1);
            let pieces = yaml_documents_in_pieces(&text, &source, parts).unwrap();
            assert_eq!(pieces, whole, "{parts} pieces");
        }
        // No piece starts at the first marker: the leading comment is no document of its own.
        assert_eq!(
            split_at_markers("# c\n---\na: 1\n", 4),
            ["# c\n---\na: 1\n"]
        );

        let broken = format!("{text}---\nkind: [\n");
        let line = broken.lines().count() + 1;
        let error = yaml_documents_in_pieces(&broken, &source, 4)
            .unwrap_err()
            .to_string();
        assert!(error.contains(&format!("at line {line} ")), "{error}");
        assert!(
            error.starts_with(&format!("big.yaml: document {}: ", whole.len() + 1)),
            "{error}"
        );
    }

    #[test]
    fn many_pods_keep_their_order_and_the_first_error_is_reported() {
        let pod = |i: usize, image: &str| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}}}\nspec: {{containers: [{{name: c, image: {image}}}]}}\n"
            )
        };
        let text: String = (0..1500).map(|i| pod(i, "x")).collect();
        let w = expand_text(&text, &no_rules());
        let want: Vec<String> = (0..1500).map(|i| format!("p{i}")).collect();
        assert_eq!(names(&w.pods), want);

        let text: String = (0..1500)
            .map(|i| pod(i, if i == 100 || i == 1200 { "[x]" } else { "x" }))
            .collect();
        let e = error(&text);
        assert!(
            e.starts_with("bad.yaml: document 101 (Pod default/p100): spec.containers[0].image"),
            "{e}"
        );
    }

    #[test]
    fn each_kind_expands_as_its_controller_would() {
        let text = format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: shop}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}, annotations: {{note: kept}}}}
    {POD}
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {{name: rs}}
spec: {{replicas: 2, template: {{metadata: {{labels: {{app: rs}}}}, {POD}}}}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db, namespace: shop}}
spec: {{replicas: 2, template: {{metadata: {{labels: {{app: db}}}}, {POD}}}}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: cache}}
spec: {{ordinals: {{start: 5}}, template: {{{POD}}}}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent, namespace: kube-system}}
spec: {{template: {{metadata: {{labels: {{app: agent}}}}, {POD}}}}}
---
apiVersion: batch/v1
kind: Job
metadata: {{name: batch}}
spec: {{parallelism: 4, completions: 2, template: {{{POD}}}}}
---
apiVersion: batch/v1
kind: Job
metadata: {{name: once}}
spec: {{template: {{{POD}}}}}
---
apiVersion: batch/v1
kind: Job
metadata: {{name: idx}}
spec: {{completionMode: Indexed, parallelism: 3, completions: 5, template: {{{POD}}}}}
---
apiVersion: batch/v1
kind: Job
metadata: {{name: later}}
spec: {{suspend: true, template: {{{POD}}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: idle}}
spec: {{replicas: 0, template: {{{POD}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{generateName: gen-}}
{POD}
---
apiVersion: v1
kind: Pod
metadata: {{generateName: gen-}}
{POD}
---
{{apiVersion: v1, kind: Service, metadata: {{name: s}}}}
---
{{apiVersion: v1, kind: ConfigMap, metadata: {{name: c1}}}}
---
{{apiVersion: v1, kind: ConfigMap, metadata: {{name: c2}}}}
---
{{apiVersion: batch/v1, kind: CronJob, metadata: {{name: cj}}}}
---
{{apiVersion: extensions/v1beta1, kind: Deployment, metadata: {{name: old}}}}
"#
        );
        let w = expand_text(&text, &no_rules());
        assert_eq!(
            w.skipped,
            [
                "2 ConfigMap objects ignored",
                "1 CronJob object ignored",
                "1 Deployment (extensions/v1beta1) object ignored",
                "1 Service object ignored"
            ]
        );
        assert!(w.denied.is_empty());
        let by_owner = |prefix: &str| -> Vec<&Pod> {
            w.pods
                .iter()
                .filter(|p| p.metadata.name.as_deref().unwrap().starts_with(prefix))
                .collect()
        };

        // Deployment: <deploy>-<pod-template-hash>-<5>, owned by the ReplicaSet <deploy>-<hash>.
        let web = by_owner("web-");
        assert_eq!(web.len(), 3);
        let hash = label(web[0], POD_TEMPLATE_HASH).unwrap();
        assert!(
            (8..=10).contains(&hash.len()) && in_alphabet(hash),
            "{hash}"
        );
        for pod in &web {
            let name = pod.metadata.name.as_deref().unwrap();
            let rest = name.strip_prefix(&format!("web-{hash}-")).unwrap();
            assert!(rest.len() == 5 && in_alphabet(rest), "{name}");
            assert_eq!(pod.metadata.namespace.as_deref(), Some("shop"));
            assert_eq!(label(pod, "app"), Some("web"));
            assert_eq!(label(pod, POD_TEMPLATE_HASH), Some(hash));
            assert_eq!(pod.metadata.annotations.as_ref().unwrap()["note"], "kept");
            let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (
                    owner.api_version.as_str(),
                    owner.kind.as_str(),
                    owner.name.as_str()
                ),
                ("apps/v1", "ReplicaSet", format!("web-{hash}").as_str())
            );
            assert_eq!(owner.controller, Some(true));
            assert_eq!(owner.uid.len(), 36);
        }

        let rs = by_owner("rs-");
        assert_eq!(rs.len(), 2);
        assert!(
            rs.iter()
                .all(|p| p.metadata.namespace.as_deref() == Some("default"))
        );
        assert!(rs.iter().all(|p| label(p, POD_TEMPLATE_HASH).is_none()));

        // StatefulSet: ordinals, with the per-pod labels.
        let db = by_owner("db-");
        assert_eq!(
            names(&db.iter().map(|p| (*p).clone()).collect::<Vec<_>>()),
            ["db-0", "db-1"]
        );
        assert_eq!(label(db[1], STS_POD_NAME), Some("db-1"));
        assert_eq!(label(db[1], STS_POD_INDEX), Some("1"));
        assert!(label(db[0], REVISION_HASH).unwrap().starts_with("db-"));
        assert_eq!(by_owner("cache-").len(), 1);
        assert_eq!(
            by_owner("cache-")[0].metadata.name.as_deref(),
            Some("cache-5")
        );

        // DaemonSet: one pod, apart, owned by its DaemonSet, with the controller's tolerations.
        assert_eq!(w.daemonsets.len(), 1);
        let agent = &w.daemonsets[0];
        assert!(
            agent
                .metadata
                .name
                .as_deref()
                .unwrap()
                .starts_with("agent-")
        );
        assert_eq!(
            agent.metadata.owner_references.as_ref().unwrap()[0].kind,
            "DaemonSet"
        );
        let tolerations = agent.spec.as_ref().unwrap().tolerations.as_ref().unwrap();
        assert_eq!(tolerations.len(), DAEMON_TOLERATIONS.len());

        // Jobs: min(parallelism, completions) pods, job-name labels; Indexed ones carry their index.
        let batch = by_owner("batch-");
        assert_eq!(batch.len(), 2);
        assert_eq!(label(batch[0], JOB_NAME), Some("batch"));
        assert_eq!(label(batch[0], JOB_NAME_LEGACY), Some("batch"));
        assert_eq!(label(batch[0], JOB_UID), label(batch[1], JOB_UID_LEGACY));
        assert_eq!(by_owner("once-").len(), 1);
        let idx = by_owner("idx-");
        assert_eq!(idx.len(), 3);
        for (i, pod) in idx.iter().enumerate() {
            assert!(
                pod.metadata
                    .name
                    .as_deref()
                    .unwrap()
                    .starts_with(&format!("idx-{i}-"))
            );
            assert_eq!(label(pod, JOB_INDEX), Some(i.to_string().as_str()));
        }
        assert!(by_owner("later-").is_empty(), "suspended");
        assert!(by_owner("idle-").is_empty(), "zero replicas");

        let generated = by_owner("gen-");
        assert_eq!(generated.len(), 2);
        assert_ne!(generated[0].metadata.name, generated[1].metadata.name);

        assert_eq!(w.pods.len(), 3 + 2 + 2 + 1 + 2 + 1 + 3 + 2);
    }

    #[test]
    fn deployment_names_are_stable_unique_and_follow_the_template() {
        let deployment = |image: &str, replicas: usize| {
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec: {{containers: [{{name: c, image: {image}}}]}}\n"
            )
        };
        let first = expand_text(&deployment("nginx", 1000), &no_rules());
        let again = expand_text(&deployment("nginx", 1000), &no_rules());
        assert_eq!(names(&first.pods), names(&again.pods));
        let unique: HashSet<&str> = names(&first.pods).into_iter().collect();
        assert_eq!(unique.len(), 1000);
        let other = expand_text(&deployment("httpd", 1), &no_rules());
        assert_ne!(
            label(&first.pods[0], POD_TEMPLATE_HASH),
            label(&other.pods[0], POD_TEMPLATE_HASH),
            "the hash follows the template"
        );
    }

    /// Decide and patch one pod on its own, as the webhook would see it.
    fn mutate_alone(pod: &Pod, steering: &Steering) -> Result<Pod, String> {
        let mut value = serde_json::to_value(pod).unwrap();
        let view: PodView = serde_json::from_value(value.clone()).unwrap();
        let namespace = pod.metadata.namespace.clone().unwrap();
        match steering.decide(&PodAdmission {
            operation: Operation::Create,
            group: "",
            kind: "Pod",
            namespace: &namespace,
            pod: Some(&view),
            namespace_labels: None,
        }) {
            Decision::Patch { patch, .. } => json_patch::patch(&mut value, &patch).unwrap(),
            Decision::Deny { message, .. } => return Err(message),
            _ => {}
        }
        Ok(serde_json::from_value(value).unwrap())
    }

    #[test]
    fn mutating_once_per_workload_equals_mutating_each_pod() {
        let workloads = [
            ("apps/v1", "Deployment", "replicas: 3"),
            ("apps/v1", "ReplicaSet", "replicas: 2"),
            ("apps/v1", "StatefulSet", "replicas: 3"),
            ("batch/v1", "Job", "parallelism: 2"),
            (
                "batch/v1",
                "Job",
                "completionMode: Indexed\n  parallelism: 2",
            ),
        ];
        let text: String = workloads
            .iter()
            .enumerate()
            .map(|(i, (api, kind, count))| {
                format!(
                    "---\napiVersion: {api}\nkind: {kind}\nmetadata: {{name: w{i}, namespace: team-riker}}\nspec:\n  {count}\n  template:\n    metadata: {{labels: {{app: w{i}}}}}\n    spec:\n      tolerations: [{{key: other, operator: Exists}}]\n      containers: [{{name: c, image: nginx}}]\n"
                )
            })
            .collect();
        let s = steering(STEERING);
        let mutated = expand_text(&text, &s);
        let plain = expand_text(&text, &no_rules());
        assert_eq!(mutated.pods.len(), 12);
        assert_eq!(names(&mutated.pods), names(&plain.pods));
        for (once, alone) in mutated.pods.iter().zip(&plain.pods) {
            let alone = mutate_alone(alone, &s).unwrap();
            assert_eq!(once, &alone, "{:?}", once.metadata.name);
            let spec = once.spec.as_ref().unwrap();
            assert_eq!(
                spec.node_selector.as_ref().unwrap()["karpenter.sh/nodepool"],
                "default"
            );
            assert_eq!(spec.tolerations.as_ref().unwrap().len(), 2);
        }
        // A StatefulSet pod's spread selects its workload's labels, not the labels each pod has
        // its own value of (pod name, ordinal).
        let sts = mutated
            .pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("w2-1"))
            .unwrap();
        let spread = &sts
            .spec
            .as_ref()
            .unwrap()
            .topology_spread_constraints
            .as_ref()
            .unwrap()[0];
        let selected = spread
            .label_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert_eq!(selected.get(STS_POD_NAME), None, "{selected:?}");
        assert!(!selected.is_empty());
    }

    #[test]
    fn denied_pods_are_listed_and_not_planned() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: gpu, namespace: team-riker}\nspec:\n  replicas: 2\n  template:\n    metadata: {labels: {app: gpu}}\n    spec:\n      nodeSelector: {karpenter.sh/nodepool: gpu}\n      containers: [{name: c, image: cuda}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: fine, namespace: team-riker}\nspec: {containers: [{name: c, image: nginx}]}\n";
        let w = expand_text(text, &steering(STEERING));
        assert_eq!(names(&w.pods), ["fine"]);
        assert_eq!(w.denied.len(), 2);
        for (name, message) in &w.denied {
            assert!(name.starts_with("team-riker/gpu-"), "{name}");
            assert!(message.contains("karpenter.sh/nodepool=gpu"), "{message}");
        }
        assert_ne!(w.denied[0].0, w.denied[1].0);
    }

    #[test]
    fn namespace_labels_reach_steering() {
        // steering.yaml's rule `labelled` selects namespaces labelled nodewright.io/pool=default.
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: ns1, labels: {app: p}}\nspec: {containers: [{name: c, image: nginx}]}\n";
        let namespace = |labels: &str| {
            format!(
                "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns1, labels: {{{labels}}}}}\n"
            )
        };
        let node_selector = |w: &Workloads| w.pods[0].spec.as_ref().unwrap().node_selector.clone();
        let s = steering(STEERING);

        let unknown = expand_text(pod, &s);
        assert_eq!(
            node_selector(&unknown),
            None,
            "labels unknown: no rule applies"
        );
        let labelled = expand_text(
            &format!("{pod}{}", namespace("nodewright.io/pool: default")),
            &s,
        );
        assert_eq!(
            node_selector(&labelled).unwrap()["karpenter.sh/nodepool"],
            "default",
            "a Namespace after its pods counts too"
        );
        let other = expand_text(&format!("{pod}{}", namespace("team: x")), &s);
        assert_eq!(node_selector(&other), None);
        assert!(other.skipped.is_empty(), "Namespaces are read, not ignored");

        // The apiserver's own label is there as well.
        let by_name = STEERING.replace(
            "matchLabels:\n          nodewright.io/pool: default",
            "matchLabels:\n          kubernetes.io/metadata.name: ns1",
        );
        let w = expand_text(&format!("{pod}{}", namespace("")), &steering(&by_name));
        assert!(node_selector(&w).is_some());
    }

    #[test]
    fn the_2048_game_under_the_workshop_config() {
        let w = expand_text(GAME_2048, &workshop());
        assert_eq!(w.pods.len(), 5);
        assert_eq!(
            w.skipped,
            ["1 Ingress object ignored", "1 Service object ignored"]
        );
        assert!(
            w.pods
                .iter()
                .all(|p| p.spec.as_ref().unwrap().node_selector.is_none()),
            "the workshop steers team-riker only"
        );

        let w = expand_text(&GAME_2048.replace("game-2048", "team-riker"), &workshop());
        assert_eq!(w.pods.len(), 5);
        let hash = label(&w.pods[0], POD_TEMPLATE_HASH).unwrap().to_owned();
        for pod in &w.pods {
            assert_eq!(pod.metadata.namespace.as_deref(), Some("team-riker"));
            assert!(
                pod.metadata
                    .name
                    .as_deref()
                    .unwrap()
                    .starts_with(&format!("deployment-2048-{hash}-"))
            );
            let spec = serde_json::to_value(pod.spec.as_ref().unwrap()).unwrap();
            assert_eq!(
                spec["nodeSelector"],
                json!({"karpenter.sh/nodepool": "default"})
            );
            assert_eq!(
                spec["tolerations"],
                json!([{"key": "nodewright.io/pool", "operator": "Equal", "value": "default", "effect": "NoSchedule"}])
            );
            assert_eq!(
                spec["topologySpreadConstraints"],
                json!([{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "app-2048"}},
                        "matchLabelKeys": ["pod-template-hash"]}])
            );
        }
    }

    fn error(text: &str) -> String {
        match parse_documents(text, "bad.yaml").and_then(|m| expand(m, &no_rules())) {
            Err(e) => e.to_string(),
            Ok(w) => panic!("no error for {text:?}: {w:?}"),
        }
    }

    #[test]
    fn bad_documents_are_reported_with_file_document_and_field() {
        let good = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: ok}}\n{POD}\n");
        let deployment = |spec: &str| {
            format!(
                "{good}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: shop}}\nspec:\n{spec}\n"
            )
        };
        let cases: Vec<(String, &[&str])> = vec![
            (
                format!("{good}---\nkind: Pod\nmetadata: {{name: [\n"),
                &["bad.yaml: document 2: invalid YAML", "at line 8 column 1"],
            ),
            ("{\"kind\": \"Pod\",".to_owned(), &["bad.yaml: document 1: invalid JSON", "line 1"]),
            (format!("{good}---\njust text\n"), &["document 2: not a mapping but a string"]),
            ("- 3\n".to_owned(), &["document 1, [0]: not a mapping but a number (3)"]),
            ("apiVersion: v1\nmetadata: {}\n".to_owned(), &["document 1: missing kind"]),
            ("kind: Pod\n".to_owned(), &["document 1: Pod: missing apiVersion"]),
            ("kind: 7\napiVersion: v1\n".to_owned(), &["kind is a number (7), expected a string"]),
            (
                "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: a}\n  spec: {containers: [{name: c, image: x, resources: {requests: {cpu: [1]}}}]}\n".to_owned(),
                &["bad.yaml: document 1, items[0] (Pod default/a): spec.containers[0].resources.requests.cpu: invalid type: sequence"],
            ),
            (
                format!("{good}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p, labels: {{version: 1.0}}}}\n{POD}\n"),
                &["document 2 (Pod default/p): metadata.labels.version: invalid type: floating point"],
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {namespace: x}\nspec: {}\n".to_owned(),
                &["(Pod): metadata.name: missing"],
            ),
            (
                deployment("  template:\n    spec: {containers: [{name: c, image: x, ports: [{containerPort: eighty}]}]}"),
                &["document 2 (Deployment shop/web): spec.template.spec.containers[0].ports[0].containerPort: invalid type: string \"eighty\""],
            ),
            (
                deployment("  replicas: -1\n  template: {spec: {containers: []}}"),
                &["(Deployment shop/web): spec.replicas: a number (-1), expected a non-negative integer"],
            ),
            (
                deployment("  replicas: 100000000\n  template: {spec: {containers: []}}"),
                &["spec.replicas: 100000000 is more than"],
            ),
            (deployment("  replicas: 1"), &["(Deployment shop/web): spec.template: missing"]),
            (
                deployment("  template: {metadata: {labels: [a]}, spec: {containers: []}}"),
                &["spec.template.metadata.labels: a sequence, expected a mapping"],
            ),
            (
                "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec: {parallelism: two, template: {spec: {containers: []}}}\n".to_owned(),
                &["(Job default/j): spec.parallelism: a string (\"two\")"],
            ),
            (
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: n, labels: {a: [1]}}\n".to_owned(),
                &["(Namespace n): metadata.labels.a: invalid type"],
            ),
        ];
        for (text, parts) in cases {
            let message = error(&text);
            for part in parts {
                assert!(message.contains(part), "{message:?} lacks {part:?}");
            }
        }

        // Objects given directly are numbered by position.
        let e = expand(
            vec![json!({"apiVersion": "v1", "kind": "Service"}), json!(3)],
            &no_rules(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("input: document 2: not a mapping"),
            "{e}"
        );
    }

    #[test]
    fn mangled_manifests_never_panic() {
        let text = format!(
            "{GAME_2048}---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: db}}\nspec:\n  replicas: 2\n  template:\n    metadata: {{labels: {{app: db}}}}\n    spec: {{containers: [{{name: c, image: x}}]}}\n"
        );
        let s = steering(STEERING);
        let mut outcomes = [0usize; 2];
        for (i, _) in text.char_indices().step_by(3) {
            for replacement in ["", ":", "- ", "{", "\n", "\"", "7", "[]", "null"] {
                let mangled = format!("{}{replacement}{}", &text[..i], &text[i + 1..]);
                let result = parse_documents(&mangled, "m.yaml").and_then(|m| expand(m, &s));
                outcomes[usize::from(result.is_ok())] += 1;
            }
        }
        assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
    }

    /// `cargo test --release --lib plan::manifests::tests::twenty_thousand -- --ignored --nocapture`
    #[test]
    #[ignore = "timing; run in release"]
    fn twenty_thousand_pod_documents() {
        const GROUPS: [&str; 5] = [
            "",
            "  topologySpreadConstraints:\n  - maxSkew: 1\n    topologyKey: topology.kubernetes.io/zone\n    whenUnsatisfiable: DoNotSchedule\n    labelSelector:\n      matchLabels: {group: g1}\n",
            "  topologySpreadConstraints:\n  - maxSkew: 1\n    topologyKey: kubernetes.io/hostname\n    whenUnsatisfiable: DoNotSchedule\n    labelSelector:\n      matchLabels: {group: g2}\n",
            "  affinity:\n    podAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n      - topologyKey: topology.kubernetes.io/zone\n        labelSelector:\n          matchLabels: {group: g3}\n",
            "  affinity:\n    podAntiAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n      - topologyKey: kubernetes.io/hostname\n        labelSelector:\n          matchLabels: {group: g4}\n",
        ];
        let mut text = String::new();
        for i in 0..20_000 {
            let g = i % 5;
            text.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: benchmix-g{g}-{i}\n  namespace: team-riker\n  labels:\n    app: benchmix\n    group: g{g}\nspec:\n{}  containers:\n  - name: pause\n    image: registry.k8s.io/pause:3.9\n    resources:\n      requests:\n        cpu: 250m\n        memory: 512Mi\n",
                GROUPS[g]
            ));
        }
        let s = steering(STEERING);
        let start = std::time::Instant::now();
        let objects = parse_documents(&text, "mix.yaml").unwrap();
        let parsed = start.elapsed();
        let w = expand(objects, &s).unwrap();
        let total = start.elapsed();
        assert_eq!(w.pods.len(), 20_000);
        let json: String = w
            .pods
            .iter()
            .map(|p| serde_json::to_string(p).unwrap() + "\n")
            .collect();
        let start = std::time::Instant::now();
        let objects = parse_documents(&json, "mix.json").unwrap();
        let json_parsed = start.elapsed();
        expand(objects, &no_rules()).unwrap();
        let json_total = start.elapsed();
        println!(
            "20,000 pods, {} KB YAML: parse {parsed:?}, parse+expand+mutate {total:?}; {} KB JSON: parse {json_parsed:?}, total {json_total:?}",
            text.len() / 1024,
            json.len() / 1024
        );
    }
}
