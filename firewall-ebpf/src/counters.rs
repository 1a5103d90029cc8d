//! Per-CPU packet and byte counters: one per verdict reason, one per rule.

use firewall_common::{MAX_RULES, Reason};

use crate::{FW_REASON_CNT, FW_RULE_CNT};

#[inline(always)]
pub fn count_reason(reason: Reason, bytes: u64) {
    if let Some(c) = FW_REASON_CNT.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU slot; only this CPU writes it while we run.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn count_rule(slot: u32, rule: u32, bytes: u64) {
    if rule >= MAX_RULES {
        return;
    }
    if let Some(c) = FW_RULE_CNT.get_ptr_mut(slot * MAX_RULES + rule) {
        // SAFETY: as above.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

/// `count_rule` for rule `index` (slot * MAX_RULES + rule); nothing for
/// an index past the rules (`conntrack::NO_RULE_INDEX`: the default).
#[inline(always)]
pub fn count_index(index: u32, bytes: u64) {
    if index < firewall_common::POLICY_SLOTS * MAX_RULES {
        count_rule(index / MAX_RULES, index % MAX_RULES, bytes);
    }
}
