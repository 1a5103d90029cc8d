//! What the controller keeps in the kernel so that the data plane outlives
//! it: who runs it, which policy file, per interface how it is attached,
//! and the counter bases that carry rule counters across reloads.

/// Bumped whenever a shared type, a map's meaning or what the compiler
/// writes into the policy maps changes: a controller adopts a pinned data
/// plane only when this matches (map sizes are checked separately when the
/// maps are reopened). Between its install and its program swap, the old
/// programs judge the new controller's policy, so that too must agree.
pub const LAYOUT_VERSION: u32 = 9;

/// Longest policy path kept in `Control` (longer ones are cut).
pub const POLICY_PATH_LEN: usize = 256;

/// `FW_CONTROL[0]`, shared by every interface of one firewall.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Control {
    /// `LAYOUT_VERSION` of the build that created the maps.
    pub layout: u32,
    /// Process id of the controller that last took this firewall over.
    pub pid: u32,
    /// `SO_NETNS_COOKIE` of the network namespace (inode numbers are reused
    /// once a namespace dies; cookies are not).
    pub netns_cookie: u64,
    /// Unix seconds: when the data plane was first attached (reason
    /// counters and flows count from here).
    pub created_unix: u64,
    /// Unix seconds: when the current controller took over.
    pub controller_unix: u64,
    /// Unix seconds of the last successful (re)load.
    pub loaded_unix: u64,
    /// The policy file, NUL-terminated.
    pub policy_path: [u8; POLICY_PATH_LEN],
}

impl Default for Control {
    fn default() -> Self {
        Self { layout: 0, pid: 0, netns_cookie: 0, created_unix: 0, controller_unix: 0, loaded_unix: 0, policy_path: [0; POLICY_PATH_LEN] }
    }
}

/// `FW_IFACE[0]`, one per interface (each interface has its own programs
/// and counters; policy, connection table and keys are shared).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IfaceInfo {
    pub ifindex: u32,
    /// `MODE_*` the XDP program is attached in.
    pub mode: u32,
    /// Inode of the network namespace (ifindexes are per namespace).
    pub netns_ino: u64,
    /// Unix seconds of the attachment.
    pub attached_unix: u64,
}

pub const MODE_NATIVE: u32 = 1;
pub const MODE_GENERIC: u32 = 2;

/// `FW_RULE_BASE[slot * MAX_RULES + rule]`, per interface: what the rule
/// had counted under earlier policies (a rule keeps its counters across
/// reloads while its name stays), and since when it counts. The shown
/// count is `packets` plus, while `pending_from` is set, the old slot's
/// counter it carries on (still counting until the flip's grace is over),
/// plus the per-CPU `FW_RULE_CNT` entry. The controller folds the old
/// counter into `packets` and clears `pending_from` in one map update, so
/// a reader sees the same total before and after: it never goes down.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RuleBase {
    pub packets: u64,
    pub bytes: u64,
    /// Unix seconds the counter last started from zero.
    pub since_unix: u64,
    /// 1 + the `FW_RULE_CNT` index of the old slot's rule, or 0.
    pub pending_from: u32,
    pub _pad: u32,
}
