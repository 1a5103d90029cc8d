//! Per-source rate limits (`limit` on a rule) in the real XDP program,
//! with BPF_PROG_TEST_RUN. Needs root.

mod common;

use common::*;
use firewall_common::{
    Reason,
    tcp_flags::{ACK, FIN, RST, SYN},
};

const SSH: &str = r#"
[settings]
default = "drop"

[[rule]]
name = "ssh"
proto = "tcp"
dport = 22
action = "accept"
limit = { rate = "1/m", burst = 3, per = "src/24" }

[[rule]]
name = "web"
proto = "tcp"
dport = 80
action = "accept"
"#;

#[test]
fn a_source_prefix_gets_its_burst_then_is_refused_without_state_and_others_are_untouched() {
    let h = Harness::new(SSH);
    let syn = |src: &str, sport: u16| tcp(src, "198.51.100.1", sport, 22, SYN);
    // 1 per minute, burst 3: the first three SYNs of 10.0.0.0/24 pass...
    for i in 0..3 {
        h.expect(&syn("10.0.0.1", 40000 + i), XDP_PASS, Reason::RuleAccept);
    }
    let flows = h.flows().len();
    // ...the rest of the prefix is refused, counted, and leaves no flow.
    h.expect(&syn("10.0.0.1", 40010), XDP_DROP, Reason::RateLimited);
    h.expect(&syn("10.0.0.200", 40011), XDP_DROP, Reason::RateLimited);
    assert_eq!(h.flows().len(), flows, "a refused SYN creates no state");
    assert_eq!(h.reason(Reason::RateLimited).packets, 2);
    // The rule says so too: 5 packets judged, 2 of them refused.
    assert_eq!((h.rule_packets("ssh"), h.refused("ssh")), (5, (2, 0)));
    assert!(h.snapshot().limit("web").is_none(), "a rule without a limit has no refusals to show");
    // Another /24 has its own bucket; a rule without a limit is not limited.
    h.expect(&syn("10.0.1.1", 40012), XDP_PASS, Reason::RuleAccept);
    for i in 0..10 {
        h.expect(&tcp("10.0.0.1", "198.51.100.1", 41000 + i, 80, SYN), XDP_PASS, Reason::RuleAccept);
    }
    // IPv6 sources count per /64.
    for i in 0..3 {
        h.expect(&tcp("2001:db8:7::1", "2001:db8:1::1", 40000 + i, 22, SYN), XDP_PASS, Reason::RuleAccept);
    }
    h.expect(&tcp("2001:db8:7::ffff", "2001:db8:1::1", 40010, 22, SYN), XDP_DROP, Reason::RateLimited);
    h.expect(&tcp("2001:db8:8::1", "2001:db8:1::1", 40011, 22, SYN), XDP_PASS, Reason::RuleAccept);
}

#[test]
fn the_bucket_refills_at_the_rate() {
    // 1000/s, burst 1: one SYN per ms. The refill is observed by polling
    // (bounded), not by sleeping a guessed time.
    let h = Harness::new(&SSH.replace("rate = \"1/m\", burst = 3", "rate = \"1000/s\", burst = 1"));
    let syn = |sport: u16| tcp("10.0.0.1", "198.51.100.1", sport, 22, SYN);
    let started = std::time::Instant::now();
    h.expect(&syn(40000), XDP_PASS, Reason::RuleAccept);
    let mut sport = 40001;
    // Within a millisecond of the first, a second is refused (the test run
    // takes microseconds; retried if the machine stalled past the ms).
    let refused = (0..100).any(|_| {
        sport += 1;
        h.verdict(&syn(sport)) == XDP_DROP
    });
    assert!(refused, "a second SYN within the interval is refused");
    let passed = loop {
        sport += 1;
        if h.verdict(&syn(sport)) == XDP_PASS {
            break started.elapsed();
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "the bucket refills");
    };
    // One interval (1 ms) after the first SYN, not much later.
    assert!(passed >= std::time::Duration::from_micros(900), "refilled after only {passed:?}");
    assert!(passed <= std::time::Duration::from_millis(100), "refilled after {passed:?}");
}

#[test]
fn a_retransmitted_syn_is_not_charged_and_a_reload_starts_every_bucket_again() {
    let mut h = Harness::new(SSH);
    let syn = |sport: u16| tcp("10.0.0.1", "198.51.100.1", sport, 22, SYN);
    h.expect(&syn(40000), XDP_PASS, Reason::RuleAccept);
    // The same SYN again (a retransmission of a tracked handshake) costs nothing.
    for _ in 0..5 {
        h.expect(&syn(40000), XDP_PASS, Reason::RuleAccept);
    }
    h.expect(&syn(40001), XDP_PASS, Reason::RuleAccept);
    h.expect(&syn(40002), XDP_PASS, Reason::RuleAccept);
    h.expect(&syn(40003), XDP_DROP, Reason::RateLimited);
    assert_eq!(h.refused("ssh"), (1, 0));
    // Two reloads bring the first slot back; its rule starts with a full
    // burst, and carries on its refusals (its name stayed).
    h.install(SSH);
    assert_eq!(h.refused("ssh"), (1, 0));
    h.install(SSH);
    assert_eq!(h.refused("ssh"), (1, 0));
    // Renamed, it is a new rule: from zero.
    h.install(&SSH.replacen("name = \"ssh\"", "name = \"ssh2\"", 1));
    assert_eq!(h.refused("ssh2"), (0, 0));
    for i in 0..3 {
        h.expect(&syn(40010 + i), XDP_PASS, Reason::RuleAccept);
    }
    h.expect(&syn(40020), XDP_DROP, Reason::RateLimited);
}

#[test]
fn datagrams_of_an_unreplied_flow_are_not_charged_again() {
    let h = Harness::new("[settings]\ndefault = \"drop\"\n\n[[rule]]\nname = \"syslog\"\nproto = \"udp\"\ndport = 514\naction = \"accept\"\nlimit = { rate = \"1/m\", burst = 1 }\n");
    for _ in 0..5 {
        h.expect(&udp("10.0.0.1", "198.51.100.1", 40000, 514), XDP_PASS, Reason::RuleAccept);
    }
    h.expect(&udp("10.0.0.1", "198.51.100.1", 40001, 514), XDP_DROP, Reason::RateLimited);
}

