//! Drift (Karpenter's `nodeclaim/disruption/drift.go` and the AWS provider's `drift.go`). Pure.
//!
//! The static part ([`static_drift`]): a claim records hashes of its NodePool's template and of
//! its EC2NodeClass when it is written; a claim whose pool or class hashes differ now, or whose
//! launched offering no longer meets the pool's requirements, has drifted.
//!
//! The dynamic part ([`dynamic_drift`]): a claim records the AMI, subnet and security groups
//! its instance launched with; the node class's selector terms, resolved again now (by the
//! cloud, as a launch resolves them), may select others: a newer AMI behind an alias or a name,
//! a subnet no longer tagged, another set of security groups.
//!
//! What the hashes cover follows Karpenter's `hash:"ignore"` tags: the pool's template labels,
//! annotations, taints, startup taints and node class reference (not its requirements, checked
//! against the launched offering instead, nor `expireAfter` and `terminationGracePeriod`, which
//! apply to running nodes as they are); the node class's whole spec but its selector terms,
//! whose results are checked by the cloud.

use std::collections::BTreeMap;

use crate::config::{EC2NodeClass, NodePool};
use crate::model::catalog::labels;

/// Claim annotation: the hash of the pool's template when the claim was written.
pub const NODEPOOL_HASH: &str = "nodewright.io/nodepool-hash";
/// Claim annotation: the hash of the node class when the claim was written.
pub const NODECLASS_HASH: &str = "nodewright.io/ec2nodeclass-hash";

/// Why a claim drifted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    /// The pool's template changed (labels, annotations, taints, node class reference).
    NodePool,
    /// The node class changed.
    NodeClass,
    /// The launched offering no longer meets the pool's requirements (the key named).
    Requirements(String),
    /// The AMI it launched with is not what the node class selects now for its architecture.
    Ami {
        launched: String,
        selected: Vec<String>,
    },
    /// The subnet it launched in is no longer selected.
    Subnet { launched: String },
    /// The security groups it launched with are not those selected now.
    SecurityGroups {
        launched: Vec<String>,
        selected: Vec<String>,
    },
}

impl Drift {
    /// The reason as the claim's `Drifted` condition and the Event carry it.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NodePool => "NodePoolDrifted",
            Self::NodeClass => "NodeClassDrifted",
            Self::Requirements(_) => "RequirementsDrifted",
            // Karpenter's AWS provider's names.
            Self::Ami { .. } => "AMIDrift",
            Self::Subnet { .. } => "SubnetDrift",
            Self::SecurityGroups { .. } => "SecurityGroupDrift",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::NodePool => {
                "the NodePool's template changed since the node was launched".to_owned()
            }
            Self::NodeClass => "the EC2NodeClass changed since the node was launched".to_owned(),
            Self::Requirements(key) => {
                format!("the node no longer meets the NodePool's requirement on {key}")
            }
            Self::Ami { launched, selected } => format!(
                "the node runs AMI {launched}; its EC2NodeClass now selects {}",
                selected.join(", ")
            ),
            Self::Subnet { launched } => format!(
                "the node runs in subnet {launched}, which its EC2NodeClass no longer selects"
            ),
            Self::SecurityGroups { launched, selected } => format!(
                "the node has security groups {}; its EC2NodeClass now selects {}",
                launched.join(", "),
                selected.join(", ")
            ),
        }
    }
}

/// 64-bit FNV-1a, as hex: stable across builds and platforms (unlike std's hasher).
fn fnv(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The hash of the drift-relevant part of the pool's template.
pub fn pool_hash(pool: &NodePool) -> String {
    let spec = &pool.spec.template.spec;
    let metadata = pool.spec.template.metadata.as_ref();
    let value = serde_json::json!({
        "labels": metadata.map(|m| &m.labels),
        "annotations": metadata.map(|m| &m.annotations),
        "taints": spec.taints,
        "startupTaints": spec.startup_taints,
        "nodeClassRef": spec.node_class_ref,
    });
    fnv(&value.to_string())
}

/// The hash of the node class, its selector terms left out.
pub fn class_hash(class: &EC2NodeClass) -> String {
    let mut value = serde_json::to_value(&class.spec).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        for key in [
            "amiSelectorTerms",
            "subnetSelectorTerms",
            "securityGroupSelectorTerms",
            "capacityReservationSelectorTerms",
        ] {
            map.remove(key);
        }
    }
    fnv(&value.to_string())
}

/// What a launched claim is, as the drift check reads it.
pub struct Launched<'a> {
    pub annotations: &'a BTreeMap<String, String>,
    pub instance_type: &'a str,
    pub zone: &'a str,
    pub capacity_type: &'a str,
    /// The labels it registered with (the pool's, the claim's).
    pub labels: &'a BTreeMap<String, String>,
}

