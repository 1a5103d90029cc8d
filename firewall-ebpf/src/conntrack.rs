//! Connection tracking in the fast path: the TCP handshake and teardown,
//! UDP and ICMP echo flows, ICMP errors related to a flow. Shared by the
//! XDP ingress program and the TC egress program, which both see every
//! packet of a flow through this host, one direction each.

use aya_ebpf::{
    bindings::{bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2},
    cty::c_void,
    helpers::{bpf_ktime_get_ns, bpf_sk_release, bpf_skc_lookup_tcp},
};
use firewall_common::{
    Flow, FlowKey, MAX_ACK_WINDOW, ORIGIN_LOCAL, ORIGIN_REMOTE, Reason, SIDE_A, SIDE_B, TCP_CLOSE, U128, WSCALE_UNKNOWN,
    TCP_ESTABLISHED, TCP_FIN_WAIT, TCP_SYN_RECV, TCP_SYN_SENT, TCP_TIME_WAIT, Timeouts,
    FLOW_BOTH_SYNS, FLOW_COUNTED, FLOW_GUARDED, FLOW_LOCAL, FLOW_PROVEN, FLOW_SOCKET_ASKED, FLOW_SYN_PASSED, FLOW_UNJUDGED, UDP_REPLIED, UDP_UNREPLIED, WSCALE_NONE, tcp_flags::{ACK, FIN, RST, SYN},
};

use crate::{
    FW_FLOWS, FW_FLOW_HINT, FW_REMOTE_FLOWS, counters, limit,
    parse::{Frame, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Key, Packet, icmp_quoted},
};

/// What a packet is to the connection table.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ct {
    /// Opens a flow (or is not tracked): the rules decide.
    New,
    /// As `New`, and no flow of its tuple was found (in the tables
    /// searched): `open` need not look again.
    NoFlow,
    /// A retransmitted SYN of a handshake the table already follows: new
    /// to the rules, but never answered with a cookie (the flow exists).
    SynAgain,
    /// A SYN on the tuple of a live flow: it never ends the flow. It passes
    /// with the flow unchanged, as nf_conntrack ignores a SYN on an
    /// established connection, for the host (or the DNAT destination, whose
    /// socket no lookup here shows) to answer: an RFC 5961 challenge ACK
    /// while the connection lives, the TIME-WAIT socket's decision, or a
    /// SYN-ACK with a new ISN when the old connection died unseen, which is
    /// `SynReuse` on egress and starts the new handshake. The caller
    /// decides with `socket_state`.
    SynInFlow,
    /// A SYN on a `time_wait`/`close` flow whose sequence is not beyond the
    /// old connection's: as `SynInFlow`, except that where the host has no
    /// connection for the tuple (a TIME-WAIT socket, a listener or nothing:
    /// DNAT), the rules judge it as new (as nf_conntrack reopens from
    /// TIME_WAIT and CLOSE: a closed flow has no connection left to protect,
    /// and an unjudged SYN would pass the rule's limits), the old flow kept:
    /// the TIME-WAIT socket (the host's or the destination's) decides, and
    /// the client's RST may still need to meet the old flow.
    SynInClosed,
    /// A SYN on a `time_wait`/`close` flow whose sequence lies beyond
    /// everything the old connection sent: the kernel's TIME-WAIT reuse
    /// rule (`tcp_timewait_state_process`) accepts it as a new connection.
    /// On egress also the host's SYN-ACK on such a flow (its TIME-WAIT
    /// socket accepted a SYN, which the kernel also allows by timestamps).
    SynReuse,
    Established,
    /// The last ACK of a handshake that proves its source, refused by the
    /// rule's limit (`max_conns`, or a rate a `ban` charges here): dropped,
    /// the flow left half-open (a retransmission is judged again). With the
    /// rule's index (slot * MAX_RULES + rule).
    Refused(Reason),
    /// As `Established`: the first packet from outside of a connection the
    /// host brought back (its flow was lost and adopted on egress); the
    /// caller has the rules count it (`count_rejoined`).
    Rejoined,
    Related,
    Invalid(Reason),
}

/// What the rules say of the SYN a connection whose SYN they did not see
/// claims to follow: accepted (with the `limit_ref` of the rule when it
/// has limits), or dropped (by a rule, slot * MAX_RULES +
/// rule, or by the policy's default). One word: returned in one register
/// should the compiler not inline the judge (BPF returns only R0).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Judged(u64);

impl Judged {
    const ACCEPT_REF: u64 = 1 << 32;
    const DROP_RULE: u64 = 2 << 32;
    const DROP_DEFAULT: u64 = 3 << 32;
    pub const ACCEPT: Judged = Judged(0);

    #[inline(always)]
    pub fn accept(limit_ref: Option<u32>) -> Self {
        match limit_ref {
            Some(r) => Judged(Self::ACCEPT_REF | r as u64),
            None => Self::ACCEPT,
        }
    }

    #[inline(always)]
    pub fn drop_by(rule_index: u32) -> Self {
        Judged(Self::DROP_RULE | rule_index as u64)
    }

    pub const DROP_DEFAULT_ACTION: Judged = Judged(Self::DROP_DEFAULT);

    /// Accepted: the `limit_ref`, if any. `Err`: dropped, with the reason
    /// and the rule (`NO_RULE_INDEX` for the default).
    #[inline(always)]
    pub fn verdict(self) -> Result<Option<u32>, (Reason, u32)> {
        match self.0 & (3 << 32) {
            0 => Ok(None),
            Self::ACCEPT_REF => Ok(Some(self.0 as u32)),
            Self::DROP_RULE => Err((Reason::RuleDrop, self.0 as u32)),
            _ => Err((Reason::DefaultDrop, NO_RULE_INDEX)),
        }
    }
}

/// `Judged::Drop` and `Ct::Refused` without a rule: the policy's default.
pub const NO_RULE_INDEX: u32 = u32::MAX;

/// Which program sees the packet: the XDP ingress or the TC egress one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Ingress,
    Egress,
}

const NS_PER_SEC: u64 = 1_000_000_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    /// UDP, or ICMP echo (keyed by its identifier).
    Datagram,
    /// ICMP error: related to the flow it quotes.
    IcmpError,
    Untracked,
}

