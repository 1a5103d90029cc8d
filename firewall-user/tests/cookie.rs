//! SYN cookies in the kernel: the real XDP program (and its tail-called
//! cookie program) run with BPF_PROG_TEST_RUN on crafted SYNs and ACKs.
//! The SYN-ACKs it emits are parsed and checksummed by etherparse, and
//! cookies are recomputed with the `siphasher` crate from the layout
//! documented in `firewall_common::cookie`: an implementation independent
//! of the kernel's.

mod common;

use std::{hash::Hasher as _, net::IpAddr, time::Duration};

use common::*;
use rand::{Rng as _, RngCore as _};
use etherparse::{NetSlice, SlicedPacket, TcpOptionElement, TransportSlice};
use firewall_common::{CookieKey, Reason};

const XDP_TX: u32 = 3;

const POLICY: &str = r#"
[settings]
default = "drop"

[[rule]]
name = "web"
proto = "tcp"
dport = 80
action = "accept"
syncookie = "always"

[[rule]]
name = "ssh"
proto = "tcp"
dport = 22
action = "accept"
"#;

const KEY0: CookieKey = CookieKey { k0: 0x0706_0504_0302_0100, k1: 0x0f0e_0d0c_0b0a_0908, valid: 1 };
const KEY1: CookieKey = CookieKey { k0: 0x1111_2222_3333_4444, k1: 0x5555_6666_7777_8888, valid: 1 };

/// (client, server) per family.
const FAMILIES: [(&str, &str); 2] = [("192.0.2.10", "198.51.100.1"), ("2001:db8::10", "2001:db8:1::1")];

fn harness(policy: &str) -> Harness {
    let mut h = Harness::new(policy);
    h.fw.set_cookie_key(0, KEY0).unwrap();
    h.fw.set_cookie_key(1, KEY1).unwrap();
    h.fw.set_cookie_key_index(0).unwrap();
    h
}

/// CLOCK_MONOTONIC, which is what `bpf_ktime_get_ns` reads.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: fills the struct.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn time_counter() -> u32 {
    (monotonic_ns() >> 36) as u32
}

/// The 128-bit form of an address (IPv4 in ::ffff:0:0/96).
fn addr128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => 0xffff_0000_0000 | u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// SipHash-2-4 (the `siphasher` crate) of the documented MAC message.
#[allow(clippy::too_many_arguments)]
fn expected_hash(key: &CookieKey, client: &str, server: &str, cport: u16, sport: u16, isn: u32, time: u32, info: u32) -> u64 {
    let mut msg = Vec::with_capacity(48);
    for a in [addr128(ip(client)), addr128(ip(server))] {
        msg.extend_from_slice(&((a >> 64) as u64).to_le_bytes());
        msg.extend_from_slice(&(a as u64).to_le_bytes());
    }
    msg.extend_from_slice(&(cport as u64 | (sport as u64) << 16 | (isn as u64) << 32).to_le_bytes());
    msg.extend_from_slice(&(time as u64 | ((info & 0x1ff) as u64) << 32).to_le_bytes());
    let mut h = siphasher::sip::SipHasher24::new_with_keys(key.k0, key.k1);
    h.write(&msg);
    h.finish()
}

/// A cookie as the documented layout defines it: with timestamps the top
/// 31 hash bits and the time parity; without, the top 29, the MSS index
/// and the time parity.
#[allow(clippy::too_many_arguments)]
fn expected_cookie(key: &CookieKey, client: &str, server: &str, cport: u16, sport: u16, isn: u32, time: u32, info: u32) -> u32 {
    let h = expected_hash(key, client, server, cport, sport, isn, time, info);
    if info & TS != 0 {
        ((h >> 33) as u32) << 1 | (time & 1)
    } else {
        ((h >> 35) as u32) << 3 | (info >> 6 & 3) << 1 | (time & 1)
    }
}

const TS: u32 = 1 << 8;

/// Info bits: window scale (15: none), SACK, ECN, MSS index, timestamps.
fn info(mss_index: u32, wscale: Option<u8>, sack: bool, ecn: bool, ts: bool) -> u32 {
    mss_index << 6 | wscale.map_or(15, u32::from) | (sack as u32) << 4 | (ecn as u32) << 5 | (ts as u32) << 8
}

/// A Linux-like SYN: MSS, SACK-permitted, timestamps, window scale.
fn syn(client: &str, server: &str, cport: u16, sport: u16, isn: u32, flags: u8, payload: &[u8], extra: &[TcpOptionElement]) -> Vec<u8> {
    let mut tcp = tcp_header(cport, sport, SYN | flags, isn, 0);
    let mut opts = vec![
        TcpOptionElement::MaximumSegmentSize(1460),
        TcpOptionElement::SelectiveAcknowledgementPermitted,
        TcpOptionElement::Timestamp(0x1234_5678, 0),
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(7),
    ];
    opts.extend_from_slice(extra);
    tcp.set_options(&opts).unwrap();
    with_tcp(client, server, tcp, payload)
}

fn with_tcp(src: &str, dst: &str, tcp: etherparse::TcpHeader, payload: &[u8]) -> Vec<u8> {
    let eth = etherparse::PacketBuilder::ethernet2(MAC_A, MAC_B);
    let b = match (ip(src), ip(dst)) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let mut out = Vec::new();
    b.tcp_header(tcp).write(&mut out, payload).unwrap();
    out
}

/// The ACK completing a handshake the cookie SYN-ACK answered; `tsecr`:
/// the echo of the SYN-ACK's TSval, when the handshake uses timestamps.
fn ack(client: &str, server: &str, cport: u16, sport: u16, isn: u32, cookie: u32, tsecr: Option<u32>) -> Vec<u8> {
    let mut tcp = tcp_header(cport, sport, ACK, isn.wrapping_add(1), cookie.wrapping_add(1));
    if let Some(tsecr) = tsecr {
        tcp.set_options(&[TcpOptionElement::Noop, TcpOptionElement::Noop, TcpOptionElement::Timestamp(0x1234_5679, tsecr)]).unwrap();
    }
    with_tcp(client, server, tcp, b"")
}

/// Inserts an 802.1Q tag (VLAN 100) after the MAC addresses.
fn tagged(frame: &[u8]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
    out.extend_from_slice(&frame[12..]);
    out
}

/// What the test checks of an emitted SYN-ACK.
#[derive(Debug)]
struct SynAck {
    seq: u32,
    ack: u32,
    ece: bool,
    mss: Option<u16>,
    wscale: Option<u8>,
    sack: bool,
    ts: Option<(u32, u32)>,
    other_options: usize,
    payload_len: usize,
    ihl_words: Option<u8>,
}

