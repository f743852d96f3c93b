//! A circuit breaker per provider of a chain.
//!
//! ```text
//!            N consecutive failures            cooldown elapsed: the next
//!   Closed ──────────────────────────▶ Open ───────────────────────────▶ HalfOpen
//!     ▲      (deadline misses count)    ▲    request is the one probe      │
//!     │                                 └──────── the probe fails ─────────┤
//!     └──────────────────── the probe (or any request) answers ────────────┘
//! ```
//!
//! Success is the first useful output of a request (the provider answers);
//! failure is an error, a missed deadline or an empty completion, before or
//! after output. While open, the chain skips the provider; after the cooldown
//! exactly one real request probes it (others still skip it) — no background
//! probe requests. A probe dropped before it decided (a barge-in, a lost hedge
//! race) hands the probe to the next request.
//!
//! Time is tokio's clock, so tests can move it with `tokio::time::advance`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// When a provider's breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures (errors, missed deadlines, empty completions) that
    /// open the breaker (default 3; at least 1).
    pub failure_threshold: u32,
    /// How long an open breaker skips its provider before one request probes
    /// it (default 30 s).
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            cooldown: Duration::from_secs(30),
        }
    }
}

/// A breaker's state, as [`ChatClient::providers`](crate::llm::ChatClient::providers) reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Requests go through.
    Closed {
        /// Failures since the last success.
        consecutive_failures: u32,
    },
    /// Skipped until the cooldown ends.
    Open {
        /// Time left of the cooldown.
        retry_in: Duration,
    },
    /// The cooldown ended: the next request (or the one in flight) probes it.
    HalfOpen {
        /// A probe request is in flight.
        probing: bool,
    },
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn label(&self) -> &'static str {
        match self {
            BreakerState::Closed { .. } => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half_open",
        }
    }

    /// The gauge value: 0 closed, 1 half-open, 2 open.
    fn gauge(&self) -> f64 {
        match self {
            BreakerState::Closed { .. } => 0.0,
            BreakerState::HalfOpen { .. } => 1.0,
            BreakerState::Open { .. } => 2.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed(u32),
    Open(Instant),
    /// The probe in flight, by its id.
    HalfOpen(Option<u64>),
}

#[derive(Debug)]
struct Inner {
    state: State,
    next_probe: u64,
}

/// One provider's breaker, shared by every stream of a client.
#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    label: Arc<str>,
    /// The gauge its state is published on.
    gauge: &'static str,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig, label: Arc<str>) -> Arc<Self> {
        Self::with_gauge(config, label, "colloquy_llm_breaker_state")
    }

    /// A breaker publishing its state on `gauge` (a speech chain's).
    pub(crate) fn with_gauge(
        config: BreakerConfig,
        label: Arc<str>,
        gauge: &'static str,
    ) -> Arc<Self> {
        let b = Arc::new(Self {
            config: BreakerConfig {
                failure_threshold: config.failure_threshold.max(1),
                ..config
            },
            label,
            gauge,
            inner: Mutex::new(Inner {
                state: State::Closed(0),
                next_probe: 1,
            }),
        });
        b.publish(State::Closed(0));
        b
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, state: State) {
        metrics::gauge!(self.gauge, "provider" => self.label.to_string())
            .set(view(state, Instant::now()).gauge());
    }

    fn set(&self, inner: &mut Inner, state: State) {
        if inner.state != state {
            let was = view(inner.state, Instant::now());
            inner.state = state;
            let now = view(state, Instant::now());
            if was.label() != now.label() {
                tracing::info!(provider = %self.label, from = was.label(), to = now.label(), "circuit breaker");
                self.publish(state);
            }
        }
    }

    /// A permit to send a request, or `None` while the breaker is open (or a
    /// probe is in flight).
    pub(crate) fn acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut inner = self.lock();
        match inner.state {
            State::Closed(_) => Some(Permit::normal(self.clone())),
            State::Open(until) if Instant::now() < until => None,
            State::Open(_) | State::HalfOpen(None) => Some(self.probe(&mut inner)),
            State::HalfOpen(Some(_)) => None,
        }
    }

    /// A probe permit even though the breaker is open: every provider of the
    /// chain is open, and trying one beats failing without a request.
    pub(crate) fn force(self: &Arc<Self>) -> Permit {
        let mut inner = self.lock();
        match inner.state {
            State::Closed(_) => Permit::normal(self.clone()),
            _ => self.probe(&mut inner),
        }
    }

    fn probe(self: &Arc<Self>, inner: &mut Inner) -> Permit {
        let id = inner.next_probe;
        inner.next_probe += 1;
        self.set(inner, State::HalfOpen(Some(id)));
        Permit {
            breaker: Some(self.clone()),
            probe: Some(id),
        }
    }

    /// When an open breaker lets a probe through (`None` unless open).
    pub(crate) fn open_until(&self) -> Option<Instant> {
        match self.lock().state {
            State::Open(until) => Some(until),
            _ => None,
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        view(self.lock().state, Instant::now())
    }

    fn success(&self) {
        let mut inner = self.lock();
        self.set(&mut inner, State::Closed(0));
    }

    fn failure(&self, probe: Option<u64>) {
        let mut inner = self.lock();
        let open = State::Open(Instant::now() + self.config.cooldown);
        match inner.state {
            State::Closed(n) if n + 1 >= self.config.failure_threshold => {
                self.set(&mut inner, open)
            }
            State::Closed(n) => self.set(&mut inner, State::Closed(n + 1)),
            State::HalfOpen(Some(id)) if probe == Some(id) => self.set(&mut inner, open),
            // A request sent before the breaker opened: the probe decides.
            State::Open(_) | State::HalfOpen(_) => {}
        }
    }

    fn release(&self, probe: u64) {
        let mut inner = self.lock();
        if inner.state == State::HalfOpen(Some(probe)) {
            self.set(&mut inner, State::HalfOpen(None));
        }
    }
}

