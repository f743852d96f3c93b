//! Offline speech-to-text with PocketSphinx (the classic `ps_*` C API of
//! pocketsphinx 5prealpha, with sphinxbase).
//!
//! # Decoders and their pool
//!
//! A decoder (`ps_decoder_t`) holds its own copy of everything it loads — the
//! acoustic model, the 27 MB trigram language model and the 134 000-word
//! dictionary, about 70 MB of heap in all — and takes about half a second to
//! load. 5prealpha has no public way for decoders to share a model (there is
//! no `acmod_copy`, and the language model, though it can be handed to
//! several decoders with `ps_set_lm`, keeps a mutable history cache inside
//! `lm_trie` that scoring writes to, so it cannot be used from two threads
//! at once).
//!
//! So a [`PocketSphinx`] keeps a pool of decoders, loaded once each and
//! reused: a recognition checks one out when speech starts and gives it back
//! when the utterance's final transcript is out, so a hundred calls need only
//! as many decoders as there are people talking at the same moment. The pool
//! never holds more than [`PocketSphinxConfig::max_decoders`]; an utterance
//! that starts when all are busy keeps reading (and buffering) its audio,
//! so its sender is never held up, and is decoded as soon as one is free.
//!
//! # One recognition
//!
//! [`Transcriber::open`] starts a std thread for the stream, fed by a bounded
//! channel of [`RecognizerInput`]: frames before `SpeechStarted` (and after
//! `SpeechEnded`) are ignored; between them the audio is decoded as it comes,
//! with an interim transcript every [`PocketSphinxConfig::interim_every`] of
//! audio when the best hypothesis has changed, and `SpeechEnded` brings the
//! final one (its text possibly empty). Interims are dropped when the
//! transcript channel is full; finals wait for room. The thread ends when the
//! input channel closes (after the final of an utterance still open, which
//! ends with the last frame), or at the next input after the transcripts'
//! receiver is dropped (an open utterance's decoder goes back to the pool).
//! A `SpeechStarted` while an utterance is open ends that one (its final
//! ends with its last frame) and starts another. A frame at a rate other
//! than 16 kHz is skipped, and the first one reported as
//! [`AudioError::UnsupportedRate`].
//!
//! Logging: sphinxbase logs to stderr through process-global state; it is
//! switched off once (`err_set_logfp(NULL)`) rather than with `-logfn`,
//! which reopens that global log file at every decoder's creation.

mod worker;
use worker::*;
mod pool;
use pool::*;
mod decoder;
use decoder::*;
mod ffi;
#[cfg(test)]
mod tests;

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{AudioError, AudioFrame, Recognition, RecognizerInput, Transcriber, Transcript};

/// The engine's name in errors.
const ENGINE: &str = "pocketsphinx";

/// The sample rate of the en-us model.
const SAMPLE_RATE: u32 = 16_000;

/// Where Debian's `pocketsphinx-en-us` puts its model.
pub const DEFAULT_MODEL_DIR: &str = "/usr/share/pocketsphinx/model/en-us";

/// Capacity of a recognition's input channel (frames and events).
pub const INPUT_CAPACITY: usize = 256;

/// Capacity of a recognition's transcript channel.
const TRANSCRIPT_CAPACITY: usize = 64;

/// How PocketSphinx is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PocketSphinxConfig {
    /// The acoustic model directory (`-hmm`).
    pub hmm: PathBuf,
    /// What the decoder expects to hear: an n-gram model or a grammar.
    pub language: LanguageModel,
    /// The pronunciation dictionary (`-dict`).
    pub dict: PathBuf,
    /// More decoder options, as `("-name", "value")` pairs (`-beam`,
    /// `-maxhmmpf`, …); an unknown name fails [`PocketSphinx::new`].
    pub extra_args: Vec<(String, String)>,
    /// How much audio between interim transcripts (`None`: finals only).
    pub interim_every: Option<Duration>,
    /// The most decoders the pool loads (at least 1).
    pub max_decoders: usize,
    /// Take a decoder only once the utterance has ended, and decode its
    /// audio then, at once (no interims). A decoder then serves many calls
    /// in turn instead of one caller at the speed of speech — the way to
    /// run hundreds of calls on a few decoders — and the final costs the
    /// decode of the whole utterance: here about 2 % of its length with a
    /// small vocabulary, about half of it with the dictation model.
    pub decode_at_end: bool,
}

impl PocketSphinxConfig {
    /// The model in `dir`, laid out as `pocketsphinx-en-us` lays it:
    /// `en-us/` (acoustic model), `en-us.lm.bin`, `cmudict-en-us.dict`.
    pub fn with_model_dir(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        Self {
            hmm: dir.join("en-us"),
            language: LanguageModel::Ngram(dir.join("en-us.lm.bin")),
            dict: dir.join("cmudict-en-us.dict"),
            extra_args: Vec::new(),
            interim_every: Some(Duration::from_millis(250)),
            max_decoders: 4,
            decode_at_end: false,
        }
    }
}

/// What a decoder expects to hear.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LanguageModel {
    /// An n-gram model (`-lm`, ARPA or binary): open dictation, the
    /// default (`en-us.lm.bin`, 27 MB, with the 134 000-word dictionary).
    Ngram(PathBuf),
    /// A JSGF grammar (`-jsgf`): only what it allows is heard. With a small
    /// dictionary a decoder is a few MB and decodes many times faster — the
    /// engine for a closed domain (a phone menu, the load generator).
    Grammar(PathBuf),
}

