//! Probes on the branches into a block the kernel emulates nothing of.
//!
//! Why: some blocks have no instruction the kernel emulates — optimized Rust's formatting code
//! ending in `call *GOT`, a `mov` chain before a `ret` — so no placement inside them avoids the
//! single-step (~17× an emulated hit). But a block is entered only through its ways in, and
//! when every one of them is a relative jump or a conditional branch (which the kernel does
//! emulate), a probe on each fires right before the block runs: the branch writes no register
//! and no memory, so the values are exactly those the block starts with, and together the
//! probes fire exactly once per execution of the block. A conditional branch's probe carries
//! the branch's condition in its cookie ([`detrix_common::guard`]); the program drops a pass
//! that goes the other way before counting it.
//!
//! Padding that falls into the block after an unconditional jump (nothing leads to it) is no
//! way in. A block that always goes on into this one (it ends only because this one is a join)
//! is one: its probe goes on an emulated instruction of that block whose values are proven the
//! same through the rest of it, and must read them with the very plan the branches' probes
//! read (one plan per probe).
//!
//! A block that starts a function is entered by the function's callers: when every way in is
//! a `call rel32` (which the kernel emulates) — the file takes the function's address nowhere
//! ([`crate::debuginfo::refs`]) — a probe goes on each call, with the plan re-based for `rsp`,
//! 8 bytes higher before the call pushes its return address ([`super::proof::before_call`]).
//!
//! Refused: a way in that is neither (a call that may not return to it, a landing pad, a jump
//! table, a function's address taken), more than [`MAX_EDGES`] ways, and a conditional branch
//! that tests a loop the block comes after (it runs again without passing the block, and the
//! block never leads back to it): it would trap on every iteration to catch one execution,
//! which can cost more than the single-step it saves. A branch inside the same loop as the
//! block (a `match` arm in a loop's body) is kept: it traps once per iteration, the block runs
//! on some of them. (An inner loop's exit inside an outer loop is kept too: the graph does not
//! tell how many times the inner one turns.)

use iced_x86::{ConditionCode, FlowControl, Instruction};

use super::{refused_by_kernel, trap_kind, TrapKind};
use crate::codegen::block::Flow;
use crate::codegen::cfg::Cfg;
use crate::codegen::{branch, Branch, Function};
use crate::debuginfo::refs::{Refs, Via};
use crate::debuginfo::LinkAddr;

/// Most probes that stand for one probe point.
pub const MAX_EDGES: usize = 8;

/// One branch into the block, probed in its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub addr: LinkAddr,
    /// The instruction, AT&T syntax.
    pub text: String,
    /// For a conditional branch: the x86 condition (0 = `jo` … 15 = `jg`) under which it goes
    /// into the block.
    pub cc: Option<u8>,
    /// A `call` of the function whose first block this is (see [`callers`]): `rsp` is 8 bytes
    /// higher there, and the plan reads accordingly.
    pub call: bool,
    /// An instruction of the block that falls into this one ([`Ways::fall`]): more code runs
    /// between it and the block, so only what the plan reads is proven the same there.
    pub early: bool,
}

impl Edge {
    /// `addr text (when …)` for `--explain`.
    #[must_use]
    pub fn sentence(&self) -> String {
        if self.call {
            return format!("{} {} (a call of the function)", self.addr, self.text);
        }
        match self.cc {
            Some(cc) => format!(
                "{} {} (counted when it goes to the block: condition {})",
                self.addr,
                self.text,
                CC_NAMES[usize::from(cc & 0xf)]
            ),
            None => format!("{} {}", self.addr, self.text),
        }
    }
}

const CC_NAMES: [&str; 16] = [
    "o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g",
];

