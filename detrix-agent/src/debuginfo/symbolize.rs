//! Runtime addresses of the target → frames: function, file and line through the binary's
//! DWARF (several frames for inlined code), the object's name outside the executable, and the
//! CFI unwind of a captured register set and stack slice.
//!
//! Why in `debuginfo`: it is the binary's DWARF and CFI read back at runtime addresses; the
//! hit reader only hands over the bytes a plan captured.

use std::sync::Arc;

use crate::addr::{LinkAddr, RuntimeAddr};
use crate::target::maps::Mapping;

use super::{Binary, UnwindRegs};

/// Most frames a stack keeps.
pub const STACK_FRAMES: usize = 64;

/// One frame of a captured stack, innermost first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Runtime address (the probe's PC for frame 0, return addresses after).
    pub pc: RuntimeAddr,
    /// Function name (Rust demangled, without hash), or `??` outside the target's binary.
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The object the address is in, when not the main executable (`libc.so.6`).
    pub module: Option<String>,
}

/// Turns runtime addresses of one process into frames.
#[derive(Debug)]
pub struct Symbolizer {
    bin: Arc<Binary>,
    load_bias: u64,
    /// The process's executable mappings, read once.
    maps: Vec<Mapping>,
    /// The executable's own executable mappings.
    exe_ranges: Vec<(RuntimeAddr, RuntimeAddr)>,
}

impl Symbolizer {
    /// For the executable `bin` (inode `exe_inode`, loaded with `load_bias`) in a process
    /// with these mappings.
    #[must_use]
    pub fn new(bin: Arc<Binary>, load_bias: u64, maps: Vec<Mapping>, exe_inode: u64) -> Self {
        let maps: Vec<Mapping> = maps.into_iter().filter(Mapping::executable).collect();
        let exe_ranges = maps
            .iter()
            .filter(|m| m.inode == exe_inode)
            .map(|m| (m.start, m.end))
            .collect();
        Self {
            bin,
            load_bias,
            maps,
            exe_ranges,
        }
    }

    /// The link address of a runtime address in the executable.
    /// (A non-PIE executable runs at its link addresses: bias 0.)
    fn link(&self, addr: RuntimeAddr) -> LinkAddr {
        addr.to_link(if self.bin.is_dyn { self.load_bias } else { 0 })
    }

    /// The frames at one return address (or the hit's PC): several when it is inside
    /// inlined code, innermost first.
    #[must_use]
    pub fn frames(&self, pc: RuntimeAddr, innermost: bool) -> Vec<Frame> {
        // A return address points after the call: look up the call itself.
        let lookup = if innermost { pc } else { pc.call_site() };
        let within = |(a, b): (RuntimeAddr, RuntimeAddr)| lookup >= a && lookup < b;
        let in_exe = self.exe_ranges.iter().any(|r| within(*r)) || self.exe_ranges.is_empty();
        if in_exe {
            let syms = self.bin.symbolize(self.link(lookup));
            if !syms.is_empty() {
                return syms
                    .into_iter()
                    .map(|s| Frame {
                        pc,
                        function: s.function,
                        file: s.file,
                        line: s.line,
                        module: None,
                    })
                    .collect();
            }
        }
        let module = self
            .maps
            .iter()
            .find(|m| within((m.start, m.end)))
            .map(|m| {
                std::path::Path::new(&m.path)
                    .file_name()
                    .map_or_else(|| m.path.clone(), |n| n.to_string_lossy().into_owned())
            });
        vec![Frame {
            pc,
            function: "??".to_owned(),
            file: None,
            line: None,
            module,
        }]
    }

    /// The frames of return addresses (a frame-pointer walk), up to the first 0.
    #[must_use]
    pub fn return_addresses(&self, pcs: impl Iterator<Item = RuntimeAddr>) -> Vec<Frame> {
        pcs.take_while(|pc| pc.0 != 0)
            .enumerate()
            .flat_map(|(i, pc)| self.frames(pc, i == 0))
            .collect()
    }

    /// Unwinds from `regs` with the binary's CFI, reading the stack through `read`, innermost
    /// first; stops outside the executable or where the CFI does not lead up the stack.
    #[must_use]
    pub fn unwind(&self, mut regs: UnwindRegs, read: &dyn Fn(u64) -> Option<u64>) -> Vec<Frame> {
        let mut frames = Vec::new();
        for i in 0..STACK_FRAMES {
            let here = self.frames(regs.pc, i == 0);
            let in_exe = here
                .last()
                .is_some_and(|f| f.module.is_none() && f.function != "??");
            frames.extend(here);
            if !in_exe {
                break;
            }
            // CFI rows are found by the call site, not the return address.
            let lookup = if i == 0 { regs.pc } else { regs.pc.call_site() };
            match self.bin.unwind_step(self.link(lookup), regs, read) {
                Some(next) if next.pc.0 != 0 && next.sp > regs.sp => regs = next,
                _ => break,
            }
        }
        frames
    }
}
