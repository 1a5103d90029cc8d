//! SYN cookies: the cookie's layout, its MAC, the keys and the per-service
//! state the XDP programs and the controller share.
//!
//! A cookie is the initial sequence number of the SYN-ACK the XDP program
//! sends. It carries, under a MAC, what the firewall must remember about
//! the SYN without storing anything. What the SYN said (the `info` bits)
//! goes where the kernel puts it: into the low bits of our timestamp when
//! the client uses timestamps (it echoes them in every ACK), which leaves
//! the cookie almost all MAC:
//!
//! ```text
//! info (under the MAC):   8: TS | 7 6: MSS | 5: ECN | 4: SACK | 3..0: WScale (15 = none)
//! with timestamps:        cookie = MAC (31 bits) | time
//!                         TSval  = clock + keyed offset, low 8 bits = info 0..7
//! without:                cookie = MAC (29 bits) | MSS (2) | time
//!                         (no WScale, SACK or ECN, as the kernel's cookies)
//! ```
//!
//! The MAC is SipHash-2-4 over the client's address and port, ours, the
//! client's ISN, the coarse time counter and `info`, keyed with the
//! current key, or, during one cookie lifetime after a rotation, with the
//! previous one. The time bit is the counter's parity: a cookie validates
//! during the period it was made in and the next one, then never again.
//! A random ACK thus validates with odds 2^-31 (timestamps) or 2^-29
//! (without), twice that in the two periods after a key rotation; the
//! kernel's own cookies: 2^-29 (2 of 256 counter values, 4 of 2^24 MSS
//! values).

use crate::U128;

pub const COOKIE_WSCALE_MASK: u32 = 0xf;
/// `WScale` field value of a SYN without the window-scale option.
pub const COOKIE_WSCALE_NONE: u32 = 0xf;
pub const COOKIE_SACK: u32 = 1 << 4;
pub const COOKIE_ECN: u32 = 1 << 5;
pub const COOKIE_MSS_SHIFT: u32 = 6;
pub const COOKIE_MSS_MASK: u32 = 0x3;
/// `info`: the SYN carried timestamps; bits 0..7 travel in the TSval.
pub const COOKIE_TS: u32 = 1 << 8;
/// Bits of `info` that travel in the low bits of the TSval.
pub const COOKIE_TS_INFO_MASK: u32 = 0xff;
/// The cookie's own bits: the time counter's parity, and (without
/// timestamps) the MSS index above it.
pub const COOKIE_TIME_BIT: u32 = 1;
pub const COOKIE_NOTS_MSS_SHIFT: u32 = 1;
/// MAC bits of a cookie, with and without timestamps.
pub const COOKIE_MAC_BITS_TS: u32 = 31;
pub const COOKIE_MAC_BITS_NOTS: u32 = 29;

/// The time counter is `CLOCK_MONOTONIC` nanoseconds shifted right by this:
/// periods of 2^36 ns (about 68.7 s), so a cookie lives 69 to 137 s
/// (the kernel's own cookies: up to 2 minutes).
pub const COOKIE_PERIOD_SHIFT: u32 = 36;

/// MSS values a cookie can carry (the kernel's tables, net/ipv4/syncookies.c
/// and net/ipv6/syncookies.c): the largest entry not above the client's MSS.
pub const MSS_TABLE_V4: [u16; 4] = [536, 1300, 1440, 1460];
pub const MSS_TABLE_V6: [u16; 4] = [1220, 1420, 1440, 8940];
/// MSS assumed when a SYN carries no MSS option (RFC 9293 3.7.1; IPv6 RFC 8200).
pub const DEFAULT_MSS_V4: u16 = 536;
pub const DEFAULT_MSS_V6: u16 = 1220;

/// MSS the SYN-ACK announces until the controller writes the interface's
/// (Ethernet MTU 1500 minus headers).
pub const DEFAULT_OUR_MSS_V4: u16 = 1460;
pub const DEFAULT_OUR_MSS_V6: u16 = 1440;

/// Window scale the firewall announces in its SYN-ACKs on the server's
/// behalf (the kernel's choice for the default 6 MiB `tcp_rmem` maximum),
/// passed to the socket as `rcv_wscale`.
pub const OUR_WSCALE: u8 = 7;
/// Window the SYN-ACK announces (never scaled in a SYN-ACK): 44 segments of
/// 1460, below what a Linux listener opens with, so the client cannot
/// overrun the socket that takes over.
pub const SYNACK_WINDOW: u16 = 64_240;

/// `syncookie` modes of a rule (`MatchBox::syncookie`, `RuleMeta::syncookie`).
pub const SYNCOOKIE_OFF: u8 = 0;
pub const SYNCOOKIE_ALWAYS: u8 = 1;
pub const SYNCOOKIE_AUTO: u8 = 2;

