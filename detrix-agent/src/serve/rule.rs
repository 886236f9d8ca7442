//! One rule: which processes it selects ([`Select`], all keys must match) and how a selected
//! process is presented to the daemon ([`Template`] for the connection name, language,
//! SafeMode, daemon URL, wake policy). Parsing the file and the flags is `config`'s job; this
//! module compiles single values and matches them against [`Process`] facts.

use regex::Regex;

use super::glob::Glob;
use crate::discover::Process;

/// Whether a selected process registers with the daemon by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Sleeping until `POST /detrix/targets/{id}/wake`.
    Manual,
    /// Woken as soon as it is found.
    Auto,
}

impl Wake {
    /// Parses `manual` or `auto`.
    ///
    /// # Errors
    /// Anything else, in a sentence naming both choices.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "manual" => Ok(Self::Manual),
            "auto" => Ok(Self::Auto),
            _ => Err(format!(
                "`{s}` is not a wake policy; use \"manual\" or \"auto\""
            )),
        }
    }
}

/// What to present a target as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LanguageChoice {
    /// From the binary's debug info, as `attach --language auto`.
    Auto,
    Go,
    Rust,
}

impl LanguageChoice {
    /// Parses `auto`, `go` or `rust`.
    ///
    /// # Errors
    /// Anything else.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "go" => Ok(Self::Go),
            "rust" => Ok(Self::Rust),
            _ => Err(format!(
                "`{s}` is not a language; use \"auto\", \"go\" or \"rust\""
            )),
        }
    }
}

/// The select keys, in the order the docs list them.
pub const SELECT_KEYS: [&str; 6] = ["exe", "comm", "cmdline", "cgroup", "container", "user"];

/// Which processes a rule selects: every key given must match.
#[derive(Debug, Clone, Default)]
pub struct Select {
    /// Glob on the executable's path as the process sees it or as the host sees it.
    pub exe: Option<Glob>,
    /// Exact `comm` (the kernel keeps 15 bytes of it).
    pub comm: Option<String>,
    /// Regex searched in the command line, arguments joined by single spaces.
    pub cmdline: Option<Regex>,
    /// Glob on the cgroup path.
    pub cgroup: Option<Glob>,
    /// Prefix of the container id (lower-case hex).
    pub container: Option<String>,
    /// Real uid (names are looked up in `/etc/passwd` when the rules are loaded).
    pub user: Option<u32>,
}

impl Select {
    /// Whether no key is set (such a rule would select every process: refused).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.exe.is_none()
            && self.comm.is_none()
            && self.cmdline.is_none()
            && self.cgroup.is_none()
            && self.container.is_none()
            && self.user.is_none()
    }

    /// Sets one key from its text. `users` maps a user name to its uid.
    ///
    /// # Errors
    /// A sentence saying what is wrong with the value (the caller adds where it was).
    pub fn set(
        &mut self,
        key: &str,
        value: &str,
        users: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<(), String> {
        if value.is_empty() {
            return Err(format!(
                "`{key}` is empty; give a value or leave the key out"
            ));
        }
        let already = match key {
            "exe" => self.exe.is_some(),
            "comm" => self.comm.is_some(),
            "cmdline" => self.cmdline.is_some(),
            "cgroup" => self.cgroup.is_some(),
            "container" => self.container.is_some(),
            "user" => self.user.is_some(),
            _ => {
                return Err(format!(
                    "`{key}` is not a select key; use {}",
                    SELECT_KEYS.join(", ")
                ))
            }
        };
        if already {
            return Err(format!("`{key}` is given twice"));
        }
        match key {
            "exe" => {
                self.exe =
                    Some(Glob::new(value).map_err(|e| format!("`exe` glob `{value}`: {e}"))?);
            }
            "cgroup" => {
                self.cgroup =
                    Some(Glob::new(value).map_err(|e| format!("`cgroup` glob `{value}`: {e}"))?);
            }
            "comm" => {
                if value.len() > 15 {
                    return Err(format!(
                        "`comm` `{value}` is longer than the 15 bytes the kernel keeps; use its first 15 (`{}`) or match `exe` instead",
                        value.chars().take(15).collect::<String>()
                    ));
                }
                self.comm = Some(value.to_owned());
            }
            "cmdline" => {
                let re = Regex::new(value).map_err(|e| {
                    let first = e.to_string();
                    let last = first.lines().last().unwrap_or_default().trim().to_owned();
                    format!("`cmdline` regex `{value}` does not compile ({last})")
                })?;
                self.cmdline = Some(re);
            }
            "container" => {
                let v = value.to_ascii_lowercase();
                if !v.bytes().all(|b| b.is_ascii_hexdigit()) || v.len() > 64 {
                    return Err(format!(
                        "`container` `{value}` is not a container id prefix (up to 64 hex digits)"
                    ));
                }
                self.container = Some(v);
            }
            _ => {
                let uid = match value.parse::<u32>() {
                    Ok(uid) => uid,
                    Err(_) => users(value).ok_or_else(|| {
                        format!("`user` `{value}` is not a uid nor a user in /etc/passwd")
                    })?,
                };
                self.user = Some(uid);
            }
        }
        Ok(())
    }

    /// Whether `p` is selected.
    #[must_use]
    pub fn matches(&self, p: &Process) -> bool {
        self.exe
            .as_ref()
            .is_none_or(|g| g.matches(&p.exe) || g.matches(&p.host_exe))
            && self.comm.as_ref().is_none_or(|c| *c == p.comm)
            && self
                .cmdline
                .as_ref()
                .is_none_or(|re| re.is_match(&p.cmdline.join(" ")))
            && self.cgroup.as_ref().is_none_or(|g| g.matches(&p.cgroup))
            && self.container.as_ref().is_none_or(|pre| {
                p.container
                    .as_ref()
                    .is_some_and(|c| c.starts_with(pre.as_str()))
            })
            && self.user.is_none_or(|u| u == p.uid)
    }
}

