//! `GET /metrics` of the host control plane, in the Prometheus text exposition format
//! (version 0.0.4): discovery events, targets by state, how long a selected process took from
//! its exec to being a target (a histogram), the engine's counters per target and per probe
//! (what the eBPF program counted, read through each target's registry), the CPU breaker's
//! switch-offs, and the host's event rings and probe table.
//!
//! Per probe, `hits` = `emitted` + `dropped_ring_full` + `rate_limited` + `condition_false` +
//! `no_plan` + `other_process` (`read_faults` counts emitted events with a faulted value); a
//! probe's series go when it is removed, its target's `detrix_target_*` totals keep it.

use std::fmt::Write as _;

use detrix_common::Counters;

use crate::engine::RingUse;

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
    /// Every running target's engine counters.
    pub targets: Vec<TargetCounters>,
    /// The host's rings and probe table, once the program is loaded.
    pub ring: Option<RingUse>,
    /// How long loading the host's eBPF program took.
    pub load_seconds: Option<f64>,
    /// What the host's probes are: `uprobe_multi` links or `perf_event`s.
    pub link_kind: Option<&'static str>,
    /// Windows in which every probe together exceeded the host's CPU budget.
    pub host_budget_trips: u64,
}

/// One target's counters.
#[derive(Debug, Clone, Default)]
pub struct TargetCounters {
    pub id: u64,
    pub name: String,
    pub pid: u32,
    /// Every probe since the target's engine started, removed ones included.
    pub totals: Counters,
    pub switched_off: u64,
    /// Events read after their probe was removed (see `daemon::registry::Stats::after_remove`).
    pub after_remove: u64,
    pub probes: Vec<ProbeCounters>,
}

/// One attached probe's counters.
#[derive(Debug, Clone, Default)]
pub struct ProbeCounters {
    /// `s<session>p<n>`: the probe as its DAP session named it.
    pub probe: String,
    pub file: String,
    pub line: u32,
    pub counters: Counters,
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
    render_engine(&mut o, s);
    o
}

fn render_engine(o: &mut String, s: &Snapshot) {
    if !s.targets.is_empty() {
        render_targets(o, &s.targets);
    }
    render_ring(o, s);
}

fn render_targets(o: &mut String, targets: &[TargetCounters]) {
    // Per target: every engine counter (`Some(field)`), then the CPU breaker's switch-offs and
    // the events of removed probes (`None`: by name below).
    let series = Counters::FIELDS
        .iter()
        .enumerate()
        .map(|(i, f)| {
            (
                format!("detrix_target_{}", f.metric),
                format!("{} Per target, every probe since it started.", f.help),
                Some(i),
            )
        })
        .chain([
            (
                "detrix_target_probes_switched_off_total".to_owned(),
                "Probes the CPU breaker switched off.".to_owned(),
                None,
            ),
            (
                "detrix_target_hits_after_remove_total".to_owned(),
                "Events read after their probe was removed (its uprobe fires until the kernel has unregistered it), handed to no session.".to_owned(),
                None,
            ),
        ]);
    for (name, help, field) in series {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        for t in targets {
            let v = match field {
                Some(i) => t.totals.values()[i],
                None if name.ends_with("switched_off_total") => t.switched_off,
                None => t.after_remove,
            };
            let _ = writeln!(
                o,
                "{name}{{target=\"{}\",name=\"{}\",pid=\"{}\"}} {v}",
                t.id,
                escape(&t.name),
                t.pid
            );
        }
    }
    for (i, f) in Counters::FIELDS.iter().enumerate() {
        let (name, help) = (format!("detrix_probe_{}", f.metric), f.help);
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        for t in targets {
            for p in &t.probes {
                let _ = writeln!(
                    o,
                    "{name}{{target=\"{}\",name=\"{}\",probe=\"{}\",file=\"{}\",line=\"{}\"}} {}",
                    t.id,
                    escape(&t.name),
                    escape(&p.probe),
                    escape(&p.file),
                    p.line,
                    p.counters.values()[i]
                );
            }
        }
    }
}

