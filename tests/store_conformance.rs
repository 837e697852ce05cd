//! One conformance suite for both store engines: every case runs against the embedded redb
//! file and against a fresh PostgreSQL database (a real server: see tests/common/postgres.rs;
//! under CI=true a missing server fails these tests). The engines must be indistinguishable
//! to everything above the store.

#[path = "common/postgres.rs"]
mod pg;

use std::sync::Arc;

use gatehouse::store::audit::{AuditAction, AuditActor, AuditEntry};
use gatehouse::store::postgres::PgOptions;
use gatehouse::store::raw::Index;
use gatehouse::store::sessions::{Identity, SessionRecord, Tokens, SESSION_RECORD_VERSION};
use gatehouse::store::users::{Link, UserRecord};
use gatehouse::store::{Store, StoreError};

/// A store of one engine, with whatever keeps it alive (the temp dir).
struct Opened {
    store: Arc<Store>,
    _dir: Option<tempfile::TempDir>,
    url: Option<String>,
}

fn redb() -> Opened {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    Opened {
        store: Arc::new(store),
        _dir: Some(dir),
        url: None,
    }
}

fn pg_options(url: &str) -> PgOptions {
    PgOptions {
        url: url.to_string(),
        pool_size: 8,
        auto_migrate: true,
        acquire_timeout: std::time::Duration::from_secs(10),
        offline_grace: std::time::Duration::from_secs(30),
    }
}

fn postgres() -> Option<Opened> {
    let url = pg::fresh_database()?;
    let store = Store::open_postgres(&pg_options(&url)).unwrap();
    Some(Opened {
        store: Arc::new(store),
        _dir: None,
        url: Some(url),
    })
}

