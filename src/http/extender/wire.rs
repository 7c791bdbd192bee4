//! The kube-scheduler extender's wire types (`k8s.io/kube-scheduler/extender/v1`) and the lean
//! decoding of a call (WIRE.md §2). The decisions live in `crate::scheduling::extender`; the
//! answers are written by `super::encode`.
//!
//! Wire rules: PascalCase field names, Go `null` for every nil slice or map, a Pod and NodeList
//! items without apiVersion/kind. Keys of the request are matched case-insensitively as Go's
//! decoder does, so the old lowercase API (`pod`, `nodes`, `nodenames`) is read too. Node objects
//! are kept as raw JSON and returned byte for byte: decoding them into typed structs would drop
//! fields the scheduler later relies on.
//!
//! The request is decoded leanly for speed: the pod's name, namespace and resources only, node
//! names borrowed from the request body.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Container, Pod, PodAffinityTerm, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::model::resources::{self, Resources};
use crate::scheduling::extender::{Candidate, FilterDecision, PodRequest, filter, prioritize};
use crate::scheduling::pod::{effective_requests, pod_term};
use crate::scheduling::view::ClusterView;

/// A JSON string, borrowed from the request body unless it contains escapes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Str<'a>(pub Cow<'a, str>);

impl<'a> Str<'a> {
    pub fn borrowed(s: &'a str) -> Self {
        Self(Cow::Borrowed(s))
    }
}

impl Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Serialize for Str<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(PhantomData))
    }
}

/// `v1.NodeList` with its list metadata and items kept as raw JSON.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct NodeList<'a> {
    #[serde(borrow, default)]
    pub metadata: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub items: Option<Vec<&'a RawValue>>,
}

/// `ExtenderArgs`: what kube-scheduler sends to `filter` and `prioritize`. `Pod` is kept raw (it is
/// read leanly, and decoded in full only when it is handed to the provisioner). Keys are matched
/// case-insensitively; unknown keys are ignored.
#[derive(Debug, Default)]
pub struct ExtenderArgs<'a> {
    pub pod: Option<&'a RawValue>,
    pub nodes: Option<NodeList<'a>>,
    pub node_names: Option<Vec<Str<'a>>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for ExtenderArgs<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = ExtenderArgs<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an ExtenderArgs object {\"Pod\", \"Nodes\", \"NodeNames\"}")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut args = ExtenderArgs::default();
                while let Some(key) = map.next_key::<Str<'de>>()? {
                    if key.eq_ignore_ascii_case("pod") {
                        args.pod = map.next_value()?;
                    } else if key.eq_ignore_ascii_case("nodes") {
                        args.nodes = map.next_value()?;
                    } else if key.eq_ignore_ascii_case("nodenames") {
                        args.node_names = map.next_value()?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(args)
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// A `map[string]string` of node name → message, written in the order held (sorted by name when
/// built by [`encode_filter`], as Go writes maps).
#[derive(Debug, Default, PartialEq)]
pub struct NodeMessages<'a>(pub Vec<(Str<'a>, Str<'a>)>);

impl Serialize for NodeMessages<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for NodeMessages<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = NodeMessages<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of node name to message")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(NodeMessages(out))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// `ExtenderFilterResult`. Every field is always written (Go has no `omitempty` here), nil as
/// `null`; `Error` is `""` when there is none.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ExtenderFilterResult<'a> {
    #[serde(rename = "Nodes", alias = "nodes", borrow, default)]
    pub nodes: Option<NodeList<'a>>,
    #[serde(
        rename = "NodeNames",
        alias = "nodenames",
        alias = "nodeNames",
        borrow,
        default
    )]
    pub node_names: Option<Vec<Str<'a>>>,
    #[serde(
        rename = "FailedNodes",
        alias = "failedNodes",
        alias = "failednodes",
        borrow,
        default
    )]
    pub failed_nodes: Option<NodeMessages<'a>>,
    #[serde(
        rename = "FailedAndUnresolvableNodes",
        alias = "failedAndUnresolvableNodes",
        alias = "failedandunresolvablenodes",
        borrow,
        default
    )]
    pub failed_and_unresolvable_nodes: Option<NodeMessages<'a>>,
    #[serde(rename = "Error", alias = "error", default)]
    pub error: String,
}

