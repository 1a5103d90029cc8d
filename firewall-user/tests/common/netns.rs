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