/// The static drift of a claim against its pool and class as they are now. A claim written
/// before hashes were recorded has no annotation and is not taken as drifted by hash.
pub fn static_drift(
    claim: &Launched<'_>,
    pool: &NodePool,
    class: Option<&EC2NodeClass>,
) -> Option<Drift> {
    if claim
        .annotations
        .get(NODEPOOL_HASH)
        .is_some_and(|h| *h != pool_hash(pool))
    {
        return Some(Drift::NodePool);
    }
    if let Some(class) = class
        && claim
            .annotations
            .get(NODECLASS_HASH)
            .is_some_and(|h| *h != class_hash(class))
    {
        return Some(Drift::NodeClass);
    }
    for r in &pool.spec.template.spec.requirements {
        let value = match r.key.as_str() {
            labels::INSTANCE_TYPE => Some(claim.instance_type),
            labels::ZONE => Some(claim.zone),
            labels::CAPACITY_TYPE => Some(claim.capacity_type),
            // Other keys: only what the node carries as a label is judged (instance-type facts
            // such as the family are implied by the type, which is judged above when listed).
            key => match claim.labels.get(key) {
                Some(v) => Some(v.as_str()),
                None => continue,
            },
        };
        if !r.allows(value) {
            return Some(Drift::Requirements(r.key.clone()));
        }
    }
    None
}

/// What a claim's instance launched with, as recorded on the claim.
pub struct LaunchedWith<'a> {
    pub image_id: Option<&'a str>,
    pub subnet_id: Option<&'a str>,
    pub security_group_ids: &'a [String],
}

/// What the claim's node class selects now, for the claim's instance type.
pub struct Selected<'a> {
    /// The AMIs an instance of its type launches with now (empty: its architecture is unknown,
    /// or no AMI is selected for it: then the AMI is not judged).
    pub images: &'a [String],
    pub subnets: &'a [String],
    pub security_groups: &'a [String],
}

