//! Calls on workers (issue 18): the voice server terminates the audio — a
//! simulated Twilio phone speaks espeak-ng speech made at test time,
//! PocketSphinx hears it, espeak-ng speaks — and each call's session is
//! placed on a worker over NATS. A worker killed mid-reply: the phone is
//! cleared (the turn in flight is cut), the call goes on with its history on
//! another worker, and the next question is answered from there.

#[path = "support/nats.rs"]
mod nats;
#[path = "support/speech.rs"]
mod speech;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use colloquy::audio::espeak::{Espeak, EspeakConfig};
use colloquy::audio::pocketsphinx::{PocketSphinx, PocketSphinxConfig};
use colloquy::context::{ChatContext, ChatItem, Role};
use colloquy::llm::{ChatClient, OpenAiConfig};
use colloquy::mock::{MockResponse, MockServer};
use colloquy_actors::bus::{EventKind, TurnEnd};
use colloquy_actors::calls::twilio::{PhoneLog, SimulatedPhone};
use colloquy_actors::calls::{CallError, CallNotice, CallServices};
use colloquy_actors::cluster::{
    ClusterClient, RemoteEvent, RemoteEventKind, SessionSpec, Worker, WorkerConfig, connect,
};
use nats::NatsServer;
use tokio::sync::Notify;
use tokio::time::Instant;

const GUARD: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(2);

const FIRST: &str = "It is sunny in Paris.";
const SECOND: &str = "Tomorrow will be sunny as well, with a light breeze from the west and a few clouds over the river in the afternoon, and the evening should stay dry and mild until late at night.";
const THIRD: &str = "Yes, still sunny.";

#[derive(Default)]
struct Record {
    events: Vec<RemoteEvent>,
    ended: Option<(ChatContext, Option<CallError>)>,
}

struct Shared {
    record: Mutex<Record>,
    changed: Notify,
}

impl Shared {
    async fn wait<T>(&self, what: &str, check: impl Fn(&Record) -> Option<T>) -> T {
        let deadline = Instant::now() + GUARD;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = check(&self.record.lock().unwrap()) {
                return v;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let kinds: Vec<String> = self
                    .record
                    .lock()
                    .unwrap()
                    .events
                    .iter()
                    .map(|e| format!("{}@{}:{:?}", e.turn.0, e.worker, e.kind))
                    .filter(|k| !k.contains("SpeechPlayed") && !k.contains("Token"))
                    .collect();
                panic!("timed out waiting for {what}; events: {kinds:#?}");
            }
        }
    }
}

fn played(log: &PhoneLog) -> usize {
    log.played.iter().map(|c| c.samples.len()).sum()
}

/// Streams silence until `check` holds, as a phone line keeps sending audio.
async fn silence_until(phone: &mut SimulatedPhone, what: &str, check: impl Fn(&PhoneLog) -> bool) {
    let deadline = Instant::now() + GUARD;
    while !check(&phone.log()) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        phone.silence(Duration::from_millis(40)).await;
    }
}

fn worker_config(model: &MockServer, name: &str) -> WorkerConfig {
    let client = ChatClient::new(OpenAiConfig::compatible(model.base_url())).unwrap();
    WorkerConfig::new(name, client)
        .with_max_sessions(4)
        .with_lease_ttl(LEASE)
        .with_default_model("mock")
}

