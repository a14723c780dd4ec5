//! Payloads in an S3-compatible bucket (Garage, Ceph RGW, a cloud's S3):
//! every instance of a city hub reads and writes the same objects, and no
//! payload lives on one instance's disk.
//!
//! Every PUT and every part carries its SHA-256 (`x-amz-checksum-sha256`),
//! so the server refuses bytes damaged on the way. The calls are
//! synchronous for the store's blocking callers: each runs on a small
//! runtime of its own, so it may be called from any thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, Checksum};
use object_store::client::{HttpClient, HttpConnector};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStoreExt, PutPayload, RetryConfig};

use super::BlobError;

/// `[blobs]` for `backend = "s3"`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// `https://s3.city.example:3900` (path-style requests).
    pub endpoint: String,
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
    pub access_key_id: String,
    /// A file holding the secret key (a systemd credential, or a file only
    /// the service user reads): never in the TOML itself. A bare name is
    /// looked up in `$CREDENTIALS_DIRECTORY` (systemd's `LoadCredential=`).
    pub secret_access_key_file: PathBuf,
    /// The CA certificate (PEM) the server's certificate is checked
    /// against; without it, the system's CA bundle.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Size of the parts a large upload is sent in while it arrives; a box
    /// that reconnects resends at most one part. S3 wants at least 5 MiB.
    #[serde(default = "default_part_mib")]
    pub part_size_mib: u64,
    /// How long one request may take before it is retried.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Memory for the parts being gathered, across every upload in
    /// progress (each holds up to one part until it is sent): uploads
    /// beyond it wait their turn, their boxes held back by QUIC's flow
    /// control, instead of a thousand boxes at once exhausting memory.
    #[serde(default = "default_buffer_mib")]
    pub buffer_mib: u64,
}

fn default_region() -> String {
    "garage".into()
}
fn default_part_mib() -> u64 {
    8
}
fn default_buffer_mib() -> u64 {
    512
}
fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

impl S3Settings {
    pub fn part_size(&self) -> usize {
        (self.part_size_mib.clamp(5, 512) * 1024 * 1024) as usize
    }

    /// The parts' memory budget: at least one part.
    pub fn buffer_bytes(&self) -> usize {
        ((self.buffer_mib.min(1 << 20) * 1024 * 1024) as usize).max(self.part_size())
    }

    fn secret(&self) -> Result<String, BlobError> {
        let file = match (
            self.secret_access_key_file.components().count(),
            std::env::var_os("CREDENTIALS_DIRECTORY"),
        ) {
            (1, Some(dir)) if self.secret_access_key_file.is_relative() => {
                Path::new(&dir).join(&self.secret_access_key_file)
            }
            _ => self.secret_access_key_file.clone(),
        };
        let secret = std::fs::read_to_string(&file).map_err(|e| {
            BlobError::Config(format!(
                "reading the S3 secret key from {}: {e}",
                file.display()
            ))
        })?;
        Ok(secret.trim_end_matches(['\n', '\r']).to_owned())
    }
}

pub(crate) struct S3Blobs {
    store: Arc<AmazonS3>,
    runtime: Option<tokio::runtime::Runtime>,
    /// `s3://bucket/`, for listings.
    prefix: String,
    part_size: usize,
    buffer_bytes: usize,
}

impl std::fmt::Debug for S3Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.prefix)
    }
}

impl Drop for S3Blobs {
    fn drop(&mut self) {
        // The store may be dropped on an async thread, where a runtime may
        // not block while shutting down.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// reqwest with the program's one rustls provider (object_store's own
/// client would bring aws-lc-rs beside it).
#[derive(Debug)]
struct Connector {
    tls: rustls::ClientConfig,
    timeout: Duration,
}

impl HttpConnector for Connector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(self.tls.clone())
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(self.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })?;
        Ok(HttpClient::new(client))
    }
}

