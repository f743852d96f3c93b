//! Who may call the voice server and what a call may cost: the flags and
//! environment variables behind `CallServices::with_twilio_auth`,
//! `with_browser_access` and `with_limits`. Secrets (the Twilio auth token,
//! the browser token key) come from a file or the environment, never from
//! the command line, where `ps` shows them.

use std::path::PathBuf;
use std::time::Duration;

use colloquy::Secret;
use colloquy_actors::calls::twilio::TwilioAuth;
use colloquy_actors::calls::{AllowedOrigins, BrowserAccess, CallLimits, CallServices};

/// Call access and limits.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Call access and limits")]
pub struct AccessFlags {
    /// A file holding the Twilio auth token: /twilio then takes only upgrades
    /// with a valid X-Twilio-Signature (else 403) [env: TWILIO_AUTH_TOKEN_FILE;
    /// or the token itself in TWILIO_AUTH_TOKEN]
    #[arg(long, value_name = "FILE")]
    pub twilio_auth_token_file: Option<PathBuf>,
    /// The Twilio account: a stream whose `start` names another is closed
    /// [env: TWILIO_ACCOUNT_SID]
    #[arg(long, value_name = "SID")]
    pub twilio_account_sid: Option<String>,
    /// The public URL Twilio connects to, up to the routes (wss://voice.example.com),
    /// when a proxy stands in front; default wss:// and the request's Host
    /// [env: COLLOQUY_PUBLIC_URL]
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// A file holding the key browser call tokens are signed with (share it
    /// between servers behind one balancer); default a random key per run
    /// [env: COLLOQUY_BROWSER_KEY_FILE; or the key in COLLOQUY_BROWSER_KEY]
    #[arg(long, value_name = "FILE")]
    pub browser_key_file: Option<PathBuf>,
    /// How long the page's call token is valid, in seconds
    #[arg(long, value_name = "S", default_value_t = 300)]
    pub browser_token_ttl: u64,
    /// An origin allowed to open browser calls (repeat for more); default the
    /// server's own [env: COLLOQUY_ALLOWED_ORIGINS, comma-separated]
    #[arg(long, value_name = "ORIGIN")]
    pub allowed_origin: Vec<String>,
    /// Calls open at once; one more is answered 503
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_calls: usize,
    /// The largest WebSocket message, in bytes (larger: close 1009)
    #[arg(long, value_name = "BYTES", default_value_t = 65_536)]
    pub max_message_bytes: usize,
    /// Messages per second a call may send (more: close 1008)
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub max_messages_per_second: u32,
    /// Seconds without audio after which a call is closed
    #[arg(long, value_name = "S", default_value_t = 30)]
    pub idle_timeout: u64,
    /// Seconds after which a call is closed
    #[arg(long, value_name = "S", default_value_t = 3600)]
    pub max_call_duration: u64,
}

fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty())
}

/// A secret from `flag`'s file, else the file named by `file_var`, else the
/// value of `value_var`.
fn secret(
    flag: Option<&PathBuf>,
    file_var: &str,
    value_var: &str,
) -> Result<Option<Secret>, String> {
    let file = flag.cloned().or_else(|| env(file_var).map(PathBuf::from));
    match file {
        Some(path) => Secret::from_file(&path)
            .map(Some)
            .map_err(|e| e.to_string()),
        None => Ok(Secret::from_env(value_var)),
    }
}

impl AccessFlags {
    /// `services` with these rules; a line for stderr saying who may call.
    pub fn apply(&self, services: CallServices) -> Result<(CallServices, String), String> {
        let mut summary = Vec::new();
        let mut services = services;
        let public_url = self
            .public_url
            .clone()
            .or_else(|| env("COLLOQUY_PUBLIC_URL"));
        let account = self
            .twilio_account_sid
            .clone()
            .or_else(|| env("TWILIO_ACCOUNT_SID"));
        match secret(
            self.twilio_auth_token_file.as_ref(),
            "TWILIO_AUTH_TOKEN_FILE",
            "TWILIO_AUTH_TOKEN",
        )? {
            Some(token) => {
                let mut auth = TwilioAuth::new(token);
                if let Some(url) = &public_url {
                    auth = auth.with_public_url(url.clone());
                }
                if let Some(sid) = &account {
                    auth = auth.with_account_sid(sid.clone());
                }
                services = services.with_twilio_auth(auth);
                summary.push("/twilio signed".to_string());
            }
            None => {
                if account.is_some() || public_url.is_some() {
                    return Err(
                        "--twilio-account-sid and --public-url need the Twilio auth token (--twilio-auth-token-file, TWILIO_AUTH_TOKEN)".into(),
                    );
                }
                summary.push("/twilio UNSIGNED (no Twilio auth token)".to_string());
            }
        }
        let mut access = match secret(
            self.browser_key_file.as_ref(),
            "COLLOQUY_BROWSER_KEY_FILE",
            "COLLOQUY_BROWSER_KEY",
        )? {
            Some(key) => BrowserAccess::new(key),
            None => BrowserAccess::default(),
        }
        .with_ttl(Duration::from_secs(self.browser_token_ttl));
        let mut origins = self.allowed_origin.clone();
        if origins.is_empty()
            && let Some(list) = env("COLLOQUY_ALLOWED_ORIGINS")
        {
            origins = list
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(String::from)
                .collect();
        }
        if origins.is_empty() {
            summary.push("/ws from its own origin".to_string());
        } else {
            summary.push(format!("/ws from {}", origins.join(", ")));
            access = access.with_origins(AllowedOrigins::List(origins));
        }
        let mut limits = CallLimits::default();
        limits.max_calls = self.max_calls;
        limits.max_message_bytes = self.max_message_bytes;
        limits.max_messages_per_second = self.max_messages_per_second;
        limits.idle_timeout = Duration::from_secs(self.idle_timeout);
        limits.max_duration = Duration::from_secs(self.max_call_duration);
        summary.push(format!("at most {} calls", self.max_calls));
        Ok((
            services.with_browser_access(access).with_limits(limits),
            summary.join("; "),
        ))
    }
}
