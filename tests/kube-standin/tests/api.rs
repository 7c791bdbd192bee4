//! Api calls of the real kube-rs client against the stand-in: CRUD, errors, patches,
//! deletion semantics, selectors, pagination, CRDs and discovery.

mod common;

use common::{bounded, env, pod};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, Preconditions,
};
use kube::core::Status;
use serde_json::json;
use std::time::Duration;

fn api_err(e: kube::Error) -> Box<Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "data": data.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
    }))
    .unwrap()
}

#[tokio::test]
async fn configmap_crud_and_conflict() {
    bounded(30, async {
        let e = env().await;
        let cms: Api<ConfigMap> = Api::namespaced(e.client.clone(), "default");
        let created = cms.create(&PostParams::default(), &cm("a", &[("k", "v")])).await.unwrap();
        let meta = &created.metadata;
        assert_eq!(meta.namespace.as_deref(), Some("default"));
        assert!(meta.uid.as_deref().is_some_and(|u| u.len() == 36));
        assert!(meta.creation_timestamp.is_some());
        let rv1: u64 = meta.resource_version.as_deref().unwrap().parse().unwrap();

        let got = cms.get("a").await.unwrap();
        assert_eq!(got.data.as_ref().unwrap()["k"], "v");

        // Replace with the current resourceVersion: accepted, rv moves on.
        let mut next = got.clone();
        next.data.as_mut().unwrap().insert("k".into(), "v2".into());
        let replaced = cms.replace("a", &PostParams::default(), &next).await.unwrap();
        let rv2: u64 = replaced.metadata.resource_version.as_deref().unwrap().parse().unwrap();
        assert!(rv2 > rv1);
        assert_eq!(replaced.metadata.uid, meta.uid);

        // Replace with the stale one: 409 Conflict, worded as the apiserver words it.
        let err = api_err(cms.replace("a", &PostParams::default(), &next).await.unwrap_err());
        assert_eq!(err.code, 409);
        assert_eq!(err.reason, "Conflict");
        assert_eq!(
            err.message,
            "Operation cannot be fulfilled on configmaps \"a\": the object has been modified; please apply your changes to the latest version and try again"
        );

        // Create again: AlreadyExists.
        let err = api_err(cms.create(&PostParams::default(), &cm("a", &[])).await.unwrap_err());
        assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"));
        assert_eq!(err.message, "configmaps \"a\" already exists");

        // Missing: NotFound with details.
        let err = api_err(cms.get("nope").await.unwrap_err());
        assert_eq!((err.code, err.reason.as_str(), err.message.as_str()), (404, "NotFound", "configmaps \"nope\" not found"));
        assert!(cms.get_opt("nope").await.unwrap().is_none());

        // Delete: immediate, then 404.
        let gone = cms.delete("a", &DeleteParams::default()).await.unwrap();
        assert!(gone.is_right(), "configmap deletion answers a Status");
        assert_eq!(api_err(cms.get("a").await.unwrap_err()).code, 404);
        assert_eq!(api_err(cms.delete("a", &DeleteParams::default()).await.unwrap_err()).code, 404);
    })
    .await;
}

