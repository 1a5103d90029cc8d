//! The policy file: the model (`Policy`, `Rule`, `Settings`), read from
//! TOML (`raw`), checked (`validate`), with rules that can never match
//! found (`shadow`) and every problem located (`diagnostic`).
//!
//! Parsing happens in two steps. Serde turns the text into `Raw*` structs
//! that keep the byte span of every value (`toml::Spanned`); `Validator`
//! then checks what serde cannot (CIDRs, port ranges, which keys make sense
//! together) and builds the `Policy`. Every problem is reported as a
//! `Diagnostic` at `file:line:col`, so a user can jump straight to it.
//!
//! ```toml
//! [settings]
//! default = "drop"        # verdict when no rule matches
//! fragments = "drop"      # non-first IP fragments
//! established = "accept"  # packets of a known flow: accept | drop | rules
//! related = "accept"      # ICMP errors about a known flow: accept | drop | rules
//! invalid = "drop"        # TCP packets that fit no flow or break it: accept | drop | rules
//!
//! [settings.timeouts]     # idle timeouts in seconds, each optional
//! tcp_established = 432000
//! udp = 30
//!
//! [settings.events]       # events (`firewall events`, `firewall top`)
//! drops = true            # drops are recorded; default false
//! syns = true             # SYNs answered with cookies, for the top sources
//!                         # per service (not logged); default: as `drops`
//! sample = 1              # one drop (and one such SYN) in N is recorded
//! per_second = 100        # at most this many per second per CPU, each
//! log_per_second = 100    # matches of `log = true` rules, per second per CPU
//!
//! [[rule]]
//! name = "ssh-admin"
//! state = "new"           # new | established | related | invalid, or a list
//! proto = "tcp"           # tcp | udp | icmp | icmpv6 | any
//! src = ["10.0.0.0/8", "fd00::/8"]
//! dport = 22              # a port, "lo-hi", or a list of both
//! tcp_flags = "syn,!ack"
//! action = "accept"
//! log = true              # each match is an event (capped, never sampled)
//! ```

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use firewall_common::{
    MAX_RULES, MAX_SET_ELEMENTS, MAX_SET_SIZE, MAX_SETS, RULE_NAME_LEN, STATE_ACCEPT, STATE_DROP, STATE_RULES, Timeouts, ct_state, tcp_flags,
};
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use toml::Spanned;

pub use std::net::IpAddr;

mod diagnostic;
mod raw;
mod shadow;
mod validate;

pub use diagnostic::{Diagnostic, PolicyError};
use validate::Validator;

// ---------------------------------------------------------------------------
// Public model
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Accept,
    Drop,
}

/// What `settings.established` / `.related` / `.invalid` do with packets of
/// that connection state, before any rule is looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateAction {
    Accept,
    Drop,
    /// Not decided by the setting: the packets go through the rules, whose
    /// `state` key can match them.
    Rules,
}

impl StateAction {
    /// The `firewall_common::STATE_*` code.
    pub fn code(self) -> u8 {
        match self {
            StateAction::Accept => STATE_ACCEPT,
            StateAction::Drop => STATE_DROP,
            StateAction::Rules => STATE_RULES,
        }
    }

    /// The spelling used in policy files (for messages).
    pub fn name(self) -> &'static str {
        match self {
            StateAction::Accept => "accept",
            StateAction::Drop => "drop",
            StateAction::Rules => "rules",
        }
    }
}

/// A rule's `syncookie` key: whether SYNs it accepts are answered from XDP
/// with a SYN cookie instead of reaching the host's stack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Syncookie {
    #[default]
    Off,
    /// Every SYN to the service.
    Always,
    /// Only while the service's SYN rate is above `[settings.syncookie]`'s
    /// `auto_on_rate` (and until it falls below `auto_off_rate`).
    Auto,
}

impl Syncookie {
    /// The `firewall_common::SYNCOOKIE_*` code.
    pub fn code(self) -> u8 {
        match self {
            Syncookie::Off => firewall_common::SYNCOOKIE_OFF,
            Syncookie::Always => firewall_common::SYNCOOKIE_ALWAYS,
            Syncookie::Auto => firewall_common::SYNCOOKIE_AUTO,
        }
    }
}

