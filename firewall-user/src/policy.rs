//! The policy file: TOML schema, parsing and validation.
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
//! [[rule]]
//! name = "ssh-admin"
//! state = "new"           # new | established | related | invalid, or a list
//! proto = "tcp"           # tcp | udp | icmp | icmpv6 | any
//! src = ["10.0.0.0/8", "fd00::/8"]
//! dport = 22              # a port, "lo-hi", or a list of both
//! tcp_flags = "syn,!ack"
//! action = "accept"
//! ```

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use firewall_common::{
    MAX_RULES, RULE_NAME_LEN, STATE_ACCEPT, STATE_DROP, STATE_RULES, Timeouts, ct_state, tcp_flags,
};
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use toml::Spanned;

pub use std::net::IpAddr;

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
    /// Empty: any port.
    pub sport: Vec<PortRange>,
    pub dport: Vec<PortRange>,
    pub tcp_flags: TcpFlags,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    /// Connection states matched (`ct_state` bits); `ct_state::ANY` when
    /// the key is absent.
    pub state: u8,
    pub action: Action,
    pub syncookie: Syncookie,
}

impl Rule {
    /// Whether this rule can match IPv4 (`true`) / IPv6 (`false`) packets,
    /// given its protocol and address lists.
    pub fn matches_family(&self, v4: bool) -> bool {
        let list_ok = |l: &[Cidr]| l.is_empty() || l.iter().any(|c| c.is_v4() == v4);
        self.proto.allows_family(v4) && list_ok(&self.src) && list_ok(&self.dst)
    }

    /// Whether `self` (an earlier rule) matches every packet `later` could
    /// match, so `later` never decides anything. Conservative: `false` may
    /// be returned for some shadowed rules (e.g. CIDRs covered only by a
    /// union of several earlier CIDRs), never `true` for one that is not.
    pub fn shadows(&self, later: &Rule) -> bool {
        self.shadows_in(later, ct_state::ANY)
    }

    /// `shadows`, counting only packets whose state is in `live` (the
    /// states that reach the rules at all; see `Settings::states_to_rules`).
    fn shadows_in(&self, later: &Rule, live: u8) -> bool {
        let later_state = later.state & live;
        if self.state & later_state != later_state {
            return false;
        }
        if self.proto != Proto::Any && self.proto != later.proto {
            return false;
        }
        if !self.tcp_flags.covers(&later.tcp_flags) {
            return false;
        }
        if self.icmp_type.is_some() && self.icmp_type != later.icmp_type {
            return false;
        }
        if self.icmp_code.is_some() && self.icmp_code != later.icmp_code {
            return false;
        }
        if !ports_cover(&self.sport, &later.sport) || !ports_cover(&self.dport, &later.dport) {
            return false;
        }
        // Only the families `later` can actually see matter: an IPv4-only
        // rule is not "escaping" through the IPv6 half of an empty list.
        [true, false].into_iter().filter(|&v4| later.matches_family(v4)).all(|v4| {
            cidrs_cover(&self.src, &later.src, v4) && cidrs_cover(&self.dst, &later.dst, v4)
        })
    }
}

/// Every `later` block of family `v4` lies inside one `earlier` block.
fn cidrs_cover(earlier: &[Cidr], later: &[Cidr], v4: bool) -> bool {
    if earlier.is_empty() {
        return true;
    }
    let any = [Cidr::any(v4)];
    let later = if later.is_empty() { &any[..] } else { later };
    later
        .iter()
        .filter(|c| c.is_v4() == v4)
        .all(|l| earlier.iter().any(|e| e.contains(l)))
}

/// Every port of `later` is in the union of `earlier`.
fn ports_cover(earlier: &[PortRange], later: &[PortRange]) -> bool {
    if earlier.is_empty() {
        return true;
    }
    // Runs for every pair of rules, so no allocation: walk from `lo`
    // upwards, each step jumping past an earlier range that holds the
    // current port. Lists are short, so the quadratic scan is fine.
    let covered = |r: &PortRange| {
        let mut next = u32::from(r.lo);
        while next <= u32::from(r.hi) {
            match earlier.iter().find(|e| u32::from(e.lo) <= next && next <= u32::from(e.hi)) {
                Some(e) => next = u32::from(e.hi) + 1,
                None => return false,
            }
        }
        true
    };
    if later.is_empty() { covered(&PortRange::ANY) } else { later.iter().all(covered) }
}

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
}

/// A located message. `Display` prints `file:line:col: message`; use
/// `render("error")` / `render("warning")` for the full compiler-style line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl Diagnostic {
    /// `file:line:col: {severity}: message`.
    pub fn render(&self, severity: &str) -> String {
        format!("{}:{}:{}: {severity}: {}", self.file, self.line, self.col, self.message)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// One line per problem, each `file:line:col: error: message`.
    #[error("{}", .0.iter().map(|d| d.render("error")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
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
    let line_starts = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let v = Validator { text, file, line_starts, errors: Vec::new() };
    v.run()
}

