//! Reading a target's files as the target would: through its own view of the filesystem
//! (`/proc/PID/root`) and with its own filesystem credentials, never root's.
//!
//! The agent runs as root and answers callers who are not; a read it does for them must not
//! reach what the target's user could not. So each read runs on a fresh, short-lived thread
//! that first drops to the target's fsuid, fsgid and supplementary groups, then opens paths
//! with `openat2`, which confines the lookup in the kernel (no `..`, absolute or symlink escape,
//! no `/proc` magic links), and ends when the read is done.
//!
//! Why a thread and not a forked child: the agent is a multi-threaded tokio process, where a
//! child after `fork` may only make async-signal-safe calls; a thread needs no such care and
//! costs ~20 µs. Linux keeps credentials per thread; the raw `setfsuid`, `setfsgid` and
//! `setgroups` system calls change only the calling thread (glibc's `setgroups` wrapper would
//! change every thread of the agent, so it is not used), and switching the fsuid away from 0
//! clears the thread's file capabilities (`CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`, …). The
//! thread is never returned to a pool: it ends with the lowered credentials. Each switch is
//! read back before anything is opened; if it did not take, nothing is read.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The filesystem identity the kernel checks a process's file accesses with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    pub fsuid: u32,
    pub fsgid: u32,
    pub groups: Vec<u32>,
}

/// The target's filesystem credentials, from `/proc/PID/status` (`Uid:`/`Gid:` fourth field,
/// `Groups:`).
///
/// # Errors
/// The status file cannot be read or lacks those lines.
pub fn creds(pid: u32) -> io::Result<Creds> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_creds(&status).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/status has no parsable Uid/Gid/Groups lines"),
        )
    })
}

fn parse_creds(status: &str) -> Option<Creds> {
    let field = |key: &str| status.lines().find_map(|l| l.strip_prefix(key));
    let fourth = |key: &str| -> Option<u32> { field(key)?.split_whitespace().nth(3)?.parse().ok() };
    let groups = field("Groups:")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<Vec<u32>, _>>()
        .ok()?;
    Some(Creds {
        fsuid: fourth("Uid:")?,
        fsgid: fourth("Gid:")?,
        groups,
    })
}

/// Opens `/proc/PID/root` (the target's root directory, across mount namespaces) as the
/// agent: the magic link is only followed for a caller that may ptrace the target, which the
/// target's own user may not be (a non-dumpable target), so this one step is done as root.
///
/// # Errors
/// The process is gone or its root cannot be opened.
pub fn open_root(pid: u32) -> io::Result<OwnedFd> {
    let path = CString::new(format!("/proc/{pid}/root")).map_err(io::Error::other)?;
    // SAFETY: a valid NUL-terminated path; the returned descriptor is owned below.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs `f` on a new thread whose filesystem credentials are `creds`, and returns its result.
///
/// # Errors
/// The thread could not be started, the credentials could not be taken (then `f` never runs),
/// or `f` panicked.
pub fn run_as<T: Send + 'static>(
    creds: &Creds,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let creds = creds.clone();
    let handle = std::thread::Builder::new()
        .name("detrix-as-target".into())
        .spawn(move || -> io::Result<T> {
            become_target(&creds)?;
            Ok(f())
        })?;
    handle
        .join()
        .map_err(|_| io::Error::other("the read on the target's behalf panicked"))?
}

/// Switches the calling thread's supplementary groups, fsgid and fsuid, and checks each took.
fn become_target(c: &Creds) -> io::Result<()> {
    // SAFETY: setgroups reads `len` gids from a valid slice; the raw system call changes only
    // this thread's credentials (module doc).
    let r = unsafe {
        libc::syscall(
            libc::SYS_setgroups,
            c.groups.len() as libc::c_long,
            c.groups.as_ptr(),
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "could not take the target's groups {:?} ({e}); the agent needs CAP_SETGID",
                c.groups
            ),
        ));
    }
    // setfsgid/setfsuid return the previous value and never fail loudly: set, then set again
    // and read back what the first call left.
    // SAFETY: no pointers; per-thread credential change.
    unsafe { libc::syscall(libc::SYS_setfsgid, libc::c_long::from(c.fsgid)) };
    // SAFETY: as above.
    let now_gid = unsafe { libc::syscall(libc::SYS_setfsgid, libc::c_long::from(c.fsgid)) };
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_setfsuid, libc::c_long::from(c.fsuid)) };
    // SAFETY: as above.
    let now_uid = unsafe { libc::syscall(libc::SYS_setfsuid, libc::c_long::from(c.fsuid)) };
    if now_uid != libc::c_long::from(c.fsuid) || now_gid != libc::c_long::from(c.fsgid) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "could not take the target's file identity (uid {} gid {}; have uid {now_uid} gid {now_gid}); the agent needs CAP_SETUID and CAP_SETGID",
                c.fsuid, c.fsgid
            ),
        ));
    }
    Ok(())
}

