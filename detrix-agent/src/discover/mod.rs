//! Finding the processes on this host: the facts a rule matches on, read from `/proc`
//! ([`Process::read`]), one scan of every process ([`scan`]), then exec and exit events as they
//! happen ([`connector::Watcher`]), and the container a process runs in ([`cgroup`]).
//!
//! Data flows one way: this module reads the kernel and hands facts out; it knows nothing of
//! rules, targets or the daemon (that is `serve`).

pub mod cgroup;
pub mod connector;
pub mod tracker;

/// What a rule can match on, about one process (a thread group), as of one read of `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Host pid (the thread-group id).
    pub pid: u32,
    /// Pid in the process's own (innermost) PID namespace: the last `NSpid` field.
    pub ns_pid: u32,
    /// Real uid.
    pub uid: u32,
    /// `/proc/PID/comm` (at most 15 bytes).
    pub comm: String,
    /// The executable's path as the process sees it (inside its root).
    pub exe: String,
    /// The executable's path as the host sees it: differs from [`Process::exe`] when the
    /// process runs under another root that the host can reach (a chroot, or a container whose
    /// root is a directory on the host, e.g. `unshare --mount` + `chroot`). For a container
    /// whose root the host cannot name (pivot_root into an overlay mount), the kernel gives
    /// the in-container path for both, and `/proc/PID/root` + that path reaches the file.
    pub host_exe: String,
    /// `/proc/PID/cmdline`, one entry per argument.
    pub cmdline: Vec<String>,
    /// The cgroup path ([`cgroup::cgroup_path`]), empty when unreadable.
    pub cgroup: String,
    /// The container id parsed from the cgroup path, 64 lower-case hex digits.
    pub container: Option<String>,
    /// Start time in clock ticks after boot (`/proc/PID/stat` field 22): with the pid, names
    /// one process for good (pids are reused, this pair is not).
    pub start_time: u64,
}

/// Why a process's facts could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("process {pid} is gone")]
    Gone { pid: u32 },
    #[error("process {pid} is a kernel thread (no executable)")]
    KernelThread { pid: u32 },
    #[error("cannot read /proc/{pid}/{what}: {source}")]
    Io {
        pid: u32,
        what: &'static str,
        source: std::io::Error,
    },
}

/// `PF_KTHREAD` in `/proc/PID/stat`'s flags (include/linux/sched.h).
const PF_KTHREAD: u64 = 0x0020_0000;

fn read(pid: u32, what: &'static str) -> Result<String, ProcError> {
    std::fs::read_to_string(format!("/proc/{pid}/{what}")).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound
            || source.raw_os_error() == Some(libc::ESRCH)
        {
            ProcError::Gone { pid }
        } else {
            ProcError::Io { pid, what, source }
        }
    })
}

/// The value of `Key:` in `/proc/PID/status` text, split on whitespace.
fn status_field<'a>(status: &'a str, key: &str) -> Vec<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.split_whitespace().collect())
        .unwrap_or_default()
}

/// Joins `root` and the in-root path `exe`, or strips `root` off `exe`: see [`Process::host_exe`].
/// Returns `(as the process sees it, as the host sees it)`.
#[must_use]
pub fn exe_views(root: &str, exe: &str) -> (String, String) {
    if root == "/" || root.is_empty() {
        return (exe.to_owned(), exe.to_owned());
    }
    let root = root.trim_end_matches('/');
    match exe.strip_prefix(root) {
        Some(inner) if inner.starts_with('/') => (inner.to_owned(), exe.to_owned()),
        _ => (exe.to_owned(), format!("{root}{exe}")),
    }
}

