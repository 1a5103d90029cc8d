//! Policy fuzzing: random and mutated TOML never panics the controller, and
//! every rejection names a line and column inside the input.
//!
//! Runs what `firewall check` runs (`policy::parse`, then `compile::compile`,
//! errors rendered by `CompileError::render`) on a fixed-seed stream of
//! policies: mutations of the shipped configs and of test policies, and
//! policies generated from the schema's own keys. No BPF, no root.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use firewall_user::compile;
use firewall_user::policy::{self, PolicyError};

const FILE: &str = "fuzz.toml";
const SEED: u64 = 0x5eed_f12e_3a11;
const MUTATED: usize = 14_000;
const GENERATED: usize = 8_000;

/// The only rejections without a position: compile limits that the whole
/// policy reaches, not one rule (`CompileError::rule` is `None`). None of
/// them is reachable with the small policies made here, so the test fails
/// if one shows up; any other compile error must point inside the input.
const UNPOSITIONED: [&str; 3] = ["TooManyNodes", "TooManyLeafRefs", "TooDeep"];

// ---------------------------------------------------------------------------
// A small deterministic PRNG (SplitMix64): the same stream on every machine
// and with every version of every crate.
// ---------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the bias is negligible for small n).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }
}

// ---------------------------------------------------------------------------
// Seeds: the shipped configs and policies of the kind the tests use.
// ---------------------------------------------------------------------------

const SEEDS: [&str; 10] = [
    include_str!("../../config/default.toml"),
    include_str!("../../config/web-server.toml"),
    include_str!("../../config/mail-server.toml"),
    include_str!("../../config/file-server.toml"),
    // The schema example of policy.rs.
    r#"
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
"#,
    r#"
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
"#,
    "[settings]\nsyncookie = { auto_on_rate = 2000, key_rotation_secs = 300 }\n\n[[rule]]\nname = \"web\"\nproto = \"tcp\"\ndport = [80, 443]\naction = \"accept\"\nsyncookie = \"auto\"\n",
    "[settings]\nestablished = \"rules\"\nrelated = \"rules\"\ninvalid = \"rules\"\n[[rule]]\nname = \"a\"\nstate = [\"established\", \"related\", \"new\"]\naction = \"accept\"\n[[rule]]\nname = \"b\"\nproto = \"udp\"\nsport = \"1000-2000\"\ndst = [\"2001:db8::/32\", \"::1\"]\naction = \"drop\"\n",
    "[settings]\ntimeouts = { icmp = 5 }\n[[rule]]\nname = \"all\"\naction = \"drop\"\n\n[[rule]]\nname = \"ssh\"\nproto = \"tcp\"\ndport = 22\naction = \"accept\"\n",
    "[[rule]]\nname = \"f0\"\nproto = \"tcp\"\ndport = 80\ntcp_flags = \"syn,!ack\"\naction = \"drop\"\n[[rule]]\nname = \"f1\"\nproto = \"tcp\"\ndport = 80\ntcp_flags = \"syn,ack\"\naction = \"drop\"\n",
];

// ---------------------------------------------------------------------------
// Value and key pools
// ---------------------------------------------------------------------------

const SETTINGS_KEYS: [&str; 7] =
    ["default", "fragments", "established", "related", "invalid", "timeouts", "syncookie"];
const TIMEOUT_KEYS: [&str; 9] = [
    "tcp_syn_sent",
    "tcp_syn_recv",
    "tcp_established",
    "tcp_fin_wait",
    "tcp_time_wait",
    "tcp_close",
    "udp",
    "udp_stream",
    "icmp",
];
const SYNCOOKIE_KEYS: [&str; 4] = ["auto_on_rate", "auto_off_rate", "auto_hold_secs", "key_rotation_secs"];
const RULE_KEYS: [&str; 12] = [
    "name", "proto", "src", "dst", "sport", "dport", "tcp_flags", "icmp_type", "icmp_code", "state",
    "action", "syncookie",
];
const OTHER_KEYS: [&str; 10] =
    ["port", "_pad", "rule", "settings", "Name", "tcp", "key", "\"quoted key\"", "a.b", "ürl"];

