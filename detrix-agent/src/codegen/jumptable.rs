//! Where a `switch`'s jump table sends control: the targets of a `jmp reg` that reads a table
//! of 32-bit offsets relative to the table, the shape LLVM and GCC emit for position-independent
//! code (every Rust `match` and C `switch` dense enough for a table):
//!
//! ```text
//! lea    rcx, [rip + TABLE]          ; the table's address
//! movsxd rax, dword ptr [rcx + 4*rax] ; its entry for the index
//! add    rax, rcx                     ; entry + table = target
//! jmp    rax
//! ```
//!
//! Why: an indirect jump whose targets are unknown may land anywhere, so a function holding
//! one gets no block joins ([`super::block`]) and keeps every row run ([`super::cfg`]); with a
//! table's targets known it is an ordinary multi-way branch.
//!
//! The table's length is read off the bounds check before it (`cmp index, N; ja default`,
//! nothing entering in between): exactly that many entries, and one pointing outside the
//! function is a way out, as a direct jump there is (GCC moves cold cases to a `.cold` part).
//! Without a bounds check (LLVM drops it when the index is an enum's tag, every `match` of a
//! Rust enum), entries are read until one points outside the function, the read-only data
//! ends, or the next table of the function starts: every real entry points into the function
//! (LLVM splits no cold part by default), so none is missed, and an entry read past the table
//! adds a target that is not one — more ways into an instruction only make blocks shorter and
//! keep more runs, what an unknown jump did anyway. An entry that points inside the function
//! but between instructions cannot be told apart from a wrong decode: that jump stays unknown.

use std::collections::{HashMap, HashSet};

use iced_x86::{FlowControl, Instruction, Mnemonic, OpKind, Register};

/// Most entries read from one table.
const MAX_ENTRIES: u64 = 4096;

/// How far before the jump its table's `lea` may be, in instructions.
const WINDOW: usize = 12;

/// The targets of every `jmp reg` of `instrs` that reads a relative jump table, by the jump's
/// address. `read(addr, len)` gives read-only bytes of the binary (`None` outside them).
#[must_use]
pub fn recover<'a>(
    instrs: &[Instruction],
    read: impl Fn(u64, usize) -> Option<&'a [u8]>,
) -> HashMap<u64, Vec<u64>> {
    let (Some(first), Some(last)) = (instrs.first(), instrs.last()) else {
        return HashMap::new();
    };
    let (lo, hi) = (first.ip(), last.next_ip());
    let boundaries: HashSet<u64> = instrs.iter().map(Instruction::ip).collect();
    let branch_targets: HashSet<u64> = instrs
        .iter()
        .filter(|i| {
            matches!(
                i.flow_control(),
                FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch
            )
        })
        .filter(|i| i.op0_kind() == OpKind::NearBranch64)
        .map(Instruction::near_branch_target)
        .collect();
    let tables: Vec<(u64, Table)> = instrs
        .iter()
        .enumerate()
        .filter_map(|(k, i)| Some((i.ip(), table_of(instrs, k, &branch_targets)?)))
        .collect();
    let bases: HashSet<u64> = tables.iter().map(|(_, t)| t.base).collect();
    let mut out = HashMap::new();
    for (jmp, Table { base, len }) in tables {
        let mut targets = Vec::new();
        let mut ok = true;
        for n in 0..len.unwrap_or(MAX_ENTRIES) {
            let at = base.wrapping_add(4 * n);
            if len.is_none() && n > 0 && bases.contains(&at) {
                break;
            }
            let Some(bytes) = read(at, 4).and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
                // A bounded table must be read whole.
                ok = len.is_none();
                break;
            };
            let target = base.wrapping_add_signed(i64::from(i32::from_le_bytes(bytes)));
            if target < lo || target >= hi {
                if len.is_none() {
                    break;
                }
            } else if !boundaries.contains(&target) {
                ok = false;
                break;
            }
            targets.push(target);
        }
        if ok && !targets.is_empty() {
            targets.sort_unstable();
            targets.dedup();
            out.insert(jmp, targets);
        }
    }
    out
}

/// A jump table: where it is and, when a bounds check says, how many entries it has.
struct Table {
    base: u64,
    len: Option<u64>,
}

