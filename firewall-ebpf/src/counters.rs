//! Per-CPU packet and byte counters: one per verdict reason, one per rule.

use firewall_common::{MAX_RULES, Reason};

use crate::{FW_LIMIT_CNT, FW_REASON_CNT, FW_RULE_CNT};

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

/// A refusal by the limits of rule `index` (slot * MAX_RULES + rule):
/// `reason` is `RateLimited` or `ConnLimited`.
#[inline(always)]
pub fn count_refused(index: u32, reason: Reason) {
    if let Some(c) = FW_LIMIT_CNT.get_ptr_mut(index) {
        // SAFETY: as above.
        unsafe {
            if reason == Reason::RateLimited {
                (*c).rate_limited += 1;
            } else {
                (*c).conn_limited += 1;
            }
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

/// Adds `v` to `*n` atomically (wrapping: `u64::MAX` takes one): counts
/// several CPUs change. 64-bit, the width the BPF target has atomic adds
/// of here.
#[inline(always)]
pub fn atomic_add(n: *mut u64, v: u64) {
    // SAFETY: `n` is a map value (8-byte aligned: hash values follow keys
    // rounded up to 8, array values start aligned), alive while the
    // program runs; the add is one atomic instruction whose result is not
    // read (what the BPF target has without compare-and-swap). Rust has no
    // atomic add for this target: it wants compare-and-swap for every
    // read-modify-write.
    unsafe { core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) n, in(reg) v, options(nostack)) };
}

