//! Coalescing: nearby reads through the same pointer become one bounded copy, and a pointer
//! that several values follow is read once (`c->argc`, `c->id`, `c->db->id`, `c->db->dict`:
//! two reads of the target instead of six).
//!
//! Why: every `bpf_probe_read_user` costs ~150 ns here, more than the rest of a hit's work, and
//! a logpoint on a request handler typically reads several fields of one struct. A value's
//! ops start with a base (`REG r +k`, `CONST a`, or a pointer already copied, `HDR @at`) and a
//! first read (`DEREF 8` of a pointer, or `EMIT_MEM n` of the whole value). Reads from the
//! same base whose bytes lie within [`SPAN`] of each other become one **block**: a hidden
//! value of its own whose ops copy the span; a value that was only that read now has no ops
//! and lies inside the block, and one that read a pointer there reads it back from the block
//! (`HDR`), then goes on as before. Repeated until nothing merges, so pointers copied in one
//! round are the bases of the next.
//!
//! Why the values stay exact: a span of at most one page touches at most the two pages that
//! hold its first and last requested byte, so it cannot fault where the separate reads would
//! not. A value carried by a block that faulted is a fault too ([`Lowered::carrier`], checked
//! by the decoder). The condition's value is never coalesced (the kernel checks its own flags).

use detrix_common::{op, PlanOp, MAX_COPY_BYTES, MAX_VALUES};

use super::lower::mk;

/// Widest block: bytes from a group's first requested byte to its last (≤ a page; see above).
pub(super) const SPAN: i64 = 256;

/// One value on its way into the plan, as `build_with` holds it.
#[derive(Debug, Clone)]
pub(super) struct Lowered {
    /// Ops with destinations relative to the value (before layout), except the `HDR`s listed
    /// in `refs`.
    pub ops: Vec<PlanOp>,
    /// Bytes of its own in the event (0 when it lies inside a block: `inside`).
    pub len: usize,
    /// May be coalesced (not the condition's value, not the stack or unwinding captures).
    pub eligible: bool,
    /// `(block value, offset)`: its bytes are at this offset of the block's.
    pub inside: Option<(usize, usize)>,
    /// `(op index, block value, offset)`: an `HDR` whose source is in a block, not relative.
    pub refs: Vec<(usize, usize, usize)>,
    /// The block this value's bytes or pointer come from: its fault is this value's.
    pub carrier: Option<usize>,
    /// Whether this is a block (a hidden value of the coalescing).
    pub block: bool,
}

impl Lowered {
    pub(super) fn new(ops: Vec<PlanOp>, len: usize, eligible: bool) -> Self {
        Self {
            ops,
            len,
            eligible,
            inside: None,
            refs: Vec::new(),
            carrier: None,
            block: false,
        }
    }
}

/// Where a value's first read starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Base {
    /// `pt_regs[r]`.
    Reg(u8),
    /// An absolute address.
    Const,
    /// A pointer copied into block `b` at offset `off`.
    Copied { b: usize, off: usize },
}

/// A value's first read: from `base`, bytes `[at, at + len)`; `deref` for a pointer (`DEREF 8`
/// followed by more ops), else the value's whole bytes (`EMIT_MEM`, its last op).
#[derive(Debug, Clone, Copy)]
struct Read {
    vi: usize,
    base: Base,
    at: i64,
    len: i64,
    deref: bool,
}

fn first_read(vi: usize, v: &Lowered) -> Option<Read> {
    if !v.eligible || v.block || v.inside.is_some() {
        return None;
    }
    let (b, r) = (v.ops.first()?, v.ops.get(1)?);
    let (base, k) = match b.kind {
        op::REG => (Base::Reg(b.reg), b.imm),
        op::CONST => (Base::Const, b.imm),
        op::HDR => {
            let &(_, blk, off) = v.refs.iter().find(|(i, _, _)| *i == 0)?;
            (Base::Copied { b: blk, off }, 0)
        }
        _ => return None,
    };
    let deref = match r.kind {
        op::DEREF if r.len == 8 => true,
        op::EMIT_MEM if r.reg == 0 && r.dst == 0 && v.ops.len() == 2 => false,
        _ => return None,
    };
    Some(Read {
        vi,
        base,
        at: k.wrapping_add(r.imm),
        len: i64::from(r.len),
        deref,
    })
}

/// Merges reads (see the module header). `values` gains the blocks, at the end; returns the
/// number of blocks made.
pub(super) fn coalesce(values: &mut Vec<Lowered>) -> usize {
    let mut made = 0;
    loop {
        let mut reads: Vec<Read> = values
            .iter()
            .enumerate()
            .filter_map(|(vi, v)| first_read(vi, v))
            .collect();
        reads.sort_by_key(|r| (r.base, r.at));
        let mut merged = false;
        let mut i = 0;
        while i < reads.len() {
            // The longest run from reads[i] with the same base within SPAN.
            let (base, start) = (reads[i].base, reads[i].at);
            let mut end = start + reads[i].len;
            let mut j = i + 1;
            while j < reads.len()
                && reads[j].base == base
                && (reads[j].at + reads[j].len).max(end) - start <= SPAN
            {
                end = end.max(reads[j].at + reads[j].len);
                j += 1;
            }
            if j - i >= 2 && values.len() < MAX_VALUES && end - start <= MAX_COPY_BYTES as i64 {
                make_block(values, &reads[i..j], start, end);
                made += 1;
                merged = true;
            }
            i = j;
        }
        if !merged {
            return made;
        }
    }
}