impl LanguageModel {
    /// The file.
    pub fn path(&self) -> &Path {
        match self {
            Self::Ngram(p) | Self::Grammar(p) => p,
        }
    }
}

impl PocketSphinxConfig {
    /// A closed vocabulary: the words of `phrases` in any order and number
    /// (a JSGF word loop), with their pronunciations taken from this
    /// config's dictionary. The grammar and the small dictionary are written
    /// to `dir` (created if missing). Every utterance is still decoded from
    /// its audio; only the words it can be heard as are fewer.
    pub fn with_vocabulary(
        mut self,
        phrases: &[&str],
        dir: impl AsRef<Path>,
    ) -> Result<Self, AudioError> {
        let dir = dir.as_ref();
        let io = |e: std::io::Error| AudioError::engine(ENGINE, format!("{}: {e}", dir.display()));
        let mut words: Vec<String> = phrases
            .iter()
            .flat_map(|p| p.split(|c: char| !c.is_alphanumeric() && c != '\''))
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        words.sort();
        words.dedup();
        if words.is_empty() {
            return Err(AudioError::engine(ENGINE, "an empty vocabulary"));
        }
        let full = std::fs::read_to_string(&self.dict).map_err(io)?;
        let mut dict = String::new();
        let mut missing = Vec::new();
        for w in &words {
            let variant = format!("{w}(");
            let mut found = false;
            for line in full.lines() {
                let head = line.split_whitespace().next().unwrap_or("");
                if head == w || head.starts_with(&variant) {
                    dict.push_str(line);
                    dict.push('\n');
                    found = true;
                }
            }
            if !found {
                missing.push(w.as_str());
            }
        }
        if !missing.is_empty() {
            return Err(AudioError::engine(
                ENGINE,
                format!("not in the dictionary: {}", missing.join(" ")),
            ));
        }
        let grammar = format!(
            "#JSGF V1.0;\ngrammar vocabulary;\npublic <utterance> = ( {} )+;\n",
            words.join(" | ")
        );
        std::fs::create_dir_all(dir).map_err(io)?;
        let (g, d) = (dir.join("vocabulary.jsgf"), dir.join("vocabulary.dict"));
        std::fs::write(&g, grammar).map_err(io)?;
        std::fs::write(&d, dict).map_err(io)?;
        self.language = LanguageModel::Grammar(g);
        self.dict = d;
        Ok(self)
    }
}

impl Default for PocketSphinxConfig {
    fn default() -> Self {
        Self::with_model_dir(DEFAULT_MODEL_DIR)
    }
}

/// PocketSphinx as a [`Transcriber`]: 16 kHz, one decoder pool shared by all
/// its recognitions.
#[derive(Debug, Clone)]
pub struct PocketSphinx {
    pool: Arc<Pool>,
}

impl PocketSphinx {
    /// Loads the model (one decoder, kept in the pool), so a missing or
    /// broken model fails here rather than at the first utterance.
    pub fn new(config: PocketSphinxConfig) -> Result<Self, AudioError> {
        let pool = Arc::new(Pool::new(config));
        let first = pool
            .try_checkout(0)?
            .ok_or_else(|| AudioError::engine(ENGINE, "max_decoders is 0"))?;
        pool.checkin(first);
        Ok(Self { pool })
    }

    /// The model in [`DEFAULT_MODEL_DIR`].
    pub fn en_us() -> Result<Self, AudioError> {
        Self::new(PocketSphinxConfig::default())
    }

    /// Decoders loaded, and how many of them are idle.
    pub fn decoders(&self) -> (usize, usize) {
        let state = self.pool.lock();
        (state.live, state.idle.len())
    }
}

impl Transcriber for PocketSphinx {
    fn name(&self) -> &'static str {
        ENGINE
    }

    fn sample_rate(&self) -> u32 {
        SAMPLE_RATE
    }

    fn open(&self) -> Result<Recognition, AudioError> {
        let (input, input_rx) = mpsc::channel(INPUT_CAPACITY);
        let (transcripts_tx, transcripts) = mpsc::channel(TRANSCRIPT_CAPACITY);
        let config = &self.pool.config;
        let interim_every = (!config.decode_at_end)
            .then_some(config.interim_every)
            .flatten()
            .map(|every| super::duration_to_samples(every, SAMPLE_RATE).max(1));
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let worker = Worker {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            cmn: None,
            pool: self.pool.clone(),
            input: input_rx,
            out: transcripts_tx,
            interim_every,
            decode_at_end: self.pool.config.decode_at_end,
            utterance: None,
            told_bad_rate: false,
        };
        std::thread::Builder::new()
            .name("pocketsphinx".to_owned())
            .spawn(move || {
                yield_to_the_call_path();
                worker.run()
            })
            .map_err(|e| {
                AudioError::engine(ENGINE, format!("cannot start a recognition thread: {e}"))
            })?;
        Ok(Recognition { input, transcripts })
    }
}

/// Decoding is the heaviest work of a call, and the least urgent: a barge-in's
/// `clear`, the playout clock and the frame pacing must never wait behind it
/// for a core. Recognition threads run at a lower scheduling priority (nice
/// +10) than the runtime's; on a machine with cores to spare this changes
/// nothing. (Linux: `nice` applies to the calling thread.)
fn yield_to_the_call_path() {
    unsafe extern "C" {
        fn nice(inc: std::ffi::c_int) -> std::ffi::c_int;
    }
    // SAFETY: `nice` only changes this thread's scheduling priority; its
    // result (the new niceness, or -1 with errno) is not needed.
    unsafe {
        nice(10);
    }
}

// ---------------------------------------------------------------------------
// One recognition stream.
