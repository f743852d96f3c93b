//! The typed `messages[]` of a request, built from a [`ChatContext`] that is
//! checked on the way.
//!
//! In the context, tool calls and their outputs are items of their own; on the
//! wire an assistant message owns its calls and each `tool` message answers one
//! of them. The mapping:
//! - an assistant text message immediately followed by calls becomes one
//!   assistant message with content and `tool_calls`;
//! - calls that follow anything else become an assistant message with
//!   `content: null`;
//! - consecutive calls are one round, grouped in one message;
//! - `system` becomes `developer` for reasoning models.
//!
//! Providers answer 400 to a history whose calls and outputs do not pair up, and
//! some accept it silently and confuse the model, so building fails with a
//! [`HistoryError`] instead: an output must answer a call of the assistant
//! message right before its run of tool messages, each call must be answered
//! once before the next non-tool message (or the end), and call ids are unique
//! within a message.

use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::context::{ChatContext, ChatItem, ContentPart, ImageDetail, Role};

/// Why a history cannot be sent. `index` is the position of the offending item
/// in [`ChatContext::items`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// A tool output that does not answer a call of the immediately preceding
    /// assistant message (its call is elsewhere, or nowhere).
    #[error(
        "item {index}: output for call {call_id:?} does not follow the assistant message that made the call"
    )]
    OutputWithoutCall {
        /// The call id the output names.
        call_id: String,
        /// Position of the output.
        index: usize,
    },
    /// A call with no output before the next non-tool message or the end.
    #[error("item {index}: call {call_id:?} has no output before the next message")]
    CallWithoutOutput {
        /// The unanswered call.
        call_id: String,
        /// Position of the call.
        index: usize,
    },
    /// A second output for the same call.
    #[error("item {index}: call {call_id:?} is answered twice")]
    OutputTwice {
        /// The call answered again.
        call_id: String,
        /// Position of the second output.
        index: usize,
    },
    /// Two calls with the same id in one assistant message.
    #[error("item {index}: duplicate call id {call_id:?}")]
    DuplicateCallId {
        /// The repeated id.
        call_id: String,
        /// Position of the second call.
        index: usize,
    },
}

/// One tool call owned by an assistant [`WireMessage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireToolCall<'a> {
    /// The provider's call id.
    pub id: &'a str,
    /// Function name.
    pub name: &'a str,
    /// Raw JSON arguments.
    pub arguments: &'a str,
}

/// One entry of a request's `messages[]`, borrowing from the context.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum WireMessage<'a> {
    /// Instructions (`system`).
    System {
        /// Text and image parts.
        content: &'a [ContentPart],
        /// Participant name.
        name: Option<&'a str>,
    },
    /// Instructions for reasoning models (`developer`).
    Developer {
        /// Text and image parts.
        content: &'a [ContentPart],
        /// Participant name.
        name: Option<&'a str>,
    },
    /// The human (`user`).
    User {
        /// Text and image parts.
        content: &'a [ContentPart],
        /// Participant name.
        name: Option<&'a str>,
    },
    /// The model (`assistant`), with the calls it made.
    Assistant {
        /// What it said; `None` (sent as `null`) for a message of calls only.
        content: Option<&'a [ContentPart]>,
        /// Participant name.
        name: Option<&'a str>,
        /// The calls it made, in order; their outputs follow as [`WireMessage::Tool`].
        tool_calls: Vec<WireToolCall<'a>>,
    },
    /// A tool's answer to one call of the preceding assistant message (`tool`).
    Tool {
        /// The call it answers.
        tool_call_id: &'a str,
        /// What the tool returned.
        content: &'a str,
    },
}

/// The open round of calls: the assistant message that made them and which
/// have been answered.
struct Round<'a> {
    calls: Vec<(&'a str, usize, bool)>,
}

impl Round<'_> {
    fn close(self) -> Result<(), HistoryError> {
        match self.calls.into_iter().find(|(_, _, answered)| !answered) {
            Some((call_id, index, _)) => Err(HistoryError::CallWithoutOutput {
                call_id: call_id.to_string(),
                index,
            }),
            None => Ok(()),
        }
    }
}

