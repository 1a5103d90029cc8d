//! A short soak under attack: the `firewall run` binary on a veth pair with
//! an `always` SYN-cookie service, a spoofed SYN flood at the bench
//! generator's full rate, a forged-ACK flood and legitimate clients, all at
//! once (the engine: `common/soak.rs`). Needs root. Longer runs:
//! `cargo xtask soak --secs 60`.

mod common;

use std::{path::Path, time::Duration};

use common::soak;

const FIREWALL: &str = env!("CARGO_BIN_EXE_firewall");

/// Seconds of the suite's soak; `FW_SOAK_SECS` overrides it.
const SECS: f64 = 5.0;

#[test]
fn soak_short() {
    let secs = std::env::var("FW_SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(SECS);
    let s = soak::run(Path::new(FIREWALL), Duration::from_secs_f64(secs));
    let report = s.report();
    println!("{report}");
    assert!(s.syn_sent > 0 && s.cookies_sent > 0, "the SYN flood ran and was answered: {report}");
    assert!(s.acks_sent > 0 && s.acks_invalid > 0, "the forged ACKs ran and were checked: {report}");
    assert!(s.attempted > 0, "legitimate clients ran: {report}");
    assert_eq!(s.completed, s.attempted, "every legitimate connection completed: {report}");
    // None but those of forged ACKs that beat the 2^-29 odds (see problems()).
    assert!(s.flood_flows_after as u64 <= s.forged_acks_validated(), "no flow from the flood ranges: {report}");
    assert!(s.rss_growth_kib() < soak::RSS_GROWTH_LIMIT_KIB, "the controller's RSS stayed bounded: {report}");
    assert!(s.controller_alive, "the controller survived: {report}");
    assert!(s.problems().is_empty(), "{report}");
}
