//! The real XDP program, verified and JIT-compiled by this kernel, run on
//! crafted frames with BPF_PROG_TEST_RUN. Needs root.

mod common;

use common::*;
use etherparse::{IpHeaders, IpNumber, Ipv4Header, Ipv6Extensions, Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader, PacketBuilder};
use firewall_common::{Reason, maps};

// Stateless rule tests: invalid packets (e.g. a lone ACK) go through the
// rules like any other, so each test sees rule matching alone.
const WEB: &str = r#"
[settings]
default = "drop"
invalid = "rules"

[[rule]]
name = "ssh"
proto = "tcp"
dport = 22
action = "accept"

[[rule]]
name = "block-netbios"
proto = "udp"
dport = "137-139"
action = "drop"

[[rule]]
name = "dns"
proto = "udp"
dport = [53, "5300-5301"]
action = "accept"

[[rule]]
name = "ping"
proto = "icmp"
icmp_type = 8
action = "accept"

[[rule]]
name = "ping6"
proto = "icmpv6"
icmp_type = 128
action = "accept"

[[rule]]
name = "syn-only-8080"
proto = "tcp"
dport = 8080
tcp_flags = "syn,!ack"
action = "accept"

[[rule]]
name = "v6-admin"
proto = "tcp"
src = "2001:db8:1::/48"
dport = 9000
action = "accept"
"#;

#[test]
fn object_has_every_map() {
    let h = Harness::new(WEB);
    for name in maps::ALL {
        assert!(h.fw.ebpf.map(name).is_some(), "the eBPF object defines {name}");
        assert!(name.len() <= 15, "{name} fits the kernel's map name length");
    }
}

/// Every program passes the verifier within half of its budget (the
/// kernel's is 1,000,000 instructions processed per program): room for the
/// features still to come, and a guard against a change that makes the
/// verifier walk a stage once per header layout again.
#[test]
fn every_program_verifies_within_budget() {
    use aya::programs::{SchedClassifier, Xdp};
    let h = Harness::new(WEB);
    let mut counts = Vec::new();
    for name in [maps::XDP_PROGRAM, maps::COOKIE_SYN_PROGRAM, maps::COOKIE_ACK_PROGRAM, maps::EVENT_PROGRAM] {
        let p: &Xdp = h.fw.ebpf.program(name).expect("program").try_into().expect("xdp");
        counts.push((name, p.info().expect("info").verified_instruction_count().expect("count")));
    }
    for name in [maps::EGRESS_PROGRAM, maps::INGRESS_PROGRAM] {
        let p: &SchedClassifier = h.fw.ebpf.program(name).expect("program").try_into().expect("tc");
        counts.push((name, p.info().expect("info").verified_instruction_count().expect("count")));
    }
    println!("verifier instructions processed: {counts:?}");
    for (name, n) in counts {
        assert!(n < 500_000, "{name} needs {n} of the verifier's 1,000,000 instructions");
    }
}

#[test]
fn accepted_tcp_counts_rule_and_reason_once() {
    let h = Harness::new(WEB);
    let f = tcp("192.0.2.7", "198.51.100.1", 40000, 22, SYN);
    h.expect(&f, XDP_PASS, Reason::RuleAccept);
    let s = h.snapshot();
    let ssh = s.rule("ssh").unwrap();
    assert_eq!((ssh.packets, ssh.bytes), (1, f.len() as u64));
    assert!(s.rules.iter().filter(|r| r.name != "ssh").all(|r| r.packets == 0));
}

#[test]
fn unmatched_packet_gets_the_default_verdict() {
    let h = Harness::new(WEB);
    h.expect(&tcp("192.0.2.7", "198.51.100.1", 40000, 23, SYN), XDP_DROP, Reason::DefaultDrop);
    let open = WEB.replace("default = \"drop\"", "default = \"accept\"");
    let h = Harness::new(&open);
    h.expect(&tcp("192.0.2.7", "198.51.100.1", 40000, 23, SYN), XDP_PASS, Reason::DefaultAccept);
}

