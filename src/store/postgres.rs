//! The PostgreSQL engine: several Gatehouse replicas share one database. It keeps the same
//! rows as the embedded file (records as the same versioned JSON, in `bytea`), plus typed
//! columns PostgreSQL can index (a session's user, subject and IdP session), the shared keys,
//! and the session events other replicas follow (LISTEN/NOTIFY plus a sequence, so a replica
//! that was away catches up).
//!
//! Concurrency: a write transaction reads accounts `FOR UPDATE`, so two replicas changing one
//! account (a TOTP step, a failure count) take turns; unique entries (links, emails,
//! usernames) are claimed with `INSERT ... ON CONFLICT DO NOTHING`, and a claim another
//! transaction won is a [`StoreError::Conflict`] that [`super::Store::write`] retries.
//!
//! Round trips: a write transaction keeps its changes and sends them in one call at commit
//! (`gatehouse_apply`, migration 2, which applies them in order with the rules above), and
//! answers its own reads from what it wrote or already read; only the reads it decides on,
//! the audit number, BEGIN, the call and COMMIT go to the server (a new user's login: 8,
//! where one statement per change took 16).
//!
//! The engine owns a small tokio runtime for its connections, so it works the same from any
//! thread (Gatehouse calls the store from the blocking pool and its writer threads, never
//! from a proxy thread).

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row};
use tokio::runtime::Handle;

use super::raw::{Ahead, Counted, Index, RawRead, RawWrite, Rows};
use super::sessions::{SessionColumns, SessionOwner};
use super::StoreError;

/// The schema, one migration per step; the number is the schema version.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "accounts sessions audit keys events",
        include_str!("migrations/0001_init.sql"),
    ),
    (
        2,
        "a write transaction's changes in one call",
        include_str!("migrations/0002_apply.sql"),
    ),
    (
        3,
        "logins commit side by side",
        include_str!("migrations/0003_commit_side_by_side.sql"),
    ),
    (
        4,
        "session records stored uncompressed",
        include_str!("migrations/0004_sessions_uncompressed.sql"),
    ),
];

/// The newest schema version this build knows.
pub fn schema_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// How long a statement (a transaction's, its COMMIT, or a single call on the pool) may
/// take before the store gives up on it and on its connection (a server that stopped
/// answering without closing the connection, a network that drops packets, a lock held for
/// ever): the call fails as unavailable.
const STATEMENT_DEADLINE: Duration = Duration::from_secs(30);

/// The error of a statement past its deadline: the connection is treated as lost (closed,
/// never reused; see [`connection_lost`]).
fn statement_overdue(deadline: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer from the database within {deadline:?}"),
    ))
}

/// `fut` (a statement), failed as [`statement_overdue`] when it takes longer than `deadline`.
async fn in_time<T>(
    deadline: Duration,
    fut: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(deadline, fut)
        .await
        .unwrap_or_else(|_| Err(statement_overdue(deadline)))
}

/// Whether `e` is [`statement_overdue`].
fn overdue(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

/// A pooled connection idle this long is pinged before it is used again.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

/// The channel replicas are told about session changes on (the payload is the event's
/// sequence number; the rows themselves are read from `session_events`).
pub const SESSION_CHANNEL: &str = "gatehouse_sessions";

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    pub url: String,
    pub pool_size: u32,
    /// Run the embedded migrations at open (else a database behind the schema is refused).
    pub auto_migrate: bool,
    /// How long to wait for a connection before a store call fails as unavailable.
    pub acquire_timeout: Duration,
    /// How long sessions this replica holds keep working while the database is unreachable
    /// (then the replica fails closed).
    pub offline_grace: Duration,
}

/// The URL with its password masked, for messages and logs.
pub fn masked(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("****"));
            }
            parsed.to_string()
        }
        Err(_) => "(an unparsable URL)".to_string(),
    }
}

pub struct PgStore {
    runtime: Option<tokio::runtime::Runtime>,
    handle: Handle,
    pool: PgPool,
    shown: String,
    /// This process's name in `session_events` (its own events are not news to it).
    origin: String,
    /// Whether the database answered last time (`gatehouse_store_up`).
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Since when it has not (`None` while it answers).
    down_since: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    offline_grace: Duration,
    /// Round trips made by transactions (statements, BEGIN, COMMIT), for tests and benches.
    round_trips: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// How long (ms) a pooled connection may sit idle before it is pinged when taken.
    idle_before_ping: std::sync::Arc<AtomicU64>,
    /// Connections kept between transactions.
    warm: std::sync::Arc<Warm>,
    /// How long a statement may go unanswered (ms; [`STATEMENT_DEADLINE`] unless a test
    /// shortens it).
    statement_deadline: AtomicU64,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Kept connections go back while the runtime they need still runs.
        {
            let _entered = self.handle.enter();
            self.warm.close();
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `fut` to its end on this thread, its sockets and timers driven by the engine's
/// runtime (whose threads wake this one when the server answers).
///
/// Store calls run on blocking threads (`spawn_blocking`, the login writer), so waiting
/// here is allowed. Polling the statement here instead of as a task of the runtime saves a
/// task and a hand-over between threads per statement: the engine's CPU time per new-user
/// login on PostgreSQL went down by about 12% (`cargo bench --bench jit_pg`, "this
/// process"). A panic inside the driver fails the call as unavailable.
fn run<T>(handle: &Handle, fut: impl Future<Output = T>) -> Result<T, StoreError> {
    /// Wakes the waiting thread.
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    // Sockets, timers and the tasks the driver spawns belong to the engine's runtime.
    let _entered = handle.enter();
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)));
        match polled {
            Ok(std::task::Poll::Ready(out)) => return Ok(out),
            // A wake-up that came early, or was meant for another wait of this thread's,
            // only costs another poll.
            Ok(std::task::Poll::Pending) => std::thread::park(),
            Err(_) => return Err(StoreError::Unavailable("the database call panicked".into())),
        }
    }
}

/// A database error as a store error: lost races are conflicts (retried), a database that
/// cannot be reached is unavailable (a 503, and the replica's `gatehouse_store_up` is 0).
pub(crate) fn store_error(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // unique_violation, serialization_failure, deadlock_detected, and `gatehouse_apply`
            // finding a claim or link held by another account (migration 2)
            Some("23505" | "40001" | "40P01" | "GH409") => {
                StoreError::Conflict(db.message().to_string())
            }
            // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections
            Some("57P01" | "57P02" | "57P03" | "53300") => {
                StoreError::Unavailable(db.message().to_string())
            }
            _ => StoreError::Db(e.to_string()),
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Db(e.to_string()),
    }
}

impl PgStore {
    /// Connects (waiting at most `acquire_timeout`), checks the schema version and migrates
    /// when allowed. A schema newer than this build is refused, naming both versions.
    pub fn open(options: &PgOptions) -> Result<Self, StoreError> {
        let store = Self::connect(options)?;
        store.prepare_schema(options.auto_migrate)?;
        Ok(store)
    }

