//! `gatehouse store copy`: moves an install from the embedded redb file to PostgreSQL. Every
//! table is copied as stored (the same versioned JSON records, the same keys, the audit log
//! with its sequence numbers), in ONE PostgreSQL transaction, into a database that must be
//! empty; the row counts of both sides are compared before the commit and read again after
//! it. A target that holds any row is refused before anything is written.

use std::path::{Path, PathBuf};

use super::audit::{AuditEntry, AUDIT_ENTRY_VERSION};
use super::postgres::{Migrated, PgOptions, PgStore};
use super::raw::{Counted, Index, RawRead, Rows};
use super::sessions::{SessionRecord, SESSION_RECORD_VERSION};
use super::users::{UserRecord, USER_RECORD_VERSION};
use super::{decode, redb_engine, Engine, ReadTx, Store, StoreError};

/// How many rows each table holds: what `store copy` compares and prints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub users: u64,
    pub links: u64,
    pub emails: u64,
    pub usernames: u64,
    pub sessions: u64,
    pub audit: u64,
}

impl Counts {
    fn of(raw: &dyn RawRead) -> Result<Self, StoreError> {
        Ok(Self {
            users: raw.count(Counted::Users)?,
            links: raw.count(Counted::Links)?,
            emails: raw.count(Counted::Emails)?,
            usernames: raw.count(Counted::Usernames)?,
            sessions: raw.count(Counted::Sessions)?,
            audit: raw.count(Counted::Audit)?,
        })
    }

    /// Each table's name and count, in a fixed order (for messages and the report).
    pub fn tables(&self) -> [(&'static str, u64); 6] {
        [
            ("users", self.users),
            ("links", self.links),
            ("emails index", self.emails),
            ("usernames index", self.usernames),
            ("sessions", self.sessions),
            ("audit entries", self.audit),
        ]
    }

    fn is_empty(&self) -> bool {
        self.tables().iter().all(|(_, n)| *n == 0)
    }

    /// The non-empty tables, e.g. `3 users, 1 audit entries`.
    fn found(&self) -> String {
        self.tables()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{n} {name}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Why a copy did not happen. Nothing was written to the target in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(
        "the store {} is held by a running gatehouse: stop the server first, then copy",
        .0.display()
    )]
    Locked(PathBuf),
    #[error("there is no store file at {} (--from-redb: the data directory holding gatehouse.redb, or the file)", .0.display())]
    NoSource(PathBuf),
    #[error("the target database {target} is not empty (it holds {}): `store copy` only fills an empty database; nothing was written", .found.found())]
    NotEmpty { target: String, found: Counts },
    #[error("the copy's counts differ from the source's (source {redb:?}, copy {copy:?}){}", if *.committed { ": the copy was committed, empty the target before trying again" } else { ": nothing was written" })]
    Mismatch {
        redb: Counts,
        copy: Counts,
        /// Whether the difference was seen only when reading the committed copy back.
        committed: bool,
    },
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// What a copy did.
#[derive(Debug, Clone)]
pub struct Copied {
    /// The source file.
    pub from: PathBuf,
    /// The target, without its password.
    pub to: String,
    pub migrated: Migrated,
    pub source: Counts,
    /// The target's counts, read again after the commit.
    pub copy: Counts,
}

/// The store file `path` names: the file itself, or `gatehouse.redb` in a data directory.
pub fn redb_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(redb_engine::FILE_NAME)
    } else {
        path.to_path_buf()
    }
}

/// Everything in the source, read in one snapshot.
struct Snapshot {
    counts: Counts,
    users: Vec<(String, Vec<u8>)>,
    links: Vec<(String, String, String)>,
    emails: Vec<(String, String)>,
    usernames: Vec<(String, String)>,
    sessions: Vec<(String, Vec<u8>)>,
    /// (sequence number, the entry's user id, the entry as stored).
    audit: Vec<(u64, Option<String>, Vec<u8>)>,
}

impl Snapshot {
    /// Reads every table, checking that each record is one this build reads (a record in a
    /// newer format, or an unreadable one, stops the copy before the target is touched).
    fn read(raw: &dyn RawRead) -> Result<Self, StoreError> {
        let mut users = Vec::new();
        for (id, bytes) in raw.keyed(Rows::Users)? {
            let _: UserRecord = decode(&bytes, USER_RECORD_VERSION)
                .map_err(|e| StoreError::Decode(format!("user {id}: {e}")))?;
            users.push((id, bytes));
        }
        let mut sessions = Vec::new();
        for (sid, bytes) in raw.keyed(Rows::Sessions)? {
            let _: SessionRecord = decode(&bytes, SESSION_RECORD_VERSION).map_err(|e| {
                StoreError::Decode(format!("a session ({} bytes): {e}", bytes.len()))
            })?;
            sessions.push((sid, bytes));
        }
        let mut audit = Vec::new();
        for (seq, bytes) in raw.audit(None)? {
            let entry: AuditEntry = decode(&bytes, AUDIT_ENTRY_VERSION)
                .map_err(|e| StoreError::Decode(format!("audit entry {seq}: {e}")))?;
            audit.push((seq, entry.user_id, bytes));
        }
        Ok(Self {
            counts: Counts::of(raw)?,
            users,
            links: raw.links()?,
            emails: raw.index_entries(Index::Emails)?,
            usernames: raw.index_entries(Index::Usernames)?,
            sessions,
            audit,
        })
    }
}

