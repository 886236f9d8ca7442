//! The git checkout a target runs from, read as files (no `git` process): the repository
//! found by walking up from the target's working directory, its `HEAD` commit, and the tags
//! that point at it. The Go client runs `git rev-parse HEAD` in its own directory; this is the
//! same answer for a process we do not run inside.
//!
//! Read: `.git` as a directory or as a `gitdir:` file (worktrees, submodules), `commondir`,
//! `HEAD` (symbolic or detached), loose refs, `packed-refs` (with its `^` peeled lines), and
//! loose annotated tag objects (zlib) to peel a loose tag ref. A tag whose object is packed and
//! whose ref is loose is not peeled (it needs the pack index); `git gc` packs both together and
//! writes the peeled line, so that case is rare.
//!
//! Every path is looked up with [`target_fs`](super::target_fs) flags under the target's root:
//! the caller runs this on a thread holding the target's credentials, so a `.git` the target's
//! user cannot read is not read, and no symlink leads outside the target's root.

use std::io::Read as _;
use std::os::fd::{AsRawFd, OwnedFd};

use super::target_fs::{self, ReadOutcome, IN_ROOT};

/// The facts read from one checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    /// The git directory, as a path in the target's filesystem.
    pub git_dir: String,
    /// The commit `HEAD` resolves to.
    pub head: Option<String>,
    /// The tag chosen among those pointing at `HEAD`: annotated before lightweight (as `git
    /// describe`), then the greatest name.
    pub tag: Option<String>,
}

const SMALL: u64 = 1 << 20;
const PACKED_REFS_MAX: u64 = 64 << 20;

fn read(root: &OwnedFd, path: &str, limit: u64) -> Option<Vec<u8>> {
    match target_fs::read_regular(root, path, IN_ROOT, limit) {
        Ok(ReadOutcome::Bytes(b)) => Some(b),
        _ => None,
    }
}

fn read_text(root: &OwnedFd, path: &str) -> Option<String> {
    read(root, path, SMALL).map(|b| String::from_utf8_lossy(&b).trim().to_owned())
}

fn is_dir(root: &OwnedFd, path: &str) -> bool {
    target_fs::openat2(root, path, libc::O_PATH | libc::O_DIRECTORY, IN_ROOT).is_ok()
}

fn join(dir: &str, rel: &str) -> String {
    if rel.starts_with('/') {
        rel.to_owned()
    } else if dir.ends_with('/') {
        format!("{dir}{rel}")
    } else {
        format!("{dir}/{rel}")
    }
}

fn parent(dir: &str) -> Option<&str> {
    let t = dir.trim_end_matches('/');
    if t.is_empty() {
        return None;
    }
    Some(match t.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &t[..i],
    })
}

