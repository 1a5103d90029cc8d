//! Monitoring from outside the controller: `firewall run --metrics`
//! scraped with a real HTTP client (ureq) inside the server's namespace and
//! parsed with a Prometheus text-format parser (prometheus-parse), the
//! values moving with traffic and reloads; and `stats --watch` in a real
//! terminal (tmux), read off the screen.

mod common;

use std::{
    collections::HashMap,
    io::BufRead as _,
    net::UdpSocket,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{
    netns::{Guarded, OnDrop, Pair, wait_for},
    temp_policy,
};

const FIREWALL: &str = env!("CARGO_BIN_EXE_firewall");

const POLICY: &str = r#"
[settings]
default = "drop"
established = "rules"

[[rule]]
name = "dns"
proto = "udp"
dport = 5353
action = "accept"

[[rule]]
name = "syslog"
proto = "udp"
dport = 5514
action = "accept"
limit = { rate = "1/m", burst = 5, per = "src" }

[[rule]]
name = "shop"
proto = "tcp"
dport = 8443
action = "accept"
syncookie = "always"
"#;

const ADDR: &str = "127.0.0.1:9464";

/// One scrape: every sample as (name, sorted labels) -> value.
fn scrape(ns: &str) -> Result<HashMap<(String, Vec<(String, String)>), f64>, String> {
    let body = Pair::within(ns, || -> Result<String, String> {
        let mut resp = ureq::get(&format!("http://{ADDR}/metrics")).call().map_err(|e| e.to_string())?;
        resp.body_mut().read_to_string().map_err(|e| e.to_string())
    })
    .join()
    .unwrap()?;
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    for s in scrape.samples {
        let v = match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        let mut labels: Vec<(String, String)> = s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        labels.sort();
        out.insert((s.metric, labels), v);
    }
    Ok(out)
}

fn get(m: &HashMap<(String, Vec<(String, String)>), f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.iter()
        .find(|((n, l), _)| n == name && labels.iter().all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v)))
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no {name}{labels:?} in the scrape: {:?}", m.keys().filter(|(n, _)| n == name).collect::<Vec<_>>()))
}

/// `firewall ARGS` in the server's network namespace only.
fn fw_in(pair: &Pair, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}", pair.server)).arg(FIREWALL).args(args);
    c
}

/// Stops whatever a test left pinned in the server's namespace.
fn stop_on_drop(pair: &Pair) -> OnDrop<impl FnMut()> {
    let ns = pair.server.clone();
    OnDrop(move || {
        let _ = Command::new("nsenter").arg(format!("--net=/run/netns/{ns}")).arg(FIREWALL).arg("stop").output();
    })
}

/// `firewall run` on the server's end with `policy` and `extra` flags,
/// its stderr collected line by line.
fn start(pair: &Pair, policy: &std::path::Path, extra: &[&str]) -> (Guarded, Arc<Mutex<Vec<String>>>) {
    let mut args = vec!["run", "--iface", &pair.server_if, "--policy", policy.to_str().unwrap()];
    args.extend(extra);
    let mut c = fw_in(pair, &args);
    c.env("RUST_LOG", "info");
    let mut child = Guarded::spawn(c);
    let stderr = child.child().stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    (child, log)
}

