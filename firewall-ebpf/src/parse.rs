//! Header parsing: Ethernet, up to `MAX_VLAN_TAGS` VLAN tags, IPv4 (with
//! options), IPv6 (skipping up to `MAX_IPV6_EXT_HEADERS` extension headers),
//! then the TCP/UDP/ICMP/ICMPv6 fields the rules match on. Every failure is
//! a `Reason`, never a panic.

use core::mem;

use firewall_common::{MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, Reason, U128, WSCALE_NONE, tcp_flags::SYN};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;

/// Offsets past this are not believed: it keeps packet offsets bounded for
/// the verifier and no sane header chain is longer.
const MAX_L4_OFFSET: usize = 512;

/// `::ffff:0:0/96`, where IPv4 addresses live in the 128-bit key.
const V4_MAPPED_HI: u64 = 0;
const V4_MAPPED_LO_PREFIX: u64 = 0x0000_ffff_0000_0000;

/// The fields the policy matches on.
#[derive(Clone, Copy)]
pub struct Key {
    pub src: U128,
    pub dst: U128,
    /// Source port, or the ICMP type.
    pub sport: u16,
    /// Destination port, or the ICMP code.
    pub dport: u16,
    pub proto: u8,
    /// TCP flags byte; 0 for other protocols.
    pub tcp_flags: u8,
    /// The packet's connection state (`ct_state` bit), set by conntrack.
    pub ct_state: u8,
}

impl Key {
    #[inline(always)]
    fn new(src: U128, dst: U128, proto: u8) -> Self {
        Key { src, dst, sport: 0, dport: 0, proto, tcp_flags: 0, ct_state: 0 }
    }
}

#[derive(Clone, Copy)]
pub struct Packet {
    pub key: Key,
    /// A non-first fragment: no transport header, ports are zero.
    pub fragment: bool,
    /// Offset of the IP header from the start of the frame (after VLAN tags).
    pub l3_offset: usize,
    /// Offset of the transport header from the start of the frame.
    pub l4_offset: usize,
    /// Bytes from the transport header to the end of the IP packet.
    pub l4_len: usize,
    /// TCP only.
    pub tcp: TcpInfo,
    /// The options of a TCP SYN or SYN-ACK (`TcpOptions::NONE` for every
    /// other packet): scanned once, by `parse_once`.
    pub opts: TcpOptions,
    /// ICMP echo identifier (0 for other packets).
    pub icmp_id: u16,
    /// Set by the XDP program: a retransmitted SYN of a handshake the
    /// table follows (kept in the packet so that it passes through the
    /// scratch copy: a flag held across the rule walk would make the
    /// verifier check the walk once per value).
    pub syn_again: bool,
    /// Set by the XDP program: a SYN that replaces the dead flow on its
    /// tuple once the rules accept it (kept here for the same reason).
    pub replaces: bool,
    /// Set by the pipelines: conntrack found no flow of this tuple (see
    /// `Ct::NoFlow`), so opening one need not look again.
    pub no_flow: bool,
    /// Set by the XDP program: a SYN on a closed (or TIME-WAIT) tuple whose
    /// old flow stays, since the host's TIME-WAIT socket or the DNAT
    /// destination decides: a new connection to the limits all the same,
    /// its rate charged at its proof (the answer rebuilds the flow, its SYN
    /// unjudged there).
    pub keeps_flow: bool,
    /// Set by the XDP program: the rules' match for a SYN they judged
    /// before conntrack read the table of unproven flows (`EARLY_*`, or
    /// `EARLY_BOX + ` the box's index; kept here for the same reason).
    pub early: u32,
    /// Bytes on the wire (`Frame::wire_len`).
    pub wire_len: u64,
}

#[derive(Clone, Copy, Default)]
pub struct TcpInfo {
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    pub header_len: u16,
}

/// The frame as a program sees it: `[start, end)` in its address space.
#[derive(Clone, Copy)]
pub struct Frame {
    pub start: usize,
    pub end: usize,
    /// Bytes on the wire; more than `end - start` when TC sees an skb
    /// whose payload is not in its linear part.
    pub wire_len: u64,
    /// The program's context, for socket lookups.
    pub ctx: *mut core::ffi::c_void,
    /// TC egress: the skb belongs to one of the host's sockets (a segment
    /// forwarded, or DNAT'd from a container, has none: another namespace's
    /// skbs are scrubbed on the way).
    pub local_socket: bool,
}

