//! A recording [`CloudProvider`] for the controllers' unit tests and benchmarks: instances live
//! in memory, every call is recorded, and failures are injected per offering (instance type,
//! zone, capacity type) or for the next calls of one operation. Terminated instances go through
//! `shutting-down` to `terminated` on the next `get`, as EC2's do. It is a stand-in only where
//! moto cannot show the fault (an error on the Nth call, an instance that takes a while to go).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::future::BoxFuture;

use super::launch::{
    InstanceInfo, LaunchError, LaunchRequest, Launched, NodeClassView, OfferingKey, provider_id,
};
use super::provider::CloudProvider;
use crate::config::EC2NodeClass;
use crate::model::catalog::CapacityType;

/// One recorded call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Create { claim: String },
    Get { instance_id: String },
    FindByClaim { claim: String },
    List,
    Delete { instance_ids: Vec<String> },
    NodeClassView { node_class: String },
}

/// Which operation a queued failure applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Get,
    FindByClaim,
    List,
    Delete,
    NodeClassView,
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    instances: BTreeMap<String, InstanceInfo>,
    /// Offerings that fail with this error when tried.
    failing: HashMap<OfferingKey, LaunchError>,
    /// Errors for the next calls of an operation, in order.
    next: HashMap<Op, VecDeque<LaunchError>>,
    unavailable: Vec<OfferingKey>,
    seq: u64,
    /// What every node class selects; [`FakeCloud::node_class_view`] when not set.
    view: Option<NodeClassView>,
}

/// The fake. Cheap to clone; clones share state.
#[derive(Clone, Default)]
pub struct FakeCloud {
    inner: Arc<Mutex<Inner>>,
}

impl FakeCloud {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// How many Delete calls named this instance.
    pub fn deletes_of(&self, instance_id: &str) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| matches!(c, Call::Delete { instance_ids } if instance_ids.iter().any(|i| i == instance_id)))
            .count()
    }

    /// Launching this offering fails with `error` (each time) and marks it unavailable.
    pub fn fail_offering(
        &self,
        instance_type: &str,
        zone: &str,
        ct: CapacityType,
        error: LaunchError,
    ) {
        self.lock()
            .failing
            .insert((instance_type.to_owned(), zone.to_owned(), ct), error);
    }

    /// The next call of `op` fails with `error` (queued after earlier ones).
    pub fn fail_next(&self, op: Op, error: LaunchError) {
        self.lock().next.entry(op).or_default().push_back(error);
    }

    /// An instance as if launched earlier (for a new leader's view, or an orphan).
    pub fn add_instance(&self, info: InstanceInfo) {
        self.lock().instances.insert(info.instance_id.clone(), info);
    }

    /// The instance as the fake holds it now.
    pub fn instance(&self, id: &str) -> Option<InstanceInfo> {
        self.lock().instances.get(id).cloned()
    }

    /// The instance vanishes without a trace (terminated outside nodewright, long ago).
    pub fn forget(&self, id: &str) {
        self.lock().instances.remove(id);
    }

    fn take_failure(inner: &mut Inner, op: Op) -> Option<LaunchError> {
        inner.next.get_mut(&op).and_then(VecDeque::pop_front)
    }

    /// What every node class selects from now on: launches use it, and the drift check sees it.
    /// Instance types it gives no architectures for are `x86_64`.
    pub fn set_node_class_view(&self, view: NodeClassView) {
        self.lock().view = Some(view);
    }

    /// What every node class selects: as set, else `ami-1` (x86_64) and `ami-arm-1` (arm64),
    /// `subnet-1`, `sg-1`.
    pub fn node_class_view(&self) -> NodeClassView {
        self.lock().view.clone().unwrap_or_else(|| NodeClassView {
            amis: BTreeMap::from([
                ("x86_64".to_owned(), "ami-1".to_owned()),
                ("arm64".to_owned(), "ami-arm-1".to_owned()),
            ]),
            subnets: vec!["subnet-1".to_owned()],
            security_groups: vec!["sg-1".to_owned()],
            architectures: BTreeMap::new(),
        })
    }

    /// The view with `instance_types`' architectures filled in (`x86_64` unless set).
    fn view_for(&self, instance_types: &[String]) -> NodeClassView {
        let mut view = self.node_class_view();
        for t in instance_types {
            view.architectures
                .entry(t.clone())
                .or_insert_with(|| vec!["x86_64".to_owned()]);
        }
        view
    }
}

/// An EC2-shaped error for tests.
pub fn ec2_error(call: &'static str, code: &str) -> LaunchError {
    LaunchError::Ec2 {
        call,
        code: code.to_owned(),
        message: format!("injected {code}"),
    }
}

