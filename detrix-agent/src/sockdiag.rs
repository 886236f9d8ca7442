//! The kernel's TCP socket table asked over netlink (`NETLINK_SOCK_DIAG`, `inet_diag`): one
//! socket by its four-tuple ([`lookup`]), or every listening socket ([`listeners`]), as the
//! same [`TcpEntry`] rows `/proc/net/tcp` gives.
//!
//! Why not `/proc/net/tcp`: reading it walks every bucket of the established-connection hash
//! (262 144 here), ~6 ms per table and two tables (IPv4, IPv6) per question — and every
//! control-plane request and DAP connection asks two questions (who is calling, who owns the
//! daemon's port): ~50 ms of a wake went there. An exact lookup is one hash probe, and a
//! dump of listeners alone never visits the established hash. [`crate::peer`] falls back to
//! `/proc/net/tcp` when this fails (a kernel without `CONFIG_INET_DIAG`).
//!
//! The request and reply layouts are the kernel's stable UAPI (`linux/inet_diag.h`,
//! `linux/sock_diag.h`), read and written as bytes at their documented offsets.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use crate::peer::{TcpEntry, TCP_LISTEN};

/// `NETLINK_SOCK_DIAG`, `SOCK_DIAG_BY_FAMILY`.
const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDR: usize = 16;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then the socket id.
const REQ_BYTES: usize = 56;
/// `struct inet_diag_msg`, up to `idiag_inode`.
const MSG_BYTES: usize = 72;
/// Where `struct inet_diag_sockid` starts in the request (after the states word) and in the
/// reply (after four one-byte fields).
const REQ_ID_AT: usize = 8;
const ID_AT: usize = 4;

/// The socket id's byte layout: ports (big-endian), then four 32-bit words per address.
fn put_id(buf: &mut [u8], src: SocketAddr, dst: SocketAddr) {
    buf[0..2].copy_from_slice(&src.port().to_be_bytes());
    buf[2..4].copy_from_slice(&dst.port().to_be_bytes());
    let octets = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            b
        }
        IpAddr::V6(v6) => v6.octets(),
    };
    buf[4..20].copy_from_slice(&octets(src.ip()));
    buf[20..36].copy_from_slice(&octets(dst.ip()));
    // idiag_if 0; idiag_cookie INET_DIAG_NOCOOKIE (all ones): no cookie to match.
    buf[40..48].fill(0xff);
}

/// A request: `flags` NLM_F_REQUEST (an exact lookup) or with NLM_F_DUMP.
fn request(family: u8, states: u32, flags: u16, id: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    let mut m = vec![0u8; NLMSG_HDR + REQ_BYTES];
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    let r = &mut m[NLMSG_HDR..];
    r[0] = family;
    r[1] = libc::IPPROTO_TCP as u8;
    r[4..8].copy_from_slice(&states.to_ne_bytes());
    if let Some((src, dst)) = id {
        put_id(&mut r[REQ_ID_AT..], src, dst);
    }
    m
}

/// One `inet_diag_msg` as a table row; `None` when it is too short or of another family.
#[must_use]
pub fn parse_msg(m: &[u8]) -> Option<TcpEntry> {
    if m.len() < MSG_BYTES {
        return None;
    }
    let word = |at: usize| u32::from_ne_bytes([m[at], m[at + 1], m[at + 2], m[at + 3]]);
    let addr = |at: usize, port_at: usize| -> Option<SocketAddr> {
        let port = u16::from_be_bytes([m[port_at], m[port_at + 1]]);
        let ip = match i32::from(m[0]) {
            libc::AF_INET => IpAddr::V4(Ipv4Addr::new(m[at], m[at + 1], m[at + 2], m[at + 3])),
            libc::AF_INET6 => {
                let mut b = [0u8; 16];
                b.copy_from_slice(&m[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(b))
            }
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    };
    Some(TcpEntry {
        local: addr(ID_AT + 4, ID_AT)?,
        remote: addr(ID_AT + 20, ID_AT + 2)?,
        state: m[1],
        uid: word(64),
        inode: u64::from(word(68)),
    })
}

fn open() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // A kernel that never answers must not hold a caller: 1 s, then the error.
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a timeval of the size passed.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    Ok(fd)
}

/// Sends `req` and collects every reply row until the kernel is done (a dump's
/// `NLMSG_DONE`, or an exact lookup's single answer). `ENOENT` (no such socket) is no rows.
fn ask(req: &[u8], dump: bool) -> io::Result<Vec<TcpEntry>> {
    let fd = open()?;
    // SAFETY: `req` is a whole netlink message of the length passed; to the kernel (pid 0).
    let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut rows = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: recv into a buffer of the length passed.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        let mut at = 0;
        while at + NLMSG_HDR <= n {
            let h = &buf[at..n];
            let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
            let kind = u16::from_ne_bytes([h[4], h[5]]);
            if len < NLMSG_HDR || len > h.len() {
                return Err(io::Error::other("malformed sock_diag reply"));
            }
            match kind {
                NLMSG_DONE => return Ok(rows),
                NLMSG_ERROR => {
                    let errno = h
                        .get(NLMSG_HDR..NLMSG_HDR + 4)
                        .map_or(0, |e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]));
                    return match -errno {
                        0 => Ok(rows),
                        libc::ENOENT => Ok(Vec::new()),
                        e => Err(io::Error::from_raw_os_error(e)),
                    };
                }
                SOCK_DIAG_BY_FAMILY => rows.extend(parse_msg(&h[NLMSG_HDR..len])),
                _ => {}
            }
            at += (len + 3) & !3;
        }
        if !dump {
            return Ok(rows);
        }
    }
}

