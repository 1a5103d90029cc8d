//! From the raw tables to the `Policy`: what serde cannot check.

use super::*;
use super::diagnostic::one_line;
use super::raw::*;

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

pub(super) struct Validator<'a> {
    text: &'a str,
    file: &'a str,
    /// Byte offset of the start of every line (the first is 0).
    line_starts: Vec<usize>,
    errors: Vec<Diagnostic>,
    /// Index in `Policy::sets` of each set name (filled before the rules).
    set_index: HashMap<String, usize>,
    /// Each set's default timeout, by index (a `ban` adds for that long).
    set_timeouts: Vec<u32>,
    /// Each set's kind, by index.
    set_kinds: Vec<SetKind>,
}

impl<'a> Validator<'a> {
    pub(super) fn new(text: &'a str, file: &'a str) -> Self {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Validator { text, file, line_starts, errors: Vec::new(), set_index: HashMap::new(), set_timeouts: Vec::new(), set_kinds: Vec::new() }
    }

    /// 1-based line and column (in characters) of byte offset `pos`.
    fn locate(&self, pos: usize) -> (usize, usize) {
        let pos = pos.min(self.text.len());
        // Binary search: a policy near MAX_RULES has ~100k lines, and every
        // rule is located at least once.
        let line = self.line_starts.partition_point(|&start| start <= pos);
        let line_start = self.line_starts[line - 1];
        // A span never starts inside a UTF-8 sequence, but be safe anyway.
        let col = self.text.get(line_start..pos).map_or(pos - line_start, |s| s.chars().count()) + 1;
        (line, col)
    }

    fn diag(&self, pos: usize, message: impl Into<String>) -> Diagnostic {
        let (line, col) = self.locate(pos);
        Diagnostic { file: self.file.to_owned(), line, col, message: one_line(&message.into()) }
    }

    fn error(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let d = self.diag(span.start, message);
        self.errors.push(d);
    }

    fn de_error(&mut self, e: &toml::de::Error, fallback: usize) {
        let pos = e.span().map_or(fallback, |s| s.start);
        let d = self.diag(pos, e.message().trim());
        self.errors.push(d);
    }

    /// The raw policy, read so that every problem is found in one pass:
    /// the TOML parser recovers from syntax errors, and each `[[rule]]`
    /// and `[[alert]]` is deserialized on its own (a bad one is reported
    /// and left out; the others are still checked).
    fn raw(&mut self) -> RawPolicy {
        use serde::Deserialize as _;
        use toml::de::{DeValue, ValueDeserializer};
        let (doc, syntax) = toml::de::DeTable::parse_recoverable(self.text);
        let mut raw = RawPolicy { settings: None, rule: Vec::new(), alert: Vec::new(), set: Vec::new() };
        if !syntax.is_empty() {
            // The recovered document would only add errors that follow from
            // these: report the syntax errors alone, the first of each line.
            let mut lines = std::collections::HashSet::new();
            for e in &syntax {
                let line = self.locate(e.span().map_or(0, |s| s.start)).0;
                if lines.insert(line) {
                    self.de_error(e, 0);
                }
            }
            return raw;
        }
        for (key, value) in doc.into_inner() {
            let span = value.span();
            match key.get_ref().as_ref() {
                "settings" => match RawSettings::deserialize(ValueDeserializer::from(value)) {
                    Ok(v) => raw.settings = Some(v),
                    Err(e) => self.de_error(&e, span.start),
                },
                table @ ("rule" | "alert" | "set") => {
                    let DeValue::Array(items) = value.into_inner() else {
                        let d = self.diag(span.start, format!("`{table}` must be an array of tables: `[[{table}]]`"));
                        self.errors.push(d);
                        continue;
                    };
                    for item in items {
                        let item_span = item.span();
                        if table == "set" {
                            match RawSet::deserialize(ValueDeserializer::from(item)) {
                                Ok(r) => raw.set.push(toml::Spanned::new(item_span, r)),
                                Err(e) => self.de_error(&e, item_span.start),
                            }
                        } else if table == "rule" {
                            match RawRule::deserialize(ValueDeserializer::from(item)) {
                                Ok(r) => raw.rule.push(toml::Spanned::new(item_span, r)),
                                Err(e) => self.de_error(&e, item_span.start),
                            }
                        } else {
                            match crate::alerts::RawAlert::deserialize(ValueDeserializer::from(item)) {
                                Ok(a) => raw.alert.push(toml::Spanned::new(item_span, a)),
                                Err(e) => self.de_error(&e, item_span.start),
                            }
                        }
                    }
                }
                other => {
                    let d = self.diag(key.span().start, format!("unknown field `{other}`, expected one of `settings`, `set`, `rule`, `alert`"));
                    self.errors.push(d);
                }
            }
        }
        raw
    }

