//! The timer on scripted event sequences, at chosen instants.

use std::sync::Arc;
use std::time::Duration;

use colloquy::llm::{ProviderChoice, SelectionReason};
use tokio::time::Instant;

use super::*;
use crate::ids::SessionId;

struct Script {
    t0: Instant,
    seq: u64,
    timer: TurnTimer,
}

impl Script {
    fn new() -> Self {
        Self {
            t0: Instant::now(),
            seq: 0,
            timer: TurnTimer::new(),
        }
    }

    /// `kind` of `turn` seen at `ms` after the start.
    fn at(&mut self, ms: u64, turn: u64, kind: EventKind) -> Option<TurnLatency> {
        self.seq += 1;
        let event = BusEvent {
            session: SessionId::from("s"),
            turn: TurnId(turn),
            seq: self.seq,
            kind,
        };
        self.timer
            .observe(&event, self.t0 + Duration::from_millis(ms))
    }
}

fn token() -> EventKind {
    EventKind::Token(Arc::from("Sunny"))
}

/// The turn's whole speech, "Sunny." (6 characters).
fn speakable() -> EventKind {
    EventKind::Speakable {
        text: Arc::from("Sunny."),
        last: true,
    }
}

fn final_transcript() -> EventKind {
    EventKind::UserTranscript {
        text: Arc::from("what is the weather"),
        is_final: true,
        heard: None,
    }
}

fn parts_add_up(r: &TurnLatency) {
    let parts = [
        r.speech_end_to_final_ms,
        r.final_to_turn_start_ms,
        r.turn_start_to_first_token_ms,
        r.first_token_to_speakable_ms,
        r.speakable_to_heard_ms,
    ];
    let sum: f64 = parts.iter().map(|p| p.expect("every part")).sum();
    let total = r.end_to_end_ms.expect("end to end");
    assert!((sum - total).abs() < 1e-6, "{sum} vs {total}");
}

#[test]
fn a_turn_breaks_down_into_intervals_that_add_up() {
    let mut s = Script::new();
    assert_eq!(s.at(0, 0, EventKind::UserSpeechStarted), None);
    assert_eq!(s.at(1_000, 0, EventKind::UserSpeechEnded), None);
    assert_eq!(s.at(1_120, 0, final_transcript()), None);
    assert_eq!(s.at(1_125, 1, EventKind::TurnStarted), None);
    assert_eq!(s.at(1_430, 1, token()), None);
    assert_eq!(s.at(1_470, 1, speakable()), None);
    assert_eq!(s.at(1_900, 1, EventKind::TurnFinished(TurnEnd::Stop)), None);
    let r = s
        .at(2_010, 1, EventKind::SpeechPlayed { chars: 6 })
        .expect("ready once heard");
    assert_eq!(r.turn, TurnId(1));
    assert_eq!(r.end, TurnEnd::Stop);
    assert_eq!(r.speech_end_to_final_ms, Some(120.0));
    assert_eq!(r.final_to_turn_start_ms, Some(5.0));
    assert_eq!(r.turn_start_to_first_token_ms, Some(305.0));
    assert_eq!(r.first_token_to_speakable_ms, Some(40.0));
    assert_eq!(r.speakable_to_heard_ms, Some(540.0));
    assert_eq!(r.end_to_end_ms, Some(1_010.0));
    parts_add_up(&r);
    assert_eq!(r.to_json()["end"], "stop");
    // Later progress of the same turn reports nothing more.
    assert_eq!(s.at(2_500, 1, EventKind::SpeechPlayed { chars: 20 }), None);
}

#[test]
fn an_audio_outputs_milestones_split_the_speech_interval() {
    let mut s = Script::new();
    s.at(0, 0, EventKind::UserSpeechEnded);
    s.at(100, 0, final_transcript());
    s.at(105, 1, EventKind::TurnStarted);
    s.at(400, 1, token());
    s.at(420, 1, speakable());
    s.at(450, 1, EventKind::SpeechAudio(AudioStage::Synthesized));
    s.at(500, 1, EventKind::TurnFinished(TurnEnd::Stop));
    s.at(540, 1, EventKind::SpeechAudio(AudioStage::Played));
    // A second segment's milestones change nothing.
    s.at(560, 1, EventKind::SpeechAudio(AudioStage::Synthesized));
    let r = s
        .at(800, 1, EventKind::SpeechPlayed { chars: 6 })
        .expect("heard");
    assert_eq!(r.speakable_to_first_audio_ms, Some(30.0));
    assert_eq!(r.first_audio_to_played_ms, Some(90.0));
    assert_eq!(r.played_to_heard_ms, Some(260.0));
    assert_eq!(r.speakable_to_heard_ms, Some(380.0));
    parts_add_up(&r);
    let back = TurnLatency::from_json(r.end.clone(), &r.to_json()).unwrap();
    assert_eq!(back, r);
}

#[test]
fn a_preemptive_turn_starts_before_the_final() {
    let mut s = Script::new();
    s.at(0, 0, EventKind::UserSpeechStarted);
    s.at(800, 0, EventKind::UserSpeechEnded);
    assert_eq!(s.at(850, 1, EventKind::TurnStarted), None);
    assert_eq!(s.at(900, 0, final_transcript()), None);
    s.at(1_100, 1, token());
    s.at(1_150, 1, speakable());
    s.at(1_200, 1, EventKind::TurnFinished(TurnEnd::Stop));
    assert_eq!(s.at(1_300, 1, EventKind::SpeechPlayed { chars: 3 }), None);
    let r = s
        .at(1_400, 1, EventKind::SpeechPlayed { chars: 6 })
        .unwrap();
    assert_eq!(r.final_to_turn_start_ms, Some(-50.0));
    assert_eq!(r.end_to_end_ms, Some(500.0), "to the first word heard");
    parts_add_up(&r);
}

