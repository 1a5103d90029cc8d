use std::fs;

use anyhow::{Context as _, Result, bail};

use crate::{report, setup};

/// In-kernel cost per packet (BPF_PROG_TEST_RUN with repeat) at 10 to
/// 10,000 rules, then whole-system rates on veth beside the kernel's
/// syncookies and nftables, then the report under `results/`, kept in
/// `report/`. Not a test:
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
    // `results/` is scratch (git-ignored); the latest report is kept in
    // `report/`, tracked, so that the README's chart renders from a clone.
    let kept = setup::workspace_root().join("report");
    fs::create_dir_all(&kept).with_context(|| format!("cannot create {}", kept.display()))?;
    for entry in fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md" || e == "json" || e == "svg") {
            let to = kept.join(path.file_name().expect("a file"));
            fs::copy(&path, &to).with_context(|| format!("cannot copy {} to {}", path.display(), to.display()))?;
        }
    }
    eprintln!("bench: report in {0}/bench.md, chart {0}/bench.svg, data {0}/bench.json (kept in {1})", dir.display(), kept.display());
    Ok(())
}
