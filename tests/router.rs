//! Router-level tests: the real axum router (no sockets) fed with real AdmissionReview payloads.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use futures::StreamExt;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Pod;
use nodewright::config::Config;
use nodewright::http::{AppState, Limits, ops_router, webhook_router};
use serde_json::{Value, json};
use tower::ServiceExt;

const REPLICASET_POD: &str = include_str!(
    "data/fixtures/admissionreview_v1_pod_create_replicaset__salesforce_generic-sidecar-injector.json"
);
const KUBECTL_POD: &str =
    include_str!("data/fixtures/admissionreview_v1_pod_create_kubectl__kubewarden_kwctl.json");

fn state_with_limit(max_body_bytes: usize) -> AppState {
    let config = Config::parse(
        include_str!("data/steering.yaml"),
        "tests/data/steering.yaml",
    )
    .unwrap();
    AppState::builder(&config, Some("nodewright"))
        .limits(Limits {
            max_body_bytes,
            ..Limits::default()
        })
        .build()
}

fn state() -> AppState {
    state_with_limit(Limits::default().max_body_bytes)
}

async fn post_raw(
    state: &AppState,
    uri: &str,
    content_type: &str,
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    let request = Request::post(uri)
        .header(header::CONTENT_TYPE, content_type)
        .body(body.into())
        .unwrap();
    let response = webhook_router(state.clone(), false)
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    assert_eq!(
        response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap()),
        Some("application/json"),
        "every answer is JSON"
    );
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).expect("body is JSON"),
    )
}

async fn post(state: &AppState, review: &Value) -> (StatusCode, Value) {
    post_raw(
        state,
        "/mutate?timeout=10s",
        "application/json",
        review.to_string(),
    )
    .await
}

fn with(review: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let mut v: Value = serde_json::from_str(review).unwrap();
    edit(&mut v);
    v
}

/// Decode the response patch (standard padded base64) and apply it to `request.object` as the apiserver does.
fn patched_object(request: &Value, response: &Value) -> Value {
    let r = &response["response"];
    assert_eq!(r["patchType"], "JSONPatch");
    let b64 = r["patch"].as_str().expect("patch is a base64 string");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("standard padded base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut object = request["request"]["object"].clone();
    json_patch::patch(&mut object, &patch).expect("patch applies to the object as sent");
    object
}

#[tokio::test]
async fn replicaset_pod_is_steered_with_selector_toleration_and_spread() {
    let state = state();
    let request = with(REPLICASET_POD, |_| {});
    let (status, body) = post(&state, &request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(body["kind"], "AdmissionReview");
    let r = &body["response"];
    assert_eq!(r["uid"], request["request"]["uid"]);
    assert_eq!(r["allowed"], true);
    assert!(r.get("status").is_none(), "status only on denial");
    assert_eq!(r["auditAnnotations"]["nodepool"], "default");
    assert_eq!(
        r["auditAnnotations"]["added"],
        "nodeSelector,tolerations,topologySpreadConstraints"
    );
    let warning = r["warnings"][0].as_str().unwrap();
    assert!(
        warning.len() <= 120 && warning.contains("NodePool default"),
        "{warning}"
    );

    let object = patched_object(&request, &body);
    let pod: Pod = serde_json::from_value(object.clone()).expect("patched object is a Pod");
    let spec = pod.spec.unwrap();
    assert_eq!(
        spec.node_selector.unwrap()["karpenter.sh/nodepool"],
        "default"
    );
    let tolerations = spec.tolerations.unwrap();
    assert_eq!(tolerations.len(), 3, "two defaults kept, one added");
    assert!(
        tolerations
            .iter()
            .any(|t| t.key.as_deref() == Some("nodewright.io/pool")
                && t.value.as_deref() == Some("default")
                && t.effect.as_deref() == Some("NoSchedule"))
    );
    assert!(
        !tolerations
            .iter()
            .any(|t| t.key.as_deref() == Some("ebs.csi.aws.com/agent-not-ready")),
        "startupTaints need no toleration"
    );
    let spread = &spec.topology_spread_constraints.unwrap()[0];
    assert_eq!(spread.topology_key, "topology.kubernetes.io/zone");
    assert_eq!(spread.max_skew, 1);
    assert_eq!(spread.when_unsatisfiable, "DoNotSchedule");
    let selector = spread
        .label_selector
        .as_ref()
        .unwrap()
        .match_labels
        .as_ref()
        .unwrap();
    assert_eq!(selector["app.kubernetes.io/name"], "keymaker");
    assert!(!selector.contains_key("pod-template-hash"));
    assert_eq!(
        spread.match_label_keys.as_deref(),
        Some(&["pod-template-hash".to_owned()][..])
    );

    // Nothing the user wrote was dropped: every original spec field is still there, unchanged.
    for (k, v) in request["request"]["object"]["spec"].as_object().unwrap() {
        if k != "tolerations" {
            assert_eq!(&object["spec"][k], v, "spec.{k} changed");
        }
    }
}

#[tokio::test]
async fn second_pass_over_the_patched_pod_adds_nothing() {
    let state = state();
    let request = with(REPLICASET_POD, |_| {});
    let (_, body) = post(&state, &request).await;
    let object = patched_object(&request, &body);
    let again = with(REPLICASET_POD, |v| v["request"]["object"] = object);
    let (status, body) = post(&state, &again).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["response"]["allowed"], true);
    assert!(body["response"].get("patch").is_none() && body["response"].get("patchType").is_none());
}

#[tokio::test]
async fn unselected_namespace_is_allowed_without_patch() {
    let (status, body) = post(&state(), &with(KUBECTL_POD, |_| {})).await;
    assert_eq!(status, StatusCode::OK);
    let r = &body["response"];
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none() && r.get("patchType").is_none());
    assert_eq!(r["uid"], "1299d386-525b-4032-98ae-1949f69f9cfc");
    // Standalone, the rule that selects namespaces by label cannot be evaluated, and the answer says so.
    let warning = r["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("labels of namespace default unknown") && warning.len() <= 120,
        "{warning}"
    );
}

