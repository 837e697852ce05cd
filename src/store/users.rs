//! Local accounts: the user records, the IdP identities linked to them, and the email and
//! username indexes that keep both unique. The indexes are kept in step by [`Tx::put_user`]
//! and [`Tx::delete_user`], inside the caller's transaction.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::raw::{Ahead, Counted, Index, RawRead, Rows};
use super::{decode, encode, ReadTx, StoreError, Tx};

/// The version written into every user record.
pub const USER_RECORD_VERSION: u8 = 1;

/// An IdP identity linked to a local account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub connection: String,
    pub subject: String,
}

/// A local account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub version: u8,
    /// The stable local id (a UUIDv7).
    pub id: String,
    pub username: String,
    pub email: Option<String>,
    #[serde(default)]
    pub email_verified: bool,
    pub display_name: Option<String>,
    /// Groups as the IdP last sent them.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Attributes from the IdP's claims.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Attributes set locally (`gatehouse users attrs set`).
    #[serde(default)]
    pub local_attributes: BTreeMap<String, String>,
    /// Local roles (`gatehouse users roles add`).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Unix seconds.
    pub created_at: u64,
    pub updated_at: u64,
    pub last_login_at: Option<u64>,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub links: Vec<Link>,
    /// The second factor (TOTP), when enrolled.
    #[serde(default)]
    pub mfa: MfaRecord,
}

impl UserRecord {
    /// A new account with a fresh id.
    pub fn new(username: String, now: u64) -> Self {
        Self {
            version: USER_RECORD_VERSION,
            id: uuid::Uuid::now_v7().to_string(),
            username,
            email: None,
            email_verified: false,
            display_name: None,
            groups: Vec::new(),
            attributes: BTreeMap::new(),
            local_attributes: BTreeMap::new(),
            roles: Vec::new(),
            created_at: now,
            updated_at: now,
            last_login_at: None,
            disabled: false,
            links: Vec::new(),
            mfa: Default::default(),
        }
    }

    /// The attributes the app sees: the IdP's, with local ones over them.
    pub fn merged_attributes(&self) -> BTreeMap<String, String> {
        let mut out = self.attributes.clone();
        out.extend(
            self.local_attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        out
    }
}

/// The form emails are indexed and compared in.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

fn username_key(username: &str) -> String {
    username.to_lowercase()
}

fn get_user(raw: &dyn RawRead, id: &str) -> Result<Option<UserRecord>, StoreError> {
    match raw.get(Rows::Users, id)? {
        Some(bytes) => decode(&bytes, USER_RECORD_VERSION).map(Some),
        None => Ok(None),
    }
}

fn by_index(raw: &dyn RawRead, index: Index, key: &str) -> Result<Option<UserRecord>, StoreError> {
    match raw.index(index, key)? {
        Some(id) => get_user(raw, &id),
        None => Ok(None),
    }
}

/// The read accessors, the same in a write and a read transaction.
macro_rules! read_accessors {
    () => {
        pub fn user(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
            get_user(self.reader(), id)
        }

        /// The account an IdP identity is linked to.
        pub fn user_by_link(
            &self,
            connection: &str,
            subject: &str,
        ) -> Result<Option<UserRecord>, StoreError> {
            match self.reader().link(connection, subject)? {
                Some(id) => self.user(&id),
                None => Ok(None),
            }
        }

        /// The account that holds this email in the index.
        pub fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
            by_index(self.reader(), Index::Emails, &normalize_email(email))
        }

        /// The account with this username (without regard to case).
        pub fn user_by_username(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
            by_index(self.reader(), Index::Usernames, &username_key(username))
        }

        /// An account by id, else by email, else by username.
        pub fn find_user(&self, key: &str) -> Result<Option<UserRecord>, StoreError> {
            if let Some(user) = self.user(key)? {
                return Ok(Some(user));
            }
            match self.user_by_email(key)? {
                Some(user) => Ok(Some(user)),
                None => self.user_by_username(key),
            }
        }

        /// Every account, in id order (UUIDv7: creation order).
        pub fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
            self.reader()
                .scan(Rows::Users)?
                .iter()
                .map(|bytes| decode(bytes, USER_RECORD_VERSION))
                .collect()
        }

