//! Karpenter v1 manifests as users write them: every field parses, fields the CRD no longer has
//! load with a warning, what Karpenter refuses is refused, and each problem is reported where it
//! is. Manifests live in tests/data/karpenter/.

use std::time::Duration;

use super::*;

const BASE: &str = include_str!("../../tests/data/karpenter/base.yaml");
const EVERY_FIELD: &str = include_str!("../../tests/data/karpenter/every-field.yaml");
const LEFTOVERS: &str = include_str!("../../tests/data/karpenter/v1beta1-leftovers.yaml");

/// 1-based line of the first line, from the one holding byte `from` on, whose trimmed text starts
/// with `needle`; failing that, the first such line of the document holding `from` (for errors
/// that point at a parent of the edit).
fn line_of(text: &str, from: usize, needle: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let here = text[..from].matches('\n').count();
    let document_start = text[..from]
        .rfind("\n---\n")
        .map_or(0, |at| text[..=at].matches('\n').count() + 1);
    let find =
        |start: usize| (start..lines.len()).find(|&i| lines[i].trim_start().starts_with(needle));
    find(here)
        .or_else(|| find(document_start))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("no line starting with {needle:?}"))
}

/// The text with `from` replaced by `to` once, and the offset of the edit.
fn edit(from: &str, to: &str) -> (String, usize) {
    let at = BASE
        .find(from)
        .unwrap_or_else(|| panic!("{from:?} is not in base.yaml"));
    (BASE.replacen(from, to, 1), at)
}

#[test]
fn the_base_manifests_load_without_warnings() {
    let config = Config::parse(BASE, "base.yaml").unwrap();
    let warnings: Vec<(&str, WarningReason)> = config
        .warnings
        .iter()
        .map(|w| (w.path.as_str(), w.reason))
        .collect();
    assert_eq!(warnings, []);
}

#[test]
fn every_field_of_the_v1_crds_parses_into_typed_fields() {
    let config = Config::parse(EVERY_FIELD, "every-field.yaml").unwrap();
    let pool = config.node_pool("general-purpose").unwrap();
    let spec = &pool.spec.template.spec;
    assert_eq!(spec.requirements[2].min_values, Some(2));
    assert_eq!(spec.requirements[4].operator.as_str(), "Lte");
    assert_eq!(spec.startup_taints[0].key, "example.com/another-taint");
    assert_eq!(
        spec.expire_after,
        Some(DurationOrNever::After(Duration::from_secs(720 * 3600)))
    );
    assert_eq!(
        spec.termination_grace_period,
        Some(GoDuration(Duration::from_secs(48 * 3600)))
    );
    let budget = &pool.spec.disruption.budgets[1];
    assert_eq!(budget.nodes, "0");
    assert_eq!(budget.schedule.as_deref(), Some("0 9 * * mon-fri"));
    assert_eq!(
        budget.duration,
        Some(GoDuration(Duration::from_secs(8 * 3600)))
    );
    assert_eq!(
        budget.reasons,
        [DisruptionReason::Drifted, DisruptionReason::Underutilized]
    );
    assert_eq!(pool.spec.limits["nvidia.com/gpu"].0, "4");
    assert_eq!(pool.spec.weight, Some(10));
    let fixed = config.node_pool("static").unwrap();
    assert_eq!(fixed.spec.replicas, Some(3));
    assert_eq!(fixed.spec.limits["nodes"].0, "5");
    assert_eq!(fixed.spec.disruption, Disruption::crd_default());

    let class = &config.node_classes["default"].spec;
    let kubelet = class.kubelet.as_ref().unwrap();
    assert_eq!(
        (kubelet.pods_per_core, kubelet.max_pods),
        (Some(2), Some(20))
    );
    assert_eq!(
        kubelet.eviction_soft_grace_period["nodefs.available"],
        GoDuration(Duration::from_secs(90))
    );
    assert_eq!(kubelet.cluster_dns, ["10.0.1.100"]);
    assert_eq!(class.ami_selector_terms.len(), 4);
    assert_eq!(
        class.capacity_reservation_selector_terms[0].instance_match_criteria,
        Some(InstanceMatchCriteria::Targeted)
    );
    assert_eq!(
        class.network_interfaces[1],
        NetworkInterface {
            network_card_index: 1,
            device_index: 0,
            interface_type: InterfaceType::EfaOnly
        }
    );
    assert_eq!(class.ip_prefix_count, Some(2));
    assert_eq!(
        class.connection_tracking,
        Some(ConnectionTracking {
            tcp_established_timeout: Some(432_000),
            udp_stream_timeout: Some(180),
            udp_timeout: Some(30),
        })
    );
    assert_eq!(
        class.cpu_options.as_ref().unwrap().nested_virtualization,
        Some(EnabledOrDisabled::Enabled)
    );
    assert_eq!(
        class
            .placement_group_selector
            .as_ref()
            .unwrap()
            .name
            .as_deref(),
        Some("my-cluster-pg")
    );
    let ebs = class.block_device_mappings[0].ebs.as_ref().unwrap();
    assert_eq!(ebs.volume_initialization_rate, Some(100));
    assert_eq!(
        class.instance_store_policy,
        Some(InstanceStorePolicy::RAID0)
    );
    assert_eq!(class.associate_public_ip_address, Some(false));
    assert_eq!(class.detailed_monitoring, Some(true));
    assert!(class.context.as_deref().unwrap().contains(":outpost/"));
}

