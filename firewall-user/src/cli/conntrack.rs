use std::process::ExitCode;

use anyhow::{Context as _, Result};
use firewall_user::{conntrack, maps};

pub fn conntrack(iface: Option<&str>, json: bool) -> Result<ExitCode> {
    let found = maps::open(iface)?;
    // One table for every interface of a firewall.
    let m = &found.first().expect("open returns one firewall").maps;
    let entries = conntrack::list(&[&m.flows, &m.remote_flows]).context("failed to read the connection table")?;
    if json {
        println!("{}", serde_json::to_string(&entries)?);
    } else {
        print!("{}", conntrack::render(&entries));
    }
    Ok(ExitCode::SUCCESS)
}
