//! Time: [`unix_now`], the wall clock in unix seconds, and [`Clock`], which the second factor
//! reads (TOTP steps, lockouts, pending logins): the system time plus an offset that tests
//! move forward instead of sleeping. A leaf: it depends on no other module.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The system time in unix seconds (0 before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Debug, Default)]
pub struct Clock {
    offset: AtomicI64,
}

impl Clock {
    /// Unix seconds.
    pub fn now(&self) -> u64 {
        let offset = self.offset.load(Ordering::Relaxed);
        unix_now().saturating_add_signed(offset)
    }

    /// Moves this clock (for tests): `seconds` later.
    pub fn advance(&self, seconds: i64) {
        self.offset.fetch_add(seconds, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advanced_clock_runs_ahead_of_the_system() {
        let clock = Clock::default();
        let before = clock.now();
        clock.advance(300);
        assert!(clock.now() >= before + 300);
    }
}
