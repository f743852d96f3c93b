//! Issue 19: a conversation through the cluster with distinctive fake keys —
//! a primary that echoes its key in a 401, a fallback that serves a turn and
//! then echoes its key in an in-band error — and a state key: no key is in
//! any message on the NATS server (inputs, replies, events), in any
//! checkpoint, in the worker's or client's `Debug`, or in any log line at
//! trace level.

mod cluster_common;
#[path = "../../tests/support/leak.rs"]
mod leak;
#[path = "../../tests/support/nats.rs"]
mod nats;

use cluster_common::{GUARD, NO_FAILOVER, cluster_client, finish, next};
use colloquy::Secret;
use colloquy::llm::{ChatClient, OpenAiConfig, ProviderChain, ProviderSpec};
use colloquy::mock::{MockResponse, MockServer};
use colloquy_actors::bus::{EventKind, TurnEnd};
use colloquy_actors::cluster::async_nats::jetstream;
use colloquy_actors::cluster::{SessionSpec, Worker, WorkerConfig, connect};
use futures_util::StreamExt;
use leak::{ALL_KEYS, FALLBACK_KEY, LeakWatch, PRIMARY_KEY, echoing_401, echoing_sse_error};
use nats::NatsServer;

const STATE_KEY: &str = "statekey-leaktest-CLUSTER-3e91";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_conversation_with_echoed_keys_shows_none_of_them() {
    let mut keys = ALL_KEYS.to_vec();
    keys.push(STATE_KEY);
    let watch = LeakWatch::install(&keys);
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let primary = MockServer::start(echoing_401).await.unwrap();
    let fallback = MockServer::start(|req| {
        let said = req.last_message()["content"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if said.contains("fail") {
            echoing_sse_error(req)
        } else {
            MockResponse::text(&["Hi", " there."])
        }
    })
    .await
    .unwrap();
    let mut primary_config = OpenAiConfig::compatible(primary.base_url());
    primary_config.api_key = Some(PRIMARY_KEY.into());
    let mut fallback_config = OpenAiConfig::compatible(fallback.base_url());
    fallback_config.api_key = Some(FALLBACK_KEY.into());
    let client = ChatClient::with_chain(
        ProviderChain::new(ProviderSpec::new(primary_config))
            .with_fallback(ProviderSpec::new(fallback_config)),
    )
    .unwrap();
    let config = WorkerConfig::new("w", client)
        .with_default_model("mock")
        .with_lease_ttl(NO_FAILOVER)
        .with_state_key(Secret::new(STATE_KEY));
    watch.check("WorkerConfig's Debug", &format!("{config:?}"));

    // Everything the server carries, as a wildcard subscriber sees it.
    let tap = connect(&server.url(), "tap").await.unwrap();
    let mut wire = tap.subscribe(">").await.unwrap();
    tap.flush().await.unwrap();
    let worker = Worker::start(connect(&server.url(), "w").await.unwrap(), config)
        .await
        .unwrap();
    watch.check("Worker's Debug", &format!("{worker:?}"));

    let client = cluster_client(&server).await;
    let s = client.place("leaky", SessionSpec::default()).await.unwrap();
    let mut rx = s.subscribe().await.unwrap();
    s.send_text("hello").await.unwrap();
    let t = next(&mut rx, |e| e.bus() == Some(&EventKind::TurnStarted))
        .await
        .turn;
    let (_, end, text, _) = finish(&mut rx, t).await;
    assert_eq!((end, text.as_str()), (TurnEnd::Stop, "Hi there."));
    s.send_text("fail now").await.unwrap();
    let t = next(&mut rx, |e| e.bus() == Some(&EventKind::TurnStarted))
        .await
        .turn;
    let (_, end, _, _) = finish(&mut rx, t).await;
    let TurnEnd::Failed(why) = &end else {
        panic!("the second turn fails: {end:?}");
    };
    assert!(why.contains("***"), "the echo was scrubbed: {why}");
    watch.check("the remote events' Debug", &format!("{rx:?} {end:?}"));
    let history = s.context().await.unwrap();
    watch.check("the remote history", &format!("{history:?}"));

    // Every message the server carried up to a marker of ours.
    tap.publish("leaktest.done", "".into()).await.unwrap();
    tap.flush().await.unwrap();
    let mut carried = 0;
    tokio::time::timeout(GUARD, async {
        while let Some(msg) = wire.next().await {
            if msg.subject.as_str() == "leaktest.done" {
                return;
            }
            carried += 1;
            watch.check(
                &format!("a message on {}", msg.subject),
                &String::from_utf8_lossy(&msg.payload),
            );
        }
    })
    .await
    .expect("the marker arrives");
    assert!(
        carried > 10,
        "the tap saw the conversation ({carried} messages)"
    );

    // The checkpoint: tagged, and no key in it.
    let kv = jetstream::new(tap.clone())
        .get_key_value("colloquy_checkpoints")
        .await
        .unwrap();
    let stored = kv.get("leaky").await.unwrap().expect("a checkpoint");
    assert!(stored.contains(&b'\n'), "tagged with the state key");
    watch.check("the checkpoint", &String::from_utf8_lossy(&stored));
    worker.abort().await;

    // The providers did get the keys (the test is not vacuous), and the
    // log was written.
    assert!(
        primary.requests()[0]
            .header("authorization")
            .is_some_and(|v| v.contains(PRIMARY_KEY))
    );
    assert!(
        fallback.requests()[0]
            .header("authorization")
            .is_some_and(|v| v.contains(FALLBACK_KEY))
    );
    watch.check_log();
}