/// Parses `out` as the SYN-ACK answering a SYN from `client`:`cport` to
/// `server`:`sport`, checking everything that must hold of any valid one.
fn parse_synack(out: &[u8], client: &str, server: &str, cport: u16, sport: u16, vlan: bool) -> SynAck {
    let untagged = if vlan {
        assert_eq!(&out[12..16], &[0x81, 0x00, 0x00, 0x64], "the VLAN tag is kept");
        let mut u = out[..12].to_vec();
        u.extend_from_slice(&out[16..]);
        u
    } else {
        out.to_vec()
    };
    let p = SlicedPacket::from_ethernet(&untagged).expect("the SYN-ACK parses");
    let eth = p.link.as_ref().and_then(|l| l.to_header()).expect("ethernet");
    let eth = match eth {
        etherparse::LinkHeader::Ethernet2(e) => e,
        other => panic!("not ethernet: {other:?}"),
    };
    assert_eq!((eth.source, eth.destination), (MAC_B, MAC_A), "MAC addresses swapped");
    let Some(TransportSlice::Tcp(tcp)) = &p.transport else { panic!("no TCP in {p:?}") };
    let mut ihl_words = None;
    let checksum = match &p.net {
        Some(NetSlice::Ipv4(v4)) => {
            let h = v4.header().to_header();
            assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 header checksum");
            assert_eq!((IpAddr::V4(h.source.into()), IpAddr::V4(h.destination.into())), (ip(server), ip(client)), "addresses swapped");
            assert_eq!(h.total_len as usize, untagged.len() - 14, "IPv4 length covers exactly the frame");
            assert!(h.dont_fragment && h.time_to_live == 64);
            ihl_words = Some(h.ihl());
            tcp.calc_checksum_ipv4(h.source, h.destination).unwrap()
        }
        Some(NetSlice::Ipv6(v6)) => {
            let h = v6.header().to_header();
            assert_eq!((IpAddr::V6(h.source.into()), IpAddr::V6(h.destination.into())), (ip(server), ip(client)), "addresses swapped");
            assert_eq!(h.payload_length as usize, untagged.len() - 14 - 40, "IPv6 payload length covers exactly the frame");
            assert_eq!(h.next_header, etherparse::IpNumber::TCP, "no extension headers");
            tcp.calc_checksum_ipv6(h.source, h.destination).unwrap()
        }
        other => panic!("not IP: {other:?}"),
    };
    assert_eq!(tcp.checksum(), checksum, "TCP checksum");
    assert_eq!((tcp.source_port(), tcp.destination_port()), (sport, cport), "ports swapped");
    assert!(tcp.syn() && tcp.ack() && !tcp.rst() && !tcp.fin() && !tcp.cwr(), "flags SYN+ACK");
    let mut s = SynAck {
        seq: tcp.sequence_number(),
        ack: tcp.acknowledgment_number(),
        ece: tcp.ece(),
        mss: None,
        wscale: None,
        sack: false,
        ts: None,
        other_options: 0,
        payload_len: tcp.payload().len(),
        ihl_words,
    };
    for o in tcp.options_iterator() {
        match o.expect("well-formed options") {
            TcpOptionElement::MaximumSegmentSize(m) => s.mss = Some(m),
            TcpOptionElement::WindowScale(w) => s.wscale = Some(w),
            TcpOptionElement::SelectiveAcknowledgementPermitted => s.sack = true,
            TcpOptionElement::Timestamp(a, b) => s.ts = Some((a, b)),
            TcpOptionElement::Noop => {}
            _ => s.other_options += 1,
        }
    }
    s
}

fn service(h: &Harness, name: &str) -> firewall_user::stats::ServiceStats {
    h.snapshot().service(name).unwrap_or_else(|| panic!("service {name}")).clone()
}

/// Runs a SYN that must be answered with a cookie, checks the counters,
/// and returns the parsed SYN-ACK.
fn answer(h: &Harness, frame: &[u8], client: &str, server: &str, cport: u16, sport: u16, vlan: bool) -> SynAck {
    let before = h.snapshot();
    let (verdict, out) = h.fw.test_run_output(frame).expect("BPF_PROG_TEST_RUN");
    let after = h.snapshot();
    assert_eq!(verdict, XDP_TX, "a SYN to a cookie service is answered from XDP");
    for r in Reason::ALL {
        let (b, a) = (before.reason(r), after.reason(r));
        if r == Reason::CookieSent {
            assert_eq!(a.packets, b.packets + 1, "cookie_sent counted once");
        } else {
            assert_eq!(a, b, "{r:?} must not move for an answered SYN");
        }
    }
    parse_synack(&out, client, server, cport, sport, vlan)
}

