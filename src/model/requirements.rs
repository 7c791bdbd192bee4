//! Node label requirements of a NodePool, and what node label values they allow.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::catalog::{CapacityType, InstanceType, labels};

/// One requirement on a node label: Karpenter's `NodeSelectorRequirementWithMinValues`
/// (`spec.template.spec.requirements[]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Requirement {
    /// The node label key, e.g. `karpenter.sh/capacity-type`.
    pub key: String,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// The least number of distinct values the launch must be able to choose from (flexibility).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_values: Option<i32>,
}

/// Node selector operators: core v1 `NodeSelectorOperator` plus Karpenter's `Gte` and `Lte`
/// (NodePool requirements only; pods cannot use them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
    Gte,
    Lte,
}

impl Operator {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::In => "In",
            Self::NotIn => "NotIn",
            Self::Exists => "Exists",
            Self::DoesNotExist => "DoesNotExist",
            Self::Gt => "Gt",
            Self::Lt => "Lt",
            Self::Gte => "Gte",
            Self::Lte => "Lte",
        }
    }

    /// `Gt`, `Lt`, `Gte` or `Lte`: one integer bound compared with the label's value.
    pub fn is_bound(self) -> bool {
        matches!(self, Self::Gt | Self::Lt | Self::Gte | Self::Lte)
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Requirement {
    /// Whether a node carrying `value` for this label (`None`: no such label) satisfies the
    /// requirement, with Kubernetes' node selector semantics as Karpenter extends them: `NotIn` and
    /// `DoesNotExist` allow an absent label; `Gt`/`Lt`/`Gte`/`Lte` need exactly one value and
    /// compare both sides as integers, so an absent or non-integer label fails.
    pub fn allows(&self, value: Option<&str>) -> bool {
        let listed = |v: &str| self.values.iter().any(|allowed| allowed == v);
        match (self.operator, value) {
            (Operator::In, Some(v)) => listed(v),
            (Operator::In, None) => false,
            (Operator::NotIn, Some(v)) => !listed(v),
            (Operator::NotIn, None) => true,
            (Operator::Exists, value) => value.is_some(),
            (Operator::DoesNotExist, value) => value.is_none(),
            (Operator::Gt, Some(v)) => self.compare_with_bound(v) == Some(Ordering::Greater),
            (Operator::Lt, Some(v)) => self.compare_with_bound(v) == Some(Ordering::Less),
            (Operator::Gte, Some(v)) => self
                .compare_with_bound(v)
                .is_some_and(|o| o != Ordering::Less),
            (Operator::Lte, Some(v)) => self
                .compare_with_bound(v)
                .is_some_and(|o| o != Ordering::Greater),
            (Operator::Gt | Operator::Lt | Operator::Gte | Operator::Lte, None) => false,
        }
    }

    fn compare_with_bound(&self, value: &str) -> Option<Ordering> {
        let [bound] = self.values.as_slice() else {
            return None;
        };
        Some(value.parse::<i64>().ok()?.cmp(&bound.parse::<i64>().ok()?))
    }

    /// What the requirement allows, for messages: `In [spot, on-demand]`, `Exists`, `Gt 4`.
    pub fn describe_allowed(&self) -> String {
        match self.operator {
            Operator::In | Operator::NotIn => {
                format!("{} [{}]", self.operator, self.values.join(", "))
            }
            Operator::Exists | Operator::DoesNotExist => self.operator.to_string(),
            Operator::Gt | Operator::Lt | Operator::Gte | Operator::Lte => {
                format!("{} {}", self.operator, self.values.join(", "))
            }
        }
    }
}

/// A requirement with `minValues` that a planned node's candidate instance types fall short of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MinValuesShortfall {
    pub key: String,
    pub min_values: i32,
    /// Distinct values of `key` among the candidates.
    pub got: usize,
}

/// Every requirement whose `minValues` a node's candidates do not meet, in requirement order.
/// Displays as Karpenter's reason: `minValues requirement is not met for label(s) (label: K,
/// minValues: 5, got 3)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MinValuesUnmet(pub Vec<MinValuesShortfall>);