#[test]
fn fields_not_acted_on_are_warned_once_each_where_they_are() {
    let config = Config::parse(EVERY_FIELD, "every-field.yaml").unwrap();
    let at =
        |needle: &str, after: &str| line_of(EVERY_FIELD, EVERY_FIELD.find(after).unwrap(), needle);
    let class = "kind: EC2NodeClass\nmetadata";
    let expected: Vec<(usize, &str, usize)> = vec![
        (
            1,
            "spec.template.metadata.annotations",
            at("annotations:", "labels:\n        team"),
        ),
        (2, "spec.replicas", at("replicas: 3", "name: static")),
        (
            3,
            "spec.amiSelectorTerms[3].ssmParameter",
            at("- ssmParameter:", class),
        ),
        (
            3,
            "spec.capacityReservationSelectorTerms",
            at("capacityReservationSelectorTerms:", class),
        ),
        (
            3,
            "spec.blockDeviceMappings[0].ebs.volumeInitializationRate",
            at("volumeInitializationRate:", class),
        ),
        (
            3,
            "spec.instanceStorePolicy",
            at("instanceStorePolicy:", class),
        ),
        (3, "spec.networkInterfaces", at("networkInterfaces:", class)),
        (3, "spec.ipPrefixCount", at("ipPrefixCount:", class)),
        (
            3,
            "spec.connectionTracking",
            at("connectionTracking:", class),
        ),
        (3, "spec.cpuOptions", at("cpuOptions:", class)),
        (
            3,
            "spec.placementGroupSelector",
            at("placementGroupSelector:", class),
        ),
    ];
    let actual: Vec<(usize, &str, usize)> = config
        .warnings
        .iter()
        .map(|w| (w.document, w.path.as_str(), w.line.unwrap()))
        .collect();
    assert_eq!(actual, expected);
    for warning in &config.warnings {
        assert_eq!(warning.reason, WarningReason::NotActedOn, "{warning}");
        assert!(
            warning.message.starts_with("parsed, not acted on: "),
            "{warning}"
        );
        assert!(!warning.to_string().contains('\n'), "{warning}");
    }
}

