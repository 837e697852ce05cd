//! `gatehouse store migrate` and `gatehouse store copy`, run as the real binary against a
//! real PostgreSQL (tests/common/postgres.rs; without one these tests say why and pass,
//! except under CI=true, where a missing server fails them).

#[path = "common/postgres.rs"]
mod pg;

use std::path::{Path, PathBuf};
use std::process::Command;

use gatehouse::store::audit::{AuditAction, AuditActor, AuditEntry};
use gatehouse::store::postgres::PgOptions;
use gatehouse::store::sessions::{Identity, SessionRecord, Tokens, SESSION_RECORD_VERSION};
use gatehouse::store::users::{Link, UserRecord};
use gatehouse::store::Store;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// A new empty database, or `None` (said why) when there is no PostgreSQL outside CI.
fn database() -> Option<String> {
    match pg::fresh_database() {
        Some(url) => Some(url),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but no PostgreSQL for the tests (see tests/common/postgres.rs)")
        }
        None => {
            eprintln!("skipping: no PostgreSQL (see tests/common/postgres.rs)");
            None
        }
    }
}

/// Runs `gatehouse store <args>`: (exit code, stdout, stderr).
fn gatehouse_store(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("store")
        .args(args)
        .env_remove("GATEHOUSE_CONFIG")
        .output()
        .expect("run gatehouse store");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn copy(from: &Path, to: &str) -> (i32, String, String) {
    gatehouse_store(&[
        "copy",
        "--from-redb",
        &from.display().to_string(),
        "--to",
        to,
    ])
}

fn options(url: &str, auto_migrate: bool) -> PgOptions {
    PgOptions {
        url: url.to_string(),
        pool_size: 2,
        auto_migrate,
        acquire_timeout: std::time::Duration::from_secs(10),
        offline_grace: std::time::Duration::from_secs(30),
    }
}

fn session(sid: &str, user: Option<&UserRecord>, idp_sid: Option<&str>) -> SessionRecord {
    SessionRecord {
        version: SESSION_RECORD_VERSION,
        sid: sid.to_string(),
        identity: Identity {
            connection: "corp".into(),
            subject: format!("sub-{sid}"),
            username: user.map(|u| u.username.clone()),
            email: user.and_then(|u| u.email.clone()),
            email_verified: user.is_some_and(|u| u.email_verified),
            name: Some("Name, with a comma".into()),
            groups: vec!["staff".into(), "ops".into()],
            attributes: [("dept".to_string(), "42".to_string())].into(),
            user_id: user.map(|u| u.id.clone()),
            roles: user.map(|u| u.roles.clone()).unwrap_or_default(),
        },
        idp_sid: idp_sid.map(str::to_string),
        created_at: 1_700_000_000,
        expires_at: 2_000_000_000,
        tokens: Tokens {
            id_token: Some("id.token.value".into()),
            access_token: Some("access-token".into()),
            refresh_token: None,
            access_expires_at: Some(1_700_003_600),
        },
        mfa_at: Some(1_700_000_005),
        last_seen: Some(1_700_000_100),
    }
}

/// What the test store holds, to compare the copy with.
struct Fixture {
    users: Vec<UserRecord>,
    sessions: Vec<SessionRecord>,
    audit: Vec<AuditEntry>,
}

/// A redb store in `data_dir` with accounts (links, verified and unverified emails, local
/// roles and attributes, an MFA record), sessions and an audit log with a gap in its numbers.
fn fill_redb(data_dir: &Path) -> Fixture {
    let store = Store::open(data_dir).unwrap();
    let mut alice = UserRecord::new("Alice".into(), 1_700_000_000);
    alice.email = Some("Alice@Example.com".into());
    alice.email_verified = true;
    alice.roles = vec!["editor".into(), "admin".into()];
    alice.local_attributes = [("desk".to_string(), "4F".to_string())].into();
    alice.groups = vec!["staff".into()];
    alice.last_login_at = Some(1_700_000_050);
    alice.links = vec![
        Link {
            connection: "corp".into(),
            subject: "a-1".into(),
        },
        Link {
            connection: "github".into(),
            subject: "9001".into(),
        },
    ];
    alice.mfa.sealed_secret = Some("sealed-secret-bytes".into());
    alice.mfa.enrolled_at = Some(1_700_000_010);
    alice.mfa.last_used_step = Some(56_666_667);
    alice.mfa.recovery_hashes = vec!["h1".into(), "h2".into()];
    alice.mfa.failures = 2;
    let mut bob = UserRecord::new("bob".into(), 1_700_000_001);
    bob.email = Some("bob@example.com".into());
    bob.email_verified = false;
    bob.disabled = true;
    bob.links = vec![Link {
        connection: "corp".into(),
        subject: "b-1".into(),
    }];
    let mut carol = UserRecord::new("Carol".into(), 1_700_000_002);
    carol.display_name = Some("Carol Ö".into());
    let users = vec![alice, bob, carol];
    for user in &users {
        store
            .write(|tx| {
                tx.put_user(user)?;
                for link in &user.links {
                    tx.link(link, &user.id)?;
                }
                Ok(())
            })
            .unwrap();
    }
    let sessions = vec![
        session("s-alice", Some(&users[0]), Some("idp-1")),
        session("s-bob", Some(&users[1]), None),
        session("s-claims-only", None, Some("idp-2")),
    ];
    for s in &sessions {
        store.put_session(s).unwrap();
    }
    let mut audit = Vec::new();
    for (i, (action, user)) in [
        (AuditAction::Created, Some(&users[0])),
        (AuditAction::RoleAdded, Some(&users[0])),
        (AuditAction::Disabled, Some(&users[1])),
        (AuditAction::Created, None),
    ]
    .into_iter()
    .enumerate()
    {
        let mut entry = AuditEntry::new(AuditActor::Admin, action, 1_700_000_000 + i as u64);
        entry.user_id = user.map(|u| u.id.clone());
        entry.changed = vec!["roles".into()];
        store.write(|tx| tx.append_audit(&entry)).unwrap();
        let stored = store.read(|tx| tx.audit(None)).unwrap();
        entry.seq = stored.last().map(|e| e.seq).unwrap();
        audit.push(entry);
    }
    // A log restored from elsewhere may have gaps: the numbers are kept, not renumbered.
    let mut late = AuditEntry::new(AuditActor::Login, AuditAction::Created, 1_700_000_100);
    late.seq = 10;
    late.user_id = Some(users[2].id.clone());
    store.write(|tx| tx.put_numbered_audit(&late)).unwrap();
    audit.push(late);
    Fixture {
        users,
        sessions,
        audit,
    }
}

fn json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap()
}

