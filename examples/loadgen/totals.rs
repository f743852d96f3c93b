//! The figures one session's driver collects, summed over the sessions: turns,
//! tokens, errors by kind, latencies, the soak's and the provider chain's counts.

use std::collections::{BTreeMap, HashMap};

#[derive(Default)]
pub(crate) struct Totals {
    pub(crate) turns: u64,
    pub(crate) tokens: u64,
    pub(crate) errors: u64,
    /// Errors by cause (`http_401`, `connection`, `event_timeout`…), each
    /// with the first message seen.
    pub(crate) errors_by_kind: BTreeMap<String, (u64, String)>,
    pub(crate) cancels: u64,
    pub(crate) stale: u64,
    pub(crate) ttft_us: Vec<u64>,
    pub(crate) cancel_us: Vec<u64>,
    pub(crate) speaker_cancel_us: Vec<u64>,
    pub(crate) actions: [u64; 5],
    /// Cancels planned mid-generation that the turn's end beat.
    pub(crate) cancel_not_reached: u64,
    pub(crate) tool_results: u64,
    pub(crate) interrupts: u64,
    pub(crate) interrupt_us: Vec<u64>,
    /// Confirmed mode: speech started → `PlaybackPaused` in the driving task.
    pub(crate) pause_us: Vec<u64>,
    /// `Interrupted { heard_chars }` that disagreed with the reported playback.
    pub(crate) heard_mismatches: u64,
    pub(crate) orphan_calls: u64,
    pub(crate) chain: ChainTotals,
}

/// What the provider chain did, over all turns.
#[derive(Default)]
pub(crate) struct ChainTotals {
    pub(crate) fallbacks: u64,
    pub(crate) hedges_won: u64,
    pub(crate) hedge_cost_tokens: u64,
    pub(crate) duplicated_chars: u64,
    pub(crate) failures: HashMap<&'static str, u64>,
}

impl ChainTotals {
    pub(crate) fn add(&mut self, o: ChainTotals) {
        self.fallbacks += o.fallbacks;
        self.hedges_won += o.hedges_won;
        self.hedge_cost_tokens += o.hedge_cost_tokens;
        self.duplicated_chars += o.duplicated_chars;
        for (reason, n) in o.failures {
            *self.failures.entry(reason).or_default() += n;
        }
    }
}

/// Characters of `after` (text published after a mid-stream failure) that
/// restate `before` (what the turn had published): the longest run of whole
/// words at its start that appears, word for word, in `before`.
pub(crate) fn duplicated_chars(before: &str, after: &str) -> usize {
    let b: Vec<&str> = before.split_whitespace().collect();
    let a: Vec<&str> = after.split_whitespace().take(200).collect();
    (1..=a.len().min(b.len()))
        .rev()
        .find(|&k| b.windows(k).any(|w| w == &a[..k]))
        .map_or(0, |k| a[..k].join(" ").chars().count())
}

impl Totals {
    /// One error of `kind`.
    pub(crate) fn error(&mut self, kind: &str, message: impl FnOnce() -> String) {
        self.errors += 1;
        self.errors_by_kind
            .entry(kind.to_string())
            .or_insert_with(|| (0, message()))
            .0 += 1;
    }

    pub(crate) fn add(&mut self, o: Totals) {
        self.turns += o.turns;
        self.tokens += o.tokens;
        self.errors += o.errors;
        for (kind, (n, message)) in o.errors_by_kind {
            self.errors_by_kind.entry(kind).or_insert((0, message)).0 += n;
        }
        self.cancels += o.cancels;
        self.stale += o.stale;
        self.ttft_us.extend(o.ttft_us);
        self.cancel_us.extend(o.cancel_us);
        self.speaker_cancel_us.extend(o.speaker_cancel_us);
        for (a, b) in self.actions.iter_mut().zip(o.actions) {
            *a += b;
        }
        self.cancel_not_reached += o.cancel_not_reached;
        self.tool_results += o.tool_results;
        self.interrupts += o.interrupts;
        self.interrupt_us.extend(o.interrupt_us);
        self.pause_us.extend(o.pause_us);
        self.heard_mismatches += o.heard_mismatches;
        self.orphan_calls += o.orphan_calls;
        self.chain.add(o.chain);
    }
}
