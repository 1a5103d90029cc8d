//! SYN-ACKs per second answered from a spoofed SYN flood on a veth pair,
//! side by side in one run: (a) the firewall in cookie mode (native XDP),
//! (b) no firewall, the kernel with `net.ipv4.tcp_syncookies=2` (cookies
//! for every SYN). Modes are interleaved A B A B ... so drift hits both
//! alike. The generator is an AF_PACKET sender in the client namespace,
//! bounded in frames and seconds; the answers are counted by the answering
//! side (the firewall's `cookie_sent`, the kernel's `SyncookiesSent`).
//! Run by `cargo xtask bench` after the in-kernel figures.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::netns::{Pair, attach_peer_pass, netstat, spoofed_syn_flood};
use firewall_common::{CookieCounters, MAX_RULES, maps};
use firewall_user::loader::Firewall;

const ROUNDS: usize = 3;
const SECONDS: Duration = Duration::from_secs(3);
const MAX_FRAMES: usize = 5_000_000;
const PORT: u16 = 8080;

const POLICY: &str = r#"
[settings]
default = "drop"

[[rule]]
name = "web"
proto = "tcp"
dport = 8080
action = "accept"
syncookie = "always"
"#;

fn syncookies_sent(ns: &str) -> u64 {
    netstat(ns)["SyncookiesSent"]
}

fn cookies_sent(fw: &Firewall) -> u64 {
    let m: aya::maps::PerCpuArray<_, CookieCounters> = aya::maps::PerCpuArray::try_from(fw.ebpf.map(maps::COOKIE_COUNTERS).unwrap()).unwrap();
    // Slot 0 holds the only policy installed; the service is rule 0.
    m.get(&(0 * MAX_RULES), 0).unwrap().iter().map(|c| c.cookies_sent).sum()
}

fn median(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let pair = Pair::new();
    // The spoofed sources must be routable from the server, or reverse-path
    // filtering drops their SYNs before the kernel's TCP sees them.
    assert!(Pair::output(&pair.server, "ip", &["route", "add", "default", "via", &pair.client_ip]).status.success());
    // The kernel side: a listener, and cookies for every SYN in mode (b).
    let ip = pair.server_ip.clone();
    let _listener = Pair::within(&pair.server, move || std::net::TcpListener::bind((ip.as_str(), PORT)).unwrap()).join().unwrap();
    // The client end needs an XDP program to take XDP_TX frames (README).
    let _peer = attach_peer_pass(&pair);

    let mut fw_rates = Vec::new();
    let mut kernel_rates = Vec::new();
    let mut gen_rates = Vec::new();
    for _ in 0..ROUNDS {
        // (a) the firewall, attached for this round only.
        let server = pair.server.clone();
        let server_if = pair.server_if.clone();
        let fw = Pair::within(&server, move || {
            let mut fw = Firewall::load().unwrap();
            let policy = firewall_user::policy::parse(POLICY, "flood.toml").unwrap();
            fw.install(&firewall_user::compile::compile(&policy).unwrap()).unwrap();
            fw.attach(&server_if, aya::programs::XdpMode::Driver).unwrap();
            fw
        })
        .join()
        .unwrap();
        let before = cookies_sent(&fw);
        let (sent, secs) = spoofed_syn_flood(&pair, PORT, MAX_FRAMES, SECONDS).join().unwrap();
        let answered = cookies_sent(&fw) - before;
        drop(fw);
        fw_rates.push(answered as f64 / secs);
        gen_rates.push(sent as f64 / secs);

        // (b) the kernel alone, answering every SYN with its own cookie.
        assert!(Pair::output(&pair.server, "sysctl", &["-qw", "net.ipv4.tcp_syncookies=2"]).status.success());
        let before = syncookies_sent(&pair.server);
        let (sent, secs) = spoofed_syn_flood(&pair, PORT, MAX_FRAMES, SECONDS).join().unwrap();
        let answered = syncookies_sent(&pair.server) - before;
        assert!(Pair::output(&pair.server, "sysctl", &["-qw", "net.ipv4.tcp_syncookies=1"]).status.success());
        kernel_rates.push(answered as f64 / secs);
        gen_rates.push(sent as f64 / secs);
    }
    let (f, fmin, fmax) = median(&mut fw_rates.clone());
    let (k, kmin, kmax) = median(&mut kernel_rates.clone());
    let (g, gmin, gmax) = median(&mut gen_rates);
    let mut ratios: Vec<f64> = fw_rates.iter().zip(&kernel_rates).map(|(a, b)| a / b).collect();
    let (r, rmin, rmax) = median(&mut ratios);
    println!("\nSpoofed SYN flood on veth ({ROUNDS} interleaved rounds of {} s; AF_PACKET generator, one CPU):", SECONDS.as_secs());
    println!("| mode | SYN-ACKs answered per second (median, min-max) |");
    println!("|---|---|");
    println!("| firewall, cookie mode (native XDP, XDP_TX) | {f:.0} ({fmin:.0}-{fmax:.0}) |");
    println!("| kernel, tcp_syncookies=2, no firewall | {k:.0} ({kmin:.0}-{kmax:.0}) |");
    println!("| generator (SYNs offered per second) | {g:.0} ({gmin:.0}-{gmax:.0}) |");
    println!("firewall / kernel, pair by pair: {r:.2} ({rmin:.2}-{rmax:.2})");
}
