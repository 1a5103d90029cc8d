use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::programs::XdpMode;
use firewall_common::MODE_GENERIC;
use firewall_user::{alerts, compile, instance, loader, maps, metrics, policy};
use tokio::signal::unix::{SignalKind, signal};

use super::Mode;

/// The signals `serve` acts on, registered before anything is loaded: a
/// SIGHUP or SIGTERM during start-up (a `systemctl reload` right after
/// `start`) waits for `serve` instead of killing a half-done takeover.
struct Signals {
    hup: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

/// This controller's own counts, for `/metrics`.
static COUNTS: metrics::ControllerCounts = metrics::ControllerCounts::new();

#[derive(clap::Args)]
pub struct RunArgs {
    /// Interface to protect; repeat for several (one policy, one shared connection table).
    #[arg(long = "iface", required = true)]
    ifaces: Vec<String>,
    /// Policy file (TOML).
    #[arg(long = "policy")]
    policy_path: PathBuf,
    /// XDP attach mode for interfaces attached afresh.
    #[arg(long, value_enum, default_value = "native")]
    mode: Mode,
    /// On SIGINT/SIGTERM leave the data plane pinned and enforcing (for
    /// a service manager: the next `run` adopts it without a gap).
    #[arg(long)]
    keep: bool,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (e.g. 127.0.0.1:9464).
    #[arg(long = "metrics", value_name = "ADDR:PORT")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// How alert lines are logged: `text`, or `json` (one object per line).
    #[arg(long, value_enum, default_value = "text")]
    alert_log: AlertLog,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AlertLog {
    Text,
    Json,
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let RunArgs { ifaces, policy_path, mode, keep, metrics_addr, alert_log } = args;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Bound first: a wrong address fails before anything is attached.
    let metrics_listener = metrics_addr
        .map(|a| std::net::TcpListener::bind(a).with_context(|| format!("cannot listen on {a} for /metrics")))
        .transpose()?;
    let signals = {
        let _guard = runtime.enter();
        Signals { hup: signal(SignalKind::hangup())?, int: signal(SignalKind::interrupt())?, term: signal(SignalKind::terminate())? }
    };
    loader::check_kernel()?;
    loader::check_privileges()?;
    // In order, each once.
    let mut seen = std::collections::HashSet::new();
    let ifaces: Vec<String> = ifaces.iter().filter(|i| seen.insert(i.as_str())).cloned().collect();
    for iface in &ifaces {
        loader::ifindex(iface)?;
    }
    let policy_path = fs::canonicalize(&policy_path).with_context(|| format!("cannot read {}", policy_path.display()))?;
    // Taken before the file is read: an edit during start-up is reloaded.
    let stamp = file_stamp(&policy_path);
    let (compiled, alerts) = load_policy(&policy_path)?;
    let bpffs = loader::ensure_bpffs()?;
    if bpffs == loader::Bpffs::Private {
        log::warn!("this process has a mount namespace of its own (`ip netns exec`?): the data plane is pinned where no other process sees it and lasts only as long as this controller; to keep it enforcing across a crash or restart, enter just the network namespace (`nsenter --net=/run/netns/NAME`)");
    }
    let inst = instance::Instance::take(&ifaces)?;
    if inst.created {
        // Event files of an earlier firewall of that name are not ours.
        firewall_user::events::remove_run_dir(&inst.name);
    }
    log::info!("loading the firewall for {} (signals are queued until it runs)", ifaces.join(", "));
    let mut fw = match start(&inst, &ifaces, &policy_path, &compiled, mode) {
        Ok(fw) => fw,
        Err(e) => {
            // A firewall this run created goes again; one it was taking
            // over keeps running (see `start`).
            if inst.created {
                inst.remove();
            }
            return Err(e);
        }
    };
    log::info!(
        "policy {} ({}), generation {}; pinned at {}",
        policy_path.display(),
        compile::describe(&compiled),
        fw.generation(),
        inst.dir.display()
    );
    if let Some(listener) = metrics_listener {
        let found = maps::open_dir(&inst.dir).context("cannot open the maps for /metrics")?;
        let programs: Vec<metrics::ProgramRef> = fw
            .program_ids()
            .into_iter()
            .map(|(port, name, id)| metrics::ProgramRef { iface: ifaces[port].clone(), name: name.to_owned(), id })
            .collect();
        let addr = listener.local_addr()?;
        let _guard = runtime.enter();
        runtime.spawn(serve_metrics(listener, found, programs));
        log::info!("serving Prometheus metrics at http://{addr}/metrics");
    }
    notify_ready();
    let watch = Alerting {
        watch: {
            let mut w = alerts::Watch::default();
            w.set_alerts(alerts);
            w
        },
        found: maps::open_dir(&inst.dir).context("cannot open the maps for alerts")?,
        format: alert_log,
    };
    let monitor = {
        let _guard = runtime.enter();
        Monitor::open(&inst, &ifaces)
    };
    let result = runtime.block_on(serve(&mut fw, policy_path.to_path_buf(), stamp, signals, watch, monitor));
    if keep {
        log::info!("exiting; the data plane stays pinned at {} and enforcing (`firewall stop` removes it)", inst.dir.display());
    } else {
        inst.remove();
        firewall_user::events::remove_run_dir(&inst.name);
        drop(fw);
        log::info!("detached from {}", ifaces.join(", "));
    }
    result.map(|()| ExitCode::SUCCESS)
}

/// Loads, installs the policy and attaches or takes over every interface.
/// Until `install` flips, a data plane being taken over is untouched; a
/// failure after that leaves it enforcing the new policy, some interfaces
/// possibly with the new programs (the error says which step failed).
fn start(inst: &instance::Instance, ifaces: &[String], policy_path: &Path, compiled: &compile::Compiled, mode: Mode) -> Result<loader::Firewall> {
    let mut adopted = Vec::new();
    let mut made = Vec::new();
    for iface in ifaces {
        adopted.push(inst.live_links(iface)?);
        made.push(inst.prepare(iface)?);
    }
    let pins: Vec<loader::PinPaths> = ifaces.iter().map(|i| inst.pin_paths(i)).collect();
    let mut fw = match loader::Firewall::open(&pins) {
        Ok(fw) => fw,
        Err(e) => {
            // Leave a pinned data plane exactly as it was: remove only the
            // interface directories this run made.
            for (iface, made) in ifaces.iter().zip(&made) {
                if *made && !inst.created {
                    inst.remove_iface(iface);
                }
            }
            if e.downcast_ref::<loader::Incompatible>().is_some() {
                return Err(anyhow::anyhow!(Refused(format!("refusing to take over the running firewall `{}`: {e}; it keeps running and enforcing its policy. To replace it (its flows, counters and cookie keys are lost), run `firewall stop --iface {}` first", inst.name, ifaces[0]))));
            }
            return Err(e);
        }
    };
    // Before the install: a failure to pin changes nothing.
    let mut tables = Vec::new();
    for (port, iface) in ifaces.iter().enumerate() {
        tables.push(fw.pin_programs(port, &inst.iface_dir(iface))?);
    }
    let addrs = fw.refresh_local_addrs().context("failed to write the host's addresses")?;
    log::debug!("{addrs} local addresses: cookie SYN-ACKs are sent for these only");
    let previous = (!fw.is_fresh()).then(|| fw.generation());
    fw.install(compiled).context("failed to write the policy into the maps")?;
    fw.set_controller(policy_path)?;
    if let Some(g) = previous {
        log::info!("took over the firewall `{}` at generation {g}", inst.name);
    }
    let xdp_mode = match mode {
        Mode::Native => XdpMode::Driver,
        Mode::Generic => XdpMode::Skb,
    };
    for (port, (iface, links)) in ifaces.iter().zip(adopted).enumerate() {
        let dir = inst.iface_dir(iface);
        match links {
            Some(links) => {
                fw.replace_port(port, &links).with_context(|| format!("failed to swap the programs on {iface}"))?;
                let info = fw.interface(port)?;
                let was = if info.mode == MODE_GENERIC { "generic" } else { "native" };
                if (info.mode == MODE_GENERIC) != (xdp_mode == XdpMode::Skb) {
                    log::warn!("{iface} stays in {was} mode (an adopted attachment keeps its mode; `firewall stop` and `run` to change it)");
                }
                log::info!("took over {iface} ({was} mode): programs replaced atomically, flows, counters and cookie keys kept");
            }
            None => {
                let (in_effect, links) = fw.attach_port(port, iface, xdp_mode)?;
                for (link, name) in links.into_iter().zip(loader::LINKS) {
                    link.pin(dir.join(name)).with_context(|| format!("failed to pin {name} of {iface}"))?;
                }
                log::info!("attached to {iface} ({} mode)", if in_effect == XdpMode::Skb { "generic" } else { "native" });
            }
        }
    }
    // Interfaces the firewall had and this run does not name.
    for old in instance::interfaces(&inst.dir) {
        if !ifaces.contains(&old) {
            inst.remove_iface(&old);
            log::info!("detached from {old} (not named by this run)");
        }
    }
    // No packet is in the programs replaced any more: release their tables.
    std::thread::sleep(loader::GRACE);
    for (iface, ours) in ifaces.iter().zip(&tables) {
        for entry in fs::read_dir(inst.iface_dir(iface)).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("progs") && name != *ours {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    Ok(fw)
}

/// A takeover refused because the pinned data plane does not fit this
/// build: the process exits with `REFUSED_EXIT` (the service unit does not
/// restart on it).
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Refused {}

pub const REFUSED_EXIT: u8 = 3;

/// `/metrics` over HTTP on the controller's runtime; each scrape reads the
/// maps on the blocking pool (counting the flow tables takes a while).
async fn serve_metrics(listener: std::net::TcpListener, found: Vec<maps::Found>, programs: Vec<metrics::ProgramRef>) {
    use axum::{http::header, response::IntoResponse};
    let state = std::sync::Arc::new(std::sync::Mutex::new((found, programs)));
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let state = state.clone();
            async move {
                let text = tokio::task::spawn_blocking(move || {
                    let guard = state.lock().expect("metrics state");
                    metrics::render(&guard.0, &COUNTS, &guard.1)
                })
                .await;
                match text {
                    Ok(Ok(body)) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response(),
                    Ok(Err(e)) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response(),
                    Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
                }
            }
        }),
    );
    let result = async {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        axum::serve(listener, app).await
    }
    .await;
    if let Err(e) = result {
        log::error!("the /metrics server stopped: {e}");
    }
}

/// Tells a service manager (`Type=notify`) that the firewall is enforcing.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot notify the service manager that the firewall is ready: {e}");
            return;
        }
    };
    let msg = format!("READY=1\nMAINPID={}", std::process::id());
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), Path::new(&path))
    };
    if let Err(e) = sent {
        log::error!("cannot notify the service manager that the firewall is ready: {e}");
    }
}

