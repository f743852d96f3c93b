//! Turn-taking: when the user's voice pauses, cuts or leaves the agent alone.
//!
//! A voice agent that stops for every sound is as bad as one that never stops.
//! In [`InterruptionMode::Confirmed`] (the default) the agent *pauses* when the
//! user's speech has lasted [`InterruptionPolicy::min_pause`] — a cough or a
//! door shorter than that never makes it falter — and generation keeps
//! streaming into the turn meanwhile, so nothing is lost or regenerated. The
//! pause becomes a **cut** once the interruption is confirmed by what the user
//! said, and a **resume** (from the exact played position) when it was not:
//!
//! | what arrives while the agent speaks or is paused | decision |
//! | --- | --- |
//! | an interim with ≥ `min_words` words that are not backchannels | cut now |
//! | an interim with ≥ 1 such word once the speech lasted `min_confirm_speech` | cut now |
//! | a final with ≥ 1 such word | cut; it becomes the user's turn |
//! | a final that is empty or backchannels only ("uh-huh", "thank you") | published as [`Backchannel`](crate::bus::EventKind::Backchannel), not a turn; resume at once |
//! | speech ended and no transcript pending within `resume_timeout` | resume |
//!
//! An interim marks a transcript as pending: the agent never resumes while one
//! is, whatever the timeout — only its final decides. When the agent is not
//! speaking, every final transcript starts a turn, as in immediate mode.
//!
//! The rules live in the session's turn ledger and run under its lock, so a
//! pause, a resume and a cut are each one critical section with the events
//! they publish; `Listening` is the pure part (state and decisions, unit
//! tested here), and a per-session timer task supplies only the time.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the user's voice interrupts the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InterruptionMode {
    /// Any voice activity cuts the reply at once (within microseconds).
    Immediate,
    /// Speech pauses the reply; what the user says confirms a cut or resumes
    /// it (see the module docs).
    Confirmed,
    /// Voice activity never interrupts (new user messages still may, per
    /// [`InterruptionPolicy::cancel_on_user_message`]).
    Off,
}

/// Words and phrases that acknowledge without taking the turn.
#[derive(Clone, PartialEq, Eq)]
pub struct Backchannels {
    phrases: Arc<HashSet<Vec<String>>>,
    longest: usize,
}

impl std::fmt::Debug for Backchannels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Backchannels({} phrases)", self.phrases.len())
    }
}

/// English backchannels: acknowledgements, fillers and thanks.
pub const ENGLISH_BACKCHANNELS: &[&str] = &[
    "uh-huh",
    "uh huh",
    "mm-hmm",
    "mm hmm",
    "mhm",
    "mm",
    "hmm",
    "hm",
    "uh",
    "um",
    "ah",
    "oh",
    "yeah",
    "yes",
    "yep",
    "yup",
    "ok",
    "okay",
    "alright",
    "all right",
    "right",
    "sure",
    "i see",
    "got it",
    "gotcha",
    "cool",
    "nice",
    "great",
    "wow",
    "really",
    "true",
    "exactly",
    "indeed",
    "thank you",
    "thanks",
    "makes sense",
    "sounds good",
    "go on",
    "i know",
];

/// Lower-cases and splits into words, dropping punctuation (apostrophes and
/// hyphens inside words are kept, so "uh-huh" and "don't" stay one word).
pub fn normalize_words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '-'))
        .map(|w| w.trim_matches(|c| c == '\'' || c == '-').to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

impl Backchannels {
    /// A list of phrases (one or more words each).
    pub fn new<S: AsRef<str>>(phrases: impl IntoIterator<Item = S>) -> Self {
        let phrases: HashSet<Vec<String>> = phrases
            .into_iter()
            .map(|p| normalize_words(p.as_ref()))
            .filter(|p| !p.is_empty())
            .collect();
        let longest = phrases.iter().map(Vec::len).max().unwrap_or(0);
        Self {
            phrases: Arc::new(phrases),
            longest,
        }
    }

    /// [`ENGLISH_BACKCHANNELS`].
    pub fn english() -> Self {
        Self::new(ENGLISH_BACKCHANNELS)
    }

    /// Words of `text` that are not part of a backchannel phrase (longest
    /// phrase first at each position).
    pub fn substantive_words(&self, text: &str) -> usize {
        let words = normalize_words(text);
        let mut i = 0;
        let mut count = 0;
        'outer: while i < words.len() {
            for len in (1..=self.longest.min(words.len() - i)).rev() {
                if self.phrases.contains(&words[i..i + len]) {
                    i += len;
                    continue 'outer;
                }
            }
            count += 1;
            i += 1;
        }
        count
    }
}

