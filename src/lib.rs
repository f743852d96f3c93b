//! # colloquy — the streaming core of a real-time voice-agent runtime
//!
//! This crate is the part of colloquy that talks to a language model: the
//! conversation model ([`context`]), tool definitions ([`tools`]) and a streaming
//! chat-completions client for OpenAI, Azure OpenAI and every OpenAI-compatible
//! server ([`llm`]). It depends on no actor framework, so it can be used as a plain
//! streaming client; the actor runtime (session supervisor, LLM actor, bus) lives in
//! the `colloquy-actors` crate, which builds on this one.
//!
//! Why a voice runtime needs its own client: a voice agent is judged by what the
//! user *hears*. The client therefore publishes every piece of the reply the moment
//! it is known — a token as soon as its bytes arrive, a tool call as soon as its
//! arguments close, not at the end of the stream — and dropping a [`llm::ChatStream`]
//! closes the HTTP connection at once, which is what barge-in is built on.
//!
//! ```no_run
//! use colloquy::context::ChatContext;
//! use colloquy::llm::{ChatClient, ChatRequest, LlmOptions, OpenAiConfig, StreamEvent};
//! use futures_util::StreamExt;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = ChatClient::new(OpenAiConfig::from_env()?)?;
//! let mut ctx = ChatContext::new();
//! ctx.add_system("You are a terse assistant.");
//! ctx.add_user("Say hello.");
//! let options = LlmOptions::new("gpt-4o-mini");
//! let mut stream = client.stream(ChatRequest::new(&ctx, &options))?;
//! while let Some(event) = stream.next().await {
//!     if let StreamEvent::Token(text) = event? {
//!         print!("{text}");
//!     }
//! }
//! # Ok(()) }
//! ```
#![warn(missing_docs, unreachable_pub)]

pub mod audio;
pub mod context;
pub mod llm;
#[cfg(feature = "mock")]
pub mod mock;
pub mod secret;
pub mod tools;

pub use context::ChatContext;
pub use llm::{ChatClient, ChatStream, LlmError, LlmOptions, StreamEvent};
pub use secret::Secret;
pub use tools::ToolDefinition;

/// `docs/audio.md`, compiled as doctests (its call server needs the engines
/// and the call transports: `--all-features`).
#[cfg(all(
    doctest,
    feature = "calls",
    feature = "espeak",
    feature = "pocketsphinx"
))]
#[doc = include_str!("../docs/audio.md")]
struct AudioDoctests;

/// `docs/speech-providers.md`, compiled as doctests (the hosted engines
/// with the offline ones behind them: `--all-features`).
#[cfg(all(
    doctest,
    feature = "deepgram",
    feature = "espeak",
    feature = "pocketsphinx"
))]
#[doc = include_str!("../docs/speech-providers.md")]
struct SpeechProvidersDoctests;

/// `docs/providers.md`, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/providers.md")]
struct ProvidersDoctests;