fn is_oid(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Finds the git directory for `cwd` (a path in the target's filesystem).
fn find_git_dir(root: &OwnedFd, cwd: &str) -> Option<String> {
    let mut dir = cwd.to_owned();
    for _ in 0..256 {
        let dot_git = join(&dir, ".git");
        if is_dir(root, &dot_git) {
            return Some(dot_git);
        }
        if let Some(text) = read_text(root, &dot_git) {
            if let Some(p) = text.strip_prefix("gitdir:") {
                return Some(join(&dir, p.trim()));
            }
        }
        dir = parent(&dir)?.to_owned();
    }
    None
}

/// `packed-refs` as (ref, oid, peeled oid).
fn packed_refs(root: &OwnedFd, common: &str) -> Vec<(String, String, Option<String>)> {
    let Some(raw) = read(root, &join(common, "packed-refs"), PACKED_REFS_MAX) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String, Option<String>)> = Vec::new();
    for line in String::from_utf8_lossy(&raw).lines() {
        if let Some(peeled) = line.strip_prefix('^') {
            if let Some(last) = out.last_mut() {
                if is_oid(peeled.trim()) {
                    last.2 = Some(peeled.trim().to_owned());
                }
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if let Some((oid, name)) = line.split_once(' ') {
            if is_oid(oid) {
                out.push((name.trim().to_owned(), oid.to_owned(), None));
            }
        }
    }
    out
}

/// Resolves a ref name to an object id: loose in the git dir, loose in the common dir, then
/// packed; follows symbolic refs a few levels.
fn resolve_ref(
    root: &OwnedFd,
    git_dir: &str,
    common: &str,
    packed: &[(String, String, Option<String>)],
    name: &str,
) -> Option<String> {
    let mut name = name.to_owned();
    for _ in 0..5 {
        let loose = read_text(root, &join(git_dir, &name))
            .or_else(|| read_text(root, &join(common, &name)));
        match loose {
            Some(t) if is_oid(&t) => return Some(t),
            Some(t) => name = t.strip_prefix("ref:")?.trim().to_owned(),
            None => {
                return packed
                    .iter()
                    .find(|(n, _, _)| *n == name)
                    .map(|(_, o, _)| o.clone())
            }
        }
    }
    None
}

/// The object an annotated tag object points at, if `oid` is a loose tag object.
fn peel_loose_tag(root: &OwnedFd, common: &str, oid: &str) -> Option<String> {
    let path = join(common, &format!("objects/{}/{}", &oid[..2], &oid[2..]));
    let raw = read(root, &path, SMALL)?;
    let mut head = Vec::new();
    flate2::read::ZlibDecoder::new(&raw[..])
        .take(4096)
        .read_to_end(&mut head)
        .ok()?;
    let text = String::from_utf8_lossy(&head);
    let body = text.strip_prefix("tag ")?.split_once('\0')?.1;
    let target = body.lines().next()?.strip_prefix("object ")?.trim();
    is_oid(target).then(|| target.to_owned())
}

/// Loose tag refs under `dir` (recursively), as (name below refs/tags, oid).
fn loose_tags(root: &OwnedFd, common: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = join(common, &format!("refs/tags{}", rel));
        let Ok(fd) = target_fs::openat2(root, &dir, libc::O_RDONLY | libc::O_DIRECTORY, IN_ROOT)
        else {
            continue;
        };
        // Listing through our own descriptor: /proc/self/fd/N is this process's, always ours.
        let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd())) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let sub = format!("{rel}/{name}");
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                if out.len() + stack.len() < 100_000 {
                    stack.push(sub);
                }
            } else if let Some(oid) = read_text(root, &join(common, &format!("refs/tags{sub}"))) {
                if is_oid(&oid) {
                    out.push((sub.trim_start_matches('/').to_owned(), oid));
                }
            }
        }
    }
    out
}