        pub fn user_count(&self) -> Result<u64, StoreError> {
            self.reader().count(Counted::Users)
        }

        /// How many rows the link and email indexes hold (for tests and `users list`).
        pub fn index_sizes(&self) -> Result<(u64, u64), StoreError> {
            let raw = self.reader();
            Ok((raw.count(Counted::Links)?, raw.count(Counted::Emails)?))
        }
    };
}

impl Tx {
    read_accessors!();

    /// Whether `username` (without regard to case) belongs to an account other than `owner`.
    pub fn username_taken(&self, username: &str, owner: &str) -> Result<bool, StoreError> {
        let holder = self
            .reader()
            .index(Index::Usernames, &username_key(username))?;
        Ok(holder.is_some_and(|id| id != owner))
    }

    /// Writes an account and keeps the indexes in step: its username is claimed (the caller
    /// has checked it is free; a claim that loses a race with another transaction is a
    /// [`StoreError::Conflict`], and the transaction is retried), and index entries it no
    /// longer has are released.
    ///
    /// The email index is what `link_by_email` links on, so only a verified email is in it
    /// (an admin's `users add --email` counts as verified; JIT stores a `trust_email`
    /// connection's emails as verified): an account whose email nobody verified never holds
    /// the address, and cannot be handed to its real owner's later sign-in. A verified email
    /// is indexed when free, or when the account holding the entry no longer has it verified
    /// (an entry from before this rule); never taken from another verified holder.
    pub fn put_user(&mut self, user: &UserRecord) -> Result<(), StoreError> {
        let previous = self.user(&user.id)?;
        self.store_user(previous.as_ref(), user)
    }

    /// Writes a new account, as [`Tx::put_user`] does, without reading the account first:
    /// `user` has a fresh id (from [`UserRecord::new`]) that nothing stored has.
    pub fn create_user(&mut self, user: &UserRecord) -> Result<(), StoreError> {
        self.store_user(None, user)
    }

    /// Tells the transaction the link, email and username a login is about to look up, so
    /// an engine a round trip away reads them together ([`RawRead::prefetch`]); the later
    /// look-ups are answered from what it read.
    pub fn look_ahead(
        &self,
        link: &Link,
        email: Option<&str>,
        username: Option<&str>,
    ) -> Result<(), StoreError> {
        let email = email.map(normalize_email);
        let username = username.map(username_key);
        self.reader().prefetch(&Ahead {
            link: Some((&link.connection, &link.subject)),
            email: email.as_deref(),
            username: username.as_deref(),
        })
    }

