use super::*;
use crate::metrics::Metrics;
use crate::policy::split::{Counts, Split};

fn state(workload: &str, on_demand: u32, spot: u32) -> WorkloadState {
    WorkloadState {
        namespace: "shop".into(),
        workload: workload.into(),
        split: Split {
            on_demand_base: 1,
            spot_percent: 100,
            spot_fallback: false,
        },
        counts: Counts { on_demand, spot },
        ..WorkloadState::default()
    }
}

#[test]
fn drift_beyond_one_pod_is_reported_once_and_its_end_too() {
    let registry = Metrics::new();
    let metrics = SplitMetrics::new(&registry);
    let mut monitor = Monitor::default();
    // Within one pod: no event.
    assert!(
        monitor
            .pass(&[state("Deployment/web", 2, 3)], &metrics)
            .is_empty()
    );
    assert_eq!(
        metrics
            .drift
            .with_label_values(&["shop", "Deployment/web"])
            .get(),
        1
    );
    // Three on-demand where one is wanted: one event, not repeated.
    let changes = monitor.pass(&[state("Deployment/web", 3, 2)], &metrics);
    assert!(
        matches!(&changes[..], [DriftChange { change: Change::Drifted, note, .. }] if note == "3 on-demand + 2 spot; its split (1 on-demand, then 100% spot) wants 1 + 4"),
        "{changes:?}"
    );
    assert!(
        monitor
            .pass(&[state("Deployment/web", 3, 3)], &metrics)
            .is_empty()
    );
    let wanted = |ct: &str, kind: &str| {
        metrics
            .pods
            .with_label_values(&["shop", "Deployment/web", ct, kind])
            .get()
    };
    assert_eq!(
        (wanted("on-demand", "actual"), wanted("spot", "actual")),
        (3, 3)
    );
    assert_eq!(
        (wanted("on-demand", "desired"), wanted("spot", "desired")),
        (1, 5)
    );
    // Back within one pod.
    let changes = monitor.pass(&[state("Deployment/web", 1, 3)], &metrics);
    assert!(
        matches!(
            &changes[..],
            [DriftChange {
                change: Change::Restored,
                ..
            }]
        ),
        "{changes:?}"
    );
    // A workload that is gone loses its series.
    monitor.pass(&[], &metrics);
    let text = registry.render();
    assert!(!text.contains("Deployment/web"), "{text}");
}

#[test]
fn a_settled_drift_gets_one_eviction_per_interval_of_the_surplus_type() {
    let metrics = SplitMetrics::new(&Metrics::new());
    let mut monitor = Monitor::default();
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let interval = Some(Duration::from_secs(60));
    let drifted = [state("Deployment/web", 3, 2)];
    // Not before the drift has held for three passes at one size.
    assert!(
        monitor
            .pass_at(&drifted, &metrics, at(0), interval)
            .1
            .is_empty()
    );
    assert!(
        monitor
            .pass_at(&drifted, &metrics, at(5), interval)
            .1
            .is_empty()
    );
    let (_, restores) = monitor.pass_at(&drifted, &metrics, at(10), interval);
    assert_eq!(restores.len(), 1);
    assert_eq!(restores[0].surplus, CapacityType::OnDemand);
    // One per interval.
    assert!(
        monitor
            .pass_at(&drifted, &metrics, at(15), interval)
            .1
            .is_empty()
    );
    assert_eq!(
        monitor
            .pass_at(&drifted, &metrics, at(70), interval)
            .1
            .len(),
        1
    );
    // A workload changing size starts counting again; too few on-demand evicts spot.
    let mut short = state("Deployment/web", 0, 6);
    short.split.on_demand_base = 3;
    let short = [short];
    for s in [80, 85] {
        assert!(
            monitor
                .pass_at(&short, &metrics, at(s), interval)
                .1
                .is_empty()
        );
    }
    let (_, restores) = monitor.pass_at(&short, &metrics, at(140), interval);
    assert_eq!(restores[0].surplus, CapacityType::Spot);
    // Without restore (off, or not the leader) nothing is evicted.
    let mut monitor = Monitor::default();
    for s in 0..10 {
        assert!(
            monitor
                .pass_at(&drifted, &metrics, at(s * 5), None)
                .1
                .is_empty()
        );
    }
}

#[test]
fn pods_that_fell_back_are_reported_and_moved_one_per_interval_when_spot_has_room() {
    let registry = Metrics::new();
    let metrics = SplitMetrics::new(&registry);
    let mut monitor = Monitor::default();
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let interval = Some(Duration::from_secs(60));
    // Within its split (1 + 3), two of its spot pods on on-demand, no spot room.
    let mut s = state("Deployment/web", 1, 3);
    s.split.spot_fallback = true;
    s.fallen_back = 2;
    let (changes, restores) = monitor.pass_at(&[s.clone()], &metrics, at(0), interval);
    assert!(
        matches!(&changes[..], [DriftChange { change: Change::FellBack, note, .. }] if note == "2 of its 3 spot pods run on on-demand nodes (spot fallback): no spot node had room for them when they were scheduled"),
        "{changes:?}"
    );
    assert!(restores.is_empty(), "nowhere to go");
    assert_eq!(
        metrics
            .fallback
            .with_label_values(&["shop", "Deployment/web"])
            .get(),
        2
    );
    // Spot has room: one eviction, then one per interval; no drift needed.
    s.movable = 2;
    let (changes, restores) = monitor.pass_at(&[s.clone()], &metrics, at(5), interval);
    assert!(changes.is_empty(), "{changes:?}");
    assert!(
        matches!(
            &restores[..],
            [Restore {
                fallback: true,
                surplus: CapacityType::OnDemand,
                ..
            }]
        ),
        "{restores:?}"
    );
    assert!(
        monitor
            .pass_at(&[s.clone()], &metrics, at(10), interval)
            .1
            .is_empty()
    );
    assert_eq!(
        monitor
            .pass_at(&[s.clone()], &metrics, at(65), interval)
            .1
            .len(),
        1
    );
    // Without restore, reported only.
    assert!(
        Monitor::default()
            .pass_at(&[s.clone()], &metrics, at(0), None)
            .1
            .is_empty()
    );
    // All back on spot.
    s.fallen_back = 0;
    s.movable = 0;
    let (changes, _) = monitor.pass_at(&[s], &metrics, at(130), interval);
    assert!(
        matches!(
            &changes[..],
            [DriftChange {
                change: Change::BackOnSpot,
                ..
            }]
        ),
        "{changes:?}"
    );
}
