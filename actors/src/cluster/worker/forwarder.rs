//! The forwarder: a session's bus events published on its events subjects
//! (one per [`EventClass`]) in bus order, numbered for the wire (turns global
//! across owners, seq numbers fenced by generation), with the worker's own
//! events between them; and the bookkeeping of turns that makes "committed
//! means durable" hold: a turn's normal end is published only once the
//! history holding it is stored. A turn's start is stored right after it is
//! announced, not before: no store round trip delays a turn start, and a new
//! owner after a failover numbers its turns past one the checkpoint may not
//! name (see `start_local`), so no turn number is used twice.
//!
//! Events already queued on the bus are taken together and batched (see
//! `batch`); a class the session does not publish is never encoded.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use super::batch::{self, MAX_BATCH_BYTES, MAX_TAKEN};
use super::driver::Driver;
use super::{Lost, SEQ_STRIDE};
use crate::bus::{BusEvent, BusRecvError, EventKind, SpeculationOutcome, TurnEnd};
use crate::cluster::lease::{Checkpoint, StoreError};
use crate::cluster::wire::{self, EventClass, WORKER_LOST, WorkerEventName};
use crate::ids::TurnId;

impl Driver {
    /// The wire's turn number of a local turn.
    fn global_turn(&self, local: TurnId) -> u64 {
        self.turn_base + local.0
    }

    /// Publishes `first` and every event queued behind it on the bus, in bus
    /// order (a cut's queued turn text dropped), batched; nothing is held
    /// back when this returns.
    pub(super) async fn forward(&mut self, first: BusEvent) -> Result<(), Lost> {
        let mut taken = vec![first];
        let mut lagged = None;
        while taken.len() < MAX_TAKEN {
            match self.bus.try_recv() {
                Ok(Some(ev)) => taken.push(ev),
                Ok(None) | Err(BusRecvError::Closed) => break,
                Err(BusRecvError::Lagged { missed }) => {
                    lagged = Some(missed);
                    break;
                }
                // Kinds added later: the next `recv` reports them.
                #[allow(unreachable_patterns)]
                Err(_) => break,
            }
        }
        let dropped = batch::drop_cut_text(&mut taken);
        if dropped > 0 {
            metrics::counter!("colloquy_cluster_cut_events_dropped_total")
                .increment(dropped as u64);
        }
        for ev in taken {
            self.forward_one(ev).await?;
        }
        self.flush_batch().await;
        if let Some(missed) = lagged {
            self.worker_event(WorkerEventName::Lagged, json!({"missed": missed}))
                .await;
        }
        Ok(())
    }

    /// One bus event, with the stores the durability rules need around it.
    async fn forward_one(&mut self, ev: BusEvent) -> Result<(), Lost> {
        let turn = self.global_turn(ev.turn);
        match &ev.kind {
            // A turn starts when its TurnStarted goes out (a promoted
            // speculation's comes right after its `hit`): every earlier turn
            // is committed (the ledger begins no turn while one waits for its
            // commit). It goes out first, then the store learns it began (so a
            // new owner ends it as failed); what follows it waits for that.
            EventKind::TurnStarted if turn > self.started_turn => {
                self.committed_turn = self.committed_turn.max(turn - 1);
                self.started_turn = turn;
                self.publish_bus(&ev, turn).await;
                return self.flush().await;
            }
            // A speculation nobody heard is over: it did not start (a
            // failover must not end it as failed), nothing of it is in the
            // history, and its number is used (a resumed session starts
            // after it).
            EventKind::SpeculationEnded { outcome, .. }
                if *outcome != SpeculationOutcome::Hit
                    && turn > self.started_turn.max(self.committed_turn) =>
            {
                self.committed_turn = turn;
                self.flush().await?;
            }
            _ => {}
        }
        let (normal_end, cut) = match &ev.kind {
            EventKind::TurnFinished(end) => (!end.is_abort(), end.is_abort()),
            EventKind::Interrupted { .. } => (false, true),
            _ => (false, false),
        };
        if normal_end {
            // Committed means durable: the turn's end is published once the
            // history holding it is stored.
            self.commit_barrier(turn).await?;
        }
        self.publish_bus(&ev, turn).await;
        if cut {
            // Cuts are published first (no stale word reaches a speaker), then stored.
            self.commit_barrier(turn).await?;
        }
        Ok(())
    }

