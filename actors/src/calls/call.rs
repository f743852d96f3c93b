//! One call: its session, its listener and its speaker, started together
//! and ended together.

use std::sync::Arc;

use colloquy::audio::{AudioError, AudioFrame, Synthesizer, Transcriber};
use colloquy::context::ChatContext;

use tokio::sync::mpsc;

use super::access::BrowserAccess;
pub(crate) use super::info::{CallError, CallInfo};
use super::limits::{CallLimits, CallSlot};
use super::twilio::signature::TwilioAuth;
use crate::ids::SessionId;
use crate::session::SessionHandle;
use crate::speech::audio::{AudioOutput, AudioOutputConfig, AudioSink, PlayoutClock};
use crate::speech::{Listener, ListenerConfig, Speaker};
use crate::supervisor::{SessionConfig, Supervisor};
use crate::task::AbortOnDrop;

/// A call started or ended, for the embedder (logs, `--json`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CallNotice {
    /// The call's session is running; subscribe to its bus for its events.
    Started {
        /// The call.
        info: CallInfo,
        /// Its session.
        session: SessionHandle,
    },
    /// The call's session was placed on the cluster's workers
    /// ([`CallServices::on_cluster`]); subscribe to it for its events.
    #[cfg(feature = "nats")]
    Placed {
        /// The call.
        info: CallInfo,
        /// Its session, wherever it runs (it moves on a failover).
        session: crate::cluster::RemoteSession,
    },
    /// The call ended: its history as committed, and why it ended (`None`:
    /// its own `stop` or the caller hanging up).
    Ended {
        /// The call.
        info: CallInfo,
        /// The conversation as committed (what the caller heard).
        history: ChatContext,
        /// Why, if not a normal end.
        error: Option<CallError>,
    },
}

type ConfigFn = dyn Fn(&CallInfo) -> SessionConfig + Send + Sync;
type NoticeFn = dyn Fn(CallNotice) + Send + Sync;

/// Where the calls' sessions run.
#[derive(Clone)]
enum Sessions {
    /// In this process.
    Local {
        supervisor: Supervisor,
        config: Arc<ConfigFn>,
    },
    /// On the cluster's workers (see `remote`).
    #[cfg(feature = "nats")]
    Cluster {
        client: crate::cluster::ClusterClient,
        spec: Arc<super::remote::SpecFn>,
    },
}

/// What every call of a server shares: where sessions run, how each call's
/// session is configured, the speech engines.
#[derive(Clone)]
pub struct CallServices {
    sessions: Sessions,
    pub(crate) synthesizer: Arc<dyn Synthesizer>,
    pub(crate) transcriber: Option<Arc<dyn Transcriber>>,
    pub(crate) listener: ListenerConfig,
    pub(crate) output: AudioOutputConfig,
    pub(crate) notice: Option<Arc<NoticeFn>>,
    pub(crate) next_call: Arc<std::sync::atomic::AtomicU64>,
    /// This server's tag, in the ids of sessions it places on a cluster
    /// (its call names are only unique here).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) instance: Arc<str>,
    pub(crate) twilio_auth: Option<Arc<TwilioAuth>>,
    pub(crate) browser: BrowserAccess,
    pub(crate) limits: CallLimits,
    pub(crate) open_calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for CallServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sessions = match &self.sessions {
            Sessions::Local { supervisor, .. } => format!("{} local", supervisor.session_count()),
            #[cfg(feature = "nats")]
            Sessions::Cluster { .. } => "on the cluster".to_string(),
        };
        f.debug_struct("CallServices")
            .field("sessions", &sessions)
            .field("listener", &self.listener)
            .field("output", &self.output)
            .field("twilio_auth", &self.twilio_auth)
            .field("browser", &self.browser)
            .field("limits", &self.limits)
            .finish()
    }
}

impl CallServices {
    /// Calls whose sessions run on `supervisor`, configured by
    /// `session_config` per call, speaking with `synthesizer`.
    pub fn new(
        supervisor: Supervisor,
        session_config: impl Fn(&CallInfo) -> SessionConfig + Send + Sync + 'static,
        synthesizer: Arc<dyn Synthesizer>,
    ) -> Self {
        Self::with_sessions(
            Sessions::Local {
                supervisor,
                config: Arc::new(session_config),
            },
            synthesizer,
        )
    }

