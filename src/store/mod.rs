//! The store: accounts, their links and indexes, sessions and the audit log. Two engines sit
//! behind one interface: the embedded redb file in the data directory (the default, one
//! process) and PostgreSQL (several replicas). Values are versioned JSON, and every change is
//! one write transaction ([`Store::write`]). Writes happen at login, logout, token refresh and
//! admin commands, never per proxied request.
//!
//! - [`sessions`]: the server-side session records (the revocation record).
//! - [`users`]: local accounts, the identities linked to them, the email and username indexes.
//! - [`audit`]: the append-only audit log.
//! - [`copy`]: `gatehouse store copy`, the embedded file into an empty PostgreSQL database.
//! - [`raw`]: what an engine provides; [`redb_engine`] and [`postgres`] provide it.

pub mod audit;
pub mod copy;
pub mod postgres;
pub mod raw;
pub mod redb_engine;
pub mod sessions;
pub mod users;
pub mod writer;

use std::path::{Path, PathBuf};

use raw::{RawRead, RawWrite};
pub use redb_engine::FILE_NAME;

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
    /// Another transaction changed the same rows first (a unique entry, a link); the
    /// transaction is retried by [`Store::write`].
    #[error("a concurrent change won: {0}")]
    Conflict(String),
    /// The database cannot be reached (PostgreSQL down, the pool exhausted).
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
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

/// How often [`Store::write`] runs a transaction that lost a race (a [`StoreError::Conflict`]).
const CONFLICT_ATTEMPTS: usize = 8;

enum Engine {
    Redb(redb_engine::RedbStore),
    Postgres(postgres::PgStore),
}

/// The open store.
pub struct Store {
    engine: Engine,
    /// Milliseconds every commit waits first: 0, except in tests that stand in a slow disk.
    commit_delay_ms: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.engine {
            Engine::Redb(db) => f.debug_struct("Store").field("path", &db.path()).finish(),
            Engine::Postgres(db) => f.debug_struct("Store").field("url", &db.shown()).finish(),
        }
    }
}

/// One write transaction: everything done through it commits together, or not at all.
pub struct Tx {
    raw: Box<dyn RawWrite>,
}

impl Tx {
    fn reader(&self) -> &dyn RawRead {
        &*self.raw
    }

    /// For benches only (never called by Gatehouse): this transaction commits without the
    /// fsync (redb's `Durability::None`), so a bench can show how much of a commit is the
    /// fsync. Such a commit is lost on a crash until a later durable commit.
    #[doc(hidden)]
    pub fn bench_only_skip_fsync(&mut self) -> Result<(), StoreError> {
        self.raw.skip_fsync()
    }
}

/// One read transaction: a consistent snapshot.
pub struct ReadTx {
    raw: Box<dyn RawRead>,
}

impl ReadTx {
    fn reader(&self) -> &dyn RawRead {
        &*self.raw
    }
}

