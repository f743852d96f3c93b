//! The server's JSON messages, as far as the client reads them.
//!
//! Only what the client acts on is required (a `Results` without its
//! `channel` is malformed); everything else has a default, and a message
//! type this client does not know is logged and skipped, so a provider that
//! adds fields or events does not break calls.

use serde::Deserialize;

/// One message from the server.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "type")]
pub(crate) enum ServerMessage {
    /// Words, interim or final.
    Results(Results),
    /// Deepgram's own voice activity detector heard speech begin.
    SpeechStarted {
        #[serde(default)]
        timestamp: f64,
    },
    /// No word for `utterance_end_ms` after `last_word_end`.
    UtteranceEnd {
        #[serde(default)]
        last_word_end: f64,
    },
    /// The stream's summary, after `CloseStream`.
    Metadata {
        #[serde(default)]
        request_id: String,
    },
    /// The server failed.
    Error {
        #[serde(default)]
        description: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        variant: String,
    },
    /// Anything else (a newer event type).
    #[serde(other)]
    Other,
}

/// A `Results` message.
#[derive(Debug, Deserialize, PartialEq)]
pub(crate) struct Results {
    /// Seconds of the connection's audio before the audio it covers.
    #[serde(default)]
    pub(crate) start: f64,
    /// Seconds of audio it covers.
    #[serde(default)]
    pub(crate) duration: f64,
    /// The words will not change.
    #[serde(default)]
    pub(crate) is_final: bool,
    /// Deepgram's endpointing heard the speaker stop.
    #[serde(default)]
    pub(crate) speech_final: bool,
    /// The answer to a `Finalize`.
    #[serde(default)]
    pub(crate) from_finalize: bool,
    pub(crate) channel: Channel,
}

/// The one channel's hypotheses.
#[derive(Debug, Deserialize, PartialEq)]
pub(crate) struct Channel {
    #[serde(default)]
    pub(crate) alternatives: Vec<Alternative>,
}

/// One hypothesis.
#[derive(Debug, Deserialize, PartialEq)]
pub(crate) struct Alternative {
    #[serde(default)]
    pub(crate) transcript: String,
    #[serde(default)]
    pub(crate) words: Vec<Word>,
}

/// One word's times (seconds of the connection's audio); its text is in
/// the alternative's `transcript`, formatted.
#[derive(Debug, Deserialize, PartialEq, Clone)]
pub(crate) struct Word {
    #[serde(default)]
    pub(crate) start: f64,
    #[serde(default)]
    pub(crate) end: f64,
}

impl Results {
    /// The best hypothesis (none when the server sent no alternative).
    pub(crate) fn best(&self) -> Option<&Alternative> {
        self.channel.alternatives.first()
    }

    /// Where the audio it covers ends, in seconds of the connection.
    pub(crate) fn end(&self) -> f64 {
        self.start + self.duration
    }
}

/// Parses one text frame.
pub(crate) fn parse(text: &str) -> Result<ServerMessage, String> {
    serde_json::from_str(text).map_err(|e| {
        // The error's kind and position only: serde's own message may quote
        // the frame's values (the caller's words, an echoed credential).
        let kind = match e.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "unexpected shape",
            serde_json::error::Category::Eof => "truncated",
        };
        format!(
            "unreadable server message ({kind} at line {} column {})",
            e.line(),
            e.column()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_message_is_described_without_its_values() {
        let frame =
            r#"{"type":"Results","duration":"dg-key-do-not-show","channel":{"alternatives":[]}}"#;
        let e = parse(frame).unwrap_err();
        assert!(!e.contains("dg-key-do-not-show"), "{e}");
        assert!(e.contains("unexpected shape"), "{e}");
    }

    #[test]
    fn documented_messages_parse() {
        let r = parse(
            r#"{"type":"Results","channel_index":[0,1],"duration":1.2,"start":0.5,
            "is_final":true,"speech_final":false,"from_finalize":true,
            "channel":{"alternatives":[{"transcript":"What","confidence":0.9,
            "words":[{"word":"what","start":0.58,"end":0.8,"confidence":0.9,"punctuated_word":"What"}]}]}}"#,
        );
        let Ok(ServerMessage::Results(r)) = r else {
            panic!("{r:?}")
        };
        assert!(r.is_final && r.from_finalize && !r.speech_final);
        assert!((r.end() - 1.7).abs() < 1e-9);
        assert_eq!(r.best().map(|a| a.transcript.as_str()), Some("What"));
        assert_eq!(r.best().map(|a| a.words[0].start), Some(0.58));
        assert_eq!(
            parse(r#"{"type":"UtteranceEnd","channel":[0,1],"last_word_end":2.1}"#),
            Ok(ServerMessage::UtteranceEnd { last_word_end: 2.1 })
        );
        assert!(matches!(
            parse(r#"{"type":"SpeechStarted","channel":[0,1],"timestamp":1.2}"#),
            Ok(ServerMessage::SpeechStarted { .. })
        ));
        assert!(matches!(
            parse(r#"{"type":"Metadata","request_id":"r"}"#),
            Ok(ServerMessage::Metadata { .. })
        ));
        assert_eq!(parse(r#"{"type":"Novel","x":1}"#), Ok(ServerMessage::Other));
        assert!(parse(r#"{"type":"Results","is_final":true}"#).is_err());
        assert!(parse("not json").is_err());
    }
}
