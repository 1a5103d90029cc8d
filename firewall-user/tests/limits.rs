//! Per-source rate limits (`limit` on a rule) in the real XDP program,
//! with BPF_PROG_TEST_RUN. Needs root.

mod common;

use common::*;
use firewall_common::{Reason, tcp_flags::SYN};

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
    // Two reloads bring the first slot back; its rule starts with a full burst.
    h.install(SSH);
    h.install(SSH);
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
