//! Policy lookup: walk the decision tree the controller compiled, then scan
//! the leaf's boxes in rule order; the first box that matches decides.
//! Both loops are bounded by limits the compiler enforces, so the cost is
//! at most `MAX_TREE_DEPTH` node reads plus `MAX_LEAF_BOXES` box tests,
//! whatever the number of rules.

use firewall_common::{
    ACTION_ACCEPT, PolicyHeader, Reason, DIM_DPORT, DIM_DST, DIM_PROTO, DIM_SPORT, DIM_SRC, LEAF_COUNT_MASK, LEAF_COUNT_SHIFT,
    LEAF_START_MASK, MAX_BOXES, MAX_LEAF_BOXES, MAX_LEAF_REFS, MAX_NODES, MAX_TREE_DEPTH,
    MatchBox, NODE_LEAF, POLICY_SLOTS, SET_KEY_BITS, SetAddr, SetHost, U128,
};
use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::lpm_trie::Key as LpmKey};

use crate::{FW_ACTIVE, FW_BOXES, FW_PORT_SETS, FW_SET_ELEMS, FW_SET_HOSTS, FW_SET_KEY, FW_SET_PREFIX, FW_LEAF_REFS, FW_NODES, FW_POLICY, parse::Key};

/// The policy slot in force: read once, so one packet sees one policy.
#[inline(always)]
pub fn active_policy() -> Result<(u32, &'static PolicyHeader), Reason> {
    let slot = FW_ACTIVE.get(0).ok_or(Reason::Internal)?.slot;
    if slot >= POLICY_SLOTS {
        return Err(Reason::Internal);
    }
    let header = FW_POLICY.get(slot).ok_or(Reason::Internal)?;
    if header.loaded == 0 {
        return Err(Reason::NoPolicy);
    }
    Ok((slot, header))
}

/// `Err` only when the maps are inconsistent (a controller bug).
#[inline(always)]
pub fn classify(slot: u32, root: u32, key: &Key) -> Result<Option<&'static MatchBox>, ()> {
    Ok(classify_at(slot, root, key)?.map(|(_, b)| b))
}

/// `classify`, with the index of the matching box (see `box_at`).
#[inline(always)]
pub fn classify_at(slot: u32, root: u32, key: &Key) -> Result<Option<(u32, &'static MatchBox)>, ()> {
    let mut child = root;
    for _ in 0..MAX_TREE_DEPTH {
        if child & NODE_LEAF != 0 {
            break;
        }
        if child >= MAX_NODES {
            return Err(());
        }
        let node = FW_NODES.get(slot * MAX_NODES + child).ok_or(())?;
        let value = field(key, node.dim)?;
        child = if value.le(&node.threshold) { node.left } else { node.right };
    }
    if child & NODE_LEAF == 0 {
        return Err(());
    }
    let start = child & LEAF_START_MASK;
    let count = (child >> LEAF_COUNT_SHIFT) & LEAF_COUNT_MASK;
    for i in 0..MAX_LEAF_BOXES {
        if i >= count {
            break;
        }
        let index = start + i;
        if index >= MAX_LEAF_REFS {
            return Err(());
        }
        let box_index = *FW_LEAF_REFS.get(slot * MAX_LEAF_REFS + index).ok_or(())?;
        if box_index >= MAX_BOXES {
            return Err(());
        }
        let b = FW_BOXES.get(slot * MAX_BOXES + box_index).ok_or(())?;
        if matches(b, key) {
            return Ok(Some((box_index, b)));
        }
    }
    Ok(None)
}

/// Box `index` of policy `slot`, as `classify_at` named it.
#[inline(always)]
pub fn box_at(slot: u32, index: u32) -> Result<&'static MatchBox, ()> {
    if index >= MAX_BOXES {
        return Err(());
    }
    FW_BOXES.get(slot * MAX_BOXES + index).ok_or(())
}

/// The verdict the rules give a packet: the matching rule's action, or
/// the policy's default.
#[inline(always)]
pub fn reason(header: &PolicyHeader, matched: Option<&MatchBox>) -> Reason {
    match matched {
        Some(m) if m.action == ACTION_ACCEPT => Reason::RuleAccept,
        Some(_) => Reason::RuleDrop,
        None if header.default_action == ACTION_ACCEPT => Reason::DefaultAccept,
        None => Reason::DefaultDrop,
    }
}

