//! Reading and expansion of manifests, as `nodewright plan` does it.

use super::*;
use crate::config::Config;

const STEERING: &str = include_str!("../../../tests/data/steering.yaml");
const GAME_2048: &str =
    include_str!("../../../tests/data/fixtures/2048_full__aws-load-balancer-controller.yaml");

fn steering(text: &str) -> Steering {
    Steering::new(&Config::parse(text, "steering.yaml").unwrap(), None)
}

/// steering.yaml's pools without its Policy: no rule, so pods come out as their controllers make them.
fn no_rules() -> Steering {
    let pools = STEERING
        .split("---\napiVersion: nodewright.io/v1alpha1")
        .next()
        .unwrap();
    steering(pools)
}

fn workshop() -> Steering {
    Steering::new(&crate::config::embedded_example(), None)
}

fn expand_text(text: &str, steering: &Steering) -> Workloads {
    expand(parse_documents(text, "test.yaml").unwrap(), steering).unwrap()
}

fn names(pods: &[Pod]) -> Vec<&str> {
    pods.iter()
        .map(|p| p.metadata.name.as_deref().unwrap())
        .collect()
}

fn label<'p>(pod: &'p Pod, key: &str) -> Option<&'p str> {
    pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn in_alphabet(s: &str) -> bool {
    s.bytes().all(|b| ALPHABET.contains(&b))
}

const POD: &str = "spec: {containers: [{name: c, image: nginx}]}";

#[test]
fn yaml_json_documents_and_lists_are_flattened() {
    let yaml = format!(
        "# comment\n---\n---\napiVersion: v1\nkind: List\nitems:\n\
             - {{apiVersion: v1, kind: Pod, metadata: {{name: a}}, {POD}}}\n\
             - apiVersion: v1\n  kind: List\n  items:\n  - {{apiVersion: v1, kind: Pod, metadata: {{name: b}}, {POD}}}\n\
             ---\napiVersion: v1\nkind: PodList\nitems:\n- metadata: {{name: c}}\n  {POD}\n---\n"
    );
    let objects = parse_documents(&yaml, "a.yaml").unwrap();
    let origins: Vec<(usize, Option<&str>)> = objects
        .iter()
        .map(|m| (m.origin.document, m.origin.item.as_deref()))
        .collect();
    assert_eq!(
        origins,
        [
            (2, Some("items[0]")),
            (2, Some("items[1].items[0]")),
            (3, Some("items[0]"))
        ]
    );
    assert_eq!(
        objects[2].object["kind"], "Pod",
        "PodList items get their kind"
    );
    assert_eq!(objects[2].object["apiVersion"], "v1");
    let w = expand(objects, &no_rules()).unwrap();
    assert_eq!(names(&w.pods), ["a", "b", "c"]);

    let pod = |name: &str| {
        format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}}, "spec": {{"containers": [{{"name": "c", "image": "x"}}]}}}}"#
        )
    };
    let concatenated = format!("{}\n{}", pod("j1"), pod("j2"));
    let array = format!("[{}, {}]", pod("j3"), pod("j4"));
    let list = format!(
        r#"{{"apiVersion": "v1", "kind": "List", "items": [{}]}}"#,
        pod("j5")
    );
    let flow = "{apiVersion: v1, kind: Pod, metadata: {name: j6}, spec: {containers: []}}";
    let mut all = Vec::new();
    for (i, text) in [concatenated, array, list, flow.to_owned()]
        .iter()
        .enumerate()
    {
        all.extend(parse_documents(text, &format!("{i}.json")).unwrap());
    }
    let w = expand(all, &no_rules()).unwrap();
    assert_eq!(names(&w.pods), ["j1", "j2", "j3", "j4", "j5", "j6"]);

    for empty in ["", "---\n", "# nothing\n", "---\n---\n", "null", "[]"] {
        assert!(
            parse_documents(empty, "e.yaml").unwrap().is_empty(),
            "{empty:?}"
        );
    }
}