/// The table the jump at `instrs[k]` reads, when it has the shape above: `jmp R` after
/// `add R, S` where one of R and S was loaded by `movsxd X, dword [Y + 4*index]` from the other,
/// and that other one by `lea Y, [rip + TABLE]` before it. Nothing between the `lea` and the
/// jump may be a branch's target (another way in could bring other values) or leave the
/// straight line.
fn table_of(instrs: &[Instruction], k: usize, branch_targets: &HashSet<u64>) -> Option<Table> {
    let jmp = &instrs[k];
    if jmp.flow_control() != FlowControl::IndirectBranch || jmp.op0_kind() != OpKind::Register {
        return None;
    }
    let r = jmp.op0_register();
    if r.size() != 8 {
        return None;
    }
    let from = k.saturating_sub(WINDOW);
    // The last writer of `reg` in instrs[from..before], scanning back.
    let writer =
        |reg: Register, before: usize| (from..before).rev().find(|&j| writes(&instrs[j], reg));
    let add_at = writer(r, k)?;
    let add = &instrs[add_at];
    if add.mnemonic() != Mnemonic::Add
        || add.op0_kind() != OpKind::Register
        || add.op1_kind() != OpKind::Register
        || add.op0_register() != r
    {
        return None;
    }
    let s = add.op1_register();
    if s.size() != 8 || s == r {
        return None;
    }
    // Which of the two holds the entry and which the table.
    let (load_at, base_reg) = match (writer(r, add_at), writer(s, add_at)) {
        (Some(a), Some(b)) if a > b => (a, s),
        (Some(a), Some(b)) if b > a => (b, r),
        _ => return None,
    };
    let load = &instrs[load_at];
    let loaded = if base_reg == s { r } else { s };
    if load.mnemonic() != Mnemonic::Movsxd
        || load.op0_kind() != OpKind::Register
        || load.op0_register() != loaded
        || load.op1_kind() != OpKind::Memory
        || load.memory_base() != base_reg
        || load.memory_index() == Register::None
        || load.memory_index_scale() != 4
        || load.memory_displacement64() != 0
        || load.memory_size().size() != 4
    {
        return None;
    }
    let lea_at = writer(base_reg, load_at)?;
    let lea = &instrs[lea_at];
    if lea.mnemonic() != Mnemonic::Lea
        || lea.op0_register() != base_reg
        || lea.memory_base() != Register::RIP
        || lea.memory_index() != Register::None
    {
        return None;
    }
    // From the `lea` on, control only falls through to the jump, and enters nowhere but at
    // the `lea`.
    let between = &instrs[lea_at + 1..k];
    let straight = between.iter().all(|i| {
        matches!(
            i.flow_control(),
            FlowControl::Next | FlowControl::ConditionalBranch
        )
    }) && between
        .iter()
        .chain([jmp])
        .all(|i| !branch_targets.contains(&i.ip()));
    straight.then(|| Table {
        base: lea.ip_rel_memory_address(),
        len: bound(
            instrs,
            load_at,
            load.memory_index().full_register(),
            branch_targets,
        ),
    })
}

/// How many entries the bounds check before `instrs[load_at]` allows its `index`: `cmp index,
/// N` right before `ja` (N + 1 entries) or `jae` (N), the load on its fall-through with no
/// way in between and the index unchanged but for a zero extension (`mov eax, eax`).
fn bound(
    instrs: &[Instruction],
    load_at: usize,
    index: Register,
    branch_targets: &HashSet<u64>,
) -> Option<u64> {
    for j in (load_at.saturating_sub(WINDOW)..load_at).rev() {
        let i = &instrs[j];
        if branch_targets.contains(&instrs[j + 1].ip()) {
            return None;
        }
        if matches!(i.mnemonic(), Mnemonic::Ja | Mnemonic::Jae) {
            let cmp = &instrs[j.checked_sub(1)?];
            if branch_targets.contains(&i.ip())
                || cmp.mnemonic() != Mnemonic::Cmp
                || cmp.op0_kind() != OpKind::Register
                || cmp.op0_register().full_register() != index
                || !matches!(
                    cmp.op1_kind(),
                    OpKind::Immediate8to32
                        | OpKind::Immediate8to64
                        | OpKind::Immediate32
                        | OpKind::Immediate32to64
                        | OpKind::Immediate8
                )
            {
                return None;
            }
            // A negative bound is a huge unsigned one: no table is that long.
            let n = cmp.immediate(1);
            let len = if i.mnemonic() == Mnemonic::Ja {
                n.checked_add(1)?
            } else {
                n
            };
            return (len > 0 && len <= MAX_ENTRIES).then_some(len);
        }
        if i.flow_control() != FlowControl::Next
            && i.flow_control() != FlowControl::ConditionalBranch
        {
            return None;
        }
        let zero_extends = i.mnemonic() == Mnemonic::Mov
            && i.op0_kind() == OpKind::Register
            && i.op1_kind() == OpKind::Register
            && i.op0_register() == i.op1_register()
            && i.op0_register().size() == 4;
        if writes(i, index) && !zero_extends {
            return None;
        }
    }
    None
}

/// Whether `i` writes the 64-bit register `reg` (or a part of it).
fn writes(i: &Instruction, reg: Register) -> bool {
    let mut info = iced_x86::InstructionInfoFactory::new();
    info.info(i).used_registers().iter().any(|u| {
        u.register().full_register() == reg
            && matches!(
                u.access(),
                iced_x86::OpAccess::Write
                    | iced_x86::OpAccess::CondWrite
                    | iced_x86::OpAccess::ReadWrite
                    | iced_x86::OpAccess::ReadCondWrite
            )
    })
}

#[cfg(test)]
mod tests {
    use super::recover;
    use crate::codegen::Function;

