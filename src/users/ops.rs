//! The account operations of `gatehouse users ...`, one type for both ways they run: on the
//! store file directly (no server running), or inside the server through the admin API (the
//! server holds the store's lock). Each change is one write transaction with its audit entry;
//! what it means for live sessions is returned as an [`Effect`] for the caller to apply.

use serde::{Deserialize, Serialize};

use crate::store::audit::{AuditAction, AuditActor, AuditEntry};
use crate::store::users::{normalize_email, UserRecord};
use crate::store::{ReadTx, Store, StoreError, Tx};

/// One operation, as the CLI parses it and as the admin API receives it (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum UserOp {
    List,
    /// By id, email or username (every `user` below is found the same way).
    Show {
        user: String,
    },
    /// A local account with no linked identity yet (one to link by email later).
    Add {
        username: String,
        email: Option<String>,
    },
    Disable {
        user: String,
    },
    Enable {
        user: String,
    },
    /// Removes the account, its links and its sessions.
    Delete {
        user: String,
    },
    RoleAdd {
        user: String,
        role: String,
    },
    RoleRemove {
        user: String,
        role: String,
    },
    AttrSet {
        user: String,
        name: String,
        value: String,
    },
    AttrUnset {
        user: String,
        name: String,
    },
    Export,
    Audit {
        user: Option<String>,
    },
    /// The account's second factor: enrolled, recovery codes left, locked (audited).
    MfaStatus {
        user: String,
    },
    /// Removes the account's second factor: it enrols again at its next login (audited).
    MfaReset {
        user: String,
    },
    /// Deletes accounts with no login (or, never signed in, no creation) for `inactive_secs`.
    Prune {
        inactive_secs: u64,
        dry_run: bool,
    },
}

/// What an operation answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum OpOutput {
    Users(Vec<UserRecord>),
    User(Box<UserRecord>),
    Audit(Vec<AuditEntry>),
    Pruned {
        users: Vec<UserRecord>,
        dry_run: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "error", content = "message", rename_all = "snake_case")]
pub enum OpError {
    #[error("no user `{0}`")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Store(String),
    #[error("{0}")]
    Remote(String),
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        OpError::Store(e.to_string())
    }
}

/// What a change means for the sessions of the accounts it touched.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    None,
    /// End every session of these accounts (disabled, deleted, pruned).
    EndSessions(Vec<String>),
    /// Give the account's sessions its new profile (roles, attributes).
    Refresh(Box<UserRecord>),
}

fn find(tx: &ReadTx, key: &str) -> Result<UserRecord, OpError> {
    tx.find_user(key)?
        .ok_or_else(|| OpError::NotFound(key.to_string()))
}

fn audit(
    tx: &mut Tx,
    action: AuditAction,
    user: &UserRecord,
    changed: &[&str],
    now: u64,
) -> Result<(), OpError> {
    let mut entry = AuditEntry::new(AuditActor::Admin, action, now);
    entry.user_id = Some(user.id.clone());
    entry.changed = changed.iter().map(|c| c.to_string()).collect();
    tx.append_audit(&entry)?;
    Ok(())
}

/// Runs `op` against `store` at time `now` (unix seconds). Second-factor secrets never leave:
/// the accounts in the output have them masked.
pub fn execute(store: &Store, op: &UserOp, now: u64) -> Result<(OpOutput, Effect), OpError> {
    run(store, op, now).map(|(out, effect)| (mask(out), effect))
}

/// The sealed TOTP secret and the recovery-code hashes, replaced by markers.
fn mask(output: OpOutput) -> OpOutput {
    let hide = |mut u: UserRecord| {
        u.mfa.sealed_secret = u.mfa.sealed_secret.map(|_| "[sealed]".to_string());
        u.mfa.recovery_hashes = vec!["[hash]".to_string(); u.mfa.recovery_hashes.len()];
        u
    };
    match output {
        OpOutput::Users(users) => OpOutput::Users(users.into_iter().map(hide).collect()),
        OpOutput::User(user) => OpOutput::User(Box::new(hide(*user))),
        OpOutput::Pruned { users, dry_run } => OpOutput::Pruned {
            users: users.into_iter().map(hide).collect(),
            dry_run,
        },
        audit @ OpOutput::Audit(_) => audit,
    }
}