#[inline(always)]
fn kind(key: &Key) -> Kind {
    match key.proto {
        IPPROTO_TCP => Kind::Tcp,
        IPPROTO_UDP => Kind::Datagram,
        // Echo request/reply; destination unreachable, time exceeded, parameter problem.
        IPPROTO_ICMP => match key.sport {
            0 | 8 => Kind::Datagram,
            3 | 11 | 12 => Kind::IcmpError,
            _ => Kind::Untracked,
        },
        // Echo request/reply; unreachable, packet too big, time exceeded, parameter problem.
        IPPROTO_ICMPV6 => match key.sport {
            128 | 129 => Kind::Datagram,
            1..=4 => Kind::IcmpError,
            _ => Kind::Untracked,
        },
        _ => Kind::Untracked,
    }
}

/// The normalised key of the flow `key` belongs to, and the side its
/// source is on. ICMP echo uses its identifier as both ports.
#[inline(always)]
pub fn flow_key(key: &Key, icmp_id: u16) -> (FlowKey, u8) {
    let (sport, dport) = match key.proto {
        IPPROTO_ICMP | IPPROTO_ICMPV6 => (icmp_id, icmp_id),
        _ => (key.sport, key.dport),
    };
    let src_first = key.src.hi < key.dst.hi
        || (key.src.hi == key.dst.hi && (key.src.lo < key.dst.lo || (key.src.lo == key.dst.lo && sport <= dport)));
    if src_first {
        (FlowKey { addr_a: key.src, addr_b: key.dst, port_a: sport, port_b: dport, proto: key.proto, _pad: [0; 3] }, SIDE_A)
    } else {
        (FlowKey { addr_a: key.dst, addr_b: key.src, port_a: dport, port_b: sport, proto: key.proto, _pad: [0; 3] }, SIDE_B)
    }
}

/// Impossible flag combinations (nf_conntrack's `tcp_valid_flags`):
/// SYN+FIN, SYN+RST, and any segment but a SYN or an RST without ACK
/// (FIN, PSH or URG alone, XMAS, NULL). With ACK, a FIN with urgent data
/// is legal.
#[inline(always)]
fn bad_flags(flags: u8) -> bool {
    flags & (SYN | FIN) == (SYN | FIN) || flags & (SYN | RST) == (SYN | RST) || flags & (SYN | RST | ACK) == 0
}

/// Per-side array access by branch, not by index: LLVM turns `&a[side]`
/// into `base | side * 4`, and the verifier forbids bit operations on
/// pointers.
#[inline(always)]
fn get<T: Copy>(a: &[T; 2], side: usize) -> T {
    if side == 0 { a[0] } else { a[1] }
}

#[inline(always)]
fn set<T: Copy>(a: &mut [T; 2], side: usize, v: T) {
    if side == 0 { a[0] = v } else { a[1] = v }
}

/// `a` is after `b` in sequence space.
#[inline(always)]
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper with no arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Where a flow lives: the main table, or the table of flows opened from
/// outside and not proven yet (see `MAX_REMOTE_FLOWS`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Table {
    Main,
    Remote,
}

/// Looks up the flow in the main table, then (unless `main_only`) in the
/// remote one, dropping it when it has been idle past its timeout. The
/// clock is read only when a flow is found (most of a flood finds none).
#[inline(always)]
fn lookup(fk: &FlowKey, timeouts: &Timeouts, main_only: bool, skip_main: bool) -> Option<(*mut Flow, Table, u64)> {
    let main = if skip_main { None } else { FW_FLOWS.get_ptr_mut(fk) };
    let (flow, table) = match main {
        Some(f) => (f, Table::Main),
        None if main_only => return None,
        None => (FW_REMOTE_FLOWS.get_ptr_mut(fk)?, Table::Remote),
    };
    // SAFETY: a valid map value pointer for the duration of this program.
    let f = unsafe { &mut *flow };
    let now = now_ns();
    let swept = || crate::FW_SWEPT.get(0).is_some_and(|&t| t != 0 && now.saturating_sub(t) < firewall_common::SWEPT_RECENT_NS);
    let timeout = firewall_common::flow_timeout(timeouts, f, fk.proto, swept) as u64 * NS_PER_SEC;
    if now.saturating_sub(f.last_seen_ns) > timeout {
        // Released only by the side whose delete succeeds (the sweep
        // deletes expired flows too).
        let mut gone = *f;
        if remove(fk, table) {
            limit::release(&mut gone, fk);
        }
        return None;
    }
    Some((flow, table, now))
}

/// False when `fk`'s hint slot says the main table holds no key of that
/// slot (`firewall_common::flow_hint`), so a lookup would miss.
#[inline(always)]
fn maybe_main(fk: &FlowKey) -> bool {
    FW_FLOW_HINT.get(firewall_common::flow_hint(fk)).is_none_or(|n| *n != 0)
}

/// The main table holds no flow of `key`'s tuple: its hint slot is empty.
#[inline(always)]
pub fn surely_no_main_flow(key: &Key) -> bool {
    !maybe_main(&flow_key(key, 0).0)
}

/// Counts a key into (`1`) or out of (`u64::MAX`) its hint slot: before
/// a main-table insert (undone if it fails), after a delete that succeeded.
#[inline(always)]
fn hint(fk: &FlowKey, v: u64) {
    if let Some(n) = FW_FLOW_HINT.get_ptr_mut(firewall_common::flow_hint(fk)) {
        counters::atomic_add(n, v);
    }
}

/// A main-table delete; true when this call deleted the flow.
#[inline(always)]
fn remove_main(fk: &FlowKey) -> bool {
    let gone = FW_FLOWS.remove(fk).is_ok();
    if gone {
        hint(fk, u64::MAX);
    }
    gone
}

/// Whether this call deleted the flow.
#[inline(always)]
fn remove(fk: &FlowKey, table: Table) -> bool {
    match table {
        Table::Main => remove_main(fk),
        Table::Remote => FW_REMOTE_FLOWS.remove(fk).is_ok(),
    }
}

/// Whether it was inserted.
#[inline(always)]
fn insert(fk: &FlowKey, flow: &Flow, table: Table) -> bool {
    // BPF_NOEXIST: a flow another CPU just created is kept.
    match table {
        Table::Main => insert_main(fk, flow, 1),
        Table::Remote => FW_REMOTE_FLOWS.insert(fk, flow, 1).is_ok(),
    }
}

/// A main-table insert, counted into the key's hint slot before it is in
/// (so that no SYN on another CPU finds the slot empty while the key is
/// there) and taken off again if it failed. An update of a key already
/// there errs high: harmless.
#[inline(always)]
fn insert_main(fk: &FlowKey, flow: &Flow, flags: u64) -> bool {
    hint(fk, 1);
    let done = FW_FLOWS.insert(fk, flow, flags).is_ok();
    if !done {
        hint(fk, u64::MAX);
    }
    done
}

