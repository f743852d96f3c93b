//! Speech adapters: the TTS protocol done once, and a typed STT input.
//!
//! Speaking a reply correctly is subtle: play each turn's
//! [`Speakable`](crate::bus::EventKind::Speakable) segments in order, report
//! what was heard ([`SessionHandle::speech_played`]), go silent the moment the
//! turn is cut, hold on a [`PlaybackPaused`](crate::bus::EventKind::PlaybackPaused)
//! and continue on [`PlaybackResumed`](crate::bus::EventKind::PlaybackResumed)
//! from exactly where playback stopped, and never play a word of a turn that is
//! no longer current. A [`Speaker`] does all of that for one session; an
//! embedder implements only [`SpeechOutput`] — "turn this text into audio, play
//! it, say how far it got" — plus synchronous `pause`, `resume` and `stop`.
//!
//! ```text
//!  bus ──Speakable, TurnStarted, TurnFinished, Interrupted, Paused/Resumed──▶ Speaker task
//!   │    (a lossless tap: no token ever goes through it)                       │ play(segment)
//!   └──on_cut / on_pause / on_resume hooks (synchronous) ──▶ stop/pause/resume ▼
//!                                                                    your SpeechOutput
//!                                          segment.played(chars) ──▶ speech_played(turn, offset + chars)
//! ```
//!
//! The cut, pause and resume reach the output twice: synchronously through the
//! bus hooks, in the thread that decided them (so audio stops within
//! microseconds, without waiting for a task to be scheduled), and through the
//! speaker's own ordered event stream, which keeps its queue right. Both paths
//! apply the ledger's latest decision, so hooks racing each other cannot leave
//! the output paused after a resume.
//!
//! [`PacedTextOutput`] is a simulated output that "plays" text at a fixed
//! number of characters per second; tests and the `voice_agent` example use
//! it. For input, [`SttEvent`] and [`SessionHandle::stt`] map a speech
//! recognizer's events onto the session.
//!
//! ```
//! use colloquy::llm::{ChatClient, LlmOptions, OpenAiConfig};
//! use colloquy::mock::{MockResponse, MockServer};
//! use colloquy_actors::speech::{PacedTextOutput, Speaker, SttEvent};
//! use colloquy_actors::{AgentSettings, SegmenterConfig, SessionConfig, Supervisor, SupervisorConfig};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = MockServer::start(|_| MockResponse::text(&["Hello", " there!"])).await?;
//! let client = ChatClient::new(OpenAiConfig::compatible(server.base_url()))?;
//! let supervisor = Supervisor::start(SupervisorConfig::default()).await?;
//! let settings = AgentSettings::new(LlmOptions::new("demo"));
//! let session = supervisor
//!     .start_session("call-1", SessionConfig::new(client, settings).with_segmenter(SegmenterConfig::default()))
//!     .await?;
//! let output = PacedTextOutput::new(1000.0); // 1,000 characters per second
//! let speaker = Speaker::spawn(&session, output.clone());
//! let mut status = speaker.status();
//! session.stt(SttEvent::Final("Hi!".into()));
//! status.wait_for(|s| s.turn.0 == 1 && s.finished).await?;
//! assert_eq!(output.played_text(), "Hello there!");
//! supervisor.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! [`SessionHandle::speech_played`]: crate::SessionHandle::speech_played
//! [`SessionHandle::stt`]: crate::SessionHandle::stt

pub mod audio;
pub(crate) mod inputs;
mod listener;
mod output;
#[cfg(feature = "nats")]
pub(crate) mod remote_speaker;
mod speaker;

// The typed STT input lives with the bus's events, which it maps onto.
pub use crate::bus::event::SttEvent;
pub use listener::{Listener, ListenerConfig};
pub use output::{PacedTextOutput, PlayEnd, Segment, SpeechOutput};
pub use speaker::{Speaker, SpeakerStatus};
