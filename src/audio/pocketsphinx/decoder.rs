//! One `ps_decoder_t`: loading, feeding, hypotheses, its CMN state.

use super::*;

/// A `ps_decoder_t`, used by one thread at a time.
#[derive(Debug)]
pub(super) struct Decoder {
    pub(super) ps: NonNull<ffi::ps_decoder_t>,
    /// The recognition whose stream it decoded last (0: none yet).
    pub(super) owner: u64,
}

// SAFETY: a decoder has no tie to the thread that made it; the pool hands
// it to one thread at a time (`&mut` or by value), never to two at once.
unsafe impl Send for Decoder {}

/// sphinxbase's logging is process-global: creating decoders one at a time
/// keeps its setup from racing.
pub(super) static CREATING: Mutex<()> = Mutex::new(());

pub(super) fn quiet_logs() {
    static QUIET: Once = Once::new();
    // SAFETY: NULL is documented to disable logging.
    QUIET.call_once(|| unsafe { ffi::err_set_logfp(std::ptr::null_mut()) });
}

pub(super) fn c_path(path: &Path, what: &str) -> Result<CString, AudioError> {
    let text = path.to_str().ok_or_else(|| {
        AudioError::engine(ENGINE, format!("the {what} path {path:?} is not UTF-8"))
    })?;
    CString::new(text)
        .map_err(|_| AudioError::engine(ENGINE, format!("the {what} path {path:?} holds a NUL")))
}

pub(super) fn c_arg(text: &str) -> Result<CString, AudioError> {
    CString::new(text)
        .map_err(|_| AudioError::engine(ENGINE, format!("the option {text:?} holds a NUL")))
}

impl Decoder {
    pub(super) fn new(config: &PocketSphinxConfig) -> Result<Self, AudioError> {
        // sphinxbase exits the process on some unreadable model files, so
        // what can be checked is checked first.
        for (path, what, is_dir) in [
            (config.hmm.as_path(), "acoustic model", true),
            (config.language.path(), "language model", false),
            (config.dict.as_path(), "dictionary", false),
        ] {
            let ok = if is_dir {
                path.is_dir()
            } else {
                path.is_file()
            };
            if !ok {
                return Err(AudioError::engine(
                    ENGINE,
                    format!("no {what} at {}", path.display()),
                ));
            }
        }
        for file in ["mdef", "means", "variances", "transition_matrices"] {
            if !config.hmm.join(file).is_file() {
                return Err(AudioError::engine(
                    ENGINE,
                    format!("the acoustic model {} has no {file}", config.hmm.display()),
                ));
            }
        }
        let hmm = c_path(&config.hmm, "acoustic model")?;
        let lm = c_path(config.language.path(), "language model")?;
        let lm_flag = match config.language {
            LanguageModel::Ngram(_) => c"-lm",
            LanguageModel::Grammar(_) => c"-jsgf",
        };
        let dict = c_path(&config.dict, "dictionary")?;
        let extra = config
            .extra_args
            .iter()
            .map(|(name, value)| Ok((c_arg(name)?, c_arg(value)?)))
            .collect::<Result<Vec<_>, AudioError>>()?;

        quiet_logs();
        let _one_at_a_time = CREATING.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: every string is NUL-terminated and the list ends with NULL,
        // as cmd_ln_init's varargs want; it copies them.
        let cmdln = unsafe {
            ffi::cmd_ln_init(
                std::ptr::null_mut(),
                ffi::ps_args(),
                1,
                c"-hmm".as_ptr(),
                hmm.as_ptr(),
                lm_flag.as_ptr(),
                lm.as_ptr(),
                c"-dict".as_ptr(),
                dict.as_ptr(),
                std::ptr::null::<c_char>(),
            )
        };
        if cmdln.is_null() {
            return Err(AudioError::engine(
                ENGINE,
                "the decoder configuration was refused",
            ));
        }
        for (name, value) in &extra {
            let refused = |why: &str| {
                // SAFETY: ours, freed once.
                unsafe { ffi::cmd_ln_free_r(cmdln) };
                AudioError::engine(
                    ENGINE,
                    format!(
                        "option {} {}: {why}",
                        name.to_string_lossy(),
                        value.to_string_lossy()
                    ),
                )
            };
            // SAFETY: `cmdln` is valid; `name` is NUL-terminated.
            if unsafe { ffi::cmd_ln_exists_r(cmdln, name.as_ptr()) } == 0 {
                return Err(refused("no such option"));
            }
            // Every option already holds its default, which a strict parse
            // calls a duplicate: the update is non-strict (it replaces), and
            // unknown names were refused above.
            // SAFETY: as for the first cmd_ln_init; `cmdln` is updated in
            // place (it keeps the copies of the strings), or NULL comes back
            // on a bad value, leaving `cmdln` ours to free.
            let updated = unsafe {
                ffi::cmd_ln_init(
                    cmdln,
                    ffi::ps_args(),
                    0,
                    name.as_ptr(),
                    value.as_ptr(),
                    std::ptr::null::<c_char>(),
                )
            };
            if updated.is_null() {
                return Err(refused("bad value"));
            }
        }
        // SAFETY: `cmdln` is a valid configuration; ps_init takes its own
        // reference, so ours is released whatever it returns.
        let ps = unsafe {
            let ps = ffi::ps_init(cmdln);
            ffi::cmd_ln_free_r(cmdln);
            ps
        };
        let ps = NonNull::new(ps).ok_or_else(|| {
            AudioError::engine(
                ENGINE,
                format!("the model in {} failed to load", config.hmm.display()),
            )
        })?;
        Ok(Self { ps, owner: 0 })
    }

