//! A token bucket per channel, so a large fan-out never trips a provider's
//! throttle by itself. The send engine takes a token only when it can start
//! the send at once (`try_take`), and otherwise learns when the next one comes:
//! no send waits on a token while holding anything, and no token is spent on a
//! send that the deadline then stops.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// `per_second` sends a second on average, up to `burst` at once after a pause.
    pub fn new(per_second: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            per_second: per_second.max(0.001),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    pub fn per_second(&self) -> f64 {
        self.per_second
    }

    /// Takes a token if one is there now; otherwise answers when the next one
    /// will be (and takes nothing).
    pub fn try_take(&self) -> Result<(), Instant> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = *state;
        let now = Instant::now();
        let refilled =
            (tokens + now.duration_since(last).as_secs_f64() * self.per_second).min(self.burst);
        if refilled >= 1.0 {
            *state = (refilled - 1.0, now);
            Ok(())
        } else {
            *state = (refilled, now);
            Err(now + Duration::from_secs_f64((1.0 - refilled) / self.per_second))
        }
    }
}

/// The limits of each channel; `None` is unlimited.
#[derive(Debug, Default)]
pub struct RateLimits {
    pub email: Option<RateLimiter>,
    pub sms: Option<RateLimiter>,
    pub topic: Option<RateLimiter>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes `n` tokens, sleeping until each is there.
    async fn take(limiter: &RateLimiter, n: usize) {
        for _ in 0..n {
            while let Err(at) = limiter.try_take() {
                tokio::time::sleep_until(at).await;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sends_at_the_rate_after_the_burst() {
        let limiter = RateLimiter::new(10.0, 2);
        let start = Instant::now();
        take(&limiter, 12).await;
        // 2 at once, then 10 more at 10/s.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(999) && took <= Duration::from_millis(1001),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_bucket_says_when_and_takes_nothing() {
        let limiter = RateLimiter::new(1.0, 1);
        assert!(limiter.try_take().is_ok());
        let start = Instant::now();
        let next = limiter.try_take().unwrap_err();
        assert_eq!(next - start, Duration::from_secs(1));
        // Asking again does not push the next token further away.
        assert_eq!(limiter.try_take().unwrap_err(), next);
        tokio::time::sleep_until(next).await;
        assert!(limiter.try_take().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_the_rate() {
        let limiter = std::sync::Arc::new(RateLimiter::new(4.0, 1));
        let start = Instant::now();
        let tasks: Vec<_> = (0..9)
            .map(|_| {
                let l = limiter.clone();
                tokio::spawn(async move { take(&l, 1).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(start.elapsed().as_millis(), 2000);
    }
}