/// Values that break something: types, ranges, syntax, encodings.
const NASTY: [&str; 62] = [
    "99999999999999999999999",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "4294967296",
    "65536",
    "-1",
    "-0",
    "0",
    "+22",
    "0x16",
    "0o26",
    "0b10110",
    "1_000",
    "1.5",
    "1e400",
    "nan",
    "-inf",
    "true",
    "1979-05-27T07:32:00Z",
    "07:32:00",
    "\"\"",
    "''",
    "\"\u{1F525}\u{202E}ü\"",
    "\"\\u0000\"",
    "\"a\\nb\"",
    "\"\\u001b[31mred\"",
    "'''multi\nline'''",
    "\"\"\"multi\nline\"\"\"",
    "[]",
    "[[]]",
    "[[], []]",
    "[1, \"a\"]",
    "[\"new\", 7]",
    "{}",
    "{ a = 1 }",
    "{ name = \"x\", action = \"drop\" }",
    "[{ name = \"x\" }]",
    "\"10.0.0.1/33\"",
    "\"10.0.0.1/8\"",
    "\"::1/129\"",
    "\"1.2.3\"",
    "\"10.0.0.0/+8\"",
    "\"10.0.0.0/\"",
    "\"/8\"",
    "\"::ffff:10.0.0.0/104\"",
    "\"0.0.0.0/0\"",
    "\"::/0\"",
    "\"2000-1000\"",
    "\"65536\"",
    "\"1-\"",
    "\"-\"",
    "\"1--2\"",
    "\" 80 \"",
    "\"0-65535\"",
    "\"syn,!syn\"",
    "\"!\"",
    "\",\"",
    "\"SYN, !Ack\"",
    "\"neww\"",
    "\"rules\"",
    "\"accept",
];

fn nasty(r: &mut Rng) -> String {
    let v = r.pick(&NASTY).to_string();
    match r.below(10) {
        0 => format!("{}{}", "9".repeat(1 + r.below(40)), if r.chance(50) { "" } else { ".0" }),
        1 => format!("-{}", r.next() >> r.below(64)),
        2 => format!("[{}]", (0..r.below(6)).map(|_| r.pick(&NASTY).to_string()).collect::<Vec<_>>().join(", ")),
        _ => v,
    }
}

fn v4(r: &mut Rng) -> String {
    let len = [0usize, 8, 16, 24, 32, 32][r.below(6)];
    let addr = (r.next() as u32) & if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let a = std::net::Ipv4Addr::from(addr);
    if len == 32 && r.chance(50) { a.to_string() } else { format!("{a}/{len}") }
}

fn v6(r: &mut Rng) -> String {
    let len = [0usize, 16, 32, 64, 128][r.below(5)];
    let bits = (u128::from(r.next()) << 64) | u128::from(r.next());
    let addr = bits & if len == 0 { 0 } else { u128::MAX << (128 - len) };
    format!("{}/{len}", std::net::Ipv6Addr::from(addr))
}

fn port(r: &mut Rng) -> String {
    match r.below(6) {
        0..3 => r.below(65536).to_string(),
        3 | 4 => {
            let lo = r.below(65536);
            format!("\"{lo}-{}\"", (lo + r.below(3000)).min(65535))
        }
        _ => format!("\"{}\"", r.below(65536)),
    }
}

fn one_or_list(r: &mut Rng, item: &mut dyn FnMut(&mut Rng) -> String) -> String {
    if r.chance(50) {
        item(r)
    } else {
        let items: Vec<String> = (0..r.below(5)).map(|_| item(r)).collect();
        format!("[{}]", items.join(", "))
    }
}

/// A plausible value for `key` (any table), or now and then a nasty one.
fn value_for(r: &mut Rng, key: &str) -> String {
    value_with(r, key, 8, None)
}

