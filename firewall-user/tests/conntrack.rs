//! Connection tracking in the kernel: the XDP program (ingress) and the TC
//! program (egress) run with BPF_PROG_TEST_RUN on packet sequences that
//! walk every state transition, in both directions, IPv4 and IPv6.

mod common;

use common::*;
use firewall_common::Reason;

const POLICY: &str = r#"
[settings]
default = "drop"

[[rule]]
name = "web"
proto = "tcp"
dport = 80
action = "accept"

[[rule]]
name = "dns"
proto = "udp"
dport = 53
action = "accept"
"#;

/// Addresses: a remote client and this host (the server), per family.
const FAMILIES: [(&str, &str); 2] = [("192.0.2.10", "198.51.100.1"), ("2001:db8::10", "2001:db8:1::1")];

#[test]
fn inbound_handshake_data_and_teardown_walk_every_state() {
    for (remote, host) in FAMILIES {
        let h = Harness::new(POLICY);
        let (c, s) = (40000, 80);
        h.expect(&seg(remote, host, c, s, SYN, 1000, 0, b""), XDP_PASS, Reason::RuleAccept);
        assert_eq!(h.flow_state(c, s), Some("syn_sent"));
        // The SYN arrives again (retransmission): still new, still admitted by the rule.
        h.expect(&seg(remote, host, c, s, SYN, 1000, 0, b""), XDP_PASS, Reason::RuleAccept);
        assert_eq!(h.rule_packets("web"), 2);
        assert_eq!(h.egress(&seg(host, remote, s, c, SYN | ACK, 5000, 1001, b"")), Reason::EgressTracked);
        assert_eq!(h.flow_state(c, s), Some("syn_recv"));
        h.expect(&seg(remote, host, c, s, ACK, 1001, 5001, b""), XDP_PASS, Reason::Established);
        assert_eq!(h.flow_state(c, s), Some("established"));
        h.expect(&seg(remote, host, c, s, ACK | PSH, 1001, 5001, b"GET / HTTP/1.0\r\n\r\n"), XDP_PASS, Reason::Established);
        assert_eq!(h.egress(&seg(host, remote, s, c, ACK | PSH, 5001, 1019, b"HTTP/1.0 200 OK\r\n\r\n")), Reason::EgressTracked);
        // The server closes first, then the client.
        assert_eq!(h.egress(&seg(host, remote, s, c, FIN | ACK, 5020, 1019, b"")), Reason::EgressTracked);
        assert_eq!(h.flow_state(c, s), Some("fin_wait"));
        h.expect(&seg(remote, host, c, s, FIN | ACK, 1019, 5021, b""), XDP_PASS, Reason::Established);
        assert_eq!(h.flow_state(c, s), Some("time_wait"));
        h.expect(&seg(remote, host, c, s, ACK, 1020, 5021, b""), XDP_PASS, Reason::Established);
        // The rule saw only the SYNs; the flow counted every packet.
        assert_eq!(h.rule_packets("web"), 2);
        let flow = h.flows().into_iter().find(|e| e.sport == c).unwrap();
        assert_eq!((flow.origin, flow.src.to_string(), flow.dport), ("remote", remote.to_string(), s));
        assert!(flow.packets >= 8, "{flow:?}");
    }
}

#[test]
fn the_hosts_own_connections_get_their_replies() {
    for (remote, host) in FAMILIES {
        let h = Harness::new(POLICY);
        let (local_port, https) = (51000, 443);
        // No rule admits port 51000: only the egress SYN makes the reply known.
        h.expect(&seg(remote, host, https, local_port, SYN | ACK, 7000, 101, b""), XDP_DROP, Reason::InvalidSynAck);
        assert_eq!(h.egress(&seg(host, remote, local_port, https, SYN, 100, 0, b"")), Reason::EgressNew);
        assert_eq!(h.flow_state(local_port, https), Some("syn_sent"));
        h.expect(&seg(remote, host, https, local_port, SYN | ACK, 7000, 101, b""), XDP_PASS, Reason::Established);
        assert_eq!(h.egress(&seg(host, remote, local_port, https, ACK, 101, 7001, b"")), Reason::EgressTracked);
        assert_eq!(h.flow_state(local_port, https), Some("established"));
        h.expect(&seg(remote, host, https, local_port, ACK | PSH, 7001, 101, b"data"), XDP_PASS, Reason::Established);
        let flow = h.flows().into_iter().find(|e| e.dport == https).unwrap();
        assert_eq!((flow.origin, flow.src.to_string()), ("local", host.to_string()));
        // A SYN-ACK from another port answers nothing.
        h.expect(&seg(remote, host, 444, local_port, SYN | ACK, 9, 101, b""), XDP_DROP, Reason::InvalidSynAck);
    }
}

#[test]
fn simultaneous_open_is_tracked() {
    let (remote, host) = FAMILIES[0];
    let h = Harness::new(POLICY);
    assert_eq!(h.egress(&seg(host, remote, 6000, 6001, SYN, 10, 0, b"")), Reason::EgressNew);
    // The peer's own SYN crosses ours.
    h.expect(&seg(remote, host, 6001, 6000, SYN, 20, 0, b""), XDP_PASS, Reason::Established);
    assert_eq!(h.flow_state(6000, 6001), Some("syn_recv"));
    h.expect(&seg(remote, host, 6001, 6000, SYN | ACK, 20, 11, b""), XDP_PASS, Reason::Established);
    h.expect(&seg(remote, host, 6001, 6000, ACK, 21, 11, b""), XDP_PASS, Reason::Established);
    assert_eq!(h.flow_state(6000, 6001), Some("established"));
}

#[test]
fn impossible_flag_combinations_are_invalid() {
    let h = Harness::new(POLICY);
    for (what, flags) in [
        ("SYN+FIN", SYN | FIN),
        ("SYN+RST", SYN | RST),
        ("FIN without ACK", FIN),
        ("NULL", 0),
        ("XMAS", FIN | PSH | URG),
    ] {
        let f = seg("192.0.2.10", "198.51.100.1", 40000, 80, flags, 1, 0, b"");
        assert_eq!(h.verdict(&f), XDP_DROP, "{what}");
    }
    assert_eq!(h.reason(Reason::InvalidFlags).packets, 5);
    assert_eq!(h.rule_packets("web"), 0, "invalid packets never reach the rules");
}

