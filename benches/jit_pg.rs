//! JIT provisioning of new users on PostgreSQL and on redb, side by side in one run (issue 11,
//! "Measured").
//!
//! Each login is the one `Auth::complete_login` commits: JIT provisioning plus the new session
//! record in one transaction, through `GroupCommit` as the login uses it (on redb one writer
//! thread that puts the logins queued meanwhile into one transaction; on PostgreSQL each
//! login's own transaction on its caller's thread and pooled connection), answered only once
//! that transaction is durable, then the session made live. `THREADS` logins (default 8) are in
//! flight at once; every login is a user never seen before (unique subject, username and
//! email), so each one creates an account.
//!
//! Both engines run in the same process, in interleaved rounds (`ROUNDS`, default 3, of
//! `SECONDS` each, default 5: redb, then PostgreSQL, each round), so drift on a shared machine
//! hits both alike. Printed per round and engine: durable provisions/s, and a login's store
//! time (from the call into the group commit to its answer: queueing, the transaction and its
//! commit) at p50 and p99, PostgreSQL's round trips per login (statements, BEGIN and
//! COMMIT, counted by the engine), and CPU time per login: the whole machine's (`/proc/stat`:
//! the engine, the bench and the PostgreSQL server, which shares the cores) and this
//! process's alone (`/proc/self/stat`); then the medians and the PostgreSQL/redb ratio of each
//! round. The machine's cores divided by its CPU time per login is about what it could do
//! with every core busy with logins.
//!
//! PostgreSQL: a throwaway cluster started the way the tests start one
//! (`tests/common/postgres.rs`: initdb into a temp dir, `fsync = on`,
//! `synchronous_commit = on`, stopped and removed at exit), or the server at
//! `GATEHOUSE_TEST_PG_URL` (a fresh database is made on it). The bench prints the server's
//! `fsync` and `synchronous_commit` so the figure's durability is on record. redb: a file in a
//! temp dir under `$TMPDIR` with the store's own durable commits.
//!
//!   cargo bench --bench jit_pg
//!   ROUNDS=3 SECONDS=10 THREADS=8 cargo bench --bench jit_pg

#[path = "../tests/common/postgres.rs"]
mod postgres;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse::auth::session::Sessions;
use gatehouse::clock::Clock;
use gatehouse::config::model::Connection;
use gatehouse::identity::jit::{provision, JitAction, Provisioned};
use gatehouse::identity::Identity;
use gatehouse::seal::Sealer;
use gatehouse::store::postgres::PgOptions;
use gatehouse::store::sessions::{PendingSession, SessionRecord, Tokens, SESSION_RECORD_VERSION};
use gatehouse::store::writer::GroupCommit;
use gatehouse::store::Store;

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

/// One engine under test: its store, the group commit over it, and the session cache.
struct Engine {
    name: &'static str,
    store: Arc<Store>,
    commits: GroupCommit,
    sessions: Sessions,
    connection: Connection,
    tokens: Tokens,
}

impl Engine {
    fn new(name: &'static str, store: Store) -> Self {
        let config = gatehouse::config::parse(CONFIG).expect("bench config");
        let connection = config.connections[0].clone();
        assert!(connection.jit, "connections provision users by default");
        let store = Arc::new(store);
        let sealer = Sealer::new(vec![[9; 32]]).expect("sealer");
        let sessions = Sessions::new(
            config.session.clone(),
            sealer,
            Arc::clone(&store),
            Clock::system(),
        )
        .expect("sessions");
        let commits = GroupCommit::start(Arc::clone(&store), name).expect("writer thread");
        Self {
            name,
            store,
            commits,
            sessions,
            connection,
            // IdP tokens of a typical size, kept in every session record as a real login does.
            tokens: Tokens {
                id_token: Some("e".repeat(900)),
                access_token: Some("a".repeat(800)),
                refresh_token: Some("r".repeat(64)),
                access_expires_at: Some(Clock::system().now() + 300),
            },
        }
    }

    /// One new user's login through the group commit; returns once it is durable.
    fn login(&self, claims: Identity) -> PendingSession {
        let (connection, tokens) = (self.connection.clone(), self.tokens.clone());
        self.commits
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

    /// `threads` threads logging in new users for `length`; the figures of the round.
    fn round(&self, threads: usize, length: Duration) -> Round {
        let trips_before = self.round_trips();
        let busy_before = machine_busy();
        let own_before = own_cpu();
        let start = Instant::now();
        let deadline = start + length;
        let mut times: Vec<Duration> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(move || {
                        let mut mine = Vec::new();
                        while Instant::now() < deadline {
                            let claims = fresh_user();
                            let began = Instant::now();
                            let pending = self.login(claims);
                            mine.push(began.elapsed());
                            std::hint::black_box(self.sessions.activate(pending));
                        }
                        mine
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("login thread"))
                .collect()
        });
        let elapsed = start.elapsed();
        let busy = machine_busy()
            .zip(busy_before)
            .map(|(after, before)| after.saturating_sub(before));
        let own = own_cpu()
            .zip(own_before)
            .map(|(after, before)| after.saturating_sub(before));
        times.sort();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        let trips = self.round_trips() - trips_before;
        Round {
            per_second: times.len() as f64 / elapsed.as_secs_f64(),
            trips_per_login: trips as f64 / times.len().max(1) as f64,
            cpu_per_login: busy.map(|b| b.as_secs_f64() * 1e6 / times.len().max(1) as f64),
            own_cpu_per_login: own.map(|b| b.as_secs_f64() * 1e6 / times.len().max(1) as f64),
            logins: times.len(),
            p50: at(0.50),
            p99: at(0.99),
        }
    }

