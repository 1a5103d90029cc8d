//! A policy's rules as an nftables chain, set-based so that nftables is at
//! its best: rules are gathered into runs of one action, and each run
//! becomes a few set lookups (one per family and protocol shape:
//! concatenated `saddr . daddr . sport . dport` interval sets), not one
//! rule each. Within a run the order does not matter (every match gives
//! the same verdict), and a rule joins the earliest run of its action that
//! it can reach without passing a rule of the other action it overlaps, so
//! first-match semantics are kept with as few runs as possible. The kernel
//! refuses partly overlapping elements in one concatenated set, so an
//! element that overlaps an earlier one in its set starts a new set.

use std::fmt::Write as _;

use firewall_common::ct_state;
use firewall_user::{
    compile::cidr_range,
    policy::{Action, Cidr, Policy, PortRange, Proto, Rule, StateAction},
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    Tcp,
    Udp,
    Icmp,
    Any,
}

impl Shape {
    fn of(p: Proto) -> Self {
        match p {
            Proto::Tcp => Shape::Tcp,
            Proto::Udp => Shape::Udp,
            Proto::Icmp | Proto::Icmpv6 => Shape::Icmp,
            Proto::Any => Shape::Any,
        }
    }

    /// The set's element type and the expression looked up in it.
    fn set_type_and_key(self, v4: bool) -> (String, String) {
        let (addr_t, ip) = if v4 { ("ipv4_addr", "ip") } else { ("ipv6_addr", "ip6") };
        match self {
            Shape::Tcp | Shape::Udp => {
                let l4 = if self == Shape::Tcp { "tcp" } else { "udp" };
                (
                    format!("{addr_t} . {addr_t} . inet_service . inet_service"),
                    format!("{ip} saddr . {ip} daddr . {l4} sport . {l4} dport"),
                )
            }
            Shape::Icmp => {
                let (t, e) = if v4 { ("icmp_type . icmp_code", "icmp type . icmp code") } else { ("icmpv6_type . icmpv6_code", "icmpv6 type . icmpv6 code") };
                (format!("{addr_t} . {addr_t} . {t}"), format!("{ip} saddr . {ip} daddr . {e}"))
            }
            Shape::Any => (format!("{addr_t} . {addr_t}"), format!("{ip} saddr . {ip} daddr")),
        }
    }
}

/// One element: its text and, per field, the covered interval (to find overlaps).
struct Element {
    text: String,
    spans: Vec<(u128, u128)>,
}

fn port_text(p: &PortRange) -> String {
    if p.lo == p.hi { p.lo.to_string() } else { format!("{}-{}", p.lo, p.hi) }
}

fn elements(rule: &Rule, v4: bool) -> Vec<Element> {
    let pick = |l: &[Cidr]| -> Vec<Cidr> {
        let v: Vec<Cidr> = l.iter().filter(|c| c.is_v4() == v4).copied().collect();
        if v.is_empty() { vec![Cidr::any(v4)] } else { v }
    };
    let ports = |l: &[PortRange]| if l.is_empty() { vec![PortRange::ANY] } else { l.to_vec() };
    let mut out = Vec::new();
    for s in pick(&rule.src) {
        for d in pick(&rule.dst) {
            let addrs = (format!("{} . {}", cidr_text(&s), cidr_text(&d)), vec![cidr_range(&s), cidr_range(&d)]);
            match Shape::of(rule.proto) {
                Shape::Tcp | Shape::Udp => {
                    for sp in ports(&rule.sport) {
                        for dp in ports(&rule.dport) {
                            let mut spans = addrs.1.clone();
                            spans.push((sp.lo.into(), sp.hi.into()));
                            spans.push((dp.lo.into(), dp.hi.into()));
                            out.push(Element { text: format!("{} . {} . {}", addrs.0, port_text(&sp), port_text(&dp)), spans });
                        }
                    }
                }
                Shape::Icmp => {
                    let span = |v: Option<u8>| v.map_or((0u128, 255u128), |v| (v.into(), v.into()));
                    let text = |v: Option<u8>| v.map_or("0-255".to_string(), |v| v.to_string());
                    let mut spans = addrs.1.clone();
                    spans.push(span(rule.icmp_type));
                    spans.push(span(rule.icmp_code));
                    out.push(Element { text: format!("{} . {} . {}", addrs.0, text(rule.icmp_type), text(rule.icmp_code)), spans });
                }
                Shape::Any => out.push(Element { text: addrs.0, spans: addrs.1 }),
            }
        }
    }
    out
}

