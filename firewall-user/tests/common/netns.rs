//! Throwaway network namespaces joined by a veth pair, removed on drop
//! (also when the test panics), and helpers to run code or commands inside.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Two namespaces, `client` and `server`, with `10.231.<n>.1/24` on the
/// client's veth end and `.2` on the server's.
pub struct Pair {
    pub client: String,
    pub server: String,
    pub client_if: String,
    pub server_if: String,
    pub client_ip: String,
    pub server_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Pair {
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{}", std::process::id() % 100_000, n);
        let pair = Pair {
            client: format!("fwt{tag}c"),
            server: format!("fwt{tag}s"),
            client_if: format!("fw{tag}c"),
            server_if: format!("fw{tag}s"),
            client_ip: format!("10.231.{}.1", n % 250),
            server_ip: format!("10.231.{}.2", n % 250),
        };
        // Built before the first command so that Drop cleans up after any failure.
        ip(&["netns", "add", &pair.client]);
        ip(&["netns", "add", &pair.server]);
        ip(&["link", "add", &pair.client_if, "netns", &pair.client, "type", "veth", "peer", "name", &pair.server_if, "netns", &pair.server]);
        for (ns, ifname, addr) in [(&pair.client, &pair.client_if, &pair.client_ip), (&pair.server, &pair.server_if, &pair.server_ip)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", ifname]);
            ip(&["-n", ns, "link", "set", ifname, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// Runs `f` on a thread inside namespace `ns`; sockets it opens stay there.
    pub fn within<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{ns}");
        thread::spawn(move || {
            let file = File::open(&path).expect("namespace file");
            // SAFETY: setns on this thread only (CLONE_NEWNET is per thread).
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns into {path}");
            f()
        })
    }

    pub fn exec(ns: &str, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program]).args(args);
        cmd
    }

    pub fn output(ns: &str, program: &str, args: &[&str]) -> Output {
        Self::exec(ns, program, args).output().expect("spawn")
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and its peer.
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A child process killed on drop, so a failing test leaves none behind.
pub struct Guarded(pub Option<Child>);

impl Guarded {
    pub fn spawn(mut cmd: Command) -> Self {
        Self(Some(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn")))
    }
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("running")
    }
    /// SIGTERM, then the output once it exits.
    pub fn terminate(mut self) -> Output {
        let child = self.0.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait_with_output().expect("wait")
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs its closure when dropped, so cleanup happens when a test fails too.
pub struct OnDrop<F: FnMut()>(pub F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// MAC address of `ifname` in namespace `ns`.
pub fn mac(ns: &str, ifname: &str) -> [u8; 6] {
    let out = Pair::output(ns, "cat", &[&format!("/sys/class/net/{ifname}/address")]);
    let text = String::from_utf8_lossy(&out.stdout);
    let bytes: Vec<u8> = text.trim().split(':').map(|h| u8::from_str_radix(h, 16).expect("mac")).collect();
    bytes.try_into().expect("six bytes")
}

/// TcpExt counters of namespace `ns` (/proc/net/netstat as its threads see it).
pub fn netstat(ns: &str) -> std::collections::HashMap<String, u64> {
    let text = Pair::within(ns, || std::fs::read_to_string("/proc/thread-self/net/netstat").unwrap()).join().unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let names = lines[0].split_whitespace().skip(1);
    let values = lines[1].split_whitespace().skip(1).map(|v| v.parse::<u64>().unwrap());
    names.map(str::to_owned).zip(values).collect()
}

/// In native mode a veth passes its peer's XDP_TX frames (cookie SYN-ACKs)
/// only when it runs an XDP program too: the object's `xdp_pass`, attached
/// to the client's end. Detached when the returned object is dropped.
pub fn attach_peer_pass(pair: &Pair) -> aya::Ebpf {
    attach_xdp(&pair.client, &pair.client_if, firewall_user::loader::EBPF_OBJECT, firewall_common::maps::PASS_PROGRAM)
}

/// Loads `program` of `object` and attaches it in native XDP mode to
/// `ifname` in namespace `ns`; detached when the returned object is dropped.
pub fn attach_xdp(ns: &str, ifname: &str, object: &'static [u8], program: &'static str) -> aya::Ebpf {
    let ifname = ifname.to_owned();
    Pair::within(ns, move || {
        let mut ebpf = aya::Ebpf::load(object).expect("object loads");
        let prog: &mut aya::programs::Xdp = ebpf.program_mut(program).expect("program in the object").try_into().unwrap();
        prog.load().unwrap();
        let name = std::ffi::CString::new(ifname.clone()).unwrap();
        prog.attach(name.as_c_str(), aya::programs::XdpMode::Driver).unwrap_or_else(|e| panic!("{program} on {ifname}: {e}"));
        ebpf
    })
    .join()
    .unwrap()
}

/// Spoofed SYNs (sources in 10.99.0.0/16, an MSS option) at the server's
/// `port`, sent from the client's end of the veth with AF_PACKET: at most
/// `count` frames and `limit` time. Returns the frames sent and the seconds.
pub fn spoofed_syn_flood(pair: &Pair, port: u16, count: usize, limit: Duration) -> thread::JoinHandle<(usize, f64)> {
    let (src_mac, dst_mac) = (mac(&pair.client, &pair.client_if), mac(&pair.server, &pair.server_if));
    let server: std::net::Ipv4Addr = pair.server_ip.parse().unwrap();
    let frames: Vec<Vec<u8>> = (0..65536u32)
        .map(|i| {
            let src = [10, 99, (i >> 8) as u8, i as u8];
            let mut tcp = etherparse::TcpHeader::new(1024 + (i % 60000) as u16, port, i.wrapping_mul(2_654_435_761), 64240);
            tcp.syn = true;
            tcp.set_options(&[etherparse::TcpOptionElement::MaximumSegmentSize(1460)]).unwrap();
            let mut out = Vec::new();
            etherparse::PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src, server.octets(), 64).tcp_header(tcp).write(&mut out, &[]).unwrap();
            out
        })
        .collect();
    let ifname = pair.client_if.clone();
    Pair::within(&pair.client, move || {
        let socket = PacketSocket::open(&ifname);
        let start = Instant::now();
        let mut sent = 0;
        while sent < count && start.elapsed() < limit {
            if socket.send(&frames[sent % frames.len()]) {
                sent += 1;
            }
        }
        (sent, start.elapsed().as_secs_f64())
    })
}

/// An AF_PACKET socket sending whole Ethernet frames out of one interface
/// (of the calling thread's namespace); closed on drop.
pub struct PacketSocket {
    fd: i32,
    addr: libc::sockaddr_ll,
}

impl PacketSocket {
    pub fn open(ifname: &str) -> Self {
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: plain socket calls; the address struct is zeroed, then filled.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "AF_PACKET socket");
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            addr.sll_halen = 6;
            PacketSocket { fd, addr }
        }
    }

    /// Whether the whole frame was sent.
    pub fn send(&self, frame: &[u8]) -> bool {
        let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: a valid buffer and address of the sizes passed.
        let rc = unsafe { libc::sendto(self.fd, frame.as_ptr().cast(), frame.len(), 0, (&self.addr as *const libc::sockaddr_ll).cast(), len) };
        rc as usize == frame.len()
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: our own descriptor.
        unsafe { libc::close(self.fd) };
    }
}

/// The benchmark helper object (`firewall-bench`): the generator and sinks.
pub static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/firewall-bench"));

/// `bench_gen` loaded with `frame` as its template (each copy gets a new
/// source in its last two address bytes), sending with BPF_PROG_TEST_RUN's
/// live-frames mode out of `ifname` of the calling thread's namespace:
/// XDP_TX into the veth's peer. Create and use it on one thread.
pub struct LiveFrames {
    ebpf: aya::Ebpf,
    frame: Vec<u8>,
    ctx: Vec<u8>,
}

impl LiveFrames {
    pub fn new(ifname: &str, frame: Vec<u8>) -> Self {
        use firewall_common::maps::bench;
        let mut ebpf = aya::Ebpf::load(BENCH_OBJECT).expect("bench object loads");
        assert!(frame.len() <= bench::MAX_FRAME, "frame longer than the generator's template");
        let mut template = [0u8; bench::MAX_FRAME];
        template[..frame.len()].copy_from_slice(&frame);
        let mut m: aya::maps::Array<_, [u8; bench::MAX_FRAME]> = aya::maps::Array::try_from(ebpf.map_mut(bench::FRAME).unwrap()).unwrap();
        m.set(0, &template, 0).unwrap();
        let prog: &mut aya::programs::Xdp = ebpf.program_mut(bench::GEN_PROGRAM).unwrap().try_into().unwrap();
        prog.load().unwrap();
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(ifindex, 0, "{ifname} exists");
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex. Live frames leave through the
        // ingress device with XDP_TX.
        let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0].iter().flat_map(|v| v.to_ne_bytes()).collect();
        Self { ebpf, frame, ctx }
    }

    /// Sends `count` frames (one test run).
    pub fn send(&mut self, count: u32) {
        use aya::programs::{TestRun as _, TestRunAttrs, TestRunOptions};
        let prog: &aya::programs::Xdp = self.ebpf.program(firewall_common::maps::bench::GEN_PROGRAM).unwrap().try_into().unwrap();
        let opts = TestRunOptions {
            data_in: Some(&self.frame),
            ctx_in: Some(&self.ctx),
            repeat: count,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..TestRunOptions::new()
        };
        prog.test_run(opts).expect("live-frames test run");
    }
}
