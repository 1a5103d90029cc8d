//! The cookie hand-off, in TC ingress: the kernel never saw the SYN the
//! firewall answered, so the ACK that completes the handshake is turned
//! into a request socket of the listener with the kfunc
//! `bpf_sk_assign_tcp_reqsk` (Linux 6.9+, callable from TC only). The
//! socket adopts our cookie as its ISN, so nothing is translated later.

use aya_ebpf::{
    bindings::__sk_buff,
    cty::c_void,
    helpers::{bpf_sk_release, bpf_skc_lookup_tcp, bpf_skc_to_tcp_sock},
    programs::TcContext,
    EbpfContext as _,
};
use firewall_common::{HANDOFF_MAGIC, HandoffMeta, Reason, TcpReqAttrs};

use crate::{
    conntrack::{BPF_F_CURRENT_NETNS, TCP_LISTEN, sock_tuple},
    parse::{self, Frame},
};

unsafe extern "C" {
    /// `bpf_sk_assign_tcp_reqsk`, through the always-inline wrapper in
    /// `kfuncs.c` (see there for why C).
    #[link_name = "fw_sk_assign_tcp_reqsk"]
    fn sk_assign_tcp_reqsk(skb: *mut __sk_buff, sk: *mut c_void, attrs: *mut TcpReqAttrs, size: i32) -> i32;
}

/// `None` for packets without our mark (all but validated cookie ACKs).
#[inline(always)]
pub fn run(ctx: &TcContext) -> Option<Reason> {
    let skb = ctx.as_ptr() as *mut __sk_buff;
    // SAFETY: reading context fields the verifier allows in TC.
    let (meta, data) = unsafe { ((*skb).data_meta as usize, (*skb).data as usize) };
    if meta + core::mem::size_of::<HandoffMeta>() > data {
        return None;
    }
    // SAFETY: inside the metadata area, checked above.
    let mark = unsafe { *(meta as *const HandoffMeta) };
    if mark.magic != HANDOFF_MAGIC {
        return None;
    }
    Some(handoff(ctx, skb, mark.attrs))
}

#[inline(always)]
fn handoff(ctx: &TcContext, skb: *mut __sk_buff, mut attrs: TcpReqAttrs) -> Reason {
    // Only the tuple is read here: XDP put what the cookie and the ACK's
    // options say in the mark.
    let frame = Frame::of_skb(ctx);
    let packet = match parse::parse(&frame) {
        Ok(Some(p)) if p.key.proto == parse::IPPROTO_TCP => p,
        _ => return Reason::HandoffFailed,
    };
    let (mut tuple, size) = sock_tuple(&packet.key);
    // SAFETY: helper calls with a tuple of the size passed; the socket the
    // lookup returns is released on every path.
    unsafe {
        let sk = bpf_skc_lookup_tcp(skb as *mut c_void, &mut tuple, size, BPF_F_CURRENT_NETNS, 0);
        if sk.is_null() {
            return Reason::HandoffNoListener;
        }
        if (*sk).state != TCP_LISTEN {
            // A connection owns the tuple already: it gets the ACK.
            bpf_sk_release(sk as *mut c_void);
            return Reason::HandoffFailed;
        }
        let tp = bpf_skc_to_tcp_sock(sk as *mut c_void);
        if tp.is_null() {
            bpf_sk_release(sk as *mut c_void);
            return Reason::HandoffFailed;
        }
        let rc = sk_assign_tcp_reqsk(skb, tp as *mut c_void, &mut attrs, core::mem::size_of::<TcpReqAttrs>() as i32);
        bpf_sk_release(sk as *mut c_void);
        if rc < 0 { Reason::HandoffFailed } else { Reason::HandoffDone }
    }
}
