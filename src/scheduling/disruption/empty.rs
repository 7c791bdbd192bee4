//! Empty nodes (Karpenter's emptiness consolidation): a node of a pool that consolidates empty
//! nodes (`WhenEmpty`, `WhenEmptyOrUnderutilized`, `Balanced`) whose only pods are DaemonSet,
//! mirror or finished pods, and that has been so, and registered, for `consolidateAfter`.

use std::time::Duration;

use crate::config::{Disruption, DurationOrNever};

/// A node as the emptiness check sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeUse {
    pub name: String,
    pub claim: String,
    pub price_per_hour: f64,
    /// Pods that hold the node (not DaemonSet, mirror or finished).
    pub pods: usize,
    /// The node, or a pod on it, is annotated `karpenter.sh/do-not-disrupt: "true"`.
    pub do_not_disrupt: bool,
    /// Capacity on it is promised to pods planned onto it but not bound yet.
    pub promised: bool,
    /// Since its last pod arrived or left, or since it registered, whichever is later.
    pub idle_for: Duration,
    /// Its startup taints are not all gone yet (not initialized).
    pub initializing: bool,
    /// It was launched for the pods of a node being drained, which have not all arrived yet.
    pub replacing: bool,
}

/// How long a node must have been empty before it goes, `None` when the pool keeps empty nodes.
pub fn empty_after(disruption: &Disruption) -> Option<Duration> {
    match disruption.consolidate_after {
        Some(DurationOrNever::After(d)) => Some(d),
        // The CRD requires the field; a config without it has the CRD default (0s).
        None => Some(Duration::ZERO),
        Some(DurationOrNever::Never) => None,
    }
}

/// Why an empty-looking node is kept, or that it may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emptiness {
    Empty,
    HasPods,
    DoNotDisrupt,
    Promised,
    Initializing,
    Replacing,
    /// Empty, but not for `consolidateAfter` yet; the time left.
    NotYet(Duration),
}

pub fn emptiness(node: &NodeUse, after: Duration) -> Emptiness {
    if node.pods > 0 {
        Emptiness::HasPods
    } else if node.do_not_disrupt {
        Emptiness::DoNotDisrupt
    } else if node.promised {
        Emptiness::Promised
    } else if node.initializing {
        Emptiness::Initializing
    } else if node.replacing {
        Emptiness::Replacing
    } else if node.idle_for < after {
        Emptiness::NotYet(after - node.idle_for)
    } else {
        Emptiness::Empty
    }
}

/// The empty nodes, the dearest first (the most saved per node removed), then by name.
pub fn empty_nodes(nodes: &[NodeUse], after: Duration) -> Vec<&NodeUse> {
    let mut out: Vec<&NodeUse> = nodes
        .iter()
        .filter(|n| emptiness(n, after) == Emptiness::Empty)
        .collect();
    out.sort_by(|a, b| {
        b.price_per_hour
            .total_cmp(&a.price_per_hour)
            .then_with(|| a.name.cmp(&b.name))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, price: f64, idle: u64) -> NodeUse {
        NodeUse {
            name: name.into(),
            claim: format!("c-{name}"),
            price_per_hour: price,
            pods: 0,
            do_not_disrupt: false,
            promised: false,
            idle_for: Duration::from_secs(idle),
            initializing: false,
            replacing: false,
        }
    }

    #[test]
    fn only_nodes_empty_for_consolidate_after_go_dearest_first() {
        let after = Duration::from_secs(30);
        let mut busy = node("busy", 9.0, 100);
        busy.pods = 1;
        let mut held = node("held", 9.0, 100);
        held.do_not_disrupt = true;
        let mut promised = node("promised", 9.0, 100);
        promised.promised = true;
        let mut starting = node("starting", 9.0, 100);
        starting.initializing = true;
        let mut replacement = node("replacement", 9.0, 100);
        replacement.replacing = true;
        let nodes = vec![
            node("cheap", 0.1, 31),
            node("dear", 1.0, 30),
            node("young", 5.0, 29),
            busy.clone(),
            held.clone(),
            promised.clone(),
            starting.clone(),
            replacement.clone(),
            node("also-dear", 1.0, 300),
        ];
        let names: Vec<&str> = empty_nodes(&nodes, after)
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(names, ["also-dear", "dear", "cheap"]);
        assert_eq!(emptiness(&busy, after), Emptiness::HasPods);
        assert_eq!(emptiness(&held, after), Emptiness::DoNotDisrupt);
        assert_eq!(emptiness(&promised, after), Emptiness::Promised);
        assert_eq!(emptiness(&starting, after), Emptiness::Initializing);
        assert_eq!(emptiness(&replacement, after), Emptiness::Replacing);
        assert_eq!(
            emptiness(&node("young", 5.0, 29), after),
            Emptiness::NotYet(Duration::from_secs(1))
        );
    }

    #[test]
    fn consolidate_after_never_keeps_empty_nodes() {
        let mut d = Disruption::crd_default();
        assert_eq!(empty_after(&d), Some(Duration::ZERO));
        d.consolidate_after = Some(DurationOrNever::Never);
        assert_eq!(empty_after(&d), None);
        d.consolidate_after = Some(DurationOrNever::After(Duration::from_secs(60)));
        assert_eq!(empty_after(&d), Some(Duration::from_secs(60)));
    }
}
