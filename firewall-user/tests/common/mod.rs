//! Helpers shared by the kernel tests: a loaded firewall with a policy,
//! and frames built with etherparse.
#![allow(dead_code)]

pub mod netns;
pub mod random;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::PacketBuilder;
use firewall_common::{Counter, Reason, maps};
use firewall_user::{compile, loader::Firewall, policy, stats};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

pub const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
pub const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

/// The real XDP program, loaded and verified, with a policy installed.
pub struct Harness {
    pub fw: Firewall,
}

impl Harness {
    pub fn new(policy_toml: &str) -> Self {
        let mut fw = Firewall::load().expect("the XDP program loads and verifies (run as root)");
        let compiled = compile_text(policy_toml);
        fw.install(&compiled).expect("policy installs");
        Self { fw }
    }

    pub fn install(&mut self, policy_toml: &str) {
        let compiled = compile_text(policy_toml);
        self.fw.install(&compiled).expect("policy installs");
    }

    /// The XDP verdict for one frame.
    pub fn verdict(&self, frame: &[u8]) -> u32 {
        self.fw.test_run(frame, 1).expect("BPF_PROG_TEST_RUN").return_value
    }

    pub fn snapshot(&self) -> stats::Snapshot {
        use aya::maps::{Array, PerCpuArray};
        let e = &self.fw.ebpf;
        let get = |name| e.map(name).unwrap_or_else(|| panic!("map {name}"));
        stats::snapshot(
            &Array::try_from(get(maps::ACTIVE)).unwrap(),
            &Array::try_from(get(maps::POLICY)).unwrap(),
            &Array::try_from(get(maps::RULE_META)).unwrap(),
            &PerCpuArray::try_from(get(maps::RULE_COUNTERS)).unwrap(),
            &PerCpuArray::try_from(get(maps::REASON_COUNTERS)).unwrap(),
        )
        .expect("counters readable")
    }

    pub fn reason(&self, reason: Reason) -> Counter {
        self.snapshot().reason(reason)
    }

    pub fn rule_packets(&self, name: &str) -> u64 {
        self.snapshot().rule(name).unwrap_or_else(|| panic!("rule {name} in stats")).packets
    }

    /// Runs `frame` and checks its verdict and that exactly one reason
    /// counter moved, by one packet and the frame's bytes: `reason`.
    pub fn expect(&self, frame: &[u8], verdict: u32, reason: Reason) {
        let before = self.snapshot();
        let got = self.verdict(frame);
        let after = self.snapshot();
        assert_eq!(got, verdict, "verdict for {reason:?} frame");
        for r in Reason::ALL {
            let (b, a) = (before.reason(r), after.reason(r));
            if r == reason {
                assert_eq!(a.packets, b.packets + 1, "{r:?} counted once");
                assert_eq!(a.bytes, b.bytes + frame.len() as u64, "{r:?} counts the frame's bytes");
            } else {
                assert_eq!(a, b, "{r:?} must not move for a {reason:?} frame");
            }
        }
    }
}

pub fn compile_text(policy_toml: &str) -> compile::Compiled {
    let policy = policy::parse(policy_toml, "test.toml").unwrap_or_else(|e| panic!("policy parses: {e}"));
    compile::compile(&policy).expect("policy compiles")
}

fn v4(a: IpAddr) -> [u8; 4] {
    match a {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => panic!("expected IPv4"),
    }
}
fn v6(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => panic!("expected IPv6"),
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

/// Transport part of a test frame.
#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Tcp { sport: u16, dport: u16, flags: u8 },
    Udp { sport: u16, dport: u16 },
    Icmp { ty: u8, code: u8 },
}

fn builder_ip(src: IpAddr, dst: IpAddr) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    let eth = PacketBuilder::ethernet2(MAC_A, MAC_B);
    match src {
        IpAddr::V4(_) => eth.ipv4(v4(src), v4(dst), 64),
        IpAddr::V6(_) => eth.ipv6(v6(src), v6(dst), 64),
    }
}

/// An Ethernet frame carrying `l4` from `src` to `dst` with `payload`.
pub fn frame(src: IpAddr, dst: IpAddr, l4: L4, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let ipb = builder_ip(src, dst);
    match l4 {
        L4::Tcp { sport, dport, flags } => {
            let mut tcp = etherparse::TcpHeader::new(sport, dport, 1000, 64240);
            tcp.fin = flags & 0x01 != 0;
            tcp.syn = flags & 0x02 != 0;
            tcp.rst = flags & 0x04 != 0;
            tcp.psh = flags & 0x08 != 0;
            tcp.ack = flags & 0x10 != 0;
            tcp.urg = flags & 0x20 != 0;
            tcp.ece = flags & 0x40 != 0;
            tcp.cwr = flags & 0x80 != 0;
            ipb.tcp_header(tcp).write(&mut out, payload).unwrap();
        }
        L4::Udp { sport, dport } => ipb.udp(sport, dport).write(&mut out, payload).unwrap(),
        L4::Icmp { ty, code } => match src {
            IpAddr::V4(_) => ipb.icmpv4_raw(ty, code, [0; 4]).write(&mut out, payload).unwrap(),
            IpAddr::V6(_) => ipb.icmpv6_raw(ty, code, [0; 4]).write(&mut out, payload).unwrap(),
        },
    }
    out
}

pub fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    frame(ip(src), ip(dst), L4::Tcp { sport, dport, flags }, b"")
}

pub fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    frame(ip(src), ip(dst), L4::Udp { sport, dport }, b"hello")
}

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

pub fn any_v4() -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 1)
}
pub fn any_v6() -> Ipv6Addr {
    "2001:db8::1".parse().unwrap()
}
