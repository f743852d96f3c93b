//! Two `start_session` calls racing on one id.
//!
//! R5: the losing call used to stop its freshly spawned actors while still
//! holding the registry's entry (a DashMap shard write guard) — an await of up to
//! 5 s. Every lookup on that shard blocked its thread meanwhile; on a
//! current-thread runtime the lookup blocked the only thread, so the stop could
//! never finish: a deadlock. The test runs such a runtime on its own thread and
//! waits for it with a watchdog, so a deadlock is a failure, not a hang.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use colloquy::llm::{ChatClient, LlmOptions, OpenAiConfig};
use colloquy_actors::{
    AgentSettings, SessionConfig, SessionId, Supervisor, SupervisorConfig, SupervisorError,
};

/// Generous: the work takes milliseconds; only a deadlock gets near this.
const WATCHDOG: Duration = Duration::from_secs(60);

#[test]
fn racing_duplicate_start_never_blocks_lookups_of_its_shard() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let outcome = rt.block_on(race());
        let _ = done_tx.send(outcome);
    });
    let (results, count, lookups) = done_rx
        .recv_timeout(WATCHDOG)
        .expect("the runtime thread did not finish: a lookup deadlocked on a held registry entry");
    let (ok, err): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    assert_eq!(ok.len(), 1, "one call starts the session");
    assert_eq!(
        err,
        vec![Err(SupervisorError::AlreadyExists(SessionId::new(
            "same-id"
        )))]
    );
    assert_eq!(count, 1, "one session is registered");
    assert!(lookups > 0, "the lookup task ran during the race");
}

/// `f`, counting how often it is polled.
fn counted<'a, F: Future + 'a>(f: F, polls: &'a AtomicU32) -> impl Future<Output = F::Output> + 'a {
    let mut f = Box::pin(f);
    std::future::poll_fn(move |cx| {
        polls.fetch_add(1, Ordering::SeqCst);
        f.as_mut().poll(cx)
    })
}

type Outcome = (Vec<Result<(), SupervisorError>>, usize, u64);

async fn race() -> Outcome {
    // No request is ever sent: the sessions are only started and stopped.
    let client = ChatClient::new(OpenAiConfig::compatible("http://127.0.0.1:9/v1")).unwrap();
    let config = SessionConfig::new(client, AgentSettings::new(LlmOptions::new("m")));
    let supervisor = Supervisor::start(SupervisorConfig::default())
        .await
        .unwrap();
    let id = SessionId::new("same-id");

    // Looks the id up over and over, as an HTTP handler or a media pipeline would.
    let stop = Arc::new(AtomicBool::new(false));
    let lookups = Arc::new(AtomicU64::new(0));
    let looker = tokio::spawn({
        let (supervisor, id, stop, lookups) = (
            supervisor.clone(),
            id.clone(),
            stop.clone(),
            lookups.clone(),
        );
        async move {
            while !stop.load(Ordering::SeqCst) {
                let _ = supervisor.session(&id);
                lookups.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        }
    });

    // Starting a session does not wait on anything, so on one thread two starts
    // would simply run one after the other. With this task's cooperative budget
    // spent, both yield at their first actor spawn (ractor spawns through
    // `tokio::select!`, which yields on an exhausted budget): both have passed
    // the "already exists?" check, the first then registers the session and the
    // second finds the entry occupied — the race, made deterministic.
    while tokio::task::coop::has_budget_remaining() {
        tokio::task::coop::consume_budget().await;
    }
    let polls = [AtomicU32::new(0), AtomicU32::new(0)];
    let (a, b) = tokio::join!(
        counted(
            supervisor.start_session(id.clone(), config.clone()),
            &polls[0]
        ),
        counted(
            supervisor.start_session(id.clone(), config.clone()),
            &polls[1]
        ),
    );
    assert!(
        polls.iter().all(|p| p.load(Ordering::SeqCst) > 1),
        "precondition: both starts were in flight at once ({polls:?} polls)"
    );
    let mut results = Vec::new();
    for r in [a, b] {
        results.push(match r {
            // The winner is a working session: its LLM actor answers.
            Ok(handle) => handle.context().await.map(|_| ()).map_err(|e| {
                SupervisorError::Spawn(format!("the started session does not answer: {e}"))
            }),
            Err(e) => Err(e),
        });
    }
    let count = supervisor.session_count();
    assert!(supervisor.session(&id).is_some());
    stop.store(true, Ordering::SeqCst);
    looker.await.unwrap();
    supervisor.shutdown().await;
    (results, count, lookups.load(Ordering::SeqCst))
}
