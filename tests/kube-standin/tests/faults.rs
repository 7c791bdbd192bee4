//! Fault knobs, seen through the real kube-rs client.

mod common;

use common::{bounded, env, pod};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use kube_standin::Faults;
use serde_json::json;
use std::time::{Duration, Instant};

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}})).unwrap()
}

#[tokio::test]
async fn latency_all_and_writes_only() {
    bounded(30, async {
        let e = env().await;
        let cms: Api<ConfigMap> = Api::namespaced(e.client.clone(), "default");
        cms.create(&PostParams::default(), &cm("a")).await.unwrap();
        e.standin.faults().update(|f| f.latency_ms = 200);
        let t = Instant::now();
        cms.get("a").await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(200));
        e.standin.faults().update(|f| f.latency_writes_only = true);
        let t = Instant::now();
        cms.get("a").await.unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(150),
            "reads are not delayed"
        );
        let t = Instant::now();
        cms.create(&PostParams::default(), &cm("b")).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(200), "writes are");
    })
    .await;
}

#[tokio::test]
async fn injected_errors_are_status_bodies_and_seeded() {
    bounded(30, async {
        let e = env().await;
        let cms: Api<ConfigMap> = Api::namespaced(e.client.clone(), "default");
        cms.create(&PostParams::default(), &cm("a")).await.unwrap();
        // kube-rs retries 429/503/504 by itself (up to 15 times, with exponential backoff),
        // so a 503 is checked with a client whose default retry is off.
        let mut config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::from_yaml(&e.standin.kubeconfig_yaml()).unwrap(),
            &Default::default(),
        )
        .await
        .unwrap();
        config.default_retry = false;
        let no_retry: Api<ConfigMap> =
            Api::namespaced(kube::Client::try_from(config).unwrap(), "default");
        e.standin.faults().set(Faults {
            error_rate: 1.0,
            error_code: 503,
            ..Default::default()
        });
        match no_retry.get("a").await.unwrap_err() {
            kube::Error::Api(s) => {
                assert_eq!((s.code, s.reason.as_str()), (503, "ServiceUnavailable"))
            }
            other => panic!("{other:?}"),
        }
        e.standin.faults().set(Faults {
            error_rate: 1.0,
            ..Default::default()
        });
        match cms.get("a").await.unwrap_err() {
            kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (500, "InternalError")),
            other => panic!("{other:?}"),
        }
        // A fraction, deterministic for a seed.
        let mut runs = Vec::new();
        for _ in 0..2 {
            e.standin.faults().set(Faults {
                error_rate: 0.3,
                seed: Some(42),
                ..Default::default()
            });
            let mut outcomes = Vec::new();
            for _ in 0..200 {
                outcomes.push(cms.get("a").await.is_ok());
            }
            runs.push(outcomes);
        }
        assert_eq!(runs[0], runs[1], "same seed, same faults");
        let failed = runs[0].iter().filter(|ok| !**ok).count();
        assert!(
            (30..=90).contains(&failed),
            "about 30% of 200 failed: {failed}"
        );
        e.standin.faults().clear();
        cms.get("a").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn forced_conflicts() {
    bounded(30, async {
        let e = env().await;
        let cms: Api<ConfigMap> = Api::namespaced(e.client.clone(), "default");
        let a = cms.create(&PostParams::default(), &cm("a")).await.unwrap();
        e.standin.faults().update(|f| f.conflict_rate = 1.0);
        for r in [
            cms.replace("a", &PostParams::default(), &a).await,
            cms.patch(
                "a",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"k": "x"}})),
            )
            .await,
        ] {
            match r.unwrap_err() {
                kube::Error::Api(s) => {
                    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
                    assert!(s.message.contains("the object has been modified"));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            cms.get("a").await.unwrap().metadata.resource_version,
            a.metadata.resource_version,
            "nothing written"
        );
        cms.create(&PostParams::default(), &cm("b")).await.unwrap();
        // Half the writes conflict: a retry loop still gets through.
        e.standin.faults().set(Faults {
            conflict_rate: 0.5,
            seed: Some(1),
            ..Default::default()
        });
        let mut conflicts = 0;
        for i in 0..20 {
            loop {
                match cms
                    .patch(
                        "a",
                        &PatchParams::default(),
                        &Patch::Merge(json!({"data": {"k": i.to_string()}})),
                    )
                    .await
                {
                    Ok(_) => break,
                    Err(kube::Error::Api(s)) if s.code == 409 => conflicts += 1,
                    Err(other) => panic!("{other:?}"),
                }
            }
        }
        assert!(conflicts > 0);
        assert_eq!(cms.get("a").await.unwrap().data.unwrap()["k"], "19");
    })
    .await;
}

