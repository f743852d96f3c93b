//! What a Deepgram stream asks for, and what it holds the provider to.
//!
//! Everything the service is told travels in the upgrade request's query
//! (model, encoding, rate, endpointing, …); everything the client enforces
//! (keep-alives, deadlines, reconnects, the audio it keeps for a resend) is
//! here too, so one value describes a stream completely.

use std::time::Duration;

use crate::secret::Secret;

/// How the audio is encoded on the socket. Frames always arrive as PCM16;
/// µ-law is encoded by the client (half the bytes, the phone network's
/// codec).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DeepgramEncoding {
    /// `linear16`: PCM16 little-endian.
    #[default]
    Linear16,
    /// `mulaw`: G.711 µ-law, one byte a sample.
    Mulaw,
}

impl DeepgramEncoding {
    /// The `encoding` query value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Linear16 => "linear16",
            Self::Mulaw => "mulaw",
        }
    }

    /// Bytes on the wire for one sample.
    pub fn bytes_per_sample(self) -> usize {
        match self {
            Self::Linear16 => 2,
            Self::Mulaw => 1,
        }
    }
}

/// How [`DeepgramTranscriber`](super::DeepgramTranscriber) talks to
/// Deepgram's live endpoint. Its `Debug` shows the URL without user info or
/// query ([`display_url`](crate::secret::display_url)) and no key.
#[derive(Clone)]
pub struct DeepgramConfig {
    /// The socket's URL without a query (`wss://api.deepgram.com/v1/listen`;
    /// `ws://127.0.0.1:PORT/v1/listen` for the mock or a self-hosted server).
    pub base_url: String,
    /// `Authorization: Token KEY`; `None` sends no credential (a self-hosted
    /// server).
    pub key: Option<Secret>,
    /// `model` (`nova-3`, `nova-2-phonecall`, …).
    pub model: String,
    /// `language` (`en`, `multi`, …); `None` leaves the model's default.
    pub language: Option<String>,
    /// `encoding`.
    pub encoding: DeepgramEncoding,
    /// `sample_rate`: the rate frames must arrive at.
    pub sample_rate: u32,
    /// `interim_results`: transcripts while the words may still change.
    pub interim_results: bool,
    /// `endpointing` in milliseconds (`None` sends `endpointing=false`).
    pub endpointing_ms: Option<u32>,
    /// `utterance_end_ms` (`None` leaves it out); Deepgram's
    /// `UtteranceEnd` only closes an utterance whose `Finalize` answer went
    /// missing.
    pub utterance_end_ms: Option<u32>,
    /// `vad_events`: Deepgram's `SpeechStarted` (logged, never used for
    /// turn-taking).
    pub vad_events: bool,
    /// `smart_format`: punctuation, numerals, casing.
    pub smart_format: bool,
    /// A `KeepAlive` goes out whenever no audio was sent for this long
    /// (Deepgram closes a socket that hears nothing for about 10 s).
    pub keep_alive: Duration,
    /// Connecting, TLS and the upgrade included.
    pub connect_timeout: Duration,
    /// Once an utterance's audio is sent, its first result is due within
    /// this; after its `Finalize`, its final is.
    pub first_result_timeout: Duration,
    /// While audio keeps flowing, between an utterance's results.
    pub result_gap_timeout: Duration,
    /// After `CloseStream`, how long the server has to close the socket.
    pub close_timeout: Duration,
    /// How often a socket lost mid-utterance is reconnected (the
    /// utterance's audio is sent again).
    pub reconnect_attempts: u32,
    /// The wait between reconnect attempts (the first is at once); doubled
    /// for each next one.
    pub reconnect_backoff: Duration,
    /// The most audio kept for a resend; beyond it the oldest is dropped.
    pub max_buffered: Duration,
}

impl std::fmt::Debug for DeepgramConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured: a field added later does not compile until shown here.
        let Self {
            base_url,
            key,
            model,
            language,
            encoding,
            sample_rate,
            interim_results,
            endpointing_ms,
            utterance_end_ms,
            vad_events,
            smart_format,
            keep_alive,
            connect_timeout,
            first_result_timeout,
            result_gap_timeout,
            close_timeout,
            reconnect_attempts,
            reconnect_backoff,
            max_buffered,
        } = self;
        f.debug_struct("DeepgramConfig")
            .field("base_url", &crate::secret::display_url(base_url))
            .field("key", key)
            .field("model", model)
            .field("language", language)
            .field("encoding", encoding)
            .field("sample_rate", sample_rate)
            .field("interim_results", interim_results)
            .field("endpointing_ms", endpointing_ms)
            .field("utterance_end_ms", utterance_end_ms)
            .field("vad_events", vad_events)
            .field("smart_format", smart_format)
            .field("keep_alive", keep_alive)
            .field("connect_timeout", connect_timeout)
            .field("first_result_timeout", first_result_timeout)
            .field("result_gap_timeout", result_gap_timeout)
            .field("close_timeout", close_timeout)
            .field("reconnect_attempts", reconnect_attempts)
            .field("reconnect_backoff", reconnect_backoff)
            .field("max_buffered", max_buffered)
            .finish()
    }
}

