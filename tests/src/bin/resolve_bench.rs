//! Cold cost of resolving a line in a large real binary: runs `detrix-agent resolve` as a fresh
//! process each time on (by default) the agent's own debug build, and prints wall time and peak
//! RSS (`ru_maxrss` from `wait4`) per run, with the target's debug-section sizes. Issue #4's
//! goal: ≥ 200 MB of debug info resolved cold in ≤ 2 s with ≤ 256 MB peak RSS.
//!
//! Not a test (speed goes in benchmarks, never in timed tests) and not part of `cargo xtask
//! bench`. Run it after `cargo xtask test` (or any build of the agent):
//!
//! ```sh
//! cargo run -p detrix-e2e --release --bin resolve_bench -- [--runs 5] [--agent PATH]
//!     [--binary PATH] [--at FILE:LINE] [--expr E]... [--drop-caches]
//! ```
//!
//! `--agent` is the resolver that runs (default `$DETRIX_AGENT_BIN`, else
//! `target/release/detrix-agent` if built, else `target/debug/detrix-agent`); `--binary` is
//! what it resolves in (default `target/debug/detrix-agent`). The default line is found by its
//! text in `detrix-agent/src/capture.rs`, so it follows edits. `--drop-caches` (root) empties
//! the page cache before every run, so the binary is read from disk each time.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use detrix_e2e::{workspace_root, Value};

/// The issue's goal.
const GOAL_DEBUG_BYTES: u64 = 200 * 1000 * 1000;
const GOAL_WALL: Duration = Duration::from_secs(2);
const GOAL_RSS_BYTES: u64 = 256 * 1024 * 1024;

/// The default probe line: the first line of capture.rs containing this text.
const DEFAULT_LINE_TEXT: &str = "let resolver = Resolver::open(";
const DEFAULT_EXPRS: &[&str] = &["req", "req.pid", "req.file"];

struct Args {
    agent: PathBuf,
    binary: PathBuf,
    at: Option<String>,
    exprs: Vec<String>,
    runs: usize,
    drop_caches: bool,
}

fn usage(msg: &str) -> ! {
    eprintln!("resolve_bench: {msg}");
    eprintln!("usage: resolve_bench [--runs N] [--agent PATH] [--binary PATH] [--at FILE:LINE] [--expr E]... [--drop-caches]");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let root = workspace_root();
    let default_agent = std::env::var_os("DETRIX_AGENT_BIN")
        .filter(|b| !b.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let release = root.join("target/release/detrix-agent");
            if release.is_file() {
                release
            } else {
                root.join("target/debug/detrix-agent")
            }
        });
    let mut args = Args {
        agent: default_agent,
        binary: root.join("target/debug/detrix-agent"),
        at: None,
        exprs: Vec::new(),
        runs: 5,
        drop_caches: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--agent" => args.agent = PathBuf::from(value()),
            "--binary" => args.binary = PathBuf::from(value()),
            "--at" => args.at = Some(value()),
            "--expr" => args.exprs.push(value()),
            "--runs" => {
                args.runs = value()
                    .parse()
                    .unwrap_or_else(|e| usage(&format!("--runs: {e}")));
            }
            "--drop-caches" => args.drop_caches = true,
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument `{other}`")),
        }
    }
    if args.runs == 0 {
        usage("--runs must be at least 1");
    }
    for (what, p) in [("--agent", &args.agent), ("--binary", &args.binary)] {
        if !p.is_file() {
            usage(&format!(
                "{what} {} does not exist; build the agent first (cargo xtask test)",
                p.display()
            ));
        }
    }
    args
}

/// `detrix-agent/src/capture.rs:N` (a path suffix: `capture.rs` alone is ambiguous, hyper-util
/// has one too) of the line holding [`DEFAULT_LINE_TEXT`].
fn default_at() -> String {
    let src = workspace_root().join("detrix-agent/src/capture.rs");
    let text = fs::read_to_string(&src)
        .unwrap_or_else(|e| usage(&format!("cannot read {}: {e}", src.display())));
    let line = text
        .lines()
        .position(|l| l.contains(DEFAULT_LINE_TEXT))
        .unwrap_or_else(|| {
            usage(&format!(
                "no line containing `{DEFAULT_LINE_TEXT}` in {}; pass --at",
                src.display()
            ))
        });
    format!("detrix-agent/src/capture.rs:{}", line + 1)
}

/// One ELF section as `readelf -S -W` lists it.
struct Section {
    name: String,
    size: u64,
    compressed: bool,
}

