//! `serve`'s configuration: the TOML file and the flags, merged into one [`Config`]. Flags add
//! to the file: every `--select` is one more rule after the file's, and `--wake`,
//! `--daemon-url`, `--control-host`, `--control-port` replace the file's top-level values.
//!
//! ```toml
//! daemon_url = "http://127.0.0.1:8090"   # default for every rule
//! wake = "manual"                         # or "auto"
//! control_host = "127.0.0.1"
//! control_port = 0                        # 0: any free port
//!
//! [[rule]]
//! select = { exe = "/srv/**/orders", user = "app" }   # all keys must match
//! name = "{exe}-{container}"              # default "{exe}"; see serve::name
//! language = "auto"                       # or "go", "rust"
//! safe_mode = false
//! daemon_url = "http://10.0.0.5:8090"     # this rule's daemon
//! wake = "auto"                           # this rule's policy
//! build_commit = "4f1c2e9"                # reported as the build commit (issue #17);
//! build_tag = "v1.4.0"                    #   default: found as the Go client finds it
//! ```
//!
//! Every error is one sentence naming the key and where it is: `FILE line N` for the file
//! (the line's own text is quoted when the TOML parser found the fault, as its message may not
//! name the key), `--select #N` for a flag.

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::rule::{LanguageChoice, Rule, Select, Template, Wake, DEFAULT_TEMPLATE, SELECT_KEYS};

/// A bad config file, flag or rule: one sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// What the command line said (each `None`: not given).
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub config: Option<std::path::PathBuf>,
    pub select: Vec<String>,
    pub wake: Option<String>,
    pub daemon_url: Option<String>,
    pub control_host: Option<String>,
    pub control_port: Option<u16>,
    /// Node mode: the node's pods supply the rules, so the file and flags may give none.
    pub kubernetes: bool,
}

/// The merged configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub rules: Vec<Rule>,
    pub wake: Wake,
    pub daemon_url: String,
    pub control_host: String,
    pub control_port: u16,
}

/// The daemon URL when neither the file nor a flag gives one (as `attach`).
pub const DEFAULT_DAEMON_URL: &str = "http://127.0.0.1:8090";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    daemon_url: Option<Spanned<String>>,
    wake: Option<Spanned<String>>,
    control_host: Option<String>,
    control_port: Option<u16>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    select: Spanned<toml::Table>,
    name: Option<Spanned<String>>,
    language: Option<Spanned<String>>,
    #[serde(default)]
    safe_mode: bool,
    daemon_url: Option<Spanned<String>>,
    wake: Option<Spanned<String>>,
    build_commit: Option<String>,
    build_tag: Option<String>,
}

/// 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn check_url(key: &str, url: &str) -> Result<(), String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(format!(
            "`{key}` `{url}` is not an http:// URL (e.g. {DEFAULT_DAEMON_URL})"
        ))
    }
}

/// Parses one `--select` RULE: `key=value[,key=value…]`.
///
/// # Errors
/// A sentence naming the flag, the key and the fault.
pub fn parse_select_flag(
    n: usize,
    text: &str,
    users: &dyn Fn(&str) -> Option<u32>,
) -> Result<Select, ConfigError> {
    let at = format!("--select #{n} `{text}`");
    let mut sel = Select::default();
    for pair in text.split(',') {
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            ConfigError(format!(
                "{at}: `{pair}` is not key=value (keys: {})",
                SELECT_KEYS.join(", ")
            ))
        })?;
        sel.set(key.trim(), value, users)
            .map_err(|e| ConfigError(format!("{at}: {e}")))?;
    }
    Ok(sel)
}

