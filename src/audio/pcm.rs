//! Raw PCM16 little-endian bytes from a stream into samples: hosted
//! synthesizers send audio in chunks whose boundaries fall anywhere, an odd
//! byte count included; the half sample is carried to the next chunk, never
//! dropped or misread.

/// Decodes one stream of PCM16 LE bytes, carrying a split sample.
#[derive(Debug, Default)]
pub(crate) struct Pcm16Le {
    carry: Option<u8>,
}

impl Pcm16Le {
    /// The whole samples `bytes` complete (with the byte carried from the
    /// chunk before); a last odd byte waits for the next chunk.
    pub(crate) fn decode(&mut self, bytes: &[u8]) -> Vec<i16> {
        let mut rest = bytes;
        let mut samples = Vec::with_capacity(bytes.len() / 2 + 1);
        if let (Some(lo), Some((&hi, tail))) = (self.carry, rest.split_first()) {
            samples.push(i16::from_le_bytes([lo, hi]));
            self.carry = None;
            rest = tail;
        }
        let mut pairs = rest.chunks_exact(2);
        samples.extend(pairs.by_ref().map(|p| i16::from_le_bytes([p[0], p[1]])));
        if let [odd] = pairs.remainder() {
            self.carry = Some(*odd);
        }
        samples
    }

    /// Whether half a sample is waiting (the stream ends mid-sample if it
    /// ends now).
    pub(crate) fn mid_sample(&self) -> bool {
        self.carry.is_some()
    }

    /// Drops the waiting half sample; whether there was one.
    pub(crate) fn drop_half_sample(&mut self) -> bool {
        self.carry.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_odd_byte_is_carried_into_the_next_chunk() {
        let pcm: Vec<u8> = [1i16, -2, 300, -32768]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        let mut d = Pcm16Le::default();
        let mut got = d.decode(&pcm[..3]);
        assert!(d.mid_sample());
        got.extend(d.decode(&pcm[3..]));
        assert!(!d.mid_sample());
        assert_eq!(got, vec![1, -2, 300, -32768]);
    }
}
