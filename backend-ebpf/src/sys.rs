//! The few bpf(2) commands aya 0.14 does not expose, hand-written.
//!
//! aya hands out a link only as an `FdLink` whose descriptor cannot be
//! borrowed, and whose `pin` consumes it (a failed pin closes the last
//! descriptor, which detaches the link); it queries attachments only for
//! TCX and a few program types, not for cgroup socket hooks. The backend
//! keeps its links open itself and asks the kernel what is attached where,
//! so it needs `BPF_LINK_GET_FD_BY_ID`, `BPF_OBJ_PIN`/`BPF_OBJ_GET` on a
//! descriptor it owns, and `BPF_PROG_QUERY`. Field offsets are those of
//! `union bpf_attr` in include/uapi/linux/bpf.h.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;

/// `enum bpf_attach_type` values the backend attaches with.
pub mod attach_type {
    pub const CGROUP_INET4_CONNECT: u32 = 10;
    pub const CGROUP_INET6_CONNECT: u32 = 11;
    pub const CGROUP_UDP4_SENDMSG: u32 = 14;
    pub const CGROUP_UDP6_SENDMSG: u32 = 15;
    pub const CGROUP_UDP4_RECVMSG: u32 = 19;
    pub const CGROUP_UDP6_RECVMSG: u32 = 20;
    pub const CGROUP_INET4_GETPEERNAME: u32 = 29;
    pub const CGROUP_INET6_GETPEERNAME: u32 = 30;
    /// Kernel >= 6.6.
    pub const TCX_INGRESS: u32 = 46;
    pub const TCX_EGRESS: u32 = 47;
}

/// A zeroed `union bpf_attr` (128 bytes cover every command used here; the
/// kernel accepts a shorter or longer union as long as the tail is zero).
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }

    fn u32(&mut self, offset: usize, v: u32) -> &mut Attr {
        self.0[offset..offset + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn u64(&mut self, offset: usize, v: u64) -> &mut Attr {
        self.0[offset..offset + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn get_u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[offset..offset + 4]);
        u32::from_ne_bytes(b)
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, zero-initialised bpf_attr of the size we
    // pass; every pointer stored in it (path, id buffer) outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len() as libc::c_uint) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf(2) returned an invalid descriptor"))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

/// A new descriptor for the link with this id (`bpftool link show id N`).
pub fn link_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.u32(0, id);
    owned(bpf(BPF_LINK_GET_FD_BY_ID, &mut attr)?)
}

/// The id of the link behind `fd` (`struct bpf_link_info`: type, id, prog_id).
pub fn link_id(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut info = [0u32; 4];
    let mut attr = Attr::new();
    attr.u32(0, fd.as_raw_fd() as u32).u32(4, std::mem::size_of_val(&info) as u32).u64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info[1])
}

/// Pins the object behind `fd` at `path` (`bpftool … pin`).
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let p = c_path(path)?;
    let mut attr = Attr::new();
    attr.u64(0, p.as_ptr() as u64).u32(8, fd.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// Opens a pinned object (`bpftool … show pinned PATH`).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let p = c_path(path)?;
    let mut attr = Attr::new();
    attr.u64(0, p.as_ptr() as u64);
    owned(bpf(BPF_OBJ_GET, &mut attr)?)
}

/// What a cgroup or TCX hook runs: the program ids attached to `target`
/// (a cgroup directory descriptor, or an ifindex for TCX) for
/// `attach_type` (`bpftool cgroup show PATH`, `bpftool net show dev IF`).
pub fn prog_query(target: u32, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 16];
    loop {
        let mut attr = Attr::new();
        attr.u32(0, target).u32(4, attach_type).u64(16, ids.as_mut_ptr() as u64).u32(24, ids.len() as u32);
        match bpf(BPF_PROG_QUERY, &mut attr) {
            Ok(_) => {
                let n = (attr.get_u32(24) as usize).min(ids.len());
                ids.truncate(n);
                return Ok(ids);
            }
            // More programs than room: the kernel wrote the count.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && ids.len() < 4096 => {
                ids = vec![0u32; (attr.get_u32(24) as usize).max(ids.len() * 2)];
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_fields_land_at_their_offsets() {
        let mut a = Attr::new();
        a.u32(0, 7).u32(4, 46).u64(16, 0x1122_3344_5566_7788).u32(24, 16);
        assert_eq!(&a.0[0..8], &[7, 0, 0, 0, 46, 0, 0, 0], "target_fd, attach_type");
        assert_eq!(&a.0[16..24], &0x1122_3344_5566_7788u64.to_ne_bytes(), "prog_ids");
        assert_eq!(a.get_u32(24), 16, "prog_cnt");
        assert!(a.0[28..].iter().all(|b| *b == 0), "the tail stays zero");
    }
}
