//! One recognition's thread: utterances decoded as their audio comes,
//! interims while they last, a final when they end.

use super::*;

/// The most audio an utterance waiting for a decoder keeps (60 s).
const MAX_PENDING: usize = 60 * SAMPLE_RATE as usize;

pub(super) struct Worker {
    /// This recognition, as decoders know it.
    pub(super) id: u64,
    /// The stream's cepstral mean after its last utterance, carried from
    /// decoder to decoder as one decoder would carry it.
    pub(super) cmn: Option<Vec<f32>>,
    pub(super) pool: Arc<Pool>,
    pub(super) input: mpsc::Receiver<RecognizerInput>,
    pub(super) out: mpsc::Sender<Result<Transcript, AudioError>>,
    pub(super) interim_every: Option<u64>,
    /// Take a decoder only once the utterance ended.
    pub(super) decode_at_end: bool,
    pub(super) utterance: Option<Utterance>,
    pub(super) told_bad_rate: bool,
}

/// The utterance between `SpeechStarted` and its final transcript.
pub(super) struct Utterance {
    pub(super) start: u64,
    /// Where the audio fed so far ends.
    pub(super) end: u64,
    /// Where `SpeechEnded` said it ended, once it has.
    pub(super) ended: Option<u64>,
    pub(super) decoder: Option<Decoder>,
    /// Audio waiting for a decoder.
    pub(super) pending: Vec<i16>,
    /// Audio fed since the last look at the hypothesis.
    pub(super) since_interim: u64,
    pub(super) last_interim: String,
    /// A decoder failed it: nothing more to say about it.
    pub(super) failed: bool,
}

/// The receiver of transcripts is gone: nobody listens any more.
pub(super) struct Hangup;

