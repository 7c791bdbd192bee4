//! `nodewright plan`: what would be launched for these manifests, and at what price.
//!
//! Reads manifests ([`manifests`]), mutates their pods as the webhook would, and runs the same
//! solver the provisioner uses ([`crate::scheduling`]) against a catalog, with no cluster.

pub mod manifests;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::core::v1::Pod;

use crate::config::{Config, EC2NodeClass, NodePool};
use crate::model::catalog::{KubeletSettings, labels, reservation_slot};
use crate::model::resources::{MEMORY, parse_quantity, parse_quantity_millis};
use crate::model::{Operator, Requirement, Resources};
use crate::scheduling::pod::PendingPod;
use crate::scheduling::solver::{Limits, Plan, Pool, untolerated};

/// The solver's view of every NodePool in `config`. DaemonSet pods that would run on a pool's
/// nodes add their requests to its per-node overhead.
pub fn pools_from_config(config: &Config, daemonsets: &[Pod]) -> Vec<Pool> {
    let daemons: Vec<PendingPod> = daemonsets.iter().map(PendingPod::from_pod).collect();
    config
        .node_pools
        .values()
        .map(|pool| pool_from(pool, config.node_class_of(pool), &daemons))
        .collect()
}

fn pool_from(pool: &NodePool, class: Option<&EC2NodeClass>, daemons: &[PendingPod]) -> Pool {
    let spec = &pool.spec;
    let template_labels = pool.template_labels().cloned().unwrap_or_default();
    let mut limits = Limits::default();
    for (name, q) in &spec.limits {
        match name.as_str() {
            "cpu" => limits.cpu_millis = parse_quantity_millis(&q.0),
            "memory" => limits.memory_bytes = parse_quantity(&q.0),
            "nodes" => limits.nodes = parse_quantity(&q.0),
            _ => {}
        }
    }
    let mut out = Pool {
        name: pool.name().to_owned(),
        weight: spec.weight.unwrap_or(0),
        requirements: spec.template.spec.requirements.clone(),
        labels: template_labels,
        taints: spec.template.spec.taints.clone(),
        kubelet: class.map(kubelet_settings).unwrap_or_default(),
        daemon_overhead: Resources::ZERO,
        limits,
        in_use: Default::default(),
    };
    // Node labels every node of the pool has, for DaemonSet node selectors.
    let mut node_labels: BTreeMap<String, String> = out.labels.clone();
    node_labels.insert(labels::NODEPOOL.to_owned(), out.name.clone());
    node_labels.insert(labels::OS.to_owned(), "linux".to_owned());
    for r in &out.requirements {
        if r.operator == Operator::In && r.values.len() == 1 {
            node_labels.insert(r.key.clone(), r.values[0].clone());
        }
    }
    for d in daemons {
        if d.invalid.is_some() || untolerated(&out.taints, &d.constraints).is_some() {
            continue;
        }
        let ok = |r: &Requirement| {
            // Labels decided per instance (type, zone, capacity type) could go either way: count
            // the DaemonSet unless the pool's own labels rule it out.
            match node_labels.get(&r.key) {
                Some(v) => r.allows(Some(v)),
                None => {
                    labels::is_instance_label(&r.key)
                        || labels::is_offering_label(&r.key)
                        || r.allows(None)
                }
            }
        };
        let c = &d.constraints;
        let runs = c.node_selector.iter().all(ok)
            && (c.node_affinity.is_empty() || c.node_affinity.iter().any(|t| t.iter().all(ok)));
        if runs {
            let mut r = d.requests;
            r.0[crate::model::resources::PODS] = 1;
            out.daemon_overhead += r;
        }
    }
    out
}

/// Allocatable-relevant settings of an EC2NodeClass.
pub fn kubelet_settings(class: &EC2NodeClass) -> KubeletSettings {
    let mut k = KubeletSettings::default();
    if let Some(kubelet) = &class.spec.kubelet {
        k.max_pods = kubelet.max_pods.and_then(|v| u32::try_from(v).ok());
        k.pods_per_core = kubelet.pods_per_core.and_then(|v| u32::try_from(v).ok());
        let read =
            |map: &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
                map.iter()
                    .filter_map(|(name, q)| {
                        let slot = reservation_slot(name)?;
                        let v = if slot == crate::model::resources::CPU {
                            parse_quantity_millis(&q.0)
                        } else {
                            parse_quantity(&q.0)
                        }?;
                        Some((slot, v))
                    })
                    .collect()
            };
        k.kube_reserved = read(&kubelet.kube_reserved);
        k.system_reserved = read(&kubelet.system_reserved);
        k.eviction_memory = kubelet
            .eviction_hard
            .get("memory.available")
            .and_then(|v| parse_quantity(v));
    }
    let root = class
        .spec
        .block_device_mappings
        .iter()
        .find(|m| m.root_volume)
        .or(class.spec.block_device_mappings.first());
    k.root_volume_bytes = root
        .and_then(|m| m.ebs.as_ref())
        .and_then(|e| e.volume_size.as_ref())
        .and_then(|q| parse_quantity(&q.0));
    k
}

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
    let mut rows: Vec<[String; 7]> = Vec::new();
    for (i, n) in plan.nodes.iter().enumerate() {
        let pods = if n.pods.len() <= 3 {
            n.pods.join(", ")
        } else {
            format!("{}, {} and {} more", n.pods[0], n.pods[1], n.pods.len() - 2)
        };
        rows.push([
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
    let mut widths = headers.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ", w = widths[i]);
            }
        }
        l.trim_end().to_owned()
    };
    if rows.is_empty() {
        out.push_str("No new nodes.\n");
    } else {
        out.push_str(&line(&headers.map(str::to_owned)));
        out.push('\n');
        for r in &rows {
            out.push_str(&line(r));
            out.push('\n');
        }
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
    if !plan.unschedulable.is_empty() {
        let _ = writeln!(out, "\nUnschedulable ({}):", plan.unschedulable.len());
        for u in &plan.unschedulable {
            let _ = writeln!(out, "  {}: {}", u.pod, u.reason);
        }
    }
    out
}

/// Memory of a resource vector in GiB, for summaries.
pub fn gib(r: &Resources) -> f64 {
    r.0[MEMORY] as f64 / (1u64 << 30) as f64
}