/// Moves a flow that proved itself into the main table, where no flood
/// of unproven flows can evict it.
#[inline(always)]
fn promote(fk: &FlowKey, f: &Flow) {
    let copy = *f;
    let _ = insert_main(fk, &copy, 0);
    let _ = FW_REMOTE_FLOWS.remove(fk);
}

/// Sequence space a TCP segment occupies: data plus one for SYN and FIN.
#[inline(always)]
fn segment_len(packet: &Packet) -> u32 {
    let flags = packet.key.tcp_flags;
    let data = packet.l4_len.saturating_sub(packet.tcp.header_len as usize) as u32;
    data + u32::from(flags & SYN != 0) + u32::from(flags & FIN != 0)
}

/// The window in a segment from side `s`, scaled as RFC 7323 says:
/// never in a SYN, and only when both SYNs carried the option. A side
/// adopted mid-stream (`WSCALE_UNKNOWN`) is taken at the largest scale.
#[inline(always)]
fn scaled_window(f: &Flow, s: usize, packet: &Packet) -> u32 {
    let scaled = packet.key.tcp_flags & SYN == 0 && f.wscale[0] != WSCALE_NONE && f.wscale[1] != WSCALE_NONE;
    let shift = if scaled { (get(&f.wscale, s) as u32 & 15).min(14) } else { 0 };
    (packet.tcp.window as u32) << shift
}

/// nf_conntrack's `tcp_in_window` for a segment from side `s`: it must
/// start no later than the receiver allowed (`max_end`), end no earlier
/// than one receiver window before the sender's highest sequence, and
/// acknowledge nothing the receiver has not sent, nor more than one
/// window back. What is not known yet is not checked.
#[inline(always)]
fn in_window(f: &Flow, s: usize, packet: &Packet) -> bool {
    let o = 1 - s;
    let seq = packet.tcp.seq;
    let end = seq.wrapping_add(segment_len(packet));
    if f.end_known & (1 << s) != 0 && seq_after(seq, get(&f.max_end, s)) {
        return false;
    }
    let receiver_window = get(&f.max_window, o);
    if f.seq_known & (1 << s) != 0 && receiver_window != 0 {
        let lowest = get(&f.next_seq, s).wrapping_sub(receiver_window).wrapping_sub(1);
        if !seq_after(end, lowest) {
            return false;
        }
    }
    if packet.key.tcp_flags & ACK != 0 && f.seq_known & (1 << o) != 0 {
        let ack = packet.tcp.ack;
        let sent = get(&f.next_seq, o);
        let back = get(&f.max_window, s).max(MAX_ACK_WINDOW);
        if seq_after(ack, sent) || !seq_after(ack, sent.wrapping_sub(back).wrapping_sub(1)) {
            return false;
        }
    }
    true
}

/// How far past a passed SYN's ISN + 1 the SYN-ACK answering it may
/// acknowledge: the SYN's data (TCP Fast Open), at most a segment.
const MAX_SYN_DATA: u32 = 65_535;

/// A SYN from outside that passes with the flow unchanged: its ISN + 1,
/// for the one SYN-ACK that may replace the flow (`FLOW_SYN_PASSED`).
#[inline(always)]
fn note_passed_syn(f: &mut Flow, ingress: bool, packet: &Packet) {
    if ingress {
        f.syn_end = packet.tcp.seq.wrapping_add(1);
        f.flags |= FLOW_SYN_PASSED;
    }
}

/// Remembers a SYN's ISN + 1 for the SYN-ACK check, in the other side's
/// `max_end` slot, which means nothing until that side's limit is known
/// (`end_known` clear) and is then overwritten by `note_segment`.
#[inline(always)]
fn note_syn(f: &mut Flow, s: usize, packet: &Packet) {
    let o = 1 - s;
    set(&mut f.max_end, o, packet.tcp.seq.wrapping_add(1));
    f.end_known &= !(1 << o);
}

#[inline(always)]
fn note_segment(f: &mut Flow, side: u8, packet: &Packet) {
    let s = (side & 1) as usize;
    let o = 1 - s;
    let end = packet.tcp.seq.wrapping_add(segment_len(packet));
    if f.seq_known & (1 << s) == 0 || seq_after(end, get(&f.next_seq, s)) {
        set(&mut f.next_seq, s, end);
        f.seq_known |= 1 << s;
    }
    let window = scaled_window(f, s, packet);
    if window > get(&f.max_window, s) {
        set(&mut f.max_window, s, window);
    }
    if packet.key.tcp_flags & ACK != 0 {
        let ack = packet.tcp.ack;
        set(&mut f.last_ack, s, ack);
        f.ack_known |= 1 << s;
        // How far the other side may send: what this one acknowledged
        // plus the window it offers (at least one byte: a zero-window probe).
        let limit = ack.wrapping_add(window.max(1));
        if f.end_known & (1 << o) == 0 || seq_after(limit, get(&f.max_end, o)) {
            set(&mut f.max_end, o, limit);
            f.end_known |= 1 << o;
        }
    }
}

#[inline(always)]
fn touch(f: &mut Flow, frame: &Frame, now: u64) {
    f.last_seen_ns = now;
    f.packets += 1;
    f.bytes += frame.wire_len;
}

/// Whether conntrack follows no flows of this packet's kind (each is `New`).
#[inline(always)]
pub fn untracked(key: &crate::parse::Key) -> bool {
    matches!(kind(key), Kind::Untracked)
}

