//! kube-rs watches against the stand-in: raw watch streams, and `watcher` + `reflector`
//! converging to the stored state through creates, updates, graceful deletes, dropped
//! watches and a forced 410 Expired.

mod common;

use common::{bounded, env, env_with, pod};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube_standin::StandIn;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch as gate;

type Event = WatchEvent<Pod>;

async fn collect_events(api: &Api<Pod>, wp: &WatchParams, rv: &str) -> Vec<Event> {
    api.watch(wp, rv)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

fn summary(evs: &[Event]) -> Vec<String> {
    evs.iter()
        .map(|e| match e {
            WatchEvent::Added(p) => format!("ADDED {}", p.metadata.name.as_deref().unwrap_or("")),
            WatchEvent::Modified(p) => {
                format!("MODIFIED {}", p.metadata.name.as_deref().unwrap_or(""))
            }
            WatchEvent::Deleted(p) => {
                format!("DELETED {}", p.metadata.name.as_deref().unwrap_or(""))
            }
            WatchEvent::Bookmark(_) => "BOOKMARK".into(),
            WatchEvent::Error(s) => format!("ERROR {}", s.code),
        })
        .collect()
}

#[tokio::test]
async fn raw_watch_replay_selectors_timeout_and_410() {
    bounded(30, async {
        let e = env().await;
        let pods: Api<Pod> = Api::namespaced(e.client.clone(), "default");
        pods.create(&PostParams::default(), &pod("a", &[("app", "web")], None))
            .await
            .unwrap();
        let rv = pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();

        // From "0": the current state as ADDED, then the stream ends at timeoutSeconds.
        let started = std::time::Instant::now();
        let evs = collect_events(
            &pods,
            &WatchParams::default().disable_bookmarks().timeout(1),
            "0",
        )
        .await;
        assert_eq!(summary(&evs), ["ADDED a"]);
        assert!(started.elapsed() >= Duration::from_millis(900));

        // From a resourceVersion: the changes after it, replayed from the history.
        pods.create(&PostParams::default(), &pod("b", &[("app", "web")], None))
            .await
            .unwrap();
        pods.patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}})),
        )
        .await
        .unwrap();
        pods.delete("b", &DeleteParams::default()).await.unwrap();
        let evs = collect_events(
            &pods,
            &WatchParams::default().disable_bookmarks().timeout(1),
            &rv,
        )
        .await;
        assert_eq!(summary(&evs), ["ADDED b", "MODIFIED a", "DELETED b"]);
        // Every event carries its own, increasing resourceVersion.
        let rvs: Vec<u64> = evs
            .iter()
            .filter_map(|e| match e {
                WatchEvent::Added(p) | WatchEvent::Modified(p) | WatchEvent::Deleted(p) => {
                    p.metadata.resource_version.as_deref()?.parse().ok()
                }
                _ => None,
            })
            .collect();
        assert!(rvs.windows(2).all(|w| w[0] < w[1]) && rvs[0] > rv.parse().unwrap());

        // Through a label selector: `a` leaving the selection is a DELETED.
        let evs = collect_events(
            &pods,
            &WatchParams::default()
                .disable_bookmarks()
                .labels("app=web")
                .timeout(1),
            &rv,
        )
        .await;
        assert_eq!(summary(&evs), ["ADDED b", "DELETED a", "DELETED b"]);

        // Bookmarks when asked for.
        let evs = collect_events(&pods, &WatchParams::default().timeout(2), "0").await;
        assert!(
            summary(&evs).contains(&"BOOKMARK".to_string()),
            "{:?}",
            summary(&evs)
        );

        // Live events reach an open watch.
        let mut stream = pods
            .watch(
                &WatchParams::default().disable_bookmarks().timeout(5),
                &e.standin.resource_version().to_string(),
            )
            .await
            .unwrap()
            .boxed();
        pods.create(&PostParams::default(), &pod("c", &[], None))
            .await
            .unwrap();
        let ev = stream.try_next().await.unwrap().unwrap();
        assert_eq!(summary(&[ev]), ["ADDED c"]);

        // Too old a resourceVersion: an ERROR event with 410 Expired.
        e.standin.compact_history();
        let evs = collect_events(
            &pods,
            &WatchParams::default().disable_bookmarks().timeout(1),
            &rv,
        )
        .await;
        match &evs[..] {
            [WatchEvent::Error(s)] => {
                assert_eq!((s.code, s.reason.as_str()), (410, "Expired"));
                assert!(
                    s.message.starts_with("too old resource version"),
                    "{}",
                    s.message
                );
            }
            other => panic!("expected one 410 error event, got {:?}", summary(other)),
        }
    })
    .await;
}

