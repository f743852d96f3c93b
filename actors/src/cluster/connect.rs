//! Connecting to NATS: who the client is (credentials) and whom it trusts
//! (TLS).
//!
//! Whoever reaches an unauthenticated NATS server can read every session's
//! history from the checkpoint bucket, listen to every session's events and
//! send inputs to any of them. So the server should ask for credentials and
//! the cluster must be able to present them: [`NatsOptions`] carries one
//! login (user and password, token, NKey seed, creds file or JWT) and the TLS
//! settings (a CA, a client certificate, TLS required) to [`connect_with`].
//! The login is one value, so a role of the server's authorization config
//! (its user and password, or its NKey) plugs in as it is.
//!
//! Secrets are [`Secret`]s: the options' `Debug` never shows them, and no
//! error carries them; a URL's `user:password@` is redacted in every message
//! ([`redact_url`]) and never reaches the NATS client's logs. The first
//! connection is tried once with a short timeout, so a refused login is an
//! error within seconds ([`ConnectFailure::Authorization`]) rather than a
//! worker retrying forever; once connected, the client reconnects forever.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use colloquy::Secret;

use super::{ClusterError, MAX_NAME_BYTES, check_name};

/// How long one attempt of the first connection may take, by default.
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// How a client proves to the NATS server who it is: one login.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NatsCredentials {
    /// A user and its password (`authorization { users = [...] }`).
    UserPassword {
        /// The user name (not secret).
        user: String,
        /// Its password.
        password: Secret,
    },
    /// A token (`authorization { token: ... }`).
    Token(Secret),
    /// An NKey user's seed (`SU…`); the server knows its public key (`U…`).
    NKeySeed(Secret),
    /// A `.creds` file (a user JWT and its NKey seed), for servers in
    /// operator (decentralized JWT) mode.
    CredsFile(PathBuf),
    /// A user JWT and the NKey seed that signs the server's nonce.
    Jwt {
        /// The user JWT.
        jwt: Secret,
        /// The user's NKey seed.
        seed: Secret,
    },
}

/// TLS beyond what a `tls://` URL does by itself (system roots, no client
/// certificate).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsTls {
    /// A PEM file of the CA certificates that signed the server's (instead
    /// of the system roots).
    pub ca: Option<PathBuf>,
    /// The client certificate (PEM), for servers that verify clients.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub client_key: Option<PathBuf>,
    /// Refuse to connect without TLS, whatever the URL's scheme.
    pub required: bool,
}

/// How [`connect_with`] logs in: the credentials, TLS, the timeout of the
/// first connection. Its `Debug` shows no secret.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsOptions {
    /// The login; none: anonymous, or what the URL carries
    /// (`nats://user:password@host` or `nats://token@host`).
    pub credentials: Option<NatsCredentials>,
    /// TLS settings.
    pub tls: NatsTls,
    /// How long one attempt of the first connection may take (each server
    /// of a list is tried once).
    pub connection_timeout: Duration,
    /// The prefix of this connection's reply inboxes (default `_INBOX`):
    /// each role of `docs/nats-roles.conf` may read only its own
    /// (`_INBOX_worker`, `_INBOX_frontend`, `_INBOX_speech`).
    pub inbox_prefix: Option<String>,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            credentials: None,
            tls: NatsTls::default(),
            connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
            inbox_prefix: None,
        }
    }
}

impl NatsOptions {
    /// No credentials, no TLS settings, the default timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Logs in with a user and password.
    pub fn with_user_password(mut self, user: impl Into<String>, password: Secret) -> Self {
        self.credentials = Some(NatsCredentials::UserPassword {
            user: user.into(),
            password,
        });
        self
    }

    /// Logs in with a token.
    pub fn with_token(mut self, token: Secret) -> Self {
        self.credentials = Some(NatsCredentials::Token(token));
        self
    }

    /// Logs in as an NKey user, with its seed.
    pub fn with_nkey_seed(mut self, seed: Secret) -> Self {
        self.credentials = Some(NatsCredentials::NKeySeed(seed));
        self
    }

    /// Logs in with a `.creds` file.
    pub fn with_creds_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.credentials = Some(NatsCredentials::CredsFile(path.into()));
        self
    }

    /// Logs in with a user JWT and its NKey seed.
    pub fn with_jwt(mut self, jwt: Secret, seed: Secret) -> Self {
        self.credentials = Some(NatsCredentials::Jwt { jwt, seed });
        self
    }

    /// Trusts the CA certificates in this PEM file (instead of the system's).
    pub fn with_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.ca = Some(path.into());
        self
    }

    /// Presents this client certificate and key (PEM files).
    pub fn with_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls.client_cert = Some(cert.into());
        self.tls.client_key = Some(key.into());
        self
    }

    /// Refuses a connection without TLS.
    pub fn with_tls_required(mut self, required: bool) -> Self {
        self.tls.required = required;
        self
    }

    /// How long one attempt of the first connection may take.
    pub fn with_connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// The prefix of this connection's reply inboxes (a role's own).
    pub fn with_inbox_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.inbox_prefix = Some(prefix.into());
        self
    }
}

