//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it:
//! the holder renews `renewTime` every `renew_every`; another replica takes the lease over once
//! `renewTime + leaseDurationSeconds` has passed, with an update carrying the resourceVersion it
//! read, so two candidates cannot both win (the loser gets 409 Conflict). A leader that cannot
//! renew for `lease_duration` steps down before anyone else may take over. On shutdown the
//! leader gives the lease up so a standby takes over at once.
//!
//! Every replica serves webhooks and the extender; only the leader plans and launches.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (pod name, or host name and pid).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

impl LeaseSettings {
    pub fn new(namespace: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: "nodewright-provisioner".to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(2),
        }
    }
}

/// Whether this replica leads, as a watch channel (`true` while leading).
pub fn spawn(
    client: Client,
    settings: LeaseSettings,
    shutdown: CancellationToken,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
        let mut last_renewed: Option<Instant> = None;
        loop {
            let leading = *tx.borrow();
            match try_acquire_or_renew(&api, &settings).await {
                Ok(true) => {
                    last_renewed = Some(Instant::now());
                    if !leading {
                        tracing::info!(lease = %settings.name, identity = %settings.identity, "became the provisioning leader");
                        let _ = tx.send(true);
                    }
                }
                Ok(false) => {
                    last_renewed = None;
                    if leading {
                        tracing::warn!(lease = %settings.name, "lost the provisioning lease to another replica");
                        let _ = tx.send(false);
                    }
                }
                Err(e) => {
                    tracing::warn!(lease = %settings.name, error = %e, "lease update failed");
                    // Step down before the lease can expire for the others.
                    if leading
                        && last_renewed.is_none_or(|t| {
                            t.elapsed() + settings.renew_every >= settings.lease_duration
                        })
                    {
                        tracing::warn!(lease = %settings.name, "stepping down: could not renew the lease in time");
                        let _ = tx.send(false);
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(settings.renew_every) => {}
            }
        }
        if *tx.borrow() {
            let _ = tx.send(false);
            if let Err(e) = release(&api, &settings).await {
                tracing::warn!(lease = %settings.name, error = %e, "could not give up the lease");
            } else {
                tracing::info!(lease = %settings.name, "gave up the provisioning lease");
            }
        }
    });
    rx
}

/// One round: `Ok(true)` if this replica holds the lease afterwards.
async fn try_acquire_or_renew(api: &Api<Lease>, s: &LeaseSettings) -> Result<bool, kube::Error> {
    let now = MicroTime(jiff::Timestamp::now());
    let duration_secs = i32::try_from(s.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&s.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(s.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(s.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder != s.identity {
        let held_for = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(duration_secs).max(1))
                .unwrap_or(15),
        );
        let expired = holder.is_empty()
            || spec
                .renew_time
                .as_ref()
                .is_none_or(|t| crate::cluster::nodeclaims::since(&t.0) > held_for);
        if !expired {
            return Ok(false);
        }
        spec.holder_identity = Some(s.identity.clone());
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(now);
    spec.lease_duration_seconds = Some(duration_secs);
    // replace carries the resourceVersion read above: a concurrent taker makes this a 409.
    match api.replace(&s.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

async fn release(api: &Api<Lease>, s: &LeaseSettings) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&s.name).await? else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(s.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    api.replace(&s.name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}
