//! Compiles a validated policy into what the XDP program reads: match boxes,
//! a decision tree over them, and per-rule metadata.
//!
//! Why a decision tree (HyperSplit: binary splits of one field at a
//! threshold, leaves of at most `MAX_LEAF_BOXES` boxes scanned in rule
//! order). The issue asks for a per-packet cost that stays nearly flat from
//! 10 to 10,000 rules and a program that the verifier accepts at every size.
//! - A linear scan costs O(rules); a flat bitset AND costs ~157 words per
//!   field at 10,000 rules.
//! - Recursive Flow Classification is constant-time, but its cross-product
//!   tables grow with (src classes x dst classes); policies with wildcard
//!   rules make them explode, and a BPF map cannot be sized lazily.
//! - Tuple-space search costs one hash lookup per distinct prefix-length
//!   tuple, which a mixed policy drives into the dozens.
//! - The tree needs at most `MAX_TREE_DEPTH` array reads (inlined by the
//!   verifier for array maps) plus one short leaf scan, memory roughly
//!   linear in the rules, and one bounded loop each: the program's size and
//!   verification cost do not depend on the policy at all.
//! Measured with BPF_PROG_TEST_RUN (see README, "Performance").

use firewall_common::{
    DIMS, MAX_BOXES, MAX_LEAF_BOXES, MAX_LEAF_REFS, MAX_NODES,
    MAX_TREE_DEPTH, MatchBox, Node, PolicyHeader, PortBits, RULE_NAME_LEN, RuleMeta, U128, ct_state, leaf_ref,
};

use crate::policy::{Cidr, Policy, PortRange, Proto, Rule};

/// The tree builder stops splitting at this many boxes; the kernel scans up
/// to `MAX_LEAF_BOXES`, the slack absorbs boxes no split can separate.
const LEAF_TARGET: usize = 8;
/// Split points tried per field and node.
const SPLIT_CANDIDATES: usize = 24;

/// IPv4 addresses live in `::ffff:0:0/96` of the 128-bit key.
const V4_BLOCK_LO: u128 = 0xffff_0000_0000;
const V4_BLOCK_HI: u128 = 0xffff_ffff_ffff;

/// The key's 128-bit form of an address (IPv4 mapped into `::ffff:0:0/96`).
pub fn addr128(a: std::net::IpAddr) -> u128 {
    match a {
        std::net::IpAddr::V4(a) => V4_BLOCK_LO | u32::from(a) as u128,
        std::net::IpAddr::V6(a) => u128::from(a),
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    /// `rule`: the first rule at which the running count passes the limit.
    #[error("the policy expands to {count} match boxes (rules with lists expand to one box per combination); the limit is {MAX_BOXES}, passed at this rule")]
    TooManyBoxes { count: usize, rule: usize },
    #[error("the policy needs more than {MAX_NODES} tree nodes; simplify overlapping rules")]
    TooManyNodes,
    #[error("the policy needs more than {MAX_LEAF_REFS} leaf entries; simplify overlapping rules")]
    TooManyLeafRefs,
    #[error("the policy's decision tree would be deeper than {MAX_TREE_DEPTH} levels")]
    TooDeep,
    /// `rule`: the first of `rules`, in policy order.
    #[error("more than {MAX_LEAF_BOXES} rules match the same packets and differ only in tcp_flags or state: {rules}")]
    Inseparable { rules: String, rule: usize },
}

impl CompileError {
    /// Index of the rule the error points at; `None` for limits that only
    /// the whole policy reaches (tree nodes, leaf entries, depth).
    pub fn rule(&self) -> Option<usize> {
        match self {
            CompileError::TooManyBoxes { rule, .. } | CompileError::Inseparable { rule, .. } => Some(*rule),
            CompileError::TooManyNodes | CompileError::TooManyLeafRefs | CompileError::TooDeep => None,
        }
    }

    /// `file:line:col: error: message`, at the `name` of the rule the error
    /// points at (`file: error: message` when there is none), as
    /// `firewall check` and reloads print it.
    pub fn render(&self, policy: &Policy, file: &str) -> String {
        match self.rule().and_then(|i| policy.rules.get(i)) {
            Some(r) => format!("{file}:{}:{}: error: {self}", r.line, r.col),
            None => format!("{file}: error: {self}"),
        }
    }
}

/// One policy, ready to be written into a slot of the maps.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub header: PolicyHeader,
    pub nodes: Vec<Node>,
    pub leaf_refs: Vec<u32>,
    pub boxes: Vec<MatchBox>,
    pub meta: Vec<RuleMeta>,
    pub depth: u32,
    /// Destination ports of cookie services and the first cookie rule
    /// (index) for each: where an ACK of no flow has its cookie checked.
    pub cookie_ports: Vec<(u16, u32)>,
    /// `maps::SYN_PORTS`: where something but an `always` cookie service
    /// may accept a TCP SYN.
    pub syn_ports: Box<PortBits>,
    pub syncookie: crate::policy::SyncookieSettings,
    pub events: firewall_common::EventConfig,
    /// `[[set]]`s; the boxes' `src_set`/`dst_set` hold 1 + an index here
    /// until the loader maps them to the sets' ids.
    pub sets: Vec<crate::policy::SetSpec>,
    /// `FW_RULE_LIMIT` of each rule (zero: none).
    pub limits: Vec<firewall_common::RuleLimit>,
}