/// Classifies `packet` and advances its flow. A `New` packet creates no
/// state here: ingress calls `open` once the rules accepted it, egress at
/// once. `syn_main_only`: a SYN that can have no unproven flow (its port
/// is not in `maps::SYN_PORTS`), so the remote table is not searched.
#[inline(always)]
/// `judge`: for a connection from outside whose SYN the rules did not
/// judge (`FLOW_UNJUDGED`), what they say of that SYN (ingress only).
pub fn track(frame: &Frame, packet: &Packet, timeouts: &Timeouts, dir: Dir, syn_main_only: bool, judge: impl Fn(&Packet) -> Judged) -> Ct {
    let key = &packet.key;
    match kind(key) {
        Kind::Untracked => Ct::New,
        Kind::IcmpError => related(frame, packet, timeouts),
        Kind::Datagram => {
            let (fk, side) = flow_key(key, packet.icmp_id);
            let Some((flow, _, now)) = lookup(&fk, timeouts, false, false) else { return Ct::NoFlow };
            // SAFETY: as in `lookup`.
            let f = unsafe { &mut *flow };
            if (dir == Dir::Ingress) == (side == f.local_side) {
                return Ct::Invalid(Reason::InvalidDirection);
            }
            touch(f, frame, now);
            // An echo request from the far side is its own ping, not a reply.
            let request = matches!((key.proto, key.sport), (IPPROTO_ICMP, 8) | (IPPROTO_ICMPV6, 128));
            if side != f.initiator && !request {
                f.state = UDP_REPLIED;
            }
            if f.state == UDP_UNREPLIED { Ct::New } else { Ct::Established }
        }
        Kind::Tcp => track_tcp(frame, packet, timeouts, dir, syn_main_only, judge),
    }
}

/// An ICMP error is related only when it quotes a packet this host sent
/// in a known flow, and, for TCP, one whose sequence number lies between
/// what the peer acknowledged and what the host sent (the kernel's
/// `tcp_v4_err` checks the same before it believes an error).
#[inline(always)]
fn related(frame: &Frame, packet: &Packet, timeouts: &Timeouts) -> Ct {
    let Some(quoted) = icmp_quoted(frame, packet) else {
        return Ct::Invalid(Reason::InvalidIcmp);
    };
    let (fk, side) = flow_key(&quoted.key, quoted.id);
    let Some((flow, _, _)) = lookup(&fk, timeouts, false, false) else {
        return Ct::Invalid(Reason::InvalidIcmp);
    };
    // SAFETY: as in `lookup`.
    let f = unsafe { &*flow };
    if side != f.local_side {
        return Ct::Invalid(Reason::InvalidIcmp);
    }
    if quoted.key.proto == IPPROTO_TCP {
        let l = (side & 1) as usize;
        let r = 1 - l;
        if f.seq_known & (1 << l) == 0 {
            return Ct::Invalid(Reason::InvalidIcmp);
        }
        let sent = get(&f.next_seq, l);
        let oldest = if f.ack_known & (1 << r) != 0 { get(&f.last_ack, r) } else { sent.wrapping_sub(MAX_ACK_WINDOW) };
        // oldest <= seq < sent (a SYN's own sequence is one before `sent`).
        if seq_after(oldest, quoted.seq) || !seq_after(sent, quoted.seq) {
            return Ct::Invalid(Reason::InvalidIcmp);
        }
    }
    Ct::Related
}

