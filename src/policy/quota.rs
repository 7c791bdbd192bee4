//! The namespace pod-quota decision, pure: which limit applies, which pods count, and which of a batch
//! of admission requests fit. The adapter (`/validate`, the shared ledger object, the pod watch) feeds
//! it values and writes back what it returns.
//!
//! Exactness across replicas rests on the ledger: the set of pods admitted by any replica, written with
//! resourceVersion compare-and-swap. Usage is `|ledger ∪ live pods seen by the watch|`, so a pod counts
//! from the moment it is admitted until the watch sees it gone, whichever replica admitted it and however
//! far behind this replica's watch is. Entries are dropped when the watch sees their pod go, or once
//! older than the expiry, which must exceed the apiserver's request timeout (a pod that never appeared:
//! a later webhook denied it, the create failed) and any replica's watch lag (a pod that did appear is
//! counted by every watch by then), so the ledger holds only the recent admissions.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Serialize};

use crate::config::{FailurePolicy, PolicySpec};
use crate::policy::selector;

/// A namespace label that sets its pod limit, overriding the Policy's rules.
pub const MAX_PODS_LABEL: &str = "nodewright.io/max-pods";

/// The quota rules of a Policy, compiled once per config load.
#[derive(Debug, Clone, Default)]
pub struct Quotas {
    rules: Vec<QuotaRule>,
    failure_policy: FailurePolicy,
}

#[derive(Debug, Clone)]
struct QuotaRule {
    name: String,
    namespaces: BTreeSet<String>,
    selector: Option<LabelSelector>,
    max_pods: u32,
}

/// The limit in force for a namespace, and where it comes from (for the denial message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub max_pods: u32,
    pub source: LimitSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitSource {
    /// A Policy quota rule, by name.
    Rule(String),
    /// The namespace's own `nodewright.io/max-pods` label.
    NamespaceLabel,
}

/// The namespace's `nodewright.io/max-pods` label is not a whole number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("namespace label {MAX_PODS_LABEL}={value:?} is not a whole number of pods")]
pub struct BadLimitLabel {
    pub value: String,
}

impl Quotas {
    pub fn new(policy: &PolicySpec) -> Self {
        let rules = policy
            .quotas
            .iter()
            .enumerate()
            .map(|(i, q)| QuotaRule {
                name: q.name.clone().unwrap_or_else(|| format!("quota-{i}")),
                namespaces: q.namespaces.iter().cloned().collect(),
                selector: q.namespace_selector.clone(),
                max_pods: q.max_pods,
            })
            .collect();
        Self {
            rules,
            failure_policy: policy.quota_failure_policy,
        }
    }

    /// What to do with a pod when its quota cannot be checked.
    pub fn failure_policy(&self) -> FailurePolicy {
        self.failure_policy
    }

    /// The limit for `namespace`: its `nodewright.io/max-pods` label if set, else the first rule that
    /// selects it by name or by labels. `labels` is `None` when the namespace's labels are unknown
    /// (standalone), in which case only rules by name apply.
    pub fn limit_for(
        &self,
        namespace: &str,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Result<Option<Limit>, BadLimitLabel> {
        if let Some(value) = labels.and_then(|l| l.get(MAX_PODS_LABEL)) {
            let max_pods = value.trim().parse::<u32>().map_err(|_| BadLimitLabel {
                value: value.clone(),
            })?;
            return Ok(Some(Limit {
                max_pods,
                source: LimitSource::NamespaceLabel,
            }));
        }
        let rule = self.rules.iter().find(|r| {
            r.namespaces.contains(namespace)
                || matches!((&r.selector, labels), (Some(sel), Some(labels)) if selector::matches(sel, labels))
        });
        Ok(rule.map(|r| Limit {
            max_pods: r.max_pods,
            source: LimitSource::Rule(r.name.clone()),
        }))
    }

    /// Whether the config names `namespace` in a rule: only those namespaces' usage is exported as
    /// metrics, so the label's cardinality is bounded by the config.
    pub fn names(&self, namespace: &str) -> bool {
        self.rules.iter().any(|r| r.namespaces.contains(namespace))
    }
}

/// What a pod looks like to the quota, from the watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodCountFacts<'a> {
    /// `status.phase`.
    pub phase: Option<&'a str>,
    /// `metadata.deletionTimestamp`, unix seconds.
    pub deletion_timestamp: Option<i64>,
    /// `metadata.deletionGracePeriodSeconds`.
    pub deletion_grace_seconds: Option<i64>,
}