#[test]
fn syn_gets_a_valid_cookie_synack_and_its_ack_validates_v4_v6_with_and_without_vlan() {
    for (client, server) in FAMILIES {
        for vlan in [false, true] {
            let h = harness(POLICY);
            let (cport, sport, isn) = (40000, 80, 0x1000_0000);
            let t0 = time_counter();
            let mut frame = syn(client, server, cport, sport, isn, ECE | CWR, b"", &[]);
            if vlan {
                frame = tagged(&frame);
            }
            let s = answer(&h, &frame, client, server, cport, sport, vlan);
            assert_eq!(s.ack, isn + 1, "acknowledges the SYN");
            let v6 = client.contains(':');
            assert_eq!(s.mss, Some(if v6 { 1440 } else { 1460 }), "our MSS");
            assert_eq!(s.wscale, Some(7), "window scale offered back");
            assert!(s.sack, "SACK permitted offered back");
            let (tsval, tsecr) = s.ts.expect("timestamps offered back");
            assert_eq!(tsecr, 0x1234_5678, "echoes the client's TSval");
            assert!(s.ece, "ECN setup SYN answered with ECE");
            assert_eq!((s.other_options, s.payload_len), (0, 0));
            // The cookie is the documented MAC: MSS index 3 (1460, or 1440
            // for IPv6), window scale 7, SACK, ECN, timestamps, this period.
            let t = if time_counter() == t0 { t0 } else { continue };
            let mss_index = if v6 { 2 } else { 3 };
            let want_info = info(mss_index, Some(7), true, true, true);
            let want = expected_cookie(&KEY0, client, server, cport, sport, isn, t, want_info);
            assert_eq!(s.seq, want, "cookie = SipHash-2-4 over the documented message");
            // The TSval carries the info in its low 8 bits, above them our
            // millisecond clock plus the low 32 hash bits (a keyed offset).
            assert_eq!(tsval & 0xff, want_info & 0xff, "info in the TSval's low bits");
            let offset = expected_hash(&KEY0, client, server, cport, sport, isn, t, want_info) as u32;
            let clock = tsval.wrapping_sub(offset);
            let now_ms = (monotonic_ns() / 1_000_000) as u32;
            assert!((now_ms.wrapping_sub(clock) as i32).abs() < 5_000, "TSval = clock + keyed offset: {tsval:#x}, offset {offset:#x}, now {now_ms:#x}");
            assert!((now_ms.wrapping_sub(tsval) as i32).abs() > 5_000, "TSval is not the bare clock (odds of failing: 10^-6)");
            // No state for the SYN.
            assert!(h.flows().is_empty(), "a cookie SYN creates no flow");
            let svc = service(&h, "web");
            assert_eq!((svc.syncookie, svc.cookies_on, svc.syns, svc.cookies_sent), ("always", true, 1, 1));
            assert_eq!(h.rule_packets("web"), 1);

            // The ACK: validated, flow created, marked for the hand-off.
            let mut a = ack(client, server, cport, sport, isn, s.seq, Some(tsval));
            if vlan {
                a = tagged(&a);
            }
            h.expect(&a, XDP_PASS, Reason::CookieValid);
            assert_eq!(h.flow_state(cport, sport), Some("established"));
            let svc = service(&h, "web");
            assert_eq!((svc.acks_valid, svc.acks_invalid), (1, 0));
            // Then it is an ordinary established flow.
            let data = {
                let tcp = tcp_header(cport, sport, ACK | PSH, isn + 1, s.seq + 1);
                let f = with_tcp(client, server, tcp, b"GET / HTTP/1.1\r\n\r\n");
                if vlan { tagged(&f) } else { f }
            };
            h.expect(&data, XDP_PASS, Reason::Established);
        }
    }
}

#[test]
fn a_cookie_with_any_bit_flipped_or_a_wrong_isn_is_dropped() {
    for (client, server) in FAMILIES {
        let h = harness(POLICY);
        let (cport, sport, isn) = (40001, 80, 0xfff0_0000);
        let frame = syn(client, server, cport, sport, isn, 0, b"", &[]);
        let s = answer(&h, &frame, client, server, cport, sport, false);
        let tsval = s.ts.expect("timestamps").0;
        for bit in 0..32 {
            h.expect(&ack(client, server, cport, sport, isn, s.seq ^ (1 << bit), Some(tsval)), XDP_DROP, Reason::CookieInvalid);
        }
        // The info echoed in the timestamp is under the MAC: any of its
        // 8 bits flipped, or the option left out, fails.
        for bit in 0..8 {
            h.expect(&ack(client, server, cport, sport, isn, s.seq, Some(tsval ^ (1 << bit))), XDP_DROP, Reason::CookieInvalid);
        }
        h.expect(&ack(client, server, cport, sport, isn, s.seq, None), XDP_DROP, Reason::CookieInvalid);
        // The client's ISN is under the MAC too.
        h.expect(&ack(client, server, cport, sport, isn + 1, s.seq, Some(tsval)), XDP_DROP, Reason::CookieInvalid);
        // Another client (port) cannot reuse it.
        h.expect(&ack(client, server, cport + 1, sport, isn, s.seq, Some(tsval)), XDP_DROP, Reason::CookieInvalid);
        assert!(h.flows().is_empty(), "no invalid ACK created a flow");
        assert_eq!(service(&h, "web").acks_invalid, 43);
        // The genuine one still validates.
        h.expect(&ack(client, server, cport, sport, isn, s.seq, Some(tsval)), XDP_PASS, Reason::CookieValid);
    }
}

#[test]
fn cookies_live_one_period_more_then_expire() {
    for (client, server) in FAMILIES {
        let h = harness(POLICY);
        let t = time_counter();
        let cookie_at = |time: u32, cport: u16| {
            expected_cookie(&KEY0, client, server, cport, 80, 7, time, info(1, None, false, false, false))
        };
        // Made this period and the previous one: valid.
        h.expect(&ack(client, server, 41000, 80, 7, cookie_at(t, 41000), None), XDP_PASS, Reason::CookieValid);
        h.expect(&ack(client, server, 41001, 80, 7, cookie_at(t - 1, 41001), None), XDP_PASS, Reason::CookieValid);
        // Two and three periods ago, and the next one: expired or forged.
        for (i, time) in [t - 2, t - 3, t + 1].into_iter().enumerate() {
            h.expect(&ack(client, server, 41002 + i as u16, 80, 7, cookie_at(time, 41002 + i as u16), None), XDP_DROP, Reason::CookieInvalid);
        }
        assert_eq!(time_counter(), t, "the period changed during the test; rerun");
    }
}

#[test]
fn the_previous_key_is_accepted_for_one_cookie_lifetime_after_a_rotation() {
    let (client, server) = FAMILIES[0];
    let mut h = harness(POLICY);
    let t = time_counter();
    let old = |cport: u16| expected_cookie(&KEY0, client, server, cport, 80, 9, t, info(0, None, false, false, false));
    h.expect(&ack(client, server, 42000, 80, 9, old(42000), None), XDP_PASS, Reason::CookieValid);
    // The controller's rotation: a random key, made current.
    h.fw.rotate_cookie_key().unwrap();
    let s = answer(&h, &syn(client, server, 42001, 80, 5, 0, b"", &[]), client, server, 42001, 80, false);
    assert_ne!(s.seq, expected_cookie(&KEY0, client, server, 42001, 80, 5, t, info(3, Some(7), true, false, true)), "a new key");
    h.expect(&ack(client, server, 42001, 80, 5, s.seq, Some(s.ts.unwrap().0)), XDP_PASS, Reason::CookieValid);
    // A cookie of the previous key still validates right after...
    h.expect(&ack(client, server, 42002, 80, 9, old(42002), None), XDP_PASS, Reason::CookieValid);
    // ... but not once a cookie lifetime (2^37 ns) has passed since.
    let now = firewall_user::conntrack::monotonic_ns();
    h.fw.set_cookie_rotated_at(now - (1 << 37) - 1_000_000).unwrap();
    h.expect(&ack(client, server, 42003, 80, 9, old(42003), None), XDP_DROP, Reason::CookieInvalid);
    assert_eq!(time_counter(), t, "the period changed during the test; rerun");
}

