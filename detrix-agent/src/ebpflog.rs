//! `--ebpf-log`: forwards the eBPF program's aya-log records (one per plan step that faulted,
//! see `detrix-ebpf/src/log.rs`) to stderr, one line each:
//! `ebpf: probe 3 step 9 (emit_mem) faulted at 0x561c9bc3a111`.
//!
//! Shaped as its own reader thread (poll on the log ring's fd, then drain) so neither the event
//! pipeline nor the async runtime changes; [`Forwarder`]'s drop stops it after a last drain, so
//! a record written just before the agent stops is still printed. The program sends numbers
//! only; this side names the op ([`op_name`]). Nothing here runs unless the flag is given.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use detrix_common::op;

/// The name of the read-only global that turns the program's reporting on (see the module doc
/// of `detrix-ebpf/src/log.rs`).
pub const GLOBAL: &str = "EBPF_LOG";
/// The program's aya-log ring (aya-log-ebpf's map).
pub const MAP: &str = "AYA_LOGS";

/// How long the reader sleeps in `poll` before checking whether it should stop.
const POLL_MS: i32 = 100;

/// The name of plan op `kind`, as `capture --explain` prints it.
#[must_use]
pub fn op_name(kind: u8) -> &'static str {
    match kind {
        op::REG => "reg",
        op::CONST => "const",
        op::ADD => "add",
        op::DEREF => "deref",
        op::EMIT_ACC => "emit_acc",
        op::EMIT_MEM => "emit_mem",
        op::EMIT_STR => "emit_str",
        op::EMIT_VAR => "emit_var",
        op::EMIT_USTACK => "emit_ustack",
        op::HDR => "hdr",
        op::SKIP_LE => "skip",
        op::END_LE => "end",
        op::PUSH => "push",
        op::ALU => "alu",
        op::STASH => "stash",
        _ => "unknown op",
    }
}

/// The line for one record the program logged: a fault record
/// (`fault slot=S step=I op=K addr=HEX`) in words; anything else as it came.
#[must_use]
pub fn render(msg: &str) -> String {
    let field = |name: &str| {
        msg.split(' ')
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
    };
    let parsed = msg.strip_prefix("fault ").and_then(|_| {
        let slot: u32 = field("slot")?.parse().ok()?;
        let step: u64 = field("step")?.parse().ok()?;
        let kind: u8 = field("op")?.parse().ok()?;
        let addr = u64::from_str_radix(field("addr")?, 16).ok()?;
        Some(format!(
            "ebpf: probe {slot} step {step} ({}) faulted at {addr:#x}",
            op_name(kind)
        ))
    });
    parsed.unwrap_or_else(|| format!("ebpf: {msg}"))
}

/// Writes each record as one [`render`]ed line on stderr.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        eprintln!("{}", render(&record.args().to_string()));
    }

    fn flush(&self) {}
}

/// The running reader; dropping it drains what is left and stops it.
#[derive(Debug)]
pub struct Forwarder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// Takes the program's log ring out of `ebpf` and starts forwarding its records.
    ///
    /// # Errors
    /// When the object has no aya-log ring (built without `aya-log-ebpf`) or the thread cannot
    /// start.
    pub fn start(ebpf: &mut aya::Ebpf) -> Result<Self, std::io::Error> {
        let mut logger = aya_log::EbpfLogger::init_with_logger(ebpf, StderrLog)
            .map_err(|e| std::io::Error::other(format!("--ebpf-log: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("ebpf-log".into())
            .spawn(move || {
                while !stopping.load(Ordering::Acquire) {
                    let mut pfd = libc::pollfd {
                        fd: logger.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd for the duration of the call.
                    unsafe { libc::poll(&raw mut pfd, 1, POLL_MS) };
                    logger.flush();
                }
                logger.flush();
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn a_fault_record_reads_as_one_line() {
        assert_eq!(
            render("fault slot=3 step=9 op=6 addr=561c9bc3a111"),
            "ebpf: probe 3 step 9 (emit_mem) faulted at 0x561c9bc3a111"
        );
        assert_eq!(
            render("fault slot=0 step=1 op=4 addr=0"),
            "ebpf: probe 0 step 1 (deref) faulted at 0x0"
        );
    }

    #[test]
    fn other_records_pass_as_they_came() {
        assert_eq!(render("fault slot=x"), "ebpf: fault slot=x");
        assert_eq!(render("hello"), "ebpf: hello");
    }
}
