//! Packet fuzzing through the real XDP program (BPF_PROG_TEST_RUN): a
//! corpus of valid frames built with etherparse, mutated with a fixed-seed
//! PRNG, each run once and checked against invariants that hold whatever
//! the connection table holds:
//!
//! 1. the verdict is XDP_DROP, XDP_PASS or XDP_TX, never XDP_ABORTED;
//! 2. XDP_TX only for a bare SYN (SYN without ACK, RST, FIN) that the
//!    policy admits to a cookie service;
//! 3. every emitted frame is a correct SYN-ACK: it parses with etherparse,
//!    IPv4 header and TCP checksums verify, addresses, ports and MACs are
//!    swapped, VLAN tags kept, ack = client ISN + 1, it offers back only
//!    options the SYN carried;
//! 4. every packet is counted under exactly one reason (one packet, the
//!    frame's bytes), whose verdict is the one returned;
//! 5. for packets whose verdict needs no connection state (malformed, not
//!    IP, non-first fragments, untracked protocols and ICMP types, bare
//!    SYNs on tuples the run has not used otherwise), the verdict equals a
//!    reference model: the documented parsing limits and an in-order scan
//!    of the policy's rules;
//! 6. a frame that is passed or dropped leaves the program unchanged.
//!
//! Used by `tests/fuzz.rs` (a bounded run in the suite) and by
//! `examples/fuzz.rs` (`cargo xtask fuzz --packets N`, long runs).

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use aya::maps::{MapData, PerCpuArray};
use etherparse::{
    IpFragOffset, IpHeaders, IpNumber, Ipv4Header, Ipv6Extensions, Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader,
    Ipv6RoutingExtensions, NetSlice, PacketBuilder, PacketBuilderStep, SlicedPacket, TcpHeader, TransportSlice, VlanId,
};
use firewall_common::{
    Counter, Reason, maps,
    reason::REASON_COUNT,
    tcp_flags::{ACK, CWR, ECE, FIN, PSH, RST, SYN, URG},
};
use firewall_user::policy::{self, Action, Policy, Proto, Syncookie};
use rand::{Rng, RngCore, SeedableRng, rngs::StdRng};

use super::{Harness, MAC_A, MAC_B, XDP_DROP, XDP_PASS};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_TX: u32 = 3;

/// The seed of `cargo xtask fuzz` and of the suite's run.
pub const DEFAULT_SEED: u64 = 0x5eed_f022_0001;

/// A cookie service (from some sources only), a drop rule, plain accept
/// rules, default drop. Every state setting is the shipped default.
pub const POLICY: &str = r#"
[settings]
default = "drop"
fragments = "drop"

[[rule]]
name = "web-cookie"
proto = "tcp"
src = ["192.0.2.0/24", "2001:db8:c0::/48"]
dport = 80
action = "accept"
syncookie = "always"

[[rule]]
name = "blocked"
src = ["203.0.113.0/24", "2001:db8:bad::/48"]
action = "drop"

[[rule]]
name = "ssh"
proto = "tcp"
dport = 22
action = "accept"

[[rule]]
name = "dns"
proto = "udp"
dport = 53
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
name = "ndp-solicit"
proto = "icmpv6"
icmp_type = 135
action = "accept"

[[rule]]
name = "trusted"
src = ["198.18.0.0/15", "2001:db8:7::/48"]
action = "accept"
"#;

/// Clients: admitted to the cookie service, other, blocked, trusted.
const CLIENTS_V4: [&str; 4] = ["192.0.2.10", "198.51.100.20", "203.0.113.30", "198.18.0.40"];
const CLIENTS_V6: [&str; 4] = ["2001:db8:c0::10", "2001:db8:99::20", "2001:db8:bad::30", "2001:db8:7::40"];
const SERVER_V4: &str = "10.1.0.1";
const SERVER_V6: &str = "2001:db8:1::1";
/// The host's addresses in the fuzzed program (`FW_LOCAL_ADDRS`): cookie
/// SYN-ACKs are sent for these destinations only.
pub const LOCAL: [&str; 2] = [SERVER_V4, SERVER_V6];

/// The real program with the fuzzed policy, its host addresses `LOCAL`.
pub fn harness() -> Harness {
    let mut h = Harness::new(POLICY);
    let local: Vec<IpAddr> = LOCAL.iter().map(|a| a.parse().unwrap()).collect();
    h.fw.set_local_addrs(&local).expect("local addresses");
    h
}

/// An address no peer can have, or that reaches many hosts: no SYN-ACK
/// goes from or to it (unspecified, loopback, multicast, broadcast, class E).
fn martian(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => a.octets()[0] == 0 || a.is_loopback() || a.octets()[0] >= 224,
        IpAddr::V6(a) => a.is_unspecified() || a.is_loopback() || a.is_multicast(),
    }
}

// ---------------------------------------------------------------------------
// Reference model: what the documented parsing limits make of a frame.
// ---------------------------------------------------------------------------

/// Transport fields the policy can match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp { sport: u16, dport: u16, flags: u8, seq: u32, header_len: usize },
    Udp { sport: u16, dport: u16 },
    /// ICMP or ICMPv6 (by protocol number, in either IP version).
    Icmp { proto: u8, ty: u8, code: u8 },
    /// Another protocol: no ports, not tracked.
    Other(u8),
}

/// An IP packet as the model reads it.
#[derive(Clone, Copy, Debug)]
pub struct Ip {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Offset of the IP header (after the VLAN tags).
    pub l3: usize,
    /// Offset of the transport header.
    pub l4_at: usize,
    pub l4: L4,
}

/// What a frame is, by the limits the README documents (reasons table):
/// Ethernet plus up to two 802.1Q/802.1ad tags, IPv4 (IHL, total length
/// within the frame), IPv6 (payload length within the frame, no
/// IPv4-mapped addresses, at most 6 hop-by-hop/routing/fragment/destination
/// headers within the payload), TCP (data offset 5.. within the IP
/// payload), UDP and ICMP (8 bytes within the IP payload).
#[derive(Clone, Copy, Debug)]
pub enum Shape {
    /// Shorter than an Ethernet header: BPF_PROG_TEST_RUN refuses it.
    Runt,
    NonIp,
    Malformed(&'static str),
    /// Outside what the model judges (a header chain past 512 bytes, where
    /// the program stops believing offsets; undocumented).
    Unjudged(&'static str),
    /// A non-first IPv4 or IPv6 fragment.
    Fragment,
    Ip(Ip),
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

fn be32(f: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]])
}

/// Offsets are not judged past this (see `Shape::Unjudged`).
const MODEL_MAX_OFFSET: usize = 512;

pub fn shape(f: &[u8]) -> Shape {
    if f.len() < 14 {
        return Shape::Runt;
    }
    let mut ether_type = be16(f, 12);
    let mut off = 14;
    for _ in 0..2 {
        if ether_type != 0x8100 && ether_type != 0x88a8 {
            break;
        }
        if off + 4 > f.len() {
            return Shape::Malformed("truncated VLAN tag");
        }
        ether_type = be16(f, off + 2);
        off += 4;
    }
    match ether_type {
        0x8100 | 0x88a8 => Shape::Malformed("more than two VLAN tags"),
        0x0800 => ipv4(f, off),
        0x86dd => ipv6(f, off),
        _ => Shape::NonIp,
    }
}

fn ipv4(f: &[u8], l3: usize) -> Shape {
    if l3 + 20 > f.len() {
        return Shape::Malformed("truncated IPv4 header");
    }
    let header_len = (f[l3] & 0x0f) as usize * 4;
    if f[l3] >> 4 != 4 || header_len < 20 {
        return Shape::Malformed("IPv4 version or IHL");
    }
    let total = be16(f, l3 + 2) as usize;
    if total < header_len || l3 + total > f.len() {
        return Shape::Malformed("IPv4 total length");
    }
    let src = IpAddr::V4(Ipv4Addr::from(be32(f, l3 + 12)));
    let dst = IpAddr::V4(Ipv4Addr::from(be32(f, l3 + 16)));
    if be16(f, l3 + 6) & 0x1fff != 0 {
        return Shape::Fragment;
    }
    transport(f, src, dst, l3, l3 + header_len, total - header_len, f[l3 + 9])
}