/// Every record of the fixture is in `store`, equal, and found the ways Gatehouse looks.
fn assert_holds(store: &Store, fixture: &Fixture) {
    store
        .read(|tx| {
            assert_eq!(tx.user_count()?, 3);
            for user in &fixture.users {
                assert_eq!(tx.user(&user.id)?.as_ref(), Some(user), "{}", user.username);
                for link in &user.links {
                    let by_link = tx.user_by_link(&link.connection, &link.subject)?;
                    assert_eq!(by_link.map(|u| u.id), Some(user.id.clone()));
                }
                let by_name = tx.user_by_username(&user.username.to_uppercase())?;
                assert_eq!(by_name.map(|u| u.id), Some(user.id.clone()));
            }
            let alice = &fixture.users[0];
            let by_email = tx.user_by_email("alice@example.com")?;
            assert_eq!(by_email.map(|u| u.id), Some(alice.id.clone()));
            assert!(
                tx.user_by_email("bob@example.com")?.is_none(),
                "an unverified email is not indexed, on either side"
            );
            for s in &fixture.sessions {
                assert_eq!(tx.session(&s.sid)?.map(|r| json(&r)), Some(json(s)));
            }
            assert_eq!(tx.audit(None)?, fixture.audit, "the log, in order");
            let about_alice = tx.audit(Some(&alice.id))?;
            assert_eq!(
                about_alice.iter().map(|e| e.seq).collect::<Vec<_>>(),
                [1, 2]
            );
            Ok(())
        })
        .unwrap();
}

