//! Secrets and private text (issue 19, item 6): a whole conversation — a
//! fallback chain whose primary refuses, a tool call, a turn that fails on
//! both providers — run with distinctive fake keys against providers that
//! echo them in their refusals (a 401 body, an in-band `error` event). No key
//! may show in any `Debug` or `Display` of a config, a client or an error, in
//! any bus event, in the context, or in any log line at trace level.
//!
//! The watch itself (`support/leak.rs`) is shared, so the cluster and span
//! tests can run the same conversation and check the wire and the exporter.

#[cfg(feature = "otlp")]
#[path = "support/otlp.rs"]
mod otlp_support;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use colloquy::context::ChatContext;
use colloquy::llm::{
    ChatClient, ChatRequest, ConfigError, LlmError, LlmOptions, OpenAiConfig, ProviderChain,
    ProviderSpec, StreamEvent,
};
use colloquy::mock::{MockResponse, MockServer};
use colloquy::tools::ToolDefinition;
use colloquy_actors::bus::{EventKind, TurnEnd};
use colloquy_actors::{
    AgentSettings, SessionConfig, Supervisor, SupervisorConfig, Tool, ToolRegistry,
};
use futures_util::StreamExt;

#[path = "support/session.rs"]
mod support;
use support::{next_matching, tool_outputs};
#[path = "support/leak.rs"]
mod leak;
use leak::{
    ALL_KEYS, FALLBACK_KEY, GATEWAY_KEY, LeakWatch, PRIMARY_KEY, URL_PASSWORD, echoing_sse_error,
    refusing_provider,
};

fn ping_tool(runs: Arc<AtomicUsize>) -> ToolRegistry {
    ToolRegistry::new().with_tool(Tool::new(
        ToolDefinition::free_form("ping", "Ping"),
        move |_| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok("pong".to_string())
            }
        },
    ))
}

/// A fallback that answers with a tool call, then text, and fails in-band
/// (echoing its key) when asked to "fail now".
async fn fallback_provider() -> MockServer {
    MockServer::start(|req| {
        if req.last_message()["content"] == "fail now" {
            echoing_sse_error(req)
        } else if tool_outputs(req) == 0 {
            MockResponse::tool_calls(&[("c1", "ping", "{}")])
        } else {
            MockResponse::text(&["Pong", " received."])
        }
    })
    .await
    .unwrap()
}

