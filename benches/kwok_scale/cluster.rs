//! The cluster: kwok Nodes and Pods, created, watched and deleted at scale.

use super::*;

pub(crate) fn node_name(i: usize) -> String {
    format!("kwok-scale-{i:05}")
}

pub(crate) fn node(i: usize) -> Node {
    let name = node_name(i);
    let resources =
        json!({"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    // Each node its own /24 for the pod IPs kwok hands out (its default pool is one /24).
    let cidr = format!("10.{}.{}.0/24", 64 + i / 256, i % 256);
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": {
                LABEL: "kwok-scale",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "m6i.8xlarge",
                "topology.kubernetes.io/zone": ZONES[i % ZONES.len()],
                "topology.kubernetes.io/region": "us-east-1",
                "type": "kwok",
            },
            "annotations": {"kwok.x-k8s.io/node": "fake"},
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"allocatable": resources, "capacity": resources},
    }))
    .unwrap()
}

pub(crate) fn pod(i: usize, scheduler: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("p-{i:05}"), "labels": {LABEL: "kwok-scale", "app": "web"}},
        "spec": {
            "schedulerName": scheduler,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": "app", "image": "registry.k8s.io/pause:3.10",
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            }],
        },
    }))
    .unwrap()
}

/// Create `object` through `api`, retrying a few times on conflicts of load (429, 5xx, transport
/// errors); an object already there counts as created. Returns whether it was.
pub(crate) async fn create_with_retries<K>(api: &Api<K>, object: &K, what: &str) -> bool
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    for attempt in 0..6u32 {
        match api.create(&PostParams::default(), object).await {
            Ok(_) => return true,
            Err(kube::Error::Api(e)) if e.code == 409 => return true,
            Err(kube::Error::Api(e)) if e.code != 429 && e.code < 500 => {
                eprintln!("create {what}: {e}");
                return false;
            }
            Err(e) => {
                if attempt == 5 {
                    eprintln!("create {what}: {e} (gave up after 6 attempts)");
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
    false
}

/// The state of this benchmark's Nodes.
#[derive(Default)]
pub(crate) struct Readiness {
    pub(crate) total: usize,
    pub(crate) ready: usize,
    pub(crate) tainted: usize,
    /// Ready, yet still carrying only `node.kubernetes.io/not-ready` or `unreachable` taints: the
    /// one admission (TaintNodesByCondition) puts on every new Node, or one the node lifecycle
    /// controller put on when a lease renewal came late, which it lifts in its own time.
    pub(crate) stale_taint: Vec<String>,
}

pub(crate) async fn node_readiness(client: &Client) -> Readiness {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut lp = ListParams::default()
        .labels(&format!("{LABEL}=kwok-scale"))
        .limit(1000);
    let mut r = Readiness::default();
    loop {
        let page = match nodes.list(&lp).await {
            Ok(page) => page,
            Err(e) => {
                eprintln!("kwok-scale: list nodes: {e}");
                return r;
            }
        };
        for node in &page.items {
            r.total += 1;
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let taints = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            r.ready += usize::from(ready);
            r.tainted += usize::from(!taints.is_empty());
            if ready
                && !taints.is_empty()
                && taints.iter().all(|t| {
                    matches!(
                        t.key.as_str(),
                        "node.kubernetes.io/not-ready" | "node.kubernetes.io/unreachable"
                    )
                })
            {
                r.stale_taint.extend(node.metadata.name.clone());
            }
        }
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => lp = lp.continue_token(&token),
            _ => return r,
        }
    }
}

pub(crate) async fn create_nodes(client: &Client, knobs: &Knobs) {
    let nodes: Api<Node> = Api::all(client.clone());
    let started = Instant::now();
    let created = futures::stream::iter(0..knobs.nodes)
        .map(|i| {
            let nodes = nodes.clone();
            async move { create_with_retries(&nodes, &node(i), &node_name(i)).await }
        })
        .buffer_unordered(knobs.concurrency)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    assert_eq!(created, knobs.nodes, "not every Node was created");
    eprintln!(
        "kwok-scale: {} Nodes created in {:.1} s",
        knobs.nodes,
        started.elapsed().as_secs_f64()
    );
    // kwok makes them Ready. The node lifecycle controller would then lift the not-ready taint
    // that admission put on each, but at its client's 20 requests/s that takes minutes for
    // thousands of nodes, and the Node updates would land in the measured window: once a node is
    // Ready, lift its not-ready/unreachable taints here, CONCURRENCY at a time (the controller
    // does not put them back on a Ready node).
    let deadline = Instant::now() + Duration::from_secs(60 + knobs.nodes as u64 / 10);
    let mut last_report = Instant::now();
    let mut lifted = 0;
    loop {
        let r = node_readiness(client).await;
        if r.ready == knobs.nodes && r.tainted == 0 {
            eprintln!(
                "kwok-scale: {} Nodes Ready and untainted {:.1} s after the first create ({lifted} not-ready taints lifted by this benchmark)",
                r.ready,
                started.elapsed().as_secs_f64()
            );
            return;
        }
        if Instant::now() > deadline {
            eprintln!(
                "kwok-scale: WARNING after {:.0} s only {} of {} Nodes Ready and {} untainted; going on (the pods tolerate every taint)",
                started.elapsed().as_secs_f64(),
                r.ready,
                r.total,
                r.total - r.tainted
            );
            return;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "kwok-scale: {}/{} Nodes Ready, {} tainted",
                r.ready, r.total, r.tainted
            );
            last_report = Instant::now();
        }
        if !r.stale_taint.is_empty() {
            let patch = kube::api::Patch::Merge(json!({"spec": {"taints": null}}));
            lifted += futures::stream::iter(r.stale_taint)
                .map(|name| {
                    let nodes = nodes.clone();
                    let patch = &patch;
                    async move {
                        nodes
                            .patch(&name, &kube::api::PatchParams::default(), patch)
                            .await
                            .is_ok()
                    }
                })
                .buffer_unordered(knobs.concurrency)
                .filter(|ok| futures::future::ready(*ok))
                .count()
                .await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Pod name → when the watch first saw it bound, filled by a watch of `namespace`.
type Bound = Arc<Mutex<HashMap<String, Instant>>>;

/// Watch the pods of `namespace`; returns once the watch has listed (so no bind is missed).
pub(crate) async fn watch_bindings(
    client: &Client,
    namespace: &str,
) -> (
    Bound,
    tokio::sync::watch::Receiver<usize>,
    tokio::task::JoinHandle<()>,
) {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let bound: Bound = Arc::default();
    let (count_tx, count_rx) = tokio::sync::watch::channel(0usize);
    let (listed_tx, listed_rx) = tokio::sync::oneshot::channel();
    let task = {
        let bound = bound.clone();
        tokio::spawn(async move {
            let mut listed = Some(listed_tx);
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = listed.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                        let on_node = pod.spec.as_ref().and_then(|s| s.node_name.as_ref());
                        if let (Some(_), Some(name)) = (on_node, pod.metadata.name) {
                            let mut bound = bound.lock().unwrap();
                            bound.entry(name).or_insert_with(Instant::now);
                            let _ = count_tx.send(bound.len());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => eprintln!("kwok-scale: pod watch: {e}"),
                }
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(60), listed_rx)
        .await
        .expect("the pod watch did not list within 60 s")
        .expect("the pod watch ended");
    (bound, count_rx, task)
}

/// Delete every pod of `namespace` (grace period 0), CONCURRENCY at a time, and wait until they
/// are gone. (One DELETE of the collection does the same in one request, but for thousands of
/// pods that request outlasts the client's patience.)
pub(crate) async fn delete_pods(client: &Client, namespace: &str, concurrency: usize) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(1000);
    loop {
        match pods.list_metadata(&lp).await {
            Ok(page) => {
                names.extend(page.items.into_iter().filter_map(|p| p.metadata.name));
                match page.metadata.continue_ {
                    Some(token) if !token.is_empty() => lp = lp.continue_token(&token),
                    _ => break,
                }
            }
            Err(e) => {
                eprintln!("kwok-scale: list pods of {namespace}: {e}");
                break;
            }
        }
    }
    let delete = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    let failed = futures::stream::iter(names)
        .map(|name| {
            let (pods, delete) = (pods.clone(), &delete);
            async move {
                for attempt in 0..4u32 {
                    match pods.delete(&name, delete).await {
                        Ok(_) => return true,
                        Err(kube::Error::Api(e)) if e.code == 404 => return true,
                        Err(_) if attempt < 3 => {
                            tokio::time::sleep(Duration::from_millis(200 << attempt)).await
                        }
                        Err(e) => {
                            eprintln!("kwok-scale: delete pod {name}: {e}");
                            return false;
                        }
                    }
                }
                false
            }
        })
        .buffer_unordered(concurrency)
        .filter(|ok| futures::future::ready(!*ok))
        .count()
        .await;
    if failed > 0 {
        eprintln!("kwok-scale: WARNING {failed} pods of {namespace} could not be deleted");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = pods
            .list_metadata(&ListParams::default().limit(1))
            .await
            .map(|l| l.items.len() + l.metadata.remaining_item_count.unwrap_or(0) as usize)
            .unwrap_or(usize::MAX);
        if left == 0 {
            eprintln!(
                "kwok-scale: pods of {namespace} deleted in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            return;
        }
        if Instant::now() > deadline {
            eprintln!("kwok-scale: WARNING {left} pods of {namespace} still there");
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
