//! The compiled policy as the XDP program reads it.
//!
//! Rules are compiled into a decision tree (HyperSplit-style: every inner
//! node splits one field at a threshold) whose leaves hold at most
//! `MAX_LEAF_BOXES` match boxes, scanned in rule order. See
//! `firewall-user/src/compile.rs` for why a tree and how it is built.
//!
//! Field values are unsigned integers so that every match is a range test:
//! addresses are 128-bit, IPv4 mapped into `::ffff:0:0/96` (the compiler
//! keeps IPv6 ranges out of that block, so the families never mix); for
//! ICMP and ICMPv6 the type and code stand in the source and destination
//! port fields.

use crate::limits::RULE_NAME_LEN;

pub const ACTION_ACCEPT: u8 = 0;
pub const ACTION_DROP: u8 = 1;

/// Field numbers a tree node can split on.
pub const DIM_SRC: u32 = 0;
pub const DIM_DST: u32 = 1;
pub const DIM_SPORT: u32 = 2;
pub const DIM_DPORT: u32 = 3;
pub const DIM_PROTO: u32 = 4;
pub const DIMS: usize = 5;

/// A child reference with this bit set is a leaf: bits 24..31 hold the box
/// count, bits 0..24 the first entry in `LEAF_REFS`. Otherwise it is the
/// index of an inner node.
pub const NODE_LEAF: u32 = 1 << 31;
pub const LEAF_COUNT_SHIFT: u32 = 24;
pub const LEAF_COUNT_MASK: u32 = 0x7f;
pub const LEAF_START_MASK: u32 = 0x00ff_ffff;

pub const fn leaf_ref(start: u32, count: u32) -> u32 {
    NODE_LEAF | ((count & LEAF_COUNT_MASK) << LEAF_COUNT_SHIFT) | (start & LEAF_START_MASK)
}

/// TCP flag bits as they appear in byte 13 of the TCP header.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// A 128-bit value as two host-order halves (the BPF ISA has no u128).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct U128 {
    pub hi: u64,
    pub lo: u64,
}

impl U128 {
    pub const fn from_u128(v: u128) -> Self {
        Self { hi: (v >> 64) as u64, lo: v as u64 }
    }
    pub const fn to_u128(self) -> u128 {
        ((self.hi as u128) << 64) | self.lo as u128
    }
    /// `self <= other`, written so the BPF backend needs no 128-bit ops.
    #[inline(always)]
    pub fn le(&self, other: &U128) -> bool {
        self.hi < other.hi || (self.hi == other.hi && self.lo <= other.lo)
    }
}

/// `FW_ACTIVE[0]`: which policy slot the XDP program reads, and who wrote it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Active {
    pub slot: u32,
    pub _pad: u32,
    /// Inode of the controller's network namespace.
    pub netns_ino: u64,
    /// Incremented on every successful load or reload.
    pub generation: u64,
}

/// `FW_POLICY[slot]`: settings and tree root of one policy slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PolicyHeader {
    /// 0 when the slot holds no policy.
    pub loaded: u8,
    pub default_action: u8,
    pub fragment_action: u8,
    /// `STATE_ACCEPT`, `STATE_DROP` or `STATE_RULES` for established packets.
    pub established: u8,
    pub rule_count: u32,
    /// Root of the tree: a node index or a leaf reference.
    pub root: u32,
    /// As `established`, for related and invalid packets.
    pub related: u8,
    pub invalid: u8,
    pub _pad: [u8; 2],
    pub timeouts: crate::conntrack::Timeouts,
}

/// `FW_NODES[slot * MAX_NODES + i]`: go left when `key[dim] <= threshold`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Node {
    pub dim: u32,
    pub left: u32,
    pub right: u32,
    pub _pad: u32,
    pub threshold: U128,
}

