//! The container a process runs in, from its `/proc/PID/cgroup`: the cgroup path (v2's single
//! `0::` line, else the first v1 hierarchy that names a container) and the 64-hex-digit id the
//! runtimes put in it.
//!
//! Shapes recognised (each has a recorded line in the tests):
//! - Docker, cgroupfs driver: `/docker/<id>`; systemd driver: `/system.slice/docker-<id>.scope`
//! - containerd (CRI, systemd driver): `…/cri-containerd-<id>.scope`; cgroupfs: `…/kubepods/…/<id>`
//! - CRI-O: `…/crio-<id>.scope` (and `crio-conmon-<id>.scope` for its monitor, not a container)
//! - Podman: `…/libpod-<id>.scope` (and `libpod-conmon-<id>.scope`, not a container)
//!
//! The rule is one for all: the last path component holding a run of exactly 64 hex digits,
//! bounded by a non-alphanumeric character or the end, wins — unless that component is a
//! runtime's monitor (`conmon`). A host process has no such component and no container id.

/// The process's cgroup path: the v2 line if there is one, else the first v1 line whose path
/// names a container, else the first line's path. `None` for empty input.
#[must_use]
pub fn cgroup_path(text: &str) -> Option<&str> {
    let paths: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, _, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some(path)
        })
        .collect();
    if let Some(v2) = text.lines().find_map(|l| l.strip_prefix("0::")) {
        return Some(v2);
    }
    paths
        .iter()
        .copied()
        .find(|p| container_id(p).is_some())
        .or_else(|| paths.first().copied())
}

/// The container id in a cgroup path, lower-case hex, or `None` for a host process.
#[must_use]
pub fn container_id(path: &str) -> Option<String> {
    path.rsplit('/').find_map(|component| {
        if component.contains("conmon") {
            return None;
        }
        hex64(component)
    })
}

/// The first run of exactly 64 hex digits in `s` bounded by non-alphanumerics.
fn hex64(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_hexdigit() && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
            let run = b[i..].iter().take_while(|c| c.is_ascii_hexdigit()).count();
            let end = i + run;
            if run == 64 && (end == b.len() || !b[end].is_ascii_alphanumeric()) {
                return Some(s[i..end].to_ascii_lowercase());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e2a8bd1c0975e6a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef";

    #[test]
    fn docker_cgroupfs_v1() {
        let text =
            format!("12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n");
        assert_eq!(cgroup_path(&text), Some(format!("/docker/{ID}").as_str()));
        assert_eq!(
            container_id(cgroup_path(&text).unwrap()),
            Some(ID.to_owned())
        );
    }

    #[test]
    fn docker_systemd_v2() {
        let text = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(
            cgroup_path(&text),
            Some(format!("/system.slice/docker-{ID}.scope").as_str())
        );
        assert_eq!(
            container_id(cgroup_path(&text).unwrap()),
            Some(ID.to_owned())
        );
    }

    #[test]
    fn containerd_cri_systemd_and_cgroupfs() {
        let systemd = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(
            container_id(cgroup_path(&systemd).unwrap()),
            Some(ID.to_owned())
        );
        let cgroupfs =
            format!("0::/kubepods/besteffort/pod1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d/{ID}\n");
        assert_eq!(
            container_id(cgroup_path(&cgroupfs).unwrap()),
            Some(ID.to_owned())
        );
    }

    #[test]
    fn crio_and_its_monitor() {
        let text = format!("0::/kubepods.slice/kubepods-pod0a.slice/crio-{ID}.scope\n");
        assert_eq!(
            container_id(cgroup_path(&text).unwrap()),
            Some(ID.to_owned())
        );
        let conmon = format!("0::/machine.slice/crio-conmon-{ID}.scope\n");
        assert_eq!(container_id(cgroup_path(&conmon).unwrap()), None);
    }

    #[test]
    fn podman_and_its_monitor() {
        let text = format!("0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n");
        assert_eq!(
            container_id(cgroup_path(&text).unwrap()),
            Some(ID.to_owned())
        );
        let conmon = format!("0::/machine.slice/libpod-conmon-{ID}.scope\n");
        assert_eq!(container_id(cgroup_path(&conmon).unwrap()), None);
    }

    #[test]
    fn upper_case_hex_is_lowered() {
        let upper = ID.to_ascii_uppercase();
        assert_eq!(
            container_id(&format!("/docker/{upper}")),
            Some(ID.to_owned())
        );
    }

    #[test]
    fn host_processes_have_none() {
        let text = "0::/user.slice/user-0.slice/session-3.scope\n";
        assert_eq!(
            cgroup_path(text),
            Some("/user.slice/user-0.slice/session-3.scope")
        );
        assert_eq!(container_id(cgroup_path(text).unwrap()), None);
        assert_eq!(cgroup_path("0::/\n"), Some("/"));
        assert_eq!(container_id("/"), None);
        assert_eq!(cgroup_path(""), None);
        // 63 and 65 hex digits are not ids.
        assert_eq!(container_id(&format!("/docker/{}", &ID[..63])), None);
        assert_eq!(container_id(&format!("/docker/{ID}a")), None);
    }

    #[test]
    fn v1_picks_the_hierarchy_naming_a_container() {
        let text = format!("3:cpu:/\n2:pids:/docker/{ID}\n");
        assert_eq!(cgroup_path(&text), Some(format!("/docker/{ID}").as_str()));
        assert_eq!(cgroup_path("3:cpu:/a\n2:pids:/b\n"), Some("/a"));
    }
}
