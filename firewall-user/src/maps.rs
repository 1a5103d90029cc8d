//! Finds the maps of a running firewall from another process: through the
//! pins when this process sees the firewall's bpffs, otherwise through the
//! attached programs (program and map ids are global; `ip netns exec`
//! hides bpffs mounts but not ids). Either way the interface's `FW_IFACE`
//! entry must name this network namespace.

use std::collections::HashMap;

use anyhow::{Context as _, Result, bail};
use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData, MapInfo, PerCpuArray},
    programs::loaded_programs,
};
use firewall_common::{Active, Control, CookieCounters, Counter, LimitCounters, Flow, FlowKey, IfaceInfo, PolicyHeader, RuleBase, RuleMeta, maps};

use crate::{instance, loader};

/// The maps `stats`, `conntrack` and `status` read, of one interface.
pub struct FirewallMaps {
    pub active: Array<MapData, Active>,
    pub policy: Array<MapData, PolicyHeader>,
    pub rule_meta: Array<MapData, RuleMeta>,
    pub rule_counters: PerCpuArray<MapData, Counter>,
    pub rule_base: Array<MapData, RuleBase>,
    pub reason_counters: PerCpuArray<MapData, Counter>,
    pub flows: BpfHashMap<MapData, FlowKey, Flow>,
    /// Flows opened from outside and not proven yet.
    pub remote_flows: BpfHashMap<MapData, FlowKey, Flow>,
    pub cookie_on: Array<MapData, u32>,
    pub cookie_counters: PerCpuArray<MapData, CookieCounters>,
    pub limit_counters: PerCpuArray<MapData, LimitCounters>,
    pub control: Array<MapData, Control>,
    pub iface: Array<MapData, IfaceInfo>,
    /// The named sets (shared by the firewall's interfaces).
    pub sets: crate::sets::Sets,
}

impl FirewallMaps {
    pub fn sources(&self) -> crate::stats::Sources<'_, MapData> {
        crate::stats::Sources {
            active: &self.active,
            policy: &self.policy,
            rule_meta: &self.rule_meta,
            rule_counters: &self.rule_counters,
            rule_base: &self.rule_base,
            reason_counters: &self.reason_counters,
            cookie_on: &self.cookie_on,
            cookie_counters: &self.cookie_counters,
            limit_counters: &self.limit_counters,
        }
    }
}

/// One interface of a firewall found in this network namespace.
pub struct Found {
    pub ifindex: u32,
    /// The interface's name (or `ifindex N` when it has none here).
    pub iface: String,
    pub via: &'static str,
    /// Which firewall it belongs to (its `FW_CONTROL` map), to group
    /// interfaces of one firewall.
    pub control_id: u32,
    /// Where its pins are, when found through them.
    pub pin_dir: Option<std::path::PathBuf>,
    pub maps: FirewallMaps,
}

/// The counters of the interfaces `found` (of one firewall), summed: one
/// policy, so the same rules in the same order, unless a reload came
/// between two reads (then they are read again).
pub fn snapshot_sum(found: &[Found]) -> Result<crate::stats::Snapshot> {
    'again: for _ in 0..10 {
        let mut total: Option<crate::stats::Snapshot> = None;
        for f in found {
            let snap = crate::stats::snapshot(&f.maps.sources())?;
            match total.as_mut() {
                Some(t) if t.generation != snap.generation => continue 'again,
                Some(t) => t.merge(&snap),
                None => total = Some(snap),
            }
        }
        return total.context("no interface to read");
    }
    bail!("the policy kept changing while the interfaces' counters were read")
}

/// The interfaces of a firewall: `iface`'s alone, or, with `None`, every
/// interface of the only firewall in this network namespace.
pub fn open(iface: Option<&str>) -> Result<Vec<Found>> {
    // Without privileges the program list is silently empty: say why instead.
    loader::check_privileges()?;
    let netns = loader::netns_inode()?;
    let want = iface.map(loader::ifindex).transpose()?;
    let mut found = match from_pins(iface, netns) {
        Ok(f) if !f.is_empty() => f,
        Ok(_) => from_programs(netns)?,
        Err(e) => {
            log::debug!("pins not usable: {e:#}");
            from_programs(netns)?
        }
    };
    if let Some(ifindex) = want {
        found.retain(|f| f.ifindex == ifindex);
    }
    let firewalls: std::collections::BTreeSet<u32> = found.iter().map(|f| f.control_id).collect();
    match (firewalls.len(), iface) {
        (1, _) => Ok(found),
        (0, Some(name)) => bail!("no firewall is attached to {name} in this network namespace (is `firewall run` running?)"),
        (0, None) => bail!("no firewall is running in this network namespace"),
        (_, _) => bail!("several firewalls run in this network namespace; choose one with --iface"),
    }
}

/// Every firewall of this namespace, each as its interfaces (for `status`).
pub fn open_all() -> Result<Vec<Vec<Found>>> {
    loader::check_privileges()?;
    let netns = loader::netns_inode()?;
    let found = match from_pins(None, netns) {
        Ok(f) if !f.is_empty() => f,
        _ => from_programs(netns)?,
    };
    let mut groups: std::collections::BTreeMap<u32, Vec<Found>> = Default::default();
    for f in found {
        groups.entry(f.control_id).or_default().push(f);
    }
    Ok(groups.into_values().collect())
}

/// Every interface of the firewall pinned at `dir` (the controller's own
/// view, for `/metrics`).
pub fn open_dir(dir: &std::path::Path) -> Result<Vec<Found>> {
    from_dirs(vec![dir.to_path_buf()], None, loader::netns_inode()?)
}