#[test]
fn fields_the_v1_crd_lacks_are_pruned_with_a_warning() {
    let config = Config::parse(LEFTOVERS, "leftovers.yaml").unwrap();
    let at = |needle: &str, after: &str| line_of(LEFTOVERS, LEFTOVERS.find(after).unwrap(), needle);
    let class = "kind: EC2NodeClass";
    let expected = [
        (
            WarningReason::Pruned,
            "spec.template.spec.requirements[0].minValue",
            at("minValue: 2", "kind: NodePool"),
            "(check the spelling)",
        ),
        (
            WarningReason::Pruned,
            "spec.template.spec.kubelet",
            at("kubelet:", "kind: NodePool"),
            "v1beta1 field: Karpenter v1 takes kubelet settings from the EC2NodeClass's spec.kubelet",
        ),
        (
            WarningReason::Pruned,
            "spec.disruption.expireAfter",
            at("expireAfter:", "kind: NodePool"),
            "v1beta1 field: Karpenter v1 has it as spec.template.spec.expireAfter",
        ),
        (
            WarningReason::Pruned,
            "spec.kubelet.maxPod",
            at("maxPod: 20", class),
            "(check the spelling)",
        ),
        (
            WarningReason::Pruned,
            "spec.detailedMonitorng",
            at("detailedMonitorng:", class),
            "(check the spelling)",
        ),
        (
            WarningReason::Pruned,
            "spec.subnetSelector",
            at("subnetSelector:", class),
            "v1alpha1 AWSNodeTemplate field: v1 has spec.subnetSelectorTerms",
        ),
    ];
    assert_eq!(
        config.warnings.len(),
        expected.len(),
        "{:#?}",
        config.warnings
    );
    for (warning, (reason, path, line, message)) in config.warnings.iter().zip(expected) {
        assert_eq!(
            (warning.reason, warning.path.as_str(), warning.line),
            (reason, path, Some(line)),
            "{warning}"
        );
        assert!(warning.message.contains(message), "{warning}");
    }
    // The pruned fields took no effect.
    let pool = config.node_pool("default").unwrap();
    assert_eq!(pool.spec.template.spec.requirements[0].min_values, None);
    assert_eq!(pool.spec.template.spec.expire_after, None);
    assert_eq!(
        config.node_classes["default"].spec.kubelet,
        Some(Default::default())
    );
}

#[test]
fn unknown_fields_of_the_policy_are_still_refused() {
    let text = format!(
        "{BASE}---\napiVersion: nodewright.io/v1alpha1\nkind: Policy\nmetadata:\n  name: default\nspec:\n  rules:\n    - nodePool: default\n      namespace: [team-a]\n"
    );
    let err = Config::parse(&text, "policy.yaml").unwrap_err();
    assert_eq!(
        err.path.as_deref(),
        Some("spec.rules[0].namespace"),
        "{err}"
    );
    assert!(
        err.message.starts_with("unknown field `namespace`"),
        "{err}"
    );
    let top = format!(
        "{BASE}---\napiVersion: nodewright.io/v1alpha1\nkind: Policy\nmetadata:\n  name: p\nspec: {{}}\nextra: 1\n"
    );
    let err = Config::parse(&top, "policy.yaml").unwrap_err();
    assert!(err.message.starts_with("unknown field `extra`"), "{err}");
}

