//! Who may open a browser call. The page at `/` is served with a call token:
//! an HMAC-SHA256, keyed by a server secret, of the call's number and an
//! expiry. `/ws` takes a token once, before its expiry, from an allowed
//! `Origin` (by default the server's own); anything else is answered 403
//! before the upgrade. So a page on another site cannot open calls from its
//! visitors' browsers, a token cannot be reused for a second call, and an
//! embedder can put `/` (or its own page, with [`BrowserAccess::issue`])
//! behind its own login and know `/ws` is reached only through it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use colloquy::Secret;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why a call was refused before its upgrade.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// `/twilio` without a valid `X-Twilio-Signature` (403).
    #[error("no valid X-Twilio-Signature")]
    BadSignature,
    /// `/ws` without a call token, or with a forged one (403).
    #[error("no valid call token")]
    BadToken,
    /// `/ws` with a call token past its expiry (403).
    #[error("the call token expired")]
    ExpiredToken,
    /// `/ws` with a call token already used for a call (403).
    #[error("the call token was already used")]
    UsedToken,
    /// `/ws` from an origin not allowed (403).
    #[error("origin not allowed")]
    ForeignOrigin,
    /// As many calls are open as the server takes (503).
    #[error("the server is at its call limit")]
    Busy,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = match self {
            Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::FORBIDDEN,
        };
        tracing::info!(reason = %self, "calls: refused before the upgrade");
        metrics::counter!("colloquy_calls_refused_total", "status" => status.as_str().to_string())
            .increment(1);
        (status, self.to_string()).into_response()
    }
}

/// Which origins may open browser calls.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AllowedOrigins {
    /// The server's own: the `Origin`'s host and port are the request's
    /// `Host`.
    #[default]
    SameOrigin,
    /// These origins exactly (`https://app.example.com`), compared without
    /// case or a trailing slash.
    List(Vec<String>),
}

impl AllowedOrigins {
    /// Whether a request with `headers` comes from an allowed origin; a
    /// request without `Origin` does not (every browser sends one).
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
            return false;
        };
        let origin = origin.trim_end_matches('/');
        match self {
            Self::List(list) => list
                .iter()
                .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin)),
            Self::SameOrigin => {
                let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
                    return false;
                };
                let authority = origin
                    .strip_prefix("http://")
                    .or_else(|| origin.strip_prefix("https://"));
                authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
            }
        }
    }
}

/// The browser endpoint's keys and rules: call tokens and allowed origins.
#[derive(Clone)]
pub struct BrowserAccess {
    key: Secret,
    ttl: Duration,
    origins: AllowedOrigins,
    /// Tokens used, by call number, with their expiry (pruned as they pass).
    used: Arc<Mutex<HashMap<u64, u64>>>,
}

impl std::fmt::Debug for BrowserAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserAccess")
            .field("key", &self.key)
            .field("ttl", &self.ttl)
            .field("origins", &self.origins)
            .finish()
    }
}

impl Default for BrowserAccess {
    /// A random key (tokens last as long as the process), tokens valid for
    /// five minutes, the server's own origin.
    fn default() -> Self {
        let mut bytes = [0u8; 32];
        if getrandom::fill(&mut bytes).is_err() {
            // No system randomness: refuse every token rather than sign with
            // a guessable key (an empty key is never used: see `mac`).
            return Self::new(Secret::new(""));
        }
        let key = base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes);
        Self::new(Secret::new(key))
    }
}

impl BrowserAccess {
    /// Tokens signed with `key` (share it between servers behind one
    /// balancer), valid for five minutes, from the server's own origin.
    pub fn new(key: Secret) -> Self {
        Self {
            key,
            ttl: Duration::from_secs(300),
            origins: AllowedOrigins::SameOrigin,
            used: Arc::default(),
        }
    }

    /// How long a token is valid after it is issued.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Which origins may open calls.
    pub fn with_origins(mut self, origins: AllowedOrigins) -> Self {
        self.origins = origins;
        self
    }

    /// The origins allowed.
    pub fn origins(&self) -> &AllowedOrigins {
        &self.origins
    }

    fn mac(&self, call: u64, expires: u64) -> Option<Hmac<Sha256>> {
        if self.key.expose().is_empty() {
            return None;
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.expose().as_bytes()).ok()?;
        mac.update(format!("colloquy-browser-call:{call}:{expires}").as_bytes());
        Some(mac)
    }

