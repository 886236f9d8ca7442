//! Issue 17: what the Go client reports without being asked, reported by the agent for a
//! target with no client in it — the build commit and tag (`/detrix/info`, the registration's
//! `buildCommit` / `buildTag`) and `/detrix/files/read`, read with the target's permissions.
//!
//! Build identity: a Go program built inside a fresh git checkout (so Go embeds
//! `vcs.revision`), then the same program started with `GIT_COMMIT` / `GIT_TAG`, then with
//! `--build-commit` / `--build-tag`: each stronger source wins, values compared exactly with
//! what `git rev-parse` says. files/read: a C fixture running as `nobody` in a scratch
//! workspace; its files, `..`, links out, a root-only file, a huge file.

mod common;

use std::net::UdpSocket;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use common::{http, json_body, try_http, AttachedAgent, RestStub};
use detrix_e2e::{build_c_fixture, fixtures_out_dir, require_root, Build, Fixture};
use serde_json::{json, Value};

/// The control plane's answer to a caller with no trusted uid and no valid token (issue #12).
const UNAUTHORIZED: &str =
    "unauthorized: only root, the agent's user and the daemon's user may call without a token; send Authorization: Bearer <token>";

const NOBODY: u32 = 65534;

fn scratch(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "detrix-buildmeta-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("preparing the scratch files");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))
        .expect("preparing the scratch files");
    d
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn git(dir: &Path, args: &[&str]) -> String {
    run(Command::new("git")
        .args([
            "-c",
            "user.name=detrix",
            "-c",
            "user.email=detrix@example.invalid",
        ])
        .args(["-c", "init.defaultBranch=main", "-c", "tag.gpgSign=false"])
        .args(["-c", "commit.gpgSign=false"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir))
}

const GO_MAIN: &str = r#"package main

import (
	"fmt"
	"os"
	"time"
)

//go:noinline
func tick(n int) int { return n + 1 }

func main() {
	fmt.Printf("ready pid=%d\n", os.Getpid())
	n := 0
	for {
		n = tick(n)
		time.Sleep(50 * time.Millisecond)
	}
}
"#;

/// Go 1.23 where installed (toolchain.md), else the default `go`: both embed `vcs.revision`
/// and leave the main module's version `(devel)`.
fn go() -> &'static str {
    ["/usr/lib/go-1.23/bin/go", "/usr/bin/go"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("go")
}

/// A Go module committed to a fresh git repository with an annotated tag on HEAD, built there:
/// (checkout, binary, HEAD's commit). Built once per test binary.
fn go_checkout() -> &'static (PathBuf, PathBuf, String) {
    static BUILT: OnceLock<(PathBuf, PathBuf, String)> = OnceLock::new();
    BUILT.get_or_init(|| {
        // Under target/fixtures with a fixed name, rebuilt from nothing each run (no leftovers
        // pile up); the Go build cache next to it is reused.
        let out = fixtures_out_dir();
        let dir = out.join("buildmeta-go");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("preparing the scratch files");
        std::fs::write(
            dir.join("go.mod"),
            "module example.com/buildmeta\n\ngo 1.19\n",
        )
        .expect("preparing the scratch files");
        std::fs::write(dir.join("main.go"), GO_MAIN).expect("preparing the scratch files");
        std::fs::write(dir.join(".gitignore"), "/app\n").expect("preparing the scratch files");
        git(&dir, &["init", "-q"]);
        git(&dir, &["add", "."]);
        git(&dir, &["commit", "-q", "-m", "fixture"]);
        git(&dir, &["tag", "-a", "-m", "release", "v1.4.0"]);
        let head = git(&dir, &["rev-parse", "HEAD"]);
        run(Command::new(go())
            .args([
                "build",
                "-buildvcs=true",
                "-gcflags=all=-N -l",
                "-o",
                "app",
                ".",
            ])
            .current_dir(&dir)
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "")
            .env("GOCACHE", out.join("gocache"))
            .env("GOPATH", out.join("buildmeta-gohome/go"))
            // Go 1.23 writes $HOME/.config/go: kept out of the checkout, or it would count as
            // modified.
            .env("HOME", out.join("buildmeta-gohome")));
        let bin = dir.join("app");
        (dir, bin, head)
    })
}

