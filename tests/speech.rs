//! Speech adapters through the public API, against 127.0.0.1 mock servers:
//! the [`Speaker`] speaks whole turns in order and reports progress, goes
//! silent on a cut, pauses and resumes with zero characters repeated or
//! skipped, ignores a backchannel, drops a stale turn; [`SttEvent`] maps onto
//! the session's user events. Every wait is on a bus event, a speaker status
//! or a hook; speech is simulated by [`PacedTextOutput`].

#[path = "support/session.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use colloquy::context::{ChatContext, ChatItem, Role};
use colloquy::mock::{MockResponse, MockServer};
use colloquy_actors::bus::{BusEvent, BusReceiver, EventKind, TurnEnd};
use colloquy_actors::speech::{PacedTextOutput, Speaker, SpeakerStatus, SttEvent};
use colloquy_actors::turn_taking::InterruptionMode;
use colloquy_actors::{InterruptionPolicy, SessionHandle, TurnId};
use support::{GUARD, next_matching, setup};
use tokio::sync::watch;

const LONG: &str = "Paris is the capital of France. It sits on the Seine, in the north of the \
                    country. Its museums are among the most visited in the world, and its cafés \
                    are famous too.";

/// Splits a reply into tokens of a few words.
fn tokens(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, _) in text.match_indices(' ').skip(2).step_by(3) {
        out.push(&text[start..i]);
        start = i;
    }
    out.push(&text[start..]);
    out
}

/// A server answering "first" with [`LONG`] and anything else with a short reply.
async fn server() -> MockServer {
    MockServer::start(|req| {
        let said = req.last_message()["content"]
            .as_str()
            .unwrap_or("")
            .to_lowercase();
        if said.contains("first") || said.contains("paris") {
            MockResponse::text(&tokens(LONG))
        } else {
            MockResponse::text(&["Sure", ", here", " it is."])
        }
    })
    .await
    .unwrap()
}

async fn session_with(
    server: &MockServer,
    policy: InterruptionPolicy,
) -> (colloquy_actors::Supervisor, SessionHandle, BusReceiver) {
    setup(server, |c| {
        c.speech_output = true;
        c.settings.interruption = policy;
        c.bus_capacity = 4096;
    })
    .await
}

async fn speech_over(status: &mut watch::Receiver<SpeakerStatus>, turn: u64) {
    tokio::time::timeout(
        GUARD,
        status.wait_for(|s| s.turn >= TurnId(turn) && s.finished),
    )
    .await
    .expect("speech did not end")
    .expect("speaker alive");
}

/// Every event of the session, read as the test waits.
struct Log {
    rx: BusReceiver,
    all: Vec<BusEvent>,
}

impl Log {
    fn new(rx: BusReceiver) -> Self {
        Self {
            rx,
            all: Vec::new(),
        }
    }

    /// Reads until `pred` matches; returns the matching event's index.
    async fn until(&mut self, mut pred: impl FnMut(&BusEvent) -> bool) -> usize {
        let all = &mut self.all;
        next_matching(&mut self.rx, |e| {
            all.push(e.clone());
            pred(e)
        })
        .await;
        self.all.len() - 1
    }

    fn kind_at(&self, i: usize) -> &EventKind {
        &self.all[i].kind
    }
}

fn played(events: &[BusEvent], turn: TurnId) -> Vec<usize> {
    events
        .iter()
        .filter(|e| e.turn == turn)
        .filter_map(|e| match e.kind {
            EventKind::SpeechPlayed { chars } => Some(chars),
            _ => None,
        })
        .collect()
}

fn speakable_text(events: &[BusEvent], turn: TurnId) -> String {
    events
        .iter()
        .filter(|e| e.turn == turn)
        .filter_map(|e| match &e.kind {
            EventKind::Speakable { text, .. } => Some(text.to_string()),
            _ => None,
        })
        .collect()
}

/// The committed messages: role, text, interrupted.
fn messages(ctx: &ChatContext) -> Vec<(Role, String, bool)> {
    ctx.items
        .iter()
        .filter_map(|i| match i {
            ChatItem::Message(m) => Some((m.role, m.text_content(), m.interrupted)),
            _ => None,
        })
        .collect()
}

