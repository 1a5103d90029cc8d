//! The XDP ingress pipeline: the frame is parsed once, then the packet
//! goes through connection tracking, the rules and (for a cookie service)
//! the cookie programs, each stage reading the parsed packet. The result
//! is the reason the packet is counted under, which says the verdict.

pub mod cookie_ack;
pub mod cookie_syn;

use aya_ebpf::programs::XdpContext;
use firewall_common::{
    ACTION_ACCEPT, MAX_RULES, NODE_LEAF, PORTS, Reason, STATE_ACCEPT, STATE_DROP, STATE_RULES,
    STATUS_NO_META, SYNCOOKIE_ALWAYS, SYNCOOKIE_OFF, ct_state,
    maps::{PROG_COOKIE_ACK, PROG_COOKIE_SYN},
    tcp_flags::{ACK, FIN, RST, SYN},
};

use crate::{
    FW_COOKIE_ARG, FW_COOKIE_ON, FW_COOKIE_PORT, FW_LOCAL_ADDRS, FW_PROGS, FW_STATUS, FW_SYN_PORTS,
    conntrack::{self, Ct, Dir, Judged, Socket},
    cookie::{self, Event},
    counters, events,
    parse::{self, Frame, Packet},
    rules,
};

/// The verdict for one frame, as the reason it is counted under.
#[inline(always)]
pub fn decide(ctx: &XdpContext, frame: &Frame) -> Reason {
    let packet = match parse::parse_once(frame) {
        Ok(Some(packet)) => packet,
        Ok(None) => return Reason::NonIp,
        Err(reason) => return reason,
    };
    let (slot, header) = match rules::active_policy() {
        Ok(p) => p,
        Err(reason) => return reason,
    };
    if packet.fragment {
        return if header.fragment_action == ACTION_ACCEPT {
            Reason::FragmentAccept
        } else {
            Reason::FragmentDrop
        };
    }
    // Connection state first, like `ct state established,related accept;
    // ct state invalid drop` at the top of an nftables chain; each can be
    // handed to the rules instead.
    // A SYN to a port where only `always` cookie services (or nothing)
    // accept one skips the table of unproven flows (see `maps::SYN_PORTS`).
    let syn_main_only = packet.key.proto == parse::IPPROTO_TCP
        && packet.key.tcp_flags & (SYN | ACK) == SYN
        && FW_SYN_PORTS.get(slot).is_some_and(|open| !open.has(packet.key.dport));
    let judge = |p: &Packet| guard_of_syn(slot, header, p);
    // A bare SYN of no flow in the main table (its hint slot is empty) is
    // new, or a retransmission of a handshake the table of unproven flows
    // holds, new to the rules as well: they judge it before that table is
    // read, so a flood they drop costs no lookup there, and a SYN they
    // accept is not judged again (`judge_new` takes this match).
    if packet.key.proto == parse::IPPROTO_TCP
        && packet.key.tcp_flags & (SYN | ACK | RST | FIN) == SYN
        && !syn_main_only
        && conntrack::surely_no_main_flow(&packet.key)
    {
        packet.key.ct_state = ct_state::NEW;
        let Ok(at) = rules::classify_at(slot, header.root, &packet.key) else {
            return Reason::Internal;
        };
        let matched = at.map(|(_, b)| b);
        let reason = rules::reason(header, matched);
        if !rules::accepts(reason) {
            events::note_rule(slot, matched);
            if let Some(m) = matched {
                counters::count_rule(slot, m.rule, packet.wire_len);
            }
            return reason;
        }
        // An index in the packet, not a pointer held across conntrack:
        // the verifier would check conntrack once per value.
        packet.early = at.map_or(parse::EARLY_NO_RULE, |(i, _)| parse::EARLY_BOX + i);
    }
    let mut ct = conntrack::track(frame, packet, &header.timeouts, Dir::Ingress, syn_main_only, judge);
    let sk = ctx.ctx as *mut _;
    match ct {
        // Counted again by the rule that accepts its SYN, as before it
        // was lost: no refusal, no ban (it is not new, and this packet
        // proves nothing).
        Ct::Rejoined => {
            if let Ok(Some(r)) = guard_of_syn(slot, header, packet).verdict() {
                if crate::limit::count(r, &packet.key) && !conntrack::mark_counted(packet, r) {
                    crate::limit::unprove(r, &packet.key.src);
                }
            }
            ct = Ct::Established;
        }
        // An ACK of no flow for a connection the host has: evicted from
        // the table, or older than the firewall. The host's connection
        // proves its source: the rule's limits count it (or refuse it).
        Ct::Invalid(Reason::InvalidNoFlow) => match conntrack::socket_state(sk, &packet.key) {
            Socket::Connected => {
                adopt_judged(slot, header, frame, packet);
                ct = Ct::Established;
            }
            // A half-open handshake of the host's own (the table lost it):
            // the host's stack judges the ACK; no flow until it has a
            // connection (an off-path sender can make request sockets).
            // Not for a rule with limits: the host's next SYN-ACK rebuilds
            // the flow, whose proof they judge and charge (a handshake kept
            // waiting until its flow expired would pass uncharged).
            Socket::Request if guard_of_syn(slot, header, packet) == Judged::ACCEPT => ct = Ct::Established,
            Socket::Request | Socket::None | Socket::Listener | Socket::TimeWait | Socket::Opening => {}
        },
        // The table holds a handshake for a tuple the host has a live
        // connection on (it predates the firewall, or was evicted, and a
        // SYN from outside opened a flow over it): the host is the truth.
        Ct::Invalid(Reason::InvalidState) if conntrack::socket_state(sk, &packet.key) == Socket::Connected => {
            conntrack::forget(packet);
            adopt_judged(slot, header, frame, packet);
            ct = Ct::Established;
        }
        // A SYN on a known tuple: for the host's stack to answer where it
        // has a socket for the tuple; past a live flow unchanged where it
        // has none (the answer's SYN-ACK replaces it); on a closed flow,
        // judged by the rules as new, the old flow replaced at once only
        // when the SYN is beyond the old sequence (TIME-WAIT reuse). No
        // cookie answers a SYN a TIME-WAIT socket is to decide.
        Ct::SynReuse | Ct::SynInFlow | Ct::SynInClosed => match conntrack::socket_state(sk, &packet.key) {
            Socket::Connected | Socket::Request | Socket::Opening => ct = Ct::Established,
            // A live flow the host has no socket for: a SYN from outside
            // never ends it (see `Ct::SynInFlow`), the answer's SYN-ACK
            // does. A listener proves nothing: docker-proxy listens where
            // DNAT takes the connections elsewhere.
            Socket::None | Socket::Listener if ct == Ct::SynInFlow => ct = Ct::Established,
            // The host's TIME-WAIT socket decides (it may take the SYN by
            // timestamps), or the DNAT destination's does (a listener here
            // proves nothing): the rules judge the SYN as new, the old flow
            // stays (see `Packet::keeps_flow`).
            Socket::TimeWait | Socket::None | Socket::Listener if ct != Ct::SynReuse => {
                packet.syn_again = true;
                packet.keeps_flow = true;
                ct = Ct::New;
            }
            // Beyond the old sequence: a new connection, for the TIME-WAIT
            // socket to take (no cookie answers for it).
            Socket::TimeWait => {
                packet.syn_again = true;
                packet.replaces = true;
                ct = Ct::New;
            }
            Socket::None | Socket::Listener => {
                packet.replaces = true;
                ct = Ct::New;
            }
        },
        _ => {}
    }
    // An ACK of no flow to a cookie port may complete a handshake the
    // firewall answered: the cookie ACK program asks the rules first, then
    // the SipHash. It counts and judges the packet itself.
    if let Ct::Invalid(Reason::InvalidNoFlow) = ct {
        if is_cookie_port(slot, packet) {
            if let Some(arg) = FW_COOKIE_ARG.get_ptr_mut(0) {
                // SAFETY: this CPU's slot; the tail-called program reads it.
                unsafe {
                    *arg = [slot, MAX_RULES];
                    let _ = FW_PROGS.tail_call(ctx, PROG_COOKIE_ACK);
                }
            }
            // Only reached when the tail call failed: never validated.
            ct = Ct::Invalid(Reason::CookieInvalid);
        }
    }
    // Counted and noted for events where it was refused.
    if let Ct::Refused(reason) = ct {
        return reason;
    }
    let (state, setting) = match ct {
        Ct::New | Ct::NoFlow | Ct::SynAgain => (ct_state::NEW, STATE_RULES),
        // Resolved above.
        Ct::SynInFlow | Ct::SynInClosed | Ct::SynReuse => (ct_state::ESTABLISHED, header.established),
        Ct::Established | Ct::Rejoined => (ct_state::ESTABLISHED, header.established),
        Ct::Related => (ct_state::RELATED, header.related),
        Ct::Invalid(_) | Ct::Refused(_) => (ct_state::INVALID, header.invalid),
    };
    match (setting, ct) {
        (STATE_ACCEPT, Ct::Established) => return Reason::Established,
        (STATE_ACCEPT, Ct::Related) => return Reason::Related,
        (STATE_ACCEPT, _) => return Reason::InvalidAccept,
        (STATE_DROP, Ct::Invalid(reason)) => return reason,
        (STATE_DROP, _) => return Reason::StateDrop,
        _ => {}
    }
    packet.key.ct_state = state;
    // A retransmitted SYN of a handshake the table follows is not answered
    // with a cookie (its flow would reject the cookie's ACK).
    packet.syn_again |= ct == Ct::SynAgain;
    packet.no_flow = ct == Ct::NoFlow;
    // The early match holds while the packet is still new to the rules.
    if state != ct_state::NEW {
        packet.early = parse::EARLY_NONE;
    }
    judge_new(ctx, slot, header, packet)
}