#[tokio::test]
async fn create_validation() {
    bounded(30, async {
        let e = env().await;
        let cms: Api<ConfigMap> = Api::namespaced(e.client.clone(), "default");
        // No name and no generateName: 422 Invalid.
        let err = api_err(
            cms.create(&PostParams::default(), &ConfigMap::default())
                .await
                .unwrap_err(),
        );
        assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
        assert!(
            err.message.contains("name or generateName is required"),
            "{}",
            err.message
        );
        // Invalid name: 422.
        let err = api_err(
            cms.create(&PostParams::default(), &cm("Not_Valid", &[]))
                .await
                .unwrap_err(),
        );
        assert_eq!(err.code, 422);
        // generateName: a 5-character random suffix.
        let mut g = ConfigMap::default();
        g.metadata.generate_name = Some("gen-".into());
        let a = cms.create(&PostParams::default(), &g).await.unwrap();
        let b = cms.create(&PostParams::default(), &g).await.unwrap();
        let (an, bn) = (a.metadata.name.unwrap(), b.metadata.name.unwrap());
        assert!(an.starts_with("gen-") && an.len() == 9, "{an}");
        assert_ne!(an, bn);
        // Namespace that does not exist: 404 on namespaces.
        let missing: Api<ConfigMap> = Api::namespaced(e.client.clone(), "no-such-ns");
        let err = api_err(
            missing
                .create(&PostParams::default(), &cm("x", &[]))
                .await
                .unwrap_err(),
        );
        assert_eq!(
            (err.code, err.message.as_str()),
            (404, "namespaces \"no-such-ns\" not found")
        );
        // Namespace in the body differs from the path: 400.
        let mut other = cm("y", &[]);
        other.metadata.namespace = Some("kube-system".into());
        assert_eq!(
            api_err(
                cms.create(&PostParams::default(), &other)
                    .await
                    .unwrap_err()
            )
            .code,
            400
        );
        // Dry run: answered, not stored.
        let dry = PostParams {
            dry_run: true,
            ..Default::default()
        };
        cms.create(&dry, &cm("dry", &[])).await.unwrap();
        assert!(cms.get_opt("dry").await.unwrap().is_none());
        // An undecodable body: 400 BadRequest with a Status.
        let req = http::Request::post("/api/v1/namespaces/default/configmaps")
            .header("content-type", "application/json")
            .body(b"{not json".to_vec())
            .unwrap();
        let err = api_err(e.client.request::<ConfigMap>(req).await.unwrap_err());
        assert_eq!((err.code, err.reason.as_str()), (400, "BadRequest"));
    })
    .await;
}

#[tokio::test]
async fn namespaces_and_nodes() {
    bounded(30, async {
        let e = env().await;
        let nss: Api<Namespace> = Api::all(e.client.clone());
        let names: Vec<String> = nss.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|n| n.metadata.name).collect();
        for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            assert!(names.contains(&n.to_string()), "{names:?}");
        }
        let mut ns = Namespace::default();
        ns.metadata.name = Some("team-riker".into());
        ns.metadata.labels = Some([("team".to_string(), "riker".to_string())].into());
        let ns = nss.create(&PostParams::default(), &ns).await.unwrap();
        assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Active"));
        assert_eq!(ns.metadata.labels.unwrap()["kubernetes.io/metadata.name"], "team-riker");

        let cms: Api<ConfigMap> = Api::namespaced(e.client.clone(), "team-riker");
        cms.create(&PostParams::default(), &cm("c", &[])).await.unwrap();
        // Deleting the namespace deletes what is in it.
        nss.delete("team-riker", &DeleteParams::default()).await.unwrap();
        assert!(nss.get_opt("team-riker").await.unwrap().is_none());
        let all: Api<ConfigMap> = Api::all(e.client.clone());
        assert!(all.list(&ListParams::default()).await.unwrap().items.is_empty());

        let nodes: Api<Node> = Api::all(e.client.clone());
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "ip-10-0-0-1.ec2.internal", "labels": {"karpenter.sh/nodepool": "default"}},
            "spec": {"providerID": "aws:///us-east-1a/i-0123"},
            "status": {"allocatable": {"cpu": "4", "pods": "58"}}
        }))
        .unwrap();
        let n = nodes.create(&PostParams::default(), &node).await.unwrap();
        assert_eq!(n.status.unwrap().allocatable.unwrap()["pods"].0, "58");
        assert!(n.metadata.namespace.is_none());
        let patched = nodes
            .patch_status(
                "ip-10-0-0-1.ec2.internal",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})),
            )
            .await
            .unwrap();
        assert_eq!(patched.status.unwrap().conditions.unwrap()[0].type_, "Ready");
    })
    .await;
}

