//! Which build a target is: its commit and tag, found from the outside in the Detrix Go
//! client's order, plus the executable's ELF build-id. Sent to the daemon as `buildCommit` /
//! `buildTag` (contract.md §3.2, §13) and shown by `/detrix/info`.
//!
//! Order, first non-empty value wins, separately for the commit and the tag:
//! 1. explicit `--build-commit` / `--build-tag` (the client's `Config.BuildCommit/BuildTag`);
//! 2. the target's environment ([`environ`]): `DETRIX_BUILD_COMMIT`, then `GIT_COMMIT`,
//!    `CI_COMMIT_SHA`, `GITHUB_SHA`; `DETRIX_BUILD_TAG`, then `GIT_TAG`, `CI_COMMIT_TAG`,
//!    `GITHUB_REF_NAME` (skipped when `GITHUB_REF_TYPE=branch`);
//! 3. what the binary carries ([`binary`]): Go's `vcs.revision`, and the main module's version
//!    when it is a release (the client's link-time values);
//! 4. the git checkout of the target's working directory ([`git`]): `HEAD`, and a tag pointing
//!    at it — the tag only when that `HEAD` is the commit chosen above, so a commit and a tag
//!    never describe two different builds.
//!
//! Shape: [`resolve`] is a pure function of the four sources (tested case by case);
//! [`for_process`] gathers them for a live process. Sources that cannot be read count as
//! empty and are logged at debug level; nothing here can fail the attach.

pub mod binary;
pub mod environ;
pub mod git;
pub mod target_fs;

use std::collections::HashMap;

/// Where a value came from (`build_source` in `/detrix/info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--build-commit` / `--build-tag`.
    Flag,
    /// The target's environment variable of that name.
    Env(&'static str),
    /// Go's embedded build information.
    GoBuildInfo,
    /// The git checkout of the target's working directory.
    Git,
}

impl Source {
    /// The wire name: `flag`, `env:GIT_COMMIT`, `go-buildinfo`, `git`.
    #[must_use]
    pub fn name(self) -> String {
        match self {
            Source::Flag => "flag".into(),
            Source::Env(v) => format!("env:{v}"),
            Source::GoBuildInfo => "go-buildinfo".into(),
            Source::Git => "git".into(),
        }
    }
}

/// Values given on the command line (or per rule in `serve`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Explicit {
    pub commit: Option<String>,
    pub tag: Option<String>,
}

/// Everything the four sources offered, before the order is applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    pub explicit: Explicit,
    pub env: HashMap<String, String>,
    pub binary: binary::BinaryFacts,
    pub checkout: Option<git::Checkout>,
}

/// A target's build identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildInfo {
    pub commit: Option<String>,
    pub commit_source: Option<Source>,
    pub tag: Option<String>,
    pub tag_source: Option<Source>,
    /// Go's `vcs.modified`, when the commit came from the binary.
    pub modified: Option<bool>,
    /// The executable's GNU build-id, hex.
    pub build_id: Option<String>,
    /// The Go toolchain that built the executable (`go1.23.5`), for Go targets.
    pub go_version: Option<String>,
}

impl BuildInfo {
    /// `build_source` of `/detrix/info`: where the commit came from, or else the tag.
    #[must_use]
    pub fn source(&self) -> Option<String> {
        self.commit_source.or(self.tag_source).map(Source::name)
    }
}

