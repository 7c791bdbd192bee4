//! `minValues` on a NodePool requirement: a new node's types (the chosen one and its launch
//! alternatives) must hold at least that many distinct values of the key, so a launch keeps that
//! much choice (e.g. five instance families for spot capacity). As Karpenter does when it
//! truncates a claim's instance types, the cheapest alternatives are kept and, where they fall
//! short, the next cheapest that add a missing value are added; a node whose types cannot meet
//! `minValues` is not launched, and its pods get Karpenter's reason.

use crate::model::catalog::Catalog;
use crate::model::requirements::min_values_met;
use crate::model::{InstanceType, Requirement};

/// Makes `alternatives` (type indices, cheapest first) meet every `minValues` of `requirements`
/// together with the `chosen` type, adding from `rest` (the other fitting types, cheapest first)
/// only types that bring a value not yet held. Returns the reason when even all of them fall short.
pub(super) fn widen(
    catalog: &Catalog,
    requirements: &[Requirement],
    chosen: &str,
    alternatives: &mut Vec<usize>,
    rest: impl Iterator<Item = usize>,
) -> Result<(), String> {
    let chosen = catalog.get(chosen);
    let types = |alternatives: &[usize]| -> Vec<&InstanceType> {
        chosen
            .into_iter()
            .chain(alternatives.iter().map(|&t| &catalog.types[t]))
            .collect()
    };
    let Err(mut unmet) = min_values_met(requirements, types(alternatives)) else {
        return Ok(());
    };
    let rest: Vec<usize> = rest.collect();
    // Not even every fitting type meets it: no need to look for the fewest.
    let every: Vec<usize> = alternatives.iter().chain(&rest).copied().collect();
    if let Err(unmet) = min_values_met(requirements, types(&every)) {
        return Err(unmet.to_string());
    }
    for t in rest {
        alternatives.push(t);
        match min_values_met(requirements, types(alternatives)) {
            Ok(()) => return Ok(()),
            // Keep the type only if it brought a value a short requirement lacked.
            Err(now)
                if now.0.iter().map(|s| s.got).sum::<usize>()
                    > unmet.0.iter().map(|s| s.got).sum::<usize>()
                    || now.0.len() < unmet.0.len() =>
            {
                unmet = now;
            }
            Err(_) => {
                alternatives.pop();
            }
        }
    }
    Err(unmet.to_string())
}
