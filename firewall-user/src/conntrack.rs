//! The connection table as the controller sees it: listing (for
//! `firewall conntrack`) and the periodic sweep of idle flows.

use std::{
    borrow::{Borrow, BorrowMut},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, MapData};
use firewall_common::{Flow, FlowKey, ORIGIN_LOCAL, SIDE_A, Timeouts, U128, state_name};
use serde::Serialize;

/// One flow, readable.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Entry {
    pub proto: &'static str,
    /// The endpoint that opened the flow, then the other.
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub state: &'static str,
    /// `local` when the host opened it (seen first on egress), else `remote`.
    pub origin: &'static str,
    pub age_secs: u64,
    pub idle_secs: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// `CLOCK_MONOTONIC` in ns, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn addr(a: U128) -> IpAddr {
    let v = a.to_u128();
    if v >> 32 == 0xffff {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        1 => "icmp",
        58 => "icmpv6",
        _ => "other",
    }
}

pub fn entry(key: &FlowKey, flow: &Flow, now: u64) -> Entry {
    let a = (addr(key.addr_a), key.port_a);
    let b = (addr(key.addr_b), key.port_b);
    let ((src, sport), (dst, dport)) = if flow.initiator == SIDE_A { (a, b) } else { (b, a) };
    Entry {
        proto: proto_name(key.proto),
        src,
        sport,
        dst,
        dport,
        state: state_name(flow.state),
        origin: if flow.origin == ORIGIN_LOCAL { "local" } else { "remote" },
        age_secs: now.saturating_sub(flow.created_ns) / 1_000_000_000,
        idle_secs: now.saturating_sub(flow.last_seen_ns) / 1_000_000_000,
        packets: flow.packets,
        bytes: flow.bytes,
    }
}

/// Every flow of the given tables (the main one and the remote one).
pub fn list<M: Borrow<MapData>>(tables: &[&HashMap<M, FlowKey, Flow>]) -> Result<Vec<Entry>> {
    let now = monotonic_ns();
    let mut out = Vec::new();
    for flows in tables {
        for item in flows.iter() {
            let (key, flow) = item?;
            out.push(entry(&key, &flow, now));
        }
    }
    out.sort_by_key(|e| (e.proto, e.src, e.sport, e.dst, e.dport));
    Ok(out)
}

/// What a sweep of one table found.
#[derive(Default)]
pub struct Sweep {
    /// Entries the walk saw (at most the table's size).
    pub seen: usize,
    /// Flows it deleted.
    pub removed: Vec<(FlowKey, Flow)>,
    /// Flows it kept that are counted against a `max_conns`.
    pub counted: Vec<(FlowKey, Flow)>,
    /// Counted flows it stopped counting: of the host's own stack
    /// (`FLOW_LOCAL`), idle `DEAD_IDLE_SECS`, and no host socket for them
    /// now (kept in the table without `FLOW_COUNTED`, left out of
    /// `counted`, so the count is set without them).
    pub uncounted: usize,
    /// Whether the walk ended by itself (not at its bound: under churn
    /// it may have missed entries).
    pub complete: bool,
}

/// The main table's hint counts (`maps::FLOW_HINTS`), mapped: every flow
/// the controller deletes from the main table is taken off its slot, as
/// the data plane does for its own deletes (atomically: the programs add
/// and subtract at the same time). A slot left high only costs a lookup;
/// one left low would hide a flow, so nothing else writes them.
pub struct FlowHints {
    slots: crate::shared::SharedU64s,
}

impl FlowHints {
    /// Maps the hint array `map` (created `BPF_F_MMAPABLE`).
    pub fn map(map: &MapData) -> Result<Self> {
        Ok(Self { slots: crate::shared::SharedU64s::map(map, firewall_common::FLOW_HINT_SLOTS as usize).context("the flow hint array")? })
    }

    /// The count of slot `slot` (`firewall_common::flow_hint`).
    pub fn count(&self, slot: u32) -> u64 {
        self.slots.load(slot)
    }

