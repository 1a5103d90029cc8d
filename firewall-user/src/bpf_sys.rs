//! The few bpf(2) commands aya has no public wrapper for.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_PROG_BIND_MAP: libc::c_long = 35;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: a bpf(2) call with an attribute struct of the size we pass.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// `BPF_PROG_BIND_MAP`: ties a map the program does not reference to the
/// program, so the map lives and is listed with it (as libbpf does for its
/// metadata maps).
pub fn bind_map(prog: BorrowedFd<'_>, map: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        prog_fd: u32,
        map_fd: u32,
        flags: u32,
    }
    let mut attr = Attr { prog_fd: prog.as_raw_fd() as u32, map_fd: map.as_raw_fd() as u32, flags: 0 };
    bpf(BPF_PROG_BIND_MAP, &mut attr).map(drop)
}

/// `BPF_OBJ_GET`: opens a pinned object (a link here).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = Attr { pathname: c.as_ptr() as u64, bpf_fd: 0, file_flags: 0, path_fd: 0, _pad: 0 };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: a new descriptor the kernel just returned.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_LINK_UPDATE` with `BPF_F_REPLACE`: swaps the link's program for
/// `new` atomically, only if it still runs `old`.
pub fn link_update(link: BorrowedFd<'_>, new: BorrowedFd<'_>, old: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    const BPF_F_REPLACE: u32 = 1 << 2;
    let mut attr = Attr { link_fd: link.as_raw_fd() as u32, new_prog_fd: new.as_raw_fd() as u32, flags: BPF_F_REPLACE, old_prog_fd: old.as_raw_fd() as u32 };
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// What a link is attached to.
#[derive(Debug, Clone, Copy)]
pub struct LinkInfo {
    pub id: u32,
    pub prog_id: u32,
    /// 0 once the interface is gone (the link is defunct).
    pub ifindex: u32,
}

/// `BPF_OBJ_GET_INFO_BY_FD` of an XDP or TCX link.
pub fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    // struct bpf_link_info: type, id, prog_id, then a union (8-aligned)
    // whose xdp and tcx members start with the ifindex.
    let mut info = [0u32; 32];
    #[repr(C)]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = Attr { bpf_fd: link.as_raw_fd() as u32, info_len: std::mem::size_of_val(&info) as u32, info: info.as_mut_ptr() as u64 };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(LinkInfo { id: info[1], prog_id: info[2], ifindex: info[4] })
}

/// `BPF_PROG_GET_FD_BY_ID`.
pub fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        prog_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let mut attr = Attr { prog_id: id, next_id: 0, open_flags: 0 };
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: a new descriptor the kernel just returned.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The programs behind every live BPF link on the system (with the
/// interface each is on): a program that is loaded but in no link is not
/// enforcing anything.
pub fn linked_programs() -> std::collections::HashMap<u32, u32> {
    const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
    const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
    #[repr(C)]
    struct Attr {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let mut out = std::collections::HashMap::new();
    let mut id = 0;
    loop {
        let mut next = Attr { id, next_id: 0, open_flags: 0 };
        if bpf(BPF_LINK_GET_NEXT_ID, &mut next).is_err() {
            return out;
        }
        id = next.next_id;
        let mut get = Attr { id, next_id: 0, open_flags: 0 };
        let Ok(fd) = bpf(BPF_LINK_GET_FD_BY_ID, &mut get) else { continue };
        // SAFETY: a new descriptor the kernel just returned.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        if let Ok(info) = link_info(std::os::fd::AsFd::as_fd(&fd)) {
            if info.ifindex != 0 {
                out.insert(info.prog_id, info.ifindex);
            }
        }
    }
}

/// `BPF_LINK_DETACH`: takes the link's program off its hook now.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    const BPF_LINK_DETACH: libc::c_long = 34;
    #[repr(C)]
    struct Attr {
        link_fd: u32,
    }
    let mut attr = Attr { link_fd: link.as_raw_fd() as u32 };
    bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

/// The cookie of this process's network namespace (`SO_NETNS_COOKIE`,
/// Linux 5.14): unlike its inode number, never reused.
pub fn netns_cookie() -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: a new socket we own.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor just returned.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: an out-buffer of `len` bytes.
    let rc = unsafe { libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, (&mut cookie as *mut u64).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}
