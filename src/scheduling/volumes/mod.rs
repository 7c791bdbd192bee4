//! Volume topology: where a pod's persistent volumes let it run, as node requirements ANDed into
//! its required node affinity before it is planned (Karpenter's `VolumeTopology`).
//!
//! - A claim bound to a PersistentVolume: the volume's `nodeAffinity` terms (ORed). For `local`
//!   and `hostPath` volumes the hostname is dropped, as Karpenter drops it (a new node never has
//!   the old node's name); a term left empty allows any node.
//! - An unbound claim of a `WaitForFirstConsumer` StorageClass: the class's `allowedTopologies`
//!   terms (ORed), each expression read as `In`.
//! - Several volumes: every combination of their terms, less those that contradict each other.
//! - `topology.ebs.csi.aws.com/zone` (the EBS CSI driver's key) and the beta zone key are read as
//!   `topology.kubernetes.io/zone`, with Karpenter's other aliases (beta arch, os, instance type,
//!   region).
//!
//! Pods Karpenter ignores until the cluster changes (a claim that does not exist yet, is being
//! deleted or is `Lost`, an unbound claim of an `Immediate` class or of no class, a volume or class
//! that does not exist) are left unplanned with that reason. `nodewright plan` reads partial
//! manifests ([`VolumeObjects::lenient`]): what is missing there constrains nothing, and an
//! unbound `Immediate` claim honours its class's topologies, as the volume it gets will.

pub mod views;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;

use super::PendingPod;
use super::solver::{ExistingNode, Pool};
use crate::model::catalog::{Catalog, labels};
use crate::model::{Operator, Requirement};

/// The EBS CSI driver's zone key, on its volumes' node affinity and its classes' topologies.
pub const EBS_CSI_ZONE: &str = "topology.ebs.csi.aws.com/zone";
/// The annotation the PersistentVolume controller puts on a claim once its binding is complete;
/// kube-scheduler counts a claim without it as unbound.
pub const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// The StorageClass annotation that makes it the default for claims that name no class.
pub const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
/// Combinations of volume terms and node affinity terms kept for one pod.
pub const MAX_TERMS: usize = 64;

const REGION_BETA: &str = "failure-domain.beta.kubernetes.io/region";

/// A PersistentVolumeClaim as volume topology reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    pub namespace: String,
    pub name: String,
    /// `spec.storageClassName`: `None` when unset (the default class applies), `Some("")` for
    /// explicitly none.
    pub storage_class: Option<String>,
    /// `spec.volumeName`.
    pub volume_name: Option<String>,
    /// The binding is complete ([`BIND_COMPLETED`]).
    pub bound: bool,
    /// `status.phase` is `Lost`: bound to a volume that no longer exists.
    pub lost: bool,
    pub deleting: bool,
}

/// A PersistentVolume as volume topology reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    /// `spec.nodeAffinity.required.nodeSelectorTerms`: ORed terms of ANDed requirements, keys as
    /// written. Empty: any node.
    pub node_affinity: Vec<Vec<Requirement>>,
    /// A `local` or `hostPath` volume.
    pub local: bool,
    pub deleting: bool,
}

/// A StorageClass as volume topology reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageClass {
    pub name: String,
    /// `volumeBindingMode: WaitForFirstConsumer` (the default is `Immediate`).
    pub wait_for_first_consumer: bool,
    /// `allowedTopologies` as ORed terms of `In` requirements, keys as written. Empty: anywhere.
    pub allowed_topologies: Vec<Vec<Requirement>>,
    /// Annotated as the default class ([`DEFAULT_CLASS`]).
    pub is_default: bool,
}

/// The claims, volumes and classes pods are read against.
#[derive(Clone, Debug, Default)]
pub struct VolumeObjects {
    /// By `(namespace, name)`.
    pub claims: BTreeMap<(String, String), Claim>,
    pub volumes: BTreeMap<String, Volume>,
    pub classes: BTreeMap<String, StorageClass>,
    /// Objects that are missing constrain nothing, and unbound claims of `Immediate` classes
    /// honour the class's topologies (manifests for `plan`), instead of keeping the pod waiting
    /// (the cluster).
    pub lenient: bool,
}

/// One volume's terms: the node requirements it allows, ORed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeTerms {
    /// `pvc/<claim>`, for messages.
    pub volume: String,
    /// Keys normalized; an empty term allows any node.
    pub alternatives: Vec<Vec<Requirement>>,
}

