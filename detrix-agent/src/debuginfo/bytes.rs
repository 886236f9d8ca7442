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
