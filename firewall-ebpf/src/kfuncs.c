/* Kfunc declarations for the Rust eBPF programs.
 *
 * Why C: aya relocates a kfunc call only when the object's BTF describes
 * the kfunc as an extern FUNC in a `.ksyms` DATASEC, and rustc emits no
 * debug info (hence no BTF) for `unsafe extern "C"` items yet
 * (rust-lang/rust#161390). clang does, so each kfunc is declared here and
 * wrapped in an always-inline function that Rust calls by link name;
 * bpf-linker links this bitcode with the Rust crate and the wrapper
 * inlines away. When rustc emits BTF for extern functions, declare the
 * kfuncs in Rust and delete this file and build.rs.
 *
 * Compiled by firewall-ebpf/build.rs with Debian's clang-14 to bitcode
 * (LLVM 23 reads clang-14 bitcode, not its textual IR). Struct bodies are
 * placeholders except `bpf_tcp_req_attrs`: aya matches BTF kinds and the
 * kernel checks the call against its own BTF.
 */

struct __sk_buff {
	int placeholder;
};

struct sock {
	int placeholder;
};

/* Must match firewall_common::TcpReqAttrs and the kernel's struct. */
struct bpf_tcp_req_attrs {
	unsigned int rcv_tsval;
	unsigned int rcv_tsecr;
	unsigned short mss;
	unsigned char rcv_wscale;
	unsigned char snd_wscale;
	unsigned char ecn_ok;
	unsigned char wscale_ok;
	unsigned char sack_ok;
	unsigned char tstamp_ok;
	unsigned char usec_ts_ok;
	unsigned char reserved[3];
};

extern int bpf_sk_assign_tcp_reqsk(struct __sk_buff *skb, struct sock *sk,
				   struct bpf_tcp_req_attrs *attrs,
				   int attrs__sz) __attribute__((section(".ksyms")));

__attribute__((always_inline)) int
fw_sk_assign_tcp_reqsk(struct __sk_buff *skb, struct sock *sk,
		       struct bpf_tcp_req_attrs *attrs, int attrs__sz)
{
	return bpf_sk_assign_tcp_reqsk(skb, sk, attrs, attrs__sz);
}