#[test]
fn a_cut_turn_reports_what_was_heard_and_the_providers_that_served() {
    let mut s = Script::new();
    s.at(0, 0, EventKind::UserSpeechEnded);
    s.at(100, 0, final_transcript());
    s.at(110, 1, EventKind::TurnStarted);
    let fallback = ProviderChoice {
        index: 1,
        label: Arc::from("backup"),
        base_url: Arc::from("http://127.0.0.1:1/v1"),
        reason: SelectionReason::Fallback,
        continuation: false,
    };
    s.at(300, 1, EventKind::ProviderSelected(Arc::new(fallback)));
    s.at(400, 1, token());
    s.at(420, 1, speakable());
    s.at(600, 1, EventKind::SpeechPlayed { chars: 5 });
    s.at(700, 1, EventKind::PlaybackPaused { heard_chars: 9 });
    s.at(900, 1, EventKind::PlaybackResumed { heard_chars: 9 });
    assert_eq!(
        s.at(1_000, 1, EventKind::Interrupted { heard_chars: 14 }),
        None
    );
    let r = s
        .at(1_001, 1, EventKind::TurnFinished(TurnEnd::Cancelled))
        .expect("ready at its end");
    assert_eq!(r.end, TurnEnd::Cancelled);
    assert_eq!(r.cut_at_chars, Some(14));
    assert_eq!((r.pauses, r.resumes, r.fallbacks, r.hedges), (1, 1, 1, 0));
    assert_eq!(r.end_to_end_ms, Some(600.0));
    parts_add_up(&r);
}

#[test]
fn a_turn_with_nothing_to_say_and_a_greeting_without_the_caller() {
    let mut s = Script::new();
    // A greeting: the agent speaks first; no caller timings.
    s.at(0, 1, EventKind::TurnStarted);
    s.at(300, 1, token());
    s.at(320, 1, speakable());
    assert_eq!(s.at(400, 1, EventKind::TurnFinished(TurnEnd::Stop)), None);
    // The next turn starts before the greeting was heard: it reports then.
    let r = s
        .at(500, 2, EventKind::TurnStarted)
        .expect("closed by the next");
    assert_eq!(r.turn, TurnId(1));
    assert_eq!((r.speech_end_to_final_ms, r.end_to_end_ms), (None, None));
    assert_eq!(r.turn_start_to_first_token_ms, Some(300.0));
    assert_eq!(r.speakable_to_heard_ms, None);
    // A tool round with no speech ends at once.
    let r = s
        .at(900, 2, EventKind::TurnFinished(TurnEnd::ToolCalls))
        .expect("nothing to hear");
    assert_eq!(r.end, TurnEnd::ToolCalls);
}

#[test]
fn a_report_waits_for_the_speech_to_end_and_counts_a_late_cut() {
    let mut s = Script::new();
    s.at(0, 0, EventKind::UserSpeechEnded);
    s.at(100, 0, final_transcript());
    s.at(110, 1, EventKind::TurnStarted);
    s.at(400, 1, token());
    s.at(420, 1, speakable());
    // Generation ends long before the speech does.
    assert_eq!(s.at(500, 1, EventKind::TurnFinished(TurnEnd::Stop)), None);
    assert_eq!(s.at(700, 1, EventKind::SpeechPlayed { chars: 3 }), None);
    assert_eq!(
        s.at(800, 1, EventKind::PlaybackPaused { heard_chars: 3 }),
        None
    );
    // The caller barges in during the tail: the cut is in the report.
    let r = s
        .at(900, 1, EventKind::Interrupted { heard_chars: 3 })
        .expect("cut: nothing more to wait for");
    assert_eq!(
        (r.end, r.cut_at_chars, r.pauses),
        (TurnEnd::Stop, Some(3), 1)
    );
    assert_eq!(r.end_to_end_ms, Some(700.0));
    // A session that stops with a turn still speaking reports it.
    s.at(1_000, 2, EventKind::TurnStarted);
    s.at(1_050, 2, speakable());
    s.at(1_100, 2, EventKind::TurnFinished(TurnEnd::Stop));
    let r = s.timer.finish().expect("the open turn at the end");
    assert_eq!((r.turn, r.session_closed), (TurnId(2), true));
    // A turn not spoken (no segments) is over when it finishes.
    s.at(1_200, 3, EventKind::TurnStarted);
    s.at(1_300, 3, token());
    let r = s
        .at(1_400, 3, EventKind::TurnFinished(TurnEnd::Stop))
        .expect("nothing to wait for");
    assert_eq!((r.turn, r.session_closed), (TurnId(3), false));
}

#[test]
fn a_final_before_the_end_of_speech_gives_a_negative_interval() {
    let mut s = Script::new();
    s.at(0, 0, EventKind::UserSpeechStarted);
    s.at(1_300, 0, final_transcript());
    s.at(1_301, 1, EventKind::TurnStarted);
    assert_eq!(s.at(1_350, 0, EventKind::UserSpeechEnded), None);
    s.at(1_400, 1, token());
    s.at(1_410, 1, speakable());
    s.at(1_500, 1, EventKind::TurnFinished(TurnEnd::Stop));
    let r = s
        .at(1_700, 1, EventKind::SpeechPlayed { chars: 6 })
        .unwrap();
    assert_eq!(r.speech_end_to_final_ms, Some(-50.0));
    assert_eq!(r.end_to_end_ms, Some(350.0));
    parts_add_up(&r);
}