impl Worker {
    /// Ends the utterance still open (at its last frame) and decodes it to
    /// its final, waiting for a decoder if all are busy.
    pub(super) fn finish_open(&mut self) -> Result<(), Hangup> {
        if let Some(u) = &mut self.utterance {
            u.ended.get_or_insert(u.end);
        }
        while self.utterance.is_some() {
            self.activate()?;
            if self.utterance.is_some() {
                self.pool.wait(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    pub(super) fn run(mut self) {
        let _ = self.serve();
        if let Some(utterance) = self.utterance.take()
            && let Some(decoder) = utterance.decoder
        {
            // Hung up mid-utterance: the decoder goes back clean.
            let _ = decoder.end_utt();
            self.pool.checkin(decoder);
        }
    }

    pub(super) fn serve(&mut self) -> Result<(), Hangup> {
        loop {
            if self.out.is_closed() {
                return Err(Hangup);
            }
            self.activate()?;
            let waiting = self.utterance.as_ref().is_some_and(|u| {
                u.decoder.is_none() && !u.failed && (!self.decode_at_end || u.ended.is_some())
            });
            let message = if waiting {
                match self.input.try_recv() {
                    Ok(message) => Some(message),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        self.pool.wait(Duration::from_millis(20));
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                }
            } else {
                self.input.blocking_recv()
            };
            match message {
                None => {
                    // The caller closed the stream: finish what was said.
                    self.finish_open()?;
                    return Ok(());
                }
                Some(RecognizerInput::SpeechStarted { position }) => {
                    // A new start without an end: the open one ends here.
                    self.finish_open()?;
                    self.utterance = Some(Utterance {
                        start: position,
                        end: position,
                        ended: None,
                        decoder: None,
                        pending: Vec::new(),
                        since_interim: 0,
                        last_interim: String::new(),
                        failed: false,
                    });
                }
                Some(RecognizerInput::Frame(frame)) => self.frame(frame)?,
                Some(RecognizerInput::SpeechEnded { position }) => {
                    if let Some(u) = &mut self.utterance
                        && u.ended.is_none()
                    {
                        u.ended = Some(position);
                    }
                }
            }
        }
    }

    /// Gives the open utterance a decoder if it waits for one, and finishes
    /// it if it has ended.
    pub(super) fn activate(&mut self) -> Result<(), Hangup> {
        let Some(u) = &self.utterance else {
            return Ok(());
        };
        if u.decoder.is_none() && !u.failed && (!self.decode_at_end || u.ended.is_some()) {
            match self.pool.try_checkout(self.id) {
                Ok(None) => return Ok(()),
                Ok(Some(mut decoder)) => match self.prepare(&mut decoder) {
                    Ok(()) => {
                        let u = self.utterance.as_mut().expect("checked above");
                        u.decoder = Some(decoder);
                        let pending = std::mem::take(&mut u.pending);
                        self.feed(&pending)?;
                    }
                    Err(e) => {
                        self.pool.discard(decoder);
                        self.fail(e)?;
                    }
                },
                Err(e) => self.fail(e)?,
            }
        }
        if self.utterance.as_ref().is_some_and(|u| u.ended.is_some()) {
            self.finish()?;
        }
        Ok(())
    }

    /// Readies a decoder for this stream's next utterance.
    pub(super) fn prepare(&self, decoder: &mut Decoder) -> Result<(), AudioError> {
        if decoder.owner != self.id {
            let cmn =
                self.cmn
                    .as_deref()
                    .or(self.pool.initial_cmn.get().and_then(Option::as_deref));
            decoder.switch_to(self.id, cmn)?;
        }
        decoder.start_utt()
    }

    pub(super) fn frame(&mut self, frame: AudioFrame) -> Result<(), Hangup> {
        if frame.sample_rate() != SAMPLE_RATE {
            if !self.told_bad_rate {
                self.told_bad_rate = true;
                self.send(Err(AudioError::UnsupportedRate(frame.sample_rate())))?;
            }
            return Ok(());
        }
        let Some(u) = &mut self.utterance else {
            return Ok(()); // before speech: ignored
        };
        if u.ended.is_some() || u.failed {
            return Ok(());
        }
        u.end = u.end.max(frame.end());
        if u.decoder.is_none() {
            // Bounded: an utterance longer than a minute keeps its first.
            let room = MAX_PENDING.saturating_sub(u.pending.len());
            let take = frame.len().min(room);
            u.pending.extend_from_slice(&frame.samples()[..take]);
            return Ok(());
        }
        self.feed(frame.samples())
    }

    /// Decodes audio of the open utterance, with an interim when due.
    pub(super) fn feed(&mut self, samples: &[i16]) -> Result<(), Hangup> {
        let Some(u) = &mut self.utterance else {
            return Ok(());
        };
        let Some(decoder) = &mut u.decoder else {
            return Ok(());
        };
        if samples.is_empty() {
            return Ok(());
        }
        if let Err(e) = decoder.process(samples) {
            let decoder = u.decoder.take().expect("checked above");
            self.pool.discard(decoder);
            return self.fail(e);
        }
        let Some(every) = self.interim_every else {
            return Ok(());
        };
        u.since_interim += samples.len() as u64;
        if u.since_interim < every {
            return Ok(());
        }
        u.since_interim = 0;
        let text = decoder.hypothesis();
        if text.is_empty() || text == u.last_interim {
            return Ok(());
        }
        u.last_interim.clone_from(&text);
        let interim = Transcript {
            text,
            is_final: false,
            start: u.start,
            end: u.end,
        };
        match self.out.try_send(Ok(interim)) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Hangup),
        }
    }

    /// The final transcript of the open (ended, decoder-holding) utterance.
    pub(super) fn finish(&mut self) -> Result<(), Hangup> {
        let Some(u) = self.utterance.take() else {
            return Ok(());
        };
        if u.failed {
            return Ok(());
        }
        let Some(decoder) = u.decoder else {
            self.utterance = Some(u); // still waiting for a decoder
            return Ok(());
        };
        let end = u.ended.unwrap_or(u.end);
        let result = decoder.end_utt().map(|()| Transcript {
            text: decoder.hypothesis(),
            is_final: true,
            start: u.start,
            end,
        });
        match result {
            Ok(_) => {
                self.cmn = decoder.cmn();
                self.pool.checkin(decoder);
            }
            Err(_) => self.pool.discard(decoder),
        }
        self.send(result)
    }

    /// Reports a decoder's failure; the utterance yields nothing more.
    pub(super) fn fail(&mut self, error: AudioError) -> Result<(), Hangup> {
        if let Some(u) = &mut self.utterance {
            u.failed = true;
            u.pending = Vec::new();
            if u.ended.is_some() {
                self.utterance = None;
            }
        }
        self.send(Err(error))
    }

    pub(super) fn send(&self, item: Result<Transcript, AudioError>) -> Result<(), Hangup> {
        self.out.blocking_send(item).map_err(|_| Hangup)
    }
}

// ---------------------------------------------------------------------------
// The pool.
