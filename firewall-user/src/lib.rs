//! The firewall's controller: policy files in, BPF maps out.
//!
//! `policy` reads and validates TOML, `compile` turns a policy into map
//! entries, `loader` loads the XDP program, writes policies atomically and
//! attaches, `maps` finds a running firewall's maps from another process,
//! `stats` reads its counters.

pub mod compile;
pub mod conntrack;
pub mod loader;
pub mod maps;
pub mod policy;
pub mod stats;