/// A refusal is a drop event naming the rule whose limit refused it.
#[test]
fn a_refusal_is_an_event_naming_the_rule() {
    let h = Harness::new(&format!("{SSH}\n[settings.events]\ndrops = true\n"));
    for i in 0..3 {
        h.expect(&tcp("10.0.0.1", "198.51.100.1", 40000 + i, 22, SYN), XDP_PASS, Reason::RuleAccept);
    }
    h.expect(&tcp("10.0.0.1", "198.51.100.1", 40010, 22, SYN), XDP_DROP, Reason::RateLimited);
    let ev = drain_events(&h);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!((ev[0].kind, ev[0].reason, ev[0].rule), (firewall_common::EVENT_DROP, Reason::RateLimited as u16, 0));
}

// --- max_conns and ban: connections count once the handshake proves them ---

const HOST: &str = "198.51.100.1";

const CAPPED: &str = r#"
[settings]
default = "drop"

[[set]]
name = "offenders"
type = "addr"
timeout = "10m"

[[rule]]
name = "banned"
src = "@offenders"
action = "drop"

[[rule]]
name = "web"
proto = "tcp"
dport = 80
action = "accept"
limit = { max_conns = 2 }
"#;

fn syn_from(h: &Harness, src: &str, sport: u16) -> (u32, Reason) {
    h.judged(&seg(src, HOST, sport, 80, SYN, 1000, 0, b""))
}

/// The host's SYN-ACK (egress) and the client's last ACK, which echoes
/// the host's ISN (5000): the handshake's proof.
fn complete(h: &Harness, src: &str, sport: u16) -> (u32, Reason) {
    assert_eq!(h.egress(&seg(HOST, src, 80, sport, SYN | ACK, 5000, 1001, b"")), Reason::EgressTracked);
    h.judged(&seg(src, HOST, sport, 80, ACK, 1001, 5001, b""))
}

fn connect(h: &Harness, src: &str, sport: u16) -> (u32, Reason) {
    assert_eq!(syn_from(h, src, sport), (XDP_PASS, Reason::RuleAccept));
    complete(h, src, sport)
}

const ESTABLISHED: (u32, Reason) = (XDP_PASS, Reason::Established);

/// Deletes the one flow of the unproven table, as a flood of spoofed SYNs
/// would evict it: the host's SYN-ACK retransmission then rebuilds it
/// without the rules having judged its SYN.
fn evict_the_unproven_flow(h: &mut Harness) {
    let mut remote: aya::maps::HashMap<_, firewall_common::FlowKey, firewall_common::Flow> =
        aya::maps::HashMap::try_from(h.fw.ebpf.map_mut(firewall_common::maps::REMOTE_FLOWS).unwrap()).unwrap();
    let keys: Vec<_> = remote.keys().map(|k| k.unwrap()).collect();
    assert_eq!(keys.len(), 1, "one unproven flow");
    remote.remove(&keys[0]).unwrap();
}

/// The counts in `FW_CONNS`, summed per source prefix.
fn conns(h: &Harness) -> std::collections::BTreeMap<String, u64> {
    let map: aya::maps::HashMap<_, firewall_common::BucketKey, u64> =
        aya::maps::HashMap::try_from(h.fw.ebpf.map(firewall_common::maps::CONNS).unwrap()).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for (k, n) in map.iter().map(|r| r.unwrap()) {
        if n > 0 {
            *out.entry(firewall_user::conntrack::addr(k.src).to_string()).or_default() += n;
        }
    }
    out
}

fn count(h: &Harness, src: &str) -> u64 {
    conns(h).get(src).copied().unwrap_or(0)
}

#[test]
fn max_conns_counts_proven_connections_only_and_a_close_frees_a_slot() {
    let mut h = Harness::new(CAPPED);
    let src = "10.0.0.1";
    // Forged SYNs in the source's name (an off-path sender can send these)
    // open half-open flows that count for nothing.
    for i in 0..5 {
        assert_eq!(syn_from(&h, src, 41000 + i), (XDP_PASS, Reason::RuleAccept));
    }
    assert_eq!(count(&h, src), 0, "unproven handshakes are not counted");
    assert_eq!(connect(&h, src, 40000), ESTABLISHED);
    assert_eq!(connect(&h, src, 40001), ESTABLISHED);
    assert_eq!(count(&h, src), 2);
    // Full: a new SYN is refused without state...
    assert_eq!(syn_from(&h, src, 40002), (XDP_DROP, Reason::ConnLimited));
    assert_eq!(h.flow_state(40002, 80), None, "a refused SYN creates no state");
    // ...and a handshake admitted before is refused at its proof, the
    // flow left half-open for a retransmission.
    assert_eq!(complete(&h, src, 41000), (XDP_DROP, Reason::ConnLimited));
    assert_eq!(h.flow_state(41000, 80), Some("syn_recv"));
    // A blind RST or FIN cannot free a slot: out of the window, or in it
    // but not exact (passed to the host for its challenge ACK).
    assert_eq!(h.judged(&seg(src, HOST, 40000, 80, RST, 900_000, 0, b"")), (XDP_DROP, Reason::InvalidRst));
    assert_eq!(h.judged(&seg(src, HOST, 40000, 80, FIN | ACK, 900_000, 5001, b"")), (XDP_DROP, Reason::InvalidWindow));
    assert_eq!(h.judged(&seg(src, HOST, 40000, 80, RST, 1101, 0, b"")), ESTABLISHED);
    assert_eq!(h.flow_state(40000, 80), Some("established"));
    assert_eq!(count(&h, src), 2);
    assert_eq!(syn_from(&h, src, 40003), (XDP_DROP, Reason::ConnLimited));
    // Other sources have their own count; rule and reason counters say it.
    assert_eq!(connect(&h, "10.0.0.2", 40000), ESTABLISHED);
    assert_eq!(h.reason(Reason::ConnLimited).packets, 3);
    assert_eq!(h.refused("web"), (0, 3), "the SYNs and the last ACK its cap refused");
    // A close both ways frees a slot: the retransmitted last ACK of the
    // waiting handshake now gets it.
    assert_eq!(h.judged(&seg(src, HOST, 40000, 80, FIN | ACK, 1001, 5001, b"")), ESTABLISHED);
    assert_eq!(count(&h, src), 2, "half-closed still counts");
    assert_eq!(h.egress(&seg(HOST, src, 80, 40000, FIN | ACK, 5001, 1002, b"")), Reason::EgressTracked);
    assert_eq!(h.flow_state(40000, 80), Some("time_wait"));
    assert_eq!(count(&h, src), 1);
    assert_eq!(h.judged(&seg(src, HOST, 41000, 80, ACK, 1001, 5001, b"")), ESTABLISHED);
    assert_eq!(count(&h, src), 2);
    // An exact RST from the client closes the flow, but the host may drop
    // it (a wrong checksum, not checked here): it counts until the flow
    // goes. The host's own RST frees the slot at once.
    assert_eq!(h.judged(&seg(src, HOST, 40001, 80, RST, 1001, 0, b"")), ESTABLISHED);
    assert_eq!(h.flow_state(40001, 80), Some("close"));
    assert_eq!(count(&h, src), 2);
    assert_eq!(h.egress(&seg(HOST, src, 80, 41000, RST | ACK, 5001, 1001, b"")), Reason::EgressTracked);
    assert_eq!(count(&h, src), 1);
    assert_eq!(connect(&h, src, 40004), ESTABLISHED);
    assert_eq!(syn_from(&h, src, 40005), (XDP_DROP, Reason::ConnLimited));
    // The closed flow outlives `tcp_close` (the host may still have the
    // connection)...
    h.age_flows(11);
    assert_eq!(h.judged(&seg(src, HOST, 40001, 80, ACK, 1001, 5001, b"")), ESTABLISHED);
    assert_eq!(count(&h, src), 2);
    // ...and the host's stack never had its socket (nothing listens on
    // its port in this test's namespace, as behind DNAT), so the sweep
    // cannot tell whether the RST reached the connection: it counts for
    // `COUNTED_CLOSE_SECS`, not until the next sweep.
    h.fw.sweep().unwrap();
    assert_eq!(h.flow_state(40001, 80), Some("close"));
    assert_eq!(count(&h, src), 2);
    assert_eq!(syn_from(&h, src, 40005), (XDP_DROP, Reason::ConnLimited));
    h.age_flows(firewall_common::COUNTED_CLOSE_SECS as u64);
    h.fw.sweep().unwrap();
    assert_eq!(h.flow_state(40001, 80), None);
    assert_eq!(count(&h, src), 1);
    assert_eq!(connect(&h, src, 40005), ESTABLISHED);
}