impl Default for DeepgramConfig {
    fn default() -> Self {
        Self {
            base_url: "wss://api.deepgram.com/v1/listen".into(),
            key: None,
            model: "nova-3".into(),
            language: None,
            encoding: DeepgramEncoding::Linear16,
            sample_rate: 16_000,
            interim_results: true,
            endpointing_ms: Some(300),
            utterance_end_ms: Some(1000),
            vad_events: true,
            smart_format: true,
            keep_alive: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(5),
            first_result_timeout: Duration::from_secs(5),
            result_gap_timeout: Duration::from_secs(3),
            close_timeout: Duration::from_secs(5),
            reconnect_attempts: 2,
            reconnect_backoff: Duration::from_millis(100),
            max_buffered: Duration::from_secs(30),
        }
    }
}

impl DeepgramConfig {
    /// Deepgram itself with this key: `nova-3`, 16 kHz PCM16, interims.
    pub fn new(key: impl Into<Secret>) -> Self {
        Self {
            key: Some(key.into()),
            ..Self::default()
        }
    }

    /// Deepgram with `DEEPGRAM_API_KEY` (no key when unset or empty: the
    /// upgrade is then refused with [`Unauthorized`](crate::audio::SpeechFailure::Unauthorized)).
    pub fn from_env() -> Self {
        Self {
            key: Secret::from_env("DEEPGRAM_API_KEY"),
            ..Self::default()
        }
    }

    /// The same stream at another URL (the mock, a self-hosted server).
    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }

    /// The same stream in this language.
    pub fn with_language(mut self, language: impl Into<String>) -> Self {
        self.language = Some(language.into());
        self
    }

    /// The same stream with this model.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    /// The same stream at this rate and encoding.
    pub fn with_audio(mut self, encoding: DeepgramEncoding, sample_rate: u32) -> Self {
        self.encoding = encoding;
        self.sample_rate = sample_rate;
        self
    }

    /// The same stream with these deadlines on results.
    pub fn with_deadlines(mut self, first_result: Duration, result_gap: Duration) -> Self {
        self.first_result_timeout = first_result;
        self.result_gap_timeout = result_gap;
        self
    }

    /// The upgrade request's URL, query included (never the key).
    pub fn url(&self) -> String {
        let mut url = format!(
            "{}?model={}&encoding={}&sample_rate={}&channels=1&interim_results={}",
            self.base_url.trim_end_matches(['?', '/']),
            encode(&self.model),
            self.encoding.as_str(),
            self.sample_rate,
            self.interim_results,
        );
        match self.endpointing_ms {
            Some(ms) => url.push_str(&format!("&endpointing={ms}")),
            None => url.push_str("&endpointing=false"),
        }
        if let Some(ms) = self.utterance_end_ms {
            url.push_str(&format!("&utterance_end_ms={ms}"));
        }
        url.push_str(&format!(
            "&vad_events={}&smart_format={}",
            self.vad_events, self.smart_format
        ));
        if let Some(l) = &self.language {
            url.push_str(&format!("&language={}", encode(l)));
        }
        url
    }
}

/// Percent-encodes a query value (model and language names are plain, but
/// a stray `&` must not add a parameter).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_carries_the_documented_query() {
        let c = DeepgramConfig::new("k").with_language("en");
        assert_eq!(
            c.url(),
            "wss://api.deepgram.com/v1/listen?model=nova-3&encoding=linear16&sample_rate=16000\
             &channels=1&interim_results=true&endpointing=300&utterance_end_ms=1000\
             &vad_events=true&smart_format=true&language=en"
        );
        let c = DeepgramConfig {
            endpointing_ms: None,
            utterance_end_ms: None,
            ..DeepgramConfig::default().with_audio(DeepgramEncoding::Mulaw, 8000)
        }
        .with_model("a&b");
        assert!(
            c.url()
                .contains("model=a%26b&encoding=mulaw&sample_rate=8000")
        );
        assert!(c.url().contains("endpointing=false&vad_events"));
        assert!(!format!("{:?}", DeepgramConfig::new("sk-distinct")).contains("sk-distinct"));
    }
}