/// Reads the checkout containing `cwd`, under the target's `root`. Call on a thread holding
/// the target's credentials ([`target_fs::run_as`]).
#[must_use]
pub fn read_checkout(root: &OwnedFd, cwd: &str) -> Option<Checkout> {
    let git_dir = find_git_dir(root, cwd)?;
    let common = read_text(root, &join(&git_dir, "commondir"))
        .map_or_else(|| git_dir.clone(), |c| join(&git_dir, &c));
    let packed = packed_refs(root, &common);
    let head_text = read_text(root, &join(&git_dir, "HEAD"))?;
    let head = if is_oid(&head_text) {
        Some(head_text)
    } else {
        head_text
            .strip_prefix("ref:")
            .and_then(|r| resolve_ref(root, &git_dir, &common, &packed, r.trim()))
    };
    let tag = head.as_ref().and_then(|h| {
        // name → (annotated, points at HEAD); loose refs override packed ones of the same name.
        let mut tags: std::collections::BTreeMap<String, (bool, bool)> = Default::default();
        for (name, oid, peeled) in &packed {
            if let Some(short) = name.strip_prefix("refs/tags/") {
                let at = peeled.as_ref().unwrap_or(oid) == h;
                tags.insert(short.to_owned(), (peeled.is_some(), at));
            }
        }
        for (name, oid) in loose_tags(root, &common) {
            let entry = if oid == *h {
                (false, true)
            } else {
                match peel_loose_tag(root, &common, &oid) {
                    Some(target) => (true, target == *h),
                    None => (false, false),
                }
            };
            tags.insert(name, entry);
        }
        tags.into_iter()
            .filter(|(_, (_, at))| *at)
            .max_by(|a, b| (a.1 .0, &a.0).cmp(&(b.1 .0, &b.0)))
            .map(|(name, _)| name)
    });
    Some(Checkout { git_dir, head, tag })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn open_dir(p: &std::path::Path) -> OwnedFd {
        let f = std::fs::File::open(p).unwrap();
        OwnedFd::from(f)
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("detrix-git-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const T: &str = "3333333333333333333333333333333333333333";

    fn write(p: &std::path::Path, text: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn head_through_a_branch_and_packed_refs_with_peeled_tags() {
        let root = scratch("packed");
        let g = root.join("repo/.git");
        write(&g.join("HEAD"), "ref: refs/heads/main\n");
        write(
            &g.join("packed-refs"),
            &format!("# pack-refs with: peeled fully-peeled sorted \n{A} refs/heads/main\n{T} refs/tags/v1.0.0\n^{A}\n{B} refs/tags/v0.9.0\n{A} refs/tags/light\n"),
        );
        std::fs::create_dir_all(root.join("repo/src/deep")).unwrap();
        let c = read_checkout(&open_dir(&root), "/repo/src/deep").unwrap();
        assert_eq!(
            c,
            Checkout {
                git_dir: "/repo/.git".into(),
                head: Some(A.into()),
                tag: Some("v1.0.0".into()),
            },
            "the annotated tag beats the lightweight one"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn loose_refs_detached_head_worktree_file_and_loose_annotated_tag() {
        let root = scratch("loose");
        let g = root.join("main/.git");
        write(&g.join("HEAD"), &format!("{B}\n"));
        write(&g.join("refs/tags/rel/v2"), &format!("{T}\n"));
        // A loose annotated tag object pointing at B.
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        let body = format!("object {B}\ntype commit\ntag rel/v2\ntagger x <x@y> 0 +0000\n\nmsg\n");
        z.write_all(format!("tag {}\0{body}", body.len()).as_bytes())
            .unwrap();
        let obj = g.join(format!("objects/{}/{}", &T[..2], &T[2..]));
        std::fs::create_dir_all(obj.parent().unwrap()).unwrap();
        std::fs::write(&obj, z.finish().unwrap()).unwrap();
        let c = read_checkout(&open_dir(&root), "/main").unwrap();
        assert_eq!(
            (c.head.as_deref(), c.tag.as_deref()),
            (Some(B), Some("rel/v2"))
        );
        // A worktree: `.git` file → its own HEAD, refs from the common dir.
        let wt = g.join("worktrees/wt");
        write(&wt.join("HEAD"), "ref: refs/heads/feature\n");
        write(&wt.join("commondir"), "../..\n");
        write(&g.join("refs/heads/feature"), &format!("{A}\n"));
        write(&root.join("wt/.git"), "gitdir: /main/.git/worktrees/wt\n");
        let c = read_checkout(&open_dir(&root), "/wt").unwrap();
        assert_eq!(
            c,
            Checkout {
                git_dir: "/main/.git/worktrees/wt".into(),
                head: Some(A.into()),
                tag: None
            }
        );
        assert_eq!(read_checkout(&open_dir(&root), "/elsewhere"), None);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn paths() {
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
        assert_eq!(join("/a", "b"), "/a/b");
        assert_eq!(join("/", ".git"), "/.git");
        assert_eq!(join("/a", "/x"), "/x");
    }
}
