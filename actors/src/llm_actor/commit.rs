//! What goes into the history when a turn is cut short.
//!
//! The rule (DESIGN.md, cancel semantics 4 and 5): the history records what the
//! user heard, and never a tool call without its output. A turn in flight holds
//! the items of its finished rounds (text, calls, outputs) plus a round still
//! streaming. When it is cut, assistant text is trimmed to the last playback
//! position (all published text when no TTS reported progress) and marked
//! interrupted, text nobody heard is dropped, and every call gets an output —
//! its real result if the tool finished, else an error output saying it was
//! cancelled.

use std::collections::{HashMap, HashSet};

use colloquy::context::{ChatItem, ChatMessage, ContentPart, Role};

use crate::bus::{ToolOutput, TurnRecord};

/// The items a turn has produced so far, before they are committed.
#[derive(Debug, Default)]
pub(crate) struct TurnDraft {
    /// Finished rounds: assistant text, calls, and the outputs received.
    pub(crate) items: Vec<ChatItem>,
    /// Characters of the turn's text that precede the streaming round.
    pub(crate) round_text_start: usize,
    /// Tool outputs received for the turn, by call id.
    pub(crate) results: HashMap<String, ToolOutput>,
}

fn assistant(text: String, interrupted: bool) -> ChatItem {
    let mut m = ChatMessage::parts(Role::Assistant, vec![ContentPart::Text(text)]);
    m.interrupted = interrupted;
    ChatItem::Message(m)
}

/// The items to commit for a turn that ended early (`why` explains the missing outputs).
pub(crate) fn interrupted_items(draft: TurnDraft, record: &TurnRecord, why: &str) -> Vec<ChatItem> {
    let total = record.text.chars().count();
    let heard = record.heard_chars.map_or(total, |h| h.min(total));
    let mut out = Vec::with_capacity(draft.items.len() + 4);
    let mut pos = 0;
    for item in draft.items {
        match item {
            ChatItem::Message(mut m) if m.role == Role::Assistant => {
                let text = m.text_content();
                let len = text.chars().count();
                if pos < heard {
                    if pos + len > heard {
                        m.content =
                            vec![ContentPart::Text(text.chars().take(heard - pos).collect())];
                        m.interrupted = true;
                    }
                    out.push(ChatItem::Message(m));
                }
                pos += len;
            }
            other => out.push(other),
        }
    }
    if heard > draft.round_text_start {
        let partial: String = record
            .text
            .chars()
            .skip(draft.round_text_start)
            .take(heard - draft.round_text_start)
            .collect();
        out.push(assistant(partial, true));
    }
    let known: HashSet<String> = out
        .iter()
        .filter_map(|i| match i {
            ChatItem::FunctionCall(c) => Some(c.call_id.clone()),
            _ => None,
        })
        .collect();
    for call in record.tool_calls.iter().filter(|c| !known.contains(&c.id)) {
        out.push(ChatItem::function_call(
            call.id.clone(),
            call.name.clone(),
            call.arguments.clone(),
        ));
    }
    let answered: HashSet<String> = out
        .iter()
        .filter_map(|i| match i {
            ChatItem::FunctionCallOutput(o) => Some(o.call_id.clone()),
            _ => None,
        })
        .collect();
    let missing: Vec<String> = out
        .iter()
        .filter_map(|i| match i {
            ChatItem::FunctionCall(c) if !answered.contains(&c.call_id) => Some(c.call_id.clone()),
            _ => None,
        })
        .collect();
    for call_id in missing {
        let (output, is_error) = match draft.results.get(&call_id) {
            Some(r) => (r.output.clone(), r.is_error),
            None => (why.to_string(), true),
        };
        out.push(ChatItem::function_output(call_id, output, is_error));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use colloquy::context::ChatContext;
    use colloquy::llm::ToolCall;
    use std::sync::Arc;

    use crate::ids::TurnId;

    fn record(text: &str, heard: Option<usize>, calls: &[&str]) -> TurnRecord {
        TurnRecord {
            turn: TurnId(1),
            text: text.into(),
            heard_chars: heard,
            tool_calls: calls
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    Arc::new(ToolCall {
                        index: i as u32,
                        id: id.to_string(),
                        name: "f".into(),
                        arguments: "{}".into(),
                        valid_json: true,
                    })
                })
                .collect(),
            usage: None,
            text_truncated: false,
        }
    }

    fn texts(items: &[ChatItem]) -> Vec<(String, bool)> {
        items
            .iter()
            .filter_map(|i| match i {
                ChatItem::Message(m) => Some((m.text_content(), m.interrupted)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn trims_streaming_round_to_what_was_heard() {
        let items = interrupted_items(
            TurnDraft::default(),
            &record("Hello there, friend", Some(5), &[]),
            "x",
        );
        assert_eq!(texts(&items), vec![("Hello".to_string(), true)]);
        let items = interrupted_items(TurnDraft::default(), &record("Hello there", None, &[]), "x");
        assert_eq!(texts(&items), vec![("Hello there".to_string(), true)]);
        let items = interrupted_items(TurnDraft::default(), &record("Hello", Some(0), &[]), "x");
        assert!(items.is_empty(), "nothing heard, nothing committed");
    }

    #[test]
    fn heard_position_counts_characters_not_bytes() {
        let items = interrupted_items(
            TurnDraft::default(),
            &record("héllo wörld", Some(4), &[]),
            "x",
        );
        assert_eq!(texts(&items), vec![("héll".to_string(), true)]);
    }

    #[test]
    fn every_call_gets_an_output() {
        // Round 1 finished: "Let me check." + call a (result arrived) + call b (pending).
        let mut ctx = ChatContext::new();
        ctx.add_assistant("Let me check.");
        ctx.add_function_call("a", "f", "{}");
        ctx.add_function_call("b", "f", "{}");
        let mut draft = TurnDraft {
            items: ctx.items,
            round_text_start: 13,
            results: HashMap::new(),
        };
        draft.results.insert(
            "a".into(),
            ToolOutput {
                call_id: "a".into(),
                name: "f".into(),
                output: "42".into(),
                is_error: false,
            },
        );
        // The in-flight round 2 already published call c.
        let items = interrupted_items(
            draft,
            &record("Let me check. It is", None, &["a", "b", "c"]),
            "cancelled",
        );
        let committed = ChatContext { items };
        assert!(committed.calls_without_output().is_empty());
        assert_eq!(
            texts(&committed.items),
            vec![
                ("Let me check.".to_string(), false),
                (" It is".to_string(), true)
            ]
        );
        let outputs: Vec<(String, String, bool)> = committed
            .items
            .iter()
            .filter_map(|i| match i {
                ChatItem::FunctionCallOutput(o) => {
                    Some((o.call_id.clone(), o.output.clone(), o.is_error))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            outputs,
            vec![
                ("a".into(), "42".into(), false),
                ("b".into(), "cancelled".into(), true),
                ("c".into(), "cancelled".into(), true)
            ]
        );
    }

    #[test]
    fn earlier_round_text_not_heard_is_trimmed_too() {
        let mut ctx = ChatContext::new();
        ctx.add_assistant("Let me check.");
        ctx.add_function_call("a", "f", "{}");
        let draft = TurnDraft {
            items: ctx.items,
            round_text_start: 13,
            results: HashMap::new(),
        };
        let items = interrupted_items(
            draft,
            &record("Let me check.", Some(3), &["a"]),
            "cancelled",
        );
        assert_eq!(texts(&items), vec![("Let".to_string(), true)]);
        assert!(ChatContext { items }.calls_without_output().is_empty());
    }
}