#[test]
fn packets_of_no_flow_and_out_of_state_are_invalid() {
    for (remote, host) in FAMILIES {
        let h = Harness::new(POLICY);
        // An ACK for no connection (and no socket on this host).
        h.expect(&seg(remote, host, 40000, 80, ACK, 1, 1, b""), XDP_DROP, Reason::InvalidNoFlow);
        h.expect(&seg(remote, host, 40000, 80, SYN, 1000, 0, b""), XDP_PASS, Reason::RuleAccept);
        // Before the SYN-ACK, an ACK from the client fits no state.
        h.expect(&seg(remote, host, 40000, 80, ACK, 1001, 1, b""), XDP_DROP, Reason::InvalidState);
        // A SYN-ACK from the client's side.
        h.expect(&seg(remote, host, 40000, 80, SYN | ACK, 1000, 1, b""), XDP_DROP, Reason::InvalidSynAck);
        h.egress(&seg(host, remote, 80, 40000, SYN | ACK, 5000, 1001, b""));
        h.expect(&seg(remote, host, 40000, 80, ACK, 1001, 5001, b""), XDP_PASS, Reason::Established);
        // A SYN-ACK leaving through the host that answers no SYN from
        // outside (a container spoofing its neighbour's tuple) changes
        // nothing.
        assert_eq!(h.egress(&seg(host, remote, 80, 40000, SYN | ACK, 9000, 78, b"")), Reason::EgressTracked);
        assert_eq!(h.flow_state(40000, 80), Some("established"));
        // Nor one after the host answered the SYN that passed with a
        // challenge ACK (its connection lives).
        h.expect(&seg(remote, host, 40000, 80, SYN, 55, 0, b""), XDP_PASS, Reason::Established);
        assert_eq!(h.egress(&seg(host, remote, 80, 40000, ACK, 5001, 1001, b"")), Reason::EgressTracked);
        assert_eq!(h.egress(&seg(host, remote, 80, 40000, SYN | ACK, 9000, 56, b"")), Reason::EgressTracked);
        assert_eq!(h.flow_state(40000, 80), Some("established"));
        // A SYN on an established flow's tuple whose port the host does
        // not serve (no socket, not even a listener: DNAT elsewhere, or a
        // forwarded flow) cannot end it: it passes with the flow unchanged,
        // as nf_conntrack ignores it, and the connection goes on.
        h.expect(&seg(remote, host, 40000, 80, SYN, 77, 0, b""), XDP_PASS, Reason::Established);
        assert_eq!(h.flow_state(40000, 80), Some("established"));
        h.expect(&seg(remote, host, 40000, 80, ACK, 1001, 5001, b""), XDP_PASS, Reason::Established);
        // The destination's SYN-ACK for it (it had lost the old
        // connection) makes the tuple a new handshake, whose last ACK the
        // rules judge; the old sequence numbers no longer fit.
        assert_eq!(h.egress(&seg(host, remote, 80, 40000, SYN | ACK, 9000, 78, b"")), Reason::EgressTracked);
        assert_eq!(h.flow_state(40000, 80), Some("syn_recv"));
        h.expect(&seg(remote, host, 40000, 80, ACK, 1001, 5001, b""), XDP_DROP, Reason::InvalidState);
        h.expect(&seg(remote, host, 40000, 80, ACK, 78, 9001, b""), XDP_PASS, Reason::Established);
        assert_eq!(h.flow_state(40000, 80), Some("established"));
        // Again with a new ISN behind the old one's (half of all ISNs
        // are): not taken for a retransmitted SYN-ACK, which repeats the
        // handshake, but a new handshake as well.
        let behind = 9001u32.wrapping_sub(0x1000_0000);
        h.expect(&seg(remote, host, 40000, 80, SYN, 0x4000_0000, 0, b""), XDP_PASS, Reason::Established);
        assert_eq!(h.egress(&seg(host, remote, 80, 40000, SYN | ACK, behind, 0x4000_0001, b"")), Reason::EgressTracked);
        assert_eq!(h.flow_state(40000, 80), Some("syn_recv"));
        h.expect(&seg(remote, host, 40000, 80, ACK, 0x4000_0001, behind + 1, b""), XDP_PASS, Reason::Established);
        assert_eq!(h.flow_state(40000, 80), Some("established"));
    }
}

#[test]
fn rst_must_be_in_window() {
    for (remote, host) in FAMILIES {
        let h = Harness::new(POLICY);
        h.expect(&seg(remote, host, 40000, 80, SYN, 1000, 0, b""), XDP_PASS, Reason::RuleAccept);
        h.egress(&seg(host, remote, 80, 40000, SYN | ACK, 5000, 1001, b""));
        h.expect(&seg(remote, host, 40000, 80, ACK, 1001, 5001, b""), XDP_PASS, Reason::Established);
        // Blind RSTs: far below and far above the client's next sequence number.
        h.expect(&seg(remote, host, 40000, 80, RST, 1001u32.wrapping_sub(100_000), 0, b""), XDP_DROP, Reason::InvalidRst);
        h.expect(&seg(remote, host, 40000, 80, RST, 1001 + 0x4000_0000, 0, b""), XDP_DROP, Reason::InvalidRst);
        assert_eq!(h.flow_state(40000, 80), Some("established"), "the flow survives");
        h.expect(&seg(remote, host, 40000, 80, ACK | PSH, 1001, 5001, b"still here"), XDP_PASS, Reason::Established);
        // In the window but not exact: the host's stack gets it (and sends
        // a challenge ACK, RFC 5961); the flow does not close on a guess.
        h.expect(&seg(remote, host, 40000, 80, RST, 1011 + 100, 0, b""), XDP_PASS, Reason::Established);
        assert_eq!(h.flow_state(40000, 80), Some("established"), "an inexact RST changes nothing");
        // The real one: exactly at the next expected sequence number.
        h.expect(&seg(remote, host, 40000, 80, RST, 1011, 0, b""), XDP_PASS, Reason::Established);
        assert_eq!(h.flow_state(40000, 80), Some("close"));
    }
}

#[test]
fn rst_answering_a_syn_must_acknowledge_it() {
    let (remote, host) = FAMILIES[0];
    let h = Harness::new(POLICY);
    h.egress(&seg(host, remote, 51000, 25, SYN, 100, 0, b""));
    h.expect(&seg(remote, host, 25, 51000, RST | ACK, 0, 555, b""), XDP_DROP, Reason::InvalidRst);
    h.expect(&seg(remote, host, 25, 51000, RST | ACK, 0, 101, b""), XDP_PASS, Reason::Established);
    assert_eq!(h.flow_state(51000, 25), Some("close"));
    // A new connection may reuse the closed tuple.
    assert_eq!(h.egress(&seg(host, remote, 51000, 25, SYN, 900, 0, b"")), Reason::EgressNew);
}

