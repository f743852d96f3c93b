//! What the server prints: a line per call event, or with `--json` one JSON
//! object per line with `call`, `t_ms` and `type` — the scenario runner's
//! types (`user`, `paused`, `resumed`, `cut`, `turn_started`, `speakable`,
//! `turn_finished`, `usage`) plus `call_started`, `call_ended` and a
//! `history` line per call when it ends (see docs/audio.md).

use std::io::Write;

use colloquy_actors::latency::TurnLatency;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use colloquy_actors::bus::{BusEvent, BusRecvError, EventKind};
use colloquy_actors::calls::CallNotice;
use serde_json::{Value, json};

#[derive(Clone)]
pub(crate) struct Printer {
    json: bool,
    start: Instant,
    /// The synthesizer's alignment is an estimate (no timestamps): every
    /// heard position is reported as estimated.
    heard_estimated: bool,
}

impl Printer {
    pub(crate) fn new(json: bool, start: Instant, heard_estimated: bool) -> Arc<Self> {
        Arc::new(Self {
            json,
            start,
            heard_estimated,
        })
    }

    /// `heard_chars` and, from an estimated alignment, `heard_estimated`.
    fn heard(&self, turn: impl serde::Serialize, heard_chars: usize) -> Value {
        let mut v = json!({"turn": turn, "heard_chars": heard_chars});
        if self.heard_estimated {
            v["heard_estimated"] = json!(true);
        }
        v
    }

