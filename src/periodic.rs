//! The timer behind every background refresh loop (serving certificate, Vault token, trust
//! bundle): ticks at a fixed period, never bursts after a stall, and ends on shutdown.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};

pub struct Ticker {
    interval: Interval,
    shutdown: watch::Receiver<bool>,
}

impl Ticker {
    /// The first tick comes immediately.
    pub fn new(period: Duration, shutdown: watch::Receiver<bool>) -> Self {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self { interval, shutdown }
    }

    /// Waits for the next tick; `false` once shutdown is signalled (or its sender is gone).
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = self.interval.tick() => true,
            _ = self.shutdown.changed() => false,
        }
    }
}