    pub(super) fn run(mut self) -> Result<Policy, PolicyError> {
        let raw = self.raw();

        let settings = match raw.settings {
            None => Settings::default(),
            Some(s) => {
                let d = Settings::default();
                Settings {
                    default: s.default.unwrap_or(d.default),
                    fragments: s.fragments.unwrap_or(d.fragments),
                    established: s.established.unwrap_or(d.established),
                    related: s.related.unwrap_or(d.related),
                    invalid: s.invalid.unwrap_or(d.invalid),
                    timeouts: match s.timeouts {
                        None => d.timeouts,
                        Some(t) => self.timeouts(t),
                    },
                    syncookie: match s.syncookie {
                        None => d.syncookie,
                        Some(c) => self.syncookie_settings(c),
                    },
                    events: match s.events {
                        None => d.events,
                        Some(e) => self.event_settings(e),
                    },
                }
            }
        };

        let sets = self.sets(raw.set);

        if raw.rule.len() > MAX_RULES as usize {
            let span = raw.rule[MAX_RULES as usize].get_ref().name.span();
            self.error(
                &span,
                format!("too many rules: {} (at most {MAX_RULES})", raw.rule.len()),
            );
        }

        let mut first_use: HashMap<String, usize> = HashMap::new();
        let mut rules = Vec::with_capacity(raw.rule.len());
        let mut name_pos = Vec::with_capacity(raw.rule.len());
        // Start of each rule's `state` value, when present.
        let mut state_pos = Vec::with_capacity(raw.rule.len());
        for raw_rule in raw.rule {
            let raw_rule = raw_rule.into_inner();
            let name_span = raw_rule.name.span();
            let (line, col) = self.locate(name_span.start);
            if let Some(first) = first_use.get(raw_rule.name.get_ref()) {
                let msg = format!(
                    "duplicate rule name `{}` (first used on line {first})",
                    raw_rule.name.get_ref()
                );
                self.error(&name_span, msg);
            } else {
                first_use.insert(raw_rule.name.get_ref().clone(), line);
            }
            let state_start = raw_rule.state.as_ref().map(|s| s.span().start);
            if let Some(rule) = self.rule(raw_rule, line, col) {
                rules.push(rule);
                name_pos.push(name_span.start);
                state_pos.push(state_start);
            }
        }

        let mut alert_errors = Vec::new();
        let alerts = crate::alerts::validate(raw.alert, &rules, &mut |span, msg| alert_errors.push((span.clone(), msg)));
        for (span, msg) in alert_errors {
            self.error(&span, msg);
        }

        if !self.errors.is_empty() {
            self.errors.sort_by_key(|d| (d.line, d.col));
            return Err(PolicyError::Invalid(self.errors));
        }

        // Packets in other states are decided by the settings before any
        // rule; a rule that matches only those states is dead.
        let live = settings.states_to_rules();
        let dead: Vec<bool> = rules.iter().map(|r| r.state & live == 0).collect();
        let mut warnings = Vec::new();
        for (j, later) in rules.iter().enumerate() {
            if dead[j] {
                let deciders: Vec<_> = settings
                    .state_settings()
                    .into_iter()
                    .filter(|(_, bit, _)| later.state & bit != 0)
                    .collect();
                let states = deciders.iter().map(|(k, _, _)| *k).collect::<Vec<_>>().join(" and ");
                let by = deciders
                    .iter()
                    .map(|(k, _, a)| format!("`{k} = \"{}\"`", a.name()))
                    .collect::<Vec<_>>()
                    .join(" and ");
                let fix = deciders
                    .iter()
                    .map(|(k, _, _)| format!("`{k} = \"rules\"`"))
                    .collect::<Vec<_>>()
                    .join(" or ");
                let pos = state_pos[j].unwrap_or(name_pos[j]);
                warnings.push(self.diag(
                    pos,
                    format!(
                        "rule `{}` can never match: {states} packets are decided before the rules by [settings] {by}; {fix} would hand them to the rules",
                        later.name
                    ),
                ));
                continue;
            }
            let earlier = rules[..j].iter().zip(&dead).find(|(e, d)| !**d && e.shadows_in(later, live));
            if let Some((earlier, _)) = earlier {
                warnings.push(self.diag(
                    name_pos[j],
                    format!(
                        "rule `{}` can never match: earlier rule `{}` (line {}) matches every packet it would",
                        later.name, earlier.name, earlier.line
                    ),
                ));
            }
        }
        Ok(Policy { settings, rules, warnings, alerts, sets })
    }

