//! # colloquy-actors — the voice-agent runtime on ractor
//!
//! One [`Supervisor`] per process owns the sessions. Each session has a
//! [`SessionBus`](bus::SessionBus), an LLM actor that owns the conversation and
//! streams replies, and optionally a tool executor and a segmenter for TTS.
//! Embedders hold a [`SessionHandle`] and wire their STT and TTS onto the bus.
//!
//! The promise: when the user talks over the agent, the reply stops now — the
//! HTTP stream is closed, no stale token reaches a speaker (the turn ledger
//! refuses every later event of the cancelled turn), and the history records
//! what the user heard.
//!
//! ```
//! use colloquy::llm::{ChatClient, LlmOptions, OpenAiConfig};
//! use colloquy::mock::{MockResponse, MockServer};
//! use colloquy_actors::bus::{EventKind, TurnEnd};
//! use colloquy_actors::{AgentSettings, SessionConfig, Supervisor, SupervisorConfig};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = MockServer::start(|_| MockResponse::text(&["Hello", " there!"])).await?;
//! let client = ChatClient::new(OpenAiConfig::compatible(server.base_url()))?;
//! let supervisor = Supervisor::start(SupervisorConfig::default()).await?;
//! let session = supervisor
//!     .start_session("call-1", SessionConfig::new(client, AgentSettings::new(LlmOptions::new("demo"))))
//!     .await?;
//! let mut events = session.subscribe();
//! session.user_transcript("Hi!", true); // what an STT actor publishes
//! let mut reply = String::new();
//! loop {
//!     let event = events.recv().await?;
//!     match event.kind {
//!         EventKind::Token(t) => reply.push_str(&t),
//!         EventKind::TurnFinished(end) => {
//!             assert_eq!(end, TurnEnd::Stop);
//!             break;
//!         }
//!         _ => {}
//!     }
//! }
//! assert_eq!(reply, "Hello there!");
//! supervisor.shutdown().await;
//! # Ok(()) }
//! ```
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod bus;
#[cfg(feature = "calls")]
pub mod calls;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod cluster;
mod errors;
mod ids;
#[cfg(test)]
mod interleavings;
pub mod latency;
mod llm_actor;
mod reply;
mod segmenter;
mod session;
pub mod speech;
mod supervisor;
mod task;
pub mod telemetry;
mod tool_executor;
pub mod turn_taking;

pub use errors::SessionError;
pub use ids::{SessionId, TurnId};
pub use llm_actor::{AgentSettings, BeforeTurnHook, InterruptionPolicy, Preemptive, SpeechQueue};
pub use reply::{Reply, ReplyState, SayOptions};
pub use segmenter::{SegmentBuffer, SegmenterConfig};
pub use session::{ReplyError, ReplyHandle, SessionHandle};
pub use supervisor::{SessionConfig, Supervisor, SupervisorConfig, SupervisorError};
pub use tool_executor::{Tool, ToolError, ToolFuture, ToolRegistry};

/// The README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

/// `docs/architecture.md`, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/architecture.md")]
struct ArchitectureDoctests;

/// `docs/turn-taking.md`, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/turn-taking.md")]
struct TurnTakingDoctests;

/// `docs/speech.md`, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/speech.md")]
struct SpeechDoctests;

/// `docs/cluster.md`, compiled as doctests (its snippets need the `nats` feature).
#[cfg(all(doctest, feature = "nats"))]
#[doc = include_str!("../../docs/cluster.md")]
struct ClusterDoctests;

/// `docs/scenarios.md`, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/scenarios.md")]
struct ScenariosDoctests;

/// `docs/cli.md`, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/cli.md")]
struct CliDoctests;

/// `docs/metrics.md`, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/metrics.md")]
struct MetricsDoctests;

/// `docs/traces.md`, compiled as doctests (its snippet needs the `otlp` feature).
#[cfg(doctest)]
#[doc = include_str!("../../docs/traces.md")]
struct TracesDoctests;

/// `docs/testing.md`, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/testing.md")]
struct TestingDoctests;

/// `docs/benchmarks.md`, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/benchmarks.md")]
struct BenchmarksDoctests;

/// `docs/README.md`, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/README.md")]
struct DocsIndexDoctests;
