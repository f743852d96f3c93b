//! What the driver does with each turn: a fixed plan (finish, or cancel
//! after K tokens) or the soak's random choice from a small seeded PRNG.

/// SplitMix64: a small seeded PRNG, plenty for picking barge-in points.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// What the driver does with one turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Let the reply finish; with `tool`, through a tool round.
    Finish { tool: bool },
    /// Cancel as soon as the turn starts.
    CancelBeforeFirstToken,
    /// Cancel after this many tokens.
    CancelMidStream { after_tokens: usize },
    /// Let the reply finish, report part of it played, then barge in.
    CancelTailSpeech,
    /// Ask for the weather and cancel when the tool call arrives (the tool is
    /// running) or when its result does (the next round is starting).
    CancelToolRound { after_result: bool },
}

pub(crate) const ACTION_LABELS: [&str; 5] = [
    "finish",
    "cancel_before_first_token",
    "cancel_mid_stream",
    "cancel_tail_speech",
    "cancel_tool_round",
];

impl Action {
    pub(crate) fn random(rng: &mut Rng) -> Self {
        match rng.below(5) {
            0 => Action::Finish {
                tool: rng.below(4) == 0,
            },
            1 => Action::CancelBeforeFirstToken,
            2 => Action::CancelMidStream {
                after_tokens: 1 + rng.below(20) as usize,
            },
            3 => Action::CancelTailSpeech,
            _ => Action::CancelToolRound {
                after_result: rng.below(2) == 0,
            },
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Action::Finish { .. } => 0,
            Action::CancelBeforeFirstToken => 1,
            Action::CancelMidStream { .. } => 2,
            Action::CancelTailSpeech => 3,
            Action::CancelToolRound { .. } => 4,
        }
    }

    pub(crate) fn uses_tool(self) -> bool {
        matches!(
            self,
            Action::Finish { tool: true } | Action::CancelToolRound { .. }
        )
    }

    /// Whether the driver cancels while the turn is generating.
    pub(crate) fn cancels_generation(self) -> bool {
        matches!(
            self,
            Action::CancelBeforeFirstToken
                | Action::CancelMidStream { .. }
                | Action::CancelToolRound { .. }
        )
    }
}

/// How a session's turns are chosen.
pub(crate) enum Plan {
    /// Every turn cancelled after this many tokens (0: never).
    Fixed { cancel_after: usize },
    /// The soak: a random action per turn.
    Random(Rng),
}