/// Starts the Go fixture in `cwd` with exactly `env` (plus PATH).
fn go_fixture(cwd: &Path, env: &[(&str, &str)]) -> Fixture {
    let (_, bin, _) = go_checkout();
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(env.iter().copied())
        .current_dir(cwd);
    Fixture::spawn(cmd)
}

fn info(agent: &AttachedAgent) -> Value {
    let (s, i) = agent.get("/detrix/info");
    assert_eq!(s, 200, "{i}");
    i
}

fn build_fields(i: &Value) -> Value {
    json!({
        "build_commit": i["build_commit"], "build_tag": i["build_tag"],
        "build_source": i["build_source"], "build_tag_source": i["build_tag_source"],
        "build_modified": i["build_modified"],
    })
}

#[test]
fn go_binary_in_its_checkout_reports_the_embedded_revision_and_the_tag_at_head() {
    require_root();
    let (dir, bin, head) = go_checkout();
    assert_eq!(head.len(), 40, "{head}");
    // What Go itself says it embedded: the same commit.
    let go_m = run(Command::new(go())
        .args(["version", "-m"])
        .arg(bin)
        .env("GOTOOLCHAIN", "local"));
    assert!(go_m.contains(&format!("vcs.revision={head}")), "{go_m}");
    let fixture = go_fixture(dir, &[]);
    let stub = RestStub::start("shared/go-delve.jsonl", "shared/rust-stub.jsonl");
    let agent = AttachedAgent::start(fixture.pid(), &["--daemon-url", &stub.url], &[]);
    let i = info(&agent);
    assert_eq!(
        build_fields(&i),
        json!({"build_commit": head, "build_tag": "v1.4.0", "build_source": "go-buildinfo",
               "build_tag_source": "git", "build_modified": false}),
        "{i}"
    );
    assert_eq!(
        i["build_id"],
        Value::Null,
        "Go links no GNU build-id without -B: {i}"
    );
    let go_version = run(Command::new(go())
        .args(["env", "GOVERSION"])
        .env("GOTOOLCHAIN", "local"));
    assert_eq!(i["go_version"], json!(go_version), "{i}");
    assert_eq!(i["workspace_root"], json!(dir.to_str().unwrap()));
    // Registration carries the same values.
    let (s, w) = agent.post("/detrix/wake", None);
    assert_eq!((s, w["status"].clone()), (200, json!("awake")), "{w}");
    let reg = stub.lock().registrations[0].clone();
    assert_eq!(
        (
            reg["buildCommit"].clone(),
            reg["buildTag"].clone(),
            reg["language"].clone()
        ),
        (json!(head), json!("v1.4.0"), json!("go")),
        "{reg}"
    );
}

#[test]
fn go_binary_elsewhere_reports_the_revision_without_the_checkouts_tag() {
    require_root();
    let (_, _, head) = go_checkout();
    let elsewhere = scratch("nogit");
    let fixture = go_fixture(&elsewhere, &[]);
    let agent = AttachedAgent::start(fixture.pid(), &[], &[]);
    assert_eq!(
        build_fields(&info(&agent)),
        json!({"build_commit": head, "build_tag": null, "build_source": "go-buildinfo",
               "build_tag_source": null, "build_modified": false})
    );
    let _ = std::fs::remove_dir_all(&elsewhere);
}

