use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::setup;

#[derive(Args, Default)]
pub struct Options {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

/// Builds the `firewall` binary; its build script compiles the eBPF object.
pub fn build(opts: &Options) -> Result<()> {
    setup::ensure_all()?;
    let mut cmd = setup::cargo_command();
    cmd.args(["build", "--package", "firewall-user", "--bin", "firewall"]);
    if opts.release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("failed to run cargo build")?;
    if !status.success() {
        bail!("cargo build failed: {status}");
    }
    Ok(())
}

pub fn firewall_binary(opts: &Options) -> std::path::PathBuf {
    let profile = if opts.release { "release" } else { "debug" };
    setup::workspace_root().join("target").join(profile).join("firewall")
}
