//! Retry policy: how long to wait before attempt `n` of a request, and when to give up.
//! Pure, so the schedule has table tests; the client does the waiting.

use std::time::Duration;

use super::error::RetryCause;

/// When to retry and how long to wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The first backoff step; also the floor after a 429 (HubSpot's per-second search
    /// limit), and ten times it after a ten-second burst 429. Tests make it small.
    pub base: Duration,
    /// Give up once this much time has gone into one request's attempts.
    pub budget: Duration,
}

/// No single wait is longer than this, whatever the attempt number.
const MAX_STEP: Duration = Duration::from_secs(60);

/// How long a request keeps trying when it cannot connect at all.
pub const UNREACHABLE_BUDGET: Duration = Duration::from_secs(60);

impl RetryPolicy {
    /// The time one request may spend retrying for `cause`: the budget, but at most a
    /// minute when HubSpot cannot be reached at all.
    pub fn budget_for(&self, cause: RetryCause) -> Duration {
        match cause {
            RetryCause::Unreachable => self.budget.min(UNREACHABLE_BUDGET),
            _ => self.budget,
        }
    }

    /// The wait before the retry that follows failed attempt `attempt` (1-based), with
    /// `jitter` in `[0, 1)` spreading the waits of concurrent clients. `Retry-After` wins
    /// when HubSpot sent one.
    pub fn delay(
        &self,
        attempt: u32,
        cause: RetryCause,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Duration {
        let floor = match cause {
            RetryCause::RateLimited => self.base,
            RetryCause::BurstLimited => self.base.saturating_mul(10),
            RetryCause::ServerError | RetryCause::Transport | RetryCause::Unreachable => {
                Duration::ZERO
            }
        };
        // HubSpot's wait wins, but never below our floor: `Retry-After: 0` on a 429
        // would otherwise hammer the limit.
        if let Some(wait) = retry_after {
            return wait.max(floor);
        }
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(MAX_STEP);
        // Full jitter over the upper half: between exp/2 and exp.
        let jittered = exp.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0);
        jittered.max(floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule() {
        let p = RetryPolicy {
            max_attempts: 8,
            base: Duration::from_secs(1),
            budget: Duration::from_secs(300),
        };
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let cases = [
            (1, RetryCause::ServerError, None, 0.0, ms(500)),
            (1, RetryCause::ServerError, None, 1.0, s(1)),
            (3, RetryCause::Transport, None, 1.0, s(4)),
            (1, RetryCause::RateLimited, None, 0.0, s(1)),
            (2, RetryCause::RateLimited, None, 0.0, s(1)),
            (1, RetryCause::BurstLimited, None, 0.5, s(10)),
            (2, RetryCause::RateLimited, Some(s(7)), 0.0, s(7)),
            (1, RetryCause::RateLimited, Some(s(0)), 0.0, s(1)),
            (30, RetryCause::ServerError, None, 1.0, s(60)),
        ];
        for (attempt, cause, after, jitter, want) in cases {
            assert_eq!(
                p.delay(attempt, cause, after, jitter),
                want,
                "{attempt} {cause:?}"
            );
        }
        assert_eq!(p.budget_for(RetryCause::Unreachable), s(60));
        assert_eq!(p.budget_for(RetryCause::Transport), s(300));
    }
}
