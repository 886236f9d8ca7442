//! One newtype per address space, so a link address can never be attached as a file offset
//! nor read as a runtime address, and the one formula that links them: the load bias.
//!
//! Why here: three spaces meet in this agent (ELF/DWARF link addresses, file offsets uprobes
//! attach to, runtime addresses of the live process); PIE bugs in this field come from one
//! bare `u64` meaning two of them.

/// An address as written in ELF/DWARF, before the loader relocates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkAddr(pub u64);

/// An offset in the object file: what a uprobe attaches to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileOffset(pub u64);

/// An address in the live process, after the loader placed the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuntimeAddr(pub u64);

impl std::fmt::Display for LinkAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl std::fmt::Display for FileOffset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl std::fmt::Display for RuntimeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Runtime address − link address of an `ET_DYN` object: where its mapping at file offset 0
/// starts (`mapped_at`) minus the page of its first loadable segment's link address. Wrapping,
/// since a bias may be "negative" for objects linked above where they are loaded.
#[must_use]
pub fn load_bias(mapped_at: RuntimeAddr, first_segment: LinkAddr) -> u64 {
    mapped_at.0.wrapping_sub(first_segment.0 & !0xfff)
}

impl RuntimeAddr {
    /// The link address this runtime address has in an object loaded with `bias`.
    #[must_use]
    pub fn to_link(self, bias: u64) -> LinkAddr {
        LinkAddr(self.0.wrapping_sub(bias))
    }

    /// The address one byte before: for a return address, a byte inside the call instruction,
    /// which is what line tables and CFI rows must be looked up by.
    #[must_use]
    pub fn call_site(self) -> Self {
        Self(self.0.wrapping_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bias_is_mapping_start_minus_the_first_segments_page() {
        let bias = load_bias(RuntimeAddr(0x5555_5555_4000), LinkAddr(0x0));
        assert_eq!(bias, 0x5555_5555_4000);
        // A first segment not at a page start counts from its page.
        assert_eq!(
            load_bias(RuntimeAddr(0x7f00_0000_0000), LinkAddr(0x1040)),
            0x7eff_ffff_f000
        );
        assert_eq!(
            RuntimeAddr(0x5555_5555_5139).to_link(bias),
            LinkAddr(0x1139)
        );
        assert_eq!(RuntimeAddr(0x1000).call_site(), RuntimeAddr(0xfff));
        assert_eq!(RuntimeAddr(0).call_site(), RuntimeAddr(u64::MAX));
    }
}
