//! Namespace labels for steering rules that select namespaces by label, from a watch cache.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

/// How long a webhook request may wait for a namespace the cache has not seen yet.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Where namespace labels come from.
#[derive(Clone)]
pub enum NamespaceLabels {
    /// No cluster: labels are unknown, so rules that need them select nothing.
    Standalone,
    /// A reflector-backed cache, with a direct GET for namespaces it has not seen yet (just created).
    Cluster(Arc<NamespaceCache>),
}

/// The watch cache and the client for cache misses.
pub struct NamespaceCache {
    store: reflector::Store<Namespace>,
    api: Api<Namespace>,
}

impl NamespaceLabels {
    /// Start watching namespaces; the watch runs until `shutdown`.
    pub fn watch(client: Client, shutdown: CancellationToken) -> Self {
        let api: Api<Namespace> = Api::all(client);
        let (store, writer) = reflector::store();
        let stream = reflector(writer, watcher(api.clone(), watcher::Config::default()))
            .default_backoff()
            .applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    item = stream.next() => match item {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => tracing::warn!(error = %e, "namespace watch error; retrying"),
                        None => return,
                    },
                }
            }
        });
        Self::Cluster(Arc::new(NamespaceCache { store, api }))
    }

    /// The labels of `namespace`, or `None` when they cannot be known. A cache miss waits at most
    /// `budget` (and never more than two seconds) for the API.
    pub async fn labels(
        &self,
        namespace: &str,
        budget: Option<Duration>,
    ) -> Option<BTreeMap<String, String>> {
        let Self::Cluster(cache) = self else {
            return None;
        };
        if let Some(ns) = cache.store.get(&reflector::ObjectRef::new(namespace)) {
            return Some(ns.metadata.labels.clone().unwrap_or_default());
        }
        let wait = budget.map_or(LOOKUP_TIMEOUT, |b| b.min(LOOKUP_TIMEOUT));
        match tokio::time::timeout(wait, cache.api.get_opt(namespace)).await {
            Ok(Ok(Some(ns))) => Some(ns.metadata.labels.unwrap_or_default()),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                tracing::warn!(namespace, error = %e, "cannot read namespace labels");
                None
            }
            Err(_) => {
                tracing::warn!(namespace, "timed out reading namespace labels");
                None
            }
        }
    }
}
