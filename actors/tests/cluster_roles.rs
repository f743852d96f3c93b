//! The roles of `docs/nats-roles.conf` (feature `nats`): a nats-server
//! started with that file, each role connected with its user and password
//! and its own inbox prefix, does what the docs say and no more.
//!
//! The server refuses a publish or a subscription outside a role's
//! permissions with a `Permissions Violation` error on the connection; the
//! tests wait for that error (or, for a request, its timeout, kept short).
//! Authentication options of `cluster::connect` are separate work: these
//! connections are made with async-nats directly.

mod cluster_common;
#[path = "../../tests/support/nats.rs"]
mod nats;

use std::time::Duration;

use cluster_common::*;
use colloquy_actors::bus::EventKind;
use colloquy_actors::cluster::async_nats::{self, jetstream};
use colloquy_actors::cluster::{
    ClusterClient, ClusterError, EventClass, EventClasses, RemoteConfig, RemoteEvent, SessionSpec,
    Worker, connect,
};
use futures_util::StreamExt;
use nats::NatsServer;
use tokio::sync::mpsc;

const ROLES: &str = include_str!("../../docs/nats-roles.conf");

/// A connection as `user` (password `change-me-{user}`, inbox prefix
/// `_INBOX_{user}`), and the server errors it receives.
async fn login(
    server: &NatsServer,
    user: &str,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let nats = async_nats::ConnectOptions::new()
        .user_and_password(user.into(), format!("change-me-{user}"))
        .custom_inbox_prefix(format!("_INBOX_{user}"))
        .name(user)
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(server.url())
        .await
        .expect("the role logs in");
    (nats, rx)
}

