//! Loads the XDP program, writes compiled policies into its maps (double
//! buffered, so a reload is atomic per packet), attaches it, pins its maps.

use std::{
    ffi::CString,
    fs,
    os::{fd::{AsFd as _, AsRawFd as _}, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuValues, ProgramArray},
    programs::{ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode, tc},
};
use firewall_common::{
    Active, CookieConfig, CookieCounters, CookieKey, Counter, MAX_BOXES, MAX_LEAF_REFS, MAX_NODES,
    MAX_LOCAL_ADDRS, MAX_RULES, MatchBox, Node, OFFER_ALL, OFFER_ECN, OFFER_SACK, OFFER_TIMESTAMPS,
    OFFER_WSCALE, PORTS, PolicyHeader, RuleMeta, STATUS_NO_META, SYNCOOKIE_AUTO, SYNCOOKIE_OFF, U128,
    maps,
};

use crate::compile::Compiled;

/// The XDP object, built by build.rs with the pinned nightly.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/firewall"));

/// Where the maps of the firewall on `iface` are pinned when a bpffs is at /sys/fs/bpf.
pub fn pin_dir(iface: &str) -> PathBuf {
    Path::new(BPFFS).join("firewall").join(iface)
}
pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// A loaded (not necessarily attached) firewall program and its maps.
pub struct Firewall {
    pub ebpf: Ebpf,
    active: Active,
    /// When the last flip happened: the slot it left is rewritten only after
    /// packets that were judged by it have surely finished.
    flipped: Option<std::time::Instant>,
    /// Of the policy in force, for the sweep of idle flows.
    timeouts: firewall_common::Timeouts,
    /// Cookie ports written into each policy slot (to clear on reuse).
    cookie_ports: [Vec<u16>; 2],
    /// `auto` services of the policy in force.
    auto: Vec<AutoService>,
    cookie_settings: crate::policy::SyncookieSettings,
    cookie_config: CookieConfig,
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

impl Firewall {
    /// Loads the object into the kernel (the verifier runs here).
    pub fn load() -> Result<Self> {
        check_privileges()?;
        let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(|e| {
            let msg = format!("{e:#}");
            if msg.contains("bpf_sk_assign_tcp_reqsk") {
                anyhow!("this kernel lacks the kfunc bpf_sk_assign_tcp_reqsk (Linux 6.9 or newer, with CONFIG_SYN_COOKIES), which hands SYN-cookie connections to their listener: {msg}")
            } else if msg.contains("Operation not permitted") {
                anyhow!("loading the XDP program was refused (EPERM): run as root, or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON")
            } else {
                anyhow!(e).context("failed to load the firewall's eBPF object")
            }
        })?;
        let program: &mut Xdp = ebpf
            .program_mut(maps::XDP_PROGRAM)
            .context("the eBPF object has no `firewall` program")?
            .try_into()?;
        program.load().context("the kernel's verifier rejected the XDP program")?;
        // The XDP program never reads the rule names, so the kernel would not
        // list that map among the program's maps; bind it so that `stats` in
        // another process finds it from the program (as libbpf does for its
        // metadata maps).
        let prog_fd = program.fd()?.as_fd().as_raw_fd();
        match ebpf.map(maps::RULE_META) {
            Some(aya::maps::Map::Array(data)) => bind_map(prog_fd, data.fd().as_fd().as_raw_fd())
                .context("BPF_PROG_BIND_MAP failed (the kernel must be 5.10 or newer)")?,
            _ => bail!("the eBPF object has no array map {}", maps::RULE_META),
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
        let mut progs: ProgramArray<_> = ProgramArray::try_from(map(&mut ebpf, maps::PROGRAMS)?)?;
        progs.set(maps::PROG_COOKIE_SYN, &syn_fd, 0).context("failed to register the cookie SYN program")?;
        progs.set(maps::PROG_COOKIE_ACK, &ack_fd, 0).context("failed to register the cookie ACK program")?;
        let active = Active { netns_ino: netns_inode()?, ..Default::default() };
        let mut fw = Self {
            ebpf,
            active,
            flipped: None,
            timeouts: Default::default(),
            cookie_ports: [Vec::new(), Vec::new()],
            auto: Vec::new(),
            cookie_settings: Default::default(),
            cookie_config: CookieConfig { offer: OFFER_ALL, ..CookieConfig::default() },
        };
        // Both keys, so that the key bit of a forged cookie never selects
        // an unset (all-zero, hence guessable) key.
        for index in 0..2 {
            fw.set_cookie_key(index, random_key()?)?;
        }
        fw.write_cookie_config()?;
        Ok(fw)
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

    fn write_cookie_config(&mut self) -> Result<()> {
        let mut cfg: Array<_, CookieConfig> = Array::try_from(map(&mut self.ebpf, maps::COOKIE_CONFIG)?)?;
        cfg.set(0, &self.cookie_config, 0).context("failed to write the cookie configuration")?;
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

    /// Whether the data plane found the driver unable to carry the cookie
    /// hand-off mark (then cookies are off: SYNs go to the host).
    pub fn handoff_broken(&self) -> Result<bool> {
        let status: Array<_, u32> = Array::try_from(self.ebpf.map(maps::STATUS).context("no status map")?)?;
        Ok(status.get(&0, 0)? & STATUS_NO_META != 0)
    }

    /// How often the key rotates, from the policy in force.
    pub fn key_rotation(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.cookie_settings.key_rotation_secs)
    }

    /// One step of the `auto` mode controller, `dt` after the previous
    /// one: measures each auto service's SYN rate and switches cookies on
    /// above `auto_on_rate`, off after `auto_hold_secs` below `auto_off_rate`.
    pub fn cookie_tick(&mut self, dt: std::time::Duration) -> Result<()> {
        self.cookie_tick_at(dt, std::time::Instant::now())
    }

    /// `cookie_tick` at a given instant (tests drive time through it).
    pub fn cookie_tick_at(&mut self, dt: std::time::Duration, now: std::time::Instant) -> Result<()> {
        if self.auto.is_empty() || dt.is_zero() {
            return Ok(());
        }
        let slot = self.active.slot;
        let settings = self.cookie_settings.clone();
        let counters: PerCpuArray<_, CookieCounters> = PerCpuArray::try_from(map(&mut self.ebpf, maps::COOKIE_COUNTERS)?)?;
        let mut changes = Vec::new();
        for svc in &mut self.auto {
            let syns: u64 = counters.get(&(slot * MAX_RULES + svc.rule), 0)?.iter().map(|c| c.syns).sum();
            let rate = syns.saturating_sub(svc.syns) as f64 / dt.as_secs_f64();
            svc.syns = syns;
            if !svc.on && rate >= settings.auto_on_rate as f64 {
                svc.on = true;
                svc.below_since = None;
                log::warn!("service `{}`: {rate:.0} SYN/s >= {}: answering with SYN cookies", svc.name, settings.auto_on_rate);
                changes.push((svc.rule, 1u32));
            } else if svc.on && rate < settings.auto_off_rate as f64 {
                let since = *svc.below_since.get_or_insert(now);
                if now.duration_since(since).as_secs() >= settings.auto_hold_secs {
                    svc.on = false;
                    svc.below_since = None;
                    log::warn!("service `{}`: {rate:.0} SYN/s < {} for {} s: SYNs go to the host again", svc.name, settings.auto_off_rate, settings.auto_hold_secs);
                    changes.push((svc.rule, 0u32));
                }
            } else if svc.on {
                svc.below_since = None;
            }
        }
        let mut on: Array<_, u32> = Array::try_from(map(&mut self.ebpf, maps::COOKIE_ON)?)?;
        for (rule, v) in changes {
            on.set(slot * MAX_RULES + rule, &v, 0).context("failed to switch a cookie service")?;
        }
        Ok(())
    }

    pub fn generation(&self) -> u64 {
        self.active.generation
    }

    /// Deletes idle flows from the connection table; returns how many.
    pub fn sweep(&mut self) -> Result<usize> {
        let mut removed = 0;
        for table in [maps::FLOWS, maps::REMOTE_FLOWS] {
            let mut flows: aya::maps::HashMap<_, firewall_common::FlowKey, firewall_common::Flow> =
                aya::maps::HashMap::try_from(map(&mut self.ebpf, table)?)?;
            removed += crate::conntrack::sweep(&mut flows, &self.timeouts)?;
        }
        Ok(removed)
    }

    /// Writes `policy` into the slot the XDP program is not reading, then
    /// flips `FW_ACTIVE`: every packet sees either the old or the new policy.
    /// On error the running policy is untouched.
    pub fn install(&mut self, policy: &Compiled) -> Result<()> {
        if policy.meta.iter().any(|m| m.syncookie != SYNCOOKIE_OFF) {
            check_syncookie_sysctl()?;
            if let Some(offer) = self.refresh_cookie_offer()? {
                log::info!("cookie SYN-ACKs offer: {offer}");
            }
        }
        let slot = if self.active.generation == 0 { 0 } else { 1 - self.active.slot };
        // An XDP program runs for microseconds; 10 ms is a wide margin.
        const GRACE: std::time::Duration = std::time::Duration::from_millis(10);
        if let Some(rest) = self.flipped.and_then(|t| GRACE.checked_sub(t.elapsed())) {
            std::thread::sleep(rest);
        }
        let e = &mut self.ebpf;
        write_all::<Node>(e, maps::NODES, slot * MAX_NODES, &policy.nodes)?;
        write_all::<u32>(e, maps::LEAF_REFS, slot * MAX_LEAF_REFS, &policy.leaf_refs)?;
        write_all::<MatchBox>(e, maps::BOXES, slot * MAX_BOXES, &policy.boxes)?;
        write_all::<RuleMeta>(e, maps::RULE_META, slot * MAX_RULES, &policy.meta)?;
        // Counters belong to the loaded policy (as with an nftables ruleset
        // reload): the new slot starts at zero.
        let mut counters: PerCpuArray<_, Counter> = PerCpuArray::try_from(map(e, maps::RULE_COUNTERS)?)?;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?.get() as usize;
        for rule in 0..policy.meta.len() as u32 {
            let zeros = PerCpuValues::try_from(vec![Counter::default(); cpus])?;
            counters
                .set(slot * MAX_RULES + rule, zeros, 0)
                .context("failed to reset rule counters")?;
        }
        // Cookie services: counters from zero, ports of the slot's previous
        // policy cleared, `auto` state carried over by rule name.
        let mut cookie_counters: PerCpuArray<_, CookieCounters> = PerCpuArray::try_from(map(e, maps::COOKIE_COUNTERS)?)?;
        for (rule, m) in policy.meta.iter().enumerate() {
            if m.syncookie != SYNCOOKIE_OFF {
                let zeros = PerCpuValues::try_from(vec![CookieCounters::default(); cpus])?;
                cookie_counters.set(slot * MAX_RULES + rule as u32, zeros, 0).context("failed to reset cookie counters")?;
            }
        }
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
        let mut headers: Array<_, PolicyHeader> = Array::try_from(map(e, maps::POLICY)?)?;
        headers.set(slot, &policy.header, 0).context("failed to write the policy header")?;
        let mut active: Array<_, Active> = Array::try_from(map(e, maps::ACTIVE)?)?;
        let next = Active { slot, generation: self.active.generation + 1, ..self.active };
        active.set(0, &next, 0).context("failed to switch to the new policy")?;
        self.active = next;
        self.flipped = Some(std::time::Instant::now());
        self.timeouts = policy.header.timeouts;
        self.auto = auto;
        self.cookie_settings = policy.syncookie.clone();
        Ok(())
    }

    /// Attaches to `iface`. `Driver` falls back to `Skb` (generic) when the
    /// driver has no native XDP, and says so; returns the mode in effect.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<XdpMode> {
        let ifindex = ifindex(iface)?;
        let name = CString::new(iface)?;
        // Egress first: until it runs, replies to the host's new
        // connections would meet an enforcing XDP program as unknown.
        // Ingress (the cookie hand-off) before XDP issues any cookie.
        self.attach_egress(iface, &name)?;
        let ingress: &mut SchedClassifier = self
            .ebpf
            .program_mut(maps::INGRESS_PROGRAM)
            .context("no TC ingress program")?
            .try_into()?;
        ingress
            .attach(name.as_c_str(), TcAttachType::Ingress)
            .with_context(|| format!("failed to attach the TC ingress program to {iface}"))?;
        // The MSS the SYN-ACKs announce follows the interface's MTU.
        if let Some(mtu) = fs::read_to_string(format!("/sys/class/net/{iface}/mtu")).ok().and_then(|m| m.trim().parse::<u32>().ok()) {
            self.cookie_config.mss_v4 = mtu.saturating_sub(40).clamp(536, 65_495) as u16;
            self.cookie_config.mss_v6 = mtu.saturating_sub(60).clamp(1220, 65_475) as u16;
            self.write_cookie_config()?;
        }
        let program: &mut Xdp = self
            .ebpf
            .program_mut(maps::XDP_PROGRAM)
            .context("no XDP program")?
            .try_into()?;
        let in_effect = match program.attach(name.as_c_str(), mode) {
            Ok(_) => mode,
            Err(e) if mode == XdpMode::Driver && is_errno(&e, libc::EOPNOTSUPP) => {
                log::warn!("{iface} has no native XDP support; attaching in generic (skb) mode, which is slower");
                program
                    .attach(name.as_c_str(), XdpMode::Skb)
                    .map_err(|e| attach_error(iface, e))?;
                XdpMode::Skb
            }
            Err(e) => return Err(attach_error(iface, e)),
        };
        // Only now does `stats` see it (it skips ifindex 0): attached and enforcing.
        self.active.ifindex = ifindex;
        let mut active: Array<_, Active> = Array::try_from(map(&mut self.ebpf, maps::ACTIVE)?)?;
        active.set(0, &self.active, 0)?;
        Ok(in_effect)
    }

    /// XDP sees only what arrives: the TC egress program records the flows
    /// the host opens, so that their replies are known. TCX on kernels that
    /// have it (6.6), a clsact qdisc before.
    fn attach_egress(&mut self, iface: &str, name: &CString) -> Result<()> {
        if !kernel_at_least(6, 6) {
            // An existing clsact qdisc is fine; anything else is worth seeing.
            if let Err(e) = tc::qdisc_add_clsact(name.as_c_str()) {
                log::warn!("adding a clsact qdisc to {iface}: {e} (fine if one exists)");
            }
        }
        let egress: &mut SchedClassifier = self
            .ebpf
            .program_mut(maps::EGRESS_PROGRAM)
            .context("no egress program")?
            .try_into()?;
        egress
            .attach(name.as_c_str(), TcAttachType::Egress)
            .with_context(|| format!("failed to attach the TC egress program to {iface}"))?;
        Ok(())
    }

    /// Pins the maps under `pin_dir(iface)` when a bpffs can be used there;
    /// returns where, or `None` (then `stats` finds the maps by program id).
    pub fn pin_maps(&self, iface: &str) -> Result<Option<PathBuf>> {
        if !ensure_bpffs()? {
            return Ok(None);
        }
        let dir = pin_dir(iface);
        fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
        for name in maps::ALL {
            let path = dir.join(name);
            // A pin left by a firewall that did not exit cleanly: our attach
            // succeeded, so that firewall is gone.
            let _ = fs::remove_file(&path);
            self.ebpf
                .map(name)
                .with_context(|| format!("no map {name}"))?
                .pin(&path)
                .with_context(|| format!("failed to pin {name} at {}", path.display()))?;
        }
        Ok(Some(dir))
    }
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

/// `BPF_PROG_BIND_MAP`: ties a map the program does not reference to the
/// program, so the map is listed in its info (aya has no wrapper).
fn bind_map(prog_fd: i32, map_fd: i32) -> std::io::Result<()> {
    #[repr(C)]
    struct ProgBindMapAttr {
        prog_fd: u32,
        map_fd: u32,
        flags: u32,
    }
    const BPF_PROG_BIND_MAP: libc::c_long = 35;
    let attr = ProgBindMapAttr { prog_fd: prog_fd as u32, map_fd: map_fd as u32, flags: 0 };
    // SAFETY: a bpf(2) call with an attribute struct of the size we pass.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_BIND_MAP, &attr as *const ProgBindMapAttr, std::mem::size_of::<ProgBindMapAttr>())
    };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

pub fn unpin_maps(dir: &Path) {
    for name in maps::ALL {
        let _ = fs::remove_file(dir.join(name));
    }
    let _ = fs::remove_dir(dir);
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

/// Kernel 5.10 or newer: bounded loops, BPF links for XDP, BPF_PROG_BIND_MAP.
pub fn check_kernel() -> Result<()> {
    if !kernel_at_least(5, 10) {
        let (major, minor) = kernel_version();
        bail!("kernel {major}.{minor} is too old: the firewall needs Linux 5.10 or newer");
    }
    Ok(())
}

fn is_bpffs(path: &str) -> bool {
    let Ok(c) = CString::new(path) else { return false };
    // SAFETY: statfs fills a zeroed struct for a valid path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Makes sure /sys/fs/bpf is a bpffs. Mounts one when this process shares
/// its parent's mount namespace; under `ip netns exec` (a private mount namespace
/// with its own /sys) a mount would be invisible to other processes, so it
/// returns `false` and the maps are found through the program instead.
pub fn ensure_bpffs() -> Result<bool> {
    if is_bpffs(BPFFS) {
        return Ok(true);
    }
    // `ip netns exec` gives its command a mount namespace of its own; the
    // process that started us (pid 1 may be unreadable in containers) is
    // still in the shared one.
    let ns_of = |pid: &str| fs::metadata(format!("/proc/{pid}/ns/mnt")).map(|m| m.ino()).ok();
    let own = ns_of("self");
    // SAFETY: no arguments.
    let parent = ns_of(&unsafe { libc::getppid() }.to_string()).or_else(|| ns_of("1"));
    if own.is_none() || own != parent {
        log::info!("{BPFFS} is not a bpffs in this mount namespace; maps not pinned (`firewall stats` finds them through the attached program)");
        return Ok(false);
    }
    let (src, target, fstype) = (c"bpf", CString::new(BPFFS)?, c"bpf");
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        log::warn!("cannot mount a bpffs at {BPFFS}: {}; maps not pinned", std::io::Error::last_os_error());
        return Ok(false);
    }
    log::info!("mounted a bpffs at {BPFFS}");
    Ok(true)
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
