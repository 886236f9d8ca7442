//! Probes as `uprobe_multi` BPF links: the object's programs loaded a second time with the
//! expected attach type `BPF_TRACE_UPROBE_MULTI`, so that each probe is a BPF link of its own
//! (`BPF_LINK_CREATE`) instead of a perf event.
//!
//! Why: the kernel closes a perf-event uprobe under its trace-event mutex across an RCU grace
//! period, ~100 ms per probe and one probe at a time — removing 50 probes took 5 s, and so did
//! shutting down with them. A `uprobe_multi` link waits for the grace period without that
//! mutex, so closes overlap: on this machine 10 such links closed one after another took 560 ms,
//! 50 closed on 50 threads 85 ms ([`super::closer`] closes them side by side). Kernels before
//! 6.6 have no such links: [`Programs::load`] fails there and the caller keeps perf events.
//!
//! Why this module loads programs itself: aya 0.14 loads a uprobe program without an expected
//! attach type and cannot create this kind of link. So the instructions are derived from the
//! same embedded object with `aya-obj` — their map references relocated to the maps aya already
//! created, so both loads share every map, ring and global — and handed to `BPF_PROG_LOAD`.
//! The attributes are the kernel's stable UAPI (`include/uapi/linux/bpf.h`), written out as
//! `#[repr(C)]` structs with the fields used here.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::path::Path;

/// `BPF_PROG_LOAD`, `BPF_BTF_LOAD`, `BPF_LINK_CREATE` (enum bpf_cmd).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_BTF_LOAD: libc::c_long = 18;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `BPF_PROG_TYPE_KPROBE` (uprobes are kprobe-type programs).
const BPF_PROG_TYPE_KPROBE: u32 = 2;
/// `BPF_TRACE_UPROBE_MULTI` (enum bpf_attach_type).
const BPF_TRACE_UPROBE_MULTI: u32 = 48;
/// The verifier's log, when a load is refused: the end of it names the reason.
const LOG_BYTES: usize = 1 << 20;

/// The head of `union bpf_attr` for `BPF_PROG_LOAD`, up to `line_info_cnt`.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    _pad: u32,
}

/// `union bpf_attr` for `BPF_BTF_LOAD`.
#[repr(C)]
#[derive(Default)]
struct BtfLoad {
    btf: u64,
    btf_log_buf: u64,
    btf_size: u32,
    btf_log_size: u32,
    btf_log_level: u32,
    _pad: u32,
}

/// `union bpf_attr` for `BPF_LINK_CREATE` with its `uprobe_multi` member.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    path: u64,
    offsets: u64,
    ref_ctr_offsets: u64,
    cookies: u64,
    cnt: u32,
    multi_flags: u32,
    pid: u32,
    _pad: u32,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a live, initialised #[repr(C)] prefix of `union bpf_attr` of the
    // size passed; the kernel reads it (and writes only through the pointers inside it, which
    // point at buffers that outlive the call).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(r).map_err(|_| io::Error::other("the kernel returned no fd"))?;
    // SAFETY: on success both commands return a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The descriptor of a loaded aya map (every kind holds a `MapData`).
fn map_fd(map: &aya::maps::Map) -> RawFd {
    use aya::maps::Map as M;
    let (M::Array(d)
    | M::ArrayOfMaps(d)
    | M::BloomFilter(d)
    | M::CgroupArray(d)
    | M::CgroupStorage(d)
    | M::CgrpStorage(d)
    | M::CpuMap(d)
    | M::DevMap(d)
    | M::DevMapHash(d)
    | M::HashMap(d)
    | M::HashOfMaps(d)
    | M::InodeStorage(d)
    | M::LpmTrie(d)
    | M::LruHashMap(d)
    | M::PerCpuArray(d)
    | M::PerCpuCgroupStorage(d)
    | M::PerCpuHashMap(d)
    | M::PerCpuLruHashMap(d)
    | M::PerfEventArray(d)
    | M::ProgramArray(d)
    | M::Queue(d)
    | M::ReusePortSockArray(d)
    | M::RingBuf(d)
    | M::SockHash(d)
    | M::SockMap(d)
    | M::SkStorage(d)
    | M::Stack(d)
    | M::StackTraceMap(d)
    | M::Unsupported(d)
    | M::XskMap(d)) = map;
    d.fd().as_fd().as_raw_fd()
}

