//! Tail-called for an ACK of no flow to a cookie port. The policy judges
//! it first, as the SYN it claims to complete: only when the rule that
//! would have answered that SYN is an accepting cookie service is the
//! cookie checked. Anything else is an invalid packet, judged by the
//! policy's `invalid` setting.

use aya_ebpf::programs::XdpContext;
use firewall_common::{
    ACTION_ACCEPT, MAX_RULES, POLICY_SLOTS, Reason, STATE_ACCEPT, STATE_DROP, STATUS_NO_META, SYNCOOKIE_OFF,
    WSCALE_NONE, ct_state, tcp_flags::SYN,
};

use crate::{
    FW_COOKIE_ARG, FW_POLICY, FW_RULE_LIMIT, FW_STATUS, conntrack,
    cookie::{self, Event},
    counters, events,
    parse::{self, Frame},
    rules,
};

/// The reason for the ACK in `ctx`, which the XDP program parsed
/// (`parse::stored`).
#[inline(always)]
pub fn judge(ctx: &XdpContext) -> Reason {
    let Some(&[slot, _]) = FW_COOKIE_ARG.get(0) else { return Reason::Internal };
    if slot >= POLICY_SLOTS {
        return Reason::Internal;
    }
    let Some(header) = FW_POLICY.get(slot) else { return Reason::Internal };
    let Some(ack) = parse::stored() else { return Reason::Internal };
    if ack.key.proto != parse::IPPROTO_TCP {
        return Reason::Internal;
    }
    // The SYN the ACK claims to complete, as the rules would have seen it.
    let mut claimed = *ack;
    claimed.key.tcp_flags = SYN;
    claimed.key.ct_state = ct_state::NEW;
    let Some(syn) = parse::store(parse::SCRATCH_QUERY, claimed) else { return Reason::Internal };
    let (admitted, limited) = match rules::classify(slot, header.root, &syn.key) {
        Ok(Some(m)) if m.action == ACTION_ACCEPT && m.syncookie != SYNCOOKIE_OFF => {
            // The service the ACK claims: its events name it, and log it
            // when it has `log = true`.
            events::note_rule(slot, Some(m));
            (m.rule, m.limited != 0)
        }
        Ok(_) => (MAX_RULES, false),
        Err(()) => return Reason::Internal,
    };
    let mut reason = Reason::CookieNotAdmitted;
    if admitted < MAX_RULES {
        // The cookie is checked on the ACK as it came; its options are
        // read here only (an ACK's options matter to no other stage).
        let frame = Frame { start: ctx.data(), end: ctx.data_end(), wire_len: ack.wire_len, ctx: ctx.ctx as *mut _, local_socket: false };
        let opts = parse::tcp_options(&frame, ack);
        let tsecr = if opts.timestamps { Some(opts.tsecr) } else { None };
        if let Some(mut valid) = cookie::check_ack(ack, tsecr) {
            let ws = if valid.attrs.wscale_ok != 0 { valid.attrs.snd_wscale } else { WSCALE_NONE };
            // The cookie carries what the SYN said; the timestamps are the
            // ACK's (the hand-off reads them from the mark).
            if opts.timestamps {
                valid.attrs.tstamp_ok = 1;
                valid.attrs.rcv_tsval = opts.tsval;
                valid.attrs.rcv_tsecr = opts.tsecr;
            }
            // A valid cookie proves the source: the rule's limits count the
            // connection, or refuse it (and may ban the source).
            let mut counted = None;
            if limited {
                let index = slot * MAX_RULES + admitted;
                let Some(limit) = FW_RULE_LIMIT.get(index) else { return Reason::Internal };
                let r = firewall_common::conn_ref(index, firewall_common::conn_epoch(limit.epoch));
                match crate::limit::prove(r, &ack.key, true) {
                    Ok(c) => counted = c.then_some(r),
                    Err(reason) => {
                        counters::count_rule(slot, admitted, ack.wire_len);
                        return reason;
                    }
                }
            }
            // Without the mark the host answers the bare ACK with an RST:
            // stop answering SYNs and say so, rather than fail silently.
            if !cookie::mark_for_handoff(ctx, &valid.attrs) {
                if let Some(r) = counted {
                    crate::limit::unprove(r, &ack.key.src);
                }
                if let Some(status) = FW_STATUS.get_ptr_mut(0) {
                    // SAFETY: a map value; a lost race only repeats the store.
                    unsafe { *status |= STATUS_NO_META };
                }
                return Reason::HandoffNoMeta;
            }
            conntrack::open_cookie(&frame, ack, ws, valid.cookie, counted);
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
            let mut invalid = *ack;
            invalid.key.ct_state = ct_state::INVALID;
            let Some(p) = parse::store(parse::SCRATCH_QUERY, invalid) else { return Reason::Internal };
            let Ok(matched) = rules::classify(slot, header.root, &p.key) else { return Reason::Internal };
            events::note_rule(slot, matched);
            if let Some(m) = matched {
                counters::count_rule(slot, m.rule, p.wire_len);
            }
            rules::reason(header, matched)
        }
    }
}