/// Adds the block copying `[start, end)` from the reads' base and rewrites each read's value.
fn make_block(values: &mut Vec<Lowered>, reads: &[Read], start: i64, end: i64) {
    let bi = values.len();
    let span = (end - start) as u16;
    let first = &values[reads[0].vi];
    let (ops, refs, carrier) = match reads[0].base {
        Base::Reg(r) => (
            vec![mk(op::REG, r, 0, start), mk(op::EMIT_MEM, 0, span, 0)],
            Vec::new(),
            None,
        ),
        Base::Const => (
            vec![mk(op::CONST, 0, 0, start), mk(op::EMIT_MEM, 0, span, 0)],
            Vec::new(),
            None,
        ),
        Base::Copied { b, off } => (
            vec![first.ops[0], mk(op::EMIT_MEM, 0, span, start)],
            vec![(0, b, off)],
            Some(b),
        ),
    };
    values.push(Lowered {
        ops,
        len: usize::from(span),
        eligible: false,
        inside: None,
        refs,
        carrier,
        block: true,
    });
    for r in reads {
        let v = &mut values[r.vi];
        let off = (r.at - start) as usize;
        v.carrier = Some(bi);
        if r.deref {
            // The pointer is read back from the block; the ops after it are unchanged.
            let mut ops = vec![PlanOp::hdr(0, 0, 0, 0)];
            ops.extend_from_slice(&v.ops[2..]);
            v.ops = ops;
            v.refs = vec![(0, bi, off)];
        } else {
            v.ops.clear();
            v.refs.clear();
            v.inside = Some((bi, off));
            v.len = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detrix_common::pt_regs;

    fn reg_mem(imm: i64, len: u16) -> Lowered {
        Lowered::new(
            vec![
                mk(op::REG, pt_regs::RDI, 0, imm),
                mk(op::EMIT_MEM, 0, len, 0),
            ],
            usize::from(len),
            true,
        )
    }

    fn reg_deref_mem(ptr_at: i64, field: i64, len: u16) -> Lowered {
        Lowered::new(
            vec![
                mk(op::REG, pt_regs::RDI, 0, ptr_at),
                mk(op::DEREF, 0, 8, 0),
                mk(op::EMIT_MEM, 0, len, field),
            ],
            usize::from(len),
            true,
        )
    }

    #[test]
    fn fields_through_one_pointer_become_one_copy() {
        // c->argc (4 at +88), c->id (8 at +0), c->db->id (4 at +8 of *(c+24)),
        // c->db->dict (8 at +0 of *(c+24)).
        let mut v = vec![
            reg_mem(88, 4),
            reg_mem(0, 8),
            reg_deref_mem(24, 8, 4),
            reg_deref_mem(24, 0, 8),
        ];
        assert_eq!(coalesce(&mut v), 2);
        assert_eq!(v.len(), 6);
        // Block 4: c[0..92] from rdi; block 5: (*(c+24))[0..12], its pointer read back.
        assert_eq!(
            v[4].ops,
            vec![mk(op::REG, pt_regs::RDI, 0, 0), mk(op::EMIT_MEM, 0, 92, 0)]
        );
        assert_eq!((v[4].len, v[4].carrier), (92, None));
        assert_eq!(
            v[5].ops,
            vec![PlanOp::hdr(0, 0, 0, 0), mk(op::EMIT_MEM, 0, 12, 0)]
        );
        assert_eq!(
            (v[5].refs.clone(), v[5].carrier),
            (vec![(0, 4, 24)], Some(4))
        );
        assert_eq!(
            (v[0].inside, v[0].len, v[0].ops.len()),
            (Some((4, 88)), 0, 0)
        );
        assert_eq!(v[1].inside, Some((4, 0)));
        assert_eq!((v[2].inside, v[2].carrier), (Some((5, 8)), Some(5)));
        assert_eq!(v[3].inside, Some((5, 0)));
    }

    #[test]
    fn far_apart_or_ineligible_reads_stay() {
        let mut v = vec![reg_mem(0, 8), reg_mem(4096, 8)];
        assert_eq!(coalesce(&mut v), 0, "beyond the span");
        let mut v = vec![reg_mem(0, 8), reg_mem(8, 8)];
        v[1].eligible = false;
        assert_eq!(coalesce(&mut v), 0, "the condition's value stays");
        assert_eq!(v.len(), 2);
        // A value with more ops after its EMIT_MEM (a counted header) is not moved.
        let mut v = vec![reg_mem(0, 8), reg_mem(8, 16)];
        v[1].ops.push(PlanOp::hdr(0, 8, 1, 0));
        assert_eq!(coalesce(&mut v), 0);
    }
}
