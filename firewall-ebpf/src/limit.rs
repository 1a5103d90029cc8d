//! Per-source limits of rules (`limit = { rate, burst, per, max_conns,
//! ban }`). The rate is GCRA, one 8-byte value per rule and source prefix,
//! checked when a rule accepts a new connection or flow, before anything
//! is created for it. `max_conns` counts a source's TCP connections once
//! they are proven (the handshake's last ACK echoed the host's ISN, or a
//! valid cookie), so forged SYNs neither fill a real source's count nor
//! get it banned; a SYN is refused while the count is full. A `ban` adds a
//! proven source that passes a limit to a set, and an event says so.
//!
//! Counts change by atomic adds. The check before an add is not atomic
//! with it (the BPF target here has no compare-and-swap), so CPUs racing
//! at a full count may each get one more; the rate's update is not atomic
//! either: a source whose packets spread over N CPUs may get up to N times
//! its rate at worst. The controller's sweep corrects a count that drifts.

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    helpers::bpf_ktime_get_ns,
};
use firewall_common::{
    BucketKey, CONN_EPOCH_BITS, FLOW_COUNTED, Flow, FlowKey, MAX_RULES, Reason, RuleLimit, SET_FREE, SET_ID_BITS, SetAddr, SetHost,
    SetElem, U128, conn_epoch, conn_ref, conn_ref_parts, limit_bits, masked,
};

use crate::{FW_BAN_ELEM, FW_BUCKETS, FW_CONNS, FW_LIMIT_KEY, FW_RULE_LIMIT, FW_SET_ELEMS, FW_SET_HOSTS, FW_SET_KEY, FW_SET_PREFIX, FW_SETS, counters, events, parse::Key};

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// What a new connection's first packet (a SYN, or a datagram that opens
/// a flow) may do under rule `rule`: refused over the rate (unless a `ban`
/// moves the charge to the proof, or `cookie`: the SYN is answered with a
/// cookie, whose valid ACK is charged instead, so that neither spoofed
/// SYNs spend a source's rate nor a replayed cookie ACK escapes it) or
/// while its source has `max_conns` connections. `Ok(Some(r))`: the flow
/// is to carry `limit_ref` `r`.
#[inline(always)]
pub fn admit(slot: u32, rule: u32, src: &U128, cookie: bool, leaving: bool) -> Result<Option<u32>, Reason> {
    let index = slot * MAX_RULES + rule;
    let Some(limit) = FW_RULE_LIMIT.get(index) else { return Ok(None) };
    if limit.interval_ns != 0 && limit.ban_set == 0 && !cookie && !take(limit, index, src) {
        return Err(refuse(index, Reason::RateLimited));
    }
    if limit.max_conns == 0 && limit.ban_set == 0 {
        return Ok(None);
    }
    if limit.max_conns != 0 {
        let Some(key) = conn_key(limit, index, src) else { return Ok(None) };
        // SAFETY: read at once.
        if unsafe { FW_CONNS.get(key) }.is_some_and(|&n| full(n.wrapping_sub(leaving as u64), limit.max_conns)) {
            return Err(refuse(index, Reason::ConnLimited));
        }
    }
    Ok(Some(conn_ref(index, conn_epoch(limit.epoch))))
}

/// The `limit_ref` a flow of rule `rule` carries, if it has limits (for a
/// SYN admitted already, whose cookie was not sent, or one the rules
/// judge at its proof).
#[inline(always)]
pub fn guard_ref(slot: u32, rule: u32) -> Option<u32> {
    let index = slot * MAX_RULES + rule;
    let limit = FW_RULE_LIMIT.get(index)?;
    // A rate too: a handshake whose SYN went unjudged is charged at its
    // proof (`conntrack`'s `FLOW_UNJUDGED`).
    (limit.max_conns != 0 || limit.ban_set != 0 || limit.interval_ns != 0).then(|| conn_ref(index, conn_epoch(limit.epoch)))
}

/// A connection opened under `limit_ref` proved its source `src` (it
/// completed the handshake): charged to the rate when a ban moved the
/// charge here or `cookie` (a valid cookie ACK, or a handshake whose SYN
/// was not charged: see `admit`), and
/// counted against `max_conns`. Refused over either, and the source
/// banned when the rule says so. `Ok(true)`: counted (the flow is to
/// carry `FLOW_COUNTED`).
#[inline(always)]
pub fn prove(limit_ref: u32, key: &Key, cookie: bool) -> Result<bool, Reason> {
    let src = &key.src;
    // Opened under a policy since replaced (its slot is not the one in
    // force, or was written again): its limits, and its ban set's id, are
    // no longer what they were.
    let Some((index, limit)) = limits_of(limit_ref).filter(|&(i, _)| in_force(i)) else { return Ok(false) };
    // The cap first: a proof it refuses (a client's resent last ACKs
    // while it is at its cap) spends no rate.
    let ckey = if limit.max_conns == 0 { None } else { conn_key(limit, index, src) };
    let count = ckey.and_then(|k| FW_CONNS.get_ptr_mut(k));
    // SAFETY: a value of this map (see the module's note on races).
    if count.is_some_and(|n| full(unsafe { *n }, limit.max_conns)) {
        ban(limit, index, key, Reason::ConnLimited);
        return Err(refuse(index, Reason::ConnLimited));
    }
    if (limit.ban_set != 0 || cookie) && limit.interval_ns != 0 && !take(limit, index, src) {
        ban(limit, index, key, Reason::RateLimited);
        return Err(refuse(index, Reason::RateLimited));
    }
    match (ckey, count) {
        (None, _) => Ok(false),
        (Some(_), Some(n)) => {
            counters::atomic_add(n, 1);
            Ok(true)
        }
        // The key again: `take` wrote its own into the same per-CPU slot.
        (Some(_), None) => Ok(conn_key(limit, index, src).is_some_and(first)),
    }
}

