//! Drop-folder intake: clinic equipment (ECG carts, report printers) writes
//! files into a directory; each file is taken once it has stopped changing,
//! streamed into the spool, and removed or archived only after the spool
//! commit.
//!
//! A file is "settled" when its size and mtime have not changed for the
//! configured time. Names that writers use for files in progress (`.*`,
//! `*.part`, `*.tmp`, `*.partial`, `*~`) are never taken. If the file
//! changes while it is being copied, the copy is discarded and the file is
//! taken again later.
//!
//! Each item carries a dedup key made of the folder, the file name, size,
//! mtime and inode: if the gateway dies after the spool commit but before
//! the file is removed, the file is picked up again at restart and the spool
//! answers with the first item instead of storing it twice.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use yilian_codecs::sniff::SNIFF_LEN;
use yilian_spool::{Lane, SpoolError};

use super::source::{Intake, Refusal, Shared, Source, Starting};
use crate::config::{AfterIntake, FolderSection};
use crate::content::describe_file;

const COPY_BLOCK: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    size: u64,
    mtime_ns: i128,
    inode: u64,
}

impl Fingerprint {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            inode: meta.ino(),
        }
    }
}

struct Candidate {
    print: Fingerprint,
    stable_since: Instant,
    /// After a refusal (spool full), do not retry before this.
    retry_after: Option<Instant>,
}

pub struct FolderIntake {
    config: FolderSection,
    intake: Intake,
}

#[derive(Debug, thiserror::Error)]
enum IntakeError {
    #[error("file changed while being copied")]
    Changed,
    /// Counted and logged where it happened.
    #[error("{0}")]
    Refused(Refusal),
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn in_progress_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || [".part", ".tmp", ".partial", ".crdownload", ".swp"]
            .iter()
            .any(|s| name.to_ascii_lowercase().ends_with(s))
}

impl Source for FolderIntake {
    fn intake(&self) -> &Intake {
        &self.intake
    }

    /// Nothing to bind: a missing folder is shown as a fault and watched
    /// for, not a reason to keep the box from starting.
    fn start(self: Box<Self>, stop: watch::Receiver<bool>) -> Starting {
        Box::pin(async move {
            if self.config.profile == crate::content::Profile::Ecg {
                self.intake.metrics.register_ecg_source(&self.config.name);
            }
            Ok(Box::pin(self.run(stop)) as _)
        })
    }
}

impl FolderIntake {
    pub fn new(config: FolderSection, shared: &Shared) -> Self {
        let intake = Intake::new(
            "folder",
            &config.name,
            "the file stays in the folder and is taken again in 10 s",
            shared,
        );
        Self { config, intake }
    }