impl<'a> WireMessage<'a> {
    /// Maps and checks a whole context; `reasoning` sends `system` as `developer`.
    pub fn from_context(
        context: &'a ChatContext,
        reasoning: bool,
    ) -> Result<Vec<WireMessage<'a>>, HistoryError> {
        let mut out: Vec<WireMessage<'a>> = Vec::with_capacity(context.items.len());
        let mut round: Option<Round<'a>> = None;
        let mut prev: Option<&ChatItem> = None;
        for (index, item) in context.items.iter().enumerate() {
            match item {
                ChatItem::Message(m) => {
                    if let Some(r) = round.take() {
                        r.close()?;
                    }
                    let content = m.content.as_slice();
                    let name = m.name.as_deref();
                    out.push(match m.role {
                        Role::System if reasoning => WireMessage::Developer { content, name },
                        Role::System => WireMessage::System { content, name },
                        Role::Developer => WireMessage::Developer { content, name },
                        Role::User => WireMessage::User { content, name },
                        Role::Assistant => WireMessage::Assistant {
                            content: Some(content),
                            name,
                            tool_calls: Vec::new(),
                        },
                    });
                }
                ChatItem::FunctionCall(c) => {
                    let joins = match prev {
                        // The same round of parallel calls.
                        Some(ChatItem::FunctionCall(_)) => true,
                        // The text the model said before calling.
                        Some(ChatItem::Message(m)) => m.role == Role::Assistant,
                        _ => false,
                    };
                    if !joins {
                        if let Some(r) = round.take() {
                            r.close()?;
                        }
                        out.push(WireMessage::Assistant {
                            content: None,
                            name: None,
                            tool_calls: Vec::new(),
                        });
                    }
                    let r = round.get_or_insert_with(|| Round { calls: Vec::new() });
                    if r.calls.iter().any(|(id, _, _)| *id == c.call_id) {
                        return Err(HistoryError::DuplicateCallId {
                            call_id: c.call_id.clone(),
                            index,
                        });
                    }
                    r.calls.push((&c.call_id, index, false));
                    if let Some(WireMessage::Assistant { tool_calls, .. }) = out.last_mut() {
                        tool_calls.push(WireToolCall {
                            id: &c.call_id,
                            name: &c.name,
                            arguments: &c.arguments,
                        });
                    }
                }
                ChatItem::FunctionCallOutput(o) => {
                    let call = round
                        .as_mut()
                        .and_then(|r| r.calls.iter_mut().find(|(id, _, _)| *id == o.call_id));
                    match call {
                        None => {
                            return Err(HistoryError::OutputWithoutCall {
                                call_id: o.call_id.clone(),
                                index,
                            });
                        }
                        Some((_, _, true)) => {
                            return Err(HistoryError::OutputTwice {
                                call_id: o.call_id.clone(),
                                index,
                            });
                        }
                        Some((_, _, answered)) => *answered = true,
                    }
                    out.push(WireMessage::Tool {
                        tool_call_id: &o.call_id,
                        content: &o.output,
                    });
                }
            }
            prev = Some(item);
        }
        if let Some(r) = round {
            r.close()?;
        }
        Ok(out)
    }

    /// The wire role.
    pub fn role(&self) -> &'static str {
        match self {
            WireMessage::System { .. } => "system",
            WireMessage::Developer { .. } => "developer",
            WireMessage::User { .. } => "user",
            WireMessage::Assistant { .. } => "assistant",
            WireMessage::Tool { .. } => "tool",
        }
    }

    /// The JSON object sent in `messages[]`.
    pub fn to_json(&self) -> Value {
        // Serializing borrowed strings and parts into a `Value` cannot fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Serializes as the `messages[]` entry.
impl Serialize for WireMessage<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        MessageOut::from(self).serialize(serializer)
    }
}

/// One `messages[]` entry, field for field as the wire names it.
#[derive(Serialize)]
struct MessageOut<'m> {
    role: &'static str,
    /// Absent for no message; `Some(None)` is the assistant's `null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<Option<ContentOut<'m>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'m str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut<'m>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'m str>,
}

