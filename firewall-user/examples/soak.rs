//! Long soak runs under attack (the suite runs 5 seconds in
//! `tests/soak.rs`; the engine is `tests/common/soak.rs`). Run by
//! `cargo xtask soak --secs N`; prints the figures and exits with status 1
//! when a goal was not met. Needs root.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{path::PathBuf, time::Duration};

use clap::Parser;

#[derive(Parser)]
#[command(about = "Soak the firewall under a SYN flood, forged ACKs and legitimate clients")]
struct Args {
    /// Seconds the loads run.
    #[arg(long, default_value_t = 60.0)]
    secs: f64,
    /// The `firewall` binary (default: the one beside this example's directory).
    #[arg(long)]
    firewall: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let firewall = args.firewall.unwrap_or_else(common::soak::sibling_firewall_binary);
    let summary = common::soak::run(&firewall, Duration::from_secs_f64(args.secs));
    println!("{}", summary.report());
    if !summary.problems().is_empty() {
        std::process::exit(1);
    }
}
