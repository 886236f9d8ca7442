//! ELF + DWARF: `file:line` → probe points, names → variable locations and types.
//!
//! The only module that reads DWARF; no gimli type leaves it. Callers get owned, plain
//! answers ([`ProbePoint`], [`Variable`], [`Type`]) or a [`ResolveError`] that names the object
//! and what to do. A wrong value is worse than none: a location that does not cover the PC is
//! [`ResolveError::OptimizedOut`], never a read from a stale slot.

mod bytes;
mod entry;
pub use bytes::map_file;
#[cfg(test)]
mod cyclic_tests;
mod dwexpr;
mod lines;
mod location;
pub mod lsda;
pub mod refs;
mod scope;
mod symbolize;
mod types;
mod unwind;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object::{Object, ObjectSection, ObjectSegment};

pub use crate::addr::{FileOffset, LinkAddr};
pub use lines::{LineRun, ProbePoint};
pub use location::{alu_code, alu_unary, AddrBase, DwBin, DwExpr, DwUn, Location};
pub use scope::{Symbol, Variable, VariableKind};
pub use symbolize::{Frame, Symbolizer, STACK_FRAMES};
pub use types::{Member, Type, TypeRef, Variant};
pub use unwind::UnwindRegs;

pub(crate) type R = gimli::EndianReader<gimli::RunTimeEndian, bytes::Bytes>;

/// Why a request could not be resolved. Each message names the object and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot read {binary}: {source}")]
    Io {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("{binary} is not an ELF file this agent can read: {reason}")]
    Elf { binary: PathBuf, reason: String },
    #[error(
        "{binary} has no debug info (.debug_info); rebuild it with -g (gcc/clang), keep debuginfo \
         (Rust: debug = true in the profile; Go: do not pass -ldflags=-w), or install its debug \
         symbols package"
    )]
    NoDebugInfo { binary: PathBuf },
    #[error("no source file `{file}` in the debug info of {binary}; closest: {}", list_or_none(.closest))]
    UnknownFile {
        binary: PathBuf,
        file: String,
        closest: Vec<String>,
    },
    #[error("`{file}` matches several source files; give more of the path: {}", .candidates.join(", "))]
    AmbiguousFile {
        file: String,
        candidates: Vec<String>,
    },
    #[error("{file}:{line} has no code; nearest lines with code: {}", join_lines(.nearest))]
    NoCodeAtLine {
        file: String,
        line: u32,
        nearest: Vec<u32>,
    },
    #[error("`{var}` is not in scope at {file}:{line}; in scope: {}", list_or_none(.in_scope))]
    NotInScope {
        var: String,
        file: String,
        line: u32,
        in_scope: Vec<String>,
    },
    #[error("`{var}` is optimized out at {pc} ({file}:{line}); try a line where it is live")]
    OptimizedOut {
        var: String,
        pc: LinkAddr,
        file: String,
        line: u32,
    },
    #[error("`{var}` at {file}:{line} uses the DWARF location operation {op}, which the agent cannot capture yet")]
    UnsupportedLocation {
        var: String,
        file: String,
        line: u32,
        op: String,
    },
    #[error("no call frame information covers {pc} in {binary}; cannot find the frame base there")]
    NoCfi { binary: PathBuf, pc: LinkAddr },
    #[error("malformed DWARF in {binary} while reading {what}: {source}")]
    Dwarf {
        binary: PathBuf,
        what: &'static str,
        source: gimli::Error,
    },
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "(none)".to_owned()
    } else {
        v.join(", ")
    }
}

fn join_lines(v: &[u32]) -> String {
    if v.is_empty() {
        "(none in this file)".to_owned()
    } else {
        v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
    }
}

/// Source language of a binary, from its compilation units' `DW_AT_language`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    C,
    Cpp,
    Rust,
    Go,
    Other,
}

impl Language {
    /// The `language` the daemon is told: it accepts only python, go and rust, and Rust's
    /// lldb-dap path is the one that serves C and C++ (contract.md §11).
    #[must_use]
    pub fn daemon_name(self) -> &'static str {
        match self {
            Language::Go => "go",
            _ => "rust",
        }
    }
}

