//! In-kernel cost per packet: the real XDP program run with
//! BPF_PROG_TEST_RUN `repeat`, the kernel measuring the mean duration, at
//! policies of 10 to 10,000 random rules. Run by `cargo xtask bench`;
//! writes `results/inkernel.json` and `results/inkernel.md`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;

use common::{ACK, Harness, L4, SYN, frame, ip, random, seg};
use firewall_user::{compile, policy};
use serde_json::{Value, json};

const REPEAT: u32 = 200_000;
const RUNS: usize = 7;

fn median_ns(h: &Harness, f: &[u8]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = (0..RUNS)
        .map(|_| h.fw.test_run(f, REPEAT).expect("test run").duration.as_nanos() as f64)
        .collect();
    v.sort_by(f64::total_cmp);
    (v[RUNS / 2], v[0], v[RUNS - 1])
}

/// One measured packet class at one policy size.
struct Row {
    rules: usize,
    id: &'static str,
    class: &'static str,
    /// `repeat`, or `single` (single runs: about 190 ns of per-run overhead
    /// included, see `calibrated`).
    method: &'static str,
    ns: (f64, f64, f64),
}

fn main() {
    let verifier = verifier_budget();
    let mut rows = Vec::new();
    let mut sizes = Vec::new();
    for rules in [10usize, 100, 1_000, 10_000] {
        // The measured rules come last, after `rules - 1` random ones (on
        // 192.0.2.0/24, which random rules never name).
        // The shipped settings: invalid packets are dropped before the rules.
        let mut text = random::policy_text(rules - 1, 42).replacen("invalid = \"rules\"", "invalid = \"drop\"", 1);
        text.push_str("\n[[rule]]\nname = \"last\"\nproto = \"tcp\"\ndst = \"192.0.2.1\"\ndport = 443\naction = \"accept\"\n");
        // A SYN-cookie service, also behind all the random rules.
        text.push_str("\n[[rule]]\nname = \"cookie\"\nproto = \"tcp\"\ndst = \"192.0.2.2\"\ndport = 443\naction = \"accept\"\nsyncookie = \"always\"\n");
        text.push_str("\n[[rule]]\nname = \"last_drop\"\nproto = \"tcp\"\ndst = \"192.0.2.3\"\ndport = 443\naction = \"drop\"\n");
        // The same drop on a set of a million sources (filled below): the
        // set is looked up only for packets to 192.0.2.4:443.
        text.push_str("\n[[set]]\nname = \"big\"\ntype = \"addr\"\nsize = 1000000\n\n[[rule]]\nname = \"set_drop\"\nproto = \"tcp\"\nsrc = \"@big\"\ndst = \"192.0.2.4\"\ndport = 443\naction = \"drop\"\n");
        let parsed = policy::parse(&text, "bench.toml").expect("valid policy");
        let compiled = compile::compile(&parsed).expect("compiles");
        sizes.push(json!({ "rules": rules, "tree_nodes": compiled.nodes.len(), "depth": compiled.depth, "leaf_entries": compiled.leaf_refs.len() }));
        let mut h = Harness::new("");
        h.fw.install(&compiled).expect("installs");
        {
            let mut sets = h.fw.sets().expect("sets");
            let id = sets.find("big").expect("the set").id;
            for i in 0..1_000_000u32 {
                let c = policy::Cidr { addr: std::net::Ipv4Addr::from(0x0a00_0000 + i * 3).into(), prefix: 32 };
                sets.put(id, &c, 0).expect("insert");
            }
        }
        let set_member = frame(ip("10.0.0.3"), ip("192.0.2.4"), L4::Tcp { sport: 40000, dport: 443, flags: SYN }, b"");
        let set_other = frame(ip("172.16.0.1"), ip("192.0.2.4"), L4::Tcp { sport: 40000, dport: 443, flags: SYN }, b"");
        let unmatched = frame(ip("172.16.0.1"), ip("192.0.2.1"), L4::Tcp { sport: 40000, dport: 444, flags: SYN }, b"");
        let rule_drop = frame(ip("172.16.0.1"), ip("192.0.2.3"), L4::Tcp { sport: 40000, dport: 443, flags: SYN }, b"");
        let bad_flags = frame(ip("172.16.0.1"), ip("192.0.2.1"), L4::Tcp { sport: 40000, dport: 443, flags: SYN | 0x01 }, b"");
        let mut malformed = unmatched.clone();
        malformed[14] = 0x45 + 0x10; // IPv5
        // A flow the host opened: the reply segment is established.
        h.fw.test_run_egress(&seg("192.0.2.1", "172.16.0.9", 443, 50000, SYN, 1, 0, b"")).expect("egress");
        h.fw.test_run(&seg("172.16.0.9", "192.0.2.1", 50000, 443, SYN | ACK, 100, 2, b""), 1).expect("synack");
        let established = seg("172.16.0.9", "192.0.2.1", 50000, 443, ACK, 101, 2, b"");
        // A lone ACK of no flow: a table miss plus a socket lookup.
        let invalid = seg("172.16.0.9", "192.0.2.1", 50001, 443, ACK, 101, 2, b"");
        let with_syn = seg("172.16.0.1", "192.0.2.1", 40000, 443, SYN, 1, 0, b"");
        // Stateless, so `repeat` measures the same work every time.
        let cookie_syn = seg("172.16.0.1", "192.0.2.2", 40000, 443, SYN, 1, 0, b"");
        let forged_ack = seg("172.16.0.1", "192.0.2.2", 40000, 443, ACK, 2, 12345, b"");
        assert_eq!(h.verdict(&cookie_syn), 3, "the cookie SYN is answered (XDP_TX)");
        assert_eq!(h.verdict(&forged_ack), 1, "the forged cookie ACK is dropped");
        assert_eq!(h.verdict(&unmatched), 1, "default drop");
        assert_eq!(h.verdict(&rule_drop), 1, "rule drop");
        assert_eq!(h.rule_packets("last_drop"), 1, "the last rule dropped it");
        assert_eq!(h.verdict(&set_member), 1, "set member dropped");
        assert_eq!(h.rule_packets("set_drop"), 1, "by the set's rule");
        assert_eq!(h.verdict(&set_other), 1, "a non-member: default drop");
        assert_eq!(h.rule_packets("set_drop"), 1, "not by the set's rule");
        for (id, class, f) in [
            ("rule_drop", "rule drop (SYN, last rule)", &rule_drop),
            ("rule_accept", "rule accept (SYN, last rule; the flow is replaced each run)", &with_syn),
            ("default_drop", "no rule matches (default drop)", &unmatched),
            ("set_drop", "rule drop by a set member (1,000,000-element set, last rule; compare `rule drop`)", &set_member),
            ("set_miss", "not in that set: no rule matches (the set looked up; compare `default drop`)", &set_other),
            ("established", "established flow (accept)", &established),
            ("invalid_no_flow", "invalid: ACK of no flow (drop; includes a socket lookup)", &invalid),
            ("invalid_flags", "invalid: SYN+FIN (drop)", &bad_flags),
            ("cookie_ack_forged", "forged cookie ACK (drop; table misses, socket lookup, tail call, rules as its SYN, SipHash)", &forged_ack),
            ("malformed", "malformed (drop)", &malformed),
        ] {
            rows.push(Row { rules, id, class, method: "repeat", ns: median_ns(&h, f) });
        }
        // The cookie SYN-ACK is written over the SYN, and `repeat` runs
        // the program again on what the last run left (a SYN-ACK, then
        // dropped): single runs, median of many.
        rows.push(Row { rules, id: "cookie_syn", class: "SYN answered with a cookie SYN-ACK (XDP_TX, tail call)", method: "single", ns: single_runs(&h, &cookie_syn, 3) });
        // A valid cookie ACK creates its flow, so each is run once: the
        // median of single runs over distinct connections.
        // The same drops with events on: the check, the tail call to the
        // event program, its sampler and per-second cap (after the first 100
        // records a second, what every further drop in a flood pays).
        // Also `last` with `log = true`, and SYN samples of the cookie service.
        let logged = text.replacen("dst = \"192.0.2.1\"\ndport = 443\naction = \"accept\"\n", "dst = \"192.0.2.1\"\ndport = 443\naction = \"accept\"\nlog = true\n", 1);
        assert!(logged.contains("log = true"), "the logged rule is there");
        let mut with_events = compile::compile(&policy::parse(&logged, "bench.toml").expect("valid policy")).expect("compiles");
        with_events.events = firewall_common::EventConfig { sample: 1, per_second: 100, log_per_second: 100, syn_sample: 1 };
        h.fw.install(&with_events).expect("installs");
        for (id, class, f) in [
            ("rule_drop_events", "rule drop, events on (capped)", &rule_drop),
            ("default_drop_events", "no rule matches, events on (capped)", &unmatched),
            ("rule_accept_logged", "rule accept, the rule has log = true (capped)", &with_syn),
        ] {
            rows.push(Row { rules, id, class, method: "repeat", ns: median_ns(&h, f) });
        }
        rows.push(Row { rules, id: "cookie_syn_events", class: "SYN answered with a cookie, SYN samples on (capped)", method: "single", ns: single_runs(&h, &cookie_syn, 3) });
        h.fw.install(&compiled).expect("installs");
        let (valid, forged) = valid_cookie_acks(&h);
        rows.push(Row { rules, id: "cookie_ack_valid", class: "valid cookie ACK (flow created, marked for hand-off)", method: "single", ns: valid });
        rows.push(Row { rules, id: "cookie_ack_forged_single", class: "forged cookie ACK, single runs (calibrates the two rows above)", method: "single", ns: forged });
    }
    // Single runs carry a fixed overhead (cold caches, the clock read per
    // run): measured as the forged ACK's single-run minus repeat cost,
    // and subtracted for the `calibrated` figure. One figure for every
    // size, the median of the sizes' (it does not depend on the policy,
    // and one size's swings by hundreds of ns).
    let overhead = {
        let get = |rules: usize, id: &str| rows.iter().find(|r| r.rules == rules && r.id == id).unwrap().ns.0;
        let mut each: Vec<f64> = sizes.iter().map(|z| z["rules"].as_u64().unwrap() as usize).map(|n| get(n, "cookie_ack_forged_single") - get(n, "cookie_ack_forged")).collect();
        each.sort_by(f64::total_cmp);
        each[each.len() / 2]
    };
    let json_rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            let calibrated = if r.method == "single" { r.ns.0 - overhead } else { r.ns.0 };
            json!({ "rules": r.rules, "id": r.id, "class": r.class, "method": r.method,
                    "median_ns": r.ns.0, "min_ns": r.ns.1, "max_ns": r.ns.2, "calibrated_ns": calibrated })
        })
        .collect();
    let report = json!({ "repeat": REPEAT, "runs": RUNS, "single_runs": 2001, "single_overhead_ns": overhead, "verifier": verifier, "sizes": sizes, "rows": json_rows });
    let md = markdown(&report);
    println!("{md}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../results");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("inkernel.json"), serde_json::to_string_pretty(&report).unwrap()).unwrap();
    std::fs::write(dir.join("inkernel.md"), md).unwrap();
}