#[test]
fn the_targets_environment_beats_the_binary_and_flags_beat_both() {
    require_root();
    let (dir, _, _) = go_checkout();
    let env_commit = "feedfacefeedfacefeedfacefeedfacefeedface";
    let fixture = go_fixture(
        dir,
        &[
            ("GIT_COMMIT", env_commit),
            ("GIT_TAG", "v7.7.7"),
            ("GITHUB_SHA", "github-sha-loses"),
            ("GITHUB_REF_NAME", "github-ref-loses"),
        ],
    );
    let agent = AttachedAgent::start(fixture.pid(), &[], &[]);
    assert_eq!(
        build_fields(&info(&agent)),
        json!({"build_commit": env_commit, "build_tag": "v7.7.7", "build_source": "env:GIT_COMMIT",
               "build_tag_source": "env:GIT_TAG", "build_modified": null})
    );
    drop(agent);
    let fixture2 = go_fixture(
        dir,
        &[
            ("DETRIX_BUILD_COMMIT", "detrix-commit"),
            ("GIT_COMMIT", env_commit),
        ],
    );
    let agent = AttachedAgent::start(fixture2.pid(), &["--build-tag", "flag-tag"], &[]);
    assert_eq!(
        build_fields(&info(&agent)),
        json!({"build_commit": "detrix-commit", "build_tag": "flag-tag",
               "build_source": "env:DETRIX_BUILD_COMMIT", "build_tag_source": "flag",
               "build_modified": null}),
        "DETRIX_BUILD_COMMIT before GIT_COMMIT; a flag before everything"
    );
    drop(agent);
    let stub = RestStub::start("shared/go-delve.jsonl", "shared/rust-stub.jsonl");
    let agent = AttachedAgent::start(
        fixture.pid(),
        &[
            "--daemon-url",
            &stub.url,
            "--build-commit",
            "abc123",
            "--build-tag",
            "v0.0.1",
        ],
        &[],
    );
    assert_eq!(
        build_fields(&info(&agent)),
        json!({"build_commit": "abc123", "build_tag": "v0.0.1", "build_source": "flag",
               "build_tag_source": "flag", "build_modified": null})
    );
    assert_eq!(agent.post("/detrix/wake", None).0, 200);
    let reg = stub.lock().registrations[0].clone();
    assert_eq!(
        (reg["buildCommit"].clone(), reg["buildTag"].clone()),
        (json!("abc123"), json!("v0.0.1")),
        "{reg}"
    );
}

