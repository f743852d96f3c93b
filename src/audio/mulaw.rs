//! G.711 µ-law: the 8 kHz, 8-bit codec of the phone network (and of Twilio's
//! Media Streams). A byte per sample, logarithmic, about 14 bits of range.
//!
//! The encoder is the standard's (ITU-T G.711, the bias-and-segment form every
//! implementation uses); decoding goes through a 256-entry table built at
//! compile time.

const BIAS: i32 = 0x84;
const CLIP: i32 = 32_635;

/// Encodes one linear PCM16 sample.
pub fn encode_sample(sample: i16) -> u8 {
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    // The segment: position of the highest set bit above bit 7.
    let exponent = (31 - (s as u32).leading_zeros()).saturating_sub(7).min(7) as i32;
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) | mantissa) as u8
}

const fn decode_one(byte: u8) -> i16 {
    let b = !byte;
    let sign = b & 0x80;
    let exponent = ((b >> 4) & 0x07) as i32;
    let mantissa = (b & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    if sign != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

const DECODE: [i16; 256] = {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = decode_one(i as u8);
        i += 1;
    }
    table
};

/// Decodes one µ-law byte.
pub fn decode_sample(byte: u8) -> i16 {
    DECODE[byte as usize]
}

/// Encodes PCM16 samples, one byte each.
pub fn encode(samples: &[i16]) -> Vec<u8> {
    samples.iter().map(|&s| encode_sample(s)).collect()
}

/// Decodes µ-law bytes to PCM16 samples.
pub fn decode(bytes: &[u8]) -> Vec<i16> {
    bytes.iter().map(|&b| decode_sample(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_decodes_and_reencodes_to_itself() {
        for b in 0..=255u8 {
            let s = decode_sample(b);
            // 0x7F and 0xFF are both zero; the encoder picks 0xFF.
            let back = encode_sample(s);
            assert!(
                back == b || (s == 0 && back == 0xFF),
                "code {b:#04x} -> {s} -> {back:#04x}"
            );
        }
    }

    #[test]
    fn round_trip_error_stays_within_the_segment_step() {
        for s in (i16::MIN..=i16::MAX).step_by(7) {
            let back = i32::from(decode_sample(encode_sample(s)));
            let s = i32::from(s).clamp(-CLIP, CLIP);
            // The quantisation step doubles per segment: 1/16 of the
            // magnitude plus the bias, at most.
            let bound = (s.abs() >> 4) + 16;
            assert!((back - s).abs() <= bound, "{s} -> {back}");
        }
        assert_eq!(decode_sample(encode_sample(0)), 0);
        assert_eq!(decode_sample(0x00), -32_124);
        assert_eq!(decode_sample(0x80), 32_124);
    }
}
