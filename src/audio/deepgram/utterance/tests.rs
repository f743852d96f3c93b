use std::time::Duration;

use super::Utterances;
use crate::audio::AudioFrame;
use crate::audio::deepgram::message::{ServerMessage, parse};
use crate::audio::deepgram::timeline::Timeline;

const RATE: u32 = 16_000;

/// One ended utterance of 0.5 s at input 0, sent on the connection.
fn sent() -> (Utterances, Timeline) {
    let mut us = Utterances::new(RATE, Duration::from_secs(30));
    let mut tl = Timeline::default();
    us.start(0);
    for i in 0..25u64 {
        let f = AudioFrame::new(vec![0; 320], RATE, i * 320);
        if let Some(u) = us.open() {
            u.conn_start.get_or_insert(tl.sent());
        }
        us.keep(f);
        tl.push(i * 320, 320);
    }
    (us, tl)
}

fn results(json: &str) -> super::Results {
    match parse(json) {
        Ok(ServerMessage::Results(r)) => r,
        other => panic!("{other:?}"),
    }
}

#[test]
fn huge_server_times_do_not_overflow() {
    let (mut us, tl) = sent();
    assert!(us.end_open());
    if let Some(u) = us.iter_mut().last() {
        u.conn_end = Some(tl.sent());
    }
    let r = results(
        r#"{"type":"Results","start":1e300,"duration":1e300,"is_final":true,
        "speech_final":true,"channel":{"alternatives":[{"transcript":"x"}]}}"#,
    );
    let _ = us.on_results(&r, &tl);
    let (mut us, tl) = sent();
    assert!(us.end_open());
    if let Some(u) = us.iter_mut().last() {
        u.conn_end = Some(tl.sent());
    }
    let out = us.on_utterance_end(1e300, Duration::from_secs(1));
    assert_eq!(out.len(), 1);
    assert!(out[0].is_final);
}

#[test]
fn a_repeated_final_is_kept_once() {
    let (mut us, tl) = sent();
    let r = results(
        r#"{"type":"Results","start":0,"duration":0.5,"is_final":true,
        "channel":{"alternatives":[{"transcript":"hello"}]}}"#,
    );
    let first = us.on_results(&r, &tl);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].text, "hello");
    for _ in 0..3 {
        let again = us.on_results(&r, &tl);
        assert!(again.iter().all(|t| t.text == "hello"), "{again:?}");
    }
}
