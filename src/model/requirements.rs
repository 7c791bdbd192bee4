//! Node label requirements of a NodePool, and what node label values they allow.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

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

/// Node selector operators (core v1 `NodeSelectorOperator`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
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
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Requirement {
    /// Whether a node carrying `value` for this label (`None`: no such label) satisfies the
    /// requirement, with Kubernetes' node selector semantics: `NotIn` and `DoesNotExist` allow an
    /// absent label; `Gt`/`Lt` need exactly one value and compare both sides as integers, so an
    /// absent or non-integer label fails.
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
            (Operator::Gt | Operator::Lt, None) => false,
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
            Operator::Gt | Operator::Lt => format!("{} {}", self.operator, self.values.join(", ")),
        }
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
        let err = serde_yaml::from_str::<Requirement>("key: a\noperator: Equals\n").unwrap_err();
        assert!(
            err.to_string().contains("unknown variant `Equals`"),
            "{err}"
        );
    }
}