/// Where separate debug files are looked for: `DETRIX_DEBUG_ROOT` (colon-separated), else
/// `/usr/lib/debug`, as gdb does.
fn debug_roots() -> Vec<PathBuf> {
    match std::env::var_os("DETRIX_DEBUG_ROOT") {
        Some(v) => std::env::split_paths(&v).collect(),
        None => vec![PathBuf::from("/usr/lib/debug")],
    }
}

/// The separate debug file of `exe`, by build-id (`<root>/.build-id/ab/cdef….debug`) or by
/// `.gnu_debuglink` (beside the binary, in its `.debug/`, or under `<root>/<its dir>/`), the
/// same places gdb looks.
fn separate_debug_file(exe: &Path, file: &object::File<'_>) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(Some(id)) = file.build_id() {
        if id.len() > 1 {
            let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
            for root in debug_roots() {
                candidates.push(
                    root.join(".build-id")
                        .join(&hex[..2])
                        .join(format!("{}.debug", &hex[2..])),
                );
            }
        }
    }
    if let Ok(Some((name, _crc))) = file.gnu_debuglink() {
        let name = String::from_utf8_lossy(name).into_owned();
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join(&name));
            candidates.push(dir.join(".debug").join(&name));
            for root in debug_roots() {
                candidates.push(root.join(dir.strip_prefix("/").unwrap_or(dir)).join(&name));
            }
        }
    }
    candidates.into_iter().find(|p| p.is_file() && p != exe)
}

/// One loadable segment (`PT_LOAD`), for link address ↔ file offset translation.
#[derive(Debug, Clone, Copy)]
struct Segment {
    vaddr: u64,
    memsz: u64,
    offset: u64,
    filesz: u64,
}

/// A parsed executable or shared object with its DWARF and CFI.
///
/// Parsing is the costly part, so one `Binary` serves every request on that file.
pub struct Binary {
    path: PathBuf,
    /// `ET_DYN` (PIE or shared object): link addresses are relative to a load bias.
    pub is_dyn: bool,
    segments: Vec<Segment>,
    /// Bytes of the executable sections, by link address, for instruction decoding.
    code: Vec<(u64, bytes::Bytes)>,
    /// Bytes of the read-only data sections, by link address: where jump tables are.
    rodata: Vec<(u64, bytes::Bytes)>,
    /// `[start, end)` of the `.got` and `.got.plt` sections: an indirect jump through a slot
    /// there is a tail call to another function's start.
    got: Vec<(u64, u64)>,
    /// Every allocated section that is not code, by link address, and the entry point: where
    /// [`refs::Refs`] looks for taken addresses.
    alloc_data: Vec<(u64, bytes::Bytes)>,
    entry: u64,
    /// Built by the first [`Binary::refs`].
    refs: std::sync::OnceLock<refs::Refs>,
    dwarf: gimli::Dwarf<R>,
    units: Vec<gimli::Unit<R>>,
    eh_frame: Option<(gimli::EhFrame<R>, gimli::BaseAddresses)>,
    debug_frame: Option<(gimli::DebugFrame<R>, gimli::BaseAddresses)>,
    /// `.gcc_except_table` and its link address: the LSDAs `.eh_frame`'s FDEs name.
    except_table: Option<(bytes::Bytes, u64)>,
    /// Where Go's `runtime.deferreturn` is (the symbol table's address), if the binary has it.
    pub go_deferreturn: Option<u64>,
    /// Every FDE of `.eh_frame` / `.debug_frame`, sorted by address: built by the first CFI
    /// lookup (each lookup was a linear walk of the section, the largest cost of resolving a
    /// line in a big Rust binary).
    eh_fdes: std::sync::OnceLock<Vec<unwind::Fde>>,
    debug_fdes: std::sync::OnceLock<Vec<unwind::Fde>>,
    has_debug_info: bool,
    goid_offset: std::sync::OnceLock<Option<u64>>,
    language: std::sync::OnceLock<Language>,
    /// Every source file the line tables name → the units whose line tables name it. Built by
    /// the first request, so later ones run only the line programs of the units they need.
    files: std::sync::OnceLock<std::collections::BTreeMap<String, Vec<usize>>>,
    /// GNU build-id as hex, when the binary has one.
    pub build_id: Option<String>,
    /// Symbolized addresses (stack frames repeat at every hit).
    symbols: std::sync::Mutex<std::collections::HashMap<u64, Vec<scope::Symbol>>>,
    /// Per unit, its functions and inlined copies with their code ranges, built by the first
    /// lookup of an address in the unit ([`scope`]): each lookup walked every DIE of the unit,
    /// ~25–50 ms per line in a large Rust binary.
    functions: Vec<std::sync::OnceLock<Vec<scope::FnDie>>>,
}