    /// Calls whose sessions are placed on the cluster `client` reaches
    /// (one session per call, specified by `spec`; its segmenter is always
    /// on), speaking with `synthesizer`. The audio stays here: the listener,
    /// the speaker and the playout clock run in this process (see
    /// `calls::remote`).
    #[cfg(feature = "nats")]
    pub fn on_cluster(
        client: crate::cluster::ClusterClient,
        spec: impl Fn(&CallInfo) -> crate::cluster::SessionSpec + Send + Sync + 'static,
        synthesizer: Arc<dyn Synthesizer>,
    ) -> Self {
        Self::with_sessions(
            Sessions::Cluster {
                client,
                spec: Arc::new(spec),
            },
            synthesizer,
        )
    }

    fn with_sessions(sessions: Sessions, synthesizer: Arc<dyn Synthesizer>) -> Self {
        Self {
            sessions,
            synthesizer,
            transcriber: None,
            listener: ListenerConfig::default(),
            output: AudioOutputConfig::default(),
            notice: None,
            next_call: Arc::default(),
            instance: instance_tag().into(),
            twilio_auth: None,
            browser: BrowserAccess::default(),
            limits: CallLimits::default(),
            open_calls: Arc::default(),
        }
    }

    /// `/twilio` takes only upgrades signed with the account's auth token
    /// (else 403), and only streams of its account if one is set. Without
    /// it, anyone who can reach `/twilio` can place calls.
    pub fn with_twilio_auth(mut self, auth: TwilioAuth) -> Self {
        self.twilio_auth = Some(Arc::new(auth));
        self
    }

    /// How browser calls are admitted (default: a random key, tokens valid
    /// for five minutes, the server's own origin).
    pub fn with_browser_access(mut self, access: BrowserAccess) -> Self {
        self.browser = access;
        self
    }

    /// The Twilio signature check, if configured.
    pub fn twilio_auth(&self) -> Option<&TwilioAuth> {
        self.twilio_auth.as_deref()
    }

    /// The browser endpoint's access rules (to issue tokens for a page of
    /// the embedder's own).
    pub fn browser_access(&self) -> &BrowserAccess {
        &self.browser
    }

    /// The limits of every call.
    pub fn with_limits(mut self, limits: CallLimits) -> Self {
        self.limits = limits;
        self
    }

    /// A call slot, unless the server is at its limit.
    pub(crate) fn take_slot(&self) -> Option<CallSlot> {
        CallSlot::take(&self.open_calls, self.limits.max_calls)
    }

    /// Transcribes callers with `transcriber` (without one, calls hear voice
    /// activity only).
    pub fn with_transcriber(mut self, transcriber: Arc<dyn Transcriber>) -> Self {
        self.transcriber = Some(transcriber);
        self
    }

    /// How callers are heard.
    pub fn with_listener(mut self, config: ListenerConfig) -> Self {
        self.listener = config;
        self
    }

    /// How replies are paced into the call.
    pub fn with_output(mut self, config: AudioOutputConfig) -> Self {
        self.output = config;
        self
    }

    /// Calls `notice` when a call starts and when it ends.
    pub fn on_call(mut self, notice: impl Fn(CallNotice) + Send + Sync + 'static) -> Self {
        self.notice = Some(Arc::new(notice));
        self
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_call
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }

    fn notify(&self, notice: CallNotice) {
        if let Some(n) = &self.notice {
            n(notice);
        }
    }
}

/// Caller audio queued for the hearing task (20 ms frames: 2 s).
const HEARING_QUEUE: usize = 100;

/// A running call: feed it the caller's audio; end it once.
///
/// The caller's audio is heard in a task of its own, fed through a bounded
/// queue: the transport's read loop never waits for voice activity
/// detection, so playout reports (marks, the page's positions) that arrive
/// on the same socket are applied at once, not behind audio. A queue full
/// (the hearing task 2 s behind) drops frames, counted and logged.
pub(crate) struct Call {
    services: CallServices,
    info: CallInfo,
    session: CallSession,
    hearing: mpsc::Sender<AudioFrame>,
    hearing_failed: Arc<std::sync::Mutex<Option<AudioError>>>,
    dropped: u64,
    _hearing: AbortOnDrop,
}

/// A call's session and its speaker.
pub(crate) enum CallSession {
    /// In this process.
    Local {
        session: SessionHandle,
        speaker: Option<Speaker>,
    },
    /// On a worker.
    #[cfg(feature = "nats")]
    Remote(super::remote::RemoteCall),
}

