//! Who may call the voice server, and what ends a call: a voice server on
//! 127.0.0.1 (the offline engines, a scripted model) driven with raw
//! WebSockets and the simulated phone.
//!
//! - `/twilio` with an auth token: no signature, a wrong one, or one over
//!   another URL gets 403 and no upgrade; a signed call is answered; a
//!   `start` naming another account is closed (1008) before any session.
//! - The call over the server's limit gets 503 before the upgrade.
//! - `/ws`: a foreign or missing `Origin`, a missing, forged, expired or
//!   spent token get 403; the page's own token opens one call.
//! - A message over the size limit gets close 1009; a flood of messages
//!   close 1008; a call that sends no audio is closed as idle (1008).
//!
//! Every wait is on a signal (a status, a close frame, a call's notice),
//! never a sleep.

#[path = "support/call_server.rs"]
mod call_server;
#[path = "support/speech.rs"]
mod speech;

use std::time::{Duration, SystemTime};

use call_server::{CallServer, GUARD};
use colloquy::Secret;
use colloquy_actors::calls::twilio::{SIGNATURE_HEADER, SimulatedPhone, TwilioAuth, sign};
use colloquy_actors::calls::{BrowserAccess, CallError, CallLimits, LimitExceeded};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const START: &str = r#"{"event":"start","sequenceNumber":"1","streamSid":"MZx","start":{"accountSid":"ACtest","streamSid":"MZx","callSid":"CALLSID","tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},"customParameters":{}}}"#;
const PUBLIC: &str = "wss://voice.example.com";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to `url` with `headers`: the socket, or the HTTP status of the
/// refusal.
async fn connect(url: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    let mut request = url.into_client_request().unwrap();
    for (k, v) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
            .expect("a header name");
        request
            .headers_mut()
            .insert(name, v.parse().expect("a header value"));
    }
    match tokio::time::timeout(GUARD, tokio_tungstenite::connect_async(request))
        .await
        .expect("the server answered the upgrade")
    {
        Ok((ws, response)) => {
            assert_eq!(response.status(), 101);
            Ok(ws)
        }
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("connect {url}: {e}"),
    }
}

/// Reads until the server's close frame: its code and reason.
async fn close_frame(ws: &mut Ws) -> (u16, String) {
    tokio::time::timeout(GUARD, async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
                Ok(Message::Close(None)) => panic!("a close frame without a code"),
                Ok(_) => {}
                Err(e) => panic!("the socket failed before a close frame: {e}"),
            }
        }
        panic!("the socket ended without a close frame")
    })
    .await
    .expect("the server closed the call")
}

