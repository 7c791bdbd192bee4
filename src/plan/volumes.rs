//! PersistentVolumeClaims, PersistentVolumes and StorageClasses among the manifests, for the
//! volume topology of the pods `nodewright plan` expands
//! ([`crate::scheduling::volumes`]), and the claims a StatefulSet's `volumeClaimTemplates` make:
//! one per replica, `<template>-<statefulset>-<ordinal>`, unbound, of the template's class, put
//! on the replica's pod as a volume named after the template, as the StatefulSet controller does.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, Pod, Volume as PodVolume};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::manifests::{ManifestError, Origin};
use crate::scheduling::volumes::VolumeObjects;
use crate::scheduling::volumes::views::{ClaimView, FieldError, StorageClassView, VolumeView};

/// Collects the storage objects while [`super::manifests::expand`] reads the manifests.
#[derive(Debug, Default)]
pub struct VolumeReader {
    objects: VolumeObjects,
    /// `(namespace, statefulset)` → its claim templates.
    templates: HashMap<(String, String), Vec<ClaimView>>,
}

impl VolumeReader {
    /// Reads `object` if it is a storage object (`true`: nothing else is to be done with it).
    /// A StatefulSet's claim templates are noted, and `false` returned so its pods are expanded.
    pub fn read(
        &mut self,
        api_version: &str,
        kind: &str,
        object: &Map<String, Value>,
        origin: &Origin,
    ) -> Result<bool, ManifestError> {
        match (api_version, kind) {
            ("v1", "PersistentVolumeClaim") => {
                let view: ClaimView = decode(object, "", describe(kind, object), origin)?;
                let claim = view.to_claim();
                self.objects
                    .claims
                    .insert((claim.namespace.clone(), claim.name.clone()), claim);
            }
            ("v1", "PersistentVolume") => {
                let view: VolumeView = decode(object, "", describe(kind, object), origin)?;
                let volume = view
                    .to_volume()
                    .map_err(|e| field_error(kind, object, origin, e))?;
                self.objects.volumes.insert(volume.name.clone(), volume);
            }
            ("storage.k8s.io/v1", "StorageClass") => {
                let view: StorageClassView = decode(object, "", describe(kind, object), origin)?;
                let class = view
                    .to_class()
                    .map_err(|e| field_error(kind, object, origin, e))?;
                self.objects.classes.insert(class.name.clone(), class);
            }
            ("apps/v1", "StatefulSet") => {
                let templates = object
                    .get("spec")
                    .and_then(|s| s.get("volumeClaimTemplates"));
                let Some(Value::Array(templates)) = templates else {
                    return Ok(false);
                };
                let mut views = Vec::with_capacity(templates.len());
                for (i, t) in templates.iter().enumerate() {
                    let Value::Object(t) = t else {
                        return Err(field_error(
                            kind,
                            object,
                            origin,
                            FieldError {
                                path: format!("spec.volumeClaimTemplates[{i}]"),
                                message: "expected a mapping".to_owned(),
                            },
                        ));
                    };
                    views.push(decode::<ClaimView>(
                        t,
                        &format!("spec.volumeClaimTemplates[{i}]"),
                        describe(kind, object),
                        origin,
                    )?);
                }
                let (namespace, name) = identity(object);
                self.templates.insert((namespace, name), views);
                return Ok(false);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The objects read, with each StatefulSet replica's claims made and put on its pod.
    pub fn finish(mut self, pods: &mut [Pod]) -> VolumeObjects {
        self.objects.lenient = true;
        if self.templates.is_empty() {
            return self.objects;
        }
        for pod in pods {
            let Some(set) = pod
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.kind == "StatefulSet" && o.controller == Some(true))
                .map(|o| o.name.clone())
            else {
                continue;
            };
            let namespace = pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned());
            let Some(templates) = self.templates.get(&(namespace.clone(), set)) else {
                continue;
            };
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            let volumes = pod
                .spec
                .get_or_insert_with(Default::default)
                .volumes
                .get_or_insert_with(Vec::new);
            for template in templates {
                let mut claim = template.to_claim();
                let volume = claim.name.clone();
                // `<template>-<statefulset>-<ordinal>`: the pod is `<statefulset>-<ordinal>`.
                claim.name = format!("{volume}-{pod_name}");
                claim.namespace = namespace.clone();
                volumes.retain(|v| v.name != volume);
                volumes.push(PodVolume {
                    name: volume,
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim.name.clone(),
                        read_only: None,
                    }),
                    ..PodVolume::default()
                });
                // A claim of that name among the manifests is the one the controller reuses.
                self.objects
                    .claims
                    .entry((claim.namespace.clone(), claim.name.clone()))
                    .or_insert(claim);
            }
        }
        self.objects
    }
}

