//! The soak engine: the real `firewall run` binary attached (native XDP)
//! to the server's end of a veth pair, with a policy whose only service is
//! an `always` SYN-cookie port and a default drop, under three loads at once
//! for a bounded time:
//! - a spoofed SYN flood at the generator's full rate: BPF_PROG_TEST_RUN
//!   live frames of the bench object's `bench_gen` (sources in
//!   10.99.0.0/16), XDP_TX out of the client's veth into the server's end,
//!   as `cargo xtask bench` drives it (`examples/rates`);
//! - a forged-ACK flood from AF_PACKET: ACK flag only, random source in
//!   10.98.0.0/16 (which the rule admits), ports, sequence and
//!   acknowledgment numbers, so each one is walked through the rules and
//!   checked with SipHash, and fails (`acks_invalid`);
//! - legitimate clients: `CLIENTS` threads in the client namespace, each
//!   looping connect (with a timeout), send a payload, read its echo, close,
//!   against a real listener in the server namespace. Nothing is retried:
//!   a connection that fails counts as a failure.
//!
//! The client's veth gets a qdisc (pfifo). A veth has none by default, so
//! a packet that finds the peer's ring full is dropped; with one, veth
//! stops its queue and the packet waits. The floods keep that ring full,
//! and without the qdisc the clients' packets were dropped at their own
//! egress, behind the attacker's frames (on this 2-CPU VM: 61 SYN
//! retransmissions and a 3.3 s connection in 15 s; with it, none and
//! 156 ms), which a real client does not share a queue with. The
//! AF_PACKET ACKs queue there too; the SYN flood (XDP_TX) bypasses qdiscs
//! and reaches the server's ring at the generator's full rate.
//!
//! Before and after: the firewall's counters (`firewall stats --json`),
//! its connection table (`firewall conntrack --json`, entries with an
//! endpoint in the flood ranges), the controller's VmRSS, and the server's
//! kernel counters. `run` returns a [`Summary`]; `tests/soak.rs` runs it
//! for seconds, `cargo xtask soak --secs N` (`examples/soak.rs`) for longer.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use aya::maps::PerCpuArray;
use firewall_common::maps::bench;
use serde_json::Value;

use super::netns::{BENCH_OBJECT, Guarded, LiveFrames, OnDrop, PacketSocket, Pair, attach_xdp, mac, netstat, wait_for};


/// The cookie service's port.
pub const PORT: u16 = 8080;
/// Sources of the spoofed SYNs (the bench generator's range).
pub const SYN_NET: [u8; 2] = bench::SPOOF_NET;
/// Sources of the forged ACKs.
pub const ACK_NET: [u8; 2] = [10, 98];
/// Legitimate client threads.
pub const CLIENTS: usize = 8;
/// Server addresses each client cycles through: with one TIME-WAIT socket
/// per connection for 60 s, 32 destinations of 64,512 source ports each
/// last 60 s at over 30,000 connections per second, so no 4-tuple is
/// reused within a soak.
pub const ADDRS_PER_CLIENT: usize = 4;
/// Bytes each legitimate client sends and expects back.
pub const PAYLOAD: usize = 64;
/// A connect that takes longer fails (the kernel's own SYN retransmissions,
/// after 1 s and 3 s, happen inside it; the test retries nothing).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
/// Read and write timeout of a connected socket, both sides.
pub const IO_TIMEOUT: Duration = Duration::from_secs(4);
/// The controller's RSS may grow by less than this over a soak.
pub const RSS_GROWTH_LIMIT_KIB: i64 = 16 * 1024;
/// Frames per second at most from each generator (with the duration, the
/// packet bound of each flood; both are far above what two CPUs reach).
const MAX_SYN_RATE: u64 = 10_000_000;
const MAX_ACK_RATE: u64 = 5_000_000;
/// Frames per BPF_PROG_TEST_RUN call of the SYN generator: small enough
/// to stop on time.
const CHUNK: u32 = 1 << 15;

