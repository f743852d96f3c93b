//! One call's socket task: audio out, results in, and everything a socket
//! that idles between utterances needs to stay useful.
//!
//! The task owns the socket and the utterances' state and waits on six
//! things at once: the transcripts' receiver going away (the call ended:
//! the socket is closed), room in the transcripts' channel (for the next
//! transcript held), the server, the input, the keep-alive timer (reset by
//! every audio send), and the earliest deadline on useful output. A socket
//! lost while an utterance is in progress is reopened and the utterance's
//! audio sent again; one lost between utterances is reopened when the next
//! audio needs it.
//!
//! What that guarantees:
//!
//! - **A slow consumer never stalls the socket.** Transcripts wait in a
//!   small local queue: a newer transcript replaces the interims held (they
//!   are superseded), finals are never dropped, and the input is not read
//!   while [`MAX_PENDING`] are held, so the queue stays bounded while the
//!   socket is still read and kept alive.
//! - **Reconnects end.** One budget of
//!   [`DeepgramConfig::reconnect_attempts`] covers every reconnect until
//!   the next final; each attempt after the first waits the backoff
//!   (doubling); a resend keeps the deadlines the utterances already had.
//!   A close with code 1008 (audio the server cannot decode) or 4000–4999
//!   is not retried: it is [`SpeechFailure::Closed`].
//! - **The right deadline.** `Finalize` replaces the gap deadline of the
//!   audio before it with the final's; at the end of the input the close
//!   deadline wins a tie, so a slow close yields the finals collected.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::connect::{Socket, connect, describe_close, failure_of};
use super::message::{ServerMessage, parse};
use super::timeline::Timeline;
use super::utterance::Utterances;
use super::{DeepgramConfig, DeepgramEncoding, PROVIDER};
use crate::audio::error::redact;
use crate::audio::{AudioError, AudioFrame, RecognizerInput, SpeechFailure, Transcript, mulaw};

mod resend;

/// The most transcripts held for a consumer that is behind, before the
/// input waits.
pub(crate) const MAX_PENDING: usize = 64;

/// What the earliest deadline stands for.
enum Due {
    /// The result deadline of the audio in flight.
    Result(SpeechFailure),
    /// A final's deadline.
    Final,
    /// The close after `CloseStream`.
    Close,
}

/// Whether the task goes on.
enum Flow {
    Continue,
    End,
}

type Out = mpsc::Sender<Result<Transcript, AudioError>>;

/// One stream's state.
pub(crate) struct Session {
    config: Arc<DeepgramConfig>,
    input: mpsc::Receiver<RecognizerInput>,
    out: Out,
    socket: Option<Socket>,
    timeline: Timeline,
    utterances: Utterances,
    keep_alive_at: Instant,
    /// The next result's deadline while audio flows.
    result_due: Option<(Instant, SpeechFailure)>,
    /// After `CloseStream`: when the server must have closed.
    close_due: Option<Instant>,
    input_open: bool,
    /// Transcripts not yet taken by the consumer, oldest first.
    pending: VecDeque<Result<Transcript, AudioError>>,
    /// Reconnect attempts since the last final.
    reconnects: u32,
}

impl Session {
    pub(crate) fn new(
        config: Arc<DeepgramConfig>,
        input: mpsc::Receiver<RecognizerInput>,
        out: Out,
    ) -> Self {
        let utterances = Utterances::new(config.sample_rate, config.max_buffered);
        Self {
            keep_alive_at: Instant::now() + config.keep_alive,
            config,
            input,
            out,
            socket: None,
            timeline: Timeline::default(),
            utterances,
            result_due: None,
            close_due: None,
            input_open: true,
            pending: VecDeque::new(),
            reconnects: 0,
        }
    }

    fn key(&self) -> Option<&str> {
        self.config.key.as_ref().map(|k| k.expose())
    }