#[test]
fn udp_and_ping_replies_are_established_and_icmp_errors_related() {
    let h = Harness::new(POLICY);
    let (remote, host) = FAMILIES[0];
    let query = udp(host, remote, 33333, 53);
    assert_eq!(h.egress(&query), Reason::EgressNew);
    assert_eq!(h.flow_state(33333, 53), Some("unreplied"));
    h.expect(&udp(remote, host, 53, 33333), XDP_PASS, Reason::Established);
    assert_eq!(h.flow_state(33333, 53), Some("replied"));
    // A datagram from another source port is not a reply (and no rule admits it).
    h.expect(&udp(remote, host, 54, 33333), XDP_DROP, Reason::DefaultDrop);

    // Ping out, echo reply in.
    let mut ping = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_B, MAC_A).ipv4([198, 51, 100, 1], [192, 0, 2, 10], 64).icmpv4_echo_request(77, 1).write(&mut ping, b"ping").unwrap();
    assert_eq!(h.egress(&ping), Reason::EgressNew);
    let mut pong = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4([192, 0, 2, 10], [198, 51, 100, 1], 64).icmpv4_echo_reply(77, 1).write(&mut pong, b"ping").unwrap();
    h.expect(&pong, XDP_PASS, Reason::Established);
    let mut other_id = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4([192, 0, 2, 10], [198, 51, 100, 1], 64).icmpv4_echo_reply(78, 1).write(&mut other_id, b"ping").unwrap();
    h.expect(&other_id, XDP_DROP, Reason::DefaultDrop);

    // Port unreachable quoting our DNS query: related. Quoting an unknown flow: invalid.
    let quoted = &query[14..14 + 28];
    let mut unreach = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([203, 0, 113, 1], [198, 51, 100, 1], 64)
        .icmpv4_raw(3, 3, [0; 4])
        .write(&mut unreach, quoted)
        .unwrap();
    h.expect(&unreach, XDP_PASS, Reason::Related);
    let other = udp(host, remote, 44444, 53);
    let mut stray = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([203, 0, 113, 1], [198, 51, 100, 1], 64)
        .icmpv4_raw(3, 3, [0; 4])
        .write(&mut stray, &other[14..14 + 28])
        .unwrap();
    h.expect(&stray, XDP_DROP, Reason::InvalidIcmp);
}

#[test]
fn icmpv6_packet_too_big_about_a_flow_is_related() {
    let (remote, host) = FAMILIES[1];
    let h = Harness::new(POLICY);
    let syn = seg(host, remote, 52000, 443, SYN, 1, 0, b"");
    assert_eq!(h.egress(&syn), Reason::EgressNew);
    let mut ptb = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(ip6("2001:db8:ff::1"), ip6(host), 64)
        .icmpv6_raw(2, 0, 1280u32.to_be_bytes())
        .write(&mut ptb, &syn[14..14 + 48])
        .unwrap();
    h.expect(&ptb, XDP_PASS, Reason::Related);
}

fn ip6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

#[test]
fn idle_flows_time_out() {
    let mut h = Harness::new(&POLICY.replace("default = \"drop\"", "default = \"drop\"\n\n[settings.timeouts]\ntcp_established = 300\nudp = 30"));
    let (remote, host) = FAMILIES[0];
    h.expect(&seg(remote, host, 40000, 80, SYN, 1000, 0, b""), XDP_PASS, Reason::RuleAccept);
    h.egress(&seg(host, remote, 80, 40000, SYN | ACK, 5000, 1001, b""));
    h.expect(&seg(remote, host, 40000, 80, ACK, 1001, 5001, b""), XDP_PASS, Reason::Established);
    assert_eq!(h.egress(&udp(host, remote, 33333, 53)), Reason::EgressNew);
    // 200 s idle: the TCP flow (300 s) lives, the UDP one (30 s) does not.
    h.age_flows(200);
    h.expect(&seg(remote, host, 40000, 80, ACK, 1001, 5001, b""), XDP_PASS, Reason::Established);
    h.expect(&udp(remote, host, 53, 33333), XDP_DROP, Reason::DefaultDrop);
    // 301 s more: gone; the next segment is a packet of no flow.
    h.age_flows(301);
    h.expect(&seg(remote, host, 40000, 80, ACK, 1001, 5001, b""), XDP_DROP, Reason::InvalidNoFlow);
}

#[test]
fn the_controller_sweeps_idle_flows() {
    let mut h = Harness::new(POLICY);
    let (remote, host) = FAMILIES[0];
    h.egress(&udp(host, remote, 33333, 53));
    h.egress(&seg(host, remote, 51000, 443, SYN, 1, 0, b""));
    assert_eq!(h.flows().len(), 2);
    let s = h.fw.sweep().unwrap();
    assert_eq!((s.removed, s.proven + s.unproven), (0, 2), "nothing idle yet; both flows counted");
    h.age_flows(60);
    // UDP (30 s) expired, SYN_SENT (120 s) not.
    let s = h.fw.sweep().unwrap();
    assert_eq!((s.removed, s.proven + s.unproven), (1, 1));
    assert_eq!(h.flows().len(), 1);
}

#[test]
fn rules_can_match_state_when_settings_hand_it_over() {
    let policy = r#"
[settings]
default = "drop"
established = "rules"

[[rule]]
name = "no-established-from-bad-net"
state = "established"
src = "203.0.113.0/24"
action = "drop"

[[rule]]
name = "established"
state = "established"
action = "accept"

[[rule]]
name = "web"
proto = "tcp"
dport = 80
state = "new"
action = "accept"
"#;
    let h = Harness::new(policy);
    for remote in ["192.0.2.10", "203.0.113.5"] {
        h.expect(&seg(remote, "198.51.100.1", 40000, 80, SYN, 1000, 0, b""), XDP_PASS, Reason::RuleAccept);
        h.egress(&seg("198.51.100.1", remote, 80, 40000, SYN | ACK, 5000, 1001, b""));
    }
    h.expect(&seg("192.0.2.10", "198.51.100.1", 40000, 80, ACK, 1001, 5001, b""), XDP_PASS, Reason::RuleAccept);
    h.expect(&seg("203.0.113.5", "198.51.100.1", 40000, 80, ACK, 1001, 5001, b""), XDP_DROP, Reason::RuleDrop);
    assert_eq!(h.rule_packets("established"), 1);
    assert_eq!(h.rule_packets("no-established-from-bad-net"), 1);
    assert_eq!(h.rule_packets("web"), 2);
}

#[test]
fn retransmissions_during_the_handshake_pass() {
    for (remote, host) in FAMILIES {
        let h = Harness::new(POLICY);
        // Inbound: the host's SYN-ACK is lost, the client sends its SYN again.
        h.expect(&seg(remote, host, 40000, 80, SYN, 1000, 0, b""), XDP_PASS, Reason::RuleAccept);
        h.egress(&seg(host, remote, 80, 40000, SYN | ACK, 5000, 1001, b""));
        assert_eq!(h.flow_state(40000, 80), Some("syn_recv"));
        h.expect(&seg(remote, host, 40000, 80, SYN, 1000, 0, b""), XDP_PASS, Reason::RuleAccept);
        // Outbound: the host's final ACK is lost, the server sends its SYN-ACK again.
        h.egress(&seg(host, remote, 51000, 443, SYN, 100, 0, b""));
        h.expect(&seg(remote, host, 443, 51000, SYN | ACK, 7000, 101, b""), XDP_PASS, Reason::Established);
        h.egress(&seg(host, remote, 51000, 443, ACK, 101, 7001, b""));
        assert_eq!(h.flow_state(51000, 443), Some("established"));
        h.expect(&seg(remote, host, 443, 51000, SYN | ACK, 7000, 101, b""), XDP_PASS, Reason::Established);
        assert_eq!(h.flow_state(51000, 443), Some("established"));
        // The host's SYN-ACK again after the client's last ACK (lost
        // after the firewall): the same handshake, the flow unchanged.
        h.expect(&seg(remote, host, 40000, 80, ACK, 1001, 5001, b""), XDP_PASS, Reason::Established);
        assert_eq!(h.egress(&seg(host, remote, 80, 40000, SYN | ACK, 5000, 1001, b"")), Reason::EgressTracked);
        assert_eq!(h.flow_state(40000, 80), Some("established"));
        h.expect(&seg(remote, host, 40000, 80, ACK, 1001, 5001, b"x"), XDP_PASS, Reason::Established);
        // From outside, a SYN-ACK that repeats nothing is dropped.
        h.expect(&seg(remote, host, 443, 51000, SYN | ACK, 7000u32.wrapping_sub(0x1000_0000), 101, b""), XDP_DROP, Reason::InvalidSynAck);
        assert_eq!(h.flow_state(51000, 443), Some("established"));
    }
}