/// A rule's elements per family and shape.
fn atoms_of(rule: &Rule) -> Vec<(bool, Shape, Element)> {
    [true, false]
        .into_iter()
        .filter(|&v4| rule.matches_family(v4))
        .flat_map(|v4| elements(rule, v4).into_iter().map(move |e| (v4, Shape::of(rule.proto), e)))
        .collect()
}

/// Whether some packet could match both rules (conservative: TCP flags and
/// states are ignored; a protocol-less rule is compared by addresses).
fn rules_overlap(a: &[(bool, Shape, Element)], b: &[(bool, Shape, Element)]) -> bool {
    a.iter().any(|(fa, sa, ea)| {
        b.iter().any(|(fb, sb, eb)| {
            fa == fb
                && if sa == sb {
                    overlaps(ea, eb)
                } else if *sa == Shape::Any || *sb == Shape::Any {
                    ea.spans[..2].iter().zip(&eb.spans[..2]).all(|(x, y)| x.0 <= y.1 && y.0 <= x.1)
                } else {
                    false
                }
        })
    })
}

fn cidr_text(c: &Cidr) -> String {
    format!("{}/{}", c.addr, c.prefix)
}

fn overlaps(a: &Element, b: &Element) -> bool {
    a.spans.iter().zip(&b.spans).all(|(x, y)| x.0 <= y.1 && y.0 <= x.1)
}

fn verdict(a: Action) -> &'static str {
    match a {
        Action::Accept => "accept",
        Action::Drop => "drop",
    }
}

fn state_names(state: u8) -> String {
    let names: Vec<&str> = [(ct_state::NEW, "new"), (ct_state::ESTABLISHED, "established"), (ct_state::RELATED, "related"), (ct_state::INVALID, "invalid")]
        .into_iter()
        .filter(|(bit, _)| state & bit != 0)
        .map(|(_, n)| n)
        .collect();
    format!("{{ {} }}", names.join(", "))
}

/// Sets and rules of one run of same-action rules, appended to `sets` and `chain`.
struct Run {
    action: Action,
    /// (family is v4, shape, elements), in order of creation.
    buckets: Vec<(bool, Shape, Vec<Element>)>,
    /// Rules that need more than a set lookup (TCP flags, states).
    singles: Vec<String>,
}

impl Run {
    /// Adds `rule`, whose elements per family and shape are `atoms`.
    fn add(&mut self, rule: &Rule, atoms: Vec<(bool, Shape, Element)>, next_set: &mut usize, sets: &mut String) {
        if rule.tcp_flags.mask != 0 || rule.state != ct_state::ANY {
            // Its own sets and rules, with the extra match in front.
            let mut pre = String::new();
            if rule.state != ct_state::ANY {
                let _ = write!(pre, "ct state {} ", state_names(rule.state));
            }
            if rule.tcp_flags.mask != 0 {
                let _ = write!(pre, "tcp flags & {:#x} == {:#x} ", rule.tcp_flags.mask, rule.tcp_flags.value);
            }
            let (v4, v6): (Vec<_>, Vec<_>) = atoms.into_iter().partition(|a| a.0);
            for family in [v4, v6].into_iter().filter(|f| !f.is_empty()) {
                let (t, key) = family[0].1.set_type_and_key(family[0].0);
                for group in disjoint_groups(family.into_iter().map(|a| a.2).collect()) {
                    let name = format!("s{next_set}");
                    *next_set += 1;
                    declare(sets, &name, &t, &group);
                    self.singles.push(format!("{pre}{key} @{name} {}", verdict(self.action)));
                }
            }
            return;
        }
        for (v4, shape, e) in atoms {
            // The last set of this shape that e does not overlap, or a new one.
            let slot = self.buckets.iter().rposition(|(f, s, _)| *f == v4 && *s == shape);
            match slot {
                Some(i) if !self.buckets[i].2.iter().any(|x| overlaps(x, &e)) => self.buckets[i].2.push(e),
                _ => self.buckets.push((v4, shape, vec![e])),
            }
        }
    }

