//! Sessions: the sealed cookie that names a session, and the in-memory cache of live sessions
//! kept in step with the store. Per request, a session is checked in memory only; the store is
//! written at login, refresh and logout.
//!
//! Memory holds what every request needs (identity, lifetimes, second factor), not the IdP's
//! tokens: they stay in the store's record and are read (on the blocking pool) when they are
//! needed: at a refresh, at sign-out (`id_token_hint`), and for the requests of a config that
//! forwards them to the app, which keep them in memory while the session is in use.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::config::model::Session as SessionConfig;
use crate::identity::Identity;
use crate::seal::Sealer;
use crate::store::sessions::{SessionRecord, Tokens, SESSION_RECORD_VERSION};
use crate::store::writer::{SessionWrite, SessionWriter};
use crate::store::{Store, StoreError};

/// The purpose a session cookie is sealed for (a login cookie cannot stand in for it).
const PURPOSE: &str = "session";
/// Browsers keep cookies up to about 4 KiB; longer values are split into numbered chunks.
const CHUNK: usize = 3800;
/// Chunks are named exactly `<name>_0` to `<name>_9`: no other name is read or cleared.
pub const MAX_CHUNKS: usize = 10;

/// The chunk index of a cookie named `<name>_<digit>`, below [`MAX_CHUNKS`].
fn chunk_index(cookie: &[u8], name: &[u8]) -> Option<usize> {
    match cookie.strip_prefix(name)?.strip_prefix(b"_")? {
        [d] if d.is_ascii_digit() => Some(usize::from(d - b'0')).filter(|i| *i < MAX_CHUNKS),
        _ => None,
    }
}

/// What the cookie carries: enough to find and cross-check the server-side record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CookieBody {
    sid: String,
    conn: String,
    sub: String,
    exp: u64,
}

/// The IdP tokens a session forwards to the app (`[headers] pass_access_token`,
/// `pass_id_token`), as ready header values.
#[derive(Debug, Default)]
pub struct ForwardedTokens(Vec<(HeaderName, HeaderValue)>);

impl ForwardedTokens {
    /// The headers to set, by name.
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.0
    }
}

/// Which IdP tokens every protected request forwards to the app, under which header names.
#[derive(Debug, Clone, Default)]
pub struct TokenForwarding {
    pub access_token: Option<HeaderName>,
    pub id_token: Option<HeaderName>,
}

impl TokenForwarding {
    fn any(&self) -> bool {
        self.access_token.is_some() || self.id_token.is_some()
    }

    /// The header values of `tokens` (a token that is no valid header value is dropped).
    fn of(&self, tokens: &Tokens) -> ForwardedTokens {
        let mut out = Vec::new();
        for (name, token) in [
            (&self.access_token, &tokens.access_token),
            (&self.id_token, &tokens.id_token),
        ] {
            let (Some(name), Some(token)) = (name, token) else {
                continue;
            };
            match HeaderValue::from_str(token) {
                Ok(value) => out.push((name.clone(), value)),
                Err(_) => tracing::info!(header = %name, "token not sendable as a header: dropped"),
            }
        }
        ForwardedTokens(out)
    }
}

/// Why a session's tokens could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TokensUnavailable {
    /// The store did not answer (fail closed: 503).
    #[error("the session store does not answer: {0}")]
    Store(StoreError),
    /// The store no longer has the session (ended at another replica, or just now).
    #[error("the session is no longer in the store")]
    Ended,
}

/// The forwarded tokens of a session unused this long are dropped from memory by the sweep
/// (its next request reads them again).
const FORWARDED_IDLE: u64 = 300;

/// A session that is alive right now. Its IdP tokens are not here (see the module docs).
#[derive(Debug)]
pub struct LiveSession {
    pub sid: String,
    pub identity: Identity,
    pub idp_sid: Option<String>,
    pub created_at: u64,
    pub expires_at: u64,
    /// When the access token expires, for a session with a refresh token (unix seconds; 0:
    /// never refreshed): one load per request tells whether a refresh is due.
    refresh_at: AtomicU64,
    /// The tokens the config forwards to the app, while the session is in use.
    forwarded: arc_swap::ArcSwapOption<ForwardedTokens>,
    last_seen: AtomicU64,
    /// When this replica last wrote the session's last use to a shared store.
    touched: AtomicU64,
    /// When the second factor was passed (unix seconds; 0: not in this session).
    pub mfa_at: AtomicU64,
    /// Set when the session is revoked, so connections still open for it (WebSocket,
    /// long downloads) stop at their next frame. Shared with the copies that replace this
    /// one in the live map (an identity change, a re-read after another replica's change):
    /// a connection holding this copy still hears when the session ends.
    ended: Arc<Ending>,
    /// What only a session that requests use needs, made at its first use: an idle session
    /// pays one pointer for it.
    in_use: std::sync::OnceLock<Box<InUse>>,
}

/// The parts of a live session its requests build and reuse.
#[derive(Debug, Default)]
pub struct InUse {
    /// The identity headers, built on first use and reused by every request.
    pub header_cache: std::sync::OnceLock<crate::identity::headers::WireHeaders>,
    /// Signed identity assertions, per upstream, while fresh.
    pub signed: crate::identity::signed_header::AssertionCache,
}

/// Whether a session has ended, shared by every copy of it.
#[derive(Debug, Default)]
struct Ending {
    flag: std::sync::atomic::AtomicBool,
    /// Made for the first connection that waits on the end (an upgraded one); most sessions
    /// never need one, and it is a few hundred bytes.
    signal: std::sync::OnceLock<tokio::sync::watch::Sender<bool>>,
}

impl LiveSession {
    /// A live session for `record`, last seen at `now`. The record's tokens are left out
    /// (only when to refresh them is kept).
    fn from_record(mut record: SessionRecord, now: u64) -> Self {
        let mfa_at = record.mfa_at.unwrap_or(0);
        record.identity.attributes.shrink_to_fit();
        Self {
            last_seen: AtomicU64::new(now),
            touched: AtomicU64::new(record.last_seen.unwrap_or(record.created_at)),
            refresh_at: AtomicU64::new(refresh_at(&record.tokens)),
            forwarded: arc_swap::ArcSwapOption::empty(),
            sid: record.sid,
            identity: record.identity,
            idp_sid: record.idp_sid,
            created_at: record.created_at,
            expires_at: record.expires_at,
            mfa_at: AtomicU64::new(mfa_at),
            ended: Arc::default(),
            in_use: std::sync::OnceLock::new(),
        }
    }

    /// The parts requests build and reuse (made now if this is the first use).
    pub fn in_use(&self) -> &InUse {
        self.in_use.get_or_init(Box::default)
    }

    /// Whether the session was revoked (signed out, logged out, expired, disabled).
    pub fn has_ended(&self) -> bool {
        self.ended.flag.load(Ordering::SeqCst)
    }

    /// Turns true when the session ends: a connection that outlives its request (WebSocket)
    /// waits on it to close even when no frame moves.
    pub fn ended_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        let signal = self
            .ended
            .signal
            .get_or_init(|| tokio::sync::watch::Sender::new(self.has_ended()));
        let receiver = signal.subscribe();
        // An end between the flag's read above and the signal's creation finds no signal to
        // send on (see `end`): look at the flag again now that the signal exists.
        if self.has_ended() {
            signal.send_replace(true);
        }
        receiver
    }

    /// Marks the session ended, and wakes what waits on its signal.
    fn end(&self) {
        self.ended.flag.store(true, Ordering::SeqCst);
        if let Some(signal) = self.ended.signal.get() {
            signal.send_replace(true);
        }
    }

    /// This session with another identity (an admin changed the account); the rest, the
    /// forwarded tokens included, is kept.
    fn with_identity(&self, identity: Identity) -> Self {
        let load = |a: &AtomicU64| AtomicU64::new(a.load(Ordering::Relaxed));
        Self {
            sid: self.sid.clone(),
            identity,
            idp_sid: self.idp_sid.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            refresh_at: load(&self.refresh_at),
            forwarded: arc_swap::ArcSwapOption::new(self.forwarded.load_full()),
            last_seen: load(&self.last_seen),
            touched: load(&self.touched),
            mfa_at: load(&self.mfa_at),
            ended: self.ended.clone(),
            in_use: std::sync::OnceLock::new(),
        }
    }

    /// This session as another replica left it (`record`, read again); what only this
    /// replica knows is kept: its last use here, and the end connections opened with this
    /// copy wait on.
    fn reread(&self, record: SessionRecord) -> Self {
        let fresh = Self::from_record(record, 0);
        let carry = |to: &AtomicU64, from: &AtomicU64| {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
        };
        carry(&fresh.last_seen, &self.last_seen);
        carry(&fresh.touched, &self.touched);
        Self {
            ended: self.ended.clone(),
            ..fresh
        }
    }

    /// Whether the access token has expired at `now` and a refresh token can renew it.
    pub fn refresh_due(&self, now: u64) -> bool {
        let at = self.refresh_at.load(Ordering::Relaxed);
        at != 0 && at <= now
    }

    /// When the second factor was passed in this session, if it was.
    pub fn mfa_done_at(&self) -> Option<u64> {
        Some(self.mfa_at.load(Ordering::Relaxed)).filter(|at| *at > 0)
    }
}

/// When a session's tokens are due for a refresh: the access token's expiry when there is a
/// refresh token (at least 1), else 0 (never).
fn refresh_at(tokens: &Tokens) -> u64 {
    match (&tokens.refresh_token, tokens.access_expires_at) {
        (Some(_), Some(at)) => at.max(1),
        _ => 0,
    }
}

