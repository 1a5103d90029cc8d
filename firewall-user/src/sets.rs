//! Named sets in the maps: the registry (`FW_SETS`) and the elements
//! (`FW_SET_ELEMS`), for the loader (a policy's `[[set]]`s) and for
//! `firewall set add | del | list | flush` from another process. Writers
//! take `LOCK` so that two commands never count one set's elements apart.

use std::net::IpAddr;

use aya::maps::{Array, MapData, lpm_trie::{Key, LpmTrie}};
use firewall_common::{MAX_SETS, SET_FAMILY_V4, SET_FAMILY_V6, SET_ID_BITS, SET_KIND_ADDR, SET_KIND_PORT, SET_NAME_LEN, PortBits, SetAddr, SetDef, SetElem, SetHost, U128};

use crate::policy::{Cidr, PortRange, SetSpec};

pub use firewall_common::{SET_FREE as FREE, SET_LIVE as LIVE, SET_PENDING as PENDING, SET_RETIRING as RETIRING};

/// Serialises writers of the sets across processes. In the service's
/// runtime directory: the unit's ProtectSystem=strict leaves the rest of
/// /run read-only.
pub const LOCK_DIR: &str = "/run/firewall";
pub const LOCK: &str = "/run/firewall/sets.lock";

#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("no set named `{0}` (the policy's [[set]] tables declare them)")]
    Unknown(String),
    #[error("set `{name}` is full ({max} elements; its policy `size`)")]
    Full { name: String, max: u32 },
    #[error("`{0}` is not an address or prefix: {1}")]
    BadElement(String, String),
    #[error("{0} is not in set `{1}`")]
    Missing(String, String),
    #[error("set `{name}` holds {holds}: give {holds} (such as {example})")]
    WrongKind { name: String, holds: &'static str, example: &'static str },
    #[error("`{0}` is not a port or port range (such as 443 or 8000-8100)")]
    BadPort(String),
    #[error("a port set has no timeouts (`--timeout` with set `{0}`)")]
    PortTimeout(String),
    #[error("the new policy needs {need} new set ids but only {free} of {MAX_SETS} are free (the running policy's sets keep theirs until the switch); change fewer sets at once")]
    NoFreeId { need: usize, free: usize },
    #[error("map access failed: {0}")]
    Map(#[from] aya::maps::MapError),
}

/// An element as a trie key: the set id, the family, then the address
/// bits, host bits cleared (IPv4 mapped into `::ffff:0:0/96`, as the
/// kernel's keys hold it).
pub fn key_of(id: u32, c: &Cidr) -> Key<SetAddr> {
    let (lo, _) = crate::compile::cidr_range(c);
    let bits = if c.is_v4() { 96 + c.prefix as u32 } else { c.prefix as u32 };
    let mut data = SetAddr::new(id, &U128::from_u128(lo));
    data.family = if c.is_v4() { SET_FAMILY_V4 } else { SET_FAMILY_V6 };
    Key::new(SET_ID_BITS + bits, data)
}

/// A single address as a `FW_SET_HOSTS` key (see `SetHost`).
pub fn host_of(id: u32, c: &Cidr) -> SetHost {
    let (lo, _) = crate::compile::cidr_range(c);
    SetHost { family: if c.is_v4() { SET_FAMILY_V4 } else { SET_FAMILY_V6 } as u32, ..SetHost::new(id, &U128::from_u128(lo)) }
}

/// The address a host key stands for.
pub fn host_cidr(key: &SetHost) -> Cidr {
    let a = key.addr().to_u128();
    if key.family == SET_FAMILY_V4 as u32 {
        Cidr { addr: IpAddr::V4((a as u32).into()), prefix: 32 }
    } else {
        Cidr { addr: IpAddr::V6(a.into()), prefix: 128 }
    }
}

/// The element a trie key stands for.
pub fn cidr_of(key: &Key<SetAddr>) -> Cidr {
    let bits = key.prefix_len().saturating_sub(SET_ID_BITS);
    let data = key.data();
    let a = data.addr().to_u128();
    if data.family == SET_FAMILY_V4 {
        Cidr { addr: IpAddr::V4((a as u32).into()), prefix: bits.saturating_sub(96) as u8 }
    } else {
        Cidr { addr: IpAddr::V6(a.into()), prefix: bits as u8 }
    }
}

/// Parses an element given on the command line or in a policy.
pub fn parse_element(text: &str) -> Result<Cidr, SetError> {
    Cidr::parse(text).map_err(|e| SetError::BadElement(text.to_owned(), e))
}

