//! Config files with one mistake each: the error names the right document, kind, name, field path
//! and whole-file line. Inputs live in tests/data/config/.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nodewright::config::{
    Config, ConfigError, ConsolidationPolicy, DurationOrNever, ErrorCategory, WarningReason,
    WhenUnsatisfiable,
};
use nodewright::model::{Operator, Requirement, Taint, TaintEffect};

fn data(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/config")
        .join(file)
}

fn load_error(file: &str) -> ConfigError {
    match Config::load(&data(file)) {
        Ok(_) => panic!("{file} should not load"),
        Err(err) => err,
    }
}

/// What a case expects of the error.
struct Expected {
    file: &'static str,
    category: ErrorCategory,
    document: usize,
    kind: Option<&'static str>,
    name: Option<&'static str>,
    path: Option<&'static str>,
    line: usize,
    column: usize,
    message: &'static str,
}

#[rustfmt::skip]
const CASES: &[Expected] = {
    use ErrorCategory::*;
    // One argument per column of the table.
    #[allow(clippy::too_many_arguments)]
    const fn case(file: &'static str, category: ErrorCategory, document: usize, kind: Option<&'static str>, name: Option<&'static str>, path: Option<&'static str>, line: usize, column: usize, message: &'static str) -> Expected {
        Expected { file, category, document, kind, name, path, line, column, message }
    }
    const POOL: Option<&str> = Some("NodePool");
    const CLASS: Option<&str> = Some("EC2NodeClass");
    const POLICY: Option<&str> = Some("Policy");
    const DEFAULT: Option<&str> = Some("default");
    &[
        // Deserialization: unknown fields, wrong values and types, missing fields.
        case("wrong-enum.yaml", Schema, 2, POOL, DEFAULT, Some("spec.template.spec.taints[0].effect"), 36, 19, "unknown variant `NoSchedul`, expected one of `NoSchedule`, `PreferNoSchedule`, `NoExecute`"),
        case("wrong-type.yaml", Schema, 1, POOL, DEFAULT, Some("spec.weight"), 17, 11, "invalid type: string \"heavy\", expected i32"),
        case("missing-name.yaml", Schema, 2, CLASS, None, Some("metadata"), 20, 3, "missing field `name`"),
        case("missing-node-class-ref.yaml", Schema, 1, POOL, DEFAULT, Some("spec.template.spec"), 8, 7, "missing field `nodeClassRef`"),
        // Documents nodewright does not read.
        case("unknown-kind.yaml", Document, 3, Some("Provisioner"), Some("old"), Some("kind"), 34, 7, "unknown document type: apiVersion \"karpenter.sh/v1alpha5\", kind \"Provisioner\""),
        case("old-api-version.yaml", Document, 2, POOL, DEFAULT, Some("apiVersion"), 17, 13, "unsupported apiVersion \"karpenter.sh/v1beta1\" for kind NodePool; nodewright reads karpenter.sh/v1"),
        case("not-a-mapping.yaml", Document, 3, None, None, None, 32, 1, "a document must be a mapping"),
        case("second-policy.yaml", Document, 4, POLICY, DEFAULT, Some("kind"), 40, 7, "a second Policy document (the first is document 3)"),
        // YAML syntax, in the third document: the line counts from the top of the file.
        case("syntax.yaml", Syntax, 3, POLICY, DEFAULT, None, 40, 1, "invalid YAML: "),
        // Validation after deserializing.
        case("requirement-arity.yaml", Invalid, 1, POOL, DEFAULT, Some("spec.template.spec.requirements[1].values"), 19, 11, "operator Gt needs exactly one integer value, got 2"),
        case("min-values.yaml", Invalid, 1, POOL, DEFAULT, Some("spec.template.spec.requirements[0].minValues"), 16, 22, "minValues 3 is more than the 2 values listed"),
        case("weight.yaml", Invalid, 1, POOL, DEFAULT, Some("spec.weight"), 16, 11, "weight must be between 1 and 100, not 0"),
        case("duplicate-pool.yaml", Invalid, 3, POOL, DEFAULT, Some("metadata.name"), 36, 9, "duplicate NodePool \"default\"; document 1 defines it already"),
        case("missing-node-class.yaml", Invalid, 2, POOL, Some("gpu"), Some("spec.template.spec.nodeClassRef.name"), 26, 15, "EC2NodeClass \"gpu\" is not defined in this file (defined: default)"),
        case("role-and-profile.yaml", Invalid, 2, CLASS, DEFAULT, Some("spec.instanceProfile"), 31, 20, "set either role or instanceProfile, not both"),
        // A missing list points at its parent: `spec:` of the second document.
        case("no-subnets.yaml", Invalid, 2, CLASS, DEFAULT, Some("spec.subnetSelectorTerms"), 21, 1, "at least one subnetSelectorTerm is required"),
        case("unknown-pool.yaml", Invalid, 3, POLICY, DEFAULT, Some("spec.rules[1].nodePool"), 40, 17, "NodePool \"gpu\" is not defined in this file (defined: default)"),
        case("policy-quota-without-namespaces.yaml", Invalid, 3, POLICY, DEFAULT, Some("spec.quotas[0]"), 38, 7, "a quota needs namespaces or a namespaceSelector"),
        case("policy-batching.yaml", Invalid, 3, POLICY, DEFAULT, Some("spec.batching.idleDuration"), 38, 19, "idleDuration 30s must not exceed maxDuration 10s"),
        case("policy-bad-duration.yaml", Invalid, 3, POLICY, DEFAULT, Some("spec.batching.idleDuration"), 38, 19, "invalid duration \"1sec\": unknown unit \"sec\""),
        case("policy-node-selector-key.yaml", Invalid, 3, POLICY, DEFAULT, Some("spec.nodeSelectorKey"), 37, 20, "invalid label key \"karpenter.sh/provisioner name\""),
        case("policy-scheduler-name.yaml", Invalid, 3, POLICY, DEFAULT, Some("spec.rules[0].schedulerName"), 40, 22, "\"Nodewright_Scheduler\" is not a valid scheduler name"),
        case("policy-capacity-split-pool.yaml", Invalid, 3, POLICY, DEFAULT, Some("spec.rules[0].capacitySplit"), 39, 7, "NodePool \"default\" does not launch spot nodes, so it cannot hold a split between spot and on-demand"),
        case("policy-capacity-split-percent.yaml", Invalid, 3, POLICY, DEFAULT, Some("spec.rules[0].capacitySplit.spotPercent"), 40, 22, "150 is out of range: 0 to 100"),
        case("policy-split-restore-interval.yaml", Invalid, 3, POLICY, DEFAULT, Some("spec.capacitySplitRestore.interval"), 38, 15, "invalid duration \"1minute\": unknown unit \"minute\""),
        case("policy-selector-operator.yaml", Invalid, 3, POLICY, DEFAULT, Some("spec.rules[0].namespaceSelector.matchExpressions[0].values"), 43, 13, "operator Exists takes no values, got 1"),
        case("policy-max-skew.yaml", Invalid, 3, POLICY, DEFAULT, Some("spec.spread.maxSkew"), 38, 14, "maxSkew must be at least 1, not 0"),
        case("policy-topology-key.yaml", Invalid, 3, POLICY, DEFAULT, Some("spec.rules[0].spread.topologyKey"), 40, 22, "topologyKey must not be empty"),
    ]
};

