//! `GET /metrics` of the host control plane, in the Prometheus text exposition format
//! (version 0.0.4): discovery events, targets by state, and how long a selected process took
//! from its exec to being a target (a histogram). Per-probe engine counters are not here yet:
//! they live inside each target's agent, which does not publish them.

use std::fmt::Write as _;

/// Upper bounds (seconds) of the exec → target histogram.
pub const LATENCY_BUCKETS: [f64; 9] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// Exec → target latencies, as a Prometheus histogram.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Count per bucket of [`LATENCY_BUCKETS`] (not cumulative), then the overflow.
    counts: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
    max: f64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += seconds;
        self.count += 1;
        self.max = self.max.max(seconds);
    }

    #[must_use]
    pub fn count(&self) -> u64 {
        self.count
    }

    #[must_use]
    pub fn max(&self) -> f64 {
        self.max
    }
}

/// What `/metrics` shows.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub processes_started: u64,
    pub processes_exited: u64,
    pub targets_found: u64,
    pub targets_by_state: Vec<(String, u64)>,
    pub latency: Histogram,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders `s` in the text exposition format.
#[must_use]
pub fn render(s: &Snapshot) -> String {
    let mut o = String::new();
    let counter = |o: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    };
    counter(
        &mut o,
        "detrix_serve_process_starts_total",
        "Processes seen starting (exec events and scans).",
        s.processes_started,
    );
    counter(
        &mut o,
        "detrix_serve_process_exits_total",
        "Seen processes that exited.",
        s.processes_exited,
    );
    counter(
        &mut o,
        "detrix_serve_targets_found_total",
        "Processes a rule selected.",
        s.targets_found,
    );
    let _ = writeln!(
        o,
        "# HELP detrix_serve_targets Targets now, by state.\n# TYPE detrix_serve_targets gauge"
    );
    for state in [
        "starting", "sleeping", "waking", "awake", "failed", "exited",
    ] {
        let v = s
            .targets_by_state
            .iter()
            .find(|(k, _)| k == state)
            .map_or(0, |(_, v)| *v);
        let _ = writeln!(o, "detrix_serve_targets{{state=\"{}\"}} {v}", escape(state));
    }
    let name = "detrix_serve_exec_to_target_seconds";
    let _ = writeln!(
        o,
        "# HELP {name} From a selected process's exec to its target existing.\n# TYPE {name} histogram"
    );
    let mut cumulative = 0;
    for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += s.latency.counts[i];
        let _ = writeln!(o, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
    }
    let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {}", s.latency.count);
    let _ = writeln!(o, "{name}_sum {}", s.latency.sum);
    let _ = writeln!(o, "{name}_count {}", s.latency.count);
    let _ = writeln!(
        o,
        "# HELP detrix_serve_exec_to_target_max_seconds The slowest exec to target so far.\n# TYPE detrix_serve_exec_to_target_max_seconds gauge\ndetrix_serve_exec_to_target_max_seconds {}",
        s.latency.max
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_is_exact() {
        let mut h = Histogram::default();
        h.observe(0.0005);
        h.observe(0.003);
        h.observe(2.0);
        let s = Snapshot {
            processes_started: 10,
            processes_exited: 4,
            targets_found: 3,
            targets_by_state: vec![("sleeping".into(), 2), ("awake".into(), 1)],
            latency: h,
        };
        let want = "\
# HELP detrix_serve_process_starts_total Processes seen starting (exec events and scans).
# TYPE detrix_serve_process_starts_total counter
detrix_serve_process_starts_total 10
# HELP detrix_serve_process_exits_total Seen processes that exited.
# TYPE detrix_serve_process_exits_total counter
detrix_serve_process_exits_total 4
# HELP detrix_serve_targets_found_total Processes a rule selected.
# TYPE detrix_serve_targets_found_total counter
detrix_serve_targets_found_total 3
# HELP detrix_serve_targets Targets now, by state.
# TYPE detrix_serve_targets gauge
detrix_serve_targets{state=\"starting\"} 0
detrix_serve_targets{state=\"sleeping\"} 2
detrix_serve_targets{state=\"waking\"} 0
detrix_serve_targets{state=\"awake\"} 1
detrix_serve_targets{state=\"failed\"} 0
detrix_serve_targets{state=\"exited\"} 0
# HELP detrix_serve_exec_to_target_seconds From a selected process's exec to its target existing.
# TYPE detrix_serve_exec_to_target_seconds histogram
detrix_serve_exec_to_target_seconds_bucket{le=\"0.001\"} 1
detrix_serve_exec_to_target_seconds_bucket{le=\"0.002\"} 1
detrix_serve_exec_to_target_seconds_bucket{le=\"0.005\"} 2
detrix_serve_exec_to_target_seconds_bucket{le=\"0.01\"} 2
detrix_serve_exec_to_target_seconds_bucket{le=\"0.025\"} 2
detrix_serve_exec_to_target_seconds_bucket{le=\"0.05\"} 2
detrix_serve_exec_to_target_seconds_bucket{le=\"0.1\"} 2
detrix_serve_exec_to_target_seconds_bucket{le=\"0.25\"} 2
detrix_serve_exec_to_target_seconds_bucket{le=\"1\"} 2
detrix_serve_exec_to_target_seconds_bucket{le=\"+Inf\"} 3
detrix_serve_exec_to_target_seconds_sum 2.0035
detrix_serve_exec_to_target_seconds_count 3
# HELP detrix_serve_exec_to_target_max_seconds The slowest exec to target so far.
# TYPE detrix_serve_exec_to_target_max_seconds gauge
detrix_serve_exec_to_target_max_seconds 2
";
        assert_eq!(render(&s), want);
    }
}