    /// Checks one rule; `None` if it had errors (already recorded).
    fn rule(&mut self, raw: RawRule, line: usize, col: usize) -> Option<Rule> {
        let before = self.errors.len();
        let name_span = raw.name.span();
        let name = raw.name.into_inner();
        self.check_name(&name, &name_span);

        let proto = raw.proto.as_ref().map_or(Proto::Any, |p| *p.get_ref());
        let src = self.cidrs("src", raw.src, proto);
        let dst = self.cidrs("dst", raw.dst, proto);
        let src_sets = src.as_ref().map(|s| s.2.clone()).unwrap_or_default();
        let dst_sets = dst.as_ref().map(|s| s.2.clone()).unwrap_or_default();
        let src = src.map(|(l, span, _)| (l, span));
        let dst = dst.map(|(l, span, _)| (l, span));

        // A packet is one family; v4-only on one side and v6-only on the
        // other cannot both hold.
        let no_sets = src_sets.is_empty() && dst_sets.is_empty();
        if let (true, Some((src, _)), Some((dst, dst_span))) = (no_sets, &src, &dst) {
            let only = |l: &[Cidr], v4: bool| !l.is_empty() && l.iter().all(|c| c.is_v4() == v4);
            for v4 in [true, false] {
                if only(src, v4) && only(dst, !v4) {
                    let (a, b) = if v4 { ("IPv4", "IPv6") } else { ("IPv6", "IPv4") };
                    self.error(
                        dst_span,
                        format!("rule can never match: src has only {a} addresses but dst only {b} addresses"),
                    );
                }
            }
        }

        let (sport, sport_sets) = self.ports("sport", raw.sport, proto);
        let (dport, dport_sets) = self.ports("dport", raw.dport, proto);

        let mut flags = TcpFlags::default();
        if let Some(f) = raw.tcp_flags {
            let span = f.span();
            if proto != Proto::Tcp {
                self.error(
                    &span,
                    format!("`tcp_flags` needs proto = \"tcp\" (this rule's proto is \"{}\")", proto.name()),
                );
            }
            match TcpFlags::parse(f.get_ref()) {
                Ok(t) => flags = t,
                Err(msg) => self.error(&span, msg),
            }
        }

        let icmp_type = self.icmp_field("icmp_type", raw.icmp_type.as_ref(), proto);
        let icmp_code = self.icmp_field("icmp_code", raw.icmp_code.as_ref(), proto);
        if let (Some(code), None) = (&raw.icmp_code, &raw.icmp_type) {
            self.error(&code.span(), "`icmp_code` needs `icmp_type` as well");
        }

        let state = match raw.state {
            None => ct_state::ANY,
            Some(s) => self.states(s),
        };

        let limit = raw.limit.map(|l| {
            let whole = l.span();
            let l = l.into_inner();
            if raw.action != Action::Accept {
                self.error(&whole, "`limit` needs action = \"accept\": it caps the new connections a rule lets in");
            } else if state & ct_state::NEW == 0 {
                self.error(&whole, "`limit` needs the rule to match new connections (`state` without \"new\")");
            }
            if l.rate.is_none() && l.max_conns.is_none() {
                self.error(&whole, "`limit` needs `rate`, `max_conns` or both");
            }
            let interval_ns = l.rate.as_ref().map_or(0, |r| {
                parse_rate(r.get_ref()).unwrap_or_else(|m| {
                    self.error(&r.span(), m);
                    1
                })
            });
            let burst = match l.burst {
                None => DEFAULT_BURST,
                Some(b) => {
                    let v = *b.get_ref();
                    if l.rate.is_none() {
                        self.error(&b.span(), "`burst` needs a `rate`");
                    } else if !(1..=1_000_000).contains(&v) {
                        self.error(&b.span(), format!("burst {v} is out of range 1..=1000000"));
                    }
                    v.clamp(1, 1_000_000) as u32
                }
            };
            // Connections are counted once proven by the TCP handshake.
            let tcp_only = |v: &mut Self, span: &std::ops::Range<usize>, what: &str| {
                if proto != Proto::Tcp {
                    v.error(span, format!("`{what}` counts proven TCP connections: the rule needs proto = \"tcp\" (this rule's proto is \"{}\")", proto.name()));
                }
            };
            let max_conns = match &l.max_conns {
                None => 0,
                Some(m) => {
                    let v = *m.get_ref();
                    tcp_only(self, &m.span(), "max_conns");
                    if !(1..=1_000_000).contains(&v) {
                        self.error(&m.span(), format!("max_conns {v} is out of range 1..=1000000"));
                    }
                    v.clamp(1, 1_000_000) as u32
                }
            };
            let ban = l.ban.as_ref().and_then(|b| {
                let span = b.span();
                tcp_only(self, &span, "ban");
                let Some(name) = b.get_ref().strip_prefix('@') else {
                    self.error(&span, "`ban` names a set: \"@name\"");
                    return None;
                };
                let index = self.named_set(name, &span, SetKind::Addr, || format!("set `{name}` holds ports; a ban adds addresses"))?;
                let timeout_secs = self.set_timeouts[index];
                if timeout_secs == 0 {
                    self.error(&span, format!("a ban lasts the set's timeout: give set `{name}` a `timeout`"));
                }
                Some(Ban { set: index, timeout_secs })
            });
            let mut prefix = |p: Option<Spanned<String>>, max: u8, default: u8| match p {
                None => default,
                Some(p) => parse_per(p.get_ref(), max).unwrap_or_else(|m| {
                    self.error(&p.span(), m);
                    default
                }),
            };
            let v4_prefix = prefix(l.per, 32, 32);
            let v6_prefix = prefix(l.per6, 128, DEFAULT_V6_PREFIX);
            Limit { interval_ns, burst, v4_prefix, v6_prefix, max_conns, ban }
        });
        let syncookie = raw.syncookie.as_ref().map_or(Syncookie::Off, |s| *s.get_ref());
        if let Some(s) = &raw.syncookie {
            let span = s.span();
            if syncookie != Syncookie::Off {
                // Cookies answer SYNs for a service the rule accepts.
                if proto != Proto::Tcp {
                    self.error(&span, format!("`syncookie` needs proto = \"tcp\" (this rule's proto is \"{}\")", proto.name()));
                } else if raw.action != Action::Accept {
                    self.error(&span, "`syncookie` needs action = \"accept\": cookies answer SYNs the rule lets in");
                } else if !dport_sets.is_empty() {
                    self.error(&span, "`syncookie` needs its ports in `dport` itself, not in a port set: a cookie service's ports are fixed when the policy loads");
                } else if dport.is_empty() {
                    self.error(&span, "`syncookie` needs `dport`: cookies protect a service, named by its port(s)");
                } else if state & ct_state::NEW == 0 {
                    self.error(&span, "`syncookie` needs the rule to match new connections (`state` without \"new\")");
                }
            }
        }

        if self.errors.len() != before {
            return None;
        }
        Some(Rule {
            name,
            line,
            col,
            proto,
            src: src.map(|(l, _)| l).unwrap_or_default(),
            dst: dst.map(|(l, _)| l).unwrap_or_default(),
            src_sets,
            dst_sets,
            sport,
            dport,
            sport_sets,
            dport_sets,
            tcp_flags: flags,
            icmp_type,
            icmp_code,
            state,
            action: raw.action,
            syncookie,
            log: raw.log.unwrap_or(false),
            limit,
        })
    }