#[test]
fn rule_drop_and_port_lists() {
    let h = Harness::new(WEB);
    h.expect(&udp("192.0.2.7", "198.51.100.1", 5000, 138), XDP_DROP, Reason::RuleDrop);
    h.expect(&udp("192.0.2.7", "198.51.100.1", 5000, 53), XDP_PASS, Reason::RuleAccept);
    h.expect(&udp("192.0.2.7", "198.51.100.1", 5000, 5301), XDP_PASS, Reason::RuleAccept);
    h.expect(&udp("192.0.2.7", "198.51.100.1", 5000, 5302), XDP_DROP, Reason::DefaultDrop);
    assert_eq!(h.rule_packets("dns"), 2);
    assert_eq!(h.rule_packets("block-netbios"), 1);
}

#[test]
fn first_matching_rule_wins() {
    let policy = r#"
[settings]
invalid = "rules"

[[rule]]
name = "drop-bad-net"
proto = "tcp"
src = "203.0.113.0/24"
action = "drop"

[[rule]]
name = "web"
proto = "tcp"
dport = 443
action = "accept"
"#;
    let h = Harness::new(policy);
    h.expect(&tcp("203.0.113.9", "198.51.100.1", 1234, 443, SYN), XDP_DROP, Reason::RuleDrop);
    h.expect(&tcp("203.0.114.9", "198.51.100.1", 1234, 443, SYN), XDP_PASS, Reason::RuleAccept);
    assert_eq!(h.rule_packets("drop-bad-net"), 1);
    assert_eq!(h.rule_packets("web"), 1);
    // Reversed order: the accept rule now comes first.
    let (a, b) = policy.split_at(policy.find("[[rule]]\nname = \"web\"").unwrap());
    let h = Harness::new(&format!("{b}\n{a}"));
    h.expect(&tcp("203.0.113.9", "198.51.100.1", 1234, 443, SYN), XDP_PASS, Reason::RuleAccept);
}

#[test]
fn tcp_flags_mask_and_value() {
    let h = Harness::new(WEB);
    h.expect(&tcp("192.0.2.7", "198.51.100.1", 1234, 8080, SYN), XDP_PASS, Reason::RuleAccept);
    h.expect(&tcp("192.0.2.7", "198.51.100.1", 1234, 8080, SYN | ACK), XDP_DROP, Reason::DefaultDrop);
    h.expect(&tcp("192.0.2.7", "198.51.100.1", 1234, 8080, ACK), XDP_DROP, Reason::DefaultDrop);
}

#[test]
fn icmp_type_and_code_match_per_family() {
    let h = Harness::new(WEB);
    let echo4 = frame(ip("192.0.2.7"), ip("198.51.100.1"), L4::Icmp { ty: 8, code: 0 }, b"ping");
    h.expect(&echo4, XDP_PASS, Reason::RuleAccept);
    let unreach4 = frame(ip("192.0.2.7"), ip("198.51.100.1"), L4::Icmp { ty: 3, code: 1 }, b"");
    h.expect(&unreach4, XDP_DROP, Reason::DefaultDrop);
    let echo6 = frame(ip("2001:db8::7"), ip("2001:db8::1"), L4::Icmp { ty: 128, code: 0 }, b"ping");
    h.expect(&echo6, XDP_PASS, Reason::RuleAccept);
    assert_eq!(h.rule_packets("ping"), 1);
    assert_eq!(h.rule_packets("ping6"), 1);
}

#[test]
fn ipv6_prefix_rules_never_match_ipv4() {
    let h = Harness::new(WEB);
    h.expect(&tcp("2001:db8:1::5", "2001:db8::1", 1234, 9000, SYN), XDP_PASS, Reason::RuleAccept);
    h.expect(&tcp("2001:db8:2::5", "2001:db8::1", 1234, 9000, SYN), XDP_DROP, Reason::DefaultDrop);
    let all_v6 = "[[rule]]\nname = \"v6\"\nsrc = \"::/0\"\naction = \"accept\"\n";
    let h = Harness::new(all_v6);
    h.expect(&tcp("2001:db8:2::5", "2001:db8::1", 1, 2, SYN), XDP_PASS, Reason::RuleAccept);
    h.expect(&tcp("192.0.2.7", "198.51.100.1", 1, 2, SYN), XDP_DROP, Reason::DefaultDrop);
    // On the wire, IPv4-mapped IPv6 addresses are bogus.
    h.expect(&tcp("::ffff:192.0.2.7", "2001:db8::1", 1, 2, SYN), XDP_DROP, Reason::MalformedL3);
}