pub use crate::store::sessions::PendingSession;

/// One session's turn to refresh its tokens: held from before the refresh decision until its
/// outcome is stored, so parallel requests of the session share one refresh.
pub struct RefreshTurn<'a> {
    sessions: &'a Sessions,
    sid: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for RefreshTurn<'_> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.sessions.refreshing.lock() {
            // Held by the map and by this turn only: nobody waits, the entry goes.
            if map
                .get(&self.sid)
                .is_some_and(|l| Arc::strong_count(l) == 2)
            {
                map.remove(&self.sid);
            }
        }
        self.guard.take();
    }
}

/// Why a request's session cookie was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not sealed by any of our keys, tampered, truncated, or not a session cookie.
    Forged,
    Expired,
    Idle,
    /// Signed out, revoked or unknown to the store.
    Revoked,
}

impl Rejection {
    pub fn label(self) -> crate::metrics::SessionRejection {
        use crate::metrics::SessionRejection as Label;
        match self {
            Rejection::Forged => Label::Forged,
            Rejection::Expired => Label::Expired,
            Rejection::Idle => Label::Idle,
            Rejection::Revoked => Label::Revoked,
        }
    }
}

/// The outcome of looking at a request's cookies.
#[derive(Debug)]
pub enum Lookup {
    None,
    Rejected(Rejection),
    Live(Arc<LiveSession>),
    /// A sound cookie whose session this replica does not hold: a shared store may (made
    /// at another replica, or left by this one's memory). [`Sessions::load`] reads it.
    Unknown(String),
}

/// Which live sessions to find, through an index rather than a scan.
#[derive(Debug, Clone, Copy)]
pub enum SessionsOf<'a> {
    /// Every session of a local account.
    User(&'a str),
    /// Every session of an IdP subject at a connection (back-channel logout by `sub`).
    Subject {
        connection: &'a str,
        subject: &'a str,
    },
    /// The sessions made in one IdP session (back-channel logout by `sid`).
    IdpSession { connection: &'a str, sid: &'a str },
}

/// A live session in the id map, found by its id without a copy of the id as the key.
struct BySid(Arc<LiveSession>);

impl std::borrow::Borrow<str> for BySid {
    fn borrow(&self) -> &str {
        &self.0.sid
    }
}

impl std::hash::Hash for BySid {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.sid.as_str().hash(state);
    }
}

impl PartialEq for BySid {
    fn eq(&self, other: &Self) -> bool {
        self.0.sid == other.0.sid
    }
}

impl Eq for BySid {}

/// Which index a key belongs to.
#[derive(Clone, Copy)]
enum IndexKind {
    Subject,
    IdpSession,
    User,
}

/// Sessions by the hash of a (kind, text, text) key; the entries are the sessions themselves
/// (no copies of ids or names), and a lookup keeps only those whose own fields match the key
/// exactly, so two keys that share a hash never mix.
type Index = HashMap<u64, Slot>;

/// The sessions under one index key: most keys have one, held without an allocation.
enum Slot {
    One(Arc<LiveSession>),
    Many(Box<[Arc<LiveSession>]>),
}

impl Slot {
    fn sessions(&self) -> &[Arc<LiveSession>] {
        match self {
            Slot::One(s) => std::slice::from_ref(s),
            Slot::Many(list) => list,
        }
    }

    fn with(self, session: Arc<LiveSession>) -> Slot {
        let mut list = match self {
            Slot::One(s) => vec![s],
            Slot::Many(list) => list.into_vec(),
        };
        list.push(session);
        Slot::Many(list.into_boxed_slice())
    }

    /// The slot without `session`; `None` when nothing is left.
    fn without(self, session: &Arc<LiveSession>) -> Option<Slot> {
        let mut list: Vec<_> = match self {
            Slot::One(s) => vec![s],
            Slot::Many(list) => list.into_vec(),
        };
        list.retain(|s| !Arc::ptr_eq(s, session));
        match list.len() {
            0 => None,
            1 => list.pop().map(Slot::One),
            _ => Some(Slot::Many(list.into_boxed_slice())),
        }
    }
}

/// The live sessions by id, with the indexes that let a logout or an admin change find a
/// user's sessions without scanning them all (kept in step by `insert` and `remove`).
#[derive(Default)]
struct LiveMap {
    by_sid: HashSet<BySid>,
    /// (connection, IdP subject), (connection, IdP session id), local user id -> sessions.
    index: Index,
    hasher: std::collections::hash_map::RandomState,
}

/// The index keys of a session: its subject, its IdP session, its local user.
fn index_keys(s: &LiveSession) -> [Option<(IndexKind, &str, &str)>; 3] {
    let id = &s.identity;
    [
        Some((
            IndexKind::Subject,
            id.connection.as_str(),
            id.subject.as_str(),
        )),
        s.idp_sid
            .as_deref()
            .map(|sid| (IndexKind::IdpSession, id.connection.as_str(), sid)),
        id.user_id.as_deref().map(|u| (IndexKind::User, "", u)),
    ]
}

/// Whether `s` has exactly this index key.
fn has_key(s: &LiveSession, key: (IndexKind, &str, &str)) -> bool {
    index_keys(s).into_iter().flatten().any(|k| {
        std::mem::discriminant(&k.0) == std::mem::discriminant(&key.0)
            && k.1 == key.1
            && k.2 == key.2
    })
}

impl LiveMap {
    fn len(&self) -> usize {
        self.by_sid.len()
    }

    fn get(&self, sid: &str) -> Option<&Arc<LiveSession>> {
        self.by_sid.get(sid).map(|s| &s.0)
    }

