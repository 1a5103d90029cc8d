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

/// Every map the controller pins and `stats` opens.
pub const ALL: &[&str] = &[
    ACTIVE,
    POLICY,
    NODES,
    LEAF_REFS,
    BOXES,
    RULE_META,
    RULE_COUNTERS,
    REASON_COUNTERS,
    FLOWS,
];

/// Name of the XDP program (as the kernel reports it).
pub const XDP_PROGRAM: &str = "firewall";
/// Name of the TC egress program (kernel names are cut at 15 bytes).
pub const EGRESS_PROGRAM: &str = "fw_egress";