fn run(store: &Store, op: &UserOp, now: u64) -> Result<(OpOutput, Effect), OpError> {
    match op {
        UserOp::List | UserOp::Export => {
            let users = store.read(|tx| tx.users())?;
            Ok((OpOutput::Users(users), Effect::None))
        }
        UserOp::Show { user } => {
            let found = store.read(|tx| Ok(find(tx, user)))??;
            Ok((OpOutput::User(Box::new(found)), Effect::None))
        }
        UserOp::Audit { user } => {
            let entries = store.read(|tx| {
                let id = match user {
                    Some(key) => match tx.find_user(key)? {
                        Some(u) => Some(u.id),
                        // A deleted account's entries are still in the log under its id.
                        None => Some(key.clone()),
                    },
                    None => None,
                };
                tx.audit(id.as_deref())
            })?;
            Ok((OpOutput::Audit(entries), Effect::None))
        }
        UserOp::Add { username, email } => add(store, username, email.as_deref(), now),
        UserOp::MfaStatus { user } | UserOp::MfaReset { user } => {
            let reset = matches!(op, UserOp::MfaReset { .. });
            let found = store.write(|tx| {
                let Some(mut found) = tx.find_user(user)? else {
                    return Ok(Err(OpError::NotFound(user.clone())));
                };
                if reset {
                    found.mfa = Default::default();
                    found.updated_at = now;
                    tx.put_user(&found)?;
                }
                let action = if reset {
                    AuditAction::MfaReset
                } else {
                    AuditAction::MfaStatusViewed
                };
                audit(tx, action, &found, if reset { &["mfa"] } else { &[] }, now)
                    .map_err(to_store)?;
                Ok(Ok(found))
            })??;
            Ok((OpOutput::User(Box::new(found)), Effect::None))
        }
        UserOp::Delete { user } => {
            let deleted = store.write(|tx| {
                let Some(found) = tx.find_user(user)? else {
                    return Ok(Err(OpError::NotFound(user.clone())));
                };
                tx.delete_user(&found.id)?;
                audit(tx, AuditAction::Deleted, &found, &[], now).map_err(to_store)?;
                Ok(Ok(found))
            })??;
            let effect = Effect::EndSessions(vec![deleted.id.clone()]);
            Ok((OpOutput::User(Box::new(deleted)), effect))
        }
        UserOp::Prune {
            inactive_secs,
            dry_run,
        } => prune(store, *inactive_secs, *dry_run, now),
        change => modify(store, change, now),
    }
}

fn to_store(e: OpError) -> StoreError {
    StoreError::Db(e.to_string())
}

fn add(
    store: &Store,
    username: &str,
    email: Option<&str>,
    now: u64,
) -> Result<(OpOutput, Effect), OpError> {
    let username = username.trim();
    if username.is_empty() {
        return Err(OpError::Invalid("the username must not be empty".into()));
    }
    if !crate::identity::headers::is_clean_username(username) {
        return Err(OpError::Invalid(
            "the username must not hold control or bidi characters (and at most 256 bytes)".into(),
        ));
    }
    if let Some(email) = email {
        if crate::identity::access::email_domain(email).is_none() {
            return Err(OpError::Invalid(format!(
                "`{email}` is not an email address"
            )));
        }
    }
    let created = store.write(|tx| {
        if tx.username_taken(username, "")? {
            return Ok(Err(OpError::Invalid(format!(
                "the username `{username}` is taken"
            ))));
        }
        if let Some(email) = email {
            if tx.user_by_email(email)?.is_some() {
                return Ok(Err(OpError::Invalid(format!(
                    "an account already has the email `{email}`"
                ))));
            }
        }
        let mut user = UserRecord::new(username.to_string(), now);
        user.email = email.map(normalize_email);
        user.email_verified = email.is_some();
        tx.put_user(&user)?;
        audit(tx, AuditAction::Created, &user, &["username", "email"], now).map_err(to_store)?;
        Ok(Ok(user))
    })??;
    Ok((OpOutput::User(Box::new(created)), Effect::None))
}