/// The compiled policy and its alerts.
fn load_policy(path: &Path) -> Result<(compile::Compiled, Vec<alerts::Alert>)> {
    let policy = policy::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in &policy.warnings {
        log::warn!("{}", w.render("warning"));
    }
    let compiled = compile::compile(&policy).map_err(|e| anyhow::anyhow!("{}", e.render(&policy, &path.display().to_string())))?;
    Ok((compiled, policy.alerts))
}

/// The alerts the controller checks once a second, on the counters of its
/// own interfaces.
struct Alerting {
    watch: alerts::Watch,
    found: Vec<maps::Found>,
    format: AlertLog,
}

impl Alerting {
    /// `tables`: the connection tables' sizes at the last sweep.
    fn tick(&mut self, dt: f64, tables: (usize, usize), log: &mut EventFiles) -> Result<()> {
        if self.watch.alerts().is_empty() {
            return Ok(());
        }
        let snap = maps::snapshot_sum(&self.found)?;
        let transitions = self.watch.tick(snap, tables, dt, std::time::Instant::now());
        // The busiest sources of what fires, from the recorded events.
        let top = if transitions.is_empty() { None } else { log.sink.as_ref().map(|s| s.top()) };
        for mut t in transitions {
            if let (Some(top), Some(m)) = (&top, &t.metric) {
                t.sources = top.sources_for(m, ALERT_SOURCES);
            }
            match self.format {
                // One JSON object per line, nothing around it (journald and
                // log shippers parse it as it is).
                AlertLog::Json => eprintln!("{}", t.json()),
                AlertLog::Text if t.state == "firing" => log::warn!("{}", t.text()),
                AlertLog::Text => log::info!("{}", t.text()),
            }
            if let Some(cmd) = t.command.clone() {
                tokio::spawn(run_alert_command(cmd, t.json()));
            }
            log.write(|sink| sink.alert(t));
        }
        metrics::set_alerts(self.watch.firing());
        Ok(())
    }
}