fn from_pins(iface: Option<&str>, netns: u64) -> Result<Vec<Found>> {
    let dirs = match iface {
        Some(name) => instance::find(name)?.into_iter().map(|(_, d)| d).collect(),
        None => instance::list()?.into_iter().map(|(_, d)| d).collect(),
    };
    from_dirs(dirs, iface, netns)
}

fn from_dirs(dirs: Vec<std::path::PathBuf>, iface: Option<&str>, netns: u64) -> Result<Vec<Found>> {
    let mut out = Vec::new();
    for dir in dirs {
        for name in instance::interfaces(&dir) {
            if iface.is_some_and(|i| i != name) {
                continue;
            }
            let mut by_name = HashMap::new();
            for map in maps::ALL {
                let sub = if maps::SHARED.contains(map) { dir.join("shared") } else { dir.join("iface").join(&name) };
                let path = sub.join(map);
                let data = MapData::from_pin(&path).with_context(|| format!("cannot open pinned map {}", path.display()))?;
                by_name.insert(map.to_string(), data);
            }
            let found = assemble(by_name, "pinned maps", Some(dir.clone()))?;
            // Pins of an interface that was removed (or recreated), or of a
            // namespace that died and whose inode number came back, enforce
            // nothing.
            if is_ours(&found, netns) && instance::ours(&dir)? && instance::xdp_link_live(&dir, &name)? {
                out.push(found);
            } else {
                log::debug!("pins of {name} at {} belong to no live interface", dir.display());
            }
        }
    }
    Ok(out)
}

fn from_programs(netns: u64) -> Result<Vec<Found>> {
    let mut out = Vec::new();
    // Only programs in a live link enforce anything (a detached one may
    // stay loaded for a moment).
    let linked = crate::bpf_sys::linked_programs();
    for program in loaded_programs() {
        let Ok(program) = program else { continue };
        if program.name_as_str() != Some(maps::XDP_PROGRAM) || !linked.contains_key(&program.id()) {
            continue;
        }
        let Ok(Some(ids)) = program.map_ids() else { continue };
        let mut by_name = HashMap::new();
        for id in ids {
            let Ok(info) = MapInfo::from_id(id) else { continue };
            let Some(name) = info.name_as_str().map(str::to_owned) else { continue };
            if maps::ALL.contains(&name.as_str()) {
                by_name.insert(name, MapData::from_id(id).context("cannot open map by id")?);
            }
        }
        if by_name.len() != maps::ALL.len() {
            continue;
        }
        let found = assemble(by_name, "attached program", None)?;
        if is_ours(&found, netns) {
            out.push(found);
        }
    }
    Ok(out)
}

/// Attached by a controller in this network namespace (loaded-only
/// programs, as in tests, have ifindex 0).
fn is_ours(found: &Found, netns: u64) -> bool {
    found.maps.iface.get(&0, 0).map(|a| a.netns_ino == netns && a.ifindex != 0).unwrap_or(false)
}

fn assemble(mut by_name: HashMap<String, MapData>, via: &'static str, pin_dir: Option<std::path::PathBuf>) -> Result<Found> {
    let control_id = by_name.get(maps::CONTROL).context("no control map")?.info()?.id();
    let mut take = |name: &str| -> Result<Map> {
        let data = by_name.remove(name).with_context(|| format!("map {name} missing"))?;
        Ok(Map::from_map_data(data)?)
    };
    let iface: Array<MapData, IfaceInfo> = Array::try_from(take(maps::IFACE)?)?;
    let ifindex = iface.get(&0, 0).map(|a| a.ifindex).unwrap_or(0);
    Ok(Found {
        ifindex,
        iface: if_name(ifindex).unwrap_or_else(|| format!("ifindex {ifindex}")),
        via,
        control_id,
        pin_dir,
        maps: FirewallMaps {
            active: Array::try_from(take(maps::ACTIVE)?)?,
            policy: Array::try_from(take(maps::POLICY)?)?,
            rule_meta: Array::try_from(take(maps::RULE_META)?)?,
            rule_counters: PerCpuArray::try_from(take(maps::RULE_COUNTERS)?)?,
            rule_base: Array::try_from(take(maps::RULE_BASE)?)?,
            reason_counters: PerCpuArray::try_from(take(maps::REASON_COUNTERS)?)?,
            flows: BpfHashMap::try_from(take(maps::FLOWS)?)?,
            remote_flows: BpfHashMap::try_from(take(maps::REMOTE_FLOWS)?)?,
            cookie_on: Array::try_from(take(maps::COOKIE_ON)?)?,
            cookie_counters: PerCpuArray::try_from(take(maps::COOKIE_COUNTERS)?)?,
            limit_counters: PerCpuArray::try_from(take(maps::LIMIT_COUNTERS)?)?,
            control: Array::try_from(take(maps::CONTROL)?)?,
            sets: crate::sets::Sets {
                defs: Array::try_from(take(maps::SETS)?)?,
                elems: aya::maps::lpm_trie::LpmTrie::try_from(take(maps::SET_ELEMS)?)?,
                hosts: BpfHashMap::try_from(take(maps::SET_HOSTS)?)?,
                prefixes: match take(maps::SET_PREFIXES)? {
                    // Not mappable before layout 9: a data plane that old
                    // is for its own build's CLI.
                    aya::maps::Map::Array(data) => crate::shared::SharedU64s::map(&data, firewall_common::MAX_SETS as usize).with_context(|| {
                        format!("{}: a data plane pinned by an older build (before layout 9)? Use that build's `firewall`, or restart the data plane", maps::SET_PREFIXES)
                    })?,
                    _ => anyhow::bail!("map {} is not an array", maps::SET_PREFIXES),
                },
                ports: Array::try_from(take(maps::PORT_SETS)?)?,
            },
            iface,
        },
    })
}

/// The name of interface `ifindex` in this network namespace.
pub fn if_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: a buffer of IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Some(unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}
