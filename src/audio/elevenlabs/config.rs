//! What [`ElevenLabsSpeech`](super::ElevenLabsSpeech) connects to and how
//! it asks for speech: plain data, so an embedder can build it from its own
//! configuration, print it (the key shows as `***`) and clone it per call.

use std::time::Duration;

use crate::secret::Secret;

/// The raw PCM rates the socket can stream (`output_format=pcm_<rate>`,
/// mono 16-bit little endian). Compressed formats (MP3, µ-law) are not
/// offered: the alignment is counted in samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PcmRate {
    /// 16 kHz.
    Hz16000,
    /// 22.05 kHz.
    Hz22050,
    /// 24 kHz (the default).
    #[default]
    Hz24000,
    /// 44.1 kHz (a paid tier on ElevenLabs).
    Hz44100,
}

impl PcmRate {
    /// The rate in Hz.
    pub fn hz(self) -> u32 {
        match self {
            Self::Hz16000 => 16_000,
            Self::Hz22050 => 22_050,
            Self::Hz24000 => 24_000,
            Self::Hz44100 => 44_100,
        }
    }

    /// The rate for `hz`, if the socket offers it.
    pub fn from_hz(hz: u32) -> Option<Self> {
        [Self::Hz16000, Self::Hz22050, Self::Hz24000, Self::Hz44100]
            .into_iter()
            .find(|r| r.hz() == hz)
    }

    /// The `output_format` query value (`pcm_24000`).
    pub fn output_format(self) -> String {
        format!("pcm_{}", self.hz())
    }
}

/// `voice_settings` of the first message; `None` fields are left to the
/// voice's stored settings.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct VoiceSettings {
    /// `stability` (0–1).
    pub stability: Option<f32>,
    /// `similarity_boost` (0–1).
    pub similarity_boost: Option<f32>,
    /// `speed` (0.7–1.2 on ElevenLabs; 1.0 is the voice's own).
    pub speed: Option<f32>,
}

/// Where ElevenLabs is, which voice speaks, and the deadlines it is held to.
/// Its `Debug` shows the URL without user info or query
/// ([`display_url`](crate::secret::display_url)) and no key.
#[derive(Clone)]
pub struct ElevenLabsConfig {
    /// Up to `/v1`: `wss://api.elevenlabs.io/v1` (a regional or mock server
    /// otherwise; `ws://` is accepted for local servers).
    pub base_url: String,
    /// The voice (`voice_id` in the path).
    pub voice_id: String,
    /// `model_id` (`eleven_flash_v2_5`, `eleven_turbo_v2_5`, …).
    pub model_id: String,
    /// The `xi-api-key` header.
    pub key: Secret,
    /// The PCM rate asked for.
    pub rate: PcmRate,
    /// Sent in the first message when set.
    pub voice_settings: Option<VoiceSettings>,
    /// `generation_config.chunk_length_schedule` in the first message when
    /// set (characters buffered before each generation; every text is
    /// flushed anyway, so this matters only for long texts).
    pub chunk_length_schedule: Option<Vec<u32>>,
    /// `inactivity_timeout` in the query when set (whole seconds; the
    /// server's default is 20).
    pub inactivity_timeout: Option<Duration>,
    /// TCP, TLS and the WebSocket upgrade.
    pub connect_timeout: Duration,
    /// The first audio after the text was sent.
    pub first_audio_timeout: Duration,
    /// Between audio messages once they began; pings and messages without
    /// audio do not count.
    pub gap_timeout: Duration,
}

impl std::fmt::Debug for ElevenLabsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured: a field added later does not compile until shown here.
        let Self {
            base_url,
            voice_id,
            model_id,
            key,
            rate,
            voice_settings,
            chunk_length_schedule,
            inactivity_timeout,
            connect_timeout,
            first_audio_timeout,
            gap_timeout,
        } = self;
        f.debug_struct("ElevenLabsConfig")
            .field("base_url", &crate::secret::display_url(base_url))
            .field("voice_id", voice_id)
            .field("model_id", model_id)
            .field("key", key)
            .field("rate", rate)
            .field("voice_settings", voice_settings)
            .field("chunk_length_schedule", chunk_length_schedule)
            .field("inactivity_timeout", inactivity_timeout)
            .field("connect_timeout", connect_timeout)
            .field("first_audio_timeout", first_audio_timeout)
            .field("gap_timeout", gap_timeout)
            .finish()
    }
}

