//! Tolerant parsing of one `chat.completion.chunk`.
//!
//! Borrowing deserialization (`Cow<str>`) keeps the per-chunk cost to one pass
//! over the JSON with no allocation for unescaped text. Everything is optional:
//! servers omit `id`, `object` and `created`, send `delta: null`, `choices: null`,
//! `finish_reason` absent, content as a string or (Mistral) an array of parts,
//! and plenty of extra fields, which are skipped.

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

/// One data event of the stream.
#[derive(Debug, Deserialize)]
pub(crate) struct WireChunk<'a> {
    #[serde(borrow, default)]
    pub(crate) id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) choices: Option<Vec<WireChoice<'a>>>,
    #[serde(default)]
    pub(crate) usage: Option<Value>,
    #[serde(default)]
    pub(crate) x_groq: Option<XGroq>,
    #[serde(default)]
    pub(crate) error: Option<Value>,
}

/// Groq's extension object.
#[derive(Debug, Deserialize)]
pub(crate) struct XGroq {
    #[serde(default)]
    pub(crate) usage: Option<Value>,
}

/// One choice of a chunk (or of a non-streamed completion).
#[derive(Debug, Deserialize)]
pub(crate) struct WireChoice<'a> {
    #[serde(default)]
    pub(crate) index: Option<u32>,
    #[serde(borrow, default)]
    pub(crate) delta: Option<WireDelta<'a>>,
    /// Non-streamed completions carry `message` instead of `delta`.
    #[serde(borrow, default)]
    pub(crate) message: Option<WireDelta<'a>>,
    #[serde(borrow, default)]
    pub(crate) finish_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) usage: Option<Value>,
}

/// The incremental content of a choice.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct WireDelta<'a> {
    #[serde(borrow, default)]
    pub(crate) content: Option<WireContent<'a>>,
    #[serde(borrow, default)]
    pub(crate) refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) reasoning: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) tool_calls: Option<Vec<WireToolCall<'a>>>,
}

/// A tool-call fragment.
#[derive(Debug, Deserialize)]
pub(crate) struct WireToolCall<'a> {
    #[serde(default)]
    pub(crate) index: Option<u32>,
    #[serde(borrow, default)]
    pub(crate) id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) function: Option<WireFunction<'a>>,
}

/// Name and argument fragment of a tool call.
#[derive(Debug, Deserialize)]
pub(crate) struct WireFunction<'a> {
    #[serde(borrow, default)]
    pub(crate) name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) arguments: Option<Cow<'a, str>>,
}

/// `delta.content`: a string, or an array of typed parts.
#[derive(Debug)]
pub(crate) enum WireContent<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<Value>),
}

impl<'de: 'a, 'a> Deserialize<'de> for WireContent<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = WireContent<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(WireContent::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(WireContent::Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(WireContent::Text(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut parts = Vec::new();
                while let Some(p) = seq.next_element::<Value>()? {
                    parts.push(p);
                }
                Ok(WireContent::Parts(parts))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// Text found in content parts: `(visible, reasoning)`.
pub(crate) fn split_parts(parts: &[Value]) -> (String, String) {
    let mut text = String::new();
    let mut reasoning = String::new();
    for part in parts {
        match part.get("type").and_then(Value::as_str) {
            Some("text") | Some("output_text") => {
                if let Some(t) = part.get("text").and_then(Value::as_str) {
                    text.push_str(t);
                }
            }
            Some("thinking") | Some("reasoning") => {
                collect_text(part.get("thinking").or(part.get("text")), &mut reasoning)
            }
            _ => {}
        }
    }
    (text, reasoning)
}

fn collect_text(v: Option<&Value>, out: &mut String) {
    match v {
        Some(Value::String(s)) => out.push_str(s),
        Some(Value::Array(items)) => {
            for item in items {
                collect_text(item.get("text").or(Some(item)), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerant_shapes_parse() {
        let c: WireChunk =
            serde_json::from_str(r#"{"choices":[{"delta":null,"finish_reason":null}]}"#).unwrap();
        assert!(c.choices.unwrap()[0].delta.is_none());
        let c: WireChunk =
            serde_json::from_str(r#"{"choices":null,"obfuscation":"xx","id":""}"#).unwrap();
        assert!(c.choices.is_none());
        let c: WireChunk = serde_json::from_str(
            r#"{"choices":[{"index":0,"delta":{"content":[{"type":"thinking","thinking":[{"type":"text","text":"hm"}]},{"type":"text","text":"hi"}]}}]}"#,
        )
        .unwrap();
        let delta = c.choices.unwrap().remove(0).delta.unwrap();
        match delta.content.unwrap() {
            WireContent::Parts(p) => {
                assert_eq!(split_parts(&p), ("hi".to_string(), "hm".to_string()))
            }
            WireContent::Text(_) => panic!("expected parts"),
        }
    }

    #[test]
    fn unescaped_text_is_borrowed() {
        let data = r#"{"choices":[{"delta":{"content":"plain"}}]}"#;
        let c: WireChunk = serde_json::from_str(data).unwrap();
        let delta = c.choices.unwrap().remove(0).delta.unwrap();
        assert!(matches!(
            delta.content,
            Some(WireContent::Text(Cow::Borrowed("plain")))
        ));
    }
}
