//! A real PostgreSQL for the tests: one server per test binary process, a fresh empty database
//! per test ([`fresh_database`]), and `stop`/`start` on the same data directory and port for
//! fault tests.
//!
//! Where the server comes from, in order:
//! - `GATEHOUSE_TEST_PG_URL` set: an admin URL of a running server
//!   (`postgres://USER@HOST:PORT/postgres`, a role that may `CREATE DATABASE`). It is used as
//!   is. [`PgServer::stop`]/[`PgServer::start`] then work only if `GATEHOUSE_TEST_PG_DATADIR`
//!   names its data directory (with every setting in its `postgresql.conf`, since `pg_ctl start`
//!   is given none) and `pg_ctl` can be found (see below); [`PgServer::can_restart`] says so.
//! - Otherwise a throwaway cluster: `initdb` into a new temp directory (superuser `gatehouse`,
//!   trust auth, `--no-sync`), listening on 127.0.0.1 on a free port with its Unix socket in
//!   that directory (never /var/run, so the system cluster on 5432 does not matter), fsync on.
//!   As root (initdb refuses to run as root) `initdb` and `pg_ctl` run as the `postgres` user
//!   (`runuser -u postgres --`), which Debian's package creates, with the directory chowned to
//!   it. The binaries come from `GATEHOUSE_TEST_PG_BIN` (a directory), else `PATH`, else the
//!   newest `/usr/lib/postgresql/<version>/bin` (where Debian puts them, off `PATH`).
//!   The cluster is stopped and its directory removed when the test process exits: a guardian
//!   process (its own process group) waits on a pipe from the test process and cleans up when
//!   the pipe closes, so even a test binary killed by SIGKILL or Ctrl-C leaves no server
//!   behind; at a normal exit an `atexit` hook closes the pipe and waits for the guardian, so
//!   nothing runs on after `cargo test` returns.
//!
//! The port is picked by binding port 0 and releasing it (PostgreSQL cannot take a bound
//! socket); a start that loses the port to someone else is retried on another.
//!
//! Without a server the functions return `None` (after printing why) and the caller prints
//! "skipping: no PostgreSQL" and returns, except under `CI=true`, where they panic: there the
//! PostgreSQL tests fail, never skip.
//!
//! A test that stops the server must not share it with tests that run meanwhile: put it in its
//! own test binary, or give it its own cluster with [`throwaway`] (stopped on Drop).
//!
//! Databases are made with the `psql` client (postgresql-client), not with the crate's driver,
//! so the harness stays independent of the code it tests; [`PgServer::psql`] runs any SQL.

#![allow(dead_code)] // each test binary uses a part of this

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// An admin URL of a running server to use instead of starting one.
pub const URL_VAR: &str = "GATEHOUSE_TEST_PG_URL";
/// The data directory of the server at [`URL_VAR`], so that stop/start work on it.
pub const DATADIR_VAR: &str = "GATEHOUSE_TEST_PG_DATADIR";
/// A directory holding `initdb`, `pg_ctl` (and `psql`).
pub const BIN_VAR: &str = "GATEHOUSE_TEST_PG_BIN";

/// The superuser of a throwaway cluster.
const SUPERUSER: &str = "gatehouse";
/// Starts tried on a fresh port when the picked one was taken meanwhile.
const START_ATTEMPTS: usize = 3;

/// A PostgreSQL server the tests may use.
pub struct PgServer {
    /// The admin connection: its database is the one `CREATE DATABASE` runs in.
    admin: url::Url,
    psql: PathBuf,
    /// How to stop and start it; `None`: an external server without a data directory.
    control: Option<Control>,
    /// The cleaner of a throwaway cluster; `None` once it has run, or for an external server.
    guardian: Mutex<Option<Child>>,
}

struct Control {
    pg_ctl: PathBuf,
    data: PathBuf,
    /// The server's log file (`None`: discarded).
    log: Option<PathBuf>,
    /// The user `pg_ctl` runs as (`runuser -u USER --`), when the tests run as root.
    run_as: Option<String>,
}

static SERVER: OnceLock<Option<PgServer>> = OnceLock::new();

