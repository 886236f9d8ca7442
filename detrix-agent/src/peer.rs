//! Who is on the other end of a local TCP connection, found the way `ss -p` finds it: the
//! peer socket's inode in the kernel's socket table (asked over netlink, [`crate::sockdiag`];
//! `/proc/net/tcp{,6}` when that fails), then the processes whose `/proc/PID/fd` hold
//! `socket:[inode]`, then their uids. TCP has no `SO_PEERCRED`; this is the kernel's own record.
//!
//! Why this module exists: the agent is root and reads any process, so every port it serves
//! (the DAP port, the control plane, the Delve dial-in) must know which local user is calling.
//! The parsers are pure and unit-tested on sample `/proc` text; the few functions that read
//! `/proc` only glue them together. A peer whose socket cannot be found (gone, another network
//! namespace) has no identity and is treated as a stranger by every caller of this module.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// TCP state `LISTEN` as `/proc/net/tcp` prints it.
pub const TCP_LISTEN: u8 = 0x0A;

/// One row of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpEntry {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    /// The uid column: the socket's owner as the kernel recorded it at creation.
    pub uid: u32,
    pub inode: u64,
}

/// Parses `/proc/net/tcp` or `/proc/net/tcp6` text; lines that do not parse are skipped.
#[must_use]
pub fn parse_proc_net_tcp(text: &str) -> Vec<TcpEntry> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            if f.len() < 10 {
                return None;
            }
            Some(TcpEntry {
                local: parse_addr(f[1])?,
                remote: parse_addr(f[2])?,
                state: u8::from_str_radix(f[3], 16).ok()?,
                uid: f[7].parse().ok()?,
                inode: f[9].parse().ok()?,
            })
        })
        .collect()
}

/// `0100007F:1F90` (IPv4) or 32 hex digits + `:port` (IPv6): each 32-bit word is printed as the
/// kernel holds it in memory, read as a native integer.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The inode of an fd link's target `socket:[12345]`.
#[must_use]
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The four uids (real, effective, saved, filesystem) of a `/proc/PID/status` text.
#[must_use]
pub fn status_uids(status: &str) -> Option<[u32; 4]> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let v: Vec<u32> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    v.try_into().ok()
}

/// IPv4-mapped IPv6 addresses as IPv4, so both tables compare alike.
fn canon(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The entry of the socket at `peer` connected to `local` (the peer's own end of our
/// connection: its local address is our remote one).
#[must_use]
pub fn find_peer(table: &[TcpEntry], local: SocketAddr, peer: SocketAddr) -> Option<TcpEntry> {
    let (local, peer) = (canon(local), canon(peer));
    table
        .iter()
        .find(|e| e.state != TCP_LISTEN && canon(e.local) == peer && canon(e.remote) == local)
        .copied()
}

/// The listening sockets on `port` that a connection to `ip` would reach: bound to `ip`
/// itself, to the wildcard, or (when `ip` is loopback) to any loopback address.
#[must_use]
pub fn find_listeners(table: &[TcpEntry], ip: IpAddr, port: u16) -> Vec<TcpEntry> {
    let ip = ip.to_canonical();
    table
        .iter()
        .filter(|e| e.state == TCP_LISTEN && e.local.port() == port)
        .filter(|e| {
            let l = e.local.ip().to_canonical();
            l == ip || l.is_unspecified() || (l.is_loopback() && ip.is_loopback())
        })
        .copied()
        .collect()
}

/// Whether a peer may skip the token: loopback addresses (IPv4-mapped IPv6 included).
#[must_use]
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The host and port of an `http://host:port/…` URL (port 80/443 by default); `localhost`
/// is loopback. `None` when the host is a name other than `localhost`.
#[must_use]
pub fn url_addr(url: &str) -> Option<(IpAddr, u16)> {
    let (rest, default_port) = if let Some(r) = url.strip_prefix("http://") {
        (r, 80)
    } else if let Some(r) = url.strip_prefix("https://") {
        (r, 443)
    } else {
        (url, 80)
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, tail) = v6.split_once(']')?;
        (h, tail.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default_port,
    };
    let ip = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().ok()?
    };
    Some((ip, port))
}

/// Who holds a socket: the uid column and every uid of every process holding it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    pub inode: u64,
    pub pids: Vec<u32>,
    /// Every uid involved: the table's uid column and all four uids of each holder.
    pub uids: BTreeSet<u32>,
}

