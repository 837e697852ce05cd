//! The embedded engine: one redb file in the data directory, held by one process. Every
//! commit is durable (redb's default `Durability::Immediate`).

use std::path::{Path, PathBuf};

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, WriteTransaction,
};

use super::raw::{Counted, Index, RawRead, RawWrite, Rows};
use super::sessions::{SessionColumns, SessionOwner};
use super::StoreError;

/// Sessions by session id: the server-side record behind every session cookie.
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// Local accounts by their local user id (a UUIDv7).
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// (connection id, IdP `sub`) -> user id.
const LINKS: TableDefinition<(&str, &str), &str> = TableDefinition::new("links");
/// Normalized (trimmed, lower-case) email -> user id.
const EMAILS: TableDefinition<&str, &str> = TableDefinition::new("emails");
/// Lower-case username -> user id (usernames are unique without regard to case).
const USERNAMES: TableDefinition<&str, &str> = TableDefinition::new("usernames");
/// Sequence number -> audit entry; only ever appended to.
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// The store file's name inside the data directory.
pub const FILE_NAME: &str = "gatehouse.redb";

fn rows_table(rows: Rows) -> TableDefinition<'static, &'static str, &'static [u8]> {
    match rows {
        Rows::Users => USERS,
        Rows::Sessions => SESSIONS,
    }
}

fn index_table(index: Index) -> TableDefinition<'static, &'static str, &'static str> {
    match index {
        Index::Emails => EMAILS,
        Index::Usernames => USERNAMES,
    }
}

/// The open file.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

