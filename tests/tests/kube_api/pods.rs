//! What node-mode tests place around the stand-in API server: cgroup v2 directories named the
//! way containerd's systemd driver names them (`cri-containerd-<id>.scope`) with real processes
//! moved in, processes in their own PID namespace (`unshare --pid --fork`, as a container's
//! are), and pods built from `k8s-openapi` types whose `containerStatuses[].containerID` name
//! those containers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use detrix_e2e::{build_c_fixture, child_processes, Build, Lines};
use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The cgroup v2 mount point, from this process's mountinfo.
pub fn cgroup2_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// A directory tree of containerd-named scopes, removed (after its processes) on drop.
pub struct Cgroups {
    slice: PathBuf,
    scopes: Vec<PathBuf>,
    /// Which `Cgroups` of this test process this is: tests run in parallel threads of one
    /// process, and two of them must never name the same container (a node agent would take
    /// the other test's processes for its pod's).
    instance: u64,
}

static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Cgroups {
    pub fn new(root: &Path, tag: &str) -> std::io::Result<Cgroups> {
        let slice = root.join(format!(
            "detrix-node-test-{tag}-{}.slice",
            std::process::id()
        ));
        std::fs::create_dir_all(&slice)?;
        Ok(Cgroups {
            slice,
            scopes: Vec::new(),
            instance: INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// A container id (64 hex digits, unique to this run and this `Cgroups`) with its scope,
    /// `pid` moved in.
    pub fn container(&mut self, n: u64, pid: u32) -> String {
        let id = format!(
            "{:016x}{:016x}{:016x}{:016x}",
            0xd37c_0000_0000_0000_u64 | u64::from(std::process::id()),
            (self.instance << 32) | n,
            0x0123_4567_89ab_cdef_u64,
            0xfedc_ba98_7654_3210_u64 ^ n
        );
        let scope = self.slice.join(format!("cri-containerd-{id}.scope"));
        std::fs::create_dir_all(&scope).expect("create the container's cgroup");
        std::fs::write(scope.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", scope.display()));
        let seen = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
        assert!(
            seen.contains(&format!("cri-containerd-{id}.scope")),
            "{seen}"
        );
        self.scopes.push(scope);
        id
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        for dir in self.scopes.iter().chain(std::iter::once(&self.slice)) {
            while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The test's cgroups, or `None` (after saying NOT RUN) where none can be made.
pub fn cgroups(tag: &str) -> Option<Cgroups> {
    let Some(root) = cgroup2_root() else {
        println!("NOT RUN: no cgroup v2 hierarchy mounted (node mode maps containers through it)");
        return None;
    };
    match Cgroups::new(&root, tag) {
        Ok(c) => Some(c),
        Err(e) => {
            println!(
                "NOT RUN: cannot create a cgroup under {} ({e})",
                root.display()
            );
            None
        }
    }
}

pub fn pod(
    name: &str,
    node: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
    container_id: &str,
) -> Pod {
    let map = |p: &[(&str, &str)]| {
        Some(
            p.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        )
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("shop".to_owned()),
            uid: Some(format!("0000-{name}")),
            labels: map(labels),
            annotations: map(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
            containers: vec![Container {
                name: "app".to_owned(),
                image: Some("registry.example/orders:1".to_owned()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".to_owned()),
            container_statuses: Some(vec![ContainerStatus {
                name: "app".to_owned(),
                container_id: Some(format!("containerd://{container_id}")),
                image: "registry.example/orders:1".to_owned(),
                ready: true,
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

/// The `orders` fixture as pid 1 of its own PID namespace (`unshare --pid --fork`); killed
/// (with its namespace) on drop.
pub struct Contained {
    child: Child,
    /// The fixture's pid as the host sees it.
    pub host_pid: u32,
    pub stdout: Lines,
}

impl Contained {
    pub fn orders(delay_ms: u32) -> Contained {
        let exe = build_c_fixture("orders", Build::Debug);
        let mut child = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child"])
            .arg(&exe)
            .args(["-1", &delay_ms.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run unshare");
        let (stdout, _) = Lines::collect(child.stdout.take().expect("piped"));
        assert!(
            stdout
                .wait_for(Duration::from_secs(10), |l| l == "ready pid=1")
                .is_some(),
            "the fixture did not start as pid 1 of its namespace: {}",
            stdout.text()
        );
        let host_pid = child_processes(child.id())
            .first()
            .map(|(p, _)| *p)
            .expect("unshare's child");
        Contained {
            child,
            host_pid,
            stdout,
        }
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        // The fixture first: unshare, its parent, reaps it and exits. (Killing unshare first
        // would orphan the fixture to the host's pid 1, which may never reap it.)
        // SAFETY: kill(2) on the pid of a process this struct started and has not reaped.
        unsafe {
            libc::kill(i32::try_from(self.host_pid).unwrap_or(0), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Whether `unshare` can make a PID namespace here (says NOT RUN when not).
pub fn can_unshare(test: &str) -> bool {
    let ok = Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("NOT RUN: {test}: `unshare --pid --fork` is not available");
    }
    ok
}
