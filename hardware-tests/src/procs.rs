//! The product's real binaries as child processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Finds a workspace binary built in the same profile as the running
/// executable (`target/<profile>/`), whether that is a test under `deps/`
/// or `yilian-rig` itself.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} not found; build it first: cargo build --release -p yilian-gateway -p yilian-central",
        path.display()
    );
    Ok(path)
}

/// A child process killed when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    /// The process id (for its CPU time in /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Proc {
    pub fn spawn(bin: &str, args: &[&str], log: &Path) -> anyhow::Result<Self> {
        Self::spawn_in(None, bin, args, log)
    }

    /// Like [`Proc::spawn`], as another user (the service user a unit
    /// would run it as); the caller must be root.
    pub fn spawn_as(
        uid: u32,
        gid: u32,
        bin: &str,
        args: &[&str],
        log: &Path,
    ) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(binary(bin)?);
        command.uid(uid).gid(gid);
        Self::start(command, bin, args, log)
    }

    /// Like [`Proc::spawn`], inside a bench network namespace.
    pub fn spawn_in(
        ns: Option<&crate::wan::Namespace>,
        bin: &str,
        args: &[&str],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let path = binary(bin)?;
        let command = match ns {
            Some(ns) => ns.command(&path),
            None => Command::new(&path),
        };
        Self::start(command, bin, args, log)
    }

    fn start(mut command: Command, bin: &str, args: &[&str], log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = command
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,quinn=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        Ok(Self {
            name: bin.to_owned(),
            child,
        })
    }

    /// SIGKILL: no chance to clean up, like a power cut for the process.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// This process's peak resident memory, in bytes (`VmHWM`).
pub fn peak_rss() -> u64 {
    peak_rss_of(std::process::id()).unwrap_or(0)
}

/// A process's peak resident memory, in bytes (`VmHWM`).
pub fn peak_rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
