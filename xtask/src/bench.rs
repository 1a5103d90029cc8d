use anyhow::{Context as _, Result, bail};

use crate::setup;

/// In-kernel cost per packet (BPF_PROG_TEST_RUN with repeat) at 10 to
/// 10,000 rules. Not a test: CI does not run it.
pub fn bench() -> Result<()> {
    setup::ensure_all()?;
    let status = setup::cargo_command()
        .args(["run", "--release", "--package", "firewall-user", "--example", "bench"])
        .status()
        .context("failed to run the benchmark")?;
    if !status.success() {
        bail!("benchmark failed: {status}");
    }
    Ok(())
}
