//! The tree a DWARF expression is evaluated into ([`DwExpr`]): registers, constants, loads
//! and arithmetic over what only the hit knows, folded where both operands are constants,
//! and the `detrix_common::alu` code of each operation for the plan.
//!
//! Why apart from `location.rs`: the tree is the vocabulary shared by the stack machine
//! (`location.rs`), entry values (`entry.rs`) and the plan's lowering (`plan::lower`); the
//! machine that builds it is one of its users.

/// What an address is relative to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrBase {
    /// The value of a DWARF-numbered register at the probe.
    Register(u16),
    /// A link-time address (add the load bias for `ET_DYN` objects).
    Absolute,
}

/// A binary operation of a DWARF expression (`DW_OP_plus` … `DW_OP_ne`), with DWARF's meaning
/// for the generic type (see `detrix_common::alu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DwBin {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    And,
    Or,
    Xor,
    Shl,
    Shr,
    Shra,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A unary operation of a DWARF expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DwUn {
    Not,
    Neg,
    Abs,
}

/// One value on the DWARF stack, as a tree over what the hit knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DwExpr {
    /// A DWARF-numbered register's value.
    Reg(u16),
    /// A constant.
    Const(i64),
    /// A link-time address (`DW_OP_addr`): the load bias is added for `ET_DYN` objects.
    Addr(i64),
    /// `size` bytes loaded from an address, zero-extended (`DW_OP_deref`, `DW_OP_deref_size`).
    Deref {
        addr: Box<DwExpr>,
        size: u8,
    },
    Bin(DwBin, Box<DwExpr>, Box<DwExpr>),
    Un(DwUn, Box<DwExpr>),
    /// DWARF register `reg` (a general one) as it was when the probed frame entered its
    /// function (`DW_OP_entry_value`), saved by an entry probe: `cfa` is the frame's CFA at
    /// the probe (which names the frame's slot), `fallback` the same value recovered from the
    /// callers' call sites, for a frame that has no slot (entered before the probes were).
    Entry {
        reg: u16,
        cfa: Box<DwExpr>,
        fallback: Option<Box<DwExpr>>,
    },
}

impl DwExpr {
    pub(super) fn bin(op: DwBin, a: DwExpr, b: DwExpr) -> DwExpr {
        // Constants are folded here, with the program's own arithmetic.
        if let (DwExpr::Const(x), DwExpr::Const(y)) = (&a, &b) {
            if let Some(v) = detrix_common::alu::eval(alu_code(op), *x as u64, *y as u64) {
                return DwExpr::Const(v as i64);
            }
        }
        DwExpr::Bin(op, Box::new(a), Box::new(b))
    }

    pub(super) fn plus(self, c: i64) -> DwExpr {
        if c == 0 {
            self
        } else {
            DwExpr::bin(DwBin::Add, self, DwExpr::Const(c))
        }
    }

    /// `base + offset` when the tree is a chain of constant additions on `base`.
    pub(super) fn split_offset(&self) -> (&DwExpr, i64) {
        let mut t = self;
        let mut off: i64 = 0;
        loop {
            match t {
                DwExpr::Bin(DwBin::Add, a, b) => match (&**a, &**b) {
                    (x, DwExpr::Const(c)) | (DwExpr::Const(c), x) => {
                        off = off.wrapping_add(*c);
                        t = x;
                    }
                    _ => return (t, off),
                },
                DwExpr::Bin(DwBin::Sub, a, b) => match &**b {
                    DwExpr::Const(c) => {
                        off = off.wrapping_sub(*c);
                        t = a;
                    }
                    _ => return (t, off),
                },
                _ => return (t, off),
            }
        }
    }

    /// `(base, offset)` when the tree is a register or a link-time address plus a constant.
    pub(super) fn plain_address(&self) -> Option<(AddrBase, i64)> {
        match self.split_offset() {
            (DwExpr::Reg(r), off) => Some((AddrBase::Register(*r), off)),
            (DwExpr::Addr(a), off) => Some((AddrBase::Absolute, a.wrapping_add(off))),
            _ => None,
        }
    }

    /// How many operands the program must hold at once to compute the tree (its
    /// `PUSH`/`ALU` stack depth).
    #[must_use]
    pub fn depth(&self) -> usize {
        match self {
            DwExpr::Reg(_) | DwExpr::Const(_) | DwExpr::Addr(_) => 0,
            DwExpr::Deref { addr, .. } => addr.depth(),
            DwExpr::Un(_, a) => a.depth(),
            DwExpr::Bin(_, a, b) if matches!(**b, DwExpr::Const(_)) => a.depth(),
            DwExpr::Bin(_, a, b) => a.depth().max(1 + b.depth()),
            DwExpr::Entry { cfa, fallback, .. } => {
                cfa.depth().max(fallback.as_ref().map_or(0, |f| f.depth()))
            }
        }
    }
}

/// The program's `alu` code of a DWARF binary operation.
#[must_use]
pub fn alu_code(op: DwBin) -> u8 {
    use detrix_common::alu;
    match op {
        DwBin::Add => alu::ADD,
        DwBin::Sub => alu::SUB,
        DwBin::Mul => alu::MUL,
        DwBin::Div => alu::DIV,
        DwBin::Mod => alu::MOD,
        DwBin::And => alu::AND,
        DwBin::Or => alu::OR,
        DwBin::Xor => alu::XOR,
        DwBin::Shl => alu::SHL,
        DwBin::Shr => alu::SHR,
        DwBin::Shra => alu::SHRA,
        DwBin::Eq => alu::EQ,
        DwBin::Ne => alu::NE,
        DwBin::Lt => alu::LT,
        DwBin::Le => alu::LE,
        DwBin::Gt => alu::GT,
        DwBin::Ge => alu::GE,
    }
}

/// The program's `alu` code of a DWARF unary operation.
#[must_use]
pub fn alu_unary(op: DwUn) -> u8 {
    use detrix_common::alu;
    match op {
        DwUn::Not => alu::NOT,
        DwUn::Neg => alu::NEG,
        DwUn::Abs => alu::ABS,
    }
}