fn with_vlans(frame: &[u8], tags: &[u16]) -> Vec<u8> {
    // Tags go between the MAC addresses and the EtherType; the outer one
    // is 802.1ad when there are several, as on a real QinQ link.
    let mut out = frame[..12].to_vec();
    for (i, vid) in tags.iter().enumerate() {
        let tpid: u16 = if i == 0 && tags.len() > 1 { 0x88a8 } else { 0x8100 };
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&vid.to_be_bytes());
    }
    out.extend_from_slice(&frame[12..]);
    out
}

#[test]
fn vlan_tags_are_parsed_up_to_two() {
    let h = Harness::new(WEB);
    // etherparse builds the one- and two-tag frames; a third tag is added by hand.
    let mut single = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .single_vlan(etherparse::VlanId::try_new(10).unwrap())
        .ipv4([192, 0, 2, 7], [198, 51, 100, 1], 64)
        .tcp(40000, 22, 1, 1000)
        .syn()
        .write(&mut single, &[])
        .unwrap();
    h.expect(&single, XDP_PASS, Reason::RuleAccept);
    let mut double = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .double_vlan(etherparse::VlanId::try_new(100).unwrap(), etherparse::VlanId::try_new(10).unwrap())
        .ipv6(*b"\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x07", *b"\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x01", 64)
        .tcp(40000, 23, 1, 1000)
        .syn()
        .write(&mut double, &[])
        .unwrap();
    h.expect(&double, XDP_DROP, Reason::DefaultDrop);
    let triple = with_vlans(&tcp("192.0.2.7", "198.51.100.1", 40000, 22, SYN), &[1, 2, 3]);
    h.expect(&triple, XDP_DROP, Reason::TooManyVlans);
    let truncated_tag = &single[..16];
    h.expect(truncated_tag, XDP_DROP, Reason::MalformedL2);
}

#[test]
fn ipv4_options_are_skipped() {
    let h = Harness::new(WEB);
    let mut header = Ipv4Header::new(0, 64, IpNumber::TCP, [192, 0, 2, 7], [198, 51, 100, 1]).unwrap();
    // Two NOPs and an end-of-options list: IHL 6.
    header.options = [1u8, 1, 0, 0][..].try_into().unwrap();
    let mut f = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ip(IpHeaders::Ipv4(header, Default::default()))
        .tcp(40000, 22, 1, 1000)
        .syn()
        .write(&mut f, &[])
        .unwrap();
    assert_eq!(f[14] & 0x0f, 6, "the frame carries IPv4 options");
    h.expect(&f, XDP_PASS, Reason::RuleAccept);
}

fn ipv6_with(exts: Ipv6Extensions, dport: u16) -> Vec<u8> {
    let header = Ipv6Header {
        source: ip6("2001:db8::7"),
        destination: ip6("2001:db8::1"),
        hop_limit: 64,
        ..Default::default()
    };
    let mut f = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ip(IpHeaders::Ipv6(header, exts))
        .tcp(40000, dport, 1, 1000)
        .syn()
        .write(&mut f, &[])
        .unwrap();
    f
}

fn ip6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

/// etherparse 0.19 serialises the IPv6 fragment header's offset/M word in
/// its own layout (M in bit 7 of byte 3); RFC 8200 (and Linux) put the
/// 13-bit offset in the top bits and M in bit 0. Rewrite the word.
fn fix_fragment_word(frame: &mut [u8], offset_units: u16, more: bool) {
    // Walk the chain to the fragment header (next header 44).
    let mut next = frame[14 + 6];
    let mut pos = 14 + 40;
    while next != 44 {
        next = frame[pos];
        pos += (frame[pos + 1] as usize + 1) * 8;
    }
    let word = (offset_units << 3) | u16::from(more);
    frame[pos + 2..pos + 4].copy_from_slice(&word.to_be_bytes());
}