    /// Runs the stream to its end.
    pub(crate) async fn run(mut self) {
        // Connecting before the first word saves the handshake from the
        // first utterance's latency, and a refused key shows at once.
        match connect(&self.config).await {
            Ok(s) => self.socket = Some(s),
            Err(f) => {
                self.fail(f);
                return self.finish().await;
            }
        }
        self.keep_alive_at = Instant::now() + self.config.keep_alive;
        loop {
            let deadline = self.deadline();
            let at = deadline.as_ref().map(|d| d.0);
            let connected = self.socket.is_some();
            let holding = !self.pending.is_empty();
            let room = self.pending.len() < MAX_PENDING;
            // A permit borrows its sender past the branch's future.
            let out = self.out.clone();
            let flow = tokio::select! {
                biased;
                _ = self.out.closed() => Flow::End,
                permit = out.reserve(), if holding => match permit {
                    Ok(permit) => {
                        if let Some(t) = self.pending.pop_front() {
                            permit.send(t);
                        }
                        Flow::Continue
                    }
                    Err(_) => Flow::End,
                },
                msg = async {
                    match self.socket.as_mut() {
                        Some(s) => s.next().await,
                        None => std::future::pending().await,
                    }
                }, if connected => self.on_server(msg).await,
                _ = async {
                    match at {
                        Some(at) => sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => match deadline.map(|d| d.1) {
                    Some(Due::Result(failure)) => {
                        self.fail(failure);
                        Flow::End
                    }
                    Some(Due::Final) => self.on_final_due(),
                    _ => {
                        self.on_close_due();
                        Flow::End
                    }
                },
                next = self.input.recv(), if self.input_open && room => self.on_input(next).await,
                _ = sleep_until(self.keep_alive_at), if connected && self.close_due.is_none() => {
                    self.keep_alive().await
                }
            };
            if let Flow::End = flow {
                break;
            }
        }
        self.finish().await;
    }

    /// Closes the socket and hands over what the consumer has not taken
    /// yet (finals, a failure).
    async fn finish(mut self) {
        if let Some(mut s) = self.socket.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), s.close(None)).await;
        }
        // What the consumer has not taken yet (finals, a failure).
        while let Some(t) = self.pending.pop_front() {
            if self.out.send(t).await.is_err() {
                break;
            }
        }
    }

    /// The earliest deadline and what it stands for. The close after
    /// `CloseStream` wins a tie: what came by then is all there is.
    fn deadline(&self) -> Option<(Instant, Due)> {
        let mut due = self.result_due.clone().map(|(at, f)| (at, Due::Result(f)));
        if let Some(at) = self.utterances.final_due()
            && due.as_ref().is_none_or(|d| at < d.0)
        {
            due = Some((at, Due::Final));
        }
        if let Some(at) = self.close_due
            && due.as_ref().is_none_or(|d| at <= d.0)
        {
            due = Some((at, Due::Close));
        }
        due
    }

    /// A final is overdue: the utterances that have all their finals close
    /// with them; one that would lose words fails the stream.
    fn on_final_due(&mut self) -> Flow {
        match self.utterances.expire(Instant::now()) {
            Some(out) => {
                self.emit(out);
                Flow::Continue
            }
            None => {
                let first = self.config.first_result_timeout;
                self.fail(SpeechFailure::FirstOutputTimeout(first));
                Flow::End
            }
        }
    }

    /// The server did not close after `CloseStream`: a server that never
    /// closes is not worth an error once the input is over; what came is
    /// all there is.
    fn on_close_due(&mut self) {
        if self.utterances.in_progress() {
            tracing::warn!("deepgram: no close after CloseStream; ending the stream");
        }
        let out = self.utterances.finish_all();
        self.emit(out);
    }

    /// Queues the stream's failure (the task then ends).
    fn fail(&mut self, failure: SpeechFailure) {
        tracing::debug!(failure = %failure, "deepgram: the stream fails");
        self.pending
            .push_back(Err(AudioError::provider(PROVIDER, failure)));
    }

    /// Queues transcripts for the consumer; a newer one supersedes the
    /// interims held. A final renews the reconnect budget.
    fn emit(&mut self, transcripts: Vec<Transcript>) {
        for t in transcripts {
            self.pending
                .retain(|p| !matches!(p, Ok(held) if !held.is_final));
            if t.is_final {
                self.reconnects = 0;
            }
            self.pending.push_back(Ok(t));
        }
    }

    async fn on_server(&mut self, msg: Option<Result<Message, WsError>>) -> Flow {
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(frame))) => {
                let why = describe_close(frame.as_ref(), self.key());
                if let Some(f) = frame.as_ref().filter(|f| refuses(u16::from(f.code)))
                    && self.close_due.is_none()
                {
                    let message = redact(&f.reason, self.key());
                    tracing::debug!(why, "deepgram: closed with a code not retried");
                    self.socket = None;
                    let code = u16::from(f.code);
                    self.fail(SpeechFailure::Closed { code, message });
                    return Flow::End;
                }
                return self.on_closed(&why).await;
            }
            None => return self.on_closed("the socket ended").await,
            Some(Err(WsError::Capacity(e))) => {
                tracing::debug!(error = %e, "deepgram: a message over the cap");
                self.fail(SpeechFailure::TooLarge {
                    limit: super::connect::MAX_MESSAGE_BYTES,
                });
                return Flow::End;
            }
            Some(Err(e)) => {
                let why = failure_of(e, self.key()).to_string();
                return self.on_closed(&why).await;
            }
            Some(Ok(Message::Binary(b))) => {
                tracing::debug!(bytes = b.len(), "deepgram: a binary message is ignored");
                return Flow::Continue;
            }
            Some(Ok(_)) => return Flow::Continue,
        };
        let msg = match parse(&text) {
            Ok(m) => m,
            Err(e) => {
                self.fail(SpeechFailure::Malformed(e));
                return Flow::End;
            }
        };
        match msg {
            ServerMessage::Results(r) => {
                self.result_due = None;
                let out = self.utterances.on_results(&r, &self.timeline);
                let keep_from = self.utterances.oldest_conn_start();
                self.timeline
                    .forget_before(keep_from.unwrap_or(self.timeline.sent()));
                self.emit(out);
                Flow::Continue
            }
            ServerMessage::UtteranceEnd { last_word_end } => {
                tracing::debug!(last_word_end, "deepgram: UtteranceEnd");
                let silence =
                    Duration::from_millis(self.config.utterance_end_ms.unwrap_or(0).into());
                let out = self.utterances.on_utterance_end(last_word_end, silence);
                self.emit(out);
                Flow::Continue
            }
            ServerMessage::SpeechStarted { timestamp } => {
                // The local detector already decided (see the module docs).
                tracing::debug!(
                    timestamp,
                    "deepgram: SpeechStarted (not used for turn-taking)"
                );
                Flow::Continue
            }
            ServerMessage::Metadata { request_id } => {
                tracing::debug!(request_id = %request_id, "deepgram: Metadata");
                Flow::Continue
            }
            ServerMessage::Error {
                description,
                message,
                variant,
            } => {
                let said = [description, message, variant]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(": ");
                let message = redact(&said, self.key());
                self.fail(SpeechFailure::Status { status: 0, message });
                Flow::End
            }
            ServerMessage::Other => {
                tracing::debug!("deepgram: a message of another type is ignored");
                Flow::Continue
            }
        }
    }

    /// The server closed (or the socket broke).
    async fn on_closed(&mut self, why: &str) -> Flow {
        self.socket = None;
        if self.close_due.is_some() {
            // After `CloseStream`: the remaining results came before the
            // close, so the unfinished utterances have all they will get.
            tracing::debug!(why, "deepgram: closed after CloseStream");
            let out = self.utterances.finish_all();
            self.emit(out);
            return Flow::End;
        }
        tracing::debug!(why, "deepgram: the socket closed");
        if self.utterances.in_progress() {
            return self.reconnect().await;
        }
        if !self.input_open {
            // Nothing more to send or hear: without this the stream would
            // wait for nothing (no socket, no input, no deadline).
            return Flow::End;
        }
        Flow::Continue
    }

    async fn on_input(&mut self, next: Option<RecognizerInput>) -> Flow {
        match next {
            Some(RecognizerInput::SpeechStarted { position }) => {
                if let Flow::End = self.end_utterance().await {
                    return Flow::End;
                }
                self.utterances.start(position);
                Flow::Continue
            }
            Some(RecognizerInput::Frame(f)) => self.on_frame(f).await,
            Some(RecognizerInput::SpeechEnded { .. }) => self.end_utterance().await,
            None => {
                self.input_open = false;
                self.utterances.end_open();
                if self.socket.is_none() {
                    if !self.utterances.in_progress() {
                        return Flow::End;
                    }
                    // The resend ends with `CloseStream` now the input is over.
                    return self.reconnect().await;
                }
                self.close_stream().await
            }
        }
    }

    async fn on_frame(&mut self, f: AudioFrame) -> Flow {
        if f.sample_rate() != self.config.sample_rate {
            let reason = format!(
                "a frame at {} Hz where {} Hz was asked for",
                f.sample_rate(),
                self.config.sample_rate
            );
            self.pending
                .push_back(Err(AudioError::engine(PROVIDER, reason)));
            return Flow::End;
        }
        if f.is_empty() {
            return Flow::Continue;
        }
        if self.utterances.open().is_none() {
            // Audio outside an utterance (a feeder without a detector):
            // it opens one where it sits.
            self.utterances.start(f.position());
        }
        self.utterances.keep(f.clone());
        if self.socket.is_none() {
            return self.reconnect().await;
        }
        if self.send_audio(&f).await {
            Flow::Continue
        } else {
            self.on_closed("a send failed").await
        }
    }

    /// Sends one frame of the open utterance, starting the result deadline.
    async fn send_audio(&mut self, f: &AudioFrame) -> bool {
        let bytes = encode(self.config.encoding, f);
        let sent = self.timeline.sent();
        let now = Instant::now();
        let got_result = match self.utterances.open() {
            Some(u) => {
                u.conn_start.get_or_insert(sent);
                u.got_result
            }
            None => false,
        };
        if self.result_due.is_none() {
            self.result_due = Some(if got_result {
                let gap = self.config.result_gap_timeout;
                (now + gap, SpeechFailure::OutputGapTimeout(gap))
            } else {
                let first = self.config.first_result_timeout;
                (now + first, SpeechFailure::FirstOutputTimeout(first))
            });
        }
        self.timeline.push(f.position(), f.len() as u64);
        self.keep_alive_at = now + self.config.keep_alive;
        self.send(Message::Binary(bytes.into())).await
    }

    /// `SpeechEnded` (or a new `SpeechStarted`): `Finalize` for the open
    /// utterance; its final is due.
    async fn end_utterance(&mut self) -> Flow {
        if !self.utterances.end_open() {
            return Flow::Continue;
        }
        if self.socket.is_none() {
            return self.reconnect().await;
        }
        let (sent, due) = (
            self.timeline.sent(),
            Instant::now() + self.config.first_result_timeout,
        );
        if let Some(u) = self.utterances.iter_mut().last() {
            u.conn_end = Some(sent);
            u.final_due = Some(due);
        }
        // The final's deadline replaces the gap deadline of the audio.
        self.result_due = None;
        if self.send(control("Finalize")).await {
            Flow::Continue
        } else {
            self.on_closed("a send failed").await
        }
    }

    async fn close_stream(&mut self) -> Flow {
        let (sent, now) = (self.timeline.sent(), Instant::now());
        for u in self.utterances.iter_mut() {
            if u.conn_end.is_none() && u.has_audio() {
                u.conn_end = Some(sent);
                u.final_due = Some(now + self.config.first_result_timeout);
            }
        }
        self.result_due = None;
        self.close_due = Some(now + self.config.close_timeout);
        if self.send(control("CloseStream")).await {
            Flow::Continue
        } else {
            self.close_due = None;
            self.on_closed("a send failed").await
        }
    }

    async fn keep_alive(&mut self) -> Flow {
        self.keep_alive_at = Instant::now() + self.config.keep_alive;
        if self.send(control("KeepAlive")).await {
            Flow::Continue
        } else {
            self.on_closed("a send failed").await
        }
    }

    /// Sends on the socket; `false` (and no socket) when it failed.
    async fn send(&mut self, msg: Message) -> bool {
        let Some(s) = self.socket.as_mut() else {
            return false;
        };
        // A server that stops reading must not hold the task past the
        // deadlines it exists to enforce.
        let limit = self.config.result_gap_timeout;
        match tokio::time::timeout(limit, s.send(msg)).await {
            Ok(Ok(())) => true,
            _ => {
                self.socket = None;
                false
            }
        }
    }
}

fn encode(encoding: DeepgramEncoding, f: &AudioFrame) -> Vec<u8> {
    match encoding {
        DeepgramEncoding::Mulaw => mulaw::encode(f.samples()),
        _ => f.samples().iter().flat_map(|s| s.to_le_bytes()).collect(),
    }
}

/// Whether a close code refuses the stream itself, so a reconnect would
/// fail the same way: 1008 (policy: audio Deepgram cannot decode) and the
/// application's 4000–4999.
fn refuses(code: u16) -> bool {
    code == 1008 || (4000..=4999).contains(&code)
}

fn control(kind: &str) -> Message {
    Message::Text(format!(r#"{{"type":"{kind}"}}"#).into())
}
