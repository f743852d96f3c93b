//! `POST /v1/audio/transcriptions` as a [`Transcriber`]: once per utterance
//! the voice activity detector closes, its audio (from the pre-roll to the
//! end) is sent as a WAV in a multipart form (`file`, `model`, `language`,
//! `prompt`, `response_format`).
//!
//! With [`OpenAiTranscriptionConfig::stream`] (models that stream:
//! `gpt-4o-transcribe`, `gpt-4o-mini-transcribe`) the reply is an event
//! stream of `transcript.text.delta` (each an interim: the text so far) and
//! `transcript.text.done` (the final); otherwise a JSON `{"text": …}` (or the
//! plain text of `response_format: text`) is the final.
//!
//! Utterances are sent one at a time, in order, while the next one's audio
//! keeps arriving; an utterance longer than
//! [`OpenAiTranscriptionConfig::max_utterance`] is sent at that length (the
//! rest is counted and dropped, never buffered without bound). A failed
//! request is one `Err` on the transcripts; the stream goes on with the next
//! utterance.

use std::collections::VecDeque;
use std::io::Cursor;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::sync::mpsc;

use super::{OpenAiAudioEndpoint, connection_failure, failure_of, redact};
use crate::audio::{
    AudioError, AudioFrame, Recognition, RecognizerInput, SpeechFailure, Transcriber, Transcript,
    duration_to_samples, wav,
};

const PROVIDER: &str = "openai-transcription";

/// The most bytes of one reply (an event stream or a JSON body).
const MAX_REPLY_BYTES: usize = 1 << 20;

/// How [`OpenAiTranscription`] asks for transcripts.
#[derive(Clone, Debug)]
pub struct OpenAiTranscriptionConfig {
    /// Where, and with which key.
    pub endpoint: OpenAiAudioEndpoint,
    /// `model` (`gpt-4o-mini-transcribe`, `whisper-1`,
    /// `Systran/faster-whisper-small` on speaches, …).
    pub model: String,
    /// `language` (ISO-639-1), when known.
    pub language: Option<String>,
    /// `prompt`: words to expect, the conversation so far.
    pub prompt: Option<String>,
    /// `stream=true`: deltas as interims (models that stream).
    pub stream: bool,
    /// The rate the audio is sent at.
    pub sample_rate: u32,
    /// The longest utterance sent.
    pub max_utterance: Duration,
}

impl OpenAiTranscriptionConfig {
    /// `model` at `endpoint`: 16 kHz, no streaming, 60 s at most.
    pub fn new(endpoint: OpenAiAudioEndpoint, model: impl Into<String>) -> Self {
        Self {
            endpoint,
            model: model.into(),
            language: None,
            prompt: None,
            stream: false,
            sample_rate: 16_000,
            max_utterance: Duration::from_secs(60),
        }
    }
}

/// OpenAI-compatible transcription, one request per utterance. Cheap to
/// clone; one connection pool for every stream.
#[derive(Clone, Debug)]
pub struct OpenAiTranscription {
    config: std::sync::Arc<OpenAiTranscriptionConfig>,
    http: reqwest::Client,
}

impl OpenAiTranscription {
    /// A transcriber for `config` (no request is made yet).
    pub fn new(config: OpenAiTranscriptionConfig) -> Result<Self, AudioError> {
        let http = config.endpoint.client(PROVIDER)?;
        Ok(Self {
            config: std::sync::Arc::new(config),
            http,
        })
    }
}

impl Transcriber for OpenAiTranscription {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn sample_rate(&self) -> u32 {
        self.config.sample_rate
    }

    /// Starts the stream's task (call it inside a Tokio runtime).
    fn open(&self) -> Result<Recognition, AudioError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            AudioError::engine(PROVIDER, "open() needs a Tokio runtime to run requests")
        })?;
        let (input, input_rx) = mpsc::channel(256);
        let (out, transcripts) = mpsc::channel(64);
        let this = self.clone();
        runtime.spawn(async move { this.run(input_rx, out).await });
        Ok(Recognition { input, transcripts })
    }
}

/// One utterance's audio.
struct Utterance {
    start: u64,
    end: u64,
    samples: Vec<i16>,
}