/// `[settings.syncookie]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncookieSettings {
    /// SYNs per second (per service) above which `auto` answers with cookies.
    pub auto_on_rate: u64,
    /// SYNs per second below which `auto` goes back to the host's stack...
    pub auto_off_rate: u64,
    /// ... once the rate has stayed there this many seconds (hysteresis).
    pub auto_hold_secs: u64,
    /// The cookie key is replaced this often; the previous one stays valid
    /// one more period. At least `MIN_KEY_ROTATION` (a cookie lives up to 137 s).
    pub key_rotation_secs: u64,
}

impl Default for SyncookieSettings {
    fn default() -> Self {
        Self { auto_on_rate: 1000, auto_off_rate: 500, auto_hold_secs: 10, key_rotation_secs: 600 }
    }
}

/// Shortest key rotation: longer than a cookie's life (two time periods).
pub const MIN_KEY_ROTATION: u64 = 140;

/// Names of the `ct_state` bits, as written in a rule's `state` key.
const STATE_NAMES: [(&str, u8); 4] = [
    ("new", ct_state::NEW),
    ("established", ct_state::ESTABLISHED),
    ("related", ct_state::RELATED),
    ("invalid", ct_state::INVALID),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Any,
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl Action {
    /// `ACTION_ACCEPT` / `ACTION_DROP`, as the XDP program reads them.
    pub fn code(self) -> u8 {
        match self {
            Action::Accept => firewall_common::ACTION_ACCEPT,
            Action::Drop => firewall_common::ACTION_DROP,
        }
    }
}

impl Proto {
    /// IP protocol number; `None` for `any`.
    pub fn number(self) -> Option<u8> {
        match self {
            Proto::Any => None,
            Proto::Tcp => Some(6),
            Proto::Udp => Some(17),
            Proto::Icmp => Some(1),
            Proto::Icmpv6 => Some(58),
        }
    }

    /// The spelling used in policy files (for messages).
    pub fn name(self) -> &'static str {
        match self {
            Proto::Any => "any",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Icmpv6 => "icmpv6",
        }
    }

    fn has_ports(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Udp)
    }

    fn is_icmp(self) -> bool {
        matches!(self, Proto::Icmp | Proto::Icmpv6)
    }

    /// Whether a packet of this protocol can be IPv4 / IPv6.
    fn allows_family(self, v4: bool) -> bool {
        match self {
            Proto::Icmp => v4,
            Proto::Icmpv6 => !v4,
            _ => true,
        }
    }
}

/// An address block. The constructor in this module guarantees that no host
/// bits are set, so `addr` is the network address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// 0.0.0.0/0 or ::/0.
    pub fn any(v4: bool) -> Cidr {
        if v4 {
            Cidr { addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), prefix: 0 }
        } else {
            Cidr { addr: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), prefix: 0 }
        }
    }

    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Address bits of the family (32 or 128).
    pub fn width(&self) -> u8 {
        if self.is_v4() { 32 } else { 128 }
    }

    /// Whether every address of `other` is in `self` (never across families).
    pub fn contains(&self, other: &Cidr) -> bool {
        if self.is_v4() != other.is_v4() || self.prefix > other.prefix {
            return false;
        }
        let (net, width) = addr_bits(self.addr);
        let (addr, _) = addr_bits(other.addr);
        mask_bits(addr, width, self.prefix) == mask_bits(net, width, self.prefix)
    }

    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address (a host route).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr_s, prefix_s) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_s.parse().map_err(|_| {
            format!("invalid address `{s}` (expected an IPv4 or IPv6 address, optionally with /prefix)")
        })?;
        let width = if addr.is_ipv4() { 32u8 } else { 128 };
        let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
        let prefix = match prefix_s {
            None => width,
            Some(p) => {
                // `u8::from_str` would accept "+8"; insist on plain digits.
                let n = if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
                    p.parse::<u32>().ok()
                } else {
                    None
                };
                match n {
                    None => return Err(format!("invalid prefix length `/{p}` in `{s}`")),
                    Some(n) if n > u32::from(width) => {
                        return Err(format!(
                            "prefix /{n} is too long for an {family} address (at most /{width})"
                        ));
                    }
                    Some(n) => n as u8,
                }
            }
        };
        let (bits, _) = addr_bits(addr);
        let net = Cidr { addr: bits_addr(mask_bits(bits, width, prefix), addr.is_ipv4()), prefix };
        if net.addr != addr {
            return Err(format!("host bits set in {s}; did you mean {net}?"));
        }
        Ok(net)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn addr_bits(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

fn bits_addr(bits: u128, v4: bool) -> IpAddr {
    if v4 { IpAddr::V4((bits as u32).into()) } else { IpAddr::V6(bits.into()) }
}

/// Keeps the top `prefix` bits of a `width`-bit value.
fn mask_bits(bits: u128, width: u8, prefix: u8) -> u128 {
    // A shift by 128 overflows; that case (prefix 0 of IPv6) keeps nothing.
    bits & (!0u128).checked_shl(u32::from(width - prefix)).unwrap_or(0)
}

/// Inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const ANY: PortRange = PortRange { lo: 0, hi: u16::MAX };

    pub fn contains(&self, other: &PortRange) -> bool {
        self.lo <= other.lo && other.hi <= self.hi
    }
}

