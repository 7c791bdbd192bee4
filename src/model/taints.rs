//! Node taints as a NodePool declares them, and how pod tolerations match them.

use std::fmt;

use k8s_openapi::api::core::v1::Toleration;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

/// A taint a NodePool puts on its nodes (core v1 `Taint`, as in `spec.template.spec.taints`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "TaintFields")]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub effect: TaintEffect,
}

/// The wire form of [`Taint`]: it also accepts `timeAdded`, which users paste from live Node objects
/// and which means nothing in a template.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TaintFields {
    key: String,
    #[serde(default)]
    value: Option<String>,
    effect: TaintEffect,
    #[serde(default, rename = "timeAdded")]
    _time_added: Option<IgnoredAny>,
}

impl From<TaintFields> for Taint {
    fn from(fields: TaintFields) -> Self {
        Self {
            key: fields.key,
            value: fields.value,
            effect: fields.effect,
        }
    }
}

/// What a taint does to pods that do not tolerate it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl TaintEffect {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoSchedule => "NoSchedule",
            Self::PreferNoSchedule => "PreferNoSchedule",
            Self::NoExecute => "NoExecute",
        }
    }
}

impl fmt::Display for TaintEffect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Taint {
    /// The taint's value, with a missing value read as `""` as Kubernetes does.
    pub fn value_or_empty(&self) -> &str {
        self.value.as_deref().unwrap_or("")
    }

    /// Kubernetes' `Toleration.ToleratesTaint`: an empty toleration effect matches every effect, an
    /// empty key matches every key, the operator defaults to `Equal` (values compared, missing = `""`)
    /// and `Exists` matches any value. `Gt`/`Lt` (feature gate `TaintTolerationComparisonOperators`)
    /// compare the values as integers: `Gt` tolerates a taint whose value is greater than the
    /// toleration's. Any other operator tolerates nothing.
    pub fn is_tolerated_by(&self, toleration: &Toleration) -> bool {
        let effect = toleration.effect.as_deref().unwrap_or("");
        if !effect.is_empty() && effect != self.effect.as_str() {
            return false;
        }
        let key = toleration.key.as_deref().unwrap_or("");
        if !key.is_empty() && key != self.key {
            return false;
        }
        let wanted = toleration.value.as_deref().unwrap_or("");
        match toleration.operator.as_deref().unwrap_or("") {
            "" | "Equal" => wanted == self.value_or_empty(),
            "Exists" => true,
            "Gt" => {
                compare_integers(self.value_or_empty(), wanted) == Some(std::cmp::Ordering::Greater)
            }
            "Lt" => {
                compare_integers(self.value_or_empty(), wanted) == Some(std::cmp::Ordering::Less)
            }
            _ => false,
        }
    }

    /// The narrowest toleration of this taint: `Equal` to its value when it has one, else `Exists`.
    pub fn to_toleration(&self) -> Toleration {
        let value = self.value.as_deref().filter(|v| !v.is_empty());
        Toleration {
            key: Some(self.key.clone()),
            operator: Some(if value.is_some() { "Equal" } else { "Exists" }.to_owned()),
            value: value.map(str::to_owned),
            effect: Some(self.effect.as_str().to_owned()),
            toleration_seconds: None,
        }
    }
}

fn compare_integers(left: &str, right: &str) -> Option<std::cmp::Ordering> {
    Some(left.parse::<i64>().ok()?.cmp(&right.parse::<i64>().ok()?))
}