    /// The pool, without looking at the schema (connections are made when first used).
    fn connect(options: &PgOptions) -> Result<Self, StoreError> {
        let shown = masked(&options.url);
        let open_error = |reason: String| StoreError::Open {
            path: shown.clone().into(),
            reason,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("gatehouse-postgres")
            .enable_all()
            .build()
            .map_err(|e| open_error(format!("cannot start the database runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let connect = PgConnectOptions::from_str(&options.url)
            .map_err(|e| open_error(format!("store.url: {e}")))?
            .application_name("gatehouse");
        let idle_before_ping = std::sync::Arc::new(AtomicU64::new(
            u64::try_from(IDLE_BEFORE_PING.as_millis()).unwrap_or(u64::MAX),
        ));
        let ping_after = idle_before_ping.clone();
        let pool = {
            let _entered = handle.enter();
            PgPoolOptions::new()
                .max_connections(options.pool_size.max(1))
                .acquire_timeout(options.acquire_timeout)
                // A connection in steady use is not pinged before each use (a round trip
                // per transaction); one idle for a while is, as it may be one the server
                // dropped. A transaction's first statement that still finds its connection
                // gone is sent again on another (`PgTx::statement`).
                .test_before_acquire(false)
                .before_acquire(move |conn, meta| {
                    let after = Duration::from_millis(ping_after.load(Ordering::Relaxed));
                    Box::pin(async move {
                        if meta.idle_for >= after {
                            sqlx::Connection::ping(conn).await?;
                        }
                        Ok(true)
                    })
                })
                .connect_lazy_with(connect)
        };
        let store = Self {
            runtime: Some(runtime),
            handle,
            pool,
            shown: shown.clone(),
            origin: crate::ids::random_id(),
            up: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            down_since: Default::default(),
            offline_grace: options.offline_grace,
            round_trips: Default::default(),
            warm: std::sync::Arc::new(Warm {
                idle: std::sync::Mutex::new(Some(Vec::new())),
                keep: usize::try_from(options.pool_size.max(1) / 2).unwrap_or(0),
                ping_after: idle_before_ping.clone(),
            }),
            idle_before_ping,
            statement_deadline: AtomicU64::new(
                u64::try_from(STATEMENT_DEADLINE.as_millis()).unwrap_or(u64::MAX),
            ),
        };
        Ok(store)
    }

    /// Where the store is, without the password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The engine's runtime (for the session-event listener).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// How many round trips to the database this store's transactions have made so far
    /// (each statement, BEGIN and COMMIT is one). For tests and benches (Gatehouse never
    /// reads it).
    #[doc(hidden)]
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How long a pooled connection may sit idle before it is pinged when taken again (1 s).
    /// For tests: a long one leaves a connection the server dropped to be found out by the
    /// statement that uses it.
    #[doc(hidden)]
    pub fn ping_idle_after(&self, idle: Duration) {
        let ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        self.idle_before_ping.store(ms, Ordering::Relaxed);
    }

    /// How long a statement may go unanswered before the call fails as unavailable.
    fn deadline(&self) -> Duration {
        Duration::from_millis(self.statement_deadline.load(Ordering::Relaxed))
    }

    /// Shortens (or lengthens) how long a statement may go unanswered: for tests of a
    /// server that does not answer.
    #[doc(hidden)]
    pub fn set_statement_deadline(&self, deadline: Duration) {
        self.statement_deadline.store(
            u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Runs statements on a pooled connection (no transaction of their own) within the
    /// statement deadline.
    fn on_pool<T, F>(&self, statements: impl FnOnce(PgPool) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, sqlx::Error>>,
    {
        run(
            &self.handle,
            in_time(self.deadline(), statements(self.pool.clone())),
        )?
        .map_err(store_error)
    }

    /// The schema version the database is at (0: empty).
    pub fn database_version(&self) -> Result<i64, StoreError> {
        self.on_pool(|pool| async move {
            let exists: Option<String> =
                sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
                    .fetch_one(&pool)
                    .await?;
            if exists.is_none() {
                return Ok(0);
            }
            let version: Option<i64> =
                sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                    .fetch_one(&pool)
                    .await?;
            Ok(version.unwrap_or(0))
        })
    }

    /// A database migrated by a newer Gatehouse is refused, naming both versions.
    fn refuse_newer(&self, at: i64) -> Result<(), StoreError> {
        let known = schema_version();
        if at > known {
            return Err(StoreError::Open {
                path: self.shown.clone().into(),
                reason: format!(
                    "the database schema is version {at}, newer than this gatehouse knows ({known}): run the newer gatehouse, or restore a matching backup"
                ),
            });
        }
        Ok(())
    }

    fn prepare_schema(&self, auto_migrate: bool) -> Result<(), StoreError> {
        let at = self.database_version()?;
        let known = schema_version();
        self.refuse_newer(at)?;
        if at < known {
            if !auto_migrate {
                return Err(StoreError::Open {
                    path: self.shown.clone().into(),
                    reason: format!(
                        "the database schema is version {at} and this gatehouse needs {known}: run `gatehouse store migrate`, or set store.auto_migrate = true"
                    ),
                });
            }
            self.migrate()?;
        }
        Ok(())
    }

    /// Runs the embedded migrations (each in its own transaction, under PostgreSQL's advisory
    /// lock, so two replicas starting together migrate once).
    pub fn migrate(&self) -> Result<(), StoreError> {
        let migrator = sqlx::migrate::Migrator {
            migrations: Cow::Owned(
                MIGRATIONS
                    .iter()
                    .map(|(version, description, sql)| {
                        sqlx::migrate::Migration::new(
                            *version,
                            Cow::Borrowed(*description),
                            sqlx::migrate::MigrationType::Simple,
                            Cow::Borrowed(*sql),
                            false,
                        )
                    })
                    .collect(),
            ),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        let pool = self.pool.clone();
        run(&self.handle, async move { migrator.run(&pool).await })?.map_err(|e| StoreError::Open {
            path: self.shown.clone().into(),
            reason: format!("migrating the schema failed: {e}"),
        })
    }

    pub fn begin_write(&self) -> Result<Box<dyn RawWrite>, StoreError> {
        Ok(Box::new(self.begin(true)?))
    }

    pub fn begin_read(&self) -> Result<Box<dyn RawRead>, StoreError> {
        Ok(Box::new(self.begin(false)?))
    }

    /// A transaction. Nothing is sent yet: the connection is taken, and BEGIN sent, with
    /// the first statement that needs them (see [`PgTx`]).
    fn begin(&self, writable: bool) -> Result<PgTx, StoreError> {
        Ok(PgTx {
            conn: std::cell::RefCell::new(Conn::Unused),
            failed: std::cell::Cell::new(false),
            pool: self.pool.clone(),
            warm: self.warm.clone(),
            deadline: self.deadline(),
            broken: std::cell::Cell::new(false),
            handle: self.handle.clone(),
            writable,
            origin: self.origin.clone(),
            round_trips: self.round_trips.clone(),
            pending: Default::default(),
            rows_known: Default::default(),
            ids_known: Default::default(),
            unsure: Default::default(),
        })
    }

    /// A key every replica must share: the stored one, or `generated` stored now (the first
    /// replica wins; the others read what it stored).
    pub fn shared_key(&self, name: &str, generated: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let name = name.to_string();
        self.on_pool(|pool| async move {
            sqlx::query(
                "INSERT INTO shared_keys (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            )
            .bind(&name)
            .bind(&generated)
            .execute(&pool)
            .await?;
            sqlx::query_scalar::<_, Vec<u8>>("SELECT value FROM shared_keys WHERE name = $1")
                .bind(&name)
                .fetch_one(&pool)
                .await
        })
    }
}

/// A bound value.
#[derive(Clone)]
enum Arg {
    Text(String),
    Bytes(Vec<u8>),
    Int(i64),
    MaybeText(Option<String>),
    Texts(Vec<Option<String>>),
    Ints(Vec<Option<i64>>),
    Blobs(Vec<Option<Vec<u8>>>),
}

fn text(s: &str) -> Arg {
    Arg::Text(s.to_string())
}

type Query<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

fn bind_all(sql: &str, args: Vec<Arg>) -> Query<'_> {
    args.into_iter().fold(sqlx::query(sql), |q, arg| match arg {
        Arg::Text(v) => q.bind(v),
        Arg::Bytes(v) => q.bind(v),
        Arg::Int(v) => q.bind(v),
        Arg::MaybeText(v) => q.bind(v),
        Arg::Texts(v) => q.bind(v),
        Arg::Ints(v) => q.bind(v),
        Arg::Blobs(v) => q.bind(v),
    })
}

/// A key whose value a write transaction may know without asking the database.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum IdKey {
    Index(Index, String),
    Link(String, String),
}

/// A kind of buffered change: its name in `gatehouse_apply` (migration 2), which applies it
/// with the rule the statement of its own had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    PutUser,
    RemoveUser,
    PutSession,
    RemoveSession,
    Claim(Index),
    Release(Index),
    SetLink,
    RemoveLink,
    Audit,
}

impl Change {
    fn name(self) -> &'static str {
        match self {
            Change::PutUser => "put_user",
            Change::RemoveUser => "remove_user",
            Change::PutSession => "put_session",
            Change::RemoveSession => "remove_session",
            Change::Claim(Index::Emails) => "claim_email",
            Change::Claim(Index::Usernames) => "claim_username",
            Change::Release(Index::Emails) => "release_email",
            Change::Release(Index::Usernames) => "release_username",
            Change::SetLink => "set_link",
            Change::RemoveLink => "remove_link",
            Change::Audit => "audit",
        }
    }
}

/// A write transaction's buffered changes, in order, as the arguments of one
/// `gatehouse_apply` call: one element per change in each array (the columns each kind
/// uses are listed in the migration).
#[derive(Default)]
struct Apply {
    op: Vec<Option<String>>,
    k: [Vec<Option<String>>; 5],
    num: Vec<Option<i64>>,
    blob: Vec<Option<Vec<u8>>>,
}

impl Apply {
    fn push(
        &mut self,
        change: Change,
        k: [Option<&str>; 5],
        num: Option<i64>,
        blob: Option<Vec<u8>>,
    ) {
        self.op.push(Some(change.name().to_string()));
        for (column, value) in self.k.iter_mut().zip(k) {
            column.push(value.map(str::to_string));
        }
        self.num.push(num);
        self.blob.push(blob);
    }

    fn is_empty(&self) -> bool {
        self.op.is_empty()
    }
}

/// Records a write transaction knows (read or written), by table and key: `None` for absent.
type KnownRows = HashMap<(Rows, String), Option<Vec<u8>>>;

/// A transaction's hold on the database.
enum Conn {
    /// Nothing sent yet: a connection is taken with the first statement.
    Unused,
    /// A connection with no transaction open: each statement commits by itself. A write
    /// transaction's plain reads run so until something needs the transaction.
    Plain(PoolConnection<Postgres>),
    /// BEGIN sent (a read snapshot: `BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY`).
    Open(PoolConnection<Postgres>),
}

/// What a statement needs from the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// Nothing: a read whose answer is checked again when the changes are applied (an index
    /// entry, a link), so it may run before BEGIN.
    Nothing,
    /// The open transaction: a lock, a change, or a read that must see this transaction's
    /// changes (BEGIN is sent first when it was not yet).
    Transaction,
    /// None, as it is the whole transaction: the changes, sent at commit by a transaction
    /// that never needed BEGIN, which PostgreSQL commits as a statement of its own. Never
    /// sent twice: when the connection is lost under it, it may have been applied.
    ItsOwn,
}

const BEGIN_WRITE: &str = "BEGIN";
const BEGIN_SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";

/// Whether an error means the connection is gone (the server restarted, the socket broke):
/// a statement that is the first on a connection taken from the pool is then sent again on
/// another one, as nothing of the transaction was on the lost one.
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("57P01" | "57P02" | "57P03"))
        }
        _ => false,
    }
}