/// The rules' verdict on a packet that conntrack handed them, and what an
/// accepted new one starts: a cookie answer, or a flow.
#[inline(always)]
fn judge_new(ctx: &XdpContext, slot: u32, header: &firewall_common::PolicyHeader, packet: &Packet) -> Reason {
    let mut service = (MAX_RULES, SYNCOOKIE_OFF);
    let mut limited = false;
    // A SYN judged early is not walked again. (No rule matched: an empty
    // leaf as the root walks nothing; an `Ok(None)` of its own here made
    // the verifier check the rest once more, +200k instructions.)
    let matched = if packet.early >= parse::EARLY_BOX {
        rules::box_at(slot, packet.early - parse::EARLY_BOX).map(Some)
    } else {
        let root = if packet.early == parse::EARLY_NO_RULE { NODE_LEAF } else { header.root };
        rules::classify(slot, root, &packet.key)
    };
    let Ok(matched) = matched else {
        return Reason::Internal;
    };
    events::note_rule(slot, matched);
    if let Some(m) = matched {
        counters::count_rule(slot, m.rule, packet.wire_len);
        service = (m.rule, m.syncookie);
        limited = m.limited != 0;
    }
    let reason = rules::reason(header, matched);
    if !rules::accepts(reason) || packet.key.ct_state != ct_state::NEW {
        return reason;
    }
    // Before any state: a refused SYN opens no flow and gets no cookie.
    // Charged only for what opens a flow: not a retransmitted SYN of a
    // tracked handshake, nor another datagram of an unreplied UDP flow.
    let opens = packet.no_flow || packet.replaces || packet.keeps_flow || conntrack::untracked(&packet.key);
    // The dead flow first: its count must not refuse its successor.
    if packet.replaces {
        conntrack::forget(packet);
    }
    let (rule, mode) = service;
    let bare_syn = packet.key.tcp_flags & (SYN | ACK | RST | FIN) == SYN;
    let cookie_service = mode != SYNCOOKIE_OFF && bare_syn && !packet.syn_again && packet.key.proto == parse::IPPROTO_TCP;
    // Never a reflector: no SYN-ACK to or from an address no host can
    // have, and none for a destination that is not ours.
    let martian = cookie_service && cookie::martian(&packet.key);
    let answer = cookie_service
        && !martian
        && FW_LOCAL_ADDRS.get_ptr(&packet.key.dst).is_some()
        && handoff_works()
        && (mode == SYNCOOKIE_ALWAYS || cookie_engaged(slot, rule));
    // Dropped before any limit: a source no host can have is charged
    // nothing (it has no bucket to fill, nor a ban to earn).
    if martian {
        cookie::count(slot, rule, Event::Syn);
        return Reason::CookieMartian;
    }
    let mut limit_ref = None;
    if limited && opens {
        // A SYN answered with a cookie leaves its rate to the valid ACK,
        // one that keeps its old flow to its proof. The old flow's count
        // goes when the answer replaces it: not one more against its cap.
        let leaving = packet.keeps_flow && conntrack::counted(&packet.key);
        match crate::limit::admit(slot, service.0, &packet.key.src, answer || packet.keeps_flow, leaving) {
            Ok(r) => limit_ref = r,
            Err(reason) => return reason,
        }
    }
    if cookie_service {
        // After the limits: a SYN they refuse does not count towards
        // engaging an `auto` service's cookies.
        cookie::count(slot, rule, Event::Syn);
        if answer {
            if let Some(arg) = FW_COOKIE_ARG.get_ptr_mut(0) {
                // SAFETY: this CPU's slot; the tail-called program reads it.
                unsafe {
                    *arg = [slot, rule];
                    FW_PROGS.tail_call(ctx, PROG_COOKIE_SYN);
                }
            }
            // Only reached when the tail call failed (no program in
            // the array): the host answers the SYN itself, so the rate
            // the valid ACK would have paid is charged now.
            if limited && opens {
                if let Err(reason) = crate::limit::admit(slot, rule, &packet.key.src, false, false) {
                    return reason;
                }
            }
        }
    }
    conntrack::open(packet, Dir::Ingress, false, limit_ref);
    reason
}

