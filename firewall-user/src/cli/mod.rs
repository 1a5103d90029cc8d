mod check;
mod conntrack;
mod events;
mod run;
mod set;
mod stats;
mod status;
mod stop;

pub use run::{REFUSED_EXIT, Refused};

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
    /// Load a policy, attach to one or more interfaces and stay in the
    /// foreground (SIGHUP or a change of the file reloads; SIGINT/SIGTERM
    /// detach unless --keep). The data plane is pinned: if this process dies
    /// it keeps enforcing, and the next `run` takes it over.
    Run(run::RunArgs),
    /// Detach a firewall and remove its pins (stopping its controller first).
    Stop {
        /// An interface of the firewall to stop (default: every firewall in this network namespace).
        #[arg(long)]
        iface: Option<String>,
    },
    /// List the firewalls of this network namespace: interfaces, mode,
    /// policy, controller, uptime, connection-table use.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show per-rule and per-reason counters of a running firewall.
    Stats {
        /// One interface's counters (default: the sum over every interface of the only firewall here).
        #[arg(long)]
        iface: Option<String>,
        /// Refresh every second, with packets per second.
        #[arg(long)]
        watch: bool,
        /// Machine-readable output (every reason, zero or not).
        #[arg(long)]
        json: bool,
        /// Show the reasons that counted nothing too.
        #[arg(long)]
        all: bool,
    },
    /// Show the events a running firewall logged: drops ([settings.events]), matches of `log = true` rules, cookie-mode and table changes, alerts.
    Events {
        /// An interface of the firewall (default: the only firewall here).
        #[arg(long)]
        iface: Option<String>,
        /// Keep printing new events as they come (until Ctrl-C).
        #[arg(long)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// How many of the latest events to show first.
        #[arg(long, default_value_t = 20)]
        last: usize,
    },
    /// Show the source prefixes with the most recorded drops, and per cookie service the most SYNs.
    Top {
        /// An interface of the firewall (default: the only firewall here).
        #[arg(long)]
        iface: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List the connection table of a running firewall (shared by its interfaces).
    Conntrack {
        /// An interface of the firewall (default: the only firewall in this network namespace).
        #[arg(long)]
        iface: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Change or show the named sets of a running firewall ([[set]] in the policy), without a reload.
    Set {
        #[command(subcommand)]
        command: set::SetCommand,
    },
    /// Validate a policy file without attaching anything.
    Check {
        /// Policy file (TOML).
        file: PathBuf,
    },
}

pub fn main() -> Result<ExitCode> {
    match Cli::parse().command {
        Command::Run(args) => run::run(args),
        Command::Stop { iface } => stop::stop(iface.as_deref()),
        Command::Status { json } => status::status(json),
        Command::Stats { iface, watch, json, all } => stats::stats(iface.as_deref(), watch, json, all),
        Command::Conntrack { iface, json } => conntrack::conntrack(iface.as_deref(), json),
        Command::Check { file } => check::check(&file),
        Command::Set { command } => set::set(command),
        Command::Events { iface, follow, json, last } => events::events(iface.as_deref(), follow, json, last),
        Command::Top { iface, json } => events::top(iface.as_deref(), json),
    }
}