impl Frame {
    /// The frame of a TC program's skb. Headers may sit outside its linear
    /// part; 128 bytes cover Ethernet, VLANs, IPv6 with options, and TCP
    /// with options. Pulls only when they do not (a pull can copy a cloned
    /// skb's head). `wire_len` is the skb's whole length.
    #[inline(always)]
    pub fn of_skb(ctx: &aya_ebpf::programs::TcContext) -> Frame {
        let len = ctx.len();
        let want = len.min(128) as usize;
        if ctx.data_end() - ctx.data() < want {
            let _ = ctx.pull_data(want as u32);
        }
        let skb = aya_ebpf::EbpfContext::as_ptr(ctx);
        // SAFETY: the program's own context; `sk` is readable from TC.
        let local_socket = !unsafe { (*skb.cast::<aya_ebpf::bindings::__sk_buff>()).__bindgen_anon_2.sk }.is_null();
        Frame { start: ctx.data(), end: ctx.data_end(), wire_len: len as u64, ctx: skb, local_socket }
    }

    /// Bounds-checked pointer to a `T` at `offset` from the start of the frame.
    #[inline(always)]
    pub fn ptr_at<T>(&self, offset: usize) -> Option<*const T> {
        if self.start + offset + mem::size_of::<T>() > self.end {
            return None;
        }
        Some((self.start + offset) as *const T)
    }
}

/// `FW_SCRATCH` slots: the packet being judged, and a variant of it the
/// rules are asked about (the SYN a cookie ACK claims, the reverse of an
/// outbound datagram).
pub const SCRATCH_PACKET: u32 = 0;
pub const SCRATCH_QUERY: u32 = 1;

/// `Packet::early`: not judged early.
pub const EARLY_NONE: u32 = 0;
/// `Packet::early`: judged early, and no rule matched.
pub const EARLY_NO_RULE: u32 = 1;
/// `Packet::early`: judged early; minus this, the matching box's index.
pub const EARLY_BOX: u32 = 2;

/// The frame, parsed once: its headers and, for a SYN or SYN-ACK, its TCP
/// options. The packet is kept in this CPU's scratch slot, where every
/// later stage reads it, and the programs tail-called for this frame
/// find it (`stored`). Read back from a map, every field is unknown to the
/// verifier, so what follows is verified once, not once per header layout
/// (VLAN tags, IPv4 or IPv6, extension headers). The options are scanned
/// here, at one place, for every SYN, dropped ones too: each stage that
/// needs them scanning them itself made the TC egress program too big for
/// the verifier (one copy of the scan loop per caller, and per path).
#[inline(always)]
pub fn parse_once(frame: &Frame) -> Result<Option<&'static mut Packet>, Reason> {
    let Some(packet) = parse(frame)? else { return Ok(None) };
    let p = store(SCRATCH_PACKET, packet).ok_or(Reason::Internal)?;
    if p.key.proto == IPPROTO_TCP && p.key.tcp_flags & SYN != 0 {
        let opts = match usual_syn_options(frame, p) {
            Some(opts) => opts,
            None => tcp_options(frame, p),
        };
        p.opts = opts;
    }
    Ok(Some(p))
}

/// The options of a SYN laid out as Linux sends them (MSS, SACK-permitted,
/// timestamps, NOP, window scale: 20 bytes), read in one go; `None` for
/// any other layout, which `tcp_options` scans. The same values the scan
/// gives, for about 70 ns less a SYN under a live flood (measured: the
/// scan was a fifth of a dropped SYN's cost).
#[inline(always)]
fn usual_syn_options(ctx: &Frame, packet: &Packet) -> Option<TcpOptions> {
    if packet.tcp.header_len != TcpHdr::LEN as u16 + 20 || packet.l4_offset > MAX_L4_OFFSET {
        return None;
    }
    let b = ctx.ptr_at::<[u8; 20]>(packet.l4_offset + TcpHdr::LEN)?;
    // SAFETY: ptr_at checked the bounds.
    let b = unsafe { *b };
    if b[0..2] != [2, 4] || b[4..8] != [4, 2, 8, 10] || b[16..19] != [1, 3, 3] {
        return None;
    }
    Some(TcpOptions {
        mss: u16::from_be_bytes([b[2], b[3]]),
        wscale: b[19].min(14),
        sack_permitted: true,
        timestamps: true,
        tsval: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        tsecr: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
    })
}