pub fn compile(policy: &Policy) -> Result<Compiled, CompileError> {
    // Count before building: a few long lists multiply into more boxes
    // than memory holds, and a reload must fail cleanly, not abort.
    let mut count = 0usize;
    let mut over = None;
    for (index, rule) in policy.rules.iter().enumerate() {
        count = count.saturating_add(box_count(rule));
        if count > MAX_BOXES as usize && over.is_none() {
            over = Some(index);
        }
    }
    if let Some(rule) = over {
        return Err(CompileError::TooManyBoxes { count, rule });
    }
    let mut boxes = Vec::with_capacity(count);
    for (index, rule) in policy.rules.iter().enumerate() {
        rule_boxes(rule, index as u32, &mut boxes);
    }
    let meta = policy.rules.iter().map(rule_meta).collect();

    let ranges: Vec<Ranges> = boxes.iter().map(ranges_of).collect();
    let mut builder = Builder { boxes: &boxes, ranges: &ranges, policy, nodes: Vec::new(), leaf_refs: Vec::new(), depth: 0 };
    let all: Vec<u32> = (0..boxes.len() as u32).collect();
    let root = builder.build(all, FULL_REGION, 0)?;
    let Builder { nodes, leaf_refs, depth, .. } = builder;

    let settings = &policy.settings;
    let header = PolicyHeader {
        loaded: 1,
        default_action: settings.default.code(),
        fragment_action: settings.fragments.code(),
        established: settings.established.code(),
        rule_count: policy.rules.len() as u32,
        root,
        related: settings.related.code(),
        invalid: settings.invalid.code(),
        _pad: [0; 2],
        timeouts: settings.timeouts,
    };
    Ok(Compiled { header, nodes, leaf_refs, boxes, meta, depth, cookie_ports: cookie_ports(policy), syn_ports: syn_ports(policy), syncookie: settings.syncookie.clone(), events: settings.events.config(), sets: policy.sets.clone(), limits: policy.rules.iter().map(rule_limit).collect() })
}

/// Every port a cookie rule names, mapped to the first such rule.
fn cookie_ports(policy: &Policy) -> Vec<(u16, u32)> {
    let mut owner: Vec<Option<u32>> = vec![None; 65_536];
    for (index, rule) in policy.rules.iter().enumerate() {
        if rule.syncookie == crate::policy::Syncookie::Off {
            continue;
        }
        for r in &rule.dport {
            for port in r.lo..=r.hi {
                owner[port as usize].get_or_insert(index as u32);
            }
        }
    }
    owner.iter().enumerate().filter_map(|(p, o)| o.map(|rule| (p as u16, rule))).collect()
}

