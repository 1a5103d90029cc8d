use std::process::ExitCode;

use anyhow::Result;
use firewall_common::{MAX_FLOWS, MAX_REMOTE_FLOWS, MODE_GENERIC};
use firewall_user::{instance, loader, maps, stats::age};
use serde::Serialize;

#[derive(Serialize)]
struct Interface {
    name: String,
    ifindex: u32,
    mode: &'static str,
    attached_unix: u64,
}

#[derive(Serialize)]
struct Status {
    name: String,
    interfaces: Vec<Interface>,
    policy: String,
    generation: u64,
    loaded_unix: u64,
    controller_pid: u32,
    controller_alive: bool,
    controller_unix: u64,
    created_unix: u64,
    flows: usize,
    flows_max: u32,
    remote_flows: usize,
    remote_flows_max: u32,
    pinned_at: Option<String>,
}

pub fn status(json: bool) -> Result<ExitCode> {
    let groups = maps::open_all()?;
    let mut out = Vec::new();
    for group in groups {
        let first = &group[0];
        let control = first.maps.control.get(&0, 0)?;
        let active = first.maps.active.get(&0, 0)?;
        let len = control.policy_path.iter().position(|&b| b == 0).unwrap_or(control.policy_path.len());
        let (alive, pid) = match &first.pin_dir {
            Some(dir) => match instance::lock_holder(dir) {
                Some(pid) => (true, pid),
                None => (false, control.pid),
            },
            None => (pid_is_controller(control.pid), control.pid),
        };
        out.push(Status {
            name: first.pin_dir.as_ref().and_then(|d| d.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| first.iface.clone()),
            interfaces: group
                .iter()
                .map(|f| {
                    let info = f.maps.iface.get(&0, 0).unwrap_or_default();
                    Interface { name: f.iface.clone(), ifindex: f.ifindex, mode: if info.mode == MODE_GENERIC { "generic" } else { "native" }, attached_unix: info.attached_unix }
                })
                .collect(),
            policy: String::from_utf8_lossy(&control.policy_path[..len]).into_owned(),
            generation: active.generation,
            loaded_unix: control.loaded_unix,
            controller_pid: pid,
            controller_alive: alive,
            controller_unix: control.controller_unix,
            created_unix: control.created_unix,
            flows: first.maps.flows.keys().count(),
            flows_max: MAX_FLOWS,
            remote_flows: first.maps.remote_flows.keys().count(),
            remote_flows_max: MAX_REMOTE_FLOWS,
            pinned_at: first.pin_dir.as_ref().map(|d| d.display().to_string()),
        });
    }
    if json {
        println!("{}", serde_json::to_string(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    if out.is_empty() {
        println!("no firewall in this network namespace");
    }
    let now = loader::unix_now();
    for s in &out {
        let ifs: Vec<String> = s.interfaces.iter().map(|i| format!("{} ({})", i.name, i.mode)).collect();
        println!("firewall `{}` on {}", s.name, ifs.join(", "));
        println!("  policy      {} (generation {}, loaded {} ago)", s.policy, s.generation, age(now.saturating_sub(s.loaded_unix)));
        if s.controller_alive {
            println!("  controller  pid {} running, for {}", s.controller_pid, age(now.saturating_sub(s.controller_unix)));
        } else {
            println!("  controller  not running (pid {} gone): the policy is enforced, but no reloads, key rotation, `auto` switching or sweep", s.controller_pid);
        }
        println!("  up          {}", age(now.saturating_sub(s.created_unix)));
        println!("  flows       {} / {} proven, {} / {} unproven", s.flows, s.flows_max, s.remote_flows, s.remote_flows_max);
        if let Some(p) = &s.pinned_at {
            println!("  pinned at   {p}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `pid` is a live `firewall` process (when no lock can be checked).
fn pid_is_controller(pid: u32) -> bool {
    pid != 0 && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "firewall")
}
