//! What Gatehouse stores about a local user's second factor, embedded in the user record, and
//! the two ways a login attempt changes it: a TOTP code or a recovery code, each checked against
//! the lockout first.

use std::fmt;

use super::lockout::{self, FailureOutcome, LockoutPolicy};
use super::recovery;
use super::totp::{self, TotpRefusal, TotpSecret};
use crate::seal::{SealError, Sealer};

/// The sealing purpose of the stored TOTP secret.
pub const TOTP_SECRET_PURPOSE: &str = "totp-secret";

pub use crate::store::users::MfaRecord;

impl fmt::Debug for MfaRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MfaRecord")
            .field("enrolled", &self.sealed_secret.is_some())
            .field("enrolled_at", &self.enrolled_at)
            .field("last_used_step", &self.last_used_step)
            .field("recovery_codes_left", &self.recovery_hashes.len())
            .field("failures", &self.failures)
            .field("locked_until", &self.locked_until)
            .finish()
    }
}

/// Why a second-factor attempt was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MfaRefusal {
    #[error("no second factor is enrolled")]
    NotEnrolled,
    /// Too many failures; the code was not looked at.
    #[error("too many wrong codes; locked until {until}")]
    Locked { until: u64 },
    /// Not shaped like a code at all (typo). Not counted as a failure.
    #[error("that is not a code")]
    Malformed,
    /// A wrong or replayed code. Counted; `outcome` says whether this locked the user.
    #[error("wrong code")]
    Wrong {
        why: WrongCode,
        outcome: FailureOutcome,
    },
    /// The stored secret does not open: its sealing key was dropped from the key list, or the
    /// record is damaged. Not the user's fault and not counted.
    #[error("the stored TOTP secret cannot be opened: {0}")]
    SecretUnreadable(SealError),
    /// The stored secret opens but is too short to be one Gatehouse made: a damaged record.
    /// Not counted.
    #[error("the stored TOTP secret is unusable")]
    SecretUnusable,
}

/// Which kind of wrong code, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrongCode {
    /// Not the code of any step in the window.
    Totp,
    /// The code of a step already used.
    Replay,
    /// Not one of the unused recovery codes.
    Recovery,
}

impl MfaRecord {
    /// Whether a TOTP secret has been confirmed for the user.
    pub fn is_enrolled(&self) -> bool {
        self.sealed_secret.is_some()
    }

    pub fn recovery_codes_left(&self) -> usize {
        self.recovery_hashes.len()
    }

    /// Opens the stored secret.
    pub fn open_secret(&self, sealer: &Sealer) -> Result<Option<TotpSecret>, SealError> {
        self.sealed_secret
            .as_deref()
            .map(|sealed| {
                sealer
                    .open(TOTP_SECRET_PURPOSE, sealed)
                    .map(TotpSecret::from_bytes)
            })
            .transpose()
    }

    /// A TOTP login attempt at `now`: refused while locked; on success the step is remembered
    /// (so the code cannot be used again) and the failure count reset; a wrong or replayed code
    /// counts towards the lock. The caller saves the record afterwards, whatever the result.
    pub fn verify_totp(
        &mut self,
        sealer: &Sealer,
        code: &str,
        now: u64,
        policy: &LockoutPolicy,
    ) -> Result<(), MfaRefusal> {
        self.refuse_if_locked(now)?;
        let secret = self
            .open_secret(sealer)
            .map_err(MfaRefusal::SecretUnreadable)?
            .ok_or(MfaRefusal::NotEnrolled)?;
        match totp::verify(secret.as_bytes(), code, now, self.last_used_step) {
            Ok(step) => {
                self.last_used_step = Some(step);
                lockout::record_success(self);
                Ok(())
            }
            Err(TotpRefusal::Malformed) => Err(MfaRefusal::Malformed),
            Err(TotpRefusal::UnusableSecret) => Err(MfaRefusal::SecretUnusable),
            Err(TotpRefusal::Wrong) => Err(self.failure(WrongCode::Totp, now, policy)),
            Err(TotpRefusal::Replay) => Err(self.failure(WrongCode::Replay, now, policy)),
        }
    }

