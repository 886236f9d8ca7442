//! Functions containing an address, and the variables visible at a probe point.

use gimli::constants as dw;
use gimli::Reader as _;

use super::location::Location;
use super::types::{Type, TypeRef};
use super::{Binary, ProbePoint, ResolveError, R};
use crate::addr::LinkAddr;

/// The innermost scope that contains an address: a `DW_TAG_subprogram`, or an inlined copy
/// (`DW_TAG_inlined_subroutine`) inside one.
#[derive(Debug, Clone)]
pub(super) struct Function {
    /// The scope's DIE: where its variables are.
    pub(super) scope: usize,
    /// The enclosing real function's DIE: where the frame base is.
    pub(super) subprogram: usize,
    pub(super) name: String,
    /// Whether `scope` is an inlined copy (no prologue to skip).
    pub(super) inlined: bool,
    /// The real function's code range.
    pub(super) low_pc: u64,
    pub(super) high_pc: u64,
}

/// A function (`DW_TAG_subprogram`) or inlined copy of one in a unit's DIE order: what
/// [`Binary::function_at`] needs of it without reading the unit's DIEs again.
#[derive(Debug)]
pub(crate) struct FnDie {
    offset: usize,
    subprogram: bool,
    /// Depth in the unit's DIE tree.
    depth: isize,
    ranges: Box<[(u64, u64)]>,
}

/// One scope of a [`Binary::scope_chain`].
#[derive(Debug, Clone)]
struct ChainScope {
    offset: usize,
    name: String,
    inlined: bool,
    call_file: Option<String>,
    call_line: Option<u32>,
}

/// Where a code address is, for a stack frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// How a variable came into scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VariableKind {
    Parameter,
    Local,
    /// A global or `static` with a fixed address.
    Global,
}

/// A variable resolved at one probe point.
#[derive(Debug, Clone)]
pub struct Variable {
    pub name: String,
    pub kind: VariableKind,
    pub location: Location,
    pub ty: Option<TypeRef>,
}

/// A scope entry found by walking the function's DIE tree.
struct Candidate {
    depth: usize,
    offset: gimli::UnitOffset<usize>,
    name: String,
    is_param: bool,
}

impl Binary {
    /// `DW_AT_name`, following `DW_AT_abstract_origin` / `DW_AT_specification` when absent.
    pub(super) fn die_name(
        &self,
        ui: usize,
        entry: &gimli::DebuggingInformationEntry<R>,
    ) -> Option<String> {
        let mut ui = ui;
        let mut offset = entry.offset();
        for _ in 0..4 {
            let unit = &self.units[ui];
            let e = unit.entry(offset).ok()?;
            if let Some(v) = e.attr_value(dw::DW_AT_name) {
                let s = self.dwarf.attr_string(unit, v).ok()?;
                return Some(s.to_string_lossy().ok()?.into_owned());
            }
            let next = e
                .attr_value(dw::DW_AT_abstract_origin)
                .or_else(|| e.attr_value(dw::DW_AT_specification))?;
            let r = self.resolve_ref(ui, &next)?;
            ui = r.unit;
            offset = gimli::UnitOffset(r.offset);
        }
        None
    }

    /// `die_ranges`, but a DIE whose `DW_AT_high_pc` (a size) runs past the end of the address
    /// space is an error: gimli adds it to `DW_AT_low_pc` unchecked, which a corrupt or crafted
    /// file turned into a panic (found by fuzz/elf) in a build with overflow checks, and into a
    /// wrapped range without them.
    pub(super) fn die_ranges(
        &self,
        unit: &gimli::Unit<R>,
        entry: &gimli::DebuggingInformationEntry<R>,
    ) -> gimli::Result<gimli::RangeIter<R>> {
        if let (Some(low), Some(gimli::AttributeValue::Udata(size))) = (
            entry.attr_value(gimli::DW_AT_low_pc),
            entry.attr_value(gimli::DW_AT_high_pc),
        ) {
            if let Some(begin) = self.dwarf.attr_address(unit, low)? {
                if begin.checked_add(size).is_none() {
                    return Err(gimli::Error::AddressOverflow);
                }
            }
        }
        self.dwarf.die_ranges(unit, entry)
    }

