//! Session records: what the server keeps about each session (the cookie only names it).

use serde::{Deserialize, Serialize};

use super::raw::Rows;
use super::{decode, encode, ReadTx, Store, StoreError, Tx};

/// The version written into every session record.
pub const SESSION_RECORD_VERSION: u8 = 1;

/// The identity of a signed-in user, as the app will see it and as a session record keeps
/// it (its behaviour lives in the `identity` module).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The connection (IdP) that vouched for the user.
    pub connection: String,
    /// The IdP's `sub`.
    pub subject: String,
    pub username: Option<String>,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// The local account's id: set when the connection provisions users (JIT).
    #[serde(default)]
    pub user_id: Option<String>,
    /// Local roles (JIT accounts only).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Attributes: the claims the connection keeps, and (JIT) locally set ones.
    #[serde(default)]
    pub attributes: Attributes,
}

/// An identity's attributes, name -> value, sorted by name, in one small allocation: every
/// live session holds one, and a map's tree node is half a KiB for the two or three
/// attributes a login typically carries. Written as a JSON object, like a map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes(Vec<(String, String)>);

impl Attributes {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&String> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Sets `name`; returns the value it had.
    pub fn insert(&mut self, name: String, value: String) -> Option<String> {
        match self.find(&name) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (name, value));
                None
            }
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The attributes in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// The attributes as a map.
    pub fn to_map(&self) -> std::collections::BTreeMap<String, String> {
        self.0.iter().cloned().collect()
    }

    /// Gives back the room kept for more attributes.
    pub fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }
}

impl From<std::collections::BTreeMap<String, String>> for Attributes {
    fn from(map: std::collections::BTreeMap<String, String>) -> Self {
        // A map iterates in key order: already sorted, no duplicates.
        Self(map.into_iter().collect())
    }
}

impl<const N: usize> From<[(String, String); N]> for Attributes {
    fn from(pairs: [(String, String); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl FromIterator<(String, String)> for Attributes {
    /// A later value for the same name wins, as in a map.
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        let mut out = Self::default();
        for (k, v) in pairs {
            out.insert(k, v);
        }
        out.shrink_to_fit();
        out
    }
}

impl Serialize for Attributes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Attributes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        std::collections::BTreeMap::<String, String>::deserialize(deserializer).map(Self::from)
    }
}

/// The IdP's tokens for a session, kept server-side only.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Tokens {
    pub id_token: Option<String>,
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    /// Unix seconds; `None` when the IdP did not say.
    pub access_expires_at: Option<u64>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("id_token", &self.id_token.as_ref().map(|_| "[redacted]"))
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "[redacted]"),
            )
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("access_expires_at", &self.access_expires_at)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub version: u8,
    pub sid: String,
    pub identity: Identity,
    /// The IdP's session id (`sid` claim), for back-channel logout.
    pub idp_sid: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
    pub expires_at: u64,
    pub tokens: Tokens,
    /// When the second factor was passed in this session (unix seconds).
    #[serde(default)]
    pub mfa_at: Option<u64>,
    /// When a replica last saw the session used (a shared store only; written at most a few
    /// times per idle timeout), so the idle timeout holds across replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
}

/// Whose sessions: for a shared store, where one replica's memory does not hold every
/// session, so ending a user's sessions must find them in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOwner {
    /// Every session of a local account.
    User(String),
    /// Every session of an IdP subject at a connection.
    Subject { connection: String, subject: String },
    /// The sessions made in one IdP session.
    IdpSession { connection: String, idp_sid: String },
}

/// The columns of a session record an engine indexes, read from the record.
#[derive(Debug, Deserialize)]
pub(crate) struct SessionColumns {
    pub identity: SessionColumnsIdentity,
    #[serde(default)]
    pub idp_sid: Option<String>,
    pub expires_at: u64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct SessionColumnsIdentity {
    pub connection: String,
    pub subject: String,
    #[serde(default)]
    pub user_id: Option<String>,
}

impl SessionColumns {
    pub(crate) fn of(record: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(record).map_err(|e| StoreError::Decode(e.to_string()))
    }