/// Why the first connection failed, for a message (and a caller) to tell a
/// refused login from a server that is not there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectFailure {
    /// The server refused the login (authorization violation), or the
    /// client could not sign the server's nonce with its NKey.
    Authorization,
    /// TLS failed: a certificate not trusted, a server without TLS while it
    /// is required, a client certificate refused.
    Tls,
    /// The server did not answer within the connection timeout.
    TimedOut,
    /// Nothing listens there, or the name does not resolve.
    Unreachable,
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnectFailure::Authorization => {
                "authorization refused (check the NATS user and password, token, NKey or creds)"
            }
            ConnectFailure::Tls => "TLS failed (check the CA, the client certificate and key)",
            ConnectFailure::TimedOut => "timed out",
            ConnectFailure::Unreachable => "unreachable",
        })
    }
}

/// Connects to NATS without credentials or TLS settings of its own (see
/// [`connect_with`]; credentials in the URL are used).
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, ClusterError> {
    connect_with(url, name, &NatsOptions::default()).await
}

/// Connects to NATS the way the cluster expects, logging in with `options`:
/// the first connect is tried once (each server for
/// [`NatsOptions::connection_timeout`], 2 s by default), so a wrong URL, a
/// server that is not there or a refused login is an error at once
/// ([`ClusterError::InvalidUrl`], [`ClusterError::Connect`] with its
/// [`ConnectFailure`]); once connected, it reconnects forever with a short
/// backoff (100 ms per attempt, at most 1 s). The connection is named `name`
/// (at most [`MAX_NAME_BYTES`]).
///
/// `url` is one URL or a comma-separated list, each with its scheme
/// (`nats://`, `tls://`, `ws://` or `wss://`) and a host. A
/// `user:password@` (or `token@`) in the first URL that has one is the login
/// when `options` has none (both: [`ClusterError::Credentials`]); prefer the
/// options, since a URL is easily printed. Files that cannot be read and seeds
/// that are not seeds are [`ClusterError::Credentials`] before anything is
/// sent. Credentials are never part of an error.
pub async fn connect_with(
    url: &str,
    name: &str,
    options: &NatsOptions,
) -> Result<async_nats::Client, ClusterError> {
    check_name("name", name, MAX_NAME_BYTES)?;
    check_url(url)?;
    let (bare, from_url) = split_userinfo(url);
    let credentials = match (&options.credentials, from_url) {
        (Some(_), Some(_)) => {
            return Err(ClusterError::Credentials(
                "credentials both in the NATS URL and in the options: give one".into(),
            ));
        }
        (Some(c), None) => Some(c.clone()),
        (None, from_url) => from_url,
    };
    let mut nats = async_nats::ConnectOptions::new()
        .name(name)
        .max_reconnects(None)
        .connection_timeout(options.connection_timeout)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).clamp(100, 1000))
        });
    if let Some(credentials) = credentials {
        nats = log_in(nats, credentials).await?;
    }
    nats = with_tls(nats, &options.tls)?;
    if let Some(prefix) = &options.inbox_prefix {
        nats = nats.custom_inbox_prefix(prefix.clone());
    }
    nats.connect(bare.as_str()).await.map_err(|e| {
        let failure = match e.kind() {
            async_nats::ConnectErrorKind::ServerParse => {
                return ClusterError::InvalidUrl {
                    url: redact_url(url),
                    reason: e.to_string(),
                };
            }
            async_nats::ConnectErrorKind::AuthorizationViolation
            | async_nats::ConnectErrorKind::Authentication => ConnectFailure::Authorization,
            async_nats::ConnectErrorKind::Tls => ConnectFailure::Tls,
            // The client reports a failed handshake as an IO error.
            _ if caused_by_tls(&e) => ConnectFailure::Tls,
            async_nats::ConnectErrorKind::TimedOut => ConnectFailure::TimedOut,
            _ => ConnectFailure::Unreachable,
        };
        ClusterError::Connect {
            url: redact_url(url),
            failure,
            reason: e.to_string(),
        }
    })
}