    /// Takes a deleted main-table flow off its slot (never below zero).
    pub fn forget(&self, key: &FlowKey) {
        self.slots.take_one(firewall_common::flow_hint(key));
    }
}

/// Deletes flows idle past their timeout (the XDP program also ignores
/// them on lookup; this frees their slots). `max`: the table's size;
/// `hints`: the main table's (`None` for the remote table).
pub fn sweep<M: BorrowMut<MapData>>(flows: &mut HashMap<M, FlowKey, Flow>, timeouts: &Timeouts, max: usize, hints: Option<&FlowHints>) -> Result<Sweep> {
    let now = monotonic_ns();
    let mut out = Sweep::default();
    // This sweep is a controller's: closed-from-outside flows of the host's
    // own stack keep the established timeout (the socket check below frees
    // them); others go after `COUNTED_CLOSE_SECS`.
    let expired_now = |key: &FlowKey, flow: &Flow, now: u64| {
        let limit = firewall_common::flow_timeout(timeouts, flow, key.proto, || true) as u64 * 1_000_000_000;
        now.saturating_sub(flow.last_seen_ns) > limit
    };
    let mut expired = Vec::new();
    // Counted connections of the host's own stack closed from outside only:
    // gone once the host has no socket for them (it took the RST or FIN),
    // checked after the walk.
    let mut closed = Vec::new();
    // Counted connections of the host's own stack idle a while: counted
    // only while the host still has their socket, checked after the walk.
    let mut idle = Vec::new();
    let mut walked = 0;
    // Bounded: when the walk's current key is evicted under churn, the
    // kernel's next-key restarts from the first entry.
    let mut failed = false;
    for item in flows.iter().take(2 * max) {
        walked += 1;
        let Ok((key, flow)) = item else {
            // The walk ends here: it may have missed flows.
            failed = true;
            continue;
        };
        out.seen += 1;
        if firewall_common::awaits_socket_check(&flow) {
            closed.push((key, flow));
        } else if expired_now(&key, &flow, now) {
            expired.push(key);
        } else if flow.flags & firewall_common::FLOW_COUNTED != 0 {
            if flow.flags & firewall_common::FLOW_LOCAL != 0 && now.saturating_sub(flow.last_seen_ns) >= DEAD_IDLE_SECS * 1_000_000_000 {
                idle.push((key, flow));
            } else {
                out.counted.push((key, flow));
            }
        }
    }
    out.complete = walked < 2 * max && !failed;
    out.seen = out.seen.min(max);
    // Read after the walk, so that a connection closed from outside during
    // it is checked against sockets as they are now. Unreadable: nothing
    // is taken for gone.
    // Flows closed from outside whose host socket is gone, with the time
    // they were made (a flow made again on the tuple since is another).
    let mut dead = Vec::new();
    // Idle counted flows the host has no socket for, with their time made.
    let mut lost = Vec::new();
    if !closed.is_empty() || !idle.is_empty() {
        // Gone only when absent from two reads: /proc/net/tcp is read in
        // pieces, and sockets coming and going between them can hide one.
        match (host_sockets(), host_sockets()) {
            (Some(first), Some(second)) => {
                let has = |key: &FlowKey, flow: &Flow| {
                    let (local, remote) = flow.ends(key);
                    let socket = (addr(local.0), local.1, addr(remote.0), remote.1);
                    first.contains(&socket) || second.contains(&socket)
                };
                for (key, flow) in closed {
                    if has(&key, &flow) {
                        out.counted.push((key, flow));
                    } else {
                        dead.push((key, flow.created_ns));
                    }
                }
                for (key, flow) in idle {
                    if has(&key, &flow) {
                        out.counted.push((key, flow));
                    } else {
                        lost.push((key, flow.created_ns));
                    }
                }
            }
            _ => {
                out.counted.extend(closed);
                out.counted.extend(idle);
            }
        }
    }
    // Each queued flow is looked at again: a packet may have refreshed it,
    // or a new flow taken its tuple. A delete succeeds once, so a flow the
    // XDP program expires at the same time is released by one side only.
    for key in &expired {
        let Ok(flow) = flows.get(key, 0) else { continue };
        if !firewall_common::awaits_socket_check(&flow) && expired_now(key, &flow, monotonic_ns()) && flows.remove(key).is_ok() {
            if let Some(h) = hints {
                h.forget(key);
            }
            out.removed.push((*key, flow));
        }
    }
    // A lost connection stops counting: its flag goes (written back only
    // if still the same idle flow; the data plane releases no count for a
    // flow without it), and the walk's count leaves it out. A packet
    // racing this write may be undone on a flow the host has no socket for.
    for (key, created) in &lost {
        let Ok(mut flow) = flows.get(key, 0) else { continue };
        let idle_now = monotonic_ns().saturating_sub(flow.last_seen_ns) >= DEAD_IDLE_SECS * 1_000_000_000;
        if flow.created_ns != *created || flow.flags & firewall_common::FLOW_COUNTED == 0 {
            continue;
        }
        if !idle_now {
            out.counted.push((*key, flow));
            continue;
        }
        flow.flags &= !firewall_common::FLOW_COUNTED;
        if flows.insert(key, &flow, BPF_EXIST).is_ok() {
            out.uncounted += 1;
        }
    }
    for (key, created) in &dead {
        let Ok(flow) = flows.get(key, 0) else { continue };
        if flow.created_ns == *created && firewall_common::awaits_socket_check(&flow) && flows.remove(key).is_ok() {
            if let Some(h) = hints {
                h.forget(key);
            }
            out.removed.push((*key, flow));
        }
    }
    Ok(out)
}

