//! `Pacer`: one of HubSpot's budgets (search, or the general ten-second one), paced.
//! Requests go out evenly spaced at the current rate, never above the ceiling the user
//! set. The rate follows what HubSpot says:
//!
//! - a 429 halves it (multiplicative decrease; the 429s of requests in flight together
//!   count once), and each answer that went through adds back a fiftieth of the ceiling
//!   (additive increase), so a shared account's other apps get their room back instead
//!   of a retry storm at the same pace;
//! - the `X-HubSpot-RateLimit-Max`, `-Remaining` and `-Interval-Milliseconds` headers of
//!   general-budget answers (docs/HUBSPOT.md §5) slow it before the budget runs out: in
//!   the last tenth of the window, the rate is what this process sent over the last
//!   interval plus what is left above a reserve of a twentieth, spread over the
//!   interval; so alone it settles at about 95 % of the budget, and beside other apps
//!   it yields what they take.
//!
//! The decisions are pure functions of the state and the clock, tested below; `ready`
//! is the one place that waits.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A budget's pacing. Shared by every clone of a client, so every object and fetcher of
/// a process takes from the same budget.
#[derive(Debug)]
pub struct Pacer {
    state: Mutex<State>,
    /// When this process's recent requests went, for what it takes of a window.
    sent: Mutex<std::collections::VecDeque<Instant>>,
    /// The most requests a second (the user's setting).
    ceiling: f64,
}

#[derive(Clone, Copy, Debug)]
struct State {
    /// Requests a second now.
    rate: f64,
    /// When the next request may go.
    next: Option<Instant>,
    /// When the rate was last cut for a 429.
    cut: Option<Instant>,
}

/// The lowest rate the pacer falls to: one request every ten seconds still makes
/// progress, and learns when the budget is back.
const FLOOR: f64 = 0.1;
/// The share of the rate the spacing of turns gives: 2 % of headroom for jitter.
const PACE: f64 = 0.98;
/// What a 429 leaves of the rate.
const CUT: f64 = 0.5;
/// What each answer that went through adds back, as a share of the ceiling.
const STEP: f64 = 0.02;
/// Below this share of the window left, the pacer slows down.
const LOW_WATER: f64 = 0.1;
/// The share of the window the pacer keeps free when the headers say it runs low.
const RESERVE: f64 = 0.05;
/// The most send times kept (a ten-second window at a few hundred a second).
const SENT_KEPT: usize = 4096;

/// What HubSpot's rate-limit headers said about a budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Headroom {
    pub max: u32,
    pub remaining: u32,
    pub interval: Duration,
}

