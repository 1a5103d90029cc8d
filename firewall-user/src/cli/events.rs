use std::{
    io::{BufRead as _, Read as _, Seek as _},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use firewall_user::{events, instance, loader, stats::age};

/// The event directory of the firewall that has `iface` (or the only one).
pub(super) fn dir(iface: Option<&str>) -> Result<PathBuf> {
    loader::check_privileges()?;
    let name = match iface {
        Some(i) => instance::find(i)?.map(|(n, _)| n),
        None => {
            let all = instance::list()?;
            if all.len() > 1 {
                bail!("several firewalls run in this network namespace; choose one with --iface");
            }
            all.into_iter().next().map(|(n, _)| n)
        }
    };
    if let Some(n) = name {
        return events::run_dir(&n);
    }
    // No pins visible (`ip netns exec`): the one firewall that logs here.
    let root = events::run_dir("")?;
    let dirs: Vec<PathBuf> = std::fs::read_dir(&root).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    // A firewall is named after its first interface: with several here
    // (some left by firewalls gone), the one named so.
    if let Some(named) = iface.and_then(|i| dirs.iter().find(|d| d.file_name().is_some_and(|n| n == i))) {
        return Ok(named.clone());
    }
    match (dirs.len(), iface) {
        (1, _) => Ok(dirs.into_iter().next().expect("one")),
        (0, Some(i)) => bail!("no firewall logs events for {i} in this network namespace"),
        (0, None) => bail!("no firewall logs events in this network namespace"),
        _ => bail!("several firewalls log events here; choose one with --iface"),
    }
}

fn show(line: &str, json: bool) {
    if json {
        println!("{line}");
    } else if let Ok(e) = serde_json::from_str::<events::Entry>(line) {
        println!("{}", e.text());
    } else {
        // A line of another version: shown as it is.
        println!("{line}");
    }
}

/// The last `last` events, then (with `follow`) new ones as they come.
pub fn events(iface: Option<&str>, follow: bool, json: bool, last: usize) -> Result<ExitCode> {
    let path = dir(iface)?.join("events.jsonl");
    let mut file = std::fs::File::open(&path).with_context(|| format!("no events at {} yet (drops are recorded with [settings.events] drops = true; rules with log = true, cookie-mode changes and alerts are recorded as they happen)", path.display()))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let lines: Vec<&str> = text.lines().collect();
    for l in &lines[lines.len().saturating_sub(last)..] {
        show(l, json);
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    use std::os::unix::fs::MetadataExt as _;
    let mut ino = file.metadata()?.ino();
    let mut pos = file.stream_position()?;
    let mut pending = String::new();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        // What the file we have open holds beyond `pos` (after a rotation
        // that is the old file's tail), then the new file from its start.
        read_from(&file, &mut pos, &mut pending, json)?;
        let now = std::fs::metadata(&path).ok();
        if now.as_ref().is_some_and(|m| m.ino() != ino || m.len() < pos) {
            file = std::fs::File::open(&path)?;
            ino = file.metadata()?.ino();
            pos = 0;
            pending.clear();
            read_from(&file, &mut pos, &mut pending, json)?;
        }
    }
}

/// Prints the whole lines of `file` past `pos`, keeping a partial last one.
fn read_from(file: &std::fs::File, pos: &mut u64, pending: &mut String, json: bool) -> Result<()> {
    let mut f = file;
    f.seek(std::io::SeekFrom::Start(*pos))?;
    let mut reader = std::io::BufReader::new(f);
    loop {
        let mut chunk = String::new();
        let n = reader.read_line(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        *pos += n as u64;
        pending.push_str(&chunk);
        if pending.ends_with('\n') {
            show(pending.trim_end(), json);
            pending.clear();
        }
    }
}

/// The sources with the most recorded drops, and per cookie service of
/// the most SYNs.
pub fn top(iface: Option<&str>, json: bool) -> Result<ExitCode> {
    let path = dir(iface)?.join("top.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("no top sources at {} (is the controller running with events on?)", path.display()))?;
    if json {
        println!("{}", text.trim_end());
        return Ok(ExitCode::SUCCESS);
    }
    let top: events::Top = serde_json::from_str(&text).context("top.json is not what this version writes")?;
    let now = loader::unix_now() as f64;
    println!("top sources of recorded drops ({} recorded, {} left out by sampling and caps; {} ago)", top.recorded, top.not_recorded, age((now - top.time).max(0.0) as u64));
    println!("\n{:<28} {:>10}  {:<36} {:>10}", "SOURCE", "DROPS", "REASONS", "LAST");
    for s in &top.sources {
        let mut reasons: Vec<(&String, &u64)> = s.reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1));
        let r: Vec<String> = reasons.iter().take(2).map(|(k, v)| format!("{k} {v}")).collect();
        println!("{:<28} {:>10}  {:<36} {:>10}", s.prefix, s.recorded, r.join(", "), format!("{} ago", age((now - s.last).max(0.0) as u64)));
    }
    for svc in &top.services {
        println!("\ntop sources of SYNs to `{}` answered with cookies ({} recorded, {} left out by sampling and caps)", svc.service, svc.recorded, svc.not_recorded);
        println!("\n{:<28} {:>10}  {:>10}", "SOURCE", "SYNS", "LAST");
        for s in &svc.sources {
            println!("{:<28} {:>10}  {:>10}", s.prefix, s.syns, format!("{} ago", age((now - s.last).max(0.0) as u64)));
        }
    }
    Ok(ExitCode::SUCCESS)
}
