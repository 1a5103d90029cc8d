//! Helpers shared by the kernel tests: a loaded firewall with a policy,
//! and frames built with etherparse.
#![allow(dead_code)]

pub mod fuzz;
pub mod netns;
pub mod random;
pub mod soak;

use std::net::IpAddr;

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

/// The "host" addresses of the BPF_PROG_TEST_RUN tests: the servers that
/// cookie SYN-ACKs are sent for (`FW_LOCAL_ADDRS`).
pub const LOCAL_ADDRS: [&str; 5] = ["198.51.100.1", "2001:db8:1::1", "172.16.0.1", "192.0.2.1", "192.0.2.2"];

impl Harness {
    pub fn new(policy_toml: &str) -> Self {
        let mut fw = Firewall::load().expect("the XDP program loads and verifies (run as root)");
        let addrs: Vec<IpAddr> = LOCAL_ADDRS.iter().map(|a| ip(a)).collect();
        fw.set_local_addrs(&addrs).expect("local addresses written");
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

    /// Runs `frame` through the TC egress program (an outbound packet).
    pub fn egress(&self, frame: &[u8]) -> Reason {
        let (ret, reason) = self.one_reason(|| self.fw.test_run_egress(frame).expect("BPF_PROG_TEST_RUN (egress)").return_value);
        assert_eq!(ret, 0, "egress never drops (TC_ACT_OK)");
        reason
    }

    /// Runs `frame` through the XDP program: its verdict and the one
    /// reason counted for it.
    pub fn judged(&self, frame: &[u8]) -> (u32, Reason) {
        self.one_reason(|| self.verdict(frame))
    }

    /// What `run` returns, and the one reason counter it moved.
    fn one_reason(&self, run: impl FnOnce() -> u32) -> (u32, Reason) {
        let before = self.snapshot();
        let ret = run();
        let after = self.snapshot();
        let moved: Vec<Reason> = Reason::ALL.into_iter().filter(|&r| after.reason(r) != before.reason(r)).collect();
        assert_eq!(moved.len(), 1, "exactly one reason counted for a packet: {moved:?}");
        (ret, moved[0])
    }

    pub fn flows_map(&self, table: &str) -> aya::maps::HashMap<&aya::maps::MapData, firewall_common::FlowKey, firewall_common::Flow> {
        aya::maps::HashMap::try_from(self.fw.ebpf.map(table).expect("flows map")).expect("hash map")
    }

    /// The connection table (both tables), as `firewall conntrack` shows it.
    pub fn flows(&self) -> Vec<firewall_user::conntrack::Entry> {
        firewall_user::conntrack::list(&[&self.flows_map(maps::FLOWS), &self.flows_map(maps::REMOTE_FLOWS)]).expect("flows readable")
    }

    /// The main table's hint slots that disagree with it: (slot, hint,
    /// keys of the table in that slot). Without evictions, every insert
    /// and delete the data plane and the controller make keeps them equal.
    pub fn hint_mismatches(&self) -> Vec<(u32, u64, u64)> {
        let hints = self.fw.flow_hints().expect("flow hints mapped");
        let mut keys = std::collections::HashMap::<u32, u64>::new();
        for k in self.flows_map(maps::FLOWS).keys() {
            *keys.entry(firewall_common::flow_hint(&k.expect("key"))).or_default() += 1;
        }
        (0..firewall_common::FLOW_HINT_SLOTS)
            .map(|s| (s, hints.count(s), keys.get(&s).copied().unwrap_or(0)))
            .filter(|(_, hint, keys)| hint != keys)
            .collect()
    }

    /// How many flows each table holds: (main, remote).
    pub fn table_sizes(&self) -> (usize, usize) {
        (self.flows_map(maps::FLOWS).keys().count(), self.flows_map(maps::REMOTE_FLOWS).keys().count())
    }

    /// State of the one flow between these ports.
    pub fn flow_state(&self, port_a: u16, port_b: u16) -> Option<&'static str> {
        self.flows()
            .into_iter()
            .find(|e| (e.sport, e.dport) == (port_a, port_b) || (e.sport, e.dport) == (port_b, port_a))
            .map(|e| e.state)
    }

    /// Moves every flow's last-seen time `secs` into the past: time is
    /// driven through the map, not by sleeping.
    pub fn age_flows(&mut self, secs: u64) {
        for table in [maps::FLOWS, maps::REMOTE_FLOWS] {
            let mut map: aya::maps::HashMap<&mut aya::maps::MapData, firewall_common::FlowKey, firewall_common::Flow> =
                aya::maps::HashMap::try_from(self.fw.ebpf.map_mut(table).expect("flows map")).expect("hash map");
            let all: Vec<_> = map.iter().map(|r| r.expect("flow")).collect();
            for (k, mut f) in all {
                f.last_seen_ns = f.last_seen_ns.saturating_sub(secs * 1_000_000_000);
                f.created_ns = f.created_ns.saturating_sub(secs * 1_000_000_000);
                map.insert(&k, &f, 0).expect("flow updated");
            }
        }
    }

