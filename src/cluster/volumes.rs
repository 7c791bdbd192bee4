//! Watch-fed PersistentVolumeClaims, PersistentVolumes and StorageClasses (lean views: the
//! fields volume topology reads, [`crate::scheduling::volumes::views`]), which the provisioner
//! reads pending pods against ([`crate::scheduling::volumes::pending_pod`]).

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::scheduling::volumes::VolumeObjects;
use crate::scheduling::volumes::views::{ClaimView, StorageClassView, VolumeView};

/// `kube::Resource` for a lean view of a built-in kind.
macro_rules! view_resource {
    ($view:ty, $scope:ty, $kind:literal, $group:literal, $version:literal, $plural:literal) => {
        impl kube::Resource for $view {
            type DynamicType = ();
            type Scope = $scope;

            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                std::borrow::Cow::Borrowed($kind)
            }
            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                std::borrow::Cow::Borrowed($group)
            }
            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                std::borrow::Cow::Borrowed($version)
            }
            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                std::borrow::Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

view_resource!(
    ClaimView,
    k8s_openapi::NamespaceResourceScope,
    "PersistentVolumeClaim",
    "",
    "v1",
    "persistentvolumeclaims"
);
view_resource!(
    VolumeView,
    k8s_openapi::ClusterResourceScope,
    "PersistentVolume",
    "",
    "v1",
    "persistentvolumes"
);
view_resource!(
    StorageClassView,
    k8s_openapi::ClusterResourceScope,
    "StorageClass",
    "storage.k8s.io",
    "v1",
    "storageclasses"
);

/// One of the three watched kinds: how it enters and leaves the objects.
trait Watched:
    kube::Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug + Send + 'static
{
    const INDEX: usize;
    const NAME: &'static str;
    fn insert(&self, objects: &mut VolumeObjects);
    fn remove(&self, objects: &mut VolumeObjects);
    fn clear(objects: &mut VolumeObjects);
}