/// What the rules say of the SYN `packet` follows, for a handshake or
/// connection whose SYN they did not judge here (its flow was lost, or it
/// is older than the firewall): dropped, or accepted with the
/// `limit_ref` of the rule when it has limits.
#[inline(always)]
fn guard_of_syn(slot: u32, header: &firewall_common::PolicyHeader, packet: &Packet) -> Judged {
    if packet.key.proto != parse::IPPROTO_TCP {
        return Judged::ACCEPT;
    }
    // The same claimed SYN as the cookie ACK program builds (inlined there:
    // a shared helper cost that program 67k verifier instructions).
    let mut claimed = *packet;
    claimed.key.tcp_flags = SYN;
    claimed.key.ct_state = ct_state::NEW;
    let Some(syn) = parse::store(parse::SCRATCH_QUERY, claimed) else { return Judged::ACCEPT };
    match rules::classify(slot, header.root, &syn.key) {
        Ok(Some(m)) if m.action == ACTION_ACCEPT && m.limited != 0 => Judged::accept(crate::limit::guard_ref(slot, m.rule)),
        Ok(Some(m)) if m.action == ACTION_ACCEPT => Judged::ACCEPT,
        Ok(Some(m)) => Judged::drop_by(slot * MAX_RULES + m.rule),
        Ok(None) if header.default_action == ACTION_ACCEPT => Judged::ACCEPT,
        Ok(None) => Judged::DROP_DEFAULT_ACTION,
        Err(()) => Judged::ACCEPT,
    }
}

