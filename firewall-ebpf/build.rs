//! Compiles `src/kfuncs.c` (kfunc declarations rustc cannot describe in
//! BTF yet; see that file) to LLVM bitcode and hands it to bpf-linker.
//! Only for the BPF target: host builds of this crate (unit tests, clippy)
//! need no clang.

use std::{env, path::PathBuf, process::Command};

fn main() {
    println!("cargo::rerun-if-changed=src/kfuncs.c");
    println!("cargo::rerun-if-env-changed=FIREWALL_CLANG");
    if env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("bpf") {
        return;
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("kfuncs.bc");
    // LLVM 23 (the nightly's) reads clang-14 bitcode; `cargo xtask setup`
    // installs Debian's clang-14.
    let clang = env::var("FIREWALL_CLANG").unwrap_or_else(|_| "clang-14".into());
    let status = Command::new(&clang)
        .args(["-target", "bpf", "-O2", "-g", "-emit-llvm", "-c", "src/kfuncs.c", "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {clang} ({e}): install it with `cargo xtask setup` (Debian package clang-14)"));
    assert!(status.success(), "{clang} failed to compile src/kfuncs.c: {status}");
    // Only the firewall object calls kfuncs; the bench object must not
    // carry their declarations.
    println!("cargo::rustc-link-arg-bin=firewall={}", out.display());
}
