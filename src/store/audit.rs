//! The append-only audit log: one entry per account change (created, linked, updated,
//! refused at login; disabled, enabled, deleted, roles and attributes changed by an admin).
//! Entries name the attributes that changed, never their values.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::{decode, encode, ReadTx, StoreError, Tx, AUDIT};

pub const AUDIT_ENTRY_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub version: u8,
    /// Set when appended: the entry's place in the log.
    #[serde(default)]
    pub seq: u64,
    /// Unix seconds.
    pub at: u64,
    /// `login` or `admin`.
    pub actor: String,
    /// `created`, `linked`, `updated`, `refused`, `disabled`, `enabled`, `deleted`,
    /// `role_added`, `role_removed`, `attribute_set`, `attribute_unset`.
    pub action: String,
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
    pub fn new(actor: &str, action: &str, at: u64) -> Self {
        Self {
            version: AUDIT_ENTRY_VERSION,
            seq: 0,
            at,
            actor: actor.to_string(),
            action: action.to_string(),
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
    /// Appends an entry; returns its sequence number.
    pub fn append_audit(&mut self, entry: &AuditEntry) -> Result<u64, StoreError> {
        let mut table = self.txn.open_table(AUDIT).map_err(StoreError::db)?;
        let seq = table
            .last()
            .map_err(StoreError::db)?
            .map_or(1, |(k, _)| k.value() + 1);
        let mut entry = entry.clone();
        entry.seq = seq;
        let bytes = encode(&entry)?;
        table
            .insert(seq, bytes.as_slice())
            .map_err(StoreError::db)?;
        Ok(seq)
    }
}

impl ReadTx {
    /// The log in order, optionally only the entries about one user.
    pub fn audit(&self, user_id: Option<&str>) -> Result<Vec<AuditEntry>, StoreError> {
        let table = self.txn.open_table(AUDIT).map_err(StoreError::db)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(StoreError::db)? {
            let (_, value) = row.map_err(StoreError::db)?;
            let entry: AuditEntry = decode(value.value(), AUDIT_ENTRY_VERSION)?;
            if user_id.is_none_or(|id| entry.user_id.as_deref() == Some(id)) {
                out.push(entry);
            }
        }
        Ok(out)
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
        let mut a = AuditEntry::new("login", "created", 10);
        a.user_id = Some("u1".into());
        let b = AuditEntry::new("admin", "disabled", 11);
        let seqs = store
            .write(|tx| Ok((tx.append_audit(&a)?, tx.append_audit(&b)?)))
            .unwrap();
        assert_eq!(seqs, (1, 2));
        let all = store.read(|tx| tx.audit(None)).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].action, "disabled");
        let mine = store.read(|tx| tx.audit(Some("u1"))).unwrap();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].seq, 1);
    }
}
