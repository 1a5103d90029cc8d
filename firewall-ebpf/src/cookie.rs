//! SYN cookies in XDP: answer a SYN with a cookie SYN-ACK built in place
//! (no state), validate the cookie an ACK of no flow carries, and mark a
//! valid one with XDP metadata for the TC ingress program, which hands it
//! to the listener (`bpf_sk_assign_tcp_reqsk`). Layout and MAC:
//! `firewall_common::cookie`.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_xdp_adjust_meta, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use firewall_common::{
    COOKIE_ECN, COOKIE_LIFETIME_NS, COOKIE_MSS_MASK, COOKIE_MSS_SHIFT, COOKIE_SACK, COOKIE_TS,
    COOKIE_WSCALE_MASK, COOKIE_WSCALE_NONE, CookieCounters, CookieKey, DEFAULT_MSS_V4,
    DEFAULT_MSS_V6, DEFAULT_OUR_MSS_V4, DEFAULT_OUR_MSS_V6, HANDOFF_MAGIC, HandoffMeta, MAX_RULES,
    MSS_TABLE_V4, MSS_TABLE_V6, OFFER_ECN, OFFER_SACK, OFFER_TIMESTAMPS, OFFER_WSCALE, OUR_WSCALE,
    Reason, SYNACK_WINDOW, TcpReqAttrs, U128, claimed_info, cookie_matches, cookie_message,
    cookie_time, cookie_tsval, make_cookie, mss_index, siphash24,
    tcp_flags::{ACK, CWR, ECE, SYN},
    time_counter,
};

use crate::{
    FW_COOKIE_CFG, FW_COOKIE_CNT, FW_COOKIE_KEY,
    parse::{self, Frame, Packet},
};

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper with no arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The per-service counters (`CookieCounters`' fields).
#[derive(Clone, Copy)]
pub enum Event {
    Syn,
    Sent,
    Valid,
    Invalid,
}

/// Bumps one of a service's per-CPU cookie counters.
#[inline(always)]
pub fn count(slot: u32, rule: u32, event: Event) {
    if rule >= MAX_RULES {
        return;
    }
    if let Some(c) = FW_COOKIE_CNT.get_ptr_mut(slot * MAX_RULES + rule) {
        // SAFETY: this CPU's slot, written only while this program runs.
        let c: &mut CookieCounters = unsafe { &mut *c };
        match event {
            Event::Syn => c.syns += 1,
            Event::Sent => c.cookies_sent += 1,
            Event::Valid => c.acks_valid += 1,
            Event::Invalid => c.acks_invalid += 1,
        }
    }
}

#[inline(always)]
fn key(index: u32) -> Option<&'static CookieKey> {
    let key = FW_COOKIE_KEY.get(index & 1)?;
    if key.valid == 0 { None } else { Some(key) }
}

/// One's-complement sum helpers over host-order values (the checksum of
/// big-endian 16-bit words is the sum of their numeric values).
#[inline(always)]
fn sum32(v: u32) -> u64 {
    (v >> 16) as u64 + (v & 0xffff) as u64
}

#[inline(always)]
fn sum_addr(a: &U128, v4: bool) -> u64 {
    if v4 {
        sum32(a.lo as u32)
    } else {
        sum32((a.hi >> 32) as u32) + sum32(a.hi as u32) + sum32((a.lo >> 32) as u32) + sum32(a.lo as u32)
    }
}

#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
fn put16(b: &mut [u8], at: usize, v: u16) {
    let v = v.to_be_bytes();
    b[at] = v[0];
    b[at + 1] = v[1];
}

#[inline(always)]
fn put32(b: &mut [u8], at: usize, v: u32) {
    let v = v.to_be_bytes();
    b[at] = v[0];
    b[at + 1] = v[1];
    b[at + 2] = v[2];
    b[at + 3] = v[3];
}

#[inline(always)]
fn put_addr(b: &mut [u8], at: usize, a: &U128, v4: bool) {
    if v4 {
        put32(b, at, a.lo as u32);
    } else {
        put32(b, at, (a.hi >> 32) as u32);
        put32(b, at + 4, a.hi as u32);
        put32(b, at + 8, (a.lo >> 32) as u32);
        put32(b, at + 12, a.lo as u32);
    }
}

