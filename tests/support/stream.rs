//! Helpers shared by the client-level tests (included with `#[path]`): drain
//! one chat stream with a guard against hangs.
#![allow(dead_code)] // each test crate uses a different subset

use std::time::Duration;

use colloquy::context::ChatContext;
use colloquy::llm::{ChatClient, ChatRequest, LlmError, LlmOptions, StreamEvent};
use futures_util::StreamExt;

/// Generous bound that only turns a hang into a failure.
pub const HANG: Duration = Duration::from_secs(20);

/// Every event of one completion of `ctx`, and the error that ended it.
pub async fn collect_ctx(
    client: &ChatClient,
    ctx: &ChatContext,
) -> (Vec<StreamEvent>, Option<LlmError>) {
    let options = LlmOptions::new("m");
    let mut stream = client.stream(ChatRequest::new(ctx, &options)).unwrap();
    let mut events = Vec::new();
    let run = async {
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(e) => events.push(e),
                Err(e) => return Some(e),
            }
        }
        None
    };
    let err = tokio::time::timeout(HANG, run)
        .await
        .expect("the stream did not end by itself");
    (events, err)
}

/// [`collect_ctx`] of a one-message conversation.
pub async fn collect(client: &ChatClient) -> (Vec<StreamEvent>, Option<LlmError>) {
    let mut ctx = ChatContext::new();
    ctx.add_user("Hello");
    collect_ctx(client, &ctx).await
}

/// The answer text of `events`.
pub fn text_of(events: &[StreamEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Token(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}
