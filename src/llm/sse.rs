//! Byte-level guards in front of the SSE parser.
//!
//! eventsource-stream has two failure modes that a long-running voice server
//! cannot accept (see CRATES.md): invalid UTF-8 makes it buffer everything after
//! the bad bytes until the end of the stream, and one endless line grows its
//! buffer without bound. [`ByteGuard`] sits between the HTTP body and the parser:
//! it replaces invalid sequences with U+FFFD (keeping sequences split across
//! network chunks intact) and fails with a typed error when one event exceeds
//! the byte cap. [`guarded`] puts a body behind both.

use std::pin::Pin;

use bytes::Bytes;
use eventsource_stream::{EventStream, Eventsource};
use futures_util::{Stream, StreamExt};

use super::error::LlmError;

/// A response body as chunks of bytes.
pub(crate) type ByteSource = Pin<Box<dyn Stream<Item = Result<Bytes, LlmError>> + Send>>;

/// A body behind the [`ByteGuard`] and the SSE parser.
pub(crate) type SseSource = EventStream<ByteSource>;

/// Repairs UTF-8 and enforces the per-event byte cap on a stream of chunks.
#[derive(Debug)]
pub(crate) struct ByteGuard {
    carry: Vec<u8>,
    event_bytes: usize,
    line_bytes: usize,
    last_was_cr: bool,
    max_event_bytes: usize,
}

impl ByteGuard {
    pub(crate) fn new(max_event_bytes: usize) -> Self {
        Self {
            carry: Vec::new(),
            event_bytes: 0,
            line_bytes: 0,
            last_was_cr: false,
            max_event_bytes,
        }
    }

    /// Checks and repairs one network chunk.
    pub(crate) fn push(&mut self, chunk: Bytes) -> Result<Bytes, LlmError> {
        self.count(&chunk)?;
        if self.carry.is_empty() && std::str::from_utf8(&chunk).is_ok() {
            return Ok(chunk);
        }
        let mut input = std::mem::take(&mut self.carry);
        input.extend_from_slice(&chunk);
        let mut out = Vec::with_capacity(input.len());
        let mut rest: &[u8] = &input;
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    out.extend_from_slice(valid.as_bytes());
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.extend_from_slice(valid);
                    match e.error_len() {
                        Some(bad) => {
                            out.extend_from_slice("\u{FFFD}".as_bytes());
                            rest = &after[bad..];
                        }
                        None => {
                            // An incomplete sequence at the end: wait for the rest.
                            self.carry.extend_from_slice(after);
                            break;
                        }
                    }
                }
            }
        }
        Ok(Bytes::from(out))
    }

    /// At end of body: a dangling partial sequence becomes U+FFFD.
    pub(crate) fn finish(&mut self) -> Option<Bytes> {
        if self.carry.is_empty() {
            None
        } else {
            self.carry.clear();
            Some(Bytes::from_static("\u{FFFD}".as_bytes()))
        }
    }

    fn count(&mut self, chunk: &[u8]) -> Result<(), LlmError> {
        for &b in chunk {
            match b {
                b'\n' if self.last_was_cr => self.last_was_cr = false,
                b'\n' | b'\r' => {
                    if self.line_bytes == 0 {
                        self.event_bytes = 0;
                    }
                    self.line_bytes = 0;
                    self.last_was_cr = b == b'\r';
                }
                _ => {
                    self.last_was_cr = false;
                    self.line_bytes += 1;
                    self.event_bytes += 1;
                    if self.event_bytes > self.max_event_bytes {
                        return Err(LlmError::EventTooLarge {
                            limit: self.max_event_bytes,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Wraps a body in the [`ByteGuard`] and the SSE parser.
pub(crate) fn guarded(source: ByteSource, max_event_bytes: usize) -> SseSource {
    let mut guard = ByteGuard::new(max_event_bytes);
    let mut failed = false;
    let checked = source
        .map(Some)
        .chain(futures_util::stream::iter([None]))
        .filter_map(move |item| {
            let out = if failed {
                None
            } else {
                match item {
                    Some(Ok(bytes)) => {
                        let r = guard.push(bytes);
                        failed = r.is_err();
                        Some(r)
                    }
                    Some(Err(e)) => {
                        failed = true;
                        Some(Err(e))
                    }
                    None => guard.finish().map(Ok),
                }
            };
            std::future::ready(out)
        });
    let boxed: ByteSource = Box::pin(checked);
    boxed.eventsource()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_bytes_are_replaced_and_split_sequences_kept() {
        let mut g = ByteGuard::new(1 << 20);
        let euro = "€".as_bytes();
        let a = g.push(Bytes::from(vec![b'a', euro[0]])).unwrap();
        let b = g
            .push(Bytes::from(vec![euro[1], euro[2], 0xff, b'b']))
            .unwrap();
        let mut all = a.to_vec();
        all.extend_from_slice(&b);
        assert_eq!(String::from_utf8(all).unwrap(), "a€\u{FFFD}b");
    }

    #[test]
    fn event_cap_counts_until_the_blank_line() {
        let mut g = ByteGuard::new(10);
        assert!(g.push(Bytes::from_static(b"data: 1234\n\n")).is_ok());
        assert!(
            g.push(Bytes::from_static(b"data: 1234\r\n\r\ndata: 12"))
                .is_ok()
        );
        let err = g.push(Bytes::from_static(b"3456789\n")).unwrap_err();
        assert!(matches!(err, LlmError::EventTooLarge { limit: 10 }));
    }
}
