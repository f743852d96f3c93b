//! OpenAI-compatible speech and transcription against the local mock server:
//! the request each sends, chunked PCM that splits samples across chunks,
//! the estimated alignment, a cut that closes the request, deadlines on a
//! stalled reply, typed errors, and no key in any error.

use std::time::Duration;

use colloquy::audio::openai::{
    AudioAuth, OpenAiAudioEndpoint, OpenAiSpeech, OpenAiSpeechConfig, OpenAiTranscription,
    OpenAiTranscriptionConfig,
};
use colloquy::audio::{
    AudioError, AudioFrame, Recognition, RecognizerInput, SpeechFailure, SynthEvent, Synthesizer,
    Transcriber, Transcript, wav,
};
use colloquy::mock::{MockGate, MockResponse, MockServer, RecordedRequest};
use colloquy::secret::Secret;
use futures_util::StreamExt;

const KEY: &str = "sk-test-KEY-9f3a61c2";

fn endpoint(server: &MockServer) -> OpenAiAudioEndpoint {
    OpenAiAudioEndpoint::compatible(server.base_url())
        .with_auth(AudioAuth::Bearer(Secret::new(KEY)))
        .with_deadlines(Duration::from_secs(5), Duration::from_secs(5))
}

fn pcm_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

fn ramp(n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| ((i * 37) % 20_000) as i16 - 10_000)
        .collect()
}

fn speech(server: &MockServer) -> OpenAiSpeech {
    let mut c = OpenAiSpeechConfig::new(endpoint(server), "gpt-4o-mini-tts", "coral");
    c.speed = Some(1.25);
    c.instructions = Some("Warm and brief.".into());
    OpenAiSpeech::new(c).unwrap()
}

async fn collect(
    mut s: futures_util::stream::BoxStream<'static, Result<SynthEvent, AudioError>>,
) -> (Vec<i16>, Vec<(usize, u64)>, Option<AudioError>) {
    let (mut pcm, mut marks) = (Vec::new(), Vec::new());
    while let Some(e) = s.next().await {
        match e {
            Ok(SynthEvent::Audio(a)) => pcm.extend(a),
            Ok(SynthEvent::Mark { chars, sample }) => marks.push((chars, sample)),
            Ok(_) => {}
            Err(e) => return (pcm, marks, Some(e)),
        }
    }
    (pcm, marks, None)
}

fn assert_no_key(e: &AudioError) {
    assert!(!e.to_string().contains(KEY), "{e}");
    assert!(!format!("{e:?}").contains(KEY), "{e:?}");
}

#[tokio::test]
async fn speech_sends_the_documented_request_and_reads_pcm_split_mid_sample() {
    let samples = ramp(24_000); // one second at 24 kHz
    let body = pcm_bytes(&samples);
    let server = MockServer::scripted(vec![
        MockResponse::streamed("application/octet-stream")
            .bytes(body)
            .write_size(1001), // every chunk ends in the middle of a sample
    ])
    .await
    .unwrap();
    let text = "Sunny and mild in Paris.";
    let (pcm, marks, error) = collect(speech(&server).synthesize(text)).await;
    assert_eq!(error, None);
    assert_eq!(pcm, samples, "every sample, none misread across chunks");

    let r = &server.requests()[0];
    assert_eq!(r.path(), "/v1/audio/speech");
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    let body = r.json();
    assert_eq!(body["model"], "gpt-4o-mini-tts");
    assert_eq!(body["voice"], "coral");
    assert_eq!(body["input"], text);
    assert_eq!(body["response_format"], "pcm");
    assert_eq!(body["speed"], 1.25);
    assert_eq!(body["instructions"], "Warm and brief.");

    // Estimated marks: at word ends, monotonic, none past the audio, the
    // last one the whole text at the last sample.
    let word_ends: Vec<usize> = [5, 9, 14, 17, 24].to_vec();
    let marked: Vec<usize> = marks.iter().map(|m| m.0).collect();
    assert_eq!(&marked[..word_ends.len()], &word_ends[..]);
    assert!(marks.windows(2).all(|w| w[0].1 <= w[1].1));
    assert!(marks.iter().all(|m| m.1 <= samples.len() as u64));
    assert_eq!(
        marks.last(),
        Some(&(text.chars().count(), samples.len() as u64))
    );
    assert!(speech(&server).alignment_is_estimated());
}