#[tokio::test]
async fn patches_and_status_subresource() {
    bounded(30, async {
        let e = env().await;
        let pods: Api<Pod> = Api::namespaced(e.client.clone(), "default");
        let mut p = pod("web", &[("app", "web")], None);
        p.status = Some(serde_json::from_value(json!({"phase": "Running"})).unwrap());
        let created = pods.create(&PostParams::default(), &p).await.unwrap();
        // Status from a create is not stored: a new pod is Pending.
        assert_eq!(created.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));
        assert_eq!(created.metadata.generation, Some(1));

        // Merge patch.
        let merged = pods
            .patch("web", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"tier": "front", "app": null}}})))
            .await
            .unwrap();
        let labels = merged.metadata.labels.clone().unwrap();
        assert_eq!(labels.get("tier").map(String::as_str), Some("front"));
        assert!(!labels.contains_key("app"));

        // JSON patch, including a passing test op.
        let ops: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/labels/tier", "value": "front"},
            {"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}},
        ]))
        .unwrap();
        let jp = pods.patch("web", &PatchParams::default(), &Patch::<()>::Json(ops)).await.unwrap();
        assert_eq!(jp.metadata.annotations.unwrap()["a"], "b");

        // A failing test op: 422 Invalid, nothing written.
        let rv_before = pods.get("web").await.unwrap().metadata.resource_version;
        let bad: json_patch::Patch = serde_json::from_value(json!([{"op": "test", "path": "/metadata/labels/tier", "value": "back"}])).unwrap();
        let err = api_err(pods.patch("web", &PatchParams::default(), &Patch::<()>::Json(bad)).await.unwrap_err());
        assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
        assert_eq!(pods.get("web").await.unwrap().metadata.resource_version, rv_before);

        // A merge patch carrying a stale resourceVersion is a precondition: 409.
        let err = api_err(
            pods.patch("web", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"resourceVersion": "1", "labels": {"x": "y"}}})))
                .await
                .unwrap_err(),
        );
        assert_eq!(err.code, 409);

        // Status goes through /status only; the main resource ignores it.
        let ignored = pods
            .patch("web", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Failed"}})))
            .await
            .unwrap();
        assert_eq!(ignored.status.unwrap().phase.as_deref(), Some("Pending"));
        let running = pods
            .patch_status("web", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Running"}, "metadata": {"labels": {"ignored": "yes"}}})))
            .await
            .unwrap();
        assert_eq!(running.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
        assert!(!running.metadata.labels.as_ref().unwrap().contains_key("ignored"));
        assert_eq!(running.metadata.generation, Some(1), "status and metadata changes keep the generation");
        let mut st = running.clone();
        st.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let replaced = pods.replace_status("web", &PostParams::default(), &st).await.unwrap();
        assert_eq!(replaced.status.unwrap().phase.as_deref(), Some("Succeeded"));

        // Spec changes bump the generation.
        let spec = pods
            .patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"activeDeadlineSeconds": 30}})))
            .await
            .unwrap();
        assert_eq!(spec.metadata.generation, Some(2));

        // A no-op patch writes nothing.
        let same = pods.patch("web", &PatchParams::default(), &Patch::Merge(json!({}))).await.unwrap();
        assert_eq!(same.metadata.resource_version, spec.metadata.resource_version);

        // Strategic merge patch is accepted (applied as a merge patch).
        let smp = pods
            .patch("web", &PatchParams::default(), &Patch::Strategic(json!({"metadata": {"labels": {"smp": "1"}}})))
            .await
            .unwrap();
        assert_eq!(smp.metadata.labels.unwrap()["smp"], "1");

        // Server-side apply is not implemented: 415.
        let err = api_err(
            pods.patch("web", &PatchParams::apply("test"), &Patch::Apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}})))
                .await
                .unwrap_err(),
        );
        assert_eq!(err.code, 415);
    })
    .await;
}

#[tokio::test]
async fn leases_compare_and_swap() {
    bounded(30, async {
        let e = env().await;
        let leases: Api<Lease> = Api::namespaced(e.client.clone(), "kube-node-lease");
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": "nodewright"},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}
        }))
        .unwrap();
        let l = leases.create(&PostParams::default(), &lease).await.unwrap();
        // Two writers from the same version: exactly one wins.
        let mut a = l.clone();
        a.spec.as_mut().unwrap().holder_identity = Some("a2".into());
        let mut b = l.clone();
        b.spec.as_mut().unwrap().holder_identity = Some("b".into());
        let pp = PostParams::default();
        let (ra, rb) = tokio::join!(
            leases.replace("nodewright", &pp, &a),
            leases.replace("nodewright", &pp, &b)
        );
        assert!(
            ra.is_ok() != rb.is_ok(),
            "exactly one compare-and-swap wins"
        );
        let loser = match (ra, rb) {
            (Err(e), _) | (_, Err(e)) => e,
            _ => unreachable!(),
        };
        let err = api_err(loser);
        assert_eq!(err.code, 409);
        assert!(
            err.message.starts_with(
                "Operation cannot be fulfilled on leases.coordination.k8s.io \"nodewright\""
            ),
            "{}",
            err.message
        );
    })
    .await;
}

