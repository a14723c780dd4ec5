//! The clinic's modality worklist, as central last sent it: kept in memory
//! for C-FIND and on disk (written through a temporary name and renamed)
//! so the box answers modalities after a restart with the link down.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use yilian_protocol::messages::WorklistEntry;

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Stored {
    version: String,
    entries: Vec<WorklistEntry>,
}

#[derive(Debug, Clone)]
pub struct WorklistCache {
    inner: Arc<RwLock<Stored>>,
    path: PathBuf,
}

impl WorklistCache {
    /// Loads the copy at `path`; none (or an unreadable one) is an empty
    /// list with no version, so central sends the whole list again.
    pub fn load(path: &Path) -> Self {
        let stored = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            inner: Arc::new(RwLock::new(stored)),
            path: path.to_owned(),
        }
    }

    pub fn version(&self) -> String {
        self.inner
            .read()
            .map(|s| s.version.clone())
            .unwrap_or_default()
    }

    pub fn entries(&self) -> Vec<WorklistEntry> {
        self.inner
            .read()
            .map(|s| s.entries.clone())
            .unwrap_or_default()
    }

    /// Replaces the list: on disk first, then in memory.
    pub fn replace(&self, version: String, entries: Vec<WorklistEntry>) -> std::io::Result<()> {
        let stored = Stored { version, entries };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        yilian_proof::disk::write_atomically(
            &self.path,
            &serde_json::to_vec(&stored).map_err(std::io::Error::other)?,
            0o600,
        )?;
        if let Ok(mut w) = self.inner.write() {
            *w = stored;
        }
        Ok(())
    }
}

/// The matching keys of a worklist query (empty: universal match).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub patient_id: String,
    pub patient_name: String,
    pub accession_number: String,
    pub requested_procedure_id: String,
    pub modality: String,
    pub station_ae_title: String,
    /// `YYYYMMDD`, `A-B`, `A-` or `-B`.
    pub start_date: String,
}

/// DICOM wildcard matching: `*` any run, `?` one character.
pub fn wildcard(pattern: &str, value: &str, ignore_case: bool) -> bool {
    let norm = |s: &str| {
        if ignore_case {
            s.to_lowercase().chars().collect::<Vec<_>>()
        } else {
            s.chars().collect::<Vec<_>>()
        }
    };
    let (p, v) = (norm(pattern), norm(value));
    // Iterative matching with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0usize, 0usize, None::<usize>, 0usize);
    while j < v.len() {
        if i < p.len() && (p[i] == '?' || p[i] == v[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    while i < p.len() && p[i] == '*' {
        i += 1;
    }
    i == p.len()
}

fn single_value(key: &str, value: &str, ignore_case: bool) -> bool {
    key.is_empty() || key == "*" || wildcard(key, value, ignore_case)
}

/// A person name key matches the whole value or any one of its component
/// groups (alphabetic, ideographic, phonetic): a console searching "王*"
/// finds "Wang^Xiaoming=王^小明". A key with its own `=` matches whole
/// values only.
fn person_name(key: &str, value: &str) -> bool {
    single_value(key, value, true)
        || (!key.contains('=') && value.split('=').any(|group| wildcard(key, group, true)))
}

fn date_range(key: &str, date: &str) -> bool {
    if key.is_empty() {
        return true;
    }
    match key.split_once('-') {
        None => key == date,
        Some((from, to)) => {
            !date.is_empty() && (from.is_empty() || date >= from) && (to.is_empty() || date <= to)
        }
    }
}

impl Query {
    pub fn matches(&self, e: &WorklistEntry) -> bool {
        single_value(&self.patient_id, &e.patient_id, false)
            && person_name(&self.patient_name, &e.patient_name)
            && single_value(&self.accession_number, &e.accession_number, false)
            && single_value(
                &self.requested_procedure_id,
                &e.requested_procedure_id,
                false,
            )
            && single_value(&self.modality, &e.modality, false)
            && single_value(&self.station_ae_title, &e.scheduled_station_ae_title, false)
            && date_range(&self.start_date, &e.scheduled_start_date)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> WorklistEntry {
        WorklistEntry {
            accession_number: "ACC42".into(),
            patient_id: "P001".into(),
            patient_name: "Wang^Xiaoming=王^小明".into(),
            modality: "DX".into(),
            scheduled_station_ae_title: "DR_ROOM".into(),
            scheduled_start_date: "20261123".into(),
            ..WorklistEntry::default()
        }
    }

    #[test]
    fn dicom_matching() {
        let e = entry();
        assert!(Query::default().matches(&e), "universal");
        let q = |f: &dyn Fn(&mut Query)| {
            let mut q = Query::default();
            f(&mut q);
            q.matches(&e)
        };
        assert!(q(&|q| q.patient_name = "wang*".into()));
        assert!(q(&|q| q.patient_name = "*王^小明".into()));
        assert!(q(&|q| q.patient_name = "王*".into()));
        assert!(q(&|q| q.patient_name = "王^小明".into()));
        assert!(!q(&|q| q.patient_name = "李*".into()));
        assert!(q(&|q| q.patient_id = "P00?".into()));
        assert!(!q(&|q| q.patient_id = "P00".into()));
        assert!(q(&|q| q.modality = "DX".into()));
        assert!(!q(&|q| q.modality = "CT".into()));
        assert!(q(&|q| q.start_date = "20261123".into()));
        assert!(q(&|q| q.start_date = "20261120-20261130".into()));
        assert!(q(&|q| q.start_date = "-20261123".into()));
        assert!(!q(&|q| q.start_date = "20261124-".into()));
        assert!(q(&|q| q.station_ae_title = "DR_*".into()));
    }

    #[test]
    fn the_copy_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("worklist.json");
        let w = WorklistCache::load(&path);
        assert_eq!(w.version(), "");
        w.replace("v1".into(), vec![entry()]).expect("write");
        let again = WorklistCache::load(&path);
        assert_eq!(again.version(), "v1");
        assert_eq!(again.entries(), vec![entry()]);
    }
}
