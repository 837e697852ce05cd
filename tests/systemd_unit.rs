//! `examples/systemd/gatehouse.service` passes `systemd-analyze verify` (skipped with a reason
//! where systemd-analyze is missing), and the binary speaks the `Type=notify` protocol it
//! promises: READY=1 once the listeners are bound and the store is open, STOPPING=1 on
//! SIGTERM.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

fn unit_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/systemd/gatehouse.service");
    std::fs::read_to_string(path).expect("the unit file")
}

fn systemd_analyze() -> Option<PathBuf> {
    ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// `systemd-analyze verify` accepts the unit (with ExecStart pointing at the built binary)
/// and prints nothing: an unknown or misspelled directive, which systemd only warns about,
/// fails the test too.
#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze() else {
        eprintln!("skipped: systemd-analyze not found (install systemd)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("gatehouse.service");
    std::fs::write(&unit, unit_text().replace("/usr/local/bin/gatehouse", BIN)).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.trim().is_empty() && stdout.trim().is_empty(),
        "warnings: {stdout}{stderr}"
    );
}

/// The unit says what the issue asks of it: readiness by notification, reload by SIGHUP,
/// no fixed user, a read-only system with one state directory.
#[test]
fn the_systemd_unit_uses_notify_sighup_reload_and_hardening() {
    let text = unit_text();
    let directives: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect();
    for wanted in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "StateDirectory=gatehouse",
        "NoNewPrivileges=yes",
        "RestartPreventExitStatus=2",
    ] {
        assert!(directives.contains(&wanted), "{wanted} missing");
    }
}

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn receive(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// `gatehouse serve` as systemd runs it for `Type=notify` (`NOTIFY_SOCKET` set), on ports the
/// kernel picks, with the socket it notifies (30 s read timeout) and its temp dir.
fn serve_notifying() -> (common::Served, UnixDatagram, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Gatehouse listens on ports the kernel picks (read back from its log); the IdP's port
    // is only ever connected to, and nothing answers OIDC there.
    let dead_idp = free_port();
    let config = dir.path().join("gatehouse.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\n\
             [log]\naccess_log = false\n[store]\ndata_dir = \"{}\"\n[session]\ncookie_secure = false\n\
             [[upstreams]]\nurl = \"http://127.0.0.1:9\"\n\
             [[connections]]\nid = \"down\"\nissuer = \"http://{dead_idp}\"\nclient_id = \"x\"\nclient_secret = \"y\"\n",
            data.display()
        ),
    )
    .unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // `env` sets NOTIFY_SOCKET (as systemd does) and runs the binary, its last argument.
    let notify = format!("NOTIFY_SOCKET={}", socket_path.display());
    let served = common::Served::start(Path::new("env"), &[&notify, BIN], &config);
    (served, socket, dir)
}

/// Sends SIGTERM to the child.
fn terminate(served: &common::Served) {
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(served.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
}

/// With `NOTIFY_SOCKET` set (as systemd does for `Type=notify`), `gatehouse serve` sends
/// READY=1, and at that moment the admin listener already answers `/live` and the store
/// file exists; SIGTERM then sends STOPPING=1 and the process exits 0.
#[test]
fn serve_notifies_systemd_when_ready_and_when_stopping() {
    let (mut served, socket, dir) = serve_notifying();
    let admin = served.admin;

    let ready = receive(&socket);
    assert_eq!(ready.trim(), "READY=1");
    let mut stream = TcpStream::connect(admin).expect("the admin listener is bound");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /live HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let data = dir.path().join("data");
    let store_files = std::fs::read_dir(&data).map(|d| d.count()).unwrap_or(0);
    assert!(store_files > 0, "the store is open in {}", data.display());

    terminate(&served);
    let stopping = receive(&socket);
    assert_eq!(stopping.trim(), "STOPPING=1");
    let status = served.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

/// A SIGTERM that comes the moment systemd hears READY=1 drains and exits 0: the signal
/// handlers are in place before READY=1 is sent (before, a SIGTERM in between took the
/// signal's default action and killed the process, with no STOPPING=1).
#[test]
fn a_sigterm_right_after_ready_drains_and_exits_cleanly() {
    for _ in 0..3 {
        let (mut served, socket, _dir) = serve_notifying();
        assert_eq!(receive(&socket).trim(), "READY=1");
        terminate(&served);
        assert_eq!(receive(&socket).trim(), "STOPPING=1");
        assert_eq!(served.child.wait().unwrap().code(), Some(0));
    }
}