/// The ports where a TCP SYN may be accepted by a rule that is not an
/// `always` cookie service, or by the default (see `maps::SYN_PORTS`).
/// Conservative: states, flags and addresses are not looked at.
fn syn_ports(policy: &Policy) -> Box<PortBits> {
    if policy.settings.default == crate::policy::Action::Accept {
        return Box::new(PortBits::ALL);
    }
    let mut open = Box::new(PortBits::EMPTY);
    for rule in &policy.rules {
        let may_accept_syn = rule.action == crate::policy::Action::Accept && matches!(rule.proto, Proto::Any | Proto::Tcp);
        if !may_accept_syn || rule.syncookie == crate::policy::Syncookie::Always {
            continue;
        }
        // A port set's ports change at run time.
        if rule.dport.is_empty() || !rule.dport_sets.is_empty() {
            return Box::new(PortBits::ALL);
        }
        for r in &rule.dport {
            open.add_range(r.lo, r.hi);
        }
    }
    open
}

fn rule_limit(rule: &Rule) -> firewall_common::RuleLimit {
    match rule.limit {
        None => Default::default(),
        Some(l) => firewall_common::RuleLimit {
            interval_ns: l.interval_ns,
            tolerance_ns: l.interval_ns.saturating_mul(l.burst.saturating_sub(1) as u64),
            v4_prefix: l.v4_prefix,
            v6_prefix: l.v6_prefix,
            _pad: [0; 2],
            epoch: 0,
            max_conns: l.max_conns,
            // 1 + the index in `Compiled::sets`; the loader puts the id.
            ban_set: l.ban.map_or(0, |b| b.set as u32 + 1),
            ban_ns: l.ban.map_or(0, |b| b.timeout_secs as u64 * 1_000_000_000),
        },
    }
}

fn rule_meta(rule: &Rule) -> RuleMeta {
    let mut meta = RuleMeta { action: rule.action.code(), syncookie: rule.syncookie.code(), log: u8::from(rule.log), limited: u8::from(rule.limit.is_some()), ..Default::default() };
    // Validation bounds names to RULE_NAME_LEN - 1 bytes; keep a NUL at the end regardless.
    let n = rule.name.len().min(RULE_NAME_LEN - 1);
    meta.name[..n].copy_from_slice(&rule.name.as_bytes()[..n]);
    meta
}

/// The alternatives of a rule's `src` or `dst`: address ranges (set 0), and
/// for each set it names, any address in that set (1 + the set's index in
/// the policy; the loader turns it into 1 + the set's id). Both lists
/// empty: any address.
fn address_alternatives(cidrs: &[Cidr], sets: &[usize]) -> Vec<((u128, u128), u8)> {
    let mut out: Vec<_> = if cidrs.is_empty() && !sets.is_empty() {
        Vec::new()
    } else {
        address_ranges(cidrs).into_iter().map(|r| (r, 0)).collect()
    };
    out.extend(sets.iter().map(|&i| ((0, u128::MAX), i as u8 + 1)));
    out
}

/// Address ranges of a rule's CIDR list; empty means any address.
fn address_ranges(cidrs: &[Cidr]) -> Vec<(u128, u128)> {
    if cidrs.is_empty() {
        return vec![(0, u128::MAX)];
    }
    let mut out = Vec::new();
    for c in cidrs {
        let (lo, hi) = cidr_range(c);
        if c.is_v4() {
            out.push((lo, hi));
        } else {
            // Keep IPv6 ranges out of the IPv4 block so a v6 rule never matches v4.
            if lo < V4_BLOCK_LO {
                out.push((lo, hi.min(V4_BLOCK_LO - 1)));
            }
            if hi > V4_BLOCK_HI {
                out.push((lo.max(V4_BLOCK_HI + 1), hi));
            }
        }
    }
    out
}