#[tokio::test]
async fn a_stream_ending_mid_sample_is_malformed() {
    let server = MockServer::scripted(vec![
        MockResponse::streamed("application/octet-stream").bytes(vec![1u8, 2, 3]),
    ])
    .await
    .unwrap();
    let (pcm, _, error) = collect(speech(&server).synthesize("Hi.")).await;
    assert_eq!(pcm, vec![i16::from_le_bytes([1, 2])]);
    assert!(
        matches!(
            error,
            Some(AudioError::Provider {
                failure: SpeechFailure::Malformed(_),
                ..
            })
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_cut_closes_the_request_and_nothing_more_is_read() {
    let gate = MockGate::new();
    let server = MockServer::scripted(vec![
        MockResponse::streamed("application/octet-stream")
            .bytes(pcm_bytes(&ramp(2400)))
            .wait_for(&gate)
            .bytes(pcm_bytes(&ramp(48_000))),
    ])
    .await
    .unwrap();
    let mut disconnects = server.disconnects();
    let mut stream = speech(&server).synthesize("Let me tell you a long story.");
    let first = stream.next().await;
    assert!(matches!(first, Some(Ok(SynthEvent::Audio(_)))), "{first:?}");
    drop(stream); // the cut
    disconnects.wait_for(|n| *n == 1).await.unwrap();
    gate.open();
}

#[tokio::test]
async fn a_stalled_reply_misses_its_deadlines() {
    // Headers, then nothing: the first audio is due.
    let server = MockServer::scripted(vec![
        MockResponse::streamed("application/octet-stream").stall(),
        MockResponse::streamed("application/octet-stream")
            .bytes(pcm_bytes(&ramp(100)))
            .stall(),
    ])
    .await
    .unwrap();
    let mut c = OpenAiSpeechConfig::new(endpoint(&server), "tts-1", "alloy");
    c.endpoint = c
        .endpoint
        .with_deadlines(Duration::from_millis(200), Duration::from_millis(150));
    let tts = OpenAiSpeech::new(c).unwrap();
    let (_, _, error) = collect(tts.synthesize("Hello there.")).await;
    assert!(
        matches!(
            error,
            Some(AudioError::Provider {
                failure: SpeechFailure::FirstOutputTimeout(d),
                ..
            }) if d == Duration::from_millis(200)
        ),
        "{error:?}"
    );
    let (pcm, _, error) = collect(tts.synthesize("Hello there.")).await;
    assert_eq!(pcm.len(), 100);
    assert!(
        matches!(
            error,
            Some(AudioError::Provider {
                failure: SpeechFailure::OutputGapTimeout(d),
                ..
            }) if d == Duration::from_millis(150)
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn refusals_are_typed_and_never_hold_the_key() {
    let server = MockServer::scripted(vec![
        MockResponse::error(401, &format!("Incorrect API key provided: {KEY}")),
        MockResponse::error(429, "Rate limit reached").header("retry-after", "7"),
        MockResponse::error(503, "overloaded"),
    ])
    .await
    .unwrap();
    let tts = speech(&server);
    let mut failures = Vec::new();
    for _ in 0..3 {
        let (_, _, error) = collect(tts.synthesize("Hi.")).await;
        let error = error.expect("a refusal is an error");
        assert_no_key(&error);
        match error {
            AudioError::Provider { failure, .. } => failures.push(failure),
            other => panic!("{other:?}"),
        }
    }
    assert!(
        matches!(&failures[0], SpeechFailure::Unauthorized { status: 401, message } if message.contains("***")),
        "{:?}",
        failures[0]
    );
    assert_eq!(
        failures[1],
        SpeechFailure::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
            message: "Rate limit reached".into()
        }
    );
    assert!(failures[1].is_retryable());
    assert!(matches!(
        &failures[2],
        SpeechFailure::Status { status: 503, .. }
    ));
    assert!(!format!("{tts:?}").contains(KEY));
}

// ---------------------------------------------------------------------------
// Transcription.

/// The parts of a multipart form: (name, bytes).
fn form_parts(r: &RecordedRequest) -> Vec<(String, Vec<u8>)> {
    let ct = r.header("content-type").unwrap_or_default();
    let boundary = ct.split("boundary=").nth(1).expect("a multipart boundary");
    let delimiter = format!("--{boundary}");
    let body = &r.body;
    let mut parts = Vec::new();
    let mut starts: Vec<usize> = body
        .windows(delimiter.len())
        .enumerate()
        .filter(|(_, w)| *w == delimiter.as_bytes())
        .map(|(i, _)| i)
        .collect();
    starts.push(body.len());
    for pair in starts.windows(2) {
        let part = &body[pair[0] + delimiter.len()..pair[1]];
        let Some(head_end) = part.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&part[..head_end]);
        let Some(name) = head
            .split("name=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
        else {
            continue;
        };
        let content = &part[head_end + 4..part.len().saturating_sub(2)];
        parts.push((name.to_string(), content.to_vec()));
    }
    parts
}

fn part<'a>(parts: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    parts
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

/// Feeds one utterance: started at `start`, `frames` frames of 20 ms, ended.
async fn utterance(r: &Recognition, start: u64, frames: usize) -> Vec<i16> {
    r.input
        .send(RecognizerInput::SpeechStarted { position: start })
        .await
        .unwrap();
    let mut all = Vec::new();
    for i in 0..frames {
        let samples = ramp(320);
        all.extend_from_slice(&samples);
        let f = AudioFrame::new(samples, 16_000, start + i as u64 * 320);
        r.input.send(RecognizerInput::Frame(f)).await.unwrap();
    }
    let end = start + frames as u64 * 320;
    r.input
        .send(RecognizerInput::SpeechEnded { position: end })
        .await
        .unwrap();
    all
}

async fn next(r: &mut Recognition) -> Result<Transcript, AudioError> {
    r.transcripts.recv().await.expect("a transcript")
}

#[tokio::test]
async fn transcription_sends_each_utterance_as_a_wav_and_positions_its_final() {
    let server = MockServer::scripted(vec![
        MockResponse::raw(200, "application/json", r#"{"text":"what is the weather"}"#),
        MockResponse::raw(200, "application/json", r#"{"text":"in paris"}"#),
    ])
    .await
    .unwrap();
    let mut c = OpenAiTranscriptionConfig::new(endpoint(&server), "whisper-1");
    c.language = Some("en".into());
    c.prompt = Some("weather, Paris".into());
    let stt = OpenAiTranscription::new(c).unwrap();
    let mut r = stt.open().unwrap();
    let sent = utterance(&r, 8_000, 25).await;
    utterance(&r, 40_000, 10).await;
    let first = next(&mut r).await.unwrap();
    assert_eq!(
        first,
        Transcript {
            text: "what is the weather".into(),
            is_final: true,
            start: 8_000,
            end: 8_000 + 25 * 320
        }
    );
    let second = next(&mut r).await.unwrap();
    assert_eq!((second.text.as_str(), second.start), ("in paris", 40_000));

    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].path(), "/v1/audio/transcriptions");
    assert_eq!(
        requests[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    let parts = form_parts(&requests[0]);
    assert_eq!(part(&parts, "model"), Some(&b"whisper-1"[..]));
    assert_eq!(part(&parts, "language"), Some(&b"en"[..]));
    assert_eq!(part(&parts, "prompt"), Some(&b"weather, Paris"[..]));
    assert_eq!(part(&parts, "stream"), None);
    let file = wav::read(std::io::Cursor::new(part(&parts, "file").unwrap())).unwrap();
    assert_eq!(file.sample_rate(), 16_000);
    assert_eq!(file.samples(), &sent[..], "the utterance's audio, exactly");
    drop(r.input);
    assert!(
        r.transcripts.recv().await.is_none(),
        "closes after the input"
    );
}

#[tokio::test]
async fn streamed_transcription_gives_interims_then_the_final() {
    let delta =
        |d: &str| format!("data: {{\"type\":\"transcript.text.delta\",\"delta\":\"{d}\"}}\n\n");
    let server = MockServer::scripted(vec![
        MockResponse::event_stream()
            .event(&delta("what"))
            .event(": keep-alive\n\n")
            .event(&delta(" is the"))
            .event(&delta(" weather"))
            .event(
                "data: {\"type\":\"transcript.text.done\",\"text\":\"What is the weather?\"}\n\n",
            ),
    ])
    .await
    .unwrap();
    let mut c = OpenAiTranscriptionConfig::new(endpoint(&server), "gpt-4o-mini-transcribe");
    c.stream = true;
    let mut r = OpenAiTranscription::new(c).unwrap().open().unwrap();
    utterance(&r, 1_600, 5).await;
    let mut got = Vec::new();
    loop {
        let t = next(&mut r).await.unwrap();
        assert_eq!((t.start, t.end), (1_600, 1_600 + 5 * 320));
        let done = t.is_final;
        got.push((t.text, t.is_final));
        if done {
            break;
        }
    }
    let want: Vec<(String, bool)> = [
        ("what", false),
        ("what is the", false),
        ("what is the weather", false),
        ("What is the weather?", true),
    ]
    .iter()
    .map(|(t, f)| (t.to_string(), *f))
    .collect();
    assert_eq!(got, want);
    let parts = form_parts(&server.requests()[0]);
    assert_eq!(part(&parts, "stream"), Some(&b"true"[..]));
}

#[tokio::test]
async fn transcription_failures_are_typed_and_the_stream_goes_on() {
    let server = MockServer::scripted(vec![
        MockResponse::error(401, &format!("bad key {KEY}")),
        MockResponse::raw(200, "application/json", "{\"nope\":1}"),
        MockResponse::event_stream()
            .event("data: {\"type\":\"transcript.text.delta\",\"delta\":\"wh\"}\n\n")
            .stall_with_keep_alives(Duration::from_millis(20)),
        MockResponse::raw(200, "application/json", r#"{"text":"still here"}"#),
    ])
    .await
    .unwrap();
    let mut c = OpenAiTranscriptionConfig::new(endpoint(&server), "whisper-1");
    c.endpoint = c
        .endpoint
        .with_deadlines(Duration::from_secs(5), Duration::from_millis(300));
    let mut r = OpenAiTranscription::new(c).unwrap().open().unwrap();
    for i in 0..4 {
        utterance(&r, i * 20_000, 3).await;
    }
    let e = next(&mut r).await.unwrap_err();
    assert_no_key(&e);
    assert!(
        matches!(
            &e,
            AudioError::Provider {
                failure: SpeechFailure::Unauthorized { status: 401, .. },
                ..
            }
        ),
        "{e:?}"
    );
    let e = next(&mut r).await.unwrap_err();
    assert!(
        matches!(
            &e,
            AudioError::Provider {
                failure: SpeechFailure::Malformed(_),
                ..
            }
        ),
        "{e:?}"
    );
    // Keep-alives are not output: the gap after the first delta runs out.
    let interim = next(&mut r).await.unwrap();
    assert_eq!((interim.text.as_str(), interim.is_final), ("wh", false));
    let e = next(&mut r).await.unwrap_err();
    assert!(
        matches!(
            &e,
            AudioError::Provider {
                failure: SpeechFailure::OutputGapTimeout(_),
                ..
            }
        ),
        "{e:?}"
    );
    let last = next(&mut r).await.unwrap();
    assert_eq!((last.text.as_str(), last.start), ("still here", 60_000));
}

// ---------------------------------------------------------------------------
// Fallback chains over the hosted engines.

use colloquy::audio::chain::{SynthesizerChain, TranscriberChain};

#[tokio::test]
async fn a_stalled_speech_provider_falls_back_and_its_request_is_closed() {
    let stalled = MockServer::scripted(vec![
        MockResponse::streamed("application/octet-stream").stall(),
    ])
    .await
    .unwrap();
    let samples = ramp(4800);
    let backup = MockServer::scripted(vec![
        MockResponse::streamed("application/octet-stream").bytes(pcm_bytes(&samples)),
    ])
    .await
    .unwrap();
    let mut first = OpenAiSpeechConfig::new(endpoint(&stalled), "tts-1", "alloy");
    first.endpoint = first
        .endpoint
        .with_deadlines(Duration::from_millis(200), Duration::from_secs(1));
    let chain = SynthesizerChain::new(OpenAiSpeech::new(first).unwrap()).then(speech(&backup));
    let mut disconnects = stalled.disconnects();
    let (pcm, marks, error) = collect(chain.synthesize("Hello there.")).await;
    assert_eq!(error, None);
    assert_eq!(pcm, samples, "all of it from the backup");
    assert_eq!(marks.last(), Some(&(12, samples.len() as u64)));
    assert_eq!(backup.requests()[0].json()["input"], "Hello there.");
    disconnects.wait_for(|n| *n == 1).await.unwrap();
}

#[tokio::test]
async fn a_speech_provider_dropping_mid_segment_is_continued_from_the_last_word() {
    // 2 000 samples a character (24 kHz, 12 characters a second): 12 000
    // samples mark "Sunny" (5 characters) and hold " a" until the hang-up.
    let first_part = ramp(12_000);
    let dropping = MockServer::scripted(vec![
        MockResponse::streamed("application/octet-stream")
            .bytes(pcm_bytes(&first_part))
            .hang_up(),
    ])
    .await
    .unwrap();
    let rest = ramp(30_000);
    let backup = MockServer::scripted(vec![
        MockResponse::streamed("application/octet-stream").bytes(pcm_bytes(&rest)),
    ])
    .await
    .unwrap();
    let plain = |server: &MockServer| {
        OpenAiSpeech::new(OpenAiSpeechConfig::new(endpoint(server), "tts-1", "alloy")).unwrap()
    };
    let chain = SynthesizerChain::new(plain(&dropping)).then(plain(&backup));
    let text = "Sunny and mild in Paris today.";
    let (pcm, marks, error) = collect(chain.synthesize(text)).await;
    assert_eq!(error, None);
    assert_eq!(
        backup.requests()[0].json()["input"],
        "and mild in Paris today.",
        "from the first word not spoken"
    );
    // "Sunny" as the first engine said it, then the backup: no sample of
    // the held " a" in between.
    assert_eq!(&pcm[..10_000], &first_part[..10_000]);
    assert_eq!(&pcm[10_000..], &rest[..]);
    assert_eq!(marks[0], (5, 10_000));
    assert_eq!(marks.last(), Some(&(30, 40_000)));
}

#[tokio::test]
async fn a_stalled_transcription_behind_keep_alives_hands_the_utterance_on() {
    let stalled = MockServer::scripted(vec![
        MockResponse::event_stream().stall_with_keep_alives(Duration::from_millis(20)),
    ])
    .await
    .unwrap();
    let backup = MockServer::scripted(vec![MockResponse::raw(
        200,
        "application/json",
        r#"{"text":"what is the weather"}"#,
    )])
    .await
    .unwrap();
    let mut first = OpenAiTranscriptionConfig::new(endpoint(&stalled), "gpt-4o-mini-transcribe");
    first.stream = true;
    first.endpoint = first
        .endpoint
        .with_deadlines(Duration::from_millis(300), Duration::from_millis(300));
    let second = OpenAiTranscriptionConfig::new(endpoint(&backup), "whisper-1");
    let chain = TranscriberChain::new(OpenAiTranscription::new(first).unwrap())
        .then(OpenAiTranscription::new(second).unwrap());
    let mut r = chain.open().unwrap();
    let sent = utterance(&r, 3_200, 12).await;
    let t = next(&mut r).await.unwrap();
    assert_eq!(
        t,
        Transcript {
            text: "what is the weather".into(),
            is_final: true,
            start: 3_200,
            end: 3_200 + 12 * 320
        }
    );
    let parts = form_parts(&backup.requests()[0]);
    let file = wav::read(std::io::Cursor::new(part(&parts, "file").unwrap())).unwrap();
    assert_eq!(file.samples(), &sent[..], "the whole utterance, handed on");
}