#[test]
fn a_synack_must_acknowledge_the_syn() {
    let (remote, host) = FAMILIES[0];
    let h = Harness::new(POLICY);
    h.egress(&seg(host, remote, 51000, 443, SYN, 100, 0, b""));
    h.expect(&seg(remote, host, 443, 51000, SYN | ACK, 7000, 999, b""), XDP_DROP, Reason::InvalidSynAck);
    assert_eq!(h.flow_state(51000, 443), Some("syn_sent"));
    h.expect(&seg(remote, host, 443, 51000, SYN | ACK, 7000, 101, b""), XDP_PASS, Reason::Established);
}

#[test]
fn an_rst_crossing_the_hosts_request_after_the_peers_fin_is_accepted() {
    let (remote, host) = FAMILIES[0];
    let h = Harness::new(POLICY);
    h.egress(&seg(host, remote, 51000, 80, SYN, 100, 0, b""));
    h.expect(&seg(remote, host, 80, 51000, SYN | ACK, 7000, 101, b""), XDP_PASS, Reason::Established);
    h.egress(&seg(host, remote, 51000, 80, ACK, 101, 7001, b""));
    // The server closes an idle keep-alive connection (FIN at 7001) while
    // the host's next request, acknowledging only 7001, is on its way.
    h.expect(&seg(remote, host, 80, 51000, FIN | ACK, 7001, 101, b""), XDP_PASS, Reason::Established);
    h.egress(&seg(host, remote, 51000, 80, ACK | PSH, 101, 7001, b"GET / HTTP/1.1\r\n\r\n"));
    // The server's RST answers at 7001: below its FIN's end, at what the host acknowledged.
    h.expect(&seg(remote, host, 80, 51000, RST, 7001, 0, b""), XDP_PASS, Reason::Established);
    assert_eq!(h.flow_state(51000, 80), Some("close"));
}

#[test]
fn fin_with_urgent_data_is_legal() {
    let (remote, host) = FAMILIES[0];
    let h = Harness::new(POLICY);
    h.expect(&seg(remote, host, 40000, 80, SYN, 1000, 0, b""), XDP_PASS, Reason::RuleAccept);
    h.egress(&seg(host, remote, 80, 40000, SYN | ACK, 5000, 1001, b""));
    h.expect(&seg(remote, host, 40000, 80, FIN | ACK | PSH | URG, 1001, 5001, b"x"), XDP_PASS, Reason::Established);
}

#[test]
fn a_ping_from_the_far_side_is_not_a_reply_to_ours() {
    let h = Harness::new(POLICY);
    let mut ping = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_B, MAC_A).ipv4([198, 51, 100, 1], [192, 0, 2, 10], 64).icmpv4_echo_request(77, 1).write(&mut ping, b"ping").unwrap();
    assert_eq!(h.egress(&ping), Reason::EgressNew);
    let mut their_ping = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4([192, 0, 2, 10], [198, 51, 100, 1], 64).icmpv4_echo_request(77, 1).write(&mut their_ping, b"ping").unwrap();
    // No rule admits echo requests here: the default decides.
    h.expect(&their_ping, XDP_DROP, Reason::DefaultDrop);
    assert_eq!(h.flows()[0].state, "unreplied");
}

/// A SYN or SYN-ACK announcing window scale `shift`, as a real stack sends it.
fn syn_with_wscale(src: &str, dst: &str, sport: u16, dport: u16, flags: u8, seq: u32, ack: u32, shift: u8) -> Vec<u8> {
    let mut tcp = tcp_header(sport, dport, flags, seq, ack);
    tcp.set_options(&[
        etherparse::TcpOptionElement::MaximumSegmentSize(1460),
        etherparse::TcpOptionElement::SelectiveAcknowledgementPermitted,
        etherparse::TcpOptionElement::Noop,
        etherparse::TcpOptionElement::WindowScale(shift),
    ])
    .unwrap();
    let mut out = Vec::new();
    let (s, d): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (src.parse().unwrap(), dst.parse().unwrap());
    etherparse::PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4(s.octets(), d.octets(), 64).tcp_header(tcp).write(&mut out, b"").unwrap();
    out
}

#[test]
fn the_rst_window_is_scaled_by_the_window_scale_both_syns_announce() {
    let (remote, host) = FAMILIES[0];
    for (scaled, verdict, reason) in [(true, XDP_PASS, Reason::Established), (false, XDP_DROP, Reason::InvalidRst)] {
        let h = Harness::new(POLICY);
        let syn = if scaled { syn_with_wscale(remote, host, 40000, 80, SYN, 1000, 0, 7) } else { seg(remote, host, 40000, 80, SYN, 1000, 0, b"") };
        h.expect(&syn, XDP_PASS, Reason::RuleAccept);
        let synack = if scaled { syn_with_wscale(host, remote, 80, 40000, SYN | ACK, 5000, 1001, 7) } else { seg(host, remote, 80, 40000, SYN | ACK, 5000, 1001, b"") };
        h.egress(&synack);
        h.expect(&seg(remote, host, 40000, 80, ACK, 1001, 5001, b""), XDP_PASS, Reason::Established);
        // The host acknowledges 1001 with a window field of 64240: 8 MB
        // scaled by 2^7, 64 KB unscaled.
        h.egress(&seg(host, remote, 80, 40000, ACK, 5001, 1001, b""));
        h.expect(&seg(remote, host, 40000, 80, RST, 1001 + 1_000_000, 0, b""), verdict, reason);
    }
}

/// An inbound connection carrying data both ways: (client port, server
/// port, client's next sequence, server's next sequence).
fn live_connection(h: &Harness, remote: &str, host: &str, c: u16) -> (u32, u32) {
    let s = 80;
    h.expect(&seg(remote, host, c, s, SYN, 1000, 0, b""), XDP_PASS, Reason::RuleAccept);
    h.egress(&seg(host, remote, s, c, SYN | ACK, 5000, 1001, b""));
    h.expect(&seg(remote, host, c, s, ACK, 1001, 5001, b""), XDP_PASS, Reason::Established);
    h.expect(&seg(remote, host, c, s, ACK | PSH, 1001, 5001, b"GET / HTTP/1.0\r\n\r\n"), XDP_PASS, Reason::Established);
    h.egress(&seg(host, remote, s, c, ACK | PSH, 5001, 1019, b"HTTP/1.0 200 OK\r\n\r\n"));
    (1019, 5020)
}

