//! The control-flow graph of a decoded function, and which row runs of a line carry a probe.
//!
//! Why: in optimized code one statement's code is split into several runs on different paths
//! (a Go `append` that grows the slice before the print on the next line, a call on one branch),
//! and a probe on the first run only sees the executions that pass it. A run gives way when the
//! graph shows the statement is caught elsewhere on every path through it: every path from it
//! comes through an earlier kept run (dominance: the statement's later pieces, so the probe stays
//! where the statement starts), or every path from it reaches another kept run before it comes
//! back to itself or the function returns (post-dominance: a piece on a side path before the
//! join). Runs on disjoint paths each keep a probe, so each execution passes exactly one; a
//! loop's next iteration is a new execution because the path comes back to the run itself.
//!
//! The graph is per instruction (functions are small, and runs do not start on block
//! boundaries). Calls return; a direct jump out of the function is a tail call (it leaves); a
//! jump table's jump goes to the table's targets ([`super::jumptable`]); a jump through a GOT
//! slot is a tail call (it leaves); any other indirect jump may go anywhere, so a path reaching one counts as leaving the line, and a function
//! holding one never drops a run for dominance (its targets are unknown predecessors).

use std::collections::{HashMap, HashSet};

use iced_x86::FlowControl;

use super::{branch, Branch, Function};
use crate::debuginfo::{LineRun, LinkAddr};

/// Where control goes after an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    To(u64),
    /// Return, tail call or jump out of the function.
    Leave,
    /// An indirect jump: anywhere.
    Unknown,
}

/// Instruction-level control flow of one function.
#[derive(Debug, Default)]
pub struct Cfg {
    succ: HashMap<u64, Vec<Next>>,
    pred: HashMap<u64, Vec<u64>>,
    start: u64,
    indirect: bool,
}

impl Cfg {
    /// The graph of `func`, whose code spans `[start, end)`.
    #[must_use]
    pub fn of(func: &Function, start: u64, end: u64) -> Self {
        let mut cfg = Self {
            start,
            ..Self::default()
        };
        let inside = |a: u64| a >= start && a < end;
        for i in &func.instrs {
            let here = i.ip();
            let fall = i.next_ip();
            let to = |a: u64| if inside(a) { Next::To(a) } else { Next::Leave };
            let next = match i.flow_control() {
                FlowControl::Return => vec![Next::Leave],
                FlowControl::Interrupt | FlowControl::Exception => Vec::new(),
                FlowControl::IndirectBranch => match func.table(i) {
                    Some(targets) => targets.iter().map(|&t| to(t)).collect(),
                    None if func.tail_call(i) => vec![Next::Leave],
                    None => {
                        cfg.indirect = true;
                        vec![Next::Unknown]
                    }
                },
                FlowControl::UnconditionalBranch => match branch(i) {
                    Branch::Direct(t) => vec![to(t)],
                    _ => vec![Next::Unknown],
                },
                FlowControl::ConditionalBranch => match branch(i) {
                    Branch::Direct(t) => vec![to(t), to(fall)],
                    _ => vec![Next::Unknown, to(fall)],
                },
                _ => vec![to(fall)],
            };
            for n in &next {
                if let Next::To(a) = n {
                    cfg.pred.entry(*a).or_default().push(here);
                }
            }
            cfg.succ.insert(here, next);
        }
        cfg
    }

    /// The graph of `func` over the code it decoded.
    #[must_use]
    pub fn whole(func: &Function) -> Self {
        let start = func.instrs.first().map_or(0, iced_x86::Instruction::ip);
        let end = func.instrs.last().map_or(0, iced_x86::Instruction::next_ip);
        Self::of(func, start, end)
    }

    /// Whether a path of at least one step leads from `from` to `to` without passing `avoid`.
    /// A path ends where it leaves the function or reaches an indirect jump with no known
    /// targets (a function with one has no known ways in, and callers ask only of others).
    #[must_use]
    pub fn leads(&self, from: u64, to: u64, avoid: Option<u64>) -> bool {
        let mut seen = HashSet::new();
        let mut work = vec![from];
        while let Some(a) = work.pop() {
            for n in self.succ.get(&a).map_or(&[][..], Vec::as_slice) {
                let Next::To(t) = *n else { continue };
                if t == to {
                    return true;
                }
                if Some(t) != avoid && seen.insert(t) {
                    work.push(t);
                }
            }
        }
        false
    }