impl Owner {
    /// Whether every uid involved is in `allowed` (and at least one process was found).
    #[must_use]
    pub fn all_in(&self, allowed: &BTreeSet<u32>) -> bool {
        !self.pids.is_empty() && self.uids.is_subset(allowed)
    }

    /// For log lines: `uid 0 (pids 12, 13)`.
    #[must_use]
    pub fn describe(&self) -> String {
        let uids: Vec<String> = self.uids.iter().map(u32::to_string).collect();
        let pids: Vec<String> = self.pids.iter().map(u32::to_string).collect();
        format!("uid {} (pid {})", uids.join(","), pids.join(","))
    }
}

/// Both TCP tables of this network namespace.
#[must_use]
pub fn tcp_table() -> Vec<TcpEntry> {
    let mut out = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(t) = std::fs::read_to_string(f) {
            out.extend(parse_proc_net_tcp(&t));
        }
    }
    out
}

/// The processes holding socket `inode` and their uids (scans `/proc/*/fd`).
#[must_use]
pub fn holders(inode: u64) -> Vec<(u32, [u32; 4])> {
    let want = format!("socket:[{inode}]");
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|l| l.to_str().is_some_and(|l| l == want))
        });
        if holds {
            if let Some(uids) = std::fs::read_to_string(p.path().join("status"))
                .ok()
                .as_deref()
                .and_then(status_uids)
            {
                out.push((pid, uids));
            }
        }
    }
    out
}

fn owner_of(e: TcpEntry) -> Owner {
    let mut o = Owner {
        inode: e.inode,
        pids: Vec::new(),
        uids: BTreeSet::from([e.uid]),
    };
    for (pid, uids) in holders(e.inode) {
        o.pids.push(pid);
        o.uids.extend(uids);
    }
    o
}

/// The owner of the peer end of our connection `local` ← `peer`, if it is on this host.
#[must_use]
pub fn peer_owner(local: SocketAddr, peer: SocketAddr) -> Option<Owner> {
    let entry = match crate::sockdiag::lookup(peer, local) {
        Ok(e) => e.filter(|e| e.state != TCP_LISTEN),
        Err(e) => {
            tracing::debug!(error = %e, "sock_diag lookup failed; reading /proc/net/tcp");
            find_peer(&tcp_table(), local, peer)
        }
    };
    entry.map(owner_of)
}

/// The uids owning the sockets listening where `url` points, if it points at this host.
#[must_use]
pub fn listener_uids(url: &str) -> BTreeSet<u32> {
    let Some((ip, port)) = url_addr(url) else {
        return BTreeSet::new();
    };
    let table = crate::sockdiag::listeners().unwrap_or_else(|e| {
        tracing::debug!(error = %e, "sock_diag dump failed; reading /proc/net/tcp");
        tcp_table()
    });
    find_listeners(&table, ip, port)
        .into_iter()
        .map(owner_of)
        .flat_map(|o| o.uids)
        .collect()
}

/// The agent's own real and effective uids.
#[must_use]
pub fn own_uids() -> BTreeSet<u32> {
    // SAFETY: getuid/geteuid have no preconditions and cannot fail.
    unsafe { BTreeSet::from([libc::getuid(), libc::geteuid()]) }
}

/// Who may connect to the DAP port (issue #12 point 1): on loopback, a process of root or of
/// the uid owning the daemon's listening socket; from another host, only an address the
/// operator named with `--dap-allow-peer`. The listener runs only while a registration is
/// pending or live, so "the daemon the agent registered with" is the one at `daemon_url`.
#[derive(Debug, Clone, Default)]
pub struct DapGate {
    /// The URL of the wake in progress or of the registration.
    pub daemon_url: String,
    /// Non-loopback peers the operator allowed.
    pub remote_peers: Vec<IpAddr>,
}

impl DapGate {
    /// Whether the connection `peer` → `local` may be served: `Ok(who)` or `Err(why not)`.
    ///
    /// # Errors
    /// A sentence naming the peer and the rule it failed.
    pub fn admit(&self, local: SocketAddr, peer: SocketAddr) -> Result<String, String> {
        if !is_loopback(peer.ip()) {
            return judge_dap(peer, None, &BTreeSet::new(), &self.remote_peers);
        }
        let mut allowed = BTreeSet::from([0]);
        allowed.extend(listener_uids(&self.daemon_url));
        judge_dap(
            peer,
            peer_owner(local, peer).as_ref(),
            &allowed,
            &self.remote_peers,
        )
    }
}