/// Copies `packet` into this CPU's scratch slot `index`.
#[inline(always)]
pub fn store(index: u32, packet: Packet) -> Option<&'static mut Packet> {
    let scratch = crate::FW_SCRATCH.get_ptr_mut(index)?;
    // SAFETY: this CPU's slot, used only while one program (and the ones it
    // tail-calls) runs on it: XDP and TC run in softirq context and never
    // nest on a CPU.
    unsafe {
        *scratch = packet;
        Some(&mut *scratch)
    }
}

/// The packet `parse_once` left for this frame, for a tail-called program
/// (its caller parsed the same, unchanged, frame).
#[inline(always)]
pub fn stored() -> Option<&'static Packet> {
    crate::FW_SCRATCH.get(SCRATCH_PACKET)
}

/// `Ok(None)` for frames that are not IP. Most callers want `parse_once`.
#[inline(always)]
pub fn parse(ctx: &Frame) -> Result<Option<Packet>, Reason> {
    let eth: *const EthHdr = ctx.ptr_at(0).ok_or(Reason::MalformedL2)?;
    // SAFETY: ptr_at checked the bounds.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut offset = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        // A tag is TCI (2 bytes) then the inner EtherType (2 bytes).
        let tag: *const [u8; 4] = ctx.ptr_at(offset).ok_or(Reason::MalformedL2)?;
        let tag = unsafe { *tag };
        ether_type = u16::from_be_bytes([tag[2], tag[3]]);
        offset += 4;
    }
    match ether_type {
        ETH_P_IP => parse_ipv4(ctx, offset).map(Some),
        ETH_P_IPV6 => parse_ipv6(ctx, offset).map(Some),
        ETH_P_8021Q | ETH_P_8021AD => Err(Reason::TooManyVlans),
        _ => Ok(None),
    }
}

#[inline(always)]
fn v4_mapped(addr: [u8; 4]) -> U128 {
    U128 {
        hi: V4_MAPPED_HI,
        lo: V4_MAPPED_LO_PREFIX | u32::from_be_bytes(addr) as u64,
    }
}

#[inline(always)]
fn v6_key(addr: [u8; 16]) -> U128 {
    let v = u128::from_be_bytes(addr);
    U128 { hi: (v >> 64) as u64, lo: v as u64 }
}

#[inline(always)]
fn parse_ipv4(ctx: &Frame, offset: usize) -> Result<Packet, Reason> {
    let ip: *const Ipv4Hdr = ctx.ptr_at(offset).ok_or(Reason::MalformedL3)?;
    // SAFETY: ptr_at checked the bounds.
    let ip = unsafe { &*ip };
    let header_len = (ip.vihl & 0x0f) as usize * 4;
    if ip.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
        return Err(Reason::MalformedL3);
    }
    let total_len = u16::from_be_bytes(ip.tot_len) as usize;
    // Against the wire length: TC may see only the headers in linear memory.
    if total_len < header_len || (offset + total_len) as u64 > ctx.wire_len {
        return Err(Reason::MalformedL3);
    }
    let key = Key::new(v4_mapped(ip.src_addr), v4_mapped(ip.dst_addr), ip.proto as u8);
    // Fragment offset (13 bits); non-zero means no transport header here.
    let mut packet = Packet {
        key,
        fragment: false,
        l3_offset: offset,
        l4_offset: offset + header_len,
        l4_len: total_len - header_len,
        tcp: TcpInfo::default(),
        opts: TcpOptions::NONE,
        icmp_id: 0,
        syn_again: false,
        replaces: false,
        no_flow: false,
        keeps_flow: false,
        early: EARLY_NONE,
        wire_len: ctx.wire_len,
    };
    if u16::from_be_bytes(ip.frags) & 0x1fff != 0 {
        packet.fragment = true;
        return Ok(packet);
    }
    parse_l4(ctx, &mut packet)?;
    Ok(packet)
}

