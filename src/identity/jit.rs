//! Just-In-Time provisioning: after a positive answer from a connection with `jit = true`, the
//! user's identity is looked up in the store and created, linked or updated, in the login's
//! one write transaction. The identity the session carries then comes from the local account,
//! so local roles and attributes reach the app even when the IdP does not send them.
//!
//! 1. The (connection, `sub`) link names an account: update it by `attribute_sync`.
//! 2. Else, with `link_by_email`, an account holds the same email: link to it when the IdP
//!    verified the email (or the connection has `trust_email`); refuse when it did not,
//!    since linking on an unverified email would hand the account to whoever typed it.
//!    Both sides must be verified: only a verified email is in the index
//!    ([`crate::store::Tx::put_user`]), and the holder's record is checked again here, so an
//!    account made through an IdP that let someone state an address they do not own can
//!    never pre-empt its owner (pre-account-takeover): the owner gets an account of their own.
//! 3. Else create an account. A username that is taken gets `-2`, `-3`, ... (the first free).
//!
//! A `trust_email` connection's emails are stored as verified (that is what the key says).
//!
//! A disabled account is refused. Every create, link, update and refusal is audited, with the
//! names of the fields that changed and never their values.

use std::collections::BTreeMap;

use super::headers::{is_clean_username, safe_value};
use super::Identity;
use crate::config::model::{AttributeSync, Connection};
use crate::store::audit::{AuditAction, AuditActor, AuditEntry};
use crate::store::users::{normalize_email, Link, UserRecord};
use crate::store::{StoreError, Tx};

/// What provisioning did; the `action` label of `gatehouse_jit_provisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JitAction {
    Created,
    Linked,
    Updated,
    Unchanged,
}

impl JitAction {
    pub fn label(self) -> crate::metrics::JitOutcome {
        use crate::metrics::JitOutcome;
        match self {
            JitAction::Created => JitOutcome::Created,
            JitAction::Linked => JitOutcome::Linked,
            JitAction::Updated => JitOutcome::Updated,
            JitAction::Unchanged => JitOutcome::Unchanged,
        }
    }
}

/// Why a login was refused by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JitRefusal {
    /// The account is disabled.
    Disabled { user_id: String },
    /// A local account has this email, but the IdP did not verify it.
    UnverifiedEmail { user_id: String },
}

impl JitRefusal {
    pub fn reason(&self) -> &'static str {
        match self {
            JitRefusal::Disabled { .. } => "disabled",
            JitRefusal::UnverifiedEmail { .. } => "email_not_verified",
        }
    }

    pub fn user_id(&self) -> &str {
        match self {
            JitRefusal::Disabled { user_id } | JitRefusal::UnverifiedEmail { user_id } => user_id,
        }
    }
}

#[derive(Debug)]
pub enum Provisioned {
    Allowed {
        identity: Identity,
        action: JitAction,
    },
    Refused(JitRefusal),
}

/// The usernames tried for a new account, in order.
const USERNAME_TRIES: u32 = 1000;