/// The policy: one `always` cookie service that admits both flood ranges
/// and the clients (so every forged ACK is checked), and a default drop.
pub const POLICY: &str = r#"
[settings]
default = "drop"

[[rule]]
name = "soak"
proto = "tcp"
src = "10.0.0.0/8"
dport = 8080
action = "accept"
syncookie = "always"
"#;

/// Kernel counters of the server namespace (TcpExt) that show whether its
/// stack saw the flood (it must not: the firewall answers every SYN).
const SERVER_NETSTAT: [&str; 7] =
    ["SyncookiesSent", "SyncookiesRecv", "SyncookiesFailed", "ListenOverflows", "ListenDrops", "TCPReqQFullDoCookies", "TCPReqQFullDrop"];
/// Client-side TcpExt counters: how often the legitimate clients had to
/// retransmit (the kernel's own retransmissions, not test retries).
const CLIENT_NETSTAT: [&str; 3] = ["TCPSynRetrans", "TCPTimeouts", "TCPLostRetransmit"];
/// Reasons reported (their packet counts, moved during the soak).
const REASONS: [&str; 10] = [
    "cookie_sent",
    "cookie_valid",
    "cookie_invalid",
    "cookie_not_admitted",
    "cookie_fallback",
    "handoff_done",
    "handoff_no_listener",
    "handoff_failed",
    "established",
    "default_drop",
];

/// What one soak did and measured.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub requested_secs: f64,
    /// From the start of the loads until the last of them stopped.
    pub elapsed_secs: f64,
    pub syn_sent: u64,
    pub syn_secs: f64,
    /// SYN-ACKs to the spoofed sources that came back to the client's end.
    pub synacks_at_client: u64,
    pub acks_sent: u64,
    pub ack_secs: f64,
    pub attempted: u64,
    pub completed: u64,
    /// Failures by stage and error.
    pub failures: BTreeMap<String, u64>,
    /// Per completed connection (connect to echo read), ms: p50, p99, max.
    pub latency_ms: (f64, f64, f64),
    /// Connections the server echoed.
    pub served: u64,
    pub flows_before: usize,
    pub flows_after: usize,
    /// Entries with an endpoint in a flood range (10.99/16, 10.98/16).
    pub flood_flows_before: usize,
    pub flood_flows_after: usize,
    /// The cookie service's counters, moved during the soak.
    pub syns: u64,
    pub cookies_sent: u64,
    pub acks_valid: u64,
    pub acks_invalid: u64,
    pub reasons: Vec<(String, u64)>,
    pub server_netstat: Vec<(String, u64)>,
    pub client_netstat: Vec<(String, u64)>,
    /// Frames the veth dropped during the soak (`ip -s link`): at the
    /// client's end (transmit) and the server's (receive: its ring was full).
    pub client_tx_dropped: u64,
    pub server_rx_dropped: u64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub rss_max_kib: u64,
    /// The controller ran through the soak and answered `stats` after it.
    pub controller_alive: bool,
    /// How it exited on SIGTERM at the end.
    pub controller_exit: String,
}

impl Summary {
    /// Valid cookie ACKs beyond the legitimate clients' handshakes.
    pub fn forged_acks_validated(&self) -> u64 {
        self.acks_valid.saturating_sub(self.completed)
    }

    pub fn rss_growth_kib(&self) -> i64 {
        self.rss_after_kib as i64 - self.rss_before_kib as i64
    }