#[test]
fn a_fast_open_syn_is_answered_without_acknowledging_its_data() {
    for (client, server) in FAMILIES {
        let h = harness(POLICY);
        let data = vec![b'x'; 300];
        // A Linux SYN plus the Fast Open option (kind 34) with an 8-byte
        // cookie we never issued; etherparse has no element for it.
        let mut tcp = tcp_header(43000, 80, SYN, 1000, 0);
        let mut raw = vec![2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0, 1, 3, 3, 7];
        raw.extend_from_slice(&[34, 10, 1, 2, 3, 4, 5, 6, 7, 8, 1, 1]);
        tcp.set_options_raw(&raw).unwrap();
        let frame = with_tcp(client, server, tcp, &data);
        let s = answer(&h, &frame, client, server, 43000, 80, false);
        assert_eq!(s.ack, 1001, "the SYN is acknowledged, its data is not (RFC 7413 fallback)");
        assert_eq!(s.payload_len, 0);
        assert_eq!(s.other_options, 0, "no Fast Open option in the answer");
    }
}

#[test]
fn ip_options_a_bad_input_checksum_and_a_bare_syn_still_get_a_correct_synack() {
    let (client, server) = FAMILIES[0];
    let h = harness(POLICY);
    // IPv4 with a 4-byte option (NOP x4) and a wrong (partial-looking) TCP checksum.
    let mut frame = syn(client, server, 44000, 80, 77, 0, b"", &[]);
    frame[14] = 0x46;
    let total = u16::from_be_bytes([frame[16], frame[17]]) + 4;
    frame[16..18].copy_from_slice(&total.to_be_bytes());
    frame.splice(34..34, [1u8, 1, 1, 1]);
    let tcp_csum = 34 + 4 + 16;
    frame[tcp_csum] ^= 0x5a;
    // Recompute the IPv4 header checksum so only the TCP one is off.
    frame[24] = 0;
    frame[25] = 0;
    let mut sum = 0u32;
    for w in frame[14..38].chunks(2) {
        sum += u16::from_be_bytes([w[0], w[1]]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let s = answer(&h, &frame, client, server, 44000, 80, false);
    assert_eq!(s.ihl_words, Some(5), "options are not echoed");
    assert_eq!(s.ack, 78);
    // A SYN without options: only our MSS comes back; the cookie encodes
    // the default MSS (536, index 0) and no window scale.
    let bare = with_tcp(client, server, tcp_header(44001, 80, SYN, 5, 0), b"");
    let s = answer(&h, &bare, client, server, 44001, 80, false);
    assert_eq!((s.mss, s.wscale, s.sack, s.ts), (Some(1460), None, false, None));
    assert_eq!(s.seq >> 1 & 3, 0, "MSS index 0 in the cookie (no timestamps)");
    h.expect(&ack(client, server, 44001, 80, 5, s.seq, None), XDP_PASS, Reason::CookieValid);
}

#[test]
fn acks_to_other_ports_and_non_cookie_services_are_unaffected() {
    let (client, server) = FAMILIES[0];
    let h = harness(POLICY);
    // ssh has no syncookie: SYNs reach the host as before.
    h.expect(&seg(client, server, 45000, 22, SYN, 1, 0, b""), XDP_PASS, Reason::RuleAccept);
    h.expect(&seg(client, server, 45001, 22, ACK, 1, 1, b""), XDP_DROP, Reason::InvalidNoFlow);
    // A random ACK to the cookie port is a counted invalid cookie.
    h.expect(&seg(client, server, 45002, 80, ACK, 1, 1, b""), XDP_DROP, Reason::CookieInvalid);
    // A SYN the rules drop gets no cookie.
    h.expect(&seg(client, server, 45003, 81, SYN, 1, 0, b""), XDP_DROP, Reason::DefaultDrop);
}

#[test]
fn auto_mode_switches_on_above_the_rate_and_off_after_the_hold() {
    let (client, server) = FAMILIES[0];
    let policy = r#"
[settings]
default = "drop"
syncookie = { auto_on_rate = 100, auto_off_rate = 50, auto_hold_secs = 5 }

[[rule]]
name = "web"
proto = "tcp"
dport = 80
action = "accept"
syncookie = "auto"
"#;
    let mut h = harness(policy);
    let start = std::time::Instant::now();
    // Below the rate: SYNs go to the host (and are tracked).
    h.expect(&seg(client, server, 46000, 80, SYN, 1, 0, b""), XDP_PASS, Reason::RuleAccept);
    h.fw.cookie_tick_at(Duration::from_secs(1), start).unwrap();
    assert!(!service(&h, "web").cookies_on);
    // 50 SYNs in a 100 ms tick: 500/s.
    for p in 0..50 {
        h.expect(&seg(client, server, 46100 + p, 80, SYN, 1, 0, b""), XDP_PASS, Reason::RuleAccept);
    }
    let changed = h.fw.cookie_tick_at(Duration::from_millis(100), start + Duration::from_millis(100)).unwrap();
    assert_eq!(changed.iter().map(|c| (c.service.as_str(), c.on, c.rate.round())).collect::<Vec<_>>(), [("web", true, 500.0)], "the change is reported (an event)");
    let svc = service(&h, "web");
    assert!(svc.cookies_on, "switched on: {svc:?}");
    answer(&h, &seg(client, server, 46200, 80, SYN, 1, 0, b""), client, server, 46200, 80, false);
    // A retransmitted SYN of a handshake the table follows (opened before
    // the switch) goes to the host, not to a cookie: `auto` leaves SYNs to
    // the host, so the port's SYNs are looked up in the table of unproven
    // flows (`maps::SYN_PORTS`), where that handshake is.
    h.expect(&seg(client, server, 46100, 80, SYN, 1, 0, b""), XDP_PASS, Reason::RuleAccept);
    // Quiet, but not yet for the hold time: still on.
    h.fw.cookie_tick_at(Duration::from_secs(1), start + Duration::from_secs(1)).unwrap();
    h.fw.cookie_tick_at(Duration::from_secs(1), start + Duration::from_secs(4)).unwrap();
    assert!(service(&h, "web").cookies_on, "hysteresis holds");
    let changed = h.fw.cookie_tick_at(Duration::from_secs(1), start + Duration::from_secs(7)).unwrap();
    assert_eq!(changed.iter().map(|c| (c.service.as_str(), c.on)).collect::<Vec<_>>(), [("web", false)]);
    assert!(!service(&h, "web").cookies_on, "off after the hold");
    h.expect(&seg(client, server, 46300, 80, SYN, 1, 0, b""), XDP_PASS, Reason::RuleAccept);
    // A reload keeps an engaged service engaged.
    for p in 0..50 {
        h.expect(&seg(client, server, 46400 + p, 80, SYN, 1, 0, b""), XDP_PASS, Reason::RuleAccept);
    }
    h.fw.cookie_tick_at(Duration::from_millis(100), start + Duration::from_secs(8)).unwrap();
    assert!(service(&h, "web").cookies_on);
    h.install(policy);
    assert!(service(&h, "web").cookies_on, "carried over the reload");
}


/// The first attack of the hardening issue: a forged cookie ACK must never
/// get past the rules. Cookies that are correct for the test key, from
/// sources the cookie rule does not admit or an earlier drop rule
/// forbids, are dropped before any MAC is checked.
#[test]
fn a_correct_cookie_from_a_source_the_rules_refuse_is_dropped() {
    let policy = r#"
[settings]
default = "drop"

[[rule]]
name = "banned"
proto = "tcp"
src = "10.211.0.66/32"
action = "drop"

[[rule]]
name = "web"
proto = "tcp"
src = "10.211.0.0/24"
dport = 80
action = "accept"
syncookie = "always"
"#;
    let h = harness(policy);
    let server = "198.51.100.1";
    let t = time_counter();
    let cookie = |client: &str, cport: u16| expected_cookie(&KEY0, client, server, cport, 80, 9, t, info(0, None, false, false, false));
    // Outside the rule's source range, and the banned address inside it.
    for (client, cport) in [("10.200.3.4", 50000), ("10.211.0.66", 50001)] {
        h.expect(&ack(client, server, cport, 80, 9, cookie(client, cport), None), XDP_DROP, Reason::CookieNotAdmitted);
    }
    assert_eq!(service(&h, "web").acks_invalid, 0, "no MAC was checked for them");
    assert!(h.flows().is_empty());
    // The same cookie from an admitted source validates.
    h.expect(&ack("10.211.0.7", server, 50002, 80, 9, cookie("10.211.0.7", 50002), None), XDP_PASS, Reason::CookieValid);
    assert_eq!(time_counter(), t, "the period changed during the test; rerun");
}

/// Random ACKs from admitted sources: the stated odds are 2^-31 with
/// timestamps and 2^-29 without, so 200,000 tries expect 0.0001 and
/// 0.0004 acceptances. None may be accepted.
#[test]
fn random_acks_validate_at_the_stated_odds() {
    let h = harness(POLICY);
    let mut rng = common::random::rng(0xc00c1e);
    let before = h.reason(Reason::CookieValid).packets;
    const TRIES: u32 = 200_000;
    for i in 0..TRIES {
        let client = format!("10.{}.{}.{}", 200 + (i % 50), rng.random_range(0..(256) as u32), rng.random_range(0..(256) as u32));
        let (seq, ackn) = (rng.next_u32(), rng.next_u32());
        let tsecr = if i % 2 == 0 { Some(rng.next_u32()) } else { None };
        let mut tcp = tcp_header(1024 + (rng.random_range(0..(60000) as u32) as u16), 80, ACK, seq, ackn);
        if let Some(ts) = tsecr {
            tcp.set_options(&[TcpOptionElement::Noop, TcpOptionElement::Noop, TcpOptionElement::Timestamp(1, ts)]).unwrap();
        }
        let frame = with_tcp(&client, "198.51.100.1", tcp, b"");
        assert_eq!(h.verdict(&frame), common::XDP_DROP, "random ACK {i} dropped");
    }
    let accepted = h.reason(Reason::CookieValid).packets - before;
    println!("random cookie ACKs: {TRIES} tried, {accepted} accepted (expected 0.0005 at 2^-31 / 2^-29)");
    assert_eq!(accepted, 0);
    assert_eq!(service(&h, "web").acks_invalid, TRIES as u64);
}

/// No reflection: a SYN from or to an address no peer can have gets no
/// SYN-ACK, and one for an address that is not the host's is left to the
/// host's stack (which routes or drops it).
#[test]
fn syns_from_or_to_martian_or_foreign_addresses_get_no_synack() {
    let h = harness(POLICY);
    for (client, server) in [
        ("127.0.0.1", "198.51.100.1"),
        ("0.0.0.0", "198.51.100.1"),
        ("224.0.0.1", "198.51.100.1"),
        ("255.255.255.255", "198.51.100.1"),
        ("192.0.2.10", "255.255.255.255"),
        ("192.0.2.10", "239.1.2.3"),
        ("192.0.2.10", "127.0.0.1"),
        ("::1", "2001:db8:1::1"),
        ("ff02::1", "2001:db8:1::1"),
        ("::", "2001:db8:1::1"),
        ("2001:db8::10", "ff02::1"),
    ] {
        h.expect(&syn(client, server, 47000, 80, 1, 0, b"", &[]), XDP_DROP, Reason::CookieMartian);
    }
    // Admitted by the rule, but not one of the host's addresses: no cookie.
    h.expect(&syn("192.0.2.10", "198.51.100.77", 47001, 80, 1, 0, b"", &[]), XDP_PASS, Reason::RuleAccept);
}

/// SYN options in random orders, with kinds that used to alias (Fast Open
/// 34 on MSS's slot, MD5 19 on window scale's) and unknown kinds: what the
/// cookie remembers (in the TSval's low bits) equals what etherparse reads
/// from the SYN.
#[test]
fn syn_options_in_any_order_are_read_like_etherparse_reads_them() {
    let (client, server) = FAMILIES[0];
    let h = harness(POLICY);
    let mut rng = common::random::rng(7);
    let mut agreed = 0;
    for round in 0..300u32 {
        let mut opts: Vec<Vec<u8>> = vec![vec![8, 10, 0, 0, 0, 1, 0, 0, 0, 0]];
        let mss = [536u16, 1300, 1400, 1440, 1460, 9000][rng.random_range(0..(6) as u32) as usize];
        if rng.random_range(0..(4) as u32) != 0 {
            opts.push(vec![2, 4, (mss >> 8) as u8, mss as u8]);
        }
        let ws = rng.random_range(0..(15) as u32) as u8;
        if rng.random_range(0..(4) as u32) != 0 {
            opts.push(vec![3, 3, ws]);
        }
        if rng.random_range(0..(2) as u32) != 0 {
            opts.push(vec![4, 2]);
        }
        if rng.random_range(0..(2) as u32) != 0 {
            opts.push(vec![34, 10, 1, 2, 3, 4, 5, 6, 7, 8]);
        }
        if rng.random_range(0..(3) as u32) == 0 {
            opts.push(vec![19, 18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        }
        if rng.random_range(0..(3) as u32) == 0 {
            // A kind that aliased a real one when positions were kept by `kind & 15`.
            let base = [2u8, 3, 4, 8][rng.random_range(0..4u32) as usize];
            let kind = base + 16 * (1 + rng.random_range(0..14u32) as u8);
            opts.push(vec![kind, 2]);
        }
        // Shuffle, then pad with NOPs to a multiple of 4, within 40 bytes.
        for i in (1..opts.len()).rev() {
            opts.swap(i, rng.random_range(0..(i as u32 + 1) as u32) as usize);
        }
        let mut raw: Vec<u8> = opts.concat();
        if raw.len() > 40 {
            continue;
        }
        while raw.len() % 4 != 0 {
            raw.insert(0, 1);
        }
        // First Linux's own layout (read without the scan), with every
        // window scale, then near misses of it (scanned): an end-of-list
        // for the NOP, a scale option running past the end, no SACK, no MSS.
        if round < 20 {
            let ws = (round % 16) as u8;
            raw = vec![2, 4, (mss >> 8) as u8, mss as u8, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, ws];
            match round {
                16 => raw[16] = 0,
                17 => raw[18] = 4,
                18 => raw[4..6].copy_from_slice(&[1, 1]),
                19 => raw[0..4].copy_from_slice(&[1, 1, 1, 1]),
                _ => {}
            }
        }
        let mut tcp = tcp_header(48000 + round as u16, 80, SYN, round, 0);
        tcp.set_options_raw(&raw).unwrap();
        let frame = with_tcp(client, server, tcp.clone(), b"");
        // The kernel's rules (tcp_parse_options), as a reference model...
        let (e_mss, e_ws, e_sack) = kernel_options(&raw);
        // ... which agrees with etherparse wherever etherparse knows every kind.
        let parsed = SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(TransportSlice::Tcp(t)) = parsed.transport else { panic!() };
        let (mut p_mss, mut p_ws, mut p_sack, mut known) = (None, None, false, true);
        for o in t.options_iterator() {
            match o {
                Ok(TcpOptionElement::MaximumSegmentSize(m)) => p_mss = Some(m),
                Ok(TcpOptionElement::WindowScale(w)) => p_ws = Some(w.min(14)),
                Ok(TcpOptionElement::SelectiveAcknowledgementPermitted) => p_sack = true,
                Ok(_) => {}
                Err(_) => known = false,
            }
        }
        if known {
            assert_eq!((p_mss, p_ws, p_sack), (e_mss, e_ws, e_sack), "reference model vs etherparse: {raw:?}");
            agreed += 1;
        }
        let s = answer(&h, &frame, client, server, 48000 + round as u16, 80, false);
        let tsval = s.ts.expect("the SYN has timestamps").0;
        let table = [536u16, 1300, 1440, 1460];
        let want_mss = table.iter().rposition(|&m| m <= e_mss.unwrap_or(536)).unwrap() as u32;
        let want = info(want_mss, e_ws, e_sack, false, true) & 0xff;
        assert_eq!(tsval & 0xff, want, "options {raw:?}: info {:#x}, etherparse says mss {e_mss:?} ws {e_ws:?} sack {e_sack}", tsval & 0xff);
        assert_eq!(s.wscale.is_some(), e_ws.is_some(), "window scale offered back only if asked for: {raw:?}");
    }
    assert!(agreed > 50, "etherparse cross-checked {agreed} option lists");
}

/// MSS, window scale and SACK-permitted as the kernel's
/// `tcp_parse_options` reads them: unknown kinds are skipped by their
/// length, a length below 2 or past the end stops the scan, and an option
/// counts only with its exact length.
fn kernel_options(raw: &[u8]) -> (Option<u16>, Option<u8>, bool) {
    let (mut mss, mut ws, mut sack) = (None, None, false);
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let Some(&size) = raw.get(i + 1) else { break };
                let size = size as usize;
                if size < 2 || i + size > raw.len() {
                    break;
                }
                match (kind, size) {
                    (2, 4) => mss = Some(u16::from_be_bytes([raw[i + 2], raw[i + 3]])),
                    (3, 3) => ws = Some(raw[i + 2].min(14)),
                    (4, 2) => sack = true,
                    _ => {}
                }
                i += size;
            }
        }
    }
    (mss, ws, sack)
}

/// The hand-off refuses what the namespace's sysctls turned off: the
/// SYN-ACK offers only what `OFFER_*` allows, and without timestamps the
/// cookie has no room for window scaling or SACK (as the kernel's).
#[test]
fn synacks_offer_only_what_the_sysctls_allow() {
    use firewall_common::{OFFER_ALL, OFFER_SACK, OFFER_TIMESTAMPS, OFFER_WSCALE};
    let (client, server) = FAMILIES[0];
    let mut h = harness(POLICY);
    for (offer, want_ws, want_sack, want_ts) in [
        (OFFER_ALL, true, true, true),
        (OFFER_ALL & !OFFER_WSCALE, false, true, true),
        (OFFER_ALL & !OFFER_SACK, true, false, true),
        (OFFER_ALL & !OFFER_TIMESTAMPS, false, false, false),
    ] {
        h.fw.set_cookie_offer(offer).unwrap();
        let cport = 49000 + offer as u16;
        let s = answer(&h, &syn(client, server, cport, 80, 3, 0, b"", &[]), client, server, cport, 80, false);
        assert_eq!((s.wscale.is_some(), s.sack, s.ts.is_some()), (want_ws, want_sack, want_ts), "offer {offer:#x}");
        h.expect(&ack(client, server, cport, 80, 3, s.seq, s.ts.map(|t| t.0)), XDP_PASS, Reason::CookieValid);
    }
}

/// SYNs a cookie service answers are sampled into the event ring for the
/// top sources per service (`syns`, on with drop events), naming the
/// service; with `log = true` each one is also logged; without events,
/// nothing is recorded.
#[test]
fn answered_syns_are_recorded_for_the_top_sources() {
    use firewall_common::{EVENT_LOG, EVENT_SYN};
    pin_to_cpu0();
    let (client, server) = FAMILIES[0];
    let mut h = harness(POLICY);
    answer(&h, &seg(client, server, 47000, 80, SYN, 1, 0, b""), client, server, 47000, 80, false);
    assert!(drain_events(&h).is_empty(), "no events unless the policy asks");

    h.install(&format!("{POLICY}\n[settings.events]\ndrops = true\nsample = 2\n"));
    for p in 0..6 {
        answer(&h, &seg(client, server, 47100 + p, 80, SYN, 1, 0, b""), client, server, 47100 + p, 80, false);
    }
    let ev = drain_events(&h);
    assert_eq!(ev.len(), 3, "one SYN in 2");
    let e = ev[0];
    assert_eq!((e.kind, e.reason, e.rule, e.dport), (EVENT_SYN, Reason::CookieSent as u16, 0, 80), "the service is rule 0");
    assert_eq!(firewall_user::conntrack::addr(e.src), common::ip(client), "the SYN's source, not the SYN-ACK's");
    assert!(ev.iter().skip(1).all(|e| e.skipped == 1));

    h.install(&POLICY.replace("syncookie = \"always\"", "syncookie = \"always\"\nlog = true"));
    let s = answer(&h, &seg(client, server, 47200, 80, SYN, 1, 0, b""), client, server, 47200, 80, false);
    let kinds: Vec<(u8, u16)> = drain_events(&h).iter().map(|e| (e.kind, e.reason)).collect();
    assert_eq!(kinds, [(EVENT_LOG, Reason::CookieSent as u16)], "logged; SYN samples are off without events");
    // The handshake's valid cookie ACK is a match of the logged service
    // too; a forged one is not logged (drop events would record it).
    h.expect(&ack(client, server, 47200, 80, 1, s.seq, s.ts.map(|t| t.0)), XDP_PASS, Reason::CookieValid);
    h.expect(&ack(client, server, 47201, 80, 1, s.seq, s.ts.map(|t| t.0)), XDP_DROP, Reason::CookieInvalid);
    let ev: Vec<(u8, u16, u16, u16)> = drain_events(&h).iter().map(|e| (e.kind, e.reason, e.rule, e.sport)).collect();
    assert_eq!(ev, [(EVENT_LOG, Reason::CookieValid as u16, 0, 47200)]);
}

/// The bench's bare reflector (`bench_reflect`, the physical limit the
/// rates bench compares the cookie path with) emits a valid SYN-ACK: both
/// checksums right, addresses and ports swapped, ACK = SYN's seq + 1; it
/// passes anything else.
#[test]
fn the_bench_reflector_answers_a_syn_with_a_valid_synack() {
    use aya::programs::{TestRun as _, TestRunOptions, Xdp};
    let mut ebpf = aya::Ebpf::load(netns::BENCH_OBJECT).expect("bench object loads");
    let prog: &mut Xdp = ebpf.program_mut(firewall_common::maps::bench::REFLECT_PROGRAM).unwrap().try_into().unwrap();
    prog.load().unwrap();
    let (client, server) = FAMILIES[0];
    let run = |frame: &[u8]| {
        let mut out = vec![0u8; frame.len() + 64];
        let r = prog.test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..TestRunOptions::new() }).expect("test run");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    };
    let (verdict, out) = run(&seg(client, server, 40000, 80, SYN, 0x1234_5678, 0, b""));
    assert_eq!(verdict, XDP_TX);
    let p = SlicedPacket::from_ethernet(&out).expect("parses");
    let Some(NetSlice::Ipv4(v4)) = &p.net else { panic!("IPv4") };
    let h = v4.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 header checksum");
    assert_eq!((IpAddr::V4(h.source.into()), IpAddr::V4(h.destination.into())), (ip(server), ip(client)));
    let Some(TransportSlice::Tcp(tcp)) = &p.transport else { panic!("TCP") };
    assert_eq!(tcp.checksum(), tcp.calc_checksum_ipv4(h.source, h.destination).unwrap(), "TCP checksum");
    assert_eq!((tcp.source_port(), tcp.destination_port()), (80, 40000));
    assert!(tcp.syn() && tcp.ack() && !tcp.rst() && !tcp.fin());
    assert_eq!(tcp.acknowledgment_number(), 0x1234_5679);
    // Not a SYN, or not IPv4: passed untouched.
    let ack = seg(client, server, 40000, 80, ACK, 1, 1, b"");
    assert_eq!(run(&ack), (XDP_PASS, ack));
    let v6 = seg(FAMILIES[1].0, FAMILIES[1].1, 40000, 80, SYN, 1, 0, b"");
    assert_eq!(run(&v6).0, XDP_PASS);
}