    /// The index of set `name`, which must be of `kind`; otherwise the
    /// error (unknown, or `wrong_kind`) is reported at `span`.
    fn named_set(&mut self, name: &str, span: &Range<usize>, kind: SetKind, wrong_kind: impl FnOnce() -> String) -> Option<usize> {
        match self.set_index.get(name) {
            None => self.error(span, format!("unknown set `{name}` (declare it with [[set]] name = \"{name}\")")),
            Some(&i) if self.set_kinds[i] != kind => self.error(span, wrong_kind()),
            Some(&i) => return Some(i),
        }
        None
    }

    fn check_name(&mut self, name: &str, span: &Range<usize>) {
        let max = RULE_NAME_LEN - 1; // the kernel copy is NUL-terminated
        if name.is_empty() {
            self.error(span, "rule name is empty");
        } else if name.len() > max {
            self.error(span, format!("rule name is {} bytes long (at most {max})", name.len()));
        } else if let Some(c) =
            name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
        {
            self.error(
                span,
                format!("rule name `{name}` contains {c:?}; use only letters, digits, '_', '.', ':' and '-'"),
            );
        }
    }

    /// Parses a `src`/`dst` value; `None` when absent. The span returned is
    /// the whole value's; the last item, the sets (`"@name"`) it names.
    fn cidrs(
        &mut self,
        key: &str,
        raw: Option<Spanned<OneOrMany<AddrText>>>,
        proto: Proto,
    ) -> Option<(Vec<Cidr>, Range<usize>, Vec<usize>)> {
        let raw = raw?;
        let whole = raw.span();
        let items = raw.into_inner().items(whole.clone());
        if items.is_empty() {
            self.error(&whole, format!("`{key}` is an empty list; leave the key out to match any address"));
        }
        let mut out = Vec::with_capacity(items.len());
        let mut sets = Vec::new();
        for (AddrText(text), span) in items {
            if let Some(name) = text.strip_prefix('@') {
                if let Some(i) = self.named_set(name, &span, SetKind::Addr, || format!("set `{name}` holds ports; `{key}` needs an address set")) {
                    if !sets.contains(&i) {
                        sets.push(i);
                    }
                }
                continue;
            }
            match Cidr::parse(&text) {
                Ok(c) => {
                    if !proto.allows_family(c.is_v4()) {
                        let (fam, other) = if c.is_v4() { ("IPv4", "icmp") } else { ("IPv6", "icmpv6") };
                        self.error(
                            &span,
                            format!(
                                "proto \"{}\" cannot match {fam} address {c}; use proto = \"{other}\" for {fam}",
                                proto.name()
                            ),
                        );
                    }
                    out.push(c);
                }
                Err(msg) => self.error(&span, msg),
            }
        }
        Some((out, whole, sets))
    }

