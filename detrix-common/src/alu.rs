//! Operations of [`crate::op::ALU`], with DWARF's semantics for the generic (address-sized)
//! type: `div` and the comparisons signed, `mod` unsigned, `shr` logical, `shra` arithmetic,
//! shifts of 64 or more giving 0 (or the sign, for `shra`); a comparison gives 1 or 0.
//!
//! Why here and not in either side: the program evaluates these in the kernel and the agent
//! folds them and names them in the op text; one `eval` keeps the two from disagreeing.

pub const ADD: u8 = 0;
pub const SUB: u8 = 1;
pub const MUL: u8 = 2;
pub const DIV: u8 = 3;
pub const MOD: u8 = 4;
pub const AND: u8 = 5;
pub const OR: u8 = 6;
pub const XOR: u8 = 7;
pub const SHL: u8 = 8;
pub const SHR: u8 = 9;
pub const SHRA: u8 = 10;
pub const EQ: u8 = 11;
pub const NE: u8 = 12;
pub const LT: u8 = 13;
pub const LE: u8 = 14;
pub const GT: u8 = 15;
pub const GE: u8 = 16;
/// Unary: `!acc`.
pub const NOT: u8 = 17;
/// Unary: `-acc`.
pub const NEG: u8 = 18;
/// Unary: `|acc|` as a signed number.
pub const ABS: u8 = 19;
/// Flag in `PlanOp::reg`: the right operand is the op's `imm`, nothing is popped.
pub const IMM: u8 = 0x80;
/// Names, by code, for the op text.
pub const NAMES: [&str; 20] = [
    "add", "sub", "mul", "div", "mod", "and", "or", "xor", "shl", "shr", "shra", "eq", "ne", "lt",
    "le", "gt", "ge", "not", "neg", "abs",
];

/// Whether `code` takes one operand.
#[must_use]
pub const fn is_unary(code: u8) -> bool {
    matches!(code, NOT | NEG | ABS)
}

/// `a OP b` (unary codes: `OP a`); `None` for a division by zero or an unknown code. One
/// definition for the program and the agent (which folds constant operands with it), so
/// both compute the same value. No signed division instruction is used: the program's
/// target (BPF before v4) has none.
#[inline(always)]
#[must_use]
pub fn eval(code: u8, a: u64, b: u64) -> Option<u64> {
    let (sa, sb) = (a as i64, b as i64);
    Some(match code {
        ADD => a.wrapping_add(b),
        SUB => a.wrapping_sub(b),
        MUL => a.wrapping_mul(b),
        DIV => {
            if b == 0 {
                return None;
            }
            let q = sa.unsigned_abs() / sb.unsigned_abs();
            if (sa < 0) != (sb < 0) {
                q.wrapping_neg()
            } else {
                q
            }
        }
        MOD => {
            if b == 0 {
                return None;
            }
            a % b
        }
        AND => a & b,
        OR => a | b,
        XOR => a ^ b,
        SHL => {
            if b >= 64 {
                0
            } else {
                a << b
            }
        }
        SHR => {
            if b >= 64 {
                0
            } else {
                a >> b
            }
        }
        SHRA => {
            if b >= 64 {
                (sa >> 63) as u64
            } else {
                (sa >> b) as u64
            }
        }
        EQ => u64::from(a == b),
        NE => u64::from(a != b),
        LT => u64::from(sa < sb),
        LE => u64::from(sa <= sb),
        GT => u64::from(sa > sb),
        GE => u64::from(sa >= sb),
        NOT => !a,
        NEG => a.wrapping_neg(),
        ABS => sa.unsigned_abs(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alu_has_dwarf_semantics() {
        let m = |x: i64| x as u64;
        assert_eq!(
            eval(DIV, m(-100), 7),
            Some(m(-14)),
            "div is signed, truncating"
        );
        assert_eq!(eval(DIV, m(100), m(-7)), Some(m(-14)));
        assert_eq!(eval(DIV, 1, 0), None);
        assert_eq!(eval(MOD, 5011, 13), Some(6), "mod is unsigned");
        assert_eq!(eval(MOD, 1, 0), None);
        assert_eq!(eval(LT, m(-1), 1), Some(1), "comparisons are signed");
        assert_eq!(eval(GE, m(-1), 1), Some(0));
        assert_eq!(eval(NE, 3, 0), Some(1));
        assert_eq!(eval(EQ, 3, 3), Some(1));
        assert_eq!(
            eval(SHR, m(-8), 1),
            Some(u64::MAX >> 1 & !3),
            "shr is logical"
        );
        assert_eq!(eval(SHRA, m(-8), 1), Some(m(-4)), "shra is arithmetic");
        assert_eq!(eval(SHL, 1, 64), Some(0));
        assert_eq!(eval(SHRA, m(-8), 99), Some(u64::MAX));
        assert_eq!(eval(ABS, m(-5), 0), Some(5));
        assert_eq!(eval(NEG, 5, 0), Some(m(-5)));
        assert_eq!(eval(NOT, 0, 0), Some(u64::MAX));
        assert_eq!(eval(99, 0, 0), None);
        assert_eq!(NAMES.len(), usize::from(ABS) + 1);
        assert!(is_unary(NOT) && !is_unary(SUB));
    }
}
