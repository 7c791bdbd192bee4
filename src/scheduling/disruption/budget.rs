//! How many of a pool's nodes may be disrupted at once: Karpenter v1's
//! `NodePool.GetAllowedDisruptionsByReason`, `Budget.GetAllowedDisruptions` and `Budget.IsActive`.

use std::time::Duration;

use jiff::Timestamp;

use super::cron::Schedule;
use crate::config::{Budget, DisruptionReason, format_go_duration};

/// What [`allowed_disruptions`] and [`remaining`] return when no budget limits the reason
/// (Karpenter's `math.MaxInt32`).
pub const UNBOUNDED: usize = usize::MAX;

/// The budget a pool has when it has none: the CRD's default `budgets: [{nodes: "10%"}]`.
pub fn default_budget() -> Budget {
    Budget {
        nodes: "10%".to_owned(),
        schedule: None,
        duration: None,
        reasons: Vec::new(),
    }
}

/// A budget's `nodes` for a pool of `pool_nodes` nodes: a count as written, or a percentage of the
/// pool rounded up (10% of 5 nodes is 1, of 0 nodes 0). `None` when it is neither.
pub fn budget_nodes(nodes: &str, pool_nodes: usize) -> Option<usize> {
    match nodes.strip_suffix('%') {
        Some(percent) => {
            let percent = percent.parse::<u64>().ok()?;
            let scaled = (u128::from(percent) * pool_nodes as u128).div_ceil(100);
            Some(usize::try_from(scaled).unwrap_or(usize::MAX))
        }
        None => nodes.parse::<usize>().ok(),
    }
}

/// Whether a budget applies to a reason: one with no `reasons` applies to all.
pub fn applies_to(budget: &Budget, reason: DisruptionReason) -> bool {
    budget.reasons.is_empty() || budget.reasons.contains(&reason)
}

/// Where a budget stands at a time.
enum Window {
    /// No schedule: always active.
    Always,
    /// Inside the window the schedule opened at this fire time.
    Open(Timestamp),
    /// A schedule that never fires, which Karpenter reads as always active.
    NeverFires,
    /// Not active.
    Closed,
    /// A schedule that does not parse, or a duration without schedule: Karpenter fails closed.
    Invalid(String),
}

fn window(budget: &Budget, now: Timestamp) -> Window {
    let text = match (&budget.schedule, &budget.duration) {
        (None, None) => return Window::Always,
        (None, Some(_)) => return Window::Invalid("'duration' is set without 'schedule'".into()),
        (Some(text), _) => text,
    };
    let schedule = match Schedule::parse(text) {
        Ok(schedule) => schedule,
        Err(why) => return Window::Invalid(format!("schedule {text:?}: {why}")),
    };
    if !schedule.fires() {
        return Window::NeverFires;
    }
    // Karpenter: active when the first fire after `now - duration` is not after `now`; so a fire
    // exactly `duration` ago no longer counts. A schedule without duration is never active.
    let duration = budget.duration.map_or(Duration::ZERO, |d| d.0);
    match schedule.last_fire_at_or_before(now, duration) {
        Some(fire) if fire.checked_add(duration).ok().is_none_or(|end| end > now) => {
            Window::Open(fire)
        }
        _ => Window::Closed,
    }
}

/// Whether a budget's limit applies at `now` (UTC): always for one without schedule; for one with
/// a schedule, from each time the schedule fires until `duration` later (exclusive). Like
/// Karpenter, a budget whose schedule does not parse (or that has a duration and no schedule) is
/// taken as active with a limit of 0, and one whose schedule never fires as always active.
pub fn budget_active(budget: &Budget, now: Timestamp) -> bool {
    !matches!(window(budget, now), Window::Closed)
}

/// What one budget allows at `now`: [`UNBOUNDED`] when it is not active, else its `nodes` for the
/// pool; 0 (fail closed, as Karpenter) when its schedule or `nodes` is invalid.
pub fn budget_allowed(budget: &Budget, pool_nodes: usize, now: Timestamp) -> usize {
    match window(budget, now) {
        Window::Closed => UNBOUNDED,
        Window::Invalid(_) => 0,
        Window::Always | Window::Open(_) | Window::NeverFires => {
            budget_nodes(&budget.nodes, pool_nodes).unwrap_or(0)
        }
    }
}

