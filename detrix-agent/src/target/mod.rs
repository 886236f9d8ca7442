//! Facts about a target process from `/proc`: is it there, which binary it runs, where that
//! binary is loaded, and whether we may attach to it.
//!
//! Why one module: every fact about the process comes from `/proc/PID/…` read here, the maps
//! through the one parser in [`maps`], so the engine and the symbolizer see the same process.

pub mod maps;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::addr::{self, LinkAddr};
use maps::Mapping;

/// Why a target cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no process with pid {pid}: it is not running (check the pid with `pgrep` or `ps`)")]
    NoSuchProcess { pid: u32 },
    #[error("process {pid} exited")]
    Exited { pid: u32 },
    #[error(
        "attaching uprobes needs root or CAP_BPF and CAP_PERFMON (this process has {have}); run it \
         with sudo, or grant them: setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep <detrix-agent>"
    )]
    NoPermission { have: String },
    #[error("cannot read {what} of process {pid}: {source}; are you root?")]
    Proc {
        pid: u32,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("process {pid} does not map its own executable {exe} (maps has no entry with inode {inode})")]
    NotMapped { pid: u32, exe: PathBuf, inode: u64 },
}

/// A process we capture from.
#[derive(Debug, Clone)]
pub struct Target {
    pub pid: u32,
    /// `/proc/PID/exe`: works across mount namespaces and for deleted binaries, which the path
    /// the link points to would not.
    pub exe: PathBuf,
    /// Where `/proc/PID/exe` points, for messages.
    pub exe_name: PathBuf,
    /// Device and inode of the executable, re-checked before attaching.
    pub dev_ino: (u64, u64),
    /// Start time (`/proc/PID/stat` field 22, clock ticks after boot): with the pid, names this
    /// process and no later one that reuses the pid.
    pub start_time: u64,
}

/// `pid`'s start time (`/proc/PID/stat` field 22), `None` if it is gone or unreadable.
#[must_use]
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    start_time_from(&stat)
}

/// Field 22 of a `/proc/PID/stat` line (the 20th after the parenthesised comm).
fn start_time_from(stat: &str) -> Option<u64> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// How the process an agent attached to stopped being that process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    Exited,
    /// The pid now names another process.
    PidReused,
    /// It exec'd another program.
    Execed,
}

impl Gone {
    /// For logs: what happened.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Gone::Exited => "the target process exited",
            Gone::PidReused => "the target process exited and its pid now names another process",
            Gone::Execed => "the target process exec'd another program; its probes and debug info belong to the old one",
        }
    }
}

/// Whether `pid` names a live (non-zombie) process.
#[must_use]
pub fn alive(pid: u32) -> bool {
    alive_from(pid, std::fs::read_to_string(format!("/proc/{pid}/stat")))
}

/// [`alive`] from the read of `/proc/PID/stat`. Only "no such file" means gone: when the read
/// fails otherwise (EMFILE: the agent is out of file descriptors, ENOMEM), `kill(pid, 0)`,
/// which needs no descriptor, decides, so running out of fds is never taken for the target's
/// exit (issue #12 point 5).
fn alive_from(pid: u32, stat: std::io::Result<String>) -> bool {
    match stat {
        // Field 3 (after the parenthesised comm, which may contain spaces) is the state.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            let Ok(p) = i32::try_from(pid) else {
                return false;
            };
            // SAFETY: kill with signal 0 only checks that the process exists.
            let r = unsafe { libc::kill(p, 0) };
            let gone =
                r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            tracing::warn!(pid, error = %e, gone, "reading /proc/PID/stat failed; kill(pid, 0) decided whether the target runs");
            !gone
        }
    }
}

impl Target {
    /// Looks the process up. Order matters for the message a user sees: a missing process is
    /// reported first, then missing privileges, then anything else.
    ///
    /// # Errors
    /// [`TargetError::NoSuchProcess`], [`TargetError::NoPermission`], or `/proc` unreadable.
    pub fn open(pid: u32) -> Result<Self, TargetError> {
        if pid == 0 || !alive(pid) {
            return Err(TargetError::NoSuchProcess { pid });
        }
        check_privileges()?;
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let meta = std::fs::metadata(&exe).map_err(|source| {
            if alive(pid) {
                TargetError::Proc {
                    pid,
                    what: "the executable",
                    source,
                }
            } else {
                TargetError::NoSuchProcess { pid }
            }
        })?;
        let exe_name = std::fs::read_link(&exe).unwrap_or_else(|_| exe.clone());
        let start_time = start_time(pid).ok_or(TargetError::NoSuchProcess { pid })?;
        Ok(Self {
            pid,
            exe,
            exe_name,
            dev_ino: (meta.dev(), meta.ino()),
            start_time,
        })
    }