#[test]
fn an_rst_before_the_proof_does_not_let_the_last_ack_through_uncounted() {
    let src = "10.0.0.1";
    // Admitted before the cap filled, then closed by the client's own
    // exact RST (one the host may drop) before its last ACK.
    let h2 = Harness::new(&CAPPED.replace("max_conns = 2", "max_conns = 1"));
    assert_eq!(syn_from(&h2, src, 40001), (XDP_PASS, Reason::RuleAccept));
    assert_eq!(connect(&h2, src, 40000), ESTABLISHED);
    assert_eq!(h2.egress(&seg(HOST, src, 80, 40001, SYN | ACK, 5000, 1001, b"")), Reason::EgressTracked);
    assert_eq!(h2.judged(&seg(src, HOST, 40001, 80, RST, 1001, 0, b"")), ESTABLISHED);
    assert_eq!(h2.flow_state(40001, 80), Some("close"));
    assert_eq!(h2.judged(&seg(src, HOST, 40001, 80, ACK, 1001, 5001, b"")), (XDP_DROP, Reason::InvalidState), "never proven: nothing more passes");
    // The host answers again (its request lives on: it dropped the RST).
    // That SYN-ACK answers no SYN that passed on the closed flow, so it
    // changes nothing, and the last ACK still meets the closed flow.
    assert_eq!(h2.egress(&seg(HOST, src, 80, 40001, SYN | ACK, 5000, 1001, b"")), Reason::EgressTracked);
    assert_eq!(h2.flow_state(40001, 80), Some("close"));
    assert_eq!(h2.judged(&seg(src, HOST, 40001, 80, ACK, 1001, 5001, b"")), (XDP_DROP, Reason::InvalidState));
    assert_eq!(count(&h2, src), 1);
}

#[test]
fn a_handshake_whose_flow_was_lost_is_judged_at_its_proof() {
    let mut h = Harness::new(&CAPPED.replace("max_conns = 2", "max_conns = 1"));
    let src = "10.0.0.1";
    assert_eq!(syn_from(&h, src, 40001), (XDP_PASS, Reason::RuleAccept));
    assert_eq!(connect(&h, src, 40000), ESTABLISHED);
    // 40001's flow is evicted (as a flood of spoofed SYNs would evict it
    // from the unproven table); the host's SYN-ACK retransmission rebuilds
    // it without the rules having judged its SYN.
    evict_the_unproven_flow(&mut h);
    assert_eq!(h.egress(&seg(HOST, src, 80, 40001, SYN | ACK, 5000, 1001, b"")), Reason::EgressTracked);
    assert_eq!(h.judged(&seg(src, HOST, 40001, 80, ACK, 1001, 5001, b"")), (XDP_DROP, Reason::ConnLimited), "the rules' cap still applies");
    // Once a slot frees, the retransmitted last ACK is counted.
    assert_eq!(h.egress(&seg(HOST, src, 80, 40000, RST | ACK, 5001, 1001, b"")), Reason::EgressTracked);
    assert_eq!(h.judged(&seg(src, HOST, 40001, 80, ACK, 1001, 5001, b"")), ESTABLISHED);
    assert_eq!(count(&h, src), 1);
    assert_eq!(syn_from(&h, src, 40002), (XDP_DROP, Reason::ConnLimited));
}

#[test]
fn a_handshake_opened_under_a_replaced_policy_is_not_counted_by_its_limits() {
    let mut h = Harness::new(&CAPPED.replace("max_conns = 2", "max_conns = 1"));
    let src = "10.0.0.1";
    assert_eq!(syn_from(&h, src, 40000), (XDP_PASS, Reason::RuleAccept));
    h.install(&CAPPED.replace("max_conns = 2", "max_conns = 1"));
    assert_eq!(complete(&h, src, 40000), ESTABLISHED);
    assert_eq!(count(&h, src), 0, "the old slot's limits no longer count");
    assert_eq!(connect(&h, src, 40001), ESTABLISHED);
    assert_eq!(count(&h, src), 1);
}

