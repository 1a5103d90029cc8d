//! Packet fuzzing through the real XDP program: valid frames built with
//! etherparse, mutated with a fixed-seed PRNG, run with BPF_PROG_TEST_RUN
//! and checked against the invariants listed in `common/fuzz.rs`. Needs
//! root. Longer runs: `cargo xtask fuzz --packets N`.

mod common;

use common::fuzz::{self, Shape};

/// Packets per suite run; `FW_FUZZ_PACKETS` overrides it.
const PACKETS: u64 = 120_000;

#[test]
fn corpus_is_valid_and_covers_every_shape() {
    let corpus = fuzz::corpus();
    let mut ip = 0;
    for s in &corpus {
        match fuzz::shape(&s.frame) {
            Shape::Ip(_) => ip += 1,
            Shape::NonIp | Shape::Fragment => {}
            Shape::Malformed(why) if s.name.contains("three VLAN tags") => assert_eq!(why, "more than two VLAN tags"),
            other => panic!("corpus sample {} is {other:?}", s.name),
        }
        // etherparse reads the samples too (except its IPv6 fragment word,
        // see `fix_v6_fragment`, and the third VLAN tag it does not model).
        if !s.name.contains("three VLAN tags") {
            etherparse::SlicedPacket::from_ethernet(&s.frame).unwrap_or_else(|e| panic!("{}: {e:?}", s.name));
        }
    }
    assert!(ip > 800, "{ip} IP samples of {}", corpus.len());
    // Every option list makes a valid TCP header.
    assert!(fuzz::TCP_OPTIONS.iter().all(|o| o.len() <= 40));
}

#[test]
fn reference_model_reads_documented_limits() {
    let corpus = fuzz::corpus();
    let syn = &corpus.iter().find(|s| s.name.starts_with("SYN :80 192.0.2.10 vlans=0")).unwrap().frame;
    let mut model = fuzz::Model::new(firewall_user::policy::parse(fuzz::POLICY, "fuzz.toml").unwrap());
    let e = model.judge(&fuzz::shape(syn)).expect("a fresh bare SYN is judged");
    assert_eq!(e.verdict, fuzz::XDP_TX);
    // The same tuple used by an ACK: no longer stateless.
    let mut ack = syn.clone();
    ack[14 + 20 + 13] = 0x10;
    assert!(model.judge(&fuzz::shape(&ack)).is_none());
    assert!(model.judge(&fuzz::shape(syn)).is_none());
    // Truncated inside the TCP header, with the IP length fixed up: malformed.
    let mut short = syn[..14 + 20 + 10].to_vec();
    short[16..18].copy_from_slice(&30u16.to_be_bytes());
    assert!(matches!(fuzz::shape(&short), Shape::Malformed("truncated TCP header")));
}

#[test]
fn fuzzed_packets_keep_every_invariant() {
    let packets = std::env::var("FW_FUZZ_PACKETS").ok().and_then(|v| v.parse().ok()).unwrap_or(PACKETS);
    let summary = fuzz::run(packets, fuzz::DEFAULT_SEED);
    eprintln!("{}", summary.report());
    assert_eq!(summary.packets, packets);
    assert!(summary.synacks_checked > 1_000, "enough cookie SYN-ACKs checked: {}", summary.synacks_checked);
    assert!(summary.judged.values().sum::<u64>() * 4 > packets, "the model judges a good share: {:?}", summary.judged);
    assert_eq!(summary.violation_count, 0, "{}", summary.report());
}

#[test]
fn the_synack_check_catches_a_corrupted_answer() {
    let h = fuzz::harness();
    let corpus = fuzz::corpus();
    let syn = &corpus.iter().find(|s| s.name.starts_with("SYN :80 2001:db8:c0::10 vlans=1")).unwrap().frame;
    let Shape::Ip(ip) = fuzz::shape(syn) else { panic!("an IP sample") };
    let (verdict, out) = h.fw.test_run_output(syn).expect("test run");
    assert_eq!(verdict, fuzz::XDP_TX);
    fuzz::check_synack(syn, &ip, &out).expect("a correct SYN-ACK");
    let l4 = 14 + 4 + 40;
    for (at, what) in [(l4 + 16, "TCP checksum"), (l4 + 8, "ack"), (l4 + 1, "port"), (0, "MAC"), (14, "VLAN tag"), (18 + 8, "address")] {
        let mut bad = out.clone();
        bad[at] ^= 0x01;
        assert!(fuzz::check_synack(syn, &ip, &bad).is_err(), "a flipped {what} byte is caught");
    }
    let v4 = &corpus.iter().find(|s| s.name.starts_with("SYN :80 192.0.2.10 vlans=0")).unwrap().frame;
    let Shape::Ip(ip) = fuzz::shape(v4) else { panic!("an IP sample") };
    let (_, mut out) = h.fw.test_run_output(v4).expect("test run");
    fuzz::check_synack(v4, &ip, &out).expect("a correct SYN-ACK");
    out[14 + 10] ^= 0x80;
    assert!(fuzz::check_synack(v4, &ip, &out).is_err(), "a bad IPv4 header checksum is caught");
}