/// Inclusive key range of a CIDR (IPv4 mapped into `::ffff:0:0/96`).
pub fn cidr_range(c: &Cidr) -> (u128, u128) {
    match c.addr {
        std::net::IpAddr::V4(a) => {
            let base = u32::from(a) as u128 | V4_BLOCK_LO;
            let host = if c.prefix >= 32 { 0 } else { (1u128 << (32 - c.prefix)) - 1 };
            (base & !host, base | host)
        }
        std::net::IpAddr::V6(a) => {
            let base = u128::from(a);
            let host = if c.prefix >= 128 { 0 } else if c.prefix == 0 { u128::MAX } else { (1u128 << (128 - c.prefix)) - 1 };
            (base & !host, base | host)
        }
    }
}

fn is_v4_range(r: (u128, u128)) -> bool {
    r.0 >= V4_BLOCK_LO && r.1 <= V4_BLOCK_HI
}

/// A port list's alternatives: each range, then each set (any port, and
/// the set's bit; 1 + its index). Empty lists: any port.
fn port_alternatives(ports: &[PortRange], sets: &[usize]) -> Vec<((u16, u16), u8)> {
    let mut out: Vec<_> = if ports.is_empty() && !sets.is_empty() {
        Vec::new()
    } else if ports.is_empty() {
        vec![((0, u16::MAX), 0)]
    } else {
        ports.iter().map(|p| ((p.lo, p.hi), 0)).collect()
    };
    out.extend(sets.iter().map(|&i| ((0, u16::MAX), i as u8 + 1)));
    out
}

/// How many boxes `rule_boxes` makes for `rule` (saturating).
fn box_count(rule: &Rule) -> usize {
    let addrs = |list: &[Cidr], sets: &[usize]| address_alternatives(list, sets).len();
    let ports = |list: &[PortRange], sets: &[usize]| port_alternatives(list, sets).len();
    let (sports, dports) = match rule.proto {
        Proto::Icmp | Proto::Icmpv6 => (1, 1),
        _ => (ports(&rule.sport, &rule.sport_sets), ports(&rule.dport, &rule.dport_sets)),
    };
    addrs(&rule.src, &rule.src_sets).saturating_mul(addrs(&rule.dst, &rule.dst_sets)).saturating_mul(sports).saturating_mul(dports)
}

/// One box per combination of the rule's list items.
fn rule_boxes(rule: &Rule, index: u32, out: &mut Vec<MatchBox>) {
    let (proto_lo, proto_hi) = match rule.proto.number() {
        Some(n) => (n, n),
        None => (0, u8::MAX),
    };
    let (sports, dports) = match rule.proto {
        // ICMP type and code stand in the port fields of the key.
        Proto::Icmp | Proto::Icmpv6 => (
            vec![(rule.icmp_type.map_or((0, u16::MAX), |t| (t as u16, t as u16)), 0)],
            vec![(rule.icmp_code.map_or((0, u16::MAX), |c| (c as u16, c as u16)), 0)],
        ),
        _ => (port_alternatives(&rule.sport, &rule.sport_sets), port_alternatives(&rule.dport, &rule.dport_sets)),
    };
    let srcs = address_alternatives(&rule.src, &rule.src_sets);
    let dsts = address_alternatives(&rule.dst, &rule.dst_sets);
    for &(src, src_set) in &srcs {
        for &(dst, dst_set) in &dsts {
            // A v4 source and a v6 destination can never be in one packet.
            let src_any = rule.src.is_empty() || src_set != 0;
            let dst_any = rule.dst.is_empty() || dst_set != 0;
            if !src_any && !dst_any && is_v4_range(src) != is_v4_range(dst) {
                continue;
            }
            for &((sport_lo, sport_hi), sport_set) in &sports {
                for &((dport_lo, dport_hi), dport_set) in &dports {
                    out.push(MatchBox {
                        src_lo: U128::from_u128(src.0),
                        src_hi: U128::from_u128(src.1),
                        dst_lo: U128::from_u128(dst.0),
                        dst_hi: U128::from_u128(dst.1),
                        sport_lo,
                        sport_hi,
                        dport_lo,
                        dport_hi,
                        proto_lo,
                        proto_hi,
                        tcp_flags_mask: rule.tcp_flags.mask,
                        tcp_flags_value: rule.tcp_flags.value,
                        action: rule.action.code(),
                        state_mask: rule.state,
                        syncookie: rule.syncookie.code(),
                        log: u8::from(rule.log),
                        src_set,
                        dst_set,
                        limited: u8::from(rule.limit.is_some()),
                        sport_set,
                        dport_set,
                        _pad: [0; 3],
                        rule: index,
                        _pad2: 0,
                    });
                }
            }
        }
    }
}

