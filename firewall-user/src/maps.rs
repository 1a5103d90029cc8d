//! Finds the maps of a running firewall from another process: through the
//! pins when /sys/fs/bpf is a bpffs here, otherwise through the attached
//! program (program and map ids are global; `ip netns exec` hides bpffs
//! mounts but not ids). Either way the firewall's `FW_ACTIVE` entry must
//! name this network namespace and the interface asked for.

use std::collections::HashMap;

use anyhow::{Context as _, Result, bail};
use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData, MapInfo, PerCpuArray},
    programs::loaded_programs,
};
use firewall_common::{Active, CookieCounters, Counter, Flow, FlowKey, PolicyHeader, RuleMeta, maps};

use crate::loader::{self, pin_dir};

/// The maps `stats` reads.
pub struct FirewallMaps {
    pub active: Array<MapData, Active>,
    pub policy: Array<MapData, PolicyHeader>,
    pub rule_meta: Array<MapData, RuleMeta>,
    pub rule_counters: PerCpuArray<MapData, Counter>,
    pub reason_counters: PerCpuArray<MapData, Counter>,
    pub flows: BpfHashMap<MapData, FlowKey, Flow>,
    /// Flows opened from outside and not proven yet.
    pub remote_flows: BpfHashMap<MapData, FlowKey, Flow>,
    pub cookie_on: Array<MapData, u32>,
    pub cookie_counters: PerCpuArray<MapData, CookieCounters>,
}

impl FirewallMaps {
    pub fn sources(&self) -> crate::stats::Sources<'_, MapData> {
        crate::stats::Sources {
            active: &self.active,
            policy: &self.policy,
            rule_meta: &self.rule_meta,
            rule_counters: &self.rule_counters,
            reason_counters: &self.reason_counters,
            cookie_on: &self.cookie_on,
            cookie_counters: &self.cookie_counters,
        }
    }
}

/// A firewall found in this network namespace.
pub struct Found {
    pub ifindex: u32,
    pub via: &'static str,
    pub maps: FirewallMaps,
}

/// Opens the maps of the firewall attached to `iface`, or of the only
/// firewall in this network namespace when `iface` is `None`.
pub fn open(iface: Option<&str>) -> Result<Found> {
    // Without privileges the program list is silently empty: say why instead.
    loader::check_privileges()?;
    let netns = loader::netns_inode()?;
    let want = iface.map(loader::ifindex).transpose()?;
    if let (Some(name), Some(ifindex)) = (iface, want) {
        // Pins may outlive a firewall that was killed: only trusted when a
        // loaded firewall program uses them; any problem falls back to ids.
        match from_pins(name, netns, ifindex) {
            Ok(Some(found)) => return Ok(found),
            Ok(None) => {}
            Err(e) => log::debug!("pins for {name} not usable: {e:#}"),
        }
    }
    let mut found = from_programs(netns)?;
    if let Some(ifindex) = want {
        found.retain(|f| f.ifindex == ifindex);
    }
    match (found.len(), iface) {
        (1, _) => Ok(found.pop().expect("one element")),
        (0, Some(name)) => bail!("no firewall is attached to {name} in this network namespace (is `firewall run` running?)"),
        (0, None) => bail!("no firewall is running in this network namespace"),
        (_, _) => bail!("several firewalls run in this network namespace; choose one with --iface"),
    }
}

fn from_pins(iface: &str, netns: u64, ifindex: u32) -> Result<Option<Found>> {
    let dir = pin_dir(iface);
    if !dir.join(maps::ACTIVE).exists() {
        return Ok(None);
    }
    let mut by_name = HashMap::new();
    for name in maps::ALL {
        let path = dir.join(name);
        let data = MapData::from_pin(&path).with_context(|| format!("cannot open pinned map {}", path.display()))?;
        by_name.insert(name.to_string(), data);
    }
    let active_id = by_name[maps::ACTIVE].info()?.id();
    let live = loaded_programs().flatten().any(|p| {
        p.name_as_str() == Some(maps::XDP_PROGRAM) && p.map_ids().ok().flatten().is_some_and(|ids| ids.contains(&active_id))
    });
    if !live {
        log::debug!("pins for {iface} belong to no loaded firewall (left by a killed one?)");
        return Ok(None);
    }
    let found = assemble(by_name, "pinned maps")?;
    Ok((is_ours(&found, netns) && found.ifindex == ifindex).then_some(found))
}

fn from_programs(netns: u64) -> Result<Vec<Found>> {
    let mut out = Vec::new();
    for program in loaded_programs() {
        let Ok(program) = program else { continue };
        log::debug!("program {} {:?}", program.id(), program.name_as_str());
        if program.name_as_str() != Some(maps::XDP_PROGRAM) {
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
        log::debug!("maps found: {:?}", by_name.keys().collect::<Vec<_>>());
        if by_name.len() != maps::ALL.len() {
            continue;
        }
        let found = assemble(by_name, "attached program")?;
        if is_ours(&found, netns) {
            out.push(found);
        }
    }
    Ok(out)
}

/// Written by a controller in this network namespace that attached it
/// (loaded-only programs, as in tests, have ifindex 0).
fn is_ours(found: &Found, netns: u64) -> bool {
    log::debug!("active {:?} want netns {netns}", found.maps.active.get(&0, 0).ok());
    found.maps.active.get(&0, 0).map(|a| a.netns_ino == netns && a.ifindex != 0).unwrap_or(false)
}

fn assemble(mut by_name: HashMap<String, MapData>, via: &'static str) -> Result<Found> {
    let mut take = |name: &str| -> Result<Map> {
        let data = by_name.remove(name).with_context(|| format!("map {name} missing"))?;
        Ok(Map::from_map_data(data)?)
    };
    let active: Array<MapData, Active> = Array::try_from(take(maps::ACTIVE)?)?;
    let ifindex = active.get(&0, 0).map(|a| a.ifindex).unwrap_or(0);
    Ok(Found {
        ifindex,
        via,
        maps: FirewallMaps {
            active,
            policy: Array::try_from(take(maps::POLICY)?)?,
            rule_meta: Array::try_from(take(maps::RULE_META)?)?,
            rule_counters: PerCpuArray::try_from(take(maps::RULE_COUNTERS)?)?,
            reason_counters: PerCpuArray::try_from(take(maps::REASON_COUNTERS)?)?,
            flows: BpfHashMap::try_from(take(maps::FLOWS)?)?,
            remote_flows: BpfHashMap::try_from(take(maps::REMOTE_FLOWS)?)?,
            cookie_on: Array::try_from(take(maps::COOKIE_ON)?)?,
            cookie_counters: PerCpuArray::try_from(take(maps::COOKIE_COUNTERS)?)?,
        },
    })
}
