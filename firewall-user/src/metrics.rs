//! `/metrics` in the Prometheus text format: every scrape reads the
//! firewall's maps (per-interface counters, the shared flow tables) and
//! the controller's own counts, so nothing is cached or double counted.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use firewall_common::Reason;

use crate::{maps::Found, stats};

/// What the controller counts itself.
#[derive(Debug, Default)]
pub struct ControllerCounts {
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Housekeeping errors: sweep, key rotation, address or sysctl refresh.
    pub errors: AtomicU64,
}

impl ControllerCounts {
    pub const fn new() -> Self {
        Self { reloads_ok: AtomicU64::new(0), reloads_failed: AtomicU64::new(0), errors: AtomicU64::new(0) }
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Which alerts fire, by name (the controller sets it after each check).
static ALERTS: std::sync::Mutex<Vec<(String, bool)>> = std::sync::Mutex::new(Vec::new());

pub fn set_alerts(firing: Vec<(String, bool)>) {
    *ALERTS.lock().unwrap_or_else(|e| e.into_inner()) = firing;
}

/// One of this controller's programs, for its run counts.
#[derive(Debug, Clone)]
pub struct ProgramRef {
    pub iface: String,
    pub name: String,
    pub id: u32,
}

type Labels = Vec<(&'static str, String)>;

fn counter_family(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    reg.register(name, help, f.clone());
    f
}

fn gauge_family(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    reg.register(name, help, f.clone());
    f
}

fn lab(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// The exposition text for the firewall's interfaces `found`.
pub fn render(found: &[Found], controller: &ControllerCounts, programs: &[ProgramRef]) -> Result<String> {
    let mut reg = Registry::default();
    let rule_packets = counter_family(&mut reg, "firewall_rule_packets", "Packets a rule judged (the first packet of each connection it admitted, or every packet it dropped)");
    let rule_bytes = counter_family(&mut reg, "firewall_rule_bytes", "Bytes of the packets a rule judged");
    let reason_packets = counter_family(&mut reg, "firewall_reason_packets", "Packets by the reason of their verdict");
    let reason_bytes = counter_family(&mut reg, "firewall_reason_bytes", "Bytes by the reason of their verdict");
    let syns = counter_family(&mut reg, "firewall_cookie_syns", "SYNs to a SYN-cookie service");
    let cookies = counter_family(&mut reg, "firewall_cookies_sent", "SYN-ACKs with a cookie sent from XDP");
    let acks_valid = counter_family(&mut reg, "firewall_cookie_acks_valid", "ACKs whose cookie was valid (handed to the listener)");
    let acks_invalid = counter_family(&mut reg, "firewall_cookie_acks_invalid", "ACKs to a cookie service with no flow and no valid cookie");
    let refused = counter_family(&mut reg, "firewall_rule_refused", "New connections or flows a rule's limits refused, by reason (rate_limited, conn_limited; also in firewall_rule_packets)");
    let cookie_mode = gauge_family(&mut reg, "firewall_cookie_mode", "1 while a service answers SYNs with cookies, 0 while they go to the host");
    let flows = gauge_family(&mut reg, "firewall_flows", "Entries in a connection table");
    let flows_max = gauge_family(&mut reg, "firewall_flows_max", "Capacity of a connection table");
    let generation = gauge_family(&mut reg, "firewall_policy_generation", "Generation of the policy in force (one more per successful load)");
    let reloads = counter_family(&mut reg, "firewall_reloads", "Policy reloads by this controller, by result");
    let errors = counter_family(&mut reg, "firewall_controller_errors", "Housekeeping errors of this controller (sweep, key rotation, refreshes)");
    let runs = counter_family(&mut reg, "firewall_program_runs", "Runs of each program (kernel.bpf_stats_enabled=1 to count)");
    let run_seconds = Family::<Labels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
    reg.register("firewall_program_run_seconds", "Time spent in each program (kernel.bpf_stats_enabled=1 to count)", run_seconds.clone());

    for f in found {
        let iface = f.iface.as_str();
        let snap = stats::snapshot(&f.maps.sources())?;
        for r in &snap.rules {
            let l = lab(&[("rule", &r.name), ("action", r.action), ("iface", iface)]);
            rule_packets.get_or_create(&l).inc_by(r.packets);
            rule_bytes.get_or_create(&l).inc_by(r.bytes);
        }
        for r in &snap.reasons {
            let l = lab(&[("reason", r.reason), ("verdict", r.verdict), ("iface", iface)]);
            reason_packets.get_or_create(&l).inc_by(r.packets);
            reason_bytes.get_or_create(&l).inc_by(r.bytes);
        }
        for l in &snap.limits {
            for (reason, n) in [(Reason::RateLimited, l.rate_limited), (Reason::ConnLimited, l.conn_limited)] {
                refused.get_or_create(&lab(&[("rule", &l.name), ("reason", reason.name()), ("iface", iface)])).inc_by(n);
            }
        }
        for s in &snap.services {
            let l = lab(&[("service", &s.name), ("iface", iface)]);
            syns.get_or_create(&l).inc_by(s.syns);
            cookies.get_or_create(&l).inc_by(s.cookies_sent);
            acks_valid.get_or_create(&l).inc_by(s.acks_valid);
            acks_invalid.get_or_create(&l).inc_by(s.acks_invalid);
        }
        // Shared by the interfaces: once.
        if std::ptr::eq(f, &found[0]) {
            for s in &snap.services {
                cookie_mode.get_or_create(&lab(&[("service", &s.name), ("mode", s.syncookie)])).set(i64::from(s.cookies_on));
            }
            generation.get_or_create(&Vec::new()).set(snap.generation as i64);
            let proven = f.maps.flows.keys().count();
            let unproven = f.maps.remote_flows.keys().count();
            flows.get_or_create(&lab(&[("table", "proven")])).set(proven as i64);
            flows.get_or_create(&lab(&[("table", "unproven")])).set(unproven as i64);
            flows_max.get_or_create(&lab(&[("table", "proven")])).set(i64::from(firewall_common::MAX_FLOWS));
            flows_max.get_or_create(&lab(&[("table", "unproven")])).set(i64::from(firewall_common::MAX_REMOTE_FLOWS));
        }
    }
    let firing = gauge_family(&mut reg, "firewall_alert_firing", "1 while a policy alert fires");
    for (name, on) in ALERTS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        firing.get_or_create(&lab(&[("alert", name)])).set(i64::from(*on));
    }
    reloads.get_or_create(&lab(&[("result", "ok")])).inc_by(controller.reloads_ok.load(Ordering::Relaxed));
    reloads.get_or_create(&lab(&[("result", "failed")])).inc_by(controller.reloads_failed.load(Ordering::Relaxed));
    errors.get_or_create(&Vec::new()).inc_by(controller.errors.load(Ordering::Relaxed));
    let loaded: std::collections::HashMap<u32, aya::programs::ProgramInfo> =
        aya::programs::loaded_programs().flatten().map(|p| (p.id(), p)).collect();
    for p in programs {
        let Some(info) = loaded.get(&p.id) else { continue };
        let l = lab(&[("program", &p.name), ("iface", &p.iface)]);
        runs.get_or_create(&l).inc_by(info.run_count());
        run_seconds.get_or_create(&l).inc_by(info.run_time().as_secs_f64());
    }
    let mut out = String::new();
    encode(&mut out, &reg)?;
    Ok(out)
}