impl VolumeTerms {
    /// The zones the volume allows, or `None` when some term leaves the zone open.
    pub fn zones(&self) -> Option<BTreeSet<String>> {
        let mut all = BTreeSet::new();
        for term in &self.alternatives {
            let mut zones: Option<BTreeSet<String>> = None;
            for r in term
                .iter()
                .filter(|r| r.key == labels::ZONE && r.operator == Operator::In)
            {
                let these: BTreeSet<String> = r.values.iter().cloned().collect();
                zones = Some(match zones {
                    Some(z) => z.intersection(&these).cloned().collect(),
                    None => these,
                });
            }
            all.extend(zones?);
        }
        Some(all)
    }

    fn describe(&self) -> String {
        let terms: Vec<String> = self
            .alternatives
            .iter()
            .map(|t| {
                t.iter()
                    .map(|r| format!("{} {}", r.key, r.describe_allowed()))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .collect();
        format!("{}: {}", self.volume, terms.join(" or "))
    }
}

/// What a pod's volumes require of its node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VolumeRequirements {
    /// The volumes that constrain the node, in the pod's order.
    pub volumes: Vec<VolumeTerms>,
    /// Every compatible combination of the volumes' terms, ORed; empty when no volume constrains.
    pub alternatives: Vec<Vec<Requirement>>,
}

/// The key Karpenter plans with for `key` (its `NormalizedLabels`, with the EBS CSI zone).
pub fn normalized_key(key: &str) -> &str {
    match key {
        labels::ZONE_BETA | EBS_CSI_ZONE => labels::ZONE,
        labels::ARCH_BETA => labels::ARCH,
        labels::OS_BETA => labels::OS,
        labels::INSTANCE_TYPE_BETA => labels::INSTANCE_TYPE,
        REGION_BETA => labels::REGION,
        other => other,
    }
}

fn normalized(term: &[Requirement]) -> Vec<Requirement> {
    term.iter()
        .map(|r| Requirement {
            key: normalized_key(&r.key).to_owned(),
            ..r.clone()
        })
        .collect()
}

/// The claims a pod's volumes use: `(claim name, storage class of its ephemeral template)`.
/// An ephemeral volume's claim is named `<pod>-<volume>`, as the ephemeral volume controller
/// names it.
fn pod_claims(pod: &Pod) -> Vec<(String, Option<Option<String>>)> {
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            if let Some(pvc) = &v.persistent_volume_claim {
                Some((pvc.claim_name.clone(), None))
            } else {
                v.ephemeral.as_ref().map(|e| {
                    let class = e
                        .volume_claim_template
                        .as_ref()
                        .and_then(|t| t.spec.storage_class_name.clone());
                    (format!("{pod_name}-{}", v.name), Some(class))
                })
            }
        })
        .collect()
}

impl VolumeObjects {
    /// The class a claim that names none gets: the default class (the first by name if several
    /// are marked).
    fn default_class(&self) -> Option<&StorageClass> {
        self.classes.values().find(|c| c.is_default)
    }

