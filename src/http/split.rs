//! The capacity split at the admission edge: for a pod steering selected whose workload asks for a
//! spot/on-demand split, ask the split service for its capacity type (bounded by the apiserver's
//! timeout) and add the choice to the steering decision's patch.

use std::time::Duration;

use json_patch::Patch;
use kube::core::admission::AdmissionRequest;

use super::AppState;
use crate::policy::mutate::{Additions, Decision, SplitAsk, Steering};
use crate::policy::pod::PodView;
use crate::policy::split::{SplitRequest, choice_patch};

/// `decision` with the pod's capacity type added when its workload asks for a split; a pod whose
/// split annotations are invalid is refused. When no choice can be made in time (the API or the
/// pod watch unavailable), the pod is steered without a capacity type, with a warning: refusing it
/// would stop the workload, and a wrong count shows in the split's drift metric.
pub(super) async fn with_split(
    state: &AppState,
    steering: &Steering,
    request: &AdmissionRequest<PodView>,
    namespace: &str,
    budget: Option<Duration>,
    decision: Decision,
) -> Decision {
    let (pool, rule, mut ops, mut additions) = match decision {
        Decision::Patch {
            pool,
            rule,
            patch,
            additions,
        } => (pool, rule, patch.0, additions),
        Decision::Unchanged { pool, rule } => (pool, rule, Vec::new(), Additions::default()),
        other => return other,
    };
    let Some(pod) = request.object.as_ref() else {
        return rebuild(pool, rule, ops, additions);
    };
    match steering.split_for(&rule, pod) {
        SplitAsk::None => {}
        SplitAsk::Invalid(message) => {
            return Decision::Deny {
                pool,
                rule,
                message,
            };
        }
        SplitAsk::NotApplicable(note) => additions.notes.push(note),
        SplitAsk::Choose { workload, split } => {
            let metrics = state.split.metrics();
            let choice = SplitRequest {
                id: request.uid.clone(),
                workload,
                split,
                dry_run: request.dry_run,
            };
            let chosen = state.split.choose(namespace, choice);
            let chosen = match budget {
                Some(budget) => tokio::time::timeout(budget, chosen)
                    .await
                    .unwrap_or(Err(crate::cluster::split::SplitError::Timeout)),
                None => chosen.await,
            };
            match chosen {
                Ok(choice) => {
                    let ct = choice.capacity_type;
                    let outcome = if request.dry_run {
                        "dry_run"
                    } else {
                        "steered"
                    };
                    metrics
                        .choices
                        .with_label_values(&[ct.as_str(), outcome])
                        .inc();
                    let node_selector_exists =
                        pod.spec.as_ref().is_some_and(|s| s.node_selector.is_some())
                            || additions.node_selector.is_some();
                    ops.extend(choice_patch(
                        pod,
                        node_selector_exists,
                        split,
                        choice,
                        &request.uid,
                    ));
                    additions.capacity_type = Some((ct, split));
                }
                Err(e) => {
                    metrics
                        .choices
                        .with_label_values(&["none", "unchecked"])
                        .inc();
                    tracing::warn!(uid = %request.uid, namespace, error = %e, "capacity split not decided; pod steered without a capacity type");
                    additions.notes.push(format!(
                        "no capacity type chosen for the spot/on-demand split ({e}); the pod may land on either"
                    ));
                }
            }
        }
    }
    rebuild(pool, rule, ops, additions)
}

fn rebuild(
    pool: String,
    rule: String,
    ops: Vec<json_patch::PatchOperation>,
    additions: Additions,
) -> Decision {
    if ops.is_empty() {
        Decision::Unchanged { pool, rule }
    } else {
        Decision::Patch {
            pool,
            rule,
            patch: Patch(ops),
            additions,
        }
    }
}
