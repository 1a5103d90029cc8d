//! Random but realistic policies and packets aimed at them, plus a
//! straightforward reference evaluation (a linear scan in rule order) to
//! check the compiled tree and the kernel against.

use std::{fmt::Write as _, net::{IpAddr, Ipv4Addr, Ipv6Addr}};

use firewall_user::policy::{Cidr, Policy, Proto, Rule};
use rand::{Rng, RngCore, SeedableRng, rngs::StdRng};

use super::L4;

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn v4_prefix(r: &mut StdRng) -> String {
    let len = *[8u8, 12, 16, 20, 24, 24, 28, 32, 32].get(r.random_range(0..9)).unwrap();
    let addr = 0x0a00_0000u32 | (r.next_u32() & 0x00ff_ffff);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    format!("{}/{len}", Ipv4Addr::from(addr & mask))
}

fn v6_prefix(r: &mut StdRng) -> String {
    let len = *[32u8, 48, 56, 64, 128].get(r.random_range(0..5)).unwrap();
    let addr = (0x2001_0db8u128 << 96) | (r.random::<u128>() >> 32);
    let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
    format!("{}/{len}", Ipv6Addr::from(addr & mask))
}

fn port_spec(r: &mut StdRng) -> String {
    match r.random_range(0..10) {
        0..6 => format!("{}", r.random_range(1..65535u16)),
        6..9 => {
            let lo = r.random_range(1..60000u16);
            format!("\"{lo}-{}\"", lo + r.random_range(0..2000))
        }
        _ => format!("[{}, \"{}-{}\"]", r.random_range(1..1024u16), 8000, 8000 + r.random_range(0..100u16)),
    }
}

/// A policy of `n` rules with mixed prefixes, ports and ranges.
pub fn policy_text(n: usize, seed: u64) -> String {
    let mut r = rng(seed);
    // `invalid = "rules"`: lone ACKs are matched by the rules, not dropped
    // as packets of no known flow, so the reference scan applies to all.
    let mut s = String::from("[settings]\ndefault = \"drop\"\ninvalid = \"rules\"\n");
    for i in 0..n {
        let _ = write!(s, "\n[[rule]]\nname = \"r{i}\"\n");
        let proto = match r.random_range(0..20) {
            0..9 => "tcp",
            9..16 => "udp",
            16..18 => "icmp",
            _ => "any",
        };
        let _ = writeln!(s, "proto = \"{proto}\"");
        let v6 = proto != "icmp" && r.random_range(0..10) == 0;
        // "any" without a narrow source would be a catch-all that shadows
        // every later rule; real policies scope such rules to a host or net.
        let src_choice = if proto == "any" { 9 } else { r.random_range(0..10) };
        if proto == "any" {
            let p = if v6 { "2001:db8:ffff::/48".to_string() } else { format!("10.{}.{}.0/24", r.random_range(0..256), r.random_range(0..256)) };
            let _ = writeln!(s, "src = \"{p}\"");
        }
        match src_choice {
            0..7 => {
                let p = if v6 { v6_prefix(&mut r) } else { v4_prefix(&mut r) };
                let _ = writeln!(s, "src = \"{p}\"");
            }
            7..9 => {
                let (a, b) = if v6 { (v6_prefix(&mut r), v6_prefix(&mut r)) } else { (v4_prefix(&mut r), v4_prefix(&mut r)) };
                let _ = writeln!(s, "src = [\"{a}\", \"{b}\"]");
            }
            _ => {}
        }
        if r.random_bool(0.4) {
            let p = if v6 { v6_prefix(&mut r) } else { v4_prefix(&mut r) };
            let _ = writeln!(s, "dst = \"{p}\"");
        }
        if proto == "tcp" || proto == "udp" {
            let _ = writeln!(s, "dport = {}", port_spec(&mut r));
            if r.random_bool(0.1) {
                let _ = writeln!(s, "sport = \"1024-65535\"");
            }
        }
        if proto == "tcp" && r.random_bool(0.1) {
            let _ = writeln!(s, "tcp_flags = \"syn,!ack\"");
        }
        if proto == "icmp" {
            let _ = writeln!(s, "icmp_type = {}", r.random_range(0..16));
        }
        let action = if r.random_bool(0.5) { "accept" } else { "drop" };
        let _ = writeln!(s, "action = \"{action}\"");
    }
    s
}