/// The branches into the block starting at instruction `first`, or why they cannot stand for
/// a probe there.
///
/// # Errors
/// A sentence naming the way in that is not an emulated branch, or the loop.
pub fn into(func: &Function, flow: &Flow, first: usize) -> Result<Ways, String> {
    let instrs = &func.instrs;
    let at = LinkAddr(instrs[first].ip());
    if !flow.known() {
        return Err("not every way into the function's code is known".to_owned());
    }
    if first == 0 {
        return Err("the block starts at the function's entry (its callers lead there)".to_owned());
    }
    let target = instrs[first].ip();
    let mut edges = Vec::new();
    let mut fall = None;
    let mut ways = 0u32;
    let mut graph: Option<Cfg> = None;
    for (k, i) in instrs.iter().enumerate() {
        let fc = i.flow_control();
        let cond = fc == FlowControl::ConditionalBranch;
        let goes_in = match fc {
            FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch => {
                branch(i) == Branch::Direct(target)
            }
            FlowControl::IndirectBranch if func.table(i).is_some_and(|t| t.contains(&target)) => {
                return Err(format!(
                    "the jump table read by `{}` at {} leads there",
                    super::proof::text(i),
                    LinkAddr(i.ip())
                ));
            }
            _ => false,
        };
        let falls_in = k + 1 == first
            && !matches!(
                fc,
                FlowControl::Return
                    | FlowControl::UnconditionalBranch
                    | FlowControl::IndirectBranch
            );
        if falls_in && !cond && dead(flow, k) {
            // Padding after a jump (`nopw` before a loop head): nothing leads there.
            ways += 1;
            continue;
        }
        if falls_in && !cond && flow.only_next(k) == Some(first) {
            // The end of a block that always goes on into this one: its probe goes in that
            // block (see `Ways::fall`).
            ways += 1;
            fall = Some(k);
            continue;
        }
        if falls_in && !cond {
            return Err(format!(
                "control falls into it from `{}` at {}, which may not go on to it (a call whose unwinding lands in the function, a system call)",
                super::proof::text(i),
                LinkAddr(i.ip())
            ));
        }
        if !goes_in && !falls_in {
            continue;
        }
        ways += 1;
        if trap_kind(i) != TrapKind::Emulated || refused_by_kernel(i) {
            return Err(format!(
                "the branch `{}` at {} is single-stepped too",
                super::proof::text(i),
                LinkAddr(i.ip())
            ));
        }
        let cc = match (cond, goes_in, falls_in) {
            (false, _, _) | (true, true, true) => None,
            (true, true, false) => Some(code(i)?),
            (true, false, _) => Some(code(i)? ^ 1),
        };
        let graph = graph.get_or_insert_with(|| Cfg::whole(func));
        // A loop the block comes after: the branch runs again without passing the block, and
        // the block never leads back to it.
        if cc.is_some()
            && graph.leads(i.ip(), i.ip(), Some(target))
            && !graph.leads(target, i.ip(), None)
        {
            return Err(format!(
                "the branch `{}` at {} tests a loop the block comes after: it would trap on every iteration",
                super::proof::text(i),
                LinkAddr(i.ip())
            ));
        }
        edges.push(Edge {
            addr: LinkAddr(i.ip()),
            text: super::proof::text(i),
            cc,
            call: false,
            early: false,
        });
    }
    if ways != flow.ways_in(first) {
        return Err(format!(
            "a way into {at} is not a branch of the function (its entry, a landing pad or a call)"
        ));
    }
    if edges.is_empty() {
        return Err(format!("nothing in the function branches to {at}"));
    }
    let n = edges.len() + usize::from(fall.is_some());
    if n > MAX_EDGES {
        return Err(format!(
            "{n} ways lead there; at most {MAX_EDGES} probes stand for one"
        ));
    }
    Ok(Ways { edges, fall })
}

/// The ways into a block: the branches, and the instruction that falls into it, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ways {
    pub edges: Vec<Edge>,
    /// The last instruction of a block that always goes on into this one (it is a join, so
    /// that block ends there): every run of that block is one way in, so a probe anywhere in
    /// it whose values are proven the same through the rest of it stands for this way.
    pub fall: Option<usize>,
}

/// The calls of the function whose first instruction starts the block, when they are every
/// way into it: nothing in the function branches back to its first instruction, and the file
/// takes its address nowhere ([`Refs`]); `decode` gives the instruction at a call site.
///
/// # Errors
/// Why the calls are not every way in, or cannot be probed.
pub fn callers(
    func: &Function,
    flow: &Flow,
    refs: &Refs,
    decode: &dyn Fn(u64) -> Option<Instruction>,
) -> Result<Vec<Edge>, String> {
    let Some(start) = func.instrs.first().map(Instruction::ip) else {
        return Err("the function has no code".to_owned());
    };
    if flow.ways_in(0) != 1 {
        return Err("a branch of the function leads back to its first instruction".to_owned());
    }
    let Some(sites) = refs.only_direct(start) else {
        return Err(
            "the block starts at the function's entry, whose address the file takes (a pointer to it, an export or an address computed in code): it may be called indirectly".to_owned(),
        );
    };
    if sites.is_empty() {
        return Err("nothing in the file calls the function directly".to_owned());
    }
    if sites.len() > MAX_EDGES {
        return Err(format!(
            "{} calls lead to the function; at most {MAX_EDGES} probes stand for one",
            sites.len()
        ));
    }
    let mut edges = Vec::new();
    for &(at, via) in sites {
        if via == Via::Jump {
            return Err(format!(
                "a jump at {} enters the function (a tail call: rsp is not a call's)",
                LinkAddr(at)
            ));
        }
        let i = decode(at)
            .ok_or_else(|| format!("the call at {} could not be decoded", LinkAddr(at)))?;
        if trap_kind(&i) != TrapKind::Emulated || refused_by_kernel(&i) {
            return Err(format!(
                "the call `{}` at {} is single-stepped too",
                super::proof::text(&i),
                LinkAddr(at)
            ));
        }
        edges.push(Edge {
            addr: LinkAddr(at),
            text: super::proof::text(&i),
            cc: None,
            call: true,
            early: false,
        });
    }
    Ok(edges)
}

