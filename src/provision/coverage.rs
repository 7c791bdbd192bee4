//! Which waiting pods the claims still cover, and when a pod stops being covered.
//!
//! A claim covers its pods while its node is coming (Pending, Launched) and, once the node has
//! registered, while their promise on it lasts ([`PROMISE_TTL`]). A pod covered is not planned
//! again. Two things end the cover early or late enough to matter:
//! - the node turned the pod away: another pod took its room, or a constraint the promise does
//!   not weigh (another pod's anti-affinity, a spread) keeps it off; the scheduler says so by
//!   reporting the pod unschedulable again well after the node registered;
//! - the promise ran out with the pod still unbound.
//!
//! Either way the pod goes back into the batch, and the planner, which sees the node as it is,
//! decides again: it may well place the pod on the same node, with no new launch.

use super::*;

/// A pod reported unschedulable this long after its claim's node registered was turned away by
/// it: the scheduler has seen the node without its registration taint by then (the taint's
/// removal requeues the pod at once), so the report is about the node, not about a stale view.
pub(super) const TURNED_AWAY_AFTER: Duration = Duration::from_secs(15);

/// Whether a claim in `phase`, registered `registered_for` ago (if it has), still covers a pod
/// the node has not turned away.
pub(super) fn covers(phase: Phase, registered_for: Option<Duration>) -> bool {
    match phase {
        Phase::Pending | Phase::Launched => true,
        Phase::Registered => registered_for.is_some_and(|d| d < PROMISE_TTL),
        Phase::Failed | Phase::Terminating => false,
    }
}

/// Whether an unschedulable report for a pod of a claim registered `registered_for` ago means
/// the node turned the pod away (rather than a report from before the node was usable).
pub(super) fn turned_away(phase: Phase, registered_for: Option<Duration>) -> bool {
    phase == Phase::Registered && registered_for.is_some_and(|d| d >= TURNED_AWAY_AFTER)
}

fn registered_for(claim: &NodeClaim) -> Option<Duration> {
    let at = claim.status.as_ref()?.registered_at.as_ref()?;
    Some(crate::cluster::nodeclaims::since(&at.0))
}

impl Run {
    /// Pods that claims in flight still cover (see the module's doc).
    pub(super) fn covered_pods(&self) -> HashSet<String> {
        self.claims
            .values()
            .filter(|c| covers(c.phase(), registered_for(c)))
            .flat_map(|c| {
                c.spec
                    .pods
                    .iter()
                    .filter(|pod| self.released.get(*pod).map(String::as_str) != Some(c.name()))
            })
            .cloned()
            .collect()
    }

    /// `key` was reported unschedulable: if a registered claim covering it had its node long
    /// enough for the scheduler to have tried it, the node turned the pod away. Its promise is
    /// dropped and it no longer counts as covered by that claim; true if so.
    pub(super) fn note_turned_away(&mut self, key: &str) -> bool {
        let Some(claim) = self.claims.values().find(|c| {
            c.spec.pods.iter().any(|p| p == key)
                && covers(c.phase(), registered_for(c))
                && self.released.get(key).map(String::as_str) != Some(c.name())
        }) else {
            return false;
        };
        if !turned_away(claim.phase(), registered_for(claim)) {
            return false;
        }
        let name = claim.name().to_owned();
        tracing::info!(pod = %key, claim = %name, "the claim's node did not take the pod: planning it again");
        self.p
            .state
            .view()
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .release(key);
        self.p
            .metrics
            .replanned
            .with_label_values(&["turned_away"])
            .inc();
        self.released.insert(key.to_owned(), name);
        true
    }

    /// Pods of registered claims whose promise ran out with the pod still waiting go back into
    /// the batch, once per claim. (Pods placed on existing nodes, or that no pool can take, are
    /// left to the scheduler's next report: planning them every reconcile would only repeat.)
    pub(super) fn rebatch_uncovered(&mut self) {
        let covered = self.covered_pods();
        let again: Vec<(String, String)> = self
            .claims
            .values()
            .filter(|c| c.phase() == Phase::Registered && !covers(c.phase(), registered_for(c)))
            .flat_map(|c| c.spec.pods.iter().map(move |pod| (pod, c.name())))
            .filter(|(pod, claim)| {
                self.waiting.contains_key(*pod)
                    && !covered.contains(*pod)
                    && self.released.get(*pod).map(String::as_str) != Some(*claim)
                    && !self.p.state.is_bound(pod)
            })
            .map(|(pod, claim)| (pod.clone(), claim.to_owned()))
            .collect();
        let now = Instant::now();
        for (pod, claim) in again {
            tracing::info!(pod = %pod, claim = %claim, "the pod's promise on its claim's node ran out unbound: planning it again");
            self.p
                .metrics
                .replanned
                .with_label_values(&["promise_expired"])
                .inc();
            self.batcher.add(pod.clone(), (), now);
            self.released.insert(pod, claim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Option<Duration> = |s| Some(Duration::from_secs(s));

    #[test]
    fn claims_cover_their_pods_until_the_promise_runs_out() {
        assert!(covers(Phase::Pending, None));
        assert!(covers(Phase::Launched, None));
        assert!(covers(Phase::Registered, S(0)));
        assert!(covers(Phase::Registered, S(PROMISE_TTL.as_secs() - 1)));
        assert!(!covers(Phase::Registered, S(PROMISE_TTL.as_secs())));
        // A registered claim without its time (written by hand) covers nothing.
        assert!(!covers(Phase::Registered, None));
        assert!(!covers(Phase::Failed, None));
        assert!(!covers(Phase::Terminating, S(1)));
    }

    #[test]
    fn only_a_report_well_after_registration_means_turned_away() {
        assert!(!turned_away(Phase::Launched, None));
        assert!(!turned_away(Phase::Registered, S(0)));
        assert!(!turned_away(
            Phase::Registered,
            S(TURNED_AWAY_AFTER.as_secs() - 1)
        ));
        assert!(turned_away(
            Phase::Registered,
            S(TURNED_AWAY_AFTER.as_secs())
        ));
        assert!(!turned_away(Phase::Registered, None));
    }
}