#[test]
fn yaml_in_pieces_reads_as_one_stream() {
    let mut text = String::from("# leading comment\n\n");
    for i in 0..400 {
        match i % 4 {
            0 => text.push_str("---\n"),
            1 => text.push_str("--- # marker with a comment\n# only a comment\n"),
            2 => text.push_str("---\n...\n"),
            _ => {}
        }
        text.push_str(&format!(
                "--- &a{i}\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}\n  annotations:\n    text: |\n      ---not a marker\n      line {i}\n{POD}\n"
            ));
    }
    let source: Arc<str> = Arc::from("big.yaml");
    let whole = yaml_documents(&text, &source).unwrap();
    for parts in [2, 3, 7, 50] {
        assert!(split_at_markers(&text, parts).len() > 1);
        let pieces = yaml_documents_in_pieces(&text, &source, parts).unwrap();
        assert_eq!(pieces, whole, "{parts} pieces");
    }
    // No piece starts at the first marker: the leading comment is no document of its own.
    assert_eq!(
        split_at_markers("# c\n---\na: 1\n", 4),
        ["# c\n---\na: 1\n"]
    );

    let broken = format!("{text}---\nkind: [\n");
    let line = broken.lines().count() + 1;
    let error = yaml_documents_in_pieces(&broken, &source, 4)
        .unwrap_err()
        .to_string();
    assert!(error.contains(&format!("at line {line} ")), "{error}");
    assert!(
        error.starts_with(&format!("big.yaml: document {}: ", whole.len() + 1)),
        "{error}"
    );
}

#[test]
fn many_pods_keep_their_order_and_the_first_error_is_reported() {
    let pod = |i: usize, image: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}}}\nspec: {{containers: [{{name: c, image: {image}}}]}}\n"
        )
    };
    let text: String = (0..1500).map(|i| pod(i, "x")).collect();
    let w = expand_text(&text, &no_rules());
    let want: Vec<String> = (0..1500).map(|i| format!("p{i}")).collect();
    assert_eq!(names(&w.pods), want);

    let text: String = (0..1500)
        .map(|i| pod(i, if i == 100 || i == 1200 { "[x]" } else { "x" }))
        .collect();
    let e = error(&text);
    assert!(
        e.starts_with("bad.yaml: document 101 (Pod default/p100): spec.containers[0].image"),
        "{e}"
    );
}