    /// Code ranges of a DIE: (lowest, highest, whether any range contains `addr`).
    fn ranges_hit(
        &self,
        unit: &gimli::Unit<R>,
        entry: &gimli::DebuggingInformationEntry<R>,
        addr: u64,
    ) -> Result<(u64, u64, bool), ResolveError> {
        let mut ranges = self
            .die_ranges(unit, entry)
            .map_err(self.dwarf_err("code ranges"))?;
        let (mut low, mut high, mut hit) = (u64::MAX, 0, false);
        while let Some(r) = ranges.next().map_err(self.dwarf_err("code ranges"))? {
            low = low.min(r.begin);
            high = high.max(r.end);
            hit |= r.begin <= addr && addr < r.end;
        }
        Ok((low, high, hit))
    }

    /// The innermost scope (function or inlined copy) whose ranges contain `addr`.
    pub(super) fn function_at(
        &self,
        ui: usize,
        addr: u64,
    ) -> Result<Option<Function>, ResolveError> {
        let unit = &self.units[ui];
        let mut best: Option<Function> = None;
        let mut best_depth = -1;
        for f in self.functions_of(ui)? {
            if !f.ranges.iter().any(|&(b, e)| b <= addr && addr < e) {
                continue;
            }
            let (low, high) = f
                .ranges
                .iter()
                .fold((u64::MAX, 0), |(lo, hi), &(b, e)| (lo.min(b), hi.max(e)));
            let name = unit
                .entry(gimli::UnitOffset(f.offset))
                .ok()
                .and_then(|e| self.die_name(ui, &e))
                .unwrap_or_else(|| "<anonymous>".to_owned());
            if f.subprogram {
                best = Some(Function {
                    scope: f.offset,
                    subprogram: f.offset,
                    name,
                    inlined: false,
                    low_pc: low,
                    high_pc: high,
                });
                best_depth = f.depth;
            } else if let Some(b) = best.as_mut() {
                if f.depth > best_depth {
                    b.scope = f.offset;
                    b.name = name;
                    b.inlined = true;
                    best_depth = f.depth;
                }
            }
        }
        Ok(best)
    }

    /// Unit `ui`'s functions and inlined copies in DIE order, built on first use (see
    /// `Binary::functions`). A DWARF error while building is returned and nothing is kept, so
    /// every lookup in that unit reports it, as the walk it replaces did.
    fn functions_of(&self, ui: usize) -> Result<&[FnDie], ResolveError> {
        let cell = &self.functions[ui];
        if let Some(v) = cell.get() {
            return Ok(v);
        }
        let unit = &self.units[ui];
        let mut cursor = unit.entries();
        let mut out = Vec::new();
        while let Some(entry) = cursor.next_dfs().map_err(self.dwarf_err("DIEs"))? {
            let tag = entry.tag();
            if tag != dw::DW_TAG_subprogram && tag != dw::DW_TAG_inlined_subroutine {
                continue;
            }
            let mut ranges = self
                .die_ranges(unit, entry)
                .map_err(self.dwarf_err("code ranges"))?;
            let mut v = Vec::new();
            while let Some(r) = ranges.next().map_err(self.dwarf_err("code ranges"))? {
                v.push((r.begin, r.end));
            }
            out.push(FnDie {
                offset: entry.offset().0,
                subprogram: tag == dw::DW_TAG_subprogram,
                depth: cursor.depth(),
                ranges: v.into_boxed_slice(),
            });
        }
        Ok(cell.get_or_init(|| out))
    }

