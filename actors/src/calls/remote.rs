//! Calls whose sessions run on the cluster's workers
//! ([`CallServices::on_cluster`](super::CallServices::on_cluster)): the voice server terminates the audio —
//! hears the caller, speaks the replies, keeps the playout clock — and the
//! session (its history, its model requests, its turn-taking) lives on a
//! worker, placed per call.
//!
//! Why this split: audio is heavy and latency-bound, the conversation is
//! what must survive a machine. A worker killed mid-call loses only the
//! turn in flight: its new owner ends that turn as failed ("worker lost",
//! which silences the speaker like any cut), resumes the history, and the
//! call goes on. The caller's voice activity, transcripts and playback
//! progress travel as speech inputs, in the order the audio produced them
//! (one queue, one sender task; each input is retried while no worker owns
//! the session); the replies come back as the session's speech and
//! lifecycle events.

use super::info::{CallError, CallInfo};
use crate::cluster::{
    ClusterClient, ClusterError, EventClass, EventClasses, RemoteSession, SessionSpec,
};
use crate::speech::audio::AudioOutput;
use crate::speech::inputs::{InputQueue, InputReceiver, SpeechInput, SpeechInputs};
use crate::speech::remote_speaker::RemoteSpeaker;
use crate::speech::{Listener, ListenerConfig};
use crate::task::AbortOnDrop;
use colloquy::audio::Transcriber;
use colloquy::context::ChatContext;

/// How each call's session is specified.
pub(crate) type SpecFn = dyn Fn(&CallInfo) -> SessionSpec + Send + Sync;

/// A call's session on a worker: the session, its speaker, and the task
/// that sends the call's speech inputs.
pub(crate) struct RemoteCall {
    session: RemoteSession,
    speaker: Option<RemoteSpeaker>,
    _inputs: AbortOnDrop,
}

impl RemoteCall {
    /// Places the call's session, starts its speaker on `output` and a
    /// listener for audio at `input_rate`.
    #[allow(clippy::too_many_arguments)] // what a call of the server brings
    pub(crate) async fn start(
        client: &ClusterClient,
        spec: &SpecFn,
        info: &CallInfo,
        server_tag: &str,
        output: AudioOutput,
        input_rate: u32,
        transcriber: Option<&dyn Transcriber>,
        listener: ListenerConfig,
    ) -> Result<(Self, Listener), CallError> {
        let mut spec = spec(info);
        spec.segmenter = true;
        // The speaker reads speech and lifecycle, the page the user's words.
        if let Some(classes) = &mut spec.event_classes {
            for class in [EventClass::Lifecycle, EventClass::Speech, EventClass::User] {
                if !classes.contains(&class) {
                    classes.push(class);
                }
            }
        }
        // Call names are per server (`web-1`, …); sessions are cluster-wide.
        let id = format!("{}-{}", info.id, server_tag);
        let session = client
            .place(id, spec)
            .await
            .map_err(|e| CallError::Session(e.to_string()))?;
        let started = async {
            let events = session
                .subscribe_to(EventClasses::speech())
                .await
                .map_err(|e| CallError::Session(e.to_string()))?;
            let (inputs, queue) = InputQueue::new();
            let speaker = RemoteSpeaker::spawn(events, inputs.clone(), output);
            let listener = Listener::reporting_to(
                SpeechInputs::Queue(inputs),
                input_rate,
                transcriber,
                listener,
            )?;
            Ok::<_, CallError>((speaker, listener, queue))
        };
        let (speaker, listener, queue) = match started.await {
            Ok(s) => s,
            Err(e) => {
                let _ = session.close().await;
                return Err(e);
            }
        };
        let inputs = AbortOnDrop(tokio::spawn(send_inputs(session.clone(), queue)));
        Ok((
            Self {
                session,
                speaker: Some(speaker),
                _inputs: inputs,
            },
            listener,
        ))
    }

    /// The call's session.
    pub(crate) fn session(&self) -> &RemoteSession {
        &self.session
    }

    /// The session ended on the cluster (see [`RemoteSpeaker::session_ended`]).
    pub(crate) fn session_ended(&self) -> bool {
        self.speaker
            .as_ref()
            .is_some_and(RemoteSpeaker::session_ended)
    }

    /// Silence, the history as committed, the session closed on its worker.
    pub(crate) async fn end(mut self) -> ChatContext {
        drop(self.speaker.take());
        let history = match self.session.context().await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(session = %self.session.id(), error = %e, "call: the history could not be read");
                ChatContext::new()
            }
        };
        if let Err(e) = self.session.close().await {
            tracing::warn!(session = %self.session.id(), error = %e, "call: the session could not be closed");
        }
        history
    }
}

/// Sends a call's speech inputs in order, each retried while no worker owns
/// the session (a failover) and, idempotent as they are, up to twice more on
/// a timeout (a dead machine's subscription lingers until the server's ping
/// timeout); one refused (a report of a turn a failover ended) is skipped.
async fn send_inputs(session: RemoteSession, mut queue: InputReceiver) {
    while let Some(inputs) = queue.next().await {
        for input in inputs {
            for attempt in 0..3 {
                let sent = match &input {
                    SpeechInput::SpeechStarted => session.user_speech_started().await,
                    SpeechInput::SpeechEnded => session.user_speech_ended().await,
                    SpeechInput::Transcript { text, is_final } => {
                        session.user_transcript(text.clone(), *is_final).await
                    }
                    SpeechInput::Played { turn, chars } => {
                        session.speech_played(*turn, *chars).await
                    }
                };
                match sent {
                    Ok(_) => break,
                    Err(ClusterError::Timeout(_)) if attempt < 2 => continue,
                    Err(e) => {
                        metrics::counter!("colloquy_call_inputs_refused_total").increment(1);
                        tracing::debug!(session = %session.id(), error = %e, "call: a speech input was refused");
                        break;
                    }
                }
            }
        }
    }
}
