//! Reads the counters of a running firewall and renders them.

use std::borrow::Borrow;

use anyhow::Result;
use aya::maps::{Array, MapData, PerCpuArray};
use firewall_common::{
    ACTION_ACCEPT, Active, CookieCounters, Counter, LimitCounters, MAX_RULES, PolicyHeader, Reason, RuleBase, RuleMeta,
    SYNCOOKIE_ALWAYS, SYNCOOKIE_AUTO, SYNCOOKIE_OFF,
};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RuleStats {
    pub name: String,
    pub action: &'static str,
    pub packets: u64,
    pub bytes: u64,
    /// Unix seconds the counter last started from zero (a rule keeps its
    /// counters across reloads and restarts while its name stays).
    pub since_unix: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReasonStats {
    pub reason: &'static str,
    pub verdict: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// A SYN-cookie service: a rule with `syncookie` set.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServiceStats {
    pub name: String,
    /// `always`, `auto` or `off`, as in the policy.
    pub syncookie: &'static str,
    /// Whether SYNs are answered with cookies right now.
    pub cookies_on: bool,
    pub syns: u64,
    pub cookies_sent: u64,
    pub acks_valid: u64,
    pub acks_invalid: u64,
}

/// What the limits of a rule with a `limit` refused (carried across
/// reloads while the rule's name stays). Each refusal is also in the
/// rule's own packets, which it judged.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LimitStats {
    pub name: String,
    pub rate_limited: u64,
    pub conn_limited: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub generation: u64,
    pub default_action: &'static str,
    pub rules: Vec<RuleStats>,
    pub reasons: Vec<ReasonStats>,
    pub services: Vec<ServiceStats>,
    pub limits: Vec<LimitStats>,
}

/// The maps a snapshot reads.
pub struct Sources<'a, M: Borrow<MapData>> {
    pub active: &'a Array<M, Active>,
    pub policy: &'a Array<M, PolicyHeader>,
    pub rule_meta: &'a Array<M, RuleMeta>,
    pub rule_counters: &'a PerCpuArray<M, Counter>,
    pub rule_base: &'a Array<M, RuleBase>,
    pub reason_counters: &'a PerCpuArray<M, Counter>,
    pub cookie_on: &'a Array<M, u32>,
    pub cookie_counters: &'a PerCpuArray<M, CookieCounters>,
    pub limit_counters: &'a PerCpuArray<M, LimitCounters>,
}

impl Snapshot {
    pub fn service(&self, name: &str) -> Option<&ServiceStats> {
        self.services.iter().find(|s| s.name == name)
    }
    pub fn limit(&self, name: &str) -> Option<&LimitStats> {
        self.limits.iter().find(|l| l.name == name)
    }
    pub fn rule(&self, name: &str) -> Option<&RuleStats> {
        self.rules.iter().find(|r| r.name == name)
    }
    /// Adds the counters of another interface of the same firewall (same
    /// policy, hence the same rules in the same order).
    pub fn merge(&mut self, other: &Snapshot) {
        for (a, b) in self.rules.iter_mut().zip(&other.rules) {
            a.packets += b.packets;
            a.bytes += b.bytes;
            a.since_unix = a.since_unix.min(b.since_unix);
        }
        for (a, b) in self.reasons.iter_mut().zip(&other.reasons) {
            a.packets += b.packets;
            a.bytes += b.bytes;
        }
        for (a, b) in self.services.iter_mut().zip(&other.services) {
            a.syns += b.syns;
            a.cookies_sent += b.cookies_sent;
            a.acks_valid += b.acks_valid;
            a.acks_invalid += b.acks_invalid;
        }
        for (a, b) in self.limits.iter_mut().zip(&other.limits) {
            a.rate_limited += b.rate_limited;
            a.conn_limited += b.conn_limited;
        }
    }

    pub fn reason(&self, reason: Reason) -> Counter {
        self.reasons
            .iter()
            .find(|r| r.reason == reason.name())
            .map(|r| Counter { packets: r.packets, bytes: r.bytes })
            .unwrap_or_default()
    }
}

/// A rule's name as the kernel copy holds it (NUL-terminated).
pub fn rule_name(meta: &RuleMeta) -> String {
    let len = meta.name.iter().position(|&b| b == 0).unwrap_or(meta.name.len());
    String::from_utf8_lossy(&meta.name[..len]).into_owned()
}

fn action_name(code: u8) -> &'static str {
    if code == ACTION_ACCEPT { "accept" } else { "drop" }
}