    fn slot(&self, key: (IndexKind, &str, &str)) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one((key.0 as u8, key.1, key.2))
    }

    fn insert(&mut self, session: Arc<LiveSession>) {
        self.remove(&session.sid);
        for key in index_keys(&session).into_iter().flatten() {
            let slot = self.slot(key);
            let entry = match self.index.remove(&slot) {
                Some(old) => old.with(session.clone()),
                None => Slot::One(session.clone()),
            };
            self.index.insert(slot, entry);
        }
        self.by_sid.insert(BySid(session));
    }

    fn remove(&mut self, sid: &str) -> Option<Arc<LiveSession>> {
        let session = self.by_sid.take(sid)?.0;
        for key in index_keys(&session).into_iter().flatten() {
            let slot = self.slot(key);
            if let Some(rest) = self
                .index
                .remove(&slot)
                .and_then(|old| old.without(&session))
            {
                self.index.insert(slot, rest);
            }
        }
        Some(session)
    }

    fn find(&self, which: SessionsOf<'_>) -> Vec<String> {
        let key = match which {
            SessionsOf::User(user) => (IndexKind::User, "", user),
            SessionsOf::Subject {
                connection,
                subject,
            } => (IndexKind::Subject, connection, subject),
            SessionsOf::IdpSession { connection, sid } => (IndexKind::IdpSession, connection, sid),
        };
        self.index
            .get(&self.slot(key))
            .map(|list| {
                list.sessions()
                    .iter()
                    .filter(|s| has_key(s, key))
                    .map(|s| s.sid.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn sessions(&self) -> impl Iterator<Item = &Arc<LiveSession>> {
        self.by_sid.iter().map(|s| &s.0)
    }
}

/// Shards of the live map. A lock covers one shard, so whatever looks at every session (the
/// sweep, a replica catching up) holds each lock for a slice of them, never the whole map,
/// and the requests of other sessions go on meanwhile.
const LIVE_SHARDS: usize = 64;

/// How many of a key's last bytes pick its shard.
const SHARD_KEY_TAIL: usize = 16;

/// A map in shards by key, each behind its own lock, so a pass over every entry holds one
/// shard at a time.
struct Sharded<T> {
    shards: Box<[RwLock<T>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl<T: Default> Sharded<T> {
    fn new(count: usize) -> Self {
        Self {
            shards: (0..count.max(1)).map(|_| RwLock::default()).collect(),
            hasher: Default::default(),
        }
    }
}

impl<T> Sharded<T> {
    /// The shard `key` belongs to.
    fn shard(&self, key: &str) -> &RwLock<T> {
        use std::hash::BuildHasher;
        // The keys (session ids, sealed cookie values) end in random bytes, so their last 16
        // spread them as well as the whole key would, for less hashing on every request.
        let tail = &key.as_bytes()[key.len().saturating_sub(SHARD_KEY_TAIL)..];
        let at = self.hasher.hash_one(tail) as usize % self.shards.len();
        &self.shards[at]
    }

    fn all(&self) -> impl Iterator<Item = &RwLock<T>> {
        self.shards.iter()
    }
}

/// The live sessions, in shards by session id (each shard a [`LiveMap`] with its own
/// indexes; a search by owner asks every shard).
struct Live(Sharded<LiveMap>);

impl Default for Live {
    fn default() -> Self {
        Self(Sharded::new(LIVE_SHARDS))
    }
}

impl Live {
    fn shard(&self, sid: &str) -> &RwLock<LiveMap> {
        self.0.shard(sid)
    }

    fn len(&self) -> usize {
        self.0.all().map(|s| s.read().map_or(0, |m| m.len())).sum()
    }

    fn get(&self, sid: &str) -> Option<Arc<LiveSession>> {
        self.shard(sid).read().ok()?.get(sid).cloned()
    }

    fn contains(&self, sid: &str) -> bool {
        self.shard(sid).read().is_ok_and(|m| m.get(sid).is_some())
    }

    /// Adds (or replaces) a session.
    fn insert(&self, session: Arc<LiveSession>) {
        if let Ok(mut map) = self.shard(&session.sid).write() {
            map.insert(session);
        }
    }

    /// Adds a session unless one with its id is live already.
    fn insert_new(&self, session: Arc<LiveSession>) {
        if let Ok(mut map) = self.shard(&session.sid).write() {
            if map.get(&session.sid).is_none() {
                map.insert(session);
            }
        }
    }

    /// Replaces a live session with what `change` makes of it (nothing when it is not live).
    fn replace(&self, sid: &str, change: impl FnOnce(&LiveSession) -> LiveSession) -> bool {
        let Ok(mut map) = self.shard(sid).write() else {
            return false;
        };
        let Some(old) = map.get(sid).cloned() else {
            return false;
        };
        map.insert(Arc::new(change(&old)));
        true
    }

    fn remove(&self, sid: &str) -> Option<Arc<LiveSession>> {
        self.shard(sid).write().ok()?.remove(sid)
    }

    /// The ids of the live sessions `which` names, from each shard's index (no scan).
    fn find(&self, which: SessionsOf<'_>) -> Vec<String> {
        self.0
            .all()
            .filter_map(|s| s.read().ok().map(|m| m.find(which)))
            .flatten()
            .collect()
    }

    /// The live sessions `which` names.
    fn find_sessions(&self, which: SessionsOf<'_>) -> Vec<Arc<LiveSession>> {
        let mut out = Vec::new();
        for shard in self.0.all() {
            if let Ok(map) = shard.read() {
                out.extend(
                    map.find(which)
                        .iter()
                        .filter_map(|sid| map.get(sid).cloned()),
                );
            }
        }
        out
    }

    /// The ids of the sessions `pred` picks, one shard at a time.
    fn sids_where(&self, pred: impl Fn(&LiveSession) -> bool) -> Vec<String> {
        let mut out = Vec::new();
        for shard in self.0.all() {
            if let Ok(map) = shard.read() {
                out.extend(map.sessions().filter(|s| pred(s)).map(|s| s.sid.clone()));
            }
        }
        out
    }

    /// Runs `f` on every session, one shard at a time.
    fn for_each(&self, f: impl Fn(&LiveSession)) {
        for shard in self.0.all() {
            if let Ok(map) = shard.read() {
                map.sessions().for_each(|s| f(s));
            }
        }
    }

    /// Drops the sessions `pred` picks from memory, one shard at a time.
    fn drop_where(&self, pred: impl Fn(&LiveSession) -> bool) {
        for shard in self.0.all() {
            if let Ok(mut map) = shard.write() {
                let picked: Vec<String> = map
                    .sessions()
                    .filter(|s| pred(s))
                    .map(|s| s.sid.clone())
                    .collect();
                for sid in picked {
                    map.remove(&sid);
                }
            }
        }
    }
}

/// At most this many opened cookies are remembered; past it the memory starts over.
const OPENED_CACHE: usize = 65_536;

/// Sealed cookie values already opened, by their exact bytes, with what they carry: a request
/// that brings the same value again skips the decryption and the JSON. A hit is exactly as
/// strict as a full open: only the very value that opened is found (the map compares every
/// byte), and what it carries goes through the same checks (expiry, live record, its user).
///
/// In shards by value, each with its own lock and its share of [`OPENED_CACHE`], so dropping
/// expired values holds one shard at a time.
struct OpenedCookies(Sharded<OpenedShard>);

/// Opened values by their exact bytes.
type OpenedShard = HashMap<Box<str>, Arc<CookieBody>>;

const OPENED_SHARDS: usize = 16;

impl Default for OpenedCookies {
    fn default() -> Self {
        Self(Sharded::new(OPENED_SHARDS))
    }
}

impl OpenedCookies {
    fn shard(&self, sealed: &str) -> &RwLock<OpenedShard> {
        self.0.shard(sealed)
    }

    fn get(&self, sealed: &str) -> Option<Arc<CookieBody>> {
        self.shard(sealed).read().ok()?.get(sealed).cloned()
    }

    fn insert(&self, sealed: &str, body: Arc<CookieBody>) {
        if let Ok(mut map) = self.shard(sealed).write() {
            if map.len() >= OPENED_CACHE / OPENED_SHARDS {
                map.clear();
            }
            map.insert(sealed.into(), body);
        }
    }

    /// Keeps only the values `keep` accepts.
    fn retain(&self, keep: impl Fn(&CookieBody) -> bool) {
        for shard in self.0.all() {
            if let Ok(mut map) = shard.write() {
                map.retain(|_, body| keep(body));
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.all().map(|s| s.read().map_or(0, |m| m.len())).sum()
    }
}

pub struct Sessions {
    config: SessionConfig,
    sealer: Sealer,
    opened: OpenedCookies,
    store: Arc<Store>,
    /// Every session write after login goes through it: never an fsync on a proxy thread.
    writer: SessionWriter,
    live: Live,
    /// Lifetimes and idle timeouts are measured on it.
    clock: Clock,
    /// The store is shared with other replicas (PostgreSQL): memory is a cache of it.
    shared: bool,
    /// Session ids a shared store did not have (so a dead cookie costs one read, not one
    /// per request); bounded, and forgotten after an hour.
    missing: Mutex<crate::bounded::ExpiringMap<String, ()>>,
    /// The sessions refreshing their tokens now, each with the lock its refresh holds (a
    /// session has an entry only while one of its requests refreshes or waits for that).
    refreshing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The tokens the config forwards to the app (none: tokens are read only at refresh
    /// and sign-out).
    forwarding: TokenForwarding,
}

/// At most this many unknown session ids are remembered as missing.
const MISSING_CACHE: usize = 65_536;

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("cookie", &self.config.cookie_name)
            .finish()
    }
}

/// Every pair of the request's Cookie headers, as bytes: split on `;`, trimmed, the name
/// before the first `=` (the whole pair when there is none, with an empty value). Nothing is
/// refused here: browsers send raw non-ASCII (`app=café`), and one odd pair must not hide the
/// others.
pub fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| SemicolonSplit(Some(v.as_bytes())))
        .map(<[u8]>::trim_ascii)
        .filter(|pair| !pair.is_empty())
        .map(|pair| match memchr::memchr(b'=', pair) {
            Some(i) => (pair[..i].trim_ascii(), pair[i + 1..].trim_ascii()),
            None => (pair, &b""[..]),
        })
}

/// The parts of a header value between `;`s (found with `memchr`: a session cookie is a few
/// hundred bytes, read on every request).
struct SemicolonSplit<'a>(Option<&'a [u8]>);

impl<'a> Iterator for SemicolonSplit<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.0?;
        match memchr::memchr(b';', rest) {
            Some(i) => {
                self.0 = Some(&rest[i + 1..]);
                Some(&rest[..i])
            }
            None => {
                self.0 = None;
                Some(rest)
            }
        }
    }
}

/// Whether a cookie name is a token (RFC 6265: no separators, no controls).
fn is_cookie_name(name: &[u8]) -> bool {
    fn token(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
    }
    !name.is_empty() && name.iter().all(|b| token(*b))
}

/// Whether a cookie value is printable ASCII without `;`.
fn is_cookie_value(value: &[u8]) -> bool {
    // Without a short cut, so the compiler can check many bytes at once.
    value.iter().fold(true, |ok, b| {
        ok & (b.wrapping_sub(0x20) < 0x5f) & (*b != b';')
    })
}

/// A pair as text when it is well-formed: a token name and a printable ASCII value.
fn well_formed<'a>(name: &'a [u8], value: &'a [u8]) -> Option<(&'a str, &'a str)> {
    if !(is_cookie_name(name) && is_cookie_value(value)) {
        return None;
    }
    Some((
        std::str::from_utf8(name).ok()?,
        std::str::from_utf8(value).ok()?,
    ))
}

/// Every well-formed `name=value` pair of the request's Cookie headers: a pair whose name is
/// not a token or whose value has a byte outside printable ASCII is skipped, not the header.
pub fn request_cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    cookie_pairs(headers).filter_map(|(k, v)| well_formed(k, v))
}

pub use crate::ids::random_id;

impl Sessions {
    /// Loads the live sessions from the store (expired ones are dropped from it).
    pub fn new(
        config: SessionConfig,
        sealer: Sealer,
        store: Arc<Store>,
        clock: Clock,
    ) -> Result<Self, StoreError> {
        let live = Live::default();
        let mut expired = Vec::new();
        let now = clock.now();
        let shared = store.is_shared();
        // A shared store's sessions are read when a request brings one (one indexed read).
        let stored = if shared {
            Vec::new()
        } else {
            store.sessions()?
        };
        for record in stored {
            if record.expires_at <= now {
                expired.push(record.sid);
            } else {
                live.insert(Arc::new(LiveSession::from_record(record, now)));
            }
        }
        if !expired.is_empty() {
            store.delete_sessions(&expired)?;
        }
        let writer = SessionWriter::start(store.clone())
            .map_err(|e| StoreError::Db(format!("cannot start the session writer: {e}")))?;
        Ok(Self {
            config,
            sealer,
            store,
            writer,
            opened: OpenedCookies::default(),
            live,
            clock,
            shared,
            missing: Mutex::new(crate::bounded::ExpiringMap::new(MISSING_CACHE)),
            refreshing: Mutex::new(HashMap::new()),
            forwarding: TokenForwarding::default(),
        })
    }

