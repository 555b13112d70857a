//! The bounded-frequency sync runner, after kube-proxy's
//! `runner/bounded_frequency_runner.go`: a sync runs when asked, but at most
//! once per min-sync-period; a full resync runs every sync-period; a failed
//! sync is retried with exponential backoff and the next attempt is full.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};

/// Timing of the runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncRunnerConfig {
    /// At most one sync per this period (`--iptables-min-sync-period`, default 1 s).
    pub min_sync_period: Duration,
    /// A full resync at least this often (`--iptables-sync-period`, default 30 s).
    pub sync_period: Duration,
    /// First retry delay after a failure; doubles up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl Default for SyncRunnerConfig {
    fn default() -> Self {
        SyncRunnerConfig {
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// The result of one sync attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncResult {
    /// Programmed; `full` when everything was reconciled.
    Synced { full: bool },
    /// Nothing to do, or not allowed yet (initial lists incomplete).
    Skipped,
    /// Failed; retried with backoff, and the retry is full.
    Failed,
}

/// Asks the runner for a sync; cheap to clone. Requests made while a sync
/// runs are remembered and served after it.
#[derive(Clone, Debug, Default)]
pub struct SyncTrigger(Arc<Notify>);

impl SyncTrigger {
    pub fn request(&self) {
        self.0.notify_one();
    }
}

/// The runner loop.
#[derive(Debug)]
pub struct SyncRunner {
    config: SyncRunnerConfig,
    trigger: SyncTrigger,
}

impl SyncRunner {
    pub fn new(config: SyncRunnerConfig) -> Self {
        SyncRunner { config, trigger: SyncTrigger::default() }
    }

    /// Builds a runner around an existing trigger.
    pub fn with_trigger(config: SyncRunnerConfig, trigger: SyncTrigger) -> Self {
        SyncRunner { config, trigger }
    }

    pub fn trigger(&self) -> SyncTrigger {
        self.trigger.clone()
    }

    /// Runs until `shutdown` completes. `sync(full)` performs one attempt; the
    /// first attempt happens at once and is full.
    pub async fn run<F, Fut>(self, mut sync: F, shutdown: impl Future<Output = ()>)
    where
        F: FnMut(bool) -> Fut,
        Fut: Future<Output = SyncResult>,
    {
        let cfg = self.config;
        tokio::pin!(shutdown);
        // Before any full sync, the periodic attempt counts from the start or
        // the last skipped attempt (initial lists incomplete).
        let mut unsynced_since = Instant::now();
        let mut last_attempt: Option<Instant> = None;
        let mut last_full: Option<Instant> = None;
        let mut retry: Option<(Instant, Duration)> = None;
        let mut force_full = true;
        let mut requested = true;
        loop {
            if !requested {
                // While retrying, the retry (which is full) replaces the periodic resync.
                let deadline = match retry {
                    Some((at, _)) => at,
                    // Also before the first full sync: a lost request must
                    // not leave the kernel empty until the next event.
                    None => last_full.unwrap_or(unsynced_since) + cfg.sync_period,
                };
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = self.trigger.0.notified() => {}
                    _ = sleep_until(deadline) => {}
                }
            }
            requested = false;
            if let Some(t) = last_attempt {
                let earliest = t + cfg.min_sync_period;
                if Instant::now() < earliest {
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = sleep_until(earliest) => {}
                    }
                }
            }
            // The sync about to run serves every request made until now: drop a
            // permit stored by requests that arrived while we waited (Notify
            // keeps one even after waking us).
            let _ = self.trigger.0.notified().now_or_never();
            let now = Instant::now();
            last_attempt = Some(now);
            let full = force_full || last_full.is_none_or(|t| now >= t + cfg.sync_period);
            match sync(full).await {
                SyncResult::Synced { full: did_full } => {
                    retry = None;
                    if did_full {
                        last_full = Some(now);
                        force_full = false;
                    }
                }
                SyncResult::Skipped => {
                    if last_full.is_none() {
                        unsynced_since = now;
                    }
                }
                SyncResult::Failed => {
                    force_full = true;
                    let backoff = retry.map_or(cfg.retry_initial, |(_, b)| (b * 2).min(cfg.retry_max));
                    retry = Some((Instant::now() + backoff, backoff));
                }
            }
        }
    }
}
