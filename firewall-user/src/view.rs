//! The live view of `firewall stats --watch`: rules by rate, drops by
//! reason, cookie services, what limits refused, the top sources (when
//! events are on), and
//! sparklines of the last minute, laid out to fit 80x24. Drawing is a pure function of `View`, so tests render it to
//! ratatui's `TestBackend`.

use std::collections::VecDeque;

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Cell, Paragraph, Row, Sparkline, Table},
};

use crate::{events::Top, stats::Snapshot};

/// Samples kept for the sparklines (one a second).
pub const HISTORY: usize = 60;

/// What the view shows: the latest snapshot, the one before (for rates)
/// and a minute of per-second totals.
pub struct View {
    pub iface: String,
    pub now: Snapshot,
    /// The previous snapshot and the seconds between the two.
    pub previous: Option<(Snapshot, f64)>,
    /// Packets per second, all reasons; and those dropped.
    pub total_pps: VecDeque<u64>,
    pub drop_pps: VecDeque<u64>,
    /// The controller's top sources (`top.json`), when it records events.
    pub top: Option<Top>,
}

impl View {
    pub fn new(iface: String, now: Snapshot) -> Self {
        Self { iface, now, previous: None, total_pps: VecDeque::new(), drop_pps: VecDeque::new(), top: None }
    }

    /// Takes a new snapshot, `secs` after the last.
    pub fn push(&mut self, next: Snapshot, secs: f64) {
        let old = std::mem::replace(&mut self.now, next);
        self.previous = Some((old, secs));
        let (total, dropped) = self.reason_rates().iter().fold((0.0, 0.0), |(t, d), (_, verdict, r, _)| (t + r, if *verdict == "drop" { d + r } else { d }));
        for (q, v) in [(&mut self.total_pps, total), (&mut self.drop_pps, dropped)] {
            q.push_back(v.round() as u64);
            if q.len() > HISTORY {
                q.pop_front();
            }
        }
    }

    fn rate(&self, now: u64, before: Option<u64>) -> f64 {
        match (&self.previous, before) {
            (Some((_, secs)), Some(b)) if *secs > 0.0 => now.saturating_sub(b) as f64 / secs,
            _ => 0.0,
        }
    }

    /// (rule, action, packets/s, packets), fastest first.
    pub fn rule_rates(&self) -> Vec<(String, &'static str, f64, u64)> {
        let mut v: Vec<_> = self
            .now
            .rules
            .iter()
            .map(|r| {
                let before = self.previous.as_ref().and_then(|(p, _)| p.rule(&r.name)).map(|p| p.packets);
                (r.name.clone(), r.action, self.rate(r.packets, before), r.packets)
            })
            .collect();
        v.sort_by(|a, b| b.2.total_cmp(&a.2).then(b.3.cmp(&a.3)));
        v
    }

    /// (reason, verdict, packets/s, packets) of the reasons that counted
    /// something, fastest first.
    pub fn reason_rates(&self) -> Vec<(&'static str, &'static str, f64, u64)> {
        let mut v: Vec<_> = self
            .now
            .reasons
            .iter()
            .filter(|r| r.packets > 0)
            .map(|r| {
                let before = self.previous.as_ref().and_then(|(p, _)| p.reasons.iter().find(|x| x.reason == r.reason)).map(|p| p.packets);
                (r.reason, r.verdict, self.rate(r.packets, before), r.packets)
            })
            .collect();
        v.sort_by(|a, b| b.2.total_cmp(&a.2).then(b.3.cmp(&a.3)));
        v
    }
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

/// Draws the whole view into `area`.
pub fn draw(frame: &mut Frame, view: &View) {
    let area = frame.area();
    let services = view.now.services.len().min(4) as u16;
    let limits = view.now.limits.len().min(3) as u16;
    let sources = view.top.as_ref().map_or(0, |t| t.sources.len().max(t.services.iter().map(|s| s.sources.len()).sum()).min(3) as u16);
    let [head, sparks, tables, svc, lim, top, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(4),
        Constraint::Min(6),
        Constraint::Length(if services == 0 { 0 } else { services + 3 }),
        Constraint::Length(if limits == 0 { 0 } else { limits + 3 }),
        Constraint::Length(if view.top.is_none() { 0 } else { sources.max(1) + 3 }),
        Constraint::Length(1),
    ])
    .areas(area);
    let total = view.total_pps.back().copied().unwrap_or(0);
    frame.render_widget(
        Paragraph::new(Line::from(format!(
            " firewall on {}  generation {}  default {}  {} pkt/s",
            view.iface, view.now.generation, view.now.default_action, total
        )))
        .style(bold()),
        head,
    );
    let [left, right] = Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(sparks);
    let spark = |title: String, data: &VecDeque<u64>, r: Rect, frame: &mut Frame| {
        let d: Vec<u64> = data.iter().copied().collect();
        frame.render_widget(Sparkline::default().block(Block::default().borders(Borders::ALL).title(title)).data(&d), r);
    };
    spark(format!("packets/s (max {})", view.total_pps.iter().max().unwrap_or(&0)), &view.total_pps, left, frame);
    spark(format!("drops/s (max {})", view.drop_pps.iter().max().unwrap_or(&0)), &view.drop_pps, right, frame);