/// Provisions the user `claims` describes, inside `tx`. The caller commits `tx` whatever the
/// outcome (a refusal's audit entry must be kept).
pub fn provision(
    tx: &mut Tx,
    connection: &Connection,
    claims: &Identity,
    now: u64,
    request_id: &str,
) -> Result<Provisioned, StoreError> {
    let trusted;
    let claims = if connection.trust_email && !claims.email_verified && claims.email.is_some() {
        trusted = Identity {
            email_verified: true,
            ..claims.clone()
        };
        &trusted
    } else {
        claims
    };
    let audit = |action: AuditAction, user_id: &str| {
        let mut entry = AuditEntry::new(AuditActor::Login, action, now);
        entry.connection = Some(connection.id.clone());
        entry.subject = Some(claims.subject.clone());
        entry.user_id = Some(user_id.to_string());
        entry.request_id = Some(request_id.to_string()).filter(|r| !r.is_empty());
        entry
    };
    let refuse = |tx: &mut Tx, refusal: JitRefusal| {
        let mut entry = audit(AuditAction::Refused, refusal.user_id());
        entry.reason = Some(refusal.reason().to_string());
        tx.append_audit(&entry)?;
        tracing::warn!(
            connection = %connection.id,
            user_id = refusal.user_id(),
            reason = refusal.reason(),
            "login refused by the local account"
        );
        Ok(Provisioned::Refused(refusal))
    };

    let link = Link {
        connection: connection.id.clone(),
        subject: claims.subject.clone(),
    };
    // What a new account would be called, worked out before the look-ups so they all go
    // to the store together.
    let base = base_username(claims);
    tx.look_ahead(&link, claims.email.as_deref(), Some(&base))?;

    if let Some(mut user) = tx.user_by_link(&connection.id, &claims.subject)? {
        if user.disabled {
            return refuse(tx, JitRefusal::Disabled { user_id: user.id });
        }
        let changed = sync(&mut user, claims, connection.attribute_sync);
        user.last_login_at = Some(now);
        let action = if changed.is_empty() {
            JitAction::Unchanged
        } else {
            user.updated_at = now;
            let mut entry = audit(AuditAction::Updated, &user.id);
            entry.changed = changed;
            tx.append_audit(&entry)?;
            JitAction::Updated
        };
        tx.put_user(&user)?;
        return Ok(allowed(&user, claims, action));
    }

    let local = match (&claims.email, connection.link_by_email) {
        (Some(email), true) => tx.user_by_email(email)?,
        _ => None,
    };
    // Linking needs both sides verified: an entry whose holder's email is not (an entry
    // from before the index held verified emails only) links nobody.
    let local = local.filter(|user| {
        user.email_verified
            && user.email.as_deref().map(normalize_email)
                == claims.email.as_deref().map(normalize_email)
    });
    if let Some(mut user) = local {
        if !claims.email_verified {
            return refuse(tx, JitRefusal::UnverifiedEmail { user_id: user.id });
        }
        if user.disabled {
            return refuse(tx, JitRefusal::Disabled { user_id: user.id });
        }
        tx.link(&link, &user.id)?;
        user.links.push(link);
        let mut changed = sync(&mut user, claims, connection.attribute_sync);
        changed.insert(0, "links".to_string());
        user.updated_at = now;
        user.last_login_at = Some(now);
        tx.put_user(&user)?;
        let mut entry = audit(AuditAction::Linked, &user.id);
        entry.changed = changed;
        tx.append_audit(&entry)?;
        return Ok(allowed(&user, claims, JitAction::Linked));
    }

    note_unclean_usernames(claims);
    let username = free_username(tx, &base)?;
    let mut user = UserRecord::new(username, now);
    let mut changed = vec!["username".to_string()];
    changed.extend(sync(&mut user, claims, AttributeSync::Override));
    user.last_login_at = Some(now);
    tx.link(&link, &user.id)?;
    user.links.push(link);
    tx.create_user(&user)?;
    let mut entry = audit(AuditAction::Created, &user.id);
    entry.changed = changed;
    tx.append_audit(&entry)?;
    Ok(allowed(&user, claims, JitAction::Created))
}

fn allowed(user: &UserRecord, claims: &Identity, action: JitAction) -> Provisioned {
    Provisioned::Allowed {
        identity: profile_identity(user, claims),
        action,
    }
}

/// The identity a JIT session carries: the local account's fields, under the connection and
/// subject the user signed in with.
pub fn profile_identity(user: &UserRecord, claims: &Identity) -> Identity {
    Identity {
        connection: claims.connection.clone(),
        subject: claims.subject.clone(),
        username: Some(user.username.clone()),
        email: user.email.clone(),
        email_verified: user.email_verified,
        name: user.display_name.clone(),
        groups: user.groups.clone(),
        user_id: Some(user.id.clone()),
        roles: user.roles.clone(),
        attributes: user.merged_attributes().into(),
    }
}

/// The username a new account asks for: the IdP's username, else the email's local part,
/// each only when clean ([`is_clean_username`]: no control or bidi characters, no spaces at
/// either end; a name is never trimmed or stripped into another one); else the subject, with
/// anything unclean percent-encoded. The header value is then one-to-one with it, so the
/// store's uniqueness check is a check on what the app receives.
fn base_username(claims: &Identity) -> String {
    if let Some(clean) = username_candidates(claims).find(|c| is_clean_username(c)) {
        return clean.to_string();
    }
    if is_clean_username(&claims.subject) {
        return claims.subject.clone();
    }
    safe_value(&claims.subject)
        .and_then(|v| v.to_str().ok().map(str::to_string))
        .filter(|s| is_clean_username(s))
        .unwrap_or_else(|| format!("user-{}", crate::ids::random_id()))
}