    /// Waits until the actor committed `turn` (a context read is answered
    /// after the actor reconciled), then stores the checkpoint.
    async fn commit_barrier(&mut self, turn: u64) -> Result<(), Lost> {
        self.flush_batch().await;
        let _ = self.handle.context().await;
        self.committed_turn = self.committed_turn.max(turn);
        self.flush().await
    }

    /// Publishes the batch (nothing when it is empty).
    pub(super) async fn flush_batch(&mut self) {
        if let Some((class, bytes, events)) = self.batch.take() {
            self.send(class, bytes, events).await;
        }
    }

    /// Publishes one message of `events` encoded events on the subject of `class`.
    async fn send(&mut self, class: EventClass, bytes: Bytes, events: u64) {
        self.inner.count_encoded(class, events);
        let subject = self.subjects[class as usize].clone();
        if let Err(e) = self.inner.nats.publish(subject, bytes).await {
            tracing::warn!(session = %self.id, error = %e, "event not published");
        }
    }

    /// Publishes an event of the worker's own at `seq` (after the batch).
    async fn publish(&mut self, turn: u64, seq: u64, kind: WorkerEventName, payload: Value) {
        self.flush_batch().await;
        let bytes = wire::encode_event(
            self.id.as_str(),
            turn,
            seq,
            &self.inner.config.name,
            kind.as_str(),
            payload,
        );
        self.send(EventClass::Lifecycle, Bytes::from(bytes), 1)
            .await;
    }

    /// Adds a bus event at its wire seq to the batch (the next worker event
    /// goes right after it); an event of a class the session does not
    /// publish only takes its number.
    async fn publish_bus(&mut self, ev: &BusEvent, turn: u64) {
        let seq = self.seq_base + SEQ_STRIDE * ev.seq;
        self.last_wire = seq;
        let class = EventClass::of(&ev.kind);
        if !self.published.contains(class) {
            return;
        }
        let max_bytes = MAX_BATCH_BYTES.min(self.max_batch_bytes);
        if self.batch.must_flush_before(class, max_bytes) {
            self.flush_batch().await;
        }
        let buf = self.batch.next_line(class);
        wire::encode_bus_into(
            buf,
            self.id.as_str(),
            turn,
            seq,
            &self.inner.config.name,
            &ev.kind,
        );
    }

    /// An event of the worker's own (between two bus events' seq numbers;
    /// dropped when no number is left before the next bus event).
    pub(super) async fn worker_event(&mut self, kind: WorkerEventName, payload: Value) {
        let seq = self.last_wire + 1;
        if (seq - self.seq_base).is_multiple_of(SEQ_STRIDE) {
            tracing::debug!(session = %self.id, kind = kind.as_str(), "worker event dropped: no seq left");
            return;
        }
        self.last_wire = seq;
        let turn = self.turn_base + self.handle.bus().current_turn().0.0;
        self.publish(turn, seq, kind, payload).await;
    }

    /// The first events of a resumed session: the turn that was in flight
    /// ends as failed, then `resumed` names the last committed turn.
    pub(super) async fn announce_resume(&mut self, previous: Option<String>) {
        if self.started_turn > self.committed_turn {
            let seq = self.seq_base + 1;
            self.last_wire = seq;
            let end = EventKind::TurnFinished(TurnEnd::Failed(Arc::from(WORKER_LOST)));
            let mut bytes = Vec::new();
            wire::encode_bus_into(
                &mut bytes,
                self.id.as_str(),
                self.started_turn,
                seq,
                &self.inner.config.name,
                &end,
            );
            self.send(EventClass::Lifecycle, Bytes::from(bytes), 1)
                .await;
        }
        let payload = json!({
            "last_committed_turn": self.committed_turn,
            "previous_worker": previous,
        });
        self.last_wire = self.seq_base + 2;
        self.publish(
            self.turn_base,
            self.seq_base + 2,
            WorkerEventName::Resumed,
            payload,
        )
        .await;
        // The turn that was in flight is over: it counts as committed (failed,
        // nothing of it in the history).
        self.committed_turn = self.turn_base;
    }

