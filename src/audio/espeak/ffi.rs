//! The few `speak_lib.h` declarations colloquy uses (hand-written; the
//! constants' header lines are in the comments).

#![allow(non_camel_case_types, non_upper_case_globals, dead_code)]

use std::ffi::{c_char, c_int, c_short, c_uint, c_void};

// espeak_AUDIO_OUTPUT: PLAYBACK, RETRIEVAL, SYNCHRONOUS, SYNCH_PLAYBACK.
pub(super) const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
// #define espeakINITIALIZE_DONT_EXIT 0x8000
pub(super) const espeakINITIALIZE_DONT_EXIT: c_int = 0x8000;
// espeak_POSITION_TYPE: POS_CHARACTER = 1.
pub(super) const POS_CHARACTER: c_int = 1;
// #define espeakCHARS_UTF8 1, #define espeakENDPAUSE 0x1000
pub(super) const espeakCHARS_UTF8: c_uint = 1;
pub(super) const espeakENDPAUSE: c_uint = 0x1000;
// espeak_ERROR: EE_OK = 0.
pub(super) const EE_OK: c_int = 0;
// espeak_PARAMETER: espeakRATE = 1, espeakPITCH = 3.
pub(super) const espeakRATE: c_int = 1;
pub(super) const espeakPITCH: c_int = 3;
// espeak_EVENT_TYPE.
pub(super) const espeakEVENT_LIST_TERMINATED: c_int = 0;
pub(super) const espeakEVENT_WORD: c_int = 1;
pub(super) const espeakEVENT_END: c_int = 5;

/// `espeak_EVENT` (40 bytes on LP64).
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct espeak_EVENT {
    pub type_: c_int,
    pub unique_identifier: c_uint,
    pub text_position: c_int,
    pub length: c_int,
    pub audio_position: c_int,
    pub sample: c_int,
    pub user_data: *mut c_void,
    pub id: espeak_EVENT_id,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(super) union espeak_EVENT_id {
    pub number: c_int,
    pub name: *const c_char,
    pub string: [c_char; 8],
}

/// `espeak_VOICE`.
#[repr(C)]
pub(super) struct espeak_VOICE {
    pub name: *const c_char,
    pub languages: *const c_char,
    pub identifier: *const c_char,
    pub gender: u8,
    pub age: u8,
    pub variant: u8,
    pub xx1: u8,
    pub score: c_int,
    pub spare: *mut c_void,
}

pub(super) type t_espeak_callback =
    unsafe extern "C" fn(wav: *mut c_short, numsamples: c_int, events: *mut espeak_EVENT) -> c_int;

#[link(name = "espeak-ng")]
unsafe extern "C" {
    pub(super) fn espeak_Initialize(
        output: c_int,
        buflength: c_int,
        path: *const c_char,
        options: c_int,
    ) -> c_int;
    pub(super) fn espeak_SetSynthCallback(callback: Option<t_espeak_callback>);
    pub(super) fn espeak_Synth(
        text: *const c_void,
        size: usize,
        position: c_uint,
        position_type: c_int,
        end_position: c_uint,
        flags: c_uint,
        unique_identifier: *mut c_uint,
        user_data: *mut c_void,
    ) -> c_int;
    pub(super) fn espeak_SetParameter(parameter: c_int, value: c_int, relative: c_int) -> c_int;
    pub(super) fn espeak_SetVoiceByName(name: *const c_char) -> c_int;
    pub(super) fn espeak_SetVoiceByProperties(voice_spec: *mut espeak_VOICE) -> c_int;
    pub(super) fn espeak_GetCurrentVoice() -> *mut espeak_VOICE;
}