    /// A token for call number `call`, valid for the configured time:
    /// `<call>.<expiry, Unix seconds>.<HMAC-SHA256, base64url>`.
    pub fn issue(&self, call: u64) -> String {
        self.issue_at(call, unix_now() + self.ttl.as_secs())
    }

    /// A token for call number `call`, valid until `expires` (for a page of
    /// the embedder's own, or a test).
    pub fn issue_until(&self, call: u64, expires: SystemTime) -> String {
        let expires = expires
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.issue_at(call, expires)
    }

    fn issue_at(&self, call: u64, expires: u64) -> String {
        let tag = self
            .mac(call, expires)
            .map(|m| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
            })
            .unwrap_or_default();
        format!("{call}.{expires}.{tag}")
    }

    /// Checks a request's origin and token and spends the token: the call's
    /// number, or why it is refused.
    pub fn admit(&self, headers: &HeaderMap, token: Option<&str>) -> Result<u64, Refusal> {
        if !self.origins.allows(headers) {
            return Err(Refusal::ForeignOrigin);
        }
        let token = token.ok_or(Refusal::BadToken)?;
        let mut parts = token.splitn(3, '.');
        let (Some(call), Some(expires), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(Refusal::BadToken);
        };
        let (Ok(call), Ok(expires)) = (call.parse::<u64>(), expires.parse::<u64>()) else {
            return Err(Refusal::BadToken);
        };
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| Refusal::BadToken)?;
        let mac = self.mac(call, expires).ok_or(Refusal::BadToken)?;
        mac.verify_slice(&tag).map_err(|_| Refusal::BadToken)?;
        let now = unix_now();
        if expires < now {
            return Err(Refusal::ExpiredToken);
        }
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        used.retain(|_, &mut e| e >= now);
        if used.insert(call, expires).is_some() {
            return Err(Refusal::UsedToken);
        }
        Ok(call)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn tokens_are_bound_to_their_call_spent_once_and_expire() {
        let access = BrowserAccess::new(Secret::new("k3y-value"));
        let ok = headers(Some("http://127.0.0.1:80"), "127.0.0.1:80");
        let token = access.issue(7);
        assert_eq!(access.admit(&ok, Some(&token)), Ok(7));
        assert_eq!(access.admit(&ok, Some(&token)), Err(Refusal::UsedToken));
        // Another call's number with this call's tag: forged.
        let forged = token.replacen("7.", "8.", 1);
        assert_eq!(access.admit(&ok, Some(&forged)), Err(Refusal::BadToken));
        // Another key's token: forged.
        let other = BrowserAccess::new(Secret::new("other")).issue(9);
        assert_eq!(access.admit(&ok, Some(&other)), Err(Refusal::BadToken));
        let expired = access.issue_at(10, unix_now() - 1);
        assert_eq!(
            access.admit(&ok, Some(&expired)),
            Err(Refusal::ExpiredToken)
        );
        assert_eq!(access.admit(&ok, None), Err(Refusal::BadToken));
        assert_eq!(access.admit(&ok, Some("garbage")), Err(Refusal::BadToken));
        assert!(!format!("{access:?}").contains("k3y-value"));
    }

    #[test]
    fn origins() {
        let same = AllowedOrigins::SameOrigin;
        assert!(same.allows(&headers(Some("http://localhost:8080"), "localhost:8080")));
        assert!(same.allows(&headers(
            Some("https://Voice.Example.com"),
            "voice.example.com"
        )));
        assert!(!same.allows(&headers(Some("http://evil.example"), "localhost:8080")));
        assert!(!same.allows(&headers(None, "localhost:8080")));
        let list = AllowedOrigins::List(vec!["https://app.example.com/".into()]);
        assert!(list.allows(&headers(Some("https://app.example.com"), "internal:1")));
        assert!(!list.allows(&headers(Some("http://app.example.com"), "internal:1")));
        let empty = BrowserAccess::new(Secret::new(""));
        let ok = headers(Some("http://h"), "h");
        assert_eq!(
            empty.admit(&ok, Some(&empty.issue(1))),
            Err(Refusal::BadToken)
        );
    }
}
