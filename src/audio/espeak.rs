//! Offline text-to-speech with espeak-ng (the `libespeak-ng` C library).
//!
//! espeak-ng keeps all of its state in globals and is not thread-safe, so one
//! dedicated std thread owns it for the whole process: it is started the first
//! time an [`Espeak`] is built, initialised once in synchronous retrieval mode,
//! and serves every [`Espeak`] (whatever its voice) from a queue, one text at a
//! time. Voice, rate and pitch are global in espeak, so they are set on that
//! thread before each text.
//!
//! # What a synthesis yields
//!
//! [`SynthEvent::Audio`] chunks of 22050 Hz mono PCM as espeak produces them
//! (about 50 ms each; the first comes once espeak has translated the first
//! clause, long before the whole text is done), and [`SynthEvent::Mark`]s:
//!
//! - A mark is emitted only *after* the audio it refers to: when a mark says
//!   `sample`, every sample before it has already been sent.
//! - Marks never go back: `chars` strictly increases between word marks,
//!   `sample` never decreases; the final mark may repeat the `chars` of the
//!   mark before it.
//! - A word mark's `chars` always ends on a word: the character before it is
//!   a letter or digit and the one after it (if any) is not, so trailing
//!   punctuation and spaces are left to the next mark. The stream ends with a
//!   mark for the whole text (`text.chars().count()`) at the utterance's last
//!   sample.
//!
//! espeak reports a *start* for each word (`espeakEVENT_WORD`) and an end
//! for each clause (`espeakEVENT_END`), each with `text_position` (1-based,
//! counted in characters — Unicode scalar values — for UTF-8 text, not
//! bytes) and `sample`: despite the header's "internal use", the number of
//! samples of this utterance before the event (espeak resets it for each
//! `espeak_Synth`; `audio_position` is the same instant in ms). Each event
//! comes with the chunk its sample falls in. A
//! word is taken as spoken where the next word (or its clause's end) begins,
//! moved back over the digital silence before it (a comma's pause belongs to
//! the word it follows: once the pause starts, the word has been heard). Its
//! `chars` is the last end of a word in the text before the next word's
//! start. espeak's own word `length` is not used: it is wrong for several
//! kinds of words (0 for "naïve" before a dash, 3 for "don't", 1 for
//! "U.S.A.", and it covers the whole of "123" at the first of the three words
//! espeak says for it), while the next word's start is right in each of those
//! cases, and never claims a word before it has been said.
//!
//! # Trailing silence
//!
//! By default the text's final sentence pause is not synthesized
//! (`espeakENDPAUSE` unset): the utterance ends a few milliseconds after its
//! last word, so the final mark — "the whole text has been heard" — is not
//! held back by ~300 ms of silence, and the speaker that strings sentences
//! together decides the gaps. [`EspeakConfig::end_pause`] turns it on.
//!
//! Dropping the stream stops the synthesis at espeak's next chunk (the
//! callback tells espeak to abort); a text still waiting in the queue is then
//! skipped.

mod utterance;
use utterance::*;
mod ffi;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::{CStr, CString, c_int, c_short, c_void};
use std::sync::{OnceLock, mpsc as std_mpsc};

use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use tokio::sync::mpsc;

use super::{AudioError, SynthEvent, Synthesizer};

/// The engine's name in errors.
const ENGINE: &str = "espeak-ng";

/// Length of the buffers espeak hands to the callback, in ms.
const BUFFER_MS: c_int = 50;

/// A sample this close to zero is silence (−60 dBFS); espeak's pauses are
/// exact zeros.
const SILENCE_LEVEL: i16 = 32;

/// The shortest silence taken for a pause between words, in ms.
const MIN_PAUSE_MS: u32 = 100;

/// How far before its word event the next word's sound may begin, in ms.
const MAX_EARLY_ONSET_MS: u32 = 25;

/// Lowest and highest rate espeak accepts, words per minute
/// (`espeakRATE_MINIMUM`, `espeakRATE_MAXIMUM`).
pub const RATE_RANGE: std::ops::RangeInclusive<u32> = 80..=450;

/// How one [`Espeak`] speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspeakConfig {
    /// A voice: a voice name or file ("en-us", "English (America)",
    /// "gmw/en-US"), or a language ("en-gb", "fr"), optionally with a variant
    /// ("en-us+f3", "en-gb+m3", "en+klatt").
    pub voice: String,
    /// Words per minute, 80 to 450 (espeak's normal is 175).
    pub rate: u32,
    /// Base pitch, 0 to 100 (50 is normal).
    pub pitch: u32,
    /// Whether to end each text with a sentence pause (`espeakENDPAUSE`).
    pub end_pause: bool,
}