impl RedbStore {
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
        // Create the tables up front so readers never meet a missing table.
        create_tables(&db).map_err(open_error)?;
        Ok(Self { db, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn begin_write(&self) -> Result<Box<dyn RawWrite>, StoreError> {
        Ok(Box::new(RedbWrite {
            txn: self.db.begin_write().map_err(StoreError::db)?,
        }))
    }

    pub fn begin_read(&self) -> Result<Box<dyn RawRead>, StoreError> {
        Ok(Box::new(RedbRead {
            txn: self.db.begin_read().map_err(StoreError::db)?,
        }))
    }
}

struct RedbWrite {
    txn: WriteTransaction,
}

struct RedbRead {
    txn: ReadTransaction,
}

fn value_of(
    got: Result<Option<redb::AccessGuard<'_, &'static str>>, redb::StorageError>,
) -> Result<Option<String>, StoreError> {
    Ok(got
        .map_err(StoreError::db)?
        .map(|guard| guard.value().to_string()))
}

/// The reads, written once for redb's two transaction types (their tables differ in type).
macro_rules! redb_reads {
    ($t:ty) => {
        impl RawRead for $t {
            fn get(&self, rows: Rows, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
                let table = self
                    .txn
                    .open_table(rows_table(rows))
                    .map_err(StoreError::db)?;
                let got = table.get(key).map_err(StoreError::db)?;
                Ok(got.map(|v| v.value().to_vec()))
            }

            fn scan(&self, rows: Rows) -> Result<Vec<Vec<u8>>, StoreError> {
                let table = self
                    .txn
                    .open_table(rows_table(rows))
                    .map_err(StoreError::db)?;
                let mut out = Vec::new();
                for entry in table.iter().map_err(StoreError::db)? {
                    let (_, value) = entry.map_err(StoreError::db)?;
                    out.push(value.value().to_vec());
                }
                Ok(out)
            }

            fn index(&self, index: Index, key: &str) -> Result<Option<String>, StoreError> {
                let table = self
                    .txn
                    .open_table(index_table(index))
                    .map_err(StoreError::db)?;
                let got = table.get(key).map_err(StoreError::db)?;
                Ok(got.map(|v| v.value().to_string()))
            }

            fn link(&self, connection: &str, subject: &str) -> Result<Option<String>, StoreError> {
                let table = self.txn.open_table(LINKS).map_err(StoreError::db)?;
                let got = table.get((connection, subject)).map_err(StoreError::db)?;
                Ok(got.map(|v| v.value().to_string()))
            }

            fn count(&self, what: Counted) -> Result<u64, StoreError> {
                match what {
                    Counted::Users => self.txn.open_table(USERS).map_err(StoreError::db)?.len(),
                    Counted::Links => self.txn.open_table(LINKS).map_err(StoreError::db)?.len(),
                    Counted::Emails => self.txn.open_table(EMAILS).map_err(StoreError::db)?.len(),
                    Counted::Usernames => self
                        .txn
                        .open_table(USERNAMES)
                        .map_err(StoreError::db)?
                        .len(),
                    Counted::Sessions => {
                        self.txn.open_table(SESSIONS).map_err(StoreError::db)?.len()
                    }
                    Counted::Audit => self.txn.open_table(AUDIT).map_err(StoreError::db)?.len(),
                }
                .map_err(StoreError::db)
            }

            fn sessions_of(&self, owner: &SessionOwner) -> Result<Vec<String>, StoreError> {
                // One process holds the redb file and every session is in its memory, which
                // has indexes; this scan serves only the rare store-level deletion.
                let table = self.txn.open_table(SESSIONS).map_err(StoreError::db)?;
                let mut out = Vec::new();
                for entry in table.iter().map_err(StoreError::db)? {
                    let (key, value) = entry.map_err(StoreError::db)?;
                    let owned = SessionColumns::of(value.value())
                        .is_ok_and(|columns| columns.belongs_to(owner));
                    if owned {
                        out.push(key.value().to_string());
                    }
                }
                Ok(out)
            }

            fn audit(&self, user_id: Option<&str>) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
                #[derive(serde::Deserialize)]
                struct About {
                    user_id: Option<String>,
                }
                let table = self.txn.open_table(AUDIT).map_err(StoreError::db)?;
                let mut out = Vec::new();
                for row in table.iter().map_err(StoreError::db)? {
                    let (seq, value) = row.map_err(StoreError::db)?;
                    let bytes = value.value();
                    if let Some(wanted) = user_id {
                        let about: About = serde_json::from_slice(bytes)
                            .map_err(|e| StoreError::Decode(e.to_string()))?;
                        if about.user_id.as_deref() != Some(wanted) {
                            continue;
                        }
                    }
                    out.push((seq.value(), bytes.to_vec()));
                }
                Ok(out)
            }

            fn keyed(&self, rows: Rows) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
                let table = self
                    .txn
                    .open_table(rows_table(rows))
                    .map_err(StoreError::db)?;
                let mut out = Vec::new();
                for entry in table.iter().map_err(StoreError::db)? {
                    let (key, value) = entry.map_err(StoreError::db)?;
                    out.push((key.value().to_string(), value.value().to_vec()));
                }
                Ok(out)
            }

            fn index_entries(&self, index: Index) -> Result<Vec<(String, String)>, StoreError> {
                let table = self
                    .txn
                    .open_table(index_table(index))
                    .map_err(StoreError::db)?;
                let mut out = Vec::new();
                for entry in table.iter().map_err(StoreError::db)? {
                    let (key, value) = entry.map_err(StoreError::db)?;
                    out.push((key.value().to_string(), value.value().to_string()));
                }
                Ok(out)
            }

            fn links(&self) -> Result<Vec<(String, String, String)>, StoreError> {
                let table = self.txn.open_table(LINKS).map_err(StoreError::db)?;
                let mut out = Vec::new();
                for entry in table.iter().map_err(StoreError::db)? {
                    let (key, value) = entry.map_err(StoreError::db)?;
                    let (connection, subject) = key.value();
                    out.push((
                        connection.to_string(),
                        subject.to_string(),
                        value.value().to_string(),
                    ));
                }
                Ok(out)
            }
        }
    };
}

redb_reads!(RedbWrite);
redb_reads!(RedbRead);

impl RawWrite for RedbWrite {
    fn put(&mut self, rows: Rows, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let mut table = self
            .txn
            .open_table(rows_table(rows))
            .map_err(StoreError::db)?;
        table.insert(key, value).map_err(StoreError::db)?;
        Ok(())
    }

    fn remove(&mut self, rows: Rows, key: &str) -> Result<bool, StoreError> {
        let mut table = self
            .txn
            .open_table(rows_table(rows))
            .map_err(StoreError::db)?;
        let removed = table.remove(key).map_err(StoreError::db)?;
        Ok(removed.is_some())
    }