#[test]
fn a_count_whose_flow_went_unseen_is_corrected_by_the_sweep() {
    let policy = CAPPED.replace("max_conns = 2", "max_conns = 1").replace("[settings]\n", "[settings]\ntimeouts = { tcp_established = 60 }\n");
    let mut h = Harness::new(&policy);
    let src = "10.0.0.1";
    assert_eq!(connect(&h, src, 40000), ESTABLISHED);
    // The flow goes as an LRU eviction would take it: nothing releases it.
    {
        let mut flows: aya::maps::HashMap<_, firewall_common::FlowKey, firewall_common::Flow> =
            aya::maps::HashMap::try_from(h.fw.ebpf.map_mut(firewall_common::maps::FLOWS).unwrap()).unwrap();
        let keys: Vec<_> = flows.keys().map(|k| k.unwrap()).collect();
        assert_eq!(keys.len(), 1);
        flows.remove(&keys[0]).unwrap();
    }
    assert_eq!(syn_from(&h, src, 40001), (XDP_DROP, Reason::ConnLimited), "the stale count still holds");
    h.fw.sweep().unwrap();
    assert_eq!(count(&h, src), 0, "the sweep counted the table again");
    assert_eq!(connect(&h, src, 40001), ESTABLISHED);
    // An idle connection past its timeout is deleted by the sweep, which
    // releases its count.
    h.age_flows(61);
    let swept = h.fw.sweep().unwrap();
    assert_eq!(swept.removed, 1);
    assert_eq!(count(&h, src), 0);
    assert_eq!(connect(&h, src, 40002), ESTABLISHED);
    // A reload starts the counts again (as a new nftables ruleset would).
    h.install(&policy);
    h.install(&policy);
    assert_eq!(connect(&h, src, 40003), ESTABLISHED);
    h.fw.sweep().unwrap();
    assert_eq!(count(&h, src), 1, "only the count of the limits in force is kept");
}

#[test]
fn a_proven_source_past_its_cap_is_banned_and_a_forged_one_cannot_be() {
    pin_to_cpu0();
    let h = Harness::new(&CAPPED.replace("max_conns = 2", "max_conns = 1, ban = \"@offenders\""));
    let src = "10.0.0.1";
    let banned = |h: &Harness| {
        let sets = h.fw.sets().unwrap();
        let id = sets.find("offenders").unwrap().id;
        sets.members(id)
    };
    for sport in [40000, 40001] {
        assert_eq!(syn_from(&h, src, sport), (XDP_PASS, Reason::RuleAccept));
    }
    assert_eq!(complete(&h, src, 40000), ESTABLISHED);
    // Forged last ACKs (the host's ISN guessed wrong, ahead or behind)
    // prove nothing.
    assert_eq!(h.egress(&seg(HOST, src, 80, 40001, SYN | ACK, 5000, 1001, b"")), Reason::EgressTracked);
    assert_eq!(h.judged(&seg(src, HOST, 40001, 80, ACK, 1001, 5002, b"")), (XDP_DROP, Reason::InvalidWindow));
    assert_eq!(h.judged(&seg(src, HOST, 40001, 80, ACK, 1001, 5000, b"")), (XDP_DROP, Reason::InvalidState));
    // A SYN past the cap is refused, but a SYN proves nothing: no ban.
    assert_eq!(syn_from(&h, src, 40002), (XDP_DROP, Reason::ConnLimited));
    assert!(banned(&h).is_empty(), "no ban from unproven packets");
    let _ = drain_events(&h);
    // The real last ACK proves the source is over its cap: banned.
    assert_eq!(h.judged(&seg(src, HOST, 40001, 80, ACK, 1001, 5001, b"")), (XDP_DROP, Reason::ConnLimited));
    let members = banned(&h);
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0].0.to_string(), "10.0.0.1/32");
    let left = members[0].1.saturating_sub(firewall_user::conntrack::monotonic_ns());
    assert!((590_000_000_000..=600_000_000_000).contains(&left), "banned for the set's timeout: {left} ns left");
    let ev = drain_events(&h);
    let bans: Vec<_> = ev.iter().filter(|e| e.kind == firewall_common::EVENT_BAN).collect();
    assert_eq!(bans.len(), 1, "{ev:?}");
    assert_eq!((bans[0].reason, bans[0].rule, firewall_user::conntrack::addr(bans[0].src).to_string()), (Reason::ConnLimited as u16, 1, src.to_string()));
    // Its next SYN meets the ban; other sources do not.
    assert_eq!(syn_from(&h, src, 40003), (XDP_DROP, Reason::RuleDrop));
    assert_eq!(connect(&h, "10.0.0.2", 40000), ESTABLISHED);
    assert_eq!(banned(&h).len(), 1);
}

#[test]
fn with_a_ban_the_rate_counts_proven_connections_not_syns() {
    let h = Harness::new(&CAPPED.replace("max_conns = 2", "rate = \"1/m\", burst = 2, ban = \"@offenders\""));
    let src = "10.0.0.1";
    // SYNs are not charged: forged ones cannot spend the source's budget.
    for i in 0..6 {
        assert_eq!(syn_from(&h, src, 40000 + i), (XDP_PASS, Reason::RuleAccept));
    }
    assert_eq!(complete(&h, src, 40000), ESTABLISHED);
    assert_eq!(complete(&h, src, 40001), ESTABLISHED);
    assert_eq!(complete(&h, src, 40002), (XDP_DROP, Reason::RateLimited));
    assert_eq!(h.refused("web"), (1, 0), "refused at its proof");
    assert_eq!(syn_from(&h, src, 40010), (XDP_DROP, Reason::RuleDrop), "banned");
    assert_eq!(h.refused("web"), (1, 0), "a banned source's SYN is the ban rule's drop, not a refusal");
    assert_eq!(connect(&h, "10.0.0.2", 40000), ESTABLISHED);
}

