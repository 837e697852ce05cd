//! The quick start: the bundled test identity provider (`tests/idp`, needs Node.js 20+), the
//! echo app and Gatehouse in one command, with `config/gatehouse.toml`.
//!
//! ```text
//! cargo run --example quickstart
//! # open http://127.0.0.1:4180/ and sign in as alice / alice-pw: the echo app shows the
//! # identity headers it received
//! curl -s http://127.0.0.1:4180/healthz          # public route: the app's echo
//! curl -si http://127.0.0.1:4180/private         # protected: 401 without a session
//! curl -s http://127.0.0.1:9090/metrics | grep gatehouse_
//! ```
//! Pass another config path as the first argument to try it instead.

use std::io::{BufRead, BufReader};
use std::net::ToSocketAddrs;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};

use gatehouse::config::model::UpstreamAddress;

#[path = "echo_upstream.rs"]
mod echo;

/// Starts the test OP for the config's first connection when its issuer is on loopback:
/// installs its npm packages if needed, waits for its ready line.
fn start_test_op(config: &gatehouse::config::Config) -> Result<Option<Child>, String> {
    let Some(connection) = config.connections.first() else {
        return Ok(None);
    };
    let Some(port) = connection
        .issuer
        .strip_prefix("http://127.0.0.1:")
        .and_then(|p| p.parse::<u16>().ok())
    else {
        return Ok(None);
    };
    let idp = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/idp");
    if !idp.join("node_modules/oidc-provider").exists() {
        println!("installing the test identity provider (npm ci in tests/idp)...");
        let status = Command::new("npm")
            .args(["ci", "--silent"])
            .current_dir(&idp)
            .status();
        if !status.is_ok_and(|s| s.success()) {
            return Err("npm ci in tests/idp failed (is Node.js 20+ installed?)".into());
        }
    }
    let base = format!("http://{}", config.server.listen[0]);
    let op_config = serde_json::json!({
        "port": port,
        "exit_on_stdin_eof": true,
        "clients": [{
            "client_id": connection.client_id,
            "client_secret": connection.client_secret.0,
            "redirect_uris": [format!("{base}/oauth2/callback")],
            "post_logout_redirect_uris": [format!("{base}/")],
            "backchannel_logout_uri": format!("{base}/oauth2/backchannel-logout"),
            "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic",
        }],
    });
    let file = std::env::temp_dir().join(format!(
        "gatehouse-quickstart-op-{}.json",
        std::process::id()
    ));
    std::fs::write(&file, op_config.to_string()).map_err(|e| e.to_string())?;
    let mut child = Command::new("node")
        .arg(idp.join("server.mjs"))
        .arg(&file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start node: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .map_err(|e| e.to_string())?;
    if !first.contains("issuer") {
        return Err(format!(
            "the test identity provider did not start on port {port}"
        ));
    }
    Ok(Some(child))
}

fn main() -> ExitCode {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "config/gatehouse.toml".to_string());
    let config = match gatehouse::config::load(path.as_ref()) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{path}:\n{errors}");
            return ExitCode::from(2);
        }
    };
    gatehouse::logging::init(&config.log);
    let op = match start_test_op(&config) {
        Ok(op) => op,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };

    // The echo app stands in for the first upstream of the config.
    let app = match config.upstreams.first().map(|u| &u.address) {
        Some(UpstreamAddress::Ip(address)) => *address,
        Some(UpstreamAddress::Name { host, port }) => {
            match (host.as_str(), *port)
                .to_socket_addrs()
                .map(|mut a| a.next())
            {
                Ok(Some(address)) => address,
                _ => {
                    eprintln!("{path}: the first upstream's host `{host}` does not resolve");
                    return ExitCode::from(2);
                }
            }
        }
        None => {
            eprintln!("{path} has no upstream");
            return ExitCode::from(2);
        }
    };
    let echo_thread = std::thread::spawn(move || -> std::io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind(app).await?;
            echo::serve(listener).await
        })
    });

    match gatehouse::server::prepare(&config) {
        Ok(prepared) => {
            let proxy = prepared.addresses.proxy[0];
            println!();
            println!("  Gatehouse is running in front of the echo app ({app}).");
            if op.is_some() {
                println!("  Open http://{proxy}/ and sign in as alice / alice-pw (or bob, carol):");
                println!("  the echo app shows the identity headers it received.");
                println!("  Sign out at http://{proxy}/oauth2/sign_out");
            }
            println!("  Open http://{proxy}/healthz for a public route (no sign-in).");
            println!("  Metrics: http://{}/metrics", prepared.addresses.admin);
            println!("  Stop with Ctrl-C.");
            println!();
            if echo_thread.is_finished() {
                eprintln!("the echo app could not start on {app} (is the port taken?)");
                return ExitCode::from(1);
            }
            prepared.run_until_signal();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gatehouse: {e}");
            ExitCode::from(1)
        }
    }
}
