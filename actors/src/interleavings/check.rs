//! The invariants checked after each interleaving case.

use std::collections::{HashMap, HashSet};

use colloquy::context::{ChatContext, ChatItem, Role};

use super::Script;
use crate::bus::{BusEvent, EventKind, TurnEnd};
use crate::ids::TurnId;

/// The committed history as the OpenAI wire needs it: each run of calls is
/// followed at once by exactly one output per call; no output elsewhere.
fn check_wire(ctx: &ChatContext) -> Result<(), String> {
    let mut seen_calls = HashSet::new();
    let mut i = 0;
    let items = &ctx.items;
    while i < items.len() {
        match &items[i] {
            ChatItem::FunctionCall(_) => {
                let mut run = Vec::new();
                while let Some(ChatItem::FunctionCall(c)) = items.get(i) {
                    if !seen_calls.insert(c.call_id.clone()) {
                        return Err(format!("call {} committed twice", c.call_id));
                    }
                    run.push(c.call_id.clone());
                    i += 1;
                }
                let mut answered = HashSet::new();
                while let Some(ChatItem::FunctionCallOutput(o)) = items.get(i) {
                    if !run.contains(&o.call_id) || !answered.insert(o.call_id.clone()) {
                        return Err(format!(
                            "output {} does not answer the calls before it",
                            o.call_id
                        ));
                    }
                    i += 1;
                }
                if answered.len() != run.len() {
                    return Err(format!("calls {run:?} answered only {answered:?}"));
                }
            }
            ChatItem::FunctionCallOutput(o) => {
                return Err(format!(
                    "output {} without its call right before",
                    o.call_id
                ));
            }
            _ => i += 1,
        }
    }
    Ok(())
}