#[inline(always)]
fn parse_ipv6(ctx: &Frame, offset: usize) -> Result<Packet, Reason> {
    let ip: *const Ipv6Hdr = ctx.ptr_at(offset).ok_or(Reason::MalformedL3)?;
    // SAFETY: ptr_at checked the bounds.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Err(Reason::MalformedL3);
    }
    let payload_len = u16::from_be_bytes(ip.payload_len) as usize;
    if (offset + Ipv6Hdr::LEN + payload_len) as u64 > ctx.wire_len {
        return Err(Reason::MalformedL3);
    }
    let src = v6_key(ip.src_addr);
    let dst = v6_key(ip.dst_addr);
    // IPv4-mapped addresses never appear on the wire (RFC 4291 2.5.5.2); the
    // key reserves that block for IPv4 packets.
    if is_v4_mapped(&src) || is_v4_mapped(&dst) {
        return Err(Reason::MalformedL3);
    }
    let mut key = Key::new(src, dst, ip.next_hdr as u8);
    let mut next = ip.next_hdr as u8;
    let mut l4 = offset + Ipv6Hdr::LEN;
    let mut fragment = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                // Next header, then length in 8-octet units not counting the first.
                let h: *const [u8; 2] = ctx.ptr_at(l4).ok_or(Reason::MalformedL3)?;
                let h = unsafe { *h };
                next = h[0];
                l4 += (h[1] as usize + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let h: *const [u8; 4] = ctx.ptr_at(l4).ok_or(Reason::MalformedL3)?;
                let h = unsafe { *h };
                next = h[0];
                l4 += 8;
                // Offset in the top 13 bits of bytes 2..4. A later fragment
                // carries payload, not the rest of the header chain.
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    fragment = true;
                    break;
                }
            }
            _ => break,
        }
        if l4 > MAX_L4_OFFSET {
            return Err(Reason::MalformedL3);
        }
    }
    if !fragment && matches!(next, IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_FRAGMENT) {
        return Err(Reason::Ipv6ExtLimit);
    }
    key.proto = next;
    let consumed = l4 - offset - Ipv6Hdr::LEN;
    if consumed > payload_len {
        return Err(Reason::MalformedL3);
    }
    let mut packet = Packet {
        key,
        fragment,
        l3_offset: offset,
        l4_offset: l4,
        l4_len: payload_len - consumed,
        tcp: TcpInfo::default(),
        opts: TcpOptions::NONE,
        icmp_id: 0,
        syn_again: false,
        replaces: false,
        no_flow: false,
        keeps_flow: false,
        early: EARLY_NONE,
        wire_len: ctx.wire_len,
    };
    if fragment {
        return Ok(packet);
    }
    parse_l4(ctx, &mut packet)?;
    Ok(packet)
}

/// Whether a key address is IPv4 (mapped into `::ffff:0:0/96`).
#[inline(always)]
pub fn is_v4_mapped(addr: &U128) -> bool {
    addr.hi == V4_MAPPED_HI && addr.lo >> 32 == V4_MAPPED_LO_PREFIX >> 32
}

#[inline(always)]
fn parse_l4(ctx: &Frame, packet: &mut Packet) -> Result<(), Reason> {
    let offset = packet.l4_offset;
    if offset > MAX_L4_OFFSET {
        return Err(Reason::MalformedL3);
    }
    let key = &mut packet.key;
    match key.proto {
        IPPROTO_TCP => {
            let tcp: *const TcpHdr = ctx.ptr_at(offset).ok_or(Reason::MalformedL4)?;
            let tcp = unsafe { &*tcp };
            // Data offset and flags are bytes 12 and 13 of the header.
            let raw: *const [u8; 14] = tcp as *const TcpHdr as *const [u8; 14];
            let raw = unsafe { *raw };
            let header_len = (raw[12] >> 4) as usize * 4;
            if header_len < TcpHdr::LEN || header_len > packet.l4_len || (offset + header_len) as u64 > ctx.wire_len {
                return Err(Reason::MalformedL4);
            }
            key.sport = u16::from_be_bytes(tcp.source);
            key.dport = u16::from_be_bytes(tcp.dest);
            key.tcp_flags = raw[13];
            packet.tcp = TcpInfo {
                seq: u32::from_be_bytes(tcp.seq),
                ack: u32::from_be_bytes(tcp.ack_seq),
                window: u16::from_be_bytes(tcp.window),
                header_len: header_len as u16,
            };
        }
        IPPROTO_UDP => {
            let udp: *const UdpHdr = ctx.ptr_at(offset).ok_or(Reason::MalformedL4)?;
            let udp = unsafe { &*udp };
            // The IP length must cover the header too, not just the frame
            // (checked after the read: checked before, LLVM reorders the
            // bounds test out of the verifier's sight).
            if packet.l4_len < 8 {
                return Err(Reason::MalformedL4);
            }
            key.sport = u16::from_be_bytes(udp.src);
            key.dport = u16::from_be_bytes(udp.dst);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // Type, code, checksum, then (for echo) identifier and sequence.
            let icmp: *const [u8; 8] = ctx.ptr_at(offset).ok_or(Reason::MalformedL4)?;
            let icmp = unsafe { *icmp };
            if packet.l4_len < 8 {
                return Err(Reason::MalformedL4);
            }
            key.sport = icmp[0] as u16;
            key.dport = icmp[1] as u16;
            packet.icmp_id = u16::from_be_bytes([icmp[4], icmp[5]]);
        }
        _ => {}
    }
    Ok(())
}

