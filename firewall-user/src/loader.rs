//! Loads the firewall's programs (one object per interface), reopening or
//! pinning their maps; writes compiled policies into the maps (double
//! buffered, so a reload is atomic per packet); attaches.

use std::{
    ffi::CString,
    fs,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, PerCpuValues, ProgramArray},
    programs::{ProgramError, links::FdLink, SchedClassifier, TcAttachType, Xdp, XdpMode},
};
use firewall_common::{
    Active, Control, CookieConfig, CookieCounters, CookieKey, Counter, LimitCounters, IfaceInfo, LAYOUT_VERSION, MAX_BOXES,
    MAX_LEAF_REFS, MAX_LOCAL_ADDRS, MAX_NODES, MAX_RULES, MODE_GENERIC, MODE_NATIVE, MatchBox, Node, OFFER_ALL,
    OFFER_ECN, OFFER_SACK, OFFER_TIMESTAMPS, OFFER_WSCALE, PORTS, POLICY_PATH_LEN, PolicyHeader, RuleBase, RuleMeta,
    STATUS_NO_META, SYNCOOKIE_AUTO, SYNCOOKIE_OFF, U128, maps,
};

use crate::{bpf_sys, compile::Compiled};

/// The XDP object, built by build.rs with the pinned nightly.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/firewall"));

pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// An XDP program runs for microseconds: 10 ms after a flip (or a program
/// swap) no packet is still judged by what was replaced.
pub const GRACE: std::time::Duration = std::time::Duration::from_millis(10);

/// Where one interface's program object finds its maps: the firewall's
/// shared directory (policy, connection table, keys) and the interface's own
/// (counters, cookie settings). Maps found there are reused; missing ones are
/// created and pinned there.
#[derive(Debug, Clone)]
pub struct PinPaths {
    pub shared: PathBuf,
    pub iface: PathBuf,
}

/// The pinned maps do not fit this build (an upgrade across a layout
/// change): nothing was changed.
#[derive(Debug)]
pub struct Incompatible(pub String);

impl std::fmt::Display for Incompatible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Incompatible {}

/// The three links of one interface, in the order they are attached and
/// pinned: TC first, so that a set with its XDP link is complete.
pub const LINKS: [&str; 3] = ["link_tc_egress", "link_tc_ingress", XDP_LINK];
pub const XDP_LINK: &str = "link_xdp";
/// The program behind each of `LINKS`.
const LINKED_PROGRAMS: [&str; 3] = [maps::EGRESS_PROGRAM, maps::INGRESS_PROGRAM, maps::XDP_PROGRAM];

/// A loaded (not necessarily attached) firewall: one program object per
/// interface, sharing the policy, connection-table and key maps.
pub struct Firewall {
    /// The first interface's object (and the handles of the shared maps).
    pub ebpf: Ebpf,
    /// The objects of further interfaces.
    others: Vec<Ebpf>,
    active: Active,
    /// Of the policy in force, for the sweep of idle flows.
    timeouts: firewall_common::Timeouts,
    /// Cookie ports written into each policy slot (to clear on reuse).
    cookie_ports: [Vec<u16>; 2],
    /// `auto` services of the policy in force.
    auto: Vec<AutoService>,
    cookie_settings: crate::policy::SyncookieSettings,
    /// What every interface's `FW_COOKIE_CFG` holds, but the MSS (per object, in `mss`).
    cookie_config: CookieConfig,
    mss: Vec<(u16, u16)>,
    /// Whether the shared maps were created by this load (not reopened).
    fresh: bool,
    /// Links of `attach`, which are not pinned.
    held_links: Vec<FdLink>,
    /// Connection counts that moved during the last sweeps' walks, and how
    /// many sweeps in a row (see `reconcile_conns`).
    busy_counts: std::collections::HashMap<firewall_common::BucketKey, u32>,
}

/// An `auto` service switched cookies on or off.
#[derive(Clone, Debug, PartialEq)]
pub struct CookieChange {
    pub service: String,
    pub on: bool,
    /// SYNs per second when it switched.
    pub rate: f64,
    pub message: String,
}

/// What a sweep of the connection tables did and found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub removed: usize,
    /// Entries left in each table (a walk under churn is approximate).
    pub proven: usize,
    pub unproven: usize,
    /// Counted connections the host no longer has (see
    /// `conntrack::DEAD_IDLE_SECS`), left out of their source's count.
    pub uncounted: usize,
}

/// The state of one `syncookie = "auto"` service.
#[derive(Debug, Clone)]
struct AutoService {
    rule: u32,
    name: String,
    on: bool,
    /// SYN count at the last tick.
    syns: u64,
    /// Since when the rate has been below `auto_off_rate` (while on).
    below_since: Option<std::time::Instant>,
}

fn load_error(e: aya::EbpfError) -> anyhow::Error {
    if let aya::EbpfError::MapError(aya::maps::MapError::IncompatiblePinnedMap { name, property, expected, actual }) = &e {
        return anyhow!(Incompatible(format!("the pinned map {name} has {property} {actual}, this build needs {expected}")));
    }
    let msg = format!("{e:#}");
    if msg.contains("bpf_sk_assign_tcp_reqsk") {
        anyhow!("this kernel lacks the kfunc bpf_sk_assign_tcp_reqsk (Linux 6.9 or newer, with CONFIG_SYN_COOKIES), which hands SYN-cookie connections to their listener: {msg}")
    } else if msg.contains("Operation not permitted") {
        anyhow!("loading the XDP program was refused (EPERM): run as root, or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON")
    } else {
        anyhow!(e).context("failed to load the firewall's eBPF object")
    }
}

/// Loads one program object; its maps are reopened from / pinned at `pins`.
fn load_object(pins: Option<&PinPaths>) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    if let Some(p) = pins {
        // A pinned data plane missing one of this build's shared maps (an
        // older layout, or a pin removed by hand) is refused before the load,
        // which would pin an empty one beside the others: an empty
        // `FLOW_HINTS` beside a full `FLOWS` hides flows from SYNs.
        if p.shared.join(maps::CONTROL).exists() {
            if let Some(name) = maps::SHARED.iter().find(|n| !p.shared.join(n).exists()) {
                bail!(Incompatible(format!("the pinned data plane in {} has no map {name}: another layout, or a damaged one", p.shared.display())));
            }
        }
        for name in maps::SHARED {
            loader.map_pin_path(name, p.shared.join(name));
        }
        for name in maps::PER_IFACE {
            loader.map_pin_path(name, p.iface.join(name));
        }
    }
    let mut ebpf = loader.load(EBPF_OBJECT).map_err(load_error)?;
    let program: &mut Xdp = ebpf
        .program_mut(maps::XDP_PROGRAM)
        .context("the eBPF object has no `firewall` program")?
        .try_into()?;
    program.load().context("the kernel's verifier rejected the XDP program")?;
    let prog_fd = program.fd()?.try_clone()?;
    for name in maps::BOUND {
        match ebpf.map(name) {
            Some(aya::maps::Map::Array(data)) => bpf_sys::bind_map(prog_fd.as_fd(), data.fd().as_fd())
                .context("BPF_PROG_BIND_MAP failed (the kernel must be 5.10 or newer)")?,
            _ => bail!("the eBPF object has no array map {name}"),
        }
    }
    let egress: &mut SchedClassifier = ebpf
        .program_mut(maps::EGRESS_PROGRAM)
        .context("the eBPF object has no egress program")?
        .try_into()?;
    egress.load().context("the kernel's verifier rejected the TC egress program")?;
    let ingress: &mut SchedClassifier = ebpf
        .program_mut(maps::INGRESS_PROGRAM)
        .context("the eBPF object has no TC ingress program")?
        .try_into()?;
    ingress.load().context("the kernel's verifier rejected the TC ingress (cookie hand-off) program")?;
    let syn: &mut Xdp = ebpf
        .program_mut(maps::COOKIE_SYN_PROGRAM)
        .context("the eBPF object has no cookie SYN program")?
        .try_into()?;
    syn.load().context("the kernel's verifier rejected the XDP cookie SYN program")?;
    let syn_fd = syn.fd()?.try_clone()?;
    let ack: &mut Xdp = ebpf
        .program_mut(maps::COOKIE_ACK_PROGRAM)
        .context("the eBPF object has no cookie ACK program")?
        .try_into()?;
    ack.load().context("the kernel's verifier rejected the XDP cookie ACK program")?;
    let ack_fd = ack.fd()?.try_clone()?;
    let event: &mut Xdp = ebpf
        .program_mut(maps::EVENT_PROGRAM)
        .context("the eBPF object has no event program")?
        .try_into()?;
    event.load().context("the kernel's verifier rejected the XDP event program")?;
    let event_fd = event.fd()?.try_clone()?;
    let mut progs: ProgramArray<_> = ProgramArray::try_from(map(&mut ebpf, maps::PROGRAMS)?)?;
    progs.set(maps::PROG_COOKIE_SYN, &syn_fd, 0).context("failed to register the cookie SYN program")?;
    progs.set(maps::PROG_COOKIE_ACK, &ack_fd, 0).context("failed to register the cookie ACK program")?;
    progs.set(maps::PROG_EVENT, &event_fd, 0).context("failed to register the event program")?;
    Ok(ebpf)
}