impl Default for EspeakConfig {
    fn default() -> Self {
        Self {
            voice: "en-us".to_owned(),
            rate: 175,
            pitch: 50,
            end_pause: false,
        }
    }
}

/// espeak-ng as a [`Synthesizer`]. Cheap to clone; every instance shares the
/// process's one espeak thread.
#[derive(Debug, Clone)]
pub struct Espeak {
    config: EspeakConfig,
    sample_rate: u32,
}

impl Espeak {
    /// An espeak voice. Starts (once per process) and checks the engine, and
    /// checks that the voice exists and the rate and pitch are in range.
    ///
    /// Blocks until the espeak thread has tried the voice, behind any texts
    /// queued before it: build one at start-up, not per call.
    pub fn new(config: EspeakConfig) -> Result<Self, AudioError> {
        if !RATE_RANGE.contains(&config.rate) {
            return Err(AudioError::engine(
                ENGINE,
                format!("rate {} wpm is outside 80..=450", config.rate),
            ));
        }
        if config.pitch > 100 {
            return Err(AudioError::engine(
                ENGINE,
                format!("pitch {} is outside 0..=100", config.pitch),
            ));
        }
        if config.voice.contains('\0') {
            return Err(AudioError::engine(ENGINE, "a voice name cannot hold a NUL"));
        }
        let engine = engine()?;
        let (reply, answer) = std_mpsc::sync_channel(1);
        engine.send(Job::CheckVoice {
            voice: config.voice.clone(),
            reply,
        })?;
        answer
            .recv()
            .map_err(|_| AudioError::engine(ENGINE, "the espeak-ng thread is gone"))??;
        Ok(Self {
            config,
            sample_rate: engine.sample_rate,
        })
    }

    /// The default voice (en-us, 175 wpm, normal pitch).
    pub fn en_us() -> Result<Self, AudioError> {
        Self::new(EspeakConfig::default())
    }

    /// How this instance speaks.
    pub fn config(&self) -> &EspeakConfig {
        &self.config
    }
}

impl Synthesizer for Espeak {
    fn name(&self) -> &'static str {
        ENGINE
    }

    fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    fn synthesize(&self, text: &str) -> BoxStream<'static, Result<SynthEvent, AudioError>> {
        if text.is_empty() {
            return stream::iter([Ok(SynthEvent::Mark {
                chars: 0,
                sample: 0,
            })])
            .boxed();
        }
        let (events, rx) = mpsc::unbounded_channel();
        let job = Job::Synth(Request {
            text: text.to_owned(),
            config: self.config.clone(),
            events,
        });
        if let Err(e) = engine().and_then(|engine| engine.send(job)) {
            return stream::iter([Err(e)]).boxed();
        }
        stream::unfold(rx, |mut rx| async move {
            let event = rx.recv().await?;
            Some((event, rx))
        })
        .boxed()
    }
}

// ---------------------------------------------------------------------------
// The engine thread.

/// Work for the espeak thread.
enum Job {
    /// Check that a voice exists (and leave it selected).
    CheckVoice {
        voice: String,
        reply: std_mpsc::SyncSender<Result<(), AudioError>>,
    },
    /// Speak a text.
    Synth(Request),
}

struct Request {
    text: String,
    config: EspeakConfig,
    /// Unbounded so the engine never waits on one slow listener while the
    /// others queue behind it; espeak runs far faster than real time, so a
    /// stream holds at most its own text's audio.
    events: mpsc::UnboundedSender<Result<SynthEvent, AudioError>>,
}

/// The handle to the process's espeak thread.
struct Engine {
    jobs: std_mpsc::Sender<Job>,
    sample_rate: u32,
}

impl Engine {
    fn send(&self, job: Job) -> Result<(), AudioError> {
        self.jobs
            .send(job)
            .map_err(|_| AudioError::engine(ENGINE, "the espeak-ng thread is gone"))
    }
}

/// The engine, started on first use; a failure to start is kept and
/// reported to every caller.
fn engine() -> Result<&'static Engine, AudioError> {
    static ENGINE_THREAD: OnceLock<Result<Engine, AudioError>> = OnceLock::new();
    ENGINE_THREAD
        .get_or_init(start_engine)
        .as_ref()
        .map_err(Clone::clone)
}

