//! The capture program stays well inside the verifier's budget: loaded as the agent loads it
//! (with `--ebpf-log` off and on), the kernel's own count of the instructions it processed to
//! accept `detrix_capture` is under half its 1 000 000 limit.
//!
//! Why a test: the count is a property of the program and the kernel, not of any one hit, and
//! it grows silently. A program at 750 000 of the million was accepted on one machine and
//! refused on another of the same kernel (`E2BIG`, then `combined stack size … Too large`
//! where the kernel gave uprobe programs no private stack): every probe of every user was
//! gone. Half the limit leaves room for the next op kind before anyone ships a program that
//! some kernel refuses.
//!
//! Needs root (CAP_BPF + CAP_PERFMON) like every load; without it, it fails saying so.

use std::time::{Duration, SystemTime};

use detrix_agent::probe::{LoadOptions, Probes};

/// Half of the kernel's `BPF_COMPLEXITY_LIMIT_INSNS`.
const BUDGET: u32 = 500_000;

/// The most instructions the verifier processed for any `detrix_capture` loaded since `since`
/// (the agent may load it twice: as a `uprobe_multi` program and, failing that, as a perf
/// event one), or `None` if none was found.
fn verified_since(since: SystemTime) -> Option<u32> {
    let mut most = None;
    for info in aya::programs::loaded_programs().flatten() {
        if info.name_as_str() != Some("detrix_capture") {
            continue;
        }
        if info.loaded_at().is_none_or(|t| t < since) {
            continue;
        }
        let n = info
            .verified_instruction_count()
            .expect("this kernel reports verified_insns (5.16+)");
        most = Some(most.map_or(n, |m: u32| m.max(n)));
    }
    most
}

fn check(ebpf_log: bool) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid,
        0,
        "this test loads the eBPF program: run it as root (CAP_BPF and CAP_PERFMON), e.g. `sudo -E cargo xtask test`"
    );
    // loaded_at has a resolution of the boot clock's conversion; a second of slack.
    let since = SystemTime::now() - Duration::from_secs(1);
    let (probes, _rings) = Probes::load(LoadOptions {
        ebpf_log,
        ..LoadOptions::default()
    })
    .expect("the kernel accepts the capture program");
    let n = verified_since(since).expect("detrix_capture is loaded");
    drop(probes);
    println!("detrix_capture, ebpf_log={ebpf_log}: the verifier processed {n} instructions");
    assert!(n > 0, "a loaded program reports the instructions verified");
    assert!(
        n <= BUDGET,
        "detrix_capture (ebpf_log={ebpf_log}) took the verifier {n} instructions, over {BUDGET} \
         (half the kernel's limit): simplify the program before a kernel refuses it"
    );
}

#[test]
fn the_capture_program_verifies_in_under_half_the_kernels_budget() {
    check(false);
    check(true);
}