#[tokio::test]
async fn concurrent_cas_increments_are_exact() {
    bounded(60, async {
        let e = env().await;
        let cms: Api<ConfigMap> = Api::namespaced(e.client.clone(), "default");
        cms.create(&PostParams::default(), &cm("counter", &[("n", "0")]))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let cms = cms.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..5 {
                    loop {
                        let mut c = cms.get("counter").await.unwrap();
                        let n: u64 = c.data.as_ref().unwrap()["n"].parse().unwrap();
                        c.data
                            .as_mut()
                            .unwrap()
                            .insert("n".into(), (n + 1).to_string());
                        match cms.replace("counter", &PostParams::default(), &c).await {
                            Ok(_) => break,
                            Err(kube::Error::Api(s)) if s.code == 409 => continue,
                            Err(other) => panic!("{other:?}"),
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(cms.get("counter").await.unwrap().data.unwrap()["n"], "100");
    })
    .await;
}

#[tokio::test]
async fn pod_deletion_grace_finalizers_preconditions() {
    bounded(30, async {
        let e = env().await;
        let pods: Api<Pod> = Api::namespaced(e.client.clone(), "default");
        // Unscheduled: deleted at once even with a grace period (as the apiserver does).
        pods.create(&PostParams::default(), &pod("pending", &[], None))
            .await
            .unwrap();
        let d = pods
            .delete("pending", &DeleteParams::default())
            .await
            .unwrap();
        assert!(d.is_left());
        assert!(pods.get_opt("pending").await.unwrap().is_none());

        // Scheduled, grace 1 s: marked, then gone.
        pods.create(&PostParams::default(), &pod("bound", &[], Some("node-1")))
            .await
            .unwrap();
        let d = pods
            .delete(
                "bound",
                &DeleteParams {
                    grace_period_seconds: Some(1),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let marked = d.left().expect("the pod, terminating");
        assert!(marked.metadata.deletion_timestamp.is_some());
        assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(1));
        assert!(pods.get_opt("bound").await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(pods.get_opt("bound").await.unwrap().is_none());

        // gracePeriodSeconds=0: at once.
        pods.create(&PostParams::default(), &pod("now", &[], Some("node-1")))
            .await
            .unwrap();
        pods.delete("now", &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
        assert!(pods.get_opt("now").await.unwrap().is_none());

        // Preconditions: a wrong resourceVersion is a 409, nothing deleted.
        let p = pods
            .create(&PostParams::default(), &pod("pre", &[], None))
            .await
            .unwrap();
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: Some("1".into()),
                uid: None,
            }),
            ..Default::default()
        };
        let err = api_err(pods.delete("pre", &dp).await.unwrap_err());
        assert_eq!(err.code, 409);
        assert!(
            err.message.contains("Precondition failed"),
            "{}",
            err.message
        );
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: p.metadata.resource_version.clone(),
                uid: p.metadata.uid.clone(),
            }),
            ..Default::default()
        };
        pods.delete("pre", &dp).await.unwrap();
        assert!(pods.get_opt("pre").await.unwrap().is_none());

        // Finalizers hold deletion until they are removed.
        let cms: Api<ConfigMap> = Api::namespaced(e.client.clone(), "default");
        let mut f = cm("held", &[]);
        f.metadata.finalizers = Some(vec!["nodewright.io/test".into()]);
        cms.create(&PostParams::default(), &f).await.unwrap();
        let d = cms.delete("held", &DeleteParams::default()).await.unwrap();
        assert!(d.left().unwrap().metadata.deletion_timestamp.is_some());
        let held = cms.get("held").await.unwrap();
        assert!(held.metadata.deletion_timestamp.is_some());
        // No new finalizers on a terminating object.
        let err = api_err(
            cms.patch(
                "held",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": ["a", "nodewright.io/test"]}})),
            )
            .await
            .unwrap_err(),
        );
        assert_eq!(err.code, 422);
        cms.patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
        assert!(cms.get_opt("held").await.unwrap().is_none());

        // Dry-run delete keeps the object.
        cms.create(&PostParams::default(), &cm("kept", &[]))
            .await
            .unwrap();
        cms.delete(
            "kept",
            &DeleteParams {
                dry_run: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(cms.get_opt("kept").await.unwrap().is_some());

        // delete_collection with a selector.
        for (n, l) in [("c1", "x"), ("c2", "x"), ("c3", "y")] {
            let mut c = cm(n, &[]);
            c.metadata.labels = Some([("g".to_string(), l.to_string())].into());
            cms.create(&PostParams::default(), &c).await.unwrap();
        }
        let out = cms
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels("g=x"),
            )
            .await
            .unwrap();
        assert_eq!(out.left().unwrap().items.len(), 2);
        let left: Vec<_> = cms
            .list(&ListParams::default().labels("g"))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect();
        assert_eq!(left, vec!["c3"]);
    })
    .await;
}

#[tokio::test]
async fn selectors() {
    bounded(30, async {
        let e = env().await;
        let pods: Api<Pod> = Api::namespaced(e.client.clone(), "default");
        pods.create(
            &PostParams::default(),
            &pod("a", &[("app", "web"), ("tier", "front")], Some("n1")),
        )
        .await
        .unwrap();
        pods.create(&PostParams::default(), &pod("b", &[("app", "web")], None))
            .await
            .unwrap();
        pods.create(
            &PostParams::default(),
            &pod("c", &[("app", "db")], Some("n2")),
        )
        .await
        .unwrap();
        pods.patch_status(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await
        .unwrap();
        let names = |l: kube::core::ObjectList<Pod>| {
            l.items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect::<Vec<_>>()
        };
        let q = |lp: ListParams| {
            let pods = pods.clone();
            async move { names(pods.list(&lp).await.unwrap()) }
        };
        assert_eq!(q(ListParams::default().labels("app=web")).await, ["a", "b"]);
        assert_eq!(
            q(ListParams::default().labels("app==web,tier=front")).await,
            ["a"]
        );
        assert_eq!(q(ListParams::default().labels("app!=web")).await, ["c"]);
        assert_eq!(
            q(ListParams::default().labels("app in (db, web),!tier")).await,
            ["b", "c"]
        );
        assert_eq!(
            q(ListParams::default().labels("app notin (web)")).await,
            ["c"]
        );
        assert_eq!(q(ListParams::default().labels("tier")).await, ["a"]);
        assert_eq!(
            q(ListParams::default().fields("spec.nodeName=")).await,
            ["b"]
        );
        assert_eq!(
            q(ListParams::default().fields("spec.nodeName!=")).await,
            ["a", "c"]
        );
        assert_eq!(
            q(ListParams::default().fields("status.phase=Running")).await,
            ["c"]
        );
        assert_eq!(
            q(ListParams::default().fields("status.phase!=Running,metadata.name!=a")).await,
            ["b"]
        );
        assert_eq!(
            q(ListParams::default()
                .fields("metadata.name=b")
                .labels("app=web"))
            .await,
            ["b"]
        );
        let err = api_err(
            pods.list(&ListParams::default().fields("spec.bogus=1"))
                .await
                .unwrap_err(),
        );
        assert_eq!((err.code, err.reason.as_str()), (400, "BadRequest"));
        let err = api_err(
            pods.list(&ListParams::default().labels("app in (web"))
                .await
                .unwrap_err(),
        );
        assert_eq!(err.code, 400);
        // Across namespaces.
        let all: Api<Pod> = Api::all(e.client.clone());
        assert_eq!(
            all.list(&ListParams::default().fields("metadata.namespace=default"))
                .await
                .unwrap()
                .items
                .len(),
            3
        );
        assert_eq!(
            all.list(&ListParams::default().fields("metadata.namespace=kube-system"))
                .await
                .unwrap()
                .items
                .len(),
            0
        );
    })
    .await;
}

#[tokio::test]
async fn pagination_over_500_objects() {
    bounded(60, async {
        let e = env().await;
        let cms: Api<ConfigMap> = Api::namespaced(e.client.clone(), "default");
        let mut tasks = Vec::new();
        for chunk in 0..8 {
            let cms = cms.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..80 {
                    cms.create(
                        &PostParams::default(),
                        &cm(&format!("cm-{chunk}-{i:03}"), &[]),
                    )
                    .await
                    .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // 640 objects, pages of 250: a consistent snapshot even with writes between pages.
        let first = cms.list(&ListParams::default().limit(250)).await.unwrap();
        assert_eq!(first.items.len(), 250);
        assert_eq!(first.metadata.remaining_item_count, Some(390));
        let snapshot_rv = first.metadata.resource_version.clone().unwrap();
        cms.create(&PostParams::default(), &cm("cm-9-late", &[]))
            .await
            .unwrap();
        cms.delete("cm-7-079", &DeleteParams::default())
            .await
            .unwrap();
        let mut all: Vec<String> = first
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect();
        let mut token = first.metadata.continue_;
        while let Some(t) = token.filter(|t| !t.is_empty()) {
            let page = cms
                .list(&ListParams::default().limit(250).continue_token(&t))
                .await
                .unwrap();
            assert_eq!(page.metadata.resource_version.as_ref(), Some(&snapshot_rv));
            all.extend(page.items.into_iter().filter_map(|c| c.metadata.name));
            token = page.metadata.continue_;
        }
        assert_eq!(all.len(), 640);
        assert!(all.contains(&"cm-7-079".to_string()) && !all.contains(&"cm-9-late".to_string()));
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(all, sorted, "lists come back in key order");
        // Without a limit: everything current.
        assert_eq!(
            cms.list(&ListParams::default()).await.unwrap().items.len(),
            640
        );
        // kube-rs's own paging helper (the watcher's initial list uses limit=500 the same way).
        let store_size = {
            let mut n = 0;
            let mut lp = ListParams::default().limit(500);
            loop {
                let page = cms.list(&lp).await.unwrap();
                n += page.items.len();
                match page.metadata.continue_.filter(|c| !c.is_empty()) {
                    Some(c) => lp = lp.continue_token(&c),
                    None => break,
                }
            }
            n
        };
        assert_eq!(store_size, 640);
        // A continue token older than the retained history: 410 Expired.
        let first = cms.list(&ListParams::default().limit(10)).await.unwrap();
        cms.create(&PostParams::default(), &cm("after", &[]))
            .await
            .unwrap();
        e.standin.compact_history();
        let err = api_err(
            cms.list(
                &ListParams::default()
                    .limit(10)
                    .continue_token(first.metadata.continue_.as_deref().unwrap()),
            )
            .await
            .unwrap_err(),
        );
        assert_eq!((err.code, err.reason.as_str()), (410, "Expired"));
    })
    .await;
}

fn crd(scope: &str) -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "quotaledgers.nodewright.io"},
        "spec": {
            "group": "nodewright.io",
            "scope": scope,
            "names": {"plural": "quotaledgers", "singular": "quotaledger", "kind": "QuotaLedger", "shortNames": ["ql"]},
            "versions": [{
                "name": "v1alpha1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                "subresources": {"status": {}}
            }]
        }
    }))
    .unwrap()
}

