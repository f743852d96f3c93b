//! Client-side cost of one streamed chunk, from bytes to event: UTF-8 guard,
//! SSE parsing (eventsource-stream), chunk JSON parsing and event building.
//! Each chunk is its own network read, as on a real connection.
//!
//! `cargo bench --bench parse`; per-chunk time = reported time / chunks.

use std::hint::black_box;
use std::path::PathBuf;

use bytes::Bytes;
use colloquy::llm::bench_support::parse_chunks;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn openai_like(n: usize) -> Vec<Bytes> {
    let mut chunks = vec![Bytes::from(
        "data: {\"id\":\"chatcmpl-AbC123\",\"object\":\"chat.completion.chunk\",\"created\":1727000000,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_abc\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    )];
    for i in 0..n {
        chunks.push(Bytes::from(format!(
            "data: {{\"id\":\"chatcmpl-AbC123\",\"object\":\"chat.completion.chunk\",\"created\":1727000000,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_abc\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" token{i}\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
        )));
    }
    chunks.push(Bytes::from(
        "data: {\"id\":\"chatcmpl-AbC123\",\"object\":\"chat.completion.chunk\",\"created\":1727000000,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n",
    ));
    chunks.push(Bytes::from("data: [DONE]\n\n"));
    chunks
}

fn fixture(name: &str) -> Option<Vec<Bytes>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sse")
        .join(name);
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.split_inclusive("\n\n")
            .map(|s| Bytes::from(s.to_string()))
            .collect(),
    )
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("parse_per_chunk");
    let mut inputs = vec![("openai_text_1000", openai_like(1000))];
    if let Some(f) = fixture("11-azure-foundry-deepseek-reasoning-emoji.sse") {
        inputs.push(("fixture_11_deepseek_reasoning", f));
    }
    if let Some(f) = fixture("20-xai-grok-reasoning-tool-call.sse") {
        inputs.push(("fixture_20_xai_tool_call", f));
    }
    for (name, chunks) in inputs {
        group.throughput(Throughput::Elements(chunks.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let events = rt.block_on(parse_chunks(black_box(chunks.clone())));
                black_box(events)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