/// (name → resourceVersion) of what the API lists now.
async fn listed(api: &Api<Pod>) -> Option<BTreeMap<String, String>> {
    let list = api.list(&ListParams::default()).await.ok()?;
    Some(
        list.items
            .into_iter()
            .map(|p| {
                (
                    p.metadata.name.unwrap_or_default(),
                    p.metadata.resource_version.unwrap_or_default(),
                )
            })
            .collect(),
    )
}

fn cached(store: &Store<Pod>) -> BTreeMap<String, String> {
    store
        .state()
        .iter()
        .map(|p| {
            (
                p.metadata.name.clone().unwrap_or_default(),
                p.metadata.resource_version.clone().unwrap_or_default(),
            )
        })
        .collect()
}

async fn converge(store: &Store<Pod>, api: &Api<Pod>, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(want) = listed(api).await
            && want == cached(store)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reflector did not converge: {what}: cache {:?}",
            cached(store)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A reflector whose consumer can be parked (so the watcher is not polled).
struct Reflector {
    store: Store<Pod>,
    open: gate::Sender<bool>,
    parked: Arc<AtomicBool>,
}

fn start_reflector(api: Api<Pod>, config: watcher::Config) -> Reflector {
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    let (open, mut rx) = gate::channel(true);
    let parked = Arc::new(AtomicBool::new(false));
    let p = parked.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {
            if !*rx.borrow() {
                p.store(true, Ordering::SeqCst);
                let _ = rx.wait_for(|o| *o).await;
                p.store(false, Ordering::SeqCst);
            }
        }
    });
    Reflector {
        store,
        open,
        parked,
    }
}