/// How long a counted connection of the host's own stack (`FLOW_LOCAL`)
/// idles before the sweep asks whether the host still has it: one that
/// died without a FIN or RST (the client vanished, the host's socket
/// timed out) would otherwise hold its source's `max_conns` slot until
/// `tcp_established`.
pub const DEAD_IDLE_SECS: u64 = 60;

/// `BPF_EXIST` (include/uapi/linux/bpf.h): update only an existing entry.
const BPF_EXIST: u64 = 2;

/// The TCP sockets of this network namespace that hold a connection
/// (not listening, not in TIME-WAIT or closed): local address and port,
/// remote address and port, from /proc/net/tcp and tcp6. `None` when
/// /proc/net/tcp cannot be read (tcp6 is absent without IPv6).
pub fn host_sockets() -> Option<std::collections::HashSet<(IpAddr, u16, IpAddr, u16)>> {
    let mut out = std::collections::HashSet::new();
    for (path, v6) in [("/proc/self/net/tcp", false), ("/proc/self/net/tcp6", true)] {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if v6 && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(_) => return None,
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // st: 06 TIME_WAIT, 07 CLOSE, 0A LISTEN.
            if f.len() < 4 || matches!(f[3], "06" | "07" | "0A") {
                continue;
            }
            if let (Some(l), Some(r)) = (proc_endpoint(f[1], v6), proc_endpoint(f[2], v6)) {
                out.insert((l.0, l.1, r.0, r.1));
            }
        }
    }
    Some(out)
}

/// `0100007F:0016` (IPv4) or 32 hex digits and a port (IPv6): each 32-bit
/// word of the address in this host's byte order.
fn proc_endpoint(text: &str, v6: bool) -> Option<(IpAddr, u16)> {
    let (a, p) = text.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let word = |i: usize| u32::from_str_radix(a.get(i * 8..i * 8 + 8)?, 16).ok().map(|w| w.to_ne_bytes());
    let ip = if v6 {
        let mut b = [0u8; 16];
        for i in 0..4 {
            b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
        }
        let v6 = std::net::Ipv6Addr::from(b);
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    } else {
        IpAddr::V4(std::net::Ipv4Addr::from(word(0)?))
    };
    Some((ip, port))
}

