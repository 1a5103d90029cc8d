//! Whole-system rates on a veth pair between two network namespaces, each
//! mode beside its anchors in one run. Run by `cargo xtask bench` after the
//! in-kernel figures; writes `results/rates.json` and `results/rates.md`.
//!
//! The generator is BPF_PROG_TEST_RUN's live-frames mode in the client
//! namespace: `bench_gen` (the `firewall-bench` object) gives every frame a
//! new source in the spoofed range and sends it with XDP_TX into the veth,
//! so frames enter the server's end as an XDP driver would hand them over.
//! Every flood is bounded in frames and seconds. Scenarios:
//! - SYN flood to a listening port: SYN-ACKs per second that reach the
//!   client (counted and dropped there by `bench_sink`), answered by the
//!   firewall in cookie mode, by the kernel with `tcp_syncookies=2`, and by
//!   nftables `synproxy`;
//! - unwanted packets dropped per second: the firewall vs nftables with the
//!   same policy as set lookups (`nft.rs`), at 10 and 1,000 rules;
//! - the ceiling: the same frames into a server end that drops them at the
//!   earliest point (`bench_drop`, XDP). The generator and the receiver
//!   share the CPUs, so a mode's receiver-side cost per packet is
//!   1/rate - 1/ceiling;
//! - legitimate connections per second (real TCP, connect and accept) with
//!   and without the SYN flood, per SYN mode.
//!
//! Modes are interleaved (A B C A B C ...) so that drift hits them alike;
//! figures are medians with min-max over the rounds, ratios are taken pair
//! by pair within a round.

#[path = "../../tests/common/mod.rs"]
mod common;
mod nft;

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::XdpMode,
};
use common::{
    Harness,
    netns::{BENCH_OBJECT, LiveFrames, Pair, attach_xdp, mac},
    random,
};
use firewall_common::maps::{self, bench};
use serde_json::{Value, json};


/// Rounds per scenario (`FW_BENCH_ROUNDS` overrides, for a quick look).
fn rounds() -> usize {
    std::env::var("FW_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5)
}
const SECONDS: Duration = Duration::from_secs(2);
/// Frames per flood at most (also bounded by `SECONDS`).
const MAX_FRAMES: u64 = 40_000_000;
/// Frames per BPF_PROG_TEST_RUN call: small enough to stop on time.
const CHUNK: u32 = 1 << 16;
/// Frames per call when paced.
const PACED_CHUNK: u32 = 1 << 10;
const PORT: u16 = 8080;
/// The SYN flood during the legitimate connections, per second: the same
/// for every mode, and below what the slowest mode can answer, so that the
/// clients compete with the same load everywhere.
const PACED_FLOOD: f64 = 200_000.0;

const COOKIE_POLICY: &str = r#"
[settings]
default = "drop"

[[rule]]
name = "web"
proto = "tcp"
dport = 8080
action = "accept"
syncookie = "always"
"#;

/// The textbook nftables SYN proxy for a local service: the SYNs skip
/// conntrack, `synproxy` answers them with cookies and, once the ACK
/// checks out, opens the real connection to the listener.
fn synproxy_ruleset() -> String {
    format!(
        "table ip fwbench {{
\tchain prerouting {{
\t\ttype filter hook prerouting priority raw; policy accept;
\t\ttcp dport {PORT} tcp flags syn notrack
\t}}
\tchain input {{
\t\ttype filter hook input priority filter; policy accept;
\t\ttcp dport {PORT} ct state invalid,untracked synproxy mss 1460 wscale 7 timestamp sack-perm
\t\tct state invalid drop
\t}}
}}
"
    )
}

/// The client's end without XDP: replies to the spoofed range are
/// dropped at netdev ingress, before the IP stack.
fn client_sink_ruleset(ifname: &str) -> String {
    let [a, b] = bench::SPOOF_NET;
    format!("table netdev fwsink {{\n\tchain in {{\n\t\ttype filter hook ingress device \"{ifname}\" priority 0;\n\t\tip daddr {a}.{b}.0.0/16 drop\n\t}}\n}}\n")
}