/// `key=value:Effect`, or `key:Effect` without a value, as `kubectl taint` writes it.
impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value.as_deref().filter(|v| !v.is_empty()) {
            Some(value) => write!(f, "{}={}:{}", self.key, value, self.effect),
            None => write!(f, "{}:{}", self.key, self.effect),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: Option<&str>, effect: TaintEffect) -> Taint {
        Taint {
            key: key.to_owned(),
            value: value.map(str::to_owned),
            effect,
        }
    }

    fn toleration(
        key: Option<&str>,
        operator: Option<&str>,
        value: Option<&str>,
        effect: Option<&str>,
    ) -> Toleration {
        Toleration {
            key: key.map(str::to_owned),
            operator: operator.map(str::to_owned),
            value: value.map(str::to_owned),
            effect: effect.map(str::to_owned),
            toleration_seconds: None,
        }
    }

    #[test]
    fn tolerates_taint_like_kubernetes() {
        use TaintEffect::*;
        let pool = taint("nodewright.io/pool", Some("default"), NoSchedule);
        let bare = taint("dedicated", None, NoExecute);
        let sla = taint("node.kubernetes.io/sla", Some("950"), NoSchedule);
        let cases = [
            // (what, taint, toleration, tolerated)
            (
                "equal key, value and effect",
                &pool,
                toleration(
                    Some("nodewright.io/pool"),
                    Some("Equal"),
                    Some("default"),
                    Some("NoSchedule"),
                ),
                true,
            ),
            (
                "operator defaults to Equal",
                &pool,
                toleration(
                    Some("nodewright.io/pool"),
                    None,
                    Some("default"),
                    Some("NoSchedule"),
                ),
                true,
            ),
            (
                "Equal with another value",
                &pool,
                toleration(
                    Some("nodewright.io/pool"),
                    Some("Equal"),
                    Some("other"),
                    Some("NoSchedule"),
                ),
                false,
            ),
            (
                "Equal without a value against a valued taint",
                &pool,
                toleration(Some("nodewright.io/pool"), None, None, Some("NoSchedule")),
                false,
            ),
            (
                "Equal without a value against a bare taint",
                &bare,
                toleration(Some("dedicated"), Some("Equal"), None, None),
                true,
            ),
            (
                "Equal with empty value against a bare taint",
                &bare,
                toleration(Some("dedicated"), None, Some(""), None),
                true,
            ),
            (
                "empty effect matches every effect",
                &pool,
                toleration(Some("nodewright.io/pool"), Some("Exists"), None, None),
                true,
            ),
            (
                "empty effect string matches every effect",
                &pool,
                toleration(Some("nodewright.io/pool"), Some("Exists"), None, Some("")),
                true,
            ),
            (
                "other effect",
                &pool,
                toleration(
                    Some("nodewright.io/pool"),
                    Some("Exists"),
                    None,
                    Some("NoExecute"),
                ),
                false,
            ),
            (
                "other key",
                &pool,
                toleration(Some("other"), Some("Exists"), None, None),
                false,
            ),
            (
                "Exists with empty key matches every taint",
                &pool,
                toleration(None, Some("Exists"), None, None),
                true,
            ),
            (
                "Exists with empty key still checks the effect",
                &pool,
                toleration(None, Some("Exists"), None, Some("NoExecute")),
                false,
            ),
            (
                "empty key with Equal compares values",
                &pool,
                toleration(None, None, Some("default"), None),
                true,
            ),
            (
                "empty key with Equal and another value",
                &pool,
                toleration(None, None, Some("x"), None),
                false,
            ),
            (
                "unknown operator tolerates nothing",
                &pool,
                toleration(
                    Some("nodewright.io/pool"),
                    Some("Matches"),
                    Some("default"),
                    None,
                ),
                false,
            ),
            (
                "Gt: taint value greater",
                &sla,
                toleration(
                    Some("node.kubernetes.io/sla"),
                    Some("Gt"),
                    Some("750"),
                    None,
                ),
                true,
            ),
            (
                "Gt: taint value smaller",
                &sla,
                toleration(
                    Some("node.kubernetes.io/sla"),
                    Some("Gt"),
                    Some("999"),
                    None,
                ),
                false,
            ),
            (
                "Lt: taint value smaller",
                &sla,
                toleration(
                    Some("node.kubernetes.io/sla"),
                    Some("Lt"),
                    Some("999"),
                    None,
                ),
                true,
            ),
            (
                "Gt: not an integer",
                &pool,
                toleration(Some("nodewright.io/pool"), Some("Gt"), Some("1"), None),
                false,
            ),
        ];
        for (what, taint, toleration, tolerated) in cases {
            assert_eq!(
                taint.is_tolerated_by(&toleration),
                tolerated,
                "{what}: {taint} by {toleration:?}"
            );
        }
    }

    #[test]
    fn minimal_toleration_tolerates_its_taint_only() {
        use TaintEffect::*;
        let cases = [
            (
                taint("nodewright.io/pool", Some("default"), NoSchedule),
                Some("Equal"),
                Some("default"),
            ),
            (taint("dedicated", None, NoExecute), Some("Exists"), None),
            (
                taint("dedicated", Some(""), PreferNoSchedule),
                Some("Exists"),
                None,
            ),
        ];
        for (taint, operator, value) in cases {
            let toleration = taint.to_toleration();
            assert_eq!(toleration.key.as_deref(), Some(taint.key.as_str()));
            assert_eq!(toleration.operator.as_deref(), operator, "{taint}");
            assert_eq!(toleration.value.as_deref(), value, "{taint}");
            assert_eq!(toleration.effect.as_deref(), Some(taint.effect.as_str()));
            assert!(taint.is_tolerated_by(&toleration), "{taint}");
            let other_effect = Taint {
                effect: if taint.effect == NoSchedule {
                    NoExecute
                } else {
                    NoSchedule
                },
                ..taint.clone()
            };
            assert!(!other_effect.is_tolerated_by(&toleration), "{other_effect}");
        }
    }

    #[test]
    fn parses_karpenter_taints_and_ignores_time_added() {
        let taints: Vec<Taint> = serde_yaml::from_str(
            "- key: nodewright.io/pool\n  value: default\n  effect: NoSchedule\n- key: example.com/bare\n  effect: NoExecute\n  timeAdded: \"2024-01-01T00:00:00Z\"\n",
        )
        .unwrap();
        assert_eq!(
            taints[0],
            taint(
                "nodewright.io/pool",
                Some("default"),
                TaintEffect::NoSchedule
            )
        );
        assert_eq!(
            taints[1],
            taint("example.com/bare", None, TaintEffect::NoExecute)
        );
        assert_eq!(
            taints[0].to_string(),
            "nodewright.io/pool=default:NoSchedule"
        );
        assert_eq!(taints[1].to_string(), "example.com/bare:NoExecute");
    }

    #[test]
    fn rejects_unknown_taint_fields_and_effects() {
        let unknown =
            serde_yaml::from_str::<Taint>("key: a\neffect: NoSchedule\noperator: Exists\n")
                .unwrap_err();
        assert!(
            unknown.to_string().contains("unknown field `operator`"),
            "{unknown}"
        );
        let effect = serde_yaml::from_str::<Taint>("key: a\neffect: NoSchedul\n").unwrap_err();
        assert!(
            effect.to_string().contains("unknown variant `NoSchedul`"),
            "{effect}"
        );
    }
}
