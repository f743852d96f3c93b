//! The speech flags of `voice_server` and `voice_agent --audio`: which
//! engine hears and which speaks, each hosted one backed by the offline
//! engine (PocketSphinx, espeak-ng) in a fallback chain.
//!
//! `auto` (the default) picks a hosted engine when its key is in the
//! environment (`DEEPGRAM_API_KEY`, then `OPENAI_API_KEY`, for hearing;
//! `ELEVENLABS_API_KEY` with `ELEVENLABS_VOICE_ID`, then `OPENAI_API_KEY`,
//! for speaking), else the offline one.
#![allow(dead_code)]

use std::sync::Arc;

use colloquy::Secret;
use colloquy::audio::chain::{SynthesizerChain, TranscriberChain};
use colloquy::audio::espeak::{Espeak, EspeakConfig};
use colloquy::audio::openai::{
    OpenAiAudioEndpoint, OpenAiSpeech, OpenAiSpeechConfig, OpenAiTranscription,
    OpenAiTranscriptionConfig,
};
use colloquy::audio::pocketsphinx::{PocketSphinx, PocketSphinxConfig};
use colloquy::audio::{AudioError, Synthesizer, Transcriber};

/// Which engines hear and speak.
#[derive(clap::Args, Debug, Clone)]
pub struct SpeechFlags {
    /// Who hears the caller: auto, pocketsphinx, openai (any
    /// OpenAI-compatible /audio/transcriptions), deepgram
    #[arg(long, value_name = "ENGINE", default_value = "auto")]
    pub stt: String,
    /// Who speaks: auto, espeak, openai (any OpenAI-compatible
    /// /audio/speech), elevenlabs
    #[arg(long, value_name = "ENGINE", default_value = "auto")]
    pub tts: String,
    /// Base URL of the OpenAI-compatible speech server, up to /v1 (default
    /// https://api.openai.com/v1; a local speaches or whisper.cpp server)
    #[arg(long, value_name = "URL")]
    pub speech_base_url: Option<String>,
    /// Transcription model (default gpt-4o-mini-transcribe)
    #[arg(long, value_name = "M", default_value = "gpt-4o-mini-transcribe")]
    pub stt_model: String,
    /// Speech model (default gpt-4o-mini-tts)
    #[arg(long, value_name = "M", default_value = "gpt-4o-mini-tts")]
    pub tts_model: String,
    /// The hosted voice (OpenAI: alloy, coral, …; ElevenLabs: a voice id,
    /// default $ELEVENLABS_VOICE_ID)
    #[arg(long, value_name = "VOICE")]
    pub tts_voice: Option<String>,
}

/// The engines chosen, and a line saying which serves each side.
pub struct Speech {
    /// What hears.
    pub ears: Arc<dyn Transcriber>,
    /// What speaks.
    pub voice: Arc<dyn Synthesizer>,
    /// `hears: …; speaks: …`.
    pub summary: String,
}

fn env_key(var: &str) -> Option<Secret> {
    Secret::from_env(var)
}

impl SpeechFlags {
    fn openai_endpoint(&self) -> Result<OpenAiAudioEndpoint, AudioError> {
        match (&self.speech_base_url, env_key("OPENAI_API_KEY")) {
            (Some(url), Some(key)) => Ok(OpenAiAudioEndpoint::compatible(url.clone())
                .with_auth(colloquy::audio::openai::AudioAuth::Bearer(key))),
            (Some(url), None) => Ok(OpenAiAudioEndpoint::compatible(url.clone())),
            (None, Some(key)) => Ok(OpenAiAudioEndpoint::openai(key)),
            (None, None) => Err(AudioError::engine(
                "openai",
                "OPENAI_API_KEY is not set (or give --speech-base-url for a local server)",
            )),
        }
    }

