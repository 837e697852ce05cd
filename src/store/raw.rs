//! The operations a storage engine provides, below the records: rows by key, the unique
//! indexes, links and the audit sequence. Both engines (the embedded [`super::redb_engine`]
//! and [`super::postgres`]) implement them, and everything above (`users`, `sessions`,
//! `audit`) is written once against these traits, so the two behave the same (the conformance
//! suite in `tests/store_conformance.rs` runs against both).

use super::sessions::SessionOwner;
use super::StoreError;

/// A table of records (JSON documents) by a string key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rows {
    Users,
    Sessions,
}

/// A unique index: a normalized value -> the user id that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Index {
    /// Normalized (trimmed, lower-case) verified email.
    Emails,
    /// Lower-case username.
    Usernames,
}

impl Index {
    pub fn name(self) -> &'static str {
        match self {
            Index::Emails => "email",
            Index::Usernames => "username",
        }
    }
}

/// What [`RawRead::count`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    Users,
    Links,
    Emails,
    Usernames,
    Sessions,
    Audit,
}

/// Reads, the same in a read snapshot and inside a write transaction.
pub trait RawRead {
    /// One record.
    fn get(&self, rows: Rows, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every record of the table, in key order.
    fn scan(&self, rows: Rows) -> Result<Vec<Vec<u8>>, StoreError>;
    /// The user id an index entry names.
    fn index(&self, index: Index, key: &str) -> Result<Option<String>, StoreError>;
    /// The user id a (connection, subject) link names.
    fn link(&self, connection: &str, subject: &str) -> Result<Option<String>, StoreError>;
    fn count(&self, what: Counted) -> Result<u64, StoreError>;
    /// The audit entries with their sequence numbers, in sequence order, optionally only
    /// those about one user. The number is the row's: an engine that numbers entries as it
    /// commits them (PostgreSQL) stores 0 in the entry itself.
    fn audit(&self, user_id: Option<&str>) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// The ids of the stored sessions that belong to `owner`.
    fn sessions_of(&self, owner: &SessionOwner) -> Result<Vec<String>, StoreError>;
    /// Every record of the table with its key, in key order (`store copy`).
    fn keyed(&self, rows: Rows) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Every entry of a unique index: (normalized value, user id), in value order.
    fn index_entries(&self, index: Index) -> Result<Vec<(String, String)>, StoreError>;
    /// Every link: (connection, subject, user id), in (connection, subject) order.
    fn links(&self) -> Result<Vec<(String, String, String)>, StoreError>;
    /// Reads these index entries and link now, together, for the reads that follow (an
    /// engine a round trip away answers them from what it fetched). Only a hint: the
    /// embedded file reads each when asked.
    fn prefetch(&self, _ahead: &Ahead<'_>) -> Result<(), StoreError> {
        Ok(())
    }
}

/// What a transaction is about to look up ([`RawRead::prefetch`]): a login's link, email
/// and username, normalized as the index keeps them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ahead<'a> {
    /// (connection, subject)
    pub link: Option<(&'a str, &'a str)>,
    pub email: Option<&'a str>,
    pub username: Option<&'a str>,
}

/// Changes, inside one transaction that [`RawWrite::commit`] makes durable.
pub trait RawWrite: RawRead {
    /// Writes (or replaces) a record.
    fn put(&mut self, rows: Rows, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Removes a record; whether it existed.
    fn remove(&mut self, rows: Rows, key: &str) -> Result<bool, StoreError>;
    /// Points an index entry at `user_id`. An entry that names another user is taken over
    /// only when it names `replacing`; otherwise the claim is a [`StoreError::Conflict`]
    /// (another transaction got there first: the caller's transaction is retried).
    fn claim(
        &mut self,
        index: Index,
        key: &str,
        user_id: &str,
        replacing: Option<&str>,
    ) -> Result<(), StoreError>;
    /// Removes an index entry if it still names `user_id`.
    fn release(&mut self, index: Index, key: &str, user_id: &str) -> Result<(), StoreError>;
    /// Links an identity to `user_id`; a link to another user is a [`StoreError::Conflict`].
    fn set_link(
        &mut self,
        connection: &str,
        subject: &str,
        user_id: &str,
    ) -> Result<(), StoreError>;
    fn remove_link(&mut self, connection: &str, subject: &str) -> Result<(), StoreError>;
    /// Appends an audit entry: `encode` is given the entry's sequence number, or 0 on an
    /// engine that numbers the entry when it commits (then [`RawRead::audit`] gives the
    /// number).
    fn append_audit(
        &mut self,
        user_id: Option<&str>,
        encode: &dyn Fn(u64) -> Result<Vec<u8>, StoreError>,
    ) -> Result<(), StoreError>;
    /// Makes everything durable, or nothing.
    fn commit(self: Box<Self>) -> Result<(), StoreError>;
    /// For benches only: the commit skips the fsync (see `Tx::bench_only_skip_fsync`).
    fn skip_fsync(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Writes an audit entry under the sequence number it had elsewhere (`store copy`);
    /// later appends number after the highest one stored.
    fn put_audit(
        &mut self,
        seq: u64,
        user_id: Option<&str>,
        entry: &[u8],
    ) -> Result<(), StoreError>;
}
