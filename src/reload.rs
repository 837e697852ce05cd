//! Config reload: `SIGHUP` or `POST /api/reload` on the admin listener read the config file
//! again. The new file goes through the same checks as `check-config`; when it has any
//! problem, the old config keeps serving and the problems are logged with their key paths.
//!
//! What a reload applies: `[[upstreams]]` (host names resolved again, off the proxy threads),
//! `[[public]]`, `[[access]]` (for proxied requests and forward-auth answers), `[pages]`,
//! `[server] reject_double_encoding`, `[log] level`, and, when Gatehouse started with a
//! connection, `[[connections]]`, `[login]`, `[mfa]` and `[smtp]`:
//!
//! - an added connection is discovered in the background (as at startup) and offered at once;
//! - a removed connection starts no login from now on, a login in flight through it fails at
//!   the callback, its sessions end (in memory and in the store) and its bearer tokens are
//!   refused; a connection whose issuer changed counts as removed and added;
//! - a changed connection (secret, scopes, claims, JIT, second factor, ...) applies to the
//!   next login; its sessions go on;
//! - `[mfa]` and `[login]` apply to the next request; a new `[mfa] keys` list seals with its
//!   first key and opens with every listed key, and a reload that drops a key still sealing
//!   a stored TOTP secret is refused (naming `mfa.keys`), since those accounts could no
//!   longer sign in.
//!
//! The new routing and login settings are swapped in whole (one atomic pointer, which the
//! routing holds the settings behind): a request is served by the old config or by the new
//! one, never by a mix; requests in flight finish on the one they started with; sessions of
//! connections that stay are untouched.
//!
//! With TLS listeners, every reload also reads the certificate and key again (from
//! `[server] tls_cert` and `tls_key` of the new file), whether or not the file changed: a
//! renewed certificate usually keeps its path. The pair is checked (it parses, the key goes
//! with the certificate) before anything is swapped; a bad pair refuses the reload like any
//! other problem, naming `server.tls_cert` or `server.tls_key`, and the old certificate keeps
//! serving. New handshakes get the new certificate; established connections keep theirs
//! (see [`certs`]).
//!
//! Everything else needs a restart (listeners, `tls_listen`, turning TLS on or off, the
//! store, sessions, headers, limits, the admin token, identity signing; and connections when
//! Gatehouse started without any). A reload that changes such keys applies the rest and names
//! the keys it left, in the log and in the answer.

pub mod certs;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;
use sha2::Digest;

use crate::auth::{Auth, AuthSetupError, Settings};
use crate::clock::Clock;
use crate::config::Config;
use crate::identity::assertion::AssertionSigner;
use crate::metrics::{Metrics, ReloadResult};
use crate::proxy::resolve::ResolveHandle;
use crate::proxy::Routing;

/// The key paths a reload applies; a change anywhere else waits for a restart.
const RELOADABLE: &[&str] = &[
    "upstreams",
    "public",
    "access",
    "pages",
    "log.level",
    "server.reject_double_encoding",
];

/// The key paths a reload applies when the login machinery runs (Gatehouse started with at
/// least one connection; without one, there is no store and no login to change).
const RELOADABLE_WITH_LOGIN: &[&str] = &["connections", "login", "mfa", "smtp"];

/// The key paths a reload applies when TLS listeners run and the new file keeps TLS on.
const RELOADABLE_WITH_TLS: &[&str] = &[certs::CERT_KEY, certs::KEY_KEY];

/// What a reload did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Reloaded {
    /// The first 16 hex digits of the SHA-256 of the file now live.
    pub hash: String,
    /// Changed keys that were applied.
    pub applied: Vec<String>,
    /// Changed keys left as they were until a restart.
    pub needs_restart: Vec<String>,
    /// Connections added, and ones whose sign-ins stopped (removed, or given another issuer:
    /// their sessions ended).
    #[serde(skip_serializing_if = "Connections::is_empty")]
    pub connections: Connections,
    /// The TLS certificate served from now on (read again at every reload), with TLS
    /// listeners.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<ServedCertificate>,
}

/// The TLS certificate a reload left serving.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct ServedCertificate {
    /// Its notAfter, unix seconds.
    pub not_after: i64,
    /// Whether it differs from the one served before the reload.
    pub changed: bool,
}

