//! Connection tracking in the fast path: the TCP handshake and teardown,
//! UDP and ICMP echo flows, ICMP errors related to a flow. Shared by the
//! XDP ingress program and the TC egress program, which both see every
//! packet of a flow through this host, one direction each.

use aya_ebpf::{
    bindings::{bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2},
    cty::c_void,
    helpers::{bpf_ktime_get_ns, bpf_sk_lookup_tcp, bpf_sk_release},
};
use firewall_common::{
    Flow, FlowKey, ORIGIN_LOCAL, ORIGIN_REMOTE, Reason, SIDE_A, SIDE_B, TCP_CLOSE, U128,
    TCP_ESTABLISHED, TCP_FIN_WAIT, TCP_SYN_RECV, TCP_SYN_SENT, TCP_TIME_WAIT, Timeouts,
    FLOW_BOTH_SYNS, UDP_REPLIED, UDP_UNREPLIED, WSCALE_NONE, tcp_flags::{ACK, FIN, PSH, RST, SYN, URG},
};

use crate::{
    FW_FLOWS,
    parse::{Frame, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Key, Packet, icmp_quoted, tcp_wscale},
};

/// What a packet is to the connection table.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ct {
    /// Opens a flow (or is not tracked): the rules decide.
    New,
    /// A SYN on the tuple of an established or closing flow: a new
    /// connection if the host has no socket for the old one any more
    /// (the old one died unseen), else for the host to answer (RFC 5961
    /// challenge ACK). The caller decides with `has_socket`.
    SynInFlow,
    Established,
    Related,
    Invalid(Reason),
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