    /// Whether every path from `from` reaches one of `targets` before `from` again or leaving
    /// the function; `Err` names where a path escapes.
    fn all_paths_reach(&self, from: u64, targets: &[u64]) -> Result<u64, String> {
        let mut seen = HashSet::new();
        let mut work: Vec<u64> = vec![from];
        let mut reached = None;
        while let Some(a) = work.pop() {
            let Some(next) = self.succ.get(&a) else {
                return Err(format!(
                    "the path runs into undecoded code at {}",
                    LinkAddr(a)
                ));
            };
            for n in next {
                match *n {
                    Next::Leave => {
                        return Err(format!("a path from {} leaves the function", LinkAddr(a)))
                    }
                    Next::Unknown => {
                        return Err(format!(
                            "a path reaches the indirect jump at {}",
                            LinkAddr(a)
                        ))
                    }
                    Next::To(t) if targets.contains(&t) => {
                        reached.get_or_insert(t);
                    }
                    Next::To(t) if t == from => {
                        return Err("a path comes back to it without passing another run".into())
                    }
                    Next::To(t) => {
                        if seen.insert(t) {
                            work.push(t);
                        }
                    }
                }
            }
        }
        reached.ok_or_else(|| "no path reaches another run".to_owned())
    }

    /// Whether every path to `to` comes through one of `regions` (`[start, end)`), not from
    /// the function's entry or `to` itself; the region's start when so.
    fn all_paths_come_through(&self, to: u64, regions: &[(u64, u64)]) -> Option<u64> {
        if self.indirect {
            return None;
        }
        let mut seen = HashSet::new();
        let mut work = vec![to];
        let mut through = None;
        while let Some(a) = work.pop() {
            if a == self.start {
                return None;
            }
            let preds = self.pred.get(&a)?;
            for &p in preds {
                if let Some(&(s, _)) = regions.iter().find(|(s, e)| p >= *s && p < *e) {
                    through.get_or_insert(s);
                } else if p == to || p == self.start {
                    return None;
                } else if seen.insert(p) {
                    work.push(p);
                }
            }
        }
        through
    }
}

/// What happened to one run of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunVerdict {
    pub run: LineRun,
    pub kept: bool,
    /// Why, as one sentence for `--explain` and `resolve`.
    pub why: String,
}