/// Whether nothing ever runs instruction `k`: no way leads to it, or only the fall from one
/// such instruction before it (a run of padding after a jump).
fn dead(flow: &Flow, mut k: usize) -> bool {
    for _ in 0..64 {
        match flow.ways_in(k) {
            0 => return true,
            1 if k > 0 && flow.only_from(k) == Some(k - 1) && flow.only_next(k - 1) == Some(k) => {
                k -= 1;
            }
            _ => return false,
        }
    }
    false
}

/// The low nibble of the `jcc` opcode for `i`.
fn code(i: &Instruction) -> Result<u8, String> {
    let cc = i.condition_code();
    if cc == ConditionCode::None || !i.is_jcc_short_or_near() {
        return Err(format!(
            "`{}` at {} is not a jump on flags",
            super::proof::text(i),
            LinkAddr(i.ip())
        ));
    }
    // iced's order is the opcode's: None, o, no, b, ae, e, ne, be, a, s, ns, p, np, l, ge, le, g.
    Ok((cc as u8).wrapping_sub(1) & 0xf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::block::CallFlow;

    fn edges(code: &[u8], first_addr: u64) -> Result<Vec<Edge>, String> {
        ways(code, first_addr).map(|w| w.edges)
    }

    fn ways(code: &[u8], first_addr: u64) -> Result<Ways, String> {
        let f = Function::decode(code, 0x1000);
        let flow = Flow::of(&f, &CallFlow::Returns);
        let first = f
            .instrs
            .iter()
            .position(|i| i.ip() == first_addr)
            .expect("an instruction there");
        into(&f, &flow, first)
    }

    #[test]
    fn a_jump_and_a_conditional_branch_stand_for_the_block() {
        // 0x1000 test %edi,%edi / 0x1002 je 0x100a / 0x1004 mov $1,%eax / 0x1009 ret /
        // 0x100a jmp 0x100c / 0x100c mov %edi,%eax / 0x100e ret
        let code = [
            0x85, 0xff, 0x74, 0x06, 0xb8, 1, 0, 0, 0, 0xc3, 0xeb, 0x00, 0x89, 0xf8, 0xc3,
        ];
        // The block at 0x100c: reached by the jmp at 0x100a only (joined: one way in).
        let e = edges(&code, 0x100c).expect("one jump");
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].addr, e[0].cc), (LinkAddr(0x100a), None));
        // The block at 0x100a: the je, taken (ZF set: condition e = 4).
        let e = edges(&code, 0x100a).expect("the je");
        assert_eq!((e[0].addr, e[0].cc), (LinkAddr(0x1002), Some(4)));
        // The block at 0x1004: the je not taken (condition ne = 5).
        let e = edges(&code, 0x1004).expect("the je, falling through");
        assert_eq!((e[0].addr, e[0].cc), (LinkAddr(0x1002), Some(5)));
    }

    #[test]
    fn other_ways_in_and_loop_tests_are_refused() {
        // 0x1000 xor %eax,%eax / 0x1002 inc %eax / 0x1004 cmp %edi,%eax / 0x1006 jl 0x1002 /
        // 0x1008 ret
        let code = [0x31, 0xc0, 0xff, 0xc0, 0x39, 0xf8, 0x7c, 0xfa, 0xc3];
        // 0x1002 (the loop head): the xor falls into it, the jl branches back.
        let w = ways(&code, 0x1002).expect("the jl and the fall from the xor");
        assert_eq!(w.fall, Some(0), "the xor's block falls in");
        assert_eq!(
            (w.edges[0].addr, w.edges[0].cc),
            (LinkAddr(0x1006), Some(0xc))
        );
        // 0x1008 (after the loop): the jl runs every iteration.
        let e = edges(&code, 0x1008).expect_err("a loop's test");
        assert!(e.contains("tests a loop the block comes after"), "{e}");
        // The function's entry.
        let e = edges(&code, 0x1000).expect_err("entry");
        assert!(e.contains("function's entry"), "{e}");
    }

    #[test]
    fn a_branch_inside_the_loop_of_the_block_is_kept() {
        // 0x1000 xor %eax,%eax / 0x1002 test $1,%al / 0x1004 je 0x1008 / 0x1006 inc %eax /
        // 0x1008 inc %eax / 0x100a cmp %edi,%eax / 0x100c jl 0x1002 / 0x100e ret
        let code = [
            0x31, 0xc0, 0xa8, 0x01, 0x74, 0x02, 0xff, 0xc0, 0xff, 0xc0, 0x39, 0xf8, 0x7c, 0xf4,
            0xc3,
        ];
        // The arm at 0x1006 (a `match` arm in a loop's body): the je, not taken.
        let e = edges(&code, 0x1006).expect("the je stays");
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].addr, e[0].cc), (LinkAddr(0x1004), Some(5)));
        // 0x1008 is reached by the je and by falling from the inc at 0x1006.
        let w = ways(&code, 0x1008).expect("the je and the fall");
        assert_eq!(w.fall, Some(3));
        assert_eq!(
            (w.edges[0].addr, w.edges[0].cc),
            (LinkAddr(0x1004), Some(4))
        );
    }
}
