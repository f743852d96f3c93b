//! What the run prints: JSON lines, or a human timeline whose spoken words and
//! event lines stay apart; and the committed history at the end.

use std::sync::Mutex;
use std::time::Instant;

use colloquy::context::{ChatContext, ChatItem};
use colloquy_actors::TurnId;
use serde_json::{Value, json};

/// Prints the run: JSON lines, or a human timeline whose spoken words and
/// event lines stay apart.
pub(crate) struct Out {
    pub(crate) json: bool,
    pub(crate) start: Instant,
    /// Timeline only: the turn whose words are on the open line, and whether
    /// an event line interrupted it.
    pub(crate) speaking: Mutex<Option<(TurnId, bool)>>,
}

impl Out {
    pub(crate) fn t_ms(&self) -> f64 {
        (self.start.elapsed().as_secs_f64() * 10_000.0).round() / 10.0
    }

    /// One JSON line: `t_ms`, `type`, then `fields`.
    pub(crate) fn json(&self, kind: &str, fields: Value) {
        if !self.json {
            return;
        }
        let mut line = serde_json::Map::new();
        line.insert("t_ms".into(), json!(self.t_ms()));
        line.insert("type".into(), json!(kind));
        if let Value::Object(fields) = fields {
            line.extend(fields);
        }
        println!("{}", Value::Object(line));
    }

    /// One timeline line.
    pub(crate) fn line(&self, text: &str) {
        if self.json {
            return;
        }
        let mut speaking = lock(&self.speaking);
        if let Some((_, broken @ false)) = speaking.as_mut() {
            println!();
            *broken = true;
        }
        println!("[{:6.2}s] {text}", self.start.elapsed().as_secs_f64());
    }

    /// A piece of the agent's speech, as the speaker plays it.
    pub(crate) fn spoken(&self, turn: TurnId, piece: &str) {
        if self.json {
            return;
        }
        use std::io::Write as _;
        let mut speaking = lock(&self.speaking);
        let prefix = match *speaking {
            Some((t, false)) if t == turn => None,
            Some((t, true)) if t == turn => Some("AGENT (cont.): "),
            Some((_, false)) => {
                println!();
                Some("AGENT: ")
            }
            _ => Some("AGENT: "),
        };
        if let Some(prefix) = prefix {
            print!("[{:6.2}s] {prefix}", self.start.elapsed().as_secs_f64());
        }
        *speaking = Some((turn, false));
        print!(
            "{}",
            if prefix.is_some() {
                piece.trim_start()
            } else {
                piece
            }
        );
        let _ = std::io::stdout().flush();
    }

    /// Ends the open line of speech.
    pub(crate) fn end_speech(&self, suffix: &str) {
        if self.json {
            return;
        }
        let mut speaking = lock(&self.speaking);
        if let Some((_, false)) = *speaking {
            println!("{suffix}");
        }
        *speaking = None;
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn print_history(out: &Out, ctx: &ChatContext) {
    if out.json {
        let messages: Vec<Value> = ctx
            .items
            .iter()
            .filter_map(|item| match item {
                ChatItem::Message(m) => Some(json!({
                    "role": m.role.as_str(),
                    "text": m.text_content(),
                    "interrupted": m.interrupted,
                })),
                _ => None,
            })
            .collect();
        out.json("history", json!({ "messages": messages }));
        return;
    }
    println!("\nHistory committed (what the user actually heard):");
    for item in &ctx.items {
        match item {
            ChatItem::Message(m) => println!(
                "  {:<9} {}{}",
                m.role.as_str(),
                m.text_content(),
                if m.interrupted {
                    "  [interrupted: trimmed to what was played]"
                } else {
                    ""
                }
            ),
            ChatItem::FunctionCall(c) => println!("  call      {}({})", c.name, c.arguments),
            ChatItem::FunctionCallOutput(o) => println!(
                "  output    {}{}",
                o.output,
                if o.is_error { " (error)" } else { "" }
            ),
            _ => {}
        }
    }
}
