//! Fork, exec and exit events from the kernel's netlink process connector (`NETLINK_CONNECTOR`,
//! multicast group `CN_IDX_PROC`), read on the event loop through one non-blocking socket.
//!
//! Why the connector and not a `sched_process_exec` / `sched_process_exit` tracepoint program:
//! it needs no BPF program, map or ring of its own (the eBPF object stays the capture engine's
//! alone), no verifier or kernel-version dependence beyond a 2.6.15 ABI, and it costs one file
//! descriptor and no thread. Each event carries the thread-group id and the kernel's
//! `CLOCK_MONOTONIC` time of the exec, so the latency from exec to target can be measured
//! exactly. Its limits, and what is done about them:
//! - it is lossy under a burst (the socket buffer fills, `recv` fails with `ENOBUFS`): the
//!   watcher reports [`Event::Lost`] and the caller rescans `/proc`, so nothing stays unseen;
//!   the buffer is raised to 4 MiB to make that rare;
//! - it needs `CAP_NET_ADMIN` and the initial PID namespace (pids in events are host pids),
//!   which the agent, as a root host daemon, has.
//!
//! Exit events come per thread; only a thread-group leader's (`pid == tgid`) is reported. Fork
//! events likewise: only a new process (the child is its own thread-group leader), not a thread.

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use tokio::io::unix::AsyncFd;

/// `NETLINK_CONNECTOR` (linux/netlink.h).
const NETLINK_CONNECTOR: libc::c_int = 11;
/// `CN_IDX_PROC` / `CN_VAL_PROC` (linux/connector.h).
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
/// `PROC_CN_MCAST_LISTEN` / `PROC_CN_MCAST_IGNORE` (linux/cn_proc.h).
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_CN_MCAST_IGNORE: u32 = 2;
const PROC_EVENT_FORK: u32 = 0x0000_0001;
const PROC_EVENT_EXEC: u32 = 0x0000_0002;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
/// `NLMSG_DONE`, `NLMSG_ERROR`, `NLMSG_NOOP`, `NLMSG_OVERRUN`.
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_OVERRUN: u16 = 4;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDR: usize = 16;
const CN_MSG_HDR: usize = 20;
/// `proc_event`: what, cpu, timestamp_ns, then the per-event data.
const PROC_EVENT_HDR: usize = 16;
const RECV_BUFFER: libc::c_int = 4 << 20;

/// One thing that happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Thread group `pid` ran `execve`; `at_ns` is `CLOCK_MONOTONIC` at the exec.
    Exec { pid: u32, at_ns: u64 },
    /// Thread group `pid`'s leader exited.
    Exit { pid: u32, at_ns: u64 },
    /// Process `parent` forked a new process `pid` (its image until it execs).
    Fork { pid: u32, parent: u32, at_ns: u64 },
    /// Events were dropped (the socket buffer overflowed): rescan `/proc`.
    Lost,
}

