//! The user's side: a scenario file (speech-recognition events at fixed times,
//! the interruption policy, the simulated TTS speed), checked key by key, and
//! the driver that plays it into the session.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use colloquy_actors::speech::SttEvent;
use colloquy_actors::turn_taking::InterruptionMode;
use colloquy_actors::{InterruptionPolicy, SessionHandle};
use serde_json::Value;

use crate::observer::Marks;
use crate::output::lock;

/// One step of the user's side.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    Stt(SttEvent),
    End,
}

pub(crate) struct Scenario {
    pub(crate) policy: InterruptionPolicy,
    pub(crate) preemptive: bool,
    pub(crate) tts_chars_per_s: f64,
    /// In time order (ties in file order).
    pub(crate) events: Vec<(u64, Action)>,
}

pub(crate) const DEFAULT_TTS_CHARS_PER_S: f64 = 16.0;

/// The keys of a JSON object, each known; `what` names the object in errors.
pub(crate) fn object<'a>(
    v: &'a Value,
    what: &str,
    known: &[&str],
) -> Result<&'a serde_json::Map<String, Value>, String> {
    let Value::Object(map) = v else {
        return Err(format!("{what} must be a JSON object, got {v}"));
    };
    if let Some(key) = map.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!(
            "unknown key \"{key}\" in {what} (known keys: {})",
            known.join(", ")
        ));
    }
    Ok(map)
}

/// A field's value (`None` when absent or null); `path` names it in errors.
pub(crate) fn field<T: serde::de::DeserializeOwned>(
    map: &serde_json::Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<T>, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| format!("\"{path}\": {e}")),
    }
}

/// Times in a scenario: up to a day.
pub(crate) const MAX_MS: u64 = 86_400_000;

/// A field of milliseconds (at most [`MAX_MS`]).
pub(crate) fn millis(
    map: &serde_json::Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<u64>, String> {
    match field::<u64>(map, key, path)? {
        Some(ms) if ms > MAX_MS => Err(format!(
            "\"{path}\" must be at most {MAX_MS} (a day), got {ms}"
        )),
        other => Ok(other),
    }
}

pub(crate) fn parse_scenario(text: &str) -> Result<Scenario, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let top = object(
        &value,
        "the scenario",
        &["interruption", "preemptive", "tts_chars_per_s", "events"],
    )?;
    let mut policy = InterruptionPolicy::default();
    if let Some(spec) = top.get("interruption").filter(|v| !v.is_null()) {
        let spec = object(
            spec,
            "\"interruption\"",
            &["mode", "min_words", "min_pause_ms", "resume_timeout_ms"],
        )?;
        match field::<String>(spec, "mode", "interruption.mode")?.as_deref() {
            None => {}
            Some("immediate") => policy.mode = InterruptionMode::Immediate,
            Some("confirmed") => policy.mode = InterruptionMode::Confirmed,
            Some(other) => {
                return Err(format!(
                    "\"interruption.mode\" must be \"immediate\" or \"confirmed\", got \"{other}\""
                ));
            }
        }
        if let Some(n) = field(spec, "min_words", "interruption.min_words")? {
            policy.min_words = n;
        }
        if let Some(ms) = millis(spec, "min_pause_ms", "interruption.min_pause_ms")? {
            policy.min_pause = Duration::from_millis(ms);
        }
        if let Some(ms) = millis(spec, "resume_timeout_ms", "interruption.resume_timeout_ms")? {
            policy.resume_timeout = Duration::from_millis(ms);
        }
    }
    let preemptive = field::<bool>(top, "preemptive", "preemptive")?.unwrap_or(false);
    let tts_chars_per_s =
        field::<f64>(top, "tts_chars_per_s", "tts_chars_per_s")?.unwrap_or(DEFAULT_TTS_CHARS_PER_S);
    if !(tts_chars_per_s.is_finite() && tts_chars_per_s > 0.0) {
        return Err(format!(
            "\"tts_chars_per_s\" must be a positive number of characters per second, got {tts_chars_per_s}"
        ));
    }
    let listed: Vec<Value> = field(top, "events", "events")?.unwrap_or_default();
    let mut events = Vec::with_capacity(listed.len());
    for (i, e) in listed.iter().enumerate() {
        let what = format!("events[{i}]");
        let e = object(
            e,
            &what,
            &[
                "at_ms",
                "speech_started",
                "speech_ended",
                "interim",
                "final",
                "end",
            ],
        )?;
        let Some(at_ms) = millis(e, "at_ms", &format!("{what}.at_ms"))? else {
            return Err(format!(
                "{what} needs \"at_ms\" (milliseconds from the start)"
            ));
        };
        let mut actions = Vec::new();
        for (key, action) in [
            ("speech_started", Action::Stt(SttEvent::SpeechStarted)),
            ("speech_ended", Action::Stt(SttEvent::SpeechEnded)),
            ("end", Action::End),
        ] {
            match field::<bool>(e, key, &format!("{what}.{key}"))? {
                None => {}
                Some(true) => actions.push((key, action)),
                Some(false) => return Err(format!("\"{what}.{key}\" must be true")),
            }
        }
        if let Some(t) = field::<String>(e, "interim", &format!("{what}.interim"))? {
            actions.push(("interim", Action::Stt(SttEvent::Interim(t))));
        }
        if let Some(t) = field::<String>(e, "final", &format!("{what}.final"))? {
            actions.push(("final", Action::Stt(SttEvent::Final(t))));
        }
        match actions.len() {
            1 => events.push((at_ms, actions.remove(0).1)),
            0 => {
                return Err(format!(
                    "{what} needs one of \"speech_started\", \"speech_ended\", \"interim\", \"final\", \"end\""
                ));
            }
            _ => {
                let names: Vec<&str> = actions.into_iter().map(|(n, _)| n).collect();
                return Err(format!(
                    "{what}: one action per event, found {}",
                    names.join(", ")
                ));
            }
        }
    }
    events.sort_by_key(|(at, _)| *at);
    Ok(Scenario {
        policy,
        preemptive,
        tts_chars_per_s,
        events,
    })
}

/// Plays the user's side of the scenario; returns the seq of the last event
/// published and whether the script ended with `end`.
pub(crate) async fn drive(
    session: SessionHandle,
    events: Vec<(u64, Action)>,
    start: Instant,
    marks: Arc<Mutex<Marks>>,
) -> (u64, bool) {
    let mut last_seq = 0;
    for (at_ms, action) in events {
        tokio::time::sleep_until((start + Duration::from_millis(at_ms)).into()).await;
        let event = match action {
            Action::End => return (last_seq, true),
            Action::Stt(e) => e,
        };
        let now = Instant::now();
        {
            let mut m = lock(&marks);
            match event {
                SttEvent::SpeechStarted => m.speech_started = Some(now),
                SttEvent::SpeechEnded => m.speech_ended = Some(now),
                _ => {}
            }
            m.last_stt = Some((now, event.clone()));
        }
        last_seq = session.stt(event).max(last_seq);
    }
    (last_seq, false)
}