/// Chooses which of `runs` (one function copy's runs of a line, address order) carry a probe.
/// With one run, or no decoded code, every run is kept.
#[must_use]
pub fn choose_runs(cfg: &Cfg, runs: &[LineRun]) -> Vec<RunVerdict> {
    if runs.len() < 2 {
        return runs
            .iter()
            .map(|&run| RunVerdict {
                run,
                kept: true,
                why: "the line's only run".to_owned(),
            })
            .collect();
    }
    let mut kept: Vec<bool> = vec![true; runs.len()];
    let mut why: Vec<String> = vec![String::new(); runs.len()];
    if cfg.succ.is_empty() {
        for (i, run) in runs.iter().enumerate() {
            why[i] = format!(
                "run at {} kept: the function's code could not be decoded",
                run.addr
            );
        }
    } else {
        // First the runs every path reaches through an earlier one (the statement's later
        // pieces): the probe stays where the statement starts. Then, of the rest, the runs
        // every path leaves for another (a piece on a side path before the join).
        for i in 0..runs.len() {
            let regions: Vec<(u64, u64)> = (0..runs.len())
                .filter(|&j| j != i && kept[j])
                .map(|j| (runs[j].addr.0, runs[j].end.0.max(runs[j].addr.0 + 1)))
                .collect();
            if let Some(s) = cfg.all_paths_come_through(runs[i].addr.0, &regions) {
                kept[i] = false;
                why[i] = format!(
                    "run at {} gives way: every path to it comes through the run at {} first",
                    runs[i].addr,
                    LinkAddr(s)
                );
            }
        }
        for i in 0..runs.len() {
            if !kept[i] {
                continue;
            }
            let targets: Vec<u64> = (0..runs.len())
                .filter(|&j| j != i && kept[j])
                .map(|j| runs[j].addr.0)
                .collect();
            let at = runs[i].addr;
            match cfg.all_paths_reach(at.0, &targets) {
                Ok(t) => {
                    kept[i] = false;
                    why[i] = format!(
                        "run at {at} gives way: every path from it reaches the run at {} before it returns",
                        LinkAddr(t)
                    );
                }
                Err(escape) => why[i] = format!("run at {at} kept: {escape}"),
            }
        }
    }
    runs.iter()
        .zip(kept)
        .zip(why)
        .map(|((&run, kept), why)| RunVerdict { run, kept, why })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(addr: u64, end: u64) -> LineRun {
        LineRun {
            addr: LinkAddr(addr),
            line_end: LinkAddr(end),
            end: LinkAddr(end),
        }
    }

    /// The Go `append` shape: 0x1000 `jae 0x1004` (fast path) / 0x1002 nop (slow-path piece
    /// of the line) / 0x1003 nop (other line's code) / 0x1004 nop (the line after the join) /
    /// 0x1005 ret.
    #[test]
    fn a_run_every_path_leaves_for_another_gives_way() {
        let f = Function::decode(&[0x73, 0x02, 0x90, 0x90, 0x90, 0xc3], 0x1000);
        let cfg = Cfg::of(&f, 0x1000, 0x1006);
        let v = choose_runs(&cfg, &[run(0x1002, 0x1003), run(0x1004, 0x1005)]);
        assert_eq!(
            v.iter().map(|v| v.kept).collect::<Vec<_>>(),
            vec![false, true],
            "{v:#?}"
        );
        assert_eq!(
            v[0].why,
            "run at 0x1002 gives way: every path from it reaches the run at 0x1004 before it returns"
        );
        assert_eq!(
            v[1].why,
            "run at 0x1004 kept: a path from 0x1005 leaves the function"
        );
    }

    /// Runs on disjoint paths (each branch ends in its own return) both keep a probe; a run
    /// only reached through another (the conditional call after its test) gives way.
    #[test]
    fn disjoint_runs_are_kept_and_dominated_ones_give_way() {
        // 0x1000 jz 0x1003 / 0x1002 ret / 0x1003 ret
        let f = Function::decode(&[0x74, 0x01, 0xc3, 0xc3], 0x1000);
        let cfg = Cfg::of(&f, 0x1000, 0x1004);
        let v = choose_runs(&cfg, &[run(0x1002, 0x1003), run(0x1003, 0x1004)]);
        assert_eq!(
            v.iter().map(|v| v.kept).collect::<Vec<_>>(),
            vec![true, true]
        );

        // 0x1000 nop (stmt of another line) / 0x1001 jz 0x1004 (the line's test) / 0x1003 ret
        // / 0x1004 nop (the line's call) / 0x1005 ret
        let f = Function::decode(&[0x90, 0x74, 0x01, 0xc3, 0x90, 0xc3], 0x1000);
        let cfg = Cfg::of(&f, 0x1000, 0x1006);
        let v = choose_runs(&cfg, &[run(0x1001, 0x1003), run(0x1004, 0x1005)]);
        assert_eq!(
            v.iter().map(|v| v.kept).collect::<Vec<_>>(),
            vec![true, false]
        );
        assert_eq!(
            v[1].why,
            "run at 0x1004 gives way: every path to it comes through the run at 0x1001 first"
        );
    }

    /// A loop: the run at the loop's top is reached again from the bottom, so it never gives
    /// way to itself, and an indirect jump keeps every run.
    #[test]
    fn loops_and_indirect_jumps_keep_runs() {
        // 0x1000 nop / 0x1001 nop / 0x1002 jmp 0x1000
        let f = Function::decode(&[0x90, 0x90, 0xeb, 0xfc], 0x1000);
        let cfg = Cfg::of(&f, 0x1000, 0x1004);
        let v = choose_runs(&cfg, &[run(0x1000, 0x1001), run(0x1001, 0x1002)]);
        // The second is only reached through the first (the statement's start stays); the
        // first, with no other run left, comes back to itself each time round.
        assert_eq!(
            v.iter().map(|v| v.kept).collect::<Vec<_>>(),
            vec![true, false]
        );
        assert_eq!(
            v[0].why,
            "run at 0x1000 kept: a path comes back to it without passing another run"
        );

        // 0x1000 nop / 0x1001 jmp *%rax / 0x1003 nop / 0x1004 ret
        let f = Function::decode(&[0x90, 0xff, 0xe0, 0x90, 0xc3], 0x1000);
        let cfg = Cfg::of(&f, 0x1000, 0x1005);
        let v = choose_runs(&cfg, &[run(0x1000, 0x1001), run(0x1003, 0x1004)]);
        assert_eq!(
            v.iter().map(|v| v.kept).collect::<Vec<_>>(),
            vec![true, true]
        );
        assert_eq!(
            v[0].why,
            "run at 0x1000 kept: a path reaches the indirect jump at 0x1001"
        );
    }
}