    fn estimate_note(&self) -> &'static str {
        if self.heard_estimated {
            " (estimated)"
        } else {
            ""
        }
    }

    fn emit(&self, call: &str, kind: &str, mut fields: Value, human: String) {
        let t_ms = self.start.elapsed().as_millis() as u64;
        let mut out = std::io::stdout().lock();
        if self.json {
            let obj = fields.as_object_mut().expect("an object");
            obj.insert("call".into(), json!(call));
            obj.insert("t_ms".into(), json!(t_ms));
            obj.insert("type".into(), json!(kind));
            let _ = writeln!(out, "{fields}");
        } else {
            let _ = writeln!(out, "{:>7.3}s [{call}] {human}", t_ms as f64 / 1000.0);
        }
    }

    pub(crate) fn ready(&self, addr: SocketAddr, model: &str, metrics: Option<SocketAddr>) {
        if self.json {
            let mut fields = json!({"addr": addr.to_string(), "model": model});
            if let Some(m) = metrics {
                fields["metrics"] = json!(format!("http://{m}/metrics"));
            }
            self.emit("-", "listening", fields, String::new());
        } else {
            println!("colloquy voice server — model: {model}");
            println!(
                "open http://{addr}/ in a browser, or point Twilio Media Streams at ws://{addr}/twilio"
            );
            if let Some(m) = metrics {
                println!("metrics for Prometheus: http://{m}/metrics");
            }
        }
    }

    pub(crate) fn notice(self: &Arc<Self>, notice: CallNotice) {
        match notice {
            CallNotice::Started { info, session } => {
                self.emit(
                    &info.id,
                    "call_started",
                    json!({"transport": info.transport}),
                    format!("call started ({})", info.transport),
                );
                let me = self.clone();
                let mut rx = session.subscribe();
                let call = info.id.clone();
                tokio::spawn(async move {
                    loop {
                        match rx.recv().await {
                            // Each turn's latency breakdown, once it is known.
                            Ok(BusEvent {
                                kind: EventKind::TurnLatency(r),
                                ..
                            }) => me.latency(&call, &r),
                            Ok(ev) => me.event(&call, ev.turn.0, &ev.kind),
                            Err(BusRecvError::Lagged { .. }) => {}
                            Err(_) => return,
                        }
                    }
                });
            }
            #[cfg(feature = "nats")]
            CallNotice::Placed { info, session } => {
                self.emit(
                    &info.id,
                    "call_started",
                    json!({"transport": info.transport, "placed": "cluster"}),
                    format!(
                        "call started ({}), its session on the cluster",
                        info.transport
                    ),
                );
                let me = self.clone();
                let call = info.id.clone();
                tokio::spawn(async move {
                    let Ok(mut rx) = session.subscribe().await else {
                        return;
                    };
                    while let Some(ev) = rx.recv().await {
                        match &ev.kind {
                            colloquy_actors::cluster::RemoteEventKind::Resumed {
                                previous_worker,
                                ..
                            } => me.emit(
                                &call,
                                "resumed_elsewhere",
                                json!({"worker": ev.worker, "previous_worker": previous_worker}),
                                format!("session resumed on worker {}", ev.worker),
                            ),
                            colloquy_actors::cluster::RemoteEventKind::Bus(
                                EventKind::TurnLatency(r),
                            ) => me.latency(&call, r),
                            colloquy_actors::cluster::RemoteEventKind::Bus(kind) => {
                                me.event(&call, ev.turn.0, kind)
                            }
                            // The session is over: so is this subscription.
                            colloquy_actors::cluster::RemoteEventKind::SessionEnded { .. } => {
                                return;
                            }
                            _ => {}
                        }
                    }
                });
            }
            CallNotice::Ended {
                info,
                history,
                error,
            } => {
                let why = error.as_ref().map(|e| e.to_string());
                self.emit(
                    &info.id,
                    "call_ended",
                    json!({"error": why}),
                    format!(
                        "call ended{}",
                        why.as_ref().map_or(String::new(), |w| format!(": {w}"))
                    ),
                );
                let messages = serde_json::to_value(&history).unwrap_or(Value::Null);
                self.emit(
                    &info.id,
                    "history",
                    json!({"messages": messages}),
                    format!("history: {} messages", history.len()),
                );
            }
            _ => {}
        }
    }

    /// A `turn_latency` line: where the turn's time went.
    fn latency(&self, call: &str, r: &TurnLatency) {
        let part = |v: Option<f64>| v.map_or("-".to_string(), |ms| format!("{ms:.0}"));
        let human = format!(
            "turn {} latency (ms): end of speech→final {}, final→request {}, request→first token {}, first token→speakable {}, speakable→heard {}; end to end {}",
            r.turn.0,
            part(r.speech_end_to_final_ms),
            part(r.final_to_turn_start_ms),
            part(r.turn_start_to_first_token_ms),
            part(r.first_token_to_speakable_ms),
            part(r.speakable_to_heard_ms),
            part(r.end_to_end_ms)
        );
        self.emit(call, "turn_latency", r.to_json(), human);
    }

    fn event(&self, call: &str, turn: u64, kind: &EventKind) {
        let (t, fields, human) = match kind {
            EventKind::UserTranscript {
                text,
                is_final,
                heard,
            } => (
                "user",
                match heard {
                    // Where in the caller's audio, in milliseconds.
                    Some(h) => json!({"text": &**text, "final": is_final,
                        "audio_ms": [h.start * 1000 / u64::from(h.sample_rate.max(1)),
                                     h.end * 1000 / u64::from(h.sample_rate.max(1))]}),
                    None => json!({"text": &**text, "final": is_final}),
                },
                format!("user{}: {text}", if *is_final { "" } else { " (interim)" }),
            ),
            EventKind::TurnStarted => (
                "turn_started",
                json!({"turn": turn}),
                format!("turn {turn} started"),
            ),
            EventKind::Speakable { text, .. } if !text.is_empty() => (
                "speakable",
                json!({"turn": turn, "text": &**text}),
                format!("agent: {text}"),
            ),
            EventKind::PlaybackPaused { heard_chars } => (
                "paused",
                self.heard(turn, *heard_chars),
                format!("PAUSED at character {heard_chars}{}", self.estimate_note()),
            ),
            EventKind::PlaybackResumed { heard_chars } => (
                "resumed",
                self.heard(turn, *heard_chars),
                format!(
                    "RESUMED from character {heard_chars}{}",
                    self.estimate_note()
                ),
            ),
            EventKind::Interrupted { heard_chars } => (
                "cut",
                self.heard(turn, *heard_chars),
                format!(
                    "CUT: the caller heard {heard_chars} characters{}",
                    self.estimate_note()
                ),
            ),
            EventKind::Usage(u) => (
                "usage",
                json!({"turn": turn, "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens}),
                format!(
                    "usage: prompt {}, completion {}",
                    u.prompt_tokens, u.completion_tokens
                ),
            ),
            EventKind::TurnFinished(end) => (
                "turn_finished",
                json!({"turn": turn, "reason": end.label()}),
                format!("turn {turn} finished: {}", end.label()),
            ),
            _ => return,
        };
        self.emit(call, t, fields, human);
    }
}
