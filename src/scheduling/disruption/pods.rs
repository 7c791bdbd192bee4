//! Which of a node's pods a drain evicts, which it leaves, and which hold it (Karpenter's
//! `pkg/controllers/node/termination/terminator`): DaemonSet pods, mirror pods, finished pods
//! and pods that tolerate the disruption taint stay (they would come straight back or are not
//! really there); pods annotated `karpenter.sh/do-not-disrupt: "true"` are not evicted until
//! the node's `terminationGracePeriod` runs out. Critical pods (`system-cluster-critical`,
//! `system-node-critical`) go after the others, so logging and networking outlive the apps.

use k8s_openapi::api::core::v1::Pod;

/// The disruption taint's key (`karpenter.sh/disrupted:NoSchedule`).
pub const DISRUPTED_TAINT: &str = "karpenter.sh/disrupted";
/// The annotation that holds pods and nodes out of voluntary disruption.
pub const DO_NOT_DISRUPT: &str = "karpenter.sh/do-not-disrupt";

/// Why a pod is left on a draining node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Left {
    DaemonSet,
    Mirror,
    Finished,
    ToleratesDisruption,
}

/// What the drain does with a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodDrain {
    /// Not evicted, and not waited for.
    Left(Left),
    /// Already terminating: waited for.
    Terminating,
    /// Annotated do-not-disrupt: waited for, evicted only when the grace period forces it.
    DoNotDisrupt,
    /// To be evicted; `critical` ones after all the others.
    Evict { critical: bool },
}

impl PodDrain {
    /// Whether the node is not drained while this pod is on it.
    pub fn holds(self) -> bool {
        !matches!(self, Self::Left(_))
    }
}

pub fn classify(pod: &Pod) -> PodDrain {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return PodDrain::Left(Left::Finished);
    }
    if pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet" && o.controller == Some(true))
    {
        return PodDrain::Left(Left::DaemonSet);
    }
    let annotations = pod.metadata.annotations.as_ref();
    if annotations.is_some_and(|a| a.contains_key("kubernetes.io/config.mirror")) {
        return PodDrain::Left(Left::Mirror);
    }
    if tolerates_disruption(pod) {
        return PodDrain::Left(Left::ToleratesDisruption);
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return PodDrain::Terminating;
    }
    if annotations
        .and_then(|a| a.get(DO_NOT_DISRUPT))
        .is_some_and(|v| v == "true")
    {
        return PodDrain::DoNotDisrupt;
    }
    let critical = pod
        .spec
        .as_ref()
        .and_then(|s| s.priority_class_name.as_deref())
        .is_some_and(|p| matches!(p, "system-cluster-critical" | "system-node-critical"));
    PodDrain::Evict { critical }
}

/// A toleration that matches `karpenter.sh/disrupted:NoSchedule` (an empty key with `Exists`
/// tolerates every taint).
fn tolerates_disruption(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_ref())
        .is_some_and(|ts| {
            ts.iter().any(|t| {
                let key_matches = match t.key.as_deref() {
                    None | Some("") => t.operator.as_deref() == Some("Exists"),
                    Some(k) => k == DISRUPTED_TAINT,
                };
                let effect_matches =
                    matches!(t.effect.as_deref(), None | Some("") | Some("NoSchedule"));
                key_matches && effect_matches
            })
        })
}

/// A pod's own grace period (`terminationGracePeriodSeconds`, 30 by default).
pub fn grace_seconds(pod: &Pod) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        let mut base =
            json!({"metadata": {"name": "p", "namespace": "n"}, "spec": {"containers": []}});
        json_patch::merge(&mut base, &v);
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn pods_are_sorted_as_karpenter_drains_them() {
        let cases = [
            (json!({}), PodDrain::Evict { critical: false }),
            (
                json!({"spec": {"priorityClassName": "system-node-critical"}}),
                PodDrain::Evict { critical: true },
            ),
            (
                json!({"status": {"phase": "Succeeded"}}),
                PodDrain::Left(Left::Finished),
            ),
            (
                json!({"status": {"phase": "Failed"}}),
                PodDrain::Left(Left::Finished),
            ),
            (
                json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "d", "uid": "u", "controller": true}]}}),
                PodDrain::Left(Left::DaemonSet),
            ),
            (
                json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "d", "uid": "u", "controller": true}]}}),
                PodDrain::Evict { critical: false },
            ),
            (
                json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "x"}}}),
                PodDrain::Left(Left::Mirror),
            ),
            (
                json!({"spec": {"tolerations": [{"key": "karpenter.sh/disrupted", "operator": "Exists", "effect": "NoSchedule"}]}}),
                PodDrain::Left(Left::ToleratesDisruption),
            ),
            (
                json!({"spec": {"tolerations": [{"operator": "Exists"}]}}),
                PodDrain::Left(Left::ToleratesDisruption),
            ),
            (
                json!({"spec": {"tolerations": [{"key": "karpenter.sh/disrupted", "operator": "Exists", "effect": "NoExecute"}]}}),
                PodDrain::Evict { critical: false },
            ),
            (
                json!({"metadata": {"annotations": {"karpenter.sh/do-not-disrupt": "true"}}}),
                PodDrain::DoNotDisrupt,
            ),
            (
                json!({"metadata": {"annotations": {"karpenter.sh/do-not-disrupt": "false"}}}),
                PodDrain::Evict { critical: false },
            ),
            (
                json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z", "annotations": {"karpenter.sh/do-not-disrupt": "true"}}}),
                PodDrain::Terminating,
            ),
        ];
        for (patch, want) in cases {
            assert_eq!(classify(&pod(patch.clone())), want, "{patch}");
        }
        assert!(!PodDrain::Left(Left::DaemonSet).holds());
        assert!(PodDrain::DoNotDisrupt.holds());
        assert_eq!(grace_seconds(&pod(json!({}))), 30);
        assert_eq!(
            grace_seconds(&pod(json!({"spec": {"terminationGracePeriodSeconds": 5}}))),
            5
        );
    }
}
