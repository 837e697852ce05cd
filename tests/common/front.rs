//! Front proxies for the tests that run the configs shipped in `examples/` (nginx, Caddy):
//! finding the binary, filling a shipped config with the test's addresses, holding a port for
//! nginx (which cannot listen on port 0), and running it in its own prefix. Include with
//! `#[path = "common/front.rs"] mod front;`.

#![allow(dead_code)] // each test binary uses a part of this

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A file of this repository.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The first of `paths` that exists, or `None` (with a message) when none does, outside CI;
/// under `CI=true` a missing binary fails the test (`.ci/run` installs it).
pub fn binary(name: &str, paths: &[&str]) -> Option<PathBuf> {
    let found = paths.iter().map(PathBuf::from).find(|p| p.exists());
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{name} is not installed, and CI=true: .ci/run installs it (apt-get install {name})");
        }
        eprintln!("SKIPPED: {name} is not installed (apt-get install {name}); set CI=true to make this a failure");
    }
    found
}

/// Debian's nginx, as [`binary`] finds it.
pub fn nginx() -> Option<PathBuf> {
    binary("nginx", &["/usr/sbin/nginx", "/usr/bin/nginx"])
}

/// `text` with each `from` replaced by its `to`; every `from` must be there, so an example
/// that drifts from what the test expects fails loudly instead of testing something else.
pub fn substitute(text: &str, pairs: &[(&str, String)]) -> String {
    let mut out = text.to_string();
    for (from, to) in pairs {
        assert!(
            out.contains(from),
            "the example no longer contains `{from}`"
        );
        out = out.replace(from, to);
    }
    out
}

/// A child process that is killed when the test ends.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port held for nginx, which cannot listen on port 0: bound with `SO_REUSEPORT`
/// and never listened on (so it takes no connection); nginx binds the same port with
/// `reuseport`. Drop the socket once nginx listens; the port is never free between.
pub fn reserve_port() -> (tokio::net::TcpSocket, SocketAddr) {
    let reservation = tokio::net::TcpSocket::new_v4().unwrap();
    reservation.set_reuseport(true).unwrap();
    reservation.bind(([127, 0, 0, 1], 0).into()).unwrap();
    let addr = reservation.local_addr().unwrap();
    (reservation, addr)
}

/// Runs nginx with the config text `conf` in its own prefix `dir` (logs in `dir/logs`), as
/// one process (no master: killing the child stops it all). `user` only matters when running
/// as root (as CI does); nginx ignores it with a warning otherwise.
pub fn run_nginx(bin: &Path, dir: &Path, conf: &str) -> Proc {
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(bin)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off; master_process off; user root;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx starts");
    Proc(child)
}

/// Waits until something accepts connections on `addr`; fails with the log at `log`.
pub async fn wait_listening(addr: SocketAddr, what: &str, log: &Path) {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "{what} never listened on {addr}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}
