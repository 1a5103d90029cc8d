//! Where a firewall's data plane is pinned, so that it outlives its
//! controller, and how a controller takes one over:
//!
//! ```text
//! /sys/fs/bpf/firewall/<netns inode>/<name>/shared/FW_*        policy, flows, keys
//!                                          /iface/<IF>/FW_*    counters, cookie settings
//!                                          /iface/<IF>/link_*  the XDP and TC links
//!                                          /iface/<IF>/progs   the tail-call table
//! ```
//!
//! `<name>` is the first interface the firewall was started on. The
//! controller holds an exclusive `flock` on the firewall's directory while
//! it runs: a second controller for the same interfaces is refused.

use std::{
    fs::{self, File},
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    bpf_sys,
    loader::{self, BPFFS, LINKS, PinPaths},
};

/// This network namespace's directory of firewalls.
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

/// The interfaces a firewall directory has pins for.
pub fn interfaces(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir.join("iface"))
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// Every firewall directory of this network namespace.
pub fn list() -> Result<Vec<(String, PathBuf)>> {
    let root = netns_dir()?;
    let mut out: Vec<(String, PathBuf)> = fs::read_dir(&root)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    Ok(out)
}

/// The firewall directory with pins for `iface`, if any.
pub fn find(iface: &str) -> Result<Option<(String, PathBuf)>> {
    Ok(list()?.into_iter().find(|(_, dir)| dir.join("iface").join(iface).is_dir()))
}

/// Tries to lock `dir` exclusively; `None` when a controller holds it.
fn try_lock(dir: &Path) -> Result<Option<File>> {
    let f = File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(Some(f));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(None);
    }
    Err(err).with_context(|| format!("cannot lock {}", dir.display()))
}

/// Whether a controller holds `dir`'s lock now.
pub fn controller_alive(dir: &Path) -> bool {
    matches!(try_lock(dir), Ok(None))
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
                let name = ifaces.first().context("no interface")?.clone();
                let dir = netns_dir()?.join(&name);
                make_dir(&dir.join("shared"))?;
                (name, dir, true)
            }
        };
        let Some(lock) = try_lock(&dir)? else {
            bail!("another controller runs the firewall `{name}` (pins at {}); stop it first, or use `firewall status`", dir.display());
        };
        let mut inst = Self { name, dir, created, _lock: lock };
        // Pins whose every interface is gone (a network namespace that died,
        // and whose inode number came back) hold no state worth keeping.
        if !inst.created && !instance_live(&inst) {
            log::warn!("the pins at {} belong to interfaces that are gone; starting afresh", inst.dir.display());
            remove_dir(&inst.dir.join("iface"));
            remove_dir(&inst.dir.join("shared"));
            make_dir(&inst.dir.join("shared"))?;
            inst.created = true;
        }
        Ok(inst)
    }

    pub fn pin_paths(&self, iface: &str) -> PinPaths {
        PinPaths { shared: self.dir.join("shared"), iface: self.iface_dir(iface) }
    }

    pub fn iface_dir(&self, iface: &str) -> PathBuf {
        self.dir.join("iface").join(iface)
    }

    /// Makes the interface's directory (where `PinPaths::iface` points).
    pub fn prepare(&self, iface: &str) -> Result<()> {
        make_dir(&self.iface_dir(iface))
    }

    /// The pinned links of `iface`, when all three are there and live on
    /// the interface of that name. Pins that do not (the interface was
    /// removed or recreated) are removed: that interface starts afresh.
    pub fn live_links(&self, iface: &str) -> Result<Option<Vec<OwnedFd>>> {
        let d = self.iface_dir(iface);
        if !d.join(LINKS[0]).exists() {
            return Ok(None);
        }
        let want = loader::ifindex(iface).ok();
        let mut links = Vec::new();
        for name in LINKS {
            let fd = match bpf_sys::obj_get(&d.join(name)) {
                Ok(fd) => fd,
                Err(e) => {
                    log::warn!("{iface}: pinned link {name} unusable ({e}); attaching afresh");
                    remove_dir(&d);
                    return Ok(None);
                }
            };
            let info = bpf_sys::link_info(std::os::fd::AsFd::as_fd(&fd))?;
            if info.ifindex == 0 || Some(info.ifindex) != want {
                log::warn!("{iface}: the pinned firewall belonged to an interface that is gone; attaching afresh");
                remove_dir(&d);
                return Ok(None);
            }
            links.push(fd);
        }
        Ok(Some(links))
    }

    /// Removes what was pinned for `iface`; its programs detach once no
    /// process holds their links.
    pub fn remove_iface(&self, iface: &str) {
        remove_dir(&self.iface_dir(iface));
    }

    /// Removes every pin of this firewall.
    pub fn remove(&self) {
        remove_dir(&self.dir);
        // The namespace's directory, once its last firewall is gone.
        if let Some(parent) = self.dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// Creates `dir` and its parents below /sys/fs/bpf as 0700, and checks
/// that each (new or not) belongs to this user and is writable by no
/// other: /sys/fs/bpf is often world-writable (1777), and a directory
/// another user made there could squat or lock a firewall's pins.
fn make_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    let root = Path::new(BPFFS);
    let rel = dir.strip_prefix(root).with_context(|| format!("{} is not under {BPFFS}", dir.display()))?;
    let mut path = root.to_path_buf();
    // SAFETY: no arguments.
    let euid = unsafe { libc::geteuid() };
    for part in rel.components() {
        path.push(part);
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
        }
        let m = fs::symlink_metadata(&path).with_context(|| format!("cannot stat {}", path.display()))?;
        if !m.is_dir() || m.uid() != euid || m.mode() & 0o022 != 0 {
            bail!("{} is not a directory of this user's that only it can write (uid {}, mode {:o}); remove it and start again", path.display(), m.uid(), m.mode() & 0o7777);
        }
    }
    Ok(())
}

/// Whether any interface of the firewall still has its pinned XDP link live
/// on the interface of that name.
fn instance_live(inst: &Instance) -> bool {
    interfaces(&inst.dir).iter().any(|iface| {
        let Ok(fd) = bpf_sys::obj_get(&inst.iface_dir(iface).join(LINKS[0])) else { return false };
        let want = loader::ifindex(iface).ok();
        bpf_sys::link_info(std::os::fd::AsFd::as_fd(&fd)).is_ok_and(|i| i.ifindex != 0 && Some(i.ifindex) == want)
    })
}

/// Removes a directory of pins, depth first (bpffs has no recursive unlink).
pub fn remove_dir(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                remove_dir(&p);
            } else {
                let _ = fs::remove_file(&p);
            }
        }
    }
    let _ = fs::remove_dir(dir);
}