/// One user turn: its end and the Debug of every event of the turn.
async fn turn(
    session: &colloquy_actors::SessionHandle,
    rx: &mut colloquy_actors::bus::BusReceiver,
    text: &str,
    seen: &mut Vec<String>,
) -> TurnEnd {
    session.send_text(text).unwrap();
    loop {
        let ev = next_matching(rx, |_| true).await;
        seen.push(format!("{ev:?}"));
        if let EventKind::TurnFinished(end) = ev.kind {
            return end;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_with_echoed_keys_shows_none_of_them() {
    let watch = LeakWatch::install(ALL_KEYS);
    let primary = refusing_provider().await;
    let fallback = fallback_provider().await;
    let primary_url = primary
        .base_url()
        .replace("http://", &format!("http://gw-user:{URL_PASSWORD}@"));
    let mut primary_config = OpenAiConfig::compatible(primary_url);
    primary_config.api_key = Some(PRIMARY_KEY.into());
    let mut fallback_config = OpenAiConfig::compatible(fallback.base_url());
    fallback_config.api_key = Some(FALLBACK_KEY.into());
    let chain = ProviderChain::new(ProviderSpec::new(primary_config.clone()))
        .with_fallback(ProviderSpec::new(fallback_config.clone()));
    watch.check("ProviderChain's Debug", &format!("{chain:?}"));
    let client = ChatClient::with_chain(chain).unwrap();
    let mut options = LlmOptions::new("m");
    options
        .extra_headers
        .push(("x-gateway-key".into(), GATEWAY_KEY.into()));

    // Configs and clients.
    for (what, shown) in [
        (
            "OpenAiConfig's Debug",
            format!("{primary_config:?} {fallback_config:?}"),
        ),
        ("ChatClient's Debug", format!("{client:?}")),
        ("providers()", format!("{:?}", client.providers())),
        ("LlmOptions' Debug", format!("{options:?}")),
        ("ChatRequest's Debug", {
            let ctx = ChatContext::new();
            format!("{:?}", ChatRequest::new(&ctx, &options))
        }),
    ] {
        watch.check(what, &shown);
    }
    let bad =
        OpenAiConfig::compatible(format!("http://u:{URL_PASSWORD}@[::1/v1?key={GATEWAY_KEY}"));
    let err = ChatClient::new(bad).unwrap_err();
    assert!(
        matches!(err, LlmError::Config(ConfigError::InvalidUrl(_))),
        "{err:?}"
    );
    watch.check("ConfigError::InvalidUrl", &format!("{err} {err:?}"));

    // A plain stream: the primary's echoed 401, then the fallback's in-band error.
    let mut ctx = ChatContext::new();
    ctx.add_user("fail now");
    let mut stream = client.stream(ChatRequest::new(&ctx, &options)).unwrap();
    let mut error = None;
    let mut events = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(ev) => events.push(ev),
            Err(e) => error = Some(e),
        }
    }
    let error = error.expect("both providers fail");
    assert!(matches!(error, LlmError::Provider { .. }), "{error:?}");
    assert!(
        format!("{error}").contains("***"),
        "the echo was scrubbed: {error}"
    );
    watch.check("the stream's error", &format!("{error} {error:?}"));
    let failed = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::ProviderFailed(_)))
        .count();
    assert_eq!(failed, 2, "{events:?}");
    watch.check("the stream's events", &format!("{events:?}"));

    // A session: a fallback serving a tool call, then a turn failing on both.
    let runs = Arc::new(AtomicUsize::new(0));
    let sup = Supervisor::start(SupervisorConfig::default())
        .await
        .unwrap();
    let config = SessionConfig::new(client.clone(), AgentSettings::new(options.clone()))
        .with_tools(ping_tool(runs.clone()));
    // Traced (with the `otlp` feature): the exported spans are checked too.
    #[cfg(feature = "otlp")]
    let receiver = otlp_support::OtlpReceiver::start().await;
    #[cfg(feature = "otlp")]
    let otlp =
        colloquy_actors::telemetry::otlp::OtlpTracing::to_endpoint("leak", &receiver.traces_url)
            .unwrap();
    #[cfg(feature = "otlp")]
    let config = config.with_tracing(otlp.tracing());
    let session = sup.start_session("leak", config).await.unwrap();
    let mut rx = session.subscribe();
    let mut seen = Vec::new();
    assert_eq!(
        turn(&session, &mut rx, "ping it", &mut seen).await,
        TurnEnd::Stop
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the tool ran once");
    let TurnEnd::Failed(why) = turn(&session, &mut rx, "fail now", &mut seen).await else {
        panic!("the second turn fails: {seen:#?}");
    };
    assert!(why.contains("***"), "{why}");
    let joined = seen.join("\n");
    assert!(joined.contains("ProviderFailed"), "{joined}");
    watch.check("the bus events", &joined);
    let context = session.context().await.unwrap();
    watch.check("the context", &format!("{context:?}"));
    sup.shutdown().await;
    #[cfg(feature = "otlp")]
    {
        otlp.flush().unwrap();
        let spans = receiver
            .until(std::time::Duration::from_secs(20), |s| {
                s.iter().any(|s| s.name == "session")
            })
            .await;
        assert!(spans.iter().any(|s| s.name.starts_with("chat ")));
        watch.check("the exported spans", &format!("{spans:?}"));
    }

    // The providers did get the keys (the test is not vacuous).
    let sent = primary.requests();
    assert!(
        sent[0]
            .header("authorization")
            .is_some_and(|v| v.contains(PRIMARY_KEY))
    );
    assert_eq!(sent[0].header("x-gateway-key"), Some(GATEWAY_KEY));
    assert!(
        fallback.requests()[0]
            .header("authorization")
            .is_some_and(|v| v.contains(FALLBACK_KEY))
    );
    watch.check_log();
    assert!(
        watch.log().contains("Invalid API key: Bearer ***"),
        "the scrubbed refusal is logged (the log was looked at)"
    );
}

/// A speech endpoint's URL with credentials in it (a gateway's user info, a
/// `?token=` query) never shows in its configuration's `Debug` (issue 19's
/// leftover: both configs printed `base_url` as given).
#[cfg(all(feature = "deepgram", feature = "elevenlabs"))]
#[test]
fn speech_configs_debug_no_credentials_of_their_url() {
    use colloquy::audio::deepgram::DeepgramConfig;
    use colloquy::audio::elevenlabs::ElevenLabsConfig;
    let url = "wss://gw-user:gw-pass-7f3@speech.test/v1/listen?token=tok-9d1e";
    let mut deepgram = DeepgramConfig::new("dg-key-55aa");
    deepgram.base_url = url.into();
    let mut eleven = ElevenLabsConfig::new("voice", "xi-key-66bb");
    eleven.base_url = url.into();
    for shown in [format!("{deepgram:?}"), format!("{eleven:?}")] {
        for secret in [
            "gw-pass-7f3",
            "tok-9d1e",
            "dg-key-55aa",
            "xi-key-66bb",
            "gw-user",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("speech.test/v1/listen"), "{shown}");
    }
}