/// Parses a port set's element: a port, or an inclusive range `A-B`.
pub fn parse_port_element(text: &str) -> Result<PortRange, SetError> {
    let bad = || SetError::BadPort(text.to_owned());
    let num = |t: &str| t.trim().parse::<u16>().map_err(|_| bad());
    let (lo, hi) = match text.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => (num(text)?, num(text)?),
    };
    if lo > hi {
        return Err(bad());
    }
    Ok(PortRange { lo, hi })
}

/// `443`, or `8000-8100`.
pub fn port_text(r: &PortRange) -> String {
    if r.lo == r.hi { r.lo.to_string() } else { format!("{}-{}", r.lo, r.hi) }
}

/// The ranges a port set's bits make, in order.
fn ranges_of(bits: &PortBits) -> Vec<PortRange> {
    let mut out: Vec<PortRange> = Vec::new();
    for p in 0..=u16::MAX {
        if !bits.has(p) {
            continue;
        }
        match out.last_mut() {
            Some(r) if r.hi as u32 + 1 == p as u32 => r.hi = p,
            _ => out.push(PortRange { lo: p, hi: p }),
        }
    }
    out
}

/// Opens the maps again by id (owned, so all can be borrowed at once).
pub fn open_by_id(ids: [u32; 5]) -> anyhow::Result<Sets> {
    use aya::maps::{HashMap as BpfHashMap, Map};
    Ok(Sets {
        defs: Array::try_from(Map::Array(MapData::from_id(ids[0])?))?,
        elems: LpmTrie::try_from(Map::LpmTrie(MapData::from_id(ids[1])?))?,
        hosts: BpfHashMap::try_from(Map::HashMap(MapData::from_id(ids[2])?))?,
        prefixes: crate::shared::SharedU64s::map(&MapData::from_id(ids[3])?, MAX_SETS as usize)?,
        ports: Array::try_from(Map::Array(MapData::from_id(ids[4])?))?,
    })
}

/// The maps of the sets: the registry, and the elements (single
/// addresses in a hash map, prefixes in an LPM trie, with a count of
/// prefixes per set so that the kernel skips the trie when a set has none).
pub struct Sets {
    pub defs: Array<MapData, SetDef>,
    pub elems: LpmTrie<MapData, SetAddr, SetElem>,
    pub hosts: aya::maps::HashMap<MapData, SetHost, SetElem>,
    /// Changed by atomic adds on both sides (`shared`): the data plane
    /// adds the prefixes it bans.
    pub prefixes: crate::shared::SharedU64s,
    /// Port sets: one `PortBits` per set id.
    pub ports: Array<MapData, PortBits>,
}

/// What `prepare` did, for `commit`, `abort` and `retire`.
pub struct Reload {
    /// The id of each of the policy's sets, in policy order.
    pub ids: Vec<u32>,
    /// Ids written for this reload.
    pub pending: Vec<u32>,
    /// Live ids the new policy no longer uses.
    pub retire: Vec<u32>,
}

/// A set found by name.
pub struct Found {
    pub id: u32,
    pub def: SetDef,
}

/// A single address (the whole width): kept in the hash map.
fn is_host(c: &Cidr) -> bool {
    c.prefix == c.width()
}

/// An element as `set list` prints it: a single address without `/32`.
pub fn element_text(c: &Cidr) -> String {
    if is_host(c) { c.addr.to_string() } else { c.to_string() }
}

impl Sets {
    pub fn all(&self) -> Result<Vec<(u32, SetDef)>, SetError> {
        let mut out = Vec::new();
        for id in 0..MAX_SETS {
            out.push((id, self.defs.get(&id, 0)?));
        }
        Ok(out)
    }

    pub fn find(&self, name: &str) -> Result<Found, SetError> {
        self.all()?
            .into_iter()
            .find(|(_, d)| d.in_use == LIVE && d.name_str() == name)
            .map(|(id, def)| Found { id, def })
            .ok_or_else(|| SetError::Unknown(name.to_owned()))
    }

    pub fn get(&self, id: u32, c: &Cidr) -> Option<SetElem> {
        let key = key_of(id, c);
        if is_host(c) {
            self.hosts.get(&host_of(id, c), 0).ok()
        } else {
            // The trie answers with the longest covering prefix: only an
            // element of exactly this length is this element.
            self.elems.get(&key, 0).ok().filter(|e| e.prefix_len == key.prefix_len())
        }
    }