/// Connections kept out of the pool between transactions. sqlx pings every connection it
/// gets back (a round trip, and a task, per transaction); a connection kept here goes to the
/// next transaction as it is. It keeps at most half the pool, so the pool's other users (the
/// session follower, login states, pending logins) always find connections; one idle for
/// [`IDLE_BEFORE_PING`] is pinged before it is used again, as the pool's own would be.
struct Warm {
    /// `None` once the store is dropped: a connection given back then goes to the pool (a
    /// task finishing a rollback may give one back after the store is gone).
    idle: std::sync::Mutex<Option<Kept>>,
    keep: usize,
    /// How long (ms) a connection may sit idle before it is pinged when taken.
    ping_after: std::sync::Arc<AtomicU64>,
}

/// Kept connections, each with when it was given back.
type Kept = Vec<(PoolConnection<Postgres>, std::time::Instant)>;

impl Warm {
    /// The connection used last, and whether it has been idle long enough to be pinged.
    fn take(&self) -> Option<(PoolConnection<Postgres>, bool)> {
        let (conn, since) = self.idle.lock().ok()?.as_mut()?.pop()?;
        let after = Duration::from_millis(self.ping_after.load(Ordering::Relaxed));
        Some((conn, since.elapsed() >= after))
    }

    /// Keeps `conn` for the next transaction; a connection it has no room for goes back to
    /// the pool (the caller is in the engine's runtime).
    fn keep(&self, conn: PoolConnection<Postgres>) {
        if let Ok(mut idle) = self.idle.lock() {
            if let Some(idle) = idle.as_mut().filter(|idle| idle.len() < self.keep) {
                idle.push((conn, std::time::Instant::now()));
            }
        }
    }

    /// Gives every kept connection back to the pool and keeps none from now on (the caller
    /// is in the engine's runtime).
    fn close(&self) {
        let kept = self.idle.lock().ok().and_then(|mut idle| idle.take());
        drop(kept);
    }
}

/// One transaction, read-only or not. Its statements run on the engine's runtime.
///
/// Round trips: nothing is sent until a statement needs it. A write transaction's plain
/// reads (index entries, links: [`Needs::Nothing`]) run before BEGIN, each committing by
/// itself; BEGIN goes with the first statement that needs the transaction (a lock, a change
/// sent before commit). A write transaction that never needed it commits by sending its
/// changes as one statement, which PostgreSQL runs as a transaction of its own: a new
/// user's login is then two round trips, the look-ups ([`RawRead::prefetch`]) and the
/// changes.
///
/// A write transaction keeps its changes (`pending`) and sends them in one round trip at
/// commit, or earlier when a read needs them (a scan, a count, a key a pending change
/// affects in a way it cannot tell by itself). What it has read or written is remembered
/// (`rows_known`, `ids_known`), so a key read again, or read after this transaction's own
/// write, is answered without a round trip: an account is read `FOR UPDATE`, so it cannot
/// change meanwhile; an unlocked index entry or link read again gives the first answer, and
/// a claim decided on it is checked again when it is applied.
struct PgTx {
    conn: std::cell::RefCell<Conn>,
    /// A statement inside the open transaction failed: PostgreSQL has aborted it, and
    /// COMMIT would roll it back without an error, so commit refuses.
    failed: std::cell::Cell<bool>,
    pool: PgPool,
    warm: std::sync::Arc<Warm>,
    /// How long each statement may go unanswered.
    deadline: Duration,
    /// The connection was lost under a statement: it is closed, not kept.
    broken: std::cell::Cell<bool>,
    handle: Handle,
    writable: bool,
    origin: String,
    round_trips: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pending: std::cell::RefCell<Apply>,
    rows_known: std::cell::RefCell<KnownRows>,
    ids_known: std::cell::RefCell<HashMap<IdKey, Option<String>>>,
    /// Keys a pending change may have changed without `ids_known` telling how (an entry
    /// released without having been read): read only after the changes are sent.
    unsure: std::cell::RefCell<std::collections::HashSet<IdKey>>,
}