fn ipv6(f: &[u8], l3: usize) -> Shape {
    if l3 + 40 > f.len() {
        return Shape::Malformed("truncated IPv6 header");
    }
    if f[l3] >> 4 != 6 {
        return Shape::Malformed("IPv6 version");
    }
    let payload = be16(f, l3 + 4) as usize;
    let end = l3 + 40 + payload;
    if end > f.len() {
        return Shape::Malformed("IPv6 payload length");
    }
    let addr = |at: usize| Ipv6Addr::from(u128::from_be_bytes(f[at..at + 16].try_into().unwrap()));
    let (src, dst) = (addr(l3 + 8), addr(l3 + 24));
    if src.to_ipv4_mapped().is_some() || dst.to_ipv4_mapped().is_some() {
        return Shape::Malformed("IPv4-mapped IPv6 address");
    }
    let mut next = f[l3 + 6];
    let mut at = l3 + 40;
    let mut headers = 0;
    while matches!(next, 0 | 43 | 44 | 60) {
        if headers == 6 {
            return Shape::Malformed("more than 6 extension headers");
        }
        headers += 1;
        if at + 2 > end {
            return Shape::Malformed("truncated extension header");
        }
        let len = if next == 44 { 8 } else { (f[at + 1] as usize + 1) * 8 };
        if at + len > MODEL_MAX_OFFSET {
            return Shape::Unjudged("extension headers past 512 bytes");
        }
        if at + len > end {
            return Shape::Malformed("extension header beyond the payload");
        }
        if next == 44 && be16(f, at + 2) & 0xfff8 != 0 {
            return Shape::Fragment;
        }
        next = f[at];
        at += len;
    }
    transport(f, IpAddr::V6(src), IpAddr::V6(dst), l3, at, end - at, next)
}

fn transport(f: &[u8], src: IpAddr, dst: IpAddr, l3: usize, at: usize, len: usize, proto: u8) -> Shape {
    if at > MODEL_MAX_OFFSET {
        return Shape::Unjudged("transport header past 512 bytes");
    }
    let l4 = match proto {
        6 => {
            if len < 20 {
                return Shape::Malformed("truncated TCP header");
            }
            let header_len = (f[at + 12] >> 4) as usize * 4;
            if header_len < 20 || header_len > len {
                return Shape::Malformed("TCP data offset");
            }
            L4::Tcp { sport: be16(f, at), dport: be16(f, at + 2), flags: f[at + 13], seq: be32(f, at + 4), header_len }
        }
        17 if len < 8 => return Shape::Malformed("truncated UDP header"),
        17 => L4::Udp { sport: be16(f, at), dport: be16(f, at + 2) },
        1 | 58 if len < 8 => return Shape::Malformed("truncated ICMP header"),
        1 | 58 => L4::Icmp { proto, ty: f[at], code: f[at + 1] },
        p => L4::Other(p),
    };
    Shape::Ip(Ip { src, dst, l3, l4_at: at, l4 })
}

fn bare_syn(flags: u8) -> bool {
    flags & (SYN | ACK | RST | FIN) == SYN
}

/// ICMP types that no connection state can concern: not echo, not an
/// error that could be related to a flow (README: unreachable, packet too
/// big, time exceeded, parameter problem; also redirect and source quench,
/// to stay clear of future changes). ICMPv6 informational types 130+.
fn stateless_icmp(proto: u8, ty: u8) -> bool {
    match proto {
        1 => !matches!(ty, 0 | 3 | 4 | 5 | 8 | 11 | 12),
        _ => ty >= 130,
    }
}

fn in_list(list: &[policy::Cidr], a: IpAddr) -> bool {
    let host = policy::Cidr { addr: a, prefix: if a.is_ipv4() { 32 } else { 128 } };
    list.is_empty() || list.iter().any(|c| c.contains(&host))
}

fn in_ports(list: &[policy::PortRange], p: u16) -> bool {
    list.is_empty() || list.iter().any(|r| r.lo <= p && p <= r.hi)
}

/// The first rule that matches a new packet, by a plain scan in order.
pub fn first_match<'a>(policy: &'a Policy, ip: &Ip) -> Option<&'a policy::Rule> {
    let (proto, flags) = match ip.l4 {
        L4::Tcp { flags, .. } => (6, flags),
        L4::Udp { .. } => (17, 0),
        L4::Icmp { proto, .. } => (proto, 0),
        L4::Other(p) => (p, 0),
    };
    policy.rules.iter().find(|r| {
        r.state & firewall_common::ct_state::NEW != 0
            && r.matches_family(ip.src.is_ipv4())
            && r.proto.number().is_none_or(|n| n == proto)
            && in_list(&r.src, ip.src)
            && in_list(&r.dst, ip.dst)
            && flags & r.tcp_flags.mask == r.tcp_flags.value
            && match ip.l4 {
                L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport } => in_ports(&r.sport, sport) && in_ports(&r.dport, dport),
                L4::Icmp { ty, code, .. } => r.icmp_type.is_none_or(|t| t == ty) && r.icmp_code.is_none_or(|c| c == code),
                L4::Other(_) => r.sport.is_empty() && r.dport.is_empty(),
            }
    })
}

/// What the model expects of a packet it judges.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    pub class: &'static str,
    pub verdict: u32,
    /// Reasons it may be counted under.
    pub reasons: &'static [Reason],
}

const MALFORMED: &[Reason] =
    &[Reason::MalformedL2, Reason::TooManyVlans, Reason::MalformedL3, Reason::Ipv6ExtLimit, Reason::MalformedL4];
const RULE_PASS: &[Reason] = &[Reason::RuleAccept, Reason::DefaultAccept];
const RULE_DROP: &[Reason] = &[Reason::RuleDrop, Reason::DefaultDrop];

/// The rules' verdict for a new packet (and whether it goes to a cookie service).
fn by_rules(policy: &Policy, ip: &Ip, class: &'static str) -> Expect {
    match first_match(policy, ip) {
        Some(r) if r.action == Action::Accept && r.syncookie == Syncookie::Always && matches!(ip.l4, L4::Tcp { flags, .. } if bare_syn(flags)) => {
            if martian(ip.src) || martian(ip.dst) {
                Expect { class: "SYN to a cookie service from or to a martian address", verdict: XDP_DROP, reasons: &[Reason::CookieMartian] }
            } else if !LOCAL.iter().any(|a| a.parse::<IpAddr>().unwrap() == ip.dst) {
                Expect { class: "SYN to a cookie service for another host", verdict: XDP_PASS, reasons: RULE_PASS }
            } else {
                Expect { class: "bare SYN to a cookie service", verdict: XDP_TX, reasons: &[Reason::CookieSent] }
            }
        }
        Some(r) if r.action == Action::Accept => Expect { class, verdict: XDP_PASS, reasons: RULE_PASS },
        None if policy.settings.default == Action::Accept => Expect { class, verdict: XDP_PASS, reasons: RULE_PASS },
        _ => Expect { class, verdict: XDP_DROP, reasons: RULE_DROP },
    }
}

type Tuple = (IpAddr, IpAddr, u16, u16);

/// The reference model, with the little it remembers: which TCP tuples the
/// run has used, so that a bare SYN is judged only where no flow can
/// change its fate (none on its reverse tuple, which a simultaneous open
/// would make established, and no segment other than a SYN on its own).
pub struct Model {
    pub policy: Policy,
    /// Tuple -> whether a TCP packet other than a bare SYN used it, and
    /// the sequence number of its first bare SYN (a SYN with another ISN
    /// on a handshake the table follows goes to the host unjudged).
    tcp_tuples: HashMap<Tuple, (bool, Option<u32>)>,
}

impl Model {
    pub fn new(policy: Policy) -> Self {
        Model { policy, tcp_tuples: HashMap::new() }
    }

    /// The expectation for `shape`, if the model judges it; then records the packet.
    pub fn judge(&mut self, shape: &Shape) -> Option<Expect> {
        let expect = match shape {
            Shape::Runt | Shape::Unjudged(_) => None,
            Shape::NonIp => Some(Expect { class: "not IP", verdict: XDP_PASS, reasons: &[Reason::NonIp] }),
            Shape::Malformed(_) => Some(Expect { class: "malformed", verdict: XDP_DROP, reasons: MALFORMED }),
            Shape::Fragment => match self.policy.settings.fragments {
                Action::Drop => Some(Expect { class: "non-first fragment", verdict: XDP_DROP, reasons: &[Reason::FragmentDrop] }),
                Action::Accept => Some(Expect { class: "non-first fragment", verdict: XDP_PASS, reasons: &[Reason::FragmentAccept] }),
            },
            Shape::Ip(ip) => match ip.l4 {
                L4::Other(_) => Some(by_rules(&self.policy, ip, "untracked protocol")),
                L4::Icmp { proto, ty, .. } if stateless_icmp(proto, ty) => Some(by_rules(&self.policy, ip, "untracked ICMP type")),
                L4::Tcp { sport, dport, flags, seq, .. } if bare_syn(flags) => {
                    let reverse = self.tcp_tuples.contains_key(&(ip.dst, ip.src, dport, sport));
                    let (used, first) = self.tcp_tuples.get(&(ip.src, ip.dst, sport, dport)).copied().unwrap_or((false, None));
                    (!reverse && !used && first.is_none_or(|f| f == seq)).then(|| by_rules(&self.policy, ip, "bare SYN"))
                }
                _ => None,
            },
        };
        if let Shape::Ip(Ip { src, dst, l4: L4::Tcp { sport, dport, flags, seq, .. }, .. }) = shape {
            let entry = self.tcp_tuples.entry((*src, *dst, *sport, *dport)).or_default();
            entry.0 |= !bare_syn(*flags);
            if bare_syn(*flags) && entry.1.is_none() {
                entry.1 = Some(*seq);
            }
        }
        expect
    }
}

