//! Consolidation figures, from one command: `cargo bench --bench consolidate`.
//!
//! 1. **Decision time** at 100 and 1,000 nodes (30–80 % used, five instance types, eight pod
//!    shapes), and at 1,000 packed nodes (85–95 %: few moves, most candidates looked at): one
//!    live pass (first round, budget 10 %) and the whole plan (every round), with the
//!    simulations each ran. `CONSOLIDATE_BENCH=decisions` stops there.
//! 2. **A simulated week** (10-minute steps) of 24 Deployments whose replicas follow the day
//!    (±30–80 %, shifted peaks, noise; the ReplicaSet removes random pods on scale-down), with
//!    the planner launching for pending pods and empty nodes removed, under three policies:
//!    no consolidation of underused nodes, consolidation without thresholds (Karpenter's: any
//!    saving), and nodewright's defaults (minimum saving $0.01/h and 10 %, $0.002/h per evicted
//!    pod, no move the next pass would consolidate again, a 30-minute stabilization window),
//!    with the thresholds alone and with a one-hour window beside. Printed: the bill, moves,
//!    evictions, node launches.
//!
//! Without `--bench` (`cargo test --all-targets` runs it so) it is a smoke run: 40 nodes and half
//! a simulated day, with the checks that must hold (thresholds never evict more than no
//! thresholds, consolidation never costs more than none).

#[allow(dead_code)]
mod sim;

use std::time::Instant;

use nodewright::cloud::catalog::embedded;
use nodewright::plan::pools_from_config;
use nodewright::scheduling::consolidation::{Settings, World, plan};
use sim::{Outcome, Policy, Rng, Sim};

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let config = sim::config();
    let catalog = embedded("us-east-1", &config.policy.pricing).expect("catalog");
    let pools = pools_from_config(&config, &[]);
    let mut rng = Rng::new(7);
    let workloads = sim::workloads(&mut rng, 24);
    let sim = Sim {
        catalog: &catalog,
        pools: &pools,
        workloads: &workloads,
        step_minutes: 10.0,
        seed: 42,
    };

    println!("## Decision time\n");
    println!(
        "| nodes | use | pods | first round: moves / ms / simulations | whole plan: moves / rounds / ms / simulations |"
    );
    println!("| ---: | --- | ---: | --- | --- |");
    let sizes: &[(usize, (f64, f64))] = if measuring {
        &[
            (100, (0.3, 0.8)),
            (1_000, (0.3, 0.8)),
            (1_000, (0.85, 0.95)),
        ]
    } else {
        &[(40, (0.3, 0.8)), (40, (0.85, 0.95))]
    };
    for &(n, use_) in sizes {
        let (nodes, candidates) = sim::cluster(&sim, &mut Rng::new(n as u64), n, use_);
        let pods: usize = candidates.iter().map(|c| c.pods.len()).sum();
        let budget = n.div_ceil(10);
        let world = World {
            nodes,
            candidates,
            pending: Vec::new(),
            pools: &pools,
            catalog: &catalog,
            budgets: [(sim::POOL.to_owned(), budget)].into(),
            budget_limits: [(sim::POOL.to_owned(), budget)].into(),
            reserve: Default::default(),
        };
        let settings = Settings::default();
        let started = Instant::now();
        let first = plan(&world, &settings, 1);
        let first_ms = started.elapsed().as_secs_f64() * 1e3;
        let started = Instant::now();
        let all = plan(&world, &settings, usize::MAX);
        let all_ms = started.elapsed().as_secs_f64() * 1e3;
        let rounds = all.moves.iter().map(|m| m.round).max().unwrap_or(0);
        println!(
            "| {n} | {:.0}-{:.0} % | {pods} | {} / {first_ms:.0} / {} | {} / {rounds} / {all_ms:.0} / {} |",
            use_.0 * 100.0,
            use_.1 * 100.0,
            first.moves.len(),
            first.simulations,
            all.moves.len(),
            all.simulations
        );
        if use_.1 < 0.85 {
            assert!(!first.moves.is_empty(), "a half-used cluster has moves");
        }
    }
    // CONSOLIDATE_BENCH=decisions: the decision times only.
    if std::env::var("CONSOLIDATE_BENCH").as_deref() == Ok("decisions") {
        return;
    }

    let (steps, label) = if measuring {
        (7 * 24 * 6, "week")
    } else {
        (12 * 6, "half day")
    };
    println!("\n## A simulated {label} ({steps} steps of 10 minutes)\n");
    let none = sim.run(steps, None);
    let run =
        |settings: Settings, window: usize| sim.run(steps, Some(&Policy { settings, window }));
    let loose = run(Settings::no_threshold(), 0);
    let ours = run(Settings::default(), 3);
    // The variants only when measuring: the smoke run keeps to what its checks need.
    let variants = measuring.then(|| (run(Settings::default(), 0), run(Settings::default(), 6)));
    println!(
        "| policy | bill $ | saved vs none | moves (delete/replace) | evictions | $ saved per eviction | node launches | mean nodes | decision ms (mean) |"
    );
    println!("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    let row = |name: &str, o: &Outcome| {
        let saved = none.dollars - o.dollars;
        let per = if o.evictions > 0 {
            format!("{:.3}", saved / o.evictions as f64)
        } else {
            "-".into()
        };
        println!(
            "| {name} | {:.2} | {saved:.2} ({:.1} %) | {} ({}/{}) | {} | {per} | {} | {:.1} | {} |",
            o.dollars,
            100.0 * saved / none.dollars,
            o.moves,
            o.deletes,
            o.replaces,
            o.evictions,
            o.launched,
            o.node_steps as f64 / steps as f64,
            if o.decisions > 0 {
                format!("{:.1}", 1e3 * o.decide_secs / o.decisions as f64)
            } else {
                "-".into()
            }
        );
    };
    row("empty nodes only", &none);
    row("every saving (Karpenter)", &loose);
    if let Some((thresholds, _)) = &variants {
        row("thresholds, no window", thresholds);
    }
    row("nodewright defaults (thresholds, 30 min window)", &ours);
    if let Some((_, hour)) = &variants {
        row("thresholds, 1 h window", hour);
    }
    assert!(
        ours.dollars <= none.dollars + 1e-6,
        "consolidation costs more than none"
    );
    assert!(
        ours.evictions <= loose.evictions,
        "thresholds evicted more ({}) than none ({})",
        ours.evictions,
        loose.evictions
    );
}
