//! The firewall's controller: policy files in, BPF maps out.
//!
//! `policy` reads and validates TOML, `compile` turns a policy into map
//! entries, `loader` loads the XDP program, writes policies atomically and
//! attaches, `maps` finds a running firewall's maps from another process,
//! `stats` reads its counters, `instance` keeps a data plane pinned so that
//! it outlives its controller.

pub mod alerts;
pub mod bpf_sys;
pub mod compile;
pub mod conntrack;
pub mod events;
pub mod instance;
pub mod loader;
pub mod maps;
pub mod metrics;
pub mod policy;
pub mod sets;
pub mod shared;
pub mod stats;
pub mod view;