    /// The goals the soak did not meet (empty: all met).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.attempted == 0 {
            p.push("no legitimate connection was attempted".into());
        }
        if self.completed != self.attempted {
            p.push(format!("{} of {} legitimate connections failed", self.attempted - self.completed, self.attempted));
        }
        // A forged ACK without timestamps passes the MAC with odds 2^-29
        // (the kernel's own cookies: the same): a run of millions may see
        // one. Each such flow must be one of those, and there may be few.
        let forged_valid = self.forged_acks_validated();
        if self.flood_flows_after as u64 > forged_valid {
            p.push(format!("{} flows from the flood ranges in the table, {forged_valid} forged ACKs validated", self.flood_flows_after));
        }
        if forged_valid > 2 {
            p.push(format!("{forged_valid} forged ACKs validated: more than odds of 2^-29 each allow"));
        }
        if self.rss_growth_kib() >= RSS_GROWTH_LIMIT_KIB {
            p.push(format!("the controller's RSS grew by {} KiB", self.rss_growth_kib()));
        }
        if !self.controller_alive {
            p.push("the controller did not survive the soak".into());
        }
        p
    }

    pub fn report(&self) -> String {
        let mut s = String::new();
        let rate = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let _ = writeln!(s, "soak: {:.1} s requested, loads ran {:.2} s", self.requested_secs, self.elapsed_secs);
        let _ = writeln!(
            s,
            "  SYN flood (bench_gen live frames, sources 10.99.0.0/16): {} frames in {:.2} s = {:.0}/s offered; firewall saw {} SYNs ({:.0}/s), sent {} cookie SYN-ACKs; {} came back to the client's end",
            self.syn_sent,
            self.syn_secs,
            rate(self.syn_sent, self.syn_secs),
            self.syns,
            rate(self.syns, self.elapsed_secs),
            self.cookies_sent,
            self.synacks_at_client
        );
        let _ = writeln!(
            s,
            "  forged ACKs (AF_PACKET, sources 10.98.0.0/16, random ports/seq/ack): {} sent in {:.2} s = {:.0}/s; the service counted {} invalid cookie ACKs; validated beyond the clients' handshakes: {}",
            self.acks_sent,
            self.ack_secs,
            rate(self.acks_sent, self.ack_secs),
            self.acks_invalid,
            self.forged_acks_validated()
        );
        let _ = writeln!(
            s,
            "  legitimate ({CLIENTS} clients, {PAYLOAD}-byte echo, connect timeout {} s, no retries): {} attempted, {} completed ({:.0}/s), {} valid cookie ACKs, server echoed {}; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            CONNECT_TIMEOUT.as_secs(),
            self.attempted,
            self.completed,
            rate(self.completed, self.elapsed_secs),
            self.acks_valid,
            self.served,
            self.latency_ms.0,
            self.latency_ms.1,
            self.latency_ms.2
        );
        for (what, n) in &self.failures {
            let _ = writeln!(s, "    failed: {n} × {what}");
        }
        let _ = writeln!(
            s,
            "  connection table: {} flows before, {} after; from the flood ranges: {} before, {} after",
            self.flows_before, self.flows_after, self.flood_flows_before, self.flood_flows_after
        );
        let join = |v: &[(String, u64)]| v.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(s, "  firewall reasons moved: {}", join(&self.reasons));
        let _ = writeln!(s, "  server kernel (TcpExt) moved: {}", join(&self.server_netstat));
        let _ = writeln!(s, "  client kernel (TcpExt) moved: {}", join(&self.client_netstat));
        let _ = writeln!(s, "  veth drops: client end tx {}, server end rx {}", self.client_tx_dropped, self.server_rx_dropped);
        let _ = writeln!(
            s,
            "  controller VmRSS: {} KiB before, {} KiB after ({:+} KiB), {} KiB at most during; alive after: {}; on SIGTERM: {}",
            self.rss_before_kib,
            self.rss_after_kib,
            self.rss_growth_kib(),
            self.rss_max_kib,
            if self.controller_alive { "yes" } else { "NO" },
            self.controller_exit
        );
        let problems = self.problems();
        if problems.is_empty() {
            let _ = writeln!(s, "  goals: all met");
        } else {
            let _ = writeln!(s, "  goals NOT met: {}", problems.join("; "));
        }
        s
    }
}