/// Source prefixes an alert names.
const ALERT_SOURCES: usize = 5;
/// A connection table this full (at a sweep) is reported as nearly full;
/// back under `TABLE_OK` it is reported as recovered.
const TABLE_FULL: f64 = 0.9;
const TABLE_OK: f64 = 0.75;

/// The data plane's event ring buffer, read as records come.
struct Monitor {
    ring: Option<tokio::io::unix::AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>>,
    files: EventFiles,
}

/// What the controller writes to the firewall's event files.
struct EventFiles {
    /// Opened with the first event: a firewall without events writes nothing.
    sink: Option<firewall_user::events::Sink>,
    dir: PathBuf,
    /// Interface names by index.
    names: std::collections::HashMap<u32, String>,
    /// Rule names by slot and index, read from `FW_RULE_META` when first
    /// needed; cleared at each reload (the slot written then changed).
    rule_meta: Option<aya::maps::Array<aya::maps::MapData, firewall_common::RuleMeta>>,
    rule_names: std::collections::HashMap<(u8, u16), Option<String>>,
    /// Which tables were last reported nearly full (proven, unproven).
    full: [bool; 2],
}

impl Monitor {
    /// Never fails: without the ring, only the controller's own events are logged.
    fn open(inst: &instance::Instance, ifaces: &[String]) -> Self {
        let shared = inst.dir.join("shared");
        let names = ifaces.iter().filter_map(|i| Some((loader::ifindex(i).ok()?, i.clone()))).collect();
        // run_dir reads this process's namespace inode, which `Instance::take` already did.
        let dir = firewall_user::events::run_dir(&inst.name).unwrap_or_else(|_| Path::new("/run/firewall/unknown").join(&inst.name));
        let rule_meta = aya::maps::MapData::from_pin(shared.join(firewall_common::maps::RULE_META))
            .ok()
            .and_then(|d| aya::maps::Array::try_from(aya::maps::Map::Array(d)).ok());
        let files = EventFiles { sink: None, dir, names, rule_meta, rule_names: Default::default(), full: [false; 2] };
        let ring = (|| -> Result<_> {
            let path = shared.join(firewall_common::maps::EVENTS);
            let data = aya::maps::MapData::from_pin(&path).with_context(|| format!("cannot open {}", path.display()))?;
            let ring = aya::maps::RingBuf::try_from(aya::maps::Map::RingBuf(data))?;
            // SAFETY: the AsyncFd owns the ring buffer, hence its descriptor,
            // which stays open for as long as it is registered.
            unsafe { tokio::io::unix::AsyncFd::register(ring) }.map_err(|e| anyhow::anyhow!("cannot watch the event ring buffer: {e}"))
        })();
        let ring = ring.map_err(|e| log::warn!("events of the data plane will not be logged: {e:#}")).ok();
        Self { ring, files }
    }
}