    /// Inserts or overwrites one element (`expires_ns` 0: never expires);
    /// whether it is new.
    pub fn put(&mut self, id: u32, c: &Cidr, expires_ns: u64) -> Result<bool, SetError> {
        let key = key_of(id, c);
        let elem = SetElem { expires_ns, prefix_len: key.prefix_len(), _pad: 0 };
        let new = self.get(id, c).is_none();
        if is_host(c) {
            self.hosts.insert(&host_of(id, c), &elem, 0)?;
        } else {
            self.elems.insert(&key, &elem, 0)?;
            if new {
                self.prefixes.add(id, 1);
            }
        }
        Ok(new)
    }

    /// Whether the element was there.
    pub fn remove(&mut self, id: u32, c: &Cidr) -> Result<bool, SetError> {
        let key = key_of(id, c);
        if is_host(c) {
            return Ok(self.hosts.remove(&host_of(id, c)).is_ok());
        }
        if self.get(id, c).is_none() || self.elems.remove(&key).is_err() {
            return Ok(false);
        }
        self.prefixes.take_one(id);
        Ok(true)
    }

    /// Every element of set `id` with its expiry (0: none), expired ones included.
    pub fn members(&self, id: u32) -> Vec<(Cidr, u64)> {
        let mut out = Vec::new();
        for k in self.hosts.keys().filter_map(Result::ok).filter(|k| k.set == id) {
            if let Ok(e) = self.hosts.get(&k, 0) {
                out.push((host_cidr(&k), e.expires_ns));
            }
        }
        for k in self.elems.keys().filter_map(Result::ok).filter(|k| k.data().set_id() == id) {
            if let Ok(e) = self.elems.get(&k, 0) {
                out.push((cidr_of(&k), e.expires_ns));
            }
        }
        out
    }

    /// Live elements of set `id`, sorted: the element and its expiry (0: none).
    pub fn elements(&self, id: u32, now_ns: u64) -> Vec<(Cidr, u64)> {
        let mut out: Vec<(Cidr, u64)> = self.members(id).into_iter().filter(|(_, exp)| *exp == 0 || *exp > now_ns).collect();
        out.sort_by_key(|(c, _)| (!c.is_v4(), crate::compile::cidr_range(c), c.prefix));
        out
    }

    /// Adds (or refreshes) elements; `timeout_secs` `None`: the set's
    /// default. All or nothing: a set without room for every new element
    /// (after deleting its expired ones) is left as it was.
    pub fn add(&mut self, name: &str, elements: &[Cidr], timeout_secs: Option<u32>, now_ns: u64) -> Result<usize, SetError> {
        let Found { id, mut def } = self.find_kind(name, SET_KIND_ADDR)?;
        let secs = timeout_secs.unwrap_or(def.timeout_secs);
        let expires_ns = if secs == 0 { 0 } else { now_ns + secs as u64 * 1_000_000_000 };
        let mut fresh: Vec<&Cidr> = elements.iter().filter(|c| self.get(id, c).is_none()).collect();
        fresh.dedup_by_key(|c| (c.addr, c.prefix));
        if def.count as usize + fresh.len() > def.max as usize {
            def.count = self.sweep_set(id, now_ns)?;
            self.defs.set(id, &def, 0)?;
            if def.count as usize + fresh.len() > def.max as usize {
                return Err(SetError::Full { name: name.to_owned(), max: def.max });
            }
        }
        let mut added = 0;
        for c in elements {
            if self.put(id, c, expires_ns)? {
                def.count += 1;
                added += 1;
            }
        }
        if expires_ns != 0 {
            def.expiring = 1;
        }
        self.defs.set(id, &def, 0)?;
        Ok(added)
    }

    /// Deletes elements. All or nothing: when one is missing, none is
    /// deleted (`if_present`: the missing ones are skipped).
    pub fn del(&mut self, name: &str, elements: &[Cidr], if_present: bool) -> Result<usize, SetError> {
        let Found { id, mut def } = self.find_kind(name, SET_KIND_ADDR)?;
        if !if_present {
            if let Some(c) = elements.iter().find(|c| self.get(id, c).is_none()) {
                return Err(SetError::Missing(element_text(c), name.to_owned()));
            }
        }
        let mut n = 0;
        for c in elements {
            if self.remove(id, c)? {
                def.count = def.count.saturating_sub(1);
                n += 1;
            }
        }
        self.defs.set(id, &def, 0)?;
        Ok(n)
    }

    pub fn flush(&mut self, name: &str) -> Result<usize, SetError> {
        let Found { id, mut def } = self.find(name)?;
        let n = if def.kind == SET_KIND_PORT { def.count as usize } else { 0 } + self.clear(id)?;
        def.count = 0;
        self.defs.set(id, &def, 0)?;
        Ok(n)
    }

