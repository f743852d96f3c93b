//! Structured output with one field spoken while it streams.
//!
//! The reference plugin's "conversational graph" asks the model for a strict JSON
//! object and speaks one of its fields. Waiting for the whole object would add the
//! full generation time to the time-to-first-word, so [`JsonFieldStreamer`] scans
//! the JSON as it arrives and hands out the decoded text of the spoken field
//! (escapes, `\uXXXX` and surrogate pairs included) fragment by fragment; the
//! complete object is parsed once at the end.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::tools::strict_schema;

/// Structured-output mode: a strict `json_schema` response format whose
/// `spoken_field` (a top-level string property) is streamed as tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StructuredOutput {
    /// Schema name sent to the provider.
    pub name: String,
    /// JSON schema of the response object (made strict on the wire).
    pub schema: Value,
    /// The top-level string property to stream as speech.
    pub spoken_field: String,
}

impl StructuredOutput {
    /// A structured response with the given schema and spoken field.
    pub fn new(name: impl Into<String>, schema: Value, spoken_field: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            schema,
            spoken_field: spoken_field.into(),
        }
    }

    /// The `response_format` value of the request.
    pub fn response_format(&self) -> Value {
        json!({
            "type": "json_schema",
            "json_schema": {"name": self.name, "strict": true, "schema": strict_schema(self.schema.clone())}
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    Backslash,
    Unicode { value: u32, digits: u8 },
}

/// Incremental scanner that extracts one top-level string field of a JSON object
/// from arbitrary fragments.
///
/// ```
/// use colloquy::llm::JsonFieldStreamer;
/// let mut s = JsonFieldStreamer::new("say");
/// let mut spoken = String::new();
/// for fragment in [r#"{"mood": "ok", "sa"#, r#"y": "Hi \"the"#, r#"re\"!"}"#] {
///     spoken.push_str(&s.push(fragment));
/// }
/// assert_eq!(spoken, "Hi \"there\"!");
/// assert_eq!(s.finish().unwrap()["mood"], "ok");
/// ```
#[derive(Debug, Clone)]
pub struct JsonFieldStreamer {
    field: String,
    raw: String,
    depth: u32,
    in_string: bool,
    reading_key: bool,
    capturing: bool,
    key: String,
    last_key_matches: bool,
    expecting_value: bool,
    escape: Escape,
    high_surrogate: Option<u32>,
}

impl JsonFieldStreamer {
    /// A streamer for the top-level property `field`.
    pub fn new(field: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            raw: String::new(),
            depth: 0,
            in_string: false,
            reading_key: false,
            capturing: false,
            key: String::new(),
            last_key_matches: false,
            expecting_value: false,
            escape: Escape::None,
            high_surrogate: None,
        }
    }

    /// Feeds the next fragment of the JSON text; returns the newly decoded text
    /// of the spoken field (empty when the fragment holds none).
    pub fn push(&mut self, fragment: &str) -> String {
        self.raw.push_str(fragment);
        let mut out = String::new();
        for c in fragment.chars() {
            self.step(c, &mut out);
        }
        out
    }

    /// Everything received so far.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// Parses the complete object.
    pub fn finish(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(self.raw.trim())
    }

    fn emit(&mut self, c: char, out: &mut String) {
        if self.reading_key {
            self.key.push(c);
        } else if self.capturing {
            out.push(c);
        }
    }

    fn emit_code_point(&mut self, cp: u32, out: &mut String) {
        if (0xD800..0xDC00).contains(&cp) {
            self.high_surrogate = Some(cp);
            return;
        }
        let cp = match (self.high_surrogate.take(), cp) {
            (Some(high), low @ 0xDC00..0xE000) => {
                0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
            }
            (_, cp) => cp,
        };
        self.emit(char::from_u32(cp).unwrap_or('\u{FFFD}'), out);
    }

    fn step(&mut self, c: char, out: &mut String) {
        if self.in_string {
            match self.escape {
                Escape::Backslash => {
                    self.escape = Escape::None;
                    let decoded = match c {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        'b' => '\u{8}',
                        'f' => '\u{c}',
                        'u' => {
                            self.escape = Escape::Unicode {
                                value: 0,
                                digits: 0,
                            };
                            return;
                        }
                        other => other,
                    };
                    self.emit(decoded, out);
                }
                Escape::Unicode { value, digits } => {
                    let value = (value << 4) | c.to_digit(16).unwrap_or(0);
                    if digits + 1 == 4 {
                        self.escape = Escape::None;
                        self.emit_code_point(value, out);
                    } else {
                        self.escape = Escape::Unicode {
                            value,
                            digits: digits + 1,
                        };
                    }
                }
                Escape::None => match c {
                    '\\' => self.escape = Escape::Backslash,
                    '"' => {
                        self.in_string = false;
                        if self.reading_key {
                            self.reading_key = false;
                            self.last_key_matches = self.key == self.field;
                        }
                        self.capturing = false;
                    }
                    c => self.emit(c, out),
                },
            }
            return;
        }
        match c {
            '"' => {
                self.in_string = true;
                if self.depth == 1 && !self.expecting_value {
                    self.reading_key = true;
                    self.key.clear();
                } else if self.depth == 1 && self.expecting_value {
                    self.capturing = self.last_key_matches;
                    self.expecting_value = false;
                }
            }
            ':' if self.depth == 1 => self.expecting_value = true,
            ',' if self.depth == 1 => {
                self.expecting_value = false;
                self.last_key_matches = false;
            }
            '{' | '[' => {
                if self.depth == 1 {
                    self.expecting_value = false;
                }
                self.depth += 1;
            }
            '}' | ']' => self.depth = self.depth.saturating_sub(1),
            c if self.depth == 1 && self.expecting_value && !c.is_whitespace() => {
                self.expecting_value = false;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"state": {"say": "no"}, "say": "Hello \"you\"\n\u00e9t\u00e9 \ud83d\ude00 ok", "next": ["say", 1], "n": 3}"#;
    const SPOKEN: &str = "Hello \"you\"\nété 😀 ok";

    #[test]
    fn whole_document_yields_only_the_top_level_field() {
        let mut s = JsonFieldStreamer::new("say");
        assert_eq!(s.push(DOC), SPOKEN);
        assert_eq!(s.finish().unwrap()["n"], 3);
    }

    #[test]
    fn every_split_point_gives_the_same_text() {
        let chars: Vec<char> = DOC.chars().collect();
        for split in 0..=chars.len() {
            let (a, b): (String, String) = (
                chars[..split].iter().collect(),
                chars[split..].iter().collect(),
            );
            let mut s = JsonFieldStreamer::new("say");
            let mut got = s.push(&a);
            got.push_str(&s.push(&b));
            assert_eq!(got, SPOKEN, "split at {split}");
        }
        // One character at a time.
        let mut s = JsonFieldStreamer::new("say");
        let got: String = chars.iter().map(|c| s.push(&c.to_string())).collect();
        assert_eq!(got, SPOKEN);
    }

    #[test]
    fn non_string_value_and_missing_field_yield_nothing() {
        let mut s = JsonFieldStreamer::new("say");
        assert_eq!(s.push(r#"{"say": 12, "other": "x"}"#), "");
        let mut s = JsonFieldStreamer::new("say");
        assert_eq!(s.push(r#"{"a": {"say": "nested"}}"#), "");
    }
}