#[test]
fn each_kind_expands_as_its_controller_would() {
    let text = format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: shop}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}, annotations: {{note: kept}}}}
    {POD}
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {{name: rs}}
spec: {{replicas: 2, template: {{metadata: {{labels: {{app: rs}}}}, {POD}}}}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db, namespace: shop}}
spec: {{replicas: 2, template: {{metadata: {{labels: {{app: db}}}}, {POD}}}}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: cache}}
spec: {{ordinals: {{start: 5}}, template: {{{POD}}}}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent, namespace: kube-system}}
spec: {{template: {{metadata: {{labels: {{app: agent}}}}, {POD}}}}}
---
apiVersion: batch/v1
kind: Job
metadata: {{name: batch}}
spec: {{parallelism: 4, completions: 2, template: {{{POD}}}}}
---
apiVersion: batch/v1
kind: Job
metadata: {{name: once}}
spec: {{template: {{{POD}}}}}
---
apiVersion: batch/v1
kind: Job
metadata: {{name: idx}}
spec: {{completionMode: Indexed, parallelism: 3, completions: 5, template: {{{POD}}}}}
---
apiVersion: batch/v1
kind: Job
metadata: {{name: later}}
spec: {{suspend: true, template: {{{POD}}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: idle}}
spec: {{replicas: 0, template: {{{POD}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{generateName: gen-}}
{POD}
---
apiVersion: v1
kind: Pod
metadata: {{generateName: gen-}}
{POD}
---
{{apiVersion: v1, kind: Service, metadata: {{name: s}}}}
---
{{apiVersion: v1, kind: ConfigMap, metadata: {{name: c1}}}}
---
{{apiVersion: v1, kind: ConfigMap, metadata: {{name: c2}}}}
---
{{apiVersion: batch/v1, kind: CronJob, metadata: {{name: cj}}}}
---
{{apiVersion: extensions/v1beta1, kind: Deployment, metadata: {{name: old}}}}
"#
    );
    let w = expand_text(&text, &no_rules());
    assert_eq!(
        w.skipped,
        [
            "2 ConfigMap objects ignored",
            "1 CronJob object ignored",
            "1 Deployment (extensions/v1beta1) object ignored",
            "1 Service object ignored"
        ]
    );
    assert!(w.denied.is_empty());
    let by_owner = |prefix: &str| -> Vec<&Pod> {
        w.pods
            .iter()
            .filter(|p| p.metadata.name.as_deref().unwrap().starts_with(prefix))
            .collect()
    };

    // Deployment: <deploy>-<pod-template-hash>-<5>, owned by the ReplicaSet <deploy>-<hash>.
    let web = by_owner("web-");
    assert_eq!(web.len(), 3);
    let hash = label(web[0], POD_TEMPLATE_HASH).unwrap();
    assert!(
        (8..=10).contains(&hash.len()) && in_alphabet(hash),
        "{hash}"
    );
    for pod in &web {
        let name = pod.metadata.name.as_deref().unwrap();
        let rest = name.strip_prefix(&format!("web-{hash}-")).unwrap();
        assert!(rest.len() == 5 && in_alphabet(rest), "{name}");
        assert_eq!(pod.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(label(pod, "app"), Some("web"));
        assert_eq!(label(pod, POD_TEMPLATE_HASH), Some(hash));
        assert_eq!(pod.metadata.annotations.as_ref().unwrap()["note"], "kept");
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (
                owner.api_version.as_str(),
                owner.kind.as_str(),
                owner.name.as_str()
            ),
            ("apps/v1", "ReplicaSet", format!("web-{hash}").as_str())
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.uid.len(), 36);
    }

    let rs = by_owner("rs-");
    assert_eq!(rs.len(), 2);
    assert!(
        rs.iter()
            .all(|p| p.metadata.namespace.as_deref() == Some("default"))
    );
    assert!(rs.iter().all(|p| label(p, POD_TEMPLATE_HASH).is_none()));

    // StatefulSet: ordinals, with the per-pod labels.
    let db = by_owner("db-");
    assert_eq!(
        names(&db.iter().map(|p| (*p).clone()).collect::<Vec<_>>()),
        ["db-0", "db-1"]
    );
    assert_eq!(label(db[1], STS_POD_NAME), Some("db-1"));
    assert_eq!(label(db[1], STS_POD_INDEX), Some("1"));
    assert!(label(db[0], REVISION_HASH).unwrap().starts_with("db-"));
    assert_eq!(by_owner("cache-").len(), 1);
    assert_eq!(
        by_owner("cache-")[0].metadata.name.as_deref(),
        Some("cache-5")
    );

    // DaemonSet: one pod, apart, owned by its DaemonSet, with the controller's tolerations.
    assert_eq!(w.daemonsets.len(), 1);
    let agent = &w.daemonsets[0];
    assert!(
        agent
            .metadata
            .name
            .as_deref()
            .unwrap()
            .starts_with("agent-")
    );
    assert_eq!(
        agent.metadata.owner_references.as_ref().unwrap()[0].kind,
        "DaemonSet"
    );
    let tolerations = agent.spec.as_ref().unwrap().tolerations.as_ref().unwrap();
    assert_eq!(tolerations.len(), DAEMON_TOLERATIONS.len());

    // Jobs: min(parallelism, completions) pods, job-name labels; Indexed ones carry their index.
    let batch = by_owner("batch-");
    assert_eq!(batch.len(), 2);
    assert_eq!(label(batch[0], JOB_NAME), Some("batch"));
    assert_eq!(label(batch[0], JOB_NAME_LEGACY), Some("batch"));
    assert_eq!(label(batch[0], JOB_UID), label(batch[1], JOB_UID_LEGACY));
    assert_eq!(by_owner("once-").len(), 1);
    let idx = by_owner("idx-");
    assert_eq!(idx.len(), 3);
    for (i, pod) in idx.iter().enumerate() {
        assert!(
            pod.metadata
                .name
                .as_deref()
                .unwrap()
                .starts_with(&format!("idx-{i}-"))
        );
        assert_eq!(label(pod, JOB_INDEX), Some(i.to_string().as_str()));
    }
    assert!(by_owner("later-").is_empty(), "suspended");
    assert!(by_owner("idle-").is_empty(), "zero replicas");

    let generated = by_owner("gen-");
    assert_eq!(generated.len(), 2);
    assert_ne!(generated[0].metadata.name, generated[1].metadata.name);

    assert_eq!(w.pods.len(), 3 + 2 + 2 + 1 + 2 + 1 + 3 + 2);
}

#[test]
fn deployment_names_are_stable_unique_and_follow_the_template() {
    let deployment = |image: &str, replicas: usize| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec: {{containers: [{{name: c, image: {image}}}]}}\n"
        )
    };
    let first = expand_text(&deployment("nginx", 1000), &no_rules());
    let again = expand_text(&deployment("nginx", 1000), &no_rules());
    assert_eq!(names(&first.pods), names(&again.pods));
    let unique: HashSet<&str> = names(&first.pods).into_iter().collect();
    assert_eq!(unique.len(), 1000);
    let other = expand_text(&deployment("httpd", 1), &no_rules());
    assert_ne!(
        label(&first.pods[0], POD_TEMPLATE_HASH),
        label(&other.pods[0], POD_TEMPLATE_HASH),
        "the hash follows the template"
    );
}

