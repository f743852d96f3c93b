//! `voice_agent --audio FILE`: the demo as sound runs to its end and writes
//! what a caller heard — a stereo WAV with the caller on the left and the
//! agent on the right — with the barge-in's cut in the history.

#[path = "support/bin.rs"]
mod bin;

use colloquy::audio::wav;

#[test]
fn the_demo_as_sound_writes_what_a_caller_heard() {
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("voice_agent_audio.wav");
    let _ = std::fs::remove_file(&path);
    let out = std::process::Command::new(bin::example_binary("voice_agent"))
        .arg("--audio")
        .arg(&path)
        .output()
        .expect("voice_agent runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "voice_agent --audio failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("caller (as PocketSphinx heard it)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("(interrupted)"),
        "a barge-in cut the agent: {stdout}"
    );
    // Both channels, interleaved.
    let mut reader = stereo_samples(&path);
    assert_eq!(reader.0, 2, "stereo");
    let (left, right): (Vec<i16>, Vec<i16>) = {
        let s = std::mem::take(&mut reader.1);
        (
            s.iter().step_by(2).copied().collect(),
            s.iter().skip(1).step_by(2).copied().collect(),
        )
    };
    let loud = |c: &[i16]| c.iter().filter(|s| s.abs() > 1000).count();
    assert!(loud(&left) > 16_000, "the caller speaks");
    assert!(loud(&right) > 16_000, "the agent speaks");
    // Mixed down it is still one readable WAV.
    let mono = wav::read_file(&path).unwrap();
    assert_eq!(mono.sample_rate(), 16_000);
}

/// The channel count and the interleaved samples (a RIFF PCM16 header is 44
/// bytes as `wav::write` makes it).
fn stereo_samples(path: &std::path::Path) -> (u16, Vec<i16>) {
    let bytes = std::fs::read(path).unwrap();
    let channels = u16::from_le_bytes([bytes[22], bytes[23]]);
    let samples = bytes[44..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    (channels, samples)
}