/// The socket whose own address is `local` and whose peer is `remote` (for the other end of
/// one of our connections, pass our remote address as `local`).
///
/// # Errors
/// The netlink socket failed (not "no such socket": that is `Ok(None)`).
pub fn lookup(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<TcpEntry>> {
    // IPv4-mapped addresses are IPv4 sockets' (a dual-stack socket talking IPv4 is in the
    // same table): ask the IPv4 table with plain IPv4 addresses.
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (local, remote) = (canon(local), canon(remote));
    let family = match (local.ip(), remote.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => libc::AF_INET,
        (IpAddr::V6(_), IpAddr::V6(_)) => libc::AF_INET6,
        _ => return Ok(None),
    };
    let req = request(family as u8, u32::MAX, NLM_F_REQUEST, Some((local, remote)));
    Ok(ask(&req, false)?.into_iter().next())
}

/// Every listening TCP socket of this network namespace, IPv4 and IPv6.
///
/// # Errors
/// The netlink socket failed.
pub fn listeners() -> io::Result<Vec<TcpEntry>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        let req = request(
            family as u8,
            1 << TCP_LISTEN,
            NLM_F_REQUEST | NLM_F_DUMP,
            None,
        );
        out.extend(ask(&req, true)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn the_request_is_laid_out_as_the_kernel_reads_it() {
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:8080".parse().unwrap(),
            "10.1.2.3:80".parse().unwrap(),
        );
        let m = request(libc::AF_INET as u8, 1 << 10, NLM_F_REQUEST, Some((a, b)));
        assert_eq!(m.len(), 72);
        assert_eq!(&m[0..8], &[72, 0, 0, 0, 20, 0, 1, 0]);
        let r = &m[NLMSG_HDR..];
        assert_eq!(&r[..8], &[2, 6, 0, 0, 0, 4, 0, 0], "family, TCP, states");
        assert_eq!(&r[8..12], &[0x1f, 0x90, 0, 80], "ports, big-endian");
        assert_eq!(&r[12..16], &[127, 0, 0, 1]);
        assert_eq!(&r[28..32], &[10, 1, 2, 3]);
        assert_eq!(&r[48..56], &[0xff; 8], "no cookie");
    }

    #[test]
    fn a_reply_row_reads_back_what_a_request_wrote() {
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.2:8090".parse().unwrap(),
        );
        let mut m = vec![0u8; MSG_BYTES];
        m[0] = libc::AF_INET as u8;
        m[1] = 1;
        put_id(&mut m[ID_AT..], a, b);
        m[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        m[68..72].copy_from_slice(&4242u32.to_ne_bytes());
        let e = parse_msg(&m).unwrap();
        assert_eq!(
            (e.local, e.remote, e.state, e.uid, e.inode),
            (a, b, 1, 1000, 4242)
        );
        assert_eq!(parse_msg(&m[..MSG_BYTES - 1]), None);
        m[0] = 99;
        assert_eq!(parse_msg(&m), None, "an unknown family");
    }

    /// Against the kernel: our own connection's other end, its listener, and the same rows
    /// `/proc/net/tcp` shows.
    #[test]
    fn finds_both_ends_of_a_live_connection_and_its_listener() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = l.local_addr().unwrap();
        let c = TcpStream::connect(server).unwrap();
        let client = c.local_addr().unwrap();
        let table = crate::peer::tcp_table();
        let want = crate::peer::find_peer(&table, server, client).unwrap();
        let got = lookup(client, server).unwrap().expect("the client's end");
        assert_eq!(got, want);
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        assert_eq!(got.uid, me);
        assert!(got.inode > 0);
        let none: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(lookup(none, server).unwrap(), None, "no such socket");
        let ls = listeners().unwrap();
        let mine: Vec<&TcpEntry> = ls.iter().filter(|e| e.local == server).collect();
        assert_eq!(mine.len(), 1, "{ls:?}");
        assert_eq!(mine[0].state, TCP_LISTEN);
        assert_eq!(
            crate::peer::find_listeners(&table, server.ip(), server.port()),
            crate::peer::find_listeners(&ls, server.ip(), server.port())
        );
    }
}
