//! `cargo xtask bench server`: a real C server, built `-O2 -g` from its Debian source, under a
//! real load generator, with a logpoint on its request handler (`server_bench` in detrix-e2e).
//!
//! Why Redis: its request handler (`processCommand(client *c)`) reads fields of one struct
//! through one pointer (`c->argc`, `c->id`, `c->db`), the shape the agent's coalesced reads are
//! for, and Debian ships its load generator (`redis-benchmark`, in redis-tools). Every step
//! checks first and changes something only when the check fails: a second run reuses the
//! source and the build under `target/bench-server/` (never committed).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::util;

/// `apt-get source` needs a deb-src entry; bookworm's, beside the image's own `deb` entries.
const DEB_SRC_FILE: &str = "/etc/apt/sources.list.d/detrix-deb-src.sources";
const DEB_SRC: &str = "Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

/// What Debian's redis build links against (its Build-Depends, less systemd and TLS, which the
/// benchmark build leaves out), `dpkg-dev` for `apt-get source`, and the load generator.
const PACKAGES: [&str; 9] = [
    "dpkg-dev",
    "libhiredis-dev",
    "libjemalloc-dev",
    "liblua5.1-dev",
    "liblzf-dev",
    "lua-bitop-dev",
    "lua-cjson-dev",
    "pkg-config",
    "redis-tools",
];

/// Fetches and builds Redis if needed; returns the built source directory.
pub fn redis(root: &Path) -> Result<PathBuf> {
    let dir = util::target_dir(root)?.join("bench-server");
    fs::create_dir_all(&dir)?;
    if let Some(src) = unpacked(&dir)? {
        if src.join("src/redis-server").is_file() {
            return Ok(src);
        }
    }
    if !Path::new(DEB_SRC_FILE).exists() {
        fs::write(DEB_SRC_FILE, DEB_SRC)
            .with_context(|| format!("write {DEB_SRC_FILE} (needs root)"))?;
        util::run(Command::new("apt-get").arg("update"))?;
    }
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg")
                .args(["-s", p])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if !missing.is_empty() {
        util::run(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    let src = match unpacked(&dir)? {
        Some(src) => src,
        None => {
            util::run(
                Command::new("apt-get")
                    .args(["source", "redis"])
                    .current_dir(&dir),
            )?;
            unpacked(&dir)?.context("apt-get source redis left no redis-* directory")?
        }
    };
    let start = Instant::now();
    // debian/rules' flags, with -O2 -g and without systemd and TLS.
    util::run(
        Command::new("make")
            .args(["-j2", "redis-server"])
            .args([
                "USE_SYSTEM_JEMALLOC=yes",
                "USE_JEMALLOC=yes",
                "USE_SYSTEMD=no",
                "BUILD_TLS=no",
                "OPTIMIZATION=-O2",
                "CFLAGS=-I/usr/include/liblzf",
                "LDFLAGS=-Wl,-no-as-needed -ldl -latomic -llzf",
            ])
            .current_dir(&src),
    )?;
    println!("bench: built {} in {}", src.display(), util::secs(start));
    Ok(src)
}

/// The `redis-<version>` directory `apt-get source` unpacked, if any.
fn unpacked(dir: &Path) -> Result<Option<PathBuf>> {
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if p.is_dir() && name.starts_with("redis-") {
            return Ok(Some(p));
        }
    }
    Ok(None)
}
