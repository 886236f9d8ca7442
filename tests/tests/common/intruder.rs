//! The intruder of the trust-boundary tests (issue #12): a local non-root user, `nobody`, who
//! reaches the agent the way any shell user could — `setpriv` to drop to nobody, then bash's
//! `/dev/tcp` — so a test asserts what such a user gets, never what a root client gets.

use std::io::Read as _;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::json_body;

/// Runs `script` under bash as `nobody:nogroup` with no supplementary groups; returns (exit
/// code, stdout bytes, stderr). The script's first stderr line is its uid, checked here, so a
/// test can never pass because the intruder was accidentally root.
pub fn as_nobody(script: &str, args: &[&str]) -> (i32, Vec<u8>, String) {
    let mut child = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--",
            "bash",
            "-c",
        ])
        .arg(format!("echo \"uid $(id -u)\" >&2\n{script}"))
        .arg("intruder")
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run setpriv (util-linux) to become nobody");
    let mut out = Vec::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .expect("the intruder's stdout")
        .read_to_end(&mut out)
        .expect("read the intruder's stdout");
    child
        .stderr
        .take()
        .expect("the intruder's stderr")
        .read_to_string(&mut err)
        .expect("read the intruder's stderr");
    let code = child
        .wait()
        .expect("wait for the intruder")
        .code()
        .unwrap_or(-1);
    assert!(
        err.starts_with("uid 65534\n"),
        "the intruder must run as nobody: {err}"
    );
    (code, out, err)
}

/// As `nobody`: connect to 127.0.0.1:$1, send the DAP frames $2…, print every byte received
/// within 4 s (or until the agent closes the connection).
pub const DAP_INTRUDER: &str = r#"
trap '' PIPE
port=$1; shift
exec 3<>/dev/tcp/127.0.0.1/$port || { echo "connect failed" >&2; exit 2; }
for m in "$@"; do printf '%s' "$m" >&3 2>/dev/null; done
timeout 4 cat <&3
exit 0
"#;

/// As `nobody`: one HTTP/1.1 request ($1 method, $2 port, $3 path, $4 body, $5 extra header
/// line or empty); prints the raw response.
pub const HTTP_INTRUDER: &str = r#"
trap '' PIPE
exec 3<>/dev/tcp/127.0.0.1/$2 || { echo "connect failed" >&2; exit 2; }
extra=""; [ -n "$5" ] && extra="$5"$'\r\n'
printf '%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s' "$1" "$3" "$extra" "${#4}" "$4" >&3
timeout 5 cat <&3
"#;

/// (status, JSON body) of a raw HTTP response.
pub fn parse_http(raw: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {head:?}"));
    (status, json_body(body))
}