fn finished(r: &Record, turn_after: u64, worker: &str) -> Option<u64> {
    r.events.iter().find_map(|e| {
        (e.turn.0 > turn_after
            && e.worker == worker
            && e.bus() == Some(&EventKind::TurnFinished(TurnEnd::Stop)))
        .then_some(e.turn.0)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_call_keeps_the_call_with_its_history() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    // The model: the answers in order, a word every 30 ms; the second one
    // slowly (a word every 150 ms), so it is still streaming when its
    // worker dies.
    let replies = [(FIRST, 30), (SECOND, 150), (THIRD, 30)];
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = asked.clone();
    let model = MockServer::start(move |_| {
        let i = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (text, gap) = replies[i.min(replies.len() - 1)];
        let words: Vec<&str> = text.split_inclusive(' ').collect();
        MockResponse::text_paced(&words, Duration::from_millis(gap))
    })
    .await
    .unwrap();
    let a = Worker::start(
        connect(&server.url(), "a").await.unwrap(),
        worker_config(&model, "a"),
    )
    .await
    .unwrap();

    let shared = Arc::new(Shared {
        record: Mutex::default(),
        changed: Notify::new(),
    });
    let s = shared.clone();
    let client = ClusterClient::new(connect(&server.url(), "voice-server").await.unwrap());
    let espeak = Espeak::new(EspeakConfig::default())
        .expect("espeak-ng is needed: apt-get install espeak-ng libespeak-ng-dev");
    let ears = PocketSphinx::new(PocketSphinxConfig::default())
        .expect("PocketSphinx is needed: apt-get install libpocketsphinx-dev pocketsphinx-en-us");
    let services = CallServices::on_cluster(client, |_| SessionSpec::default(), Arc::new(espeak))
        .with_transcriber(Arc::new(ears))
        .on_call(move |notice| match notice {
            CallNotice::Placed { session, .. } => {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut rx = session.subscribe().await.expect("subscribe");
                    while let Some(ev) = rx.recv().await {
                        let ended = matches!(ev.kind, RemoteEventKind::SessionEnded { .. });
                        s.record.lock().unwrap().events.push(ev);
                        s.changed.notify_waiters();
                        if ended {
                            return;
                        }
                    }
                });
            }
            CallNotice::Ended { history, error, .. } => {
                s.record.lock().unwrap().ended = Some((history, error));
                s.changed.notify_waiters();
            }
            _ => {}
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = colloquy_actors::calls::router(services);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // Turn 1 on worker a, heard to its end.
    let mut phone = SimulatedPhone::call(&format!("ws://{addr}/twilio"), "CA7")
        .await
        .unwrap();
    phone.silence(Duration::from_millis(400)).await;
    let question = |text: &str| speech::speech_at(text, "en-gb+f3", 8_000);
    phone
        .speak(&question("What is the weather like in Paris today"))
        .await;
    let deadline = Instant::now() + GUARD;
    let first = loop {
        let all = FIRST.chars().count();
        let heard = {
            let r = shared.record.lock().unwrap();
            finished(&r, 0, "a").filter(|&t| {
                r.events.iter().any(|e| {
                    e.turn.0 == t
                        && matches!(e.bus(), Some(EventKind::SpeechPlayed { chars }) if *chars == all)
                })
            })
        };
        if let Some(t) = heard {
            break t;
        }
        assert!(Instant::now() < deadline, "turn 1 was not heard to its end");
        phone.silence(Duration::from_millis(40)).await;
    };
    let heard_first = played(&phone.log());
    assert!(
        heard_first > 4_000,
        "the first answer played: {heard_first} samples"
    );

    // Turn 2: worker a dies while the phone plays it.
    let b = Worker::start(
        connect(&server.url(), "b").await.unwrap(),
        worker_config(&model, "b"),
    )
    .await
    .unwrap();
    phone.speak(&question("Tell me more about tomorrow")).await;
    silence_until(&mut phone, "the second answer to play", |l| {
        played(l) >= heard_first + 8_000
    })
    .await;
    let clears_before = phone.log().clears.len();
    a.abort().await;
    // The new owner ends the turn in flight: the phone is cleared.
    silence_until(&mut phone, "the cut turn's clear", |l| {
        l.clears.len() > clears_before
    })
    .await;
    let lost = shared
        .wait("the worker-lost end", |r| {
            r.events.iter().find_map(|e| match e.bus() {
                Some(EventKind::TurnFinished(TurnEnd::Failed(m))) if &**m == "worker lost" => {
                    Some((e.turn.0, e.worker.clone()))
                }
                _ => None,
            })
        })
        .await;
    assert_eq!(lost.1, "b");
    assert!(lost.0 > first);
    shared
        .wait("resumed", |r| {
            r.events
                .iter()
                .any(|e| matches!(e.kind, RemoteEventKind::Resumed { .. }))
                .then_some(())
        })
        .await;

    // Turn 3, on worker b, answered and heard.
    let played_before = played(&phone.log());
    phone.speak(&question("Is it still sunny")).await;
    let deadline = Instant::now() + GUARD;
    let third = loop {
        let done = finished(&shared.record.lock().unwrap(), lost.0, "b");
        if let Some(t) = done
            && played(&phone.log()) > played_before + 4_000
        {
            break t;
        }
        assert!(Instant::now() < deadline, "turn 3 was not answered by b");
        phone.silence(Duration::from_millis(40)).await;
    };
    assert!(
        third > lost.0,
        "turn numbers run on: {third} after {}",
        lost.0
    );
    phone.silence(Duration::from_millis(1500)).await;
    phone.hang_up();

    let (history, error) = shared.wait("the call's end", |r| r.ended.clone()).await;
    assert!(error.is_none(), "the call ended with {error:?}");
    let said: Vec<String> = history
        .items
        .iter()
        .filter_map(|i| match i {
            ChatItem::Message(m) if m.role == Role::Assistant => Some(m.text_content()),
            _ => None,
        })
        .collect();
    // The first answer survived the failover; the cut one was never
    // committed; the third was said by b.
    assert_eq!(said.first().map(String::as_str), Some(FIRST), "{said:?}");
    assert_eq!(said.last().map(String::as_str), Some(THIRD), "{said:?}");
    assert!(!said.iter().any(|t| t == SECOND), "{said:?}");
    let users = history
        .items
        .iter()
        .filter(|i| matches!(i, ChatItem::Message(m) if m.role == Role::User))
        .count();
    assert!(users >= 2, "{history:?}");
    assert_eq!(b.session_count(), 0, "the call's end closed its session");
    drop(b);
}
