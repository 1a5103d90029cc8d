//! Named sets in the maps: the registry (`FW_SETS`) and the elements
//! (`FW_SET_ELEMS`), for the loader (a policy's `[[set]]`s) and for
//! `firewall set add | del | list | flush` from another process. Writers
//! take `LOCK` so that two commands never count one set's elements apart.

use std::net::IpAddr;

use aya::maps::{Array, MapData, lpm_trie::{Key, LpmTrie}};
use firewall_common::{MAX_SETS, SET_ID_BITS, SET_KEY_BITS, SET_KIND_ADDR, SET_NAME_LEN, SetAddr, SetDef, SetElem, U128};

use crate::policy::{Cidr, SetSpec};

/// Serialises writers of the sets across processes.
pub const LOCK: &str = "/run/firewall-sets.lock";

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
    #[error("more than {MAX_SETS} sets, counting those a reload is retiring")]
    NoFreeId,
    #[error("map access failed: {0}")]
    Map(#[from] aya::maps::MapError),
}

/// An element as a trie key: the set id, then the address bits, host
/// bits cleared (IPv4 mapped into `::ffff:0:0/96`).
pub fn key_of(id: u32, c: &Cidr) -> Key<SetAddr> {
    let (lo, _) = crate::compile::cidr_range(c);
    let bits = if c.is_v4() { 96 + c.prefix as u32 } else { c.prefix as u32 };
    Key::new(SET_ID_BITS + bits, SetAddr::new(id, &U128::from_u128(lo)))
}

/// The element a trie key stands for.
pub fn cidr_of(key: &Key<SetAddr>) -> Cidr {
    let bits = key.prefix_len().saturating_sub(SET_ID_BITS);
    let data = key.data();
    let a = data.addr().to_u128();
    if bits >= 96 && a >> 32 == 0xffff {
        Cidr { addr: IpAddr::V4((a as u32).into()), prefix: (bits - 96) as u8 }
    } else {
        Cidr { addr: IpAddr::V6(a.into()), prefix: bits as u8 }
    }
}

/// Parses an element given on the command line or in a policy.
pub fn parse_element(text: &str) -> Result<Cidr, SetError> {
    Cidr::parse(text).map_err(|e| SetError::BadElement(text.to_owned(), e))
}

/// Opens the maps again by id (owned, so all can be borrowed at once).
pub fn open_by_id(ids: [u32; 4]) -> anyhow::Result<Sets> {
    use aya::maps::{HashMap as BpfHashMap, Map};
    Ok(Sets {
        defs: Array::try_from(Map::Array(MapData::from_id(ids[0])?))?,
        elems: LpmTrie::try_from(Map::LpmTrie(MapData::from_id(ids[1])?))?,
        hosts: BpfHashMap::try_from(Map::HashMap(MapData::from_id(ids[2])?))?,
        prefixes: Array::try_from(Map::Array(MapData::from_id(ids[3])?))?,
    })
}