/// The pool's budgets, or the default one when it has none.
fn effective(budgets: &[Budget]) -> std::borrow::Cow<'_, [Budget]> {
    if budgets.is_empty() {
        vec![default_budget()].into()
    } else {
        budgets.into()
    }
}

/// How many of the pool's `pool_nodes` nodes may be disrupted at once for `reason` at `now`: the
/// least of the budgets that are active and apply to the reason, or [`UNBOUNDED`] when none does.
/// A pool without budgets has Karpenter's default of 10%.
pub fn allowed_disruptions(
    budgets: &[Budget],
    reason: DisruptionReason,
    pool_nodes: usize,
    now: Timestamp,
) -> usize {
    effective(budgets)
        .iter()
        .filter(|b| applies_to(b, reason))
        .map(|b| budget_allowed(b, pool_nodes, now))
        .min()
        .unwrap_or(UNBOUNDED)
}

/// What still may start now: allowed minus those already disrupting (in flight) for the pool,
/// floored at 0; [`UNBOUNDED`] when no budget limits the reason.
pub fn remaining(
    budgets: &[Budget],
    reason: DisruptionReason,
    pool_nodes: usize,
    disrupting: usize,
    now: Timestamp,
) -> usize {
    match allowed_disruptions(budgets, reason, pool_nodes, now) {
        UNBOUNDED => UNBOUNDED,
        allowed => allowed.saturating_sub(disrupting),
    }
}