/// A valid cookie ACK proves its source: the cap counts the connection
/// then, refuses one past it (no flow, no hand-off) and bans the source;
/// a forged cookie proves nothing and bans no one.
#[test]
fn a_cookie_service_counts_connections_at_the_valid_ack_and_bans_past_its_cap() {
    let capped = POLICY.replace("syncookie = \"always\"\n", "syncookie = \"always\"\nlimit = { max_conns = 1, ban = \"@offenders\" }\n");
    let policy = format!("[[set]]\nname = \"offenders\"\ntype = \"addr\"\ntimeout = \"1h\"\n\n[[rule]]\nname = \"banned\"\nsrc = \"@offenders\"\naction = \"drop\"\n{capped}");
    let h = harness(&policy);
    let (client, server) = FAMILIES[0];
    let isn = 0x2000_0000;
    // Both SYNs are answered: nothing is counted before a proof.
    let first = answer(&h, &syn(client, server, 40000, 80, isn, 0, b"", &[]), client, server, 40000, 80, false);
    let second = answer(&h, &syn(client, server, 40001, 80, isn, 0, b"", &[]), client, server, 40001, 80, false);
    let forged = ack(client, server, 40002, 80, isn, 0xdead_beef, first.ts.map(|t| t.0));
    h.expect(&forged, XDP_DROP, Reason::CookieInvalid);
    h.expect(&ack(client, server, 40000, 80, isn, first.seq, first.ts.map(|t| t.0)), XDP_PASS, Reason::CookieValid);
    let banned = |h: &Harness| {
        let sets = h.fw.sets().unwrap();
        sets.members(sets.find("offenders").unwrap().id)
    };
    assert!(banned(&h).is_empty(), "a forged cookie bans no one");
    let flows = h.flows().len();
    h.expect(&ack(client, server, 40001, 80, isn, second.seq, second.ts.map(|t| t.0)), XDP_DROP, Reason::ConnLimited);
    assert_eq!(h.flows().len(), flows, "a refused ACK opens no flow");
    assert_eq!(h.refused("web"), (0, 1), "the service's cap refused it");
    assert_eq!(banned(&h).iter().map(|(c, _)| c.to_string()).collect::<Vec<_>>(), ["192.0.2.10/32"]);
    h.expect(&syn(client, server, 40003, 80, isn, 0, b"", &[]), XDP_DROP, Reason::RuleDrop);
}

