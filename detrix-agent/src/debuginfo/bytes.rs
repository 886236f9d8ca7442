//! Section bytes without copies: a range of the memory-mapped file, or an owned buffer for
//! sections that had to be decompressed (Go compresses its DWARF).
//!
//! Why: reading a binary with hundreds of MB of debug info into memory, then copying each
//! section into its own buffer, costs twice its size in RSS before the first request. Mapping
//! it costs only the pages a request touches.

use std::ops::{Deref, Range};
use std::sync::Arc;

/// Bytes shared cheaply (one `Arc` clone) and stable in memory, as gimli's `EndianReader`
/// needs.
#[derive(Clone)]
pub(crate) struct Bytes {
    backing: Backing,
    range: Range<usize>,
}

#[derive(Clone)]
enum Backing {
    Map(Arc<memmap2::Mmap>),
    Owned(Arc<[u8]>),
}

impl Bytes {
    /// A sub-slice of the map. `slice` must point into `map`; otherwise an empty range.
    pub(crate) fn from_map(map: &Arc<memmap2::Mmap>, slice: &[u8]) -> Self {
        let base = map.as_ptr() as usize;
        let start = (slice.as_ptr() as usize).wrapping_sub(base);
        let range = if start <= map.len() && start + slice.len() <= map.len() {
            start..start + slice.len()
        } else {
            0..0
        };
        Self {
            backing: Backing::Map(map.clone()),
            range,
        }
    }

    pub(crate) fn owned(data: Vec<u8>) -> Self {
        let len = data.len();
        Self {
            backing: Backing::Owned(Arc::from(data)),
            range: 0..len,
        }
    }

    pub(crate) fn empty() -> Self {
        Self::owned(Vec::new())
    }
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let all: &[u8] = match &self.backing {
            Backing::Map(m) => m,
            Backing::Owned(o) => o,
        };
        all.get(self.range.clone()).unwrap_or(&[])
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes)", self.range.len())
    }
}

// SAFETY: the bytes live in an Arc'd map or buffer that never moves or changes while any clone
// exists (the map is read-only and private), so the address `deref` returns is stable.
unsafe impl stable_deref_trait::StableDeref for Bytes {}
// SAFETY: a clone shares the same Arc and range, so it derefs to the same address.
unsafe impl stable_deref_trait::CloneStableDeref for Bytes {}

/// Maps `file` read-only when only root can change it; otherwise reads it into anonymous memory.
///
/// Why: a read of a file mapping whose file was truncated after the map faults with SIGBUS,
/// which kills the agent. A target's user can truncate its own libraries and executables (a
/// shared library is never write-protected while mapped, and an executable can be replaced and
/// truncated through another name), so a file whose owner is not root, or that group or others
/// may write, is copied; a root-owned `0755` binary is mapped and costs only the pages read.
/// A root target can still truncate a root-owned file; such a user could kill the agent anyway.
///
/// # Errors
/// `fstat`, `mmap` or the read failed (a file shrinking under the copy is `UnexpectedEof`).
pub fn map_file(file: &std::fs::File) -> std::io::Result<memmap2::Mmap> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = file.metadata()?;
    if meta.uid() == 0 && meta.mode() & 0o022 == 0 {
        // SAFETY: a private read-only mapping of a file only root may write (see above).
        return unsafe { memmap2::Mmap::map(file) };
    }
    copy_to_anon(file, meta.len())
}

/// `file`'s first `len` bytes in a read-only anonymous mapping.
fn copy_to_anon(mut file: &std::fs::File, len: u64) -> std::io::Result<memmap2::Mmap> {
    use std::io::{Read as _, Seek as _};
    let len = usize::try_from(len).map_err(std::io::Error::other)?;
    // A zero-length anonymous map is refused; an empty file parses as "not ELF" either way.
    let mut anon = memmap2::MmapMut::map_anon(len.max(1))?;
    file.seek(std::io::SeekFrom::Start(0))?;
    file.read_exact(&mut anon[..len])?;
    anon.make_read_only()
}

/// `data` in a read-only anonymous mapping (e.g. a binary built in memory, or fuzzed).
///
/// # Errors
/// The anonymous mapping failed.
pub fn anon_copy(data: &[u8]) -> std::io::Result<memmap2::Mmap> {
    let mut anon = memmap2::MmapMut::map_anon(data.len().max(1))?;
    anon[..data.len()].copy_from_slice(data);
    anon.make_read_only()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;

    fn mapped_in_self(path: &std::path::Path) -> bool {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let name = path.to_string_lossy();
        maps.lines().any(|l| l.ends_with(name.as_ref()))
    }

    fn temp_file(tag: &str, data: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("detrix-map-{tag}-{}", std::process::id()));
        let mut f = std::fs::File::create(&p).expect("create a temp file");
        f.write_all(data).expect("write it");
        p
    }

    #[test]
    fn a_file_another_user_can_write_is_copied_and_survives_truncation() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("NOT RUN: needs root to give the file to another user");
            return;
        }
        let data: Vec<u8> = (0..3 * 4096u32).map(|i| (i % 251) as u8).collect();
        let p = temp_file("user", &data);
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).expect("chown to nobody");
        let f = std::fs::File::open(&p).expect("open");
        let m = map_file(&f).expect("map_file");
        assert!(!mapped_in_self(&p), "a file nobody owns must not be mapped");
        // The owner truncates it: a mapping would fault (SIGBUS) on the next read.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|w| w.set_len(0))
            .expect("truncate");
        assert_eq!(&m[..], &data[..]);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn a_root_owned_file_nobody_else_can_write_is_mapped_and_a_writable_one_is_not() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("NOT RUN: needs root to own the file as root");
            return;
        }
        let p = temp_file("root", b"\x7fELF and more");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let f = std::fs::File::open(&p).expect("open");
        let m = map_file(&f).expect("map_file");
        assert!(mapped_in_self(&p), "a root-owned 0755 file is mapped");
        assert_eq!(&m[..], b"\x7fELF and more");
        drop(m);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let m = map_file(&f).expect("map_file");
        assert!(!mapped_in_self(&p), "a world-writable file is copied");
        assert_eq!(&m[..], b"\x7fELF and more");
        let _ = std::fs::remove_file(&p);
    }
}