    pub(crate) fn belongs_to(&self, owner: &SessionOwner) -> bool {
        let id = &self.identity;
        match owner {
            SessionOwner::User(user) => id.user_id.as_deref() == Some(user.as_str()),
            SessionOwner::Subject {
                connection,
                subject,
            } => &id.connection == connection && &id.subject == subject,
            SessionOwner::IdpSession {
                connection,
                idp_sid,
            } => &id.connection == connection && self.idp_sid.as_deref() == Some(idp_sid.as_str()),
        }
    }
}

impl Tx {
    /// Deletes every stored session of `owner`; returns their ids.
    pub fn delete_sessions_of(&mut self, owner: &SessionOwner) -> Result<Vec<String>, StoreError> {
        let sids = self.raw.sessions_of(owner)?;
        for sid in &sids {
            self.raw.remove(Rows::Sessions, sid)?;
        }
        Ok(sids)
    }

    /// Gives every stored session of `owner` a new identity; returns how many.
    pub fn reprofile_sessions_of(
        &mut self,
        owner: &SessionOwner,
        reprofile: &dyn Fn(&Identity) -> Identity,
    ) -> Result<(), StoreError> {
        for sid in self.raw.sessions_of(owner)? {
            let Some(bytes) = self.raw.get(Rows::Sessions, &sid)? else {
                continue;
            };
            let mut record: SessionRecord = decode(&bytes, SESSION_RECORD_VERSION)?;
            record.identity = reprofile(&record.identity);
            self.put_session(&record)?;
        }
        Ok(())
    }

    /// Changes a stored session in place: read (a shared store locks the row until the
    /// commit), changed by `amend`, written back, in this transaction. Returns false and
    /// writes nothing when the store no longer has the session: an ended session is never
    /// brought back by a late write. Memory does not hold a session's IdP tokens, so every
    /// write after login changes the stored record instead of replacing it from memory.
    pub fn amend_session(
        &mut self,
        sid: &str,
        amend: &dyn Fn(&mut SessionRecord),
    ) -> Result<bool, StoreError> {
        let Some(bytes) = self.raw.get(Rows::Sessions, sid)? else {
            return Ok(false);
        };
        let mut record: SessionRecord = decode(&bytes, SESSION_RECORD_VERSION)?;
        amend(&mut record);
        self.put_session(&record)?;
        Ok(true)
    }

    /// Writes (or replaces) a session record.
    pub fn put_session(&mut self, record: &SessionRecord) -> Result<(), StoreError> {
        let bytes = encode(record)?;
        self.raw.put(Rows::Sessions, &record.sid, &bytes)
    }

