//! Tail-called for a SYN that a cookie service accepted: answers it with a
//! cookie SYN-ACK built in place, or passes it to the host when it cannot.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    programs::XdpContext,
};
use firewall_common::Reason;

use crate::{
    FW_COOKIE_ARG,
    conntrack::{self, Dir},
    cookie::{self, Event},
    events, parse,
};

/// The reason and the XDP action for the SYN in `ctx`, which the XDP
/// program parsed (`parse::stored`) and the rules gave to the service in
/// `FW_COOKIE_ARG`.
#[inline(always)]
pub fn answer(ctx: &XdpContext) -> (Reason, u32) {
    let Some(&[slot, rule]) = FW_COOKIE_ARG.get(0) else {
        return (Reason::Internal, XDP_PASS);
    };
    let Some(packet) = parse::stored() else { return (Reason::Internal, XDP_PASS) };
    if packet.key.proto != parse::IPPROTO_TCP {
        return (Reason::Internal, XDP_PASS);
    }
    match cookie::answer_syn(ctx, packet) {
        Ok(()) => {
            cookie::count(slot, rule, Event::Sent);
            events::cookie_syn(ctx, slot, rule, packet, Reason::CookieSent);
            (Reason::CookieSent, XDP_TX)
        }
        Err(reason) => {
            // The frame is still the SYN: let the host answer, tracked as
            // usual, and charged to the rate as such a SYN is (the rules
            // left it to a valid cookie ACK that will not come).
            let limit_ref = match crate::limit::admit(slot, rule, &packet.key.src, false, false) {
                Ok(r) => r,
                Err(refused) => return (refused, XDP_DROP),
            };
            events::cookie_syn(ctx, slot, rule, packet, reason);
            conntrack::open(packet, Dir::Ingress, false, limit_ref.or_else(|| crate::limit::guard_ref(slot, rule)));
            (reason, XDP_PASS)
        }
    }
}
