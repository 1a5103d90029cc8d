//! The firewall's XDP program: parse, classify against the compiled policy,
//! count, give the verdict. Maps live here; the work is in the modules.
#![no_std]
#![no_main]
// `limit::add`: the one atomic add, in BPF assembly.
#![feature(asm_experimental_arch)]

mod conntrack;
mod cookie;
mod counters;
mod egress;
mod events;
mod handoff;
mod ingress;
mod limit;
mod parse;
mod rules;

use aya_ebpf::{
    bindings::{
        TC_ACT_OK,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use firewall_common::{
    Active, Control, CookieConfig, CookieCounters, CookieKey, Counter, LimitCounters, EVENT_CLASSES, EVENT_RING_BYTES, EventArg,
    EventConfig, EventState, Flow, FlowKey, IfaceInfo, MAX_BOXES, MAX_FLOWS, MAX_LEAF_REFS, MAX_LOCAL_ADDRS, MAX_NODES,
    MAX_REMOTE_FLOWS, MAX_RULES, MAX_SET_ELEMENTS, MAX_SETS, MatchBox, Node, POLICY_SLOTS, PORTS, PolicyHeader, PortBits, RuleBase, RuleLimit, BucketKey, MAX_BUCKETS, RuleMeta, SetAddr, SetDef, SetElem, SetHost, U128,
    reason::REASON_COUNT,
};
use parse::Frame;

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
/// Per-CPU parsed packet (`parse::parse_once`) and a variant of it for the
/// rules (`parse::SCRATCH_*`). Read back from a map, every field is unknown
/// to the verifier: what follows the parse is checked once, not once per
/// header layout (a rule walk checked per path took ~660,000 instructions
/// of the 1M budget), and tail-called programs find the packet there.
#[map(name = "FW_SCRATCH")]
static FW_SCRATCH: PerCpuArray<parse::Packet> = PerCpuArray::with_max_entries(2, 0);
/// Per-CPU result of `parse::tcp_options` (see there for why a map).
#[map(name = "FW_OPTS")]
static FW_OPTS: PerCpuArray<parse::OptionPositions> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "FW_FLOWS")]
static FW_FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(MAX_FLOWS, 0);
/// Per `flow_hint` slot, how many keys of `FW_FLOWS` hash there
/// (a SYN whose slot is 0 skips the table: `conntrack::track_tcp`). Mappable: the
/// controller's deletes take one off with an atomic subtraction.
#[map(name = "FW_FLOW_HINT")]
static FW_FLOW_HINT: Array<u64> = Array::with_max_entries(firewall_common::FLOW_HINT_SLOTS, BPF_F_MMAPABLE);
/// Flows opened from outside and not proven yet: a spoofed flood churns
/// this table, never `FW_FLOWS` (see `MAX_REMOTE_FLOWS`).
#[map(name = "FW_REMOTE_FLOWS")]
static FW_REMOTE_FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(MAX_REMOTE_FLOWS, 0);
/// Write-only through the controller's descriptor (BPF_F_WRONLY): a
/// leaked descriptor cannot read the cookie keys back. (CAP_SYS_ADMIN can
/// still open any map by id read-write.)
#[map(name = "FW_COOKIE_KEY")]
static FW_COOKIE_KEY: Array<CookieKey> = Array::with_max_entries(2, BPF_F_WRONLY);
/// The host's addresses (controller-written): cookie SYN-ACKs are sent
/// for these destinations only.
#[map(name = "FW_LOCAL_ADDRS")]
static FW_LOCAL_ADDRS: HashMap<U128, u32> = HashMap::with_max_entries(MAX_LOCAL_ADDRS, 0);
/// `STATUS_*` flags the programs raise for the controller.
#[map(name = "FW_STATUS")]
static FW_STATUS: Array<u32> = Array::with_max_entries(1, 0);
#[map(name = "FW_COOKIE_CFG")]
static FW_COOKIE_CFG: Array<CookieConfig> = Array::with_max_entries(1, 0);
#[map(name = "FW_COOKIE_ON")]
static FW_COOKIE_ON: Array<u32> = Array::with_max_entries(POLICY_SLOTS * MAX_RULES, 0);
#[map(name = "FW_COOKIE_CNT")]
static FW_COOKIE_CNT: PerCpuArray<CookieCounters> =
    PerCpuArray::with_max_entries(POLICY_SLOTS * MAX_RULES, 0);