/// `value_for` with `nasty_percent` nasty values, and addresses of one
/// family (`Some(true)`: IPv4) when `family` says so.
fn value_with(r: &mut Rng, key: &str, nasty_percent: usize, family: Option<bool>) -> String {
    if r.chance(nasty_percent) {
        return nasty(r);
    }
    let quoted = |s: &str| format!("\"{s}\"");
    match key {
        "default" | "fragments" | "action" => quoted(r.pick(&["accept", "drop"])),
        "established" | "related" | "invalid" => quoted(r.pick(&["accept", "drop", "rules"])),
        "name" => {
            let n = r.below(10_000);
            quoted(&match r.below(20) {
                0 => String::new(),
                1 => "x".repeat(40 + r.below(20)),
                2 => format!("bad name {n}"),
                _ => format!("r{n}"),
            })
        }
        "proto" => quoted(r.pick(&["tcp", "tcp", "udp", "icmp", "icmpv6", "any"])),
        "src" | "dst" => one_or_list(r, &mut |r: &mut Rng| {
            quoted(&if family.unwrap_or_else(|| r.chance(60)) { v4(r) } else { v6(r) })
        }),
        "sport" | "dport" => one_or_list(r, &mut port),
        "tcp_flags" => {
            let flags = ["fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr"];
            let items: Vec<String> = (0..1 + r.below(3))
                .map(|_| format!("{}{}", if r.chance(30) { "!" } else { "" }, r.pick(&flags)))
                .collect();
            quoted(&items.join(","))
        }
        "icmp_type" | "icmp_code" => {
            let max = if r.chance(90) { 256 } else { 100_000 };
            r.below(max).to_string()
        }
        "state" => one_or_list(r, &mut |r: &mut Rng| {
            quoted(r.pick(&["new", "established", "related", "invalid"]))
        }),
        "syncookie" if r.chance(85) => quoted(r.pick(&["off", "off", "always", "auto"])),
        "syncookie" => table_value(r, &SYNCOOKIE_KEYS),
        "timeouts" => table_value(r, &TIMEOUT_KEYS),
        k if TIMEOUT_KEYS.contains(&k) || SYNCOOKIE_KEYS.contains(&k) => {
            [1, 60, 140, 600, 3600, 31_536_000, 100_000_000][r.below(7)].to_string()
        }
        _ => nasty(r),
    }
}

/// `{ k = v, ... }` with keys from `keys`.
fn table_value(r: &mut Rng, keys: &[&str]) -> String {
    let items: Vec<String> = (0..r.below(4))
        .map(|_| {
            let k = r.pick(keys);
            format!("{k} = {}", value_for(r, k))
        })
        .collect();
    format!("{{ {} }}", items.join(", "))
}

// ---------------------------------------------------------------------------
// (a) Mutations
// ---------------------------------------------------------------------------

fn lines_of(text: &str) -> Vec<String> {
    text.split('\n').map(str::to_owned).collect()
}

/// `key = value` split at the first `=`.
fn key_value(line: &str) -> Option<(&str, &str)> {
    let (k, v) = line.split_once('=')?;
    (!k.trim().is_empty() && !k.trim_start().starts_with('#')).then_some((k, v))
}

