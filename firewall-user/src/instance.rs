//! Where a firewall's data plane is pinned, so that it outlives its
//! controller, and how a controller takes one over:
//!
//! ```text
//! /sys/fs/bpf/firewall/<netns inode>/<name>/shared/FW_*        policy, flows, keys
//!                                          /iface/<IF>/FW_*    counters, cookie settings
//!                                          /iface/<IF>/link_*  the XDP and TC links
//!                                          /iface/<IF>/progs_* the tail-call table
//! ```
//!
//! `<name>` is the first interface the firewall was started on (with a
//! suffix if a directory of that name exists). Every directory is 0700. The
//! controller holds an exclusive `flock` on the firewall's directory while
//! it runs: a second controller for the same interfaces is refused.

use std::{
    fs::{self, File},
    os::{
        fd::{AsFd as _, AsRawFd as _, OwnedFd},
        unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    bpf_sys,
    loader::{self, BPFFS, LINKS, PinPaths},
};

/// This network namespace's directory of firewalls (not created here).
pub fn netns_dir() -> Result<PathBuf> {
    Ok(Path::new(BPFFS).join("firewall").join(loader::netns_inode()?.to_string()))
}

/// A firewall's pin directory, locked by this process.
pub struct Instance {
    pub name: String,
    pub dir: PathBuf,
    /// Created by this process (removed again if starting fails).
    pub created: bool,
    _lock: File,
}

/// Checks that `path` (under /sys/fs/bpf) is a directory, not a symlink,
/// of this user's, that no other user can open: /sys/fs/bpf is often
/// world-writable (1777), and a directory another user made there could
/// squat, lock or (with symlinks) redirect a firewall's pins. A directory
/// of ours with looser bits (an older version made them 0755) is tightened.
/// Returns whether it exists.
fn check_dir(path: &Path) -> Result<bool> {
    let m = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
    };
    // SAFETY: no arguments.
    let euid = unsafe { libc::geteuid() };
    if !m.file_type().is_dir() || m.uid() != euid {
        bail!("{} is not a directory of this user's (uid {}); remove it and start again", path.display(), m.uid());
    }
    if m.mode() & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).with_context(|| format!("cannot make {} private", path.display()))?;
    }
    Ok(true)
}

/// `check_dir` on every directory from /sys/fs/bpf/firewall down to `dir`.
fn check_path(dir: &Path) -> Result<bool> {
    let rel = dir.strip_prefix(BPFFS).with_context(|| format!("{} is not under {BPFFS}", dir.display()))?;
    let mut path = PathBuf::from(BPFFS);
    for part in rel.components() {
        path.push(part);
        if !check_dir(&path)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Creates `dir` and its parents below /sys/fs/bpf as 0700 (see `check_dir`).
fn make_dir(dir: &Path) -> Result<()> {
    let rel = dir.strip_prefix(BPFFS).with_context(|| format!("{} is not under {BPFFS}", dir.display()))?;
    let mut path = PathBuf::from(BPFFS);
    for part in rel.components() {
        path.push(part);
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
        }
        check_dir(&path)?;
    }
    Ok(())
}

/// The real subdirectories of `dir` (never through a symlink).
fn subdirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The interfaces a firewall directory has pins for.
pub fn interfaces(dir: &Path) -> Vec<String> {
    subdirs(&dir.join("iface")).into_iter().map(|(n, _)| n).collect()
}

/// Every firewall directory of this network namespace.
pub fn list() -> Result<Vec<(String, PathBuf)>> {
    let root = netns_dir()?;
    if !check_path(&root)? {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (name, dir) in subdirs(&root) {
        check_dir(&dir)?;
        out.push((name, dir));
    }
    Ok(out)
}

/// The firewall directory with pins for `iface`, if any.
pub fn find(iface: &str) -> Result<Option<(String, PathBuf)>> {
    Ok(list()?.into_iter().find(|(_, dir)| interfaces(dir).iter().any(|i| i == iface)))
}

/// Tries to lock `dir` exclusively; `None` when a controller holds it.
fn try_lock(dir: &Path) -> Result<Option<File>> {
    let f = File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        // A `stop` may have removed the directory between the open and the
        // lock: then the lock is on nothing anyone else will find.
        let held = f.metadata()?;
        let now = fs::symlink_metadata(dir).ok();
        if now.is_none_or(|m| m.ino() != held.ino() || m.dev() != held.dev()) {
            bail!("{} was removed while it was being locked (a concurrent `firewall stop`?); try again", dir.display());
        }
        return Ok(Some(f));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(None);
    }
    Err(err).with_context(|| format!("cannot lock {}", dir.display()))
}

/// The process holding `dir`'s lock (its controller), from /proc/locks:
/// asking never takes the lock, so it cannot make a starting controller fail.
pub fn lock_holder(dir: &Path) -> Option<u32> {
    let m = fs::metadata(dir).ok()?;
    let (major, minor) = (libc::major(m.dev()), libc::minor(m.dev()));
    let locks = fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| lock_line_holder(l, major, minor, m.ino()))
}

