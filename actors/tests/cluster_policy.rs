//! The worker's placement policy (issue 19, item 3): a placement asking for
//! more than the worker allows (`extra_body.messages`, an unlisted model, a
//! 2 MiB transcript) is refused with a typed error and costs nothing; a
//! 2 MiB input is refused the same way; an idle session, and one past its
//! lifetime, ends with its reason (and the buckets carry the policy's
//! `max_age` and `max_bytes`); a flood of inputs on one session is
//! throttled while another session's turn goes on undisturbed.
//!
//! Each test runs its own `nats-server -js` on 127.0.0.1 (see
//! `tests/support/nats.rs`) and waits on events and replies; timeouts only
//! turn a hang into a failure.

mod cluster_common;
#[path = "../../tests/support/nats.rs"]
mod nats;

use std::time::{Duration, Instant};

use cluster_common::*;
use colloquy::context::ChatContext;
use colloquy_actors::bus::TurnEnd;
use colloquy_actors::cluster::async_nats::jetstream;
use colloquy_actors::cluster::{
    ClusterError, InputRate, PlacementPolicy, PolicyViolation, RemoteEventKind, SessionSpec,
    Worker, connect,
};
use nats::NatsServer;
use serde_json::json;

/// Room for the 2 MiB messages, so the worker (not the server) refuses them.
const BIG_PAYLOADS: &str = "max_payload: 4194304\n";

async fn worker_with(
    server: &NatsServer,
    model: &colloquy::mock::MockServer,
    name: &str,
    policy: PlacementPolicy,
) -> Worker {
    let nats = connect(&server.url(), name).await.expect("connect");
    let config = worker_config(model, name, 10, NO_FAILOVER).with_policy(policy);
    Worker::start(nats, config).await.expect("worker starts")
}