fn sh(ns: &str, program: &str, args: &[&str]) {
    let out = Pair::output(ns, program, args);
    assert!(out.status.success(), "{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

fn nft_load(ns: &str, ruleset: &str) {
    let path = std::env::temp_dir().join(format!("fwbench-{}.nft", std::process::id()));
    std::fs::write(&path, format!("flush ruleset\n{ruleset}")).unwrap();
    sh(ns, "nft", &["-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(path);
}

/// Packets counted by the named counter `name` of `table inet fwbench`.
fn nft_counter(ns: &str, name: &str) -> u64 {
    let out = Pair::output(ns, "nft", &["-j", "list", "counter", "inet", "fwbench", name]);
    assert!(out.status.success(), "nft list counter: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("nft -j prints JSON");
    v["nftables"].as_array().unwrap().iter().find_map(|o| o["counter"]["packets"].as_u64()).expect("counter in nft output")
}

/// Attaches one program of the bench object to `ifname` in `ns`.
fn attach_bench(ns: &str, ifname: &str, program: &'static str) -> Ebpf {
    attach_xdp(ns, ifname, BENCH_OBJECT, program)
}

fn bench_count(ebpf: &Ebpf) -> u64 {
    let m: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.map(bench::COUNT).unwrap()).unwrap();
    m.get(&0, 0).unwrap().iter().sum()
}

/// Floods the server with copies of `frame` (each with a new source in its
/// last two address bytes) until `MAX_FRAMES`, `SECONDS` or `stop`; as
/// fast as it can, or paced to `rate` frames per second. Returns the
/// frames sent and the seconds taken.
fn flood(pair: &Pair, frame: Vec<u8>, stop: Arc<AtomicBool>, rate: Option<f64>) -> thread::JoinHandle<(u64, f64)> {
    let ifname = pair.client_if.clone();
    Pair::within(&pair.client, move || {
        let mut generator = LiveFrames::new(&ifname, frame);
        let start = Instant::now();
        let mut sent = 0u64;
        let chunk = if rate.is_some() { PACED_CHUNK } else { CHUNK };
        while sent < MAX_FRAMES && start.elapsed() < SECONDS && !stop.load(Ordering::Relaxed) {
            generator.send(chunk);
            sent += u64::from(chunk);
            if let Some(rate) = rate {
                // Pacing: wait for this chunk's slot in the schedule.
                let due = Duration::from_secs_f64(sent as f64 / rate);
                if let Some(ahead) = due.checked_sub(start.elapsed()) {
                    thread::sleep(ahead);
                }
            }
        }
        (sent, start.elapsed().as_secs_f64())
    })
}

/// A Linux-like SYN (MSS, SACK-permitted, timestamps, window scale) from
/// `src` to the server's `port`.
fn syn_frame(pair: &Pair, src: [u8; 4], port: u16) -> Vec<u8> {
    use etherparse::TcpOptionElement::*;
    let dst: Ipv4Addr = pair.server_ip.parse().unwrap();
    let mut tcp = etherparse::TcpHeader::new(40000, port, 0x1234_5678, 64240);
    tcp.syn = true;
    tcp.set_options(&[MaximumSegmentSize(1460), SelectiveAcknowledgementPermitted, Timestamp(1, 0), Noop, WindowScale(7)]).unwrap();
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(&pair.client, &pair.client_if), mac(&pair.server, &pair.server_if))
        .ipv4(src, dst.octets(), 64)
        .tcp_header(tcp)
        .write(&mut out, &[])
        .unwrap();
    out
}

/// Median, min and max.
fn stats(v: &[f64]) -> Value {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    json!({ "median": s[s.len() / 2], "min": s[0], "max": s[s.len() - 1], "runs": v })
}

/// "median (min–max)" with `digits` decimals; "n/a" where a figure is not
/// a number (JSON has no NaN: a rate of 0 in a ratio's denominator).
fn fmt(v: &Value, digits: usize) -> String {
    let f = |k: &str| v[k].as_f64().map_or("n/a".to_string(), |x| format!("{x:.digits$}"));
    format!("{} ({}–{})", f("median"), f("min"), f("max"))
}

/// What a mode measured in each round.
#[derive(Default)]
struct Series {
    rate: Vec<f64>,
    offered: Vec<f64>,
    /// The firewall's XDP program, in-kernel ns per run during the flood
    /// (bpf_stats run_time / run_cnt, tail calls included).
    live_ns: Vec<f64>,
}

/// `kernel.bpf_stats_enabled` on while this lives, and back as it was, even
/// when the bench panics: left on, it adds two clock reads to every
/// program run, `BPF_PROG_TEST_RUN`'s included (about 45 ns here).
struct BpfStats(String);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn on() -> Self {
        let was = std::fs::read_to_string(Self::PATH).unwrap_or_default().trim().to_owned();
        std::fs::write(Self::PATH, "1").expect("kernel.bpf_stats_enabled");
        Self(if was.is_empty() { "0".into() } else { was })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

/// (run time ns, runs) of the firewall's XDP program (`kernel.bpf_stats_enabled` on).
fn xdp_run_stats(h: &Harness) -> (u64, u64) {
    let id = h.fw.program_ids().into_iter().find(|(_, n, _)| *n == maps::XDP_PROGRAM).expect("the XDP program").2;
    let info = aya::programs::loaded_programs().flatten().find(|p| p.id() == id).expect("the XDP program is loaded");
    (info.run_time().as_nanos() as u64, info.run_count())
}

/// `measure`, and the firewall's in-kernel cost per run while it floods.
fn measure_live(pair: &Pair, frame: &[u8], count: &dyn Fn() -> u64, h: &Harness, into: &mut Series) {
    let (t0, n0) = xdp_run_stats(h);
    measure(pair, frame, count, into);
    let (t1, n1) = xdp_run_stats(h);
    if n1 > n0 {
        into.live_ns.push((t1 - t0) as f64 / (n1 - n0) as f64);
    }
}

/// One flood of `frame`; `count` reads what the receiver did.
fn measure(pair: &Pair, frame: &[u8], count: &dyn Fn() -> u64, into: &mut Series) {
    let before = count();
    let (sent, secs) = flood(pair, frame.to_vec(), Arc::new(AtomicBool::new(false)), None).join().unwrap();
    let done = count() - before;
    into.rate.push(done as f64 / secs);
    into.offered.push(sent as f64 / secs);
}

/// The firewall with `policy` attached (native XDP) to the server's end.
fn firewall(pair: &Pair, policy: &str) -> Harness {
    let (policy, server_if) = (policy.to_owned(), pair.server_if.clone());
    Pair::within(&pair.server, move || {
        let mut h = Harness::new(&policy);
        // The server's own addresses: cookie SYN-ACKs are sent for these.
        h.fw.refresh_local_addrs().expect("local addresses");
        h.fw.attach(&server_if, XdpMode::Driver).expect("firewall attaches");
        h
    })
    .join()
    .unwrap()
}

/// A scenario's modes as JSON, with each mode's receiver-side cost per
/// packet against the same round's ceiling, and ratios of `pairs`.
fn scenario(id: &str, title: &str, ceiling: &Series, modes: &[(&str, &str, &Series)], pairs: &[(&str, &str)]) -> Value {
    let mut out = Vec::new();
    out.push(json!({ "id": "ceiling", "label": "generator ceiling (peer drops in XDP)", "rate": stats(&ceiling.rate), "offered": stats(&ceiling.offered) }));
    for (id, label, s) in modes {
        let cost: Vec<f64> = s.rate.iter().zip(&ceiling.rate).map(|(r, c)| 1e9 / r - 1e9 / c).collect();
        let live = if s.live_ns.is_empty() { Value::Null } else { stats(&s.live_ns) };
        out.push(json!({ "id": id, "label": label, "rate": stats(&s.rate), "offered": stats(&s.offered), "receiver_ns": stats(&cost), "live_ns": live }));
    }
    let find = |id: &str| modes.iter().find(|m| m.0 == id).unwrap().2;
    let ratios: Vec<Value> = pairs
        .iter()
        .map(|(a, b)| {
            let r: Vec<f64> = find(a).rate.iter().zip(&find(b).rate).map(|(x, y)| x / y).collect();
            json!({ "a": a, "b": b, "ratio": stats(&r) })
        })
        .collect();
    json!({ "id": id, "title": title, "modes": out, "ratios": ratios })
}

fn main() {
    let rounds = rounds();
    let started = Instant::now();
    let pair = Pair::new();
    // The spoofed sources must be routable from the server, or reverse-path
    // filtering drops their SYNs before TCP sees them.
    sh(&pair.server, "ip", &["route", "add", "default", "via", &pair.client_ip]);
    // Frames sent into a veth with XDP_TX are taken by a peer with an XDP
    // program or with GRO on (its NAPI); the kernel and nftables modes run
    // no XDP on the server's end.
    sh(&pair.server, "ethtool", &["-K", &pair.server_if, "gro", "on"]);
    // Connections the legitimate clients close with RST leave no TIME_WAIT,
    // but keep the port range wide anyway.
    sh(&pair.client, "sysctl", &["-qw", "net.ipv4.ip_local_port_range=1024 65000"]);
    // The client's end counts and drops the SYN-ACKs sent to the spoofed
    // sources (and passes the rest).
    let sink = attach_bench(&pair.client, &pair.client_if, bench::SINK_PROGRAM);
    // The listener, for the whole run: it answers each connection's
    // one-byte request with one byte, like a tiny HTTP server. (Server-
    // first data was lost behind nftables synproxy in this topology.)
    {
        let ip = pair.server_ip.clone();
        let listener = Pair::within(&pair.server, move || TcpListener::bind((ip.as_str(), PORT)).unwrap()).join().unwrap();
        thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let mut byte = [0u8; 1];
                if s.read_exact(&mut byte).is_ok() {
                    let _ = s.write_all(b"x");
                }
            }
        });
    }
    let ceiling_mode = || attach_bench(&pair.server, &pair.server_if, bench::DROP_PROGRAM);
    // In-kernel run time of the firewall under the live floods (its cost
    // is two clock reads a run, part of the figure: a bare XDP_DROP reads
    // about 57 ns this way here).
    let _stats = BpfStats::on();

    // 1. SYN flood.
    let syn = syn_frame(&pair, [bench::SPOOF_NET[0], bench::SPOOF_NET[1], 0, 1], PORT);
    if std::env::var_os("FW_BENCH_LIVE_ONLY").is_some() {
        live_only(&pair, &syn, rounds, &answered_by(&sink));
        return;
    }
    let (mut ceiling, mut fw, mut kernel, mut proxy, mut reflector, mut plain) =
        (Series::default(), Series::default(), Series::default(), Series::default(), Series::default(), Series::default());
    let answered = || bench_count(&sink);
    for round in 0..rounds {
        eprintln!("rates: SYN flood, round {}/{rounds}", round + 1);
        {
            let drop = ceiling_mode();
            measure(&pair, &syn, &|| bench_count(&drop), &mut ceiling);
        }
        {
            let _reflect = attach_bench(&pair.server, &pair.server_if, bench::REFLECT_PROGRAM);
            measure(&pair, &syn, &answered, &mut reflector);
        }
        {
            let h = firewall(&pair, COOKIE_POLICY);
            measure_live(&pair, &syn, &answered, &h, &mut fw);
            // Every SYN the generator offered was answered, not dropped.
            let s = h.snapshot().service("web").map(|s| (s.syns, s.cookies_sent));
            assert!(s.is_some_and(|(syns, sent)| syns == sent && sent > 0), "the firewall answered every SYN: {s:?}");
        }
        {
            // The same flood to a plain accepting rule: every SYN opens an
            // unproven flow, and the host answers (its own cookies once its
            // backlog is full).
            let h = firewall(&pair, &COOKIE_POLICY.replace("\"always\"", "\"off\""));
            measure_live(&pair, &syn, &answered, &h, &mut plain);
        }
        sh(&pair.server, "sysctl", &["-qw", "net.ipv4.tcp_syncookies=2"]);
        measure(&pair, &syn, &answered, &mut kernel);
        sh(&pair.server, "sysctl", &["-qw", "net.ipv4.tcp_syncookies=1"]);
        sh(&pair.server, "sysctl", &["-qw", "net.netfilter.nf_conntrack_tcp_loose=0"]);
        nft_load(&pair.server, &synproxy_ruleset());
        measure(&pair, &syn, &answered, &mut proxy);
        sh(&pair.server, "nft", &["flush", "ruleset"]);
    }
    let syn_flood = scenario(
        "syn_flood",
        "Spoofed SYN flood to a listening port: SYN-ACKs per second",
        &ceiling,
        &[
            ("firewall", "firewall, cookie mode (XDP_TX)", &fw),
            ("kernel", "kernel, tcp_syncookies=2, no firewall", &kernel),
            ("synproxy", "nftables synproxy (SYNs notrack)", &proxy),
            ("reflector", "bare XDP_TX reflector (SYN to SYN-ACK in place: no state, no hash; the physical limit)", &reflector),
            ("plain", "firewall, plain accept rule (a flow per SYN; the host answers)", &plain),
        ],
        &[("firewall", "kernel"), ("firewall", "synproxy"), ("firewall", "reflector")],
    );

    // 2. Unwanted packets dropped, at 10 and 1,000 rules: SYNs from
    // 172.16.0.0/16 to a port no random rule opens, dropped by the last rule.
    let mut drops = Vec::new();
    for rules in [10usize, 1_000] {
        let text = random::policy_text(rules - 1, 7).replacen("invalid = \"rules\"", "invalid = \"drop\"", 1);
        let parsed = firewall_user::policy::parse(&text, "bench.toml").expect("valid policy");
        let port = (9u16..).find(|p| !parsed.rules.iter().any(|r| r.dport.iter().any(|d| d.lo <= *p && *p <= d.hi))).unwrap();
        let policy = format!("{text}\n[[rule]]\nname = \"unwanted\"\nproto = \"tcp\"\nsrc = \"172.16.0.0/16\"\ndport = {port}\naction = \"drop\"\n");
        let ruleset = nft::ruleset(
            &parsed,
            &parsed.rules,
            "fwbench",
            &format!("\t\tip saddr 172.16.0.0/16 tcp dport {port} counter name \"unwanted\" drop"),
        )
        .replacen("table inet fwbench {\n", "table inet fwbench {\n\tcounter unwanted {\n\t}\n", 1);
        let lookups = ruleset.matches(" @s").count();
        eprintln!("rates: {rules} rules as nftables: {} sets, {lookups} set lookups in the chain", ruleset.matches("\tset s").count());
        let frame = syn_frame(&pair, [172, 16, 0, 1], port);
        let (mut ceiling, mut fw, mut nf) = (Series::default(), Series::default(), Series::default());
        for round in 0..rounds {
            eprintln!("rates: drops at {rules} rules, round {}/{rounds}", round + 1);
            {
                let drop = ceiling_mode();
                measure(&pair, &frame, &|| bench_count(&drop), &mut ceiling);
            }
            {
                let h = firewall(&pair, &policy);
                measure_live(&pair, &frame, &|| h.rule_packets("unwanted"), &h, &mut fw);
            }
            nft_load(&pair.server, &ruleset);
            measure(&pair, &frame, &|| nft_counter(&pair.server, "unwanted"), &mut nf);
            sh(&pair.server, "nft", &["flush", "ruleset"]);
        }
        drops.push(scenario(
            &format!("drop_{rules}"),
            &format!("Unwanted packets dropped per second, {rules} rules"),
            &ceiling,
            &[("firewall", "firewall (XDP)", &fw), ("nftables", &format!("nftables, input hook, {lookups} set lookups"), &nf)],
            &[("firewall", "nftables")],
        ));
    }

    // 3. Legitimate connections per second, without and with the flood.
    // The client's end runs XDP only in the mode that needs it: the
    // firewall's SYN-ACKs are XDP_TX frames, which a veth peer takes only
    // while it runs XDP. A veth running XDP copies skbs with little
    // headroom (synproxy's) and loses their partial checksum, so in the
    // kernel and synproxy modes the client's end runs none, and the flood's
    // SYN-ACKs to the spoofed range are dropped by an nftables netdev
    // ingress rule there instead (before the IP stack, as the sink drops).
    // `kernel_xdp` is the kernel with the client's end running the sink as
    // in the firewall mode: what that XDP costs the clients, apart from
    // the firewall's own work. `firewall_auto` is the service as the README
    // recommends it (`syncookie = "auto"`): the host answers while it is
    // quiet (the client's end runs no XDP then), and the controller's tick
    // engages cookies once the flood starts (the client's end runs the sink
    // from then on, as for `firewall`).
    drop(sink);
    let mut legit: Vec<(&str, &str, Vec<f64>, Vec<f64>)> = vec![
        ("firewall", "firewall, cookie mode", Vec::new(), Vec::new()),
        ("firewall_auto", "firewall, auto mode (auto_on_rate 25,000 SYN/s: the host answers while quiet; cookies once the controller's tick sees the flood)", Vec::new(), Vec::new()),
        ("kernel", "kernel, tcp_syncookies=2", Vec::new(), Vec::new()),
        ("kernel_xdp", "kernel, tcp_syncookies=2, the client's end running XDP as for the firewall", Vec::new(), Vec::new()),
        ("synproxy", "nftables synproxy", Vec::new(), Vec::new()),
    ];
    for round in 0..rounds {
        eprintln!("rates: legitimate connections, round {}/{rounds}", round + 1);
        for (id, _, quiet, flooded) in legit.iter_mut() {
            let xdp_client = matches!(*id, "firewall" | "kernel_xdp");
            let mut sink = xdp_client.then(|| attach_bench(&pair.client, &pair.client_if, bench::SINK_PROGRAM));
            if !xdp_client {
                nft_load(&pair.client, &client_sink_ruleset(&pair.client_if));
            }
            let auto = *id == "firewall_auto";
            let mut fw = match *id {
                "firewall" => Some(firewall(&pair, COOKIE_POLICY)),
                // Engaged above the clients' own SYN rate (about 15,000 a
                // second here; the default, 1,000, would engage for them)
                // and below the flood's: the generator's sources repeat, so
                // about 40,000 of its 200,000 SYNs a second open new flows
                // (a repeated one is a retransmission, not counted).
                "firewall_auto" => Some(firewall(
                    &pair,
                    &COOKIE_POLICY.replace("\"always\"", "\"auto\"").replace("[settings]\n", "[settings]\nsyncookie = { auto_on_rate = 25000, auto_off_rate = 20000 }\n"),
                )),
                _ => None,
            };
            if id.starts_with("kernel") {
                sh(&pair.server, "sysctl", &["-qw", "net.ipv4.tcp_syncookies=2"]);
            }
            if *id == "synproxy" {
                nft_load(&pair.server, &synproxy_ruleset());
            }
            quiet.push(connections(&pair, false, &syn, &mut || {}));
            if let (true, Some(h)) = (auto, fw.as_mut()) {
                // The tick that covers the quiet run: the clients' own SYNs
                // stay below the threshold.
                let changes = h.fw.cookie_tick(SECONDS).expect("cookie tick");
                assert!(changes.is_empty(), "the clients alone engaged cookies: {changes:?}");
            }
            if auto {
                sh(&pair.client, "nft", &["flush", "ruleset"]);
                sink = Some(attach_bench(&pair.client, &pair.client_if, bench::SINK_PROGRAM));
            }
            flooded.push(connections(&pair, true, &syn, &mut || {
                if let (true, Some(h)) = (auto, fw.as_mut()) {
                    engage(h);
                }
            }));
            drop((sink, fw));
            sh(&pair.server, "sysctl", &["-qw", "net.ipv4.tcp_syncookies=1"]);
            sh(&pair.server, "nft", &["flush", "ruleset"]);
            sh(&pair.client, "nft", &["flush", "ruleset"]);
        }
    }
    drop(_stats);
    let legit_json: Vec<Value> = legit
        .iter()
        .map(|(id, label, q, f)| {
            let r: Vec<f64> = f.iter().zip(q).map(|(a, b)| a / b).collect();
            json!({ "id": id, "label": label, "quiet": stats(q), "flooded": stats(f), "ratio": stats(&r) })
        })
        .collect();

    let report = json!({
        "rounds": rounds,
        "seconds_per_flood": SECONDS.as_secs_f64(),
        "generator": "BPF_PROG_TEST_RUN live frames (bench_gen, XDP_TX into the client's veth), batch 64",
        "scenarios": [syn_flood, drops[0], drops[1]],
        "legitimate": legit_json,
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    let md = markdown(&report);
    println!("{md}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../results");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rates.json"), serde_json::to_string_pretty(&report).unwrap()).unwrap();
    std::fs::write(dir.join("rates.md"), md).unwrap();
}

/// A counter of the SYN-ACKs `sink` took.
fn answered_by(sink: &Ebpf) -> impl Fn() -> u64 + '_ {
    move || bench_count(sink)
}

/// `FW_BENCH_LIVE_ONLY`: only the firewall's live in-kernel cost per run
/// (cookie SYN, plain accept, rule drop at 10 and 1,000 rules), printed,
/// no report: the quick look for A/B builds while profiling.
fn live_only(pair: &Pair, syn: &[u8], rounds: usize, answered: &dyn Fn() -> u64) {
    let plain = COOKIE_POLICY.replace("\"always\"", "\"off\"");
    // As in the drop scenario: the last rule drops SYNs to a port no other
    // rule opens.
    let drops: Vec<(String, Vec<u8>)> = [10usize, 1_000]
        .iter()
        .map(|&rules| {
            let text = random::policy_text(rules - 1, 7).replacen("invalid = \"rules\"", "invalid = \"drop\"", 1);
            let parsed = firewall_user::policy::parse(&text, "bench.toml").expect("valid policy");
            let port = (9u16..).find(|p| !parsed.rules.iter().any(|r| r.dport.iter().any(|d| d.lo <= *p && *p <= d.hi))).unwrap();
            let policy = format!("{text}\n[[rule]]\nname = \"unwanted\"\nproto = \"tcp\"\nsrc = \"172.16.0.0/16\"\ndport = {port}\naction = \"drop\"\n");
            (policy, syn_frame(pair, [172, 16, 0, 1], port))
        })
        .collect();
    let mut series: Vec<Series> = (0..4).map(|_| Series::default()).collect();
    // `FW_BENCH_LIVE_MODES=cookie,plain,drop10,drop1000`: only those (to
    // profile one alone, e.g. under `perf record -a`); all by default.
    let modes = std::env::var("FW_BENCH_LIVE_MODES").unwrap_or_else(|_| "cookie,plain,drop10,drop1000".into());
    let on = |m: &str| modes.split(',').any(|x| x.trim() == m);
    for _ in 0..rounds {
        if on("cookie") {
            let h = firewall(pair, COOKIE_POLICY);
            measure_live(pair, syn, answered, &h, &mut series[0]);
        }
        if on("plain") {
            let h = firewall(pair, &plain);
            measure_live(pair, syn, answered, &h, &mut series[1]);
        }
        for (i, (policy, frame)) in drops.iter().enumerate().filter(|(i, _)| on(["drop10", "drop1000"][*i])) {
            let h = firewall(pair, policy);
            measure_live(pair, frame, &|| h.rule_packets("unwanted"), &h, &mut series[2 + i]);
        }
    }
    for (name, s) in ["cookie SYN", "plain accept SYN", "rule drop, 10 rules", "rule drop, 1000 rules"].iter().zip(&series).filter(|(_, s)| !s.live_ns.is_empty()) {
        println!("{name}: live ns/run {}, handled/s {}", fmt(&stats(&s.live_ns), 0), fmt(&stats(&s.rate), 0));
    }
}

/// Ticks the controller's cookie mode (`Firewall::cookie_tick`, as `run`
/// does every second) until the flood engages the auto service: bounded.
fn engage(h: &mut Harness) {
    let started = Instant::now();
    let mut last = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let changes = h.fw.cookie_tick(last.elapsed()).expect("cookie tick");
        last = Instant::now();
        if h.snapshot().service("web").is_some_and(|s| s.cookies_on) {
            eprintln!("rates: auto mode engaged after {:.1} s ({changes:?})", started.elapsed().as_secs_f64());
            return;
        }
        let syns = h.snapshot().service("web").map(|s| s.syns);
        assert!(started.elapsed() < Duration::from_secs(5), "the flood did not engage cookies: {changes:?}, {syns:?} SYNs counted");
    }
}

/// Completed connections per second over `SECONDS`: one client in a loop
/// connects, sends a byte, reads the server's byte, and closes with
/// RST (no TIME_WAIT to run out of ports); with `flood_on`, while the
/// spoofed SYN flood runs (and `started` called once it runs, before the
/// clients).
fn connections(pair: &Pair, flood_on: bool, syn: &[u8], started: &mut dyn FnMut()) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let generator = flood_on.then(|| flood(pair, syn.to_vec(), stop.clone(), Some(PACED_FLOOD)));
    if flood_on {
        started();
    }
    let server: SocketAddr = format!("{}:{PORT}", pair.server_ip).parse().unwrap();
    let (done, secs) = Pair::within(&pair.client, move || {
        let start = Instant::now();
        let mut done = 0u64;
        while start.elapsed() < SECONDS {
            let Ok(mut s) = TcpStream::connect_timeout(&server, Duration::from_secs(1)) else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut byte = [0u8; 1];
            if s.write_all(b"q").is_ok() && s.read_exact(&mut byte).is_ok() {
                done += 1;
            }
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            // SAFETY: a valid option struct for our own socket.
            unsafe {
                libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, (&linger as *const libc::linger).cast(), size_of::<libc::linger>() as u32)
            };
        }
        (done, start.elapsed().as_secs_f64())
    })
    .join()
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    if let Some(g) = generator {
        g.join().unwrap();
    }
    done as f64 / secs
}

