//! What every document carries: `apiVersion`, `kind`, `metadata`, `spec` and an ignored `status`.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

/// The part of Kubernetes `ObjectMeta` nodewright reads. Other metadata fields (`uid`,
/// `resourceVersion`, `managedFields`, ...) are ignored, so manifests exported from a cluster load.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// One document as written; `apiVersion` and `kind` were already dispatched on.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest<S> {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    pub metadata: ObjectMeta,
    pub spec: S,
    #[serde(default, rename = "status")]
    _status: Option<IgnoredAny>,
}

/// A Karpenter document: unlike [`Manifest`], unknown top-level fields are left to the caller, who
/// reports them as pruned (see `validate::pruned`).
#[derive(Deserialize)]
pub(crate) struct KarpenterManifest<S> {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    pub metadata: ObjectMeta,
    pub spec: S,
    #[serde(default, rename = "status")]
    _status: Option<IgnoredAny>,
}