    /// These sessions forward these IdP tokens to the app on every protected request: a
    /// session in use keeps them in memory (as header values).
    pub fn with_forwarding(mut self, forwarding: TokenForwarding) -> Self {
        self.forwarding = forwarding;
        self
    }

    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The clock lifetimes and idle timeouts are measured on.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn active(&self) -> usize {
        self.live.len()
    }

    /// A new session record, not yet stored or live: write it with
    /// [`crate::store::Tx::put_session`] in the login's transaction, then [`Self::activate`].
    pub fn prepare(
        &self,
        identity: Identity,
        idp_sid: Option<String>,
        tokens: Tokens,
    ) -> PendingSession {
        let created_at = self.clock.now();
        PendingSession::new(SessionRecord {
            version: SESSION_RECORD_VERSION,
            sid: random_id(),
            identity,
            idp_sid,
            created_at,
            expires_at: created_at + self.config.lifetime.as_secs(),
            tokens,
            mfa_at: None,
            last_seen: None,
        })
    }

    /// Makes a stored session live and returns its `Set-Cookie` values.
    pub fn activate(&self, pending: PendingSession) -> Vec<String> {
        let record = pending.into_record();
        let body = CookieBody {
            sid: record.sid.clone(),
            conn: record.identity.connection.clone(),
            sub: record.identity.subject.clone(),
            exp: record.expires_at,
        };
        let sealed = self
            .sealer
            .seal(PURPOSE, &serde_json::to_vec(&body).unwrap_or_default());
        // The browser comes straight back: a session that forwards tokens keeps them now
        // instead of reading them again on its first request.
        let forwarded = self
            .forwarding
            .any()
            .then(|| Arc::new(self.forwarding.of(&record.tokens)));
        let live = LiveSession::from_record(record, self.clock.now());
        live.forwarded.store(forwarded);
        self.live.insert(Arc::new(live));
        self.set_cookie(&sealed, self.config.lifetime.as_secs())
    }

    /// Creates a session in its own store transaction and returns its `Set-Cookie` values.
    pub fn create(
        &self,
        identity: Identity,
        idp_sid: Option<String>,
        tokens: Tokens,
    ) -> Result<Vec<String>, StoreError> {
        let pending = self.prepare(identity, idp_sid, tokens);
        self.store.put_session(pending.record())?;
        Ok(self.activate(pending))
    }

    /// Ends every live session of a local account. Returns how many this replica held; with
    /// a shared store the account's other sessions are deleted there too (and the replicas
    /// holding them are told).
    pub fn revoke_user(&self, user_id: &str) -> usize {
        let ended = self.revoke(&self.find(SessionsOf::User(user_id)));
        if self.shared {
            let owner = crate::store::sessions::SessionOwner::User(user_id.to_string());
            if let Err(e) = self.writer.submit(SessionWrite::DeleteOf(owner)) {
                tracing::error!(error = %e, "could not queue the end of the account's sessions in the store");
            }
        }
        ended
    }

    /// With a shared store: deletes every stored session of `owner` (wherever it was made)
    /// and waits until that is committed; the replicas holding one are told. Nothing to do
    /// with the embedded store (memory holds every session).
    pub async fn end_stored(&self, owner: crate::store::sessions::SessionOwner) {
        if !self.shared {
            return;
        }
        if let Err(e) = self.writer.commit(SessionWrite::DeleteOf(owner)).await {
            tracing::error!(error = %e, "could not end the sessions in the store");
        }
    }

    /// Reads a session this replica does not hold from a shared store (a cache miss: one
    /// indexed read on the blocking pool), and holds it when it is alive. `false` when the
    /// store has no such session (remembered, so the next request costs nothing) or cannot
    /// be read (then nothing is remembered, and the request is refused: fail closed).
    pub async fn load(&self, sid: &str) -> bool {
        let now = self.clock.now();
        let store = self.store.clone();
        let wanted = sid.to_string();
        let read = tokio::task::spawn_blocking(move || store.read(|tx| tx.session(&wanted)))
            .await
            .unwrap_or_else(|e| Err(StoreError::Db(format!("the task failed: {e}"))));
        match read {
            Ok(Some(record)) if record.expires_at > now => {
                let last_seen = record.last_seen.unwrap_or(record.created_at);
                // The stored last use lags the real one by up to a quarter of the idle
                // timeout (see `lookup`), so that much is allowed on top.
                let idle = self.config.idle_timeout.as_secs();
                if now.saturating_sub(last_seen) > idle + idle / 4 {
                    self.revoke(&[sid.to_string()]);
                    return false;
                }
                let live = Arc::new(LiveSession::from_record(record, last_seen));
                self.live.insert_new(live);
                true
            }
            Ok(_) => {
                if let Ok(mut missing) = self.missing.lock() {
                    missing.insert(sid.to_string(), (), now + 3600, now);
                }
                false
            }
            Err(e) => {
                tracing::warn!(error = %crate::text::Escaped(&e), "cannot read a session from the store; refusing it");
                false
            }
        }
    }

    /// Follows what other replicas did to sessions this one holds: each changed session is
    /// read again (replaced, keeping when it was last seen here) or, when the store no longer
    /// has it, ended. Runs on a blocking thread.
    pub fn apply_news(&self, news: crate::store::postgres::SessionNews) {
        use crate::store::postgres::SessionNews;
        let sids: Vec<String> = match news {
            SessionNews::Changed(sids) => sids
                .into_iter()
                .filter(|sid| self.live.contains(sid))
                .collect(),
            SessionNews::Lost => self.live.sids_where(|_| true),
        };
        for sid in sids {
            match self.store.read(|tx| tx.session(&sid)) {
                Ok(Some(record)) => {
                    self.live.replace(&sid, |old| old.reread(record));
                }
                Ok(None) => {
                    self.forget_live(std::slice::from_ref(&sid));
                }
                Err(e) => {
                    // Unreadable now: not trusted either (the follower reads again later).
                    tracing::warn!(error = %crate::text::Escaped(&e), "cannot read a changed session; dropping it from memory");
                    self.live.remove(&sid);
                }
            }
        }
    }

    /// The ids of the live sessions `which` names, from an index (no scan).
    pub fn find(&self, which: SessionsOf<'_>) -> Vec<String> {
        self.live.find(which)
    }

    /// The live sessions `which` names, from an index (no scan).
    pub fn find_sessions(&self, which: SessionsOf<'_>) -> Vec<Arc<LiveSession>> {
        self.live.find_sessions(which)
    }

    /// Gives every live session of a local account its new identity (after an admin changed
    /// the account), in memory and in the store. Returns how many.
    pub fn update_user(
        &self,
        user_id: &str,
        update: impl Fn(&Identity) -> Identity + Send + Sync + 'static,
    ) -> usize {
        let update = Arc::new(update);
        let mut changed = Vec::new();
        for sid in self.live.find(SessionsOf::User(user_id)) {
            let mut identity = None;
            self.live.replace(&sid, |old| {
                let new = update(&old.identity);
                identity = Some(new.clone());
                old.with_identity(new)
            });
            if let Some(identity) = identity {
                changed.push((sid, identity));
            }
        }
        let count = changed.len();
        for (sid, identity) in changed {
            let amend = Arc::new(move |r: &mut SessionRecord| r.identity = identity.clone());
            if let Err(e) = self.writer.submit(SessionWrite::Amend(sid, amend)) {
                tracing::error!(error = %e, "an updated session could not be queued for the store; it is updated in memory");
            }
        }
        if self.shared {
            // The account's sessions other replicas made are rewritten in the store (they
            // are told and read them again).
            let owner = crate::store::sessions::SessionOwner::User(user_id.to_string());
            if let Err(e) = self.writer.submit(SessionWrite::ReprofileOf(owner, update)) {
                tracing::error!(error = %e, "the account's stored sessions could not be queued for an update");
            }
        }
        count
    }

    /// Records that the session passed the second factor now (step-up), in memory, and waits
    /// until the store has it.
    pub async fn mark_mfa(&self, session: &LiveSession, at: u64) -> Result<(), StoreError> {
        session.mfa_at.store(at, Ordering::Relaxed);
        let amend = Arc::new(move |r: &mut SessionRecord| r.mfa_at = Some(at));
        self.writer
            .commit(SessionWrite::Amend(session.sid.clone(), amend))
            .await
    }

    /// The session's IdP tokens, read from the store on the blocking pool (memory keeps
    /// none). `Ok(None)` when the store no longer has the session.
    pub async fn tokens(&self, sid: &str) -> Result<Option<Tokens>, StoreError> {
        let (store, sid) = (self.store.clone(), sid.to_string());
        tokio::task::spawn_blocking(move || store.read(|tx| tx.session(&sid)))
            .await
            .unwrap_or_else(|e| Err(StoreError::Db(format!("the task failed: {e}"))))
            .map(|record| record.map(|r| r.tokens))
    }

    /// Takes what memory keeps of tokens read from the store: when they are due for a
    /// refresh, and the forwarded ones while the session is in use.
    pub fn adopt_tokens(&self, session: &LiveSession, tokens: &Tokens) {
        session
            .refresh_at
            .store(refresh_at(tokens), Ordering::Relaxed);
        if self.forwarding.any() {
            session
                .forwarded
                .store(Some(Arc::new(self.forwarding.of(tokens))));
        }
    }

