//! Real speech made at test time with espeak-ng's command line (included with
//! `#[path]`): no audio file is committed, and no test runs on a script that
//! ignores the audio. `.ci/run` installs espeak-ng; without it these helpers
//! fail with the command to install it, never skip.
#![allow(dead_code)] // each test crate uses a different subset

use colloquy::audio::{AudioFrame, resample, wav};

/// `text` spoken by espeak-ng's command line (22,050 Hz mono), with `voice`
/// (e.g. "en-us", "en-gb+f3").
pub fn espeak(text: &str, voice: &str) -> AudioFrame {
    // `--stdout` writes a streaming header with no length: use a file.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("colloquy-espeak-{}-{n}.wav", std::process::id()));
    let out = std::process::Command::new("espeak-ng")
        .args(["-v", voice, "-w"])
        .arg(&path)
        .arg(text)
        .output()
        .unwrap_or_else(|e| {
            panic!("espeak-ng is needed to make test speech ({e}): apt-get install espeak-ng")
        });
    assert!(out.status.success(), "espeak-ng failed: {out:?}");
    let clip = wav::read_file(&path).expect("espeak-ng writes a PCM16 WAV");
    let _ = std::fs::remove_file(&path);
    clip
}

/// `text` spoken and resampled to `rate`.
pub fn speech_at(text: &str, voice: &str, rate: u32) -> Vec<i16> {
    let clip = espeak(text, voice);
    resample::resample(clip.samples(), clip.sample_rate(), rate).expect("supported rate")
}

/// The first and last sample louder than `level`: where the sound is.
pub fn sound_bounds(samples: &[i16], level: i16) -> (usize, usize) {
    let first = samples
        .iter()
        .position(|s| s.abs() > level)
        .expect("some sound");
    let last = samples
        .iter()
        .rposition(|s| s.abs() > level)
        .expect("some sound");
    (first, last + 1)
}

/// Frames of `ms` milliseconds, positioned from 0.
pub fn frames(samples: &[i16], rate: u32, ms: u32) -> Vec<AudioFrame> {
    let size = (rate * ms / 1000) as usize;
    samples
        .chunks(size)
        .enumerate()
        .map(|(i, c)| AudioFrame::new(c.to_vec(), rate, (i * size) as u64))
        .collect()
}