    fn scope_candidates(&self, point: &ProbePoint) -> Result<Vec<Candidate>, ResolveError> {
        let unit = &self.units[point.unit];
        let mut tree = unit
            .entries_tree(Some(gimli::UnitOffset(point.scope)))
            .map_err(self.dwarf_err("a function's DIEs"))?;
        let root = tree.root().map_err(self.dwarf_err("a function's DIEs"))?;
        let mut out = Vec::new();
        self.walk_scope(point, root, 1, &mut out)?;
        Ok(out)
    }

    fn walk_scope(
        &self,
        point: &ProbePoint,
        node: gimli::EntriesTreeNode<'_, '_, R>,
        depth: usize,
        out: &mut Vec<Candidate>,
    ) -> Result<(), ResolveError> {
        let unit = &self.units[point.unit];
        let mut children = node.children();
        while let Some(child) = children
            .next()
            .map_err(self.dwarf_err("a function's DIEs"))?
        {
            let entry = child.entry();
            match entry.tag() {
                dw::DW_TAG_formal_parameter | dw::DW_TAG_variable => {
                    if let Some(name) = self.die_name(point.unit, entry) {
                        out.push(Candidate {
                            depth,
                            offset: entry.offset(),
                            name,
                            is_param: entry.tag() == dw::DW_TAG_formal_parameter,
                        });
                    }
                }
                dw::DW_TAG_lexical_block => {
                    let mut ranges = self
                        .die_ranges(unit, entry)
                        .map_err(self.dwarf_err("block ranges"))?;
                    let (mut any, mut hit) = (false, false);
                    while let Some(r) = ranges.next().map_err(self.dwarf_err("block ranges"))? {
                        any = true;
                        hit |= r.begin <= point.addr.0 && point.addr.0 < r.end;
                    }
                    if hit || !any {
                        self.walk_scope(point, child, depth + 1, out)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Unit-level variables with a name, as (unit, offset, name, defined-here).
    fn unit_globals(
        &self,
        ui: usize,
    ) -> Result<Vec<(gimli::UnitOffset<usize>, String, bool)>, ResolveError> {
        let unit = &self.units[ui];
        let mut tree = unit
            .entries_tree(None)
            .map_err(self.dwarf_err("unit DIEs"))?;
        let root = tree.root().map_err(self.dwarf_err("unit DIEs"))?;
        let mut children = root.children();
        let mut out = Vec::new();
        while let Some(child) = children.next().map_err(self.dwarf_err("unit DIEs"))? {
            let e = child.entry();
            if e.tag() != dw::DW_TAG_variable {
                continue;
            }
            if let Some(name) = self.die_name(ui, e) {
                out.push((e.offset(), name, e.attr_value(dw::DW_AT_location).is_some()));
            }
        }
        Ok(out)
    }

    /// Parameters and locals of the point's scope (innermost blocks included), without globals:
    /// what a debugger shows as the frame's locals.
    ///
    /// # Errors
    /// Malformed DWARF.
    pub fn locals_in_scope(&self, point: &ProbePoint) -> Result<Vec<String>, ResolveError> {
        let mut seen = std::collections::HashSet::new();
        // Go names results `~r0`: not something a user can write, and not a local yet.
        Ok(self
            .scope_candidates(point)?
            .into_iter()
            .map(|c| c.name)
            .filter(|n| !n.starts_with('~') && seen.insert(n.clone()))
            .collect())
    }

    /// Function, file and line of a link address (for stack frames), innermost first: an
    /// address inside inlined code gives one entry per inlined call (the inlined function at
    /// the line-table row, then each caller at its call site), ending with the real function.
    /// Rust names are demangled from linkage names.
    #[must_use]
    pub fn symbolize(&self, addr: LinkAddr) -> Vec<Symbol> {
        let addr = addr.0;
        if let Some(hit) = self.symbols.lock().ok().and_then(|c| c.get(&addr).cloned()) {
            return hit;
        }
        let found = self.symbolize_uncached(addr);
        if let Ok(mut c) = self.symbols.lock() {
            c.insert(addr, found.clone());
        }
        found
    }

    fn symbolize_uncached(&self, addr: u64) -> Vec<Symbol> {
        for (ui, unit) in self.units.iter().enumerate() {
            let mut cursor = unit.entries();
            if cursor.next_dfs().is_err() {
                continue;
            }
            let Some(Ok(mut ranges)) = cursor.current().map(|root| self.die_ranges(unit, root))
            else {
                continue;
            };
            let mut inside = false;
            while let Ok(Some(r)) = ranges.next() {
                inside |= r.begin <= addr && addr < r.end;
            }
            if !inside {
                continue;
            }
            let chain = self.scope_chain(ui, addr);
            if chain.is_empty() {
                continue;
            }
            let (mut file, mut line) = self.line_at(unit, addr).unzip();
            let mut out = Vec::new();
            // Innermost first: each inlined scope at the current position, then its call site
            // becomes the position in the scope around it.
            for sc in chain.iter().rev() {
                let name = if sc.inlined {
                    sc.name.clone()
                } else {
                    self.linkage_name(ui, sc.offset)
                        .unwrap_or_else(|| sc.name.clone())
                };
                out.push(Symbol {
                    function: name,
                    file: file.clone(),
                    line,
                });
                if sc.inlined {
                    // The call site, or nothing: the callee's file is never the caller's answer.
                    file = sc.call_file.clone();
                    line = sc.call_line;
                }
            }
            return out;
        }
        Vec::new()
    }

    /// The subprogram containing `addr` and the inlined scopes inside it that do, outermost
    /// first.
    fn scope_chain(&self, ui: usize, addr: u64) -> Vec<ChainScope> {
        let unit = &self.units[ui];
        let mut cursor = unit.entries();
        let mut chain: Vec<(isize, ChainScope)> = Vec::new();
        while let Ok(Some(entry)) = cursor.next_dfs() {
            let tag = entry.tag();
            if tag != dw::DW_TAG_subprogram && tag != dw::DW_TAG_inlined_subroutine {
                continue;
            }
            let entry = entry.clone();
            let depth = cursor.depth();
            let Ok((_, _, hit)) = self.ranges_hit(unit, &entry, addr) else {
                continue;
            };
            if !hit {
                continue;
            }
            chain.retain(|(d, _)| *d < depth);
            let inlined = tag == dw::DW_TAG_inlined_subroutine;
            if !inlined {
                chain.clear();
            }
            let call_line = entry
                .attr_value(dw::DW_AT_call_line)
                .and_then(|v| v.udata_value())
                .and_then(|l| u32::try_from(l).ok());
            // gimli reads DW_AT_call_file as `FileIndex`, never as plain data: an index into the
            // file table of this unit's line program (the unit holding the inlined_subroutine
            // DIE), 1-based in DWARF 4 and 0-based in DWARF 5, which `LineProgramHeader::file`
            // handles.
            let call_file = match entry.attr_value(dw::DW_AT_call_file) {
                Some(gimli::AttributeValue::FileIndex(f)) => unit
                    .line_program
                    .as_ref()
                    .and_then(|p| self.file_entry_path(unit, p.header(), f)),
                _ => None,
            };
            chain.push((
                depth,
                ChainScope {
                    offset: entry.offset().0,
                    name: self
                        .die_name(ui, &entry)
                        .unwrap_or_else(|| "<anonymous>".to_owned()),
                    inlined,
                    call_file,
                    call_line,
                },
            ));
        }
        chain.into_iter().map(|(_, c)| c).collect()
    }

    /// The demangled `DW_AT_linkage_name` of a Rust function, without its hash.
    fn linkage_name(&self, ui: usize, offset: usize) -> Option<String> {
        let unit = &self.units[ui];
        let e = unit.entry(gimli::UnitOffset(offset)).ok()?;
        let v = e
            .attr_value(dw::DW_AT_linkage_name)
            .or_else(|| e.attr_value(dw::DW_AT_MIPS_linkage_name))?;
        let raw = self.dwarf.attr_string(unit, v).ok()?;
        let raw = raw.to_string_lossy().ok()?;
        let d = rustc_demangle::try_demangle(&raw).ok()?;
        Some(format!("{d:#}"))
    }

    /// The row of `unit`'s line table covering `addr`: (file, line).
    fn line_at(&self, unit: &gimli::Unit<R>, addr: u64) -> Option<(String, u32)> {
        let program = unit.line_program.clone()?;
        let mut rows = program.rows();
        let mut prev: Option<(u64, u64, u32)> = None; // (address, file index, line)
        while let Ok(Some((header, row))) = rows.next_row() {
            if let Some((pa, pf, pl)) = prev {
                if pa <= addr && addr < row.address() {
                    let file = self.file_entry_path(unit, header, pf)?;
                    return Some((file, pl));
                }
            }
            prev = if row.end_sequence() {
                None
            } else {
                Some((
                    row.address(),
                    row.file_index(),
                    row.line().map_or(0, |l| l.get() as u32),
                ))
            };
        }
        None
    }

    /// Names a user may write at `point`: parameters, locals of the enclosing blocks, and the
    /// unit's defined globals.
    ///
    /// # Errors
    /// Malformed DWARF.
    pub fn names_in_scope(&self, point: &ProbePoint) -> Result<Vec<String>, ResolveError> {
        let mut names: Vec<String> = self
            .scope_candidates(point)?
            .into_iter()
            .map(|c| c.name)
            .collect();
        // Compiler-made globals (`<T as Debug>::{vtable}`) resolve but are noise in a list.
        let mut globals: Vec<String> = self
            .unit_globals(point.unit)?
            .into_iter()
            .filter(|g| g.2 && !g.1.starts_with('<') && !g.1.contains('{'))
            .map(|g| g.1)
            .collect();
        globals.sort();
        names.extend(globals);
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        Ok(names)
    }

    /// Resolves `name` at `point`: the innermost local or parameter, else a global of the same
    /// unit, else a global defined in any unit.
    ///
    /// # Errors
    /// [`ResolveError::NotInScope`] (listing what is), [`ResolveError::OptimizedOut`] when no
    /// location covers the point, or an unsupported location operation.
    pub fn variable(&self, point: &ProbePoint, name: &str) -> Result<Variable, ResolveError> {
        let cands = self.scope_candidates(point)?;
        if let Some(c) = cands
            .iter()
            .filter(|c| c.name == name)
            .max_by_key(|c| c.depth)
        {
            let kind = if c.is_param {
                VariableKind::Parameter
            } else {
                VariableKind::Local
            };
            return self.variable_at(point, point.unit, c.offset, name, kind);
        }
        let mut units: Vec<usize> = vec![point.unit];
        units.extend((0..self.units.len()).filter(|&u| u != point.unit));
        // Go and Rust qualify globals (`main.total`, `orders::TOTAL`): an unqualified name
        // matches the qualified global of the point's own package first, then any package.
        let package = point
            .function
            .rsplit_once("::")
            .map(|(p, _)| format!("{p}::"))
            .or_else(|| {
                point
                    .function
                    .rsplit_once('.')
                    .map(|(p, _)| format!("{p}."))
            });
        let mut qualified = None;
        for ui in units {
            for (off, gname, defined) in self.unit_globals(ui)? {
                if !defined {
                    continue;
                }
                if gname == name {
                    return self.variable_at(point, ui, off, name, VariableKind::Global);
                }
                let tail_match = gname
                    .strip_suffix(name)
                    .is_some_and(|p| p.ends_with('.') || p.ends_with("::"));
                if tail_match {
                    let own = package
                        .as_ref()
                        .is_some_and(|p| gname.strip_prefix(p.as_str()) == Some(name));
                    if own || qualified.is_none() {
                        let better = own
                            || qualified.as_ref().is_none_or(
                                |(_, _, o): &(usize, gimli::UnitOffset<usize>, bool)| !*o,
                            );
                        if better {
                            qualified = Some((ui, off, own));
                        }
                    }
                }
            }
        }
        if let Some((ui, off, _)) = qualified {
            return self.variable_at(point, ui, off, name, VariableKind::Global);
        }
        Err(ResolveError::NotInScope {
            var: name.to_owned(),
            file: point.file.clone(),
            line: point.line,
            in_scope: self.names_in_scope(point)?,
        })
    }

    fn variable_at(
        &self,
        point: &ProbePoint,
        ui: usize,
        offset: gimli::UnitOffset<usize>,
        name: &str,
        kind: VariableKind,
    ) -> Result<Variable, ResolveError> {
        let unit = &self.units[ui];
        let entry = unit
            .entry(offset)
            .map_err(self.dwarf_err("a variable DIE"))?;
        let ty = self.type_attr(ui, &entry);
        if entry.attr_value(dw::DW_AT_const_value).is_some() {
            // A compile-time constant: its bytes are in the debug info, as lldb shows them.
            let Some(bytes) = self.const_bytes(&entry, ty)? else {
                return Err(ResolveError::UnsupportedLocation {
                    var: name.to_owned(),
                    file: point.file.clone(),
                    line: point.line,
                    op: "DW_AT_const_value of an unknown form".to_owned(),
                });
            };
            return Ok(Variable {
                name: name.to_owned(),
                kind,
                location: Location::Implicit(bytes),
                ty,
            });
        }
        let Some(attr) = entry.attr_value(dw::DW_AT_location) else {
            return Err(Self::optimized_out(point, name));
        };
        let location = self.location_at(point, ui, attr, name)?;
        Ok(Variable {
            name: name.to_owned(),
            kind,
            location,
            ty,
        })
    }

    /// The bytes of a compile-time constant (`DW_AT_const_value`) of type `ty`: a block as it
    /// is, an integer form as `ty`'s size of little-endian bytes (8 when unknown). `None` when
    /// the DIE has none, or a form that holds no bytes (a string).
    pub(super) fn const_bytes(
        &self,
        entry: &gimli::DebuggingInformationEntry<R>,
        ty: Option<TypeRef>,
    ) -> Result<Option<Vec<u8>>, ResolveError> {
        // A `DW_FORM_dataN` constant takes its sign from the type (DWARF 5, 7.5.6).
        let signed = matches!(
            self.type_of(ty)?,
            Type::Int { signed: true, .. } | Type::Enum { signed: true, .. }
        );
        let word = |x: u64, bits: u32| -> Result<Vec<u8>, ResolveError> {
            let x = if signed && bits < 64 && (x >> (bits - 1)) & 1 == 1 {
                x | (u64::MAX << bits)
            } else {
                x
            };
            let n = self.size_of(ty)?.unwrap_or(8).clamp(1, 8) as usize;
            Ok(x.to_le_bytes()[..n].to_vec())
        };
        Ok(Some(match entry.attr_value(dw::DW_AT_const_value) {
            Some(gimli::AttributeValue::Block(b)) => b
                .to_slice()
                .map_err(self.dwarf_err("a constant's bytes"))?
                .into_owned(),
            Some(gimli::AttributeValue::Data1(x)) => word(u64::from(x), 8)?,
            Some(gimli::AttributeValue::Data2(x)) => word(u64::from(x), 16)?,
            Some(gimli::AttributeValue::Data4(x)) => word(u64::from(x), 32)?,
            Some(gimli::AttributeValue::Data8(x) | gimli::AttributeValue::Udata(x)) => word(x, 64)?,
            Some(gimli::AttributeValue::Sdata(x)) => word(x as u64, 64)?,
            _ => return Ok(None),
        }))
    }

    pub(super) fn optimized_out(point: &ProbePoint, name: &str) -> ResolveError {
        ResolveError::OptimizedOut {
            var: name.to_owned(),
            pc: point.addr,
            file: point.file.clone(),
            line: point.line,
        }
    }
}
