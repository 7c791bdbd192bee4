//! The parts of a Pod that steering reads. Decoding only these (and skipping the rest of the object:
//! containers, volumes, managedFields, status) makes an admission request several times cheaper to
//! read than a full `k8s_openapi` Pod, and the patch is built against the raw object anyway.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeAffinity, Toleration, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde::{Deserialize, Deserializer};

/// A Pod as steering sees it. Unknown and unread fields are skipped; `null` reads as absent.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodView {
    #[serde(default, deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<PodSpecView>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecView {
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(default)]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    #[serde(default)]
    pub affinity: Option<AffinityView>,
    #[serde(default)]
    pub scheduler_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AffinityView {
    #[serde(default)]
    pub node_affinity: Option<NodeAffinity>,
}

/// The metadata fields nodewright reads (steering, quota, logging); managedFields and the rest are
/// skipped while decoding.
pub fn lean_meta<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Lean {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        generate_name: Option<String>,
        #[serde(default)]
        namespace: Option<String>,
        #[serde(default)]
        uid: Option<String>,
        #[serde(default)]
        resource_version: Option<String>,
        #[serde(default)]
        labels: Option<BTreeMap<String, String>>,
        #[serde(default)]
        annotations: Option<BTreeMap<String, String>>,
        #[serde(default)]
        owner_references: Option<Vec<OwnerReference>>,
        #[serde(default)]
        deletion_timestamp: Option<Time>,
        #[serde(default)]
        deletion_grace_period_seconds: Option<i64>,
    }
    let lean = Option::<Lean>::deserialize(deserializer)?;
    Ok(lean
        .map(|l| ObjectMeta {
            name: l.name,
            generate_name: l.generate_name,
            namespace: l.namespace,
            uid: l.uid,
            resource_version: l.resource_version,
            labels: l.labels,
            annotations: l.annotations,
            owner_references: l.owner_references,
            deletion_timestamp: l.deletion_timestamp,
            deletion_grace_period_seconds: l.deletion_grace_period_seconds,
            ..ObjectMeta::default()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_what_steering_needs_and_skips_the_rest() {
        let pod: PodView = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "web-", "labels": {"app": "web"}, "managedFields": [{"fieldsV1": {"f:x": {}}}],
                         "creationTimestamp": null},
            "spec": {"containers": [{"name": "c"}], "nodeSelector": null, "tolerations": [{"operator": "Exists"}],
                     "affinity": {"podAntiAffinity": {}, "nodeAffinity": {}}},
            "status": {}
        }))
        .unwrap();
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("web-"));
        assert!(pod.metadata.managed_fields.is_none());
        let spec = pod.spec.unwrap();
        assert!(spec.node_selector.is_none());
        assert_eq!(spec.tolerations.unwrap().len(), 1);
        assert!(spec.affinity.unwrap().node_affinity.is_some());
        let empty: PodView = serde_json::from_value(json!({"metadata": null})).unwrap();
        assert!(empty.spec.is_none());
    }
}
