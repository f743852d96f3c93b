//! What the examples share on their command lines (included by each with
//! `#[path = "common/mod.rs"] mod common;`): the provider flags and the one
//! rule that turns them and the environment into a provider, the
//! provider-chain flags, and value parsers with the API's ranges.
//!
//! Error style, the same in every example: `error: …` on stderr; exit code 2
//! for a usage error (an unknown flag, a bad or out-of-range value — clap's own
//! errors and [`usage_error`]), 1 for a failure at run time ([`fail`]).
#![allow(dead_code)] // each example uses a different subset

mod key_file;

pub use key_file::read_key_file;

use std::fmt::Display;
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{ArgMatches, CommandFactory};
use colloquy::Secret;
use colloquy::llm::{
    AzureConfig, AzureSettings, ClientConfig, Hedging, LlmError, OpenAiConfig, Provider,
    ProviderChain, ProviderSpec,
};

// ---------------------------------------------------------------- errors

/// Exits with a usage error (code 2): `error: {message}`, the usage line and a
/// pointer to `--help`, on stderr.
pub fn usage_error<C: CommandFactory>(message: impl Display) -> ! {
    C::command()
        .error(ErrorKind::ValueValidation, message)
        .exit()
}

/// A failure at run time: `error: {message}` on stderr, exit code 1.
pub fn fail(message: impl Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

// ---------------------------------------------------------------- values

/// A base URL: absolute `http` or `https` with a host. The error names the
/// value: `invalid base URL "notaurl": relative URL without a base`.
#[derive(Clone, Copy, Debug, Default)]
pub struct BaseUrl;

/// Checks one base URL; the message is the whole error.
pub fn check_base_url(value: &str) -> Result<(), String> {
    let why = match reqwest::Url::parse(value) {
        Err(e) => e.to_string(),
        Ok(url) if !matches!(url.scheme(), "http" | "https") => {
            format!("the scheme must be http or https, not {:?}", url.scheme())
        }
        Ok(url) if url.host_str().is_none_or(str::is_empty) => "no host".to_string(),
        Ok(_) => return Ok(()),
    };
    Err(format!("invalid base URL {value:?}: {why}"))
}

impl TypedValueParser for BaseUrl {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let value = value.to_str().ok_or_else(|| {
            clap::Error::raw(ErrorKind::InvalidUtf8, "a base URL must be UTF-8\n").with_cmd(cmd)
        })?;
        check_base_url(value)
            .map(|()| value.to_string())
            .map_err(|m| clap::Error::raw(ErrorKind::ValueValidation, m + "\n").with_cmd(cmd))
    }
}

/// A number in `lo..=hi` (the API's range for the parameter).
fn ranged(value: &str, lo: f64, hi: f64) -> Result<f64, String> {
    let v: f64 = value
        .parse()
        .map_err(|_| format!("not a number (between {lo} and {hi})"))?;
    if !(lo..=hi).contains(&v) {
        return Err(format!("must be between {lo} and {hi}"));
    }
    Ok(v)
}

/// `temperature`: 0 to 2.
pub fn temperature(value: &str) -> Result<f64, String> {
    ranged(value, 0.0, 2.0)
}

/// `top_p`, and fractions of requests: 0 to 1.
pub fn fraction(value: &str) -> Result<f64, String> {
    ranged(value, 0.0, 1.0)
}

/// `frequency_penalty` and `presence_penalty`: -2 to 2.
pub fn penalty(value: &str) -> Result<f64, String> {
    ranged(value, -2.0, 2.0)
}

// ---------------------------------------------------------------- provider

/// The provider flags, shared by the examples that talk to a model.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ProviderFlags {
    /// An OpenAI-compatible server, up to /v1 (see above for its key)
    #[arg(long, value_name = "URL", value_parser = BaseUrl)]
    pub base_url: Option<String>,
    /// The provider's key (OpenAI's when no --base-url is given); visible to
    /// every user of the machine in `ps`: prefer --api-key-file or
    /// OPENAI_API_KEY
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// A file holding the provider's key (read once, whitespace trimmed)
    #[arg(long, value_name = "PATH", conflicts_with = "api_key")]
    pub api_key_file: Option<std::path::PathBuf>,
    /// Azure OpenAI endpoint, https://<resource>.openai.azure.com (else
    /// AZURE_OPENAI_ENDPOINT); its key: --api-key, else AZURE_OPENAI_API_KEY or
    /// AZURE_OPENAI_AD_TOKEN
    #[arg(long, value_name = "URL", value_parser = BaseUrl)]
    pub azure_endpoint: Option<String>,
    /// Azure deployment (else AZURE_OPENAI_DEPLOYMENT, else the model)
    #[arg(long, value_name = "NAME")]
    pub azure_deployment: Option<String>,
    /// Azure api-version (else OPENAI_API_VERSION, else 2024-10-21)
    #[arg(long, value_name = "V")]
    pub api_version: Option<String>,
}

