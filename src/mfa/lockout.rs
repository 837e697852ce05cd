//! The per-user limit on second-factor guesses: after `max_failures` wrong codes in a row the
//! user is locked out for `lock_for`. Pure functions over an [`MfaRecord`] and a clock reading
//! passed in (`now`, unix seconds), so the caller decides when to save the record and the tests
//! need no sleeps.
//!
//! A six-digit code with a window of three steps is guessed with odds of 3 in a million per try;
//! five tries per five minutes keep an online guesser to about one success in 130 years.

use super::record::MfaRecord;

pub use crate::config::model::{LockoutPolicy, DEFAULT_LOCK_FOR, DEFAULT_MAX_FAILURES};

/// What a failure did to the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Counted; this many tries are left before the lock.
    Counted { tries_left: u32 },
    /// This failure reached the limit: locked until the given unix second.
    LockedNow { until: u64 },
    /// The record was already locked; nothing changed (a lock is not extended by further tries).
    AlreadyLocked { until: u64 },
}

/// Whether the user is locked out at `now`. A lock lasts up to, not including, `locked_until`.
pub fn is_locked(record: &MfaRecord, now: u64) -> bool {
    locked_until(record, now).is_some()
}

/// The end of the lock in force at `now`, if any (for "try again in N minutes").
pub fn locked_until(record: &MfaRecord, now: u64) -> Option<u64> {
    record.locked_until.filter(|&until| now < until)
}

/// Counts one failed attempt at `now`. The caller should have checked [`is_locked`] first and not
/// looked at the code at all while locked; a failure reported during a lock changes nothing.
pub fn record_failure(record: &mut MfaRecord, policy: &LockoutPolicy, now: u64) -> FailureOutcome {
    if let Some(until) = locked_until(record, now) {
        return FailureOutcome::AlreadyLocked { until };
    }
    clear_expired_lock(record, now);
    record.failures = record.failures.saturating_add(1);
    let max = policy.max_failures.max(1);
    if record.failures >= max {
        let until = now.saturating_add(policy.lock_for.as_secs());
        record.locked_until = Some(until);
        FailureOutcome::LockedNow { until }
    } else {
        FailureOutcome::Counted {
            tries_left: max - record.failures,
        }
    }
}

/// A correct code: the failure count starts again from zero.
pub fn record_success(record: &mut MfaRecord) {
    record.failures = 0;
    record.locked_until = None;
}

/// Once a lock has run out, the user gets a full set of tries again.
fn clear_expired_lock(record: &mut MfaRecord, now: u64) {
    if record.locked_until.is_some_and(|until| now >= until) {
        record.locked_until = None;
        record.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const T0: u64 = 1_700_000_000;

    #[test]
    fn the_default_policy_is_five_failures_and_five_minutes() {
        let policy = LockoutPolicy::default();
        assert_eq!(policy.max_failures, 5);
        assert_eq!(policy.lock_for, Duration::from_secs(300));
    }

    #[test]
    fn five_failures_in_a_row_lock_the_user_for_five_minutes() {
        let policy = LockoutPolicy::default();
        let mut record = MfaRecord::default();
        for n in 1..=4u32 {
            let outcome = record_failure(&mut record, &policy, T0 + u64::from(n));
            assert_eq!(outcome, FailureOutcome::Counted { tries_left: 5 - n });
            assert!(!is_locked(&record, T0 + u64::from(n)));
        }
        let outcome = record_failure(&mut record, &policy, T0 + 5);
        assert_eq!(outcome, FailureOutcome::LockedNow { until: T0 + 305 });
        assert!(is_locked(&record, T0 + 5));
        assert!(is_locked(&record, T0 + 304));
        assert_eq!(locked_until(&record, T0 + 100), Some(T0 + 305));
    }

    #[test]
    fn the_lock_ends_after_five_minutes_and_the_count_starts_again() {
        let policy = LockoutPolicy::default();
        let mut record = MfaRecord::default();
        for n in 0..5 {
            record_failure(&mut record, &policy, T0 + n);
        }
        assert!(is_locked(&record, T0 + 4 + 299));
        let after = T0 + 4 + 300;
        assert!(!is_locked(&record, after));
        assert_eq!(locked_until(&record, after), None);
        // One more failure after the lock is the first of a new run, not a new lock.
        assert_eq!(
            record_failure(&mut record, &policy, after),
            FailureOutcome::Counted { tries_left: 4 }
        );
        assert!(!is_locked(&record, after));
    }

    #[test]
    fn failures_during_a_lock_do_not_extend_it() {
        let policy = LockoutPolicy::default();
        let mut record = MfaRecord::default();
        for _ in 0..5 {
            record_failure(&mut record, &policy, T0);
        }
        let outcome = record_failure(&mut record, &policy, T0 + 200);
        assert_eq!(outcome, FailureOutcome::AlreadyLocked { until: T0 + 300 });
        assert!(!is_locked(&record, T0 + 300));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let policy = LockoutPolicy::default();
        let mut record = MfaRecord::default();
        for _ in 0..4 {
            record_failure(&mut record, &policy, T0);
        }
        record_success(&mut record);
        assert_eq!(record.failures, 0);
        for _ in 0..4 {
            record_failure(&mut record, &policy, T0);
        }
        assert!(!is_locked(&record, T0), "four after a success is not five");
    }

    #[test]
    fn a_configured_policy_is_honoured() {
        let policy = LockoutPolicy {
            max_failures: 2,
            lock_for: Duration::from_secs(60),
        };
        let mut record = MfaRecord::default();
        record_failure(&mut record, &policy, T0);
        assert_eq!(
            record_failure(&mut record, &policy, T0),
            FailureOutcome::LockedNow { until: T0 + 60 }
        );
        assert!(!is_locked(&record, T0 + 60));
    }
}