/// The `FW_CONNS` key a counted flow is charged to, under the limits
/// `limit_of` gives for a rule index; `None` when the flow was opened
/// under limits since replaced (its count is gone with them).
pub fn conn_key(key: &FlowKey, flow: &Flow, mut limit_of: impl FnMut(u32) -> Option<firewall_common::RuleLimit>) -> Option<firewall_common::BucketKey> {
    let (index, epoch) = firewall_common::conn_ref_parts(flow.limit_ref);
    let limit = limit_of(index)?;
    if firewall_common::conn_epoch(limit.epoch) != epoch {
        return None;
    }
    let (_, (remote, _)) = flow.ends(key);
    let src = firewall_common::masked(&remote, firewall_common::limit_bits(&limit, &remote));
    Some(firewall_common::BucketKey { rule: index, epoch, src })
}

/// Plain-text table.
pub fn render(entries: &[Entry]) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{:<6} {:<41} {:<41} {:<12} {:<6} {:>8} {:>8} {:>10}\n",
        "PROTO", "SOURCE", "DESTINATION", "STATE", "ORIGIN", "AGE(s)", "IDLE(s)", "PACKETS"
    );
    for e in entries {
        let src = std::net::SocketAddr::new(e.src, e.sport).to_string();
        let dst = std::net::SocketAddr::new(e.dst, e.dport).to_string();
        let _ = writeln!(
            out,
            "{:<6} {:<41} {:<41} {:<12} {:<6} {:>8} {:>8} {:>10}",
            e.proto, src, dst, e.state, e.origin, e.age_secs, e.idle_secs, e.packets
        );
    }
    out
}

#[cfg(test)]
mod proc_tests {
    use super::*;

    /// The kernel prints each 32-bit word of an address in the host's byte
    /// order (these lines are from a little-endian host).
    #[test]
    #[cfg(target_endian = "little")]
    fn proc_net_tcp_endpoints_parse() {
        assert_eq!(proc_endpoint("0100007F:0016", false), Some(("127.0.0.1".parse().unwrap(), 22)));
        assert_eq!(proc_endpoint("0202000A:1F90", false), Some(("10.0.2.2".parse().unwrap(), 8080)));
        assert_eq!(proc_endpoint("B80D0120000000000000000001000000:01BB", true), Some(("2001:db8::1".parse().unwrap(), 443)));
        // An IPv4 peer of an IPv6 socket reads as IPv4, as flow keys hold it.
        assert_eq!(proc_endpoint("0000000000000000FFFF00000100007F:0050", true), Some(("127.0.0.1".parse().unwrap(), 80)));
        assert_eq!(proc_endpoint("zz:0016", false), None);
    }
}

#[cfg(test)]
mod tests {
    use firewall_common::{FlowKey, U128, flow_hint};

    /// `flow_hint` is part of the pinned layout (a controller reads the
    /// slots a running data plane wrote): these values change only with a
    /// `LAYOUT_VERSION` bump.
    #[test]
    fn the_flow_hint_hash_is_stable() {
        let v4 = |a: u32| U128 { hi: 0, lo: 0xffff_0000_0000 | a as u64 };
        let keys = [
            FlowKey { addr_a: v4(0xc000_020a), addr_b: v4(0xc633_6401), port_a: 40000, port_b: 80, proto: 6, _pad: [0; 3] },
            FlowKey { addr_a: v4(0x0a00_0001), addr_b: v4(0x0a00_0002), port_a: 53, port_b: 33333, proto: 17, _pad: [0; 3] },
            FlowKey { addr_a: U128 { hi: 0x2001_0db8_0000_0000, lo: 0x10 }, addr_b: U128 { hi: 0x2001_0db8_0001_0000, lo: 1 }, port_a: 443, port_b: 51000, proto: 6, _pad: [0; 3] },
        ];
        let got: Vec<u32> = keys.iter().map(flow_hint).collect();
        assert_eq!(got, [14683, 13072, 525]);
        assert!(got.iter().all(|&s| s < firewall_common::FLOW_HINT_SLOTS));
    }
}