/// Whether flags left unset fall back to the environment's provider variables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Env {
    /// OPENAI_API_KEY, then AZURE_OPENAI_ENDPOINT (chat, voice_agent, worker).
    Read,
    /// Only the flags (loadgen: without flags, its own local server).
    Ignore,
}

/// A provider and how to name it to the user.
pub struct Resolved {
    pub provider: Provider,
    /// `gpt-4o-mini at http://…`, `OpenAI gpt-4o-mini`, `Azure OpenAI deployment d`.
    pub label: String,
}

impl ProviderFlags {
    /// The provider the flags (and, with [`Env::Read`], the environment) name;
    /// `None` when nothing names one (each example has its default).
    ///
    /// 1. Azure OpenAI with `--azure-endpoint` or `--azure-deployment`, or
    ///    when only the environment decides and `OPENAI_API_KEY` is unset but
    ///    `AZURE_OPENAI_ENDPOINT` is set ([`AzureConfig::resolve`]).
    /// 2. `--base-url`: that OpenAI-compatible server, with `--api-key`, else
    ///    `OPENAI_API_KEY` when read, else no key.
    /// 3. `--api-key` alone: OpenAI with that key.
    /// 4. `OPENAI_API_KEY` (when read): OpenAI ([`OpenAiConfig::from_env`]).
    pub fn resolve(&self, model: &str, env: Env) -> Result<Option<Resolved>, LlmError> {
        let key_flag = match &self.api_key_file {
            Some(path) => Some(read_key_file(path).unwrap_or_else(|e| {
                eprintln!("error: {e}");
                std::process::exit(2)
            })),
            None => self.api_key.clone().map(Secret::new),
        };
        let read = env == Env::Read;
        let set = |var: &str| std::env::var(var).is_ok_and(|v| !v.is_empty());
        let azure = self.azure_endpoint.is_some()
            || self.azure_deployment.is_some()
            || (read
                && self.base_url.is_none()
                && key_flag.is_none()
                && !set("OPENAI_API_KEY")
                && set("AZURE_OPENAI_ENDPOINT"));
        if azure {
            let c = AzureConfig::resolve(
                model,
                AzureSettings {
                    endpoint: self.azure_endpoint.clone(),
                    deployment: self.azure_deployment.clone(),
                    api_version: self.api_version.clone(),
                    api_key: key_flag,
                    ..Default::default()
                },
            )?;
            let label = format!("Azure OpenAI deployment {}", c.deployment);
            return Ok(Some(Resolved {
                provider: c.into(),
                label,
            }));
        }
        let (config, label) = match (&self.base_url, key_flag) {
            (Some(url), key) => {
                let mut c = OpenAiConfig::compatible(url.clone());
                c.api_key =
                    key.or_else(|| read.then(|| Secret::from_env("OPENAI_API_KEY")).flatten());
                (c, format!("{model} at {url}"))
            }
            (None, Some(key)) => (OpenAiConfig::new(key), format!("OpenAI {model}")),
            (None, None) if read && set("OPENAI_API_KEY") => {
                (OpenAiConfig::from_env()?, format!("OpenAI {model}"))
            }
            (None, None) => return Ok(None),
        };
        Ok(Some(Resolved {
            provider: config.into(),
            label,
        }))
    }
}

// ---------------------------------------------------------------- provider chain

/// The provider-resilience flags of `chat` and `loadgen`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ChainFlags {
    /// A fallback provider, an OpenAI-compatible server (repeatable, tried in
    /// order; makes a provider chain)
    #[arg(long, value_name = "URL", value_parser = BaseUrl)]
    pub fallback_base_url: Vec<String>,
    /// The model of the last --fallback-base-url named before it (default: the
    /// same model)
    #[arg(long, value_name = "M")]
    pub fallback_model: Vec<String>,
    /// The key of the last --fallback-base-url named before it (default: none,
    /// never the primary's); visible in `ps`: prefer --fallback-api-key-file
    #[arg(long, value_name = "KEY")]
    pub fallback_api_key: Vec<String>,
    /// A file holding the key of the last --fallback-base-url named before it
    #[arg(long, value_name = "PATH")]
    pub fallback_api_key_file: Vec<std::path::PathBuf>,
    /// Deadline to each provider's first useful output (milliseconds)
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub ttft_timeout_ms: Option<u64>,
    /// Deadline on the gaps between a provider's useful outputs (milliseconds)
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub gap_timeout_ms: Option<u64>,
    /// Start the next provider when the current one has given no output after
    /// this long (milliseconds)
    #[arg(long, value_name = "MS")]
    pub hedge_after_ms: Option<u64>,
}

/// A fallback provider named on the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fallback {
    pub base_url: String,
    pub model: Option<String>,
    pub api_key: Option<Secret>,
}

impl ChainFlags {
    /// Whether the request goes through a provider chain.
    pub fn enabled(&self) -> bool {
        !self.fallback_base_url.is_empty()
            || self.ttft_timeout_ms.is_some()
            || self.gap_timeout_ms.is_some()
            || self.hedge_after_ms.is_some()
    }

