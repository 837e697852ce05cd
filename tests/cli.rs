//! The `gatehouse` binary: `check-config` on every shipped and every bad config, startup
//! errors, and a graceful SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[path = "common/idp.rs"]
mod idp;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn check_config(path: &Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("check-config")
        .arg("--config")
        .arg(path)
        .output()
        .expect("run gatehouse");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every `.toml` under a folder, recursively.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(toml_files(&path));
        } else if path.extension().is_some_and(|e| e == "toml") {
            found.push(path);
        }
    }
    found
}

/// Every config shipped under `config/` and `examples/` passes `check-config`.
#[test]
fn every_shipped_config_is_valid() {
    let files: Vec<PathBuf> = ["config", "examples"]
        .iter()
        .flat_map(|d| toml_files(&repo(d)))
        .collect();
    assert!(!files.is_empty());
    for file in files {
        let (code, stdout, stderr) = check_config(&file);
        assert_eq!(
            (code, stdout.trim()),
            (0, "ok"),
            "{}: {stderr}",
            file.display()
        );
    }
}

/// Each bad fixture exits 2 and names every problem its first line expects, by key path.
#[test]
fn every_bad_config_fails_with_each_problem_named_by_its_key_path() {
    let files = toml_files(&repo("tests/fixtures/bad"));
    assert!(files.len() >= 5);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expected = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .expect("an expect line");
        let (code, _, stderr) = check_config(&file);
        assert_eq!(code, 2, "{}: {stderr}", file.display());
        for path in expected.split(", ") {
            assert!(
                stderr
                    .lines()
                    .any(|line| line.trim_start().starts_with(&format!("{path}:"))),
                "{}: no line for {path} in\n{stderr}",
                file.display()
            );
        }
    }
}

/// A missing file is a config error too.
#[test]
fn a_missing_config_file_exits_2() {
    let (code, _, stderr) = check_config(Path::new("/nonexistent/gatehouse.toml"));
    assert_eq!(code, 2);
    assert!(stderr.contains("cannot read"), "{stderr}");
}

/// `--version` prints the crate version.
#[test]
fn version_prints_the_crate_version() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("gatehouse.toml");
    std::fs::write(&path, body).unwrap();
    path
}

/// A port that is taken stops startup with a clear message and a non-zero exit, for the
/// proxy and the admin listener alike.
#[test]
fn a_taken_port_is_a_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (listen, admin, what) in [
        (port.to_string(), "127.0.0.1:0".to_string(), "proxy"),
        ("127.0.0.1:0".to_string(), port.to_string(), "admin"),
    ] {
        let config = write_config(
            dir.path(),
            &format!("[server]\nlisten = [\"{listen}\"]\nadmin_listen = \"{admin}\"\ndeny_all = true\n[[upstreams]]\nurl = \"http://127.0.0.1:9\"\n"),
        );
        let out = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let message = format!("cannot listen on {port} ({what} listener)");
        assert_eq!(
            stderr.matches(&message).count(),
            1,
            "printed once: {stderr}"
        );
    }
}

/// Reads the child's log until the line announcing the proxy address.
fn proxy_address(child: &mut Child) -> String {
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        let line = line.expect("log line");
        if let Some(addr) = line.split("proxy listening on http://").nth(1) {
            let addr = addr.trim().to_string();
            // keep draining the log so the child never blocks on a full pipe
            std::thread::spawn(move || for _ in lines {});
            return addr;
        }
    }
    panic!("gatehouse never said where it listens");
}

/// SIGTERM during a slow request: the request completes, then the process exits 0 without
/// waiting out the whole grace period.
#[tokio::test]
async fn sigterm_lets_a_slow_request_finish_then_exits_zero() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        // a hand-made slow upstream: answers each request after 1.5 s
        loop {
            let Ok((mut socket, _)) = upstream.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndone",
                    )
                    .await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"30s\"\n[[upstreams]]\nurl = \"http://{upstream_addr}\"\n[[public]]\npath = \"/\"\nmatch = \"prefix\"\n"
        ),
    );
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = proxy_address(&mut child);
    let request = tokio::spawn(async move { reqwest::get(format!("http://{addr}/slow")).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());

    let response = request
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "done");

    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        // Far below the 30 s grace: the process must leave once drained. Not a speed test.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "gatehouse did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
}

