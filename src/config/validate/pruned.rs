//! Fields of a Karpenter document that Karpenter's v1 CRD does not have. The apiserver prunes them
//! (a structural schema drops unknown fields), so a manifest holding them applies cleanly and
//! Karpenter never sees them: nodewright loads it too, and says which field it ignored, naming the
//! v1 replacement of the older API fields users carry over.

use super::super::yaml::FieldPath;

/// Fields of older Karpenter APIs, by the path they are found at, and what v1 has instead.
const LEFTOVERS: &[(&str, &str)] = &[
    // v1beta1 NodePool.
    (
        "spec.template.spec.kubelet",
        "a v1beta1 field: Karpenter v1 takes kubelet settings from the EC2NodeClass's spec.kubelet",
    ),
    (
        "spec.disruption.expireAfter",
        "a v1beta1 field: Karpenter v1 has it as spec.template.spec.expireAfter",
    ),
    (
        "spec.template.spec.resources",
        "a v1beta1 field: NodePool templates carry no resource requests in v1",
    ),
    // v1alpha5 Provisioner fields pasted into a NodePool.
    (
        "spec.providerRef",
        "a v1alpha5 Provisioner field: v1 uses spec.template.spec.nodeClassRef",
    ),
    (
        "spec.provider",
        "a v1alpha5 Provisioner field: v1 puts AWS settings in an EC2NodeClass",
    ),
    (
        "spec.requirements",
        "a v1alpha5 Provisioner field: v1 has spec.template.spec.requirements",
    ),
    (
        "spec.taints",
        "a v1alpha5 Provisioner field: v1 has spec.template.spec.taints",
    ),
    (
        "spec.startupTaints",
        "a v1alpha5 Provisioner field: v1 has spec.template.spec.startupTaints",
    ),
    (
        "spec.labels",
        "a v1alpha5 Provisioner field: v1 has spec.template.metadata.labels",
    ),
    (
        "spec.kubeletConfiguration",
        "a v1alpha5 Provisioner field: v1 takes kubelet settings from the EC2NodeClass's spec.kubelet",
    ),
    (
        "spec.ttlSecondsAfterEmpty",
        "a v1alpha5 Provisioner field: v1 has spec.disruption.consolidationPolicy: WhenEmpty with consolidateAfter",
    ),
    (
        "spec.ttlSecondsUntilExpired",
        "a v1alpha5 Provisioner field: v1 has spec.template.spec.expireAfter",
    ),
    (
        "spec.consolidation",
        "a v1alpha5 Provisioner field: v1 has spec.disruption.consolidationPolicy",
    ),
    // v1alpha1 AWSNodeTemplate fields pasted into an EC2NodeClass.
    (
        "spec.subnetSelector",
        "a v1alpha1 AWSNodeTemplate field: v1 has spec.subnetSelectorTerms",
    ),
    (
        "spec.securityGroupSelector",
        "a v1alpha1 AWSNodeTemplate field: v1 has spec.securityGroupSelectorTerms",
    ),
    (
        "spec.amiSelector",
        "a v1alpha1 AWSNodeTemplate field: v1 has spec.amiSelectorTerms",
    ),
    (
        "spec.launchTemplate",
        "a v1alpha1 AWSNodeTemplate field: Karpenter no longer launches from your own launch templates",
    ),
];

/// Whether an ignored key is one nodewright ignores silently: the document's head, its `status` and
/// the parts of `metadata` it does not read (`uid`, `managedFields`, ... of exported manifests).
pub(crate) fn is_silent(path: &FieldPath) -> bool {
    matches!(
        path.first_key(),
        Some("apiVersion" | "kind" | "metadata" | "status")
    )
}

/// The warning for an ignored field of a `kind` document.
pub(crate) fn message(kind: &str, path: &FieldPath) -> String {
    let pattern = path.pattern();
    match LEFTOVERS.iter().find(|(at, _)| *at == pattern) {
        Some((_, hint)) => format!(
            "not a field of Karpenter's v1 {kind} ({hint}); the apiserver prunes it and nodewright ignores it"
        ),
        None => format!(
            "not a field of Karpenter's v1 {kind} (check the spelling); the apiserver prunes it and nodewright ignores it"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_v1_replacement_of_old_fields() {
        let kubelet = message("NodePool", &FieldPath::of("spec.template.spec.kubelet"));
        assert!(
            kubelet.contains("v1beta1 field: Karpenter v1 takes kubelet settings from the EC2NodeClass's spec.kubelet"),
            "{kubelet}"
        );
        let typo = message(
            "EC2NodeClass",
            &FieldPath::of("spec.amiSelectorTerms").index(2).key("alais"),
        );
        assert!(typo.contains("(check the spelling)"), "{typo}");
        assert!(is_silent(&FieldPath::of("metadata.uid")));
        assert!(is_silent(&FieldPath::of("status.conditions")));
        assert!(!is_silent(&FieldPath::of("spec.template.metadata.uid")));
    }
}