/// Parses the config file's text (`file` names it in messages).
///
/// # Errors
/// A sentence naming the file, line and key.
fn parse_file(
    file: &str,
    text: &str,
    users: &dyn Fn(&str) -> Option<u32>,
) -> Result<(RawFileValues, Vec<Rule>), ConfigError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let msg = e
            .message()
            .trim_end()
            .trim_end_matches('.')
            .replace('\n', " ");
        match e.span() {
            Some(span) => {
                let line = line_of(text, span.start);
                let src = text.lines().nth(line - 1).unwrap_or_default().trim();
                ConfigError(format!("{file} line {line} (`{src}`): {msg}"))
            }
            None => ConfigError(format!("{file}: {msg}")),
        }
    })?;
    let at = |span: std::ops::Range<usize>| format!("{file} line {}", line_of(text, span.start));
    let wake = raw
        .wake
        .map(|w| {
            Wake::parse(w.get_ref())
                .map_err(|e| ConfigError(format!("{}: `wake` {e}", at(w.span()))))
        })
        .transpose()?;
    if let Some(u) = &raw.daemon_url {
        check_url("daemon_url", u.get_ref())
            .map_err(|e| ConfigError(format!("{}: {e}", at(u.span()))))?;
    }
    let mut rules = Vec::new();
    for r in raw.rule {
        let rule_at = at(r.span());
        let r = r.into_inner();
        let mut select = Select::default();
        for (key, value) in r.select.get_ref() {
            let value = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) if key == "user" => i.to_string(),
                other => {
                    return Err(ConfigError(format!(
                        "{}: select key `{key}` must be a string (got {})",
                        at(r.select.span()),
                        other.type_str()
                    )))
                }
            };
            select
                .set(key, &value, users)
                .map_err(|e| ConfigError(format!("{}: select {e}", at(r.select.span()))))?;
        }
        if select.is_empty() {
            return Err(ConfigError(format!(
                "{}: `select` is empty; give at least one of {}",
                at(r.select.span()),
                SELECT_KEYS.join(", ")
            )));
        }
        let name = match &r.name {
            Some(n) => Template::new(n.get_ref())
                .map_err(|e| ConfigError(format!("{}: `name`: {e}", at(n.span()))))?,
            None => Template::new(DEFAULT_TEMPLATE).map_err(ConfigError)?,
        };
        let language = match &r.language {
            Some(l) => LanguageChoice::parse(l.get_ref())
                .map_err(|e| ConfigError(format!("{}: `language` {e}", at(l.span()))))?,
            None => LanguageChoice::Auto,
        };
        if let Some(u) = &r.daemon_url {
            check_url("daemon_url", u.get_ref())
                .map_err(|e| ConfigError(format!("{}: {e}", at(u.span()))))?;
        }
        let wake = r
            .wake
            .as_ref()
            .map(|w| {
                Wake::parse(w.get_ref())
                    .map_err(|e| ConfigError(format!("{}: `wake` {e}", at(w.span()))))
            })
            .transpose()?;
        rules.push(Rule {
            origin: rule_at,
            select,
            name,
            language,
            safe_mode: r.safe_mode,
            daemon_url: r.daemon_url.map(Spanned::into_inner),
            wake,
            build: crate::buildinfo::Explicit {
                commit: r.build_commit.filter(|c| !c.is_empty()),
                tag: r.build_tag.filter(|t| !t.is_empty()),
            },
        });
    }
    Ok((
        RawFileValues {
            daemon_url: raw.daemon_url.map(Spanned::into_inner),
            wake,
            control_host: raw.control_host,
            control_port: raw.control_port,
        },
        rules,
    ))
}

#[derive(Default)]
struct RawFileValues {
    daemon_url: Option<String>,
    wake: Option<Wake>,
    control_host: Option<String>,
    control_port: Option<u16>,
}

/// Merges the file (its text given, if any) and the flags.
///
/// # Errors
/// A bad file, rule or flag, or no rule at all (outside node mode).
pub fn merge(
    flags: &Flags,
    file: Option<(&str, &str)>,
    users: &dyn Fn(&str) -> Option<u32>,
) -> Result<Config, ConfigError> {
    let (values, mut rules) = match file {
        Some((name, text)) => parse_file(name, text, users)?,
        None => (RawFileValues::default(), Vec::new()),
    };
    for (i, text) in flags.select.iter().enumerate() {
        let select = parse_select_flag(i + 1, text, users)?;
        rules.push(Rule {
            origin: format!("--select #{}", i + 1),
            select,
            name: Template::new(DEFAULT_TEMPLATE).map_err(ConfigError)?,
            language: LanguageChoice::Auto,
            safe_mode: false,
            daemon_url: None,
            wake: None,
            build: crate::buildinfo::Explicit::default(),
        });
    }
    if rules.is_empty() && !flags.kubernetes {
        return Err(ConfigError(
            "no rule selects any process; pass --select exe=/path/glob or a --config file with a [[rule]]"
                .to_owned(),
        ));
    }
    let wake = match &flags.wake {
        Some(w) => Wake::parse(w).map_err(|e| ConfigError(format!("--wake {e}")))?,
        None => values.wake.unwrap_or(Wake::Manual),
    };
    let daemon_url = match &flags.daemon_url {
        Some(u) => {
            check_url("--daemon-url", u).map_err(ConfigError)?;
            u.clone()
        }
        None => values
            .daemon_url
            .unwrap_or_else(|| DEFAULT_DAEMON_URL.to_owned()),
    };
    Ok(Config {
        rules,
        wake,
        daemon_url,
        control_host: flags
            .control_host
            .clone()
            .or(values.control_host)
            .unwrap_or_else(|| "127.0.0.1".to_owned()),
        control_port: flags.control_port.or(values.control_port).unwrap_or(0),
    })
}

/// The uid of `name` in passwd-format `text`.
#[must_use]
pub fn uid_in_passwd(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// Reads the file named by `--config` (if any) and merges it with the flags, looking user
/// names up in `/etc/passwd`.
///
/// # Errors
/// An unreadable file, or as [`merge`].
pub fn load(flags: &Flags) -> Result<Config, ConfigError> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let users = |n: &str| uid_in_passwd(&passwd, n);
    match &flags.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!(
                    "cannot read the config file {}: {e}",
                    path.display()
                ))
            })?;
            let name = Path::new(path).display().to_string();
            merge(flags, Some((&name, &text)), &users)
        }
        None => merge(flags, None, &users),
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