#[test]
fn each_mistake_is_reported_where_it_is() {
    let mut failures = Vec::new();
    for expected in CASES {
        let err = load_error(expected.file);
        let actual = (
            err.category,
            err.document,
            err.kind.as_deref(),
            err.name.as_deref(),
            err.path.as_deref(),
            err.line,
            err.column,
        );
        let wanted = (
            expected.category,
            Some(expected.document),
            expected.kind,
            expected.name,
            expected.path,
            Some(expected.line),
            Some(expected.column),
        );
        if actual != wanted || !err.message.starts_with(expected.message) {
            failures.push(format!(
                "{}:\n  got  {actual:?} {:?}\n  want {wanted:?} {:?}",
                expected.file, err.message, expected.message
            ));
        }
        let shown = err.to_string();
        assert!(
            !shown.contains('\n'),
            "{}: message spans lines: {shown}",
            expected.file
        );
        assert!(
            shown.contains(&format!("line {}", expected.line)),
            "{shown}"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// An unknown field of a Karpenter document is pruned by the apiserver: it loads, with a warning
/// at the field's key.
#[test]
fn unknown_karpenter_fields_load_with_a_warning_where_they_are() {
    let config = Config::load(&data("unknown-field.yaml")).unwrap();
    let [warning] = config.warnings.as_slice() else {
        panic!("one warning expected: {:?}", config.warnings);
    };
    assert_eq!(
        (
            warning.reason,
            warning.document,
            warning.path.as_str(),
            warning.line,
            warning.column
        ),
        (
            WarningReason::Pruned,
            2,
            "spec.kubelet.maxPod",
            Some(34),
            Some(5)
        )
    );
    assert!(
        warning
            .message
            .starts_with("not a field of Karpenter's v1 EC2NodeClass"),
        "{warning}"
    );
}

#[test]
fn the_message_reads_as_one_line_with_every_part() {
    let text = std::fs::read_to_string(data("wrong-enum.yaml")).unwrap();
    let err = Config::parse(&text, "examples/bad.yaml").unwrap_err();
    assert_eq!(
        err.to_string(),
        "examples/bad.yaml: document 2 (NodePool \"default\"), line 36 column 19: \
         spec.template.spec.taints[0].effect: unknown variant `NoSchedul`, \
         expected one of `NoSchedule`, `PreferNoSchedule`, `NoExecute`"
    );
}

#[test]
fn the_workshop_example_is_what_it_claims() {
    let config =
        Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/workshop.yaml"))
            .unwrap();
    assert_eq!(config, nodewright::config::embedded_example());

    let pool = config.node_pool("default").expect("NodePool default");
    let template = &pool.spec.template;
    assert_eq!(
        template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .get("type")
            .map(String::as_str),
        Some("karpenter")
    );
    let requirement = |key: &str, operator, values: &[&str]| Requirement {
        key: key.to_owned(),
        operator,
        values: values.iter().map(|v| (*v).to_owned()).collect(),
        min_values: None,
    };
    assert_eq!(
        template.spec.requirements,
        [
            requirement(
                "karpenter.sh/capacity-type",
                Operator::In,
                &["spot", "on-demand"]
            ),
            requirement("kubernetes.io/arch", Operator::In, &["amd64"]),
            requirement("kubernetes.io/os", Operator::In, &["linux"]),
            requirement(
                "karpenter.k8s.aws/instance-category",
                Operator::In,
                &["c", "m", "r"]
            ),
            requirement(
                "karpenter.k8s.aws/instance-generation",
                Operator::Gt,
                &["4"]
            ),
        ]
    );
    assert_eq!(
        template.spec.taints,
        [Taint {
            key: "nodewright.io/pool".into(),
            value: Some("default".into()),
            effect: TaintEffect::NoSchedule
        }]
    );
    assert_eq!(template.spec.node_class_ref.name, "default");
    assert_eq!(pool.spec.limits["cpu"].0, "1000");
    assert_eq!(pool.spec.limits["memory"].0, "1000Gi");
    assert_eq!(
        pool.spec.disruption.consolidation_policy,
        ConsolidationPolicy::WhenEmptyOrUnderutilized
    );
    assert_eq!(
        pool.spec.disruption.consolidate_after,
        Some(DurationOrNever::After(Duration::from_secs(60)))
    );

    let class = config.node_class_of(pool).expect("its EC2NodeClass");
    assert_eq!(
        class.spec.ami_selector_terms[0].alias.as_deref(),
        Some("al2023@latest")
    );
    assert_eq!(
        class.spec.role.as_deref(),
        Some("KarpenterNodeRole-workshop")
    );
    for tags in [
        &class.spec.subnet_selector_terms[0].tags,
        &class.spec.security_group_selector_terms[0].tags,
    ] {
        assert_eq!(
            tags.get("karpenter.sh/discovery").map(String::as_str),
            Some("workshop")
        );
    }

    let policy = &config.policy;
    assert_eq!(config.policy_name.as_deref(), Some("default"));
    assert_eq!(policy.node_selector_key, "karpenter.sh/nodepool");
    let rule = &policy.rules[0];
    assert_eq!(
        (rule.node_pool.as_str(), rule.namespaces.as_slice()),
        ("default", &["team-riker".to_owned()][..])
    );
    let spread = rule.spread.as_ref().expect("the rule's spread");
    assert_eq!(spread.topology_key, "topology.kubernetes.io/zone");
    assert_eq!(spread.max_skew, 1);
    assert_eq!(spread.when_unsatisfiable, WhenUnsatisfiable::DoNotSchedule);
    assert_eq!(policy.quotas[0].namespaces, ["team-riker"]);
    assert_eq!(policy.quotas[0].max_pods, 10);
    assert_eq!(policy.batching.idle(), Ok(Duration::from_secs(1)));
    assert_eq!(policy.batching.max(), Ok(Duration::from_secs(10)));
}

#[test]
fn pre_v1_provisioner_name_key_is_accepted() {
    let config = Config::load(&data("provisioner-name.yaml")).unwrap();
    assert_eq!(
        config.policy.node_selector_key,
        "karpenter.sh/provisioner-name"
    );
    assert_eq!(config.policy_name.as_deref(), Some("legacy"));
    assert!(config.node_pools.is_empty());
}

#[test]
fn manifests_exported_from_a_cluster_load() {
    let config = Config::load(&data("exported-from-cluster.yaml")).unwrap();
    let pool = config.node_pool("default").unwrap();
    assert_eq!(
        pool.spec.template.spec.taints[0].to_string(),
        "nodewright.io/pool=default:NoSchedule"
    );
    let class = &config.node_classes["default"].spec;
    assert_eq!(class.ami_selector_terms.len(), 4);
    assert_eq!(
        class.capacity_reservation_selector_terms[2]
            .owner_id
            .as_deref(),
        Some("012345678901")
    );
    assert_eq!(class.kubelet.as_ref().unwrap().cluster_dns, ["10.0.1.100"]);
    assert_eq!(
        class.block_device_mappings[0]
            .ebs
            .as_ref()
            .unwrap()
            .kms_key_id
            .as_deref(),
        Some("1234abcd-12ab-34cd-56ef-1234567890ab")
    );
    assert_eq!(class.associate_public_ip_address, Some(true));
}