    /// What `pod`'s volumes require of its node, or why it cannot be planned yet.
    pub fn requirements(&self, pod: &Pod) -> Result<VolumeRequirements, String> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut out = VolumeRequirements::default();
        for (name, ephemeral) in pod_claims(pod) {
            let key = (namespace.to_owned(), name.clone());
            let synthesized;
            let claim = match (self.claims.get(&key), ephemeral) {
                (Some(claim), _) => claim,
                // The ephemeral volume controller creates it from the template, unbound.
                (None, Some(class)) => {
                    synthesized = Claim {
                        namespace: namespace.to_owned(),
                        name: name.clone(),
                        storage_class: class,
                        ..Claim::default()
                    };
                    &synthesized
                }
                (None, None) if self.lenient => continue,
                (None, None) => {
                    return Err(format!(
                        "its PersistentVolumeClaim {namespace}/{name} does not exist"
                    ));
                }
            };
            if let Some(terms) = self.claim_terms(claim)? {
                out.volumes.push(VolumeTerms {
                    volume: format!("pvc/{name}"),
                    alternatives: terms,
                });
            }
        }
        out.alternatives = combine(&out.volumes)?;
        Ok(out)
    }

    /// The terms one claim allows (`None`: any node).
    fn claim_terms(&self, claim: &Claim) -> Result<Option<Vec<Vec<Requirement>>>, String> {
        let what = format!(
            "its PersistentVolumeClaim {}/{}",
            claim.namespace, claim.name
        );
        if claim.deleting {
            return Err(format!("{what} is being deleted"));
        }
        if claim.lost {
            return Err(format!(
                "{what} is Lost: bound to a PersistentVolume that no longer exists"
            ));
        }
        if let Some(volume) = claim.volume_name.as_deref().filter(|v| !v.is_empty()) {
            if !claim.bound && !self.lenient {
                return Err(format!(
                    "{what} waits for the PersistentVolume controller to complete its binding to {volume}"
                ));
            }
            let Some(pv) = self.volumes.get(volume) else {
                if self.lenient {
                    return Ok(None);
                }
                return Err(format!(
                    "{what} is bound to PersistentVolume {volume}, which does not exist"
                ));
            };
            if pv.deleting {
                return Err(format!(
                    "{what} is bound to PersistentVolume {volume}, which is being deleted"
                ));
            }
            // An empty term selects no node and is skipped, as Karpenter skips it; a term left
            // empty by dropping a local volume's hostname allows any node.
            let mut terms = Vec::new();
            for term in pv.node_affinity.iter().filter(|t| !t.is_empty()) {
                let mut t = normalized(term);
                if pv.local {
                    t.retain(|r| r.key != labels::HOSTNAME);
                }
                terms.push(t);
            }
            return Ok(nonempty(terms));
        }
        let class = match claim.storage_class.as_deref() {
            Some("") => None,
            Some(name) => Some(name),
            None => self.default_class().map(|c| c.name.as_str()),
        };
        let Some(class_name) = class else {
            if self.lenient {
                return Ok(None);
            }
            return Err(format!(
                "{what} is unbound and has no StorageClass to provision it"
            ));
        };
        let Some(class) = self.classes.get(class_name) else {
            if self.lenient {
                return Ok(None);
            }
            return Err(format!(
                "{what} names StorageClass {class_name}, which does not exist"
            ));
        };
        if !class.wait_for_first_consumer && !self.lenient {
            return Err(format!(
                "{what} waits to be bound: StorageClass {class_name} binds immediately (volumeBindingMode Immediate)"
            ));
        }
        Ok(nonempty(
            class
                .allowed_topologies
                .iter()
                .filter(|t| !t.is_empty())
                .map(|t| normalized(t))
                .collect(),
        ))
    }
}

/// `None` when the terms allow any node: none at all, or one that is empty.
fn nonempty(terms: Vec<Vec<Requirement>>) -> Option<Vec<Vec<Requirement>>> {
    if terms.is_empty() || terms.iter().any(Vec::is_empty) {
        return None;
    }
    let mut unique: Vec<Vec<Requirement>> = Vec::with_capacity(terms.len());
    for t in terms {
        if !unique.contains(&t) {
            unique.push(t);
        }
    }
    Some(unique)
}

/// Every combination of the volumes' terms that does not contradict itself.
fn combine(volumes: &[VolumeTerms]) -> Result<Vec<Vec<Requirement>>, String> {
    if volumes.is_empty() {
        return Ok(Vec::new());
    }
    let mut combos: Vec<Vec<Requirement>> = vec![Vec::new()];
    for v in volumes {
        let mut next = Vec::new();
        for c in &combos {
            for alt in &v.alternatives {
                let merged: Vec<Requirement> = c.iter().chain(alt).cloned().collect();
                if satisfiable(merged.iter()) {
                    next.push(merged);
                }
            }
        }
        if next.is_empty() {
            let names: Vec<String> = volumes.iter().map(VolumeTerms::describe).collect();
            return Err(format!(
                "its volumes allow no node in common ({})",
                names.join("; ")
            ));
        }
        if next.len() > MAX_TERMS {
            return Err(format!(
                "its volumes' node requirements make more than {MAX_TERMS} combinations"
            ));
        }
        combos = next;
    }
    Ok(combos)
}

/// Whether some label values can satisfy every requirement at once. Only `In`, `NotIn`,
/// `Exists` and `DoesNotExist` are compared; numeric bounds are taken as satisfiable.
fn satisfiable<'r>(reqs: impl Iterator<Item = &'r Requirement>) -> bool {
    #[derive(Default)]
    struct Key<'r> {
        allowed: Option<BTreeSet<&'r str>>,
        excluded: BTreeSet<&'r str>,
        exists: bool,
        absent: bool,
    }
    let mut keys: BTreeMap<&str, Key<'r>> = BTreeMap::new();
    for r in reqs {
        let k = keys.entry(r.key.as_str()).or_default();
        match r.operator {
            Operator::In => {
                let these: BTreeSet<&str> = r.values.iter().map(String::as_str).collect();
                k.allowed = Some(match k.allowed.take() {
                    Some(a) => a.intersection(&these).copied().collect(),
                    None => these,
                });
            }
            Operator::NotIn => k.excluded.extend(r.values.iter().map(String::as_str)),
            Operator::Exists => k.exists = true,
            Operator::DoesNotExist => k.absent = true,
            Operator::Gt | Operator::Lt | Operator::Gte | Operator::Lte => k.exists = true,
        }
    }
    keys.values().all(|k| {
        let some_value = k
            .allowed
            .as_ref()
            .is_none_or(|a| a.iter().any(|v| !k.excluded.contains(v)));
        let must_exist = k.exists || k.allowed.is_some();
        some_value && !(must_exist && k.absent)
    })
}