    fn emit(self, next_set: &mut usize, sets: &mut String, chain: &mut String) {
        for (v4, shape, els) in self.buckets {
            let name = format!("s{next_set}");
            *next_set += 1;
            let (t, key) = shape.set_type_and_key(v4);
            declare(sets, &name, &t, &els);
            let _ = writeln!(chain, "\t\t{key} @{name} {}", verdict(self.action));
        }
        for s in self.singles {
            let _ = writeln!(chain, "\t\t{s}");
        }
    }
}

/// `els` split into groups whose elements do not overlap, in order.
fn disjoint_groups(els: Vec<Element>) -> Vec<Vec<Element>> {
    let mut groups: Vec<Vec<Element>> = Vec::new();
    for e in els {
        match groups.iter_mut().find(|g| !g.iter().any(|x| overlaps(x, &e))) {
            Some(g) => g.push(e),
            None => groups.push(vec![e]),
        }
    }
    groups
}

fn declare(sets: &mut String, name: &str, t: &str, els: &[Element]) {
    let list: Vec<&str> = els.iter().map(|e| e.text.as_str()).collect();
    let _ = writeln!(sets, "\tset {name} {{\n\t\ttype {t}\n\t\tflags interval\n\t\telements = {{ {} }}\n\t}}", list.join(", "));
}

/// `table inet <table>` with an input chain doing what `policy` does:
/// its state settings (conntrack's `ct state`), its rules (as sets), then
/// `extra` (rules the caller adds last), then the default action.
pub fn ruleset(policy: &Policy, rules: &[Rule], table: &str, extra: &str) -> String {
    let mut sets = String::new();
    let mut chain = String::new();
    let s = &policy.settings;
    for (name, action) in [("established", s.established), ("related", s.related), ("invalid", s.invalid)] {
        match action {
            StateAction::Accept => {
                let _ = writeln!(chain, "\t\tct state {name} accept");
            }
            StateAction::Drop => {
                let _ = writeln!(chain, "\t\tct state {name} drop");
            }
            StateAction::Rules => {}
        }
    }
    // Place each rule in the earliest same-action run it can move up to.
    let mut atoms: Vec<Vec<(bool, Shape, Element)>> = rules.iter().map(atoms_of).collect();
    let mut runs: Vec<(Action, Vec<usize>)> = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let mut target = None;
        for (k, (action, members)) in runs.iter().enumerate().rev() {
            if *action == rule.action {
                target = Some(k);
            } else if members.iter().any(|&j| rules_overlap(&atoms[j], &atoms[i])) {
                break;
            }
        }
        match target {
            Some(k) => runs[k].1.push(i),
            None => runs.push((rule.action, vec![i])),
        }
    }
    let mut next_set = 0;
    for (action, members) in runs {
        let mut run = Run { action, buckets: Vec::new(), singles: Vec::new() };
        for i in members {
            run.add(&rules[i], std::mem::take(&mut atoms[i]), &mut next_set, &mut sets);
        }
        run.emit(&mut next_set, &mut sets, &mut chain);
    }
    format!(
        "table inet {table} {{\n{sets}\tchain input {{\n\t\ttype filter hook input priority filter; policy {};\n{chain}{extra}\n\t}}\n}}\n",
        verdict(s.default)
    )
}
