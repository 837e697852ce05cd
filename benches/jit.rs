//! JIT identity costs.
//!
//! - Logins: JIT provisioning plus the new session record, in one durable write transaction
//!   on a real redb file (the store's own commit mode, `Durability::Immediate`), then the
//!   session made live, as `Auth::complete_login` does it. Every `new_user` iteration is a
//!   user never seen before (unique `sub`, username and email), so it measures account
//!   creation; `returning_user` logs the same user in again (`unchanged`). To show where a
//!   new user's time goes, `new_user_no_fsync` commits the same transaction with redb's
//!   `Durability::None` (set in this bench only; the store always commits durably) and
//!   `new_user_no_commit` does all the work and rolls it back. The `threads_N`
//!   variants run N threads, each logging in its own new users into the one store; criterion's
//!   throughput line is then the total logins/s.
//! - Group commit (`jit_group_commit`): the same new-user login through `GroupCommit`, with 1
//!   and 8 logins in flight at once; the total durable provisions/s (issue 14 asks >= 1,000
//!   with 8).
//! - Per request, for a live JIT session: the cookie lookup, the identity headers (built, and
//!   from the session's cache) and the signed identity header (from the session's cache, and
//!   signed fresh) for ES256 and EdDSA.
//!
//! Run with `cargo bench --bench jit`. The store goes into a temp dir under `$TMPDIR`; point
//! that at the disk the store will live on, since the commit cost is mostly its fsync.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use http::HeaderMap;

use gatehouse::auth::session::{Lookup, Sessions};
use gatehouse::auth::Authenticated;
use gatehouse::clock::Clock;
use gatehouse::config::model::{Config, Connection, SigningAlg};
use gatehouse::identity::assertion::AssertionSigner;
use gatehouse::identity::headers::wire_headers;
use gatehouse::identity::jit::{provision, JitAction, Provisioned};
use gatehouse::identity::signed_header::SignedHeader;
use gatehouse::identity::Identity;
use gatehouse::seal::Sealer;
use gatehouse::store::sessions::{PendingSession, SessionRecord, Tokens, SESSION_RECORD_VERSION};
use gatehouse::store::writer::GroupCommit;
use gatehouse::store::{Store, StoreError};

const CONFIG: &str = r#"
[[upstreams]]
url = "http://127.0.0.1:8080"
[headers.attributes]
department = "X-Auth-Request-Department"
cost_center = "X-Auth-Request-Cost-Center"
[[connections]]
id = "corp"
issuer = "https://idp.example.com"
client_id = "gatehouse"
client_secret = "bench-secret"
"#;

/// A store in a temp dir with its session cache, and the JIT connection.
struct Bench {
    store: Arc<Store>,
    sessions: Sessions,
    connection: Connection,
    config: Config,
    /// IdP tokens of a typical size, kept in every session record as a real login does.
    tokens: Tokens,
    _dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Self {
        let config = gatehouse::config::parse(CONFIG).expect("bench config");
        let connection = config.connections[0].clone();
        assert!(connection.jit, "connections provision users by default");
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        let sealer = Sealer::new(vec![[9; 32]]).expect("sealer");
        let sessions = Sessions::new(
            config.session.clone(),
            sealer,
            Arc::clone(&store),
            Clock::system(),
        )
        .expect("sessions");
        let tokens = Tokens {
            id_token: Some("e".repeat(900)),
            access_token: Some("a".repeat(800)),
            refresh_token: Some("r".repeat(64)),
            access_expires_at: Some(Clock::system().now() + 300),
        };
        Self {
            store,
            sessions,
            connection,
            config,
            tokens,
            _dir: dir,
        }
    }

    /// One login: provisioning and the session record in one store transaction (committed
    /// with the store's durability), then the session made live. Returns the cookies.
    fn login(&self, claims: &Identity, expect: JitAction) -> Vec<String> {
        self.login_with(claims, expect, Commit::Durable)
    }

    fn login_with(&self, claims: &Identity, expect: JitAction, commit: Commit) -> Vec<String> {
        let mut made = None;
        let written = self.store.write(|tx| {
            if commit == Commit::NoFsync {
                tx.bench_only_skip_fsync()?;
            }
            let identity =
                match provision(tx, &self.connection, claims, Clock::system().now(), "bench")? {
                    Provisioned::Allowed { identity, action } => {
                        assert_eq!(action, expect, "unexpected JIT action");
                        identity
                    }
                    Provisioned::Refused(r) => panic!("login refused: {r:?}"),
                };
            let pending = self.sessions.prepare(identity, None, self.tokens.clone());
            tx.put_session(pending.record())?;
            made = Some(pending);
            match commit {
                Commit::Rollback => Err(StoreError::Db(ROLLBACK.into())),
                Commit::Durable | Commit::NoFsync => Ok(()),
            }
        });
        match written {
            Ok(()) => {}
            Err(StoreError::Db(e)) if e == ROLLBACK && commit == Commit::Rollback => {}
            Err(e) => panic!("login transaction: {e}"),
        }
        self.sessions
            .activate(made.expect("the transaction made a session"))
    }
}