impl ElevenLabsConfig {
    /// `voice_id` with this key on `wss://api.elevenlabs.io/v1`,
    /// `eleven_flash_v2_5` at 24 kHz, deadlines 5 s on the first audio and
    /// 2 s on the gaps, 5 s to connect.
    pub fn new(voice_id: impl Into<String>, key: impl Into<Secret>) -> Self {
        Self {
            base_url: "wss://api.elevenlabs.io/v1".into(),
            voice_id: voice_id.into(),
            model_id: "eleven_flash_v2_5".into(),
            key: key.into(),
            rate: PcmRate::default(),
            voice_settings: None,
            chunk_length_schedule: None,
            inactivity_timeout: None,
            connect_timeout: Duration::from_secs(5),
            first_audio_timeout: Duration::from_secs(5),
            gap_timeout: Duration::from_secs(2),
        }
    }

    /// [`ElevenLabsConfig::new`] with `ELEVENLABS_API_KEY` (`None` when
    /// unset or empty).
    pub fn from_env(voice_id: impl Into<String>) -> Option<Self> {
        Secret::from_env("ELEVENLABS_API_KEY").map(|k| Self::new(voice_id, k))
    }

    /// The same with another base URL (up to `/v1`).
    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }

    /// The same with another model.
    pub fn with_model(mut self, model_id: impl Into<String>) -> Self {
        self.model_id = model_id.into();
        self
    }

    /// The same at another PCM rate.
    pub fn with_rate(mut self, rate: PcmRate) -> Self {
        self.rate = rate;
        self
    }

    /// The same with these voice settings.
    pub fn with_voice_settings(mut self, settings: VoiceSettings) -> Self {
        self.voice_settings = Some(settings);
        self
    }

    /// The same with these deadlines on the first audio and on the gaps
    /// after it.
    pub fn with_deadlines(mut self, first_audio: Duration, gap: Duration) -> Self {
        self.first_audio_timeout = first_audio;
        self.gap_timeout = gap;
        self
    }

    /// The socket's URL, without credentials (they go in a header).
    pub(crate) fn url(&self) -> String {
        let mut url = format!(
            "{}/text-to-speech/{}/stream-input?model_id={}&output_format={}&sync_alignment=true",
            self.base_url.trim_end_matches('/'),
            self.voice_id,
            self.model_id,
            self.rate.output_format(),
        );
        if let Some(t) = self.inactivity_timeout {
            url.push_str(&format!("&inactivity_timeout={}", t.as_secs().max(1)));
        }
        url
    }
}

/// Whether `id` can go in a path or a query as it is (ElevenLabs' ids are
/// alphanumeric with `_` and `-`).
pub(crate) fn is_plain_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_and_debug() {
        let mut c = ElevenLabsConfig::new("v1", "xi-secret-key-123").with_rate(PcmRate::Hz16000);
        c.inactivity_timeout = Some(Duration::from_secs(30));
        assert_eq!(
            c.url(),
            "wss://api.elevenlabs.io/v1/text-to-speech/v1/stream-input?model_id=eleven_flash_v2_5\
             &output_format=pcm_16000&sync_alignment=true&inactivity_timeout=30"
        );
        assert!(!format!("{c:?}").contains("xi-secret-key-123"));
        assert_eq!(PcmRate::from_hz(22_050), Some(PcmRate::Hz22050));
        assert_eq!(PcmRate::from_hz(8_000), None);
        assert!(is_plain_id("21m00Tcm4TlvDq8ikWAM") && !is_plain_id("a/b?c") && !is_plain_id(""));
    }
}
