//! The policy parser and validator on policy text.

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
            events: EventSettings::default(),
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
        "t.toml:3:1: error: unknown field `state`, expected one of `default`, `fragments`, `established`, `related`, `invalid`, `timeouts`, `syncookie`, `events`"
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
            events: EventSettings::default(),
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
        ("default.toml", include_str!("../../../config/default.toml")),
        ("web-server.toml", include_str!("../../../config/web-server.toml")),
        ("mail-server.toml", include_str!("../../../config/mail-server.toml")),
        ("file-server.toml", include_str!("../../../config/file-server.toml")),
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

#[test]
fn port_sets() {
    let set = "[[set]]\nname = \"web\"\ntype = \"port\"\nelements = [80, \"8000-8001\"]\n\n[[set]]\nname = \"hosts\"\ntype = \"addr\"\n\n";
    let rule = |body: &str| format!("{set}[[rule]]\nname = \"a\"\nproto = \"tcp\"\n{body}\naction = \"accept\"\n");
    let p = ok(&rule("dport = [\"@web\", 22]"));
    assert_eq!(p.sets[0].kind, SetKind::Port);
    assert_eq!(p.sets[0].ports, vec![PortRange { lo: 80, hi: 80 }, PortRange { lo: 8000, hi: 8001 }]);
    assert_eq!(p.sets[0].size, 65_536);
    assert_eq!((p.rules[0].dport_sets.clone(), p.rules[0].dport.clone()), (vec![0], vec![PortRange { lo: 22, hi: 22 }]));
    assert_eq!(err(&rule("dport = \"@hosts\"")), "t.toml:13:9: error: set `hosts` holds addresses; `dport` needs a port set (type = \"port\")");
    assert_eq!(err(&rule("src = \"@web\"")), "t.toml:13:7: error: set `web` holds ports; `src` needs an address set");
    assert_eq!(
        err(&rule("dport = \"@web\"\nsyncookie = \"always\"")),
        "t.toml:14:13: error: `syncookie` needs its ports in `dport` itself, not in a port set: a cookie service's ports are fixed when the policy loads"
    );
    assert_eq!(err("[[set]]\nname = \"p\"\ntype = \"port\"\ntimeout = \"1m\"\n"), "t.toml:4:11: error: a port set has no timeouts (its ports are bits, kept until deleted)");
    assert_eq!(err("[[set]]\nname = \"p\"\ntype = \"port\"\nelements = [70000]\n"), "t.toml:4:13: error: port 70000 out of range (0-65535)");
    assert_eq!(err("[[set]]\nname = \"p\"\ntype = \"port\"\nelements = [\"1-10\"]\nsize = 4\n"), "t.toml:2:8: error: set `p` lists 10 elements but its size is 4");
    assert_eq!(err("[[set]]\nname = \"p\"\ntype = \"addr\"\nelements = [22]\n"), "t.toml:4:13: error: 22 is not an address or prefix: write addresses as strings, such as \"192.0.2.1\"");
    // A later rule on a port set is never reported as shadowed by one on plain ports.
    let p = ok(&format!("{set}[[rule]]\nname = \"a\"\nproto = \"tcp\"\ndport = 80\naction = \"drop\"\n\n[[rule]]\nname = \"b\"\nproto = \"tcp\"\ndport = \"@web\"\naction = \"accept\"\n"));
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn sets_and_references() {
    let base = "[[set]]\nname = \"bad\"\ntype = \"addr\"\nelements = [\"192.0.2.0/24\", \"2001:db8::1\"]\ntimeout = \"10m\"\nsize = 10\n";
    let p = ok(&format!("{base}[[rule]]\nname = \"a\"\nsrc = [\"@bad\", \"10.0.0.0/8\"]\ndst = \"@bad\"\naction = \"drop\"\n"));
    assert_eq!(p.sets.len(), 1);
    assert_eq!(p.sets[0].timeout_secs, 600);
    assert_eq!(p.sets[0].elements, vec![cidr("192.0.2.0/24"), cidr("2001:db8::1")]);
    assert_eq!(p.rules[0].src_sets, vec![0]);
    assert_eq!(p.rules[0].src, vec![cidr("10.0.0.0/8")]);
    assert_eq!(p.rules[0].dst_sets, vec![0]);
    assert_eq!(
        err("[[rule]]\nname = \"a\"\nsrc = [\"10.0.0.0/8\", \"@nope\"]\naction = \"drop\"\n"),
        "t.toml:3:22: error: unknown set `nope` (declare it with [[set]] name = \"nope\")"
    );
    assert_eq!(err("[[set]]\nname = \"s\"\ntype = \"mac\"\n"), "t.toml:3:8: error: unknown set type `mac`; use \"addr\" (IPv4 and IPv6 addresses and prefixes) or \"port\" (ports and port ranges)");
    assert_eq!(err("[[set]]\nname = \"s\"\ntype = \"addr\"\nelements = [\"10.0.0.1/8\"]\n"), "t.toml:4:13: error: host bits set in 10.0.0.1/8; did you mean 10.0.0.0/8?");
    assert_eq!(err("[[set]]\nname = \"s\"\ntype = \"addr\"\ntimeout = \"10y\"\n"), "t.toml:4:11: error: bad duration `10y`: use a number with s, m, h or d, such as \"10m\"");
    assert_eq!(err("[[set]]\nname = \"s\"\ntype = \"addr\"\nsize = 0\n"), "t.toml:4:8: error: set size 0 is out of range 1..=2097152");
    assert_eq!(err("[[set]]\nname = \"s\"\ntype = \"addr\"\n[[set]]\nname = \"s\"\ntype = \"addr\"\n"), "t.toml:5:8: error: duplicate set name `s`");
    assert_eq!(err("[[set]]\nname = \"s\"\ntype = \"addr\"\ncolour = 1\n"), "t.toml:4:1: error: unknown field `colour`, expected one of `name`, `type`, `elements`, `timeout`, `size`");
    assert_eq!(parse_duration("90"), Ok(90));
    assert_eq!(parse_duration("2h"), Ok(7200));
    assert!(parse_duration("0s").is_err());
}

#[test]
fn a_rule_with_a_set_shadows_nothing_and_may_be_shadowed() {
    let set = "[[set]]\nname = \"s\"\ntype = \"addr\"\n";
    // The set may be empty: the later rule still decides.
    let p = ok(&format!("{set}[[rule]]\nname = \"a\"\nsrc = \"@s\"\naction = \"drop\"\n[[rule]]\nname = \"b\"\nsrc = \"10.0.0.0/8\"\naction = \"accept\"\n"));
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    // A rule for every address covers any set.
    let p = ok(&format!("{set}[[rule]]\nname = \"a\"\naction = \"drop\"\n[[rule]]\nname = \"b\"\nsrc = \"@s\"\naction = \"accept\"\n"));
    assert_eq!(p.warnings.len(), 1);
    assert!(p.warnings[0].message.contains("rule `b` can never match: earlier rule `a`"), "{:?}", p.warnings);
}

#[test]
fn limits() {
    let rule = |limit: &str| format!("[[rule]]\nname = \"a\"\nproto = \"tcp\"\ndport = 22\naction = \"accept\"\nlimit = {limit}\n");
    let p = ok(&rule("{ rate = \"50/s\", burst = 100, per = \"src/24\" }"));
    assert_eq!(p.rules[0].limit, Some(Limit { interval_ns: 20_000_000, burst: 100, v4_prefix: 24, v6_prefix: 64, max_conns: 0, ban: None }));
    let p = ok(&rule("{ rate = \"10/m\" }"));
    assert_eq!(p.rules[0].limit, Some(Limit { interval_ns: 6_000_000_000, burst: DEFAULT_BURST, v4_prefix: 32, v6_prefix: 64, max_conns: 0, ban: None }));
    let p = ok(&rule("{ rate = \"3/s\", per = \"src\", per6 = \"src/56\" }"));
    assert_eq!(p.rules[0].limit, Some(Limit { interval_ns: 333_333_334, burst: DEFAULT_BURST, v4_prefix: 32, v6_prefix: 56, max_conns: 0, ban: None }));
    assert_eq!(
        err("[[rule]]\nname = \"a\"\nstate = \"established\"\naction = \"accept\"\nlimit = { rate = \"1/s\" }\n"),
        "t.toml:5:9: error: `limit` needs the rule to match new connections (`state` without \"new\")"
    );
    assert_eq!(err(&rule("{ rate = \"50\" }")), "t.toml:6:18: error: bad rate `50`: use a count per s, m or h, such as \"50/s\"");
    assert_eq!(err(&rule("{ rate = \"5/s\", per = \"dst\" }")), "t.toml:6:31: error: bad prefix `dst`: use \"src\" or \"src/N\" with N from 0 to 32");
    assert_eq!(err(&rule("{ rate = \"5/s\", burst = 0 }")), "t.toml:6:33: error: burst 0 is out of range 1..=1000000");
    assert_eq!(
        err("[[rule]]\nname = \"a\"\naction = \"drop\"\nlimit = { rate = \"1/s\" }\n"),
        "t.toml:4:9: error: `limit` needs action = \"accept\": it caps the new connections a rule lets in"
    );
}

#[test]
fn connection_caps_and_bans() {
    let set = "[[set]]\nname = \"bad\"\ntype = \"addr\"\ntimeout = \"10m\"\n\n[[set]]\nname = \"forever\"\ntype = \"addr\"\n\n";
    let rule = |proto: &str, limit: &str| format!("{set}[[rule]]\nname = \"a\"\nproto = \"{proto}\"\ndport = 22\naction = \"accept\"\nlimit = {limit}\n");
    let p = ok(&rule("tcp", "{ max_conns = 20, per = \"src/24\", ban = \"@bad\" }"));
    assert_eq!(
        p.rules[0].limit,
        Some(Limit { interval_ns: 0, burst: DEFAULT_BURST, v4_prefix: 24, v6_prefix: 64, max_conns: 20, ban: Some(Ban { set: 0, timeout_secs: 600 }) })
    );
    let p = ok(&rule("tcp", "{ rate = \"10/m\", ban = \"@bad\" }"));
    assert_eq!(p.rules[0].limit.unwrap().ban, Some(Ban { set: 0, timeout_secs: 600 }));
    assert_eq!(err(&rule("tcp", "{ per = \"src/24\" }")), "t.toml:15:9: error: `limit` needs `rate`, `max_conns` or both");
    assert_eq!(err(&rule("tcp", "{ max_conns = 0 }")), "t.toml:15:23: error: max_conns 0 is out of range 1..=1000000");
    assert_eq!(err(&rule("tcp", "{ max_conns = 5, burst = 3 }")), "t.toml:15:34: error: `burst` needs a `rate`");
    assert_eq!(
        err(&rule("udp", "{ max_conns = 5 }")),
        "t.toml:15:23: error: `max_conns` counts proven TCP connections: the rule needs proto = \"tcp\" (this rule's proto is \"udp\")"
    );
    assert_eq!(
        err(&rule("udp", "{ rate = \"1/s\", ban = \"@bad\" }")),
        "t.toml:15:31: error: `ban` counts proven TCP connections: the rule needs proto = \"tcp\" (this rule's proto is \"udp\")"
    );
    assert_eq!(err(&rule("tcp", "{ max_conns = 5, ban = \"@nope\" }")), "t.toml:15:32: error: unknown set `nope` (declare it with [[set]] name = \"nope\")");
    assert_eq!(err(&rule("tcp", "{ max_conns = 5, ban = \"bad\" }")), "t.toml:15:32: error: `ban` names a set: \"@name\"");
    assert_eq!(err(&rule("tcp", "{ max_conns = 5, ban = \"@forever\" }")), "t.toml:15:32: error: a ban lasts the set's timeout: give set `forever` a `timeout`");
}