    /// Checks the `[[set]]` tables and records their names for the rules.
    fn sets(&mut self, raw: Vec<Spanned<RawSet>>) -> Vec<SetSpec> {
        if raw.len() > MAX_SETS as usize {
            let span = raw[MAX_SETS as usize].get_ref().name.span();
            self.error(&span, format!("too many sets: {} (at most {MAX_SETS})", raw.len()));
        }
        let mut out = Vec::new();
        for item in raw {
            let r = item.into_inner();
            let before = self.errors.len();
            let name_span = r.name.span();
            let name = r.name.into_inner();
            if let Err(msg) = check_set_name(&name) {
                self.error(&name_span, msg);
            } else if self.set_index.contains_key(&name) {
                self.error(&name_span, format!("duplicate set name `{name}`"));
            }
            let kind = match r.kind.get_ref().as_str() {
                "addr" => SetKind::Addr,
                "port" => SetKind::Port,
                other => {
                    self.error(&r.kind.span(), format!("unknown set type `{other}`; use \"addr\" (IPv4 and IPv6 addresses and prefixes) or \"port\" (ports and port ranges)"));
                    SetKind::Addr
                }
            };
            let timeout_secs = match r.timeout {
                None => 0,
                Some(t) => {
                    let span = t.span();
                    if kind == SetKind::Port {
                        self.error(&span, "a port set has no timeouts (its ports are bits, kept until deleted)");
                    }
                    match parse_duration(&t.into_inner().0) {
                        Ok(d) => d,
                        Err(msg) => {
                            self.error(&span, msg);
                            0
                        }
                    }
                }
            };
            let (default_size, max_size) = match kind {
                SetKind::Addr => (DEFAULT_SET_SIZE, MAX_SET_SIZE),
                SetKind::Port => (firewall_common::PORTS, firewall_common::PORTS),
            };
            let size = match r.size {
                None => default_size,
                Some(s) => {
                    let v = *s.get_ref();
                    if v < 1 || v > max_size as i64 {
                        self.error(&s.span(), format!("set size {v} is out of range 1..={max_size}"));
                    }
                    v.clamp(1, max_size as i64) as u32
                }
            };
            let mut elements = Vec::new();
            let mut ports = Vec::new();
            if let Some(list) = r.elements {
                for e in list.into_inner() {
                    let span = e.span();
                    match (kind, e.into_inner()) {
                        (SetKind::Addr, SetItem::Text(t)) => match Cidr::parse(&t) {
                            Ok(c) => elements.push(c),
                            Err(msg) => self.error(&span, msg),
                        },
                        (SetKind::Addr, SetItem::Num(n)) => self.error(&span, format!("{n} is not an address or prefix: write addresses as strings, such as \"192.0.2.1\"")),
                        (SetKind::Port, SetItem::Num(n)) => match parse_port_item(&PortItem::Num(n)) {
                            Ok(p) => ports.push(p),
                            Err(msg) => self.error(&span, msg),
                        },
                        (SetKind::Port, SetItem::Text(t)) => match parse_port_item(&PortItem::Text(t)) {
                            Ok(p) => ports.push(p),
                            Err(msg) => self.error(&span, msg),
                        },
                    }
                }
            }
            let listed = match kind {
                SetKind::Addr => elements.len(),
                SetKind::Port => {
                    let mut all: Vec<u16> = ports.iter().flat_map(|p: &PortRange| p.lo..=p.hi).collect();
                    all.sort_unstable();
                    all.dedup();
                    all.len()
                }
            };
            if listed > size as usize {
                self.error(&name_span, format!("set `{name}` lists {listed} elements but its size is {size}"));
            }
            // Address sets share the element maps; port sets are bitmaps.
            let addr_size = |s: &SetSpec| if s.kind == SetKind::Addr { s.size as u64 } else { 0 };
            let total: u64 = out.iter().map(addr_size).sum::<u64>() + if kind == SetKind::Addr { size as u64 } else { 0 };
            if total > MAX_SET_ELEMENTS as u64 {
                self.error(&name_span, format!("the sets' sizes add up to {total}; all sets together hold at most {MAX_SET_ELEMENTS}"));
            }
            if self.errors.len() == before {
                let (line, _) = self.locate(name_span.start);
                self.set_index.insert(name.clone(), out.len());
                self.set_timeouts.push(timeout_secs);
                self.set_kinds.push(kind);
                out.push(SetSpec { name, line, kind, elements, ports, timeout_secs, size });
            }
        }
        out
    }