/// The object's programs loaded for `uprobe_multi` links, by name.
#[derive(Debug)]
pub struct Programs(HashMap<String, OwnedFd>);

impl Programs {
    /// Loads programs `names` of `object` for `uprobe_multi` links, their maps being the ones
    /// `ebpf` created from the same object. Call before any map is taken out of `ebpf`.
    ///
    /// # Errors
    /// One sentence: the object cannot be relocated, or the kernel refused a program (on a
    /// kernel before 6.6, `BPF_TRACE_UPROBE_MULTI` is unknown: "Invalid argument").
    pub fn load(ebpf: &aya::Ebpf, object: &[u8], names: &[&str]) -> Result<Self, String> {
        let mut obj = aya_obj::Object::parse(object).map_err(|e| format!("parsing: {e}"))?;
        // The verifier needs the program's BTF and function info: it calls back into its own
        // functions (`bpf_loop`). Every BTF feature is there on a kernel with uprobe_multi.
        let features =
            aya_obj::btf::BtfFeatures::new(true, true, true, true, true, true, true, true);
        let btf = match obj
            .fixup_and_sanitize_btf(&features)
            .map_err(|e| format!("BTF: {e}"))?
        {
            Some(btf) => Some(load_btf(&btf.to_bytes())?),
            None => None,
        };
        if obj.btf.is_some() && obj.btf_ext.is_some() {
            let target = aya::Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"))?;
            obj.relocate_btf(&target)
                .map_err(|e| format!("BTF relocation: {e}"))?;
        }
        let fds: HashMap<&str, RawFd> = ebpf.maps().map(|(n, m)| (n, map_fd(m))).collect();
        let defs = obj.maps.clone();
        let mut maps = Vec::with_capacity(defs.len());
        for (name, def) in &defs {
            let fd = fds
                .get(name.as_str())
                .ok_or_else(|| format!("map {name} is not among the loaded maps"))?;
            maps.push((name.as_str(), *fd, def));
        }
        let text: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
        obj.relocate_maps(maps.into_iter(), &text)
            .map_err(|e| format!("map relocation: {e}"))?;
        obj.relocate_calls(&text)
            .map_err(|e| format!("call relocation: {e}"))?;
        let mut out = HashMap::new();
        for &name in names {
            let prog = obj
                .programs
                .get(name)
                .ok_or_else(|| format!("the object has no program {name}"))?;
            let f = obj
                .functions
                .get(&prog.function_key())
                .ok_or_else(|| format!("program {name} has no instructions"))?;
            let fd = load_one(name, f, &prog.license, btf.as_ref())?;
            out.insert(name.to_owned(), fd);
        }
        Ok(Self(out))
    }

    /// Attaches program `name` at `offset` of `binary`, passing `cookie` to each hit; only
    /// process `pid` (a host pid; 0 = every process) triggers it. Closing the returned
    /// descriptor removes the uprobe.
    ///
    /// # Errors
    /// No such program, or the kernel refused the link (no such file, an offset that is not
    /// an instruction boundary, …).
    pub fn attach(
        &self,
        name: &str,
        binary: &Path,
        offset: u64,
        cookie: u64,
        pid: u32,
    ) -> io::Result<OwnedFd> {
        let prog = self
            .0
            .get(name)
            .ok_or_else(|| io::Error::other(format!("no uprobe_multi program {name}")))?;
        attach(prog.as_fd(), binary, offset, cookie, pid)
    }
}

/// Loads the object's BTF into the kernel, for the programs' function and line info.
fn load_btf(bytes: &[u8]) -> Result<OwnedFd, String> {
    let mut attr = BtfLoad {
        btf: bytes.as_ptr() as u64,
        btf_size: u32::try_from(bytes.len()).map_err(|_| "BTF over 4 GiB".to_owned())?,
        ..BtfLoad::default()
    };
    sys_bpf(BPF_BTF_LOAD, &mut attr)
        .map_err(|e| format!("the kernel refused the object's BTF: {e}"))
}