/// Unix seconds, with the fraction.
pub fn unix_now_f64() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The (percpu) sum of one counter.
fn counter_sum(values: &PerCpuValues<Counter>) -> Counter {
    values.iter().fold(Counter::default(), |a, c| Counter { packets: a.packets + c.packets, bytes: a.bytes + c.bytes })
}

fn nr_cpus() -> Result<usize> {
    Ok(aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?.get() as usize)
}

impl Firewall {
    /// Loads one object with maps of its own (tests, benchmarks); the
    /// verifier runs here.
    pub fn load() -> Result<Self> {
        Self::open(&[])
    }

    /// Loads one object per entry of `pins` (one per interface), reusing
    /// the maps pinned there or creating and pinning them; with no entry,
    /// one object with unpinned maps. Reused maps keep everything: policy,
    /// flows, counters, cookie keys. A pinned map of another layout fails
    /// with `Incompatible` before anything is changed.
    pub fn open(pins: &[PinPaths]) -> Result<Self> {
        check_privileges()?;
        let mut objects = Vec::new();
        if pins.is_empty() {
            objects.push(load_object(None)?);
        }
        for p in pins {
            objects.push(load_object(Some(p))?);
        }
        let mut objects = objects.into_iter();
        let ebpf = objects.next().expect("one object");
        let mut fw = Self {
            ebpf,
            others: objects.collect(),
            active: Active::default(),
            timeouts: Default::default(),
            cookie_ports: [Vec::new(), Vec::new()],
            auto: Vec::new(),
            cookie_settings: Default::default(),
            cookie_config: CookieConfig { offer: OFFER_ALL, ..CookieConfig::default() },
            mss: Vec::new(),
            fresh: false,
            held_links: Vec::new(),
            busy_counts: std::collections::HashMap::new(),
        };
        fw.restore()?;
        Ok(fw)
    }

    fn objects_mut(&mut self) -> impl Iterator<Item = &mut Ebpf> {
        std::iter::once(&mut self.ebpf).chain(self.others.iter_mut())
    }

    fn objects(&self) -> impl Iterator<Item = &Ebpf> {
        std::iter::once(&self.ebpf).chain(self.others.iter())
    }

    /// Interfaces (program objects) this firewall has.
    pub fn ports(&self) -> usize {
        1 + self.others.len()
    }

    /// Reads back what the maps hold (all zero when they were just
    /// created): the policy in force, cookie state, `auto` modes. Fresh
    /// shared maps get new cookie keys and the layout stamp.
    fn restore(&mut self) -> Result<()> {
        let control = self.control()?;
        self.fresh = control.layout == 0;
        if self.fresh {
            // Both keys, so that the key bit of a forged cookie never
            // selects an unset (all-zero, hence guessable) key.
            for index in 0..2 {
                self.set_cookie_key(index, random_key()?)?;
            }
            let now = unix_now();
            let cookie = bpf_sys::netns_cookie().context("cannot read this network namespace's cookie")?;
            self.update_control(|c| {
                c.layout = LAYOUT_VERSION;
                c.created_unix = now;
                c.netns_cookie = cookie;
            })?;
        } else if control.layout != LAYOUT_VERSION {
            bail!(Incompatible(format!("the pinned data plane has layout {}, this build {LAYOUT_VERSION}", control.layout)));
        }
        let active: Array<_, Active> = Array::try_from(self.ebpf.map(maps::ACTIVE).context("no active map")?)?;
        self.active = active.get(&0, 0)?;
        self.active.netns_ino = netns_inode()?;
        // Both slots' cookie ports, whatever the generation: a controller
        // killed during its first install may have written some.
        let ports: Array<_, u32> = Array::try_from(self.ebpf.map(maps::COOKIE_PORT).context("no cookie port map")?)?;
        for s in 0..2u32 {
            self.cookie_ports[s as usize] =
                (0..PORTS).filter(|p| ports.get(&(s * PORTS + p), 0).is_ok_and(|v| v != 0)).map(|p| p as u16).collect();
        }
        if self.active.generation > 0 {
            let slot = self.active.slot;
            let headers: Array<_, PolicyHeader> = Array::try_from(self.ebpf.map(maps::POLICY).context("no policy map")?)?;
            self.timeouts = headers.get(&slot, 0)?.timeouts;
            let meta = self.rule_metas(slot)?;
            let on: Array<_, u32> = Array::try_from(self.ebpf.map(maps::COOKIE_ON).context("no cookie mode map")?)?;
            for (rule, m) in meta.iter().enumerate() {
                if m.syncookie == SYNCOOKIE_AUTO {
                    let was_on = on.get(&(slot * MAX_RULES + rule as u32), 0)? != 0;
                    self.auto.push(AutoService { rule: rule as u32, name: crate::stats::rule_name(m), on: was_on, syns: 0, below_since: None });
                }
            }
        }
        let mut mss = Vec::new();
        let mut config = None;
        for e in self.objects() {
            let cfg: Array<_, CookieConfig> = Array::try_from(e.map(maps::COOKIE_CONFIG).context("no cookie config map")?)?;
            let c = cfg.get(&0, 0)?;
            mss.push((c.mss_v4, c.mss_v6));
            // An interface added to a running firewall has an empty config.
            if config.is_none() && c.valid != 0 {
                config = Some(c);
            }
        }
        self.mss = mss;
        if let Some(c) = config.filter(|_| !self.fresh) {
            self.cookie_config = c;
        }
        self.write_cookie_config()
    }

    /// The rule metadata of policy slot `slot` (as many as its header says).
    fn rule_metas(&self, slot: u32) -> Result<Vec<RuleMeta>> {
        let headers: Array<_, PolicyHeader> = Array::try_from(self.ebpf.map(maps::POLICY).context("no policy map")?)?;
        let count = headers.get(&slot, 0)?.rule_count.min(MAX_RULES);
        let meta: Array<_, RuleMeta> = Array::try_from(self.ebpf.map(maps::RULE_META).context("no rule meta map")?)?;
        (0..count).map(|r| Ok(meta.get(&(slot * MAX_RULES + r), 0)?)).collect()
    }