/// A rule's count: its base, the old rule it carries on while that is
/// pending (see `RuleBase`), and its own per-CPU counter at `index`.
pub fn rule_total<M: Borrow<MapData>>(base: &RuleBase, counters: &PerCpuArray<M, Counter>, index: u32) -> Counter {
    let own = sum(counters, index);
    let carried = if base.pending_from != 0 { sum(counters, base.pending_from - 1) } else { Counter::default() };
    Counter { packets: base.packets + carried.packets + own.packets, bytes: base.bytes + carried.bytes + own.bytes }
}

fn sum<M: Borrow<MapData>>(map: &PerCpuArray<M, Counter>, index: u32) -> Counter {
    map.get(&index, 0)
        .map(|values| {
            values.iter().fold(Counter::default(), |acc, c| Counter {
                packets: acc.packets + c.packets,
                bytes: acc.bytes + c.bytes,
            })
        })
        .unwrap_or_default()
}

/// What a reason's packets got: dropped, passed, or answered from XDP.
pub fn verdict(r: Reason) -> &'static str {
    if r.drops() {
        "drop"
    } else if r == Reason::CookieSent {
        "tx"
    } else {
        "pass"
    }
}

fn mode_name(code: u8) -> &'static str {
    match code {
        SYNCOOKIE_ALWAYS => "always",
        SYNCOOKIE_AUTO => "auto",
        _ => "off",
    }
}

/// Reads the counters of the policy currently in force.
pub fn snapshot<M: Borrow<MapData>>(src: &Sources<'_, M>) -> Result<Snapshot> {
    let Sources { active, policy, rule_meta, rule_counters, rule_base, reason_counters, cookie_on, cookie_counters, limit_counters } = src;
    let active = active.get(&0, 0)?;
    let header = policy.get(&active.slot, 0)?;
    let mut rules = Vec::with_capacity(header.rule_count as usize);
    let mut services = Vec::new();
    let mut limits = Vec::new();
    for rule in 0..header.rule_count.min(MAX_RULES) {
        let index = active.slot * MAX_RULES + rule;
        let meta = rule_meta.get(&index, 0)?;
        let base = rule_base.get(&index, 0).unwrap_or_default();
        let c = rule_total(&base, rule_counters, index);
        let name = rule_name(&meta);
        if meta.syncookie != SYNCOOKIE_OFF {
            let per_cpu = cookie_counters.get(&index, 0)?;
            let total = per_cpu.iter().fold(CookieCounters::default(), |a, c| CookieCounters {
                syns: a.syns + c.syns,
                cookies_sent: a.cookies_sent + c.cookies_sent,
                acks_valid: a.acks_valid + c.acks_valid,
                acks_invalid: a.acks_invalid + c.acks_invalid,
            });
            services.push(ServiceStats {
                name: name.clone(),
                syncookie: mode_name(meta.syncookie),
                cookies_on: meta.syncookie == SYNCOOKIE_ALWAYS || cookie_on.get(&index, 0)? != 0,
                syns: total.syns,
                cookies_sent: total.cookies_sent,
                acks_valid: total.acks_valid,
                acks_invalid: total.acks_invalid,
            });
        }
        if meta.limited != 0 {
            let total = limit_counters.get(&index, 0)?.iter().fold(LimitCounters::default(), |a, c| LimitCounters {
                rate_limited: a.rate_limited + c.rate_limited,
                conn_limited: a.conn_limited + c.conn_limited,
            });
            limits.push(LimitStats { name: name.clone(), rate_limited: total.rate_limited, conn_limited: total.conn_limited });
        }
        rules.push(RuleStats {
            name,
            action: action_name(meta.action),
            packets: c.packets,
            bytes: c.bytes,
            since_unix: base.since_unix,
        });
    }
    let reasons = Reason::ALL
        .iter()
        .map(|&r| {
            let c = sum(reason_counters, r as u32);
            ReasonStats {
                reason: r.name(),
                verdict: verdict(r),
                packets: c.packets,
                bytes: c.bytes,
            }
        })
        .collect();
    Ok(Snapshot {
        generation: active.generation,
        default_action: action_name(header.default_action),
        rules,
        reasons,
        services,
        limits,
    })
}