/// Decide and patch one pod on its own, as the webhook would see it.
fn mutate_alone(pod: &Pod, steering: &Steering) -> Result<Pod, String> {
    let mut value = serde_json::to_value(pod).unwrap();
    let view: PodView = serde_json::from_value(value.clone()).unwrap();
    let namespace = pod.metadata.namespace.clone().unwrap();
    match steering.decide(&PodAdmission {
        operation: Operation::Create,
        group: "",
        kind: "Pod",
        namespace: &namespace,
        pod: Some(&view),
        namespace_labels: None,
    }) {
        Decision::Patch { patch, .. } => json_patch::patch(&mut value, &patch).unwrap(),
        Decision::Deny { message, .. } => return Err(message),
        _ => {}
    }
    Ok(serde_json::from_value(value).unwrap())
}

#[test]
fn mutating_once_per_workload_equals_mutating_each_pod() {
    let workloads = [
        ("apps/v1", "Deployment", "replicas: 3"),
        ("apps/v1", "ReplicaSet", "replicas: 2"),
        ("apps/v1", "StatefulSet", "replicas: 3"),
        ("batch/v1", "Job", "parallelism: 2"),
        (
            "batch/v1",
            "Job",
            "completionMode: Indexed\n  parallelism: 2",
        ),
    ];
    let text: String = workloads
            .iter()
            .enumerate()
            .map(|(i, (api, kind, count))| {
                format!(
                    "---\napiVersion: {api}\nkind: {kind}\nmetadata: {{name: w{i}, namespace: team-riker}}\nspec:\n  {count}\n  template:\n    metadata: {{labels: {{app: w{i}}}}}\n    spec:\n      tolerations: [{{key: other, operator: Exists}}]\n      containers: [{{name: c, image: nginx}}]\n"
                )
            })
            .collect();
    let s = steering(STEERING);
    let mutated = expand_text(&text, &s);
    let plain = expand_text(&text, &no_rules());
    assert_eq!(mutated.pods.len(), 12);
    assert_eq!(names(&mutated.pods), names(&plain.pods));
    for (once, alone) in mutated.pods.iter().zip(&plain.pods) {
        let alone = mutate_alone(alone, &s).unwrap();
        assert_eq!(once, &alone, "{:?}", once.metadata.name);
        let spec = once.spec.as_ref().unwrap();
        assert_eq!(
            spec.node_selector.as_ref().unwrap()["karpenter.sh/nodepool"],
            "default"
        );
        assert_eq!(spec.tolerations.as_ref().unwrap().len(), 2);
    }
    // A StatefulSet pod's spread selects its workload's labels, not the labels each pod has
    // its own value of (pod name, ordinal).
    let sts = mutated
        .pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("w2-1"))
        .unwrap();
    let spread = &sts
        .spec
        .as_ref()
        .unwrap()
        .topology_spread_constraints
        .as_ref()
        .unwrap()[0];
    let selected = spread
        .label_selector
        .as_ref()
        .unwrap()
        .match_labels
        .as_ref()
        .unwrap();
    assert_eq!(selected.get(STS_POD_NAME), None, "{selected:?}");
    assert!(!selected.is_empty());
}