    // Reason names run to 19 characters.
    let [rules_area, reasons_area] = Layout::horizontal([Constraint::Percentage(44), Constraint::Percentage(56)]).areas(tables);
    let rows: Vec<Row> = view
        .rule_rates()
        .into_iter()
        .map(|(name, action, pps, packets)| Row::new(vec![Cell::from(name), Cell::from(action), Cell::from(format!("{pps:.0}")), Cell::from(packets.to_string())]))
        .collect();
    frame.render_widget(
        Table::new(rows, [Constraint::Min(8), Constraint::Length(6), Constraint::Length(7), Constraint::Length(9)])
            .header(Row::new(vec!["RULE", "ACTION", "PKT/S", "PACKETS"]).style(bold()))
            .block(Block::default().borders(Borders::ALL).title("rules by rate")),
        rules_area,
    );
    let rows: Vec<Row> = view
        .reason_rates()
        .into_iter()
        .map(|(reason, verdict, pps, packets)| Row::new(vec![Cell::from(reason), Cell::from(verdict), Cell::from(format!("{pps:.0}")), Cell::from(packets.to_string())]))
        .collect();
    frame.render_widget(
        Table::new(rows, [Constraint::Min(12), Constraint::Length(4), Constraint::Length(7), Constraint::Length(9)])
            .header(Row::new(vec!["REASON", "VERD", "PKT/S", "PACKETS"]).style(bold()))
            .block(Block::default().borders(Borders::ALL).title("verdicts by reason")),
        reasons_area,
    );
    if services > 0 {
        let rows: Vec<Row> = view
            .now
            .services
            .iter()
            .map(|s| {
                let mode = match (s.syncookie, s.cookies_on) {
                    ("auto", true) => "auto (on)",
                    ("auto", false) => "auto (off)",
                    (m, _) => m,
                };
                let before = view.previous.as_ref().and_then(|(p, _)| p.service(&s.name)).map(|p| p.syns);
                Row::new(vec![
                    Cell::from(s.name.clone()),
                    Cell::from(mode),
                    Cell::from(format!("{:.0}", view.rate(s.syns, before))),
                    Cell::from(s.cookies_sent.to_string()),
                    Cell::from(s.acks_valid.to_string()),
                    Cell::from(s.acks_invalid.to_string()),
                ])
            })
            .collect();
        frame.render_widget(
            Table::new(rows, [Constraint::Min(8), Constraint::Length(10), Constraint::Length(8), Constraint::Length(10), Constraint::Length(9), Constraint::Length(9)])
                .header(Row::new(vec!["SERVICE", "MODE", "SYN/S", "COOKIES", "VALID", "INVALID"]).style(bold()))
                .block(Block::default().borders(Borders::ALL).title("SYN-cookie services")),
            svc,
        );
    }
    if limits > 0 {
        let rows: Vec<Row> = view
            .now
            .limits
            .iter()
            .map(|l| {
                let before = view.previous.as_ref().and_then(|(p, _)| p.limit(&l.name));
                let per_s = view.rate(l.rate_limited + l.conn_limited, before.map(|b| b.rate_limited + b.conn_limited));
                Row::new(vec![Cell::from(l.name.clone()), Cell::from(format!("{per_s:.0}")), Cell::from(l.rate_limited.to_string()), Cell::from(l.conn_limited.to_string())])
            })
            .collect();
        frame.render_widget(
            Table::new(rows, [Constraint::Min(8), Constraint::Length(10), Constraint::Length(13), Constraint::Length(13)])
                .header(Row::new(vec!["RULE", "REFUSED/S", "RATE LIMITED", "CONN LIMITED"]).style(bold()))
                .block(Block::default().borders(Borders::ALL).title("refused by limits")),
            lim,
        );
    }
    if let Some(t) = &view.top {
        draw_top(frame, t, top);
    }
    frame.render_widget(Paragraph::new(" q: quit   (firewall stats --json for machine-readable counters)"), foot);
}

