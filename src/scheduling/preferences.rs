//! Scheduling preferences as Karpenter treats them: every preference is first planned as if it
//! were required, and relaxed one at a time, in Karpenter's order, only for pods that cannot be
//! placed with it (`pkg/controllers/provisioning/scheduling/preferences.go`):
//! 1. preferred pod affinity terms, heaviest first;
//! 2. preferred pod anti-affinity terms, heaviest first;
//! 3. preferred node affinity terms: the heaviest one left is required, the others ignored; it is
//!    dropped, heaviest first, to try the lighter ones;
//! 4. `ScheduleAnyway` topology spreads.
//!
//! The kube-scheduler scores preferences; it never refuses a node for one. A new node that keeps
//! them gives the scheduler the node it would score best.

use k8s_openapi::api::core::v1::{Affinity, WeightedPodAffinityTerm};

use super::pod::{Constraints, PodTerm, operator, pod_term};
use super::volumes::normalized_key;
use crate::model::Requirement;

/// One preference of a pod, in the order it is relaxed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Preference {
    PodAffinity(PodTerm),
    PodAntiAffinity(PodTerm),
    /// A preferred node affinity term's requirements, ANDed.
    NodeAffinity(Vec<Requirement>),
    /// Drops the pod's `ScheduleAnyway` spreads.
    ScheduleAnywaySpreads,
}

/// The preferences of a pod's `affinity` in relaxation order (spreads are added by the caller,
/// which reads them). Terms on topologies the planner does not know, or with operators
/// Kubernetes does not have, are left out, as the planner leaves out such required terms.
pub fn read(affinity: Option<&Affinity>, namespace: &str) -> Vec<Preference> {
    let mut out = Vec::new();
    let Some(affinity) = affinity else {
        return out;
    };
    let weighted = |terms: Option<&Vec<WeightedPodAffinityTerm>>| -> Vec<PodTerm> {
        let mut terms: Vec<&WeightedPodAffinityTerm> = terms.into_iter().flatten().collect();
        // Heaviest first; equal weights keep their order.
        terms.sort_by_key(|t| std::cmp::Reverse(t.weight));
        terms
            .into_iter()
            .filter_map(|t| pod_term(&t.pod_affinity_term, namespace))
            .collect()
    };
    if let Some(a) = &affinity.pod_affinity {
        out.extend(
            weighted(
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref(),
            )
            .into_iter()
            .map(Preference::PodAffinity),
        );
    }
    if let Some(a) = &affinity.pod_anti_affinity {
        out.extend(
            weighted(
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref(),
            )
            .into_iter()
            .map(Preference::PodAntiAffinity),
        );
    }
    if let Some(a) = &affinity.node_affinity {
        let mut terms: Vec<_> = a
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
            .collect();
        terms.sort_by_key(|t| std::cmp::Reverse(t.weight));
        for term in terms {
            let requirements: Option<Vec<Requirement>> = term
                .preference
                .match_expressions
                .iter()
                .flatten()
                .map(|e| {
                    Some(Requirement {
                        key: normalized_key(&e.key).to_owned(),
                        operator: operator(&e.operator)?,
                        values: e.values.clone().unwrap_or_default(),
                        min_values: None,
                    })
                })
                .collect();
            if let Some(requirements) = requirements.filter(|r| !r.is_empty()) {
                out.push(Preference::NodeAffinity(requirements));
            }
        }
    }
    out
}

impl Constraints {
    /// These constraints with every preference still held planned as required: preferred pod
    /// (anti-)affinity terms join the required ones, the heaviest preferred node affinity term is
    /// ANDed into every required term, and `ScheduleAnyway` spreads stay (the planner honours
    /// them). Preferences are then cleared, so equal results group together.
    pub fn with_preferences_required(&self) -> Constraints {
        let mut c = self.clone();
        let preferences = std::mem::take(&mut c.preferences);
        let mut node_term_used = false;
        let mut keep_soft_spreads = false;
        for p in preferences {
            match p {
                Preference::PodAffinity(t) => c.affinity.push(t),
                Preference::PodAntiAffinity(t) => c.anti_affinity.push(t),
                Preference::NodeAffinity(reqs) if !node_term_used => {
                    node_term_used = true;
                    if c.node_affinity.is_empty() {
                        c.node_affinity.push(reqs);
                    } else {
                        for term in &mut c.node_affinity {
                            term.extend(reqs.iter().cloned());
                        }
                    }
                }
                Preference::NodeAffinity(_) => {}
                Preference::ScheduleAnywaySpreads => keep_soft_spreads = true,
            }
        }
        if !keep_soft_spreads {
            c.spreads.retain(|s| s.required);
        }
        c.affinity.sort();
        c.affinity.dedup();
        c.anti_affinity.sort();
        c.anti_affinity.dedup();
        c
    }