/// The dynamic drift of a claim (Karpenter's `isAMIDrifted`, `isSubnetDrifted`,
/// `areSecurityGroupsDrifted`, in that order). What was not recorded (claims launched before
/// nodewright recorded it) is not judged, nor is an empty selection: it tells nothing about the
/// node.
pub fn dynamic_drift(launched: &LaunchedWith<'_>, now: &Selected<'_>) -> Option<Drift> {
    if let Some(image) = launched.image_id
        && !now.images.is_empty()
        && !now.images.iter().any(|i| i == image)
    {
        return Some(Drift::Ami {
            launched: image.to_owned(),
            selected: now.images.to_vec(),
        });
    }
    if let Some(subnet) = launched.subnet_id
        && !now.subnets.is_empty()
        && !now.subnets.iter().any(|s| s == subnet)
    {
        return Some(Drift::Subnet {
            launched: subnet.to_owned(),
        });
    }
    let sorted = |groups: &[String]| {
        let mut v = groups.to_vec();
        v.sort();
        v.dedup();
        v
    };
    let (had, selected) = (
        sorted(launched.security_group_ids),
        sorted(now.security_groups),
    );
    if !had.is_empty() && !selected.is_empty() && had != selected {
        return Some(Drift::SecurityGroups {
            launched: had,
            selected,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const CONFIG: &str = r#"apiVersion: karpenter.sh/v1
kind: NodePool
metadata: {name: default}
spec:
  template:
    metadata: {labels: {team: a}}
    spec:
      nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}
      expireAfter: 720h
      requirements:
        - {key: karpenter.sh/capacity-type, operator: In, values: [spot, on-demand]}
        - {key: node.kubernetes.io/instance-type, operator: In, values: [c5.large, c5.xlarge]}
---
apiVersion: karpenter.k8s.aws/v1
kind: EC2NodeClass
metadata: {name: default}
spec:
  amiSelectorTerms: [{alias: al2023@latest}]
  role: R
  subnetSelectorTerms: [{tags: {a: b}}]
  securityGroupSelectorTerms: [{tags: {a: b}}]
"#;

    fn parsed(text: &str) -> (NodePool, EC2NodeClass) {
        let c = Config::parse(text, "t.yaml").unwrap();
        (
            c.node_pools["default"].clone(),
            c.node_classes["default"].clone(),
        )
    }

    #[test]
    fn hashes_change_with_what_drifts_and_not_with_what_does_not() {
        let (pool, class) = parsed(CONFIG);
        let (h, c) = (pool_hash(&pool), class_hash(&class));
        assert_eq!(h, pool_hash(&pool), "stable");
        for (from, to, pool_changes, class_changes) in [
            ("{team: a}", "{team: b}", true, false),
            ("expireAfter: 720h", "expireAfter: 24h", false, false),
            (
                "values: [c5.large, c5.xlarge]",
                "values: [c5.large]",
                false,
                false,
            ),
            ("role: R", "role: S", false, true),
            (
                "subnetSelectorTerms: [{tags: {a: b}}]",
                "subnetSelectorTerms: [{tags: {a: c}}]",
                false,
                false,
            ),
            (
                "alias: al2023@latest",
                "alias: al2023@v20250505",
                false,
                false,
            ),
        ] {
            assert!(CONFIG.contains(from), "{from}");
            let (p2, c2) = parsed(&CONFIG.replacen(from, to, 1));
            assert_eq!(pool_hash(&p2) != h, pool_changes, "{from} -> {to}");
            assert_eq!(class_hash(&c2) != c, class_changes, "{from} -> {to}");
        }
    }

    #[test]
    fn a_claim_drifts_by_hash_or_by_requirement() {
        let (pool, class) = parsed(CONFIG);
        let mut annotations = BTreeMap::from([
            (NODEPOOL_HASH.to_owned(), pool_hash(&pool)),
            (NODECLASS_HASH.to_owned(), class_hash(&class)),
        ]);
        let node_labels = BTreeMap::from([("team".to_owned(), "a".to_owned())]);
        let claim = |a: &BTreeMap<String, String>, it: &'static str, ct: &'static str| {
            static_drift(
                &Launched {
                    annotations: a,
                    instance_type: it,
                    zone: "us-east-1a",
                    capacity_type: ct,
                    labels: &node_labels,
                },
                &pool,
                Some(&class),
            )
        };
        assert_eq!(claim(&annotations, "c5.large", "spot"), None);
        assert_eq!(
            claim(&annotations, "m5.large", "spot"),
            Some(Drift::Requirements(
                "node.kubernetes.io/instance-type".into()
            ))
        );
        assert_eq!(
            claim(&BTreeMap::new(), "c5.large", "spot"),
            None,
            "claims without hashes are not drifted by hash"
        );
        annotations.insert(NODECLASS_HASH.to_owned(), "0".into());
        assert_eq!(
            claim(&annotations, "c5.large", "spot"),
            Some(Drift::NodeClass)
        );
        annotations.insert(NODEPOOL_HASH.to_owned(), "0".into());
        assert_eq!(
            claim(&annotations, "c5.large", "spot"),
            Some(Drift::NodePool)
        );
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_claim_drifts_when_its_ami_subnet_or_security_groups_are_no_longer_selected() {
        let groups = strings(&["sg-b", "sg-a"]);
        let launched = LaunchedWith {
            image_id: Some("ami-1"),
            subnet_id: Some("subnet-1"),
            security_group_ids: &groups,
        };
        let check = |images: &[&str], subnets: &[&str], sgs: &[&str]| {
            dynamic_drift(
                &launched,
                &Selected {
                    images: &strings(images),
                    subnets: &strings(subnets),
                    security_groups: &strings(sgs),
                },
            )
        };
        let (subnets, sgs) = (["subnet-1", "subnet-2"], ["sg-a", "sg-b"]);
        assert_eq!(check(&["ami-1"], &subnets, &sgs), None);
        assert_eq!(
            check(&[], &subnets, &["sg-b", "sg-a", "sg-a"]),
            None,
            "no AMI known for the architecture: not judged; groups compared as sets"
        );
        let ami = check(&["ami-2"], &subnets, &sgs).unwrap();
        assert_eq!(
            ami,
            Drift::Ami {
                launched: "ami-1".into(),
                selected: strings(&["ami-2"])
            }
        );
        assert_eq!(ami.reason(), "AMIDrift");
        assert!(ami.message().contains("ami-2"), "{}", ami.message());
        let subnet = check(&["ami-1"], &["subnet-2"], &sgs).unwrap();
        assert_eq!(subnet.reason(), "SubnetDrift");
        assert_eq!(
            check(&["ami-1"], &subnets, &["sg-a"]),
            Some(Drift::SecurityGroups {
                launched: strings(&["sg-a", "sg-b"]),
                selected: strings(&["sg-a"])
            })
        );
        assert_eq!(
            check(&["ami-1"], &subnets, &["sg-a", "sg-b", "sg-c"])
                .unwrap()
                .reason(),
            "SecurityGroupDrift",
            "an added group drifts too"
        );
        assert_eq!(
            check(&["ami-2"], &["subnet-2"], &["sg-c"])
                .unwrap()
                .reason(),
            "AMIDrift",
            "the AMI is judged first"
        );
    }

    #[test]
    fn what_was_not_recorded_is_not_judged() {
        let none = LaunchedWith {
            image_id: None,
            subnet_id: None,
            security_group_ids: &[],
        };
        let (images, subnets, sgs) = (
            strings(&["ami-2"]),
            strings(&["subnet-2"]),
            strings(&["sg-c"]),
        );
        let now = Selected {
            images: &images,
            subnets: &subnets,
            security_groups: &sgs,
        };
        assert_eq!(dynamic_drift(&none, &now), None);
    }
}