    /// Parses a `sport`/`dport` value: its ranges (empty: any port, unless
    /// it names sets) and the port sets (`"@name"`) it names.
    fn ports(
        &mut self,
        key: &str,
        raw: Option<Spanned<OneOrMany<PortItem>>>,
        proto: Proto,
    ) -> (Vec<PortRange>, Vec<usize>) {
        let Some(raw) = raw else { return (Vec::new(), Vec::new()) };
        let whole = raw.span();
        if !proto.has_ports() {
            self.error(
                &whole,
                format!(
                    "`{key}` needs proto = \"tcp\" or \"udp\" (this rule's proto is \"{}\")",
                    proto.name()
                ),
            );
        }
        let items = raw.into_inner().items(whole.clone());
        if items.is_empty() {
            self.error(&whole, format!("`{key}` is an empty list; leave the key out to match any port"));
        }
        let mut out = Vec::with_capacity(items.len());
        let mut sets = Vec::new();
        for (item, span) in items {
            if let PortItem::Text(text) = &item {
                if let Some(name) = text.strip_prefix('@') {
                    if let Some(i) = self.named_set(name, &span, SetKind::Port, || format!("set `{name}` holds addresses; `{key}` needs a port set (type = \"port\")")) {
                        if !sets.contains(&i) {
                            sets.push(i);
                        }
                    }
                    continue;
                }
            }
            match parse_port_item(&item) {
                Ok(r) => out.push(r),
                Err(msg) => self.error(&span, msg),
            }
        }
        (out, sets)
    }