/// Matches when `packet_flags & mask == value`; mask 0 matches every packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TcpFlags {
    pub mask: u8,
    pub value: u8,
}

const FLAG_NAMES: [(&str, u8); 8] = [
    ("fin", tcp_flags::FIN),
    ("syn", tcp_flags::SYN),
    ("rst", tcp_flags::RST),
    ("psh", tcp_flags::PSH),
    ("ack", tcp_flags::ACK),
    ("urg", tcp_flags::URG),
    ("ece", tcp_flags::ECE),
    ("cwr", tcp_flags::CWR),
];

impl TcpFlags {
    /// Parses `"syn,!ack"`: listed flags must be set, `!`-flags clear.
    pub fn parse(s: &str) -> Result<TcpFlags, String> {
        let mut flags = TcpFlags::default();
        for item in s.split(',') {
            let item = item.trim();
            let (clear, name) = match item.strip_prefix('!') {
                Some(n) => (true, n.trim()),
                None => (false, item),
            };
            if name.is_empty() {
                return Err(format!("empty flag name in tcp_flags \"{s}\""));
            }
            let Some(&(_, bit)) = FLAG_NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) else {
                return Err(format!(
                    "unknown TCP flag `{name}` (known: fin, syn, rst, psh, ack, urg, ece, cwr)"
                ));
            };
            let want = if clear { 0 } else { bit };
            if flags.mask & bit != 0 && flags.value & bit != want {
                return Err(format!(
                    "TCP flag `{}` is both required set and required clear",
                    name.to_ascii_lowercase()
                ));
            }
            flags.mask |= bit;
            flags.value |= want;
        }
        Ok(flags)
    }

    /// Whether every flag combination `later` accepts is accepted by `self`.
    fn covers(&self, later: &TcpFlags) -> bool {
        self.mask & later.mask == self.mask && (self.value ^ later.value) & self.mask == 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    /// 1-based line of the rule's `name` value.
    pub line: usize,
    /// 1-based column (in characters) of the rule's `name` value.
    pub col: usize,
    pub proto: Proto,
    /// Empty: any address of either family.
    pub src: Vec<Cidr>,
    pub dst: Vec<Cidr>,
    /// Sets (indices in `Policy::sets`) the source may also be in: the
    /// address matches when it is in `src` or in one of these. Both empty:
    /// any address.
    pub src_sets: Vec<usize>,
    pub dst_sets: Vec<usize>,
    /// Empty: any port.
    pub sport: Vec<PortRange>,
    pub dport: Vec<PortRange>,
    /// Port sets (indices in `Policy::sets`) the port may also be in, as
    /// `src_sets` for addresses.
    pub sport_sets: Vec<usize>,
    pub dport_sets: Vec<usize>,
    pub tcp_flags: TcpFlags,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    /// Connection states matched (`ct_state` bits); `ct_state::ANY` when
    /// the key is absent.
    pub state: u8,
    pub action: Action,
    pub syncookie: Syncookie,
    /// `log = true`: every match is an event (like nftables' `log`).
    pub log: bool,
    /// `limit = { rate, burst, per, per6, max_conns, ban }`: new and open
    /// connections per source prefix.
    pub limit: Option<Limit>,
}

/// A rule's per-source limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// One new connection per this many ns (0: no rate).
    pub interval_ns: u64,
    pub burst: u32,
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    /// Most proven, open TCP connections (0: no cap).
    pub max_conns: u32,
    pub ban: Option<Ban>,
}

/// `ban = "@set"`: a proven source that passes the limit goes into the
/// set for the set's timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ban {
    /// Index in `Policy::sets`.
    pub set: usize,
    pub timeout_secs: u32,
}

/// Burst of a `limit` that does not say (nftables' default).
pub const DEFAULT_BURST: u32 = 5;

