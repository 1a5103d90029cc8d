use std::{process::ExitCode, time::{Duration, Instant}};

use anyhow::{Context as _, Result};
use firewall_user::{maps, stats};

pub fn stats(iface: Option<&str>, watch: bool, json: bool) -> Result<ExitCode> {
    let found = maps::open(iface)?;
    let name = iface.map(str::to_owned).unwrap_or_else(|| format!("ifindex {}", found.ifindex));
    let m = &found.maps;
    let read = || stats::snapshot(&m.sources());
    let mut previous: Option<(stats::Snapshot, Instant)> = None;
    loop {
        let snap = read().context("failed to read the firewall's counters")?;
        if json {
            println!("{}", serde_json::to_string(&serde_json::json!({
                "iface": name,
                "found_via": found.via,
                "generation": snap.generation,
                "default": snap.default_action,
                "rules": snap.rules,
                "reasons": snap.reasons,
                "services": snap.services,
            }))?);
        } else {
            if watch {
                // Clear the screen and home the cursor.
                print!("\x1b[2J\x1b[H");
            }
            let prev = previous.as_ref().map(|(s, t)| (s, t.elapsed().as_secs_f64()));
            print!("{}", stats::render(&name, &snap, prev));
        }
        if !watch {
            return Ok(ExitCode::SUCCESS);
        }
        previous = Some((snap, Instant::now()));
        std::thread::sleep(Duration::from_secs(1));
    }
}