/// A ban covers what the limit counts: with `per = "src/24"`, the /24
/// whose budget was spent, not the one address whose connection came last
/// (one address could keep the budget spent and get its neighbours banned
/// for it, one by one).
#[test]
fn a_ban_covers_the_prefix_the_limit_counts() {
    let h = Harness::new(&CAPPED.replace("max_conns = 2", "rate = \"1/m\", burst = 2, per = \"src/24\", ban = \"@offenders\""));
    assert_eq!(connect(&h, "10.0.0.1", 40000), ESTABLISHED);
    assert_eq!(connect(&h, "10.0.0.1", 40001), ESTABLISHED);
    // A neighbour's first connection finds the /24's budget spent.
    assert_eq!(connect(&h, "10.0.0.2", 40000), (XDP_DROP, Reason::RateLimited));
    let banned = |h: &Harness| {
        let sets = h.fw.sets().unwrap();
        sets.members(sets.find("offenders").unwrap().id).iter().map(|(c, _)| c.to_string()).collect::<Vec<_>>()
    };
    assert_eq!(banned(&h), ["10.0.0.0/24"]);
    // The whole /24 meets the ban, the address that spent the budget too;
    // another /24 does not.
    for src in ["10.0.0.1", "10.0.0.2", "10.0.0.200"] {
        assert_eq!(syn_from(&h, src, 40010), (XDP_DROP, Reason::RuleDrop), "{src}");
    }
    assert_eq!(connect(&h, "10.0.1.1", 40000), ESTABLISHED);
    // The controller's sweep keeps a live ban, and puts back a prefix
    // count that fell to 0 (the trie would be skipped), as a ban that
    // rewrites an expired prefix while the controller deletes it would
    // leave it.
    let mut sets = h.fw.sets().unwrap();
    let id = sets.find("offenders").unwrap().id;
    assert_eq!(sets.prefixes.load(id), 1, "the data plane counted its prefix");
    sets.prefixes.take_one(id);
    assert_eq!(syn_from(&h, "10.0.0.3", 40010), (XDP_PASS, Reason::RuleAccept), "hidden while the count is 0");
    sets.sweep(0).unwrap();
    assert_eq!(banned(&h), ["10.0.0.0/24"]);
    assert_eq!(syn_from(&h, "10.0.0.4", 40010), (XDP_DROP, Reason::RuleDrop));
}

/// A connection whose flow the table lost (evicted, or timed out idle) and
/// that the host brings back by speaking first is counted again by its
/// rule, but never refused nor banned: it is not new, and a packet of it
/// proves nothing.
#[test]
fn a_connection_the_host_brings_back_is_counted_again_without_refusal_or_ban() {
    let mut h = Harness::new(&CAPPED.replace("max_conns = 2", "max_conns = 1, ban = \"@offenders\""));
    let src = "10.0.0.1";
    assert_eq!(connect(&h, src, 40000), ESTABLISHED);
    {
        let mut flows: aya::maps::HashMap<_, firewall_common::FlowKey, firewall_common::Flow> =
            aya::maps::HashMap::try_from(h.fw.ebpf.map_mut(firewall_common::maps::FLOWS).unwrap()).unwrap();
        let keys: Vec<_> = flows.keys().map(|k| k.unwrap()).collect();
        flows.remove(&keys[0]).unwrap();
    }
    h.fw.sweep().unwrap();
    assert_eq!(count(&h, src), 0);
    assert_eq!(connect(&h, src, 40001), ESTABLISHED);
    // The host speaks on the lost connection first (a keepalive, a
    // server greeting): adopted; the client's next segment is judged.
    assert_eq!(h.egress(&seg(HOST, src, 80, 40000, ACK | PSH, 5001, 1001, b"hello")), Reason::EgressTracked);
    assert_eq!(h.judged(&seg(src, HOST, 40000, 80, ACK, 1001, 5006, b"")), ESTABLISHED);
    assert_eq!(count(&h, src), 2, "counted again, over the cap");
    let sets = h.fw.sets().unwrap();
    assert!(sets.members(sets.find("offenders").unwrap().id).is_empty(), "and nobody banned");
    assert_eq!(syn_from(&h, src, 40002), (XDP_DROP, Reason::ConnLimited));
}

/// A handshake rebuilt from the host's SYN-ACK is judged as its SYN would
/// be now: a source banned meanwhile does not complete it.
#[test]
fn a_rebuilt_handshake_whose_syn_the_rules_now_drop_does_not_complete() {
    let mut h = Harness::new(CAPPED);
    let src = "10.0.0.1";
    assert_eq!(syn_from(&h, src, 40000), (XDP_PASS, Reason::RuleAccept));
    evict_the_unproven_flow(&mut h);
    let mut sets = h.fw.sets().unwrap();
    sets.add("offenders", &[firewall_user::sets::parse_element(src).unwrap()], None, firewall_user::conntrack::monotonic_ns()).unwrap();
    assert_eq!(h.egress(&seg(HOST, src, 80, 40000, SYN | ACK, 5000, 1001, b"")), Reason::EgressTracked);
    assert_eq!(h.judged(&seg(src, HOST, 40000, 80, ACK, 1001, 5001, b"")), (XDP_DROP, Reason::RuleDrop));
    assert_eq!(h.rule_packets("banned"), 1);
}