    /// The same constraints with their first preference relaxed; `None` when none is left.
    pub fn relaxed(&self) -> Option<Constraints> {
        if self.preferences.is_empty() {
            return None;
        }
        let mut c = self.clone();
        c.preferences.remove(0);
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Operator;
    use crate::scheduling::pod::{PendingPod, Topology};
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn pending(affinity: serde_json::Value, spreads: serde_json::Value) -> PendingPod {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "x"}],
                     "affinity": affinity, "topologySpreadConstraints": spreads}
        }))
        .unwrap();
        PendingPod::from_pod(&pod)
    }

    fn node_pref(weight: i32, key: &str, value: &str) -> serde_json::Value {
        json!({"weight": weight, "preference": {"matchExpressions": [
            {"key": key, "operator": "In", "values": [value]}]}})
    }

    fn pod_pref(weight: i32, key: &str, app: &str) -> serde_json::Value {
        json!({"weight": weight, "podAffinityTerm": {"topologyKey": key,
            "labelSelector": {"matchLabels": {"app": app}}}})
    }

    #[test]
    fn preferences_are_read_in_karpenters_relaxation_order() {
        let p = pending(
            json!({
                "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    node_pref(1, "zone-light", "a"), node_pref(50, "zone-heavy", "b")]},
                "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    pod_pref(10, "kubernetes.io/hostname", "anti-light"),
                    pod_pref(90, "topology.kubernetes.io/zone", "anti-heavy"),
                    pod_pref(90, "example.com/rack", "unknown-topology")]},
                "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    pod_pref(5, "kubernetes.io/hostname", "cache")]}
            }),
            json!([{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {"app": "web"}}}]),
        );
        let kinds: Vec<String> = p
            .constraints
            .preferences
            .iter()
            .map(|p| match p {
                Preference::PodAffinity(t) => format!("affinity {}", t.selector.describe()),
                Preference::PodAntiAffinity(t) => format!("anti {}", t.selector.describe()),
                Preference::NodeAffinity(r) => format!("node {}", r[0].key),
                Preference::ScheduleAnywaySpreads => "soft spreads".to_owned(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "affinity app=cache",
                "anti app=anti-heavy",
                "anti app=anti-light",
                "node zone-heavy",
                "node zone-light",
                "soft spreads"
            ]
        );
    }

    #[test]
    fn preferences_held_are_required_and_relaxing_drops_them_one_by_one() {
        let p = pending(
            json!({
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "arch", "operator": "In", "values": ["arm64"]}]},
                        {"matchExpressions": [{"key": "arch", "operator": "In", "values": ["amd64"]}]}]},
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        node_pref(1, "light", "x"), node_pref(2, "heavy", "y")]},
                "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    pod_pref(1, "kubernetes.io/hostname", "web")]}
            }),
            json!([{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {"app": "web"}}}]),
        );
        let strict = p.constraints.with_preferences_required();
        assert!(strict.preferences.is_empty());
        assert_eq!(strict.anti_affinity.len(), 1);
        assert_eq!(strict.anti_affinity[0].topology, Topology::Hostname);
        // The heaviest node preference joins each ORed required term; the lighter one waits.
        assert_eq!(strict.node_affinity.len(), 2);
        for term in &strict.node_affinity {
            assert_eq!(term.len(), 2);
            assert_eq!(term[1].key, "heavy");
            assert_eq!(term[1].operator, Operator::In);
        }
        assert_eq!(strict.spreads.len(), 1);

        // 1st relaxation: the anti-affinity goes.
        let r1 = p.constraints.relaxed().unwrap();
        let s1 = r1.with_preferences_required();
        assert!(s1.anti_affinity.is_empty());
        assert_eq!(s1.node_affinity[0][1].key, "heavy");
        // 2nd: the heaviest node preference goes, the lighter one is tried.
        let r2 = r1.relaxed().unwrap();
        assert_eq!(
            r2.with_preferences_required().node_affinity[0][1].key,
            "light"
        );
        // 3rd: no node preference; the required terms are as written.
        let r3 = r2.relaxed().unwrap();
        let s3 = r3.with_preferences_required();
        assert!(s3.node_affinity.iter().all(|t| t.len() == 1));
        assert_eq!(s3.spreads.len(), 1);
        // 4th: the ScheduleAnyway spread goes; then nothing is left to relax.
        let r4 = r3.relaxed().unwrap();
        assert!(r4.with_preferences_required().spreads.is_empty());
        assert!(r4.relaxed().is_none());
    }

    #[test]
    fn a_pod_without_preferences_has_nothing_to_relax() {
        let p = pending(json!(null), json!(null));
        assert!(p.constraints.preferences.is_empty());
        assert!(p.constraints.relaxed().is_none());
        assert_eq!(p.constraints.with_preferences_required(), p.constraints);
    }
}