impl Drop for PgTx {
    fn drop(&mut self) {
        let conn = std::mem::replace(self.conn.get_mut(), Conn::Unused);
        // Connections go back (to `warm` or the pool) in the engine's runtime.
        let _entered = self.handle.enter();
        match conn {
            Conn::Unused => {}
            Conn::Plain(mut conn) | Conn::Open(mut conn) if self.broken.get() => {
                conn.close_on_drop();
            }
            Conn::Plain(conn) => self.warm.keep(conn),
            // Not committed: rolled back before the connection is used again; a connection
            // that cannot roll back is closed.
            Conn::Open(mut conn) => {
                let warm = self.warm.clone();
                self.handle.spawn(async move {
                    match sqlx::Executor::execute(&mut *conn, "ROLLBACK").await {
                        Ok(_) => warm.keep(conn),
                        Err(_) => conn.close_on_drop(),
                    }
                });
            }
        }
    }
}

impl PgTx {
    /// Runs one statement inside the transaction and returns its rows.
    fn rows(&self, sql: &'static str, args: Vec<Arg>) -> Result<Vec<PgRow>, StoreError> {
        self.statement(Needs::Transaction, sql, args)
    }

    /// Runs one statement inside the transaction.
    fn execute(&self, sql: &'static str, args: Vec<Arg>) -> Result<(), StoreError> {
        self.statement(Needs::Transaction, sql, args).map(drop)
    }

    /// Runs one statement (taking a connection, and sending BEGIN, first when `needs` them)
    /// and returns its rows. A statement that is the first on a connection from the pool
    /// and finds it gone is sent again on another (unless it commits by itself).
    fn statement(
        &self,
        needs: Needs,
        sql: &'static str,
        args: Vec<Arg>,
    ) -> Result<Vec<PgRow>, StoreError> {
        // A read snapshot's reads all belong to it.
        let needs = if self.writable {
            needs
        } else {
            Needs::Transaction
        };
        let conn = std::mem::replace(&mut *self.conn.borrow_mut(), Conn::Unused);
        let was_open = matches!(conn, Conn::Open(_));
        let begin = match (&conn, needs) {
            (Conn::Open(_), _) | (_, Needs::Nothing | Needs::ItsOwn) => None,
            (_, Needs::Transaction) if self.writable => Some(BEGIN_WRITE),
            (_, Needs::Transaction) => Some(BEGIN_SNAPSHOT),
        };
        let trips = 1 + u64::from(begin.is_some());
        self.round_trips
            .fetch_add(trips, std::sync::atomic::Ordering::Relaxed);
        let (pool, deadline) = (self.pool.clone(), self.deadline);
        let tries = match needs {
            Needs::ItsOwn => 1,
            Needs::Nothing | Needs::Transaction => self.pool.options().get_max_connections() + 1,
        };
        let mut args = args;
        // A connection of this transaction's, else one kept from an earlier transaction
        // (`stale`: to be pinged first), else one from the pool.
        let (mut held, mut stale, fresh) = match conn {
            Conn::Unused => match self.warm.take() {
                Some((c, stale)) => (Some(c), stale, true),
                None => (None, false, true),
            },
            Conn::Plain(c) | Conn::Open(c) => (Some(c), false, false),
        };
        let (held, out) = run(&self.handle, async move {
            let mut tried = 0;
            loop {
                if stale {
                    stale = false;
                    if let Some(mut c) = held.take() {
                        match sqlx::Connection::ping(&mut *c).await {
                            Ok(()) => held = Some(c),
                            Err(_) => c.close_on_drop(),
                        }
                    }
                }
                let mut c = match held.take() {
                    Some(c) => c,
                    None => match pool.acquire().await {
                        Ok(c) => c,
                        Err(e) => return (None, Err(e)),
                    },
                };
                tried += 1;
                // Kept for another try only while one may follow.
                let these = if fresh && tried < tries {
                    args.clone()
                } else {
                    std::mem::take(&mut args)
                };
                let sent = in_time(deadline, async {
                    if let Some(begin) = begin {
                        sqlx::Executor::execute(&mut *c, begin).await?;
                    }
                    bind_all(sql, these).fetch_all(&mut *c).await
                })
                .await;
                match sent {
                    // A statement past its deadline is not sent again: that would double the
                    // wait of a server that does not answer.
                    Err(e) if fresh && tried < tries && connection_lost(&e) && !overdue(&e) => {
                        tracing::debug!(error = %e, "a pooled database connection was gone; using another");
                        c.close_on_drop();
                    }
                    sent => return (Some(c), sent),
                }
            }
        })?;
        let open = was_open || begin.is_some();
        if out.as_ref().is_err_and(connection_lost) {
            self.broken.set(true);
        }
        *self.conn.borrow_mut() = match held {
            None => Conn::Unused,
            Some(c) if open => Conn::Open(c),
            Some(c) => Conn::Plain(c),
        };
        if out.is_err() && open {
            self.failed.set(true);
        }
        out.map_err(store_error)
    }

    /// Sends the pending changes inside the transaction (one round trip; none when there
    /// are none).
    fn flush(&self) -> Result<(), StoreError> {
        self.send_changes(Needs::Transaction)
    }