impl Call {
    /// Starts the call's session, its speaker into `sink` and its listener
    /// for audio at `input_rate`.
    pub(crate) async fn start(
        services: &CallServices,
        info: CallInfo,
        sink: Arc<dyn AudioSink>,
        clock: PlayoutClock,
        input_rate: u32,
    ) -> Result<Self, CallError> {
        let output = AudioOutput::new(services.synthesizer.clone(), sink, clock, services.output);
        let (session, listener) = match &services.sessions {
            Sessions::Local { supervisor, config } => {
                let mut config = config(&info);
                config.speech_output = true;
                // The page and `--json` follow a call's bus while its tokens
                // stream: room enough that they do not lag behind a reply.
                config.bus_capacity = config.bus_capacity.max(1024);
                let session = supervisor
                    .start_session(SessionId::new(info.id.clone()), config)
                    .await
                    .map_err(|e| CallError::Session(e.to_string()))?;
                let speaker = Speaker::spawn(&session, output);
                let listener = match Listener::new(
                    &session,
                    input_rate,
                    services.transcriber.as_deref(),
                    services.listener,
                ) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = supervisor.stop_session(session.id()).await;
                        return Err(e.into());
                    }
                };
                services.notify(CallNotice::Started {
                    info: info.clone(),
                    session: session.clone(),
                });
                let speaker = Some(speaker);
                (CallSession::Local { session, speaker }, listener)
            }
            #[cfg(feature = "nats")]
            Sessions::Cluster { client, spec } => {
                let (call, listener) = super::remote::RemoteCall::start(
                    client,
                    &**spec,
                    &info,
                    &services.instance,
                    output,
                    input_rate,
                    services.transcriber.as_deref(),
                    services.listener,
                )
                .await?;
                services.notify(CallNotice::Placed {
                    info: info.clone(),
                    session: call.session().clone(),
                });
                (CallSession::Remote(call), listener)
            }
        };
        let (hearing, mut frames) = mpsc::channel::<AudioFrame>(HEARING_QUEUE);
        let hearing_failed = Arc::new(std::sync::Mutex::new(None));
        let failed = hearing_failed.clone();
        let mut listener = listener;
        let task = tokio::spawn(async move {
            while let Some(frame) = frames.recv().await {
                if let Err(e) = listener.push(&frame) {
                    *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                    return;
                }
            }
        });
        Ok(Self {
            services: services.clone(),
            info,
            session,
            hearing,
            hearing_failed,
            dropped: 0,
            _hearing: AbortOnDrop(task),
        })
    }

    /// The call's session.
    pub(crate) fn session(&self) -> &CallSession {
        &self.session
    }

    /// Queues the next frame of the caller for hearing; an error once the
    /// hearing task refused the audio (a wrong rate).
    pub(crate) fn hear(&mut self, frame: AudioFrame) -> Result<(), CallError> {
        #[cfg(feature = "nats")]
        if let CallSession::Remote(remote) = &self.session
            && remote.session_ended()
        {
            // Idle or lifetime limit, a close, no worker to take it: the
            // call cannot go on silently.
            return Err(CallError::Session("the call's session ended".into()));
        }
        match self.hearing.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.dropped == 0 {
                    tracing::warn!(call = %self.info.id, "call: hearing is behind; caller audio is dropped");
                }
                self.dropped += 1;
                metrics::counter!("colloquy_call_dropped_frames_total").increment(1);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                let failed = self
                    .hearing_failed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                Err(failed.map_or_else(
                    || CallError::Connection("hearing stopped".into()),
                    CallError::Audio,
                ))
            }
        }
    }

    /// Ends the call: the speaker stopped, the history taken, the session
    /// stopped, the end reported.
    pub(crate) async fn end(self, error: Option<CallError>) -> ChatContext {
        // Hearing stops first: nothing the caller said after the end reaches
        // the session while its history is read.
        drop(self._hearing);
        drop(self.hearing);
        let history = match self.session {
            CallSession::Local {
                session,
                mut speaker,
            } => {
                // Silence first: nothing more is spoken into a call that ended.
                drop(speaker.take());
                let history = match session.context().await {
                    Ok(h) => h,
                    Err(_) => (*session.checkpoint()).clone(),
                };
                #[allow(irrefutable_let_patterns)] // without the `nats` feature
                if let Sessions::Local { supervisor, .. } = &self.services.sessions {
                    let _ = supervisor.stop_session(session.id()).await;
                }
                history
            }
            #[cfg(feature = "nats")]
            CallSession::Remote(call) => call.end().await,
        };
        self.services.notify(CallNotice::Ended {
            info: self.info.clone(),
            history: history.clone(),
            error,
        });
        history
    }
}

/// Eight random hex digits (the time's low bits if the system has no
/// randomness to give).
fn instance_tag() -> String {
    let mut bytes = [0u8; 4];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        bytes = nanos.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
