//! The seam between the node controllers and the cloud: create, get, list and delete the
//! instance of a NodeClaim, with typed errors ([`LaunchError`]). [`Launcher`] is the EC2
//! implementation; [`crate::cloud::fake::FakeCloud`] records calls and injects failures, so the
//! controllers' state machines are unit-tested without EC2 (as Karpenter's `fake.CloudProvider`).

use futures::future::BoxFuture;

use super::launch::{
    InstanceInfo, LaunchError, LaunchRequest, Launched, Launcher, NodeClassView, OfferingKey,
};
use crate::config::EC2NodeClass;
use crate::model::catalog::CapacityType;

/// What the controllers need from a cloud.
pub trait CloudProvider: Send + Sync {
    /// Launch (or find, by the claim's tag and client token) the instance of a claim.
    fn create<'a>(&'a self, req: &'a LaunchRequest)
    -> BoxFuture<'a, Result<Launched, LaunchError>>;

    /// The instance by id, in any state (`pending` … `terminated`); `None` if the cloud does not
    /// know it (any more).
    fn get<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<InstanceInfo>, LaunchError>>;

    /// The pending or running instance tagged for the claim, if any (a launch whose answer was
    /// lost).
    fn find_by_claim<'a>(
        &'a self,
        cluster: &'a str,
        claim: &'a str,
    ) -> BoxFuture<'a, Result<Option<InstanceInfo>, LaunchError>>;

    /// The live instances nodewright launched for the cluster (those with a claim tag).
    fn list<'a>(
        &'a self,
        cluster: &'a str,
    ) -> BoxFuture<'a, Result<Vec<InstanceInfo>, LaunchError>>;

    /// Terminate the instances; unknown ids count as gone.
    fn delete<'a>(&'a self, instance_ids: &'a [String]) -> BoxFuture<'a, Result<(), LaunchError>>;

    /// Offerings found out of capacity recently (the planner leaves them out).
    fn unavailable(&self) -> Vec<OfferingKey>;

    /// Leave an offering out for a while (a spot interruption says it is short).
    fn mark_unavailable(&self, instance_type: &str, zone: &str, ct: CapacityType);

    /// What the node class selects now (AMIs per architecture, subnets, security groups),
    /// resolved as a launch resolves it, and the architectures of `instance_types`: the drift
    /// check's view (Karpenter's `CloudProvider.IsDrifted` reads the same).
    fn node_class_view<'a>(
        &'a self,
        node_class: &'a EC2NodeClass,
        instance_types: &'a [String],
    ) -> BoxFuture<'a, Result<NodeClassView, LaunchError>>;
}

/// Whether an instance in this state is gone for the controllers (Karpenter's AWS provider
/// treats `shutting-down` and `terminated` as not found).
pub fn is_gone(state: &str) -> bool {
    matches!(state, "shutting-down" | "terminated")
}

impl CloudProvider for Launcher {
    fn create<'a>(
        &'a self,
        req: &'a LaunchRequest,
    ) -> BoxFuture<'a, Result<Launched, LaunchError>> {
        Box::pin(self.launch(req))
    }

    fn get<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<InstanceInfo>, LaunchError>> {
        Box::pin(self.instance(instance_id))
    }

    fn find_by_claim<'a>(
        &'a self,
        cluster: &'a str,
        claim: &'a str,
    ) -> BoxFuture<'a, Result<Option<InstanceInfo>, LaunchError>> {
        Box::pin(Launcher::find_by_claim(self, cluster, claim))
    }

    fn list<'a>(
        &'a self,
        cluster: &'a str,
    ) -> BoxFuture<'a, Result<Vec<InstanceInfo>, LaunchError>> {
        Box::pin(self.cluster_instances(cluster))
    }

    fn delete<'a>(&'a self, instance_ids: &'a [String]) -> BoxFuture<'a, Result<(), LaunchError>> {
        Box::pin(self.terminate(instance_ids))
    }

    fn unavailable(&self) -> Vec<OfferingKey> {
        Launcher::unavailable(self).current()
    }

    fn mark_unavailable(&self, instance_type: &str, zone: &str, ct: CapacityType) {
        Launcher::unavailable(self).mark(instance_type, zone, ct);
    }

    fn node_class_view<'a>(
        &'a self,
        node_class: &'a EC2NodeClass,
        instance_types: &'a [String],
    ) -> BoxFuture<'a, Result<NodeClassView, LaunchError>> {
        Box::pin(Launcher::node_class_view(self, node_class, instance_types))
    }
}
