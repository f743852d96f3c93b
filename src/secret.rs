//! Credentials that never leak.
//!
//! API keys and AD tokens travel through configuration structs that users print,
//! log and put in error reports. [`Secret`] makes that safe: its `Debug` and
//! `Display` show a fixed placeholder, and the only way to read the value is the
//! explicit [`Secret::expose`]. What providers say back, and the URLs colloquy
//! shows, go through one scrubber ([`scrub`], [`display_url`]) so an echoed key
//! never reaches an error, an event, the wire or a log.

use std::fmt;

mod scrub;

pub use scrub::{display_url, scrub};

/// A string that is never shown by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Reads the secret value, for building an HTTP header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads an environment variable as a secret; empty values count as absent.
    pub fn from_env(var: &str) -> Option<Self> {
        std::env::var(var).ok().filter(|v| !v.is_empty()).map(Self)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("sk-very-secret");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(s.expose(), "sk-very-secret");
    }
}
