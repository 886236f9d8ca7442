//! Opening a target and resolving a logpoint against it: the executable's debug info first,
//! then the shared libraries it maps, each copy of the line through [`super::pipeline`].
//!
//! Why apart from the engine: resolving touches no kernel state, so every user error is found
//! here before anything is attached, and the CLI can resolve without loading the program.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::addr::{self, RuntimeAddr};
use crate::debuginfo::{Binary, Language, ResolveError};
use crate::expr;
use crate::plan::{self, PlanOptions};
use crate::target::Target;

use super::pipeline::{plan_point, runs, Steps};
use super::{EngineError, EngineOptions, LogpointSpec, PreparedCopy};

/// Resolves and plans against one process, without touching the kernel: every user error is
/// found here, before anything is attached.
#[derive(Debug)]
pub struct Resolver {
    pub target: Target,
    pub bin: Arc<Binary>,
    pub(super) load_bias: u64,
    pub(super) opts: EngineOptions,
    /// Shared objects the process maps, opened when a request names a file the executable's
    /// debug info does not have.
    libs: Vec<SharedObject>,
}

/// A shared library mapped by the target.
#[derive(Debug)]
struct SharedObject {
    /// Its path as the target sees it (from `/proc/PID/maps`).
    name: PathBuf,
    /// The same file through `/proc/PID/root`, valid across mount namespaces.
    path: PathBuf,
    /// Start of its mapping at file offset 0.
    base: RuntimeAddr,
    bin: std::sync::OnceLock<Option<Arc<Binary>>>,
}

impl SharedObject {
    /// The library's parsed debug info, or `None` when it has none (most system libraries).
    fn binary(&self) -> Option<&Arc<Binary>> {
        self.bin
            .get_or_init(|| {
                Binary::open_cached(&self.path, &self.name)
                    .ok()
                    .filter(|b| b.language().is_ok())
            })
            .as_ref()
    }
}

/// File-backed mappings at file offset 0 of objects other than the executable.
fn shared_objects(target: &Target) -> Vec<SharedObject> {
    let Ok(maps) = target.maps() else {
        return Vec::new();
    };
    let mut out: Vec<SharedObject> = Vec::new();
    for m in maps {
        if !m.path.starts_with('/') || m.offset != 0 || m.inode == target.dev_ino.1 {
            continue;
        }
        if out.iter().any(|o| o.name == Path::new(&m.path)) {
            continue;
        }
        out.push(SharedObject {
            path: PathBuf::from(format!("/proc/{}/root{}", target.pid, m.path)),
            name: PathBuf::from(m.path),
            base: m.start,
            bin: std::sync::OnceLock::new(),
        });
    }
    out
}

impl Resolver {
    /// Opens the process and its executable's debug info.
    ///
    /// # Errors
    /// No such process, no privileges, unreadable binary.
    pub fn open(pid: u32, opts: EngineOptions) -> Result<Self, EngineError> {
        let target = Target::open(pid)?;
        let bin = Binary::open_cached(&target.exe, &target.exe_name)?;
        let load_bias = if bin.is_dyn {
            target.load_bias(bin.first_segment_vaddr())?
        } else {
            0
        };
        let libs = shared_objects(&target);
        Ok(Self {
            target,
            bin,
            load_bias,
            opts,
            libs,
        })
    }

    /// Source language of the target (from its DWARF).
    ///
    /// # Errors
    /// No debug info.
    pub fn language(&self) -> Result<Language, EngineError> {
        Ok(self.bin.language()?)
    }

    /// Resolves, plans and places one logpoint: one [`PreparedCopy`] per copy of the line.
    ///
    /// # Errors
    /// Any resolution, expression, type or budget error, naming the object.
    pub fn prepare(
        &self,
        file: &str,
        spec: &LogpointSpec,
    ) -> Result<Vec<PreparedCopy>, EngineError> {
        // The executable first; a file it does not know may be a shared library's.
        let (bin, load_bias, object, points) = match self.bin.resolve_line(file, spec.line) {
            Ok(points) => (&self.bin, self.load_bias, self.target.exe.clone(), points),
            Err(unknown @ ResolveError::UnknownFile { .. }) => {
                let found = self.libs.iter().find_map(|lib| {
                    let b = lib.binary()?;
                    match b.resolve_line(file, spec.line) {
                        Err(ResolveError::UnknownFile { .. }) => None,
                        other => Some((lib, b, other)),
                    }
                });
                match found {
                    Some((lib, b, points)) => (
                        b,
                        addr::load_bias(lib.base, b.first_segment_vaddr()),
                        lib.path.clone(),
                        points?,
                    ),
                    None => return Err(unknown.into()),
                }
            }
            Err(other) => return Err(other.into()),
        };
        let condition = spec
            .condition
            .as_deref()
            .map(expr::parse_condition)
            .transpose()?;
        let opts = PlanOptions {
            tgid: self.target.pid,
            load_bias,
            string_cap: self.opts.string_cap,
            elem_cap: self.opts.elem_cap,
            rate_per_sec: self.opts.rate_per_sec,
            burst: self.opts.burst,
        };
        let steps = Steps {
            placement: self.opts.placement,
            scope: crate::place::Scope::Block,
            forwarding: self.opts.forwarding,
        };
        let mut out = Vec::new();
        for (p, why) in runs(bin, points) {
            let extras = plan::Extras {
                locals: if spec.capture_locals {
                    bin.locals_in_scope(&p)?
                } else {
                    Vec::new()
                },
                stack: spec.capture_stack,
            };
            let placed = plan_point(
                bin,
                &p,
                &spec.exprs,
                condition.as_ref(),
                &extras,
                opts,
                steps,
            )?;
            let stashes = placed
                .plan
                .plan
                .active_ops()
                .iter()
                .any(|o| o.kind == detrix_common::op::STASH);
            let mut placement = placed.placement;
            placement.explain.splice(0..0, why);
            placement.explain.extend(placed.forwarded);
            let entry = if stashes {
                let pc = bin.stash_entry(&placed.point);
                match pc {
                    Some(pc) => placement.explain.push(format!(
                        "entry probe at {pc} (the function's first instruction): saves the registers the plan's entry values (DW_OP_entry_value) read"
                    )),
                    None => placement.explain.push(
                        "no entry probe: entry values come from the callers' call sites".to_owned(),
                    ),
                }
                pc.and_then(|pc| bin.file_offset(pc))
            } else {
                None
            };
            // A branch whose file offset is unknown (never seen: the branches are code of the
            // same function) leaves the probe at the block's first instruction, where the plan
            // reads the same values, single-stepped.
            let sites = placement
                .edges
                .iter()
                .map(|e| {
                    bin.file_offset(e.addr)
                        .map(|offset| crate::probe::Site { offset, cc: e.cc })
                })
                .collect::<Option<Vec<_>>>()
                .unwrap_or_else(|| {
                    placement.explain.push(format!(
                        "a branch into the block has no file offset: the probe stays at {}, single-stepped",
                        placed.point.addr
                    ));
                    Vec::new()
                });
            out.push(PreparedCopy {
                sites,
                entry,
                point: placed.point,
                plan: placed.plan,
                placement,
                object: object.clone(),
            });
        }
        Ok(out)
    }
}
