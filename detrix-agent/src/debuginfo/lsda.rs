//! Where a callee's unwinding goes in its caller: the call-site table of the caller's
//! language-specific data area (LSDA, in `.gcc_except_table`, named by its `.eh_frame` FDE's
//! augmentation data), as C++ and Rust compilers write it for the Itanium unwinder.
//!
//! Why: placement treats the instruction after a call as running exactly as often as the one
//! before it only when the callee cannot unwind into the caller's own code (a landing pad that
//! runs drops or a `catch`, then goes on in the caller). The table says it per call: a call the
//! table does not list terminates the process if its callee unwinds, a call listed without a
//! landing pad lets the unwinding leave the frame (as `exit` or `longjmp` would in C), and a call
//! with one lands there. A function without an LSDA has no landing pad at all.
//!
//! The format (what the personality routines of GCC, LLVM and Rust read): a header — the
//! encoding of the landing pads' base (`0xff`: the function's start), then of the type table
//! (if present, its offset follows as uleb128), then of the call-site entries and the table's
//! length (uleb128) — and the entries, sorted by start: start and length of the code range
//! (offsets from the function's start), the landing pad (an offset from the base; 0: none) and
//! the action (uleb128; 0: cleanup only, else the 1-based offset of its first action record).

use gimli::{Reader as _, ReaderOffset as _};

use super::Binary;

/// One call-site entry, as link addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallSite {
    /// The code range `[start, end)` the entry covers (one or more calls).
    pub start: u64,
    pub end: u64,
    /// Where the unwinder enters the function, or `None`: the unwinding leaves the frame.
    pub landing_pad: Option<u64>,
    /// 0: the landing pad only runs cleanups (then resumes unwinding); else it may catch.
    pub action: u64,
}

/// A function's call-site table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSites {
    /// The code the FDE covers, `[func_start, func_end)`.
    pub func_start: u64,
    pub func_end: u64,
    /// The entries, or `None` when the function has no LSDA (no landing pad anywhere).
    pub sites: Option<Vec<CallSite>>,
}

/// What the unwinder does with the frame when a callee unwinds through a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unwind {
    /// The call is not in the code the table covers: nothing is known.
    Unknown,
    /// The call is not in the table: the personality routine ends the process.
    Terminates,
    /// No landing pad: the frame is left, nothing of the function runs again.
    LeavesFrame,
    /// The unwinder enters the function at `pad`.
    Lands { pad: u64, cleanup_only: bool },
}

impl CallSites {
    /// What happens when the callee of the call whose return address is `ret` unwinds. The
    /// unwinder looks up `ret - 1` (inside the call instruction), as the personality does.
    #[must_use]
    pub fn unwind_at(&self, ret: u64) -> Unwind {
        let ip = ret.wrapping_sub(1);
        if ip < self.func_start || ip >= self.func_end {
            return Unwind::Unknown;
        }
        let Some(sites) = &self.sites else {
            return Unwind::LeavesFrame;
        };
        match sites.iter().find(|s| s.start <= ip && ip < s.end) {
            None => Unwind::Terminates,
            Some(CallSite {
                landing_pad: None, ..
            }) => Unwind::LeavesFrame,
            Some(&CallSite {
                landing_pad: Some(pad),
                action,
                ..
            }) => Unwind::Lands {
                pad,
                cleanup_only: action == 0,
            },
        }
    }