fn sh(ns: &str, program: &str, args: &[&str]) {
    let out = Pair::output(ns, program, args);
    assert!(out.status.success(), "{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

fn stats_json(firewall: &Path, pair: &Pair) -> Result<Value, String> {
    let out = Pair::output(&pair.server, firewall.to_str().unwrap(), &["stats", "--iface", &pair.server_if, "--json"]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// One entry of `firewall conntrack --json` (the fields used here).
#[derive(serde::Deserialize)]
struct FlowEntry {
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
}

fn in_flood_range(a: std::net::IpAddr) -> bool {
    match a {
        std::net::IpAddr::V4(a) => {
            let o = a.octets();
            [o[0], o[1]] == SYN_NET || [o[0], o[1]] == ACK_NET
        }
        std::net::IpAddr::V6(_) => false,
    }
}

/// (flows, flows with an endpoint in a flood range).
fn flows(firewall: &Path, pair: &Pair) -> (usize, usize) {
    let out = Pair::output(&pair.server, firewall.to_str().unwrap(), &["conntrack", "--iface", &pair.server_if, "--json"]);
    assert!(out.status.success(), "firewall conntrack: {}", String::from_utf8_lossy(&out.stderr));
    let entries: Vec<FlowEntry> = serde_json::from_slice(&out.stdout).expect("conntrack --json is a list of flows");
    (entries.len(), entries.iter().filter(|e| in_flood_range(e.src) || in_flood_range(e.dst)).count())
}

fn service_counter(stats: &Value, field: &str) -> u64 {
    let svc = stats["services"].as_array().and_then(|a| a.iter().find(|s| s["name"] == "soak"));
    svc.unwrap_or_else(|| panic!("service soak in {stats}"))[field].as_u64().unwrap()
}

fn reason_packets(stats: &Value, reason: &str) -> u64 {
    stats["reasons"].as_array().and_then(|a| a.iter().find(|r| r["reason"] == reason)).map_or(0, |r| r["packets"].as_u64().unwrap())
}

/// VmRSS of `pid` in KiB (None once it is gone).
fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    if status.lines().any(|l| l.starts_with("State:") && l.contains("zombie")) {
        return None;
    }
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// (rx dropped, tx dropped) of `ifname` in `ns`.
fn link_drops(ns: &str, ifname: &str) -> (u64, u64) {
    let out = Pair::output(ns, "ip", &["-s", "-j", "link", "show", "dev", ifname]);
    assert!(out.status.success(), "ip -s link: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j prints JSON");
    let s = &v[0]["stats64"];
    (s["rx"]["dropped"].as_u64().unwrap_or(0), s["tx"]["dropped"].as_u64().unwrap_or(0))
}

fn ipv4(s: &str) -> [u8; 4] {
    s.parse::<Ipv4Addr>().unwrap().octets()
}

/// A Linux-like SYN (MSS, SACK-permitted, timestamps, window scale) from
/// the spoofed range to the server: `bench_gen`'s template.
fn syn_template(pair: &Pair, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<u8> {
    use etherparse::TcpOptionElement::*;
    let mut tcp = etherparse::TcpHeader::new(40000, PORT, 0x1234_5678, 64240);
    tcp.syn = true;
    tcp.set_options(&[MaximumSegmentSize(1460), SelectiveAcknowledgementPermitted, Timestamp(1, 0), Noop, WindowScale(7)]).unwrap();
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4([SYN_NET[0], SYN_NET[1], 0, 1], ipv4(&pair.server_ip), 64)
        .tcp_header(tcp)
        .write(&mut out, &[])
        .unwrap();
    out
}

/// The SYN flood: `bench_gen` run in live-frames mode on the client's
/// veth (each frame gets a new source, then XDP_TX into the server's end)
/// until `deadline`, `stop` or `max` frames. Returns (frames, seconds).
fn syn_flood(pair: &Pair, frame: Vec<u8>, deadline: Instant, max: u64, stop: Arc<AtomicBool>) -> thread::JoinHandle<(u64, f64)> {
    let ifname = pair.client_if.clone();
    Pair::within(&pair.client, move || {
        let mut generator = LiveFrames::new(&ifname, frame);
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < max && Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            let chunk = CHUNK.min((max - sent) as u32);
            generator.send(chunk);
            sent += u64::from(chunk);
        }
        (sent, start.elapsed().as_secs_f64())
    })
}

/// The forged-ACK flood: from the client's end with AF_PACKET, each frame
/// from a random source in `ACK_NET` and port, with random sequence and
/// acknowledgment numbers, ACK flag only, correct checksums; until
/// `deadline`, `stop` or `max` frames. Returns (frames, seconds).
fn ack_flood(pair: &Pair, src_mac: [u8; 6], dst_mac: [u8; 6], deadline: Instant, max: u64, stop: Arc<AtomicBool>) -> thread::JoinHandle<(u64, f64)> {
    use rand::{RngCore as _, SeedableRng as _};
    let server = ipv4(&pair.server_ip);
    let ifname = pair.client_if.clone();
    Pair::within(&pair.client, move || {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x50a6);
        let socket = PacketSocket::open(&ifname);
        let start = Instant::now();
        let mut sent = 0u64;
        let mut out = Vec::with_capacity(64);
        while sent < max && !stop.load(Ordering::Relaxed) {
            // The clock is read every 64 frames.
            if sent % 64 == 0 && Instant::now() >= deadline {
                break;
            }
            let r = rng.next_u64();
            let src = [ACK_NET[0], ACK_NET[1], (r >> 8) as u8, r as u8];
            let mut tcp = etherparse::TcpHeader::new(1024 + ((r >> 16) % 64000) as u16, PORT, rng.next_u32(), 64240);
            tcp.ack = true;
            tcp.acknowledgment_number = rng.next_u32();
            out.clear();
            etherparse::PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src, server, 64).tcp_header(tcp).write(&mut out, &[]).unwrap();
            if socket.send(&out) {
                sent += 1;
            }
        }
        (sent, start.elapsed().as_secs_f64())
    })
}

/// What one legitimate client thread saw.
#[derive(Default)]
struct ClientResult {
    attempted: u64,
    completed: u64,
    failures: BTreeMap<String, u64>,
    latency_us: Vec<u32>,
}

/// One connection: connect, send the payload, read it back, close.
fn one_connection(server: SocketAddr, payload: &[u8]) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&server, CONNECT_TIMEOUT).map_err(|e| format!("connect: {}", e.kind()))?;
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(payload).map_err(|e| format!("write: {}", e.kind()))?;
    let mut echo = vec![0u8; payload.len()];
    s.read_exact(&mut echo).map_err(|e| format!("read: {}", e.kind()))?;
    if echo != payload {
        return Err("echo differs from the payload".into());
    }
    Ok(())
}