/// The second attack of the hardening issue, in the kernel program: an
/// off-path sender who knows the 4-tuple but not the sequence numbers
/// sends a FIN as the client and a FIN as the server (on ingress). Neither
/// changes the flow; the real client's next segment is still established.
/// (The SYN that followed in the attack is answered by the host's socket:
/// see the end-to-end test `blind_fin_fin_syn_cannot_kill_a_live_connection`.)
#[test]
fn blind_fins_from_either_side_do_not_close_a_live_connection() {
    for (remote, host) in FAMILIES {
        let h = Harness::new(POLICY);
        let c = 40100;
        let (cseq, sseq) = live_connection(&h, remote, host, c);
        let mut rng = common::random::rng(1);
        for _ in 0..200 {
            let (seq, ack) = (rand::RngCore::next_u32(&mut rng), rand::RngCore::next_u32(&mut rng));
            // Guesses that happen to fall in the window are not blind.
            if seq.wrapping_sub(cseq.wrapping_sub(70_000)) < 200_000 || ack.wrapping_sub(sseq.wrapping_sub(70_000)) < 200_000 {
                continue;
            }
            h.expect(&seg(remote, host, c, 80, FIN | ACK, seq, ack, b""), XDP_DROP, Reason::InvalidWindow);
            h.expect(&seg(remote, host, c, 80, ACK | PSH, seq, ack, b"evil"), XDP_DROP, Reason::InvalidWindow);
        }
        // Claiming to be the host itself, even with the right numbers.
        h.expect(&seg(host, remote, 80, c, FIN | ACK, sseq, cseq, b""), XDP_DROP, Reason::InvalidDirection);
        h.expect(&seg(host, remote, 80, c, RST | ACK, sseq, cseq, b""), XDP_DROP, Reason::InvalidDirection);
        assert_eq!(h.flow_state(c, 80), Some("established"), "the flow survives");
        h.expect(&seg(remote, host, c, 80, ACK | PSH, cseq, sseq, b"more"), XDP_PASS, Reason::Established);
        // A FIN at the right place still closes it.
        h.expect(&seg(remote, host, c, 80, FIN | ACK, cseq + 4, sseq, b""), XDP_PASS, Reason::Established);
        assert_eq!(h.flow_state(c, 80), Some("fin_wait"));
    }
}

/// nf_conntrack's `tcp_in_window`: data must start within what the
/// receiver allowed, end no more than a window back, and acknowledge
/// only what was sent; retransmissions and window probes fit.
#[test]
fn segments_outside_the_window_are_invalid_and_change_nothing() {
    let (remote, host) = FAMILIES[0];
    let h = Harness::new(POLICY);
    let c = 40200;
    let (cseq, sseq) = live_connection(&h, remote, host, c);
    // Beyond the window the host offered (64,240 bytes, unscaled).
    h.expect(&seg(remote, host, c, 80, ACK | PSH, cseq + 64_241, sseq, b"x"), XDP_DROP, Reason::InvalidWindow);
    // Acknowledging data the host never sent.
    h.expect(&seg(remote, host, c, 80, ACK, cseq, sseq + 1, b""), XDP_DROP, Reason::InvalidWindow);
    // Far in the past.
    h.expect(&seg(remote, host, c, 80, ACK | PSH, cseq.wrapping_sub(200_000), sseq, b"x"), XDP_DROP, Reason::InvalidWindow);
    // A retransmission of the request, a keep-alive (one before), a window probe at the edge.
    h.expect(&seg(remote, host, c, 80, ACK | PSH, 1001, sseq, b"GET / HTTP/1.0\r\n\r\n"), XDP_PASS, Reason::Established);
    h.expect(&seg(remote, host, c, 80, ACK, cseq - 1, sseq, b""), XDP_PASS, Reason::Established);
    h.expect(&seg(remote, host, c, 80, ACK | PSH, cseq + 64_239, sseq, b"x"), XDP_PASS, Reason::Established);
    assert_eq!(h.flow_state(c, 80), Some("established"));
}

/// On ingress a packet must come from the remote side of its flow: the
/// host's own side sends only through egress. UDP and ping flows too.
#[test]
fn ingress_packets_claiming_the_hosts_side_are_invalid() {
    let (remote, host) = FAMILIES[0];
    let h = Harness::new(POLICY);
    assert_eq!(h.egress(&udp(host, remote, 33333, 53)), Reason::EgressNew);
    h.expect(&udp(host, remote, 33333, 53), XDP_DROP, Reason::InvalidDirection);
    assert_eq!(h.flow_state(33333, 53), Some("unreplied"), "no reply was forged");
    assert_eq!(h.egress(&seg(host, remote, 51000, 443, SYN, 100, 0, b"")), Reason::EgressNew);
    h.expect(&seg(host, remote, 51000, 443, ACK, 101, 7001, b""), XDP_DROP, Reason::InvalidDirection);
    assert_eq!(h.flow_state(51000, 443), Some("syn_sent"));
}

/// An ICMP error is related only when it quotes a packet the host sent,
/// and for TCP one whose sequence lies between what the peer acknowledged
/// and what the host sent (as the kernel's `tcp_v4_err` checks).
#[test]
fn icmp_errors_must_quote_what_the_host_sent() {
    let (remote, host) = FAMILIES[0];
    let h = Harness::new(POLICY);
    let c = 40300;
    let (cseq, sseq) = live_connection(&h, remote, host, c);
    let unreach = |quoted: &[u8]| {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([203, 0, 113, 1], [198, 51, 100, 1], 64)
            .icmpv4_raw(3, 4, [0; 4])
            .write(&mut out, quoted)
            .unwrap();
        out
    };
    // Quoting the host's last segment: related.
    let ours = seg(host, remote, 80, c, ACK, sseq - 1, cseq, b"");
    h.expect(&unreach(&ours[14..14 + 28]), XDP_PASS, Reason::Related);
    // Quoting a sequence the host never sent, or one long acknowledged.
    for seq in [sseq + 100_000, sseq.wrapping_sub(1_000_000)] {
        let guess = seg(host, remote, 80, c, ACK, seq, cseq, b"");
        h.expect(&unreach(&guess[14..14 + 28]), XDP_DROP, Reason::InvalidIcmp);
    }
    // Quoting a packet of the remote side (the host never sent it).
    let theirs = seg(remote, host, c, 80, ACK, cseq, sseq, b"");
    h.expect(&unreach(&theirs[14..14 + 28]), XDP_DROP, Reason::InvalidIcmp);
}

