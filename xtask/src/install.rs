//! `cargo xtask install`: the release `firewall` binary, the systemd unit
//! `firewall@.service` and an example policy, on this machine or beneath a
//! staging root (`--dest-dir`, like DESTDIR).

use std::{
    fs,
    io::{ErrorKind, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{build, run, setup};

/// The binary path written in `contrib/systemd/firewall@.service`.
const UNIT_BINARY: &str = "/usr/local/sbin/firewall";
/// Where the unit is installed.
const UNIT_PATH: &str = "/etc/systemd/system/firewall@.service";
/// Policies, one per interface: `/etc/firewall/IFACE.toml`.
const POLICY_DIR: &str = "/etc/firewall";
const EXAMPLE_NAME: &str = "example.toml";

#[derive(Args)]
pub struct Options {
    /// Installation prefix: the binary goes to PREFIX/sbin/firewall (the unit is rewritten to match).
    #[arg(long, value_name = "PREFIX", default_value = "/usr/local")]
    prefix: PathBuf,
    /// Staging root (like DESTDIR): write every file beneath DIR instead of /, and leave systemd alone.
    #[arg(long, value_name = "DIR")]
    dest_dir: Option<PathBuf>,
}

/// What to install, and where.
pub struct Plan<'a> {
    /// The `firewall` binary to install.
    pub binary: &'a Path,
    /// The unit template (`contrib/systemd/firewall@.service`).
    pub unit: &'a Path,
    /// The policy installed as `/etc/firewall/example.toml`.
    pub example: &'a Path,
    /// PREFIX: the binary goes to PREFIX/sbin/firewall.
    pub prefix: &'a Path,
    /// `/`, or the staging root every path is written beneath.
    pub root: &'a Path,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written (replacing what was there).
    Installed,
    /// A directory that did not exist.
    Created,
    /// Left as it was: an existing policy or directory.
    Kept,
}

/// One file or directory of an install, at its staged path.
#[derive(Debug)]
pub struct Step {
    pub path: PathBuf,
    pub outcome: Outcome,
}

pub fn install(opts: &Options) -> Result<()> {
    let binary_path = binary_path(&opts.prefix)?;
    // SAFETY: no arguments.
    if opts.dest_dir.is_none() && unsafe { crate::test::geteuid() } != 0 {
        bail!(
            "install writes {} and {POLICY_DIR}: run as root, or stage it with --dest-dir DIR",
            binary_path.display()
        );
    }
    let build_opts = build::Options { release: true };
    build::build(&build_opts)?;

    let repo = setup::workspace_root();
    let root = opts.dest_dir.clone().unwrap_or_else(|| PathBuf::from("/"));
    let steps = stage(&Plan {
        binary: &build::firewall_binary(&build_opts),
        unit: &repo.join("contrib/systemd/firewall@.service"),
        example: &repo.join("config/default.toml"),
        prefix: &opts.prefix,
        root: &root,
    })?;
    for step in &steps {
        let what = match step.outcome {
            Outcome::Installed => "installed",
            Outcome::Created => "created",
            Outcome::Kept => "kept (exists)",
        };
        eprintln!("install: {what} {}", step.path.display());
    }

    if let Some(dir) = &opts.dest_dir {
        eprintln!("install: staged beneath {}; systemctl daemon-reload not run", dir.display());
    } else if !Path::new("/run/systemd/system").exists() {
        eprintln!("install: systemd is not running here (no /run/systemd/system); systemctl daemon-reload not run");
    } else {
        let status = Command::new("systemctl")
            .arg("daemon-reload")
            .status()
            .context("failed to run systemctl daemon-reload")?;
        if !status.success() {
            bail!("systemctl daemon-reload failed: {status}");
        }
        eprintln!("install: systemctl daemon-reload done");
    }

    let iface = run::default_route_interface().unwrap_or_else(|_| "eth0".into());
    let policy = format!("{POLICY_DIR}/{iface}.toml");
    eprintln!("install: next, for {iface} (edit the copy before enabling it):");
    eprintln!("  cp {POLICY_DIR}/{EXAMPLE_NAME} {policy}");
    eprintln!("  {} check {policy}", binary_path.display());
    eprintln!("  systemctl enable --now firewall@{iface}");
    eprintln!("install: after an upgrade, `systemctl restart firewall@{iface}` runs the new binary: it takes over the pinned data plane, or refuses (leaving it enforcing) when its maps are incompatible");
    Ok(())
}

/// PREFIX/sbin/firewall, if it can stand in a unit's command line as is.
fn binary_path(prefix: &Path) -> Result<PathBuf> {
    let Some(text) = prefix.to_str() else {
        bail!("--prefix {} is not UTF-8", prefix.display());
    };
    if !prefix.is_absolute() {
        bail!("--prefix {text} is not an absolute path");
    }
    // systemd splits command lines at whitespace and expands % specifiers,
    // backslash escapes and quotes.
    if let Some(c) = text.chars().find(|c| c.is_whitespace() || matches!(c, '%' | '\\' | '"' | '\'')) {
        bail!("--prefix {text} contains {c:?}, which a systemd command line would not keep");
    }
    Ok(prefix.join("sbin").join("firewall"))
}

/// `path` (absolute) beneath `root`.
fn staged(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The unit with PREFIX/sbin/firewall in its command lines.
pub fn render_unit(unit: &str, prefix: &Path) -> Result<String> {
    let binary = binary_path(prefix)?;
    let binary = binary.to_str().expect("checked by binary_path");
    let mut found = false;
    let mut out = String::with_capacity(unit.len());
    for line in unit.split_inclusive('\n') {
        if line.starts_with("Exec") && line.contains(UNIT_BINARY) {
            found = true;
            out.push_str(&line.replace(UNIT_BINARY, binary));
        } else {
            out.push_str(line);
        }
    }
    if !found {
        bail!("the unit has no Exec line naming {UNIT_BINARY}, the path install rewrites");
    }
    Ok(out)
}

/// Copies the files of `plan` into place: binary and unit replaced
/// atomically (a running binary can be replaced), the policy directory and
/// example policy only created, never overwritten.
pub fn stage(plan: &Plan) -> Result<Vec<Step>> {
    let mut steps = Vec::new();

    let binary = staged(plan.root, &binary_path(plan.prefix)?);
    let bytes = fs::read(plan.binary).with_context(|| format!("cannot read {}", plan.binary.display()))?;
    replace_file(&binary, &bytes, 0o755)?;
    steps.push(Step { path: binary, outcome: Outcome::Installed });

    let text = fs::read_to_string(plan.unit).with_context(|| format!("cannot read {}", plan.unit.display()))?;
    let text = render_unit(&text, plan.prefix).with_context(|| format!("in {}", plan.unit.display()))?;
    let unit = staged(plan.root, Path::new(UNIT_PATH));
    replace_file(&unit, text.as_bytes(), 0o644)?;
    steps.push(Step { path: unit, outcome: Outcome::Installed });

    let dir = staged(plan.root, Path::new(POLICY_DIR));
    let existed = dir.is_dir();
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    steps.push(Step { path: dir.clone(), outcome: if existed { Outcome::Kept } else { Outcome::Created } });

    let example = dir.join(EXAMPLE_NAME);
    let policy = fs::read(plan.example).with_context(|| format!("cannot read {}", plan.example.display()))?;
    let outcome = match fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&example) {
        Ok(mut f) => {
            f.write_all(&policy).with_context(|| format!("cannot write {}", example.display()))?;
            Outcome::Installed
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Outcome::Kept,
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", example.display())),
    };
    steps.push(Step { path: example, outcome });
    Ok(steps)
}

/// Writes `bytes` beside `path`, then renames it over: a reader (or the
/// running service's binary) sees the old file or the new one, never half.
fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().expect("an absolute path has a parent");
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path.file_name().expect("a file path").to_string_lossy();
    let tmp = dir.join(format!(".{name}.install-tmp"));
    let _ = fs::remove_file(&tmp);
    fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use std::{
        env, fs,
        path::{Path, PathBuf},
        process::Command,
        time::{SystemTime, UNIX_EPOCH},
    };

    use super::*;

    /// A directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
            let dir = env::temp_dir().join(format!("xtask-{tag}-{}-{nanos}", std::process::id()));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn repo(path: &str) -> PathBuf {
        setup::workspace_root().join(path)
    }

    /// A stand-in for the release binary (building it is slow).
    fn fake_binary(dir: &Path, version: &str) -> PathBuf {
        let path = dir.join("firewall");
        fs::create_dir_all(dir).unwrap();
        fs::write(&path, format!("#!/bin/sh\n# {version}\nexit 0\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn stage_into(root: &Path, binary: &Path, prefix: &str) -> Vec<Step> {
        stage(&Plan {
            binary,
            unit: &repo("contrib/systemd/firewall@.service"),
            example: &repo("config/default.toml"),
            prefix: Path::new(prefix),
            root,
        })
        .unwrap()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn staged_install_places_files_and_never_overwrites_a_policy() {
        let tmp = TempDir::new("install");
        let root = tmp.0.join("root");
        let v1 = fake_binary(&tmp.0.join("v1"), "v1");
        let steps = stage_into(&root, &v1, "/usr/local");

        let binary = root.join("usr/local/sbin/firewall");
        let unit = root.join("etc/systemd/system/firewall@.service");
        let example = root.join("etc/firewall/example.toml");
        assert_eq!(fs::read(&binary).unwrap(), fs::read(&v1).unwrap());
        assert_eq!(mode(&binary), 0o755);
        // The default prefix is the unit's own: installed unchanged.
        assert_eq!(fs::read_to_string(&unit).unwrap(), fs::read_to_string(repo("contrib/systemd/firewall@.service")).unwrap());
        assert_eq!(mode(&unit), 0o644);
        assert_eq!(fs::read(&example).unwrap(), fs::read(repo("config/default.toml")).unwrap());
        let outcomes: Vec<_> = steps.iter().map(|s| &s.outcome).collect();
        assert_eq!(outcomes, [&Outcome::Installed, &Outcome::Installed, &Outcome::Created, &Outcome::Installed]);

        // An edited example and a real policy stay; binary and unit are replaced.
        fs::write(&example, "# edited\n").unwrap();
        let policy = root.join("etc/firewall/eth0.toml");
        fs::write(&policy, "# eth0's policy\n").unwrap();
        fs::write(&unit, "stale\n").unwrap();
        let v2 = fake_binary(&tmp.0.join("v2"), "v2");
        let steps = stage_into(&root, &v2, "/usr/local");
        assert_eq!(fs::read_to_string(&example).unwrap(), "# edited\n");
        assert_eq!(fs::read_to_string(&policy).unwrap(), "# eth0's policy\n");
        assert_eq!(fs::read(&binary).unwrap(), fs::read(&v2).unwrap());
        assert_ne!(fs::read_to_string(&unit).unwrap(), "stale\n");
        let outcomes: Vec<_> = steps.iter().map(|s| &s.outcome).collect();
        assert_eq!(outcomes, [&Outcome::Installed, &Outcome::Installed, &Outcome::Kept, &Outcome::Kept]);
        // No temporary files left beside them.
        for dir in ["usr/local/sbin", "etc/systemd/system", "etc/firewall"] {
            for entry in fs::read_dir(root.join(dir)).unwrap() {
                let name = entry.unwrap().file_name();
                assert!(!name.to_string_lossy().ends_with(".install-tmp"), "left behind: {dir}/{name:?}");
            }
        }
    }

    #[test]
    fn another_prefix_is_written_into_every_command_line() {
        let tmp = TempDir::new("prefix");
        let root = tmp.0.join("root");
        stage_into(&root, &fake_binary(&tmp.0, "v1"), "/opt/fw");
        assert!(root.join("opt/fw/sbin/firewall").is_file());
        let unit = fs::read_to_string(root.join("etc/systemd/system/firewall@.service")).unwrap();
        let exec: Vec<&str> = unit.lines().filter(|l| l.starts_with("Exec")).collect();
        assert_eq!(exec.iter().filter(|l| l.contains("/opt/fw/sbin/firewall ")).count(), 3, "{exec:#?}");
        assert!(!exec.iter().any(|l| l.contains(UNIT_BINARY)), "{exec:#?}");

        for bad in ["opt/fw", "/opt/my fw", "/opt/100%"] {
            assert!(render_unit(&unit, Path::new(bad)).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_unit_runs_the_controller_as_specified() {
        let unit = fs::read_to_string(repo("contrib/systemd/firewall@.service")).unwrap();
        let has = |line: &str| unit.lines().any(|l| l == line);
        assert!(has("ExecStartPre=/usr/local/sbin/firewall check /etc/firewall/%I.toml"));
        assert!(has("ExecStart=/usr/local/sbin/firewall run --iface %I --policy /etc/firewall/%I.toml --keep"));
        assert!(has("ExecReload=/bin/kill -HUP $MAINPID"));
        assert!(has("BindsTo=sys-subsystem-net-devices-%i.device"));
        assert!(has("ReadWritePaths=/sys/fs/bpf"));
        // Either would make the pins impossible (see the unit's comments).
        for forbidden in ["ProtectKernelTunables=yes", "PrivateNetwork=yes"] {
            assert!(!has(forbidden), "{forbidden}");
        }
    }

    /// `systemd-analyze verify` on the staged install, instantiated for `lo`
    /// (with `--root`, it checks that the staged binary exists).
    #[test]
    fn the_unit_verifies_with_systemd_analyze() {
        let analyze = env::var_os("PATH")
            .iter()
            .flat_map(env::split_paths)
            .map(|dir| dir.join("systemd-analyze"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!("systemd-analyze is not installed: it comes with the Debian package `systemd` (`cargo xtask setup` installs it)")
            });
        let tmp = TempDir::new("verify");
        let root = tmp.0.join("root");
        stage_into(&root, &fake_binary(&tmp.0, "v1"), "/usr/local");
        let dir = root.join("etc/systemd/system");
        let instance = dir.join("firewall@lo.service");
        fs::copy(dir.join("firewall@.service"), &instance).unwrap();

        let out = Command::new(&analyze)
            .args(["verify", "--man=no", "--recursive-errors=no"])
            .arg(format!("--root={}", root.display()))
            .arg(&instance)
            .output()
            .expect("failed to run systemd-analyze");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let about_unit: Vec<&str> = stderr.lines().filter(|l| l.contains("firewall@")).collect();
        assert!(
            out.status.success() && about_unit.is_empty(),
            "systemd-analyze verify {}: {}\nstderr:\n{stderr}",
            instance.display(),
            out.status
        );
    }
}