/// Each case, once per engine.
macro_rules! conformance {
    ($(#[doc = $doc:literal])* fn $name:ident($opened:ident) $body:block) => {
        mod $name {
            use super::*;
            $(#[doc = $doc])*
            fn case($opened: &Opened) $body

            #[test]
            fn on_redb() {
                case(&redb());
            }

            #[test]
            fn on_postgres() {
                match postgres() {
                    Some(opened) => case(&opened),
                    None => eprintln!("skipping: no PostgreSQL (see tests/common/postgres.rs)"),
                }
            }
        }
    };
}

fn user(name: &str, email: Option<&str>) -> UserRecord {
    let mut u = UserRecord::new(name.to_string(), 100);
    u.email = email.map(str::to_string);
    u.email_verified = email.is_some();
    u
}

fn linked(store: &Store, name: &str, connection: &str, subject: &str) -> UserRecord {
    let mut u = user(name, Some(&format!("{name}@example.com")));
    let link = Link {
        connection: connection.into(),
        subject: subject.into(),
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

fn session(sid: &str, user_id: Option<&str>) -> SessionRecord {
    SessionRecord {
        version: SESSION_RECORD_VERSION,
        sid: sid.to_string(),
        identity: Identity {
            connection: "corp".into(),
            subject: format!("sub-{sid}"),
            username: Some("alice".into()),
            email: None,
            email_verified: false,
            name: None,
            groups: vec!["a,b".into()],
            attributes: Default::default(),
            user_id: user_id.map(str::to_string),
            roles: vec![],
        },
        idp_sid: Some("idp-1".into()),
        created_at: 1,
        expires_at: 2_000_000_000,
        tokens: Tokens::default(),
        mfa_at: None,
        last_seen: None,
    }
}

conformance! {
    /// An account is found by id, by its link, by email and by username, in any case.
    fn accounts_are_found_by_id_link_email_and_username(o) {
        let u = linked(&o.store, "Alice", "corp", "s-1");
        o.store
            .read(|tx| {
                assert_eq!(tx.user(&u.id)?.unwrap().username, "Alice");
                assert_eq!(tx.user_by_link("corp", "s-1")?.unwrap().id, u.id);
                assert!(tx.user_by_link("corp", "s-2")?.is_none());
                assert!(tx.user_by_link("other", "s-1")?.is_none());
                assert_eq!(tx.user_by_email("ALICE@example.com ")?.unwrap().id, u.id);
                assert_eq!(tx.user_by_username("alice")?.unwrap().id, u.id);
                assert_eq!(tx.find_user("alice@example.com")?.unwrap().id, u.id);
                assert_eq!(tx.user_count()?, 1);
                assert_eq!(tx.index_sizes()?, (1, 1));
                Ok(())
            })
            .unwrap();
    }
}

conformance! {
    /// A changed email or username releases the old index entry; delete removes the account
    /// with its links and entries.
    fn changes_release_old_entries_and_delete_removes_everything(o) {
        let mut u = linked(&o.store, "bob", "corp", "s-b");
        u.email = Some("new@example.com".into());
        u.username = "robert".into();
        o.store.write(|tx| tx.put_user(&u)).unwrap();
        o.store
            .read(|tx| {
                assert!(tx.user_by_email("bob@example.com")?.is_none());
                assert!(tx.user_by_username("bob")?.is_none());
                assert_eq!(tx.user_by_email("new@example.com")?.unwrap().id, u.id);
                assert_eq!(tx.user_by_username("ROBERT")?.unwrap().id, u.id);
                Ok(())
            })
            .unwrap();
        let gone = o.store.write(|tx| tx.delete_user(&u.id)).unwrap();
        assert_eq!(gone.unwrap().id, u.id);
        o.store
            .read(|tx| {
                assert_eq!(tx.index_sizes()?, (0, 0));
                assert_eq!(tx.user_count()?, 0);
                assert!(tx.user_by_username("robert")?.is_none());
                Ok(())
            })
            .unwrap();
    }
}

conformance! {
    /// Only verified emails are indexed, and a verified holder keeps its entry against a
    /// later account with the same address.
    fn only_verified_emails_are_indexed_and_never_taken_over(o) {
        let mut squatter = user("squatter", Some("victim@example.com"));
        squatter.email_verified = false;
        o.store.write(|tx| tx.put_user(&squatter)).unwrap();
        assert!(o.store.read(|tx| tx.user_by_email("victim@example.com")).unwrap().is_none());
        let owner = user("owner", Some("Victim@Example.com"));
        o.store.write(|tx| tx.put_user(&owner)).unwrap();
        squatter.email_verified = true;
        o.store.write(|tx| tx.put_user(&squatter)).unwrap();
        let holder = o.store.read(|tx| tx.user_by_email("victim@example.com")).unwrap();
        assert_eq!(holder.unwrap().id, owner.id);
    }
}

conformance! {
    /// A transaction that fails leaves nothing behind.
    fn a_failed_transaction_leaves_nothing_behind(o) {
        let u = user("carol", Some("carol@example.com"));
        let outcome: Result<(), StoreError> = o.store.write(|tx| {
            tx.put_user(&u)?;
            Err(StoreError::Db("the caller changed its mind".into()))
        });
        assert!(outcome.is_err());
        o.store
            .read(|tx| {
                assert_eq!(tx.user_count()?, 0);
                assert!(tx.user_by_username("carol")?.is_none());
                assert_eq!(tx.index_sizes()?, (0, 0));
                Ok(())
            })
            .unwrap();
    }
}

conformance! {
    /// Session records are written, read back whole, replaced, and deleted with a count.
    fn sessions_round_trip_and_deletes_are_counted(o) {
        o.store.put_session(&session("s1", Some("u1"))).unwrap();
        o.store.put_session(&session("s2", None)).unwrap();
        let mut changed = session("s1", Some("u1"));
        changed.mfa_at = Some(77);
        o.store.put_session(&changed).unwrap();
        let all = o.store.sessions().unwrap();
        assert_eq!(all.len(), 2);
        let one = o.store.read(|tx| tx.session("s1")).unwrap().unwrap();
        assert_eq!(one.mfa_at, Some(77));
        assert_eq!(one.identity.groups, vec!["a,b".to_string()]);
        assert!(o.store.read(|tx| tx.session("nope")).unwrap().is_none());
        let removed = o
            .store
            .delete_sessions(&["s1".into(), "s1".into(), "missing".into()])
            .unwrap();
        assert_eq!(removed, 1);
        assert_eq!(o.store.sessions().unwrap().len(), 1);
    }
}

conformance! {
    /// Audit entries are numbered in order and can be read for one user.
    fn audit_entries_are_numbered_in_order_and_filtered_by_user(o) {
        let mut a = AuditEntry::new(AuditActor::Login, AuditAction::Created, 10);
        a.user_id = Some("u1".into());
        let b = AuditEntry::new(AuditActor::Admin, AuditAction::Disabled, 11);
        o.store
            .write(|tx| {
                tx.append_audit(&a)?;
                tx.append_audit(&b)
            })
            .unwrap();
        o.store
            .write(|tx| tx.append_audit(&AuditEntry::new(AuditActor::Admin, AuditAction::Enabled, 12)))
            .unwrap();
        let all = o.store.read(|tx| tx.audit(None)).unwrap();
        let numbers: Vec<u64> = all.iter().map(|e| e.seq).collect();
        assert_eq!(numbers.len(), 3);
        assert!(numbers[0] > 0 && numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
        assert_eq!(
            all.iter().map(|e| e.action).collect::<Vec<_>>(),
            [AuditAction::Created, AuditAction::Disabled, AuditAction::Enabled]
        );
        let mine = o.store.read(|tx| tx.audit(Some("u1"))).unwrap();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].seq, numbers[0]);
    }
}

conformance! {
    /// Many first logins of one identity at once (threads standing in for replicas) make
    /// exactly one account: the link is claimed, not read and then written.
    fn parallel_first_logins_of_one_identity_make_one_account(o) {
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let store = o.store.clone();
                std::thread::spawn(move || {
                    store
                        .write(|tx| {
                            if let Some(existing) = tx.user_by_link("corp", "same-sub")? {
                                return Ok(existing.id);
                            }
                            let mut u = user(&format!("dave{i}"), None);
                            let link = Link {
                                connection: "corp".into(),
                                subject: "same-sub".into(),
                            };
                            u.links.push(link.clone());
                            tx.put_user(&u)?;
                            tx.link(&link, &u.id)?;
                            Ok(u.id)
                        })
                        .unwrap()
                })
            })
            .collect();
        let ids: std::collections::HashSet<String> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(ids.len(), 1, "every login ends on the same account");
        assert_eq!(o.store.read(|tx| tx.user_count()).unwrap(), 1);
    }
}

conformance! {
    /// Two accounts wanting one username at once: one gets it, the other's transaction
    /// fails or picks another name; the index never names two accounts.
    fn a_username_is_never_given_to_two_accounts(o) {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let store = o.store.clone();
                std::thread::spawn(move || {
                    store.write(|tx| {
                        let name = if tx.username_taken("erin", "")? { "erin-2" } else { "erin" };
                        let u = user(name, None);
                        tx.put_user(&u)?;
                        Ok(u.id)
                    })
                })
            })
            .collect();
        for t in threads {
            let _ = t.join().unwrap();
        }
        let users = o.store.read(|tx| tx.users()).unwrap();
        let erins = users.iter().filter(|u| u.username == "erin").count();
        assert_eq!(erins, 1, "{users:?}");
        let holder = o.store.read(|tx| tx.user_by_username("erin")).unwrap().unwrap();
        assert_eq!(holder.username, "erin");
    }
}

