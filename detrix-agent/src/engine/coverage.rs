//! `detrix-agent resolve --coverage`: every statement line of a binary through the one
//! pipeline, and where each probe lands — on an instruction the kernel emulates or one it
//! single-steps — and why.
//!
//! Why: a single-stepped hit costs ~17× an emulated one, so the share of probe points that
//! land on an emulated instruction is the number placement is judged by (`cargo xtask bench`
//! prints it per build). Nothing is attached; no process is needed.

use crate::debuginfo::Binary;
use crate::place::{Scope, TrapKind};
use crate::plan;

use super::pipeline::{plan_point, runs, Steps};

/// What each line is planned with.
#[derive(Debug, Clone, Copy)]
pub struct CoverageOptions {
    /// Every parameter and local in scope (else no value at all: the most freedom placement
    /// ever has).
    pub locals: bool,
    /// Which candidates placement considers (statement-only: before the block candidates).
    pub scope: Scope,
}

/// One probe point of one line.
#[derive(Debug, Clone)]
pub struct PointCoverage {
    pub function: String,
    pub chosen: String,
    pub kind: TrapKind,
    /// The placement's verdict (the last sentence of `--explain`).
    pub why: String,
    /// Single-stepped, in a block with no instruction the kernel emulates.
    pub none_in_block: bool,
}

/// One statement line.
#[derive(Debug, Clone)]
pub struct LineCoverage {
    pub file: String,
    pub line: u32,
    /// Its probe points, or why it has none.
    pub points: Result<Vec<PointCoverage>, String>,
}

/// Totals over every line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub lines: usize,
    /// Lines that could not be planned (none with no values; with locals, a local whose type
    /// the planner refuses).
    pub failed: usize,
    pub points: usize,
    pub emulated: usize,
    /// Single-stepped points whose block has no instruction the kernel emulates: no placement
    /// inside the block can move them, so `points - these` is the most it can reach.
    pub none_in_block: usize,
}

impl Totals {
    /// Emulated share of the probe points, in percent.
    #[must_use]
    pub fn emulated_percent(&self) -> f64 {
        self.percent(self.emulated)
    }

    /// The share placement inside blocks could reach at most, in percent.
    #[must_use]
    pub fn ceiling_percent(&self) -> f64 {
        self.percent(self.points - self.none_in_block.min(self.points))
    }

    fn percent(&self, n: usize) -> f64 {
        if self.points == 0 {
            0.0
        } else {
            100.0 * n as f64 / self.points as f64
        }
    }
}

/// Walks every statement line of the files `pick` accepts.
///
/// # Errors
/// No debug info, or malformed line tables.
pub fn coverage(
    bin: &Binary,
    pick: &dyn Fn(&str) -> bool,
    opts: CoverageOptions,
) -> Result<(Vec<LineCoverage>, Totals), crate::debuginfo::ResolveError> {
    let plan_opts = super::pipeline::without_process();
    let steps = Steps {
        placement: true,
        scope: opts.scope,
        forwarding: false,
    };
    let mut out = Vec::new();
    let mut totals = Totals::default();
    for (file, line) in bin.statement_lines(pick)? {
        totals.lines += 1;
        let points = bin.resolve_line(&file, line).map_err(|e| e.to_string());
        let points = points.and_then(|pts| {
            let mut v = Vec::new();
            for (p, _) in runs(bin, pts) {
                let extras = plan::Extras {
                    locals: if opts.locals {
                        bin.locals_in_scope(&p).map_err(|e| e.to_string())?
                    } else {
                        Vec::new()
                    },
                    stack: false,
                };
                let function = p.function.clone();
                let placed = plan_point(bin, &p, &[], None, &extras, plan_opts, steps)
                    .map_err(|e| e.to_string())?;
                let pl = placed.placement;
                v.push(PointCoverage {
                    none_in_block: pl.kind != TrapKind::Emulated && pl.candidates.is_empty(),
                    function,
                    chosen: pl.chosen.to_string(),
                    kind: pl.kind,
                    why: pl.explain.last().cloned().unwrap_or_default(),
                });
            }
            Ok(v)
        });
        match &points {
            Ok(v) => {
                totals.points += v.len();
                totals.emulated += v.iter().filter(|p| p.kind == TrapKind::Emulated).count();
                totals.none_in_block += v.iter().filter(|p| p.none_in_block).count();
            }
            Err(_) => totals.failed += 1,
        }
        out.push(LineCoverage { file, line, points });
    }
    Ok((out, totals))
}