    /// Sends the pending changes as one `gatehouse_apply` call: inside the transaction, or
    /// (`Needs::ItsOwn`, at the commit of a transaction that never needed BEGIN) as a
    /// statement PostgreSQL commits by itself.
    fn send_changes(&self, needs: Needs) -> Result<(), StoreError> {
        let changes = std::mem::take(&mut *self.pending.borrow_mut());
        self.unsure.borrow_mut().clear();
        if changes.is_empty() {
            return Ok(());
        }
        let Apply { op, k, num, blob } = changes;
        let [k1, k2, k3, k4, k5] = k;
        self.statement(
            needs,
            "SELECT gatehouse_apply($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            vec![
                text(&self.origin),
                text(SESSION_CHANNEL),
                Arg::Texts(op),
                Arg::Texts(k1),
                Arg::Texts(k2),
                Arg::Texts(k3),
                Arg::Texts(k4),
                Arg::Texts(k5),
                Arg::Ints(num),
                Arg::Blobs(blob),
            ],
        )?;
        Ok(())
    }

    /// Sends the pending changes first when a read depends on rows they may change (a
    /// read-only transaction has none).
    fn settled(&self) -> Result<(), StoreError> {
        if self.writable {
            self.flush()?;
        }
        Ok(())
    }

    /// A user id by index entry or link: known to this transaction, else read (and kept).
    fn id_of(
        &self,
        key: IdKey,
        sql: &'static str,
        args: Vec<Arg>,
    ) -> Result<Option<String>, StoreError> {
        if !self.writable {
            return self.one_text(sql, args);
        }
        if let Some(known) = self.ids_known.borrow().get(&key) {
            return Ok(known.clone());
        }
        if self.unsure.borrow().contains(&key) {
            self.flush()?;
        }
        let read = first_text(&self.statement(Needs::Nothing, sql, args)?)?;
        self.ids_known.borrow_mut().insert(key, read.clone());
        Ok(read)
    }

    /// Whether a record exists, as this transaction sees it; a row that does is locked
    /// (`FOR UPDATE`), as the DELETE that follows would lock it.
    fn exists_locked(&self, rows: Rows, key: &str) -> Result<bool, StoreError> {
        if let Some(known) = self.rows_known.borrow().get(&(rows, key.to_string())) {
            return Ok(known.is_some());
        }
        let sql = match rows {
            Rows::Users => "SELECT record FROM users WHERE id = $1 FOR UPDATE",
            Rows::Sessions => "SELECT record FROM sessions WHERE sid = $1 FOR UPDATE",
        };
        let read = self.one_bytes(sql, vec![text(key)])?;
        let exists = read.is_some();
        self.rows_known
            .borrow_mut()
            .insert((rows, key.to_string()), read);
        Ok(exists)
    }

    fn one_bytes(&self, sql: &'static str, args: Vec<Arg>) -> Result<Option<Vec<u8>>, StoreError> {
        self.rows(sql, args)?
            .first()
            .map(|row| row.try_get::<Vec<u8>, _>(0).map_err(store_error))
            .transpose()
    }

    fn one_text(&self, sql: &'static str, args: Vec<Arg>) -> Result<Option<String>, StoreError> {
        first_text(&self.rows(sql, args)?)
    }

    fn all_bytes(&self, sql: &'static str, args: Vec<Arg>) -> Result<Vec<Vec<u8>>, StoreError> {
        self.rows(sql, args)?
            .iter()
            .map(|row| row.try_get::<Vec<u8>, _>(0).map_err(store_error))
            .collect()
    }
}

/// The first column of the first row, as text (`None`: no row, or NULL).
fn first_text(rows: &[PgRow]) -> Result<Option<String>, StoreError> {
    match rows.first() {
        Some(row) => row.try_get::<Option<String>, _>(0).map_err(store_error),
        None => Ok(None),
    }
}
impl RawRead for PgTx {
    fn get(&self, rows: Rows, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if self.writable {
            if let Some(known) = self.rows_known.borrow().get(&(rows, key.to_string())) {
                return Ok(known.clone());
            }
        }
        let sql = match (rows, self.writable) {
            // A write transaction locks the account it reads: two replicas changing one
            // account (a TOTP step, a failure count) take turns instead of losing a change.
            (Rows::Users, true) => "SELECT record FROM users WHERE id = $1 FOR UPDATE",
            (Rows::Users, false) => "SELECT record FROM users WHERE id = $1",
            // Likewise a session amended in place (a refresh at one replica, a last use
            // at the other): neither change is lost.
            (Rows::Sessions, true) => "SELECT record FROM sessions WHERE sid = $1 FOR UPDATE",
            (Rows::Sessions, false) => "SELECT record FROM sessions WHERE sid = $1",
        };
        let read = self.one_bytes(sql, vec![text(key)])?;
        if self.writable {
            self.rows_known
                .borrow_mut()
                .insert((rows, key.to_string()), read.clone());
        }
        Ok(read)
    }

    fn scan(&self, rows: Rows) -> Result<Vec<Vec<u8>>, StoreError> {
        self.settled()?;
        let sql = match rows {
            Rows::Users => "SELECT record FROM users ORDER BY id",
            Rows::Sessions => "SELECT record FROM sessions ORDER BY sid",
        };
        self.all_bytes(sql, vec![])
    }

    fn index(&self, index: Index, key: &str) -> Result<Option<String>, StoreError> {
        let sql = match index {
            Index::Emails => "SELECT user_id FROM user_emails WHERE email = $1",
            Index::Usernames => "SELECT user_id FROM user_usernames WHERE username = $1",
        };
        self.id_of(IdKey::Index(index, key.to_string()), sql, vec![text(key)])
    }

    fn link(&self, connection: &str, subject: &str) -> Result<Option<String>, StoreError> {
        self.id_of(
            IdKey::Link(connection.to_string(), subject.to_string()),
            "SELECT user_id FROM user_links WHERE connection = $1 AND subject = $2",
            vec![text(connection), text(subject)],
        )
    }