#[inline(always)]
fn track_tcp(frame: &Frame, packet: &Packet, timeouts: &Timeouts, dir: Dir, syn_main_only: bool, judge: impl Fn(&Packet) -> Judged) -> Ct {
    let flags = packet.key.tcp_flags;
    if bad_flags(flags) {
        return Ct::Invalid(Reason::InvalidFlags);
    }
    let (syn, ack, rst, fin) = (flags & SYN != 0, flags & ACK != 0, flags & RST != 0, flags & FIN != 0);
    let (fk, side) = flow_key(&packet.key, 0);
    // A SYN whose slot in the main table is empty skips that lookup (a
    // random-source flood's SYNs, whose misses each cost a random bucket
    // of the table), and is a new flow at once when the main table is the
    // only one it would be looked up in. Only for SYNs: a check in every
    // lookup cost the verifier 167k instructions more.
    let skip_main = syn && !ack && !maybe_main(&fk);
    if syn_main_only && skip_main {
        return Ct::NoFlow;
    }
    let Some((flow, table, now)) = lookup(&fk, timeouts, syn_main_only && syn && !ack, skip_main) else {
        return if syn && !ack {
            Ct::NoFlow
        } else if syn {
            Ct::Invalid(Reason::InvalidSynAck)
        } else {
            Ct::Invalid(Reason::InvalidNoFlow)
        };
    };
    // SAFETY: as in `lookup`.
    let f = unsafe { &mut *flow };
    let s = (side & 1) as usize;
    let other = 1 - s;
    let from_initiator = side == f.initiator;
    let ingress = dir == Dir::Ingress;
    // The host's own side only ever sends through egress.
    if ingress == (side == f.local_side) {
        return Ct::Invalid(Reason::InvalidDirection);
    }
    // The host's answer to a SYN that passed is its next segment: any other
    // (a challenge ACK: its connection lives) ends what that SYN allowed.
    if !ingress && !syn {
        f.flags &= !FLOW_SYN_PASSED;
    }
    // A counted connection proven with no socket for its tuple (the
    // kernel's own cookies keep no request socket) is the host's own (see
    // FLOW_LOCAL) once the host has a connected socket for the tuple on
    // the wire, asked once, when a socket of the host's first sends on it.
    // The skb's socket alone is not enough: REDIRECT or DNAT to a local
    // port gives the socket another tuple, and macvlan, ipvlan or a bridge
    // bring other namespaces' skbs here with their socket.
    if !ingress && frame.local_socket && f.flags & (FLOW_COUNTED | FLOW_LOCAL | FLOW_SOCKET_ASKED) == FLOW_COUNTED {
        f.flags |= FLOW_SOCKET_ASKED;
        let k = &packet.key;
        if matches!(socket_state_of(frame.ctx, &k.dst, &k.src, k.dport, k.sport), Socket::Connected | Socket::Opening) {
            f.flags |= FLOW_LOCAL;
        }
    }

    if rst {
        // RFC 5961: an RST ends a flow only exactly at what the receiver
        // expects next (its last acknowledgment, or the sender's next
        // sequence number, minus one after its FIN). One elsewhere in the
        // receiver's window goes to the host, whose stack answers with a
        // challenge ACK, and changes nothing here (as nf_conntrack keeps
        // the state); outside it is invalid. Answering a SYN, an RST must
        // acknowledge the SYN instead. With nothing known it is refused.
        // The host's own RSTs, on egress, are always believed.
        let (exact, in_window) = if !ingress {
            (true, true)
        } else if f.state == TCP_SYN_SENT {
            let ok = !from_initiator && ack && f.seq_known & (1 << other) != 0 && packet.tcp.ack == get(&f.next_seq, other);
            (ok, ok)
        } else {
            let seq = packet.tcp.seq;
            let window = get(&f.max_window, other).max(1);
            let acked = f.ack_known & (1 << other) != 0;
            let expected = get(&f.last_ack, other);
            let next = get(&f.next_seq, s);
            let after_fin = f.fins & (1 << s) != 0;
            let at_next = f.seq_known & (1 << s) != 0 && (seq == next || (after_fin && seq == next.wrapping_sub(1)));
            (at_next || (acked && seq == expected), at_next || (acked && seq.wrapping_sub(expected) < window))
        };
        if !in_window {
            return Ct::Invalid(Reason::InvalidRst);
        }
        if exact {
            f.state = TCP_CLOSE;
            // The host's own RST frees its count at once. One from outside
            // may be one the host drops (a wrong checksum, which this table
            // does not check): the connection counts until the sweep sees
            // the host's socket gone (`COUNTED_CLOSE_SECS` without one), or
            // the host's next segment brings it back to life still counted.
            if !ingress {
                limit::release(f, &fk);
            }
        }
        touch(f, frame, now);
        return Ct::Established;
    }

    if syn && !ack {
        match f.state {
            // A retransmitted SYN (its SYN-ACK may have been lost): still a
            // new connection to the rules. From outside only the same ISN
            // counts (`note_syn`); another one goes to the host's stack,
            // which answers it, and changes nothing here (a blind SYN could
            // otherwise derail the handshake). The host's own new ISN is
            // believed.
            TCP_SYN_SENT | TCP_SYN_RECV if from_initiator => {
                let isn_next = get(&f.max_end, other);
                let same = f.end_known & (1 << other) == 0 && packet.tcp.seq.wrapping_add(1) == isn_next;
                if ingress && !same {
                    // To the rules as a retransmission (counted, no cookie),
                    // but the flow keeps its ISN and its age.
                    return Ct::SynAgain;
                }
                set(&mut f.next_seq, s, packet.tcp.seq.wrapping_add(segment_len(packet)));
                note_syn(f, s, packet);
                f.seq_known |= 1 << s;
                f.last_seen_ns = now;
                return Ct::SynAgain;
            }
            // Simultaneous open: both sides sent a SYN.
            TCP_SYN_SENT => {
                f.state = TCP_SYN_RECV;
                f.flags |= FLOW_BOTH_SYNS;
                note_syn(f, s, packet);
                set(&mut f.wscale, s, packet.opts.wscale);
            }
            // A closed flow's tuple reused by a new connection: beyond the
            // old one's sequence, as the kernel's TIME-WAIT reuse wants.
            TCP_TIME_WAIT | TCP_CLOSE
                if f.seq_known & (1 << s) == 0 || seq_after(packet.tcp.seq, get(&f.next_seq, s)) =>
            {
                return Ct::SynReuse;
            }
            // Passed with the flow unchanged (the caller may still open a
            // new one): remembered for the answer's SYN-ACK.
            TCP_TIME_WAIT | TCP_CLOSE => {
                note_passed_syn(f, ingress, packet);
                return Ct::SynInClosed;
            }
            _ => {
                note_passed_syn(f, ingress, packet);
                return Ct::SynInFlow;
            }
        }
    } else if syn {
        // SYN-ACK: from the responder (or either side after simultaneous
        // SYNs), acknowledging the SYN it answers.
        let responder = !from_initiator || f.flags & FLOW_BOTH_SYNS != 0;
        // It acknowledges the SYN, and of the SYN's data (TCP Fast Open)
        // all or none: between the other side's ISN + 1 and its next
        // sequence number (`note_syn`).
        // Once that slot holds a real limit (simultaneous open, where this
        // side has acknowledged already), the acknowledgment must be exact.
        let acks_syn = ack
            && f.seq_known & (1 << other) != 0
            && !seq_after(packet.tcp.ack, get(&f.next_seq, other))
            && if f.end_known & (1 << s) == 0 {
                !seq_after(get(&f.max_end, s), packet.tcp.ack)
            } else {
                packet.tcp.ack == get(&f.next_seq, other)
            };
        match f.state {
            TCP_SYN_SENT | TCP_SYN_RECV if responder && acks_syn => {
                f.state = TCP_SYN_RECV;
                set(&mut f.wscale, s, packet.opts.wscale);
            }
            // A retransmitted SYN-ACK after the handshake (the final ACK was
            // lost): the peer must see it to ACK again. No state change. It
            // repeats the handshake: its sequence behind what its side sent
            // and its acknowledgment within the window, both bounded by the
            // windows (a new ISN, random, is neither: a new connection).
            TCP_ESTABLISHED | TCP_FIN_WAIT if responder && seq_after(get(&f.next_seq, s), packet.tcp.seq) && in_window(f, s, packet) => {
                touch(f, frame, now);
                return Ct::Established;
            }
            // The host's SYN-ACK answering the SYN that passed on the tuple
            // (see `Ct::SynInFlow`): its TIME-WAIT socket took it (the
            // kernel allows that by timestamps), or it had no connection
            // left there. The host is the truth. Only that answer, as
            // nf_conntrack reopens only on a SYN-ACK acknowledging the SYN
            // it ignored: any other changes nothing. (What leaves through
            // here is believed otherwise, RSTs included: a sender behind
            // this host that spoofs a neighbour's tuple is not defended
            // against.)
            TCP_TIME_WAIT | TCP_CLOSE | TCP_ESTABLISHED | TCP_FIN_WAIT if !ingress => {
                if f.flags & FLOW_SYN_PASSED != 0 && ack && packet.tcp.ack.wrapping_sub(f.syn_end) <= MAX_SYN_DATA {
                    return Ct::SynReuse;
                }
                return Ct::Established;
            }
            _ => return Ct::Invalid(Reason::InvalidSynAck),
        }
    } else {
        // The host's own segments are the truth (and are never dropped):
        // only what arrives from outside must fit the window.
        if ingress && !in_window(f, s, packet) {
            return Ct::Invalid(Reason::InvalidWindow);
        }
        let mut completed = false;
        match f.state {
            // Nothing but a SYN-ACK (or an RST) may answer a SYN.
            TCP_SYN_SENT => return Ct::Invalid(Reason::InvalidState),
            // The handshake's last ACK acknowledges the SYN-ACK exactly,
            // from the side that did not send it: from outside (the host's
            // ISN, unknowable off path), or from the host when it opened the
            // connection. The host's own ACK while it is the responder (its
            // answer to a stray SYN) completes nothing.
            TCP_SYN_RECV if ack => {
                if !ingress && !from_initiator && f.flags & FLOW_BOTH_SYNS == 0 {
                    touch(f, frame, now);
                    return Ct::Established;
                }
                if f.seq_known & (1 << other) == 0 || packet.tcp.ack != get(&f.next_seq, other) {
                    return Ct::Invalid(Reason::InvalidState);
                }
                // Proven now (the ACK echoes the host's ISN): the rule's
                // limits count it, or refuse it with the flow unchanged.
                if ingress && table == Table::Remote && f.flags & FLOW_PROVEN == 0 {
                    // A handshake the rules never saw the SYN of (rebuilt
                    // from the host's SYN-ACK) was never charged to a
                    // rate: it is here, at its proof. It stays unjudged
                    // until the proof is counted, so a refused ACK sent
                    // again is judged and charged again.
                    let unjudged = f.flags & FLOW_UNJUDGED != 0;
                    if unjudged {
                        match judge(packet).verdict() {
                            // The rules would drop its SYN now (a ban, a
                            // closed port): the handshake does not complete.
                            Err((reason, rule)) => return refused(reason, rule, packet),
                            Ok(Some(r)) => {
                                f.limit_ref = r;
                                f.flags |= FLOW_GUARDED;
                            }
                            Ok(None) => {}
                        }
                    }
                    if f.flags & FLOW_GUARDED != 0 {
                        match limit::prove(f.limit_ref, &packet.key, unjudged) {
                            // The host's own stack serves it (a socket for
                            // this tuple), not DNAT elsewhere: see
                            // FLOW_LOCAL. A listener alone proves nothing:
                            // a port DNAT sends to a container may have one
                            // on the host too (docker-proxy), and the sweep
                            // would free every such count, the host having
                            // no socket for them. (A connection the kernel's
                            // own cookies made has no request socket at its
                            // proof: its first segment from the host's socket
                            // marks it, on egress.)
                            Ok(true) => {
                                f.flags |= FLOW_COUNTED;
                                if matches!(socket_state(frame.ctx, &packet.key), Socket::Request | Socket::Connected | Socket::Opening) {
                                    f.flags |= FLOW_LOCAL;
                                }
                            }
                            Ok(false) => {}
                            Err(reason) => return refused(reason, firewall_common::conn_ref_parts(f.limit_ref).0, packet),
                        }
                    }
                    f.flags = (f.flags | FLOW_PROVEN) & !FLOW_UNJUDGED;
                }
                f.state = TCP_ESTABLISHED;
                completed = ingress;
            }
            // Closed by an RST: what follows from outside changes nothing
            // (nf_conntrack keeps CLOSE for a FIN or an ACK too). A segment
            // the host sends says its connection lives on (the RST this
            // table took for exact was not, to the host): tracking resumes.
            // Not a handshake a limit would count and that never proved
            // itself: its last ACK after an RST would reach the host
            // uncounted.
            TCP_CLOSE if ingress && f.flags & (FLOW_GUARDED | FLOW_UNJUDGED) != 0 && f.flags & FLOW_PROVEN == 0 => {
                return Ct::Invalid(Reason::InvalidState);
            }
            TCP_CLOSE if ingress => {
                touch(f, frame, now);
                return Ct::Established;
            }
            TCP_CLOSE => {
                f.state = match f.fins {
                    0 => TCP_ESTABLISHED,
                    3 => TCP_TIME_WAIT,
                    _ => TCP_FIN_WAIT,
                }
            }
            _ => {}
        }
        if fin {
            f.fins |= 1 << s;
            f.state = if f.fins == 3 { TCP_TIME_WAIT } else { TCP_FIN_WAIT };
            // Closed both ways: no longer one of its source's connections
            // (as nf_conncount skips TIME_WAIT).
            if f.fins == 3 {
                limit::release(f, &fk);
            }
        }
        // A connection the host's own segment brought back (its flow was
        // lost: evicted, or timed out idle): the caller has the rules
        // count it (`Ct::Rejoined`).
        let rejoined = ingress && table == Table::Main && f.flags & FLOW_UNJUDGED != 0;
        if rejoined {
            f.flags &= !FLOW_UNJUDGED;
            f.flags |= FLOW_PROVEN;
        }
        // A flow picked up mid-stream learns the remote side's sequence
        // only once the host has said how far it may send: before that, a
        // forged segment could set it anywhere.
        if ingress && f.end_known & (1 << s) == 0 && f.wscale[0] == WSCALE_UNKNOWN {
            touch(f, frame, now);
            return if rejoined { Ct::Rejoined } else { Ct::Established };
        }
        note_segment(f, side, packet);
        touch(f, frame, now);
        // Only a handshake completed through the table (its last ACK exact
        // to the host's ISN, which an off-path sender cannot know) proves
        // a flow opened from outside: it leaves the table a flood churns.
        if completed && table == Table::Remote {
            promote(&fk, f);
        }
        return if rejoined { Ct::Rejoined } else { Ct::Established };
    }
    note_segment(f, side, packet);
    touch(f, frame, now);
    Ct::Established
}