fn view(state: State, now: Instant) -> BreakerState {
    match state {
        State::Closed(n) => BreakerState::Closed {
            consecutive_failures: n,
        },
        State::Open(until) => BreakerState::Open {
            retry_in: until.saturating_duration_since(now),
        },
        State::HalfOpen(probe) => BreakerState::HalfOpen {
            probing: probe.is_some(),
        },
    }
}

/// Leave to send one request; reports its outcome to the breaker. A probe
/// dropped without an outcome hands the probe to the next request.
#[derive(Debug)]
pub(crate) struct Permit {
    breaker: Option<Arc<Breaker>>,
    probe: Option<u64>,
}

impl Permit {
    /// A permit of a provider without a breaker.
    pub(crate) fn unguarded() -> Self {
        Self {
            breaker: None,
            probe: None,
        }
    }

    fn normal(breaker: Arc<Breaker>) -> Self {
        Self {
            breaker: Some(breaker),
            probe: None,
        }
    }

    /// The provider answered (its first useful output).
    pub(crate) fn success(&mut self) {
        if let Some(b) = &self.breaker {
            b.success();
        }
        self.probe = None;
    }

    /// The request failed or missed a deadline.
    pub(crate) fn failure(&mut self) {
        if let Some(b) = &self.breaker {
            b.failure(self.probe.take());
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let (Some(b), Some(id)) = (&self.breaker, self.probe) {
            b.release(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32) -> Arc<Breaker> {
        Breaker::new(
            BreakerConfig {
                failure_threshold: threshold,
                cooldown: Duration::from_secs(10),
            },
            Arc::from("p"),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_probes_once() {
        let b = breaker(2);
        b.acquire().unwrap().failure();
        let mut p = b.acquire().unwrap();
        p.success(); // a success resets the count
        b.acquire().unwrap().failure();
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 1
            }
        );
        b.acquire().unwrap().failure();
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        assert!(b.acquire().is_none());
        tokio::time::advance(Duration::from_secs(10)).await;
        let mut probe = b.acquire().expect("the cooldown ended: one probe");
        assert!(b.acquire().is_none(), "only one probe at a time");
        probe.failure();
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = b.acquire().unwrap();
        drop(probe); // cancelled: the next request probes
        assert_eq!(b.state(), BreakerState::HalfOpen { probing: false });
        let mut probe = b.acquire().unwrap();
        probe.success();
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 0
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_failure_does_not_reopen_a_probing_breaker() {
        let b = breaker(1);
        let mut old = b.acquire().unwrap();
        b.acquire().unwrap().failure();
        tokio::time::advance(Duration::from_secs(10)).await;
        let _probe = b.acquire().unwrap();
        old.failure();
        assert_eq!(b.state(), BreakerState::HalfOpen { probing: true });
    }
}