impl Pacer {
    /// A pacer of at most `per_second` requests a second.
    pub fn new(per_second: f64) -> Pacer {
        let ceiling = per_second.max(FLOOR);
        Pacer {
            state: Mutex::new(State {
                rate: ceiling,
                next: None,
                cut: None,
            }),
            sent: Mutex::default(),
            ceiling,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for this request's turn, and returns when it was.
    pub async fn ready(&self) -> Instant {
        let at = {
            let mut state = self.state();
            let (at, next) = turn(*state, Instant::now());
            state.next = Some(next);
            // Under the state lock, so the times stay in order (lock order: state, sent).
            let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
            if sent.len() >= SENT_KEPT {
                sent.pop_front();
            }
            sent.push_back(at);
            at
        };
        tokio::time::sleep_until(at.into()).await;
        at
    }

    /// HubSpot answered 429 to a request sent at `sent` (its turn from `ready`). The
    /// 429s of requests whose turn was handed out at the old pace (up to the last turn
    /// given when the rate was cut) are that same signal, already heard.
    pub fn limited(&self, sent: Instant) {
        let mut state = self.state();
        if state.cut.is_some_and(|cut| sent <= cut) {
            return;
        }
        let now = Instant::now();
        let last_turn = state.next.map_or(now, |next| next.max(now));
        *state = slow_to(*state, decrease(state.rate), now);
        state.cut = Some(last_turn);
        tracing::debug!(rate = state.rate, "HubSpot said 429: slower");
    }

    /// A request of this budget went through.
    pub fn succeeded(&self) {
        let mut state = self.state();
        state.rate = increase(state.rate, self.ceiling);
    }

    /// HubSpot's rate-limit headers on an answer of this budget.
    pub fn headroom(&self, headroom: Headroom) {
        let now = Instant::now();
        let own = {
            let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
            while sent
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= headroom.interval)
            {
                sent.pop_front();
            }
            // Turns still ahead have not gone yet.
            let gone = sent.iter().take_while(|t| **t <= now).count();
            u32::try_from(gone).unwrap_or(u32::MAX)
        };
        let mut state = self.state();
        if let Some(rate) = spread(headroom, own)
            && rate < state.rate
        {
            tracing::debug!(
                remaining = headroom.remaining,
                rate,
                "the budget runs low: slower"
            );
            *state = slow_to(*state, rate, Instant::now());
        }
    }

    /// Requests a second now.
    pub fn rate(&self) -> f64 {
        self.state().rate
    }
}

/// When a request asked for at `now` may go, and when the one after it may: spaced a
/// little wider than the rate, since a request leaves a few milliseconds after its turn
/// and HubSpot counts arrivals in a rolling window, where an exact pace would
/// sometimes put one over.
fn turn(state: State, now: Instant) -> (Instant, Instant) {
    let at = state.next.map_or(now, |next| next.max(now));
    (at, at + Duration::from_secs_f64(1.0 / (state.rate * PACE)))
}

/// `state` at the lower `rate`, the next turn pushed back to match: the turn already
/// handed out at the old pace must not go at it.
fn slow_to(state: State, rate: f64, now: Instant) -> State {
    let spaced = now + Duration::from_secs_f64(1.0 / rate);
    State {
        rate,
        next: Some(state.next.map_or(spaced, |next| next.max(spaced))),
        ..state
    }
}

fn decrease(rate: f64) -> f64 {
    (rate * CUT).max(FLOOR)
}

fn increase(rate: f64, ceiling: f64) -> f64 {
    (rate + ceiling * STEP).min(ceiling)
}

/// When little of a budget's window is left, the rate that keeps a reserve of it free:
/// the `own` requests this process sent in the last interval, plus what is left above
/// the reserve (less, below it), spread over the interval; never under the floor.
fn spread(h: Headroom, own: u32) -> Option<f64> {
    if h.max == 0 || h.interval.is_zero() {
        return None;
    }
    let max = f64::from(h.max);
    if f64::from(h.remaining) / max >= LOW_WATER {
        return None;
    }
    let interval = h.interval.as_secs_f64();
    let room = f64::from(h.remaining) - max * RESERVE;
    Some(((f64::from(own) + room) / interval).max(FLOOR))
}

/// Reads HubSpot's rate-limit headers, when an answer has them.
pub fn headroom_from(get: impl Fn(&str) -> Option<String>) -> Option<Headroom> {
    let number = |name: &str| get(name).and_then(|v| v.trim().parse::<u64>().ok());
    Some(Headroom {
        max: u32::try_from(number("x-hubspot-ratelimit-max")?).ok()?,
        remaining: u32::try_from(number("x-hubspot-ratelimit-remaining")?).ok()?,
        interval: Duration::from_millis(number("x-hubspot-ratelimit-interval-milliseconds")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_spaced_a_little_wider_than_the_rate() {
        let now = Instant::now();
        let state = State {
            rate: 4.0,
            next: None,
            cut: None,
        };
        let (first, next) = turn(state, now);
        assert_eq!(first, now);
        // 4 a second, 2 % wider: 255 ms apart.
        assert_eq!(next - now, Duration::from_secs_f64(0.25 / 0.98));
        // A request asked for early waits its turn; one asked for late goes at once.
        let early = State {
            next: Some(next),
            ..state
        };
        assert_eq!(turn(early, now).0, next);
        let late = now + Duration::from_secs(1);
        assert_eq!(turn(early, late).0, late);
    }

    #[test]
    fn slowing_down_pushes_back_the_turn_already_handed_out() {
        let now = Instant::now();
        let fast = State {
            rate: 10.0,
            next: Some(now + Duration::from_millis(100)),
            cut: None,
        };
        let slow = slow_to(fast, 1.0, now);
        assert_eq!(slow.next, Some(now + Duration::from_secs(1)));
    }

    #[test]
    fn a_429_halves_the_rate_and_answers_bring_it_back_slowly() {
        let ceiling = 8.0;
        let mut rate = ceiling;
        rate = decrease(rate);
        assert!((rate - 4.0).abs() < 1e-9);
        for _ in 0..20 {
            rate = decrease(rate);
        }
        assert!((rate - FLOOR).abs() < 1e-9, "{rate}");
        // Fifty answers climb back to the ceiling, never past it.
        for _ in 0..50 {
            rate = increase(rate, ceiling);
        }
        assert!((rate - ceiling).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn the_429s_of_one_burst_cut_the_rate_once() {
        let pacer = Pacer::new(8.0);
        let sent = Instant::now();
        pacer.limited(sent);
        pacer.limited(sent);
        pacer.limited(sent);
        assert!((pacer.rate() - 4.0).abs() < 1e-9, "{}", pacer.rate());
        // A turn handed out at the old pace, going after the cut, is the same burst.
        let handed_out = pacer.state().cut.unwrap();
        pacer.limited(handed_out);
        assert!((pacer.rate() - 4.0).abs() < 1e-9, "{}", pacer.rate());
        // A request sent after the cut that still meets a 429 cuts again.
        pacer.limited(Instant::now());
        assert!((pacer.rate() - 2.0).abs() < 1e-9, "{}", pacer.rate());
    }

    #[test]
    fn a_budget_running_low_slows_the_pace() {
        let interval = Duration::from_secs(10);
        let roomy = Headroom {
            max: 190,
            remaining: 100,
            interval,
        };
        let low = Headroom {
            remaining: 10,
            ..roomy
        };
        assert_eq!(spread(roomy, 0), None);
        // Alone, having sent 180 of the last 190: 18 a second, a request less a second
        // than 10 s ago (10 left, 9.5 kept free).
        let alone = spread(low, 180).unwrap();
        assert!((alone - 18.05).abs() < 1e-9, "{alone}");
        // Other apps took 100 of the window: this process yields to them.
        let shared = spread(low, 80).unwrap();
        assert!((shared - 8.05).abs() < 1e-9, "{shared}");
        let gone = Headroom {
            remaining: 0,
            ..roomy
        };
        assert!(
            (spread(gone, 0).unwrap() - 0.1).abs() < 1e-9,
            "one an interval"
        );
        let pacer = Pacer::new(15.0);
        pacer.headroom(low);
        assert!(
            (pacer.rate() - 0.1).abs() < 1e-9,
            "nothing sent: the rest is others'"
        );
        pacer.headroom(roomy);
        assert!(
            (pacer.rate() - 0.1).abs() < 1e-9,
            "headers never speed it up"
        );
    }

    #[test]
    fn headers_are_read_when_all_three_are_there() {
        let headers = |name: &str| match name {
            "x-hubspot-ratelimit-max" => Some("190".to_owned()),
            "x-hubspot-ratelimit-remaining" => Some(" 12".to_owned()),
            "x-hubspot-ratelimit-interval-milliseconds" => Some("10000".to_owned()),
            _ => None,
        };
        assert_eq!(
            headroom_from(headers),
            Some(Headroom {
                max: 190,
                remaining: 12,
                interval: Duration::from_secs(10)
            })
        );
        assert_eq!(headroom_from(|_| None), None);
    }
}