#[map(name = "FW_LIMIT_CNT")]
static FW_LIMIT_CNT: PerCpuArray<LimitCounters> = PerCpuArray::with_max_entries(POLICY_SLOTS * MAX_RULES, 0);
#[map(name = "FW_COOKIE_PORT")]
static FW_COOKIE_PORT: Array<u32> = Array::with_max_entries(POLICY_SLOTS * PORTS, 0);
#[map(name = "FW_SYN_PORTS")]
static FW_SYN_PORTS: Array<PortBits> = Array::with_max_entries(POLICY_SLOTS, 0);
/// Elements of every named set (see `firewall_common::sets`).
#[map(name = "FW_SET_ELEMS")]
static FW_SET_ELEMS: LpmTrie<SetAddr, SetElem> = LpmTrie::with_max_entries(MAX_SET_ELEMENTS, 0);
#[map(name = "FW_SET_HOSTS")]
static FW_SET_HOSTS: HashMap<SetHost, SetElem> = HashMap::with_max_entries(MAX_SET_ELEMENTS, BPF_F_NO_PREALLOC);
#[map(name = "FW_PORT_SETS")]
static FW_PORT_SETS: Array<PortBits> = Array::with_max_entries(MAX_SETS, 0);
#[map(name = "FW_SET_PREFIX")]
static FW_SET_PREFIX: Array<u64> = Array::with_max_entries(MAX_SETS, BPF_F_MMAPABLE);
#[map(name = "FW_RULE_LIMIT")]
static FW_RULE_LIMIT: Array<RuleLimit> = Array::with_max_entries(POLICY_SLOTS * MAX_RULES, 0);
#[map(name = "FW_BUCKETS")]
static FW_BUCKETS: LruHashMap<BucketKey, u64> = LruHashMap::with_max_entries(MAX_BUCKETS, 0);
#[map(name = "FW_SWEPT")]
static FW_SWEPT: Array<u64> = Array::with_max_entries(1, 0);
#[map(name = "FW_CONNS")]
static FW_CONNS: LruHashMap<BucketKey, u64> = LruHashMap::with_max_entries(firewall_common::MAX_CONN_COUNTS, 0);
/// Per-CPU keys of a set lookup (`rules::in_set`) and of a ban.
#[map(name = "FW_SET_KEY")]
static FW_SET_KEY: PerCpuArray<rules::SetKeys> = PerCpuArray::with_max_entries(1, 0);
/// The policy slot and rule a tail-called cookie program works for.
/// Per-CPU slots for the limits' map keys and a ban's element.
#[map(name = "FW_LIMIT_KEY")]
static FW_LIMIT_KEY: PerCpuArray<BucketKey> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "FW_BAN_ELEM")]
static FW_BAN_ELEM: PerCpuArray<SetElem> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "FW_COOKIE_ARG")]
static FW_COOKIE_ARG: PerCpuArray<[u32; 2]> = PerCpuArray::with_max_entries(1, 0);
// Read by no program: the controller's records, bound to the XDP program
// by the loader so that they live (and are found) with it.
#[map(name = "FW_CONTROL")]
static FW_CONTROL: Array<Control> = Array::with_max_entries(1, 0);
#[map(name = "FW_IFACE")]
static FW_IFACE: Array<IfaceInfo> = Array::with_max_entries(1, 0);
#[map(name = "FW_SETS")]
static FW_SETS: Array<SetDef> = Array::with_max_entries(MAX_SETS, 0);
#[map(name = "FW_RULE_BASE")]
static FW_RULE_BASE: Array<RuleBase> = Array::with_max_entries(POLICY_SLOTS * MAX_RULES, 0);
/// Programs the XDP program tail-calls (`maps::PROG_*`): each has a
/// verifier budget of its own.
#[map(name = "FW_PROGS")]
static FW_PROGS: ProgramArray = ProgramArray::with_max_entries(3, 0);
#[map(name = "FW_EVENTS")]
static FW_EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);
#[map(name = "FW_EVENT_CFG")]
static FW_EVENT_CFG: Array<EventConfig> = Array::with_max_entries(1, 0);
#[map(name = "FW_EVENT_ST")]
static FW_EVENT_STATE: PerCpuArray<EventState> = PerCpuArray::with_max_entries(EVENT_CLASSES, 0);
#[map(name = "FW_EVENT_ARG")]
static FW_EVENT_ARG: PerCpuArray<EventArg> = PerCpuArray::with_max_entries(1, 0);

