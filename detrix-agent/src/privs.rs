//! After start, keep only the capabilities the agent uses (issue #12 point 4), and set
//! `PR_SET_NO_NEW_PRIVS` so nothing it runs can gain more.
//!
//! Why: the agent runs as root, but once its sockets are bound, its files opened and the eBPF
//! program loaded, it needs a handful of capabilities, not all of them. Dropping the rest from
//! the bounding, permitted, effective, inheritable and ambient sets means a bug in the agent,
//! or in the debugger it spawns (which inherits at most the bounding set, and with
//! no_new_privs at most what the agent still has), cannot load kernel modules, write any file
//! or reconfigure the network. `CAP_SETUID`/`CAP_SETGID` stay for one reason: reading a
//! target's files *as the target* (`/detrix/files/read`, its git checkout) switches a
//! short-lived thread's fsuid, fsgid and groups to the target's, which is what keeps those
//! reads from being root's reads. Plain syscalls (`capget`/`capset`/`prctl`),
//! no library: the rule fits on one screen, [`KEEP`].

/// The capabilities kept, each with what it is for.
pub const KEEP: &[(u32, &str, &str)] = &[
    (
        CAP_SYS_PTRACE,
        "CAP_SYS_PTRACE",
        "read the target's /proc/PID/{maps,mem,exe,root} and sockets' owners in /proc/PID/fd, whoever owns the target; the fallback debugger attaches with ptrace",
    ),
    (
        CAP_BPF,
        "CAP_BPF",
        "create maps and load the eBPF program's probes as logpoints are added",
    ),
    (
        CAP_PERFMON,
        "CAP_PERFMON",
        "use the tracing helpers that read user memory (bpf_probe_read_user)",
    ),
    (
        CAP_SYS_ADMIN,
        "CAP_SYS_ADMIN",
        "open a uprobe perf event: on Linux 6.x perf_event_open of the `uprobe` PMU is refused (EACCES) with CAP_PERFMON alone",
    ),
    (
        CAP_DAC_READ_SEARCH,
        "CAP_DAC_READ_SEARCH",
        "open the target's executable, shared libraries and separate debug files whatever their modes",
    ),
    (
        CAP_KILL,
        "CAP_KILL",
        "SIGCONT a target a debugger round left stopped, whoever owns it",
    ),
    (
        CAP_SETUID,
        "CAP_SETUID",
        "read /detrix/files/read and the target's git checkout with the target's fsuid (setfsuid on a short-lived thread), never as root",
    ),
    (
        CAP_SETGID,
        "CAP_SETGID",
        "the same reads with the target's fsgid and supplementary groups (setfsgid, setgroups on that thread)",
    ),
];

/// What `serve` keeps besides [`KEEP`].
pub const SERVE_EXTRA: &[(u32, &str, &str)] = &[(
    CAP_NET_ADMIN,
    "CAP_NET_ADMIN",
    "subscribe to the kernel's process connector (exec and exit events of every process)",
)];

pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SETGID: u32 = 6;
pub const CAP_SETUID: u32 = 7;
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_KILL: u32 = 5;
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SETPCAP: u32 = 8;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Why the capabilities could not be reduced.
#[derive(Debug, thiserror::Error)]
pub enum PrivError {
    #[error("reading this process's capabilities (capget) failed: {0}")]
    Get(std::io::Error),
    #[error("reducing this process's capabilities (capset) failed: {0}")]
    Set(std::io::Error),
    #[error("setting no_new_privs failed: {0}")]
    NoNewPrivs(std::io::Error),
    #[error("process {pid} belongs to uid {target_uid}, and detrix-agent runs as uid {uid} with file capabilities; a user may only observe their own processes (run the agent as root to observe others)")]
    NotYours { pid: u32, target_uid: u32, uid: u32 },
}

/// A 64-bit capability mask of `caps`.
#[must_use]
pub fn mask(caps: impl IntoIterator<Item = u32>) -> u64 {
    caps.into_iter().fold(0, |m, c| m | (1u64 << c))
}

fn capget() -> Result<[Data; 2], PrivError> {
    let mut hdr = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two `Data` structs for version 3, which `data` holds.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    if r != 0 {
        return Err(PrivError::Get(std::io::Error::last_os_error()));
    }
    Ok(data)
}

fn split(m: u64) -> [u32; 2] {
    [(m & 0xffff_ffff) as u32, (m >> 32) as u32]
}

fn join(d: &[Data; 2], f: impl Fn(&Data) -> u32) -> u64 {
    u64::from(f(&d[0])) | (u64::from(f(&d[1])) << 32)
}

/// The highest capability number this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// The effective set of this process.
///
/// # Errors
/// `capget` failed.
pub fn effective() -> Result<u64, PrivError> {
    Ok(join(&capget()?, |d| d.effective))
}

/// What this kernel knows of [`KEEP`] (kernels before 5.8 have no CAP_BPF/CAP_PERFMON; there
/// CAP_SYS_ADMIN covers both).
fn keep_list(
    extra: &[(u32, &'static str, &'static str)],
) -> Vec<(u32, &'static str, &'static str)> {
    let last = last_cap();
    KEEP.iter()
        .chain(extra)
        .copied()
        .filter(|k| k.0 <= last)
        .collect()
}

/// What [`restrict`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restricted {
    pub kept: Vec<&'static str>,
    /// Wanted but not held (the agent then fails where it needs it, with that error).
    pub missing: Vec<&'static str>,
}

/// Keeps only [`KEEP`] (those of it the process has) in every set and sets no_new_privs.
///
/// # Errors
/// The kernel refused a change.
pub fn restrict() -> Result<Restricted, PrivError> {
    restrict_with(&[])
}