/// A connection `check-config` accepts without a network call.
const CONNECTION: &str = "[[connections]]\nid = \"corp\"\nissuer = \"https://idp.example.com\"\nclient_id = \"gatehouse\"\nclient_secret = \"s3cret\"\n";

/// How a mistake must be reported.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Outcome {
    /// Exit 2, a problem line `  <key>: ...`.
    Error,
    /// Exit 0 and `ok`, a line `warning: <key>: ...` on stderr.
    Warning,
}

/// Every config mistake that would fail open (or leave a rule doing nothing), run through the
/// real `check-config`: each is an error or a warning whose line names the key and the fix.
#[test]
fn every_fail_open_mistake_is_reported_with_its_key_and_the_fix() {
    use Outcome::{Error, Warning};
    let issuer = |value: &str| CONNECTION.replace("https://idp.example.com", value);
    let cases: Vec<(&str, String, Outcome, &str, &[&str])> = vec![
        ("glob in an access prefix", format!("{CONNECTION}[[access]]\npath = \"/admin/*\"\nmatch = \"prefix\"\nallowed_groups = [\"admins\"]\n"), Error, "access[0].path", &["path = \"/admin\" with match = \"prefix\"", "match = \"regex\""]),
        ("glob in an exact access path", format!("{CONNECTION}[[access]]\npath = \"/admin/*\"\nallowed_groups = [\"admins\"]\n"), Error, "access[0].path", &["match = \"prefix\"", "match = \"regex\""]),
        ("glob in a public path", format!("{CONNECTION}[[public]]\npath = \"/static/*.css\"\n"), Error, "public[0].path", &["path = \"/static\" with match = \"prefix\"", "match = \"regex\""]),
        ("question mark in a public prefix", format!("{CONNECTION}[[public]]\npath = \"/docs/?\"\nmatch = \"prefix\"\n"), Error, "public[0].path", &["path = \"/docs\" with match = \"prefix\""]),
        ("character class in an access path", format!("{CONNECTION}[[access]]\npath = \"/admin/[a-z]\"\nmatch = \"prefix\"\nallowed_groups = [\"admins\"]\n"), Error, "access[0].path", &["match = \"regex\""]),
        ("glob in an upstream path_prefix", format!("{CONNECTION}[[upstreams]]\npath_prefix = \"/api/*\"\nurl = \"http://127.0.0.1:9\"\n"), Error, "upstreams[1].path_prefix", &["path_prefix = \"/api\""]),
        ("path parameter in a rule", format!("{CONNECTION}[[access]]\npath = \"/admin;x\"\nallowed_groups = [\"admins\"]\n"), Error, "access[0].path", &["remove the `;...` part"]),
        ("no connection and no deny_all", String::new(), Error, "connections", &["[[connections]]", "deny_all = true"]),
        ("issuer is the discovery URL", issuer("https://idp.example.com/realms/main/.well-known/openid-configuration"), Error, "connections[0].issuer", &["issuer = \"https://idp.example.com/realms/main\""]),
        ("issuer with a query", issuer("https://idp.example.com/realms/main?x=1"), Error, "connections[0].issuer", &["issuer = \"https://idp.example.com/realms/main\""]),
        ("issuer with a fragment", issuer("https://idp.example.com/#main"), Error, "connections[0].issuer", &["issuer = \"https://idp.example.com/\""]),
        ("issuer with user information", issuer("https://me:pw@idp.example.com/r"), Error, "connections[0].issuer", &["issuer = \"https://idp.example.com/r\""]),
        ("issuer not http(s)", issuer("ftp://idp.example.com"), Error, "connections[0].issuer", &["https://", "discovery document"]),
        ("issuer in plain http off loopback", issuer("http://idp.example.com"), Error, "connections[0].issuer", &["must use https"]),
        ("access rule inside a public prefix", format!("{CONNECTION}[[public]]\npath = \"/docs\"\nmatch = \"prefix\"\n[[access]]\npath = \"/docs/admin\"\nallowed_groups = [\"admins\"]\n"), Warning, "access[0].path", &["never applies", "narrow public[0]"]),
        ("public rule on a reserved path", format!("{CONNECTION}[[public]]\npath = \"/oauth2/start\"\n"), Warning, "public[0].path", &["never matches", "remove it"]),
        ("access rule on a reserved path", format!("{CONNECTION}[[access]]\npath = \"/ping\"\nallowed_groups = [\"admins\"]\n"), Warning, "access[0].path", &["never applies", "remove it"]),
        ("access rule no upstream serves", format!("{CONNECTION}[[access]]\npath = \"/other\"\nallowed_groups = [\"admins\"]\n").replace("[[connections]]", "[[upstreams]]\npath_prefix = \"/app\"\nurl = \"http://127.0.0.1:9\"\n[[connections]]"), Warning, "access[0].path", &[]),
        ("an upstream no route reaches", format!("{CONNECTION}[[upstreams]]\nurl = \"http://127.0.0.1:10\"\n"), Warning, "upstreams[1].path_prefix", &["upstreams[0] has the same host and path_prefix", "remove it"]),
        ("deny_all with connections", CONNECTION.to_string(), Warning, "server.deny_all", &["remove deny_all"]),
        ("admin listener off loopback", CONNECTION.to_string(), Warning, "server.admin_listen", &["no TLS", "bind it to 127.0.0.1"]),
        ("secure cookie on plain http", CONNECTION.to_string(), Warning, "session.cookie_secure", &["login.external_url = \"https://", "cookie_secure = false"]),
        ("idle timeout beyond the lifetime", format!("{CONNECTION}[session]\nlifetime = \"1h\"\nidle_timeout = \"90min\"\n"), Warning, "session.idle_timeout", &["5400s is longer than session.lifetime (3600s)"]),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (what, body, outcome, key, fixes) in cases {
        let server = match what {
            "deny_all with connections" => {
                "[server]\nadmin_listen = \"127.0.0.1:0\"\ndeny_all = true\n"
            }
            "admin listener off loopback" => "[server]\nadmin_listen = \"0.0.0.0:0\"\n",
            _ => "[server]\nadmin_listen = \"127.0.0.1:0\"\n",
        };
        let upstream = if what == "access rule no upstream serves" {
            ""
        } else {
            "[[upstreams]]\nurl = \"http://127.0.0.1:9\"\n"
        };
        let path = write_config(dir.path(), &format!("{server}{upstream}{body}"));
        let (code, stdout, stderr) = check_config(&path);
        let line = match outcome {
            Error => {
                assert_eq!(code, 2, "{what}: {stderr}");
                stderr
                    .lines()
                    .find(|l| l.trim_start().starts_with(&format!("{key}:")))
            }
            Warning => {
                assert_eq!((code, stdout.trim()), (0, "ok"), "{what}: {stderr}");
                stderr
                    .lines()
                    .find(|l| l.starts_with(&format!("warning: {key}:")))
            }
        };
        let line = line.unwrap_or_else(|| panic!("{what}: no line for {key} in\n{stderr}"));
        for fix in fixes {
            assert!(line.contains(fix), "{what}: `{fix}` missing from\n{line}");
        }
    }
}

/// A config that says what it means passes quietly: no error, no warning.
#[test]
fn a_config_without_mistakes_passes_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!("[server]\nadmin_listen = \"127.0.0.1:0\"\n[login]\nexternal_url = \"https://app.example.com\"\n[[upstreams]]\nurl = \"http://127.0.0.1:9\"\n{CONNECTION}[[public]]\npath = \"/docs\"\nmatch = \"prefix\"\n[[access]]\npath = \"/admin\"\nmatch = \"prefix\"\nallowed_groups = [\"admins\"]\n"),
    );
    let (code, stdout, stderr) = check_config(&path);
    assert_eq!((code, stdout.trim(), stderr.trim()), (0, "ok", ""));
}