/// `per_10ms` datagrams every 10 ms from the client to the `dns` rule's
/// port, until `stop` (at most 20 s).
fn paced_dns_queries(pair: &Pair, per_10ms: usize, stop: Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<()> {
    let (dst, local) = (format!("{}:5353", pair.server_ip), format!("{}:0", pair.client_ip));
    Pair::within(&pair.client, move || {
        let s = UdpSocket::bind(local).unwrap();
        let start = Instant::now();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && start.elapsed() < Duration::from_secs(20) {
            for _ in 0..per_10ms {
                s.send_to(b"query", &dst).unwrap();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

/// `n` datagrams from the client to the server's `port`.
fn send_udp(pair: &Pair, n: usize, port: u16) {
    let (dst, local) = (format!("{}:{port}", pair.server_ip), format!("{}:0", pair.client_ip));
    Pair::within(&pair.client, move || {
        let s = UdpSocket::bind(local).unwrap();
        for _ in 0..n {
            s.send_to(b"nope", &dst).unwrap();
        }
    })
    .join()
    .unwrap();
}

/// The /24 the client's address is counted under.
fn client_prefix(pair: &Pair) -> String {
    let o: Vec<&str> = pair.client_ip.split('.').collect();
    format!("{}.{}.{}.0/24", o[0], o[1], o[2])
}

/// The events file's lines as JSON, via `firewall events --json`.
fn events_json(pair: &Pair) -> Vec<serde_json::Value> {
    let out = fw_in(pair, &["events", "--json", "--last", "100000"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn metrics_are_served_and_move_with_traffic() {
    let pair = Pair::new();
    let _cleanup = stop_on_drop(&pair);
    let (dir, policy) = temp_policy(POLICY);
    let (mut child, log) = start(&pair, &policy, &["--metrics", ADDR]);
    let before = wait_for("/metrics to answer", Duration::from_secs(30), || {
        assert!(child.child().try_wait().unwrap().is_none(), "the controller exited: {:?}", log.lock().unwrap());
        scrape(&pair.server).ok()
    });
    let iface = pair.server_if.as_str();
    assert_eq!(get(&before, "firewall_policy_generation", &[]), 1.0);
    assert_eq!(get(&before, "firewall_cookie_mode", &[("service", "shop"), ("mode", "always")]), 1.0);
    assert_eq!(get(&before, "firewall_flows_max", &[("table", "proven")]), f64::from(firewall_common::MAX_FLOWS));

    // 200 datagrams to the accepted port, 50 to a dropped one.
    let (dst_ok, dst_drop, local) = (format!("{}:5353", pair.server_ip), format!("{}:5999", pair.server_ip), format!("{}:0", pair.client_ip));
    Pair::within(&pair.client, move || {
        let s = UdpSocket::bind(local).unwrap();
        for i in 0..250 {
            s.send_to(b"query", if i < 200 { &dst_ok } else { &dst_drop }).unwrap();
        }
    })
    .join()
    .unwrap();
    let start = Instant::now();
    let after = loop {
        let m = scrape(&pair.server).unwrap();
        if get(&m, "firewall_reason_packets_total", &[("reason", "default_drop"), ("iface", iface)]) >= 50.0 || start.elapsed() > Duration::from_secs(5) {
            break m;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let dns = |m: &HashMap<_, f64>| get(m, "firewall_rule_packets_total", &[("rule", "dns"), ("action", "accept"), ("iface", iface)]);
    assert_eq!(dns(&after) - dns(&before), 200.0, "every datagram to 5353 counted by its rule");
    assert!(get(&after, "firewall_rule_bytes_total", &[("rule", "dns")]) > get(&before, "firewall_rule_bytes_total", &[("rule", "dns")]));
    let drops = |m: &HashMap<_, f64>| get(m, "firewall_reason_packets_total", &[("reason", "default_drop"), ("verdict", "drop"), ("iface", iface)]);
    assert!(drops(&after) - drops(&before) >= 50.0, "the dropped datagrams counted by reason");
    assert!(get(&after, "firewall_flows", &[("table", "unproven")]) >= 1.0, "the UDP flow is in the table");
    assert!(get(&after, "firewall_program_runs_total", &[("program", "firewall"), ("iface", iface)]) >= 0.0);

    // 20 flows (one datagram each, from 20 ports) to a rule limited to a
    // burst of 5: its limits refused 15, and say so by rule and reason.
    let (dst_log, local) = (format!("{}:5514", pair.server_ip), format!("{}:0", pair.client_ip));
    Pair::within(&pair.client, move || {
        for _ in 0..20 {
            UdpSocket::bind(&local).unwrap().send_to(b"log", &dst_log).unwrap();
        }
    })
    .join()
    .unwrap();
    let refused_by = |m: &HashMap<_, f64>, reason| get(m, "firewall_rule_refused_total", &[("rule", "syslog"), ("reason", reason), ("iface", iface)]);
    let limited = wait_for("the refusals in the metrics", Duration::from_secs(5), || {
        let m = scrape(&pair.server).ok()?;
        (get(&m, "firewall_rule_packets_total", &[("rule", "syslog")]) >= 20.0).then_some(m)
    });
    assert_eq!((refused_by(&limited, "rate_limited"), refused_by(&limited, "conn_limited")), (15.0, 0.0));

    // A reload, then a refused one: both counted, the generation follows.
    let pid = child.child().id() as i32;
    std::fs::write(dir.0.join("next.toml"), format!("{POLICY}\n[[rule]]\nname = \"extra\"\nproto = \"udp\"\ndport = 5354\naction = \"accept\"\n")).unwrap();
    std::fs::rename(dir.0.join("next.toml"), &policy).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let reloaded = wait_for("the reload in the metrics", Duration::from_secs(10), || {
        let m = scrape(&pair.server).ok()?;
        (get(&m, "firewall_policy_generation", &[]) >= 2.0).then_some(m)
    });
    assert!(get(&reloaded, "firewall_reloads_total", &[("result", "ok")]) >= 1.0);
    assert_eq!(dns(&reloaded), dns(&after), "the rule keeps its counter across the reload");
    assert_eq!(refused_by(&reloaded, "rate_limited"), 15.0, "the rule carries on its refusals across the reload");
    std::fs::write(dir.0.join("next.toml"), "[[rule]]\nname = \"bad\"\nproto = \"tcp\"\ndport = 99999\naction = \"accept\"\n").unwrap();
    std::fs::rename(dir.0.join("next.toml"), &policy).unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let refused = wait_for("the refused reload in the metrics", Duration::from_secs(10), || {
        let m = scrape(&pair.server).ok()?;
        (get(&m, "firewall_reloads_total", &[("result", "failed")]) >= 1.0).then_some(m)
    });
    assert_eq!(get(&refused, "firewall_policy_generation", &[]), get(&reloaded, "firewall_policy_generation", &[]));
    // The shipped alert rules and dashboard use only names the scrape has.
    let names: std::collections::HashSet<&str> = refused.keys().map(|(n, _)| n.as_str()).collect();
    for file in ["contrib/prometheus/firewall-alerts.yml", "contrib/grafana/firewall.json"] {
        let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file)).unwrap();
        let mut used: Vec<&str> = text.match_indices("firewall_").map(|(i, _)| {
            let rest = &text[i..];
            &rest[..rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len())]
        }).collect();
        used.dedup();
        assert!(!used.is_empty(), "{file} uses the metrics");
        for name in used {
            assert!(names.contains(name), "{file} uses {name}, which /metrics does not serve");
        }
    }
    let sample: String = Pair::within(&pair.server, || ureq::get(&format!("http://{ADDR}/metrics")).call().unwrap().body_mut().read_to_string().unwrap()).join().unwrap();
    println!("{}", sample.lines().filter(|l| l.contains("dns") || l.contains("generation") || l.contains("cookie_mode") || l.starts_with("firewall_flows")).collect::<Vec<_>>().join("\n"));
}

/// `stats --watch` in a real 80x24 terminal: tmux runs it, its screen is
/// read with capture-pane while traffic moves the counters, `q` quits.
#[test]
fn the_live_view_runs_in_a_real_terminal() {
    let pair = Pair::new();
    let _cleanup = stop_on_drop(&pair);
    let (_dir, policy) = temp_policy(&format!("{POLICY}\n[settings.events]\ndrops = true\n"));
    let (mut child, _log) = start(&pair, &policy, &[]);
    wait_for("the firewall", Duration::from_secs(30), || {
        assert!(child.child().try_wait().unwrap().is_none(), "the controller exited");
        fw_in(&pair, &["stats", "--json"]).output().unwrap().status.success().then_some(())
    });
    // A few drops, so that the controller has top sources to show.
    send_udp(&pair, 20, 5999);
    // A tmux server of its own (-L), killed on the way out.
    let socket = format!("fwtest{}", std::process::id());
    let session = "view";
    let tmux = |args: &[&str]| Command::new("tmux").arg("-L").arg(&socket).args(args).output().expect("tmux runs");
    let kill = socket.clone();
    let _tmux = OnDrop(move || {
        let _ = Command::new("tmux").args(["-L", &kill, "kill-server"]).output();
    });
    let cmd = format!("nsenter --net=/run/netns/{} {FIREWALL} stats --watch", pair.server);
    let out = tmux(&["new-session", "-d", "-s", session, "-x", "80", "-y", "24", &cmd]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Traffic for the rates: 5 datagrams every 10 ms to the `dns` rule.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = paced_dns_queries(&pair, 5, stop.clone());
    let screen = wait_for("the live view with moving rates", Duration::from_secs(15), || {
        let out = tmux(&["capture-pane", "-p", "-t", session]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // The dns row with a non-zero rate, once two snapshots exist.
        // The dns row's PKT/S (the word after its action) above zero.
        let moving = text.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.first().is_some_and(|f| f.trim_start_matches('│') == "dns")
                && w.get(1) == Some(&"accept")
                && w.get(2).and_then(|r| r.parse::<u64>().ok()).is_some_and(|r| r > 0)
        });
        let sources = text.lines().any(|l| l.contains(&client_prefix(&pair)) && l.contains("default_drop"));
        (text.contains("rules by rate") && text.contains("verdicts by reason") && text.contains("SYN-cookie services") && text.contains("top drop sources") && sources && moving).then_some(text)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    println!("{screen}");
    assert!(screen.lines().count() <= 24 && screen.lines().all(|l| l.chars().count() <= 80), "fits 80x24");
    assert!(screen.contains("shop") && screen.contains("always"), "the cookie service and its mode:\n{screen}");
    let out = tmux(&["send-keys", "-t", session, "q"]);
    assert!(out.status.success());
    wait_for("q to quit the view", Duration::from_secs(5), || (!tmux(&["has-session", "-t", session]).status.success()).then_some(()));
}

/// A policy alert end to end: traffic above the threshold fires it (a JSON
/// log line, the alert's command with the alert on stdin, the /metrics
/// gauge); traffic stopped resolves it.
#[test]
fn an_alert_fires_and_resolves_with_its_command_and_gauge() {
    let pair = Pair::new();
    let _cleanup = stop_on_drop(&pair);
    let out_dir = common::TempDir::new();
    let record = out_dir.0.join("alerts.jsonl");
    let policy_text = format!(
        "{POLICY}\n[[alert]]\nname = \"dns-hot\"\nwhen = \"rule_rate\"\nrule = \"dns\"\nabove = 200\nbelow = 20\ncommand = [\"/bin/sh\", \"-c\", \"cat >> {}\"]\n",
        record.display()
    );
    let (_dir, policy) = temp_policy(&policy_text);
    let (mut child, log) = start(&pair, &policy, &["--metrics", ADDR, "--alert-log", "json"]);
    wait_for("/metrics", Duration::from_secs(30), || {
        assert!(child.child().try_wait().unwrap().is_none(), "the controller exited: {:?}", log.lock().unwrap());
        scrape(&pair.server).ok()
    });
    // About 1,000 datagrams a second to the `dns` rule, bounded in time.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = paced_dns_queries(&pair, 10, stop.clone());
    let json_line = |state: &str| -> Option<serde_json::Value> {
        log.lock().unwrap().iter().filter_map(|l| l.find('{').map(|i| &l[i..])).filter_map(|j| serde_json::from_str::<serde_json::Value>(j).ok()).find(|v| v["alert"] == "dns-hot" && v["state"] == state)
    };
    let fired = wait_for("the alert to fire", Duration::from_secs(10), || json_line("firing"));
    assert!(fired["value"].as_f64().unwrap() > 200.0 && fired["threshold"] == 200.0, "{fired}");
    assert_eq!(fired["what"], "packets/s of rule `dns`");
    let m = scrape(&pair.server).unwrap();
    assert_eq!(get(&m, "firewall_alert_firing", &[("alert", "dns-hot")]), 1.0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    let resolved = wait_for("the alert to resolve", Duration::from_secs(10), || json_line("resolved"));
    assert!(resolved["value"].as_f64().unwrap() < 20.0, "{resolved}");
    let m = scrape(&pair.server).unwrap();
    assert_eq!(get(&m, "firewall_alert_firing", &[("alert", "dns-hot")]), 0.0);
    // The command got each transition as one JSON object on stdin.
    let lines = wait_for("the command's record of both", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&record).unwrap_or_default();
        let v: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        (v.len() == 2).then_some(v)
    });
    assert_eq!((lines[0]["state"].as_str(), lines[1]["state"].as_str()), (Some("firing"), Some("resolved")));
    println!("alert log line: {fired}\nresolved: {resolved}");
}

/// Drop events end to end: the data plane records drops, the controller
/// logs them, `firewall events` (also `--follow`) and `firewall top` read
/// them from other processes.
#[test]
fn drop_events_are_logged_and_top_names_the_source() {
    let pair = Pair::new();
    let _cleanup = stop_on_drop(&pair);
    let logged = "[[rule]]\nname = \"echo\"\nproto = \"udp\"\ndport = 7\naction = \"accept\"\nlog = true\n";
    let alert = "[[alert]]\nname = \"drops\"\nwhen = \"reason_rate\"\nreason = \"default_drop\"\nabove = 10\nbelow = 1\n";
    let (_dir, policy) = temp_policy(&format!("{POLICY}\n{logged}\n{alert}\n[settings.events]\ndrops = true\nper_second = 1000\n"));
    let fw_cmd = |args: &[&str]| fw_in(&pair, args);
    let (mut child, _log) = start(&pair, &policy, &[]);
    wait_for("the firewall", Duration::from_secs(30), || {
        assert!(child.child().try_wait().unwrap().is_none(), "the controller exited");
        fw_cmd(&["stats", "--json"]).output().unwrap().status.success().then_some(())
    });
    let send = |n: usize, port: u16| send_udp(&pair, n, port);
    send(30, 5999);
    let records = wait_for("30 drop events logged", Duration::from_secs(10), || {
        let out = fw_cmd(&["events", "--json", "--last", "1000"]).output().unwrap();
        let v: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).filter(|v: &serde_json::Value| v["dport"] == 5999).collect();
        (v.len() >= 30).then_some(v)
    });
    let r = &records[0];
    assert_eq!((r["reason"].as_str(), r["proto"].as_str(), r["src"].as_str(), r["iface"].as_str()), (Some("default_drop"), Some("udp"), Some(pair.client_ip.as_str()), Some(pair.server_if.as_str())), "{r}");
    let text = String::from_utf8_lossy(&fw_cmd(&["events", "--last", "1"]).output().unwrap().stdout).into_owned();
    assert!(text.contains(&format!("drop default_drop udp {}:", pair.client_ip)) && text.contains(&format!("-> {}:5999", pair.server_ip)), "{text}");
    println!("$ firewall events --last 1\n{text}");

    // --follow prints an event that happens after it started.
    let mut follower = Guarded::spawn(fw_cmd(&["events", "--follow", "--json", "--last", "0"]));
    let stdout = follower.child().stdout.take().unwrap();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    wait_for("the follower to print a new event", Duration::from_secs(10), || {
        send(1, 5998);
        std::thread::sleep(Duration::from_millis(100));
        seen.lock().unwrap().iter().any(|l| l.contains("\"dport\":5998")).then_some(())
    });
    drop(follower);

    let prefix = client_prefix(&pair);
    let top = wait_for("top.json to name the source", Duration::from_secs(10), || {
        let out = fw_cmd(&["top", "--json"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["sources"][0]["prefix"] == prefix.as_str() && v["sources"][0]["recorded"].as_u64()? >= 31).then_some(v)
    });
    assert!(top["sources"][0]["reasons"]["default_drop"].as_u64().unwrap() >= 31, "{top}");
    let text = String::from_utf8_lossy(&fw_cmd(&["top"]).output().unwrap().stdout).into_owned();
    assert!(text.contains(&prefix) && text.contains("default_drop"), "{text}");
    println!("{text}");

    // The burst of drops fired the alert, which names the source, and
    // went into the events file as an event; quiet resolves it.
    // (Drops go on while it waits: the first burst may predate the
    // controller's first alert check, which only takes a baseline.)
    let fired = wait_for("the alert event", Duration::from_secs(10), || {
        send(5, 5999);
        std::thread::sleep(Duration::from_millis(100));
        events_json(&pair).into_iter().find(|v| v["kind"] == "alert" && v["alert"] == "drops" && v["state"] == "firing")
    });
    assert_eq!(fired["sources"][0], prefix.as_str(), "the alert names the source: {fired}");
    wait_for("the alert to resolve", Duration::from_secs(10), || events_json(&pair).into_iter().find(|v| v["kind"] == "alert" && v["state"] == "resolved"));

    // `log = true`: each accepted datagram to `echo` is logged with the
    // rule's name, and still delivered.
    let bind = format!("{}:7", pair.server_ip);
    let server = Pair::within(&pair.server, move || UdpSocket::bind(bind).unwrap()).join().unwrap();
    server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    send(3, 7);
    let mut buf = [0u8; 16];
    assert_eq!((0..3).filter(|_| server.recv(&mut buf).is_ok()).count(), 3, "delivered");
    wait_for("three logged datagrams", Duration::from_secs(10), || (events_json(&pair).iter().filter(|v| v["kind"] == "log").count() == 3).then_some(()));
    let logs: Vec<serde_json::Value> = events_json(&pair).into_iter().filter(|v| v["kind"] == "log").collect();
    assert_eq!((logs[0]["rule"].as_str(), logs[0]["verdict"].as_str(), logs[0]["reason"].as_str(), logs[0]["dport"].as_u64()), (Some("echo"), Some("pass"), Some("rule_accept"), Some(7)), "{}", logs[0]);
    let text = String::from_utf8_lossy(&fw_cmd(&["events", "--last", "200"]).output().unwrap().stdout).into_owned();
    let line = text.lines().find(|l| l.contains(" log ")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("log pass rule_accept rule echo udp"), "{line}");
    println!("$ firewall events (a logged match, an alert)\n{line}\n{}", text.lines().find(|l| l.contains("ALERT drops")).unwrap_or_default());
}

/// A SYN flood to an `auto` cookie service, end to end: the controller
/// switches cookies on and says so in the events file, the SYNs answered
/// with cookies are sampled into the top sources of that service, a
/// `syn_rate` alert names the flooding prefix; once the flood stops the
/// service leaves cookie mode (another event) and the alert resolves.
#[test]
fn a_syn_flood_is_reported_with_its_sources() {
    let pair = Pair::new();
    let _cleanup = stop_on_drop(&pair);
    let policy_text = r#"
[settings]
default = "drop"
syncookie = { auto_on_rate = 100, auto_off_rate = 10, auto_hold_secs = 1 }

[settings.events]
drops = true
per_second = 1000

[[rule]]
name = "web"
proto = "tcp"
dport = 8080
action = "accept"
syncookie = "auto"

[[alert]]
name = "web-flood"
when = "syn_rate"
service = "web"
above = 100
below = 10
for_secs = 2
"#;
    let (_dir, policy) = temp_policy(policy_text);
    let (mut child, log) = start(&pair, &policy, &[]);
    wait_for("the firewall", Duration::from_secs(30), || {
        assert!(child.child().try_wait().unwrap().is_none(), "the controller exited");
        fw_in(&pair, &["stats", "--json"]).output().unwrap().status.success().then_some(())
    });
    // About 1,000 SYNs a second (connects that end in an RST or a
    // timeout; nothing listens), for at most 8 s.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (dst, stop) = (format!("{}:8080", pair.server_ip).parse::<std::net::SocketAddr>().unwrap(), stop.clone());
        Pair::within(&pair.client, move || {
            let start = Instant::now();
            let mut sent = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && start.elapsed() < Duration::from_secs(8) && sent < 8_000 {
                for _ in 0..10 {
                    let _ = std::net::TcpStream::connect_timeout(&dst, Duration::from_millis(1));
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            sent
        })
    };
    let on = wait_for("cookie mode on, as an event", Duration::from_secs(10), || {
        events_json(&pair).into_iter().find(|v| v["kind"] == "state" && v["what"] == "cookie_mode" && v["subject"] == "web" && v["state"] == "on")
    });
    assert!(on["value"].as_f64().unwrap() >= 100.0, "{on}");
    let prefix = client_prefix(&pair);
    let top = wait_for("the service's top SYN sources", Duration::from_secs(10), || {
        let out = fw_in(&pair, &["top", "--json"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["services"][0]["service"] == "web" && v["services"][0]["sources"][0]["prefix"] == prefix.as_str()).then_some(v)
    });
    assert!(top["services"][0]["sources"][0]["syns"].as_u64().unwrap() > 0, "{top}");
    let fired = wait_for("the syn_rate alert", Duration::from_secs(10), || events_json(&pair).into_iter().find(|v| v["kind"] == "alert" && v["alert"] == "web-flood" && v["state"] == "firing"));
    assert_eq!(fired["sources"][0], prefix.as_str(), "{fired}");
    let text = String::from_utf8_lossy(&fw_in(&pair, &["top"]).output().unwrap().stdout).into_owned();
    assert!(text.contains("top sources of SYNs to `web`") && text.contains(&prefix), "{text}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.join().unwrap();
    let off = wait_for("cookie mode off again", Duration::from_secs(10), || {
        events_json(&pair).into_iter().find(|v| v["kind"] == "state" && v["what"] == "cookie_mode" && v["state"] == "off")
    });
    wait_for("the alert to resolve", Duration::from_secs(10), || events_json(&pair).into_iter().find(|v| v["kind"] == "alert" && v["alert"] == "web-flood" && v["state"] == "resolved"));
    assert!(log.lock().unwrap().iter().any(|l| l.contains("ALERT web-flood") && l.contains(&prefix)), "the log line names the source too");
    let events = String::from_utf8_lossy(&fw_in(&pair, &["events", "--last", "100000"]).output().unwrap().stdout).into_owned();
    let shown: Vec<&str> = events.lines().filter(|l| l.contains("cookie_mode") || l.contains("web-flood")).collect();
    println!("{sent} SYNs sent\n{off}\n$ firewall events (state changes and alerts)\n{}\n$ firewall top\n{text}", shown.join("\n"));
}