/// The DAP port's decision, pure: see [`DapGate`].
///
/// # Errors
/// A sentence naming the peer and the rule it failed.
pub fn judge_dap(
    peer: SocketAddr,
    owner: Option<&Owner>,
    allowed_uids: &BTreeSet<u32>,
    remote_peers: &[IpAddr],
) -> Result<String, String> {
    if !is_loopback(peer.ip()) {
        let ip = peer.ip().to_canonical();
        return if remote_peers.iter().any(|p| p.to_canonical() == ip) {
            Ok(format!("{peer} (named by --dap-allow-peer)"))
        } else {
            Err(format!(
                "{peer} is not loopback and not named by --dap-allow-peer"
            ))
        };
    }
    match owner {
        Some(o) if o.all_in(allowed_uids) => Ok(format!("{peer}, {}", o.describe())),
        Some(o) => Err(format!(
            "{peer} belongs to {}, which is neither root nor the user of the daemon's listening socket",
            o.describe()
        )),
        None => Err(format!(
            "{peer}: its socket's owner cannot be found in /proc/net/tcp (another network namespace?)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real /proc/net/tcp: a listener on 127.0.0.1:8090 (uid 1000), the agent's DAP listener on
    // 127.0.0.1:40000 (uid 0), and one connection 127.0.0.1:51234 → :40000 seen from both ends.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F9A 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 11111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 22222 1 0000000000000000 100 0 0 10 0
   2: 0100007F:C862 0100007F:9C40 01 00000000:00000000 00:00000000 00000000 65534        0 33333 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:9C40 0100007F:C862 01 00000000:00000000 00:00000000 00000000     0        0 44444 1 0000000000000000 20 4 31 10 -1
";
    // /proc/net/tcp6: a wildcard listener on :::8091 and a ::1 connection.
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F9B 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   998        0 55555 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:D431 00000000000000000000000001000000:9C40 01 00000000:00000000 00:00000000 00000000     0        0 66666 1 0000000000000000 20 4 30 10 -1
   2: 0000000000000000FFFF00000100007F:D432 0000000000000000FFFF00000100007F:9C40 01 00000000:00000000 00:00000000 00000000    33        0 77777 1 0000000000000000 20 4 30 10 -1
";

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_both_tables_exactly() {
        let t = parse_proc_net_tcp(TCP);
        assert_eq!(t.len(), 4);
        assert_eq!(
            t[2],
            TcpEntry {
                local: sa("127.0.0.1:51298"),
                remote: sa("127.0.0.1:40000"),
                state: 1,
                uid: 65534,
                inode: 33333
            }
        );
        let t6 = parse_proc_net_tcp(TCP6);
        assert_eq!(t6.len(), 3);
        assert_eq!(t6[0].local, sa("[::]:8091"));
        assert_eq!(
            (t6[0].state, t6[0].uid, t6[0].inode),
            (TCP_LISTEN, 998, 55555)
        );
        assert_eq!(t6[1].local, sa("[::1]:54321"));
        assert_eq!(t6[2].local, sa("[::ffff:127.0.0.1]:54322"));
        assert_eq!(parse_proc_net_tcp("header\n garbage line\n"), vec![]);
    }

    #[test]
    fn finds_the_peer_end_of_a_connection() {
        let mut t = parse_proc_net_tcp(TCP);
        t.extend(parse_proc_net_tcp(TCP6));
        // We accepted 127.0.0.1:51298 on 127.0.0.1:40000: the peer's row is its own end.
        let p = find_peer(&t, sa("127.0.0.1:40000"), sa("127.0.0.1:51298")).unwrap();
        assert_eq!((p.inode, p.uid), (33333, 65534));
        // An IPv4-mapped peer matches a plain IPv4 view of the same connection.
        let p = find_peer(&t, sa("127.0.0.1:40000"), sa("127.0.0.1:54322")).unwrap();
        assert_eq!(p.inode, 77777);
        let p = find_peer(&t, sa("[::1]:40000"), sa("[::1]:54321")).unwrap();
        assert_eq!(p.inode, 66666);
        assert_eq!(
            find_peer(&t, sa("127.0.0.1:40000"), sa("127.0.0.1:1")),
            None
        );
    }

    #[test]
    fn finds_the_daemons_listener_from_its_url() {
        let mut t = parse_proc_net_tcp(TCP);
        t.extend(parse_proc_net_tcp(TCP6));
        let (ip, port) = url_addr("http://localhost:8090").unwrap();
        let l = find_listeners(&t, ip, port);
        assert_eq!(l.iter().map(|e| e.inode).collect::<Vec<_>>(), vec![11111]);
        let (ip, port) = url_addr("http://127.0.0.1:8091/").unwrap();
        assert_eq!(
            find_listeners(&t, ip, port)
                .iter()
                .map(|e| e.uid)
                .collect::<Vec<_>>(),
            vec![998],
            "a wildcard listener serves loopback too"
        );
        assert_eq!(find_listeners(&t, ip, 9999), vec![]);
    }

    #[test]
    fn urls_and_fd_links_and_status() {
        assert_eq!(
            url_addr("http://127.0.0.1:8090"),
            Some((IpAddr::V4(Ipv4Addr::LOCALHOST), 8090))
        );
        assert_eq!(
            url_addr("http://[::1]:9/x"),
            Some(("::1".parse().unwrap(), 9))
        );
        assert_eq!(
            url_addr("https://10.1.2.3"),
            Some(("10.1.2.3".parse().unwrap(), 443))
        );
        assert_eq!(url_addr("http://daemon.example:8090"), None);
        assert_eq!(url_addr("http://127.0.0.1:notaport"), None);
        assert_eq!(socket_inode("socket:[4026]"), Some(4026));
        assert_eq!(socket_inode("pipe:[4026]"), None);
        let status =
            "Name:\tcat\nUmask:\t0022\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\n";
        assert_eq!(status_uids(status), Some([1000; 4]));
        assert_eq!(status_uids("Name:\tx\n"), None);
        let o = Owner {
            inode: 1,
            pids: vec![7],
            uids: BTreeSet::from([0, 998]),
        };
        assert!(o.all_in(&BTreeSet::from([0, 998])));
        assert!(!o.all_in(&BTreeSet::from([0])), "one stranger uid refuses");
        assert!(
            !Owner::default().all_in(&BTreeSet::from([0])),
            "no process found refuses"
        );
        assert_eq!(o.describe(), "uid 0,998 (pid 7)");
    }

    #[test]
    fn dap_peers_root_or_the_daemons_user_or_a_named_address() {
        let root = Owner {
            inode: 1,
            pids: vec![1],
            uids: BTreeSet::from([0]),
        };
        let nobody = Owner {
            inode: 2,
            pids: vec![2],
            uids: BTreeSet::from([65534]),
        };
        let allowed = BTreeSet::from([0, 998]);
        let lo = sa("127.0.0.1:50000");
        assert_eq!(
            judge_dap(lo, Some(&root), &allowed, &[]),
            Ok("127.0.0.1:50000, uid 0 (pid 1)".to_owned())
        );
        assert_eq!(
            judge_dap(lo, Some(&nobody), &allowed, &[]),
            Err("127.0.0.1:50000 belongs to uid 65534 (pid 2), which is neither root nor the user of the daemon's listening socket".to_owned())
        );
        assert!(judge_dap(lo, None, &allowed, &[]).is_err());
        let far = sa("10.0.0.9:4000");
        assert_eq!(
            judge_dap(far, None, &allowed, &[]),
            Err("10.0.0.9:4000 is not loopback and not named by --dap-allow-peer".to_owned())
        );
        assert!(judge_dap(far, None, &allowed, &["10.0.0.9".parse().unwrap()]).is_ok());
        assert!(judge_dap(
            sa("[::ffff:10.0.0.9]:4000"),
            None,
            &allowed,
            &["10.0.0.9".parse().unwrap()]
        )
        .is_ok());
    }

    #[test]
    fn finds_this_processs_own_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, peer) = l.accept().unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
        let o = peer_owner(l.local_addr().unwrap(), peer).expect("our own socket is found");
        assert!(o.pids.contains(&std::process::id()), "{o:?}");
        assert_eq!(o.uids, own_uids());
        let url = format!("http://{}", l.local_addr().unwrap());
        assert_eq!(listener_uids(&url), own_uids());
    }
}
