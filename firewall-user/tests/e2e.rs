//! End to end: the `firewall` binary attached (native XDP) to the server's
//! end of a veth pair, real TCP/UDP stacks on both sides in their own
//! network namespaces, `firewall stats` read from a second process.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use common::netns::{Guarded, Pair, wait_for};
use serde_json::Value;

const FIREWALL: &str = env!("CARGO_BIN_EXE_firewall");

const POLICY: &str = r#"
[settings]
default = "drop"

[[rule]]
name = "web"
proto = "tcp"
dport = 8080
action = "accept"

[[rule]]
name = "dns"
proto = "udp"
dport = 5353
action = "accept"
"#;

const POLICY_WITH_5354: &str = r#"
[settings]
default = "drop"

[[rule]]
name = "web"
proto = "tcp"
dport = 8080
action = "accept"

[[rule]]
name = "dns"
proto = "udp"
dport = 5353
action = "accept"

[[rule]]
name = "dns-alt"
proto = "udp"
dport = 5354
action = "accept"
"#;

/// Echo servers in the server namespace: TCP 8080 and 8081, UDP 5353 and
/// 5354. Each TCP connection echoes one message; they run until the
/// namespace goes away (the test process exits soon after).
fn start_servers(pair: &Pair) {
    let ip = pair.server_ip.clone();
    let ready = Pair::within(&pair.server, move || {
        for port in [8080u16, 8081] {
            let l = TcpListener::bind((ip.as_str(), port)).expect("bind tcp");
            std::thread::spawn(move || {
                for conn in l.incoming().flatten() {
                    let mut conn = conn;
                    let mut buf = [0u8; 1024];
                    if let Ok(n) = conn.read(&mut buf) {
                        let _ = conn.write_all(&buf[..n]);
                    }
                }
            });
        }
        for port in [5353u16, 5354] {
            let s = UdpSocket::bind((ip.as_str(), port)).expect("bind udp");
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while let Ok((n, from)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(&buf[..n], from);
                }
            });
        }
    });
    ready.join().expect("servers started");
}

fn tcp_echo(pair: &Pair, port: u16) -> Result<Vec<u8>, String> {
    let addr: SocketAddr = format!("{}:{port}", pair.server_ip).parse().unwrap();
    Pair::within(&pair.client, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(1500)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 64];
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        buf.truncate(n);
        Ok(buf)
    })
    .join()
    .unwrap()
}

/// Sends up to `tries` datagrams, 100 ms apart; true when one is echoed.
fn udp_echo(pair: &Pair, port: u16, tries: u32) -> bool {
    let addr: SocketAddr = format!("{}:{port}", pair.server_ip).parse().unwrap();
    let local = format!("{}:0", pair.client_ip);
    Pair::within(&pair.client, move || {
        let s = UdpSocket::bind(local).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut buf = [0u8; 64];
        for _ in 0..tries {
            s.send_to(b"query", addr).unwrap();
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return &buf[..n] == b"query";
            }
        }
        false
    })
    .join()
    .unwrap()
}

fn stats_json(pair: &Pair) -> Result<Value, String> {
    let out = Pair::output(&pair.server, FIREWALL, &["stats", "--iface", &pair.server_if, "--json"]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

fn rule_packets(stats: &Value, name: &str) -> u64 {
    stats["rules"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("rule {name} in {stats}"))["packets"].as_u64().unwrap()
}

fn reason_packets(stats: &Value, reason: &str) -> u64 {
    stats["reasons"].as_array().unwrap().iter().find(|r| r["reason"] == reason).unwrap()["packets"].as_u64().unwrap()
}

fn start_firewall(pair: &Pair, policy: &Path) -> Guarded {
    let mut fw = Guarded::spawn(Pair::exec(&pair.server, FIREWALL, &["run", "--iface", &pair.server_if, "--policy", policy.to_str().unwrap()]));
    // Ready when a second process can read its counters.
    wait_for("firewall stats to answer", Duration::from_secs(20), || {
        if let Some(status) = fw.child().try_wait().unwrap() {
            let mut err = String::new();
            let _ = fw.child().stderr.take().unwrap().read_to_string(&mut err);
            panic!("firewall exited early ({status}): {err}");
        }
        stats_json(pair).ok()
    });
    fw
}

fn temp_policy(text: &str) -> (tempdir::Dir, std::path::PathBuf) {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("policy.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let p = std::env::temp_dir().join(format!("fw-e2e-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn allowed_traffic_passes_dropped_traffic_does_not_and_stats_show_it() {
    let pair = Pair::new();
    start_servers(&pair);
    let (_dir, policy) = temp_policy(POLICY);
    let fw = start_firewall(&pair, &policy);

    assert_eq!(tcp_echo(&pair, 8080).expect("allowed TCP connection"), b"GET / HTTP/1.0\r\n\r\n");
    let refused = tcp_echo(&pair, 8081);
    assert!(refused.is_err(), "TCP to 8081 must be dropped, got {refused:?}");
    assert!(udp_echo(&pair, 5353, 20), "allowed UDP exchange");
    assert!(!udp_echo(&pair, 5354, 3), "UDP to 5354 must be dropped");

    let stats = stats_json(&pair).expect("stats from a second process");
    // The rule admits the SYN; the rest of the connection is established.
    assert!(rule_packets(&stats, "web") >= 1, "{stats}");
    assert!(reason_packets(&stats, "established") >= 3, "ACK, data, FIN at least: {stats}");
    assert!(rule_packets(&stats, "dns") >= 1, "{stats}");
    // SYN retransmissions to 8081 and the three datagrams to 5354.
    assert!(reason_packets(&stats, "default_drop") >= 4, "{stats}");
    assert_eq!(stats["generation"], 1);
    assert_eq!(stats["default"], "drop");

    let out = fw.terminate();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "firewall exits cleanly on SIGTERM: {log}");
    assert!(log.contains("detached from"), "{log}");
    // Detached: nothing left on the interface, and stats says so.
    let link = Pair::output(&pair.server, "ip", &["link", "show", "dev", &pair.server_if]);
    assert!(!String::from_utf8_lossy(&link.stdout).contains("xdp"), "XDP detached");
    assert!(stats_json(&pair).is_err());
}

#[test]
fn policy_reload_under_traffic_takes_effect_without_detach() {
    let pair = Pair::new();
    start_servers(&pair);
    let (_dir, policy) = temp_policy(POLICY);
    let fw = start_firewall(&pair, &policy);
    assert!(!udp_echo(&pair, 5354, 3), "5354 is dropped before the reload");

    // Keep a TCP flow and UDP traffic going while the file changes.
    let deadline = Instant::now() + Duration::from_secs(10);
    std::fs::write(&policy, POLICY_WITH_5354).unwrap();
    let mut reloaded = false;
    while Instant::now() < deadline && !reloaded {
        assert!(tcp_echo(&pair, 8080).is_ok(), "existing rules keep working during the reload");
        reloaded = udp_echo(&pair, 5354, 5);
    }
    assert!(reloaded, "5354 passes after the file changed");
    let stats = stats_json(&pair).unwrap();
    assert_eq!(stats["generation"], 2, "{stats}");
    assert!(rule_packets(&stats, "dns-alt") >= 1);

    // A broken policy is refused and the running one stays in force.
    std::fs::write(&policy, "[[rule]]\nname = \"x\"\naction = \"maybe\"\n").unwrap();
    // SIGHUP makes the reload happen now rather than at the next poll.
    let pid = fw.0.as_ref().unwrap().id();
    // `ip netns exec` runs the firewall as its own child via exec, so the pid is the firewall's.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    wait_for("the failed reload to be reported", Duration::from_secs(10), || {
        // Still generation 2, and traffic to 5354 still passes.
        let s = stats_json(&pair).ok()?;
        (s["generation"] == 2 && udp_echo(&pair, 5354, 5)).then_some(())
    });
    let out = fw.terminate();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("keeping the running policy"), "{log}");
    assert!(log.contains("policy.toml:3:10"), "the error names file, line and column: {log}");
}