fn name(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

impl Watched for ClaimView {
    const INDEX: usize = 0;
    const NAME: &'static str = "persistentvolumeclaim";
    fn insert(&self, objects: &mut VolumeObjects) {
        let claim = self.to_claim();
        objects
            .claims
            .insert((claim.namespace.clone(), claim.name.clone()), claim);
    }
    fn remove(&self, objects: &mut VolumeObjects) {
        let claim = self.to_claim();
        objects.claims.remove(&(claim.namespace, claim.name));
    }
    fn clear(objects: &mut VolumeObjects) {
        objects.claims.clear();
    }
}

impl Watched for VolumeView {
    const INDEX: usize = 1;
    const NAME: &'static str = "persistentvolume";
    fn insert(&self, objects: &mut VolumeObjects) {
        match self.to_volume() {
            Ok(volume) => {
                objects.volumes.insert(volume.name.clone(), volume);
            }
            Err(e) => {
                tracing::warn!(volume = %name(&self.metadata), error = %e, "persistentvolume not understood; pods using it wait");
                self.remove(objects);
            }
        }
    }
    fn remove(&self, objects: &mut VolumeObjects) {
        objects.volumes.remove(&name(&self.metadata));
    }
    fn clear(objects: &mut VolumeObjects) {
        objects.volumes.clear();
    }
}

impl Watched for StorageClassView {
    const INDEX: usize = 2;
    const NAME: &'static str = "storageclass";
    fn insert(&self, objects: &mut VolumeObjects) {
        match self.to_class() {
            Ok(class) => {
                objects.classes.insert(class.name.clone(), class);
            }
            Err(e) => {
                tracing::warn!(class = %name(&self.metadata), error = %e, "storageclass not understood; pods using it wait");
                self.remove(objects);
            }
        }
    }
    fn remove(&self, objects: &mut VolumeObjects) {
        objects.classes.remove(&name(&self.metadata));
    }
    fn clear(objects: &mut VolumeObjects) {
        objects.classes.clear();
    }
}

/// The cluster's claims, volumes and classes, shared by the watch tasks and the provisioner.
#[derive(Debug, Default)]
pub struct Volumes {
    objects: RwLock<VolumeObjects>,
    synced: [AtomicBool; 3],
}

impl Volumes {
    /// Watch every PersistentVolumeClaim, PersistentVolume and StorageClass until `shutdown`.
    pub fn watch(client: Client, shutdown: CancellationToken) -> Arc<Self> {
        let set = Arc::new(Self::default());
        set.spawn::<ClaimView>(Api::all(client.clone()), shutdown.clone());
        set.spawn::<VolumeView>(Api::all(client.clone()), shutdown.clone());
        set.spawn::<StorageClassView>(Api::all(client), shutdown);
        set
    }

    fn spawn<K: Watched>(self: &Arc<Self>, api: Api<K>, shutdown: CancellationToken) {
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        let set = self.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut relist = None;
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    event = stream.next() => event,
                };
                match event {
                    Some(Ok(event)) => set.handle(event, &mut relist),
                    Some(Err(e)) => {
                        tracing::warn!(kind = K::NAME, error = %e, "watch error; retrying")
                    }
                    None => return,
                }
            }
        });
    }

    fn handle<K: Watched>(&self, event: watcher::Event<K>, relist: &mut Option<Vec<K>>) {
        match event {
            watcher::Event::Init => *relist = Some(Vec::new()),
            watcher::Event::InitApply(object) => {
                if let Some(fresh) = relist.as_mut() {
                    fresh.push(object);
                }
            }
            watcher::Event::InitDone => {
                if let Some(fresh) = relist.take() {
                    let mut objects = self.objects.write().unwrap_or_else(|e| e.into_inner());
                    K::clear(&mut objects);
                    for object in &fresh {
                        object.insert(&mut objects);
                    }
                    drop(objects);
                    if !self.synced[K::INDEX].swap(true, Ordering::SeqCst) && self.is_synced() {
                        tracing::info!("volume watches synced");
                    }
                }
            }
            watcher::Event::Apply(object) => {
                object.insert(&mut self.objects.write().unwrap_or_else(|e| e.into_inner()))
            }
            watcher::Event::Delete(object) => {
                object.remove(&mut self.objects.write().unwrap_or_else(|e| e.into_inner()))
            }
        }
    }

    /// No cluster to watch (a standalone run): a pod's claims are unknown, so its volumes
    /// constrain nothing, as in `nodewright plan` with partial manifests.
    pub fn unwatched() -> Arc<Self> {
        let set = Self::default();
        set.objects
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .lenient = true;
        Arc::new(set)
    }

    /// `f` over the objects as they are now.
    pub fn read<R>(&self, f: impl FnOnce(&VolumeObjects) -> R) -> R {
        f(&self.objects.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// True once the first full list of each kind has been read.
    pub fn is_synced(&self) -> bool {
        self.synced.iter().all(|s| s.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(name: &str, volume: &str) -> ClaimView {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": "app", "managedFields": [{"manager": "x"}],
                         "annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
            "spec": {"volumeName": volume, "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}}
        }))
        .unwrap()
    }

    fn volume(name: &str, zone: &str) -> VolumeView {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
            "spec": {"csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-1"},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": "topology.ebs.csi.aws.com/zone", "operator": "In", "values": [zone]}]}]}}}
        }))
        .unwrap()
    }

    fn class(name: &str) -> StorageClassView {
        serde_json::from_value(json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
            "provisioner": "ebs.csi.aws.com", "volumeBindingMode": "WaitForFirstConsumer"
        }))
        .unwrap()
    }

    fn claims(set: &Volumes) -> Vec<String> {
        set.read(|o| o.claims.keys().map(|(_, n)| n.clone()).collect())
    }

    #[test]
    fn the_objects_follow_relists_applies_and_deletes_of_each_kind() {
        let set = Volumes::default();
        let mut claims_relist = None;
        set.handle(watcher::Event::Init, &mut claims_relist);
        set.handle(
            watcher::Event::InitApply(claim("a", "pv-a")),
            &mut claims_relist,
        );
        assert!(claims(&set).is_empty(), "nothing until the list is done");
        set.handle(watcher::Event::InitDone, &mut claims_relist);
        assert_eq!(claims(&set), ["a"]);
        assert!(!set.is_synced(), "volumes and classes not listed yet");

        let mut volumes_relist = None;
        set.handle(watcher::Event::Init, &mut volumes_relist);
        set.handle(
            watcher::Event::InitApply(volume("pv-a", "us-east-1b")),
            &mut volumes_relist,
        );
        set.handle(watcher::Event::InitDone, &mut volumes_relist);
        let mut classes_relist = None;
        set.handle(watcher::Event::Init, &mut classes_relist);
        set.handle(watcher::Event::InitApply(class("gp3")), &mut classes_relist);
        set.handle(watcher::Event::InitDone, &mut classes_relist);
        assert!(set.is_synced());
        set.read(|o| {
            assert!(!o.lenient, "the cluster's objects are read strictly");
            assert!(o.claims[&("app".to_owned(), "a".to_owned())].bound);
            assert_eq!(o.volumes["pv-a"].node_affinity.len(), 1);
            assert!(o.classes["gp3"].wait_for_first_consumer);
        });

        set.handle(watcher::Event::Apply(claim("b", "pv-b")), &mut None);
        set.handle(watcher::Event::Delete(claim("a", "pv-a")), &mut None);
        assert_eq!(claims(&set), ["b"]);
        // A relist of claims replaces the claims only.
        let mut relist = None;
        set.handle(watcher::Event::Init, &mut relist);
        set.handle(watcher::Event::InitApply(claim("c", "pv-c")), &mut relist);
        set.handle(watcher::Event::InitDone, &mut relist);
        assert_eq!(claims(&set), ["c"]);
        set.read(|o| assert!(o.volumes.contains_key("pv-a") && o.classes.contains_key("gp3")));
        set.handle(watcher::Event::Delete(volume("pv-a", "")), &mut None);
        set.handle(watcher::Event::Delete(class("gp3")), &mut None);
        set.read(|o| assert!(o.volumes.is_empty() && o.classes.is_empty()));
    }
}