/// A cookie service's rate is charged at the valid cookie ACK, not at the
/// SYN: SYNs in a source's name (which anyone can send) do not spend its
/// rate, and a cookie ACK replayed after its connection is gone opens a
/// new connection, so it is charged as one.
#[test]
fn a_cookie_services_rate_is_charged_at_the_valid_ack() {
    let mut h = harness(&POLICY.replace("syncookie = \"always\"\n", "syncookie = \"always\"\nlimit = { rate = \"1/m\", burst = 3 }\n"));
    let (client, server) = FAMILIES[0];
    let isn = 0x2000_0000;
    // Five SYNs, more than the burst: every one is answered.
    let answers: Vec<_> = (0..5u16).map(|i| answer(&h, &syn(client, server, 40000 + i, 80, isn, 0, b"", &[]), client, server, 40000 + i, 80, false)).collect();
    assert_eq!(h.refused("web"), (0, 0), "no SYN refused");
    let ack_of = |i: usize| ack(client, server, 40000 + i as u16, 80, isn, answers[i].seq, answers[i].ts.map(|t| t.0));
    // The burst's worth of proven connections, then one over the rate.
    h.expect(&ack_of(0), XDP_PASS, Reason::CookieValid);
    h.expect(&ack_of(1), XDP_PASS, Reason::CookieValid);
    h.expect(&ack(client, server, 40004, 80, isn, answers[4].seq ^ 1, answers[4].ts.map(|t| t.0)), XDP_DROP, Reason::CookieInvalid);
    assert_eq!(h.refused("web"), (0, 0), "a forged cookie spends nothing");
    h.expect(&ack_of(2), XDP_PASS, Reason::CookieValid);
    h.expect(&ack_of(3), XDP_DROP, Reason::RateLimited);
    assert_eq!(h.refused("web"), (1, 0));
    // The first connection ends (the host's RST) and its flow goes; its
    // cookie ACK again would open a new connection: over the rate.
    assert_eq!(h.egress(&seg(server, client, 80, 40000, RST | ACK, answers[0].seq.wrapping_add(1), isn + 1, b"")), Reason::EgressTracked);
    h.age_flows(11);
    h.expect(&ack_of(0), XDP_DROP, Reason::RateLimited);
    assert_eq!(h.refused("web"), (2, 0));
}