/// How a bench login's transaction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    /// The store's own commit: redb's default `Durability::Immediate` (one fsync).
    Durable,
    /// Bench only: `Durability::None`, the same commit without its fsync.
    NoFsync,
    /// Bench only: all the work of the transaction, then rolled back (no commit at all).
    Rollback,
}

const ROLLBACK: &str = "bench rollback";

/// What the IdP says about user `n`: unique subject, username and email.
fn claims(n: u64) -> Identity {
    let mut id = Identity::new("corp", &format!("248289761{n:09}"));
    id.username = Some(format!("user{n}"));
    id.email = Some(format!("user{n}@example.com"));
    id.email_verified = true;
    id.name = Some(format!("User Number {n}"));
    id.groups = vec!["staff".into(), "engineering".into()];
    id.attributes.insert("department".into(), "R&D".into());
    id.attributes.insert("cost_center".into(), "CC-4711".into());
    id
}

/// Numbers no other login of this process has used.
static NEXT_USER: AtomicU64 = AtomicU64::new(1);

fn fresh_user() -> Identity {
    claims(NEXT_USER.fetch_add(1, Ordering::Relaxed))
}

/// `iters` logins of new users, one after the other; the time they took.
fn new_users(bench: &Bench, iters: u64, commit: Commit) -> Duration {
    let users: Vec<Identity> = (0..iters).map(|_| fresh_user()).collect();
    let start = Instant::now();
    for claims in &users {
        black_box(bench.login_with(claims, JitAction::Created, commit));
    }
    start.elapsed()
}

fn report_store(name: &str, bench: &Bench) {
    let (accounts, (links, emails)) = bench
        .store
        .read(|tx| Ok((tx.user_count()?, tx.index_sizes()?)))
        .expect("store counts");
    if accounts == 0 && bench.sessions.active() == 0 {
        return; // filtered out by the bench name given on the command line
    }
    let bytes = bench
        .store
        .path()
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len());
    eprintln!(
        "store after {name}: {accounts} accounts, {links} links, {emails} emails, \
         {} MiB file, {} live sessions",
        bytes >> 20,
        bench.sessions.active()
    );
}

