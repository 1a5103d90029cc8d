//! Which rules can never match: one that an earlier rule covers entirely.

use super::*;

impl Rule {
    /// Whether this rule can match IPv4 (`true`) / IPv6 (`false`) packets,
    /// given its protocol and address lists.
    pub fn matches_family(&self, v4: bool) -> bool {
        // A set may hold either family.
        let list_ok = |l: &[Cidr], sets: &[usize]| l.is_empty() || !sets.is_empty() || l.iter().any(|c| c.is_v4() == v4);
        self.proto.allows_family(v4) && list_ok(&self.src, &self.src_sets) && list_ok(&self.dst, &self.dst_sets)
    }

    /// Whether `self` (an earlier rule) matches every packet `later` could
    /// match, so `later` never decides anything. Conservative: `false` may
    /// be returned for some shadowed rules (e.g. CIDRs covered only by a
    /// union of several earlier CIDRs), never `true` for one that is not.
    pub fn shadows(&self, later: &Rule) -> bool {
        self.shadows_in(later, ct_state::ANY)
    }

    /// `shadows`, counting only packets whose state is in `live` (the
    /// states that reach the rules at all; see `Settings::states_to_rules`).
    pub(super) fn shadows_in(&self, later: &Rule, live: u8) -> bool {
        // A set's elements change at run time: a rule naming one covers
        // nothing for sure, and one naming a set may match any address.
        if !self.src_sets.is_empty() || !self.dst_sets.is_empty() || !self.sport_sets.is_empty() || !self.dport_sets.is_empty() {
            return false;
        }
        let later_src: &[Cidr] = if later.src_sets.is_empty() { &later.src } else { &[] };
        let later_dst: &[Cidr] = if later.dst_sets.is_empty() { &later.dst } else { &[] };
        let later_sport: &[PortRange] = if later.sport_sets.is_empty() { &later.sport } else { &[] };
        let later_dport: &[PortRange] = if later.dport_sets.is_empty() { &later.dport } else { &[] };
        let later_state = later.state & live;
        if self.state & later_state != later_state {
            return false;
        }
        if self.proto != Proto::Any && self.proto != later.proto {
            return false;
        }
        if !self.tcp_flags.covers(&later.tcp_flags) {
            return false;
        }
        if self.icmp_type.is_some() && self.icmp_type != later.icmp_type {
            return false;
        }
        if self.icmp_code.is_some() && self.icmp_code != later.icmp_code {
            return false;
        }
        if !ports_cover(&self.sport, later_sport) || !ports_cover(&self.dport, later_dport) {
            return false;
        }
        // Only the families `later` can actually see matter: an IPv4-only
        // rule is not "escaping" through the IPv6 half of an empty list.
        [true, false].into_iter().filter(|&v4| later.matches_family(v4)).all(|v4| {
            cidrs_cover(&self.src, later_src, v4) && cidrs_cover(&self.dst, later_dst, v4)
        })
    }
}

/// Every `later` block of family `v4` lies inside one `earlier` block.
fn cidrs_cover(earlier: &[Cidr], later: &[Cidr], v4: bool) -> bool {
    if earlier.is_empty() {
        return true;
    }
    let any = [Cidr::any(v4)];
    let later = if later.is_empty() { &any[..] } else { later };
    later
        .iter()
        .filter(|c| c.is_v4() == v4)
        .all(|l| earlier.iter().any(|e| e.contains(l)))
}

/// Every port of `later` is in the union of `earlier`.
fn ports_cover(earlier: &[PortRange], later: &[PortRange]) -> bool {
    if earlier.is_empty() {
        return true;
    }
    // Runs for every pair of rules, so no allocation: walk from `lo`
    // upwards, each step jumping past an earlier range that holds the
    // current port. Lists are short, so the quadratic scan is fine.
    let covered = |r: &PortRange| {
        let mut next = u32::from(r.lo);
        while next <= u32::from(r.hi) {
            match earlier.iter().find(|e| u32::from(e.lo) <= next && next <= u32::from(e.hi)) {
                Some(e) => next = u32::from(e.hi) + 1,
                None => return false,
            }
        }
        true
    };
    if later.is_empty() { covered(&PortRange::ANY) } else { later.iter().all(covered) }
}