/// The maps of the sets: the registry, and the elements (single
/// addresses in a hash map, prefixes in an LPM trie, with a count of
/// prefixes per set so that the kernel skips the trie when a set has none).
pub struct Sets {
    pub defs: Array<MapData, SetDef>,
    pub elems: LpmTrie<MapData, SetAddr, SetElem>,
    pub hosts: aya::maps::HashMap<MapData, SetAddr, SetElem>,
    pub prefixes: Array<MapData, u32>,
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
            .find(|(_, d)| d.in_use == 1 && d.name_str() == name)
            .map(|(id, def)| Found { id, def })
            .ok_or_else(|| SetError::Unknown(name.to_owned()))
    }

    pub fn get(&self, id: u32, c: &Cidr) -> Option<SetElem> {
        let key = key_of(id, c);
        if is_host(c) { self.hosts.get(&key.data(), 0).ok() } else { self.elems.get(&key, 0).ok() }
    }

    /// Inserts or overwrites one element.
    pub fn put(&mut self, id: u32, c: &Cidr, elem: SetElem) -> Result<(), SetError> {
        let key = key_of(id, c);
        if is_host(c) {
            self.hosts.insert(&key.data(), &elem, 0)?;
        } else {
            let new = self.elems.get(&key, 0).is_err();
            self.elems.insert(&key, &elem, 0)?;
            if new {
                let n = self.prefixes.get(&id, 0)?;
                self.prefixes.set(id, &(n + 1), 0)?;
            }
        }
        Ok(())
    }

    /// Whether the element was there.
    pub fn remove(&mut self, id: u32, c: &Cidr) -> Result<bool, SetError> {
        let key = key_of(id, c);
        if is_host(c) {
            return Ok(self.hosts.remove(&key.data()).is_ok());
        }
        if self.elems.remove(&key).is_err() {
            return Ok(false);
        }
        let n = self.prefixes.get(&id, 0)?;
        self.prefixes.set(id, &n.saturating_sub(1), 0)?;
        Ok(true)
    }

    /// Every element of set `id` with its expiry (0: none), expired ones included.
    pub fn members(&self, id: u32) -> Vec<(Cidr, u64)> {
        let mut out = Vec::new();
        for k in self.hosts.keys().filter_map(Result::ok).filter(|k| k.set_id() == id) {
            if let Ok(e) = self.hosts.get(&k, 0) {
                out.push((cidr_of(&Key::new(SET_KEY_BITS, k)), e.expires_ns));
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

    /// Adds (or refreshes) elements; `timeout_secs` `None`: the set's default.
    pub fn add(&mut self, name: &str, elements: &[Cidr], timeout_secs: Option<u32>, now_ns: u64) -> Result<usize, SetError> {
        let Found { id, mut def } = self.find(name)?;
        let secs = timeout_secs.unwrap_or(def.timeout_secs);
        let expires_ns = if secs == 0 { 0 } else { now_ns + secs as u64 * 1_000_000_000 };
        let mut added = 0;
        for c in elements {
            let present = self.get(id, c).is_some();
            if !present && def.count >= def.max {
                def.count = self.sweep_set(id, now_ns)?;
                if def.count >= def.max {
                    self.defs.set(id, &def, 0)?;
                    return Err(SetError::Full { name: name.to_owned(), max: def.max });
                }
            }
            self.put(id, c, SetElem { expires_ns })?;
            if !present {
                def.count += 1;
                added += 1;
            }
            if expires_ns != 0 {
                def.expiring = 1;
            }
        }
        self.defs.set(id, &def, 0)?;
        Ok(added)
    }

    pub fn del(&mut self, name: &str, elements: &[Cidr]) -> Result<(), SetError> {
        let Found { id, mut def } = self.find(name)?;
        let mut result = Ok(());
        for c in elements {
            if self.remove(id, c)? {
                def.count = def.count.saturating_sub(1);
            } else {
                result = Err(SetError::Missing(element_text(c), name.to_owned()));
            }
        }
        self.defs.set(id, &def, 0)?;
        result
    }

    pub fn flush(&mut self, name: &str) -> Result<usize, SetError> {
        let Found { id, mut def } = self.find(name)?;
        let n = self.clear(id)?;
        def.count = 0;
        self.defs.set(id, &def, 0)?;
        Ok(n)
    }

    fn clear(&mut self, id: u32) -> Result<usize, SetError> {
        let mut n = 0;
        for (c, _) in self.members(id) {
            n += usize::from(self.remove(id, &c)?);
        }
        self.prefixes.set(id, &0, 0)?;
        Ok(n)
    }

    /// Deletes set `id`'s expired elements; returns how many remain.
    fn sweep_set(&mut self, id: u32, now_ns: u64) -> Result<u32, SetError> {
        let mut left = 0;
        for (c, expires_ns) in self.members(id) {
            if expires_ns != 0 && expires_ns <= now_ns {
                self.remove(id, &c)?;
            } else {
                left += 1;
            }
        }
        Ok(left)
    }

    /// The controller's periodic sweep: sets that ever had an expiring
    /// element lose their expired ones. Returns how many were deleted.
    pub fn sweep(&mut self, now_ns: u64) -> Result<u32, SetError> {
        let mut removed = 0;
        for (id, mut def) in self.all()? {
            if def.in_use != 1 || def.expiring == 0 {
                continue;
            }
            let left = self.sweep_set(id, now_ns)?;
            removed += def.count.saturating_sub(left);
            def.count = left;
            self.defs.set(id, &def, 0)?;
        }
        Ok(removed)
    }

    /// Makes the registry hold `specs`: an unchanged set (same name and
    /// definition) keeps its id and elements; a new or changed one gets a
    /// free id and its policy elements. Returns the id of each spec and
    /// the ids to `retire` once no packet reads the old policy.
    pub fn reconcile(&mut self, specs: &[SetSpec]) -> Result<(Vec<u32>, Vec<u32>), SetError> {
        let all = self.all()?;
        let mut ids = Vec::with_capacity(specs.len());
        let mut kept = vec![false; MAX_SETS as usize];
        for spec in specs {
            let same = all.iter().find(|(_, d)| d.in_use == 1 && d.name_str() == spec.name && d.def_hash == spec.def_hash());
            match same {
                Some((id, _)) => {
                    kept[*id as usize] = true;
                    ids.push(*id);
                }
                None => ids.push(u32::MAX),
            }
        }
        // Everything else in use retires: listed first so that a name is
        // never found twice.
        let mut retire = Vec::new();
        for (id, mut d) in all.iter().copied() {
            if d.in_use != 0 && !kept[id as usize] {
                d.in_use = 2;
                d.name = [0; SET_NAME_LEN];
                self.defs.set(id, &d, 0)?;
                retire.push(id);
            }
        }
        let mut free = all.iter().filter(|(_, d)| d.in_use == 0).map(|(id, _)| *id);
        for (spec, slot) in specs.iter().zip(ids.iter_mut()) {
            if *slot != u32::MAX {
                continue;
            }
            let id = free.next().ok_or(SetError::NoFreeId)?;
            // A crashed controller may have left elements under a free id.
            self.clear(id)?;
            let mut def = SetDef { in_use: 1, kind: SET_KIND_ADDR, timeout_secs: spec.timeout_secs, max: spec.size, def_hash: spec.def_hash(), ..Default::default() };
            def.name[..spec.name.len()].copy_from_slice(spec.name.as_bytes());
            for c in &spec.elements {
                if self.get(id, c).is_none() {
                    def.count += 1;
                }
                self.put(id, c, SetElem { expires_ns: 0 })?;
            }
            self.defs.set(id, &def, 0)?;
            *slot = id;
        }
        Ok((ids, retire))
    }

    /// Frees ids `reconcile` retired: their elements, then the entry.
    pub fn retire(&mut self, ids: &[u32]) -> Result<(), SetError> {
        for &id in ids {
            self.clear(id)?;
            self.defs.set(id, &SetDef::default(), 0)?;
        }
        Ok(())
    }
}

/// Holds the cross-process writer lock while alive.
pub struct Locked(#[allow(dead_code)] std::fs::File);

pub fn lock() -> anyhow::Result<Locked> {
    use anyhow::Context as _;
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(LOCK).with_context(|| format!("cannot open {LOCK}"))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) } != 0 {
        anyhow::bail!("cannot lock {LOCK}: {}", std::io::Error::last_os_error());
    }
    Ok(Locked(f))
}