/// `BPF_F_NO_PREALLOC`: a set's hash map takes memory per element, not
/// for `MAX_SET_ELEMENTS` up front.
const BPF_F_NO_PREALLOC: u32 = 1;
/// `BPF_F_MMAPABLE`: userspace may map the array's memory.
const BPF_F_MMAPABLE: u32 = 1 << 10;
/// `BPF_F_WRONLY` (include/uapi/linux/bpf.h): userspace may only write.
const BPF_F_WRONLY: u32 = 1 << 4;

#[xdp]
pub fn firewall(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    let frame = Frame { start, end, wire_len: (end - start) as u64, ctx: ctx.ctx as *mut _, local_socket: false };
    let len = frame.wire_len;
    let reason = ingress::decide(&ctx, &frame);
    counters::count_reason(reason, len);
    let action = if reason.drops() { XDP_DROP } else { XDP_PASS };
    events::hand_over(&ctx, reason, action);
    action
}

/// Tail-called for a SYN that a cookie service accepted (`ingress::cookie_syn`).
#[xdp]
pub fn fw_cookie_syn(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (reason, action) = ingress::cookie_syn::answer(&ctx);
    counters::count_reason(reason, len);
    action
}

/// Tail-called for an ACK of no flow to a cookie port (`ingress::cookie_ack`).
#[xdp]
pub fn fw_cookie_ack(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let reason = ingress::cookie_ack::judge(&ctx);
    counters::count_reason(reason, len);
    let action = if reason.drops() { XDP_DROP } else { XDP_PASS };
    events::hand_over(&ctx, reason, action);
    action
}

/// Tail-called for a verdict to record (see `events::hand_over`): records
/// it, then gives that verdict.
#[xdp]
pub fn fw_event(ctx: XdpContext) -> u32 {
    events::record(&ctx)
}

/// For the far end of a veth pair: in native mode a veth delivers the
/// frames its peer sends with XDP_TX (cookie SYN-ACKs) only while it runs
/// an XDP program itself (TOOLCHAIN.md, veth facts). Passes everything.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// TC ingress: hands an ACK whose cookie XDP validated (marked with XDP
/// metadata) to its listener; every other packet passes untouched.
#[classifier]
pub fn fw_ingress(ctx: TcContext) -> i32 {
    if let Some(reason) = handoff::run(&ctx) {
        counters::count_reason(reason, ctx.len() as u64);
    }
    TC_ACT_OK
}

/// Egress: records the flows the host opens and advances every flow on
/// its outbound packets, so that replies are known on ingress. Never drops.
#[classifier]
pub fn fw_egress(ctx: TcContext) -> i32 {
    let frame = Frame::of_skb(&ctx);
    let reason = egress::track(&frame);
    counters::count_reason(reason, frame.wire_len);
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
