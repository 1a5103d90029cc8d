mod check;
mod conntrack;
mod run;
mod stats;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "firewall", version, about = "A stateful XDP firewall")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Mode {
    /// In the driver (falls back to generic, with a notice, where the driver has no XDP).
    Native,
    /// In the kernel's generic path after the driver (slower; works everywhere).
    Generic,
}

#[derive(Subcommand)]
enum Command {
    /// Load a policy, attach to an interface and stay in the foreground
    /// (SIGHUP or a change of the file reloads; SIGINT/SIGTERM detach).
    Run {
        #[arg(long)]
        iface: String,
        #[arg(long)]
        policy: PathBuf,
        #[arg(long, value_enum, default_value = "native")]
        mode: Mode,
    },
    /// Show per-rule and per-reason counters of a running firewall.
    Stats {
        /// Interface (default: the only firewall in this network namespace).
        #[arg(long)]
        iface: Option<String>,
        /// Refresh every second, with packets per second.
        #[arg(long)]
        watch: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List the connection table of a running firewall.
    Conntrack {
        /// Interface (default: the only firewall in this network namespace).
        #[arg(long)]
        iface: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Validate a policy file without attaching anything.
    Check { file: PathBuf },
}

pub fn main() -> Result<ExitCode> {
    match Cli::parse().command {
        Command::Run { iface, policy, mode } => run::run(&iface, &policy, mode),
        Command::Stats { iface, watch, json } => stats::stats(iface.as_deref(), watch, json),
        Command::Conntrack { iface, json } => conntrack::conntrack(iface.as_deref(), json),
        Command::Check { file } => check::check(&file),
    }
}