/// Whether TLS (rustls) is somewhere in the error's causes, also inside an
/// IO error.
fn caused_by_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.is::<async_nats::rustls::Error>() {
            return true;
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && caused_by_tls(inner)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The login added to the client's options; seeds are checked first.
async fn log_in(
    nats: async_nats::ConnectOptions,
    credentials: NatsCredentials,
) -> Result<async_nats::ConnectOptions, ClusterError> {
    Ok(match credentials {
        NatsCredentials::UserPassword { user, password } => {
            nats.user_and_password(user, password.expose().to_string())
        }
        NatsCredentials::Token(token) => nats.token(token.expose().to_string()),
        NatsCredentials::NKeySeed(seed) => {
            key_pair(&seed, "NKey seed")?;
            nats.nkey(seed.expose().to_string())
        }
        NatsCredentials::CredsFile(path) => {
            readable(&path, "creds file")?;
            nats.credentials_file(&path)
                .await
                .map_err(|e| ClusterError::Credentials(format!("creds file: {e}")))?
        }
        NatsCredentials::Jwt { jwt, seed } => {
            let key_pair = Arc::new(key_pair(&seed, "JWT's NKey seed")?);
            nats.jwt(jwt.expose().to_string(), move |nonce| {
                let key_pair = key_pair.clone();
                async move { key_pair.sign(&nonce).map_err(async_nats::AuthError::new) }
            })
        }
    })
}

/// The key pair of a seed; the error says what is wrong, never the seed.
fn key_pair(seed: &Secret, what: &str) -> Result<nkeys::KeyPair, ClusterError> {
    nkeys::KeyPair::from_seed(seed.expose()).map_err(|e| {
        ClusterError::Credentials(format!(
            "the {what} is not one ({}; a user seed starts with SU)",
            e.kind()
        ))
    })
}

/// The TLS settings added to the client's options; files are checked first.
fn with_tls(
    mut nats: async_nats::ConnectOptions,
    tls: &NatsTls,
) -> Result<async_nats::ConnectOptions, ClusterError> {
    if let Some(ca) = &tls.ca {
        readable(ca, "CA file")?;
        nats = nats.add_root_certificates(ca.clone());
    }
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            readable(cert, "client certificate")?;
            readable(key, "client key")?;
            nats = nats.add_client_certificate(cert.clone(), key.clone());
        }
        (None, None) => {}
        _ => {
            return Err(ClusterError::Credentials(
                "a client certificate needs its key, and a key its certificate".into(),
            ));
        }
    }
    Ok(nats.require_tls(tls.required))
}

/// A file that can be opened, or an error naming it.
fn readable(path: &Path, what: &str) -> Result<(), ClusterError> {
    std::fs::File::open(path).map(drop).map_err(|e| {
        ClusterError::Credentials(format!("cannot read the {what} {}: {e}", path.display()))
    })
}

/// Refuses what is not a list of `scheme://host[:port]` URLs.
pub(crate) fn check_url(urls: &str) -> Result<(), ClusterError> {
    let invalid = |reason: &str| ClusterError::InvalidUrl {
        url: redact_url(urls),
        reason: reason.to_string(),
    };
    if urls.trim().is_empty() {
        return Err(invalid("empty"));
    }
    for url in urls.split(',').map(str::trim) {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(invalid(
                "expected scheme://host[:port], e.g. nats://127.0.0.1:4222",
            ));
        };
        if !["nats", "tls", "ws", "wss"].contains(&scheme.to_ascii_lowercase().as_str()) {
            return Err(invalid("the scheme must be nats, tls, ws or wss"));
        }
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        let host = host.split(['/', '?']).next().unwrap_or("");
        if host.is_empty() || host.starts_with(':') {
            return Err(invalid("no host"));
        }
    }
    Ok(())
}

/// The URLs without their user info, and the login of the first that had
/// one (`user:password` → user and password, `token` → token; percent
/// escapes decoded).
fn split_userinfo(urls: &str) -> (String, Option<NatsCredentials>) {
    let mut login = None;
    let bare = urls
        .split(',')
        .map(|url| {
            let url = url.trim();
            let Some((scheme, rest)) = url.split_once("://") else {
                return url.to_string();
            };
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            let Some(at) = rest[..end].rfind('@') else {
                return url.to_string();
            };
            if login.is_none() {
                login = Some(match rest[..at].split_once(':') {
                    Some((user, password)) => NatsCredentials::UserPassword {
                        user: percent_decode(user),
                        password: Secret::new(percent_decode(password)),
                    },
                    None => NatsCredentials::Token(Secret::new(percent_decode(&rest[..at]))),
                });
            }
            format!("{scheme}://{}", &rest[at + 1..])
        })
        .collect::<Vec<_>>()
        .join(",");
    (bare, login)
}

/// `%XX` escapes decoded (the rest as it is).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A NATS URL (or list) with any `user:password@` or `token@` replaced by
/// `***@`, for errors and logs.
pub fn redact_url(urls: &str) -> String {
    urls.split(',')
        .map(|url| match url.split_once("://") {
            Some((scheme, rest)) => {
                let end = rest.find(['/', '?']).unwrap_or(rest.len());
                match rest[..end].rfind('@') {
                    Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
                    None => url.to_string(),
                }
            }
            None => match url.rfind('@') {
                Some(at) => format!("***@{}", &url[at + 1..]),
                None => url.to_string(),
            },
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
#[path = "connect_tests.rs"]
mod tests;