impl EventFiles {
    /// Runs `f` on the sink, opening it first if need be; a failure is
    /// counted and logged, never fatal.
    fn write(&mut self, f: impl FnOnce(&mut firewall_user::events::Sink) -> Result<()>) {
        if self.sink.is_none() {
            match firewall_user::events::Sink::open(&self.dir) {
                Ok(s) => self.sink = Some(s),
                Err(e) => {
                    COUNTS.error();
                    log::warn!("events cannot be logged: {e:#}");
                    return;
                }
            }
        }
        let Some(sink) = self.sink.as_mut() else { return };
        if let Err(e) = f(sink).and_then(|()| sink.flush()) {
            COUNTS.error();
            log::warn!("writing an event failed: {e:#}");
        }
    }

    fn rule_name(&mut self, slot: u8, rule: u16) -> Option<String> {
        if rule == firewall_common::NO_RULE || u32::from(slot) >= firewall_common::POLICY_SLOTS {
            return None;
        }
        let meta = self.rule_meta.as_ref()?;
        self.rule_names
            .entry((slot, rule))
            .or_insert_with(|| meta.get(&(u32::from(slot) * firewall_common::MAX_RULES + u32::from(rule)), 0).ok().map(|m| firewall_user::stats::rule_name(&m)))
            .clone()
    }

