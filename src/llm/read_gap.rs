//! The read-gap timer, at the byte level.
//!
//! The read gap is about a silent connection, so it sits on the body's bytes,
//! below the SSE parser: any chunk resets it, SSE comments (the keep-alives
//! OpenRouter sends while a model thinks) included. Deadlines about useful
//! output (the first token) stay at the event level, in the driver.
//!
//! The gap is measured only while someone waits for bytes: a consumer that
//! stops polling (backpressure) does not make the server look silent.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use super::error::LlmError;

/// `now + d`, saturating far in the future instead of overflowing.
pub(crate) fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// Fails with [`LlmError::Stalled`] when the inner stream yields nothing for
/// longer than the gap, then ends.
pub(crate) struct ReadGap<S> {
    inner: S,
    gap: Duration,
    sleep: Pin<Box<Sleep>>,
    /// Whether the timer is armed for the current wait.
    waiting: bool,
    done: bool,
}

impl<S> ReadGap<S> {
    pub(crate) fn new(inner: S, gap: Duration) -> Self {
        Self {
            inner,
            gap,
            sleep: Box::pin(tokio::time::sleep_until(deadline_after(gap))),
            waiting: false,
            done: false,
        }
    }
}

impl<S> Stream for ReadGap<S>
where
    S: Stream<Item = Result<Bytes, LlmError>> + Unpin,
{
    type Item = Result<Bytes, LlmError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if !this.waiting {
            this.sleep.as_mut().reset(deadline_after(this.gap));
            this.waiting = true;
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(item) => {
                this.waiting = false;
                this.done = item.is_none();
                Poll::Ready(item)
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.done = true;
                    Poll::Ready(Some(Err(LlmError::Stalled(this.gap))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn paced(gaps_ms: &'static [u64]) -> impl Stream<Item = Result<Bytes, LlmError>> + Unpin {
        Box::pin(futures_util::stream::iter(gaps_ms).then(|ms| async move {
            tokio::time::sleep(Duration::from_millis(*ms)).await;
            Ok(Bytes::from_static(b":\n\n"))
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn each_chunk_resets_the_gap() {
        let mut s = ReadGap::new(paced(&[90, 90, 90, 90]), Duration::from_millis(100));
        for _ in 0..4 {
            assert!(matches!(s.next().await, Some(Ok(_))));
        }
        assert!(s.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn silence_longer_than_the_gap_stalls_once() {
        let mut s = ReadGap::new(paced(&[50, 150]), Duration::from_millis(100));
        assert!(matches!(s.next().await, Some(Ok(_))));
        let started = Instant::now();
        assert!(matches!(s.next().await, Some(Err(LlmError::Stalled(d))) if d.as_millis() == 100));
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        assert!(s.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_that_pauses_is_not_a_silent_server() {
        let mut s = ReadGap::new(paced(&[0, 50]), Duration::from_millis(100));
        assert!(matches!(s.next().await, Some(Ok(_))));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(matches!(s.next().await, Some(Ok(_))));
    }

    #[test]
    fn huge_gaps_do_not_overflow() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = ReadGap::new(paced(&[]), Duration::MAX);
            assert_eq!(s.collect::<Vec<_>>().await.len(), 0);
        });
    }
}
