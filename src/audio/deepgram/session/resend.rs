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
    /// over). One budget of attempts covers every reconnect until the next
    /// final; every attempt but the budget's first waits the backoff,
    /// doubling.
    pub(super) async fn reconnect(&mut self) -> Flow {
        let mut last = SpeechFailure::Dropped;
        while self.reconnects < self.config.reconnect_attempts {
            if self.reconnects > 0 {
                let doublings = (self.reconnects - 1).min(16);
                let backoff = self.config.reconnect_backoff.saturating_mul(1 << doublings);
                tokio::time::sleep(backoff).await;
            }
            let attempt = self.reconnects;
            self.reconnects += 1;
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
            if self.out.is_closed() {
                return Flow::End;
            }
            last = SpeechFailure::Dropped;
        }
        self.fail(last);
        Flow::End
    }

    /// On a fresh socket: the unfinished utterances' audio again.
    async fn resend(&mut self) -> bool {
        self.timeline.reset();
        self.close_due = None;
        // Utterances whose audio the cap dropped entirely get their finals
        // now: nothing of them is resent.
        let emptied = self.utterances.close_emptied();
        self.emit(emptied);
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
                // The deadline it had stands: a resend does not renew it.
                u.final_due.get_or_insert(now + first);
                // Even when the input is over: without it, utterances resent
                // back to back could come back as one segment spanning both.
                messages.push(control("Finalize"));
            }
        }
        let open_resent = self.utterances.open().is_some_and(|u| u.has_audio());
        if !open_resent {
            self.result_due = None;
        } else if self.result_due.is_none() {
            self.result_due = Some((now + first, SpeechFailure::FirstOutputTimeout(first)));
        }
        let input_over = !self.input_open;
        for m in messages {
            // A dropped Recognition ends the task, even mid-resend.
            if self.out.is_closed() || !self.send(m).await {
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
