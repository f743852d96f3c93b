//! The mock keeps the protocol's buffering: nothing is generated before a
//! flush or the end of input.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::*;

#[tokio::test]
async fn audio_only_after_a_flush_or_the_end_of_input() {
    let server = MockElevenLabs::start(ElevenLabsScript::new("k"))
        .await
        .unwrap();
    let url = format!(
        "{}/text-to-speech/v/stream-input?model_id=m&output_format=pcm_16000",
        server.base_url()
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("xi-api-key", "k".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    for m in [
        r#"{"text":" "}"#,
        r#"{"text":"Hello ","try_trigger_generation":true}"#,
        r#"{"text":"world ","flush":true}"#,
    ] {
        ws.send(Message::text(m)).await.unwrap();
    }
    // The flush generates " Hello world " (the unflushed "Hello " with it).
    // The first audio: the generation is recorded before it is sent.
    loop {
        if let Message::Text(t) = ws.next().await.unwrap().unwrap()
            && t.contains("\"audio\"")
        {
            break;
        }
    }
    assert_eq!(
        server.sessions()[0].generated,
        vec![" Hello world ".to_string()]
    );
    // Unflushed text waits for the end of input, which also ends the socket.
    ws.send(Message::text(r#"{"text":"more "}"#)).await.unwrap();
    ws.send(Message::text(r#"{"text":""}"#)).await.unwrap();
    let mut finals = 0;
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(t) = m
            && t.contains("isFinal\":true")
        {
            finals += 1;
        }
    }
    assert_eq!(finals, 1);
    let s = &server.sessions()[0];
    assert_eq!(
        s.generated,
        vec![" Hello world ".to_string(), "more ".to_string()]
    );
    assert!(s.texts[0].try_trigger_generation && !s.texts[0].flush && s.texts[1].flush);
    assert!(s.ended && s.finished);
    assert_eq!(*server.early_closes().borrow(), 0);
    assert_eq!(*server.messages().borrow(), 5);
}
