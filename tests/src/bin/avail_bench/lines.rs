//! The statement lines of one source file in a built fixture: every line that has an `is_stmt`
//! row in the DWARF line table (what a compiler marks as the start of a statement, and what a
//! debugger's `break FILE:LINE` is for).
//!
//! Read here with gimli, not through the agent or lldb, so neither side of the comparison
//! decides which lines are counted.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::Path;

use object::{Object, ObjectSection};

/// Lines of `source` (matched by its path as the debug info names it, or by the last two
/// components of it) with at least one `is_stmt` row in `exe`.
pub fn statement_lines(exe: &Path, source: &Path) -> Result<BTreeSet<u32>, String> {
    let data = std::fs::read(exe).map_err(|e| format!("read {}: {e}", exe.display()))?;
    let file = object::File::parse(&*data).map_err(|e| format!("parse {}: {e}", exe.display()))?;
    let load = |id: gimli::SectionId| -> Result<Cow<'_, [u8]>, gimli::Error> {
        Ok(file
            .section_by_name(id.name())
            .and_then(|s| s.uncompressed_data().ok())
            .unwrap_or(Cow::Borrowed(&[])))
    };
    let owned =
        gimli::DwarfSections::load(load).map_err(|e| format!("DWARF of {}: {e}", exe.display()))?;
    let dwarf = owned.borrow(|s| gimli::EndianSlice::new(s, gimli::LittleEndian));
    let want = suffix(source, 2);
    let mut lines = BTreeSet::new();
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        let Some(program) = unit.line_program.clone() else {
            continue;
        };
        let mut rows = program.rows();
        while let Ok(Some((header, row))) = rows.next_row() {
            if !row.is_stmt() || row.end_sequence() {
                continue;
            }
            let Some(line) = row.line().and_then(|l| u32::try_from(l.get()).ok()) else {
                continue;
            };
            let Some(entry) = row.file(header) else {
                continue;
            };
            let mut path = String::new();
            if let Some(dir) = entry.directory(header) {
                if let Ok(d) = dwarf.attr_string(&unit, dir) {
                    path.push_str(&d.to_string_lossy());
                    path.push('/');
                }
            }
            if let Ok(n) = dwarf.attr_string(&unit, entry.path_name()) {
                path.push_str(&n.to_string_lossy());
            }
            if suffix(Path::new(&path), 2) == want {
                lines.insert(line);
            }
        }
    }
    if lines.is_empty() {
        return Err(format!(
            "no statement line of {} in the line table of {}",
            source.display(),
            exe.display()
        ));
    }
    Ok(lines)
}

/// The last `n` components of `p`, joined by `/`.
fn suffix(p: &Path, n: usize) -> String {
    let parts: Vec<_> = p
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    parts[parts.len().saturating_sub(n)..].join("/")
}