    fn count(&self, what: Counted) -> Result<u64, StoreError> {
        self.settled()?;
        let sql = match what {
            Counted::Users => "SELECT count(*) FROM users",
            Counted::Links => "SELECT count(*) FROM user_links",
            Counted::Emails => "SELECT count(*) FROM user_emails",
            Counted::Usernames => "SELECT count(*) FROM user_usernames",
            Counted::Sessions => "SELECT count(*) FROM sessions",
            Counted::Audit => "SELECT count(*) FROM audit",
        };
        let rows = self.rows(sql, vec![])?;
        let n: i64 = match rows.first() {
            Some(row) => row.try_get(0).map_err(store_error)?,
            None => 0,
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn sessions_of(&self, owner: &SessionOwner) -> Result<Vec<String>, StoreError> {
        self.settled()?;
        let (sql, args) = match owner {
            SessionOwner::User(user) => (
                "SELECT sid FROM sessions WHERE user_id = $1 ORDER BY sid",
                vec![text(user)],
            ),
            SessionOwner::Subject {
                connection,
                subject,
            } => (
                "SELECT sid FROM sessions WHERE connection = $1 AND subject = $2 ORDER BY sid",
                vec![text(connection), text(subject)],
            ),
            SessionOwner::IdpSession {
                connection,
                idp_sid,
            } => (
                "SELECT sid FROM sessions WHERE connection = $1 AND idp_sid = $2 ORDER BY sid",
                vec![text(connection), text(idp_sid)],
            ),
        };
        self.rows(sql, args)?
            .iter()
            .map(|row| row.try_get::<String, _>(0).map_err(store_error))
            .collect()
    }

    fn audit(&self, user_id: Option<&str>) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.settled()?;
        self.rows(
            "SELECT seq, entry FROM audit WHERE $1::text IS NULL OR user_id = $1 ORDER BY seq",
            vec![Arg::MaybeText(user_id.map(str::to_string))],
        )?
        .iter()
        .map(|row| {
            let seq: i64 = row.try_get(0).map_err(store_error)?;
            let seq = u64::try_from(seq).map_err(|e| StoreError::Db(e.to_string()))?;
            Ok((seq, row.try_get(1).map_err(store_error)?))
        })
        .collect()
    }

    fn keyed(&self, rows: Rows) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.settled()?;
        // `COLLATE "C"`: byte order, the order the embedded file keeps.
        let sql = match rows {
            Rows::Users => "SELECT id, record FROM users ORDER BY id COLLATE \"C\"",
            Rows::Sessions => "SELECT sid, record FROM sessions ORDER BY sid COLLATE \"C\"",
        };
        self.rows(sql, vec![])?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get(0).map_err(store_error)?,
                    row.try_get(1).map_err(store_error)?,
                ))
            })
            .collect()
    }

    fn index_entries(&self, index: Index) -> Result<Vec<(String, String)>, StoreError> {
        self.settled()?;
        let sql = match index {
            Index::Emails => "SELECT email, user_id FROM user_emails ORDER BY email COLLATE \"C\"",
            Index::Usernames => {
                "SELECT username, user_id FROM user_usernames ORDER BY username COLLATE \"C\""
            }
        };
        self.rows(sql, vec![])?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get(0).map_err(store_error)?,
                    row.try_get(1).map_err(store_error)?,
                ))
            })
            .collect()
    }

    fn links(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        self.settled()?;
        self.rows(
            "SELECT connection, subject, user_id FROM user_links \
             ORDER BY connection COLLATE \"C\", subject COLLATE \"C\"",
            vec![],
        )?
        .iter()
        .map(|row| {
            Ok((
                row.try_get(0).map_err(store_error)?,
                row.try_get(1).map_err(store_error)?,
                row.try_get(2).map_err(store_error)?,
            ))
        })
        .collect()
    }

    fn prefetch(&self, ahead: &Ahead<'_>) -> Result<(), StoreError> {
        if !self.writable {
            return Ok(());
        }
        // Only what this transaction does not know yet (nor may have changed unseen).
        let wanted = |key: IdKey| {
            let fetch =
                !self.ids_known.borrow().contains_key(&key) && !self.unsure.borrow().contains(&key);
            fetch.then_some(key)
        };
        let link = ahead
            .link
            .and_then(|(c, s)| wanted(IdKey::Link(c.to_string(), s.to_string())));
        let email = ahead
            .email
            .and_then(|e| wanted(IdKey::Index(Index::Emails, e.to_string())));
        let username = ahead
            .username
            .and_then(|u| wanted(IdKey::Index(Index::Usernames, u.to_string())));
        if link.is_none() && email.is_none() && username.is_none() {
            return Ok(());
        }
        let (connection, subject) = match &link {
            Some(IdKey::Link(c, s)) => (Some(c.clone()), Some(s.clone())),
            _ => (None, None),
        };
        let key_of = |key: &Option<IdKey>| match key {
            Some(IdKey::Index(_, k)) => Some(k.clone()),
            _ => None,
        };
        let rows = self.statement(
            Needs::Nothing,
            "SELECT (SELECT user_id FROM user_links WHERE connection = $1 AND subject = $2), \
                    (SELECT user_id FROM user_emails WHERE email = $3), \
                    (SELECT user_id FROM user_usernames WHERE username = $4)",
            vec![
                Arg::MaybeText(connection),
                Arg::MaybeText(subject),
                Arg::MaybeText(key_of(&email)),
                Arg::MaybeText(key_of(&username)),
            ],
        )?;
        let Some(row) = rows.first() else {
            return Err(StoreError::Db("the look-ups returned no row".into()));
        };
        let mut known = self.ids_known.borrow_mut();
        for (column, key) in [link, email, username].into_iter().enumerate() {
            if let Some(key) = key {
                let holder: Option<String> = row.try_get(column).map_err(store_error)?;
                known.insert(key, holder);
            }
        }
        Ok(())
    }
}

impl RawWrite for PgTx {
    fn put(&mut self, rows: Rows, key: &str, value: &[u8]) -> Result<(), StoreError> {
        match rows {
            Rows::Users => self.pending.get_mut().push(
                Change::PutUser,
                [Some(key), None, None, None, None],
                None,
                Some(value.to_vec()),
            ),
            Rows::Sessions => {
                let columns: SessionColumns =
                    serde_json::from_slice(value).map_err(|e| StoreError::Decode(e.to_string()))?;
                self.pending.get_mut().push(
                    Change::PutSession,
                    [
                        Some(key),
                        columns.identity.user_id.as_deref(),
                        Some(columns.identity.connection.as_str()),
                        Some(columns.identity.subject.as_str()),
                        columns.idp_sid.as_deref(),
                    ],
                    Some(i64::try_from(columns.expires_at).unwrap_or(i64::MAX)),
                    Some(value.to_vec()),
                );
            }
        }
        self.rows_known
            .get_mut()
            .insert((rows, key.to_string()), Some(value.to_vec()));
        Ok(())
    }

    fn remove(&mut self, rows: Rows, key: &str) -> Result<bool, StoreError> {
        if !self.exists_locked(rows, key)? {
            return Ok(false);
        }
        let change = match rows {
            Rows::Users => Change::RemoveUser,
            Rows::Sessions => Change::RemoveSession,
        };
        self.pending
            .get_mut()
            .push(change, [Some(key), None, None, None, None], None, None);
        self.rows_known
            .get_mut()
            .insert((rows, key.to_string()), None);
        Ok(true)
    }

    fn claim(
        &mut self,
        index: Index,
        key: &str,
        user_id: &str,
        replacing: Option<&str>,
    ) -> Result<(), StoreError> {
        // Checked when applied: an entry held by another account (not `replacing`) fails the
        // commit as a conflict, and the transaction runs again.
        self.pending.get_mut().push(
            Change::Claim(index),
            [Some(key), Some(user_id), replacing, None, None],
            None,
            None,
        );
        let entry = IdKey::Index(index, key.to_string());
        self.unsure.get_mut().remove(&entry);
        self.ids_known
            .get_mut()
            .insert(entry, Some(user_id.to_string()));
        Ok(())
    }

    fn release(&mut self, index: Index, key: &str, user_id: &str) -> Result<(), StoreError> {
        self.pending.get_mut().push(
            Change::Release(index),
            [Some(key), Some(user_id), None, None, None],
            None,
            None,
        );
        let entry = IdKey::Index(index, key.to_string());
        match self.ids_known.get_mut().get_mut(&entry) {
            Some(holder) => {
                if holder.as_deref() == Some(user_id) {
                    *holder = None;
                }
            }
            None => {
                self.unsure.get_mut().insert(entry);
            }
        }
        Ok(())
    }

    fn set_link(
        &mut self,
        connection: &str,
        subject: &str,
        user_id: &str,
    ) -> Result<(), StoreError> {
        // Checked when applied: a link to another account that still exists fails the commit
        // as a conflict, and the transaction runs again (and then finds the link).
        self.pending.get_mut().push(
            Change::SetLink,
            [Some(connection), Some(subject), Some(user_id), None, None],
            None,
            None,
        );
        self.ids_known.get_mut().insert(
            IdKey::Link(connection.to_string(), subject.to_string()),
            Some(user_id.to_string()),
        );
        Ok(())
    }

    fn remove_link(&mut self, connection: &str, subject: &str) -> Result<(), StoreError> {
        self.pending.get_mut().push(
            Change::RemoveLink,
            [Some(connection), Some(subject), None, None, None],
            None,
            None,
        );
        self.ids_known.get_mut().insert(
            IdKey::Link(connection.to_string(), subject.to_string()),
            None,
        );
        Ok(())
    }