fn nonempty(v: Option<&String>) -> Option<String> {
    v.map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Applies the order of the module doc.
#[must_use]
pub fn resolve(s: &Sources) -> BuildInfo {
    let go = s.binary.go.as_ref();
    let head = s.checkout.as_ref().and_then(|c| c.head.clone());
    let (commit, commit_source) = if let Some(c) = nonempty(s.explicit.commit.as_ref()) {
        (Some(c), Some(Source::Flag))
    } else if let Some((var, c)) = environ::first(&s.env, &environ::COMMIT_VARS) {
        (Some(c), Some(Source::Env(var)))
    } else if let Some(c) = go.and_then(|g| nonempty(g.revision.as_ref())) {
        (Some(c), Some(Source::GoBuildInfo))
    } else if let Some(c) = head.clone() {
        (Some(c), Some(Source::Git))
    } else {
        (None, None)
    };
    let git_tag = s
        .checkout
        .as_ref()
        .filter(|_| head.is_some() && head == commit)
        .and_then(|c| c.tag.clone());
    let (tag, tag_source) = if let Some(t) = nonempty(s.explicit.tag.as_ref()) {
        (Some(t), Some(Source::Flag))
    } else if let Some((var, t)) = environ::first(&s.env, &environ::TAG_VARS) {
        (Some(t), Some(Source::Env(var)))
    } else if let Some(t) = go.and_then(|g| g.module_version.clone()) {
        (Some(t), Some(Source::GoBuildInfo))
    } else if let Some(t) = git_tag {
        (Some(t), Some(Source::Git))
    } else {
        (None, None)
    };
    let modified = (commit_source == Some(Source::GoBuildInfo))
        .then(|| go.and_then(|g| g.modified))
        .flatten();
    BuildInfo {
        commit,
        commit_source,
        tag,
        tag_source,
        modified,
        build_id: s.binary.build_id.clone(),
        go_version: go.map(|g| g.go_version.clone()).filter(|v| !v.is_empty()),
    }
}

/// Gathers the sources for process `pid` and resolves them. Root reads `/proc/PID/environ`
/// and `/proc/PID/exe`; the git checkout is read with the target's own credentials through its
/// root ([`target_fs`]).
#[must_use]
pub fn for_process(pid: u32, explicit: &Explicit) -> BuildInfo {
    resolve(&gather(pid, explicit))
}

/// The four sources of process `pid`.
#[must_use]
pub fn gather(pid: u32, explicit: &Explicit) -> Sources {
    let env = environ::read(pid).unwrap_or_else(|e| {
        tracing::debug!(pid, error = %e, "cannot read the target's environment");
        HashMap::new()
    });
    let binary = read_binary(pid);
    let checkout = read_git(pid);
    Sources {
        explicit: explicit.clone(),
        env,
        binary,
        checkout,
    }
}

fn read_binary(pid: u32) -> binary::BinaryFacts {
    let path = format!("/proc/{pid}/exe");
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(pid, error = %e, "cannot open the target's executable");
            return binary::BinaryFacts::default();
        }
    };
    // Mapped only when only root can truncate it under us (SIGBUS), else copied.
    match crate::debuginfo::map_file(&file) {
        Ok(map) => binary::read(&map),
        Err(e) => {
            tracing::debug!(pid, error = %e, "cannot map the target's executable");
            binary::BinaryFacts::default()
        }
    }
}

