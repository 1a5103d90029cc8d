//! The data plane outlives its controller: SIGKILL under traffic, restart
//! and adoption, reloads under load, an upgrade refused across a layout
//! change, several interfaces with one connection table, `stop`/`status`.
//! The controller runs in the server's network namespace only (`nsenter
//! --net`), so its pins land in the host's bpffs as on a real host.

mod common;

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    process::{Command, Output},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    netns::{Guarded, OnDrop, Pair, attach_peer_pass, wait_for},
    json_output, reason_packets, rule_packets, temp_policy,
};
use serde_json::Value;

const FIREWALL: &str = env!("CARGO_BIN_EXE_firewall");

const POLICY: &str = r#"
[settings]
default = "drop"
established = "accept"
related = "accept"

[[rule]]
name = "web"
proto = "tcp"
dport = 8080
action = "accept"

[[rule]]
name = "shop"
proto = "tcp"
dport = 8443
action = "accept"
syncookie = "always"
"#;

/// A command in the network namespace `ns` only (the host's mount
/// namespace, hence its bpffs).
fn in_net(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}")).arg(FIREWALL).args(args);
    c
}

fn fw_output(ns: &str, args: &[&str]) -> Output {
    in_net(ns, args).output().expect("spawn firewall")
}

fn json(ns: &str, args: &[&str]) -> Result<Value, String> {
    json_output(fw_output(ns, args))
}

/// A controller with its stderr collected line by line.
struct Controller {
    child: Guarded,
    log: Arc<Mutex<Vec<String>>>,
}

impl Controller {
    fn start(ns: &str, ifaces: &[&str], policy: &Path, extra: &[&str]) -> Self {
        let mut args = vec!["run", "--policy", policy.to_str().unwrap()];
        for i in ifaces {
            args.extend(["--iface", i]);
        }
        args.extend(extra);
        let c = Self::spawn(in_net(ns, &args));
        // Ready once it says which policy generation it runs.
        c.wait_log("the policy in force", |l| l.contains(", generation "));
        c
    }

    /// Starts `cmd` (a `firewall run`) at log level info, without waiting.
    fn spawn(mut cmd: Command) -> Self {
        cmd.env("RUST_LOG", "info");
        let mut child = Guarded::spawn(cmd);
        let stderr = child.child().stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Controller { child, log }
    }

    fn pid(&mut self) -> i32 {
        self.child.child().id() as i32
    }

    fn text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for a log line; panics with the log when the controller exits first.
    fn wait_log(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| f(l)) {
                return l.clone();
            }
            assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting for {what}; log:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill9(mut self) {
        let child = self.child.child();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let status = self.child.child().wait().unwrap();
        // The stderr reader ends with the process.
        std::thread::sleep(Duration::from_millis(50));
        (status, self.text())
    }
}