    fn append_audit(
        &mut self,
        user_id: Option<&str>,
        encode: &dyn Fn(u64) -> Result<Vec<u8>, StoreError>,
    ) -> Result<(), StoreError> {
        // Numbered when applied (migration 3), in the order entries are written; the
        // number is the row's (`audit` reads it with the entry).
        let entry = encode(0)?;
        self.pending.get_mut().push(
            Change::Audit,
            [user_id, None, None, None, None],
            None,
            Some(entry),
        );
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        if self.failed.get() {
            return Err(StoreError::Db(
                "a statement of the transaction failed: it was rolled back".into(),
            ));
        }
        if !matches!(self.conn.get_mut(), Conn::Open(_)) {
            // BEGIN was never needed: the changes commit as one statement.
            return self.send_changes(Needs::ItsOwn);
        }
        self.flush()?;
        let Conn::Open(mut conn) = std::mem::replace(self.conn.get_mut(), Conn::Unused) else {
            return Err(StoreError::Db("the transaction has ended".into()));
        };
        self.round_trips
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (warm, deadline) = (self.warm.clone(), self.deadline);
        run(&self.handle, async move {
            let done = in_time(deadline, sqlx::Executor::execute(&mut *conn, "COMMIT")).await;
            match &done {
                Ok(_) => warm.keep(conn),
                Err(_) => conn.close_on_drop(),
            }
            done
        })?
        .map(drop)
        .map_err(store_error)
    }

    fn put_audit(
        &mut self,
        seq: u64,
        user_id: Option<&str>,
        entry: &[u8],
    ) -> Result<(), StoreError> {
        let seq = i64::try_from(seq).map_err(|e| StoreError::Db(e.to_string()))?;
        self.flush()?;
        self.execute(
            "INSERT INTO audit (seq, user_id, entry) VALUES ($1, $2, $3)",
            vec![
                Arg::Int(seq),
                Arg::MaybeText(user_id.map(str::to_string)),
                Arg::Bytes(entry.to_vec()),
            ],
        )?;
        // Later appends (nextval) number after the highest entry stored.
        self.execute(
            "SELECT setval(pg_get_serial_sequence('audit', 'seq'), \
             GREATEST((SELECT max(seq) FROM audit), $1))",
            vec![Arg::Int(seq)],
        )?;
        Ok(())
    }
}

/// What a replica learns from the session events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionNews {
    /// These sessions changed or ended at another replica: read them again.
    Changed(Vec<String>),
    /// Events may have been missed (away longer than events are kept): read every cached
    /// session again.
    Lost,
}

/// How long session events and used login states are kept before they are pruned.
const EVENTS_KEPT: Duration = Duration::from_secs(3600);
/// How often the follower looks without being told (a NOTIFY lost with a connection).
const POLL: Duration = Duration::from_secs(2);
/// Events this recent are read again each time (a transaction that took its sequence number
/// before another but committed after it is not skipped); seen ones are not reported twice.
const REREAD_SECS: i64 = 30;