/// `(namespace, name)` of an object, as written (`default` namespace when none).
fn identity(object: &Map<String, Value>) -> (String, String) {
    let meta = object.get("metadata");
    let text = |key: &str| {
        meta.and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    (
        text("namespace").unwrap_or_else(|| "default".to_owned()),
        text("name").unwrap_or_default(),
    )
}

fn describe(kind: &str, object: &Map<String, Value>) -> String {
    let (namespace, name) = identity(object);
    if kind == "PersistentVolumeClaim" || kind == "StatefulSet" {
        format!("{kind} {namespace}/{name}")
    } else {
        format!("{kind} {name}")
    }
}

fn field_error(
    kind: &str,
    object: &Map<String, Value>,
    origin: &Origin,
    e: FieldError,
) -> ManifestError {
    ManifestError::Field {
        origin: Box::new(origin.clone()),
        object: describe(kind, object),
        path: e.path,
        message: e.message,
    }
}

/// Decodes `value` (at `prefix` within the object), with the path of what does not fit.
fn decode<T: DeserializeOwned>(
    value: &Map<String, Value>,
    prefix: &str,
    object: String,
    origin: &Origin,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(&Value::Object(value.clone())).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (inner.as_str(), prefix) {
            (".", "") => ".".to_owned(),
            (".", prefix) => prefix.to_owned(),
            (inner, "") => inner.to_owned(),
            (inner, prefix) => format!("{prefix}.{inner}"),
        };
        ManifestError::Field {
            origin: Box::new(origin.clone()),
            object,
            path,
            message: e.inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduling::volumes::Claim;
    use serde_json::json;

    fn origin() -> Origin {
        Origin {
            source: std::sync::Arc::from("test.yaml"),
            document: 1,
            item: None,
        }
    }

    fn read(reader: &mut VolumeReader, doc: Value) -> Result<bool, ManifestError> {
        let Value::Object(object) = doc else {
            panic!("a mapping")
        };
        let api_version = object["apiVersion"].as_str().unwrap().to_owned();
        let kind = object["kind"].as_str().unwrap().to_owned();
        reader.read(&api_version, &kind, &object, &origin())
    }

    fn sts_pod(set: &str, ordinal: u32, volumes: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{set}-{ordinal}"), "namespace": "db",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": set,
                                              "uid": "u", "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "x"}], "volumes": volumes}
        }))
        .unwrap()
    }

    #[test]
    fn storage_objects_are_read_and_statefulset_claims_made() {
        let mut reader = VolumeReader::default();
        let consumed = [
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": "shared", "namespace": "db"},
                   "spec": {"volumeName": "pv-1", "storageClassName": ""}}),
            json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-1"},
                   "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                       {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-east-1b"]}]}]}}}}),
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "gp3"},
                   "provisioner": "ebs.csi.aws.com", "volumeBindingMode": "WaitForFirstConsumer"}),
            // A claim of replica 1 that already exists, bound.
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": "data-pg-1", "namespace": "db"},
                   "spec": {"volumeName": "pv-1"}}),
        ];
        for doc in consumed {
            assert!(read(&mut reader, doc.clone()).unwrap(), "{doc}");
        }
        let set = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "pg", "namespace": "db"},
            "spec": {"replicas": 2, "template": {"spec": {}},
                     "volumeClaimTemplates": [{"metadata": {"name": "data"},
                                               "spec": {"storageClassName": "gp3"}}]}});
        assert!(!read(&mut reader, set).unwrap(), "its pods are expanded");
        let deployment =
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}});
        assert!(!read(&mut reader, deployment).unwrap());

        // Replica 0 had a volume named like the template (replaced); replica 1 none.
        let mut pods = vec![
            sts_pod(
                "pg",
                0,
                json!([{"name": "data", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]),
            ),
            sts_pod("pg", 1, json!(null)),
            sts_pod("other", 0, json!(null)),
        ];
        let objects = reader.finish(&mut pods);
        assert!(objects.lenient);
        let claims_of = |pod: &Pod| -> Vec<(String, Option<String>)> {
            pod.spec
                .as_ref()
                .and_then(|s| s.volumes.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|v| (v.name, v.persistent_volume_claim.map(|c| c.claim_name)))
                .collect()
        };
        assert_eq!(
            claims_of(&pods[0]),
            [
                ("tmp".to_owned(), None),
                ("data".to_owned(), Some("data-pg-0".to_owned()))
            ]
        );
        assert_eq!(
            claims_of(&pods[1]),
            [("data".to_owned(), Some("data-pg-1".to_owned()))]
        );
        assert!(claims_of(&pods[2]).is_empty(), "another StatefulSet's pod");
        let claim = |name: &str| objects.claims.get(&("db".to_owned(), name.to_owned()));
        assert_eq!(
            claim("data-pg-0"),
            Some(&Claim {
                namespace: "db".into(),
                name: "data-pg-0".into(),
                storage_class: Some("gp3".into()),
                ..Claim::default()
            })
        );
        assert_eq!(
            claim("data-pg-1").and_then(|c| c.volume_name.as_deref()),
            Some("pv-1"),
            "the claim in the manifests is kept"
        );
        assert!(claim("shared").is_some());
        assert!(objects.volumes.contains_key("pv-1"));
        assert!(objects.classes["gp3"].wait_for_first_consumer);
    }

    #[test]
    fn bad_storage_objects_are_reported_with_their_location() {
        // (document, expected error)
        let cases = [
            (
                json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                       "metadata": {"name": "c", "namespace": "n"}, "spec": {"volumeName": 3}}),
                "test.yaml: document 1 (PersistentVolumeClaim n/c): spec.volumeName: invalid type: integer `3`, expected a string",
            ),
            (
                json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "v"},
                       "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                           {"key": "k", "operator": "Near"}]}]}}}}),
                "test.yaml: document 1 (PersistentVolume v): spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].operator: \"Near\" is not a node selector operator (In, NotIn, Exists, DoesNotExist, Gt, Lt)",
            ),
            (
                json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "s"},
                       "volumeBindingMode": "Eventually"}),
                "test.yaml: document 1 (StorageClass s): volumeBindingMode: \"Eventually\": expected Immediate or WaitForFirstConsumer",
            ),
            (
                json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s", "namespace": "n"},
                       "spec": {"volumeClaimTemplates": [{"metadata": {"name": "d"}, "spec": {"storageClassName": ["gp3"]}}]}}),
                "test.yaml: document 1 (StatefulSet n/s): spec.volumeClaimTemplates[0].spec.storageClassName: invalid type: sequence, expected a string",
            ),
            (
                json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s", "namespace": "n"},
                       "spec": {"volumeClaimTemplates": ["data"]}}),
                "test.yaml: document 1 (StatefulSet n/s): spec.volumeClaimTemplates[0]: expected a mapping",
            ),
        ];
        for (doc, want) in cases {
            let e = read(&mut VolumeReader::default(), doc).unwrap_err();
            assert_eq!(e.to_string(), want);
        }
    }
}