/// The connection an exact RST from outside closed is still counted while
/// the host keeps its socket (the host may have dropped that RST: a wrong
/// checksum), and freed by the sweep once the socket is gone. The host's
/// socket is a real loopback connection of this test; the XDP program
/// sees frames of the same tuple.
#[test]
fn an_outside_rst_frees_a_count_only_once_the_host_socket_is_gone() {
    use std::os::fd::AsRawFd as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    let cport = client.local_addr().unwrap().port();
    let mut h = Harness::new(&CAPPED.replace("dport = 80", &format!("dport = {port}")));
    let lo = "127.0.0.1";
    assert_eq!(h.judged(&seg(lo, lo, cport, port, SYN, 1000, 0, b"")), (XDP_PASS, Reason::RuleAccept));
    assert_eq!(h.egress(&seg(lo, lo, port, cport, SYN | ACK, 5000, 1001, b"")), Reason::EgressTracked);
    assert_eq!(h.judged(&seg(lo, lo, cport, port, ACK, 1001, 5001, b"")), ESTABLISHED);
    assert_eq!(count(&h, lo), 1);
    assert_eq!(h.judged(&seg(lo, lo, cport, port, RST, 1001, 0, b"")), ESTABLISHED);
    assert_eq!(h.flow_state(cport, port), Some("close"));
    h.fw.sweep().unwrap();
    assert_eq!(count(&h, lo), 1, "the host still has the connection");
    assert_eq!(h.flow_state(cport, port), Some("close"));
    // The host's socket goes (an RST of its own: no TIME-WAIT).
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket and a linger struct of the size given.
    assert_eq!(unsafe { libc::setsockopt(server.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, (&linger as *const libc::linger).cast(), std::mem::size_of::<libc::linger>() as u32) }, 0);
    drop(server);
    drop(client);
    h.fw.sweep().unwrap();
    assert_eq!(count(&h, lo), 0, "freed once the host has no socket for it");
    assert_eq!(h.flow_state(cport, port), None);

    // A FIN from outside the host has not answered (its socket lives on,
    // half closed): still counted at the sweep; the host's own FIN frees it.
    let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    let cport = client.local_addr().unwrap().port();
    assert_eq!(h.judged(&seg(lo, lo, cport, port, SYN, 1000, 0, b"")), (XDP_PASS, Reason::RuleAccept));
    assert_eq!(h.egress(&seg(lo, lo, port, cport, SYN | ACK, 5000, 1001, b"")), Reason::EgressTracked);
    assert_eq!(h.judged(&seg(lo, lo, cport, port, ACK, 1001, 5001, b"")), ESTABLISHED);
    assert_eq!(h.judged(&seg(lo, lo, cport, port, FIN | ACK, 1001, 5001, b"")), ESTABLISHED);
    assert_eq!(h.flow_state(cport, port), Some("fin_wait"));
    h.fw.sweep().unwrap();
    assert_eq!(count(&h, lo), 1, "the host's side is still open");
    assert_eq!(h.egress(&seg(lo, lo, port, cport, FIN | ACK, 5001, 1002, b"")), Reason::EgressTracked);
    assert_eq!(count(&h, lo), 0, "closed both ways");
    drop((client, server));
}

/// A counted connection that died without a FIN or RST (the client
/// vanished, the host's socket timed out) stops counting once it has idled
/// `DEAD_IDLE_SECS` and the host no longer has its socket. Only one the
/// host's own stack had a socket for when it was proven: one DNAT or a
/// proxy took elsewhere (here: no socket at its proof) keeps counting, as
/// does one the host still has. The flow stays in the table either way.
#[test]
fn an_idle_connection_the_host_no_longer_has_stops_counting() {
    use std::net::{TcpListener, TcpStream};
    use firewall_user::conntrack::{DEAD_IDLE_SECS, host_sockets};
    // Real connections on loopback: the socket lookup at the proof and the
    // sweep's socket list both see them.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let open = || {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (s, _) = listener.accept().unwrap();
        (c.local_addr().unwrap().port(), c, s)
    };
    let (kept, _kept_c, _kept_s) = open();
    let (lost, lost_c, lost_s) = open();
    // Port 1 (tcpmux): nothing listens there, as for a port DNAT takes
    // elsewhere.
    let mut h = Harness::new(&CAPPED.replace("dport = 80", &format!("dport = [{port}, 1]")).replace("max_conns = 2", "max_conns = 3"));
    let lo = "127.0.0.1";
    let connect_on = |h: &Harness, sport: u16, port: u16| {
        assert_eq!(h.judged(&seg(lo, lo, sport, port, SYN, 1000, 0, b"")), (XDP_PASS, Reason::RuleAccept));
        assert_eq!(h.egress(&seg(lo, lo, port, sport, SYN | ACK, 5000, 1001, b"")), Reason::EgressTracked);
        h.judged(&seg(lo, lo, sport, port, ACK, 1001, 5001, b""))
    };
    let connect_to = |h: &Harness, sport: u16| connect_on(h, sport, port);
    // The two the host has, and one to a port it does not serve: proven
    // all the same, as a DNAT'd connection would be.
    for sport in [kept, lost] {
        assert_eq!(connect_to(&h, sport), ESTABLISHED);
    }
    assert_eq!(connect_on(&h, 7, 1), ESTABLISHED);
    assert_eq!(count(&h, lo), 3);
    assert_eq!(h.judged(&seg(lo, lo, 2, port, SYN, 1000, 0, b"")), (XDP_DROP, Reason::ConnLimited));
    // The host loses one connection without a segment the table sees.
    drop((lost_c, lost_s));
    let gone = |t: &std::collections::HashSet<_>| !t.contains(&(ip(lo), port, ip(lo), lost));
    wait_for_condition("the lost connection's sockets to go", || host_sockets().is_some_and(|t| gone(&t)));
    // Not idle long enough yet: all still count.
    h.age_flows(DEAD_IDLE_SECS - 5);
    h.fw.sweep().unwrap();
    assert_eq!(count(&h, lo), 3);
    h.age_flows(10);
    h.fw.sweep().unwrap();
    assert_eq!(count(&h, lo), 2, "only the connection the host lost stopped counting");
    assert_eq!((h.flow_state(lost, port), h.flow_state(kept, port), h.flow_state(7, 1)), (Some("established"), Some("established"), Some("established")), "the flows stay");
    // Its slot is free: a new connection gets it.
    assert_eq!(connect_to(&h, 2), ESTABLISHED);
    assert_eq!(count(&h, lo), 3);
    assert_eq!(h.judged(&seg(lo, lo, 3, port, SYN, 1000, 0, b"")), (XDP_DROP, Reason::ConnLimited));
    // The host's RST on the lost tuple (the client came back) closes a
    // flow that no longer counts: it releases nothing.
    assert_eq!(h.egress(&seg(lo, lo, port, lost, RST | ACK, 5001, 1001, b"")), Reason::EgressTracked);
    assert_eq!(count(&h, lo), 3);
    h.fw.sweep().unwrap();
    assert_eq!(count(&h, lo), 3);
}