/// [`restrict`], keeping `extra` too (`serve`: [`SERVE_EXTRA`]).
///
/// # Errors
/// As [`restrict`].
pub fn restrict_with(extra: &[(u32, &'static str, &'static str)]) -> Result<Restricted, PrivError> {
    type Entry = (u32, &'static str, &'static str);
    let now = capget()?;
    let permitted = join(&now, |d| d.permitted);
    let list = keep_list(extra);
    let keep = mask(list.iter().map(|k| k.0));
    // The bounding set first: it needs CAP_SETPCAP, which the capset below removes.
    if permitted & mask([CAP_SETPCAP]) != 0 {
        for cap in 0..=last_cap() {
            if keep & mask([cap]) == 0 {
                // SAFETY: prctl with integer arguments only.
                let r = unsafe {
                    libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0)
                };
                if r != 0 {
                    return Err(PrivError::Set(std::io::Error::last_os_error()));
                }
            }
        }
    }
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let new = keep & permitted;
    let (lo, hi) = (split(new), split(0));
    let data = [
        Data {
            effective: lo[0],
            permitted: lo[0],
            inheritable: hi[0],
        },
        Data {
            effective: lo[1],
            permitted: lo[1],
            inheritable: hi[1],
        },
    ];
    let mut hdr = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads two `Data` structs for version 3.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    if r != 0 {
        return Err(PrivError::Set(std::io::Error::last_os_error()));
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(PrivError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    let (kept, missing): (Vec<Entry>, Vec<Entry>) =
        list.iter().partition(|k| new & mask([k.0]) != 0);
    Ok(Restricted {
        kept: kept.iter().map(|k| k.1).collect(),
        missing: missing.iter().map(|k| k.1).collect(),
    })
}

/// Run by a non-root user (through file capabilities), the agent observes only processes that
/// user could ptrace itself: all of the target's uids and gids are the user's.
///
/// # Errors
/// [`PrivError::NotYours`] naming both uids.
pub fn check_target_owner(pid: u32) -> Result<(), PrivError> {
    // SAFETY: getuid/getgid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if uid == 0 {
        return Ok(());
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    owner_check(pid, uid, gid, &status)
}

fn owner_check(pid: u32, uid: u32, gid: u32, status: &str) -> Result<(), PrivError> {
    let ids = |k: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (uids, gids) = (ids("Uid:"), ids("Gid:"));
    if uids.len() == 4
        && gids.len() == 4
        && uids.iter().all(|&u| u == uid)
        && gids.iter().all(|&g| g == gid)
    {
        return Ok(());
    }
    Err(PrivError::NotYours {
        pid,
        target_uid: uids.iter().copied().find(|&u| u != uid).unwrap_or(u32::MAX),
        uid,
    })
}

/// Creates (or truncates) a file only the agent's user can read: mode 0600, never through a
/// symlink (`O_NOFOLLOW`), only a regular file, and not one another user owns (they could
/// keep it open or chmod it back).
///
/// # Errors
/// The path is a symlink, not a regular file, owned by someone else, or cannot be created.
pub fn create_private(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                std::io::Error::other(format!(
                    "{} is a symbolic link; the recording is never written through one (remove it or choose another path)",
                    path.display()
                ))
            } else {
                e
            }
        })?;
    let m = f.metadata()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if !m.file_type().is_file() || m.uid() != euid {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file of uid {euid} (owner {}); the recording is written only to a file the agent owns",
            path.display(),
            m.uid()
        )));
    }
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.set_len(0)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_root_user_observes_only_its_own_processes() {
        let mine = "Name:\tapp\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\n";
        assert!(owner_check(7, 1000, 100, mine).is_ok());
        let setuid = "Uid:\t1000\t0\t0\t0\nGid:\t100\t100\t100\t100\n";
        assert_eq!(
            owner_check(7, 1000, 100, setuid).unwrap_err().to_string(),
            "process 7 belongs to uid 0, and detrix-agent runs as uid 1000 with file capabilities; a user may only observe their own processes (run the agent as root to observe others)"
        );
        let other_group = "Uid:\t1000\t1000\t1000\t1000\nGid:\t100\t0\t100\t100\n";
        assert!(owner_check(7, 1000, 100, other_group).is_err());
        assert!(
            owner_check(7, 1000, 100, "").is_err(),
            "a process we cannot read is refused"
        );
    }

    #[test]
    fn private_files_are_0600_and_never_symlinks() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("detrix-privs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("rec.jsonl");
        std::fs::write(&f, "old contents").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(create_private(&f).unwrap());
        let m = std::fs::metadata(&f).unwrap();
        assert_eq!((m.permissions().mode() & 0o777, m.len()), (0o600, 0));
        let target = dir.join("elsewhere");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.join("link.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = create_private(&link).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{} is a symbolic link; the recording is never written through one (remove it or choose another path)", link.display())
        );
        assert_eq!(
            std::fs::read_to_string(&target).unwrap(),
            "keep",
            "the link's target is untouched"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn masks_and_halves() {
        assert_eq!(mask([0, 5, 39]), 1 | (1 << 5) | (1 << 39));
        assert_eq!(split(mask([5, 39])), [1 << 5, 1 << 7]);
        let d = [
            Data {
                effective: 1 << 5,
                ..Data::default()
            },
            Data {
                effective: 1 << 7,
                ..Data::default()
            },
        ];
        assert_eq!(join(&d, |d| d.effective), mask([5, 39]));
        assert_eq!(
            mask(KEEP.iter().map(|k| k.0)),
            mask([2, 5, 6, 7, 19, 21, 38, 39]),
            "exactly these eight"
        );
        assert_eq!(
            mask(SERVE_EXTRA.iter().map(|k| k.0)),
            mask([12]),
            "serve adds only CAP_NET_ADMIN"
        );
    }
}
