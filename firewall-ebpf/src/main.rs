//! The firewall's XDP program: parse, classify against the compiled policy,
//! count, give the verdict. Maps live here; the work is in the modules.
#![no_std]
#![no_main]

mod conntrack;
mod cookie;
mod counters;
mod events;
mod handoff;
mod parse;
mod rules;

use aya_ebpf::{
    bindings::{
        TC_ACT_OK,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    },
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use conntrack::{Ct, Dir, Socket};
use cookie::Event;
use firewall_common::{
    ACTION_ACCEPT, Active, Control, CookieConfig, EVENT_CLASSES, EVENT_RING_BYTES, EventArg, EventConfig, EventState, IfaceInfo, RuleBase, CookieCounters, CookieKey, Counter, Flow, FlowKey,
    MAX_BOXES, MAX_FLOWS, MAX_LEAF_REFS, MAX_LOCAL_ADDRS, MAX_NODES, MAX_REMOTE_FLOWS, MAX_RULES,
    COOKIE_PORT_ALWAYS_ONLY, MatchBox, Node, POLICY_SLOTS, PORTS, PolicyHeader, Reason, RuleMeta, STATE_ACCEPT, STATE_DROP,
    STATUS_NO_META, SYNCOOKIE_ALWAYS, SYNCOOKIE_OFF, U128, WSCALE_NONE, ct_state,
    maps::{PROG_COOKIE_ACK, PROG_COOKIE_SYN},
    reason::REASON_COUNT,
    tcp_flags::{ACK, FIN, RST, SYN},
};
use parse::Frame;

// Map names must equal the constants in `firewall_common::maps` (checked by
// the loader test `object_has_every_map`).
#[map(name = "FW_ACTIVE")]
static FW_ACTIVE: Array<Active> = Array::with_max_entries(1, 0);
#[map(name = "FW_POLICY")]
static FW_POLICY: Array<PolicyHeader> = Array::with_max_entries(POLICY_SLOTS, 0);
#[map(name = "FW_NODES")]
static FW_NODES: Array<Node> = Array::with_max_entries(POLICY_SLOTS * MAX_NODES, 0);
#[map(name = "FW_LEAF_REFS")]
static FW_LEAF_REFS: Array<u32> = Array::with_max_entries(POLICY_SLOTS * MAX_LEAF_REFS, 0);
#[map(name = "FW_BOXES")]
static FW_BOXES: Array<MatchBox> = Array::with_max_entries(POLICY_SLOTS * MAX_BOXES, 0);
#[map(name = "FW_RULE_META")]
static FW_RULE_META: Array<RuleMeta> = Array::with_max_entries(POLICY_SLOTS * MAX_RULES, 0);
#[map(name = "FW_RULE_CNT")]
static FW_RULE_CNT: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(POLICY_SLOTS * MAX_RULES, 0);
#[map(name = "FW_REASON_CNT")]
static FW_REASON_CNT: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_COUNT, 0);
/// Per-CPU copy of the packet the rules are matched against. Read back from
/// a map, every field is unknown to the verifier, and what differed between
/// the parse and conntrack paths is dead by then: it checks the rule walk
/// once instead of once per path (which took ~660,000 instructions of its
/// 1M budget).
#[map(name = "FW_SCRATCH")]
static FW_SCRATCH: PerCpuArray<parse::Packet> = PerCpuArray::with_max_entries(1, 0);
/// Per-CPU result of `parse::tcp_options` (see there for why a map).
#[map(name = "FW_OPTS")]
static FW_OPTS: PerCpuArray<parse::OptionPositions> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "FW_FLOWS")]
static FW_FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(MAX_FLOWS, 0);
/// Flows opened from outside and not proven yet: a spoofed flood churns
/// this table, never `FW_FLOWS` (see `MAX_REMOTE_FLOWS`).
#[map(name = "FW_REMOTE_FLOWS")]
static FW_REMOTE_FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(MAX_REMOTE_FLOWS, 0);
/// Write-only through the controller's descriptor (BPF_F_WRONLY): a
/// leaked descriptor cannot read the cookie keys back. (CAP_SYS_ADMIN can
/// still open any map by id read-write.)
#[map(name = "FW_COOKIE_KEY")]
static FW_COOKIE_KEY: Array<CookieKey> = Array::with_max_entries(2, BPF_F_WRONLY);
/// The host's addresses (controller-written): cookie SYN-ACKs are sent
/// for these destinations only.
#[map(name = "FW_LOCAL_ADDRS")]
static FW_LOCAL_ADDRS: HashMap<U128, u32> = HashMap::with_max_entries(MAX_LOCAL_ADDRS, 0);
/// `STATUS_*` flags the programs raise for the controller.
#[map(name = "FW_STATUS")]
static FW_STATUS: Array<u32> = Array::with_max_entries(1, 0);
#[map(name = "FW_COOKIE_CFG")]
static FW_COOKIE_CFG: Array<CookieConfig> = Array::with_max_entries(1, 0);
#[map(name = "FW_COOKIE_ON")]
static FW_COOKIE_ON: Array<u32> = Array::with_max_entries(POLICY_SLOTS * MAX_RULES, 0);
#[map(name = "FW_COOKIE_CNT")]
static FW_COOKIE_CNT: PerCpuArray<CookieCounters> =
    PerCpuArray::with_max_entries(POLICY_SLOTS * MAX_RULES, 0);