#[test]
fn denied_pods_are_listed_and_not_planned() {
    let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: gpu, namespace: team-riker}\nspec:\n  replicas: 2\n  template:\n    metadata: {labels: {app: gpu}}\n    spec:\n      nodeSelector: {karpenter.sh/nodepool: gpu}\n      containers: [{name: c, image: cuda}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: fine, namespace: team-riker}\nspec: {containers: [{name: c, image: nginx}]}\n";
    let w = expand_text(text, &steering(STEERING));
    assert_eq!(names(&w.pods), ["fine"]);
    assert_eq!(w.denied.len(), 2);
    for (name, message) in &w.denied {
        assert!(name.starts_with("team-riker/gpu-"), "{name}");
        assert!(message.contains("karpenter.sh/nodepool=gpu"), "{message}");
    }
    assert_ne!(w.denied[0].0, w.denied[1].0);
}

#[test]
fn namespace_labels_reach_steering() {
    // steering.yaml's rule `labelled` selects namespaces labelled nodewright.io/pool=default.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: ns1, labels: {app: p}}\nspec: {containers: [{name: c, image: nginx}]}\n";
    let namespace = |labels: &str| {
        format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns1, labels: {{{labels}}}}}\n"
        )
    };
    let node_selector = |w: &Workloads| w.pods[0].spec.as_ref().unwrap().node_selector.clone();
    let s = steering(STEERING);

    let unknown = expand_text(pod, &s);
    assert_eq!(
        node_selector(&unknown),
        None,
        "labels unknown: no rule applies"
    );
    let labelled = expand_text(
        &format!("{pod}{}", namespace("nodewright.io/pool: default")),
        &s,
    );
    assert_eq!(
        node_selector(&labelled).unwrap()["karpenter.sh/nodepool"],
        "default",
        "a Namespace after its pods counts too"
    );
    let other = expand_text(&format!("{pod}{}", namespace("team: x")), &s);
    assert_eq!(node_selector(&other), None);
    assert!(other.skipped.is_empty(), "Namespaces are read, not ignored");

    // The apiserver's own label is there as well.
    let by_name = STEERING.replace(
        "matchLabels:\n          nodewright.io/pool: default",
        "matchLabels:\n          kubernetes.io/metadata.name: ns1",
    );
    let w = expand_text(&format!("{pod}{}", namespace("")), &steering(&by_name));
    assert!(node_selector(&w).is_some());
}