fn markdown(r: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Whole-system rates on veth, {} interleaved rounds of {} s per mode; generator: {}. Median (min–max).\n",
        r["rounds"], r["seconds_per_flood"], r["generator"].as_str().unwrap()
    );
    for sc in r["scenarios"].as_array().unwrap() {
        let _ = writeln!(s, "**{}**\n", sc["title"].as_str().unwrap());
        let _ = writeln!(s, "| mode | handled per second | frames offered per second | receiver-side ns per packet (1/rate − 1/ceiling) | in-kernel ns per run, live (bpf_stats) |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        for m in sc["modes"].as_array().unwrap() {
            let or_dash = |v: &Value| if v.is_null() { "—".to_string() } else { fmt(v, 0) };
            let _ = writeln!(s, "| {} | {} | {} | {} | {} |", m["label"].as_str().unwrap(), fmt(&m["rate"], 0), fmt(&m["offered"], 0), or_dash(&m["receiver_ns"]), or_dash(&m["live_ns"]));
        }
        for ratio in sc["ratios"].as_array().unwrap() {
            let _ = writeln!(s, "\n{} / {}, pair by pair: **{}**", ratio["a"].as_str().unwrap(), ratio["b"].as_str().unwrap(), fmt(&ratio["ratio"], 2));
        }
        s.push('\n');
    }
    let _ = writeln!(s, "**Legitimate connections per second (connect, one-byte request and reply, close with RST), without and with a SYN flood of {PACED_FLOOD} per second**\n");
    let _ = writeln!(s, "| mode | no flood | during the flood | with / without |");
    let _ = writeln!(s, "|---|---|---|---|");
    for m in r["legitimate"].as_array().unwrap() {
        let _ = writeln!(s, "| {} | {} | {} | {} |", m["label"].as_str().unwrap(), fmt(&m["quiet"], 0), fmt(&m["flooded"], 0), fmt(&m["ratio"], 2));
    }
    s
}
