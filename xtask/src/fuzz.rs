use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::setup;

#[derive(Args)]
pub struct Options {
    /// Packets to run through the XDP program (the test suite runs 120,000).
    #[arg(long, default_value_t = 1_000_000)]
    packets: u64,
    /// Seed of the mutation PRNG; the same seed replays the same packets.
    /// Default: the suite's seed.
    #[arg(long)]
    seed: Option<u64>,
}

/// Long fuzzing runs: `firewall-user/examples/fuzz.rs` (the engine of
/// `tests/fuzz.rs`) built in release mode, run as root. Fails when any
/// invariant was violated; the report lists each with the packet's hex.
pub fn fuzz(opts: Options) -> Result<()> {
    setup::ensure_all()?;
    if unsafe { crate::test::geteuid() } != 0 {
        bail!("fuzzing loads the XDP program and runs it with BPF_PROG_TEST_RUN: run as root");
    }
    let mut cmd = setup::cargo_command();
    cmd.args(["run", "--release", "--package", "firewall-user", "--example", "fuzz", "--"]);
    cmd.args(["--packets", &opts.packets.to_string()]);
    if let Some(seed) = opts.seed {
        cmd.args(["--seed", &seed.to_string()]);
    }
    let status = cmd.status().context("failed to run the fuzzer")?;
    if !status.success() {
        bail!("fuzzing found violations (or failed): {status}");
    }
    Ok(())
}
