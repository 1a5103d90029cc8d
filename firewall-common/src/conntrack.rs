//! Connection tracking shared by the XDP (ingress) and TC (egress)
//! programs and the controller: the flow key, the per-flow state, the
//! states and their timeouts.

use crate::U128;

/// A flow's state as a packet sees it, for rules' `state` key (bit mask).
pub mod ct_state {
    pub const NEW: u8 = 1;
    pub const ESTABLISHED: u8 = 2;
    pub const RELATED: u8 = 4;
    pub const INVALID: u8 = 8;
    pub const ANY: u8 = NEW | ESTABLISHED | RELATED | INVALID;
}

/// What the policy does with packets of a state before any rule
/// (`settings.established`, `.related`, `.invalid`).
pub const STATE_ACCEPT: u8 = 0;
pub const STATE_DROP: u8 = 1;
/// Evaluate the rules, whose `state` key can match this state.
pub const STATE_RULES: u8 = 2;

/// TCP states, modelled on nftables' conntrack (a subset: LAST_ACK and
/// CLOSE_WAIT fold into `FIN_WAIT`, which tracks each side's FIN).
pub const TCP_SYN_SENT: u8 = 1;
/// SYNs seen from both sides (simultaneous open) or a SYN-ACK seen.
pub const TCP_SYN_RECV: u8 = 2;
pub const TCP_ESTABLISHED: u8 = 3;
/// At least one FIN seen.
pub const TCP_FIN_WAIT: u8 = 4;
/// FINs from both sides seen.
pub const TCP_TIME_WAIT: u8 = 5;
/// An in-window RST seen.
pub const TCP_CLOSE: u8 = 6;
/// UDP or ICMP flow with packets seen in one direction only.
pub const UDP_UNREPLIED: u8 = 7;
/// UDP or ICMP flow with packets seen in both directions.
pub const UDP_REPLIED: u8 = 8;
pub const CT_STATE_COUNT: usize = 9;

pub const fn state_name(state: u8) -> &'static str {
    match state {
        TCP_SYN_SENT => "syn_sent",
        TCP_SYN_RECV => "syn_recv",
        TCP_ESTABLISHED => "established",
        TCP_FIN_WAIT => "fin_wait",
        TCP_TIME_WAIT => "time_wait",
        TCP_CLOSE => "close",
        UDP_UNREPLIED => "unreplied",
        UDP_REPLIED => "replied",
        _ => "unknown",
    }
}

/// Idle timeouts in seconds (`[settings.timeouts]`), modelled on nftables'
/// defaults.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn_sent: u32,
    pub tcp_syn_recv: u32,
    pub tcp_established: u32,
    pub tcp_fin_wait: u32,
    pub tcp_time_wait: u32,
    pub tcp_close: u32,
    pub udp: u32,
    pub udp_stream: u32,
    pub icmp: u32,
    pub _pad: u32,
}

impl Timeouts {
    /// nftables' values; `tcp_established` is its 5 days: the table is an
    /// LRU map, so idle flows are evicted first when it is full.
    pub const DEFAULT: Timeouts = Timeouts {
        tcp_syn_sent: 120,
        tcp_syn_recv: 60,
        tcp_established: 432_000,
        tcp_fin_wait: 120,
        tcp_time_wait: 120,
        tcp_close: 10,
        udp: 30,
        udp_stream: 120,
        icmp: 30,
        _pad: 0,
    };

    /// Timeout of a flow in `state` (`proto` tells ICMP from UDP).
    #[inline(always)]
    pub fn for_state(&self, state: u8, proto: u8) -> u32 {
        match state {
            TCP_SYN_SENT => self.tcp_syn_sent,
            TCP_SYN_RECV => self.tcp_syn_recv,
            TCP_ESTABLISHED => self.tcp_established,
            TCP_FIN_WAIT => self.tcp_fin_wait,
            TCP_TIME_WAIT => self.tcp_time_wait,
            TCP_CLOSE => self.tcp_close,
            _ if proto == 1 || proto == 58 => self.icmp,
            UDP_REPLIED => self.udp_stream,
            _ => self.udp,
        }
    }
}

/// How long a counted connection closed from outside only (an RST, or
/// a FIN the host has not answered with its own) may idle while no
/// controller sweeps: the host may have dropped that segment (this table
/// does not check checksums), so the count is not freed on `tcp_close` /
/// `tcp_fin_wait`. While a controller sweeps (`FW_SWEPT` is recent) one
/// of the host's own stack (`FLOW_LOCAL`) keeps the established timeout,
/// and the sweep frees it as soon as the host has no socket for it; one
/// whose socket this namespace cannot show (DNAT, a proxy) goes after
/// this long all the same.
pub const COUNTED_CLOSE_SECS: u32 = 600;
/// A sweep this recent (ns, `FW_SWEPT`) means a controller is sweeping.
pub const SWEPT_RECENT_NS: u64 = 60_000_000_000;