/// No flood can evict the flows that matter: flows opened from outside
/// live in their own table until they prove themselves. A spoofed flood
/// of pings, UDP datagrams and SYNs to an accepted non-cookie port, larger
/// than that table, leaves an established connection and a handshake the
/// host opened in the main table, working.
#[test]
fn a_spoofed_flood_larger_than_the_table_evicts_no_proven_flow() {
    use firewall_common::MAX_REMOTE_FLOWS;
    let policy = format!("{POLICY}\n[[rule]]\nname = \"ping\"\nproto = \"icmp\"\naction = \"accept\"\n");
    let (remote, host) = FAMILIES[0];
    let h = Harness::new(&policy);
    let c = 40400;
    let (cseq, sseq) = live_connection(&h, remote, host, c);
    assert_eq!(h.egress(&seg(host, remote, 52000, 443, SYN, 100, 0, b"")), Reason::EgressNew);
    let (main_before, _) = h.table_sizes();
    assert_eq!(main_before, 2, "the proven connection and the host's handshake");
    let flood = MAX_REMOTE_FLOWS + MAX_REMOTE_FLOWS / 4;
    for i in 0..flood {
        let src = format!("10.{}.{}.{}", 100 + i % 3, (i >> 8) & 255, i & 255);
        let f = match i % 3 {
            0 => udp(&src, host, 1024 + (i >> 16) as u16, 53),
            1 => seg(&src, host, 1024 + (i >> 16) as u16, 80, SYN, i, 0, b""),
            _ => {
                let mut p = Vec::new();
                let s: std::net::Ipv4Addr = src.parse().unwrap();
                etherparse::PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4(s.octets(), [198, 51, 100, 1], 64).icmpv4_echo_request(i as u16, 1).write(&mut p, b"ping").unwrap();
                p
            }
        };
        assert_eq!(h.verdict(&f), XDP_PASS, "flood packet {i} admitted by the rules");
    }
    let (main_after, remote_after) = h.table_sizes();
    println!("flood of {flood} spoofed packets: main table {main_before} -> {main_after}, remote table {remote_after} (max {MAX_REMOTE_FLOWS})");
    assert_eq!(main_after, main_before, "no flood flow in the main table");
    assert!(remote_after <= MAX_REMOTE_FLOWS as usize);
    // Both still work.
    h.expect(&seg(remote, host, c, 80, ACK | PSH, cseq, sseq, b"more"), XDP_PASS, Reason::Established);
    h.expect(&seg(remote, host, 443, 52000, SYN | ACK, 7000, 101, b""), XDP_PASS, Reason::Established);
    assert_eq!(h.flow_state(52000, 443), Some("syn_recv"));
}

/// A closed flow's tuple reused: a remote SYN beyond the old sequence
/// starts a new connection; and when the host's TIME-WAIT socket accepts a
/// SYN (the kernel also allows that by timestamps), its SYN-ACK on egress
/// restarts the flow, so the client's ACK is established.
#[test]
fn a_closed_flows_tuple_is_reused_as_the_kernel_allows() {
    let (remote, host) = FAMILIES[0];
    let h = Harness::new(POLICY);
    let c = 40500;
    let (cseq, sseq) = live_connection(&h, remote, host, c);
    h.egress(&seg(host, remote, 80, c, FIN | ACK, sseq, cseq, b""));
    h.expect(&seg(remote, host, c, 80, FIN | ACK, cseq, sseq + 1, b""), XDP_PASS, Reason::Established);
    assert_eq!(h.flow_state(c, 80), Some("time_wait"));
    // A SYN-ACK that answers no SYN that passed changes nothing (something
    // else leaving through the host, spoofing the tuple)...
    assert_eq!(h.egress(&seg(host, remote, 80, c, SYN | ACK, 90_000, 7, b"")), Reason::EgressTracked);
    assert_eq!(h.flow_state(c, 80), Some("time_wait"));
    // ...the host's for a new connection's SYN on the tuple does (its
    // TIME-WAIT socket took it, by timestamps).
    h.expect(&seg(remote, host, c, 80, SYN, 6, 0, b""), XDP_PASS, Reason::RuleAccept);
    assert_eq!(h.egress(&seg(host, remote, 80, c, SYN | ACK, 90_000, 200_000, b"")), Reason::EgressTracked);
    assert_eq!(h.flow_state(c, 80), Some("time_wait"), "not the answer to that SYN");
    assert_eq!(h.egress(&seg(host, remote, 80, c, SYN | ACK, 90_000, 7, b"")), Reason::EgressTracked);
    assert_eq!(h.flow_state(c, 80), Some("syn_recv"));
    h.expect(&seg(remote, host, c, 80, ACK, 7, 90_001, b""), XDP_PASS, Reason::Established);
    assert_eq!(h.flow_state(c, 80), Some("established"));
    // Closed again; a SYN beyond the old sequence is a new connection.
    h.egress(&seg(host, remote, 80, c, RST | ACK, 90_001, 7, b""));
    assert_eq!(h.flow_state(c, 80), Some("close"));
    h.expect(&seg(remote, host, c, 80, SYN, 100_000, 0, b""), XDP_PASS, Reason::RuleAccept);
    assert_eq!(h.flow_state(c, 80), Some("syn_sent"));
    // One that is not beyond it, where the host has no socket nor
    // listener to ask (DNAT elsewhere): a closed flow has no connection
    // to protect, so the rules judge it as new, as nf_conntrack reopens
    // CLOSE; the old flow stays for the destination's TIME-WAIT socket
    // to decide, and its SYN-ACK starts the new handshake.
    let c = 40501;
    let (cseq, sseq) = live_connection(&h, remote, host, c);
    h.egress(&seg(host, remote, 80, c, RST | ACK, sseq, cseq, b""));
    assert_eq!(h.flow_state(c, 80), Some("close"));
    h.expect(&seg(remote, host, c, 80, SYN, 3, 0, b""), XDP_PASS, Reason::RuleAccept);
    assert_eq!(h.flow_state(c, 80), Some("close"));
    assert_eq!(h.egress(&seg(host, remote, 80, c, SYN | ACK, 70_000, 4, b"")), Reason::EgressTracked);
    assert_eq!(h.flow_state(c, 80), Some("syn_recv"));
    h.expect(&seg(remote, host, c, 80, ACK, 4, 70_001, b""), XDP_PASS, Reason::Established);
    assert_eq!(h.flow_state(c, 80), Some("established"));
}

