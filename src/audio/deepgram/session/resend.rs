//! Reconnecting: a fresh socket, and the unfinished utterances' audio sent
//! on it again, so a socket lost mid-sentence costs a resend, not the words.

use tokio::time::Instant;

use super::{Flow, Session, control, encode};
use crate::audio::SpeechFailure;
use crate::audio::deepgram::connect::connect;
use tokio_tungstenite::tungstenite::Message;

impl Session {
    /// Opens a new socket and sends again what the unfinished utterances
    /// said (and their `Finalize`, and `CloseStream` when the input is
    /// over), with backoff between attempts.
    pub(super) async fn reconnect(&mut self) -> Flow {
        let mut last = SpeechFailure::Dropped;
        let mut backoff = self.config.reconnect_backoff;
        for attempt in 0..self.config.reconnect_attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
            if self.out.is_closed() {
                return Flow::End;
            }
            match connect(&self.config).await {
                Ok(s) => self.socket = Some(s),
                Err(f) => {
                    tracing::debug!(failure = %f, attempt, "deepgram: reconnect failed");
                    let stop = !f.is_retryable() || matches!(f, SpeechFailure::RateLimited { .. });
                    last = f;
                    if stop {
                        break;
                    }
                    continue;
                }
            }
            tracing::debug!(attempt, "deepgram: reconnected");
            if self.resend().await {
                return Flow::Continue;
            }
            last = SpeechFailure::Dropped;
        }
        self.fail(last).await;
        Flow::End
    }

    /// On a fresh socket: the unfinished utterances' audio again.
    async fn resend(&mut self) -> bool {
        self.timeline.reset();
        self.result_due = None;
        self.close_due = None;
        let now = Instant::now();
        self.keep_alive_at = now + self.config.keep_alive;
        let first = self.config.first_result_timeout;
        let mut messages = Vec::new();
        for u in self.utterances.iter_mut() {
            u.reset_connection();
            for f in &u.frames {
                u.conn_start.get_or_insert(self.timeline.sent());
                self.timeline.push(f.position(), f.len() as u64);
                messages.push(Message::Binary(encode(self.config.encoding, f).into()));
            }
            if u.ended && u.has_audio() {
                u.conn_end = Some(self.timeline.sent());
                u.final_due = Some(now + first);
                if self.input_open {
                    messages.push(control("Finalize"));
                }
            }
        }
        if messages.iter().any(|m| m.is_binary()) {
            self.result_due = Some((now + first, SpeechFailure::FirstOutputTimeout(first)));
        }
        let input_over = !self.input_open;
        for m in messages {
            if !self.send(m).await {
                return false;
            }
        }
        if input_over {
            self.close_due = Some(now + self.config.close_timeout);
            return self.send(control("CloseStream")).await;
        }
        true
    }
}