    fn store_user(
        &mut self,
        previous: Option<&UserRecord>,
        user: &UserRecord,
    ) -> Result<(), StoreError> {
        let indexed = user
            .email
            .as_deref()
            .filter(|_| user.email_verified)
            .map(normalize_email);
        // Who holds the email's entry now, and whether that holder still has it verified.
        let holder = match &indexed {
            Some(email) => match self.reader().index(Index::Emails, email)? {
                Some(id) if id != user.id => {
                    let held = self.user(&id)?.is_some_and(|other| {
                        other.email_verified
                            && other.email.as_deref().map(normalize_email).as_ref() == Some(email)
                    });
                    Some((id, held))
                }
                other => other.map(|id| (id, true)),
            },
            None => None,
        };
        let bytes = encode(user)?;
        self.raw.put(Rows::Users, &user.id, &bytes)?;
        if let Some(old) = previous {
            let old_name = username_key(&old.username);
            if old_name != username_key(&user.username) {
                self.raw.release(Index::Usernames, &old_name, &user.id)?;
            }
            if let Some(old_email) = old.email.as_deref().map(normalize_email) {
                if indexed.as_deref() != Some(old_email.as_str()) {
                    self.raw.release(Index::Emails, &old_email, &user.id)?;
                }
            }
        }
        self.raw.claim(
            Index::Usernames,
            &username_key(&user.username),
            &user.id,
            None,
        )?;
        if let Some(email) = indexed {
            match &holder {
                None => self.raw.claim(Index::Emails, &email, &user.id, None)?,
                Some((id, false)) if id != &user.id => {
                    self.raw.claim(Index::Emails, &email, &user.id, Some(id))?
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Links an IdP identity to an account (the record's `links` are the caller's to update).
    /// A link another transaction made meanwhile to another account is a
    /// [`StoreError::Conflict`] (the transaction is retried and then finds that link).
    pub fn link(&mut self, link: &Link, user_id: &str) -> Result<(), StoreError> {
        self.raw.set_link(&link.connection, &link.subject, user_id)
    }

    /// Deletes an account with its links and index entries; returns it.
    pub fn delete_user(&mut self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        let Some(user) = self.user(id)? else {
            return Ok(None);
        };
        self.raw.remove(Rows::Users, id)?;
        for link in &user.links {
            self.raw.remove_link(&link.connection, &link.subject)?;
        }
        self.raw
            .release(Index::Usernames, &username_key(&user.username), id)?;
        if let Some(email) = user.email.as_deref().map(normalize_email) {
            self.raw.release(Index::Emails, &email, id)?;
        }
        Ok(Some(user))
    }
}

impl ReadTx {
    read_accessors!();
}

/// A user's TOTP enrolment and attempt counters, embedded in the user record (its
/// behaviour lives in `mfa::record`). `Default` is "not enrolled".
///
/// Missing fields deserialize to their defaults, so records written before a field existed
/// still load.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MfaRecord {
    /// The TOTP secret, sealed under `mfa::record::TOTP_SECRET_PURPOSE`.
    pub sealed_secret: Option<String>,
    /// When the enrolment was confirmed (unix seconds).
    pub enrolled_at: Option<u64>,
    /// The last TOTP step accepted; codes at or before it are replays.
    pub last_used_step: Option<u64>,
    /// Hashes of the recovery codes not used yet (see `recovery`).
    pub recovery_hashes: Vec<String>,
    /// Failed attempts in a row.
    pub failures: u32,
    /// Locked out until this unix second, when set and still ahead.
    pub locked_until: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use super::*;

    /// An account with this email, verified.
    fn user(name: &str, email: Option<&str>) -> UserRecord {
        let mut u = UserRecord::new(name.into(), 1);
        u.email = email.map(str::to_string);
        u.email_verified = email.is_some();
        u
    }

    /// A stored account `alice` with this email, linked to corp:s1.
    fn linked_alice(store: &Store, email: &str) -> UserRecord {
        let mut u = user("alice", Some(email));
        let link = Link {
            connection: "corp".into(),
            subject: "s1".into(),
        };
        u.links.push(link.clone());
        store
            .write(|tx| {
                tx.put_user(&u)?;
                tx.link(&link, &u.id)
            })
            .unwrap();
        u
    }

    #[test]
    fn a_user_is_found_by_id_link_and_email_in_any_case() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let u = linked_alice(&store, "Alice@Example.com");
        store
            .write(|tx| {
                assert_eq!(tx.user_by_link("corp", "s1")?.unwrap().id, u.id);
                assert_eq!(tx.user_by_email(" alice@EXAMPLE.com")?.unwrap().id, u.id);
                assert!(tx.username_taken("ALICE", "someone-else")?);
                assert!(!tx.username_taken("alice", &u.id)?);
                Ok(())
            })
            .unwrap();
        let found = store.read(|tx| tx.find_user("alice@example.com")).unwrap();
        assert_eq!(found.unwrap().id, u.id);
    }

    #[test]
    fn a_changed_email_releases_the_old_index_entry_and_delete_removes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut u = linked_alice(&store, "a@example.com");
        u.email = Some("b@example.com".into());
        store.write(|tx| tx.put_user(&u)).unwrap();
        store
            .write(|tx| {
                assert!(tx.user_by_email("a@example.com")?.is_none());
                assert!(tx.user_by_email("b@example.com")?.is_some());
                Ok(())
            })
            .unwrap();
        store.write(|tx| tx.delete_user(&u.id)).unwrap();
        let (links, emails) = store.read(|tx| tx.index_sizes()).unwrap();
        assert_eq!((links, emails), (0, 0));
        assert_eq!(store.read(|tx| tx.user_count()).unwrap(), 0);
    }

    #[test]
    fn an_email_held_by_another_account_is_not_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = user("a", Some("same@example.com"));
        let second = user("b", Some("same@example.com"));
        store
            .write(|tx| {
                tx.put_user(&first)?;
                tx.put_user(&second)
            })
            .unwrap();
        let holder = store
            .write(|tx| tx.user_by_email("same@example.com"))
            .unwrap();
        assert_eq!(holder.unwrap().id, first.id);
    }

