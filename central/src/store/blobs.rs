//! Where payloads live, by their SHA-256: a directory under `data_dir` (the
//! embedded default, one machine) or an S3-compatible bucket (several
//! central instances, no payload on any one instance's disk).
//!
//! Both are content-addressed: the same bytes stored twice are one object,
//! and writing an object that exists already is harmless.

use std::fs;
use std::path::{Path, PathBuf};

use yilian_proof::disk::create_private_dir;

pub mod s3;

pub use s3::S3Settings;

/// `[blobs]`: where payloads are kept.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum BlobBackend {
    /// `data_dir/blobs` (shared storage if several instances run).
    #[default]
    Dir,
    S3(S3Settings),
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("object store: {0}")]
    S3(String),
    /// The multipart upload a part was sent to is gone (aborted by a sweep,
    /// or completed by an instance that died before its commit).
    #[error("object store: the multipart upload {0} is gone")]
    UploadGone(String),
    #[error("object store settings: {0}")]
    Config(String),
}

fn io<'a>(context: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BlobError + 'a {
    move |source| BlobError::Io {
        context,
        path: path.to_owned(),
        source,
    }
}

/// The object key of a payload: `blobs/ab/abcdef…` (the same layout as the
/// directory, so a migrated hub's objects are where its files were).
pub(crate) fn key(sha_hex: &str) -> String {
    format!("blobs/{}/{sha_hex}", &sha_hex[..2.min(sha_hex.len())])
}

#[derive(Debug)]
pub(crate) enum Blobs {
    Dir(PathBuf),
    S3(s3::S3Blobs),
}

/// A payload as a file on this machine: the stored file itself, or a copy
/// fetched from the bucket that is removed when this is dropped.
#[derive(Debug)]
pub struct LocalBlob {
    path: PathBuf,
    temporary: bool,
}

impl LocalBlob {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LocalBlob {
    fn drop(&mut self) {
        if self.temporary {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Blobs {
    pub(crate) fn open(data_dir: &Path, backend: &BlobBackend) -> Result<Self, BlobError> {
        Ok(match backend {
            BlobBackend::Dir => Blobs::Dir(data_dir.join("blobs")),
            BlobBackend::S3(settings) => Blobs::S3(s3::S3Blobs::connect(settings)?),
        })
    }

    pub(crate) fn is_dir(&self) -> bool {
        matches!(self, Blobs::Dir(_))
    }

    pub(crate) fn s3(&self) -> Option<&s3::S3Blobs> {
        match self {
            Blobs::S3(s) => Some(s),
            Blobs::Dir(_) => None,
        }
    }

    /// The file of a payload in the directory backend.
    pub(crate) fn dir_path(root: &Path, sha_hex: &str) -> PathBuf {
        root.join(&sha_hex[..2.min(sha_hex.len())]).join(sha_hex)
    }

    /// Where a payload is, as listings show it.
    pub(crate) fn location(&self, sha_hex: &str) -> String {
        match self {
            Blobs::Dir(root) => Self::dir_path(root, sha_hex).display().to_string(),
            Blobs::S3(s) => s.location(&key(sha_hex)),
        }
    }

    /// Stores bytes durably under their hash (the caller hashed them).
    pub(crate) fn put(&self, sha_hex: &str, bytes: &[u8]) -> Result<(), BlobError> {
        match self {
            Blobs::Dir(root) => {
                let path = Self::dir_path(root, sha_hex);
                if path.exists() {
                    return Ok(());
                }
                let dir = path.parent().unwrap_or(root).to_owned();
                create_private_dir(&dir).map_err(io("create", &dir))?;
                yilian_proof::disk::write_atomically(&path, bytes, 0o600)
                    .map_err(io("store blob", &path))?;
                yilian_proof::disk::sync_dir(root).map_err(io("fsync directory", root))
            }
            Blobs::S3(s) => s.put(&key(sha_hex), bytes.to_vec()),
        }
    }

    /// Copies a stored file in as the payload with this hash (the
    /// migration of a hub's directory into a bucket).
    pub(crate) fn copy_file(&self, sha_hex: &str, file: &Path) -> Result<(), BlobError> {
        match self {
            Blobs::Dir(_) => {
                let bytes = fs::read(file).map_err(io("read", file))?;
                self.put(sha_hex, &bytes)
            }
            Blobs::S3(s) => s.put_file(&key(sha_hex), file, s.part_size()),
        }
    }

    /// Moves a complete, fsynced file in as the payload with this hash
    /// (the directory backend's commit; the file is gone afterwards).
    pub(crate) fn adopt_file(&self, sha_hex: &str, file: &Path) -> Result<(), BlobError> {
        match self {
            Blobs::Dir(root) => {
                let blob = Self::dir_path(root, sha_hex);
                let blob_dir = blob.parent().unwrap_or(root).to_owned();
                if blob.exists() {
                    // Same content already stored (content addressing): keep one.
                    fs::remove_file(file).map_err(io("remove partial upload", file))?;
                } else {
                    create_private_dir(&blob_dir).map_err(io("create", &blob_dir))?;
                    fs::rename(file, &blob).map_err(io("store blob", &blob))?;
                    yilian_proof::disk::sync_dir(&blob_dir)
                        .map_err(io("fsync directory", &blob_dir))?;
                    yilian_proof::disk::sync_dir(root).map_err(io("fsync directory", root))?;
                }
                Ok(())
            }
            Blobs::S3(s) => {
                s.put_file(&key(sha_hex), file, s.part_size())?;
                fs::remove_file(file).map_err(io("remove", file))
            }
        }
    }

    /// The stored bytes of a payload.
    pub(crate) fn read(&self, sha_hex: &str) -> Result<Vec<u8>, BlobError> {
        match self {
            Blobs::Dir(root) => {
                let path = Self::dir_path(root, sha_hex);
                fs::read(&path).map_err(io("read blob", &path))
            }
            Blobs::S3(s) => s.get(&key(sha_hex)),
        }
    }

    /// The stored size of a payload, or None when it is absent.
    pub(crate) fn size(&self, sha_hex: &str) -> Result<Option<u64>, BlobError> {
        match self {
            Blobs::Dir(root) => {
                let path = Self::dir_path(root, sha_hex);
                match fs::metadata(&path) {
                    Ok(m) => Ok(Some(m.len())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io("stat blob", &path)(e)),
                }
            }
            Blobs::S3(s) => s.head(&key(sha_hex)),
        }
    }

    /// A payload as a local file, for senders that stream from a file (the
    /// PACS, the ECG share). `scratch` holds fetched copies.
    pub(crate) fn local(&self, sha_hex: &str, scratch: &Path) -> Result<LocalBlob, BlobError> {
        match self {
            Blobs::Dir(root) => Ok(LocalBlob {
                path: Self::dir_path(root, sha_hex),
                temporary: false,
            }),
            Blobs::S3(s) => {
                create_private_dir(scratch).map_err(io("create", scratch))?;
                let path = scratch.join(format!("{sha_hex}.{:016x}", rand::random::<u64>()));
                // Removed on drop, also when the fetch fails half-way.
                let local = LocalBlob {
                    path,
                    temporary: true,
                };
                s.get_to_file(&key(sha_hex), &local.path)?;
                Ok(local)
            }
        }
    }
}
