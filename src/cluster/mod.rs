//! Kubernetes adapters: the client (kubeconfig / in-cluster chain) and watch caches.

pub mod ledger;
pub mod namespaces;
pub mod pods;
pub mod quota;

use kube::Client;

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