/// One text part is a plain string; anything else is an array of typed parts.
#[derive(Serialize)]
#[serde(untagged)]
enum ContentOut<'m> {
    Text(&'m str),
    Parts(Vec<PartOut<'m>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum PartOut<'m> {
    Text { text: &'m str },
    ImageUrl { image_url: ImageUrlOut<'m> },
}

#[derive(Serialize)]
struct ImageUrlOut<'m> {
    url: &'m str,
    /// `auto` is not sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'static str>,
}

#[derive(Serialize)]
struct ToolCallOut<'m> {
    id: &'m str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionOut<'m>,
}

#[derive(Serialize)]
struct FunctionOut<'m> {
    name: &'m str,
    arguments: &'m str,
}

impl<'m> ContentOut<'m> {
    fn new(parts: &'m [ContentPart]) -> Self {
        if let [ContentPart::Text(text)] = parts {
            return ContentOut::Text(text);
        }
        ContentOut::Parts(
            parts
                .iter()
                .map(|part| match part {
                    ContentPart::Text(text) => PartOut::Text { text },
                    ContentPart::Image(img) => PartOut::ImageUrl {
                        image_url: ImageUrlOut {
                            url: &img.url,
                            detail: (img.detail != ImageDetail::Auto).then(|| img.detail.as_str()),
                        },
                    },
                })
                .collect(),
        )
    }
}

impl<'m> From<&'m WireMessage<'m>> for MessageOut<'m> {
    fn from(message: &'m WireMessage<'m>) -> Self {
        let mut out = MessageOut {
            role: message.role(),
            content: None,
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
        };
        match message {
            WireMessage::System { content, name }
            | WireMessage::Developer { content, name }
            | WireMessage::User { content, name } => {
                out.content = Some(Some(ContentOut::new(content)));
                out.name = *name;
            }
            WireMessage::Assistant {
                content,
                name,
                tool_calls,
            } => {
                out.content = Some(content.map(ContentOut::new));
                out.name = *name;
                out.tool_calls = tool_calls
                    .iter()
                    .map(|c| ToolCallOut {
                        id: c.id,
                        kind: "function",
                        function: FunctionOut {
                            name: c.name,
                            arguments: c.arguments,
                        },
                    })
                    .collect();
            }
            WireMessage::Tool {
                tool_call_id,
                content,
            } => {
                out.tool_call_id = Some(tool_call_id);
                out.content = Some(Some(ContentOut::Text(content)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::ChatMessage;
    use serde_json::json;

    fn build(ctx: &ChatContext) -> Result<Vec<Value>, HistoryError> {
        WireMessage::from_context(ctx, false).map(|m| m.iter().map(WireMessage::to_json).collect())
    }

    fn interrupted(text: &str) -> ChatMessage {
        let mut m = ChatMessage::text(Role::Assistant, text);
        m.interrupted = true;
        m
    }

    #[test]
    fn assistant_text_owns_the_calls_that_follow_it() {
        let mut ctx = ChatContext::new();
        ctx.add_user("weather?");
        ctx.add_assistant("Let me check.");
        ctx.add_function_call("c1", "weather", "{\"city\":\"Paris\"}");
        ctx.add_function_call("c2", "weather", "{\"city\":\"Rome\"}");
        ctx.add_function_output("c2", "rain", false);
        ctx.add_function_output("c1", "sun", false);
        ctx.add_assistant("Sun in Paris, rain in Rome.");
        let msgs = build(&ctx).unwrap();
        assert_eq!(msgs.len(), 5);
        assert_eq!(
            msgs[1],
            json!({"role": "assistant", "content": "Let me check.", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "c2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}
            ]})
        );
        assert_eq!(
            msgs[2],
            json!({"role": "tool", "tool_call_id": "c2", "content": "rain"})
        );
        assert_eq!(
            msgs[4],
            json!({"role": "assistant", "content": "Sun in Paris, rain in Rome."})
        );
    }

    #[test]
    fn calls_after_anything_else_have_null_content_and_rounds_stay_apart() {
        let mut ctx = ChatContext::new();
        ctx.add_user("go");
        ctx.add_function_call("c1", "a", "{}");
        ctx.add_function_output("c1", "r1", false);
        ctx.add_function_call("c1", "a", "{}"); // a new round may reuse an id
        ctx.add_function_output("c1", "r2", false);
        let msgs = WireMessage::from_context(&ctx, false).unwrap();
        let roles: Vec<_> = msgs.iter().map(WireMessage::role).collect();
        assert_eq!(roles, ["user", "assistant", "tool", "assistant", "tool"]);
        assert_eq!(msgs[1].to_json()["content"], Value::Null);
        assert!(
            matches!(&msgs[3], WireMessage::Assistant { content: None, tool_calls, .. } if tool_calls.len() == 1)
        );
    }

    #[test]
    fn output_after_the_interrupted_text_is_rejected() {
        let mut ctx = ChatContext::new();
        ctx.add_user("weather?");
        ctx.add_function_call("c1", "weather", "{}");
        ctx.add_message(interrupted("Let me check."));
        ctx.add_function_output("c1", "sun", false);
        assert_eq!(
            build(&ctx),
            Err(HistoryError::CallWithoutOutput {
                call_id: "c1".into(),
                index: 1
            })
        );
    }

    #[test]
    fn every_broken_pairing_is_a_typed_error() {
        // An output with no call at all.
        let mut ctx = ChatContext::new();
        ctx.add_user("hi");
        ctx.add_function_output("c9", "x", false);
        assert_eq!(
            build(&ctx),
            Err(HistoryError::OutputWithoutCall {
                call_id: "c9".into(),
                index: 1
            })
        );
        // An output for a call of an earlier round.
        let mut ctx = ChatContext::new();
        ctx.add_function_call("c1", "a", "{}");
        ctx.add_function_output("c1", "r", false);
        ctx.add_function_call("c2", "a", "{}");
        ctx.add_function_output("c1", "again", false);
        assert_eq!(
            build(&ctx),
            Err(HistoryError::OutputWithoutCall {
                call_id: "c1".into(),
                index: 3
            })
        );
        // Answered twice.
        let mut ctx = ChatContext::new();
        ctx.add_function_call("c1", "a", "{}");
        ctx.add_function_output("c1", "r", false);
        ctx.add_function_output("c1", "r", false);
        assert_eq!(
            build(&ctx),
            Err(HistoryError::OutputTwice {
                call_id: "c1".into(),
                index: 2
            })
        );
        // Duplicate ids in one message.
        let mut ctx = ChatContext::new();
        ctx.add_assistant("Two at once.");
        ctx.add_function_call("c1", "a", "{}");
        ctx.add_function_call("c1", "b", "{}");
        assert_eq!(
            build(&ctx),
            Err(HistoryError::DuplicateCallId {
                call_id: "c1".into(),
                index: 2
            })
        );
        // Unanswered at the end, and unanswered before a user message.
        let mut ctx = ChatContext::new();
        ctx.add_function_call("c1", "a", "{}");
        ctx.add_function_call("c2", "a", "{}");
        ctx.add_function_output("c1", "r", false);
        assert_eq!(
            build(&ctx),
            Err(HistoryError::CallWithoutOutput {
                call_id: "c2".into(),
                index: 1
            })
        );
        ctx.add_user("and?");
        assert!(matches!(
            build(&ctx),
            Err(HistoryError::CallWithoutOutput { .. })
        ));
        // A new round while the previous one is unanswered.
        let mut ctx = ChatContext::new();
        ctx.add_function_call("c1", "a", "{}");
        ctx.add_assistant("meanwhile");
        ctx.add_function_call("c2", "a", "{}");
        ctx.add_function_output("c2", "r", false);
        assert!(matches!(
            build(&ctx),
            Err(HistoryError::CallWithoutOutput { index: 0, .. })
        ));
    }

    #[test]
    fn roles_names_and_parts() {
        let mut ctx = ChatContext::new();
        ctx.add_system("rules");
        let mut named = ChatMessage::text(Role::User, "hi");
        named.name = Some("ann".into());
        ctx.add_message(named);
        ctx.add_message(ChatMessage::parts(Role::User, vec![]));
        let msgs = build(&ctx).unwrap();
        assert_eq!(msgs[0], json!({"role": "system", "content": "rules"}));
        assert_eq!(
            msgs[1],
            json!({"role": "user", "content": "hi", "name": "ann"})
        );
        assert_eq!(msgs[2], json!({"role": "user", "content": []}));
        let reasoning = WireMessage::from_context(&ctx, true).unwrap();
        assert_eq!(reasoning[0].role(), "developer");
        assert!(build(&ChatContext::new()).unwrap().is_empty());
    }
}
