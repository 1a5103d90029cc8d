//! Events: sampled, rate-limited records the data plane writes to a ring
//! buffer (`FW_EVENTS`) for the controller, which logs them and keeps the
//! top sources: drops, matches of rules with `log = true`, and SYNs a
//! cookie service answered (for the top sources per service, not logged).
//! The fast path only checks `EventConfig::sample` (and, after a rule
//! matched, the rule's `log` bit) and then tail-calls the event program.

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
    /// Policy slot `rule` indexes.
    pub slot: u8,
    /// The `Reason` of the verdict.
    pub reason: u16,
    /// The rule that matched (index in `slot`), or `NO_RULE`.
    pub rule: u16,
    pub ifindex: u32,
    /// Bytes on the wire.
    pub len: u32,
    /// Records of this class this CPU left out since its previous one
    /// (sampling and the per-second cap): it stands for `1 + skipped`.
    pub skipped: u32,
}

// 64 bytes, no padding: every byte the ring hands userspace is written.
const _: () = assert!(core::mem::size_of::<Event>() == 64);

/// A dropped packet.
pub const EVENT_DROP: u8 = 1;
/// A packet a rule with `log = true` matched (accepted or dropped).
pub const EVENT_LOG: u8 = 2;
/// A SYN a cookie service answered with a cookie (sampled for the top
/// sources per service).
pub const EVENT_SYN: u8 = 3;
/// A proven source a rule's `limit` banned: added to the `ban` set.
pub const EVENT_BAN: u8 = 4;
/// `Event::rule` when no rule matched.
pub const NO_RULE: u16 = u16::MAX;

/// `FW_EVENT_ST` entries, one per record class (each has its sampler and
/// per-second window).
pub const CLASS_DROP: u32 = 0;
pub const CLASS_LOG: u32 = 1;
pub const CLASS_SYN: u32 = 2;
pub const CLASS_BAN: u32 = 3;
pub const EVENT_CLASSES: u32 = 4;

/// `FW_EVENT_CFG[0]`, from the policy's `[settings.events]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventConfig {
    /// 0: no drop events; N: one drop in N is recorded.
    pub sample: u32,
    /// At most this many drop records, and as many SYN records, per second per CPU.
    pub per_second: u32,
    /// At most this many `log = true` records per second per CPU (none sampled out).
    pub log_per_second: u32,
    /// 0: no SYN records; N: one cookie-answered SYN in N is recorded.
    pub syn_sample: u32,
}

/// `FW_EVENT_ARG[0]`, per CPU: what the event program is called for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventArg {
    /// The `Reason` of the verdict.
    pub reason: u32,
    /// The XDP action the event program returns.
    pub action: u32,
    /// Slot and rule index of the rule that matched (`NO_RULE`: none);
    /// only meaningful for a verdict of the rules.
    pub slot: u32,
    pub rule: u32,
    /// Whether that rule has `log = true`.
    pub log: u32,
}

/// `FW_EVENT_ST[class]`, per CPU: the sampler and the per-second window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventState {
    pub window_ns: u64,
    pub in_window: u32,
    /// Left out since the last record.
    pub skipped: u32,
    pub seen: u64,
}

/// Bytes of the ring buffer (a power of two pages).
pub const EVENT_RING_BYTES: u32 = 1 << 18;