#[tokio::test]
async fn reflector_converges_through_writes_deletes_drops_and_410() {
    bounded(60, async {
        let e = env_with(StandIn::builder().bookmark_interval(Duration::from_millis(200))).await;
        let pods: Api<Pod> = Api::namespaced(e.client.clone(), "default");
        for i in 0..5 {
            pods.create(
                &PostParams::default(),
                &pod(&format!("pre-{i}"), &[("app", "web")], Some("node-1")),
            )
            .await
            .unwrap();
        }
        let all: Api<Pod> = Api::all(e.client.clone());
        let r = start_reflector(all, watcher::Config::default());
        r.store.wait_until_ready().await.unwrap();
        converge(&r.store, &pods, "initial list").await;

        // Creates, updates, status updates, deletes with and without grace.
        for i in 0..10 {
            pods.create(
                &PostParams::default(),
                &pod(&format!("p-{i}"), &[], Some("node-1")),
            )
            .await
            .unwrap();
        }
        pods.patch(
            "p-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
        )
        .await
        .unwrap();
        pods.patch_status(
            "p-2",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await
        .unwrap();
        pods.delete("p-3", &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
        pods.delete(
            "p-4",
            &DeleteParams {
                grace_period_seconds: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        converge(&r.store, &pods, "writes").await;
        let terminating = r
            .store
            .state()
            .into_iter()
            .find(|p| p.metadata.name.as_deref() == Some("p-4"));
        assert!(
            terminating.is_some_and(|p| p.metadata.deletion_timestamp.is_some()),
            "the cache sees the pod terminating"
        );
        tokio::time::sleep(Duration::from_millis(1300)).await;
        converge(&r.store, &pods, "grace period over").await;
        assert!(!cached(&r.store).contains_key("p-4"));

        // Dropped watches: the watcher re-watches from its last resourceVersion.
        e.standin.faults().drop_watches();
        pods.create(&PostParams::default(), &pod("after-drop", &[], None))
            .await
            .unwrap();
        converge(&r.store, &pods, "after a dropped watch").await;

        // Forced 410: park the consumer, cut its watch, change things and compact the
        // history; its re-watch from the old resourceVersion is Expired and it relists.
        r.open.send_replace(false);
        pods.create(&PostParams::default(), &pod("wake", &[], None))
            .await
            .unwrap();
        common::eventually(5, "consumer parked", || r.parked.load(Ordering::SeqCst)).await;
        e.standin.faults().drop_watches();
        tokio::time::sleep(Duration::from_millis(50)).await;
        pods.delete("pre-0", &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
        pods.create(&PostParams::default(), &pod("while-away", &[], None))
            .await
            .unwrap();
        pods.patch(
            "pre-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"y": "2"}}})),
        )
        .await
        .unwrap();
        let rv_before = e.standin.resource_version();
        e.standin.compact_history();
        let expired_before = e.standin.stats().watches_expired;
        r.open.send_replace(true);
        converge(&r.store, &pods, "after 410 relist").await;
        assert_eq!(
            e.standin.stats().watches_expired,
            expired_before + 1,
            "the watcher was told 410 Expired"
        );
        let cache = cached(&r.store);
        assert!(!cache.contains_key("pre-0") && cache.contains_key("while-away"));
        assert_eq!(cache["pre-1"], rv_before.to_string());
    })
    .await;
}

#[tokio::test]
async fn watcher_survives_drop_after_n_events_and_paging() {
    bounded(60, async {
        let e = env().await;
        let pods: Api<Pod> = Api::namespaced(e.client.clone(), "default");
        e.standin
            .faults()
            .update(|f| f.drop_watches_after_events = Some(3));
        // A small page size makes the initial list page, as with limit=500 on big clusters.
        let r = start_reflector(pods.clone(), watcher::Config::default().page_size(7));
        for i in 0..25 {
            pods.create(
                &PostParams::default(),
                &pod(&format!("p-{i}"), &[("i", &i.to_string())], None),
            )
            .await
            .unwrap();
        }
        r.store.wait_until_ready().await.unwrap();
        for i in 0..25 {
            if i % 3 == 0 {
                pods.delete(&format!("p-{i}"), &DeleteParams::default())
                    .await
                    .unwrap();
            } else {
                pods.patch(
                    &format!("p-{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": {"n": "1"}}})),
                )
                .await
                .unwrap();
            }
        }
        converge(&r.store, &pods, "with watches dropped every 3 events").await;
        assert!(
            e.standin.stats().watches_started >= 10,
            "{:?}",
            e.standin.stats()
        );
        assert_eq!(r.store.state().len(), 16);
    })
    .await;
}

#[tokio::test]
async fn streaming_list_and_metadata_watcher() {
    bounded(30, async {
        let e = env().await;
        let pods: Api<Pod> = Api::namespaced(e.client.clone(), "default");
        for i in 0..4 {
            pods.create(
                &PostParams::default(),
                &pod(&format!("s-{i}"), &[("app", "web")], None),
            )
            .await
            .unwrap();
        }
        // sendInitialEvents=true (InitialListStrategy::StreamingList).
        let r = start_reflector(
            pods.clone(),
            watcher::Config::default()
                .streaming_lists()
                .labels("app=web"),
        );
        r.store.wait_until_ready().await.unwrap();
        assert_eq!(r.store.state().len(), 4);
        pods.create(&PostParams::default(), &pod("s-9", &[("app", "web")], None))
            .await
            .unwrap();
        pods.create(
            &PostParams::default(),
            &pod("other", &[("app", "db")], None),
        )
        .await
        .unwrap();
        common::eventually(10, "streamed create", || r.store.state().len() == 5).await;

        // Metadata-only watch: PartialObjectMetadata over the same wire.
        let metas: Api<PartialObjectMeta<Pod>> = Api::namespaced(e.client.clone(), "default");
        let mut events = watcher(metas, watcher::Config::default())
            .applied_objects()
            .boxed();
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < 6 {
            let m = tokio::time::timeout(Duration::from_secs(5), events.try_next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            seen.insert(m.metadata.name.unwrap());
        }
        assert!(seen.contains("other"));
    })
    .await;
}