#[test]
fn a_second_firewall_on_the_same_interface_is_refused() {
    let pair = Pair::new();
    let (_dir, policy) = temp_policy(POLICY);
    let _fw = start_firewall(&pair, &policy);
    let out = Pair::output(&pair.server, FIREWALL, &["run", "--iface", &pair.server_if, "--policy", policy.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already has an XDP program attached"), "{err}");
    // The first one is unaffected.
    assert_eq!(stats_json(&pair).expect("first firewall still attached")["generation"], 1);
}

#[test]
fn clear_errors_for_missing_interface_and_broken_policy() {
    let (_dir, policy) = temp_policy(POLICY);
    let out = std::process::Command::new(FIREWALL)
        .args(["run", "--iface", "fw-no-such-if", "--policy", policy.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such interface: fw-no-such-if"));

    let (_dir2, broken) = temp_policy("[settings]\ndefault = \"drop\"\n\n[[rule]]\nname = \"a\"\nproto = \"tcp\"\ndport = \"2000-1000\"\naction = \"accept\"\n");
    let out = std::process::Command::new(FIREWALL).args(["check", broken.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("policy.toml:7:9"), "{err}");

    let out = std::process::Command::new(FIREWALL).args(["check", "../config/default.toml"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// On a plain host (no `ip netns exec`), the maps are pinned per interface
/// under /sys/fs/bpf/firewall/IFACE and `stats` reads them from there; the
/// pins go away when the firewall exits. No traffic: the veth end in the
/// host namespace gets no address.
#[test]
fn maps_are_pinned_per_interface_on_a_plain_host() {
    let pair = Pair::new();
    let host_if = format!("{}h", &pair.server_if[..pair.server_if.len() - 1]);
    let out = std::process::Command::new("ip")
        .args(["link", "add", &host_if, "type", "veth", "peer", "name", "p0", "netns", &pair.client])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Deleted with the namespace holding its peer; also explicitly on the way out.
    struct DelLink(String);
    impl Drop for DelLink {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip").args(["link", "del", &self.0]).status();
        }
    }
    let _link = DelLink(host_if.clone());
    let (_dir, policy) = temp_policy(POLICY);
    let mut fw = Guarded::spawn({
        let mut c = std::process::Command::new(FIREWALL);
        c.args(["run", "--iface", &host_if, "--policy", policy.to_str().unwrap()]);
        c
    });
    let pin = Path::new("/sys/fs/bpf/firewall").join(&host_if);
    let stats = wait_for("stats through the pins", Duration::from_secs(20), || {
        assert!(fw.child().try_wait().unwrap().is_none(), "firewall exited early");
        let out = std::process::Command::new(FIREWALL).args(["stats", "--iface", &host_if, "--json"]).output().unwrap();
        // The firewall pins right after attaching; until then stats finds it by program.
        let v = out.status.success().then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap())?;
        (v["found_via"] == "pinned maps").then_some(v)
    });
    assert_eq!(stats["found_via"], "pinned maps", "{stats}");
    assert!(pin.join("FW_RULE_CNT").exists());
    let out = fw.terminate();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!pin.exists(), "pins removed on exit");
}
