use std::{process::ExitCode, time::{Duration, Instant}};

use anyhow::{Context as _, Result};
use firewall_user::{maps, stats};

pub fn stats(iface: Option<&str>, watch: bool, json: bool, all: bool) -> Result<ExitCode> {
    let found = maps::open(iface)?;
    let names: Vec<&str> = found.iter().map(|f| f.iface.as_str()).collect();
    let name = names.join(", ");
    let read = || maps::snapshot_sum(&found);
    if watch && !json && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        // The controller's top sources, if it records events (read each second).
        let top_path = super::events::dir(iface).ok().map(|d| d.join("top.json"));
        return live(name, read, top_path);
    }
    let mut previous: Option<(stats::Snapshot, Instant)> = None;
    loop {
        let snap = read().context("failed to read the firewall's counters")?;
        if json {
            println!("{}", serde_json::to_string(&serde_json::json!({
                "iface": name,
                "interfaces": names,
                "found_via": found[0].via,
                "generation": snap.generation,
                "default": snap.default_action,
                "rules": snap.rules,
                "reasons": snap.reasons,
                "services": snap.services,
                "limits": snap.limits,
            }))?);
        } else {
            if watch {
                // Clear the screen and home the cursor.
                print!("\x1b[2J\x1b[H");
            }
            let prev = previous.as_ref().map(|(s, t)| (s, t.elapsed().as_secs_f64()));
            print!("{}", stats::render(&name, &snap, prev, all));
        }
        if !watch {
            return Ok(ExitCode::SUCCESS);
        }
        previous = Some((snap, Instant::now()));
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The live view: redrawn every second until `q`, Esc or Ctrl-C.
fn live(name: String, read: impl Fn() -> Result<stats::Snapshot>, top_path: Option<std::path::PathBuf>) -> Result<ExitCode> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
    let top = || top_path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).and_then(|t| serde_json::from_str(&t).ok());
    let mut view = firewall_user::view::View::new(name, read().context("failed to read the firewall's counters")?);
    view.top = top();
    let mut terminal = ratatui::init();
    let result = (|| -> Result<()> {
        let mut last = Instant::now();
        loop {
            terminal.draw(|f| firewall_user::view::draw(f, &view))?;
            let wait = Duration::from_secs(1).saturating_sub(last.elapsed());
            if event::poll(wait)? {
                if let Event::Key(k) = event::read()? {
                    let ctrl_c = k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                        return Ok(());
                    }
                }
                continue;
            }
            let secs = last.elapsed().as_secs_f64();
            last = Instant::now();
            view.push(read().context("failed to read the firewall's counters")?, secs);
            view.top = top();
        }
    })();
    ratatui::restore();
    result.map(|()| ExitCode::SUCCESS)
}