#[test]
fn the_2048_game_under_the_workshop_config() {
    let w = expand_text(GAME_2048, &workshop());
    assert_eq!(w.pods.len(), 5);
    assert_eq!(
        w.skipped,
        ["1 Ingress object ignored", "1 Service object ignored"]
    );
    assert!(
        w.pods
            .iter()
            .all(|p| p.spec.as_ref().unwrap().node_selector.is_none()),
        "the workshop steers team-riker only"
    );

    let w = expand_text(&GAME_2048.replace("game-2048", "team-riker"), &workshop());
    assert_eq!(w.pods.len(), 5);
    let hash = label(&w.pods[0], POD_TEMPLATE_HASH).unwrap().to_owned();
    for pod in &w.pods {
        assert_eq!(pod.metadata.namespace.as_deref(), Some("team-riker"));
        assert!(
            pod.metadata
                .name
                .as_deref()
                .unwrap()
                .starts_with(&format!("deployment-2048-{hash}-"))
        );
        let spec = serde_json::to_value(pod.spec.as_ref().unwrap()).unwrap();
        assert_eq!(
            spec["nodeSelector"],
            json!({"karpenter.sh/nodepool": "default"})
        );
        assert_eq!(
            spec["tolerations"],
            json!([{"key": "nodewright.io/pool", "operator": "Equal", "value": "default", "effect": "NoSchedule"}])
        );
        assert_eq!(
            spec["topologySpreadConstraints"],
            json!([{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "app-2048"}},
                        "matchLabelKeys": ["pod-template-hash"]}])
        );
    }
}

fn error(text: &str) -> String {
    match parse_documents(text, "bad.yaml").and_then(|m| expand(m, &no_rules())) {
        Err(e) => e.to_string(),
        Ok(w) => panic!("no error for {text:?}: {w:?}"),
    }
}

#[test]
fn bad_documents_are_reported_with_file_document_and_field() {
    let good = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: ok}}\n{POD}\n");
    let deployment = |spec: &str| {
        format!(
            "{good}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: shop}}\nspec:\n{spec}\n"
        )
    };
    let cases: Vec<(String, &[&str])> = vec![
            (
                format!("{good}---\nkind: Pod\nmetadata: {{name: [\n"),
                &["bad.yaml: document 2: invalid YAML", "at line 8 column 1"],
            ),
            ("{\"kind\": \"Pod\",".to_owned(), &["bad.yaml: document 1: invalid JSON", "line 1"]),
            (format!("{good}---\njust text\n"), &["document 2: not a mapping but a string"]),
            ("- 3\n".to_owned(), &["document 1, [0]: not a mapping but a number (3)"]),
            ("apiVersion: v1\nmetadata: {}\n".to_owned(), &["document 1: missing kind"]),
            ("kind: Pod\n".to_owned(), &["document 1: Pod: missing apiVersion"]),
            ("kind: 7\napiVersion: v1\n".to_owned(), &["kind is a number (7), expected a string"]),
            (
                "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: a}\n  spec: {containers: [{name: c, image: x, resources: {requests: {cpu: [1]}}}]}\n".to_owned(),
                &["bad.yaml: document 1, items[0] (Pod default/a): spec.containers[0].resources.requests.cpu: invalid type: sequence"],
            ),
            (
                format!("{good}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p, labels: {{version: 1.0}}}}\n{POD}\n"),
                &["document 2 (Pod default/p): metadata.labels.version: invalid type: floating point"],
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {namespace: x}\nspec: {}\n".to_owned(),
                &["(Pod): metadata.name: missing"],
            ),
            (
                deployment("  template:\n    spec: {containers: [{name: c, image: x, ports: [{containerPort: eighty}]}]}"),
                &["document 2 (Deployment shop/web): spec.template.spec.containers[0].ports[0].containerPort: invalid type: string \"eighty\""],
            ),
            (
                deployment("  replicas: -1\n  template: {spec: {containers: []}}"),
                &["(Deployment shop/web): spec.replicas: a number (-1), expected a non-negative integer"],
            ),
            (
                deployment("  replicas: 100000000\n  template: {spec: {containers: []}}"),
                &["spec.replicas: 100000000 is more than"],
            ),
            (deployment("  replicas: 1"), &["(Deployment shop/web): spec.template: missing"]),
            (
                deployment("  template: {metadata: {labels: [a]}, spec: {containers: []}}"),
                &["spec.template.metadata.labels: a sequence, expected a mapping"],
            ),
            (
                "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec: {parallelism: two, template: {spec: {containers: []}}}\n".to_owned(),
                &["(Job default/j): spec.parallelism: a string (\"two\")"],
            ),
            (
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: n, labels: {a: [1]}}\n".to_owned(),
                &["(Namespace n): metadata.labels.a: invalid type"],
            ),
        ];
    for (text, parts) in cases {
        let message = error(&text);
        for part in parts {
            assert!(message.contains(part), "{message:?} lacks {part:?}");
        }
    }

    // Objects given directly are numbered by position.
    let e = expand(
        vec![json!({"apiVersion": "v1", "kind": "Service"}), json!(3)],
        &no_rules(),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("input: document 2: not a mapping"),
        "{e}"
    );
}

