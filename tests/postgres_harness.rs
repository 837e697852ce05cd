//! The PostgreSQL test harness (`tests/common/postgres.rs`) itself, black-box with `psql`:
//! fresh databases are distinct and empty, `stop`/`start` take the server down and bring it
//! back with its data, and no server outlives the test process that started it, whether the
//! process exits or is killed.

mod common;

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::postgres::{self, PgServer};

/// Tests that stop the shared server hold this; tests that use it while it must run do too.
static SERIAL: Mutex<()> = Mutex::new(());

/// Set in a child run of this binary: what the child helper does.
const CHILD_VAR: &str = "GATEHOUSE_PG_HARNESS_CHILD";

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn server() -> Option<&'static PgServer> {
    let server = postgres::server();
    if server.is_none() {
        eprintln!("skipping: no PostgreSQL");
    }
    server
}

/// User tables in the database at `url`.
fn table_count(pg: &PgServer, url: &str) -> String {
    pg.psql(
        url,
        "SELECT count(*) FROM pg_catalog.pg_tables \
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    )
    .unwrap()
}

/// Two fresh databases are two different, empty databases: each URL names its own
/// `gh_...` database, a table made in one is not in the other.
#[test]
fn two_fresh_databases_are_distinct_and_empty() {
    let _serial = serial();
    let Some(pg) = server() else { return };
    let a = pg.create_database();
    let b = postgres::fresh_database().expect("the server is there");
    assert_ne!(a, b);
    for url in [&a, &b] {
        let name = url.rsplit('/').next().unwrap();
        assert!(name.starts_with("gh_"), "{url}");
        assert_eq!(pg.psql(url, "SELECT current_database()").unwrap(), name);
        assert_eq!(table_count(pg, url), "0", "{url}");
    }
    pg.psql(
        &a,
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)",
    )
    .unwrap();
    assert_eq!(table_count(pg, &a), "1");
    assert_eq!(table_count(pg, &b), "0");
}

/// `stop` makes every connection fail, and `start` brings the server back on the same port
/// with the committed data.
#[test]
fn stop_makes_connections_fail_and_start_brings_them_back_with_the_data() {
    let _serial = serial();
    let Some(pg) = server() else { return };
    if !pg.can_restart() {
        // Only with GATEHOUSE_TEST_PG_URL and no GATEHOUSE_TEST_PG_DATADIR; never in .ci/run.
        eprintln!("skipping: this PostgreSQL cannot be stopped and started");
        return;
    }
    let url = pg.create_database();
    pg.psql(
        &url,
        "CREATE TABLE t (v text); INSERT INTO t VALUES ('kept')",
    )
    .unwrap();
    pg.stop();
    let refused = pg
        .psql(&url, "SELECT 1")
        .expect_err("connected to a stopped server");
    assert!(
        refused.contains("onnection refused") || refused.contains("No such file"),
        "{refused}"
    );
    pg.start();
    assert_eq!(pg.psql(&url, "SELECT v FROM t").unwrap(), "kept");
}

/// A cluster of a test's own is another server (its own data directory, a database made
/// there is not on the shared one); when it is dropped it is stopped and its directory removed.
#[test]
fn a_throwaway_cluster_is_separate_and_gone_when_dropped() {
    let Some(own) = postgres::throwaway() else {
        eprintln!("skipping: no PostgreSQL");
        return;
    };
    let url = own.create_database();
    let name = url.rsplit('/').next().unwrap().to_string();
    let dir = own
        .data_dir()
        .expect("a throwaway knows its data")
        .to_path_buf();
    assert!(dir.join("postmaster.pid").is_file());
    assert_eq!(own.psql(&url, "SELECT 1").unwrap(), "1");
    if let Some(shared) = server() {
        assert_ne!(shared.data_dir(), Some(dir.as_path()));
        let _serial = serial();
        assert!(shared.psql(&shared.url(&name), "SELECT 1").is_err());
    }
    drop(own);
    assert!(!dir.exists(), "{} is left behind", dir.display());
    assert_eq!(postmasters_of(&dir), "", "a server runs on");
    if let Some(shared) = server() {
        // psql from the shared server's harness: any URL will do.
        assert!(
            shared.psql(&url, "SELECT 1").is_err(),
            "{url} still answers"
        );
    }
}

/// Not a test of its own: run as a child of the two exit tests below (with
/// `GATEHOUSE_PG_HARNESS_CHILD` set) it starts the process's server, prints its data directory
/// and URL, and then returns (`exit`) or waits to be killed (`hang`).
#[test]
fn helper_child_process_for_the_exit_tests() {
    let Ok(mode) = std::env::var(CHILD_VAR) else {
        return;
    };
    let Some(pg) = postgres::server() else {
        println!("NOPG");
        return;
    };
    let url = pg.create_database();
    let dir = pg.data_dir().expect("a throwaway cluster");
    println!("PGDIR={} URL={url}", dir.display());
    if mode == "hang" {
        loop {
            std::thread::park();
        }
    }
}

/// Starts this binary's helper as a child; its data directory and URL, once it printed them
/// (`None`: no PostgreSQL here), and the child.
fn child(mode: &str) -> Option<(std::path::PathBuf, String, std::process::Child)> {
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_child_process_for_the_exit_tests",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VAR, mode)
        .env_remove(postgres::URL_VAR)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Read on another thread to the end, so the child never writes into a closed pipe.
    let stdout = child.stdout.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Once nobody listens any more, keep draining.
            let _ = lines.send(line);
        }
    });
    for line in seen {
        if line.contains("NOPG") {
            eprintln!("skipping: no PostgreSQL");
            let _ = child.wait();
            return None;
        }
        // libtest prints `test NAME ... ` before the helper's own output, on the same line.
        if let Some((_, rest)) = line.split_once("PGDIR=") {
            let (dir, url) = rest.split_once(" URL=").unwrap();
            return Some((dir.into(), url.to_string(), child));
        }
    }
    panic!("the child printed no PGDIR line: {:?}", child.wait());
}

/// Postmaster processes whose command line names `dir` (empty: none).
fn postmasters_of(dir: &std::path::Path) -> String {
    let out = Command::new("pgrep")
        .args(["-a", "-f"])
        .arg(dir)
        .output()
        .expect("pgrep (procps)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A test process that exits normally has stopped its cluster and removed its directory by
/// the time it has exited: nothing runs on after `cargo test`.
#[test]
fn a_test_process_that_exits_leaves_no_server_behind() {
    let Some((dir, url, mut child)) = child("exit") else {
        return;
    };
    assert!(child.wait().unwrap().success());
    assert!(!dir.exists(), "{} is left behind", dir.display());
    assert_eq!(postmasters_of(&dir), "", "a server runs on");
    let pg = server();
    if let Some(pg) = pg {
        assert!(pg.psql(&url, "SELECT 1").is_err(), "{url} still answers");
    }
}

/// A test process killed with SIGKILL (no exit hook runs) still leaves no server behind: its
/// guardian notices the closed pipe and stops the cluster.
#[test]
fn a_killed_test_process_leaves_no_server_behind() {
    let Some((dir, _url, mut child)) = child("hang") else {
        return;
    };
    assert!(dir.join("postmaster.pid").is_file());
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (dir.exists() || !postmasters_of(&dir).is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!dir.exists(), "{} is left behind", dir.display());
    assert_eq!(postmasters_of(&dir), "", "a server runs on");
}
