//! The pool of decoders shared by a `PocketSphinx`'s recognitions.

use super::*;

#[derive(Debug)]
pub(super) struct Pool {
    pub(super) config: PocketSphinxConfig,
    pub(super) state: Mutex<PoolState>,
    pub(super) freed: Condvar,
    /// The cepstral mean a new decoder starts with (`-cmninit`), given to
    /// each recognition's first utterance.
    pub(super) initial_cmn: OnceLock<Option<Vec<f32>>>,
}

#[derive(Debug)]
pub(super) struct PoolState {
    pub(super) idle: Vec<Decoder>,
    /// Decoders loaded (idle or checked out).
    pub(super) live: usize,
}

impl Pool {
    pub(super) fn new(config: PocketSphinxConfig) -> Self {
        Self {
            config,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                live: 0,
            }),
            freed: Condvar::new(),
            initial_cmn: OnceLock::new(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An idle decoder, or a new one if the pool may grow; `None` when all
    /// are busy.
    /// The one `owner` used last is preferred: it needs no switching.
    pub(super) fn try_checkout(&self, owner: u64) -> Result<Option<Decoder>, AudioError> {
        let mut state = self.lock();
        let mine = state.idle.iter().rposition(|d| d.owner == owner);
        if let Some(i) = mine.or(state.idle.len().checked_sub(1)) {
            return Ok(Some(state.idle.swap_remove(i)));
        }
        if state.live >= self.config.max_decoders {
            return Ok(None);
        }
        state.live += 1;
        drop(state);
        match Decoder::new(&self.config) {
            Ok(decoder) => {
                self.initial_cmn.get_or_init(|| decoder.cmn());
                Ok(Some(decoder))
            }
            Err(e) => {
                self.lock().live -= 1;
                self.freed.notify_all();
                Err(e)
            }
        }
    }

    pub(super) fn checkin(&self, decoder: Decoder) {
        self.lock().idle.push(decoder);
        self.freed.notify_one();
    }

    /// Frees a decoder that failed.
    pub(super) fn discard(&self, decoder: Decoder) {
        drop(decoder);
        self.lock().live -= 1;
        self.freed.notify_one();
    }

    /// Waits (at most `timeout`) for a decoder to be free.
    pub(super) fn wait(&self, timeout: Duration) {
        let state = self.lock();
        if state.idle.is_empty() && state.live >= self.config.max_decoders {
            let _ = self.freed.wait_timeout(state, timeout);
        }
    }
}

// ---------------------------------------------------------------------------
// One decoder.