impl Default for Backchannels {
    fn default() -> Self {
        Self::english()
    }
}

/// When the user's voice interrupts the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterruptionPolicy {
    /// How voice activity interrupts.
    pub mode: InterruptionMode,
    /// Cancel the turn in flight when a new user message arrives; when false the
    /// message waits until the turn ends, then gets its own turn.
    pub cancel_on_user_message: bool,
    /// Confirmed mode: speech must last this long before the agent pauses
    /// (0: at onset). Shorter sounds never pause it.
    pub min_pause: Duration,
    /// Confirmed mode: words (not backchannels) in an interim transcript that
    /// confirm the interruption.
    pub min_words: usize,
    /// Confirmed mode: once the speech has lasted this long, one word that is
    /// not a backchannel confirms.
    pub min_confirm_speech: Duration,
    /// Confirmed mode: after the speech ends with no transcript pending, the
    /// agent resumes this much later.
    pub resume_timeout: Duration,
    /// What counts as a backchannel.
    pub backchannels: Backchannels,
}

impl Default for InterruptionPolicy {
    /// Confirmed mode; pause after 200 ms of speech (about a human's reaction
    /// time, and longer than most coughs and clicks); confirm on 2 words, or
    /// on 1 word after 800 ms of speech; resume 500 ms after the speech ended
    /// with no transcript pending; English backchannels.
    fn default() -> Self {
        Self {
            mode: InterruptionMode::Confirmed,
            cancel_on_user_message: true,
            min_pause: Duration::from_millis(200),
            min_words: 2,
            min_confirm_speech: Duration::from_millis(800),
            resume_timeout: Duration::from_millis(500),
            backchannels: Backchannels::english(),
        }
    }
}

impl InterruptionPolicy {
    /// Today's fastest barge-in: any voice activity cuts at once.
    pub fn immediate() -> Self {
        Self {
            mode: InterruptionMode::Immediate,
            ..Self::default()
        }
    }
}

/// What the ledger should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    Nothing,
    Pause,
    Cut,
    Resume,
    /// A final transcript that does not take the turn: publish it as a
    /// backchannel (and resume if paused).
    Backchannel,
}

/// The user's side of the conversation, as far as interruptions go.
#[derive(Debug, Default)]
pub(crate) struct Listening {
    speaking_since: Option<Instant>,
    pending_transcript: bool,
    pause_at: Option<Instant>,
    resume_at: Option<Instant>,
}

