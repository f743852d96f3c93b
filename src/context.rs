//! The conversation: what was said, by whom, and which tools ran.
//!
//! A [`ChatContext`] is an ordered list of [`ChatItem`]s. Messages carry roles and
//! content parts; tool calls and their outputs are items of their own (as in the
//! reference plugin), so a round of parallel calls is a run of consecutive
//! [`FunctionCall`] items that the wire mapping groups into one assistant message
//! (together with the assistant text right before them, if any).
//!
//! The invariant that matters for a voice agent: every call in the history has an
//! output and every output has its call. Providers reject a request that breaks it,
//! so [`ChatContext::truncate`] and the actor's interruption commit preserve it,
//! and [`ChatClient::stream`](crate::llm::ChatClient::stream) refuses a history
//! that breaks it (see [`WireMessage`](crate::llm::WireMessage)).

mod content;
mod truncate;

pub use content::{ContentPart, ImageContent, ImageDetail};

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Role {
    /// Instructions from the application.
    System,
    /// Instructions for reasoning models (what `system` becomes for o1/o3/o4/gpt-5).
    Developer,
    /// The human.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// The wire name of the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// A unique id for an item of the context.
pub fn new_item_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{prefix}_{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Stable id of the message.
    pub id: String,
    /// Author of the message.
    pub role: Role,
    /// Text and image parts, in order.
    pub content: Vec<ContentPart>,
    /// Optional participant name, sent as `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Set on an assistant message cut short by the user: the content is what the
    /// user heard, not what the model generated.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    /// Set on an assistant message whose answer hit the runtime's size cap: the
    /// content is cut (the user may have heard more).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl ChatMessage {
    /// A message made of one text part.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self::parts(role, vec![ContentPart::Text(text.into())])
    }

    /// A message made of several parts.
    pub fn parts(role: Role, content: Vec<ContentPart>) -> Self {
        Self {
            id: new_item_id("msg"),
            role,
            content,
            name: None,
            interrupted: false,
            truncated: false,
        }
    }

    /// The concatenated text parts of the message.
    pub fn text_content(&self) -> String {
        let mut out = String::new();
        for part in &self.content {
            if let ContentPart::Text(t) = part {
                out.push_str(t);
            }
        }
        out
    }
}

/// A tool call made by the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// Stable id of the item.
    pub id: String,
    /// The provider's call id, echoed in the output.
    pub call_id: String,
    /// Name of the function.
    pub name: String,
    /// Raw JSON arguments, exactly as the model produced them.
    pub arguments: String,
}

/// The result of a tool call, sent back to the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCallOutput {
    /// Stable id of the item.
    pub id: String,
    /// The call this output answers.
    pub call_id: String,
    /// What the tool returned (or the error text).
    pub output: String,
    /// Whether the output describes a failure.
    #[serde(default)]
    pub is_error: bool,
}

/// One entry of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChatItem {
    /// A message.
    Message(ChatMessage),
    /// A tool call by the model.
    FunctionCall(FunctionCall),
    /// A tool's answer.
    FunctionCallOutput(FunctionCallOutput),
}

impl ChatItem {
    /// A tool call item with a fresh id.
    pub fn function_call(
        call_id: impl Into<String>,
        name: impl Into<String>,
        arguments: impl Into<String>,
    ) -> Self {
        ChatItem::FunctionCall(FunctionCall {
            id: new_item_id("fc"),
            call_id: call_id.into(),
            name: name.into(),
            arguments: arguments.into(),
        })
    }

    /// A tool output item with a fresh id.
    pub fn function_output(
        call_id: impl Into<String>,
        output: impl Into<String>,
        is_error: bool,
    ) -> Self {
        ChatItem::FunctionCallOutput(FunctionCallOutput {
            id: new_item_id("fco"),
            call_id: call_id.into(),
            output: output.into(),
            is_error,
        })
    }

    /// The item's id.
    pub fn id(&self) -> &str {
        match self {
            ChatItem::Message(m) => &m.id,
            ChatItem::FunctionCall(c) => &c.id,
            ChatItem::FunctionCallOutput(o) => &o.id,
        }
    }

    /// An estimate of the bytes this item adds to a request.
    pub fn approx_bytes(&self) -> usize {
        match self {
            ChatItem::Message(m) => {
                m.content
                    .iter()
                    .map(ContentPart::approx_bytes)
                    .sum::<usize>()
                    + 32
            }
            ChatItem::FunctionCall(c) => c.call_id.len() + c.name.len() + c.arguments.len() + 64,
            ChatItem::FunctionCallOutput(o) => o.call_id.len() + o.output.len() + 48,
        }
    }
}

