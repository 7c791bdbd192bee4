//! Where ledgers live: one ConfigMap per namespace and kind of ledger (pod quotas, capacity
//! splits) in nodewright's own namespace, written with resourceVersion compare-and-swap so replicas
//! never overwrite each other; or, standalone, memory.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

/// The ConfigMap key holding the ledger as JSON.
pub const LEDGER_KEY: &str = "ledger.json";
/// Label on quota ledger ConfigMaps naming the namespace whose pods they count.
pub const LEDGER_NAMESPACE_LABEL: &str = "nodewright.io/quota-namespace";

/// What a ledger type needs to be stored.
pub trait StoredLedger:
    Clone + Default + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The ConfigMap name's prefix; the namespace the ledger counts follows it.
    const PREFIX: &'static str;
    /// The label naming that namespace on the ConfigMap.
    const NAMESPACE_LABEL: &'static str;
}

impl StoredLedger for crate::policy::quota::Ledger {
    const PREFIX: &'static str = "nodewright-quota-";
    const NAMESPACE_LABEL: &'static str = LEDGER_NAMESPACE_LABEL;
}

impl StoredLedger for crate::policy::split::SplitLedger {
    const PREFIX: &'static str = "nodewright-split-";
    const NAMESPACE_LABEL: &'static str = "nodewright.io/split-namespace";
}

/// A ledger as read, with the version to write it back against (`None`: it does not exist yet).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<L> {
    pub ledger: L,
    pub version: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone else wrote first: read again and retry.
    #[error("the ledger was changed by another writer")]
    Conflict,
    /// The API failed or could not be reached.
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    /// The stored ledger is not readable JSON.
    #[error("ledger {name} is corrupt: {error}")]
    Corrupt {
        name: String,
        error: serde_json::Error,
    },
}

pub enum LedgerStore<L> {
    /// Standalone: not shared and not durable.
    Memory(Mutex<HashMap<String, (L, u64)>>),
    /// ConfigMaps in nodewright's namespace.
    ConfigMaps(Api<ConfigMap>),
}

/// The ConfigMap name for `namespace`'s ledger of kind `L` (namespace names are DNS labels, so
/// this is a valid name).
pub fn configmap_name<L: StoredLedger>(namespace: &str) -> String {
    format!("{}{namespace}", L::PREFIX)
}

impl<L: StoredLedger> LedgerStore<L> {
    pub fn memory() -> Self {
        Self::Memory(Mutex::new(HashMap::new()))
    }

    pub fn configmaps(client: Client, own_namespace: &str) -> Self {
        Self::ConfigMaps(Api::namespaced(client, own_namespace))
    }

    pub async fn get(&self, namespace: &str) -> Result<Versioned<L>, StoreError> {
        match self {
            Self::Memory(map) => Ok(map.lock().await.get(namespace).map_or_else(
                || Versioned {
                    ledger: L::default(),
                    version: None,
                },
                |(ledger, v)| Versioned {
                    ledger: ledger.clone(),
                    version: Some(v.to_string()),
                },
            )),
            Self::ConfigMaps(api) => {
                let name = configmap_name::<L>(namespace);
                let Some(cm) = api.get_opt(&name).await? else {
                    return Ok(Versioned {
                        ledger: L::default(),
                        version: None,
                    });
                };
                let ledger = match cm.data.as_ref().and_then(|d| d.get(LEDGER_KEY)) {
                    Some(text) => serde_json::from_str(text)
                        .map_err(|error| StoreError::Corrupt { name, error })?,
                    None => L::default(),
                };
                Ok(Versioned {
                    ledger,
                    version: cm.metadata.resource_version,
                })
            }
        }
    }

    /// Write `ledger` if the stored one is still at `version`; returns the new version.
    pub async fn put(
        &self,
        namespace: &str,
        ledger: &L,
        version: Option<&str>,
    ) -> Result<String, StoreError> {
        match self {
            Self::Memory(map) => {
                let mut map = map.lock().await;
                let current = map.get(namespace).map(|(_, v)| v.to_string());
                if current.as_deref() != version {
                    return Err(StoreError::Conflict);
                }
                let next = map.get(namespace).map_or(1, |(_, v)| v + 1);
                map.insert(namespace.to_owned(), (ledger.clone(), next));
                Ok(next.to_string())
            }
            Self::ConfigMaps(api) => {
                let text = serde_json::to_string(ledger).map_err(|error| StoreError::Corrupt {
                    name: configmap_name::<L>(namespace),
                    error,
                })?;
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(configmap_name::<L>(namespace)),
                        labels: Some(BTreeMap::from([
                            (
                                "app.kubernetes.io/managed-by".to_owned(),
                                "nodewright".to_owned(),
                            ),
                            (L::NAMESPACE_LABEL.to_owned(), namespace.to_owned()),
                        ])),
                        resource_version: version.map(str::to_owned),
                        ..ObjectMeta::default()
                    },
                    data: Some(BTreeMap::from([(LEDGER_KEY.to_owned(), text)])),
                    ..ConfigMap::default()
                };
                let pp = PostParams::default();
                let written = match version {
                    None => api.create(&pp, &cm).await,
                    Some(_) => api.replace(&configmap_name::<L>(namespace), &pp, &cm).await,
                };
                match written {
                    Ok(cm) => Ok(cm.metadata.resource_version.unwrap_or_default()),
                    // A stale resourceVersion, or a create racing another replica's create.
                    Err(kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists() => {
                        Err(StoreError::Conflict)
                    }
                    Err(e) => Err(StoreError::Api(e)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::quota::{Ledger, LedgerEntry};

    #[tokio::test]
    async fn memory_store_compares_and_swaps() {
        let store = LedgerStore::<Ledger>::memory();
        let first = store.get("ns").await.unwrap();
        assert_eq!(first.version, None);
        let mut ledger = Ledger::default();
        ledger.entries.insert(
            "u".into(),
            LedgerEntry {
                pod: "ns/p".into(),
                admitted_at: 1,
            },
        );
        let v1 = store.put("ns", &ledger, None).await.unwrap();
        assert!(matches!(
            store.put("ns", &ledger, None).await,
            Err(StoreError::Conflict)
        ));
        let read = store.get("ns").await.unwrap();
        assert_eq!(
            read,
            Versioned {
                ledger: ledger.clone(),
                version: Some(v1.clone())
            }
        );
        let v2 = store
            .put("ns", &Ledger::default(), Some(&v1))
            .await
            .unwrap();
        assert_ne!(v1, v2);
        assert!(matches!(
            store.put("ns", &ledger, Some(&v1)).await,
            Err(StoreError::Conflict)
        ));
    }
}