fn raw_ext() -> Ipv6RawExtHeader {
    Ipv6RawExtHeader::new_raw(IpNumber::TCP, &[0; 6]).unwrap()
}

#[test]
fn ipv6_extension_headers_are_skipped() {
    let h = Harness::new(WEB);
    let exts = Ipv6Extensions {
        hop_by_hop_options: Some(raw_ext()),
        destination_options: Some(raw_ext()),
        routing: Some(etherparse::Ipv6RoutingExtensions { routing: raw_ext(), final_destination_options: Some(raw_ext()) }),
        // Offset 0: the first fragment still carries the TCP header.
        fragment: Some(Ipv6FragmentHeader::new(IpNumber::TCP, 0.try_into().unwrap(), true, 7)),
        auth: None,
    };
    let mut f = ipv6_with(exts, 22);
    fix_fragment_word(&mut f, 0, true);
    h.expect(&f, XDP_PASS, Reason::RuleAccept);
    let f = ipv6_with(Default::default(), 22);
    h.expect(&f, XDP_PASS, Reason::RuleAccept);
}

#[test]
fn too_many_ipv6_extension_headers_are_dropped() {
    let h = Harness::new(WEB);
    // Seven destination-options headers (etherparse models one of each kind).
    let base = ipv6_with(Default::default(), 22);
    let (head, tcp) = base.split_at(14 + 40);
    let mut f = head.to_vec();
    f[14 + 6] = 60; // next header: destination options
    for i in 0..7 {
        let next = if i == 6 { 6 } else { 60 };
        f.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]); // PadN option fills 8 bytes
    }
    f.extend_from_slice(tcp);
    let payload = (f.len() - 14 - 40) as u16;
    f[14 + 4..14 + 6].copy_from_slice(&payload.to_be_bytes());
    h.expect(&f, XDP_DROP, Reason::Ipv6ExtLimit);
}

#[test]
fn non_first_fragments_follow_the_fragments_setting() {
    let h = Harness::new(WEB);
    let mut header = Ipv4Header::new(8, 64, IpNumber::TCP, [192, 0, 2, 7], [198, 51, 100, 1]).unwrap();
    header.fragment_offset = 185.try_into().unwrap();
    let mut f4 = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ip(IpHeaders::Ipv4(header, Default::default()))
        .write(&mut f4, IpNumber::TCP, &[0; 8])
        .unwrap();
    h.expect(&f4, XDP_DROP, Reason::FragmentDrop);
    let exts = Ipv6Extensions {
        fragment: Some(Ipv6FragmentHeader::new(IpNumber::TCP, 100.try_into().unwrap(), false, 7)),
        ..Default::default()
    };
    let mut f6 = ipv6_with(exts, 22);
    fix_fragment_word(&mut f6, 100, false);
    h.expect(&f6, XDP_DROP, Reason::FragmentDrop);
    let h = Harness::new(&WEB.replace("default = \"drop\"", "default = \"drop\"\nfragments = \"accept\""));
    h.expect(&f4, XDP_PASS, Reason::FragmentAccept);
    h.expect(&f6, XDP_PASS, Reason::FragmentAccept);
}