/// Writes `bytes` at `offset` of the frame, bounds-checked.
#[inline(always)]
fn write<const N: usize>(ctx: &XdpContext, offset: usize, bytes: &[u8; N]) -> Result<(), Reason> {
    let frame = Frame { start: ctx.data(), end: ctx.data_end(), wire_len: 0, ctx: ctx.ctx as *mut _, local_socket: false };
    let p = frame.ptr_at::<[u8; N]>(offset).ok_or(Reason::CookieFallback)? as *mut [u8; N];
    // SAFETY: `ptr_at` checked the bounds.
    unsafe { *p = *bytes };
    Ok(())
}

/// Turns the SYN in `ctx` into its cookie SYN-ACK: same frame, VLAN tags
/// kept, MACs, addresses and ports swapped, fresh IP and TCP headers (IP
/// options, IPv6 extension headers and any SYN payload dropped: the data
/// of a TCP Fast Open SYN is not acknowledged, so the client sends it
/// again after the handshake, RFC 7413 section 4.2.2). Checksums are
/// computed from scratch, so a partial checksum in the SYN cannot leak.
/// On `Err` the frame is unchanged when the error is `CookieFallback`
/// from the resize; the caller passes it.
#[inline(always)]
pub fn answer_syn(ctx: &XdpContext, packet: &Packet) -> Result<(), Reason> {
    let opts = packet.opts;
    let key_ = &packet.key;
    let v4 = parse::is_v4_mapped(&key_.src);
    let cfg = FW_COOKIE_CFG.get(0).ok_or(Reason::Internal)?;
    let key_index = cfg.key_index & 1;
    let secret = key(key_index).ok_or(Reason::Internal)?;

    // What the cookie remembers of the SYN: only what the host's sysctls
    // let the hand-off accept is offered. Without timestamps there is no
    // room for window scaling, SACK or ECN (as with the kernel's cookies).
    let (table, default_mss, our_mss) = if v4 {
        (&MSS_TABLE_V4, DEFAULT_MSS_V4, if cfg.mss_v4 == 0 { DEFAULT_OUR_MSS_V4 } else { cfg.mss_v4 })
    } else {
        (&MSS_TABLE_V6, DEFAULT_MSS_V6, if cfg.mss_v6 == 0 { DEFAULT_OUR_MSS_V6 } else { cfg.mss_v6 })
    };
    let client_mss = if opts.mss == 0 { default_mss } else { opts.mss };
    let timestamps = opts.timestamps && cfg.offer & OFFER_TIMESTAMPS != 0;
    let has_wscale = timestamps && opts.wscale != firewall_common::WSCALE_NONE && cfg.offer & OFFER_WSCALE != 0;
    let sack = timestamps && opts.sack_permitted && cfg.offer & OFFER_SACK != 0;
    // An ECN-setup SYN has both ECE and CWR (RFC 3168 6.1.1).
    let ecn = timestamps && key_.tcp_flags & (ECE | CWR) == (ECE | CWR) && cfg.offer & OFFER_ECN != 0;
    let mut info = mss_index(table, client_mss) << COOKIE_MSS_SHIFT;
    info |= if has_wscale { opts.wscale as u32 & COOKIE_WSCALE_MASK } else { COOKIE_WSCALE_NONE };
    if sack {
        info |= COOKIE_SACK;
    }
    if ecn {
        info |= COOKIE_ECN;
    }
    if timestamps {
        info |= COOKIE_TS;
    }
    let now = now_ns();
    let time = time_counter(now);
    let isn = packet.tcp.seq;
    let m = cookie_message(key_.src, key_.dst, key_.sport, key_.dport, isn, time, info);
    let hash = siphash24(secret.k0, secret.k1, &m);
    let cookie = make_cookie(hash, time, info);

    // Options, as 32-bit words in the kernel's order: MSS, SACK-permitted
    // and timestamps, window scale.
    let mut words = [0u32; 5];
    words[0] = 0x0204_0000 | our_mss as u32;
    let mut n = 1usize;
    if timestamps {
        words[1] = if sack { 0x0402_080a } else { 0x0101_080a };
        // Milliseconds plus a keyed per-connection offset; the socket that
        // takes over keeps this clock running (the kernel derives its
        // offset from the echo).
        words[2] = cookie_tsval(hash, (now / 1_000_000) as u32, info);
        words[3] = opts.tsval;
        n = 4;
    }
    if has_wscale {
        let ws = 0x0103_0300 | OUR_WSCALE as u32;
        if n == 1 {
            words[1] = ws;
        } else if n == 2 {
            words[2] = ws;
        } else {
            words[4] = ws;
        }
        n += 1;
    }
    let tcp_len = 20 + 4 * n;

    // TCP header, checksummed before it is written.
    let mut tcp = [0u8; 20];
    put16(&mut tcp, 0, key_.dport);
    put16(&mut tcp, 2, key_.sport);
    put32(&mut tcp, 4, cookie);
    put32(&mut tcp, 8, isn.wrapping_add(1));
    tcp[12] = ((tcp_len / 4) as u8) << 4;
    tcp[13] = SYN | ACK | if ecn { ECE } else { 0 };
    put16(&mut tcp, 14, SYNACK_WINDOW);
    let mut sum: u64 = 0;
    let mut i = 0;
    while i < 20 {
        sum += u16::from_be_bytes([tcp[i], tcp[i + 1]]) as u64;
        i += 2;
    }
    sum += sum32(words[0]) + sum32(words[1]) + sum32(words[2]) + sum32(words[3]) + sum32(words[4]);
    // Pseudo-header: addresses (the sum does not care which is which),
    // protocol, TCP length.
    sum += sum_addr(&key_.src, v4) + sum_addr(&key_.dst, v4) + 6 + tcp_len as u64;
    put16(&mut tcp, 16, fold(sum));

    // Resize: same link-layer header, a bare IP header, the TCP header.
    let l3 = packet.l3_offset;
    if l3 > 22 {
        return Err(Reason::Internal);
    }
    let ip_len = if v4 { 20 } else { 40 };
    let new_len = l3 + ip_len + tcp_len;
    let delta = new_len as i64 - (ctx.data_end() - ctx.data()) as i64;
    if delta != 0 {
        // SAFETY: helper call on this program's context.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) } != 0 {
            return Err(Reason::CookieFallback);
        }
    }

    // Ethernet: swap the addresses, keep the EtherType and VLAN tags.
    let eth = Frame { start: ctx.data(), end: ctx.data_end(), wire_len: 0, ctx: ctx.ctx as *mut _, local_socket: false };
    let macs = eth.ptr_at::<[u8; 12]>(0).ok_or(Reason::CookieFallback)?;
    // SAFETY: bounds checked by ptr_at.
    let m = unsafe { *macs };
    let swapped = [m[6], m[7], m[8], m[9], m[10], m[11], m[0], m[1], m[2], m[3], m[4], m[5]];
    write(ctx, 0, &swapped)?;

    if v4 {
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        put16(&mut ip, 2, (20 + tcp_len) as u16);
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = 6;
        put_addr(&mut ip, 12, &key_.dst, true);
        put_addr(&mut ip, 16, &key_.src, true);
        let mut s: u64 = 0;
        let mut i = 0;
        while i < 20 {
            s += u16::from_be_bytes([ip[i], ip[i + 1]]) as u64;
            i += 2;
        }
        put16(&mut ip, 10, fold(s));
        write(ctx, l3, &ip)?;
    } else {
        let mut ip = [0u8; 40];
        ip[0] = 0x60;
        put16(&mut ip, 4, tcp_len as u16);
        ip[6] = 6;
        ip[7] = 64;
        put_addr(&mut ip, 8, &key_.dst, false);
        put_addr(&mut ip, 24, &key_.src, false);
        write(ctx, l3, &ip)?;
    }
    let l4 = l3 + ip_len;
    write(ctx, l4, &tcp)?;
    // One bounds-checked write per option word.
    let mut w = 0;
    while w < 5 {
        if w < n {
            write(ctx, l4 + 20 + 4 * w, &words[w].to_be_bytes())?;
        }
        w += 1;
    }
    Ok(())
}

