//! Per-source rate limits of rules (`limit = { rate, burst, per }`): GCRA,
//! one 8-byte value per rule and source prefix. Checked when a rule
//! accepts a new connection or flow, before anything is created for it.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use firewall_common::{BucketKey, MAX_RULES, U128};

use crate::{FW_BUCKETS, FW_RULE_LIMIT};

/// Whether `src` may open one more connection through `rule` now; takes
/// the token when it may. The update is not atomic (the BPF target here
/// has no compare-and-swap): CPUs racing on one bucket may each pass, so
/// a source whose packets spread over N CPUs may get up to N times its
/// rate at worst.
#[inline(always)]
pub fn allow(slot: u32, rule: u32, src: &U128) -> bool {
    let index = slot * MAX_RULES + rule;
    let Some(limit) = FW_RULE_LIMIT.get(index) else { return true };
    let v4 = firewall_common::family_of(src) == firewall_common::SET_FAMILY_V4;
    let bits = if v4 { 96 + limit.v4_prefix as u32 } else { limit.v6_prefix as u32 };
    let key = BucketKey { rule: index, epoch: limit.epoch, src: masked(src, bits) };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    match FW_BUCKETS.get_ptr_mut(&key) {
        Some(tat) => {
            // SAFETY: a value of this map; a racing CPU only makes the
            // limit looser (see above).
            let next = unsafe { *tat }.max(now);
            if next - now > limit.tolerance_ns {
                return false;
            }
            unsafe { *tat = next + limit.interval_ns };
            true
        }
        None => {
            let _ = FW_BUCKETS.insert(&key, &(now + limit.interval_ns), 0);
            true
        }
    }
}

/// `a` with all but its first `bits` bits cleared.
#[inline(always)]
fn masked(a: &U128, bits: u32) -> U128 {
    let keep = |v: u64, n: u32| if n == 0 { 0 } else if n >= 64 { v } else { v & (u64::MAX << (64 - n)) };
    U128 { hi: keep(a.hi, bits.min(64)), lo: keep(a.lo, bits.saturating_sub(64)) }
}