    /// Set `name`, which must be of `kind`.
    pub fn find_kind(&self, name: &str, kind: u8) -> Result<Found, SetError> {
        let found = self.find(name)?;
        if found.def.kind != kind {
            let (holds, example) = if found.def.kind == SET_KIND_PORT { ("ports", "443 or 8000-8100") } else { ("addresses", "192.0.2.7 or 2001:db8::/48") };
            return Err(SetError::WrongKind { name: name.to_owned(), holds, example });
        }
        Ok(found)
    }

    /// A port set's ports, as ranges.
    pub fn port_members(&self, id: u32) -> Result<Vec<PortRange>, SetError> {
        Ok(ranges_of(&self.ports.get(&id, 0)?))
    }

    /// Adds ports to port set `name`; how many were not there. All or
    /// nothing: a set without room for every new port is left as it was.
    pub fn add_ports(&mut self, name: &str, ranges: &[PortRange]) -> Result<usize, SetError> {
        let Found { id, mut def } = self.find_kind(name, SET_KIND_PORT)?;
        let mut bits = self.ports.get(&id, 0)?;
        let before = bits.count();
        for r in ranges {
            bits.add_range(r.lo, r.hi);
        }
        let after = bits.count();
        if after > def.max {
            return Err(SetError::Full { name: name.to_owned(), max: def.max });
        }
        // One write of the whole bitmap: each port changes at once (a
        // change of several is not one atomic step).
        self.ports.set(id, &bits, 0)?;
        def.count = after;
        self.defs.set(id, &def, 0)?;
        Ok((after - before) as usize)
    }

    /// Deletes ports; all or nothing as `del`.
    pub fn del_ports(&mut self, name: &str, ranges: &[PortRange], if_present: bool) -> Result<usize, SetError> {
        let Found { id, mut def } = self.find_kind(name, SET_KIND_PORT)?;
        let mut bits = self.ports.get(&id, 0)?;
        if !if_present {
            if let Some(r) = ranges.iter().find(|r| (r.lo..=r.hi).any(|p| !bits.has(p))) {
                return Err(SetError::Missing(port_text(r), name.to_owned()));
            }
        }
        let before = bits.count();
        for r in ranges {
            bits.remove_range(r.lo, r.hi);
        }
        self.ports.set(id, &bits, 0)?;
        def.count = bits.count();
        self.defs.set(id, &def, 0)?;
        Ok((before - def.count) as usize)
    }

    fn clear(&mut self, id: u32) -> Result<usize, SetError> {
        if self.ports.get(&id, 0).is_ok_and(|b| b.words.iter().any(|&w| w != 0)) {
            self.ports.set(id, &PortBits::EMPTY, 0)?;
        }
        let mut n = 0;
        // Each removal takes its own prefix off the count: a prefix the
        // data plane bans meanwhile stays counted.
        for (c, _) in self.members(id) {
            n += usize::from(self.remove(id, &c)?);
        }
        Ok(n)
    }

    /// Deletes set `id`'s expired elements; returns how many remain.
    fn sweep_set(&mut self, id: u32, now_ns: u64) -> Result<u32, SetError> {
        let mut left = 0;
        let mut prefixes = 0u64;
        for (c, expires_ns) in self.members(id) {
            if expires_ns != 0 && expires_ns <= now_ns {
                self.remove(id, &c)?;
            } else {
                left += 1;
                prefixes += u64::from(!is_host(&c));
            }
        }
        // Both sides count with atomic adds, but two banning one new prefix
        // at once count it twice (a count too high only costs a trie walk),
        // and a ban that rewrites an expired prefix while it is deleted here
        // leaves it uncounted: a count at 0 while the set has prefixes
        // would hide them, so it is restored.
        if prefixes > 0 {
            self.prefixes.fill_if_empty(id, prefixes);
        }
        Ok(left)
    }

    /// The controller's periodic sweep: sets that ever had an expiring
    /// element lose their expired ones. Returns how many were deleted.
    pub fn sweep(&mut self, now_ns: u64) -> Result<u32, SetError> {
        let mut removed = 0;
        for (id, mut def) in self.all()? {
            // A ban set (it has a timeout) gets elements from the data plane.
            if def.in_use != LIVE || (def.expiring == 0 && def.timeout_secs == 0) {
                continue;
            }
            let left = self.sweep_set(id, now_ns)?;
            removed += def.count.saturating_sub(left);
            def.count = left;
            self.defs.set(id, &def, 0)?;
        }
        Ok(removed)
    }