/// The budget that sets [`allowed_disruptions`] (the first of the least), with a sentence saying
/// why, for an Event such as `DisruptionBlocked`, e.g. `budget[1] "0" (schedule "0 9 * * 1-5" for
/// 8h, since 2025-06-02T09:00:00Z) is active: 0 of 12 nodes may be disrupted at once`. `None` when
/// no budget limits the reason. For a pool without budgets the index is 0, the default budget's
/// place once the apiserver has filled it in.
pub fn binding_budget(
    budgets: &[Budget],
    reason: DisruptionReason,
    pool_nodes: usize,
    now: Timestamp,
) -> Option<(usize, String)> {
    let defaulted = budgets.is_empty();
    let budgets = effective(budgets);
    let (index, budget, allowed) = budgets
        .iter()
        .enumerate()
        .filter(|(_, b)| applies_to(b, reason))
        .map(|(i, b)| (i, b, budget_allowed(b, pool_nodes, now)))
        .min_by_key(|&(i, _, allowed)| (allowed, i))?;
    if allowed == UNBOUNDED {
        return None;
    }
    let name = if defaulted {
        format!("the default budget {:?} (the pool has none)", budget.nodes)
    } else {
        format!("budget[{index}] {:?}", budget.nodes)
    };
    let reasons = if budget.reasons.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = budget.reasons.iter().map(|r| format!("{r:?}")).collect();
        format!(" for {}", names.join(", "))
    };
    let limit = format!("{allowed} of {pool_nodes} nodes may be disrupted at once");
    let schedule = budget.schedule.as_deref().unwrap_or_default();
    let duration = budget
        .duration
        .map_or_else(|| "0s".to_owned(), |d| format_go_duration(d.0));
    let text = match window(budget, now) {
        Window::Invalid(why) => {
            format!("{name}{reasons} is invalid ({why}); it fails closed: no node may be disrupted")
        }
        _ if budget_nodes(&budget.nodes, pool_nodes).is_none() => format!(
            "{name}{reasons} is not a count or a percentage; it fails closed: no node may be disrupted"
        ),
        Window::Open(fire) => format!(
            "{name}{reasons} (schedule {schedule:?} for {duration}, since {fire}) is active: {limit}"
        ),
        Window::NeverFires => format!(
            "{name}{reasons} (schedule {schedule:?} never fires, which Karpenter reads as always active) is active: {limit}"
        ),
        Window::Always | Window::Closed => format!("{name}{reasons} is active: {limit}"),
    };
    Some((index, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GoDuration;
    use DisruptionReason::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn always(nodes: &str, reasons: &[DisruptionReason]) -> Budget {
        Budget {
            nodes: nodes.to_owned(),
            schedule: None,
            duration: None,
            reasons: reasons.to_vec(),
        }
    }

    fn scheduled(
        nodes: &str,
        schedule: &str,
        minutes: u64,
        reasons: &[DisruptionReason],
    ) -> Budget {
        Budget {
            schedule: Some(schedule.to_owned()),
            duration: Some(GoDuration(Duration::from_secs(minutes * 60))),
            ..always(nodes, reasons)
        }
    }

    /// Monday 2025-06-02, 10:00 UTC.
    const MONDAY_10: &str = "2025-06-02T10:00:00Z";

    #[test]
    fn percentages_round_up_and_counts_are_as_written() {
        for (nodes, pool, want) in [
            ("10%", 5, Some(1)),
            ("10%", 0, Some(0)),
            ("10%", 10, Some(1)),
            ("10%", 11, Some(2)),
            ("50%", 3, Some(2)),
            ("100%", 7, Some(7)),
            ("0%", 7, Some(0)),
            ("1%", 1, Some(1)),
            ("3", 0, Some(3)),
            ("3", 100, Some(3)),
            ("0", 100, Some(0)),
            ("ten", 10, None),
            ("", 10, None),
            ("%", 10, None),
            ("-1", 10, None),
            ("1.5", 10, None),
            (" 3", 10, None),
        ] {
            assert_eq!(budget_nodes(nodes, pool), want, "{nodes:?} of {pool}");
        }
    }

    #[test]
    fn no_budgets_means_ten_percent() {
        let now = at(MONDAY_10);
        assert_eq!(allowed_disruptions(&[], Drifted, 5, now), 1);
        assert_eq!(allowed_disruptions(&[], Empty, 25, now), 3);
        assert_eq!(allowed_disruptions(&[], Underutilized, 0, now), 0);
        assert_eq!(remaining(&[], Drifted, 25, 2, now), 1);
        assert_eq!(remaining(&[], Drifted, 25, 7, now), 0);
    }

    #[test]
    fn the_least_of_the_active_budgets_that_apply() {
        let now = at(MONDAY_10);
        let budgets = [
            always("5", &[]),
            always("20%", &[]),
            always("1", &[Drifted]),
            always("0", &[Empty, Underutilized]),
        ];
        assert_eq!(allowed_disruptions(&budgets, Drifted, 50, now), 1);
        assert_eq!(allowed_disruptions(&budgets, Empty, 50, now), 0);
        assert_eq!(allowed_disruptions(&budgets[..2], Empty, 50, now), 5);
        assert_eq!(allowed_disruptions(&budgets[..2], Empty, 10, now), 2);
        // Only budgets for other reasons: unbounded for this one.
        let drift_only = [always("2", &[Drifted])];
        assert_eq!(allowed_disruptions(&drift_only, Drifted, 50, now), 2);
        assert_eq!(
            allowed_disruptions(&drift_only, Underutilized, 50, now),
            UNBOUNDED
        );
        assert_eq!(
            remaining(&drift_only, Underutilized, 50, 40, now),
            UNBOUNDED
        );
        assert_eq!(remaining(&drift_only, Drifted, 50, 1, now), 1);
        assert_eq!(remaining(&drift_only, Drifted, 50, 3, now), 0);
    }

    #[test]
    fn a_scheduled_budget_binds_only_inside_its_window() {
        // Business hours on weekdays: no disruption; otherwise 10%.
        let budgets = [
            always("10%", &[]),
            scheduled("0", "0 9 * * mon-fri", 8 * 60, &[]),
        ];
        let allowed = |now: &str| allowed_disruptions(&budgets, Drifted, 30, at(now));
        assert_eq!(allowed("2025-06-02T08:59:59Z"), 3);
        assert_eq!(allowed("2025-06-02T09:00:00Z"), 0);
        assert_eq!(allowed(MONDAY_10), 0);
        assert_eq!(allowed("2025-06-02T16:59:59.999Z"), 0);
        // Exactly `duration` after the fire the window is closed (Karpenter's rule).
        assert_eq!(allowed("2025-06-02T17:00:00Z"), 3);
        // Saturday 2025-06-07.
        assert_eq!(allowed("2025-06-07T10:00:00Z"), 3);
        assert!(budget_active(&budgets[1], at(MONDAY_10)));
        assert!(!budget_active(&budgets[1], at("2025-06-07T10:00:00Z")));
        assert!(budget_active(&budgets[0], at("2025-06-07T10:00:00Z")));
    }

    #[test]
    fn windows_cross_midnight_months_and_years() {
        // 22:00 for 4h: still open at 01:59 the next day, closed at 02:00.
        let night = scheduled("0", "0 22 * * *", 4 * 60, &[]);
        assert!(budget_active(&night, at("2025-06-30T23:00:00Z")));
        assert!(budget_active(&night, at("2025-07-01T01:59:00Z")));
        assert!(!budget_active(&night, at("2025-07-01T02:00:00Z")));
        assert!(!budget_active(&night, at("2025-07-01T21:59:00Z")));
        // New Year's Eve for 48h, across the year.
        let new_year = scheduled("0", "0 12 31 DEC *", 48 * 60, &[]);
        assert!(budget_active(&new_year, at("2026-01-02T11:59:00Z")));
        assert!(!budget_active(&new_year, at("2026-01-02T12:00:00Z")));
        assert!(!budget_active(&new_year, at("2025-12-31T11:59:00Z")));
        // Monthly for a week: open on the 3rd, closed on the 8th.
        let monthly = scheduled("0", "@monthly", 7 * 24 * 60, &[]);
        assert!(budget_active(&monthly, at("2025-03-03T00:00:00Z")));
        assert!(!budget_active(&monthly, at("2025-03-08T00:00:00Z")));
        assert!(!budget_active(&monthly, at("2025-02-28T23:59:00Z")));
        // Weekly (Sunday midnight) for 168h: always open.
        let weekly = scheduled("0", "@weekly", 168 * 60, &[]);
        for now in [
            "2025-06-01T00:00:00Z",
            "2025-06-04T12:00:00Z",
            "2025-06-07T23:59:59Z",
        ] {
            assert!(budget_active(&weekly, at(now)), "{now}");
        }
        // Overlapping fires extend the window: hourly for 90m.
        let hourly = scheduled("0", "@hourly", 90, &[]);
        assert!(budget_active(&hourly, at("2025-06-04T12:59:00Z")));
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // The 1st or any Sunday, for one day. 2025-06-01 is a Sunday; 2025-07-01 a Tuesday.
        let budget = scheduled("0", "0 0 1 * SUN", 24 * 60, &[]);
        assert!(budget_active(&budget, at("2025-06-08T12:00:00Z")));
        assert!(budget_active(&budget, at("2025-07-01T12:00:00Z")));
        assert!(!budget_active(&budget, at("2025-07-02T12:00:00Z")));
        // With the day of the month a star, only Sundays.
        let sundays = scheduled("0", "0 0 * * SUN", 24 * 60, &[]);
        assert!(!budget_active(&sundays, at("2025-07-01T12:00:00Z")));
        assert!(budget_active(&sundays, at("2025-07-06T12:00:00Z")));
    }

    #[test]
    fn reasons_pick_the_scheduled_budgets() {
        // Drift blocked by day (04:00 for 18h), free at night; consolidation always at most 2.
        let budgets = [
            scheduled("0", "0 4 * * *", 18 * 60, &[Drifted]),
            always("2", &[Underutilized, Empty]),
        ];
        let day = at("2025-06-04T12:00:00Z");
        let night = at("2025-06-04T23:00:00Z");
        assert_eq!(allowed_disruptions(&budgets, Drifted, 10, day), 0);
        assert_eq!(allowed_disruptions(&budgets, Drifted, 10, night), UNBOUNDED);
        assert_eq!(allowed_disruptions(&budgets, Empty, 10, day), 2);
        assert_eq!(allowed_disruptions(&budgets, Underutilized, 10, night), 2);
    }

    #[test]
    fn invalid_budgets_fail_closed() {
        let now = at(MONDAY_10);
        // Bad nodes count only when the budget is active.
        assert_eq!(budget_allowed(&always("ten", &[]), 10, now), 0);
        let closed = scheduled("ten", "0 0 * * SAT", 60, &[]);
        assert_eq!(budget_allowed(&closed, 10, now), UNBOUNDED);
        // A schedule that does not parse, or a duration without schedule: 0 whenever it applies.
        let bad = scheduled("5", "0 9 * * 1-7", 60, &[]);
        assert!(budget_active(&bad, now));
        assert_eq!(budget_allowed(&bad, 10, now), 0);
        let no_schedule = Budget {
            schedule: None,
            ..scheduled("5", "@daily", 60, &[])
        };
        assert_eq!(budget_allowed(&no_schedule, 10, now), 0);
        let for_drift = scheduled("5", "61 * * * *", 60, &[Drifted]);
        assert_eq!(allowed_disruptions(&[for_drift], Empty, 10, now), UNBOUNDED);
        // A schedule without duration is never active.
        let no_duration = Budget {
            duration: None,
            ..scheduled("0", "* * * * *", 60, &[])
        };
        assert!(!budget_active(&no_duration, now));
        // A schedule that never fires is always active, as in Karpenter.
        let never = scheduled("1", "0 0 30 2 *", 60, &[]);
        assert!(budget_active(&never, now));
        assert_eq!(budget_allowed(&never, 10, now), 1);
    }

    #[test]
    fn the_binding_budget_says_why() {
        let now = at(MONDAY_10);
        let budgets = [
            always("10%", &[]),
            scheduled("0", "0 9 * * 1-5", 8 * 60, &[]),
            always("0", &[Empty]),
        ];
        assert_eq!(
            binding_budget(&budgets, Drifted, 12, now),
            Some((
                1,
                "budget[1] \"0\" (schedule \"0 9 * * 1-5\" for 8h, since 2025-06-02T09:00:00Z) is active: 0 of 12 nodes may be disrupted at once".to_owned()
            ))
        );
        // Ties go to the first.
        assert_eq!(binding_budget(&budgets, Empty, 12, now).unwrap().0, 1);
        let evening = at("2025-06-02T18:00:00Z");
        assert_eq!(
            binding_budget(&budgets, Drifted, 12, evening),
            Some((
                0,
                "budget[0] \"10%\" is active: 2 of 12 nodes may be disrupted at once".to_owned()
            ))
        );
        assert_eq!(
            binding_budget(&budgets, Empty, 12, evening),
            Some((
                2,
                "budget[2] \"0\" for Empty is active: 0 of 12 nodes may be disrupted at once"
                    .to_owned()
            ))
        );
        assert_eq!(
            binding_budget(&[], Underutilized, 30, now),
            Some((
                0,
                "the default budget \"10%\" (the pool has none) is active: 3 of 30 nodes may be disrupted at once".to_owned()
            ))
        );
        assert_eq!(
            binding_budget(&[always("1", &[Drifted])], Empty, 30, now),
            None
        );
        let bad = [scheduled("5", "*/0 * * * *", 60, &[])];
        assert_eq!(
            binding_budget(&bad, Empty, 30, now),
            Some((
                0,
                "budget[0] \"5\" is invalid (schedule \"*/0 * * * *\": minute field \"*/0\": the step must be a positive number); it fails closed: no node may be disrupted".to_owned()
            ))
        );
        assert_eq!(
            binding_budget(&[always("lots", &[])], Empty, 30, now)
                .unwrap()
                .1,
            "budget[0] \"lots\" is not a count or a percentage; it fails closed: no node may be disrupted"
        );
    }

    #[test]
    fn a_week_long_window_is_checked_quickly() {
        // Asked on Saturday night: the weekly budget's window walks back six days.
        let budgets = [
            always("10%", &[]),
            scheduled("0", "0 0 * * SUN", 168 * 60, &[]),
            scheduled("1", "30 9 1 * *", 168 * 60, &[Drifted]),
        ];
        let now = at("2025-06-07T23:59:00Z");
        let started = std::time::Instant::now();
        for _ in 0..1_000 {
            assert_eq!(allowed_disruptions(&budgets, Drifted, 100, now), 0);
        }
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