/// `message` with control and bidi-override characters escaped (`\n`,
/// `\u{202e}`): messages quote the policy's own strings, and a diagnostic
/// must stay one line that a terminal shows as written.
fn one_line(message: &str) -> String {
    let hidden = |c: char| {
        c.is_control() || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !message.contains(hidden) {
        return message.to_owned();
    }
    message.chars().map(|c| if hidden(c) { c.escape_default().to_string() } else { c.to_string() }).collect()
}

// ---------------------------------------------------------------------------
// Raw (serde) layer
// ---------------------------------------------------------------------------

/// The policy's top level, assembled table by table (see `Validator::raw`).
struct RawPolicy {
    settings: Option<RawSettings>,
    rule: Vec<Spanned<RawRule>>,
    alert: Vec<Spanned<crate::alerts::RawAlert>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    default: Option<Action>,
    fragments: Option<Action>,
    established: Option<StateAction>,
    related: Option<StateAction>,
    invalid: Option<StateAction>,
    timeouts: Option<RawTimeouts>,
    syncookie: Option<RawSyncookieSettings>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSyncookieSettings {
    auto_on_rate: Option<Spanned<i64>>,
    auto_off_rate: Option<Spanned<i64>>,
    auto_hold_secs: Option<Spanned<i64>>,
    key_rotation_secs: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    tcp_syn_sent: Option<Spanned<i64>>,
    tcp_syn_recv: Option<Spanned<i64>>,
    tcp_established: Option<Spanned<i64>>,
    tcp_fin_wait: Option<Spanned<i64>>,
    tcp_time_wait: Option<Spanned<i64>>,
    tcp_close: Option<Spanned<i64>>,
    udp: Option<Spanned<i64>>,
    udp_stream: Option<Spanned<i64>>,
    icmp: Option<Spanned<i64>>,
}

/// Longest idle timeout accepted: one year, in seconds.
pub const MAX_TIMEOUT: u32 = 365 * 24 * 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    proto: Option<Spanned<Proto>>,
    src: Option<Spanned<OneOrMany<AddrText>>>,
    dst: Option<Spanned<OneOrMany<AddrText>>>,
    sport: Option<Spanned<OneOrMany<PortItem>>>,
    dport: Option<Spanned<OneOrMany<PortItem>>>,
    tcp_flags: Option<Spanned<String>>,
    icmp_type: Option<Spanned<i64>>,
    icmp_code: Option<Spanned<i64>>,
    state: Option<Spanned<OneOrMany<StateText>>>,
    action: Action,
    syncookie: Option<Spanned<Syncookie>>,
}

/// A list item kind that also says what it expects, so that type errors
/// read "expected a port ..." rather than serde's generic wording.
trait Item: Sized {
    const EXPECTING: &'static str;
    fn from_i64<E: de::Error>(v: i64) -> Result<Self, E>;
    fn from_str<E: de::Error>(v: &str) -> Result<Self, E>;
}

/// Address text; parsed later so that all bad CIDRs are reported with spans.
struct AddrText(String);

impl Item for AddrText {
    const EXPECTING: &'static str = "an address or CIDR string such as \"10.0.0.0/8\"";
    fn from_i64<E: de::Error>(v: i64) -> Result<Self, E> {
        Err(E::invalid_type(de::Unexpected::Signed(v), &Self::EXPECTING))
    }
    fn from_str<E: de::Error>(v: &str) -> Result<Self, E> {
        Ok(AddrText(v.to_owned()))
    }
}

/// A `state` entry; checked later so that every bad name is located.
struct StateText(String);

impl Item for StateText {
    const EXPECTING: &'static str = "a connection state name such as \"new\"";
    fn from_i64<E: de::Error>(v: i64) -> Result<Self, E> {
        Err(E::invalid_type(de::Unexpected::Signed(v), &Self::EXPECTING))
    }
    fn from_str<E: de::Error>(v: &str) -> Result<Self, E> {
        Ok(StateText(v.to_owned()))
    }
}

enum PortItem {
    Num(i64),
    Text(String),
}

impl Item for PortItem {
    const EXPECTING: &'static str = "a port number or a range string such as \"1000-2000\"";
    fn from_i64<E: de::Error>(v: i64) -> Result<Self, E> {
        Ok(PortItem::Num(v))
    }
    fn from_str<E: de::Error>(v: &str) -> Result<Self, E> {
        Ok(PortItem::Text(v.to_owned()))
    }
}

/// Visitor for one scalar item.
struct ItemVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Item> Visitor<'de> for ItemVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::from_i64(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        // Beyond i64 is out of any range we accept; keep it negative-free.
        T::from_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        T::from_str(v)
    }
}

struct ItemDe<T>(T);

impl<'de, T: Item> Deserialize<'de> for ItemDe<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ItemVisitor::<T>(std::marker::PhantomData)).map(ItemDe)
    }
}

/// `x` or `[x, y]`. A single item carries no span of its own; the caller
/// uses the span of the whole value for it.
enum OneOrMany<T> {
    One(T),
    Many(Vec<Spanned<T>>),
}

impl<'de, T: Item> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Item> Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{} or a list of them", T::EXPECTING)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                ItemVisitor::<T>(std::marker::PhantomData).visit_i64(v).map(OneOrMany::One)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                ItemVisitor::<T>(std::marker::PhantomData).visit_u64(v).map(OneOrMany::One)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::from_str(v).map(OneOrMany::One)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<ItemDe<T>>>()? {
                    let span = item.span();
                    items.push(Spanned::new(span, item.into_inner().0));
                }
                Ok(OneOrMany::Many(items))
            }
        }
        d.deserialize_any(V::<T>(std::marker::PhantomData))
    }
}

impl<T> OneOrMany<T> {
    /// Items with their spans; `whole` is the span of the entire value.
    fn items(self, whole: Range<usize>) -> Vec<(T, Range<usize>)> {
        match self {
            OneOrMany::One(t) => vec![(t, whole)],
            OneOrMany::Many(v) => v
                .into_iter()
                .map(|s| {
                    let span = s.span();
                    (s.into_inner(), span)
                })
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

struct Validator<'a> {
    text: &'a str,
    file: &'a str,
    /// Byte offset of the start of every line (the first is 0).
    line_starts: Vec<usize>,
    errors: Vec<Diagnostic>,
}

impl Validator<'_> {
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
        let mut raw = RawPolicy { settings: None, rule: Vec::new(), alert: Vec::new() };
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
                table @ ("rule" | "alert") => {
                    let DeValue::Array(items) = value.into_inner() else {
                        let d = self.diag(span.start, format!("`{table}` must be an array of tables: `[[{table}]]`"));
                        self.errors.push(d);
                        continue;
                    };
                    for item in items {
                        let item_span = item.span();
                        if table == "rule" {
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
                    let d = self.diag(key.span().start, format!("unknown field `{other}`, expected one of `settings`, `rule`, `alert`"));
                    self.errors.push(d);
                }
            }
        }
        raw
    }

