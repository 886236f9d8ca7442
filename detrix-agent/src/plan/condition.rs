//! Conditions: a parsed `expr op literal` on one captured value → the kernel's [`Condition`],
//! checked against the value's shape (integers by size and sign, doubles by their ordered
//! key, strings by bytes after the value's header).
//!
//! Why here and not in the kernel: every mismatch (a string compared with a number, a literal
//! that does not fit the type) is refused at build time with a sentence naming the condition.

use detrix_common::{cond, Condition, COND_STR_BYTES};

use crate::expr::{self, CmpOp, Literal};

use super::shape::Shape;
use super::{PlanError, ValueDecoder};

/// Fills a string comparison (`==`, `!=`, `^=`) into `k`.
fn string_condition(
    k: &mut Condition,
    c: &expr::Condition,
    err: &dyn Fn(String) -> PlanError,
) -> Result<(), PlanError> {
    let Literal::Str(s) = &c.literal else {
        return Err(err(format!(
            "`{}` is a string; compare it with a quoted string",
            c.expr_text
        )));
    };
    if !matches!(c.op, CmpOp::Eq | CmpOp::Ne | CmpOp::Prefix) {
        return Err(err(
            "strings compare with ==, != or ^= (starts with)".to_owned()
        ));
    }
    if s.len() > COND_STR_BYTES {
        return Err(err(format!(
            "string constants are at most {COND_STR_BYTES} bytes"
        )));
    }
    k.kind = if c.op == CmpOp::Prefix {
        cond::STR_PREFIX
    } else {
        cond::STR_EQ
    };
    k.len = s.len() as u16;
    k.bytes[..s.len()].copy_from_slice(s.as_bytes());
    Ok(())
}

/// Turns a parsed condition on value `vi` into the kernel's [`Condition`].
pub(super) fn lower_condition(
    c: &expr::Condition,
    vi: usize,
    v: &ValueDecoder,
) -> Result<Condition, PlanError> {
    let err = |what: String| PlanError::Condition {
        cond: c.text.clone(),
        what,
    };
    let mut k = Condition::NONE;
    k.value = vi as u8;
    k.dst = v.dst as u16;
    k.cmp = match c.op {
        CmpOp::Eq | CmpOp::Prefix => cond::EQ,
        CmpOp::Ne => cond::NE,
        CmpOp::Lt => cond::LT,
        CmpOp::Le => cond::LE,
        CmpOp::Gt => cond::GT,
        CmpOp::Ge => cond::GE,
    };
    let int_imm = |lit: &Literal, signed: bool, size: u8| -> Result<i64, PlanError> {
        let v = match lit {
            Literal::Int(i) => *i,
            Literal::Bool(b) => i128::from(*b),
            Literal::Str(s) if s.chars().count() == 1 => {
                i128::from(u32::from(s.chars().next().unwrap_or('\0')))
            }
            other => {
                return Err(err(format!(
                    "`{}` is an integer; compare it with an integer, not {other:?}",
                    c.expr_text
                )))
            }
        };
        let bits = 8 * u32::from(size);
        let (lo, hi) = if signed {
            (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
        } else {
            (0, (1i128 << bits) - 1)
        };
        if v < lo || v > hi {
            return Err(err(format!(
                "{v} does not fit the {size}-byte type of `{}`",
                c.expr_text
            )));
        }
        Ok(v as i64)
    };
    let numeric_only = || -> Result<(), PlanError> {
        if c.op == CmpOp::Prefix {
            Err(err("`^=` compares strings only".to_owned()))
        } else {
            Ok(())
        }
    };
    match &v.shape {
        Shape::Int { size, signed } | Shape::Enum { size, signed, .. } => {
            numeric_only()?;
            k.kind = if *signed { cond::INT } else { cond::UINT };
            k.size = *size;
            k.imm = int_imm(&c.literal, *signed, *size)?;
        }
        Shape::Char { size } => {
            numeric_only()?;
            k.kind = cond::UINT;
            k.size = *size;
            k.imm = int_imm(&c.literal, false, *size)?;
        }
        Shape::Bool { .. } => {
            numeric_only()?;
            k.kind = cond::UINT;
            k.size = 1;
            k.imm = int_imm(&c.literal, false, 1)?;
        }
        Shape::Pointer => {
            numeric_only()?;
            k.kind = cond::UINT;
            k.size = 8;
            k.imm = int_imm(&c.literal, false, 8)?;
        }
        Shape::Float { size: 8 } => {
            numeric_only()?;
            let f = match c.literal {
                Literal::Float(f) => f,
                Literal::Int(i) => i as f64,
                _ => {
                    return Err(err(format!(
                        "`{}` is a double; compare it with a number",
                        c.expr_text
                    )))
                }
            };
            k.kind = cond::F64;
            k.size = 8;
            k.imm = detrix_common::f64_key(f.to_bits()) as i64;
        }
        Shape::Counted { layout, .. } if layout.style.is_text() => {
            // The text follows the (pointer, length) header in the value's data.
            string_condition(&mut k, c, &err)?;
            k.dst = (v.dst + layout.header as usize) as u16;
        }
        Shape::CString { .. } => {
            // The string follows the pointer in the value's data.
            string_condition(&mut k, c, &err)?;
            k.dst = (v.dst + 8) as u16;
        }
        Shape::CharArray { .. } => string_condition(&mut k, c, &err)?,
        other => {
            return Err(err(format!(
                "values of this kind ({other:?}) cannot be compared in the kernel"
            )))
        }
    }
    Ok(k)
}