#[test]
fn truncated_and_malformed_headers_are_counted_drops() {
    let h = Harness::new(WEB);
    let good = tcp("192.0.2.7", "198.51.100.1", 40000, 22, SYN);
    // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header;
    // a truncated VLAN tag covers MalformedL2 (vlan_tags_are_parsed_up_to_two).
    h.expect(&good[..14 + 12], XDP_DROP, Reason::MalformedL3);
    // An IP packet that says it is 30 bytes long: 10 bytes of a TCP header.
    let mut short_tcp = good[..14 + 20 + 10].to_vec();
    short_tcp[16..18].copy_from_slice(&30u16.to_be_bytes());
    h.expect(&short_tcp, XDP_DROP, Reason::MalformedL4);
    // A frame shorter than the IP total length is a truncated IP packet.
    h.expect(&good[..14 + 20 + 10], XDP_DROP, Reason::MalformedL3);
    let mut bad_version = good.clone();
    bad_version[14] = 0x55;
    h.expect(&bad_version, XDP_DROP, Reason::MalformedL3);
    let mut short_ihl = good.clone();
    short_ihl[14] = 0x44;
    h.expect(&short_ihl, XDP_DROP, Reason::MalformedL3);
    let mut long_total = good.clone();
    long_total[16..18].copy_from_slice(&2000u16.to_be_bytes());
    h.expect(&long_total, XDP_DROP, Reason::MalformedL3);
    let mut short_doff = good.clone();
    short_doff[14 + 20 + 12] = 0x40;
    h.expect(&short_doff, XDP_DROP, Reason::MalformedL4);
    let v6 = ipv6_with(Default::default(), 22);
    h.expect(&v6[..14 + 30], XDP_DROP, Reason::MalformedL3);
    h.expect(&v6[..14 + 40 + 8], XDP_DROP, Reason::MalformedL3);
    // A UDP header the IP length does not cover (the frame's padding would
    // otherwise be read as ports).
    let mut padded = udp("192.0.2.7", "198.51.100.1", 1, 53);
    padded[16..18].copy_from_slice(&24u16.to_be_bytes());
    h.expect(&padded, XDP_DROP, Reason::MalformedL4);
    let u = udp("192.0.2.7", "198.51.100.1", 1, 53);
    let mut short_udp = u[..14 + 20 + 4].to_vec();
    short_udp[16..18].copy_from_slice(&24u16.to_be_bytes());
    h.expect(&short_udp, XDP_DROP, Reason::MalformedL4);
}

#[test]
fn non_ip_frames_pass() {
    let h = Harness::new(WEB);
    let mut arp = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .arp(etherparse::ArpPacket::new(
            etherparse::ArpHardwareId::ETHERNET,
            etherparse::EtherType::IPV4,
            etherparse::ArpOperation::REQUEST,
            &MAC_A,
            &[192, 0, 2, 7],
            &[0; 6],
            &[192, 0, 2, 1],
        ).unwrap())
        .write(&mut arp)
        .unwrap();
    h.expect(&arp, XDP_PASS, Reason::NonIp);
}

#[test]
fn reload_switches_policy_atomically_and_resets_rule_counters() {
    let mut h = Harness::new(WEB);
    let ssh = tcp("192.0.2.7", "198.51.100.1", 40000, 22, SYN);
    h.expect(&ssh, XDP_PASS, Reason::RuleAccept);
    let gen1 = h.snapshot().generation;
    h.install("[settings]\ndefault = \"accept\"\n\n[[rule]]\nname = \"no-ssh\"\nproto = \"tcp\"\ndport = 22\naction = \"drop\"\n");
    let s = h.snapshot();
    assert_eq!(s.generation, gen1 + 1);
    assert_eq!(s.rules.len(), 1);
    assert_eq!(s.rule("no-ssh").unwrap().packets, 0);
    h.expect(&ssh, XDP_DROP, Reason::RuleDrop);
    h.expect(&tcp("192.0.2.7", "198.51.100.1", 40000, 23, SYN), XDP_PASS, Reason::DefaultAccept);
    // And back: the first slot is reused with the new policy's contents only.
    h.install(WEB);
    h.expect(&ssh, XDP_PASS, Reason::RuleAccept);
    assert_eq!(h.rule_packets("ssh"), 1);
}


