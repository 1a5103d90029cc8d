//! Project tasks: `cargo xtask setup | build | run | test | bench | fuzz | soak | install`.
//!
//! The xtask starts on the machine's default stable toolchain and installs
//! the pinned ones (see `pins.rs`) before it drives any other build.

mod bench;
mod build;
mod fuzz;
mod install;
mod pins;
mod report;
mod run;
mod setup;
mod soak;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, run and test the firewall")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what a fresh machine lacks: toolchains, rust-src, bpf-linker, Debian packages.
    Setup,
    /// Build the eBPF object and the `firewall` binary.
    Build(build::Options),
    /// Build, then run `firewall run ARGS` (defaults: config/default.toml, the default-route interface).
    Run(run::Options),
    /// Measure in-kernel cost per packet and whole-system rates beside the kernel and nftables; report in results/.
    Bench,
    /// Run the whole test suite (unit, BPF_PROG_TEST_RUN and namespace end-to-end tests).
    Test(test::Options),
    /// Run N mutated frames through the real XDP program (BPF_PROG_TEST_RUN) and check its invariants; as root.
    Fuzz(fuzz::Options),
    /// Run a spoofed SYN flood, forged cookie ACKs and legitimate clients at once against `firewall run` for N seconds; report; as root.
    Soak(soak::Options),
    /// Build the release binary; install it, the systemd unit firewall@.service and /etc/firewall/example.toml.
    Install(install::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::ensure_all(),
        Command::Build(opts) => build::build(&opts),
        Command::Run(opts) => run::run(opts),
        Command::Test(opts) => test::test(opts),
        Command::Bench => bench::bench(),
        Command::Fuzz(opts) => fuzz::fuzz(opts),
        Command::Install(opts) => install::install(&opts),
        Command::Soak(opts) => soak::soak(opts),
    }
}