conformance! {
    /// Read-modify-write of one account from many threads loses no change (a failure
    /// counter or a TOTP step cannot be raced past).
    fn concurrent_changes_to_one_account_are_not_lost(o) {
        let u = user("frank", None);
        o.store.write(|tx| tx.put_user(&u)).unwrap();
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let (store, id) = (o.store.clone(), u.id.clone());
                std::thread::spawn(move || {
                    store
                        .write(|tx| {
                            let mut me = tx.user(&id)?.unwrap();
                            let n: u32 = me
                                .local_attributes
                                .get("n")
                                .map_or(0, |v| v.parse().unwrap());
                            me.local_attributes.insert("n".into(), (n + 1).to_string());
                            tx.put_user(&me)
                        })
                        .unwrap()
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let me = o.store.read(|tx| tx.user(&u.id)).unwrap().unwrap();
        assert_eq!(me.local_attributes.get("n").map(String::as_str), Some("12"));
    }
}

/// A database migrated by a newer Gatehouse is refused at open, naming both versions.
#[test]
fn a_postgres_schema_newer_than_this_build_is_refused() {
    let opened = or_skip!(postgres());
    let url = opened.url.clone().unwrap();
    drop(opened);
    pg::psql(
        &url,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99, 'from the future', true, '\\x00', 0)",
    );
    let error = Store::open_postgres(&pg_options(&url))
        .unwrap_err()
        .to_string();
    assert!(error.contains("version 99"), "{error}");
    let known = gatehouse::store::postgres::schema_version();
    assert!(error.contains(&format!("({known})")), "{error}");
}

/// Without auto_migrate an empty database is refused with the command that migrates it.
#[test]
fn a_postgres_database_behind_the_schema_is_refused_without_auto_migrate() {
    let url = or_skip!(pg::fresh_database());
    let mut options = pg_options(&url);
    options.auto_migrate = false;
    let error = Store::open_postgres(&options).unwrap_err().to_string();
    assert!(error.contains("gatehouse store migrate"), "{error}");
    assert!(!error.contains("password"), "{error}");
}

/// Keys replicas share: the first stored wins, every later open reads it.
#[test]
fn the_first_shared_key_stored_wins() {
    let opened = or_skip!(postgres());
    let pg = opened.store.postgres().unwrap();
    let first = pg.shared_key("session", b"first".to_vec()).unwrap();
    let second = pg.shared_key("session", b"second".to_vec()).unwrap();
    assert_eq!(first, b"first");
    assert_eq!(second, b"first");
    let other = Store::open_postgres(&pg_options(opened.url.as_deref().unwrap())).unwrap();
    let third = other
        .postgres()
        .unwrap()
        .shared_key("session", b"third".to_vec())
        .unwrap();
    assert_eq!(third, b"first");
}

conformance! {
    /// The whole-table listings `store copy` reads hold every row: each table's count, every
    /// link and index entry with its account, and the audit log with its sequence numbers;
    /// an entry restored under its own number is followed by appends numbered after it.
    fn whole_tables_are_listed_and_counted_with_audit_numbers_kept(o) {
        let alice = linked(&o.store, "Alice", "corp", "s-a");
        let bob = linked(&o.store, "bob", "other", "s-b");
        let mut unverified = user("carol", Some("carol@example.com"));
        unverified.email_verified = false;
        o.store.write(|tx| tx.put_user(&unverified)).unwrap();
        o.store.put_session(&session("sid-1", Some(&alice.id))).unwrap();
        let mut restored = AuditEntry::new(AuditActor::Admin, AuditAction::Created, 5);
        restored.seq = 7;
        restored.user_id = Some(bob.id.clone());
        o.store
            .write(|tx| {
                tx.put_numbered_audit(&restored)?;
                tx.append_audit(&AuditEntry::new(AuditActor::Login, AuditAction::Disabled, 6))
            })
            .unwrap();
        o.store
            .read(|tx| {
                let counts = tx.counts()?;
                assert_eq!(
                    counts.tables().map(|(_, n)| n),
                    [3, 2, 2, 3, 1, 2],
                    "{counts:?}"
                );
                let mut links = tx.all_links()?;
                links.sort();
                assert_eq!(
                    links,
                    vec![
                        ("corp".into(), "s-a".into(), alice.id.clone()),
                        ("other".into(), "s-b".into(), bob.id.clone()),
                    ]
                );
                assert_eq!(
                    tx.index_entries(Index::Emails)?,
                    vec![
                        ("alice@example.com".into(), alice.id.clone()),
                        ("bob@example.com".into(), bob.id.clone()),
                    ]
                );
                assert_eq!(
                    tx.index_entries(Index::Usernames)?,
                    vec![
                        ("alice".into(), alice.id.clone()),
                        ("bob".into(), bob.id.clone()),
                        ("carol".into(), unverified.id.clone()),
                    ]
                );
                let audit = tx.numbered_audit()?;
                assert_eq!(
                    audit.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
                    [7, 8],
                    "an append numbers after the restored entry"
                );
                let first: AuditEntry = serde_json::from_slice(&audit[0].1).unwrap();
                assert_eq!(first.seq, 7);
                assert_eq!(tx.audit(Some(&bob.id))?.len(), 1);
                Ok(())
            })
            .unwrap();
    }
}

conformance! {
    /// A write transaction reads its own changes before it commits: an account written, its
    /// link and index entries, a renamed account's released entries, an account deleted with
    /// entries this transaction never read before, a session written and deleted, and counts.
    fn a_transaction_reads_its_own_changes_before_it_commits(o) {
        let henry = linked(&o.store, "henry", "corp", "s-h");
        let mut ivy = user("ivy", Some("ivy@example.com"));
        let link = Link { connection: "corp".into(), subject: "s-i".into() };
        ivy.links.push(link.clone());
        o.store
            .write(|tx| {
                tx.put_user(&ivy)?;
                tx.link(&link, &ivy.id)?;
                assert_eq!(tx.user(&ivy.id)?.unwrap().username, "ivy");
                assert_eq!(tx.user_by_link("corp", "s-i")?.unwrap().id, ivy.id);
                assert_eq!(tx.user_by_email("IVY@example.com")?.unwrap().id, ivy.id);
                assert_eq!(tx.user_by_username("Ivy")?.unwrap().id, ivy.id);
                assert_eq!(tx.user_count()?, 2);
                assert_eq!(tx.index_sizes()?, (2, 2));

                let mut renamed = ivy.clone();
                renamed.username = "ivy2".into();
                renamed.email = Some("ivy2@example.com".into());
                tx.put_user(&renamed)?;
                assert!(!tx.username_taken("ivy", "nobody")?);
                assert!(tx.user_by_email("ivy@example.com")?.is_none());
                assert_eq!(tx.user_by_username("IVY2")?.unwrap().id, ivy.id);

                assert_eq!(tx.delete_user(&henry.id)?.unwrap().id, henry.id);
                assert!(tx.user(&henry.id)?.is_none());
                assert!(!tx.username_taken("henry", "nobody")?);
                assert!(tx.user_by_email("henry@example.com")?.is_none());
                assert!(tx.user_by_link("corp", "s-h")?.is_none());
                assert_eq!(tx.user_count()?, 1);
                assert_eq!(tx.index_sizes()?, (1, 1));

                tx.put_session(&session("s9", Some(&ivy.id)))?;
                assert_eq!(tx.delete_sessions(&["s9".into(), "s9".into()])?, 1);
                assert_eq!(tx.delete_sessions(&["s9".into()])?, 0);
                Ok(())
            })
            .unwrap();
        o.store
            .read(|tx| {
                assert_eq!(tx.user_by_username("ivy2")?.unwrap().id, ivy.id);
                assert!(tx.user_by_username("ivy")?.is_none());
                assert!(tx.user(&henry.id)?.is_none());
                assert_eq!(tx.index_sizes()?, (1, 1));
                assert_eq!(tx.user_count()?, 1);
                assert!(tx.session("s9")?.is_none());
                Ok(())
            })
            .unwrap();
    }
}

/// A username claim that another replica's commit beat is found when the transaction
/// commits (PostgreSQL sends a transaction's changes at commit): the commit is a conflict,
/// the transaction runs again, sees the name taken and lands with another one.
#[test]
fn a_claim_lost_to_another_replica_fails_the_commit_and_the_rerun_lands() {
    let o = or_skip!(postgres());
    let runs = std::sync::atomic::AtomicUsize::new(0);
    let gina = user("gina", None);
    let (run, name) = o
        .store
        .write(|tx| {
            let run = runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let name = if tx.username_taken("gina", "")? {
                "gina-2"
            } else {
                "gina"
            };
            if run == 1 {
                // Another replica takes the name between this transaction's read and its
                // commit.
                let (other, gina) = (o.store.clone(), gina.clone());
                std::thread::spawn(move || other.write(|tx| tx.put_user(&gina)))
                    .join()
                    .unwrap()
                    .unwrap();
            }
            tx.put_user(&user(name, None))?;
            Ok((run, name))
        })
        .unwrap();
    assert_eq!((run, name), (2, "gina-2"));
    let holder = o
        .store
        .read(|tx| tx.user_by_username("gina"))
        .unwrap()
        .unwrap();
    assert_eq!(holder.id, gina.id);
    assert_eq!(o.store.read(|tx| tx.user_count()).unwrap(), 2);
}

/// A new user's login (JIT provisioning and the session, one transaction) costs two round
/// trips to PostgreSQL: the look-ups it decides on (link, email, username) in one statement,
/// then its changes in one call, which PostgreSQL commits by itself (no BEGIN or COMMIT: the
/// new account needs no lock, and the audit entry is numbered as it is applied). Printed, so
/// a change in the count shows.
#[test]
fn a_new_users_login_is_two_round_trips_on_postgres() {
    let o = or_skip!(postgres());
    let config = gatehouse::config::parse(
        "[[upstreams]]\nurl = \"http://127.0.0.1:8080\"\n[[connections]]\nid = \"corp\"\n\
         issuer = \"https://idp.example.com\"\nclient_id = \"gh\"\nclient_secret = \"s\"\n",
    )
    .unwrap();
    let connection = config.connections[0].clone();
    let mut claims = gatehouse::identity::Identity::new("corp", "new-subject");
    claims.username = Some("newbie".into());
    claims.email = Some("newbie@example.com".into());
    claims.email_verified = true;
    let pg = o.store.postgres().unwrap();
    let before = pg.round_trips();
    o.store
        .write(|tx| {
            let provisioned =
                gatehouse::identity::jit::provision(tx, &connection, &claims, 100, "r")?;
            let gatehouse::identity::jit::Provisioned::Allowed { identity, .. } = provisioned
            else {
                panic!("refused");
            };
            let mut record = session("s-new", identity.user_id.as_deref());
            record.identity.user_id = identity.user_id;
            tx.put_session(&record)
        })
        .unwrap();
    let trips = pg.round_trips() - before;
    eprintln!("a new user's login: {trips} round trips");
    assert_eq!(trips, 2);
    assert_eq!(o.store.read(|tx| tx.user_count()).unwrap(), 1);
}

/// Connections the server dropped (a restart, a fail-over, an administrator) stay in the
/// pool until used. The first statement a transaction sends on one finds it gone and is sent
/// again on another connection, so the write succeeds. Pinging idle connections before use
/// is switched off here, so that retry is the only thing that can save the write.
#[test]
fn writes_after_the_server_dropped_every_pooled_connection_succeed_on_postgres() {
    let o = or_skip!(postgres());
    let url = o.url.clone().unwrap();
    let pg = o.store.postgres().unwrap();
    pg.ping_idle_after(std::time::Duration::from_secs(3600));
    // Four transactions open at once leave four connections in the pool.
    let together = std::sync::Barrier::new(4);
    std::thread::scope(|s| {
        for i in 0..4 {
            let (store, together) = (&o.store, &together);
            s.spawn(move || {
                store
                    .write(|tx| {
                        tx.user("nobody")?;
                        together.wait();
                        tx.put_user(&user(&format!("pooled-{i}"), None))
                    })
                    .unwrap();
            });
        }
    });
    let cut = pg::psql(
        &url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    );
    assert!(cut.parse::<u32>().unwrap() >= 4, "cut {cut} connections");
    for i in 0..6 {
        o.store
            .write(|tx| tx.put_user(&user(&format!("after-{i}"), None)))
            .unwrap();
    }
    o.store
        .write(|tx| {
            tx.user("nobody")?;
            tx.put_user(&user("locked-after", None))
        })
        .unwrap();
    assert_eq!(o.store.read(|tx| tx.user_count()).unwrap(), 11);
}

/// A new session is news to no other replica, so storing it adds no session event (and so
/// no NOTIFY, which would make logins commit one at a time); changing or removing a stored
/// one adds one each.
#[test]
fn only_sessions_other_replicas_may_hold_make_session_events_on_postgres() {
    let o = or_skip!(postgres());
    let url = o.url.clone().unwrap();
    let events = || pg::psql(&url, "SELECT count(*) FROM session_events");
    let before = events();
    let mut record = session("sid-news", None);
    o.store.put_session(&record).unwrap();
    assert_eq!(events(), before, "a new session made an event");
    record.expires_at += 60;
    o.store.put_session(&record).unwrap();
    assert_eq!(
        o.store.delete_sessions(&["sid-news".to_string()]).unwrap(),
        1
    );
    let after: u32 = events().parse().unwrap();
    assert_eq!(after, before.parse::<u32>().unwrap() + 2);
}

/// A session record with the IdP's tokens is a little over 2 KB: stored as it is, neither
/// compressed (every login paid for that) nor moved out of the row, and read back whole.
#[test]
fn session_records_with_tokens_are_stored_uncompressed_on_postgres() {
    let o = or_skip!(postgres());
    let url = o.url.clone().unwrap();
    let mut record = session("sid-big", None);
    record.tokens = Tokens {
        id_token: Some("e".repeat(900)),
        access_token: Some("a".repeat(1200)),
        refresh_token: Some("r".repeat(200)),
        access_expires_at: Some(1_900_000_000),
    };
    o.store.put_session(&record).unwrap();
    let stored = pg::psql(
        &url,
        "SELECT octet_length(record) || ' ' || pg_column_size(record) || ' ' || \
         coalesce(pg_column_compression(record), 'none') FROM sessions WHERE sid = 'sid-big'",
    );
    let parts: Vec<&str> = stored.split(' ').collect();
    let (length, size): (usize, usize) = (parts[0].parse().unwrap(), parts[1].parse().unwrap());
    assert!(
        length > 2100,
        "the record is not over the compression threshold: {stored}"
    );
    assert_eq!(
        parts[2], "none",
        "the session record was compressed: {stored}"
    );
    assert!(
        size >= length,
        "the session record was compressed: {stored}"
    );
    let read = o.store.read(|tx| tx.session("sid-big")).unwrap().unwrap();
    assert_eq!(read.tokens.access_token, record.tokens.access_token);
}

/// A statement the server does not answer (here: it waits for a lock another session holds)
/// fails as unavailable once its deadline passes, instead of holding the caller for as long
/// as the server takes; once the server answers again, the same call works.
#[test]
fn a_login_state_the_database_does_not_answer_in_time_fails_as_unavailable_then_recovers_on_postgres(
) {
    let o = or_skip!(postgres());
    let url = o.url.clone().unwrap();
    let store = o.store.postgres().expect("a PostgreSQL store");
    store.set_statement_deadline(std::time::Duration::from_millis(500));
    let server = pg::server().expect("the server");
    let mut holder = server.psql_in_background(
        &url,
        "BEGIN; LOCK TABLE used_states IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60); COMMIT;",
    );
    let held = "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                WHERE c.relname = 'used_states' AND l.mode = 'AccessExclusiveLock' AND l.granted";
    // Bounds for the waits on the other session (a hung test is a failed test).
    let given_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while pg::psql(&url, held) != "1" {
        assert!(
            std::time::Instant::now() < given_up,
            "the lock was never taken"
        );
        assert!(
            holder.try_wait().unwrap().is_none(),
            "the lock holder ended"
        );
        std::thread::yield_now();
    }
    let waited = store.use_login_state("state-1", 2_000_000_000);
    // The server ends the holder's session (a killed client is noticed only when its
    // backend next talks to it, after the sleep).
    pg::psql(
        &url,
        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             WHERE c.relname = 'used_states' AND l.mode = 'AccessExclusiveLock' AND l.granted",
    );
    holder.kill().ok();
    holder.wait().unwrap();
    assert!(
        matches!(waited, Err(StoreError::Unavailable(_))),
        "a statement past its deadline: {waited:?}"
    );
    while pg::psql(&url, held) != "0" {
        assert!(
            std::time::Instant::now() < given_up,
            "the lock was never released"
        );
        std::thread::yield_now();
    }
    assert!(store.use_login_state("state-2", 2_000_000_000).unwrap());
}