/// Records the flow a `New` or `NoFlow` packet opens (after the rules accepted it on
/// ingress; at once on egress). Returns whether a flow was created (with
/// `packet.no_flow`, whether one was inserted, which a race may have lost):
/// untracked protocols and ICMP errors open none, and a retransmitted SYN
/// or a datagram before any reply finds its flow there already. Flows the
/// host opens go to the main table (`proven`); flows opened from outside,
/// and host datagrams that may answer one, to the remote table.
#[inline(always)]
pub fn open(packet: &Packet, dir: Dir, proven: bool, limit_ref: Option<u32>) -> bool {
    let wscale = packet.opts.wscale;
    let key = &packet.key;
    let k = kind(key);
    if k != Kind::Tcp && k != Kind::Datagram {
        return false;
    }
    let (fk, side) = flow_key(key, packet.icmp_id);
    // A retransmitted SYN or a second datagram before any reply: the flow
    // is there already. Checked first because a failed LRU insert still
    // takes and returns a free element, which costs several lookups; not
    // when `track` just found none (`packet.no_flow`: a flood's SYNs).
    // The insert itself never replaces a flow (BPF_NOEXIST).
    if !packet.no_flow && (FW_FLOWS.get_ptr(&fk).is_some() || FW_REMOTE_FLOWS.get_ptr(&fk).is_some()) {
        return false;
    }
    let egress = dir == Dir::Egress;
    let now = now_ns();
    let mut flow = Flow {
        state: if k == Kind::Tcp { TCP_SYN_SENT } else { UDP_UNREPLIED },
        initiator: side,
        local_side: if egress { side } else { 1 - side },
        origin: if egress { ORIGIN_LOCAL } else { ORIGIN_REMOTE },
        created_ns: now,
        last_seen_ns: now,
        packets: 1,
        bytes: packet.wire_len,
        ..Flow::default()
    };
    if let Some(r) = limit_ref {
        flow.flags = FLOW_GUARDED;
        flow.limit_ref = r;
    }
    if k == Kind::Tcp {
        flow.wscale = [WSCALE_NONE; 2];
        set(&mut flow.wscale, (side & 1) as usize, wscale);
        note_segment(&mut flow, side, packet);
        note_syn(&mut flow, (side & 1) as usize, packet);
    }
    // A SYN from outside whose tuple has an unproven flow that its lookup
    // skipped (`syn_main_only`): that flow passes it on unchanged, so the
    // answer's SYN-ACK may replace it (see `note_passed_syn`).
    if !insert(&fk, &flow, if egress && proven { Table::Main } else { Table::Remote }) && !egress && k == Kind::Tcp {
        if let Some(old) = FW_REMOTE_FLOWS.get_ptr_mut(&fk) {
            // SAFETY: a value of this map, for this program's run.
            note_passed_syn(unsafe { &mut *old }, true, packet);
        }
    }
    true
}

