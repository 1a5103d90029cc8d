//! The TC egress pipeline: records the flows the host opens and advances
//! every flow on its outbound packets, so that replies are known on
//! ingress. Never drops; the reason says what it did.

use firewall_common::{PolicyHeader, Reason, ct_state, tcp_flags::ACK};

use crate::{
    conntrack::{self, Ct, Dir},
    parse::{self, Frame, Packet},
    rules,
};

#[inline(always)]
pub fn track(frame: &Frame) -> Reason {
    let Ok(Some(packet)) = parse::parse_once(frame) else {
        return Reason::EgressUntracked;
    };
    let Ok((slot, header)) = rules::active_policy() else {
        return Reason::EgressUntracked;
    };
    if packet.fragment {
        return Reason::EgressUntracked;
    }
    match conntrack::track(frame, packet, &header.timeouts, Dir::Egress, false, |_| conntrack::Judged::ACCEPT) {
        // The host's stack is authoritative: its SYN on a dead flow's tuple
        // starts a new connection.
        Ct::SynInFlow | Ct::SynInClosed | Ct::SynReuse => {
            conntrack::forget(packet);
            if packet.key.tcp_flags & ACK != 0 {
                // A SYN-ACK: the host answers a new connection on the tuple.
                conntrack::open_synack(frame, packet);
                return Reason::EgressTracked;
            }
            conntrack::open(packet, Dir::Egress, true, None);
            Reason::EgressNew
        }
        ct @ (Ct::New | Ct::NoFlow) => {
            packet.no_flow = ct == Ct::NoFlow;
            // A datagram of no flow may answer one from outside whose flow
            // the remote table lost: a spoofed flood must not reach the main
            // table through the host's replies. An echo reply opens nothing;
            // a datagram the rules would admit inbound goes to the remote
            // table (the rules take its peer's packets anyway).
            let proven = match packet.key.proto {
                parse::IPPROTO_ICMP if packet.key.sport == 0 => return Reason::EgressTracked,
                parse::IPPROTO_ICMPV6 if packet.key.sport == 129 => return Reason::EgressTracked,
                parse::IPPROTO_UDP => !inbound_allowed(slot, header, packet),
                _ => true,
            };
            if conntrack::open(packet, Dir::Egress, proven, None) {
                Reason::EgressNew
            } else {
                Reason::EgressTracked
            }
        }
        Ct::Invalid(Reason::InvalidNoFlow) => {
            conntrack::adopt(frame, packet, Dir::Egress, true, None);
            Reason::EgressTracked
        }
        // The host answers a SYN the table lost (or never saw): half-open.
        Ct::Invalid(Reason::InvalidSynAck) => {
            conntrack::open_synack(frame, packet);
            Reason::EgressTracked
        }
        _ => Reason::EgressTracked,
    }
}

/// Whether the rules would accept, as a new flow, the reverse of this
/// outbound packet (its peer sending to the host).
#[inline(always)]
fn inbound_allowed(slot: u32, header: &PolicyHeader, packet: &Packet) -> bool {
    let mut reverse = *packet;
    reverse.key.src = packet.key.dst;
    reverse.key.dst = packet.key.src;
    reverse.key.sport = packet.key.dport;
    reverse.key.dport = packet.key.sport;
    reverse.key.ct_state = ct_state::NEW;
    let Some(p) = parse::store(parse::SCRATCH_QUERY, reverse) else { return false };
    rules::classify(slot, header.root, &p.key).is_ok_and(|m| rules::accepts(rules::reason(header, m)))
}