/// The kernel's verdicts and per-rule counts equal a plain in-order scan of
/// the policy, for a large random policy and packets aimed at its rules.
fn matches_reference(rules: usize, packets: usize, seed: u64) {
    use firewall_user::{compile, policy};
    let text = random::policy_text(rules, seed);
    let parsed = policy::parse(&text, "random.toml").expect("random policy is valid");
    let compiled = compile::compile(&parsed).expect("random policy compiles");
    eprintln!("{rules} rules: {}", compile::describe(&compiled));
    let mut h = Harness::new("");
    h.fw.install(&compiled).expect("installs");

    let mut r = random::rng(seed ^ 0x5eed);
    let mut expected = vec![0u64; parsed.rules.len()];
    let mut unmatched = 0u64;
    for i in 0..packets {
        let p = random::packet(&parsed, &mut r);
        let f = frame(p.src, p.dst, p.l4, b"");
        let want = random::reference(&parsed, &p);
        let verdict = match want {
            Some(idx) => {
                expected[idx] += 1;
                if parsed.rules[idx].action == policy::Action::Accept { XDP_PASS } else { XDP_DROP }
            }
            None => {
                unmatched += 1;
                XDP_DROP
            }
        };
        assert_eq!(h.verdict(&f), verdict, "packet {i} {p:?}: reference says rule {want:?}");
    }
    let s = h.snapshot();
    for (idx, rule) in parsed.rules.iter().enumerate() {
        assert_eq!(s.rules[idx].name, rule.name);
        assert_eq!(s.rules[idx].packets, expected[idx], "packets counted for {}", rule.name);
    }
    assert_eq!(s.reason(Reason::DefaultDrop).packets, unmatched);
    let hit = expected.iter().filter(|&&c| c > 0).count();
    assert!(hit * 4 > rules.min(packets), "the packets reach many rules ({hit} of {rules})");
}

#[test]
fn ten_thousand_rules_load_and_match_like_the_reference() {
    matches_reference(10_000, 3_000, 1);
}

#[test]
fn small_random_policies_match_like_the_reference() {
    for seed in 2..6 {
        matches_reference(40, 400, seed);
    }
}

/// The cookie keys are write-only through the controller's descriptor
/// (`BPF_F_WRONLY`): a leaked or inherited descriptor cannot read them,
/// while the controller can still write. (A process with CAP_SYS_ADMIN
/// can open any map by id read-write; the kernel has no flag against that.)
#[test]
fn the_cookie_key_map_cannot_be_read_back() {
    use aya::maps::Array;
    let mut h = Harness::new(WEB);
    h.fw.set_cookie_key(0, firewall_common::CookieKey { k0: 1, k1: 2, valid: 1 }).expect("writable");
    let keys: Array<_, firewall_common::CookieKey> = Array::try_from(h.fw.ebpf.map(maps::COOKIE_KEY).expect("map")).expect("array");
    assert!(keys.get(&0, 0).is_err(), "the key map is not readable through the controller's descriptor");
}

/// Drop events through the real programs: off by default; on, a dropped
/// frame becomes one record with its 5-tuple and reason; `sample` and the
/// per-second cap leave drops out and say how many.
#[test]
fn drops_are_recorded_as_events_when_asked() {
    use firewall_common::EVENT_DROP;
    let dropped = tcp("192.0.2.7", "198.51.100.1", 40000, 5555, SYN);
    let mut h = Harness::new(WEB);
    h.expect(&dropped, XDP_DROP, Reason::DefaultDrop);
    assert!(drain_events(&h).is_empty(), "no events unless the policy asks");

    h.install(&format!("{WEB}\n[settings.events]\ndrops = true\n"));
    h.expect(&dropped, XDP_DROP, Reason::DefaultDrop);
    let accepted = tcp("192.0.2.7", "198.51.100.1", 40001, 22, SYN);
    h.expect(&accepted, XDP_PASS, Reason::RuleAccept);
    let ev = drain_events(&h);
    assert_eq!(ev.len(), 1, "one record for the one drop");
    let e = ev[0];
    assert_eq!((e.kind, e.reason, e.proto, e.sport, e.dport, e.tcp_flags), (EVENT_DROP, Reason::DefaultDrop as u16, 6, 40000, 5555, SYN));
    assert_eq!(e.rule, firewall_common::NO_RULE, "no rule matched a default drop");
    assert_eq!(firewall_user::conntrack::addr(e.src), common::ip("192.0.2.7"));
    assert_eq!(firewall_user::conntrack::addr(e.dst), common::ip("198.51.100.1"));
    assert_eq!(e.len as usize, dropped.len());

    // One in 4, at most 3 a second: the sampler and the window are per
    // CPU, so a fresh firewall and this thread kept on one CPU.
    pin_to_cpu0();
    let h = Harness::new(&format!("{WEB}\n[settings.events]\ndrops = true\nsample = 4\nper_second = 3\n"));
    for _ in 0..40 {
        h.verdict(&dropped);
    }
    let ev = drain_events(&h);
    assert_eq!(ev.len(), 3, "the cap");
    assert_eq!(ev.iter().map(|e| 1 + e.skipped as u64).sum::<u64>() <= 40, true);
    assert_eq!(ev[1].skipped, 3, "between two records, three drops left out by the sampler");
}