#[map(name = "FW_COOKIE_PORT")]
static FW_COOKIE_PORT: Array<u32> = Array::with_max_entries(POLICY_SLOTS * PORTS, 0);
/// The policy slot and rule a tail-called cookie program works for.
#[map(name = "FW_COOKIE_ARG")]
static FW_COOKIE_ARG: PerCpuArray<[u32; 2]> = PerCpuArray::with_max_entries(1, 0);
/// Programs the XDP program tail-calls (`maps::PROG_*`): each has a
/// verifier budget of its own.
// Read by no program: the controller's records, bound to the XDP program
// by the loader so that they live (and are found) with it.
#[map(name = "FW_CONTROL")]
static FW_CONTROL: Array<Control> = Array::with_max_entries(1, 0);
#[map(name = "FW_IFACE")]
static FW_IFACE: Array<IfaceInfo> = Array::with_max_entries(1, 0);
#[map(name = "FW_RULE_BASE")]
static FW_RULE_BASE: Array<RuleBase> = Array::with_max_entries(POLICY_SLOTS * MAX_RULES, 0);
#[map(name = "FW_PROGS")]
static FW_PROGS: ProgramArray = ProgramArray::with_max_entries(3, 0);
#[map(name = "FW_EVENTS")]
static FW_EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);
#[map(name = "FW_EVENT_CFG")]
static FW_EVENT_CFG: Array<EventConfig> = Array::with_max_entries(1, 0);
#[map(name = "FW_EVENT_ST")]
static FW_EVENT_STATE: PerCpuArray<EventState> = PerCpuArray::with_max_entries(EVENT_CLASSES, 0);
#[map(name = "FW_EVENT_ARG")]
static FW_EVENT_ARG: PerCpuArray<EventArg> = PerCpuArray::with_max_entries(1, 0);

/// `BPF_F_WRONLY` (include/uapi/linux/bpf.h): userspace may only write.
const BPF_F_WRONLY: u32 = 1 << 4;

#[xdp]
pub fn firewall(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    let frame = Frame { start, end, wire_len: (end - start) as u64 };
    let len = frame.wire_len;
    let reason = decide(&ctx, &frame);
    counters::count_reason(reason, len);
    let action = if reason.drops() { XDP_DROP } else { XDP_PASS };
    events::hand_over(&ctx, reason, action);
    action
}

/// The policy slot in force: read once, so one packet sees one policy.
#[inline(always)]
fn active_policy() -> Result<(u32, &'static PolicyHeader), Reason> {
    let slot = FW_ACTIVE.get(0).ok_or(Reason::Internal)?.slot;
    if slot >= POLICY_SLOTS {
        return Err(Reason::Internal);
    }
    let header = FW_POLICY.get(slot).ok_or(Reason::Internal)?;
    if header.loaded == 0 {
        return Err(Reason::NoPolicy);
    }
    Ok((slot, header))
}