/// Counts a refusal by rule `index`'s limits; `reason`, for the caller.
#[inline(always)]
fn refuse(index: u32, reason: Reason) -> Reason {
    counters::count_refused(index, reason);
    reason
}

/// Counts the first connection of a prefix with no count yet; another CPU
/// may have just made it. Whether it was counted.
#[inline(always)]
fn first(ckey: &BucketKey) -> bool {
    if FW_CONNS.insert(ckey, &1u64, BPF_NOEXIST as u64).is_ok() {
        return true;
    }
    FW_CONNS.get_ptr_mut(ckey).map(|n| counters::atomic_add(n, 1)).is_some()
}

/// The limits `limit_ref` was made under, with its rule index, while that
/// rule's limits are still the ones written then (same epoch).
#[inline(always)]
fn limits_of(limit_ref: u32) -> Option<(u32, &'static RuleLimit)> {
    let (index, epoch) = conn_ref_parts(limit_ref);
    let limit = FW_RULE_LIMIT.get(index)?;
    (conn_epoch(limit.epoch) == epoch).then_some((index, limit))
}

/// Counts a connection the host has and the table lost (adopted again):
/// no rate taken, no refusal, no ban, since it is not new and the packet
/// that brought it back proves nothing. Whether it was counted.
#[inline(always)]
pub fn count(limit_ref: u32, key: &Key) -> bool {
    let Some((index, limit)) = limits_of(limit_ref).filter(|&(i, l)| l.max_conns != 0 && in_force(i)) else { return false };
    let Some(ckey) = conn_key(limit, index, &key.src) else { return false };
    if let Some(n) = FW_CONNS.get_ptr_mut(ckey) {
        counters::atomic_add(n, 1);
        return true;
    }
    first(ckey)
}

/// Takes one from the count of `src` under `limit_ref`: a connection that
/// was counted and no longer is (it closed, or was not made after all).
#[inline(always)]
pub fn unprove(limit_ref: u32, src: &U128) {
    let Some((index, limit)) = limits_of(limit_ref) else { return };
    let Some(key) = conn_key(limit, index, src) else { return };
    if let Some(n) = FW_CONNS.get_ptr_mut(key) {
        // SAFETY: a value of this map; never below zero knowingly.
        if unsafe { *n } != 0 {
            counters::atomic_add(n, u64::MAX);
        }
    }
}

/// Whether a count of `n` leaves no room under `max`. A count wrapped
/// below zero (a release raced an evicted count) reads as empty until
/// the sweep corrects it.
#[inline(always)]
fn full(n: u64, max: u32) -> bool {
    n >= max as u64 && n < 1 << 63
}

/// Whether rule `index` (slot * MAX_RULES + rule) is of the policy in force.
#[inline(always)]
fn in_force(index: u32) -> bool {
    crate::FW_ACTIVE.get(0).is_some_and(|a| a.slot == index / MAX_RULES)
}

/// A counted connection closed (or its flow went): its source may open
/// another. Once only: the flag goes with the count.
#[inline(always)]
pub fn release(f: &mut Flow, fk: &FlowKey) {
    if f.flags & FLOW_COUNTED == 0 {
        return;
    }
    f.flags &= !FLOW_COUNTED;
    let (_, (remote, _)) = f.ends(fk);
    unprove(f.limit_ref, &remote);
}

/// This CPU's key slot, filled in: the cookie ACK program has no stack
/// left for a key (one slot: no caller holds two keys at once).
#[inline(always)]
fn key_slot(index: u32, epoch: u32, limit: &RuleLimit, src: &U128) -> Option<&'static BucketKey> {
    let k = FW_LIMIT_KEY.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, used by nothing else while this runs.
    let k = unsafe { &mut *k };
    k.rule = index;
    k.epoch = epoch;
    k.src = masked(src, limit_bits(limit, src));
    Some(k)
}

#[inline(always)]
fn conn_key(limit: &RuleLimit, index: u32, src: &U128) -> Option<&'static BucketKey> {
    const _: () = assert!(CONN_EPOCH_BITS < 32);
    key_slot(index, conn_epoch(limit.epoch), limit, src)
}