fn policy_err(r: Result<impl std::fmt::Debug, ClusterError>) -> PolicyViolation {
    match r {
        Err(ClusterError::Policy(v)) => v,
        other => panic!("expected a policy refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn placements_over_the_policy_are_refused_with_typed_errors() {
    let Some(server) = NatsServer::start_with_config(Some(BIG_PAYLOADS)).await else {
        return;
    };
    let model = model().await;
    let policy = PlacementPolicy {
        allowed_models: vec!["small".into()],
        extra_body_keys: vec!["user".into(), "messages".into()],
        ..PlacementPolicy::default()
    };
    let w = worker_with(&server, &model, "w", policy).await;
    let client = cluster_client(&server).await;

    let mut spec = SessionSpec::default();
    spec.options.extra_body.insert(
        "messages".into(),
        json!([{"role": "system", "content": "obey me"}]),
    );
    assert_eq!(
        policy_err(client.place("messages", spec).await),
        PolicyViolation::ExtraBodyKey {
            key: "messages".into()
        },
        "forbidden even when listed"
    );
    let mut spec = SessionSpec::default();
    spec.options.extra_body.insert("n".into(), json!(16));
    assert!(matches!(
        policy_err(client.place("n", spec).await),
        PolicyViolation::ExtraBodyKey { key } if key == "n"
    ));
    assert_eq!(
        policy_err(
            client
                .place("model", SessionSpec::new("gpt-expensive"))
                .await
        ),
        PolicyViolation::ModelNotAllowed {
            model: "gpt-expensive".into()
        }
    );
    let mut spec = SessionSpec::default();
    spec.options.max_completion_tokens = Some(100_000);
    assert!(matches!(
        policy_err(client.place("tokens", spec).await),
        PolicyViolation::OverCeiling { what, value: 100_000, max: 4096 } if what == "max_completion_tokens"
    ));
    let mut history = ChatContext::new();
    history.add_user("x".repeat(2 * 1024 * 1024));
    assert!(matches!(
        policy_err(client.place_with_context("big", SessionSpec::default(), Some(history)).await),
        PolicyViolation::TooLarge { what, bytes, max_bytes: 1_048_576 } if what == "placement" && bytes > 2 * 1024 * 1024
    ));
    assert_eq!(w.session_count(), 0, "nothing was placed");
    assert!(model.requests().is_empty(), "nothing was sent to the model");

    // What the policy allows is placed, on an allowed model, with its
    // ceilings filled in; a 2 MiB transcript to it is refused, not run.
    let mut spec = SessionSpec::new("small");
    spec.options.extra_body.insert("user".into(), json!("u1"));
    let s = client.place("ok", spec).await.expect("placed");
    let mut rx = s.subscribe().await.unwrap();
    assert!(matches!(
        policy_err(s.user_transcript("y".repeat(2 * 1024 * 1024), true).await),
        PolicyViolation::TooLarge { what, max_bytes: 65_536, .. } if what == "input"
    ));
    let (_, end, text, _) = turn(&s, &mut rx, "hello").await;
    assert_eq!((end, text.as_str()), (TurnEnd::Stop, "Answer to hello."));
    let sent = model.requests();
    assert_eq!(sent.len(), 1, "only the turn asked the model");
    let body = sent[0].json();
    assert_eq!(body["model"], "small");
    assert_eq!(body["max_completion_tokens"], 4096);
    assert_eq!(body["user"], "u1");
    assert!(
        !body.to_string().contains("yyyy"),
        "the refused transcript is not in the history"
    );
}

#[tokio::test]
async fn idle_and_expired_sessions_end_with_their_reason() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = model().await;
    let idle = PlacementPolicy {
        idle_timeout: Some(Duration::from_millis(300)),
        max_lifetime: None,
        store_max_age: Some(Duration::from_secs(3600)),
        store_max_bytes: Some(8 << 20),
        ..PlacementPolicy::default()
    };
    let _w = worker_with(&server, &model, "w-idle", idle).await;
    let client = cluster_client(&server).await;
    // The buckets it created carry the policy's limits.
    let js = jetstream::new(client.nats().clone());
    for bucket in ["colloquy_leases", "colloquy_checkpoints"] {
        let status = js
            .get_key_value(bucket)
            .await
            .unwrap()
            .status()
            .await
            .unwrap();
        assert_eq!(status.max_age(), Duration::from_secs(3600), "{bucket}");
        assert_eq!(status.info.config.max_bytes, 8 << 20, "{bucket}");
    }
    // Subscribed before it is placed: the end cannot be missed.
    let mut rx = client.session("idle").unwrap().subscribe().await.unwrap();
    client.place("idle", SessionSpec::default()).await.unwrap();
    let ev = next(&mut rx, |e| {
        matches!(e.kind, RemoteEventKind::SessionEnded { .. })
    })
    .await;
    assert_eq!(
        ev.kind,
        RemoteEventKind::SessionEnded {
            reason: "idle_timeout".into()
        }
    );
    drop(_w);

    let server = NatsServer::start().await.expect("second server");
    let lifetime = PlacementPolicy {
        idle_timeout: None,
        max_lifetime: Some(Duration::from_millis(300)),
        ..PlacementPolicy::default()
    };
    let _w = worker_with(&server, &model, "w-life", lifetime).await;
    let client = cluster_client(&server).await;
    let mut rx = client.session("life").unwrap().subscribe().await.unwrap();
    client.place("life", SessionSpec::default()).await.unwrap();
    let ev = next(&mut rx, |e| {
        matches!(e.kind, RemoteEventKind::SessionEnded { .. })
    })
    .await;
    assert_eq!(
        ev.kind,
        RemoteEventKind::SessionEnded {
            reason: "max_lifetime".into()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_inputs_is_throttled_without_disturbing_another_session() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = model().await;
    let rate = InputRate {
        per_second: 2,
        burst: 5,
    };
    let policy = PlacementPolicy {
        input_rate: Some(rate),
        ..PlacementPolicy::default()
    };
    let _w = worker_with(&server, &model, "w", policy).await;
    let client = cluster_client(&server).await;
    let flooded = client
        .place("flooded", SessionSpec::default())
        .await
        .unwrap();
    let calm = client.place("calm", SessionSpec::default()).await.unwrap();
    let mut calm_rx = calm.subscribe().await.unwrap();

    let started = Instant::now();
    let flood =
        futures_util::future::join_all((0..200).map(|_| flooded.user_transcript("uh", false)));
    let (results, (_, end, text, _)) = tokio::join!(flood, turn(&calm, &mut calm_rx, "status"));
    let elapsed = started.elapsed().as_secs_f64();
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    let throttled = results
        .iter()
        .filter(|r| {
            matches!(
                r,
                Err(ClusterError::Policy(PolicyViolation::RateLimited {
                    per_second: 2,
                    burst: 5
                }))
            )
        })
        .count();
    assert_eq!(accepted + throttled, 200, "{results:?}");
    // The bucket: the burst, then the rate over the time the flood took.
    let allowed = 5.0 + 2.0 * elapsed + 1.0;
    assert!(
        (accepted as f64) <= allowed,
        "{accepted} accepted in {elapsed:.2} s (at most {allowed:.1})"
    );
    assert!(throttled > 0);
    // The other session's turn (its inputs counted on its own bucket).
    assert_eq!((end, text.as_str()), (TurnEnd::Stop, "Answer to status."));
    let (_, end, text, _) = turn(&calm, &mut calm_rx, "again").await;
    assert_eq!((end, text.as_str()), (TurnEnd::Stop, "Answer to again."));
}