    /// Every landing pad of the function, sorted, each once.
    #[must_use]
    pub fn landing_pads(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .sites
            .iter()
            .flatten()
            .filter_map(|s| s.landing_pad)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Why an LSDA could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LsdaError {
    #[error("the LSDA at {at:#x} is outside .gcc_except_table (the binary has none, or it is elsewhere)")]
    NotInTable { at: u64 },
    #[error("the LSDA at {at:#x} ends before its {what} (the table is truncated)")]
    Truncated { at: u64, what: &'static str },
    #[error(
        "the LSDA at {at:#x} encodes its {what} as {enc:#04x}, which this reader does not know"
    )]
    Encoding {
        at: u64,
        what: &'static str,
        enc: u8,
    },
    #[error("an .eh_frame entry for the code from {start:#x} cannot be parsed")]
    Fde { start: u64 },
    #[error("the LSDA at {at:#x} is named through an indirect pointer, which this reader does not follow")]
    Indirect { at: u64 },
}

const OMIT: u8 = 0xff;
const PCREL: u8 = 0x10;

type Slice<'a> = gimli::EndianSlice<'a, gimli::LittleEndian>;

/// Reads one value in `DW_EH_PE` encoding `enc` (format only, plus `pcrel` where `pcrel_ok`)
/// from `r`, whose first byte is at link address `base + (r's offset in `whole`)`.
fn encoded(
    r: &mut Slice<'_>,
    whole: &Slice<'_>,
    base: u64,
    enc: u8,
    lsda: u64,
    what: &'static str,
    pcrel_ok: bool,
) -> Result<u64, LsdaError> {
    let here = base.wrapping_add(r.offset_from(*whole).into_u64());
    let bad = || LsdaError::Encoding {
        at: lsda,
        what,
        enc,
    };
    let short = |_| LsdaError::Truncated { at: lsda, what };
    let v = match enc & 0x0f {
        0x00 | 0x04 => r.read_u64().map_err(short)?,
        0x01 => r.read_uleb128().map_err(short)?,
        0x02 => u64::from(r.read_u16().map_err(short)?),
        0x03 => u64::from(r.read_u32().map_err(short)?),
        0x09 => r.read_sleb128().map_err(short)? as u64,
        0x0a => i64::from(r.read_i16().map_err(short)?) as u64,
        0x0b => i64::from(r.read_i32().map_err(short)?) as u64,
        0x0c => r.read_i64().map_err(short)? as u64,
        _ => return Err(bad()),
    };
    match enc & 0x70 {
        0 => Ok(v),
        PCREL if pcrel_ok => Ok(here.wrapping_add(v)),
        _ => Err(bad()),
    }
}

/// Parses the LSDA whose bytes start `data` (up to the end of its section), at link address
/// `at`, of the function whose FDE covers `[func_start, func_end)`.
///
/// # Errors
/// A truncated table or an encoding the format does not use for it.
pub fn parse(data: &[u8], at: u64, func_start: u64, func_end: u64) -> Result<CallSites, LsdaError> {
    let whole = Slice::new(data, gimli::LittleEndian);
    let mut r = whole;
    let short = |what| move |_| LsdaError::Truncated { at, what };
    let lp_enc = r.read_u8().map_err(short("header"))?;
    let lp_base = if lp_enc == OMIT {
        func_start
    } else {
        encoded(&mut r, &whole, at, lp_enc, at, "landing pad base", true)?
    };
    let tt_enc = r.read_u8().map_err(short("header"))?;
    if tt_enc != OMIT {
        r.read_uleb128().map_err(short("type table offset"))?;
    }
    let cs_enc = r.read_u8().map_err(short("header"))?;
    let len = r.read_uleb128().map_err(short("call-site table length"))?;
    let len = usize::try_from(len).map_err(|_| LsdaError::Truncated {
        at,
        what: "call-site table",
    })?;
    let table_start = r.offset_from(whole).into_u64();
    let mut table = r;
    table.truncate(len).map_err(short("call-site table"))?;
    let table_base = at.wrapping_add(table_start);
    let table_whole = table;
    let mut sites = Vec::new();
    while !table.is_empty() {
        let mut field = |what| {
            encoded(
                &mut table,
                &table_whole,
                table_base,
                cs_enc,
                at,
                what,
                false,
            )
        };
        let start = field("call-site start")?;
        let len = field("call-site length")?;
        let pad = field("landing pad")?;
        let action = table.read_uleb128().map_err(short("call-site action"))?;
        sites.push(CallSite {
            start: func_start.wrapping_add(start),
            end: func_start.wrapping_add(start).wrapping_add(len),
            landing_pad: (pad != 0).then(|| lp_base.wrapping_add(pad)),
            action,
        });
    }
    Ok(CallSites {
        func_start,
        func_end,
        sites: Some(sites),
    })
}

impl Binary {
    /// The call-site tables of every function (FDE) whose code overlaps `[start, end)` (link
    /// addresses: a function with a cold part has two), by address.
    ///
    /// # Errors
    /// An FDE that cannot be parsed, or one naming an LSDA that cannot be read.
    pub fn unwind_tables(&self, start: u64, end: u64) -> Result<Vec<CallSites>, LsdaError> {
        self.eh_fdes_in(start, end, |f| {
            (f.initial_address(), f.end_address(), f.lsda())
        })
        .into_iter()
        .map(|fde| {
            let (func_start, func_end, lsda) = fde.ok_or(LsdaError::Fde { start })?;
            let at = match lsda {
                None => {
                    return Ok(CallSites {
                        func_start,
                        func_end,
                        sites: None,
                    })
                }
                Some(gimli::Pointer::Direct(a)) => a,
                Some(gimli::Pointer::Indirect(a)) => return Err(LsdaError::Indirect { at: a }),
            };
            let (data, addr) = self
                .except_table
                .as_ref()
                .ok_or(LsdaError::NotInTable { at })?;
            let off = at
                .checked_sub(*addr)
                .and_then(|o| usize::try_from(o).ok())
                .filter(|&o| o < data.len())
                .ok_or(LsdaError::NotInTable { at })?;
            parse(&data[off..], at, func_start, func_end)
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-written LSDA: no landing pad base, no type table, uleb128 entries.
    #[test]
    fn entries_are_read_relative_to_the_function() {
        let lsda = [
            0xff, 0xff, 0x01, 12, // header: omit, omit, uleb128, 12 bytes of entries
            0x10, 0x05, 0x40, 0x00, // [0x10, 0x15) → pad +0x40, cleanup
            0x20, 0x08, 0x00, 0x00, // [0x20, 0x28) → no pad
            0x30, 0x05, 0x40, 0x01, // [0x30, 0x35) → pad +0x40, action 1
        ];
        let cs = parse(&lsda, 0x500, 0x1000, 0x1100).expect("parse");
        assert_eq!(
            cs.sites.as_deref(),
            Some(
                &[
                    CallSite {
                        start: 0x1010,
                        end: 0x1015,
                        landing_pad: Some(0x1040),
                        action: 0
                    },
                    CallSite {
                        start: 0x1020,
                        end: 0x1028,
                        landing_pad: None,
                        action: 0
                    },
                    CallSite {
                        start: 0x1030,
                        end: 0x1035,
                        landing_pad: Some(0x1040),
                        action: 1
                    },
                ][..]
            )
        );
        // A call at 0x1010 (5 bytes) returns to 0x1015: its entry is the first one.
        assert_eq!(
            cs.unwind_at(0x1015),
            Unwind::Lands {
                pad: 0x1040,
                cleanup_only: true
            }
        );
        assert_eq!(cs.unwind_at(0x1016), Unwind::Terminates);
        assert_eq!(cs.unwind_at(0x1028), Unwind::LeavesFrame);
        assert_eq!(
            cs.unwind_at(0x1035),
            Unwind::Lands {
                pad: 0x1040,
                cleanup_only: false
            }
        );
        assert_eq!(cs.landing_pads(), vec![0x1040]);
        assert_eq!(cs.unwind_at(0x2000), Unwind::Unknown, "outside the FDE");
    }

    #[test]
    fn udata4_entries_a_type_table_and_truncation() {
        let mut lsda = vec![0xff, 0x9b, 0x05, 0x03, 13];
        for v in [0x8u32, 0x5, 0x0] {
            lsda.extend_from_slice(&v.to_le_bytes());
        }
        lsda.push(0);
        let cs = parse(&lsda, 0x500, 0x2000, 0x2100).expect("parse");
        assert_eq!(
            cs.sites.as_deref(),
            Some(
                &[CallSite {
                    start: 0x2008,
                    end: 0x200d,
                    landing_pad: None,
                    action: 0
                }][..]
            )
        );
        assert_eq!(
            parse(&lsda[..10], 0x500, 0x2000, 0x2100).unwrap_err(),
            LsdaError::Truncated {
                at: 0x500,
                what: "call-site table"
            }
        );
        // A landing pad base in an encoding that does not exist.
        assert_eq!(
            parse(&[0x07, 0, 0], 0x500, 0x2000, 0x2100).unwrap_err(),
            LsdaError::Encoding {
                at: 0x500,
                what: "landing pad base",
                enc: 0x07
            }
        );
        let none = CallSites {
            func_start: 0x2000,
            func_end: 0x2100,
            sites: None,
        };
        assert_eq!(none.unwind_at(0x2010), Unwind::LeavesFrame);
        assert_eq!(none.unwind_at(0x2101), Unwind::Unknown, "outside the FDE");
        assert!(none.landing_pads().is_empty());
    }
}
