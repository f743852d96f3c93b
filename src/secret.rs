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

    /// Reads a secret from a file (a password file, a token file, an NKey
    /// seed file): the whole file less surrounding whitespace, so the newline
    /// an editor or `echo` adds is not part of it. An empty file is an error
    /// (`InvalidData`). Errors name the path, never the contents.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> std::io::Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
        })?;
        let value = text.trim();
        if value.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is empty", path.display()),
            ));
        }
        Ok(Self(value.to_string()))
    }

    /// Reads an environment variable as a secret, less surrounding
    /// whitespace (as [`from_file`](Self::from_file): `KEY=$(cat key.txt)`
    /// or a line pasted with its newline gives the same key as the file);
    /// empty or blank values count as absent.
    pub fn from_env(var: &str) -> Option<Self> {
        Self::from_env_value(std::env::var(var).ok())
    }

    /// The secret an environment variable's value gives.
    fn from_env_value(value: Option<String>) -> Option<Self> {
        let value = value?;
        let trimmed = value.trim();
        (!trimmed.is_empty()).then(|| Self(trimmed.to_string()))
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

    /// The same key from the environment as from a file: a value with a
    /// newline (`export KEY="$(cat file)"` keeps none, a pasted line or a
    /// Kubernetes secret made with `echo` does) must not sign or log in with
    /// a different key than the file would.
    #[test]
    fn from_env_trims_like_from_file() {
        let read = |v: &str| Secret::from_env_value(Some(v.to_string()));
        assert_eq!(read("  hunter2\n").unwrap().expose(), "hunter2");
        assert_eq!(read("hunter2").unwrap().expose(), "hunter2");
        assert!(read("").is_none());
        assert!(read(" \n").is_none());
        assert!(Secret::from_env_value(None).is_none());
    }

    #[test]
    fn from_file_trims_and_refuses_empty_files() {
        let dir = std::env::temp_dir().join(format!("colloquy-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "  hunter2\n").unwrap();
        assert_eq!(Secret::from_file(&file).unwrap().expose(), "hunter2");
        std::fs::write(&file, "\n").unwrap();
        let err = Secret::from_file(&file).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        let missing = Secret::from_file(dir.join("missing")).unwrap_err();
        assert!(missing.to_string().contains("missing"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