/// Whether a `reason` verdict accepts.
#[inline(always)]
pub fn accepts(reason: Reason) -> bool {
    matches!(reason, Reason::RuleAccept | Reason::DefaultAccept)
}

#[inline(always)]
fn field(key: &Key, dim: u32) -> Result<U128, ()> {
    Ok(match dim {
        DIM_SRC => key.src,
        DIM_DST => key.dst,
        DIM_SPORT => U128 { hi: 0, lo: key.sport as u64 },
        DIM_DPORT => U128 { hi: 0, lo: key.dport as u64 },
        DIM_PROTO => U128 { hi: 0, lo: key.proto as u64 },
        _ => return Err(()),
    })
}

#[inline(always)]
fn matches(b: &MatchBox, key: &Key) -> bool {
    b.src_lo.le(&key.src)
        && key.src.le(&b.src_hi)
        && b.dst_lo.le(&key.dst)
        && key.dst.le(&b.dst_hi)
        && b.sport_lo <= key.sport
        && key.sport <= b.sport_hi
        && b.dport_lo <= key.dport
        && key.dport <= b.dport_hi
        && b.proto_lo <= key.proto
        && key.proto <= b.proto_hi
        && key.tcp_flags & b.tcp_flags_mask == b.tcp_flags_value
        && key.ct_state & b.state_mask != 0
        && (b.src_set | b.dst_set | b.sport_set | b.dport_set == 0 || in_sets(b, key))
}

/// The set tests of a box that names a set: looked up last, only for a
/// box whose ranges matched. (Inlined: a subprogram's frame would pass
/// the 512-byte stack the cookie ACK program shares with it.)
#[inline(always)]
fn in_sets(b: &MatchBox, key: &Key) -> bool {
    in_port_set(b.sport_set, key.sport) && in_port_set(b.dport_set, key.dport) && in_set(b.src_set, &key.src) && in_set(b.dst_set, &key.dst)
}

/// Whether `port` is in port set `set - 1` (0: the box names none): one
/// array lookup and a bit.
#[inline(always)]
fn in_port_set(set: u8, port: u16) -> bool {
    set == 0 || FW_PORT_SETS.get(set as u32 - 1).is_some_and(|bits| bits.has(port))
}

/// Whether `addr` is in set `set - 1` (0: the box names no set), and the
/// element has not expired. Looked up last, only for a box whose ranges
/// matched: rules without sets cost nothing more. Single addresses are one
/// hash lookup; the prefix trie is walked only for a set that has prefixes.
#[inline(always)]
fn in_set(set: u8, addr: &U128) -> bool {
    if set == 0 {
        return true;
    }
    let id = set as u32 - 1;
    // The keys are built in a per-CPU slot: the cookie ACK program has no
    // stack left for them.
    let Some(keys) = FW_SET_KEY.get_ptr_mut(0) else { return false };
    // SAFETY: this CPU's slot, used by nothing else while this runs.
    let keys: &mut SetKeys = unsafe { &mut *keys };
    keys.host = SetHost::new(id, addr);
    // SAFETY: a reference into the map value, read at once.
    if unsafe { FW_SET_HOSTS.get(&keys.host) }.is_some_and(live) {
        return true;
    }
    // An expired address falls through to the set's prefixes. (An expired
    // prefix still hides a shorter live one until the sweep deletes it.)
    if FW_SET_PREFIX.get(id).is_none_or(|&n| n == 0) {
        return false;
    }
    keys.trie.prefix_len = SET_KEY_BITS;
    keys.trie.data = SetAddr::new(id, addr);
    FW_SET_ELEMS.get(&keys.trie).is_some_and(live)
}

/// A set lookup's keys (`FW_SET_KEY`, per CPU): the host map's, and the
/// trie's, built only for a set that has prefixes.
#[repr(C)]
pub struct SetKeys {
    pub host: SetHost,
    pub trie: LpmKey<SetAddr>,
}

#[inline(always)]
fn live(e: &firewall_common::SetElem) -> bool {
    // SAFETY: a helper without arguments.
    e.expires_ns == 0 || unsafe { bpf_ktime_get_ns() } < e.expires_ns
}