fn load_one(
    name: &str,
    f: &aya_obj::Function,
    license: &CString,
    btf: Option<&OwnedFd>,
) -> Result<OwnedFd, String> {
    let count = |n: usize| u32::try_from(n).map_err(|_| format!("{name}: too many entries"));
    let insns = &f.instructions;
    let (func_info, line_info) = (f.func_info.func_info_bytes(), f.line_info.line_info_bytes());
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_KPROBE,
        insn_cnt: count(insns.len())?,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_TRACE_UPROBE_MULTI,
        ..ProgLoad::default()
    };
    if let Some(btf) = btf {
        attr.prog_btf_fd = u32::try_from(btf.as_raw_fd()).map_err(|_| "bad BTF fd".to_owned())?;
        if f.func_info_rec_size > 0 {
            attr.func_info_rec_size = count(f.func_info_rec_size)?;
            attr.func_info = func_info.as_ptr() as u64;
            attr.func_info_cnt = count(f.func_info.func_info.len())?;
        }
        if f.line_info_rec_size > 0 {
            attr.line_info_rec_size = count(f.line_info_rec_size)?;
            attr.line_info = line_info.as_ptr() as u64;
            attr.line_info_cnt = count(f.line_info.line_info.len())?;
        }
    }
    // The kernel takes `[A-Za-z0-9_.]`, at most 15 bytes and a NUL.
    for (d, s) in attr.prog_name.iter_mut().zip(
        name.bytes()
            .filter(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .take(15),
    ) {
        *d = s;
    }
    match sys_bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(fd),
        Err(first) => {
            // Again with the verifier's log, to say why.
            let mut log = vec![0u8; LOG_BYTES];
            attr.log_level = 1;
            attr.log_size = LOG_BYTES as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            if let Ok(fd) = sys_bpf(BPF_PROG_LOAD, &mut attr) {
                return Ok(fd);
            }
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            Err(format!(
                "the kernel refused {name} as a uprobe_multi program: {first}{}",
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({})",
                        tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                    )
                }
            ))
        }
    }
}

fn attach(
    prog: BorrowedFd<'_>,
    binary: &Path,
    offset: u64,
    cookie: u64,
    pid: u32,
) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = CString::new(binary.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("the binary's path has a NUL byte"))?;
    let offsets = [offset];
    let cookies = [cookie];
    let mut attr = LinkCreate {
        prog_fd: u32::try_from(prog.as_raw_fd()).map_err(|_| io::Error::other("bad fd"))?,
        attach_type: BPF_TRACE_UPROBE_MULTI,
        path: path.as_ptr() as u64,
        offsets: offsets.as_ptr() as u64,
        cookies: cookies.as_ptr() as u64,
        cnt: 1,
        pid,
        ..LinkCreate::default()
    };
    sys_bpf(BPF_LINK_CREATE, &mut attr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attribute layouts the kernel reads (`include/uapi/linux/bpf.h`).
    #[test]
    fn attribute_layouts_match_the_kernels() {
        assert_eq!(std::mem::offset_of!(ProgLoad, log_buf), 32);
        assert_eq!(std::mem::offset_of!(ProgLoad, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoad, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(ProgLoad, func_info), 80);
        assert_eq!(std::mem::offset_of!(ProgLoad, line_info), 96);
        assert_eq!(std::mem::offset_of!(ProgLoad, line_info_cnt), 104);
        assert_eq!(std::mem::offset_of!(BtfLoad, btf_log_level), 24);
        assert_eq!(std::mem::offset_of!(LinkCreate, path), 16);
        assert_eq!(std::mem::offset_of!(LinkCreate, cookies), 40);
        assert_eq!(std::mem::offset_of!(LinkCreate, cnt), 48);
        assert_eq!(std::mem::offset_of!(LinkCreate, pid), 56);
    }
}
