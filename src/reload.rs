//! Config reload: `SIGHUP` or `POST /api/reload` on the admin listener read the config file
//! again. The new file goes through the same checks as `check-config`; when it has any
//! problem, the old config keeps serving and the problems are logged with their key paths.
//!
//! What a reload applies: `[[upstreams]]` (host names resolved again, off the proxy threads),
//! `[[public]]`, `[[access]]` (for proxied requests and forward-auth answers), `[pages]`,
//! `[server] reject_double_encoding` and `[log] level`. The new routing is swapped in whole
//! (an atomic pointer): a request is served by the old config or by the new one, never by a
//! mix; requests in flight finish on the one they started with; sessions are untouched.
//!
//! Everything else needs a restart (listeners, TLS, the store, connections, sessions, login,
//! second-factor policy, headers, limits, the admin token, identity signing). A reload that
//! changes such keys applies the rest and names the keys it left, in the log and in the answer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;
use sha2::Digest;

use crate::auth::Auth;
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

/// What a reload did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Reloaded {
    /// The first 16 hex digits of the SHA-256 of the file now live.
    pub hash: String,
    /// Changed keys that were applied.
    pub applied: Vec<String>,
    /// Changed keys left as they were until a restart.
    pub needs_restart: Vec<String>,
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

fn is_reloadable(key: &str) -> bool {
    RELOADABLE
        .iter()
        .any(|r| key == *r || key.starts_with(&format!("{r}.")))
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

/// The parts the reloader works on, from the server it reloads.
pub struct ReloadTarget {
    pub routing: Arc<ArcSwap<Routing>>,
    pub resolver: ResolveHandle,
    pub auth: Option<Arc<Auth>>,
    pub signer: Option<Arc<AssertionSigner>>,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
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
        let (applied, needs_restart): (Vec<String>, Vec<String>) =
            changed.into_iter().partition(|k| is_reloadable(k));
        // The config served from now on: the reloadable parts of the new file, the rest as
        // it was (so a key that needs a restart never takes effect half-way).
        let mut next = live.config.clone();
        next.upstreams = new.upstreams;
        next.public = new.public;
        next.access = new.access;
        next.pages = new.pages;
        next.log.level = new.log.level;
        next.server.reject_double_encoding = new.server.reject_double_encoding;
        let peers = self
            .resolver
            .resolve(&next.upstreams)
            .map_err(|e| ReloadRefused {
                problems: vec![e.to_string()],
            })?;
        let routing = Routing::new(&next, &peers, self.signer.clone(), self.clock_for_signing());
        if let Some(auth) = &self.auth {
            auth.set_path_rules(&next);
        }
        self.routing.store(Arc::new(routing));
        if applied.iter().any(|k| k == "log.level") {
            crate::logging::set_level(&next.log);
        }
        live.config = next;
        live.document = document;
        Ok(Reloaded {
            hash: short_hash(&bytes),
            applied,
            needs_restart,
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
    #[test]
    fn only_the_listed_keys_reload() {
        for key in ["upstreams", "public", "access", "pages.title", "log.level"] {
            assert!(is_reloadable(key), "{key}");
        }
        for key in [
            "server.listen",
            "connections",
            "log.format",
            "pagesx",
            "session.lifetime",
            "mfa.totp",
            "headers.user",
        ] {
            assert!(!is_reloadable(key), "{key}");
        }
    }

    /// The hash is the first 16 hex digits of the file's SHA-256.
    #[test]
    fn the_config_hash_is_sixteen_hex_digits_of_sha256() {
        assert_eq!(short_hash(b""), "e3b0c44298fc1c14");
    }
}
