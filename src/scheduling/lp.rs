//! The fractional lower bound of a packing, and the resource prices (LP duals) that guide the
//! solver: the cheapest mix of instance types, allowed in any fraction, whose allocatable covers
//! a demand vector.
//!
//! Solved as its dual, `max D·y subject to A_t·y ≤ price_t for every type t, y ≥ 0`, whose
//! optimum `y` prices one unit of each resource (a cpu core, a GiB, a pod slot). A node's fill is
//! then worth `y·used`, which never exceeds its price; `y·used / price` is how close to the bound
//! the node is.

use microlp::{ComparisonOp, OptimizationDirection, Problem};

use crate::model::resources::{CPU, DIMS, EPHEMERAL, MEMORY, Resources};

/// Units the LP works in (cores, GiB, GiB, and whole pods and devices) so its coefficients are of
/// similar size.
pub(crate) const SCALE: [f64; DIMS] = {
    let mut scale = [1.0; DIMS];
    scale[CPU] = 1000.0;
    scale[MEMORY] = 1073741824.0;
    scale[EPHEMERAL] = 1073741824.0;
    scale
};

/// The LP's answer: per-unit resource prices (per raw unit: millicore, byte, pod) and the bound.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Duals {
    pub y: [f64; DIMS],
    /// USD per hour of the cheapest fractional mix (= D·y at the optimum).
    pub bound: f64,
}

impl Duals {
    /// What `r` is worth at these prices, USD per hour.
    #[inline]
    pub fn value(&self, r: &Resources) -> f64 {
        let mut v = 0.0;
        for d in 0..DIMS {
            v += self.y[d] * r.0[d] as f64;
        }
        v
    }
}

/// Solves the bound for `demand` over `offers` (allocatable, USD per hour). `None` when some
/// demanded resource is offered by no type, or the LP solver fails.
pub fn solve(demand: &Resources, offers: &[(Resources, f64)]) -> Option<Duals> {
    let dims: Vec<usize> = (0..DIMS).filter(|d| demand.0[*d] > 0).collect();
    if dims.is_empty() {
        return Some(Duals {
            y: [0.0; DIMS],
            bound: 0.0,
        });
    }
    for &d in &dims {
        if !offers.iter().any(|(a, _)| a.0[d] > 0) {
            return None;
        }
    }
    let mut problem = Problem::new(OptimizationDirection::Maximize);
    let vars: Vec<_> = dims
        .iter()
        .map(|&d| problem.add_var(demand.0[d] as f64 / SCALE[d], (0.0, f64::INFINITY)))
        .collect();
    for (alloc, price) in undominated(&dims, offers).into_iter().map(|i| &offers[i]) {
        let expr: Vec<_> = dims
            .iter()
            .zip(&vars)
            .filter(|(d, _)| alloc.0[**d] > 0)
            .map(|(&d, v)| (*v, alloc.0[d] as f64 / SCALE[d]))
            .collect();
        if !expr.is_empty() {
            problem.add_constraint(expr.as_slice(), ComparisonOp::Le, *price);
        }
    }
    let solution = problem.solve().ok()?.into_solution().ok()?;
    let mut y = [0.0; DIMS];
    for (&d, v) in dims.iter().zip(&vars) {
        y[d] = solution.var_value(*v).max(0.0) / SCALE[d];
    }
    Some(Duals {
        y,
        bound: solution.objective(),
    })
}

