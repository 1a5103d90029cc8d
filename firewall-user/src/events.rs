//! Drop events on the controller's side: each `Event` from the ring buffer
//! becomes a JSON line in `/run/firewall/NETNS/NAME/events.jsonl` (rotated
//! at `ROTATE_BYTES`), and counts towards the top sources by prefix, which
//! `top.json` beside it holds (rewritten once a second). `firewall events`
//! and `firewall top` read those files from any process.

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
/// Prefixes counted at most; beyond, drops from new prefixes count under
/// `other` (a flood from random sources must not grow the controller).
pub const MAX_PREFIXES: usize = 16_384;

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

/// One event as logged.
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
    /// Drops on that CPU left out since its previous record.
    pub not_recorded: u32,
}

impl Record {
    pub fn from_event(ev: &Event, unix_minus_mono_ns: i128, iface: String) -> Self {
        let reason = Reason::ALL.get(ev.reason as usize).map_or("unknown", |r| r.name()).to_owned();
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
            verdict: "drop".into(),
            reason,
            proto: proto.into(),
            src: parsed.then(|| crate::conntrack::addr(ev.src)),
            sport: ev.sport,
            dst: parsed.then(|| crate::conntrack::addr(ev.dst)),
            dport: ev.dport,
            flags: letters.iter().filter(|(b, _)| ev.tcp_flags & b != 0).map(|(_, c)| *c).collect(),
            len: ev.len,
            not_recorded: ev.skipped,
        }
    }

    /// `12:00:01.250 eth0 drop default_drop tcp 10.0.0.1:40000 -> 10.0.0.2:80 [S] 60 B`
    pub fn text(&self) -> String {
        let secs = self.time as u64;
        let ms = ((self.time - secs as f64) * 1000.0) as u64;
        let hms = format!("{:02}:{:02}:{:02}.{ms:03}", secs / 3600 % 24, secs / 60 % 60, secs % 60);
        let ep = |a: Option<IpAddr>, p: u16| match a {
            Some(IpAddr::V6(v6)) => format!("[{v6}]:{p}"),
            Some(a) => format!("{a}:{p}"),
            None => "?".into(),
        };
        let mut s = format!("{hms} {} {} {} {} {} -> {}", self.iface, self.verdict, self.reason, self.proto, ep(self.src, self.sport), ep(self.dst, self.dport));
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
    /// Unix seconds of the last one.
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
    /// Recorded drops from prefixes past `MAX_PREFIXES`.
    #[serde(default)]
    pub other: u64,
    pub sources: Vec<Source>,
}

/// The controller's writer of both files.
pub struct Sink {
    dir: PathBuf,
    file: std::io::BufWriter<File>,
    written: u64,
    sources: HashMap<String, Source>,
    recorded: u64,
    not_recorded: u64,
    other: u64,
    /// Unix time minus monotonic time, ns (event times are monotonic).
    pub unix_minus_mono_ns: i128,
}

impl Sink {
    pub fn open(dir: &Path) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join("events.jsonl");
        let file = fs::OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
        Ok(Self { dir: dir.to_path_buf(), file: std::io::BufWriter::new(file), written, sources: HashMap::new(), recorded: 0, not_recorded: 0, other: 0, unix_minus_mono_ns: unix - crate::conntrack::monotonic_ns() as i128 })
    }

    /// Logs one record and counts it.
    pub fn record(&mut self, r: &Record) -> Result<()> {
        let mut line = serde_json::to_string(r)?;
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
        self.recorded += 1;
        self.not_recorded += u64::from(r.not_recorded);
        if let Some(src) = r.src {
            let key = prefix(src);
            if self.sources.len() >= MAX_PREFIXES && !self.sources.contains_key(&key) {
                self.other += 1;
                return Ok(());
            }
            let s = self.sources.entry(key.clone()).or_insert_with(|| Source { prefix: key, ..Source::default() });
            s.recorded += 1;
            *s.reasons.entry(r.reason.clone()).or_default() += 1;
            s.last = r.time;
        }
        Ok(())
    }

    /// Writes out what `record` buffered.
    pub fn flush(&mut self) -> Result<()> {
        Ok(self.file.flush()?)
    }

    /// The busiest sources, most drops first.
    pub fn top(&self) -> Top {
        let mut sources: Vec<&Source> = self.sources.values().collect();
        let order = |a: &&Source, b: &&Source| b.recorded.cmp(&a.recorded).then_with(|| a.prefix.cmp(&b.prefix));
        if sources.len() > TOP_SOURCES {
            sources.select_nth_unstable_by(TOP_SOURCES, order);
            sources.truncate(TOP_SOURCES);
        }
        sources.sort_by(order);
        let sources: Vec<Source> = sources.into_iter().cloned().collect();
        Top { time: crate::loader::unix_now() as f64, recorded: self.recorded, not_recorded: self.not_recorded, other: self.other, sources }
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
            reason: Reason::DefaultDrop as u32,
            len: 60,
            skipped: 2,
            ..Event::default()
        };
        let r = Record::from_event(&ev, 3_600_000_000_000, "eth0".into());
        assert_eq!(r.text(), "01:00:01.000 eth0 drop default_drop tcp 192.0.2.77:40000 -> 198.51.100.1:80 [S] 60 B (+2 not recorded)");
        let dir = std::env::temp_dir().join(format!("fw-events-{}", std::process::id()));
        let mut sink = Sink::open(&dir).unwrap();
        sink.record(&r).unwrap();
        sink.record(&Record { src: Some("192.0.2.9".parse().unwrap()), ..r.clone() }).unwrap();
        sink.record(&Record { src: Some("2001:db8::1".parse().unwrap()), reason: "invalid_window".into(), ..r.clone() }).unwrap();
        sink.flush().unwrap();
        sink.write_top().unwrap();
        let top: Top = serde_json::from_str(&fs::read_to_string(dir.join("top.json")).unwrap()).unwrap();
        assert_eq!(top.sources[0].prefix, "192.0.2.0/24");
        assert_eq!(top.sources[0].recorded, 2);
        assert_eq!(top.sources[1].prefix, "2001:db8::/64");
        assert_eq!(top.recorded, 3);
        assert_eq!(top.not_recorded, 6);
        let lines: Vec<Record> = fs::read_to_string(dir.join("events.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], r);
        let _ = fs::remove_dir_all(&dir);
    }
}