/// The names the IdP offers for a new account, in the order they are tried: its username,
/// then the email's local part.
fn username_candidates(claims: &Identity) -> impl Iterator<Item = &str> {
    let from_email = claims.email.as_deref().and_then(|e| e.split('@').next());
    [claims.username.as_deref(), from_email]
        .into_iter()
        .flatten()
}

/// Logs the IdP's names passed over as unclean, when a new account is named.
fn note_unclean_usernames(claims: &Identity) {
    for candidate in username_candidates(claims) {
        if is_clean_username(candidate) {
            break;
        }
        if !candidate.is_empty() {
            tracing::info!(
                connection = %claims.connection,
                username = candidate,
                "IdP username not used: control or bidi characters, or spaces at an end"
            );
        }
    }
}

/// `base` when free, else the first free of `base-2`, `base-3`, ...
fn free_username(tx: &Tx, base: &str) -> Result<String, StoreError> {
    // A new account has no id yet that could own a name: any owner means taken.
    if !tx.username_taken(base, "")? {
        return Ok(base.to_string());
    }
    for n in 2..USERNAME_TRIES {
        let candidate = format!("{base}-{n}");
        if !tx.username_taken(&candidate, "")? {
            return Ok(candidate);
        }
    }
    Err(StoreError::Db(format!(
        "no free username left for `{base}`"
    )))
}

/// Applies the IdP's claims to `user` by `mode`; returns the names of what changed.
fn sync(user: &mut UserRecord, claims: &Identity, mode: AttributeSync) -> Vec<String> {
    let mut changed = Vec::new();
    if mode == AttributeSync::None {
        return changed;
    }
    let mut set = |name: &str, differs: bool| {
        if differs {
            changed.push(name.to_string());
        }
    };
    set("email", user.email != claims.email);
    set(
        "email_verified",
        user.email_verified != claims.email_verified,
    );
    set("display_name", user.display_name != claims.name);
    set("groups", user.groups != claims.groups);
    user.email = claims.email.clone();
    user.email_verified = claims.email_verified;
    user.display_name = claims.name.clone();
    user.groups = claims.groups.clone();
    let attributes = claims.attributes.to_map();
    changed.extend(changed_keys("attributes", &user.attributes, &attributes));
    user.attributes = attributes;
    if mode == AttributeSync::Override && !user.local_attributes.is_empty() {
        changed.extend(
            user.local_attributes
                .keys()
                .map(|k| format!("local_attributes.{k}")),
        );
        user.local_attributes.clear();
    }
    changed
}

