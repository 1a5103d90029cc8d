use anyhow::{Context as _, Result, bail};

use crate::{report, setup};

/// In-kernel cost per packet (BPF_PROG_TEST_RUN with repeat) at 10 to
/// 10,000 rules, then whole-system rates on veth beside the kernel's
/// syncookies and nftables, then the report under `results/`. Not a test:
/// CI does not run it.
pub fn bench() -> Result<()> {
    setup::ensure_all()?;
    setup::ensure_bench()?;
    for example in ["bench", "rates"] {
        let status = setup::cargo_command()
            .args(["run", "--release", "--package", "firewall-user", "--example", example])
            .status()
            .with_context(|| format!("failed to run the {example} benchmark"))?;
        if !status.success() {
            bail!("the {example} benchmark failed: {status}");
        }
    }
    let dir = setup::workspace_root().join("results");
    report::write(&dir)?;
    eprintln!("bench: report in {0}/bench.md, chart {0}/bench.svg, data {0}/bench.json", dir.display());
    Ok(())
}