impl Listening {
    /// The next moment a timer must call [`Listening::timer`].
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match (self.pause_at, self.resume_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn speech_started(
        &mut self,
        now: Instant,
        policy: &InterruptionPolicy,
        active: bool,
    ) -> Decision {
        self.speaking_since = Some(now);
        self.resume_at = None;
        match policy.mode {
            InterruptionMode::Immediate => Decision::Cut,
            InterruptionMode::Off => Decision::Nothing,
            InterruptionMode::Confirmed if !active => Decision::Nothing,
            InterruptionMode::Confirmed if policy.min_pause.is_zero() => Decision::Pause,
            InterruptionMode::Confirmed => {
                self.pause_at = Some(now + policy.min_pause);
                Decision::Nothing
            }
        }
    }

    pub(crate) fn speech_ended(
        &mut self,
        now: Instant,
        policy: &InterruptionPolicy,
        paused: bool,
    ) -> Decision {
        self.speaking_since = None;
        self.pause_at = None;
        if paused && !self.pending_transcript {
            self.resume_at = Some(now + policy.resume_timeout);
        }
        Decision::Nothing
    }

    pub(crate) fn transcript(
        &mut self,
        text: &str,
        is_final: bool,
        now: Instant,
        policy: &InterruptionPolicy,
        active: bool,
        paused: bool,
    ) -> Decision {
        self.pending_transcript = !is_final;
        self.resume_at = None;
        if is_final {
            self.pause_at = None;
        }
        if policy.mode != InterruptionMode::Confirmed || !(active || paused) {
            return Decision::Nothing;
        }
        let words = policy.backchannels.substantive_words(text);
        if is_final {
            return if words == 0 {
                Decision::Backchannel
            } else {
                Decision::Cut
            };
        }
        let long = self
            .speaking_since
            .is_some_and(|since| now.duration_since(since) >= policy.min_confirm_speech);
        if words >= policy.min_words.max(1) || (words >= 1 && long) {
            Decision::Cut
        } else {
            Decision::Nothing
        }
    }

    pub(crate) fn timer(&mut self, now: Instant, active: bool, paused: bool) -> Decision {
        if self.pause_at.is_some_and(|t| t <= now) {
            self.pause_at = None;
            if self.speaking_since.is_some() && active && !paused {
                return Decision::Pause;
            }
        }
        if self.resume_at.is_some_and(|t| t <= now) {
            self.resume_at = None;
            if paused && !self.pending_transcript && self.speaking_since.is_none() {
                return Decision::Resume;
            }
        }
        Decision::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backchannels_are_matched_as_phrases() {
        let b = Backchannels::english();
        assert_eq!(b.substantive_words("Uh-huh."), 0);
        assert_eq!(b.substantive_words("Thank you!"), 0);
        assert_eq!(b.substantive_words("yeah, makes sense"), 0);
        assert_eq!(b.substantive_words("wait stop"), 2);
        assert_eq!(b.substantive_words("Okay, but what about Rome?"), 4);
        assert_eq!(b.substantive_words(""), 0);
        assert_eq!(b.substantive_words("I see you"), 1);
    }

    #[test]
    fn a_short_sound_never_pauses_and_a_long_one_does() {
        let p = InterruptionPolicy::default();
        let t0 = Instant::now();
        let mut l = Listening::default();
        assert_eq!(l.speech_started(t0, &p, true), Decision::Nothing);
        assert_eq!(l.next_deadline(), Some(t0 + ms(200)));
        assert_eq!(l.speech_ended(t0 + ms(150), &p, false), Decision::Nothing);
        assert_eq!(l.next_deadline(), None, "a cough shorter than min_pause");
        l.speech_started(t0 + ms(1000), &p, true);
        assert_eq!(l.timer(t0 + ms(1200), true, false), Decision::Pause);
    }

    #[test]
    fn no_transcript_resumes_after_the_timeout_but_a_pending_one_never_does() {
        let p = InterruptionPolicy::default();
        let t0 = Instant::now();
        let mut l = Listening::default();
        l.speech_started(t0, &p, true);
        l.timer(t0 + ms(200), true, false);
        l.speech_ended(t0 + ms(700), &p, true);
        assert_eq!(l.next_deadline(), Some(t0 + ms(1200)));
        assert_eq!(l.timer(t0 + ms(1200), true, true), Decision::Resume);

        let mut l = Listening::default();
        l.speech_started(t0, &p, true);
        assert_eq!(
            l.transcript("what", false, t0 + ms(300), &p, true, true),
            Decision::Nothing
        );
        l.speech_ended(t0 + ms(700), &p, true);
        assert_eq!(
            l.next_deadline(),
            None,
            "an interim is pending: no resume timer"
        );
        assert_eq!(l.timer(t0 + ms(5000), true, true), Decision::Nothing);
        assert_eq!(
            l.transcript("uh-huh", true, t0 + ms(900), &p, true, true),
            Decision::Backchannel
        );
    }

    #[test]
    fn words_confirm_the_interruption() {
        let p = InterruptionPolicy::default();
        let t0 = Instant::now();
        let mut l = Listening::default();
        l.speech_started(t0, &p, true);
        assert_eq!(
            l.transcript("wait stop", false, t0 + ms(100), &p, true, false),
            Decision::Cut,
            "a confirming transcript cuts whatever the duration"
        );
        let mut l = Listening::default();
        l.speech_started(t0, &p, true);
        assert_eq!(
            l.transcript("no", false, t0 + ms(300), &p, true, true),
            Decision::Nothing
        );
        assert_eq!(
            l.transcript("no", false, t0 + ms(900), &p, true, true),
            Decision::Cut,
            "one word after a long enough speech"
        );
        assert_eq!(
            l.transcript("No.", true, t0 + ms(900), &p, true, true),
            Decision::Cut
        );
        // When the agent is quiet, transcripts are ordinary user input.
        let mut l = Listening::default();
        assert_eq!(
            l.transcript("uh-huh", true, t0, &p, false, false),
            Decision::Nothing
        );
    }

    #[test]
    fn immediate_mode_cuts_at_onset() {
        let p = InterruptionPolicy::immediate();
        let mut l = Listening::default();
        assert_eq!(l.speech_started(Instant::now(), &p, false), Decision::Cut);
    }
}