/// Most bytes of TCP options (a 60-byte header).
const MAX_OPTIONS: usize = 40;

/// Copies the TCP options of `packet` into `buf` (zeroed by the caller: zero
/// is the end-of-options kind); returns their length. Options come in 4-byte
/// words (the data offset counts words): one bounds check per word, at a
/// constant offset from one base pointer (a byte loop makes LLVM recompute
/// the pointer, which the verifier rejects).
#[inline(always)]
fn copy_options(ctx: &Frame, packet: &Packet, buf: &mut [u8; 64]) -> Option<usize> {
    let base = packet.l4_offset + TcpHdr::LEN;
    let len = (packet.tcp.header_len as usize).saturating_sub(TcpHdr::LEN);
    if base > MAX_L4_OFFSET {
        return None;
    }
    let start = ctx.ptr_at::<[u8; 4]>(base)? as usize;
    for w in 0..MAX_OPTIONS / 4 {
        if w * 4 >= len || start + w * 4 + 4 > ctx.end {
            break;
        }
        // SAFETY: checked just above against the packet's end.
        let word = unsafe { *((start + w * 4) as *const [u8; 4]) };
        buf[w * 4] = word[0];
        buf[w * 4 + 1] = word[1];
        buf[w * 4 + 2] = word[2];
        buf[w * 4 + 3] = word[3];
    }
    Some(len)
}

/// The TCP options a SYN (or the ACK of a cookie) carries that matter to
/// a SYN cookie.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpOptions {
    /// 0 when absent.
    pub mss: u16,
    /// `WSCALE_NONE` when absent.
    pub wscale: u8,
    pub sack_permitted: bool,
    pub timestamps: bool,
    pub tsval: u32,
    pub tsecr: u32,
}

/// Where each option kind (0..=255: one slot per kind, so no kind can
/// stand in for another) starts in the options area, plus one (0:
/// absent). Lives in a per-CPU map, see `tcp_options`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OptionPositions {
    pub at: [u8; 256],
    /// The scan's index, passed through memory the verifier does not track.
    pub cursor: u64,
}

impl TcpOptions {
    pub const NONE: TcpOptions =
        TcpOptions { mss: 0, wscale: WSCALE_NONE, sack_permitted: false, timestamps: false, tsval: 0, tsecr: 0 };
}