/// A SYN a cookie service does not answer goes to the host, which answers
/// it: charged to the rate at the SYN then, as for a plain rule (here the
/// cookie program is gone from the program array, as when its tail call
/// fails). A martian SYN is dropped before any limit, charging nothing.
#[test]
fn a_cookie_syn_the_host_answers_instead_is_charged_at_the_syn() {
    let mut h = harness(&POLICY.replace("syncookie = \"always\"\n", "syncookie = \"always\"\nlimit = { rate = \"1/m\", burst = 3 }\n"));
    let (client, server) = FAMILIES[0];
    for i in 0..5u16 {
        h.expect(&syn("240.0.0.1", server, 41000 + i, 80, 1, 0, b"", &[]), XDP_DROP, Reason::CookieMartian);
    }
    assert_eq!(h.refused("web"), (0, 0), "a martian SYN spends no bucket");
    {
        let mut progs: aya::maps::ProgramArray<_> =
            aya::maps::ProgramArray::try_from(h.fw.ebpf.map_mut(firewall_common::maps::PROGRAMS).unwrap()).unwrap();
        progs.clear_index(&firewall_common::maps::PROG_COOKIE_SYN).unwrap();
    }
    for i in 0..3u16 {
        h.expect(&syn(client, server, 40000 + i, 80, 0x2000_0000, 0, b"", &[]), XDP_PASS, Reason::RuleAccept);
    }
    h.expect(&syn(client, server, 40003, 80, 0x2000_0000, 0, b"", &[]), XDP_DROP, Reason::RateLimited);
    assert_eq!(h.refused("web"), (1, 0));
}

