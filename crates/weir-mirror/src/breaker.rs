//! A circuit breaker per sink: after `threshold` consecutive failed requests it opens and
//! lets nothing through for `open_for`; then one probe request goes (half-open); its
//! success closes the breaker, its failure opens it again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The breaker's state, for status and metrics: an API type, since the cluster status
/// shows it.
pub use weir_proto::api::mirror::BreakerState;

enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// See the module documentation.
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    state: Mutex<State>,
}

/// What [`Breaker::try_admit`] says.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Go ahead.
    Yes,
    /// Ask again after this long.
    Wait(Duration),
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, open_for: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            open_for,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// Whether a request may go now.
    pub fn try_admit(&self) -> Admit {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match *s {
            State::Closed { .. } => Admit::Yes,
            State::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    *s = State::HalfOpen { probing: true };
                    Admit::Yes
                } else {
                    Admit::Wait((until - now).min(Duration::from_millis(250)))
                }
            }
            State::HalfOpen { probing: true } => Admit::Wait(Duration::from_millis(50)),
            State::HalfOpen { probing: false } => {
                *s = State::HalfOpen { probing: true };
                Admit::Yes
            }
        }
    }

    /// A request succeeded (the backend answered sensibly).
    pub fn success(&self) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = State::Closed { failures: 0 };
    }

    /// A request failed; returns true when this opened the breaker.
    pub fn failure(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let open = match *s {
            State::Closed { failures } => failures + 1 >= self.threshold,
            State::HalfOpen { .. } | State::Open { .. } => true,
        };
        *s = if open {
            State::Open {
                until: Instant::now() + self.open_for,
            }
        } else {
            match *s {
                State::Closed { failures } => State::Closed {
                    failures: failures + 1,
                },
                _ => unreachable!("only a closed breaker stays closed"),
            }
        };
        open && !matches!(*s, State::Closed { .. })
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        match *self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if Instant::now() < until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_probes_once_and_closes_on_success() {
        let b = Breaker::new(3, Duration::from_millis(30));
        assert!(!b.failure());
        assert!(!b.failure());
        assert_eq!(b.try_admit(), Admit::Yes, "still closed after two failures");
        assert!(b.failure(), "the third failure opens it");
        assert_eq!(b.state(), BreakerState::Open);
        assert!(matches!(b.try_admit(), Admit::Wait(_)));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.try_admit(), Admit::Yes, "the probe");
        assert!(
            matches!(b.try_admit(), Admit::Wait(_)),
            "one probe at a time"
        );
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let b = Breaker::new(1, Duration::from_millis(20));
        b.failure();
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(b.try_admit(), Admit::Yes);
        assert!(b.failure());
        assert_eq!(b.state(), BreakerState::Open);
    }
}