/// Placeholders a name template may use.
pub const PLACEHOLDERS: [&str; 7] = [
    "comm",
    "exe",
    "exe_path",
    "container",
    "pid",
    "ns_pid",
    "uid",
];

/// A connection-name template: text with `{placeholder}`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(&'static str),
}

/// The default template: the executable's file name. See `serve::name` for why this, plus
/// the `-N` suffix a second live instance gets, is stable across restarts.
pub const DEFAULT_TEMPLATE: &str = "{exe}";

impl Template {
    /// Compiles `text`.
    ///
    /// # Errors
    /// An unknown placeholder, an unclosed `{`, a stray `}`, or an empty template.
    pub fn new(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err("the name template is empty".to_owned());
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match (rest.find('{'), rest.find('}')) {
                (_, Some(close)) if rest.find('{').is_none_or(|open| close < open) => {
                    return Err(format!(
                        "`}}` at `{}` closes no placeholder",
                        &rest[close..]
                    ))
                }
                (Some(open), _) => {
                    if open > 0 {
                        parts.push(Part::Text(rest[..open].to_owned()));
                    }
                    let after = &rest[open + 1..];
                    let close = after.find('}').ok_or_else(|| {
                        format!("`{{` in `{}` is never closed with `}}`", &rest[open..])
                    })?;
                    let name = &after[..close];
                    let field = PLACEHOLDERS.iter().find(|p| **p == name).ok_or_else(|| {
                        format!(
                            "`{{{name}}}` is not a placeholder; use {}",
                            PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                        )
                    })?;
                    parts.push(Part::Field(field));
                    rest = &after[close + 1..];
                }
                (None, _) => {
                    parts.push(Part::Text(rest.to_owned()));
                    rest = "";
                }
            }
        }
        Ok(Self { parts })
    }

    /// The name for `p`. `{container}` is the 12-digit short id, or `host` outside containers.
    #[must_use]
    pub fn render(&self, p: &Process) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => match *f {
                    "comm" => out.push_str(&p.comm),
                    "exe" => out.push_str(p.exe.rsplit('/').next().unwrap_or(&p.exe)),
                    "exe_path" => out.push_str(&p.exe),
                    "container" => out.push_str(
                        p.container
                            .as_deref()
                            .map_or("host", |c| &c[..c.len().min(12)]),
                    ),
                    "pid" => out.push_str(&p.pid.to_string()),
                    "ns_pid" => out.push_str(&p.ns_pid.to_string()),
                    _ => out.push_str(&p.uid.to_string()),
                },
            }
        }
        out
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Where it was written, for messages: `FILE line N` or `--select #N`.
    pub origin: String,
    pub select: Select,
    pub name: Template,
    pub language: LanguageChoice,
    pub safe_mode: bool,
    /// `None`: the serve-wide daemon URL.
    pub daemon_url: Option<String>,
    /// `None`: the serve-wide wake policy.
    pub wake: Option<Wake>,
    /// `build_commit` / `build_tag` of the rule: they come first, as `--build-commit` /
    /// `--build-tag` do for `attach` (issue #17).
    pub build: crate::buildinfo::Explicit,
}
