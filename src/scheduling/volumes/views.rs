//! Lean views of PersistentVolumeClaims, PersistentVolumes and StorageClasses: the fields volume
//! topology reads, decoded alike from manifests (`nodewright plan`) and from the cluster's
//! watches, and turned into [`Claim`], [`Volume`] and [`StorageClass`].

use std::fmt;

use k8s_openapi::api::core::v1::{TopologySelectorTerm, VolumeNodeAffinity};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::{BIND_COMPLETED, Claim, DEFAULT_CLASS, StorageClass, Volume};
use crate::model::{Operator, Requirement};
use crate::policy::pod::lean_meta;

/// The default-class annotation before it left beta; the PersistentVolume controller still
/// honours it.
const DEFAULT_CLASS_BETA: &str = "storageclass.beta.kubernetes.io/is-default-class";

/// A field of an object that cannot be read, with its path in the object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A PersistentVolumeClaim's name, class, volume and phase.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ClaimView {
    #[serde(default, deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<ClaimSpecView>,
    #[serde(default)]
    pub status: Option<ClaimStatusView>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimSpecView {
    #[serde(default)]
    pub storage_class_name: Option<String>,
    #[serde(default)]
    pub volume_name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ClaimStatusView {
    #[serde(default)]
    pub phase: Option<String>,
}

/// A PersistentVolume's name, node affinity and whether it is local.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct VolumeView {
    #[serde(default, deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<VolumeSpecView>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpecView {
    #[serde(default)]
    pub node_affinity: Option<VolumeNodeAffinity>,
    #[serde(default)]
    pub local: Option<IgnoredAny>,
    #[serde(default)]
    pub host_path: Option<IgnoredAny>,
}

/// A StorageClass's binding mode and allowed topologies.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageClassView {
    #[serde(default, deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub volume_binding_mode: Option<String>,
    #[serde(default)]
    pub allowed_topologies: Option<Vec<TopologySelectorTerm>>,
}

fn name(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

impl ClaimView {
    pub fn to_claim(&self) -> Claim {
        let spec = self.spec.clone().unwrap_or_default();
        Claim {
            namespace: self
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
            name: name(&self.metadata),
            storage_class: spec.storage_class_name,
            volume_name: spec.volume_name.filter(|v| !v.is_empty()),
            bound: self
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(BIND_COMPLETED)),
            lost: self
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|p| p == "Lost"),
            deleting: self.metadata.deletion_timestamp.is_some(),
        }
    }
}

impl VolumeView {
    pub fn to_volume(&self) -> Result<Volume, FieldError> {
        let spec = self.spec.clone().unwrap_or_default();
        let mut node_affinity = Vec::new();
        let terms = spec
            .node_affinity
            .and_then(|a| a.required)
            .map(|r| r.node_selector_terms)
            .unwrap_or_default();
        for (i, term) in terms.iter().enumerate() {
            let mut reqs = Vec::new();
            // matchFields (a node's name) is not read, as Karpenter does not read it.
            for (j, e) in term.match_expressions.iter().flatten().enumerate() {
                let path = format!(
                    "spec.nodeAffinity.required.nodeSelectorTerms[{i}].matchExpressions[{j}].operator"
                );
                reqs.push(requirement(&e.key, &e.operator, e.values.clone(), &path)?);
            }
            node_affinity.push(reqs);
        }
        Ok(Volume {
            name: name(&self.metadata),
            node_affinity,
            local: spec.local.is_some() || spec.host_path.is_some(),
            deleting: self.metadata.deletion_timestamp.is_some(),
        })
    }
}

fn requirement(
    key: &str,
    operator: &str,
    values: Option<Vec<String>>,
    path: &str,
) -> Result<Requirement, FieldError> {
    let operator = match operator {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        "Gt" => Operator::Gt,
        "Lt" => Operator::Lt,
        other => {
            return Err(FieldError {
                path: path.to_owned(),
                message: format!(
                    "{other:?} is not a node selector operator (In, NotIn, Exists, DoesNotExist, Gt, Lt)"
                ),
            });
        }
    };
    Ok(Requirement {
        key: key.to_owned(),
        operator,
        values: values.unwrap_or_default(),
        min_values: None,
    })
}

impl StorageClassView {
    pub fn to_class(&self) -> Result<StorageClass, FieldError> {
        let wait_for_first_consumer = match self.volume_binding_mode.as_deref() {
            None | Some("Immediate") => false,
            Some("WaitForFirstConsumer") => true,
            Some(other) => {
                return Err(FieldError {
                    path: "volumeBindingMode".to_owned(),
                    message: format!("{other:?}: expected Immediate or WaitForFirstConsumer"),
                });
            }
        };
        let allowed_topologies = self
            .allowed_topologies
            .iter()
            .flatten()
            .map(|term| {
                term.match_label_expressions
                    .iter()
                    .flatten()
                    .map(|e| Requirement {
                        key: e.key.clone(),
                        operator: Operator::In,
                        values: e.values.clone(),
                        min_values: None,
                    })
                    .collect()
            })
            .collect();
        let annotations = self.metadata.annotations.as_ref();
        let is_default = [DEFAULT_CLASS, DEFAULT_CLASS_BETA]
            .iter()
            .any(|k| annotations.and_then(|a| a.get(*k)).map(String::as_str) == Some("true"));
        Ok(StorageClass {
            name: name(&self.metadata),
            wait_for_first_consumer,
            allowed_topologies,
            is_default,
        })
    }
}