/// A SYN to an `always` port is looked up in the main table only when
/// that table's hint slot for its tuple is not empty (`maps::FLOW_HINTS`):
/// a SYN on the tuple of a connection a cookie proved still finds it, and
/// passes to the host with the flow unchanged (not answered with a cookie,
/// as a SYN of no flow would be; the host listens on the port but has no
/// socket for the tuple here). The host's SYN-ACK for it, a new
/// connection, replaces the flow, and the slot follows.
#[test]
fn a_syn_on_a_cookie_connections_tuple_still_finds_its_flow() {
    // The service's listener (dual-stack: both families).
    let listener = std::net::TcpListener::bind("[::]:0").unwrap();
    let sport = listener.local_addr().unwrap().port();
    for (client, server) in FAMILIES {
        let h = harness(&POLICY.replace("dport = 80", &format!("dport = {sport}")));
        let (cport, isn) = (40100, 0x2000_0000);
        let s = answer(&h, &syn(client, server, cport, sport, isn, 0, b"", &[]), client, server, cport, sport, false);
        let tsval = s.ts.expect("timestamps").0;
        h.expect(&ack(client, server, cport, sport, isn, s.seq, Some(tsval)), XDP_PASS, Reason::CookieValid);
        assert_eq!((h.flow_state(cport, sport), h.table_sizes()), (Some("established"), (1, 0)));
        assert_eq!(h.hint_mismatches(), []);
        // The client's new SYN on the tuple: the flow is found.
        let new_isn = isn + 5_000_000;
        h.expect(&syn(client, server, cport, sport, new_isn, 0, b"", &[]), XDP_PASS, Reason::Established);
        assert_eq!((h.flow_state(cport, sport), h.table_sizes()), (Some("established"), (1, 0)), "unchanged");
        assert_eq!(h.egress(&seg(server, client, sport, cport, SYN | ACK, s.seq.wrapping_add(0x4000_0000), new_isn + 1, b"")), Reason::EgressTracked);
        assert_eq!(h.table_sizes(), (0, 1), "the old flow was deleted; the new handshake is not proven yet");
        assert_eq!(h.hint_mismatches(), [], "its slot is back at 0");
    }
}