/// Every table of a redb store (accounts with links, verified and unverified emails, roles,
/// MFA records; sessions; the audit log with its numbers and a gap) arrives in an empty
/// PostgreSQL database equal, found by id, link, email and username; the counts of both
/// sides are printed; the source is left readable; and the next audit entry is numbered after
/// the copied ones even when the target's sequence had moved on before the copy.
#[test]
fn a_redb_store_is_copied_whole_into_an_empty_postgres_database() {
    let Some(url) = database() else { return };
    let dir = tempfile::tempdir().unwrap();
    let fixture = fill_redb(dir.path());
    // A sequence used before (say by a failed attempt) must not renumber the log.
    let (code, _, stderr) = gatehouse_store(&[
        "migrate",
        "--config",
        &pg_config(dir.path(), &url, true).display().to_string(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    pg::psql(
        &url,
        "SELECT setval(pg_get_serial_sequence('audit', 'seq'), 50)",
    );

    let (code, stdout, stderr) = copy(dir.path(), &url);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("gatehouse.redb"), "{stdout}");
    for line in [
        "users",
        "links",
        "emails index",
        "usernames index",
        "sessions",
        "audit entries",
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("no {line} row: {stdout}"));
        let numbers: Vec<&str> = row[line.len()..].split_whitespace().collect();
        let expected = match line {
            "users" | "links" | "usernames index" | "sessions" => "3",
            "emails index" => "1",
            _ => "5",
        };
        assert_eq!(numbers, [expected, expected], "{row}");
    }

    let target = Store::open_postgres(&options(&url, false)).unwrap();
    assert_holds(&target, &fixture);
    let counts = target.read(|tx| tx.counts()).unwrap();
    assert_eq!(counts.links, 3);
    target
        .write(|tx| {
            tx.append_audit(&AuditEntry::new(
                AuditActor::Admin,
                AuditAction::Enabled,
                1_700_000_200,
            ))
        })
        .unwrap();
    let log = target.read(|tx| tx.audit(None)).unwrap();
    let appended = log.last().unwrap();
    assert_eq!(
        (appended.seq, appended.action),
        (11, AuditAction::Enabled),
        "numbered after the highest copied entry"
    );
    drop(target);

    // The source is untouched and still opens.
    let source = Store::open(dir.path()).unwrap();
    assert_holds(&source, &fixture);
}

/// A second copy into a database that now holds rows is refused (exit 1), naming what it
/// found; nothing is written, and every record stays as the first copy left it. A database
/// holding a single audit entry (and nothing else) is refused too.
#[test]
fn a_copy_into_a_database_that_is_not_empty_is_refused_and_changes_nothing() {
    let Some(url) = database() else { return };
    let dir = tempfile::tempdir().unwrap();
    let fixture = fill_redb(dir.path());
    let (code, _, stderr) = copy(dir.path(), &url);
    assert_eq!(code, 0, "{stderr}");
    let before = pg::psql(
        &url,
        "SELECT (SELECT count(*) FROM users) || ',' || (SELECT count(*) FROM sessions) || ',' \
         || (SELECT count(*) FROM audit) || ',' || (SELECT max(seq) FROM audit)",
    );

    // The same store again, and a different one: both refused.
    let other = tempfile::tempdir().unwrap();
    let mut extra = UserRecord::new("dave".into(), 1);
    extra.email = Some("dave@example.com".into());
    extra.email_verified = true;
    let extra_store = Store::open(other.path()).unwrap();
    extra_store.write(|tx| tx.put_user(&extra)).unwrap();
    drop(extra_store);
    for source in [dir.path(), other.path()] {
        let (code, stdout, stderr) = copy(source, &url);
        assert_eq!(code, 1, "{stdout}{stderr}");
        assert!(stderr.contains("not empty"), "{stderr}");
        assert!(stderr.contains("3 users"), "{stderr}");
        assert!(stderr.contains("3 sessions"), "{stderr}");
        assert!(stderr.contains("5 audit entries"), "{stderr}");
        assert!(stderr.contains("nothing was written"), "{stderr}");
    }
    let after = pg::psql(
        &url,
        "SELECT (SELECT count(*) FROM users) || ',' || (SELECT count(*) FROM sessions) || ',' \
         || (SELECT count(*) FROM audit) || ',' || (SELECT max(seq) FROM audit)",
    );
    assert_eq!(before, after);
    let target = Store::open_postgres(&options(&url, false)).unwrap();
    assert_holds(&target, &fixture);
    assert!(target
        .read(|tx| tx.user_by_username("dave"))
        .unwrap()
        .is_none());

    // Only one audit row: still not empty.
    let Some(lone) = database() else { return };
    let store = Store::open_postgres(&options(&lone, true)).unwrap();
    store
        .write(|tx| tx.append_audit(&AuditEntry::new(AuditActor::Admin, AuditAction::Created, 1)))
        .unwrap();
    drop(store);
    let (code, _, stderr) = copy(dir.path(), &lone);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("1 audit entries"), "{stderr}");
    assert_eq!(pg::psql(&lone, "SELECT count(*) FROM users"), "0");
}

