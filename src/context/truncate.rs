//! Bounding the history without breaking it.
//!
//! A long call costs tokens and latency on every turn, so embedders cap the
//! history. Cutting at an arbitrary index can strand a tool call without its
//! output (the provider answers 400) or drop the instructions, so the cut keeps
//! the first system message and the last user message and removes calls and
//! outputs that lost their partner.

use super::{ChatContext, ChatItem, Role};
use std::collections::HashSet;

impl ChatContext {
    /// Keeps at most `max_items` of the newest items, plus the first system
    /// message and the last user message wherever they stand. Afterwards every
    /// call has its output and every output its call.
    pub fn truncate(&mut self, max_items: usize) {
        if self.items.len() <= max_items {
            return;
        }
        let start = self.items.len() - max_items;
        let first_system = self
            .items
            .iter()
            .position(|i| matches!(i, ChatItem::Message(m) if m.role == Role::System));
        let last_user = self
            .items
            .iter()
            .rposition(|i| matches!(i, ChatItem::Message(m) if m.role == Role::User));
        let mut kept: Vec<ChatItem> = Vec::with_capacity(max_items + 2);
        for (idx, item) in std::mem::take(&mut self.items).into_iter().enumerate() {
            if idx >= start || Some(idx) == first_system || Some(idx) == last_user {
                kept.push(item);
            }
        }
        let calls: HashSet<String> = kept
            .iter()
            .filter_map(|i| match i {
                ChatItem::FunctionCall(c) => Some(c.call_id.clone()),
                _ => None,
            })
            .collect();
        let outputs: HashSet<String> = kept
            .iter()
            .filter_map(|i| match i {
                ChatItem::FunctionCallOutput(o) => Some(o.call_id.clone()),
                _ => None,
            })
            .collect();
        kept.retain(|i| match i {
            ChatItem::FunctionCall(c) => outputs.contains(&c.call_id),
            ChatItem::FunctionCallOutput(o) => calls.contains(&o.call_id),
            _ => true,
        });
        self.items = kept;
    }
}

#[cfg(test)]
mod tests {
    use crate::context::{ChatContext, ChatItem, Role};

    fn long_context() -> ChatContext {
        let mut ctx = ChatContext::new();
        ctx.add_system("rules");
        ctx.add_user("first question");
        ctx.add_function_call("c1", "lookup", "{}");
        ctx.add_function_output("c1", "result", false);
        ctx.add_assistant("answer one");
        ctx.add_user("second question");
        ctx.add_function_call("c2", "lookup", "{}");
        ctx.add_function_call("c3", "lookup", "{}");
        ctx.add_function_output("c2", "r2", false);
        ctx.add_function_output("c3", "r3", false);
        ctx.add_assistant("answer two");
        ctx
    }

    #[test]
    fn keeps_system_and_last_user_and_pairs() {
        for max in 0..12 {
            let mut ctx = long_context();
            ctx.truncate(max);
            let first = ctx.items.first().expect("system kept");
            assert!(matches!(first, ChatItem::Message(m) if m.role == Role::System));
            assert!(
                ctx.messages()
                    .any(|m| m.role == Role::User && m.text_content() == "second question"),
                "max {max}"
            );
            assert!(ctx.calls_without_output().is_empty(), "max {max}");
            for item in &ctx.items {
                if let ChatItem::FunctionCallOutput(o) = item {
                    assert!(
                        ctx.items.iter().any(
                            |i| matches!(i, ChatItem::FunctionCall(c) if c.call_id == o.call_id)
                        ),
                        "output {} without call at max {max}",
                        o.call_id
                    );
                }
            }
        }
    }

    #[test]
    fn cut_inside_a_parallel_round_drops_the_whole_pairing() {
        let mut ctx = long_context();
        // Keep the last 3: output c2, output c3, answer two. Calls c2/c3 are gone,
        // so their outputs must go too.
        ctx.truncate(3);
        assert!(
            !ctx.items
                .iter()
                .any(|i| matches!(i, ChatItem::FunctionCallOutput(_)))
        );
        assert_eq!(ctx.len(), 3); // system, last user, answer two
    }
}