/// One row per packet class, one column per policy size.
fn markdown(r: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "In-kernel ns per packet (BPF_PROG_TEST_RUN; median of {} runs of `repeat` = {}, min–max; `single`: median of {} single runs, less the single-run overhead measured on the forged ACK, {:.0} ns: a rough figure, see the live-flood table for a cookie SYN's cost; — where the difference is below zero).\n",
        r["runs"], r["repeat"], r["single_runs"], r["single_overhead_ns"].as_f64().unwrap_or(0.0)
    );
    let sizes = r["sizes"].as_array().unwrap();
    let _ = write!(s, "| packet class | method |");
    for z in sizes {
        let _ = write!(s, " {} rules |", z["rules"]);
    }
    let _ = writeln!(s, "\n|---|---|{}", "---|".repeat(sizes.len()));
    let rows = r["rows"].as_array().unwrap();
    let mut ids: Vec<&str> = Vec::new();
    for row in rows {
        let id = row["id"].as_str().unwrap();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    for id in ids {
        let of: Vec<&Value> = rows.iter().filter(|x| x["id"] == id).collect();
        let _ = write!(s, "| {} | {} |", of[0]["class"].as_str().unwrap(), of[0]["method"].as_str().unwrap());
        for x in of {
            let f = |k: &str| x[k].as_f64().unwrap();
            if x["method"] == "single" && f("calibrated_ns") < 0.0 {
                let _ = write!(s, " — (single {:.0}) |", f("median_ns"));
            } else if x["method"] == "single" {
                let _ = write!(s, " **{:.0}** (single {:.0}) |", f("calibrated_ns"), f("median_ns"));
            } else {
                let _ = write!(s, " **{:.0}** ({:.0}–{:.0}) |", f("median_ns"), f("min_ns"), f("max_ns"));
            }
        }
        s.push('\n');
    }
    let _ = write!(s, "\nCompiled policy (tree nodes / depth / leaf entries):");
    for z in sizes {
        let _ = write!(s, " {} rules: {} / {} / {};", z["rules"], z["tree_nodes"], z["depth"], z["leaf_entries"]);
    }
    let _ = writeln!(s, "\n\nVerifier, instructions processed (budget 1,000,000):");
    for (k, v) in r["verifier"].as_object().unwrap() {
        let _ = writeln!(s, "- {k}: {v}");
    }
    s
}

