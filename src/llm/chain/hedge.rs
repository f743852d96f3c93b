//! When to hedge: a fixed delay, or a provider's observed quantile of time to
//! first output over a sliding window.

use std::collections::VecDeque;
use std::time::Duration;

/// Whether and when a chain starts the same request on its next provider
/// while the first useful output is late. The first useful output wins; the
/// other request is cancelled at once and its usage reported as hedge cost.
/// A stream hedges at most once, and never after output was published.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum Hedging {
    /// Never (the default).
    #[default]
    Off,
    /// After a fixed delay from the request's start.
    After(Duration),
    /// After the provider's observed quantile of time to first output.
    Adaptive(AdaptiveHedge),
}

/// Adaptive hedging: the delay is a quantile (p95 by default) of the times to
/// first output the provider showed over its last `window` answered requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveHedge {
    /// The quantile, in `0.0..=1.0` (default 0.95).
    pub quantile: f64,
    /// Answered requests remembered per provider (default 200).
    pub window: usize,
    /// Samples needed before the quantile is trusted (default 20).
    pub min_samples: usize,
    /// The delay until then (default 1 s).
    pub initial_delay: Duration,
    /// The shortest delay, whatever the quantile says (default 50 ms).
    pub min_delay: Duration,
}

impl Default for AdaptiveHedge {
    fn default() -> Self {
        Self {
            quantile: 0.95,
            window: 200,
            min_samples: 20,
            initial_delay: Duration::from_secs(1),
            min_delay: Duration::from_millis(50),
        }
    }
}

/// Times to first output of one provider's recent requests.
#[derive(Debug, Default)]
pub(crate) struct LatencyWindow {
    samples: VecDeque<Duration>,
}

/// Cap on remembered samples, whatever the configuration asks.
const MAX_WINDOW: usize = 10_000;

impl LatencyWindow {
    pub(crate) fn record(&mut self, sample: Duration, window: usize) {
        let window = window.clamp(1, MAX_WINDOW);
        while self.samples.len() >= window {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// The `q` quantile (nearest rank), if any sample was seen.
    pub(crate) fn quantile(&self, q: f64) -> Option<Duration> {
        if self.samples.is_empty() {
            return None;
        }
        let mut sorted: Vec<Duration> = self.samples.iter().copied().collect();
        sorted.sort_unstable();
        let q = if q.is_finite() {
            q.clamp(0.0, 1.0)
        } else {
            0.95
        };
        let rank = ((sorted.len() as f64) * q).ceil() as usize;
        Some(sorted[rank.clamp(1, sorted.len()) - 1])
    }

    /// The hedge delay for `config`.
    pub(crate) fn delay(&self, config: &AdaptiveHedge) -> Duration {
        let observed = if self.samples.len() >= config.min_samples.max(1) {
            self.quantile(config.quantile)
        } else {
            None
        };
        observed
            .unwrap_or(config.initial_delay)
            .max(config.min_delay)
    }

    pub(crate) fn window(hedging: &Hedging) -> usize {
        match hedging {
            Hedging::Adaptive(a) => a.window,
            _ => AdaptiveHedge::default().window,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p95_over_a_sliding_window() {
        let mut w = LatencyWindow::default();
        let config = AdaptiveHedge {
            window: 100,
            min_samples: 10,
            ..AdaptiveHedge::default()
        };
        assert_eq!(w.delay(&config), Duration::from_secs(1));
        for ms in 1..=100 {
            w.record(Duration::from_millis(ms), config.window);
        }
        assert_eq!(w.quantile(0.95), Some(Duration::from_millis(95)));
        assert_eq!(w.delay(&config), Duration::from_millis(95));
        // Old samples leave the window.
        for _ in 0..100 {
            w.record(Duration::from_millis(10), config.window);
        }
        assert_eq!(w.delay(&config), Duration::from_millis(50), "min_delay");
    }
}