    /// Builds the engines: the hosted one first, the offline one behind it.
    /// `espeak_voice` is espeak-ng's voice for the agent.
    pub fn build(
        &self,
        espeak_voice: &str,
        pocketsphinx: PocketSphinxConfig,
    ) -> Result<Speech, AudioError> {
        let local_ears = PocketSphinx::new(pocketsphinx)?;
        let local_voice = Espeak::new(EspeakConfig {
            voice: espeak_voice.to_string(),
            ..EspeakConfig::default()
        })?;
        let stt = match self.stt.as_str() {
            "auto" if env_key("DEEPGRAM_API_KEY").is_some() => "deepgram",
            "auto" if env_key("OPENAI_API_KEY").is_some() || self.speech_base_url.is_some() => {
                "openai"
            }
            "auto" => "pocketsphinx",
            other => other,
        };
        let (ears, hears): (Arc<dyn Transcriber>, String) = match stt {
            "pocketsphinx" => (Arc::new(local_ears), "pocketsphinx".into()),
            "openai" => {
                let c = OpenAiTranscriptionConfig::new(self.openai_endpoint()?, &self.stt_model);
                let chain = TranscriberChain::new(OpenAiTranscription::new(c)?).then(local_ears);
                (
                    Arc::new(chain),
                    format!(
                        "openai-transcription {} (fallback pocketsphinx)",
                        self.stt_model
                    ),
                )
            }
            "deepgram" => deepgram(local_ears)?,
            other => {
                return Err(AudioError::engine(
                    "speech flags",
                    format!("--stt must be auto, pocketsphinx, openai or deepgram, not {other:?}"),
                ));
            }
        };
        let tts = match self.tts.as_str() {
            "auto"
                if env_key("ELEVENLABS_API_KEY").is_some()
                    && (self.tts_voice.is_some()
                        || std::env::var("ELEVENLABS_VOICE_ID").is_ok_and(|v| !v.is_empty())) =>
            {
                "elevenlabs"
            }
            "auto" if env_key("OPENAI_API_KEY").is_some() || self.speech_base_url.is_some() => {
                "openai"
            }
            "auto" => "espeak",
            other => other,
        };
        let (voice, speaks): (Arc<dyn Synthesizer>, String) = match tts {
            "espeak" => (Arc::new(local_voice), "espeak-ng".into()),
            "openai" => {
                let voice = self.tts_voice.clone().unwrap_or_else(|| "alloy".into());
                let c = OpenAiSpeechConfig::new(self.openai_endpoint()?, &self.tts_model, &voice);
                let chain = SynthesizerChain::new(OpenAiSpeech::new(c)?).then(local_voice);
                (
                    Arc::new(chain),
                    format!(
                        "openai-speech {} {voice} (estimated alignment; fallback espeak-ng)",
                        self.tts_model
                    ),
                )
            }
            "elevenlabs" => elevenlabs(self.tts_voice.clone(), local_voice)?,
            other => {
                return Err(AudioError::engine(
                    "speech flags",
                    format!("--tts must be auto, espeak, openai or elevenlabs, not {other:?}"),
                ));
            }
        };
        Ok(Speech {
            ears,
            voice,
            summary: format!("hears: {hears}; speaks: {speaks}"),
        })
    }
}

#[cfg(feature = "deepgram")]
fn deepgram(local: PocketSphinx) -> Result<(Arc<dyn Transcriber>, String), AudioError> {
    use colloquy::audio::deepgram::{DeepgramConfig, DeepgramTranscriber};
    let config = DeepgramConfig::from_env();
    if config.key.is_none() {
        return Err(AudioError::engine(
            "speech flags",
            "DEEPGRAM_API_KEY is not set",
        ));
    }
    let model = config.model.clone();
    let chain = TranscriberChain::new(DeepgramTranscriber::new(config)?).then(local);
    Ok((
        Arc::new(chain),
        format!("deepgram {model} (live, interims; fallback pocketsphinx)"),
    ))
}

#[cfg(not(feature = "deepgram"))]
fn deepgram(_local: PocketSphinx) -> Result<(Arc<dyn Transcriber>, String), AudioError> {
    Err(AudioError::engine(
        "speech flags",
        "deepgram needs the `deepgram` cargo feature",
    ))
}

#[cfg(feature = "elevenlabs")]
fn elevenlabs(
    voice: Option<String>,
    local: Espeak,
) -> Result<(Arc<dyn Synthesizer>, String), AudioError> {
    use colloquy::audio::elevenlabs::{ElevenLabsConfig, ElevenLabsSpeech};
    let voice = voice
        .or_else(|| std::env::var("ELEVENLABS_VOICE_ID").ok())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            AudioError::engine(
                "speech flags",
                "elevenlabs needs a voice: --tts-voice or ELEVENLABS_VOICE_ID",
            )
        })?;
    let config = ElevenLabsConfig::from_env(voice.clone())
        .ok_or_else(|| AudioError::engine("speech flags", "ELEVENLABS_API_KEY is not set"))?;
    let chain = SynthesizerChain::new(ElevenLabsSpeech::new(config)?).then(local);
    Ok((
        Arc::new(chain),
        format!("elevenlabs {voice} (provider timestamps; fallback espeak-ng)"),
    ))
}

#[cfg(not(feature = "elevenlabs"))]
fn elevenlabs(
    _voice: Option<String>,
    _local: Espeak,
) -> Result<(Arc<dyn Synthesizer>, String), AudioError> {
    Err(AudioError::engine(
        "speech flags",
        "elevenlabs needs the `elevenlabs` cargo feature",
    ))
}