/// Whether `src` may open one more connection through rule `index` at
/// its rate now; takes the token when it may.
#[inline(always)]
fn take(limit: &RuleLimit, index: u32, src: &U128) -> bool {
    let Some(key) = key_slot(index, limit.epoch, limit, src) else { return true };
    let now = now_ns();
    match FW_BUCKETS.get_ptr_mut(key) {
        Some(tat) => {
            // SAFETY: a value of this map; a racing CPU only makes the
            // limit looser (see the module's note).
            let next = unsafe { *tat }.max(now);
            if next - now > limit.tolerance_ns {
                return false;
            }
            unsafe { *tat = next + limit.interval_ns };
            true
        }
        None => {
            let _ = FW_BUCKETS.insert(key, &(now + limit.interval_ns), 0);
            true
        }
    }
}

/// Adds what the rule's limits count the proven source `src` under (its
/// `per`/`per6` prefix: one address by default for IPv4, its /64 for
/// IPv6) to the rule's ban set for `ban_ns`, within the set's size, and
/// records the event. Banning that prefix, not the address, as the limit
/// refused the prefix: banning the address alone would let one address
/// keep the prefix's budget spent and get a neighbour banned for it. A
/// prefix already there keeps its ban (its packets no longer reach this
/// rule once a rule drops the set's members).
#[inline(always)]
fn ban(limit: &RuleLimit, index: u32, packet: &Key, reason: Reason) {
    if limit.ban_set == 0 {
        return;
    }
    let id = limit.ban_set - 1;
    let Some(def) = FW_SETS.get_ptr_mut(id) else { return };
    // SAFETY: a map value; the controller recounts `count` at its sweep.
    let def = unsafe { &mut *def };
    if def.in_use == SET_FREE {
        return;
    }
    // The set key's per-CPU slot (see `rules::in_set`), and the value's.
    let (Some(keys), Some(elem)) = (FW_SET_KEY.get_ptr_mut(0), FW_BAN_ELEM.get_ptr_mut(0)) else { return };
    let now = now_ns();
    // SAFETY: this CPU's slots, used by nothing else while this runs.
    let (keys, elem) = unsafe { (&mut *keys, &mut *elem) };
    let bits = limit_bits(limit, &packet.src);
    *elem = SetElem { expires_ns: now + limit.ban_ns, prefix_len: SET_ID_BITS + bits, _pad: 0 };
    let room = def.count < def.max;
    let banned = if bits >= 128 {
        let key = &mut keys.host;
        *key = SetHost::new(id, &packet.src);
        // A new element only within the set's size; there already: an
        // expired element the sweep has not deleted yet is banned again
        // whatever the count (a live one stays as it is).
        if room && FW_SET_HOSTS.insert(key, elem, BPF_NOEXIST as u64).is_ok() {
            Banned::New
        // SAFETY: read at once.
        } else if unsafe { FW_SET_HOSTS.get(key) }.is_some_and(|e| e.expires_ns != 0 && e.expires_ns <= now) && FW_SET_HOSTS.insert(key, elem, BPF_EXIST as u64).is_ok() {
            Banned::Again
        } else {
            Banned::No
        }
    } else {
        let key = &mut keys.trie;
        key.prefix_len = SET_ID_BITS + bits;
        key.data = SetAddr::new(id, &masked(&packet.src, bits));
        // Looked up first: an LPM trie ignores BPF_NOEXIST and BPF_EXIST
        // before Linux 6.13 (an insert would overwrite a permanent
        // element). The trie answers with the longest covering element:
        // only one of exactly this length is this prefix. Two CPUs may
        // both insert a new one: the sweep recounts `count`, and a prefix
        // count too high only walks the trie for nothing.
        let expired = |e: &SetElem| e.expires_ns != 0 && e.expires_ns <= now;
        match FW_SET_ELEMS.get(key) {
            Some(e) if e.prefix_len == key.prefix_len => {
                if expired(e) && FW_SET_ELEMS.insert(key, elem, 0).is_ok() { Banned::Again } else { Banned::No }
            }
            // A live shorter element that lasts at least as long covers it
            // already: a ban under it would hide it once it expired, until
            // the sweep deletes it.
            Some(e) if !expired(e) && (e.expires_ns == 0 || e.expires_ns >= elem.expires_ns) => Banned::No,
            _ if room && FW_SET_ELEMS.insert(key, elem, 0).is_ok() => {
                // The trie is walked for this set from now on.
                if let Some(n) = FW_SET_PREFIX.get_ptr_mut(id) {
                    counters::atomic_add(n, 1);
                }
                Banned::New
            }
            _ => Banned::No,
        }
    };
    if banned == Banned::New {
        def.count += 1;
        def.expiring = 1;
    }
    if banned != Banned::No {
        events::ban(index / MAX_RULES, index % MAX_RULES, packet, reason);
    }
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Banned {
    No,
    New,
    Again,
}