    pub fn snapshot(&self) -> stats::Snapshot {
        use aya::maps::{Array, PerCpuArray};
        let e = &self.fw.ebpf;
        let get = |name| e.map(name).unwrap_or_else(|| panic!("map {name}"));
        stats::snapshot(&stats::Sources {
            active: &Array::try_from(get(maps::ACTIVE)).unwrap(),
            policy: &Array::try_from(get(maps::POLICY)).unwrap(),
            rule_meta: &Array::try_from(get(maps::RULE_META)).unwrap(),
            rule_counters: &PerCpuArray::try_from(get(maps::RULE_COUNTERS)).unwrap(),
            rule_base: &Array::try_from(get(maps::RULE_BASE)).unwrap(),
            reason_counters: &PerCpuArray::try_from(get(maps::REASON_COUNTERS)).unwrap(),
            cookie_on: &Array::try_from(get(maps::COOKIE_ON)).unwrap(),
            cookie_counters: &PerCpuArray::try_from(get(maps::COOKIE_COUNTERS)).unwrap(),
            limit_counters: &PerCpuArray::try_from(get(maps::LIMIT_COUNTERS)).unwrap(),
        })
        .expect("counters readable")
    }

    pub fn reason(&self, reason: Reason) -> Counter {
        self.snapshot().reason(reason)
    }

    /// What rule `name`'s limits refused: (rate_limited, conn_limited).
    pub fn refused(&self, name: &str) -> (u64, u64) {
        let s = self.snapshot();
        let l = s.limit(name).unwrap_or_else(|| panic!("limited rule {name} in stats"));
        (l.rate_limited, l.conn_limited)
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
            ipb.tcp_header(tcp_header(sport, dport, flags, 1000, 0)).write(&mut out, payload).unwrap();
        }
        L4::Udp { sport, dport } => ipb.udp(sport, dport).write(&mut out, payload).unwrap(),
        L4::Icmp { ty, code } => match src {
            IpAddr::V4(_) => ipb.icmpv4_raw(ty, code, [0; 4]).write(&mut out, payload).unwrap(),
            IpAddr::V6(_) => ipb.icmpv6_raw(ty, code, [0; 4]).write(&mut out, payload).unwrap(),
        },
    }
    out
}

/// A TCP segment with explicit sequence and acknowledgment numbers.
pub fn seg(src: &str, dst: &str, sport: u16, dport: u16, flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    builder_ip(ip(src), ip(dst)).tcp_header(tcp_header(sport, dport, flags, seq, ack)).write(&mut out, payload).unwrap();
    out
}

/// A TCP header with the flag bits of `flags` (as in byte 13 on the wire).
pub fn tcp_header(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> etherparse::TcpHeader {
    let mut tcp = etherparse::TcpHeader::new(sport, dport, seq, 64240);
    tcp.acknowledgment_number = ack;
    tcp.fin = flags & FIN != 0;
    tcp.syn = flags & SYN != 0;
    tcp.rst = flags & RST != 0;
    tcp.psh = flags & PSH != 0;
    tcp.ack = flags & ACK != 0;
    tcp.urg = flags & URG != 0;
    tcp.ece = flags & ECE != 0;
    tcp.cwr = flags & CWR != 0;
    tcp
}

pub fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    frame(ip(src), ip(dst), L4::Tcp { sport, dport, flags }, b"")
}

pub fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    frame(ip(src), ip(dst), L4::Udp { sport, dport }, b"hello")
}

pub use firewall_common::tcp_flags::*;

/// `text` written to `policy.toml` in a fresh directory, removed when the
/// returned guard drops.
pub fn temp_policy(text: &str) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new();
    let path = dir.0.join("policy.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// A directory under the system's temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("fw-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The output of a `firewall ... --json` command, or its stderr.
pub fn json_output(out: std::process::Output) -> Result<serde_json::Value, String> {
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// A rule's packets in `firewall stats --json`.
pub fn rule_packets(stats: &serde_json::Value, name: &str) -> u64 {
    stats["rules"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("rule {name} in {stats}"))["packets"].as_u64().unwrap()
}

/// A reason's packets in `firewall stats --json`.
pub fn reason_packets(stats: &serde_json::Value, reason: &str) -> u64 {
    stats["reasons"].as_array().unwrap().iter().find(|r| r["reason"] == reason).unwrap_or_else(|| panic!("reason {reason} in {stats}"))["packets"].as_u64().unwrap()
}

/// What the event ring holds, emptied.
pub fn drain_events(h: &Harness) -> Vec<firewall_common::Event> {
    use firewall_common::Event;
    let map = h.fw.ebpf.map(firewall_common::maps::EVENTS).expect("events map");
    let aya::maps::Map::RingBuf(data) = map else { panic!("not a ring buffer") };
    let data = aya::maps::MapData::from_id(data.info().unwrap().id()).unwrap();
    let mut ring = aya::maps::RingBuf::try_from(aya::maps::Map::RingBuf(data)).unwrap();
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), std::mem::size_of::<Event>());
        // SAFETY: the program writes whole `Event`s.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
    }
    out
}

/// Keeps this test thread on CPU 0: the event samplers and windows are per CPU.
pub fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t with one CPU set, for this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0);
    }
}
