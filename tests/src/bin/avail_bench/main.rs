//! `avail_bench`: how many variables the agent captures with a value on every statement line
//! of the optimized fixtures, against what lldb-22 shows at a breakpoint on the same line — one
//! run, one table per build, then every line where lldb has a value the agent lacks or shows
//! differently (issue #16 point 6; run by `cargo xtask bench availability`).
//!
//! Per build: the statement lines come from the DWARF line table ([`lines`]); lldb stops once on
//! each in one fresh process ([`lldb`]); the agent captures `--locals` at each, attached to a
//! fresh process before it runs ([`agent`]); both see each line's first execution, so the values
//! compare ([`compare`]). A line lldb cannot stop at, or the program never reaches, is counted
//! apart; every step is bounded in time and leaves no process behind.
//!
//! `avail_bench --agent PATH [--only BUILD_ID]... [--rounds N]`

#[path = "../../../tests/lang/mod.rs"]
mod lang;

mod agent;
mod compare;
mod lines;
mod lldb;

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use agent::AgentLine;
use compare::{agent_has_value, compare, lldb_has_value, Verdict};
use detrix_e2e::Value;
use lang::FixtureBuild;

/// The optimized builds: C and C++ `-O2`, Rust release, Go optimized.
const BUILDS: [FixtureBuild; 11] = [
    lang::C_O2,
    lang::C_OPTIMIZED_O2,
    lang::C_DWEXPR_O2,
    lang::SPLIT_C_O2,
    lang::CPP_O2,
    lang::SPLIT_CPP_O2,
    lang::RUST_O3,
    lang::SPLIT_RUST_O2,
    lang::GO119_OPT,
    lang::GO123_OPT,
    lang::SPLIT_GO123_OPT,
];

const LLDB_TIMEOUT: Duration = Duration::from_secs(300);

/// The whole environment of every program run, under lldb and under the agent alike.
pub const PROGRAM_ENV: [(&str, &str); 1] = [("PATH", "/usr/local/bin:/usr/bin:/bin")];

/// Runs `cmd` in its own process group; after `timeout` kills the whole group (a debugger and
/// what it started). Returns stdout, or why not.
pub fn bounded(mut cmd: Command, timeout: Duration) -> Result<String, String> {
    use std::os::unix::process::CommandExt as _;
    let what = format!("{cmd:?}");
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2).
    unsafe { cmd.pre_exec(agent::die_with_parent) };
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let mut err = child.stderr.take().ok_or("no stderr")?;
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let pgid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    // SAFETY: kills the process group this function created (pgid = the child's pid); the
    // leader may be gone, its group members not.
    unsafe { libc::killpg(pgid, libc::SIGKILL) };
    let _ = child.wait();
    let stdout = reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(stdout),
        Some(s) => Err(format!("{what} failed ({s}):\n{stderr}\n{stdout}")),
        None => Err(format!("{what} did not finish within {timeout:?}; killed")),
    }
}

/// Counts for one build.
#[derive(Default, Debug)]
struct Tally {
    lines: usize,
    lldb_no_location: usize,
    lldb_not_reached: usize,
    agent_cannot: usize,
    agent_not_reached: usize,
    compared_lines: usize,
    vars: usize,
    lldb_value: usize,
    agent_value: usize,
    equal: usize,
    /// Of `equal`: structs whose members without a location the agent shows as optimized out
    /// (lldb shows zeros there); every member the agent has equals lldb's.
    partial: usize,
    differs: usize,
    unchecked: usize,
    agent_only: usize,
    lldb_only: usize,
    /// Values lldb shows at the agent's own probe address (same execution) that the agent
    /// does not capture: the agent's gaps proper.
    lldb_only_same_pc: usize,
    /// Of those, values the agent left out only because the hit's plan was full
    /// (`plan::MAX_VALUES` values, `MAX_OPS` steps): each alone is captured.
    over_budget: usize,
}

/// One finding for the list after the tables.
struct Finding {
    build: &'static str,
    line: u32,
    name: String,
    what: String,
}

