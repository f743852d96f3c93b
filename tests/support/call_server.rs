//! A voice server for the call tests (included with `#[path]`): the offline
//! engines (espeak-ng speaking, PocketSphinx hearing), a scripted model on
//! 127.0.0.1, the call routes on 127.0.0.1:0, and a record of what each call
//! did — its bus events, the synthesizer's exact output, its end.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use colloquy::audio::espeak::{Espeak, EspeakConfig};
use colloquy::audio::pocketsphinx::{PocketSphinx, PocketSphinxConfig};
use colloquy::audio::{Alignment, AudioError, SynthEvent, Synthesizer, convert_position, resample};
use colloquy::context::ChatContext;
use colloquy::llm::{ChatClient, ClientConfig, LlmOptions, OpenAiConfig};
use colloquy::mock::{MockResponse, MockServer};
use colloquy_actors::bus::{BusEvent, BusRecvError};
use colloquy_actors::calls::{CallError, CallNotice, CallServices};
use colloquy_actors::turn_taking::InterruptionPolicy;
use colloquy_actors::{AgentSettings, SessionConfig, SessionHandle, Supervisor, SupervisorConfig};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

/// One synthesis as the server's synthesizer made it.
#[derive(Debug, Clone)]
pub struct Synthesis {
    pub text: String,
    pub audio: Vec<i16>,
    pub marks: Vec<(usize, u64)>,
}

/// A synthesizer that records what it made (the server's exact audio).
pub struct Recorded {
    inner: Arc<dyn Synthesizer>,
    pub log: Arc<Mutex<Vec<Synthesis>>>,
}

impl Synthesizer for Recorded {
    fn sample_rate(&self) -> u32 {
        self.inner.sample_rate()
    }
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn alignment_is_estimated(&self) -> bool {
        self.inner.alignment_is_estimated()
    }
    fn synthesize(&self, text: &str) -> BoxStream<'static, Result<SynthEvent, AudioError>> {
        let log = self.log.clone();
        let index = {
            let mut l = log.lock().unwrap();
            l.push(Synthesis {
                text: text.to_string(),
                audio: vec![],
                marks: vec![],
            });
            l.len() - 1
        };
        self.inner
            .synthesize(text)
            .map(move |ev| {
                if let Ok(e) = &ev {
                    let mut l = log.lock().unwrap();
                    match e {
                        SynthEvent::Audio(a) => l[index].audio.extend(a),
                        SynthEvent::Mark { chars, sample } => {
                            l[index].marks.push((*chars, *sample))
                        }
                        _ => {}
                    }
                }
                ev
            })
            .boxed()
    }
}

#[derive(Default)]
pub struct CallRecord {
    pub session: Option<SessionHandle>,
    pub events: Vec<BusEvent>,
    pub ended: Option<(ChatContext, Option<CallError>)>,
}

pub struct CallServer {
    pub addr: std::net::SocketAddr,
    pub supervisor: Supervisor,
    pub calls: Arc<Mutex<HashMap<String, CallRecord>>>,
    pub changed: Arc<tokio::sync::Notify>,
    pub synth: Arc<Mutex<Vec<Synthesis>>>,
    /// The synthesizer's rate.
    pub synth_rate: u32,
    pub model: MockServer,
    _serve: tokio::task::JoinHandle<()>,
}

pub const GUARD: Duration = Duration::from_secs(60);

impl CallServer {
    /// A server whose model answers every utterance with `reply` (300 ms to
    /// the first token, a word every 30 ms).
    pub async fn start(policy: InterruptionPolicy, replies: Vec<String>) -> Self {
        let espeak = Espeak::new(EspeakConfig::default())
            .expect("espeak-ng is needed: apt-get install espeak-ng libespeak-ng-dev");
        Self::start_with(policy, replies, Arc::new(espeak)).await
    }

    /// The same with another synthesizer speaking (its output recorded).
    pub async fn start_with(
        policy: InterruptionPolicy,
        replies: Vec<String>,
        synthesizer: Arc<dyn Synthesizer>,
    ) -> Self {
        Self::start_configured(policy, replies, synthesizer, |s| s).await
    }

    /// espeak-ng speaking, the call services changed by `configure` (access,
    /// limits).
    pub async fn start_secured(
        replies: Vec<String>,
        configure: impl FnOnce(CallServices) -> CallServices,
    ) -> Self {
        let espeak = Espeak::new(EspeakConfig::default())
            .expect("espeak-ng is needed: apt-get install espeak-ng libespeak-ng-dev");
        Self::start_configured(
            InterruptionPolicy::default(),
            replies,
            Arc::new(espeak),
            configure,
        )
        .await
    }