/// `"50/s"`, `"600/m"`, `"1000/h"`: the interval in ns between two events.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let bad = || format!("bad rate `{text}`: use a count per s, m or h, such as \"50/s\"");
    let (n, unit) = text.trim().split_once('/').ok_or_else(bad)?;
    let n: u64 = n.trim().parse().map_err(|_| bad())?;
    let per_ns: u64 = match unit.trim() {
        "s" | "second" => 1_000_000_000,
        "m" | "minute" => 60_000_000_000,
        "h" | "hour" => 3_600_000_000_000,
        _ => return Err(bad()),
    };
    if n == 0 || n > 1_000_000_000 {
        return Err(format!("rate `{text}` is out of range (1 to 1,000,000,000 per unit)"));
    }
    // Rounded up: a limit is never looser than written.
    Ok(per_ns.div_ceil(n))
}

/// `per` / `per6`: `"src"` (one address) or `"src/N"`, N up to `max`
/// (32 for IPv4, 128 for IPv6): the source prefix length a bucket covers.
pub fn parse_per(text: &str, max: u8) -> Result<u8, String> {
    match text.trim() {
        "src" => Ok(max),
        t => t
            .strip_prefix("src/")
            .and_then(|n| n.parse::<u8>().ok())
            .filter(|&n| n <= max)
            .ok_or_else(|| format!("bad prefix `{text}`: use \"src\" or \"src/N\" with N from 0 to {max}")),
    }
}

/// IPv6 sources are counted per /64 unless `per6` says otherwise: one
/// host commonly has a whole /64.
pub const DEFAULT_V6_PREFIX: u8 = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub default: Action,
    pub fragments: Action,
    /// Packets of a known flow.
    pub established: StateAction,
    /// ICMP errors about a known flow.
    pub related: StateAction,
    /// TCP packets that fit no flow or break it.
    pub invalid: StateAction,
    /// Idle timeouts (`_pad` is always 0).
    pub timeouts: Timeouts,
    pub syncookie: SyncookieSettings,
    /// `[settings.events]`: which drops are recorded as events.
    pub events: EventSettings,
}

/// Events: drops off by default; on, one drop in `sample` is recorded, at
/// most `per_second` per CPU. SYNs a cookie service answers are sampled
/// the same way for the top sources when `syns`. Matches of `log = true`
/// rules are all recorded, at most `log_per_second` per CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventSettings {
    pub drops: bool,
    pub syns: bool,
    pub sample: u32,
    pub per_second: u32,
    pub log_per_second: u32,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self { drops: false, syns: false, sample: 1, per_second: 100, log_per_second: 100 }
    }
}

impl EventSettings {
    /// What the data plane reads (a sample of 0: off).
    pub fn config(&self) -> firewall_common::EventConfig {
        firewall_common::EventConfig {
            sample: if self.drops { self.sample } else { 0 },
            per_second: self.per_second,
            log_per_second: self.log_per_second,
            syn_sample: if self.syns { self.sample } else { 0 },
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default: Action::Drop,
            fragments: Action::Drop,
            established: StateAction::Accept,
            related: StateAction::Accept,
            invalid: StateAction::Drop,
            timeouts: Timeouts::DEFAULT,
            syncookie: SyncookieSettings::default(),
            events: EventSettings::default(),
        }
    }
}

impl Settings {
    /// The `ct_state` bits whose packets reach the rules: `NEW` always,
    /// plus every state whose setting is `"rules"`.
    pub fn states_to_rules(&self) -> u8 {
        self.state_settings()
            .iter()
            .filter(|(_, _, a)| *a == StateAction::Rules)
            .fold(ct_state::NEW, |m, (_, bit, _)| m | bit)
    }

    /// (key, ct_state bit, value) of the per-state settings.
    fn state_settings(&self) -> [(&'static str, u8, StateAction); 3] {
        [
            ("established", ct_state::ESTABLISHED, self.established),
            ("related", ct_state::RELATED, self.related),
            ("invalid", ct_state::INVALID, self.invalid),
        ]
    }
}

#[derive(Clone, Debug)]
pub struct Policy {
    pub settings: Settings,
    pub rules: Vec<Rule>,
    /// Problems that do not stop the policy from loading (rules that can
    /// never match: shadowed, or matching only states decided before them).
    pub warnings: Vec<Diagnostic>,
    /// `[[alert]]` thresholds the controller watches.
    pub alerts: Vec<crate::alerts::Alert>,
    /// `[[set]]`: named address sets, in policy order.
    pub sets: Vec<SetSpec>,
}

/// Size of a set that does not say.
pub const DEFAULT_SET_SIZE: u32 = 65_536;

/// What a `[[set]]` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetKind {
    /// IPv4 and IPv6 addresses and prefixes (`src`/`dst = "@name"`).
    Addr,
    /// Ports and port ranges (`sport`/`dport = "@name"`).
    Port,
}

