//! The embedded store: one redb file in the data directory. Every table is defined here,
//! values are versioned JSON, and every change is one write transaction ([`Store::write`]).
//! Writes happen at login, logout, token refresh and admin commands, never per proxied request.
//!
//! - [`sessions`]: the server-side session records (the revocation record).
//! - [`users`]: local accounts, the identities linked to them, the email and username indexes.
//! - [`audit`]: the append-only audit log.

pub mod audit;
pub mod sessions;
pub mod users;
pub mod writer;

use std::path::{Path, PathBuf};

use redb::{Database, ReadTransaction, ReadableDatabase, TableDefinition, WriteTransaction};

/// Sessions by session id: the server-side record behind every session cookie.
pub const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// Local accounts by their local user id (a UUIDv7).
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// (connection id, IdP `sub`) -> user id.
pub const LINKS: TableDefinition<(&str, &str), &str> = TableDefinition::new("links");
/// Normalized (trimmed, lower-case) email -> user id.
pub const EMAILS: TableDefinition<&str, &str> = TableDefinition::new("emails");
/// Lower-case username -> user id (usernames are unique without regard to case).
pub const USERNAMES: TableDefinition<&str, &str> = TableDefinition::new("usernames");
/// Sequence number -> audit entry; only ever appended to.
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// The store file's name inside the data directory.
pub const FILE_NAME: &str = "gatehouse.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store {path}: {reason} (store.data_dir: the user {user} needs write access to it)", user = process_user())]
    Open { path: PathBuf, reason: String },
    #[error("the store {0} is in use by another process (a running gatehouse?)")]
    Locked(PathBuf),
    #[error("store error: {0}")]
    Db(String),
    #[error("a stored record is unreadable: {0}")]
    Decode(String),
}

/// The user this process runs as (`name (uid N)`), for errors that say who needs access.
pub fn process_user() -> String {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let name = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                (fields.nth(1)? == uid.to_string()).then(|| name.to_string())
            })
        });
    match name {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

impl StoreError {
    pub(crate) fn db(e: impl std::fmt::Display) -> Self {
        StoreError::Db(e.to_string())
    }
}

/// Encodes a record for a table.
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Decode(e.to_string()))
}

/// Decodes a record, refusing one written by a newer format than this build knows.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    newest: u8,
) -> Result<T, StoreError> {
    #[derive(serde::Deserialize)]
    struct Version {
        version: u8,
    }
    let version: Version =
        serde_json::from_slice(bytes).map_err(|e| StoreError::Decode(e.to_string()))?;
    if version.version > newest {
        return Err(StoreError::Decode(format!(
            "record format {} is newer than this gatehouse knows ({newest})",
            version.version
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| StoreError::Decode(e.to_string()))
}

/// The open store.
pub struct Store {
    db: Database,
    path: PathBuf,
    /// Milliseconds every commit waits first: 0, except in tests that stand in a slow disk.
    commit_delay_ms: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// One write transaction: everything done through it commits together, or not at all.
pub struct Tx {
    txn: WriteTransaction,
}

impl Tx {
    /// For benches only (never called by Gatehouse): this transaction commits without the
    /// fsync (redb's `Durability::None`), so a bench can show how much of a commit is the
    /// fsync. Such a commit is lost on a crash until a later durable commit.
    #[doc(hidden)]
    pub fn bench_only_skip_fsync(&mut self) -> Result<(), StoreError> {
        self.txn
            .set_durability(redb::Durability::None)
            .map_err(StoreError::db)
    }
}

/// One read transaction: a consistent snapshot.
pub struct ReadTx {
    txn: ReadTransaction,
}

impl Store {
    /// Opens the store in `data_dir`, creating the directory and the file if needed. A file
    /// that is corrupt, locked by another process or unwritable is an error naming the file;
    /// it is never recreated.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(FILE_NAME);
        let open_error = |reason: String| StoreError::Open {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(data_dir)
            .map_err(|e| open_error(format!("cannot create {}: {e}", data_dir.display())))?;
        // A new store file is created for its owner only; an existing one open to others is
        // refused (it holds sessions, tokens and second-factor secrets).
        match crate::private_file::create_new().open(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(open_error(e.to_string())),
        }
        crate::private_file::check(&path).map_err(open_error)?;
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(path.clone()),
            other => open_error(other.to_string()),
        })?;
        let store = Self {
            db,
            path: path.clone(),
            commit_delay_ms: std::sync::atomic::AtomicU64::new(0),
        };
        // Create the tables up front so readers never meet a missing table.
        let txn = store
            .db
            .begin_write()
            .map_err(|e| open_error(e.to_string()))?;
        let tables = (|| {
            txn.open_table(SESSIONS)?;
            txn.open_table(USERS)?;
            txn.open_table(LINKS)?;
            txn.open_table(EMAILS)?;
            txn.open_table(USERNAMES)?;
            txn.open_table(AUDIT)?;
            Ok::<(), redb::TableError>(())
        })();
        tables.map_err(|e| open_error(e.to_string()))?;
        txn.commit().map_err(|e| open_error(e.to_string()))?;
        Ok(store)
    }

    /// For tests only (Gatehouse never calls it): every later commit first waits `delay`, as
    /// on a slow disk, so a test can show that no proxy thread waits for a commit.
    #[doc(hidden)]
    pub fn inject_commit_delay(&self, delay: std::time::Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.commit_delay_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one write transaction and commits it (durably) when `f` returns `Ok`; an
    /// `Err` rolls everything back. Blocks while another write transaction is open: call it
    /// off the async runtime (`spawn_blocking`) where that matters.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut tx = Tx {
            txn: self.db.begin_write().map_err(StoreError::db)?,
        };
        let out = f(&mut tx)?;
        let delay = self
            .commit_delay_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        tx.txn.commit().map_err(StoreError::db)?;
        Ok(out)
    }

    /// Runs `f` on a consistent read snapshot (no disk write).
    pub fn read<T>(
        &self,
        f: impl FnOnce(&ReadTx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = ReadTx {
            txn: self.db.begin_read().map_err(StoreError::db)?,
        };
        f(&tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store holds sessions and sealed second-factor secrets: a new file is for its owner
    /// only, and one that others may read is refused at open, naming the file and the fix.
    #[cfg(unix)]
    #[test]
    fn the_store_file_is_created_0600_and_refused_when_others_may_read_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        drop(Store::open(dir.path()).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Store::open(dir.path()).unwrap_err();
        assert!(error.to_string().contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(
            Store::open(dir.path()).is_ok(),
            "the same file opens once fixed"
        );
    }

    #[test]
    fn a_second_open_of_the_same_file_is_a_locked_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let error = Store::open(dir.path()).unwrap_err();
        assert!(matches!(error, StoreError::Locked(_)), "{error}");
        assert!(error.to_string().contains(FILE_NAME), "{error}");
    }

    #[test]
    fn a_record_from_a_newer_format_is_refused() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct R {
            version: u8,
        }
        assert!(decode::<R>(br#"{"version":9}"#, 1).is_err());
        assert!(decode::<R>(br#"{"version":1}"#, 1).is_ok());
    }
}