impl std::fmt::Debug for Binary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binary")
            .field("path", &self.path)
            .field("units", &self.units.len())
            .finish_non_exhaustive()
    }
}

impl Binary {
    /// Reads and parses `path`. Debug sections may be compressed (`SHF_COMPRESSED`, as Go does).
    ///
    /// # Errors
    /// [`ResolveError::Io`] or [`ResolveError::Elf`]; missing DWARF is reported later, by the
    /// first request that needs it, so a binary without debug info can still be inspected.
    pub fn open(path: &Path) -> Result<Self, ResolveError> {
        Self::open_named(path, path)
    }

    /// Reads `path` but names the binary `name` in messages (e.g. reads `/proc/PID/exe`,
    /// names the file it points to).
    ///
    /// # Errors
    /// As [`Binary::open`].
    pub fn open_named(path: &Path, name: &Path) -> Result<Self, ResolveError> {
        let io = |source| ResolveError::Io {
            binary: name.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // Mapped only when only root can truncate it under us (SIGBUS); see `bytes::map_file`.
        let map = bytes::map_file(&file).map_err(io)?;
        // Requests read scattered pieces (unit headers, names, one unit's DIEs): without this
        // the kernel maps 64 KiB around every page touched, and RSS counts all of it.
        let _ = map.advise(memmap2::Advice::Random);
        Self::parse(name, &Arc::new(map))
    }

    /// Parses a binary held in memory (one built or mutated in place, as the fuzzer does),
    /// named `name` in messages.
    ///
    /// # Errors
    /// As [`Binary::open`].
    pub fn from_bytes(name: &Path, data: &[u8]) -> Result<Self, ResolveError> {
        let map = bytes::anon_copy(data).map_err(|source| ResolveError::Io {
            binary: name.to_owned(),
            source,
        })?;
        Self::parse(name, &Arc::new(map))
    }

    /// [`Binary::open_named`], shared: a binary already parsed in this process (same build-id,
    /// or same device, inode, size and mtime when it has none) is returned as is, without
    /// parsing its DWARF again — every wake, every target running the same executable.
    ///
    /// # Errors
    /// As [`Binary::open`].
    pub fn open_cached(path: &Path, name: &Path) -> Result<Arc<Self>, ResolveError> {
        use std::os::unix::fs::MetadataExt as _;
        static CACHE: std::sync::Mutex<Vec<(String, std::sync::Weak<Binary>)>> =
            std::sync::Mutex::new(Vec::new());
        let io = |source| ResolveError::Io {
            binary: name.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let file_key = format!(
            "{}:{}:{}:{}",
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime()
        );
        let mut cache = CACHE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.retain(|(_, w)| w.strong_count() > 0);
        if let Some(b) = cache
            .iter()
            .find(|(k, _)| *k == file_key)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(b);
        }
        let bin = Arc::new(Self::open_named(path, name)?);
        if let Some(id) = &bin.build_id {
            if let Some(b) = cache
                .iter()
                .find(|(k, _)| k == id)
                .and_then(|(_, w)| w.upgrade())
            {
                return Ok(b);
            }
            cache.push((id.clone(), Arc::downgrade(&bin)));
        }
        cache.push((file_key, Arc::downgrade(&bin)));
        Ok(bin)
    }

    fn parse(path: &Path, map: &Arc<memmap2::Mmap>) -> Result<Self, ResolveError> {
        let bytes: &[u8] = map;
        let elf_err = |reason: String| ResolveError::Elf {
            binary: path.to_owned(),
            reason,
        };
        let file = object::File::parse(bytes).map_err(|e| elf_err(e.to_string()))?;
        if file.format() != object::BinaryFormat::Elf {
            return Err(elf_err(format!("format is {:?}", file.format())));
        }
        if file.architecture() != object::Architecture::X86_64 {
            return Err(elf_err(format!(
                "architecture {:?} (only x86-64 is supported)",
                file.architecture()
            )));
        }
        let endian = if file.is_little_endian() {
            gimli::RunTimeEndian::Little
        } else {
            gimli::RunTimeEndian::Big
        };
        let is_dyn = file.kind() == object::ObjectKind::Dynamic;
        let segments: Vec<Segment> = file
            .segments()
            .map(|s| {
                let (offset, filesz) = s.file_range();
                Segment {
                    vaddr: s.address(),
                    memsz: s.size(),
                    offset,
                    filesz,
                }
            })
            .collect();
        let code = file
            .sections()
            .filter(|s| s.kind() == object::SectionKind::Text)
            .filter_map(|s| Some((s.address(), bytes::Bytes::from_map(map, s.data().ok()?))))
            .collect();
        let rodata = file
            .sections()
            .filter(|s| {
                // A linker may merge the tables into a `.rodata` flagged as strings.
                matches!(
                    s.kind(),
                    object::SectionKind::ReadOnlyData
                        | object::SectionKind::ReadOnlyDataWithRel
                        | object::SectionKind::ReadOnlyString
                )
            })
            .filter_map(|s| Some((s.address(), bytes::Bytes::from_map(map, s.data().ok()?))))
            .collect();
        let alloc_data = file
            .sections()
            .filter(|s| s.address() != 0)
            .filter(|s| {
                !matches!(
                    s.kind(),
                    object::SectionKind::Text
                        | object::SectionKind::UninitializedData
                        | object::SectionKind::UninitializedTls
                        | object::SectionKind::Debug
                )
            })
            .filter_map(|s| Some((s.address(), bytes::Bytes::from_map(map, s.data().ok()?))))
            .collect();
        let entry = file.entry();
        let got = file
            .sections()
            .filter(|s| matches!(s.name(), Ok(".got" | ".got.plt")))
            .map(|s| (s.address(), s.address().saturating_add(s.size())))
            .collect();

        let section_data = |name: &str| -> Result<Option<(bytes::Bytes, u64)>, ResolveError> {
            match file.section_by_name(name) {
                Some(s) => {
                    let data = s
                        .uncompressed_data()
                        .map_err(|e| elf_err(format!("section {name}: {e}")))?;
                    let b = match data {
                        std::borrow::Cow::Borrowed(slice) => bytes::Bytes::from_map(map, slice),
                        std::borrow::Cow::Owned(v) => bytes::Bytes::owned(v),
                    };
                    Ok(Some((b, s.address())))
                }
                None => Ok(None),
            }
        };
        let reader = |data: bytes::Bytes| gimli::EndianReader::new(data, endian);
        let empty = bytes::Bytes::empty();

        // Distributions strip DWARF into a separate file found by build-id or debuglink.
        let separate = if file.section_by_name(".debug_info").is_none() {
            separate_debug_file(path, &file)
        } else {
            None
        };
        let debug_map = match &separate {
            Some(p) => std::fs::File::open(p)
                .ok()
                .and_then(|f| bytes::map_file(&f).ok())
                .inspect(|m| {
                    let _ = m.advise(memmap2::Advice::Random);
                })
                .map(Arc::new),
            None => None,
        };
        let debug_file = match &debug_map {
            Some(m) => Some(object::File::parse(&m[..]).map_err(|e| {
                elf_err(format!(
                    "separate debug file {}: {e}",
                    separate
                        .as_ref()
                        .map_or_else(String::new, |p| p.display().to_string())
                ))
            })?),
            None => None,
        };
        let debug_section_data = |name: &str| -> Result<Option<(bytes::Bytes, u64)>, ResolveError> {
            let (Some(df), Some(m)) = (&debug_file, &debug_map) else {
                return section_data(name);
            };
            match df.section_by_name(name) {
                Some(s) => {
                    let data = s
                        .uncompressed_data()
                        .map_err(|e| elf_err(format!("section {name} of the debug file: {e}")))?;
                    let b = match data {
                        std::borrow::Cow::Borrowed(slice) => bytes::Bytes::from_map(m, slice),
                        std::borrow::Cow::Owned(v) => bytes::Bytes::owned(v),
                    };
                    Ok(Some((b, s.address())))
                }
                None => Ok(None),
            }
        };

        let mut has_debug_info = false;
        let dwarf = gimli::Dwarf::load(|id| -> Result<R, ResolveError> {
            let data = debug_section_data(id.name())?.map_or_else(|| empty.clone(), |(d, _)| d);
            if id == gimli::SectionId::DebugInfo {
                has_debug_info = !data.is_empty();
            }
            Ok(reader(data))
        })?;

        let text_addr = file.section_by_name(".text").map(|s| s.address());
        let mut eh_frame = None;
        if let Some((data, addr)) = section_data(".eh_frame")? {
            let mut bases = gimli::BaseAddresses::default().set_eh_frame(addr);
            if let Some(t) = text_addr {
                bases = bases.set_text(t);
            }
            if let Some(s) = file.section_by_name(".eh_frame_hdr") {
                bases = bases.set_eh_frame_hdr(s.address());
            }
            let mut section = gimli::EhFrame::from(reader(data));
            section.set_address_size(8);
            eh_frame = Some((section, bases));
        }
        let mut debug_frame = None;
        if let Some((data, _)) = debug_section_data(".debug_frame")? {
            let mut section = gimli::DebugFrame::from(reader(data));
            section.set_address_size(8);
            debug_frame = Some((section, gimli::BaseAddresses::default()));
        }

        let except_table = section_data(".gcc_except_table")?;
        let go_deferreturn = {
            use object::ObjectSymbol as _;
            file.symbol_by_name("runtime.deferreturn")
                .map(|s| s.address())
        };

        let mut units = Vec::new();
        if has_debug_info {
            let mut headers = dwarf.units();
            let dwarf_err = |what, source| ResolveError::Dwarf {
                binary: path.to_owned(),
                what,
                source,
            };
            while let Some(header) = headers.next().map_err(|e| dwarf_err("unit headers", e))? {
                units.push(
                    dwarf
                        .unit(header)
                        .map_err(|e| dwarf_err("a compilation unit", e))?,
                );
            }
        }
        let build_id = file
            .build_id()
            .ok()
            .flatten()
            .map(|id| id.iter().map(|b| format!("{b:02x}")).collect());
        let functions = units.iter().map(|_| std::sync::OnceLock::new()).collect();
        Ok(Self {
            path: path.to_owned(),
            is_dyn,
            segments,
            code,
            rodata,
            got,
            alloc_data,
            entry,
            refs: std::sync::OnceLock::new(),
            dwarf,
            units,
            eh_frame,
            debug_frame,
            except_table,
            go_deferreturn,
            eh_fdes: std::sync::OnceLock::new(),
            debug_fdes: std::sync::OnceLock::new(),
            has_debug_info,
            goid_offset: std::sync::OnceLock::new(),
            language: std::sync::OnceLock::new(),
            files: std::sync::OnceLock::new(),
            build_id,
            symbols: std::sync::Mutex::default(),
            functions,
        })
    }

    /// The file this was read from.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of DWARF in `.debug_info` (for reports).
    #[must_use]
    pub fn unit_count(&self) -> usize {
        self.units.len()
    }

    /// The binary's main language: Go or Rust if any unit is, else C++ if any unit is, else C.
    ///
    /// # Errors
    /// No debug info.
    pub fn language(&self) -> Result<Language, ResolveError> {
        self.require_debug_info()?;
        Ok(*self.language.get_or_init(|| self.detect_language()))
    }

    fn detect_language(&self) -> Language {
        let mut seen = Vec::new();
        for unit in &self.units {
            let Ok(root) = unit.entry(unit.header.root_offset()) else {
                continue;
            };
            if let Some(gimli::AttributeValue::Language(l)) = root.attr_value(gimli::DW_AT_language)
            {
                seen.push(l);
            }
        }
        let has = |ls: &[gimli::DwLang]| seen.iter().any(|l| ls.contains(l));
        if has(&[gimli::DW_LANG_Go]) {
            Language::Go
        } else if has(&[gimli::DW_LANG_Rust]) {
            Language::Rust
        } else if has(&[
            gimli::DW_LANG_C_plus_plus,
            gimli::DW_LANG_C_plus_plus_03,
            gimli::DW_LANG_C_plus_plus_11,
            gimli::DW_LANG_C_plus_plus_14,
        ]) {
            Language::Cpp
        } else if has(&[
            gimli::DW_LANG_C,
            gimli::DW_LANG_C89,
            gimli::DW_LANG_C99,
            gimli::DW_LANG_C11,
        ]) {
            Language::C
        } else {
            Language::Other
        }
    }

    fn require_debug_info(&self) -> Result<(), ResolveError> {
        if self.has_debug_info && !self.units.is_empty() {
            Ok(())
        } else {
            Err(ResolveError::NoDebugInfo {
                binary: self.path.clone(),
            })
        }
    }

    fn dwarf_err(&self, what: &'static str) -> impl Fn(gimli::Error) -> ResolveError + '_ {
        move |source| ResolveError::Dwarf {
            binary: self.path.clone(),
            what,
            source,
        }
    }

    /// Translates a link address to the file offset a uprobe attaches to:
    /// `offset = vaddr - p_vaddr + p_offset` of the `PT_LOAD` holding it. `None` when no
    /// segment holds it, or the one that does has a header whose sums overflow (a corrupt
    /// binary: wrapped, the offset would name some other instruction).
    #[must_use]
    pub fn file_offset(&self, addr: LinkAddr) -> Option<FileOffset> {
        self.segments
            .iter()
            .find(|s| {
                addr.0 >= s.vaddr
                    && s.vaddr
                        .checked_add(s.memsz.max(s.filesz))
                        .is_some_and(|end| addr.0 < end)
            })
            .and_then(|s| (addr.0 - s.vaddr).checked_add(s.offset))
            .map(FileOffset)
    }

    /// The machine code in `[start, end)`, if it lies in one executable section.
    #[must_use]
    pub fn code(&self, start: LinkAddr, end: LinkAddr) -> Option<&[u8]> {
        self.code.iter().find_map(|(base, bytes)| {
            let from = usize::try_from(start.0.checked_sub(*base)?).ok()?;
            let to = usize::try_from(end.0.checked_sub(*base)?).ok()?;
            bytes.get(from..to)
        })
    }

    /// The `len` bytes at `start` if they lie in one read-only data or executable section (a
    /// jump table's entries).
    #[must_use]
    pub fn read_only(&self, start: LinkAddr, len: usize) -> Option<&[u8]> {
        self.rodata
            .iter()
            .chain(&self.code)
            .find_map(|(base, bytes)| {
                let from = usize::try_from(start.0.checked_sub(*base)?).ok()?;
                bytes.get(from..from.checked_add(len)?)
            })
    }

    /// Who reaches which code address ([`refs::Refs`]): built on first use (one decode of
    /// the file's code).
    pub fn refs(&self) -> &refs::Refs {
        self.refs.get_or_init(|| {
            let code: Vec<(u64, &[u8])> = self.code.iter().map(|(a, b)| (*a, &b[..])).collect();
            let data: Vec<(u64, &[u8])> =
                self.alloc_data.iter().map(|(a, b)| (*a, &b[..])).collect();
            refs::Refs::build(&code, &data, self.entry)
        })
    }

    /// Whether `addr` is a slot of the global offset table (`.got`, `.got.plt`): the dynamic
    /// linker fills those with the start addresses of functions and data.
    #[must_use]
    pub fn in_got(&self, addr: LinkAddr) -> bool {
        self.got.iter().any(|&(lo, hi)| lo <= addr.0 && addr.0 < hi)
    }

    /// The same scope as `point`, at another address of its function (for placement).
    #[must_use]
    pub fn point_at(&self, point: &ProbePoint, addr: LinkAddr) -> Option<ProbePoint> {
        Some(ProbePoint {
            addr,
            file_offset: self.file_offset(addr)?,
            ..point.clone()
        })
    }

    /// The link address of the segment mapped at file offset 0, used with `/proc/PID/maps` to
    /// find the load bias of an `ET_DYN` object.
    #[must_use]
    pub fn first_segment_vaddr(&self) -> LinkAddr {
        LinkAddr(
            self.segments
                .iter()
                .filter(|s| s.offset == 0)
                .map(|s| s.vaddr)
                .min()
                .unwrap_or(0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test binary itself has DWARF: a second open is the same parse, not a new one.
    #[test]
    fn a_second_open_of_the_same_binary_does_no_parsing() {
        let exe = std::env::current_exe().expect("test binary");
        let a = Binary::open_cached(&exe, &exe).expect("open");
        let b = Binary::open_cached(&exe, &exe).expect("open again");
        assert!(Arc::ptr_eq(&a, &b), "the cache returned a second parse");
        drop((a, b));
        // Nothing holds it: the next open parses anew (no leak of parsed binaries).
        let c = Binary::open_cached(&exe, &exe).expect("open after drop");
        assert!(c.unit_count() > 0);
    }
}
