//! Speech fallback: several engines behind one [`Synthesizer`] or one
//! [`Transcriber`], the way the LLM side has its
//! [`ProviderChain`](crate::llm::ProviderChain).
//!
//! A hosted speech provider fails in the same ways a model does — refused,
//! rate limited, stalled behind keep-alives, dropped mid-answer — and a
//! caller must hear neither dead air nor a word twice. So:
//!
//! ```text
//!  SynthesizerChain::synthesize(text)
//!    engine 1 ──audio, marks──▶ the speaker        (audio after the last
//!       │ fails before its first audio               mark is held until the
//!       ▼                                            next mark: it is what a
//!    engine 2 gets the whole text at once            failure would repeat)
//!       │ fails mid-segment
//!       ▼
//!    engine 3 gets the text from the first character not yet marked;
//!    its samples and characters continue the segment's
//!
//!  TranscriberChain::open()
//!    engine 1 ◀── every input; the inputs of each utterance not yet final
//!       │ fails    are kept (bounded)
//!       ▼
//!    engine 2 ◀── the kept utterances, replayed, then the live input
//! ```
//!
//! Each engine has a circuit breaker ([`BreakerConfig`]): after consecutive
//! failures it is skipped until a cooldown ends, then one request probes it;
//! its state is the gauge `colloquy_speech_breaker_state{provider}` (0
//! closed, 1 half-open, 2 open). When every engine is open, the first one is
//! tried anyway — a request beats certain silence. Engines enforce their own
//! deadlines (first output, gaps); the chain acts on the error. The local
//! engines (espeak-ng, PocketSphinx) make a natural last resort.

mod recognition;
mod synthesis;

pub use recognition::TranscriberChain;
pub use synthesis::SynthesizerChain;

pub use crate::llm::{BreakerConfig, BreakerState};

/// One engine of a chain, as [`SynthesizerChain::providers`] and
/// [`TranscriberChain::providers`] report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineStatus {
    /// The engine's name (its `name()`), numbered when two share one
    /// (`openai-speech#2`).
    pub name: String,
    /// Its breaker.
    pub breaker: BreakerState,
}

/// Gauge of a speech engine's breaker state.
const BREAKER_GAUGE: &str = "colloquy_speech_breaker_state";

/// One engine of a chain: the engine, its unique label, its breaker.
struct Engine<T: ?Sized> {
    engine: Arc<T>,
    label: Arc<str>,
    breaker: Arc<Breaker>,
}

/// The engines of a chain, each named (`name#2` for a second of one name)
/// and with a fresh breaker.
fn engines<T: ?Sized>(
    items: Vec<Arc<T>>,
    name: impl Fn(&T) -> &'static str,
    config: BreakerConfig,
) -> Vec<Engine<T>> {
    let mut seen: Vec<(&'static str, usize)> = Vec::new();
    items
        .into_iter()
        .map(|engine| {
            let n = name(&engine);
            let count = match seen.iter_mut().find(|(s, _)| *s == n) {
                Some((_, c)) => {
                    *c += 1;
                    *c
                }
                None => {
                    seen.push((n, 1));
                    1
                }
            };
            let label: Arc<str> = if count == 1 {
                Arc::from(n)
            } else {
                Arc::from(format!("{n}#{count}"))
            };
            Engine {
                breaker: Breaker::with_gauge(config, label.clone(), BREAKER_GAUGE),
                engine,
                label,
            }
        })
        .collect()
}

/// Each engine with its breaker, in order.
fn status<T: ?Sized>(engines: &[Engine<T>]) -> Vec<EngineStatus> {
    engines
        .iter()
        .map(|e| EngineStatus {
            name: e.label.to_string(),
            breaker: e.breaker.state(),
        })
        .collect()
}

/// The engines themselves, to build a chain anew.
fn items<T: ?Sized>(engines: &[Engine<T>]) -> Vec<Arc<T>> {
    engines.iter().map(|e| e.engine.clone()).collect()
}

use std::sync::Arc;

use super::{Synthesizer, Transcriber};
use crate::llm::chain::breaker::Breaker;

#[cfg(test)]
mod tests;
