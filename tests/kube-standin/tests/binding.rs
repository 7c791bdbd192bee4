//! The `pods/binding` subresource (what kube-scheduler's default binder posts) and the pod
//! status writes a scheduler makes (`PodScheduled=False`, merge patch on `pods/status`),
//! through the real kube-rs client.

mod common;

use common::{bounded, env, pod};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::core::Status;
use serde_json::{Value, json};
use std::time::Duration;

fn api_err(e: kube::Error) -> Box<Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn binding(name: &str, node: &str) -> Binding {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    }))
    .unwrap()
}

fn condition(p: &Pod, ty: &str) -> Option<Value> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| serde_json::to_value(c).unwrap())
}

#[tokio::test]
async fn binding_assigns_the_node_once_and_emits_a_modified_event() {
    bounded(30, async {
        let e = env().await;
        let pods: Api<Pod> = Api::namespaced(e.client.clone(), "default");
        let created = pods
            .create(&PostParams::default(), &pod("web", &[("app", "web")], None))
            .await
            .unwrap();
        let rv0: u64 = created.metadata.resource_version.clone().unwrap().parse().unwrap();

        // A scheduler first marks it unschedulable: merge patch on pods/status.
        let marked = pods
            .patch_status(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": "0/0 nodes are available", "lastProbeTime": null,
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }]}})),
            )
            .await
            .unwrap();
        let c = condition(&marked, "PodScheduled").expect("condition written");
        assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("False"), Some("Unschedulable")));
        assert_eq!(marked.status.as_ref().unwrap().phase.as_deref(), Some("Pending"), "phase kept");
        assert!(marked.spec.as_ref().unwrap().node_name.is_none());
        let rv1: u64 = marked.metadata.resource_version.clone().unwrap().parse().unwrap();
        assert!(rv1 > rv0);

        let mut stream = pods
            .watch(&WatchParams::default(), &rv1.to_string())
            .await
            .unwrap()
            .boxed();

        // Bind: 201 with a Status Success, as kube-apiserver answers.
        let status: Status = pods
            .create_subresource("binding", "web", &PostParams::default(), &binding("web", "n1"))
            .await
            .unwrap();
        assert_eq!(status.code, 201);
        assert!(status.is_success(), "{status:?}");

        let bound = pods.get("web").await.unwrap();
        assert_eq!(bound.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
        let c = condition(&bound, "PodScheduled").expect("PodScheduled");
        assert_eq!(c["status"], "True");
        assert!(c.get("reason").is_none() && c.get("message").is_none(), "{c}");
        assert_ne!(c["lastTransitionTime"], "2026-01-01T00:00:00Z", "status changed: new transition time");
        assert_eq!(bound.status.as_ref().unwrap().conditions.as_ref().unwrap().len(), 1, "replaced, not appended");
        let rv2: u64 = bound.metadata.resource_version.clone().unwrap().parse().unwrap();
        assert!(rv2 > rv1);
        assert_eq!(bound.metadata.generation, Some(1), "a binding does not bump the generation");

        // The watch sees one MODIFIED with the node name.
        let ev = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("an event")
            .unwrap()
            .unwrap();
        match ev {
            WatchEvent::Modified(p) => {
                assert_eq!(p.spec.unwrap().node_name.as_deref(), Some("n1"));
                assert_eq!(p.metadata.resource_version.as_deref(), Some(rv2.to_string().as_str()));
            }
            other => panic!("expected MODIFIED, got {other:?}"),
        }

        // Binding again: 409 on pods/binding, worded as the apiserver words it; nothing written.
        let err = api_err(
            pods.create_subresource::<Binding, Status>("binding", "web", &PostParams::default(), &binding("web", "n2"))
                .await
                .unwrap_err(),
        );
        assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
        assert_eq!(
            err.message,
            "Operation cannot be fulfilled on pods/binding \"web\": pod web is already assigned to node \"n1\""
        );
        assert_eq!(err.details.as_ref().unwrap().kind, "pods/binding");
        let after = pods.get("web").await.unwrap();
        assert_eq!(after.metadata.resource_version, bound.metadata.resource_version);
    })
    .await;
}