/// The id of the XDP program on `ifname` in `ns`, if any (`ip link`).
fn xdp_prog_id(ns: &str, ifname: &str) -> Option<u64> {
    let out = Command::new("ip").args(["-n", ns, "-d", "link", "show", ifname]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let i = text.find("prog/xdp id ")?;
    text[i + 12..].split_whitespace().next()?.parse().ok()
}

/// Removes whatever a failed test left pinned in namespace `ns`.
fn stop_on_drop(ns: &str) -> OnDrop<impl FnMut()> {
    let ns = ns.to_owned();
    OnDrop(move || {
        let _ = fw_output(&ns, &["stop"]);
    })
}

/// A server in `ns` on `ip:port` echoing every line on each connection.
fn line_echo_server(ns: &str, ip: &str, port: u16) {
    let ip = ip.to_owned();
    Pair::within(ns, move || {
        let l = TcpListener::bind((ip.as_str(), port)).expect("bind");
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut w = conn.try_clone().unwrap();
                    for line in std::io::BufReader::new(conn).lines().map_while(Result::ok) {
                        if w.write_all(format!("{line}\n").as_bytes()).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    })
    .join()
    .unwrap();
}

/// A client connection in the client namespace that sends a line and
/// reads it back.
struct Echo {
    w: TcpStream,
    r: std::io::BufReader<TcpStream>,
}

impl Echo {
    fn connect(ns: &str, addr: SocketAddr) -> std::io::Result<Echo> {
        Pair::within(ns, move || {
            let s = TcpStream::connect_timeout(&addr, Duration::from_millis(1500))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            Ok(Echo { r: std::io::BufReader::new(s.try_clone()?), w: s })
        })
        .join()
        .unwrap()
    }

    /// Segments this connection retransmitted (TCP_INFO).
    fn retransmits(&self) -> u32 {
        use std::os::fd::AsRawFd as _;
        // SAFETY: tcp_info is plain integers; getsockopt fills at most `len` bytes.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: a live socket and a buffer of `len` bytes.
        let rc = unsafe { libc::getsockopt(self.w.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, (&mut info as *mut libc::tcp_info).cast(), &mut len) };
        assert_eq!(rc, 0, "TCP_INFO");
        info.tcpi_total_retrans
    }

    fn round_trip(&mut self, msg: &str) -> std::io::Result<String> {
        self.w.write_all(format!("{msg}\n").as_bytes())?;
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        Ok(line.trim_end().to_owned())
    }
}

/// `nft` in namespace `ns`.
fn nft(ns: &str, rules: &str) {
    let out = Command::new("ip").args(["netns", "exec", ns, "nft", "-f", "-"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().and_then(|mut c| {
        c.stdin.take().unwrap().write_all(rules.as_bytes())?;
        c.wait_with_output()
    }).expect("nft runs (package nftables)");
    assert!(out.status.success(), "nft {rules}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Holds back the client's bare ACKs to `port` (TCP flags exactly ACK), so
/// that a connect completes on the client's side while the server's side
/// of a cookie handshake has not seen its ACK yet.
fn hold_bare_acks(pair: &Pair, port: u16) {
    nft(&pair.client, &format!("table inet hold {{\n chain out {{\n type filter hook output priority 0;\n tcp dport {port} tcp flags == ack drop\n }}\n}}\n"));
}

fn release_bare_acks(pair: &Pair) {
    nft(&pair.client, "delete table inet hold\n");
}

/// kill -9 of the controller under traffic: enforcement goes on, `stats`
/// still reads; a restart adopts everything (counters, flows, the cookie
/// key of a handshake in flight) and swaps the programs without a gap.
#[test]
fn sigkill_keeps_enforcing_and_a_restart_adopts_everything() {
    let pair = Pair::new();
    let _peer = attach_peer_pass(&pair);
    let _cleanup = stop_on_drop(&pair.server);
    line_echo_server(&pair.server, &pair.server_ip, 8080);
    line_echo_server(&pair.server, &pair.server_ip, 8081);
    line_echo_server(&pair.server, &pair.server_ip, 8443);
    let web: SocketAddr = format!("{}:8080", pair.server_ip).parse().unwrap();
    let closed: SocketAddr = format!("{}:8081", pair.server_ip).parse().unwrap();
    let shop: SocketAddr = format!("{}:8443", pair.server_ip).parse().unwrap();
    // With a named set, whose run-time element must outlive the controller.
    let with_set = format!("{POLICY}\n[[set]]\nname = \"banned\"\ntype = \"addr\"\n\n[[rule]]\nname = \"banned\"\nsrc = \"@banned\"\naction = \"drop\"\n");
    let (_dir, policy) = temp_policy(&with_set);
    let fw = Controller::start(&pair.server, &[&pair.server_if], &policy, &[]);
    assert!(fw_output(&pair.server, &["set", "add", "banned", "198.18.0.7", "--timeout", "1h"]).status.success());

    // A long-lived connection, kept busy by a thread for the whole test.
    let mut conn = Echo::connect(&pair.client, web).expect("web connects");
    assert_eq!(conn.round_trip("hello").unwrap(), "hello");
    let stop = Arc::new(AtomicBool::new(false));
    let (exchanged, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(Mutex::new(None::<String>)));
    // The longest round trip, in microseconds: a gap in enforcement or a
    // dropped segment (retransmitted after 200 ms or more) shows here.
    let slowest = Arc::new(AtomicU64::new(0));
    let busy = {
        let (stop, exchanged, failed, slowest) = (stop.clone(), exchanged.clone(), failed.clone(), slowest.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let reply = conn.round_trip(&format!("msg {n}"));
                slowest.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                match reply {
                    Ok(r) if r == format!("msg {n}") => {
                        n += 1;
                        exchanged.store(n, Ordering::Relaxed);
                    }
                    other => {
                        *failed.lock().unwrap() = Some(format!("after {n} messages: {other:?}"));
                        return 0;
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            conn.retransmits()
        })
    };
    assert!(Echo::connect(&pair.client, closed).is_err(), "8081 is not allowed");
    // Datagrams to a port the policy drops, sent all through the kill and
    // the takeover: one that reached the server would have passed unjudged.
    let leaked = Arc::new(AtomicU64::new(0));
    let sink = {
        let (ip, leaked, stop) = (pair.server_ip.clone(), leaked.clone(), stop.clone());
        let sock = Pair::within(&pair.server, move || UdpSocket::bind((ip.as_str(), 5999)).unwrap()).join().unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if sock.recv(&mut buf).is_ok() {
                    leaked.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let drops_base = reason_packets(&json(&pair.server, &["stats", "--json"]).unwrap(), "default_drop");
    let probes = Arc::new(AtomicU64::new(0));
    let prober = {
        let (dst, local, probes, stop) = (format!("{}:5999", pair.server_ip), format!("{}:0", pair.client_ip), probes.clone(), stop.clone());
        Pair::within(&pair.client, move || {
            let s = UdpSocket::bind(local).unwrap();
            // Bounded: at most 100,000, about 5,000 a second.
            while !stop.load(Ordering::Relaxed) && probes.load(Ordering::Relaxed) < 100_000 {
                if s.send_to(b"probe", &dst).is_ok() {
                    probes.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };

    // A cookie handshake begun before the restart: the client's side is
    // established, its ACK held back.
    hold_bare_acks(&pair, 8443);
    let mut pending = Echo::connect(&pair.client, shop).expect("the cookie SYN-ACK completes the client's connect");

    let before_kill = json(&pair.server, &["stats", "--json"]).unwrap();
    let prog_before = xdp_prog_id(&pair.server, &pair.server_if).expect("XDP attached");
    fw.kill9();

    // Nobody controls the data plane now.
    assert_eq!(xdp_prog_id(&pair.server, &pair.server_if), Some(prog_before), "XDP stays attached after SIGKILL");
    let at = exchanged.load(Ordering::Relaxed);
    wait_for("the connection to carry data with the controller dead", Duration::from_secs(5), || {
        (exchanged.load(Ordering::Relaxed) > at + 20).then_some(())
    });
    assert!(Echo::connect(&pair.client, closed).is_err(), "8081 stays dropped with the controller dead");
    let dead = json(&pair.server, &["stats", "--json"]).expect("stats reads a data plane without controller");
    assert!(reason_packets(&dead, "established") > reason_packets(&before_kill, "established"), "the data plane still counts");
    let status = json(&pair.server, &["status", "--json"]).unwrap();
    assert_eq!(status[0]["controller_alive"], false, "{status}");
    let flows_dead = status[0]["flows"].as_u64().unwrap();
    // The web connection's; a cookie handshake in flight has none (stateless).
    assert!(flows_dead >= 1, "the web flow is in the table: {status}");

    // Restart: adopts.
    let t = Instant::now();
    let fw = Controller::start(&pair.server, &[&pair.server_if], &policy, &[]);
    let takeover = t.elapsed();
    fw.wait_log("the takeover", |l| l.contains("programs replaced atomically"));
    let prog_after = xdp_prog_id(&pair.server, &pair.server_if).expect("XDP attached");
    assert_ne!(prog_after, prog_before, "the restarted controller's programs run");
    let after = json(&pair.server, &["stats", "--json"]).unwrap();
    // No new web connection since: the rule's counter is carried exactly
    // (not lost, not doubled).
    assert_eq!(rule_packets(&after, "web"), rule_packets(&dead, "web"), "rule counters continue");
    assert!(rule_packets(&after, "web") >= 1);
    assert!(reason_packets(&after, "established") >= reason_packets(&dead, "established"));
    let status = json(&pair.server, &["status", "--json"]).unwrap();
    assert_eq!(status[0]["controller_alive"], true, "{status}");
    assert!(status[0]["flows"].as_u64().unwrap() >= flows_dead, "flows kept: {status}");
    let at = exchanged.load(Ordering::Relaxed);
    wait_for("the connection to carry data after the restart", Duration::from_secs(5), || {
        (exchanged.load(Ordering::Relaxed) > at + 20).then_some(())
    });
    assert!(Echo::connect(&pair.client, closed).is_err(), "8081 stays dropped after the restart");
    // The set kept its run-time element (and its timeout) through the kill and the takeover.
    let banned = json(&pair.server, &["set", "list", "banned", "--json"]).unwrap();
    assert_eq!(banned["elements"][0]["element"], "198.18.0.7", "{banned}");
    assert!(banned["elements"][0]["expires_in"].as_u64().unwrap() > 3000, "{banned}");

    // The held-back handshake completes: its first data segment carries the
    // ACK of the cookie, validated with the key the killed controller made.
    release_bare_acks(&pair);
    assert_eq!(pending.round_trip("late").expect("the cookie handshake begun before the restart completes"), "late");
    let s = json(&pair.server, &["stats", "--json"]).unwrap();
    let shop_svc = s["services"].as_array().unwrap().iter().find(|v| v["name"] == "shop").unwrap().clone();
    assert!(shop_svc["acks_valid"].as_u64().unwrap() >= 1, "{shop_svc}");

    stop.store(true, Ordering::Relaxed);
    let retransmits = busy.join().unwrap();
    prober.join().unwrap();
    sink.join().unwrap();
    assert!(probes.load(Ordering::Relaxed) > 1000, "probes ran across the restart");
    assert_eq!(leaked.load(Ordering::Relaxed), 0, "of {} datagrams to a dropped port sent across kill and takeover, some passed", probes.load(Ordering::Relaxed));
    assert!(failed.lock().unwrap().is_none(), "the established connection was never cut: {:?}", failed.lock().unwrap());
    // Every probe met the firewall: they are the positive control of `leaked`.
    let drops = reason_packets(&json(&pair.server, &["stats", "--json"]).unwrap(), "default_drop") - drops_base;
    assert!(drops >= probes.load(Ordering::Relaxed) * 9 / 10, "{drops} default drops for {} probes", probes.load(Ordering::Relaxed));
    let slowest_ms = slowest.load(Ordering::Relaxed) as f64 / 1000.0;
    println!("restart: {} messages over one connection across SIGKILL and restart, slowest round trip {slowest_ms:.1} ms, {retransmits} retransmissions; {} datagrams to a dropped port, 0 passed; takeover {:.2} s; XDP prog {prog_before} -> {prog_after}", exchanged.load(Ordering::Relaxed), probes.load(Ordering::Relaxed), takeover.as_secs_f64());
    assert_eq!(retransmits, 0, "the connection lost no segment across kill and takeover (slowest round trip {slowest_ms} ms)");

    // Without --keep, SIGTERM detaches and removes the pins.
    let (status, log) = fw.terminate();
    assert!(status.success(), "{log}");
    assert_eq!(xdp_prog_id(&pair.server, &pair.server_if), None, "detached on SIGTERM");
    let status = json(&pair.server, &["status", "--json"]).unwrap();
    assert_eq!(status.as_array().unwrap().len(), 0, "{status}");
}

/// Two policies alternated hundreds of times under traffic: each packet is
/// judged by one or the other. A `web` packet judged by a mix (one
/// policy's tree, the other's rule numbering) would land in a trap rule
/// that neither policy alone sends it to; `trap` has the same name in both,
/// so its counter is carried through every reload and the last reading
/// covers them all. A broken policy in the middle
/// leaves the running one in force. `web` keeps its counter across every
/// reload (same name, other position).
#[test]
fn reloads_under_load_never_mix_policies_and_keep_counters() {
    const A: &str = "[settings]\ndefault = \"drop\"\nestablished = \"rules\"\n\n[[rule]]\nname = \"web\"\nproto = \"udp\"\ndport = 5000\naction = \"accept\"\n\n[[rule]]\nname = \"trap\"\nproto = \"udp\"\ndport = 5001\naction = \"accept\"\n";
    const B: &str = "[settings]\ndefault = \"drop\"\nestablished = \"rules\"\n\n[[rule]]\nname = \"trap\"\nproto = \"udp\"\ndport = 5001\naction = \"accept\"\n\n[[rule]]\nname = \"web\"\nproto = \"udp\"\ndport = 5000\naction = \"accept\"\n\n[[rule]]\nname = \"trap-b2\"\nproto = \"udp\"\ndport = 5002\naction = \"drop\"\n";
    const RELOADS: u64 = 300;
    let pair = Pair::new();
    let _cleanup = stop_on_drop(&pair.server);
    let (dir, policy) = temp_policy(A);
    let mut fw = Controller::start(&pair.server, &[&pair.server_if], &policy, &[]);
    let pid = fw.pid();

    let received = Arc::new(AtomicU64::new(0));
    let server_ip = pair.server_ip.clone();
    let rx = received.clone();
    let sock = Pair::within(&pair.server, move || UdpSocket::bind((server_ip.as_str(), 5000)).unwrap()).join().unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_rx = stop.clone();
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !stop_rx.load(Ordering::Relaxed) {
            if sock.recv(&mut buf).is_ok() {
                rx.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Drain what is queued.
        while sock.recv(&mut buf).is_ok() {
            rx.fetch_add(1, Ordering::Relaxed);
        }
    });
    let sent = Arc::new(AtomicU64::new(0));
    let (tx, stop_tx) = (sent.clone(), stop.clone());
    let (dst, local) = (format!("{}:5000", pair.server_ip), format!("{}:0", pair.client_ip));
    // Paced, bounded: at most 200,000 datagrams, about 20,000 a second.
    let sender = Pair::within(&pair.client, move || {
        let s = UdpSocket::bind(local).unwrap();
        let start = Instant::now();
        let mut n = 0u64;
        while !stop_tx.load(Ordering::Relaxed) && n < 200_000 && start.elapsed() < Duration::from_secs(60) {
            if s.send_to(b"datagram", &dst).is_ok() {
                n += 1;
                tx.store(n, Ordering::Relaxed);
            }
            if n % 20 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });

    let generation = |line: &str| -> Option<u64> { line.split("generation ").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok() };
    let mut last = 1u64;
    let start = Instant::now();
    for i in 0..RELOADS {
        // Written whole, then renamed: a reader never sees half a file.
        let next = dir.0.join("next.toml");
        if i == RELOADS / 2 {
            std::fs::write(&next, "[[rule]]\nname = \"broken\"\nproto = \"tcp\"\ndport = 99999\naction = \"accept\"\n").unwrap();
            std::fs::rename(&next, &policy).unwrap();
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGHUP) };
            let refused = fw.wait_log("the broken policy to be refused", |l| l.contains("failed; keeping the running policy"));
            let running = generation(&refused).expect("the refusal names the generation in force");
            let s = json(&pair.server, &["stats", "--json"]).unwrap();
            assert_eq!(s["generation"].as_u64().unwrap(), running, "a broken policy changes nothing: {refused}");
            assert!(running >= last);
            assert!(s["rules"].as_array().unwrap().iter().any(|r| r["name"] == "web"));
        }
        std::fs::write(&next, if i % 2 == 0 { B } else { A }).unwrap();
        std::fs::rename(&next, &policy).unwrap();
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGHUP) };
        let want = last + 1;
        let line = fw.wait_log("the reload", |l| l.contains("reloaded") && generation(l).is_some_and(|g| g >= want));
        last = generation(&line).unwrap();
        // The file poll may reload the same file once more.
        if let Some(g) = fw.log.lock().unwrap().iter().rev().filter_map(|l| l.contains("reloaded").then(|| generation(l)).flatten()).max() {
            last = last.max(g);
        }
    }
    let reload_secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    receiver.join().unwrap();
    let s = json(&pair.server, &["stats", "--json"]).unwrap();
    let rules = s["rules"].as_array().unwrap().clone();
    let web = rule_packets(&s, "web");
    let (sent, received) = (sent.load(Ordering::Relaxed), received.load(Ordering::Relaxed));
    println!("reload under load: {last} generations ({RELOADS} reloads + 1 refused) in {reload_secs:.1} s while {sent} datagrams were sent; web counted {web}, the server received {received}");
    for r in &rules {
        if r["name"].as_str().unwrap().starts_with("trap") {
            assert_eq!(r["packets"], 0, "a packet was judged by a mix of the two policies: {r}");
        }
    }
    assert!(last > RELOADS, "every reload took effect: generation {last}");
    assert!(received > 10_000, "traffic flowed during the reloads: {received}");
    // Every datagram the server got was counted by `web`, across every
    // reload (the counter survives reloads by name).
    assert!(web >= received && web <= sent, "web counted {web}; sent {sent}, received {received}");
    let (status, log) = fw.terminate();
    assert!(status.success(), "{log}");
}

/// An upgrade across a layout change is refused, with the old data plane
/// left running; with the layout the same, a new controller replaces it.
#[test]
fn an_incompatible_upgrade_is_refused_and_the_old_data_plane_runs_on() {
    let pair = Pair::new();
    let _cleanup = stop_on_drop(&pair.server);
    line_echo_server(&pair.server, &pair.server_ip, 8080);
    line_echo_server(&pair.server, &pair.server_ip, 8081);
    let web: SocketAddr = format!("{}:8080", pair.server_ip).parse().unwrap();
    let closed: SocketAddr = format!("{}:8081", pair.server_ip).parse().unwrap();
    let (_dir, policy) = temp_policy(POLICY);
    let fw = Controller::start(&pair.server, &[&pair.server_if], &policy, &["--keep"]);
    let (status, log) = fw.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("stays pinned"), "{log}");
    let prog = xdp_prog_id(&pair.server, &pair.server_if).expect("--keep leaves XDP attached");
    let mut conn = Echo::connect(&pair.client, web).expect("web connects with the controller gone");
    assert_eq!(conn.round_trip("one").unwrap(), "one");

    // Make the pinned data plane look like another build's.
    let status = json(&pair.server, &["status", "--json"]).unwrap();
    let control = Path::new(status[0]["pinned_at"].as_str().unwrap()).join("shared/FW_CONTROL");
    let set_layout = |layout: u32| {
        let data = aya::maps::MapData::from_pin(&control).unwrap();
        let mut m: aya::maps::Array<_, firewall_common::Control> = aya::maps::Array::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap();
        let mut c = m.get(&0, 0).unwrap();
        let old = c.layout;
        c.layout = layout;
        m.set(0, &c, 0).unwrap();
        old
    };
    let ours = set_layout(firewall_common::LAYOUT_VERSION + 1);
    assert_eq!(ours, firewall_common::LAYOUT_VERSION);
    let out = in_net(&pair.server, &["run", "--iface", &pair.server_if, "--policy", policy.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "an incompatible data plane is not taken over (exit 3: the unit does not restart on it)");
    assert!(err.contains("refusing to take over") && err.contains("keeps running"), "{err}");
    assert_eq!(xdp_prog_id(&pair.server, &pair.server_if), Some(prog), "the old programs still run");
    assert_eq!(conn.round_trip("two").unwrap(), "two", "the old data plane still passes its connections");
    assert!(Echo::connect(&pair.client, closed).is_err(), "and still drops what its policy drops");

    set_layout(ours);

    // A deliberately changed object: the interface's status map pinned
    // with another size, as a build that changed it would have made it.
    let status_pin = Path::new(status[0]["pinned_at"].as_str().unwrap()).join("iface").join(&pair.server_if).join(firewall_common::maps::STATUS);
    let original = aya::maps::MapData::from_pin(&status_pin).unwrap();
    std::fs::remove_file(&status_pin).unwrap();
    drop(
        aya::EbpfLoader::new()
            .map_max_entries(firewall_common::maps::STATUS, 4)
            .map_pin_path(firewall_common::maps::STATUS, status_pin.as_path())
            .load(firewall_user::loader::EBPF_OBJECT)
            .expect("the changed object's maps are created"),
    );
    let out = in_net(&pair.server, &["run", "--iface", &pair.server_if, "--policy", policy.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "a data plane with another map layout is not taken over");
    assert!(err.contains("refusing to take over") && err.contains(firewall_common::maps::STATUS) && err.contains("max_entries"), "{err}");
    assert_eq!(xdp_prog_id(&pair.server, &pair.server_if), Some(prog), "the old programs still run");
    assert_eq!(conn.round_trip("two and a half").unwrap(), "two and a half");
    std::fs::remove_file(&status_pin).unwrap();
    original.pin(&status_pin).unwrap();

    // A shared map's pin gone (as in a layout without it): refused before
    // the load, which would pin an empty one (empty flow hints beside a
    // full table would hide flows from SYNs).
    let hint_pin = Path::new(status[0]["pinned_at"].as_str().unwrap()).join("shared").join(firewall_common::maps::FLOW_HINTS);
    let hints = aya::maps::MapData::from_pin(&hint_pin).unwrap();
    std::fs::remove_file(&hint_pin).unwrap();
    let out = in_net(&pair.server, &["run", "--iface", &pair.server_if, "--policy", policy.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "a data plane missing a shared map is not taken over: {err}");
    assert!(err.contains("has no map") && err.contains(firewall_common::maps::FLOW_HINTS), "{err}");
    assert!(!hint_pin.exists(), "no empty map was pinned in its place");
    assert_eq!(conn.round_trip("two and three quarters").unwrap(), "two and three quarters");
    hints.pin(&hint_pin).unwrap();

    // Same layout again: the new build's programs replace the old ones.
    let fw = Controller::start(&pair.server, &[&pair.server_if], &policy, &[]);
    fw.wait_log("the takeover", |l| l.contains("took over"));
    assert_ne!(xdp_prog_id(&pair.server, &pair.server_if), Some(prog), "replaced");
    assert_eq!(conn.round_trip("three").unwrap(), "three", "a connection across the upgrade");
    let (status, log) = fw.terminate();
    assert!(status.success(), "{log}");
}

/// One controller on two interfaces: one policy, one connection table. The
/// host opens a connection that leaves by one interface and whose replies
/// come back by the other; with default drop and no inbound rule, only the
/// shared table lets them in. Counters are per interface.
#[test]
fn two_interfaces_share_one_connection_table() {
    let pair = Pair::new();
    let _cleanup = stop_on_drop(&pair.server);
    let (c2, s2, _, _) = second_link(&pair);
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    };
    // The client answers the server's first address by the second link.
    ip(&["-n", &pair.client, "route", "add", &format!("{}/32", pair.server_ip), "dev", &c2]);
    for ns in [&pair.client, &pair.server] {
        let out = Command::new("ip").args(["netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"]).output().unwrap();
        assert!(out.status.success());
    }
    for dev in [&pair.server_if, &s2] {
        let out = Command::new("ip").args(["netns", "exec", &pair.server, "sysctl", "-qw", &format!("net.ipv4.conf.{dev}.rp_filter=0")]).output().unwrap();
        assert!(out.status.success());
    }
    line_echo_server(&pair.client, &pair.client_ip, 9000);
    let (_dir, policy) = temp_policy("[settings]\ndefault = \"drop\"\nestablished = \"accept\"\n\n[[rule]]\nname = \"web\"\nproto = \"tcp\"\ndport = 8080\naction = \"accept\"\n");
    let fw = Controller::start(&pair.server, &[&pair.server_if, &s2], &policy, &[]);
    let status = json(&pair.server, &["status", "--json"]).unwrap();
    assert_eq!(status.as_array().unwrap().len(), 1, "one firewall: {status}");
    assert_eq!(status[0]["interfaces"].as_array().unwrap().len(), 2, "on two interfaces: {status}");

    // Out by the first interface, back by the second.
    let dst: SocketAddr = format!("{}:9000", pair.client_ip).parse().unwrap();
    let mut conn = Echo::connect(&pair.server, dst).expect("the host's connection is answered by the other interface");
    for i in 0..50 {
        assert_eq!(conn.round_trip(&format!("m{i}")).unwrap(), format!("m{i}"));
    }
    let first = json(&pair.server, &["stats", "--iface", &pair.server_if, "--json"]).unwrap();
    let second = json(&pair.server, &["stats", "--iface", &s2, "--json"]).unwrap();
    let all = json(&pair.server, &["stats", "--json"]).unwrap();
    let est = |v: &Value| reason_packets(v, "established");
    assert!(est(&second) >= 50, "the replies arrive on {s2}: {second}");
    assert_eq!(est(&first), 0, "nothing arrives on {}", pair.server_if);
    assert_eq!(est(&all), est(&first) + est(&second), "stats without --iface sums the interfaces");
    let flows = json(&pair.server, &["conntrack", "--json"]).unwrap();
    let ours: Vec<&Value> = flows.as_array().unwrap().iter().filter(|f| f["dport"] == 9000 || f["sport"] == 9000).collect();
    assert_eq!(ours.len(), 1, "one flow in the one table: {flows}");

    // `stop --iface` on the second interface stops the whole firewall.
    let out = fw_output(&pair.server, &["stop", "--iface", &s2]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(xdp_prog_id(&pair.server, &pair.server_if), None);
    assert_eq!(xdp_prog_id(&pair.server, &s2), None);
    let mut fw = fw;
    let status = fw.child.child().wait().unwrap();
    assert!(status.success(), "the controller exits cleanly on stop");
}

/// `ip netns exec` hides the host's bpffs: the data plane then lasts only
/// as long as the controller, and it says so at start.
#[test]
fn without_the_hosts_bpffs_the_controller_says_so_and_detaches_on_exit() {
    let pair = Pair::new();
    let (_dir, policy) = temp_policy(POLICY);
    let mut child = Guarded::spawn({
        let mut c = Pair::exec(&pair.server, FIREWALL, &["run", "--iface", &pair.server_if, "--policy", policy.to_str().unwrap()]);
        c.env("RUST_LOG", "info");
        c
    });
    wait_for("XDP attached", Duration::from_secs(30), || {
        assert!(child.child().try_wait().unwrap().is_none(), "the controller exited early");
        xdp_prog_id(&pair.server, &pair.server_if)
    });
    child.child().kill().unwrap();
    child.child().wait().unwrap();
    let mut err = String::new();
    child.child().stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("lasts only as long as this controller"), "{err}");
    // Its private bpffs went with its mount namespace.
    wait_for("XDP detached with the private bpffs", Duration::from_secs(5), || xdp_prog_id(&pair.server, &pair.server_if).is_none().then_some(()));
}

/// A second veth pair between the pair's namespaces, 10.232.N.1 (client)
/// and .2 (server); returns (client end, server end, client ip, server ip).
fn second_link(pair: &Pair) -> (String, String, String, String) {
    let n: u32 = pair.client_ip.split('.').nth(2).unwrap().parse().unwrap();
    let (c2, s2) = (format!("{}x", pair.client_if), format!("{}x", pair.server_if));
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    };
    ip(&["link", "add", &c2, "netns", &pair.client, "type", "veth", "peer", "name", &s2, "netns", &pair.server]);
    let (c2_ip, s2_ip) = (format!("10.232.{n}.1"), format!("10.232.{n}.2"));
    ip(&["-n", &pair.client, "addr", "add", &format!("{c2_ip}/24"), "dev", &c2]);
    ip(&["-n", &pair.server, "addr", "add", &format!("{s2_ip}/24"), "dev", &s2]);
    ip(&["-n", &pair.client, "link", "set", &c2, "up"]);
    ip(&["-n", &pair.server, "link", "set", &s2, "up"]);
    (c2, s2, c2_ip, s2_ip)
}

/// Start-up and naming edge cases: a SIGHUP while the controller is still
/// loading is queued (not fatal); an interface named twice is attached
/// once; a firewall directory named after an interface the firewall no
/// longer has is never reused for another firewall.
#[test]
fn startup_signals_duplicate_interfaces_and_directory_names() {
    let pair = Pair::new();
    let _cleanup = stop_on_drop(&pair.server);
    let (_c2, s2, _, _) = second_link(&pair);
    let (_dir, policy) = temp_policy(POLICY);
    let a = pair.server_if.clone();

    // SIGHUP and a duplicate --iface during start-up; readiness told to a
    // service manager's notify socket (as systemd's Type=notify).
    let notify_dir = common::TempDir::new();
    let notify_path = notify_dir.0.join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut cmd = in_net(&pair.server, &["run", "--iface", &a, "--iface", &a, "--policy", policy.to_str().unwrap(), "--keep"]);
    cmd.env("NOTIFY_SOCKET", &notify_path);
    let mut fw = Controller::spawn(cmd);
    fw.wait_log("loading", |l| l.contains("signals are queued"));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(fw.pid(), libc::SIGHUP) };
    // Loading and verifying takes seconds: the signal came before the start-up was done.
    assert!(!fw.text().contains(", generation "), "the SIGHUP arrived during start-up:\n{}", fw.text());
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY on the notify socket");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("READY=1") && msg.contains(&format!("MAINPID={}", fw.pid())), "{msg}");
    assert!(xdp_prog_id(&pair.server, &a).is_some(), "READY only once the interface is attached");
    fw.wait_log("the reload the early SIGHUP asked for", |l| l.contains("reloaded") && l.contains("SIGHUP"));
    let status = json(&pair.server, &["status", "--json"]).unwrap();
    assert_eq!(status[0]["interfaces"].as_array().unwrap().len(), 1, "one attachment for a twice-named interface: {status}");
    let (st, log) = fw.terminate();
    assert!(st.success(), "{log}");

    // The firewall `a` (kept) now also gets s2, then gives up a.
    let fw = Controller::start(&pair.server, &[&a, &s2], &policy, &["--keep"]);
    let (st, log) = fw.terminate();
    assert!(st.success(), "{log}");
    let fw = Controller::start(&pair.server, &[&s2], &policy, &["--keep"]);
    fw.wait_log("a detached", |l| l.contains(&format!("detached from {a}")));
    let (st, log) = fw.terminate();
    assert!(st.success(), "{log}");
    let prog_s2 = xdp_prog_id(&pair.server, &s2).expect("s2 kept");
    assert_eq!(xdp_prog_id(&pair.server, &a), None);
    // A new firewall on a: the directory `a` holds s2's firewall.
    let fw = Controller::start(&pair.server, &[&a], &policy, &[]);
    let status = json(&pair.server, &["status", "--json"]).unwrap();
    let names: Vec<&str> = status.as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 2, "two firewalls: {status}");
    assert!(names.contains(&format!("{a}-2").as_str()), "the new one gets a name of its own: {status}");
    assert_eq!(xdp_prog_id(&pair.server, &s2), Some(prog_s2), "the other firewall is untouched");
    let (st, log) = fw.terminate();
    assert!(st.success(), "{log}");
    assert_eq!(xdp_prog_id(&pair.server, &s2), Some(prog_s2), "and still attached after the new one exits");
    let out = fw_output(&pair.server, &["stop"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(xdp_prog_id(&pair.server, &s2), None, "stop detaches at once");
}