fn sections(binary: &Path) -> Vec<Section> {
    let out = Command::new("readelf")
        .args(["-S", "-W"])
        .arg(binary)
        .output()
        .unwrap_or_else(|e| usage(&format!("cannot run readelf (binutils): {e}")));
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| {
            // "  [34] .debug_info  PROGBITS  0000000000000000 1176b99 255e46f 00  C  0 0 1"
            let rest = l.trim_start().strip_prefix('[')?;
            let (_, rest) = rest.split_once(']')?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let size = u64::from_str_radix(f.get(4)?, 16).ok()?;
            // Flags sit between ES and Lk; only present when non-empty.
            let compressed = f.len() > 9 && f[6].contains('C');
            Some(Section {
                name: f[0].to_string(),
                size,
                compressed,
            })
        })
        .collect()
}

struct Run {
    wall: Duration,
    /// From `resolve --timing`: (open, first resolve, warm resolve) in seconds.
    timing: Option<(f64, f64, f64)>,
    maxrss_bytes: u64,
    status: i32,
    summary: String,
}

fn drop_caches() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    if let Err(e) = fs::write("/proc/sys/vm/drop_caches", "3\n") {
        usage(&format!(
            "--drop-caches: cannot write /proc/sys/vm/drop_caches (needs root): {e}"
        ));
    }
}

fn run_once(args: &Args, at: &str, exprs: &[String], out_path: &Path) -> Run {
    let out_file = fs::File::create(out_path)
        .unwrap_or_else(|e| usage(&format!("cannot create {}: {e}", out_path.display())));
    let mut cmd = Command::new(&args.agent);
    cmd.arg("resolve")
        .arg("--binary")
        .arg(&args.binary)
        .arg("--at")
        .arg(at)
        .arg("--timing");
    for e in exprs {
        cmd.arg("--expr").arg(e);
    }
    let err_path = out_path.with_extension("stderr");
    let err_file = fs::File::create(&err_path)
        .unwrap_or_else(|e| usage(&format!("cannot create {}: {e}", err_path.display())));
    cmd.stdin(Stdio::null()).stdout(out_file).stderr(err_file);
    let start = Instant::now();
    #[expect(
        clippy::zombie_processes,
        reason = "reaped by wait4 below, which also gives the rusage"
    )]
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| usage(&format!("cannot run {}: {e}", args.agent.display())));
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data, zero is a valid value.
    let mut usage_out: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own unreaped child; both pointers are valid for the call.
    let rc = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage_out) };
    let wall = start.elapsed();
    assert!(
        rc == pid,
        "wait4({pid}) failed: {}",
        std::io::Error::last_os_error()
    );
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    let _ = fs::remove_file(&err_path);
    let exit = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -libc::WTERMSIG(status)
    };
    let stdout = fs::read_to_string(out_path).unwrap_or_default();
    let summary = summarize(&stdout, &stderr);
    Run {
        wall,
        timing: parse_timing(&stderr),
        maxrss_bytes: u64::try_from(usage_out.ru_maxrss).unwrap_or(0) * 1024,
        status: exit,
        summary,
    }
}

/// `timing: open A s, first resolve B s, warm resolve C s` from resolve's stderr.
fn parse_timing(stderr: &str) -> Option<(f64, f64, f64)> {
    let line = stderr.lines().find_map(|l| l.strip_prefix("timing: "))?;
    let nums: Vec<f64> = line
        .split(", ")
        .filter_map(|part| part.trim_end_matches(" s").rsplit(' ').next()?.parse().ok())
        .collect();
    match nums[..] {
        [a, b, c] => Some((a, b, c)),
        _ => None,
    }
}