fn start_engine() -> Result<Engine, AudioError> {
    let (jobs, queue) = std_mpsc::channel::<Job>();
    let (ready, started) = std_mpsc::sync_channel::<Result<u32, AudioError>>(1);
    std::thread::Builder::new()
        .name("espeak-ng".to_owned())
        .spawn(move || {
            // SAFETY: this thread is the only one that ever calls into
            // espeak-ng; the data path is espeak's default (NULL).
            let rate = unsafe {
                ffi::espeak_Initialize(
                    ffi::AUDIO_OUTPUT_SYNCHRONOUS,
                    BUFFER_MS,
                    std::ptr::null(),
                    ffi::espeakINITIALIZE_DONT_EXIT,
                )
            };
            if rate <= 0 {
                let _ = ready.send(Err(AudioError::engine(
                    ENGINE,
                    "espeak_Initialize failed (is espeak-ng-data installed?)",
                )));
                return;
            }
            // SAFETY: `synth_callback` has the signature espeak expects and
            // never unwinds.
            unsafe { ffi::espeak_SetSynthCallback(Some(synth_callback)) };
            let _ = ready.send(Ok(rate as u32));
            serve(queue, rate as u32);
        })
        .map_err(|e| {
            AudioError::engine(ENGINE, format!("cannot start the espeak-ng thread: {e}"))
        })?;
    let sample_rate = started
        .recv()
        .map_err(|_| AudioError::engine(ENGINE, "the espeak-ng thread died starting"))??;
    Ok(Engine { jobs, sample_rate })
}

/// The engine thread's loop: one job at a time, for the life of the process.
fn serve(queue: std_mpsc::Receiver<Job>, sample_rate: u32) {
    let mut voices = VoiceState::default();
    for job in queue {
        match job {
            Job::CheckVoice { voice, reply } => {
                let _ = reply.send(voices.select(&voice));
            }
            Job::Synth(request) => {
                if request.events.is_closed() {
                    continue; // dropped while it waited
                }
                let result = voices
                    .select(&request.config.voice)
                    .and_then(|()| set_parameters(&request.config))
                    .and_then(|()| synth(&request, sample_rate));
                if let Err(e) = result {
                    let _ = request.events.send(Err(e));
                }
            }
        }
    }
}

/// The voice espeak has selected, so an unchanged voice is not reloaded.
#[derive(Default)]
struct VoiceState {
    current: Option<String>,
}

impl VoiceState {
    fn select(&mut self, voice: &str) -> Result<(), AudioError> {
        if self.current.as_deref() == Some(voice) {
            return Ok(());
        }
        self.current = None;
        set_voice(voice)?;
        self.current = Some(voice.to_owned());
        Ok(())
    }
}

/// Selects `voice`: by name or file first; failing that, as a language
/// ("en-gb"), whose voice file then takes the variant ("+f3").
fn set_voice(voice: &str) -> Result<(), AudioError> {
    let not_found = || AudioError::engine(ENGINE, format!("no voice {voice:?}"));
    let name = CString::new(voice).map_err(|_| not_found())?;
    // SAFETY: engine thread; `name` is a NUL-terminated string.
    if unsafe { ffi::espeak_SetVoiceByName(name.as_ptr()) } == ffi::EE_OK {
        return Ok(());
    }
    let (language, variant) = voice.split_once('+').unwrap_or((voice, ""));
    let language = CString::new(language).map_err(|_| not_found())?;
    let mut spec = ffi::espeak_VOICE {
        name: std::ptr::null(),
        languages: language.as_ptr(),
        identifier: std::ptr::null(),
        gender: 0,
        age: 0,
        variant: 0,
        xx1: 0,
        score: 0,
        spare: std::ptr::null_mut(),
    };
    // SAFETY: engine thread; `spec` and the string it points to outlive the
    // call, which only reads them.
    if unsafe { ffi::espeak_SetVoiceByProperties(&mut spec) } != ffi::EE_OK {
        return Err(not_found());
    }
    if variant.is_empty() {
        return Ok(());
    }
    // SAFETY: engine thread; espeak returns its current voice (or NULL),
    // whose identifier is a NUL-terminated string it owns.
    let identifier = unsafe {
        let current = ffi::espeak_GetCurrentVoice();
        if current.is_null() || (*current).identifier.is_null() {
            return Err(not_found());
        }
        CStr::from_ptr((*current).identifier)
            .to_string_lossy()
            .into_owned()
    };
    let base = identifier
        .split_once('+')
        .map_or(identifier.as_str(), |(b, _)| b);
    let with_variant = CString::new(format!("{base}+{variant}")).map_err(|_| not_found())?;
    // SAFETY: as above.
    if unsafe { ffi::espeak_SetVoiceByName(with_variant.as_ptr()) } == ffi::EE_OK {
        Ok(())
    } else {
        Err(AudioError::engine(
            ENGINE,
            format!("no voice variant {variant:?} for {voice:?}"),
        ))
    }
}

