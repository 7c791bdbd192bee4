//! `nodewright consolidate`: the consolidation plan for a cluster or a snapshot of one, move by
//! move, as a table for people or JSON for programs. Changes nothing.

use std::fmt::Write as _;

use serde::Serialize;

use crate::scheduling::consolidation::{Report, Settings};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Output<'a> {
    settings: &'a Settings,
    #[serde(flatten)]
    report: &'a Report,
    evictions: usize,
}

/// The report as JSON (the documented contract).
pub fn to_json(report: &Report, settings: &Settings) -> String {
    let out = Output {
        settings,
        report,
        evictions: report.evictions(),
    };
    let mut s = serde_json::to_string_pretty(&out).expect("reports serialise");
    s.push('\n');
    s
}

fn list(items: &[String], max: usize) -> String {
    if items.len() <= max {
        items.join(", ")
    } else {
        format!("{} and {} more", items[..max].join(", "), items.len() - max)
    }
}

/// The report as tables for people: the moves, then the nodes that stay and why.
pub fn to_table(report: &Report) -> String {
    let mut out = String::new();
    if report.moves.is_empty() {
        out.push_str("No consolidation move.\n");
    } else {
        let rows: Vec<Vec<String>> = report
            .moves
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let nodes: Vec<String> = m
                    .nodes
                    .iter()
                    .map(|n| {
                        format!(
                            "{} ({} {}, {:.4})",
                            n.node,
                            n.instance_type,
                            n.capacity_type.as_str(),
                            n.price_per_hour
                        )
                    })
                    .collect();
                vec![
                    (i + 1).to_string(),
                    m.round.to_string(),
                    m.method.as_str().to_owned(),
                    list(&nodes, 3),
                    m.replacement.as_ref().map_or("-".to_owned(), |r| {
                        format!(
                            "{} {} {} ({:.4})",
                            r.instance_type,
                            r.capacity_type.as_str(),
                            r.zone,
                            r.price_per_hour
                        )
                    }),
                    format!("{:.4}", m.saving_per_hour),
                    format!("{:.4}", m.net_saving_per_hour),
                    format!("{} ({})", m.evicted.len(), list(&m.evicted, 2)),
                ]
            })
            .collect();
        out.push_str(&super::table(
            &[
                "MOVE",
                "ROUND",
                "METHOD",
                "NODES ($/HOUR)",
                "REPLACEMENT ($/HOUR)",
                "SAVES $/HOUR",
                "NET",
                "EVICTS",
            ],
            &rows,
        ));
    }
    let share = if report.price_before > 0.0 {
        100.0 * report.saving_per_hour / report.price_before
    } else {
        0.0
    };
    let _ = writeln!(
        out,
        "\nSaves {:.4} $/hour of {:.4} $/hour ({share:.1}%) with {} move{} evicting {} pod{}.",
        report.saving_per_hour,
        report.price_before,
        report.moves.len(),
        if report.moves.len() == 1 { "" } else { "s" },
        report.evictions(),
        if report.evictions() == 1 { "" } else { "s" },
    );
    if !report.kept.is_empty() {
        let rows: Vec<Vec<String>> = report
            .kept
            .iter()
            .map(|k| {
                vec![
                    k.node.clone(),
                    k.node_pool.clone(),
                    format!("{:.4}", k.price_per_hour),
                    k.kind.as_str().to_owned(),
                    k.reason.clone(),
                ]
            })
            .collect();
        let _ = writeln!(out, "\nStays ({}):", report.kept.len());
        out.push_str(&super::table(
            &["NODE", "POOL", "$/HOUR", "BLOCKED BY", "WHY"],
            &rows,
        ));
    }
    out
}