    /// Whether the shared maps were created by this load rather than reopened.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    pub fn control(&self) -> Result<Control> {
        let c: Array<_, Control> = Array::try_from(self.ebpf.map(maps::CONTROL).context("no control map")?)?;
        Ok(c.get(&0, 0)?)
    }

    fn update_control(&mut self, f: impl FnOnce(&mut Control)) -> Result<()> {
        let mut c: Array<_, Control> = Array::try_from(map(&mut self.ebpf, maps::CONTROL)?)?;
        let mut v = c.get(&0, 0)?;
        f(&mut v);
        c.set(0, &v, 0).context("failed to write the control record")?;
        Ok(())
    }

    /// Records this process as the controller, running `policy`.
    pub fn set_controller(&mut self, policy: &Path) -> Result<()> {
        let mut path = [0u8; POLICY_PATH_LEN];
        let bytes = policy.as_os_str().as_encoded_bytes();
        let n = bytes.len().min(POLICY_PATH_LEN - 1);
        path[..n].copy_from_slice(&bytes[..n]);
        let now = unix_now();
        let cookie = bpf_sys::netns_cookie().context("cannot read this network namespace's cookie")?;
        self.update_control(|c| {
            c.pid = std::process::id();
            c.netns_cookie = cookie;
            c.controller_unix = now;
            c.policy_path = path;
        })
    }

    /// Writes cookie key `index` (0 or 1). Tests use it to know the key.
    pub fn set_cookie_key(&mut self, index: u32, key: CookieKey) -> Result<()> {
        let mut keys: Array<_, CookieKey> = Array::try_from(map(&mut self.ebpf, maps::COOKIE_KEY)?)?;
        keys.set(index & 1, &key, 0).context("failed to write a cookie key")?;
        Ok(())
    }

    /// Selects the key new cookies are made with.
    pub fn set_cookie_key_index(&mut self, index: u32) -> Result<()> {
        self.cookie_config.key_index = index & 1;
        self.write_cookie_config()
    }

    /// Every interface's cookie config: the common part, its own MSS.
    fn write_cookie_config(&mut self) -> Result<()> {
        let common = self.cookie_config;
        let mss = self.mss.clone();
        for (i, e) in self.objects_mut().enumerate() {
            let (mss_v4, mss_v6) = mss.get(i).copied().unwrap_or_default();
            let mut cfg: Array<_, CookieConfig> = Array::try_from(map(e, maps::COOKIE_CONFIG)?)?;
            cfg.set(0, &CookieConfig { mss_v4, mss_v6, valid: 1, ..common }, 0).context("failed to write the cookie configuration")?;
        }
        Ok(())
    }

    /// Replaces the key that is not in use and makes it current: the XDP
    /// program still tries the previous key for one cookie lifetime.
    pub fn rotate_cookie_key(&mut self) -> Result<()> {
        let next = 1 - self.cookie_config.key_index;
        self.set_cookie_key(next, random_key()?)?;
        self.cookie_config.rotated_ns = crate::conntrack::monotonic_ns();
        self.set_cookie_key_index(next)
    }

    /// `CLOCK_MONOTONIC` ns of the last key rotation (kept across restarts).
    pub fn cookie_rotated_at(&self) -> u64 {
        self.cookie_config.rotated_ns
    }

    /// Moves the last rotation's time (tests drive time through the map).
    pub fn set_cookie_rotated_at(&mut self, ns: u64) -> Result<()> {
        self.cookie_config.rotated_ns = ns;
        self.write_cookie_config()
    }

    /// Sets which options cookie SYN-ACKs may offer (`OFFER_*`); the
    /// controller derives them from the sysctls (`refresh_cookie_offer`).
    pub fn set_cookie_offer(&mut self, offer: u32) -> Result<()> {
        self.cookie_config.offer = offer;
        self.write_cookie_config()
    }

    /// Re-reads the sysctls the cookie hand-off depends on and offers in
    /// cookie SYN-ACKs only what the kernel will accept on hand-off
    /// (`cookie_bpf_check` refuses window scaling, SACK or timestamps that
    /// their sysctl turned off). Returns what changed, for the log.
    pub fn refresh_cookie_offer(&mut self) -> Result<Option<String>> {
        let offer = cookie_offer()?;
        if offer == self.cookie_config.offer {
            return Ok(None);
        }
        self.cookie_config.offer = offer;
        self.write_cookie_config()?;
        Ok(Some(describe_offer(offer)))
    }

    /// Writes the host's addresses, the only destinations cookie SYN-ACKs
    /// are sent for; removes those gone. Returns how many there are.
    pub fn set_local_addrs(&mut self, addrs: &[std::net::IpAddr]) -> Result<usize> {
        let mut map: aya::maps::HashMap<_, U128, u32> = aya::maps::HashMap::try_from(map(&mut self.ebpf, maps::LOCAL_ADDRS)?)?;
        let want: std::collections::HashSet<U128> = addrs.iter().map(|a| U128::from_u128(crate::compile::addr128(*a))).collect();
        if want.len() > MAX_LOCAL_ADDRS as usize {
            bail!("the host has {} addresses; the firewall keeps at most {MAX_LOCAL_ADDRS}", want.len());
        }
        let have: Vec<U128> = map.keys().filter_map(|k| k.ok()).collect();
        for k in have.iter().filter(|k| !want.contains(k)) {
            let _ = map.remove(k);
        }
        for k in &want {
            map.insert(k, &1, 0).context("failed to write a local address")?;
        }
        Ok(want.len())
    }

    /// `set_local_addrs` with every address of this network namespace.
    pub fn refresh_local_addrs(&mut self) -> Result<usize> {
        let addrs = local_addrs()?;
        self.set_local_addrs(&addrs)
    }

    /// Whether the data plane found a driver unable to carry the cookie
    /// hand-off mark (then cookies are off there: SYNs go to the host).
    pub fn handoff_broken(&self) -> Result<bool> {
        for e in self.objects() {
            let status: Array<_, u32> = Array::try_from(e.map(maps::STATUS).context("no status map")?)?;
            if status.get(&0, 0)? & STATUS_NO_META != 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// How often the key rotates, from the policy in force.
    pub fn key_rotation(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.cookie_settings.key_rotation_secs)
    }

    /// One step of the `auto` mode controller, `dt` after the previous
    /// one: measures each auto service's SYN rate (over all interfaces) and
    /// switches cookies on above `auto_on_rate`, off after `auto_hold_secs`
    /// below `auto_off_rate`.
    pub fn cookie_tick(&mut self, dt: std::time::Duration) -> Result<Vec<CookieChange>> {
        self.cookie_tick_at(dt, std::time::Instant::now())
    }

    /// `cookie_tick` at a given instant (tests drive time through it).
    pub fn cookie_tick_at(&mut self, dt: std::time::Duration, now: std::time::Instant) -> Result<Vec<CookieChange>> {
        if self.auto.is_empty() || dt.is_zero() {
            return Ok(Vec::new());
        }
        let slot = self.active.slot;
        let settings = self.cookie_settings.clone();
        let mut syns_of = vec![0u64; self.auto.len()];
        for e in self.objects() {
            let counters: PerCpuArray<_, CookieCounters> = PerCpuArray::try_from(e.map(maps::COOKIE_COUNTERS).context("no cookie counters")?)?;
            for (i, svc) in self.auto.iter().enumerate() {
                syns_of[i] += counters.get(&(slot * MAX_RULES + svc.rule), 0)?.iter().map(|c| c.syns).sum::<u64>();
            }
        }
        let mut on: Array<_, u32> = Array::try_from(map(&mut self.ebpf, maps::COOKIE_ON)?)?;
        let mut out = Vec::new();
        for (svc, syns) in self.auto.iter_mut().zip(syns_of) {
            let rate = syns.saturating_sub(svc.syns) as f64 / dt.as_secs_f64();
            svc.syns = syns;
            let switch = if !svc.on && rate >= settings.auto_on_rate as f64 {
                Some(format!("{rate:.0} SYN/s >= {}: answering with SYN cookies", settings.auto_on_rate))
            } else if svc.on && rate < settings.auto_off_rate as f64 {
                let since = *svc.below_since.get_or_insert(now);
                (now.duration_since(since).as_secs() >= settings.auto_hold_secs)
                    .then(|| format!("{rate:.0} SYN/s < {} for {} s: SYNs go to the host again", settings.auto_off_rate, settings.auto_hold_secs))
            } else {
                if svc.on {
                    svc.below_since = None;
                }
                None
            };
            let Some(message) = switch else { continue };
            // The map first: a failed write leaves the service as it was
            // (tried again next tick), never half switched.
            on.set(slot * MAX_RULES + svc.rule, &u32::from(!svc.on), 0).context("failed to switch a cookie service")?;
            svc.on = !svc.on;
            svc.below_since = None;
            log::warn!("service `{}`: {message}", svc.name);
            out.push(CookieChange { service: svc.name.clone(), on: svc.on, rate, message });
        }
        Ok(out)
    }

    pub fn generation(&self) -> u64 {
        self.active.generation
    }

    /// The main table's hint counts, mapped (see `conntrack::FlowHints`).
    pub fn flow_hints(&self) -> Result<crate::conntrack::FlowHints> {
        match self.ebpf.map(maps::FLOW_HINTS) {
            Some(aya::maps::Map::Array(data)) => crate::conntrack::FlowHints::map(data),
            _ => anyhow::bail!("the eBPF object has no array {}", maps::FLOW_HINTS),
        }
    }

    /// Deletes idle flows from the connection table; returns how many.
    pub fn sweep(&mut self) -> Result<Swept> {
        use firewall_common::BucketKey;
        let mut out = Swept::default();
        let conns: aya::maps::HashMap<_, BucketKey, u64> = aya::maps::HashMap::try_from(map(&mut self.ebpf, maps::CONNS)?)?;
        // The counts before the walk: one that changes meanwhile is left
        // to the next sweep.
        let mut snapshot_failed = false;
        let before: std::collections::HashMap<BucketKey, u64> = conns
            .iter()
            .take(2 * firewall_common::MAX_CONN_COUNTS as usize)
            .filter_map(|i| i.map_err(|_| snapshot_failed = true).ok())
            .collect();
        let mut removed = Vec::new();
        let mut counted = Vec::new();
        let mut complete = true;
        for (table, left, max) in [(maps::FLOWS, &mut out.proven, firewall_common::MAX_FLOWS), (maps::REMOTE_FLOWS, &mut out.unproven, firewall_common::MAX_REMOTE_FLOWS)] {
            // Unmapped, the sweep still runs: its deletes then leave their
            // slots high, which only costs lookups.
            let hints = match table {
                maps::FLOWS => self.flow_hints().inspect_err(|e| log::warn!("sweep: {e:#}")).ok(),
                _ => None,
            };
            let mut flows: aya::maps::HashMap<_, firewall_common::FlowKey, firewall_common::Flow> =
                aya::maps::HashMap::try_from(map(&mut self.ebpf, table)?)?;
            let swept = crate::conntrack::sweep(&mut flows, &self.timeouts, max as usize, hints.as_ref())?;
            out.removed += swept.removed.len();
            out.uncounted += swept.uncounted;
            *left = swept.seen.saturating_sub(swept.removed.len());
            removed.extend(swept.removed);
            counted.extend(swept.counted);
            // Counted flows live in the main table only.
            if table == maps::FLOWS {
                complete = swept.complete && !snapshot_failed;
            }
        }
        if !before.is_empty() || !counted.is_empty() || removed.iter().any(|(_, f)| f.flags & firewall_common::FLOW_COUNTED != 0) {
            self.reconcile_conns(&before, &removed, &counted, complete)?;
        }
        // The data plane keeps closed-from-outside counts while this is
        // recent (see `COUNTED_CLOSE_SECS`).
        let mut swept: Array<_, u64> = Array::try_from(map(&mut self.ebpf, maps::SWEPT)?)?;
        swept.set(0, &crate::conntrack::monotonic_ns(), 0).context("failed to note the sweep")?;
        Ok(out)
    }

    /// Keeps `FW_CONNS` true to the table: a counted flow the sweep
    /// deleted is released; a count the walk found different from its
    /// flows (a flow evicted from the full table, or a race between CPUs,
    /// left it so) is set to what the walk counted, unless it changed
    /// during the walk; counts of replaced limits go. `complete`: the walk
    /// saw every flow; otherwise (a full table under churn) counts are only
    /// raised, never lowered.
    fn reconcile_conns(
        &mut self,
        before: &std::collections::HashMap<firewall_common::BucketKey, u64>,
        removed: &[(firewall_common::FlowKey, firewall_common::Flow)],
        counted: &[(firewall_common::FlowKey, firewall_common::Flow)],
        complete: bool,
    ) -> Result<()> {
        use firewall_common::{BucketKey, RuleLimit};
        let limits: Array<_, RuleLimit> = Array::try_from(map(&mut self.ebpf, maps::RULE_LIMIT)?)?;
        // Every rule index a key or flow names, read once.
        let flows = counted.iter().chain(removed).map(|(_, f)| firewall_common::conn_ref_parts(f.limit_ref).0);
        let read: std::collections::HashMap<u32, RuleLimit> =
            before.keys().map(|k| k.rule).chain(flows).filter_map(|i| limits.get(&i, 0).ok().map(|l| (i, l))).collect();
        let mut limit_of = |i: u32| read.get(&i).copied();
        let mut truth: std::collections::HashMap<BucketKey, u64> = std::collections::HashMap::new();
        // A walk of an LRU table under churn may list a flow twice (once
        // kept, once deleted: the deleted one is not counted).
        let mut seen: std::collections::HashSet<firewall_common::FlowKey> = removed.iter().map(|(k, _)| *k).collect();
        for (k, f) in counted {
            if !seen.insert(*k) {
                continue;
            }
            if let Some(key) = crate::conntrack::conn_key(k, f, &mut limit_of) {
                *truth.entry(key).or_default() += 1;
            }
        }
        let gone: Vec<BucketKey> =
            removed.iter().filter(|(_, f)| f.flags & firewall_common::FLOW_COUNTED != 0).filter_map(|(k, f)| crate::conntrack::conn_key(k, f, &mut limit_of)).collect();
        let live = |key: &BucketKey, limit_of: &mut dyn FnMut(u32) -> Option<RuleLimit>| {
            limit_of(key.rule).is_some_and(|l| l.max_conns != 0 && firewall_common::conn_epoch(l.epoch) == key.epoch)
        };
        // Read and written back: not atomic with the data plane's adds, so
        // an add in between is lost (the next sweep sets it right).
        let mut conns: aya::maps::HashMap<_, BucketKey, u64> = aya::maps::HashMap::try_from(map(&mut self.ebpf, maps::CONNS)?)?;
        for key in &gone {
            if let Ok(n) = conns.get(key, 0) {
                conns.insert(key, &n.saturating_sub(1), 0).context("failed to release a connection count")?;
            }
        }
        // Only counts that still exist can be busy.
        self.busy_counts.retain(|k, _| before.contains_key(k));
        for (key, &was) in before {
            if !live(key, &mut limit_of) {
                let _ = conns.remove(key);
                continue;
            }
            let Ok(now) = conns.get(key, 0) else { continue };
            let released = gone.iter().filter(|g| *g == key).count() as u64;
            // A count that moved while the walk ran is left to the next
            // sweep (the walk may or may not have seen what moved it); one
            // that moves at every sweep (a busy NAT) is corrected after
            // three with what the walk counted plus what moved, off by at
            // most the connections that came and went during the walk.
            let moved = now as i64 - was.saturating_sub(released) as i64;
            let skipped = self.busy_counts.entry(*key).or_default();
            if moved != 0 && *skipped < 3 {
                *skipped += 1;
                continue;
            }
            let want = if moved == 0 {
                self.busy_counts.remove(key);
                truth.get(key).copied().unwrap_or(0)
            } else {
                *skipped = 0;
                (truth.get(key).copied().unwrap_or(0) as i64 + moved).max(0) as u64
            };
            if now != want && (complete || want > now) {
                if want == 0 {
                    let _ = conns.remove(key);
                } else {
                    conns.insert(key, &want, 0).context("failed to correct a connection count")?;
                }
            }
        }
        Ok(())
    }

    /// The named sets' maps (`firewall set` writes them from outside).
    pub fn sets(&self) -> Result<crate::sets::Sets> {
        let id = |e: &Ebpf, name: &str| -> Result<u32> {
            Ok(match e.map(name).with_context(|| format!("the eBPF object has no map {name}"))? {
                aya::maps::Map::Array(d) | aya::maps::Map::LpmTrie(d) | aya::maps::Map::HashMap(d) => d.info()?.id(),
                _ => bail!("map {name} has an unexpected type"),
            })
        };
        let ids = [maps::SETS, maps::SET_ELEMS, maps::SET_HOSTS, maps::SET_PREFIXES, maps::PORT_SETS].map(|m| id(&self.ebpf, m));
        let [a, b, c, d, e] = ids;
        crate::sets::open_by_id([a?, b?, c?, d?, e?])
    }

    /// Writes `policy` into the slot the XDP program is not reading, then
    /// flips `FW_ACTIVE`: every packet sees either the old or the new policy.
    /// A rule whose name the policy in force also has keeps its counters
    /// (per interface, through `FW_RULE_BASE`); a new one starts at zero.
    /// On error the running policy is untouched.
    pub fn install(&mut self, policy: &Compiled) -> Result<()> {
        if policy.meta.iter().any(|m| m.syncookie != SYNCOOKIE_OFF) {
            check_syncookie_sysctl()?;
            if let Some(offer) = self.refresh_cookie_offer()? {
                log::info!("cookie SYN-ACKs offer: {offer}");
            }
        }
        let old = (self.active.generation > 0).then_some(self.active.slot);
        let slot = old.map_or(0, |s| 1 - s);
        // Sets first: the new boxes name their ids. Unchanged sets keep
        // their elements (and ids); new and changed ones are written under
        // free ids, named only once the switch is made (a failed reload
        // leaves the running policy's sets as they were); replaced ones
        // are cleared after the grace.
        let mut sets = self.sets()?;
        let _lock = crate::sets::lock()?;
        let reload = sets.prepare(&policy.sets).context("failed to write the policy's sets")?;
        let result = self.write_and_switch(policy, &reload.ids, old, slot);
        if let Err(e) = result {
            sets.abort(&reload);
            return Err(e);
        }
        sets.commit(&reload).context("failed to name the new sets")?;
        drop(_lock);
        let now = unix_now();
        self.update_control(|c| c.loaded_unix = now)?;
        // After the grace no packet is judged by the old slot any more (and
        // the next install may rewrite it at once).
        std::thread::sleep(GRACE);
        let _lock = crate::sets::lock()?;
        sets.retire(&reload).context("failed to free the sets the policy no longer has")?;
        if old.is_some() {
            for e in self.objects_mut() {
                settle_counters(e, slot, policy.meta.len() as u32)?;
            }
        }
        Ok(())
    }

    /// `install` up to the switch: the new slot's maps, then `FW_ACTIVE`.
    /// `set_ids`: the id of each of the policy's sets.
    fn write_and_switch(&mut self, policy: &Compiled, set_ids: &[u32], old: Option<u32>, slot: u32) -> Result<()> {
        // The old slot's rule of the same name, for each new rule.
        let old_names: Vec<String> = match old {
            Some(s) => self.rule_metas(s)?.iter().map(crate::stats::rule_name).collect(),
            None => Vec::new(),
        };
        let carry: Vec<Option<u32>> = policy
            .meta
            .iter()
            .map(|m| {
                let name = crate::stats::rule_name(m);
                old_names.iter().position(|n| *n == name).map(|i| i as u32)
            })
            .collect();
        let to_id = |s: u8| if s == 0 { 0 } else { set_ids[s as usize - 1] as u8 + 1 };
        let boxes: Vec<MatchBox> = policy.boxes.iter().map(|b| MatchBox { src_set: to_id(b.src_set), dst_set: to_id(b.dst_set), sport_set: to_id(b.sport_set), dport_set: to_id(b.dport_set), ..*b }).collect();
        let e = &mut self.ebpf;
        write_all::<Node>(e, maps::NODES, slot * MAX_NODES, &policy.nodes)?;
        write_all::<u32>(e, maps::LEAF_REFS, slot * MAX_LEAF_REFS, &policy.leaf_refs)?;
        write_all::<MatchBox>(e, maps::BOXES, slot * MAX_BOXES, &boxes)?;
        write_all::<RuleMeta>(e, maps::RULE_META, slot * MAX_RULES, &policy.meta)?;
        // The generation this install switches to: fresh buckets.
        let epoch = (self.active.generation + 1) as u32;
        let limits: Vec<_> = policy
            .limits
            .iter()
            .map(|l| firewall_common::RuleLimit { epoch, ban_set: if l.ban_set == 0 { 0 } else { set_ids[l.ban_set as usize - 1] + 1 }, ..*l })
            .collect();
        write_all::<firewall_common::RuleLimit>(e, maps::RULE_LIMIT, slot * MAX_RULES, &limits)?;
        let cpus = nr_cpus()?;
        let now = unix_now();
        // Per interface: the new slot's counters from zero, carried bases.
        for e in self.objects_mut() {
            prepare_counters(e, slot, old.map(|o| (o, old_names.len() as u32)), &carry, policy, cpus, now)?;
        }
        let e = &mut self.ebpf;
        let mut auto = Vec::new();
        let mut on: Array<_, u32> = Array::try_from(map(e, maps::COOKIE_ON)?)?;
        for (rule, m) in policy.meta.iter().enumerate() {
            if m.syncookie == SYNCOOKIE_AUTO {
                let name = crate::stats::rule_name(m);
                let was_on = self.auto.iter().any(|a| a.name == name && a.on);
                on.set(slot * MAX_RULES + rule as u32, &u32::from(was_on), 0).context("failed to write a cookie service's mode")?;
                auto.push(AutoService { rule: rule as u32, name, on: was_on, syns: 0, below_since: None });
            }
        }
        let mut ports: Array<_, u32> = Array::try_from(map(e, maps::COOKIE_PORT)?)?;
        let base = slot * PORTS;
        for &port in &self.cookie_ports[slot as usize] {
            ports.set(base + port as u32, &0, 0).context("failed to clear a cookie port")?;
        }
        for &(port, rule) in &policy.cookie_ports {
            ports.set(base + port as u32, &(rule + 1), 0).context("failed to write a cookie port")?;
        }
        self.cookie_ports[slot as usize] = policy.cookie_ports.iter().map(|&(p, _)| p).collect();
        let mut syn_ports: Array<_, firewall_common::PortBits> = Array::try_from(map(e, maps::SYN_PORTS)?)?;
        syn_ports.set(slot, &*policy.syn_ports, 0).context("failed to write the policy's SYN ports")?;
        let mut headers: Array<_, PolicyHeader> = Array::try_from(map(e, maps::POLICY)?)?;
        headers.set(slot, &policy.header, 0).context("failed to write the policy header")?;
        // Not per slot: for a moment the old policy's drops follow the new
        // event settings, which only decide what is recorded.
        let mut events: Array<_, firewall_common::EventConfig> = Array::try_from(map(e, maps::EVENT_CONFIG)?)?;
        events.set(0, &policy.events, 0).context("failed to write the event settings")?;
        let mut active: Array<_, Active> = Array::try_from(map(e, maps::ACTIVE)?)?;
        let next = Active { slot, generation: self.active.generation + 1, ..self.active };
        active.set(0, &next, 0).context("failed to switch to the new policy")?;
        self.active = next;
        self.timeouts = policy.header.timeouts;
        self.auto = auto;
        self.cookie_settings = policy.syncookie.clone();
        Ok(())
    }

    /// Attaches interface `port`'s programs to `iface`: TC egress and
    /// ingress, then XDP. `Driver` falls back to `Skb` (generic) when the
    /// driver has no native XDP, and says so. Returns the mode in effect
    /// and the three links (in `LINKS` order), to be pinned or dropped.
    pub fn attach_port(&mut self, port: usize, iface: &str, mode: XdpMode) -> Result<(XdpMode, Vec<FdLink>)> {
        let ifindex = ifindex(iface)?;
        let name = CString::new(iface)?;
        // The MSS the SYN-ACKs announce follows the interface's MTU.
        if let Some(mtu) = fs::read_to_string(format!("/sys/class/net/{iface}/mtu")).ok().and_then(|m| m.trim().parse::<u32>().ok()) {
            if let Some(m) = self.mss.get_mut(port) {
                *m = (mtu.saturating_sub(40).clamp(536, 65_495) as u16, mtu.saturating_sub(60).clamp(1220, 65_475) as u16);
            }
            self.write_cookie_config()?;
        }
        let ebpf = if port == 0 { &mut self.ebpf } else { self.others.get_mut(port - 1).context("no such port")? };
        // Egress first: until it runs, replies to the host's new
        // connections would meet an enforcing XDP program as unknown.
        // Ingress (the cookie hand-off) before XDP issues any cookie.
        let mut links = Vec::new();
        let egress: &mut SchedClassifier = ebpf.program_mut(maps::EGRESS_PROGRAM).context("no egress program")?.try_into()?;
        let id = egress
            .attach(name.as_c_str(), TcAttachType::Egress)
            .with_context(|| format!("failed to attach the TC egress program to {iface}"))?;
        let egress_link = FdLink::try_from(egress.take_link(id)?).ok();
        let ingress: &mut SchedClassifier = ebpf.program_mut(maps::INGRESS_PROGRAM).context("no TC ingress program")?.try_into()?;
        let id = ingress
            .attach(name.as_c_str(), TcAttachType::Ingress)
            .with_context(|| format!("failed to attach the TC ingress program to {iface}"))?;
        let ingress_link = FdLink::try_from(ingress.take_link(id)?).ok();
        let program: &mut Xdp = ebpf.program_mut(maps::XDP_PROGRAM).context("no XDP program")?.try_into()?;
        let (id, in_effect) = match program.attach(name.as_c_str(), mode) {
            Ok(id) => (id, mode),
            Err(e) if mode == XdpMode::Driver && is_errno(&e, libc::EOPNOTSUPP) => {
                log::warn!("{iface} has no native XDP support; attaching in generic (skb) mode, which is slower");
                (program.attach(name.as_c_str(), XdpMode::Skb).map_err(|e| attach_error(iface, e))?, XdpMode::Skb)
            }
            Err(e) => return Err(attach_error(iface, e)),
        };
        let xdp_link = FdLink::try_from(program.take_link(id)?).ok();
        // Only now does `stats` see it (it skips ifindex 0): attached and enforcing.
        let info = IfaceInfo {
            ifindex,
            mode: if in_effect == XdpMode::Skb { MODE_GENERIC } else { MODE_NATIVE },
            netns_ino: self.active.netns_ino,
            attached_unix: unix_now(),
        };
        let mut map_iface: Array<_, IfaceInfo> = Array::try_from(map(ebpf, maps::IFACE)?)?;
        map_iface.set(0, &info, 0)?;
        // `check_kernel` asks for TCX (6.6), so every attachment is a link.
        match (egress_link, ingress_link, xdp_link) {
            (Some(e), Some(i), Some(x)) => links.extend([e, i, x]),
            _ => bail!("{iface}: an attachment is not a BPF link (this kernel has no TCX?), so it cannot be pinned"),
        }
        Ok((in_effect, links))
    }

    /// `attach_port(0, ..)` with the links held by this object (detached
    /// when it is dropped): for tests and benchmarks.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<XdpMode> {
        let (mode, links) = self.attach_port(0, iface, mode)?;
        self.held_links.extend(links);
        Ok(mode)
    }

    /// Swaps the programs behind interface `port`'s pinned links (in `LINKS`
    /// order) for this object's, each atomically (`BPF_LINK_UPDATE`): no
    /// packet meets an interface without a program. Returns the interface
    /// the XDP link is on.
    pub fn replace_port(&mut self, port: usize, links: &[std::os::fd::OwnedFd]) -> Result<u32> {
        let ebpf = if port == 0 { &self.ebpf } else { self.others.get(port - 1).context("no such port")? };
        let mut ifindex = 0;
        for (link, prog_name) in links.iter().zip(LINKED_PROGRAMS) {
            let info = bpf_sys::link_info(link.as_fd()).context("cannot read a pinned link")?;
            if info.ifindex == 0 {
                bail!("a pinned link of this firewall is defunct (its interface was removed)");
            }
            if prog_name == maps::XDP_PROGRAM {
                ifindex = info.ifindex;
            }
            let old = bpf_sys::prog_fd_by_id(info.prog_id).context("cannot open the pinned link's program")?;
            let new = ebpf.program(prog_name).with_context(|| format!("no program {prog_name}"))?.fd()?;
            bpf_sys::link_update(link.as_fd(), new.as_fd(), old.as_fd())
                .with_context(|| format!("BPF_LINK_UPDATE of the {prog_name} link failed"))?;
        }
        Ok(ifindex)
    }

    /// The kernel ids of every interface's programs: (port, name, id).
    pub fn program_ids(&self) -> Vec<(usize, &'static str, u32)> {
        let mut out = Vec::new();
        for (port, e) in self.objects().enumerate() {
            for name in [maps::XDP_PROGRAM, maps::COOKIE_SYN_PROGRAM, maps::COOKIE_ACK_PROGRAM, maps::EGRESS_PROGRAM, maps::INGRESS_PROGRAM] {
                if let Some(id) = e.program(name).and_then(|p| p.info().ok()).map(|i| i.id()) {
                    out.push((port, name, id));
                }
            }
        }
        out
    }

    /// Records that interface `port` runs in `mode` on `ifindex` (after
    /// `replace_port`, whose object's `FW_IFACE` was reopened from the pin).
    pub fn interface(&self, port: usize) -> Result<IfaceInfo> {
        let ebpf = self.objects().nth(port).context("no such port")?;
        let m: Array<_, IfaceInfo> = Array::try_from(ebpf.map(maps::IFACE).context("no iface map")?)?;
        Ok(m.get(&0, 0)?)
    }

    /// Pins interface `port`'s tail-call table in `dir` as `progs_<map id>`
    /// (a name no other table has) and returns that name: a program array
    /// loses its entries when no process or pin holds it, and the XDP
    /// program's cookie path lives in it.
    pub fn pin_programs(&self, port: usize, dir: &Path) -> Result<String> {
        let ebpf = self.objects().nth(port).context("no such port")?;
        let table = ebpf.map(maps::PROGRAMS).context("no program array")?;
        let aya::maps::Map::ProgramArray(data) = table else { bail!("{} is not a program array", maps::PROGRAMS) };
        let name = format!("progs_{}", data.info()?.id());
        table.pin(dir.join(&name)).with_context(|| format!("failed to pin the tail-call table at {}", dir.join(&name).display()))?;
        Ok(name)
    }
}

