//! TLS and mTLS on the gRPC listener, and who a caller is.
//!
//! The rustls configuration is reloadable (SIGHUP re-reads the certificate,
//! key and client CA; a bad file keeps the old configuration): every
//! accepted connection takes the configuration in force when it arrives,
//! and handshakes run off the accept loop with a deadline. A client
//! certificate names its agent by a URI SAN
//! `spiffe://<trust-domain>/agent/<id>` (or `/admin/<name>` for an
//! administrator), else by its subject CN. Without mTLS, agents may be
//! bound by bearer tokens (`--agent-tokens`): a file mapping each token's
//! SHA-256 to the agents it may speak for; tokens are never logged.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_stream::wrappers::ReceiverStream;

use crate::ServerError;

/// The files of the listener's TLS identity, and the CA that client
/// certificates must chain to (mTLS) when set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

fn tls_err(what: &Path, e: impl std::fmt::Display) -> ServerError {
    ServerError::Tls(format!("{}: {e}", what.display()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls server configuration from the files.
pub(crate) fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| tls_err(&files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(&files.cert, e))?;
    if certs.is_empty() {
        return Err(tls_err(&files.cert, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| tls_err(&files.key, e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| tls_err(ca, e))? {
                roots
                    .add(c.map_err(|e| tls_err(ca, e))?)
                    .map_err(|e| tls_err(ca, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| tls_err(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| tls_err(&files.cert, e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The listener's TLS configuration, swapped whole on reload.
#[derive(Debug)]
pub(crate) struct ReloadableTls {
    files: TlsFiles,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl ReloadableTls {
    pub(crate) fn load(files: TlsFiles) -> Result<Self, ServerError> {
        let current = RwLock::new(server_config(&files)?);
        Ok(Self { files, current })
    }

    /// Re-reads the files; on error the configuration in force stays.
    pub(crate) fn reload(&self) -> Result<(), ServerError> {
        let next = server_config(&self.files)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        Ok(())
    }

    fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TCP connections and completes their handshakes concurrently;
/// yields the established TLS streams.
pub(crate) fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadableTls>,
) -> ReceiverStream<Result<tokio_rustls::server::TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => break,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%addr, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%addr, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Who a client certificate says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// May send events (and reports) for this agent only.
    Agent(String),
    /// May call the admin API; sends no events.
    Admin(String),
}

/// The identity in a DER certificate: a `spiffe://<td>/agent/<id>` or
/// `spiffe://<td>/admin/<name>` URI SAN, else the subject CN as an agent.
pub fn identity_of(der: &[u8]) -> Option<PeerIdentity> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && let Some(rest) = uri.strip_prefix("spiffe://")
                && let Some((_trust_domain, path)) = rest.split_once('/')
            {
                if let Some(id) = path.strip_prefix("agent/").filter(|i| !i.is_empty()) {
                    return Some(PeerIdentity::Agent(id.to_owned()));
                }
                if let Some(id) = path.strip_prefix("admin/").filter(|i| !i.is_empty()) {
                    return Some(PeerIdentity::Admin(id.to_owned()));
                }
            }
        }
    }
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .map(|cn| PeerIdentity::Agent(cn.to_owned()))
}

/// The tokens file: `[[token]] sha256 = "<hex>"  agents = ["alice-bot"]`.
#[derive(Debug, serde::Deserialize)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    sha256: String,
    agents: Vec<String>,
}

/// Agent bearer tokens by their SHA-256; reloadable.
#[derive(Debug)]
pub(crate) struct AgentTokens {
    path: PathBuf,
    by_hash: RwLock<HashMap<String, BTreeSet<String>>>,
}

impl AgentTokens {
    pub(crate) fn load(path: &Path) -> Result<Self, ServerError> {
        let t = Self {
            path: path.to_path_buf(),
            by_hash: RwLock::default(),
        };
        t.reload()?;
        Ok(t)
    }

    pub(crate) fn reload(&self) -> Result<(), ServerError> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| tls_err(&self.path, e))?;
        let file: TokensFile = toml::from_str(&text).map_err(|e| tls_err(&self.path, e))?;
        let mut map = HashMap::new();
        for t in file.token {
            let hash = t.sha256.trim().to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(tls_err(
                    &self.path,
                    "a token's sha256 must be 64 hex characters",
                ));
            }
            map.insert(hash, t.agents.into_iter().collect());
        }
        *self
            .by_hash
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = map;
        Ok(())
    }

    /// The agents a presented token may speak for.
    pub(crate) fn agents(&self, token: &str) -> Option<BTreeSet<String>> {
        let hash = hex::encode(Sha256::digest(token.as_bytes()));
        self.by_hash
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&hash)
            .cloned()
    }
}

/// What a caller may speak for, from its certificate or token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// No identity is required (no mTLS, no tokens file).
    Anyone,
    /// Only these agents.
    Agents(BTreeSet<String>),
    /// An administrator's certificate: admin calls only.
    Admin(String),
}

impl Caller {
    /// Whether events for `agent` may come from this caller.
    pub(crate) fn may_speak_for(&self, agent: &str) -> bool {
        match self {
            Self::Anyone => true,
            Self::Agents(a) => a.contains(agent),
            Self::Admin(_) => false,
        }
    }

    /// The agent names, for messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Anyone => "anyone".into(),
            Self::Agents(a) => a.iter().cloned().collect::<Vec<_>>().join(", "),
            Self::Admin(n) => format!("admin {n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(cn: &str, uri: Option<&str>) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        if let Some(u) = uri {
            p.subject_alt_names
                .push(SanType::URI(u.try_into().unwrap()));
        }
        let c = p.self_signed(&key).unwrap();
        (c, key)
    }

    #[test]
    fn a_certificate_names_an_agent_or_an_admin() {
        let (c, _) = cert("cn-name", Some("spiffe://example.org/agent/alice-bot"));
        assert_eq!(
            identity_of(c.der()),
            Some(PeerIdentity::Agent("alice-bot".into()))
        );
        let (c, _) = cert("cn-name", Some("spiffe://example.org/admin/ops"));
        assert_eq!(
            identity_of(c.der()),
            Some(PeerIdentity::Admin("ops".into()))
        );
        let (c, _) = cert("bob-bot", Some("https://example.org/agent/x"));
        assert_eq!(
            identity_of(c.der()),
            Some(PeerIdentity::Agent("bob-bot".into()))
        );
        assert_eq!(identity_of(b"not a certificate"), None);
    }

    /// SIGHUP re-reads the files; a file that does not load keeps the
    /// configuration in force.
    #[test]
    fn tls_reload_swaps_whole_or_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let write = |c: &rcgen::Certificate, k: &KeyPair| {
            std::fs::write(dir.path().join("c.pem"), c.pem()).unwrap();
            std::fs::write(dir.path().join("k.pem"), k.serialize_pem()).unwrap();
        };
        let (c1, k1) = cert("one", None);
        write(&c1, &k1);
        let files = TlsFiles {
            cert: dir.path().join("c.pem"),
            key: dir.path().join("k.pem"),
            client_ca: None,
        };
        let tls = ReloadableTls::load(files).unwrap();
        let first = tls.current();
        let (c2, k2) = cert("two", None);
        write(&c2, &k2);
        tls.reload().unwrap();
        assert!(!Arc::ptr_eq(&first, &tls.current()));
        let second = tls.current();
        std::fs::write(dir.path().join("k.pem"), "garbage").unwrap();
        assert!(tls.reload().is_err());
        assert!(Arc::ptr_eq(&second, &tls.current()));
    }

    #[test]
    fn tokens_map_digests_to_agents_and_reject_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        let digest = hex::encode(Sha256::digest(b"secret-1"));
        std::fs::write(
            &path,
            format!("[[token]]\nsha256 = \"{digest}\"\nagents = [\"a\", \"b\"]\n"),
        )
        .unwrap();
        let t = AgentTokens::load(&path).unwrap();
        assert_eq!(
            t.agents("secret-1"),
            Some(["a".to_owned(), "b".to_owned()].into())
        );
        assert_eq!(t.agents("secret-2"), None);
        std::fs::write(&path, "[[token]]\nsha256 = \"xyz\"\nagents = []\n").unwrap();
        assert!(t.reload().is_err());
        assert!(
            t.agents("secret-1").is_some(),
            "a bad file keeps the old tokens"
        );
    }
}