#[tokio::test]
async fn dry_run_gets_the_same_answer() {
    let state = state();
    let wet = post(&state, &with(REPLICASET_POD, |_| {})).await.1;
    let dry = post(
        &state,
        &with(REPLICASET_POD, |v| v["request"]["dryRun"] = json!(true)),
    )
    .await
    .1;
    assert_eq!(wet["response"]["patch"], dry["response"]["patch"]);
}

#[tokio::test]
async fn pod_selecting_another_pool_is_denied_with_both_values() {
    let request = with(REPLICASET_POD, |v| {
        v["request"]["object"]["spec"]["nodeSelector"] = json!({"karpenter.sh/nodepool": "gpu"})
    });
    let (status, body) = post(&state(), &request).await;
    assert_eq!(status, StatusCode::OK);
    let r = &body["response"];
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 403);
    assert_eq!(r["status"]["reason"], "Forbidden");
    let message = r["status"]["message"].as_str().unwrap();
    for part in ["karpenter.sh/nodepool=gpu", "NodePool default", "keymaker"] {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
    assert!(r.get("patch").is_none());
}

#[tokio::test]
async fn pod_labels_rule_steers_any_namespace() {
    let request = with(KUBECTL_POD, |v| {
        v["request"]["object"]["metadata"]["labels"]["workload"] = json!("batch")
    });
    let (_, body) = post(&state(), &request).await;
    assert_eq!(body["response"]["auditAnnotations"]["nodepool"], "gpu");
    let object = patched_object(&request, &body);
    assert_eq!(
        object["spec"]["nodeSelector"]["karpenter.sh/nodepool"],
        "gpu"
    );
    // The user's own toleration and the two defaults are kept; both gpu taints are added.
    let tolerations = object["spec"]["tolerations"].as_array().unwrap();
    assert_eq!(tolerations.len(), 5, "{tolerations:?}");
}