    /// The general case.
    pub async fn start_configured(
        policy: InterruptionPolicy,
        replies: Vec<String>,
        synthesizer: Arc<dyn Synthesizer>,
        configure: impl FnOnce(CallServices) -> CallServices,
    ) -> Self {
        let turn = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let model = MockServer::start(move |_| {
            let i = turn.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let text = replies[i.min(replies.len() - 1)].clone();
            let words: Vec<String> = text.split_inclusive(' ').map(str::to_string).collect();
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            MockResponse::text_paced(&words, Duration::from_millis(30))
                .delay(Duration::ZERO)
                .finish("stop", 50, words.len() as u64)
        })
        .await
        .unwrap();
        let client = ChatClient::with_config(
            OpenAiConfig::compatible(model.base_url()),
            ClientConfig::default(),
        )
        .unwrap();
        let supervisor = Supervisor::start(SupervisorConfig::default())
            .await
            .unwrap();
        let mut settings = AgentSettings::new(LlmOptions::new("mock"));
        settings.interruption = policy;
        let log = Arc::new(Mutex::new(Vec::new()));
        let synth_rate = synthesizer.sample_rate();
        let synth = Recorded {
            inner: synthesizer,
            log: log.clone(),
        };
        let ears = PocketSphinx::new(PocketSphinxConfig::default()).expect(
            "PocketSphinx is needed: apt-get install libpocketsphinx-dev pocketsphinx-en-us",
        );
        let calls: Arc<Mutex<HashMap<String, CallRecord>>> = Arc::default();
        let changed = Arc::new(tokio::sync::Notify::new());
        let (c, n) = (calls.clone(), changed.clone());
        let services = CallServices::new(
            supervisor.clone(),
            move |_| SessionConfig::new(client.clone(), settings.clone()),
            Arc::new(synth),
        )
        .with_transcriber(Arc::new(ears))
        .on_call(move |notice| match notice {
            CallNotice::Started { info, session } => {
                let mut rx = session.subscribe();
                c.lock()
                    .unwrap()
                    .entry(info.id.clone())
                    .or_default()
                    .session = Some(session);
                n.notify_waiters();
                let (c, n, id) = (c.clone(), n.clone(), info.id.clone());
                tokio::spawn(async move {
                    loop {
                        match rx.recv().await {
                            Ok(ev) => {
                                c.lock()
                                    .unwrap()
                                    .entry(id.clone())
                                    .or_default()
                                    .events
                                    .push(ev);
                                n.notify_waiters();
                            }
                            Err(BusRecvError::Lagged { .. }) => {
                                panic!("the test's subscriber lagged")
                            }
                            Err(_) => return,
                        }
                    }
                });
            }
            CallNotice::Ended {
                info,
                history,
                error,
            } => {
                c.lock().unwrap().entry(info.id).or_default().ended = Some((history, error));
                n.notify_waiters();
            }
            _ => {}
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = colloquy_actors::calls::router(configure(services));
        let serve = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            addr,
            supervisor,
            calls,
            changed,
            synth: log,
            synth_rate,
            model,
            _serve: serve,
        }
    }

    pub fn page_url(&self) -> String {
        format!("http://{}/?autostart=1", self.addr)
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{path_and_query}", self.addr)
    }

    pub fn twilio_url(&self) -> String {
        format!("ws://{}/twilio", self.addr)
    }

    /// Waits until `check` holds for call `id`'s record.
    pub async fn wait_call<T>(&self, id: &str, check: impl Fn(&CallRecord) -> Option<T>) -> T {
        tokio::time::timeout(GUARD, async {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(rec) = self.calls.lock().unwrap().get(id)
                    && let Some(t) = check(rec)
                {
                    return t;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("call {id}: the condition never held"))
    }

    /// The audio the server made for `texts` (in order), resampled to
    /// `rate` exactly as its audio output does (per segment), and the
    /// alignment of their characters on that audio.
    pub fn reference(&self, texts: &[String], rate: u32) -> (Vec<i16>, Alignment) {
        let log = self.synth.lock().unwrap();
        let mut audio = Vec::new();
        let mut alignment = Alignment::new(false);
        let mut chars_before = 0;
        let from = self.synth_rate;
        for text in texts {
            let s = log
                .iter()
                .find(|s| &s.text == text)
                .unwrap_or_else(|| panic!("never synthesized: {text:?}"));
            let start = audio.len() as u64;
            for (chars, sample) in &s.marks {
                alignment.push(
                    chars_before + chars,
                    start + convert_position(*sample, from, rate),
                );
            }
            audio.extend(resample::resample(&s.audio, from, rate).unwrap());
            chars_before += text.chars().count();
            alignment.push(chars_before, audio.len() as u64);
        }
        (audio, alignment)
    }
}
