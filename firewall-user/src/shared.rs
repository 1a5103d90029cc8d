//! BPF arrays of u64 the data plane changes with atomic adds, mapped into
//! this process (`BPF_F_MMAPABLE`) so that the controller's changes are
//! atomic too: a read-modify-write through the map API would lose an add
//! the data plane makes between the read and the write.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use anyhow::{Context as _, Result};
use aya::maps::MapData;

/// `len` u64 slots of a mapped array.
pub struct SharedU64s {
    slots: NonNull<AtomicU64>,
    len: usize,
}

// SAFETY: the slots are atomics in memory shared with the kernel; the
// mapping is owned by this value.
unsafe impl Send for SharedU64s {}

impl SharedU64s {
    /// Maps the first `len` slots of the array `map` (created
    /// `BPF_F_MMAPABLE`, with at least `len` entries).
    pub fn map(map: &MapData, len: usize) -> Result<Self> {
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a shared read-write mapping of the array's memory (the
        // kernel rounds the length up to whole pages); the kernel keeps
        // the map alive while it is mapped.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len * 8, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0) };
        if p == libc::MAP_FAILED {
            return Err(anyhow::Error::from(std::io::Error::last_os_error()).context("cannot map a shared counter array"));
        }
        let slots = NonNull::new(p.cast()).context("mmap returned null")?;
        Ok(Self { slots, len })
    }

    pub fn load(&self, i: u32) -> u64 {
        self.at(i).load(Relaxed)
    }

    pub fn add(&self, i: u32, n: u64) {
        self.at(i).fetch_add(n, Relaxed);
    }

    /// Takes one off slot `i`, never below zero.
    pub fn take_one(&self, i: u32) {
        let _ = self.at(i).try_update(Relaxed, Relaxed, |n| n.checked_sub(1));
    }

    /// Sets slot `i` to `n` only if it is still 0.
    pub fn fill_if_empty(&self, i: u32, n: u64) {
        let _ = self.at(i).compare_exchange(0, n, Relaxed, Relaxed);
    }

    fn at(&self, i: u32) -> &AtomicU64 {
        let i = i as usize % self.len;
        // SAFETY: `i` is inside the mapping, which lives as long as `self`;
        // u64 slots, 8-byte aligned (the mapping is page-aligned).
        unsafe { &*self.slots.as_ptr().add(i) }
    }
}

impl Drop for SharedU64s {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, not used after this.
        unsafe { libc::munmap(self.slots.as_ptr().cast(), self.len * 8) };
    }
}
