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

use crate::model::catalog::CapacityType;
use crate::policy::mutate::{Decision, Operation, PodAdmission, SplitAsk, Steering};
use crate::policy::pod::PodView;
use crate::policy::split::{CAPACITY_TYPE_KEY, Counts, Split, WorkloadSplit, prefer_spot_term};
use crate::scheduling::pools::{DAEMON_HOST_NETWORK_TOLERATION, DAEMON_TOLERATIONS};

mod admit;
mod read;
use admit::*;
use read::*;
pub use read::{Manifest, ManifestError, Origin, parse_documents, read_paths};

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
    /// The spot/on-demand split of each workload that asks for one, as the webhook chose it for
    /// the pods in `pods` (in the order of the pods, from no pods).
    pub splits: Vec<WorkloadSplit>,
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
    // Capacity types are chosen in document order, one pod after the other, as admission would
    // see the pods arrive: a workload's pods may come from several sets (Pods listed one by one).
    let mut splits: BTreeMap<String, (Split, Counts)> = BTreeMap::new();
    for admitted in admitted {
        let Admitted {
            mut pods,
            daemon,
            denied,
            split,
        } = admitted?;
        if let Some((workload, split)) = split {
            let (_, counts) = splits.entry(workload).or_insert((split, Counts::default()));
            for pod in &mut pods {
                let ct = split.choose(*counts);
                counts.add(ct);
                let spec = pod.spec.get_or_insert_default();
                // As the webhook steers: a spot choice that may fall back prefers spot.
                if ct == CapacityType::Spot && split.spot_fallback {
                    spec.affinity
                        .get_or_insert_default()
                        .node_affinity
                        .get_or_insert_default()
                        .preferred_during_scheduling_ignored_during_execution
                        .get_or_insert_default()
                        .push(prefer_spot_term());
                } else {
                    spec.node_selector
                        .get_or_insert_default()
                        .insert(CAPACITY_TYPE_KEY.to_owned(), ct.as_str().to_owned());
                }
            }
        }
        if daemon {
            out.daemonsets.extend(pods);
        } else {
            out.pods.extend(pods);
        }
        out.denied.extend(denied);
    }
    out.splits = splits
        .into_iter()
        .map(|(workload, (split, counts))| WorkloadSplit::new(workload, split, counts))
        .collect();
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
    /// The workload (`namespace/Kind/name`) and split its pods ask for, when they do.
    split: Option<(String, Split)>,
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
mod tests;