fn is_played(e: &BusEvent, turn: u64, at_least: usize) -> bool {
    e.turn == TurnId(turn)
        && matches!(e.kind, EventKind::SpeechPlayed { chars } if chars >= at_least)
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

#[tokio::test]
async fn speaks_whole_turns_in_order_and_reports_progress() {
    let server = server().await;
    let (supervisor, session, rx) = session_with(&server, InterruptionPolicy::default()).await;
    let mut log = Log::new(rx);
    let output = PacedTextOutput::new(600.0);
    let speaker = Speaker::spawn(&session, output.clone());
    let mut status = speaker.status();

    session.stt(SttEvent::Final("Tell me about Paris first.".into()));
    log.until(|e| is_played(e, 1, chars(LONG))).await;
    speech_over(&mut status, 1).await;
    assert_eq!(speakable_text(&log.all, TurnId(1)), LONG);
    assert_eq!(output.played_text(), LONG, "the whole turn, in order");
    let progress = played(&log.all, TurnId(1));
    assert!(
        progress.windows(2).all(|w| w[0] < w[1]),
        "cumulative, strictly increasing: {progress:?}"
    );
    assert!(progress.len() > 5, "reported as it plays: {progress:?}");
    assert_eq!(progress.last(), Some(&chars(LONG)));

    session.stt(SttEvent::Final("And then?".into()));
    log.until(|e| is_played(e, 2, 17)).await;
    speech_over(&mut status, 2).await;
    assert_eq!(speakable_text(&log.all, TurnId(2)), "Sure, here it is.");
    assert_eq!(output.played_text(), format!("{LONG}Sure, here it is."));

    let ctx = session.context().await.unwrap();
    assert_eq!(
        messages(&ctx),
        [
            (Role::User, "Tell me about Paris first.".into(), false),
            (Role::Assistant, LONG.into(), false),
            (Role::User, "And then?".into(), false),
            (Role::Assistant, "Sure, here it is.".into(), false),
        ]
    );
    drop(speaker);
    supervisor.shutdown().await;
}

fn is_cut(e: &BusEvent) -> bool {
    matches!(
        e.kind,
        EventKind::TurnFinished(TurnEnd::Cancelled) | EventKind::Interrupted { .. }
    )
}

#[tokio::test]
async fn a_cut_silences_the_output_before_the_call_returns() {
    let server = server().await;
    let (supervisor, session, rx) = session_with(&server, InterruptionPolicy::immediate()).await;
    let mut log = Log::new(rx);
    let output = PacedTextOutput::new(40.0);
    let speaker = Speaker::spawn(&session, output.clone());
    let mut status = speaker.status();
    // What the output had played when the cut hooks ran (this one is
    // registered after the speaker's, so it runs after the output stopped).
    let at_hook = Arc::new(Mutex::new(Vec::new()));
    {
        let (out, seen) = (output.clone(), at_hook.clone());
        session.bus().on_cut(move |_| {
            seen.lock().unwrap().push(out.played_text());
        });
    }

    session.stt(SttEvent::Final("Paris first, please.".into()));
    log.until(|e| is_played(e, 1, 20)).await;
    session.stt(SttEvent::SpeechStarted); // immediate mode: cut here and now
    let heard = output.played_text();
    log.until(is_cut).await;
    speech_over(&mut status, 1).await;
    assert!(chars(&heard) >= 20 && LONG.starts_with(&heard), "{heard:?}");
    assert_eq!(*at_hook.lock().unwrap(), vec![heard.clone()]);
    assert_eq!(
        played(&log.all, TurnId(1)).last().copied(),
        Some(chars(&heard)),
        "the last position reported is what was played"
    );

    // The next turn plays in full, right after what was heard: nothing of
    // the cut turn was played after the cut.
    session.stt(SttEvent::SpeechEnded);
    session.stt(SttEvent::Final("Something else.".into()));
    speech_over(&mut status, 2).await;
    assert_eq!(output.played_text(), format!("{heard}Sure, here it is."));
    let ctx = session.context().await.unwrap();
    assert_eq!(
        messages(&ctx)[1],
        (Role::Assistant, heard.clone(), true),
        "committed as heard"
    );
    drop(speaker);
    supervisor.shutdown().await;
}

fn confirmed(min_pause_ms: u64, resume_ms: u64) -> InterruptionPolicy {
    let mut p = InterruptionPolicy::default();
    assert_eq!(p.mode, InterruptionMode::Confirmed);
    p.min_pause = Duration::from_millis(min_pause_ms);
    p.resume_timeout = Duration::from_millis(resume_ms);
    p
}

#[tokio::test]
async fn a_false_interruption_pauses_and_resumes_with_nothing_repeated_or_skipped() {
    let server = server().await;
    let (supervisor, session, rx) = session_with(&server, confirmed(0, 300)).await;
    let mut log = Log::new(rx);
    let pieces = Arc::new(Mutex::new(Vec::<String>::new()));
    let output = {
        let pieces = pieces.clone();
        PacedTextOutput::with_sink(40.0, move |_, p| pieces.lock().unwrap().push(p.to_string()))
    };
    let speaker = Speaker::spawn(&session, output.clone());
    let mut status = speaker.status();
    // What had been played when the resume hooks ran.
    let at_resume = Arc::new(Mutex::new(None::<String>));
    {
        let (out, slot) = (output.clone(), at_resume.clone());
        session
            .bus()
            .on_resume(move |_| *slot.lock().unwrap() = Some(out.played_text()));
    }

    session.stt(SttEvent::Final("Paris first.".into()));
    log.until(|e| is_played(e, 1, 30)).await;
    // A cough: min_pause 0 pauses at onset, before this returns.
    session.stt(SttEvent::SpeechStarted);
    let paused = log
        .until(|e| matches!(e.kind, EventKind::PlaybackPaused { .. }))
        .await;
    session.stt(SttEvent::SpeechEnded); // no transcript: resume after 300 ms
    let resumed = log
        .until(|e| matches!(e.kind, EventKind::PlaybackResumed { .. }))
        .await;
    log.until(|e| is_played(e, 1, chars(LONG))).await;
    speech_over(&mut status, 1).await;

    let EventKind::PlaybackResumed {
        heard_chars: resumed_at,
    } = *log.kind_at(resumed)
    else {
        unreachable!()
    };
    let at_resume = at_resume.lock().unwrap().clone().expect("resume hook ran");
    assert_eq!(
        resumed_at,
        chars(&at_resume),
        "the output reported exactly where its clock stopped"
    );
    assert!(LONG.starts_with(&at_resume));
    // Nothing was played while paused beyond the stop position.
    let while_paused = played(&log.all[paused..resumed], TurnId(1));
    assert!(
        while_paused.iter().all(|&c| c <= resumed_at),
        "{while_paused:?}"
    );
    // Progress is cumulative across the pause, and the pieces played
    // concatenate to the turn's text: zero repeated, zero skipped.
    let progress = played(&log.all, TurnId(1));
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
    assert!(progress.contains(&resumed_at));
    assert_eq!(pieces.lock().unwrap().concat(), LONG);
    assert_eq!(output.played_text(), LONG);
    let ctx = session.context().await.unwrap();
    assert_eq!(messages(&ctx)[1], (Role::Assistant, LONG.into(), false));
    drop(speaker);
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_confirmed_interruption_during_a_pause_commits_the_paused_position() {
    let server = server().await;
    let (supervisor, session, rx) = session_with(&server, confirmed(0, 2000)).await;
    let mut log = Log::new(rx);
    let output = PacedTextOutput::new(40.0);
    let speaker = Speaker::spawn(&session, output.clone());
    let mut status = speaker.status();

    session.stt(SttEvent::Final("Paris first.".into()));
    log.until(|e| is_played(e, 1, 25)).await;
    session.stt(SttEvent::SpeechStarted);
    let paused = log
        .until(|e| matches!(e.kind, EventKind::PlaybackPaused { .. }))
        .await;
    session.stt(SttEvent::Interim("wait stop".into())); // two words: cut
    let cut = log.until(is_cut).await;
    assert!(
        !log.all[paused..cut]
            .iter()
            .any(|e| matches!(e.kind, EventKind::PlaybackResumed { .. })),
        "a confirmed interruption never resumes"
    );
    speech_over(&mut status, 1).await;
    let heard = output.played_text();
    assert!(chars(&heard) >= 25 && LONG.starts_with(&heard));
    session.stt(SttEvent::Final("Wait, stop. Something else.".into()));
    session.stt(SttEvent::SpeechEnded);
    speech_over(&mut status, 2).await;
    assert_eq!(output.played_text(), format!("{heard}Sure, here it is."));
    let ctx = session.context().await.unwrap();
    assert_eq!(
        messages(&ctx)[1..],
        [
            (Role::Assistant, heard, true),
            (Role::User, "Wait, stop. Something else.".into(), false),
            (Role::Assistant, "Sure, here it is.".into(), false),
        ]
    );
    drop(speaker);
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_backchannel_neither_cuts_nor_becomes_a_turn() {
    let server = server().await;
    let (supervisor, session, rx) = session_with(&server, confirmed(0, 2000)).await;
    let mut log = Log::new(rx);
    let output = PacedTextOutput::new(60.0);
    let speaker = Speaker::spawn(&session, output.clone());
    let mut status = speaker.status();

    session.stt(SttEvent::Final("Paris first.".into()));
    let first = log.until(|e| is_played(e, 1, 20)).await;
    session.stt(SttEvent::SpeechStarted);
    session.stt(SttEvent::Final("Uh-huh.".into()));
    session.stt(SttEvent::SpeechEnded);
    log.until(|e| is_played(e, 1, chars(LONG))).await;
    speech_over(&mut status, 1).await;
    let kinds: Vec<&str> = log.all[first..].iter().map(|e| e.kind.name()).collect();
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|n| *n == k)
            .unwrap_or_else(|| panic!("no {k}: {kinds:?}"))
    };
    assert!(
        pos("playback_paused") < pos("backchannel") && pos("backchannel") < pos("playback_resumed"),
        "{kinds:?}"
    );
    assert!(!kinds.contains(&"turn_started"), "not a turn: {kinds:?}");
    assert!(!kinds.contains(&"interrupted"), "no cut: {kinds:?}");
    assert!(!kinds.contains(&"user_transcript"), "{kinds:?}");
    assert_eq!(output.played_text(), LONG);
    let ctx = session.context().await.unwrap();
    assert_eq!(
        messages(&ctx),
        [
            (Role::User, "Paris first.".into(), false),
            (Role::Assistant, LONG.into(), false),
        ]
    );
    drop(speaker);
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_newer_turn_drops_what_is_left_of_the_old_one() {
    let server = server().await;
    let policy = InterruptionPolicy {
        cancel_on_user_message: false,
        ..InterruptionPolicy::default()
    };
    let (supervisor, session, rx) = session_with(&server, policy).await;
    let mut log = Log::new(rx);
    let output = PacedTextOutput::new(40.0);
    let speaker = Speaker::spawn(&session, output.clone());
    let mut status = speaker.status();

    session.send_text("Paris first.").unwrap();
    log.until(|e| is_played(e, 1, 10)).await;
    // Typed input does not cut here: turn 2 begins once turn 1's generation
    // ended, while its speech still plays. The speaker moves to turn 2.
    session.send_text("Next.").unwrap();
    log.until(|e| is_played(e, 2, 17)).await;
    speech_over(&mut status, 2).await;
    let started = log
        .all
        .iter()
        .position(|e| e.turn == TurnId(2) && e.kind == EventKind::TurnStarted)
        .expect("turn 2 started");
    let heard = played(&log.all[..started], TurnId(1));
    assert!(
        heard.last().is_some_and(|&h| h < chars(LONG)),
        "turn 1 was still playing: {heard:?}"
    );
    let text = output.played_text();
    let old = text
        .strip_suffix("Sure, here it is.")
        .unwrap_or_else(|| panic!("turn 2 played in full: {text:?}"));
    assert!(LONG.starts_with(old), "only a prefix of turn 1: {old:?}");
    assert!(chars(old) < chars(LONG));
    drop(speaker);
    supervisor.shutdown().await;
}

#[tokio::test]
async fn stt_events_map_onto_the_sessions_user_events() {
    let server = server().await;
    let (supervisor, session, mut rx) = session_with(&server, InterruptionPolicy::default()).await;
    let seqs = [
        session.stt(SttEvent::SpeechStarted),
        session.stt(SttEvent::Interim("hel".into())),
        session.stt(SttEvent::Final("hello".into())),
        session.stt(SttEvent::SpeechEnded),
    ];
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let mut kinds = Vec::new();
    for seq in seqs {
        kinds.push(next_matching(&mut rx, |e| e.seq == seq).await.kind);
    }
    assert_eq!(
        kinds,
        [
            EventKind::UserSpeechStarted,
            EventKind::UserTranscript {
                text: "hel".into(),
                is_final: false,
                heard: None,
            },
            EventKind::UserTranscript {
                text: "hello".into(),
                is_final: true,
                heard: None,
            },
            EventKind::UserSpeechEnded,
        ]
    );
    let end = support::finished(&mut rx, TurnId(1)).await;
    assert_eq!(end, TurnEnd::Stop, "the final started a turn");
    supervisor.shutdown().await;
    assert_eq!(session.stt(SttEvent::SpeechStarted), 0, "stopped session");
    // A speaker of a stopped session has nothing to say.
    let speaker = Speaker::spawn(&session, PacedTextOutput::new(100.0));
    let mut status = speaker.status();
    speech_over(&mut status, 0).await;
}

/// Pause/resume cycles at every word end; `backchannel`: resumed by a
/// backchannel in the caller's thread, else by the timer task (a
/// `resume_timeout` of 0) racing the next pause from another thread.
async fn rapid_pauses_and_resumes(backchannel: bool) {
    let server = server().await;
    let resume_ms = if backchannel { 2000 } else { 0 };
    let (supervisor, session, rx) = session_with(&server, confirmed(0, resume_ms)).await;
    let mut log = Log::new(rx);
    let output = PacedTextOutput::new(60.0);
    let speaker = Speaker::spawn(&session, output.clone());
    let mut status = speaker.status();

    session.stt(SttEvent::Final("Paris first.".into()));
    log.until(|e| is_played(e, 1, 1)).await;
    let mut cycles = 0;
    // Until the last 40 characters (2/3 s): a backchannel once the agent is
    // quiet would be a user turn.
    while let Some(&heard) = played(&log.all, TurnId(1))
        .last()
        .filter(|&&h| h + 40 < chars(LONG))
    {
        // Pause at onset (decided, and its hooks run, before the call
        // returns), racing the playing task and the resume.
        session.stt(SttEvent::SpeechStarted);
        if backchannel {
            session.stt(SttEvent::Final("Mm-hmm.".into()));
        }
        session.stt(SttEvent::SpeechEnded);
        cycles += 1;
        log.until(|e| is_played(e, 1, heard + 1)).await;
    }
    speech_over(&mut status, 1).await;
    assert!(cycles > 10, "{cycles} cycles");
    let progress = played(&log.all, TurnId(1));
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
    assert_eq!(output.played_text(), LONG, "zero repeated, zero skipped");
    let ctx = session.context().await.unwrap();
    assert_eq!(messages(&ctx).len(), 2, "backchannels are not turns");
    drop(speaker);
    supervisor.shutdown().await;
}

#[tokio::test]
async fn rapid_pauses_and_backchannel_resumes_never_repeat_or_skip() {
    rapid_pauses_and_resumes(true).await;
}

#[tokio::test]
async fn rapid_pauses_and_timer_resumes_never_repeat_or_skip() {
    rapid_pauses_and_resumes(false).await;
}

/// Issue 13: a `Speaker` on a session configured with nothing about speech
/// (no `with_segmenter`, no `speech_output`) played nothing and its status
/// never ended. Every session cuts segments now, and a speaker declares
/// itself: it plays the reply, and a barge-in before its first progress
/// report still cuts the speech.
#[tokio::test]
async fn a_speaker_on_a_default_session_plays_and_its_speech_ends() {
    let server = server().await;
    let (supervisor, session, rx) = setup(&server, |c| c.bus_capacity = 4096).await;
    let mut log = Log::new(rx);
    let output = PacedTextOutput::new(600.0);
    let speaker = Speaker::spawn(&session, output.clone());
    let mut status = speaker.status();
    session.stt(SttEvent::Final("And then?".into()));
    speech_over(&mut status, 1).await;
    assert_eq!(output.played_text(), "Sure, here it is.");
    log.until(|e| is_played(e, 1, 17)).await;
    drop(speaker);
    supervisor.shutdown().await;
}