    /// An `auto` service switched.
    fn cookie_change(&mut self, c: loader::CookieChange) {
        let change = firewall_user::events::StateChange {
            time: loader::unix_now_f64(),
            what: "cookie_mode".into(),
            subject: c.service,
            state: if c.on { "on" } else { "off" }.into(),
            value: c.rate,
            message: c.message,
        };
        self.write(|sink| sink.state(change));
    }

    /// Reports a connection table entering or leaving `TABLE_FULL` use.
    fn tables(&mut self, swept: loader::Swept) {
        let tables = [("proven", swept.proven, true, firewall_common::MAX_FLOWS), ("unproven", swept.unproven, false, firewall_common::MAX_REMOTE_FLOWS)];
        for (i, (name, used, proven, max)) in tables.into_iter().enumerate() {
            let use_ = alerts::table_use(proven, used);
            let state = if !self.full[i] && use_ >= TABLE_FULL {
                "nearly_full"
            } else if self.full[i] && use_ < TABLE_OK {
                "ok"
            } else {
                continue;
            };
            self.full[i] = state == "nearly_full";
            let message = format!("{used} of {max} entries in use ({:.0} %)", use_ * 100.0);
            if self.full[i] {
                log::warn!("the {name} connection table is nearly full: {message}");
            } else {
                log::info!("the {name} connection table is below {:.0} % again: {message}", TABLE_OK * 100.0);
            }
            let change = firewall_user::events::StateChange { time: loader::unix_now_f64(), what: "table".into(), subject: name.into(), state: state.into(), value: use_, message };
            self.write(|sink| sink.state(change));
        }
    }

    /// Logs what the ring holds, at most `BATCH` records; returns whether
    /// more wait (then the loop comes back at once, after its other work:
    /// an event flood never starves reloads, signals or key rotation).
    /// A record that cannot be written is counted and dropped, never left
    /// in the ring (which would stop the wake-ups).
    fn drain(&mut self, ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> bool {
        use firewall_common::{EVENT_BAN, EVENT_DROP, EVENT_LOG, EVENT_SYN, Event};
        use firewall_user::events::{Entry, Record};
        const BATCH: usize = 1024;
        let mut more = true;
        let mut batch = Vec::new();
        for _ in 0..BATCH {
            let Some(item) = ring.next() else {
                more = false;
                break;
            };
            if item.len() >= std::mem::size_of::<Event>() {
                // SAFETY: the data plane writes whole `Event`s, plain integers.
                batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
            }
        }
        if batch.is_empty() {
            return more;
        }
        // Unix minus monotonic time, per batch: the wall clock may have been stepped.
        let clock = firewall_user::events::unix_minus_mono_ns();
        let records: Vec<(u8, Record)> = batch
            .iter()
            .map(|ev| {
                // A ban is the firewall's, not one interface's.
                let iface = match ev.ifindex {
                    0 => "-".to_owned(),
                    i => self.names.get(&i).cloned().unwrap_or_else(|| format!("ifindex {i}")),
                };
                let rule = self.rule_name(ev.slot, ev.rule);
                (ev.kind, Record::from_event(ev, clock, iface, rule))
            })
            .collect();
        self.write(|sink| {
            for (kind, r) in records {
                match kind {
                    EVENT_DROP => sink.drop(r)?,
                    EVENT_LOG => sink.log(r)?,
                    EVENT_BAN => {
                        log::warn!("{}", Entry::Ban(r.clone()).text());
                        sink.ban(r)?
                    }
                    EVENT_SYN => {
                        if let Some(service) = r.rule.clone() {
                            sink.syn(&service, &r);
                        }
                    }
                    _ => {}
                }
            }
            Ok(())
        });
        more
    }
}

/// Waits until the event ring has something (never, without one) and
/// logs a batch of it.
async fn events_ready(monitor: &mut Monitor) -> Result<()> {
    let Monitor { ring, files } = monitor;
    match ring {
        Some(ring) => {
            let mut guard = ring.readable_mut().await?;
            if files.drain(guard.get_inner_mut()) {
                // More to read: stay ready, but let the loop's other arms run.
                drop(guard);
                tokio::task::yield_now().await;
            } else {
                guard.clear_ready();
            }
            Ok(())
        }
        None => std::future::pending().await,
    }
}

/// Runs an alert's command with the alert as JSON on stdin, for at most
/// `ALERT_COMMAND_SECS`; never waited for by the controller's loop.
async fn run_alert_command(cmd: Vec<String>, json: String) {
    use tokio::io::AsyncWriteExt as _;
    const ALERT_COMMAND_SECS: u64 = 10;
    // A process group of its own, so that the timeout kills what it started too.
    let mut child = match tokio::process::Command::new(&cmd[0]).args(&cmd[1..]).stdin(std::process::Stdio::piped()).process_group(0).kill_on_drop(true).spawn() {
        Ok(c) => c,
        Err(e) => {
            log::error!("alert command {cmd:?} did not start: {e}");
            return;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(json.as_bytes()).await;
        let _ = stdin.write_all(b"\n").await;
    }
    match tokio::time::timeout(Duration::from_secs(ALERT_COMMAND_SECS), child.wait()).await {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => log::warn!("alert command {cmd:?} exited with {status}"),
        Ok(Err(e)) => log::warn!("alert command {cmd:?}: {e}"),
        Err(_) => {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) on the process group the child leads.
                unsafe { libc::killpg(pid as i32, libc::SIGKILL) };
            }
            let _ = child.kill().await;
            log::warn!("alert command {cmd:?} ran over {ALERT_COMMAND_SECS} s and was killed with its process group");
        }
    }
}