    /// Parses a `state` value into a `ct_state` mask.
    fn states(&mut self, raw: Spanned<OneOrMany<StateText>>) -> u8 {
        let whole = raw.span();
        let items = raw.into_inner().items(whole.clone());
        if items.is_empty() {
            self.error(&whole, "`state` is an empty list; leave the key out to match any state");
        }
        let mut mask = 0;
        for (StateText(name), span) in items {
            match STATE_NAMES.iter().find(|(n, _)| *n == name) {
                Some((_, bit)) => mask |= bit,
                None => self.error(
                    &span,
                    format!("state \"{name}\" is not one of new, established, related, invalid"),
                ),
            }
        }
        mask
    }

    /// Checks `[settings.timeouts]`; missing keys keep their defaults.
    fn timeouts(&mut self, raw: RawTimeouts) -> Timeouts {
        let mut t = Timeouts::DEFAULT;
        let fields: [(&str, Option<Spanned<i64>>, &mut u32); 9] = [
            ("tcp_syn_sent", raw.tcp_syn_sent, &mut t.tcp_syn_sent),
            ("tcp_syn_recv", raw.tcp_syn_recv, &mut t.tcp_syn_recv),
            ("tcp_established", raw.tcp_established, &mut t.tcp_established),
            ("tcp_fin_wait", raw.tcp_fin_wait, &mut t.tcp_fin_wait),
            ("tcp_time_wait", raw.tcp_time_wait, &mut t.tcp_time_wait),
            ("tcp_close", raw.tcp_close, &mut t.tcp_close),
            ("udp", raw.udp, &mut t.udp),
            ("udp_stream", raw.udp_stream, &mut t.udp_stream),
            ("icmp", raw.icmp, &mut t.icmp),
        ];
        let mut errors = Vec::new();
        for (key, value, slot) in fields {
            let Some(value) = value else { continue };
            match u32::try_from(*value.get_ref()) {
                Ok(v) if (1..=MAX_TIMEOUT).contains(&v) => *slot = v,
                _ => errors.push((
                    value.span(),
                    format!(
                        "timeout `{key}` = {} out of range (1-{MAX_TIMEOUT} seconds, at most one year)",
                        value.get_ref()
                    ),
                )),
            }
        }
        for (span, msg) in errors {
            self.error(&span, msg);
        }
        t
    }