#[test]
fn mangled_manifests_never_panic() {
    let text = format!(
        "{GAME_2048}---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: db}}\nspec:\n  replicas: 2\n  template:\n    metadata: {{labels: {{app: db}}}}\n    spec: {{containers: [{{name: c, image: x}}]}}\n"
    );
    let s = steering(STEERING);
    let mut outcomes = [0usize; 2];
    for (i, _) in text.char_indices().step_by(3) {
        for replacement in ["", ":", "- ", "{", "\n", "\"", "7", "[]", "null"] {
            let mangled = format!("{}{replacement}{}", &text[..i], &text[i + 1..]);
            let result = parse_documents(&mangled, "m.yaml").and_then(|m| expand(m, &s));
            outcomes[usize::from(result.is_ok())] += 1;
        }
    }
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
}

/// `cargo test --release --lib plan::manifests::tests::twenty_thousand -- --ignored --nocapture`
#[test]
#[ignore = "timing; run in release"]
fn twenty_thousand_pod_documents() {
    const GROUPS: [&str; 5] = [
        "",
        "  topologySpreadConstraints:\n  - maxSkew: 1\n    topologyKey: topology.kubernetes.io/zone\n    whenUnsatisfiable: DoNotSchedule\n    labelSelector:\n      matchLabels: {group: g1}\n",
        "  topologySpreadConstraints:\n  - maxSkew: 1\n    topologyKey: kubernetes.io/hostname\n    whenUnsatisfiable: DoNotSchedule\n    labelSelector:\n      matchLabels: {group: g2}\n",
        "  affinity:\n    podAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n      - topologyKey: topology.kubernetes.io/zone\n        labelSelector:\n          matchLabels: {group: g3}\n",
        "  affinity:\n    podAntiAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n      - topologyKey: kubernetes.io/hostname\n        labelSelector:\n          matchLabels: {group: g4}\n",
    ];
    let mut text = String::new();
    for i in 0..20_000 {
        let g = i % 5;
        text.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: benchmix-g{g}-{i}\n  namespace: team-riker\n  labels:\n    app: benchmix\n    group: g{g}\nspec:\n{}  containers:\n  - name: pause\n    image: registry.k8s.io/pause:3.9\n    resources:\n      requests:\n        cpu: 250m\n        memory: 512Mi\n",
                GROUPS[g]
            ));
    }
    let s = steering(STEERING);
    let start = std::time::Instant::now();
    let objects = parse_documents(&text, "mix.yaml").unwrap();
    let parsed = start.elapsed();
    let w = expand(objects, &s).unwrap();
    let total = start.elapsed();
    assert_eq!(w.pods.len(), 20_000);
    let json: String = w
        .pods
        .iter()
        .map(|p| serde_json::to_string(p).unwrap() + "\n")
        .collect();
    let start = std::time::Instant::now();
    let objects = parse_documents(&json, "mix.json").unwrap();
    let json_parsed = start.elapsed();
    expand(objects, &no_rules()).unwrap();
    let json_total = start.elapsed();
    println!(
        "20,000 pods, {} KB YAML: parse {parsed:?}, parse+expand+mutate {total:?}; {} KB JSON: parse {json_parsed:?}, total {json_total:?}",
        text.len() / 1024,
        json.len() / 1024
    );
}