/// Disable, enable, roles and attributes: read, change, write, audit, in one transaction.
fn modify(store: &Store, op: &UserOp, now: u64) -> Result<(OpOutput, Effect), OpError> {
    let key = match op {
        UserOp::Disable { user }
        | UserOp::Enable { user }
        | UserOp::RoleAdd { user, .. }
        | UserOp::RoleRemove { user, .. }
        | UserOp::AttrSet { user, .. }
        | UserOp::AttrUnset { user, .. } => user,
        _ => return Err(OpError::Invalid("not a change".into())),
    };
    let outcome = store.write(|tx| {
        let Some(mut user) = tx.find_user(key)? else {
            return Ok(Err(OpError::NotFound(key.clone())));
        };
        let (action, field, changed) = match op {
            UserOp::Disable { .. } => (
                AuditAction::Disabled,
                "disabled",
                !std::mem::replace(&mut user.disabled, true),
            ),
            UserOp::Enable { .. } => (
                AuditAction::Enabled,
                "disabled",
                std::mem::replace(&mut user.disabled, false),
            ),
            UserOp::RoleAdd { role, .. } => {
                let role = role.trim();
                if role.is_empty() || role.contains(',') {
                    return Ok(Err(OpError::Invalid(format!(
                        "`{role}` is not a role name"
                    ))));
                }
                let new = !user.roles.iter().any(|r| r == role);
                if new {
                    user.roles.push(role.to_string());
                    user.roles.sort();
                }
                (AuditAction::RoleAdded, "roles", new)
            }
            UserOp::RoleRemove { role, .. } => {
                let before = user.roles.len();
                user.roles.retain(|r| r != role);
                (
                    AuditAction::RoleRemoved,
                    "roles",
                    user.roles.len() != before,
                )
            }
            UserOp::AttrSet { name, value, .. } => {
                let old = user.local_attributes.insert(name.clone(), value.clone());
                (
                    AuditAction::AttributeSet,
                    "local_attributes",
                    old.as_ref() != Some(value),
                )
            }
            UserOp::AttrUnset { name, .. } => (
                AuditAction::AttributeUnset,
                "local_attributes",
                user.local_attributes.remove(name).is_some(),
            ),
            _ => return Ok(Err(OpError::Invalid("not a change".into()))),
        };
        if changed {
            user.updated_at = now;
            tx.put_user(&user)?;
            let field = match op {
                UserOp::AttrSet { name, .. } | UserOp::AttrUnset { name, .. } => {
                    format!("{field}.{name}")
                }
                _ => field.to_string(),
            };
            audit(tx, action, &user, &[field.as_str()], now).map_err(to_store)?;
        }
        Ok(Ok(user))
    })??;
    let effect = match op {
        UserOp::Disable { .. } => Effect::EndSessions(vec![outcome.id.clone()]),
        UserOp::Enable { .. } => Effect::None,
        _ => Effect::Refresh(Box::new(outcome.clone())),
    };
    Ok((OpOutput::User(Box::new(outcome)), effect))
}