/// What a reload did to the connections.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Connections {
    /// New connections (and ones with a new issuer), discovered in the background.
    pub added: Vec<String>,
    /// Connections that are gone (or have a new issuer): their sessions ended.
    pub removed: Vec<String>,
    /// Connections whose settings changed: for the next login.
    pub changed: Vec<String>,
    /// Sessions ended because their connection went away.
    pub sessions_ended: usize,
}

impl Connections {
    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Why a reload changed nothing.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, thiserror::Error)]
#[error("config reload refused: {}", problems.join("; "))]
pub struct ReloadRefused {
    /// Each problem with its key path, as `check-config` reports them.
    pub problems: Vec<String>,
}

/// The live config and what it was built into.
struct Live {
    config: Config,
    /// The file as TOML, to tell which keys a new file changes.
    document: toml::Table,
}

/// Reloads the config from its file into the running proxy.
pub struct Reloader {
    path: PathBuf,
    live: Mutex<Live>,
    routing: Arc<ArcSwap<Routing>>,
    resolver: ResolveHandle,
    auth: Option<Arc<Auth>>,
    signer: Option<Arc<AssertionSigner>>,
    clock: Clock,
    metrics: Arc<Metrics>,
    certificates: Option<Arc<certs::Certificates>>,
}

/// The first 16 hex digits of the SHA-256 of `bytes`.
fn short_hash(bytes: &[u8]) -> String {
    let digest = sha2::Sha256::digest(bytes);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The dotted key paths where two TOML tables differ (down to the second level: a table's
/// keys; arrays of tables count as one key).
pub fn changed_keys(old: &toml::Table, new: &toml::Table) -> Vec<String> {
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut changed = Vec::new();
    for key in keys {
        match (old.get(key), new.get(key)) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                let mut inner: Vec<&String> = a.keys().chain(b.keys()).collect();
                inner.sort();
                inner.dedup();
                for k in inner {
                    if a.get(k) != b.get(k) {
                        changed.push(format!("{key}.{k}"));
                    }
                }
            }
            (a, b) if a != b => changed.push(key.clone()),
            _ => {}
        }
    }
    changed
}

/// Whether a changed key is applied by a reload; `with_login`: the login machinery runs;
/// `with_tls`: TLS listeners run and the new file keeps TLS on.
fn is_reloadable(key: &str, with_login: bool, with_tls: bool) -> bool {
    let listed = |r: &&str| key == *r || key.starts_with(&format!("{r}."));
    RELOADABLE.iter().any(listed)
        || (with_login && RELOADABLE_WITH_LOGIN.iter().any(listed))
        || (with_tls && RELOADABLE_WITH_TLS.iter().any(listed))
}

fn read_document(path: &Path) -> Result<(Vec<u8>, toml::Table), ReloadRefused> {
    let bytes = std::fs::read(path).map_err(|e| ReloadRefused {
        problems: vec![format!("(file): cannot read {}: {e}", path.display())],
    })?;
    let document = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .unwrap_or_default();
    Ok((bytes, document))
}

/// The login settings of a reloaded config, built and checked, not yet in force.
struct PreparedLogin {
    settings: Arc<Settings>,
    old: Arc<Settings>,
}

/// Builds the login settings of `next` beside the ones in force (unchanged connections keep
/// their provider) and checks that every TOTP secret the store holds still opens.
fn prepare_login(auth: &Auth, next: &Config) -> Result<PreparedLogin, ReloadRefused> {
    let old = auth.settings();
    let settings = Settings::build(next, Some(&old), &auth.clock).map_err(|e| ReloadRefused {
        problems: vec![match e {
            AuthSetupError::Connection(id, why) => format!("connections ({id}): {why}"),
            AuthSetupError::Keys(why) => format!("mfa.keys: {why}"),
            other => other.to_string(),
        }],
    })?;
    if settings.mfa.keys() != old.mfa.keys() {
        still_open(&auth.store, old.mfa.keys(), settings.mfa.keys())?;
    }
    Ok(PreparedLogin {
        settings: Arc::new(settings),
        old,
    })
}