/// An off-path sender who knows a counted connection's tuple sends a SYN
/// on it. Whether the host listens on the port or not (DNAT elsewhere,
/// whose socket no lookup here shows), the SYN passes with the flow
/// unchanged, so it neither ends the connection nor frees its slot (the
/// destination answers it with a challenge ACK). Only the answer's SYN-ACK
/// with a new ISN (the old connection had died unseen) replaces the flow.
#[test]
fn a_blind_syn_neither_ends_a_connection_nor_frees_its_slot() {
    let src = "10.0.0.1";
    let h = Harness::new(CAPPED);
    assert_eq!(connect(&h, src, 40000), ESTABLISHED);
    assert_eq!(connect(&h, src, 40001), ESTABLISHED);
    assert_eq!(count(&h, src), 2);
    for seq in [77, 1000, 1001, 0x8000_0000] {
        assert_eq!(h.judged(&seg(src, HOST, 40000, 80, SYN, seq, 0, b"")), ESTABLISHED, "passed to the destination");
    }
    assert_eq!(h.flow_state(40000, 80), Some("established"));
    assert_eq!(count(&h, src), 2, "no slot freed");
    assert_eq!(syn_from(&h, src, 40002), (XDP_DROP, Reason::ConnLimited));
    assert_eq!(h.judged(&seg(src, HOST, 40000, 80, ACK, 1001, 5001, b"")), ESTABLISHED, "the connection goes on");

    // The host listens on the port and has no socket for the tuple (a
    // listener alone, as docker-proxy beside DNAT, proves nothing): still no
    // change at the SYN. The host's SYN-ACK for it, a new connection,
    // replaces the flow (the old count freed), and its proof counts again.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = Harness::new(&CAPPED.replace("dport = 80", &format!("dport = {port}")).replace("max_conns = 2", "max_conns = 1"));
    let lo = "127.0.0.1";
    assert_eq!(h.judged(&seg(lo, lo, 5, port, SYN, 1000, 0, b"")), (XDP_PASS, Reason::RuleAccept));
    assert_eq!(h.egress(&seg(lo, lo, port, 5, SYN | ACK, 5000, 1001, b"")), Reason::EgressTracked);
    assert_eq!(h.judged(&seg(lo, lo, 5, port, ACK, 1001, 5001, b"")), ESTABLISHED);
    assert_eq!(count(&h, lo), 1);
    assert_eq!(h.judged(&seg(lo, lo, 5, port, SYN, 77, 0, b"")), ESTABLISHED, "passed to the host");
    assert_eq!(h.flow_state(5, port), Some("established"));
    assert_eq!(count(&h, lo), 1, "no slot freed by the SYN");
    let isn = 5000u32.wrapping_add(0x4000_0000);
    assert_eq!(h.egress(&seg(lo, lo, port, 5, SYN | ACK, isn, 78, b"")), Reason::EgressTracked);
    assert_eq!(h.flow_state(5, port), Some("syn_recv"));
    assert_eq!(count(&h, lo), 0, "the host's answer ended the old connection");
    assert_eq!(h.judged(&seg(lo, lo, 5, port, ACK, 78, isn + 1, b"")), ESTABLISHED);
    assert_eq!(count(&h, lo), 1, "the new one counts");
    drop(listener);
}

/// A SYN that passes unjudged, or a handshake the rules never saw the SYN
/// of, cannot open a connection past the rule's rate, nor is a connection
/// charged twice. Where the host has no socket to ask (DNAT elsewhere), a
/// SYN on a closed flow's tuple (here closed by the source's own exact
/// RST) is judged by the rules whatever its sequence, the old flow kept
/// for the destination's TIME-WAIT socket to decide; a SYN on a live
/// flow's tuple passes to the destination. Either way, when the
/// destination answers with a new handshake, the rate is charged at its
/// proof, and again at every try of that proof while refused.
#[test]
fn a_syn_on_a_known_tuple_does_not_get_past_the_rate() {
    let policy = CAPPED.replace("limit = { max_conns = 2 }", "limit = { rate = \"1/m\", burst = 1 }");
    let src = "10.0.0.1";
    // The destination's new ISN lies behind the old connection's (half of
    // all ISNs do): its SYN-ACK is not taken for a retransmission.
    let behind = 5001u32.wrapping_sub(0x1000_0000);
    let refused_twice = |h: &Harness, ack: u32| {
        for _ in 0..2 {
            assert_eq!(h.judged(&seg(src, HOST, 40000, 80, ACK, ack, behind + 1, b"")), (XDP_DROP, Reason::RateLimited), "charged at its proof");
        }
        assert_eq!(h.flow_state(40000, 80), Some("syn_recv"));
        assert_eq!(h.refused("web"), (2, 0));
    };
    let h = Harness::new(&policy);
    assert_eq!(connect(&h, src, 40000), ESTABLISHED);
    assert_eq!(h.judged(&seg(src, HOST, 40000, 80, RST, 1001, 0, b"")), ESTABLISHED);
    assert_eq!(h.flow_state(40000, 80), Some("close"));
    assert_eq!(h.judged(&seg(src, HOST, 40000, 80, SYN, 1000, 0, b"")), (XDP_PASS, Reason::RuleAccept), "judged; its rate left to the proof");
    assert_eq!(h.flow_state(40000, 80), Some("close"));
    assert_eq!(h.egress(&seg(HOST, src, 80, 40000, SYN | ACK, behind, 1001, b"")), Reason::EgressTracked);
    refused_twice(&h, 1001);

    let h = Harness::new(&policy);
    assert_eq!(connect(&h, src, 40000), ESTABLISHED);
    assert_eq!(h.judged(&seg(src, HOST, 40000, 80, SYN, 77, 0, b"")), ESTABLISHED, "passed to the destination");
    assert_eq!(h.egress(&seg(HOST, src, 80, 40000, SYN | ACK, behind, 78, b"")), Reason::EgressTracked);
    assert_eq!(h.flow_state(40000, 80), Some("syn_recv"));
    refused_twice(&h, 78);

    // With room for two: the tuple reused after a close both ways is
    // charged once, at its proof, not also at its SYN.
    let h = Harness::new(&policy.replace("burst = 1", "burst = 2"));
    assert_eq!(connect(&h, src, 40000), ESTABLISHED);
    assert_eq!(h.egress(&seg(HOST, src, 80, 40000, FIN | ACK, 5001, 1001, b"")), Reason::EgressTracked);
    assert_eq!(h.judged(&seg(src, HOST, 40000, 80, FIN | ACK, 1001, 5002, b"")), ESTABLISHED);
    assert_eq!(h.flow_state(40000, 80), Some("time_wait"));
    assert_eq!(h.judged(&seg(src, HOST, 40000, 80, SYN, 1000, 0, b"")), (XDP_PASS, Reason::RuleAccept));
    assert_eq!(h.egress(&seg(HOST, src, 80, 40000, SYN | ACK, behind, 1001, b"")), Reason::EgressTracked);
    assert_eq!(h.judged(&seg(src, HOST, 40000, 80, ACK, 1001, behind + 1, b"")), ESTABLISHED, "charged once");
    assert_eq!(syn_from(&h, src, 40001), (XDP_DROP, Reason::RateLimited), "two charged: the burst is spent");
}