/// A box's or region's inclusive bounds per field, indexed by `DIM_*`.
type Ranges = [(u128, u128); DIMS];

const FULL_REGION: Ranges = [
    (0, u128::MAX),
    (0, u128::MAX),
    (0, u16::MAX as u128),
    (0, u16::MAX as u128),
    (0, u8::MAX as u128),
];

fn ranges_of(b: &MatchBox) -> Ranges {
    [
        (b.src_lo.to_u128(), b.src_hi.to_u128()),
        (b.dst_lo.to_u128(), b.dst_hi.to_u128()),
        (b.sport_lo as u128, b.sport_hi as u128),
        (b.dport_lo as u128, b.dport_hi as u128),
        (b.proto_lo as u128, b.proto_hi as u128),
    ]
}

struct Builder<'a> {
    boxes: &'a [MatchBox],
    ranges: &'a [Ranges],
    policy: &'a Policy,
    nodes: Vec<Node>,
    leaf_refs: Vec<u32>,
    depth: u32,
}

impl Builder<'_> {
    /// Returns the child reference (node index or leaf) for `ids` within `region`.
    fn build(&mut self, ids: Vec<u32>, region: Ranges, depth: u32) -> Result<u32, CompileError> {
        self.depth = self.depth.max(depth);
        // A box that covers the whole region and tests neither flags,
        // state nor a set matches every packet here: the boxes after it
        // are unreachable in this region.
        let mut kept = Vec::with_capacity(ids.len());
        for id in ids {
            kept.push(id);
            let b = &self.boxes[id as usize];
            if b.tcp_flags_mask == 0 && b.state_mask == ct_state::ANY && b.src_set == 0 && b.dst_set == 0 && b.sport_set == 0 && b.dport_set == 0 && covers(&self.ranges[id as usize], &region) {
                break;
            }
        }
        if kept.len() <= LEAF_TARGET {
            return self.leaf(&kept);
        }
        let split = if depth >= MAX_TREE_DEPTH { None } else { self.best_split(&kept, &region) };
        let Some((dim, threshold)) = split else {
            if kept.len() <= MAX_LEAF_BOXES as usize {
                return self.leaf(&kept);
            }
            if depth >= MAX_TREE_DEPTH {
                return Err(CompileError::TooDeep);
            }
            return Err(self.inseparable(&kept));
        };
        let left_ids: Vec<u32> = kept.iter().copied().filter(|&i| self.ranges[i as usize][dim].0 <= threshold).collect();
        let right_ids: Vec<u32> = kept.iter().copied().filter(|&i| self.ranges[i as usize][dim].1 > threshold).collect();
        let mut left_region = region;
        left_region[dim].1 = threshold;
        let mut right_region = region;
        right_region[dim].0 = threshold + 1;

        let index = self.nodes.len();
        if index >= MAX_NODES as usize {
            return Err(CompileError::TooManyNodes);
        }
        self.nodes.push(Node { dim: dim as u32, threshold: U128::from_u128(threshold), ..Default::default() });
        let left = self.build(left_ids, left_region, depth + 1)?;
        let right = self.build(right_ids, right_region, depth + 1)?;
        self.nodes[index].left = left;
        self.nodes[index].right = right;
        Ok(index as u32)
    }

    fn leaf(&mut self, ids: &[u32]) -> Result<u32, CompileError> {
        let start = self.leaf_refs.len();
        if start + ids.len() > MAX_LEAF_REFS as usize {
            return Err(CompileError::TooManyLeafRefs);
        }
        self.leaf_refs.extend_from_slice(ids);
        Ok(leaf_ref(start as u32, ids.len() as u32))
    }

    /// The split that leaves the fewest boxes on its larger side (then the
    /// fewest copies), or `None` when no split separates any box.
    fn best_split(&self, ids: &[u32], region: &Ranges) -> Option<(usize, u128)> {
        let n = ids.len();
        let mut best: Option<(usize, usize, usize, u128)> = None; // (max side, sum, dim, t)
        for dim in 0..DIMS {
            let (rlo, rhi) = region[dim];
            // Split points just before a box starts or where one ends.
            let mut points: Vec<u128> = Vec::with_capacity(2 * n);
            for &i in ids {
                let (lo, hi) = self.ranges[i as usize][dim];
                if lo > rlo && lo <= rhi {
                    points.push(lo - 1);
                }
                if hi < rhi && hi >= rlo {
                    points.push(hi);
                }
            }
            if points.is_empty() {
                continue;
            }
            points.sort_unstable();
            points.dedup();
            let step = points.len().div_ceil(SPLIT_CANDIDATES).max(1);
            let mid = points.len() / 2;
            let candidates = points.iter().copied().step_by(step).chain(std::iter::once(points[mid]));
            for t in candidates {
                let mut left = 0;
                let mut right = 0;
                for &i in ids {
                    let (lo, hi) = self.ranges[i as usize][dim];
                    left += usize::from(lo <= t);
                    right += usize::from(hi > t);
                }
                // A split helps when at least one side loses a box; the
                // region shrinks either way, so boxes come to cover it.
                let score = (left + right + left.max(right), left + right);
                if left.min(right) < n && best.is_none_or(|b| score < (b.0, b.1)) {
                    best = Some((score.0, score.1, dim, t));
                }
            }
        }
        best.map(|(_, _, dim, t)| (dim, t))
    }

    fn inseparable(&self, ids: &[u32]) -> CompileError {
        let mut rules: Vec<usize> = ids.iter().map(|&i| self.boxes[i as usize].rule as usize).collect();
        rules.sort_unstable();
        rules.dedup();
        let names: Vec<&str> = rules.iter().map(|&r| self.policy.rules[r].name.as_str()).collect();
        CompileError::Inseparable { rules: names.join(", "), rule: rules[0] }
    }
}

