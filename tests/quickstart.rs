//! The README's quick start, run the way a user runs it: the `quickstart` example with the
//! shipped `config/gatehouse.toml`, only its ports (and the data directory) moved so the test
//! can run beside others. The example starts the test OP, the echo app and Gatehouse; a
//! public route answers, a protected one refuses an API client without a session, and alice
//! signs in through the OP's form and reaches the echo app with her identity headers.

mod common;
#[path = "common/idp.rs"]
mod idp;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use idp::Browser;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The example, stopped when the test ends (it stops its OP child when its stdin closes).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `config/gatehouse.toml` with every loopback port replaced by a free one and the data
/// directory moved into `data`; returns the text and the proxy and admin addresses.
fn shipped_config_on_free_ports(data: &Path) -> (String, String, String) {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gatehouse.toml"),
    )
    .expect("config/gatehouse.toml");
    let proxy = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let mut moved = text.clone();
    for (shipped, ours) in [
        ("127.0.0.1:4180", proxy.clone()),
        ("127.0.0.1:9090", admin.clone()),
        ("127.0.0.1:8080", format!("127.0.0.1:{}", free_port())),
        ("127.0.0.1:9000", format!("127.0.0.1:{}", free_port())),
        (
            "\"target/quickstart-data\"",
            format!("{:?}", data.display().to_string()),
        ),
    ] {
        assert!(
            moved.contains(shipped),
            "config/gatehouse.toml no longer holds {shipped}: update this test with the README"
        );
        moved = moved.replace(shipped, &ours);
    }
    (moved, proxy, admin)
}

/// Waits (bounded) until `url` answers at all.
async fn wait_for(url: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .unwrap();
    loop {
        if client.get(url).send().await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the quick start exited with {status} before {url} answered");
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not answer within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_quick_start_serves_the_echo_app_and_signs_alice_in() {
    let binary = common::examples::example_binary(
        "quickstart",
        &["examples/quickstart.rs", "examples/echo_upstream.rs"],
    );
    let dir = tempfile::tempdir().unwrap();
    let (config, proxy, admin) = shipped_config_on_free_ports(&dir.path().join("data"));
    let config_path = dir.path().join("gatehouse.toml");
    std::fs::write(&config_path, config).unwrap();

    let mut child = Command::new(&binary)
        .arg(&config_path)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
    // What the example prints (the OP's install, the URLs) is read off so it never blocks.
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let lines: Vec<String> = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect();
        let _ = lines_tx.send(lines);
    });
    let mut running = Running(child);
    wait_for(&format!("http://{admin}/ready"), &mut running.0).await;

    // A public route of the shipped config: the echo app answers without a sign-in.
    let browser = Browser::new();
    let public = browser.get(&format!("http://{proxy}/healthz")).await;
    assert_eq!(public.status(), 200);
    let echo: serde_json::Value = public.json().await.unwrap();
    assert_eq!(echo["path"], "/healthz");
    assert!(echo["headers"]["x-auth-request-user"].is_null(), "{echo}");

    // A protected route: an API client without a session gets 401.
    let api = reqwest::Client::builder().no_proxy().build().unwrap();
    let refused = api
        .get(format!("http://{proxy}/private"))
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    // A browser is sent through the OP's login form and comes back signed in.
    let journey = browser
        .follow(
            &format!("http://{proxy}/private?x=1"),
            Some(("alice", "alice-pw")),
        )
        .await;
    assert_eq!(journey.status, 200, "{:?}", journey.hops);
    let echo: serde_json::Value = serde_json::from_str(&journey.body)
        .unwrap_or_else(|e| panic!("not the echo app's JSON ({e}): {}", journey.body));
    assert_eq!(echo["path"], "/private");
    assert_eq!(echo["headers"]["x-auth-request-user"][0], "alice", "{echo}");
    assert!(
        echo["headers"]["x-gatehouse-identity"][0].is_string(),
        "the shipped config signs the identity header: {echo}"
    );

    // The metrics the README points at are served on the admin listener.
    let metrics = common::get_text(&format!("http://{admin}/metrics")).await;
    assert!(metrics.contains("gatehouse_logins_total"), "{metrics}");

    drop(running);
    // Its output ends when it does; bounded in case a child of it kept the pipe open.
    let printed = printed
        .recv_timeout(Duration::from_secs(10))
        .expect("the quick start's output ends when it stops");
    assert!(
        printed.iter().any(|l| l.contains("sign in as alice")),
        "the example tells the user how to sign in: {printed:?}"
    );
}