/// Zeroes the new slot's counters of one interface and sets their bases:
/// a rule whose name the old slot has carries on that rule's count (its
/// base now, its counter through `pending_from` until `settle_counters`).
/// First the old slot's own pending carries are folded (a controller that
/// died before settling left them), since the new slot is what they point
/// into.
fn prepare_counters(e: &mut Ebpf, slot: u32, old: Option<(u32, u32)>, carry: &[Option<u32>], policy: &Compiled, cpus: usize, now: u64) -> Result<()> {
    let (old, old_rules) = (old.map(|o| o.0), old.map_or(0, |o| o.1));
    if let Some(old) = old {
        settle_counters(e, old, old_rules)?;
    }
    let mut counters: PerCpuArray<_, Counter> = PerCpuArray::try_from(map(e, maps::RULE_COUNTERS)?)?;
    for rule in 0..carry.len() as u32 {
        counters
            .set(slot * MAX_RULES + rule, PerCpuValues::try_from(vec![Counter::default(); cpus])?, 0)
            .context("failed to reset rule counters")?;
    }
    let mut bases: Array<_, RuleBase> = Array::try_from(map(e, maps::RULE_BASE)?)?;
    for (rule, c) in carry.iter().enumerate() {
        let base = match (c, old) {
            (Some(r), Some(s)) => {
                let from = s * MAX_RULES + r;
                let b = bases.get(&from, 0)?;
                RuleBase { packets: b.packets, bytes: b.bytes, since_unix: if b.since_unix == 0 { now } else { b.since_unix }, pending_from: from + 1, _pad: 0 }
            }
            _ => RuleBase { since_unix: now, ..RuleBase::default() },
        };
        bases.set(slot * MAX_RULES + rule as u32, &base, 0).context("failed to write a rule counter base")?;
    }
    // Cookie services: counters from zero (per policy load).
    let mut cookie_counters: PerCpuArray<_, CookieCounters> = PerCpuArray::try_from(map(e, maps::COOKIE_COUNTERS)?)?;
    for (rule, m) in policy.meta.iter().enumerate() {
        if m.syncookie != SYNCOOKIE_OFF {
            let zeros = PerCpuValues::try_from(vec![CookieCounters::default(); cpus])?;
            cookie_counters.set(slot * MAX_RULES + rule as u32, zeros, 0).context("failed to reset cookie counters")?;
        }
    }
    // Limited rules: a rule that keeps its name carries on the refusals
    // its limits counted (summed into one CPU's value; those the old slot
    // counts until the flip are not carried); a new one starts at zero.
    let carried: Vec<LimitCounters> = {
        let old_meta: Array<_, RuleMeta> = Array::try_from(e.map(maps::RULE_META).context("no rule meta map")?)?;
        let limit_counters: PerCpuArray<_, LimitCounters> = PerCpuArray::try_from(e.map(maps::LIMIT_COUNTERS).context("no limit counters")?)?;
        let mut out = Vec::with_capacity(policy.meta.len());
        for (rule, m) in policy.meta.iter().enumerate() {
            let from = match (carry.get(rule).copied().flatten(), old) {
                (Some(r), Some(s)) if m.limited != 0 => Some(s * MAX_RULES + r),
                _ => None,
            };
            // Only an old rule that was limited: another's entry may hold
            // what an earlier policy's rule at its place counted.
            let was_limited = from.is_some_and(|i| old_meta.get(&i, 0).is_ok_and(|o| o.limited != 0));
            let sum = match from {
                Some(i) if was_limited => limit_counters.get(&i, 0)?.iter().fold(LimitCounters::default(), |a, c| LimitCounters {
                    rate_limited: a.rate_limited + c.rate_limited,
                    conn_limited: a.conn_limited + c.conn_limited,
                }),
                _ => LimitCounters::default(),
            };
            out.push(sum);
        }
        out
    };
    let mut limit_counters: PerCpuArray<_, LimitCounters> = PerCpuArray::try_from(map(e, maps::LIMIT_COUNTERS)?)?;
    for (rule, m) in policy.meta.iter().enumerate() {
        if m.limited != 0 {
            let mut values = vec![LimitCounters::default(); cpus];
            values[0] = carried[rule];
            limit_counters.set(slot * MAX_RULES + rule as u32, PerCpuValues::try_from(values)?, 0).context("failed to reset limit counters")?;
        }
    }
    Ok(())
}

