//! Twilio Media Streams messages, as JSON: what Twilio sends (`connected`,
//! `start`, `media`, `mark`, `dtmf`, `stop`) and what the server sends back
//! (`media`, `mark`, `clear`). Audio is base64 µ-law at 8 kHz, mono.

use base64::Engine;
use serde::Deserialize;

use crate::calls::CallError;

/// A message from Twilio.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
#[non_exhaustive]
pub enum Inbound {
    /// The socket is open.
    Connected {},
    /// The stream's metadata, once, before any media.
    Start {
        /// Its description.
        start: Start,
    },
    /// Caller audio.
    Media {
        /// The chunk.
        media: Media,
    },
    /// A mark sent earlier came back: the audio before it was played (or
    /// cleared: after a `clear`, every pending mark comes back at once).
    Mark {
        /// Which mark.
        mark: Mark,
    },
    /// A key pressed.
    Dtmf {
        /// Which.
        dtmf: Dtmf,
    },
    /// The stream ended (the call hung up or the stream was stopped).
    Stop {},
    /// An event this server does not know: ignored.
    #[serde(other)]
    Unknown,
}

/// `start`'s description of the stream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Start {
    /// The stream's id; every outbound message names it.
    pub stream_sid: String,
    /// The call's id.
    #[serde(default)]
    pub call_sid: Option<String>,
    /// The Twilio account the call belongs to.
    #[serde(default)]
    pub account_sid: Option<String>,
    /// The audio's format.
    pub media_format: MediaFormat,
}

/// The audio's format (Twilio: `audio/x-mulaw`, 8000 Hz, 1 channel).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaFormat {
    /// The codec.
    pub encoding: String,
    /// Samples per second.
    pub sample_rate: u32,
    /// Channels.
    pub channels: u32,
}

/// A chunk of caller audio.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Media {
    /// Base64 µ-law.
    pub payload: String,
    /// Which track (`inbound`).
    #[serde(default)]
    pub track: Option<String>,
}

/// A mark's name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Mark {
    /// The name it was sent with.
    pub name: String,
}

/// A key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Dtmf {
    /// The digit.
    pub digit: String,
}

impl Inbound {
    /// Parses one text message.
    pub fn parse(text: &str) -> Result<Self, CallError> {
        serde_json::from_str(text).map_err(|e| CallError::Protocol(format!("bad message: {e}")))
    }
}

impl MediaFormat {
    /// Whether this is the format the call speaks (µ-law, 8 kHz, mono).
    pub fn check(&self) -> Result<(), CallError> {
        if self.encoding != "audio/x-mulaw" || self.sample_rate != 8_000 || self.channels != 1 {
            return Err(CallError::Protocol(format!(
                "media format {} at {} Hz with {} channel(s): only audio/x-mulaw at 8000 Hz mono is spoken",
                self.encoding, self.sample_rate, self.channels
            )));
        }
        Ok(())
    }
}

/// Decodes a `media` payload to µ-law bytes.
pub fn decode_payload(payload: &str) -> Result<Vec<u8>, CallError> {
    base64::engine::general_purpose::STANDARD
        .decode(payload)
        .map_err(|e| CallError::Protocol(format!("media payload is not base64: {e}")))
}

/// An outbound `media` message.
pub fn media(stream_sid: &str, mulaw: &[u8]) -> String {
    let payload = base64::engine::general_purpose::STANDARD.encode(mulaw);
    serde_json::json!({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})
        .to_string()
}

/// An outbound `mark` message.
pub fn mark(stream_sid: &str, name: &str) -> String {
    serde_json::json!({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})
        .to_string()
}

/// An outbound `clear` message.
pub fn clear(stream_sid: &str) -> String {
    serde_json::json!({"event": "clear", "streamSid": stream_sid}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilios_messages_parse() {
        let start = r#"{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC1","streamSid":"MZ1","callSid":"CA1","tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},"customParameters":{}},"streamSid":"MZ1"}"#;
        let Inbound::Start { start } = Inbound::parse(start).unwrap() else {
            panic!("a start")
        };
        assert_eq!(start.stream_sid, "MZ1");
        start.media_format.check().unwrap();
        let media = r#"{"event":"media","sequenceNumber":"3","media":{"track":"inbound","chunk":"1","timestamp":"5","payload":"/w=="},"streamSid":"MZ1"}"#;
        let Inbound::Media { media } = Inbound::parse(media).unwrap() else {
            panic!("media")
        };
        assert_eq!(decode_payload(&media.payload).unwrap(), vec![0xFF]);
        assert_eq!(
            Inbound::parse(r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"m1"}}"#).unwrap(),
            Inbound::Mark {
                mark: Mark { name: "m1".into() }
            }
        );
        assert_eq!(
            Inbound::parse(r#"{"event":"stop","stop":{}}"#).unwrap(),
            Inbound::Stop {}
        );
        assert_eq!(
            Inbound::parse(r#"{"event":"novel"}"#).unwrap(),
            Inbound::Unknown
        );
        assert!(Inbound::parse("{not json").is_err());
        assert!(Inbound::parse(r#"{"event":"media"}"#).is_err());
        let wrong = MediaFormat {
            encoding: "audio/x-mulaw".into(),
            sample_rate: 16_000,
            channels: 1,
        };
        assert!(wrong.check().is_err());
    }
}