    /// The checkpoint of the latest committed context.
    fn record(&mut self) -> Checkpoint {
        Checkpoint {
            v: 1,
            session: self.id.as_str().to_string(),
            worker: self.inner.config.name.clone(),
            generation: self.generation,
            spec: super::lock(&self.spec).clone(),
            context: (**self.checkpoints.borrow_and_update()).clone(),
            committed_turn: self.committed_turn,
            started_turn: self.started_turn,
            // Every number up to this owner's base was taken before it.
            turn_floor: self.turn_base,
        }
    }

    /// Stores the latest committed context (compare-and-set on our last
    /// revision). Transient failures are retried until they pass (the
    /// forwarder waits: nothing is announced that is not stored); a refused
    /// compare-and-set means another worker owns the session.
    pub(super) async fn flush(&mut self) -> Result<(), Lost> {
        // What was published before the store waits for nothing.
        self.flush_batch().await;
        let record = self.record();
        let bytes = match self.inner.store.encode_checkpoint(&self.key, &record) {
            Ok(b) => b,
            Err(StoreError::TooLarge { bytes, max_bytes }) => {
                if self.too_large != Some(bytes) {
                    self.too_large = Some(bytes);
                    metrics::counter!("colloquy_cluster_checkpoint_too_large_total").increment(1);
                    tracing::error!(session = %self.id, bytes, max_bytes,
                        "checkpoint larger than the server's maximum message size: not stored");
                    self.worker_event(
                        WorkerEventName::CheckpointTooLarge,
                        json!({"bytes": bytes, "max_bytes": max_bytes}),
                    )
                    .await;
                }
                // Not stored, and never will be: what waits for the store
                // waits no longer (the session runs without a durable copy).
                self.durable.send_replace(self.committed_turn);
                return Ok(());
            }
            Err(e) => {
                tracing::error!(session = %self.id, error = ?e, "checkpoint not encoded");
                return Ok(());
            }
        };
        #[cfg(test)]
        crate::cluster::test_hooks::at(&self.inner.config.name, "checkpoint").await;
        let mut backoff = Duration::from_millis(20);
        loop {
            match self
                .inner
                .store
                .cas_checkpoint(&self.key, bytes.clone(), self.checkpoint_rev)
                .await
            {
                Ok(rev) => {
                    self.checkpoint_rev = rev;
                    self.durable.send_replace(record.committed_turn);
                    metrics::counter!("colloquy_cluster_checkpoint_writes_total").increment(1);
                    return Ok(());
                }
                Err(StoreError::Conflict) => {
                    // Our own write may have landed although its ack was lost.
                    match self.inner.store.read_checkpoint(&self.key).await {
                        Ok(Some((cp, rev))) if cp.generation == self.generation => {
                            self.checkpoint_rev = rev;
                        }
                        // Another owner's checkpoint.
                        Ok(Some(_)) => return Err(Lost),
                        // Deleted, or replaced by a value that does not
                        // decode or verify: not ours any more, and retrying
                        // cannot change that. This copy stops; the record is
                        // released for a claimer to settle.
                        Ok(None) | Err(StoreError::Invalid(_) | StoreError::Unverified(_)) => {
                            self.checkpoint_gone = true;
                            return Err(Lost);
                        }
                        Err(_) => tokio::time::sleep(backoff).await,
                    }
                }
                Err(e) => {
                    metrics::counter!("colloquy_cluster_checkpoint_write_errors_total")
                        .increment(1);
                    tracing::warn!(session = %self.id, error = ?e, "checkpoint not stored; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
    }
}
