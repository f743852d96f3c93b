//! Reading a session bus.

use tokio::sync::broadcast;

use super::BusEvent;

/// Why [`BusReceiver::recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusRecvError {
    /// The subscriber fell behind and `missed` events were dropped for it. The
    /// next `recv` continues with the oldest event still held.
    #[error("subscriber lagged: {missed} events missed")]
    Lagged {
        /// Number of events this subscriber will never see.
        missed: u64,
    },
    /// The session ended.
    #[error("bus closed")]
    Closed,
}

/// A subscription to a [`SessionBus`](super::SessionBus).
#[derive(Debug)]
pub struct BusReceiver {
    rx: broadcast::Receiver<BusEvent>,
}

impl BusReceiver {
    pub(crate) fn new(rx: broadcast::Receiver<BusEvent>) -> Self {
        Self { rx }
    }

    /// The next event. A lag is reported once, counted in
    /// `colloquy_bus_lagged_events_total`, and reading continues.
    pub async fn recv(&mut self) -> Result<BusEvent, BusRecvError> {
        self.rx.recv().await.map_err(Self::map)
    }

    /// The next event if one is ready; `Ok(None)` when none is.
    pub fn try_recv(&mut self) -> Result<Option<BusEvent>, BusRecvError> {
        match self.rx.try_recv() {
            Ok(e) => Ok(Some(e)),
            Err(broadcast::error::TryRecvError::Empty) => Ok(None),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Err(Self::lagged(n)),
            Err(broadcast::error::TryRecvError::Closed) => Err(BusRecvError::Closed),
        }
    }

    fn lagged(missed: u64) -> BusRecvError {
        metrics::counter!("colloquy_bus_lagged_events_total").increment(missed);
        tracing::warn!(missed, "bus subscriber lagged");
        BusRecvError::Lagged { missed }
    }

    fn map(e: broadcast::error::RecvError) -> BusRecvError {
        match e {
            broadcast::error::RecvError::Lagged(n) => Self::lagged(n),
            broadcast::error::RecvError::Closed => BusRecvError::Closed,
        }
    }
}