/// What identifies a version of the policy file.
fn file_stamp(path: &Path) -> Option<(i64, i64, u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.mtime(), m.mtime_nsec(), m.size(), m.ino()))
}

/// Reloads on SIGHUP or when the file changes; returns on SIGINT/SIGTERM.
async fn serve(fw: &mut loader::Firewall, path: PathBuf, mut stamp: Option<(i64, i64, u64, u64)>, signals: Signals, mut alerting: Alerting, mut monitor: Monitor) -> Result<()> {
    let Signals { mut hup, mut int, mut term } = signals;
    const ALERT_TICK: Duration = Duration::from_secs(1);
    let mut alert_tick = tokio::time::interval(ALERT_TICK);
    // After a stall (a large install) one tick, not a burst of them.
    alert_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_alert_tick = std::time::Instant::now();
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    // The XDP program ignores idle flows on lookup; the sweep frees them.
    let mut sweep = tokio::time::interval(Duration::from_secs(10));
    // `auto` cookie services: SYN rate measured four times a second.
    const TICK: Duration = Duration::from_millis(250);
    let mut cookie_tick = tokio::time::interval(TICK);
    let mut rotation = fw.key_rotation();
    // A controller that took over keeps the previous one's rotation schedule.
    let rotated = fw.cookie_rotated_at();
    let since = if rotated == 0 { Duration::ZERO } else { Duration::from_nanos(firewall_user::conntrack::monotonic_ns().saturating_sub(rotated)) };
    let first = rotation.saturating_sub(since).max(Duration::from_millis(1));
    let mut rotate = tokio::time::interval_at(tokio::time::Instant::now() + first, rotation);
    let mut warned_no_meta = false;
    // The connection tables' sizes at the last sweep (a walk of each).
    let mut tables = (0, 0);
    loop {
        tokio::select! {
            _ = hup.recv() => reload(fw, &path, "SIGHUP", &mut alerting, &mut monitor.files),
            _ = alert_tick.tick() => {
                // Rates over the time that really passed.
                let dt = last_alert_tick.elapsed().as_secs_f64();
                last_alert_tick = std::time::Instant::now();
                if let Err(e) = alerting.tick(dt, tables, &mut monitor.files) {
                    COUNTS.error();
                    log::warn!("checking the alerts failed: {e:#}");
                }
                if let Some(sink) = monitor.files.sink.as_ref() {
                    if let Err(e) = sink.write_top() {
                        COUNTS.error();
                        log::warn!("writing the top sources failed: {e:#}");
                    }
                }
            }
            r = events_ready(&mut monitor) => {
                if let Err(e) = r {
                    COUNTS.error();
                    log::warn!("reading events failed: {e:#}");
                }
            }
            _ = poll.tick() => {
                let now = file_stamp(&path);
                if now != stamp && now.is_some() {
                    stamp = now;
                    reload(fw, &path, "file changed", &mut alerting, &mut monitor.files);
                }
            }
            _ = cookie_tick.tick() => {
                match fw.cookie_tick(TICK) {
                    Ok(changes) => changes.into_iter().for_each(|c| monitor.files.cookie_change(c)),
                    Err(e) => log::warn!("syncookie auto mode: {e:#}"),
                }
            }
            _ = rotate.tick() => {
                match fw.rotate_cookie_key() {
                    Ok(()) => log::debug!("rotated the SYN-cookie key"),
                    Err(e) => {
                        COUNTS.error();
                        log::error!("rotating the SYN-cookie key failed (the previous key stays in use): {e:#}")
                    }
                }
                // A reload may have changed the period.
                if fw.key_rotation() != rotation {
                    rotation = fw.key_rotation();
                    rotate = tokio::time::interval_at(tokio::time::Instant::now() + rotation, rotation);
                }
            }
            _ = sweep.tick() => {
                match fw.sweep() {
                    Ok(swept) => {
                        if swept.removed > 0 {
                            log::debug!("swept {} idle flows", swept.removed);
                        }
                        if swept.uncounted > 0 {
                            log::debug!("{} idle connections the host no longer has no longer count against max_conns", swept.uncounted);
                        }
                        tables = (swept.proven, swept.unproven);
                        monitor.files.tables(swept);
                    }
                    Err(e) => {
                        COUNTS.error();
                        log::warn!("sweeping the connection table failed: {e:#}")
                    }
                }
                // Expired set elements no longer match; deleting them frees
                // their room in the set.
                match fw.sets().and_then(|mut s| {
                    let _lock = firewall_user::sets::lock()?;
                    Ok(s.sweep(firewall_user::conntrack::monotonic_ns())?)
                }) {
                    Ok(n) if n > 0 => log::debug!("removed {n} expired set elements"),
                    Ok(_) => {}
                    Err(e) => log::warn!("sweeping the sets failed: {e:#}"),
                }
                housekeeping(fw, &mut warned_no_meta);
            }
            _ = int.recv() => return Ok(()),
            _ = term.recv() => return Ok(()),
        }
    }
}

