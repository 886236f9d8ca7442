//! `detrix-agent resolve --coverage --binary BIN`: for every statement line, where its probe
//! lands and why, then the totals (issue #15); the numbers come from
//! `detrix_agent::engine::coverage`, this only picks the files and prints.

use std::io::Write as _;
use std::process::ExitCode;

use crate::ResolveArgs;

/// A source file of the binary's own (not the toolchain's, the system's or a registry
/// crate's), for `resolve --coverage` without `--under`.
fn own_source(path: &str) -> bool {
    !(path.starts_with("/usr/")
        || path.starts_with("/rustc/")
        || path.contains("/.cargo/registry/")
        || path.contains("/.cargo/git/")
        || path.contains("/rustlib/")
        || path.contains("/go/pkg/mod/")
        || path.starts_with('<'))
}

/// `resolve --coverage`: one line per statement line, then the totals.
pub fn run(args: &ResolveArgs) -> anyhow::Result<ExitCode> {
    use detrix_agent::engine::coverage::{coverage, CoverageOptions};
    let bin = detrix_agent::debuginfo::Binary::open(&args.binary)?;
    let pick = |p: &str| {
        if args.under.is_empty() {
            own_source(p)
        } else {
            args.under.iter().any(|u| p.contains(u.as_str()))
        }
    };
    let opts = CoverageOptions {
        locals: args.locals,
        scope: if args.statement_only {
            detrix_agent::place::Scope::Statement
        } else {
            detrix_agent::place::Scope::Block
        },
    };
    let (lines, totals) = coverage(&bin, &pick, opts)?;
    let rel = |s: &str| {
        s.strip_prefix(args.strip_prefix.as_str())
            .map_or(s, |r| r.trim_start_matches('/'))
            .to_owned()
    };
    let mut out = std::io::stdout().lock();
    let mut write = || -> std::io::Result<()> {
        for l in &lines {
            match &l.points {
                Ok(points) => {
                    for p in points {
                        writeln!(
                            out,
                            "{}:{}\t{}\t{}\t{:?}\t{}",
                            rel(&l.file),
                            l.line,
                            p.function,
                            p.chosen,
                            p.kind,
                            p.why
                        )?;
                    }
                }
                Err(e) => writeln!(out, "{}:{}\t-\t-\tError\t{e}", rel(&l.file), l.line)?,
            }
        }
        writeln!(
            out,
            "total: lines={} failed={} points={} emulated={} ({:.0} %) no_emulated_in_block={} (ceiling {:.0} %)",
            totals.lines,
            totals.failed,
            totals.points,
            totals.emulated,
            totals.emulated_percent(),
            totals.none_in_block,
            totals.ceiling_percent()
        )
    };
    match write() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        other => other.map(|()| ExitCode::SUCCESS).map_err(Into::into),
    }
}
