//! [`ChatStream`]: the public stream of one chat completion, whatever made it
//! (one provider's request, a provider chain, a replayed body).

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

use super::attempt::{EventStream, replay};
use super::config::StreamLimits;
use super::error::LlmError;
use super::event::{RequestsSent, StreamEvent};
use super::structured::StructuredOutput;

/// A stream of [`StreamEvent`]s for one chat completion.
///
/// Ends after [`StreamEvent::Finished`] or after the first error. Dropping it
/// closes the HTTP connection immediately.
pub struct ChatStream {
    inner: EventStream,
    sent: RequestsSent,
}

impl std::fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatStream")
    }
}

impl Stream for ChatStream {
    type Item = Result<StreamEvent, LlmError>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl ChatStream {
    /// The one constructor: every stream is a boxed event stream, with the
    /// counter its drivers count sent requests on.
    pub(crate) fn new(inner: EventStream, sent: RequestsSent) -> Self {
        Self { inner, sent }
    }

    /// A handle on how many HTTP requests this stream has sent (0 until it
    /// is first polled). Take it before handing the stream to a task: a
    /// round cut before its request went out then needs no usage estimate.
    pub fn requests_sent(&self) -> RequestsSent {
        self.sent.clone()
    }

    /// A stream of events from any source: a backend of your own (a local
    /// model, a gateway with its own protocol), or a test's script. The
    /// events are yielded as they are; it should end with
    /// [`StreamEvent::Finished`] or an error, like every stream. Its
    /// [`requests_sent`](Self::requests_sent) stays 0.
    ///
    /// ```
    /// use colloquy::llm::{ChatStream, StreamEvent, StreamSummary};
    /// use futures_util::StreamExt;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let events = futures_util::stream::iter([
    ///     Ok(StreamEvent::Token("Hi".into())),
    ///     Ok(StreamEvent::Finished(StreamSummary::default())),
    /// ]);
    /// let mut stream = ChatStream::from_events(events);
    /// assert!(matches!(stream.next().await, Some(Ok(StreamEvent::Token(t))) if t == "Hi"));
    /// # }
    /// ```
    pub fn from_events<S>(events: S) -> Self
    where
        S: Stream<Item = Result<StreamEvent, LlmError>> + Send + 'static,
    {
        Self::new(Box::pin(events), RequestsSent::default())
    }

    /// Parses an SSE body from any byte stream (a recorded file, a custom
    /// transport). No timeouts and no retries apply.
    pub fn from_sse_bytes<S>(
        source: S,
        limits: StreamLimits,
        structured: Option<StructuredOutput>,
    ) -> Self
    where
        S: Stream<Item = Result<Bytes, LlmError>> + Send + 'static,
    {
        Self::new(replay(source, limits, structured), RequestsSent::default())
    }
}

/// Entry points for the parse benchmark; not a stable API.
pub mod bench_support {
    use super::ChatStream;
    use crate::llm::config::StreamLimits;
    use bytes::Bytes;
    use futures_util::StreamExt;

    /// Parses an SSE body already in memory, split into the given chunks, and
    /// returns the number of events produced.
    pub async fn parse_chunks(chunks: Vec<Bytes>) -> usize {
        let source = futures_util::stream::iter(chunks.into_iter().map(Ok));
        let mut stream = ChatStream::from_sse_bytes(source, StreamLimits::default(), None);
        let mut n = 0;
        while let Some(ev) = stream.next().await {
            if ev.is_ok() {
                n += 1;
            }
        }
        n
    }
}