/// Impossible flag combinations: SYN+FIN, SYN+RST, FIN without ACK (which
/// covers XMAS, FIN+PSH+URG; with ACK that is a FIN with urgent data, which
/// is legal), and NULL (none of FIN..URG).
#[inline(always)]
fn bad_flags(flags: u8) -> bool {
    flags & (SYN | FIN) == (SYN | FIN)
        || flags & (SYN | RST) == (SYN | RST)
        || (flags & FIN != 0 && flags & ACK == 0)
        || flags & (FIN | SYN | RST | PSH | ACK | URG) == 0
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

/// Looks up the flow, dropping it when it has been idle past its timeout.
#[inline(always)]
fn lookup(fk: &FlowKey, timeouts: &Timeouts, now: u64) -> Option<*mut Flow> {
    let flow = FW_FLOWS.get_ptr_mut(fk)?;
    // SAFETY: a valid map value pointer for the duration of this program.
    let f = unsafe { &*flow };
    let timeout = timeouts.for_state(f.state, fk.proto) as u64 * NS_PER_SEC;
    if now.saturating_sub(f.last_seen_ns) > timeout {
        let _ = FW_FLOWS.remove(fk);
        return None;
    }
    Some(flow)
}

/// Sequence space a TCP segment occupies: data plus one for SYN and FIN.
#[inline(always)]
fn segment_len(packet: &Packet) -> u32 {
    let flags = packet.key.tcp_flags;
    let data = packet.l4_len.saturating_sub(packet.tcp.header_len as usize) as u32;
    data + u32::from(flags & SYN != 0) + u32::from(flags & FIN != 0)
}

#[inline(always)]
fn note_segment(f: &mut Flow, side: u8, packet: &Packet) {
    let s = (side & 1) as usize;
    let end = packet.tcp.seq.wrapping_add(segment_len(packet));
    if f.seq_known & (1 << s) == 0 || seq_after(end, get(&f.next_seq, s)) {
        set(&mut f.next_seq, s, end);
        f.seq_known |= 1 << s;
    }
    if packet.key.tcp_flags & ACK != 0 {
        set(&mut f.last_ack, s, packet.tcp.ack);
        f.ack_known |= 1 << s;
    }
    // Windows in SYNs are never scaled; later ones are when both SYNs
    // carried the option (RFC 7323).
    let scaled = packet.key.tcp_flags & SYN == 0 && f.wscale[0] != WSCALE_NONE && f.wscale[1] != WSCALE_NONE;
    let shift = if scaled { get(&f.wscale, s) as u32 & 15 } else { 0 };
    let window = (packet.tcp.window as u32) << shift;
    if window > get(&f.max_window, s) {
        set(&mut f.max_window, s, window);
    }
}

/// Classifies `packet` and advances its flow. A `New` packet creates no
/// state here: ingress calls `open` once the rules accepted it, egress at once.
#[inline(always)]
pub fn track(frame: &Frame, packet: &Packet, timeouts: &Timeouts) -> Ct {
    let key = &packet.key;
    match kind(key) {
        Kind::Untracked => Ct::New,
        Kind::IcmpError => {
            let Some((quoted, id)) = icmp_quoted(frame, packet) else {
                return Ct::Invalid(Reason::InvalidIcmp);
            };
            let (fk, _) = flow_key(&quoted, id);
            match lookup(&fk, timeouts, now_ns()) {
                Some(_) => Ct::Related,
                None => Ct::Invalid(Reason::InvalidIcmp),
            }
        }
        Kind::Datagram => {
            let (fk, side) = flow_key(key, packet.icmp_id);
            let now = now_ns();
            let Some(flow) = lookup(&fk, timeouts, now) else { return Ct::New };
            // SAFETY: as in `lookup`.
            let f = unsafe { &mut *flow };
            f.last_seen_ns = now;
            f.packets += 1;
            f.bytes += frame.wire_len;
            // An echo request from the far side is its own ping, not a reply.
            let request = matches!((key.proto, key.sport), (IPPROTO_ICMP, 8) | (IPPROTO_ICMPV6, 128));
            if side != f.initiator && !request {
                f.state = UDP_REPLIED;
            }
            if f.state == UDP_UNREPLIED { Ct::New } else { Ct::Established }
        }
        Kind::Tcp => track_tcp(frame, packet, timeouts),
    }
}

#[inline(always)]
fn track_tcp(frame: &Frame, packet: &Packet, timeouts: &Timeouts) -> Ct {
    let flags = packet.key.tcp_flags;
    if bad_flags(flags) {
        return Ct::Invalid(Reason::InvalidFlags);
    }
    let (syn, ack, rst, fin) = (flags & SYN != 0, flags & ACK != 0, flags & RST != 0, flags & FIN != 0);
    let (fk, side) = flow_key(&packet.key, 0);
    let now = now_ns();
    let Some(flow) = lookup(&fk, timeouts, now) else {
        return if syn && !ack {
            Ct::New
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

    if rst {
        // RFC 5961: only an RST inside the receiver's window may end a
        // flow: at or after what the receiver last acknowledged, or exactly
        // at the sender's next sequence number (minus one after its FIN).
        // Answering a SYN, it must acknowledge the SYN instead.
        let ok = if f.state == TCP_SYN_SENT {
            !from_initiator && ack && packet.tcp.ack == get(&f.next_seq, other)
        } else {
            let seq = packet.tcp.seq;
            let window = get(&f.max_window, other).max(1);
            let in_window = f.ack_known & (1 << other) != 0 && seq.wrapping_sub(get(&f.last_ack, other)) < window;
            let next = get(&f.next_seq, s);
            let at_next = f.seq_known & (1 << s) != 0 && (seq == next || seq == next.wrapping_sub(1));
            in_window || at_next || (f.ack_known & (1 << other) == 0 && f.seq_known & (1 << s) == 0)
        };
        if !ok {
            return Ct::Invalid(Reason::InvalidRst);
        }
        f.state = TCP_CLOSE;
        f.last_seen_ns = now;
        f.packets += 1;
        f.bytes += frame.wire_len;
        return Ct::Established;
    }

    if syn && !ack {
        match f.state {
            // A retransmitted SYN (its SYN-ACK may have been lost): still a
            // new connection to the rules. A new ISN replaces the old one.
            TCP_SYN_SENT | TCP_SYN_RECV if from_initiator => {
                set(&mut f.next_seq, s, packet.tcp.seq.wrapping_add(segment_len(packet)));
                f.seq_known |= 1 << s;
                f.last_seen_ns = now;
                return Ct::New;
            }
            // Simultaneous open: both sides sent a SYN.
            TCP_SYN_SENT => {
                f.state = TCP_SYN_RECV;
                f.flags |= FLOW_BOTH_SYNS;
                set(&mut f.wscale, s, tcp_wscale(frame, packet).unwrap_or(WSCALE_NONE));
            }
            // A closed flow's tuple reused by a new connection.
            TCP_TIME_WAIT | TCP_CLOSE => {
                let _ = FW_FLOWS.remove(&fk);
                return Ct::New;
            }
            _ => return Ct::SynInFlow,
        }
    } else if syn {
        // SYN-ACK: from the responder (or either side after simultaneous
        // SYNs), acknowledging the SYN it answers.
        let responder = !from_initiator || f.flags & FLOW_BOTH_SYNS != 0;
        let acks_syn = ack && f.seq_known & (1 << other) != 0 && packet.tcp.ack == get(&f.next_seq, other);
        match f.state {
            TCP_SYN_SENT | TCP_SYN_RECV if responder && acks_syn => {
                f.state = TCP_SYN_RECV;
                set(&mut f.wscale, s, tcp_wscale(frame, packet).unwrap_or(WSCALE_NONE));
            }
            // A retransmitted SYN-ACK after the handshake (the final ACK was
            // lost): the peer must see it to ACK again. No state change.
            TCP_ESTABLISHED | TCP_FIN_WAIT if responder && seq_after(get(&f.next_seq, s), packet.tcp.seq) => {
                f.last_seen_ns = now;
                f.packets += 1;
                f.bytes += frame.wire_len;
                return Ct::Established;
            }
            _ => return Ct::Invalid(Reason::InvalidSynAck),
        }
    } else {
        match f.state {
            // Nothing but a SYN-ACK (or an RST) may answer a SYN.
            TCP_SYN_SENT => return Ct::Invalid(Reason::InvalidState),
            TCP_SYN_RECV if ack => f.state = TCP_ESTABLISHED,
            _ => {}
        }
        if fin {
            f.fins |= 1 << s;
            f.state = if f.fins == 3 { TCP_TIME_WAIT } else { TCP_FIN_WAIT };
        }
    }
    note_segment(f, side, packet);
    f.last_seen_ns = now;
    f.packets += 1;
    f.bytes += frame.wire_len;
    Ct::Established
}

/// Records the flow a `New` packet opens (after the rules accepted it on
/// ingress; at once on egress). Returns whether a flow was created:
/// untracked protocols and ICMP errors open none, and a retransmitted SYN
/// or a datagram before any reply finds its flow there already.
#[inline(always)]
pub fn open(packet: &Packet, wscale: u8, egress: bool) -> bool {
    let key = &packet.key;
    let k = kind(key);
    if k != Kind::Tcp && k != Kind::Datagram {
        return false;
    }
    let (fk, side) = flow_key(key, packet.icmp_id);
    // A retransmitted SYN or a second datagram before any reply: the flow
    // is there already. Checked first because a failed LRU insert still
    // takes and returns a free element, which costs several lookups.
    if FW_FLOWS.get_ptr(&fk).is_some() {
        return false;
    }
    let now = now_ns();
    let mut flow = Flow {
        state: if k == Kind::Tcp { TCP_SYN_SENT } else { UDP_UNREPLIED },
        initiator: side,
        origin: if egress { ORIGIN_LOCAL } else { ORIGIN_REMOTE },
        created_ns: now,
        last_seen_ns: now,
        packets: 1,
        bytes: packet.wire_len,
        ..Flow::default()
    };
    if k == Kind::Tcp {
        flow.wscale = [WSCALE_NONE; 2];
        set(&mut flow.wscale, (side & 1) as usize, wscale);
        note_segment(&mut flow, side, packet);
    }
    // BPF_NOEXIST: a flow another CPU just created is kept.
    let _ = FW_FLOWS.insert(&fk, &flow, 1);
    true
}

/// An established flow from outside, opened by the packet in `frame`.
#[inline(always)]
fn established(frame: &Frame, initiator: u8) -> Flow {
    let now = now_ns();
    Flow {
        state: TCP_ESTABLISHED,
        initiator,
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
/// stack sent it) always; on ingress only when `has_socket` says the host
/// has a connected socket for it (opened before the firewall attached, or
/// evicted from a full table), so a lone forged ACK is still invalid.
#[inline(always)]
pub fn adopt(frame: &Frame, packet: &Packet) {
    // An RST ends a connection: nothing to adopt.
    if packet.key.tcp_flags & RST != 0 {
        return;
    }
    let (fk, side) = flow_key(&packet.key, 0);
    // The initiator is unknown: the handshake happened before we saw the flow.
    let mut flow = established(frame, 1 - side);
    note_segment(&mut flow, side, packet);
    let _ = FW_FLOWS.insert(&fk, &flow, 1);
}

/// Records the connection a valid cookie ACK completes: established, the
/// client as initiator, both window scales and our side's sequence
/// (the cookie) known, as if the handshake had gone through the table.
#[inline(always)]
pub fn open_cookie(frame: &Frame, packet: &Packet, client_wscale: u8, cookie: u32) {
    let (fk, side) = flow_key(&packet.key, 0);
    let s = (side & 1) as usize;
    let mut flow = established(frame, side);
    let (ours, theirs) = if client_wscale == WSCALE_NONE {
        (WSCALE_NONE, WSCALE_NONE)
    } else {
        (firewall_common::OUR_WSCALE, client_wscale)
    };
    set(&mut flow.wscale, s, theirs);
    set(&mut flow.wscale, 1 - s, ours);
    set(&mut flow.next_seq, 1 - s, cookie.wrapping_add(1));
    set(&mut flow.max_window, 1 - s, firewall_common::SYNACK_WINDOW as u32);
    flow.seq_known = 1 << (1 - s);
    note_segment(&mut flow, side, packet);
    let _ = FW_FLOWS.insert(&fk, &flow, 1);
}

/// Forgets the flow of `packet` (a SYN reusing a dead flow's tuple).
#[inline(always)]
pub fn forget(packet: &Packet) {
    let (fk, _) = flow_key(&packet.key, 0);
    let _ = FW_FLOWS.remove(&fk);
}

/// The socket-lookup tuple of an inbound packet, and its size for the
/// helpers (IPv4 or IPv6 part of the union).
#[inline(always)]
pub fn sock_tuple(key: &Key) -> (bpf_sock_tuple, u32) {
    // SAFETY: an all-zero tuple is valid.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if crate::parse::is_v4_mapped(&key.src) {
        tuple.__bindgen_anon_1.ipv4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
            saddr: (key.src.lo as u32).to_be(),
            daddr: (key.dst.lo as u32).to_be(),
            sport: key.sport.to_be(),
            dport: key.dport.to_be(),
        };
        core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>()
    } else {
        let words = |a: U128| [((a.hi >> 32) as u32).to_be(), (a.hi as u32).to_be(), ((a.lo >> 32) as u32).to_be(), (a.lo as u32).to_be()];
        tuple.__bindgen_anon_1.ipv6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
            saddr: words(key.src),
            daddr: words(key.dst),
            sport: key.sport.to_be(),
            dport: key.dport.to_be(),
        };
        core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>()
    };
    (tuple, size as u32)
}

pub const BPF_F_CURRENT_NETNS: u64 = -1i64 as u64;
pub const TCP_LISTEN: u32 = 10;

/// Whether the host has a connected (not listening) TCP socket for this
/// inbound packet. `ctx` is the XDP context.
#[inline(always)]
pub fn has_socket(ctx: *mut c_void, key: &Key) -> bool {
    let (mut tuple, size) = sock_tuple(key);
    // SAFETY: helper call with a tuple of the size passed; the socket it
    // returns is released on every path.
    unsafe {
        let sk = bpf_sk_lookup_tcp(ctx, &mut tuple, size, BPF_F_CURRENT_NETNS, 0);
        if sk.is_null() {
            return false;
        }
        let connected = (*sk).state != TCP_LISTEN;
        bpf_sk_release(sk as *mut c_void);
        connected
    }
}
