//! `file:line` → one probe point per function copy that owns code for the line, carrying every
//! row run of the line in that copy.
//!
//! Why the runs: in optimized code a statement's code is often split into several runs of
//! line-table rows on different paths (a Go `append` that grows the slice, a call on one branch).
//! Which of them must carry a probe so that every execution passes exactly one is a question
//! about control flow, answered by [`crate::codegen::cfg`] on the function's decoded code; this
//! module only reports what the line table says.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

use gimli::Reader as _;

use super::{Binary, FileOffset, LinkAddr, ResolveError, R};

/// Where a probe goes for one copy of a source line, and the scope it sees there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePoint {
    pub addr: LinkAddr,
    pub file_offset: FileOffset,
    /// Name of the function (or inlined copy) the point is in.
    pub function: String,
    /// Source file as the debug info names it (full path).
    pub file: String,
    pub line: u32,
    /// Where the next line-table row starts: instructions in `[addr, line_end)` belong to
    /// this statement (the placement window).
    pub line_end: LinkAddr,
    /// The enclosing function's code range (for branch-target checks during placement).
    pub func_start: LinkAddr,
    pub func_end: LinkAddr,
    /// Every row run of the line in this function copy that starts a statement (or, when none
    /// does, every run), in address order; this point is at one of them.
    pub runs: Vec<LineRun>,
    pub(super) unit: usize,
    /// Offset of the `DW_TAG_subprogram` in its unit (frame base).
    pub(super) subprogram: usize,
    /// Offset of the innermost scope: the subprogram, or the inlined copy the point is in.
    pub(super) scope: usize,
}

/// A maximal stretch of consecutive line-table rows (of the file) that belong to the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineRun {
    /// Where a probe for this run goes: its first statement row (past the prologue).
    pub addr: LinkAddr,
    /// Where the row at `addr` ends (that probe's placement window).
    pub line_end: LinkAddr,
    /// Where the run's last row ends.
    pub end: LinkAddr,
}

/// One line-table row, reduced to what resolution needs.
#[derive(Debug, Clone, Copy)]
struct Row {
    addr: u64,
    line: u32,
    is_stmt: bool,
    /// Which sequence of the line program the row is in (rows of different sequences are
    /// never one run).
    seq: u32,
}

/// How a user-given file name matches a path from the debug info.
fn file_matches(query: &str, candidate: &str) -> bool {
    let q = Path::new(query);
    let c = Path::new(candidate);
    if q.is_absolute() {
        return normalize(q) == normalize(c);
    }
    // Path suffix on component boundaries ("fixtures/c/orders.c", or a bare basename).
    let qc: Vec<_> = normalize(q)
        .components()
        .map(|c| c.as_os_str().to_owned())
        .collect();
    let cc: Vec<_> = normalize(c)
        .components()
        .map(|c| c.as_os_str().to_owned())
        .collect();
    !qc.is_empty() && cc.len() >= qc.len() && cc[cc.len() - qc.len()..] == qc[..]
}