fn mutate(r: &mut Rng, text: &str) -> String {
    let mut lines = lines_of(text);
    let n = lines.len().max(1);
    match r.below(16) {
        // Byte flip; the result is made valid UTF-8 as `read_to_string`
        // would insist on (lossily, so the damage stays).
        0 => {
            let mut bytes = text.as_bytes().to_vec();
            if !bytes.is_empty() {
                let i = r.below(bytes.len());
                bytes[i] = if r.chance(50) { bytes[i] ^ (1 << r.below(8)) } else { r.next() as u8 };
            }
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        // Delete a run of characters.
        1 => {
            let chars: Vec<char> = text.chars().collect();
            if chars.is_empty() {
                return String::new();
            }
            let at = r.below(chars.len());
            let len = 1 + r.below(20.min(chars.len() - at));
            return chars[..at].iter().chain(&chars[at + len..]).collect();
        }
        // Insert a character: structure, unicode, control, BOM, CR.
        2 => {
            let chars: Vec<char> = text.chars().collect();
            let at = r.below(chars.len() + 1);
            let c = ['[', ']', '{', '}', '"', '\'', '=', ',', '#', '\\', '\r', '\0', '\u{feff}', 'é', '\u{1F525}', '\t', '.', '\u{7f}'][r.below(18)];
            return chars[..at].iter().chain(std::iter::once(&c)).chain(&chars[at..]).collect();
        }
        // Truncate.
        3 => return text.chars().take(r.below(text.chars().count() + 1)).collect(),
        // Delete a line.
        4 => {
            lines.remove(r.below(n).min(lines.len() - 1));
        }
        // Duplicate a line, here or elsewhere.
        5 => {
            let l = lines[r.below(n)].clone();
            lines.insert(r.below(n + 1), l);
        }
        // Swap the values of two `key = value` lines.
        6 => {
            let kv: Vec<usize> = (0..lines.len()).filter(|&i| key_value(&lines[i]).is_some()).collect();
            if kv.len() >= 2 {
                let (a, b) = (kv[r.below(kv.len())], kv[r.below(kv.len())]);
                let (ka, va) = key_value(&lines[a]).map(|(k, v)| (k.to_owned(), v.to_owned())).unwrap();
                let (kb, vb) = key_value(&lines[b]).map(|(k, v)| (k.to_owned(), v.to_owned())).unwrap();
                lines[a] = format!("{ka}={vb}");
                lines[b] = format!("{kb}={va}");
            }
        }
        // Replace a value with a plausible one for another key, or a nasty one.
        7 | 8 => {
            let kv: Vec<usize> = (0..lines.len()).filter(|&i| key_value(&lines[i]).is_some()).collect();
            if let Some(&i) = kv.get(r.below(kv.len().max(1))) {
                let k = key_value(&lines[i]).unwrap().0.to_owned();
                let other = r.pick(&RULE_KEYS);
                let v = if r.chance(50) { nasty(r) } else { value_for(r, other) };
                lines[i] = format!("{k}= {v}");
            }
        }
        // Insert a key, real or not, with a value.
        9 | 10 => {
            let k = match r.below(4) {
                0 => r.pick(&SETTINGS_KEYS),
                1 => r.pick(&TIMEOUT_KEYS),
                2 => r.pick(&OTHER_KEYS),
                _ => r.pick(&RULE_KEYS),
            };
            let v = value_for(r, k);
            lines.insert(r.below(n + 1), format!("{k} = {v}"));
        }
        // Insert a table header.
        11 => {
            let h = r.pick(&[
                "[settings]",
                "[[rule]]",
                "[settings.timeouts]",
                "[settings.syncookie]",
                "[rule]",
                "[[settings]]",
                "[rule.name]",
                "[[rule.src]]",
                "[settings.default]",
                "[extra]",
                "[]",
                "[[]]",
            ]);
            lines.insert(r.below(n + 1), h.to_owned());
        }
        // Reverse a port range, or make one out of a port.
        12 => {
            for l in lines.iter_mut().filter(|l| l.contains("port")) {
                if let Some((k, v)) = key_value(l) {
                    let digits: String = v.chars().filter(char::is_ascii_digit).collect();
                    if let Ok(p) = digits.parse::<u32>() {
                        *l = format!("{k}= \"{}-{}\"", p.saturating_add(1 + r.below(100) as u32), p);
                    }
                }
            }
        }
        // Lists: empty them, nest them.
        13 => {
            let kv: Vec<usize> = (0..lines.len()).filter(|&i| key_value(&lines[i]).is_some()).collect();
            if let Some(&i) = kv.get(r.below(kv.len().max(1))) {
                let (k, v) = key_value(&lines[i]).map(|(k, v)| (k.to_owned(), v.trim().to_owned())).unwrap();
                lines[i] = match r.below(3) {
                    0 => format!("{k}= []"),
                    1 => format!("{k}= [{v}, {v}]"),
                    _ => format!("{k}= [[{v}]]"),
                };
            }
        }
        // Splice in lines of another seed.
        14 => {
            let other = lines_of(SEEDS[r.below(SEEDS.len())]);
            let at = r.below(other.len());
            let take = 1 + r.below(12);
            let chunk: Vec<String> = other[at..(at + take).min(other.len())].to_vec();
            let pos = r.below(n + 1).min(lines.len());
            lines.splice(pos..pos, chunk);
        }
        // Dotted keys and inline tables for what the seed writes as tables.
        _ => {
            let joined = lines.join("\n");
            return match r.below(3) {
                0 => joined.replacen("[settings]\n", "settings.", 1),
                1 => joined.replacen("[settings.timeouts]\n", "[settings]\ntimeouts.", 1),
                _ => joined.replace("[[rule]]\n", "[[rule]]\n# moved\n"),
            };
        }
    }
    lines.join("\n")
}

// ---------------------------------------------------------------------------
// (b) Grammar-based policies from the schema's keys
// ---------------------------------------------------------------------------

fn generated(r: &mut Rng) -> String {
    let mut s = String::new();
    if r.chance(70) {
        s.push_str("[settings]\n");
        for k in &SETTINGS_KEYS[..5] {
            if r.chance(50) {
                s.push_str(&format!("{k} = {}\n", value_with(r, k, 2, None)));
            }
        }
        for (table, keys) in [("timeouts", &TIMEOUT_KEYS[..]), ("syncookie", &SYNCOOKIE_KEYS[..])] {
            match r.below(4) {
                0 => s.push_str(&format!("{table} = {}\n", table_value(r, keys))),
                1 => {
                    s.push_str(&format!("[settings.{table}]\n"));
                    for k in keys {
                        if r.chance(40) {
                            s.push_str(&format!("{k} = {}\n", value_with(r, k, 2, None)));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let rules = r.below(9);
    let inline = r.chance(10);
    if inline {
        s.push_str("rule = [\n");
    }
    for i in 0..rules {
        let proto = ["tcp", "udp", "icmp", "icmpv6", "any"][r.below(5)];
        let mut keys: Vec<(String, String)> = vec![
            ("name".into(), if r.chance(95) { format!("\"r{i}\"") } else { value_for(r, "name") }),
            ("proto".into(), format!("\"{proto}\"")),
        ];
        let fitting: &[&str] = match proto {
            "tcp" => &["src", "dst", "sport", "dport", "tcp_flags", "state", "syncookie"],
            "udp" => &["src", "dst", "sport", "dport", "state"],
            "icmp" | "icmpv6" => &["src", "dst", "icmp_type", "icmp_code", "state"],
            _ => &["src", "dst", "state"],
        };
        // Mostly one address family per rule, as the family checks want.
        let family = match proto {
            "icmp" => Some(true),
            "icmpv6" => Some(false),
            _ if r.chance(80) => Some(r.chance(60)),
            _ => None,
        };
        for k in fitting {
            if r.chance(30) {
                keys.push((k.to_string(), value_with(r, k, 1, family)));
            }
        }
        // Now and then a key that does not fit the protocol, or none at all.
        if r.chance(5) {
            let k = r.pick(&RULE_KEYS);
            keys.push((k.to_owned(), value_for(r, k)));
        }
        if r.chance(98) {
            keys.push(("action".into(), value_with(r, "action", 1, None)));
        }
        if r.chance(3) {
            keys.remove(0);
        }
        // Any key order is valid TOML.
        for j in (1..keys.len()).rev() {
            keys.swap(j, r.below(j + 1));
        }
        if inline {
            let body: Vec<String> = keys.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            s.push_str(&format!("  {{ {} }},\n", body.join(", ")));
        } else {
            s.push_str("\n[[rule]]\n");
            for (k, v) in keys {
                s.push_str(&format!("{k} = {v}\n"));
            }
        }
    }
    if inline {
        s.push_str("]\n");
    }
    if r.chance(20) { mutate(r, &s) } else { s }
}

/// Policies at the compiler's limits: many rules that only tcp_flags tell
/// apart, or lists whose product passes `MAX_BOXES`.
fn at_limits(r: &mut Rng) -> String {
    let mut s = String::new();
    for i in 0..r.below(4) {
        s.push_str(&format!("[[rule]]\nname = \"pad{i}\"\nproto = \"udp\"\ndport = {}\naction = \"drop\"\n", 1 + r.below(9)));
    }
    if r.chance(50) {
        let flags = ["syn", "!syn", "ack", "!ack", "fin", "!fin", "rst", "!rst"];
        for i in 0..12 + r.below(10) {
            let f = format!("{},{},{}", flags[i % 2], flags[2 + (i / 2) % 2], flags[4 + (i / 4) % 2]);
            s.push_str(&format!("[[rule]]\nname = \"f{i}\"\nproto = \"tcp\"\ndport = 80\ntcp_flags = \"{f}\"\naction = \"drop\"\n"));
        }
    } else {
        let n = 41 + r.below(20); // 41^3 > MAX_BOXES
        let list = |f: &dyn Fn(usize) -> String| (0..n).map(f).collect::<Vec<_>>().join(", ");
        let src = list(&|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256));
        let dst = list(&|i| format!("\"172.16.{}.{}\"", i / 256, i % 256));
        let dport = list(&|i| format!("{}", 1000 + i));
        s.push_str(&format!("[[rule]]\nname = \"big\"\nproto = \"tcp\"\nsrc = [{src}]\ndst = [{dst}]\ndport = [{dport}]\naction = \"accept\"\n"));
    }
    s
}

// ---------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    tried: usize,
    accepted: usize,
    rejected: usize,
    compile_rejected: usize,
    unpositioned: usize,
    panics: Vec<String>,
    /// (kind of failed check, details with the input).
    failures: Vec<(&'static str, String)>,
    slowest: (Duration, String),
}

/// Whether `line:col` (1-based, col in characters) lies inside `text`: on
/// one of its lines, or just after its end.
fn inside(text: &str, line: usize, col: usize) -> bool {
    let lines: Vec<&str> = text.split('\n').collect();
    match lines.get(line.wrapping_sub(1)) {
        Some(l) => col >= 1 && col <= l.chars().count() + 1,
        None => line == lines.len() + 1 && col == 1,
    }
}

/// `fuzz.toml:L:C: error: ` at the start of `line`, and L:C inside `text`.
fn positioned(text: &str, line: &str) -> bool {
    let Some(rest) = line.strip_prefix(FILE).and_then(|s| s.strip_prefix(':')) else { return false };
    let mut parts = rest.splitn(3, ':');
    let (Some(l), Some(c), Some(tail)) = (parts.next(), parts.next(), parts.next()) else { return false };
    match (l.parse(), c.parse()) {
        (Ok(l), Ok(c)) => tail.starts_with(" error: ") && inside(text, l, c),
        _ => false,
    }
}

fn check_one(text: &str, t: &mut Tally) {
    t.tried += 1;
    let start = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let parsed = policy::parse(text, FILE);
        let compiled = parsed.as_ref().ok().map(|p| (compile::compile(p), compile::compile(p)));
        (parsed, compiled)
    }));
    let elapsed = start.elapsed();
    if elapsed > t.slowest.0 {
        t.slowest = (elapsed, text.to_owned());
    }
    let mut fail = |kind: &'static str, why: String| {
        t.failures.push((kind, format!("{kind}: {why}\n--- input ---\n{text}\n-------------")))
    };
    let (parsed, compiled) = match outcome {
        Ok(o) => o,
        Err(e) => {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
            t.panics.push(format!("panic: {}\n--- input ---\n{text}\n-------------", msg.unwrap_or_default()));
            return;
        }
    };
    let policy = match parsed {
        Ok(p) => p,
        Err(e) => {
            t.rejected += 1;
            let PolicyError::Invalid(diags) = &e else {
                return fail("not a located error", format!("{e:?}"));
            };
            if diags.is_empty() {
                return fail("rejected with no diagnostic", String::new());
            }
            for d in diags {
                if d.message.chars().any(char::is_control) {
                    return fail("control character in a message", format!("{:?}", d.message));
                }
                if !inside(text, d.line, d.col) {
                    return fail("position outside the input", d.to_string());
                }
            }
            // What `firewall check` prints: every line positioned.
            let shown = e.to_string();
            if let Some(bad) = shown.lines().find(|l| !positioned(text, l)) {
                return fail("unpositioned line in the message", format!("{bad:?}\n(whole message: {shown:?})"));
            }
            return;
        }
    };
    for w in &policy.warnings {
        if !inside(text, w.line, w.col) {
            return fail("warning outside the input", w.to_string());
        }
    }
    let (first, second) = compiled.expect("compiled when parsed");
    match (first, second) {
        (Ok(a), Ok(b)) => {
            if format!("{a:?}") != format!("{b:?}") {
                return fail("compiling twice gave two results", String::new());
            }
            t.accepted += 1;
        }
        (Err(a), Err(b)) => {
            t.rejected += 1;
            t.compile_rejected += 1;
            if a != b {
                return fail("compiling twice gave two errors", format!("{a:?} / {b:?}"));
            }
            let shown = a.render(&policy, FILE);
            if a.rule().is_some() {
                if !positioned(text, &shown) {
                    return fail("compile error not positioned inside the input", format!("{shown:?}"));
                }
            } else if UNPOSITIONED.iter().any(|v| format!("{a:?}").starts_with(v)) {
                t.unpositioned += 1;
            } else {
                return fail("compile error without a rule", format!("{a:?}"));
            }
        }
        (a, b) => fail("compiling twice: once ok, once not", format!("{:?} then {:?}", a.err(), b.err())),
    }
}

#[test]
fn policy_fuzz_random_and_mutated_policies_never_panic_and_errors_are_located() {
    let start = Instant::now();
    let mut r = Rng(SEED);
    let mut t = Tally::default();
    // The seeds themselves first: they must pass (the configs) or at least
    // not fail the checks.
    for s in SEEDS {
        check_one(s, &mut t);
    }
    // Silence the default hook: panics are collected and reported below.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let before = t.accepted;
    for _ in 0..MUTATED {
        let mut text = SEEDS[r.below(SEEDS.len())].to_owned();
        for _ in 0..1 + r.below(4) {
            text = mutate(&mut r, &text);
        }
        check_one(&text, &mut t);
    }
    let accepted_mutated = t.accepted - before;
    for i in 0..GENERATED {
        let text = if i % 40 == 0 { at_limits(&mut r) } else { generated(&mut r) };
        check_one(&text, &mut t);
    }
    std::panic::set_hook(hook);
    println!(
        "policy fuzz: {} policies tried, {} accepted ({} of {MUTATED} mutated, {} of {GENERATED} generated), {} rejected ({} by the compiler, {} of them unpositioned), {} panics, {} failed checks, {:.1?} (slowest {:.1?})",
        t.tried,
        t.accepted,
        accepted_mutated,
        t.accepted - before - accepted_mutated,
        t.rejected,
        t.compile_rejected,
        t.unpositioned,
        t.panics.len(),
        t.failures.len(),
        start.elapsed(),
        t.slowest.0,
    );
    let first: Vec<String> = t.panics.iter().take(3).cloned().collect();
    assert!(t.panics.is_empty(), "{} panics; the first:\n{}", t.panics.len(), first.join("\n\n"));
    // One example of each kind of failed check, with its count.
    let mut kinds: Vec<(&str, usize, &str)> = Vec::new();
    for (kind, detail) in &t.failures {
        match kinds.iter_mut().find(|(k, _, _)| k == kind) {
            Some(entry) => entry.1 += 1,
            None => kinds.push((kind, 1, detail)),
        }
    }
    let report: Vec<String> = kinds.iter().map(|(k, n, d)| format!("{n} x {k}; the first:\n{d}")).collect();
    assert!(t.failures.is_empty(), "{} failed checks:\n{}", t.failures.len(), report.join("\n\n"));
    assert!(t.accepted > 1000 && t.rejected > 1000, "the mix should exercise both paths");
    assert_eq!(t.unpositioned, 0, "a whole-policy compile limit was hit: {:?}", UNPOSITIONED);
}
