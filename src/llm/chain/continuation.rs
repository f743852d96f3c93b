//! Continuing a reply another provider started, without saying anything twice.
//!
//! The next provider gets the original request plus the published prefix as
//! the assistant's partial message and an instruction to continue it. Models
//! usually continue, but sometimes restate the prefix, or its last sentence or
//! words, before going on. [`OverlapFilter`] holds the continuation's first
//! text while it could still be such a restatement, and drops it when it is:
//!
//! - a restatement starts at a word of the prefix (its start, or after
//!   whitespace) and runs to the prefix's end; leading whitespace of the
//!   continuation is ignored while matching;
//! - while the held text is still a start of such a restatement, it is held
//!   (that text was already heard, so holding it delays nothing new);
//! - as soon as no candidate matches, everything held is published; when one
//!   candidate is covered to the prefix's end and no longer one is still
//!   possible, the covered part is dropped and the rest published.
//!
//! A continuation that starts mid-word ("Hel" + "lo") never matches (the
//! candidate must start at a word), so it is published as is.

use serde_json::{Value, json};

/// Holds the first text of a continuation until it is known not to repeat
/// the prefix.
#[derive(Debug)]
pub(crate) struct OverlapFilter {
    prefix: String,
    /// Byte offsets in `prefix` where a restatement may start.
    candidates: Vec<usize>,
    held: String,
    /// Decided: later text passes through.
    spent: bool,
}

impl OverlapFilter {
    pub(crate) fn new(prefix: &str) -> Self {
        let mut candidates = Vec::new();
        let mut prev_space = true;
        for (i, c) in prefix.char_indices() {
            if prev_space && !c.is_whitespace() {
                candidates.push(i);
            }
            prev_space = c.is_whitespace();
        }
        Self {
            prefix: prefix.to_string(),
            candidates,
            held: String::new(),
            spent: false,
        }
    }

    /// Feeds continuation text; returns what may be published now (empty
    /// while held).
    pub(crate) fn push(&mut self, text: &str) -> String {
        if self.spent {
            return text.to_string();
        }
        self.held.push_str(text);
        let body = self.held.trim_start();
        if body.is_empty() {
            return String::new();
        }
        let prefix = &self.prefix;
        self.candidates.retain(|&c| {
            let rest = &prefix[c..];
            rest.starts_with(body) || body.starts_with(rest)
        });
        let partial = self
            .candidates
            .iter()
            .any(|&c| prefix.len() - c > body.len());
        if partial {
            return String::new();
        }
        // Every remaining candidate is covered: drop the longest one.
        self.release()
    }

    /// What to publish when the filter is spent: the held text minus the
    /// longest covered restatement.
    fn release(&mut self) -> String {
        self.spent = true;
        let held = std::mem::take(&mut self.held);
        let body = held.trim_start();
        let covered = self
            .candidates
            .iter()
            .map(|&c| self.prefix.len() - c)
            .filter(|&len| body.len() >= len)
            .max();
        self.candidates.clear();
        match covered {
            Some(len) => {
                tracing::debug!(
                    repeated_chars = body[..len].chars().count(),
                    "continuation restated the prefix: dropped"
                );
                body[len..].to_string()
            }
            None => held,
        }
    }

    /// The continuation stopped feeding text (it ended, or moved on to a tool
    /// call): held text that is still a start of a restatement was already
    /// heard and is dropped; a covered restatement's remainder is returned.
    pub(crate) fn finish(mut self) -> String {
        let body = self.held.trim_start();
        if self.spent || body.is_empty() {
            return String::new();
        }
        let partial_only = self
            .candidates
            .iter()
            .all(|&c| self.prefix.len() - c > body.len());
        if partial_only && !self.candidates.is_empty() {
            return String::new();
        }
        self.release()
    }
}

/// `base` with the published prefix as the assistant's partial message and
/// the instruction to continue it as a user message.
pub(crate) fn continuation_body(base: &Value, prefix: &str, instruction: &str) -> Value {
    let mut body = base.clone();
    if let Some(messages) = body.get_mut("messages").and_then(Value::as_array_mut) {
        messages.push(json!({"role": "assistant", "content": prefix}));
        messages.push(json!({"role": "user", "content": instruction}));
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` and returns what was published.
    fn run(prefix: &str, pieces: &[&str]) -> String {
        let mut f = OverlapFilter::new(prefix);
        let mut out = String::new();
        for p in pieces {
            out.push_str(&f.push(p));
        }
        out.push_str(&f.finish());
        out
    }

    #[test]
    fn a_clean_continuation_passes_through() {
        assert_eq!(run("Hello, how are", &[" you", " today?"]), " you today?");
        assert_eq!(run("Hel", &["lo there"]), "lo there");
        assert_eq!(run("The cat sat on the ", &["mat."]), "mat.");
    }

    #[test]
    fn a_restatement_from_the_start_is_dropped() {
        assert_eq!(
            run("Hello, how are", &["Hello", ", how", " are you", " today?"]),
            " you today?"
        );
    }

    #[test]
    fn a_restated_last_sentence_or_word_is_dropped() {
        assert_eq!(
            run(
                "Sure. The weather in Pa",
                &["The weather in Paris", " is sunny."]
            ),
            "ris is sunny."
        );
        assert_eq!(
            run("word1 word2 word3 ", &[" word2 ", "word3 word4"]),
            "word4"
        );
        assert_eq!(run("The cat sat on the ma", &["mat."]), "t.");
    }

    #[test]
    fn the_longest_restatement_wins() {
        assert_eq!(run("a b a b", &["a b a b c"]), " c");
        assert_eq!(run("a b a b", &["a b", " a b", " c"]), " c");
    }

    #[test]
    fn a_continuation_that_stops_inside_a_restatement_publishes_nothing() {
        assert_eq!(run("Hello, how are", &["Hello, how"]), "");
    }

    #[test]
    fn continuation_body_appends_the_partial_and_the_instruction() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let body = continuation_body(&base, "Hel", "continue");
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": "hi"},
                   {"role": "assistant", "content": "Hel"},
                   {"role": "user", "content": "continue"}])
        );
    }
}
