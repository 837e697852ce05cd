//! The benchmarks' baseline, `examples/bare_pingora.rs`, run as `benches/load.sh` runs it: a
//! child process proxying to a real upstream, with pingora's defaults and with each setting
//! `SETTINGS=1 benches/load.sh` changes; a setting that is not a number stops it with its name.
//!
//! The example takes its listening address as an argument; it is given port 0 and the port
//! the kernel picked is read from the kernel's socket table (no port is bound, released and
//! bound again).

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn baseline() -> PathBuf {
    common::examples::example_binary("bare_pingora", &["examples/bare_pingora.rs"])
}

/// The example, killed when the test ends (SIGKILL: a quick pingora stop is not what is tested).
struct Bare(Child);

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The TCP port `pid` listens on: its open sockets matched against the kernel's table of
/// IPv4 TCP sockets in the LISTEN state.
fn listening_port(pid: u32) -> Option<u16> {
    let sockets: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
        if *state != "0A" || !sockets.contains(*inode) {
            return None;
        }
        u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()
    })
}

/// Starts the example with `settings` in its environment, towards `upstream`, and waits
/// (bounded) until it listens.
async fn start(upstream: std::net::SocketAddr, settings: &[(&str, &str)]) -> (Bare, u16) {
    let mut command = Command::new(baseline());
    command
        .args(["127.0.0.1:0", &upstream.to_string(), "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (name, value) in settings {
        command.env(name, value);
    }
    let mut bare = Bare(command.spawn().expect("start bare_pingora"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(port) = listening_port(bare.0.id()) {
            return (bare, port);
        }
        if let Ok(Some(status)) = bare.0.try_wait() {
            panic!("bare_pingora with {settings:?} exited with {status} before it listened");
        }
        assert!(
            Instant::now() < deadline,
            "bare_pingora with {settings:?} did not listen within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a request through the example and checks the upstream saw it.
async fn proxies(port: u16, settings: &[(&str, &str)]) {
    let url = format!("http://127.0.0.1:{port}/public/bench?x=1");
    let echo = common::get_json(&url).await;
    assert_eq!(echo["path"], "/public/bench", "with {settings:?}: {echo}");
    assert_eq!(echo["query"], "x=1", "with {settings:?}: {echo}");
}

#[tokio::test]
async fn the_baseline_proxies_to_the_upstream_with_pingoras_defaults() {
    let echo = common::start_echo().await;
    let (_bare, port) = start(echo.addr, &[]).await;
    proxies(port, &[]).await;
}

#[tokio::test]
async fn the_baseline_proxies_with_each_setting_the_sweep_changes() {
    let echo = common::start_echo().await;
    let sweep: &[&[(&str, &str)]] = &[
        &[("BARE_STEALING", "1")],
        &[("BARE_POOL", "16")],
        &[("BARE_LISTENER_TASKS", "2")],
        &[("BARE_L4_READ", "0"), ("BARE_L4_WRITE", "0")],
        &[("BARE_L4_READ", "4096"), ("BARE_L4_WRITE", "1460")],
        &[("BARE_SOCKET_BUF", "262144")],
    ];
    for settings in sweep {
        let (_bare, port) = start(echo.addr, settings).await;
        // Twice: the second request may go over a pooled upstream connection.
        proxies(port, settings).await;
        proxies(port, settings).await;
    }
}

#[test]
fn a_setting_that_is_not_a_number_stops_the_baseline_and_names_it() {
    let out = Command::new(baseline())
        .args(["127.0.0.1:0", "127.0.0.1:9", "1"])
        .env("BARE_POOL", "many")
        .output()
        .expect("run bare_pingora");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("BARE_POOL must be a number"), "{said}");
}