    /// A recovery-code login attempt at `now`, under the same lock as TOTP codes. A matching
    /// code is used up.
    pub fn use_recovery_code(
        &mut self,
        code: &str,
        now: u64,
        policy: &LockoutPolicy,
    ) -> Result<(), MfaRefusal> {
        self.refuse_if_locked(now)?;
        if !self.is_enrolled() {
            return Err(MfaRefusal::NotEnrolled);
        }
        if !recovery::is_well_formed(code) {
            return Err(MfaRefusal::Malformed);
        }
        if recovery::consume(&mut self.recovery_hashes, code) {
            lockout::record_success(self);
            Ok(())
        } else {
            Err(self.failure(WrongCode::Recovery, now, policy))
        }
    }

    fn refuse_if_locked(&self, now: u64) -> Result<(), MfaRefusal> {
        match lockout::locked_until(self, now) {
            Some(until) => Err(MfaRefusal::Locked { until }),
            None => Ok(()),
        }
    }

    fn failure(&mut self, why: WrongCode, now: u64, policy: &LockoutPolicy) -> MfaRefusal {
        let outcome = lockout::record_failure(self, policy, now);
        MfaRefusal::Wrong { why, outcome }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mfa::totp::reference::totp as reference_totp;
    use crate::mfa::totp::{step_at, STEP_SECONDS};

    const NOW: u64 = 1_700_000_015;
    const SECRET: &[u8] = b"12345678901234567890";

    fn sealer() -> Sealer {
        Sealer::new(vec![[7u8; 32]]).unwrap()
    }

    fn enrolled(sealer: &Sealer) -> (MfaRecord, Vec<String>) {
        let codes = recovery::generate();
        let record = MfaRecord {
            sealed_secret: Some(sealer.seal(TOTP_SECRET_PURPOSE, SECRET)),
            enrolled_at: Some(NOW - 1000),
            recovery_hashes: codes.hashes,
            ..MfaRecord::default()
        };
        (record, codes.shown)
    }

    fn code_at(t: u64) -> String {
        reference_totp(SECRET, t, 6)
    }

    #[test]
    fn debug_output_hides_the_secret_and_the_hashes() {
        let sealer = sealer();
        let (record, _) = enrolled(&sealer);
        let shown = format!("{record:?}");
        assert!(!shown.contains(record.sealed_secret.as_deref().unwrap()));
        assert!(!shown.contains(&record.recovery_hashes[0]));
        assert!(shown.contains("recovery_codes_left: 10"));
    }

    #[test]
    fn a_record_round_trips_through_json_and_old_records_load() {
        let sealer = sealer();
        let (record, _) = enrolled(&sealer);
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<MfaRecord>(&json).unwrap(), record);
        let old: MfaRecord = serde_json::from_str("{}").unwrap();
        assert_eq!(old, MfaRecord::default());
        assert!(!old.is_enrolled());
    }

    #[test]
    fn a_correct_code_is_accepted_once_and_its_step_remembered() {
        let sealer = sealer();
        let (mut record, _) = enrolled(&sealer);
        let policy = LockoutPolicy::default();
        let code = code_at(NOW);
        assert_eq!(record.verify_totp(&sealer, &code, NOW, &policy), Ok(()));
        assert_eq!(record.last_used_step, Some(step_at(NOW)));
        match record.verify_totp(&sealer, &code, NOW + 1, &policy) {
            Err(MfaRefusal::Wrong {
                why: WrongCode::Replay,
                outcome: FailureOutcome::Counted { tries_left: 4 },
            }) => {}
            other => panic!("expected a counted replay, got {other:?}"),
        }
        let next = code_at(NOW + STEP_SECONDS);
        assert_eq!(
            record.verify_totp(&sealer, &next, NOW + STEP_SECONDS, &policy),
            Ok(())
        );
        assert_eq!(record.failures, 0);
    }