    /// The fallbacks, each `--fallback-model`/`--fallback-api-key` given to the
    /// last `--fallback-base-url` before it on the command line; a usage error
    /// when there is none.
    pub fn fallbacks<C: CommandFactory>(&self, matches: &ArgMatches) -> Vec<Fallback> {
        let at = |id: &str| -> Vec<usize> {
            matches
                .indices_of(id)
                .map(|i| i.collect())
                .unwrap_or_default()
        };
        let urls = at("fallback_base_url");
        let mut out: Vec<Fallback> = self
            .fallback_base_url
            .iter()
            .map(|u| Fallback {
                base_url: u.clone(),
                ..Fallback::default()
            })
            .collect();
        let files: Vec<String> = self
            .fallback_api_key_file
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        for (id, flag, values) in [
            ("fallback_model", "--fallback-model", &self.fallback_model),
            (
                "fallback_api_key",
                "--fallback-api-key",
                &self.fallback_api_key,
            ),
            ("fallback_api_key_file", "--fallback-api-key-file", &files),
        ] {
            for (index, value) in at(id).into_iter().zip(values) {
                let Some(owner) = urls.iter().rposition(|&u| u < index) else {
                    usage_error::<C>(format!(
                        "{flag} applies to a --fallback-base-url named before it"
                    ));
                };
                let f = &mut out[owner];
                match id {
                    "fallback_model" => f.model = Some(value.clone()),
                    "fallback_api_key" => f.api_key = Some(Secret::new(value.as_str())),
                    _ => {
                        let key =
                            read_key_file(value.as_ref()).unwrap_or_else(|e| usage_error::<C>(e));
                        f.api_key = Some(key);
                    }
                }
            }
        }
        out
    }

    /// A chain: `primary` first, then `fallbacks`, every provider with
    /// `config` and these deadlines; a fallback gets no key unless given one
    /// (never the primary's: it may be another host).
    pub fn chain(
        &self,
        primary: Provider,
        fallbacks: &[Fallback],
        mut config: ClientConfig,
    ) -> ProviderChain {
        // A flag overrides the shipped deadline; no flag keeps it (never none).
        if let Some(ms) = self.ttft_timeout_ms {
            config.first_token_timeout = Some(Duration::from_millis(ms));
        }
        if let Some(ms) = self.gap_timeout_ms {
            config.output_gap_timeout = Some(Duration::from_millis(ms));
        }
        let mut chain = ProviderChain::new(ProviderSpec::new(primary).with_config(config.clone()));
        for f in fallbacks {
            let mut c = OpenAiConfig::compatible(f.base_url.clone());
            c.api_key = f.api_key.clone();
            let mut spec = ProviderSpec::new(c).with_config(config.clone());
            if let Some(m) = &f.model {
                spec = spec.with_model(m.clone());
            }
            chain = chain.with_fallback(spec);
        }
        if let Some(ms) = self.hedge_after_ms {
            chain = chain.with_hedging(Hedging::After(Duration::from_millis(ms)));
        }
        chain
    }
}

/// How a failed turn's text (`TurnEnd::Failed`: `"{kind}: {message}"`, as
/// the LLM actor writes it) splits: the error's kind, if it names one, and
/// the message.
pub fn split_failure(text: &str) -> (Option<&str>, &str) {
    match text.split_once(": ") {
        Some((kind, message))
            if !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') =>
        {
            (Some(kind), message)
        }
        _ => (None, text),
    }
}

/// A failure's kind for counting: the error's kind, with the status for HTTP
/// errors (`http_401`, `connection`, `first_token_timeout`…; `failed` when the
/// text names none).
pub fn failure_kind(text: &str) -> String {
    match split_failure(text) {
        (Some("http"), message) => message
            .strip_prefix("HTTP ")
            .and_then(|rest| rest.get(..3))
            .filter(|code| code.bytes().all(|b| b.is_ascii_digit()))
            .map_or_else(|| "http".to_string(), |code| format!("http_{code}")),
        (Some(kind), _) => kind.to_string(),
        (None, _) => "failed".to_string(),
    }
}

/// Parses the command line into `C`, keeping the matches (for the order of
/// repeated flags); clap's errors exit 2, `--help` exits 0. A value that looks
/// like a negative number is a value (`--frequency-penalty -1`), then checked
/// like any other (`--sessions -1` is an invalid value, not an unknown flag).
pub fn parse<C: clap::Parser>() -> (C, ArgMatches) {
    let matches = C::command()
        .mut_args(|a| {
            if a.get_action().takes_values() {
                a.allow_negative_numbers(true)
            } else {
                a
            }
        })
        .get_matches();
    match C::from_arg_matches(&matches) {
        Ok(c) => (c, matches),
        Err(e) => e.with_cmd(&C::command()).exit(),
    }
}