    fn claim(
        &mut self,
        index: Index,
        key: &str,
        user_id: &str,
        replacing: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut table = self
            .txn
            .open_table(index_table(index))
            .map_err(StoreError::db)?;
        let holder = value_of(table.get(key))?;
        match holder.as_deref() {
            Some(id) if id == user_id => Ok(()),
            Some(id) if Some(id) != replacing => Err(StoreError::Conflict(format!(
                "{} entry already held by another account",
                index.name()
            ))),
            _ => {
                table.insert(key, user_id).map_err(StoreError::db)?;
                Ok(())
            }
        }
    }

    fn release(&mut self, index: Index, key: &str, user_id: &str) -> Result<(), StoreError> {
        let mut table = self
            .txn
            .open_table(index_table(index))
            .map_err(StoreError::db)?;
        if value_of(table.get(key))?.as_deref() == Some(user_id) {
            table.remove(key).map_err(StoreError::db)?;
        }
        Ok(())
    }

    fn set_link(
        &mut self,
        connection: &str,
        subject: &str,
        user_id: &str,
    ) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(LINKS).map_err(StoreError::db)?;
        let current = value_of(table.get((connection, subject)))?;
        match current.as_deref() {
            Some(id) if id == user_id => Ok(()),
            Some(id)
                if self
                    .txn
                    .open_table(USERS)
                    .map_err(StoreError::db)?
                    .get(id)
                    .map_err(StoreError::db)?
                    .is_some() =>
            {
                Err(StoreError::Conflict(
                    "the identity is already linked to another account".into(),
                ))
            }
            _ => {
                table
                    .insert((connection, subject), user_id)
                    .map_err(StoreError::db)?;
                Ok(())
            }
        }
    }

    fn remove_link(&mut self, connection: &str, subject: &str) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(LINKS).map_err(StoreError::db)?;
        table
            .remove((connection, subject))
            .map_err(StoreError::db)?;
        Ok(())
    }

    fn append_audit(
        &mut self,
        _user_id: Option<&str>,
        encode: &dyn Fn(u64) -> Result<Vec<u8>, StoreError>,
    ) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(AUDIT).map_err(StoreError::db)?;
        let seq = table
            .last()
            .map_err(StoreError::db)?
            .map_or(1, |(k, _)| k.value() + 1);
        let bytes = encode(seq)?;
        table
            .insert(seq, bytes.as_slice())
            .map_err(StoreError::db)?;
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.txn.commit().map_err(StoreError::db)
    }

    fn skip_fsync(&mut self) -> Result<(), StoreError> {
        self.txn
            .set_durability(redb::Durability::None)
            .map_err(StoreError::db)
    }

    fn put_audit(
        &mut self,
        seq: u64,
        _user_id: Option<&str>,
        entry: &[u8],
    ) -> Result<(), StoreError> {
        // Appends number after the last key, so they follow whatever was put here.
        let mut table = self.txn.open_table(AUDIT).map_err(StoreError::db)?;
        table.insert(seq, entry).map_err(StoreError::db)?;
        Ok(())
    }
}

impl RedbStore {
    /// Opens an existing store file by its path (any name: a copy, a backup), for
    /// `store copy`. A missing file is an error (never created); one held by a running
    /// gatehouse is [`StoreError::Locked`]; the file's permissions are checked as at
    /// [`RedbStore::open`].
    pub fn open_file(path: &Path) -> Result<Self, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            path: path.to_path_buf(),
            reason,
        };
        if !path.is_file() {
            return Err(open_error("no such store file".to_string()));
        }
        crate::private_file::check(path).map_err(open_error)?;
        let db = Database::open(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(path.to_path_buf()),
            other => open_error(other.to_string()),
        })?;
        // A file from an older gatehouse may lack a table: the missing ones are created empty.
        create_tables(&db).map_err(open_error)?;
        Ok(Self {
            db,
            path: path.to_path_buf(),
        })
    }
}

/// Creates the tables that do not exist yet, so readers never meet a missing table.
fn create_tables(db: &Database) -> Result<(), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    let tables = (|| {
        txn.open_table(SESSIONS)?;
        txn.open_table(USERS)?;
        txn.open_table(LINKS)?;
        txn.open_table(EMAILS)?;
        txn.open_table(USERNAMES)?;
        txn.open_table(AUDIT)?;
        Ok::<(), redb::TableError>(())
    })();
    tables.map_err(|e| e.to_string())?;
    txn.commit().map_err(|e| e.to_string())
}
