//! The race's table: percentiles, ratios and the machine it ran on.

use super::*;

pub(super) fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

pub(super) fn fmt_s(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1} s")).unwrap_or_else(|| "-".into())
}

// ---------------------------------------------------------------------------------------------
// The race: each side in a child process of its own (a fresh control plane), then the table.

pub(super) fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "?".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    format!(
        "{} cores ({model}), load average {load} at the start",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    )
}

pub(super) fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

pub(super) fn print_table(knobs: &Knobs, outcomes: &[Outcome], machine: &str) {
    let deployments = workload(knobs);
    println!();
    println!(
        "race: {} pods in {} Deployments (5 constraint kinds x {}), {} on-demand types x 3 zones at nodewright's us-east-1 prices, batch idle 1 s / max 10 s on both sides",
        knobs.pods,
        deployments.len(),
        knobs.per_kind,
        knobs.types.len()
    );
    println!("machine: {machine}");
    println!(
        "{:<22} {:>6} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>9} {:>8}",
        "side", "bound", "p50", "p99", "max", "last", "claims", "nodes", "$/h", "cpu"
    );
    for o in outcomes {
        println!(
            "{:<22} {:>6} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>9.3} {:>8}",
            format!(
                "{}{}",
                o.side,
                if o.timed_out { " (timed out)" } else { "" }
            ),
            o.bound,
            fmt_s(percentile(&o.latencies, 0.5)),
            fmt_s(percentile(&o.latencies, 0.99)),
            fmt_s(o.latencies.last().copied()),
            format!("{:.1} s", o.wall_s),
            o.claims,
            o.nodes,
            o.usd_per_hour,
            format!("{:.1} s", o.provisioner_cpu_s),
        );
    }
    let karpenter = outcomes.iter().find(|o| o.side == "karpenter");
    let nodewright = outcomes.iter().find(|o| o.side == "nodewright");
    if let (Some(k), Some(n)) = (karpenter, nodewright) {
        println!(
            "{:<22} {:>6} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>9} {:>8}",
            "nodewright/karpenter",
            "",
            ratio(percentile(&n.latencies, 0.5), percentile(&k.latencies, 0.5)),
            ratio(
                percentile(&n.latencies, 0.99),
                percentile(&k.latencies, 0.99)
            ),
            ratio(n.latencies.last().copied(), k.latencies.last().copied()),
            ratio(Some(n.wall_s), Some(k.wall_s)),
            ratio(Some(n.claims as f64), Some(k.claims as f64)),
            ratio(Some(n.nodes as f64), Some(k.nodes as f64)),
            ratio(Some(n.usd_per_hour), Some(k.usd_per_hour)),
            ratio(Some(n.provisioner_cpu_s), Some(k.provisioner_cpu_s)),
        );
        if n.bound < n.pods || k.bound < k.pods {
            println!(
                "WARNING: not every pod was bound (karpenter {}, nodewright {} of {}): the unbound pods are missing from the percentiles, and their nodes from nodes and $/h",
                k.bound, n.bound, n.pods
            );
        }
    }
    for o in outcomes.iter().filter(|o| o.pods > 0 && !o.answering) {
        println!(
            "WARNING: {}'s provisioner did not answer its /healthz at the end (hung?): see its section above",
            o.side
        );
    }
    println!(
        "(p50/p99/max: each pod's creation -> bound, as a pod watch saw them; last: first Deployment created -> last pod bound; claims: NodeClaims, priced at the shared table for $/h; cpu: CPU seconds of the provisioner process, karpenter or nodewright serve, over the run; ratios below 1 favour nodewright)"
    );
}