/// The pid of a /proc/locks line that is a held FLOCK on (major:minor, ino):
/// `1: FLOCK  ADVISORY  WRITE 3485 00:1d:12345 0 EOF` (device numbers in
/// hex, the inode in decimal); waiters (`1: -> FLOCK ...`) are not holders.
fn lock_line_holder(line: &str, major: u32, minor: u32, ino: u64) -> Option<u32> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 6 || f[1] != "FLOCK" {
        return None;
    }
    let mut id = f[5].split(':');
    let maj = u32::from_str_radix(id.next()?, 16).ok()?;
    let min = u32::from_str_radix(id.next()?, 16).ok()?;
    let i: u64 = id.next()?.parse().ok()?;
    (maj == major && min == minor && i == ino).then(|| f[4].parse().ok()).flatten()
}


/// Whether a controller holds `dir`'s lock now.
pub fn controller_alive(dir: &Path) -> bool {
    lock_holder(dir).is_some()
}

impl Instance {
    /// Finds the firewall with pins for any of `ifaces` (all must belong to
    /// the same one) or creates a directory for a new one, and locks it.
    pub fn take(ifaces: &[String]) -> Result<Self> {
        let mut found: Option<(String, PathBuf)> = None;
        for iface in ifaces {
            if let Some(f) = find(iface)? {
                if let Some(other) = found.as_ref().filter(|o| o.0 != f.0) {
                    bail!("{iface} belongs to the firewall `{}`, another interface to `{}`: stop one first (`firewall stop --iface {iface}`)", f.0, other.0);
                }
                found = Some(f);
            }
        }
        let (name, dir, created) = match found {
            Some((name, dir)) => (name, dir, false),
            None => {
                // A directory of that name may belong to a firewall that no
                // longer has this interface: never reuse it.
                let first = ifaces.first().context("no interface")?;
                let root = netns_dir()?;
                let mut name = first.clone();
                let mut n = 1;
                while fs::symlink_metadata(root.join(&name)).is_ok() {
                    n += 1;
                    name = format!("{first}-{n}");
                }
                let dir = root.join(&name);
                make_dir(&dir.join("shared"))?;
                (name, dir, true)
            }
        };
        let Some(lock) = try_lock(&dir)? else {
            let pid = lock_holder(&dir).map(|p| format!(" (pid {p})")).unwrap_or_default();
            bail!("another controller{pid} runs the firewall `{name}` (pins at {}); stop it first, or see `firewall status`", dir.display());
        };
        let mut inst = Self { name, dir, created, _lock: lock };
        // Pins whose every interface is gone (a network namespace that died,
        // and whose inode number came back) hold no state worth keeping.
        if !inst.created && !instance_live(&inst)? {
            log::warn!("the pins at {} belong to interfaces that are gone; starting afresh", inst.dir.display());
            remove_tree(&inst.dir.join("iface"));
            remove_tree(&inst.dir.join("shared"));
            make_dir(&inst.dir.join("shared"))?;
            inst.created = true;
        }
        Ok(inst)
    }