/// Ports per policy slot in `FW_COOKIE_PORT` (indexed by destination port).
pub const PORTS: u32 = 65_536;

/// How long a cookie lives at most (two time periods): a rotated-out key
/// is tried for this long after the rotation.
pub const COOKIE_LIFETIME_NS: u64 = 2 << COOKIE_PERIOD_SHIFT;

/// `FW_COOKIE_KEY[0..2]`: the current SipHash key and the previous one.
/// Written only by the controller, from the OS random source; never pinned
/// or printed.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct CookieKey {
    pub k0: u64,
    pub k1: u64,
    /// 0 until the controller has written this key.
    pub valid: u64,
}

impl core::fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("CookieKey { .. }")
    }
}

/// `FW_COOKIE_CFG[0]`: written by the controller.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CookieConfig {
    /// Which key new cookies are made with (0 or 1).
    pub key_index: u32,
    /// MSS the SYN-ACK announces for the server (interface MTU minus
    /// headers); 0 means `DEFAULT_OUR_MSS_*`.
    pub mss_v4: u16,
    pub mss_v6: u16,
    /// `CLOCK_MONOTONIC` ns of the last key rotation: the previous key is
    /// tried until `COOKIE_LIFETIME_NS` after it.
    pub rotated_ns: u64,
    /// `OFFER_*`: options a SYN-ACK may offer, from the namespace's
    /// sysctls (the hand-off refuses what they turn off).
    pub offer: u32,
    /// Non-zero once the controller wrote this entry (an interface added to
    /// a running firewall starts with an empty one).
    pub valid: u32,
}

/// Most addresses in `FW_LOCAL_ADDRS`.
pub const MAX_LOCAL_ADDRS: u32 = 4096;

/// `FW_STATUS[0]` bit: a validated cookie ACK could not carry its XDP
/// metadata mark (the driver offers none): cookies are off until restart.
pub const STATUS_NO_META: u32 = 1;

/// `CookieConfig::offer` bits.
pub const OFFER_WSCALE: u32 = 1;
pub const OFFER_SACK: u32 = 2;
pub const OFFER_TIMESTAMPS: u32 = 4;
pub const OFFER_ECN: u32 = 8;
pub const OFFER_ALL: u32 = OFFER_WSCALE | OFFER_SACK | OFFER_TIMESTAMPS | OFFER_ECN;

/// `FW_COOKIE_CNT[slot * MAX_RULES + rule]`, per CPU: one service's cookie
/// counters (the service is the accepting rule with a `syncookie` mode).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CookieCounters {
    /// SYNs the rule accepted (cookie mode or not: `auto` decides on this rate).
    pub syns: u64,
    /// SYN-ACKs with a cookie sent from XDP.
    pub cookies_sent: u64,
    /// ACKs whose cookie validated (handed to the listener).
    pub acks_valid: u64,
    /// ACKs of no connection whose cookie did not validate (dropped).
    pub acks_invalid: u64,
}

/// `struct bpf_tcp_req_attrs` of the kernel (include/linux/bpf.h... in
/// net/core/filter.c's kfunc `bpf_sk_assign_tcp_reqsk`): what the socket
/// created from a cookie ACK needs to know of the SYN.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpReqAttrs {
    pub rcv_tsval: u32,
    pub rcv_tsecr: u32,
    pub mss: u16,
    pub rcv_wscale: u8,
    pub snd_wscale: u8,
    pub ecn_ok: u8,
    pub wscale_ok: u8,
    pub sack_ok: u8,
    pub tstamp_ok: u8,
    pub usec_ts_ok: u8,
    pub reserved: [u8; 3],
}

/// XDP metadata in front of a validated cookie ACK, read by the TC ingress
/// program that hands the ACK to the listener.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandoffMeta {
    pub magic: u32,
    pub attrs: TcpReqAttrs,
}

/// `HandoffMeta::magic`: "FWCK".
pub const HANDOFF_MAGIC: u32 = 0x4657_434b;

/// The time counter for a `CLOCK_MONOTONIC` (`bpf_ktime_get_ns`) instant.
#[inline(always)]
pub const fn time_counter(now_ns: u64) -> u32 {
    (now_ns >> COOKIE_PERIOD_SHIFT) as u32
}

/// The counter a cookie with time bit `bit` was made at, seen at `now`:
/// this period or the previous one.
#[inline(always)]
pub const fn cookie_time(now: u32, cookie: u32) -> u32 {
    let bit = cookie & COOKIE_TIME_BIT;
    now.wrapping_sub((now ^ bit) & 1)
}