/// A scratch workspace the target (running as `nobody`) works in:
/// `src/main.c` (world-readable), `secret.txt` (root only), `huge.bin` (10 MiB + 1, sparse),
/// `alias.c` → `src/main.c`, `src/out` → `/etc/hostname`, `up` → `../../../../../etc/hostname`.
struct Workspace {
    dir: PathBuf,
    source: &'static str,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = scratch("ws");
        let source = "int main(void) { return 42; }\n";
        std::fs::create_dir_all(dir.join("src")).expect("preparing the scratch files");
        std::fs::write(dir.join("src/main.c"), source).expect("preparing the scratch files");
        std::fs::set_permissions(dir.join("src"), std::fs::Permissions::from_mode(0o755))
            .expect("preparing the scratch files");
        std::fs::set_permissions(
            dir.join("src/main.c"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("preparing the scratch files");
        std::fs::write(dir.join("secret.txt"), "root only\n").expect("preparing the scratch files");
        std::fs::set_permissions(
            dir.join("secret.txt"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("preparing the scratch files");
        let huge =
            std::fs::File::create(dir.join("huge.bin")).expect("preparing the scratch files");
        huge.set_len(10 * 1024 * 1024 + 1)
            .expect("preparing the scratch files");
        std::fs::set_permissions(dir.join("huge.bin"), std::fs::Permissions::from_mode(0o644))
            .expect("preparing the scratch files");
        symlink("src/main.c", dir.join("alias.c")).expect("preparing the scratch files");
        symlink("/etc/hostname", dir.join("src/out")).expect("preparing the scratch files");
        symlink("../../../../../../etc/hostname", dir.join("up"))
            .expect("preparing the scratch files");
        Workspace { dir, source }
    }

    /// The orders C fixture, copied into the workspace and run there as `nobody`.
    fn run_as_nobody(&self) -> Fixture {
        let exe = build_c_fixture("orders", Build::Debug);
        let copy = self.dir.join("orders");
        std::fs::copy(&exe, &copy).expect("preparing the scratch files");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
            .expect("preparing the scratch files");
        let mut cmd = Command::new(&copy);
        cmd.args(["-1", "50"])
            .current_dir(&self.dir)
            .uid(NOBODY)
            .gid(NOBODY);
        let f = Fixture::spawn(cmd);
        let status = std::fs::read_to_string(format!("/proc/{}/status", f.pid()))
            .expect("preparing the scratch files");
        assert!(
            status
                .lines()
                .any(|l| l == format!("Uid:\t{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}")),
            "the fixture runs as nobody: {status}"
        );
        f
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_file(agent: &AttachedAgent, body: &Value) -> (u16, String) {
    http(
        "POST",
        &format!("{}/detrix/files/read", agent.control),
        Some(&body.to_string()),
    )
}

#[test]
fn files_read_serves_workspace_files_as_the_target_and_nothing_else() {
    require_root();
    let ws = Workspace::new();
    let fixture = ws.run_as_nobody();
    let agent = AttachedAgent::start(fixture.pid(), &[], &[]);
    let root = ws.dir.to_str().unwrap();
    assert_eq!(info(&agent)["workspace_root"], json!(root));

    // A source file, relative and absolute, and through a link that stays inside.
    for path in [
        "src/main.c",
        &format!("{root}/src/main.c"),
        "alias.c",
        "./src/../src/main.c",
    ] {
        assert_eq!(
            read_file(&agent, &json!({"path": path})),
            (200, ws.source.to_owned()),
            "{path}"
        );
    }
    assert_eq!(
        read_file(
            &agent,
            &json!({"path": "main.c", "workspace_root": format!("{root}/src"), "commit": "ignored"})
        ),
        (200, ws.source.to_owned())
    );
    let forbidden = |body: Value, says: &str| {
        let (s, b) = read_file(&agent, &body);
        let e = json_body(&b);
        assert_eq!(s, 403, "{body}: {b}");
        assert!(e["error"].as_str().unwrap().contains(says), "{body}: {e}");
    };
    forbidden(
        json!({"path": "../../etc/shadow"}),
        "leads outside the workspace root",
    );
    forbidden(
        json!({"path": "/etc/shadow"}),
        "leads outside the workspace root",
    );
    forbidden(
        json!({"path": "shadow", "workspace_root": "/etc"}),
        "is outside the workspace root",
    );
    // Links out: absolute and relative; /etc/hostname is world-readable, so only the escape refuses them.
    forbidden(json!({"path": "src/out"}), "link that leads outside");
    forbidden(json!({"path": "up"}), "link that leads outside");
    // A file only root may read, while the target runs as nobody.
    assert_eq!(
        std::fs::read_to_string(ws.dir.join("secret.txt")).unwrap(),
        "root only\n"
    );
    forbidden(json!({"path": "secret.txt"}), "may not read");
    // Too large, missing, not a regular file, bad requests.
    let (s, b) = read_file(&agent, &json!({"path": "huge.bin"}));
    assert_eq!(s, 413, "{b}");
    assert_eq!(
        json_body(&b)["error"],
        json!("`huge.bin` is 10485761 bytes; files/read serves at most 10485760 bytes")
    );
    assert_eq!(
        read_file(&agent, &json!({"path": "nope.c"})),
        (404, String::new())
    );
    assert_eq!(
        read_file(&agent, &json!({"path": "src"})),
        (404, String::new())
    );
    let (s, b) = read_file(&agent, &json!({"path": ""}));
    assert_eq!(
        (
            s,
            json_body(&b)["error"]
                .as_str()
                .unwrap()
                .contains("non-empty \"path\"")
        ),
        (400, true),
        "{b}"
    );
    let (s, b) = http(
        "POST",
        &format!("{}/detrix/files/read", agent.control),
        Some("{nope"),
    );
    assert_eq!(s, 400, "{b}");
    assert_eq!(agent.get("/detrix/files/read").0, 404, "GET is not a route");
}

/// A non-loopback address of this machine, if it has one.
fn own_remote_ip() -> Option<std::net::IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    Some(s.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

#[test]
fn files_read_from_a_remote_caller_needs_the_token_and_discover_does_not() {
    require_root();
    let Some(ip) = own_remote_ip() else {
        println!("NOT RUN: files_read_from_a_remote_caller_needs_the_token_and_discover_does_not: no non-loopback address to call from (the rule is unit-tested in control::tests)");
        return;
    };
    let ws = Workspace::new();
    let fixture = ws.run_as_nobody();
    let agent = AttachedAgent::start(
        fixture.pid(),
        &["--control-host", "0.0.0.0", "--name", "files-remote"],
        &[("DETRIX_TOKEN", "s3cret")],
    );
    let port = agent.control.rsplit(':').next().unwrap().to_owned();
    let url = format!("http://{ip}:{port}/detrix/files/read");
    let body = json!({"path": "src/main.c"}).to_string();
    assert_eq!(
        try_http("POST", &url, Some(&body), &[]).unwrap(),
        (401, json!({"error": UNAUTHORIZED}).to_string())
    );
    assert_eq!(
        try_http(
            "POST",
            &url,
            Some(&body),
            &[("Authorization", "Bearer s3cret")]
        )
        .unwrap(),
        (200, ws.source.to_owned())
    );
    let (s, d) = try_http(
        "GET",
        &format!("http://{ip}:{port}/detrix/discover"),
        None,
        &[],
    )
    .unwrap();
    assert_eq!(s, 200, "discover never needs auth: {d}");
    assert_eq!(
        json_body(&d),
        json!({"name": "files-remote", "daemon_url": "http://127.0.0.1:8090"}),
        "no control_plane_url while bound to 0.0.0.0 (no routable host known)"
    );
}

/// The ELF build-id as `readelf -n` prints it.
fn readelf_build_id(exe: &Path) -> String {
    let text = run(Command::new("readelf").arg("-n").arg(exe));
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("a build-id note (gcc links one by default)")
        .trim()
        .to_owned()
}

#[test]
fn discover_names_the_control_plane_and_info_the_c_binarys_build_id_and_checkout() {
    require_root();
    let fixture = Fixture::orders_private(50);
    let agent = AttachedAgent::start(
        fixture.pid(),
        &["--name", "disc", "--daemon-url", "http://127.0.0.1:18090"],
        &[],
    );
    assert_eq!(
        agent.get("/detrix/discover"),
        (
            200,
            json!({"name": "disc", "daemon_url": "http://127.0.0.1:18090", "control_plane_url": agent.control})
        )
    );
    let i = info(&agent);
    assert_eq!(i["build_id"], json!(readelf_build_id(fixture.exe())), "{i}");
    // The fixture runs in this test's directory and environment: the commit is the
    // environment's if CI set one, else this checkout's HEAD (a worktree's `.git` file too),
    // else none (a source tree without git).
    let cwd =
        std::fs::read_link(format!("/proc/{}/cwd", fixture.pid())).expect("the fixture's cwd");
    let env_var = [
        "DETRIX_BUILD_COMMIT",
        "GIT_COMMIT",
        "CI_COMMIT_SHA",
        "GITHUB_SHA",
    ]
    .into_iter()
    .find(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()));
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(&cwd)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let expected = match (env_var, head) {
        (Some(k), _) => {
            json!({"commit": std::env::var(k).expect("set").trim(), "source": format!("env:{k}")})
        }
        (None, Some(h)) => json!({"commit": h, "source": "git"}),
        (None, None) => json!({"commit": null, "source": null}),
    };
    assert_eq!(
        json!({"commit": i["build_commit"], "source": i["build_source"]}),
        expected,
        "{i}"
    );
}
