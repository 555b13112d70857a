//! Waiting for convergence without fixed sleeps.
//!
//! [`eventually`] retries a check until it passes or the patience runs out;
//! the patience comes from `SWITCHYARD_TEST_PATIENCE_MS` (default 10 s) so a
//! slow machine (a TCG virtual machine) can ask for more.

use std::future::Future;
use std::time::{Duration, Instant};

/// The environment variable that sets the default patience, in milliseconds.
pub const PATIENCE_ENV: &str = "SWITCHYARD_TEST_PATIENCE_MS";
const DEFAULT_PATIENCE: Duration = Duration::from_secs(10);

/// The patience: `SWITCHYARD_TEST_PATIENCE_MS`, or 10 s.
pub fn patience() -> Duration {
    std::env::var(PATIENCE_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_PATIENCE)
}

/// Scales a scenario's bound by the patience (a bound written for the
/// default 10 s patience stretches on a slower machine).
pub fn scaled(bound: Duration) -> Duration {
    let factor = patience().as_secs_f64() / DEFAULT_PATIENCE.as_secs_f64();
    bound.mul_f64(factor.max(1.0))
}

/// How an [`eventually`] ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Waited<T, E> {
    /// The last result: `Ok` once the check passed, the last `Err` otherwise.
    pub result: Result<T, E>,
    pub attempts: u32,
    pub elapsed: Duration,
}

/// Runs `check` until it returns `Ok` or `within` has passed (at least one
/// attempt, then retries spaced by a short, growing pause).
pub async fn eventually<T, E, F, Fut>(within: Duration, mut check: F) -> Waited<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(20);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let result = check().await;
        if result.is_ok() || start.elapsed() >= within {
            return Waited { result, attempts, elapsed: start.elapsed() };
        }
        tokio::time::sleep(pause.min(within.saturating_sub(start.elapsed()))).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn retries_until_ok() {
        let n = AtomicU32::new(0);
        let w = eventually(Duration::from_secs(5), || {
            let k = n.fetch_add(1, Ordering::SeqCst);
            async move { if k >= 2 { Ok(k) } else { Err("not yet") } }
        })
        .await;
        assert_eq!(w.result, Ok(2));
        assert_eq!(w.attempts, 3);
    }

    #[tokio::test]
    async fn gives_up_with_the_last_error() {
        let w: Waited<(), &str> = eventually(Duration::from_millis(50), || async { Err("never") }).await;
        assert_eq!(w.result, Err("never"));
        assert!(w.attempts >= 1);
    }
}
