//! WAV files: read any PCM16 file (mono, or stereo mixed down), write mono or
//! stereo PCM16. Through `hound`, the well-kept pure-Rust WAV crate.

use std::io::{Read, Seek, Write};

use super::{AudioError, AudioFrame};

fn wav_error(e: hound::Error) -> AudioError {
    AudioError::Wav(e.to_string())
}

/// Reads a 16-bit PCM WAV as one mono frame at its own rate, position 0
/// (stereo is mixed down; other formats are refused).
pub fn read(reader: impl Read) -> Result<AudioFrame, AudioError> {
    let mut wav = hound::WavReader::new(reader).map_err(wav_error)?;
    let spec = wav.spec();
    if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
        return Err(AudioError::Wav(format!(
            "{} {}-bit samples (16-bit PCM only)",
            match spec.sample_format {
                hound::SampleFormat::Int => "integer",
                hound::SampleFormat::Float => "float",
            },
            spec.bits_per_sample
        )));
    }
    let channels = usize::from(spec.channels.max(1));
    let samples: Vec<i16> = wav
        .samples::<i16>()
        .collect::<Result<_, _>>()
        .map_err(wav_error)?;
    let mono = if channels == 1 {
        samples
    } else {
        samples
            .chunks(channels)
            .map(|c| (c.iter().map(|&s| i32::from(s)).sum::<i32>() / c.len() as i32) as i16)
            .collect()
    };
    Ok(AudioFrame::new(mono, spec.sample_rate, 0))
}

/// Reads a WAV file from `path` (see [`read`]).
pub fn read_file(path: impl AsRef<std::path::Path>) -> Result<AudioFrame, AudioError> {
    let file = std::fs::File::open(path.as_ref())
        .map_err(|e| AudioError::Wav(format!("{}: {e}", path.as_ref().display())))?;
    read(std::io::BufReader::new(file))
}

/// Writes `channels` of PCM16 (all at `sample_rate`; a shorter channel is
/// padded with silence) as one WAV.
pub fn write(
    writer: impl Write + Seek,
    sample_rate: u32,
    channels: &[&[i16]],
) -> Result<(), AudioError> {
    let spec = hound::WavSpec {
        channels: channels.len().max(1) as u16,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut wav = hound::WavWriter::new(writer, spec).map_err(wav_error)?;
    let len = channels.iter().map(|c| c.len()).max().unwrap_or(0);
    for i in 0..len {
        for c in channels {
            wav.write_sample(c.get(i).copied().unwrap_or(0))
                .map_err(wav_error)?;
        }
    }
    wav.finalize().map_err(wav_error)
}

/// Writes a WAV file at `path` (see [`write`]).
pub fn write_file(
    path: impl AsRef<std::path::Path>,
    sample_rate: u32,
    channels: &[&[i16]],
) -> Result<(), AudioError> {
    let file = std::fs::File::create(path.as_ref())
        .map_err(|e| AudioError::Wav(format!("{}: {e}", path.as_ref().display())))?;
    write(std::io::BufWriter::new(file), sample_rate, channels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mono_and_stereo_round_trip() {
        let a: Vec<i16> = (0..1000).map(|i| (i * 31 % 2000 - 1000) as i16).collect();
        let mut buf = std::io::Cursor::new(Vec::new());
        write(&mut buf, 16_000, &[&a]).unwrap();
        let back = read(std::io::Cursor::new(buf.into_inner())).unwrap();
        assert_eq!(back.sample_rate(), 16_000);
        assert_eq!(back.samples(), &a[..]);

        let b: Vec<i16> = a.iter().map(|s| -s).collect();
        let mut buf = std::io::Cursor::new(Vec::new());
        write(&mut buf, 8_000, &[&a, &b[..500]]).unwrap();
        let bytes = buf.into_inner();
        let back = read(std::io::Cursor::new(bytes)).unwrap();
        assert_eq!(back.len(), 1000);
        assert_eq!(back.samples()[10], 0, "a and -a mix down to silence");
        assert_eq!(
            back.samples()[600],
            a[600] / 2,
            "the padded channel is silent"
        );
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let err = read(std::io::Cursor::new(b"RIFF....WAVEnope".to_vec())).unwrap_err();
        assert!(matches!(err, AudioError::Wav(_)), "{err:?}");
    }
}
