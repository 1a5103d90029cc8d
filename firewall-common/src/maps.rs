//! Names of the maps in the eBPF object. Kernel map names are cut at 15
//! bytes, so these stay short enough to be found again by name from a map id.

pub const ACTIVE: &str = "FW_ACTIVE";
pub const POLICY: &str = "FW_POLICY";
pub const NODES: &str = "FW_NODES";
pub const LEAF_REFS: &str = "FW_LEAF_REFS";
pub const BOXES: &str = "FW_BOXES";
pub const RULE_META: &str = "FW_RULE_META";
pub const RULE_COUNTERS: &str = "FW_RULE_CNT";
pub const REASON_COUNTERS: &str = "FW_REASON_CNT";
pub const FLOWS: &str = "FW_FLOWS";
/// Flows opened from outside and not proven yet (`MAX_REMOTE_FLOWS`).
pub const REMOTE_FLOWS: &str = "FW_REMOTE_FLOWS";
/// Per `flow_hint` slot, how many keys of `FLOWS` hash there (u64): a
/// SYN whose slot is 0 is not looked up there. Mappable: the controller
/// takes its deletes off with atomic subtractions.
pub const FLOW_HINTS: &str = "FW_FLOW_HINT";
/// The host's own addresses (written by the controller): the only
/// destinations a cookie SYN-ACK is sent for.
pub const LOCAL_ADDRS: &str = "FW_LOCAL_ADDRS";
/// Data-plane status flags (`STATUS_*`), set by the programs.
pub const STATUS: &str = "FW_STATUS";
/// Cookie keys: pinned with the rest (mode 0600, root only) so that a
/// restarted controller validates the cookies of handshakes in flight; the
/// controller's own descriptor is write-only.
pub const COOKIE_KEY: &str = "FW_COOKIE_KEY";
pub const COOKIE_CONFIG: &str = "FW_COOKIE_CFG";
/// Per service (slot * MAX_RULES + rule): whether `auto` turned cookies on.
pub const COOKIE_ON: &str = "FW_COOKIE_ON";
pub const COOKIE_COUNTERS: &str = "FW_COOKIE_CNT";
/// Per rule with a `limit` (slot * MAX_RULES + rule), per CPU: its
/// refusals (`LimitCounters`).
pub const LIMIT_COUNTERS: &str = "FW_LIMIT_CNT";
/// Per slot and destination port: 1 + the first cookie rule for the port.
pub const COOKIE_PORT: &str = "FW_COOKIE_PORT";
/// Per slot, a `PortBits`: the ports where a TCP SYN may be accepted by
/// anything but an `always` cookie service (a rule, or the default). A SYN
/// to any other port is looked up in the main table only: a SYN flood to a
/// dropped or `always` port costs one flow lookup, not two. An unproven
/// flow it misses (an `always` service's fallback to the host, a flow of
/// an earlier policy) only makes the SYN new to the rules, which drop it
/// or answer it with a cookie; the flow is never duplicated (the insert is
/// BPF_NOEXIST into the same table).
pub const SYN_PORTS: &str = "FW_SYN_PORTS";
/// Elements of every named set (`sets::SetAddr` -> `SetElem`, an LPM trie).
pub const SET_ELEMS: &str = "FW_SET_ELEMS";
/// Single-address elements of every set (`SetHost` -> `SetElem`, a hash
/// map: one lookup instead of a trie walk). Prefixes are in `SET_ELEMS`.
pub const SET_HOSTS: &str = "FW_SET_HOSTS";
/// Per set id, how many prefixes `SET_ELEMS` holds (0: the trie is skipped).
pub const SET_PREFIXES: &str = "FW_SET_PREFIX";
/// Per set id, the ports of a port set (`PortBits`).
pub const PORT_SETS: &str = "FW_PORT_SETS";
/// The set registry (`SetDef` per id; read by no program).
pub const SETS: &str = "FW_SETS";
/// Per slot and rule, its `RuleLimit`.
pub const RULE_LIMIT: &str = "FW_RULE_LIMIT";
/// Rate-limit state per rule and source prefix (`BucketKey` -> next
/// theoretical arrival, CLOCK_MONOTONIC ns).
pub const BUCKETS: &str = "FW_BUCKETS";
/// Proven open TCP connections per rule with `max_conns` and source
/// prefix (`BucketKey` -> count).
pub const CONNS: &str = "FW_CONNS";
/// `CLOCK_MONOTONIC` ns of the controller's last sweep (one `u64`).
pub const SWEPT: &str = "FW_SWEPT";
/// Tail-call targets of the XDP program (`PROG_*`).
pub const PROGRAMS: &str = "FW_PROGS";

/// Drop events (`Event`), read by the controller.
pub const EVENTS: &str = "FW_EVENTS";
/// `EventConfig`, from the policy.
pub const EVENT_CONFIG: &str = "FW_EVENT_CFG";
/// Per-CPU `EventState` of one object (not pinned).
pub const EVENT_STATE: &str = "FW_EVENT_ST";
/// Per-CPU: the reason the event program is called for (not pinned).
pub const EVENT_ARG: &str = "FW_EVENT_ARG";