/// Whether `f` is a counted connection closed from outside only (see
/// `COUNTED_CLOSE_SECS`).
pub fn closed_from_outside(f: &Flow) -> bool {
    f.flags & FLOW_COUNTED != 0 && (f.state == TCP_CLOSE || (f.state == TCP_FIN_WAIT && f.fins & (1 << (f.local_side & 1)) == 0))
}

/// Whether `f` is closed from outside and the host's own stack had its
/// socket (`FLOW_LOCAL`): kept while a controller sweeps, which frees it
/// once that socket is gone. (Another one's socket never shows here, so
/// the sweep cannot tell it from a connection the host dropped.)
pub fn awaits_socket_check(f: &Flow) -> bool {
    closed_from_outside(f) && f.flags & FLOW_LOCAL != 0
}

/// How long `f` may idle before it goes; `swept`: whether a controller
/// sweeps (asked only for a flow closed from outside).
pub fn flow_timeout(t: &Timeouts, f: &Flow, proto: u8, swept: impl FnOnce() -> bool) -> u32 {
    let normal = t.for_state(f.state, proto);
    if !closed_from_outside(f) {
        normal
    } else if f.flags & FLOW_LOCAL != 0 && swept() {
        t.tcp_established.max(normal)
    } else {
        normal.max(COUNTED_CLOSE_SECS)
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Most flows in the main table (`FW_FLOWS`): flows the host opened and
/// TCP connections that proved themselves (a handshake the host completed,
/// a valid cookie, a socket the host has). The least recently used is
/// evicted beyond this, but nothing an off-path sender can forge lands here.
pub const MAX_FLOWS: u32 = 262_144;
/// Most flows in the table of flows opened from outside and not proven
/// (`FW_REMOTE_FLOWS`): UDP and ICMP echo flows a remote peer started and
/// TCP handshakes a remote SYN started. A spoofed flood churns this table
/// only; a handshake moves to the main table once it completes.
pub const MAX_REMOTE_FLOWS: u32 = 131_072;

/// Slots of `maps::FLOW_HINTS` (a power of two): per slot, how many keys of
/// the main table hash there (`flow_hint`). A slot at 0 means no flow of
/// that slot's keys is in the table, so a lookup can be skipped: a random-
/// source flood's SYNs each miss the main table, and that miss (a random
/// bucket of a 4 MiB array: a cache and TLB miss) was measured at about
/// 200 ns of the 400 a dropped SYN cost. 2^16 slots of 8 bytes stay in
/// cache. A count only ever errs high (an LRU eviction is not seen), which
/// costs a lookup, never a missed flow.
pub const FLOW_HINT_BITS: u32 = 16;
pub const FLOW_HINT_SLOTS: u32 = 1 << FLOW_HINT_BITS;

/// The `maps::FLOW_HINTS` slot of a main-table key: the data plane adds
/// one before each insert (taken off if it fails) and takes one off after
/// each delete it makes; the
/// controller takes one after each delete it makes. (Not keyed: an
/// attacker who aims at busy slots only gets the lookup done.) Part of
/// the pinned layout: a change needs a `LAYOUT_VERSION` bump, or a new
/// controller would read a running data plane's slots wrongly.
#[inline(always)]
pub fn flow_hint(k: &FlowKey) -> u32 {
    let a = k.addr_a.lo ^ k.addr_a.hi.rotate_left(16) ^ k.addr_b.lo.rotate_left(32) ^ k.addr_b.hi.rotate_left(48);
    let mut h = a.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= (k.port_a as u64) << 24 | (k.port_b as u64) << 8 | k.proto as u64;
    h = (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (h >> (64 - FLOW_HINT_BITS)) as u32
}

/// A flow, normalised so both directions give the same key: endpoint `a`
/// is the lower (address, port) pair. For ICMP echo both ports hold the
/// echo identifier.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub addr_a: U128,
    pub addr_b: U128,
    pub port_a: u16,
    pub port_b: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Which endpoint of the key sent a packet.
pub const SIDE_A: u8 = 0;
pub const SIDE_B: u8 = 1;

/// `Flow::wscale` of a side whose SYN carried no window-scale option.
pub const WSCALE_NONE: u8 = 0xff;
/// `Flow::wscale` of a flow picked up mid-stream: its SYNs were never
/// seen, so windows are taken as scaled by the largest factor (14).
pub const WSCALE_UNKNOWN: u8 = 0xfe;
/// nf_conntrack's `MAXACKWINCONST`: how far back an acknowledgment may
/// lie, at least.
pub const MAX_ACK_WINDOW: u32 = 66_000;

/// `Flow::flags`: both sides sent a SYN (simultaneous open).
pub const FLOW_BOTH_SYNS: u8 = 1;
/// `Flow::flags`: opened under a rule with limits (`limit_ref` says
/// which); counted against `max_conns`, or charged to a rate a `ban`
/// moved there, when the handshake proves it.
pub const FLOW_GUARDED: u8 = 2;
/// `Flow::flags`: counted in `FW_CONNS` (until it closes or goes).
pub const FLOW_COUNTED: u8 = 4;
/// `Flow::flags`: made without the rules' judgment of its SYN (from the
/// host's SYN-ACK when the SYN's flow was lost): the XDP program asks the
/// rules at the proof whether a limit counts it.
pub const FLOW_UNJUDGED: u8 = 8;
/// `Flow::flags`: a connection from outside whose handshake was proven
/// (its last ACK echoed the host's ISN, or its cookie was valid).
pub const FLOW_PROVEN: u8 = 16;
/// `Flow::flags`: counted, and the host's own stack had its socket when
/// it was (a request or connected socket at the proof, a cookie handed
/// to a listener, a connection the host had), or has a connected socket
/// for its tuple when the host first sends on it (TC egress): one the
/// controller may
/// stop counting when that socket is gone. Not for a connection DNAT or
/// a proxy takes elsewhere, whose socket this namespace never shows.
pub const FLOW_LOCAL: u8 = 32;
/// `Flow::flags`: a counted flow not known as the host's own whose tuple
/// TC egress has looked up already (once per flow: see FLOW_LOCAL).
pub const FLOW_SOCKET_ASKED: u8 = 64;
/// `Flow::flags`: a SYN from outside passed with the flow unchanged
/// (`Flow::syn_end`): the host's SYN-ACK answering it starts a new
/// handshake on the tuple; no other SYN-ACK does.
pub const FLOW_SYN_PASSED: u8 = 128;

/// Who opened the flow.
pub const ORIGIN_REMOTE: u8 = 0;
pub const ORIGIN_LOCAL: u8 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Flow {
    pub state: u8,
    /// Side (`SIDE_A`/`SIDE_B`) that sent the first packet.
    pub initiator: u8,
    /// `ORIGIN_REMOTE` when first seen on ingress, `ORIGIN_LOCAL` on egress.
    pub origin: u8,
    /// Bit per side: FIN seen from that side.
    pub fins: u8,
    /// Bit per side: `next_seq` of that side is known.
    pub seq_known: u8,
    /// Bit per side: `last_ack` of that side is known.
    pub ack_known: u8,
    /// `FLOW_BOTH_SYNS`, `FLOW_GUARDED`, `FLOW_COUNTED`, `FLOW_UNJUDGED`,
    /// `FLOW_PROVEN`, `FLOW_LOCAL`, `FLOW_SOCKET_ASKED`, `FLOW_SYN_PASSED`.
    pub flags: u8,
    /// The side (`SIDE_A`/`SIDE_B`) that is this host: on ingress a
    /// packet must come from the other one.
    pub local_side: u8,
    /// Per side: the window scale its SYN announced (`WSCALE_NONE`: none;
    /// `WSCALE_UNKNOWN`: the flow was adopted mid-stream).
    pub wscale: [u8; 2],
    /// Bit per side: `max_end` of that side is known.
    pub end_known: u8,
    pub _pad2: u8,
    /// Per side: sequence number after the last byte (or SYN/FIN) it sent.
    pub next_seq: [u32; 2],
    /// Per side: the last acknowledgment number it sent (what it expects next).
    pub last_ack: [u32; 2],
    /// Per side: largest window it advertised, scaled (RFC 7323).
    pub max_window: [u32; 2],
    /// Per side: the highest sequence number it may send, from the other
    /// side's acknowledgment plus window (nf_conntrack's `td_maxend`).
    pub max_end: [u32; 2],
    /// With `FLOW_GUARDED`: the limit it is counted under (`conn_ref`).
    pub limit_ref: u32,
    /// With `FLOW_SYN_PASSED`: the ISN + 1 of the last SYN from outside
    /// that passed on this tuple with the flow unchanged, which only a
    /// SYN-ACK acknowledging it may replace (nf_conntrack's `last_end`).
    pub syn_end: u32,
    pub _pad3: u32,
    /// `bpf_ktime_get_ns()` when created and when last seen.
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
}

impl Flow {
    /// The host's end of `key` and the remote end (address, port).
    #[inline(always)]
    pub fn ends(&self, key: &FlowKey) -> ((U128, u16), (U128, u16)) {
        let a = (key.addr_a, key.port_a);
        let b = (key.addr_b, key.port_b);
        if self.local_side == SIDE_A { (a, b) } else { (b, a) }
    }
}

// The pinned tables' value size: a change needs a `LAYOUT_VERSION` bump
// (88 bytes since layout 9, for `syn_end`).
const _: () = assert!(core::mem::size_of::<Flow>() == 88);
