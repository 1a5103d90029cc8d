//! Types shared by the XDP program and the controller: map names, limits,
//! map keys and values, verdict reasons. Everything here is `#[repr(C)]`
//! and `no_std`; the `user` feature adds the `aya::Pod` impls userspace needs.
#![no_std]

pub mod control;
pub mod conntrack;
pub mod cookie;
pub mod events;
pub mod limits;
pub mod maps;
pub mod reason;
pub mod rule;
pub mod sets;

pub use conntrack::*;
pub use control::*;
pub use cookie::*;
pub use events::*;
pub use limits::*;
pub use reason::Reason;
pub use rule::*;
pub use sets::*;
