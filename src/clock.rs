//! Time: [`Clock`], the one source of "now" for every expiry and validity decision (sessions
//! and their idle timeout, login states, IdP token expiry, bearer `exp`/`nbf`/`iat`, the signed
//! identity header, pending second-factor logins and lock-outs, bounded-map ages).
//!
//! Production runs on [`Clock::system`]; tests build a [`Clock::manual`] and [`Clock::advance`]
//! it instead of sleeping. Timers for I/O (connection deadlines, tokio timeouts, latency
//! measurements, rate limiters) are not expiry decisions and stay on tokio/monotonic time.
//! A leaf: it depends on no other module.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix seconds, cheap to clone (the clones share one source): built once at server startup
/// and handed to every service that decides whether something has expired.
#[derive(Debug, Clone)]
pub struct Clock(Arc<Source>);

#[derive(Debug)]
enum Source {
    /// The system time.
    System,
    /// A time that stands still until [`Clock::advance`] moves it (unix seconds).
    Manual(AtomicU64),
}

/// The system time in unix seconds (0 before 1970).
fn system_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Clock {
    /// The system time: what Gatehouse runs on.
    pub fn system() -> Self {
        Self(Arc::new(Source::System))
    }

    /// A clock for tests that stands at `start` (unix seconds) until it is advanced.
    pub fn manual(start: u64) -> Self {
        Self(Arc::new(Source::Manual(AtomicU64::new(start))))
    }

    /// A manual clock standing at the present system time (tests that talk to real IdPs).
    pub fn manual_from_now() -> Self {
        Self::manual(system_seconds())
    }

    /// Now, in unix seconds.
    pub fn now(&self) -> u64 {
        match &*self.0 {
            Source::System => system_seconds(),
            Source::Manual(at) => at.load(Ordering::Relaxed),
        }
    }

    /// Moves a manual clock `by` later (whole seconds; the fraction is dropped), for every
    /// clone of it.
    ///
    /// # Panics
    /// On the system clock: the real time cannot be moved, and a test that believes it did
    /// would prove nothing.
    pub fn advance(&self, by: Duration) {
        match &*self.0 {
            Source::System => panic!("Clock::advance on the system clock"),
            Source::Manual(at) => {
                let step = |t: u64| Some(t.saturating_add(by.as_secs()));
                // The closure never refuses, so this cannot fail.
                let _ = at.fetch_update(Ordering::Relaxed, Ordering::Relaxed, step);
            }
        }
    }

    /// Whether this is the system clock (not a test's manual one).
    pub fn is_system(&self) -> bool {
        matches!(&*self.0, Source::System)
    }
}

impl Default for Clock {
    /// The system clock.
    fn default() -> Self {
        Self::system()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manual clock stands still, and an advance moves every clone of it by exactly that much.
    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_for_every_clone() {
        let clock = Clock::manual(1_000);
        let clone = clock.clone();
        assert_eq!(clock.now(), 1_000);
        clone.advance(Duration::from_secs(300));
        assert_eq!(clock.now(), 1_300);
        assert_eq!(clone.now(), 1_300);
        clock.advance(Duration::from_millis(999));
        assert_eq!(clock.now(), 1_300, "fractions of a second are dropped");
        clock.advance(Duration::from_secs(u64::MAX));
        assert_eq!(clock.now(), u64::MAX, "the end of time, not a wrap to 1970");
    }

    /// The system clock reads the system time (a sanity bound: after 2020).
    #[test]
    fn the_system_clock_reads_the_system_time() {
        let clock = Clock::system();
        assert!(clock.is_system());
        assert!(clock.now() > 1_577_836_800);
        assert!(!Clock::manual_from_now().is_system());
    }

    /// Advancing the system clock is refused loudly instead of proving nothing.
    #[test]
    #[should_panic(expected = "system clock")]
    fn the_system_clock_cannot_be_advanced() {
        Clock::system().advance(Duration::from_secs(1));
    }
}