fn covers(b: &Ranges, region: &Ranges) -> bool {
    b.iter().zip(region).all(|(b, r)| b.0 <= r.0 && r.1 <= b.1)
}

/// Tree statistics, for `check`, `run` and the benchmarks.
pub fn describe(c: &Compiled) -> String {
    format!(
        "{} rules, {} match boxes, {} tree nodes, depth {}, {} leaf entries",
        c.meta.len(),
        c.boxes.len(),
        c.nodes.len(),
        c.depth,
        c.leaf_refs.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy;

    fn compiled(text: &str) -> Compiled {
        compile(&policy::parse(text, "t.toml").expect("valid")).expect("compiles")
    }

    /// A port's SYNs skip the unproven-flow table only when nothing but
    /// an `always` service can accept a SYN to it and the default drops.
    #[test]
    fn only_ports_that_only_always_services_accept_skip_the_remote_table() {
        let web = "[[rule]]\nname = \"web\"\nproto = \"tcp\"\ndport = [80, 443]\naction = \"accept\"\nsyncookie = \"always\"\n";
        let skips = |c: &Compiled, port: u16| !c.syn_ports.has(port);
        let c = compiled(&format!("[settings]\ndefault = \"drop\"\n\n{web}\n[[rule]]\nname = \"ssh\"\nproto = \"tcp\"\ndport = 22\naction = \"accept\"\n[[rule]]\nname = \"nope\"\nproto = \"tcp\"\ndport = 23\naction = \"drop\"\n"));
        assert_eq!((skips(&c, 80), skips(&c, 443), skips(&c, 22), skips(&c, 23), skips(&c, 8080)), (true, true, false, true, true));
        assert_eq!(c.cookie_ports, vec![(80, 0), (443, 0)]);
        // A plain accept rule on 443 (before or after), an any-port accept, auto mode, or default accept: looked up.
        let c = compiled(&format!("[settings]\ndefault = \"drop\"\n\n{web}\n[[rule]]\nname = \"admin\"\nproto = \"tcp\"\nsrc = \"10.0.0.0/8\"\ndport = 443\naction = \"accept\"\n"));
        assert_eq!((skips(&c, 80), skips(&c, 443)), (true, false));
        let c = compiled(&format!("[settings]\ndefault = \"drop\"\n\n{web}\n[[rule]]\nname = \"lan\"\nsrc = \"10.0.0.0/8\"\naction = \"accept\"\n"));
        assert!(!skips(&c, 80) && !skips(&c, 1));
        let c = compiled(&format!("[settings]\ndefault = \"drop\"\n\n{}", web.replace("always", "auto")));
        assert!(!skips(&c, 80));
        let c = compiled(&format!("[settings]\ndefault = \"accept\"\n\n{web}"));
        assert!(!skips(&c, 80) && !skips(&c, 65535));
        // A UDP accept opens no TCP port.
        let c = compiled("[settings]\ndefault = \"drop\"\n\n[[rule]]\nname = \"dns\"\nproto = \"udp\"\ndport = 53\naction = \"accept\"\n");
        assert!(skips(&c, 53));
    }

    #[test]
    fn lists_expand_to_one_box_per_combination() {
        let c = compiled("[[rule]]\nname = \"a\"\nproto = \"tcp\"\nsrc = [\"10.0.0.0/8\", \"192.0.2.0/24\"]\ndport = [22, \"80-81\", 443]\naction = \"accept\"\n");
        assert_eq!(c.boxes.len(), 6);
        assert!(c.boxes.iter().all(|b| b.rule == 0 && b.proto_lo == 6 && b.proto_hi == 6));
        assert!(c.boxes.iter().any(|b| (b.dport_lo, b.dport_hi) == (80, 81)));
        assert_eq!(c.meta[0].name[..2], *b"a\0");
    }

    #[test]
    fn ipv4_maps_into_the_v4_block_and_ipv6_ranges_avoid_it() {
        let v4: Cidr = Cidr::parse("10.1.0.0/16").unwrap();
        assert_eq!(cidr_range(&v4), (0xffff_0a01_0000, 0xffff_0a01_ffff));
        let all_v6 = address_ranges(&[Cidr::parse("::/0").unwrap()]);
        assert_eq!(all_v6, vec![(0, V4_BLOCK_LO - 1), (V4_BLOCK_HI + 1, u128::MAX)]);
        let v6 = address_ranges(&[Cidr::parse("2001:db8::/32").unwrap()]);
        assert_eq!(v6.len(), 1);
    }

    #[test]
    fn icmp_type_and_code_use_the_port_fields() {
        let c = compiled("[[rule]]\nname = \"e\"\nproto = \"icmp\"\nicmp_type = 8\nicmp_code = 0\naction = \"accept\"\n");
        let b = c.boxes[0];
        assert_eq!((b.sport_lo, b.sport_hi, b.dport_lo, b.dport_hi), (8, 8, 0, 0));
    }

    #[test]
    fn small_policies_are_one_leaf_and_leaves_respect_the_kernel_bound() {
        let c = compiled("[[rule]]\nname = \"a\"\nproto = \"udp\"\ndport = 53\naction = \"accept\"\n");
        assert!(c.nodes.is_empty());
        assert_eq!(c.header.root, leaf_ref(0, 1));
        let mut text = String::new();
        for i in 0..200 {
            text.push_str(&format!("[[rule]]\nname = \"r{i}\"\nproto = \"tcp\"\ndport = {}\naction = \"drop\"\n", 1000 + i));
        }
        let c = compiled(&text);
        assert!(!c.nodes.is_empty());
        for n in &c.nodes {
            for child in [n.left, n.right] {
                if child & firewall_common::NODE_LEAF != 0 {
                    assert!((child >> firewall_common::LEAF_COUNT_SHIFT) & firewall_common::LEAF_COUNT_MASK <= MAX_LEAF_BOXES);
                }
            }
        }
    }

    #[test]
    fn a_covering_rule_hides_the_rules_after_it() {
        let c = compiled("[[rule]]\nname = \"all\"\naction = \"drop\"\n\n[[rule]]\nname = \"ssh\"\nproto = \"tcp\"\ndport = 22\naction = \"accept\"\n");
        assert_eq!(c.leaf_refs, vec![0], "the second rule can never match");
    }

    #[test]
    fn long_lists_are_refused_before_they_are_built() {
        let list = |n: usize, f: &dyn Fn(usize) -> String| (0..n).map(f).collect::<Vec<_>>().join(", ");
        let src = list(300, &|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256));
        let dst = list(300, &|i| format!("\"172.16.{}.{}\"", i / 256, i % 256));
        let dport = list(300, &|i| format!("{}", 1000 + i));
        let text = format!("[[rule]]\nname = \"big\"\nproto = \"tcp\"\nsrc = [{src}]\ndst = [{dst}]\ndport = [{dport}]\naction = \"accept\"\n");
        let p = policy::parse(&text, "t.toml").unwrap();
        assert_eq!(compile(&p).unwrap_err(), CompileError::TooManyBoxes { count: 300 * 300 * 300, rule: 0 });

        // The error points at the rule that passes the limit, not the first.
        let text = format!("[[rule]]\nname = \"small\"\nproto = \"udp\"\naction = \"drop\"\n{text}");
        let p = policy::parse(&text, "t.toml").unwrap();
        let e = compile(&p).unwrap_err();
        assert_eq!(e.rule(), Some(1));
        assert!(e.render(&p, "t.toml").starts_with("t.toml:6:8: error: the policy expands to 27000001 match boxes"), "{}", e.render(&p, "t.toml"));
    }

    #[test]
    fn rules_differing_only_in_flags_beyond_a_leaf_are_an_error() {
        let mut text = String::new();
        for i in 0..17 {
            text.push_str(&format!("[[rule]]\nname = \"f{i}\"\nproto = \"tcp\"\ndport = 80\ntcp_flags = \"syn,{}ack\"\naction = \"drop\"\n", if i % 2 == 0 { "!" } else { "" }));
        }
        let p = policy::parse(&text, "t.toml").unwrap();
        let e = compile(&p).unwrap_err();
        assert!(matches!(e, CompileError::Inseparable { rule: 0, .. }), "{e:?}");
        assert!(e.render(&p, "t.toml").starts_with("t.toml:2:8: error: more than 16 rules match the same packets"), "{}", e.render(&p, "t.toml"));
        // Limits of the whole policy have no rule to point at.
        assert_eq!(CompileError::TooDeep.rule(), None);
        assert!(CompileError::TooDeep.render(&p, "t.toml").starts_with("t.toml: error: the policy's decision tree"));
    }
}