fn render_ring(o: &mut String, s: &Snapshot) {
    if let Some(r) = &s.ring {
        let gauges: [(&str, &str, u64); 5] = [
            (
                "detrix_ring_capacity_bytes",
                "Bytes of each CPU's event ring.",
                r.capacity_bytes,
            ),
            (
                "detrix_ring_used_bytes",
                "Bytes waiting in the fullest CPU's ring at the last read.",
                r.used_bytes,
            ),
            (
                "detrix_ring_peak_bytes",
                "The most bytes ever waiting in one CPU's ring at a read.",
                r.peak_bytes,
            ),
            (
                "detrix_probes_attached",
                "Probes attached now, over every target.",
                r.probes_attached,
            ),
            (
                "detrix_probes_max",
                "Probes the host's program can hold.",
                r.probes_max,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        for (name, help, v) in [
            (
                "detrix_ring_hits_read_total",
                "Events read from the rings and decoded.",
                r.hits_read,
            ),
            (
                "detrix_ring_hits_unrouted_total",
                "Decoded events whose target had already gone.",
                r.unrouted,
            ),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let name = "detrix_host_cpu_budget_trips_total";
        let _ = writeln!(
            o,
            "# HELP {name} Windows in which every target's probes together exceeded the host CPU budget.\n# TYPE {name} counter\n{name} {}",
            s.host_budget_trips
        );
    }
    if let Some(secs) = s.load_seconds {
        let name = "detrix_ebpf_load_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} How long loading and verifying the host's eBPF program took.\n# TYPE {name} gauge\n{name} {secs}"
        );
    }
    if let Some(kind) = s.link_kind {
        let name = "detrix_uprobe_link_kind";
        let _ = writeln!(
            o,
            "# HELP {name} What the host's probes are: uprobe_multi links (removals overlap) or perf_event (removed one at a time, ~100 ms each).\n# TYPE {name} gauge\n{name}{{kind=\"{kind}\"}} 1"
        );
    }
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
            ..Snapshot::default()
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

    #[test]
    fn engine_counters_per_target_and_probe() {
        let c = Counters {
            hits: 10,
            emitted: 6,
            dropped_ring_full: 1,
            rate_limited: 1,
            condition_false: 2,
            read_faults: 3,
            no_plan: 0,
            other_process: 0,
            bpf_ns: 5000,
            other_way: 7,
        };
        let mut totals = c;
        totals.hits += 4;
        totals.emitted += 4;
        let s = Snapshot {
            targets: vec![TargetCounters {
                id: 7,
                name: "orders \"x\"".into(),
                pid: 42,
                totals,
                switched_off: 1,
                after_remove: 5,
                probes: vec![ProbeCounters {
                    probe: "s1p2".into(),
                    file: "/src/orders.c".into(),
                    line: 33,
                    counters: c,
                }],
            }],
            ring: Some(RingUse {
                capacity_bytes: 262_144,
                used_bytes: 128,
                peak_bytes: 4096,
                hits_read: 10,
                unrouted: 2,
                probes_attached: 1,
                probes_max: 512,
            }),
            load_seconds: Some(1.5),
            link_kind: Some("uprobe_multi"),
            host_budget_trips: 3,
            ..Snapshot::default()
        };
        let text = render(&s);
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        let t = r#"{target="7",name="orders \"x\"",pid="42"}"#;
        let p = r#"{target="7",name="orders \"x\"",probe="s1p2",file="/src/orders.c",line="33"}"#;
        for want in [
            format!("detrix_target_hits_total{t} 14"),
            format!("detrix_target_emitted_total{t} 10"),
            format!("detrix_target_bpf_nanoseconds_total{t} 5000"),
            format!("detrix_target_probes_switched_off_total{t} 1"),
            format!("detrix_target_hits_after_remove_total{t} 5"),
            format!("detrix_probe_hits_total{p} 10"),
            format!("detrix_probe_emitted_total{p} 6"),
            format!("detrix_probe_dropped_ring_full_total{p} 1"),
            format!("detrix_probe_rate_limited_total{p} 1"),
            format!("detrix_probe_condition_false_total{p} 2"),
            format!("detrix_probe_read_faults_total{p} 3"),
            format!("detrix_probe_no_plan_total{p} 0"),
            format!("detrix_probe_other_process_total{p} 0"),
            format!("detrix_probe_bpf_nanoseconds_total{p} 5000"),
            format!("detrix_probe_other_way_total{p} 7"),
            format!("detrix_target_other_way_total{t} 7"),
            "detrix_ring_capacity_bytes 262144".to_owned(),
            "detrix_ring_used_bytes 128".to_owned(),
            "detrix_ring_peak_bytes 4096".to_owned(),
            "detrix_probes_attached 1".to_owned(),
            "detrix_probes_max 512".to_owned(),
            "detrix_ring_hits_read_total 10".to_owned(),
            "detrix_ring_hits_unrouted_total 2".to_owned(),
            "detrix_ebpf_load_seconds 1.5".to_owned(),
            r#"detrix_uprobe_link_kind{kind="uprobe_multi"} 1"#.to_owned(),
            "detrix_host_cpu_budget_trips_total 3".to_owned(),
        ] {
            assert!(lines.contains(&want.as_str()), "missing {want} in\n{text}");
        }
        // Every sample has its HELP and TYPE: 10 target + 1 breaker + 1 after-remove + 10 probe +
        // 7 ring + 1 host budget + 1 load + 1 link kind families after the 6 discovery ones.
        assert_eq!(
            text.matches("# TYPE ").count(),
            6 + 10 + 1 + 1 + 10 + 7 + 1 + 1 + 1
        );
        assert_eq!(
            lines.len(),
            3 + 6 + 12 + 1 + 10 + 1 + 1 + 10 + 7 + 1 + 1 + 1
        );
    }
}