#[tokio::test]
async fn other_operations_kinds_and_exempt_pods_pass_untouched() {
    let state = state();
    let cases = [
        with(REPLICASET_POD, |v| {
            v["request"]["operation"] = json!("DELETE");
            v["request"]["oldObject"] = v["request"]["object"].take();
        }),
        with(REPLICASET_POD, |v| {
            v["request"]["operation"] = json!("UPDATE")
        }),
        with(REPLICASET_POD, |v| {
            v["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
            v["request"]["object"] = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {}});
        }),
        with(REPLICASET_POD, |v| {
            v["request"]["object"]["spec"]["nodeName"] = json!("node-1")
        }),
        with(REPLICASET_POD, |v| {
            v["request"]["object"]["metadata"]["annotations"]["nodewright.io/skip"] = json!("true")
        }),
        with(REPLICASET_POD, |v| {
            v["request"]["object"]["metadata"]["ownerReferences"][0]["kind"] = json!("DaemonSet")
        }),
        with(REPLICASET_POD, |v| {
            v["request"]["object"]["metadata"]["annotations"]["kubernetes.io/config.mirror"] =
                json!("x")
        }),
        with(REPLICASET_POD, |v| {
            v["request"]["namespace"] = json!("kube-system")
        }),
        with(REPLICASET_POD, |v| {
            v["request"]["namespace"] = json!("nodewright")
        }),
    ];
    for (i, request) in cases.iter().enumerate() {
        let (status, body) = post(&state, request).await;
        assert_eq!(status, StatusCode::OK, "case {i}: {body}");
        assert_eq!(body["response"]["allowed"], true, "case {i}");
        assert!(body["response"].get("patch").is_none(), "case {i}: {body}");
    }
}

#[tokio::test]
async fn unknown_fields_are_ignored() {
    let request = with(REPLICASET_POD, |v| {
        v["request"]["futureField"] = json!({"x": 1});
        v["request"]["object"]["spec"]["futureSpecField"] = json!(true);
    });
    let (status, body) = post(&state(), &request).await;
    assert_eq!(status, StatusCode::OK);
    // The patch is computed against the object as sent, so it still applies with the unknown field present.
    let object = patched_object(&request, &body);
    assert_eq!(object["spec"]["futureSpecField"], true);
}