/// `openat2(dir, path, flags, resolve)`: a lookup the kernel confines.
///
/// # Errors
/// As the system call (`EXDEV` for an escape, `ELOOP` for a refused link, `EACCES`, `ENOENT`).
pub fn openat2(dir: &OwnedFd, path: &str, flags: i32, resolve: u64) -> io::Result<OwnedFd> {
    let c = CString::new(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: open_how is plain data; zeroed is a valid value, the fields are set below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    // SAFETY: valid descriptor, NUL-terminated path, a pointer to `how` and its size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &raw const how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Flags for a lookup of a path as the target sees it: `/` is the target's root.
pub const IN_ROOT: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
/// Flags for a lookup that must stay inside the starting directory.
pub const BENEATH: u64 = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;

/// What reading a regular file found.
#[derive(Debug)]
pub enum ReadOutcome {
    Bytes(Vec<u8>),
    /// Not a regular file (directory, device, FIFO, socket).
    NotRegular,
    /// Larger than the limit; the size seen.
    TooLarge(u64),
}

/// Opens `path` under `dir` with `resolve` and reads it whole if it is a regular file of at
/// most `limit` bytes. Opens non-blocking so a FIFO cannot stall the reader.
///
/// # Errors
/// The open or read failed.
pub fn read_regular(
    dir: &OwnedFd,
    path: &str,
    resolve: u64,
    limit: u64,
) -> io::Result<ReadOutcome> {
    let fd = openat2(
        dir,
        path,
        libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK,
        resolve,
    )?;
    let file = File::from(fd);
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Ok(ReadOutcome::NotRegular);
    }
    if meta.len() > limit {
        return Ok(ReadOutcome::TooLarge(meta.len()));
    }
    let mut out = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // One byte past the limit tells a file that grew since the stat.
    file.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Ok(ReadOutcome::TooLarge(out.len() as u64));
    }
    Ok(ReadOutcome::Bytes(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creds_are_the_fs_fields_and_groups() {
        let status =
            "Name:\tx\nUid:\t1000\t1001\t1002\t1003\nGid:\t50\t51\t52\t53\nGroups:\t4 24 27 \n";
        assert_eq!(
            parse_creds(status),
            Some(Creds {
                fsuid: 1003,
                fsgid: 53,
                groups: vec![4, 24, 27]
            })
        );
        let none =
            "Uid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\nGroups:\t\n";
        assert_eq!(
            parse_creds(none),
            Some(Creds {
                fsuid: 65534,
                fsgid: 65534,
                groups: vec![]
            })
        );
        assert_eq!(parse_creds("Uid:\t1\n"), None);
    }

    /// The thread really reads as the target: a root-only file refuses it, a world-readable
    /// one does not, and the caller's own credentials are untouched afterwards.
    #[test]
    fn run_as_reads_with_the_targets_permissions() {
        use std::os::unix::fs::PermissionsExt as _;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("NOT RUN: run_as_reads_with_the_targets_permissions: needs root to switch credentials");
            return;
        }
        let dir = std::env::temp_dir().join(format!("detrix-runas-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for (name, mode) in [("secret", 0o600), ("open", 0o644)] {
            std::fs::write(dir.join(name), name).unwrap();
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        let nobody = Creds {
            fsuid: 65534,
            fsgid: 65534,
            groups: vec![],
        };
        let d = OwnedFd::from(File::open(&dir).unwrap());
        let out = run_as(&nobody, move || {
            let read = |n: &str| match read_regular(&d, n, BENEATH, 100) {
                Ok(ReadOutcome::Bytes(b)) => Ok(b),
                Ok(other) => Err(format!("{other:?}")),
                Err(e) => Err(format!("errno {:?}", e.raw_os_error())),
            };
            (read("secret"), read("open"))
        })
        .unwrap();
        assert_eq!(
            out,
            (
                Err(format!("errno {:?}", Some(libc::EACCES))),
                Ok(b"open".to_vec())
            )
        );
        assert_eq!(
            std::fs::read(dir.join("secret")).unwrap(),
            b"secret",
            "this thread is still root"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
