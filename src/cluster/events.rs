//! Kubernetes Events (`events.k8s.io/v1`) about pods and NodeClaims: what `kubectl describe pod`
//! and `kubectl get events` show an operator (a pod nominated for a NodeClaim, a pod no pool can
//! take, a claim launched, failed or registered). Karpenter emits the same kinds of events.
//!
//! Events are published by a background task from a bounded queue, so the provisioner never waits
//! on the API; when the queue is full (an API that is slow to take thousands of events) an event is
//! dropped, not the work. Repeats of an event on the same object within a few minutes become one
//! event with a series count (kube-rs's `Recorder`).

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::nodeclaims::NodeClaim;

/// Events waiting to be published at most; more are dropped.
const QUEUE: usize = 2048;
/// The `reportingController` of every event.
pub const CONTROLLER: &str = "nodewright.io/provisioner";

/// Whether an event reports normal progress or something an operator should look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Normal,
    Warning,
}

/// Where events go: the API, or nowhere (standalone).
#[derive(Clone)]
pub struct EventSink {
    tx: Option<mpsc::Sender<(Event, ObjectReference)>>,
}

impl EventSink {
    /// Events are dropped (no cluster).
    pub fn disabled() -> Self {
        Self { tx: None }
    }

    /// Publish through `client` until `shutdown`; `instance` is this replica (its pod name).
    pub fn spawn(client: Client, instance: String, shutdown: CancellationToken) -> Self {
        let (tx, mut rx) = mpsc::channel::<(Event, ObjectReference)>(QUEUE);
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: CONTROLLER.to_owned(),
                instance: Some(instance),
            },
        );
        tokio::spawn(async move {
            loop {
                let (event, reference) = tokio::select! {
                    () = shutdown.cancelled() => break,
                    next = rx.recv() => match next {
                        Some(next) => next,
                        None => break,
                    },
                };
                if let Err(e) = recorder.publish(&event, &reference).await {
                    tracing::debug!(
                        reason = %event.reason,
                        object = reference.name.as_deref().unwrap_or(""),
                        error = %e,
                        "could not publish an event"
                    );
                }
            }
        });
        Self { tx: Some(tx) }
    }

    /// An event about a pod.
    pub fn pod(&self, pod: &Pod, kind: Kind, reason: &str, action: &str, note: String) {
        let reference = ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Pod".to_owned()),
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            ..ObjectReference::default()
        };
        self.send(kind, reason, action, note, reference);
    }

    /// An event about a NodeClaim (cluster-scoped: the event lands in the `default` namespace, as
    /// Karpenter's do).
    pub fn claim(&self, claim: &NodeClaim, kind: Kind, reason: &str, action: &str, note: String) {
        let reference = ObjectReference {
            api_version: Some(claim.api_version.clone()),
            kind: Some("NodeClaim".to_owned()),
            name: Some(claim.name().to_owned()),
            uid: Some(claim.uid().to_owned()).filter(|u| !u.is_empty()),
            ..ObjectReference::default()
        };
        self.send(kind, reason, action, note, reference);
    }

    /// An event about a workload (`Kind/name` in `namespace`: a Deployment, StatefulSet, ...).
    pub fn workload(
        &self,
        namespace: &str,
        workload: &str,
        kind: Kind,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let (object_kind, name) = workload.split_once('/').unwrap_or(("Pod", workload));
        let api_version = match object_kind {
            "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => "apps/v1",
            "Job" | "CronJob" => "batch/v1",
            _ => "v1",
        };
        let reference = ObjectReference {
            api_version: Some(api_version.to_owned()),
            kind: Some(object_kind.to_owned()),
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectReference::default()
        };
        self.send(kind, reason, action, note, reference);
    }

    fn send(
        &self,
        kind: Kind,
        reason: &str,
        action: &str,
        mut note: String,
        reference: ObjectReference,
    ) {
        let Some(tx) = &self.tx else {
            return;
        };
        // The API refuses notes over 1 kB.
        if note.len() > 1000 {
            let mut cut = 997;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
            note.push_str("...");
        }
        let event = Event {
            type_: match kind {
                Kind::Normal => EventType::Normal,
                Kind::Warning => EventType::Warning,
            },
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if tx.try_send((event, reference)).is_err() {
            tracing::debug!(reason, "event queue full; event dropped");
        }
    }
}
