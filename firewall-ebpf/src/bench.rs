//! Benchmark helpers, built as their own object (`firewall-bench`) so that
//! the product carries none of them. `cargo xtask bench` uses them:
//! - `bench_gen` makes BPF_PROG_TEST_RUN's live-frames mode a packet
//!   generator: each run writes the frame from `BENCH_FRAME` (live-frames
//!   pages are recycled with whatever the receiver wrote into them, e.g. a
//!   cookie SYN-ACK), gives it a new source (the address's last two bytes,
//!   checksums updated) and sends it with XDP_TX out of the veth it runs
//!   on, into the peer;
//! - `bench_drop` counts and drops every frame (the generator's ceiling:
//!   the earliest drop a receiver can do);
//! - `bench_sink` counts and drops the replies to the spoofed range, and
//!   passes everything else (so real connections still work);
//! - `bench_reflect` is the physical limit of a SYN-cookie responder: it
//!   turns each IPv4 TCP SYN into a SYN-ACK in place (addresses and ports
//!   swapped, flags, a fixed sequence number, the SYN's options left as
//!   they are, checksums updated) and sends it back with XDP_TX: no
//!   parse beyond fixed offsets, no state, no hash.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
    macros::{map, xdp},
    helpers::bpf_xdp_store_bytes,
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use firewall_common::maps::bench::{MAX_FRAME, SPOOF_NET};

// Name equal to `firewall_common::maps::bench::FRAME`.
#[map(name = "BENCH_FRAME")]
static BENCH_FRAME: Array<[u8; MAX_FRAME]> = Array::with_max_entries(1, 0);
#[map(name = "BENCH_SEQ")]
static BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
// Name equal to `firewall_common::maps::bench::COUNT`.
#[map(name = "BENCH_COUNT")]
static BENCH_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const ETH: usize = 14;
const IP_PROTO: usize = ETH + 9;
const IP_CSUM: usize = ETH + 10;
/// The source address's last two bytes.
const SRC_LOW: usize = ETH + 14;
const DST: usize = ETH + 16;
/// Checksum fields of a TCP / UDP header after a 20-byte IPv4 header.
const TCP_CSUM: usize = ETH + 20 + 16;
const UDP_CSUM: usize = ETH + 20 + 6;

#[inline(always)]
fn at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    if ctx.data() + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((ctx.data() + offset) as *mut T)
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word went from `old` to
/// `new`. One's-complement sums are byte-order independent, so the words
/// are used as they lie in memory.
#[inline(always)]
fn csum_replace(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
fn count() {
    if let Some(c) = BENCH_COUNT.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, only this CPU writes it.
        unsafe { *c += 1 };
    }
}

#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    let (Some(seq), Some(template)) = (BENCH_SEQ.get_ptr_mut(0), BENCH_FRAME.get_ptr(0)) else { return XDP_ABORTED };
    let len = ctx.data_end() - ctx.data();
    if len == 0 || len > MAX_FRAME {
        return XDP_ABORTED;
    }
    // 1..=MAX_FRAME in a form the verifier can see (MAX_FRAME is a power of two).
    let n = ((len - 1) as u32 & (MAX_FRAME as u32 - 1)) + 1;
    // SAFETY: the helper copies `n` bytes of the map value into the frame.
    if unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, template as *mut _, n) } != 0 {
        return XDP_ABORTED;
    }
    let (Some(src), Some(ip_csum), Some(proto)) = (at::<u16>(&ctx, SRC_LOW), at::<u16>(&ctx, IP_CSUM), at::<u8>(&ctx, IP_PROTO)) else {
        return XDP_ABORTED;
    };
    // SAFETY: each pointer was bounds-checked against data_end above or
    // below; the sequence slot is this CPU's.
    unsafe {
        let n = (*seq).wrapping_add(1);
        *seq = n;
        let old = src.read_unaligned();
        let new = (n as u16).to_be();
        src.write_unaligned(new);
        ip_csum.write_unaligned(csum_replace(ip_csum.read_unaligned(), old, new));
        let l4 = match *proto {
            6 => at::<u16>(&ctx, TCP_CSUM),
            // A zero UDP checksum means "none": leave it so.
            17 => at::<u16>(&ctx, UDP_CSUM).filter(|c| c.read_unaligned() != 0),
            _ => None,
        };
        if let Some(c) = l4 {
            c.write_unaligned(csum_replace(c.read_unaligned(), old, new));
        }
    }
    XDP_TX
}

#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    count();
    XDP_DROP
}

#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    let (Some(ethertype), Some(dst)) = (at::<[u8; 2]>(&ctx, 12), at::<[u8; 2]>(&ctx, DST)) else { return XDP_PASS };
    // SAFETY: bounds-checked above.
    if unsafe { *ethertype == [0x08, 0x00] && *dst == SPOOF_NET } {
        count();
        return XDP_DROP;
    }
    XDP_PASS
}

/// Offsets in the TCP header (after a 20-byte IPv4 header).
const TCP: usize = ETH + 20;

#[xdp]
pub fn bench_reflect(ctx: XdpContext) -> u32 {
    // Ethernet + IPv4 without options + the TCP header's first 20 bytes.
    let (Some(eth), Some(ip), Some(tcp)) = (at::<[u8; 12]>(&ctx, 0), at::<[u8; 20]>(&ctx, ETH), at::<[u8; 20]>(&ctx, TCP)) else { return XDP_PASS };
    // SAFETY: each pointer was bounds-checked against data_end by `at`.
    unsafe {
        let (eth, ip, tcp) = (&mut *eth, &mut *ip, &mut *tcp);
        if ip[0] != 0x45 || ip[9] != 6 || tcp[13] & 0x12 != 0x02 {
            return XDP_PASS;
        }
        // Swaps keep both checksums (one's-complement sums commute).
        for i in 0..6 {
            eth.swap(i, i + 6);
        }
        for i in 12..16 {
            ip.swap(i, i + 4);
        }
        tcp.swap(0, 2);
        tcp.swap(1, 3);
        let word = |b: &[u8; 20], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        let old: [u16; 5] = [word(tcp, 4), word(tcp, 6), word(tcp, 8), word(tcp, 10), word(tcp, 12)];
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        tcp[8..12].copy_from_slice(&seq.wrapping_add(1).to_be_bytes());
        tcp[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
        tcp[13] = 0x12;
        let mut check = word(tcp, 16);
        for (k, i) in [4usize, 6, 8, 10, 12].into_iter().enumerate() {
            check = csum_replace(check, old[k], word(tcp, i));
        }
        tcp[16..18].copy_from_slice(&check.to_ne_bytes());
    }
    XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