/// A port the host listens on may still be DNAT'd to a container (with
/// docker-proxy listening on the host too): a connection proven there
/// while the host has no socket for its tuple is not taken for the host's
/// own, so neither an RST from outside (which the container may have
/// dropped) nor idling frees its count at the sweep, which cannot see
/// the container's socket.
#[test]
fn a_listener_alone_does_not_make_a_connection_the_hosts_own() {
    use firewall_user::conntrack::DEAD_IDLE_SECS;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut h = Harness::new(&CAPPED.replace("dport = 80", &format!("dport = {port}")));
    let lo = "127.0.0.1";
    for sport in [5, 6] {
        assert_eq!(h.judged(&seg(lo, lo, sport, port, SYN, 1000, 0, b"")), (XDP_PASS, Reason::RuleAccept));
        assert_eq!(h.egress(&seg(lo, lo, port, sport, SYN | ACK, 5000, 1001, b"")), Reason::EgressTracked);
        assert_eq!(h.judged(&seg(lo, lo, sport, port, ACK, 1001, 5001, b"")), ESTABLISHED);
    }
    assert_eq!(count(&h, lo), 2);
    // The host sends on both (as a local socket would after REDIRECT to
    // another port, or docker-proxy for hairpin traffic): the tuple on the
    // wire has no connected socket here, so neither becomes the host's own.
    for sport in [5, 6] {
        assert_eq!(h.egress(&seg(lo, lo, port, sport, ACK | PSH, 5001, 1001, b"hi")), Reason::EgressTracked);
    }
    let flags = |sport: u16| {
        let main = h.flows_map(firewall_common::maps::FLOWS);
        main.iter().map(|e| e.unwrap()).find(|(k, _)| k.port_a.min(k.port_b) == sport).map(|(_, f)| f.flags).unwrap()
    };
    for sport in [5, 6] {
        let f = flags(sport);
        assert_ne!(f & firewall_common::FLOW_SOCKET_ASKED, 0, "egress asked for the tuple's socket");
        assert_eq!(f & firewall_common::FLOW_LOCAL, 0, "and found none");
    }
    assert_eq!(h.judged(&seg(lo, lo, 5, port, RST, 1001, 0, b"")), ESTABLISHED);
    assert_eq!(h.flow_state(5, port), Some("close"));
    h.age_flows(DEAD_IDLE_SECS + 5);
    h.fw.sweep().unwrap();
    assert_eq!(count(&h, lo), 2, "neither the closed nor the idle one is freed");
    assert_eq!(h.judged(&seg(lo, lo, 7, port, SYN, 1000, 0, b"")), (XDP_DROP, Reason::ConnLimited));
    drop(listener);
}

/// A client at its cap that reconnects on a closed tuple (its own RST
/// closed the old flow, which counts until the host's answer or the sweep
/// says the connection is gone) is not refused by that old count: the
/// destination's SYN-ACK replaces the old flow, freeing it, and the new
/// connection takes the slot.
#[test]
fn a_reconnect_on_a_closed_tuple_is_not_refused_by_its_own_old_count() {
    let h = Harness::new(&CAPPED.replace("max_conns = 2", "max_conns = 1"));
    let src = "10.0.0.1";
    assert_eq!(connect(&h, src, 40000), ESTABLISHED);
    assert_eq!(h.judged(&seg(src, HOST, 40000, 80, RST, 1001, 0, b"")), ESTABLISHED);
    assert_eq!(count(&h, src), 1, "an RST from outside frees nothing yet");
    assert_eq!(syn_from(&h, src, 40001), (XDP_DROP, Reason::ConnLimited), "another tuple: at the cap");
    assert_eq!(h.judged(&seg(src, HOST, 40000, 80, SYN, 1000, 0, b"")), (XDP_PASS, Reason::RuleAccept), "its own tuple: the old count leaves");
    let isn = 5001u32.wrapping_add(0x4000_0000);
    assert_eq!(h.egress(&seg(HOST, src, 80, 40000, SYN | ACK, isn, 1001, b"")), Reason::EgressTracked);
    assert_eq!(count(&h, src), 0);
    assert_eq!(h.judged(&seg(src, HOST, 40000, 80, ACK, 1001, isn + 1, b"")), ESTABLISHED);
    assert_eq!(count(&h, src), 1);
}

/// A proof the cap refuses spends no rate: a client whose handshake waits
/// for a slot (its last ACK resent) still has its rate when one frees.
#[test]
fn a_proof_refused_by_the_cap_spends_no_rate() {
    let mut h = Harness::new(&CAPPED.replace("limit = { max_conns = 2 }", "limit = { max_conns = 1, rate = \"1/m\", burst = 3 }"));
    let src = "10.0.0.1";
    // Two handshakes (two of the three tokens spent at their SYNs); the
    // second's flow is lost and rebuilt from the host's SYN-ACK, so its
    // proof is charged (the third token) once counted.
    assert_eq!(syn_from(&h, src, 40001), (XDP_PASS, Reason::RuleAccept));
    assert_eq!(connect(&h, src, 40000), ESTABLISHED);
    evict_the_unproven_flow(&mut h);
    assert_eq!(h.egress(&seg(HOST, src, 80, 40001, SYN | ACK, 5000, 1001, b"")), Reason::EgressTracked);
    for _ in 0..3 {
        assert_eq!(h.judged(&seg(src, HOST, 40001, 80, ACK, 1001, 5001, b"")), (XDP_DROP, Reason::ConnLimited));
    }
    assert_eq!(h.egress(&seg(HOST, src, 80, 40000, RST | ACK, 5001, 1001, b"")), Reason::EgressTracked);
    assert_eq!(h.judged(&seg(src, HOST, 40001, 80, ACK, 1001, 5001, b"")), ESTABLISHED, "the third token was still there");
    assert_eq!(h.refused("web"), (0, 3));
}

/// Polls `ready` (bounded: 5 s), for state outside the firewall.
fn wait_for_condition(what: &str, ready: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !ready() {
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