fn client(ns: &str, id: usize, servers: Vec<SocketAddr>, deadline: Instant, stop: Arc<AtomicBool>) -> thread::JoinHandle<ClientResult> {
    Pair::within(ns, move || {
        let mut r = ClientResult::default();
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            let mut payload = format!("soak client {id} connection {} ", r.attempted).into_bytes();
            payload.resize(PAYLOAD, b'.');
            let server = servers[r.attempted as usize % servers.len()];
            r.attempted += 1;
            let t = Instant::now();
            match one_connection(server, &payload) {
                Ok(()) => {
                    r.completed += 1;
                    r.latency_us.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
                Err(e) => *r.failures.entry(e).or_default() += 1,
            }
        }
        r
    })
}

/// The echo server: `threads` acceptors on one listener (0.0.0.0:PORT in
/// the server namespace); each reads the payload, echoes it and waits for
/// the client's close. They stop when `stop` is set.
fn start_server(pair: &Pair, threads: usize, stop: Arc<AtomicBool>, served: Arc<AtomicU64>) -> Vec<thread::JoinHandle<()>> {
    let listener = Pair::within(&pair.server, || TcpListener::bind(("0.0.0.0", PORT)).expect("bind the listener")).join().unwrap();
    // SAFETY: our own socket; a larger backlog, and accept() gives up
    // every 200 ms (SO_RCVTIMEO) so the acceptors see `stop`.
    unsafe {
        assert_eq!(libc::listen(listener.as_raw_fd(), 4096), 0);
        let tv = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
        let rc = libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        );
        assert_eq!(rc, 0);
    }
    let listener = Arc::new(listener);
    (0..threads)
        .map(|_| {
            let (listener, stop, served) = (listener.clone(), stop.clone(), served.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut conn, _)) = listener.accept() else { continue };
                    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
                    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
                    let mut buf = [0u8; PAYLOAD];
                    if conn.read_exact(&mut buf).is_ok() && conn.write_all(&buf).is_ok() {
                        served.fetch_add(1, Ordering::Relaxed);
                        // Until the client closes (its side keeps the TIME-WAIT).
                        let _ = conn.read(&mut buf);
                    }
                }
            })
        })
        .collect()
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn moved(before: &std::collections::HashMap<String, u64>, after: &std::collections::HashMap<String, u64>, names: &[&str]) -> Vec<(String, u64)> {
    names.iter().map(|&n| (n.to_owned(), after.get(n).copied().unwrap_or(0).saturating_sub(before.get(n).copied().unwrap_or(0)))).collect()
}

