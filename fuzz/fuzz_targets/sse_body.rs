//! Arbitrary bytes, split into arbitrary chunks, through the SSE body parser
//! with small limits: whatever a server sends, the stream ends without a panic.
//!
//! The whole input is the body (so captured streams make good seeds); its
//! first byte and length also seed the chunk sizes (1 to 64 bytes) and choose
//! whether structured output is on.

#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use colloquy::llm::{ChatStream, LlmError, StreamLimits, StructuredOutput};
use futures_util::StreamExt;
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

/// Splits `data` into chunks whose sizes come from a small xorshift generator.
fn chunks(data: &[u8]) -> Vec<Result<Bytes, LlmError>> {
    let mut state = (u64::from(data.first().copied().unwrap_or(0)) << 32) ^ data.len() as u64;
    state |= 1;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = ((state % 64) as usize + 1).min(rest.len());
        out.push(Ok(Bytes::copy_from_slice(&rest[..n])));
        rest = &rest[n..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let limits = StreamLimits {
        max_event_bytes: 512,
        max_tool_argument_bytes: 256,
        max_body_bytes: 1024,
    };
    let structured = (data.first().is_some_and(|b| b & 1 == 1)).then(|| {
        StructuredOutput::new(
            "reply",
            serde_json::json!({"type": "object", "properties": {"say": {"type": "string"}}}),
            "say",
        )
    });
    let source = futures_util::stream::iter(chunks(data));
    let mut stream = ChatStream::from_sse_bytes(source, limits, structured);
    runtime().block_on(async {
        let mut n = 0usize;
        while let Some(item) = stream.next().await {
            n += 1;
            // The stream ends after its first error or its Finished event.
            let last = match &item {
                Err(_) => true,
                Ok(event) => matches!(event, colloquy::llm::StreamEvent::Finished(_)),
            };
            if last {
                assert!(stream.next().await.is_none(), "events after the end");
                break;
            }
            assert!(n < 1 << 20, "a bounded input makes a bounded stream");
        }
    });
});