/// A redb file held by a running gatehouse (here: this test process holds it open) is
/// refused with exit 1, naming the file and saying to stop the server first; the target
/// database is not even migrated.
#[test]
fn a_redb_store_held_by_a_running_gatehouse_is_refused() {
    let Some(url) = database() else { return };
    let dir = tempfile::tempdir().unwrap();
    fill_redb(dir.path());
    let held = Store::open(dir.path()).unwrap();
    let file = dir.path().join(gatehouse::store::FILE_NAME);
    // By directory and by file: the same refusal.
    for path in [dir.path().to_path_buf(), file.clone()] {
        let (code, stdout, stderr) = copy(&path, &url);
        assert_eq!(code, 1, "{stdout}{stderr}");
        assert!(stderr.contains(&file.display().to_string()), "{stderr}");
        assert!(stderr.contains("stop the server first"), "{stderr}");
    }
    assert_eq!(pg::psql(&url, "SELECT to_regclass('users') IS NULL"), "t");
    drop(held);
    // Once the server is stopped, the file itself (not only its directory) is accepted.
    let (code, _, stderr) = copy(&file, &url);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(pg::psql(&url, "SELECT count(*) FROM users"), "3");
}

fn pg_config(dir: &Path, url: &str, auto_migrate: bool) -> PathBuf {
    let path = dir.join("gatehouse-pg.toml");
    std::fs::write(
        &path,
        format!(
            "[[upstreams]]\nurl = \"http://127.0.0.1:1\"\n[store]\ndata_dir = \"{}\"\n\
             backend = \"postgres\"\nurl = \"{url}\"\nauto_migrate = {auto_migrate}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    path
}

/// `store migrate` brings an empty database to this build's schema even with
/// `auto_migrate = false` (which refuses to open it before), prints the version before and
/// after, says so when there is nothing left to do, and then the store opens without
/// migrating.
#[test]
fn store_migrate_brings_an_empty_database_up_and_then_it_opens_without_auto_migrate() {
    let Some(url) = database() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = pg_config(dir.path(), &url, false);
    let config = config.display().to_string();
    assert!(Store::open_postgres(&options(&url, false)).is_err());
    let known = gatehouse::store::postgres::schema_version();

    let (code, stdout, stderr) = gatehouse_store(&["migrate", "--config", &config]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&format!("0 -> {known}")), "{stdout}");
    assert!(!stdout.contains("password"), "{stdout}");
    let (code, stdout, stderr) = gatehouse_store(&["migrate", "--config", &config]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("nothing to migrate"), "{stdout}");

    let store = Store::open_postgres(&options(&url, false)).unwrap();
    store
        .write(|tx| tx.put_user(&UserRecord::new("erin".into(), 1)))
        .unwrap();
    assert_eq!(store.read(|tx| tx.user_count()).unwrap(), 1);
}

/// `store migrate` refuses (exit 1) a database whose schema is newer than this build,
/// naming both versions, and leaves it alone.
#[test]
fn store_migrate_refuses_a_schema_newer_than_this_build() {
    let Some(url) = database() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = pg_config(dir.path(), &url, true).display().to_string();
    let (code, _, stderr) = gatehouse_store(&["migrate", "--config", &config]);
    assert_eq!(code, 0, "{stderr}");
    pg::psql(
        &url,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99, 'from the future', true, '\\x00', 0)",
    );
    let (code, _, stderr) = gatehouse_store(&["migrate", "--config", &config]);
    assert_eq!(code, 1, "{stderr}");
    let known = gatehouse::store::postgres::schema_version();
    assert!(stderr.contains("version 99"), "{stderr}");
    assert!(stderr.contains(&format!("({known})")), "{stderr}");
}

/// Without PostgreSQL: `store migrate` on the embedded store says there is nothing to
/// migrate (exit 0); a config with problems is exit 2; a `--to` that is not a postgres URL
/// is exit 2, its password never echoed; a source that does not exist is exit 1, naming it,
/// and no store file is created there.
#[test]
fn store_commands_report_usage_problems_with_the_users_cli_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gatehouse.toml");
    std::fs::write(
        &config,
        format!(
            "[[upstreams]]\nurl = \"http://127.0.0.1:1\"\n[store]\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let (code, stdout, stderr) = gatehouse_store(&["migrate", "--config", &config]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("nothing to migrate"), "{stdout}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[store]\nbackend = \"cassandra\"\n").unwrap();
    let (code, _, _) = gatehouse_store(&["migrate", "--config", &bad.display().to_string()]);
    assert_eq!(code, 2);

    for to in [
        "mysql://root:hunter2@db/x",
        "not a url hunter2",
        "postgres://u:hunter2@h",
    ] {
        let (code, _, stderr) = copy(dir.path(), to);
        assert_eq!(code, 2, "{to}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }

    let missing = dir.path().join("no-such-dir");
    let (code, _, stderr) = copy(&missing, "postgres://gatehouse@127.0.0.1:1/x");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no-such-dir"), "{stderr}");
    assert!(!missing.exists(), "nothing is created at the source path");
}