/// Folds each pending carry of `slot`'s bases into the base (once no
/// packet is judged by the slot carried from): one update per rule, which
/// a reader sees as the same total before and after.
fn settle_counters(e: &mut Ebpf, slot: u32, rules: u32) -> Result<()> {
    let folded: Vec<(u32, RuleBase)> = {
        let counters: PerCpuArray<_, Counter> = PerCpuArray::try_from(e.map(maps::RULE_COUNTERS).context("no rule counters")?)?;
        let bases: Array<_, RuleBase> = Array::try_from(e.map(maps::RULE_BASE).context("no rule bases")?)?;
        let mut out = Vec::new();
        for rule in 0..rules.min(MAX_RULES) {
            let i = slot * MAX_RULES + rule;
            let b = bases.get(&i, 0)?;
            if b.pending_from != 0 {
                let c = counter_sum(&counters.get(&(b.pending_from - 1), 0)?);
                out.push((i, RuleBase { packets: b.packets + c.packets, bytes: b.bytes + c.bytes, pending_from: 0, ..b }));
            }
        }
        out
    };
    let mut bases: Array<_, RuleBase> = Array::try_from(map(e, maps::RULE_BASE)?)?;
    for (i, b) in folded {
        bases.set(i, &b, 0).context("failed to write a rule counter base")?;
    }
    Ok(())
}