/// Whether a pod counts against a `pods` quota, as ResourceQuota's evaluator decides: not Succeeded or
/// Failed, and not past the end of its deletion grace period.
pub fn pod_counts(pod: PodCountFacts<'_>, now: i64) -> bool {
    if matches!(pod.phase, Some("Succeeded" | "Failed")) {
        return false;
    }
    match pod.deletion_timestamp {
        Some(deleted_at) => now <= deleted_at + pod.deletion_grace_seconds.unwrap_or(0),
        None => true,
    }
}

/// The shared record of admitted pods for one namespace, stored as one object in the Kubernetes API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// Pod uid -> when and what was admitted.
    #[serde(default)]
    pub entries: BTreeMap<String, LedgerEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    /// `namespace/name` or `namespace/generateName*`, for people reading the ledger.
    pub pod: String,
    /// Unix seconds.
    pub admitted_at: i64,
}

/// One pod CREATE asking for a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRequest {
    /// The pod's uid (set before validating webhooks run).
    pub uid: String,
    /// For the ledger and messages.
    pub pod: String,
    /// Answered, but never reserves or counts.
    pub dry_run: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted; `in_use` is the namespace's usage including this pod.
    Allow { in_use: u32 },
    /// Over quota; `in_use` is the usage that left no room.
    Deny { in_use: u32, message: String },
}

/// Where the pods of a namespace stand, as this replica's watch sees them.
pub trait PodWatchView {
    /// The uid is of a pod that currently counts (see [`pod_counts`]).
    fn is_counted(&self, uid: &str) -> bool;
    /// The uid was of a pod the watch has seen and that no longer counts (deleted, or terminal).
    fn is_gone(&self, uid: &str) -> bool;
    /// How many pods currently count.
    fn counted(&self) -> usize;
}

impl Ledger {
    /// Usage: pods that count per the watch, plus ledger entries the watch does not (yet) count and has
    /// not seen go away.
    pub fn in_use(&self, watch: &impl PodWatchView) -> u32 {
        let pending = self
            .entries
            .keys()
            .filter(|uid| !watch.is_counted(uid) && !watch.is_gone(uid))
            .count();
        u32::try_from(watch.counted() + pending).unwrap_or(u32::MAX)
    }

    /// Decide a batch in order, each request under its own limit. Admitted non-dry-run requests are
    /// added to the ledger, so the caller writes the ledger once for the whole batch and answers only
    /// after that write succeeded. A request whose uid is already admitted (a retried call) is allowed
    /// again without counting twice.
    pub fn admit<'a>(
        &mut self,
        namespace: &str,
        requests: impl IntoIterator<Item = (&'a Limit, &'a SlotRequest)>,
        watch: &impl PodWatchView,
        now: i64,
    ) -> Vec<Verdict> {
        let mut in_use = self.in_use(watch);
        requests
            .into_iter()
            .map(|(limit, r)| {
                if self.entries.contains_key(&r.uid) || watch.is_counted(&r.uid) {
                    return Verdict::Allow { in_use };
                }
                if in_use >= limit.max_pods {
                    return Verdict::Deny {
                        in_use,
                        message: denial_message(namespace, limit, in_use),
                    };
                }
                if r.dry_run {
                    return Verdict::Allow { in_use: in_use + 1 };
                }
                self.entries.insert(
                    r.uid.clone(),
                    LedgerEntry {
                        pod: r.pod.clone(),
                        admitted_at: now,
                    },
                );
                in_use += 1;
                Verdict::Allow { in_use }
            })
            .collect()
    }

    /// Drop entries the watch saw go away, and entries older than `expiry_seconds`: by then either the
    /// pod never appeared, or every replica's watch counts it by itself. This keeps the ledger to the
    /// pods admitted in the last `expiry_seconds`, whatever the limit. Returns whether anything changed
    /// (and so needs writing).
    pub fn reconcile(&mut self, watch: &impl PodWatchView, now: i64, expiry_seconds: i64) -> bool {
        let before = self.entries.len();
        self.entries
            .retain(|uid, entry| !(watch.is_gone(uid) || now - entry.admitted_at > expiry_seconds));
        self.entries.len() != before
    }
}