/// `FW_BOXES[slot * MAX_BOXES + i]`: one conjunction of field ranges of a
/// rule (inclusive bounds) plus its TCP flags test.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatchBox {
    pub src_lo: U128,
    pub src_hi: U128,
    pub dst_lo: U128,
    pub dst_hi: U128,
    pub sport_lo: u16,
    pub sport_hi: u16,
    pub dport_lo: u16,
    pub dport_hi: u16,
    pub proto_lo: u8,
    pub proto_hi: u8,
    /// Matches when `flags & mask == value` (mask 0: any packet, any protocol).
    pub tcp_flags_mask: u8,
    pub tcp_flags_value: u8,
    pub action: u8,
    /// `ct_state` bits this box matches.
    pub state_mask: u8,
    /// `SYNCOOKIE_*` mode of the rule (accepting TCP rules only).
    pub syncookie: u8,
    /// 1: the rule has `log = true` (its matches become events).
    pub log: u8,
    /// 0, or 1 + the id of the set the source (`src_set`) or destination
    /// must also be in (`rules::matches` looks it up in `FW_SET_ELEMS`).
    pub src_set: u8,
    pub dst_set: u8,
    /// 1: the rule has a per-source `limit` (`FW_RULE_LIMIT`): a rate,
    /// a connection cap, or both.
    pub limited: u8,
    /// 0, or 1 + the id of the port set (`FW_PORT_SETS`) the source or
    /// destination port must also be in.
    pub sport_set: u8,
    pub dport_set: u8,
    pub _pad: [u8; 3],
    /// Index of the policy rule (its counters and name).
    pub rule: u32,
    pub _pad2: u32,
}

/// `FW_RULE_META[slot * MAX_RULES + rule]`: written by the controller, read by `stats`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RuleMeta {
    pub name: [u8; RULE_NAME_LEN],
    pub action: u8,
    /// `SYNCOOKIE_*` mode of the rule.
    pub syncookie: u8,
    /// 1: `log = true` (read by the cookie SYN program, which has only the index).
    pub log: u8,
    /// 1: the rule has a `limit` (its refusals are in `FW_LIMIT_CNT`).
    pub limited: u8,
    pub _pad: [u8; 4],
}

impl Default for RuleMeta {
    fn default() -> Self {
        Self { name: [0; RULE_NAME_LEN], action: 0, syncookie: 0, log: 0, limited: 0, _pad: [0; 4] }
    }
}

/// `FW_RULE_LIMIT[slot * MAX_RULES + rule]`: a rule's per-source limits.
/// The rate is GCRA (the token bucket as a theoretical arrival time): one
/// new connection per `interval_ns`, up to `burst` at once. The cap counts
/// the source's proven TCP connections (`FW_CONNS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleLimit {
    /// 0: no rate limit.
    pub interval_ns: u64,
    /// `interval_ns * (burst - 1)`: how far ahead of now a source's
    /// theoretical arrival time may run.
    pub tolerance_ns: u64,
    /// Source prefix lengths a bucket (and a connection count) covers,
    /// per family.
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    pub _pad: [u8; 2],
    /// The policy generation that wrote it: part of the bucket key, so a
    /// reload starts every bucket again (a rule never inherits the state
    /// of the rule that had its index two reloads ago).
    pub epoch: u32,
    /// `max_conns`: most proven, open TCP connections per source prefix
    /// (0: no cap).
    pub max_conns: u32,
    /// `ban`: 1 + the id of the set a proven source that passes a limit
    /// is added to (0: no ban). With a ban, the rate is charged when a
    /// connection is proven, not on its SYN.
    pub ban_set: u32,
    /// How long a ban lasts.
    pub ban_ns: u64,
}

/// `FW_BUCKETS` and `FW_CONNS` key: a rule (slot * MAX_RULES + rule), the
/// policy generation, and a source prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BucketKey {
    pub rule: u32,
    /// `RuleLimit::epoch` (in `FW_CONNS`: its low `CONN_EPOCH_BITS`).
    pub epoch: u32,
    pub src: U128,
}

/// `Flow::limit_ref` packs the rule index (slot * MAX_RULES + rule, below
/// 2^15) and the low bits of the epoch of the limit a flow is counted under.
pub const CONN_INDEX_BITS: u32 = 15;
pub const CONN_EPOCH_BITS: u32 = 32 - CONN_INDEX_BITS;
const _: () = assert!(crate::POLICY_SLOTS * crate::MAX_RULES <= 1 << CONN_INDEX_BITS);

/// The `Flow::limit_ref` of rule `index` under limits of generation `epoch`.
#[inline(always)]
pub fn conn_ref(index: u32, epoch: u32) -> u32 {
    (epoch << CONN_INDEX_BITS) | (index & ((1 << CONN_INDEX_BITS) - 1))
}

/// The rule index and the (truncated) epoch of a `Flow::limit_ref`.
#[inline(always)]
pub fn conn_ref_parts(r: u32) -> (u32, u32) {
    (r & ((1 << CONN_INDEX_BITS) - 1), r >> CONN_INDEX_BITS)
}