/// A fresh SipHash key from the OS random source.
fn random_key() -> Result<CookieKey> {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom fills the buffer it is given.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        bail!("getrandom failed: {}", std::io::Error::last_os_error());
    }
    let k0 = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let k1 = u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes"));
    Ok(CookieKey { k0, k1, valid: 1 })
}

/// The kernel takes a handed-over cookie ACK only on its syncookie path,
/// which `net.ipv4.tcp_syncookies = 0` turns off (cookie_v4_check): then
/// every cookie connection would fail, so such a policy is refused.
fn check_syncookie_sysctl() -> Result<()> {
    if !sysctl_on("tcp_syncookies")? {
        bail!("the policy uses syncookie, but net.ipv4.tcp_syncookies is 0 in this network namespace, so the kernel would refuse every connection the firewall's cookies complete; set it to 1 (`sysctl -w net.ipv4.tcp_syncookies=1`)");
    }
    Ok(())
}

fn sysctl_on(name: &str) -> Result<bool> {
    let path = format!("/proc/sys/net/ipv4/{name}");
    let value = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    Ok(value.trim() != "0")
}

/// Each option a cookie SYN-ACK may offer: its `OFFER_*` bit, its name,
/// and the sysctl of this network namespace that allows it.
const OFFERS: [(u32, &str, &str); 4] = [
    (OFFER_WSCALE, "window scaling", "tcp_window_scaling"),
    (OFFER_SACK, "SACK", "tcp_sack"),
    (OFFER_TIMESTAMPS, "timestamps", "tcp_timestamps"),
    (OFFER_ECN, "ECN", "tcp_ecn"),
];

