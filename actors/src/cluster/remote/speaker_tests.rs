//! The remote speaker against a session's events as a worker publishes them
//! (review findings of calls on workers, each failing before its fix): a
//! pause decided before the turn's first segment holds that segment's audio;
//! events lost on the way cut the turn here; a session's end ends the call.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::Notify;

use super::events::{OwnerAnswer, RemoteEvents};
use crate::bus::EventKind;
use crate::cluster::connect;
use crate::cluster::test_nats::NatsServer;
use crate::cluster::wire::{EventClasses, encode_bus, encode_event};
use crate::ids::TurnId;
use crate::speech::inputs::InputQueue;
use crate::speech::remote_speaker::RemoteSpeaker;
use crate::speech::{PlayEnd, Segment, SpeechOutput};

/// An output with `AudioOutput`'s rule for pauses: preparing a segment of
/// a new turn starts that turn unpaused (the old turn's pause does not
/// carry over), so a pause must reach it after the turn's first `prepare`.
#[derive(Clone, Default)]
struct FakeOutput {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

#[derive(Default)]
struct State {
    turn: Option<TurnId>,
    paused: bool,
    prepared: Vec<String>,
    plays: usize,
    stops: usize,
}

impl FakeOutput {
    fn change(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap());
        self.changed.notify_waiters();
    }

    async fn until(&self, what: &str, check: impl Fn(&State) -> bool) {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if check(&self.state.lock().unwrap()) {
                    return;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }
}

impl SpeechOutput for FakeOutput {
    async fn play(&self, _segment: Segment) -> PlayEnd {
        self.change(|s| s.plays += 1);
        std::future::pending().await
    }

    fn prepare(&self, segment: &Segment) {
        let turn = segment.turn();
        self.change(|s| {
            if s.turn != Some(turn) {
                s.turn = Some(turn);
                s.paused = false;
            }
            s.prepared.push(segment.text().to_string());
        });
    }

    fn pause(&self) {
        self.change(|s| s.paused = true);
    }

    fn resume(&self) {
        self.change(|s| s.paused = false);
    }

    fn stop(&self) {
        self.change(|s| s.stops += 1);
    }
}

/// A speaker reading `t.>` as the session `s` of generation 1, and a
/// publisher of its events.
async fn speaker(server: &NatsServer) -> (RemoteSpeaker, FakeOutput, Publisher) {
    let nats = connect(&server.url(), "speaker").await.unwrap();
    let sub = nats.subscribe("t.>").await.unwrap();
    nats.flush().await.unwrap();
    let events = RemoteEvents::new(
        "s".into(),
        vec![sub],
        EventClasses::speech(),
        Some(OwnerAnswer::Generation(1)),
        None,
    );
    let output = FakeOutput::default();
    let (queue, _rx) = InputQueue::new();
    let speaker = RemoteSpeaker::spawn(events, queue, output.clone());
    (speaker, output, Publisher { nats, n: 0 })
}

struct Publisher {
    nats: async_nats::Client,
    n: u64,
}

impl Publisher {
    async fn bus(&mut self, turn: u64, kind: EventKind) {
        self.n += 1;
        let bytes = encode_bus("s", turn, (1 << 32) + self.n, "w", &kind);
        self.nats.publish("t.x", Bytes::from(bytes)).await.unwrap();
        self.nats.flush().await.unwrap();
    }

    async fn worker(&mut self, kind: &str, payload: serde_json::Value) {
        self.n += 1;
        let bytes = encode_event("s", 1, (1 << 32) + self.n, "w", kind, payload);
        self.nats.publish("t.x", Bytes::from(bytes)).await.unwrap();
        self.nats.flush().await.unwrap();
    }
}

fn speakable(text: &str, last: bool) -> EventKind {
    EventKind::Speakable {
        text: text.into(),
        last,
    }
}

#[tokio::test]
async fn a_pause_before_the_turns_first_segment_holds_its_audio() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let (_speaker, output, mut worker) = speaker(&server).await;
    worker.bus(1, EventKind::TurnStarted).await;
    // The caller spoke while the model was still thinking.
    worker
        .bus(1, EventKind::PlaybackPaused { heard_chars: 0 })
        .await;
    worker.bus(1, speakable("Hello there.", false)).await;
    output
        .until("the segment prepared", |s| s.prepared.len() == 1)
        .await;
    let s = output.state.lock().unwrap();
    assert!(s.paused, "the prepared segment's audio runs during a pause");
    assert_eq!(s.plays, 0);
    // Nothing was there to stop: a stop here is a `clear` at the phone at
    // every turn start.
    assert_eq!(
        s.stops, 0,
        "a turn start with nothing prepared stops nothing"
    );
}

#[tokio::test]
async fn events_lost_on_the_way_cut_the_turn_here() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let (_speaker, output, mut worker) = speaker(&server).await;
    worker.bus(1, EventKind::TurnStarted).await;
    worker.bus(1, speakable("One.", false)).await;
    output.until("playing", |s| s.plays == 1).await;
    let stops = output.state.lock().unwrap().stops;
    // The worker's forwarder missed events (a cut may be among them).
    worker.worker("lagged", json!({"missed": 3})).await;
    output.until("silence", |s| s.stops > stops).await;
    worker.bus(1, speakable("Two.", true)).await;
    worker.bus(2, EventKind::TurnStarted).await;
    worker.bus(2, speakable("Next.", true)).await;
    output
        .until("the next turn", |s| {
            s.prepared.last().is_some_and(|t| t == "Next.")
        })
        .await;
    let prepared = output.state.lock().unwrap().prepared.clone();
    assert_eq!(prepared, ["One.", "Next."], "nothing more of the cut turn");
}

#[tokio::test]
async fn the_sessions_end_is_the_calls() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let (speaker, output, mut worker) = speaker(&server).await;
    assert!(!speaker.session_ended());
    worker
        .worker("session_ended", json!({"reason": "idle_timeout"}))
        .await;
    output.until("silence", |s| s.stops >= 1).await;
    tokio::time::timeout(Duration::from_secs(20), async {
        while !speaker.session_ended() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the speaker says the session ended");
}
