use std::{os::unix::process::CommandExt as _, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{build, setup};

#[derive(Args)]
pub struct Options {
    /// Build and run the release profile.
    #[arg(long)]
    release: bool,
    /// Arguments for `firewall run`.
    #[arg(last = true)]
    args: Vec<String>,
}

pub fn run(opts: Options) -> Result<()> {
    let build_opts = build::Options { release: opts.release };
    build::build(&build_opts)?;

    let mut args = opts.args;
    if !args.iter().any(|a| a == "--policy" || a.starts_with("--policy=")) {
        let policy = setup::workspace_root().join("config").join("default.toml");
        eprintln!("run: no --policy given; using {}", policy.display());
        args.push("--policy".into());
        args.push(policy.display().to_string());
    }
    if !args.iter().any(|a| a == "--iface" || a.starts_with("--iface=")) {
        let iface = default_route_interface()?;
        eprintln!("run: no --iface given; using {iface}, the interface of the default route");
        args.push("--iface".into());
        args.push(iface);
    }
    let bin = build::firewall_binary(&build_opts);
    // Root is needed to load BPF; re-exec through sudo only when not root.
    let err = if unsafe { libc_geteuid() } == 0 {
        Command::new(&bin).arg("run").args(&args).exec()
    } else {
        Command::new("sudo").arg("-E").arg(&bin).arg("run").args(&args).exec()
    };
    Err(err).with_context(|| format!("failed to exec {}", bin.display()))
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Reads the interface of the IPv4 (else IPv6) default route from procfs.
pub(crate) fn default_route_interface() -> Result<String> {
    let routes = std::fs::read_to_string("/proc/net/route").context("read /proc/net/route")?;
    for line in routes.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() > 2 && cols[1] == "00000000" {
            return Ok(cols[0].to_string());
        }
    }
    let routes6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    for line in routes6.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() == 10 && cols[0] == "00000000000000000000000000000000" && cols[1] == "00" {
            if cols[9] != "lo" {
                return Ok(cols[9].to_string());
            }
        }
    }
    bail!("no default route: pass --iface explicitly")
}
