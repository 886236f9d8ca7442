//! The one parser of `/proc/PID/maps`: each line → a [`Mapping`].
//!
//! Why one: the load bias of the executable, the shared libraries a request may name and the
//! symbolizer's executable ranges all come from the same file; three hand-rolled parsers had
//! drifted (one compared the offset as text, one parsed it).

use crate::addr::RuntimeAddr;

/// One line of `/proc/PID/maps`: `start-end perms offset dev inode [path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: RuntimeAddr,
    pub end: RuntimeAddr,
    /// `r-xp` and the like.
    pub perms: String,
    /// Offset in the mapped file of the mapping's first byte.
    pub offset: u64,
    pub inode: u64,
    /// The mapped file as the target sees it; empty for anonymous mappings, `[stack]` and the
    /// like for the kernel's.
    pub path: String,
}

impl Mapping {
    /// Whether the mapping is executable.
    #[must_use]
    pub fn executable(&self) -> bool {
        self.perms.contains('x')
    }
}

/// Parses the text of a maps file; lines that are not mappings are skipped.
#[must_use]
pub fn parse(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut f = line.split_whitespace();
    let (range, perms, offset, _dev, inode) =
        (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: RuntimeAddr(u64::from_str_radix(start, 16).ok()?),
        end: RuntimeAddr(u64::from_str_radix(end, 16).ok()?),
        perms: perms.to_owned(),
        offset: u64::from_str_radix(offset, 16).ok()?,
        inode: inode.parse().ok()?,
        path: f.next().unwrap_or_default().to_owned(),
    })
}

/// Reads and parses `/proc/PID/maps`.
///
/// # Errors
/// The file cannot be read (no such process, no permission).
pub fn read(pid: u32) -> std::io::Result<Vec<Mapping>> {
    Ok(parse(&std::fs::read_to_string(format!(
        "/proc/{pid}/maps"
    ))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_anonymous_and_kernel_mappings() {
        let text = "55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 131 /usr/bin/orders\n\
                    55d0c0a01000-55d0c0a02000 r-xp 00001000 08:01 131 /usr/bin/orders\n\
                    7f0000000000-7f0000021000 rw-p 00000000 00:00 0 \n\
                    7ffd1000-7ffd2000 rw-p 00000000 00:00 0 [stack]\n\
                    not a mapping\n";
        let maps = parse(text);
        assert_eq!(maps.len(), 4);
        assert_eq!(
            maps[1],
            Mapping {
                start: RuntimeAddr(0x55d0_c0a0_1000),
                end: RuntimeAddr(0x55d0_c0a0_2000),
                perms: "r-xp".into(),
                offset: 0x1000,
                inode: 131,
                path: "/usr/bin/orders".into(),
            }
        );
        assert!(maps[1].executable() && !maps[0].executable());
        assert_eq!(maps[2].path, "");
        assert_eq!(maps[3].path, "[stack]");
    }
}
