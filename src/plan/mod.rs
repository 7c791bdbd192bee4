//! `nodewright plan`: what would be launched for these manifests, and at what price.
//!
//! Reads manifests ([`manifests`]), mutates their pods as the webhook would, and runs the same
//! solver the provisioner uses ([`crate::scheduling`]) against a catalog, with no cluster.

pub mod consolidate;
pub mod manifests;
pub mod volumes;

use std::fmt::Write as _;

use crate::model::Resources;
use crate::model::resources::MEMORY;
use crate::scheduling::solver::Plan;

pub use crate::scheduling::pools::{kubelet_settings, pools_from_config};

/// The plan as JSON for programs (the documented contract).
pub fn to_json(plan: &Plan) -> String {
    let mut s = serde_json::to_string_pretty(plan).expect("plans serialise");
    s.push('\n');
    s
}

/// The plan as a table for people.
pub fn to_table(plan: &Plan) -> String {
    let mut out = String::new();
    let headers = [
        "NODE",
        "POOL",
        "INSTANCE TYPE",
        "ZONE",
        "CAPACITY",
        "$/HOUR",
        "PODS",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (i, n) in plan.nodes.iter().enumerate() {
        let pods = if n.pods.len() <= 3 {
            n.pods.join(", ")
        } else {
            format!("{}, {} and {} more", n.pods[0], n.pods[1], n.pods.len() - 2)
        };
        rows.push(vec![
            format!("{}", i + 1),
            n.node_pool.clone(),
            n.instance_type.clone(),
            n.zone.clone(),
            n.capacity_type.as_str().to_owned(),
            format!(
                "{:.4}{}",
                n.price_per_hour,
                if n.price_estimated { "*" } else { "" }
            ),
            format!("{} ({})", n.pods.len(), pods),
        ]);
    }
    if rows.is_empty() {
        out.push_str("No new nodes.\n");
    } else {
        out.push_str(&table(&headers, &rows));
    }
    let pods: usize = plan.nodes.iter().map(|n| n.pods.len()).sum();
    let _ = writeln!(
        out,
        "\nTotal: {} new node{} for {} pod{}, {:.4} $/hour{}",
        plan.nodes.len(),
        if plan.nodes.len() == 1 { "" } else { "s" },
        pods,
        if pods == 1 { "" } else { "s" },
        plan.total_price_per_hour,
        if plan.nodes.iter().any(|n| n.price_estimated) {
            " (* estimated price)"
        } else {
            ""
        }
    );
    if !plan.placements.is_empty() {
        let _ = writeln!(out, "{} pods fit on existing nodes.", plan.placements.len());
    }
    if !plan.capacity_splits.is_empty() {
        let _ = writeln!(out, "\nSpot/on-demand split per workload:");
        for w in &plan.capacity_splits {
            let _ = writeln!(
                out,
                "  {}: {} on-demand + {} spot (base {}, then {}% spot{})",
                w.workload,
                w.on_demand,
                w.spot,
                w.on_demand_base,
                w.spot_percent,
                if w.spot_fallback {
                    ", falling back to on-demand"
                } else {
                    ""
                }
            );
        }
    }
    if !plan.unschedulable.is_empty() {
        let _ = writeln!(out, "\nUnschedulable ({}):", plan.unschedulable.len());
        for u in &plan.unschedulable {
            let _ = writeln!(out, "  {}: {}", u.pod, u.reason);
        }
    }
    out
}

/// Columns padded to their widest cell, the last one left ragged; one line per row.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>, out: &mut String| {
        let mut l = String::new();
        let cells: Vec<&str> = cells.collect();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    let mut out = String::new();
    line(&mut headers.iter().copied(), &mut out);
    for r in rows {
        line(&mut r.iter().map(String::as_str), &mut out);
    }
    out
}

/// Memory of a resource vector in GiB, for summaries.
pub fn gib(r: &Resources) -> f64 {
    r.0[MEMORY] as f64 / (1u64 << 30) as f64
}