/// Whether either address of a SYN is one no real peer can have, or that
/// reaches many hosts: unspecified, loopback, multicast, the IPv4
/// broadcast and class E (the kernel answers none of these).
#[inline(always)]
pub fn martian(key: &parse::Key) -> bool {
    bad_address(&key.src) || bad_address(&key.dst)
}

#[inline(always)]
fn bad_address(a: &U128) -> bool {
    if parse::is_v4_mapped(a) {
        let first = (a.lo >> 24) as u8;
        // 0/8, 127/8, 224/4 (multicast), 240/4 (class E and 255.255.255.255).
        first == 0 || first == 127 || first >= 224
    } else {
        // ::, ::1, ff00::/8.
        (a.hi == 0 && (a.lo == 0 || a.lo == 1)) || (a.hi >> 56) == 0xff
    }
}

/// What a valid cookie decodes to.
pub struct Valid {
    pub attrs: TcpReqAttrs,
    /// The cookie (our ISN).
    pub cookie: u32,
}

/// Checks the cookie an ACK of no flow carries: one key read and one
/// SipHash (two in the cookie lifetime after a key rotation). `tsecr`:
/// the ACK's echoed timestamp, if it has the option. `None` for a bad
/// or expired cookie.
#[inline(always)]
pub fn check_ack(packet: &Packet, tsecr: Option<u32>) -> Option<Valid> {
    let k = &packet.key;
    if k.tcp_flags & (ACK | SYN) != ACK {
        return None;
    }
    let cfg = FW_COOKIE_CFG.get(0)?;
    let cookie = packet.tcp.ack.wrapping_sub(1);
    let isn = packet.tcp.seq.wrapping_sub(1);
    let info = claimed_info(cookie, tsecr);
    let now = now_ns();
    let time = cookie_time(time_counter(now), cookie);
    let m = cookie_message(k.src, k.dst, k.sport, k.dport, isn, time, info);
    let current = key(cfg.key_index)?;
    let mut valid = cookie_matches(cookie, siphash24(current.k0, current.k1, &m), time, info);
    if !valid && now.wrapping_sub(cfg.rotated_ns) < COOKIE_LIFETIME_NS {
        let previous = key(cfg.key_index ^ 1)?;
        valid = cookie_matches(cookie, siphash24(previous.k0, previous.k1, &m), time, info);
    }
    if !valid {
        return None;
    }
    let v4 = parse::is_v4_mapped(&k.src);
    let i = ((info >> COOKIE_MSS_SHIFT) & COOKIE_MSS_MASK) as usize;
    let table = if v4 { &MSS_TABLE_V4 } else { &MSS_TABLE_V6 };
    let mss = if i == 0 { table[0] } else if i == 1 { table[1] } else if i == 2 { table[2] } else { table[3] };
    let ws = (info & COOKIE_WSCALE_MASK) as u8;
    let wscale_ok = ws as u32 != COOKIE_WSCALE_NONE;
    Some(Valid {
        cookie,
        attrs: TcpReqAttrs {
            mss,
            rcv_wscale: if wscale_ok { OUR_WSCALE } else { 0 },
            snd_wscale: if wscale_ok { ws.min(14) } else { 0 },
            wscale_ok: wscale_ok as u8,
            sack_ok: (info & COOKIE_SACK != 0) as u8,
            ecn_ok: (info & COOKIE_ECN != 0) as u8,
            // Timestamps are read from the ACK by the TC program.
            ..TcpReqAttrs::default()
        },
    })
}

/// Puts `attrs` in front of the frame as XDP metadata for `fw_ingress`.
/// Invalidates every packet pointer.
#[inline(always)]
pub fn mark_for_handoff(ctx: &XdpContext, attrs: &TcpReqAttrs) -> bool {
    const SIZE: usize = core::mem::size_of::<HandoffMeta>();
    // SAFETY: helper call on this program's context.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(SIZE as i32)) } != 0 {
        return false;
    }
    let (meta, data) = (ctx.metadata(), ctx.data());
    if meta + SIZE > data {
        return false;
    }
    // SAFETY: [meta, meta + SIZE) is inside the metadata area, checked above.
    unsafe { *(meta as *mut HandoffMeta) = HandoffMeta { magic: HANDOFF_MAGIC, attrs: *attrs } };
    true
}