    pub(super) fn start_utt(&self) -> Result<(), AudioError> {
        // SAFETY: a live decoder, used by this thread only.
        match unsafe { ffi::ps_start_utt(self.ps.as_ptr()) } {
            0.. => Ok(()),
            rc => Err(AudioError::engine(
                ENGINE,
                format!("ps_start_utt failed ({rc})"),
            )),
        }
    }

    pub(super) fn process(&self, samples: &[i16]) -> Result<(), AudioError> {
        // SAFETY: a live decoder; `samples` is valid for its length.
        let rc =
            unsafe { ffi::ps_process_raw(self.ps.as_ptr(), samples.as_ptr(), samples.len(), 0, 0) };
        if rc < 0 {
            return Err(AudioError::engine(
                ENGINE,
                format!("ps_process_raw failed ({rc})"),
            ));
        }
        Ok(())
    }

    pub(super) fn end_utt(&self) -> Result<(), AudioError> {
        // SAFETY: a live decoder.
        match unsafe { ffi::ps_end_utt(self.ps.as_ptr()) } {
            0.. => Ok(()),
            rc => Err(AudioError::engine(
                ENGINE,
                format!("ps_end_utt failed ({rc})"),
            )),
        }
    }

    /// Starts a new stream (`ps_start_stream`: fresh noise estimates) with
    /// the cepstral mean `cmn`, for recognition `owner`.
    pub(super) fn switch_to(&mut self, owner: u64, cmn: Option<&[f32]>) -> Result<(), AudioError> {
        // SAFETY: a live decoder.
        let rc = unsafe { ffi::ps_start_stream(self.ps.as_ptr()) };
        if rc < 0 {
            return Err(AudioError::engine(
                ENGINE,
                format!("ps_start_stream failed ({rc})"),
            ));
        }
        if let (Some(state), Some(mean)) = (self.cmn_state(), cmn)
            && mean.len() == state.1
        {
            // SAFETY: `state.0` is the decoder's live CMN, whose vectors
            // have `veclen` = `mean.len()` elements.
            unsafe { ffi::cmn_live_set(state.0, mean.as_ptr()) };
        }
        self.owner = owner;
        Ok(())
    }

    /// The live cepstral mean, which CMN carries from one utterance of a
    /// stream to the next.
    pub(super) fn cmn(&self) -> Option<Vec<f32>> {
        let (cmn, veclen) = self.cmn_state()?;
        let mut mean = vec![0.0; veclen];
        // SAFETY: as in `switch_to`; `mean` has room for `veclen` values.
        unsafe { ffi::cmn_live_get(cmn, mean.as_mut_ptr()) };
        Some(mean)
    }

    /// The decoder's CMN structure and vector length, if it has one.
    pub(super) fn cmn_state(&self) -> Option<(*mut ffi::cmn_t, usize)> {
        // SAFETY: a live decoder; its feature computation (a `feat_t`,
        // whose layout feat.h publishes) lives as long as it does.
        unsafe {
            let feat = ffi::ps_get_feat(self.ps.as_ptr());
            if feat.is_null() {
                return None;
            }
            let cmn = (*feat).cmn_struct;
            if cmn.is_null() {
                return None;
            }
            let veclen = usize::try_from((*cmn).veclen)
                .ok()
                .filter(|&n| n > 0 && n <= 64)?;
            Some((cmn, veclen))
        }
    }

    /// The best hypothesis so far (or the final one after `end_utt`).
    pub(super) fn hypothesis(&self) -> String {
        let mut score = 0;
        // SAFETY: a live decoder; the string it returns is its own, valid
        // until the next call, and copied at once.
        unsafe {
            let hyp = ffi::ps_get_hyp(self.ps.as_ptr(), &mut score);
            if hyp.is_null() {
                String::new()
            } else {
                CStr::from_ptr(hyp).to_string_lossy().trim().to_owned()
            }
        }
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: our reference, released once.
        unsafe { ffi::ps_free(self.ps.as_ptr()) };
    }
}

// ---------------------------------------------------------------------------
// The C API (pocketsphinx.h, sphinxbase/cmd_ln.h and err.h of 5prealpha),
// hand-written.