/// `log = true` through the real programs, like nftables' `log`: every
/// match of the rule is a record naming it, whatever the verdict (which
/// the event program still gives); other rules' matches are not; a logged
/// drop is one record, not two; at most `log_per_second` a second, never
/// sampled.
#[test]
fn rules_with_log_record_each_match() {
    use firewall_common::{EVENT_DROP, EVENT_LOG};
    const LOGGED: &str = r#"
[settings]
default = "drop"

[settings.events]
log_per_second = 5

[[rule]]
name = "ssh"
proto = "tcp"
dport = 22
action = "accept"
log = true

[[rule]]
name = "telnet"
proto = "tcp"
dport = 23
action = "drop"
log = true

[[rule]]
name = "web"
proto = "tcp"
dport = 80
action = "accept"
"#;
    pin_to_cpu0();
    let mut h = Harness::new(LOGGED);
    h.expect(&tcp("192.0.2.7", "198.51.100.1", 40000, 22, SYN), XDP_PASS, Reason::RuleAccept);
    h.expect(&tcp("192.0.2.8", "198.51.100.1", 40001, 23, SYN), XDP_DROP, Reason::RuleDrop);
    h.expect(&tcp("192.0.2.9", "198.51.100.1", 40002, 80, SYN), XDP_PASS, Reason::RuleAccept);
    h.expect(&tcp("192.0.2.9", "198.51.100.1", 40003, 9999, SYN), XDP_DROP, Reason::DefaultDrop);
    let ev = drain_events(&h);
    let seen: Vec<(u8, u16, u16, u16)> = ev.iter().map(|e| (e.kind, e.reason, e.rule, e.dport)).collect();
    assert_eq!(seen, [(EVENT_LOG, Reason::RuleAccept as u16, 0, 22), (EVENT_LOG, Reason::RuleDrop as u16, 1, 23)], "the two logged rules, by index; drop events are off");
    assert_eq!(firewall_user::conntrack::addr(ev[0].src), common::ip("192.0.2.7"));
    let slot = u32::from(ev[0].slot);
    let meta: aya::maps::Array<_, firewall_common::RuleMeta> = aya::maps::Array::try_from(h.fw.ebpf.map(maps::RULE_META).unwrap()).unwrap();
    let name = |i: u16| firewall_user::stats::rule_name(&meta.get(&(slot * firewall_common::MAX_RULES + u32::from(i)), 0).unwrap());
    assert_eq!((name(ev[0].rule), name(ev[1].rule)), ("ssh".to_owned(), "telnet".to_owned()), "slot and index name the rule");

    // The cap: 5 a second on this CPU, the rest said to be left out.
    for p in 0..20 {
        h.expect(&tcp("192.0.2.7", "198.51.100.1", 41000 + p, 22, SYN), XDP_PASS, Reason::RuleAccept);
    }
    let ev = drain_events(&h);
    assert_eq!(ev.len(), 3, "5 a second, 2 used above");
    assert!(ev.iter().all(|e| e.kind == EVENT_LOG && e.skipped == 0));

    // With drop events on too, a logged drop is one record (a log).
    // (A higher cap: this second's 5 are used.)
    h.install(&LOGGED.replace("log_per_second = 5", "log_per_second = 1000\ndrops = true"));
    h.expect(&tcp("192.0.2.8", "198.51.100.1", 42000, 23, SYN), XDP_DROP, Reason::RuleDrop);
    h.expect(&tcp("192.0.2.9", "198.51.100.1", 42001, 9999, SYN), XDP_DROP, Reason::DefaultDrop);
    let kinds: Vec<(u8, u16)> = drain_events(&h).iter().map(|e| (e.kind, e.reason)).collect();
    assert_eq!(kinds, [(EVENT_LOG, Reason::RuleDrop as u16), (EVENT_DROP, Reason::DefaultDrop as u16)]);
}
