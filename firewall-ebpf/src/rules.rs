//! Policy lookup: walk the decision tree the controller compiled, then scan
//! the leaf's boxes in rule order; the first box that matches decides.
//! Both loops are bounded by limits the compiler enforces, so the cost is
//! at most `MAX_TREE_DEPTH` node reads plus `MAX_LEAF_BOXES` box tests,
//! whatever the number of rules.

use firewall_common::{
    ACTION_ACCEPT, PolicyHeader, Reason, DIM_DPORT, DIM_DST, DIM_PROTO, DIM_SPORT, DIM_SRC, LEAF_COUNT_MASK, LEAF_COUNT_SHIFT,
    LEAF_START_MASK, MAX_BOXES, MAX_LEAF_BOXES, MAX_LEAF_REFS, MAX_NODES, MAX_TREE_DEPTH,
    MatchBox, NODE_LEAF, POLICY_SLOTS, U128,
};

use crate::{FW_ACTIVE, FW_BOXES, FW_LEAF_REFS, FW_NODES, FW_POLICY, parse::Key};

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
            return Ok(Some(b));
        }
    }
    Ok(None)
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
}