/// An established flow from outside, opened by the packet in `frame`.
#[inline(always)]
fn established(frame: &Frame, initiator: u8, local_side: u8) -> Flow {
    let now = now_ns();
    Flow {
        state: TCP_ESTABLISHED,
        initiator,
        local_side,
        origin: ORIGIN_REMOTE,
        created_ns: now,
        last_seen_ns: now,
        packets: 1,
        bytes: frame.wire_len,
        ..Flow::default()
    }
}

/// Adopts a TCP packet of no known flow as established, as nftables'
/// conntrack picks up connections mid-stream: on egress (the host's own
/// stack sent it) always; on ingress only when `socket_state` says the
/// host has a connection for it (opened before the firewall attached, or
/// evicted from a full table), so a lone forged ACK is still invalid.
/// Window scales are unknown (the SYNs were not seen): windows are taken
/// at the largest scale, as lenient as nf_conntrack is for picked-up
/// flows. `proven`: the host's stack has a full connection (main table);
/// otherwise (a half-open request of the host's) the remote table.
#[inline(always)]
/// `counted`: on ingress, the `limit_ref` the adopted connection is
/// counted under (the caller counted it). Whether a flow was inserted.
pub fn adopt(frame: &Frame, packet: &Packet, dir: Dir, proven: bool, counted: Option<u32>) -> bool {
    // An RST ends a connection, a SYN-ACK is not mid-stream: nothing to adopt.
    if packet.key.tcp_flags & (RST | SYN) != 0 {
        return false;
    }
    let (fk, side) = flow_key(&packet.key, 0);
    let local = if dir == Dir::Egress { side } else { 1 - side };
    // The initiator is unknown: the handshake happened before we saw the flow.
    let mut flow = established(frame, 1 - local, local);
    flow.wscale = [WSCALE_UNKNOWN; 2];
    if let Some(r) = counted {
        // Counted only for a connection the host has (see `ingress`).
        flow.flags = FLOW_GUARDED | FLOW_COUNTED | FLOW_PROVEN | FLOW_LOCAL;
        flow.limit_ref = r;
    } else if dir == Dir::Egress {
        // The host speaks on a connection the table lost: the next
        // segment from outside is judged (see `track_tcp`).
        flow.flags = FLOW_UNJUDGED;
    }
    // Only the host's own segment is believed; a remote one may be forged
    // (see `track_tcp`).
    if dir == Dir::Egress {
        note_segment(&mut flow, side, packet);
    }
    insert(&fk, &flow, if proven { Table::Main } else { Table::Remote })
}

/// Records the host's SYN-ACK for a remote SYN whose flow is gone (evicted
/// from the remote table, or the SYN came before the firewall attached):
/// a half-open flow in the remote table, the peer's scale unknown.
#[inline(always)]
pub fn open_synack(frame: &Frame, packet: &Packet) {
    let (fk, side) = flow_key(&packet.key, 0);
    if FW_FLOWS.get_ptr(&fk).is_some() {
        return;
    }
    let mut flow = established(frame, 1 - side, side);
    flow.state = TCP_SYN_RECV;
    flow.flags = FLOW_UNJUDGED;
    let ours = packet.opts.wscale;
    flow.wscale = [ours; 2];
    if ours != WSCALE_NONE {
        set(&mut flow.wscale, 1 - (side & 1) as usize, WSCALE_UNKNOWN);
    }
    note_segment(&mut flow, side, packet);
    insert(&fk, &flow, Table::Remote);
}

/// Records the connection a valid cookie ACK completes: established, the
/// client as initiator, both window scales and our side's sequence
/// (the cookie) known, as if the handshake had gone through the table.
/// A valid cookie is proof of a real peer: the main table.
#[inline(always)]
pub fn open_cookie(frame: &Frame, packet: &Packet, client_wscale: u8, cookie: u32, counted: Option<u32>) {
    let (fk, side) = flow_key(&packet.key, 0);
    let s = (side & 1) as usize;
    let mut flow = established(frame, side, 1 - side);
    flow.flags = FLOW_PROVEN;
    if let Some(r) = counted {
        // Handed to the host's listener.
        flow.flags |= FLOW_GUARDED | FLOW_COUNTED | FLOW_LOCAL;
        flow.limit_ref = r;
    }
    let (ours, theirs) = if client_wscale == WSCALE_NONE {
        (WSCALE_NONE, WSCALE_NONE)
    } else {
        (firewall_common::OUR_WSCALE, client_wscale)
    };
    set(&mut flow.wscale, s, theirs);
    set(&mut flow.wscale, 1 - s, ours);
    set(&mut flow.next_seq, 1 - s, cookie.wrapping_add(1));
    set(&mut flow.max_window, 1 - s, firewall_common::SYNACK_WINDOW as u32);
    // The SYN-ACK acknowledged the client's ISN + 1 with an unscaled window.
    set(&mut flow.max_end, s, packet.tcp.seq.wrapping_add(firewall_common::SYNACK_WINDOW as u32));
    flow.end_known = 1 << s;
    flow.seq_known = 1 << (1 - s);
    note_segment(&mut flow, side, packet);
    insert(&fk, &flow, Table::Main);
}