/// The busiest sources of recorded drops, and of the SYNs cookie services
/// answered, side by side.
fn draw_top(frame: &mut Frame, top: &Top, area: Rect) {
    // Reason names run to 19 characters; prefixes of IPv4 to 18.
    let [left, right] = Layout::horizontal([Constraint::Percentage(56), Constraint::Percentage(44)]).areas(area);
    let rows: Vec<Row> = top
        .sources
        .iter()
        .map(|s| {
            let reason = s.reasons.iter().max_by_key(|(_, n)| **n).map_or("", |(r, _)| r.as_str());
            Row::new(vec![Cell::from(s.prefix.clone()), Cell::from(s.recorded.to_string()), Cell::from(reason.to_owned())])
        })
        .collect();
    frame.render_widget(
        Table::new(rows, [Constraint::Length(18), Constraint::Length(6), Constraint::Min(6)])
            .header(Row::new(vec!["SOURCE", "DROPS", "MOSTLY"]).style(bold()))
            .block(Block::default().borders(Borders::ALL).title("top drop sources")),
        left,
    );
    let mut syn: Vec<(&str, &str, u64)> = top.services.iter().flat_map(|t| t.sources.iter().map(move |s| (s.prefix.as_str(), t.service.as_str(), s.syns))).collect();
    syn.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(b.0)));
    let rows: Vec<Row> = syn.into_iter().map(|(p, svc, n)| Row::new(vec![Cell::from(p.to_owned()), Cell::from(svc.to_owned()), Cell::from(n.to_string())])).collect();
    frame.render_widget(
        Table::new(rows, [Constraint::Length(18), Constraint::Min(6), Constraint::Length(6)])
            .header(Row::new(vec!["SOURCE", "SERVICE", "SYNS"]).style(bold()))
            .block(Block::default().borders(Borders::ALL).title("top SYN sources")),
        right,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{ReasonStats, RuleStats, ServiceStats};
    use firewall_common::Reason;
    use ratatui::{Terminal, backend::TestBackend};

    fn snap(web: u64, ssh: u64, drops: u64, syns: u64) -> Snapshot {
        let reason = |r: Reason, packets| ReasonStats { reason: r.name(), verdict: crate::stats::verdict(r), packets, bytes: packets * 60 };
        Snapshot {
            generation: 7,
            default_action: "drop",
            rules: vec![
                RuleStats { name: "ssh".into(), action: "accept", packets: ssh, bytes: 0, since_unix: 0 },
                RuleStats { name: "web".into(), action: "accept", packets: web, bytes: 0, since_unix: 0 },
            ],
            reasons: vec![reason(Reason::RuleAccept, web + ssh), reason(Reason::DefaultDrop, drops), reason(Reason::InvalidWindow, 0)],
            services: vec![ServiceStats { name: "web".into(), syncookie: "auto", cookies_on: true, syns, cookies_sent: syns, acks_valid: 3, acks_invalid: 9 }],
            limits: Vec::new(),
        }
    }

    fn screen(view: &View) -> String {
        let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
        t.draw(|f| draw(f, view)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..24).map(|y| (0..80).map(|x| buf[(x, y)].symbol().to_owned()).collect::<String>()).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn fits_80x24_with_rules_sorted_by_rate() {
        let mut v = View::new("eth0".into(), snap(0, 0, 0, 0));
        v.push(snap(100, 5000, 40, 10), 1.0);
        v.push(snap(200, 5010, 80, 30), 1.0);
        let s = screen(&v);
        assert!(s.contains("firewall on eth0  generation 7"), "{s}");
        // web moved 100/s, ssh 10/s: web first.
        let row = |name: &str| s.lines().position(|l| l.contains(name) && l.contains("accept")).unwrap_or_else(|| panic!("{name} row:\n{s}"));
        assert!(row("web") < row("ssh"), "rules sorted by rate:\n{s}");
        assert!(s.contains("default_drop") && !s.contains("invalid_window"), "only reasons that counted:\n{s}");
        assert!(s.contains("auto (on)") && s.contains("SYN/S"), "{s}");
        assert!(s.contains("drops/s (max 40)"), "{s}");
        assert_eq!(v.total_pps.back(), Some(&150));
        assert!(!s.contains("top drop sources"), "no sources panel without events:\n{s}");
        assert!(!s.contains("refused by limits"), "no limits panel without limits:\n{s}");
    }

    #[test]
    fn refusals_of_limited_rules_show_with_their_rate() {
        use crate::stats::LimitStats;
        let with = |rate, conn| Snapshot { limits: vec![LimitStats { name: "ssh".into(), rate_limited: rate, conn_limited: conn }], ..snap(0, 0, 0, 0) };
        let mut v = View::new("eth0".into(), with(0, 0));
        v.push(with(30, 2), 1.0);
        let s = screen(&v);
        let line = s.lines().find(|l| l.contains("ssh") && l.contains("30")).unwrap_or_else(|| panic!("ssh refusals:\n{s}"));
        assert_eq!(line.split(|c: char| c == '│' || c.is_whitespace()).filter(|w| !w.is_empty()).collect::<Vec<_>>(), ["ssh", "32", "30", "2"], "{s}");
        assert!(s.contains("refused by limits") && s.contains("rules by rate") && s.contains("q: quit"), "{s}");
    }

    #[test]
    fn top_sources_fit_below_with_events_on() {
        use crate::events::{ServiceTop, Source, SynSource};
        let mut v = View::new("eth0".into(), snap(0, 0, 0, 0));
        v.push(snap(100, 5000, 40, 10), 1.0);
        let src = |p: &str, n| Source { prefix: p.into(), recorded: n, reasons: [("default_drop".to_owned(), n)].into(), ..Source::default() };
        let syn = |p: &str, n| SynSource { prefix: p.into(), syns: n, last: 0.0 };
        v.top = Some(Top {
            sources: vec![src("192.0.2.0/24", 900), src("2001:db8:77::/64", 12)],
            services: vec![ServiceTop { service: "web".into(), recorded: 60, not_recorded: 0, sources: vec![syn("203.0.113.0/24", 50), syn("198.18.0.0/24", 10)] }],
            ..Top::default()
        });
        let s = screen(&v);
        assert!(s.contains("top drop sources") && s.contains("top SYN sources"), "{s}");
        let line = |needle: &str| s.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle}:\n{s}")).to_owned();
        assert!(line("192.0.2.0/24").contains("900") && line("192.0.2.0/24").contains("default_drop"), "{s}");
        assert!(line("203.0.113.0/24").contains("web") && line("203.0.113.0/24").contains("50"), "{s}");
        assert!(s.contains("2001:db8:77::/64") && s.contains("198.18.0.0/24"), "both rows of each:\n{s}");
        // Everything else still there.
        assert!(s.contains("rules by rate") && s.contains("SYN-cookie services") && s.contains("q: quit"), "{s}");
    }
}
