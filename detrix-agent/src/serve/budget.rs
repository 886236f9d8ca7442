//! The host's CPU budget (`serve --host-cpu-budget`): besides each probe's own budget (each
//! target's agent runs that breaker), every target's probes together may cost at most this
//! fraction of one CPU. When they cost more over a window, the most expensive probes are
//! switched off, dearest first, until the rest fit — the others keep running.
//!
//! Shape: the decision ([`HostBudget::over`]) is pure — costs since the last look in, probes to
//! switch off with the reason out — so it is tested without a kernel; [`super::host`] reads the
//! costs through each target's registry and performs the switch-offs.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

/// The host-wide breaker's memory: each probe's cost at the last look.
#[derive(Debug)]
pub struct HostBudget<K> {
    /// Fraction of one CPU; 0 = no host budget.
    pub budget: f64,
    last: HashMap<K, u64>,
    /// Windows in which the host went over its budget.
    pub trips: u64,
}

impl<K: Clone + Eq + Hash + Ord> HostBudget<K> {
    #[must_use]
    pub fn new(budget: f64) -> Self {
        Self {
            budget,
            last: HashMap::new(),
            trips: 0,
        }
    }

    /// Given every attached probe's cost so far (ns since it was attached), returns the probes
    /// to switch off, dearest first, each with the sentence saying why.
    pub fn over(&mut self, window: Duration, costs: Vec<(K, u64)>) -> Vec<(K, String)> {
        let window_ns = window.as_nanos().max(1) as f64;
        let mut deltas: Vec<(K, u64)> = costs
            .iter()
            .map(|(k, c)| {
                let before = self.last.get(k).copied().unwrap_or(0);
                (k.clone(), c.saturating_sub(before))
            })
            .collect();
        self.last = costs.into_iter().collect();
        if self.budget <= 0.0 {
            return Vec::new();
        }
        let total: u64 = deltas.iter().map(|(_, d)| d).sum();
        let limit = self.budget * window_ns;
        if (total as f64) <= limit {
            return Vec::new();
        }
        self.trips += 1;
        deltas.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut left = total as f64;
        let mut out = Vec::new();
        for (k, d) in deltas {
            if left <= limit {
                break;
            }
            left -= d as f64;
            self.last.remove(&k);
            out.push((
                k,
                format!(
                    "the host's probes cost {:.2}% of a CPU over the last {:.1} s, over the host budget of {:.2}%; this probe cost {:.2}%, the most of those still on",
                    total as f64 / window_ns * 100.0,
                    window_ns / 1e9,
                    self.budget * 100.0,
                    d as f64 / window_ns * 100.0
                ),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(1);

    #[test]
    fn under_budget_nothing_is_switched_off() {
        let mut b = HostBudget::new(0.5);
        assert!(b
            .over(W, vec![(1, 100_000_000), (2, 200_000_000)])
            .is_empty());
        // Cumulative costs: the next window weighs only what was added.
        assert!(b
            .over(W, vec![(1, 300_000_000), (2, 400_000_000)])
            .is_empty());
        assert_eq!(b.trips, 0);
    }

    #[test]
    fn over_budget_the_dearest_go_until_the_rest_fit() {
        let mut b = HostBudget::new(0.5);
        // 0.3 + 0.25 + 0.1 = 0.65 CPU > 0.5: the 0.3 one goes, 0.35 is left.
        let off = b.over(
            W,
            vec![(1, 250_000_000), (2, 300_000_000), (3, 100_000_000)],
        );
        assert_eq!(off.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [2]);
        assert_eq!(
            off[0].1,
            "the host's probes cost 65.00% of a CPU over the last 1.0 s, over the host budget of 50.00%; this probe cost 30.00%, the most of those still on"
        );
        assert_eq!(b.trips, 1);
        // 1.2 CPU next window: the 0.7 one goes, the 0.5 left fits exactly.
        let off = b.over(W, vec![(1, 950_000_000), (3, 600_000_000)]);
        assert_eq!(off.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [1]);
        assert_eq!(b.trips, 2);
    }

    #[test]
    fn zero_budget_is_no_breaker() {
        let mut b = HostBudget::new(0.0);
        assert!(b.over(W, vec![(1, u64::MAX / 2)]).is_empty());
    }
}
