//! Keys every replica must hold alike when they share a PostgreSQL store: the session-cookie
//! keys, the keys that seal second-factor secrets, and the identity-header signing key. A key
//! the config gives wins (nothing is shared then). Otherwise each is generated once: the
//! first replica to start stores its own (a unique row), and every other replica takes that
//! one and writes it into its data directory (mode 0600), where the loaders read it as with
//! the embedded store. Whoever can read the database can therefore read these keys (see the
//! README, "Running several replicas").

use std::path::{Path, PathBuf};

use crate::config::model::Config;
use crate::identity::assertion::AssertionSigner;
use crate::store::{Store, StoreError};

/// Makes a fresh key file at the path (when none is there).
type Create = Box<dyn Fn(&Path) -> Result<(), String>>;

/// One key file in the data directory, and how a fresh one is made.
struct KeyFile {
    /// Its name, in the data directory and in the `shared_keys` table.
    name: String,
    create: Create,
}

fn key_files(config: &Config) -> Vec<KeyFile> {
    let mut files = Vec::new();
    let sealing = |path: &Path| crate::seal::load_or_create_keys(path).map(|_| ());
    if config.session.keys.0.is_none() {
        files.push(KeyFile {
            name: "session.keys".into(),
            create: Box::new(sealing),
        });
    }
    if config.mfa.keys.0.is_none() {
        files.push(KeyFile {
            name: "store.keys".into(),
            create: Box::new(sealing),
        });
    }
    if let Some(signing) = config
        .identity
        .signing
        .as_ref()
        .filter(|s| s.key_file.is_none())
    {
        let alg = signing.alg;
        files.push(KeyFile {
            name: format!("identity-signing-{}.pem", alg.file_word()),
            create: Box::new(move |path: &Path| {
                let dir = path.parent().unwrap_or(Path::new("."));
                AssertionSigner::load_or_create(alg, None, dir)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }),
        });
    }
    files
}

/// Makes the data directory's generated keys the ones every replica shares. Nothing to do
/// with the embedded store.
pub fn share(config: &Config, store: &Store) -> Result<(), StoreError> {
    let Some(pg) = store.postgres() else {
        return Ok(());
    };
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| StoreError::Db(format!("cannot create {}: {e}", config.data_dir.display())))?;
    for file in key_files(config) {
        let path = config.data_dir.join(&file.name);
        (file.create)(&path).map_err(StoreError::Db)?;
        let mine = std::fs::read(&path)
            .map_err(|e| StoreError::Db(format!("cannot read {}: {e}", path.display())))?;
        let shared = pg.shared_key(&file.name, mine.clone())?;
        if shared != mine {
            replace(&path, &shared)?;
            tracing::info!(key = %file.name, "took the key the other replicas share");
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` whole (a new 0600 file renamed over the old one).
fn replace(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let fail = |e: std::io::Error| StoreError::Db(format!("cannot write {}: {e}", path.display()));
    let temp = PathBuf::from(format!("{}.{}.tmp", path.display(), std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let mut file = crate::private_file::create_new()
        .open(&temp)
        .map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&temp, path).map_err(fail)
}
