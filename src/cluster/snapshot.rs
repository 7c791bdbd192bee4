//! The objects consolidation reads, listed from the API: what `nodewright consolidate
//! --from-cluster` and the live consolidation controller both decide from.

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ListParams;
use kube::{Api, Client};

use crate::scheduling::consolidation::snapshot::Snapshot;

/// Nodes, pods not finished, and PodDisruptionBudgets, cluster-wide (three paginated lists).
pub async fn list(client: &Client) -> Result<Snapshot, kube::Error> {
    let nodes = list_all::<Node>(Api::all(client.clone()), ListParams::default()).await?;
    let not_finished = ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed");
    let pods = list_all::<Pod>(Api::all(client.clone()), not_finished).await?;
    let pdbs =
        list_all::<PodDisruptionBudget>(Api::all(client.clone()), ListParams::default()).await?;
    Ok(Snapshot { nodes, pods, pdbs })
}

async fn list_all<K>(api: Api<K>, params: ListParams) -> Result<Vec<K>, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut params = params.limit(500);
    loop {
        let page = api.list(&params).await?;
        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        out.extend(page.items);
        match next {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}