/// Why the copy's transaction was rolled back (carried past [`Store::write`]).
enum Refused {
    NotEmpty(Counts),
    Mismatch(Counts),
}

/// Copies the redb store at `from` (a data directory or the file) into the empty PostgreSQL
/// database `to`, migrating it first. See the module docs.
pub fn redb_to_postgres(from: &Path, to: &PgOptions) -> Result<Copied, CopyError> {
    let file = redb_file(from);
    if !file.is_file() {
        return Err(CopyError::NoSource(file));
    }
    let source = match redb_engine::RedbStore::open_file(&file) {
        Ok(db) => Store::with_engine(Engine::Redb(db)),
        Err(StoreError::Locked(path)) => return Err(CopyError::Locked(path)),
        Err(e) => return Err(e.into()),
    };
    let snapshot = source.read(|tx| Snapshot::read(tx.reader()))?;
    drop(source);

    let migrated = PgStore::migrate_explicitly(to)?;
    let target = Store::open_postgres(to)?;
    let shown = target.location();
    let mut refused = None;
    let written = target.write(|tx| {
        refused = None;
        let found = Counts::of(tx.reader())?;
        if !found.is_empty() {
            refused = Some(Refused::NotEmpty(found));
            return Err(StoreError::Db("refused".into()));
        }
        for (id, bytes) in &snapshot.users {
            tx.raw.put(Rows::Users, id, bytes)?;
        }
        for (connection, subject, user_id) in &snapshot.links {
            tx.raw.set_link(connection, subject, user_id)?;
        }
        for (email, user_id) in &snapshot.emails {
            tx.raw.claim(Index::Emails, email, user_id, None)?;
        }
        for (username, user_id) in &snapshot.usernames {
            tx.raw.claim(Index::Usernames, username, user_id, None)?;
        }
        for (sid, bytes) in &snapshot.sessions {
            tx.raw.put(Rows::Sessions, sid, bytes)?;
        }
        for (seq, user_id, bytes) in &snapshot.audit {
            tx.raw.put_audit(*seq, user_id.as_deref(), bytes)?;
        }
        let copy = Counts::of(tx.reader())?;
        if copy != snapshot.counts {
            refused = Some(Refused::Mismatch(copy));
            return Err(StoreError::Db("refused".into()));
        }
        Ok(())
    });
    match (written, refused) {
        (Ok(()), _) => {}
        (Err(_), Some(Refused::NotEmpty(found))) => {
            return Err(CopyError::NotEmpty {
                target: shown,
                found,
            })
        }
        (Err(_), Some(Refused::Mismatch(copy))) => {
            return Err(CopyError::Mismatch {
                redb: snapshot.counts,
                copy,
                committed: false,
            })
        }
        (Err(e), None) => return Err(e.into()),
    }
    // Read back after the commit, in a new transaction: what the target now holds.
    let copy = target.read(|tx| Counts::of(tx.reader()))?;
    if copy != snapshot.counts {
        return Err(CopyError::Mismatch {
            redb: snapshot.counts,
            copy,
            committed: true,
        });
    }
    Ok(Copied {
        from: file,
        to: shown,
        migrated,
        source: snapshot.counts,
        copy,
    })
}

/// Listings of whole tables (what `store copy` reads; tests compare two stores with them).
impl ReadTx {
    /// How many rows each table holds.
    pub fn counts(&self) -> Result<Counts, StoreError> {
        Counts::of(self.reader())
    }

    /// Every link: (connection, subject, user id).
    pub fn all_links(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        self.reader().links()
    }

    /// Every entry of a unique index: (normalized value, user id).
    pub fn index_entries(&self, index: Index) -> Result<Vec<(String, String)>, StoreError> {
        self.reader().index_entries(index)
    }

    /// Every audit entry as stored, with its sequence number.
    pub fn numbered_audit(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.reader().audit(None)
    }
}

impl super::Tx {
    /// Writes an audit entry under its own `seq` (restoring a log kept elsewhere); later
    /// appends number after the highest stored.
    pub fn put_numbered_audit(&mut self, entry: &AuditEntry) -> Result<(), StoreError> {
        let bytes = super::encode(entry)?;
        self.raw
            .put_audit(entry.seq, entry.user_id.as_deref(), &bytes)
    }
}