/// Refuses a `[mfa] keys` list that drops a key still sealing a stored TOTP secret: those
/// accounts could no longer pass their second factor. (A secret no old key opened either is
/// not this reload's doing and does not count.)
fn still_open(
    store: &crate::store::Store,
    old: &[[u8; 32]],
    kept: &[[u8; 32]],
) -> Result<(), ReloadRefused> {
    let users = store.read(|tx| tx.users()).map_err(|e| ReloadRefused {
        problems: vec![format!(
            "mfa.keys: cannot read the stored TOTP secrets to check the new key list: {e}"
        )],
    })?;
    let mut problems = Vec::new();
    for (position, key) in old.iter().enumerate() {
        if kept.contains(key) {
            continue;
        }
        let Ok(alone) = crate::seal::Sealer::new(vec![*key]) else {
            continue;
        };
        let sealed = users
            .iter()
            .filter(|u| matches!(u.mfa.open_secret(&alone), Ok(Some(_))))
            .count();
        if sealed > 0 {
            problems.push(format!(
                "mfa.keys: the key listed at position {} before this reload seals the TOTP secrets of {sealed} account(s) and is no longer listed; keep it in the list (after the new first key) so those accounts can still sign in",
                position + 1
            ));
        }
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(ReloadRefused { problems }),
    }
}

impl PreparedLogin {
    /// After the swap: retires the providers no longer in force, hands new ones to
    /// discovery, and ends the sessions of connections that went away.
    fn apply(self, auth: &Auth) -> Connections {
        let mut done = Connections::default();
        for old in &self.old.providers {
            let id = &old.connection.id;
            match self.settings.provider(id) {
                Some(new) if Arc::ptr_eq(new, old) => continue,
                Some(new) if new.connection.issuer == old.connection.issuer => {
                    done.changed.push(id.clone());
                }
                Some(_) => {
                    done.removed.push(id.clone());
                    done.added.push(id.clone());
                }
                None => done.removed.push(id.clone()),
            }
            old.retire();
        }
        let queue = auth.discovery_queue();
        for new in &self.settings.providers {
            let id = &new.connection.id;
            if self.old.provider(id).is_none() {
                done.added.push(id.clone());
                auth.metrics.register_connection(id);
            }
            let inherited = self
                .old
                .provider(id)
                .is_some_and(|old| Arc::ptr_eq(old, new));
            if !inherited && new.current().is_none() {
                auth.metrics.idp_up(id, false);
                match &queue {
                    Some(queue) => queue.discover(new.clone()),
                    None => {
                        tracing::warn!(connection = %id, "no discovery service: the connection is discovered on its first login attempt")
                    }
                }
            }
        }
        for id in &done.removed {
            if self.settings.provider(id).is_none() {
                auth.metrics.forget_idp(id);
            }
        }
        done.sessions_ended = auth.end_sessions_of(&done.removed);
        if !done.is_empty() {
            tracing::info!(added = ?done.added, removed = ?done.removed, changed = ?done.changed, sessions_ended = done.sessions_ended, "connections reloaded");
        }
        done
    }
}

/// The parts the reloader works on, from the server it reloads.
pub struct ReloadTarget {
    pub routing: Arc<ArcSwap<Routing>>,
    pub resolver: ResolveHandle,
    pub auth: Option<Arc<Auth>>,
    pub signer: Option<Arc<AssertionSigner>>,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    /// The certificate the TLS listeners serve, when there are any.
    pub certificates: Option<Arc<certs::Certificates>>,
}

impl Reloader {
    /// A reloader for the server started with `config`, read from `path`.
    pub fn new(path: &Path, config: &Config, target: ReloadTarget) -> Self {
        let (bytes, document) = read_document(path).unwrap_or_default();
        target
            .metrics
            .config
            .live(&short_hash(&bytes), target.clock.now());
        Self {
            path: path.to_path_buf(),
            live: Mutex::new(Live {
                config: config.clone(),
                document,
            }),
            routing: target.routing,
            resolver: target.resolver,
            auth: target.auth,
            signer: target.signer,
            clock: target.clock,
            metrics: target.metrics,
            certificates: target.certificates,
        }
    }

    /// Reads the file again and applies what can be applied. Blocks (file, DNS): call it
    /// off the proxy threads. Never exits the process: a bad file is refused and counted.
    pub fn reload(&self) -> Result<Reloaded, ReloadRefused> {
        let outcome = self.try_reload();
        match &outcome {
            Ok(done) => {
                self.metrics.config.reloaded(ReloadResult::Success);
                self.metrics.config.live(&done.hash, self.clock.now());
                tracing::info!(hash = %done.hash, applied = ?done.applied, "config reloaded");
                if !done.needs_restart.is_empty() {
                    tracing::warn!(keys = ?done.needs_restart, "config reload: these changes need a restart and were left as they were");
                }
            }
            Err(refused) => {
                self.metrics.config.reloaded(ReloadResult::Error);
                for problem in &refused.problems {
                    tracing::error!(problem = %crate::text::Escaped(problem), "config reload refused: the old config keeps serving");
                }
            }
        }
        outcome
    }