fn set_parameters(config: &EspeakConfig) -> Result<(), AudioError> {
    for (parameter, value, what) in [
        (ffi::espeakRATE, config.rate, "rate"),
        (ffi::espeakPITCH, config.pitch, "pitch"),
    ] {
        // SAFETY: engine thread; plain integers.
        let status = unsafe { ffi::espeak_SetParameter(parameter, value as c_int, 0) };
        if status != ffi::EE_OK {
            return Err(AudioError::engine(
                ENGINE,
                format!("setting the {what} to {value} failed ({status})"),
            ));
        }
    }
    Ok(())
}

/// Speaks one request, its events going out from the callback.
fn synth(request: &Request, sample_rate: u32) -> Result<(), AudioError> {
    // espeak reads up to the first NUL; a NUL in the text becomes a space so
    // character positions still match the caller's text.
    let text = CString::new(request.text.replace('\0', " ")).expect("NULs were replaced");
    let mut flags = ffi::espeakCHARS_UTF8;
    if request.config.end_pause {
        flags |= ffi::espeakENDPAUSE;
    }
    CURRENT.with(|current| {
        *current.borrow_mut() = Some(Utterance::new(
            &request.text,
            request.events.clone(),
            sample_rate,
        ));
    });
    // SAFETY: engine thread; `text` is NUL-terminated and outlives the call,
    // which in synchronous mode returns only when synthesis is over (all
    // callbacks made).
    let status = unsafe {
        ffi::espeak_Synth(
            text.as_ptr().cast::<c_void>(),
            text.as_bytes_with_nul().len(),
            0,
            ffi::POS_CHARACTER,
            0,
            flags,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    let utterance = CURRENT.with(|current| current.borrow_mut().take());
    if status != ffi::EE_OK {
        return Err(AudioError::engine(
            ENGINE,
            format!("espeak_Synth failed ({status})"),
        ));
    }
    if let Some(mut utterance) = utterance
        && !utterance.aborted
    {
        utterance.finish();
    }
    Ok(())
}

thread_local! {
    /// The utterance the callback is filling (engine thread only).
    static CURRENT: RefCell<Option<Utterance>> = const { RefCell::new(None) };
}

/// espeak's callback: audio and events of the utterance being spoken.
/// Returns 1 to abort when nobody listens any more.
unsafe extern "C" fn synth_callback(
    wav: *mut c_short,
    numsamples: c_int,
    events: *mut ffi::espeak_EVENT,
) -> c_int {
    let keep_going = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: espeak passes `numsamples` samples at `wav` (or NULL), and
        // an event array ended by espeakEVENT_LIST_TERMINATED (or NULL), all
        // valid for the duration of this call.
        let samples: &[i16] = if wav.is_null() || numsamples <= 0 {
            &[]
        } else {
            unsafe { std::slice::from_raw_parts(wav, numsamples as usize) }
        };
        CURRENT.with(|current| {
            let mut current = current.borrow_mut();
            let Some(utterance) = current.as_mut() else {
                return false;
            };
            // SAFETY: as above.
            let events = unsafe { event_slice(events) };
            utterance.chunk(samples, events)
        })
    }))
    .unwrap_or(false);
    if keep_going { 0 } else { 1 }
}

/// The events of one callback, without the terminator.
///
/// # Safety
/// `events` is NULL or points to an array ended by
/// `espeakEVENT_LIST_TERMINATED`, valid for the returned lifetime.
unsafe fn event_slice<'a>(events: *const ffi::espeak_EVENT) -> &'a [ffi::espeak_EVENT] {
    if events.is_null() {
        return &[];
    }
    let mut n = 0;
    // SAFETY: the caller's promise: every element up to the terminator is
    // readable.
    unsafe {
        while (*events.add(n)).type_ != ffi::espeakEVENT_LIST_TERMINATED {
            n += 1;
        }
        std::slice::from_raw_parts(events, n)
    }
}