/// The review's table-filling paths, closed: a spoofed SYN answered by
/// the host's RST, then a FIN, stays a closed flow in the remote table;
/// segments without ACK are invalid; a UDP reply of the host to a flow
/// the remote table lost goes back there, and an echo reply opens nothing.
#[test]
fn spoofed_sequences_cannot_promote_a_flow_into_the_main_table() {
    let policy = format!("{POLICY}\n[[rule]]\nname = \"ping\"\nproto = \"icmp\"\naction = \"accept\"\n");
    let (remote, host) = FAMILIES[0];
    let h = Harness::new(&policy);
    for i in 0..50u16 {
        let src = format!("10.77.0.{}", i + 1);
        h.expect(&seg(&src, host, 3000 + i, 80, SYN, 1000, 0, b""), XDP_PASS, Reason::RuleAccept);
        // Nothing listens: the host resets; then the spoofer's FIN and data.
        h.egress(&seg(host, &src, 80, 3000 + i, RST | ACK, 0, 1001, b""));
        h.expect(&seg(&src, host, 3000 + i, 80, FIN | ACK, 1001, 1, b""), XDP_PASS, Reason::Established);
        h.expect(&seg(&src, host, 3000 + i, 80, ACK | PSH, 1002, 1, b"x"), XDP_PASS, Reason::Established);
        assert_eq!(h.flow_state(3000 + i, 80), Some("close"), "an RST's flow stays closed");
        // A segment without ACK (PSH alone) is never valid.
        h.expect(&seg(&src, host, 3000 + i, 80, PSH, 1002, 0, b"x"), XDP_DROP, Reason::InvalidFlags);
    }
    // The host's reply to a datagram whose flow was lost: the remote table.
    assert_eq!(h.egress(&udp(host, remote, 53, 40053)), Reason::EgressNew);
    let mut pong = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_B, MAC_A).ipv4([198, 51, 100, 1], [192, 0, 2, 10], 64).icmpv4_echo_reply(9, 1).write(&mut pong, b"pong").unwrap();
    assert_eq!(h.egress(&pong), Reason::EgressTracked);
    let (main, remote_flows) = h.table_sizes();
    assert_eq!(main, 0, "nothing spoofed reached the main table ({remote_flows} in the remote one)");
    // A UDP flow the host opens to a port no rule admits inbound is proven.
    assert_eq!(h.egress(&udp(host, remote, 40000, 123)), Reason::EgressNew);
    assert_eq!(h.table_sizes().0, 1);
}

/// TCP Fast Open: the responder may acknowledge the SYN's data or only
/// the SYN (a refused cookie); both complete the handshake.
#[test]
fn a_synack_acknowledging_only_the_syn_of_a_fast_open_syn_is_valid() {
    let (remote, host) = FAMILIES[0];
    let h = Harness::new(POLICY);
    // The host as a TFO client whose data the server refuses.
    assert_eq!(h.egress(&seg(host, remote, 52100, 443, SYN, 100, 0, b"early data")), Reason::EgressNew);
    h.expect(&seg(remote, host, 443, 52100, SYN | ACK, 7000, 101, b""), XDP_PASS, Reason::Established);
    assert_eq!(h.flow_state(52100, 443), Some("syn_recv"));
    // A SYN-ACK acknowledging more than the SYN carried is still refused.
    assert_eq!(h.egress(&seg(host, remote, 52101, 443, SYN, 100, 0, b"early data")), Reason::EgressNew);
    h.expect(&seg(remote, host, 443, 52101, SYN | ACK, 7000, 112, b""), XDP_DROP, Reason::InvalidSynAck);
    h.expect(&seg(remote, host, 443, 52101, SYN | ACK, 7000, 100, b""), XDP_DROP, Reason::InvalidSynAck);
    h.expect(&seg(remote, host, 443, 52101, SYN | ACK, 7000, 111, b""), XDP_PASS, Reason::Established);
    // The host as a server refusing a TFO SYN's data.
    h.expect(&seg(remote, host, 40600, 80, SYN, 1000, 0, b"early data"), XDP_PASS, Reason::RuleAccept);
    assert_eq!(h.egress(&seg(host, remote, 80, 40600, SYN | ACK, 5000, 1001, b"")), Reason::EgressTracked);
    assert_eq!(h.flow_state(40600, 80), Some("syn_recv"));
    h.expect(&seg(remote, host, 40600, 80, ACK, 1001, 5001, b""), XDP_PASS, Reason::Established);
    assert_eq!(h.flow_state(40600, 80), Some("established"));
}

/// The second review's critical path, closed: a spoofed SYN, the host's
/// SYN-ACK, a stray SYN, and the host's bare ACK answering it (whose ack
/// is the spoofer's own ISN + 1). The host's ACK as the responder
/// completes nothing, so nothing reaches the main table.
#[test]
fn the_hosts_own_ack_never_completes_a_handshake_it_answered() {
    let (_, host) = FAMILIES[0];
    let h = Harness::new(POLICY);
    for i in 0..20u16 {
        let src = format!("10.78.0.{}", i + 1);
        let x = 1000 + i as u32;
        h.expect(&seg(&src, host, 3000 + i, 80, SYN, x, 0, b""), XDP_PASS, Reason::RuleAccept);
        h.egress(&seg(host, &src, 80, 3000 + i, SYN | ACK, 9000, x + 1, b""));
        // The same SYN again (a retransmission to the table).
        h.expect(&seg(&src, host, 3000 + i, 80, SYN, x, 0, b""), XDP_PASS, Reason::RuleAccept);
        // The host's request socket answers with a bare ACK.
        assert_eq!(h.egress(&seg(host, &src, 80, 3000 + i, ACK, 9001, x + 1, b"")), Reason::EgressTracked);
        assert_eq!(h.flow_state(3000 + i, 80), Some("syn_recv"), "not completed by the host's own ACK");
    }
    assert_eq!(h.table_sizes().0, 0, "nothing reached the main table");
}

/// A blind SYN with another ISN during a handshake meets the rules as a
/// retransmission (counted, never a cookie) and changes nothing: the real
/// client's final ACK still completes it.
#[test]
fn a_blind_syn_with_another_isn_does_not_derail_a_handshake() {
    let (remote, host) = FAMILIES[0];
    let h = Harness::new(POLICY);
    h.expect(&seg(remote, host, 40700, 80, SYN, 1000, 0, b""), XDP_PASS, Reason::RuleAccept);
    h.egress(&seg(host, remote, 80, 40700, SYN | ACK, 5000, 1001, b""));
    h.expect(&seg(remote, host, 40700, 80, SYN, 0x7000_0000, 0, b""), XDP_PASS, Reason::RuleAccept);
    assert_eq!(h.flow_state(40700, 80), Some("syn_recv"));
    // The host retransmits its SYN-ACK; the client completes.
    assert_eq!(h.egress(&seg(host, remote, 80, 40700, SYN | ACK, 5000, 1001, b"")), Reason::EgressTracked);
    h.expect(&seg(remote, host, 40700, 80, ACK, 1001, 5001, b""), XDP_PASS, Reason::Established);
    assert_eq!(h.flow_state(40700, 80), Some("established"));
    assert_eq!(h.table_sizes(), (1, 0), "completed from outside: promoted");
}

/// Simultaneous open where the host's SYN-ACK goes out before the peer's
/// arrives: the peer's SYN-ACK must acknowledge the host's SYN exactly.
#[test]
fn simultaneous_open_with_the_hosts_synack_first() {
    let (remote, host) = FAMILIES[0];
    let h = Harness::new(POLICY);
    assert_eq!(h.egress(&seg(host, remote, 6100, 6101, SYN, 10, 0, b"")), Reason::EgressNew);
    h.expect(&seg(remote, host, 6101, 6100, SYN, 20, 0, b""), XDP_PASS, Reason::Established);
    assert_eq!(h.egress(&seg(host, remote, 6100, 6101, SYN | ACK, 10, 21, b"")), Reason::EgressTracked);
    h.expect(&seg(remote, host, 6101, 6100, SYN | ACK, 20, 12, b""), XDP_DROP, Reason::InvalidSynAck);
    h.expect(&seg(remote, host, 6101, 6100, SYN | ACK, 20, 11, b""), XDP_PASS, Reason::Established);
    h.expect(&seg(remote, host, 6101, 6100, ACK, 21, 11, b""), XDP_PASS, Reason::Established);
    assert_eq!(h.flow_state(6100, 6101), Some("established"));
}