/// What the reference evaluation needs to know of a packet.
#[derive(Clone, Copy, Debug)]
pub struct Pkt {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
}

fn random_in(c: &Cidr, r: &mut StdRng) -> IpAddr {
    match c.addr {
        IpAddr::V4(a) => {
            let host = if c.prefix >= 32 { 0 } else { u32::MAX >> c.prefix };
            IpAddr::V4(Ipv4Addr::from((u32::from(a) & !host) | (r.next_u32() & host)))
        }
        IpAddr::V6(a) => {
            let host = if c.prefix >= 128 { 0 } else { u128::MAX >> c.prefix };
            IpAddr::V6(Ipv6Addr::from((u128::from(a) & !host) | (r.random::<u128>() & host)))
        }
    }
}

fn random_port(ranges: &[firewall_user::policy::PortRange], r: &mut StdRng) -> u16 {
    if ranges.is_empty() || r.random_bool(0.1) {
        return r.random_range(1..65535);
    }
    let p = ranges[r.random_range(0..ranges.len())];
    r.random_range(p.lo..=p.hi)
}

/// A packet inside a random rule (mostly), so that most rules get hit.
pub fn packet(policy: &Policy, r: &mut StdRng) -> Pkt {
    let rule = &policy.rules[r.random_range(0..policy.rules.len())];
    let v6 = rule.src.iter().chain(&rule.dst).any(|c| !c.is_v4());
    let any = |r: &mut StdRng| -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) | (r.random::<u128>() >> 32)))
        } else {
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (r.next_u32() & 0x00ff_ffff)))
        }
    };
    let pick = |list: &[Cidr], r: &mut StdRng| -> IpAddr {
        if list.is_empty() || r.random_bool(0.05) { any(r) } else { random_in(&list[r.random_range(0..list.len())], r) }
    };
    let src = pick(&rule.src, r);
    let dst = pick(&rule.dst, r);
    let (src, dst) = if src.is_ipv4() == dst.is_ipv4() { (src, dst) } else { (src, src) };
    let l4 = match rule.proto {
        Proto::Udp => L4::Udp { sport: random_port(&rule.sport, r), dport: random_port(&rule.dport, r) },
        Proto::Icmp | Proto::Icmpv6 => L4::Icmp { ty: rule.icmp_type.unwrap_or(r.random_range(0..20)), code: 0 },
        _ => {
            let flags = if r.random_bool(0.5) { 0x02 } else { 0x10 };
            L4::Tcp { sport: random_port(&rule.sport, r), dport: random_port(&rule.dport, r), flags }
        }
    };
    let l4 = match (l4, src) {
        (L4::Icmp { ty, code }, IpAddr::V6(_)) if rule.proto == Proto::Icmp => L4::Icmp { ty, code },
        (l4, _) => l4,
    };
    Pkt { src, dst, l4 }
}

fn contains(list: &[Cidr], a: IpAddr) -> bool {
    let width = if a.is_ipv4() { 32 } else { 128 };
    list.is_empty() || list.iter().any(|c| c.contains(&Cidr { addr: a, prefix: width }))
}

fn in_ports(list: &[firewall_user::policy::PortRange], p: u16) -> bool {
    list.is_empty() || list.iter().any(|r| r.lo <= p && p <= r.hi)
}

fn rule_matches(rule: &Rule, p: &Pkt) -> bool {
    let (proto, flags) = match p.l4 {
        L4::Tcp { flags, .. } => (6, flags),
        L4::Udp { .. } => (17, 0),
        L4::Icmp { .. } => (if p.src.is_ipv4() { 1 } else { 58 }, 0),
    };
    if rule.proto.number().is_some_and(|n| n != proto) {
        return false;
    }
    if !contains(&rule.src, p.src) || !contains(&rule.dst, p.dst) {
        return false;
    }
    if flags & rule.tcp_flags.mask != rule.tcp_flags.value {
        return false;
    }
    match p.l4 {
        L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport } => in_ports(&rule.sport, sport) && in_ports(&rule.dport, dport),
        L4::Icmp { ty, code } => rule.icmp_type.is_none_or(|t| t == ty) && rule.icmp_code.is_none_or(|c| c == code),
    }
}

/// Index of the first rule that matches, by a plain scan in rule order.
pub fn reference(policy: &Policy, p: &Pkt) -> Option<usize> {
    policy.rules.iter().position(|r| rule_matches(r, p))
}
