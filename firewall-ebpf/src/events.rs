//! Events: the fast path checks one config word (drops) or the matched
//! rule's `log` bit and tail-calls `fw_event`, which samples, caps per
//! second per CPU, parses the frame and writes an `Event` to the ring
//! buffer, then gives the verdict it was called with. The cookie SYN
//! program records its SYNs itself (it has the parsed packet). A full ring
//! loses the record, never the packet.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_ktime_get_ns,
    programs::XdpContext,
};
use firewall_common::{
    CLASS_BAN, CLASS_DROP, CLASS_LOG, CLASS_SYN, EVENT_BAN, EVENT_DROP, EVENT_LOG, EVENT_SYN, Event, EventState, MAX_RULES, MatchBox, NO_RULE, Reason,
    maps::PROG_EVENT,
};

use crate::{FW_EVENT_ARG, FW_EVENT_CFG, FW_EVENT_STATE, FW_EVENTS, FW_PROGS, FW_RULE_META, parse};

/// Notes which rule the rules matched (the event program names it, and
/// logs the packet when the rule asks). Called right after every rule walk.
#[inline(always)]
pub fn note_rule(slot: u32, matched: Option<&MatchBox>) {
    if let Some(arg) = FW_EVENT_ARG.get_ptr_mut(0) {
        let (rule, log) = matched.map_or((NO_RULE as u32, 0), |m| (m.rule, m.log as u32));
        // SAFETY: a per-CPU slot; only this CPU writes it while we run.
        unsafe {
            (*arg).slot = slot;
            (*arg).rule = rule;
            (*arg).log = log;
        }
    }
}

/// As `note_rule`, for a verdict of rule `index` (slot * MAX_RULES +
/// rule) reached without a walk: a limit refusing a connection at the
/// handshake that proves it.
#[inline(always)]
pub fn note_index(index: u32) {
    if let Some(arg) = FW_EVENT_ARG.get_ptr_mut(0) {
        // Past the rules: the policy's default, no rule (the slot stays).
        let known = index < firewall_common::POLICY_SLOTS * MAX_RULES;
        let log = if known { FW_RULE_META.get(index).map_or(0, |m| m.log as u32) } else { 0 };
        // SAFETY: a per-CPU slot; only this CPU writes it while we run.
        unsafe {
            if known {
                (*arg).slot = index / MAX_RULES;
                (*arg).rule = index % MAX_RULES;
            } else {
                (*arg).rule = NO_RULE as u32;
            }
            (*arg).log = log;
        }
    }
}

/// Hands the frame to the event program when its verdict is to be
/// recorded: a drop while drop events are on, or any verdict of a rule
/// with `log = true`. Returns only when it is not (or the tail call
/// failed): the caller then gives `action` itself.
#[inline(always)]
pub fn hand_over(ctx: &XdpContext, reason: Reason, action: u32) {
    let Some(arg) = FW_EVENT_ARG.get_ptr_mut(0) else { return };
    // The rule fields are current only after a rule walk (`note_rule`):
    // these verdicts come only after one (a valid cookie ACK: after the
    // walk that found the service it completes; a refusal by a rule's
    // `limit`, at a SYN or at the proof: after the walk that found the rule; not `CookieInvalid`, which
    // the XDP program also gives when its tail call fails, with no walk).
    let of_rules = matches!(reason, Reason::RuleAccept | Reason::RuleDrop | Reason::CookieMartian | Reason::CookieValid | Reason::RateLimited | Reason::ConnLimited);
    // SAFETY: a per-CPU slot; only this CPU touches it while we run.
    let logged = of_rules && unsafe { (*arg).log } != 0;
    if !logged && !(action == XDP_DROP && FW_EVENT_CFG.get(0).is_some_and(|c| c.sample != 0)) {
        return;
    }
    // SAFETY: as above.
    unsafe {
        (*arg).reason = reason as u32;
        (*arg).action = action;
        if !of_rules {
            (*arg).rule = NO_RULE as u32;
            (*arg).log = 0;
        }
    }
    // SAFETY: the index is one of ours; on failure the caller gives the verdict.
    let _ = unsafe { FW_PROGS.tail_call(ctx, PROG_EVENT) };
}

/// The event program's work: records what `FW_EVENT_ARG` describes, if the
/// sampler and the cap let it; returns the verdict to give.
#[inline(always)]
pub fn record(ctx: &XdpContext) -> u32 {
    let Some(arg) = FW_EVENT_ARG.get(0).copied() else { return XDP_DROP };
    let action = if arg.action == XDP_PASS { XDP_PASS } else { XDP_DROP };
    let Some(cfg) = FW_EVENT_CFG.get(0) else { return action };
    let logged = arg.log != 0;
    let (class, kind, sample, cap) = if logged { (CLASS_LOG, EVENT_LOG, 1, cfg.log_per_second) } else { (CLASS_DROP, EVENT_DROP, cfg.sample, cfg.per_second) };
    let Some((st, now)) = admit(class, sample, cap) else { return action };
    let (start, end) = (ctx.data(), ctx.data_end());
    let frame = parse::Frame { start, end, wire_len: (end - start) as u64, ctx: ctx.ctx as *mut _, local_socket: false };
    let mut ev = Event {
        ts_ns: now,
        kind,
        slot: arg.slot as u8,
        reason: arg.reason as u16,
        rule: if arg.rule < MAX_RULES { arg.rule as u16 } else { NO_RULE },
        ifindex: ctx.ingress_ifindex() as u32,
        len: frame.wire_len as u32,
        ..Event::default()
    };
    if let Ok(Some(p)) = parse::parse(&frame) {
        fill(&mut ev, &p.key);
    }
    submit(st, ev);
    action
}

