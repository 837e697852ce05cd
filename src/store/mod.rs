//! The embedded store: one redb file in the data directory. Tables are defined here, values are
//! versioned JSON, and every change is one write transaction. Writes happen at login, logout and
//! token refresh, never per proxied request.

pub mod sessions;

use std::path::{Path, PathBuf};

use redb::{Database, TableDefinition};

/// Sessions by session id: the server-side record behind every session cookie.
pub const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");

/// The store file's name inside the data directory.
pub const FILE_NAME: &str = "gatehouse.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("store error: {0}")]
    Db(String),
    #[error("a stored record is unreadable: {0}")]
    Decode(String),
}

impl StoreError {
    fn db(e: impl std::fmt::Display) -> Self {
        StoreError::Db(e.to_string())
    }
}

/// The open store.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
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
        let db = Database::create(&path).map_err(|e| open_error(e.to_string()))?;
        let store = Self {
            db,
            path: path.clone(),
        };
        // Create the tables up front so readers never meet a missing table.
        let txn = store
            .db
            .begin_write()
            .map_err(|e| open_error(e.to_string()))?;
        txn.open_table(SESSIONS)
            .map_err(|e| open_error(e.to_string()))?;
        txn.commit().map_err(|e| open_error(e.to_string()))?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
