//! The operator's client-side limit on apiserver requests: a token bucket (`governor`) as a
//! tower layer under kube's client, so a burst of work (10,000 jobs submitted at once, a
//! restart that finds them all) queues in the operator instead of hammering the apiserver.
//!
//! kube's client puts a buffer in front of its service stack; the buffer's worker asks this
//! layer's `poll_ready` before each request, so requests leave at no more than `qps` a second
//! after a first `burst`, in the order they were made. Watches count once, when they open.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tower::{Layer, Service};

use crate::metrics::metrics;

/// Requests a second and the burst above it; `None` from [`Limit::new`] means no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub qps: NonZeroU32,
    pub burst: NonZeroU32,
}

impl Limit {
    /// `qps` 0 turns the limit off; a burst below `qps` is raised to it (a bucket smaller than
    /// one second's worth would lower the rate).
    pub fn new(qps: u32, burst: u32) -> Option<Limit> {
        let qps = NonZeroU32::new(qps)?;
        Some(Limit { qps, burst: NonZeroU32::new(burst.max(qps.get())).unwrap_or(qps) })
    }
}

/// The layer: every service it wraps shares one bucket.
#[derive(Clone)]
pub struct ThrottleLayer {
    limiter: Arc<DefaultDirectRateLimiter>,
}

impl ThrottleLayer {
    pub fn new(limit: Limit) -> Self {
        let quota = Quota::per_second(limit.qps).allow_burst(limit.burst);
        ThrottleLayer { limiter: Arc::new(RateLimiter::direct(quota)) }
    }
}

impl<S> Layer<S> for ThrottleLayer {
    type Service = Throttle<S>;

    fn layer(&self, inner: S) -> Throttle<S> {
        Throttle { inner, limiter: self.limiter.clone(), waiting: None, permitted: false }
    }
}

type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

pub struct Throttle<S> {
    inner: S,
    limiter: Arc<DefaultDirectRateLimiter>,
    /// The wait for a token, with when it began (for the throttled-time metric).
    waiting: Option<(Wait, Instant)>,
    /// A token is held for the next call.
    permitted: bool,
}

impl<S, R> Service<R> for Throttle<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        if !self.permitted {
            if self.waiting.is_none() {
                if self.limiter.check().is_ok() {
                    self.permitted = true;
                } else {
                    let limiter = self.limiter.clone();
                    let wait: Wait = Box::pin(async move { limiter.until_ready().await });
                    self.waiting = Some((wait, Instant::now()));
                }
            }
            if let Some((wait, since)) = &mut self.waiting {
                ready!(wait.as_mut().poll(cx));
                let m = metrics();
                m.kube_throttled_requests.inc();
                m.kube_throttled_seconds.inc_by(since.elapsed().as_secs_f64());
                self.waiting = None;
                self.permitted = true;
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> S::Future {
        // tower's contract: `call` follows a ready `poll_ready`, which took the token.
        self.permitted = false;
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use tower::ServiceExt;

    use super::*;

    #[test]
    fn zero_qps_is_no_limit_and_a_small_burst_is_raised_to_one_seconds_worth() {
        assert_eq!(Limit::new(0, 100), None);
        let l = Limit::new(50, 10).unwrap();
        assert_eq!((l.qps.get(), l.burst.get()), (50, 50));
        let l = Limit::new(50, 100).unwrap();
        assert_eq!((l.qps.get(), l.burst.get()), (50, 100));
    }

    #[tokio::test]
    async fn requests_beyond_the_burst_leave_at_the_rate() {
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = served.clone();
        let inner = tower::service_fn(move |_: ()| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async { Ok::<_, Infallible>(()) }
        });
        let mut svc = ThrottleLayer::new(Limit::new(20, 5).unwrap()).layer(inner);
        let start = std::time::Instant::now();
        // The burst (raised to 20) goes at once; 10 more take about half a second at 20/s.
        for _ in 0..30 {
            svc.ready().await.unwrap().call(()).await.unwrap();
        }
        let took = start.elapsed();
        assert_eq!(served.load(std::sync::atomic::Ordering::Relaxed), 30);
        assert!(took >= Duration::from_millis(400), "30 requests at 20/s after a burst of 20 took {took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }
}