#[tokio::test]
async fn crd_serves_custom_resources() {
    bounded(30, async {
        let e = env().await;
        let crds: Api<CustomResourceDefinition> = Api::all(e.client.clone());
        let created = crds
            .create(&PostParams::default(), &crd("Namespaced"))
            .await
            .unwrap();
        let conds = created.status.unwrap().conditions.unwrap();
        assert!(
            conds
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        );
        kube::runtime::wait::await_condition(
            crds.clone(),
            "quotaledgers.nodewright.io",
            kube::runtime::conditions::is_crd_established(),
        )
        .await
        .unwrap();

        // Discovery finds the new group and resource.
        let discovery = kube::Discovery::new(e.client.clone()).run().await.unwrap();
        let (ar, caps) = discovery
            .groups()
            .flat_map(|g| g.recommended_resources())
            .find(|(ar, _)| ar.kind == "QuotaLedger")
            .expect("QuotaLedger discovered");
        assert_eq!(
            (ar.group.as_str(), ar.version.as_str(), ar.plural.as_str()),
            ("nodewright.io", "v1alpha1", "quotaledgers")
        );
        assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
        assert!(caps.subresources.iter().any(|(s, _)| s.plural == "status"));
        assert!(
            discovery
                .groups()
                .any(|g| g.name() == "coordination.k8s.io")
        );

        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("nodewright.io", "v1alpha1", "QuotaLedger"),
            "quotaledgers",
        );
        let ledgers: Api<DynamicObject> = Api::namespaced_with(e.client.clone(), "default", &ar);
        let obj = DynamicObject::new("team-riker", &ar)
            .data(json!({"spec": {"maxPods": 10}, "status": {"ignored": true}}));
        let l = ledgers.create(&PostParams::default(), &obj).await.unwrap();
        assert_eq!(l.data["spec"]["maxPods"], 10);
        assert!(
            l.data.get("status").is_none(),
            "status is a subresource: dropped on create"
        );
        assert_eq!(
            l.types.as_ref().unwrap().api_version,
            "nodewright.io/v1alpha1"
        );

        let s = ledgers
            .patch_status(
                "team-riker",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"reserved": 3}})),
            )
            .await
            .unwrap();
        assert_eq!(s.data["status"]["reserved"], 3);
        let mut stale = l.clone();
        stale.data["spec"]["maxPods"] = json!(11);
        assert_eq!(
            api_err(
                ledgers
                    .replace("team-riker", &PostParams::default(), &stale)
                    .await
                    .unwrap_err()
            )
            .code,
            409
        );
        let mut fresh = s.clone();
        fresh.data["spec"]["maxPods"] = json!(12);
        let r = ledgers
            .replace("team-riker", &PostParams::default(), &fresh)
            .await
            .unwrap();
        assert_eq!(r.data["spec"]["maxPods"], 12);
        assert_eq!(
            r.data["status"]["reserved"], 3,
            "a replace keeps the status"
        );
        assert_eq!(r.metadata.generation, Some(2));
        assert_eq!(
            ledgers
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .len(),
            1
        );
        let err = api_err(ledgers.get("missing").await.unwrap_err());
        assert_eq!(
            err.message,
            "quotaledgers.nodewright.io \"missing\" not found"
        );

        // Deleting the CRD removes its objects and stops serving them.
        crds.delete("quotaledgers.nodewright.io", &DeleteParams::default())
            .await
            .unwrap();
        let err = api_err(ledgers.list(&ListParams::default()).await.unwrap_err());
        assert_eq!(err.code, 404);

        // A cluster-scoped CRD.
        crds.create(&PostParams::default(), &crd("Cluster"))
            .await
            .unwrap();
        let cluster: Api<DynamicObject> = Api::all_with(e.client.clone(), &ar);
        cluster
            .create(&PostParams::default(), &DynamicObject::new("global", &ar))
            .await
            .unwrap();
        assert!(
            cluster
                .get("global")
                .await
                .unwrap()
                .metadata
                .namespace
                .is_none()
        );

        // An invalid CRD: 422.
        let mut bad = crd("Cluster");
        bad.metadata.name = Some("wrong.name".into());
        assert_eq!(
            api_err(crds.create(&PostParams::default(), &bad).await.unwrap_err()).code,
            422
        );
    })
    .await;
}

#[tokio::test]
async fn discovery_version_and_metadata_calls() {
    bounded(30, async {
        let e = env().await;
        let v = e.client.apiserver_version().await.unwrap();
        assert_eq!(v.major, "1");
        let core = e.client.list_core_api_resources("v1").await.unwrap();
        assert!(core.resources.iter().any(|r| r.name == "pods/status"));
        let groups = e.client.list_api_groups().await.unwrap();
        assert!(
            groups
                .groups
                .iter()
                .any(|g| g.name == "apiextensions.k8s.io")
        );
        // Metadata-only calls (PartialObjectMetadata).
        let pods: Api<Pod> = Api::namespaced(e.client.clone(), "default");
        pods.create(&PostParams::default(), &pod("m", &[("a", "b")], None))
            .await
            .unwrap();
        let meta = pods.get_metadata("m").await.unwrap();
        assert_eq!(meta.metadata.labels.unwrap()["a"], "b");
        let metas = pods.list_metadata(&ListParams::default()).await.unwrap();
        assert_eq!(metas.items.len(), 1);
        // Health.
        let req = http::Request::get("/healthz").body(Vec::new()).unwrap();
        assert_eq!(e.client.request_text(req).await.unwrap(), "ok");
    })
    .await;
}
