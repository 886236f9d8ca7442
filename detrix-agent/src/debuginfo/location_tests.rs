//! Unit tests of `location.rs`: the DWARF expression trees (folding, simple shapes kept,
//! stack depth, branches) without a binary.

use super::*;

fn reg(r: u16) -> DwExpr {
    DwExpr::Reg(r)
}

#[test]
fn constant_operands_fold_with_the_programs_arithmetic() {
    // `DW_OP_lit16 DW_OP_lit12 DW_OP_shl` as gcc writes 0x10000.
    let t = DwExpr::bin(DwBin::Shl, DwExpr::Const(16), DwExpr::Const(12));
    assert_eq!(t, DwExpr::Const(0x10000));
    assert_eq!(
        DwExpr::bin(DwBin::Div, DwExpr::Const(-100), DwExpr::Const(7)),
        DwExpr::Const(-14)
    );
    // A division by zero is left for the hit to fault on, not folded.
    assert_eq!(
        DwExpr::bin(DwBin::Div, DwExpr::Const(1), DwExpr::Const(0)),
        DwExpr::Bin(
            DwBin::Div,
            Box::new(DwExpr::Const(1)),
            Box::new(DwExpr::Const(0))
        )
    );
    assert_eq!(reg(5).plus(0), reg(5));
}

#[test]
fn simple_shapes_stay_the_simple_locations() {
    // `DW_OP_breg6 -24` as an address.
    assert_eq!(
        Location::memory_at(reg(6).plus(-24)),
        Location::Memory {
            base: AddrBase::Register(6),
            offset: -24
        }
    );
    // `DW_OP_breg7 8; DW_OP_deref; DW_OP_plus_uconst 16`.
    let t = DwExpr::Deref {
        addr: Box::new(reg(7).plus(8)),
        size: 8,
    }
    .plus(16);
    assert_eq!(
        Location::memory_at(t),
        Location::Indirect {
            base: AddrBase::Register(7),
            at: 8,
            offset: 16
        }
    );
    // `DW_OP_addr a; DW_OP_plus_uconst 4`.
    assert_eq!(
        Location::memory_at(DwExpr::Addr(0x4000).plus(4)),
        Location::Memory {
            base: AddrBase::Absolute,
            offset: 0x4004
        }
    );
    // `DW_OP_breg0 1; DW_OP_stack_value` and `DW_OP_lit7; DW_OP_stack_value`.
    assert_eq!(
        Location::value_of(reg(0).plus(1)),
        Location::Computed {
            reg: Some(0),
            offset: 1
        }
    );
    assert_eq!(
        Location::value_of(DwExpr::Const(7)),
        Location::Computed {
            reg: None,
            offset: 7
        }
    );
    // `DW_OP_breg5 0; DW_OP_lit0; DW_OP_ne; DW_OP_stack_value` stays an expression.
    let ne = DwExpr::bin(DwBin::Ne, reg(5), DwExpr::Const(0));
    assert_eq!(Location::value_of(ne.clone()), Location::Value(ne));
}

#[test]
fn a_branch_on_a_hit_value_selects_between_its_paths() {
    // gcc's min: `c ? y : x` with c = y < x, as `x + (y - x) * (c != 0)`.
    let c = DwExpr::bin(DwBin::Lt, reg(4), reg(3));
    let lo = select(
        &c,
        Location::Computed {
            reg: Some(4),
            offset: 0,
        },
        &Location::Register { dwarf_reg: 3 },
    );
    let want = DwExpr::bin(
        DwBin::Add,
        reg(3),
        DwExpr::bin(
            DwBin::Mul,
            DwExpr::bin(DwBin::Sub, reg(4), reg(3)),
            DwExpr::bin(DwBin::Ne, c.clone(), DwExpr::Const(0)),
        ),
    );
    assert_eq!(lo, Some(Location::Value(want)));
    // Both paths alike: no selection at all.
    let same = Location::Register { dwarf_reg: 3 };
    assert_eq!(select(&c, same.clone(), &same), Some(same));
    // A value on one path and an address on the other: refused, never guessed.
    let mem = Location::Memory {
        base: AddrBase::Register(7),
        offset: 8,
    };
    assert_eq!(select(&c, mem, &Location::Register { dwarf_reg: 3 }), None);
}

#[test]
fn jumps_go_forward_to_an_operation_or_the_end_only() {
    let ops = [(0, O::Nop), (1, O::Drop), (2, O::Nop)];
    let code = Code {
        ops: &ops,
        end: 3,
        ui: 0,
        frame: Frame::Probe,
    };
    // From after op 0 (offset 1): +1 lands on op 2, +2 at the end, -1 is a loop.
    assert_eq!(code.jump(1, 1), Some(2));
    assert_eq!(code.jump(1, 2), Some(3));
    assert_eq!(code.jump(1, -1), None);
    assert_eq!(code.jump(1, 9), None);
}

#[test]
fn depth_counts_the_operands_held_at_once() {
    let x = || reg(5);
    // x != 0: the constant rides in the op, nothing is pushed.
    assert_eq!(DwExpr::bin(DwBin::Ne, x(), DwExpr::Const(0)).depth(), 0);
    // x == y: x is pushed while y is computed.
    assert_eq!(DwExpr::bin(DwBin::Eq, x(), reg(4)).depth(), 1);
    // (x << 2) + x) + r15: still one at a time.
    let sum = DwExpr::bin(
        DwBin::Add,
        DwExpr::bin(
            DwBin::Add,
            DwExpr::bin(DwBin::Shl, x(), DwExpr::Const(2)),
            x(),
        ),
        reg(15),
    );
    assert_eq!(sum.depth(), 1);
    // a - (b - (c - d)): each right operand nests one deeper.
    let nested = DwExpr::bin(
        DwBin::Sub,
        reg(0),
        DwExpr::bin(DwBin::Sub, reg(1), DwExpr::bin(DwBin::Sub, reg(2), reg(3))),
    );
    assert_eq!(nested.depth(), 3);
}