/// `check-config` checks an upstream's host name by its shape only and never resolves it: a
/// name that can never resolve (`.invalid`, RFC 6761) passes, with no network needed.
#[test]
fn check_config_passes_an_upstream_host_name_that_does_not_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "[server]\nadmin_listen = \"127.0.0.1:0\"\ndeny_all = true\n[[upstreams]]\nurl = \"http://app.invalid:8080\"\n",
    );
    let (code, stdout, stderr) = check_config(&path);
    assert_eq!((code, stdout.trim()), (0, "ok"), "{stderr}");
}

/// `serve` resolves upstream host names when it starts: one that does not resolve stops the
/// start (exit 1) with a message naming the key path of its URL.
#[test]
fn serve_stops_at_start_when_an_upstream_host_name_does_not_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\ndeny_all = true\n[[upstreams]]\nurl = \"http://127.0.0.1:9\"\n[[upstreams]]\nhost = \"b.example\"\nurl = \"http://app.invalid:8080\"\n",
    );
    let out = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("upstreams[1].url: `app.invalid` does not resolve"),
        "{stderr}"
    );
}

fn run(args: &[&str], config: &Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run gatehouse");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config with one connection to `issuer` and its store in `data_dir`.
fn connection_config(dir: &Path, issuer: &str, data_dir: &Path) -> PathBuf {
    write_config(
        dir,
        &format!("[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\n[store]\ndata_dir = \"{}\"\n[[upstreams]]\nurl = \"http://127.0.0.1:9\"\n{}", data_dir.display(), CONNECTION.replace("https://idp.example.com", issuer)),
    )
}

/// `check-config --connect` against a live IdP reports the discovery document, the JWKS and
/// the store, each `ok`; an issuer spelled differently from the one the IdP names
/// (`localhost` for `127.0.0.1`) fails the discovery step with the fix, and the command exits 1.
#[tokio::test]
async fn check_config_connect_reports_discovery_jwks_and_store() {
    let idp = idp::TestIdp::start(serde_json::json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = connection_config(dir.path(), &idp.issuer, &data);
    let (code, stdout, stderr) = run(&["check-config", "--connect"], &config);
    assert_eq!(code, 0, "{stdout}{stderr}");
    for line in [
        "ok      connections[0] (corp) discovery document:",
        "ok      connections[0] (corp) JWKS:",
        "ok      store.data_dir:",
        "ok      store:",
    ] {
        assert!(stdout.contains(line), "`{line}` missing from\n{stdout}");
    }
    assert_eq!(stdout.lines().last(), Some("ok"));
    assert!(data.join("gatehouse.redb").exists());

    let config = connection_config(dir.path(), &format!("http://localhost:{}", idp.port), &data);
    let (code, stdout, stderr) = run(&["check-config", "--connect"], &config);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("FAILED  connections[0] (corp) discovery document:"))
        .unwrap_or_else(|| panic!("no failed discovery line in\n{stdout}"));
    assert!(line.contains("not the configured issuer"), "{line}");
    assert!(stderr.contains("1 check(s) failed"), "{stderr}");
}

/// `check-config --connect` names each failing step: an IdP nobody answers for, and a data
/// dir that cannot be created (under a regular file, so even root cannot) with the key
/// `store.data_dir` and the user that needs write access.
#[test]
fn check_config_connect_names_each_failing_step() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let config = connection_config(dir.path(), &format!("http://{dead}"), &file.join("data"));
    let (code, stdout, stderr) = run(&["check-config", "--connect"], &config);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("FAILED  connections[0] (corp) discovery document:"),
        "{stdout}"
    );
    let store = stdout
        .lines()
        .find(|l| l.starts_with("FAILED  store.data_dir:"))
        .unwrap_or_else(|| panic!("no failed store line in\n{stdout}"));
    assert!(
        store.contains("needs write access") && store.contains("uid "),
        "{store}"
    );
    assert!(!stdout.lines().any(|l| l == "ok"), "{stdout}");
}