/// The verdict for one frame, as the reason it is counted under.
#[inline(always)]
fn decide(ctx: &XdpContext, frame: &Frame) -> Reason {
    let mut packet = match parse::parse(frame) {
        Ok(Some(packet)) => packet,
        Ok(None) => return Reason::NonIp,
        Err(reason) => return reason,
    };
    let (slot, header) = match active_policy() {
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
    // A SYN to a port only `always` cookie services take can have no
    // unproven flow: the flood path skips that table.
    let syn_main_only = packet.key.proto == parse::IPPROTO_TCP
        && packet.key.tcp_flags & (SYN | ACK) == SYN
        && FW_COOKIE_PORT.get(slot * PORTS + packet.key.dport as u32).is_some_and(|e| *e & COOKIE_PORT_ALWAYS_ONLY != 0);
    let mut ct = conntrack::track(frame, &packet, &header.timeouts, Dir::Ingress, syn_main_only);
    let sk = ctx.ctx as *mut _;
    match ct {
        // An ACK of no flow for a connection the host has: evicted from
        // the table, or older than the firewall.
        Ct::Invalid(Reason::InvalidNoFlow) => match conntrack::socket_state(sk, &packet.key) {
            Socket::Connected => {
                conntrack::adopt(frame, &packet, Dir::Ingress, true);
                ct = Ct::Established;
            }
            // A half-open handshake of the host's own (the table lost it):
            // the host's stack judges the ACK; no flow until it has a
            // connection (an off-path sender can make request sockets).
            Socket::Request => ct = Ct::Established,
            Socket::None | Socket::TimeWait | Socket::Opening => {}
        },
        // The table holds a handshake for a tuple the host has a live
        // connection on (it predates the firewall, or was evicted, and a
        // SYN from outside opened a flow over it): the host is the truth.
        Ct::Invalid(Reason::InvalidState) if conntrack::socket_state(sk, &packet.key) == Socket::Connected => {
            conntrack::forget(&packet);
            conntrack::adopt(frame, &packet, Dir::Ingress, true);
            ct = Ct::Established;
        }
        // A SYN on a known tuple: a new connection if the host has none
        // there (the old flow is replaced once the rules accept it); the
        // host's stack answers it when it still has one; a TIME-WAIT
        // socket decides itself, so no cookie answers for it.
        Ct::SynReuse | Ct::SynInFlow => match conntrack::socket_state(sk, &packet.key) {
            Socket::Connected | Socket::Request | Socket::Opening => ct = Ct::Established,
            Socket::TimeWait => {
                packet.syn_again = true;
                packet.replaces = ct == Ct::SynReuse;
                ct = Ct::New;
            }
            Socket::None => {
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
        if is_cookie_port(slot, &packet) {
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
    let (state, setting) = match ct {
        Ct::New | Ct::SynAgain => (ct_state::NEW, firewall_common::STATE_RULES),
        // Resolved above.
        Ct::SynInFlow | Ct::SynReuse => (ct_state::ESTABLISHED, header.established),
        Ct::Established => (ct_state::ESTABLISHED, header.established),
        Ct::Related => (ct_state::RELATED, header.related),
        Ct::Invalid(_) => (ct_state::INVALID, header.invalid),
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
    let Some(packet) = forget_paths(packet) else {
        return Reason::Internal;
    };
    let mut service = (MAX_RULES, SYNCOOKIE_OFF);
    let Ok(matched) = rules::classify(slot, header.root, &packet.key) else {
        return Reason::Internal;
    };
    events::note_rule(slot, matched);
    if let Some(m) = matched {
        counters::count_rule(slot, m.rule, packet.wire_len);
        service = (m.rule, m.syncookie);
    }
    let reason = rules::reason(header, matched);
    let accept = rules::accepts(reason);
    // Read from the scratch copy, not kept from before the walk (see FW_SCRATCH).
    if accept && packet.key.ct_state == ct_state::NEW {
        if packet.replaces {
            conntrack::forget(packet);
        }
        let (rule, mode) = service;
        let bare_syn = packet.key.tcp_flags & (SYN | ACK | RST | FIN) == SYN;
        if mode != SYNCOOKIE_OFF && bare_syn && !packet.syn_again && packet.key.proto == parse::IPPROTO_TCP {
            cookie::count(slot, rule, Event::Syn);
            // Never a reflector: no SYN-ACK to or from an address no host
            // can have, and none for a destination that is not ours.
            if cookie::martian(&packet.key) {
                return Reason::CookieMartian;
            }
            let ours = FW_LOCAL_ADDRS.get_ptr(&packet.key.dst).is_some();
            if ours && handoff_works() && (mode == SYNCOOKIE_ALWAYS || cookie_engaged(slot, rule)) {
                if let Some(arg) = FW_COOKIE_ARG.get_ptr_mut(0) {
                    // SAFETY: this CPU's slot; the tail-called program reads it.
                    unsafe {
                        *arg = [slot, rule];
                        FW_PROGS.tail_call(ctx, PROG_COOKIE_SYN);
                    }
                }
                // Only reached when the tail call failed (no program in
                // the array): the host answers the SYN itself.
            }
        }
        // Fresh packet pointers: the ones from before the walk stay dead there.
        let frame = Frame { start: ctx.data(), end: ctx.data_end(), wire_len: packet.wire_len };
        conntrack::open(packet, syn_wscale(&frame, packet), Dir::Ingress, false);
    }
    reason
}

/// False once a validated cookie ACK could not carry its hand-off mark:
/// every cookie connection would end in an RST, so SYNs go to the host.
#[inline(always)]
fn handoff_works() -> bool {
    FW_STATUS.get(0).is_none_or(|s| *s & STATUS_NO_META == 0)
}

/// Passes `packet` through this CPU's scratch slot, as the rule walk does
/// (see `FW_SCRATCH`): what the verifier knew of it from the parse paths is
/// gone, so the option scan after it is verified once, not once per path.
#[inline(always)]
pub fn forget_paths(packet: parse::Packet) -> Option<&'static parse::Packet> {
    let scratch = FW_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, used only while one program runs on it
    // (XDP and TC run in softirq context and never nest on a CPU).
    unsafe {
        *scratch = packet;
        Some(&*scratch)
    }
}

/// Whether some cookie rule covers this ACK's port: a quick filter before
/// the cookie ACK program, which asks the rules themselves.
#[inline(always)]
fn is_cookie_port(slot: u32, packet: &parse::Packet) -> bool {
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

/// Tail-called for a SYN that a cookie service accepted: answers it with a
/// cookie SYN-ACK (XDP_TX), or passes it to the host when it cannot.
#[xdp]
pub fn fw_cookie_syn(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    let frame = Frame { start, end, wire_len: (end - start) as u64 };
    let len = frame.wire_len;
    let (reason, action) = cookie_syn(&ctx, &frame);
    counters::count_reason(reason, len);
    action
}

#[inline(always)]
fn cookie_syn(ctx: &XdpContext, frame: &Frame) -> (Reason, u32) {
    let Some(&[slot, rule]) = FW_COOKIE_ARG.get(0) else {
        return (Reason::Internal, XDP_PASS);
    };
    let packet = match parse::parse(frame) {
        Ok(Some(packet)) if packet.key.proto == parse::IPPROTO_TCP => packet,
        _ => return (Reason::Internal, XDP_PASS),
    };
    let Some(packet) = forget_paths(packet) else { return (Reason::Internal, XDP_PASS) };
    match cookie::answer_syn(ctx, packet) {
        Ok(()) => {
            cookie::count(slot, rule, Event::Sent);
            events::cookie_syn(ctx, slot, rule, packet, Reason::CookieSent);
            (Reason::CookieSent, XDP_TX)
        }
        Err(reason) => {
            events::cookie_syn(ctx, slot, rule, packet, reason);
            // The frame is still the SYN: let the host answer, tracked as usual.
            let frame = Frame { start: ctx.data(), end: ctx.data_end(), wire_len: packet.wire_len };
            conntrack::open(packet, syn_wscale(&frame, packet), Dir::Ingress, false);
            (reason, XDP_PASS)
        }
    }
}

/// Tail-called for an ACK of no flow to a cookie port. The policy judges
/// it first, as the SYN it claims to complete: only when the rule that
/// would have answered that SYN is an accepting cookie service is the
/// cookie checked. Anything else is an invalid packet, judged by the
/// policy's `invalid` setting.
#[xdp]
pub fn fw_cookie_ack(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    let frame = Frame { start, end, wire_len: (end - start) as u64 };
    let len = frame.wire_len;
    let reason = cookie_ack(&ctx, &frame);
    counters::count_reason(reason, len);
    let action = if reason.drops() { XDP_DROP } else { XDP_PASS };
    events::hand_over(&ctx, reason, action);
    action
}

#[inline(always)]
fn cookie_ack(ctx: &XdpContext, frame: &Frame) -> Reason {
    let Some(&[slot, _]) = FW_COOKIE_ARG.get(0) else { return Reason::Internal };
    if slot >= POLICY_SLOTS {
        return Reason::Internal;
    }
    let Some(header) = FW_POLICY.get(slot) else { return Reason::Internal };
    let packet = match parse::parse(frame) {
        Ok(Some(packet)) if packet.key.proto == parse::IPPROTO_TCP => packet,
        _ => return Reason::Internal,
    };
    let flags = packet.key.tcp_flags;
    let mut syn = packet;
    syn.key.tcp_flags = SYN;
    syn.key.ct_state = ct_state::NEW;
    let Some(scratch) = FW_SCRATCH.get_ptr_mut(0) else { return Reason::Internal };
    // SAFETY: this CPU's slot (see `forget_paths`).
    unsafe { *scratch = syn };
    let p = unsafe { &*scratch };
    let admitted = match rules::classify(slot, header.root, &p.key) {
        Ok(Some(m)) if m.action == ACTION_ACCEPT && m.syncookie != SYNCOOKIE_OFF => {
            // The service the ACK claims: its events name it, and log it
            // when it has `log = true`.
            events::note_rule(slot, Some(m));
            m.rule
        }
        Ok(_) => MAX_RULES,
        Err(()) => return Reason::Internal,
    };
    let mut reason = Reason::CookieNotAdmitted;
    if admitted < MAX_RULES {
        // The cookie is checked on the ACK as it came.
        // SAFETY: as above.
        unsafe { (*scratch).key.tcp_flags = flags };
        let p = unsafe { &*scratch };
        let frame = Frame { start: ctx.data(), end: ctx.data_end(), wire_len: p.wire_len };
        let opts = parse::tcp_options(&frame, p);
        let tsecr = if opts.timestamps { Some(opts.tsecr) } else { None };
        if let Some(valid) = cookie::check_ack(p, tsecr) {
            let ws = if valid.attrs.wscale_ok != 0 { valid.attrs.snd_wscale } else { WSCALE_NONE };
            // Without the mark the host answers the bare ACK with an RST:
            // stop answering SYNs and say so, rather than fail silently.
            if !cookie::mark_for_handoff(ctx, &valid.attrs) {
                if let Some(status) = FW_STATUS.get_ptr_mut(0) {
                    // SAFETY: a map value; a lost race only repeats the store.
                    unsafe { *status |= STATUS_NO_META };
                }
                return Reason::HandoffNoMeta;
            }
            conntrack::open_cookie(&frame, p, ws, valid.cookie);
            cookie::count(slot, admitted, Event::Valid);
            return Reason::CookieValid;
        }
        cookie::count(slot, admitted, Event::Invalid);
        reason = Reason::CookieInvalid;
    }
    match header.invalid {
        STATE_ACCEPT => Reason::InvalidAccept,
        STATE_DROP => reason,
        _ => {
            // `invalid = "rules"`: the rules see it as what it is.
            // SAFETY: as above.
            unsafe {
                (*scratch).key.tcp_flags = flags;
                (*scratch).key.ct_state = ct_state::INVALID;
            }
            let p = unsafe { &*scratch };
            let Ok(matched) = rules::classify(slot, header.root, &p.key) else { return Reason::Internal };
            events::note_rule(slot, matched);
            if let Some(m) = matched {
                counters::count_rule(slot, m.rule, p.wire_len);
            }
            rules::reason(header, matched)
        }
    }
}

/// Tail-called for a verdict to record (see `events::hand_over`): records
/// it, then gives that verdict.
#[xdp]
pub fn fw_event(ctx: XdpContext) -> u32 {
    events::record(&ctx)
}

/// For the far end of a veth pair: in native mode a veth delivers the
/// frames its peer sends with XDP_TX (cookie SYN-ACKs) only while it runs
/// an XDP program itself (TOOLCHAIN.md, veth facts). Passes everything.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// TC ingress: hands an ACK whose cookie XDP validated (marked with XDP
/// metadata) to its listener; every other packet passes untouched.
#[classifier]
pub fn fw_ingress(ctx: TcContext) -> i32 {
    if let Some(reason) = handoff::run(&ctx) {
        counters::count_reason(reason, ctx.len() as u64);
    }
    TC_ACT_OK
}

/// Egress: records the flows the host opens and advances every flow on
/// its outbound packets, so that replies are known on ingress. Never drops.
#[classifier]
pub fn fw_egress(ctx: TcContext) -> i32 {
    let frame = Frame::of_skb(&ctx);
    let reason = egress(&frame);
    counters::count_reason(reason, frame.wire_len);
    TC_ACT_OK
}

#[inline(always)]
fn egress(frame: &Frame) -> Reason {
    let Ok(Some(packet)) = parse::parse(frame) else {
        return Reason::EgressUntracked;
    };
    let Ok((slot, header)) = active_policy() else {
        return Reason::EgressUntracked;
    };
    if packet.fragment {
        return Reason::EgressUntracked;
    }
    match conntrack::track(frame, &packet, &header.timeouts, Dir::Egress, false) {
        // The host's stack is authoritative: its SYN on a dead flow's tuple
        // starts a new connection.
        Ct::SynInFlow | Ct::SynReuse => {
            conntrack::forget(&packet);
            if packet.key.tcp_flags & ACK != 0 {
                // A SYN-ACK: the host answers a new connection on the tuple.
                conntrack::open_synack(frame, &packet);
                return Reason::EgressTracked;
            }
            conntrack::open(&packet, syn_wscale(frame, &packet), Dir::Egress, true);
            Reason::EgressNew
        }
        Ct::New => {
            // A datagram of no flow may answer one from outside whose flow
            // the remote table lost: a spoofed flood must not reach the main
            // table through the host's replies. An echo reply opens nothing;
            // a datagram the rules would admit inbound goes to the remote
            // table (the rules take its peer's packets anyway).
            let (proven, wscale) = match packet.key.proto {
                parse::IPPROTO_ICMP if packet.key.sport == 0 => return Reason::EgressTracked,
                parse::IPPROTO_ICMPV6 if packet.key.sport == 129 => return Reason::EgressTracked,
                parse::IPPROTO_UDP => (!inbound_allowed(slot, header, &packet), WSCALE_NONE),
                parse::IPPROTO_TCP => (true, syn_wscale(frame, &packet)),
                _ => (true, WSCALE_NONE),
            };
            if conntrack::open(&packet, wscale, Dir::Egress, proven) {
                Reason::EgressNew
            } else {
                Reason::EgressTracked
            }
        }
        Ct::Invalid(Reason::InvalidNoFlow) => {
            conntrack::adopt(frame, &packet, Dir::Egress, true);
            Reason::EgressTracked
        }
        // The host answers a SYN the table lost (or never saw): half-open.
        Ct::Invalid(Reason::InvalidSynAck) => {
            conntrack::open_synack(frame, &packet);
            Reason::EgressTracked
        }
        _ => Reason::EgressTracked,
    }
}

/// Whether the rules would accept, as a new flow, the reverse of this
/// outbound packet (its peer sending to the host).
#[inline(always)]
fn inbound_allowed(slot: u32, header: &PolicyHeader, packet: &parse::Packet) -> bool {
    let mut reverse = *packet;
    reverse.key.src = packet.key.dst;
    reverse.key.dst = packet.key.src;
    reverse.key.sport = packet.key.dport;
    reverse.key.dport = packet.key.sport;
    reverse.key.ct_state = ct_state::NEW;
    let Some(p) = forget_paths(reverse) else { return false };
    rules::classify(slot, header.root, &p.key).is_ok_and(|m| rules::accepts(rules::reason(header, m)))
}

/// The window scale a TCP SYN announces (`WSCALE_NONE` for anything else).
#[inline(always)]
fn syn_wscale(frame: &Frame, packet: &parse::Packet) -> u8 {
    if packet.key.proto != parse::IPPROTO_TCP {
        return firewall_common::WSCALE_NONE;
    }
    parse::tcp_wscale(frame, packet).unwrap_or(firewall_common::WSCALE_NONE)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
