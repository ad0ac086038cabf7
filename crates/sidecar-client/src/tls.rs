//! Connecting to a server over TLS, with a client certificate for mTLS and
//! an agent bearer token, for every command and library user alike.

use std::path::PathBuf;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::ClientError;

/// TLS settings for reaching a server at an `https://` URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA the server's certificate must chain to (PEM); without it the
    /// system's roots are used.
    pub ca: Option<PathBuf>,
    /// This client's certificate (PEM), for servers that require mTLS.
    pub cert: Option<PathBuf>,
    /// The key of `cert` (PEM).
    pub key: Option<PathBuf>,
}

impl ClientTls {
    /// `None` when no option is set.
    pub fn from_parts(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Option<Self> {
        (ca.is_some() || cert.is_some() || key.is_some()).then_some(Self { ca, cert, key })
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))
}

/// The endpoint for `url`: TLS for `https://` (with `tls`'s CA and client
/// certificate), plain for `http://`. TLS options with an `http://` URL are
/// an error rather than silently unused.
pub fn endpoint(url: &str, tls: Option<&ClientTls>) -> Result<Endpoint, ClientError> {
    let ep = Endpoint::from_shared(url.to_owned())
        .map_err(|e| ClientError::InvalidServer(url.to_owned(), e.to_string()))?;
    if !url.starts_with("https://") {
        if tls.is_some() {
            return Err(ClientError::Tls(format!(
                "TLS options were given but `{url}` is not an https:// URL"
            )));
        }
        return Ok(ep);
    }
    let t = tls.cloned().unwrap_or_default();
    let mut cfg = ClientTlsConfig::new();
    cfg = match &t.ca {
        Some(ca) => cfg.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => cfg.with_native_roots(),
    };
    match (&t.cert, &t.key) {
        (Some(c), Some(k)) => cfg = cfg.identity(Identity::from_pem(read(c)?, read(k)?)),
        (None, None) => {}
        _ => {
            return Err(ClientError::Tls(
                "a client certificate needs both --tls-cert and --tls-key".into(),
            ));
        }
    }
    ep.tls_config(cfg)
        .map_err(|e| ClientError::Tls(format!("{url}: {e}")))
}