/// All of a TCP header's options of interest, from a zeroed copy with a
/// masked index (`parse_once` for a SYN; the cookie ACK program for the
/// ACK's timestamps). The scan only records where each kind
/// starts, by indexing a per-CPU map value with the kind: no branch per
/// kind, and map contents are not tracked by the verifier, so the paths of
/// one iteration converge (a scan that set per-option flags on the stack
/// made every combination a separate state and blew the 1M budget).
#[inline(always)]
pub fn tcp_options(ctx: &Frame, packet: &Packet) -> TcpOptions {
    let mut opts = TcpOptions::NONE;
    let Some(pos) = crate::FW_OPTS.get_ptr_mut(0) else { return opts };
    // SAFETY: this CPU's slot, used only while this program runs. Only
    // the kinds read below need clearing.
    unsafe {
        (*pos).at[2] = 0;
        (*pos).at[3] = 0;
        (*pos).at[4] = 0;
        (*pos).at[8] = 0;
    }
    let mut buf = [0u8; 64];
    let Some(len) = copy_options(ctx, packet, &mut buf) else { return opts };
    let limit = len.min(MAX_OPTIONS);
    let mut i = 0usize;
    for _ in 0..MAX_OPTIONS {
        let kind = buf[i & 63] as usize;
        if kind == 0 {
            break;
        }
        let size = if kind == 1 { 1 } else { buf[(i + 1) & 63] as usize };
        // An option running past the options area ends the scan, as in
        // the kernel's tcp_parse_options.
        if size == 0 || (kind != 1 && size < 2) || i + size > limit {
            break;
        }
        // SAFETY: as above; the kind is below 256. Reading the next index
        // back from the map makes it the same unknown 0..63 on every path,
        // so the states of one iteration prune each other.
        unsafe {
            (*pos).at[kind & 255] = (i + 1) as u8;
            (*pos).cursor = ((i + size) & 63) as u64;
            i = core::ptr::read_volatile(&(*pos).cursor) as usize & 63;
        }
        if i >= MAX_OPTIONS {
            break;
        }
    }
    let at = |i: usize| buf[i & 63] as u32;
    // An option counts only with its exact length (as in the kernel's
    // tcp_parse_options); its kind is checked again at its position.
    let option = |kind: usize, size: u32| {
        // SAFETY: as above.
        let p = unsafe { (*pos).at[kind] } as usize;
        if p != 0 && at(p - 1) == kind as u32 && at(p) == size { Some(p - 1) } else { None }
    };
    if let Some(p) = option(2, 4) {
        opts.mss = (at(p + 2) << 8 | at(p + 3)) as u16;
    }
    if let Some(p) = option(3, 3) {
        opts.wscale = at(p + 2).min(14) as u8;
    }
    opts.sack_permitted = option(4, 2).is_some();
    if let Some(p) = option(8, 10) {
        opts.timestamps = true;
        opts.tsval = at(p + 2) << 24 | at(p + 3) << 16 | at(p + 4) << 8 | at(p + 5);
        opts.tsecr = at(p + 6) << 24 | at(p + 7) << 16 | at(p + 8) << 8 | at(p + 9);
    }
    opts
}

/// What an ICMP error quotes of the packet it is about.
pub struct Quoted {
    /// From the quoted packet's view (its source first).
    pub key: Key,
    /// ICMP echo identifier (quoted echo), else 0.
    pub id: u16,
    /// TCP sequence number (quoted TCP segment), else 0.
    pub seq: u32,
}

/// The flow an ICMP error is about: the quoted IP header and the first 8
/// bytes of its transport header.
#[inline(always)]
pub fn icmp_quoted(ctx: &Frame, packet: &Packet) -> Option<Quoted> {
    let off = packet.l4_offset + 8;
    if off > MAX_L4_OFFSET {
        return None;
    }
    let (mut key, l4) = if packet.key.proto == IPPROTO_ICMP {
        let ip: *const Ipv4Hdr = ctx.ptr_at(off)?;
        let ip = unsafe { &*ip };
        let ihl = (ip.vihl & 0x0f) as usize * 4;
        if ihl < Ipv4Hdr::LEN {
            return None;
        }
        let key = Key::new(v4_mapped(ip.src_addr), v4_mapped(ip.dst_addr), ip.proto as u8);
        (key, off + ihl)
    } else {
        let ip: *const Ipv6Hdr = ctx.ptr_at(off)?;
        let ip = unsafe { &*ip };
        let key = Key::new(v6_key(ip.src_addr), v6_key(ip.dst_addr), ip.next_hdr as u8);
        (key, off + Ipv6Hdr::LEN)
    };
    if l4 > MAX_L4_OFFSET + 64 {
        return None;
    }
    let ports: *const [u8; 8] = ctx.ptr_at(l4)?;
    let ports = unsafe { *ports };
    let mut id = 0;
    match key.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            key.sport = u16::from_be_bytes([ports[0], ports[1]]);
            key.dport = u16::from_be_bytes([ports[2], ports[3]]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => id = u16::from_be_bytes([ports[4], ports[5]]),
        _ => {}
    }
    let seq = u32::from_be_bytes([ports[4], ports[5], ports[6], ports[7]]);
    Some(Quoted { key, id, seq })
}