#[tokio::test]
async fn refused_connections_and_http_control() {
    bounded(30, async {
        let e = env().await;
        let cms: Api<ConfigMap> = Api::namespaced(e.client.clone(), "default");
        cms.create(&PostParams::default(), &cm("a")).await.unwrap();
        e.standin.faults().refuse_connections(true);
        e.standin.faults().settled().await;
        let t = Instant::now();
        let err = cms.get("a").await.unwrap_err();
        assert!(
            !matches!(err, kube::Error::Api(_)),
            "a transport error, not an API answer: {err:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        // A fresh TCP connection is refused outright.
        assert!(std::net::TcpStream::connect(e.standin.addr()).is_err());
        e.standin.faults().refuse_connections(false);
        e.standin.faults().settled().await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while cms.get("a").await.is_err() {
            assert!(Instant::now() < deadline, "accepting again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // The same knobs over HTTP, including a timed refusal that ends by itself.
        let post = |body: serde_json::Value| {
            http::Request::post("/_standin/faults")
                .body(serde_json::to_vec(&body).unwrap())
                .unwrap()
        };
        let set = e
            .client
            .request_text(post(json!({"latency_ms": 5, "seed": 3})))
            .await
            .unwrap();
        assert_eq!(serde_json::from_str::<Faults>(&set).unwrap().latency_ms, 5);
        assert_eq!(e.standin.faults().get().seed, Some(3));
        let _ = e
            .client
            .request_text(post(json!({"refuse_connections_for_ms": 300})))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(std::net::TcpStream::connect(e.standin.addr()).is_err());
        tokio::time::sleep(Duration::from_millis(400)).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while cms.get("a").await.is_err() {
            assert!(
                Instant::now() < deadline,
                "accepting again after the timed refusal"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let bad = e
            .client
            .request_text(post(json!({"no_such_knob": 1})))
            .await
            .unwrap_err();
        assert!(matches!(bad, kube::Error::Api(s) if s.code == 400));
    })
    .await;
}

#[tokio::test]
async fn reflector_converges_under_errors_and_latency() {
    bounded(60, async {
        let e = env().await;
        let pods: Api<Pod> = Api::namespaced(e.client.clone(), "default");
        let (store, writer) = reflector::store();
        let stream =
            reflector::reflector(writer, watcher(pods.clone(), watcher::Config::default()))
                .default_backoff();
        tokio::spawn(async move {
            let mut s = std::pin::pin!(stream);
            while futures::StreamExt::next(&mut s).await.is_some() {}
        });
        store.wait_until_ready().await.unwrap();
        e.standin.faults().set(Faults {
            error_rate: 0.2,
            latency_ms: 5,
            drop_watches_after_events: Some(4),
            seed: Some(9),
            ..Default::default()
        });
        let mut created = 0;
        while created < 30 {
            if pods
                .create(
                    &PostParams::default(),
                    &pod(&format!("p-{created}"), &[], None),
                )
                .await
                .is_ok()
            {
                created += 1;
            }
        }
        e.standin.faults().drop_watches();
        e.standin.faults().clear();
        let want: Vec<String> = pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        assert_eq!(want.len(), 30);
        common::eventually(20, "reflector converged", || {
            let mut have: Vec<String> = store
                .state()
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            have.sort();
            have == want
        })
        .await;
    })
    .await;
}