    /// Locks an existing firewall directory, waiting up to `limit` for its
    /// controller to let go (for `stop`).
    pub fn lock_existing(name: &str, dir: &Path, limit: Duration) -> Result<Self> {
        let start = Instant::now();
        loop {
            if let Some(lock) = try_lock(dir)? {
                return Ok(Self { name: name.to_owned(), dir: dir.to_path_buf(), created: false, _lock: lock });
            }
            if start.elapsed() > limit {
                bail!("the controller of `{name}` still holds its lock after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pin_paths(&self, iface: &str) -> PinPaths {
        PinPaths { shared: self.dir.join("shared"), iface: self.iface_dir(iface) }
    }

    pub fn iface_dir(&self, iface: &str) -> PathBuf {
        self.dir.join("iface").join(iface)
    }

    /// Makes the interface's directory (where `PinPaths::iface` points);
    /// returns whether it was not there before.
    pub fn prepare(&self, iface: &str) -> Result<bool> {
        let d = self.iface_dir(iface);
        let existed = fs::symlink_metadata(&d).is_ok();
        make_dir(&d)?;
        Ok(!existed)
    }

    /// The pinned links of `iface` (in `LINKS` order), when the interface
    /// has a live set. A set missing its XDP link (a controller died while
    /// attaching: the TC links are pinned first) is detached, to be attached
    /// afresh with the interface's counters kept; links on an interface
    /// that is gone (removed or recreated) are removed with its pins.
    pub fn live_links(&self, iface: &str) -> Result<Option<Vec<OwnedFd>>> {
        let d = self.iface_dir(iface);
        let mut links = Vec::new();
        for name in LINKS {
            match bpf_sys::obj_get(&d.join(name)) {
                Ok(fd) => links.push(Some(fd)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => links.push(None),
                Err(e) => return Err(e).with_context(|| format!("cannot open the pinned link {}", d.join(name).display())),
            }
        }
        if links.iter().all(Option::is_none) {
            return Ok(None);
        }
        if links.iter().any(Option::is_none) {
            log::warn!("{iface}: an incomplete set of pinned links (a controller died while attaching); attaching afresh");
            detach_links(&d);
            return Ok(None);
        }
        let links: Vec<OwnedFd> = links.into_iter().flatten().collect();
        for fd in &links {
            if !link_on(fd, iface)? {
                log::warn!("{iface}: the pinned firewall belonged to an interface that is gone; attaching afresh");
                detach_links(&d);
                remove_tree(&d);
                return Ok(None);
            }
        }
        Ok(Some(links))
    }

    /// Detaches `iface` and removes its pins.
    pub fn remove_iface(&self, iface: &str) {
        let d = self.iface_dir(iface);
        detach_links(&d);
        remove_tree(&d);
    }

    /// Detaches every interface and removes every pin of this firewall.
    pub fn remove(&self) {
        for iface in interfaces(&self.dir) {
            detach_links(&self.iface_dir(iface.as_str()));
        }
        remove_tree(&self.dir);
        // The namespace's directory, once its last firewall is gone.
        if let Some(parent) = self.dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// `BPF_LINK_DETACH` on each pinned link of an interface directory: the
/// program is off the interface when this returns (unlinking the pin alone
/// frees the link later).
fn detach_links(dir: &Path) {
    // XDP first: an interface never runs XDP without the TC programs, which
    // keep the host's flows known and hand cookie connections over.
    for name in LINKS.iter().rev() {
        let path = dir.join(name);
        if let Ok(fd) = bpf_sys::obj_get(&path) {
            if let Err(e) = bpf_sys::link_detach(fd.as_fd()) {
                log::warn!("detaching {}: {e}", path.display());
            }
        }
        let _ = fs::remove_file(&path);
    }
}

/// Whether the firewall belongs to this network namespace (its recorded
/// namespace cookie, when there is one, is ours) and any of its interfaces
/// still has its pinned XDP link live on the interface of that name.
fn instance_live(inst: &Instance) -> Result<bool> {
    if !ours(&inst.dir)? {
        return Ok(false);
    }
    for iface in interfaces(&inst.dir) {
        if xdp_link_live(&inst.dir, &iface)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether the firewall at `dir` was made in this network namespace (its
/// recorded namespace cookie, when there is one, is ours): inode numbers
/// come back once a namespace dies.
pub fn ours(dir: &Path) -> Result<bool> {
    let pinned = pinned_control(dir).map(|c| c.netns_cookie).unwrap_or(0);
    Ok(pinned == 0 || pinned == bpf_sys::netns_cookie().context("cannot read this network namespace's cookie")?)
}

/// Whether `iface`'s pinned XDP link in `dir` is live on the interface of
/// that name. Only a missing pin or a defunct link means no; any other
/// error is an error (never a reason to remove live pins).
pub fn xdp_link_live(dir: &Path, iface: &str) -> Result<bool> {
    let path = dir.join("iface").join(iface).join(loader::XDP_LINK);
    let fd = match bpf_sys::obj_get(&path) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    link_on(&fd, iface).with_context(|| format!("cannot read {}", path.display()))
}

/// Whether the link `fd` is live on the interface named `iface` (a link
/// whose interface was removed reports ifindex 0; a recreated one has
/// another index).
fn link_on(fd: &OwnedFd, iface: &str) -> Result<bool> {
    let info = bpf_sys::link_info(fd.as_fd())?;
    Ok(info.ifindex != 0 && loader::ifindex(iface).ok() == Some(info.ifindex))
}

/// The control record pinned in a firewall directory.
pub fn pinned_control(dir: &Path) -> Option<firewall_common::Control> {
    let data = aya::maps::MapData::from_pin(dir.join("shared").join(firewall_common::maps::CONTROL)).ok()?;
    let m: aya::maps::Array<_, firewall_common::Control> = aya::maps::Array::try_from(aya::maps::Map::from_map_data(data).ok()?).ok()?;
    m.get(&0, 0).ok()
}

/// Removes a directory of pins, depth first (bpffs has no recursive
/// unlink); never follows a symlink.
pub fn remove_tree(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&p);
            } else {
                let _ = fs::remove_file(&p);
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    #[test]
    fn proc_locks_lines() {
        use super::lock_line_holder as h;
        assert_eq!(h("1: FLOCK  ADVISORY  WRITE 3485 00:1d:12345 0 EOF", 0, 0x1d, 12345), Some(3485));
        assert_eq!(h("1: FLOCK  ADVISORY  WRITE 3485 00:1d:12345 0 EOF", 0, 0x1d, 12346), None, "another inode");
        assert_eq!(h("1: FLOCK  ADVISORY  WRITE 3485 00:1e:12345 0 EOF", 0, 0x1d, 12345), None, "another device");
        assert_eq!(h("1: -> FLOCK  ADVISORY  WRITE 3499 00:1d:12345 0 EOF", 0, 0x1d, 12345), None, "a waiter");
        assert_eq!(h("2: POSIX  ADVISORY  WRITE 3485 00:1d:12345 0 EOF", 0, 0x1d, 12345), None, "not a flock");
        assert_eq!(h("3: FLOCK  ADVISORY  WRITE 77 103:02:9 0 EOF", 0x103, 2, 9), Some(77), "hex majors");
    }
}