    #[test]
    fn five_wrong_codes_lock_out_even_the_right_code_until_the_lock_ends() {
        let sealer = sealer();
        let (mut record, recovery) = enrolled(&sealer);
        let policy = LockoutPolicy::default();
        let right = code_at(NOW);
        let wrong = if right == "000000" {
            "111111"
        } else {
            "000000"
        };
        for _ in 0..4 {
            assert!(matches!(
                record.verify_totp(&sealer, wrong, NOW, &policy),
                Err(MfaRefusal::Wrong { .. })
            ));
        }
        assert_eq!(
            record.verify_totp(&sealer, wrong, NOW, &policy),
            Err(MfaRefusal::Wrong {
                why: WrongCode::Totp,
                outcome: FailureOutcome::LockedNow { until: NOW + 300 }
            })
        );
        assert_eq!(
            record.verify_totp(&sealer, &right, NOW, &policy),
            Err(MfaRefusal::Locked { until: NOW + 300 })
        );
        assert_eq!(
            record.use_recovery_code(&recovery[0], NOW + 299, &policy),
            Err(MfaRefusal::Locked { until: NOW + 300 })
        );
        assert_eq!(
            record.recovery_codes_left(),
            10,
            "not consumed while locked"
        );
        let later = NOW + 300;
        assert_eq!(
            record.verify_totp(&sealer, &code_at(later), later, &policy),
            Ok(())
        );
        assert_eq!(record.failures, 0);
        assert_eq!(record.locked_until, None);
    }

    #[test]
    fn malformed_codes_are_not_counted() {
        let sealer = sealer();
        let (mut record, _) = enrolled(&sealer);
        let policy = LockoutPolicy::default();
        for _ in 0..10 {
            assert_eq!(
                record.verify_totp(&sealer, "12ab", NOW, &policy),
                Err(MfaRefusal::Malformed)
            );
        }
        assert_eq!(record.failures, 0);
    }

    #[test]
    fn recovery_codes_log_in_once_each_and_wrong_ones_count() {
        let sealer = sealer();
        let (mut record, recovery) = enrolled(&sealer);
        let policy = LockoutPolicy::default();
        assert_eq!(record.use_recovery_code(&recovery[3], NOW, &policy), Ok(()));
        assert_eq!(record.recovery_codes_left(), 9);
        assert_eq!(
            record.use_recovery_code(&recovery[3], NOW, &policy),
            Err(MfaRefusal::Wrong {
                why: WrongCode::Recovery,
                outcome: FailureOutcome::Counted { tries_left: 4 }
            })
        );
        assert_eq!(record.use_recovery_code(&recovery[4], NOW, &policy), Ok(()));
        assert_eq!(record.failures, 0);
    }

    #[test]
    fn something_not_shaped_like_a_recovery_code_is_not_counted() {
        let sealer = sealer();
        let (mut record, _) = enrolled(&sealer);
        let policy = LockoutPolicy::default();
        for input in ["", "123456", "not a recovery code"] {
            assert_eq!(
                record.use_recovery_code(input, NOW, &policy),
                Err(MfaRefusal::Malformed)
            );
        }
        assert_eq!(record.failures, 0);
        assert_eq!(record.recovery_codes_left(), 10);
    }

    #[test]
    fn a_stored_secret_too_short_to_be_ours_is_unusable_and_not_counted() {
        let sealer = sealer();
        let (mut record, _) = enrolled(&sealer);
        record.sealed_secret = Some(sealer.seal(TOTP_SECRET_PURPOSE, b"short"));
        let policy = LockoutPolicy::default();
        assert_eq!(
            record.verify_totp(&sealer, "123456", NOW, &policy),
            Err(MfaRefusal::SecretUnusable)
        );
        assert_eq!(record.failures, 0);
    }

    #[test]
    fn a_record_without_a_secret_is_not_enrolled() {
        let sealer = sealer();
        let mut record = MfaRecord::default();
        let policy = LockoutPolicy::default();
        assert_eq!(
            record.verify_totp(&sealer, "123456", NOW, &policy),
            Err(MfaRefusal::NotEnrolled)
        );
        assert_eq!(
            record.use_recovery_code("0000-0000-0000", NOW, &policy),
            Err(MfaRefusal::NotEnrolled)
        );
    }

    #[test]
    fn a_secret_sealed_with_a_retired_key_is_unreadable_and_not_counted() {
        let (mut record, _) = enrolled(&sealer());
        let other = Sealer::new(vec![[9u8; 32]]).unwrap();
        let policy = LockoutPolicy::default();
        assert_eq!(
            record.verify_totp(&other, &code_at(NOW), NOW, &policy),
            Err(MfaRefusal::SecretUnreadable(SealError::Invalid))
        );
        assert_eq!(record.failures, 0);
    }
}
