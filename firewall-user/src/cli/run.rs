use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::programs::XdpMode;
use firewall_user::{compile, loader, policy};
use tokio::signal::unix::{SignalKind, signal};

use super::Mode;

pub fn run(iface: &str, policy_path: &Path, mode: Mode) -> Result<ExitCode> {
    loader::check_kernel()?;
    loader::check_privileges()?;
    loader::ifindex(iface)?;
    let compiled = load_policy(policy_path)?;

    let mut fw = loader::Firewall::load()?;
    let addrs = fw.refresh_local_addrs().context("failed to write the host's addresses")?;
    log::debug!("{addrs} local addresses: cookie SYN-ACKs are sent for these only");
    fw.install(&compiled).context("failed to write the policy into the maps")?;
    let xdp_mode = match mode {
        Mode::Native => XdpMode::Driver,
        Mode::Generic => XdpMode::Skb,
    };
    let in_effect = fw.attach(iface, xdp_mode)?;
    // Pins are a convenience (stats also finds the maps by program id): a
    // failure to pin is reported, not fatal, and leaves no half set behind.
    let pins = match fw.pin_maps(iface) {
        Ok(p) => p,
        Err(e) => {
            log::warn!("maps not pinned: {e:#}");
            loader::unpin_maps(&loader::pin_dir(iface));
            None
        }
    };
    log::info!(
        "attached to {iface} ({} mode), policy {} ({}){}",
        if in_effect == XdpMode::Skb { "generic" } else { "native" },
        policy_path.display(),
        compile::describe(&compiled),
        pins.as_ref().map(|p| format!(", maps pinned at {}", p.display())).unwrap_or_default()
    );

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = runtime.block_on(serve(&mut fw, policy_path.to_path_buf()));
    if let Some(dir) = pins {
        loader::unpin_maps(&dir);
    }
    // Dropping the program detaches it.
    drop(fw);
    log::info!("detached from {iface}");
    result.map(|()| ExitCode::SUCCESS)
}

fn load_policy(path: &Path) -> Result<compile::Compiled> {
    let policy = policy::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in &policy.warnings {
        log::warn!("{}", w.render("warning"));
    }
    compile::compile(&policy).map_err(|e| anyhow::anyhow!("{}", e.render(&policy, &path.display().to_string())))
}

/// What identifies a version of the policy file.
fn file_stamp(path: &Path) -> Option<(i64, i64, u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.mtime(), m.mtime_nsec(), m.size(), m.ino()))
}

/// Reloads on SIGHUP or when the file changes; returns on SIGINT/SIGTERM.
async fn serve(fw: &mut loader::Firewall, path: PathBuf) -> Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    // The XDP program ignores idle flows on lookup; the sweep frees them.
    let mut sweep = tokio::time::interval(Duration::from_secs(10));
    // `auto` cookie services: SYN rate measured four times a second.
    const TICK: Duration = Duration::from_millis(250);
    let mut cookie_tick = tokio::time::interval(TICK);
    let mut rotation = fw.key_rotation();
    let mut rotate = tokio::time::interval_at(tokio::time::Instant::now() + rotation, rotation);
    let mut stamp = file_stamp(&path);
    let mut warned_no_meta = false;
    loop {
        tokio::select! {
            _ = hup.recv() => reload(fw, &path, "SIGHUP"),
            _ = poll.tick() => {
                let now = file_stamp(&path);
                if now != stamp && now.is_some() {
                    stamp = now;
                    reload(fw, &path, "file changed");
                }
            }
            _ = cookie_tick.tick() => {
                if let Err(e) = fw.cookie_tick(TICK) {
                    log::warn!("syncookie auto mode: {e:#}");
                }
            }
            _ = rotate.tick() => {
                match fw.rotate_cookie_key() {
                    Ok(()) => log::debug!("rotated the SYN-cookie key"),
                    Err(e) => log::error!("rotating the SYN-cookie key failed (the previous key stays in use): {e:#}"),
                }
                // A reload may have changed the period.
                if fw.key_rotation() != rotation {
                    rotation = fw.key_rotation();
                    rotate = tokio::time::interval_at(tokio::time::Instant::now() + rotation, rotation);
                }
            }
            _ = sweep.tick() => {
                match fw.sweep() {
                    Ok(0) => {}
                    Ok(n) => log::debug!("swept {n} idle flows"),
                    Err(e) => log::warn!("sweeping the connection table failed: {e:#}"),
                }
                housekeeping(fw, &mut warned_no_meta);
            }
            _ = int.recv() => return Ok(()),
            _ = term.recv() => return Ok(()),
        }
    }
}

/// Keeps what the data plane needs to know of the host current: its
/// addresses (cookie destinations) and the sysctls the hand-off depends
/// on; reports once when the driver cannot carry the hand-off mark.
fn housekeeping(fw: &mut loader::Firewall, warned_no_meta: &mut bool) {
    if let Err(e) = fw.refresh_local_addrs() {
        log::warn!("refreshing the host's addresses failed: {e:#}");
    }
    match fw.refresh_cookie_offer() {
        Ok(Some(offer)) => log::warn!("TCP sysctls changed: cookie SYN-ACKs now offer {offer}"),
        Ok(None) => {}
        Err(e) => log::warn!("reading the TCP sysctls failed: {e:#}"),
    }
    if !*warned_no_meta && fw.handoff_broken().unwrap_or(false) {
        *warned_no_meta = true;
        log::error!("this interface's driver gives XDP no metadata room, so a validated cookie ACK cannot be handed to its listener: SYN cookies are off and SYNs go to the host's stack (counter handoff_no_meta); use generic mode (--mode generic) for cookies");
    }
}

/// A policy that fails to load leaves the running one in force.
fn reload(fw: &mut loader::Firewall, path: &Path, why: &str) {
    match load_policy(path).and_then(|c| fw.install(&c).map(|()| c)) {
        Ok(c) => log::info!("reloaded {} ({why}): generation {}, {}", path.display(), fw.generation(), compile::describe(&c)),
        Err(e) => log::error!("reload of {} ({why}) failed; keeping the running policy (generation {}):\n{e:#}", path.display(), fw.generation()),
    }
}
