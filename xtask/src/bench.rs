use anyhow::{Context as _, Result, bail};

use crate::setup;

/// In-kernel cost per packet (BPF_PROG_TEST_RUN with repeat) at 10 to
/// 10,000 rules, then SYN-ACKs per second answered from a spoofed flood on
/// veth by the firewall and by the kernel's own syncookies, side by side.
/// Not a test: CI does not run it.
pub fn bench() -> Result<()> {
    setup::ensure_all()?;
    for example in ["bench", "flood"] {
        let status = setup::cargo_command()
            .args(["run", "--release", "--package", "firewall-user", "--example", example])
            .status()
            .with_context(|| format!("failed to run the {example} benchmark"))?;
        if !status.success() {
            bail!("the {example} benchmark failed: {status}");
        }
    }
    Ok(())
}