    /// `None` while the process opened is still there and still runs the binary it ran then;
    /// otherwise how it went: exited (or a zombie), replaced by a later process given the same
    /// pid (its start time differs), or exec'd into another program (its DWARF, its probes,
    /// belong to the old one).
    /// A failed read that is not "gone" (EMFILE) is decided by [`alive`], never taken for an
    /// exit.
    #[must_use]
    pub fn gone(&self) -> Option<Gone> {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) if start_time_from(&stat) != Some(self.start_time) => Some(Gone::PidReused),
            Ok(stat) if !alive_from(self.pid, Ok(stat.clone())) => Some(Gone::Exited),
            Ok(_)
                if std::fs::metadata(&self.exe)
                    .is_ok_and(|m| (m.dev(), m.ino()) != self.dev_ino) =>
            {
                Some(Gone::Execed)
            }
            Ok(_) => None,
            Err(e) => (!alive_from(self.pid, Err(e))).then_some(Gone::Exited),
        }
    }

    /// Whether `/proc/PID/exe` still names the same file (the process may have exec'd).
    #[must_use]
    pub fn same_binary(&self) -> bool {
        std::fs::metadata(&self.exe).is_ok_and(|m| (m.dev(), m.ino()) == self.dev_ino)
    }

    /// The process's mappings (`/proc/PID/maps`).
    ///
    /// # Errors
    /// `/proc/PID/maps` unreadable.
    pub fn maps(&self) -> Result<Vec<Mapping>, TargetError> {
        maps::read(self.pid).map_err(|source| TargetError::Proc {
            pid: self.pid,
            what: "maps",
            source,
        })
    }

    /// Runtime address − link address of the executable: the start of its mapping at file
    /// offset 0 minus the link address of the segment at offset 0 ([`addr::load_bias`]).
    ///
    /// # Errors
    /// `/proc/PID/maps` unreadable, or the executable not mapped.
    pub fn load_bias(&self, first_segment: LinkAddr) -> Result<u64, TargetError> {
        self.maps()?
            .iter()
            .find(|m| m.inode == self.dev_ino.1 && m.offset == 0)
            .map(|m| addr::load_bias(m.start, first_segment))
            .ok_or_else(|| TargetError::NotMapped {
                pid: self.pid,
                exe: self.exe.clone(),
                inode: self.dev_ino.1,
            })
    }
}

/// Checks that this process may load BPF programs and attach uprobes: root, or `CAP_BPF` +
/// `CAP_PERFMON`, or `CAP_SYS_ADMIN`. Checked up front so the user gets one clear sentence
/// instead of an `EPERM` from deep inside the loader.
///
/// # Errors
/// [`TargetError::NoPermission`] naming what this process has.
pub fn check_privileges() -> Result<(), TargetError> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |c: u32| eff & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    Err(TargetError::NoPermission {
        have: format!("uid {euid}, effective capabilities {eff:#x}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_file_descriptors_is_not_the_target_exiting() {
        let me = std::process::id();
        let emfile = || Err(std::io::Error::from_raw_os_error(libc::EMFILE));
        assert!(alive_from(me, emfile()), "EMFILE on a live process");
        let gone = || Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(!alive_from(me, gone()));
        // A pid that cannot exist (above pid_max): EMFILE, then kill says ESRCH.
        assert!(!alive_from(4_194_305, emfile()));
    }

    #[test]
    fn start_time_is_field_22_even_with_spaces_and_parens_in_the_name() {
        let stat =
            "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(start_time_from(stat), Some(987_654));
        assert_eq!(start_time_from("4242 (x) S 1"), None);
    }

    #[test]
    fn a_process_whose_start_time_differs_is_another_process() {
        let me = std::process::id();
        let mut t = Target::open(me).expect("open self");
        assert_eq!(t.gone(), None);
        t.start_time += 1;
        assert_eq!(t.gone(), Some(Gone::PidReused));
        t.start_time -= 1;
        t.dev_ino.1 ^= 1;
        assert_eq!(t.gone(), Some(Gone::Execed));
    }
}