/// `OFFER_*` from the sysctls in `OFFERS`.
fn cookie_offer() -> Result<u32> {
    let mut offer = 0;
    for (bit, _, sysctl) in OFFERS {
        if sysctl_on(sysctl)? {
            offer |= bit;
        }
    }
    Ok(offer)
}

fn describe_offer(offer: u32) -> String {
    let names: Vec<&str> = OFFERS.iter().filter(|o| offer & o.0 != 0).map(|o| o.1).collect();
    let off: Vec<&str> = OFFERS.iter().filter(|o| offer & o.0 == 0).map(|o| o.2).collect();
    let mut s = if names.is_empty() { "MSS only".to_owned() } else { names.join(", ") };
    if !off.is_empty() {
        s += &format!(" (not offered: {} = 0 in this namespace)", off.join(", "));
    }
    if offer & OFFER_TIMESTAMPS == 0 {
        s += "; without timestamps a cookie has no room for window scaling, SACK or ECN";
    }
    s
}

/// Every address of every interface in this network namespace
/// (getifaddrs): a host accepts packets for any of them on any interface.
pub fn local_addrs() -> Result<Vec<std::net::IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head`; freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        bail!("getifaddrs failed: {}", std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: the family says which sockaddr it is.
            unsafe {
                match (*ifa.ifa_addr).sa_family as i32 {
                    libc::AF_INET => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        out.push(std::net::IpAddr::V4(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        out.push(std::net::IpAddr::V6(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    Ok(out)
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).with_context(|| format!("the eBPF object has no map {name}"))
}

fn write_all<T: aya::Pod>(ebpf: &mut Ebpf, name: &str, base: u32, values: &[T]) -> Result<()> {
    let mut array: Array<&mut MapData, T> = Array::try_from(map(ebpf, name)?)?;
    for (i, v) in values.iter().enumerate() {
        array
            .set(base + i as u32, v, 0)
            .with_context(|| format!("failed to write {name}[{}]", base + i as u32))?;
    }
    Ok(())
}

fn is_errno(e: &ProgramError, errno: i32) -> bool {
    match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error() == Some(errno),
        _ => false,
    }
}

fn attach_error(iface: &str, e: ProgramError) -> anyhow::Error {
    if is_errno(&e, libc::EBUSY) || is_errno(&e, libc::EEXIST) {
        anyhow!("{iface} already has an XDP program attached (another `firewall run`?); stop it, or detach it (`bpftool net show dev {iface}`, then `bpftool link detach id N`, or `ip link set dev {iface} xdp off` for a netlink attachment)")
    } else if matches!(e, ProgramError::UnknownInterface { .. }) {
        anyhow!("no such interface: {iface}")
    } else {
        anyhow!(e).context(format!("failed to attach the XDP program to {iface}"))
    }
}

pub fn ifindex(iface: &str) -> Result<u32> {
    let name = CString::new(iface).with_context(|| format!("bad interface name {iface:?}"))?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no such interface: {iface} (in this network namespace)");
    }
    Ok(index)
}

/// Inode of this process's network namespace: interface indexes only mean
/// something within one.
pub fn netns_inode() -> Result<u64> {
    Ok(fs::metadata("/proc/self/ns/net").context("cannot stat /proc/self/ns/net")?.ino())
}

/// Fails early, with the fix, when this process cannot load BPF programs.
pub fn check_privileges() -> Result<()> {
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_NET_ADMIN: u64 = 1 << 12;
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    const CAP_BPF: u64 = 1 << 39;
    if caps & CAP_SYS_ADMIN != 0 || (caps & CAP_BPF != 0 && caps & CAP_NET_ADMIN != 0) {
        return Ok(());
    }
    bail!("not enough privileges: the firewall must run as root, or with CAP_BPF and CAP_NET_ADMIN (and CAP_PERFMON)")
}

fn kernel_version() -> (u32, u32) {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    kernel_version() >= (major, minor)
}

/// Kernel 6.9 or newer: the cookie hand-off kfunc (6.9), TCX links for TC
/// (6.6) so that every attachment can be pinned, BPF_PROG_BIND_MAP (5.10).
pub fn check_kernel() -> Result<()> {
    if !kernel_at_least(6, 9) {
        let (major, minor) = kernel_version();
        bail!("kernel {major}.{minor} is too old: the firewall needs Linux 6.9 or newer (bpf_sk_assign_tcp_reqsk for the SYN-cookie hand-off, TCX links)");
    }
    Ok(())
}

fn is_bpffs(path: &str) -> bool {
    let Ok(c) = CString::new(path) else { return false };
    // SAFETY: statfs fills a zeroed struct for a valid path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Whether pins outlive this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bpffs {
    /// The host's bpffs: pinned programs and maps outlive the controller.
    Shared,
    /// A bpffs in a mount namespace of this process's own (`ip netns
    /// exec`): it goes away with the process, and the data plane with it.
    Private,
}