    /// A function at 0x1000 with a four-way table at 0x2000 (LLVM's shape), the table's
    /// entries `entries` (offsets from 0x2000).
    fn switch(entries: &[i32]) -> (Function, Vec<u8>) {
        let code = [
            0x48, 0x8d, 0x0d, 0xf9, 0x0f, 0x00, 0x00, // 0x1000 lea rcx,[rip+0xff9] → 0x2000
            0x48, 0x63, 0x04, 0x81, // 0x1007 movsxd rax,dword [rcx+rax*4]
            0x48, 0x01, 0xc8, // 0x100b add rax,rcx
            0xff, 0xe0, // 0x100e jmp rax
            0x90, // 0x1010 nop
            0x90, // 0x1011 nop
            0xc3, // 0x1012 ret
            0xc3, // 0x1013 ret
        ];
        let table = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        (Function::decode(&code, 0x1000), table)
    }

    fn read<'a>(table: &'a [u8]) -> impl Fn(u64, usize) -> Option<&'a [u8]> + 'a {
        move |addr, len| {
            let from = usize::try_from(addr.checked_sub(0x2000)?).ok()?;
            table.get(from..from + len)
        }
    }

    #[test]
    fn a_relative_table_gives_its_targets_and_stops_at_the_first_entry_outside() {
        // 0x1010, 0x1012, 0x1010, 0x1013, then an offset to 0x3000: past the table.
        let (f, table) = switch(&[-0x0ff0, -0x0fee, -0x0ff0, -0x0fed, 0x1000, -0x0ff0]);
        let got = recover(&f.instrs, read(&table));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[&0x100e], [0x1010, 0x1012, 0x1013]);
    }

    #[test]
    fn an_entry_between_instructions_leaves_the_jump_unknown() {
        // 0x100f is inside `jmp rax`: a wrong decode cannot be told from data past the table.
        let (f, table) = switch(&[-0x0ff0, -0x0ff1]);
        assert!(recover(&f.instrs, read(&table)).is_empty());
    }

    #[test]
    fn unreadable_tables_and_other_shapes_stay_unknown() {
        let (f, _) = switch(&[]);
        assert!(recover(&f.instrs, |_, _| None).is_empty());
        // jmp rax after `add rax, 8`: not a table.
        let code = [0x48, 0x83, 0xc0, 0x08, 0xff, 0xe0, 0xc3];
        let f = Function::decode(&code, 0x1000);
        let table = [0u8; 16];
        assert!(recover(&f.instrs, read(&table)).is_empty());
    }

    #[test]
    fn a_jump_into_the_sequence_leaves_the_jump_unknown() {
        // 0x1000: jz 0x100b (into the middle: `add` reached with other values); then the table.
        let mut code = vec![0x74, 0x09];
        code.extend([
            0x48, 0x8d, 0x0d, 0xf7, 0x0f, 0x00, 0x00, // 0x1002 lea rcx,[rip+0xff7] → 0x2000
            0x48, 0x63, 0x04, 0x81, // 0x1009 movsxd
            0x48, 0x01, 0xc8, // 0x100d add rax,rcx
            0xff, 0xe0, // 0x1010 jmp rax
            0xc3, // 0x1012 ret
        ]);
        code[1] = 0x0b; // jz → 0x100d, the add
        let f = Function::decode(&code, 0x1000);
        let table: Vec<u8> = (-0x0fee_i32).to_le_bytes().to_vec();
        assert!(recover(&f.instrs, read(&table)).is_empty());
    }

    #[test]
    fn a_bounds_check_gives_the_length_and_an_entry_outside_is_a_way_out() {
        let code = [
            0x83, 0xf8, 0x02, // 0x1000 cmp eax,2
            0x77, 0x12, // 0x1003 ja 0x1017 (the default)
            0x89, 0xc0, // 0x1005 mov eax,eax
            0x48, 0x8d, 0x0d, 0xf2, 0x0f, 0x00, 0x00, // 0x1007 lea rcx,[rip+0xff2] → 0x2000
            0x48, 0x63, 0x04, 0x81, // 0x100e movsxd rax,dword [rcx+rax*4]
            0x48, 0x01, 0xc8, // 0x1012 add rax,rcx
            0xff, 0xe0, // 0x1015 jmp rax
            0xc3, // 0x1017 ret
        ];
        let f = Function::decode(&code, 0x1000);
        assert_eq!(f.instrs[1].near_branch_target(), 0x1017);
        // Three entries (0..=2): 0x1017, a `.cold` part at 0x5000, 0x1017; then data that
        // points back into the function, which the bound leaves unread.
        let entries: [i32; 4] = [-0x0fe9, 0x3000, -0x0fe9, -0x0fe9 + 2];
        let table: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        let got = recover(&f.instrs, read(&table));
        assert_eq!(got[&0x1015], [0x1017, 0x5000]);
        // Cut short: a bounded table must be read whole, or the jump stays unknown.
        assert!(recover(&f.instrs, read(&table[..8])).is_empty());
    }
}
