//! A tracked reply's state on the wire: the `ok` of a `reply` request (and
//! of nothing else). Why its own shape and not events: a reply's state is
//! asked for by the one client that holds its id, so it travels as a reply
//! to that client's request — nothing is broadcast to the session's
//! subscribers, no permission is needed beyond answering a request, and no
//! seq number is taken from the session's order.
//!
//! `{"state": "queued"}`, `{"state": "started", "turn": int}`,
//! `{"state": "committed" | "done", "turn": int, "end": {…turn_finished
//! payload…}, "interrupted": bool, "items": [ChatItem…]}` (`items` empty and
//! `"items_omitted": true` when they do not fit in one message), or
//! `{"state": "dropped"}`. Turns are the wire's (global across owners).

use colloquy::context::ChatItem;
use serde_json::{Value, json};

use super::decode::turn_end_of;
use super::encode::end_payload;
use crate::ids::TurnId;
use crate::reply::{Reply, ReplyState};

/// The label of a state (`queued`, `started`, `committed`, `done`, `dropped`).
pub(crate) fn state_label(state: &ReplyState) -> &'static str {
    // Wildcard: states added later read as queued until they are mapped.
    #[allow(unreachable_patterns)]
    match state {
        ReplyState::Queued => "queued",
        ReplyState::Started(_) => "started",
        ReplyState::Committed(_) => "committed",
        ReplyState::Done(_) => "done",
        ReplyState::Dropped => "dropped",
        _ => "queued",
    }
}

/// Encodes a local state, its turn moved up by `turn_base`; without the
/// items when the whole is over `max_bytes`.
pub(crate) fn encode_reply_state(state: &ReplyState, turn_base: u64, max_bytes: usize) -> Value {
    let label = state_label(state);
    match state {
        ReplyState::Started(t) => json!({"state": label, "turn": turn_base + t.0}),
        ReplyState::Committed(r) | ReplyState::Done(r) => {
            let mut v = json!({
                "state": label,
                "turn": turn_base + r.turn.0,
                "end": end_payload(&r.end),
                "interrupted": r.interrupted,
                "items": r.items,
            });
            if v.to_string().len() > max_bytes {
                v["items"] = json!([]);
                v["items_omitted"] = json!(true);
            }
            v
        }
        _ => json!({"state": label}),
    }
}

/// Decodes a state written by [`encode_reply_state`].
pub(crate) fn decode_reply_state(v: &Value) -> Result<ReplyState, String> {
    let turn = || {
        v.get("turn")
            .and_then(Value::as_u64)
            .map(TurnId)
            .ok_or_else(|| format!("a reply state without a turn: {v}"))
    };
    let reply = || -> Result<Reply, String> {
        let end =
            turn_end_of(v.get("end").cloned().unwrap_or(Value::Null)).map_err(|e| e.to_string())?;
        let items: Vec<ChatItem> =
            serde_json::from_value(v.get("items").cloned().unwrap_or_else(|| json!([])))
                .map_err(|e| e.to_string())?;
        Ok(Reply {
            turn: turn()?,
            end,
            items,
            interrupted: v
                .get("interrupted")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    };
    match v.get("state").and_then(Value::as_str) {
        Some("queued") => Ok(ReplyState::Queued),
        Some("started") => Ok(ReplyState::Started(turn()?)),
        Some("committed") => Ok(ReplyState::Committed(reply()?)),
        Some("done") => Ok(ReplyState::Done(reply()?)),
        Some("dropped") => Ok(ReplyState::Dropped),
        _ => Err(format!("not a reply state: {v}")),
    }
}
