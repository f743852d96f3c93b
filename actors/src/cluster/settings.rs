//! One rule for every program that connects (`worker`, `loadgen --nats`):
//! how command-line paths and the environment become [`NatsOptions`].
//!
//! Secrets never have to be on a command line, where `ps` shows them: the
//! command line names files (`--nats-password-file`, `--nats-nkey-file`, …),
//! and the environment gives either files or values. Having the rule here,
//! not in each program, keeps the flags, the variables and the errors the
//! same everywhere, and makes it testable without a process environment.

use std::path::PathBuf;

use colloquy::Secret;

use super::ClusterError;
use super::connect::{NatsCredentials, NatsOptions};

/// Environment variables read by [`NatsSettings::resolve`] (the path ones
/// as the `nats` CLI names them).
pub mod env {
    /// The user name.
    pub const USER: &str = "NATS_USER";
    /// The password itself.
    pub const PASSWORD: &str = "NATS_PASSWORD";
    /// A file holding the password.
    pub const PASSWORD_FILE: &str = "NATS_PASSWORD_FILE";
    /// The token itself.
    pub const TOKEN: &str = "NATS_TOKEN";
    /// A file holding the token.
    pub const TOKEN_FILE: &str = "NATS_TOKEN_FILE";
    /// A file holding an NKey user seed.
    pub const NKEY: &str = "NATS_NKEY";
    /// The NKey user seed itself.
    pub const NKEY_SEED: &str = "NATS_NKEY_SEED";
    /// A `.creds` file.
    pub const CREDS: &str = "NATS_CREDS";
    /// A PEM file of trusted CA certificates.
    pub const CA: &str = "NATS_CA";
    /// The client certificate (PEM).
    pub const CERT: &str = "NATS_CERT";
    /// The client certificate's key (PEM).
    pub const KEY: &str = "NATS_KEY";
    /// `1` or `true`: refuse connections without TLS.
    pub const TLS_REQUIRED: &str = "NATS_TLS_REQUIRED";
}

/// What a command line says about the NATS login: names and paths only.
/// [`NatsSettings::resolve`] fills the gaps from the environment and reads
/// the files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsSettings {
    /// The user (`--nats-user`); its password from a file or `NATS_PASSWORD`.
    pub user: Option<String>,
    /// A file holding the user's password (`--nats-password-file`).
    pub password_file: Option<PathBuf>,
    /// A file holding a token (`--nats-token-file`).
    pub token_file: Option<PathBuf>,
    /// A file holding an NKey user seed (`--nats-nkey-file`).
    pub nkey_file: Option<PathBuf>,
    /// A `.creds` file (`--nats-creds`).
    pub creds_file: Option<PathBuf>,
    /// Trusted CA certificates, PEM (`--nats-ca`).
    pub ca: Option<PathBuf>,
    /// The client certificate, PEM (`--nats-cert`).
    pub cert: Option<PathBuf>,
    /// The client certificate's key, PEM (`--nats-key`).
    pub key: Option<PathBuf>,
    /// Refuse connections without TLS (`--nats-tls-required`).
    pub tls_required: bool,
}

impl NatsSettings {
    /// [`NatsSettings::resolve`] with the process environment.
    pub fn resolve_from_env(&self) -> Result<NatsOptions, ClusterError> {
        self.resolve(|name| std::env::var(name).ok())
    }