#[tokio::test]
async fn binding_errors_and_preconditions() {
    bounded(30, async {
        let e = env().await;
        let pods: Api<Pod> = Api::namespaced(e.client.clone(), "default");
        let post = |name: &str, body: Value| {
            let pods = pods.clone();
            let name = name.to_string();
            async move {
                pods.create_subresource::<Value, Status>(
                    "binding",
                    &name,
                    &PostParams::default(),
                    &body,
                )
                .await
            }
        };
        let body = |name: &str, node: &str| serde_json::to_value(binding(name, node)).unwrap();

        // Missing pod: 404 on pods.
        let err = api_err(post("ghost", body("ghost", "n1")).await.unwrap_err());
        assert_eq!((err.code, err.message.as_str()), (404, "pods \"ghost\" not found"));

        let created = pods
            .create(&PostParams::default(), &pod("web", &[], None))
            .await
            .unwrap();

        // Undecodable body: 400.
        let req = http::Request::post("/api/v1/namespaces/default/pods/web/binding")
            .header("content-type", "application/json")
            .body(b"{not json".to_vec())
            .unwrap();
        let err = api_err(e.client.request::<Value>(req).await.unwrap_err());
        assert_eq!((err.code, err.reason.as_str()), (400, "BadRequest"));
        // Another kind: 400.
        let mut wrong = body("web", "n1");
        wrong["kind"] = json!("Pod");
        assert_eq!(api_err(post("web", wrong).await.unwrap_err()).code, 400);
        // The name in the body differs from the URL's: 400.
        let err = api_err(post("web", body("other", "n1")).await.unwrap_err());
        assert_eq!(
            (err.code, err.message.as_str()),
            (400, "name in URL does not match name in Binding object")
        );
        // No target name: ValidatePodBinding's field error, which kube-apiserver answers as 500.
        let err = api_err(post("web", json!({"metadata": {"name": "web"}, "target": {}})).await.unwrap_err());
        assert_eq!((err.code, err.message.as_str()), (500, "target.name: Required value"));
        // A stale uid precondition (kube-scheduler's binder sends the pod's uid): 409 on pods.
        let mut stale = body("web", "n1");
        stale["metadata"]["uid"] = json!("00000000-0000-4000-8000-000000000000");
        let err = api_err(post("web", stale).await.unwrap_err());
        assert_eq!(err.code, 409);
        assert!(
            err.message.starts_with("Operation cannot be fulfilled on pods \"web\": Precondition failed: UID in precondition"),
            "{}",
            err.message
        );
        // Dry run: accepted, nothing written.
        let dry: Status = pods
            .create_subresource(
                "binding",
                "web",
                &PostParams { dry_run: true, ..Default::default() },
                &binding("web", "n1"),
            )
            .await
            .unwrap();
        assert!(dry.is_success());
        let unchanged = pods.get("web").await.unwrap();
        assert_eq!(unchanged.metadata.resource_version, created.metadata.resource_version);
        assert!(unchanged.spec.unwrap().node_name.is_none());

        // The right uid and annotations: bound, annotations merged.
        let mut good = body("web", "n1");
        good["metadata"]["uid"] = json!(created.metadata.uid.clone().unwrap());
        good["metadata"]["annotations"] = json!({"scheduler.example/why": "best"});
        assert!(post("web", good).await.unwrap().is_success());
        let bound = pods.get("web").await.unwrap();
        assert_eq!(bound.spec.unwrap().node_name.as_deref(), Some("n1"));
        assert_eq!(bound.metadata.annotations.unwrap()["scheduler.example/why"], "best");

        // Scheduling gates: 409.
        let mut gated = pod("gated", &[], None);
        gated.spec.as_mut().unwrap().scheduling_gates =
            Some(vec![serde_json::from_value(json!({"name": "example.com/wait"})).unwrap()]);
        pods.create(&PostParams::default(), &gated).await.unwrap();
        let err = api_err(post("gated", body("gated", "n1")).await.unwrap_err());
        assert_eq!(
            (err.code, err.message.as_str()),
            (409, "Operation cannot be fulfilled on pods/binding \"gated\": pod gated has non-empty .spec.schedulingGates")
        );

        // A terminating pod (held by a finalizer): 409.
        let mut held = pod("held", &[], None);
        held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
        pods.create(&PostParams::default(), &held).await.unwrap();
        pods.delete("held", &DeleteParams::default()).await.unwrap();
        let err = api_err(post("held", body("held", "n1")).await.unwrap_err());
        assert_eq!(
            (err.code, err.message.as_str()),
            (409, "Operation cannot be fulfilled on pods/binding \"held\": pod held is being deleted, cannot be assigned to a host")
        );

        // Only POST.
        let req = http::Request::get("/api/v1/namespaces/default/pods/web/binding")
            .body(Vec::new())
            .unwrap();
        let err = api_err(e.client.request::<Value>(req).await.unwrap_err());
        assert_eq!(err.code, 405);
    })
    .await;
}

#[tokio::test]
async fn legacy_bindings_resource_and_discovery() {
    bounded(30, async {
        let e = env().await;
        let pods: Api<Pod> = Api::namespaced(e.client.clone(), "default");
        pods.create(&PostParams::default(), &pod("web", &[], None))
            .await
            .unwrap();
        let req = http::Request::post("/api/v1/namespaces/default/bindings")
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&binding("web", "n7")).unwrap())
            .unwrap();
        let status: Value = e.client.request(req).await.unwrap();
        assert_eq!(
            (status["status"].as_str(), status["code"].as_i64()),
            (Some("Success"), Some(201))
        );
        assert_eq!(
            pods.get("web")
                .await
                .unwrap()
                .spec
                .unwrap()
                .node_name
                .as_deref(),
            Some("n7")
        );

        let req = http::Request::get("/api/v1").body(Vec::new()).unwrap();
        let list: Value = e.client.request(req).await.unwrap();
        let names: Vec<&str> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert!(
            names.contains(&"pods/binding") && names.contains(&"bindings"),
            "{names:?}"
        );
        let sub = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "pods/binding")
            .unwrap();
        assert_eq!(
            (sub["kind"].as_str(), &sub["verbs"]),
            (Some("Binding"), &json!(["create"]))
        );
        // kube-rs discovery still works with them listed.
        kube::Discovery::new(e.client.clone()).run().await.unwrap();
    })
    .await;
}
