//! Detects and installs what the build and the tests need. Idempotent: a
//! second call only checks. Never touches the machine's default toolchains.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::pins::{BPF_LINKER_VERSION, EBPF_TOOLCHAIN, USER_TOOLCHAIN};

/// Debian packages the build and the tests use: `clang-14` compiles the
/// eBPF crate's kfunc shim (firewall-ebpf/src/kfuncs.c) to bitcode, `ip`
/// (iproute2) builds namespaces and veth pairs and `ss` reads TCP_INFO,
/// `setpriv` (util-linux) runs the CLI without privileges, `tcpdump`
/// shows what the server's stack sees in the SYN-cookie tests, `systemd-analyze`
/// (systemd) verifies the service unit, `nft` (nftables) holds back a
/// client's ACK in the restart test, `tmux` runs the live view in a real
/// terminal.
const APT_PACKAGES: &[&str] = &["clang-14", "iproute2", "util-linux", "tcpdump", "systemd", "nftables", "tmux"];

/// What `cargo xtask bench` drives beyond the test packages (`nft`, the
/// anchor it is measured beside, is one of those): `ethtool` (GRO on the veth).
const BENCH_APT_PACKAGES: &[&str] = &["ethtool"];

/// The benchmark's extra Debian packages.
pub fn ensure_bench() -> Result<()> {
    ensure_apt_packages(BENCH_APT_PACKAGES)
}

/// Root of the repository (the xtask crate's parent).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Project-local install root for bpf-linker (ignored by git).
pub fn tools_dir() -> PathBuf {
    workspace_root().join("target").join("tools")
}

pub fn ensure_all() -> Result<()> {
    let started = Instant::now();
    ensure_apt_packages(APT_PACKAGES)?;
    ensure_toolchain(USER_TOOLCHAIN, &[])?;
    ensure_toolchain(EBPF_TOOLCHAIN, &["rust-src"])?;
    ensure_bpf_linker()?;
    eprintln!("setup: ready in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn step(msg: &str) {
    eprintln!("setup: {msg}");
}

/// Runs `cmd`, inheriting stdio so long installs show their own progress.
fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    String::from_utf8(out.stdout).with_context(|| format!("{cmd:?} printed non-UTF-8"))
}

fn ensure_apt_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!("installing Debian packages (apt-get): {}", missing.join(" ")));
    run(Command::new("apt-get").args(["update", "-q"]))
        .context("apt-get update failed (are you root?)")?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .context("apt-get install failed")
}

fn toolchain_installed(name: &str) -> Result<bool> {
    let list = output(Command::new("rustup").args(["toolchain", "list"]))?;
    Ok(list.lines().any(|l| l.starts_with(name)))
}

fn ensure_toolchain(name: &str, components: &[&str]) -> Result<()> {
    if !toolchain_installed(name)? {
        step(&format!("installing Rust toolchain {name} (side by side; defaults untouched)"));
        let mut cmd = Command::new("rustup");
        cmd.args(["toolchain", "install", name, "--profile", "minimal", "--no-self-update"]);
        for c in components {
            cmd.args(["--component", c]);
        }
        return run(&mut cmd);
    }
    for c in components {
        let installed = output(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            name,
        ]))?;
        if !installed.lines().any(|l| l.starts_with(c)) {
            step(&format!("adding component {c} to {name}"));
            run(Command::new("rustup").args(["component", "add", c, "--toolchain", name]))?;
        }
    }
    Ok(())
}

/// Path of the project's bpf-linker binary.
pub fn bpf_linker_bin_dir() -> PathBuf {
    tools_dir().join("bin")
}

/// bpf-linker must use the same LLVM as the eBPF nightly, or it cannot read
/// the bitcode rustc emits; no Debian LLVM is new enough, so it is built
/// against the nightly's own libLLVM.
fn ensure_bpf_linker() -> Result<()> {
    let bin = bpf_linker_bin_dir().join("bpf-linker");
    let stamp = tools_dir().join("bpf-linker.stamp");
    let want = format!("{BPF_LINKER_VERSION} {EBPF_TOOLCHAIN}");
    if bin.exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(());
    }

    let sysroot = output(Command::new("rustc").args([&format!("+{EBPF_TOOLCHAIN}"), "--print", "sysroot"]))?;
    let sysroot = PathBuf::from(sysroot.trim());
    let version = output(Command::new("rustc").args([&format!("+{EBPF_TOOLCHAIN}"), "-vV"]))?;
    let major = llvm_major(&version)
        .with_context(|| format!("no `LLVM version` in `rustc +{EBPF_TOOLCHAIN} -vV`"))?;
    let lib_dir = sysroot.join("lib");
    let libllvm = find_libllvm(&lib_dir, major)?;

    // llvm-sys looks for `$LLVM_PREFIX/lib/libLLVM.so`.
    let prefix = tools_dir().join("llvm");
    fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib").join("libLLVM.so");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("symlink {} -> {}", link.display(), libllvm.display()))?;

    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against {} (LLVM {major}); about a minute",
        libllvm.display()
    ));
    let started = Instant::now();
    run(Command::new("cargo")
        .arg(format!("+{USER_TOOLCHAIN}"))
        .args(["install", "--locked", "--force", "--root"])
        .arg(tools_dir())
        .args(["bpf-linker", "--version", BPF_LINKER_VERSION, "--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix)
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", lib_dir.display()),
        )
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR"))?;
    fs::write(&stamp, want)?;
    step(&format!("bpf-linker built in {:.0} s", started.elapsed().as_secs_f64()));
    Ok(())
}

fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
}

fn find_libllvm(lib_dir: &Path, major: u32) -> Result<PathBuf> {
    // The real shared object; `libLLVM-<major>-rust-*.so` beside it is only
    // a linker script naming it, which a symlink cannot stand in for.
    let prefix = format!("libLLVM.so.{major}.");
    for entry in fs::read_dir(lib_dir).with_context(|| format!("read {}", lib_dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) {
            return Ok(entry.path());
        }
    }
    bail!("no libLLVM for LLVM {major} in {}", lib_dir.display())
}

/// Environment for child cargo invocations: the pinned userspace toolchain
/// and the project's bpf-linker on PATH (aya-build calls it).
pub fn cargo_command() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{USER_TOOLCHAIN}"));
    for var in ["RUSTUP_TOOLCHAIN", "CARGO", "RUSTC", "RUSTDOC", "CARGO_MANIFEST_DIR"] {
        cmd.env_remove(var);
    }
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bpf_linker_bin_dir()];
    paths.extend(env::split_paths(&path));
    cmd.env("PATH", env::join_paths(paths).expect("PATH entries are valid"));
    cmd.current_dir(workspace_root());
    cmd
}

#[cfg(test)]
mod tests {
    use super::llvm_major;

    #[test]
    fn llvm_major_is_read_from_rustc_vv() {
        let vv = "rustc 1.101.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 23.1.4\n";
        assert_eq!(llvm_major(vv), Some(23));
        assert_eq!(llvm_major("rustc 1.0\n"), None);
    }
}