/// What a developer reads when a pod is refused: the namespace, the limit and where it comes from, the
/// usage, and what to do.
pub fn denial_message(namespace: &str, limit: &Limit, in_use: u32) -> String {
    let source = match &limit.source {
        LimitSource::Rule(name) => format!("nodewright Policy quota {name:?}"),
        LimitSource::NamespaceLabel => format!("namespace label {MAX_PODS_LABEL}"),
    };
    format!(
        "namespace {namespace} may run at most {max} pods (set by {source}) and {in_use} are running or being created; \
         delete pods you no longer need, or ask your platform team to raise the limit \
         (namespace label {MAX_PODS_LABEL}=<n> or the Policy's quotas)",
        max = limit.max_pods
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// A watch view from explicit sets.
    #[derive(Default)]
    struct Watch {
        counted: BTreeSet<String>,
        gone: BTreeSet<String>,
    }

    impl PodWatchView for Watch {
        fn is_counted(&self, uid: &str) -> bool {
            self.counted.contains(uid)
        }
        fn is_gone(&self, uid: &str) -> bool {
            self.gone.contains(uid)
        }
        fn counted(&self) -> usize {
            self.counted.len()
        }
    }

    fn watch(counted: &[&str], gone: &[&str]) -> Watch {
        Watch {
            counted: counted.iter().map(|s| s.to_string()).collect(),
            gone: gone.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn limit(n: u32) -> Limit {
        Limit {
            max_pods: n,
            source: LimitSource::Rule("team".into()),
        }
    }

    /// Every request under one limit.
    fn under<'a>(
        limit: &'a Limit,
        requests: &'a [SlotRequest],
    ) -> impl Iterator<Item = (&'a Limit, &'a SlotRequest)> {
        requests.iter().map(move |r| (limit, r))
    }

    fn req(uid: &str) -> SlotRequest {
        SlotRequest {
            uid: uid.into(),
            pod: format!("team-riker/{uid}"),
            dry_run: false,
        }
    }

    fn quotas() -> Quotas {
        let text = include_str!("../../tests/data/steering.yaml").replace(
            "  quotas:\n    - namespaces: [\"team-riker\"]\n      maxPods: 10\n",
            "  quotas:\n    - name: riker\n      namespaces: [\"team-riker\"]\n      maxPods: 10\n    - name: labelled\n      namespaceSelector: {matchLabels: {tier: small}}\n      maxPods: 2\n",
        );
        Quotas::new(&Config::parse(&text, "t.yaml").unwrap().policy)
    }

    #[test]
    fn limit_comes_from_label_then_rules() {
        let q = quotas();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            q.limit_for("team-riker", None).unwrap(),
            Some(Limit {
                max_pods: 10,
                source: LimitSource::Rule("riker".into())
            })
        );
        assert_eq!(q.limit_for("other", None).unwrap(), None);
        assert_eq!(
            q.limit_for("other", Some(&labels(&[("tier", "small")])))
                .unwrap()
                .unwrap()
                .max_pods,
            2
        );
        let raised = labels(&[(MAX_PODS_LABEL, "25")]);
        assert_eq!(
            q.limit_for("team-riker", Some(&raised)).unwrap(),
            Some(Limit {
                max_pods: 25,
                source: LimitSource::NamespaceLabel
            })
        );
        assert!(
            q.limit_for("team-riker", Some(&labels(&[(MAX_PODS_LABEL, "lots")])))
                .is_err()
        );
        assert!(q.names("team-riker") && !q.names("other"));
    }

    #[test]
    fn pods_count_as_resource_quota_counts_them() {
        let now = 1_000;
        let facts = |phase, deleted: Option<i64>, grace| PodCountFacts {
            phase,
            deletion_timestamp: deleted,
            deletion_grace_seconds: grace,
        };
        let cases = [
            (facts(None, None, None), true),
            (facts(Some("Pending"), None, None), true),
            (facts(Some("Running"), None, None), true),
            (facts(Some("Succeeded"), None, None), false),
            (facts(Some("Failed"), None, None), false),
            (facts(Some("Running"), Some(990), Some(30)), true),
            (facts(Some("Running"), Some(900), Some(30)), false),
            (facts(Some("Running"), Some(1_000), None), true),
            (facts(Some("Running"), Some(999), Some(0)), false),
        ];
        for (i, (pod, want)) in cases.iter().enumerate() {
            assert_eq!(pod_counts(*pod, now), *want, "case {i}: {pod:?}");
        }
    }

    #[test]
    fn batch_admits_exactly_up_to_the_limit() {
        let mut ledger = Ledger::default();
        let w = watch(&["a", "b", "c"], &[]);
        let requests: Vec<SlotRequest> = (0..50).map(|i| req(&format!("new-{i}"))).collect();
        let verdicts = ledger.admit("team-riker", under(&limit(10), &requests), &w, 0);
        let allowed = verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Allow { .. }))
            .count();
        assert_eq!(allowed, 7);
        assert_eq!(ledger.entries.len(), 7);
        assert_eq!(ledger.in_use(&w), 10);
        let Verdict::Deny { in_use, message } = &verdicts[7] else {
            panic!("{:?}", verdicts[7])
        };
        assert_eq!(*in_use, 10);
        for part in [
            "team-riker",
            "at most 10 pods",
            "10 are running",
            "nodewright.io/max-pods",
            "riker",
        ] {
            assert!(message.contains(part), "{message:?} lacks {part:?}");
        }
    }

    #[test]
    fn ledger_and_watch_are_not_counted_twice_and_retries_are_free() {
        let mut ledger = Ledger::default();
        ledger.admit(
            "ns",
            under(&limit(3), &[req("a"), req("b")]),
            &watch(&[], &[]),
            0,
        );
        // The watch now sees a and b: still 2 in use, not 4.
        let w = watch(&["a", "b"], &[]);
        assert_eq!(ledger.in_use(&w), 2);
        // A retried call for b is allowed and does not count again; c takes the last slot; d does not fit.
        let v = ledger.admit(
            "ns",
            under(&limit(3), &[req("b"), req("c"), req("d")]),
            &w,
            1,
        );
        assert!(matches!(v[0], Verdict::Allow { in_use: 2 }));
        assert!(matches!(v[1], Verdict::Allow { in_use: 3 }));
        assert!(matches!(v[2], Verdict::Deny { in_use: 3, .. }));
    }

    #[test]
    fn dry_runs_are_answered_but_never_reserve() {
        let mut ledger = Ledger::default();
        let w = watch(&["x"], &[]);
        let dry = SlotRequest {
            dry_run: true,
            ..req("dry")
        };
        let v = ledger.admit(
            "ns",
            under(&limit(2), &[dry.clone(), dry.clone(), dry]),
            &w,
            0,
        );
        assert!(v.iter().all(|v| matches!(v, Verdict::Allow { in_use: 2 })));
        assert!(ledger.entries.is_empty());
        let full = ledger.admit(
            "ns",
            under(
                &limit(1),
                &[SlotRequest {
                    dry_run: true,
                    ..req("dry")
                }],
            ),
            &w,
            0,
        );
        assert!(
            matches!(full[0], Verdict::Deny { .. }),
            "a dry run over quota is denied like the real thing"
        );
    }

    #[test]
    fn reconcile_frees_gone_pods_at_once_and_never_seen_pods_after_expiry() {
        let mut ledger = Ledger::default();
        ledger.admit(
            "ns",
            under(
                &limit(10),
                &[req("deleted"), req("running"), req("pending"), req("lost")],
            ),
            &watch(&[], &[]),
            100,
        );
        let w = watch(&["running"], &["deleted"]);
        assert!(ledger.reconcile(&w, 110, 60));
        assert_eq!(
            ledger.entries.keys().collect::<Vec<_>>(),
            ["lost", "pending", "running"]
        );
        assert!(
            !ledger.reconcile(&w, 150, 60),
            "nothing expires before its time"
        );
        // A pod admitted by another replica that this watch has not seen yet still counts.
        assert_eq!(ledger.in_use(&watch(&[], &[])), 3);
        assert!(ledger.reconcile(&w, 200, 60));
        assert!(ledger.entries.is_empty(), "old entries go, counted or not");
        assert_eq!(
            ledger.in_use(&w),
            1,
            "the running pod still counts, through the watch"
        );
    }

    #[test]
    fn ledger_round_trips_as_json() {
        let mut ledger = Ledger::default();
        ledger.admit("ns", under(&limit(1), &[req("u1")]), &watch(&[], &[]), 42);
        let text = serde_json::to_string(&ledger).unwrap();
        assert_eq!(
            text,
            r#"{"entries":{"u1":{"pod":"team-riker/u1","admittedAt":42}}}"#
        );
        assert_eq!(serde_json::from_str::<Ledger>(&text).unwrap(), ledger);
    }
}
