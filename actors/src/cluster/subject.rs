//! Subjects and keys built from outside input, with bounds.
//!
//! A session id, a prefix or a worker name ends up in a NATS control line
//! (`PUB $KV.colloquy_leases.<key> …`, `CONNECT {"name": …}`). The server
//! refuses a control line over its `max_control_line` (4 KiB by default) by
//! closing the connection, which cuts every session on that connection while
//! it reconnects. So every name is bounded here and refused with
//! [`ClusterError::NameTooLong`] before anything is sent, on the client side
//! and on the worker side alike; the bounds leave room for the rest of the
//! line (the bucket name, a reply inbox, header and payload sizes).

use super::ClusterError;
use super::wire::{EventClass, InputKind};
use crate::ids::SessionId;

/// The longest session key ([`session_key`], the escaped id) accepted: an id
/// of ASCII letters, digits, `-` and `_` may have this many bytes, every
/// other byte takes three.
pub const MAX_SESSION_KEY_BYTES: usize = 1024;

/// The longest prefix of subjects and buckets accepted.
pub const MAX_PREFIX_BYTES: usize = 64;

/// The longest worker, connection or tool name accepted.
pub const MAX_NAME_BYTES: usize = 256;

/// Refuses a name longer than `max_bytes`.
pub(crate) fn check_name(
    what: &'static str,
    name: &str,
    max_bytes: usize,
) -> Result<(), ClusterError> {
    if name.len() > max_bytes {
        return Err(ClusterError::NameTooLong {
            what,
            bytes: name.len(),
            max_bytes,
        });
    }
    Ok(())
}

/// The subject token and KV key of a session id: ASCII letters, digits, `-`
/// and `_` are kept; every other byte of the UTF-8 id becomes `=` and two
/// upper-case hex digits (`call 42` → `call=2042`, `a.b` → `a=2Eb`).
///
/// An empty id is [`ClusterError::InvalidName`]; a key over
/// [`MAX_SESSION_KEY_BYTES`] is [`ClusterError::NameTooLong`].
pub fn session_key(id: &SessionId) -> Result<String, ClusterError> {
    let s = id.as_str();
    if s.is_empty() {
        return Err(ClusterError::InvalidName(String::new()));
    }
    let escaped = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let len: usize = s.bytes().map(|b| if escaped(b) { 1 } else { 3 }).sum();
    if len > MAX_SESSION_KEY_BYTES {
        return Err(ClusterError::NameTooLong {
            what: "session key",
            bytes: len,
            max_bytes: MAX_SESSION_KEY_BYTES,
        });
    }
    let mut key = String::with_capacity(len);
    for b in s.bytes() {
        if escaped(b) {
            key.push(b as char);
        } else {
            key.push_str(&format!("={b:02X}"));
        }
    }
    Ok(key)
}

/// The session id of a key made by [`session_key`].
pub fn session_id_from_key(key: &str) -> Option<SessionId> {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = key.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(SessionId::from)
}

/// Names of the subjects and buckets under one prefix. Keys passed in come
/// from [`session_key`] (bounded), so every subject made here is bounded.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Result<Self, ClusterError> {
        let ok = !prefix.is_empty()
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(ClusterError::InvalidName(prefix.to_string()));
        }
        check_name("prefix", prefix, MAX_PREFIX_BYTES)?;
        Ok(Self {
            prefix: prefix.to_string(),
        })
    }

    pub(crate) fn place(&self) -> String {
        format!("{}.place", self.prefix)
    }

    pub(crate) fn queue_group(&self) -> String {
        format!("{}-workers", self.prefix)
    }

    /// The input subject of one kind: `{prefix}.session.{key}.in.{kind}`.
    pub(crate) fn inputs(&self, key: &str, kind: InputKind) -> String {
        format!("{}.session.{key}.in.{}", self.prefix, kind.as_str())
    }

    /// Every input subject of a session (the owner's subscription).
    pub(crate) fn all_inputs(&self, key: &str) -> String {
        format!("{}.session.{key}.in.*", self.prefix)
    }

    /// The events subject of one class: `{prefix}.session.{key}.events.{class}`.
    pub(crate) fn events(&self, key: &str, class: EventClass) -> String {
        format!("{}.session.{key}.events.{}", self.prefix, class.as_str())
    }

    /// Every events subject of a session (today's full stream, in order).
    pub(crate) fn all_events(&self, key: &str) -> String {
        format!("{}.session.{key}.events.*", self.prefix)
    }

    pub(crate) fn lease_bucket(&self) -> String {
        format!("{}_leases", self.prefix)
    }

    pub(crate) fn checkpoint_bucket(&self) -> String {
        format!("{}_checkpoints", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys_are_subject_tokens_and_round_trip() {
        for id in ["call-42", "a.b", "call 42", "é*>", "x=y", "A_b-9"] {
            let key = session_key(&SessionId::new(id)).unwrap();
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b)),
                "{key}"
            );
            assert_eq!(session_id_from_key(&key).unwrap().as_str(), id);
        }
        assert_eq!(
            session_key(&SessionId::new("call 42")).unwrap(),
            "call=2042"
        );
        assert!(session_key(&SessionId::new("")).is_err());
        assert!(session_id_from_key("bad=Z").is_none());
        assert!(Names::new("colloquy-test_1").is_ok());
        assert!(Names::new("a.b").is_err());
    }

    #[test]
    fn names_are_bounded() {
        let at_max = "a".repeat(MAX_SESSION_KEY_BYTES);
        assert_eq!(
            session_key(&SessionId::new(at_max.as_str())).unwrap(),
            at_max
        );
        let over = "a".repeat(MAX_SESSION_KEY_BYTES + 1);
        assert!(matches!(
            session_key(&SessionId::new(over)),
            Err(ClusterError::NameTooLong { what: "session key", bytes, .. }) if bytes == MAX_SESSION_KEY_BYTES + 1
        ));
        // Escaped bytes count three times.
        let escaped = ".".repeat(MAX_SESSION_KEY_BYTES / 3 + 1);
        assert!(session_key(&SessionId::new(escaped)).is_err());
        assert!(matches!(
            Names::new(&"p".repeat(MAX_PREFIX_BYTES + 1)),
            Err(ClusterError::NameTooLong { what: "prefix", .. })
        ));
        assert!(check_name("name", &"n".repeat(MAX_NAME_BYTES), MAX_NAME_BYTES).is_ok());
    }
}
