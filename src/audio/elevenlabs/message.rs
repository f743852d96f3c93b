//! The JSON of the `stream-input` socket, both ways.
//!
//! Client messages are built here so the three the protocol needs (the
//! opening `" "` with the settings, the text with `flush`, the end-of-input
//! `""`) are written in one place. Server messages are read leniently —
//! unknown fields are ignored, `null` stands for absent — but strictly where
//! a wrong value would corrupt the audio or the alignment: bad base64, or
//! alignment arrays of different lengths, are [`Malformed`](crate::audio::SpeechFailure::Malformed).

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::config::ElevenLabsConfig;

/// The first message: a single space (the protocol's "open"), with the
/// settings that apply to the whole socket.
pub(crate) fn initial(config: &ElevenLabsConfig) -> String {
    let mut m = json!({ "text": " " });
    if let Some(v) = &config.voice_settings {
        let mut s = serde_json::Map::new();
        for (name, value) in [
            ("stability", v.stability),
            ("similarity_boost", v.similarity_boost),
            ("speed", v.speed),
        ] {
            if let Some(x) = value {
                s.insert(name.into(), json!(x));
            }
        }
        m["voice_settings"] = Value::Object(s);
    }
    if let Some(schedule) = &config.chunk_length_schedule {
        m["generation_config"] = json!({ "chunk_length_schedule": schedule });
    }
    m.to_string()
}

/// The text, ending in a space as the protocol asks, with `flush: true` so
/// it is generated now whatever the buffer's schedule.
pub(crate) fn text(text: &str) -> String {
    let mut t = text.to_string();
    if !t.ends_with(char::is_whitespace) {
        t.push(' ');
    }
    json!({ "text": t, "flush": true }).to_string()
}

/// The end of input: the server generates what is left, sends `isFinal`
/// and closes.
pub(crate) fn end() -> String {
    json!({ "text": "" }).to_string()
}

/// A server message, as far as this client reads it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    audio: Option<String>,
    is_final: Option<bool>,
    alignment: Option<WireAlignment>,
    message: Option<Value>,
    error: Option<Value>,
    code: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireAlignment {
    #[serde(default)]
    chars: Vec<String>,
    #[serde(default)]
    char_start_times_ms: Vec<f64>,
    #[serde(default)]
    char_durations_ms: Vec<f64>,
}

/// Characters with their times in ms, relative to the message's audio (see
/// the parent module's docs).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ChunkAlignment {
    /// Each entry is one character as the provider wrote it (usually one
    /// Unicode scalar value).
    pub chars: Vec<String>,
    /// Start of each character.
    pub starts_ms: Vec<f64>,
    /// Duration of each character.
    pub durations_ms: Vec<f64>,
}

/// What a server message means.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ServerMessage {
    /// PCM bytes (possibly none) and the alignment sent with them; `last`
    /// when the message also says `isFinal: true`.
    Audio {
        pcm: Vec<u8>,
        alignment: Option<ChunkAlignment>,
        last: bool,
    },
    /// The synthesis is complete.
    Final,
    /// The provider reported an error: its `error` (a kind), `message` and
    /// `code`.
    Error {
        kind: String,
        message: String,
        code: Option<u16>,
    },
}

/// Reads one text frame; `Err` says why it is malformed.
pub(crate) fn parse(frame: &str) -> Result<ServerMessage, String> {
    let wire: Wire =
        serde_json::from_str(frame).map_err(|e| format!("not a server message: {e}"))?;
    let as_text = |v: &Option<Value>| match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    let has_audio = wire.audio.as_deref().is_some_and(|a| !a.is_empty());
    if !has_audio && (as_text(&wire.error).is_some() || as_text(&wire.message).is_some()) {
        let code = wire.code.as_ref().and_then(Value::as_u64);
        return Ok(ServerMessage::Error {
            kind: as_text(&wire.error).unwrap_or_default(),
            message: as_text(&wire.message).unwrap_or_default(),
            code: code.and_then(|c| u16::try_from(c).ok()),
        });
    }
    let pcm = match wire.audio.as_deref() {
        None | Some("") => Vec::new(),
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("audio is not base64: {e}"))?,
    };
    let alignment = match wire.alignment {
        None => None,
        Some(a) => {
            if a.chars.len() != a.char_start_times_ms.len()
                || a.chars.len() != a.char_durations_ms.len()
            {
                return Err(format!(
                    "alignment of {} chars with {} starts and {} durations",
                    a.chars.len(),
                    a.char_start_times_ms.len(),
                    a.char_durations_ms.len()
                ));
            }
            let finite = |v: &[f64]| v.iter().all(|x| x.is_finite() && *x >= 0.0);
            if !finite(&a.char_start_times_ms) || !finite(&a.char_durations_ms) {
                return Err("alignment times must be finite and non-negative".into());
            }
            Some(ChunkAlignment {
                chars: a.chars,
                starts_ms: a.char_start_times_ms,
                durations_ms: a.char_durations_ms,
            })
        }
    };
    let last = wire.is_final == Some(true);
    if last && pcm.is_empty() && alignment.is_none() {
        return Ok(ServerMessage::Final);
    }
    Ok(ServerMessage::Audio {
        pcm,
        alignment,
        last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages() {
        let m = parse(
            r#"{"audio":"AQID","isFinal":null,"normalizedAlignment":{"chars":["x"]},
                "alignment":{"chars":["H","i"],"charStartTimesMs":[0,30],"charDurationsMs":[30,25]}}"#,
        )
        .unwrap();
        let ServerMessage::Audio {
            pcm,
            alignment,
            last: false,
        } = m
        else {
            panic!("{m:?}")
        };
        assert_eq!(pcm, vec![1, 2, 3]);
        assert_eq!(alignment.unwrap().starts_ms, vec![0.0, 30.0]);
        assert_eq!(parse(r#"{"isFinal":true}"#), Ok(ServerMessage::Final));
        assert_eq!(
            parse(r#"{"audio":null,"isFinal":true,"alignment":null}"#),
            Ok(ServerMessage::Final)
        );
        assert_eq!(
            parse(r#"{"message":"quota","error":"quota_exceeded","code":1008}"#),
            Ok(ServerMessage::Error {
                kind: "quota_exceeded".into(),
                message: "quota".into(),
                code: Some(1008)
            })
        );
        assert!(parse("{nope").is_err());
        assert!(parse(r#"{"audio":"!!!"}"#).is_err());
        assert!(
            parse(r#"{"audio":"","alignment":{"chars":["a"],"charStartTimesMs":[],"charDurationsMs":[1]}}"#)
                .is_err()
        );
    }

    #[test]
    fn client_messages() {
        let mut c = ElevenLabsConfig::new("v", "k");
        assert_eq!(initial(&c), r#"{"text":" "}"#);
        c.voice_settings = Some(super::super::VoiceSettings {
            stability: Some(0.5),
            similarity_boost: None,
            speed: Some(1.0),
        });
        c.chunk_length_schedule = Some(vec![50, 120]);
        let v: Value = serde_json::from_str(&initial(&c)).unwrap();
        assert_eq!(v["voice_settings"], json!({"stability": 0.5, "speed": 1.0}));
        assert_eq!(
            v["generation_config"]["chunk_length_schedule"],
            json!([50, 120])
        );
        assert_eq!(text("Hi."), r#"{"text":"Hi. ","flush":true}"#);
        assert_eq!(end(), r#"{"text":""}"#);
    }
}
