//! Compiles the eBPF crate with the pinned nightly (aya-build runs
//! `rustup run <toolchain> cargo build --target bpfel-unknown-none`); the
//! object lands in OUT_DIR and is embedded by `loader.rs`.

mod pins {
    #![allow(dead_code)]
    include!("../xtask/src/pins.rs");
}

fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "firewall-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../firewall-ebpf"),
        ..Default::default()
    };
    println!("cargo::rerun-if-changed=../firewall-common/src");
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(pins::EBPF_TOOLCHAIN))
}