/// The conversation history sent to the model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatContext {
    /// The items, oldest first.
    pub items: Vec<ChatItem>,
}

impl ChatContext {
    /// An empty conversation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends any item.
    pub fn push(&mut self, item: ChatItem) {
        self.items.push(item);
    }

    /// Appends a message and returns its id.
    pub fn add_message(&mut self, message: ChatMessage) -> String {
        let id = message.id.clone();
        self.items.push(ChatItem::Message(message));
        id
    }

    /// Appends a system message.
    pub fn add_system(&mut self, text: impl Into<String>) -> String {
        self.add_message(ChatMessage::text(Role::System, text))
    }

    /// Appends a user text message.
    pub fn add_user(&mut self, text: impl Into<String>) -> String {
        self.add_message(ChatMessage::text(Role::User, text))
    }

    /// Appends an assistant text message.
    pub fn add_assistant(&mut self, text: impl Into<String>) -> String {
        self.add_message(ChatMessage::text(Role::Assistant, text))
    }

    /// Appends a tool call made by the model.
    pub fn add_function_call(
        &mut self,
        call_id: impl Into<String>,
        name: impl Into<String>,
        arguments: impl Into<String>,
    ) {
        self.items
            .push(ChatItem::function_call(call_id, name, arguments));
    }

    /// Appends a tool's output.
    pub fn add_function_output(
        &mut self,
        call_id: impl Into<String>,
        output: impl Into<String>,
        is_error: bool,
    ) {
        self.items
            .push(ChatItem::function_output(call_id, output, is_error));
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the conversation is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The messages only, in order.
    pub fn messages(&self) -> impl Iterator<Item = &ChatMessage> {
        self.items.iter().filter_map(|i| match i {
            ChatItem::Message(m) => Some(m),
            _ => None,
        })
    }

    /// An estimate of the request bytes the context produces.
    pub fn approx_bytes(&self) -> usize {
        self.items.iter().map(ChatItem::approx_bytes).sum()
    }

    /// Call ids that have no output yet, in order.
    pub fn calls_without_output(&self) -> Vec<&str> {
        let outputs: std::collections::HashSet<&str> = self
            .items
            .iter()
            .filter_map(|i| match i {
                ChatItem::FunctionCallOutput(o) => Some(o.call_id.as_str()),
                _ => None,
            })
            .collect();
        self.items
            .iter()
            .filter_map(|i| match i {
                ChatItem::FunctionCall(c) if !outputs.contains(c.call_id.as_str()) => {
                    Some(c.call_id.as_str())
                }
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_round_trip_keeps_every_item() {
        let mut ctx = ChatContext::new();
        ctx.add_system("be brief");
        ctx.add_message(ChatMessage::parts(
            Role::User,
            vec![
                ContentPart::Text("what is this?".into()),
                ContentPart::Image(
                    ImageContent::from_bytes(b"\x89PNG", "image/png").with_detail(ImageDetail::Low),
                ),
            ],
        ));
        ctx.add_function_call("call_1", "lookup", r#"{"q":"x"}"#);
        ctx.add_function_output("call_1", "42", false);
        let mut heard = ChatMessage::text(Role::Assistant, "The answer");
        heard.interrupted = true;
        ctx.add_message(heard);
        let mut cut = ChatMessage::text(Role::Assistant, "A very long");
        cut.truncated = true;
        ctx.add_message(cut);
        let json = serde_json::to_string(&ctx).unwrap();
        let back: ChatContext = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ctx);
        assert_eq!(json.matches("\"truncated\":true").count(), 1);
        assert_eq!(json.matches("\"interrupted\":true").count(), 1);
        assert!(ctx.calls_without_output().is_empty());
    }

    #[test]
    fn flags_default_to_false_and_are_not_serialized_when_false() {
        let m = ChatMessage::text(Role::Assistant, "hi");
        assert!(!m.interrupted && !m.truncated);
        let json = serde_json::to_string(&m).unwrap();
        assert!(!json.contains("truncated") && !json.contains("interrupted"));
        let old: ChatMessage =
            serde_json::from_str(r#"{"id":"m1","role":"assistant","content":[]}"#).unwrap();
        assert!(!old.truncated);
    }
}
