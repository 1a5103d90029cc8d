use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{build, setup};

#[derive(Args)]
pub struct Options {
    /// Seconds the loads run (the test suite runs 5).
    #[arg(long, default_value_t = 60)]
    secs: u64,
}

/// Long soak runs: `firewall-user/examples/soak.rs` (the engine of
/// `tests/soak.rs`) built in release mode, run as root against the release
/// `firewall` binary. Fails when a goal was not met: a legitimate
/// connection failed, the flood left flows, the controller's RSS grew by
/// 16 MiB or more, or the controller died.
pub fn soak(opts: Options) -> Result<()> {
    if unsafe { crate::test::geteuid() } != 0 {
        bail!("the soak loads BPF programs and creates network namespaces: run as root");
    }
    let release = build::Options { release: true };
    build::build(&release)?;
    let mut cmd = setup::cargo_command();
    cmd.args(["run", "--release", "--package", "firewall-user", "--example", "soak", "--"]);
    cmd.args(["--secs", &opts.secs.to_string()]);
    cmd.arg("--firewall").arg(build::firewall_binary(&release));
    let status = cmd.status().context("failed to run the soak")?;
    if !status.success() {
        bail!("the soak did not meet its goals (or failed): {status}");
    }
    Ok(())
}