/// The truncated epoch `FW_CONNS` keys and `Flow::limit_ref` carry.
#[inline(always)]
pub fn conn_epoch(epoch: u32) -> u32 {
    epoch & ((1 << CONN_EPOCH_BITS) - 1)
}

/// `a` with all but its first `bits` bits cleared.
#[inline(always)]
pub fn masked(a: &U128, bits: u32) -> U128 {
    let keep = |v: u64, n: u32| if n == 0 { 0 } else if n >= 64 { v } else { v & (u64::MAX << (64 - n)) };
    U128 { hi: keep(a.hi, if bits < 64 { bits } else { 64 }), lo: keep(a.lo, bits.saturating_sub(64)) }
}

/// The prefix length (of 128: IPv4 mapped) a limit counts `src` under.
#[inline(always)]
pub fn limit_bits(limit: &RuleLimit, src: &U128) -> u32 {
    if crate::family_of(src) == crate::SET_FAMILY_V4 { 96 + limit.v4_prefix as u32 } else { limit.v6_prefix as u32 }
}

/// Per-CPU packet and byte counts (`FW_RULE_CNT`, `FW_REASON_CNT`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// `FW_LIMIT_CNT[slot * MAX_RULES + rule]`, per CPU: what a rule's limits
/// refused (every refusal also counts in the rule's own counter, which
/// judged the packet, and in the reason's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitCounters {
    /// Refused over the rate (`rate_limited`).
    pub rate_limited: u64,
    /// Refused at `max_conns` (`conn_limited`).
    pub conn_limited: u64,
}

/// Words of a `PortBits`: one bit per port.
pub const PORT_WORDS: usize = 1024;

/// A set of TCP ports, one bit each (port `p`: bit `p % 64` of word
/// `p / 64`), read with one map lookup and a masked index.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PortBits {
    pub words: [u64; PORT_WORDS],
}

impl PortBits {
    pub const EMPTY: PortBits = PortBits { words: [0; PORT_WORDS] };
    pub const ALL: PortBits = PortBits { words: [u64::MAX; PORT_WORDS] };

    #[inline(always)]
    pub fn has(&self, port: u16) -> bool {
        self.words[(port >> 6) as usize & (PORT_WORDS - 1)] & (1 << (port & 63)) != 0
    }

    pub fn add(&mut self, port: u16) {
        self.words[(port >> 6) as usize] |= 1 << (port & 63);
    }

    /// Adds `lo..=hi`.
    pub fn add_range(&mut self, lo: u16, hi: u16) {
        for port in lo..=hi {
            self.add(port);
        }
    }

    /// Removes `lo..=hi`.
    pub fn remove_range(&mut self, lo: u16, hi: u16) {
        for port in lo..=hi {
            self.words[(port >> 6) as usize] &= !(1 << (port & 63));
        }
    }

    /// How many ports it holds.
    pub fn count(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain `#[repr(C)]` integers, no padding the kernel could leak
    // (explicit `_pad` fields), valid for every bit pattern.
    unsafe impl aya::Pod for Active {}
    unsafe impl aya::Pod for PolicyHeader {}
    unsafe impl aya::Pod for Node {}
    unsafe impl aya::Pod for MatchBox {}
    unsafe impl aya::Pod for PortBits {}
    unsafe impl aya::Pod for RuleMeta {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for LimitCounters {}
    unsafe impl aya::Pod for RuleLimit {}
    unsafe impl aya::Pod for BucketKey {}
    unsafe impl aya::Pod for crate::sets::SetAddr {}
    unsafe impl aya::Pod for crate::sets::SetHost {}
    unsafe impl aya::Pod for crate::sets::SetElem {}
    unsafe impl aya::Pod for crate::sets::SetDef {}
    unsafe impl aya::Pod for crate::conntrack::FlowKey {}
    unsafe impl aya::Pod for crate::conntrack::Flow {}
    unsafe impl aya::Pod for crate::conntrack::Timeouts {}
    unsafe impl aya::Pod for crate::cookie::CookieKey {}
    unsafe impl aya::Pod for crate::cookie::CookieConfig {}
    unsafe impl aya::Pod for crate::cookie::CookieCounters {}
    unsafe impl aya::Pod for crate::U128 {}
    unsafe impl aya::Pod for crate::control::Control {}
    unsafe impl aya::Pod for crate::control::IfaceInfo {}
    unsafe impl aya::Pod for crate::control::RuleBase {}
    unsafe impl aya::Pod for crate::events::Event {}
    unsafe impl aya::Pod for crate::events::EventConfig {}
}