/// Adopts a connection the host has (see `conntrack::adopt`), counted by
/// its rule's limits when they count connections: not refused nor banned
/// (it is not new, and the packet that shows it proves nothing).
#[inline(always)]
fn adopt_judged(slot: u32, header: &firewall_common::PolicyHeader, frame: &Frame, packet: &Packet) {
    // An RST or SYN is never adopted: nothing to count (a forged RST of a
    // live tuple must not add to its source's count).
    if packet.key.tcp_flags & (RST | SYN) != 0 {
        return;
    }
    let mut counted = None;
    if let Ok(Some(r)) = guard_of_syn(slot, header, packet).verdict() {
        if crate::limit::count(r, &packet.key) {
            counted = Some(r);
        }
    }
    // Not inserted (another CPU's flow won): the count is undone.
    if !conntrack::adopt(frame, packet, Dir::Ingress, true, counted) {
        if let Some(r) = counted {
            crate::limit::unprove(r, &packet.key.src);
        }
    }
}

/// False once a validated cookie ACK could not carry its hand-off mark:
/// every cookie connection would end in an RST, so SYNs go to the host.
#[inline(always)]
fn handoff_works() -> bool {
    FW_STATUS.get(0).is_none_or(|s| *s & STATUS_NO_META == 0)
}

/// Whether some cookie rule covers this ACK's port: a quick filter before
/// the cookie ACK program, which asks the rules themselves.
#[inline(always)]
fn is_cookie_port(slot: u32, packet: &Packet) -> bool {
    if packet.key.proto != parse::IPPROTO_TCP || packet.key.tcp_flags & (SYN | RST | ACK) != ACK {
        return false;
    }
    FW_COOKIE_PORT.get(slot * PORTS + packet.key.dport as u32).is_some_and(|e| *e != 0)
}

/// Whether `auto` mode has switched this service to cookies.
#[inline(always)]
fn cookie_engaged(slot: u32, rule: u32) -> bool {
    rule < MAX_RULES && FW_COOKIE_ON.get(slot * MAX_RULES + rule).is_some_and(|on| *on != 0)
}
