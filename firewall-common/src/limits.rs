//! Sizes of the policy maps. The controller rejects a policy that does not
//! fit with an error that names the limit; the XDP program's loops are
//! bounded by the same numbers.

/// Most rules a policy may hold.
pub const MAX_RULES: u32 = 16_384;
/// Most match boxes: a rule whose fields hold lists becomes one box per
/// combination of list items (src x dst x sport x dport).
pub const MAX_BOXES: u32 = 65_536;
/// Most decision-tree nodes per policy slot (32 bytes each).
pub const MAX_NODES: u32 = 262_144;
/// Most leaf entries (4-byte box references) per policy slot. A decision
/// tree copies a box into every leaf whose region it overlaps; random
/// 10,000-rule policies need about 40 copies per box.
pub const MAX_LEAF_REFS: u32 = 2_097_152;
/// Most boxes one leaf may hold: the XDP program scans a leaf linearly.
pub const MAX_LEAF_BOXES: u32 = 16;
/// Deepest path from the root to a leaf.
pub const MAX_TREE_DEPTH: u32 = 40;
/// Bytes of a rule name kept in the kernel for `stats` (longer names are rejected).
pub const RULE_NAME_LEN: usize = 48;
/// The policy lives twice in every map: the XDP program reads the slot that
/// `ACTIVE` names, the controller writes the other one and then flips.
pub const POLICY_SLOTS: u32 = 2;
/// Most VLAN tags (802.1Q / 802.1ad) parsed before the frame is malformed.
pub const MAX_VLAN_TAGS: u32 = 2;
/// Most IPv6 extension headers skipped before the packet is malformed.
pub const MAX_IPV6_EXT_HEADERS: u32 = 6;
/// Per-source rate-limit buckets of all rules (an LRU: a flood of
/// sources evicts the oldest, which start again with a full burst).
pub const MAX_BUCKETS: u32 = 262_144;
/// Connection counts of sources under a `max_conns` (an LRU: only proven
/// connections make one, so no flood of forged packets churns it).
pub const MAX_CONN_COUNTS: u32 = 262_144;