/// One entry of `HostPriorityList` (a bare JSON array of these).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostPriority<'a> {
    #[serde(rename = "Host", alias = "host", borrow)]
    pub host: Str<'a>,
    #[serde(rename = "Score", alias = "score")]
    pub score: i64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LeanPod<'a> {
    #[serde(borrow)]
    metadata: Option<LeanPodMeta<'a>>,
    spec: Option<LeanPodSpec>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct LeanPodMeta<'a> {
    #[serde(borrow)]
    name: Option<Str<'a>>,
    #[serde(borrow)]
    generate_name: Option<Str<'a>>,
    #[serde(borrow)]
    namespace: Option<Str<'a>>,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct LeanPodSpec {
    containers: Option<Vec<LeanContainer>>,
    init_containers: Option<Vec<LeanContainer>>,
    overhead: Option<BTreeMap<String, Quantity>>,
    affinity: Option<LeanAffinity>,
}

/// Only the required pod anti-affinity: it decides whether the pod may share a node with pods
/// promised the node (node affinity and pod affinity are the scheduler's own business).
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct LeanAffinity {
    pod_anti_affinity: Option<LeanAntiAffinity>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct LeanAntiAffinity {
    required_during_scheduling_ignored_during_execution: Option<Vec<PodAffinityTerm>>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct LeanContainer {
    resources: Option<LeanResources>,
    restart_policy: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LeanResources {
    requests: Option<BTreeMap<String, Quantity>>,
    limits: Option<BTreeMap<String, Quantity>>,
}

/// Only the slots nodewright tracks: other extended resources and hugepages are the in-tree
/// NodeResourcesFit plugin's business, not a reason to fail the call.
fn tracked(list: Option<BTreeMap<String, Quantity>>) -> Option<BTreeMap<String, Quantity>> {
    list.map(|mut m| {
        m.retain(|name, _| resources::NAMES.contains(&name.as_str()));
        m
    })
}

impl LeanContainer {
    fn into_container(self) -> Container {
        let resources = self.resources.map(|r| ResourceRequirements {
            requests: tracked(r.requests),
            limits: tracked(r.limits),
            claims: None,
        });
        Container {
            resources,
            restart_policy: self.restart_policy,
            ..Container::default()
        }
    }
}

/// Reads a pod's name, namespace, labels, requests and required pod anti-affinity from its JSON,
/// skipping everything else.
pub fn pod_request(json: &str) -> Result<PodRequest, String> {
    let pod: LeanPod<'_> =
        serde_json::from_str(json).map_err(|e| format!("Pod cannot be read: {e}"))?;
    let meta = pod.metadata.unwrap_or_default();
    let namespace = meta.namespace.as_deref().unwrap_or("default");
    let name = meta
        .name
        .as_deref()
        .or(meta.generate_name.as_deref())
        .unwrap_or_default();
    let key = format!("{namespace}/{name}");
    let spec = pod.spec.unwrap_or_default();
    let containers: Vec<Container> = spec
        .containers
        .unwrap_or_default()
        .into_iter()
        .map(LeanContainer::into_container)
        .collect();
    let init: Vec<Container> = spec
        .init_containers
        .unwrap_or_default()
        .into_iter()
        .map(LeanContainer::into_container)
        .collect();
    let overhead = tracked(spec.overhead);
    let requests = effective_requests(&containers, &init, overhead.as_ref())
        .map_err(|e| format!("requests of pod {key}: {e}"))?;
    let anti_affinity = spec
        .affinity
        .and_then(|a| a.pod_anti_affinity)
        .and_then(|a| a.required_during_scheduling_ignored_during_execution)
        .unwrap_or_default()
        .iter()
        // A term without a labelSelector selects no pod.
        .filter(|t| t.label_selector.is_some())
        .filter_map(|t| pod_term(t, namespace))
        .collect();
    Ok(PodRequest {
        key,
        requests,
        labels: meta.labels.unwrap_or_default(),
        anti_affinity,
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LeanNode<'a> {
    #[serde(borrow)]
    metadata: Option<LeanNodeMeta<'a>>,
    #[serde(borrow)]
    status: Option<LeanNodeStatus<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LeanNodeMeta<'a> {
    #[serde(borrow)]
    name: Option<Str<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LeanNodeStatus<'a> {
    #[serde(borrow)]
    allocatable: Option<&'a RawValue>,
}

/// One item of the request's NodeList: the raw object (returned as is), its name, and its
/// `status.allocatable`, read only when the node is not in the view.
#[derive(Debug)]
pub struct NodeItem<'a> {
    pub raw: &'a RawValue,
    pub name: Str<'a>,
    pub allocatable: Option<&'a RawValue>,
}

impl Candidate for Str<'_> {
    fn name(&self) -> &str {
        self
    }
    fn allocatable(&self) -> Option<Resources> {
        None
    }
}

impl Candidate for NodeItem<'_> {
    fn name(&self) -> &str {
        &self.name
    }
    fn allocatable(&self) -> Option<Resources> {
        let list: BTreeMap<Str<'_>, Str<'_>> =
            serde_json::from_str(self.allocatable?.get()).ok()?;
        let mut r = Resources::ZERO;
        for (name, quantity) in &list {
            // Resources nodewright does not track (hugepages, other devices) are not compared.
            let _ = r.add_named(name, quantity);
        }
        Some(r)
    }
}

/// How the nodes came: names only (`nodeCacheCapable: true`) or full objects.
#[derive(Debug)]
pub enum NodesIn<'a> {
    Names(Vec<Str<'a>>),
    Objects {
        metadata: Option<&'a RawValue>,
        items: Vec<NodeItem<'a>>,
    },
}

/// A decoded extender call, borrowing from the request body.
#[derive(Debug)]
pub struct ExtenderCall<'a> {
    pub pod: PodRequest,
    /// The pod's JSON as sent, for [`ExtenderCall::full_pod`].
    pub pod_json: &'a RawValue,
    pub nodes: NodesIn<'a>,
}

impl<'a> ExtenderCall<'a> {
    /// Decodes `ExtenderArgs`. `NodeNames` wins when both lists are sent (kube-scheduler sends one).
    /// The error is a message for the caller.
    pub fn decode(body: &'a [u8]) -> Result<Self, String> {
        let args: ExtenderArgs<'a> = serde_json::from_slice(body)
            .map_err(|e| format!("request body is not ExtenderArgs JSON: {e}"))?;
        let pod_json = args
            .pod
            .ok_or_else(|| "ExtenderArgs has no Pod".to_owned())?;
        let pod = pod_request(pod_json.get())?;
        let nodes = match (args.node_names, args.nodes) {
            (Some(names), _) => NodesIn::Names(names),
            (None, Some(list)) => {
                let raws = list.items.unwrap_or_default();
                let mut items = Vec::with_capacity(raws.len());
                for (i, raw) in raws.into_iter().enumerate() {
                    let node: LeanNode<'a> = serde_json::from_str(raw.get())
                        .map_err(|e| format!("Nodes.items[{i}] cannot be read: {e}"))?;
                    items.push(NodeItem {
                        raw,
                        name: node
                            .metadata
                            .and_then(|m| m.name)
                            .unwrap_or(Str::borrowed("")),
                        allocatable: node.status.and_then(|s| s.allocatable),
                    });
                }
                NodesIn::Objects {
                    metadata: list.metadata,
                    items,
                }
            }
            (None, None) => {
                return Err("ExtenderArgs has neither NodeNames nor Nodes".to_owned());
            }
        };
        Ok(Self {
            pod,
            pod_json,
            nodes,
        })
    }

    /// The whole Pod, for the provisioner. Slower than the lean read; only for the rare hand-off.
    pub fn full_pod(&self) -> Result<Pod, serde_json::Error> {
        serde_json::from_str(self.pod_json.get())
    }

    /// Number of nodes asked about.
    pub fn len(&self) -> usize {
        match &self.nodes {
            NodesIn::Names(n) => n.len(),
            NodesIn::Objects { items, .. } => items.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs [`filter`] over the nodes, however they came.
    pub fn filter(&self, view: &ClusterView, now: Instant) -> FilterDecision {
        match &self.nodes {
            NodesIn::Names(n) => filter(view, &self.pod, n, now),
            NodesIn::Objects { items, .. } => filter(view, &self.pod, items, now),
        }
    }

    /// Runs [`prioritize`] over the nodes, however they came.
    pub fn prioritize(&self, view: &ClusterView, now: Instant) -> Vec<i64> {
        match &self.nodes {
            NodesIn::Names(n) => prioritize(view, &self.pod, n, now),
            NodesIn::Objects { items, .. } => prioritize(view, &self.pod, items, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resources::{CPU, MEMORY, PODS};
    use crate::scheduling::pod::Topology;

    fn res(cpu_millis: i64, mem_gi: i64, pods: i64) -> Resources {
        let mut r = Resources::ZERO;
        r.0[CPU] = cpu_millis;
        r.0[MEMORY] = mem_gi << 30;
        r.0[PODS] = pods;
        r
    }

    #[test]
    fn pod_requests_are_read_leanly_the_kubernetes_way() {
        let json = r#"{"metadata":{"name":"web-1","namespace":"shop","labels":{"a":"b"}},
            "spec":{"containers":[{"name":"a","image":"x","env":[{"name":"E","value":"v"}],
              "resources":{"requests":{"cpu":"250m","memory":"256Mi","example.com/fpga":"1"}}},
              {"name":"b","resources":{"limits":{"cpu":"1"}}}],
            "initContainers":[{"name":"i","resources":{"requests":{"cpu":"2"}}}],
            "overhead":{"cpu":"10m"}},"status":{}}"#;
        let p = pod_request(json).unwrap();
        assert_eq!(p.key, "shop/web-1");
        assert_eq!(p.requests.0[CPU], 2000 + 10);
        assert_eq!(p.requests.0[MEMORY], 256 << 20);
        assert_eq!(p.requests.0[PODS], 1);
        let bare = pod_request(r#"{"metadata":{"name":"p"},"spec":{"containers":null}}"#).unwrap();
        assert_eq!(bare.key, "default/p");
        assert_eq!(bare.requests, res(0, 0, 1));
    }

    #[test]
    fn pod_labels_and_required_anti_affinity_are_read() {
        let json = r#"{"metadata":{"name":"a-1","namespace":"shop","labels":{"group":"a"}},
            "spec":{"containers":[],"affinity":{
              "nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[]}},
              "podAntiAffinity":{
                "requiredDuringSchedulingIgnoredDuringExecution":[
                  {"topologyKey":"kubernetes.io/hostname","labelSelector":{"matchLabels":{"group":"a"}}},
                  {"topologyKey":"topology.kubernetes.io/zone","labelSelector":{"matchLabels":{"group":"z"}},
                   "namespaces":["other"]},
                  {"topologyKey":"example.com/rack","labelSelector":{"matchLabels":{"group":"r"}}},
                  {"topologyKey":"kubernetes.io/hostname"}],
                "preferredDuringSchedulingIgnoredDuringExecution":[{"weight":1,"podAffinityTerm":
                  {"topologyKey":"kubernetes.io/hostname","labelSelector":{"matchLabels":{"group":"p"}}}}]}}}}"#;
        let p = pod_request(json).unwrap();
        assert_eq!(p.labels.get("group").map(String::as_str), Some("a"));
        assert_eq!(p.namespace(), "shop");
        // Known topologies only, terms with a selector only, required terms only.
        let terms: Vec<(Topology, String)> = p
            .anti_affinity
            .iter()
            .map(|t| (t.topology, t.selector.describe()))
            .collect();
        assert_eq!(
            terms,
            [
                (Topology::Hostname, "group=a".to_owned()),
                (Topology::Zone, "group=z".to_owned())
            ]
        );
        assert!(p.anti_affinity[0].selector.matches("shop", &p.labels));
        assert!(!p.anti_affinity[0].selector.matches("elsewhere", &p.labels));
        assert!(
            p.anti_affinity[1]
                .selector
                .namespaces
                .as_ref()
                .unwrap()
                .contains("other")
        );
    }

    #[test]
    fn args_keys_are_matched_case_insensitively_and_unknown_ones_ignored() {
        let body =
            br#"{"pod":{"metadata":{"name":"p","namespace":"n"}},"NODENAMES":["a","b"],"Extra":1}"#;
        let call = ExtenderCall::decode(body).unwrap();
        assert_eq!(call.pod.key, "n/p");
        assert!(matches!(&call.nodes, NodesIn::Names(n) if n.len() == 2 && &*n[1] == "b"));
        assert!(matches!(&call.nodes, NodesIn::Names(n) if matches!(n[0].0, Cow::Borrowed(_))));
    }
}