/// The zones where a new node of some pool can start (an instance type the pool allows with an
/// available offering there) or where a node already runs.
pub fn usable_zones(pools: &[Pool], catalog: &Catalog, nodes: &[ExistingNode]) -> BTreeSet<String> {
    let mut zones: BTreeSet<String> = nodes
        .iter()
        .filter_map(|n| n.labels.get(labels::ZONE).cloned())
        .collect();
    for pool in pools {
        let (offering, typed): (Vec<&Requirement>, Vec<&Requirement>) = pool
            .requirements
            .iter()
            .partition(|r| labels::is_offering_label(&r.key));
        for it in &catalog.types {
            let type_ok = typed
                .iter()
                .filter(|r| labels::is_instance_label(&r.key))
                .all(|r| r.allows(it.label(&r.key).as_deref()));
            if !type_ok {
                continue;
            }
            for off in it.offerings.iter().filter(|o| o.available) {
                let ok = offering.iter().all(|r| {
                    r.allows(Some(match r.key.as_str() {
                        labels::CAPACITY_TYPE => off.capacity_type.as_str(),
                        _ => off.zone.as_str(),
                    }))
                });
                if ok {
                    zones.insert(off.zone.clone());
                }
            }
        }
    }
    zones
}

/// Puts the volumes' requirements on a pod read by [`PendingPod::from_pod`]: ANDed into every
/// required node affinity term (the combinations its node selector contradicts dropped), or the
/// reason it cannot be planned in `invalid`. `usable_zones`: where capacity can be had
/// ([`usable_zones`]); a volume whose zones are all elsewhere makes the pod unplaceable.
pub fn apply(pod: &mut PendingPod, volumes: &VolumeRequirements, usable_zones: &BTreeSet<String>) {
    if volumes.alternatives.is_empty() {
        return;
    }
    let c = &mut pod.constraints;
    let base = if c.node_affinity.is_empty() {
        vec![Vec::new()]
    } else {
        std::mem::take(&mut c.node_affinity)
    };
    let mut merged = Vec::new();
    let mut all = Vec::new();
    for term in &base {
        for alt in &volumes.alternatives {
            let t: Vec<Requirement> = term.iter().chain(alt).cloned().collect();
            if satisfiable(c.node_selector.iter().chain(&t)) {
                merged.push(t.clone());
            }
            all.push(t);
        }
    }
    let reason = if let Some((v, zones)) = volumes
        .volumes
        .iter()
        .filter_map(|v| v.zones().map(|z| (v, z)))
        .find(|(_, z)| z.is_disjoint(usable_zones))
    {
        let zones: Vec<&str> = zones.iter().map(String::as_str).collect();
        let place = match zones.as_slice() {
            [one] => format!("is in zone {one}"),
            many => format!("is limited to zones {}", many.join(", ")),
        };
        Some(format!(
            "its volume {} {place}, where no instance type the pools allow is offered",
            v.volume
        ))
    } else if merged.is_empty() {
        let names: Vec<String> = volumes.volumes.iter().map(VolumeTerms::describe).collect();
        Some(format!(
            "its node selector and affinity rule out every node its volumes allow ({})",
            names.join("; ")
        ))
    } else if merged.len() > MAX_TERMS {
        Some(format!(
            "its node affinity and volumes' node requirements make more than {MAX_TERMS} combinations"
        ))
    } else {
        None
    };
    c.node_affinity = if merged.is_empty() { all } else { merged };
    if let Some(reason) = reason {
        pod.invalid.get_or_insert(reason);
    }
}

/// A pending pod with its volumes' requirements ([`PendingPod::from_pod`], then [`apply`]).
pub fn pending_pod(
    pod: &Pod,
    objects: &VolumeObjects,
    usable_zones: &BTreeSet<String>,
) -> PendingPod {
    let mut pending = PendingPod::from_pod(pod);
    if pod
        .spec
        .as_ref()
        .is_none_or(|s| s.volumes.as_ref().is_none_or(Vec::is_empty))
    {
        return pending;
    }
    match objects.requirements(pod) {
        Ok(volumes) => apply(&mut pending, &volumes, usable_zones),
        Err(reason) => {
            pending.invalid.get_or_insert(reason);
        }
    }
    pending
}

#[cfg(test)]
mod tests;