    /// First step of a reload: an unchanged set (same name and
    /// definition) keeps its id and elements; a new or changed one is
    /// written under a free id as `PENDING` (found by no name yet) with its
    /// policy elements. Nothing the running policy uses is touched: on a
    /// failed reload, `abort` frees the pending ids. Returns the id of
    /// each spec.
    pub fn prepare(&mut self, specs: &[SetSpec]) -> Result<Reload, SetError> {
        // Left by a controller that died mid-reload: no live policy uses them.
        for (id, d) in self.all()? {
            if d.in_use == RETIRING || d.in_use == PENDING {
                self.free(id)?;
            }
        }
        let all = self.all()?;
        let same = |spec: &SetSpec| all.iter().find(|(_, d)| d.in_use == LIVE && d.name_str() == spec.name && d.def_hash == spec.def_hash()).map(|(id, _)| *id);
        let ids: Vec<Option<u32>> = specs.iter().map(same).collect();
        let free: Vec<u32> = all.iter().filter(|(_, d)| d.in_use == FREE).map(|(id, _)| *id).collect();
        let need = ids.iter().filter(|i| i.is_none()).count();
        if need > free.len() {
            return Err(SetError::NoFreeId { need, free: free.len() });
        }
        let mut reload = Reload { ids: Vec::new(), pending: Vec::new(), retire: Vec::new() };
        let mut free = free.into_iter();
        for (spec, id) in specs.iter().zip(ids) {
            let id = match id {
                Some(id) => id,
                None => {
                    let id = free.next().expect("counted above");
                    reload.pending.push(id);
                    if let Err(e) = self.write_pending(id, spec) {
                        self.abort(&reload);
                        return Err(e);
                    }
                    id
                }
            };
            reload.ids.push(id);
        }
        reload.retire = all.iter().filter(|(id, d)| d.in_use == LIVE && !reload.ids.contains(id)).map(|(id, _)| *id).collect();
        Ok(reload)
    }

    fn write_pending(&mut self, id: u32, spec: &SetSpec) -> Result<(), SetError> {
        // A crashed controller may have left elements under a free id.
        self.clear(id)?;
        let mut def = SetDef { in_use: PENDING, kind: spec.kind.code(), timeout_secs: spec.timeout_secs, max: spec.size, def_hash: spec.def_hash(), ..Default::default() };
        def.name[..spec.name.len()].copy_from_slice(spec.name.as_bytes());
        for c in &spec.elements {
            def.count += u32::from(self.put(id, c, 0)?);
        }
        if !spec.ports.is_empty() {
            let mut bits = PortBits::EMPTY;
            for r in &spec.ports {
                bits.add_range(r.lo, r.hi);
            }
            self.ports.set(id, &bits, 0)?;
            def.count = bits.count();
        }
        self.defs.set(id, &def, 0)?;
        Ok(())
    }

    /// A failed reload: frees the pending ids (the running policy never used them).
    pub fn abort(&mut self, reload: &Reload) {
        for &id in &reload.pending {
            let _ = self.free(id);
        }
    }

    /// Right after the switch: the names find the new sets; the replaced
    /// ones retire (still matched by packets of the old slot until the
    /// grace ends, then `retire` clears them).
    pub fn commit(&mut self, reload: &Reload) -> Result<(), SetError> {
        for &id in &reload.retire {
            let mut d = self.defs.get(&id, 0)?;
            d.in_use = RETIRING;
            d.name = [0; SET_NAME_LEN];
            self.defs.set(id, &d, 0)?;
        }
        for &id in &reload.pending {
            let mut d = self.defs.get(&id, 0)?;
            d.in_use = LIVE;
            self.defs.set(id, &d, 0)?;
        }
        Ok(())
    }

    fn free(&mut self, id: u32) -> Result<(), SetError> {
        self.clear(id)?;
        self.defs.set(id, &SetDef::default(), 0)?;
        Ok(())
    }

    /// After the grace: frees the ids `commit` retired, elements first.
    pub fn retire(&mut self, reload: &Reload) -> Result<(), SetError> {
        for &id in &reload.retire {
            self.free(id)?;
        }
        Ok(())
    }
}

/// Holds the cross-process writer lock while alive.
pub struct Locked(#[allow(dead_code)] std::fs::File);

pub fn lock() -> anyhow::Result<Locked> {
    use anyhow::Context as _;
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(LOCK_DIR).with_context(|| format!("cannot create {LOCK_DIR}"))?;
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(LOCK).with_context(|| format!("cannot open {LOCK}"))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) } != 0 {
        anyhow::bail!("cannot lock {LOCK}: {}", std::io::Error::last_os_error());
    }
    Ok(Locked(f))
}
