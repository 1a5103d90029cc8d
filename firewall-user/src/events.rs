//! Events on the controller's side. Each drop or `log` record from the ring
//! buffer becomes a JSON line in `/run/firewall/NETNS/NAME/events.jsonl`
//! (rotated at `ROTATE_BYTES`), and so does each change the controller
//! makes or sees (a service entering or leaving cookie mode, a connection
//! table nearly full) and each alert. Drops and sampled cookie SYNs count
//! towards the top sources by prefix (overall, and per cookie service),
//! which `top.json` beside it holds (rewritten once a second). `firewall
//! events` and `firewall top` read those files from any process.

use std::{
    collections::{BTreeMap, HashMap},
    fs::{self, File},
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use firewall_common::{Event, Reason};
use serde::{Deserialize, Serialize};

/// An events file grows to this before it is rotated to `events.jsonl.1`.
pub const ROTATE_BYTES: u64 = 8 << 20;
/// Sources kept in `top.json`.
pub const TOP_SOURCES: usize = 20;
/// Prefixes counted at most, for drops and (apart) for SYNs: a flood from
/// random sources must not grow the controller. When a new prefix finds
/// the table full, the less busy half goes (their records count under
/// `other`), so that a flood of one-off spoofed prefixes cannot freeze
/// the table with the first ones it saw.
pub const MAX_PREFIXES: usize = 16_384;

/// The median of `counts` (the upper one of an even number); 0 for none.
/// Prefixes counted at or under it are the quieter half.
fn median(mut counts: Vec<u64>) -> u64 {
    if counts.is_empty() {
        return 0;
    }
    let mid = counts.len() / 2;
    *counts.select_nth_unstable_by(mid, |a, b| b.cmp(a)).1
}

/// Keeps the entries of `entries` counted (`count`) above `threshold`;
/// returns how many records the dropped ones held.
fn prune<T>(entries: &mut HashMap<String, T>, threshold: u64, count: impl Fn(&T) -> u64) -> u64 {
    let mut gone = 0;
    entries.retain(|_, v| {
        let keep = count(v) > threshold;
        if !keep {
            gone += count(v);
        }
        keep
    });
    gone
}

/// The `TOP_SOURCES` busiest of `entries` by `count`, busiest first (ties
/// by prefix).
fn busiest<'a, T: Clone + 'a>(entries: impl Iterator<Item = &'a T>, count: impl Fn(&T) -> u64, prefix: impl Fn(&T) -> &str) -> Vec<T> {
    let mut v: Vec<&T> = entries.collect();
    let order = |a: &&T, b: &&T| count(b).cmp(&count(a)).then_with(|| prefix(a).cmp(prefix(b)));
    if v.len() > TOP_SOURCES {
        v.select_nth_unstable_by(TOP_SOURCES, order);
        v.truncate(TOP_SOURCES);
    }
    v.sort_by(order);
    v.into_iter().cloned().collect()
}

/// Where the firewall `name` of this network namespace keeps its event files.
pub fn run_dir(name: &str) -> Result<PathBuf> {
    Ok(Path::new("/run/firewall").join(crate::loader::netns_inode()?.to_string()).join(name))
}

/// Removes the event files of the firewall `name` (stopped, or a new one
/// of that name), and the namespace's directory once it is empty.
pub fn remove_run_dir(name: &str) {
    if let Ok(d) = run_dir(name) {
        let _ = fs::remove_dir_all(&d);
        if let Some(parent) = d.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// One line of the events file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A dropped packet.
    Drop(Record),
    /// A packet a `log = true` rule matched.
    Log(Record),
    /// A proven source a rule's `limit` added to its `ban` set (the
    /// record is of the packet that passed the limit).
    Ban(Record),
    /// A change of what the data plane does, or of how full it is.
    State(StateChange),
    /// An alert that fired or resolved.
    Alert(crate::alerts::Transition),
}

impl Entry {
    /// One line of text (`firewall events`).
    pub fn text(&self) -> String {
        match self {
            Entry::Drop(r) => r.text(""),
            Entry::Log(r) => r.text("log "),
            Entry::Ban(r) => r.text("ban "),
            Entry::State(c) => format!("{} {} {} {}: {}", hms(c.time), c.what, c.subject, c.state, c.message),
            Entry::Alert(t) => format!("{} {}", hms(t.unix_time as f64), t.text()),
        }
    }
}

/// A change the controller made or saw.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StateChange {
    pub time: f64,
    /// `cookie_mode` (of a service) or `table` (a connection table).
    pub what: String,
    /// The service, or `proven` / `unproven`.
    pub subject: String,
    /// `on` / `off`; `nearly_full` / `ok`.
    pub state: String,
    /// SYNs per second, or the fraction of the table in use.
    pub value: f64,
    pub message: String,
}

/// A packet event as logged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Unix seconds, with milliseconds.
    pub time: f64,
    pub iface: String,
    pub verdict: String,
    pub reason: String,
    pub proto: String,
    pub src: Option<IpAddr>,
    pub sport: u16,
    pub dst: Option<IpAddr>,
    pub dport: u16,
    /// TCP flags as letters (`S`, `A`, `F`, `R`, `P`, `U`), empty otherwise.
    pub flags: String,
    pub len: u32,
    /// Records of this kind that CPU left out since its previous one.
    pub not_recorded: u32,
    /// The rule that matched, if the verdict is the rules'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

impl Record {
    /// `rule` is the name of the rule the event names, if any.
    pub fn from_event(ev: &Event, unix_minus_mono_ns: i128, iface: String, rule: Option<String>) -> Self {
        let known = Reason::ALL.get(ev.reason as usize);
        let reason = known.map_or("unknown", |r| r.name()).to_owned();
        let parsed = ev.src.to_u128() != 0 || ev.dst.to_u128() != 0;
        let proto = match ev.proto {
            6 => "tcp",
            17 => "udp",
            1 => "icmp",
            58 => "icmpv6",
            _ if !parsed => "-",
            _ => "other",
        };
        let letters = [(0x02, 'S'), (0x10, 'A'), (0x01, 'F'), (0x04, 'R'), (0x08, 'P'), (0x20, 'U')];
        Record {
            time: (ev.ts_ns as i128 + unix_minus_mono_ns) as f64 / 1e9,
            iface,
            verdict: known.map_or("drop", |r| crate::stats::verdict(*r)).into(),
            reason,
            proto: proto.into(),
            src: parsed.then(|| crate::conntrack::addr(ev.src)),
            sport: ev.sport,
            dst: parsed.then(|| crate::conntrack::addr(ev.dst)),
            dport: ev.dport,
            flags: letters.iter().filter(|(b, _)| ev.tcp_flags & b != 0).map(|(_, c)| *c).collect(),
            len: ev.len,
            not_recorded: ev.skipped,
            rule,
        }
    }

    /// `12:00:01.250 eth0 drop default_drop tcp 10.0.0.1:40000 -> 10.0.0.2:80 [S] 60 B`,
    /// after `prefix` (`log `) and the verdict, `rule NAME` when one matched.
    pub fn text(&self, prefix: &str) -> String {
        let ep = |a: Option<IpAddr>, p: u16| match a {
            Some(IpAddr::V6(v6)) => format!("[{v6}]:{p}"),
            Some(a) => format!("{a}:{p}"),
            None => "?".into(),
        };
        let rule = self.rule.as_ref().map_or(String::new(), |r| format!(" rule {r}"));
        let mut s = format!("{} {} {prefix}{} {}{rule} {} {} -> {}", hms(self.time), self.iface, self.verdict, self.reason, self.proto, ep(self.src, self.sport), ep(self.dst, self.dport));
        if !self.flags.is_empty() {
            s += &format!(" [{}]", self.flags);
        }
        s += &format!(" {} B", self.len);
        if self.not_recorded > 0 {
            s += &format!(" (+{} not recorded)", self.not_recorded);
        }
        s
    }
}

/// `HH:MM:SS.mmm` (UTC) of Unix seconds.
fn hms(time: f64) -> String {
    let secs = time as u64;
    let ms = ((time - secs as f64) * 1000.0) as u64;
    format!("{:02}:{:02}:{:02}.{ms:03}", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}

/// The prefix a source is counted under: /24 for IPv4, /64 for IPv6.
pub fn prefix(a: IpAddr) -> String {
    match a {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{}/64", std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// One source prefix in `top.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Source {
    pub prefix: String,
    /// Drops recorded from it.
    pub recorded: u64,
    /// Drops by reason (recorded).
    pub reasons: BTreeMap<String, u64>,
    /// Drops by the rule that dropped them (recorded).
    #[serde(default)]
    pub rules: BTreeMap<String, u64>,
    /// Unix seconds of the last one.
    pub last: f64,
}

/// The sources of the SYNs one cookie service answered.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServiceTop {
    pub service: String,
    /// SYNs recorded (sampled) for this service.
    pub recorded: u64,
    /// SYNs left out by sampling and caps.
    pub not_recorded: u64,
    pub sources: Vec<SynSource>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SynSource {
    pub prefix: String,
    /// SYNs recorded from it.
    pub syns: u64,
    pub last: f64,
}

/// What `top.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Top {
    /// Unix seconds of this snapshot.
    pub time: f64,
    pub recorded: u64,
    /// Drops the samplers and caps left out (not attributed to a source).
    pub not_recorded: u64,
    /// Recorded drops (and SYNs) of prefixes pruned to keep `MAX_PREFIXES`.
    #[serde(default)]
    pub other: u64,
    pub sources: Vec<Source>,
    /// Per cookie service, the sources of the SYNs it answered.
    #[serde(default)]
    pub services: Vec<ServiceTop>,
}

impl Top {
    /// The first `n` prefixes of the sources an alert on `metric` is about
    /// (none for the tables).
    pub fn sources_for(&self, metric: &crate::alerts::Metric, n: usize) -> Vec<String> {
        use crate::alerts::Metric;
        let ranked = |count: &dyn Fn(&Source) -> u64| {
            let mut v: Vec<(u64, &str)> = self.sources.iter().map(|s| (count(s), s.prefix.as_str())).filter(|(c, _)| *c > 0).collect();
            v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
            v.into_iter().take(n).map(|(_, p)| p.to_owned()).collect()
        };
        match metric {
            Metric::SynRate(s) => self.services.iter().find(|t| t.service == *s).map_or_else(Vec::new, |t| t.sources.iter().take(n).map(|x| x.prefix.clone()).collect()),
            Metric::CookieAckFailures(_) => ranked(&|s| s.reasons.get(Reason::CookieInvalid.name()).copied().unwrap_or(0)),
            Metric::ReasonRate(r) => ranked(&|s| s.reasons.get(*r).copied().unwrap_or(0)),
            Metric::RuleRate(r) => ranked(&|s| s.rules.get(r).copied().unwrap_or(0)),
            Metric::TableUse(_) => Vec::new(),
        }
    }
}

/// SYN sources of one service, as the sink counts them.
#[derive(Default)]
struct ServiceCount {
    recorded: u64,
    not_recorded: u64,
    sources: HashMap<String, SynSource>,
}

/// The controller's writer of both files.
pub struct Sink {
    dir: PathBuf,
    file: std::io::BufWriter<File>,
    written: u64,
    sources: HashMap<String, Source>,
    services: BTreeMap<String, ServiceCount>,
    /// Prefixes counted over every service's SYN sources.
    syn_prefixes: usize,
    recorded: u64,
    not_recorded: u64,
    other: u64,
}

/// Unix time minus monotonic time, ns (event times are monotonic).
pub fn unix_minus_mono_ns() -> i128 {
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
    unix - crate::conntrack::monotonic_ns() as i128
}

impl Sink {
    pub fn open(dir: &Path) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join("events.jsonl");
        let file = fs::OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self { dir: dir.to_path_buf(), file: std::io::BufWriter::new(file), written, sources: HashMap::new(), services: BTreeMap::new(), syn_prefixes: 0, recorded: 0, not_recorded: 0, other: 0 })
    }

    /// Logs a drop and counts its source.
    pub fn drop(&mut self, r: Record) -> Result<()> {
        self.count_drop(&r);
        self.write(&Entry::Drop(r))
    }

    /// Logs a match of a `log = true` rule (its source counted if it is a
    /// drop; its `not_recorded` are log records, not drops).
    pub fn log(&mut self, r: Record) -> Result<()> {
        if r.verdict == "drop" {
            self.count_drop(&Record { not_recorded: 0, ..r.clone() });
        }
        self.write(&Entry::Log(r))
    }

    /// Logs a ban (its packet was refused: counted as a drop of its source).
    pub fn ban(&mut self, r: Record) -> Result<()> {
        self.count_drop(&Record { not_recorded: 0, ..r.clone() });
        self.write(&Entry::Ban(r))
    }

    /// Logs a change of state.
    pub fn state(&mut self, c: StateChange) -> Result<()> {
        self.write(&Entry::State(c))
    }

    /// Logs an alert.
    pub fn alert(&mut self, t: crate::alerts::Transition) -> Result<()> {
        self.write(&Entry::Alert(t))
    }

    /// Counts a sampled SYN to the cookie service `service` (not logged:
    /// under a flood these would bury everything else).
    pub fn syn(&mut self, service: &str, r: &Record) {
        let Some(src) = r.src else { return };
        let key = prefix(src);
        let known = self.services.get(service).is_some_and(|s| s.sources.contains_key(&key));
        if !known && self.syn_prefixes >= MAX_PREFIXES {
            // The quieter half of every service's sources makes room.
            let threshold = median(self.services.values().flat_map(|s| s.sources.values().map(|x| x.syns)).collect());
            for svc in self.services.values_mut() {
                self.other += prune(&mut svc.sources, threshold, |x| x.syns);
            }
            self.syn_prefixes = self.services.values().map(|s| s.sources.len()).sum();
        }
        let svc = self.services.entry(service.to_owned()).or_default();
        svc.recorded += 1;
        svc.not_recorded += u64::from(r.not_recorded);
        let s = svc.sources.entry(key).or_insert_with_key(|k| {
            self.syn_prefixes += 1;
            SynSource { prefix: k.clone(), ..SynSource::default() }
        });
        s.syns += 1;
        s.last = r.time;
    }

    fn count_drop(&mut self, r: &Record) {
        self.recorded += 1;
        self.not_recorded += u64::from(r.not_recorded);
        let Some(src) = r.src else { return };
        let key = prefix(src);
        if self.sources.len() >= MAX_PREFIXES && !self.sources.contains_key(&key) {
            let threshold = median(self.sources.values().map(|s| s.recorded).collect());
            self.other += prune(&mut self.sources, threshold, |s| s.recorded);
        }
        let s = self.sources.entry(key).or_insert_with_key(|k| Source { prefix: k.clone(), ..Source::default() });
        s.recorded += 1;
        *s.reasons.entry(r.reason.clone()).or_default() += 1;
        if let Some(rule) = &r.rule {
            *s.rules.entry(rule.clone()).or_default() += 1;
        }
        s.last = r.time;
    }

    /// Appends one line to the events file, rotating it when full.
    fn write(&mut self, entry: &Entry) -> Result<()> {
        let mut line = serde_json::to_string(entry)?;
        line.push('\n');
        if self.written + line.len() as u64 > ROTATE_BYTES {
            let path = self.dir.join("events.jsonl");
            self.file.flush()?;
            fs::rename(&path, self.dir.join("events.jsonl.1")).context("cannot rotate the events file")?;
            // Counted as rotated even if the new file cannot be opened: the
            // next record tries again instead of failing for ever.
            self.written = 0;
            self.file = std::io::BufWriter::new(fs::OpenOptions::new().create(true).append(true).open(&path).context("cannot open a new events file")?);
        }
        self.file.write_all(line.as_bytes())?;
        self.written += line.len() as u64;
        Ok(())
    }

    /// Writes out what `record` buffered.
    pub fn flush(&mut self) -> Result<()> {
        Ok(self.file.flush()?)
    }

    /// The busiest sources, most drops first.
    pub fn top(&self) -> Top {
        let sources = busiest(self.sources.values(), |s| s.recorded, |s| &s.prefix);
        let services = self
            .services
            .iter()
            .map(|(name, c)| ServiceTop {
                service: name.clone(),
                recorded: c.recorded,
                not_recorded: c.not_recorded,
                sources: busiest(c.sources.values(), |s| s.syns, |s| &s.prefix),
            })
            .collect();
        Top { time: crate::loader::unix_now_f64(), recorded: self.recorded, not_recorded: self.not_recorded, other: self.other, sources, services }
    }

    /// Rewrites `top.json` (whole, then renamed: a reader never sees half).
    pub fn write_top(&self) -> Result<()> {
        let tmp = self.dir.join("top.json.tmp");
        fs::write(&tmp, serde_json::to_string(&self.top())?)?;
        fs::rename(&tmp, self.dir.join("top.json"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_as_lines_and_count_by_prefix() {
        let ev = Event {
            ts_ns: 1_000_000_000,
            src: firewall_common::U128::from_u128(crate::compile::addr128("192.0.2.77".parse().unwrap())),
            dst: firewall_common::U128::from_u128(crate::compile::addr128("198.51.100.1".parse().unwrap())),
            sport: 40000,
            dport: 80,
            proto: 6,
            tcp_flags: 0x02,
            kind: firewall_common::EVENT_DROP,
            reason: Reason::DefaultDrop as u16,
            len: 60,
            skipped: 2,
            ..Event::default()
        };
        let r = Record::from_event(&ev, 3_600_000_000_000, "eth0".into(), None);
        assert_eq!(r.text(""), "01:00:01.000 eth0 drop default_drop tcp 192.0.2.77:40000 -> 198.51.100.1:80 [S] 60 B (+2 not recorded)");
        let dir = std::env::temp_dir().join(format!("fw-events-{}", std::process::id()));
        let mut sink = Sink::open(&dir).unwrap();
        sink.drop(r.clone()).unwrap();
        sink.drop(Record { src: Some("192.0.2.9".parse().unwrap()), rule: Some("telnet".into()), reason: "rule_drop".into(), ..r.clone() }).unwrap();
        sink.drop(Record { src: Some("2001:db8::1".parse().unwrap()), reason: "invalid_window".into(), ..r.clone() }).unwrap();
        // A logged accept is logged, not counted as a drop; sampled SYNs
        // are counted per service, not logged.
        let logged = Record { verdict: "pass".into(), reason: "rule_accept".into(), rule: Some("web".into()), not_recorded: 0, ..r.clone() };
        assert_eq!(Entry::Log(logged.clone()).text(), "01:00:01.000 eth0 log pass rule_accept rule web tcp 192.0.2.77:40000 -> 198.51.100.1:80 [S] 60 B");
        sink.log(logged).unwrap();
        for src in ["203.0.113.1", "203.0.113.2", "198.18.0.1"] {
            sink.syn("web", &Record { src: Some(src.parse().unwrap()), reason: "cookie_sent".into(), ..r.clone() });
        }
        sink.state(StateChange { time: 3600.0, what: "cookie_mode".into(), subject: "web".into(), state: "on".into(), value: 12000.0, message: "12000 SYN/s".into() }).unwrap();
        sink.flush().unwrap();
        sink.write_top().unwrap();
        let top: Top = serde_json::from_str(&fs::read_to_string(dir.join("top.json")).unwrap()).unwrap();
        assert_eq!(top.sources[0].prefix, "192.0.2.0/24");
        assert_eq!(top.sources[0].recorded, 2);
        assert_eq!(top.sources[0].rules, BTreeMap::from([("telnet".to_owned(), 1)]));
        assert_eq!(top.sources[1].prefix, "2001:db8::/64");
        assert_eq!(top.recorded, 3);
        assert_eq!(top.not_recorded, 6);
        assert_eq!(top.services.len(), 1);
        assert_eq!((top.services[0].service.as_str(), top.services[0].recorded, top.services[0].not_recorded), ("web", 3, 6));
        assert_eq!((top.services[0].sources[0].prefix.as_str(), top.services[0].sources[0].syns), ("203.0.113.0/24", 2));
        use crate::alerts::Metric;
        assert_eq!(top.sources_for(&Metric::SynRate("web".into()), 5), ["203.0.113.0/24", "198.18.0.0/24"]);
        assert_eq!(top.sources_for(&Metric::ReasonRate("invalid_window"), 5), ["2001:db8::/64"]);
        assert_eq!(top.sources_for(&Metric::RuleRate("telnet".into()), 5), ["192.0.2.0/24"]);
        let lines: Vec<Entry> = fs::read_to_string(dir.join("events.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 5, "three drops, one log, one state change");
        assert_eq!(lines[0], Entry::Drop(r.clone()));
        assert!(matches!(&lines[3], Entry::Log(l) if l.rule.as_deref() == Some("web")));

        // A flood of one-off prefixes cannot freeze the table: a busy
        // source seen after it is still counted, the busy ones stay.
        for i in 0..(MAX_PREFIXES as u32 + 10) {
            let a = std::net::Ipv4Addr::from(0x0a00_0000 + (i << 8));
            sink.count_drop(&Record { src: Some(a.into()), not_recorded: 0, ..r.clone() });
            sink.syn("web", &Record { src: Some(a.into()), not_recorded: 0, ..r.clone() });
        }
        for _ in 0..5 {
            sink.count_drop(&Record { src: Some("198.51.100.9".parse().unwrap()), not_recorded: 0, ..r.clone() });
            sink.syn("web", &Record { src: Some("198.51.100.9".parse().unwrap()), not_recorded: 0, ..r.clone() });
        }
        let top = sink.top();
        assert!(sink.sources.len() <= MAX_PREFIXES && sink.syn_prefixes <= MAX_PREFIXES);
        assert_eq!((top.sources[0].prefix.as_str(), top.sources[0].recorded), ("198.51.100.0/24", 5), "a late busy source is counted");
        assert_eq!(top.sources[1].prefix, "192.0.2.0/24", "busy sources survive pruning");
        assert_eq!(top.services[0].sources[0].prefix, "198.51.100.0/24");
        assert!(top.other > 0);
        assert_eq!(lines[4].text(), "01:00:00.000 cookie_mode web on: 12000 SYN/s");
        let _ = fs::remove_dir_all(&dir);
    }
}