/// Index of the largest table entry not above `mss`.
#[inline(always)]
pub fn mss_index(table: &[u16; 4], mss: u16) -> u32 {
    if mss >= table[3] {
        3
    } else if mss >= table[2] {
        2
    } else if mss >= table[1] {
        1
    } else {
        0
    }
}

/// The MAC input, as six little-endian 64-bit words (48 bytes): client
/// address, server address, ports and client ISN, time and info bits.
/// Addresses are the policy's 128-bit form (IPv4 mapped).
#[inline(always)]
pub fn cookie_message(client: U128, server: U128, client_port: u16, server_port: u16, isn: u32, time: u32, info: u32) -> [u64; 6] {
    [
        client.hi,
        client.lo,
        server.hi,
        server.lo,
        client_port as u64 | (server_port as u64) << 16 | (isn as u64) << 32,
        time as u64 | ((info & COOKIE_INFO_MASK) as u64) << 32,
    ]
}

/// Bits of `info` under the MAC.
pub const COOKIE_INFO_MASK: u32 = 0x1ff;
/// SipHash-2-4 of a 48-byte message given as six little-endian words
/// (the reference algorithm, specialised to this length).
#[inline(always)]
pub fn siphash24(k0: u64, k1: u64, m: &[u64; 6]) -> u64 {
    let mut v0 = k0 ^ 0x736f_6d65_7073_6575;
    let mut v1 = k1 ^ 0x646f_7261_6e64_6f6d;
    let mut v2 = k0 ^ 0x6c79_6765_6e65_7261;
    let mut v3 = k1 ^ 0x7465_6462_7974_6573;
    macro_rules! round {
        () => {
            v0 = v0.wrapping_add(v1);
            v1 = v1.rotate_left(13);
            v1 ^= v0;
            v0 = v0.rotate_left(32);
            v2 = v2.wrapping_add(v3);
            v3 = v3.rotate_left(16);
            v3 ^= v2;
            v0 = v0.wrapping_add(v3);
            v3 = v3.rotate_left(21);
            v3 ^= v0;
            v2 = v2.wrapping_add(v1);
            v1 = v1.rotate_left(17);
            v1 ^= v2;
            v2 = v2.rotate_left(32);
        };
    }
    macro_rules! compress {
        ($w:expr) => {
            let w = $w;
            v3 ^= w;
            round!();
            round!();
            v0 ^= w;
        };
    }
    compress!(m[0]);
    compress!(m[1]);
    compress!(m[2]);
    compress!(m[3]);
    compress!(m[4]);
    compress!(m[5]);
    // Final block: no tail bytes, the length (48) in the top byte.
    compress!(48u64 << 56);
    v2 ^= 0xff;
    round!();
    round!();
    round!();
    round!();
    v0 ^ v1 ^ v2 ^ v3
}

/// The cookie for a SYN, from the SipHash of its `cookie_message`.
#[inline(always)]
pub const fn make_cookie(hash: u64, time: u32, info: u32) -> u32 {
    if info & COOKIE_TS != 0 {
        ((hash >> (64 - COOKIE_MAC_BITS_TS)) as u32) << 1 | (time & 1)
    } else {
        let mss = (info >> COOKIE_MSS_SHIFT) & COOKIE_MSS_MASK;
        ((hash >> (64 - COOKIE_MAC_BITS_NOTS)) as u32) << 3 | mss << COOKIE_NOTS_MSS_SHIFT | (time & 1)
    }
}

/// The TSval of a cookie SYN-ACK: our millisecond clock plus a per-
/// connection offset from the same SipHash (so it tells nothing of the
/// host's uptime and differs between peers), its low 8 bits the info.
#[inline(always)]
pub const fn cookie_tsval(hash: u64, now_ms: u32, info: u32) -> u32 {
    (now_ms.wrapping_add(hash as u32) & !COOKIE_TS_INFO_MASK) | (info & COOKIE_TS_INFO_MASK)
}

/// The `info` an ACK claims: from its echoed timestamp (`tsecr`), or,
/// without timestamps, from the cookie's MSS bits.
#[inline(always)]
pub const fn claimed_info(cookie: u32, tsecr: Option<u32>) -> u32 {
    match tsecr {
        Some(ts) => (ts & COOKIE_TS_INFO_MASK) | COOKIE_TS,
        None => ((cookie >> COOKIE_NOTS_MSS_SHIFT) & COOKIE_MSS_MASK) << COOKIE_MSS_SHIFT | COOKIE_WSCALE_NONE,
    }
}

/// Whether `cookie` is the one `hash` (of the claimed info) makes.
#[inline(always)]
pub const fn cookie_matches(cookie: u32, hash: u64, time: u32, info: u32) -> bool {
    make_cookie(hash, time, info) == cookie
}
