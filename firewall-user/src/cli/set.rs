use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use firewall_user::{conntrack::monotonic_ns, maps, policy::parse_duration, sets};

#[derive(Subcommand)]
pub enum SetCommand {
    /// Add addresses or prefixes to a set (an element already there gets the new timeout), or ports to a port set.
    Add {
        /// The set's name (a [[set]] of the running policy).
        name: String,
        /// IPv4/IPv6 addresses or prefixes, such as 192.0.2.7 or 2001:db8::/32; for a port set, ports or ranges such as 443 or 8000-8100.
        #[arg(required = true)]
        elements: Vec<String>,
        /// Remove the elements after this long (such as 90s, 10m, 2h, 7d); default: the set's timeout.
        #[arg(long)]
        timeout: Option<String>,
        /// An interface of the firewall (default: the only firewall here).
        #[arg(long)]
        iface: Option<String>,
    },
    /// Remove elements from a set.
    Del {
        /// The set's name.
        name: String,
        /// The elements, as they were added.
        #[arg(required = true)]
        elements: Vec<String>,
        /// Skip elements that are not in the set (already expired, say) instead of failing.
        #[arg(long)]
        if_present: bool,
        /// An interface of the firewall (default: the only firewall here).
        #[arg(long)]
        iface: Option<String>,
    },
    /// List the sets, or one set's elements with the seconds they have left.
    List {
        /// One set (default: every set, without elements).
        name: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// An interface of the firewall (default: the only firewall here).
        #[arg(long)]
        iface: Option<String>,
    },
    /// Remove every element of a set.
    Flush {
        /// The set's name.
        name: String,
        /// An interface of the firewall (default: the only firewall here).
        #[arg(long)]
        iface: Option<String>,
    },
}

pub fn set(cmd: SetCommand) -> Result<ExitCode> {
    let iface = match &cmd {
        SetCommand::Add { iface, .. } | SetCommand::Del { iface, .. } | SetCommand::List { iface, .. } | SetCommand::Flush { iface, .. } => iface.clone(),
    };
    let mut found = maps::open(iface.as_deref())?;
    // One set of maps per firewall, whichever interface it is found on.
    let s = &mut found.first_mut().expect("open returns one firewall").maps.sets;
    let parse = |list: &[String]| -> Result<Vec<_>> { list.iter().map(|e| sets::parse_element(e).map_err(anyhow::Error::from)).collect() };
    let parse_ports = |list: &[String]| -> Result<Vec<_>> { list.iter().map(|e| sets::parse_port_element(e).map_err(anyhow::Error::from)).collect() };
    // The named set, looked up once: an unknown name is an error before
    // its elements are read, and its kind says how to read them.
    let port_set = match &cmd {
        SetCommand::Add { name, .. } | SetCommand::Del { name, .. } | SetCommand::List { name: Some(name), .. } | SetCommand::Flush { name, .. } => {
            s.find(name)?.def.kind == firewall_common::SET_KIND_PORT
        }
        SetCommand::List { name: None, .. } => false,
    };
    match cmd {
        SetCommand::Add { name, elements, timeout, .. } if port_set => {
            if timeout.is_some() {
                return Err(sets::SetError::PortTimeout(name).into());
            }
            let ranges = parse_ports(&elements)?;
            let _lock = sets::lock()?;
            let added = s.add_ports(&name, &ranges)?;
            eprintln!("{added} ports added to {name}");
        }
        SetCommand::Del { name, elements, if_present, .. } if port_set => {
            let ranges = parse_ports(&elements)?;
            let _lock = sets::lock()?;
            let n = s.del_ports(&name, &ranges, if_present)?;
            eprintln!("{n} ports removed from {name}");
        }
        SetCommand::List { name: Some(name), json, .. } if port_set => {
            let set = s.find(&name)?;
            let ranges = s.port_members(set.id)?;
            if json {
                let items: Vec<_> = ranges.iter().map(|r| serde_json::json!({ "element": sets::port_text(r) })).collect();
                println!("{}", serde_json::json!({ "name": name, "size": set.def.max, "elements": items }));
            } else {
                for r in &ranges {
                    println!("{}", sets::port_text(r));
                }
            }
        }
        SetCommand::Add { name, elements, timeout, .. } => {
            let elements = parse(&elements)?;
            let timeout = timeout.map(|t| parse_duration(&t).map_err(anyhow::Error::msg)).transpose().context("--timeout")?;
            let _lock = sets::lock()?;
            let added = s.add(&name, &elements, timeout, monotonic_ns())?;
            eprintln!("{added} added to {name} ({} refreshed)", elements.len() - added);
        }
        SetCommand::Del { name, elements, if_present, .. } => {
            let elements = parse(&elements)?;
            let _lock = sets::lock()?;
            let n = s.del(&name, &elements, if_present)?;
            eprintln!("{n} removed from {name}");
        }
        SetCommand::Flush { name, .. } => {
            let _lock = sets::lock()?;
            let n = s.flush(&name)?;
            eprintln!("{n} removed from {name}");
        }
        SetCommand::List { name: Some(name), json, .. } => {
            let set = s.find(&name)?;
            let now = monotonic_ns();
            let elements = s.elements(set.id, now);
            let left = |exp: u64| (exp != 0).then(|| exp.saturating_sub(now).div_ceil(1_000_000_000));
            if json {
                let items: Vec<_> = elements.iter().map(|(c, exp)| serde_json::json!({ "element": sets::element_text(c), "expires_in": left(*exp) })).collect();
                println!("{}", serde_json::json!({ "name": name, "size": set.def.max, "elements": items }));
            } else {
                for (c, exp) in &elements {
                    match left(*exp) {
                        Some(secs) => println!("{}  expires in {secs}s", sets::element_text(c)),
                        None => println!("{}", sets::element_text(c)),
                    }
                }
            }
        }
        SetCommand::List { name: None, json, .. } => {
            let all: Vec<_> = s.all()?.into_iter().filter(|(_, d)| d.in_use == sets::LIVE).collect();
            if json {
                let kind = |d: &firewall_common::SetDef| if d.kind == firewall_common::SET_KIND_PORT { "port" } else { "addr" };
                let items: Vec<_> = all.iter().map(|(_, d)| serde_json::json!({ "name": d.name_str(), "type": kind(d), "elements": d.count, "size": d.max, "timeout": d.timeout_secs })).collect();
                println!("{}", serde_json::Value::Array(items));
            } else {
                for (_, d) in &all {
                    let timeout = if d.timeout_secs == 0 { String::new() } else { format!(", timeout {}s", d.timeout_secs) };
                    println!("{}  {} of {} elements{timeout}", d.name_str(), d.count, d.max);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
