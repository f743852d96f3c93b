//! Hand-over and close: a drain stops the worker taking sessions, lets each
//! session's live turn finish up to the drain timeout, stores its final
//! checkpoint and releases its ownership record, so another worker claims it
//! at once; a close ends a session for good, deleting its record and its
//! checkpoint.

use serde_json::json;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::driver::Driver;
use super::{Control, DrainReport, Lost, Worker};
use crate::bus::BusRecvError;
use crate::cluster::ClusterError;
use crate::cluster::lease::{LeaseState, StoreError};
use crate::cluster::wire::WorkerEventName;

impl Worker {
    /// Stops taking sessions (placements and claims), lets turns in flight
    /// finish up to the drain timeout (then cancels and commits them), stores
    /// each session's final checkpoint and releases its ownership record, so
    /// another worker claims it at once.
    pub async fn drain(&self) -> DrainReport {
        // No admission from now on; those in progress end first, so every
        // session admitted is in the set handed over below.
        let admitted = self.inner.admission.drain();
        self.inner.changed.notify_one();
        #[cfg(test)]
        crate::cluster::test_hooks::at(&self.inner.config.name, "drain_started").await;
        admitted.await;
        let deadline = Instant::now() + self.inner.config.drain_timeout;
        let waits: Vec<_> = self
            .inner
            .sessions
            .iter()
            .map(|e| {
                let (done, rx) = oneshot::channel();
                let _ = e.control.send(Control::HandOver { deadline, done });
                rx
            })
            .collect();
        let mut report = DrainReport::default();
        for r in futures_util::future::join_all(waits).await {
            match r {
                Ok(Ok(cut)) => {
                    report.handed_over += 1;
                    report.cut_at_timeout += usize::from(cut);
                }
                _ => report.failed += 1,
            }
        }
        metrics::counter!("colloquy_cluster_handovers_total").increment(report.handed_over as u64);
        tracing::info!(worker = %self.inner.config.name, ?report, "drained");
        report
    }

    /// Waits for SIGTERM or SIGINT (Ctrl-C), then [drains](Worker::drain).
    pub async fn drain_on_signal(&self) -> std::io::Result<DrainReport> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => {}
                r = tokio::signal::ctrl_c() => r?,
            }
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c().await?;
        Ok(self.drain().await)
    }

    /// Drains, then stops the worker.
    pub async fn shutdown(self) -> DrainReport {
        let report = self.drain().await;
        self.abort().await;
        report
    }
}

impl Driver {
    /// Drains this session: lets the turn in flight finish (until
    /// `deadline`; a speculation is not waited for), stops taking inputs, stops the session (a turn still in
    /// flight is cancelled and committed), stores the final checkpoint and
    /// releases the lease. Returns whether a turn was cut at the deadline.
    pub(super) async fn hand_over(&mut self, deadline: Instant) -> Result<bool, Lost> {
        let mut cut = false;
        loop {
            if !self.live_turn_open() {
                // Idle (or only speculating): no more inputs; inputs already
                // received are handled before the context read answers.
                self.stop_inputs();
                let _ = self.handle.context().await;
                if !self.live_turn_open() {
                    break;
                }
            }
            tokio::select! {
                event = self.bus.recv() => match event {
                    Ok(ev) => self.forward(ev).await?,
                    Err(BusRecvError::Lagged { missed }) => self.worker_event(WorkerEventName::Lagged, json!({"missed": missed})).await,
                    Err(_) => break,
                },
                _ = Self::fenced(&mut self.epochs, self.epoch) => return Err(Lost),
                _ = tokio::time::sleep_until(deadline) => {
                    cut = self.live_turn_open();
                    break;
                }
            }
        }
        self.stop_inputs();
        let _ = self.inner.supervisor.stop_session(&self.id).await;
        self.forward_rest().await?;
        self.committed_turn = self.committed_turn.max(self.started_turn);
        self.flush().await?;
        let mut released = self.record.clone();
        released.state = LeaseState::Released;
        match self
            .inner
            .store
            .cas_lease(&self.key, &released, self.record_rev)
            .await
        {
            Ok(_) => Ok(cut),
            Err(StoreError::Conflict) => Err(Lost),
            // Claimed once this worker's heartbeat stops.
            Err(_) => Ok(cut),
        }
    }

    /// Whether a live turn is generating. A speculation is not a reply anyone
    /// heard: a drain does not wait for it (stopping the session drops it).
    fn live_turn_open(&self) -> bool {
        self.handle.bus().live_turn_open()
    }

    /// Forwards what is left on the bus of a stopped session.
    async fn forward_rest(&mut self) -> Result<(), Lost> {
        loop {
            match self.bus.recv().await {
                Ok(ev) => self.forward(ev).await?,
                Err(BusRecvError::Lagged { missed }) => {
                    self.worker_event(WorkerEventName::Lagged, json!({"missed": missed}))
                        .await
                }
                Err(_) => return Ok(()),
            }
        }
    }

    /// Ends the session for good: stops it, publishes `session_ended` with
    /// `reason` (`closed`, `idle_timeout`, `max_lifetime`), and deletes its
    /// ownership record and checkpoint.
    ///
    /// The worker's heartbeat goes on meanwhile, so a close slower than the
    /// lease time is never claimed midway; and the record is deleted before
    /// the checkpoint, so no worker finds a record without a checkpoint (one
    /// that does deletes the record: see `claim`). A crash between the two
    /// leaves a checkpoint without a record: never resumed, overwritten by
    /// the next placement of the id.
    pub(super) async fn close(&mut self, reason: &'static str) -> Result<(), ClusterError> {
        self.stop_inputs();
        let _ = self.inner.supervisor.stop_session(&self.id).await;
        let _ = self.forward_rest().await;
        #[cfg(test)]
        crate::cluster::test_hooks::at(&self.inner.config.name, "closing").await;
        self.worker_event(WorkerEventName::SessionEnded, json!({"reason": reason}))
            .await;
        if *self.epochs.borrow() != self.epoch {
            return Err(ClusterError::LeaseLost(self.id.clone()));
        }
        self.inner
            .store
            .delete_lease(&self.key, self.record_rev)
            .await
            .map_err(ClusterError::from)?;
        self.inner
            .store
            .delete_checkpoint(&self.key)
            .await
            .map_err(ClusterError::from)
    }
}