fn logins(c: &mut Criterion) {
    let mut group = c.benchmark_group("jit_login");
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(1));

    let durable = Bench::new();
    group.bench_function("new_user", |b| {
        b.iter_custom(|iters| new_users(&durable, iters, Commit::Durable))
    });
    let returning = fresh_user();
    durable.login(&returning, JitAction::Created);
    group.bench_function("returning_user", |b| {
        b.iter(|| black_box(durable.login(&returning, JitAction::Unchanged)))
    });
    report_store("new_user and returning_user", &durable);
    drop(durable);

    // Where a new user's login time goes: the same transaction without the fsync, and
    // without any commit. Each on a fresh store, as new_user was.
    for (name, commit) in [
        ("new_user_no_fsync", Commit::NoFsync),
        ("new_user_no_commit", Commit::Rollback),
    ] {
        let bench = Bench::new();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| new_users(&bench, iters, commit))
        });
        report_store(name, &bench);
    }

    // N threads, each logging in its own new users into one store; one iteration is one
    // login on every thread, so the throughput is the total.
    let shared = Bench::new();
    for threads in [2u64, 4] {
        group.throughput(Throughput::Elements(threads));
        group.bench_function(format!("new_user_threads_{threads}"), |b| {
            b.iter_custom(|iters| {
                let users: Vec<Vec<Identity>> = (0..threads)
                    .map(|_| (0..iters).map(|_| fresh_user()).collect())
                    .collect();
                let start = Instant::now();
                std::thread::scope(|s| {
                    for mine in &users {
                        let bench = &shared;
                        s.spawn(move || {
                            for claims in mine {
                                black_box(bench.login(claims, JitAction::Created));
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    report_store("the threaded benches", &shared);
    group.finish();
}

/// A live JIT session with local roles and two mapped attributes, and its cookie header.
fn jit_session(bench: &Bench) -> (HeaderMap, Identity) {
    let claims = fresh_user();
    let first = bench.login(&claims, JitAction::Created);
    // An admin gives the account local roles; the next login carries them.
    let user_id = {
        let Lookup::Live(live) = bench.sessions.lookup(&cookie_header(&first)) else {
            panic!("first session not live")
        };
        live.identity
            .user_id
            .clone()
            .expect("a JIT session has a user id")
    };
    bench
        .store
        .write(|tx| {
            let mut user = tx.user(&user_id)?.expect("account");
            user.roles = vec!["editor".into(), "billing-viewer".into()];
            tx.put_user(&user)
        })
        .expect("roles");
    // The roles are a change the IdP did not make: the login itself is unchanged.
    let cookies = bench.login(&claims, JitAction::Unchanged);
    let headers = cookie_header(&cookies);
    let Lookup::Live(live) = bench.sessions.lookup(&headers) else {
        panic!("session not live")
    };
    let identity = live.identity.clone();
    assert_eq!(identity.roles.len(), 2);
    assert_eq!(identity.attributes.len(), 2);
    (headers, identity)
}

/// A browser's Cookie header carrying the session cookie among others.
fn cookie_header(set_cookie: &[String]) -> HeaderMap {
    let pair = set_cookie[0].split(';').next().expect("cookie pair");
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::COOKIE,
        format!("theme=dark; {pair}; lang=en")
            .parse()
            .expect("cookie header"),
    );
    headers
}

fn per_request(c: &mut Criterion) {
    let bench = Bench::new();
    let (cookie, identity) = jit_session(&bench);
    let live = match bench.sessions.lookup(&cookie) {
        Lookup::Live(live) => live,
        other => panic!("session not live: {other:?}"),
    };

    let mut group = c.benchmark_group("jit_request");
    group.bench_function("session_lookup", |b| {
        b.iter(|| match bench.sessions.lookup(black_box(&cookie)) {
            Lookup::Live(live) => live,
            other => panic!("session not live: {other:?}"),
        })
    });
    let names = &bench.config.headers;
    let built = wire_headers(names, &identity, false);
    // User, email, username, groups, name, user id, roles, the 2 attributes, connection.
    assert_eq!(built.len(), 10, "{built:?}");
    group.bench_function("wire_headers_build", |b| {
        b.iter(|| wire_headers(black_box(names), black_box(&identity), false))
    });
    group.bench_function("wire_headers_cached", |b| {
        b.iter(|| {
            Arc::clone(
                live.in_use()
                    .header_cache
                    .get_or_init(|| wire_headers(names, &live.identity, false)),
            )
        })
    });

    let signing = bench
        .config
        .identity
        .signing
        .clone()
        .expect("the signed identity header is on by default");
    let who = Authenticated::Session(Arc::clone(&live));
    for alg in [SigningAlg::Es256, SigningAlg::EdDsa] {
        let signer = Arc::new(AssertionSigner::generate(alg).expect("signing key"));
        let signed = SignedHeader::new(signer, &signing, &bench.config.upstreams, Clock::system());
        live.in_use().signed.clear();
        let first = signed
            .value(0, who.identity(), who.assertion_cache())
            .expect("signed header");
        group.bench_function(format!("signed_header_cached_{alg}"), |b| {
            b.iter(|| {
                let value = signed
                    .value(0, black_box(who.identity()), who.assertion_cache())
                    .expect("signed header");
                debug_assert_eq!(value, first);
                value
            })
        });
        group.bench_function(format!("signed_header_sign_{alg}"), |b| {
            b.iter(|| {
                signed
                    .sign(0, black_box(&identity), Clock::system().now())
                    .expect("signed header")
            })
        });
    }
    group.finish();
}

/// One login's transaction as the group-commit thread runs it: owned inputs (it runs on
/// that thread, and again alone if its batch fails), JIT provisioning and the session record.
fn grouped_login(
    group: &GroupCommit,
    connection: &Connection,
    claims: Identity,
    tokens: &Tokens,
) -> PendingSession {
    let (connection, tokens) = (connection.clone(), tokens.clone());
    group
        .write(move |tx| {
            let now = Clock::system().now();
            let identity = match provision(tx, &connection, &claims, now, "bench")? {
                Provisioned::Allowed { identity, action } => {
                    assert_eq!(action, JitAction::Created, "unexpected JIT action");
                    identity
                }
                Provisioned::Refused(r) => panic!("login refused: {r:?}"),
            };
            let pending = PendingSession::new(SessionRecord {
                version: SESSION_RECORD_VERSION,
                sid: gatehouse::ids::random_id(),
                identity,
                idp_sid: None,
                created_at: now,
                expires_at: now + 3600,
                tokens: tokens.clone(),
                mfa_at: None,
                last_seen: None,
            });
            tx.put_session(pending.record())?;
            Ok(pending)
        })
        .expect("login transaction")
}

/// Target 3 of issue 14: durable new-user provisions per second through the group commit
/// (`GroupCommit`, as `Auth::complete_login` uses it) with 1 and 8 logins in flight at once.
/// One iteration is one login on every thread, so criterion's throughput line is the total
/// provisions/s; each login is answered only after the fsync of the commit that holds it.
fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("jit_group_commit");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    let bench = Bench::new();
    let commits = GroupCommit::start(Arc::clone(&bench.store), "bench-logins").expect("thread");
    for threads in [1u64, 8] {
        group.throughput(Throughput::Elements(threads));
        group.bench_function(format!("new_user_concurrent_{threads}"), |b| {
            b.iter_custom(|iters| {
                let users: Vec<Vec<Identity>> = (0..threads)
                    .map(|_| (0..iters).map(|_| fresh_user()).collect())
                    .collect();
                let start = Instant::now();
                std::thread::scope(|s| {
                    for mine in users {
                        let (commits, bench) = (&commits, &bench);
                        s.spawn(move || {
                            for claims in mine {
                                let pending = grouped_login(
                                    commits,
                                    &bench.connection,
                                    claims,
                                    &bench.tokens,
                                );
                                black_box(bench.sessions.activate(pending));
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    drop(commits);
    report_store("the group-commit benches", &bench);
    group.finish();
}

criterion_group!(benches, logins, group_commit, per_request);
criterion_main!(benches);