/// Without `--connect`, `check-config` makes no network call (a listener standing in for the
/// IdP is never connected to) and creates nothing (the data dir does not appear).
#[test]
fn check_config_without_connect_touches_no_network_and_no_store() {
    let idp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    idp.set_nonblocking(true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let issuer = format!("http://{}", idp.local_addr().unwrap());
    let config = connection_config(dir.path(), &issuer, &data);
    let (code, stdout, stderr) = run(&["check-config"], &config);
    assert_eq!((code, stdout.trim()), (0, "ok"), "{stderr}");
    assert_eq!(
        idp.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "check-config connected to the issuer"
    );
    assert!(!data.exists());
    // The same listener does see `--connect`: the check above could fail.
    let (code, _, _) = run(&["check-config", "--connect"], &config);
    assert_eq!(code, 1);
    assert!(idp.accept().is_ok());
}

/// A store that cannot be opened stops `serve` with one error line that names the key
/// `store.data_dir` and the user that needs write access.
#[test]
fn a_store_that_cannot_be_opened_names_store_data_dir_and_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let config = connection_config(dir.path(), "http://127.0.0.1:9", &file.join("data"));
    let (code, _, stderr) = run(&["serve"], &config);
    assert_eq!(code, 1, "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("cannot open the store"))
        .collect();
    assert_eq!(lines.len(), 1, "printed once: {stderr}");
    assert!(
        lines[0].contains("store.data_dir") && lines[0].contains("needs write access"),
        "{}",
        lines[0]
    );
}

/// A value set by a `GATEHOUSE__SECTION__KEY` variable is checked like the file's: a good one
/// passes (`1h30m`), a bad one is reported at its key path with the variable named (exit 2).
#[test]
fn environment_overrides_are_checked_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!("[server]\nadmin_listen = \"127.0.0.1:0\"\n[login]\nexternal_url = \"https://app.example.com\"\n[[upstreams]]\nurl = \"http://127.0.0.1:9\"\n{CONNECTION}"),
    );
    let check = |value: &str| {
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&path)
            .env("GATEHOUSE__SESSION__LIFETIME", value)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = check("1h30m");
    assert_eq!((code, stdout.trim(), stderr.trim()), (Some(0), "ok", ""));
    let (code, _, stderr) = check("forever");
    assert_eq!(code, Some(2), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.trim_start().starts_with("session.lifetime:"))
        .unwrap_or_else(|| panic!("no session.lifetime line in\n{stderr}"));
    assert!(
        line.contains("set by the environment variable GATEHOUSE__SESSION__LIFETIME"),
        "{line}"
    );
}

/// `check-config` with the PostgreSQL store checks the URL's shape only: a well-formed URL to
/// a port where nothing listens is `ok` (nothing connects), and a malformed one is reported
/// under `store.url` with the password masked, never printed.
#[test]
fn check_config_checks_the_postgres_url_shape_without_connecting_or_printing_the_password() {
    let dead = dead_port();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!(
            "[server]\nadmin_listen = \"127.0.0.1:0\"\ndeny_all = true\n[[upstreams]]\n\
             url = \"http://127.0.0.1:8080\"\n[store]\nbackend = \"postgres\"\n\
             url = \"postgres://gatehouse:hunter22secret@{dead}/gatehouse\"\n"
        ),
    );
    let (code, stdout, stderr) = check_config(&path);
    assert_eq!((code, stdout.trim()), (0, "ok"), "{stderr}");

    let (code, stdout, stderr) = check_config(&repo("tests/fixtures/bad/store_postgres_url.toml"));
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(
        stderr.contains("postgres://gatehouse:***@db:54x2"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter22secret"), "{stderr}");
    assert!(!stdout.contains("hunter22secret"), "{stdout}");
}

fn dead_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}
