//! The per-CPU event rings, end to end in one process: this test probes a function of its own
//! binary, calls it with 0, 1, 2, … while nobody drains, and checks that when the ring fills,
//! every hit is still accounted for (`hits == emitted + dropped_ring_full`), that exactly the
//! events that fit were kept, and that draining hands back precisely those values, in order.
//!
//! Needs root (CAP_BPF + CAP_PERFMON) like every uprobe test; without it, it fails saying so.

use std::path::Path;

use detrix_agent::debuginfo::FileOffset;
use detrix_agent::probe::{self, AttachSpec, LoadOptions, Probes};
use detrix_common::{
    metas_bytes, op, pt_regs, record_span, Plan, PlanOp, CPU_RING_BYTES, WIRE_HEADER_BYTES,
};
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

/// The probed function: the argument arrives in `rdi`, which the plan copies.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn detrix_event_ring_test_hot(x: u64) -> u64 {
    std::hint::black_box(x).wrapping_mul(3)
}

/// File offset of `name` in the ELF at `path`.
fn file_offset_of(path: &Path, name: &str) -> u64 {
    let bytes = std::fs::read(path).expect("read own executable");
    let file = object::File::parse(&*bytes).expect("parse own executable");
    let sym = file
        .symbols()
        .find(|s| s.name() == Ok(name))
        .unwrap_or_else(|| panic!("symbol {name} not in {}", path.display()));
    let addr = sym.address();
    let seg = file
        .segments()
        .find(|s| (s.address()..s.address() + s.size()).contains(&addr))
        .unwrap_or_else(|| panic!("no segment holds {name} at {addr:#x}"));
    let (seg_off, _) = seg.file_range();
    addr - seg.address() + seg_off
}

/// Runs the calling thread on CPU 0 only, so every event lands in one ring.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set),
            0,
            "pin to CPU 0"
        );
    }
}

#[test]
fn full_ring_counts_every_drop_and_keeps_exactly_what_fit() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid,
        0,
        "this test attaches uprobes: run it as root (CAP_BPF and CAP_PERFMON), e.g. `sudo -E cargo xtask test`"
    );
    pin_to_cpu0();
    let exe = std::fs::read_link("/proc/self/exe").expect("own executable");
    let offset = file_offset_of(&exe, "detrix_event_ring_test_hot");
    let pid = std::process::id();

    let mut plan = Plan::empty();
    plan.tgid = pid;
    plan.ops[0] = PlanOp {
        kind: op::REG,
        reg: pt_regs::RDI,
        ..PlanOp::default()
    };
    plan.ops[1] = PlanOp {
        kind: op::EMIT_ACC,
        len: 8,
        ..PlanOp::default()
    };
    plan.n_ops = 2;
    plan.n_values = 1;
    plan.data_len = 8;

    let (mut probes, mut rings) =
        Probes::load(LoadOptions::default()).expect("load the eBPF program");
    let id = probes
        .install(
            &plan,
            &AttachSpec {
                binary: &exe,
                offset: FileOffset(offset),
                pid,
                edges: &[],
            },
        )
        .expect("attach to own function");

    // One record: prefix + header + 8 data bytes + one meta (padded): 64 bytes.
    let span = record_span(WIRE_HEADER_BYTES + 8 + metas_bytes(1));
    assert_eq!(span, 64);
    let fit = (CPU_RING_BYTES / span) as u64;
    let calls = fit + 5000;
    for x in 0..calls {
        std::hint::black_box(detrix_event_ring_test_hot(x));
    }
    probes.remove(id).expect("detach");
    let c = probes.counters(id).expect("counters");

    assert_eq!(c.hits, calls, "every call hit the probe: {c:?}");
    assert_eq!(
        c.hits,
        c.emitted + c.dropped_ring_full,
        "every hit accounted for: {c:?}"
    );
    assert_eq!(c.emitted, fit, "exactly a ring's worth kept: {c:?}");
    assert_eq!(
        c.dropped_ring_full,
        calls - fit,
        "the rest counted as dropped: {c:?}"
    );

    let mut got = Vec::new();
    while rings
        .drain(4096, |rec| {
            let (h, data) = probe::parse_record(rec).expect("a record of this ABI");
            assert_eq!(h.probe_id, id);
            assert_eq!(h.pid, pid);
            assert_eq!(h.n_values, 1);
            assert_eq!(h.values[0].len, 8);
            got.push(u64::from_le_bytes(data[..8].try_into().expect("8 bytes")));
        })
        .handed
        > 0
    {}
    let want: Vec<u64> = (0..fit).collect();
    assert_eq!(
        got.len(),
        want.len(),
        "drained as many events as were emitted"
    );
    assert!(
        got == want,
        "the kept events are the first {fit} calls' arguments, in order"
    );

    // Drained, the ring takes events again.
    let id = probes
        .install(
            &plan,
            &AttachSpec {
                binary: &exe,
                offset: FileOffset(offset),
                pid,
                edges: &[],
            },
        )
        .expect("attach again");
    std::hint::black_box(detrix_event_ring_test_hot(777));
    probes.remove(id).expect("detach");
    let mut again = Vec::new();
    rings.drain(16, |rec| {
        let (_, data) = probe::parse_record(rec).expect("a record of this ABI");
        again.push(u64::from_le_bytes(data[..8].try_into().expect("8 bytes")));
    });
    assert_eq!(again, vec![777]);
}
