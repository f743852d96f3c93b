//! What goes into the history for a turn: built from the ledger's record,
//! round by round.
//!
//! The rule (DESIGN.md, cancel semantics 4 and 5): the history records what the
//! user heard, and is always valid on the wire. Each round contributes, in this
//! order, its assistant text, its calls, and one output per call — so the
//! assistant message that made the calls precedes them and every call has
//! exactly one output, whatever interleaving closed the turn. When the turn was
//! cut, assistant text is trimmed to the last playback position (all published
//! text when no TTS reported progress) and marked interrupted, text nobody
//! heard is dropped, and a call with no result gets an error output saying why.
//! Calls are kept even when their round's text was not heard: the tools ran.

use colloquy::context::{ChatItem, ChatMessage, Role};

use crate::bus::ledger::TurnRecord;

/// The items of `record`, trimmed to `heard` characters of its text when set
/// (a cut turn). `why` is the output of a call that never got one.
pub(crate) fn turn_items(record: &TurnRecord, heard: Option<usize>, why: &str) -> Vec<ChatItem> {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut last_text = None;
    for round in &record.rounds {
        let len = round.text.chars().count();
        let keep = heard.map_or(len, |h| h.saturating_sub(pos).min(len));
        pos += len;
        if keep > 0 {
            let text = if keep < len {
                round.text.chars().take(keep).collect()
            } else {
                round.text.clone()
            };
            let mut m = ChatMessage::text(Role::Assistant, text);
            m.interrupted = keep < len || (heard.is_some() && !round.complete);
            last_text = Some(out.len());
            out.push(ChatItem::Message(m));
        }
        for call in &round.calls {
            out.push(ChatItem::function_call(
                call.id.clone(),
                call.name.clone(),
                call.arguments.clone(),
            ));
        }
        for call in &round.calls {
            out.push(match round.output(&call.id) {
                Some(o) => {
                    ChatItem::function_output(o.call_id.clone(), o.output.clone(), o.is_error)
                }
                None => ChatItem::function_output(call.id.clone(), why, true),
            });
        }
    }
    if record.text_truncated
        && let Some(ChatItem::Message(m)) = last_text.and_then(|i| out.get_mut(i))
    {
        m.truncated = true;
    }
    out
}

/// The items of the finished rounds of a turn in flight, for its next request.
pub(crate) fn draft_items(record: &TurnRecord) -> Vec<ChatItem> {
    turn_items(record, None, "pending")
}

#[cfg(test)]
mod tests {
    use super::*;
    use colloquy::context::ChatContext;
    use colloquy::llm::ToolCall;
    use std::sync::Arc;

    use crate::bus::ToolOutput;
    use crate::bus::ledger::RoundRecord;

    fn round(text: &str, calls: &[&str], answered: &[(&str, &str)], complete: bool) -> RoundRecord {
        RoundRecord {
            text: text.into(),
            calls: calls
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
            outputs: answered
                .iter()
                .map(|(id, out)| {
                    Arc::new(ToolOutput {
                        call_id: id.to_string(),
                        name: "f".into(),
                        output: out.to_string(),
                        is_error: false,
                    })
                })
                .collect(),
            complete,
            ..RoundRecord::default()
        }
    }

    fn record(rounds: Vec<RoundRecord>) -> TurnRecord {
        TurnRecord {
            rounds,
            ..TurnRecord::default()
        }
    }

    fn shape(items: &[ChatItem]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                ChatItem::Message(m) if m.interrupted => format!("a*:{}", m.text_content()),
                ChatItem::Message(m) => format!("a:{}", m.text_content()),
                ChatItem::FunctionCall(c) => format!("call:{}", c.call_id),
                ChatItem::FunctionCallOutput(o) => format!("out:{}={}", o.call_id, o.output),
                _ => "?".into(),
            })
            .collect()
    }

    #[test]
    fn trims_streaming_round_to_what_was_heard() {
        let r = record(vec![round("Hello there, friend", &[], &[], false)]);
        assert_eq!(shape(&turn_items(&r, Some(5), "x")), ["a*:Hello"]);
        assert_eq!(
            shape(&turn_items(&r, Some(19), "x")),
            ["a*:Hello there, friend"]
        );
        assert!(
            turn_items(&r, Some(0), "x").is_empty(),
            "nothing heard, nothing committed"
        );
        assert_eq!(shape(&turn_items(&r, None, "x")), ["a:Hello there, friend"]);
    }

    #[test]
    fn heard_position_counts_characters_not_bytes() {
        let r = record(vec![round("héllo wörld", &[], &[], true)]);
        assert_eq!(shape(&turn_items(&r, Some(4), "x")), ["a*:héll"]);
    }

    #[test]
    fn text_precedes_its_calls_and_every_call_gets_one_output() {
        // Round 0: "Let me check." + call a (answered) + call b (pending);
        // round 1 streaming: " It is" + call c.
        let r = record(vec![
            round("Let me check.", &["a", "b"], &[("a", "42")], true),
            round(" It is", &["c"], &[], false),
        ]);
        let items = turn_items(&r, Some(19), "cancelled");
        assert_eq!(
            shape(&items),
            [
                "a:Let me check.",
                "call:a",
                "call:b",
                "out:a=42",
                "out:b=cancelled",
                "a*: It is",
                "call:c",
                "out:c=cancelled"
            ]
        );
        assert!(ChatContext { items }.calls_without_output().is_empty());
    }

    #[test]
    fn unheard_text_is_dropped_but_calls_are_kept() {
        let r = record(vec![round("Let me check.", &["a"], &[], true)]);
        assert_eq!(
            shape(&turn_items(&r, Some(3), "cancelled")),
            ["a*:Let", "call:a", "out:a=cancelled"]
        );
        assert_eq!(
            shape(&turn_items(&r, Some(0), "cancelled")),
            ["call:a", "out:a=cancelled"]
        );
    }

    #[test]
    fn a_capped_answer_is_marked() {
        let mut r = record(vec![round("abc", &[], &[], true)]);
        r.text_truncated = true;
        let items = turn_items(&r, None, "x");
        let ChatItem::Message(m) = &items[0] else {
            panic!("{items:?}")
        };
        assert!(m.truncated && !m.interrupted);
    }
}
