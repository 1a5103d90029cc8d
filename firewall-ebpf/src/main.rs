//! The firewall's XDP program: parse, classify against the compiled policy,
//! count, give the verdict. Maps live here; the work is in the modules.
#![no_std]
#![no_main]

mod counters;
mod parse;
mod rules;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use firewall_common::{
    ACTION_ACCEPT, Active, Counter, MAX_BOXES, MAX_LEAF_REFS, MAX_NODES, MAX_RULES, MatchBox,
    Node, POLICY_SLOTS, PolicyHeader, Reason, RuleMeta, reason::REASON_COUNT,
};

// Map names must equal the constants in `firewall_common::maps` (checked by
// the loader test `object_has_every_map`).
#[map(name = "FW_ACTIVE")]
static FW_ACTIVE: Array<Active> = Array::with_max_entries(1, 0);
#[map(name = "FW_POLICY")]
static FW_POLICY: Array<PolicyHeader> = Array::with_max_entries(POLICY_SLOTS, 0);
#[map(name = "FW_NODES")]
static FW_NODES: Array<Node> = Array::with_max_entries(POLICY_SLOTS * MAX_NODES, 0);
#[map(name = "FW_LEAF_REFS")]
static FW_LEAF_REFS: Array<u32> = Array::with_max_entries(POLICY_SLOTS * MAX_LEAF_REFS, 0);
#[map(name = "FW_BOXES")]
static FW_BOXES: Array<MatchBox> = Array::with_max_entries(POLICY_SLOTS * MAX_BOXES, 0);
#[map(name = "FW_RULE_META")]
static FW_RULE_META: Array<RuleMeta> = Array::with_max_entries(POLICY_SLOTS * MAX_RULES, 0);
#[map(name = "FW_RULE_CNT")]
static FW_RULE_CNT: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(POLICY_SLOTS * MAX_RULES, 0);
#[map(name = "FW_REASON_CNT")]
static FW_REASON_CNT: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

#[xdp]
pub fn firewall(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let reason = decide(&ctx, len);
    counters::count_reason(reason, len);
    if reason.drops() { XDP_DROP } else { XDP_PASS }
}

/// The verdict for one frame, as the reason it is counted under.
#[inline(always)]
fn decide(ctx: &XdpContext, len: u64) -> Reason {
    let packet = match parse::parse(ctx) {
        Ok(Some(packet)) => packet,
        Ok(None) => return Reason::NonIp,
        Err(reason) => return reason,
    };
    // Read the slot once: the whole packet is judged by one policy.
    let Some(active) = FW_ACTIVE.get(0) else {
        return Reason::Internal;
    };
    let slot = active.slot;
    if slot >= POLICY_SLOTS {
        return Reason::Internal;
    }
    let Some(header) = FW_POLICY.get(slot) else {
        return Reason::Internal;
    };
    if header.loaded == 0 {
        return Reason::NoPolicy;
    }
    if packet.fragment {
        return if header.fragment_action == ACTION_ACCEPT {
            Reason::FragmentAccept
        } else {
            Reason::FragmentDrop
        };
    }
    match rules::classify(slot, header.root, &packet.key) {
        Ok(Some(matched)) => {
            counters::count_rule(slot, matched.rule, len);
            if matched.action == ACTION_ACCEPT {
                Reason::RuleAccept
            } else {
                Reason::RuleDrop
            }
        }
        Ok(None) => {
            if header.default_action == ACTION_ACCEPT {
                Reason::DefaultAccept
            } else {
                Reason::DefaultDrop
            }
        }
        Err(()) => Reason::Internal,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
