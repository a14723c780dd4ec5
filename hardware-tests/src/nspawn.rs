//! A Debian 12 machine with systemd as PID 1, for testing the packages as
//! a county admin installs them: a `debootstrap` tree from the Debian
//! mirror apt uses (made once, kept under `target/nspawn/`), copied for
//! each machine and booted with `systemd-nspawn --boot`. The machine
//! shares the host's network, so central runs on the host.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Where the pristine tree is kept between runs.
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/nspawn/bookworm")
}

/// The mirror apt on this machine uses (the tree comes from the same).
fn mirror() -> String {
    let sources = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .or_else(|_| std::fs::read_to_string("/etc/apt/sources.list"))
        .unwrap_or_default();
    sources
        .split_whitespace()
        .find(|w| w.starts_with("http") && w.ends_with("/debian"))
        .unwrap_or("http://deb.debian.org/debian")
        .to_owned()
}

/// The cached tree, made with debootstrap the first time.
pub fn pristine_tree() -> anyhow::Result<PathBuf> {
    let dir = cache_dir();
    let done = dir.join(".yilian-complete");
    if done.exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.parent().context("cache dir")?)?;
    let out = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            "--include=systemd,systemd-sysv,dbus,procps,util-linux,passwd",
            "bookworm",
        ])
        .arg(&dir)
        .arg(mirror())
        .output()
        .context("debootstrap is missing: apt-get install debootstrap systemd-container (./scripts/test-all does)")?;
    anyhow::ensure!(
        out.status.success(),
        "debootstrap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&done, b"")?;
    Ok(dir)
}

/// A booted machine; powered off when dropped.
pub struct Machine {
    pub root: PathBuf,
    nspawn: Child,
    leader: u32,
}

impl Machine {
    /// Copies the pristine tree to `root` and boots it. `binds` are
    /// `--bind=` arguments (`HOST:INSIDE`).
    pub fn boot(root: &Path, binds: &[String]) -> anyhow::Result<Machine> {
        let tree = pristine_tree()?;
        let _ = std::fs::remove_dir_all(root);
        let out = Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(&tree)
            .arg(root)
            .output()?;
        anyhow::ensure!(out.status.success(), "copying the tree: {out:?}");
        let mut cmd = Command::new("systemd-nspawn");
        cmd.arg("-D")
            .arg(root)
            .args(["--register=no", "--keep-unit", "--boot", "--quiet"])
            .args(binds.iter().map(|b| format!("--bind={b}")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let nspawn = cmd
            .spawn()
            .context("systemd-nspawn (apt-get install systemd-container)")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        // The machine's PID 1 is the child of systemd-nspawn.
        let leader = loop {
            let children =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", nspawn.id()))
                    .unwrap_or_default();
            if let Some(pid) = children
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
            {
                break pid;
            }
            anyhow::ensure!(Instant::now() < deadline, "the machine did not start");
            std::thread::sleep(Duration::from_millis(100));
        };
        let m = Machine {
            root: root.to_owned(),
            nspawn,
            leader,
        };
        loop {
            let state = m.sh("systemctl is-system-running 2>/dev/null || true");
            let state = String::from_utf8_lossy(&state.stdout).trim().to_owned();
            if state == "running" || state == "degraded" {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the machine did not boot: {state}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(m)
    }

    /// Runs a shell command inside the machine, as root.
    pub fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .args([
                "-t",
                &self.leader.to_string(),
                "-a",
                "--",
                "/bin/sh",
                "-c",
                script,
            ])
            .output()
            .unwrap_or_else(|e| Output {
                status: std::os::unix::process::ExitStatusExt::from_raw(1 << 8),
                stdout: Vec::new(),
                stderr: e.to_string().into_bytes(),
            })
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, script: &str) -> anyhow::Result<String> {
        let out = self.sh(script);
        anyhow::ensure!(
            out.status.success(),
            "`{script}` in the machine failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A path inside the machine, as seen from the host.
    pub fn path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.sh("systemctl poweroff");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(self.nspawn.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}
