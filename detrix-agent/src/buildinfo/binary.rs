//! What the target's executable says about its own build: the ELF build-id (`NT_GNU_BUILD_ID`)
//! and, for Go, the build information the Go linker embeds in the `.go.buildinfo` section
//! (what `go version -m` prints: main module, its version, `build vcs.revision=…` lines).
//!
//! Layout read (Go 1.18 and later, flag bit 1 set): a 32-byte header that starts with
//! `\xff Go buildinf:`, then two length-prefixed strings — the Go version and the module
//! information. The module information is framed by 16 bytes at each end and holds one record
//! per line, tab-separated: `path`, `mod PATH VERSION [SUM]`, `dep …`, `build KEY=VALUE`.
//! Older binaries store pointers instead; they report no Go build information.

use object::{Object as _, ObjectSection as _};

const MAGIC: &[u8] = b"\xff Go buildinf:";

/// Go's embedded build information, the fields this agent reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GoBuild {
    /// `go1.23.5`.
    pub go_version: String,
    /// The main module's path.
    pub module: Option<String>,
    /// The main module's version when it is a release version (not `(devel)`, not a pseudo-version).
    pub module_version: Option<String>,
    /// `vcs.revision`.
    pub revision: Option<String>,
    /// `vcs.modified`.
    pub modified: Option<bool>,
}

/// What one executable carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BinaryFacts {
    /// Lower-case hex of the GNU build-id note.
    pub build_id: Option<String>,
    pub go: Option<GoBuild>,
}

/// Reads both from the ELF image `data`. A file that is not ELF, or lacks either part, gives
/// `None` for that part.
#[must_use]
pub fn read(data: &[u8]) -> BinaryFacts {
    let Ok(file) = object::File::parse(data) else {
        return BinaryFacts::default();
    };
    let build_id = file
        .build_id()
        .ok()
        .flatten()
        .filter(|id| !id.is_empty())
        .map(|id| id.iter().map(|b| format!("{b:02x}")).collect());
    let go = file
        .section_by_name(".go.buildinfo")
        .and_then(|s| s.data().ok())
        .and_then(parse_go_buildinfo);
    BinaryFacts { build_id, go }
}

/// Reads a Go varint (unsigned LEB128) at the start of `b`: (value, bytes used).
fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn take_string(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, used) = uvarint(b)?;
    let len = usize::try_from(len).ok()?;
    let rest = b.get(used..)?;
    Some((rest.get(..len)?, rest.get(len..)?))
}

/// Parses the `.go.buildinfo` section's contents.
#[must_use]
pub fn parse_go_buildinfo(sec: &[u8]) -> Option<GoBuild> {
    if sec.len() < 32 || !sec.starts_with(MAGIC) {
        return None;
    }
    let flags = sec[15];
    if flags & 2 == 0 {
        // Pre-1.18 pointer layout: not read (see the module doc).
        return None;
    }
    let (version, rest) = take_string(&sec[32..])?;
    let (modinfo, _) = take_string(rest)?;
    // Framed by 16 bytes at each end when non-empty.
    let modinfo = if modinfo.len() >= 33 && modinfo[modinfo.len() - 17] == b'\n' {
        &modinfo[16..modinfo.len() - 16]
    } else {
        modinfo
    };
    let mut go = GoBuild {
        go_version: String::from_utf8_lossy(version).into_owned(),
        ..GoBuild::default()
    };
    for line in String::from_utf8_lossy(modinfo).lines() {
        let mut f = line.split('\t');
        match f.next() {
            Some("mod") => {
                go.module = f.next().map(str::to_owned);
                go.module_version = f.next().filter(|v| is_release(v)).map(str::to_owned);
            }
            Some("build") => {
                let Some((k, v)) = f.next().and_then(|kv| kv.split_once('=')) else {
                    continue;
                };
                match k {
                    "vcs.revision" if !v.is_empty() => go.revision = Some(v.to_owned()),
                    "vcs.modified" => go.modified = Some(v == "true"),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    Some(go)
}

/// Whether a module version names a release (`v1.2.3`, `v1.2.3-rc.1`, `v1.2.3+dirty`), not
/// `(devel)` or a pseudo-version (`v0.0.0-20240102030405-abcdef123456`), which names a
/// commit, not a tag.
fn is_release(v: &str) -> bool {
    if !v.starts_with('v') {
        return false;
    }
    let core = v.split('+').next().unwrap_or(v);
    // A pseudo-version ends in -<14-digit time>-<12 hex>.
    let mut parts = core.rsplit(['-', '.']);
    let (Some(hash), Some(time)) = (parts.next(), parts.next()) else {
        return true;
    };
    let pseudo = hash.len() == 12
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
        && time.len() == 14
        && time.bytes().all(|b| b.is_ascii_digit());
    !pseudo
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(version: &str, modinfo: &str) -> Vec<u8> {
        let mut s = MAGIC.to_vec();
        s.push(8);
        s.push(2);
        s.resize(32, 0);
        let framed = if modinfo.is_empty() {
            Vec::new()
        } else {
            let mut m = vec![0xAAu8; 16];
            m.extend_from_slice(modinfo.as_bytes());
            m.extend_from_slice(&[0xBBu8; 16]);
            m
        };
        for part in [version.as_bytes(), &framed] {
            let mut n = part.len();
            loop {
                let b = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    s.push(b);
                    break;
                }
                s.push(b | 0x80);
            }
            s.extend_from_slice(part);
        }
        s
    }

    #[test]
    fn reads_module_revision_and_modified() {
        let modinfo = "path\texample.com/app\nmod\texample.com/app\tv1.4.2\t\nbuild\t-compiler=gc\nbuild\tvcs=git\nbuild\tvcs.revision=0123456789abcdef0123456789abcdef01234567\nbuild\tvcs.modified=true\n";
        assert_eq!(
            parse_go_buildinfo(&section("go1.23.5", modinfo)),
            Some(GoBuild {
                go_version: "go1.23.5".into(),
                module: Some("example.com/app".into()),
                module_version: Some("v1.4.2".into()),
                revision: Some("0123456789abcdef0123456789abcdef01234567".into()),
                modified: Some(true),
            })
        );
    }

    #[test]
    fn devel_and_pseudo_versions_are_not_tags() {
        let devel = "mod\tapp\t(devel)\t\n";
        assert_eq!(
            parse_go_buildinfo(&section("go1.19.8", devel)).map(|g| g.module_version),
            Some(None)
        );
        assert!(!is_release("v0.0.0-20240102030405-abcdef123456"));
        assert!(!is_release("v1.2.4-0.20240102030405-abcdef123456+dirty"));
        assert!(is_release("v1.2.3-rc.1"));
        assert!(is_release("v2.0.0+incompatible"));
    }

    #[test]
    fn no_modinfo_and_bad_sections() {
        assert_eq!(
            parse_go_buildinfo(&section("go1.19.8", "")),
            Some(GoBuild {
                go_version: "go1.19.8".into(),
                ..GoBuild::default()
            })
        );
        assert_eq!(parse_go_buildinfo(b"\xff Go buildinf:"), None);
        let mut old = section("go1.17", "");
        old[15] = 0;
        assert_eq!(parse_go_buildinfo(&old), None, "pointer layout not read");
    }
}
