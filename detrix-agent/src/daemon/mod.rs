//! Being a Detrix client for one target: registration with the daemon ([`client`]), the
//! wake/sleep state machine ([`lifecycle`], pure) and the actor that runs it ([`actor`]), the
//! one owner of the engine ([`registry`]), the fan-out of hits to DAP sessions ([`hub`]), the
//! sessions' I/O shell around the pure DAP facade ([`session`]), the debugger worker
//! ([`debugger`]) and the DAP recording ([`recorder`]).
//!
//! Data flows one way: hits go engine → registry → hub → session → facade → daemon; requests
//! go daemon → session → facade, whose effects the session performs through the registry and
//! the debugger worker. Nothing here shares the engine behind a lock.

pub mod actor;
pub mod client;
pub mod debugger;
pub mod hub;
pub mod lifecycle;
pub mod recorder;
pub mod registry;
pub mod session;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use actor::{Agent, AgentError, AgentHandle, Command, ExitReason, Info, View};
pub use client::{DaemonClient, DaemonError, Registration};
pub use lifecycle::{Effect, Input, Lifecycle, Phase, SleepReply, WakeError, WakeReply};
pub use recorder::DapRecorder;

/// Everything `detrix-agent attach` was told, with the Go client's defaults already applied.
#[derive(Debug, Clone)]
pub struct AttachConfig {
    pub pid: u32,
    /// Connection name (default `detrix-client-<pid>`, as the Go client).
    pub name: String,
    pub daemon_url: String,
    pub control_host: String,
    pub control_port: u16,
    /// DAP port; 0 = ephemeral.
    pub debug_port: u16,
    pub safe_mode: bool,
    /// `go` or `rust`: what the daemon is told (contract.md §11).
    pub language: &'static str,
    /// Identity (default: the target's working directory, what an embedded client would send).
    pub workspace_root: String,
    /// The registered `host` and the DAP listener's address: an IP literal (contract §0 rule 3).
    pub advertise_host: String,
    pub hostname: String,
    pub token: Option<String>,
    /// Daemon URLs a wake body may name besides `daemon_url` (`--allow-daemon-url`).
    pub allow_daemon_urls: Vec<String>,
    /// Non-loopback addresses that may connect to the DAP port (`--dap-allow-peer`); empty:
    /// the DAP listener must be on loopback.
    pub dap_allow_peers: Vec<std::net::IpAddr>,
    pub health_timeout: Duration,
    pub register_timeout: Duration,
    pub unregister_timeout: Duration,
    /// The target's build identity (`buildinfo::for_process`).
    pub build: crate::buildinfo::BuildInfo,
    /// Fraction of one CPU a probe may cost (BPF time + trap estimate) before the breaker
    /// switches it off; 0 = no breaker.
    pub cpu_budget: f64,
}

/// The token sent to the daemon and required from remote control-plane callers, in the order
/// of contract.md §2.4: `DETRIX_TOKEN`, then `auth-token`, then `mcp-token`, each in
/// `$HOME/detrix/` and then `$DETRIX_HOME/`.
#[must_use]
pub fn discover_token(
    env_token: Option<&str>,
    home: Option<&Path>,
    detrix_home: Option<&Path>,
) -> Option<String> {
    if let Some(t) = env_token.map(str::trim).filter(|t| !t.is_empty()) {
        return Some(t.to_owned());
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(h) = home {
        dirs.push(h.join("detrix"));
    }
    if let Some(d) = detrix_home {
        dirs.push(d.to_path_buf());
    }
    for file in ["auth-token", "mcp-token"] {
        for dir in &dirs {
            let path = dir.join(file);
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            warn_if_readable_by_others(&path);
            let t = text.trim();
            if !t.is_empty() {
                return Some(t.to_owned());
            }
        }
    }
    None
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:04o}"), "token file is readable by group or others; chmod 600 it");
        }
    }
}

/// This machine's host name (identity field `hostname`).
#[must_use]
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The target's working directory: the `workspaceRoot` its own embedded client would send.
#[must_use]
pub fn target_cwd(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/cwd"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "/unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_order_is_env_then_auth_token_then_mcp_token() {
        let dir = std::env::temp_dir().join(format!("detrix-token-test-{}", std::process::id()));
        let home = dir.join("home");
        let dh = dir.join("dh");
        std::fs::create_dir_all(home.join("detrix")).unwrap();
        std::fs::create_dir_all(&dh).unwrap();
        assert_eq!(discover_token(None, Some(&home), Some(&dh)), None);
        std::fs::write(dh.join("mcp-token"), "mcp-dh\n").unwrap();
        assert_eq!(
            discover_token(None, Some(&home), Some(&dh)).as_deref(),
            Some("mcp-dh")
        );
        std::fs::write(home.join("detrix/mcp-token"), "mcp-home").unwrap();
        assert_eq!(
            discover_token(None, Some(&home), Some(&dh)).as_deref(),
            Some("mcp-home")
        );
        std::fs::write(dh.join("auth-token"), "auth-dh").unwrap();
        assert_eq!(
            discover_token(None, Some(&home), Some(&dh)).as_deref(),
            Some("auth-dh")
        );
        std::fs::write(home.join("detrix/auth-token"), "auth-home").unwrap();
        assert_eq!(
            discover_token(None, Some(&home), Some(&dh)).as_deref(),
            Some("auth-home")
        );
        assert_eq!(
            discover_token(Some(" env "), Some(&home), Some(&dh)).as_deref(),
            Some("env")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