/// `Control` of the firewall (shared by its interfaces).
pub const CONTROL: &str = "FW_CONTROL";
/// `IfaceInfo` of one interface's programs.
pub const IFACE: &str = "FW_IFACE";
/// `RuleBase` per rule of each slot, per interface.
pub const RULE_BASE: &str = "FW_RULE_BASE";

/// Maps every interface of one firewall shares (one policy, one connection
/// table, one pair of cookie keys): pinned once per firewall.
pub const SHARED: &[&str] = &[
    ACTIVE,
    POLICY,
    NODES,
    LEAF_REFS,
    BOXES,
    RULE_META,
    FLOWS,
    FLOW_HINTS,
    REMOTE_FLOWS,
    LOCAL_ADDRS,
    COOKIE_KEY,
    COOKIE_ON,
    COOKIE_PORT,
    SYN_PORTS,
    SET_ELEMS,
    SET_HOSTS,
    SET_PREFIXES,
    PORT_SETS,
    SETS,
    RULE_LIMIT,
    BUCKETS,
    CONNS,
    SWEPT,
    CONTROL,
    EVENTS,
    EVENT_CONFIG,
];

/// Maps of one interface's programs: its counters, its cookie settings
/// (MSS follows its MTU), its driver's status. `PROGRAMS` is pinned apart
/// (each program object has its own; see the loader).
pub const PER_IFACE: &[&str] = &[RULE_COUNTERS, REASON_COUNTERS, COOKIE_COUNTERS, LIMIT_COUNTERS, COOKIE_CONFIG, STATUS, RULE_BASE, IFACE];

/// Maps the XDP program need not reference (`SETS` only its bans do):
/// bound to it so that another process finds them from its map ids.
pub const BOUND: &[&str] = &[RULE_META, CONTROL, IFACE, RULE_BASE, SETS];

/// Every map `stats` opens.
pub const ALL: &[&str] = &[
    ACTIVE,
    POLICY,
    RULE_META,
    RULE_COUNTERS,
    REASON_COUNTERS,
    FLOWS,
    REMOTE_FLOWS,
    COOKIE_ON,
    COOKIE_COUNTERS,
    LIMIT_COUNTERS,
    CONTROL,
    IFACE,
    RULE_BASE,
    SET_ELEMS,
    SET_HOSTS,
    SET_PREFIXES,
    PORT_SETS,
    SETS,
];

/// Indexes in `PROGRAMS`.
pub const PROG_COOKIE_SYN: u32 = 0;
pub const PROG_COOKIE_ACK: u32 = 1;
pub const PROG_EVENT: u32 = 2;
/// Records a drop event (tail-called from the XDP programs).
pub const EVENT_PROGRAM: &str = "fw_event";
/// Programs tail-called from the XDP program, by index.
pub const COOKIE_SYN_PROGRAM: &str = "fw_cookie_syn";
pub const COOKIE_ACK_PROGRAM: &str = "fw_cookie_ack";
/// XDP program for the other end of a veth pair (see its comment).
pub const PASS_PROGRAM: &str = "xdp_pass";
/// TC ingress program that hands validated cookie ACKs to the listener.
pub const INGRESS_PROGRAM: &str = "fw_ingress";

/// Name of the XDP program (as the kernel reports it).
pub const XDP_PROGRAM: &str = "firewall";
/// Name of the TC egress program (kernel names are cut at 15 bytes).
pub const EGRESS_PROGRAM: &str = "fw_egress";

/// The benchmark helper object (`firewall-bench`, not part of the product):
/// its programs and its one counter map.
pub mod bench {
    /// Rewrites each frame's source, then XDP_TX: with BPF_PROG_TEST_RUN's
    /// live-frames mode, a packet generator into a veth.
    pub const GEN_PROGRAM: &str = "bench_gen";
    /// Counts and drops every frame: the earliest drop a receiver can do.
    pub const DROP_PROGRAM: &str = "bench_drop";
    /// Counts and drops frames to the spoofed range; passes the rest.
    pub const SINK_PROGRAM: &str = "bench_sink";
    /// Turns each SYN into a SYN-ACK in place and sends it back (XDP_TX):
    /// the physical limit of a SYN-ACK responder.
    pub const REFLECT_PROGRAM: &str = "bench_reflect";
    /// Per-CPU frame counter of `bench_drop` / `bench_sink` (index 0).
    pub const COUNT: &str = "BENCH_COUNT";
    /// The frame `bench_gen` sends (its first bytes; one entry).
    pub const FRAME: &str = "BENCH_FRAME";
    /// Longest frame `bench_gen` can send.
    pub const MAX_FRAME: usize = 128;
    /// The generator's source range: 10.99.0.0/16, the last two bytes
    /// taken from a per-frame sequence number.
    pub const SPOOF_NET: [u8; 2] = [10, 99];
}
