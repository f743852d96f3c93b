//! Usage of every request, once (issue 13): a cut while a hedge races
//! reports both requests; a cut after a continuation counts the primary's
//! text once; a missed speculation whose round fell back reports the failed
//! request's cost too. Every server is a 127.0.0.1 mock; tests wait on
//! request counts and bus events.

use std::time::Duration;

use colloquy::llm::{
    ChatClient, Hedging, LlmOptions, OpenAiConfig, ProviderChain, ProviderSpec, Usage,
};
use colloquy::mock::{MockResponse, MockServer, sse_chunk};
use colloquy_actors::bus::{BusEvent, BusReceiver, EventKind, SpeculationOutcome, TurnEnd};
use colloquy_actors::{
    AgentSettings, Preemptive, SessionConfig, SessionHandle, Supervisor, SupervisorConfig, TurnId,
};
use serde_json::json;

#[path = "support/session.rs"]
mod support;
use support::{GUARD, next_matching};

fn spec(server: &MockServer) -> ProviderSpec {
    ProviderSpec::new(OpenAiConfig::compatible(server.base_url()))
}

/// A response that starts, then only sends keep-alive comments.
fn stalled() -> MockResponse {
    MockResponse::event_stream()
        .event(&sse_chunk(
            json!({"role": "assistant", "content": ""}),
            None,
        ))
        .stall_with_keep_alives(Duration::from_millis(20))
}

async fn requests_reach(server: &MockServer, n: u64) {
    let mut rx = server.request_count();
    tokio::time::timeout(GUARD, rx.wait_for(|c| *c >= n))
        .await
        .expect("requests arrived")
        .unwrap();
}

async fn session(
    chain: ProviderChain,
    tweak: impl FnOnce(&mut AgentSettings),
) -> (Supervisor, SessionHandle, BusReceiver) {
    let client = ChatClient::with_chain(chain).unwrap();
    let sup = Supervisor::start(SupervisorConfig::default())
        .await
        .unwrap();
    let mut settings = AgentSettings::new(LlmOptions::new("m"));
    tweak(&mut settings);
    let session = sup
        .start_session("usage", SessionConfig::new(client, settings))
        .await
        .unwrap();
    let rx = session.subscribe();
    (sup, session, rx)
}

/// The turn's events up to its `TurnFinished`.
async fn turn_events(rx: &mut BusReceiver, turn: TurnId) -> Vec<BusEvent> {
    let mut out = Vec::new();
    loop {
        let ev = next_matching(rx, |e| e.turn == turn).await;
        let done = matches!(ev.kind, EventKind::TurnFinished(_));
        out.push(ev);
        if done {
            return out;
        }
    }
}

/// Every request's usage the turn reported: `Usage` events and the usage
/// on `ProviderFailed`.
fn usages(events: &[BusEvent]) -> Vec<Usage> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Usage(u) => Some(**u),
            EventKind::ProviderFailed(f) => f.usage,
            _ => None,
        })
        .collect()
}

/// Defect 3: primary and hedge both in flight, `cancel()`: one usage per
/// request (two), both estimated since neither provider reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_during_a_hedge_race_reports_both_requests() {
    let a = MockServer::start(|_| stalled()).await.unwrap();
    let b = MockServer::start(|_| stalled()).await.unwrap();
    let chain = ProviderChain::new(spec(&a))
        .with_fallback(spec(&b))
        .with_hedging(Hedging::After(Duration::from_millis(50)));
    let (sup, session, mut rx) = session(chain, |_| {}).await;
    session.send_text("Hi").unwrap();
    let turn = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    requests_reach(&a, 1).await;
    requests_reach(&b, 1).await; // both requests in flight
    session.cancel().unwrap();
    let events = turn_events(&mut rx, turn).await;
    assert_eq!(
        events.last().unwrap().kind,
        EventKind::TurnFinished(TurnEnd::Cancelled)
    );
    let usages = usages(&events);
    assert_eq!(usages.len(), 2, "one usage per request: {events:?}");
    assert!(usages.iter().all(|u| u.estimated && u.prompt_tokens > 0));
    sup.shutdown().await;
}

