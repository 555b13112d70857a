//! Waiting for convergence without fixed sleeps.
//!
//! A check is retried until it passes or the patience runs out; the patience
//! comes from `SWITCHYARD_TEST_PATIENCE_MS` (default 10 s), so a slow machine
//! (a TCG virtual machine, a loaded CI host) can ask for more. Patience only
//! bounds a failure: a passing check returns at once.
//!
//! - [`poll`]: a bound of the caller's, and the outcome as a value (the
//!   conformance runner reports a timeout as evidence, not a panic);
//! - [`eventually`] (async check), [`eventually_sync`] (plain check in an
//!   async test) and [`eventually_blocking`] (plain test): panic naming what
//!   was awaited and the last answer once the patience runs out.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// The environment variable that sets the patience, in milliseconds.
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

/// Scales a bound written for the default 10 s patience (a scenario's
/// bound stretches on a slower machine; never shrinks).
pub fn scaled(bound: Duration) -> Duration {
    let factor = patience().as_secs_f64() / DEFAULT_PATIENCE.as_secs_f64();
    bound.mul_f64(factor.max(1.0))
}

/// How a [`poll`] ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Waited<T, E> {
    /// The last result: `Ok` once the check passed, the last `Err` otherwise.
    pub result: Result<T, E>,
    pub attempts: u32,
    pub elapsed: Duration,
}

/// Runs `check` until it returns `Ok` or `within` has passed (at least one
/// attempt, then retries spaced by a short, growing pause).
pub async fn poll<T, E, F, Fut>(within: Duration, mut check: F) -> Waited<T, E>
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

/// What a check of [`eventually`] and its siblings may answer: `true`,
/// `Some(value)`, `Ok(value)`, or `(true, value)` pass; anything else is
/// retried, and the last answer is shown when the patience runs out.
pub trait Outcome {
    /// What the wait returns once the check passed.
    type Value;
    /// `Ok(value)` when passed, else the answer to show.
    fn passed(self) -> Result<Self::Value, String>;
}

impl Outcome for bool {
    type Value = ();
    fn passed(self) -> Result<(), String> {
        if self { Ok(()) } else { Err("false".into()) }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn passed(self) -> Result<T, String> {
        self.ok_or_else(|| "None".into())
    }
}

impl<T, E: Debug> Outcome for Result<T, E> {
    type Value = T;
    fn passed(self) -> Result<T, String> {
        self.map_err(|e| format!("{e:?}"))
    }
}

impl<T: Debug> Outcome for (bool, T) {
    type Value = T;
    fn passed(self) -> Result<T, String> {
        if self.0 { Ok(self.1) } else { Err(format!("{:?}", self.1)) }
    }
}

/// The pause between attempts: short at first (a repair measured by the
/// wait stays precise), growing to 50 ms (a slow convergence does not spin).
fn next_pause(pause: Duration) -> Duration {
    (pause * 2).min(Duration::from_millis(50))
}
const FIRST_PAUSE: Duration = Duration::from_millis(5);

fn give_up(within: Duration, what: &str, last: &str) -> ! {
    panic!("not within {within:?} ({PATIENCE_ENV}): {what} (last: {last})")
}

/// Awaits `check` until it passes; panics naming `what` and the last answer
/// once the patience has run out.
pub async fn eventually<O, F, Fut>(what: &str, mut check: F) -> O::Value
where
    O: Outcome,
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
{
    let within = patience();
    let deadline = Instant::now() + within;
    let mut pause = FIRST_PAUSE;
    loop {
        match check().await.passed() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => give_up(within, what, &last),
            Err(_) => {}
        }
        tokio::time::sleep(pause).await;
        pause = next_pause(pause);
    }
}

/// [`eventually`] for a plain (blocking, short) check inside an async test.
pub async fn eventually_sync<O: Outcome>(what: &str, mut check: impl FnMut() -> O) -> O::Value {
    eventually(what, || std::future::ready(check())).await
}

/// [`eventually`] outside any async runtime (a plain `#[test]`).
pub fn eventually_blocking<O: Outcome>(what: &str, check: impl FnMut() -> O) -> O::Value {
    blocking_within(patience(), what, check)
}

fn blocking_within<O: Outcome>(within: Duration, what: &str, mut check: impl FnMut() -> O) -> O::Value {
    let deadline = Instant::now() + within;
    let mut pause = FIRST_PAUSE;
    loop {
        match check().passed() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => give_up(within, what, &last),
            Err(_) => {}
        }
        #[allow(
            clippy::disallowed_methods,
            reason = "the poll pause of a plain test outside any executor: the one blocking wait the rule allows"
        )]
        std::thread::sleep(pause);
        pause = next_pause(pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn poll_retries_until_ok() {
        let n = AtomicU32::new(0);
        let w = poll(Duration::from_secs(5), || {
            let k = n.fetch_add(1, Ordering::SeqCst);
            async move { if k >= 2 { Ok(k) } else { Err("not yet") } }
        })
        .await;
        assert_eq!(w.result, Ok(2));
        assert_eq!(w.attempts, 3);
    }

    #[tokio::test]
    async fn poll_gives_up_with_the_last_error() {
        let w: Waited<(), &str> = poll(Duration::from_millis(50), || async { Err("never") }).await;
        assert_eq!(w.result, Err("never"));
        assert!(w.attempts >= 1);
    }

    #[tokio::test]
    async fn every_kind_of_answer_passes_with_its_value() {
        let mut n = 0;
        let v = eventually_sync("the third try", || {
            n += 1;
            (n >= 3, n)
        })
        .await;
        assert_eq!(v, 3);
        assert_eq!(eventually("some", || async { Some(7) }).await, 7);
        assert_eq!(eventually_blocking("ok", || Ok::<_, String>("x")), "x");
        eventually_blocking("true", || true);
    }

    #[test]
    fn giving_up_names_what_and_the_last_answer() {
        let caught = std::panic::catch_unwind(|| {
            blocking_within(Duration::from_millis(30), "the impossible", || (false, "still no"))
        });
        let msg = caught.err().and_then(|e| e.downcast::<String>().ok()).map(|s| *s).unwrap_or_default();
        assert!(msg.contains("the impossible") && msg.contains("still no"), "{msg}");
    }
}
