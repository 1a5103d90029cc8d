//! Named address sets (`[[set]]` in the policy, `firewall set ...` at run
//! time). All sets share one LPM trie, `FW_SET_ELEMS`, keyed by the set's
//! id followed by the address: a lookup costs O(prefix length) whatever
//! the set's size, and sets are created and dropped without new maps.
//! `FW_SETS` is the registry: which id holds which set, read and written
//! by the controller and the `set` commands, never by the programs.

use crate::U128;

/// Most sets a firewall holds (ids 0..MAX_SETS; `MatchBox` keeps id + 1).
pub const MAX_SETS: u32 = 32;
/// Most elements of all sets together (the trie's `max_entries`).
pub const MAX_SET_ELEMENTS: u32 = 4_194_304;
/// Most elements one set may be declared with (`size`).
pub const MAX_SET_SIZE: u32 = 2_097_152;
/// Bytes of a set name, NUL-terminated in `SetDef`.
pub const SET_NAME_LEN: usize = 32;
/// Prefix bits of a key before the address: the set id, then the family
/// (so that no IPv6 prefix, not even `::/0`, covers an IPv4 address).
pub const SET_ID_BITS: u32 = 32 + 8;
/// Prefix length of an exact lookup: the id, family and all 128 address bits.
pub const SET_KEY_BITS: u32 = SET_ID_BITS + 128;
/// `SetAddr::family`.
pub const SET_FAMILY_V4: u8 = 4;
pub const SET_FAMILY_V6: u8 = 6;

/// `SetDef::kind`: IPv4 and IPv6 addresses and prefixes (v4 mapped into
/// `::ffff:0:0/96`, as in the rules).
pub const SET_KIND_ADDR: u8 = 1;
/// `SetDef::kind`: TCP/UDP ports, one bit each in `FW_PORT_SETS[id]` (a
/// `PortBits`): one lookup whatever the set holds; no timeouts.
pub const SET_KIND_PORT: u8 = 2;

/// The data of an `FW_SET_ELEMS` key, big-endian so that the trie's
/// bit order is the set id's, then the address's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SetAddr {
    pub set: [u8; 4],
    pub family: u8,
    /// The address's high and low 64 bits.
    pub hi: [u8; 8],
    pub lo: [u8; 8],
}

impl SetAddr {
    #[inline(always)]
    pub fn new(set: u32, addr: &U128) -> Self {
        Self { set: set.to_be_bytes(), family: family_of(addr), hi: addr.hi.to_be_bytes(), lo: addr.lo.to_be_bytes() }
    }

    pub fn set_id(&self) -> u32 {
        u32::from_be_bytes(self.set)
    }

    pub fn addr(&self) -> U128 {
        U128 { hi: u64::from_be_bytes(self.hi), lo: u64::from_be_bytes(self.lo) }
    }
}

/// A `FW_SET_HOSTS` key: one single address of a set. Native order and
/// aligned (a hash key needs no bit order): the program writes it with
/// four stores and the kernel hashes its 24 bytes with `jhash2`, where
/// `SetAddr`'s 21 big-endian bytes took a byte store each and the
/// byte-wise `jhash` (about 10 ns of a set lookup's 20). The family is
/// kept so that an IPv6 element in `::ffff:0:0/96` stays an IPv6 one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SetHost {
    pub hi: u64,
    pub lo: u64,
    pub set: u32,
    /// `SET_FAMILY_V4` or `SET_FAMILY_V6`.
    pub family: u32,
}

impl SetHost {
    #[inline(always)]
    pub fn new(set: u32, addr: &U128) -> Self {
        Self { hi: addr.hi, lo: addr.lo, set, family: family_of(addr) as u32 }
    }

    pub fn addr(&self) -> U128 {
        U128 { hi: self.hi, lo: self.lo }
    }
}

/// `SET_FAMILY_V4` for an address in `::ffff:0:0/96` (how the rules' keys
/// hold IPv4), else `SET_FAMILY_V6`.
#[inline(always)]
pub fn family_of(addr: &U128) -> u8 {
    if addr.hi == 0 && addr.lo >> 32 == 0xffff { SET_FAMILY_V4 } else { SET_FAMILY_V6 }
}

/// An `FW_SET_ELEMS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetElem {
    /// CLOCK_MONOTONIC ns (`bpf_ktime_get_ns`) after which the element no
    /// longer matches; 0: never expires. Expired elements are deleted by
    /// the controller's sweep and by `set add` when the set is full.
    pub expires_ns: u64,
    /// The element's own key length: a trie lookup returns the longest
    /// prefix that covers the key, so userspace compares this to tell an
    /// exact hit from a covering element.
    pub prefix_len: u32,
    pub _pad: u32,
}

/// `SetDef::in_use`: free; live (found by name); retiring (a replaced
/// set, cleared after the grace); pending (written by a reload that has
/// not switched yet, found by no name).
pub const SET_FREE: u8 = 0;
pub const SET_LIVE: u8 = 1;
pub const SET_RETIRING: u8 = 2;
pub const SET_PENDING: u8 = 3;

/// `FW_SETS[id]`: one set of the registry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetDef {
    pub name: [u8; SET_NAME_LEN],
    /// `SET_FREE`, `SET_LIVE`, `SET_RETIRING` or `SET_PENDING`.
    pub in_use: u8,
    pub kind: u8,
    /// 1: an element with a timeout was ever added (the sweep visits it,
    /// as it visits every set with a `timeout`).
    pub expiring: u8,
    pub _pad: u8,
    /// Default timeout of a run-time element, seconds (0: none).
    pub timeout_secs: u32,
    /// Most elements (`size`).
    pub max: u32,
    /// Elements stored, expired ones included until swept. A ban adds to
    /// it from the data plane without a lock; the sweep recounts it.
    pub count: u32,
    /// Hash of the policy's definition (kind, size, timeout, elements):
    /// a reload keeps the set's elements only when it is unchanged.
    pub def_hash: u64,
}

impl Default for SetDef {
    fn default() -> Self {
        Self { name: [0; SET_NAME_LEN], in_use: 0, kind: 0, expiring: 0, _pad: 0, timeout_secs: 0, max: 0, count: 0, def_hash: 0 }
    }
}

impl SetDef {
    pub fn name_str(&self) -> &str {
        let n = self.name.iter().position(|&b| b == 0).unwrap_or(SET_NAME_LEN);
        core::str::from_utf8(&self.name[..n]).unwrap_or("")
    }
}