fn prune(
    store: &Store,
    inactive_secs: u64,
    dry_run: bool,
    now: u64,
) -> Result<(OpOutput, Effect), OpError> {
    let cutoff = now.saturating_sub(inactive_secs);
    let stale = |u: &UserRecord| u.last_login_at.unwrap_or(u.created_at) < cutoff;
    let users: Vec<UserRecord> = if dry_run {
        store
            .read(|tx| tx.users())?
            .into_iter()
            .filter(stale)
            .collect()
    } else {
        store.write(|tx| {
            let mut gone = Vec::new();
            for user in tx.users()?.into_iter().filter(stale) {
                tx.delete_user(&user.id)?;
                let mut entry = AuditEntry::new(AuditActor::Admin, AuditAction::Deleted, now);
                entry.user_id = Some(user.id.clone());
                entry.reason = Some("pruned: inactive".into());
                tx.append_audit(&entry)?;
                gone.push(user);
            }
            Ok(gone)
        })?
    };
    let effect = if dry_run || users.is_empty() {
        Effect::None
    } else {
        Effect::EndSessions(users.iter().map(|u| u.id.clone()).collect())
    };
    Ok((OpOutput::Pruned { users, dry_run }, effect))
}

/// Applies an effect to the sessions in the store file, for when no server holds it: ended
/// sessions are deleted, refreshed ones get the new profile (the next server start loads it).
pub fn apply_offline(store: &Store, effect: &Effect) -> Result<usize, StoreError> {
    let sessions = store.sessions()?;
    match effect {
        Effect::None => Ok(0),
        Effect::EndSessions(ids) => {
            let sids: Vec<String> = sessions
                .into_iter()
                .filter(|s| {
                    s.identity
                        .user_id
                        .as_ref()
                        .is_some_and(|id| ids.contains(id))
                })
                .map(|s| s.sid)
                .collect();
            store.delete_sessions(&sids)
        }
        Effect::Refresh(user) => store.write(|tx| {
            let mut n = 0;
            for s in &sessions {
                let mut s = s.clone();
                if s.identity.user_id.as_deref() == Some(user.id.as_str()) {
                    s.identity = crate::identity::jit::profile_identity(user, &s.identity);
                    tx.put_session(&s)?;
                    n += 1;
                }
            }
            Ok(n)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn add_user(store: &Store, name: &str, email: &str, now: u64) -> UserRecord {
        let op = UserOp::Add {
            username: name.into(),
            email: Some(email.into()),
        };
        match execute(store, &op, now).unwrap().0 {
            OpOutput::User(u) => *u,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn disable_ends_sessions_and_is_audited_once() {
        let (_d, store) = store();
        let u = add_user(&store, "alice", "alice@example.com", 1);
        let op = UserOp::Disable {
            user: "ALICE@example.com".into(),
        };
        let (out, effect) = execute(&store, &op, 2).unwrap();
        assert_eq!(effect, Effect::EndSessions(vec![u.id.clone()]));
        let OpOutput::User(disabled) = out else {
            panic!()
        };
        assert!(disabled.disabled);
        execute(&store, &op, 3).unwrap();
        let log = store.read(|tx| tx.audit(Some(&u.id))).unwrap();
        let actions: Vec<_> = log.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["created", "disabled"], "a no-op is not audited");
    }

    #[test]
    fn roles_are_added_once_and_removed() {
        let (_d, store) = store();
        let u = add_user(&store, "alice", "alice@example.com", 1);
        for _ in 0..2 {
            execute(
                &store,
                &UserOp::RoleAdd {
                    user: u.id.clone(),
                    role: "editor".into(),
                },
                2,
            )
            .unwrap();
        }
        let (out, effect) = execute(&store, &UserOp::Show { user: u.id.clone() }, 3).unwrap();
        assert_eq!(effect, Effect::None);
        let OpOutput::User(shown) = out else { panic!() };
        assert_eq!(shown.roles, ["editor"]);
        let (_, effect) = execute(
            &store,
            &UserOp::RoleRemove {
                user: u.id.clone(),
                role: "editor".into(),
            },
            4,
        )
        .unwrap();
        let Effect::Refresh(user) = effect else {
            panic!()
        };
        assert!(user.roles.is_empty());
    }

    #[test]
    fn an_unknown_user_is_not_found_and_a_bad_role_is_invalid() {
        let (_d, store) = store();
        let err = execute(
            &store,
            &UserOp::Disable {
                user: "nobody".into(),
            },
            1,
        )
        .unwrap_err();
        assert_eq!(err, OpError::NotFound("nobody".into()));
        let u = add_user(&store, "alice", "alice@example.com", 1);
        let err = execute(
            &store,
            &UserOp::RoleAdd {
                user: u.id,
                role: "a,b".into(),
            },
            1,
        )
        .unwrap_err();
        assert!(matches!(err, OpError::Invalid(_)));
        let err = execute(
            &store,
            &UserOp::Add {
                username: "ALICE".into(),
                email: None,
            },
            1,
        )
        .unwrap_err();
        assert!(
            matches!(err, OpError::Invalid(_)),
            "usernames are unique in any case"
        );
        for hostile in ["adm\u{1}in", "admin\u{202E}", "\u{2066}root"] {
            let err = execute(
                &store,
                &UserOp::Add {
                    username: hostile.into(),
                    email: None,
                },
                1,
            )
            .unwrap_err();
            assert!(matches!(err, OpError::Invalid(_)), "{hostile:?} accepted");
        }
    }

    #[test]
    fn prune_dry_run_deletes_nothing_and_prune_deletes_the_inactive() {
        let (_d, store) = store();
        let old = add_user(&store, "old", "old@example.com", 100);
        let _new = add_user(&store, "new", "new@example.com", 10_000);
        let op = |dry_run| UserOp::Prune {
            inactive_secs: 5_000,
            dry_run,
        };
        let (OpOutput::Pruned { users, .. }, Effect::None) =
            execute(&store, &op(true), 10_001).unwrap()
        else {
            panic!()
        };
        assert_eq!(users.len(), 1);
        assert_eq!(store.read(|tx| tx.user_count()).unwrap(), 2);
        let (_, effect) = execute(&store, &op(false), 10_001).unwrap();
        assert_eq!(effect, Effect::EndSessions(vec![old.id]));
        assert_eq!(store.read(|tx| tx.user_count()).unwrap(), 1);
    }

    #[test]
    fn mfa_reset_clears_the_factor_and_outputs_never_show_the_secret() {
        let (_d, store) = store();
        let u = add_user(&store, "alice", "alice@example.com", 1);
        store
            .write(|tx| {
                let mut user = tx.user(&u.id)?.unwrap();
                user.mfa.sealed_secret = Some("sealed-secret-bytes".into());
                user.mfa.recovery_hashes = vec!["v1$salt$hash".into()];
                tx.put_user(&user)
            })
            .unwrap();
        let (out, _) = execute(&store, &UserOp::MfaStatus { user: u.id.clone() }, 2).unwrap();
        let text = serde_json::to_string(&out).unwrap();
        assert!(
            !text.contains("sealed-secret-bytes") && !text.contains("v1$salt"),
            "{text}"
        );
        let OpOutput::User(shown) = out else { panic!() };
        assert!(shown.mfa.is_enrolled());
        let (out, _) = execute(&store, &UserOp::MfaReset { user: u.id.clone() }, 3).unwrap();
        let OpOutput::User(reset) = out else { panic!() };
        assert!(!reset.mfa.is_enrolled());
        let log = store.read(|tx| tx.audit(Some(&u.id))).unwrap();
        let actions: Vec<_> = log.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["created", "mfa_status_viewed", "mfa_reset"]);
    }

    #[test]
    fn ops_travel_as_json_for_the_admin_api() {
        let op = UserOp::RoleAdd {
            user: "u".into(),
            role: "r".into(),
        };
        let text = serde_json::to_string(&op).unwrap();
        assert_eq!(text, r#"{"op":"role_add","user":"u","role":"r"}"#);
        assert_eq!(serde_json::from_str::<UserOp>(&text).unwrap(), op);
    }
}