    /// Keeps refreshed tokens: in memory what [`Self::adopt_tokens`] keeps, in the store the
    /// tokens themselves (the rest of the record unchanged); waits until that is durable
    /// (the wait parks the task, not the thread).
    pub async fn store_tokens(
        &self,
        session: &LiveSession,
        tokens: Tokens,
    ) -> Result<(), StoreError> {
        self.adopt_tokens(session, &tokens);
        let amend = Arc::new(move |r: &mut SessionRecord| r.tokens = tokens.clone());
        self.writer
            .commit(SessionWrite::Amend(session.sid.clone(), amend))
            .await
    }

    /// The tokens the config forwards to the app, for a request of `session`: from memory
    /// while the session is in use, else read from the store (on the blocking pool) and kept.
    /// `Ok(None)` when the config forwards no token.
    pub async fn forwarded_tokens(
        &self,
        session: &LiveSession,
    ) -> Result<Option<Arc<ForwardedTokens>>, TokensUnavailable> {
        if !self.forwarding.any() {
            return Ok(None);
        }
        if let Some(kept) = session.forwarded.load_full() {
            return Ok(Some(kept));
        }
        match self.tokens(&session.sid).await {
            Ok(Some(tokens)) => {
                self.adopt_tokens(session, &tokens);
                Ok(session.forwarded.load_full())
            }
            Ok(None) => {
                self.forget_live(std::slice::from_ref(&session.sid));
                Err(TokensUnavailable::Ended)
            }
            Err(e) => Err(TokensUnavailable::Store(e)),
        }
    }