impl CloudProvider for FakeCloud {
    fn create<'a>(
        &'a self,
        req: &'a LaunchRequest,
    ) -> BoxFuture<'a, Result<Launched, LaunchError>> {
        let types: Vec<String> = req
            .offerings
            .iter()
            .map(|o| o.instance_type.clone())
            .collect();
        let view = self.view_for(&types);
        Box::pin(async move {
            let mut inner = self.lock();
            inner.calls.push(Call::Create {
                claim: req.claim_name.clone(),
            });
            if let Some(e) = Self::take_failure(&mut inner, Op::Create) {
                return Err(e);
            }
            if let Some(existing) = inner.instances.values().find(|i| {
                i.claim.as_deref() == Some(req.claim_name.as_str())
                    && !super::provider::is_gone(&i.state)
            }) {
                return Ok(Launched {
                    instance_id: existing.instance_id.clone(),
                    instance_type: existing.instance_type.clone(),
                    zone: existing.zone.clone(),
                    capacity_type: existing.capacity_type,
                    provider_id: existing.provider_id.clone(),
                    reused: true,
                    unavailable: Vec::new(),
                    image_id: existing.image_id.clone(),
                    subnet_id: existing.subnet_id.clone(),
                    security_group_ids: existing.security_group_ids.clone(),
                });
            }
            let mut unavailable = Vec::new();
            let mut last_error = None;
            for o in &req.offerings {
                let key = (o.instance_type.clone(), o.zone.clone(), o.capacity_type);
                if let Some(e) = inner.failing.get(&key).cloned() {
                    unavailable.push(key.clone());
                    inner.unavailable.push(key);
                    last_error = Some(e);
                    continue;
                }
                inner.seq += 1;
                let id = format!("i-{:017x}", inner.seq);
                let image_id = view.amis_for(&o.instance_type).into_iter().next();
                let subnet_id = view.subnets.first().cloned();
                let info = InstanceInfo {
                    instance_id: id.clone(),
                    instance_type: o.instance_type.clone(),
                    zone: o.zone.clone(),
                    state: "running".to_owned(),
                    claim: Some(req.claim_name.clone()),
                    node_pool: Some(req.node_pool.clone()),
                    launch_time: Some(SystemTime::now()),
                    provider_id: provider_id(&o.zone, &id),
                    capacity_type: o.capacity_type,
                    image_id: image_id.clone(),
                    subnet_id: subnet_id.clone(),
                    security_group_ids: view.security_groups.clone(),
                };
                inner.instances.insert(id.clone(), info);
                return Ok(Launched {
                    instance_id: id.clone(),
                    instance_type: o.instance_type.clone(),
                    zone: o.zone.clone(),
                    capacity_type: o.capacity_type,
                    provider_id: provider_id(&o.zone, &id),
                    reused: false,
                    unavailable,
                    image_id,
                    subnet_id,
                    security_group_ids: view.security_groups,
                });
            }
            Err(last_error.unwrap_or(LaunchError::InsufficientCapacity {
                message: "no offering to try".to_owned(),
            }))
        })
    }

    fn get<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<InstanceInfo>, LaunchError>> {
        Box::pin(async move {
            let mut inner = self.lock();
            inner.calls.push(Call::Get {
                instance_id: instance_id.to_owned(),
            });
            if let Some(e) = Self::take_failure(&mut inner, Op::Get) {
                return Err(e);
            }
            let found = inner.instances.get_mut(instance_id).map(|i| {
                let seen = i.clone();
                // EC2 shows `shutting-down` for a while, then `terminated`.
                if i.state == "shutting-down" {
                    i.state = "terminated".to_owned();
                }
                seen
            });
            Ok(found)
        })
    }

    fn find_by_claim<'a>(
        &'a self,
        _cluster: &'a str,
        claim: &'a str,
    ) -> BoxFuture<'a, Result<Option<InstanceInfo>, LaunchError>> {
        Box::pin(async move {
            let mut inner = self.lock();
            inner.calls.push(Call::FindByClaim {
                claim: claim.to_owned(),
            });
            if let Some(e) = Self::take_failure(&mut inner, Op::FindByClaim) {
                return Err(e);
            }
            Ok(inner
                .instances
                .values()
                .find(|i| {
                    i.claim.as_deref() == Some(claim)
                        && matches!(i.state.as_str(), "pending" | "running")
                })
                .cloned())
        })
    }

    fn list<'a>(
        &'a self,
        _cluster: &'a str,
    ) -> BoxFuture<'a, Result<Vec<InstanceInfo>, LaunchError>> {
        Box::pin(async move {
            let mut inner = self.lock();
            inner.calls.push(Call::List);
            if let Some(e) = Self::take_failure(&mut inner, Op::List) {
                return Err(e);
            }
            Ok(inner
                .instances
                .values()
                .filter(|i| i.claim.is_some() && !super::provider::is_gone(&i.state))
                .cloned()
                .collect())
        })
    }

    fn delete<'a>(&'a self, instance_ids: &'a [String]) -> BoxFuture<'a, Result<(), LaunchError>> {
        Box::pin(async move {
            let mut inner = self.lock();
            inner.calls.push(Call::Delete {
                instance_ids: instance_ids.to_vec(),
            });
            if let Some(e) = Self::take_failure(&mut inner, Op::Delete) {
                return Err(e);
            }
            for id in instance_ids {
                if let Some(i) = inner.instances.get_mut(id)
                    && !super::provider::is_gone(&i.state)
                {
                    i.state = "shutting-down".to_owned();
                }
            }
            Ok(())
        })
    }

    fn mark_unavailable(&self, instance_type: &str, zone: &str, ct: CapacityType) {
        self.lock()
            .unavailable
            .push((instance_type.to_owned(), zone.to_owned(), ct));
    }

    fn unavailable(&self) -> Vec<OfferingKey> {
        let mut v = self.lock().unavailable.clone();
        v.sort();
        v.dedup();
        v
    }

    fn node_class_view<'a>(
        &'a self,
        node_class: &'a EC2NodeClass,
        instance_types: &'a [String],
    ) -> BoxFuture<'a, Result<NodeClassView, LaunchError>> {
        Box::pin(async move {
            {
                let mut inner = self.lock();
                inner.calls.push(Call::NodeClassView {
                    node_class: node_class.name().to_owned(),
                });
                if let Some(e) = Self::take_failure(&mut inner, Op::NodeClassView) {
                    return Err(e);
                }
            }
            Ok(self.view_for(instance_types))
        })
    }
}