fn tls_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, BlobError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let file = ca.unwrap_or(Path::new("/etc/ssl/certs/ca-certificates.crt"));
    let mut roots = rustls::RootCertStore::empty();
    // Without a CA file and without a system bundle, plain-HTTP endpoints
    // (a bucket on the hub's own loopback) still work.
    if ca.is_some() || file.exists() {
        let certs = CertificateDer::pem_file_iter(file)
            .map_err(|e| BlobError::Config(format!("reading {}: {e}", file.display())))?;
        for cert in certs.flatten() {
            let _ = roots.add(cert);
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| BlobError::Config(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(config)
}

/// A missing multipart upload (S3's NoSuchUpload, a 404) as None.
fn gone<T>(e: object_store::Error) -> Result<Option<T>, object_store::Error> {
    match e {
        object_store::Error::NotFound { .. } => Ok(None),
        e => Err(e),
    }
}

fn s3_error(e: object_store::Error) -> BlobError {
    // The first line of the chain says what failed; the causes say why
    // (a refused checksum, a missing bucket, a timeout).
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    BlobError::S3(text)
}

impl S3Blobs {
    pub(crate) fn connect(settings: &S3Settings) -> Result<Self, BlobError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3")
            .enable_all()
            .build()
            .map_err(|e| BlobError::Config(format!("starting the S3 client: {e}")))?;
        let store = AmazonS3Builder::new()
            .with_endpoint(settings.endpoint.trim_end_matches('/'))
            .with_allow_http(settings.endpoint.starts_with("http://"))
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_access_key_id(&settings.access_key_id)
            .with_secret_access_key(settings.secret()?)
            .with_virtual_hosted_style_request(false)
            .with_checksum_algorithm(Checksum::SHA256)
            .with_retry(RetryConfig {
                max_retries: 5,
                retry_timeout: Duration::from_secs(120),
                ..RetryConfig::default()
            })
            .with_http_connector(Connector {
                tls: tls_config(settings.ca_file.as_deref())?,
                timeout: settings.timeout,
            })
            .build()
            .map_err(s3_error)?;
        let blobs = Self {
            store: Arc::new(store),
            runtime: Some(runtime),
            prefix: format!("s3://{}/", settings.bucket),
            part_size: settings.part_size(),
            buffer_bytes: settings.buffer_bytes(),
        };
        // Fail at start-up, with the reason, rather than at the first commit.
        blobs.head("blobs/.probe")?;
        Ok(blobs)
    }

    /// Runs one request on the client's runtime and waits for it, from any
    /// thread (a blocking thread, or a runtime's worker thread).
    fn run<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = Result<T, object_store::Error>> + Send + 'static,
    ) -> Result<T, BlobError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let rt = self
            .runtime
            .as_ref()
            .ok_or_else(|| BlobError::S3("the S3 client is stopped".into()))?;
        rt.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv()
            .map_err(|_| BlobError::S3("the S3 client stopped".into()))?
            .map_err(s3_error)
    }

    pub(crate) fn part_size(&self) -> usize {
        self.part_size
    }

    pub(crate) fn buffer_bytes(&self) -> usize {
        self.buffer_bytes
    }

    pub(crate) fn location(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub(crate) fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        let store = self.store.clone();
        let path = ObjectPath::from(key);
        self.run(async move { store.put(&path, PutPayload::from(bytes)).await })
            .map(|_| ())
    }

    pub(crate) fn get(&self, key: &str) -> Result<Vec<u8>, BlobError> {
        let store = self.store.clone();
        let path = ObjectPath::from(key);
        self.run(async move { store.get(&path).await?.bytes().await })
            .map(|b| b.to_vec())
    }

    /// The object's size, or None when it is absent.
    pub(crate) fn head(&self, key: &str) -> Result<Option<u64>, BlobError> {
        let store = self.store.clone();
        let path = ObjectPath::from(key);
        self.run(async move {
            match store.head(&path).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    /// Streams an object into a new file (a 2 GB instance never sits in
    /// memory whole).
    pub(crate) fn get_to_file(&self, key: &str, file: &Path) -> Result<u64, BlobError> {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        let store = self.store.clone();
        let path = ObjectPath::from(key);
        let file = file.to_owned();
        self.run(async move {
            let local = |e: std::io::Error| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            };
            let mut out = tokio::fs::File::create(&file).await.map_err(local)?;
            let mut stream = store.get(&path).await?.into_stream();
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                n += chunk.len() as u64;
                out.write_all(&chunk).await.map_err(local)?;
            }
            out.flush().await.map_err(local)?;
            Ok(n)
        })
    }

    /// Stores a file of any size: one PUT, or parts of `part_size` for a
    /// large one (the migration of a directory of payloads).
    pub(crate) fn put_file(
        &self,
        key: &str,
        file: &Path,
        part_size: usize,
    ) -> Result<(), BlobError> {
        use std::io::Read;
        let io = |e: std::io::Error| BlobError::Io {
            context: "read",
            path: file.to_owned(),
            source: e,
        };
        let mut f = std::fs::File::open(file).map_err(io)?;
        let size = f.metadata().map_err(io)?.len();
        if size <= part_size as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            f.read_to_end(&mut bytes).map_err(io)?;
            return self.put(key, bytes);
        }
        let upload = self.create_multipart(key)?;
        let mut etags = Vec::new();
        let sent = (|| {
            loop {
                let mut part = Vec::with_capacity(part_size);
                (&mut f)
                    .take(part_size as u64)
                    .read_to_end(&mut part)
                    .map_err(io)?;
                if part.is_empty() {
                    break;
                }
                etags.push(self.put_part(key, &upload, etags.len(), part)?);
            }
            self.complete_multipart(key, &upload, std::mem::take(&mut etags))
        })();
        if sent.is_err() {
            let _ = self.abort_multipart(key, &upload);
        }
        sent
    }

    pub(crate) fn create_multipart(&self, key: &str) -> Result<String, BlobError> {
        let store = self.store.clone();
        let path = ObjectPath::from(key);
        self.run(async move { store.create_multipart(&path).await })
    }

    /// Sends part `index` (0-based) and returns its ETag.
    pub(crate) fn put_part(
        &self,
        key: &str,
        upload: &str,
        index: usize,
        bytes: Vec<u8>,
    ) -> Result<String, BlobError> {
        let store = self.store.clone();
        let path = ObjectPath::from(key);
        let upload = upload.to_owned();
        let id = upload.clone();
        self.run(async move {
            store
                .put_part(&path, &upload, index, PutPayload::from(bytes))
                .await
                .map(Some)
                .or_else(gone)
        })?
        .map(|p| p.content_id)
        .ok_or(BlobError::UploadGone(id))
    }

    pub(crate) fn complete_multipart(
        &self,
        key: &str,
        upload: &str,
        etags: Vec<String>,
    ) -> Result<(), BlobError> {
        let store = self.store.clone();
        let path = ObjectPath::from(key);
        let upload = upload.to_owned();
        let parts = etags
            .into_iter()
            .map(|content_id| PartId { content_id })
            .collect();
        let id = upload.clone();
        self.run(async move {
            store
                .complete_multipart(&path, &upload, parts)
                .await
                .map(Some)
                .or_else(gone)
        })?
        .map(|_| ())
        .ok_or(BlobError::UploadGone(id))
    }

    pub(crate) fn abort_multipart(&self, key: &str, upload: &str) -> Result<(), BlobError> {
        let store = self.store.clone();
        let path = ObjectPath::from(key);
        let upload = upload.to_owned();
        self.run(async move {
            match store.abort_multipart(&path, &upload).await {
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                r => r,
            }
        })
    }
}
