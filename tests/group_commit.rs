//! Group commit of logins is durable: a process provisioning new users from 8 threads at once
//! is killed with SIGKILL mid-stream, and every login it had acknowledged (its transaction
//! answered Ok, which is when a login's response would go out) has its account in the store
//! when the file is opened again.
//!
//! The test runs itself as the child: with `GATEHOUSE_GROUP_COMMIT_CHILD` set to a data
//! directory, `child_provisions_until_killed` provisions until it is killed.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use gatehouse::identity::jit::{provision, Provisioned};
use gatehouse::identity::Identity;
use gatehouse::store::writer::GroupCommit;
use gatehouse::store::Store;

const CHILD: &str = "GATEHOUSE_GROUP_COMMIT_CHILD";
const CONFIG: &str = r#"
[[upstreams]]
url = "http://127.0.0.1:1"
[[connections]]
id = "corp"
issuer = "https://idp.example.com"
client_id = "c"
client_secret = "s"
"#;

fn claims(sub: &str) -> Identity {
    let mut id = Identity::new("corp", sub);
    id.username = Some(sub.to_string());
    id.email = Some(format!("{sub}@example.com"));
    id.email_verified = true;
    id
}

/// Not a test on its own: the child process of
/// `every_acknowledged_login_survives_a_sigkill` (it returns at once unless started as one).
#[test]
fn child_provisions_until_killed() {
    let Some(dir) = std::env::var_os(CHILD) else {
        return;
    };
    let connection = gatehouse::config::parse(CONFIG).unwrap().connections[0].clone();
    let store = Arc::new(Store::open(std::path::Path::new(&dir)).unwrap());
    let group = Arc::new(GroupCommit::start(store, "child-logins").unwrap());
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (group, connection, out) = (group.clone(), connection.clone(), out.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    let sub = format!("t{t}-u{i}");
                    let who = claims(&sub);
                    let c = connection.clone();
                    let done = group.write(move |tx| provision(tx, &c, &who, 100, "req"));
                    assert!(matches!(done, Ok(Provisioned::Allowed { .. })));
                    let mut out = out.lock().unwrap();
                    writeln!(out, "acked {sub}").unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// Eight threads provision new users through the group commit; the process is SIGKILLed
/// after at least 300 acknowledgements. Every acknowledged user has an account afterwards.
#[test]
fn every_acknowledged_login_survives_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_provisions_until_killed", "--nocapture"])
        .env(CHILD, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    while acked.len() < 300 {
        let line = lines
            .next()
            .expect("the child stopped before 300 logins")
            .unwrap();
        if let Some(sub) = line.strip_prefix("acked ") {
            acked.push(sub.to_string());
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Lines the child wrote before it died are acknowledged too.
    for line in lines.map_while(Result::ok) {
        if let Some(sub) = line.strip_prefix("acked ") {
            acked.push(sub.to_string());
        }
    }
    let store = Store::open(dir.path()).unwrap();
    let missing: Vec<&String> = store
        .read(|tx| {
            let mut missing = Vec::new();
            for sub in &acked {
                if tx.user_by_link("corp", sub)?.is_none() {
                    missing.push(sub);
                }
            }
            Ok(missing)
        })
        .unwrap();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged logins lost: {missing:?}",
        missing.len(),
        acked.len()
    );
}