/// `prefix.name` for every key added, removed or changed between `old` and `new`.
fn changed_keys(
    prefix: &str,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut keys: Vec<&String> = old
        .iter()
        .filter(|(k, v)| new.get(*k) != Some(v))
        .map(|(k, _)| k)
        .collect();
    keys.extend(new.keys().filter(|k| !old.contains_key(*k)));
    keys.sort();
    keys.into_iter().map(|k| format!("{prefix}.{k}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use std::sync::Arc;

    fn connection(sync: AttributeSync, link_by_email: bool) -> Connection {
        let text = r#"
            [[upstreams]]
            url = "http://127.0.0.1:1"
            [[connections]]
            id = "corp"
            issuer = "https://idp.example.com"
            client_id = "c"
            client_secret = "s"
        "#;
        let mut c = crate::config::parse(text).unwrap().connections.remove(0);
        c.attribute_sync = sync;
        c.link_by_email = link_by_email;
        c
    }

    fn claims(sub: &str, email: &str, verified: bool) -> Identity {
        let mut id = Identity::new("corp", sub);
        id.username = Some("alice".into());
        id.email = Some(email.into());
        id.email_verified = verified;
        id.name = Some("Alice".into());
        id.groups = vec!["staff".into()];
        id.attributes.insert("department".into(), "R&D".into());
        id
    }

    fn run(store: &Store, c: &Connection, claims: &Identity) -> Provisioned {
        store
            .write(|tx| provision(tx, c, claims, 100, "req-1"))
            .unwrap()
    }

    /// Changes a stored account the way an admin would.
    fn edit(store: &Store, id: &str, change: impl Fn(&mut UserRecord)) {
        store
            .write(|tx| {
                let mut u = tx.user(id)?.unwrap();
                change(&mut u);
                tx.put_user(&u)
            })
            .unwrap();
    }

    fn action(p: &Provisioned) -> JitAction {
        match p {
            Provisioned::Allowed { action, .. } => *action,
            Provisioned::Refused(r) => panic!("refused: {r:?}"),
        }
    }

    #[test]
    fn a_first_login_creates_and_a_second_finds_the_same_account() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let c = connection(AttributeSync::Override, false);
        let first = run(&store, &c, &claims("s1", "a@example.com", true));
        assert_eq!(action(&first), JitAction::Created);
        let second = run(&store, &c, &claims("s1", "a@example.com", true));
        assert_eq!(action(&second), JitAction::Unchanged);
        let (Provisioned::Allowed { identity: a, .. }, Provisioned::Allowed { identity: b, .. }) =
            (first, second)
        else {
            unreachable!()
        };
        assert_eq!(a.user_id, b.user_id);
        assert!(a.user_id.is_some());
        let log = store.read(|tx| tx.audit(None)).unwrap();
        assert_eq!(log.len(), 1, "an unchanged login is not audited: {log:?}");
        assert_eq!(log[0].action, AuditAction::Created);
        assert!(log[0]
            .changed
            .contains(&"attributes.department".to_string()));
        assert_eq!(log[0].request_id.as_deref(), Some("req-1"));
    }

    #[test]
    fn a_taken_username_gets_the_first_free_number() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let c = connection(AttributeSync::Override, false);
        let names: Vec<String> = ["s1", "s2", "s3"]
            .iter()
            .map(
                |sub| match run(&store, &c, &claims(sub, &format!("{sub}@x.org"), true)) {
                    Provisioned::Allowed { identity, .. } => identity.username.unwrap(),
                    Provisioned::Refused(r) => panic!("{r:?}"),
                },
            )
            .collect();
        assert_eq!(names, ["alice", "alice-2", "alice-3"]);
    }

    #[test]
    fn override_drops_local_attributes_and_preserve_local_keeps_them() {
        for (mode, kept) in [
            (AttributeSync::Override, false),
            (AttributeSync::PreserveLocal, true),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let c = connection(mode, false);
            let Provisioned::Allowed { identity, .. } =
                run(&store, &c, &claims("s1", "a@example.com", true))
            else {
                panic!()
            };
            let id = identity.user_id.unwrap();
            edit(&store, &id, |u| {
                u.local_attributes.insert("desk".into(), "4F".into());
            });
            let mut changed = claims("s1", "a@example.com", true);
            changed
                .attributes
                .insert("department".into(), "Sales".into());
            let Provisioned::Allowed { identity, action } = run(&store, &c, &changed) else {
                panic!()
            };
            assert_eq!(action, JitAction::Updated);
            assert_eq!(
                identity.attributes.get("department").map(String::as_str),
                Some("Sales")
            );
            assert_eq!(identity.attributes.contains_key("desk"), kept, "{mode:?}");
        }
    }

    #[test]
    fn sync_none_changes_nothing_after_creation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let c = connection(AttributeSync::None, false);
        run(&store, &c, &claims("s1", "a@example.com", true));
        let mut changed = claims("s1", "new@example.com", true);
        changed.groups = vec!["other".into()];
        let Provisioned::Allowed { identity, action } = run(&store, &c, &changed) else {
            panic!()
        };
        assert_eq!(action, JitAction::Unchanged);
        assert_eq!(identity.email.as_deref(), Some("a@example.com"));
        assert_eq!(identity.groups, ["staff"]);
    }

    #[test]
    fn a_verified_email_links_and_an_unverified_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut local = UserRecord::new("alice.local".into(), 1);
        local.email = Some("alice@example.com".into());
        local.email_verified = true; // as `users add --email` makes it
        local.roles = vec!["editor".into()];
        store.write(|tx| tx.put_user(&local)).unwrap();
        let c = connection(AttributeSync::Override, true);

        let refused = run(&store, &c, &claims("evil", "ALICE@example.com", false));
        assert!(matches!(
            refused,
            Provisioned::Refused(JitRefusal::UnverifiedEmail { .. })
        ));

        let linked = run(&store, &c, &claims("s1", "alice@example.com", true));
        let Provisioned::Allowed { identity, action } = linked else {
            panic!()
        };
        assert_eq!(action, JitAction::Linked);
        assert_eq!(identity.user_id.as_deref(), Some(local.id.as_str()));
        assert_eq!(identity.roles, ["editor"], "local roles reach the session");
        let log = store.read(|tx| tx.audit(Some(&local.id))).unwrap();
        let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["refused", "linked"]);
        assert_eq!(log[0].reason.as_deref(), Some("email_not_verified"));
    }

    #[test]
    fn without_link_by_email_a_same_email_login_gets_its_own_account() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut local = UserRecord::new("alice.local".into(), 1);
        local.email = Some("alice@example.com".into());
        store.write(|tx| tx.put_user(&local)).unwrap();
        let c = connection(AttributeSync::Override, false);
        let p = run(&store, &c, &claims("s1", "alice@example.com", true));
        let Provisioned::Allowed { identity, action } = p else {
            panic!()
        };
        assert_eq!(action, JitAction::Created);
        assert_ne!(identity.user_id.as_deref(), Some(local.id.as_str()));
    }

    /// A connection with another id (a second IdP).
    fn other_connection(id: &str, link_by_email: bool, trust_email: bool) -> Connection {
        let mut c = connection(AttributeSync::Override, link_by_email);
        c.id = id.into();
        c.trust_email = trust_email;
        c
    }

    fn user_id(p: &Provisioned) -> String {
        match p {
            Provisioned::Allowed { identity, .. } => identity.user_id.clone().unwrap(),
            Provisioned::Refused(r) => panic!("refused: {r:?}"),
        }
    }

    /// Pre-account-takeover, every spelling: an account made through any connection with
    /// an email its IdP did not verify (any case, spaces around it, with or without
    /// `link_by_email` on the attacker's side) never receives the real owner's later
    /// verified sign-in; the owner gets an account of their own, which holds the email.
    #[test]
    fn an_unverified_email_cannot_pre_empt_its_owner() {
        for spelling in [
            "victim@example.com",
            "Victim@Example.COM",
            " victim@example.com ",
            "VICTIM@EXAMPLE.COM",
        ] {
            for attacker_links in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let store = Store::open(dir.path()).unwrap();
                let social = other_connection("social", attacker_links, false);
                let corp = other_connection("corp", true, false);
                let squat = run(&store, &social, &claims("attacker", spelling, false));
                let attacker = user_id(&squat);
                // The attacker signs in again: still no index entry.
                run(&store, &social, &claims("attacker", spelling, false));
                let owner = run(&store, &corp, &claims("victim", "victim@example.com", true));
                assert_eq!(action(&owner), JitAction::Created, "{spelling}");
                let owner = user_id(&owner);
                assert_ne!(owner, attacker, "{spelling}");
                let holder = store.read(|tx| tx.user_by_email("victim@example.com"));
                assert_eq!(holder.unwrap().unwrap().id, owner, "{spelling}");
                // A later sign-in of the attacker, even claiming verification now, changes
                // nothing for the owner.
                run(&store, &social, &claims("attacker", spelling, true));
                let again = run(&store, &corp, &claims("victim", "victim@example.com", true));
                assert_eq!(user_id(&again), owner);
                let attacker_record = store.read(|tx| tx.user(&attacker)).unwrap().unwrap();
                assert_eq!(attacker_record.links.len(), 1, "nothing was linked to it");
            }
        }
    }

    /// `trust_email` makes a connection's emails count as verified: stored so, indexed, and
    /// linked on.
    #[test]
    fn a_trust_email_connection_stores_its_emails_as_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let trusted = other_connection("workforce", true, true);
        let first = run(&store, &trusted, &claims("w1", "a@example.com", false));
        let id = user_id(&first);
        let record = store.read(|tx| tx.user(&id)).unwrap().unwrap();
        assert!(record.email_verified);
        let corp = other_connection("corp", true, false);
        let linked = run(&store, &corp, &claims("c1", "a@example.com", true));
        assert_eq!(action(&linked), JitAction::Linked);
        assert_eq!(user_id(&linked), id);
    }

    #[test]
    fn a_disabled_account_is_refused_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let c = connection(AttributeSync::Override, false);
        let Provisioned::Allowed { identity, .. } =
            run(&store, &c, &claims("s1", "a@example.com", true))
        else {
            panic!()
        };
        let id = identity.user_id.unwrap();
        edit(&store, &id, |u| u.disabled = true);
        let p = run(&store, &c, &claims("s1", "a@example.com", true));
        assert!(matches!(
            p,
            Provisioned::Refused(JitRefusal::Disabled { .. })
        ));
        let log = store.read(|tx| tx.audit(Some(&id))).unwrap();
        assert_eq!(log.last().unwrap().reason.as_deref(), Some("disabled"));
    }

    /// IdP usernames that are `admin` with a control character, a bidi control or an edge
    /// space never become `admin` (nor `admin-2`), and the header of each account differs
    /// from every other account's.
    #[test]
    fn hostile_usernames_never_become_another_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let c = connection(AttributeSync::Override, false);
        let hostile = [
            "adm\u{1}in",
            " admin",
            "admin ",
            "admin\t",
            "ad\u{202E}nimda",
            "\u{2066}admin\u{2069}",
            "admin\u{200E}",
            "adm\u{7f}in",
            "adm\u{85}in",
            "admin\r\n",
        ];
        let mut names = Vec::new();
        for (i, name) in hostile.iter().enumerate() {
            let mut id = claims(&format!("s{i}"), &format!("u{i}@x.org"), true);
            id.username = Some((*name).to_string());
            let Provisioned::Allowed { identity, .. } = run(&store, &c, &id) else {
                panic!("refused")
            };
            let username = identity.username.unwrap();
            assert!(is_clean_username(&username), "{username:?}");
            assert!(
                !username.starts_with("admin"),
                "{name:?} became {username:?}"
            );
            names.push(username);
        }
        let mut id = claims("real", "admin@x.org", true);
        id.username = Some("admin".into());
        let Provisioned::Allowed { identity, .. } = run(&store, &c, &id) else {
            panic!()
        };
        assert_eq!(identity.username.as_deref(), Some("admin"));
        names.push("admin".into());
        let headers: std::collections::HashSet<_> =
            names.iter().map(|n| safe_value(n).unwrap()).collect();
        assert_eq!(headers.len(), names.len());
    }

    /// With no clean username or email, an unclean subject is percent-encoded, not stripped.
    #[test]
    fn an_unclean_subject_is_encoded() {
        let mut id = Identity::new("corp", " ro\u{0}ot");
        id.username = Some("\u{202E}x".into());
        assert_eq!(base_username(&id), "%20ro%00ot");
    }

    /// The first logins of one new user, arriving at once and group-committed together (or
    /// in consecutive batches), make exactly one account: every login gets the same user id,
    /// one of them `Created` and the rest `Unchanged`.
    #[test]
    fn parallel_first_logins_of_one_user_make_exactly_one_account() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let group = Arc::new(crate::store::writer::GroupCommit::start(store.clone(), "t").unwrap());
        let c = connection(AttributeSync::Override, false);
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (group, c, barrier) = (group.clone(), c.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let who = claims("sub-1", "a@example.com", true);
                    barrier.wait();
                    group
                        .write(move |tx| provision(tx, &c, &who, 100, "req"))
                        .unwrap()
                })
            })
            .collect();
        let outcomes: Vec<Provisioned> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let ids: std::collections::HashSet<_> = outcomes
            .iter()
            .map(|p| match p {
                Provisioned::Allowed { identity, .. } => identity.user_id.clone().unwrap(),
                Provisioned::Refused(r) => panic!("refused: {r:?}"),
            })
            .collect();
        assert_eq!(ids.len(), 1, "{ids:?}");
        let created = outcomes
            .iter()
            .filter(|p| action(p) == JitAction::Created)
            .count();
        assert_eq!(created, 1);
        assert_eq!(store.read(|tx| tx.user_count()).unwrap(), 1);
    }
}