    fn event_settings(&mut self, raw: RawEvents) -> EventSettings {
        let drops = raw.drops.unwrap_or(false);
        let mut e = EventSettings { drops, syns: raw.syns.unwrap_or(drops), ..EventSettings::default() };
        for (key, value, lo, hi, slot) in [
            ("sample", raw.sample, 1, 1_000_000, &mut e.sample),
            ("per_second", raw.per_second, 1, 100_000, &mut e.per_second),
            ("log_per_second", raw.log_per_second, 1, 100_000, &mut e.log_per_second),
        ] {
            let Some(value) = value else { continue };
            match u32::try_from(*value.get_ref()) {
                Ok(v) if (lo..=hi).contains(&v) => *slot = v,
                _ => self.error(&value.span(), format!("`{key}` = {} out of range ({lo}-{hi})", value.get_ref())),
            }
        }
        e
    }

    fn syncookie_settings(&mut self, raw: RawSyncookieSettings) -> SyncookieSettings {
        let mut c = SyncookieSettings::default();
        let off_given = raw.auto_off_rate.is_some();
        let mut check = |key: &str, value: Option<Spanned<i64>>, lo: u64, hi: u64, what: &str, slot: &mut u64| {
            let Some(value) = value else { return };
            match u64::try_from(*value.get_ref()) {
                Ok(v) if (lo..=hi).contains(&v) => *slot = v,
                _ => self.error(&value.span(), format!("`{key}` = {} out of range ({lo}-{hi} {what})", value.get_ref())),
            }
        };
        check("auto_on_rate", raw.auto_on_rate, 1, 100_000_000, "SYNs per second", &mut c.auto_on_rate);
        check("auto_off_rate", raw.auto_off_rate.clone(), 0, 100_000_000, "SYNs per second", &mut c.auto_off_rate);
        check("auto_hold_secs", raw.auto_hold_secs, 1, 3600, "seconds", &mut c.auto_hold_secs);
        check("key_rotation_secs", raw.key_rotation_secs, MIN_KEY_ROTATION, 7 * 24 * 3600, "seconds; a cookie lives up to 137 s", &mut c.key_rotation_secs);
        if !off_given {
            c.auto_off_rate = c.auto_on_rate / 2;
        } else if c.auto_off_rate > c.auto_on_rate {
            if let Some(v) = raw.auto_off_rate {
                self.error(&v.span(), format!("`auto_off_rate` ({}) must not exceed `auto_on_rate` ({})", c.auto_off_rate, c.auto_on_rate));
            }
        }
        c
    }

    fn icmp_field(&mut self, key: &str, raw: Option<&Spanned<i64>>, proto: Proto) -> Option<u8> {
        let raw = raw?;
        let span = raw.span();
        if !proto.is_icmp() {
            self.error(
                &span,
                format!(
                    "`{key}` needs proto = \"icmp\" or \"icmpv6\" (this rule's proto is \"{}\")",
                    proto.name()
                ),
            );
        }
        match u8::try_from(*raw.get_ref()) {
            Ok(v) => Some(v),
            Err(_) => {
                self.error(&span, format!("{key} {} out of range (0-255)", raw.get_ref()));
                None
            }
        }
    }
}

fn port_number(s: &str, whole: &str) -> Result<u16, String> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port `{whole}` (expected a number or a range such as \"1000-2000\")"));
    }
    match s.parse::<u32>() {
        Ok(n) if n <= 65535 => Ok(n as u16),
        _ => Err(format!("port {s} out of range (0-65535)")),
    }
}

fn parse_port_item(item: &PortItem) -> Result<PortRange, String> {
    match item {
        PortItem::Num(n) => match u16::try_from(*n) {
            Ok(p) => Ok(PortRange { lo: p, hi: p }),
            Err(_) => Err(format!("port {n} out of range (0-65535)")),
        },
        PortItem::Text(s) => {
            let (lo, hi) = match s.split_once('-') {
                Some((lo, hi)) => (port_number(lo, s)?, port_number(hi, s)?),
                None => {
                    let p = port_number(s, s)?;
                    (p, p)
                }
            };
            if lo > hi {
                return Err(format!("port range {s} is inverted; did you mean \"{hi}-{lo}\"?"));
            }
            Ok(PortRange { lo, hi })
        }
    }
}

