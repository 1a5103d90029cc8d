// The one place where this project's pinned tool versions live. Read by the
// xtask (which installs them) and by firewall-user's build script (which
// hands the eBPF toolchain to aya-build) through `include!`.

/// Userspace toolchain: aya 0.16 needs rustc >= 1.98.
pub const USER_TOOLCHAIN: &str = "1.99.1";
/// Toolchain for the eBPF crate: a nightly with `rust-src` (build-std=core).
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-10-30";
/// bpf-linker, built against the eBPF nightly's own libLLVM.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