fn text(s: &str) -> Message {
    Message::Text(s.to_string().into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_upgrades_must_be_signed_and_a_signed_call_is_answered() {
    let token = Secret::new("twilio-test-auth-token");
    let auth = TwilioAuth::new(token.clone())
        .with_public_url(PUBLIC)
        .with_account_sid("ACtest");
    let server =
        CallServer::start_secured(vec!["Hello there, how can I help you today?".into()], |s| {
            s.with_twilio_auth(auth)
        })
        .await;
    let url = server.twilio_url();
    let signed_url = format!("{PUBLIC}/twilio");
    // No signature, another token's, another URL's, garbage: 403, no upgrade.
    let wrong_token = sign(&Secret::new("another-token"), &signed_url, &[]);
    let wrong_url = sign(&token, "wss://elsewhere.example.com/twilio", &[]);
    for headers in [
        vec![],
        vec![(SIGNATURE_HEADER, wrong_token.as_str())],
        vec![(SIGNATURE_HEADER, wrong_url.as_str())],
        vec![(SIGNATURE_HEADER, "not a signature")],
    ] {
        assert_eq!(
            connect(&url, &headers).await.err(),
            Some(403),
            "{headers:?}"
        );
    }
    assert!(server.calls.lock().unwrap().is_empty(), "no call started");
    assert_eq!(server.supervisor.session_count(), 0);

    // Signed, but a stream of another account: closed before any session.
    let good = sign(&token, &signed_url, &[]);
    let mut other = connect(&url, &[(SIGNATURE_HEADER, &good)]).await.unwrap();
    other
        .send(text(
            &START
                .replace("ACtest", "ACother")
                .replace("CALLSID", "OTHER"),
        ))
        .await
        .unwrap();
    let (code, reason) = close_frame(&mut other).await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("accountSid"), "{reason}");
    assert!(!server.calls.lock().unwrap().contains_key("twilio-OTHER"));

    // Signed: upgraded, heard and answered.
    let mut phone = SimulatedPhone::call_signed(&url, "SIGNED", Some((&token, &signed_url)))
        .await
        .unwrap();
    phone.silence(Duration::from_millis(300)).await;
    phone
        .speak(&speech::speech_at(
            "What is the weather like in Paris today",
            "en-gb+f3",
            8_000,
        ))
        .await;
    let deadline = tokio::time::Instant::now() + GUARD;
    while phone.log().played.len() < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the signed call was not answered"
        );
        phone.silence(Duration::from_millis(40)).await;
    }
    phone.hang_up();
    let (history, error) = server.wait_call("twilio-SIGNED", |r| r.ended.clone()).await;
    assert!(error.is_none(), "{error:?}");
    assert!(history.items.len() >= 2, "the call kept its conversation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_over_the_limit_gets_503_before_the_upgrade() {
    let mut limits = CallLimits::default();
    limits.max_calls = 1;
    let server =
        CallServer::start_secured(vec!["Hello.".into()], move |s| s.with_limits(limits)).await;
    let mut first = connect(&server.twilio_url(), &[]).await.unwrap();
    first
        .send(text(&START.replace("CALLSID", "FIRST")))
        .await
        .unwrap();
    server
        .wait_call("twilio-FIRST", |r| r.session.as_ref().map(|_| ()))
        .await;
    assert_eq!(connect(&server.twilio_url(), &[]).await.err(), Some(503));
    // The browser endpoint shares the limit: a valid token is still 503.
    let page = reqwest::get(server.base_url()).await.unwrap();
    let token = page_token(&page.text().await.unwrap());
    let origin = server.base_url();
    assert_eq!(
        connect(
            &server.ws_url(&format!("/ws?token={token}")),
            &[("origin", &origin)]
        )
        .await
        .err(),
        Some(503)
    );
    assert!(
        !server
            .calls
            .lock()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("web-"))
    );
}