/// Defect 3 (continuation): the primary published text and dropped; the
/// continuation is cut before it said anything. The primary's text is
/// counted once (on its `ProviderFailed`), not again in the cut's estimate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_after_a_continuation_counts_the_primarys_text_once() {
    let prefix = "Hello there, friend. ";
    let a = MockServer::start(move |_| {
        MockResponse::event_stream()
            .event(&sse_chunk(
                json!({"role": "assistant", "content": ""}),
                None,
            ))
            .tokens(&[prefix])
            .hang_up()
    })
    .await
    .unwrap();
    let b = MockServer::start(|_| stalled()).await.unwrap();
    let chain = ProviderChain::new(spec(&a)).with_fallback(spec(&b));
    let (sup, session, mut rx) = session(chain, |_| {}).await;
    session.send_text("Hi").unwrap();
    let turn = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    requests_reach(&b, 1).await; // the continuation is in flight
    session.cancel().unwrap();
    let events = turn_events(&mut rx, turn).await;
    let usages = usages(&events);
    assert_eq!(usages.len(), 2, "one per request: {events:?}");
    let completion: u64 = usages.iter().map(|u| u.completion_tokens).sum();
    assert_eq!(
        completion,
        Usage::estimate(0, prefix.chars().count()).completion_tokens,
        "the prefix is counted once: {usages:?}"
    );
    sup.shutdown().await;
}

/// Defect 4: a speculation whose primary failed (500) and whose fallback
/// answered is missed: `SpeculationEnded.usage` holds both requests' cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_speculation_that_fell_back_reports_every_request() {
    let a = MockServer::start(|_| MockResponse::error(500, "boom"))
        .await
        .unwrap();
    let b = MockServer::start(|_| MockResponse::text(&["It is ", "sunny."]))
        .await
        .unwrap();
    let chain = ProviderChain::new(spec(&a)).with_fallback(spec(&b));
    let (sup, session, mut rx) = session(chain, |s| {
        s.preemptive = Some(Preemptive {
            debounce: Duration::ZERO,
        });
        // A long prompt: each request's estimate is far above the mock's
        // reported 10 prompt tokens.
        s.instructions = Some("Answer briefly. ".repeat(500));
    })
    .await;
    session.user_transcript("what is the weather", false);
    requests_reach(&b, 1).await; // the primary failed and was reported
    session.user_transcript("What is the time?", true);
    let ended = next_matching(&mut rx, |e| {
        matches!(e.kind, EventKind::SpeculationEnded { .. })
    })
    .await;
    let EventKind::SpeculationEnded { outcome, usage } = ended.kind else {
        unreachable!()
    };
    assert_eq!(outcome, SpeculationOutcome::Miss);
    let usage = usage.expect("a missed speculation reports its cost");
    // The failed request's cost (an estimate of its prompt, since a 500
    // reports nothing) is part of it, whether or not the fallback had
    // reported its own figure (prompt 10) by the time of the miss.
    let failed = Usage::estimate(a.requests()[0].body.len(), 0);
    assert!(
        usage.prompt_tokens > failed.prompt_tokens,
        "the failed request's cost is included: {usage:?}, failed alone {failed:?}"
    );
    sup.shutdown().await;
}

/// Defect 7, through a session: a request that delivered only usage and then
/// broke is retried (the user gets an answer), and each request's usage is
/// on the bus once: the broken one's, then the answer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_sent_only_usage_then_broke_is_retried_and_both_usages_reported() {
    use colloquy::llm::{ClientConfig, RetryPolicy};
    let usage_only = format!(
        "data: {}\n\n",
        json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
               "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 0, "total_tokens": 7}})
    );
    let server = MockServer::scripted(vec![
        MockResponse::event_stream().event(&usage_only).hang_up(),
        MockResponse::text(&["Fine", " thanks."]),
    ])
    .await
    .unwrap();
    let config = ClientConfig {
        retry: RetryPolicy {
            max_retries: 1,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
        },
        ..ClientConfig::default()
    };
    let client =
        ChatClient::with_config(OpenAiConfig::compatible(server.base_url()), config).unwrap();
    let sup = Supervisor::start(SupervisorConfig::default())
        .await
        .unwrap();
    let session = sup
        .start_session(
            "retry",
            SessionConfig::new(client, AgentSettings::new(LlmOptions::new("m"))),
        )
        .await
        .unwrap();
    let mut rx = session.subscribe();
    session.send_text("How are you?").unwrap();
    let turn = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    let events = turn_events(&mut rx, turn).await;
    assert_eq!(
        events.last().unwrap().kind,
        EventKind::TurnFinished(TurnEnd::Stop),
        "{events:?}"
    );
    let prompts: Vec<u64> = usages(&events).iter().map(|u| u.prompt_tokens).collect();
    assert_eq!(prompts, [7, 10], "each request's usage once: {events:?}");
    assert_eq!(server.requests().len(), 2);
    sup.shutdown().await;
}
