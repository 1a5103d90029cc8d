//! Alerts: thresholds from the policy's `[[alert]]` tables, checked by the
//! controller once a second against the counters. An alert fires when its
//! value stays above `above` for `for_secs`, and recovers when it falls
//! to `below` or under (hysteresis: `below` defaults to 80 % of `above`).
//!
//! ```toml
//! [[alert]]
//! name = "web-syn-flood"
//! when = "syn_rate"        # syn_rate | cookie_ack_failures (service = a cookie rule)
//! service = "web"          # reason_rate (reason = "invalid_window", ...)
//! above = 10000            # rule_rate (rule = "ssh"): per second
//! below = 2000             # table_use (table = "proven" | "unproven"): a fraction
//! for_secs = 3
//! command = ["/usr/local/bin/page-me"]   # run with the alert as JSON on stdin
//! ```

use std::{collections::HashMap, ops::Range, time::Instant};

use firewall_common::{MAX_FLOWS, MAX_REMOTE_FLOWS, Reason};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::{policy::Rule, stats::Snapshot};

/// What an alert watches.
#[derive(Clone, Debug, PartialEq)]
pub enum Metric {
    /// SYNs per second to a cookie service.
    SynRate(String),
    /// Invalid cookie ACKs per second to a cookie service.
    CookieAckFailures(String),
    /// Packets per second counted under a reason.
    ReasonRate(&'static str),
    /// Packets per second a rule judged.
    RuleRate(String),
    /// Fraction of a connection table in use (`true`: the proven one).
    TableUse(bool),
}

impl Metric {
    /// `syn_rate of service web`, for log lines.
    pub fn describe(&self) -> String {
        match self {
            Metric::SynRate(s) => format!("SYN/s to service `{s}`"),
            Metric::CookieAckFailures(s) => format!("invalid cookie ACKs/s to service `{s}`"),
            Metric::ReasonRate(r) => format!("packets/s under reason `{r}`"),
            Metric::RuleRate(r) => format!("packets/s of rule `{r}`"),
            Metric::TableUse(p) => format!("use of the {} connection table", if *p { "proven" } else { "unproven" }),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub name: String,
    pub metric: Metric,
    pub above: f64,
    pub below: f64,
    pub for_secs: u64,
    pub command: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlert {
    name: Spanned<String>,
    when: Spanned<String>,
    service: Option<Spanned<String>>,
    reason: Option<Spanned<String>>,
    rule: Option<Spanned<String>>,
    table: Option<Spanned<String>>,
    above: Spanned<f64>,
    below: Option<Spanned<f64>>,
    for_secs: Option<Spanned<i64>>,
    command: Option<Spanned<Vec<String>>>,
}

/// Most alerts a policy may have.
pub const MAX_ALERTS: usize = 256;

/// Validates `[[alert]]` tables against the policy's rules; every problem
/// goes to `error` with the span it is about.
pub(crate) fn validate(raw: Vec<Spanned<RawAlert>>, rules: &[Rule], error: &mut dyn FnMut(&Range<usize>, String)) -> Vec<Alert> {
    let mut out = Vec::new();
    let mut seen = HashMap::new();
    for (i, a) in raw.into_iter().enumerate() {
        let span = a.span();
        let a = a.into_inner();
        if i == MAX_ALERTS {
            error(&span, format!("too many alerts (at most {MAX_ALERTS})"));
        }
        let name = a.name.get_ref().clone();
        if name.is_empty() {
            error(&a.name.span(), "an alert needs a name".into());
        }
        if seen.insert(name.clone(), ()).is_some() {
            error(&a.name.span(), format!("duplicate alert name `{name}`"));
        }
        let need = |field: &Option<Spanned<String>>, what: &str, error: &mut dyn FnMut(&Range<usize>, String)| -> Option<String> {
            match field {
                Some(v) => Some(v.get_ref().clone()),
                None => {
                    error(&a.when.span(), format!("`when = \"{}\"` needs `{what}`", a.when.get_ref()));
                    None
                }
            }
        };
        let cookie_rule = |s: &Spanned<String>, error: &mut dyn FnMut(&Range<usize>, String)| {
            match rules.iter().find(|r| r.name == *s.get_ref()) {
                None => error(&s.span(), format!("no rule is named `{}`", s.get_ref())),
                Some(r) if r.syncookie == crate::policy::Syncookie::Off => {
                    error(&s.span(), format!("rule `{}` is not a SYN-cookie service (it has no `syncookie`)", s.get_ref()))
                }
                Some(_) => {}
            }
        };
        let metric = match a.when.get_ref().as_str() {
            "syn_rate" | "cookie_ack_failures" => need(&a.service, "service", error).map(|s| {
                cookie_rule(a.service.as_ref().expect("present"), error);
                if a.when.get_ref() == "syn_rate" { Metric::SynRate(s) } else { Metric::CookieAckFailures(s) }
            }),
            "reason_rate" => need(&a.reason, "reason", error).and_then(|r| match Reason::ALL.iter().find(|x| x.name() == r) {
                Some(x) => Some(Metric::ReasonRate(x.name())),
                None => {
                    error(&a.reason.as_ref().expect("present").span(), format!("no reason is named `{r}` (`firewall stats --all` lists them)"));
                    None
                }
            }),
            "rule_rate" => need(&a.rule, "rule", error).and_then(|r| {
                let s = a.rule.as_ref().expect("present");
                if rules.iter().any(|x| x.name == r) {
                    Some(Metric::RuleRate(r))
                } else {
                    error(&s.span(), format!("no rule is named `{r}`"));
                    None
                }
            }),
            "table_use" => need(&a.table, "table", error).and_then(|t| match t.as_str() {
                "proven" => Some(Metric::TableUse(true)),
                "unproven" => Some(Metric::TableUse(false)),
                _ => {
                    error(&a.table.as_ref().expect("present").span(), format!("table `{t}` is not one of proven, unproven"));
                    None
                }
            }),
            other => {
                error(&a.when.span(), format!("`when = \"{other}\"` is not one of syn_rate, cookie_ack_failures, reason_rate, rule_rate, table_use"));
                None
            }
        };
        let above = *a.above.get_ref();
        let below = a.below.as_ref().map_or(above * 0.8, |b| *b.get_ref());
        if !(above.is_finite() && above > 0.0) {
            error(&a.above.span(), "`above` must be a positive number".into());
        }
        if let Some(b) = &a.below {
            if !(b.get_ref().is_finite() && *b.get_ref() >= 0.0 && *b.get_ref() < above) {
                error(&b.span(), format!("`below` must be at least 0 and less than `above` ({above})"));
            }
        }
        if matches!(metric, Some(Metric::TableUse(_))) && above > 1.0 {
            error(&a.above.span(), "a table's use is a fraction: `above` must be at most 1".into());
        }
        let for_secs = match &a.for_secs {
            Some(f) if !(0..=86_400).contains(f.get_ref()) => {
                error(&f.span(), "`for_secs` must be between 0 and 86400".into());
                0
            }
            Some(f) => *f.get_ref() as u64,
            None => 0,
        };
        let command = match &a.command {
            Some(c) if c.get_ref().is_empty() || c.get_ref()[0].is_empty() => {
                error(&c.span(), "`command` needs a program: [\"/path/to/program\", \"arg\", ...]".into());
                None
            }
            Some(c) => Some(c.get_ref().clone()),
            None => None,
        };
        if let Some(metric) = metric {
            out.push(Alert { name, metric, above, below, for_secs, command });
        }
    }
    out
}

/// The fraction of a connection table (`true`: the proven one) that `used`
/// entries fill; capped at 1 (a walk of an LRU table under churn can count
/// an entry twice).
pub fn table_use(proven: bool, used: usize) -> f64 {
    let max = if proven { MAX_FLOWS } else { MAX_REMOTE_FLOWS };
    (used as f64 / f64::from(max)).min(1.0)
}

/// An alert that fired or recovered.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Transition {
    pub alert: String,
    /// `firing` or `resolved`.
    pub state: String,
    pub what: String,
    pub value: f64,
    /// `above` when firing, `below` when resolved.
    pub threshold: f64,
    pub unix_time: u64,
    /// The busiest source prefixes of what the alert watches, from the
    /// recorded events (empty without events, and for the tables).
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(skip)]
    pub metric: Option<Metric>,
    #[serde(skip)]
    pub command: Option<Vec<String>>,
}

impl Transition {
    /// One line of text for the log.
    pub fn text(&self) -> String {
        let mut s = match self.state.as_str() {
            "firing" => format!("ALERT {}: {} is {:.2}, above {}", self.alert, self.what, self.value, self.threshold),
            _ => format!("RESOLVED {}: {} is {:.2}, below {}", self.alert, self.what, self.value, self.threshold),
        };
        if !self.sources.is_empty() {
            s += &format!("; top sources {}", self.sources.join(", "));
        }
        s
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[derive(Debug, Default, Clone)]
struct State {
    firing: bool,
    /// Since when the value has been past the threshold that would flip it.
    past_since: Option<Instant>,
}

/// The controller's view of its alerts between ticks.
#[derive(Debug, Default)]
pub struct Watch {
    alerts: Vec<Alert>,
    states: HashMap<String, State>,
    previous: Option<Snapshot>,
}

impl Watch {
    /// Takes the alerts of a (re)loaded policy; alerts of the same name
    /// keep whether they fire.
    pub fn set_alerts(&mut self, alerts: Vec<Alert>) {
        self.states.retain(|name, _| alerts.iter().any(|a| a.name == *name));
        self.alerts = alerts;
        // A (re)load restarts cookie counters and may bring alerts back
        // after a while without: the next tick only takes a snapshot.
        self.previous = None;
    }

    pub fn alerts(&self) -> &[Alert] {
        &self.alerts
    }

    /// Which alerts fire now, by name.
    pub fn firing(&self) -> Vec<(String, bool)> {
        self.alerts.iter().map(|a| (a.name.clone(), self.states.get(&a.name).is_some_and(|s| s.firing))).collect()
    }

    /// One check, `dt` seconds after the previous, with the counters summed
    /// over the interfaces and the connection tables' sizes.
    pub fn tick(&mut self, snap: Snapshot, flows: (usize, usize), dt: f64, now: Instant) -> Vec<Transition> {
        let mut out = Vec::new();
        let previous = self.previous.replace(snap);
        let (Some(prev), Some(snap)) = (previous, self.previous.as_ref()) else { return out };
        if dt <= 0.0 || prev.generation != snap.generation && prev.rules.len() != snap.rules.len() {
            return out;
        }
        let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / dt;
        for a in &self.alerts {
            let value = match &a.metric {
                Metric::SynRate(s) => match (snap.service(s), prev.service(s)) {
                    (Some(n), Some(p)) => rate(n.syns, p.syns),
                    _ => continue,
                },
                Metric::CookieAckFailures(s) => match (snap.service(s), prev.service(s)) {
                    (Some(n), Some(p)) => rate(n.acks_invalid, p.acks_invalid),
                    _ => continue,
                },
                Metric::ReasonRate(r) => {
                    let get = |s: &Snapshot| s.reasons.iter().find(|x| x.reason == *r).map_or(0, |x| x.packets);
                    rate(get(snap), get(&prev))
                }
                Metric::RuleRate(r) => match (snap.rule(r), prev.rule(r)) {
                    (Some(n), Some(p)) => rate(n.packets, p.packets),
                    _ => continue,
                },
                // A walk of an LRU table under churn can count an entry twice.
                Metric::TableUse(proven) => table_use(*proven, if *proven { flows.0 } else { flows.1 }),
            };
            let st = self.states.entry(a.name.clone()).or_default();
            let past = if st.firing { value <= a.below } else { value > a.above };
            if !past {
                st.past_since = None;
                continue;
            }
            let since = *st.past_since.get_or_insert(now);
            if now.duration_since(since).as_secs() < a.for_secs {
                continue;
            }
            st.firing = !st.firing;
            st.past_since = None;
            out.push(Transition {
                alert: a.name.clone(),
                state: if st.firing { "firing" } else { "resolved" }.into(),
                what: a.metric.describe(),
                value,
                threshold: if st.firing { a.above } else { a.below },
                unix_time: crate::loader::unix_now(),
                sources: Vec::new(),
                metric: Some(a.metric.clone()),
                command: a.command.clone(),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{ReasonStats, RuleStats};
    use std::time::Duration;

    fn snap(web: u64) -> Snapshot {
        Snapshot {
            generation: 1,
            default_action: "drop",
            rules: vec![RuleStats { name: "web".into(), action: "accept", packets: web, bytes: 0, since_unix: 0 }],
            reasons: vec![ReasonStats { reason: "rule_accept", verdict: "pass", packets: web, bytes: 0 }],
            services: Vec::new(),
            limits: Vec::new(),
        }
    }

    fn alert(above: f64, below: f64, for_secs: u64) -> Alert {
        Alert { name: "hot".into(), metric: Metric::RuleRate("web".into()), above, below, for_secs, command: None }
    }

    #[test]
    fn fires_above_and_recovers_below_with_hysteresis() {
        let mut w = Watch::default();
        w.set_alerts(vec![alert(100.0, 20.0, 0)]);
        let t0 = Instant::now();
        let mut total = 0;
        let mut step = |w: &mut Watch, per_sec: u64, i: u64| {
            total += per_sec;
            w.tick(snap(total), (0, 0), 1.0, t0 + Duration::from_secs(i))
        };
        assert!(step(&mut w, 0, 0).is_empty(), "the first tick only records");
        assert!(step(&mut w, 50, 1).is_empty());
        let t = step(&mut w, 150, 2);
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].state.as_str(), t[0].value, t[0].threshold), ("firing", 150.0, 100.0));
        assert!(step(&mut w, 60, 3).is_empty(), "between below and above: still firing");
        let t = step(&mut w, 10, 4);
        assert_eq!((t[0].state.as_str(), t[0].threshold), ("resolved", 20.0));
        assert!(t[0].text().starts_with("RESOLVED hot: packets/s of rule `web` is 10.00, below 20"));
        assert!(t[0].json().contains("\"state\":\"resolved\""));
        assert_eq!(w.firing(), vec![("hot".to_owned(), false)]);
    }

    #[test]
    fn for_secs_must_hold() {
        let mut w = Watch::default();
        w.set_alerts(vec![alert(100.0, 20.0, 2)]);
        let t0 = Instant::now();
        let ticks: Vec<usize> = (0..6u64).map(|i| w.tick(snap(i * 200), (0, 0), 1.0, t0 + Duration::from_secs(i)).len()).collect();
        // Above from the second tick (t=1); fires once 2 s have passed (t=3).
        assert_eq!(ticks, [0, 0, 0, 1, 0, 0]);
    }

    fn errors(text: &str) -> String {
        match crate::policy::parse(text, "p.toml") {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    const RULES: &str = "[[rule]]\nname = \"web\"\nproto = \"tcp\"\ndport = 80\naction = \"accept\"\nsyncookie = \"always\"\n\n[[rule]]\nname = \"ssh\"\nproto = \"tcp\"\ndport = 22\naction = \"accept\"\n\n";

    #[test]
    fn policy_alerts_are_validated_with_locations() {
        let ok = format!("{RULES}[[alert]]\nname = \"flood\"\nwhen = \"syn_rate\"\nservice = \"web\"\nabove = 1000\nfor_secs = 2\ncommand = [\"/bin/true\"]\n");
        let p = crate::policy::parse(&ok, "p.toml").expect("valid");
        assert_eq!(p.alerts[0], Alert { name: "flood".into(), metric: Metric::SynRate("web".into()), above: 1000.0, below: 800.0, for_secs: 2, command: Some(vec!["/bin/true".into()]) });
        let cases = [
            ("[[alert]]\nname = \"a\"\nwhen = \"syn_rate\"\nservice = \"ssh\"\nabove = 10\n", "p.toml:17:11: error: rule `ssh` is not a SYN-cookie service"),
            ("[[alert]]\nname = \"a\"\nwhen = \"syn_rate\"\nabove = 10\n", "p.toml:16:8: error: `when = \"syn_rate\"` needs `service`"),
            ("[[alert]]\nname = \"a\"\nwhen = \"temperature\"\nabove = 10\n", "is not one of syn_rate, cookie_ack_failures, reason_rate, rule_rate, table_use"),
            ("[[alert]]\nname = \"a\"\nwhen = \"reason_rate\"\nreason = \"nope\"\nabove = 10\n", "p.toml:17:10: error: no reason is named `nope`"),
            ("[[alert]]\nname = \"a\"\nwhen = \"rule_rate\"\nrule = \"db\"\nabove = 10\n", "no rule is named `db`"),
            ("[[alert]]\nname = \"a\"\nwhen = \"table_use\"\ntable = \"proven\"\nabove = 5\n", "a table's use is a fraction"),
            ("[[alert]]\nname = \"a\"\nwhen = \"rule_rate\"\nrule = \"ssh\"\nabove = 10\nbelow = 20\n", "`below` must be at least 0 and less than `above`"),
            ("[[alert]]\nname = \"a\"\nwhen = \"rule_rate\"\nrule = \"ssh\"\nabove = 10\ncommand = []\n", "`command` needs a program"),
            ("[[alert]]\nname = \"a\"\nwhen = \"rule_rate\"\nrule = \"ssh\"\nabove = 10\nlevel = 3\n", "unknown field `level`"),
        ];
        for (alert, want) in cases {
            let e = errors(&format!("{RULES}{alert}"));
            assert!(e.contains(want), "{alert}\n-> {e}");
        }
        // Every problem in one pass: two alerts, two errors.
        let e = errors(&format!("{RULES}[[alert]]\nname = \"a\"\nwhen = \"x\"\nabove = 1\n\n[[alert]]\nname = \"a\"\nwhen = \"rule_rate\"\nrule = \"db\"\nabove = 1\n"));
        assert!(e.contains("`when = \"x\"`") && e.contains("duplicate alert name `a`") && e.contains("no rule is named `db`"), "{e}");
    }

    #[test]
    fn table_use_is_a_fraction() {
        let mut w = Watch::default();
        w.set_alerts(vec![Alert { name: "full".into(), metric: Metric::TableUse(false), above: 0.5, below: 0.25, for_secs: 0, command: None }]);
        let t0 = Instant::now();
        w.tick(snap(0), (0, 0), 1.0, t0);
        let t = w.tick(snap(0), (0, (MAX_REMOTE_FLOWS as usize) * 3 / 4), 1.0, t0 + Duration::from_secs(1));
        assert_eq!((t[0].state.as_str(), t[0].value), ("firing", 0.75));
    }
}