    /// The options these settings and `env` (a variable's value by name;
    /// empty counts as unset) describe.
    ///
    /// The login comes from the settings when they name one (a user, a
    /// password, token, NKey or creds file), else from the environment
    /// ([`env`]): a user with `NATS_PASSWORD` or `NATS_PASSWORD_FILE`;
    /// `NATS_TOKEN` or `NATS_TOKEN_FILE`; `NATS_NKEY` (a seed file) or
    /// `NATS_NKEY_SEED`; `NATS_CREDS`. More than one login, a user without a
    /// password or a password without a user is an error, and so is a file
    /// that cannot be read. Each TLS path falls back to its variable
    /// (`NATS_CA`, `NATS_CERT`, `NATS_KEY`; `NATS_TLS_REQUIRED=1`).
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<NatsOptions, ClusterError> {
        let var = |name: &str| env(name).filter(|v| !v.is_empty());
        let path = |name: &str| var(name).map(PathBuf::from);
        let from_flags = self.user.is_some()
            || self.password_file.is_some()
            || self.token_file.is_some()
            || self.nkey_file.is_some()
            || self.creds_file.is_some();
        let mut found: Vec<(&'static str, NatsCredentials)> = Vec::new();
        if from_flags {
            let password = self
                .password_file
                .as_ref()
                .map(|p| secret_file(p, "password"))
                .transpose()?
                .or_else(|| var(env::PASSWORD).map(Secret::new));
            user_password(&mut found, self.user.clone(), password, "--nats-user")?;
            if let Some(p) = &self.token_file {
                found.push(("token", NatsCredentials::Token(secret_file(p, "token")?)));
            }
            if let Some(p) = &self.nkey_file {
                let seed = secret_file(p, "NKey seed")?;
                found.push(("NKey", NatsCredentials::NKeySeed(seed)));
            }
            if let Some(p) = &self.creds_file {
                found.push(("creds file", NatsCredentials::CredsFile(p.clone())));
            }
        } else {
            let password = match (var(env::PASSWORD_FILE), var(env::PASSWORD)) {
                (Some(_), Some(_)) => return Err(both(env::PASSWORD_FILE, env::PASSWORD)),
                (Some(p), None) => Some(secret_file(&PathBuf::from(p), "password")?),
                (None, p) => p.map(Secret::new),
            };
            user_password(&mut found, var(env::USER), password, env::USER)?;
            match (var(env::TOKEN_FILE), var(env::TOKEN)) {
                (Some(_), Some(_)) => return Err(both(env::TOKEN_FILE, env::TOKEN)),
                (Some(p), None) => found.push((
                    "token",
                    NatsCredentials::Token(secret_file(&PathBuf::from(p), "token")?),
                )),
                (None, Some(t)) => found.push(("token", NatsCredentials::Token(Secret::new(t)))),
                (None, None) => {}
            }
            match (var(env::NKEY), var(env::NKEY_SEED)) {
                (Some(_), Some(_)) => return Err(both(env::NKEY, env::NKEY_SEED)),
                (Some(p), None) => found.push((
                    "NKey",
                    NatsCredentials::NKeySeed(secret_file(&PathBuf::from(p), "NKey seed")?),
                )),
                (None, Some(s)) => found.push(("NKey", NatsCredentials::NKeySeed(Secret::new(s)))),
                (None, None) => {}
            }
            if let Some(p) = path(env::CREDS) {
                found.push(("creds file", NatsCredentials::CredsFile(p)));
            }
        }
        if found.len() > 1 {
            let kinds: Vec<&str> = found.iter().map(|(k, _)| *k).collect();
            return Err(ClusterError::Credentials(format!(
                "more than one NATS login given ({}): give one",
                kinds.join(", ")
            )));
        }
        let mut options = NatsOptions::new();
        options.credentials = found.pop().map(|(_, c)| c);
        options.tls.ca = self.ca.clone().or_else(|| path(env::CA));
        options.tls.client_cert = self.cert.clone().or_else(|| path(env::CERT));
        options.tls.client_key = self.key.clone().or_else(|| path(env::KEY));
        options.tls.required = self.tls_required
            || var(env::TLS_REQUIRED).is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        Ok(options)
    }
}

/// A user and a password make a login; one without the other is an error.
fn user_password(
    found: &mut Vec<(&'static str, NatsCredentials)>,
    user: Option<String>,
    password: Option<Secret>,
    user_source: &str,
) -> Result<(), ClusterError> {
    match (user, password) {
        (Some(user), Some(password)) => {
            found.push((
                "user and password",
                NatsCredentials::UserPassword { user, password },
            ));
            Ok(())
        }
        (Some(user), None) => Err(ClusterError::Credentials(format!(
            "NATS user {user:?} ({user_source}) has no password: give --nats-password-file, \
             NATS_PASSWORD_FILE or NATS_PASSWORD"
        ))),
        (None, Some(_)) => Err(ClusterError::Credentials(
            "a NATS password without a user: give --nats-user or NATS_USER".into(),
        )),
        (None, None) => Ok(()),
    }
}

fn secret_file(path: &std::path::Path, what: &str) -> Result<Secret, ClusterError> {
    Secret::from_file(path).map_err(|e| ClusterError::Credentials(format!("the {what} file: {e}")))
}

fn both(a: &str, b: &str) -> ClusterError {
    ClusterError::Credentials(format!("both {a} and {b} are set: give one"))
}

#[cfg(test)]
#[path = "settings_tests.rs"]
mod tests;
