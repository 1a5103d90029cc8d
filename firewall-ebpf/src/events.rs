//! Drop events: the fast path checks one config word and, for a drop while
//! events are on, tail-calls `fw_event`, which samples, caps per second per
//! CPU, parses the frame and writes an `Event` to the ring buffer. A full
//! ring loses the record, never the packet.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};
use firewall_common::{EVENT_DROP, Event, Reason, maps::PROG_EVENT};

use crate::{FW_EVENT_ARG, FW_EVENT_CFG, FW_EVENT_STATE, FW_EVENTS, FW_PROGS, parse};

/// Hands a dropped frame to the event program when events are on; returns
/// only when they are off (or the tail call failed): the caller drops.
#[inline(always)]
pub fn hand_over(ctx: &XdpContext, reason: Reason) {
    if !FW_EVENT_CFG.get(0).is_some_and(|c| c.sample != 0) {
        return;
    }
    if let Some(arg) = FW_EVENT_ARG.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot; only this CPU writes it while we run.
        unsafe { *arg = reason as u32 };
    }
    // SAFETY: the index is one of ours; on failure we fall through to the drop.
    let _ = unsafe { FW_PROGS.tail_call(ctx, PROG_EVENT) };
}

/// Records the drop `FW_EVENT_ARG` names, if the sampler and the cap let it.
#[inline(always)]
pub fn record(ctx: &XdpContext) {
    let Some(cfg) = FW_EVENT_CFG.get(0) else { return };
    let (sample, per_second) = (cfg.sample, cfg.per_second);
    let Some(st) = FW_EVENT_STATE.get_ptr_mut(0) else { return };
    let reason = FW_EVENT_ARG.get(0).copied().unwrap_or(0);
    // SAFETY: a per-CPU slot; only this CPU touches it while we run.
    let st = unsafe { &mut *st };
    st.seen += 1;
    if sample == 0 || st.seen % sample as u64 != 0 {
        st.skipped = st.skipped.saturating_add(1);
        return;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(st.window_ns) >= 1_000_000_000 {
        st.window_ns = now;
        st.in_window = 0;
    }
    if st.in_window >= per_second {
        st.skipped = st.skipped.saturating_add(1);
        return;
    }
    st.in_window += 1;
    let (start, end) = (ctx.data(), ctx.data_end());
    let frame = parse::Frame { start, end, wire_len: (end - start) as u64 };
    let Some(mut entry) = FW_EVENTS.reserve::<Event>(0) else {
        st.skipped = st.skipped.saturating_add(1);
        return;
    };
    let mut ev = Event { ts_ns: now, kind: EVENT_DROP, reason, ifindex: ctx.ingress_ifindex() as u32, len: frame.wire_len as u32, skipped: st.skipped, ..Event::default() };
    if let Ok(Some(p)) = parse::parse(&frame) {
        ev.src = p.key.src;
        ev.dst = p.key.dst;
        ev.sport = p.key.sport;
        ev.dport = p.key.dport;
        ev.proto = p.key.proto;
        ev.tcp_flags = p.key.tcp_flags;
    }
    st.skipped = 0;
    entry.write(ev);
    entry.submit(0);
}