/// Drops `.` components and folds `..` where possible, without touching the file system
/// (the target's files may live in another mount namespace).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for comp in p.components() {
        match comp {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Edit distance, for "closest" suggestions.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A unit's rows by file, and every row address of the unit.
type UnitRows = (HashMap<String, Vec<Row>>, Vec<u64>);

impl Binary {
    /// Full path of a line-table file entry: comp_dir / directory / name.
    pub(super) fn file_entry_path(
        &self,
        unit: &gimli::Unit<R>,
        header: &gimli::LineProgramHeader<R>,
        file_index: u64,
    ) -> Option<String> {
        let entry = header.file(file_index)?;
        let mut path = PathBuf::new();
        if let Some(dir) = &unit.comp_dir {
            path.push(dir.to_string_lossy().ok()?.as_ref());
        }
        if let Some(dir) = entry.directory(header) {
            let dir = self.dwarf.attr_string(unit, dir).ok()?;
            path.push(dir.to_string_lossy().ok()?.as_ref());
        }
        let name = self.dwarf.attr_string(unit, entry.path_name()).ok()?;
        path.push(name.to_string_lossy().ok()?.as_ref());
        Some(normalize(&path).to_string_lossy().into_owned())
    }

    /// Every source file the line tables mention, sorted, without duplicates.
    ///
    /// # Errors
    /// [`ResolveError::NoDebugInfo`] or malformed line programs.
    pub fn source_files(&self) -> Result<Vec<String>, ResolveError> {
        self.require_debug_info()?;
        Ok(self.file_units().keys().cloned().collect())
    }

    /// Source file → the units whose line-table headers name it, built once per binary (the
    /// headers' file tables are the expensive part of finding a file in a large binary).
    fn file_units(&self) -> &BTreeMap<String, Vec<usize>> {
        self.files.get_or_init(|| {
            let mut all: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for (ui, unit) in self.units.iter().enumerate() {
                let Some(program) = &unit.line_program else {
                    continue;
                };
                let header = program.header();
                for index in 0..=header.file_names().len() as u64 {
                    if let Some(p) = self.file_entry_path(unit, header, index) {
                        let units = all.entry(p).or_default();
                        if units.last() != Some(&ui) {
                            units.push(ui);
                        }
                    }
                }
            }
            all
        })
    }

    /// Rows of `unit` grouped by the file they belong to (only files matching `pick`), plus
    /// every row address of the unit (for prologue skipping).
    fn unit_rows(
        &self,
        unit: &gimli::Unit<R>,
        pick: &dyn Fn(&str) -> bool,
    ) -> Result<UnitRows, ResolveError> {
        let mut by_file: HashMap<String, Vec<Row>> = HashMap::new();
        let mut addrs = Vec::new();
        let Some(program) = unit.line_program.clone() else {
            return Ok((by_file, addrs));
        };
        // Most units never mention the file: look at the header's file table before running
        // the line program (the costly part on a large binary).
        let header = program.header();
        let mentions = (0..=header.file_names().len() as u64).any(|i| {
            self.file_entry_path(unit, header, i)
                .is_some_and(|p| pick(&p))
        });
        if !mentions {
            return Ok((by_file, addrs));
        }
        let mut paths: HashMap<u64, Option<String>> = HashMap::new();
        let mut rows = program.rows();
        let mut seq = 0u32;
        while let Some((header, row)) = rows.next_row().map_err(self.dwarf_err("the line table"))? {
            if row.end_sequence() {
                seq += 1;
                continue;
            }
            addrs.push(row.address());
            let path = paths.entry(row.file_index()).or_insert_with(|| {
                self.file_entry_path(unit, header, row.file_index())
                    .filter(|p| pick(p))
            });
            if let (Some(path), Some(line)) = (path.as_ref(), row.line()) {
                by_file.entry(path.clone()).or_default().push(Row {
                    addr: row.address(),
                    line: u32::try_from(line.get()).unwrap_or(u32::MAX),
                    is_stmt: row.is_stmt(),
                    seq,
                });
            }
        }
        addrs.sort_unstable();
        addrs.dedup();
        Ok((by_file, addrs))
    }

    /// Every line of the files `pick` accepts that starts a statement (an `is_stmt` row), as
    /// `(file, line)`, sorted: what `resolve --coverage` walks.
    ///
    /// # Errors
    /// [`ResolveError::NoDebugInfo`] or malformed line programs.
    pub fn statement_lines(
        &self,
        pick: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<(String, u32)>, ResolveError> {
        self.require_debug_info()?;
        let units: BTreeSet<usize> = self
            .file_units()
            .iter()
            .filter(|(p, _)| pick(p))
            .flat_map(|(_, u)| u.iter().copied())
            .collect();
        let mut out: BTreeSet<(String, u32)> = BTreeSet::new();
        for ui in units {
            let (by_file, _) = self.unit_rows(&self.units[ui], pick)?;
            for (file, rows) in by_file {
                for r in rows.iter().filter(|r| r.is_stmt && r.line > 0) {
                    out.insert((file.clone(), r.line));
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Resolves `file:line` to one probe point per function (copy) with code for that line.
    ///
    /// Each point is at the copy's first run of the line and lists all of them
    /// ([`ProbePoint::runs`]); a run starts at its first `is_stmt` row (runs without one are
    /// left out unless no run has one). A run at a function's first instruction moves past the
    /// prologue (to the next row), where parameters are in their home slots.
    ///
    /// # Errors
    /// Unknown or ambiguous file, line without code, no debug info, malformed DWARF.
    pub fn resolve_line(&self, file: &str, line: u32) -> Result<Vec<ProbePoint>, ResolveError> {
        self.require_debug_info()?;
        let pick = |p: &str| file_matches(file, p);
        let mut matched: BTreeSet<String> = BTreeSet::new();
        let mut per_unit = Vec::new();
        let candidates: BTreeSet<usize> = self
            .file_units()
            .iter()
            .filter(|(p, _)| pick(p))
            .flat_map(|(_, u)| u.iter().copied())
            .collect();
        for ui in candidates {
            let (by_file, addrs) = self.unit_rows(&self.units[ui], &pick)?;
            matched.extend(by_file.keys().cloned());
            per_unit.push((ui, by_file, addrs));
        }
        if matched.is_empty() {
            return Err(self.unknown_file(file)?);
        }
        if matched.len() > 1 {
            return Err(ResolveError::AmbiguousFile {
                file: file.to_owned(),
                candidates: matched.into_iter().collect(),
            });
        }
        let path = matched.into_iter().next().unwrap_or_default();

        let mut lines_with_code = BTreeSet::new();
        // (unit, scope) → (indices of the line's rows in the unit's file rows, scope)
        let mut groups: BTreeMap<(usize, usize), (Vec<usize>, super::scope::Function)> =
            BTreeMap::new();
        let mut unit_addrs: HashMap<usize, Vec<u64>> = HashMap::new();
        let mut unit_file_rows: HashMap<usize, Vec<Row>> = HashMap::new();
        for (ui, mut by_file, addrs) in per_unit {
            let Some(rows) = by_file.remove(&path) else {
                continue;
            };
            for r in &rows {
                lines_with_code.insert(r.line);
            }
            for (i, r) in rows.iter().enumerate().filter(|(_, r)| r.line == line) {
                let Some(func) = self.live_function_at(ui, r.addr)? else {
                    continue;
                };
                groups
                    .entry((ui, func.scope))
                    .or_insert_with(|| (Vec::new(), func))
                    .0
                    .push(i);
            }
            unit_addrs.insert(ui, addrs);
            unit_file_rows.insert(ui, rows);
        }
        lines_with_code.remove(&0);
        if groups.is_empty() {
            // A line can have rows only in code the build dropped (a function the linker
            // discarded, its rows left at a tombstone address): such lines are not offered,
            // the requested one included.
            let live = |l: u32| -> Result<bool, ResolveError> {
                for (ui, rows) in &unit_file_rows {
                    for r in rows.iter().filter(|r| r.line == l) {
                        if self.live_function_at(*ui, r.addr)?.is_some() {
                            return Ok(true);
                        }
                    }
                }
                Ok(false)
            };
            return Err(ResolveError::NoCodeAtLine {
                file: file.to_owned(),
                line,
                nearest: nearest_lines(&lines_with_code, line, live)?,
            });
        }
        let mut points = Vec::new();
        for ((ui, scope), (indices, func)) in groups {
            let (low, high) = (func.low_pc, func.high_pc);
            let addrs = unit_addrs.get(&ui).map(Vec::as_slice).unwrap_or_default();
            let rows = unit_file_rows
                .get(&ui)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let next_addr = |a: u64| {
                addrs
                    .iter()
                    .copied()
                    .find(|&n| n > a)
                    .unwrap_or(a)
                    .min(high)
            };
            let mut runs = Vec::new();
            let any_stmt = indices.iter().any(|&i| rows[i].is_stmt);
            for run in split_runs(&indices, rows) {
                let first = if any_stmt {
                    match run.iter().find(|&&i| rows[i].is_stmt) {
                        Some(&i) => rows[i].addr,
                        None => continue,
                    }
                } else {
                    run.iter().map(|&i| rows[i].addr).min().unwrap_or_default()
                };
                let mut addr = first;
                // A real function's first instruction is its prologue: parameters are not in
                // their home slots yet. An inlined copy has none.
                if addr == low && !func.inlined {
                    if let Some(next) = addrs.iter().copied().find(|&a| a > low && a < high) {
                        addr = next;
                    }
                }
                let last = run.iter().map(|&i| rows[i].addr).max().unwrap_or(addr);
                runs.push(LineRun {
                    addr: LinkAddr(addr),
                    line_end: LinkAddr(next_addr(addr)),
                    end: LinkAddr(next_addr(last.max(addr))),
                });
            }
            runs.sort_by_key(|r| r.addr);
            runs.dedup_by_key(|r| r.addr);
            let Some(run) = runs.first().copied() else {
                continue;
            };
            let addr = run.addr;
            let Some(file_offset) = self.file_offset(addr) else {
                return Err(ResolveError::Elf {
                    binary: self.path.clone(),
                    reason: format!(
                        "address {addr} of {path}:{line} has no file offset: no loadable \
                         segment holds it, or the program header of the one that does is corrupt"
                    ),
                });
            };
            let function = if func.inlined {
                format!("{} (inlined)", func.name)
            } else {
                func.name.clone()
            };
            points.push(ProbePoint {
                addr,
                file_offset,
                function,
                file: path.clone(),
                line,
                line_end: run.line_end,
                func_start: LinkAddr(low),
                func_end: LinkAddr(high),
                runs,
                unit: ui,
                subprogram: func.subprogram,
                scope,
            });
        }
        Ok(points)
    }

    /// [`Binary::function_at`], but only a function whose code is in this binary: the linker
    /// leaves a discarded function's DIE and rows at a tombstone address.
    fn live_function_at(
        &self,
        ui: usize,
        addr: u64,
    ) -> Result<Option<super::scope::Function>, ResolveError> {
        Ok(self
            .function_at(ui, addr)?
            .filter(|f| self.holds_code(f.low_pc, f.high_pc)))
    }

    /// Whether `[low, high)` is code of this file. A function the linker dropped (`--gc-sections`:
    /// nothing called it) keeps its DWARF with its addresses set to 0, where the file has no
    /// code: a probe there would never fire. A file with no code at all (a separate debug file
    /// opened on its own) keeps every function.
    fn holds_code(&self, low: u64, high: u64) -> bool {
        self.code.is_empty()
            || self
                .code(LinkAddr(low), LinkAddr(high.max(low.saturating_add(1))))
                .is_some()
    }

    fn unknown_file(&self, file: &str) -> Result<ResolveError, ResolveError> {
        let want = Path::new(file)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut scored: Vec<(usize, String)> = self
            .source_files()?
            .into_iter()
            .filter(|p| !p.starts_with("/usr/include") && !p.starts_with("/usr/lib"))
            .map(|p| {
                let base = Path::new(&p)
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (levenshtein(&want, &base), p)
            })
            .collect();
        scored.sort();
        let closest = scored.into_iter().take(3).map(|(_, p)| p).collect();
        Ok(ResolveError::UnknownFile {
            binary: self.path.clone(),
            file: file.to_owned(),
            closest,
        })
    }
}

/// `indices` (ascending positions in `rows`) cut into runs of consecutive rows of one sequence.
fn split_runs(indices: &[usize], rows: &[Row]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    for &i in indices {
        match out.last_mut() {
            Some(run)
                if run
                    .last()
                    .is_some_and(|&p| p + 1 == i && rows[p].seq == rows[i].seq) =>
            {
                run.push(i);
            }
            _ => out.push(vec![i]),
        }
    }
    out
}

/// Up to two lines with code on each side of `line` (never `line` itself): lines of
/// `with_code` that `live` confirms, looking at most [`NEAREST_TRIES`] lines each way.
fn nearest_lines<E>(
    with_code: &BTreeSet<u32>,
    line: u32,
    mut live: impl FnMut(u32) -> Result<bool, E>,
) -> Result<Vec<u32>, E> {
    // The first two lines `live` confirms among the first NEAREST_TRIES of `side`.
    let mut two = |side: &mut dyn Iterator<Item = &u32>| -> Result<Vec<u32>, E> {
        let mut out = Vec::new();
        for &l in side.take(NEAREST_TRIES) {
            if out.len() == 2 {
                break;
            }
            if live(l)? {
                out.push(l);
            }
        }
        Ok(out)
    };
    let below = two(&mut with_code.range(..line).rev())?;
    let above = two(&mut with_code.range(line.saturating_add(1)..))?;
    Ok(below.into_iter().rev().chain(above).collect())
}

/// Lines looked at on each side for [`nearest_lines`]: a bound on the work an error does.
const NEAREST_TRIES: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_basename_suffix_and_absolute() {
        let c = "/work/tests/fixtures/c/orders.c";
        assert!(file_matches("orders.c", c));
        assert!(file_matches("c/orders.c", c));
        assert!(file_matches("fixtures/c/orders.c", c));
        assert!(file_matches("/work/tests/fixtures/c/orders.c", c));
        assert!(file_matches("/work/tests/fixtures/c/../c/orders.c", c));
        assert!(
            !file_matches("ders.c", c),
            "suffix must end on a component boundary"
        );
        assert!(!file_matches("/other/orders.c", c));
    }

    #[test]
    fn nearest_lines_brackets_the_request() {
        let set: BTreeSet<u32> = [3, 5, 9, 12, 20].into_iter().collect();
        let all = |_| Ok::<_, ()>(true);
        assert_eq!(nearest_lines(&set, 10, all), Ok(vec![5, 9, 12, 20]));
        assert_eq!(nearest_lines(&set, 1, all), Ok(vec![3, 5]));
        assert_eq!(nearest_lines(&set, 30, all), Ok(vec![12, 20]));
        // Lines whose rows are all in code the build dropped are not offered, nor is the
        // requested line when it is one of them.
        let mut with_dead = set.clone();
        with_dead.insert(10);
        let dead = |l: u32| Ok::<_, ()>(l != 9 && l != 10 && l != 12);
        assert_eq!(nearest_lines(&with_dead, 10, dead), Ok(vec![3, 5, 20]));
    }

    #[test]
    fn levenshtein_counts_edits() {
        assert_eq!(levenshtein("order.c", "orders.c"), 1);
        assert_eq!(levenshtein("", "abc"), 3);
    }
}