    fn try_reload(&self) -> Result<Reloaded, ReloadRefused> {
        let (bytes, document) = read_document(&self.path)?;
        let new = crate::config::load(&self.path).map_err(|errors| ReloadRefused {
            problems: errors.0.iter().map(|e| e.to_string()).collect(),
        })?;
        let mut live = self.live.lock().map_err(|_| ReloadRefused {
            problems: vec!["(internal): a previous reload failed half-way".into()],
        })?;
        let changed = changed_keys(&live.document, &document);
        let with_login = self.auth.is_some();
        // Read again at every reload, changed path or not; checked before anything swaps.
        let certificate = match (&self.certificates, &new.server.tls) {
            (Some(_), Some(tls)) => Some(certs::Loaded::read(&tls.cert, &tls.key).map_err(
                |e| ReloadRefused {
                    problems: vec![e.to_string()],
                },
            )?),
            _ => None,
        };
        let with_tls = certificate.is_some();
        let (applied, needs_restart): (Vec<String>, Vec<String>) = changed
            .into_iter()
            .partition(|k| is_reloadable(k, with_login, with_tls));
        // The config served from now on: the reloadable parts of the new file, the rest as
        // it was (so a key that needs a restart never takes effect half-way).
        let mut next = live.config.clone();
        next.upstreams = new.upstreams;
        next.public = new.public;
        next.access = new.access;
        next.pages = new.pages;
        next.log.level = new.log.level;
        next.server.reject_double_encoding = new.server.reject_double_encoding;
        if let (Some(live_tls), Some(new_tls), true) =
            (next.server.tls.as_mut(), new.server.tls, with_tls)
        {
            live_tls.cert = new_tls.cert;
            live_tls.key = new_tls.key;
        }
        if with_login {
            next.connections = new.connections;
            next.login = new.login;
            next.mfa = new.mfa;
        }
        let peers = self
            .resolver
            .resolve(&next.upstreams)
            .map_err(|e| ReloadRefused {
                problems: vec![e.to_string()],
            })?;
        // Built before anything is swapped: a connection that cannot be set up (an unreadable
        // CA file) or a key change that would lock accounts out refuses the whole reload.
        let login = match &self.auth {
            Some(auth) => Some(prepare_login(auth, &next)?),
            None => None,
        };
        let routing = Routing::new(
            &next,
            &peers,
            self.signer.clone(),
            self.clock_for_signing(),
            login.as_ref().map(|l| l.settings.clone()),
        );
        let mut connections = Connections::default();
        if let (Some(auth), Some(login)) = (&self.auth, login) {
            auth.set_path_rules(&next);
            auth.set_settings(login.settings.clone());
            self.routing.store(Arc::new(routing));
            connections = login.apply(auth);
        } else {
            self.routing.store(Arc::new(routing));
        }
        let certificate = match (&self.certificates, certificate) {
            (Some(served), Some(loaded)) => {
                let changed = !served.serves(&loaded);
                let not_after = loaded.not_after;
                served.replace(loaded);
                if changed {
                    tracing::info!(
                        not_after,
                        "TLS certificate reloaded: new handshakes get the new one"
                    );
                }
                Some(ServedCertificate { not_after, changed })
            }
            _ => None,
        };
        if applied.iter().any(|k| k == "log.level") {
            crate::logging::set_level(&next.log);
        }
        live.config = next;
        live.document = document;
        Ok(Reloaded {
            hash: short_hash(&bytes),
            applied,
            needs_restart,
            connections,
            certificate,
        })
    }

    /// The clock the signed identity header is dated on (it exists only with a connection).
    fn clock_for_signing(&self) -> Option<Clock> {
        self.auth.as_ref().map(|a| a.clock.clone())
    }