/// An RST one before the sender's next sequence closes only after its
/// FIN; and if the host keeps sending on a flow the table took for
/// closed, tracking resumes.
#[test]
fn close_follows_the_host() {
    let (remote, host) = FAMILIES[0];
    let h = Harness::new(POLICY);
    let c = 40800;
    let (cseq, sseq) = live_connection(&h, remote, host, c);
    // One before what the host expects, with no FIN before it: outside.
    h.expect(&seg(remote, host, c, 80, RST, cseq - 1, 0, b""), XDP_DROP, Reason::InvalidRst);
    assert_eq!(h.flow_state(c, 80), Some("established"), "next - 1 without a FIN is not exact");
    h.expect(&seg(remote, host, c, 80, RST, cseq, 0, b""), XDP_PASS, Reason::Established);
    assert_eq!(h.flow_state(c, 80), Some("close"));
    // The host's stack did not take it: it sends on.
    assert_eq!(h.egress(&seg(host, remote, 80, c, ACK | PSH, sseq, cseq, b"more")), Reason::EgressTracked);
    assert_eq!(h.flow_state(c, 80), Some("established"));
    h.expect(&seg(remote, host, c, 80, ACK, cseq, sseq + 4, b""), XDP_PASS, Reason::Established);
}

/// The main table's hint slots (`maps::FLOW_HINTS`: a SYN whose slot is
/// empty skips the lookup) count exactly its keys through promotions,
/// the host's own flows, a tuple's reuse, the data plane's expiry and the
/// controller's sweep, IPv4 and IPv6. A slot left low would hide a flow.
#[test]
fn the_main_tables_hint_slots_count_its_flows() {
    let mut h = Harness::new(&POLICY.replace("default = \"drop\"", "default = \"drop\"\n\n[settings.timeouts]\ntcp_established = 300\nudp = 30"));
    for (i, (remote, host)) in FAMILIES.into_iter().enumerate() {
        let base = 42000 + 10 * i as u16;
        for c in base..base + 3 {
            live_connection(&h, remote, host, c);
        }
        assert_eq!(h.egress(&udp(host, remote, base, 53)), Reason::EgressNew);
        h.egress(&seg(host, remote, base + 5, 443, SYN, 1, 0, b""));
    }
    assert!(h.table_sizes().0 >= 10, "promoted and local flows are in the main table: {:?}", h.table_sizes());
    assert_eq!(h.hint_mismatches(), []);
    // The host resets one; a SYN reuses the tuple: the old flow is deleted.
    let (remote, host) = FAMILIES[0];
    h.egress(&seg(host, remote, 80, 42000, RST | ACK, 5020, 1019, b""));
    let (main, remote_flows) = h.table_sizes();
    h.expect(&seg(remote, host, 42000, 80, SYN, 900_000, 0, b""), XDP_PASS, Reason::RuleAccept);
    assert_eq!(h.flow_state(42000, 80), Some("syn_sent"));
    assert_eq!(h.table_sizes(), (main - 1, remote_flows + 1), "the closed flow was found (its slot is not empty) and replaced");
    assert_eq!(h.hint_mismatches(), []);
    // The UDP flows expire (30 s); a reply makes the data plane delete one.
    h.age_flows(60);
    h.expect(&udp(remote, host, 53, 42000), XDP_DROP, Reason::DefaultDrop);
    assert_eq!(h.hint_mismatches(), []);
    // The rest expire; the controller's sweep deletes them.
    h.age_flows(1_000);
    let s = h.fw.sweep().unwrap();
    assert!(s.removed >= 9, "{s:?}");
    assert_eq!(h.table_sizes().0, 0);
    assert_eq!(h.hint_mismatches(), [], "every slot back at 0");
}

/// A SYN to a port some rule accepts, of no proven flow, is judged by the
/// rules before the table of unproven flows is read; when they now drop
/// its source, it is dropped and counted by the dropping rule, and the
/// handshake the old policy let in changes in nothing.
#[test]
fn a_syn_the_rules_now_drop_is_dropped_before_its_handshake_is_read() {
    let (remote, host) = FAMILIES[0];
    let mut h = Harness::new(POLICY);
    h.expect(&seg(remote, host, 43000, 80, SYN, 1000, 0, b""), XDP_PASS, Reason::RuleAccept);
    assert_eq!((h.table_sizes(), h.flow_state(43000, 80)), ((0, 1), Some("syn_sent")));
    let banned = POLICY.replacen("[[rule]]", &format!("[[rule]]\nname = \"banned\"\nsrc = \"{remote}\"\naction = \"drop\"\n\n[[rule]]"), 1);
    h.install(&banned);
    for isn in [1000, 7_000_000] {
        h.expect(&seg(remote, host, 43000, 80, SYN, isn, 0, b""), XDP_DROP, Reason::RuleDrop);
    }
    assert_eq!(h.rule_packets("banned"), 2);
    assert_eq!((h.table_sizes(), h.flow_state(43000, 80)), ((0, 1), Some("syn_sent")), "the handshake's flow is as it was");
    // Its other packets still meet their flow: the host's SYN-ACK.
    assert_eq!(h.egress(&seg(host, remote, 80, 43000, SYN | ACK, 5000, 1001, b"")), Reason::EgressTracked);
    assert_eq!(h.flow_state(43000, 80), Some("syn_recv"));
}

/// The match of a SYN judged before conntrack is the one that counts it,
/// once: by its rule, or by the default when no rule matched, also when
/// it is a retransmission of a handshake the table follows.
#[test]
fn a_syn_judged_early_is_counted_once_by_what_matched_it() {
    let policy = "[settings]\ndefault = \"accept\"\n\n[[rule]]\nname = \"web\"\nproto = \"tcp\"\ndport = 80\naction = \"accept\"\n\n[[rule]]\nname = \"late\"\nproto = \"tcp\"\ndport = 81\nstate = [\"established\"]\naction = \"drop\"\n";
    for (remote, host) in FAMILIES {
        let h = Harness::new(policy);
        for _ in 0..2 {
            h.expect(&seg(remote, host, 43000, 80, SYN, 1000, 0, b""), XDP_PASS, Reason::RuleAccept);
        }
        assert_eq!((h.rule_packets("web"), h.flow_state(43000, 80)), (2, Some("syn_sent")));
        // No rule matches a new SYN to 81 (`late` wants established
        // packets): the default accepts it, and its retransmission.
        for _ in 0..2 {
            h.expect(&seg(remote, host, 43001, 81, SYN, 1000, 0, b""), XDP_PASS, Reason::DefaultAccept);
        }
        assert_eq!((h.rule_packets("late"), h.flow_state(43001, 81)), (0, Some("syn_sent")));
        assert_eq!(h.table_sizes().1, 2);
    }
}