#[tokio::test]
async fn bad_input_gets_a_json_4xx() {
    let state = state_with_limit(64 * 1024);
    let review_v1beta1 = with(REPLICASET_POD, |v| {
        v["apiVersion"] = json!("admission.k8s.io/v1beta1")
    })
    .to_string();
    let wrong_kind = with(REPLICASET_POD, |v| v["kind"] = json!("Pod")).to_string();
    let no_request =
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).to_string();
    let mut invalid_utf8 = REPLICASET_POD.as_bytes().to_vec();
    let at = REPLICASET_POD.find("keymaker-keymaker").unwrap();
    invalid_utf8[at] = 0xff;
    let bad_pod = with(REPLICASET_POD, |v| {
        v["request"]["object"]["spec"]["tolerations"] = json!("not a list")
    })
    .to_string();
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(128 * 1024));
    let cases: Vec<(&str, &str, Vec<u8>, StatusCode)> = vec![
        (
            "malformed",
            "application/json",
            b"{\"apiVersion\":".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "not an object",
            "application/json",
            b"[1,2,3]".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "empty",
            "application/json",
            Vec::new(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "v1beta1",
            "application/json",
            review_v1beta1.into_bytes(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "wrong kind",
            "application/json",
            wrong_kind.into_bytes(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "no request",
            "application/json",
            no_request.into_bytes(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "invalid utf-8",
            "application/json",
            invalid_utf8,
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad pod",
            "application/json",
            bad_pod.into_bytes(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "content type",
            "text/plain",
            REPLICASET_POD.as_bytes().to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "too large",
            "application/json",
            huge.into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (name, content_type, body, want) in cases {
        let (status, json) = post_raw(&state, "/mutate", content_type, body).await;
        assert_eq!(status, want, "{name}: {json}");
        assert!(
            json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{name}: {json}"
        );
    }
    // A body over the limit without Content-Length (streamed) is cut off as soon as it passes the limit.
    let chunks = futures::stream::iter((0..100).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 4096])));
    let (status, _) = post_raw(
        &state,
        "/mutate",
        "application/json; charset=utf-8",
        Body::from_stream(chunks),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let too_large = r#"nodewright_request_body_errors_total{kind="too_large"} 2"#;
    assert!(
        state.metrics.render().contains(too_large),
        "both 413s counted"
    );
    // The state is still good after all that.
    let (status, _) = post(&state, &with(REPLICASET_POD, |_| {})).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn metrics_count_outcomes() {
    let state = state();
    post(&state, &with(REPLICASET_POD, |_| {})).await;
    post(&state, &with(KUBECTL_POD, |_| {})).await;
    post_raw(&state, "/mutate", "application/json", "{").await;
    let response = ops_router(state.clone())
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for line in [
        r#"nodewright_admission_requests_total{endpoint="mutate",operation="CREATE",outcome="patched"} 1"#,
        r#"nodewright_admission_requests_total{endpoint="mutate",operation="CREATE",outcome="allowed"} 1"#,
        r#"nodewright_admission_requests_total{endpoint="mutate",operation="unknown",outcome="error"} 1"#,
        r#"nodewright_admission_request_duration_seconds_count{endpoint="mutate"} 3"#,
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
}

#[tokio::test]
async fn readiness_follows_the_tls_listener_and_drain() {
    let state = state();
    let readyz = || async {
        ops_router(state.clone())
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
    };
    assert_eq!(readyz().await, StatusCode::SERVICE_UNAVAILABLE);
    state.readiness.set_tls_bound();
    assert_eq!(readyz().await, StatusCode::OK);
    state.readiness.set_draining();
    assert_eq!(readyz().await, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn unknown_path_is_a_json_404() {
    let (status, body) = post_raw(&state(), "/nope", "application/json", "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "NotFound");
}

/// A Pod CREATE as a validating webhook sees it (uid filled in), for namespace `ns` and pod uid `uid`.
fn validate_review(ns: &str, uid: &str, dry_run: bool) -> Value {
    with(KUBECTL_POD, |v| {
        v["request"]["uid"] = json!(format!("req-{uid}"));
        v["request"]["namespace"] = json!(ns);
        v["request"]["dryRun"] = json!(dry_run);
        v["request"]["object"]["metadata"]["uid"] = json!(uid);
        v["request"]["object"]["metadata"]["name"] = json!(format!("pod-{uid}"));
        v["request"]["object"]["metadata"]["namespace"] = json!(ns);
    })
}

async fn validate(state: &AppState, review: &Value) -> Value {
    let (status, body) = post_raw(
        state,
        "/validate?timeout=10s",
        "application/json",
        review.to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["response"].get("patch").is_none() && body["response"].get("patchType").is_none(),
        "a validating webhook never patches"
    );
    body
}

#[tokio::test]
async fn quota_admits_exactly_the_limit_under_a_concurrent_burst() {
    let state = state();
    let burst = (0..60).map(|i| {
        let state = state.clone();
        tokio::spawn(async move {
            validate(
                &state,
                &validate_review("team-riker", &format!("u{i}"), false),
            )
            .await
        })
    });
    let answers: Vec<Value> = futures::future::join_all(burst)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let allowed = answers
        .iter()
        .filter(|a| a["response"]["allowed"] == true)
        .count();
    assert_eq!(allowed, 10);
    let denied = answers
        .iter()
        .find(|a| a["response"]["allowed"] == false)
        .unwrap();
    let status = &denied["response"]["status"];
    assert_eq!(
        (status["code"].as_i64(), status["reason"].as_str()),
        (Some(403), Some("Forbidden"))
    );
    let message = status["message"].as_str().unwrap();
    for part in [
        "team-riker",
        "at most 10 pods",
        "10 are running",
        "nodewright.io/max-pods",
    ] {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
    // Batching: far fewer ledger writes than admitted pods is not asserted here (timing-dependent);
    // the decisions are counted.
    let text = state.metrics.render();
    assert!(
        text.contains(r#"nodewright_quota_decisions_total{outcome="allowed"} 10"#),
        "{text}"
    );
    assert!(
        text.contains(r#"nodewright_quota_decisions_total{outcome="denied"} 50"#),
        "{text}"
    );
    assert!(
        text.contains(r#"nodewright_quota_pods{kind="limit",namespace="team-riker"} 10"#),
        "{text}"
    );
}

#[tokio::test]
async fn quota_dry_runs_never_count_and_retries_are_free() {
    let state = state();
    for i in 0..25 {
        let body = validate(
            &state,
            &validate_review("team-riker", &format!("dry{i}"), true),
        )
        .await;
        assert_eq!(body["response"]["allowed"], true, "dry run {i}");
    }
    for i in 0..10 {
        let body = validate(
            &state,
            &validate_review("team-riker", &format!("u{i}"), false),
        )
        .await;
        assert_eq!(body["response"]["allowed"], true);
    }
    let last = validate(&state, &validate_review("team-riker", "u9", false)).await;
    assert_eq!(
        last["response"]["allowed"], true,
        "the same pod asked again keeps its slot"
    );
    let full = validate(&state, &validate_review("team-riker", "dry-over", true)).await;
    assert_eq!(
        full["response"]["allowed"], false,
        "a dry run over quota is denied as the real one would be"
    );
    let over = validate(&state, &validate_review("team-riker", "u10", false)).await;
    assert_eq!(over["response"]["allowed"], false);
}

#[tokio::test]
async fn quota_ignores_other_namespaces_operations_and_kinds() {
    let state = state();
    for i in 0..20 {
        let body = validate(
            &state,
            &validate_review("elsewhere", &format!("u{i}"), false),
        )
        .await;
        assert_eq!(body["response"]["allowed"], true);
    }
    let update = with(
        &validate_review("team-riker", "x", false).to_string(),
        |v| v["request"]["operation"] = json!("UPDATE"),
    );
    assert_eq!(validate(&state, &update).await["response"]["allowed"], true);
}

/// A body that sends its first bytes and then stalls is answered 408 once `body_read_timeout`
/// passes, not held open until the apiserver gives up.
#[tokio::test]
async fn a_stalled_body_is_cut_off_with_408() {
    let config = Config::parse(
        include_str!("data/steering.yaml"),
        "tests/data/steering.yaml",
    )
    .unwrap();
    let state = AppState::builder(&config, Some("nodewright"))
        .limits(Limits {
            body_read_timeout: std::time::Duration::from_millis(200),
            ..Limits::default()
        })
        .build();
    let first = futures::stream::once(async {
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{\"apiVersion\":"))
    });
    let stalled = first.chain(futures::stream::pending());
    let request = Request::post("/mutate")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stalled))
        .unwrap();
    let started = std::time::Instant::now();
    let response = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        webhook_router(state.clone(), false).oneshot(request),
    )
    .await
    .expect("answered before the test's own timeout")
    .unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "RequestTimeout");
    let metrics = state.metrics.render();
    for line in [
        r#"nodewright_request_body_errors_total{kind="timeout"} 1"#,
        r#"nodewright_request_body_errors_total{kind="too_large"} 0"#,
    ] {
        assert!(metrics.contains(line), "missing {line}\n{metrics}");
    }
}

/// The ReplicaSet pod of Deployment `keymaker-keymaker`, asking for a split by annotation, as
/// review `uid`.
fn split_review(uid: &str, base: &str, percent: &str) -> Value {
    with(REPLICASET_POD, |v| {
        v["request"]["uid"] = json!(uid);
        let annotations = &mut v["request"]["object"]["metadata"]["annotations"];
        annotations["nodewright.io/on-demand-base"] = json!(base);
        annotations["nodewright.io/spot-percent"] = json!(percent);
    })
}

fn capacity_type(object: &Value) -> &str {
    object["spec"]["nodeSelector"]["karpenter.sh/capacity-type"]
        .as_str()
        .unwrap_or("none")
}

#[tokio::test]
async fn split_fills_the_base_then_the_spot_share_and_a_second_pass_keeps_the_choice() {
    let state = state();
    let mut chosen = Vec::new();
    for i in 0..5 {
        let request = split_review(&format!("split-{i}"), "2", "50");
        let (status, body) = post(&state, &request).await;
        assert_eq!(status, StatusCode::OK);
        let object = patched_object(&request, &body);
        chosen.push(capacity_type(&object).to_owned());
        assert_eq!(
            object["metadata"]["annotations"]["nodewright.io/split-id"],
            format!("split-{i}")
        );
        assert_eq!(
            object["spec"]["nodeSelector"]["karpenter.sh/nodepool"],
            "default"
        );
        let r = &body["response"];
        assert_eq!(r["auditAnnotations"]["capacity-type"], chosen[i]);
        assert!(r["warnings"][0].as_str().unwrap().contains("capacity-type"));
        if i == 4 {
            // Reinvocation over the patched pod: the pod has chosen, nothing more is added.
            let again = with(REPLICASET_POD, |v| v["request"]["object"] = object.clone());
            let (_, body) = post(&state, &again).await;
            assert!(body["response"].get("patch").is_none(), "{body}");
        }
    }
    // Base 2, then half of the rest (rounded toward on-demand): od, od, od, spot, od.
    assert_eq!(
        chosen,
        ["on-demand", "on-demand", "on-demand", "spot", "on-demand"]
    );
    // A retried review gets its first answer; a dry run the next pod's, and counts nothing.
    let (_, body) = post(&state, &split_review("split-3", "2", "50")).await;
    assert_eq!(
        capacity_type(&patched_object(&split_review("split-3", "2", "50"), &body)),
        "spot"
    );
    let dry = with(&split_review("dry", "2", "50").to_string(), |v| {
        v["request"]["dryRun"] = json!(true)
    });
    let (_, body) = post(&state, &dry).await;
    assert_eq!(capacity_type(&patched_object(&dry, &body)), "spot");
    let (_, body) = post(&state, &split_review("split-5", "2", "50")).await;
    assert_eq!(
        capacity_type(&patched_object(&split_review("split-5", "2", "50"), &body)),
        "spot"
    );
}

/// A split whose spot may fall back: spot pods get a preferred node affinity, not a nodeSelector,
/// and the choice in an annotation; a reinvocation over the patched pod adds nothing.
#[tokio::test]
async fn a_split_that_may_fall_back_prefers_spot_and_counts_it() {
    let state = state();
    let review = |uid: &str| {
        with(&split_review(uid, "1", "100").to_string(), |v| {
            v["request"]["object"]["metadata"]["annotations"]["nodewright.io/spot-fallback"] =
                json!("true");
        })
    };
    let mut objects = Vec::new();
    for i in 0..3 {
        let request = review(&format!("soft-{i}"));
        let (status, body) = post(&state, &request).await;
        assert_eq!(status, StatusCode::OK);
        objects.push((patched_object(&request, &body), body));
    }
    let chosen: Vec<&str> = objects
        .iter()
        .map(|(o, _)| {
            o["metadata"]["annotations"]["nodewright.io/capacity-type"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(chosen, ["on-demand", "spot", "spot"], "the spot pods count");
    let (od, _) = &objects[0];
    assert_eq!(capacity_type(od), "on-demand");
    let (spot, body) = &objects[2];
    assert_eq!(capacity_type(spot), "none", "spot is not required");
    assert_eq!(
        spot["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"],
        json!([{"weight": 100, "preference": {"matchExpressions": [
            {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]}]}}])
    );
    let r = &body["response"];
    assert_eq!(r["auditAnnotations"]["capacity-type"], "spot");
    assert!(
        r["auditAnnotations"]["added"]
            .as_str()
            .unwrap()
            .contains("affinity"),
        "{r}"
    );
    assert!(
        r["warnings"][0]
            .as_str()
            .unwrap()
            .contains("capacity-type spot preferred"),
        "{r}"
    );
    let again = with(REPLICASET_POD, |v| v["request"]["object"] = spot.clone());
    let (_, body) = post(&state, &again).await;
    assert!(body["response"].get("patch").is_none(), "{body}");
}

#[tokio::test]
async fn split_asks_that_cannot_hold_are_refused_or_noted() {
    let state = state();
    // Not a number: refused, naming the annotation.
    let (_, body) = post(&state, &split_review("bad", "1", "80%")).await;
    let r = &body["response"];
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 403);
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.contains(
            r#"annotation nodewright.io/spot-percent="80%" is not a whole number from 0 to 100"#
        ),
        "{message}"
    );
    // A pool without spot (the gpu pool has no capacity-type requirement: on-demand only).
    let gpu = with(&split_review("gpu", "1", "80").to_string(), |v| {
        v["request"]["object"]["metadata"]["labels"]["workload"] = json!("batch");
    });
    let (_, body) = post(&state, &gpu).await;
    let message = body["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("NodePool gpu (rule batch-to-gpu) does not launch spot nodes"),
        "{message}"
    );
    // A pod without a controller is steered without a capacity type, with a note.
    let bare = with(&split_review("bare", "1", "80").to_string(), |v| {
        v["request"]["object"]["metadata"]["ownerReferences"] = json!(null);
    });
    let (_, body) = post(&state, &bare).await;
    assert_eq!(body["response"]["allowed"], true);
    assert_eq!(capacity_type(&patched_object(&bare, &body)), "none");
    let warnings = body["response"]["warnings"].to_string();
    assert!(warnings.contains("the pod has no controller"), "{warnings}");
    // A pod that chose its capacity type is left alone.
    let chose = with(&split_review("chose", "1", "80").to_string(), |v| {
        v["request"]["object"]["spec"]["nodeSelector"] =
            json!({"karpenter.sh/capacity-type": "spot"});
    });
    let (_, body) = post(&state, &chose).await;
    let object = patched_object(&chose, &body);
    assert_eq!(capacity_type(&object), "spot");
    assert!(
        object["metadata"]["annotations"]
            .get("nodewright.io/split-id")
            .is_none()
    );
}