    /// Reloads on every SIGHUP, on a thread of its own, until the process ends. From the
    /// moment this returns, SIGHUP no longer ends the process.
    pub fn on_sighup(self: &Arc<Self>) -> std::io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Registered here, before the thread starts: no SIGHUP between now and then kills.
        let mut hangups = {
            let _entered = runtime.enter();
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?
        };
        let reloader = self.clone();
        std::thread::Builder::new()
            .name("gatehouse reload".into())
            .spawn(move || {
                runtime.block_on(async move {
                    while hangups.recv().await.is_some() {
                        tracing::info!("SIGHUP: reloading the config");
                        let _ = reloader.reload();
                    }
                })
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    /// Keys are compared down to a table's own keys; arrays of tables count as one key.
    #[test]
    fn changed_keys_name_every_difference_by_path() {
        let old =
            table("[server]\nlisten = [\"a\"]\nworker_threads = 2\n[[upstreams]]\nurl = \"x\"\n");
        let new = table("[server]\nlisten = [\"b\"]\nworker_threads = 2\n[[upstreams]]\nurl = \"y\"\n[pages]\ntitle = \"t\"\n");
        assert_eq!(
            changed_keys(&old, &new),
            ["pages", "server.listen", "upstreams"]
        );
        assert!(changed_keys(&old, &old).is_empty());
    }

    /// Only the listed keys (and keys under them) reload; a look-alike prefix does not.
    /// Connections, `[login]`, `[mfa]` and `[smtp]` reload only when the login machinery runs.
    #[test]
    fn only_the_listed_keys_reload() {
        for key in ["upstreams", "public", "access", "pages.title", "log.level"] {
            assert!(is_reloadable(key, false, false), "{key}");
            assert!(is_reloadable(key, true, true), "{key}");
        }
        for key in [
            "connections",
            "login.default_connection",
            "mfa.totp",
            "smtp.host",
        ] {
            assert!(is_reloadable(key, true, false), "{key}");
            assert!(!is_reloadable(key, false, true), "{key}");
        }
        for key in ["server.tls_cert", "server.tls_key"] {
            assert!(is_reloadable(key, false, true), "{key}");
            assert!(!is_reloadable(key, true, false), "{key}");
        }
        for key in [
            "server.listen",
            "log.format",
            "pagesx",
            "connectionsx",
            "mfax.totp",
            "session.lifetime",
            "headers.user",
            "store.data_dir",
            "server.tls_listen",
            "server.tls_certx",
        ] {
            assert!(!is_reloadable(key, true, true), "{key}");
        }
    }

    /// A store with one account whose TOTP secret is sealed with `key`, and one whose
    /// secret no key opens (sealed long ago with a key dropped before).
    fn store_with_secret_sealed_by(key: [u8; 32]) -> (tempfile::TempDir, crate::store::Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let sealed = |k: [u8; 32]| {
            crate::seal::Sealer::new(vec![k])
                .unwrap()
                .seal(crate::mfa::record::TOTP_SECRET_PURPOSE, &[7u8; 20])
        };
        store
            .write(|tx| {
                let mut alice = crate::store::users::UserRecord::new("alice".into(), 1);
                alice.mfa.sealed_secret = Some(sealed(key));
                tx.put_user(&alice)?;
                let mut old = crate::store::users::UserRecord::new("old".into(), 1);
                old.mfa.sealed_secret = Some(sealed([99; 32]));
                tx.put_user(&old)
            })
            .unwrap();
        (dir, store)
    }

    /// A new `[mfa] keys` list may add keys and change the order; dropping a key that still
    /// seals a stored TOTP secret is refused, naming `mfa.keys` and where the key was.
    #[test]
    fn dropping_a_key_that_seals_stored_totp_secrets_is_refused() {
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let (_dir, store) = store_with_secret_sealed_by(b);
        assert!(
            still_open(&store, &[a, b], &[c, a, b]).is_ok(),
            "a key added first"
        );
        assert!(
            still_open(&store, &[a, b], &[b]).is_ok(),
            "a key that seals nothing dropped"
        );
        let refused = still_open(&store, &[a, b], &[c, a]).unwrap_err();
        assert_eq!(refused.problems.len(), 1, "{refused:?}");
        assert!(refused.problems[0].starts_with("mfa.keys:"), "{refused:?}");
        assert!(refused.problems[0].contains("position 2"), "{refused:?}");
        assert!(refused.problems[0].contains("1 account"), "{refused:?}");
    }

    /// The hash is the first 16 hex digits of the file's SHA-256.
    #[test]
    fn the_config_hash_is_sixteen_hex_digits_of_sha256() {
        assert_eq!(short_hash(b""), "e3b0c44298fc1c14");
    }
}
