//! Drop events: sampled, rate-limited records the data plane writes to a
//! ring buffer (`FW_EVENTS`) for the controller, which logs them and keeps
//! the top sources. The fast path only checks `EventConfig::sample` and, for
//! a drop when events are on, tail-calls the event program.

use crate::U128;

/// One record in `FW_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Event {
    /// `CLOCK_MONOTONIC` ns.
    pub ts_ns: u64,
    /// Addresses as in flow keys (IPv4 mapped into `::ffff:0:0/96`); all
    /// zero when the frame did not parse.
    pub src: U128,
    pub dst: U128,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    /// `EVENT_*`.
    pub kind: u8,
    pub _pad: u8,
    /// The `Reason` of the verdict.
    pub reason: u32,
    pub ifindex: u32,
    /// Bytes on the wire.
    pub len: u32,
    /// Drops this CPU left out since the previous record (sampling and the
    /// per-second cap): the record stands for `1 + skipped` drops.
    pub skipped: u32,
}

// 64 bytes, no padding: every byte the ring hands userspace is written.
const _: () = assert!(core::mem::size_of::<Event>() == 64);

pub const EVENT_DROP: u8 = 1;

/// `FW_EVENT_CFG[0]`, from the policy's `[settings.events]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventConfig {
    /// 0: no events; N: one drop in N is recorded.
    pub sample: u32,
    /// At most this many records per second per CPU.
    pub per_second: u32,
}

/// `FW_EVENT_STATE[0]`, per CPU: the sampler and the per-second window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventState {
    pub window_ns: u64,
    pub in_window: u32,
    /// Drops seen since the last record.
    pub skipped: u32,
    pub seen: u64,
}

/// Bytes of the ring buffer (a power of two pages).
pub const EVENT_RING_BYTES: u32 = 1 << 18;