/// A duration as the largest unit or two: `42s`, `5m12s`, `3h04m`, `2d05h`.
pub fn age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// Plain-text table; `previous` and `seconds` add a packets/s column.
/// Reasons that counted nothing are left out unless `all`.
pub fn render(iface: &str, s: &Snapshot, previous: Option<(&Snapshot, f64)>, all: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "firewall on {iface}: policy generation {}, default {}", s.generation, s.default_action);
    let rate = |name: &str, packets: u64, prev: Option<(&Snapshot, f64)>, reason: bool| -> String {
        let Some((p, secs)) = prev else { return String::new() };
        let before = if reason {
            p.reasons.iter().find(|r| r.reason == name).map(|r| r.packets)
        } else {
            p.rule(name).map(|r| r.packets)
        };
        match before {
            Some(b) if secs > 0.0 => format!("{:>12.0}", packets.saturating_sub(b) as f64 / secs),
            _ => format!("{:>12}", "-"),
        }
    };
    let pps = if previous.is_some() { format!("{:>12}", "packets/s") } else { String::new() };
    let _ = writeln!(out, "\n{:<32} {:<7} {:>14} {:>16} {:>12}{pps}", "RULE", "ACTION", "PACKETS", "BYTES", "RESET");
    let now = crate::loader::unix_now();
    for r in &s.rules {
        let since = if r.since_unix == 0 { "-".to_owned() } else { format!("{} ago", age(now.saturating_sub(r.since_unix))) };
        let _ = writeln!(out, "{:<32} {:<7} {:>14} {:>16} {:>12}{}", r.name, r.action, r.packets, r.bytes, since, rate(&r.name, r.packets, previous, false));
    }
    let _ = writeln!(out, "\n{:<32} {:<7} {:>14} {:>16}{pps}", "REASON", "VERDICT", "PACKETS", "BYTES");
    let shown: Vec<&ReasonStats> = s.reasons.iter().filter(|r| all || r.packets > 0).collect();
    for r in &shown {
        let _ = writeln!(out, "{:<32} {:<7} {:>14} {:>16}{}", r.reason, r.verdict, r.packets, r.bytes, rate(r.reason, r.packets, previous, true));
    }
    if shown.len() < s.reasons.len() {
        let _ = writeln!(out, "({} reasons with no packets not shown; --all shows them)", s.reasons.len() - shown.len());
    }
    if !s.services.is_empty() {
        let _ = writeln!(out, "\n{:<32} {:<12} {:>12} {:>12} {:>12} {:>12}", "SYN-COOKIE SERVICE", "MODE", "SYNS", "COOKIES", "ACKS VALID", "ACKS INVALID");
        for v in &s.services {
            let mode = match (v.syncookie, v.cookies_on) {
                ("auto", true) => "auto (on)",
                ("auto", false) => "auto (off)",
                (m, _) => m,
            };
            let _ = writeln!(out, "{:<32} {:<12} {:>12} {:>12} {:>12} {:>12}", v.name, mode, v.syns, v.cookies_sent, v.acks_valid, v.acks_invalid);
        }
    }
    if !s.limits.is_empty() {
        let _ = writeln!(out, "\n{:<32} {:>14} {:>14}", "LIMITED RULE", "RATE LIMITED", "CONN LIMITED");
        for l in &s.limits {
            let _ = writeln!(out, "{:<32} {:>14} {:>14}", l.name, l.rate_limited, l.conn_limited);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let reason = |r: Reason, packets| ReasonStats { reason: r.name(), verdict: verdict(r), packets, bytes: packets * 60 };
        Snapshot {
            generation: 3,
            default_action: "drop",
            rules: vec![RuleStats { name: "web".into(), action: "accept", packets: 5, bytes: 300, since_unix: 0 }],
            reasons: vec![reason(Reason::RuleAccept, 5), reason(Reason::DefaultDrop, 0), reason(Reason::InvalidWindow, 0)],
            services: Vec::new(),
            limits: vec![LimitStats { name: "web".into(), rate_limited: 2, conn_limited: 1 }],
        }
    }

    #[test]
    fn reasons_that_counted_nothing_are_left_out_unless_all() {
        let s = snapshot();
        let text = render("eth0", &s, None, false);
        assert!(text.contains("rule_accept") && !text.contains("default_drop") && !text.contains("invalid_window"), "{text}");
        assert!(text.contains("(2 reasons with no packets not shown; --all shows them)"), "{text}");
        let text = render("eth0", &s, None, true);
        assert!(text.contains("default_drop") && text.contains("invalid_window") && !text.contains("not shown"), "{text}");
        assert!(text.starts_with("firewall on eth0: policy generation 3"), "{text}");
        assert!(text.contains("LIMITED RULE") && text.lines().any(|l| l.split_whitespace().eq(["web", "2", "1"])), "{text}");
    }

    #[test]
    fn merge_sums_interfaces() {
        let mut a = snapshot();
        a.merge(&snapshot());
        assert_eq!(a.rules[0].packets, 10);
        assert_eq!(a.reasons[0].packets, 10);
        assert_eq!(a.reasons[0].bytes, 600);
        assert_eq!((a.limits[0].rate_limited, a.limits[0].conn_limited), (4, 2));
    }

    #[test]
    fn ages_read_as_the_largest_units() {
        assert_eq!(age(42), "42s");
        assert_eq!(age(312), "5m12s");
        assert_eq!(age(3 * 3600 + 4 * 60), "3h04m");
        assert_eq!(age(2 * 86400 + 5 * 3600), "2d05h");
    }
}