type Replies = BoxStream<'static, Result<Transcript, AudioError>>;

impl OpenAiTranscription {
    async fn run(
        self,
        mut input: mpsc::Receiver<RecognizerInput>,
        out: mpsc::Sender<Result<Transcript, AudioError>>,
    ) {
        let cap = duration_to_samples(self.config.max_utterance, self.config.sample_rate) as usize;
        let mut open: Option<Utterance> = None;
        let mut queue: VecDeque<Utterance> = VecDeque::new();
        let mut sending: Option<Replies> = None;
        let mut input_open = true;
        loop {
            if sending.is_none() {
                sending = queue.pop_front().map(|u| self.request(u));
            }
            if !input_open && sending.is_none() {
                return;
            }
            tokio::select! {
                next = input.recv(), if input_open => match next {
                    Some(RecognizerInput::SpeechStarted { position }) => {
                        queue.extend(open.take());
                        open = Some(Utterance { start: position, end: position, samples: Vec::new() });
                    }
                    Some(RecognizerInput::Frame(f)) => {
                        if let Some(u) = &mut open { append(u, &f, cap); }
                    }
                    Some(RecognizerInput::SpeechEnded { position }) => {
                        if let Some(mut u) = open.take() {
                            u.end = u.end.max(position);
                            queue.push_back(u);
                        }
                    }
                    None => {
                        input_open = false;
                        queue.extend(open.take());
                    }
                },
                reply = async { sending.as_mut()?.next().await }, if sending.is_some() => match reply {
                    Some(t) => {
                        let is_final = matches!(&t, Ok(t) if t.is_final) || t.is_err();
                        if is_final {
                            sending = None;
                        }
                        if out.send(t).await.is_err() {
                            return;
                        }
                    }
                    None => sending = None,
                },
            }
        }
    }

    /// The request for one utterance, as the transcripts it gives.
    fn request(&self, u: Utterance) -> Replies {
        let c = self.config.clone();
        let key = c.endpoint.key().map(str::to_string);
        let http = self.http.clone();
        let (start, end) = (u.start, u.end.max(u.start + u.samples.len() as u64));
        let fail = move |f: SpeechFailure| Err(AudioError::provider(PROVIDER, f));
        let send = async move {
            let mut file = Cursor::new(Vec::new());
            wav::write(&mut file, c.sample_rate, &[&u.samples])?;
            let part = reqwest::multipart::Part::bytes(file.into_inner())
                .file_name("utterance.wav")
                .mime_str("audio/wav")
                .map_err(|e| AudioError::engine(PROVIDER, e.to_string()))?;
            let mut form = reqwest::multipart::Form::new()
                .part("file", part)
                .text("model", c.model.clone())
                .text("response_format", "json");
            if let Some(l) = &c.language {
                form = form.text("language", l.clone());
            }
            if let Some(p) = &c.prompt {
                form = form.text("prompt", p.clone());
            }
            if c.stream {
                form = form.text("stream", "true");
            }
            let first = c.endpoint.first_output_timeout;
            let sent = http
                .post(c.endpoint.url("audio/transcriptions"))
                .multipart(form)
                .send();
            match tokio::time::timeout(first, sent).await {
                Err(_) => fail(SpeechFailure::FirstOutputTimeout(first)),
                Ok(Err(e)) => fail(connection_failure(e)),
                Ok(Ok(r)) if !r.status().is_success() => fail(failure_of(r, key.as_deref()).await),
                Ok(Ok(r)) => Ok(r),
            }
        };
        let c = self.config.clone();
        stream::once(send)
            .flat_map(move |sent| match sent {
                Err(e) => stream::once(async { Err(e) }).boxed(),
                Ok(r) => replies(r, &c, start, end),
            })
            .boxed()
    }
}

fn append(u: &mut Utterance, f: &AudioFrame, cap: usize) {
    let room = cap.saturating_sub(u.samples.len());
    u.samples
        .extend_from_slice(&f.samples()[..f.len().min(room)]);
    u.end = u.end.max(f.end());
}

