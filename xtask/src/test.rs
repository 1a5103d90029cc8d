use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::setup;

#[derive(Args)]
pub struct Options {
    /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
    #[arg(last = true)]
    args: Vec<String>,
}

/// Installs what is missing, then runs every test of the workspace: unit
/// tests, the BPF_PROG_TEST_RUN tests and the namespace end-to-end tests.
pub fn test(opts: Options) -> Result<()> {
    setup::ensure_all()?;
    if unsafe { geteuid() } != 0 {
        bail!("the kernel tests load BPF programs and create network namespaces: run as root");
    }
    let mut cmd = setup::cargo_command();
    // firewall-ebpf only builds for the BPF target (build.rs does that).
    cmd.args(["test", "--workspace", "--exclude", "firewall-ebpf", "--no-fail-fast"]);
    if !opts.args.is_empty() {
        cmd.arg("--").args(&opts.args);
    }
    let status = cmd.status().context("failed to run cargo test")?;
    if !status.success() {
        bail!("tests failed: {status}");
    }
    Ok(())
}

unsafe extern "C" {
    pub(crate) fn geteuid() -> u32;
}