    /// Waits for the session's turn to refresh its tokens (one refresh per session at a time).
    pub async fn refresh_turn(&self, sid: &str) -> RefreshTurn<'_> {
        let lock = match self.refreshing.lock() {
            Ok(mut map) => map.entry(sid.to_string()).or_default().clone(),
            // Poisoned: this refresh goes alone rather than not at all.
            Err(_) => Arc::default(),
        };
        RefreshTurn {
            sessions: self,
            sid: sid.to_string(),
            guard: Some(lock.lock_owned().await),
        }
    }

    /// Finds the session named by the request's cookie, in memory.
    pub fn lookup(&self, headers: &HeaderMap) -> Lookup {
        let Some(sealed) = self.cookie_value(headers) else {
            return Lookup::None;
        };
        // `Some` when the value was opened now: remembered only once it is accepted, so an
        // expired, revoked or borrowed cookie never takes a place in the memory.
        let (body, opened_now) = match self.opened.get(&sealed) {
            Some(body) => (body, false),
            None => {
                let Ok(plain) = self.sealer.open(PURPOSE, &sealed) else {
                    return Lookup::Rejected(Rejection::Forged);
                };
                let Ok(body) = serde_json::from_slice::<CookieBody>(&plain) else {
                    return Lookup::Rejected(Rejection::Forged);
                };
                (Arc::new(body), true)
            }
        };
        let now = self.clock.now();
        if body.exp <= now {
            return Lookup::Rejected(Rejection::Expired);
        }
        let Some(live) = self.live.get(&body.sid) else {
            let known_missing = self
                .missing
                .lock()
                .is_ok_and(|m| m.get(&body.sid, now).is_some());
            if self.shared && !known_missing {
                return Lookup::Unknown(body.sid.clone());
            }
            return Lookup::Rejected(Rejection::Revoked);
        };
        // The cookie must name the record's own user (a swapped cookie cannot borrow a sid).
        if live.identity.subject != body.sub || live.identity.connection != body.conn {
            return Lookup::Rejected(Rejection::Forged);
        }
        if live.expires_at <= now {
            self.revoke(std::slice::from_ref(&live.sid));
            return Lookup::Rejected(Rejection::Expired);
        }
        let last = live.last_seen.load(Ordering::Relaxed);
        let idle = self.config.idle_timeout.as_secs();
        if now.saturating_sub(last) > idle {
            if self.shared {
                // Idle here, maybe not at another replica: [`Self::load`] reads the store's
                // record again (its last use anywhere) and decides.
                self.live.remove(&live.sid);
                return Lookup::Unknown(live.sid.clone());
            }
            self.revoke(std::slice::from_ref(&live.sid));
            return Lookup::Rejected(Rejection::Idle);
        }
        if last != now {
            live.last_seen.store(now, Ordering::Relaxed);
            // A shared store learns of the use a few times per idle timeout, so the other
            // replicas can tell an idle session from one used elsewhere.
            if self.shared && now.saturating_sub(live.touched.load(Ordering::Relaxed)) > idle / 4 {
                live.touched.store(now, Ordering::Relaxed);
                let amend = Arc::new(move |r: &mut SessionRecord| r.last_seen = Some(now));
                if let Err(e) = self
                    .writer
                    .submit(SessionWrite::Amend(live.sid.clone(), amend))
                {
                    tracing::warn!(error = %e, "could not queue a session's last use for the store");
                }
            }
        }
        if opened_now {
            self.opened.insert(&sealed, body);
        }
        Lookup::Live(live)
    }

    /// Whether the session is still live (not revoked meanwhile).
    pub fn is_live(&self, sid: &str) -> bool {
        self.live.contains(sid)
    }

    /// Ends sessions: at once in memory (the next request is refused), and in the store
    /// through the session writer, without waiting for it. Returns how many were live.
    pub fn revoke(&self, sids: &[String]) -> usize {
        let removed = self.forget_live(sids);
        if let Err(e) = self.writer.submit(SessionWrite::Delete(sids.to_vec())) {
            tracing::error!(error = %e, "could not queue the deletion of ended sessions; they are revoked in memory");
        }
        removed
    }

    /// [`Self::revoke`], then waits (asynchronously) until the store has the deletion, so a
    /// restart cannot bring the sessions back. For sign-out and back-channel logout.
    pub async fn revoke_durably(&self, sids: &[String]) -> usize {
        let removed = self.forget_live(sids);
        if let Err(e) = self
            .writer
            .commit(SessionWrite::Delete(sids.to_vec()))
            .await
        {
            tracing::error!(error = %e, "could not delete ended sessions from the store; they are revoked in memory");
        }
        removed
    }

    fn forget_live(&self, sids: &[String]) -> usize {
        if self.shared {
            // Never read back from the store: its deletion may not have committed yet.
            let now = self.clock.now();
            if let Ok(mut missing) = self.missing.lock() {
                for sid in sids {
                    missing.insert(sid.clone(), (), now + 3600, now);
                }
            }
        }
        let mut removed = 0;
        for sid in sids {
            if let Some(session) = self.live.remove(sid) {
                session.end();
                removed += 1;
            }
        }
        removed
    }

    /// Ends sessions past their lifetime or idle timeout (run periodically, so memory and the
    /// store do not keep sessions nobody comes back to). Returns how many ended.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now();
        let idle = self.config.idle_timeout.as_secs();
        let idle_here =
            |s: &LiveSession| now.saturating_sub(s.last_seen.load(Ordering::Relaxed)) > idle;
        let ended = if self.shared {
            // Idle here may be busy at another replica: such a session only leaves this
            // replica's memory (the store's record decides when a request brings it back).
            self.live.drop_where(|s| s.expires_at > now && idle_here(s));
            self.revoke_where(|s| s.expires_at <= now)
        } else {
            self.revoke_where(|s| s.expires_at <= now || idle_here(s))
        };
        // A revoked session's value may stay until it expires: the live map refuses it.
        self.opened.retain(|body| body.exp > now);
        // A session out of use gives back its forwarded tokens (the store keeps them); only
        // a config that forwards tokens has any to give back, and pays for this pass.
        if !self.forwarding.any() {
            return ended;
        }
        self.live.for_each(|s| {
            let quiet = now.saturating_sub(s.last_seen.load(Ordering::Relaxed)) > FORWARDED_IDLE;
            if quiet && s.forwarded.load().is_some() {
                s.forwarded.store(None);
            }
        });
        ended
    }

    /// Drops sessions from memory whose records are already gone from the store.
    pub fn forget(&self, sids: &[String]) {
        self.forget_live(sids);
    }

    /// Ends every session that matches `pred`. Returns how many.
    pub fn revoke_where(&self, pred: impl Fn(&LiveSession) -> bool) -> usize {
        let sids = self.live.sids_where(pred);
        if sids.is_empty() {
            return 0;
        }
        self.revoke(&sids)
    }

    /// The sealed value, joined from chunks when it was split. Chunks count only as
    /// `<name>_0` .. `<name>_9`, each once, with no gap.
    fn cookie_value<'h>(&self, headers: &'h HeaderMap) -> Option<std::borrow::Cow<'h, str>> {
        let name = self.config.cookie_name.as_str();
        let mut chunks: [Option<&str>; MAX_CHUNKS] = [None; MAX_CHUNKS];
        let mut twice = false;
        // The pairs `request_cookies` would keep, but only the values of the pairs named
        // here are read (the others may be long, and are the app's).
        let ours = cookie_pairs(headers)
            .filter(|(k, _)| *k == name.as_bytes() || chunk_index(k, name.as_bytes()).is_some())
            .filter_map(|(k, v)| well_formed(k, v));
        for (k, v) in ours {
            if k == name {
                return Some(v.into());
            }
            if let Some(i) = chunk_index(k.as_bytes(), name.as_bytes()) {
                twice |= chunks[i].replace(v).is_some();
            }
        }
        if twice {
            // Two values for one chunk: no way to tell which is ours.
            return Some("".into());
        }
        let count = chunks.iter().take_while(|c| c.is_some()).count();
        if count == 0 {
            return chunks.iter().any(Option::is_some).then(|| "".into());
        }
        if chunks[count..].iter().any(Option::is_some) {
            return Some("".into());
        }
        Some(
            chunks[..count]
                .iter()
                .flatten()
                .copied()
                .collect::<String>()
                .into(),
        )
    }

    /// The one `Set-Cookie` builder of every Gatehouse cookie (session and its chunks, login
    /// state, pending MFA), through the `cookie` crate: `HttpOnly`, `SameSite=Lax`, `Secure`
    /// and `Domain` as configured, `Max-Age` in seconds (0 clears). `path` narrows where the
    /// browser sends a short-lived cookie (`None`: the session's `cookie_path`), except under
    /// the `__Host-` prefix, which requires `Path=/`. Names and values are Gatehouse's own
    /// (the configured name, sealed base64url): nothing from the request goes in.
    pub fn set_cookie_header(
        &self,
        name: &str,
        value: &str,
        path: Option<&str>,
        max_age: u64,
    ) -> String {
        let c = &self.config;
        let path = match path {
            _ if c.host_prefix => "/",
            Some(path) => path,
            None => c.cookie_path.as_str(),
        };
        let mut built = cookie::Cookie::build((name, value))
            .path(path)
            .max_age(cookie::time::Duration::seconds(
                i64::try_from(max_age).unwrap_or(i64::MAX),
            ))
            .http_only(true)
            .same_site(cookie::SameSite::Lax)
            .secure(c.cookie_secure);
        if let Some(domain) = &c.cookie_domain {
            built = built.domain(domain.as_str());
        }
        built.build().to_string()
    }

    /// `Set-Cookie` values for a sealed session, split into `name_0`, `name_1`, ... when long.
    fn set_cookie(&self, sealed: &str, max_age: u64) -> Vec<String> {
        let name = &self.config.cookie_name;
        if sealed.len() <= CHUNK {
            return vec![self.set_cookie_header(name, sealed, None, max_age)];
        }
        sealed
            .as_bytes()
            .chunks(CHUNK)
            .enumerate()
            .map(|(i, part)| {
                let part = String::from_utf8_lossy(part);
                self.set_cookie_header(&format!("{name}_{i}"), &part, None, max_age)
            })
            .collect()
    }

    /// Whether a cookie name is one of Gatehouse's (the session, its chunks, the login and
    /// MFA cookies): `<name>` or `<name>_...`, in any ASCII case, so the app never sees one.
    fn is_own(&self, cookie: &[u8]) -> bool {
        let name = self.config.cookie_name.as_bytes();
        cookie.len() >= name.len()
            && cookie[..name.len()].eq_ignore_ascii_case(name)
            && (cookie.len() == name.len() || cookie[name.len()] == b'_')
    }

    /// The request's Cookie header without Gatehouse's own cookies (the session, its chunks,
    /// login cookies), so the app never receives them, whatever else the header holds: the
    /// other pairs are kept as their bytes. `None` when there is nothing to remove;
    /// `Some(None)` when no cookie is left.
    pub fn without_own_cookies(&self, headers: &HeaderMap) -> Option<Option<http::HeaderValue>> {
        if !cookie_pairs(headers).any(|(k, _)| self.is_own(k)) {
            return None;
        }
        let mut kept: Vec<u8> = Vec::new();
        for (k, v) in cookie_pairs(headers).filter(|(k, _)| !self.is_own(k)) {
            if !kept.is_empty() {
                kept.extend_from_slice(b"; ");
            }
            kept.extend_from_slice(k);
            if !v.is_empty() || k.is_empty() {
                kept.push(b'=');
                kept.extend_from_slice(v);
            }
        }
        if kept.is_empty() {
            return Some(None);
        }
        // The bytes came from header values, so they stay valid; if not, the app gets no
        // cookie rather than ours.
        Some(http::HeaderValue::from_bytes(&kept).ok())
    }

    /// `Set-Cookie` values that clear the session cookie and the chunks the request carried
    /// (at most [`MAX_CHUNKS`], each once, whatever else the header names).
    pub fn clear_cookies(&self, headers: &HeaderMap) -> Vec<String> {
        let name = self.config.cookie_name.as_str();
        let mut present = [false; MAX_CHUNKS];
        for (k, _) in cookie_pairs(headers) {
            if let Some(i) = chunk_index(k, name.as_bytes()) {
                present[i] = true;
            }
        }
        let mut out = vec![self.set_cookie_header(name, "", None, 0)];
        out.extend(
            (0..MAX_CHUNKS)
                .filter(|i| present[*i])
                .map(|i| self.set_cookie_header(&format!("{name}_{i}"), "", None, 0)),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config() -> SessionConfig {
        SessionConfig {
            cookie_name: "_gh".into(),
            host_prefix: false,
            cookie_domain: None,
            cookie_path: "/".into(),
            cookie_secure: true,
            keys: crate::config::model::SessionKeys(None),
            lifetime: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(600),
            login_timeout: Duration::from_secs(600),
        }
    }

    fn identity(sub: &str) -> Identity {
        Identity {
            connection: "corp".into(),
            subject: sub.into(),
            username: None,
            email: None,
            email_verified: false,
            name: None,
            groups: vec![],
            user_id: None,
            roles: vec![],
            attributes: Default::default(),
        }
    }

    fn with_cookie(set_cookie: &str) -> HeaderMap {
        let pair = set_cookie.split(';').next().unwrap();
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, pair.parse().unwrap());
        h
    }

    fn sessions(dir: &std::path::Path, key: [u8; 32]) -> Sessions {
        sessions_on(dir, key, config(), Clock::manual(START))
    }

    /// The manual clocks of these tests start here (unix seconds).
    const START: u64 = 1_800_000_000;

    fn sessions_on(
        dir: &std::path::Path,
        key: [u8; 32],
        config: SessionConfig,
        clock: Clock,
    ) -> Sessions {
        let store = Arc::new(Store::open(dir).unwrap());
        Sessions::new(config, Sealer::new(vec![key]).unwrap(), store, clock).unwrap()
    }

    /// A session cookie works until the last second of the session's lifetime on the clock,
    /// and is refused as expired from then on, however recently it was used.
    #[test]
    fn a_session_lives_exactly_its_lifetime_on_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual(START);
        let s = sessions_on(dir.path(), [7; 32], config(), clock.clone());
        let headers = with_cookie(&s.create(identity("u1"), None, Tokens::default()).unwrap()[0]);
        // Used every 500 s (inside the 600 s idle timeout) up to 1 s before the 3600 s lifetime.
        for _ in 0..7 {
            clock.advance(Duration::from_secs(500));
            assert!(matches!(s.lookup(&headers), Lookup::Live(_)));
        }
        clock.advance(Duration::from_secs(99));
        assert_eq!(clock.now(), START + 3599);
        assert!(matches!(s.lookup(&headers), Lookup::Live(_)));
        clock.advance(Duration::from_secs(1));
        assert!(matches!(
            s.lookup(&headers),
            Lookup::Rejected(Rejection::Expired)
        ));
    }

    /// The opened-cookie cache is as strict as a full open: once a cookie was accepted (and
    /// remembered), every value that differs from it by one byte (each position changed to
    /// another cookie-safe byte, each byte removed, one appended) is still refused as forged,
    /// the very value stays live, and it is refused as revoked once its session is revoked.
    #[test]
    fn a_remembered_cookie_matches_only_its_exact_bytes_and_still_sees_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let s = sessions(dir.path(), [7; 32]);
        let set = s.create(identity("u1"), None, Tokens::default()).unwrap();
        let pair = set[0].split(';').next().unwrap().to_string();
        let (name, value) = pair.split_once('=').unwrap();
        let cookie = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::COOKIE, format!("{name}={v}").parse().unwrap());
            h
        };
        let Lookup::Live(live) = s.lookup(&cookie(value)) else {
            panic!("the fresh cookie is live")
        };
        let mut variants = Vec::new();
        for i in 0..value.len() {
            for b in [b'A', b'z', b'0', b'-', b'_'] {
                let mut v = value.as_bytes().to_vec();
                if v[i] != b {
                    v[i] = b;
                    variants.push(String::from_utf8(v).unwrap());
                }
            }
            let mut v = value.to_string();
            v.remove(i);
            variants.push(v);
        }
        variants.push(format!("{value}A"));
        for v in &variants {
            assert!(
                matches!(s.lookup(&cookie(v)), Lookup::Rejected(Rejection::Forged)),
                "a changed value was accepted: {v}"
            );
            assert!(matches!(s.lookup(&cookie(value)), Lookup::Live(_)));
        }
        s.revoke(std::slice::from_ref(&live.sid));
        assert!(matches!(
            s.lookup(&cookie(value)),
            Lookup::Rejected(Rejection::Revoked)
        ));
    }

    /// A session unused for the idle timeout is still accepted at the limit and refused one
    /// second past it; each use restarts the idle count.
    #[test]
    fn an_idle_session_ends_one_second_past_the_idle_timeout_on_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual(START);
        let s = sessions_on(dir.path(), [7; 32], config(), clock.clone());
        let headers = with_cookie(&s.create(identity("u1"), None, Tokens::default()).unwrap()[0]);
        clock.advance(Duration::from_secs(600));
        assert!(
            matches!(s.lookup(&headers), Lookup::Live(_)),
            "at the limit"
        );
        clock.advance(Duration::from_secs(601));
        assert!(matches!(
            s.lookup(&headers),
            Lookup::Rejected(Rejection::Idle)
        ));
    }

    /// Parallel refreshes of one session take turns, other sessions do not wait for them,
    /// and a session's entry goes with its last turn (idle sessions hold none).
    #[tokio::test]
    async fn refresh_turns_are_per_session_and_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let s = sessions(dir.path(), [7; 32]);
        let first = s.refresh_turn("a").await;
        let other = s.refresh_turn("b").await;
        let waiting = s.refresh_turn("a");
        tokio::pin!(waiting);
        assert!(
            futures_poll_once(waiting.as_mut()).await.is_none(),
            "a second turn of a session waits for the first"
        );
        drop(first);
        let second = waiting.await;
        drop(other);
        assert_eq!(s.refreshing.lock().unwrap().len(), 1);
        drop(second);
        assert!(s.refreshing.lock().unwrap().is_empty());
    }

    /// Polls a future once: its output if it is ready.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(
                match std::future::Future::poll(std::pin::Pin::new(&mut f), cx) {
                    std::task::Poll::Ready(out) => Some(out),
                    std::task::Poll::Pending => None,
                },
            )
        })
        .await
    }

    /// A session made from a record keeps none of its IdP tokens, only when to refresh them.
    #[test]
    fn a_live_session_keeps_when_to_refresh_not_the_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let s = sessions(dir.path(), [7; 32]);
        let tokens = Tokens {
            id_token: Some("id".into()),
            access_token: Some("access".into()),
            refresh_token: Some("refresh".into()),
            access_expires_at: Some(START + 60),
        };
        let headers = with_cookie(&s.create(identity("u1"), None, tokens).unwrap()[0]);
        let Lookup::Live(live) = s.lookup(&headers) else {
            panic!("not live")
        };
        assert!(live.forwarded.load().is_none());
        assert!(!live.refresh_due(START + 59));
        assert!(live.refresh_due(START + 60));
        assert!(!format!("{live:?}").contains("access"), "{live:?}");
    }

    /// The sweep ends sessions by the clock: none before the idle timeout, all after it.
    #[test]
    fn the_sweep_reads_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual(START);
        let s = sessions_on(dir.path(), [7; 32], config(), clock.clone());
        s.create(identity("u1"), None, Tokens::default()).unwrap();
        clock.advance(Duration::from_secs(600));
        assert_eq!(s.sweep(), 0);
        clock.advance(Duration::from_secs(1));
        assert_eq!(s.sweep(), 1);
    }

    /// Every Gatehouse cookie comes from one builder, so the session, login-state and MFA
    /// cookies carry the same attributes: the configured Domain (which the old login-cookie
    /// builder dropped), Secure, HttpOnly, SameSite=Lax; a narrowed path only without the
    /// `__Host-` prefix; and a clearing cookie is the same with Max-Age=0.
    #[test]
    fn every_cookie_gets_the_same_attributes_from_the_one_builder() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut c = config();
        c.cookie_domain = Some("example.com".into());
        let s = Sessions::new(
            c,
            Sealer::new(vec![[7; 32]]).unwrap(),
            store.clone(),
            Clock::system(),
        )
        .unwrap();
        let parse = |text: &str| cookie::Cookie::parse(text.to_string()).unwrap();
        let session = parse(&s.create(identity("u1"), None, Tokens::default()).unwrap()[0]);
        let login = parse(&s.set_cookie_header("_gh_login_x", "v", Some("/oauth2/callback"), 600));
        let cleared = parse(&s.set_cookie_header("_gh_mfa", "", Some("/oauth2/mfa"), 0));
        for (cookie, path) in [
            (&session, "/"),
            (&login, "/oauth2/callback"),
            (&cleared, "/oauth2/mfa"),
        ] {
            assert_eq!(cookie.domain(), Some("example.com"), "{cookie}");
            assert_eq!(cookie.secure(), Some(true), "{cookie}");
            assert_eq!(cookie.http_only(), Some(true), "{cookie}");
            assert_eq!(cookie.same_site(), Some(cookie::SameSite::Lax), "{cookie}");
            assert_eq!(cookie.path(), Some(path), "{cookie}");
        }
        assert_eq!(login.max_age(), Some(cookie::time::Duration::seconds(600)));
        assert_eq!(cleared.max_age(), Some(cookie::time::Duration::ZERO));
        assert_eq!(cleared.value(), "");

        let mut host = config();
        host.host_prefix = true;
        host.cookie_name = "__Host-_gh".into();
        let s = Sessions::new(
            host,
            Sealer::new(vec![[7; 32]]).unwrap(),
            store,
            Clock::system(),
        )
        .unwrap();
        let login =
            parse(&s.set_cookie_header("__Host-_gh_login_x", "v", Some("/oauth2/callback"), 600));
        assert_eq!(login.path(), Some("/"), "__Host- cookies need Path=/");
        assert_eq!(login.domain(), None);
    }

    #[test]
    fn a_new_session_is_found_by_its_cookie_and_dies_when_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let s = sessions(dir.path(), [7; 32]);
        let cookie = s.create(identity("u1"), None, Tokens::default()).unwrap();
        assert!(
            cookie[0].contains("HttpOnly")
                && cookie[0].contains("Secure")
                && cookie[0].contains("SameSite=Lax")
        );
        let headers = with_cookie(&cookie[0]);
        let Lookup::Live(live) = s.lookup(&headers) else {
            panic!("not live")
        };
        assert_eq!(s.revoke(std::slice::from_ref(&live.sid)), 1);
        assert!(matches!(
            s.lookup(&headers),
            Lookup::Rejected(Rejection::Revoked)
        ));
    }

    /// Only accepted cookies are remembered: a value that opens but names a revoked session
    /// is refused every time and takes no place in the opened-cookie memory.
    #[test]
    fn a_cookie_of_a_revoked_session_is_never_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let s = sessions(dir.path(), [7; 32]);
        let cookie = s.create(identity("u1"), None, Tokens::default()).unwrap();
        let headers = with_cookie(&cookie[0]);
        let Lookup::Live(live) = s.lookup(&headers) else {
            panic!("not live")
        };
        s.revoke(std::slice::from_ref(&live.sid));
        s.opened.retain(|_| false);
        for _ in 0..3 {
            assert!(matches!(
                s.lookup(&headers),
                Lookup::Rejected(Rejection::Revoked)
            ));
        }
        assert_eq!(s.opened.len(), 0);
    }

    #[test]
    fn a_sweep_ends_expired_sessions_and_keeps_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut short = config();
        short.lifetime = Duration::ZERO;
        let s = sessions_on(dir.path(), [7; 32], short, Clock::manual(START));
        s.create(identity("u1"), None, Tokens::default()).unwrap();
        assert_eq!(s.active(), 1);
        assert_eq!(s.sweep(), 1);
        assert_eq!(s.active(), 0);
        let dir = tempfile::tempdir().unwrap();
        let s = sessions(dir.path(), [7; 32]);
        s.create(identity("u2"), None, Tokens::default()).unwrap();
        assert_eq!(s.sweep(), 0);
        assert_eq!(s.active(), 1);
    }

    /// A connection that outlives its request (a WebSocket) holds the session as it was when
    /// it opened. When the live session is replaced meanwhile (an admin changed the account,
    /// or another replica's change was read again), its end still reaches that connection.
    #[tokio::test]
    async fn a_replaced_session_still_ends_the_connections_opened_before() {
        let dir = tempfile::tempdir().unwrap();
        let s = sessions(dir.path(), [7; 32]);
        let mut who = identity("u1");
        who.user_id = Some("user-1".into());
        let cookie = s.create(who, None, Tokens::default()).unwrap();
        let Lookup::Live(opened_with) = s.lookup(&with_cookie(&cookie[0])) else {
            panic!("not live");
        };
        let mut signal = opened_with.ended_signal();
        let replaced = s.update_user("user-1", |id| Identity {
            roles: vec!["admin".into()],
            ..id.clone()
        });
        assert_eq!(replaced, 1);
        let Lookup::Live(now_live) = s.lookup(&with_cookie(&cookie[0])) else {
            panic!("not live");
        };
        assert!(
            !Arc::ptr_eq(&now_live, &opened_with),
            "the session was not replaced"
        );
        assert!(!opened_with.has_ended());
        assert_eq!(s.revoke(std::slice::from_ref(&now_live.sid)), 1);
        assert!(opened_with.has_ended());
        signal.changed().await.unwrap();
        assert!(*signal.borrow());
    }

    /// The live map is in shards, each behind its own lock: while one shard is held (as a
    /// sweep holds each in turn), a request for a session in another shard is answered.
    #[test]
    fn a_session_is_found_while_another_shard_of_the_map_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(sessions(dir.path(), [7; 32]));
        let mut cookies = Vec::new();
        for i in 0..LIVE_SHARDS * 2 {
            cookies.push(
                s.create(identity(&format!("u{i}")), None, Tokens::default())
                    .unwrap(),
            );
        }
        assert_eq!(s.active(), LIVE_SHARDS * 2);
        let sid_of = |cookie: &[String]| match s.lookup(&with_cookie(&cookie[0])) {
            Lookup::Live(live) => live.sid.clone(),
            _ => panic!("not live"),
        };
        let held = s.live.shard(&sid_of(&cookies[0]));
        let other = cookies
            .iter()
            .find(|c| !std::ptr::eq(s.live.shard(&sid_of(c)), held))
            .expect("sessions in two shards")
            .clone();
        let lookups = s.clone();
        let _guard = held.write().unwrap();
        let (done, answered) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let found = matches!(lookups.lookup(&with_cookie(&other[0])), Lookup::Live(_));
            let _ = done.send(found);
        });
        // Only a lookup stuck behind the held lock takes this long.
        assert_eq!(answered.recv_timeout(Duration::from_secs(30)), Ok(true));
    }

    #[test]
    fn sessions_survive_a_restart_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let cookie = sessions(dir.path(), [7; 32])
            .create(identity("u1"), None, Tokens::default())
            .unwrap();
        let s = sessions(dir.path(), [7; 32]);
        assert!(matches!(
            s.lookup(&with_cookie(&cookie[0])),
            Lookup::Live(_)
        ));
    }

    #[test]
    fn a_cookie_from_other_keys_or_tampered_is_forged() {
        let dir = tempfile::tempdir().unwrap();
        let cookie = sessions(dir.path(), [7; 32])
            .create(identity("u1"), None, Tokens::default())
            .unwrap();
        let other = sessions(dir.path(), [8; 32]);
        assert!(matches!(
            other.lookup(&with_cookie(&cookie[0])),
            Lookup::Rejected(Rejection::Forged)
        ));
        drop(other);
        let mine = sessions(dir.path(), [7; 32]);
        let mut tampered = cookie[0].clone();
        tampered.insert(8, 'A');
        assert!(matches!(
            mine.lookup(&with_cookie(&tampered)),
            Lookup::Rejected(Rejection::Forged)
        ));
        assert!(matches!(
            mine.lookup(&with_cookie("_gh=")),
            Lookup::Rejected(Rejection::Forged)
        ));
        assert!(matches!(mine.lookup(&HeaderMap::new()), Lookup::None));
    }

    #[test]
    fn own_cookies_are_removed_and_the_app_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let s = sessions(dir.path(), [7; 32]);
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            "app=1; _gh=sealed; _gh_login_abc=x; _ghost=2"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            s.without_own_cookies(&h),
            Some(Some("app=1; _ghost=2".parse().unwrap()))
        );
        h.insert(http::header::COOKIE, "_gh=sealed".parse().unwrap());
        assert_eq!(s.without_own_cookies(&h), Some(None));
        h.insert(http::header::COOKIE, "app=1".parse().unwrap());
        assert_eq!(s.without_own_cookies(&h), None);
    }

    #[test]
    fn long_values_are_chunked_and_joined_again() {
        let dir = tempfile::tempdir().unwrap();
        let s = sessions(dir.path(), [7; 32]);
        let long = "x".repeat(CHUNK * 2 + 10);
        let parts = s.set_cookie(&long, 60);
        assert_eq!(parts.len(), 3);
        let joined: Vec<String> = parts
            .iter()
            .map(|p| p.split(';').next().unwrap().to_string())
            .collect();
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, joined.join("; ").parse().unwrap());
        assert_eq!(s.cookie_value(&h).unwrap(), long);
        assert_eq!(s.clear_cookies(&h).len(), 4);
    }

    fn raw_cookie(bytes: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            http::HeaderValue::from_bytes(bytes).unwrap(),
        );
        h
    }

    /// `app=café` sent raw (not UTF-8 safe ASCII) beside the session: the session is found,
    /// and the app gets its cookie back byte for byte without ours.
    #[test]
    fn a_raw_non_ascii_cookie_neither_hides_the_session_nor_leaks_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = sessions(dir.path(), [7; 32]);
        let cookie = s.create(identity("u1"), None, Tokens::default()).unwrap();
        let pair = cookie[0].split(';').next().unwrap();
        let mut raw = b"app=caf\xc3\xa9; ".to_vec();
        raw.extend_from_slice(pair.as_bytes());
        raw.extend_from_slice(b"; x=\xff\xfe; _GH_login_x=1");
        let h = raw_cookie(&raw);
        assert!(matches!(s.lookup(&h), Lookup::Live(_)));
        let rest = s.without_own_cookies(&h).unwrap().unwrap();
        assert_eq!(rest.as_bytes(), b"app=caf\xc3\xa9; x=\xff\xfe");
    }

    /// Junk chunk names (`_gh_01`, `_gh_+1`, `_gh_10`, thousands of them) are neither joined
    /// nor cleared one by one: sign-out clears at most the session and its 10 chunks.
    #[test]
    fn chunk_names_are_bounded_and_exact() {
        let dir = tempfile::tempdir().unwrap();
        let s = sessions(dir.path(), [7; 32]);
        let mut text: Vec<String> = (0..20_000).map(|i| format!("_gh_{i}=x")).collect();
        text.extend(["_gh_01=x", "_gh_+1=x", "_gh_-0=x", "_gh_0 =y"].map(String::from));
        let h = raw_cookie(text.join("; ").as_bytes());
        let clear = s.clear_cookies(&h);
        assert_eq!(clear.len(), 1 + MAX_CHUNKS);
        assert_eq!(chunk_index(b"_gh_01", b"_gh"), None);
        assert_eq!(chunk_index(b"_gh_+1", b"_gh"), None);
        assert_eq!(chunk_index(b"_gh_10", b"_gh"), None);
        assert_eq!(chunk_index(b"_gh_9", b"_gh"), Some(9));
        // a gap or a duplicate makes the chunked value unreadable, not a guess
        let h = raw_cookie(b"_gh_0=a; _gh_2=c");
        assert_eq!(s.cookie_value(&h).as_deref(), Some(""));
        let h = raw_cookie(b"_gh_0=a; _gh_0=b");
        assert_eq!(s.cookie_value(&h).as_deref(), Some(""));
        let h = raw_cookie(b"_gh_0=a; _gh_1=b");
        assert_eq!(s.cookie_value(&h).as_deref(), Some("ab"));
    }

    mod hostile {
        use super::*;
        use proptest::prelude::*;

        /// A cookie pair a hostile or sloppy client could send: any bytes a header value can
        /// hold except `;`, with or without `=`.
        fn junk_pair() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                proptest::collection::vec(
                    any::<u8>().prop_filter("header byte, not ;", |b| {
                        (*b >= 0x20 && *b != 0x7f && *b != b';') || *b == b'\t'
                    }),
                    0..24,
                ),
                Just(b"_gh_login_x=\xff".to_vec()),
                Just(b"_gh_7".to_vec()),
                Just(b"=\x80".to_vec()),
                Just(b"app=caf\xc3\xa9".to_vec()),
            ]
        }

        proptest! {
            /// A value is accepted exactly when every byte is printable ASCII other than `;`.
            #[test]
            fn cookie_values_are_checked_byte_by_byte(value in proptest::collection::vec(any::<u8>(), 0..300)) {
                let plain = value.iter().all(|b| (0x20..0x7f).contains(b) && *b != b';');
                prop_assert_eq!(is_cookie_value(&value), plain);
            }

            /// The pairs read from any Cookie headers are exactly those of a plain split on
            /// `;` and the first `=` (trimmed, empty pairs skipped), in order.
            #[test]
            fn cookie_pairs_match_a_plain_split(
                values in proptest::collection::vec(
                    proptest::collection::vec(
                        prop_oneof![Just(b';'), Just(b'='), Just(b' '), Just(b'a'), 0x20u8..0x7f, 0x80u8..=0xff],
                        0..40,
                    ),
                    0..4,
                )
            ) {
                let mut h = HeaderMap::new();
                for v in &values {
                    h.append(http::header::COOKIE, http::HeaderValue::from_bytes(v).unwrap());
                }
                let expected: Vec<(Vec<u8>, Vec<u8>)> = values
                    .iter()
                    .flat_map(|v| v.split(|b| *b == b';'))
                    .map(<[u8]>::trim_ascii)
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| match pair.iter().position(|b| *b == b'=') {
                        Some(i) => (pair[..i].trim_ascii().to_vec(), pair[i + 1..].trim_ascii().to_vec()),
                        None => (pair.to_vec(), Vec::new()),
                    })
                    .collect();
                let got: Vec<(Vec<u8>, Vec<u8>)> =
                    cookie_pairs(&h).map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
                prop_assert_eq!(got, expected);
            }
        }

        /// Whatever junk surrounds it, a valid session cookie is found, the app never gets
        /// one of Gatehouse's cookies, and sign-out clears at most 11 names.
        #[test]
        fn junk_pairs_never_hide_or_leak_the_session() {
            let dir = tempfile::tempdir().unwrap();
            let s = sessions(dir.path(), [7; 32]);
            let cookie = s.create(identity("u1"), None, Tokens::default()).unwrap();
            let pair = cookie[0].split(';').next().unwrap().as_bytes().to_vec();
            let mut runner =
                proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(3000));
            let junk = (
                proptest::collection::vec(junk_pair(), 0..5),
                proptest::collection::vec(junk_pair(), 0..5),
            );
            runner
                .run(&junk, |(before, after)| {
                    let mut parts = before.clone();
                    parts.push(pair.clone());
                    parts.extend(after.clone());
                    let raw = parts.join(&b"; "[..]);
                    let h = raw_cookie(&raw);
                    prop_assert!(matches!(s.lookup(&h), Lookup::Live(_)));
                    let rest = s.without_own_cookies(&h).expect("own cookie present");
                    if let Some(rest) = rest {
                        for (k, _) in cookie_pairs(&raw_cookie(rest.as_bytes())) {
                            prop_assert!(
                                !s.is_own(k),
                                "{:?} reached the app",
                                String::from_utf8_lossy(k)
                            );
                        }
                    }
                    prop_assert!(s.clear_cookies(&h).len() <= 1 + MAX_CHUNKS);
                    Ok(())
                })
                .unwrap();
        }
    }
}