/// For the cookie SYN program, once it answered `packet` (a SYN to the
/// service `rule`) or could not (`reason`): one SYN in `syn_sample` is
/// recorded for the top sources; every one is logged when the rule has
/// `log = true`. (`packet` is the scratch copy: still the SYN's fields.)
#[inline(always)]
pub fn cookie_syn(ctx: &XdpContext, slot: u32, rule: u32, packet: &parse::Packet, reason: Reason) {
    let Some(cfg) = FW_EVENT_CFG.get(0) else { return };
    let (syn_sample, per_second, log_per_second) = (cfg.syn_sample, cfg.per_second, cfg.log_per_second);
    let mut base = Event {
        slot: slot as u8,
        reason: reason as u16,
        rule: if rule < MAX_RULES { rule as u16 } else { NO_RULE },
        ifindex: ctx.ingress_ifindex() as u32,
        len: packet.wire_len as u32,
        ..Event::default()
    };
    fill(&mut base, &packet.key);
    let logs = rule < MAX_RULES && FW_RULE_META.get(slot * MAX_RULES + rule).is_some_and(|m| m.log != 0);
    if logs {
        if let Some((st, now)) = admit(CLASS_LOG, 1, log_per_second) {
            submit(st, Event { ts_ns: now, kind: EVENT_LOG, ..base });
        }
    }
    if syn_sample == 0 {
        return;
    }
    if let Some((st, now)) = admit(CLASS_SYN, syn_sample, per_second) {
        submit(st, Event { ts_ns: now, kind: EVENT_SYN, ..base });
    }
}

/// A proven source that rule `rule` banned for passing its limit
/// (`reason`), as of `packet`: recorded unsampled, capped like drops.
/// Written in place: the cookie ACK program has no stack for a record.
#[inline(always)]
pub fn ban(slot: u32, rule: u32, packet: &parse::Key, reason: Reason) {
    let Some(cfg) = FW_EVENT_CFG.get(0) else { return };
    let Some((st, now)) = admit(CLASS_BAN, 1, cfg.per_second) else { return };
    let Some(mut entry) = FW_EVENTS.reserve::<Event>(0) else {
        st.skipped = st.skipped.saturating_add(1);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: the reserved record; every field is written before submit.
    unsafe {
        (*ev).ts_ns = now;
        (*ev).src = packet.src;
        (*ev).dst = packet.dst;
        (*ev).sport = packet.sport;
        (*ev).dport = packet.dport;
        (*ev).proto = packet.proto;
        (*ev).tcp_flags = packet.tcp_flags;
        (*ev).kind = EVENT_BAN;
        (*ev).slot = slot as u8;
        (*ev).reason = reason as u16;
        (*ev).rule = rule as u16;
        (*ev).ifindex = 0;
        (*ev).len = 0;
        (*ev).skipped = st.skipped;
    }
    st.skipped = 0;
    entry.submit(0);
}

#[inline(always)]
fn fill(ev: &mut Event, key: &parse::Key) {
    ev.src = key.src;
    ev.dst = key.dst;
    ev.sport = key.sport;
    ev.dport = key.dport;
    ev.proto = key.proto;
    ev.tcp_flags = key.tcp_flags;
}

/// One more of `class` seen on this CPU: whether it is recorded (one in
/// `sample`, 0: none; at most `cap` a second), with the time.
#[inline(always)]
fn admit(class: u32, sample: u32, cap: u32) -> Option<(&'static mut EventState, u64)> {
    let st = FW_EVENT_STATE.get_ptr_mut(class)?;
    // SAFETY: a per-CPU slot; only this CPU touches it while we run.
    let st = unsafe { &mut *st };
    st.seen += 1;
    if sample == 0 || st.seen % sample as u64 != 0 {
        st.skipped = st.skipped.saturating_add(1);
        return None;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(st.window_ns) >= 1_000_000_000 {
        st.window_ns = now;
        st.in_window = 0;
    }
    if st.in_window >= cap {
        st.skipped = st.skipped.saturating_add(1);
        return None;
    }
    st.in_window += 1;
    Some((st, now))
}

/// Writes `ev` to the ring with what this class left out since its last
/// record; a full ring counts it as left out too.
#[inline(always)]
fn submit(st: &mut EventState, ev: Event) {
    let Some(mut entry) = FW_EVENTS.reserve::<Event>(0) else {
        st.skipped = st.skipped.saturating_add(1);
        return;
    };
    entry.write(Event { skipped: st.skipped, ..ev });
    st.skipped = 0;
    entry.submit(0);
}