impl PgStore {
    /// Whether the database answered the last time the follower asked (`gatehouse_store_up`).
    pub fn is_up(&self) -> bool {
        self.up.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the database has been unreachable for longer than `offline_grace`: then
    /// sessions are refused too (fail closed), not only logins.
    pub fn offline_past_grace(&self) -> bool {
        // Asked on every authenticated request: while the database answers (the usual
        // case) one atomic load, no lock.
        if self.is_up() {
            return false;
        }
        self.down_since
            .lock()
            .ok()
            .and_then(|since| *since)
            .is_some_and(|since| since.elapsed() >= self.offline_grace)
    }

    /// Follows the other replicas' session changes: LISTEN on [`SESSION_CHANNEL`], and read
    /// `session_events` after the last one seen (after every notification, every [`POLL`],
    /// and after a reconnect, so nothing committed is missed). `on_news` runs on a blocking
    /// thread (it may read the store). Reconnects with backoff; prunes old events.
    pub fn follow_sessions(&self, on_news: std::sync::Arc<dyn Fn(SessionNews) + Send + Sync>) {
        let pool = self.pool.clone();
        let up = self.up.clone();
        let down_since = self.down_since.clone();
        let mark = move |answered: bool| {
            let was = up.swap(answered, std::sync::atomic::Ordering::Relaxed);
            if let Ok(mut since) = down_since.lock() {
                match (answered, *since) {
                    (true, _) => *since = None,
                    (false, None) => *since = Some(std::time::Instant::now()),
                    (false, Some(_)) => {}
                }
            }
            was
        };
        self.handle.spawn(async move {
            let mut follower = Follower {
                pool,
                last: None,
                seen: std::collections::HashMap::new(),
                last_ok: std::time::Instant::now(),
            };
            let mut backoff = Duration::from_millis(100);
            let mut next_prune = std::time::Instant::now();
            loop {
                let listener = async {
                    let mut listener =
                        sqlx::postgres::PgListener::connect_with(&follower.pool).await?;
                    listener.listen(SESSION_CHANNEL).await?;
                    Ok::<_, sqlx::Error>(listener)
                };
                let mut listener = match listener.await {
                    Ok(listener) => listener,
                    Err(e) => {
                        if mark(false) {
                            tracing::error!(error = %e, "the store (PostgreSQL) is unreachable; reconnecting");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
                loop {
                    match follower.catch_up().await {
                        Ok(news) => {
                            if !mark(true) {
                                tracing::info!("the store (PostgreSQL) answers again");
                            }
                            backoff = Duration::from_millis(100);
                            if let Some(news) = news {
                                let on_news = on_news.clone();
                                let _ = tokio::task::spawn_blocking(move || on_news(news)).await;
                            }
                        }
                        Err(e) => {
                            if mark(false) {
                                tracing::error!(error = %e, "the store (PostgreSQL) is unreachable; reconnecting");
                            }
                            break;
                        }
                    }
                    if std::time::Instant::now() >= next_prune {
                        next_prune = std::time::Instant::now() + Duration::from_secs(300);
                        follower.prune().await;
                    }
                    match tokio::time::timeout(POLL, listener.try_recv()).await {
                        Ok(Ok(_)) | Err(_) => {}
                        Ok(Err(_)) => break,
                    }
                }
                tokio::time::sleep(backoff).await;
            }
        });
    }

    /// Marks a login state used; `false` when another replica used it first.
    pub fn use_login_state(&self, state: &str, expires_at: u64) -> Result<bool, StoreError> {
        let state = state.to_string();
        let expires = i64::try_from(expires_at).unwrap_or(i64::MAX);
        self.on_pool(|pool| async move {
            sqlx::query(
                "INSERT INTO used_states (state, expires_at) VALUES ($1, $2) ON CONFLICT (state) DO NOTHING",
            )
            .bind(state)
            .bind(expires)
            .execute(&pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
    }
}

struct Follower {
    pool: PgPool,
    /// The highest event sequence seen (`None` before the first read: start from now).
    last: Option<i64>,
    /// Recent events already reported, by sequence number, with when they were seen.
    seen: std::collections::HashMap<i64, std::time::Instant>,
    last_ok: std::time::Instant,
}

impl Follower {
    async fn catch_up(&mut self) -> Result<Option<SessionNews>, sqlx::Error> {
        let Some(last) = self.last else {
            let max: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM session_events")
                .fetch_one(&self.pool)
                .await?;
            self.last = Some(max.unwrap_or(0));
            self.last_ok = std::time::Instant::now();
            return Ok(None);
        };
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT seq, sid, origin FROM session_events \
             WHERE seq > $1 OR at > now() - make_interval(secs => $2) ORDER BY seq",
        )
        .bind(last)
        .bind(REREAD_SECS as f64)
        .fetch_all(&self.pool)
        .await?;
        let away = self.last_ok.elapsed();
        self.last_ok = std::time::Instant::now();
        let now = std::time::Instant::now();
        self.seen
            .retain(|_, at| now.duration_since(*at) < Duration::from_secs(2 * REREAD_SECS as u64));
        let mut changed = Vec::new();
        for (seq, sid, origin) in rows {
            self.last = Some(self.last.unwrap_or(0).max(seq));
            // This replica's own events count too: a session it read from the store just
            // before its own deletion committed must not stay.
            let _ = origin;
            if self.seen.insert(seq, now).is_some() {
                continue;
            }
            changed.push(sid);
        }
        if away > EVENTS_KEPT / 2 {
            return Ok(Some(SessionNews::Lost));
        }
        changed.sort();
        changed.dedup();
        Ok((!changed.is_empty()).then_some(SessionNews::Changed(changed)))
    }

    async fn prune(&self) {
        let kept = EVENTS_KEPT.as_secs() as f64;
        let events =
            sqlx::query("DELETE FROM session_events WHERE at < now() - make_interval(secs => $1)")
                .bind(kept)
                .execute(&self.pool)
                .await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let states = sqlx::query("DELETE FROM used_states WHERE expires_at < $1")
            .bind(i64::try_from(now).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await;
        // Sessions past their lifetime that no replica held when they ended.
        let sessions = sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
            .bind(i64::try_from(now).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await;
        if let (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) = (events, states, sessions) {
            tracing::warn!(error = %e, "pruning old session events, login states or expired sessions failed");
        }
    }
}

/// What `gatehouse store migrate` did: the schema version before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    pub before: i64,
    pub after: i64,
}

impl PgStore {
    /// Brings the database's schema to this build's version whatever `auto_migrate` says
    /// (`gatehouse store migrate`). A schema newer than this build is refused, naming both
    /// versions, and left alone.
    pub fn migrate_explicitly(options: &PgOptions) -> Result<Migrated, StoreError> {
        let store = Self::connect(options)?;
        let before = store.database_version()?;
        let known = schema_version();
        store.refuse_newer(before)?;
        if before < known {
            store.migrate()?;
        }
        Ok(Migrated {
            before,
            after: store.database_version()?,
        })
    }
}

impl PgOptions {
    /// The options `[store] backend = "postgres"` gives.
    pub fn configured(pg: &crate::config::model::PostgresStore) -> Self {
        Self {
            url: pg.url.0.clone(),
            pool_size: pg.pool_size,
            auto_migrate: pg.auto_migrate,
            acquire_timeout: Duration::from_secs(3),
            offline_grace: pg.offline_grace,
        }
    }
}

impl PgStore {
    /// Keeps an opaque pending record (a login waiting for its second factor, an emailed
    /// code) under `id` until `expires_at`, replacing one kept under the same id.
    pub fn put_pending(&self, id: &str, record: &[u8], expires_at: u64) -> Result<(), StoreError> {
        let (id, record) = (id.to_string(), record.to_vec());
        let expires = i64::try_from(expires_at).unwrap_or(i64::MAX);
        self.on_pool(|pool| async move {
            sqlx::query(
                "INSERT INTO pending_logins (id, record, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record, expires_at = EXCLUDED.expires_at",
            )
            .bind(id)
            .bind(record)
            .bind(expires)
            .execute(&pool)
            .await
            .map(drop)
        })
    }

    /// The pending record kept under `id`, unless it expired by `now`.
    pub fn pending(&self, id: &str, now: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let id = id.to_string();
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        self.on_pool(|pool| async move {
            sqlx::query_scalar::<_, Vec<u8>>(
                "SELECT record FROM pending_logins WHERE id = $1 AND expires_at > $2",
            )
            .bind(id)
            .bind(now)
            .fetch_optional(&pool)
            .await
        })
    }

    /// Takes the pending record kept under `id` out, in one statement (`DELETE ...
    /// RETURNING`): of two replicas taking the same id at once, only one gets it. An expired
    /// record is deleted and not returned.
    pub fn take_pending(&self, id: &str, now: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let id = id.to_string();
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        let taken = self.on_pool(|pool| async move {
            sqlx::query_as::<_, (Vec<u8>, i64)>(
                "DELETE FROM pending_logins WHERE id = $1 RETURNING record, expires_at",
            )
            .bind(id)
            .fetch_optional(&pool)
            .await
        })?;
        Ok(taken.and_then(|(record, expires)| (expires > now).then_some(record)))
    }

    /// Changes the pending record under `id` in one transaction, the row locked (`FOR
    /// UPDATE`) so replicas take turns: `change` gets the record (unless expired by `now`) and
    /// returns the one to keep with its expiry (`None`: delete it) and an answer.
    pub fn update_pending<T>(
        &self,
        id: &str,
        now: u64,
        change: impl FnOnce(Option<Vec<u8>>) -> (Option<(Vec<u8>, u64)>, T),
    ) -> Result<T, StoreError> {
        let tx = self.begin(true)?;
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        let current = tx.one_bytes(
            "SELECT record FROM pending_logins WHERE id = $1 AND expires_at > $2 FOR UPDATE",
            vec![text(id), Arg::Int(now)],
        )?;
        let (keep, answer) = change(current);
        match keep {
            Some((record, expires_at)) => tx.execute(
                "INSERT INTO pending_logins (id, record, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record, expires_at = EXCLUDED.expires_at",
                vec![
                    text(id),
                    Arg::Bytes(record),
                    Arg::Int(i64::try_from(expires_at).unwrap_or(i64::MAX)),
                ],
            )?,
            None => tx.execute(
                "DELETE FROM pending_logins WHERE id = $1",
                vec![text(id)],
            )?,
        };
        Box::new(tx).commit()?;
        Ok(answer)
    }

    /// Deletes the pending records expired by `now`; returns how many.
    pub fn prune_pending(&self, now: u64) -> Result<u64, StoreError> {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        self.on_pool(|pool| async move {
            sqlx::query("DELETE FROM pending_logins WHERE expires_at <= $1")
                .bind(now)
                .execute(&pool)
                .await
                .map(|done| done.rows_affected())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_call_waits_for_an_answer_another_thread_of_the_engine_gives() {
        let engine = engine();
        let (answer, answered) = tokio::sync::oneshot::channel();
        engine.spawn(async move {
            tokio::task::yield_now().await;
            let _ = answer.send(7);
        });
        let got = run(engine.handle(), async move { answered.await.unwrap() });
        assert_eq!(got.unwrap(), 7);
    }

    #[test]
    fn a_call_from_a_blocking_thread_of_another_runtime_is_answered() {
        let engine = engine();
        let handle = engine.handle().clone();
        let other = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let got = other.block_on(async move {
            tokio::task::spawn_blocking(move || {
                run(&handle, async {
                    // Spawned where the call runs: on the engine, whose runtime is entered.
                    tokio::spawn(async { 5 }).await.unwrap()
                })
            })
            .await
            .unwrap()
        });
        assert_eq!(got.unwrap(), 5);
    }

    #[test]
    fn a_call_that_panics_fails_as_unavailable() {
        let engine = engine();
        let got: Result<(), _> = run(engine.handle(), async { panic!("driver bug") });
        assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
    }
}