fn main() -> ExitCode {
    let mut agent_bin = None;
    let mut only = Vec::new();
    let mut rounds = 12u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--agent" => agent_bin = args.next().map(PathBuf::from),
            "--only" => only.extend(args.next()),
            "--rounds" => rounds = args.next().and_then(|r| r.parse().ok()).unwrap_or(rounds),
            other => {
                eprintln!("avail_bench: unknown argument `{other}`; usage: avail_bench --agent PATH [--only BUILD_ID]... [--rounds N]");
                return ExitCode::FAILURE;
            }
        }
    }
    let Some(agent_bin) = agent_bin.filter(|p| p.is_file()) else {
        eprintln!("avail_bench: --agent PATH (a built detrix-agent) is required");
        return ExitCode::FAILURE;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("avail_bench: NOT RUN: needs root (uprobes, eBPF)");
        return ExitCode::FAILURE;
    }
    let rounds_text = rounds.to_string();
    let prog_args = [rounds_text.as_str(), "0"];
    let mut tallies = Vec::new();
    let mut failed = false;
    for build in BUILDS
        .iter()
        .filter(|b| only.is_empty() || only.iter().any(|o| o == b.id))
    {
        let start = Instant::now();
        let mut findings = Vec::new();
        match run_build(build, &agent_bin, &prog_args, &mut findings) {
            Ok(t) => {
                print_build(build, &t, start.elapsed());
                print_findings(&findings);
                tallies.push((build.id, t));
            }
            Err(e) => {
                failed = true;
                println!("availability: {}: NOT RUN: {e}", build.id);
            }
        }
    }
    print_summary(&tallies);
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn run_build(
    build: &FixtureBuild,
    agent_bin: &std::path::Path,
    args: &[&str],
    findings: &mut Vec<Finding>,
) -> Result<Tally, String> {
    let exe = build.build();
    let stmt: Vec<u32> = lines::statement_lines(&exe, &build.debug_source())?
        .into_iter()
        .collect();
    let by_lldb = lldb::run(
        &exe,
        &build.debug_source(),
        &lldb::Stops::Lines(&stmt),
        args,
        LLDB_TIMEOUT,
    )?;
    let at = format!("{}/{}", build.dir, build.file);
    let by_agent = agent::run(agent_bin, &exe, &at, &stmt, args)?;
    // lldb again, stopped where the agent's probes are: the same instruction and execution.
    let agent_addrs: Vec<(u32, Vec<u64>)> = by_agent
        .iter()
        .filter_map(|(l, a)| match a {
            AgentLine::Hit { addrs, .. } if !addrs.is_empty() => Some((*l, addrs.clone())),
            _ => None,
        })
        .collect();
    let at_agent_pc = lldb::run(
        &exe,
        &build.debug_source(),
        &lldb::Stops::Addrs(&agent_addrs),
        args,
        LLDB_TIMEOUT,
    )?;
    let mut t = Tally {
        lines: stmt.len(),
        ..Tally::default()
    };
    for line in &stmt {
        let l = &by_lldb[line];
        let lstop = l.stop.as_ref();
        if l.locations == 0 {
            t.lldb_no_location += 1;
        } else if lstop.is_none() {
            t.lldb_not_reached += 1;
        }
        let alocals = match &by_agent[line] {
            AgentLine::Error(_) => {
                t.agent_cannot += 1;
                None
            }
            AgentLine::NotHit => {
                t.agent_not_reached += 1;
                None
            }
            AgentLine::Hit { locals, .. } => Some(locals),
        };
        if lstop.is_none() && alocals.is_none() {
            continue;
        }
        let same = at_agent_pc.get(line).and_then(|x| x.stop.as_ref());
        t.compared_lines += 1;
        let mut names: Vec<String> = lstop
            .map(|s| s.vars.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default();
        for n in alocals.into_iter().flat_map(|m| m.keys()) {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        let var = |stop: Option<&lldb::LldbStop>, name: &str| {
            stop.and_then(|s| {
                s.vars
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
            })
        };
        let text = |v: &Option<Value>| {
            v.as_ref()
                .and_then(|v| v.get("text"))
                .and_then(Value::as_str)
                .unwrap_or("(not listed)")
                .to_owned()
        };
        for name in names {
            t.vars += 1;
            let lv = var(lstop, &name);
            let sv = var(same, &name);
            let av = alocals.and_then(|m| m.get(&name));
            let lhas = lv.as_ref().is_some_and(lldb_has_value);
            let shas = sv.as_ref().is_some_and(lldb_has_value);
            let ahas = av.is_some_and(agent_has_value);
            t.lldb_value += usize::from(lhas);
            t.agent_value += usize::from(ahas);
            t.agent_only += usize::from(ahas && !lhas);
            t.lldb_only += usize::from(lhas && !ahas);
            let pcs = format!(
                "(lldb's line stop {} in {}; agent's probe {})",
                lstop.map_or("-", |s| s.pc.as_str()),
                lstop.map_or("-", |s| s.function.as_str()),
                same.map_or("-", |s| s.pc.as_str()),
            );
            let mut finding = |what: String| {
                findings.push(Finding {
                    build: build.id,
                    line: *line,
                    name: name.clone(),
                    what,
                });
            };
            if ahas {
                let Some(av) = av else { continue };
                // Compared only where lldb shows a value at the agent's own probe.
                if let Some(sv) = sv.as_ref().filter(|_| shas) {
                    match compare(sv, av) {
                        Verdict::Equal => t.equal += 1,
                        Verdict::Partial(why) => {
                            t.equal += 1;
                            t.partial += 1;
                            finding(format!("partial: {why} {pcs}"));
                        }
                        Verdict::Differs(why) => {
                            t.differs += 1;
                            finding(format!("DIFFERS at the agent's probe: {why} {pcs}"));
                        }
                        Verdict::Unchecked(why) => {
                            t.unchecked += 1;
                            finding(format!("unchecked: {why}"));
                        }
                    }
                }
            } else if shas || lhas {
                let agent_said = match (&by_agent[line], av) {
                    (AgentLine::Error(e), _) => format!("agent cannot probe the line: {e}"),
                    (AgentLine::NotHit, _) => "agent's probes never hit".to_owned(),
                    (_, Some(v)) => format!("agent: {}", v.get("error").unwrap_or(v)),
                    (_, None) => "agent does not list it".to_owned(),
                };
                if shas {
                    t.lldb_only_same_pc += 1;
                    t.over_budget += usize::from(agent_said.contains("per-hit budget"));
                    finding(format!(
                        "LLDB ONLY at the agent's probe: lldb {}; {agent_said} {pcs}",
                        text(&sv)
                    ));
                } else {
                    finding(format!(
                        "lldb only at its own stop: lldb {}; at the agent's probe lldb {}; {agent_said} {pcs}",
                        text(&lv),
                        text(&sv)
                    ));
                }
            }
        }
    }
    Ok(t)
}

fn print_build(build: &FixtureBuild, t: &Tally, took: Duration) {
    let lldb_stopped = t.lines - t.lldb_no_location - t.lldb_not_reached;
    let agent_hit = t.lines - t.agent_cannot - t.agent_not_reached;
    println!();
    println!(
        "availability: {} ({} {:?}) — {} statement lines: lldb stopped at {lldb_stopped} \
         ({} without a location, {} never reached); the agent hit {agent_hit} ({} it cannot \
         probe, {} never reached); {:.0} s",
        build.id,
        build.file,
        build.compiler,
        t.lines,
        t.lldb_no_location,
        t.lldb_not_reached,
        t.agent_cannot,
        t.agent_not_reached,
        took.as_secs_f64()
    );
    println!("| lines | vars in scope | lldb with value | agent with value | agent = lldb | (of which partly optimized out) | agent ≠ lldb | unchecked | agent only | lldb only | lldb only at agent's pc | (of which over the per-hit budget) | agent ≥ lldb |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---|");
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        t.compared_lines,
        t.vars,
        t.lldb_value,
        t.agent_value,
        t.equal,
        t.partial,
        t.differs,
        t.unchecked,
        t.agent_only,
        t.lldb_only,
        t.lldb_only_same_pc,
        t.over_budget,
        if t.agent_value >= t.lldb_value && t.differs == 0 {
            "yes"
        } else {
            "no"
        }
    );
}

fn print_summary(tallies: &[(&str, Tally)]) {
    println!();
    println!("availability summary (lines: statement lines where lldb or the agent stopped)");
    println!("| build | lines | vars in scope | lldb with value | agent with value | agent = lldb | (of which partly optimized out) | agent ≠ lldb | unchecked | agent only | lldb only | lldb only at agent's pc | (of which over the per-hit budget) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (id, t) in tallies {
        println!(
            "| {id} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            t.compared_lines,
            t.vars,
            t.lldb_value,
            t.agent_value,
            t.equal,
            t.partial,
            t.differs,
            t.unchecked,
            t.agent_only,
            t.lldb_only,
            t.lldb_only_same_pc,
            t.over_budget
        );
    }
}

fn print_findings(findings: &[Finding]) {
    let order = |f: &&Finding| {
        ["DIFFERS", "LLDB ONLY", "lldb only", "partial", "unchecked"]
            .iter()
            .position(|p| f.what.starts_with(p))
            .unwrap_or(5)
    };
    let mut sorted: Vec<&Finding> = findings.iter().collect();
    sorted.sort_by_key(order);
    println!(
        "{} findings: values that differ at the agent's probe; values lldb shows there the agent lacks; values lldb shows only at its own (other) stop; structs partly optimized out (agent: those members optimized out; lldb: zeros); values not compared",
        sorted.len()
    );
    for f in sorted {
        println!("  {}:{} {}: {}", f.build, f.line, f.name, f.what);
    }
}