impl SetKind {
    pub fn code(self) -> u8 {
        match self {
            SetKind::Addr => firewall_common::SET_KIND_ADDR,
            SetKind::Port => firewall_common::SET_KIND_PORT,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SetKind::Addr => "addr",
            SetKind::Port => "port",
        }
    }
}

/// One `[[set]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetSpec {
    pub name: String,
    /// 1-based line of its `name`.
    pub line: usize,
    pub kind: SetKind,
    /// An address set's elements.
    pub elements: Vec<Cidr>,
    /// A port set's elements.
    pub ports: Vec<PortRange>,
    /// Default timeout of elements added at run time (0: none).
    pub timeout_secs: u32,
    pub size: u32,
}

impl SetSpec {
    /// What a reload compares: the same hash keeps the set's elements.
    /// FNV-1a over a fixed encoding (the elements sorted), so that it is
    /// the same from build to build: it is kept in the pinned registry.
    pub fn def_hash(&self) -> u64 {
        let mut elements: Vec<(bool, u128, u8)> = self.elements.iter().map(|c| (c.is_v4(), crate::compile::cidr_range(c).0, c.prefix)).collect();
        elements.sort_unstable();
        elements.dedup();
        let mut bytes = Vec::with_capacity(16 + elements.len() * 18);
        bytes.push(self.kind.code());
        bytes.extend_from_slice(&self.timeout_secs.to_le_bytes());
        bytes.extend_from_slice(&self.size.to_le_bytes());
        for (v4, lo, prefix) in elements {
            bytes.push(u8::from(v4));
            bytes.extend_from_slice(&lo.to_le_bytes());
            bytes.push(prefix);
        }
        // Port sets: the ports themselves (ranges may be written in many ways).
        let mut ports: Vec<u16> = self.ports.iter().flat_map(|r| r.lo..=r.hi).collect();
        ports.sort_unstable();
        ports.dedup();
        for p in ports {
            bytes.extend_from_slice(&p.to_le_bytes());
        }
        let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
        // 0 marks a free registry entry's hash; never produce it.
        h | 1
    }
}

/// A set name: letters, digits, `_`, `-`, `.`, at most SET_NAME_LEN - 1 bytes.
pub fn check_set_name(name: &str) -> Result<(), String> {
    let max = firewall_common::SET_NAME_LEN - 1;
    if name.is_empty() {
        Err("set name is empty".into())
    } else if name.len() > max {
        Err(format!("set name is {} bytes long (at most {max})", name.len()))
    } else if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        Err(format!("set name `{name}` contains {c:?}; use only letters, digits, '_', '.' and '-'"))
    } else {
        Ok(())
    }
}

/// `"90"`, `"90s"`, `"10m"`, `"2h"`, `"7d"`: seconds, at least 1 and at
/// most a year.
pub fn parse_duration(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let mult: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("bad duration `{text}`: use a number with s, m, h or d, such as \"10m\"")),
    };
    let n: u64 = num.parse().map_err(|_| format!("bad duration `{text}`: use a number with s, m, h or d, such as \"10m\""))?;
    let secs = n.saturating_mul(mult);
    if secs == 0 || secs > raw::MAX_TIMEOUT as u64 {
        return Err(format!("duration `{text}` is out of range (1 second to 365 days)"));
    }
    Ok(secs as u32)
}

/// Reads and parses the policy at `path`.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| PolicyError::Read { path: file.clone(), source })?;
    match String::from_utf8(bytes) {
        Ok(text) => parse(&text, &file),
        Err(e) => {
            // Located like every other problem: at the first bad byte.
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let before = std::str::from_utf8(valid).unwrap_or_default();
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            let message = "invalid UTF-8 (a policy file is UTF-8 text)".to_owned();
            Err(PolicyError::Invalid(vec![Diagnostic { file, line, col, message }]))
        }
    }
}

/// Parses and validates policy text; `file` only labels diagnostics.
pub fn parse(text: &str, file: &str) -> Result<Policy, PolicyError> {
    Validator::new(text, file).run()
}


#[cfg(test)]
mod tests;