/// The transcripts of a successful reply.
fn replies(r: reqwest::Response, c: &OpenAiTranscriptionConfig, start: u64, end: u64) -> Replies {
    let (first, gap) = (
        c.endpoint.first_output_timeout,
        c.endpoint.output_gap_timeout,
    );
    let event_stream = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let transcript = move |text: String, is_final: bool| Transcript {
        text,
        is_final,
        start,
        end,
    };
    let key = c.endpoint.key().map(str::to_string);
    let mut seen = 0usize;
    let body = r.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(|e| e.without_url().to_string())?;
        seen += chunk.len();
        if seen > MAX_REPLY_BYTES {
            return Err("too large".to_string());
        }
        Ok(chunk)
    });
    if !event_stream {
        let read = async move {
            let mut body = Box::pin(body);
            let mut bytes = Vec::new();
            loop {
                match tokio::time::timeout(first, body.next()).await {
                    Err(_) => return Err(SpeechFailure::FirstOutputTimeout(first)),
                    Ok(None) => break,
                    Ok(Some(Ok(b))) => bytes.extend_from_slice(&b),
                    Ok(Some(Err(e))) if e == "too large" => {
                        return Err(SpeechFailure::TooLarge {
                            limit: MAX_REPLY_BYTES,
                        });
                    }
                    Ok(Some(Err(e))) => return Err(SpeechFailure::Connection(e)),
                }
            }
            let text = String::from_utf8_lossy(&bytes).into_owned();
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(v) => v["text"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| SpeechFailure::Malformed("a JSON reply without text".into())),
                // `response_format: text` servers answer with the words.
                Err(_) if !text.trim_start().starts_with(['{', '[']) => Ok(text.trim().to_string()),
                Err(e) => Err(SpeechFailure::Malformed(redact(
                    &e.to_string(),
                    key.as_deref(),
                ))),
            }
        };
        return stream::once(async move {
            read.await
                .map(|text| transcript(text, true))
                .map_err(|f| AudioError::provider(PROVIDER, f))
        })
        .boxed();
    }
    // An event stream: deltas accumulate into interims, `done` is the final.
    let events = body.eventsource();
    let state = (Box::pin(events), String::new(), false, false);
    stream::unfold(state, move |(mut events, mut text, got, done)| {
        let key = key.clone();
        async move {
            if done {
                return None;
            }
            let deadline = if got { gap } else { first };
            let outcome = loop {
                let next = match tokio::time::timeout(deadline, events.next()).await {
                    Err(_) if got => break Err(SpeechFailure::OutputGapTimeout(deadline)),
                    Err(_) => break Err(SpeechFailure::FirstOutputTimeout(deadline)),
                    Ok(None) => break Err(SpeechFailure::Dropped),
                    Ok(Some(Err(e))) => {
                        let e = e.to_string();
                        break Err(if e.contains("too large") {
                            SpeechFailure::TooLarge {
                                limit: MAX_REPLY_BYTES,
                            }
                        } else {
                            SpeechFailure::Connection(e)
                        });
                    }
                    Ok(Some(Ok(ev))) => ev,
                };
                let v: serde_json::Value = match serde_json::from_str(&next.data) {
                    Ok(v) => v,
                    Err(_) if next.data.trim() == "[DONE]" => continue,
                    Err(e) => {
                        break Err(SpeechFailure::Malformed(redact(
                            &e.to_string(),
                            key.as_deref(),
                        )));
                    }
                };
                match v["type"].as_str() {
                    Some("transcript.text.delta") => {
                        text.push_str(v["delta"].as_str().unwrap_or(""));
                        break Ok(transcript(text.clone(), false));
                    }
                    Some("transcript.text.done") => {
                        let done_text = v["text"].as_str().map_or(text.clone(), str::to_string);
                        break Ok(transcript(done_text, true));
                    }
                    Some("error") => {
                        let message = v["error"]["message"].as_str().unwrap_or("error event");
                        break Err(SpeechFailure::Status {
                            status: 0,
                            message: redact(message, key.as_deref()),
                        });
                    }
                    // Other events (logprobs, usage-only) carry no words.
                    _ => continue,
                }
            };
            let ends = !matches!(&outcome, Ok(t) if !t.is_final);
            let item = outcome.map_err(|f| AudioError::provider(PROVIDER, f));
            Some((item, (events, text, true, ends)))
        }
    })
    .boxed()
}