pub(super) fn check(
    ctx: &ChatContext,
    events: &[BusEvent],
    script: &Script,
    voiced: bool,
) -> Result<(), String> {
    check_wire(ctx)?;
    // And what the client itself would refuse to send.
    colloquy::llm::WireMessage::from_context(ctx, false)
        .map_err(|e| format!("the client refuses the history: {e}"))?;
    // No text committed twice.
    let mut tokens = HashMap::<String, usize>::new();
    for m in ctx.messages().filter(|m| m.role == Role::Assistant) {
        let text = m.text_content();
        for piece in text.split('<').skip(1) {
            // A piece cut at the heard position has no `>`: not a whole token.
            if let Some((n, _)) = piece.split_once('>') {
                *tokens.entry(format!("<{n}>")).or_default() += 1;
            }
        }
    }
    if let Some((t, n)) = tokens.iter().find(|(_, n)| **n > 1) {
        return Err(format!("text {t} committed {n} times"));
    }
    // Events: seq order, one end per turn, nothing after the end.
    let mut last_seq = 0;
    let mut started = Vec::new();
    let mut ended: HashMap<TurnId, TurnEnd> = HashMap::new();
    let mut cut: HashSet<TurnId> = HashSet::new();
    let mut usage: HashMap<TurnId, usize> = HashMap::new();
    let mut provider_usage = HashSet::new();
    let mut speculative = HashSet::new();
    let mut reported = HashSet::new();
    for ev in events {
        if ev.seq <= last_seq {
            return Err(format!("seq {} after {last_seq}", ev.seq));
        }
        last_seq = ev.seq;
        if ev.kind.is_user_side() {
            continue;
        }
        // A turn's report comes once, after the turn (so after a cut too),
        // and names it.
        if let EventKind::TurnLatency(r) = &ev.kind {
            if r.turn != ev.turn || !reported.insert(ev.turn) {
                return Err(format!("report {r:?} stamped {} (or twice)", ev.turn));
            }
            continue;
        }
        if cut.contains(&ev.turn) {
            return Err(format!("{:?} of {} after its cut", ev.kind.name(), ev.turn));
        }
        if let Some(end) = ended.get(&ev.turn) {
            let allowed = !end.is_abort()
                && matches!(
                    ev.kind,
                    EventKind::Speakable { .. }
                        | EventKind::SpeechPlayed { .. }
                        | EventKind::Interrupted { .. }
                        | EventKind::PlaybackPaused { .. }
                        | EventKind::PlaybackResumed { .. }
                );
            if !allowed {
                return Err(format!(
                    "{:?} of {} after TurnFinished({end:?})",
                    ev.kind.name(),
                    ev.turn
                ));
            }
        }
        match &ev.kind {
            EventKind::TurnStarted => {
                if started.last().is_some_and(|t| *t >= ev.turn) {
                    return Err(format!("turn {} started out of order", ev.turn));
                }
                started.push(ev.turn);
            }
            EventKind::TurnFinished(end) => {
                ended.insert(ev.turn, end.clone());
                if end.is_abort() {
                    cut.insert(ev.turn);
                }
            }
            EventKind::Interrupted { .. } => {
                cut.insert(ev.turn);
            }
            EventKind::SpeculationEnded { outcome, usage: u } => {
                if *outcome == crate::bus::SpeculationOutcome::Hit {
                    continue;
                }
                // Nothing of a discarded speculation may have been published.
                if events.iter().any(|e| {
                    e.turn == ev.turn
                        && !e.kind.is_user_side()
                        && !matches!(e.kind, EventKind::SpeculationEnded { .. })
                }) {
                    return Err(format!(
                        "discarded speculation {} published events",
                        ev.turn
                    ));
                }
                if u.is_some() {
                    *usage.entry(ev.turn).or_default() += 1;
                }
                speculative.insert(ev.turn);
            }
            EventKind::ProviderFailed(f) if f.usage.is_some() => {
                *usage.entry(ev.turn).or_default() += 1;
            }
            EventKind::Usage(u) => {
                *usage.entry(ev.turn).or_default() += 1;
                if !u.estimated && !provider_usage.insert(u.prompt_tokens) {
                    return Err(format!("provider usage {} reported twice", u.prompt_tokens));
                }
            }
            _ => {}
        }
    }
    for t in &started {
        if !ended.contains_key(t) {
            return Err(format!("turn {t} never ended"));
        }
    }
    // Requests sent: a stream polled sent its first request (accounted by the
    // round task right before), plus each further one it announced; a stream
    // never polled sent nothing.
    let sent = |t: &TurnId| -> usize {
        script
            .requests
            .iter()
            .filter(|r| r.turn == *t && r.polled.load(std::sync::atomic::Ordering::SeqCst))
            .map(|r| 1 + r.more.load(std::sync::atomic::Ordering::SeqCst))
            .sum()
    };
    // A discarded speculation reports the cost of its requests once.
    for t in &speculative {
        let n = usage.get(t).copied().unwrap_or(0);
        if n != sent(t).min(1) {
            return Err(format!(
                "speculation {t}: {n} usage reports for {} requests sent",
                sent(t)
            ));
        }
    }
    // Usage: exactly one report per request sent (the provider's, or an
    // estimate when it never reported: a cut, a hedge still racing).
    for t in &started {
        let n = usage.get(t).copied().unwrap_or(0);
        if n != sent(t) {
            return Err(format!(
                "turn {t}: {n} usage reports for {} requests sent",
                sent(t)
            ));
        }
    }
    // Segments: a turn's `Speakable`s are its text, in order, never repeated
    // (all of it unless the turn was cut), with one `last` for a turn that
    // ended normally.
    for t in &started {
        let text: String = events
            .iter()
            .filter(|e| e.turn == *t)
            .filter_map(|e| match &e.kind {
                EventKind::Token(x) => Some(&**x),
                _ => None,
            })
            .collect();
        let spoken: String = events
            .iter()
            .filter(|e| e.turn == *t)
            .filter_map(|e| match &e.kind {
                EventKind::Speakable { text, .. } => Some(&**text),
                _ => None,
            })
            .collect();
        let lasts = events
            .iter()
            .filter(|e| e.turn == *t && matches!(e.kind, EventKind::Speakable { last: true, .. }))
            .count();
        let normal = ended.get(t).is_some_and(|e| !e.is_abort());
        let complete = if voiced {
            spoken == text && lasts == 1
        } else {
            spoken.is_empty() && lasts == 0
        };
        if !text.starts_with(&spoken) || (normal && !complete) {
            return Err(format!(
                "turn {t}: spoken {spoken:?} ({lasts} last) for text {text:?}"
            ));
        }
    }
    // User events name the last turn subscribers saw start, never a
    // speculation still held.
    let mut seen = TurnId(0);
    for ev in events {
        match ev.kind {
            EventKind::TurnStarted => seen = ev.turn,
            _ if ev.kind.is_user_side() && ev.turn != seen => {
                return Err(format!(
                    "{} names turn {}, subscribers saw {seen} start",
                    ev.kind.name(),
                    ev.turn
                ));
            }
            _ => {}
        }
    }
    Ok(())
}
