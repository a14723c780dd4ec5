use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{context} {path}: {source}")]
    File {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Pem { path: PathBuf, detail: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS configuration: {0}")]
    Verifier(String),
    #[error("socket: {0}")]
    Socket(std::io::Error),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream read: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    #[error("framing: {0}")]
    Frame(#[from] yilian_protocol::FrameError),
    #[error("peer certificate: {0}")]
    Identity(String),
}

impl From<yilian_pki::CertificateError> for LinkError {
    fn from(e: yilian_pki::CertificateError) -> Self {
        LinkError::Identity(e.0)
    }
}