fn read_git(pid: u32) -> Option<git::Checkout> {
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    let cwd = cwd.to_str()?.to_owned();
    if cwd.ends_with(" (deleted)") {
        return None;
    }
    let root = target_fs::open_root(pid).ok()?;
    let creds = target_fs::creds(pid).ok()?;
    target_fs::run_as(&creds, move || git::read_checkout(&root, &cwd))
        .map_err(|e| tracing::debug!(pid, error = %e, "cannot read the target's git checkout"))
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REV: &str = "0123456789abcdef0123456789abcdef01234567";
    const HEAD: &str = "89abcdef0123456789abcdef0123456789abcdef";

    fn all_sources() -> Sources {
        let env: HashMap<String, String> = [
            ("DETRIX_BUILD_COMMIT", "detrix-commit"),
            ("GIT_COMMIT", "git-commit"),
            ("CI_COMMIT_SHA", "gitlab-commit"),
            ("GITHUB_SHA", "github-commit"),
            ("DETRIX_BUILD_TAG", "detrix-tag"),
            ("GIT_TAG", "git-tag"),
            ("CI_COMMIT_TAG", "gitlab-tag"),
            ("GITHUB_REF_NAME", "github-tag"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Sources {
            explicit: Explicit {
                commit: Some("flag-commit".into()),
                tag: Some("flag-tag".into()),
            },
            env,
            binary: binary::BinaryFacts {
                build_id: Some("abcd".into()),
                go: Some(binary::GoBuild {
                    go_version: "go1.23.5".into(),
                    module: Some("example.com/app".into()),
                    module_version: Some("v1.2.3".into()),
                    revision: Some(REV.into()),
                    modified: Some(true),
                }),
            },
            checkout: Some(git::Checkout {
                git_dir: "/src/.git".into(),
                head: Some(HEAD.into()),
                tag: Some("v9.9.9".into()),
            }),
        }
    }

    type Row = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );

    fn pair(b: &BuildInfo) -> Row {
        (
            b.commit.clone(),
            b.commit_source.map(Source::name),
            b.tag.clone(),
            b.tag_source.map(Source::name),
        )
    }

    fn row(c: Option<&str>, cs: Option<&str>, t: Option<&str>, ts: Option<&str>) -> Row {
        let o = |v: Option<&str>| v.map(str::to_owned);
        (o(c), o(cs), o(t), o(ts))
    }

    /// Removes sources one by one, from the strongest: each step must fall to the next source
    /// of the client's order.
    #[test]
    fn precedence_case_by_case() {
        let mut s = all_sources();
        let step = |s: &Sources| pair(&resolve(s));
        assert_eq!(
            step(&s),
            row(
                Some("flag-commit"),
                Some("flag"),
                Some("flag-tag"),
                Some("flag")
            )
        );
        s.explicit = Explicit {
            commit: Some("  ".into()),
            tag: Some(String::new()),
        };
        assert_eq!(
            step(&s),
            row(
                Some("detrix-commit"),
                Some("env:DETRIX_BUILD_COMMIT"),
                Some("detrix-tag"),
                Some("env:DETRIX_BUILD_TAG")
            ),
            "an empty flag counts as not given"
        );
        for (c, t, next_c, next_t) in [
            (
                "DETRIX_BUILD_COMMIT",
                "DETRIX_BUILD_TAG",
                "GIT_COMMIT",
                "GIT_TAG",
            ),
            ("GIT_COMMIT", "GIT_TAG", "CI_COMMIT_SHA", "CI_COMMIT_TAG"),
            (
                "CI_COMMIT_SHA",
                "CI_COMMIT_TAG",
                "GITHUB_SHA",
                "GITHUB_REF_NAME",
            ),
        ] {
            s.env.remove(c);
            s.env.remove(t);
            let b = resolve(&s);
            assert_eq!(
                (b.commit_source, b.tag_source),
                (Some(Source::Env(next_c)), Some(Source::Env(next_t)))
            );
            assert_eq!(b.commit.as_deref(), s.env.get(next_c).map(String::as_str));
            assert_eq!(b.tag.as_deref(), s.env.get(next_t).map(String::as_str));
        }
        s.env.insert("GITHUB_REF_TYPE".into(), "branch".into());
        assert_eq!(
            step(&s),
            row(
                Some("github-commit"),
                Some("env:GITHUB_SHA"),
                Some("v1.2.3"),
                Some("go-buildinfo")
            ),
            "a branch name is not a tag"
        );
        s.env.clear();
        let b = resolve(&s);
        assert_eq!(
            pair(&b),
            row(
                Some(REV),
                Some("go-buildinfo"),
                Some("v1.2.3"),
                Some("go-buildinfo")
            )
        );
        assert_eq!(
            (b.modified, b.build_id.as_deref()),
            (Some(true), Some("abcd"))
        );
        assert_eq!(b.source().as_deref(), Some("go-buildinfo"));
        // The checkout's tag describes its HEAD, not the binary's revision: not used.
        s.binary.go.as_mut().unwrap().module_version = None;
        assert_eq!(step(&s), row(Some(REV), Some("go-buildinfo"), None, None));
        s.binary.go = None;
        let b = resolve(&s);
        assert_eq!(
            pair(&b),
            row(Some(HEAD), Some("git"), Some("v9.9.9"), Some("git"))
        );
        assert_eq!(
            b.modified, None,
            "vcs.modified only goes with the binary's commit"
        );
        s.checkout = None;
        assert_eq!(step(&s), row(None, None, None, None));
        assert_eq!(resolve(&s).source(), None);
    }

    #[test]
    fn env_commit_with_a_git_tag_of_another_commit_keeps_the_tag_out() {
        let mut s = all_sources();
        s.explicit = Explicit::default();
        s.binary.go = None;
        s.env = [("GIT_COMMIT".to_owned(), HEAD.to_owned())]
            .into_iter()
            .collect();
        assert_eq!(
            pair(&resolve(&s)),
            row(
                Some(HEAD),
                Some("env:GIT_COMMIT"),
                Some("v9.9.9"),
                Some("git")
            ),
            "the environment names the checkout's HEAD: its tag fits"
        );
        s.env = [("GIT_COMMIT".to_owned(), REV.to_owned())]
            .into_iter()
            .collect();
        assert_eq!(resolve(&s).tag, None);
    }
}