    fn run(mut self) -> Result<Policy, PolicyError> {
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
                }
            }
        };

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
        Ok(Policy { settings, rules, warnings, alerts })
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

        // A packet is one family; v4-only on one side and v6-only on the
        // other cannot both hold.
        if let (Some((src, _)), Some((dst, dst_span))) = (&src, &dst) {
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

        let sport = self.ports("sport", raw.sport, proto);
        let dport = self.ports("dport", raw.dport, proto);

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

        let syncookie = raw.syncookie.as_ref().map_or(Syncookie::Off, |s| *s.get_ref());
        if let Some(s) = &raw.syncookie {
            let span = s.span();
            if syncookie != Syncookie::Off {
                // Cookies answer SYNs for a service the rule accepts.
                if proto != Proto::Tcp {
                    self.error(&span, format!("`syncookie` needs proto = \"tcp\" (this rule's proto is \"{}\")", proto.name()));
                } else if raw.action != Action::Accept {
                    self.error(&span, "`syncookie` needs action = \"accept\": cookies answer SYNs the rule lets in");
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
            sport,
            dport,
            tcp_flags: flags,
            icmp_type,
            icmp_code,
            state,
            action: raw.action,
            syncookie,
        })
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
    /// the whole value's.
    fn cidrs(
        &mut self,
        key: &str,
        raw: Option<Spanned<OneOrMany<AddrText>>>,
        proto: Proto,
    ) -> Option<(Vec<Cidr>, Range<usize>)> {
        let raw = raw?;
        let whole = raw.span();
        let items = raw.into_inner().items(whole.clone());
        if items.is_empty() {
            self.error(&whole, format!("`{key}` is an empty list; leave the key out to match any address"));
        }
        let mut out = Vec::with_capacity(items.len());
        for (AddrText(text), span) in items {
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
        Some((out, whole))
    }

    fn ports(
        &mut self,
        key: &str,
        raw: Option<Spanned<OneOrMany<PortItem>>>,
        proto: Proto,
    ) -> Vec<PortRange> {
        let Some(raw) = raw else { return Vec::new() };
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
        for (item, span) in items {
            match parse_port_item(&item) {
                Ok(r) => out.push(r),
                Err(msg) => self.error(&span, msg),
            }
        }
        out
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

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Policy {
        match parse(text, "t.toml") {
            Ok(p) => p,
            Err(e) => panic!("unexpected error:\n{e}"),
        }
    }

    /// All errors, rendered.
    fn errs(text: &str) -> Vec<String> {
        match parse(text, "t.toml") {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(PolicyError::Invalid(d)) => d.iter().map(|d| d.render("error")).collect(),
            Err(e) => panic!("unexpected error kind: {e}"),
        }
    }

    /// Exactly one error, rendered.
    fn err(text: &str) -> String {
        let e = errs(text);
        assert_eq!(e.len(), 1, "expected one error, got {e:#?}");
        e.into_iter().next().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    #[test]
    fn schema_example() {
        // The schema's example, split in two: icmp_type cannot go with tcp.
        let p = ok(r#"
[settings]
default = "drop"
fragments = "accept"

[[rule]]
name = "ssh-admin"
proto = "tcp"
src = ["10.0.0.0/8", "fd00::/8"]
dst = "192.0.2.1"
sport = [1024, "2000-3000"]
dport = 22
tcp_flags = "syn,!ack"
action = "accept"

[[rule]]
name = "ping"
proto = "icmp"
icmp_type = 8
icmp_code = 0
action = "accept"
"#);
        assert_eq!(
            p.settings,
            Settings { default: Action::Drop, fragments: Action::Accept, ..Settings::default() }
        );
        assert!(p.warnings.is_empty());
        assert_eq!(p.rules.len(), 2);
        let r = &p.rules[0];
        assert_eq!(r.name, "ssh-admin");
        assert_eq!(r.line, 7);
        assert_eq!(r.proto, Proto::Tcp);
        assert_eq!(r.src, vec![cidr("10.0.0.0/8"), cidr("fd00::/8")]);
        assert_eq!(r.dst, vec![Cidr { addr: "192.0.2.1".parse().unwrap(), prefix: 32 }]);
        assert_eq!(r.sport, vec![PortRange { lo: 1024, hi: 1024 }, PortRange { lo: 2000, hi: 3000 }]);
        assert_eq!(r.dport, vec![PortRange { lo: 22, hi: 22 }]);
        assert_eq!(
            r.tcp_flags,
            TcpFlags { mask: tcp_flags::SYN | tcp_flags::ACK, value: tcp_flags::SYN }
        );
        assert_eq!(r.action, Action::Accept);
        let r = &p.rules[1];
        assert_eq!((r.proto, r.icmp_type, r.icmp_code), (Proto::Icmp, Some(8), Some(0)));
        assert!(r.src.is_empty() && r.dst.is_empty() && r.sport.is_empty());
        assert_eq!(r.line, 17);
    }

    #[test]
    fn defaults_without_settings() {
        let p = ok("[[rule]]\nname = \"a\"\naction = \"accept\"\n");
        assert_eq!(
            p.settings,
            Settings {
                default: Action::Drop,
                fragments: Action::Drop,
                established: StateAction::Accept,
                related: StateAction::Accept,
                invalid: StateAction::Drop,
                timeouts: Timeouts::DEFAULT,
                syncookie: SyncookieSettings::default(),
            }
        );
        assert_eq!(p.rules[0].proto, Proto::Any);
        assert_eq!(p.rules[0].state, ct_state::ANY);
        assert_eq!(p.rules[0].tcp_flags, TcpFlags::default());
        // An empty [settings] table also takes the defaults.
        let p = ok("[settings]\n");
        assert_eq!(p.settings, Settings::default());
        assert!(p.rules.is_empty());
        let p = ok("[settings]\ndefault = \"accept\"\n");
        assert_eq!(p.settings, Settings { default: Action::Accept, ..Settings::default() });
    }

    #[test]
    fn single_and_list_forms() {
        let p = ok(r#"
[[rule]]
name = "one"
proto = "udp"
src = "2001:db8::1"
dport = "5000-5010"
action = "drop"

[[rule]]
name = "many"
proto = "udp"
src = ["2001:db8::/32", "198.51.100.0/24"]
dport = [53, "60000-60010", "7"]
action = "drop"
"#);
        assert_eq!(p.rules[0].src, vec![cidr("2001:db8::1/128")]);
        assert_eq!(p.rules[0].dport, vec![PortRange { lo: 5000, hi: 5010 }]);
        assert_eq!(p.rules[1].src, vec![cidr("2001:db8::/32"), cidr("198.51.100.0/24")]);
        assert_eq!(
            p.rules[1].dport,
            vec![
                PortRange { lo: 53, hi: 53 },
                PortRange { lo: 60000, hi: 60010 },
                PortRange { lo: 7, hi: 7 }
            ]
        );
    }

    #[test]
    fn cidr_helpers() {
        assert!(cidr("10.0.0.0/8").contains(&cidr("10.1.0.0/16")));
        assert!(!cidr("10.1.0.0/16").contains(&cidr("10.0.0.0/8")));
        assert!(!cidr("10.0.0.0/8").contains(&cidr("11.0.0.0/16")));
        assert!(cidr("0.0.0.0/0").contains(&cidr("255.255.255.255")));
        assert!(cidr("::/0").contains(&cidr("fd00::/8")));
        assert!(!cidr("::/0").contains(&cidr("10.0.0.0/8")));
        assert!(cidr("10.0.0.0/8").is_v4() && !cidr("fd00::/8").is_v4());
        assert_eq!(cidr("fd00::/8").to_string(), "fd00::/8");
        assert_eq!(cidr("192.0.2.1").to_string(), "192.0.2.1/32");
        assert_eq!(Proto::Tcp.number(), Some(6));
        assert_eq!(Proto::Udp.number(), Some(17));
        assert_eq!(Proto::Icmp.number(), Some(1));
        assert_eq!(Proto::Icmpv6.number(), Some(58));
        assert_eq!(Proto::Any.number(), None);
    }

    #[test]
    fn unknown_keys() {
        assert_eq!(
            err("[settings]\ndefault = \"drop\"\nstate = \"x\"\n"),
            "t.toml:3:1: error: unknown field `state`, expected one of `default`, `fragments`, `established`, `related`, `invalid`, `timeouts`, `syncookie`"
        );
        let e = err("[[rule]]\nname = \"a\"\naction = \"drop\"\n  port = 22\n");
        assert!(e.starts_with("t.toml:4:3: error: unknown field `port`"), "{e}");
        let e = err("[[rule]]\nname = \"a\"\naction = \"drop\"\n[extra]\n");
        assert!(e.starts_with("t.toml:4:2: error: unknown field `extra`"), "{e}");
    }

    #[test]
    fn wrong_types() {
        assert_eq!(
            err("[[rule]]\nname = \"a\"\naction = \"allow\"\n"),
            "t.toml:3:10: error: unknown variant `allow`, expected `accept` or `drop`"
        );
        assert_eq!(
            err("[[rule]]\nname = 5\naction = \"drop\"\n"),
            "t.toml:2:8: error: invalid type: integer `5`, expected a string"
        );
        assert_eq!(
            err("[[rule]]\nname = \"a\"\nsrc = 10\naction = \"drop\"\n"),
            "t.toml:3:7: error: invalid type: integer `10`, expected an address or CIDR string such as \"10.0.0.0/8\""
        );
        assert_eq!(
            err("[[rule]]\nname = \"a\"\nproto = \"tcp\"\ndport = [22, 1.5]\naction = \"drop\"\n"),
            "t.toml:4:14: error: invalid type: floating point `1.5`, expected a port number or a range string such as \"1000-2000\""
        );
        assert_eq!(
            err("[[rule]]\nname = \"a\"\nproto = \"sctp\"\naction = \"drop\"\n"),
            "t.toml:3:9: error: unknown variant `sctp`, expected one of `any`, `tcp`, `udp`, `icmp`, `icmpv6`"
        );
        let e = err("[[rule]]\nname = \"a\"\n");
        assert!(e.starts_with("t.toml:1:1: error: missing field `action`"), "{e}");
    }

    #[test]
    fn bad_cidrs() {
        let rule = |src: &str| format!("[[rule]]\nname = \"a\"\nsrc = {src}\naction = \"drop\"\n");
        assert_eq!(
            err(&rule("\"10.0.0.1/8\"")),
            "t.toml:3:7: error: host bits set in 10.0.0.1/8; did you mean 10.0.0.0/8?"
        );
        assert_eq!(
            err(&rule("[\"10.0.0.0/8\", \"fd00::1/8\"]")),
            "t.toml:3:22: error: host bits set in fd00::1/8; did you mean fd00::/8?"
        );
        assert_eq!(
            err(&rule("\"10.0.0.0/33\"")),
            "t.toml:3:7: error: prefix /33 is too long for an IPv4 address (at most /32)"
        );
        assert_eq!(
            err(&rule("\"fd00::/129\"")),
            "t.toml:3:7: error: prefix /129 is too long for an IPv6 address (at most /128)"
        );
        assert_eq!(
            err(&rule("\"10.0.0.256\"")),
            "t.toml:3:7: error: invalid address `10.0.0.256` (expected an IPv4 or IPv6 address, optionally with /prefix)"
        );
        assert_eq!(
            err(&rule("\"10.0.0.0/x\"")),
            "t.toml:3:7: error: invalid prefix length `/x` in `10.0.0.0/x`"
        );
        assert_eq!(
            err(&rule("[]")),
            "t.toml:3:7: error: `src` is an empty list; leave the key out to match any address"
        );
        // Several bad addresses are all reported.
        assert_eq!(errs(&rule("[\"1.2.3.4/40\", \"x\"]")).len(), 2);
    }

    #[test]
    fn bad_ports() {
        let rule = |p: &str| format!("[[rule]]\nname = \"a\"\nproto = \"tcp\"\ndport = {p}\naction = \"drop\"\n");
        assert_eq!(
            err(&rule("\"2000-1000\"")),
            "t.toml:4:9: error: port range 2000-1000 is inverted; did you mean \"1000-2000\"?"
        );
        assert_eq!(err(&rule("70000")), "t.toml:4:9: error: port 70000 out of range (0-65535)");
        assert_eq!(err(&rule("[80, -1]")), "t.toml:4:14: error: port -1 out of range (0-65535)");
        assert_eq!(err(&rule("\"1-65536\"")), "t.toml:4:9: error: port 65536 out of range (0-65535)");
        assert_eq!(
            err(&rule("\"http\"")),
            "t.toml:4:9: error: invalid port `http` (expected a number or a range such as \"1000-2000\")"
        );
        assert_eq!(
            err(&rule("[]")),
            "t.toml:4:9: error: `dport` is an empty list; leave the key out to match any port"
        );
    }

    #[test]
    fn bad_names() {
        let rule = |n: &str| format!("[[rule]]\nname = \"{n}\"\naction = \"drop\"\n");
        assert_eq!(err(&rule("")), "t.toml:2:8: error: rule name is empty");
        let long = "x".repeat(RULE_NAME_LEN);
        assert_eq!(
            err(&rule(&long)),
            format!("t.toml:2:8: error: rule name is {RULE_NAME_LEN} bytes long (at most {})", RULE_NAME_LEN - 1)
        );
        ok(&rule(&"x".repeat(RULE_NAME_LEN - 1)));
        assert_eq!(
            err(&rule("web server")),
            "t.toml:2:8: error: rule name `web server` contains ' '; use only letters, digits, '_', '.', ':' and '-'"
        );
        ok(&rule("a-b_c.d:e9"));
    }

    #[test]
    fn duplicate_names() {
        let text = "[[rule]]\nname = \"a\"\naction = \"drop\"\n\n[[rule]]\nname = \"b\"\naction = \"drop\"\n\n[[rule]]\n  name = \"a\"\naction = \"accept\"\n";
        assert_eq!(err(text), "t.toml:10:10: error: duplicate rule name `a` (first used on line 2)");
    }

    #[test]
    fn too_many_rules() {
        let n = MAX_RULES as usize + 1;
        let mut text = String::new();
        for i in 0..n {
            // Distinct ports so no rule shadows another.
            text.push_str(&format!(
                "[[rule]]\nname = \"r{i}\"\nproto = \"udp\"\ndport = {}\naction = \"drop\"\n",
                i % 65536
            ));
        }
        let e = err(&text);
        assert_eq!(
            e,
            format!("t.toml:{}:8: error: too many rules: {n} (at most {MAX_RULES})", 5 * (n - 1) + 2)
        );
    }

    #[test]
    fn max_rules_accepted() {
        // Exactly MAX_RULES rules load; also keeps the pairwise shadowing
        // check honest about its cost.
        let mut text = String::new();
        for i in 0..MAX_RULES {
            text.push_str(&format!(
                "[[rule]]\nname = \"r{i}\"\nproto = \"tcp\"\ndport = {i}\naction = \"drop\"\n"
            ));
        }
        let p = ok(&text);
        assert_eq!(p.rules.len(), MAX_RULES as usize);
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn ports_need_tcp_or_udp() {
        assert_eq!(
            err("[[rule]]\nname = \"a\"\ndport = 22\naction = \"drop\"\n"),
            "t.toml:3:9: error: `dport` needs proto = \"tcp\" or \"udp\" (this rule's proto is \"any\")"
        );
        assert_eq!(
            err("[[rule]]\nname = \"a\"\nproto = \"icmp\"\nsport = [1, 2]\naction = \"drop\"\n"),
            "t.toml:4:9: error: `sport` needs proto = \"tcp\" or \"udp\" (this rule's proto is \"icmp\")"
        );
    }

    #[test]
    fn tcp_flag_errors() {
        assert_eq!(
            err("[[rule]]\nname = \"a\"\nproto = \"udp\"\ntcp_flags = \"syn\"\naction = \"drop\"\n"),
            "t.toml:4:13: error: `tcp_flags` needs proto = \"tcp\" (this rule's proto is \"udp\")"
        );
        let rule = |f: &str| format!("[[rule]]\nname = \"a\"\nproto = \"tcp\"\ntcp_flags = \"{f}\"\naction = \"drop\"\n");
        assert_eq!(
            err(&rule("syn,!syn")),
            "t.toml:4:13: error: TCP flag `syn` is both required set and required clear"
        );
        assert_eq!(
            err(&rule("syn,foo")),
            "t.toml:4:13: error: unknown TCP flag `foo` (known: fin, syn, rst, psh, ack, urg, ece, cwr)"
        );
        assert_eq!(err(&rule("syn,")), "t.toml:4:13: error: empty flag name in tcp_flags \"syn,\"");
        let p = ok(&rule("fin, !ack ,cwr"));
        assert_eq!(
            p.rules[0].tcp_flags,
            TcpFlags {
                mask: tcp_flags::FIN | tcp_flags::ACK | tcp_flags::CWR,
                value: tcp_flags::FIN | tcp_flags::CWR
            }
        );
    }

    #[test]
    fn icmp_errors() {
        assert_eq!(
            err("[[rule]]\nname = \"a\"\nproto = \"tcp\"\nicmp_type = 8\naction = \"drop\"\n"),
            "t.toml:4:13: error: `icmp_type` needs proto = \"icmp\" or \"icmpv6\" (this rule's proto is \"tcp\")"
        );
        assert_eq!(
            err("[[rule]]\nname = \"a\"\nproto = \"icmp\"\nicmp_code = 4\naction = \"drop\"\n"),
            "t.toml:4:13: error: `icmp_code` needs `icmp_type` as well"
        );
        assert_eq!(
            err("[[rule]]\nname = \"a\"\nproto = \"icmpv6\"\nicmp_type = 256\naction = \"drop\"\n"),
            "t.toml:4:13: error: icmp_type 256 out of range (0-255)"
        );
        assert_eq!(
            err("[[rule]]\nname = \"a\"\nproto = \"icmp\"\nsrc = [\"10.0.0.0/8\", \"fd00::/8\"]\naction = \"drop\"\n"),
            "t.toml:4:22: error: proto \"icmp\" cannot match IPv6 address fd00::/8; use proto = \"icmpv6\" for IPv6"
        );
        assert_eq!(
            err("[[rule]]\nname = \"a\"\nproto = \"icmpv6\"\ndst = \"192.0.2.1\"\naction = \"drop\"\n"),
            "t.toml:4:7: error: proto \"icmpv6\" cannot match IPv4 address 192.0.2.1/32; use proto = \"icmp\" for IPv4"
        );
    }

    #[test]
    fn family_mismatch() {
        assert_eq!(
            err("[[rule]]\nname = \"a\"\nsrc = \"10.0.0.0/8\"\ndst = [\"fd00::/8\"]\naction = \"drop\"\n"),
            "t.toml:4:7: error: rule can never match: src has only IPv4 addresses but dst only IPv6 addresses"
        );
        assert_eq!(
            err("[[rule]]\nname = \"a\"\nsrc = \"::1\"\ndst = \"127.0.0.1\"\naction = \"drop\"\n"),
            "t.toml:4:7: error: rule can never match: src has only IPv6 addresses but dst only IPv4 addresses"
        );
        // Mixed lists can match something.
        ok("[[rule]]\nname = \"a\"\nsrc = [\"10.0.0.0/8\", \"::1\"]\ndst = \"fd00::/8\"\naction = \"drop\"\n");
    }

    #[test]
    fn several_errors_collected() {
        let e = errs(
            "[[rule]]\nname = \"a b\"\nproto = \"udp\"\ntcp_flags = \"syn\"\naction = \"drop\"\n\n[[rule]]\nname = \"c\"\nsrc = \"1.1.1.1/1\"\naction = \"drop\"\n",
        );
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(e[0].starts_with("t.toml:2:8:"));
        assert!(e[1].starts_with("t.toml:4:13:"));
        assert!(e[2].starts_with("t.toml:9:7:"));
    }

    #[test]
    fn shadowing_warning() {
        let p = ok(r#"
[[rule]]
name = "lan"
src = ["10.0.0.0/8", "fd00::/8"]
proto = "tcp"
dport = ["1-1000", "1001-2000"]
action = "accept"

[[rule]]
name = "lan-ssh"
proto = "tcp"
src = "10.1.0.0/16"
dport = 22
tcp_flags = "syn"
action = "drop"
"#);
        assert_eq!(p.rules.len(), 2);
        assert_eq!(p.warnings.len(), 1);
        let w = &p.warnings[0];
        assert_eq!((w.line, w.col), (10, 8));
        assert_eq!(
            w.render("warning"),
            "t.toml:10:8: warning: rule `lan-ssh` can never match: earlier rule `lan` (line 3) matches every packet it would"
        );
    }

    #[test]
    fn shadowing_precision() {
        let two = |a: &str, b: &str| {
            ok(&format!("[[rule]]\nname = \"a\"\naction = \"drop\"\n{a}\n[[rule]]\nname = \"b\"\naction = \"drop\"\n{b}\n"))
                .warnings
                .len()
        };
        // Any-everything shadows everything.
        assert_eq!(two("", "proto = \"udp\"\ndport = 53"), 1);
        // Narrower earlier rule does not shadow a broader later one.
        assert_eq!(two("proto = \"udp\"", ""), 0);
        // Port union coverage.
        assert_eq!(two("proto = \"udp\"\ndport = [\"0-99\", \"100-65535\"]", "proto = \"udp\""), 1);
        assert_eq!(two("proto = \"udp\"\ndport = [\"0-99\", \"101-65535\"]", "proto = \"udp\""), 0);
        // Flags: earlier "syn" covers later "syn,!ack", not the reverse.
        assert_eq!(two("proto = \"tcp\"\ntcp_flags = \"syn\"", "proto = \"tcp\"\ntcp_flags = \"syn,!ack\""), 1);
        assert_eq!(two("proto = \"tcp\"\ntcp_flags = \"syn,!ack\"", "proto = \"tcp\"\ntcp_flags = \"syn\""), 0);
        assert_eq!(two("proto = \"tcp\"\ntcp_flags = \"ack\"", "proto = \"tcp\"\ntcp_flags = \"!ack\""), 0);
        // ICMP type/code.
        assert_eq!(two("proto = \"icmp\"\nicmp_type = 3", "proto = \"icmp\"\nicmp_type = 3\nicmp_code = 4"), 1);
        assert_eq!(two("proto = \"icmp\"\nicmp_type = 3\nicmp_code = 4", "proto = \"icmp\"\nicmp_type = 3"), 0);
        // An IPv4-only earlier src covers an icmp (IPv4-only) later rule with no src.
        assert_eq!(two("src = \"0.0.0.0/0\"", "proto = \"icmp\""), 1);
        assert_eq!(two("src = \"0.0.0.0/0\"", "proto = \"any\""), 0);
        // Later src v4 only: earlier v4 dst list covers it even with IPv6 entries missing.
        assert_eq!(two("dst = \"0.0.0.0/0\"", "src = \"10.0.0.0/8\""), 1);
        assert_eq!(two("src = \"10.0.0.0/8\"", "src = [\"10.0.0.0/9\", \"11.0.0.0/8\"]"), 0);
    }

    #[test]
    fn conntrack_settings() {
        let p = ok(r#"
[settings]
default = "accept"
fragments = "drop"
established = "rules"
related = "drop"
invalid = "accept"

[settings.timeouts]
tcp_syn_sent = 1
tcp_syn_recv = 2
tcp_established = 3
tcp_fin_wait = 4
tcp_time_wait = 5
tcp_close = 6
udp = 7
udp_stream = 8
icmp = 31536000
"#);
        assert_eq!(
            p.settings,
            Settings {
                default: Action::Accept,
                fragments: Action::Drop,
                established: StateAction::Rules,
                related: StateAction::Drop,
                invalid: StateAction::Accept,
                timeouts: Timeouts {
                    tcp_syn_sent: 1,
                    tcp_syn_recv: 2,
                    tcp_established: 3,
                    tcp_fin_wait: 4,
                    tcp_time_wait: 5,
                    tcp_close: 6,
                    udp: 7,
                    udp_stream: 8,
                    icmp: 31_536_000,
                    _pad: 0,
                },
                syncookie: SyncookieSettings::default(),
            }
        );
        assert_eq!(p.settings.states_to_rules(), ct_state::NEW | ct_state::ESTABLISHED);
        assert_eq!(StateAction::Accept.code(), STATE_ACCEPT);
        assert_eq!(StateAction::Drop.code(), STATE_DROP);
        assert_eq!(StateAction::Rules.code(), STATE_RULES);
        assert_eq!(Settings::default().states_to_rules(), ct_state::NEW);

        // A partial timeouts table keeps the other defaults; an empty one
        // is all defaults.
        let p = ok("[settings.timeouts]\nudp = 60\n");
        assert_eq!(p.settings.timeouts, Timeouts { udp: 60, ..Timeouts::DEFAULT });
        assert_eq!(p.settings.established, StateAction::Accept);
        let p = ok("[settings]\nestablished = \"drop\"\n[settings.timeouts]\n");
        assert_eq!(p.settings.timeouts, Timeouts::DEFAULT);
        assert_eq!(p.settings.established, StateAction::Drop);
        assert_eq!(p.settings.invalid, StateAction::Drop);
        // Inline-table form.
        let p = ok("[settings]\ntimeouts = { icmp = 5 }\n");
        assert_eq!(p.settings.timeouts.icmp, 5);
    }

    #[test]
    fn conntrack_settings_errors() {
        assert_eq!(
            err("[settings]\nrelated = \"reject\"\n"),
            "t.toml:2:11: error: unknown variant `reject`, expected one of `accept`, `drop`, `rules`"
        );
        assert_eq!(
            err("[settings]\ndefault = \"rules\"\n"),
            "t.toml:2:11: error: unknown variant `rules`, expected `accept` or `drop`"
        );
        assert_eq!(
            err("[settings.timeouts]\nudp = 0\n"),
            "t.toml:2:7: error: timeout `udp` = 0 out of range (1-31536000 seconds, at most one year)"
        );
        assert_eq!(
            err("[settings.timeouts]\ntcp_syn_sent = 120\n  tcp_established = 31536001\n"),
            "t.toml:3:21: error: timeout `tcp_established` = 31536001 out of range (1-31536000 seconds, at most one year)"
        );
        assert_eq!(
            err("[settings.timeouts]\nicmp = -1\n"),
            "t.toml:2:8: error: timeout `icmp` = -1 out of range (1-31536000 seconds, at most one year)"
        );
        // Every bad timeout is reported, together with rule errors.
        let e = errs("[settings.timeouts]\nudp = 0\nicmp = 99999999999\n[[rule]]\nname = \"a b\"\naction = \"drop\"\n");
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(e[0].starts_with("t.toml:2:7: error: timeout `udp`"), "{e:#?}");
        assert!(e[1].starts_with("t.toml:3:8: error: timeout `icmp` = 99999999999"), "{e:#?}");
        assert!(e[2].starts_with("t.toml:5:8:"), "{e:#?}");
        assert_eq!(
            err("[settings.timeouts]\nudp = \"30s\"\n"),
            "t.toml:2:7: error: invalid type: string \"30s\", expected i64"
        );
        let e = err("[settings.timeouts]\nudp = 30\ntcp = 60\n");
        assert_eq!(
            e,
            "t.toml:3:1: error: unknown field `tcp`, expected one of `tcp_syn_sent`, `tcp_syn_recv`, `tcp_established`, `tcp_fin_wait`, `tcp_time_wait`, `tcp_close`, `udp`, `udp_stream`, `icmp`"
        );
        let e = err("[settings]\ntimeouts = { _pad = 1 }\n");
        assert!(e.starts_with("t.toml:2:14: error: unknown field `_pad`"), "{e}");
    }

    #[test]
    fn state_key() {
        let rule = |st: &str| format!("[[rule]]\nname = \"a\"\nstate = {st}\naction = \"accept\"\n");
        assert_eq!(ok(&rule("\"new\"")).rules[0].state, ct_state::NEW);
        let all_rules = "[settings]\nestablished = \"rules\"\nrelated = \"rules\"\ninvalid = \"rules\"\n";
        let p = ok(&format!("{all_rules}{}", rule("[\"established\", \"related\", \"new\", \"related\"]")));
        assert_eq!(p.rules[0].state, ct_state::NEW | ct_state::ESTABLISHED | ct_state::RELATED);
        assert!(p.warnings.is_empty());
        assert_eq!(
            ok(&rule("[\"new\", \"invalid\", \"established\", \"related\"]")).rules[0].state,
            ct_state::ANY
        );

        assert_eq!(
            err(&rule("\"neww\"")),
            "t.toml:3:9: error: state \"neww\" is not one of new, established, related, invalid"
        );
        assert_eq!(
            err(&rule("[\"new\", \"Established\"]")),
            "t.toml:3:17: error: state \"Established\" is not one of new, established, related, invalid"
        );
        assert_eq!(
            err(&rule("[]")),
            "t.toml:3:9: error: `state` is an empty list; leave the key out to match any state"
        );
        assert_eq!(
            err(&rule("1")),
            "t.toml:3:9: error: invalid type: integer `1`, expected a connection state name such as \"new\""
        );
        assert_eq!(errs(&rule("[\"x\", \"new\", \"y\"]")).len(), 2);
    }

    #[test]
    fn state_decided_by_settings_warning() {
        let p = ok(r#"
[settings]
established = "accept"

[[rule]]
name = "est"
proto = "tcp"
state = "established"
action = "drop"
"#);
        assert_eq!(p.rules.len(), 1);
        assert_eq!(p.warnings.len(), 1);
        let w = &p.warnings[0];
        assert_eq!((w.line, w.col), (8, 9));
        assert_eq!(
            w.render("warning"),
            "t.toml:8:9: warning: rule `est` can never match: established packets are decided before the rules by [settings] `established = \"accept\"`; `established = \"rules\"` would hand them to the rules"
        );

        // Several states, each decided by default settings.
        let p = ok("[[rule]]\nname = \"x\"\nstate = [\"invalid\", \"related\"]\naction = \"accept\"\n");
        assert_eq!(
            p.warnings[0].render("warning"),
            "t.toml:3:9: warning: rule `x` can never match: related and invalid packets are decided before the rules by [settings] `related = \"accept\"` and `invalid = \"drop\"`; `related = \"rules\"` or `invalid = \"rules\"` would hand them to the rules"
        );
        assert_eq!(p.warnings.len(), 1);

        // One state reaching the rules is enough.
        let two = "[settings]\nrelated = \"rules\"\n[[rule]]\nname = \"x\"\nstate = [\"invalid\", \"related\"]\naction = \"accept\"\n";
        assert!(ok(two).warnings.is_empty());
        assert!(ok("[[rule]]\nname = \"x\"\nstate = [\"new\", \"established\"]\naction = \"accept\"\n").warnings.is_empty());
        assert!(ok("[settings]\nestablished = \"rules\"\n[[rule]]\nname = \"x\"\nstate = \"established\"\naction = \"drop\"\n").warnings.is_empty());

        // A dead rule neither shadows later rules nor is reported twice.
        let p = ok("[[rule]]\nname = \"a\"\nstate = \"established\"\naction = \"drop\"\n[[rule]]\nname = \"b\"\nstate = \"established\"\naction = \"drop\"\n[[rule]]\nname = \"c\"\nproto = \"udp\"\naction = \"drop\"\n");
        assert_eq!(p.warnings.len(), 2, "{:#?}", p.warnings);
        assert_eq!((p.warnings[0].line, p.warnings[1].line), (3, 7));
        assert!(p.warnings.iter().all(|w| w.message.contains("decided before the rules")));
    }

    #[test]
    fn shadowing_with_states() {
        let two = |settings: &str, a: &str, b: &str| {
            ok(&format!(
                "[settings]\n{settings}\n[[rule]]\nname = \"a\"\naction = \"drop\"\n{a}\n[[rule]]\nname = \"b\"\naction = \"drop\"\n{b}\n"
            ))
            .warnings
        };
        let est_rules = "established = \"rules\"";
        // state=new does not shadow a later state=established rule.
        assert!(two(est_rules, "state = \"new\"", "state = \"established\"").is_empty());
        // Nor the reverse.
        assert!(two(est_rules, "state = \"established\"", "state = \"new\"").is_empty());
        // A superset of states does.
        let w = two(est_rules, "state = [\"new\", \"established\"]", "state = \"established\"\nproto = \"tcp\"");
        assert_eq!(w.len(), 1);
        assert_eq!(
            w[0].render("warning"),
            "t.toml:8:8: warning: rule `b` can never match: earlier rule `a` (line 4) matches every packet it would"
        );
        // No state key is every state.
        assert_eq!(two(est_rules, "", "state = \"established\"").len(), 1);
        assert!(two(est_rules, "state = \"new\"", "").is_empty());
        // Only states that reach the rules count: with established decided
        // by the settings, a later [new, established] rule sees only new
        // packets, which an earlier state=new rule already matches.
        assert_eq!(two("", "state = \"new\"", "state = [\"new\", \"established\"]").len(), 1);
        assert!(two(est_rules, "state = \"new\"", "state = [\"new\", \"established\"]").is_empty());

        // Rule::shadows itself compares the raw masks.
        let p = ok(&format!(
            "[settings]\n{est_rules}\n[[rule]]\nname = \"a\"\nstate = \"new\"\naction = \"drop\"\n[[rule]]\nname = \"b\"\nstate = \"established\"\naction = \"drop\"\n"
        ));
        assert!(!p.rules[0].shadows(&p.rules[1]));
        let mut any = p.rules[0].clone();
        any.state = ct_state::ANY;
        assert!(any.shadows(&p.rules[1]) && any.shadows(&p.rules[0]));
        assert!(!p.rules[1].shadows(&any));
    }

    #[test]
    fn type_errors_do_not_hide_the_other_rules_errors() {
        // A bad enum value in one rule, bad values in two others: all
        // three, in file order.
        let text = "[[rule]]\nname = \"a\"\nproto = \"tcp\"\ndport = 99999\naction = \"accept\"\n\n[[rule]]\nname = \"b\"\nsrc = \"10.0.0.0/33\"\naction = \"accept\"\n\n[[rule]]\nname = \"c\"\naction = \"maybe\"\n\n[settings]\ndefault = \"sometimes\"\n";
        let lines = errs(text);
        let e = lines.join("\n");
        assert_eq!(lines.len(), 4, "{e}");
        assert!(lines[0].starts_with("t.toml:4:9: error: port 99999"), "{e}");
        assert!(lines[1].starts_with("t.toml:9:7: error: prefix /33"), "{e}");
        assert!(lines[2].starts_with("t.toml:14:10: error: unknown variant `maybe`"), "{e}");
        assert!(lines[3].starts_with("t.toml:17:11: error: unknown variant `sometimes`"), "{e}");
    }

    #[test]
    fn bad_toml_syntax_is_located() {
        assert_eq!(
            err("[[rule]]\nname = \"a\"\naction = = \"drop\"\n"),
            "t.toml:3:10: error: extra `=`, expected nothing"
        );
    }

    #[test]
    fn quoted_text_cannot_break_a_diagnostic_line() {
        // A multi-line string echoed by serde stays on the error's line.
        assert_eq!(
            err("[[rule]]\nname = \"a\"\naction = \"\"\"a\nb\"\"\"\n"),
            "t.toml:3:10: error: unknown variant `a\\nb`, expected `accept` or `drop`"
        );
        let e = err("[[rule]]\nname = \"a\"\nsrc = \"10.0.0.0/8\\u001b[2J\\u202e\"\naction = \"drop\"\n");
        assert_eq!(e, "t.toml:3:7: error: invalid prefix length `/8\\u{1b}[2J\\u{202e}` in `10.0.0.0/8\\u{1b}[2J\\u{202e}`");
    }

    #[test]
    fn load_locates_invalid_utf8() {
        let path = std::env::temp_dir().join(format!("policy-utf8-{}.toml", std::process::id()));
        std::fs::write(&path, b"[[rule]]\nname = \"\xc3\xa9\xff\"\n").unwrap();
        let e = load(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(e, format!("{}:2:10: error: invalid UTF-8 (a policy file is UTF-8 text)", path.display()));
    }

    #[test]
    fn load_reports_missing_file() {
        match load(Path::new("/nonexistent/policy.toml")) {
            Err(PolicyError::Read { path, .. }) => assert_eq!(path, "/nonexistent/policy.toml"),
            other => panic!("unexpected: {other:?}"),
        }
    }

    #[test]
    fn shipped_configs_are_clean() {
        let files = [
            ("default.toml", include_str!("../../config/default.toml")),
            ("web-server.toml", include_str!("../../config/web-server.toml")),
            ("mail-server.toml", include_str!("../../config/mail-server.toml")),
            ("file-server.toml", include_str!("../../config/file-server.toml")),
        ];
        for (name, text) in files {
            let p = match parse(text, name) {
                Ok(p) => p,
                Err(e) => panic!("{name}:\n{e}"),
            };
            assert!(p.warnings.is_empty(), "{name}: {:#?}", p.warnings);
            assert_eq!(p.settings.default, Action::Drop, "{name}");
            assert!(p.rules.iter().any(|r| r.dport == [PortRange { lo: 22, hi: 22 }]), "{name}: no ssh");
            assert_eq!(
                (p.settings.established, p.settings.related, p.settings.invalid),
                (StateAction::Accept, StateAction::Accept, StateAction::Drop),
                "{name}"
            );
            assert_eq!(p.settings.timeouts, Timeouts::DEFAULT, "{name}");
            // Replies are established now; only DHCP answers need rules.
            assert!(!p.rules.iter().any(|r| r.name.starts_with("reply-")), "{name}: stateless reply rules");
            for (sport, dport) in [(67, 68), (547, 546)] {
                assert!(
                    p.rules.iter().any(|r| r.proto == Proto::Udp
                        && r.sport == [PortRange { lo: sport, hi: sport }]
                        && r.dport == [PortRange { lo: dport, hi: dport }]),
                    "{name}: no DHCP client rule {sport}->{dport}"
                );
            }
            // Neighbour discovery (133-137) and echo requests are new packets.
            let icmp = [(Proto::Icmp, 8), (Proto::Icmpv6, 128)];
            let nd = (133..=137).map(|t| (Proto::Icmpv6, t));
            for (proto, t) in icmp.into_iter().chain(nd) {
                assert!(
                    p.rules.iter().any(|r| r.proto == proto && r.icmp_type == Some(t)),
                    "{name}: no {} type {t} rule",
                    proto.name()
                );
            }
        }
    }

    #[test]
    fn syncookie_rules_and_settings() {
        let ok = parse(
            "[settings]\nsyncookie = { auto_on_rate = 2000, key_rotation_secs = 300 }\n\n[[rule]]\nname = \"web\"\nproto = \"tcp\"\ndport = [80, 443]\naction = \"accept\"\nsyncookie = \"auto\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(ok.rules[0].syncookie, Syncookie::Auto);
        let c = &ok.settings.syncookie;
        assert_eq!((c.auto_on_rate, c.auto_off_rate, c.auto_hold_secs, c.key_rotation_secs), (2000, 1000, 10, 300));

        let rule = |extra: &str| format!("[[rule]]\nname = \"r\"\n{extra}\nsyncookie = \"always\"\n");
        let e = err(&rule("proto = \"udp\"\ndport = 53\naction = \"accept\""));
        assert!(e.contains("`syncookie` needs proto = \"tcp\""), "{e}");
        let e = err(&rule("proto = \"tcp\"\ndport = 80\naction = \"drop\""));
        assert!(e.contains("needs action = \"accept\""), "{e}");
        let e = err(&rule("proto = \"tcp\"\naction = \"accept\""));
        assert!(e.contains("needs `dport`"), "{e}");
        let e = err(&rule("proto = \"tcp\"\ndport = 80\nstate = \"established\"\naction = \"accept\""));
        assert!(e.contains("match new connections"), "{e}");
        let e = err("[[rule]]\nname = \"r\"\nproto = \"tcp\"\ndport = 80\naction = \"accept\"\nsyncookie = \"sometimes\"\n");
        assert!(e.starts_with("t.toml:6:13: error: unknown variant `sometimes`"), "{e}");
        let e = err("[settings]\nsyncookie = { key_rotation_secs = 60 }\n");
        assert!(e.contains("`key_rotation_secs` = 60 out of range (140-"), "{e}");
        let e = err("[settings]\nsyncookie = { auto_on_rate = 10, auto_off_rate = 20 }\n");
        assert!(e.contains("must not exceed `auto_on_rate`"), "{e}");
        let e = err("[settings]\nsyncookie = { key = 1 }\n");
        assert!(e.contains("unknown field `key`"), "{e}");
    }
}
