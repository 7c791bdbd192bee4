//! Kubernetes adapters: the client (kubeconfig / in-cluster chain) and watch caches.

pub mod batched;
pub mod certs;
pub mod daemonsets;
pub mod events;
#[cfg(test)]
pub mod fake;
pub mod leader;
pub mod ledger;
pub mod namespaces;
pub mod nodeclaims;
pub mod nodes;
pub mod pods;
pub mod quota;
pub mod snapshot;
pub mod split;
pub mod split_monitor;
pub mod state;
pub mod volumes;

use kube::Client;

/// `kube::Resource` for a partial view of a core v1 Pod (a type with `metadata: ObjectMeta` that
/// decodes only some fields), so kube-rs's admission types and watchers can carry it.
macro_rules! core_pod_resource {
    ($view:ty) => {
        impl kube::Resource for $view {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;

            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                std::borrow::Cow::Borrowed("Pod")
            }
            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                std::borrow::Cow::Borrowed("")
            }
            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                std::borrow::Cow::Borrowed("v1")
            }
            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                std::borrow::Cow::Borrowed("pods")
            }
            fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &self.metadata
            }
            fn meta_mut(
                &mut self,
            ) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &mut self.metadata
            }
        }
    };
}
pub(crate) use core_pod_resource;

/// A client like [`client_from_env`]'s, but one that does not retry refused requests itself:
/// the node controllers' client. An eviction a PodDisruptionBudget refuses is answered 429 with
/// `Retry-After`, and kube's default retry layer would wait it out inside the call (up to
/// minutes), stalling the provisioner's loop; the drain retries with its own backoff instead.
pub async fn client_without_retry_from_env() -> Option<Client> {
    let mut config = kube::Config::infer().await.ok()?;
    config.default_retry = false;
    Client::try_from(config).ok()
}

/// A client from the standard chain (`KUBECONFIG`, `~/.kube/config`, in-cluster service account),
/// or `None` when there is no cluster configuration at all: a local, standalone run.
pub async fn client_from_env() -> Option<Client> {
    match kube::Config::infer().await {
        Ok(config) => {
            let url = config.cluster_url.to_string();
            match Client::try_from(config) {
                Ok(client) => {
                    tracing::info!(cluster = %url, "using Kubernetes cluster");
                    Some(client)
                }
                Err(e) => {
                    tracing::warn!(cluster = %url, error = %e, "cannot build a Kubernetes client; running standalone");
                    None
                }
            }
        }
        Err(e) => {
            tracing::info!(reason = %e, "no Kubernetes configuration found; running standalone");
            None
        }
    }
}