/// The test process's server, found or started on the first call; `None` (printed why) when
/// there is none, except under `CI=true`, where that panics.
pub fn server() -> Option<&'static PgServer> {
    SERVER
        .get_or_init(|| {
            let found = match std::env::var(URL_VAR) {
                Ok(url) => external(&url),
                Err(_) => start_throwaway().inspect(|_| register_exit_hook()),
            };
            unavailable(found)
        })
        .as_ref()
}

/// A new empty database `gh_<random>` on [`server`]; its URL
/// (`postgres://USER@127.0.0.1:PORT/gh_...`), or `None` when there is no server.
pub fn fresh_database() -> Option<String> {
    Some(server()?.create_database())
}

/// A cluster of the caller's own, for a test that stops and starts it while other tests run;
/// stopped and removed on Drop. `None` (or a panic under `CI=true`) as for [`server`].
pub fn throwaway() -> Option<PgServer> {
    unavailable(start_throwaway())
}

fn unavailable(found: Result<PgServer, String>) -> Option<PgServer> {
    match found {
        Ok(server) => Some(server),
        Err(reason) if ci() => panic!("the PostgreSQL tests need a server (CI=true): {reason}"),
        Err(reason) => {
            eprintln!("no PostgreSQL for the tests: {reason}");
            None
        }
    }
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

impl PgServer {
    /// The URL of database `db` on this server, as the admin user.
    pub fn url(&self, db: &str) -> String {
        let mut url = self.admin.clone();
        url.set_path(&format!("/{db}"));
        url.to_string()
    }

    /// A new empty database `gh_<random>`; its URL.
    pub fn create_database(&self) -> String {
        let name = format!("gh_{:016x}", rand::random::<u64>());
        if let Err(e) = self.psql(self.admin.as_str(), &format!("CREATE DATABASE {name}")) {
            panic!("CREATE DATABASE {name}: {e}");
        }
        self.url(&name)
    }

    /// Runs `sql` with `psql` against `url` (unaligned, tuples only); its output, trimmed, or
    /// the error psql printed.
    pub fn psql(&self, url: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(&self.psql)
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                url,
                "-c",
                sql,
            ])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.psql.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Starts `sql` in a `psql` of its own and returns at once; the caller ends it (kill,
    /// wait) when done: for a session that holds a lock while a test runs.
    pub fn psql_in_background(&self, url: &str, sql: &str) -> Child {
        Command::new(&self.psql)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.psql.display()))
    }

    /// The data directory, when this process knows it (a throwaway cluster, or
    /// `GATEHOUSE_TEST_PG_DATADIR`).
    pub fn data_dir(&self) -> Option<&Path> {
        self.control.as_ref().map(|c| c.data.as_path())
    }

    /// Whether [`Self::stop`] and [`Self::start`] work on this server.
    pub fn can_restart(&self) -> bool {
        self.control.is_some()
    }

    /// Stops the server (`pg_ctl stop -m fast`, waiting): connections fail until
    /// [`Self::start`]. Panics when it cannot (see [`Self::can_restart`]).
    pub fn stop(&self) {
        let c = self.control();
        c.run(&["stop", "-m", "fast", "-w", "-t", "60"])
            .unwrap_or_else(|e| panic!("pg_ctl stop: {e}"));
    }

    /// Starts the stopped server again on the same data directory and port, waiting until it
    /// accepts connections. Panics when it cannot.
    pub fn start(&self) {
        self.control()
            .start()
            .unwrap_or_else(|e| panic!("pg_ctl start: {e}"));
    }

    fn control(&self) -> &Control {
        self.control.as_ref().unwrap_or_else(|| {
            panic!(
                "this PostgreSQL ({URL_VAR}) cannot be stopped and started: set {DATADIR_VAR} \
                 to its data directory, or unset {URL_VAR} so the tests start their own"
            )
        })
    }

    /// Stops a throwaway cluster and removes its directory, waiting for both (the guardian
    /// does it when its pipe closes).
    fn shut_down(&self) {
        let guardian = self.guardian.lock().map(|mut g| g.take());
        if let Ok(Some(mut guardian)) = guardian {
            drop(guardian.stdin.take());
            let _ = guardian.wait();
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

impl Control {
    fn command(&self, program: &Path) -> Command {
        as_user(self.run_as.as_deref(), program)
    }

    fn run(&self, args: &[&str]) -> Result<(), String> {
        let out = self
            .command(&self.pg_ctl)
            .args(args)
            .arg("-D")
            .arg(&self.data)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.pg_ctl.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn start(&self) -> Result<(), String> {
        let mut cmd = self.command(&self.pg_ctl);
        cmd.args(["start", "-w", "-t", "60", "-D"]).arg(&self.data);
        if let Some(log) = &self.log {
            cmd.arg("-l").arg(log);
        }
        // Without -l the postmaster keeps pg_ctl's stdout: not a pipe we would wait on.
        let status = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run {}: {e}", self.pg_ctl.display()))?;
        if status.success() {
            return Ok(());
        }
        let log = self
            .log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(10).collect::<Vec<_>>();
        Err(format!(
            "{status}; the server log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    }
}

/// `program`, run as `user` through `runuser` when given.
fn as_user(user: Option<&str>, program: &Path) -> Command {
    match user {
        Some(user) => {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", user, "--"]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The server at an admin URL from the environment.
fn external(url: &str) -> Result<PgServer, String> {
    let admin = url::Url::parse(url).map_err(|e| format!("{URL_VAR} is not a URL: {e}"))?;
    let bin = binaries().ok();
    let psql = bin
        .as_ref()
        .map(|b| b.join("psql"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("psql"));
    let control = match (std::env::var_os(DATADIR_VAR), &bin) {
        (Some(data), Some(bin)) => {
            let data = PathBuf::from(data);
            let run_as = if is_root() {
                owner_name(&data)?.filter(|name| name != "root")
            } else {
                None
            };
            Some(Control {
                pg_ctl: bin.join("pg_ctl"),
                data,
                log: None,
                run_as,
            })
        }
        (Some(_), None) => return Err(format!("{DATADIR_VAR} is set but pg_ctl is not found")),
        (None, _) => None,
    };
    let server = PgServer {
        admin,
        psql,
        control,
        guardian: Mutex::new(None),
    };
    server
        .psql(server.admin.as_str(), "SELECT 1")
        .map_err(|e| format!("cannot connect to {URL_VAR}: {e}"))?;
    Ok(server)
}

/// The name of the user owning `path`.
fn owner_name(path: &Path) -> Result<Option<String>, String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(path)
        .map_err(|e| format!("{DATADIR_VAR} {}: {e}", path.display()))?
        .uid();
    let out = Command::new("id")
        .args(["-nu", &uid.to_string()])
        .output()
        .map_err(|e| format!("id: {e}"))?;
    Ok(Some(String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|n| !n.is_empty()))
}

/// The directory holding `initdb` and `pg_ctl`: `GATEHOUSE_TEST_PG_BIN`, else on `PATH`, else
/// the newest `/usr/lib/postgresql/<version>/bin`.
fn binaries() -> Result<PathBuf, String> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os(BIN_VAR) {
        let dir = PathBuf::from(dir);
        return if has_tools(&dir) {
            Ok(dir)
        } else {
            Err(format!(
                "{BIN_VAR}={} has no initdb and pg_ctl",
                dir.display()
            ))
        };
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(dir) = on_path.into_iter().find(|d| has_tools(d)) {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_tools(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        "initdb and pg_ctl are not installed (apt-get install postgresql postgresql-client), \
         or set GATEHOUSE_TEST_PG_URL to a running server"
            .to_string()
    })
}

/// initdb into a new temp directory, then start it on a free loopback port.
fn start_throwaway() -> Result<PgServer, String> {
    let bin = binaries()?;
    let psql = [bin.join("psql"), PathBuf::from("/usr/bin/psql")]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or("psql is not installed (apt-get install postgresql-client)")?;
    let run_as = is_root().then(|| "postgres".to_string());
    let dir = std::env::temp_dir().join(format!(
        "gatehouse-pg-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // From here on the guardian removes the directory, whatever happens.
    let control = Control {
        pg_ctl: bin.join("pg_ctl"),
        data: dir.join("data"),
        log: Some(dir.join("postgres.log")),
        run_as,
    };
    let guardian = guardian(&dir, &control)?;
    let server = |admin| PgServer {
        admin,
        psql: psql.clone(),
        control: None,
        guardian: Mutex::new(Some(guardian)),
    };
    let mut server = server(url::Url::parse("postgres://127.0.0.1/").expect("a URL"));
    if let Some(user) = &control.run_as {
        let status = Command::new("chown")
            .arg(format!("{user}:"))
            .arg(&dir)
            .status()
            .map_err(|e| format!("chown: {e}"))?;
        if !status.success() {
            return Err(format!(
                "chown {user}: {} failed (initdb refuses to run as root, so it runs as the \
                 `{user}` user that Debian's postgresql package creates)",
                dir.display()
            ));
        }
    }
    let out = control
        .command(&bin.join("initdb"))
        .arg("-D")
        .arg(&control.data)
        .args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--no-sync",
            "--encoding=UTF8",
            "--locale=C",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut last_error = String::new();
    for _ in 0..START_ATTEMPTS {
        let port = free_port()?;
        configure(&control.data, &dir, port)?;
        match control.start() {
            Ok(()) => {
                server.admin =
                    url::Url::parse(&format!("postgres://{SUPERUSER}@127.0.0.1:{port}/postgres"))
                        .map_err(|e| e.to_string())?;
                server.control = Some(control);
                return Ok(server);
            }
            Err(e) => last_error = e,
        }
    }
    Err(format!(
        "the throwaway cluster in {} did not start: {last_error}",
        dir.display()
    ))
}

/// Settings appended to the cluster's `postgresql.conf` (a later line wins, so a retry on
/// another port appends again).
fn configure(data: &Path, dir: &Path, port: u16) -> Result<(), String> {
    use std::io::Write;
    let conf = data.join("postgresql.conf");
    let settings = format!(
        "\n# gatehouse tests\nlisten_addresses = '127.0.0.1'\nport = {port}\n\
         unix_socket_directories = '{}'\nfsync = on\nsynchronous_commit = on\n\
         shared_buffers = 32MB\nmax_connections = 200\nlogging_collector = off\n",
        dir.display()
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(&conf)
        .and_then(|mut f| f.write_all(settings.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", conf.display()))
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// A process that waits until the pipe from this process closes (this process ended, however
/// it ended), then stops the cluster in `dir` (`pg_ctl stop -m fast`, if it runs) and removes
/// the directory (a postmaster that outlived the stop exits once its lock file is gone). It has its own process group, so a Ctrl-C sent to the test run
/// does not kill it before it cleans up.
fn guardian(dir: &Path, control: &Control) -> Result<Child, String> {
    use std::os::unix::process::CommandExt;
    let mut stop: Vec<String> = Vec::new();
    if let Some(user) = &control.run_as {
        stop.extend(["runuser", "-u", user, "--"].map(String::from));
    }
    stop.push(control.pg_ctl.display().to_string());
    stop.extend(["stop", "-m", "fast", "-w", "-t", "30", "-D"].map(String::from));
    stop.push(control.data.display().to_string());
    Command::new("sh")
        .arg("-c")
        .arg(
            r#"read -r _ || true
if [ -f "$GH_PG_DIR/data/postmaster.pid" ]; then "$@"; fi
rm -rf -- "$GH_PG_DIR""#,
        )
        .arg("gatehouse-pg-guardian")
        .args(&stop)
        .env("GH_PG_DIR", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the cleanup guardian: {e}"))
}

/// At a normal exit of the test process, stop the process's cluster and wait for it.
fn register_exit_hook() {
    extern "C" fn at_exit() {
        if let Some(Some(server)) = SERVER.get() {
            server.shut_down();
        }
    }
    // SAFETY: `at_exit` is a plain function that touches only 'static data.
    unsafe {
        libc::atexit(at_exit);
    }
}

/// Runs one SQL statement on the database at `url` (of the shared test server) and returns
/// what psql printed; panics when it fails.
pub fn psql(url: &str, sql: &str) -> String {
    let server = server().expect("a PostgreSQL server for psql");
    server
        .psql(url, sql)
        .unwrap_or_else(|e| panic!("psql {sql}: {e}"))
}

/// Unwraps an `Option` a PostgreSQL helper returned, or ends the test as skipped (outside CI,
/// without a server; under `CI=true` the helpers panic instead).
#[macro_export]
macro_rules! or_skip {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => {
                eprintln!("skipping: no PostgreSQL (see tests/common/postgres.rs)");
                return;
            }
        }
    };
}