/// The subscribed connector socket.
#[derive(Debug)]
pub struct Watcher {
    fd: AsyncFd<OwnedFd>,
    buf: Vec<u8>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The control message that (un)subscribes: nlmsghdr + cn_msg + the op.
fn subscription(op: u32) -> Vec<u8> {
    let len = (NLMSG_HDR + CN_MSG_HDR + 4) as u32;
    let mut m = Vec::with_capacity(len as usize);
    m.extend(len.to_ne_bytes());
    m.extend(NLMSG_DONE.to_ne_bytes());
    m.extend(0u16.to_ne_bytes()); // flags
    m.extend(0u32.to_ne_bytes()); // seq
    m.extend(std::process::id().to_ne_bytes()); // sender port id
    m.extend(CN_IDX_PROC.to_ne_bytes());
    m.extend(CN_VAL_PROC.to_ne_bytes());
    m.extend(0u32.to_ne_bytes()); // seq
    m.extend(0u32.to_ne_bytes()); // ack
    m.extend(4u16.to_ne_bytes()); // data length
    m.extend(0u16.to_ne_bytes()); // flags
    m.extend(op.to_ne_bytes());
    m
}

/// Decodes one datagram (possibly several netlink messages) into `out`.
pub fn decode(datagram: &[u8], out: &mut Vec<Event>) {
    let mut off = 0;
    while off + NLMSG_HDR <= datagram.len() {
        let Some(len) = u32_at(datagram, off).map(|l| l as usize) else {
            return;
        };
        let ty = u16_at(datagram, off + 4).unwrap_or(0);
        if len < NLMSG_HDR || off + len > datagram.len() {
            return;
        }
        let msg = &datagram[off..off + len];
        off += (len + 3) & !3;
        match ty {
            NLMSG_OVERRUN => out.push(Event::Lost),
            NLMSG_NOOP | NLMSG_ERROR => {}
            _ => {
                let ev = &msg[NLMSG_HDR..];
                if u32_at(ev, 0) != Some(CN_IDX_PROC) || u32_at(ev, 4) != Some(CN_VAL_PROC) {
                    continue;
                }
                let pe = ev.get(CN_MSG_HDR..).unwrap_or_default();
                let (Some(what), Some(at_ns)) = (u32_at(pe, 0), u64_at(pe, 8)) else {
                    continue;
                };
                let data = pe.get(PROC_EVENT_HDR..).unwrap_or_default();
                let (Some(pid), Some(tgid)) = (u32_at(data, 0), u32_at(data, 4)) else {
                    continue;
                };
                match what {
                    // fork: parent pid, parent tgid, child pid, child tgid.
                    PROC_EVENT_FORK => {
                        if let (Some(child), Some(child_tgid)) = (u32_at(data, 8), u32_at(data, 12))
                        {
                            if child == child_tgid {
                                out.push(Event::Fork {
                                    pid: child,
                                    parent: tgid,
                                    at_ns,
                                });
                            }
                        }
                    }
                    PROC_EVENT_EXEC => out.push(Event::Exec { pid: tgid, at_ns }),
                    PROC_EVENT_EXIT if pid == tgid => out.push(Event::Exit { pid: tgid, at_ns }),
                    _ => {}
                }
            }
        }
    }
}

/// `CLOCK_MONOTONIC` now, in ns: the clock of [`Event`]'s `at_ns`.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

impl Watcher {
    /// Opens the socket and subscribes. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// No `CAP_NET_ADMIN` (`EPERM`), no connector in the kernel, or not the initial PID
    /// namespace.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                NETLINK_CONNECTOR,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_pid = 0; // the kernel picks a unique port id
        addr.nl_groups = CN_IDX_PROC;
        // SAFETY: `addr` is a valid sockaddr_nl of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // Best effort: a larger buffer makes `Lost` rarer; FORCE needs CAP_NET_ADMIN.
        let size: libc::c_int = RECV_BUFFER;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: setsockopt with an int value of the size passed.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    std::ptr::addr_of!(size).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
            };
            if rc == 0 {
                break;
            }
        }
        send(&fd, &subscription(PROC_CN_MCAST_LISTEN))?;
        Ok(Self {
            // SAFETY: `fd` is an open socket the AsyncFd owns from now on; nothing else
            // closes or replaces it.
            fd: unsafe { AsyncFd::register(fd) }?,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Waits for at least one event and appends every event already queued to `out`.
    ///
    /// # Errors
    /// The socket failed (other than an overflow, which is [`Event::Lost`]).
    pub async fn next(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
        let start = out.len();
        while out.len() == start {
            let mut guard = self.fd.readable().await?;
            loop {
                // SAFETY: recv into our buffer of the length passed.
                let n = unsafe {
                    libc::recv(
                        guard.get_inner().as_raw_fd(),
                        self.buf.as_mut_ptr().cast(),
                        self.buf.len(),
                        0,
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::EAGAIN) => {
                            guard.clear_ready();
                            break;
                        }
                        Some(libc::ENOBUFS) => out.push(Event::Lost),
                        Some(libc::EINTR) => {}
                        _ => return Err(e),
                    }
                    continue;
                }
                decode(&self.buf[..n as usize], out);
            }
        }
        Ok(())
    }
}

fn send(fd: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: send from a valid buffer of the length passed.
    let n = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = send(self.fd.get_ref(), &subscription(PROC_CN_MCAST_IGNORE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(what: u32, pid: u32, tgid: u32, at_ns: u64) -> Vec<u8> {
        fork_event(what, [pid, tgid, 0, 0], at_ns)
    }

    /// An event whose data starts with these four u32s (fork: parent pid and tgid, child pid
    /// and tgid).
    fn fork_event(what: u32, ids: [u32; 4], at_ns: u64) -> Vec<u8> {
        let mut pe = Vec::new();
        pe.extend(what.to_ne_bytes());
        pe.extend(0u32.to_ne_bytes());
        pe.extend(at_ns.to_ne_bytes());
        for id in ids {
            pe.extend(id.to_ne_bytes());
        }
        pe.extend([0u8; 8]);
        let mut m = subscription(0);
        m.truncate(NLMSG_HDR + CN_MSG_HDR);
        m.extend(pe);
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    #[test]
    fn decodes_exec_leader_exit_and_process_fork_only() {
        let mut d = event(PROC_EVENT_EXEC, 41, 40, 7);
        d.extend(event(PROC_EVENT_EXIT, 41, 40, 8)); // a thread: not reported
        d.extend(event(PROC_EVENT_EXIT, 40, 40, 9));
        d.extend(fork_event(PROC_EVENT_FORK, [50, 50, 60, 60], 10)); // a new process
        d.extend(fork_event(PROC_EVENT_FORK, [50, 50, 61, 50], 11)); // a thread: not reported
        let mut out = Vec::new();
        decode(&d, &mut out);
        assert_eq!(
            out,
            vec![
                Event::Exec { pid: 40, at_ns: 7 },
                Event::Exit { pid: 40, at_ns: 9 },
                Event::Fork {
                    pid: 60,
                    parent: 50,
                    at_ns: 10
                },
            ]
        );
    }

    #[test]
    fn truncated_datagrams_stop_cleanly() {
        let d = event(PROC_EVENT_EXEC, 41, 40, 7);
        let mut out = Vec::new();
        decode(&d[..d.len() - 30], &mut out);
        decode(&d[..10], &mut out);
        assert_eq!(out, vec![]);
    }

    #[test]
    fn subscription_is_one_netlink_message() {
        let m = subscription(PROC_CN_MCAST_LISTEN);
        assert_eq!(m.len(), 40);
        assert_eq!(u32_at(&m, 0), Some(40));
        assert_eq!(u16_at(&m, 4), Some(NLMSG_DONE));
        assert_eq!(u32_at(&m, 16), Some(CN_IDX_PROC));
        assert_eq!(u16_at(&m, 32), Some(4));
        assert_eq!(u32_at(&m, 36), Some(PROC_CN_MCAST_LISTEN));
    }
}