/// Indices (ascending) of the offers whose constraints can bind. An offer that another matches or
/// beats per dollar on every demanded resource adds nothing: with `y ≥ 0`, `A_u·y ≤ p_u` and
/// `A_t/p_t ≤ A_u/p_u` imply `A_t·y ≤ p_t`. Of equal offers the first is kept. The feasible region,
/// hence the bound, is unchanged, and the simplex works on the few dozen types of the efficient
/// front instead of the whole catalog. Offers without a positive price are always kept.
fn undominated(dims: &[usize], offers: &[(Resources, f64)]) -> Vec<usize> {
    let per_dollar = |i: usize, d: usize| offers[i].0.0[d] as f64 / offers[i].1;
    let (mut ranked, mut kept): (Vec<usize>, Vec<usize>) =
        (0..offers.len()).partition(|i| offers[*i].1 > 0.0 && offers[*i].1.is_finite());
    // Lexicographically best first: an offer's dominators all come before it.
    ranked.sort_by(|a, b| {
        dims.iter()
            .map(|&d| per_dollar(*b, d).total_cmp(&per_dollar(*a, d)))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(b))
    });
    let mut front: Vec<usize> = Vec::new();
    for t in ranked {
        let dominated = front
            .iter()
            .any(|&u| dims.iter().all(|&d| per_dollar(u, d) >= per_dollar(t, d)));
        if !dominated {
            front.push(t);
        }
    }
    kept.extend(front);
    kept.sort_unstable();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resources::{CPU, MEMORY};

    fn res(cpu: i64, gib: i64) -> Resources {
        let mut r = Resources::ZERO;
        r.0[CPU] = cpu;
        r.0[MEMORY] = gib << 30;
        r
    }

    #[test]
    fn bound_mixes_types_to_match_the_demand_ratio() {
        // c: 4 cores 8 GiB $0.17; m: 4 cores 16 GiB $0.192; r: 4 cores 32 GiB $0.252
        let offers = [
            (res(4000, 8), 0.17),
            (res(4000, 16), 0.192),
            (res(4000, 32), 0.252),
        ];
        // 100 cores, 300 GiB: 12.5 c + 12.5 m = 4.525 $/h (m alone would need 25 nodes = 4.8)
        let d = solve(&res(100_000, 300), &offers).unwrap();
        assert!((d.bound - 4.525).abs() < 1e-6, "{}", d.bound);
        assert!((d.value(&res(100_000, 300)) - 4.525).abs() < 1e-6);
        for (a, p) in &offers {
            assert!(d.value(a) <= p + 1e-9, "dual feasibility");
        }
    }

    #[test]
    fn dominated_offers_are_dropped_and_the_bound_kept() {
        let offers = [
            (res(4000, 8), 0.17),
            (res(2000, 4), 0.10), // half a c at more than half the price: dominated
            (res(4000, 16), 0.192), // m
            (res(4000, 32), 0.252), // r
            (res(4000, 8), 0.17), // the same as the first: only the first is kept
            (res(8000, 16), 0.34), // two c for twice the price: equal per dollar, dropped
            (res(1000, 64), 0.5), // memory-rich at a price no mix beats per GiB: kept
            (res(0, 4), 0.0),     // no price: kept as it is
        ];
        let dims = [CPU, MEMORY];
        assert_eq!(undominated(&dims, &offers), vec![0, 2, 3, 6, 7]);
        // On cpu alone, every type with the best cores per dollar is equal: the first stays.
        assert_eq!(undominated(&[CPU], &offers[..4]), vec![0]);
        let demand = res(100_000, 300);
        let all = solve(&demand, &offers[..7]).unwrap();
        let front: Vec<_> = [0, 2, 3, 6].iter().map(|i| offers[*i]).collect();
        let bound = solve(&demand, &front).unwrap();
        assert!((all.bound - 4.525).abs() < 1e-6, "{}", all.bound);
        assert!((all.bound - bound.bound).abs() < 1e-9);
        for d in 0..DIMS {
            assert!((all.y[d] - bound.y[d]).abs() <= 1e-12 * all.y[d].abs().max(1e-12));
        }
    }

    #[test]
    fn unoffered_resources_have_no_bound() {
        let mut gpu = res(1000, 1);
        gpu.0[4] = 1;
        assert!(solve(&gpu, &[(res(4000, 8), 0.17)]).is_none());
        assert_eq!(solve(&Resources::ZERO, &[]).unwrap().bound, 0.0);
    }
}
