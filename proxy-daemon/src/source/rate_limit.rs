//! client-go's client-side rate limit, which kube-proxy's
//! `clientConnection.qps` / `burst` (`--kube-api-qps` / `--kube-api-burst`)
//! set: a token bucket holding `burst` tokens, refilled at `qps` per second;
//! every request (a list, a watch's set-up, a get) takes one and waits for
//! one when the bucket is empty. A negative `qps` turns the limit off, as in
//! client-go.
//!
//! Hand-written (60 lines): kube-rs has no limiter, tower's `RateLimit` is a
//! fixed window without a burst (not client-go's behaviour), and `governor`
//! is not in the dependency tree; this is the whole of what is needed.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The bucket, shared by every clone of the service.
#[derive(Debug)]
pub struct TokenBucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket (client-go starts full: the first `burst` requests go at once).
    pub fn new(qps: f64, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket { qps, burst, tokens: burst, last: now }
    }

    /// Takes a token at `now`, or says how long until there is one.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.qps).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.qps))
        }
    }
}

/// The tower layer; `None` inside: no limit (a negative qps).
#[derive(Clone, Debug)]
pub struct RateLimitLayer(Option<Arc<Mutex<TokenBucket>>>);

impl RateLimitLayer {
    pub fn new(qps: f64, burst: u32) -> RateLimitLayer {
        RateLimitLayer((qps > 0.0).then(|| Arc::new(Mutex::new(TokenBucket::new(qps, burst, Instant::now())))))
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService { inner, bucket: self.0.clone(), wait: None, permitted: false }
    }
}

/// Ready once it holds a token (then the inner service's readiness); each
/// call spends the token.
#[derive(Debug)]
pub struct RateLimitService<S> {
    inner: S,
    bucket: Option<Arc<Mutex<TokenBucket>>>,
    wait: Option<Pin<Box<Sleep>>>,
    permitted: bool,
}

impl<S: Clone> Clone for RateLimitService<S> {
    /// A clone shares the bucket, not this one's token or wait.
    fn clone(&self) -> Self {
        RateLimitService { inner: self.inner.clone(), bucket: self.bucket.clone(), wait: None, permitted: false }
    }
}

impl<S, R> tower::Service<R> for RateLimitService<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let Some(bucket) = &self.bucket else { return self.inner.poll_ready(cx) };
        while !self.permitted {
            if let Some(wait) = self.wait.as_mut() {
                if wait.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.wait = None;
            }
            let taken = bucket.lock().unwrap_or_else(|e| e.into_inner()).take(Instant::now());
            match taken {
                Ok(()) => self.permitted = true,
                Err(d) => self.wait = Some(Box::pin(tokio::time::sleep(d))),
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.permitted = false;
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[test]
    fn a_full_bucket_lets_a_burst_through_then_refills_at_qps() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(5.0, 3, t0);
        for _ in 0..3 {
            assert_eq!(b.take(t0), Ok(()));
        }
        assert_eq!(b.take(t0), Err(Duration::from_millis(200)));
        assert_eq!(b.take(t0 + Duration::from_millis(200)), Ok(()));
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(b.take(later), Ok(()));
        }
        assert!(b.take(later).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn requests_beyond_the_burst_wait_for_tokens() {
        let inner = tower::service_fn(|()| async { Ok::<_, std::convert::Infallible>(()) });
        let mut svc = RateLimitLayer::new(10.0, 2).layer(inner);
        let start = Instant::now();
        for _ in 0..5 {
            svc.ready().await.unwrap().call(()).await.unwrap();
        }
        // 2 at once, then 3 at 100 ms intervals (the clock is tokio's, paused).
        assert_eq!(Instant::now() - start, Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_negative_qps_is_no_limit() {
        let inner = tower::service_fn(|()| async { Ok::<_, std::convert::Infallible>(()) });
        let mut svc = RateLimitLayer::new(-1.0, 1).layer(inner);
        let start = Instant::now();
        for _ in 0..100 {
            svc.ready().await.unwrap().call(()).await.unwrap();
        }
        assert_eq!(Instant::now(), start);
    }
}