    /// Round trips to the database so far (PostgreSQL; 0 for redb).
    fn round_trips(&self) -> u64 {
        self.store.postgres().map_or(0, |pg| pg.round_trips())
    }

    fn accounts(&self) -> u64 {
        self.store
            .read(|tx| tx.user_count())
            .expect("account count")
    }
}

/// What one engine did in one round.
#[derive(Debug, Clone, Copy)]
struct Round {
    per_second: f64,
    /// Round trips to the database per login (PostgreSQL).
    trips_per_login: f64,
    /// CPU time the whole machine spent per login (us): the engine, the bench and, for
    /// PostgreSQL, the server's processes (`/proc/stat`; `None` where it cannot be read).
    cpu_per_login: Option<f64>,
    /// CPU time of this process (the engine, its runtime and the bench) per login (us).
    own_cpu_per_login: Option<f64>,
    logins: usize,
    p50: Duration,
    p99: Duration,
}

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

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time every core of the machine has spent busy so far (user, nice, system, irq and
/// softirq in `/proc/stat`; idle, I/O wait and time stolen by the hypervisor are not).
fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ..., in 1/100 s
    let busy = ticks.first()? + ticks.get(1)? + ticks.get(2)? + ticks.get(5)? + ticks.get(6)?;
    Some(Duration::from_millis(busy * 10))
}

/// CPU time this process has spent so far (user and system, `/proc/self/stat`).
fn own_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name (which ends with the last ')'): utime is the 12th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let rounds: usize = setting("ROUNDS", 3).max(1);
    let length = Duration::from_secs_f64(setting("SECONDS", 5.0));
    let threads: usize = setting("THREADS", 8).max(1);

    let server = postgres::server().expect("a PostgreSQL server for the bench");
    let url = server.create_database();
    let show = |name: &str| server.psql(&url, &format!("SHOW {name}")).expect("SHOW");
    let (fsync, synchronous_commit) = (show("fsync"), show("synchronous_commit"));
    eprintln!(
        "PostgreSQL {}: fsync = {fsync}, synchronous_commit = {synchronous_commit}",
        show("server_version")
    );
    assert_eq!(
        (fsync.as_str(), synchronous_commit.as_str()),
        ("on", "on"),
        "the PostgreSQL figure must be durable"
    );
    let pg = Store::open_postgres(&PgOptions {
        url: url.clone(),
        pool_size: 16,
        auto_migrate: true,
        acquire_timeout: Duration::from_secs(10),
        offline_grace: Duration::from_secs(30),
    })
    .expect("PostgreSQL store");
    let dir = tempfile::tempdir().expect("temp dir");
    let redb = Store::open(dir.path()).expect("redb store");
    let engines = [Engine::new("redb", redb), Engine::new("postgres", pg)];

    // Warm-up, not measured: connections made, statements prepared, files grown.
    for engine in &engines {
        engine.round(threads, Duration::from_millis(500));
    }
    eprintln!(
        "{threads} logins in flight, {rounds} interleaved rounds of {:.0} s",
        length.as_secs_f64()
    );
    let mut results: Vec<[Round; 2]> = Vec::new();
    for round in 1..=rounds {
        let figures = [0, 1].map(|i| {
            let r = engines[i].round(threads, length);
            eprintln!(
                "  round {round}  {:<8} {:>8.0} provisions/s ({:>6} logins)  store time p50 {:>7.2} ms  p99 {:>7.2} ms  {:.1} round trips/login  machine CPU {:>5.0} us/login (this process {:>4.0})",
                engines[i].name,
                r.per_second,
                r.logins,
                ms(r.p50),
                ms(r.p99),
                r.trips_per_login,
                r.cpu_per_login.unwrap_or(f64::NAN),
                r.own_cpu_per_login.unwrap_or(f64::NAN)
            );
            r
        });
        eprintln!(
            "  round {round}  postgres/redb {:.2}",
            figures[1].per_second / figures[0].per_second
        );
        results.push(figures);
    }
    println!(
        "engine     provisions/s  store p50 ms  store p99 ms  machine CPU us/login   (median of {rounds} rounds)"
    );
    for (i, engine) in engines.iter().enumerate() {
        let pick = |f: fn(&Round) -> f64| median(results.iter().map(|r| f(&r[i])).collect());
        println!(
            "{:<10} {:>12.0}  {:>12.2}  {:>12.2}  {:>20.0}   ({} accounts in the store)",
            engine.name,
            pick(|r| r.per_second),
            pick(|r| ms(r.p50)),
            pick(|r| ms(r.p99)),
            pick(|r| r.cpu_per_login.unwrap_or(f64::NAN)),
            engine.accounts()
        );
    }
    let ratios: Vec<String> = results
        .iter()
        .map(|r| format!("{:.2}", r[1].per_second / r[0].per_second))
        .collect();
    println!("postgres/redb provisions/s by round: {}", ratios.join(", "));
}
