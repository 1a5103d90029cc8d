use std::{process::ExitCode, time::{Duration, Instant}};

use anyhow::{Result, bail};
use firewall_user::{instance, loader};

/// Stops the firewall that has `iface` (or every firewall of this network
/// namespace): its controller first (SIGTERM, as `systemctl stop` would),
/// then, holding its lock, detaches its programs and removes its pins.
pub fn stop(iface: Option<&str>) -> Result<ExitCode> {
    loader::check_privileges()?;
    if loader::ensure_bpffs()? == loader::Bpffs::Private {
        bail!("this process has a mount namespace of its own (`ip netns exec`?) and cannot see the host's pins; a firewall started the same way lasts only as long as its controller: stop that instead (Ctrl-C or SIGTERM). To reach pinned firewalls, enter just the network namespace (`nsenter --net=/run/netns/NAME firewall stop`)");
    }
    let targets = match iface {
        Some(name) => match instance::find(name)? {
            Some(t) => vec![t],
            None => bail!("no pinned firewall has {name} in this network namespace (`firewall status` lists them)"),
        },
        None => instance::list()?,
    };
    if targets.is_empty() {
        println!("no firewall is pinned in this network namespace");
    }
    for (name, dir) in targets {
        let ifaces = instance::interfaces(&dir);
        if let Some(pid) = instance::lock_holder(&dir) {
            // SAFETY: kill(2) with a pid and a signal.
            if unsafe { libc::kill(pid as i32, libc::SIGTERM) } != 0 {
                let e = std::io::Error::last_os_error();
                // ESRCH: it exited between the lookup and the signal.
                if e.raw_os_error() != Some(libc::ESRCH) {
                    bail!("cannot signal the controller of `{name}` (pid {pid}): {e}");
                }
            }
            let start = Instant::now();
            while instance::controller_alive(&dir) {
                if start.elapsed() > Duration::from_secs(10) {
                    bail!("the controller of `{name}` (pid {pid}) did not exit within 10 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // A controller without --keep removed everything itself.
        if dir.exists() {
            let inst = instance::Instance::lock_existing(&name, &dir, Duration::from_secs(10))?;
            inst.remove();
            if dir.exists() {
                bail!("could not remove every pin under {}", dir.display());
            }
        }
        firewall_user::events::remove_run_dir(&name);
        println!("stopped `{name}`: detached from {}", if ifaces.is_empty() { "nothing".to_owned() } else { ifaces.join(", ") });
    }
    Ok(ExitCode::SUCCESS)
}