/// The call token in a served page.
fn page_token(page: &str) -> String {
    let marker = r#"<meta name="colloquy-call-token" content=""#;
    let at = page.find(marker).expect("the page carries a call token") + marker.len();
    page[at..].split('"').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_calls_need_the_pages_token_from_an_allowed_origin() {
    let key = Secret::new("browser-test-key");
    let access = BrowserAccess::new(key.clone());
    let server = CallServer::start_secured(vec!["Hello.".into()], move |s| {
        s.with_browser_access(access)
    })
    .await;
    let origin = server.base_url();
    let page = reqwest::get(server.base_url()).await.unwrap();
    assert_eq!(
        page.headers().get("cache-control").unwrap(),
        "no-store",
        "each page load is a new call"
    );
    let token = page_token(&page.text().await.unwrap());
    let ws = |t: &str| server.ws_url(&format!("/ws?token={t}"));
    // A foreign origin, no origin: refused, the token still unspent.
    for headers in [vec![("origin", "http://evil.example")], vec![]] {
        assert_eq!(
            connect(&ws(&token), &headers).await.err(),
            Some(403),
            "{headers:?}"
        );
    }
    // No token, a forged one, an expired one (signed with the right key).
    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let expired =
        BrowserAccess::new(key).issue_until(99, SystemTime::now() - Duration::from_secs(60));
    for url in [server.ws_url("/ws"), ws(&forged), ws(&expired)] {
        assert_eq!(
            connect(&url, &[("origin", &origin)]).await.err(),
            Some(403),
            "{url}"
        );
    }
    assert_eq!(server.supervisor.session_count(), 0);
    // The page's token from the page's origin: one call.
    let mut call = connect(&ws(&token), &[("origin", &origin)]).await.unwrap();
    call.send(text(r#"{"type":"hello","sample_rate":16000}"#))
        .await
        .unwrap();
    let number = token.split('.').next().unwrap();
    let id = format!("web-{number}");
    server
        .wait_call(&id, |r| r.session.as_ref().map(|_| ()))
        .await;
    // Spent: a second call with it is refused.
    assert_eq!(
        connect(&ws(&token), &[("origin", &origin)]).await.err(),
        Some(403)
    );
    call.send(Message::Close(None)).await.unwrap();
    server.wait_call(&id, |r| r.ended.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_floods_and_idle_calls_are_closed_with_their_reason() {
    let mut limits = CallLimits::default();
    limits.max_message_bytes = 4096;
    limits.max_messages_per_second = 20;
    // Long enough that the oversized and flooding calls' messages are all
    // in before it passes, even on a loaded machine.
    limits.idle_timeout = Duration::from_secs(2);
    let server =
        CallServer::start_secured(vec!["Hello.".into()], move |s| s.with_limits(limits)).await;
    let url = server.twilio_url();

    // A message over 4 KiB: close 1009.
    let mut big = connect(&url, &[]).await.unwrap();
    big.send(text(&START.replace("CALLSID", "BIG")))
        .await
        .unwrap();
    let huge = format!(
        r#"{{"event":"media","streamSid":"MZx","media":{{"track":"inbound","payload":"{}"}}}}"#,
        "A".repeat(20 * 1024)
    );
    big.send(text(&huge)).await.unwrap();
    let (code, reason) = close_frame(&mut big).await;
    assert_eq!(code, 1009, "{reason}");
    let (_, error) = server.wait_call("twilio-BIG", |r| r.ended.clone()).await;
    assert_eq!(
        error,
        Some(CallError::Limit(LimitExceeded::MessageTooBig { max: 4096 }))
    );

    // 200 messages at once against 20 a second (40 in a burst): close 1008.
    let mut flood = connect(&url, &[]).await.unwrap();
    flood
        .send(text(&START.replace("CALLSID", "FLOOD")))
        .await
        .unwrap();
    let mark = r#"{"event":"mark","streamSid":"MZx","mark":{"name":"m"}}"#;
    for _ in 0..200 {
        if flood.feed(text(mark)).await.is_err() {
            break;
        }
    }
    let _ = flood.flush().await;
    let (code, reason) = close_frame(&mut flood).await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("messages a second"), "{reason}");
    let (_, error) = server.wait_call("twilio-FLOOD", |r| r.ended.clone()).await;
    assert_eq!(
        error,
        Some(CallError::Limit(LimitExceeded::TooManyMessages {
            per_second: 20
        }))
    );

    // Started, then silent: closed as idle.
    let mut idle = connect(&url, &[]).await.unwrap();
    idle.send(text(&START.replace("CALLSID", "IDLE")))
        .await
        .unwrap();
    let (code, reason) = close_frame(&mut idle).await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("idle"), "{reason}");
    let (_, error) = server.wait_call("twilio-IDLE", |r| r.ended.clone()).await;
    assert!(
        matches!(error, Some(CallError::Limit(LimitExceeded::Idle { .. }))),
        "{error:?}"
    );
    assert_eq!(server.supervisor.session_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_keeps_talking_is_closed_at_its_maximum_length() {
    let mut limits = CallLimits::default();
    limits.max_duration = Duration::from_secs(1);
    let server =
        CallServer::start_secured(vec!["Hello.".into()], move |s| s.with_limits(limits)).await;
    let mut ws = connect(&server.twilio_url(), &[]).await.unwrap();
    ws.send(text(&START.replace("CALLSID", "LONG")))
        .await
        .unwrap();
    // 20 ms of silence every 20 ms, as a phone line does: never idle.
    let media = r#"{"event":"media","streamSid":"MZx","media":{"track":"inbound","payload":"/////////////////////w=="}}"#;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let closed = tokio::time::timeout(GUARD, async {
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if ws.send(text(media)).await.is_err() {
                        break None;
                    }
                }
                m = ws.next() => match m {
                    Some(Ok(Message::Close(Some(f)))) => break Some((u16::from(f.code), f.reason.to_string())),
                    Some(Ok(_)) => {}
                    _ => break None,
                },
            }
        }
    })
    .await
    .expect("the server closed the call");
    let (code, reason) = closed.expect("a close frame");
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("maximum length"), "{reason}");
    let (_, error) = server.wait_call("twilio-LONG", |r| r.ended.clone()).await;
    assert_eq!(
        error,
        Some(CallError::Limit(LimitExceeded::TooLong {
            max: Duration::from_secs(1)
        }))
    );
}
