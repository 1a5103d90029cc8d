//! Long packet-fuzzing runs through the real XDP program (the suite runs
//! 120,000 packets in `tests/fuzz.rs`). Run by `cargo xtask fuzz --packets N`;
//! prints the summary and every recorded violation, and exits with status 1
//! when there was any. Needs root.

#[path = "../tests/common/mod.rs"]
mod common;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Fuzz the XDP firewall with mutated frames (BPF_PROG_TEST_RUN)")]
struct Args {
    /// Packets to run through the program.
    #[arg(long, default_value_t = 1_000_000)]
    packets: u64,
    /// Seed of the mutation PRNG: the same seed replays the same packets.
    #[arg(long, default_value_t = common::fuzz::DEFAULT_SEED)]
    seed: u64,
}

fn main() {
    let args = Args::parse();
    let summary = common::fuzz::run(args.packets, args.seed);
    println!("{}", summary.report());
    if summary.violation_count > 0 {
        std::process::exit(1);
    }
}
