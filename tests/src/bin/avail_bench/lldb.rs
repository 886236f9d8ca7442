//! Runs `lldb_stops.py` (lldb-22's Python API) over one build and reads back, per statement
//! line, whether lldb could set a breakpoint there, whether the program reached it, and every
//! argument and local lldb showed at the first stop: a value tree or lldb's error.
//!
//! lldb runs in its own process group, so a timeout kills it together with the lldb-server and
//! the program it started: nothing is left running.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use detrix_e2e::{workspace_root, Value};

use crate::bounded;

/// What lldb saw at one line.
#[derive(Debug, Clone)]
pub struct LldbLine {
    /// Breakpoint locations lldb found for the exact line (0: lldb cannot stop there).
    pub locations: u64,
    /// The first stop, if the program reached the line.
    pub stop: Option<LldbStop>,
}

/// The first stop on a line.
#[derive(Debug, Clone)]
pub struct LldbStop {
    /// The PC as a link address (`0x…`).
    pub pc: String,
    pub function: String,
    /// Arguments and locals in lldb's order: name → node (`t`, `v`, `s`, `e`, `p`, `c`, `text`).
    pub vars: Vec<(String, Value)>,
}

/// Where lldb-22's Python module and lldb-server are (Debian's lldb-22 package).
fn lldb_env() -> Result<(String, PathBuf), String> {
    let out = Command::new("lldb-22")
        .arg("-P")
        .output()
        .map_err(|e| format!("cannot run lldb-22 (install it: `cargo xtask setup`): {e}"))?;
    let py = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || py.is_empty() {
        return Err("`lldb-22 -P` names no Python module directory".into());
    }
    let server = [
        "/usr/bin/lldb-server-22",
        "/usr/lib/llvm-22/bin/lldb-server",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .ok_or("no lldb-server-22 (package lldb-22)")?;
    Ok((py, server))
}

/// Where lldb stops for a line: `b FILE:LINE`, or the given link addresses (the agent's
/// probes; one stop at the first of them that runs).
pub enum Stops<'a> {
    Lines(&'a [u32]),
    Addrs(&'a [(u32, Vec<u64>)]),
}

/// One lldb session over `exe`: breakpoints as `stops` says in `source` (the path as the debug
/// info names it), the program run with `args` and exactly the environment [`crate::PROGRAM_ENV`].
pub fn run(
    exe: &Path,
    source: &Path,
    stops: &Stops<'_>,
    args: &[&str],
    timeout: Duration,
) -> Result<BTreeMap<u32, LldbLine>, String> {
    let (pythonpath, server) = lldb_env()?;
    let script = workspace_root().join("tests/src/bin/avail_bench/lldb_stops.py");
    let list: Vec<String> = match stops {
        Stops::Lines(lines) => lines.iter().map(u32::to_string).collect(),
        Stops::Addrs(addrs) => addrs
            .iter()
            .map(|(l, a)| {
                let a: Vec<String> = a.iter().map(|a| format!("{a:#x}")).collect();
                format!("{l}={}", a.join("+"))
            })
            .collect(),
    };
    let count = list.len();
    let env: Vec<String> = crate::PROGRAM_ENV
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .arg(exe)
        .arg(source)
        .arg(list.join(","))
        .args(args)
        .env("PYTHONPATH", pythonpath)
        .env("LLDB_DEBUGSERVER_PATH", server)
        .env("AVAIL_ENV", env.join("\0"));
    let out = bounded(cmd, timeout)?;
    let mut result = BTreeMap::new();
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let Some(fatal) = v.get("fatal").and_then(Value::as_str) {
            return Err(fatal.to_owned());
        }
        let Some(n) = v.get("line").and_then(Value::as_u64) else {
            continue;
        };
        let stop = v.get("stop").filter(|s| !s.is_null()).map(|s| LldbStop {
            pc: s["pc"].as_str().unwrap_or_default().to_owned(),
            function: s["function"].as_str().unwrap_or_default().to_owned(),
            vars: s["vars"]
                .as_array()
                .map(|vs| {
                    vs.iter()
                        .filter_map(|x| Some((x["name"].as_str()?.to_owned(), x.clone())))
                        .collect()
                })
                .unwrap_or_default(),
        });
        let locations = v["locations"].as_u64().unwrap_or(0);
        if let Ok(n) = u32::try_from(n) {
            result.insert(n, LldbLine { locations, stop });
        }
    }
    if result.len() != count {
        return Err(format!(
            "lldb reported {} of {count} lines; its output:\n{out}",
            result.len()
        ));
    }
    Ok(result)
}