impl Process {
    /// Reads one process's facts.
    ///
    /// # Errors
    /// [`ProcError::Gone`] when it exited meanwhile, [`ProcError::KernelThread`] for kernel
    /// threads, or an unreadable file.
    pub fn read(pid: u32) -> Result<Self, ProcError> {
        let stat = read(pid, "stat")?;
        // Fields after the comm (which may hold spaces and parentheses) start at field 3.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| fields.get(n - 3).copied().unwrap_or_default();
        if matches!(field(3), "Z" | "X" | "") {
            return Err(ProcError::Gone { pid });
        }
        if field(9).parse::<u64>().unwrap_or(0) & PF_KTHREAD != 0 {
            return Err(ProcError::KernelThread { pid });
        }
        let start_time = field(22).parse().unwrap_or(0);
        let exe_link = match std::fs::read_link(format!("/proc/{pid}/exe")) {
            Ok(p) => p.to_string_lossy().into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ProcError::Gone { pid })
            }
            Err(source) => {
                return Err(ProcError::Io {
                    pid,
                    what: "exe",
                    source,
                })
            }
        };
        let root = std::fs::read_link(format!("/proc/{pid}/root"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "/".to_owned());
        let (exe, host_exe) = exe_views(&root, &exe_link);
        let status = read(pid, "status")?;
        let ns_pid = status_field(&status, "NSpid:")
            .last()
            .and_then(|s| s.parse().ok())
            .unwrap_or(pid);
        let uid = status_field(&status, "Uid:")
            .first()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u32::MAX);
        let comm = read(pid, "comm")?.trim_end_matches('\n').to_owned();
        let cmdline = read(pid, "cmdline")
            .map(|c| {
                c.split('\0')
                    .filter(|a| !a.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let cg = read(pid, "cgroup").unwrap_or_default();
        let cgroup = cgroup::cgroup_path(&cg).unwrap_or_default().to_owned();
        let container = cgroup::container_id(&cgroup);
        Ok(Self {
            pid,
            ns_pid,
            uid,
            comm,
            exe,
            host_exe,
            cmdline,
            cgroup,
            container,
            start_time,
        })
    }
}

/// Every thread-group id in `/proc` now, ascending.
///
/// # Errors
/// `/proc` unreadable.
pub fn scan() -> std::io::Result<Vec<u32>> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exe_views_strip_or_join_the_root() {
        assert_eq!(
            exe_views("/", "/usr/bin/orders"),
            ("/usr/bin/orders".to_owned(), "/usr/bin/orders".to_owned())
        );
        assert_eq!(
            exe_views("/srv/root", "/srv/root/app/orders"),
            ("/app/orders".to_owned(), "/srv/root/app/orders".to_owned())
        );
        assert_eq!(
            exe_views("/srv/root/", "/app/orders"),
            ("/app/orders".to_owned(), "/srv/root/app/orders".to_owned())
        );
        // A sibling directory sharing the prefix is not inside the root.
        assert_eq!(
            exe_views("/srv/root", "/srv/rootx/orders"),
            (
                "/srv/rootx/orders".to_owned(),
                "/srv/root/srv/rootx/orders".to_owned()
            )
        );
    }

    #[test]
    fn reads_this_process() {
        let me = Process::read(std::process::id()).expect("own /proc entry");
        assert_eq!(me.pid, std::process::id());
        // SAFETY: getuid has no preconditions.
        assert_eq!(me.uid, unsafe { libc::getuid() });
        let exe = std::env::current_exe().expect("current exe");
        assert_eq!(me.host_exe, exe.to_string_lossy());
        assert_eq!(
            me.cmdline.first().map(String::as_str),
            std::env::args().next().as_deref()
        );
        assert_eq!(
            std::fs::read_to_string("/proc/self/comm")
                .unwrap()
                .trim_end(),
            me.comm
        );
        assert!(me.start_time > 0, "start time read: {}", me.start_time);
        assert!(scan().unwrap().contains(&me.pid));
    }

    #[test]
    fn kernel_threads_and_gone_processes_are_told_apart() {
        if std::fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim_end() == "kthreadd") {
            assert!(matches!(
                Process::read(2),
                Err(ProcError::KernelThread { pid: 2 })
            ));
        } else {
            println!(
                "NOT RUN: pid 2 is not kthreadd here (a PID namespace), no kernel thread to read"
            );
        }
        assert!(matches!(
            Process::read(u32::MAX - 1),
            Err(ProcError::Gone { .. })
        ));
    }

    #[test]
    fn a_zombie_is_gone() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        }) {
            assert!(
                std::time::Instant::now() < deadline,
                "child {pid} never became a zombie"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(matches!(Process::read(pid), Err(ProcError::Gone { pid: p }) if p == pid));
        child.wait().expect("reap");
    }
}