/// `N point(s) in F; exprs: ok/err` from resolve's JSON, or its error.
fn summarize(stdout: &str, stderr: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(stdout) else {
        return format!("no JSON; stderr: {}", stderr.trim());
    };
    if let Some(e) = v.get("error") {
        return format!("error: {e}");
    }
    let points = v["points"].as_array().cloned().unwrap_or_default();
    let mut parts = Vec::new();
    for p in &points {
        let values = p["values"].as_object().cloned().unwrap_or_default();
        let errs: Vec<String> = values
            .iter()
            .filter_map(|(k, x)| {
                x.get("error")
                    .map(|e| format!("{k}: {}", e.as_str().unwrap_or_default()))
            })
            .collect();
        parts.push(format!(
            "{} @ {} ({}/{} exprs planned{})",
            p["function"].as_str().unwrap_or("?"),
            p["addr"].as_str().unwrap_or("?"),
            values.len() - errs.len(),
            values.len(),
            if errs.is_empty() {
                String::new()
            } else {
                format!("; {}", errs.join("; "))
            }
        ));
    }
    format!("{} point(s): {}", points.len(), parts.join(", "))
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn main() {
    let args = parse_args();
    let at = args.at.clone().unwrap_or_else(default_at);
    let exprs: Vec<String> = if args.exprs.is_empty() && args.at.is_none() {
        DEFAULT_EXPRS.iter().map(|s| (*s).to_string()).collect()
    } else {
        args.exprs.clone()
    };

    let file_bytes = fs::metadata(&args.binary).map(|m| m.len()).unwrap_or(0);
    let secs = sections(&args.binary);
    let debug: Vec<&Section> = secs
        .iter()
        .filter(|s| s.name.starts_with(".debug_") || s.name.starts_with(".zdebug_"))
        .collect();
    let debug_info = debug
        .iter()
        .filter(|s| s.name.ends_with("debug_info"))
        .map(|s| s.size)
        .sum::<u64>();
    let debug_all = debug.iter().map(|s| s.size).sum::<u64>();
    let compressed = debug
        .iter()
        .any(|s| s.compressed || s.name.starts_with(".zdebug_"));

    println!("resolve_bench: cold `detrix-agent resolve`, a fresh process per run");
    println!("  resolver: {}", args.agent.display());
    println!(
        "  target:   {} ({} file)",
        args.binary.display(),
        mb(file_bytes)
    );
    println!(
        "  debug info: .debug_info {}, all .debug_* {}{}",
        mb(debug_info),
        mb(debug_all),
        if compressed {
            " (sizes as stored: compressed)"
        } else {
            ""
        }
    );
    for s in &debug {
        println!(
            "    {:<20} {:>10}{}",
            s.name,
            mb(s.size),
            if s.compressed { " compressed" } else { "" }
        );
    }
    println!(
        "  query: --at {at}{}",
        exprs
            .iter()
            .map(|e| format!(" --expr {e}"))
            .collect::<String>()
    );
    println!(
        "  page cache: {}",
        if args.drop_caches {
            "dropped before every run"
        } else {
            "as is (the target was just built or read: warm; pass --drop-caches as root for disk-cold)"
        }
    );
    println!();
    println!(
        "{:>4}  {:>9}  {:>13}  {:>8}  {:>8}  {:>8}  {:>4}  result",
        "run", "wall (s)", "peak RSS (MB)", "open", "first", "warm", "exit"
    );

    let out_path = std::env::temp_dir().join(format!("resolve_bench-{}.json", std::process::id()));
    let mut runs = Vec::new();
    for i in 1..=args.runs {
        if args.drop_caches {
            drop_caches();
        }
        let r = run_once(&args, &at, &exprs, &out_path);
        let t = |f: fn(&(f64, f64, f64)) -> f64| {
            r.timing
                .as_ref()
                .map_or_else(|| "-".to_owned(), |x| format!("{:.3}", f(x)))
        };
        println!(
            "{i:>4}  {:>9.3}  {:>13.1}  {:>8}  {:>8}  {:>8}  {:>4}  {}",
            r.wall.as_secs_f64(),
            r.maxrss_bytes as f64 / 1e6,
            t(|x| x.0),
            t(|x| x.1),
            t(|x| x.2),
            r.status,
            r.summary
        );
        runs.push(r);
    }
    let _ = fs::remove_file(&out_path);

    let mut walls: Vec<Duration> = runs.iter().map(|r| r.wall).collect();
    walls.sort_unstable();
    let median = walls[walls.len() / 2];
    let worst_rss = runs.iter().map(|r| r.maxrss_bytes).max().unwrap_or(0);
    let all_ok = runs.iter().all(|r| r.status == 0);
    println!();
    println!(
        "wall: min {:.3} s, median {:.3} s, max {:.3} s; peak RSS max {:.1} MB; exit {}",
        walls[0].as_secs_f64(),
        median.as_secs_f64(),
        walls[walls.len() - 1].as_secs_f64(),
        worst_rss as f64 / 1e6,
        if all_ok {
            "0 every run"
        } else {
            "NON-ZERO in some run"
        }
    );
    let mut warm: Vec<f64> = runs.iter().filter_map(|r| r.timing.map(|t| t.2)).collect();
    warm.sort_by(f64::total_cmp);
    if let Some(w) = warm.get(warm.len() / 2) {
        println!(
            "warm (a second resolve on the parsed binary, in the same process): median {w:.3} s"
        );
    }
    let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!("goal (issue #4): ≥ 200 MB debug info, ≤ 2 s cold, ≤ 256 MiB peak RSS");
    println!(
        "  debug info size: {} .debug_info / {} all → {}",
        mb(debug_info),
        mb(debug_all),
        if debug_all >= GOAL_DEBUG_BYTES {
            "ok"
        } else {
            "target SMALLER than the goal's 200 MB: pass a bigger --binary to test the goal"
        }
    );
    println!(
        "  wall (max):      {:.3} s → {}",
        walls[walls.len() - 1].as_secs_f64(),
        verdict(walls[walls.len() - 1] <= GOAL_WALL)
    );
    println!(
        "  peak RSS (max):  {:.1} MB → {}",
        worst_rss as f64 / 1e6,
        verdict(worst_rss <= GOAL_RSS_BYTES)
    );
    if !all_ok {
        std::process::exit(1);
    }
}