// ---------------------------------------------------------------------------
// The SYN-ACK check (invariant 3), independent of the program's code.
// ---------------------------------------------------------------------------

/// TCP options by the RFC 9293 rules: EOL ends the list, NOP is one byte,
/// any other option has a length of at least 2 that fits, or the list is
/// malformed from there on (as Linux's `tcp_parse_options` stops).
pub fn rfc_options(mut b: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while let Some(&kind) = b.first() {
        match kind {
            0 => break,
            1 => b = &b[1..],
            _ => {
                let Some(&len) = b.get(1) else { break };
                let len = len as usize;
                if len < 2 || len > b.len() {
                    break;
                }
                out.push((kind, &b[2..len]));
                b = &b[len..];
            }
        }
    }
    out
}

fn ones_complement_ok(b: &[u8]) -> bool {
    let mut sum: u32 = b.chunks(2).map(|w| u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// Checks the frame a SYN was answered with.
pub fn check_synack(syn: &[u8], ip: &Ip, out: &[u8]) -> Result<(), String> {
    let L4::Tcp { sport, dport, flags, seq, header_len } = ip.l4 else { return Err("answered a non-TCP packet".into()) };
    let p = SlicedPacket::from_ethernet(out).map_err(|e| format!("etherparse rejects the emitted frame: {e:?}"))?;
    if out.len() < ip.l3 || out[..6] != syn[6..12] || out[6..12] != syn[..6] {
        return Err("MAC addresses not swapped".into());
    }
    if out[12..ip.l3] != syn[12..ip.l3] {
        return Err("VLAN tags / EtherType not kept".into());
    }
    let tcp = match (&p.net, &p.transport) {
        (Some(NetSlice::Ipv4(v4)), Some(TransportSlice::Tcp(tcp))) => {
            let h = v4.header();
            let hdr = &out[ip.l3..ip.l3 + h.slice().len()];
            if !ones_complement_ok(hdr) || h.header_checksum() != h.to_header().calc_header_checksum() {
                return Err(format!("bad IPv4 header checksum {:#06x}", h.header_checksum()));
            }
            if h.total_len() as usize != out.len() - ip.l3 {
                return Err(format!("IPv4 total length {} for {} bytes", h.total_len(), out.len() - ip.l3));
            }
            if (IpAddr::V4(h.source_addr()), IpAddr::V4(h.destination_addr())) != (ip.dst, ip.src) {
                return Err("IPv4 addresses not swapped".into());
            }
            if h.is_fragmenting_payload() || h.ttl() == 0 {
                return Err("IPv4 fragment or TTL 0".into());
            }
            let want = tcp.calc_checksum_ipv4(h.source(), h.destination()).map_err(|e| format!("{e:?}"))?;
            if tcp.checksum() != want {
                return Err(format!("bad TCP checksum {:#06x}, expected {want:#06x}", tcp.checksum()));
            }
            tcp
        }
        (Some(NetSlice::Ipv6(v6)), Some(TransportSlice::Tcp(tcp))) => {
            let h = v6.header();
            if h.payload_length() as usize != out.len() - ip.l3 - 40 || h.next_header() != IpNumber::TCP {
                return Err(format!("IPv6 payload length {} / next header {:?}", h.payload_length(), h.next_header()));
            }
            if (IpAddr::V6(h.source_addr()), IpAddr::V6(h.destination_addr())) != (ip.dst, ip.src) {
                return Err("IPv6 addresses not swapped".into());
            }
            if h.hop_limit() == 0 {
                return Err("hop limit 0".into());
            }
            let want = tcp.calc_checksum_ipv6(h.source(), h.destination()).map_err(|e| format!("{e:?}"))?;
            if tcp.checksum() != want {
                return Err(format!("bad TCP checksum {:#06x}, expected {want:#06x}", tcp.checksum()));
            }
            tcp
        }
        (net, transport) => return Err(format!("not IP/TCP: {:?} / {:?}", net.is_some(), transport.is_some())),
    };
    if (tcp.source_port(), tcp.destination_port()) != (dport, sport) {
        return Err("ports not swapped".into());
    }
    if !(tcp.syn() && tcp.ack()) || tcp.rst() || tcp.fin() || tcp.cwr() {
        return Err("flags are not SYN+ACK".into());
    }
    if tcp.ece() && flags & (ECE | CWR) != (ECE | CWR) {
        return Err("ECE answered to a SYN that asked for no ECN".into());
    }
    if tcp.acknowledgment_number() != seq.wrapping_add(1) {
        return Err(format!("ack {:#x}, client ISN + 1 is {:#x}", tcp.acknowledgment_number(), seq.wrapping_add(1)));
    }
    if !tcp.payload().is_empty() {
        return Err("SYN-ACK carries data".into());
    }
    // Options: well formed, MSS present, nothing offered that the SYN did
    // not carry (window scale, SACK-permitted, timestamps echoing a TSval).
    let theirs = rfc_options(&syn[ip.l4_at + 20..ip.l4_at + header_len]);
    let has = |kind: u8, len: usize| theirs.iter().any(|&(k, d)| k == kind && d.len() + 2 == len);
    let mut mss = false;
    for o in tcp.options_iterator() {
        use etherparse::TcpOptionElement::*;
        match o.map_err(|e| format!("malformed option in the SYN-ACK: {e:?}"))? {
            MaximumSegmentSize(_) => mss = true,
            WindowScale(_) if !has(3, 3) => return Err("window scale offered to a SYN without one".into()),
            SelectiveAcknowledgementPermitted if !has(4, 2) => return Err("SACK-permitted offered to a SYN without it".into()),
            Timestamp(_, ecr) => {
                let echoes = theirs.iter().any(|&(k, d)| k == 8 && d.len() == 8 && be32(d, 0) == ecr);
                if !echoes {
                    return Err(format!("timestamps (echo {ecr:#x}) offered to a SYN without that TSval"));
                }
            }
            Noop | WindowScale(_) | SelectiveAcknowledgementPermitted => {}
            other => return Err(format!("unexpected option {other:?}")),
        }
    }
    if !mss {
        return Err("no MSS option".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The corpus.
// ---------------------------------------------------------------------------

/// A valid frame and what it is.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub frame: Vec<u8>,
}

fn addr_bytes4(a: IpAddr) -> [u8; 4] {
    match a {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => unreachable!(),
    }
}

fn addr_bytes16(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => unreachable!(),
    }
}

/// Ethernet with 0, 1 (802.1Q) or 2 (802.1ad outer, 802.1Q inner) tags.
fn link(vlans: usize, ip: IpHeaders) -> PacketBuilderStep<IpHeaders> {
    let eth = PacketBuilder::ethernet2(MAC_A, MAC_B);
    match vlans {
        0 => eth.ip(ip),
        1 => eth.single_vlan(VlanId::try_new(10).unwrap()).ip(ip),
        _ => eth.double_vlan(VlanId::try_new(100).unwrap(), VlanId::try_new(10).unwrap()).ip(ip),
    }
}

/// How the IP layer of a sample is built.
#[derive(Clone, Copy, Debug)]
enum IpShape {
    Plain,
    /// IPv4 options (NOPs, a record-route, EOL).
    V4Options,
    /// IPv4 first fragment (offset 0, more fragments).
    V4FirstFragment,
    /// IPv6 extension headers, by index into `v6_exts`.
    V6Exts(usize),
}

fn raw_ext(len8: usize) -> Ipv6RawExtHeader {
    // A PadN option filling the header (type 1, length).
    let mut payload = vec![0u8; 6 + 8 * len8];
    payload[0] = 1;
    payload[1] = (payload.len() - 2) as u8;
    Ipv6RawExtHeader::new_raw(IpNumber::TCP, &payload).unwrap()
}

/// IPv6 extension header chains: hop-by-hop, destination options, routing
/// (with final destination options), fragment (first), and all of them.
const V6_EXT_CHAINS: usize = 6;

fn v6_exts(i: usize) -> (Ipv6Extensions, bool) {
    let frag = || Some(Ipv6FragmentHeader::new(IpNumber::TCP, IpFragOffset::ZERO, true, 0x1234));
    let routing = |fin| Some(Ipv6RoutingExtensions { routing: raw_ext(0), final_destination_options: fin });
    let e = match i {
        0 => Ipv6Extensions { hop_by_hop_options: Some(raw_ext(0)), ..Default::default() },
        1 => Ipv6Extensions { destination_options: Some(raw_ext(1)), ..Default::default() },
        2 => Ipv6Extensions { routing: routing(Some(raw_ext(0))), ..Default::default() },
        3 => Ipv6Extensions { fragment: frag(), ..Default::default() },
        4 => Ipv6Extensions { hop_by_hop_options: Some(raw_ext(2)), fragment: frag(), ..Default::default() },
        _ => Ipv6Extensions {
            hop_by_hop_options: Some(raw_ext(0)),
            destination_options: Some(raw_ext(0)),
            routing: routing(Some(raw_ext(0))),
            fragment: frag(),
            auth: None,
        },
    };
    let has_fragment = e.fragment.is_some();
    (e, has_fragment)
}

/// etherparse 0.19 writes the IPv6 fragment header's offset/M word in its
/// own layout (M in bit 7 of the last byte); RFC 8200 puts the 13-bit
/// offset in the top bits and M in bit 0. Rewrites the word in place.
fn fix_v6_fragment(f: &mut [u8], l3: usize, offset_units: u16, more: bool) {
    let mut next = f[l3 + 6];
    let mut at = l3 + 40;
    while next != 44 {
        next = f[at];
        at += (f[at + 1] as usize + 1) * 8;
    }
    f[at + 2..at + 4].copy_from_slice(&((offset_units << 3) | u16::from(more)).to_be_bytes());
}

fn l3_offset(vlans: usize) -> usize {
    14 + 4 * vlans
}

fn ip_headers(src: IpAddr, dst: IpAddr, shape: IpShape) -> (IpHeaders, bool) {
    match src {
        IpAddr::V4(_) => {
            let mut h = Ipv4Header::new(0, 64, IpNumber::TCP, addr_bytes4(src), addr_bytes4(dst)).unwrap();
            match shape {
                IpShape::V4Options => h.options = [1u8, 1, 7, 7, 4, 0, 0, 0, 0, 0, 0, 0][..].try_into().unwrap(),
                IpShape::V4FirstFragment => h.more_fragments = true,
                _ => h.dont_fragment = true,
            }
            (IpHeaders::Ipv4(h, Default::default()), false)
        }
        IpAddr::V6(_) => {
            let h = Ipv6Header { source: addr_bytes16(src), destination: addr_bytes16(dst), hop_limit: 64, ..Default::default() };
            let (exts, frag) = match shape {
                IpShape::V6Exts(i) => v6_exts(i),
                _ => (Default::default(), false),
            };
            (IpHeaders::Ipv6(h, exts), frag)
        }
    }
}

/// TCP option lists (raw, before padding): every kind the brief lists, in
/// several orders, and edge cases (duplicates, kinds that alias a known
/// kind modulo 16, EOL followed by garbage, lengths that do not fit).
pub const TCP_OPTIONS: &[&[u8]] = &[
    &[],
    // Linux: MSS, SACK-permitted, timestamps, NOP, window scale.
    &[2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0, 1, 3, 3, 7],
    // Windows: MSS, NOP, window scale, NOP, NOP, SACK-permitted.
    &[2, 4, 0x05, 0xb4, 1, 3, 3, 8, 1, 1, 4, 2],
    // Reverse order: window scale, timestamps, SACK-permitted, MSS.
    &[3, 3, 14, 8, 10, 1, 2, 3, 4, 0, 0, 0, 0, 4, 2, 2, 4, 0x02, 0x18],
    // Timestamps only, NOP-aligned.
    &[1, 1, 8, 10, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0],
    // SACK blocks (one, then two).
    &[1, 1, 5, 10, 0, 0, 0x10, 0, 0, 0, 0x20, 0],
    &[1, 1, 5, 18, 0, 0, 0x10, 0, 0, 0, 0x20, 0, 0, 0, 0x30, 0, 0, 0, 0x40, 0],
    // TCP Fast Open: a cookie, then a cookie request.
    &[2, 4, 0x05, 0xb4, 34, 10, 1, 2, 3, 4, 5, 6, 7, 8],
    &[34, 2, 2, 4, 0x05, 0x78],
    // MD5 signature (kind 19, which aliases window scale modulo 16).
    &[19, 18, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 1, 1],
    // Unknown and experimental kinds, and kinds aliasing 2, 3, 4, 8 modulo 16.
    &[254, 4, 0xf9, 0x89, 99, 3, 1, 200, 2],
    &[18, 4, 0x01, 0x00, 19, 3, 9, 20, 2, 24, 10, 1, 2, 3, 4, 5, 6, 7, 8],
    // A full 40 bytes: MSS, SACK-permitted, timestamps, NOP, window scale, MD5.
    &[2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7, 19, 18, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 1, 1],
    // Duplicates.
    &[2, 4, 0x05, 0xb4, 2, 4, 0x02, 0x00, 3, 3, 2, 3, 3, 9],
    // EOL, then bytes that look like options.
    &[2, 4, 0x05, 0xb4, 0, 3, 3, 7, 4, 2, 8, 10],
    // Bad lengths: MSS of length 3, timestamps of length 9, length 0, 1, past the end.
    &[2, 3, 0x05, 3, 3, 7],
    &[8, 9, 1, 2, 3, 4, 5, 6, 7, 3, 3, 7],
    &[4, 2, 99, 0, 3, 3, 7],
    &[1, 4, 1, 3, 3, 7],
    &[2, 4, 0x05, 0xb4, 3, 40, 7],
    // Window scale above 14.
    &[3, 3, 200, 1],
];

fn tcp_with_options(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32, options: &[u8]) -> TcpHeader {
    let mut tcp = super::tcp_header(sport, dport, flags, seq, ack);
    let mut raw = options.to_vec();
    while raw.len() % 4 != 0 {
        raw.push(0);
    }
    tcp.set_options_raw(&raw).expect("options fit");
    tcp
}

/// What a sample carries above IP.
#[derive(Clone, Debug)]
enum Body {
    Tcp { dport: u16, flags: u8, options: usize, payload: usize },
    Udp { dport: u16 },
    Icmp { ty: u8, code: u8, quote: bool },
    /// A raw payload of this protocol.
    Raw { proto: u8, len: usize },
    /// A non-first fragment (offset in 8-byte units) of a TCP packet.
    Fragment { offset: u16 },
}

struct Builder {
    out: Vec<Sample>,
    /// Client ports: one per sample, so that samples do not share flows.
    port: u16,
}

impl Builder {
    fn add(&mut self, name: String, vlans: usize, src: IpAddr, dst: IpAddr, ip_shape: IpShape, body: Body) {
        self.port = self.port.wrapping_add(1).max(20000);
        let sport = self.port;
        let (mut ip, v6_frag) = ip_headers(src, dst, ip_shape);
        let l3 = l3_offset(vlans);
        let mut f = Vec::new();
        let seq = 0x1000_0000u32.wrapping_add(sport as u32 * 7919);
        match &body {
            Body::Tcp { dport, flags, options, payload } => {
                let tcp = tcp_with_options(sport, *dport, *flags, seq, if flags & ACK != 0 { 0x2000_0001 } else { 0 }, TCP_OPTIONS[*options]);
                link(vlans, ip).tcp_header(tcp).write(&mut f, &vec![b'x'; *payload]).unwrap();
            }
            Body::Udp { dport } => link(vlans, ip).udp(sport, *dport).write(&mut f, b"fuzz datagram").unwrap(),
            Body::Icmp { ty, code, quote } => {
                // An error quotes the start of a packet the server sent to this client.
                let payload = if *quote {
                    let mut q = Vec::new();
                    let (qip, _) = ip_headers(dst, src, IpShape::Plain);
                    PacketBuilder::ip(qip).tcp(22, sport, 1, 1000).ack(1).write(&mut q, &[]).unwrap();
                    q.truncate(q.len().min(48 + 8));
                    q
                } else if *ty == 13 {
                    // An ICMP timestamp request is 20 bytes.
                    vec![0; 12]
                } else {
                    b"abcdefghijklmnop".to_vec()
                };
                let icmpv6 = src.is_ipv6();
                let rest = [(sport >> 8) as u8, sport as u8, 0, 1];
                if icmpv6 {
                    link(vlans, ip).icmpv6_raw(*ty, *code, rest).write(&mut f, &payload).unwrap();
                } else {
                    link(vlans, ip).icmpv4_raw(*ty, *code, rest).write(&mut f, &payload).unwrap();
                }
            }
            Body::Raw { proto, len } => {
                let payload: Vec<u8> = (0..*len).map(|i| i as u8).collect();
                link(vlans, ip).write(&mut f, IpNumber(*proto), &payload).unwrap();
            }
            Body::Fragment { offset } => {
                if let IpHeaders::Ipv4(h, _) = &mut ip {
                    h.fragment_offset = IpFragOffset::try_new(*offset).unwrap();
                    h.dont_fragment = false;
                }
                if let IpHeaders::Ipv6(_, e) = &mut ip {
                    e.fragment = Some(Ipv6FragmentHeader::new(IpNumber::TCP, IpFragOffset::try_new(*offset).unwrap(), false, 0x1234));
                }
                link(vlans, ip).write(&mut f, IpNumber::TCP, &[0x55; 24]).unwrap();
                if src.is_ipv6() {
                    fix_v6_fragment(&mut f, l3, *offset, false);
                }
            }
        }
        if v6_frag {
            fix_v6_fragment(&mut f, l3, 0, true);
        }
        self.out.push(Sample { name, frame: f });
    }
}

/// The corpus: every sample is a valid frame (checked by `corpus_is_valid`).
pub fn corpus() -> Vec<Sample> {
    let mut b = Builder { out: Vec::new(), port: 20000 };
    let families: [(&[&str; 4], &str); 2] = [(&CLIENTS_V4, SERVER_V4), (&CLIENTS_V6, SERVER_V6)];
    for (clients, server) in families {
        let dst: IpAddr = server.parse().unwrap();
        for (ci, client) in clients.iter().enumerate() {
            let src: IpAddr = client.parse().unwrap();
            let v6 = src.is_ipv6();
            for vlans in 0..3 {
                let mut add = |what: &str, shape: IpShape, body: Body| {
                    b.add(format!("{what} {client} vlans={vlans} {shape:?}"), vlans, src, dst, shape, body);
                };
                let o = |i: usize| (ci * 3 + vlans + i) % TCP_OPTIONS.len();
                add("SYN :80", IpShape::Plain, Body::Tcp { dport: 80, flags: SYN, options: o(0), payload: 0 });
                add("SYN :80 ECN", IpShape::Plain, Body::Tcp { dport: 80, flags: SYN | ECE | CWR, options: o(1), payload: 0 });
                add("SYN :80 Fast Open data", IpShape::Plain, Body::Tcp { dport: 80, flags: SYN, options: 7, payload: 200 });
                add("SYN :22", IpShape::Plain, Body::Tcp { dport: 22, flags: SYN, options: o(2), payload: 0 });
                add("SYN :443", IpShape::Plain, Body::Tcp { dport: 443, flags: SYN, options: 1, payload: 0 });
                add("SYN-ACK :80", IpShape::Plain, Body::Tcp { dport: 80, flags: SYN | ACK, options: 1, payload: 0 });
                add("ACK :80", IpShape::Plain, Body::Tcp { dport: 80, flags: ACK, options: 4, payload: 0 });
                add("ACK :22 SACK", IpShape::Plain, Body::Tcp { dport: 22, flags: ACK, options: 6, payload: 0 });
                add("PSH-ACK :80 data", IpShape::Plain, Body::Tcp { dport: 80, flags: PSH | ACK, options: 0, payload: 100 });
                add("FIN-ACK :22", IpShape::Plain, Body::Tcp { dport: 22, flags: FIN | ACK, options: 0, payload: 0 });
                add("RST :22", IpShape::Plain, Body::Tcp { dport: 22, flags: RST, options: 0, payload: 0 });
                add("RST-ACK :80", IpShape::Plain, Body::Tcp { dport: 80, flags: RST | ACK, options: 0, payload: 0 });
                add("UDP :53", IpShape::Plain, Body::Udp { dport: 53 });
                add("UDP :137", IpShape::Plain, Body::Udp { dport: 137 });
                let (echo, reply, unreach, exceeded, other) = if v6 { (128, 129, 1, 3, 135) } else { (8, 0, 3, 11, 13) };
                add("ICMP echo request", IpShape::Plain, Body::Icmp { ty: echo, code: 0, quote: false });
                add("ICMP echo reply", IpShape::Plain, Body::Icmp { ty: reply, code: 0, quote: false });
                add("ICMP unreachable", IpShape::Plain, Body::Icmp { ty: unreach, code: if v6 { 4 } else { 3 }, quote: true });
                add("ICMP time exceeded", IpShape::Plain, Body::Icmp { ty: exceeded, code: 0, quote: true });
                add("ICMP other type", IpShape::Plain, Body::Icmp { ty: other, code: 0, quote: false });
                if v6 {
                    add("ICMPv6 packet too big", IpShape::Plain, Body::Icmp { ty: 2, code: 0, quote: true });
                    add("ICMPv6 MLD query", IpShape::Plain, Body::Icmp { ty: 130, code: 0, quote: false });
                }
                add("GRE", IpShape::Plain, Body::Raw { proto: 47, len: 24 });
                add("SCTP", IpShape::Plain, Body::Raw { proto: 132, len: 32 });
                add("non-first fragment", IpShape::Plain, Body::Fragment { offset: 185 });
                add("non-first fragment offset 1", IpShape::Plain, Body::Fragment { offset: 1 });
                if v6 {
                    add("no next header", IpShape::Plain, Body::Raw { proto: 59, len: 0 });
                    for chain in 0..V6_EXT_CHAINS {
                        add("SYN :80", IpShape::V6Exts(chain), Body::Tcp { dport: 80, flags: SYN, options: o(chain), payload: 0 });
                        add("ACK :22", IpShape::V6Exts(chain), Body::Tcp { dport: 22, flags: ACK, options: 0, payload: 10 });
                        add("UDP :53", IpShape::V6Exts(chain), Body::Udp { dport: 53 });
                    }
                } else {
                    add("SYN :80", IpShape::V4Options, Body::Tcp { dport: 80, flags: SYN, options: o(3), payload: 0 });
                    add("SYN :80 first fragment", IpShape::V4FirstFragment, Body::Tcp { dport: 80, flags: SYN, options: 1, payload: 0 });
                    add("UDP :53", IpShape::V4Options, Body::Udp { dport: 53 });
                    add("UDP :53 first fragment", IpShape::V4FirstFragment, Body::Udp { dport: 53 });
                }
            }
        }
        // Every option list on a SYN to the cookie service from an admitted client.
        let src: IpAddr = clients[0].parse().unwrap();
        for options in 0..TCP_OPTIONS.len() {
            for flags in [SYN, SYN | ECE | CWR, SYN | PSH | URG] {
                b.add(format!("SYN :80 options #{options} flags {flags:#x} {src}"), 0, src, dst, IpShape::Plain, Body::Tcp { dport: 80, flags, options, payload: 0 });
            }
        }
    }
    let mut out = b.out;
    // Not IP: ARP, LLDP; and a frame with three VLAN tags.
    let mut arp = Vec::new();
    let request = etherparse::ArpPacket::new(
        etherparse::ArpHardwareId::ETHERNET,
        etherparse::EtherType::IPV4,
        etherparse::ArpOperation::REQUEST,
        &MAC_A,
        &[192, 0, 2, 10],
        &[0; 6],
        &[10, 1, 0, 1],
    )
    .unwrap();
    PacketBuilder::ethernet2(MAC_A, MAC_B).arp(request).write(&mut arp).unwrap();
    out.push(Sample { name: "ARP request".into(), frame: arp });
    let mut lldp = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e, 2, 0, 0, 0, 0, 1, 0x88, 0xcc];
    lldp.extend_from_slice(&[2, 7, 4, 2, 0, 0, 0, 0, 1, 4, 4, 5, 0x65, 0x74, 0x68, 0x30, 6, 2, 0, 120, 0, 0]);
    out.push(Sample { name: "LLDP".into(), frame: lldp });
    let tagged = out.iter().find(|s| s.name.starts_with("SYN :80 192.0.2.10 vlans=2")).unwrap().frame.clone();
    // Outer 802.1ad tag, 802.1Q tag, then a third (802.1Q) before the EtherType.
    let mut triple = tagged[..20].to_vec();
    triple.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    triple.extend_from_slice(&tagged[20..]);
    out.push(Sample { name: "SYN :80 three VLAN tags".into(), frame: triple });
    out
}

/// One frame of a conversation: arriving (XDP, checked) or sent by the
/// host (TC egress, so that the connection table knows its replies).
#[derive(Clone, Debug)]
pub enum Step {
    In(Vec<u8>),
    Out(Vec<u8>),
}

fn segment(vlans: usize, src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8, seq: u32, ack: u32, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let (ip, _) = ip_headers(src, dst, IpShape::Plain);
    let mut f = Vec::new();
    link(vlans, ip).tcp_header(tcp_with_options(sport, dport, flags, seq, ack, options)).write(&mut f, payload).unwrap();
    f
}

/// Handshakes and exchanges with the host, whose SYN-ACKs, data and
/// replies go through TC egress: the run starts with them, and their
/// arriving segments join the mutation pool, so that mutations meet
/// established (and closing) TCP flows and replied UDP flows, not only
/// packets of no flow.
pub fn conversations() -> Vec<Vec<Step>> {
    let mut out = Vec::new();
    let mut port = 60000u16;
    for (clients, server) in [(&CLIENTS_V4, SERVER_V4), (&CLIENTS_V6, SERVER_V6)] {
        let host: IpAddr = server.parse().unwrap();
        for (ci, client) in clients.iter().enumerate() {
            let c: IpAddr = client.parse().unwrap();
            for vlans in [0, 2] {
                port += 1;
                let (isn, s_isn) = (0x0100_0000u32.wrapping_mul(port as u32), 0x7000_0000u32.wrapping_add(port as u32));
                let seg = |from_client: bool, flags, seq, ack, options: &[u8], payload: &[u8]| {
                    if from_client {
                        Step::In(segment(vlans, c, host, port, 22, flags, seq, ack, options, payload))
                    } else {
                        Step::Out(segment(vlans, host, c, 22, port, flags, seq, ack, options, payload))
                    }
                };
                let mut talk = vec![
                    seg(true, SYN, isn, 0, TCP_OPTIONS[1], b""),
                    seg(false, SYN | ACK, s_isn, isn + 1, &[2, 4, 5, 0xb4, 1, 3, 3, 7], b""),
                    seg(true, ACK, isn + 1, s_isn + 1, b"", b""),
                    seg(true, PSH | ACK, isn + 1, s_isn + 1, b"", &[b'q'; 100]),
                    seg(false, PSH | ACK, s_isn + 1, isn + 101, b"", &[b'r'; 300]),
                    seg(true, ACK, isn + 101, s_isn + 301, TCP_OPTIONS[5], b""),
                ];
                if (ci + vlans) % 2 == 1 {
                    talk.push(seg(true, FIN | ACK, isn + 101, s_isn + 301, b"", b""));
                }
                // A DNS exchange: the reply makes the flow established.
                let (ip, _) = ip_headers(c, host, IpShape::Plain);
                let mut query = Vec::new();
                link(vlans, ip).udp(port, 53).write(&mut query, b"query").unwrap();
                let (ip, _) = ip_headers(host, c, IpShape::Plain);
                let mut reply = Vec::new();
                link(vlans, ip).udp(53, port).write(&mut reply, b"answer").unwrap();
                // The client's ICMP error about the host's reply: related.
                let l3 = l3_offset(vlans);
                let quoted = &reply[l3..(l3 + if c.is_ipv4() { 28 } else { 48 }).min(reply.len())];
                let (ip, _) = ip_headers(c, host, IpShape::Plain);
                let mut error = Vec::new();
                if c.is_ipv4() {
                    link(vlans, ip).icmpv4_raw(3, 3, [0; 4]).write(&mut error, quoted).unwrap();
                } else {
                    link(vlans, ip).icmpv6_raw(1, 4, [0; 4]).write(&mut error, quoted).unwrap();
                }
                talk.extend([Step::In(query.clone()), Step::Out(reply), Step::In(query), Step::In(error)]);
                out.push(talk);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Mutations.
// ---------------------------------------------------------------------------

/// Where the length fields and options of a (valid) frame are.
#[derive(Clone, Debug, Default)]
struct Layout {
    vlan_tags: Vec<usize>,
    l3: usize,
    v4: bool,
    ext_headers: Vec<usize>,
    l4: Option<(usize, u8)>,
    tcp_options: Option<(usize, usize)>,
}

fn layout(f: &[u8]) -> Layout {
    let mut l = Layout::default();
    let mut at = 14;
    while at + 4 <= f.len() && matches!(be16(f, at - 2), 0x8100 | 0x88a8) && l.vlan_tags.len() < 3 {
        l.vlan_tags.push(at - 2);
        at += 4;
    }
    l.l3 = at;
    if let Shape::Ip(ip) = shape(f) {
        l.v4 = ip.src.is_ipv4();
        if !l.v4 {
            let mut next = f[ip.l3 + 6];
            let mut p = ip.l3 + 40;
            while matches!(next, 0 | 43 | 44 | 60) && p < ip.l4_at {
                l.ext_headers.push(p);
                let len = if next == 44 { 8 } else { (f[p + 1] as usize + 1) * 8 };
                next = f[p];
                p += len;
            }
        }
        let proto = match ip.l4 {
            L4::Tcp { header_len, .. } => {
                l.tcp_options = Some((ip.l4_at + 20, ip.l4_at + header_len));
                6
            }
            L4::Udp { .. } => 17,
            L4::Icmp { proto, .. } => proto,
            L4::Other(p) => p,
        };
        l.l4 = Some((ip.l4_at, proto));
    } else if f.len() >= at + 1 {
        l.v4 = f[at] >> 4 == 4;
    }
    l
}

/// Values a length or count field is set to.
fn interesting(r: &mut StdRng, old: u32, max: u32, frame_len: usize) -> u32 {
    let v = match r.random_range(0..12) {
        0 => 0,
        1 => 1,
        2 => max,
        3 => old.wrapping_add(1),
        4 => old.wrapping_sub(1),
        5 => old.wrapping_add(4),
        6 => old.wrapping_sub(4),
        7 => old.wrapping_add(8),
        8 => old.wrapping_sub(8),
        9 => frame_len as u32,
        10 => (frame_len as u32).wrapping_sub(14),
        _ => r.next_u32(),
    };
    v & max
}

fn put16(f: &mut [u8], at: usize, v: u16) {
    if at + 2 <= f.len() {
        f[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
}

/// Sets one length field (IHL, total length, payload length, extension
/// header length, next header, TCP data offset, UDP length, a VLAN
/// EtherType) to an interesting value.
fn mutate_length(f: &mut [u8], l: &Layout, r: &mut StdRng) {
    let n = f.len();
    let l3 = l.l3;
    match r.random_range(0..8) {
        0 if l.v4 && l3 < n => f[l3] = (f[l3] & 0xf0) | interesting(r, (f[l3] & 15) as u32, 15, n) as u8,
        1 if l.v4 && l3 + 4 <= n => {
            let v = interesting(r, be16(f, l3 + 2) as u32, 0xffff, n - l3);
            put16(f, l3 + 2, v as u16);
        }
        1 if l3 + 6 <= n => {
            let v = interesting(r, be16(f, l3 + 4) as u32, 0xffff, n.saturating_sub(l3 + 40));
            put16(f, l3 + 4, v as u16);
        }
        2 if !l.ext_headers.is_empty() => {
            let at = l.ext_headers[r.random_range(0..l.ext_headers.len())];
            if at + 2 <= n {
                if r.random_bool(0.5) {
                    f[at + 1] = interesting(r, f[at + 1] as u32, 0xff, n) as u8;
                } else {
                    f[at] = *[0u8, 43, 44, 60, 6, 17, 58, 59].get(r.random_range(0..8)).unwrap();
                }
            }
        }
        3 if l3 + 10 <= n => {
            // Next header / protocol.
            let at = if l.v4 { l3 + 9 } else { l3 + 6 };
            f[at] = *[0u8, 1, 6, 17, 43, 44, 58, 59, 60, 132].get(r.random_range(0..10)).unwrap();
        }
        4 | 5 => match l.l4 {
            Some((at, 6)) if at + 13 <= n => f[at + 12] = (interesting(r, (f[at + 12] >> 4) as u32, 15, n) as u8) << 4 | (f[at + 12] & 15),
            Some((at, 17)) if at + 6 <= n => put16(f, at + 4, interesting(r, be16(f, at + 4) as u32, 0xffff, n - at) as u16),
            _ => {}
        },
        6 if !l.vlan_tags.is_empty() => {
            let at = l.vlan_tags[r.random_range(0..l.vlan_tags.len())];
            let v = *[0x8100u16, 0x88a8, 0x9100, 0x0800, 0x86dd, 0x0806].get(r.random_range(0..6)).unwrap();
            put16(f, at + 4, v);
        }
        _ if l.v4 && l3 + 8 <= n => {
            // Fragment offset and flags.
            let v = *[0u16, 0x2000, 0x4000, 0x0001, 0x1fff, 0x20b9, r.random()].get(r.random_range(0..7)).unwrap();
            put16(f, l3 + 6, v);
        }
        _ => {}
    }
}

/// Rewrites bytes of the TCP options: single bytes, kind/length pairs,
/// or the whole area.
fn mutate_options(f: &mut [u8], l: &Layout, r: &mut StdRng) {
    let Some((start, end)) = l.tcp_options else { return };
    let end = end.min(f.len());
    if start >= end {
        // No options: grow the data offset over the payload instead.
        if let Some((at, 6)) = l.l4 {
            if at + 13 <= f.len() {
                f[at + 12] = (r.random_range(6..16u8)) << 4 | (f[at + 12] & 15);
            }
        }
        return;
    }
    const KINDS: [u8; 14] = [0, 1, 2, 3, 4, 5, 8, 19, 34, 18, 24, 30, 254, 255];
    match r.random_range(0..4) {
        0 => {
            for _ in 0..r.random_range(1..4) {
                let at = r.random_range(start..end);
                f[at] = if r.random_bool(0.5) { KINDS[r.random_range(0..KINDS.len())] } else { r.random() };
            }
        }
        1 => {
            let at = r.random_range(start..end);
            f[at] = KINDS[r.random_range(0..KINDS.len())];
            if at + 1 < end {
                f[at + 1] = *[0u8, 1, 2, 3, 4, 10, 18, 40, 255].get(r.random_range(0..9)).unwrap();
            }
        }
        2 => r.fill_bytes(&mut f[start..end]),
        _ => {
            // A well-formed option list of random known kinds.
            let mut at = start;
            while at < end {
                let kind = KINDS[r.random_range(0..KINDS.len())];
                let len: usize = match kind {
                    0 | 1 => 1,
                    2 | 18 => 4,
                    3 | 19 => 3,
                    4 | 30 => 2,
                    8 | 24 => 10,
                    _ => r.random_range(2..12),
                };
                for (i, byte) in f[at..end.min(at + len)].iter_mut().enumerate() {
                    *byte = match i {
                        0 => kind,
                        1 if len > 1 => len as u8,
                        _ => r.random(),
                    };
                }
                at += len;
            }
        }
    }
}

/// A frame of random bytes, mostly behind an IP or VLAN EtherType so that
/// it reaches the deeper parsers.
fn random_frame(r: &mut StdRng) -> Vec<u8> {
    let len = r.random_range(14..320);
    let mut f = vec![0u8; len];
    r.fill_bytes(&mut f);
    let ether_type = *[0x0800u16, 0x86dd, 0x8100, 0x88a8, 0x0806, r.random()].get(r.random_range(0..6)).unwrap();
    put16(&mut f, 12, ether_type);
    let mut l3 = 14;
    if matches!(ether_type, 0x8100 | 0x88a8) && len >= 22 {
        let inner = *[0x0800u16, 0x86dd, 0x8100].get(r.random_range(0..3)).unwrap();
        put16(&mut f, 16, inner);
        l3 = 18;
        if inner == 0x8100 && len >= 26 {
            put16(&mut f, 20, *[0x0800u16, 0x86dd].get(r.random_range(0..2)).unwrap());
            l3 = 22;
        }
    }
    // Half of them get a believable IP header start.
    if r.random_bool(0.5) && l3 + 40 <= len {
        let v4 = be16(&f, l3 - 2) == 0x0800;
        if v4 {
            f[l3] = 0x45;
            put16(&mut f, l3 + 2, (len - l3) as u16);
            put16(&mut f, l3 + 6, 0);
            f[l3 + 9] = *[6u8, 17, 1, 47].get(r.random_range(0..4)).unwrap();
        } else {
            f[l3] = 0x60;
            put16(&mut f, l3 + 4, (len - l3 - 40) as u16);
            f[l3 + 6] = *[6u8, 17, 58, 0, 60, 44].get(r.random_range(0..6)).unwrap();
        }
    }
    f
}

/// Addresses and ports the policy cares about.
fn retarget(f: &mut [u8], l: &Layout, r: &mut StdRng) {
    let n = f.len();
    match r.random_range(0..3) {
        0 => {
            // Source address from another client group.
            if l.v4 && l.l3 + 16 <= n {
                let c: Ipv4Addr = CLIENTS_V4[r.random_range(0..4)].parse().unwrap();
                f[l.l3 + 12..l.l3 + 16].copy_from_slice(&c.octets());
            } else if !l.v4 && l.l3 + 24 <= n {
                let c: Ipv6Addr = CLIENTS_V6[r.random_range(0..4)].parse().unwrap();
                f[l.l3 + 8..l.l3 + 24].copy_from_slice(&c.octets());
            }
        }
        1 => {
            if let Some((at, 6 | 17)) = l.l4 {
                let port = *[80u16, 22, 53, 443, 137, r.random()].get(r.random_range(0..6)).unwrap();
                put16(f, at + 2, port);
            }
        }
        _ => {
            // TCP flags.
            if let Some((at, 6)) = l.l4 {
                if at + 14 <= n {
                    f[at + 13] = *[SYN, SYN | ECE | CWR, SYN | PSH, SYN | URG, SYN | ACK, ACK, FIN | ACK, RST, SYN | FIN, 0, 0xff, r.random()]
                        .get(r.random_range(0..12))
                        .unwrap();
                }
            }
        }
    }
}

fn mutate(base: &[u8], r: &mut StdRng) -> (Vec<u8>, &'static str) {
    let mut f = base.to_vec();
    let l = layout(base);
    let op = r.random_range(0..100);
    let name = match op {
        0..25 => {
            for _ in 0..r.random_range(1..5) {
                let at = r.random_range(0..f.len());
                if r.random_bool(0.5) {
                    f[at] ^= 1 << r.random_range(0..8);
                } else {
                    f[at] = r.random();
                }
            }
            "byte flips"
        }
        25..45 => {
            mutate_length(&mut f, &l, r);
            "length fields"
        }
        45..65 => {
            mutate_options(&mut f, &l, r);
            "TCP option bytes"
        }
        65..80 => {
            retarget(&mut f, &l, r);
            "addresses, ports, flags"
        }
        80..88 => {
            f.truncate(r.random_range(14..=f.len()));
            mutate_length(&mut f, &l, r);
            "truncation and lengths"
        }
        88..92 => {
            let extra = r.random_range(1..64);
            f.extend((0..extra).map(|_| r.random::<u8>()));
            "trailing bytes"
        }
        _ => {
            // Two or three mutations in a row.
            for _ in 0..r.random_range(2..4) {
                match r.random_range(0..4) {
                    0 => mutate_length(&mut f, &l, r),
                    1 => mutate_options(&mut f, &l, r),
                    2 => retarget(&mut f, &l, r),
                    _ => {
                        let at = r.random_range(0..f.len());
                        f[at] = r.random();
                    }
                }
            }
            "stacked mutations"
        }
    };
    (f, name)
}

// ---------------------------------------------------------------------------
// The run.
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Violation {
    pub packet: u64,
    pub source: &'static str,
    pub invariant: &'static str,
    pub detail: String,
    pub hex: String,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub packets: u64,
    pub verdicts: BTreeMap<&'static str, u64>,
    pub reasons: BTreeMap<&'static str, u64>,
    pub sources: BTreeMap<&'static str, u64>,
    /// Packets the reference model judged, by class.
    pub judged: BTreeMap<&'static str, u64>,
    pub synacks_checked: u64,
    pub violation_count: u64,
    /// The first `MAX_RECORDED` violations.
    pub violations: Vec<Violation>,
    pub elapsed: Duration,
}

const MAX_RECORDED: usize = 50;

fn join(m: &BTreeMap<&'static str, u64>) -> String {
    m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

impl Summary {
    /// The one-line summary.
    pub fn line(&self) -> String {
        format!(
            "fuzz: {} packets in {:.1} s; verdicts {}; model-judged {}; SYN-ACKs checked {}; violations {}",
            self.packets,
            self.elapsed.as_secs_f64(),
            join(&self.verdicts),
            self.judged.values().sum::<u64>(),
            self.synacks_checked,
            self.violation_count
        )
    }

    /// Everything: sources, reasons, judged classes, the recorded violations.
    pub fn report(&self) -> String {
        let mut s = self.line();
        let _ = write!(s, "\n  sources: {}\n  reasons: {}\n  judged: {}", join(&self.sources), join(&self.reasons), join(&self.judged));
        for v in &self.violations {
            let _ = write!(s, "\n  VIOLATION #{} [{}] ({}): {}\n    {}", v.packet, v.invariant, v.source, v.detail, v.hex);
        }
        s
    }
}

/// The reason counters summed over CPUs, read straight from the map.
struct Reasons<'a> {
    map: PerCpuArray<&'a MapData, Counter>,
}

impl<'a> Reasons<'a> {
    fn new(h: &'a Harness) -> Self {
        let map = h.fw.ebpf.map(maps::REASON_COUNTERS).expect("reason counters map");
        Reasons { map: PerCpuArray::try_from(map).expect("per-CPU array") }
    }

    fn read(&self) -> [Counter; REASON_COUNT as usize] {
        let mut out = [Counter::default(); REASON_COUNT as usize];
        for (i, c) in out.iter_mut().enumerate() {
            let values = self.map.get(&(i as u32), 0).expect("reason counter readable");
            for v in values.iter() {
                c.packets += v.packets;
                c.bytes += v.bytes;
            }
        }
        out
    }
}

fn hex(f: &[u8]) -> String {
    f.iter().map(|b| format!("{b:02x}")).collect()
}

fn verdict_name(v: u32) -> &'static str {
    match v {
        XDP_ABORTED => "aborted",
        XDP_DROP => "drop",
        XDP_PASS => "pass",
        XDP_TX => "tx",
        _ => "other",
    }
}

struct Runner<'a> {
    h: &'a Harness,
    reasons: Reasons<'a>,
    last: [Counter; REASON_COUNT as usize],
    model: Model,
    summary: Summary,
}

impl Runner<'_> {
    fn violation(&mut self, source: &'static str, invariant: &'static str, detail: String, frame: &[u8]) {
        self.summary.violation_count += 1;
        if self.summary.violations.len() < MAX_RECORDED {
            self.summary.violations.push(Violation { packet: self.summary.packets, source, invariant, detail, hex: hex(frame) });
        }
    }

    /// Runs a frame the host sends through TC egress (never dropped).
    fn egress(&mut self, frame: &[u8]) {
        match self.h.fw.test_run_egress(frame) {
            Ok(r) if r.return_value == 0 => {}
            other => self.violation("conversation", "egress", format!("TC egress: {other:?}"), frame),
        }
        // Egress counts under its own reasons; start the next delta from here.
        self.last = self.reasons.read();
    }

    /// Runs one frame and checks every invariant.
    fn run(&mut self, frame: &[u8], source: &'static str) {
        let shape = shape(frame);
        if let Shape::Runt = shape {
            return;
        }
        self.summary.packets += 1;
        *self.summary.sources.entry(source).or_default() += 1;
        let (verdict, out) = match self.h.fw.test_run_output(frame) {
            Ok(r) => r,
            Err(e) => return self.violation(source, "runs", format!("BPF_PROG_TEST_RUN failed: {e:#}"), frame),
        };
        let now = self.reasons.read();
        *self.summary.verdicts.entry(verdict_name(verdict)).or_default() += 1;

        // 1. A verdict the firewall documents.
        if !matches!(verdict, XDP_DROP | XDP_PASS | XDP_TX) {
            self.violation(source, "1 verdict", format!("verdict {verdict} ({})", verdict_name(verdict)), frame);
        }

        // 4. Counted once, under one reason whose verdict is the one returned.
        let moved: Vec<(Reason, u64, u64)> = Reason::ALL
            .into_iter()
            .filter_map(|r| {
                let (a, b) = (now[r as usize], self.last[r as usize]);
                (a != b).then(|| (r, a.packets.wrapping_sub(b.packets), a.bytes.wrapping_sub(b.bytes)))
            })
            .collect();
        self.last = now;
        let reason = match moved[..] {
            [(r, 1, bytes)] if bytes == frame.len() as u64 => Some(r),
            _ => {
                self.violation(source, "4 counted once", format!("reason counters moved: {moved:?} (frame of {} bytes)", frame.len()), frame);
                None
            }
        };
        if let Some(r) = reason {
            *self.summary.reasons.entry(r.name()).or_default() += 1;
            let consistent = match verdict {
                XDP_TX => r == Reason::CookieSent,
                XDP_DROP => r.drops(),
                _ => !r.drops() && r != Reason::CookieSent,
            };
            let ingress = !matches!(
                r,
                Reason::EgressNew | Reason::EgressTracked | Reason::EgressUntracked | Reason::HandoffDone | Reason::HandoffNoListener | Reason::HandoffFailed
            );
            if !consistent || !ingress {
                self.violation(source, "4 counted once", format!("reason {} for verdict {}", r.name(), verdict_name(verdict)), frame);
            }
        }

        // 5. The reference model, where no state can matter.
        let expect = self.model.judge(&shape);
        if let Some(e) = expect {
            *self.summary.judged.entry(e.class).or_default() += 1;
            let reason_ok = reason.is_none_or(|r| e.reasons.contains(&r));
            if verdict != e.verdict || !reason_ok {
                let got = reason.map_or("?", |r| r.name());
                let want: Vec<_> = e.reasons.iter().map(|r| r.name()).collect();
                self.violation(
                    source,
                    "5 reference model",
                    format!("{} ({shape:?}): expected {} {want:?}, got {} {got}", e.class, verdict_name(e.verdict), verdict_name(verdict)),
                    frame,
                );
            }
        }

        // 2 and 3. XDP_TX only for a bare SYN to a cookie service the
        // policy admits, and then a correct SYN-ACK.
        if verdict == XDP_TX {
            let admitted = match &shape {
                Shape::Ip(ip) => match ip.l4 {
                    L4::Tcp { flags, .. } if bare_syn(flags) => first_match(&self.model.policy, ip)
                        .is_some_and(|r| r.action == Action::Accept && r.syncookie != Syncookie::Off && r.proto == Proto::Tcp),
                    _ => false,
                },
                _ => false,
            };
            // etherparse's own view of the input, where it can see TCP.
            let etherparse_view = SlicedPacket::from_ethernet(frame).ok().and_then(|p| match p.transport {
                Some(TransportSlice::Tcp(t)) => Some((t.syn(), t.ack(), t.rst(), t.fin(), t.destination_port())),
                _ => None,
            });
            let etherparse_ok = etherparse_view.is_none_or(|(syn, ack, rst, fin, dport)| syn && !ack && !rst && !fin && dport == 80);
            if !admitted || !etherparse_ok {
                self.violation(source, "2 TX only for admitted bare SYNs", format!("XDP_TX for {shape:?} (etherparse: {etherparse_view:?})"), frame);
            } else if let Shape::Ip(ip) = &shape {
                self.summary.synacks_checked += 1;
                if let Err(e) = check_synack(frame, ip, &out) {
                    self.violation(source, "3 SYN-ACK", format!("{e}; emitted {}", hex(&out)), frame);
                }
            }
        } else if out != frame {
            // 6. Passed and dropped frames are not rewritten.
            self.violation(source, "6 unchanged", format!("verdict {} but the frame changed to {}", verdict_name(verdict), hex(&out)), frame);
        }
    }
}

/// Runs `packets` frames (conversations with the host, the corpus, every
/// truncation of part of it, then mutations) through a freshly loaded firewall with `POLICY`.
pub fn run(packets: u64, seed: u64) -> Summary {
    let start = Instant::now();
    let policy = policy::parse(POLICY, "fuzz.toml").expect("fuzz policy parses");
    let h = harness();
    let reasons = Reasons::new(&h);
    let last = reasons.read();
    let mut runner = Runner { h: &h, reasons, last, model: Model::new(policy), summary: Summary::default() };
    let corpus = corpus();
    let mut r = StdRng::seed_from_u64(seed);

    // Conversations first; their arriving frames are mutated more often
    // than their share of the pool, to exercise the flows they left.
    let mut talked = Vec::new();
    for talk in conversations() {
        for step in talk {
            match step {
                Step::In(f) => {
                    runner.run(&f, "conversation");
                    talked.push(f);
                }
                Step::Out(f) => runner.egress(&f),
            }
        }
    }
    for s in &corpus {
        if runner.summary.packets >= packets {
            break;
        }
        runner.run(&s.frame, "corpus");
    }
    // Every truncation of a share of the corpus (a quarter of the budget).
    let total: usize = corpus.iter().map(|s| s.frame.len() - 14).sum();
    let every = (total as u64 * 4).div_ceil(packets.max(1)).max(1) as usize;
    for s in corpus.iter().skip(r.random_range(0..every)).step_by(every) {
        for len in (14..s.frame.len()).rev() {
            if runner.summary.packets >= packets {
                break;
            }
            runner.run(&s.frame[..len], "truncation");
        }
    }
    while runner.summary.packets < packets {
        if r.random_range(0..100) < 8 {
            runner.run(&random_frame(&mut r), "random frame");
        } else {
            let base = if r.random_range(0..100) < 15 { &talked[r.random_range(0..talked.len())] } else { &corpus[r.random_range(0..corpus.len())].frame };
            let (f, name) = mutate(base, &mut r);
            runner.run(&f, name);
        }
    }
    let mut summary = runner.summary;
    summary.elapsed = start.elapsed();
    summary
}