/// `Ct::Refused`, counted under rule `index` (slot * MAX_RULES + rule, or
/// `NO_RULE_INDEX`), which its events name. (The index stays out of `Ct`:
/// a wider enum made the compiler pack registers the verifier refuses.)
#[inline(always)]
fn refused(reason: Reason, index: u32, packet: &Packet) -> Ct {
    crate::counters::count_index(index, packet.wire_len);
    crate::events::note_index(index);
    Ct::Refused(reason)
}

/// Marks the flow of `packet` counted under `limit_ref` (see
/// `Ct::Rejoined`); false when there is none, or it is counted already
/// (another CPU got there first): the caller undoes its count.
#[inline(always)]
pub fn mark_counted(packet: &Packet, limit_ref: u32) -> bool {
    let (fk, _) = flow_key(&packet.key, 0);
    let Some(f) = FW_FLOWS.get_ptr_mut(&fk) else { return false };
    // SAFETY: a valid map value pointer for the duration of this program.
    let f = unsafe { &mut *f };
    if f.flags & FLOW_COUNTED != 0 || f.fins == 3 {
        return false;
    }
    f.flags |= FLOW_GUARDED | FLOW_COUNTED;
    f.limit_ref = limit_ref;
    true
}

/// Whether the main table's flow of `key`'s tuple is counted against a
/// `max_conns` (`FLOW_COUNTED`).
#[inline(always)]
pub fn counted(key: &Key) -> bool {
    let (fk, _) = flow_key(key, 0);
    // SAFETY: read at once.
    unsafe { FW_FLOWS.get(&fk) }.is_some_and(|f| f.flags & FLOW_COUNTED != 0)
}

/// Forgets the flow of `packet` (a SYN reusing a dead flow's tuple).
#[inline(always)]
pub fn forget(packet: &Packet) {
    let (fk, _) = flow_key(&packet.key, 0);
    // Only proven flows (the main table) are counted; released only if
    // this delete is the one that took it.
    // SAFETY: a valid map value pointer for the duration of this program.
    let old = FW_FLOWS.get_ptr(&fk).map(|f| unsafe { *f });
    if remove_main(&fk) {
        if let Some(mut f) = old {
            limit::release(&mut f, &fk);
        }
    }
    let _ = FW_REMOTE_FLOWS.remove(&fk);
}

/// The socket-lookup tuple of an inbound packet, and its size for the
/// helpers (IPv4 or IPv6 part of the union).
#[inline(always)]
pub fn sock_tuple(key: &Key) -> (bpf_sock_tuple, u32) {
    tuple_of(&key.src, &key.dst, key.sport, key.dport)
}

/// `sock_tuple` of a segment from `src`:`sport` to `dst`:`dport`.
#[inline(always)]
fn tuple_of(src: &U128, dst: &U128, sport: u16, dport: u16) -> (bpf_sock_tuple, u32) {
    // SAFETY: an all-zero tuple is valid.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if crate::parse::is_v4_mapped(src) {
        tuple.__bindgen_anon_1.ipv4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
            saddr: (src.lo as u32).to_be(),
            daddr: (dst.lo as u32).to_be(),
            sport: sport.to_be(),
            dport: dport.to_be(),
        };
        core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>()
    } else {
        let words = |a: U128| [((a.hi >> 32) as u32).to_be(), (a.hi as u32).to_be(), ((a.lo >> 32) as u32).to_be(), (a.lo as u32).to_be()];
        tuple.__bindgen_anon_1.ipv6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
            saddr: words(*src),
            daddr: words(*dst),
            sport: sport.to_be(),
            dport: dport.to_be(),
        };
        core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>()
    };
    (tuple, size as u32)
}

pub const BPF_F_CURRENT_NETNS: u64 = -1i64 as u64;
pub const TCP_LISTEN: u32 = 10;
const TCP_SYN_SENT_SK: u32 = 2;
const TCP_SYN_RECV_SK: u32 = 3;
const TCP_TIME_WAIT_SK: u32 = 6;
const TCP_CLOSE_SK: u32 = 7;
const TCP_NEW_SYN_RECV: u32 = 12;

/// What the host's stack has for the tuple of an inbound TCP packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Socket {
    /// Nothing: the host's stack does not serve this tuple's port (it is
    /// not the host's, or DNAT, a proxy or IPVS takes it elsewhere).
    None,
    /// Only a listener: the host serves the port, but has no connection
    /// on this tuple.
    Listener,
    /// A synchronized connection, which owns the tuple.
    Connected,
    /// A connection still in its handshake (the kernel's SYN_SENT or
    /// SYN_RECV): it owns the tuple, but proves no peer.
    Opening,
    /// A TIME-WAIT socket: the old connection is closed but remembered.
    TimeWait,
    /// A request socket (half-open handshake the host answered itself).
    Request,
}

/// Looks the tuple up in the host's stack (`bpf_skc_lookup_tcp`, which
/// also sees TIME-WAIT and request sockets). `ctx` is the XDP context.
#[inline(always)]
pub fn socket_state(ctx: *mut c_void, key: &Key) -> Socket {
    socket_state_of(ctx, &key.src, &key.dst, key.sport, key.dport)
}

/// `socket_state` of an inbound segment from `src`:`sport` to
/// `dst`:`dport` (from TC too, for the reverse of an outbound one).
#[inline(always)]
fn socket_state_of(ctx: *mut c_void, src: &U128, dst: &U128, sport: u16, dport: u16) -> Socket {
    let (mut tuple, size) = tuple_of(src, dst, sport, dport);
    // SAFETY: helper call with a tuple of the size passed; the socket it
    // returns is released on every path.
    unsafe {
        let sk = bpf_skc_lookup_tcp(ctx, &mut tuple, size, BPF_F_CURRENT_NETNS, 0);
        if sk.is_null() {
            return Socket::None;
        }
        let state = (*sk).state;
        bpf_sk_release(sk as *mut c_void);
        match state {
            TCP_LISTEN => Socket::Listener,
            TCP_CLOSE_SK => Socket::None,
            TCP_TIME_WAIT_SK => Socket::TimeWait,
            TCP_NEW_SYN_RECV => Socket::Request,
            TCP_SYN_SENT_SK | TCP_SYN_RECV_SK => Socket::Opening,
            _ => Socket::Connected,
        }
    }
}