/// Makes sure /sys/fs/bpf is a bpffs, mounting one if needed, and says
/// whether it is the host's. A bpffs already there is taken as the host's
/// (a service manager's sandbox shares it). Under `ip netns exec` (a mount
/// namespace of its own, with a fresh /sys and no bpffs) the one mounted
/// here is private to this process.
pub fn ensure_bpffs() -> Result<Bpffs> {
    if is_bpffs(BPFFS) {
        return Ok(Bpffs::Shared);
    }
    // `ip netns exec` gives its command a mount namespace of its own; the
    // process that started us (pid 1 may be unreadable in containers) is
    // still in the shared one.
    let ns_of = |pid: &str| fs::metadata(format!("/proc/{pid}/ns/mnt")).map(|m| m.ino()).ok();
    let own = ns_of("self");
    // SAFETY: no arguments.
    let parent = ns_of(&unsafe { libc::getppid() }.to_string()).or_else(|| ns_of("1"));
    let kind = if own.is_some() && own == parent { Bpffs::Shared } else { Bpffs::Private };
    let (src, target, fstype) = (c"bpf", CString::new(BPFFS)?, c"bpf");
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        bail!("{BPFFS} is not a bpffs and mounting one failed: {}", std::io::Error::last_os_error());
    }
    log::info!("mounted a bpffs at {BPFFS}");
    Ok(kind)
}


impl Firewall {
    /// Runs the TC egress program on `frame` (an outbound packet) once.
    pub fn test_run_egress(&self, frame: &[u8]) -> Result<aya::programs::TestRunResult> {
        let program: &SchedClassifier = self
            .ebpf
            .program(maps::EGRESS_PROGRAM)
            .context("no egress program")?
            .try_into()?;
        Ok(test_run(program, frame, 1)?.0)
    }

    /// Runs the XDP program once on `frame`; returns the verdict and the
    /// frame as the program left it (a cookie SYN-ACK for XDP_TX).
    pub fn test_run_output(&self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let (result, out) = test_run(self.xdp_program()?, frame, 1)?;
        Ok((result.return_value, out))
    }

    /// Runs the XDP program on `frame` with BPF_PROG_TEST_RUN, `repeat`
    /// times; the kernel measures the mean duration.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<aya::programs::TestRunResult> {
        Ok(test_run(self.xdp_program()?, frame, repeat)?.0)
    }

    fn xdp_program(&self) -> Result<&Xdp> {
        Ok(self.ebpf.program(maps::XDP_PROGRAM).context("no XDP program")?.try_into()?)
    }
}

/// One BPF_PROG_TEST_RUN; returns the result and the frame the program left.
fn test_run<P>(program: &P, frame: &[u8], repeat: u32) -> Result<(aya::programs::TestRunResult, Vec<u8>)>
where
    P: for<'a> aya::programs::TestRun<Opts<'a> = aya::programs::TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    let mut out = vec![0u8; frame.len() + 256];
    let opts = aya::programs::TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), repeat, ..aya::programs::TestRunOptions::new() };
    let result = program.test_run(opts)?;
    out.truncate(result.data_size_out as usize);
    Ok((result, out))
}
