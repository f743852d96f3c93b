//! Hosted speech against the local mock servers: what the client adds.
//!
//! - `cut_to_server_close`: a synthesis streaming (the server holds the rest
//!   of the audio), its stream dropped (a barge-in's cut) → the server
//!   reading the connection's close. Setup (the request, the first audio)
//!   is not timed.
//! - `first_audio`: `synthesize()` → the first PCM chunk in hand, the mock
//!   answering at once (so all of it is the client and the loopback).
//! - `fallback_under_stall`: a chain whose first engine stalls after its
//!   headers (first-audio deadline 100 ms) → the first audio of the backup;
//!   the goal is the deadline + under 50 ms.
//! - CPU per second of audio (printed first): process CPU time (client and
//!   in-process mock together, so an upper bound for the client) over
//!   60 s of 24 kHz PCM read through `OpenAiSpeech`.
//!
//! The cut and the first audio are measured for ElevenLabs' socket too
//! (feature `elevenlabs`).
//!
//! `cargo bench --all-features --bench speech`

use std::time::{Duration, Instant};

use colloquy::audio::chain::SynthesizerChain;
use colloquy::audio::openai::{OpenAiAudioEndpoint, OpenAiSpeech, OpenAiSpeechConfig};
use colloquy::audio::{SynthEvent, Synthesizer};
use colloquy::mock::{MockGate, MockResponse, MockServer};
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::StreamExt;

fn pcm(seconds: f64) -> Vec<u8> {
    let n = (24_000.0 * seconds) as usize;
    (0..n)
        .flat_map(|i| (((i * 37) % 20_000) as i16 - 10_000).to_le_bytes())
        .collect()
}

fn speech(server: &MockServer, first_deadline: Duration) -> OpenAiSpeech {
    let endpoint = OpenAiAudioEndpoint::compatible(server.base_url())
        .with_deadlines(first_deadline, Duration::from_secs(2));
    OpenAiSpeech::new(OpenAiSpeechConfig::new(endpoint, "tts-1", "alloy")).unwrap()
}

/// Process CPU time (user + system), from /proc/self/stat in 100 Hz ticks.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn cpu_per_second_of_audio(rt: &tokio::runtime::Runtime) {
    let seconds = 60.0;
    let server = rt
        .block_on(MockServer::scripted(vec![
            MockResponse::streamed("application/octet-stream")
                .bytes(pcm(seconds))
                .write_size(4800), // 100 ms chunks, as a provider streams
        ]))
        .unwrap();
    let tts = speech(&server, Duration::from_secs(5));
    let runs = 5;
    let before = cpu_time();
    for _ in 0..runs {
        rt.block_on(async {
            let mut s = tts.synthesize("A long answer.");
            while let Some(e) = s.next().await {
                e.unwrap();
            }
        });
    }
    let used = cpu_time() - before;
    println!(
        "speech/cpu_per_audio_second/openai-speech: {:.3} ms CPU per second of audio ({} s of audio, client and mock)",
        used.as_secs_f64() * 1000.0 / (seconds * runs as f64),
        seconds * runs as f64
    );
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    cpu_per_second_of_audio(&rt);
    elevenlabs_cpu(&rt);
    deepgram_cpu(&rt);
    let mut group = c.benchmark_group("speech");
    group.sample_size(50);

    // A cut while the server holds the rest of the audio behind a gate.
    let gate = MockGate::new();
    let held = rt
        .block_on(MockServer::scripted(vec![
            MockResponse::streamed("application/octet-stream")
                .bytes(pcm(0.1))
                .wait_for(&gate)
                .bytes(pcm(1.0)),
        ]))
        .unwrap();
    let tts = speech(&held, Duration::from_secs(5));
    group.bench_function("cut_to_server_close/openai-speech", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut closes = held.disconnects();
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let seen = *closes.borrow_and_update();
                    let mut s = tts.synthesize("Hello there, how are you today?");
                    assert!(matches!(s.next().await, Some(Ok(SynthEvent::Audio(_)))));
                    let t = Instant::now();
                    drop(s);
                    closes.wait_for(|n| *n > seen).await.unwrap();
                    total += t.elapsed();
                }
                total
            })
        })
    });

    let quick = rt
        .block_on(MockServer::scripted(vec![
            MockResponse::streamed("application/octet-stream").bytes(pcm(0.5)),
        ]))
        .unwrap();
    let tts = speech(&quick, Duration::from_secs(5));
    group.bench_function("first_audio/openai-speech", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let mut s = tts.synthesize("Hello there.");
                    assert!(matches!(s.next().await, Some(Ok(SynthEvent::Audio(_)))));
                    total += t.elapsed();
                    while s.next().await.is_some() {}
                }
                total
            })
        })
    });

    let stalled = rt
        .block_on(MockServer::scripted(vec![
            MockResponse::streamed("application/octet-stream").stall(),
        ]))
        .unwrap();
    let chain = SynthesizerChain::new(speech(&stalled, Duration::from_millis(100)))
        .then(speech(&quick, Duration::from_secs(5)))
        .with_breakers(colloquy::audio::chain::BreakerConfig {
            failure_threshold: u32::MAX,
            cooldown: Duration::from_secs(1),
        });
    group.sample_size(10);
    group.bench_function("fallback_under_stall/openai-speech_deadline_100ms", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let mut s = chain.synthesize("Hello there.");
                    assert!(matches!(s.next().await, Some(Ok(SynthEvent::Audio(_)))));
                    total += t.elapsed();
                    while s.next().await.is_some() {}
                }
                total
            })
        })
    });
    elevenlabs(&rt, &mut group);
    group.finish();
}