    /// Deletes sessions by id. Returns how many existed.
    pub fn delete_sessions(&mut self, sids: &[String]) -> Result<usize, StoreError> {
        let mut removed = 0;
        for sid in sids {
            if self.raw.remove(Rows::Sessions, sid)? {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

impl ReadTx {
    /// One session record (a replica's cache miss: one indexed read).
    pub fn session(&self, sid: &str) -> Result<Option<SessionRecord>, StoreError> {
        match self.raw.get(Rows::Sessions, sid)? {
            Some(bytes) => decode(&bytes, SESSION_RECORD_VERSION).map(Some),
            None => Ok(None),
        }
    }
}

impl Store {
    /// Writes (or replaces) a session record, in its own transaction.
    pub fn put_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.write(|tx| tx.put_session(record))
    }

    /// Deletes sessions by id, in one transaction. Returns how many existed.
    pub fn delete_sessions(&self, sids: &[String]) -> Result<usize, StoreError> {
        self.write(|tx| tx.delete_sessions(sids))
    }

    /// Every stored session (at startup, to fill the in-memory cache).
    pub fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        self.read(|tx| {
            let mut out = Vec::new();
            for bytes in tx.raw.scan(Rows::Sessions)? {
                match decode::<SessionRecord>(&bytes, SESSION_RECORD_VERSION) {
                    Ok(record) => out.push(record),
                    Err(e) => tracing::warn!(error = %e, "skipping an unreadable session record"),
                }
            }
            Ok(out)
        })
    }
}

/// A session record made at login, stored in the login's transaction and then made live.
#[derive(Debug)]
pub struct PendingSession(SessionRecord);

impl PendingSession {
    pub fn new(record: SessionRecord) -> Self {
        Self(record)
    }

    pub fn record(&self) -> &SessionRecord {
        &self.0
    }

    pub fn into_record(self) -> SessionRecord {
        self.0
    }

    /// Records that the second factor was passed before the session was issued.
    pub fn with_mfa(mut self, at: u64) -> Self {
        self.0.mfa_at = Some(at);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sid: &str) -> SessionRecord {
        SessionRecord {
            version: SESSION_RECORD_VERSION,
            sid: sid.into(),
            identity: Identity {
                connection: "corp".into(),
                subject: "u1".into(),
                username: Some("alice".into()),
                email: None,
                email_verified: false,
                name: None,
                groups: vec![],
                user_id: None,
                roles: vec![],
                attributes: Default::default(),
            },
            idp_sid: Some("op-1".into()),
            created_at: 1,
            expires_at: 2,
            tokens: Tokens::default(),
            mfa_at: None,
            last_seen: None,
        }
    }

    #[test]
    fn sessions_survive_a_reopen_and_deletes_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.put_session(&record("a")).unwrap();
            store.put_session(&record("b")).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.sessions().unwrap().len(), 2);
        assert_eq!(
            store.delete_sessions(&["a".into(), "zz".into()]).unwrap(),
            1
        );
        assert_eq!(store.sessions().unwrap()[0].sid, "b");
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        use std::io::Write;
        crate::private_file::create_new()
            .open(dir.path().join(super::super::FILE_NAME))
            .unwrap()
            .write_all(b"not a database at all, sorry")
            .unwrap();
        let error = Store::open(dir.path()).unwrap_err().to_string();
        assert!(error.contains("gatehouse.redb"), "{error}");
        assert!(
            !error.contains("chmod"),
            "refused as corrupt, not for its mode: {error}"
        );
    }

    /// An amendment changes only what it touches (the tokens stay), and a session deleted
    /// meanwhile is not brought back by it.
    #[test]
    fn an_amendment_keeps_the_rest_and_never_brings_a_deleted_session_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut r = record("a");
        r.tokens.refresh_token = Some("kept".into());
        store.put_session(&r).unwrap();
        let amended = store
            .write(|tx| tx.amend_session("a", &|r| r.mfa_at = Some(7)))
            .unwrap();
        assert!(amended);
        let stored = store.read(|tx| tx.session("a")).unwrap().unwrap();
        assert_eq!(stored.mfa_at, Some(7));
        assert_eq!(stored.tokens.refresh_token.as_deref(), Some("kept"));
        store.delete_sessions(&["a".into()]).unwrap();
        let amended = store
            .write(|tx| tx.amend_session("a", &|r| r.mfa_at = Some(8)))
            .unwrap();
        assert!(!amended);
        assert!(store.read(|tx| tx.session("a")).unwrap().is_none());
    }

    /// Attributes keep a map's meaning and its JSON form: sorted by name, a later value for
    /// a name replaces the earlier one, and a record written with a map reads back the same.
    #[test]
    fn attributes_behave_and_serialize_like_a_map() {
        let mut a: Attributes = [("b", "2"), ("a", "1"), ("b", "3")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(a.insert("c".into(), "4".into()), None);
        assert_eq!(a.insert("a".into(), "0".into()), Some("1".into()));
        assert_eq!(a.get("b").map(String::as_str), Some("3"));
        assert!(!a.contains_key("z"));
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, r#"{"a":"0","b":"3","c":"4"}"#);
        let map: std::collections::BTreeMap<String, String> = serde_json::from_str(&json).unwrap();
        assert_eq!(Attributes::from(map.clone()), a);
        assert_eq!(serde_json::from_str::<Attributes>(&json).unwrap(), a);
        assert_eq!(a.to_map(), map);
    }

    #[test]
    fn tokens_never_show_in_debug_output() {
        let mut r = record("a");
        r.tokens.refresh_token = Some("secret-refresh".into());
        assert!(!format!("{r:?}").contains("secret-refresh"));
    }
}