/// Median (and min, max) of 2001 single runs of `frame`, each expected to
/// return `verdict`.
fn single_runs(h: &Harness, frame: &[u8], verdict: u32) -> (f64, f64, f64) {
    let mut v: Vec<f64> = (0..2001)
        .map(|_| {
            let r = h.fw.test_run(frame, 1).expect("test run");
            assert_eq!(r.return_value, verdict);
            r.duration.as_nanos() as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// Median (and min, max) kernel-measured ns of validating distinct cookie
/// ACKs, each cookie taken from the SYN-ACK the program sent; and of a
/// forged ACK on each of those connections, run the same way (a single
/// run costs more than one of `repeat`'s: cold caches, the clock).
fn valid_cookie_acks(h: &Harness) -> ((f64, f64, f64), (f64, f64, f64)) {
    const CONNECTIONS: u16 = 2001;
    let v: Vec<(f64, f64)> = (0..CONNECTIONS)
        .filter_map(|i| {
            let port = 40000 + i;
            let (verdict, out) = h.fw.test_run_output(&seg("172.16.0.1", "192.0.2.2", port, 443, SYN, 7, 0, b"")).expect("syn");
            // An earlier random rule may take this source port: skip it.
            if verdict != 3 {
                return None;
            }
            let cookie = u32::from_be_bytes(out[38..42].try_into().unwrap());
            let forged = seg("172.16.0.1", "192.0.2.2", port, 443, ACK, 8, cookie.wrapping_add(2), b"");
            let f = h.fw.test_run(&forged, 1).expect("forged ack");
            assert_eq!(f.return_value, 1, "forged cookie ACK dropped");
            let ack = seg("172.16.0.1", "192.0.2.2", port, 443, ACK, 8, cookie.wrapping_add(1), b"");
            let r = h.fw.test_run(&ack, 1).expect("ack");
            assert_eq!(r.return_value, 2, "valid cookie ACK passes");
            Some((r.duration.as_nanos() as f64, f.duration.as_nanos() as f64))
        })
        .collect();
    assert!(!v.is_empty(), "no source port reached the cookie rule");
    let mut f: Vec<f64> = v.iter().map(|p| p.1).collect();
    let mut v: Vec<f64> = v.iter().map(|p| p.0).collect();
    v.sort_by(f64::total_cmp);
    f.sort_by(f64::total_cmp);
    ((v[v.len() / 2], v[0], v[v.len() - 1]), (f[f.len() / 2], f[0], f[f.len() - 1]))
}

/// Instructions the verifier processed per program (its budget is 1M):
/// the headroom later features have.
fn verifier_budget() -> Value {
    use aya::programs::{SchedClassifier, Xdp};
    let h = Harness::new("");
    let xdp: &Xdp = h.fw.ebpf.program("firewall").expect("xdp").try_into().expect("xdp");
    let tc: &SchedClassifier = h.fw.ebpf.program("fw_egress").expect("tc").try_into().expect("tc");
    let syn: &Xdp = h.fw.ebpf.program("fw_cookie_syn").expect("xdp").try_into().expect("xdp");
    let ingress: &SchedClassifier = h.fw.ebpf.program("fw_ingress").expect("tc").try_into().expect("tc");
    let mut out = serde_json::Map::new();
    for (name, info) in [
        ("XDP firewall", xdp.info()),
        ("XDP fw_cookie_syn (tail call)", syn.info()),
        ("TC fw_egress", tc.info()),
        ("TC fw_ingress (cookie hand-off)", ingress.info()),
    ] {
        let count = info.ok().and_then(|i| i.verified_instruction_count());
        out.insert(name.to_string(), json!(count));
    }
    Value::Object(out)
}
