//! In-kernel cost per packet: the real XDP program run with
//! BPF_PROG_TEST_RUN `repeat`, the kernel measuring the mean duration, at
//! policies of 10 to 10,000 random rules. Run by `cargo xtask bench`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{ACK, Harness, L4, SYN, frame, ip, random, seg};
use firewall_user::{compile, policy};

const REPEAT: u32 = 200_000;
const RUNS: usize = 7;

fn median_ns(h: &Harness, f: &[u8]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = (0..RUNS)
        .map(|_| h.fw.test_run(f, REPEAT).expect("test run").duration.as_nanos() as f64)
        .collect();
    v.sort_by(f64::total_cmp);
    (v[RUNS / 2], v[0], v[RUNS - 1])
}

fn main() {
    verifier_budget();
    println!("| rules | tree nodes | depth | leaf entries | packet class | ns/packet (median, min-max of {RUNS} x {REPEAT}) |");
    println!("|---|---|---|---|---|---|");
    for rules in [10usize, 100, 1_000, 10_000] {
        // The measured rule comes last, after `rules - 1` random ones.
        // The shipped settings: invalid packets are dropped before the rules.
        let mut text = random::policy_text(rules - 1, 42).replacen("invalid = \"rules\"", "invalid = \"drop\"", 1);
        text.push_str("\n[[rule]]\nname = \"last\"\nproto = \"tcp\"\ndst = \"192.0.2.1\"\ndport = 443\naction = \"accept\"\n");
        // A SYN-cookie service, also behind all the random rules: the same
        // port on a neighbour address (random rules never name 192.0.2.0/24,
        // so what reaches `last` reaches it too).
        text.push_str("\n[[rule]]\nname = \"cookie\"\nproto = \"tcp\"\ndst = \"192.0.2.2\"\ndport = 443\naction = \"accept\"\nsyncookie = \"always\"\n");
        let parsed = policy::parse(&text, "bench.toml").expect("valid policy");
        let compiled = compile::compile(&parsed).expect("compiles");
        let mut h = Harness::new("");
        h.fw.install(&compiled).expect("installs");
        let unmatched = frame(ip("172.16.0.1"), ip("192.0.2.1"), L4::Tcp { sport: 40000, dport: 444, flags: SYN }, b"");
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
        for (class, f) in [
            ("forged cookie ACK (drop; table miss, socket lookup, SipHash)", &forged_ack),
            ("SYN, last rule (accept; its flow exists after the first run)", &with_syn),
            ("SYN, no rule (default drop)", &unmatched),
            ("established flow (accept)", &established),
            ("invalid: ACK of no flow (drop; includes a socket lookup)", &invalid),
            ("invalid: SYN+FIN (drop)", &bad_flags),
            ("malformed (drop)", &malformed),
        ] {
            let (med, min, max) = median_ns(&h, f);
            println!(
                "| {rules} | {} | {} | {} | {class} | {med:.0} ({min:.0}-{max:.0}) |",
                compiled.nodes.len(),
                compiled.depth,
                compiled.leaf_refs.len()
            );
        }
        // The cookie SYN-ACK is written over the SYN, and `repeat` runs
        // the program again on what the last run left (a SYN-ACK, then
        // dropped): single runs, median of many.
        let (med, min, max) = single_runs(&h, &cookie_syn, 3);
        println!(
            "| {rules} | {} | {} | {} | SYN answered with a cookie SYN-ACK (XDP_TX, tail call; single runs) | {med:.0} ({min:.0}-{max:.0}) |",
            compiled.nodes.len(),
            compiled.depth,
            compiled.leaf_refs.len()
        );
        // A valid cookie ACK creates its flow, so each is run once: the
        // median of single runs over distinct connections.
        let ((med, min, max), (fmed, fmin, fmax)) = valid_cookie_acks(&h);
        println!(
            "| {rules} | {} | {} | {} | valid cookie ACK (flow created, marked for hand-off; single runs) | {med:.0} ({min:.0}-{max:.0}) |",
            compiled.nodes.len(),
            compiled.depth,
            compiled.leaf_refs.len()
        );
        println!(
            "| {rules} | {} | {} | {} | forged cookie ACK, single runs (to compare with the line above) | {fmed:.0} ({fmin:.0}-{fmax:.0}) |",
            compiled.nodes.len(),
            compiled.depth,
            compiled.leaf_refs.len()
        );
    }
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
fn verifier_budget() {
    use aya::programs::{SchedClassifier, Xdp};
    let h = Harness::new("");
    let xdp: &Xdp = h.fw.ebpf.program("firewall").expect("xdp").try_into().expect("xdp");
    let tc: &SchedClassifier = h.fw.ebpf.program("fw_egress").expect("tc").try_into().expect("tc");
    let syn: &Xdp = h.fw.ebpf.program("fw_cookie_syn").expect("xdp").try_into().expect("xdp");
    let ingress: &SchedClassifier = h.fw.ebpf.program("fw_ingress").expect("tc").try_into().expect("tc");
    for (name, info) in [
        ("XDP firewall", xdp.info()),
        ("XDP fw_cookie_syn (tail call)", syn.info()),
        ("TC fw_egress", tc.info()),
        ("TC fw_ingress (cookie hand-off)", ingress.info()),
    ] {
        let count = info.ok().and_then(|i| i.verified_instruction_count());
        println!("{name}: {count:?} instructions verified (budget 1,000,000)");
    }
    println!();
}
