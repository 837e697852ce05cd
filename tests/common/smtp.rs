//! A real SMTP server for the tests: `tests/smtp/server.py` on Debian's python3-aiosmtpd, on a
//! free loopback port, writing each accepted message as a file into a temp mailbox. Stopped
//! on Drop. Without aiosmtpd the tests skip with a printed reason, except under `CI=true`,
//! where they fail. Include with `#[path = "common/smtp.rs"] mod smtp;`.

#![allow(dead_code)] // each test binary uses a part of this

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PYTHON: &str = "/usr/bin/python3";

/// How the server behaves.
#[derive(Debug, Default, Clone)]
pub struct SmtpOptions {
    /// AUTH required with this user and password.
    pub auth: Option<(String, String)>,
    /// STARTTLS offered and required, with this PEM certificate and key.
    pub tls: Option<(String, String)>,
    /// Seconds to wait before answering DATA.
    pub delay: Option<f64>,
    /// Every RCPT answered with 550.
    pub refuse: bool,
}

pub struct SmtpServer {
    child: Child,
    pub port: u16,
    pub mailbox: tempfile::TempDir,
}

/// Whether aiosmtpd can be used; `false` (after printing why) means: skip the test. Panics
/// under `CI=true`, where a missing server is a failure.
pub fn available() -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let reason = "python3-aiosmtpd is not installed (apt-get install python3-aiosmtpd)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{reason}");
        }
        eprintln!("skipping: {reason}");
    }
    ok
}

impl SmtpServer {
    /// Starts the server; `None` when aiosmtpd is missing (see [`available`]).
    pub fn start(options: SmtpOptions) -> Option<SmtpServer> {
        if !available() {
            return None;
        }
        let mailbox = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp/server.py");
        let mut cmd = Command::new(PYTHON);
        cmd.arg(script).arg("--mailbox").arg(mailbox.path());
        if let Some((user, password)) = &options.auth {
            cmd.arg("--auth").arg(format!("{user}:{password}"));
        }
        if let Some((cert, key)) = &options.tls {
            cmd.arg("--tls").arg(cert).arg(key);
        }
        if let Some(delay) = options.delay {
            cmd.arg("--delay").arg(delay.to_string());
        }
        if options.refuse {
            cmd.arg("--refuse");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tests/smtp/server.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the SMTP server printed {line:?}, not its port"));
        Some(SmtpServer {
            child,
            port,
            mailbox,
        })
    }

    /// The messages received so far, oldest first (each file's text).
    pub fn messages(&self) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(self.mailbox.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
            .iter()
            .map(|n| std::fs::read_to_string(self.mailbox.path().join(n)).unwrap())
            .collect()
    }

    /// Waits (up to 10 s) until `n` messages have arrived; returns the `n`th.
    pub async fn wait_message(&self, n: usize) -> String {
        for _ in 0..200 {
            let all = self.messages();
            if all.len() >= n {
                return all[n - 1].clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no message {n} in the mailbox ({} there)",
            self.messages().len()
        );
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The code in a Gatehouse Email OTP mail (from its subject).
pub fn code_in(mail: &str) -> String {
    let subject = mail
        .lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or_else(|| panic!("no subject in {mail}"));
    subject.rsplit(' ').next().unwrap().trim().to_string()
}

/// The recipients the server was given for a mail.
pub fn recipients(mail: &str) -> String {
    mail.lines()
        .next()
        .and_then(|l| l.strip_prefix("X-Test-Rcpt-To: "))
        .unwrap_or_default()
        .to_string()
}