/// The same two figures for ElevenLabs' socket (its mock holds the audio
/// after two chunks behind a gate for the cut).
#[cfg(feature = "elevenlabs")]
fn elevenlabs(
    rt: &tokio::runtime::Runtime,
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
) {
    use colloquy::audio::elevenlabs::ElevenLabsSpeech;
    use colloquy::mock::elevenlabs::{ElevenLabsScript, MockElevenLabs};
    group.sample_size(50);
    let gate = MockGate::new();
    let held = rt
        .block_on(MockElevenLabs::start(
            ElevenLabsScript::new("key").hold_after(2, &gate),
        ))
        .unwrap();
    let tts = ElevenLabsSpeech::new(held.config("voice")).unwrap();
    group.bench_function("cut_to_server_close/elevenlabs", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut closes = held.early_closes();
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let seen = *closes.borrow_and_update();
                    let mut s = tts.synthesize("Hello there, how are you today?");
                    assert!(matches!(s.next().await, Some(Ok(SynthEvent::Audio(_)))));
                    let t = Instant::now();
                    drop(s);
                    closes.wait_for(|n| *n > seen).await.unwrap();
                    total += t.elapsed();
                }
                total
            })
        })
    });
    let quick = rt
        .block_on(MockElevenLabs::start(ElevenLabsScript::new("key")))
        .unwrap();
    let tts = ElevenLabsSpeech::new(quick.config("voice")).unwrap();
    group.bench_function("first_audio/elevenlabs", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let mut s = tts.synthesize("Hello there.");
                    assert!(matches!(s.next().await, Some(Ok(SynthEvent::Audio(_)))));
                    total += t.elapsed();
                    while s.next().await.is_some() {}
                }
                total
            })
        })
    });
}

#[cfg(not(feature = "elevenlabs"))]
fn elevenlabs(
    _rt: &tokio::runtime::Runtime,
    _group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
) {
}

criterion_group!(speech_benches, benches);
criterion_main!(speech_benches);

/// ElevenLabs: 60 s of audio (base64 in JSON, 100 ms a message) read
/// through `ElevenLabsSpeech`, five times.
#[cfg(feature = "elevenlabs")]
fn elevenlabs_cpu(rt: &tokio::runtime::Runtime) {
    use colloquy::audio::elevenlabs::ElevenLabsSpeech;
    use colloquy::mock::elevenlabs::{ElevenLabsScript, MockElevenLabs};
    // 40 ms a character: 1 500 characters are 60 s.
    let text = "abcd ".repeat(300);
    let server = rt
        .block_on(MockElevenLabs::start(
            ElevenLabsScript::new("key").pace(40, 40).chunk_bytes(4800),
        ))
        .unwrap();
    let tts = ElevenLabsSpeech::new(server.config("voice")).unwrap();
    let (runs, mut samples) = (5, 0u64);
    let before = cpu_time();
    for _ in 0..runs {
        rt.block_on(async {
            let mut s = tts.synthesize(&text);
            while let Some(e) = s.next().await {
                if let SynthEvent::Audio(a) = e.unwrap() {
                    samples += a.len() as u64;
                }
            }
        });
    }
    let used = cpu_time() - before;
    let seconds = samples as f64 / f64::from(tts.sample_rate());
    println!(
        "speech/cpu_per_audio_second/elevenlabs: {:.3} ms CPU per second of audio ({seconds:.0} s of audio, client and mock)",
        used.as_secs_f64() * 1000.0 / seconds
    );
}

#[cfg(not(feature = "elevenlabs"))]
fn elevenlabs_cpu(_rt: &tokio::runtime::Runtime) {}

/// Deepgram: 60 s of 16 kHz speech frames (20 ms each) sent through
/// `DeepgramTranscriber` as one utterance, interims and the final read.
#[cfg(feature = "deepgram")]
fn deepgram_cpu(rt: &tokio::runtime::Runtime) {
    use colloquy::audio::deepgram::{DeepgramConfig, DeepgramTranscriber};
    use colloquy::audio::{AudioFrame, RecognizerInput, Transcriber};
    use colloquy::mock::deepgram::{MockDeepgram, MockDeepgramScript};
    let words: Vec<String> = (0..240).map(|i| format!("w{i}")).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let server = rt
        .block_on(MockDeepgram::start(MockDeepgramScript::new(&[&words])))
        .unwrap();
    let stt =
        DeepgramTranscriber::new(DeepgramConfig::new("key").with_base_url(server.url())).unwrap();
    let frames = 3_000u64; // 60 s
    let runs = 3;
    let before = cpu_time();
    for _ in 0..runs {
        rt.block_on(async {
            let mut r = stt.open().unwrap();
            let feed = r.input.clone();
            let sender = tokio::spawn(async move {
                feed.send(RecognizerInput::SpeechStarted { position: 0 })
                    .await
                    .unwrap();
                for i in 0..frames {
                    let f = AudioFrame::new(vec![(i % 200) as i16; 320], 16_000, i * 320);
                    feed.send(RecognizerInput::Frame(f)).await.unwrap();
                }
                feed.send(RecognizerInput::SpeechEnded {
                    position: frames * 320,
                })
                .await
                .unwrap();
            });
            loop {
                let t = r.transcripts.recv().await.unwrap().unwrap();
                if t.is_final {
                    break;
                }
            }
            sender.await.unwrap();
        });
    }
    let used = cpu_time() - before;
    let seconds = (frames * runs) as f64 * 0.02;
    println!(
        "speech/cpu_per_audio_second/deepgram: {:.3} ms CPU per second of audio ({seconds:.0} s of audio, client and mock)",
        used.as_secs_f64() * 1000.0 / seconds
    );
}

#[cfg(not(feature = "deepgram"))]
fn deepgram_cpu(_rt: &tokio::runtime::Runtime) {}
