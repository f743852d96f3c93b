//! The NATS login flags of the cluster examples (`worker`, `loadgen --nats`),
//! included with `#[path]`: one set of names and one rule
//! ([`NatsSettings::resolve`](colloquy_actors::cluster::NatsSettings::resolve))
//! for every program that connects.
//!
//! Secrets never have to be on the command line, where `ps` shows them:
//! flags name files, and the environment gives files or values.
#![allow(dead_code)] // each example uses a different subset

use std::path::PathBuf;

/// How to log in to NATS and whom to trust.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "NATS login and TLS")]
pub struct NatsFlags {
    /// The NATS user; its password from --nats-password-file, NATS_PASSWORD_FILE
    /// or NATS_PASSWORD [env: NATS_USER]
    #[arg(long, value_name = "USER")]
    pub nats_user: Option<String>,
    /// A file holding the NATS user's password [env: NATS_PASSWORD_FILE; or the
    /// password itself in NATS_PASSWORD]
    #[arg(long, value_name = "FILE")]
    pub nats_password_file: Option<PathBuf>,
    /// A file holding a NATS token [env: NATS_TOKEN_FILE; or NATS_TOKEN]
    #[arg(long, value_name = "FILE")]
    pub nats_token_file: Option<PathBuf>,
    /// A file holding an NKey user seed (SU…) [env: NATS_NKEY; or the seed
    /// itself in NATS_NKEY_SEED]
    #[arg(long, value_name = "FILE")]
    pub nats_nkey_file: Option<PathBuf>,
    /// A .creds file: a user JWT and its NKey seed [env: NATS_CREDS]
    #[arg(long, value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// PEM CA certificates that signed the server's, instead of the system's
    /// [env: NATS_CA]
    #[arg(long, value_name = "FILE")]
    pub nats_ca: Option<PathBuf>,
    /// A client certificate (PEM), for servers that verify clients [env: NATS_CERT]
    #[arg(long, value_name = "FILE", requires = "nats_key")]
    pub nats_cert: Option<PathBuf>,
    /// The client certificate's key (PEM) [env: NATS_KEY]
    #[arg(long, value_name = "FILE", requires = "nats_cert")]
    pub nats_key: Option<PathBuf>,
    /// Refuse to connect without TLS [env: NATS_TLS_REQUIRED=1]
    #[arg(long)]
    pub nats_tls_required: bool,
}

#[cfg(feature = "nats")]
impl NatsFlags {
    /// The login these flags and the environment describe.
    pub fn options(
        &self,
    ) -> Result<colloquy_actors::cluster::NatsOptions, colloquy_actors::cluster::ClusterError> {
        let mut settings = colloquy_actors::cluster::NatsSettings::default();
        settings.user = self.nats_user.clone();
        settings.password_file = self.nats_password_file.clone();
        settings.token_file = self.nats_token_file.clone();
        settings.nkey_file = self.nats_nkey_file.clone();
        settings.creds_file = self.nats_creds.clone();
        settings.ca = self.nats_ca.clone();
        settings.cert = self.nats_cert.clone();
        settings.key = self.nats_key.clone();
        settings.tls_required = self.nats_tls_required;
        settings.resolve_from_env()
    }
}