/// Runs the soak for `duration` against the `firewall` binary at
/// `firewall`. Needs root. Panics only on setup failures; the goals are
/// checked by the caller (`Summary::problems`).
pub fn run(firewall: &Path, duration: Duration) -> Summary {
    let firewall = firewall.to_path_buf();
    assert!(firewall.exists(), "the firewall binary {} exists", firewall.display());
    let pair = Pair::new();
    // Every thread of the soak stops when this is set: at the end, or
    // when anything panics (the guard is dropped while unwinding).
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = {
        let stop = stop.clone();
        OnDrop(move || stop.store(true, Ordering::Relaxed))
    };

    // The server: addresses for the clients (so that no 4-tuple is used
    // twice), syncookies on (the hand-off needs them), a route for the
    // spoofed sources (so that anything leaking to its stack would be
    // answered and show in its counters).
    let prefix = pair.server_ip.rsplit_once('.').unwrap().0.to_owned();
    let server_addrs: Vec<Ipv4Addr> = (0..CLIENTS * ADDRS_PER_CLIENT).map(|i| format!("{prefix}.{}", 101 + i).parse().unwrap()).collect();
    let batch: String = server_addrs.iter().map(|a| format!("addr add {a}/24 dev {}\n", pair.server_if)).collect();
    let batch_file = std::env::temp_dir().join(format!("fw-soak-{}-{}.ip", std::process::id(), pair.server));
    std::fs::write(&batch_file, batch).unwrap();
    sh(&pair.server, "ip", &["-batch", batch_file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&batch_file);
    sh(&pair.server, "sysctl", &["-qw", "net.ipv4.tcp_syncookies=1"]);
    sh(&pair.server, "ip", &["route", "add", "default", "via", &pair.client_ip]);
    // The client: every source port, and a qdisc (see the module's comment).
    sh(&pair.client, "sysctl", &["-qw", "net.ipv4.ip_local_port_range=1024 65535"]);
    sh(&pair.client, "tc", &["qdisc", "replace", "dev", &pair.client_if, "root", "pfifo", "limit", "1000"]);

    let served = Arc::new(AtomicU64::new(0));
    let acceptors = start_server(&pair, CLIENTS + 2, stop.clone(), served.clone());
    // The client's end runs XDP too: it counts and drops the cookie
    // SYN-ACKs to the spoofed sources and passes the rest (a veth passes
    // its peer's XDP_TX frames only to an end that runs XDP).
    let sink = attach_xdp(&pair.client, &pair.client_if, BENCH_OBJECT, bench::SINK_PROGRAM);
    let sink_count = || -> u64 {
        let m: PerCpuArray<_, u64> = PerCpuArray::try_from(sink.map(bench::COUNT).unwrap()).unwrap();
        m.get(&0, 0).unwrap().iter().sum()
    };

    // The firewall.
    let dir = std::env::temp_dir().join(format!("fw-soak-{}-{}", std::process::id(), pair.server));
    std::fs::create_dir_all(&dir).unwrap();
    let _rm_dir = {
        let dir = dir.clone();
        OnDrop(move || {
            let _ = std::fs::remove_dir_all(&dir);
        })
    };
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut fw = Guarded::spawn(Pair::exec(&pair.server, firewall.to_str().unwrap(), &[
        "run",
        "--iface",
        &pair.server_if,
        "--policy",
        policy.to_str().unwrap(),
    ]));
    wait_for("firewall stats to answer", Duration::from_secs(30), || {
        if let Some(status) = fw.child().try_wait().unwrap() {
            let mut err = String::new();
            let _ = fw.child().stderr.take().unwrap().read_to_string(&mut err);
            panic!("firewall exited early ({status}): {err}");
        }
        stats_json(&firewall, &pair).ok()
    });
    // `ip netns exec` execs the program: the child is the controller.
    let pid = fw.child().id();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let name: String = firewall.file_name().unwrap().to_string_lossy().chars().take(15).collect();
    assert_eq!(comm.trim(), name, "pid {pid} is the controller");
    // The controller's output is drained so that its log never blocks it.
    let log = {
        let (mut stdout, mut stderr) = (fw.child().stdout.take().unwrap(), fw.child().stderr.take().unwrap());
        thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        })
    };

    // One connection before the loads: the path works at all.
    let first = server_addrs[0];
    let warmup = {
        let mut payload = b"soak warm-up ".to_vec();
        payload.resize(PAYLOAD, b'.');
        Pair::within(&pair.client, move || one_connection(SocketAddr::from((first, PORT)), &payload)).join().unwrap()
    };
    assert_eq!(warmup, Ok(()), "a connection through the firewall before the soak");

    let (src_mac, dst_mac) = (mac(&pair.client, &pair.client_if), mac(&pair.server, &pair.server_if));
    let stats_before = stats_json(&firewall, &pair).expect("stats before the soak");
    let (flows_before, flood_flows_before) = flows(&firewall, &pair);
    let (server_ns_before, client_ns_before) = (netstat(&pair.server), netstat(&pair.client));
    let sink_before = sink_count();
    let (client_drops_before, server_drops_before) = (link_drops(&pair.client, &pair.client_if), link_drops(&pair.server, &pair.server_if));
    let served_before = served.load(Ordering::Relaxed);
    let rss_before = vm_rss_kib(pid).expect("the controller's VmRSS");

    // The loads.
    let start = Instant::now();
    let deadline = start + duration;
    let secs = duration.as_secs_f64().ceil() as u64;
    let rss_max = Arc::new(AtomicU64::new(rss_before));
    let monitor = {
        let (rss_max, stop) = (rss_max.clone(), stop.clone());
        thread::spawn(move || {
            let mut alive = true;
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                match vm_rss_kib(pid) {
                    Some(kib) => {
                        rss_max.fetch_max(kib, Ordering::Relaxed);
                    }
                    None => alive = false,
                }
                thread::sleep(Duration::from_millis(250));
            }
            alive
        })
    };
    let syns = syn_flood(&pair, syn_template(&pair, src_mac, dst_mac), deadline, MAX_SYN_RATE * secs.max(1), stop.clone());
    let acks = ack_flood(&pair, src_mac, dst_mac, deadline, MAX_ACK_RATE * secs.max(1), stop.clone());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let servers = server_addrs.iter().skip(i).step_by(CLIENTS).map(|&a| SocketAddr::from((a, PORT))).collect();
            client(&pair.client, i, servers, deadline, stop.clone())
        })
        .collect();
    let (syn_sent, syn_secs) = syns.join().expect("the SYN generator");
    let (acks_sent, ack_secs) = acks.join().expect("the ACK generator");
    let results: Vec<ClientResult> = clients.into_iter().map(|c| c.join().expect("a client thread")).collect();
    let elapsed = start.elapsed().as_secs_f64();
    let alive_during = monitor.join().unwrap();

    // Frames still in flight are counted before the counters are read.
    thread::sleep(Duration::from_millis(300));
    let alive_after = fw.child().try_wait().unwrap().is_none();
    let stats_after = if alive_after { stats_json(&firewall, &pair).ok() } else { None };
    let (flows_after, flood_flows_after) = if alive_after { flows(&firewall, &pair) } else { (0, 0) };
    let rss_after = vm_rss_kib(pid).unwrap_or(0);
    let (server_ns_after, client_ns_after) = (netstat(&pair.server), netstat(&pair.client));
    let synacks_at_client = sink_count() - sink_before;
    let (client_drops_after, server_drops_after) = (link_drops(&pair.client, &pair.client_if), link_drops(&pair.server, &pair.server_if));

    stop.store(true, Ordering::Relaxed);
    for a in acceptors {
        a.join().unwrap();
    }
    let exit = fw.terminate();
    let log = log.join().unwrap_or_default();
    let controller_exit = if exit.status.success() {
        "exited cleanly".to_string()
    } else {
        format!("{} ({})", exit.status, log.lines().last().unwrap_or(""))
    };

    let mut summary = Summary {
        requested_secs: duration.as_secs_f64(),
        elapsed_secs: elapsed,
        syn_sent,
        syn_secs,
        synacks_at_client,
        acks_sent,
        ack_secs,
        served: served.load(Ordering::Relaxed) - served_before,
        flows_before,
        flows_after,
        flood_flows_before,
        flood_flows_after,
        server_netstat: moved(&server_ns_before, &server_ns_after, &SERVER_NETSTAT),
        client_netstat: moved(&client_ns_before, &client_ns_after, &CLIENT_NETSTAT),
        client_tx_dropped: client_drops_after.1 - client_drops_before.1,
        server_rx_dropped: server_drops_after.0 - server_drops_before.0,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        rss_max_kib: rss_max.load(Ordering::Relaxed).max(rss_after),
        controller_alive: alive_during && alive_after && stats_after.is_some(),
        controller_exit,
        ..Summary::default()
    };
    if let Some(after) = &stats_after {
        let d = |f: &str| service_counter(after, f) - service_counter(&stats_before, f);
        (summary.syns, summary.cookies_sent, summary.acks_valid, summary.acks_invalid) = (d("syns"), d("cookies_sent"), d("acks_valid"), d("acks_invalid"));
        summary.reasons = REASONS.iter().map(|&r| (r.to_owned(), reason_packets(after, r) - reason_packets(&stats_before, r))).collect();
    }
    let mut latency = Vec::new();
    for r in results {
        summary.attempted += r.attempted;
        summary.completed += r.completed;
        for (k, n) in r.failures {
            *summary.failures.entry(k).or_default() += n;
        }
        latency.extend(r.latency_us);
    }
    latency.sort_unstable();
    summary.latency_ms = (percentile(&latency, 0.5), percentile(&latency, 0.99), percentile(&latency, 1.0));
    summary
}

/// The `firewall` binary next to an example's directory
/// (`target/<profile>/examples/<name>` → `target/<profile>/firewall`).
pub fn sibling_firewall_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    exe.parent().and_then(Path::parent).expect("target/<profile>/examples").join("firewall")
}