    /// An unverified email is never in the linking index, whatever the order of writes: a
    /// later verified holder takes an entry left by an unverified one, and an account whose
    /// email stops being verified gives its entry up.
    #[test]
    fn only_a_verified_email_is_indexed_for_linking() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut squatter = user("squatter", Some("Victim@Example.com"));
        squatter.email_verified = false;
        store.write(|tx| tx.put_user(&squatter)).unwrap();
        let found = store.read(|tx| tx.user_by_email("victim@example.com"));
        assert!(
            found.unwrap().is_none(),
            "an unverified email is not indexed"
        );
        assert_eq!(store.read(|tx| tx.index_sizes()).unwrap().1, 0);

        let owner = user("owner", Some("victim@example.com"));
        store.write(|tx| tx.put_user(&owner)).unwrap();
        // The squatter's next write (even claiming verification again) does not take it.
        squatter.email_verified = true;
        store.write(|tx| tx.put_user(&squatter)).unwrap();
        let holder = store.read(|tx| tx.user_by_email("VICTIM@example.com"));
        assert_eq!(holder.unwrap().unwrap().id, owner.id);

        let mut owner = owner;
        owner.email_verified = false;
        store.write(|tx| tx.put_user(&owner)).unwrap();
        let holder = store.read(|tx| tx.user_by_email("victim@example.com"));
        assert!(
            holder.unwrap().is_none(),
            "an unverified holder gives the entry up"
        );
    }

    /// An entry written before the rule (an unverified holder in the index) goes to the
    /// first verified account with the address.
    #[test]
    fn a_verified_account_takes_the_entry_of_an_unverified_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut old = user("old", Some("a@example.com"));
        store.write(|tx| tx.put_user(&old)).unwrap();
        // The record loses its verification without going through put_user (an old store).
        old.email_verified = false;
        store
            .write(|tx| {
                let bytes = encode(&old)?;
                tx.raw.put(Rows::Users, &old.id, &bytes)
            })
            .unwrap();
        let verified = user("verified", Some("a@example.com"));
        store.write(|tx| tx.put_user(&verified)).unwrap();
        let holder = store.read(|tx| tx.user_by_email("a@example.com"));
        assert_eq!(holder.unwrap().unwrap().id, verified.id);
    }

    #[test]
    fn a_failed_transaction_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let u = user("alice", None);
        let result: Result<(), StoreError> = store.write(|tx| {
            tx.put_user(&u)?;
            Err(StoreError::Db("boom".into()))
        });
        assert!(result.is_err());
        assert_eq!(store.read(|tx| tx.user_count()).unwrap(), 0);
    }
}
