//! What one caller may cost: a call is a session, a transcriber and a
//! synthesizer on the operator's accounts, so the server bounds how many run
//! at once (refused with 503 before the upgrade), how large and how frequent
//! their messages are, how long a call may stay silent and how long it may
//! last. Each limit ends only the call that crossed it, with a close frame
//! that says which ([`LimitExceeded`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use tokio::time::Instant;

use super::CallError;

/// The limits every call of a server has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallLimits {
    /// Calls open at once (Twilio and browser together); one more is
    /// answered 503 before its upgrade.
    pub max_calls: usize,
    /// The largest WebSocket message (and frame): a larger one ends the call
    /// with close code 1009.
    pub max_message_bytes: usize,
    /// Messages per second a call may send, on average; bursts of up to two
    /// seconds' worth pass. More ends the call (close 1008).
    pub max_messages_per_second: u32,
    /// A call that sends no audio for this long is closed (1008).
    pub idle_timeout: Duration,
    /// A call is closed (1008) once it lasted this long.
    pub max_duration: Duration,
}

impl Default for CallLimits {
    /// 64 calls, 64 KiB messages, 200 messages a second (a phone sends 50
    /// media and up to 50 mark echoes), 30 s without audio, one hour.
    fn default() -> Self {
        Self {
            max_calls: 64,
            max_message_bytes: super::MAX_MESSAGE_BYTES,
            max_messages_per_second: 200,
            idle_timeout: Duration::from_secs(30),
            max_duration: Duration::from_secs(3600),
        }
    }
}

/// Which limit a call crossed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitExceeded {
    /// A message larger than [`CallLimits::max_message_bytes`].
    #[error("a message over {max} bytes")]
    MessageTooBig {
        /// The limit.
        max: usize,
    },
    /// More messages than [`CallLimits::max_messages_per_second`].
    #[error("more than {per_second} messages a second")]
    TooManyMessages {
        /// The limit.
        per_second: u32,
    },
    /// No audio for [`CallLimits::idle_timeout`].
    #[error("idle: no audio for {after:?}")]
    Idle {
        /// The limit.
        after: Duration,
    },
    /// The call lasted [`CallLimits::max_duration`].
    #[error("the call reached its maximum length of {max:?}")]
    TooLong {
        /// The limit.
        max: Duration,
    },
}

impl LimitExceeded {
    /// A short name for metrics: `message_too_big`, `too_many_messages`,
    /// `idle`, `too_long`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::MessageTooBig { .. } => "message_too_big",
            Self::TooManyMessages { .. } => "too_many_messages",
            Self::Idle { .. } => "idle",
            Self::TooLong { .. } => "too_long",
        }
    }

    /// The WebSocket close code: 1009 (message too big) or 1008 (policy).
    pub fn close_code(&self) -> u16 {
        match self {
            Self::MessageTooBig { .. } => 1009,
            _ => 1008,
        }
    }
}

/// One of the server's call slots, held while the call's socket is open.
#[derive(Debug)]
pub(crate) struct CallSlot(Arc<AtomicUsize>);

impl CallSlot {
    /// A slot, unless `max` calls are open.
    pub(crate) fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Self(open.clone()))
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the call's socket said next.
pub(crate) enum Read {
    /// A message within the limits.
    Message(Message),
    /// The peer closed the socket (or sent a close frame: it is a message).
    Closed,
    /// The socket failed or a limit was crossed.
    Failed(CallError),
}

/// The call's socket, read within its limits: message rate, idle time and
/// length (the size limit is the socket's own, reported here).
pub(crate) struct Reader {
    rx: SplitStream<WebSocket>,
    limits: CallLimits,
    idle_at: Instant,
    ends_at: Instant,
    tokens: f64,
    refilled: Instant,
    _slot: CallSlot,
}

impl Reader {
    pub(crate) fn new(rx: SplitStream<WebSocket>, limits: CallLimits, slot: CallSlot) -> Self {
        let now = Instant::now();
        Self {
            rx,
            limits,
            idle_at: now + limits.idle_timeout,
            ends_at: now + limits.max_duration,
            tokens: burst(&limits),
            refilled: now,
            _slot: slot,
        }
    }

    /// The call's audio arrived: it is not idle.
    pub(crate) fn heard_audio(&mut self) {
        self.idle_at = Instant::now() + self.limits.idle_timeout;
    }

    /// The next message, or why there is none.
    pub(crate) async fn next(&mut self) -> Read {
        let limit = |l: LimitExceeded| {
            metrics::counter!("colloquy_calls_limited_total", "limit" => l.label()).increment(1);
            Read::Failed(CallError::Limit(l))
        };
        tokio::select! {
            // What the caller sent comes before a deadline that passed while
            // the call was busy (starting its session).
            biased;
            m = self.rx.next() => match m {
                None => Read::Closed,
                Some(Err(e)) => match too_big(e) {
                    Ok(()) => limit(LimitExceeded::MessageTooBig { max: self.limits.max_message_bytes }),
                    Err(e) => Read::Failed(CallError::Connection(e)),
                },
                Some(Ok(m)) => {
                    if self.take_token() {
                        Read::Message(m)
                    } else {
                        limit(LimitExceeded::TooManyMessages { per_second: self.limits.max_messages_per_second })
                    }
                }
            },
            () = tokio::time::sleep_until(self.idle_at) => limit(LimitExceeded::Idle { after: self.limits.idle_timeout }),
            () = tokio::time::sleep_until(self.ends_at) => limit(LimitExceeded::TooLong { max: self.limits.max_duration }),
        }
    }

    /// A token bucket: `max_messages_per_second` a second, two seconds deep.
    fn take_token(&mut self) -> bool {
        let now = Instant::now();
        let rate = f64::from(self.limits.max_messages_per_second);
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst(&self.limits));
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn burst(limits: &CallLimits) -> f64 {
    f64::from(limits.max_messages_per_second) * 2.0
}

/// `Ok` when the socket's error is a message over its size limit; else the
/// error's text.
fn too_big(e: axum::Error) -> Result<(), String> {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => Ok(()),
        _ => Err(inner.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_and_given_back() {
        let open = Arc::new(AtomicUsize::new(0));
        let a = CallSlot::take(&open, 2).unwrap();
        let _b = CallSlot::take(&open, 2).unwrap();
        assert!(CallSlot::take(&open, 2).is_none());
        drop(a);
        assert!(CallSlot::take(&open, 2).is_some());
    }

    #[test]
    fn close_codes() {
        assert_eq!(LimitExceeded::MessageTooBig { max: 1 }.close_code(), 1009);
        assert_eq!(
            LimitExceeded::Idle {
                after: Duration::from_secs(1)
            }
            .close_code(),
            1008
        );
    }
}