impl Store {
    /// Opens the embedded store in `data_dir`, creating the directory and the file if needed.
    /// A file that is corrupt, locked by another process or unwritable is an error naming the
    /// file; it is never recreated.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self::with_engine(Engine::Redb(
            redb_engine::RedbStore::open(data_dir)?,
        )))
    }

    /// Opens the store the config names: the embedded file in `data_dir`, or PostgreSQL.
    pub fn open_configured(config: &crate::config::model::Config) -> Result<Self, StoreError> {
        use crate::config::model::StoreBackend;
        match &config.store_backend {
            StoreBackend::Redb => Self::open(&config.data_dir),
            StoreBackend::Postgres(pg) => Self::open_postgres(&postgres::PgOptions::configured(pg)),
        }
    }

    /// Opens a PostgreSQL store (connects, checks and migrates the schema).
    pub fn open_postgres(options: &postgres::PgOptions) -> Result<Self, StoreError> {
        Ok(Self::with_engine(Engine::Postgres(
            postgres::PgStore::open(options)?,
        )))
    }

    /// The PostgreSQL engine, when that is the backend.
    pub fn postgres(&self) -> Option<&postgres::PgStore> {
        match &self.engine {
            Engine::Postgres(db) => Some(db),
            Engine::Redb(_) => None,
        }
    }

    fn with_engine(engine: Engine) -> Self {
        Self {
            engine,
            commit_delay_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// For tests only (Gatehouse never calls it): every later commit first waits `delay`, as
    /// on a slow disk, so a test can show that no proxy thread waits for a commit.
    #[doc(hidden)]
    pub fn inject_commit_delay(&self, delay: std::time::Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.commit_delay_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Where the store lives, for messages: the file, or the database URL without password.
    pub fn location(&self) -> String {
        match &self.engine {
            Engine::Redb(db) => db.path().display().to_string(),
            Engine::Postgres(db) => db.shown().to_string(),
        }
    }

    /// The embedded store's file (`None` for PostgreSQL).
    pub fn path(&self) -> Option<&Path> {
        match &self.engine {
            Engine::Redb(db) => Some(db.path()),
            Engine::Postgres(_) => None,
        }
    }

    /// Whether other processes share this store (PostgreSQL): then sessions, revocations and
    /// account changes may come from elsewhere.
    pub fn is_shared(&self) -> bool {
        match &self.engine {
            Engine::Redb(_) => false,
            Engine::Postgres(_) => true,
        }
    }

    /// Marks a login state used; `false` when it was used already. Only a shared store
    /// answers here: one process keeps used states in memory (`auth`), and a state is
    /// single-use across replicas through this table.
    pub fn use_login_state(&self, state: &str, expires_at: u64) -> Result<bool, StoreError> {
        match &self.engine {
            Engine::Redb(_) => Ok(true),
            Engine::Postgres(db) => db.use_login_state(state, expires_at),
        }
    }

    /// Whether the store answered last time it was asked (always, for the embedded file).
    pub fn is_up(&self) -> bool {
        match &self.engine {
            Engine::Redb(_) => true,
            Engine::Postgres(db) => db.is_up(),
        }
    }

    /// Whether a shared store has been unreachable for longer than its `offline_grace`
    /// (never for the embedded file).
    pub fn offline_past_grace(&self) -> bool {
        match &self.engine {
            Engine::Redb(_) => false,
            Engine::Postgres(db) => db.offline_past_grace(),
        }
    }

    fn begin_write(&self) -> Result<Tx, StoreError> {
        let raw = match &self.engine {
            Engine::Redb(db) => db.begin_write()?,
            Engine::Postgres(db) => db.begin_write()?,
        };
        Ok(Tx { raw })
    }

    /// Runs `f` in one write transaction and commits it (durably) when `f` returns `Ok`; an
    /// `Err` rolls everything back. A transaction that lost a race with another one (a
    /// [`StoreError::Conflict`]: two replicas creating the same account) is run again, so
    /// `f` may run more than once. Blocks while another write transaction is open (and, on
    /// PostgreSQL, for the network): call it off the async runtime (`spawn_blocking`).
    pub fn write<T>(
        &self,
        mut f: impl FnMut(&mut Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut attempt = 1;
        loop {
            match self.write_once(&mut f) {
                Err(StoreError::Conflict(why)) if attempt < CONFLICT_ATTEMPTS => {
                    tracing::debug!(attempt, why = %why, "a store transaction lost a race; running it again");
                    attempt += 1;
                    // A little jitter, so two losers do not meet again at once.
                    let pause = 1 + (u64::from(rand::random::<u8>()) % (4 * attempt as u64));
                    std::thread::sleep(std::time::Duration::from_millis(pause));
                }
                other => return other,
            }
        }
    }

    fn write_once<T>(
        &self,
        f: &mut impl FnMut(&mut Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut tx = self.begin_write()?;
        let out = f(&mut tx)?;
        let delay = self
            .commit_delay_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        tx.raw.commit()?;
        Ok(out)
    }

    /// Runs `f` on a consistent read snapshot (no disk write).
    pub fn read<T>(
        &self,
        f: impl FnOnce(&ReadTx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let raw = match &self.engine {
            Engine::Redb(db) => db.begin_read()?,
            Engine::Postgres(db) => db.begin_read()?,
        };
        f(&ReadTx { raw })
    }
}

/// Pending records (a login waiting for its second factor, an emailed code): opaque bytes
/// with an expiry, kept where every replica finds them. Only a shared store keeps them (the
/// embedded store's single process keeps them in memory, `mfa::gate`); on the embedded
/// store these calls are errors.
impl Store {
    fn shared_only(&self) -> Result<&postgres::PgStore, StoreError> {
        self.postgres().ok_or_else(|| {
            StoreError::Db("pending records are kept in memory with the embedded store".into())
        })
    }

    /// Keeps `record` under `id` until `expires_at` (replacing one under the same id).
    pub fn put_pending(&self, id: &str, record: &[u8], expires_at: u64) -> Result<(), StoreError> {
        self.shared_only()?.put_pending(id, record, expires_at)
    }

    /// The record under `id`, unless it expired by `now`.
    pub fn pending(&self, id: &str, now: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.shared_only()?.pending(id, now)
    }

    /// Takes the record under `id` out, once: of two takers (two replicas) only one gets it.
    pub fn take_pending(&self, id: &str, now: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.shared_only()?.take_pending(id, now)
    }

    /// Changes the record under `id` atomically (replicas take turns): `change` gets the
    /// record (unless expired by `now`) and returns the one to keep with its expiry
    /// (`None`: delete it) and an answer.
    pub fn update_pending<T>(
        &self,
        id: &str,
        now: u64,
        change: impl FnOnce(Option<Vec<u8>>) -> (Option<(Vec<u8>, u64)>, T),
    ) -> Result<T, StoreError> {
        self.shared_only()?.update_pending(id, now, change)
    }

    /// Deletes the records expired by `now`; returns how many.
    pub fn prune_pending(&self, now: u64) -> Result<u64, StoreError> {
        self.shared_only()?.prune_pending(now)
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