    /// The spool's refusal, counted and logged once.
    fn refuse(&self, e: SpoolError) -> IntakeError {
        let r = Refusal::from(e);
        self.intake.refused(&r);
        IntakeError::Refused(r)
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        if this.config.create
            && let Err(e) = fs::create_dir_all(&this.config.path)
        {
            tracing::error!(folder = %this.config.name, path = %this.config.path.display(), error = %e,
                "cannot create the drop folder; check the path and permissions");
        }
        let mut missing_logged = false;
        let mut candidates: HashMap<PathBuf, Candidate> = HashMap::new();
        loop {
            // A missing folder is a fault to show, never one to paper over
            // by making it: the device would be writing somewhere else.
            let present = this.config.path.is_dir();
            this.intake
                .metrics
                .device_up("folder", &this.config.name, present);
            if !present && !missing_logged {
                tracing::error!(folder = %this.config.name, path = %this.config.path.display(),
                    "the drop folder does not exist; check where the device writes (or set create = true); watching for it");
            }
            missing_logged = !present;
            let ready = this.scan(&mut candidates);
            for path in ready {
                let me = this.clone();
                let p = path.clone();
                let r = tokio::task::spawn_blocking(move || me.ingest(&p)).await;
                match r {
                    Ok(Ok(())) => {
                        candidates.remove(&path);
                    }
                    Ok(Err(IntakeError::Changed)) => {
                        candidates.remove(&path);
                    }
                    Ok(Err(IntakeError::Refused(_))) => {
                        if let Some(c) = candidates.get_mut(&path) {
                            c.retry_after = Some(Instant::now() + Duration::from_secs(10));
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(folder = %this.config.name, error = %e, "cannot take a file; retrying later");
                        if let Some(c) = candidates.get_mut(&path) {
                            c.retry_after = Some(Instant::now() + Duration::from_secs(10));
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "folder intake task failed"),
                }
                if *stop.borrow() {
                    return;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(this.config.poll_interval) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Updates the candidates from a directory listing; returns the files
    /// that have settled.
    fn scan(&self, candidates: &mut HashMap<PathBuf, Candidate>) -> Vec<PathBuf> {
        let entries = match fs::read_dir(&self.config.path) {
            Ok(e) => e,
            // Logged once by the loop, which watches for it to appear.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::warn!(folder = %self.config.name, error = %e, "cannot list the drop folder");
                return Vec::new();
            }
        };
        let now = Instant::now();
        let mut present = std::collections::HashSet::new();
        let mut ready = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if in_progress_name(&name) {
                continue;
            }
            let path = entry.path();
            // Symlinks are not followed: a file is only ever one we own.
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            present.insert(path.clone());
            let print = Fingerprint::of(&meta);
            let c = candidates.entry(path.clone()).or_insert(Candidate {
                print,
                stable_since: now,
                retry_after: None,
            });
            if c.print != print {
                c.print = print;
                c.stable_since = now;
                continue;
            }
            if c.retry_after.is_some_and(|t| now < t) {
                continue;
            }
            if now.duration_since(c.stable_since) >= self.config.settle {
                ready.push(path);
            }
        }
        candidates.retain(|p, _| present.contains(p));
        ready.sort();
        ready
    }

    /// Streams one settled file into the spool, then removes or archives it.
    fn ingest(&self, path: &Path) -> Result<(), IntakeError> {
        let io = |context| move |source| IntakeError::Io { context, source };
        let mut file = File::open(path).map_err(io("open"))?;
        let before = Fingerprint::of(&file.metadata().map_err(io("stat"))?);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();

        let mut head = vec![0u8; SNIFF_LEN.min(before.size as usize)];
        file.read_exact(&mut head).map_err(io("read"))?;
        // Read before the copy; the fingerprint check after it proves both
        // saw the same file.
        let described = describe_file(path, &head, before.size, self.config.profile);
        let lane = if described.stat {
            Lane::Urgent
        } else {
            self.config.lane()
        };

        let mut metadata = described.metadata.clone();
        metadata.insert("filename".to_owned(), name.clone());
        let mut item = self.intake.item(lane, described.kind);
        item.metadata = metadata;
        item.dedup_key = Some(format!(
            "folder:{}:{}:{}:{}:{}",
            self.config.name, name, before.size, before.mtime_ns, before.inode
        ));

        let mut writer = self.intake.spool.writer(item).map_err(|e| self.refuse(e))?;
        writer.write_bytes(&head).map_err(|e| self.refuse(e))?;
        let mut buf = vec![0u8; COPY_BLOCK];
        loop {
            let n = file.read(&mut buf).map_err(io("read"))?;
            if n == 0 {
                break;
            }
            writer.write_bytes(&buf[..n]).map_err(|e| self.refuse(e))?;
        }
        let after = Fingerprint::of(&fs::metadata(path).map_err(io("stat"))?);
        if after != before || writer.written() != before.size {
            // Dropping the writer discards the partial payload.
            return Err(IntakeError::Changed);
        }
        let committed = self
            .intake
            .commit_blocking(writer)
            .map_err(IntakeError::Refused)?;
        if !committed.is_duplicate() {
            self.intake.metrics.ecg(&self.config.name, lane, &described);
        }
        // Only now, with the commit proof, may the file leave the folder.
        self.dispose(path, &name, &committed)?;
        if let Some(q) = &described.quarantine {
            tracing::warn!(
                folder = %self.config.name, upload = committed.upload_id(), reason = %q.reason,
                "file quarantined: stored and sent to central marked for review, not to the reading system; check the device"
            );
        }
        // File names may carry patient names: debug level only.
        tracing::debug!(folder = %self.config.name, file = %name, upload = committed.upload_id(), "file name");
        Ok(())
    }

    /// Deletes or archives a file the spool holds: the folder's "stored"
    /// answer to the device that wrote it, so it needs the spool's proof.
    fn dispose(
        &self,
        path: &Path,
        name: &str,
        proof: &impl yilian_proof::Durable,
    ) -> Result<(), IntakeError> {
        let upload_id = proof.durable_id();
        let io = |context| move |source| IntakeError::Io { context, source };
        match (self.config.after, &self.config.archive_dir) {
            (AfterIntake::Archive, Some(archive)) => {
                fs::create_dir_all(archive).map_err(io("create archive folder"))?;
                let dest = archive.join(format!("{}-{name}", &upload_id[..8.min(upload_id.len())]));
                fs::rename(path, &dest).map_err(io("archive"))?;
                sync_dir(archive);
            }
            _ => {
                fs::remove_file(path).map_err(io("remove"))?;
            }
        }
        sync_dir(&self.config.path);
        Ok(())
    }
}

fn sync_dir(dir: &Path) {
    if let Err(e) = yilian_proof::disk::sync_dir(dir) {
        tracing::debug!(dir = %dir.display(), error = %e, "directory fsync failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_progress_names_are_skipped() {
        for n in [".hidden", "a.part", "b.TMP", "c~", "d.partial"] {
            assert!(in_progress_name(n), "{n}");
        }
        for n in ["ECG0001.SCP", "report.pdf", "IM0001"] {
            assert!(!in_progress_name(n), "{n}");
        }
    }
}