impl fmt::Display for MinValuesUnmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("minValues requirement is not met for label(s) ")?;
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(
                f,
                "(label: {}, minValues: {}, got {})",
                s.key, s.min_values, s.got
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for MinValuesUnmet {}

/// Does a NodePool with these requirements launch this capacity type? Without a
/// `karpenter.sh/capacity-type` requirement Karpenter launches on-demand only.
pub fn allows_capacity_type(requirements: &[Requirement], ct: CapacityType) -> bool {
    match requirements.iter().find(|r| r.key == labels::CAPACITY_TYPE) {
        Some(r) => r.allows(Some(ct.as_str())),
        None => ct == CapacityType::OnDemand,
    }
}

/// Karpenter's `SatisfiesMinValues`: whether every requirement with `minValues` finds at least
/// that many distinct values of its key among `candidates` (the chosen instance type of one planned
/// node and its launch alternatives).
///
/// A candidate contributes its value for an instance label (`karpenter.k8s.aws/instance-family`,
/// `node.kubernetes.io/instance-type`, ...) and, for an offering label (zone, capacity type), the
/// values of its available offerings; only values the requirement itself allows count. A candidate
/// without the label contributes nothing, and a key no instance type carries (a custom label)
/// counts no values, as in Karpenter. A key listed twice must meet each of its `minValues`.
pub fn min_values_met<'a>(
    requirements: &[Requirement],
    candidates: impl IntoIterator<Item = &'a InstanceType>,
) -> Result<(), MinValuesUnmet> {
    let mut seen: Vec<(&Requirement, BTreeSet<String>)> = requirements
        .iter()
        .filter(|r| r.min_values.is_some())
        .map(|r| (r, BTreeSet::new()))
        .collect();
    if seen.is_empty() {
        return Ok(());
    }
    for it in candidates {
        for (requirement, values) in &mut seen {
            let key = requirement.key.as_str();
            if labels::is_offering_label(key) {
                for offering in it.offerings.iter().filter(|o| o.available) {
                    let value = match key {
                        labels::CAPACITY_TYPE => offering.capacity_type.as_str(),
                        _ => offering.zone.as_str(),
                    };
                    if requirement.allows(Some(value)) && !values.contains(value) {
                        values.insert(value.to_owned());
                    }
                }
            } else if let Some(value) = it.label(key)
                && requirement.allows(Some(&value))
            {
                values.insert(value);
            }
        }
    }
    let short: Vec<MinValuesShortfall> = seen
        .into_iter()
        .filter_map(|(requirement, values)| {
            let min_values = requirement.min_values?;
            (values.len() < usize::try_from(min_values).unwrap_or(0)).then(|| MinValuesShortfall {
                key: requirement.key.clone(),
                min_values,
                got: values.len(),
            })
        })
        .collect();
    if short.is_empty() {
        Ok(())
    } else {
        Err(MinValuesUnmet(short))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(operator: Operator, values: &[&str]) -> Requirement {
        Requirement {
            key: "example.com/label".to_owned(),
            operator,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
            min_values: None,
        }
    }

    #[test]
    fn allows_like_kubernetes_node_selectors() {
        use Operator::*;
        let cases: &[(Operator, &[&str], Option<&str>, bool)] = &[
            (In, &["spot", "on-demand"], Some("spot"), true),
            (In, &["spot", "on-demand"], Some("reserved"), false),
            (In, &["spot"], None, false),
            (NotIn, &["spot"], Some("on-demand"), true),
            (NotIn, &["spot"], Some("spot"), false),
            (NotIn, &["spot"], None, true),
            (Exists, &[], Some(""), true),
            (Exists, &[], None, false),
            (DoesNotExist, &[], None, true),
            (DoesNotExist, &[], Some("x"), false),
            (Gt, &["4"], Some("5"), true),
            (Gt, &["4"], Some("4"), false),
            (Gt, &["4"], Some("10"), true),
            (Gt, &["4"], Some("-1"), false),
            (Gt, &["4"], None, false),
            (Gt, &["4"], Some("five"), false),
            (Gt, &["four"], Some("5"), false),
            (Gt, &["4", "6"], Some("5"), false),
            (Gt, &[], Some("5"), false),
            (Lt, &["4"], Some("3"), true),
            (Lt, &["4"], Some("4"), false),
            (Lt, &["4"], None, false),
            (Lt, &["4"], Some("-3"), true),
            (Gte, &["4"], Some("4"), true),
            (Gte, &["4"], Some("5"), true),
            (Gte, &["4"], Some("3"), false),
            (Gte, &["4"], None, false),
            (Gte, &["4"], Some("4.5"), false),
            (Gte, &["0"], Some(""), false),
            (Gte, &["4", "5"], Some("6"), false),
            (Lte, &["8"], Some("8"), true),
            (Lte, &["8"], Some("7"), true),
            (Lte, &["8"], Some("9"), false),
            (Lte, &["8"], None, false),
            (Lte, &["8"], Some("eight"), false),
            (
                Lte,
                &["9223372036854775807"],
                Some("9223372036854775807"),
                true,
            ),
            (
                Gt,
                &["9223372036854775807"],
                Some("9223372036854775807"),
                false,
            ),
        ];
        for (operator, values, label, allowed) in cases {
            let requirement = req(*operator, values);
            assert_eq!(
                requirement.allows(*label),
                *allowed,
                "{} allows {label:?}",
                requirement.describe_allowed()
            );
        }
    }

    #[test]
    fn describes_what_is_allowed() {
        use Operator::*;
        let cases: &[(Operator, &[&str], &str)] = &[
            (In, &["spot", "on-demand"], "In [spot, on-demand]"),
            (NotIn, &["arm64"], "NotIn [arm64]"),
            (Exists, &[], "Exists"),
            (DoesNotExist, &[], "DoesNotExist"),
            (Gt, &["4"], "Gt 4"),
            (Lt, &["8"], "Lt 8"),
            (Gte, &["4"], "Gte 4"),
            (Lte, &["8"], "Lte 8"),
        ];
        for (operator, values, described) in cases {
            assert_eq!(req(*operator, values).describe_allowed(), *described);
        }
    }

    #[test]
    fn parses_karpenter_requirements() {
        let parsed: Vec<Requirement> = serde_yaml::from_str(
            "- key: karpenter.k8s.aws/instance-generation\n  operator: Gt\n  values: [\"4\"]\n\
             - key: karpenter.k8s.aws/instance-family\n  operator: In\n  values: [m5, m6i, c5]\n  minValues: 2\n\
             - key: example.com/unset\n  operator: DoesNotExist\n",
        )
        .unwrap();
        assert_eq!(
            parsed[0],
            Requirement {
                key: "karpenter.k8s.aws/instance-generation".into(),
                ..req(Operator::Gt, &["4"])
            }
        );
        assert_eq!(parsed[1].min_values, Some(2));
        assert_eq!(parsed[1].values, ["m5", "m6i", "c5"]);
        assert!(parsed[2].values.is_empty());
        let bounds: Vec<Requirement> = serde_yaml::from_str(
            "- {key: karpenter.k8s.aws/instance-cpu, operator: Gte, values: [\"4\"]}\n\
             - {key: karpenter.k8s.aws/instance-cpu, operator: Lte, values: [\"16\"]}\n",
        )
        .unwrap();
        assert_eq!(
            bounds.iter().map(|r| r.operator).collect::<Vec<_>>(),
            [Operator::Gte, Operator::Lte]
        );
        let err = serde_yaml::from_str::<Requirement>("key: a\noperator: Equals\n").unwrap_err();
        assert!(
            err.to_string().contains("unknown variant `Equals`"),
            "{err}"
        );
    }

    /// A type offered on demand in the given zones.
    fn offered(name: &str, zones: &[&str]) -> InstanceType {
        use super::super::catalog::{CapacityType, Offering};
        InstanceType {
            offerings: zones
                .iter()
                .map(|zone| Offering {
                    zone: (*zone).to_owned(),
                    capacity_type: CapacityType::OnDemand,
                    price: 0.1,
                    price_estimated: false,
                    available: true,
                })
                .collect(),
            ..InstanceType::example(name)
        }
    }

    fn with_min(key: &str, operator: Operator, values: &[&str], min: i32) -> Requirement {
        Requirement {
            key: key.to_owned(),
            min_values: Some(min),
            ..req(operator, values)
        }
    }

    #[test]
    fn min_values_count_distinct_values_among_the_candidates() {
        let family = labels::INSTANCE_FAMILY;
        let candidates = [
            offered("c5.large", &["z-a"]),
            offered("c5.xlarge", &["z-a"]),
            offered("m5.large", &["z-a", "z-b"]),
            offered("r5.large", &["z-b"]),
        ];
        let all: Vec<&InstanceType> = candidates.iter().collect();
        let families = &["c5", "m5", "r5", "c6i", "m6i"];
        // (requirements, candidates used, shortfalls as (key, minValues, got))
        type Case<'a> = (
            Vec<Requirement>,
            &'a [&'a InstanceType],
            Vec<(&'a str, i32, usize)>,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                vec![with_min(family, Operator::In, families, 3)],
                &all,
                vec![],
            ),
            (
                vec![with_min(family, Operator::In, families, 5)],
                &all,
                vec![(family, 5, 3)],
            ),
            // c5.large and c5.xlarge are one family.
            (
                vec![with_min(family, Operator::In, families, 2)],
                &all[..2],
                vec![(family, 2, 1)],
            ),
            (
                vec![with_min(labels::INSTANCE_TYPE, Operator::Exists, &[], 4)],
                &all,
                vec![],
            ),
            // Only values the requirement allows count.
            (
                vec![with_min(family, Operator::NotIn, &["c5"], 3)],
                &all,
                vec![(family, 3, 2)],
            ),
            // Offering labels count the zones of the candidates' available offerings.
            (
                vec![with_min(labels::ZONE, Operator::In, &["z-a", "z-b"], 2)],
                &all[..2],
                vec![(labels::ZONE, 2, 1)],
            ),
            (
                vec![with_min(labels::ZONE, Operator::In, &["z-a", "z-b"], 2)],
                &all,
                vec![],
            ),
            // A label no candidate carries counts nothing.
            (
                vec![with_min(
                    labels::INSTANCE_GPU_NAME,
                    Operator::Exists,
                    &[],
                    1,
                )],
                &all,
                vec![(labels::INSTANCE_GPU_NAME, 1, 0)],
            ),
            // Every short requirement is reported, in order; ones without minValues are ignored.
            (
                vec![
                    req(Operator::In, &["x"]),
                    with_min(family, Operator::In, families, 4),
                    with_min(labels::INSTANCE_TYPE, Operator::Exists, &[], 5),
                ],
                &all,
                vec![(family, 4, 3), (labels::INSTANCE_TYPE, 5, 4)],
            ),
            (vec![req(Operator::In, &["x"])], &[], vec![]),
        ];
        for (requirements, used, expected) in cases {
            let result = min_values_met(&requirements, used.iter().copied());
            let got: Vec<(String, i32, usize)> = match &result {
                Ok(()) => vec![],
                Err(MinValuesUnmet(short)) => short
                    .iter()
                    .map(|s| (s.key.clone(), s.min_values, s.got))
                    .collect(),
            };
            let expected: Vec<(String, i32, usize)> = expected
                .into_iter()
                .map(|(k, m, g)| (k.to_owned(), m, g))
                .collect();
            assert_eq!(got, expected, "{requirements:?}");
        }
    }

    #[test]
    fn unmet_min_values_read_like_karpenters_reason() {
        let unmet = MinValuesUnmet(vec![
            MinValuesShortfall {
                key: labels::INSTANCE_FAMILY.into(),
                min_values: 5,
                got: 3,
            },
            MinValuesShortfall {
                key: labels::INSTANCE_TYPE.into(),
                min_values: 10,
                got: 4,
            },
        ]);
        assert_eq!(
            unmet.to_string(),
            "minValues requirement is not met for label(s) \
             (label: karpenter.k8s.aws/instance-family, minValues: 5, got 3), \
             (label: node.kubernetes.io/instance-type, minValues: 10, got 4)"
        );
    }
}
