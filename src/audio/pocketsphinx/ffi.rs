//! The few PocketSphinx and sphinxbase declarations colloquy uses
//! (hand-written; header lines in the comments).

#![allow(non_camel_case_types)]

use super::{c_char, c_int, c_void};

#[repr(C)]
pub(super) struct ps_decoder_t {
    _private: [u8; 0],
}

#[repr(C)]
pub(super) struct cmd_ln_t {
    _private: [u8; 0],
}

#[repr(C)]
pub(super) struct arg_t {
    _private: [u8; 0],
}

/// `mfcc_t` (sphinxbase built without FIXED_POINT, as Debian's is).
pub(super) type mfcc_t = f32;

/// The start of `feat_t` (sphinxbase/feat.h), up to `cmn_struct`.
#[repr(C)]
pub(super) struct feat_t {
    pub refcount: c_int,
    pub name: *mut c_char,
    pub cepsize: i32,
    pub n_stream: i32,
    pub stream_len: *mut u32,
    pub window_size: i32,
    pub n_sv: i32,
    pub sv_len: *mut u32,
    pub subvecs: *mut *mut i32,
    pub sv_buf: *mut mfcc_t,
    pub sv_dim: i32,
    pub cmn: c_int,
    pub varnorm: i32,
    pub agc: c_int,
    pub compute_feat: *mut c_void,
    pub cmn_struct: *mut cmn_t,
    // ... more fields, never touched.
}

/// `cmn_t` (sphinxbase/cmn.h).
#[repr(C)]
pub(super) struct cmn_t {
    pub cmn_mean: *mut mfcc_t,
    pub cmn_var: *mut mfcc_t,
    pub sum: *mut mfcc_t,
    pub nframe: i32,
    pub veclen: i32,
}

#[link(name = "pocketsphinx")]
unsafe extern "C" {
    pub(super) fn ps_args() -> *const arg_t;
    pub(super) fn ps_start_stream(ps: *mut ps_decoder_t) -> c_int;
    pub(super) fn ps_get_feat(ps: *mut ps_decoder_t) -> *mut feat_t;
    pub(super) fn ps_init(config: *mut cmd_ln_t) -> *mut ps_decoder_t;
    pub(super) fn ps_free(ps: *mut ps_decoder_t) -> c_int;
    pub(super) fn ps_start_utt(ps: *mut ps_decoder_t) -> c_int;
    pub(super) fn ps_process_raw(
        ps: *mut ps_decoder_t,
        data: *const i16,
        n_samples: usize,
        no_search: c_int,
        full_utt: c_int,
    ) -> c_int;
    pub(super) fn ps_end_utt(ps: *mut ps_decoder_t) -> c_int;
    pub(super) fn ps_get_hyp(ps: *mut ps_decoder_t, out_best_score: *mut i32) -> *const c_char;
}

#[link(name = "sphinxbase")]
unsafe extern "C" {
    pub(super) fn cmd_ln_init(
        inout_cmdln: *mut cmd_ln_t,
        defn: *const arg_t,
        strict: i32,
        ...
    ) -> *mut cmd_ln_t;
    pub(super) fn cmd_ln_free_r(cmdln: *mut cmd_ln_t) -> c_int;
    pub(super) fn cmd_ln_exists_r(cmdln: *mut cmd_ln_t, name: *const c_char) -> c_int;
    /// `FILE *`; NULL disables logging.
    pub(super) fn err_set_logfp(stream: *mut c_void);
    pub(super) fn cmn_live_set(cmn: *mut cmn_t, vec: *const mfcc_t);
    pub(super) fn cmn_live_get(cmn: *mut cmn_t, vec: *mut mfcc_t);
}
