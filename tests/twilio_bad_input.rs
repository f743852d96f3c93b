//! Bad input on `/twilio`: each broken call ends cleanly with a typed error
//! (its session stopped, its history reported), never a panic — and a
//! healthy call running beside them is answered as if nothing happened.

#[path = "support/call_server.rs"]
mod call_server;
#[path = "support/speech.rs"]
mod speech;

use std::time::Duration;

use call_server::{CallServer, GUARD};
use colloquy_actors::calls::CallError;
use colloquy_actors::calls::twilio::SimulatedPhone;
use colloquy_actors::turn_taking::InterruptionPolicy;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const START: &str = r#"{"event":"start","sequenceNumber":"1","streamSid":"MZx","start":{"accountSid":"AC","streamSid":"MZx","callSid":"CALLSID","tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},"customParameters":{}}}"#;

/// Connects a raw socket, sends `messages`, and waits for the server to
/// close it (a broken call must end, not hang).
async fn send_and_expect_close(url: &str, messages: Vec<Message>) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    for m in messages {
        if ws.send(m).await.is_err() {
            break; // the server already closed: fine
        }
    }
    let closed = tokio::time::timeout(GUARD, async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Close(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server did not end the broken call");
}

fn text(s: &str) -> Message {
    Message::Text(s.to_string().into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_calls_end_cleanly_and_a_healthy_call_is_not_disturbed() {
    let server = CallServer::start(
        InterruptionPolicy::default(),
        vec!["Hello there, how can I help you today?".into()],
    )
    .await;
    let url = server.twilio_url();
    // The healthy call: started first, talking throughout.
    let mut healthy = SimulatedPhone::call(&url, "HEALTHY").await.unwrap();
    healthy.silence(Duration::from_millis(300)).await;
    let speech = speech::speech_at("What is the weather like in Paris today", "en-gb+f3", 8_000);

    let broken = async {
        // Media before start: refused, no session.
        send_and_expect_close(&url, vec![text(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#),
            text(r#"{"event":"media","streamSid":"MZx","media":{"track":"inbound","payload":"/w=="}}"#)]).await;
        // A wrong sample rate.
        send_and_expect_close(
            &url,
            vec![text(
                &START.replace("8000", "16000").replace("CALLSID", "RATE"),
            )],
        )
        .await;
        // Malformed JSON after a good start: the call ends with its history.
        send_and_expect_close(
            &url,
            vec![
                text(&START.replace("CALLSID", "MALFORMED")),
                text("{\"event\":\"media\", nope"),
            ],
        )
        .await;
        // A payload that is not base64.
        send_and_expect_close(&url, vec![text(&START.replace("CALLSID", "BASE64")),
            text(r#"{"event":"media","streamSid":"MZx","media":{"track":"inbound","payload":"!!!"}}"#)]).await;
        // A 10 MB frame.
        let huge = format!(
            r#"{{"event":"media","streamSid":"MZx","media":{{"track":"inbound","payload":"{}"}}}}"#,
            "A".repeat(10 * 1024 * 1024)
        );
        send_and_expect_close(
            &url,
            vec![text(&START.replace("CALLSID", "HUGE")), text(&huge)],
        )
        .await;
        // Out of order: a second start.
        send_and_expect_close(
            &url,
            vec![
                text(&START.replace("CALLSID", "TWICE")),
                text(&START.replace("CALLSID", "TWICE")),
            ],
        )
        .await;
        // Binary garbage.
        send_and_expect_close(
            &url,
            vec![
                text(&START.replace("CALLSID", "BINARY")),
                Message::Binary(vec![0, 1, 2, 3].into()),
            ],
        )
        .await;
        // The socket dropped mid-call (no stop).
        {
            let mut phone = SimulatedPhone::call(&url, "DROPPED").await.unwrap();
            phone.silence(Duration::from_millis(200)).await;
            drop(phone);
        }
    };
    let talk = async {
        healthy.speak(&speech).await;
    };
    tokio::join!(broken, talk);
    // The healthy call is answered.
    let deadline = tokio::time::Instant::now() + GUARD;
    while healthy.log().played.len() < 25 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the healthy call was not answered"
        );
        healthy.silence(Duration::from_millis(40)).await;
    }
    // Every broken call that started a session ended with a typed error and
    // its history; the ones refused before a session never started one.
    for (id, want) in [
        ("twilio-MALFORMED", "protocol"),
        ("twilio-BASE64", "protocol"),
        ("twilio-HUGE", "limit"),
        ("twilio-TWICE", "protocol"),
        ("twilio-BINARY", "protocol"),
        ("twilio-DROPPED", "connection"),
    ] {
        let (history, error) = server.wait_call(id, |r| r.ended.clone()).await;
        let kind = match &error {
            Some(CallError::Protocol(_)) => "protocol",
            Some(CallError::Connection(_)) => "connection",
            Some(CallError::Limit(_)) => "limit",
            other => panic!("{id}: ended with {other:?}"),
        };
        assert_eq!(kind, want, "{id}: {error:?}");
        assert!(history.items.is_empty(), "{id}: nothing was said");
    }
    let refused_started = server.calls.lock().unwrap().contains_key("twilio-RATE");
    assert!(!refused_started, "a refused format started a session");
    healthy.hang_up();
    let (history, error) = server
        .wait_call("twilio-HEALTHY", |r| r.ended.clone())
        .await;
    assert!(error.is_none(), "{error:?}");
    assert!(
        history.items.len() >= 2,
        "the healthy call kept its conversation"
    );
    assert_eq!(
        server.supervisor.session_count(),
        0,
        "every call's session stopped"
    );
}
