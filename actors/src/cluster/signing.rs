//! Checkpoints a worker can tell from forgeries: with a state key shared by
//! the cluster's workers, each checkpoint is stored with an HMAC-SHA256 of
//! its bytes and its bucket key, and a checkpoint whose tag does not verify
//! (or that has none) is never resumed.
//!
//! Why: subject permissions keep everyone but workers out of the buckets
//! (`docs/nats-roles.conf`), but a leaked worker credential, a misconfigured
//! server or an operator's tool could still write one; a resumed forgery
//! puts the writer's words (a system message, a tool result) into the next
//! request with the worker's key. The tag is bound to the key, so a genuine
//! checkpoint copied under another session's key does not verify either.
//!
//! Format: the checkpoint's JSON, a newline, the base64 tag (serde's JSON
//! holds no raw newline). Without a state key, checkpoints are written
//! without a tag and a tag is ignored on read.

use base64::Engine as _;
use colloquy::Secret;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a stored checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SealError {
    /// The worker has a state key and the checkpoint carries no tag.
    #[error("unsigned checkpoint")]
    Unsigned,
    /// The tag is not the state key's for these bytes and this key.
    #[error("checkpoint tag does not verify")]
    Forged,
}

/// The cluster's key for checkpoint tags (a [`Secret`]: never printed).
#[derive(Clone)]
pub(crate) struct StateKey(Secret);

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateKey(***)")
    }
}

impl StateKey {
    pub(crate) fn new(secret: Secret) -> Self {
        Self(secret)
    }

    fn mac(&self, key: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(self.0.expose().as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(key.as_bytes());
        mac.update(&[0]);
        mac.update(body);
        mac
    }
}

/// `body` as stored under `key`: tagged when there is a state key.
pub(crate) fn seal(state_key: Option<&StateKey>, key: &str, body: Vec<u8>) -> Vec<u8> {
    let Some(k) = state_key else {
        return body;
    };
    let tag = k.mac(key, &body).finalize().into_bytes();
    let mut out = body;
    out.push(b'\n');
    out.extend_from_slice(
        base64::engine::general_purpose::STANDARD
            .encode(tag)
            .as_bytes(),
    );
    out
}

/// The checkpoint's JSON from what is stored under `key`, its tag verified
/// (in constant time) when there is a state key.
pub(crate) fn open<'a>(
    state_key: Option<&StateKey>,
    key: &str,
    stored: &'a [u8],
) -> Result<&'a [u8], SealError> {
    let (body, tag) = match stored.iter().rposition(|&b| b == b'\n') {
        Some(i) => (&stored[..i], Some(&stored[i + 1..])),
        None => (stored, None),
    };
    let Some(k) = state_key else {
        return Ok(body);
    };
    let tag = tag.ok_or(SealError::Unsigned)?;
    let tag = base64::engine::general_purpose::STANDARD
        .decode(tag)
        .map_err(|_| SealError::Forged)?;
    k.mac(key, body)
        .verify_slice(&tag)
        .map_err(|_| SealError::Forged)?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> StateKey {
        StateKey::new(Secret::new(s))
    }

    #[test]
    fn a_sealed_checkpoint_opens_only_with_its_key_and_its_bucket_key() {
        let k = key("cluster-state-key");
        let sealed = seal(Some(&k), "s1", br#"{"v":1}"#.to_vec());
        assert_eq!(open(Some(&k), "s1", &sealed), Ok(&br#"{"v":1}"#[..]));
        assert_eq!(
            open(Some(&key("other")), "s1", &sealed),
            Err(SealError::Forged)
        );
        assert_eq!(open(Some(&k), "s2", &sealed), Err(SealError::Forged));
        let mut tampered = sealed.clone();
        tampered[2] = b'w';
        assert_eq!(open(Some(&k), "s1", &tampered), Err(SealError::Forged));
        assert_eq!(
            open(Some(&k), "s1", br#"{"v":1}"#),
            Err(SealError::Unsigned)
        );
        // Without a key: no tag written, a tag ignored.
        assert_eq!(seal(None, "s1", b"{}".to_vec()), b"{}");
        assert_eq!(open(None, "s1", &sealed), Ok(&br#"{"v":1}"#[..]));
        assert!(!format!("{k:?}").contains("cluster-state-key"));
    }
}