/// One edit of base.yaml each that Karpenter refuses: the path, the start of the message, and the
/// line (the first line of the edited document, from the edit on, starting with the needle; for
/// a missing field, from the document's start).
#[test]
fn what_karpenter_refuses_is_refused_where_it_is() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        // EC2NodeClass: role and instance profile.
        ("role: KarpenterNodeRole-my-cluster", "role: KarpenterNodeRole-my-cluster\n  instanceProfile: KarpenterNodeInstanceProfile", "spec.instanceProfile", "set either role or instanceProfile, not both", "instanceProfile:"),
        ("role: KarpenterNodeRole-my-cluster", "userData: echo", "spec", "one of role or instanceProfile is required", "spec:"),
        ("role: KarpenterNodeRole-my-cluster", "role: \"\"", "spec.role", "role cannot be empty", "role:"),
        // AMI terms.
        ("- alias: al2023@latest", "- id: ami-0123456789abcdef0", "spec", "amiFamily is required unless an amiSelectorTerm uses an alias", "spec:"),
        ("- alias: al2023@latest", "- alias: al2023@latest\n      id: ami-0123", "spec.amiSelectorTerms[0].alias", "'alias' is mutually exclusive, cannot be set with a combination of other fields", "- alias:"),
        ("- alias: al2023@latest", "- alias: al2023@latest\n    - name: my-ami", "spec.amiSelectorTerms[0].alias", "'alias' is mutually exclusive, cannot be set with a combination of other amiSelectorTerms", "- alias:"),
        ("- alias: al2023@latest", "- alias: windows2022@v1", "spec.amiSelectorTerms[0].alias", "windows families may only specify version 'latest'", "- alias:"),
        ("- alias: al2023@latest", "- alias: AL2023@latest", "spec.amiSelectorTerms[0].alias", "alias must be family@version with family al2, al2023", "- alias:"),
        ("- alias: al2023@latest", "- alias: al2023@latest\n  amiFamily: Bottlerocket", "spec.amiFamily", "amiFamily Bottlerocket contradicts the alias \"al2023@latest\"", "amiFamily:"),
        ("- alias: al2023@latest", "- id: ami-0123\n      name: my-ami\n  amiFamily: AL2023", "spec.amiSelectorTerms[0].id", "'id' is mutually exclusive", "- id:"),
        ("- alias: al2023@latest", "- owner: \"123456789012\"\n  amiFamily: AL2023", "spec.amiSelectorTerms[0]", "a term needs one of alias, id, name, tags or ssmParameter", "- owner:"),
        // Subnet, security group and capacity reservation terms.
        ("  subnetSelectorTerms:\n    - tags:", "  subnetSelectorTerms:\n    - id: subnet-0a1b2c\n      tags:", "spec.subnetSelectorTerms[0].id", "'id' is mutually exclusive, cannot be set with tags", "- id: subnet"),
        ("  subnetSelectorTerms:\n    - tags:", "  subnetSelectorTerms:\n    - id: my-subnet\n    - tags:", "spec.subnetSelectorTerms[0].id", "id must look like subnet-0123abcd", "- id: my-subnet"),
        ("  securityGroupSelectorTerms:\n    - tags:", "  securityGroupSelectorTerms:\n    - name: nodes\n      tags:", "spec.securityGroupSelectorTerms[0].name", "'name' is mutually exclusive", "- name: nodes"),
        ("  tags:\n    team: platform", "  capacityReservationSelectorTerms:\n    - ownerID: \"123456789012\"", "spec.capacityReservationSelectorTerms[0]", "a term needs one of tags, id or instanceMatchCriteria", "- ownerID:"),
        ("  tags:\n    team: platform", "  capacityReservationSelectorTerms:\n    - instanceMatchCriteria: open\n      ownerID: \"12345\"", "spec.capacityReservationSelectorTerms[0].ownerID", "ownerID must be a 12-digit AWS account id", "ownerID:"),
        ("  tags:\n    team: platform", "  capacityReservationSelectorTerms:\n    - instanceMatchCriteria: closed", "spec.capacityReservationSelectorTerms[0].instanceMatchCriteria", "unknown variant `closed`", "- instanceMatchCriteria:"),
        // Tags, disks, metadata, network.
        ("    team: platform", "    kubernetes.io/cluster/my-cluster: owned", "spec.tags.kubernetes.io/cluster/my-cluster", "tag \"kubernetes.io/cluster/my-cluster\" is set by Karpenter", "kubernetes.io/cluster/"),
        ("        volumeSize: 100Gi", "        iops: 3000", "spec.blockDeviceMappings[0].ebs", "snapshotID or volumeSize must be defined", "ebs:"),
        ("        volumeSize: 100Gi", "        volumeSize: 100GiB", "spec.blockDeviceMappings[0].ebs.volumeSize", "volumeSize must be 1-59000Gi", "volumeSize:"),
        ("        encrypted: true", "        volumeInitializationRate: 200", "spec.blockDeviceMappings[0].ebs.volumeInitializationRate", "snapshotID must be set when volumeInitializationRate is set", "volumeInitializationRate:"),
        ("    httpPutResponseHopLimit: 2", "    httpPutResponseHopLimit: 0", "spec.metadataOptions.httpPutResponseHopLimit", "httpPutResponseHopLimit must be between 1 and 64", "httpPutResponseHopLimit:"),
        ("  tags:\n    team: platform", "  networkInterfaces:\n    - networkCardIndex: 0\n      deviceIndex: 0\n      interfaceType: efa-only", "spec.networkInterfaces", "networkInterfaces must include a primary interface", "networkInterfaces:"),
        ("  tags:\n    team: platform", "  networkInterfaces:\n    - {networkCardIndex: 0, deviceIndex: 0, interfaceType: interface}\n    - {networkCardIndex: 0, deviceIndex: 0, interfaceType: efa-only}", "spec.networkInterfaces[1]", "networkInterfaces must not have duplicate networkCardIndex and deviceIndex pairs", "- {networkCardIndex: 0, deviceIndex: 0, interfaceType: efa"),
        ("  tags:\n    team: platform", "  connectionTracking:\n    udpTimeout: 90", "spec.connectionTracking.udpTimeout", "udpTimeout must be between 30 and 60 seconds, not 90", "udpTimeout:"),
        ("  tags:\n    team: platform", "  placementGroupSelector:\n    name: pg\n    id: pg-0123", "spec.placementGroupSelector.id", "'name' and 'id' are mutually exclusive", "id: pg-"),
        // Kubelet.
        ("  tags:\n    team: platform", "  kubelet:\n    evictionHard:\n      memory.free: 5%", "spec.kubelet.evictionHard.memory.free", "\"memory.free\" is not an eviction signal", "memory.free:"),
        ("  tags:\n    team: platform", "  kubelet:\n    kubeReserved:\n      nvidia.com/gpu: \"1\"", "spec.kubelet.kubeReserved.nvidia.com/gpu", "\"nvidia.com/gpu\" cannot be reserved", "nvidia.com/gpu:"),
        ("  tags:\n    team: platform", "  kubelet:\n    imageGCHighThresholdPercent: 80\n    imageGCLowThresholdPercent: 80", "spec.kubelet.imageGCHighThresholdPercent", "imageGCHighThresholdPercent 80 must be greater than imageGCLowThresholdPercent 80", "imageGCHighThresholdPercent:"),
        ("  tags:\n    team: platform", "  kubelet:\n    evictionSoft:\n      memory.available: 500Mi", "spec.kubelet.evictionSoft.memory.available", "evictionSoft memory.available needs an evictionSoftGracePeriod entry", "memory.available:"),
        ("  tags:\n    team: platform", "  kubelet:\n    maxPods: -1", "spec.kubelet.maxPods", "maxPods must be at least 0, not -1", "maxPods:"),
        // NodePool requirements.
        ("values: [\"amd64\"]", "values: []", "spec.template.spec.requirements[1].values", "operator In needs at least one value", "values: []"),
        ("operator: Gt\n          values: [\"4\"]", "operator: Gt\n          values: [\"4\", \"6\"]", "spec.template.spec.requirements[3].values", "operator Gt needs exactly one integer value, got 2", "values: [\"4\", \"6\"]"),
        ("operator: Gt\n          values: [\"4\"]", "operator: Lt\n          values: [\"-1\"]", "spec.template.spec.requirements[3].values[0]", "operator Lt needs a non-negative integer value, not \"-1\"", "values: [\"-1\"]"),
        ("values: [\"c\", \"m\", \"r\"]", "values: [\"c\", \"m\", \"r\"]\n          minValues: 4", "spec.template.spec.requirements[2].minValues", "minValues 4 is more than the 3 values listed", "minValues:"),
        ("values: [\"c\", \"m\", \"r\"]", "values: [\"c\", \"m\", \"r\"]\n          minValues: 0", "spec.template.spec.requirements[2].minValues", "minValues must be between 1 and 50, not 0", "minValues:"),
        ("values: [\"spot\", \"on-demand\"]", "values: [\"Spot\"]", "spec.template.spec.requirements[0].values", "no valid value for karpenter.sh/capacity-type", "values: [\"Spot\"]"),
        ("- key: kubernetes.io/arch", "- key: karpenter.sh/nodepool", "spec.template.spec.requirements[1].key", "label \"karpenter.sh/nodepool\" is restricted", "- key: karpenter.sh/nodepool"),
        ("- key: kubernetes.io/arch", "- key: kubernetes.io/hostname", "spec.template.spec.requirements[1].key", "label \"kubernetes.io/hostname\" is restricted", "- key: kubernetes.io/hostname"),
        ("- key: kubernetes.io/arch", "- key: karpenter.k8s.aws/instance-pods", "spec.template.spec.requirements[1].key", "label domain \"karpenter.k8s.aws\" is restricted", "- key: karpenter.k8s.aws/instance-pods"),
        ("operator: Gt\n", "operator: Equals\n", "spec.template.spec.requirements[3].operator", "unknown variant `Equals`", "operator: Equals"),
        // Labels, taints, weight.
        ("        type: karpenter", "        karpenter.sh/initialized: \"true\"", "spec.template.metadata.labels.karpenter.sh/initialized", "label domain \"karpenter.sh\" is restricted", "karpenter.sh/initialized:"),
        ("        type: karpenter", "        type: \"not a value\"", "spec.template.metadata.labels.type", "invalid label value \"not a value\"", "type:"),
        ("          effect: NoSchedule", "          effect: NoSchedul", "spec.template.spec.taints[0].effect", "unknown variant `NoSchedul`", "effect: NoSchedul"),
        ("          effect: NoSchedule", "          effect: NoSchedule\n      startupTaints:\n        - key: workload\n          effect: NoSchedule", "spec.template.spec.startupTaints[0].key", "duplicate taint workload:NoSchedule", "- key: workload"),
        ("  limits:\n", "  weight: 101\n  limits:\n", "spec.weight", "weight must be between 1 and 100, not 101", "weight:"),
        // Static pools.
        ("  limits:\n", "  replicas: 2\n  limits:\n", "spec.limits.cpu", "only 'limits.nodes' is supported on static NodePools", "cpu:"),
        ("  limits:\n    cpu: \"1000\"\n    memory: 1000Gi\n", "  replicas: 2\n  weight: 5\n", "spec.weight", "'weight' is not supported on static NodePools", "weight:"),
        ("  limits:\n    cpu: \"1000\"\n    memory: 1000Gi\n", "  replicas: -1\n", "spec.replicas", "replicas must be at least 0, not -1", "replicas:"),
        // Durations and disruption.
        ("expireAfter: 720h", "expireAfter: 30d", "spec.template.spec.expireAfter", "invalid duration \"30d\"", "expireAfter:"),
        ("expireAfter: 720h", "expireAfter: 1.5h", "spec.template.spec.expireAfter", "invalid duration \"1.5h\": Karpenter takes whole numbers of s, m and h", "expireAfter:"),
        ("expireAfter: 720h", "terminationGracePeriod: Never", "spec.template.spec.terminationGracePeriod", "invalid duration \"Never\"", "terminationGracePeriod:"),
        ("consolidationPolicy: WhenEmptyOrUnderutilized", "consolidationPolicy: WhenUnderutilized", "spec.disruption.consolidationPolicy", "consolidationPolicy WhenUnderutilized is v1beta1's; Karpenter v1 calls it WhenEmptyOrUnderutilized", "consolidationPolicy:"),
        ("consolidationPolicy: WhenEmptyOrUnderutilized", "consolidationPolicy: Always", "spec.disruption.consolidationPolicy", "unknown consolidationPolicy \"Always\"", "consolidationPolicy:"),
        ("    consolidateAfter: 1m\n", "", "spec.disruption.consolidateAfter", "consolidateAfter is required when disruption is set", "disruption:"),
        ("      - nodes: \"10%\"", "      - nodes: \"ten\"", "spec.disruption.budgets[0].nodes", "nodes must be a count or a percentage", "- nodes:"),
        ("      - nodes: \"10%\"", "      - nodes: \"0\"\n        schedule: \"@daily\"", "spec.disruption.budgets[0].schedule", "'schedule' must be set with 'duration'", "schedule:"),
        ("      - nodes: \"10%\"", "      - nodes: \"0\"\n        schedule: \"@daily\"\n        duration: 30s", "spec.disruption.budgets[0].duration", "invalid budget duration \"30s\"", "duration:"),
        ("      - nodes: \"10%\"", "      - nodes: \"1\"\n        reasons: [Empty, Empty]", "spec.disruption.budgets[0].reasons[1]", "duplicate reason Empty", "reasons:"),
        ("      - nodes: \"10%\"", "      - nodes: \"0\"\n        schedule: \"61 9 * * *\"\n        duration: 8h", "spec.disruption.budgets[0].schedule", "invalid schedule \"61 9 * * *\": minute field \"61\": 61 is out of range 0-59", "schedule:"),
    ];
    let mut failures = Vec::new();
    for (from, to, path, message, needle) in cases {
        let (text, at) = edit(from, to);
        let Err(err) = Config::parse(&text, "edited.yaml") else {
            failures.push(format!("{to:?}: loaded"));
            continue;
        };
        let line = line_of(&text, at, needle);
        if err.path.as_deref() != Some(*path)
            || !err.message.starts_with(message)
            || err.line != Some(line)
        {
            failures.push(format!(
                "{to:?}:\n  got  {:?} line {:?}: {}\n  want {path:?} line {line}: {message}",
                err.path, err.line, err.message
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A warning an edit must raise: its reason, path, part of its message, and the needle of its line.
type Expected = (WarningReason, &'static str, &'static str, &'static str);

/// Edits Karpenter accepts: they load, with the warning named (or none).
#[test]
fn what_karpenter_accepts_loads_with_the_right_warning() {
    use WarningReason::*;
    #[rustfmt::skip]
    let cases: &[(&str, &str, Option<Expected>)] = &[
        ("- alias: al2023@latest", "- alias: al2023@latest\n  amiFamily: Custom", None),
        ("- alias: al2023@latest", "- alias: al2023@v20250505", None),
        ("values: [\"amd64\"]", "values: [\"amd64\"]\n          minValues: 1", None),
        ("operator: Gt\n", "operator: Gte\n", None),
        ("consolidationPolicy: WhenEmptyOrUnderutilized", "consolidationPolicy: Balanced", None),
        ("expireAfter: 720h", "expireAfter: Never", None),
        ("        type: karpenter", "        karpenter.k8s.aws/instance-family: m7i", None),
        ("operator: In\n          values: [\"amd64\"]", "operator: NotIn\n          values: []", Some((NoEffect, "spec.template.spec.requirements[1].values", "operator NotIn with no values excludes nothing", "values: []"))),
        ("operator: In\n          values: [\"amd64\"]", "operator: Exists\n          values: [\"amd64\"]", Some((NoEffect, "spec.template.spec.requirements[1].values", "operator Exists takes no values", "values: [\"amd64\"]"))),
        ("values: [\"spot\", \"on-demand\"]", "values: [\"spot\", \"ondemand\"]", Some((NoEffect, "spec.template.spec.requirements[0].values", "ondemand is not a value of karpenter.sh/capacity-type", "values: [\"spot\", \"ondemand\"]"))),
        ("values: [\"spot\", \"on-demand\"]", "values: [\"reserved\", \"on-demand\"]", Some((NotActedOn, "spec.template.spec.requirements[0].values", "parsed, not acted on: capacity type \"reserved\"", "values: [\"reserved\""))),
        ("- alias: al2023@latest", "- alias: bottlerocket@latest", Some((NotActedOn, "spec.amiSelectorTerms[0].alias", "parsed, not acted on: nodewright generates user data for AL2023 and AL2 only", "- alias:"))),
        ("- alias: al2023@latest", "- alias: windows2022@latest", Some((NotActedOn, "spec.amiSelectorTerms[0].alias", "launches with the Windows2022 family fail", "- alias:"))),
        ("  subnetSelectorTerms:\n    - tags:", "  subnetSelectorTerms:\n    - id: subnet-0a1b2c\n      tags: {Name: a}\n    - tags:", Some((NoEffect, "spec.subnetSelectorTerms[0].id", "'id' is mutually exclusive", "- id: subnet"))),
        ("  tags:\n    team: platform", "  tags:\n    team: \"\"", None),
        ("          effect: NoSchedule", "          effect: NoSchedule\n          timeAdded: \"2025-01-01T00:00:00Z\"", None),
    ];
    let mut failures = Vec::new();
    for (from, to, expected) in cases {
        let (text, at) = edit(from, to);
        let config = match Config::parse(&text, "edited.yaml") {
            Ok(config) => config,
            Err(err) => {
                failures.push(format!("{to:?}: refused: {err}"));
                continue;
            }
        };
        let extra: Vec<&ConfigWarning> = config
            .warnings
            .iter()
            .filter(|w| !BASE_WARNINGS.contains(&w.path.as_str()))
            .collect();
        match expected {
            None if extra.is_empty() => {}
            None => failures.push(format!("{to:?}: unexpected warnings {extra:?}")),
            Some((reason, path, message, needle)) => {
                let line = line_of(&text, at, needle);
                let found = extra.iter().any(|w| {
                    w.reason == *reason
                        && w.path == *path
                        && w.line == Some(line)
                        && w.message.contains(message)
                });
                if !found || extra.len() != 1 {
                    failures.push(format!(
                        "{to:?}: want one {reason:?} at {path} line {line} containing {message:?}, got {extra:?}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The not-acted-on warnings base.yaml itself raises.
const BASE_WARNINGS: [&str; 0] = [];

/// Karpenter's CRD requires `requirements`; a NodePool without them loads with a warning at the
/// template's spec, as having none.
#[test]
fn a_nodepool_without_requirements_loads_with_a_warning() {
    let start = BASE.find("      requirements:\n").unwrap();
    let end = BASE.find("      taints:\n").unwrap();
    let text = format!("{}{}", &BASE[..start], &BASE[end..]);
    let config = Config::parse(&text, "no-requirements.yaml").unwrap();
    assert!(
        config.node_pools["default"]
            .spec
            .template
            .spec
            .requirements
            .is_empty()
    );
    let warning = config
        .warnings
        .iter()
        .find(|w| w.reason == WarningReason::RefusedByKarpenter)
        .expect("a warning");
    let spec_line = text.lines().position(|l| l == "    spec:").unwrap() + 1;
    assert_eq!(
        (warning.path.as_str(), warning.line),
        ("spec.template.spec.requirements", Some(spec_line))
    );
    assert!(
        warning
            .message
            .starts_with("requirements is required by Karpenter's CRD"),
        "{warning}"
    );
}