/// Keeps what the data plane needs to know of the host current: its
/// addresses (cookie destinations) and the sysctls the hand-off depends
/// on; reports once when the driver cannot carry the hand-off mark.
fn housekeeping(fw: &mut loader::Firewall, warned_no_meta: &mut bool) {
    if let Err(e) = fw.refresh_local_addrs() {
        COUNTS.error();
        log::warn!("refreshing the host's addresses failed: {e:#}");
    }
    match fw.refresh_cookie_offer() {
        Ok(Some(offer)) => log::warn!("TCP sysctls changed: cookie SYN-ACKs now offer {offer}"),
        Ok(None) => {}
        Err(e) => {
            COUNTS.error();
            log::warn!("reading the TCP sysctls failed: {e:#}")
        }
    }
    if !*warned_no_meta && fw.handoff_broken().unwrap_or(false) {
        *warned_no_meta = true;
        log::error!("this interface's driver gives XDP no metadata room, so a validated cookie ACK cannot be handed to its listener: SYN cookies are off and SYNs go to the host's stack (counter handoff_no_meta); use generic mode (--mode generic) for cookies");
    }
}

/// A policy that fails to load leaves the running one in force.
fn reload(fw: &mut loader::Firewall, path: &Path, why: &str, alerting: &mut Alerting, files: &mut EventFiles) {
    match load_policy(path).and_then(|(c, a)| fw.install(&c).map(|()| (c, a))) {
        Ok((c, a)) => {
            alerting.watch.set_alerts(a);
            // The slot written now names other rules.
            files.rule_names.clear();
            COUNTS.reloads_ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            log::info!("reloaded {} ({why}): generation {}, {}", path.display(), fw.generation(), compile::describe(&c))
        }
        Err(e) => {
            COUNTS.reloads_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            log::error!("reload of {} ({why}) failed; keeping the running policy (generation {}):\n{e:#}", path.display(), fw.generation())
        }
    }
}
