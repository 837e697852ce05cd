//! The append-only audit log: one entry per account change (created, linked, updated,
//! refused at login; disabled, enabled, deleted, roles and attributes changed by an admin).
//! Entries name the attributes that changed, never their values.

use serde::{Deserialize, Serialize};

use super::{decode, encode, ReadTx, StoreError, Tx};

pub const AUDIT_ENTRY_VERSION: u8 = 1;

/// Who made a change: a login (JIT, the second factor) or an administrator (CLI, admin API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditActor {
    Login,
    Admin,
}

/// What happened to an account. Stored by its snake-case name, so the log reads the same in
/// `users audit --json` and in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// A login provisioned a new account (JIT), or an admin created one.
    Created,
    /// A login linked an IdP identity to an existing account by verified email.
    Linked,
    /// A login brought new claims to an account.
    Updated,
    /// A login was refused by the account (disabled, unverified email).
    Refused,
    Disabled,
    Enabled,
    Deleted,
    RoleAdded,
    RoleRemoved,
    AttributeSet,
    AttributeUnset,
    /// TOTP enrolment confirmed.
    MfaEnrolled,
    /// Too many wrong second-factor codes: the account is locked for a while.
    MfaLocked,
    /// A recovery code was spent.
    MfaRecoveryUsed,
    /// An admin cleared the second factor.
    MfaReset,
    /// An admin looked at the second-factor status.
    MfaStatusViewed,
}

impl AuditActor {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditActor::Login => "login",
            AuditActor::Admin => "admin",
        }
    }
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Created => "created",
            AuditAction::Linked => "linked",
            AuditAction::Updated => "updated",
            AuditAction::Refused => "refused",
            AuditAction::Disabled => "disabled",
            AuditAction::Enabled => "enabled",
            AuditAction::Deleted => "deleted",
            AuditAction::RoleAdded => "role_added",
            AuditAction::RoleRemoved => "role_removed",
            AuditAction::AttributeSet => "attribute_set",
            AuditAction::AttributeUnset => "attribute_unset",
            AuditAction::MfaEnrolled => "mfa_enrolled",
            AuditAction::MfaLocked => "mfa_locked",
            AuditAction::MfaRecoveryUsed => "mfa_recovery_used",
            AuditAction::MfaReset => "mfa_reset",
            AuditAction::MfaStatusViewed => "mfa_status_viewed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub version: u8,
    /// Set when appended: the entry's place in the log.
    #[serde(default)]
    pub seq: u64,
    /// Unix seconds.
    pub at: u64,
    pub actor: AuditActor,
    pub action: AuditAction,
    pub connection: Option<String>,
    pub subject: Option<String>,
    pub user_id: Option<String>,
    /// Names of the fields or attributes that changed (no values).
    #[serde(default)]
    pub changed: Vec<String>,
    /// Why, for a refusal.
    pub reason: Option<String>,
    pub request_id: Option<String>,
}

impl AuditEntry {
    pub fn new(actor: AuditActor, action: AuditAction, at: u64) -> Self {
        Self {
            version: AUDIT_ENTRY_VERSION,
            seq: 0,
            at,
            actor,
            action,
            connection: None,
            subject: None,
            user_id: None,
            changed: Vec::new(),
            reason: None,
            request_id: None,
        }
    }
}

impl Tx {
    /// Appends an entry (numbered in commit order on PostgreSQL, next in the file on redb).
    pub fn append_audit(&mut self, entry: &AuditEntry) -> Result<(), StoreError> {
        let encode_at = |seq: u64| {
            let mut entry = entry.clone();
            entry.seq = seq;
            encode(&entry)
        };
        self.raw.append_audit(entry.user_id.as_deref(), &encode_at)
    }
}

impl ReadTx {
    /// The log in order, optionally only the entries about one user.
    pub fn audit(&self, user_id: Option<&str>) -> Result<Vec<AuditEntry>, StoreError> {
        self.raw
            .audit(user_id)?
            .iter()
            .map(|(seq, bytes)| {
                let mut entry: AuditEntry = decode(bytes, AUDIT_ENTRY_VERSION)?;
                entry.seq = *seq;
                Ok(entry)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use super::*;

    #[test]
    fn entries_are_numbered_in_order_and_filtered_by_user() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut a = AuditEntry::new(AuditActor::Login, AuditAction::Created, 10);
        a.user_id = Some("u1".into());
        let b = AuditEntry::new(AuditActor::Admin, AuditAction::Disabled, 11);
        store
            .write(|tx| {
                tx.append_audit(&a)?;
                tx.append_audit(&b)
            })
            .unwrap();
        let all = store.read(|tx| tx.audit(None)).unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(all[1].action, AuditAction::Disabled);
        let mine = store.read(|tx| tx.audit(Some("u1"))).unwrap();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].seq, 1);
    }

    /// The stored spelling of every action is its `as_str`, so logs written before the
    /// actions were typed still read.
    #[test]
    fn actions_are_stored_by_their_snake_case_name() {
        for action in [
            AuditAction::Created,
            AuditAction::RoleAdded,
            AuditAction::MfaRecoveryUsed,
            AuditAction::MfaStatusViewed,
        ] {
            let json = serde_json::to_string(&action).unwrap();
            assert_eq!(json, format!("\"{}\"", action.as_str()));
            let back: AuditAction = serde_json::from_str(&json).unwrap();
            assert_eq!(back, action);
        }
        let actor: AuditActor = serde_json::from_str("\"admin\"").unwrap();
        assert_eq!(actor.as_str(), "admin");
    }
}
