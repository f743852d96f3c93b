//! Per-turn latency reports on a real session: the caller's utterance, the
//! model (mock, 150 ms to its first token), a simulated speaker — each
//! interval present, non-negative, and adding up to the end-to-end figure.

#[path = "support/session.rs"]
mod support;

use std::time::Duration;

use colloquy::mock::{MockResponse, MockServer};
use colloquy_actors::TurnId;
use colloquy_actors::bus::TurnEnd;
use colloquy_actors::latency::turn_reports;
use colloquy_actors::speech::{PacedTextOutput, Speaker, SttEvent};
use support::{GUARD, setup};

#[tokio::test]
async fn a_spoken_turn_reports_where_its_time_went() {
    // The model's first token comes 150 ms after the request.
    let server = MockServer::scripted(vec![
        MockResponse::event_stream()
            .delay(Duration::from_millis(150))
            .tokens(&["Sunny ", "and ", "mild ", "today."])
            .finish("stop", 10, 4),
    ])
    .await
    .unwrap();
    let (supervisor, session, _rx) = setup(&server, |_| {}).await;
    let mut reports = turn_reports(&session);
    let output = PacedTextOutput::new(200.0);
    let speaker = Speaker::spawn(&session, output.clone());
    session.stt(SttEvent::SpeechStarted);
    session.stt(SttEvent::SpeechEnded);
    session.stt(SttEvent::Final("What is the weather like?".into()));
    let r = tokio::time::timeout(GUARD, reports.recv())
        .await
        .expect("a report")
        .expect("the session is running");
    assert_eq!((r.turn, r.end.clone()), (TurnId(1), TurnEnd::Stop));
    let parts = [
        r.speech_end_to_final_ms,
        r.final_to_turn_start_ms,
        r.turn_start_to_first_token_ms,
        r.first_token_to_speakable_ms,
        r.speakable_to_heard_ms,
    ];
    for (i, p) in parts.iter().enumerate() {
        let p = p.unwrap_or_else(|| panic!("interval {i} missing: {r:?}"));
        assert!(p >= 0.0, "interval {i} negative: {r:?}");
    }
    let sum: f64 = parts.iter().map(|p| p.unwrap()).sum();
    let total = r.end_to_end_ms.expect("end to end");
    assert!((sum - total).abs() < 1e-6, "{sum} vs {total}");
    // The model's own delay is inside its interval.
    assert!(r.turn_start_to_first_token_ms.unwrap() >= 150.0, "{r:?}");
    assert_eq!(
        (r.pauses, r.resumes, r.cut_at_chars, r.fallbacks),
        (0, 0, None, 0)
    );
    let json = r.to_json();
    assert_eq!(json["end"], "stop");
    assert!(json["end_to_end_ms"].as_f64().unwrap() >= 150.0);
    drop(speaker);
    supervisor.shutdown().await;
}