/// Waits for the server to refuse `what` to this connection (other refusals
/// on the way, such as an observer's reply inbox, are skipped).
async fn violation(errors: &mut mpsc::UnboundedReceiver<String>, what: &str) {
    tokio::time::timeout(GUARD, async {
        loop {
            let e = errors.recv().await.expect("connection open");
            assert!(e.to_lowercase().contains("permissions violation"), "{e}");
            if e.contains(what) {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no permissions violation for {what}"));
}

fn short(nats: async_nats::Client) -> ClusterClient {
    let config = RemoteConfig {
        request_timeout: Duration::from_millis(500),
        unavailable_timeout: Duration::from_millis(500),
        ..RemoteConfig::default()
    };
    ClusterClient::with_config(nats, config).unwrap()
}

#[tokio::test]
async fn every_role_does_what_the_documented_config_allows_and_no_more() {
    let Some(server) = NatsServer::start_with_config(Some(ROLES)).await else {
        return;
    };
    // Without credentials nobody gets in, and the connect fails at once.
    let anonymous = tokio::time::timeout(GUARD, connect(&server.url(), "anonymous")).await;
    assert!(
        matches!(anonymous, Ok(Err(ClusterError::Connect { .. }))),
        "{anonymous:?}"
    );

    let model = model().await;
    let (worker_nats, _) = login(&server, "worker").await;
    let config = worker_config(&model, "w", 10, NO_FAILOVER);
    let _w = Worker::start(worker_nats, config)
        .await
        .expect("a worker with credentials becomes ready");

    // The frontend places a session, drives it, reads its history and
    // every class of its events; it cannot read a bucket.
    let (frontend_nats, mut frontend_errors) = login(&server, "frontend").await;
    let frontend = ClusterClient::new(frontend_nats.clone());
    let s = frontend
        .place("call", SessionSpec::default())
        .await
        .unwrap();
    let mut all = s.subscribe().await.unwrap();

    // The speech service hears speech and the turn boundaries.
    let (speech_nats, mut speech_errors) = login(&server, "speech").await;
    let speech = ClusterClient::new(speech_nats.clone())
        .session("call")
        .unwrap();
    // What the server refuses gets no answer: short timeouts for those.
    let refused = short(speech_nats.clone()).session("call").unwrap();
    let mut heard = speech.subscribe_to(EventClasses::speech()).await.unwrap();
    // The observer sees turn boundaries.
    let (observer_nats, mut observer_errors) = login(&server, "observer").await;
    // It may not send speech inputs, so it does not ask the owner for its
    // generation (it trusts the first one it sees).
    let observer_config = RemoteConfig {
        confirm_owner: false,
        request_timeout: Duration::from_millis(500),
        unavailable_timeout: Duration::from_millis(500),
        ..RemoteConfig::default()
    };
    let observer = ClusterClient::with_config(observer_nats.clone(), observer_config)
        .unwrap()
        .session("call")
        .unwrap();
    let mut observed = observer
        .subscribe_to(
            [EventClass::Lifecycle, EventClass::Usage]
                .into_iter()
                .collect(),
        )
        .await
        .unwrap();

    let (t, _, text, _) = turn(&s, &mut all, "question one").await;
    assert_eq!(text, "Answer to question one.");

    // The library's own options log a role in with its inbox: a request
    // answered on `_INBOX_frontend` (the default `_INBOX` is refused).
    let options = colloquy_actors::cluster::NatsOptions::default()
        .with_user_password("frontend", colloquy::Secret::new("change-me-frontend"))
        .with_inbox_prefix("_INBOX_frontend");
    let own = colloquy_actors::cluster::connect_with(&server.url(), "frontend-2", &options)
        .await
        .expect("the frontend logs in");
    let history = ClusterClient::new(own)
        .session("call")
        .unwrap()
        .context()
        .await
        .expect("the reply reaches the frontend's inbox");
    assert!(history.len() >= 2, "{history:?}");
    assert_eq!(s.context().await.unwrap().items.len(), 2);
    let ended =
        |e: &RemoteEvent| e.turn == t && matches!(e.bus(), Some(EventKind::TurnFinished(_)));
    next(&mut heard, ended).await;
    next(&mut observed, ended).await;

    // Speech inputs pass; control and admin inputs are refused by the server.
    speech.user_speech_started().await.expect("speech input");
    speech.user_speech_ended().await.expect("speech input");
    assert!(matches!(
        refused.cancel().await,
        Err(ClusterError::Timeout(_))
    ));
    violation(&mut speech_errors, "in.control").await;
    assert!(matches!(
        refused.context().await,
        Err(ClusterError::Timeout(_))
    ));
    violation(&mut speech_errors, "in.admin").await;
    assert!(matches!(
        refused.close().await,
        Err(ClusterError::Timeout(_))
    ));
    violation(&mut speech_errors, "in.admin").await;
    // Nor tokens, nor the buckets.
    let _tokens = speech_nats
        .subscribe("colloquy.session.call.events.tokens")
        .await
        .unwrap();
    violation(&mut speech_errors, "events.tokens").await;
    for (nats, errors) in [
        (&speech_nats, &mut speech_errors),
        (&frontend_nats, &mut frontend_errors),
        (&observer_nats, &mut observer_errors),
    ] {
        let mut js = jetstream::new(nats.clone());
        js.set_timeout(Duration::from_millis(500));
        assert!(js.get_key_value("colloquy_checkpoints").await.is_err());
        violation(errors, "$JS.API").await;
        nats.publish("$KV.colloquy_checkpoints.call", "forged".into())
            .await
            .unwrap();
        violation(errors, "$KV.colloquy_checkpoints").await;
    }
    // The observer sends nothing.
    assert!(observer.send_text("hi").await.is_err());
    violation(&mut observer_errors, "in.control").await;

    // The frontend's new inputs pass, and a tracked reply resolves with the
    // one answer per request the worker's `allow_responses` permits; the
    // speech service can neither make the agent speak nor change settings.
    let said = s.say("Hello from the roles.").await.expect("say");
    let r = tokio::time::timeout(GUARD, said.played_out())
        .await
        .unwrap()
        .expect("the reply resolves under the roles");
    assert_eq!(r.text(), "Hello from the roles.");
    finish(&mut all, r.turn).await;
    let spec = s
        .update_settings(serde_json::json!({"instructions": "Be brief."}))
        .await
        .expect("settings");
    assert_eq!(spec.instructions.as_deref(), Some("Be brief."));
    assert!(matches!(
        refused.say("forged").await,
        Err(ClusterError::Timeout(_))
    ));
    violation(&mut speech_errors, "in.control").await;
    assert!(matches!(
        refused.update_settings(serde_json::json!({})).await,
        Err(ClusterError::Timeout(_))
    ));
    violation(&mut speech_errors, "in.admin").await;

    // The session was not cancelled, closed nor forged: it goes on.
    let (_, _, text, _) = turn(&s, &mut all, "question two").await;
    assert_eq!(text, "Answer to question two.");
    let mut events = frontend_nats
        .subscribe("colloquy.session.call.events.*")
        .await
        .unwrap();
    frontend_nats.flush().await.unwrap();
    s.close().await.expect("the frontend closes its session");
    let msg = tokio::time::timeout(GUARD, events.next())
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&msg.payload).contains("session_ended"));
}
